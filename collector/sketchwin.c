/* Summary quantiles over a sliding window, from the merged sketch counts.
 *
 * Every process's sketch counts only grow, and a fold moves a dead worker's
 * counts into the retired half without changing their sum, so the merged
 * counts of a series (every live and unfolded region plus the retired half)
 * only grow too.  A window is then a difference: the counts now minus the
 * counts at the window's start.  The updater keeps, per series, the last
 * age_buckets snapshots taken every max_age / age_buckets (the oldest is the
 * start), as client_golang rotates its age buckets; scrapes only read them.
 *
 * Threads: sketchwin_tick runs on the updater, sketchwin_quantiles on HTTP
 * threads; the mutex guards the table and every entry.  Segment memory is
 * read outside the mutex, because a SIGBUS there leaves by siglongjmp. */
#include "collector.h"

#include <math.h>
#include <stdlib.h>

struct sw_entry {
	char *key;
	size_t klen;
	uint32_t nslots;   /* sk->count + 2 */
	uint32_t cap;      /* snapshots kept: age_buckets */
	uint32_t n, head;  /* snapshots held; index of the oldest */
	uint64_t next_ns;  /* when the next snapshot is due */
	uint64_t tick;     /* the last tick that saw the series */
	uint64_t *snaps;   /* cap * nslots counts */
};

struct sketchwin {
	pthread_mutex_t mu;
	struct keymap index; /* key -> entry */
	struct sw_entry **e;
	size_t n, cap;
	uint64_t tick;
};

int sketchwin_open(struct collector *c)
{
	struct sketchwin *w = calloc(1, sizeof *w);
	if (!w)
		return -1;
	pthread_mutex_init(&w->mu, NULL);
	c->sketchwin = w;
	return 0;
}

static void entry_free(struct sw_entry *e)
{
	free(e->key);
	free(e->snaps);
	free(e);
}

void sketchwin_close(struct collector *c)
{
	struct sketchwin *w = c->sketchwin;
	if (!w)
		return;
	for (size_t i = 0; i < w->n; i++)
		entry_free(w->e[i]);
	free(w->e);
	keymap_free(&w->index);
	pthread_mutex_destroy(&w->mu);
	free(w);
	c->sketchwin = NULL;
}

/* "family\xfflabels": a series' identity in the view (labels are its
 * pre-escaped text, unique within the family).  NULL when out of memory. */
static char *series_key(const struct view_family *f, const struct view_series *s, size_t *len)
{
	size_t nl = strlen(f->name);
	char *k = malloc(nl + 1 + s->labels_len);
	if (!k)
		return NULL;
	memcpy(k, f->name, nl);
	k[nl] = '\xff';
	memcpy(k + nl + 1, s->labels, s->labels_len);
	*len = nl + 1 + s->labels_len;
	return k;
}

/* The merged counts of a series, into acc (nslots, zeroed here). */
bool sketch_series_counts(const struct view_family *f, const struct view_series *s, uint64_t *acc)
{
	const struct shmet_sketch *sk = f->sketch;
	bool whole = true;
	memset(acc, 0, (sk->count + 2) * sizeof *acc);
	for (uint32_t i = 0; i < s->nrefs; i++) {
		bool ret = s->refs[i].retired;
		if (!collector_readable(s->refs[i].cells, shmet_cell_size_sk(f->type, f->nbuckets, sk->count, ret))) {
			whole = false; /* past the end of a truncated segment: never touched */
			continue;
		}
		if (!s->refs[i].baseline)
			shmet_sketch_load_add(acc, s->refs[i].cells + shmet_sketch_cell(f->type, f->nbuckets, ret), sk->count + 2);
	}
	/* a removal's baseline (REMOVAL), after every count it is part of */
	for (uint32_t i = 0; i < s->nrefs; i++) {
		if (!s->refs[i].baseline ||
		    !collector_readable(s->refs[i].cells, shmet_cell_size_sk(f->type, f->nbuckets, sk->count, true)))
			continue;
		const uint64_t *c = s->refs[i].cells + shmet_sketch_cell(f->type, f->nbuckets, true);
		for (uint32_t k = 0; k < sk->count + 2; k++) {
			uint64_t b = __atomic_load_n(&c[k], __ATOMIC_RELAXED); /* as shmet_sketch_load_add's loads */
			acc[k] = acc[k] > b ? acc[k] - b : 0;
		}
	}
	return whole;
}

static struct sw_entry *entry_new(struct sketchwin *w, char *key, size_t klen, const struct shmet_sketch *sk,
				  uint64_t now_ns)
{
	struct sw_entry *e = calloc(1, sizeof *e);
	if (!e)
		return NULL;
	e->nslots = sk->count + 2;
	e->cap = sk->age_buckets;
	e->snaps = calloc((size_t)e->cap * e->nslots, sizeof *e->snaps);
	if (!e->snaps)
		goto fail;
	if (w->n == w->cap) {
		size_t cap = w->cap ? 2 * w->cap : 16;
		struct sw_entry **ne = realloc(w->e, cap * sizeof *ne);
		if (!ne)
			goto fail;
		w->e = ne;
		w->cap = cap;
	}
	if (keymap_put(&w->index, key, klen, (uintptr_t)e) != 0)
		goto fail;
	e->key = key;
	e->klen = klen;
	/* the first snapshot is zero: what was observed before the series was
	 * first seen counts until it ages out, as if seen from its start */
	e->n = 1;
	e->next_ns = now_ns + sk->max_age_ns / sk->age_buckets;
	w->e[w->n++] = e;
	return e;
fail:
	free(e->snaps);
	free(e);
	return NULL;
}

/* Drop entries of series no longer in the view (the keymap has no delete:
 * it is built again from what is left). */
static void sweep(struct sketchwin *w)
{
	size_t k = 0;
	for (size_t i = 0; i < w->n; i++) {
		if (w->e[i]->tick == w->tick)
			w->e[k++] = w->e[i];
		else
			entry_free(w->e[i]);
	}
	if (k == w->n)
		return;
	w->n = k;
	keymap_free(&w->index);
	memset(&w->index, 0, sizeof w->index);
	for (size_t i = 0; i < w->n; i++)
		if (keymap_put(&w->index, w->e[i]->key, w->e[i]->klen, (uintptr_t)w->e[i]) != 0) {
			/* out of memory: forget the rest; they start again from zero */
			for (size_t j = i; j < w->n; j++)
				entry_free(w->e[j]);
			w->n = i;
			break;
		}
}

void sketchwin_tick(struct collector *c, const struct view *v, uint64_t now_ns)
{
	struct sketchwin *w = c->sketchwin;
	uint64_t *cur = NULL;
	size_t cur_cap = 0;
	if (!w || !v)
		return;
	pthread_mutex_lock(&w->mu);
	w->tick++;
	pthread_mutex_unlock(&w->mu);
	for (uint32_t i = 0; i < v->nfamilies; i++) {
		const struct view_family *f = &v->families[i];
		if (!f->sketch || f->type != SHMET_SUMMARY)
			continue; /* native histograms have no window: Prometheus keeps their history */
		uint32_t nslots = f->sketch->count + 2;
		if (cur_cap < nslots) {
			free(cur);
			if (!(cur = malloc(nslots * sizeof *cur)))
				return;
			cur_cap = nslots;
		}
		for (uint32_t j = 0; j < f->nseries; j++) {
			const struct view_series *s = &f->series[j];
			size_t klen;
			char *key = series_key(f, s, &klen);
			if (!key)
				continue;
			bool whole = sketch_series_counts(f, s, cur); /* outside the mutex: may fault */
			pthread_mutex_lock(&w->mu);
			struct kv *kv = keymap_find(&w->index, key, klen);
			struct sw_entry *e = kv ? (struct sw_entry *)kv->val : NULL;
			if (e && e->nslots != nslots)
				e = NULL; /* cannot happen: a family's shape never changes */
			if (!kv) {
				e = entry_new(w, key, klen, f->sketch, now_ns);
				key = e ? NULL : key;
			}
			if (e) {
				e->tick = w->tick;
				/* a partial read would start the window too low: wait for a whole one */
				if (whole && now_ns >= e->next_ns) {
					uint32_t slot;
					if (e->n < e->cap) {
						slot = (e->head + e->n++) % e->cap;
					} else { /* the oldest goes; the next oldest starts the window */
						slot = e->head;
						e->head = (e->head + 1) % e->cap;
					}
					memcpy(e->snaps + (size_t)slot * nslots, cur, nslots * sizeof *cur);
					e->next_ns = now_ns + f->sketch->max_age_ns / f->sketch->age_buckets;
				}
			}
			pthread_mutex_unlock(&w->mu);
			free(key);
		}
	}
	free(cur);
	pthread_mutex_lock(&w->mu);
	sweep(w);
	pthread_mutex_unlock(&w->mu);
}

bool sketchwin_quantiles(struct collector *c, const struct view_family *f, const struct view_series *s, double *out)
{
	const struct shmet_sketch *sk = f->sketch;
	uint32_t nslots = sk->count + 2;
	uint64_t *cur = malloc(2 * nslots * sizeof *cur), *start = cur + nslots;
	size_t klen;
	char *key = series_key(f, s, &klen);
	bool ok = cur && key && sketch_series_counts(f, s, cur);
	if (ok) {
		struct sketchwin *w = c->sketchwin;
		memset(start, 0, nslots * sizeof *start); /* not seen by a tick yet: from zero */
		pthread_mutex_lock(&w->mu);
		struct kv *kv = keymap_find(&w->index, key, klen);
		const struct sw_entry *e = kv ? (const struct sw_entry *)kv->val : NULL;
		if (e && e->nslots == nslots)
			memcpy(start, e->snaps + (size_t)e->head * nslots, nslots * sizeof *start);
		pthread_mutex_unlock(&w->mu);
		shmet_sketch_window(cur, start, cur, nslots);
		for (uint32_t q = 0; q < sk->nobjectives; q++)
			out[q] = shmet_sketch_quantile(sk, cur, sk->objectives[q]);
	}
	free(cur);
	free(key);
	return ok;
}
