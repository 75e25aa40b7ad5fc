/* log.h — shmetricsd's log: one line per event on stderr, logfmt
 * (ts=... level=... msg="...") or JSON, every line with its time, fatal
 * ones included.  collector_log() is the info level. */
#ifndef SHMET_LOG_H
#define SHMET_LOG_H

#include <stdarg.h>

enum log_level { LOG_LEVEL_DEBUG, LOG_LEVEL_INFO, LOG_LEVEL_WARN, LOG_LEVEL_ERROR };
enum log_format { LOG_FORMAT_LOGFMT, LOG_FORMAT_JSON };

/* Set the format and the lowest level written; before any thread logs. */
void log_configure(enum log_format format, enum log_level level);
/* "debug", "info", "warn", "error" / "logfmt", "json": 0, or -1 for another word. */
int log_parse_level(const char *s, enum log_level *out);
int log_parse_format(const char *s, enum log_format *out);

void collector_logl(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void collector_vlogl(enum log_level level, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));
void collector_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
#define collector_debug(...) collector_logl(LOG_LEVEL_DEBUG, __VA_ARGS__)
#define collector_warn(...) collector_logl(LOG_LEVEL_WARN, __VA_ARGS__)
#define collector_error(...) collector_logl(LOG_LEVEL_ERROR, __VA_ARGS__)

#endif
