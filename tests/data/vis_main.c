/* Loads two shared objects that each embed the writer (tests/data/
 * vis_module.c built as MODULE=a and MODULE=b) with RTLD_GLOBAL, has each
 * count into its own counter, before and after a fork, and reads both
 * totals back from the segment through libshm.  Exit 0 when both are right. */
#include "shmetrics_reader.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

struct module {
	int (*init)(const char *);
	void (*count)(int);
	int (*region)(void);
};

static int load(const char *so, const char *m, struct module *out)
{
	void *h = dlopen(so, RTLD_NOW | RTLD_GLOBAL);
	if (!h) {
		fprintf(stderr, "dlopen %s: %s\n", so, dlerror());
		return -1;
	}
	char name[64];
	snprintf(name, sizeof name, "vis_init_%s", m);
	*(void **)&out->init = dlsym(h, name);
	snprintf(name, sizeof name, "vis_count_%s", m);
	*(void **)&out->count = dlsym(h, name);
	snprintf(name, sizeof name, "vis_region_%s", m);
	*(void **)&out->region = dlsym(h, name);
	if (!out->init || !out->count || !out->region) {
		fprintf(stderr, "%s: missing vis_*_%s functions\n", so, m);
		return -1;
	}
	return 0;
}

static double value(const struct shmet_snapshot *snap, const char *name)
{
	const struct shmet_snap_family *f = shmet_snapshot_family(snap, name);
	const struct shmet_snap_series *s = f ? shmet_snapshot_series(f, NULL) : NULL;
	return s ? shmet_agg_value(&s->agg, f->type) : -1;
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: vis_main SEGMENT LIBA.so LIBB.so\n");
		return 2;
	}
	struct module a, b;
	if (load(argv[2], "a", &a) || load(argv[3], "b", &b))
		return 1;
	if (a.init(argv[1]) != 0 || b.init(argv[1]) != 0)
		return 1;
	a.count(1000);
	b.count(2000);
	a.count(30);
	b.count(4);
	int ra = a.region(), rb = b.region();
	printf("regions: a %d, b %d\n", ra, rb);
	pid_t pid = fork();
	if (pid < 0)
		return 1;
	if (pid == 0) {
		a.count(5);
		b.count(6);
		_exit(a.region() >= 0 && b.region() >= 0 && a.region() != b.region() ? 0 : 3);
	}
	int st = 0;
	if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st))
		return 1;
	struct shmet_segment seg;
	struct shmet_snapshot snap;
	char err[SHMET_ERRBUF];
	if (shmet_segment_open(argv[1], SHMET_ATTACH_READONLY, NULL, &seg, err) != SHMET_OK) {
		fprintf(stderr, "open: %s\n", err);
		return 1;
	}
	shmet_snapshot_take(&seg, &snap);
	double va = value(&snap, "vis_a_total"), vb = value(&snap, "vis_b_total");
	unsigned long long corrupt = (unsigned long long)snap.corrupt;
	shmet_snapshot_free(&snap);
	shmet_segment_close(&seg);
	printf("vis_a_total %g, vis_b_total %g, corrupt records %llu\n", va, vb, corrupt);
	int rc = 0;
	if (va != 1035 || vb != 2010 || corrupt) {
		fprintf(stderr, "expected vis_a_total 1035 and vis_b_total 2010, no corrupt record\n");
		rc = 1;
	}
	if (ra < 0 || rb < 0 || ra == rb || WEXITSTATUS(st) != 0) {
		fprintf(stderr, "expected each module to have a region of its own, in the parent (a %d, b %d) and in "
				"the child (exit %d)\n",
			ra, rb, WEXITSTATUS(st));
		rc = 1;
	}
	return rc;
}
