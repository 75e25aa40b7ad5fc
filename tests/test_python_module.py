"""Tests of the shmetrics Python module, read back through a running
shmetricsd's /metrics (parsed by prometheus_client's parser).  Run by
tests/test_python.sh; prints TAP lines.

argv: SEGMENT PORT SMALL_SEGMENT.  The module is imported from PYTHONPATH.
"""
import asyncio
import os
import sys
import threading
import time
import traceback
import urllib.request
import warnings

from prometheus_client.parser import text_string_to_metric_families

import shmetrics

SEG, PORT, SMALL = sys.argv[1], int(sys.argv[2]), sys.argv[3]
n = failed = 0


def tap(ok, what):
    global n, failed
    n += 1
    if not ok:
        failed += 1
    print('%s %d - %s' % ('ok' if ok else 'not ok', n, what), flush=True)


def case(fn):
    """Run one test function; an exception is a failure with its trace."""
    try:
        fn()
    except Exception:
        tap(False, '%s raised:\n# %s' % (fn.__name__, traceback.format_exc().replace('\n', '\n# ')))
    return fn


def samples():
    body = urllib.request.urlopen('http://127.0.0.1:%d/metrics' % PORT, timeout=10).read().decode()
    out = {}
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(sample_set, name, **labels):
    return sample_set.get((name, tuple(sorted(labels.items()))))


def raises(what, exc, fn, *args, contains=None, **kwargs):
    try:
        fn(*args, **kwargs)
    except exc as e:
        ok = contains is None or contains in str(e)
        tap(ok, '%s raises %s%s' % (what, exc.__name__, '' if ok else ': message %r lacks %r' % (str(e), contains)))
        return
    except Exception as e:  # the wrong exception
        tap(False, '%s raises %s, not %r' % (what, exc.__name__, e))
        return
    tap(False, '%s raises %s (nothing raised)' % (what, exc.__name__))


shmetrics.init(SEG)
tap(shmetrics.region_index() >= 0, 'init attaches and claims a region (region %d)' % shmetrics.region_index())


@case
def types_and_values():
    c = shmetrics.Counter('py_requests', 'Requests.', ['method', 'status'])
    c.labels('GET', '200').inc()
    c.labels('GET', 200).inc(2)            # values are str()ed, as prometheus_client does
    c.labels(method='GET', status='200').inc(0.5)
    c.labels('POST', '500').inc(2 ** 60)   # past 2^53: a float add
    u = shmetrics.Counter('py_unlabelled_total', 'No labels.', namespace='ns', subsystem='sub')
    u.inc()
    g = shmetrics.Gauge('py_temperature', 'Degrees.', unit='celsius', multiprocess_mode='livesum')
    g.set(20)
    g.inc(3)
    g.dec()
    g.dec(0.5)
    ts = shmetrics.Gauge('py_last_seen_seconds', 'When.', multiprocess_mode='mostrecent')
    before = time.time()
    ts.set_to_current_time()
    h = shmetrics.Histogram('py_latency_seconds', 'Latency.', ['route'], buckets=[0.1, 1, 10])
    for v in (0.05, 0.5, 0.5, 5, 50):
        h.labels('/x').observe(v)
    s = shmetrics.Summary('py_size_bytes', 'Sizes.')
    s.observe(10)
    s.observe(amount=32)
    d = shmetrics.Histogram('py_default_buckets_seconds', 'Default buckets.')
    d.observe(0.07)
    m = samples()
    tap(value(m, 'py_requests_total', method='GET', status='200') == 3.5,
        'Counter.labels(...).inc, by position, by name and with an int label value: 3.5')
    tap(value(m, 'py_requests_total', method='POST', status='500') == float(2 ** 60), 'inc(2**60)')
    tap(value(m, 'ns_sub_py_unlabelled_total') == 1, 'namespace and subsystem prefix the name; _total kept once')
    tap(value(m, 'py_temperature_celsius') == 21.5, 'Gauge set/inc/dec with the unit appended: 21.5')
    t = value(m, 'py_last_seen_seconds')
    tap(t is not None and before - 1 <= t <= time.time() + 1, 'set_to_current_time is seconds since the epoch')
    bucket = lambda le: value(m, 'py_latency_seconds_bucket', route='/x', le=le)  # noqa: E731
    tap([bucket('0.1'), bucket('1.0'), bucket('10.0'), bucket('+Inf')] == [1, 3, 4, 5]
        and value(m, 'py_latency_seconds_count', route='/x') == 5
        and value(m, 'py_latency_seconds_sum', route='/x') == 56.05,
        'Histogram buckets (cumulative), _count and _sum')
    tap(value(m, 'py_size_bytes_count') == 2 and value(m, 'py_size_bytes_sum') == 42, 'Summary _count and _sum')
    tap(value(m, 'py_default_buckets_seconds_bucket', le='0.075') == 1
        and value(m, 'py_default_buckets_seconds_bucket', le='0.05') == 0,
        "Histogram's default buckets are prometheus_client's (0.075 among them)")


@case
def per_worker_gauge():
    g = shmetrics.Gauge('py_queue_depth', 'Per worker.')  # prometheus_client's default mode 'all'
    g.set(7)
    m = samples()
    tap(value(m, 'py_queue_depth', worker=str(shmetrics.region_index())) == 7,
        "multiprocess_mode 'all' (the default) is one series per worker slot")


@case
def timers():
    h = shmetrics.Histogram('py_timed_seconds', 'Timed.', ['how'], buckets=[0.001, 10])
    with h.labels('with').time():
        time.sleep(0.002)

    @h.labels('decorator').time()
    def f(x):
        time.sleep(0.002)
        return x * 2

    @h.labels('async').time()
    async def g(x):
        await asyncio.sleep(0.002)
        return x + 1
    r1, r2 = f(4), f(5)
    r3 = asyncio.run(g(1))
    s = shmetrics.Summary('py_timed_summary_seconds', 'Timed.')
    with s.time():
        pass
    gauge = shmetrics.Gauge('py_last_duration_seconds', 'Timed.', multiprocess_mode='livemax')
    with gauge.time():
        time.sleep(0.002)
    prog = shmetrics.Gauge('py_in_progress', 'In progress.', multiprocess_mode='livesum')
    seen = []

    @prog.track_inprogress()
    def busy():
        seen.append(value(samples(), 'py_in_progress'))
    busy()
    errors = shmetrics.Counter('py_failures', 'Failures.')

    @errors.count_exceptions(KeyError)
    def boom(e):
        raise e
    for e in (KeyError('k'), ValueError('v'), KeyError('k')):
        try:
            boom(e)
        except Exception:
            pass
    m = samples()
    tap((r1, r2, r3) == (8, 10, 2), 'decorated functions return their results')
    tap(value(m, 'py_timed_seconds_count', how='with') == 1
        and value(m, 'py_timed_seconds_bucket', how='with', le='0.001') == 0
        and value(m, 'py_timed_seconds_count', how='decorator') == 2
        and value(m, 'py_timed_seconds_count', how='async') == 1
        and value(m, 'py_timed_seconds_bucket', how='async', le='0.001') == 0,
        'time() as a context manager, a decorator and an async decorator observes each call')
    tap(value(m, 'py_timed_summary_seconds_count') == 1, 'Summary.time()')
    tap((value(m, 'py_last_duration_seconds') or 0) >= 0.002, 'Gauge.time() sets the duration')
    tap(seen == [1] and value(m, 'py_in_progress') == 0, 'track_inprogress: 1 inside, 0 after')
    tap(value(m, 'py_failures_total') == 2, 'count_exceptions counts only the named exception type')


@case
def misuse():
    c = shmetrics.Counter('py_misuse', 'Misuse.', ['a', 'b'])
    raises('a labelled parent inc()', ValueError, c.inc, contains='missing label values')
    raises('wrong label count', ValueError, c.labels, 'x', contains='Incorrect label count')
    raises('wrong label names', ValueError, c.labels, a='x', c='y', contains='Incorrect label names')
    raises('both args and kwargs', ValueError, c.labels, 'x', b='y')
    raises('chained .labels()', ValueError, lambda: c.labels('x', 'y').labels('z', 'w'))
    raises('labels() on a metric without labels', ValueError,
           shmetrics.Counter('py_misuse_plain', 'Plain.').labels, 'x')
    raises('a negative counter increment', ValueError, c.labels('x', 'y').inc, -1,
           contains='non-negative')
    raises('a bad metric name', ValueError, shmetrics.Counter, 'bad-name', 'Bad.', contains='does not match')
    raises('a metric name starting with a digit', ValueError, shmetrics.Gauge, '1abc', 'Bad.')
    raises('a bad label name', ValueError, shmetrics.Counter, 'py_bad_label', 'Bad.', ['a-b'],
           contains='label name "a-b" is invalid')
    raises('a reserved __ label name', ValueError, shmetrics.Counter, 'py_bad_label2', 'Bad.', ['__x'])
    raises("label 'le' on a histogram", ValueError, shmetrics.Histogram, 'py_bad_le', 'Bad.', ['le'],
           contains='reserved')
    raises('a duplicate label name', ValueError, shmetrics.Counter, 'py_dup', 'Bad.', ['a', 'a'],
           contains='appears twice')
    raises('labelnames given as one string', ValueError, shmetrics.Counter, 'py_str_labels', 'Bad.', 'ab')
    raises('a type clash with the recorded shape', ValueError, shmetrics.Gauge, 'py_misuse', 'Clash.',
           ['a', 'b'], contains='clashes with the sample names')
    raises('a label-name clash with the recorded shape', ValueError, shmetrics.Counter, 'py_misuse', 'Clash.',
           ['a'], contains='already registered')
    raises('buckets not increasing', ValueError, shmetrics.Histogram, 'py_bad_buckets', 'Bad.',
           buckets=[1, 0.5], contains='strictly increasing')
    raises('no finite bucket', ValueError, shmetrics.Histogram, 'py_no_buckets', 'Bad.', buckets=[float('inf')])
    raises('an unknown multiprocess_mode', ValueError, shmetrics.Gauge, 'py_bad_mode', 'Bad.',
           multiprocess_mode='average', contains='Invalid multiprocess mode')
    raises('a label value with NUL', ValueError, c.labels, 'x\0', 'y')
    raises('a label value longer than 1024 bytes', ValueError, c.labels, 'x' * 1025, 'y', contains='longer than')
    raises('a label value that is not valid Unicode', ValueError, c.labels, '\udc80', 'y')
    raises('a non-numeric increment', TypeError, c.labels('x', 'y').inc, 'one')
    raises('an exemplar', ValueError, c.labels('x', 'y').inc, 1, {'trace_id': 'abc'})
    raises('a reserved shmetricsd_ prefix', ValueError, shmetrics.Counter, 'shmetricsd_mine', 'Bad.')
    raises('time() on a labelled parent', ValueError,
           shmetrics.Histogram('py_misuse_timer_seconds', 'Bad.', ['x']).time)
    same = shmetrics.Counter('py_misuse', 'Same shape, other help.', ['a', 'b'])
    same.labels('x', 'y').inc()
    tap(value(samples(), 'py_misuse_total', a='x', b='y') == 1,
        'the same shape registered twice is the same family')


@case
def fork_children():
    c = shmetrics.Counter('py_forked', 'Forked.', ['who'])
    before = c.labels('parent-made')       # a handle made before fork
    h = shmetrics.Histogram('py_forked_seconds', 'Forked.', buckets=[1])
    kids = []
    for i in range(4):
        pid = os.fork()
        if pid == 0:
            try:
                for _ in range(1000):
                    before.inc()
                    h.observe(0.5)
                c.labels('child-%d' % i).inc(7)  # a series made in the child
                shmetrics.Counter('py_forked_late', 'Made after fork.').inc()
                os._exit(0 if shmetrics.region_index() >= 0 else 3)
            except BaseException:
                os._exit(2)
        kids.append(pid)
    codes = [os.waitpid(p, 0)[1] for p in kids]
    before.inc()
    m = samples()
    tap(codes == [0] * 4, 'os.fork children write and have a region each')
    tap(value(m, 'py_forked_total', who='parent-made') == 4001,
        'a handle made before fork counts in every child: 4 x 1000 + 1')
    tap(all(value(m, 'py_forked_total', who='child-%d' % i) == 7 for i in range(4)),
        'series made in children are counted')
    tap(value(m, 'py_forked_late_total') == 4, 'a family made after fork in each child: 4')
    tap(value(m, 'py_forked_seconds_count') == 4000 and value(m, 'py_forked_seconds_bucket', le='1.0') == 4000,
        'histogram in fork children: 4000')


@case
def threads():
    c = shmetrics.Counter('py_threaded', 'Threads.', ['t'])
    shared = c.labels('shared')
    start = threading.Barrier(4)

    def run(i):
        start.wait()
        for k in range(20000):
            shared.inc()
            c.labels('mine-%d' % (k % 4)).inc()  # concurrent lookups and creations
    ts = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    m = samples()
    tap(value(m, 'py_threaded_total', t='shared') == 80000, '4 threads x 20000 inc on one child: 80000')
    tap(all(value(m, 'py_threaded_total', t='mine-%d' % k) == 20000 for k in range(4)),
        'children looked up and created concurrently from 4 threads are one series each')


@case
def fork_from_thread():
    # A fork while another thread writes: the child gets its own region,
    # and both keep counting.
    c = shmetrics.Counter('py_fork_thread', 'Fork while a thread writes.')
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            c.inc()
    t = threading.Thread(target=spin)
    t.start()
    pids = []
    for _ in range(3):
        pid = os.fork()
        if pid == 0:
            c.inc(1000000)
            os._exit(0)
        pids.append(pid)
    codes = [os.waitpid(p, 0)[1] for p in pids]
    stop.set()
    t.join()
    v = value(samples(), 'py_fork_thread_total')
    tap(codes == [0] * 3 and v is not None and v >= 3000000, 'fork while a thread writes: children count (%s)' % v)


@case
def fork_while_creating():
    # Another thread is creating a child (holds the creation lock) when the
    # process forks: the fork child must still be able to create children.
    c = shmetrics.Counter('py_fork_lock', 'Fork while a child is created.', ['k'])
    held, release = threading.Event(), threading.Event()

    def hold():
        with shmetrics._creating:
            held.set()
            release.wait()
    t = threading.Thread(target=hold)
    t.start()
    if not held.wait(10):
        release.set()
        tap(False, "the holding thread took the creation lock")
        return
    pid = os.fork()
    if pid == 0:
        c.labels('child').inc()
        os._exit(0)
    release.set()
    t.join()
    status = None
    for _ in range(200):  # 10 s at most
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = st
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    tap(status == 0 and value(samples(), 'py_fork_lock_total', k='child') == 1,
        'a fork while another thread creates a child: the fork child creates children (status %s)' % status)


@case
def capacity():
    # A separate, tiny segment: a region runs out, with a warning, a fallback
    # handle, and no exception; the writes are dropped (and counted).
    import subprocess
    code = r'''
import sys, warnings
import shmetrics
shmetrics.init(sys.argv[1], regions=2, region_size=8192)
c = shmetrics.Counter("cap_c", "Capacity.", ["i"])
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    kids = [c.labels(str(i)) for i in range(400)]
for k in kids:
    k.inc()
full = [x for x in w if issubclass(x.category, RuntimeWarning)]
print(len(full), str(full[0].message) if full else "")
'''
    r = subprocess.run([sys.executable, '-c', code, SMALL], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, SHMETRICS_QUIET='1'))
    out = r.stdout.strip().split(' ', 1)
    tap(r.returncode == 0 and int(out[0]) > 0 and 'no room' in out[1] and 'dropped' in out[1],
        'a full region warns (RuntimeWarning with the reason) and keeps running: %r %r' % (r.stdout, r.stderr[-300:]))


@case
def segment_error():
    import subprocess
    code = 'import shmetrics\ntry:\n  shmetrics.init("/proc/version")\nexcept shmetrics.SegmentError as e:\n  print("SegmentError", e)\n'
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=30)
    tap(r.stdout.startswith('SegmentError') and isinstance(shmetrics.SegmentError('x'), OSError),
        'a file that is not a usable segment raises SegmentError (an OSError): %r' % r.stdout.strip())


@case
def asgi_middleware():
    # In process, through Starlette's TestClient (httpx): route templates,
    # statuses, a handler that raises, in flight, and the helpers.
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from starlette.testclient import TestClient
    from shmetrics.asgi import AppMetrics, MetricsMiddleware
    app = FastAPI()
    app.add_middleware(MetricsMiddleware, namespace='mw')
    helpers = AppMetrics('mw')
    seen = {}

    @app.get('/items/{item_id}')
    async def item(item_id: int):
        seen['in_flight'] = value(samples(), 'mw_http_requests_in_flight', method='GET')
        helpers.cache_lookup('items', item_id % 2 == 0)
        with helpers.db_query('select'):
            pass
        return {'id': item_id}

    @app.post('/fail')
    async def failing():
        try:
            with helpers.db_query('update'):
                raise RuntimeError('db down')
        except RuntimeError:
            helpers.security_event('probe')
        raise ValueError('unhandled')

    @app.get('/teapot')
    async def teapot():
        return JSONResponse({}, status_code=418)
    client = TestClient(app, raise_server_exceptions=False)
    codes = [client.get('/items/%d' % i).status_code for i in range(3)]
    codes += [client.post('/fail').status_code, client.get('/nowhere/x').status_code,
              client.put('/items/1').status_code, client.get('/teapot').status_code]
    m = samples()
    r = lambda method, route, status: value(m, 'mw_http_requests_total', method=method, route=route,  # noqa: E731
                                            status=status)
    tap(codes == [200, 200, 200, 500, 404, 405, 418], 'the app answers as it should: %s' % codes)
    tap(r('GET', '/items/{item_id}', '200') == 3, 'requests counted under the route template, not the path')
    tap(r('POST', '/fail', '500') == 1, 'a handler that raises counts as a 500')
    tap(r('GET', 'unmatched', '404') == 1, 'no route: "unmatched"')
    tap(r('PUT', '/items/{item_id}', '405') == 1, 'a wrong method keeps the route template (405)')
    tap(value(m, 'mw_http_request_errors_total', route='/fail', **{'class': 'server'}) == 1
        and value(m, 'mw_http_request_errors_total', route='/teapot', **{'class': 'client'}) == 1,
        'errors_total by class')
    tap(value(m, 'mw_http_request_duration_seconds_count', method='GET', route='/items/{item_id}') == 3,
        'the latency histogram counts every request')
    tap(seen.get('in_flight') == 1 and value(m, 'mw_http_requests_in_flight', method='GET') == 0,
        'in flight by method: 1 during the request, 0 after (%s)' % seen.get('in_flight'))
    tap(value(m, 'mw_cache_requests_total', cache='items', result='hit') == 2
        and value(m, 'mw_cache_requests_total', cache='items', result='miss') == 1, 'cache hits and misses')
    tap(value(m, 'mw_db_queries_total', operation='select', outcome='ok') == 3
        and value(m, 'mw_db_queries_total', operation='update', outcome='error') == 1
        and value(m, 'mw_db_query_duration_seconds_count', operation='update') == 1,
        'db_query times every query and says ok or error')
    tap(value(m, 'mw_suspicious_requests_total', kind='probe') == 1, 'security events')


print('1..%d' % n)
sys.exit(1 if failed else 0)
