/* _shmetrics.c — the CPython extension under the shmetrics package: the
 * header-only writer compiled into this shared object (its symbols are
 * hidden, so this module has a writer and a region of its own even beside
 * another object that embeds one), and the types whose methods are the hot
 * path of a Python worker.
 *
 *   Family      one registered family (shmet_register); bind() gives a
 *               handle object its series.
 *   Counter, Gauge, Histogram, Summary
 *               base types of the Python classes in __init__.py: a handle
 *               (offsets into the region, valid across fork) and the
 *               inc/dec/set/observe methods, each one call into the writer's
 *               inline hot path with the GIL held (no syscall, lock or
 *               allocation: nothing that would stall other threads).
 *
 * Fork: the writer's pthread_atfork handler gives a child a region of its
 * own, claimed at its first write.  That claim is a few system calls under
 * the writer's mutex; so that it never runs with the GIL held, this module's
 * own atfork child handler raises a flag, and the first write after a fork
 * claims with the GIL released (claim_after_fork).
 *
 * Errors: a misuse (bad name, label, bucket, a clash with the family's
 * recorded shape) raises ValueError with the writer's reason; a segment
 * that cannot be used raises SegmentError (an OSError); running out of
 * capacity (segment, region or registry full) warns once (RuntimeWarning)
 * and gives the writer's fallback handle, whose writes are dropped and
 * counted in the segment, as in C. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#define SHMETRICS_IMPLEMENTATION
#include "shmetrics.h"

#include <pthread.h>

#if defined(__GNUC__)
#define PYSHMET_LIKELY(x) __builtin_expect(!!(x), 1)
#define PYSHMET_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define PYSHMET_LIKELY(x) (x)
#define PYSHMET_UNLIKELY(x) (x)
#endif

static PyObject *SegmentError;

/* 1 in a fork child until its first write or registration claimed its
 * region.  Read and written with the GIL held (the atfork handler runs in
 * the child while it is the only thread). */
static int claim_pending;

static void atfork_child(void) { claim_pending = 1; }

/* Claim this process's region (the writer does it for the first write of
 * a fork child) with the GIL released. */
static void claim_after_fork(void)
{
	claim_pending = 0;
	Py_BEGIN_ALLOW_THREADS
	(void)shmet_region_index();
	Py_END_ALLOW_THREADS
}

#define CLAIM_CHECK()                             \
	do {                                      \
		if (PYSHMET_UNLIKELY(claim_pending)) \
			claim_after_fork();       \
	} while (0)

static int is_capacity(int rc)
{
	return rc == SHMET_E_SEGMENT_FULL || rc == SHMET_E_REGION_FULL || rc == SHMET_E_REGISTRY_FULL ||
	       rc == SHMET_E_NO_SPACE;
}

static int is_misuse(int rc)
{
	switch (rc) {
	case SHMET_E_INVALID_ARG:
	case SHMET_E_INVALID_NAME:
	case SHMET_E_INVALID_LABEL:
	case SHMET_E_RESERVED_LABEL:
	case SHMET_E_DUPLICATE_LABEL:
	case SHMET_E_INVALID_UTF8:
	case SHMET_E_TYPE_CLASH:
	case SHMET_E_LABEL_COUNT:
	case SHMET_E_TOO_LONG:
	case SHMET_E_BUCKETS:
		return 1;
	}
	return 0;
}

/* Turn a writer error into a Python exception (-1) or, for a capacity
 * error, a RuntimeWarning (0, or -1 when warnings are errors). */
static int raise_writer_error(int rc, const char *reason)
{
	const char *why = reason && *reason ? reason : shmet_strerror(rc);
	if (is_capacity(rc))
		return PyErr_WarnFormat(PyExc_RuntimeWarning, 1,
					"shmetrics: %s: writes to this metric are dropped and counted "
					"(shmetricsd_writes_dropped_total)",
					why);
	PyErr_SetString(is_misuse(rc) ? PyExc_ValueError : SegmentError, why);
	return -1;
}

/* ------------------------------------------------------------ Family */

typedef struct {
	PyObject_HEAD
	shmet_family *f; /* NULL: a fallback (capacity ran out); never freed by the writer */
	int type;
	Py_ssize_t nlabels;
} FamilyObject;

/* The handle objects: one layout for the four types. */
typedef struct {
	PyObject_HEAD
	int bound; /* 0: a family with labels, which writes only through .labels() children */
	union {
		shmet_counter c;
		shmet_gauge g;
		shmet_histogram h;
		shmet_summary s;
	} u;
} HandleObject;

static PyTypeObject FamilyType, CounterType, GaugeType, HistogramType, SummaryType;

/* A str as UTF-8 in a buffer the caller frees; lone surrogates are refused. */
static char *utf8_dup(PyObject *s, const char *what)
{
	if (!PyUnicode_Check(s)) {
		PyErr_Format(PyExc_TypeError, "%s must be str, not %.100s", what, Py_TYPE(s)->tp_name);
		return NULL;
	}
	Py_ssize_t n;
	const char *u = PyUnicode_AsUTF8AndSize(s, &n);
	if (!u)
		return NULL;
	if ((size_t)n != strlen(u)) {
		PyErr_Format(PyExc_ValueError, "%s contains a NUL character", what);
		return NULL;
	}
	char *d = PyMem_RawMalloc((size_t)n + 1);
	if (!d)
		return (char *)PyErr_NoMemory();
	memcpy(d, u, (size_t)n + 1);
	return d;
}

static void free_strs(char **v, Py_ssize_t n)
{
	if (!v)
		return;
	for (Py_ssize_t i = 0; i < n; i++)
		PyMem_RawFree(v[i]);
	PyMem_RawFree(v);
}

/* A tuple of str as a NULL-filled array of n UTF-8 copies. */
static char **utf8_array(PyObject *tuple, const char *what)
{
	Py_ssize_t n = PyTuple_GET_SIZE(tuple);
	char **v = PyMem_RawCalloc((size_t)n + 1, sizeof *v);
	if (!v)
		return (char **)PyErr_NoMemory();
	for (Py_ssize_t i = 0; i < n; i++)
		if (!(v[i] = utf8_dup(PyTuple_GET_ITEM(tuple, i), what))) {
			free_strs(v, n);
			return NULL;
		}
	return v;
}

/* Family(type, name, help, labelnames: tuple, gauge_mode: int, buckets: tuple or None) */
static int family_init(FamilyObject *self, PyObject *args, PyObject *kwds)
{
	static char *kwlist[] = {(char *)"type", (char *)"name", (char *)"help", (char *)"labelnames", (char *)"gauge_mode", (char *)"buckets", NULL};
	int type, mode = SHMET_GAUGE_SUM;
	PyObject *name, *help, *labelnames, *buckets = Py_None;
	if (!PyArg_ParseTupleAndKeywords(args, kwds, "iUUO!|iO", kwlist, &type, &name, &help, &PyTuple_Type,
					 &labelnames, &mode, &buckets))
		return -1;
	if (self->f || self->type) {
		PyErr_SetString(PyExc_RuntimeError, "a Family is initialised once");
		return -1;
	}
	if (type < SHMET_COUNTER || type > SHMET_SUMMARY) {
		PyErr_SetString(PyExc_ValueError, "unknown metric type");
		return -1;
	}
	Py_ssize_t nl = PyTuple_GET_SIZE(labelnames);
	if (nl > (Py_ssize_t)SHMET_MAX_LABELS) {
		PyErr_Format(PyExc_ValueError, "at most %u label names", SHMET_MAX_LABELS);
		return -1;
	}
	double bounds[SHMET_MAX_BUCKETS + 1];
	size_t nb = 0;
	if (buckets != Py_None) {
		PyObject *seq = PySequence_Fast(buckets, "buckets must be a sequence of numbers");
		if (!seq)
			return -1;
		Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
		if (n > (Py_ssize_t)SHMET_MAX_BUCKETS + 1) {
			Py_DECREF(seq);
			PyErr_Format(PyExc_ValueError, "more than %u buckets", SHMET_MAX_BUCKETS);
			return -1;
		}
		for (Py_ssize_t i = 0; i < n; i++) {
			bounds[i] = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(seq, i));
			if (bounds[i] == -1.0 && PyErr_Occurred()) {
				Py_DECREF(seq);
				return -1;
			}
		}
		Py_DECREF(seq);
		nb = (size_t)n;
		if (nb == 0 || (nb == 1 && isinf(bounds[0]) && bounds[0] > 0)) {
			PyErr_SetString(PyExc_ValueError, "a histogram needs at least one finite bucket bound");
			return -1;
		}
	}
	char *cname = utf8_dup(name, "the metric name"), *chelp = cname ? utf8_dup(help, "the documentation") : NULL;
	char **cl = chelp ? utf8_array(labelnames, "a label name") : NULL;
	if (!cl) {
		PyMem_RawFree(cname);
		PyMem_RawFree(chelp);
		return -1;
	}
	struct shmet_family_spec spec;
	memset(&spec, 0, sizeof spec);
	spec.type = (enum shmet_type)type;
	spec.name = cname;
	spec.help = chelp;
	spec.nlabels = (size_t)nl;
	spec.label_names = (const char *const *)cl;
	spec.gauge_mode = (enum shmet_gauge_mode)mode;
	spec.nbuckets = nb;
	spec.buckets = nb ? bounds : NULL;
	shmet_family *f = NULL;
	int rc;
	char reason[SHMET_ERRBUF];
	CLAIM_CHECK();
	/* Registration may attach the segment, claim a region and wait (bounded)
	 * for the registry lock: never with the GIL held.  The reason is
	 * per-thread in the writer, so it is copied on the same thread. */
	Py_BEGIN_ALLOW_THREADS
	rc = shmet_register(&spec, &f);
	snprintf(reason, sizeof reason, "%s", rc == SHMET_OK ? "" : shmet_last_error());
	Py_END_ALLOW_THREADS
	PyMem_RawFree(cname);
	PyMem_RawFree(chelp);
	free_strs(cl, nl);
	if (rc != SHMET_OK && raise_writer_error(rc, reason) < 0)
		return -1;
	self->f = f;
	self->type = type;
	self->nlabels = nl;
	return 0;
}

/* family.bind(handle, values: tuple of str): make handle (a Counter, Gauge,
 * ... of the family's type) write to the series with those label values. */
static PyObject *family_bind(FamilyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
	static PyTypeObject *const types[] = {NULL, &CounterType, &GaugeType, &HistogramType, &SummaryType};
	if (nargs != 2 || !PyTuple_Check(args[1])) {
		PyErr_SetString(PyExc_TypeError, "bind(handle, values: tuple)");
		return NULL;
	}
	if (self->type < SHMET_COUNTER || self->type > SHMET_SUMMARY) {
		PyErr_SetString(PyExc_RuntimeError, "the Family is not initialised");
		return NULL;
	}
	if (!PyObject_TypeCheck(args[0], types[self->type])) {
		PyErr_Format(PyExc_TypeError, "a %s family binds %s objects", types[self->type]->tp_name,
			     types[self->type]->tp_name);
		return NULL;
	}
	HandleObject *h = (HandleObject *)args[0];
	PyObject *values = args[1];
	if (PyTuple_GET_SIZE(values) != self->nlabels) {
		PyErr_SetString(PyExc_ValueError, "Incorrect label count");
		return NULL;
	}
	char **cv = utf8_array(values, "a label value");
	if (!cv)
		return NULL;
	uint32_t off = 0;
	int rc = SHMET_OK;
	char reason[SHMET_ERRBUF] = "";
	HandleObject made;
	memset(&made.u, 0, sizeof made.u);
	CLAIM_CHECK();
	if (self->f) {
		/* A new series takes the writer's mutex and may claim a region:
		 * not with the GIL held.  The lookup says why it failed; the typed
		 * getter then finds the series without a lock and fills in what
		 * the handle needs (gauge mode, histogram bounds). */
		shmet_family *f = self->f;
		const char *const *v = (const char *const *)cv;
		int type = self->type;
		Py_BEGIN_ALLOW_THREADS
		rc = shmet_series_lookup(f, v, &off);
		if (rc != SHMET_OK)
			snprintf(reason, sizeof reason, "%s", shmet_last_error());
		else if (type == SHMET_COUNTER)
			made.u.c = shmet_counter_get(f, v);
		else if (type == SHMET_GAUGE)
			made.u.g = shmet_gauge_get(f, v);
		else if (type == SHMET_HISTOGRAM)
			made.u.h = shmet_histogram_get(f, v);
		else
			made.u.s = shmet_summary_get(f, v);
		Py_END_ALLOW_THREADS
	}
	free_strs(cv, self->nlabels);
	if (rc != SHMET_OK && raise_writer_error(rc, reason) < 0)
		return NULL;
	/* On a capacity error the handle stays the fallback one (off 0). */
	h->u = made.u;
	h->bound = 1;
	Py_RETURN_NONE;
}

static PyMethodDef family_methods[] = {
	{"bind", (PyCFunction)(void (*)(void))family_bind, METH_FASTCALL,
	 "bind(handle, values): make handle write to the series with these label values."},
	{NULL, NULL, 0, NULL},
};

static PyMemberDef family_members[] = {
	{"type", T_INT, offsetof(FamilyObject, type), READONLY, "the metric type (COUNTER, GAUGE, ...)"},
	{NULL, 0, 0, 0, NULL},
};

static PyObject *family_is_fallback(FamilyObject *self, void *closure)
{
	(void)closure;
	return PyBool_FromLong(self->f == NULL);
}

static PyGetSetDef family_getset[] = {
	{"fallback", (getter)family_is_fallback, NULL, "True when registration ran out of capacity: writes are dropped",
	 NULL},
	{NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject FamilyType = {
	PyVarObject_HEAD_INIT(NULL, 0).tp_name = "shmetrics._shmetrics.Family",
	.tp_basicsize = sizeof(FamilyObject),
	.tp_flags = Py_TPFLAGS_DEFAULT,
	.tp_doc = "A metric family registered in the segment.",
	.tp_new = PyType_GenericNew,
	.tp_init = (initproc)family_init,
	.tp_methods = family_methods,
	.tp_members = family_members,
	.tp_getset = family_getset,
};

/* ------------------------------------------------------------ handles */

static PyObject *missing_labels(const char *type)
{
	PyErr_Format(PyExc_ValueError, "%s metric is missing label values: write through .labels(...)", type);
	return NULL;
}

/* The one argument of a hot method, by position or as keyword `name`, and
 * an optional `exemplar` that must be None (exemplars are not kept in the
 * segment).  Returns the argument (borrowed), def when absent, or NULL with
 * an exception. */
static PyObject *one_arg(const char *method, const char *name, PyObject *const *args, Py_ssize_t nargs,
			 PyObject *kwnames, PyObject *def, int with_exemplar)
{
	PyObject *val = nargs > 0 ? args[0] : NULL, *ex = nargs > 1 ? args[1] : NULL;
	if (nargs > 1 + with_exemplar) {
		PyErr_Format(PyExc_TypeError, "%s() takes at most %d arguments (%zd given)", method, 1 + with_exemplar,
			     nargs);
		return NULL;
	}
	Py_ssize_t nk = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
	for (Py_ssize_t i = 0; i < nk; i++) {
		PyObject *k = PyTuple_GET_ITEM(kwnames, i);
		PyObject **slot = PyUnicode_CompareWithASCIIString(k, name) == 0 ? &val
				  : with_exemplar && PyUnicode_CompareWithASCIIString(k, "exemplar") == 0 ? &ex
													 : NULL;
		if (!slot) {
			PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'", method, k);
			return NULL;
		}
		if (*slot) {
			PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%U'", method, k);
			return NULL;
		}
		*slot = args[nargs + i];
	}
	if (ex && ex != Py_None) {
		PyErr_SetString(PyExc_ValueError, "exemplars are not supported by shmetrics");
		return NULL;
	}
	if (!val && !def)
		PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'", method, name);
	return val ? val : def;
}

static int as_double(PyObject *o, double *out)
{
	if (PyFloat_CheckExact(o)) {
		*out = PyFloat_AS_DOUBLE(o);
		return 0;
	}
	*out = PyFloat_AsDouble(o);
	return *out == -1.0 && PyErr_Occurred() ? -1 : 0;
}

#define HOT(self) ((HandleObject *)(self))

static PyObject *counter_inc(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
	HandleObject *h = HOT(self);
	if (PYSHMET_UNLIKELY(!h->bound))
		return missing_labels("counter");
	CLAIM_CHECK();
	if (PYSHMET_LIKELY(nargs == 0 && !kwnames)) {
		shmet_counter_inc(h->u.c);
		Py_RETURN_NONE;
	}
	PyObject *a = one_arg("inc", "amount", args, nargs, kwnames, Py_None, 1);
	if (!a)
		return NULL;
	if (a == Py_None) {
		shmet_counter_inc(h->u.c);
		Py_RETURN_NONE;
	}
	if (PyLong_Check(a)) {
		int overflow = 0;
		long long n = PyLong_AsLongLongAndOverflow(a, &overflow);
		if (n == -1 && PyErr_Occurred())
			return NULL;
		if (!overflow && n >= 0 && (unsigned long long)n <= SHMET_COUNTER_ADD_MAX) {
			shmet_counter_add_u64(h->u.c, (uint64_t)n);
			Py_RETURN_NONE;
		}
	}
	double v;
	if (as_double(a, &v) < 0)
		return NULL;
	if (v < 0) {
		PyErr_SetString(PyExc_ValueError, "Counters can only be incremented by non-negative amounts.");
		return NULL;
	}
	shmet_counter_add(h->u.c, v); /* NaN: dropped and counted by the writer */
	Py_RETURN_NONE;
}

static PyObject *gauge_add_args(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
				const char *method, double sign)
{
	HandleObject *h = HOT(self);
	if (PYSHMET_UNLIKELY(!h->bound))
		return missing_labels("gauge");
	CLAIM_CHECK();
	double v = 1.0;
	if (nargs || kwnames) {
		PyObject *a = one_arg(method, "amount", args, nargs, kwnames, Py_None, 0);
		if (!a || (a != Py_None && as_double(a, &v) < 0))
			return NULL;
	}
	shmet_gauge_add(h->u.g, sign * v);
	Py_RETURN_NONE;
}

static PyObject *gauge_inc(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
	return gauge_add_args(self, args, nargs, kwnames, "inc", 1.0);
}

static PyObject *gauge_dec(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
	return gauge_add_args(self, args, nargs, kwnames, "dec", -1.0);
}

static PyObject *gauge_set(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
	HandleObject *h = HOT(self);
	if (PYSHMET_UNLIKELY(!h->bound))
		return missing_labels("gauge");
	CLAIM_CHECK();
	double v;
	PyObject *a = nargs == 1 && !kwnames ? args[0] : one_arg("set", "value", args, nargs, kwnames, NULL, 0);
	if (!a || as_double(a, &v) < 0)
		return NULL;
	shmet_gauge_set(h->u.g, v);
	Py_RETURN_NONE;
}

static PyObject *gauge_set_to_current_time(PyObject *self, PyObject *unused)
{
	(void)unused;
	HandleObject *h = HOT(self);
	if (PYSHMET_UNLIKELY(!h->bound))
		return missing_labels("gauge");
	CLAIM_CHECK();
	shmet_gauge_set_to_current_time(h->u.g);
	Py_RETURN_NONE;
}

/* The observation of observe(amount[, exemplar]): 0, or -1 with an exception. */
static int observation(PyObject *self, const char *type, PyObject *const *args, Py_ssize_t nargs,
		       PyObject *kwnames, int with_exemplar, double *v)
{
	if (PYSHMET_UNLIKELY(!HOT(self)->bound)) {
		missing_labels(type);
		return -1;
	}
	CLAIM_CHECK();
	PyObject *a = nargs == 1 && !kwnames ? args[0]
					     : one_arg("observe", "amount", args, nargs, kwnames, NULL, with_exemplar);
	return !a || as_double(a, v) < 0 ? -1 : 0;
}

static PyObject *histogram_observe(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
	double v;
	if (observation(self, "histogram", args, nargs, kwnames, 1, &v) < 0)
		return NULL;
	shmet_histogram_observe(HOT(self)->u.h, v); /* NaN: dropped and counted by the writer */
	Py_RETURN_NONE;
}

static PyObject *summary_observe(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
	double v;
	if (observation(self, "summary", args, nargs, kwnames, 0, &v) < 0)
		return NULL;
	shmet_summary_observe(HOT(self)->u.s, v);
	Py_RETURN_NONE;
}

#define FASTKW(f) (PyCFunction)(void (*)(void))(f), METH_FASTCALL | METH_KEYWORDS

static PyMethodDef counter_methods[] = {
	{"inc", FASTKW(counter_inc), "inc(amount=1): add a non-negative amount."},
	{NULL, NULL, 0, NULL},
};
static PyMethodDef gauge_methods[] = {
	{"inc", FASTKW(gauge_inc), "inc(amount=1)"},
	{"dec", FASTKW(gauge_dec), "dec(amount=1)"},
	{"set", FASTKW(gauge_set), "set(value)"},
	{"set_to_current_time", gauge_set_to_current_time, METH_NOARGS, "set to seconds since the Unix epoch"},
	{NULL, NULL, 0, NULL},
};
static PyMethodDef histogram_methods[] = {
	{"observe", FASTKW(histogram_observe), "observe(amount)"},
	{NULL, NULL, 0, NULL},
};
static PyMethodDef summary_methods[] = {
	{"observe", FASTKW(summary_observe), "observe(amount)"},
	{NULL, NULL, 0, NULL},
};

static PyMemberDef handle_members[] = {
	{"_bound", T_INT, offsetof(HandleObject, bound), READONLY,
	 "1 when writes go to a series; 0 for a family with labels"},
	{NULL, 0, 0, 0, NULL},
};

#define HANDLE_TYPE(var, pyname, methods, doc)                                           \
	static PyTypeObject var = {                                                      \
		PyVarObject_HEAD_INIT(NULL, 0).tp_name = "shmetrics._shmetrics." pyname, \
		.tp_basicsize = sizeof(HandleObject),                                    \
		.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,                    \
		.tp_doc = doc,                                                           \
		.tp_new = PyType_GenericNew,                                             \
		.tp_methods = methods,                                                   \
		.tp_members = handle_members,                                            \
	}

HANDLE_TYPE(CounterType, "Counter", counter_methods, "A counter series handle (base of shmetrics.Counter).");
HANDLE_TYPE(GaugeType, "Gauge", gauge_methods, "A gauge series handle (base of shmetrics.Gauge).");
HANDLE_TYPE(HistogramType, "Histogram", histogram_methods, "A histogram series handle (base of shmetrics.Histogram).");
HANDLE_TYPE(SummaryType, "Summary", summary_methods, "A summary series handle (base of shmetrics.Summary).");

/* ------------------------------------------------------------ module */

/* init(path=None, regions=0, region_size=0, mode=0): attach to the segment
 * (creating it when absent) before the first registration; optional. */
static PyObject *mod_init(PyObject *mod, PyObject *args, PyObject *kwds)
{
	(void)mod;
	static char *kwlist[] = {(char *)"path", (char *)"regions", (char *)"region_size", (char *)"mode", NULL};
	PyObject *path = Py_None;
	unsigned int regions = 0, mode = 0;
	unsigned long long region_size = 0;
	if (!PyArg_ParseTupleAndKeywords(args, kwds, "|OIKI", kwlist, &path, &regions, &region_size, &mode))
		return NULL;
	char *cpath = NULL;
	if (path != Py_None) {
		PyObject *b = NULL;
		if (!PyUnicode_FSConverter(path, &b))
			return NULL;
		cpath = PyMem_RawMalloc((size_t)PyBytes_GET_SIZE(b) + 1);
		if (cpath)
			memcpy(cpath, PyBytes_AS_STRING(b), (size_t)PyBytes_GET_SIZE(b) + 1);
		Py_DECREF(b);
		if (!cpath)
			return PyErr_NoMemory();
	}
	struct shmet_options o;
	memset(&o, 0, sizeof o);
	o.path = cpath;
	o.regions = regions;
	o.region_size = region_size;
	o.mode = mode;
	int rc;
	char reason[SHMET_ERRBUF];
	CLAIM_CHECK();
	Py_BEGIN_ALLOW_THREADS
	rc = shmet_init(&o);
	snprintf(reason, sizeof reason, "%s", rc == SHMET_OK ? "" : shmet_last_error());
	Py_END_ALLOW_THREADS
	PyMem_RawFree(cpath);
	if (rc != SHMET_OK && raise_writer_error(rc, reason) < 0)
		return NULL;
	return PyLong_FromLong(rc);
}

static PyObject *mod_region_index(PyObject *mod, PyObject *unused)
{
	(void)mod, (void)unused;
	int r;
	claim_pending = 0;
	Py_BEGIN_ALLOW_THREADS
	r = shmet_region_index();
	Py_END_ALLOW_THREADS
	return PyLong_FromLong(r);
}

static PyMethodDef module_methods[] = {
	{"init", (PyCFunction)(void (*)(void))mod_init, METH_VARARGS | METH_KEYWORDS,
	 "init(path=None, regions=0, region_size=0, mode=0): attach to the segment now."},
	{"region_index", mod_region_index, METH_NOARGS,
	 "The index of this process's region (claiming it now in a fork child), or -1."},
	{NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
	PyModuleDef_HEAD_INIT, .m_name = "shmetrics._shmetrics",
	.m_doc = "The shmetrics writer for CPython (use the shmetrics package).", .m_size = -1,
	.m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__shmetrics(void);
PyMODINIT_FUNC PyInit__shmetrics(void)
{
	PyTypeObject *types[] = {&FamilyType, &CounterType, &GaugeType, &HistogramType, &SummaryType};
	for (size_t i = 0; i < sizeof types / sizeof *types; i++)
		if (PyType_Ready(types[i]) < 0)
			return NULL;
	if (pthread_atfork(NULL, NULL, atfork_child) != 0) {
		PyErr_SetString(PyExc_OSError, "pthread_atfork failed");
		return NULL;
	}
	PyObject *m = PyModule_Create(&moduledef);
	if (!m)
		return NULL;
	SegmentError = PyErr_NewExceptionWithDoc("shmetrics.SegmentError",
						 "The shared-memory segment cannot be opened or used.", PyExc_OSError, NULL);
	if (!SegmentError || PyModule_AddObjectRef(m, "SegmentError", SegmentError) < 0)
		goto fail;
	static const char *const names[] = {"Family", "Counter", "Gauge", "Histogram", "Summary"};
	for (size_t i = 0; i < sizeof types / sizeof *types; i++)
		if (PyModule_AddObjectRef(m, names[i], (PyObject *)types[i]) < 0)
			goto fail;
	struct {
		const char *name;
		long v;
	} consts[] = {
		{"COUNTER", SHMET_COUNTER},
		{"GAUGE", SHMET_GAUGE},
		{"HISTOGRAM", SHMET_HISTOGRAM},
		{"SUMMARY", SHMET_SUMMARY},
		{"GAUGE_SUM", SHMET_GAUGE_SUM},
		{"GAUGE_MAX", SHMET_GAUGE_MAX},
		{"GAUGE_MIN", SHMET_GAUGE_MIN},
		{"GAUGE_MOSTRECENT", SHMET_GAUGE_MOSTRECENT},
		{"GAUGE_PER_WORKER", SHMET_GAUGE_PER_WORKER},
		{"MAX_LABELS", SHMET_MAX_LABELS},
		{"MAX_BUCKETS", SHMET_MAX_BUCKETS},
	};
	for (size_t i = 0; i < sizeof consts / sizeof *consts; i++)
		if (PyModule_AddIntConstant(m, consts[i].name, consts[i].v) < 0)
			goto fail;
	return m;
fail:
	Py_DECREF(m);
	return NULL;
}
