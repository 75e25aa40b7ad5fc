/* listen.h — --web.listen-address: the sockets shmetricsd serves on,
 * bound before the segment is opened, so that a port in use fails the
 * start before anything is created. */
#ifndef SHMET_LISTEN_H
#define SHMET_LISTEN_H

#include <stdbool.h>
#include <stddef.h>

#define HTTP_MAX_LISTEN 8

struct http_listener {
	int fd;         /* listening, close-on-exec */
	char addr[80];  /* host:port as bound, IPv6 in brackets, e.g. [::1]:9089 */
	int port;       /* as bound (port 0 asked picks one) */
	bool loopback;  /* reachable from this host only */
};

/* Parse and bind one address: ":9089" (every address, IPv6 and IPv4),
 * "host:9089", "[::1]:9089".  0, or -1 with err naming the address, the
 * port and the reason. */
int http_listen_bind(const char *spec, struct http_listener *out, char *err, size_t errlen);
bool http_listen_syntax_ok(const char *spec);
void http_listen_close(struct http_listener *ls, unsigned n);

#endif
