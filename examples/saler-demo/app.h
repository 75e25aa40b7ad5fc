/* app.h — the saler application of one worker: routes, users and sessions,
 * leads, a simulated database and cache, a per-client rate limit.
 *
 * All of it lives in the worker's own memory (a recycled worker takes its
 * leads and sessions with it, and its gauges leave the sums with it), and the
 * worker is single-threaded: no locks here.
 */
#ifndef SALER_APP_H
#define SALER_APP_H

#include <stdint.h>

#include "http.h"

struct app_config {
	double rate_limit;    /* requests per second per client and worker; 0: off */
	double burst;         /* bucket size */
	double session_ttl;   /* seconds */
	double fail_rate;     /* chance that a conversion's payment fails (500) */
	unsigned pool_size;   /* simulated database connections per worker */
};

/* Once per worker, after fork.  serial: the worker's number (lead ids). */
void app_init(const struct app_config *cfg, uint64_t serial);
/* Periodic housekeeping (expire sessions); cheap, call about once a second. */
void app_tick(void);

/* Route a parsed request (or a failed read, given as its status) and build
 * the response.  *route gets the route template for the metrics. */
void app_handle(struct http_request *req, struct http_response *resp, enum saler_route *route);

/* The route for a request whose head was parsed (404 and 405 cases
 * included), used when the body could not be read. */
enum saler_route app_route_of(const struct http_request *req);

#endif
