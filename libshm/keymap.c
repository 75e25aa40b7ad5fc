/* keymap: see keymap.h.  Linear probing, at most half full. */
#include "keymap.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

/* ---- SipHash-2-4 (Aumasson, Bernstein: "SipHash: a fast short-input PRF") ---- */

static uint64_t rotl(uint64_t x, int b)
{
	return (x << b) | (x >> (64 - b));
}

static uint64_t le64(const unsigned char *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = (v << 8) | p[i];
	return v;
}

#define SIPROUND(v0, v1, v2, v3)                                                                    \
	do {                                                                                        \
		v0 += v1, v1 = rotl(v1, 13), v1 ^= v0, v0 = rotl(v0, 32);                           \
		v2 += v3, v3 = rotl(v3, 16), v3 ^= v2;                                              \
		v0 += v3, v3 = rotl(v3, 21), v3 ^= v0;                                              \
		v2 += v1, v1 = rotl(v1, 17), v1 ^= v2, v2 = rotl(v2, 32);                           \
	} while (0)

static uint64_t siphash24(uint64_t k0, uint64_t k1, const unsigned char *m, size_t n)
{
	uint64_t v0 = k0 ^ 0x736f6d6570736575ull, v1 = k1 ^ 0x646f72616e646f6dull;
	uint64_t v2 = k0 ^ 0x6c7967656e657261ull, v3 = k1 ^ 0x7465646279746573ull;
	size_t whole = n - n % 8;
	for (size_t i = 0; i < whole; i += 8) {
		uint64_t w = le64(m + i);
		v3 ^= w;
		SIPROUND(v0, v1, v2, v3);
		SIPROUND(v0, v1, v2, v3);
		v0 ^= w;
	}
	/* the last 0..7 bytes, little-endian, with the length in the top byte */
	uint64_t b = (uint64_t)n << 56;
	for (size_t i = n % 8; i > 0; i--)
		b |= (uint64_t)m[whole + i - 1] << (8 * (i - 1));
	v3 ^= b;
	SIPROUND(v0, v1, v2, v3);
	SIPROUND(v0, v1, v2, v3);
	v0 ^= b;
	v2 ^= 0xff;
	for (int r = 0; r < 4; r++)
		SIPROUND(v0, v1, v2, v3);
	return v0 ^ v1 ^ v2 ^ v3;
}

uint64_t keymap_siphash24(const unsigned char key[16], const void *s, size_t n)
{
	return siphash24(le64(key), le64(key + 8), s, n);
}

/* ---- the process's key ---- */

static uint64_t proc_k0, proc_k1; /* written once under key_once, read-only after */
static pthread_once_t key_once = PTHREAD_ONCE_INIT;

static void key_init(void)
{
	unsigned char k[16];
	size_t got = 0;
	while (got < sizeof k) {
		ssize_t r = getrandom(k + got, sizeof k - got, 0);
		if (r > 0)
			got += (size_t)r;
		else if (r < 0 && errno != EINTR)
			break;
	}
	if (got < sizeof k) {
		/* No getrandom (an old kernel or a seccomp filter): /dev/urandom,
		 * and as a last resort what differs from one process to the next
		 * (clocks, pid, addresses), hashed together. */
		int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
		ssize_t r = fd >= 0 ? read(fd, k, sizeof k) : -1;
		if (fd >= 0)
			close(fd);
		if (r != (ssize_t)sizeof k) {
			struct timespec a, b;
			clock_gettime(CLOCK_REALTIME, &a);
			clock_gettime(CLOCK_MONOTONIC, &b);
			uint64_t mix[6] = {(uint64_t)a.tv_sec, (uint64_t)a.tv_nsec, (uint64_t)b.tv_nsec,
					   (uint64_t)getpid(), (uint64_t)(uintptr_t)&a, (uint64_t)(uintptr_t)&key_init};
			uint64_t h0 = siphash24(0, 0, (const unsigned char *)mix, sizeof mix);
			uint64_t h1 = siphash24(h0, 1, (const unsigned char *)mix, sizeof mix);
			memcpy(k, &h0, 8);
			memcpy(k + 8, &h1, 8);
		}
	}
	proc_k0 = le64(k);
	proc_k1 = le64(k + 8);
}

uint64_t keymap_hash(const char *s, size_t n)
{
	/* pthread_once orders key_init's stores before every caller's loads. */
	pthread_once(&key_once, key_init);
	return siphash24(proc_k0, proc_k1, (const unsigned char *)s, n);
}

void keymap_free(struct keymap *m)
{
	for (size_t i = 0; m->slots && i <= m->mask; i++)
		free(m->slots[i].key);
	free(m->slots);
	memset(m, 0, sizeof *m);
}

struct kv *keymap_find(const struct keymap *m, const char *k, size_t n)
{
	if (!m->slots)
		return NULL;
	for (size_t i = keymap_hash(k, n) & m->mask;; i = (i + 1) & m->mask) {
		struct kv *s = &m->slots[i];
		if (!s->key)
			return NULL;
		if (s->len == n && memcmp(s->key, k, n) == 0)
			return s;
	}
}

int keymap_put(struct keymap *m, const char *k, size_t n, uintptr_t val)
{
	if (!m->slots || (m->used + 1) * 2 > m->mask + 1) {
		struct keymap g = {NULL, m->slots ? m->mask * 2 + 1 : 255, 0};
		g.slots = calloc(g.mask + 1, sizeof *g.slots);
		if (!g.slots)
			return -1;
		for (size_t i = 0; m->slots && i <= m->mask; i++) {
			struct kv *s = &m->slots[i];
			if (!s->key)
				continue;
			size_t j = keymap_hash(s->key, s->len) & g.mask;
			while (g.slots[j].key)
				j = (j + 1) & g.mask;
			g.slots[j] = *s;
			g.used++;
		}
		free(m->slots);
		*m = g;
	}
	size_t i = keymap_hash(k, n) & m->mask;
	while (m->slots[i].key)
		i = (i + 1) & m->mask;
	if (!(m->slots[i].key = malloc(n ? n : 1)))
		return -1;
	memcpy(m->slots[i].key, k, n);
	m->slots[i].len = n;
	m->slots[i].val = val;
	m->used++;
	return 0;
}

