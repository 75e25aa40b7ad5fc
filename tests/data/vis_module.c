/* A shared object that embeds the writer, as each of two modules of one
 * server may: tests/test_visibility.sh builds it twice, with -DMODULE=a and
 * -DMODULE=b, and loads both into one process.  Only its vis_* functions
 * are meant to be seen from outside. */
#define SHMETRICS_IMPLEMENTATION
#include "shmetrics.h"

#include <stdio.h>

#ifndef MODULE
#error "build with -DMODULE=a or -DMODULE=b"
#endif
#define VIS_CAT2(a, b) a##b
#define VIS_CAT(a, b) VIS_CAT2(a, b)
#define VIS_STR2(a) #a
#define VIS_STR(a) VIS_STR2(a)
#define VIS_EXPORT __attribute__((visibility("default")))

VIS_EXPORT int VIS_CAT(vis_init_, MODULE)(const char *path);
VIS_EXPORT void VIS_CAT(vis_count_, MODULE)(int n);
VIS_EXPORT int VIS_CAT(vis_region_, MODULE)(void);

static shmet_counter counter;

/* Attach, register vis_<module>_total; 0 or a negative code. */
int VIS_CAT(vis_init_, MODULE)(const char *path)
{
	struct shmet_options o = {.path = path, .regions = 8, .region_size = 1 << 16};
	int rc = shmet_init(&o);
	if (rc != SHMET_OK) {
		fprintf(stderr, "module " VIS_STR(MODULE) ": shmet_init: %s\n", shmet_last_error());
		return rc;
	}
	counter = shmet_counter_new("vis_" VIS_STR(MODULE), "Increments made by module " VIS_STR(MODULE) ".");
	if (!counter.off) {
		fprintf(stderr, "module " VIS_STR(MODULE) ": counter: %s\n", shmet_last_error());
		return SHMET_E_SYS;
	}
	return SHMET_OK;
}

void VIS_CAT(vis_count_, MODULE)(int n)
{
	for (int i = 0; i < n; i++)
		shmet_counter_inc(counter);
}

int VIS_CAT(vis_region_, MODULE)(void) { return shmet_region_index(); }
