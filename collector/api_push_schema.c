/* Phase 1 of a push: each sample checked on its own, before any lock and
 * without looking at the segment: its name, type, help, labels, buckets and
 * number.  Every problem is an error entry with the sample's index, the
 * field and a code (API.md lists them); a request with any is refused whole.
 * Also the checks of the raw body that come before the parse. */
#include "api_push_int.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

void push_add_error(struct req *r, uint32_t index, const char *field, const char *code, const char *fmt, ...)
{
	r->nerrors++;
	if (json_array_size(r->errors) >= MAX_ERRORS_SHOWN)
		return;
	char msg[600], fld[300];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	snprintf(fld, sizeof fld, "%s", field);
	/* quoted names and values may be cut anywhere by the buffers */
	for (char *p = msg; !shmet_valid_utf8(msg, strlen(msg)) && *p; p++)
		if ((unsigned char)*p >= 0x80)
			*p = '?';
	for (char *p = fld; !shmet_valid_utf8(fld, strlen(fld)) && *p; p++)
		if ((unsigned char)*p >= 0x80)
			*p = '?';
	json_array_append_new(r->errors, json_pack("{s:i, s:s, s:s, s:s}", "index", (int)index, "field", fld, "code",
						   code, "error", msg));
}


static bool get_number(struct req *r, uint32_t idx, const char *field, json_t *j, struct item *it, bool need_nonneg)
{
	if (json_is_integer(j)) {
		json_int_t i = json_integer_value(j);
		if (need_nonneg && i < 0) {
			push_add_error(r, idx, field, "negative", "a counter increment must be >= 0");
			return false;
		}
		/* the writer refuses more (a count never wraps): say so here */
		if (need_nonneg && (uint64_t)i > SHMET_COUNTER_ADD_MAX) {
			push_add_error(r, idx, field, "too_large", "a counter increment must be at most 2^53 (9007199254740992)");
			return false;
		}
		it->is_int = i >= 0;
		it->u = (uint64_t)i;
		it->v = (double)i;
		return true;
	}
	if (!json_is_real(j)) {
		push_add_error(r, idx, field, "wrong_type", "must be a number");
		return false;
	}
	double v = json_real_value(j);
	if (!isfinite(v)) {
		push_add_error(r, idx, field, "not_finite", "must be a finite number");
		return false;
	}
	if (need_nonneg && !(v >= 0)) {
		push_add_error(r, idx, field, "negative", "a counter increment must be >= 0");
		return false;
	}
	if (need_nonneg && v > (double)SHMET_COUNTER_ADD_MAX) {
		push_add_error(r, idx, field, "too_large", "a counter increment must be at most 2^53 (9007199254740992)");
		return false;
	}
	it->is_int = false;
	it->v = v;
	return true;
}

/* Phase 1: one sample on its own. */
bool push_parse_item(struct req *r, uint32_t idx, json_t *s, struct item *it)
{
	uint32_t before = r->nerrors;
	it->name = NULL;
	it->name_len = 0;
	it->add_total = false;
	if (!json_is_object(s)) {
		push_add_error(r, idx, "", "wrong_type", "a sample must be a JSON object");
		return false;
	}
	json_t *jname = NULL, *jtype = NULL, *jhelp = NULL, *jlabels = NULL, *jvalue = NULL, *jinc = NULL,
	       *jobserve = NULL, *jbuckets = NULL;
	const char *key;
	json_t *val;
	json_object_foreach(s, key, val) {
		/* one comparison per key: this loop runs for every field of
		 * every sample */
		json_t **slot = NULL;
		switch (key[0]) {
		case 'n':
			slot = strcmp(key, "name") == 0 ? &jname : NULL;
			break;
		case 't':
			slot = strcmp(key, "type") == 0 ? &jtype : NULL;
			break;
		case 'h':
			slot = strcmp(key, "help") == 0 ? &jhelp : NULL;
			break;
		case 'l':
			slot = strcmp(key, "labels") == 0 ? &jlabels : NULL;
			break;
		case 'v':
			slot = strcmp(key, "value") == 0 ? &jvalue : NULL;
			break;
		case 'i':
			slot = strcmp(key, "inc") == 0 ? &jinc : NULL;
			break;
		case 'o':
			slot = strcmp(key, "observe") == 0 ? &jobserve : NULL;
			break;
		case 'b':
			slot = strcmp(key, "buckets") == 0 ? &jbuckets : NULL;
			break;
		}
		if (slot)
			*slot = val;
		else
			push_add_error(r, idx, key, "unknown_field",
				  "unknown field (a sample has name, type, help, labels, value, inc, observe, buckets)");
	}
	it->type = 0;
	if (!jtype)
		push_add_error(r, idx, "type", "missing", "missing: counter, gauge, histogram or summary");
	else if (!json_is_string(jtype))
		push_add_error(r, idx, "type", "wrong_type", "must be a string: counter, gauge, histogram or summary");
	else {
		const char *t = json_string_value(jtype);
		for (int k = SHMET_COUNTER; k <= SHMET_SUMMARY; k++)
			if (strcmp(t, shmet_type_name(k)) == 0)
				it->type = (enum shmet_type)k;
		if (!it->type)
			push_add_error(r, idx, "type", "invalid", "unknown type \"%.40s\": counter, gauge, histogram or summary",
				  t);
	}
	if (!jname)
		push_add_error(r, idx, "name", "missing", "missing: the metric name");
	else if (!json_is_string(jname))
		push_add_error(r, idx, "name", "wrong_type", "must be a string");
	else {
		it->name = json_string_value(jname);
		it->name_len = json_string_length(jname);
		size_t n = it->name_len;
		bool ends_total = n >= 6 && memcmp(it->name + n - 6, "_total", 6) == 0;
		if (n > SHMET_MAX_NAME_LEN - 6)
			push_add_error(r, idx, "name", "too_long", "longer than %u bytes", SHMET_MAX_NAME_LEN - 6);
		else if (!shmet_valid_metric_name(it->name, n) || (n == 6 && ends_total))
			push_add_error(r, idx, "name", "invalid_name", "\"%.200s\" is not a metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)",
				  it->name);
		else if (strncmp(it->name, "shmetricsd_", 11) == 0)
			push_add_error(r, idx, "name", "reserved_name", "the shmetricsd_ prefix belongs to the collector");
		else if (it->type && it->type != SHMET_COUNTER && ends_total)
			push_add_error(r, idx, "name", "invalid_name", "only counters may end in _total");
		it->add_total = it->type == SHMET_COUNTER && !ends_total;
	}
	it->help = NULL;
	if (jhelp) {
		if (!json_is_string(jhelp))
			push_add_error(r, idx, "help", "wrong_type", "must be a string");
		else if (json_string_length(jhelp) > SHMET_MAX_HELP_LEN)
			push_add_error(r, idx, "help", "too_long", "longer than %u bytes", SHMET_MAX_HELP_LEN);
		else
			it->help = json_string_value(jhelp);
	}
	it->nlabels = 0;
	if (jlabels && !json_is_object(jlabels))
		push_add_error(r, idx, "labels", "wrong_type", "must be an object of label names to string values");
	else if (jlabels && json_object_size(jlabels) > SHMET_MAX_LABELS)
		push_add_error(r, idx, "labels", "too_many", "at most %u labels", SHMET_MAX_LABELS);
	else if (jlabels) {
		json_object_foreach(jlabels, key, val) {
			size_t kl = strlen(key);
			bool good = shmet_valid_label_name(key, kl) && strcmp(key, "le") != 0 && strcmp(key, "quantile") != 0 &&
				    json_is_string(val) && json_string_length(val) <= SHMET_MAX_VALUE_LEN;
			if (good) {
				it->lnames[it->nlabels] = key;
				it->lvalues[it->nlabels++] = json_string_value(val);
				continue;
			}
			char field[64 + SHMET_MAX_NAME_LEN];
			snprintf(field, sizeof field, "labels.%s", key);
			if (!shmet_valid_label_name(key, kl))
				push_add_error(r, idx, field, "invalid_label",
					  "\"%.200s\" is not a label name ([a-zA-Z_][a-zA-Z0-9_]*, not starting with __)", key);
			else if (strcmp(key, "le") == 0 || strcmp(key, "quantile") == 0)
				push_add_error(r, idx, field, "reserved_label",
					  "\"%s\" is reserved for histogram buckets and summary quantiles", key);
			else if (!json_is_string(val))
				push_add_error(r, idx, field, "wrong_type", "a label value must be a string");
			else
				push_add_error(r, idx, field, "too_long", "label value longer than %u bytes", SHMET_MAX_VALUE_LEN);
		}
	}
	/* the value, by type */
	switch (it->type) {
	case SHMET_COUNTER:
		if (jvalue)
			push_add_error(r, idx, "value", "not_allowed", "a counter takes inc (an increment >= 0), not value");
		if (jobserve)
			push_add_error(r, idx, "observe", "not_allowed", "a counter takes inc, not observe");
		if (!jinc && !jvalue)
			push_add_error(r, idx, "inc", "missing", "a counter sample needs inc (an increment >= 0)");
		else if (jinc && get_number(r, idx, "inc", jinc, it, true))
			it->op = OP_INC;
		break;
	case SHMET_GAUGE:
		if (jobserve)
			push_add_error(r, idx, "observe", "not_allowed", "a gauge takes value (set) or inc (add)");
		if (jvalue && jinc)
			push_add_error(r, idx, "inc", "not_allowed", "give value (set) or inc (add), not both");
		else if (!jvalue && !jinc)
			push_add_error(r, idx, "value", "missing", "a gauge sample needs value (set) or inc (add)");
		else if (jvalue && get_number(r, idx, "value", jvalue, it, false))
			it->op = OP_SET;
		else if (jinc && get_number(r, idx, "inc", jinc, it, false))
			it->op = OP_INC;
		break;
	case SHMET_HISTOGRAM:
	case SHMET_SUMMARY:
		if (jvalue)
			push_add_error(r, idx, "value", "not_allowed", "a %s takes observe, not value", shmet_type_name(it->type));
		if (jinc)
			push_add_error(r, idx, "inc", "not_allowed", "a %s takes observe, not inc", shmet_type_name(it->type));
		if (!jobserve)
			push_add_error(r, idx, "observe", "missing", "a %s sample needs observe (a number)",
				  shmet_type_name(it->type));
		else if (get_number(r, idx, "observe", jobserve, it, false))
			it->op = OP_OBSERVE;
		break;
	}
	it->buckets = NULL;
	it->nbuckets = 0;
	if (jbuckets && it->type && it->type != SHMET_HISTOGRAM)
		push_add_error(r, idx, "buckets", "not_allowed", "only histograms have buckets");
	else if (jbuckets) {
		size_t nb = json_is_array(jbuckets) ? json_array_size(jbuckets) : 0;
		if (!json_is_array(jbuckets) || nb == 0)
			push_add_error(r, idx, "buckets", "wrong_type", "must be a non-empty array of upper bounds");
		else if (nb > SHMET_MAX_BUCKETS)
			push_add_error(r, idx, "buckets", "too_many", "at most %u buckets", SHMET_MAX_BUCKETS);
		else {
			double prev = -INFINITY;
			for (size_t k = 0; k < nb; k++) {
				json_t *b = json_array_get(jbuckets, k);
				double d = json_number_value(b);
				if (!json_is_number(b) || !isfinite(d) || !(d > prev)) {
					push_add_error(r, idx, "buckets", "invalid_buckets",
						  "bounds must be finite numbers, strictly increasing (+Inf is implied)");
					break;
				}
				prev = d;
			}
			it->buckets = jbuckets;
			it->nbuckets = (uint32_t)nb;
		}
	}
	return r->nerrors == before;
}

void push_canonical(const struct item *it, char *out)
{
	memcpy(out, it->name, it->name_len);
	if (it->add_total)
		memcpy(out + it->name_len, "_total", 7);
	else
		out[it->name_len] = 0;
}

size_t push_series_key(char *key, const char *const *values, uint32_t n)
{
	/* the values part of libshm's series key; each value was checked to
	 * be at most SHMET_MAX_VALUE_LEN bytes, so every one fits */
	size_t len = 0;
	for (uint32_t i = 0; i < n; i++)
		if (!(len = shmet_key_append(key, len, SHMET_SERIES_KEY_MAX, values[i], strlen(values[i]))))
			return 0;
	return len;
}

/* ---- the body, before it is parsed ---- */

/* Nesting depth before parsing: jansson has no limit of its own.  A byte
 * table skips the bytes that cannot change the depth (most of them), so
 * the scan costs a few percent of the parse. */
bool push_depth_ok(const char *s, size_t n, int max, size_t *where)
{
	static const unsigned char outside[256] = {['"'] = 1, ['['] = 1, ['{'] = 1, [']'] = 1, ['}'] = 1};
	static const unsigned char inside[256] = {['"'] = 1, ['\\'] = 1};
	const unsigned char *u = (const unsigned char *)s;
	int depth = 0;
	for (size_t i = 0; i < n; i++) {
		while (i < n && !outside[u[i]])
			i++;
		if (i == n)
			break;
		switch (u[i]) {
		case '"':
			for (i++; i < n; i++) {
				while (i < n && !inside[u[i]])
					i++;
				if (i < n && u[i] == '\\')
					i++;
				else
					break;
			}
			break;
		case '[':
		case '{':
			if (++depth > max) {
				*where = i;
				return false;
			}
			break;
		default:
			depth--;
			break;
		}
	}
	return true;
}

