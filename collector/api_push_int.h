/* api_push_int.h — what the push API's files share.  Private to them:
 * nothing outside collector/api_push*.c includes it.
 *
 * The push path, one file a job:
 *   api_push.c         HTTP: the endpoints, the bearer token, per-client rate
 *                      limits, the body (bounded) and its parse (a jansson
 *                      arena), init, health;
 *   api_push_schema.c  each sample checked on its own: names, type, labels,
 *                      numbers (phase 1);
 *   api_push_commit.c  the request against what exists (phase 2) and its
 *                      commit through the writer's own API (phases 3 and 4),
 *                      and a push region taken back after a restart.
 * api_push.c's opening comment tells a request's whole course.
 */
#ifndef SHMET_API_PUSH_INT_H
#define SHMET_API_PUSH_INT_H

#include "api_int.h"

#define MAX_ERRORS_SHOWN 100

/* ---- pushed families ---- */

struct push_family {
	char *name, *help;
	enum shmet_type type;
	uint32_t nlabels, nbuckets;
	char *label_names[SHMET_MAX_LABELS];
	double bounds[SHMET_MAX_BUCKETS];
	shmet_family *fam;    /* NULL while only a request's plan */
	/* series key ("v1\xffv2\xff") -> cell offset in our region; 0: the
	 * series exists in the segment (another region, the retired totals)
	 * but not yet in ours. */
	struct keymap series;
};

void push_family_free(struct push_family *f);

/* ---- one request's samples ---- */

enum op { OP_INC, OP_SET, OP_OBSERVE };

struct item {
	/* checked on its own (phase 1); strings point into the parsed tree */
	const char *name;
	size_t name_len;
	bool add_total; /* a counter named without _total: the writer's rule */
	enum shmet_type type;
	const char *help;
	uint32_t nlabels;
	const char *lnames[SHMET_MAX_LABELS], *lvalues[SHMET_MAX_LABELS];
	json_t *buckets;
	uint32_t nbuckets;
	enum op op;
	bool is_int;
	uint64_t u;
	double v;
	/* resolved (phase 2) */
	uint32_t t;                          /* index into req.t */
	const char *values[SHMET_MAX_LABELS]; /* in the family's label order */
	uint32_t off;                        /* cell offset; 0 until the series is in our region */
	bool adopted;                        /* the series exists elsewhere in the segment */
};

struct touched {
	struct push_family *f; /* NULL: the family cannot take pushes (see err) */
	bool is_new;           /* f is this request's plan, registered in phase 3 */
	bool adopted;          /* ... after a family already in the segment */
	uint32_t new_series;
	const char *err_field, *err_code;
	char *err;
};

struct req {
	struct api *a;
	json_t *errors;
	uint32_t nerrors;
	struct item *items;
	uint32_t n;
	struct touched *t;
	uint32_t nt, tcap;
	struct keymap tindex;  /* canonical name -> index in t */
	struct keymap pending; /* u32 t index + series key: series this request creates in our region */
	uint64_t need;         /* region bytes the new families and series take */
	uint32_t last_t;
	char last_name[SHMET_MAX_NAME_LEN + 8];
};

/* ---- api_push.c ---- */
/* Count a refused request and answer it with j (consumed). */
enum MHD_Result push_reject(struct api *a, struct MHD_Connection *conn, unsigned status, json_t *j);

/* ---- api_push_schema.c: phase 1 ---- */
void push_add_error(struct req *r, uint32_t index, const char *field, const char *code, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));
/* One sample on its own; false when it failed (errors added to r). */
bool push_parse_item(struct req *r, uint32_t idx, json_t *s, struct item *it);
/* The family name an item pushes to (the writer's: a counter gets _total). */
void push_canonical(const struct item *it, char *out);
/* A series' label values as one key: "v1\xffv2\xff" (0xff is never UTF-8). */
size_t push_series_key(char *key, const char *const *values, uint32_t n);
/* Nesting depth of a JSON text at most max (else *where: the byte). */
bool push_depth_ok(const char *s, size_t n, int max, size_t *where);

/* ---- api_push_commit.c: phases 2 to 4 ---- */
/* Before any request: the per-thread work area's key. */
int push_commit_init(char *err, size_t errlen);
/* Take back the families and series of the adopted push region. */
int push_adopt_index(struct api *a);
/* DELETE ?name=FAMILY[&label=value...]: every label, or none (the whole
 * family), of a family this collector has pushed to; REMOVAL. */
enum MHD_Result push_delete(struct api *a, struct MHD_Connection *conn);
/* Apply samples[0..n), whole or not at all, and answer. */
enum MHD_Result push_samples(struct api *a, struct MHD_Connection *conn, json_t *const *samples, uint32_t n);

#endif
