/* /metrics: the view's families plus the collector's own, in name order. */
#include "collector.h"
#include "history.h"
#include "stream.h"
#include "selfmetrics.h"

#include <math.h>
#include <stdio.h>

static void put_value(shmet_buf *b, enum shmet_expo_format fmt, double v, bool integral)
{
	char t[SHMET_FMT_DOUBLE_MAX];
	size_t n;
	if (integral && fmt == SHMET_EXPO_OPENMETRICS && v >= 0 && v < 18446744073709551616.0 && v == floor(v)) {
		shmet_buf_put_u64(b, (uint64_t)v);
		return;
	}
	n = fmt == SHMET_EXPO_OPENMETRICS ? shmet_fmt_double_om(t, v) : shmet_fmt_double(t, v);
	shmet_buf_append(b, t, n);
}

/* One sample line from pre-escaped labels: the scrape's inner loop. */
static void put_line_as(shmet_buf *b, enum shmet_expo_format fmt, const char *name, size_t name_len,
			const char *suffix, size_t suffix_len, const struct view_series *s, const char *bound_label,
			const char *bound, double v, bool integral)
{
	shmet_buf_reserve(b, name_len + suffix_len + s->labels_len + 64);
	shmet_buf_append(b, name, name_len);
	shmet_buf_append(b, suffix, suffix_len);
	if (s->labels_len || bound) {
		shmet_buf_putc(b, '{');
		shmet_buf_append(b, s->labels, s->labels_len);
		if (bound) {
			if (s->labels_len)
				shmet_buf_putc(b, ',');
			shmet_buf_puts(b, bound_label);
			shmet_buf_puts(b, bound);
			shmet_buf_putc(b, '"');
		}
		shmet_buf_putc(b, '}');
	}
	shmet_buf_putc(b, ' ');
	put_value(b, fmt, v, integral);
	shmet_buf_putc(b, '\n');
}

static void put_line(shmet_buf *b, enum shmet_expo_format fmt, const char *name, size_t name_len,
		     const char *suffix, size_t suffix_len, const struct view_series *s, const char *bound,
		     double v, bool integral)
{
	put_line_as(b, fmt, name, name_len, suffix, suffix_len, s, "le=\"", bound, v, integral);
}

static const enum shmet_expo_type expo_type[] = {
	[SHMET_COUNTER] = SHMET_EXPO_COUNTER,
	[SHMET_GAUGE] = SHMET_EXPO_GAUGE,
	[SHMET_HISTOGRAM] = SHMET_EXPO_HISTOGRAM,
	[SHMET_SUMMARY] = SHMET_EXPO_SUMMARY,
};

/* What OpenMetrics lets a family show (its strict parsers refuse the rest;
 * text 0.0.4 has no such rules and shows everything):
 *  - a gauge series only while some process contributes a value (for sum,
 *    max and min a live process; max and min only once it set it), as the
 *    JSON API says null for it;
 *  - a counter only when its value is neither NaN nor negative (the writer
 *    refuses both; only bytes written outside it get there);
 *  - _sum and _count of a histogram only when no bucket bound is negative
 *    (the spec forbids _sum then, and _count goes with _sum) and the sum is
 *    neither NaN nor negative (a negative observation, or +Inf and -Inf
 *    observed); the buckets carry the count anyway;
 *  - _sum of a summary only when it is neither NaN nor negative. */
static bool om_counter_ok(double v)
{
	return v >= 0; /* false for NaN */
}

static void render_family(struct collector *c, shmet_buf *b, enum shmet_expo_format fmt, const struct view_family *f)
{
	double q[SHMET_MAX_OBJECTIVES];
	struct shmet_exemplar ex;
	if (f->nseries == 0)
		return;
	bool om = fmt == SHMET_EXPO_OPENMETRICS;
	bool neg_bound = false;
	for (uint32_t k = 0; f->type == SHMET_HISTOGRAM && k < f->nbuckets; k++)
		neg_bound |= f->bounds[k] < 0;
	bool header = false; /* written before the first sample: no family without samples */
	size_t nl = strlen(f->name);
	struct shmet_agg acc;
	for (uint32_t i = 0; i < f->nseries; i++) {
		const struct view_series *s = &f->series[i];
		if (!view_series_agg(f, s, &acc))
			continue; /* partly past a truncated segment's end: a partial sum would read as a reset */
		double v = shmet_agg_value(&acc, f->type);
		if ((f->type == SHMET_GAUGE && !acc.has) || (om && f->type == SHMET_COUNTER && !om_counter_ok(v)))
			continue;
		if (!header) {
			shmet_expo_family(b, fmt, expo_type[f->type], f->name, f->help);
			header = true;
		}
		switch (f->type) {
		case SHMET_COUNTER:
		case SHMET_GAUGE:
			/* the line up to its value was made with the series: one copy */
			shmet_buf_reserve(b, s->line_len + SHMET_FMT_DOUBLE_MAX + 2);
			shmet_buf_append(b, s->line, s->line_len);
			put_value(b, fmt, v, false);
			shmet_buf_putc(b, '\n');
			if (om && f->exemplars && view_exemplar(f, s, 0, &ex)) /* text 0.0.4 has none */
				exemplar_append_om(b, &ex);
			break;
		case SHMET_HISTOGRAM: {
			uint64_t cum = 0;
			for (uint32_t k = 0; k <= f->nbuckets; k++) {
				cum += acc.buckets[k];
				put_line(b, fmt, f->name, nl, "_bucket", 7, s, f->bound_text[k], (double)cum, true);
				if (om && f->exemplars && view_exemplar(f, s, k, &ex))
					exemplar_append_om(b, &ex);
			}
			if (om && (neg_bound || !om_counter_ok(v)))
				break;
			put_line(b, fmt, f->name, nl, "_sum", 4, s, NULL, v, false);
			/* _count is the sum of the buckets: equal to +Inf in every scrape */
			put_line(b, fmt, f->name, nl, "_count", 6, s, NULL, (double)cum, true);
			break;
		}
		case SHMET_SUMMARY:
			if (f->sketch && sketchwin_quantiles(c, f, s, q)) /* quantiles of the window, merged */
				for (uint32_t k = 0; k < f->sketch->nobjectives; k++) {
					char t[SHMET_FMT_DOUBLE_MAX];
					shmet_fmt_bound(t, f->sketch->objectives[k]);
					put_line_as(b, fmt, f->name, nl, "", 0, s, "quantile=\"", t, q[k], false);
				}
			if (!om || om_counter_ok(v))
				put_line(b, fmt, f->name, nl, "_sum", 4, s, NULL, v, false);
			put_line(b, fmt, f->name, nl, "_count", 6, s, NULL, (double)acc.whole, true);
			break;
		}
	}
}

static void render_own(shmet_buf *b, enum shmet_expo_format fmt, const struct render_own *o)
{
	shmet_expo_family(b, fmt, o->type, o->name, o->help);
	for (int i = 0; i < (o->n ? o->n : 1); i++) {
		struct shmet_expo_label l = {o->label, o->label ? strlen(o->label) : 0, NULL, 0};
		const char *lv = o->n ? o->lvalues[i] : o->lvalue;
		if (lv) {
			l.value = lv;
			l.value_len = strlen(lv);
		}
		shmet_expo_sample(b, fmt, o->name, NULL, &l, o->label ? 1 : 0, NULL, 0, o->values[i], false);
	}
}

size_t render_own_metrics(struct collector *c, const struct view *v, struct render_own *out)
{
	const struct view_stats *st = &v->stats;
	const struct shmet_seg_header *h = c->seg.map.hdr;
	double claim_failures = collector_readable(h, sizeof *h) /* a truncated file may have lost even the header */
					? (double)__atomic_load_n(&h->sh_claim_failures, __ATOMIC_RELAXED)
					: 0;
	double refused = collector_readable(h, sizeof *h)
				 ? (double)__atomic_load_n(&h->sh_registrations_refused, __ATOMIC_RELAXED)
				 : 0;
	double last_scrape = (double)__atomic_load_n(&c->last_scrape_ns, __ATOMIC_RELAXED) / 1e9;
	struct stream_stats ss;
	struct history_stats hs;
	stream_stats(c, &ss);
	history_stats(c->history, &hs);
	/* read now: a scrape that finds the view current triggers no scan */
	double writes_dropped = (double)collector_writes_dropped(c);
	const struct shmet_retired_header *rh = shmet_retired_header(&c->seg, shmet_retired_active(&c->seg));
	double expired = collector_readable(rh, sizeof *rh) ? (double)__atomic_load_n(&rh->rh_expired, __ATOMIC_RELAXED) : 0;
	const struct render_own own[] = {
		{"shmetricsd_corrupt_records_total", "Segment records skipped because they failed validation.",
		 SHMET_EXPO_COUNTER, NULL, NULL, {(double)__atomic_load_n(&c->corrupt_records, __ATOMIC_RELAXED)}, {0}, 0},
		{"shmetricsd_dashboard_history_dropped_total",
		 "Dashboard frames that could not be kept in the segment's history (too large even without their families).",
		 SHMET_EXPO_COUNTER, NULL, NULL, {(double)hs.dropped}, {0}, 0},
		{"shmetricsd_dashboard_history_rejected_total",
		 "Records of the segment's dashboard history that failed their checks when this collector read them.",
		 SHMET_EXPO_COUNTER, NULL, NULL, {(double)hs.rejected}, {0}, 0},
		{"shmetricsd_dashboard_history_slots",
		 "Frames the segment's dashboard history holds; 0 when there is no history region (a restart starts empty).",
		 SHMET_EXPO_GAUGE, NULL, NULL, {(double)hs.slots}, {0}, 0},
		{"shmetricsd_family_conflicts_total",
		 "Series skipped because processes registered one family name with different types, labels or buckets.",
		 SHMET_EXPO_COUNTER, NULL, NULL, {(double)__atomic_load_n(&c->conflicts, __ATOMIC_RELAXED)}, {0}, 0},
		{"shmetricsd_fold_blocked",
		 "1 while folding is stopped because the active retired totals failed validation (see the log).",
		 SHMET_EXPO_GAUGE, NULL, NULL, {__atomic_load_n(&c->fold_blocked, __ATOMIC_RELAXED) ? 1 : 0}, {0}, 0},
		{"shmetricsd_fold_skipped_regions",
		 "Dead regions the last fold had to leave allocated because the retired area is full.", SHMET_EXPO_GAUGE,
		 NULL, NULL, {(double)__atomic_load_n(&c->fold_skipped, __ATOMIC_RELAXED)}, {0}, 0},
		{"shmetricsd_folds_inexact_total",
		 "Float totals a fold had to round because they needed more than 159 significant bits.", SHMET_EXPO_COUNTER,
		 NULL, NULL, {(double)__atomic_load_n(&c->folds_inexact, __ATOMIC_RELAXED)}, {0}, 0},
		{"shmetricsd_folds_total", "Dead worker regions folded into the retired totals, since the segment was created.",
		 SHMET_EXPO_COUNTER, NULL, NULL, {(double)st->folds}, {0}, 0},
		{"shmetricsd_region_claim_failures_total",
		 "Attempts to claim a region that found none free (or no memory); a process without a region tries again about once a second.",
		 SHMET_EXPO_COUNTER, NULL, NULL, {claim_failures}, {0}, 0},
		{"shmetricsd_regions", "Regions of the segment by state.", SHMET_EXPO_GAUGE, "state", NULL,
		 {st->regions_dead, st->regions_free, st->regions_live, st->regions_history},
		 {"dead", "free", "live", "history"}, 4},
		{"shmetricsd_registrations_refused_total",
		 "Family registrations the segment's family registry refused (a clashing shape or sample name, or a full registry).",
		 SHMET_EXPO_COUNTER, NULL, NULL, {refused}, {0}, 0},
		{"shmetricsd_removals_applied_total",
		 "Series removals (shmet_series_remove, shmet_family_clear, DELETE) this collector applied.",
		 SHMET_EXPO_COUNTER, NULL, NULL, {(double)__atomic_load_n(&c->removals_applied, __ATOMIC_RELAXED)}, {0}, 0},
		{"shmetricsd_removals_pending",
		 "Series removals written to the segment that the collector has not applied yet (the log says why when they wait).",
		 SHMET_EXPO_GAUGE, NULL, NULL, {(double)__atomic_load_n(&c->removals_pending, __ATOMIC_RELAXED)}, {0}, 0},
		{"shmetricsd_retired_series_expired_total",
		 "Series that only dead workers' totals held, dropped after --retired-ttl without a write, since the segment was created.",
		 SHMET_EXPO_COUNTER, NULL, NULL, {expired}, {0}, 0},
		{"shmetricsd_scrape_duration_seconds", "Time the previous /metrics render took.", SHMET_EXPO_GAUGE, NULL,
		 NULL, {last_scrape}, {0}, 0},
		{"shmetricsd_segment_bus_errors_total",
		 "Reads or writes of segment pages past the end of a truncated segment file, caught (SIGBUS).",
		 SHMET_EXPO_COUNTER, NULL, NULL, {(double)__atomic_load_n(&collector_bus_errors, __ATOMIC_RELAXED)}, {0}, 0},
		{"shmetricsd_segment_size_bytes", "Size of the segment file.", SHMET_EXPO_GAUGE, NULL, NULL,
		 {(double)st->bytes_total}, {0}, 0},
		{"shmetricsd_segment_truncations_total",
		 "Times the segment file was found shorter than the segment; while it is, the last good view is served.",
		 SHMET_EXPO_COUNTER, NULL, NULL, {(double)__atomic_load_n(&c->truncations, __ATOMIC_RELAXED)}, {0}, 0},
		{"shmetricsd_segment_used_bytes", "Bytes of the segment in use by headers, retired totals and live or unfolded regions.",
		 SHMET_EXPO_GAUGE, NULL, NULL, {(double)st->bytes_used}, {0}, 0},
		{"shmetricsd_series", "Series exposed from the segment.", SHMET_EXPO_GAUGE, NULL, NULL,
		 {(double)st->series}, {0}, 0},
		{"shmetricsd_stream_clients", "Clients of /api/v1/metrics/stream connected now.", SHMET_EXPO_GAUGE, NULL,
		 NULL, {(double)ss.clients}, {0}, 0},
		{"shmetricsd_stream_refused_total", "Stream clients refused with 503 past --stream-max-clients.",
		 SHMET_EXPO_COUNTER, NULL, NULL, {(double)ss.refused}, {0}, 0},
		{"shmetricsd_writes_dropped_total",
		 "Writes refused on the hot path (fallback handles, NaN, negative counter increments) or made without a region.",
		 SHMET_EXPO_COUNTER, NULL, NULL, {writes_dropped}, {0}, 0},
	};
	_Static_assert(sizeof own / sizeof *own <= RENDER_OWN_MAX, "RENDER_OWN_MAX");
	memcpy(out, own, sizeof own);
	return sizeof own / sizeof *own;
}

void render_metrics(struct collector *c, const struct view *v, shmet_buf *b, enum shmet_expo_format fmt)
{
	struct render_own own[RENDER_OWN_MAX];
	size_t nown = render_own_metrics(c, v, own), o = 0;
	unsigned e = 0; /* selfmetrics.c's families: a second sorted list */
	for (uint32_t i = 0; i <= v->nfamilies; i++) {
		const struct view_family *f = i < v->nfamilies ? &v->families[i] : NULL;
		if (f && !view_family_exposed(f))
			continue;
		for (;;) {
			bool own_next = o < nown && (!f || strcmp(own[o].name, f->name) < 0);
			bool self_next = e < self_nfamilies && (!f || strcmp(self_families[e].name, f->name) < 0);
			if (own_next && (!self_next || strcmp(own[o].name, self_families[e].name) < 0))
				render_own(b, fmt, &own[o++]);
			else if (self_next)
				self_families[e++].render(c, b, fmt);
			else
				break;
		}
		if (f)
			render_family(c, b, fmt, f);
	}
	shmet_expo_eof(b, fmt);
}
