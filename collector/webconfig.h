/* webconfig.h — --web.config.file: TLS and basic authentication in the
 * format of the Prometheus exporter-toolkit (the file node_exporter and
 * Prometheus take, which `promtool check web-config` checks):
 *
 *   tls_server_config:
 *     cert_file: server.crt         # PEM; relative paths: from the file's directory
 *     key_file: server.key
 *     client_auth_type: RequireAndVerifyClientCert   # or NoClientCert (default),
 *     client_ca_file: ca.crt        # VerifyClientCertIfGiven, RequestClientCert, RequireAnyClientCert
 *     min_version: TLS12            # TLS10..TLS13; max_version too
 *     prefer_server_cipher_suites: true
 *   http_server_config:
 *     http2: true                   # accepted; HTTP/1.1 is what is served
 *   basic_auth_users:
 *     prometheus: $2y$10$...        # bcrypt, checked with libcrypt's crypt_r
 *
 * Anything else (cipher_suites, curve_preferences, client_allowed_sans,
 * unknown keys) is refused at start with the key's name: a setting that
 * would be silently ignored is a security hole. */
#ifndef SHMET_WEBCONFIG_H
#define SHMET_WEBCONFIG_H

#include <microhttpd.h>
#include <stdbool.h>
#include <stddef.h>

enum web_client_auth {
	WEB_NO_CLIENT_CERT,
	WEB_REQUEST_CLIENT_CERT,        /* asked for, not required, not verified */
	WEB_REQUIRE_ANY_CLIENT_CERT,    /* required, not verified */
	WEB_VERIFY_CLIENT_CERT_IF_GIVEN,
	WEB_REQUIRE_AND_VERIFY_CLIENT_CERT,
};

struct web_config;

/* Read and check the file; *out is NULL-safe to free.  0, or -1 with err. */
int webconfig_load(const char *path, struct web_config **out, char *err, size_t errlen);
void webconfig_free(struct web_config *wc);

bool webconfig_tls(const struct web_config *wc);
bool webconfig_has_users(const struct web_config *wc);
/* Whether every request must prove who it is (users or a verified client certificate). */
bool webconfig_authenticates(const struct web_config *wc);
/* TLS material for MHD_start_daemon (valid while wc lives); ca may be NULL. */
void webconfig_tls_options(const struct web_config *wc, const char **cert, const char **key, const char **ca,
			   const char **priorities);

/* Check a request's client certificate and credentials.  true: go on;
 * false: an answer (401 or 403) was queued, or *rc says libmicrohttpd
 * should close the connection. */
bool webconfig_admit(struct web_config *wc, struct MHD_Connection *conn, enum MHD_Result *rc);

#endif
