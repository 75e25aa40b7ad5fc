/* watch.h — loud failures around the segment: the file its path names
 * (unlinked or replaced while the collector reads the old one), writers
 * that never attach, and who the collector serving a segment is. */
#ifndef SHMET_WATCH_H
#define SHMET_WATCH_H

#include <stdbool.h>
#include <stddef.h>

struct collector;
struct shmet_segment;

#define WATCH_DEFAULT_NO_WRITER_SCANS 60u

/* collector_open, before any thread: remember which file the segment is. */
void watch_open(struct collector *c);
/* Updater, after each scan: stat the path against the open file, count
 * scans without a writer.  Logs each change once. */
void watch_scan(struct collector *c);
/* 1 while the path no longer names the open file (relaxed; any thread). */
int watch_detached(const struct collector *c);
/* The reason /-/ready gives while detached, or NULL.  HTTP threads. */
const char *watch_problem(struct collector *c, char *buf, size_t cap);
/* Record this collector's pid and addresses in the segment header (after
 * it holds the collector lock and listens), and take them back at stop. */
void watch_publish(struct collector *c, const char *addrs);
void watch_close(struct collector *c);
/* Who holds the collector lock, as its header record says: pid (0:
 * unknown) and addresses (a sanitised copy, "" when unknown). */
void watch_holder(const struct shmet_segment *seg, int *pid, char *addr, size_t cap);

#endif
