/* shmetricsd's updater: fold dead workers, rebuild the view when the segment
 * changed, publish it under RCU, and free what no reader can still see. */
#include "history.h"
#include "http.h"
#include "selfmetrics.h"
#include "watch.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <time.h>
#include <unistd.h>
#include <urcu-bp.h>

/* ---- SIGBUS guard (collector.h says what it is for) ---- */

uintptr_t collector_seg_end;    /* relaxed: a hint for readers; a stale one is caught by the guards */
uint64_t collector_bus_errors; /* relaxed: a statistic */

/* The mappings of the segment in this process: the collector's own
 * (slot 0) and the push API's writer's.  Relaxed: each is set before the
 * threads that may fault in it start, and cleared after they stopped. */
#define GUARD_MAPS 2
static struct guard_map {
	uintptr_t lo, hi;
	const struct shmet_seg_map *map; /* for mapping the file again */
} guard_maps[GUARD_MAPS];
static int guard_patched; /* relaxed: a zero page replaced a segment page; the updater maps the file again */
static __thread sigjmp_buf *guard_jb;

static bool in_segment(uintptr_t a)
{
	for (int i = 0; i < GUARD_MAPS; i++)
		if (a >= __atomic_load_n(&guard_maps[i].lo, __ATOMIC_RELAXED) &&
		    a < __atomic_load_n(&guard_maps[i].hi, __ATOMIC_RELAXED))
			return true;
	return false;
}

static void guard_map_set(int i, const struct shmet_seg_map *m)
{
	guard_maps[i].map = m;
	__atomic_store_n(&guard_maps[i].lo, m ? (uintptr_t)m->base : 0, __ATOMIC_RELAXED);
	__atomic_store_n(&guard_maps[i].hi, m ? (uintptr_t)m->base + m->size : 0, __ATOMIC_RELAXED);
}

void collector_guard_writer(const struct shmet_seg_map *m) { guard_map_set(1, m); }

static void on_sigbus(int sig, siginfo_t *si, void *uctx)
{
	(void)uctx;
	uintptr_t a = (uintptr_t)si->si_addr;
	if (in_segment(a)) {
		/* relaxed: a statistic */
		__atomic_fetch_add(&collector_bus_errors, 1, __ATOMIC_RELAXED);
		if (guard_jb)
			siglongjmp(*guard_jb, 1); /* sigsetjmp(jb, 1) unblocks SIGBUS again */
		/* Outside a guard: a private zero page over the faulting one lets
		 * the access complete.  The raw system call: no library (nor a
		 * sanitizer's interceptor) runs inside this handler. */
		uintptr_t page = a & ~(uintptr_t)(SHMET_PAGE - 1);
		long r = syscall(SYS_mmap, page, (size_t)SHMET_PAGE, PROT_READ | PROT_WRITE,
				 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, (off_t)0);
		if (r == (long)page) {
			__atomic_store_n(&guard_patched, 1, __ATOMIC_RELAXED);
			return;
		}
	}
	/* Not the segment's: die of it as if there were no handler. */
	signal(sig, SIG_DFL);
	raise(sig);
}

static void guard_install(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_sigaction = on_sigbus;
	sa.sa_flags = SA_SIGINFO | SA_NODEFER; /* a fault in a zero-page retry is handled too */
	sigemptyset(&sa.sa_mask);
	sigaction(SIGBUS, &sa, NULL);
}

void collector_guard_enter(sigjmp_buf *jb) { guard_jb = jb; }
void collector_guard_leave(void) { guard_jb = NULL; }

/* Log the 1st..10th event of a kind, then the 16th, 32nd, ...: a file whose
 * size flaps must not flood the log. */
static bool worth_logging(uint64_t n)
{
	return n <= 10 || (n & (n - 1)) == 0;
}

bool collector_check_size(struct collector *c, bool updater)
{
	const struct shmet_seg_map *m = &c->seg.map;
	struct stat st;
	if (fstat(m->fd, &st) != 0)
		return true; /* cannot tell: carry on, the guards still hold */
	uint64_t size = (uint64_t)st.st_size, need = m->size;
	uintptr_t end = (uintptr_t)m->base + (size < need ? (uintptr_t)size : (uintptr_t)need);
	__atomic_store_n(&collector_seg_end, end, __ATOMIC_RELAXED);
	if (!updater)
		return size >= need;
	__atomic_store_n(&c->file_size, size, __ATOMIC_RELAXED);
	if (size < need) {
		if (!c->truncated) {
			c->truncated = true;
			uint64_t n = __atomic_add_fetch(&c->truncations, 1, __ATOMIC_RELAXED);
			if (worth_logging(n))
				collector_warn("segment %s was truncated to %llu bytes (it needs %llu): keeping the last good "
					      "view and reading nothing past the end; restore its size or recreate it "
					      "(truncation %llu)",
					      c->seg.path, (unsigned long long)size, (unsigned long long)need,
					      (unsigned long long)n);
		}
		return false;
	}
	if (__atomic_load_n(&guard_patched, __ATOMIC_RELAXED)) {
		/* Put the file back under the pages a zero page replaced: one
		 * atomic replacement of each whole mapping, at its address. */
		bool all = true;
		for (int i = 0; i < GUARD_MAPS; i++) {
			const struct shmet_seg_map *g = guard_maps[i].map;
			if (g && mmap(g->base, g->size, g->readonly ? PROT_READ : PROT_READ | PROT_WRITE,
				      MAP_SHARED | MAP_FIXED, g->fd, 0) == MAP_FAILED) {
				collector_warn("cannot map segment %s again: %s", c->seg.path, strerror(errno));
				all = false;
			}
		}
		if (all)
			__atomic_store_n(&guard_patched, 0, __ATOMIC_RELAXED);
	}
	if (c->truncated) {
		c->truncated = false;
		if (worth_logging(__atomic_load_n(&c->truncations, __ATOMIC_RELAXED)))
			collector_log("segment %s has its size again (%llu bytes); what lay past the cut reads as zero",
				      c->seg.path, (unsigned long long)size);
	}
	return true;
}

static bool render_alone(struct collector *c, shmet_buf *b, enum shmet_expo_format fmt)
{
	for (int attempt = 0; attempt < 2; attempt++) {
		sigjmp_buf jb;
		const struct view *v = view_enter(c);
		if (sigsetjmp(jb, 1) == 0) { /* 1: restore the signal mask on the way back */
			collector_guard_enter(&jb);
			render_metrics(c, v, b, fmt);
			collector_guard_leave();
			view_leave(c);
			return true;
		}
		/* The file shrank while we read it: find its end, render again. */
		collector_guard_leave();
		view_leave(c);
		shmet_buf_reset(b);
		collector_check_size(c, false);
	}
	return false;
}

bool collector_render(struct collector *c, shmet_buf *b, enum shmet_expo_format fmt)
{
	struct render_share *sh = &c->share[fmt == SHMET_EXPO_OPENMETRICS];
	pthread_mutex_lock(&c->share_mu);
	uint64_t now = shmet__now_ns(CLOCK_MONOTONIC);
	if (sh->rendering && now - sh->started_ns <= SHMET_SHARE_WINDOW_NS) {
		/* join: wait for that render (bounded by the window and a second) */
		uint64_t round = sh->round;
		struct timespec until;
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_sec += 1;
		int rc = 0;
		sh->waiters++;
		while (sh->round == round && rc == 0)
			rc = pthread_cond_timedwait(&c->share_done, &c->share_mu, &until);
		sh->waiters--;
		if (sh->round == round + 1 && sh->shared) {
			bool ok = sh->ok;
			shmet_buf_reserve(b, sh->body.len);
			shmet_buf_append(b, sh->body.data, sh->body.len);
			pthread_mutex_unlock(&c->share_mu);
			return ok;
		}
		pthread_mutex_unlock(&c->share_mu);
		return render_alone(c, b, fmt);
	}
	if (sh->rendering) { /* too old to join: its values would be stale */
		pthread_mutex_unlock(&c->share_mu);
		return render_alone(c, b, fmt);
	}
	sh->rendering = true;
	sh->started_ns = now;
	size_t expect = sh->last_len;
	pthread_mutex_unlock(&c->share_mu);
	/* room for what the last render wrote, and some: growing by doubling
	 * would copy the body over and over */
	shmet_buf_reserve(b, expect + expect / 8 + 4096);
	bool ok = render_alone(c, b, fmt);
	pthread_mutex_lock(&c->share_mu);
	sh->shared = false;
	if (sh->waiters) { /* a copy only for those who wait for one */
		shmet_buf_reset(&sh->body);
		shmet_buf_append(&sh->body, b->data, b->len);
		sh->shared = !sh->body.oom && !b->oom;
	}
	sh->ok = ok;
	sh->last_len = b->len;
	sh->rendering = false;
	sh->round++;
	pthread_cond_broadcast(&c->share_done);
	pthread_mutex_unlock(&c->share_mu);
	return ok;
}

const struct view *view_enter(struct collector *c)
{
	rcu_read_lock();
	/* acquire: pairs with view_publish, so the view's contents are visible */
	return __atomic_load_n(&c->view, __ATOMIC_ACQUIRE);
}

void view_leave(struct collector *c)
{
	SHMET_TSAN_RELEASE(&c->grace);
	rcu_read_unlock();
}

void view_publish(struct collector *c, struct view *v)
{
	/* release: the view is complete before any reader can load it */
	__atomic_store_n(&c->view, v, __ATOMIC_RELEASE);
}

void view_grace_period(struct collector *c)
{
	synchronize_rcu();
	SHMET_TSAN_ACQUIRE(&c->grace);
}

static struct shmet_fold_result fold_res;

/* Lost writes and failed claims, logged when they rise: at the first scan
 * that sees them (a restarted collector too), then at most once a minute,
 * with the rise since the last line. */
#define LOSS_LOG_INTERVAL_NS (UINT64_C(60) * 1000000000u)
static uint64_t logged_dropped, logged_claims, logged_refused, loss_logged_ns;
static bool loss_logged;

uint64_t collector_writes_dropped(struct collector *c)
{
	const struct shmet_segment *seg = &c->seg;
	const struct shmet_retired_header *rh = shmet_retired_header(seg, shmet_retired_active(seg));
	/* relaxed: statistics; every writer adds with relaxed atomics.  Only
	 * the updater folds, and a region is counted either here or in
	 * rh_dropped (a scrape racing a fold may miss or repeat one region's
	 * count: the maximum below keeps the figure from going down). */
	uint64_t was = __atomic_load_n(&c->writes_dropped, __ATOMIC_RELAXED);
	/* a truncated file: what lies past its end is not read (the figure
	 * stays at the last one) */
	const struct shmet_region_slot *slots = shmet_seg_slot(&seg->map, 0);
	if (!collector_readable(seg->map.hdr, sizeof *seg->map.hdr) || !collector_readable(rh, sizeof *rh) ||
	    !collector_readable(slots, (size_t)seg->regions * SHMET_CACHELINE))
		return was;
	uint64_t dropped = __atomic_load_n(&rh->rh_dropped, __ATOMIC_RELAXED) +
			   __atomic_load_n(&seg->map.hdr->sh_dropped_orphan, __ATOMIC_RELAXED);
	for (uint32_t i = 0; i < seg->regions; i++) {
		/* acquire: pairs with the claimer's CAS, as in shmet_region_info */
		uint64_t sg = __atomic_load_n(&shmet_seg_slot(&seg->map, i)->rs_state_gen, __ATOMIC_ACQUIRE);
		const struct shmet_region_header *rg = (const struct shmet_region_header *)(const void *)(
			seg->map.base + seg->regions_off + (uint64_t)i * seg->region_size);
		if (!collector_readable(rg, sizeof *rg))
			return was;
		if (shmet_state_of(sg) == SHMET_REGION_LIVE &&
		    __atomic_load_n(&rh->rh_folded_gen[i], __ATOMIC_RELAXED) != shmet_gen_of(sg))
			dropped += __atomic_load_n(&rg->rg_dropped, __ATOMIC_RELAXED);
	}
	/* relaxed: the scrape's figure; never below one it showed (any worker
	 * can write the sources) */
	while (dropped > was &&
	       !__atomic_compare_exchange_n(&c->writes_dropped, &was, dropped, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
	}
	return dropped > was ? dropped : was;
}

static void log_losses(struct collector *c)
{
	struct shmet_segment *seg = &c->seg;
	uint64_t dropped = collector_writes_dropped(c);
	uint64_t claims = __atomic_load_n(&seg->map.hdr->sh_claim_failures, __ATOMIC_RELAXED);
	uint64_t refused = __atomic_load_n(&seg->map.hdr->sh_registrations_refused, __ATOMIC_RELAXED);
	uint64_t now = shmet__now_ns(CLOCK_MONOTONIC);
	if (refused > logged_refused) {
		collector_warn("family registrations refused: %llu (+%llu): a process registered a family whose shape or "
			      "sample names clash with one the segment already has (the application's error says which); "
			      "see shmetricsd_registrations_refused_total",
			      (unsigned long long)refused, (unsigned long long)(refused - logged_refused));
		logged_refused = refused;
	}
	/* any worker can write these: a total below the last one logged is
	 * not a rise, and is not logged either */
	if ((dropped <= logged_dropped && claims <= logged_claims) ||
	    (loss_logged && now - loss_logged_ns < LOSS_LOG_INTERVAL_NS))
		return;
	collector_warn("writes dropped: %llu (+%llu), region claims failed: %llu (+%llu); see "
		      "shmetricsd_writes_dropped_total and shmetricsd_region_claim_failures_total, and "
		      "shmetrics-dump --check",
		      (unsigned long long)dropped,
		      (unsigned long long)(dropped > logged_dropped ? dropped - logged_dropped : 0),
		      (unsigned long long)claims, (unsigned long long)(claims > logged_claims ? claims - logged_claims : 0));
	if (dropped > logged_dropped)
		logged_dropped = dropped;
	if (claims > logged_claims)
		logged_claims = claims;
	loss_logged_ns = now;
	loss_logged = true;
}


/* Test-only fault injection: the next N view builds fail as if memory ran out. */
unsigned collector_test_fail_view_builds;

static void note_fold(struct collector *c, int rc)
{
	if (fold_res.blocked) {
		if (!__atomic_exchange_n(&c->fold_blocked, true, __ATOMIC_RELAXED))
			collector_warn("fold stopped: %s; dead workers' values stay in their regions (nothing is lost) until "
				      "the retired totals are repaired or the segment is recreated",
				      fold_res.err[0] ? fold_res.err : shmet_strerror(rc));
		return;
	}
	__atomic_store_n(&c->fold_blocked, false, __ATOMIC_RELAXED);
	/* A full retired area leaves the same regions at every scan: say so
	 * when their number changes, not every time. */
	uint32_t was = __atomic_load_n(&c->fold_skipped, __ATOMIC_RELAXED);
	if (fold_res.skipped != was) {
		if (fold_res.skipped)
			collector_warn("retired area full: %u dead region%s cannot be folded and stay allocated (%s); "
				      "create the segment with a larger --retired-size",
				      fold_res.skipped, fold_res.skipped == 1 ? "" : "s", fold_res.err);
		else
			collector_log("retired area: every dead region folded again");
	}
	/* relaxed: a statistic read by scrapes */
	__atomic_store_n(&c->fold_skipped, fold_res.skipped, __ATOMIC_RELAXED);
	if (rc != SHMET_OK || (fold_res.err[0] && fold_res.skipped == 0))
		collector_warn("fold: %s", fold_res.err[0] ? fold_res.err : shmet_strerror(rc));
	if (fold_res.inexact) {
		/* relaxed: a statistic */
		__atomic_fetch_add(&c->folds_inexact, fold_res.inexact, __ATOMIC_RELAXED);
		collector_warn("fold: %llu float totals needed more than 159 bits and were rounded",
			      (unsigned long long)fold_res.inexact);
	}
}

/* Scrapes waiting in collector_fresh_scan may go once the view they need is
 * published: before the grace period that follows, which waits for other
 * scrapes' renders. */
static void scan_published(struct collector *c)
{
	pthread_mutex_lock(&c->wake_mu);
	if (c->scan_no > c->scans_published)
		c->scans_published = c->scan_no;
	pthread_cond_broadcast(&c->scanned);
	pthread_mutex_unlock(&c->wake_mu);
}

/* REMOVAL and RETENTION (shmetrics_layout.h): removals not applied yet,
 * at every scan; retired-only series past --retired-ttl, looked for at
 * most every quarter of the TTL (and every minute at most). */
static void rewrite_retired(struct collector *c)
{
	const struct shmet_registry *reg = &c->registry;
	const struct shmet_retired_header *rh = shmet_retired_header(&c->seg, shmet_retired_active(&c->seg));
	uint64_t applied = __atomic_load_n(&rh->rh_removals_end, __ATOMIC_RELAXED);
	uint32_t pending = 0;
	while (pending < reg->nrm && reg->rm[reg->nrm - 1 - pending].end > applied)
		pending++;
	__atomic_store_n(&c->removals_pending, pending, __ATOMIC_RELAXED);
	bool removals = pending > 0;
	uint64_t now = shmet__now_ns(CLOCK_MONOTONIC);
	uint32_t ttl = 0;
	if (c->cfg.retired_ttl > 0 && now >= c->rewrite_next_ns) {
		double every = c->cfg.retired_ttl / 4 < 60 ? c->cfg.retired_ttl / 4 : 60;
		c->rewrite_next_ns = now + (uint64_t)(every * 1e9);
		ttl = c->cfg.retired_ttl < 1 ? 1 : (uint32_t)c->cfg.retired_ttl;
	}
	if (!removals && !ttl)
		return;
	static struct shmet_rewrite_result res; /* updater only; large */
	int rc = shmet_retired_rewrite(&c->seg, reg, ttl, &res);
	if (rc != SHMET_OK) {
		if (!c->rewrite_failed)
			collector_warn("removals and retention wait: %s", res.err[0] ? res.err : shmet_strerror(rc));
		c->rewrite_failed = true;
		return;
	}
	if (c->rewrite_failed)
		collector_log("removals and retention: the retired totals were rewritten again");
	c->rewrite_failed = false;
	if (!res.flipped)
		return;
	c->flip_unpublished = true;
	__atomic_fetch_add(&c->removals_applied, res.removals, __ATOMIC_RELAXED);
	__atomic_store_n(&c->removals_pending, pending - (res.removals < pending ? res.removals : pending),
			 __ATOMIC_RELAXED);
	if (res.inexact)
		__atomic_fetch_add(&c->folds_inexact, res.inexact, __ATOMIC_RELAXED);
	if (res.removals)
		collector_log("applied %u series removal%s: %llu series start afresh from a baseline, %llu retired totals "
			      "dropped",
			      res.removals, res.removals == 1 ? "" : "s", (unsigned long long)res.baselines,
			      (unsigned long long)res.dropped_removed);
	if (res.expired)
		collector_log("retention: dropped %llu series that only dead workers' totals held, unwritten for %u s",
			      (unsigned long long)res.expired, ttl);
}

/* The scan proper: every access to segment memory of the updater.
 *
 * The index reads only what changed since the last scan (view.c); a new
 * view is published when something a scrape would show changed, sharing
 * every unchanged family with the old one.  Then the grace period: readers
 * of the old view may hold pointers into arrays the new one replaced, into
 * the regions about to be freed and into the retired half the next fold
 * will overwrite. */
static bool scan_guarded(struct collector *c)
{
	/* After a flip, the published view still reads the previous half and
	 * the folded regions until a view of the new half replaces it: folding
	 * again would overwrite that half under its readers, and freeing the
	 * regions would take their cells away.  So a flip waits for its view. */
	log_losses(c);
	/* the registry the view trusts: the fold and the index agree on every shape */
	int rrc = shmet_registry_update(&c->seg, &c->registry);
	if (!c->flip_unpublished) {
		int rc = rrc;
		if (rc == SHMET_OK)
			rc = shmet_fold_dead_with(&c->seg, &c->registry, &fold_res);
		note_fold(c, rc);
		if (fold_res.flipped)
			c->flip_unpublished = true;
		else if (rrc == SHMET_OK && !fold_res.blocked)
			rewrite_retired(c); /* the same rule: one flip per published view */
	}
	/* corrupt records the fold skipped are counted when the index meets them */
	bool need = view_index_update(c);
	bool changed = false;
	if (need || fold_res.to_free || c->flip_unpublished || !c->view) {
		struct view *nv = NULL;
		if (collector_test_fail_view_builds)
			collector_test_fail_view_builds--;
		else
			nv = view_index_publish(c);
		if (nv) {
			struct view *old = c->view;
			view_publish(c, nv);
			/* Waiting scrapes go now, unless regions are to be freed:
			 * then at the end of the scan, so that a scrape after a
			 * worker's death finds its region free for the next one. */
			if (!fold_res.to_free)
				scan_published(c);
			view_grace_period(c);
			view_index_collect(c);
			view_free(old);
			changed = true;
			c->flip_unpublished = false;
		}
	}
	if (fold_res.to_free && changed) {
		shmet_free_folded(&c->seg, &fold_res);
		fold_res.to_free = 0; /* the next scan sees them free, and publishes that */
	}
	sketchwin_tick(c, c->view, shmet__now_ns(CLOCK_MONOTONIC));
	return changed;
}

bool collector_scan(struct collector *c)
{
	volatile bool changed = false; /* volatile: set between sigsetjmp and a possible siglongjmp */
	if (collector_check_size(c, true)) {
		sigjmp_buf jb;
		if (sigsetjmp(jb, 1) == 0) { /* 1: restore the signal mask on the way back */
			collector_guard_enter(&jb);
			changed = scan_guarded(c);
			collector_guard_leave();
		} else {
			/* The file shrank during the scan: nothing new was published
			 * (or what was is complete); the index is whole at every
			 * segment read (view.c), so the next scan carries on from
			 * where this one stopped, and its size check reports it. */
			static uint64_t scan_faults; /* updater only */
			collector_guard_leave();
			view_build_abandon(c); /* if the fault came in view_build */
			if (worth_logging(++scan_faults))
				collector_warn("segment %s: a read past its end was caught during a scan (%llu so far)",
					      c->seg.path, (unsigned long long)scan_faults);
		}
	}
	__atomic_store_n(&c->last_scan_ns, shmet__now_ns(CLOCK_MONOTONIC), __ATOMIC_RELAXED);
	return changed;
}

static void *updater(void *arg)
{
	struct collector *c = arg;
	rcu_register_thread();
	while (!c->stop) {
		pthread_mutex_lock(&c->wake_mu);
		c->scanning = true;
		c->wake_requested = false;
		c->scan_no = c->scans + 1;
		pthread_mutex_unlock(&c->wake_mu);
		collector_scan(c);
		watch_scan(c);
		self_workers_scan(c);
		api_tick(c);
		struct timespec until;
		clock_gettime(CLOCK_REALTIME, &until);
		uint64_t ns = (uint64_t)(c->cfg.scan_interval * 1e9);
		until.tv_sec += (time_t)(ns / 1000000000u);
		until.tv_nsec += (long)(ns % 1000000000u);
		if (until.tv_nsec >= 1000000000) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000;
		}
		pthread_mutex_lock(&c->wake_mu);
		c->scanning = false;
		c->scans++;
		if (c->scans > c->scans_published)
			c->scans_published = c->scans;
		pthread_cond_broadcast(&c->scanned);
		if (!c->stop && !c->wake_requested)
			pthread_cond_timedwait(&c->wake, &c->wake_mu, &until);
		pthread_mutex_unlock(&c->wake_mu);
	}
	rcu_unregister_thread();
	return NULL;
}

/* A scrape's wait for the series created before it.  Usually there is
 * none: when the published view's stamps still match the region table
 * (every region's generation, directory end and liveness), the view holds
 * everything and the scrape renders at once.  Otherwise the updater indexes
 * what was appended (only that: the index is incremental), and the scrape
 * goes as soon as that view is published. */
bool collector_fresh_scan(struct collector *c, int timeout_ms)
{
	bool current = view_current(c, view_enter(c));
	view_leave(c);
	if (current)
		return true;
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += timeout_ms / 1000;
	until.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
	if (until.tv_nsec >= 1000000000) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000;
	}
	pthread_mutex_lock(&c->wake_mu);
	/* a scan already running may have passed the regions we care about */
	uint64_t want = c->scans + (c->scanning ? 2 : 1);
	c->wake_requested = true;
	pthread_cond_signal(&c->wake);
	int rc = 0;
	while (c->scans_published < want && !c->stop && rc == 0)
		rc = pthread_cond_timedwait(&c->scanned, &c->wake_mu, &until);
	bool fresh = c->scans_published >= want;
	pthread_mutex_unlock(&c->wake_mu);
	return fresh;
}

/* Could a collector's pushes have made every family in region i?  Any
 * process can set the flag; a worker's region it cannot be, or its gauges
 * would count as live while this collector runs. */
static bool push_shaped(const struct shmet_segment *seg, uint32_t i)
{
	struct shmet_area a;
	struct shmet_dir_iter it;
	struct shmet_record r;
	int rc;
	if (shmet_region_area(seg, i, &a, NULL) != SHMET_OK)
		return false;
	shmet_dir_begin(&it, &a);
	while ((rc = shmet_dir_next(&it, &r, NULL)) != 0)
		if (rc > 0 && r.kind == SHMET_REC_FAMILY && r.fam.type == SHMET_GAUGE &&
		    r.fam.mode != SHMET_GAUGE_MOSTRECENT) {
			collector_warn("push: region %u is flagged as a collector's but holds the %s gauge %.*s; not taken back",
				      i, shmet_gauge_mode_name(r.fam.mode), (int)r.fam.name_len, r.fam.name);
			return false;
		}
	return true;
}

/* With push on, take back the push region an earlier collector of this
 * segment left when it stopped or died, so that restarts do not leave a
 * dead region each (and its directory and values carry on).  Runs holding
 * the collector lock and before this process's first fold, so nothing can
 * fold the region meanwhile; a region the active retired half already
 * includes (a fold that flipped but did not free) is left to be freed.  The
 * liveness lock goes on a descriptor of its own: the segment's descriptor
 * would not see its own lock, and the fold would think the region dead. */
static void adopt_push_region(struct collector *c)
{
	struct shmet_segment *seg = &c->seg;
	c->push_region = -1;
	c->push_lock_fd = -1;
	if (!c->cfg.push_token_file)
		return;
	const struct shmet_retired_header *rh = shmet_retired_header(seg, shmet_retired_active(seg));
	for (uint32_t i = 0; i < seg->regions; i++) {
		struct shmet_region_slot *slot =
			(struct shmet_region_slot *)(void *)(seg->map.base + seg->table_off + (uint64_t)i * SHMET_CACHELINE);
		/* relaxed: set by the region's owner, which is dead if it matters */
		if (!(__atomic_load_n(&slot->rs_flags, __ATOMIC_RELAXED) & SHMET_SLOT_COLLECTOR))
			continue;
		struct shmet_region_info info;
		shmet_region_info(seg, i, &info);
		if (info.state != SHMET_REGION_LIVE || info.alive ||
		    __atomic_load_n(&rh->rh_folded_gen[i], __ATOMIC_RELAXED) == info.generation || !push_shaped(seg, i))
			continue;
		if (c->push_lock_fd < 0) {
			char proc[64];
			snprintf(proc, sizeof proc, "/proc/self/fd/%d", seg->map.fd);
			c->push_lock_fd = open(proc, O_RDWR | O_CLOEXEC);
			if (c->push_lock_fd < 0) {
				collector_warn("push: cannot take back region %u: %s", i, strerror(errno));
				return;
			}
		}
		off_t off = (off_t)(seg->table_off + (uint64_t)i * SHMET_CACHELINE);
		if (shmet__ofd_lock(c->push_lock_fd, off, F_WRLCK, F_OFD_SETLK) != 0)
			continue;
		/* acquire: under our lock the slot must still be that dead owner's */
		if (__atomic_load_n(&slot->rs_state_gen, __ATOMIC_ACQUIRE) !=
		    shmet_state_gen(info.generation, SHMET_REGION_LIVE)) {
			shmet__ofd_lock(c->push_lock_fd, off, F_UNLCK, F_OFD_SETLK);
			continue;
		}
		c->push_region = (int)i;
		collector_log("push: taking back region %u (generation %llu) of a collector that stopped", i,
			      (unsigned long long)info.generation);
		return;
	}
}

void collector_release_push_region(struct collector *c)
{
	if (c->push_region < 0)
		return;
	off_t off = (off_t)(c->seg.table_off + (uint64_t)c->push_region * SHMET_CACHELINE);
	shmet__ofd_lock(c->push_lock_fd, off, F_UNLCK, F_OFD_SETLK);
	c->push_region = -1;
}

int collector_open(struct collector *c, const struct collector_config *cfg, char *err, size_t errlen)
{
	memset(c, 0, sizeof *c);
	c->cfg = *cfg;
	c->push_region = -1;
	c->push_lock_fd = -1;
	pthread_mutex_init(&c->wake_mu, NULL);
	pthread_cond_init(&c->wake, NULL);
	pthread_cond_init(&c->scanned, NULL);
	pthread_mutex_init(&c->share_mu, NULL);
	pthread_cond_init(&c->share_done, NULL);
	for (int i = 0; i < 2; i++)
		shmet_buf_init(&c->share[i].body);
	struct shmet_seg_config sc;
	memset(&sc, 0, sizeof sc);
	sc.regions = cfg->regions;
	sc.region_size = cfg->region_size;
	sc.allow_owner = cfg->allow_owner;
	sc.owner_uid = cfg->owner_uid;
	sc.retired_size = cfg->retired_size;
	sc.series_limit = cfg->series_limit;
	if (!sc.series_limit && shmet_env_series_limit(&sc.series_limit) != 0) {
		snprintf(err, errlen, "%s=\"%s\": want a number of series, 1 to %u", SHMET_ENV_SERIES_LIMIT,
			 getenv(SHMET_ENV_SERIES_LIMIT), UINT32_MAX);
		return SHMET_E_INVALID_ARG;
	}
	sc.mode = cfg->segment_mode;
	sc.set_group = cfg->set_group;
	sc.group = cfg->segment_group;
	char why[SHMET_ERRBUF];
	int rc = shmet_segment_open(cfg->segment, SHMET_ATTACH_CREATE, &sc, &c->seg, why);
	if (rc != SHMET_OK) {
		snprintf(err, errlen, "cannot open segment: %s", why);
		return rc;
	}
	int holder = 0;
	rc = shmet_segment_lock_collector(&c->seg, &holder);
	if (rc != SHMET_OK) {
		char addr[128];
		if (holder <= 0) /* an OFD lock names no holder: the header's record does */
			watch_holder(&c->seg, &holder, addr, sizeof addr);
		else
			addr[0] = 0;
		if (holder > 0)
			snprintf(err, errlen, "another shmetricsd (pid %d%s%s) already serves %s", holder,
				 addr[0] ? ", listening on " : "", addr, c->seg.path);
		else
			snprintf(err, errlen, "another shmetricsd already serves %s", c->seg.path);
		shmet_segment_close(&c->seg);
		return rc;
	}
	if (sketchwin_open(c) != 0) {
		snprintf(err, errlen, "out of memory");
		shmet_segment_close(&c->seg);
		return SHMET_E_SYS;
	}
	guard_map_set(0, &c->seg.map);
	guard_install();
	watch_open(c);
	collector_log("segment %s: %s, %u regions of %llu bytes, retired totals %llu bytes", c->seg.path,
		      c->seg.map.created ? "created" : "opened", c->seg.regions, (unsigned long long)c->seg.region_size,
		      (unsigned long long)(c->seg.retired_half_size - c->seg.retired_hdr_size));
	adopt_push_region(c);
	c->history = history_open(c); /* before the first fold, which would free an earlier collector's */
	collector_scan(c);
	if (!c->view) {
		snprintf(err, errlen, "cannot build the first view (out of memory)");
		sketchwin_close(c);
		shmet_segment_close(&c->seg);
		return SHMET_E_SYS;
	}
	return SHMET_OK;
}

int collector_start(struct collector *c, char *err, size_t errlen)
{
	if (pthread_create(&c->updater, NULL, updater, c) != 0) {
		snprintf(err, errlen, "cannot start the updater thread");
		return SHMET_E_SYS;
	}
	int rc = http_start(c, err, errlen);
	if (rc != SHMET_OK) {
		collector_stop(c);
		return rc;
	}
	return SHMET_OK;
}

void collector_stop(struct collector *c)
{
	http_stop(c);
	pthread_mutex_lock(&c->wake_mu);
	c->stop = 1;
	pthread_cond_broadcast(&c->wake);
	pthread_mutex_unlock(&c->wake_mu);
	if (c->updater) {
		pthread_join(c->updater, NULL);
		c->updater = 0;
	}
}

void collector_close(struct collector *c)
{
	history_close(c->history);
	c->history = NULL;
	keymap_free(&c->problems);
	shmet_registry_free(&c->registry);
	view_free(c->view);
	c->view = NULL;
	sketchwin_close(c);
	view_index_free(c);
	for (int i = 0; i < 2; i++)
		shmet_buf_free(&c->share[i].body);
	guard_map_set(0, NULL);
	guard_map_set(1, NULL);
	watch_close(c);
	__atomic_store_n(&collector_seg_end, (uintptr_t)0, __ATOMIC_RELAXED);
	shmet_segment_close(&c->seg);
	if (c->push_lock_fd >= 0)
		close(c->push_lock_fd); /* last: the region is dead once its pushes can no longer be served */
	c->push_lock_fd = -1;
}
