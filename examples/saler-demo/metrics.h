/* metrics.h — every saler_ metric family of the demo, and cached handles.
 *
 * The master calls saler_metrics_init() once, BEFORE it forks any worker: it
 * registers every family and creates every series whose labels are known in
 * advance (all the unlabelled ones included).  Workers inherit the handles
 * through fork() and write through them at once; the writer's atfork handler
 * gave each worker a region of its own with the master's directory copied and
 * the values zeroed.  Series with label values first seen in a worker (a rare
 * method/status pair) are created lazily by the worker, in its own region.
 *
 * Label values are always taken from the fixed tables below, never from the
 * request, so the cardinality is bounded whatever clients send.
 */
#ifndef SALER_METRICS_H
#define SALER_METRICS_H

#include "shmetrics.h"

/* Route templates: the `route` label. */
enum saler_route {
	ROUTE_HEALTH,
	ROUTE_LOGIN,
	ROUTE_LOGOUT,
	ROUTE_LEADS,
	ROUTE_LEAD,
	ROUTE_LEAD_QUALIFY,
	ROUTE_LEAD_CONVERT,
	ROUTE_FEATURE,
	ROUTE_REPORT,
	ROUTE_BOOM,
	ROUTE_UNMATCHED, /* no route has this path (404 or 400) */
	ROUTE_MALFORMED, /* not even a parsable request line */
	ROUTE__COUNT
};

enum saler_method {
	METHOD_GET,
	METHOD_HEAD,
	METHOD_POST,
	METHOD_PUT,
	METHOD_DELETE,
	METHOD_PATCH,
	METHOD_OPTIONS,
	METHOD_OTHER,
	METHOD__COUNT
};

/* The statuses the demo answers with; index into saler_status_codes. */
enum { STATUS__COUNT = 14 };

enum saler_db_op { DB_SELECT, DB_INSERT, DB_UPDATE, DB__COUNT };
enum saler_cache { CACHE_LEADS, CACHE_FEATURES, CACHE__COUNT };
enum saler_source { SOURCE_WEB, SOURCE_REFERRAL, SOURCE_ADS, SOURCE_EVENT, SOURCE_PARTNER, SOURCE_OTHER, SOURCE__COUNT };
enum saler_plan { PLAN_BASIC, PLAN_PRO, PLAN_ENTERPRISE, PLAN__COUNT };
enum saler_currency { CUR_USD, CUR_EUR, CUR_GBP, CUR__COUNT };
enum saler_stage { STAGE_NEW, STAGE_QUALIFIED, STAGE_CONVERTED, STAGE__COUNT };
enum saler_feature { FEAT_SEARCH, FEAT_EXPORT, FEAT_REPORTS, FEAT_DASHBOARD, FEAT_IMPORT, FEAT_API, FEAT__COUNT };
enum saler_login_failure { LOGIN_UNKNOWN_USER, LOGIN_BAD_PASSWORD, LOGIN_LOCKED, LOGIN__COUNT };
enum saler_suspicious { SUSP_PATH_TRAVERSAL, SUSP_SQL_INJECTION, SUSP_OVERSIZED, SUSP_MALFORMED, SUSP__COUNT };
enum saler_restart { RESTART_RECYCLED, RESTART_CRASHED, RESTART__COUNT };

extern const char *const saler_route_names[ROUTE__COUNT];
extern const char *const saler_method_names[METHOD__COUNT];
extern const int saler_status_codes[STATUS__COUNT];
extern const char *const saler_source_names[SOURCE__COUNT];
extern const char *const saler_plan_names[PLAN__COUNT];
extern const char *const saler_currency_names[CUR__COUNT];
extern const char *const saler_feature_names[FEAT__COUNT];

/* Seconds above which a request also counts as slow. */
#define SALER_SLOW_SECONDS 0.25

struct saler_metrics {
	/* HTTP */
	shmet_gauge in_flight;
	shmet_counter errors[ROUTE__COUNT][2]; /* [route][0 client, 1 server] */
	shmet_counter slow[ROUTE__COUNT];
	shmet_counter rate_limited[ROUTE__COUNT];
	shmet_counter suspicious[SUSP__COUNT];
	/* backend */
	shmet_histogram db_duration[DB__COUNT];
	shmet_counter db_queries[DB__COUNT][2]; /* [op][0 ok, 1 error] */
	shmet_counter cache[CACHE__COUNT][2];   /* [cache][0 hit, 1 miss] */
	shmet_gauge pool_in_use, pool_idle, pool_max;
	/* business */
	shmet_counter leads_created[SOURCE__COUNT];
	shmet_counter leads_qualified;
	shmet_counter leads_converted[PLAN__COUNT];
	shmet_counter revenue[CUR__COUNT];
	shmet_gauge leads_in_stage[STAGE__COUNT];
	shmet_counter sessions_started;
	shmet_gauge sessions_active;
	shmet_counter feature_usage[FEAT__COUNT];
	shmet_counter login_attempts[2]; /* [0 success, 1 failure] */
	shmet_counter login_failures[LOGIN__COUNT];
	/* master */
	shmet_counter worker_restarts[RESTART__COUNT];
	shmet_gauge workers;
};

extern struct saler_metrics saler_m;

/* Register everything and create the known series.  0, or a negative
 * shmetrics code with shmet_last_error() saying why. */
int saler_metrics_init(const char *segment_path);

/* Count one finished request: requests_total, duration, errors, slow. */
void saler_metrics_request(enum saler_route route, enum saler_method method, int status, double seconds);

#endif
