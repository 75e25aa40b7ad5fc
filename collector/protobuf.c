/* The protobuf exposition: delimited io.prometheus.client.MetricFamily
 * messages (protobuf-c, code generated from client_model's metrics.proto).
 *
 * Every family goes through here when Accept asks for it, so one scrape
 * carries everything: counters, gauges, summaries (with the window's
 * quantiles), histograms with their classic buckets and, for a native one,
 * schema, zero bucket and spans of its bucket window, and the collector's
 * own metrics.  What a family may show is what the text formats show. */
#include "collector.h"
#include "selfmetrics.h"

#include "io/prometheus/client/metrics.pb-c.h"

#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- Accept ---- */

static bool token_is(const char *p, size_t n, const char *want)
{
	return strlen(want) == n && strncasecmp(p, want, n) == 0;
}

bool protobuf_wanted(const char *accept)
{
	double pb_q = 0, other_q = 0;
	const char *p = accept;
	if (!p)
		return false;
	while (*p) {
		/* one range: type/subtype *(; name=value) up to ',' */
		const char *end = strchr(p, ',');
		if (!end)
			end = p + strlen(p);
		const char *q = p;
		while (q < end && isspace((unsigned char)*q))
			q++;
		const char *t = q;
		while (q < end && *q != ';' && !isspace((unsigned char)*q))
			q++;
		bool pb = token_is(t, (size_t)(q - t), "application/vnd.google.protobuf");
		bool proto = false, delimited = false, any = q > t;
		double qv = 1;
		while (q < end) {
			while (q < end && (*q == ';' || isspace((unsigned char)*q)))
				q++;
			const char *k = q;
			while (q < end && *q != '=' && *q != ';')
				q++;
			size_t kl = (size_t)(q - k);
			while (kl && isspace((unsigned char)k[kl - 1]))
				kl--;
			const char *v = q < end && *q == '=' ? ++q : q;
			while (q < end && *q != ';')
				q++;
			size_t vl = (size_t)(q - v);
			while (vl && isspace((unsigned char)v[vl - 1]))
				vl--;
			if (token_is(k, kl, "q")) {
				char num[16];
				if (vl >= sizeof num)
					vl = sizeof num - 1;
				memcpy(num, v, vl);
				num[vl] = 0;
				char *e;
				qv = strtod(num, &e);
				if (e == num || !(qv >= 0 && qv <= 1))
					qv = 0;
			} else if (token_is(k, kl, "proto")) {
				proto = token_is(v, vl, "io.prometheus.client.MetricFamily");
			} else if (token_is(k, kl, "encoding")) {
				delimited = token_is(v, vl, "delimited");
			}
		}
		if (pb && proto && delimited)
			pb_q = qv > pb_q ? qv : pb_q;
		else if (any)
			other_q = qv > other_q ? qv : other_q;
		p = *end ? end + 1 : end;
	}
	return pb_q > 0 && pb_q >= other_q;
}

/* ---- building messages ---- */

/* Every allocation of one family's messages, freed once it is packed. */
struct pool {
	void **p;
	size_t n, cap;
	bool oom;
};

static void *pool_alloc(struct pool *pl, size_t n)
{
	if (pl->oom)
		return NULL;
	if (pl->n == pl->cap) {
		size_t cap = pl->cap ? 2 * pl->cap : 64;
		void **np = realloc(pl->p, cap * sizeof *np);
		if (!np) {
			pl->oom = true;
			return NULL;
		}
		pl->p = np;
		pl->cap = cap;
	}
	void *m = calloc(1, n ? n : 1);
	if (!m) {
		pl->oom = true;
		return NULL;
	}
	return pl->p[pl->n++] = m;
}

static void pool_reset(struct pool *pl)
{
	for (size_t i = 0; i < pl->n; i++)
		free(pl->p[i]);
	pl->n = 0;
}

static void put_varint(shmet_buf *b, uint64_t v)
{
	char t[10];
	size_t n = 0;
	do {
		t[n++] = (char)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
		v >>= 7;
	} while (v);
	shmet_buf_append(b, t, n);
}

static void put_family(shmet_buf *b, const Io__Prometheus__Client__MetricFamily *mf)
{
	if (mf->n_metric == 0)
		return; /* no family without samples, as in the text formats */
	size_t n = io__prometheus__client__metric_family__get_packed_size(mf);
	put_varint(b, n);
	if (shmet_buf_reserve(b, n) != 0)
		return;
	io__prometheus__client__metric_family__pack(mf, (uint8_t *)b->data + b->len);
	b->len += n;
	b->data[b->len] = 0; /* the buffer's invariant; a binary body is sent by length */
}

static Io__Prometheus__Client__LabelPair *label_pair(struct pool *pl, const char *name, const char *value)
{
	Io__Prometheus__Client__LabelPair *l = pool_alloc(pl, sizeof *l);
	if (l) {
		io__prometheus__client__label_pair__init(l);
		l->name = (char *)name;
		l->value = (char *)value;
	}
	return l;
}

static Io__Prometheus__Client__Metric *metric_of(struct pool *pl, const struct view_family *f,
						 const struct view_series *s)
{
	Io__Prometheus__Client__Metric *m = pool_alloc(pl, sizeof *m);
	Io__Prometheus__Client__LabelPair **lp = pool_alloc(pl, (f->nlabels + 1) * sizeof *lp);
	if (!m || !lp)
		return NULL;
	io__prometheus__client__metric__init(m);
	m->label = lp;
	for (uint32_t i = 0; i < f->nlabels; i++)
		if (s->values[i][0]) /* empty == absent, as in the text formats */
			if (!(lp[m->n_label++] = label_pair(pl, f->label_names[i], s->values[i])))
				return NULL;
	return m;
}

/* The latest exemplar of slot k as a message, or NULL (none, or no memory). */
static Io__Prometheus__Client__Exemplar *exemplar_of(struct pool *pl, const struct view_family *f,
						     const struct view_series *s, uint32_t k)
{
	struct shmet_exemplar *e = pool_alloc(pl, sizeof *e);
	if (!e || !view_exemplar(f, s, k, e))
		return NULL;
	Io__Prometheus__Client__Exemplar *x = pool_alloc(pl, sizeof *x);
	Io__Prometheus__Client__LabelPair **lp = pool_alloc(pl, (e->len / 2 + 1) * sizeof *lp);
	if (!x || !lp)
		return NULL;
	io__prometheus__client__exemplar__init(x);
	x->label = lp;
	for (uint32_t p = 0; p < e->len;) { /* validated: name, value, ... each NUL-terminated */
		const char *name = e->pairs + p;
		p += (uint32_t)strlen(name) + 1;
		const char *value = e->pairs + p;
		p += (uint32_t)strlen(value) + 1;
		if (!(lp[x->n_label++] = label_pair(pl, name, value)))
			return NULL;
	}
	x->has_value = true;
	x->value = e->value;
	if (e->ts) {
		Google__Protobuf__Timestamp *t = pool_alloc(pl, sizeof *t);
		if (!t)
			return NULL;
		google__protobuf__timestamp__init(t);
		t->seconds = (int64_t)floor(e->ts);
		t->nanos = (int32_t)((e->ts - floor(e->ts)) * 1e9);
		x->timestamp = t;
	}
	return x;
}

/* A native histogram's fields from its merged window counts. */
static bool native_of(struct pool *pl, const struct view_family *f, const struct view_series *s,
		      Io__Prometheus__Client__Histogram *h)
{
	const struct shmet_sketch *sk = f->sketch;
	uint64_t *c = pool_alloc(pl, (sk->count + 2) * sizeof *c);
	if (!c || !sketch_series_counts(f, s, c))
		return false;
	h->has_schema = h->has_zero_threshold = h->has_zero_count = true;
	h->schema = sk->schema;
	h->zero_threshold = sk->zero_threshold;
	h->zero_count = c[0];
	/* spans of non-empty buckets; deltas against the previous bucket */
	h->positive_span = pool_alloc(pl, (sk->count / 2 + 1) * sizeof *h->positive_span);
	h->positive_delta = pool_alloc(pl, sk->count * sizeof *h->positive_delta);
	if (!h->positive_span || !h->positive_delta)
		return false;
	int64_t prev_idx = 0, prev_count = 0;
	bool open = false;
	for (uint32_t i = 0; i < sk->count; i++) {
		uint64_t n = c[i + 1];
		int64_t idx = (int64_t)sk->first + i;
		if (n == 0) {
			open = false;
			continue;
		}
		if (!open) {
			Io__Prometheus__Client__BucketSpan *sp = pool_alloc(pl, sizeof *sp);
			if (!sp)
				return false;
			io__prometheus__client__bucket_span__init(sp);
			sp->has_offset = sp->has_length = true;
			sp->offset = (int32_t)(h->n_positive_span ? idx - prev_idx - 1 : idx);
			h->positive_span[h->n_positive_span++] = sp;
			open = true;
		}
		h->positive_span[h->n_positive_span - 1]->length++;
		h->positive_delta[h->n_positive_delta++] = (int64_t)n - prev_count;
		prev_count = (int64_t)n;
		prev_idx = idx;
	}
	uint64_t neg = c[sk->count + 1];
	if (neg) { /* every v < -threshold, in one bucket at the window's top index */
		Io__Prometheus__Client__BucketSpan *sp = pool_alloc(pl, sizeof *sp);
		h->negative_span = pool_alloc(pl, sizeof *h->negative_span);
		h->negative_delta = pool_alloc(pl, sizeof *h->negative_delta);
		if (!sp || !h->negative_span || !h->negative_delta)
			return false;
		io__prometheus__client__bucket_span__init(sp);
		sp->has_offset = sp->has_length = true;
		sp->offset = sk->first + (int32_t)sk->count - 1;
		sp->length = 1;
		h->negative_span[0] = sp;
		h->n_negative_span = 1;
		h->negative_delta[0] = (int64_t)neg;
		h->n_negative_delta = 1;
	}
	return true;
}

static const Io__Prometheus__Client__MetricType pb_type[] = {
	[SHMET_COUNTER] = IO__PROMETHEUS__CLIENT__METRIC_TYPE__COUNTER,
	[SHMET_GAUGE] = IO__PROMETHEUS__CLIENT__METRIC_TYPE__GAUGE,
	[SHMET_HISTOGRAM] = IO__PROMETHEUS__CLIENT__METRIC_TYPE__HISTOGRAM,
	[SHMET_SUMMARY] = IO__PROMETHEUS__CLIENT__METRIC_TYPE__SUMMARY,
};

static void encode_family(struct collector *c, struct pool *pl, shmet_buf *b, const struct view_family *f)
{
	Io__Prometheus__Client__MetricFamily mf = IO__PROMETHEUS__CLIENT__METRIC_FAMILY__INIT;
	mf.name = (char *)f->name;
	mf.help = (char *)f->help;
	mf.has_type = true;
	mf.type = pb_type[f->type];
	mf.metric = pool_alloc(pl, (f->nseries + 1) * sizeof *mf.metric);
	if (!mf.metric)
		return;
	struct shmet_agg acc;
	for (uint32_t i = 0; i < f->nseries; i++) {
		const struct view_series *s = &f->series[i];
		if (!view_series_agg(f, s, &acc))
			continue; /* partly past a truncated segment's end */
		double v = shmet_agg_value(&acc, f->type);
		if ((f->type == SHMET_GAUGE && !acc.has) || (f->type == SHMET_COUNTER && !(v >= 0)))
			continue;
		Io__Prometheus__Client__Metric *m = metric_of(pl, f, s);
		if (!m)
			return;
		switch (f->type) {
		case SHMET_COUNTER:
			if (!(m->counter = pool_alloc(pl, sizeof *m->counter)))
				return;
			io__prometheus__client__counter__init(m->counter);
			m->counter->has_value = true, m->counter->value = v;
			if (f->exemplars)
				m->counter->exemplar = exemplar_of(pl, f, s, 0);
			break;
		case SHMET_GAUGE:
			if (!(m->gauge = pool_alloc(pl, sizeof *m->gauge)))
				return;
			io__prometheus__client__gauge__init(m->gauge);
			m->gauge->has_value = true, m->gauge->value = v;
			break;
		case SHMET_SUMMARY: {
			Io__Prometheus__Client__Summary *sm = m->summary = pool_alloc(pl, sizeof *sm);
			if (!sm)
				return;
			io__prometheus__client__summary__init(sm);
			sm->has_sample_count = sm->has_sample_sum = true;
			sm->sample_count = acc.whole;
			sm->sample_sum = v;
			double q[SHMET_MAX_OBJECTIVES];
			if (f->sketch && sketchwin_quantiles(c, f, s, q)) {
				sm->quantile = pool_alloc(pl, f->sketch->nobjectives * sizeof *sm->quantile);
				if (!sm->quantile)
					return;
				for (uint32_t k = 0; k < f->sketch->nobjectives; k++) {
					Io__Prometheus__Client__Quantile *qq = pool_alloc(pl, sizeof *qq);
					if (!qq)
						return;
					io__prometheus__client__quantile__init(qq);
					qq->has_quantile = qq->has_value = true;
					qq->quantile = f->sketch->objectives[k];
					qq->value = q[k];
					sm->quantile[sm->n_quantile++] = qq;
				}
			}
			break;
		}
		case SHMET_HISTOGRAM: {
			Io__Prometheus__Client__Histogram *h = m->histogram = pool_alloc(pl, sizeof *h);
			if (!h)
				return;
			io__prometheus__client__histogram__init(h);
			h->bucket = pool_alloc(pl, (f->nbuckets + 1) * sizeof *h->bucket);
			if (!h->bucket)
				return;
			uint64_t cum = 0;
			for (uint32_t k = 0; k <= f->nbuckets; k++) {
				cum += acc.buckets[k];
				Io__Prometheus__Client__Exemplar *x = f->exemplars ? exemplar_of(pl, f, s, k) : NULL;
				if (k == f->nbuckets && !x)
					break; /* +Inf is implied by the count, unless it carries an exemplar */
				Io__Prometheus__Client__Bucket *bk = pool_alloc(pl, sizeof *bk);
				if (!bk)
					return;
				io__prometheus__client__bucket__init(bk);
				bk->has_cumulative_count = bk->has_upper_bound = true;
				bk->cumulative_count = cum;
				bk->upper_bound = f->bounds[k];
				bk->exemplar = x;
				h->bucket[h->n_bucket++] = bk;
			}
			h->has_sample_count = h->has_sample_sum = true;
			h->sample_count = cum; /* the classic buckets' total, as _count */
			h->sample_sum = v;
			if (f->sketch && !native_of(pl, f, s, h))
				continue; /* native cells past a truncated end: leave the series out */
			break;
		}
		}
		mf.metric[mf.n_metric++] = m;
	}
	put_family(b, &mf);
}

static void encode_own(struct pool *pl, shmet_buf *b, const struct render_own *o)
{
	static const Io__Prometheus__Client__MetricType t[] = {
		[SHMET_EXPO_COUNTER] = IO__PROMETHEUS__CLIENT__METRIC_TYPE__COUNTER,
		[SHMET_EXPO_GAUGE] = IO__PROMETHEUS__CLIENT__METRIC_TYPE__GAUGE,
	};
	Io__Prometheus__Client__MetricFamily mf = IO__PROMETHEUS__CLIENT__METRIC_FAMILY__INIT;
	Io__Prometheus__Client__Metric *ms[RENDER_OWN_VALUES];
	mf.name = (char *)o->name;
	mf.help = (char *)o->help;
	mf.has_type = true;
	mf.type = o->type == SHMET_EXPO_COUNTER ? t[SHMET_EXPO_COUNTER] : t[SHMET_EXPO_GAUGE];
	mf.metric = ms;
	for (int i = 0; i < (o->n ? o->n : 1); i++) {
		Io__Prometheus__Client__Metric *m = pool_alloc(pl, sizeof *m);
		Io__Prometheus__Client__LabelPair **lp = pool_alloc(pl, sizeof *lp);
		if (!m || !lp)
			return;
		io__prometheus__client__metric__init(m);
		const char *lv = o->n ? o->lvalues[i] : o->lvalue;
		if (o->label && lv) {
			if (!(lp[0] = label_pair(pl, o->label, lv)))
				return;
			m->label = lp, m->n_label = 1;
		}
		if (o->type == SHMET_EXPO_COUNTER) {
			if (!(m->counter = pool_alloc(pl, sizeof *m->counter)))
				return;
			io__prometheus__client__counter__init(m->counter);
			m->counter->has_value = true, m->counter->value = o->values[i];
		} else {
			if (!(m->gauge = pool_alloc(pl, sizeof *m->gauge)))
				return;
			io__prometheus__client__gauge__init(m->gauge);
			m->gauge->has_value = true, m->gauge->value = o->values[i];
		}
		ms[mf.n_metric++] = m;
	}
	put_family(b, &mf);
}

/* A copy of text[0..n) with the text format's escapes (\\ \" \n) undone,
 * in the pool. */
static char *unescaped(struct pool *pl, const char *text, size_t n)
{
	char *o = pool_alloc(pl, n + 1);
	if (!o)
		return NULL;
	size_t k = 0;
	for (size_t i = 0; i < n; i++) {
		if (text[i] == '\\' && i + 1 < n) {
			i++;
			o[k++] = text[i] == 'n' ? '\n' : text[i];
		} else
			o[k++] = text[i];
	}
	o[k] = 0;
	return o;
}

/* selfmetrics.c's families (process_*, per-worker, host, build info) speak
 * only through the text encoder; their counters and gauges are carried
 * over from that rendering, which this process made and escaped itself, so
 * the parse below trusts its shape and only guards its bounds.  Lines it
 * does not recognise are left out. */
static void encode_self(struct collector *c, struct pool *pl, shmet_buf *b, const struct self_family *sf)
{
	shmet_buf t;
	shmet_buf_init(&t);
	sf->render(c, &t, SHMET_EXPO_TEXT);
	Io__Prometheus__Client__MetricFamily mf = IO__PROMETHEUS__CLIENT__METRIC_FAMILY__INIT;
	size_t cap = 0;
	mf.name = (char *)sf->name;
	mf.has_type = true;
	mf.type = IO__PROMETHEUS__CLIENT__METRIC_TYPE__GAUGE;
	const char *p = t.data, *end = t.data ? t.data + t.len : NULL;
	while (p && p < end && !t.oom && !pl->oom) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		const char *le = nl ? nl : end;
		size_t n = (size_t)(le - p);
		if (n > 7 && memcmp(p, "# HELP ", 7) == 0) {
			const char *h = memchr(p + 7, ' ', n - 7);
			if (h)
				mf.help = unescaped(pl, h + 1, (size_t)(le - h - 1));
		} else if (n > 7 && memcmp(p, "# TYPE ", 7) == 0) {
			if (n >= 8 && memcmp(le - 8, " counter", 8) == 0)
				mf.type = IO__PROMETHEUS__CLIENT__METRIC_TYPE__COUNTER;
		} else if (n && p[0] != '#') {
			const char *sp = le;
			while (sp > p && sp[-1] != ' ')
				sp--;
			if (sp == p)
				goto next;
			Io__Prometheus__Client__Metric *m = pool_alloc(pl, sizeof *m);
			if (!m)
				break;
			io__prometheus__client__metric__init(m);
			char num[64];
			size_t vn = (size_t)(le - sp) < sizeof num - 1 ? (size_t)(le - sp) : sizeof num - 1;
			memcpy(num, sp, vn);
			num[vn] = 0;
			double v = strtod(num, NULL);
			const char *lb = memchr(p, '{', (size_t)(sp - p));
			if (lb) {
				/* name="value",... up to the closing brace */
				Io__Prometheus__Client__LabelPair **lp = pool_alloc(pl, 8 * sizeof *lp);
				if (!lp)
					break;
				const char *q = lb + 1;
				while (q < sp && *q != '}' && m->n_label < 8) {
					const char *eq = memchr(q, '=', (size_t)(sp - q));
					if (!eq || eq + 1 >= sp || eq[1] != '"')
						break;
					const char *vs = eq + 2, *ve = vs;
					while (ve < sp && *ve != '"')
						ve += *ve == '\\' ? 2 : 1;
					if (ve >= sp)
						break;
					char *ln = unescaped(pl, q, (size_t)(eq - q)), *lv = unescaped(pl, vs, (size_t)(ve - vs));
					if (!ln || !lv || !(lp[m->n_label] = label_pair(pl, ln, lv)))
						break;
					m->n_label++;
					q = ve + 1;
					if (q < sp && *q == ',')
						q++;
				}
				m->label = lp;
			}
			if (mf.type == IO__PROMETHEUS__CLIENT__METRIC_TYPE__COUNTER) {
				if (!(m->counter = pool_alloc(pl, sizeof *m->counter)))
					break;
				io__prometheus__client__counter__init(m->counter);
				m->counter->has_value = true, m->counter->value = v;
			} else {
				if (!(m->gauge = pool_alloc(pl, sizeof *m->gauge)))
					break;
				io__prometheus__client__gauge__init(m->gauge);
				m->gauge->has_value = true, m->gauge->value = v;
			}
			if (mf.n_metric == cap) {
				size_t nc = cap ? 2 * cap : 16;
				Io__Prometheus__Client__Metric **nm = pool_alloc(pl, nc * sizeof *nm);
				if (!nm)
					break;
				if (cap)
					memcpy(nm, mf.metric, cap * sizeof *nm);
				mf.metric = nm, cap = nc;
			}
			mf.metric[mf.n_metric++] = m;
		}
	next:
		p = nl ? nl + 1 : end;
	}
	if (t.oom)
		pl->oom = true;
	if (!pl->oom)
		put_family(b, &mf);
	shmet_buf_free(&t);
}

static void render_protobuf(struct collector *c, const struct view *v, shmet_buf *b, struct pool *pl)
{
	struct render_own own[RENDER_OWN_MAX];
	size_t nown = render_own_metrics(c, v, own), o = 0;
	unsigned e = 0;
	/* the same order as the text formats (render_metrics): names sorted,
	 * the collector's two lists of its own merged in */
	for (uint32_t i = 0; i <= v->nfamilies && !pl->oom; i++) {
		const struct view_family *f = i < v->nfamilies ? &v->families[i] : NULL;
		if (f && !view_family_exposed(f))
			continue;
		for (;;) {
			bool own_next = o < nown && (!f || strcmp(own[o].name, f->name) < 0);
			bool self_next = e < self_nfamilies && (!f || strcmp(self_families[e].name, f->name) < 0);
			if (own_next && (!self_next || strcmp(own[o].name, self_families[e].name) < 0))
				encode_own(pl, b, &own[o++]);
			else if (self_next)
				encode_self(c, pl, b, &self_families[e++]);
			else
				break;
			pool_reset(pl);
		}
		if (f) {
			encode_family(c, pl, b, f);
			pool_reset(pl);
		}
	}
	if (pl->oom)
		b->oom = 1;
}

bool collector_render_protobuf(struct collector *c, shmet_buf *b)
{
	for (int attempt = 0; attempt < 2; attempt++) {
		sigjmp_buf jb;
		/* volatile: read after a siglongjmp */
		struct pool pool = {NULL, 0, 0, false}, *volatile pl = &pool;
		const struct view *v = view_enter(c);
		if (sigsetjmp(jb, 1) == 0) {
			collector_guard_enter(&jb);
			render_protobuf(c, v, b, pl);
			collector_guard_leave();
			view_leave(c);
			pool_reset(pl);
			free(pl->p);
			return true;
		}
		/* the file shrank while we read it (see collector_render) */
		collector_guard_leave();
		view_leave(c);
		pool_reset(pl);
		free(pl->p);
		shmet_buf_reset(b);
		collector_check_size(c, false);
	}
	return false;
}
