/* keymap: see keymap.h. */
#include "keymap.h"

#include <stdlib.h>
#include <string.h>

uint64_t keymap_hash(const char *s, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ull;
	for (size_t i = 0; i < n; i++)
		h = (h ^ (unsigned char)s[i]) * 0x100000001b3ull;
	return h;
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

