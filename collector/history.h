/* history.h — the dashboard's frames kept in the segment, so that a
 * restarted collector (and the browsers watching it) still has the last
 * fifteen minutes.  The bytes live in a region of the segment that this
 * collector claims and flags SHMET_SLOT_HISTORY; the layout is in
 * shmetrics_layout.h (DASHBOARD HISTORY).  A later collector takes the
 * region back, reads it through a copy and keeps only records that pass
 * every check: workers can write every byte of the segment.
 *
 * Threads: history_open runs in collector_open (holding the collector lock,
 * before the first fold); history_append and history_load from the stream
 * thread only; history_stats from any thread (relaxed loads).
 */
#ifndef SHMET_HISTORY_H
#define SHMET_HISTORY_H

#include "collector.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HISTORY_SPAN_S 900.0  /* what a restart keeps */
#define HISTORY_STEP_S 5.0    /* the finest step between kept frames */

struct history;

/* Take back the history region an earlier collector left, or claim a free
 * one.  NULL (logged) when there is none: the dashboard then starts empty
 * after a restart, and shmetricsd_dashboard_history_slots says 0. */
struct history *history_open(struct collector *c);
void history_close(struct history *h);

/* Seconds between two kept frames: the region holds HISTORY_SPAN_S of them. */
double history_step(const struct history *h);

/* Keep one frame (compact JSON, its id and wall-clock time).  False when
 * it could not be kept (counted in dropped). */
bool history_append(struct history *h, uint64_t id, double unix_s, const char *json, size_t len);

/* Every valid record younger than HISTORY_SPAN_S, oldest first: calls
 * fn(arg, id, unix_s, json, len) with JSON that was parsed and printed
 * again here.  Records that fail a check are counted in rejected. */
void history_load(struct history *h, double now_unix,
		  void (*fn)(void *arg, uint64_t id, double unix_s, const char *json, size_t len), void *arg);

struct history_stats {
	int region;                       /* -1: no history region */
	uint32_t slots;
	uint64_t written, dropped, rejected; /* frames kept, not kept (too large), refused at load */
};
void history_stats(const struct history *h, struct history_stats *out);

#endif
