/* keymap.h — an open-addressing map from a byte string to an index or a pointer.
 * Internal to libshm and the collector; one owner thread, no locking. */
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

uint64_t keymap_hash(const char *s, size_t n);
void keymap_free(struct keymap *m);
struct kv *keymap_find(const struct keymap *m, const char *k, size_t n);
/* Insert (the key must be absent); 0, or -1 when memory ran out. */
int keymap_put(struct keymap *m, const char *k, size_t n, uintptr_t val);

#endif
