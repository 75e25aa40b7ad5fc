/* shmetricsd's log lines (log.h).  One write(2) per line, so lines of
 * different threads never interleave. */
#include "log.h"

#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Set once by main before any other thread exists; read-only afterwards. */
static enum log_format log_format = LOG_FORMAT_LOGFMT;
static enum log_level log_min = LOG_LEVEL_INFO;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void log_configure(enum log_format format, enum log_level level)
{
	log_format = format;
	log_min = level;
}

int log_parse_level(const char *s, enum log_level *out)
{
	for (int i = 0; i < 4; i++)
		if (strcmp(s, level_names[i]) == 0) {
			*out = (enum log_level)i;
			return 0;
		}
	return -1;
}

int log_parse_format(const char *s, enum log_format *out)
{
	if (strcmp(s, "logfmt") == 0)
		*out = LOG_FORMAT_LOGFMT;
	else if (strcmp(s, "json") == 0)
		*out = LOG_FORMAT_JSON;
	else
		return -1;
	return 0;
}

/* Append msg to line (at *n, capacity cap) quoted for the format: logfmt
 * and JSON both take a double-quoted string with \" \\ \n \t escapes; JSON
 * also wants every other control character as \u00XX. */
static void put_quoted(char *line, size_t *n, size_t cap, const char *msg)
{
	size_t k = *n;
	line[k++] = '"';
	for (const unsigned char *p = (const unsigned char *)msg; *p && k + 8 < cap; p++) {
		unsigned char ch = *p;
		if (ch == '"' || ch == '\\') {
			line[k++] = '\\';
			line[k++] = (char)ch;
		} else if (ch == '\n') {
			line[k++] = '\\';
			line[k++] = 'n';
		} else if (ch == '\t') {
			line[k++] = '\\';
			line[k++] = 't';
		} else if (ch < 0x20 || ch == 0x7f) {
			k += (size_t)snprintf(line + k, cap - k, "\\u%04x", ch);
		} else {
			line[k++] = (char)ch;
		}
	}
	line[k++] = '"';
	*n = k;
}

void collector_vlogl(enum log_level level, const char *fmt, va_list ap)
{
	if (level < log_min)
		return;
	char msg[1024], ts[40], line[2304];
	vsnprintf(msg, sizeof msg, fmt, ap);
	struct timespec t;
	struct tm tm;
	clock_gettime(CLOCK_REALTIME, &t);
	gmtime_r(&t.tv_sec, &tm);
	size_t tn = strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(ts + tn, sizeof ts - tn, ".%03ldZ", t.tv_nsec / 1000000);
	size_t n;
	if (log_format == LOG_FORMAT_JSON) {
		n = (size_t)snprintf(line, sizeof line, "{\"ts\":\"%s\",\"level\":\"%s\",\"msg\":", ts, level_names[level]);
		put_quoted(line, &n, sizeof line - 3, msg);
		line[n++] = '}';
	} else {
		n = (size_t)snprintf(line, sizeof line, "ts=%s level=%s msg=", ts, level_names[level]);
		put_quoted(line, &n, sizeof line - 2, msg);
	}
	line[n++] = '\n';
	ssize_t w = write(STDERR_FILENO, line, n);
	(void)w; /* nowhere to report a failed log write */
}

void collector_logl(enum log_level level, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	collector_vlogl(level, fmt, ap);
	va_end(ap);
}

void collector_log(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	collector_vlogl(LOG_LEVEL_INFO, fmt, ap);
	va_end(ap);
}
