/* keymap.h — an open-addressing map from a byte string to an index or a pointer.
 * Internal to libshm and the collector; one owner thread, no locking.
 *
 * Keys come from the segment (any worker can write any byte) or from the
 * network, so slots are chosen by SipHash-2-4 under a key drawn at random
 * once per process: nobody outside the process can make keys collide on
 * purpose (a flood of colliding keys would make every probe sequence as long
 * as the table).  keymap_hash is keyed the same way, for other tables that
 * spread such keys (the push API's rate limiter). */
#ifndef SHMET_KEYMAP_H
#define SHMET_KEYMAP_H

#include <stddef.h>
#include <stdint.h>

struct keymap {
	struct kv {
		char *key;
		size_t len;
		uintptr_t val; /* an index, an offset, or a pointer cast to uintptr_t */
	} *slots;
	size_t mask, used;
};

/* SipHash-2-4 of s under this process's random key (thread-safe). */
uint64_t keymap_hash(const char *s, size_t n);
/* SipHash-2-4 of s under key (16 bytes, read as two little-endian words),
 * as in Aumasson and Bernstein's paper; for the reference vectors. */
uint64_t keymap_siphash24(const unsigned char key[16], const void *s, size_t n);
void keymap_free(struct keymap *m);
struct kv *keymap_find(const struct keymap *m, const char *k, size_t n);
/* Insert (the key must be absent); 0, or -1 when memory ran out. */
int keymap_put(struct keymap *m, const char *k, size_t n, uintptr_t val);

#endif
