"""ASGI middleware (Starlette, FastAPI) and helpers for the usual backend
metrics, with the families of the C demo (examples/saler-demo) when the
namespace is 'saler':

    app = FastAPI()
    app.add_middleware(shmetrics.asgi.MetricsMiddleware, namespace='saler')

  <ns>_http_requests_total{method,route,status}        counter
  <ns>_http_request_duration_seconds{method,route}     histogram (0.001 .. 5 s)
  <ns>_http_requests_in_flight{method}                 gauge (sum over workers)
  <ns>_http_request_errors_total{route,class}          counter (client 4xx, server 5xx)
  <ns>_http_slow_requests_total{route}                 counter (slower than slow_seconds)

`route` is the route template ("/leads/{id}"), never the raw path: the
first route of the application that matches the request (fully, or by path
only: a 405), else "unmatched"; so cardinality is bounded whatever clients
send.  `method` is one of the standard methods or OTHER.  A request is
counted when its response starts (before the client has any of it), with
the time from the request's arrival to that moment; a request that raises
before responding counts as a 500.

Backend helpers (AppMetrics): database query timing, cache hits and misses,
security events and rate limiting, as the C demo names them.
"""

import time

from . import Counter, Gauge, Histogram

HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
DB_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5)
METHODS = frozenset(('GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS'))


def _ns(namespace, name):
    return namespace + '_' + name if namespace else name


class HTTPMetrics:
    """The HTTP families of one namespace, registered once per process (and
    inherited by fork children when made before the fork)."""
    _made = {}

    @classmethod
    def get(cls, namespace='', buckets=HTTP_BUCKETS, slow_seconds=0.25):
        key = (namespace, tuple(buckets), slow_seconds)
        m = cls._made.get(key)
        if m is None:
            m = cls._made[key] = cls(namespace, buckets, slow_seconds)
        return m

    def __init__(self, namespace, buckets, slow_seconds):
        n = lambda name: _ns(namespace, name)  # noqa: E731
        self.slow_seconds = slow_seconds
        self.requests = Counter(n('http_requests'),
                                'HTTP requests answered, by method, route template and status code.',
                                ['method', 'route', 'status'])
        self.duration = Histogram(n('http_request_duration_seconds'),
                                  'Time from a complete request to its response being ready, in seconds.',
                                  ['method', 'route'], buckets=buckets)
        self.in_flight = Gauge(n('http_requests_in_flight'),
                               'HTTP requests being handled right now, by method (summed over workers).',
                               ['method'], multiprocess_mode='livesum')
        self.errors = Counter(n('http_request_errors'),
                              'HTTP responses with an error status: class client (4xx) or server (5xx).',
                              ['route', 'class'])
        self.slow = Counter(n('http_slow_requests'),
                            'HTTP requests that took longer than %g seconds.' % slow_seconds, ['route'])
        self._done = {}  # (method, route, status) -> the children one response writes

    def children(self, method, route, status):
        key = (method, route, status)
        c = self._done.get(key)
        if c is None:
            s = str(status)
            err = None
            if status >= 400:
                err = self.errors.labels(route, 'server' if status >= 500 else 'client')
            c = self._done[key] = (self.requests.labels(method, route, s), self.duration.labels(method, route),
                                   err, self.slow.labels(route))
        return c

    def record(self, method, route, status, seconds):
        requests, duration, err, slow = self.children(method, route, status)
        requests.inc()
        duration.observe(seconds)
        if err is not None:
            err.inc()
        if seconds > self.slow_seconds:
            slow.inc()


def route_template(scope, unmatched='unmatched'):
    """The template of the first route of scope['app'] that matches the
    request: fully, else by path only (a wrong method); else `unmatched`."""
    app = scope.get('app')
    routes = getattr(app, 'routes', None)
    if not routes:
        return unmatched
    from starlette.routing import Match
    partial = None
    for r in routes:
        try:
            match, _ = r.matches(scope)
        except Exception:  # a route that cannot judge this scope does not match it
            continue
        if match == Match.FULL:
            return getattr(r, 'path', unmatched) or unmatched
        if match == Match.PARTIAL and partial is None:
            partial = getattr(r, 'path', None)
    return partial or unmatched


class MetricsMiddleware:
    """Pure ASGI middleware: counts, times and tracks in flight every HTTP
    request (see the module's documentation for the families)."""

    def __init__(self, app, namespace='', buckets=HTTP_BUCKETS, slow_seconds=0.25, unmatched='unmatched'):
        self.app = app
        self.metrics = HTTPMetrics.get(namespace, buckets, slow_seconds)
        self.unmatched = unmatched
        self._in_flight = {}

    def _in_flight_child(self, method):
        g = self._in_flight.get(method)
        if g is None:
            g = self._in_flight[method] = self.metrics.in_flight.labels(method)
        return g

    async def __call__(self, scope, receive, send):
        if scope['type'] != 'http':
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        method = scope.get('method', 'GET')
        if method not in METHODS:
            method = 'OTHER'
        route = route_template(scope, self.unmatched)
        gauge = self._in_flight_child(method)
        gauge.inc()
        counted = False
        metrics = self.metrics

        async def counting_send(message):
            nonlocal counted
            if message['type'] == 'http.response.start' and not counted:
                counted = True
                metrics.record(method, route, int(message['status']), time.perf_counter() - start)
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        except BaseException:
            if not counted:
                counted = True
                metrics.record(method, route, 500, time.perf_counter() - start)
            raise
        finally:
            gauge.dec()


class AppMetrics:
    """Backend helpers, with the C demo's families under namespace 'saler':

      <ns>_db_query_duration_seconds{operation}   histogram (0.0001 .. 0.5 s)
      <ns>_db_queries_total{operation,outcome}    counter (ok, error)
      <ns>_cache_requests_total{cache,result}     counter (hit, miss)
      <ns>_suspicious_requests_total{kind}        counter (security events)
      <ns>_rate_limited_requests_total{route}     counter
    """

    def __init__(self, namespace=''):
        n = lambda name: _ns(namespace, name)  # noqa: E731
        self.db_duration = Histogram(n('db_query_duration_seconds'),
                                     'Duration of (simulated) database queries, in seconds.', ['operation'],
                                     buckets=DB_BUCKETS)
        self.db_queries = Counter(n('db_queries'), 'Database queries, by operation and outcome (ok or error).',
                                  ['operation', 'outcome'])
        self.cache = Counter(n('cache_requests'),
                             'Lookups in the in-process caches, by cache and result (hit or miss).',
                             ['cache', 'result'])
        self.suspicious = Counter(n('suspicious_requests'),
                                  'Requests refused as suspicious: path traversal, SQL injection, oversized '
                                  'or malformed.', ['kind'])
        self.rate_limited = Counter(n('rate_limited_requests'),
                                    'HTTP requests refused with 429 by the per-client rate limit.', ['route'])

    def db_query(self, operation):
        """A context manager (plain `with`, also inside async code) timing one
        query: its duration, and outcome ok, or error when the block raises."""
        return _Query(self, str(operation))

    def cache_lookup(self, cache, hit):
        self.cache.labels(cache, 'hit' if hit else 'miss').inc()

    def cache_hit(self, cache):
        self.cache.labels(cache, 'hit').inc()

    def cache_miss(self, cache):
        self.cache.labels(cache, 'miss').inc()

    def security_event(self, kind):
        self.suspicious.labels(kind).inc()

    def rate_limit(self, route):
        self.rate_limited.labels(route).inc()


class _Query:
    __slots__ = ('_m', '_op', '_start')

    def __init__(self, m, op):
        self._m = m
        self._op = op
        self._start = None

    def __enter__(self):
        self._start = time.perf_counter()
        return self

    def __exit__(self, typ, value, traceback):
        self._m.db_duration.labels(self._op).observe(time.perf_counter() - self._start)
        self._m.db_queries.labels(self._op, 'ok' if typ is None else 'error').inc()
        return False
