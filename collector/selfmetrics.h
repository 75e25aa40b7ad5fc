/* selfmetrics.h — what /metrics says about processes rather than the
 * segment: the collector's own process_* metrics (as every Prometheus
 * exporter has), each live worker's CPU, memory, descriptors and start
 * time by worker slot, the host's usage behind --collector.host, and
 * shmetricsd_build_info.  The /proc figures are read once per scan.  render.c merges these families into its name
 * order. */
#ifndef SHMET_SELFMETRICS_H
#define SHMET_SELFMETRICS_H

#include "expfmt.h"

struct collector;

extern const char shmetricsd_revision[];   /* git revision of the build, or "unknown" */
extern const char shmetricsd_build_date[]; /* when it was built, UTC, RFC 3339 */

struct self_family {
	const char *name;
	void (*render)(struct collector *c, shmet_buf *b, enum shmet_expo_format fmt);
};
/* The families, sorted by name. */
extern const struct self_family self_families[];
extern const unsigned self_nfamilies;
/* Is name one of them?  (An application's family of that name is not served.) */
bool self_family_name(const char *name);

/* Updater, once per scan: read /proc for this process and every live
 * worker region; scrapes serve that reading. */
void self_workers_scan(struct collector *c);

#endif
