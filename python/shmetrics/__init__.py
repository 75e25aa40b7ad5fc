"""shmetrics: Prometheus metrics for pre-forking Python servers.

Counters, gauges, histograms and summaries, with the names and calls of
prometheus_client, written lock-free into the shmetrics shared-memory segment
that shmetricsd serves (one region per process, nothing per pid on disk):

    from shmetrics import Counter, Histogram
    REQUESTS = Counter('http_requests', 'Requests.', ['method', 'route', 'status'])
    ok = REQUESTS.labels('GET', '/', '200')      # cached child: keep it, or call again
    ok.inc()

The segment is $SHMETRICS_SEGMENT (default /dev/shm/shmetrics), or what
init(path=...) names before the first metric is created.  Metrics may be
created before fork() (gunicorn --preload) or after it (in each worker):
a fork child gets a region of its own at its first write, and every handle
made before the fork keeps meaning the same series.

Errors: a misuse (bad name or label, wrong label count, a clash with the
family's recorded shape in the segment) raises ValueError with the writer's
reason; a segment that cannot be used raises SegmentError.  When capacity
runs out (segment, region or family registry full) a RuntimeWarning says so
and the metric's writes are dropped and counted
(shmetricsd_writes_dropped_total), as in C: the application keeps running.
"""

import functools
import inspect
import os
import threading
from timeit import default_timer

from . import _shmetrics
from ._shmetrics import SegmentError, region_index

__all__ = ['Counter', 'Gauge', 'Histogram', 'Summary', 'SegmentError', 'init', 'region_index',
           'DEFAULT_BUCKETS', 'INF']

INF = float('inf')
# prometheus_client's defaults, so that a port keeps its bucket layout.
DEFAULT_BUCKETS = (.005, .01, .025, .05, .075, .1, .25, .5, .75, 1.0, 2.5, 5.0, 7.5, 10.0, INF)

# prometheus_client's multiprocess_mode names and how the collector combines
# the processes for each.  The live* variants are the same: sum, max and min
# only count live processes anyway; 'all' keeps one series per worker slot
# (label worker="<region index>", bounded) where prometheus_client adds a pid
# label (one series per pid that ever lived).
_GAUGE_MODES = {
    'all': _shmetrics.GAUGE_PER_WORKER, 'liveall': _shmetrics.GAUGE_PER_WORKER,
    'sum': _shmetrics.GAUGE_SUM, 'livesum': _shmetrics.GAUGE_SUM,
    'max': _shmetrics.GAUGE_MAX, 'livemax': _shmetrics.GAUGE_MAX,
    'min': _shmetrics.GAUGE_MIN, 'livemin': _shmetrics.GAUGE_MIN,
    'mostrecent': _shmetrics.GAUGE_MOSTRECENT, 'livemostrecent': _shmetrics.GAUGE_MOSTRECENT,
}


# Creating a .labels() child is rare: one lock for every family.  A fork
# child gets a fresh one, since a thread of the parent may have held it at
# fork() and would never release it in the child.
_creating = threading.Lock()


def _fresh_lock_after_fork():
    global _creating
    _creating = threading.Lock()


os.register_at_fork(after_in_child=_fresh_lock_after_fork)


def init(path=None, regions=0, region_size=0, mode=0):
    """Attach to the segment at path (default $SHMETRICS_SEGMENT, then
    /dev/shm/shmetrics), creating it with this capacity when it is absent.
    Optional: the first metric attaches to the default segment."""
    return _shmetrics.init(path, regions, region_size, mode)


def _full_name(metric_type, name, namespace, subsystem, unit):
    # As prometheus_client builds it; the writer appends _total to counters.
    full = ''
    if namespace:
        full += namespace + '_'
    if subsystem:
        full += subsystem + '_'
    full += name
    if metric_type == 'counter' and full.endswith('_total'):
        full = full[:-6]
    if unit and not full.endswith('_' + unit):
        full += '_' + unit
    return full


class _Timer:
    """What time() returns: a context manager, and a decorator (of plain and
    async functions) that times each call on its own."""
    __slots__ = ('_callback', '_start')

    def __init__(self, callback):
        self._callback = callback
        self._start = None

    def __enter__(self):
        self._start = default_timer()
        return self

    def __exit__(self, typ, value, traceback):
        self._callback(max(default_timer() - self._start, 0.0))

    def __call__(self, f):
        callback = self._callback
        if inspect.iscoroutinefunction(f):
            async def timed(*args, **kwargs):
                with _Timer(callback):
                    return await f(*args, **kwargs)
        else:
            def timed(*args, **kwargs):
                with _Timer(callback):
                    return f(*args, **kwargs)
        return functools.wraps(f)(timed)


class _Around:
    """A context manager and decorator running enter() and exit(exc_type)
    around a block (track_inprogress, count_exceptions)."""
    __slots__ = ('_enter', '_exit')

    def __init__(self, enter, exit):
        self._enter = enter
        self._exit = exit

    def __enter__(self):
        self._enter()
        return self

    def __exit__(self, typ, value, traceback):
        return self._exit(typ)

    def __call__(self, f):
        if inspect.iscoroutinefunction(f):
            async def wrapped(*args, **kwargs):
                with self:
                    return await f(*args, **kwargs)
        else:
            def wrapped(*args, **kwargs):
                with self:
                    return f(*args, **kwargs)
        return functools.wraps(f)(wrapped)


# Every metric object (a family, or a .labels() child) holds these.  The
# hot methods (inc, set, observe, ...) come from the C base types.
_SLOTS = ('_name', '_documentation', '_labelnames', '_labelvalues', '_family', '_children')


class _Metric:
    __slots__ = ()
    _type = ''

    def _setup(self, name, documentation, labelnames, namespace, subsystem, unit, gauge_mode=0, buckets=None):
        if isinstance(labelnames, str):
            raise ValueError('labelnames must be a sequence of names, not a string: %r' % (labelnames,))
        labelnames = tuple(labelnames)
        for label in labelnames:
            if not isinstance(label, str):
                raise ValueError('Invalid label metric name: %r' % (label,))
        full = _full_name(self._type, name, namespace, subsystem, unit)
        self._name = full
        self._documentation = documentation
        self._labelnames = labelnames
        self._labelvalues = ()
        self._family = _shmetrics.Family(self._kind, full, documentation, labelnames, gauge_mode, buckets)
        self._children = {}
        if not labelnames:
            self._family.bind(self, ())

    def labels(self, *labelvalues, **labelkwargs):
        """The child for these label values (by position or by name),
        created once per process and cached."""
        if not self._labelnames:
            raise ValueError('No label names were set when constructing %s' % self)
        if self._labelvalues:
            raise ValueError('%s already has labels set (%s); can not chain calls to .labels()' % (
                self, dict(zip(self._labelnames, self._labelvalues))))
        if labelvalues and labelkwargs:
            raise ValueError("Can't pass both *args and **kwargs")
        if labelkwargs:
            if sorted(labelkwargs) != sorted(self._labelnames):
                raise ValueError('Incorrect label names')
            values = tuple([str(labelkwargs[label]) for label in self._labelnames])
        else:
            if len(labelvalues) != len(self._labelnames):
                raise ValueError('Incorrect label count')
            values = tuple(map(str, labelvalues))
        child = self._children.get(values)
        if child is None:
            with _creating:
                child = self._children.get(values)
                if child is None:
                    child = self._make_child(values)
                    self._children[values] = child
        return child

    def _make_child(self, values):
        cls = type(self)
        child = cls.__new__(cls)
        child._name = self._name
        child._documentation = self._documentation
        child._labelnames = self._labelnames
        child._labelvalues = values
        child._family = self._family
        child._children = None
        self._family.bind(child, values)  # ValueError with the writer's reason
        return child

    def _check_bound(self):
        if not self._bound:
            raise ValueError('%s metric is missing label values: write through .labels(...)' % self._type)

    def describe(self):
        return [(self._name, self._type, self._documentation, self._labelnames)]

    def __repr__(self):
        labels = dict(zip(self._labelnames, self._labelvalues)) if self._labelvalues else None
        return 'shmetrics.%s(%r%s)' % (type(self).__name__, self._name, ', %r' % labels if labels else '')


class Counter(_shmetrics.Counter, _Metric):
    """A counter: inc(amount=1) with a non-negative amount."""
    __slots__ = _SLOTS
    _type = 'counter'
    _kind = _shmetrics.COUNTER

    def __init__(self, name, documentation, labelnames=(), namespace='', subsystem='', unit='',
                 registry=None):
        # registry: accepted for prometheus_client signatures; the segment is
        # the one registry (shmetricsd serves every family in it).
        self._setup(name, documentation, labelnames, namespace, subsystem, unit)

    def count_exceptions(self, exception=Exception):
        """Count exceptions of this type raised in the block or function."""
        self._check_bound()

        def on_exit(typ):
            if typ is not None and issubclass(typ, exception):
                self.inc()
            return False
        return _Around(lambda: None, on_exit)


class Gauge(_shmetrics.Gauge, _Metric):
    """A gauge: inc, dec, set, set_to_current_time.  multiprocess_mode says
    how the processes combine (prometheus_client's names): 'all' (default,
    one series per worker slot), 'sum', 'max', 'min', 'mostrecent' (and
    their live* forms)."""
    __slots__ = _SLOTS
    _type = 'gauge'
    _kind = _shmetrics.GAUGE

    def __init__(self, name, documentation, labelnames=(), namespace='', subsystem='', unit='',
                 registry=None, multiprocess_mode='all'):
        if multiprocess_mode not in _GAUGE_MODES:
            raise ValueError('Invalid multiprocess mode: ' + str(multiprocess_mode))
        self._setup(name, documentation, labelnames, namespace, subsystem, unit,
                    gauge_mode=_GAUGE_MODES[multiprocess_mode])

    def track_inprogress(self):
        """inc() on entering the block or function, dec() on leaving it."""
        self._check_bound()

        def on_exit(typ):
            self.dec()
            return False
        return _Around(self.inc, on_exit)

    def time(self):
        """Set the gauge to the duration of the block or function, in seconds."""
        self._check_bound()
        return _Timer(self.set)


class _Observed(_Metric):
    __slots__ = ()

    def time(self):
        """Observe the duration of the block or function, in seconds."""
        self._check_bound()
        return _Timer(self.observe)


class Histogram(_shmetrics.Histogram, _Observed):
    """A histogram: observe(amount), time().  buckets: increasing upper
    bounds (+Inf implied), prometheus_client's DEFAULT_BUCKETS by default."""
    __slots__ = _SLOTS
    _type = 'histogram'
    _kind = _shmetrics.HISTOGRAM

    def __init__(self, name, documentation, labelnames=(), namespace='', subsystem='', unit='',
                 registry=None, buckets=DEFAULT_BUCKETS):
        self._setup(name, documentation, labelnames, namespace, subsystem, unit,
                    buckets=tuple(float(b) for b in buckets))


class Summary(_shmetrics.Summary, _Observed):
    """A summary: observe(amount), time(); exposes _count and _sum."""
    __slots__ = _SLOTS
    _type = 'summary'
    _kind = _shmetrics.SUMMARY

    def __init__(self, name, documentation, labelnames=(), namespace='', subsystem='', unit='',
                 registry=None):
        self._setup(name, documentation, labelnames, namespace, subsystem, unit)
