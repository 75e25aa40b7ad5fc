/* api_int.h — what the JSON API's files (api.c, api_push*.c, api_dash.c)
 * share.  Private to them: nothing outside collector/api*.c includes it.
 *
 * Threads and what they may touch:
 *   HTTP threads   every endpoint; the push state under a->push_mu, the
 *                  rate limiter under a->rate_mu, the history under
 *                  a->hist_mu; the view under rcu_read_lock().
 *   updater        api_tick: samples the view into the history (hist_mu
 *                  only to insert the new point).
 *   main thread    api_init before any other thread runs, api_free after
 *                  they all stopped.
 * Lock order: push_mu, then rcu_read_lock, then the writer's own mutex
 * (inside shmet_register / shmet_series_lookup).  rate_mu and hist_mu are
 * leaves.
 */
#ifndef SHMET_API_INT_H
#define SHMET_API_INT_H

#include "http.h"
#include "keymap.h"
#include "shmetrics.h"

#include <jansson.h>
#include <pthread.h>

/* History for the dashboard: a point every API_STEP_NS, 15 minutes kept. */
#define API_STEP_NS (5ull * 1000000000ull)
#define API_HISTORY_POINTS 182 /* 15 min / 5 s, plus a baseline and the point in progress */
#define API_MAX_DEPTH 8        /* JSON nesting of a request body */

struct push_family;
struct rate_slot;
struct hist_point;

/* *con_cls of a push request: the body as it arrives. */
struct api_req {
	int endpoint;     /* API_EP_CUSTOM or API_EP_BATCH */
	char *body;
	size_t len, cap;
	size_t discarded; /* bytes past the limit, dropped */
	bool too_big;
};

enum { API_EP_CUSTOM = 1, API_EP_BATCH = 2 };

struct api {
	struct collector *c;

	/* push: configuration, fixed after api_init */
	bool push_enabled;
	char *token;
	size_t token_len;
	int region; /* the push region's index, -1 when push is off */

	/* push: what this process registered (push_mu) */
	pthread_mutex_t push_mu;
	struct keymap fam_index; /* canonical name -> index in fams */
	struct push_family **fams;
	uint32_t nfams, fams_cap;

	/* push statistics: relaxed atomics, shown by /api/v1/metrics/health */
	uint64_t st_requests, st_samples, st_rejected, st_rate_limited, st_unauthorized, st_series_created;

	/* per-client token buckets (rate_mu) */
	pthread_mutex_t rate_mu;
	struct rate_slot *rate;

	/* dashboard history: a ring of points, oldest first from hist_head (hist_mu) */
	pthread_mutex_t hist_mu;
	struct hist_point *ring[API_HISTORY_POINTS];
	uint32_t hist_head, hist_count;
	uint64_t hist_last_ns;
};

/* ---- api.c: responses and shared helpers ---- */

/* Queue j (consumed) as the JSON answer; extra headers as NULL-terminated
 * name, value pairs (or NULL). */
enum MHD_Result api_send(struct MHD_Connection *conn, unsigned status, json_t *j, const char *const *headers);
/* {"error": "<message>", "field": "<field>"}; field may be NULL. */
enum MHD_Result api_error(struct MHD_Connection *conn, unsigned status, const char *field, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
/* A JSON number, or for what JSON cannot hold, "+Inf", "-Inf", "NaN". */
json_t *api_num(double v);
/* A JSON number, or null for NaN (ratios and quantiles without data). */
json_t *api_num_or_null(double v);
/* The view's family with this name (binary search), or NULL. */
const struct view_family *api_view_family(const struct view *v, const char *name);
/* Gauge families: sum, min, max over the series that have a value, and the
 * mode name, added to obj. */
void api_gauge_stats(json_t *obj, const struct view_family *f);

/* ---- api_push.c ---- */
int api_push_init(struct api *a, char *err, size_t errlen);
void api_push_free(struct api *a);
enum MHD_Result api_push_handle(struct api *a, struct MHD_Connection *conn, int endpoint, const char *method,
				const char *upload_data, size_t *upload_data_size, void **con_cls);
void api_push_health(struct api *a, json_t *obj);

/* ---- api_dash.c ---- */
void api_dash_tick(struct api *a, const struct view *v);
enum MHD_Result api_dashboard(struct api *a, struct MHD_Connection *conn);
void api_dash_free(struct api *a);
uint32_t api_dash_points(struct api *a);
/* Prometheus' histogram_quantile over cumulative counts cum[nb + 1]. */
double api_bucket_quantile(double q, const double *bounds, const double *cum, uint32_t nb);

#endif
