"""Python writer benchmarks: shmetrics beside prometheus_client's multiprocess
mode (Debian python3-prometheus-client), in the same run and process.

One line per benchmark, as the C benches print them:

  bench python_<name> <ns/op> ns/op baseline <ns/op> ns/op ratio <x> ...

The subject is shmetrics, the baseline prometheus_client multiprocess doing
the same call; subject and baseline alternate for REPS short repetitions and
the best of each is kept.  Each figure is the whole Python statement in a loop
(`for _ in r: child.inc()`), loop included, so it is what an application
pays; the empty loop is printed for context.  Target (the Python issue):
labelled child inc() <= 80 ns.

argv: SEGMENT MULTIPROC_DIR.  Environment: BENCH_SCALE multiplies the counts.
"""
import os
import sys
import time

seg, mpdir = sys.argv[1], sys.argv[2]
os.environ['PROMETHEUS_MULTIPROC_DIR'] = mpdir  # read when prometheus_client is imported
import prometheus_client  # noqa: E402
import shmetrics  # noqa: E402

REPS = 15  # short repetitions, best kept: a busy machine preempts some of them
scale = float(os.environ.get('BENCH_SCALE', '1'))
shmetrics.init(seg)

labels = ['method', 'route', 'status']
values = ('GET', '/leads/{id}', '200')
s_counter = shmetrics.Counter('bench_requests', 'Requests.', labels)
p_counter = prometheus_client.Counter('bench_requests', 'Requests.', labels)
s_hist = shmetrics.Histogram('bench_latency_seconds', 'Latency.', ['route'])
p_hist = prometheus_client.Histogram('bench_latency_seconds', 'Latency.', ['route'])
s_gauge = shmetrics.Gauge('bench_in_flight', 'In flight.', multiprocess_mode='livesum')
p_gauge = prometheus_client.Gauge('bench_in_flight', 'In flight.', multiprocess_mode='livesum')


# One loop per call on purpose: a shared loop taking the call as a function
# would add a Python call to every iteration, more than the subject costs.
def loop_inc(child, n):
    r = range(n)
    t = time.perf_counter_ns()
    for _ in r:
        child.inc()
    return time.perf_counter_ns() - t


def loop_observe(child, n):
    r = range(n)
    t = time.perf_counter_ns()
    for _ in r:
        child.observe(0.042)
    return time.perf_counter_ns() - t


def loop_set(g, n):
    r = range(n)
    t = time.perf_counter_ns()
    for _ in r:
        g.set(3.0)
    return time.perf_counter_ns() - t


def loop_labels_inc(c, n):
    r = range(n)
    t = time.perf_counter_ns()
    for _ in r:
        c.labels('GET', '/leads/{id}', '200').inc()
    return time.perf_counter_ns() - t


def loop_empty(_, n):
    r = range(n)
    t = time.perf_counter_ns()
    for _ in r:
        pass
    return time.perf_counter_ns() - t


def compare(name, fn, subj, base, n, note=''):
    n = max(1000, int(n * scale))
    fn(subj, n // 10)  # warm up: the first write of the process, caches
    fn(base, n // 10)
    s = b = float('inf')
    for _ in range(REPS):
        s = min(s, fn(subj, n) / n)
        b = min(b, fn(base, n) / n)
    print('bench python_%s %.1f ns/op baseline %.1f ns/op (prometheus_client multiprocess) ratio %.3f%s'
          % (name, s, b, s / b, note), flush=True)
    return s


empty = min(loop_empty(None, 300000) / 300000 for _ in range(REPS))
print('# python %s; the empty loop costs %.1f ns per iteration (included in every figure)'
      % (sys.version.split()[0], empty))
s_child, p_child = s_counter.labels(*values), p_counter.labels(*values)
inc = compare('counter_inc_labelled', loop_inc, s_child, p_child, 300000,
              ' (target <= 80 ns)')
if inc > 80:
    print('# python_counter_inc_labelled misses its target: %.1f ns > 80 ns' % inc)
compare('histogram_observe_labelled', loop_observe, s_hist.labels('/leads'), p_hist.labels('/leads'), 200000)
compare('gauge_set', loop_set, s_gauge, p_gauge, 300000)
compare('labels_lookup_inc_3', loop_labels_inc, s_counter, p_counter, 50000)

