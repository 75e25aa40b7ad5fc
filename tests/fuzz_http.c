/* libFuzzer target: what the collector does with request bytes before any
 * of it touches the segment.
 *
 * An input is up to three header lines and a body:
 *
 *   Accept \n Accept-Encoding \n Content-Type \n body...
 *
 * (a missing line is an absent header; a header's bytes may be anything
 * but \n and NUL, as libmicrohttpd hands them over).  Then:
 *   - shmet_negotiate and shmet_accepts_gzip (/metrics' content and
 *     encoding negotiation), and the push API's Content-Type check;
 *   - the push API's body checks as a request runs them: the nesting scan
 *     (push_depth_ok), jansson's parse with duplicate keys refused, and each
 *     sample's validation (push_parse_item), as /api/v1/metrics/custom (the body
 *     is one sample) and as /batch ({"samples": [...]}), with the canonical
 *     name and series key of every valid sample;
 *   - the errors as the answer carries them: json_dumps and tidy_numbers,
 *     whose output must parse back as JSON with the same error count
 *     (a finding otherwise); tidy_numbers on the raw body as well.
 * Any crash, hang, leak or sanitizer report is a bug.
 *
 * api.c and api_push.c are included here for their static functions
 * (tidy_numbers, is_json_type); the rest of the collector, the push
 * schema (api_push_schema.c) among it, is linked (`make fuzz`, -DSHMET_FUZZING).  Under
 * AddressSanitizer the push API's parse arena is off (plain malloc). */
#include "../collector/api.c"
#include "../collector/api_push.c"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The next line of the input as a C string (NULL when the input ran out
 * before it); the NUL-free prefix is what a header could carry. */
static char *next_line(const uint8_t **p, const uint8_t *end)
{
	if (*p >= end)
		return NULL;
	const uint8_t *nl = memchr(*p, '\n', (size_t)(end - *p));
	size_t n = nl ? (size_t)(nl - *p) : (size_t)(end - *p);
	char *s = malloc(n + 1);
	if (!s)
		abort();
	memcpy(s, *p, n);
	s[n] = 0;
	*p += n + (nl != NULL);
	return s;
}

static void check_item(struct req *r, uint32_t idx, json_t *sample)
{
	struct item it;
	memset(&it, 0, sizeof it);
	if (!push_parse_item(r, idx, sample, &it))
		return;
	char name[SHMET_MAX_NAME_LEN + 8];
	if (it.name_len + (it.add_total ? 6 : 0) >= sizeof name)
		abort(); /* push_parse_item let a name through that push_canonical() cannot hold */
	push_canonical(&it, name);
	static char key[SHMET_SERIES_KEY_MAX];
	size_t kl = push_series_key(key, it.lvalues, it.nlabels);
	if (kl > sizeof key)
		abort();
}

static void check_errors(struct req *r)
{
	char *raw = json_dumps(r->errors, JSON_COMPACT | JSON_ENSURE_ASCII);
	if (!raw)
		abort(); /* every error is valid UTF-8 by then: dumping cannot fail */
	size_t n = 0;
	char *tidy = tidy_numbers(raw, &n);
	if (!tidy || n != strlen(tidy))
		abort();
	json_error_t e;
	json_t *back = json_loads(tidy, 0, &e);
	if (!back || json_array_size(back) != json_array_size(r->errors)) {
		fprintf(stderr, "tidy_numbers broke the answer: %s\n  from %s\n  (%s)\n", tidy, raw, e.text);
		abort();
	}
	json_decref(back);
	free(tidy);
	free(raw);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *p = data, *end = data + size;
	char *accept = next_line(&p, end);
	char *enc = next_line(&p, end);
	char *ctype = next_line(&p, end);
	const char *body = (const char *)p;
	size_t len = (size_t)(end - p);

	const char *ct = NULL;
	enum shmet_expo_format f = shmet_negotiate(accept, &ct);
	if (!ct || (f != SHMET_EXPO_TEXT && f != SHMET_EXPO_OPENMETRICS))
		abort();
	(void)shmet_accepts_gzip(enc);
	if (ctype)
		(void)is_json_type(ctype);

	char *cbody = malloc(len + 1);
	if (!cbody)
		abort();
	memcpy(cbody, body, len);
	cbody[len] = 0;
	size_t tl = 0;
	free(tidy_numbers(cbody, &tl));
	free(cbody);

	size_t where = 0;
	if (len && push_depth_ok(body, len, API_MAX_DEPTH, &where)) {
		json_error_t e;
		json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &e);
		if (root) {
			struct req r;
			memset(&r, 0, sizeof r);
			r.errors = json_array();
			if (!r.errors)
				abort();
			check_item(&r, 0, root); /* as /custom */
			json_t *samples = json_is_object(root) ? json_object_get(root, "samples") : NULL;
			for (size_t i = 0; json_is_array(samples) && i < json_array_size(samples) && i < 1000; i++)
				check_item(&r, (uint32_t)i, json_array_get(samples, i)); /* as /batch */
			check_errors(&r);
			json_decref(r.errors);
			json_decref(root);
		}
	}
	free(accept);
	free(enc);
	free(ctype);
	return 0;
}
