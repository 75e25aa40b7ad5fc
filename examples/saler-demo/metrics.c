/* metrics.c — the writer's implementation (this is the one translation unit
 * of saler-demo that defines SHMETRICS_IMPLEMENTATION) and the demo's metric
 * families. */
#define SHMETRICS_IMPLEMENTATION
#include "metrics.h"

#include <stdio.h>

struct saler_metrics saler_m;

const char *const saler_route_names[ROUTE__COUNT] = {
	"/health",	      "/login",		"/logout",	    "/leads",	  "/leads/{id}",
	"/leads/{id}/qualify", "/leads/{id}/convert", "/features/{name}", "/reports/pipeline", "/boom",
	"unmatched",	      "malformed",
};
const char *const saler_method_names[METHOD__COUNT] = {"GET",	"HEAD",	   "POST",  "PUT",
						       "DELETE", "PATCH", "OPTIONS", "OTHER"};
const int saler_status_codes[STATUS__COUNT] = {200, 201, 400, 401, 403, 404, 405,
					       408, 409, 413, 429, 431, 500, 503};
const char *const saler_source_names[SOURCE__COUNT] = {"web", "referral", "ads", "event", "partner", "other"};
const char *const saler_plan_names[PLAN__COUNT] = {"basic", "pro", "enterprise"};
const char *const saler_currency_names[CUR__COUNT] = {"USD", "EUR", "GBP"};
const char *const saler_feature_names[FEAT__COUNT] = {"search", "export", "reports", "dashboard", "import", "api"};
static const char *const stage_names[STAGE__COUNT] = {"new", "qualified", "converted"};
static const char *const login_failure_names[LOGIN__COUNT] = {"unknown_user", "bad_password", "locked"};
static const char *const suspicious_names[SUSP__COUNT] = {"path_traversal", "sql_injection", "oversized",
							  "malformed"};
static const char *const restart_names[RESTART__COUNT] = {"recycled", "crashed"};
static const char *const db_op_names[DB__COUNT] = {"select", "insert", "update"};
static const char *const cache_names[CACHE__COUNT] = {"leads", "features"};

static const double http_buckets[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
				      0.1,   0.25,	 0.5,	1,    2.5,   5};
static const double db_buckets[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
				    0.01,   0.025,   0.05,   0.1,   0.25,   0.5};

static shmet_family *f_requests, *f_duration;

/* Per-process cache of (route, method, status) -> handle.  Filled in the
 * master for the expected combinations (inherited by fork) and lazily in a
 * worker for the others; a worker is single-threaded, so plain stores do. */
static shmet_counter req_handle[ROUTE__COUNT][METHOD__COUNT][STATUS__COUNT];
static unsigned char req_known[ROUTE__COUNT][METHOD__COUNT][STATUS__COUNT];
static shmet_histogram dur_handle[ROUTE__COUNT][METHOD__COUNT];
static unsigned char dur_known[ROUTE__COUNT][METHOD__COUNT];

static int status_index(int status)
{
	for (int i = 0; i < STATUS__COUNT; i++)
		if (saler_status_codes[i] == status)
			return i;
	return -1;
}

static shmet_counter request_counter(enum saler_route r, enum saler_method m, int status)
{
	int si = status_index(status);
	if (si < 0) { /* not in the table: look up each time (never happens today) */
		char code[8];
		snprintf(code, sizeof code, "%d", status);
		return shmet_counter_labels(f_requests, saler_method_names[m], saler_route_names[r], code);
	}
	if (!req_known[r][m][si]) {
		char code[8];
		snprintf(code, sizeof code, "%d", status);
		req_handle[r][m][si] = shmet_counter_labels(f_requests, saler_method_names[m], saler_route_names[r], code);
		req_known[r][m][si] = 1;
	}
	return req_handle[r][m][si];
}

static shmet_histogram duration_histogram(enum saler_route r, enum saler_method m)
{
	if (!dur_known[r][m]) {
		dur_handle[r][m] = shmet_histogram_labels(f_duration, saler_method_names[m], saler_route_names[r]);
		dur_known[r][m] = 1;
	}
	return dur_handle[r][m];
}

void saler_metrics_request(enum saler_route route, enum saler_method method, int status, double seconds)
{
	shmet_counter_inc(request_counter(route, method, status));
	shmet_histogram_observe(duration_histogram(route, method), seconds);
	if (status >= 400)
		shmet_counter_inc(saler_m.errors[route][status >= 500]);
	if (seconds > SALER_SLOW_SECONDS)
		shmet_counter_inc(saler_m.slow[route]);
}

/* The series each route is expected to produce, created before fork so that
 * they are exported (as 0) before the first request. */
struct expected {
	enum saler_route route;
	enum saler_method method;
	int statuses[8]; /* 0-terminated */
};

static const struct expected expected_series[] = {
	{ROUTE_HEALTH, METHOD_GET, {200, 429}},
	{ROUTE_LOGIN, METHOD_POST, {200, 400, 401, 403, 429}},
	{ROUTE_LOGOUT, METHOD_POST, {200, 401}},
	{ROUTE_LEADS, METHOD_GET, {200, 400}},
	{ROUTE_LEADS, METHOD_POST, {201, 400, 413, 429}},
	{ROUTE_LEAD, METHOD_GET, {200, 400, 404}},
	{ROUTE_LEAD_QUALIFY, METHOD_POST, {200, 404, 409}},
	{ROUTE_LEAD_CONVERT, METHOD_POST, {200, 400, 404, 409, 500}},
	{ROUTE_FEATURE, METHOD_GET, {200, 404}},
	{ROUTE_REPORT, METHOD_GET, {200}},
	{ROUTE_BOOM, METHOD_GET, {500}},
	{ROUTE_UNMATCHED, METHOD_GET, {400, 404}},
};

#define REGISTER(rc_, call_)                                                                        \
	do {                                                                                        \
		if ((rc_ = (call_)) != SHMET_OK)                                                    \
			return rc_;                                                                 \
	} while (0)

int saler_metrics_init(const char *segment_path)
{
	struct shmet_options o;
	memset(&o, 0, sizeof o);
	o.path = segment_path; /* NULL: $SHMETRICS_SEGMENT, then the default */
	int rc = shmet_init(&o);
	if (rc != SHMET_OK)
		return rc;

	shmet_family *f;
	const char *l_mrs[] = {"method", "route", "status"};
	const char *l_mr[] = {"method", "route"};
	const char *l_route_class[] = {"route", "class"};
	const char *l_route[] = {"route"};
	REGISTER(rc, shmet_counter_register(&f_requests, "saler_http_requests_total",
					    "HTTP requests answered, by method, route template and status code.", 3,
					    l_mrs));
	REGISTER(rc, shmet_histogram_register(&f_duration, "saler_http_request_duration_seconds",
					      "Time from a complete request to its response being ready, in seconds.",
					      http_buckets, sizeof http_buckets / sizeof *http_buckets, 2, l_mr));
	saler_m.in_flight = shmet_gauge_new("saler_http_requests_in_flight",
					    "HTTP requests being handled right now (summed over workers).",
					    SHMET_GAUGE_SUM);
	REGISTER(rc, shmet_counter_register(&f, "saler_http_request_errors_total",
					    "HTTP responses with an error status: class client (4xx) or server (5xx).",
					    2, l_route_class));
	for (int r = 0; r < ROUTE__COUNT; r++) {
		saler_m.errors[r][0] = shmet_counter_labels(f, saler_route_names[r], "client");
		saler_m.errors[r][1] = shmet_counter_labels(f, saler_route_names[r], "server");
	}
	REGISTER(rc, shmet_counter_register(&f, "saler_http_slow_requests_total",
					    "HTTP requests that took longer than 0.25 seconds.", 1, l_route));
	for (int r = 0; r < ROUTE__COUNT; r++)
		saler_m.slow[r] = shmet_counter_labels(f, saler_route_names[r]);
	REGISTER(rc, shmet_counter_register(&f, "saler_rate_limited_requests_total",
					    "HTTP requests refused with 429 by the per-client rate limit.", 1, l_route));
	for (int r = 0; r < ROUTE__COUNT; r++)
		saler_m.rate_limited[r] = shmet_counter_labels(f, saler_route_names[r]);
	const char *l_kind[] = {"kind"};
	REGISTER(rc, shmet_counter_register(&f, "saler_suspicious_requests_total",
					    "Requests refused as suspicious: path traversal, SQL injection, oversized "
					    "or malformed.",
					    1, l_kind));
	for (int k = 0; k < SUSP__COUNT; k++)
		saler_m.suspicious[k] = shmet_counter_labels(f, suspicious_names[k]);

	const char *l_op[] = {"operation"};
	const char *l_op_outcome[] = {"operation", "outcome"};
	REGISTER(rc, shmet_histogram_register(&f, "saler_db_query_duration_seconds",
					      "Duration of (simulated) database queries, in seconds.", db_buckets,
					      sizeof db_buckets / sizeof *db_buckets, 1, l_op));
	for (int d = 0; d < DB__COUNT; d++)
		saler_m.db_duration[d] = shmet_histogram_labels(f, db_op_names[d]);
	REGISTER(rc, shmet_counter_register(&f, "saler_db_queries_total",
					    "Database queries, by operation and outcome (ok or error).", 2,
					    l_op_outcome));
	for (int d = 0; d < DB__COUNT; d++) {
		saler_m.db_queries[d][0] = shmet_counter_labels(f, db_op_names[d], "ok");
		saler_m.db_queries[d][1] = shmet_counter_labels(f, db_op_names[d], "error");
	}
	const char *l_cache_result[] = {"cache", "result"};
	REGISTER(rc, shmet_counter_register(&f, "saler_cache_requests_total",
					    "Lookups in the in-process caches, by cache and result (hit or miss).", 2,
					    l_cache_result));
	for (int c = 0; c < CACHE__COUNT; c++) {
		saler_m.cache[c][0] = shmet_counter_labels(f, cache_names[c], "hit");
		saler_m.cache[c][1] = shmet_counter_labels(f, cache_names[c], "miss");
	}
	const char *l_state[] = {"state"};
	REGISTER(rc, shmet_gauge_register(&f, "saler_db_pool_connections",
					  "Database pool connections by state (in_use or idle), summed over workers.",
					  SHMET_GAUGE_SUM, 1, l_state));
	saler_m.pool_in_use = shmet_gauge_labels(f, "in_use");
	saler_m.pool_idle = shmet_gauge_labels(f, "idle");
	saler_m.pool_max = shmet_gauge_new("saler_db_pool_max_connections",
					   "Configured size of one worker's database pool (max over workers).",
					   SHMET_GAUGE_MAX);

	const char *l_source[] = {"source"};
	REGISTER(rc, shmet_counter_register(&f, "saler_leads_created_total", "Leads created, by source.", 1,
					    l_source));
	for (int s = 0; s < SOURCE__COUNT; s++)
		saler_m.leads_created[s] = shmet_counter_labels(f, saler_source_names[s]);
	saler_m.leads_qualified = shmet_counter_new("saler_leads_qualified_total", "Leads qualified.");
	const char *l_plan[] = {"plan"};
	REGISTER(rc, shmet_counter_register(&f, "saler_leads_converted_total", "Leads converted, by plan.", 1,
					    l_plan));
	for (int p = 0; p < PLAN__COUNT; p++)
		saler_m.leads_converted[p] = shmet_counter_labels(f, saler_plan_names[p]);
	const char *l_currency[] = {"currency"};
	REGISTER(rc, shmet_counter_register(&f, "saler_revenue_total",
					    "Revenue booked by lead conversions, in units of the currency.", 1,
					    l_currency));
	for (int c = 0; c < CUR__COUNT; c++)
		saler_m.revenue[c] = shmet_counter_labels(f, saler_currency_names[c]);
	const char *l_stage[] = {"stage"};
	REGISTER(rc, shmet_gauge_register(&f, "saler_leads_in_stage",
					  "Leads held by the live workers, by pipeline stage.", SHMET_GAUGE_SUM, 1,
					  l_stage));
	for (int s = 0; s < STAGE__COUNT; s++)
		saler_m.leads_in_stage[s] = shmet_gauge_labels(f, stage_names[s]);
	saler_m.sessions_started = shmet_counter_new("saler_sessions_started_total", "Sessions started by a login.");
	saler_m.sessions_active = shmet_gauge_new("saler_sessions_active",
						  "Sessions not yet expired or logged out (summed over workers).",
						  SHMET_GAUGE_SUM);
	const char *l_feature[] = {"feature"};
	REGISTER(rc, shmet_counter_register(&f, "saler_feature_usage_total", "Uses of product features.", 1,
					    l_feature));
	for (int i = 0; i < FEAT__COUNT; i++)
		saler_m.feature_usage[i] = shmet_counter_labels(f, saler_feature_names[i]);
	const char *l_outcome[] = {"outcome"};
	REGISTER(rc, shmet_counter_register(&f, "saler_login_attempts_total",
					    "Login attempts, by outcome (success or failure).", 1, l_outcome));
	saler_m.login_attempts[0] = shmet_counter_labels(f, "success");
	saler_m.login_attempts[1] = shmet_counter_labels(f, "failure");
	const char *l_reason[] = {"reason"};
	REGISTER(rc, shmet_counter_register(&f, "saler_login_failures_total",
					    "Failed logins, by reason (unknown_user, bad_password, locked).", 1,
					    l_reason));
	for (int i = 0; i < LOGIN__COUNT; i++)
		saler_m.login_failures[i] = shmet_counter_labels(f, login_failure_names[i]);

	REGISTER(rc, shmet_counter_register(&f, "saler_worker_restarts_total",
					    "Workers replaced by the master: recycled after max requests, or crashed.",
					    1, l_reason));
	for (int i = 0; i < RESTART__COUNT; i++)
		saler_m.worker_restarts[i] = shmet_counter_labels(f, restart_names[i]);
	saler_m.workers = shmet_gauge_new("saler_workers", "Worker processes running, as the master last counted.",
					  SHMET_GAUGE_MOSTRECENT);

	for (size_t i = 0; i < sizeof expected_series / sizeof *expected_series; i++) {
		const struct expected *e = &expected_series[i];
		duration_histogram(e->route, e->method);
		for (int k = 0; k < 8 && e->statuses[k]; k++)
			request_counter(e->route, e->method, e->statuses[k]);
	}

	/* Every handle above must be real: a fallback handle (off 0) means a
	 * registration or lookup failed, and the demo should say so now. */
	if (!saler_m.in_flight.off || !saler_m.pool_max.off || !saler_m.leads_qualified.off ||
	    !saler_m.sessions_started.off || !saler_m.sessions_active.off || !saler_m.workers.off ||
	    !saler_m.worker_restarts[RESTART_CRASHED].off || !dur_handle[ROUTE_BOOM][METHOD_GET].off)
		return SHMET_E_REGION_FULL;
	return SHMET_OK;
}
