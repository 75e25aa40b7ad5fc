/* A worker driven line by line from stdin, for tests/test_lifecycle.sh:
 *   inc FAMILY VALUE N | add FAMILY VALUE X | obs FAMILY VALUE X | set FAMILY VALUE X
 *   remove FAMILY VALUE | clear FAMILY | quit
 *   users FAMILY N LIMIT   N lookups and incs of user ids u000000.. in a counter
 *                          labelled "user" with series_limit LIMIT (0: default)
 * Families: counters c_*, histograms h_*, gauges g_* (label "k").  Prints
 * "ok" (or "err <reason>") after each line. */
#define SHMETRICS_IMPLEMENTATION
#include "shmetrics.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static shmet_family *fam(const char *name)
{
	static struct { char name[64]; shmet_family *f; } t[32];
	static int n;
	for (int i = 0; i < n; i++)
		if (strcmp(t[i].name, name) == 0)
			return t[i].f;
	static const char *l[] = {"k"};
	shmet_family *f = NULL;
	int rc = name[0] == 'h' ? shmet_histogram_register(&f, name, "Test.", NULL, 0, 1, l)
		 : name[0] == 'g' ? shmet_gauge_register(&f, name, "Test.", SHMET_GAUGE_SUM, 1, l)
				  : shmet_counter_register(&f, name, "Test.", 1, l);
	if (rc != 0 || n == 32)
		return NULL;
	snprintf(t[n].name, sizeof t[n].name, "%s", name);
	t[n].f = f;
	return t[n++].f;
}

int main(void)
{
	char line[256], cmd[16], name[64], value[64];
	double x;
	setvbuf(stdout, NULL, _IOLBF, 0);
	while (fgets(line, sizeof line, stdin)) {
		int n = sscanf(line, "%15s %63s %63s %lf", cmd, name, value, &x);
		if (n >= 1 && strcmp(cmd, "quit") == 0)
			break;
		if (n == 4 && strcmp(cmd, "users") == 0) {
			static const char *ul[] = {"user"};
			struct shmet_family_spec sp = {0};
			shmet_family *uf;
			sp.type = SHMET_COUNTER, sp.name = name, sp.help = "Logins by user.", sp.nlabels = 1;
			sp.label_names = ul, sp.series_limit = (uint32_t)x;
			if (shmet_register(&sp, &uf) != 0) {
				printf("err %s\n", shmet_last_error());
				continue;
			}
			for (long i = 0; i < atol(value); i++) {
				char u[24];
				snprintf(u, sizeof u, "u%06ld", i);
				shmet_counter_inc(shmet_counter_labels(uf, u));
			}
			printf("ok\n");
			continue;
		}
		shmet_family *f = n >= 2 ? fam(name) : NULL;
		const char *v[1] = {value};
		int rc = f ? 0 : -1;
		if (!f) {
		} else if (strcmp(cmd, "inc") == 0 && n == 4) {
			for (long i = 0; i < (long)x; i++)
				shmet_counter_inc(shmet_counter_get(f, v));
		} else if (strcmp(cmd, "add") == 0 && n == 4) {
			shmet_counter_add(shmet_counter_get(f, v), x);
		} else if (strcmp(cmd, "obs") == 0 && n == 4) {
			shmet_histogram_observe(shmet_histogram_get(f, v), x);
		} else if (strcmp(cmd, "set") == 0 && n == 4) {
			shmet_gauge_set(shmet_gauge_get(f, v), x);
		} else if (strcmp(cmd, "remove") == 0 && n >= 3) {
			rc = shmet_series_remove(f, v);
		} else if (strcmp(cmd, "clear") == 0) {
			rc = shmet_family_clear(f);
		} else {
			rc = -1;
		}
		if (rc == 0)
			printf("ok\n");
		else
			printf("err %s\n", shmet_last_error());
	}
	return 0;
}
