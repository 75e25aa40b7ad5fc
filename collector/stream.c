/* GET /api/v1/metrics/stream (see stream.h). */
#include "stream.h"

#include "frame.h"
#include "history.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct sframe {
	uint64_t id;
	double t;   /* unix seconds */
	bool hist;  /* also in the segment's history */
	char *text; /* the whole event */
	size_t len;
};

struct sclient {
	struct stream *st;
	struct MHD_Connection *conn;
	struct sclient *prev, *next;
	uint64_t next_id;   /* the first frame it has not had */
	uint64_t hist_until; /* below this id, only history frames (a backlog) */
	size_t off;         /* bytes of frame next_id already sent */
	size_t pre_off;     /* bytes of the preamble sent */
	bool suspended;
	uint64_t last_ns;   /* its last bytes went out */
};

/* Samples kept to measure rates against: a few seconds' worth. */
#define STREAM_SAMPLES 64u

struct stream {
	struct collector *c;
	double interval;
	uint32_t max_clients;
	uint64_t heartbeat_ns;
	pthread_t thread;
	bool started;

	pthread_mutex_t mu; /* everything below */
	pthread_cond_t wake;
	bool stop;
	struct sframe *ring; /* oldest first from head; ids strictly increasing */
	uint32_t cap, head, n;
	uint64_t last_id;
	double last_hist_t;
	struct sclient *clients;
	uint32_t nclients;
	uint64_t refused, frames;
};

static const char preamble[] = ": shmetricsd dashboard stream\nretry: 2000\n\n";

static struct sframe *ring_at(struct stream *st, uint32_t i)
{
	return &st->ring[(st->head + i) % st->cap];
}

/* Index of the first kept frame with id >= id (n when none). */
static uint32_t ring_find(struct stream *st, uint64_t id)
{
	uint32_t lo = 0, hi = st->n;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (ring_at(st, mid)->id < id)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* Caller holds mu.  Frames older than HISTORY_SPAN_S before this one, or
 * past the ring's capacity, go. */
static void ring_push(struct stream *st, uint64_t id, double t, bool hist, char *text, size_t len)
{
	while (st->n && (st->n == st->cap || t - ring_at(st, 0)->t > HISTORY_SPAN_S)) {
		free(ring_at(st, 0)->text);
		st->head = (st->head + 1) % st->cap;
		st->n--;
	}
	*ring_at(st, st->n++) = (struct sframe){id, t, hist, text, len};
	st->last_id = id;
	st->frames++;
}

static char *event_text(uint64_t id, const char *json, size_t jlen, size_t *len)
{
	char *text = malloc(jlen + 48);
	if (!text)
		return NULL;
	int n = snprintf(text, 48, "id: %llu\ndata: ", (unsigned long long)id);
	memcpy(text + n, json, jlen);
	memcpy(text + n + jlen, "\n\n", 3);
	*len = (size_t)n + jlen + 2;
	return text;
}

static void seed(void *arg, uint64_t id, double t, const char *json, size_t len)
{
	struct stream *st = arg;
	size_t tl;
	char *text = event_text(id, json, len, &tl);
	if (!text)
		return;
	pthread_mutex_lock(&st->mu);
	if (id > st->last_id) {
		ring_push(st, id, t, true, text, tl);
		st->last_hist_t = t;
		text = NULL;
	}
	pthread_mutex_unlock(&st->mu);
	free(text);
}

/* Caller holds mu. */
static void wake_clients(struct stream *st, bool all, uint64_t now)
{
	for (struct sclient *k = st->clients; k; k = k->next)
		if (k->suspended && (all || now - k->last_ns >= st->heartbeat_ns)) {
			k->suspended = false;
			MHD_resume_connection(k->conn);
		}
}

/* A new frame: wake the clients that lack it a few at a time, a few ms
 * apart, so that libmicrohttpd's threads (which also answer /metrics) never
 * spend a long stretch writing to all of them at once.  Caller holds mu;
 * it is released while waiting between batches. */
#define WAKE_BATCH 8u
#define WAKE_GAP_NS 4000000ull
static void wake_spread(struct stream *st)
{
	while (!st->stop) {
		uint32_t k = 0;
		for (struct sclient *c = st->clients; c && k < WAKE_BATCH; c = c->next)
			if (c->suspended && c->next_id <= st->last_id) {
				c->suspended = false;
				MHD_resume_connection(c->conn);
				k++;
			}
		if (k < WAKE_BATCH)
			return;
		uint64_t until = shmet__now_ns(CLOCK_MONOTONIC) + WAKE_GAP_NS;
		struct timespec ts = {(time_t)(until / 1000000000ull), (long)(until % 1000000000ull)};
		pthread_cond_timedwait(&st->wake, &st->mu, &ts);
	}
}

static double unix_now(void)
{
	return (double)shmet__now_ns(CLOCK_REALTIME) / 1e9;
}

static void *stream_main(void *arg)
{
	struct stream *st = arg;
	struct collector *c = st->c;
	struct frame_sample *samples[STREAM_SAMPLES] = {0};
	uint32_t ns = 0;
	double rate_window = st->interval * 2 > 10 ? st->interval * 2 : 10;
	uint64_t interval_ns = (uint64_t)(st->interval * 1e9), next = shmet__now_ns(CLOCK_MONOTONIC);
	double hist_step = c->history ? history_step(c->history) : HISTORY_STEP_S;
	pthread_mutex_lock(&st->mu);
	while (!st->stop) {
		uint64_t now = shmet__now_ns(CLOCK_MONOTONIC);
		if (now >= next) {
			pthread_mutex_unlock(&st->mu);
			struct frame_sample *cur = frame_sample(c);
			char *json = NULL, *text = NULL;
			size_t jl = 0, tl = 0;
			uint64_t id = 0;
			double t = unix_now();
			bool hist = false;
			if (cur) {
				/* the base: the newest sample at least the window old, or the oldest */
				struct frame_sample *base = ns ? samples[0] : NULL;
				for (uint32_t i = ns; i-- > 0;)
					if ((double)(frame_sample_ns(cur) - frame_sample_ns(samples[i])) / 1e9 >= rate_window) {
						base = samples[i];
						break;
					}
				pthread_mutex_lock(&st->mu);
				uint64_t ms = (uint64_t)(t * 1000);
				id = ms > st->last_id ? ms : st->last_id + 1;
				hist = t - st->last_hist_t >= hist_step - st->interval / 2;
				pthread_mutex_unlock(&st->mu);
				json = frame_json(cur, base, id, t, &jl);
				if (json)
					text = event_text(id, json, jl, &tl);
				if (ns == STREAM_SAMPLES) {
					frame_sample_free(samples[0]);
					memmove(samples, samples + 1, (STREAM_SAMPLES - 1) * sizeof *samples);
					ns--;
				}
				samples[ns++] = cur;
				/* the base of later frames need not be older than the window */
				while (ns > 2 && (double)(frame_sample_ns(cur) - frame_sample_ns(samples[1])) / 1e9 >= rate_window) {
					frame_sample_free(samples[0]);
					memmove(samples, samples + 1, (ns - 1) * sizeof *samples);
					ns--;
				}
			}
			if (text && hist && c->history)
				history_append(c->history, id, t, json, jl);
			free(json);
			pthread_mutex_lock(&st->mu);
			if (text) {
				ring_push(st, id, t, hist, text, tl);
				if (hist)
					st->last_hist_t = t;
			}
			wake_spread(st);
			next += interval_ns;
			if (next <= now)
				next = now + interval_ns; /* fell behind: no burst to catch up */
			continue;
		}
		wake_clients(st, false, now);
		uint64_t until = next - now < st->heartbeat_ns / 2 ? next : now + st->heartbeat_ns / 2;
		struct timespec ts = {(time_t)(until / 1000000000ull), (long)(until % 1000000000ull)};
		pthread_cond_timedwait(&st->wake, &st->mu, &ts);
	}
	pthread_mutex_unlock(&st->mu);
	for (uint32_t i = 0; i < ns; i++)
		frame_sample_free(samples[i]);
	return NULL;
}

int stream_start(struct collector *c, char *err, size_t errlen)
{
	struct stream *st = calloc(1, sizeof *st);
	if (!st) {
		snprintf(err, errlen, "out of memory");
		return SHMET_E_SYS;
	}
	st->c = c;
	st->interval = c->cfg.stream_interval > 0 ? c->cfg.stream_interval : STREAM_DEFAULT_INTERVAL;
	st->max_clients = c->cfg.stream_max_clients ? c->cfg.stream_max_clients : STREAM_DEFAULT_MAX_CLIENTS;
	/* below the idle timeout, or libmicrohttpd closes a quiet stream */
	unsigned idle = c->cfg.http_idle_timeout ? c->cfg.http_idle_timeout : HTTP_DEFAULT_IDLE_TIMEOUT;
	double hb = STREAM_HEARTBEAT_S < idle / 2.0 ? STREAM_HEARTBEAT_S : idle / 2.0;
	st->heartbeat_ns = (uint64_t)(hb * 1e9);
	st->cap = (uint32_t)(HISTORY_SPAN_S / st->interval) + 8;
	if (c->history) {
		struct history_stats hs;
		history_stats(c->history, &hs);
		st->cap += hs.slots;
	}
	st->ring = calloc(st->cap, sizeof *st->ring);
	if (!st->ring) {
		free(st);
		snprintf(err, errlen, "out of memory");
		return SHMET_E_SYS;
	}
	pthread_mutex_init(&st->mu, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&st->wake, &ca);
	pthread_condattr_destroy(&ca);
	c->stream = st;
	history_load(c->history, unix_now(), seed, st);
	if (pthread_create(&st->thread, NULL, stream_main, st) != 0) {
		snprintf(err, errlen, "cannot start the stream thread");
		return SHMET_E_SYS;
	}
	st->started = true;
	return SHMET_OK;
}

void stream_stop(struct collector *c)
{
	struct stream *st = c->stream;
	if (!st)
		return;
	pthread_mutex_lock(&st->mu);
	st->stop = true;
	pthread_cond_signal(&st->wake);
	wake_clients(st, true, 0); /* their callbacks now end the streams */
	pthread_mutex_unlock(&st->mu);
	if (st->started)
		pthread_join(st->thread, NULL);
	st->started = false;
}

void stream_free(struct collector *c)
{
	struct stream *st = c->stream;
	if (!st)
		return;
	for (uint32_t i = 0; i < st->n; i++)
		free(ring_at(st, i)->text);
	free(st->ring);
	pthread_mutex_destroy(&st->mu);
	pthread_cond_destroy(&st->wake);
	free(st);
	c->stream = NULL;
}

/* ---- one client ---- */

static ssize_t client_read(void *cls, uint64_t pos, char *buf, size_t max)
{
	(void)pos;
	struct sclient *k = cls;
	struct stream *st = k->st;
	size_t n = 0;
	pthread_mutex_lock(&st->mu);
	if (st->stop) {
		pthread_mutex_unlock(&st->mu);
		return MHD_CONTENT_READER_END_OF_STREAM;
	}
	if (k->pre_off < sizeof preamble - 1) {
		size_t m = sizeof preamble - 1 - k->pre_off;
		m = m < max ? m : max;
		memcpy(buf, preamble + k->pre_off, m);
		k->pre_off += m;
		n += m;
	}
	uint32_t i = ring_find(st, k->next_id);
	if (k->off && (i == st->n || ring_at(st, i)->id != k->next_id)) {
		/* the frame it was in the middle of is gone (a client a quarter
		 * of an hour behind): end; it reconnects with Last-Event-ID */
		pthread_mutex_unlock(&st->mu);
		return n ? (ssize_t)n : MHD_CONTENT_READER_END_WITH_ERROR;
	}
	for (; i < st->n && n < max; i++) {
		struct sframe *f = ring_at(st, i);
		if (f->id < k->hist_until && !f->hist) {
			k->next_id = f->id + 1;
			continue;
		}
		size_t m = f->len - k->off < max - n ? f->len - k->off : max - n;
		memcpy(buf + n, f->text + k->off, m);
		n += m;
		k->off += m;
		if (k->off < f->len)
			break;
		k->off = 0;
		k->next_id = f->id + 1;
	}
	uint64_t now = shmet__now_ns(CLOCK_MONOTONIC);
	if (n == 0 && now - k->last_ns >= st->heartbeat_ns && max >= 16) {
		memcpy(buf, ": heartbeat\n\n", 13);
		n = 13;
	}
	if (n == 0) {
		k->suspended = true;
		MHD_suspend_connection(k->conn);
	} else {
		k->last_ns = now;
	}
	pthread_mutex_unlock(&st->mu);
	return (ssize_t)n;
}

static void client_free(void *cls)
{
	struct sclient *k = cls;
	struct stream *st = k->st;
	pthread_mutex_lock(&st->mu);
	if (k->prev)
		k->prev->next = k->next;
	else
		st->clients = k->next;
	if (k->next)
		k->next->prev = k->prev;
	st->nclients--;
	pthread_mutex_unlock(&st->mu);
	free(k);
}

/* Where a new client starts (caller holds mu). */
static void client_start(struct stream *st, struct sclient *k, const char *last, const char *backlog)
{
	uint64_t newest = st->n ? ring_at(st, st->n - 1)->id : 0, oldest = st->n ? ring_at(st, 0)->id : 0;
	char *end;
	if (last && *last) {
		errno = 0;
		unsigned long long l = strtoull(last, &end, 10);
		if (!errno && !*end && st->n && l + 1 >= oldest && l <= newest) {
			k->next_id = l + 1; /* everything after it, every frame */
			return;
		}
		backlog = "900"; /* older than what is kept, or another collector's: the whole history */
	}
	double secs = backlog ? strtod(backlog, &end) : 0;
	if (backlog && !*end && secs > 0 && st->n) {
		double from = ring_at(st, st->n - 1)->t - (secs < HISTORY_SPAN_S ? secs : HISTORY_SPAN_S);
		uint32_t i = 0;
		while (i < st->n && ring_at(st, i)->t < from)
			i++;
		k->next_id = i < st->n ? ring_at(st, i)->id : newest;
		k->hist_until = newest;
		return;
	}
	k->next_id = newest; /* the newest frame, then the live ones */
}

enum MHD_Result stream_serve(struct collector *c, struct MHD_Connection *conn)
{
	struct stream *st = c->stream;
	if (!st)
		return http_respond_static(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "text/plain; charset=utf-8",
					   "the stream is not running\n");
	struct sclient *k = calloc(1, sizeof *k);
	if (!k)
		return http_respond_static(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "text/plain; charset=utf-8",
					   "out of memory\n");
	k->st = st;
	k->conn = conn;
	k->last_ns = shmet__now_ns(CLOCK_MONOTONIC);
	const char *last = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Last-Event-ID");
	const char *backlog = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "backlog");
	pthread_mutex_lock(&st->mu);
	if (st->nclients >= st->max_clients || st->stop) {
		uint32_t max = st->max_clients;
		bool first = st->refused++ == 0;
		pthread_mutex_unlock(&st->mu);
		free(k);
		if (first)
			collector_log("stream: a client was refused: %u clients already (--stream-max-clients); "
				      "shmetricsd_stream_refused_total counts them", max);
		char *body = malloc(256);
		if (!body)
			return MHD_NO;
		int n = snprintf(body, 256,
				 "too many stream clients: %u are connected, the limit is %u (--stream-max-clients); "
				 "retry later\n",
				 max, max);
		struct MHD_Response *r = MHD_create_response_from_buffer((size_t)n, body, MHD_RESPMEM_MUST_FREE);
		if (!r) {
			free(body);
			return MHD_NO;
		}
		MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; charset=utf-8");
		MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, "5");
		enum MHD_Result rc = MHD_queue_response(conn, MHD_HTTP_SERVICE_UNAVAILABLE, r);
		MHD_destroy_response(r);
		return rc;
	}
	client_start(st, k, last, backlog);
	k->next = st->clients;
	if (st->clients)
		st->clients->prev = k;
	st->clients = k;
	st->nclients++;
	pthread_mutex_unlock(&st->mu);
	struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 32 * 1024, client_read, k, client_free);
	if (!r) {
		client_free(k);
		return MHD_NO;
	}
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream; charset=utf-8");
	MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
	MHD_add_response_header(r, "X-Accel-Buffering", "no"); /* a proxy in front must not hold events back */
	http_streaming(c, conn);
	enum MHD_Result rc = MHD_queue_response(conn, MHD_HTTP_OK, r);
	MHD_destroy_response(r);
	return rc;
}

void stream_stats(struct collector *c, struct stream_stats *out)
{
	memset(out, 0, sizeof *out);
	struct stream *st = c->stream;
	if (!st)
		return;
	pthread_mutex_lock(&st->mu);
	out->clients = st->nclients;
	out->refused = st->refused;
	out->frames = st->frames;
	pthread_mutex_unlock(&st->mu);
}
