#include "tsupport.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static char paths[16][128];
static int npaths;
static pid_t owner;

static void remove_paths(void)
{
	if (getpid() != owner)
		return;
	for (int i = 0; i < npaths; i++)
		unlink(paths[i]);
}

const char *tsupport_segment(const char *tag)
{
	if (npaths == 16)
		abort();
	if (!owner) {
		owner = getpid();
		atexit(remove_paths);
	}
	char *p = paths[npaths++];
	snprintf(p, sizeof paths[0], "/dev/shm/shmet-test-%s-%d", tag, (int)getpid());
	unlink(p);
	return p;
}

static const struct shmet_snap_series *lookup(const struct shmet_snapshot *s, const char *name,
					      const char *const *values)
{
	const struct shmet_snap_family *f = shmet_snapshot_family(s, name);
	static const char *const none[] = {NULL};
	return f ? shmet_snapshot_series(f, values ? values : none) : NULL;
}

static int take(const char *path, struct shmet_segment *seg, struct shmet_snapshot *snap)
{
	char err[SHMET_ERRBUF];
	if (shmet_segment_open(path, SHMET_ATTACH_READONLY, NULL, seg, err) != SHMET_OK) {
		fprintf(stderr, "open %s: %s\n", path, err);
		return -1;
	}
	shmet_snapshot_take(seg, snap);
	return 0;
}

double tsupport_value(const char *path, const char *name, const char *const *values)
{
	struct shmet_segment seg;
	struct shmet_snapshot snap;
	if (take(path, &seg, &snap) != 0)
		return NAN;
	const struct shmet_snap_family *f = shmet_snapshot_family(&snap, name);
	const struct shmet_snap_series *s = lookup(&snap, name, values);
	double v = s ? shmet_agg_value(&s->agg, f->type) : NAN;
	shmet_snapshot_free(&snap);
	shmet_segment_close(&seg);
	return v;
}

uint64_t tsupport_count(const char *path, const char *name, const char *const *values)
{
	struct shmet_segment seg;
	struct shmet_snapshot snap;
	if (take(path, &seg, &snap) != 0)
		return UINT64_MAX;
	const struct shmet_snap_series *s = lookup(&snap, name, values);
	uint64_t v = s ? s->agg.whole : UINT64_MAX;
	shmet_snapshot_free(&snap);
	shmet_segment_close(&seg);
	return v;
}

int tsupport_wait(pid_t pid)
{
	int st;
	while (waitpid(pid, &st, 0) < 0)
		;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}
