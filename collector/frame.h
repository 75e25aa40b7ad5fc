/* frame.h — what the live dashboard shows, as one JSON object a tick.
 *
 * A sample (frame_sample) is the segment's totals at one moment: every
 * family's total (counters), count and sum (histograms, summaries) or
 * combined value (gauges), plus the panels' inputs (requests by route and
 * status class, the latency histogram's buckets summed over its series,
 * in-flight, business totals, region counts).  A frame is two samples
 * turned into rates: frame_json(cur, base) divides what grew between the
 * base sample and the current one by the seconds between them.
 *
 * The panels find their families by name suffix, so any application that
 * names its families the common way gets them (FRAME_SUFFIX_* below).
 * Only the thread that takes samples touches them; nothing here locks.
 */
#ifndef SHMET_FRAME_H
#define SHMET_FRAME_H

#include "collector.h"

#include <stddef.h>
#include <stdint.h>

#define FRAME_SUFFIX_REQUESTS "_http_requests_total"            /* counter {route, status|code} */
#define FRAME_SUFFIX_DURATION "_http_request_duration_seconds"  /* histogram */
#define FRAME_SUFFIX_IN_FLIGHT "_http_requests_in_flight"       /* gauge */
#define FRAME_SUFFIX_LEADS "_leads_created_total"               /* counter */
#define FRAME_SUFFIX_CONVERSIONS "_leads_converted_total"       /* counter */
#define FRAME_SUFFIX_REVENUE "_revenue_total"                   /* counter */
/* The routes and families a frame lists, at most: a frame stays small
 * whatever an application registers. */
#define FRAME_MAX_ROUTES 64u
#define FRAME_MAX_FAMILIES 512u

struct frame_sample;

/* The segment now (reads the view; any thread but under no RCU lock). */
struct frame_sample *frame_sample(struct collector *c);
void frame_sample_free(struct frame_sample *s);
uint64_t frame_sample_ns(const struct frame_sample *s); /* CLOCK_MONOTONIC */

/* The frame {"id","t",...} as compact JSON (malloc'd, NUL-terminated; *len
 * without the NUL), or NULL when out of memory.  base may be NULL (no
 * rates yet).  unix_s is the frame's wall-clock time. */
char *frame_json(const struct frame_sample *cur, const struct frame_sample *base, uint64_t id, double unix_s,
		 size_t *len);

#endif
