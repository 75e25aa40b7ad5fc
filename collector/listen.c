/* The sockets of --web.listen-address (listen.h). */
#include "listen.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static bool is_loopback(const struct sockaddr *sa)
{
	if (sa->sa_family == AF_INET)
		return (ntohl(((const struct sockaddr_in *)(const void *)sa)->sin_addr.s_addr) >> 24) == 127;
	if (sa->sa_family == AF_INET6) {
		const struct in6_addr *a = &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr;
		return IN6_IS_ADDR_LOOPBACK(a) || (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
	}
	return false;
}

static void describe(const struct sockaddr *sa, char *out, size_t cap, int *port)
{
	char host[INET6_ADDRSTRLEN] = "?";
	if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const void *)sa;
		inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof host);
		*port = ntohs(s6->sin6_port);
		snprintf(out, cap, "[%s]:%d", host, *port);
	} else {
		const struct sockaddr_in *s4 = (const void *)sa;
		inet_ntop(AF_INET, &s4->sin_addr, host, sizeof host);
		*port = ntohs(s4->sin_port);
		snprintf(out, cap, "%s:%d", host, *port);
	}
}

static int bind_one(const struct sockaddr *sa, socklen_t len, bool dual, struct http_listener *out)
{
	int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -1;
	int one = 1, v6only = dual ? 0 : 1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (sa->sa_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof v6only);
	if (bind(fd, sa, len) != 0 || listen(fd, 128) != 0) {
		int e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	struct sockaddr_storage ss;
	socklen_t sl = sizeof ss;
	getsockname(fd, (struct sockaddr *)&ss, &sl);
	out->fd = fd;
	out->loopback = is_loopback((const struct sockaddr *)&ss);
	describe((const struct sockaddr *)&ss, out->addr, sizeof out->addr, &out->port);
	return 0;
}

/* host (brackets taken off, "" for every address) and port of spec */
static int parse_spec(const char *spec, char *host, size_t cap, long *port)
{
	const char *colon = strrchr(spec, ':');
	size_t hl = colon ? (size_t)(colon - spec) : 0;
	const char *h = spec;
	if (hl >= 2 && spec[0] == '[' && spec[hl - 1] == ']')
		h++, hl -= 2;
	char *end;
	long p = colon && colon[1] >= '0' && colon[1] <= '9' ? strtol(colon + 1, &end, 10) : -1;
	if (p < 0 || *end || p > 65535 || hl >= cap || (hl && memchr(h, ':', hl) && spec[0] != '['))
		return -1;
	memcpy(host, h, hl);
	host[hl] = 0;
	*port = p;
	return 0;
}

bool http_listen_syntax_ok(const char *spec)
{
	char host[256];
	long p;
	return parse_spec(spec, host, sizeof host, &p) == 0;
}

int http_listen_bind(const char *spec, struct http_listener *out, char *err, size_t errlen)
{
	memset(out, 0, sizeof *out);
	out->fd = -1;
	char host[256], port[16];
	long p;
	if (parse_spec(spec, host, sizeof host, &p) != 0) {
		snprintf(err, errlen, "listen address \"%s\": want HOST:PORT, [IPv6]:PORT or :PORT", spec);
		return -1;
	}
	size_t hl = strlen(host);
	snprintf(port, sizeof port, "%ld", p);
	if (hl == 0) {
		/* every address: one IPv6 socket that takes IPv4 too, or IPv4
		 * alone on a host without IPv6 */
		struct sockaddr_in6 s6 = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)p), .sin6_addr = in6addr_any};
		if (bind_one((const struct sockaddr *)&s6, sizeof s6, true, out) == 0)
			return 0;
		if (errno != EAFNOSUPPORT && errno != EADDRNOTAVAIL) {
			snprintf(err, errlen, "cannot listen on %s (port %ld): %s", spec, p, strerror(errno));
			return -1;
		}
		struct sockaddr_in s4 = {.sin_family = AF_INET, .sin_port = htons((uint16_t)p), .sin_addr = {INADDR_ANY}};
		if (bind_one((const struct sockaddr *)&s4, sizeof s4, false, out) == 0)
			return 0;
		snprintf(err, errlen, "cannot listen on %s (port %ld): %s", spec, p, strerror(errno));
		return -1;
	}
	struct addrinfo hints = {.ai_flags = AI_NUMERICSERV, .ai_socktype = SOCK_STREAM}, *ai = NULL;
	int gai = getaddrinfo(host, port, &hints, &ai);
	if (gai != 0) {
		snprintf(err, errlen, "cannot listen on %s: %s", spec, gai_strerror(gai));
		return -1;
	}
	int rc = bind_one(ai->ai_addr, ai->ai_addrlen, false, out);
	if (rc != 0)
		snprintf(err, errlen, "cannot listen on %s (port %ld): %s", spec, p, strerror(errno));
	freeaddrinfo(ai);
	return rc;
}

void http_listen_close(struct http_listener *ls, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		if (ls[i].fd >= 0) {
			close(ls[i].fd);
			ls[i].fd = -1;
		}
}
