/* --web.config.file (webconfig.h): the exporter-toolkit format read with
 * libyaml, TLS through libmicrohttpd's GnuTLS, bcrypt through crypt_r. */
#include "webconfig.h"

#include <crypt.h>
#include <errno.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <yaml.h>

#define WEB_FILE_MAX (1u << 20) /* a PEM file or the config itself */
#define WEB_USERS_MAX 1024u
#define WEB_CACHE 64u /* credentials verified lately: bcrypt costs tens of ms by design */

struct web_user {
	char *name, *hash;
};

struct web_config {
	bool tls;
	char *cert, *key, *ca; /* PEM text */
	enum web_client_auth client_auth;
	char priorities[160];
	struct web_user *users;
	size_t nusers;
	pthread_mutex_t mu; /* guards the cache */
	unsigned char salt[16];
	unsigned char cache[WEB_CACHE][32]; /* SHA-256(salt, user, password, hash) of verified credentials */
	unsigned cache_used, cache_next;
};

static int fail(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	return -1;
}

static char *read_file(const char *dir, const char *name, char *err, size_t errlen)
{
	char path[4096];
	if (name[0] == '/' || !dir[0])
		snprintf(path, sizeof path, "%s", name);
	else
		snprintf(path, sizeof path, "%s/%s", dir, name);
	FILE *f = fopen(path, "re");
	if (!f) {
		fail(err, errlen, "cannot read %s: %s", path, strerror(errno));
		return NULL;
	}
	char *buf = malloc(WEB_FILE_MAX + 1);
	size_t n = buf ? fread(buf, 1, WEB_FILE_MAX + 1, f) : 0;
	bool bad = ferror(f) || n > WEB_FILE_MAX;
	fclose(f);
	if (!buf || bad) {
		free(buf);
		fail(err, errlen, "cannot read %s: %s", path, buf ? "larger than 1 MiB or unreadable" : "out of memory");
		return NULL;
	}
	buf[n] = 0;
	return buf;
}

static const char *scalar(yaml_document_t *d, int id, size_t *len)
{
	yaml_node_t *n = yaml_document_get_node(d, id);
	if (!n || n->type != YAML_SCALAR_NODE)
		return NULL;
	if (len)
		*len = n->data.scalar.length;
	return (const char *)n->data.scalar.value;
}

static int tls_version(const char *v, int *out)
{
	static const char *const names[] = {"TLS10", "TLS11", "TLS12", "TLS13"};
	for (int i = 0; i < 4; i++)
		if (strcmp(v, names[i]) == 0) {
			*out = i;
			return 0;
		}
	return -1;
}

static int bool_value(const char *v, bool *out)
{
	if (!strcmp(v, "true") || !strcmp(v, "True") || !strcmp(v, "yes"))
		*out = true;
	else if (!strcmp(v, "false") || !strcmp(v, "False") || !strcmp(v, "no"))
		*out = false;
	else
		return -1;
	return 0;
}

static int parse_tls(struct web_config *wc, yaml_document_t *d, yaml_node_t *m, const char *dir, char *err,
		     size_t errlen)
{
	const char *cert_file = NULL, *key_file = NULL, *ca_file = NULL, *auth = NULL;
	int minv = 2, maxv = 3; /* exporter-toolkit's default minimum: TLS 1.2 */
	bool server_order = true;
	for (yaml_node_pair_t *p = m->data.mapping.pairs.start; p < m->data.mapping.pairs.top; p++) {
		const char *k = scalar(d, p->key, NULL), *v = scalar(d, p->value, NULL);
		if (!k)
			return fail(err, errlen, "tls_server_config: keys must be plain words");
		if (!v && strcmp(k, "cipher_suites") && strcmp(k, "curve_preferences") && strcmp(k, "client_allowed_sans"))
			return fail(err, errlen, "tls_server_config.%s: want a single value", k);
		if (!strcmp(k, "cert_file"))
			cert_file = v;
		else if (!strcmp(k, "key_file"))
			key_file = v;
		else if (!strcmp(k, "client_ca_file"))
			ca_file = v;
		else if (!strcmp(k, "client_auth_type"))
			auth = v;
		else if (!strcmp(k, "min_version") || !strcmp(k, "max_version")) {
			if (tls_version(v, !strcmp(k, "min_version") ? &minv : &maxv) != 0)
				return fail(err, errlen, "tls_server_config.%s: \"%s\" is not TLS10, TLS11, TLS12 or TLS13", k, v);
		} else if (!strcmp(k, "prefer_server_cipher_suites")) {
			if (bool_value(v, &server_order) != 0)
				return fail(err, errlen, "tls_server_config.%s: want true or false", k);
		} else
			return fail(err, errlen,
				    "tls_server_config.%s: not supported by shmetricsd (GnuTLS's defaults apply); remove it", k);
	}
	if (minv > maxv)
		return fail(err, errlen, "tls_server_config: min_version is above max_version");
	static const struct {
		const char *name;
		enum web_client_auth v;
	} auths[] = {
		{"NoClientCert", WEB_NO_CLIENT_CERT},
		{"RequestClientCert", WEB_REQUEST_CLIENT_CERT},
		{"RequireAnyClientCert", WEB_REQUIRE_ANY_CLIENT_CERT},
		{"VerifyClientCertIfGiven", WEB_VERIFY_CLIENT_CERT_IF_GIVEN},
		{"RequireAndVerifyClientCert", WEB_REQUIRE_AND_VERIFY_CLIENT_CERT},
	};
	wc->client_auth = WEB_NO_CLIENT_CERT;
	if (auth && auth[0]) {
		size_t i = 0;
		while (i < sizeof auths / sizeof *auths && strcmp(auths[i].name, auth) != 0)
			i++;
		if (i == sizeof auths / sizeof *auths)
			return fail(err, errlen, "tls_server_config.client_auth_type: \"%s\" is not one of NoClientCert, "
				    "RequestClientCert, RequireAnyClientCert, VerifyClientCertIfGiven, "
				    "RequireAndVerifyClientCert", auth);
		wc->client_auth = auths[i].v;
	}
	if (!cert_file && !key_file && !ca_file && wc->client_auth == WEB_NO_CLIENT_CERT)
		return 0; /* as exporter-toolkit: no TLS at all */
	if (!cert_file || !cert_file[0])
		return fail(err, errlen, "tls_server_config: missing cert_file");
	if (!key_file || !key_file[0])
		return fail(err, errlen, "tls_server_config: missing key_file");
	/* libmicrohttpd asks for a client certificate only with a trust list */
	if (wc->client_auth != WEB_NO_CLIENT_CERT && (!ca_file || !ca_file[0]))
		return fail(err, errlen, "tls_server_config: client_auth_type %s needs client_ca_file", auth);
	if (!(wc->cert = read_file(dir, cert_file, err, errlen)) || !(wc->key = read_file(dir, key_file, err, errlen)))
		return -1;
	if (ca_file && ca_file[0] && !(wc->ca = read_file(dir, ca_file, err, errlen)))
		return -1;
	/* the pair must load: refuse now rather than at the first handshake */
	gnutls_certificate_credentials_t cred;
	if (gnutls_certificate_allocate_credentials(&cred) != GNUTLS_E_SUCCESS)
		return fail(err, errlen, "out of memory");
	gnutls_datum_t c = {(unsigned char *)wc->cert, (unsigned)strlen(wc->cert)};
	gnutls_datum_t k = {(unsigned char *)wc->key, (unsigned)strlen(wc->key)};
	int rc = gnutls_certificate_set_x509_key_mem(cred, &c, &k, GNUTLS_X509_FMT_PEM);
	if (rc >= 0 && wc->ca) {
		gnutls_datum_t a = {(unsigned char *)wc->ca, (unsigned)strlen(wc->ca)};
		int n = gnutls_certificate_set_x509_trust_mem(cred, &a, GNUTLS_X509_FMT_PEM);
		if (n <= 0) {
			gnutls_certificate_free_credentials(cred);
			return fail(err, errlen, "client_ca_file %s: no certificate in it (%s)", ca_file,
				    n < 0 ? gnutls_strerror(n) : "empty");
		}
	}
	gnutls_certificate_free_credentials(cred);
	if (rc < 0)
		return fail(err, errlen, "cert_file %s with key_file %s: %s", cert_file, key_file, gnutls_strerror(rc));
	static const char *const vers[] = {"+VERS-TLS1.0", "+VERS-TLS1.1", "+VERS-TLS1.2", "+VERS-TLS1.3"};
	size_t n = (size_t)snprintf(wc->priorities, sizeof wc->priorities, "NORMAL:-VERS-ALL");
	for (int i = maxv; i >= minv; i--)
		n += (size_t)snprintf(wc->priorities + n, sizeof wc->priorities - n, ":%s", vers[i]);
	if (server_order)
		snprintf(wc->priorities + n, sizeof wc->priorities - n, ":%%SERVER_PRECEDENCE");
	const char *bad;
	gnutls_priority_t prio;
	if (gnutls_priority_init(&prio, wc->priorities, &bad) != GNUTLS_E_SUCCESS)
		return fail(err, errlen, "tls_server_config: GnuTLS refuses the priorities %s", wc->priorities);
	gnutls_priority_deinit(prio);
	wc->tls = true;
	return 0;
}

static int parse_users(struct web_config *wc, yaml_document_t *d, yaml_node_t *m, char *err, size_t errlen)
{
	size_t n = (size_t)(m->data.mapping.pairs.top - m->data.mapping.pairs.start);
	if (n > WEB_USERS_MAX)
		return fail(err, errlen, "basic_auth_users: more than %u users", WEB_USERS_MAX);
	wc->users = calloc(n ? n : 1, sizeof *wc->users);
	if (!wc->users)
		return fail(err, errlen, "out of memory");
	struct crypt_data *cd = calloc(1, sizeof *cd);
	if (!cd)
		return fail(err, errlen, "out of memory");
	int rc = 0;
	for (yaml_node_pair_t *p = m->data.mapping.pairs.start; p < m->data.mapping.pairs.top && rc == 0; p++) {
		const char *k = scalar(d, p->key, NULL), *v = scalar(d, p->value, NULL);
		if (!k || !v || !k[0]) {
			rc = fail(err, errlen, "basic_auth_users: want user: bcrypt-hash pairs");
			break;
		}
		for (size_t i = 0; i < wc->nusers; i++)
			if (strcmp(wc->users[i].name, k) == 0)
				rc = fail(err, errlen, "basic_auth_users: user %s given twice", k);
		/* bcrypt only ($2a$, $2b$, $2y$), as exporter-toolkit: crypt_r
		 * would also take a DES or MD5 hash */
		const char *h = crypt_r("", v, cd);
		if (rc == 0 && (strncmp(v, "$2", 2) != 0 || !strchr("aby", v[2]) || v[3] != '$' || !h || h[0] == '*'))
			rc = fail(err, errlen, "basic_auth_users.%s: not a bcrypt hash (make one with htpasswd -nBC 10 \"\" | "
				  "tr -d ':\\n')", k);
		if (rc == 0) {
			wc->users[wc->nusers].name = strdup(k);
			wc->users[wc->nusers].hash = strdup(v);
			if (!wc->users[wc->nusers].name || !wc->users[wc->nusers].hash)
				rc = fail(err, errlen, "out of memory");
			wc->nusers++;
		}
	}
	free(cd);
	return rc;
}

int webconfig_load(const char *path, struct web_config **out, char *err, size_t errlen)
{
	*out = NULL;
	struct web_config *wc = calloc(1, sizeof *wc);
	if (!wc)
		return fail(err, errlen, "out of memory");
	pthread_mutex_init(&wc->mu, NULL);
	if (getrandom(wc->salt, sizeof wc->salt, 0) != (ssize_t)sizeof wc->salt) {
		webconfig_free(wc);
		return fail(err, errlen, "getrandom: %s", strerror(errno));
	}
	char *text = read_file("", path, err, errlen);
	if (!text) {
		webconfig_free(wc);
		return -1;
	}
	char dir[4096];
	snprintf(dir, sizeof dir, "%s", path);
	char *slash = strrchr(dir, '/');
	if (slash)
		*slash = 0;
	else
		snprintf(dir, sizeof dir, ".");
	yaml_parser_t parser;
	yaml_document_t doc;
	yaml_parser_initialize(&parser);
	yaml_parser_set_input_string(&parser, (const unsigned char *)text, strlen(text));
	int rc = 0;
	if (!yaml_parser_load(&parser, &doc)) {
		rc = fail(err, errlen, "%s: line %zu: %s", path, parser.problem_mark.line + 1,
			  parser.problem ? parser.problem : "not YAML");
		yaml_parser_delete(&parser);
		free(text);
		webconfig_free(wc);
		return rc;
	}
	yaml_node_t *root = yaml_document_get_root_node(&doc);
	if (root && root->type != YAML_MAPPING_NODE && !(root->type == YAML_SCALAR_NODE && root->data.scalar.length == 0))
		rc = fail(err, errlen, "%s: want a mapping at the top", path);
	for (yaml_node_pair_t *p = root && root->type == YAML_MAPPING_NODE ? root->data.mapping.pairs.start : NULL;
	     p && p < root->data.mapping.pairs.top && rc == 0; p++) {
		const char *k = scalar(&doc, p->key, NULL);
		yaml_node_t *v = yaml_document_get_node(&doc, p->value);
		bool null = v && v->type == YAML_SCALAR_NODE && (v->data.scalar.length == 0 ||
								 !strcmp((const char *)v->data.scalar.value, "null"));
		if (!k)
			rc = fail(err, errlen, "%s: keys must be plain words", path);
		else if (null)
			continue;
		else if (!v || v->type != YAML_MAPPING_NODE)
			rc = fail(err, errlen, "%s: %s: want a mapping", path, k);
		else if (!strcmp(k, "tls_server_config"))
			rc = parse_tls(wc, &doc, v, dir, err, errlen);
		else if (!strcmp(k, "basic_auth_users"))
			rc = parse_users(wc, &doc, v, err, errlen);
		else if (!strcmp(k, "http_server_config")) {
			for (yaml_node_pair_t *q = v->data.mapping.pairs.start; q < v->data.mapping.pairs.top && rc == 0; q++) {
				const char *hk = scalar(&doc, q->key, NULL), *hv = scalar(&doc, q->value, NULL);
				bool b;
				if (!hk || strcmp(hk, "http2") != 0 || !hv || bool_value(hv, &b) != 0)
					rc = fail(err, errlen, "http_server_config: only http2: true|false is supported");
			}
		} else
			rc = fail(err, errlen, "%s: unknown key %s (want tls_server_config, http_server_config, "
				  "basic_auth_users)", path, k);
	}
	yaml_document_delete(&doc);
	yaml_parser_delete(&parser);
	free(text);
	if (rc != 0) {
		webconfig_free(wc);
		return rc;
	}
	*out = wc;
	return 0;
}

void webconfig_free(struct web_config *wc)
{
	if (!wc)
		return;
	for (size_t i = 0; i < wc->nusers; i++) {
		free(wc->users[i].name);
		free(wc->users[i].hash);
	}
	free(wc->users);
	free(wc->cert);
	if (wc->key)
		explicit_bzero(wc->key, strlen(wc->key));
	free(wc->key);
	free(wc->ca);
	pthread_mutex_destroy(&wc->mu);
	explicit_bzero(wc, sizeof *wc);
	free(wc);
}

bool webconfig_tls(const struct web_config *wc) { return wc && wc->tls; }
bool webconfig_has_users(const struct web_config *wc) { return wc && wc->nusers > 0; }
bool webconfig_authenticates(const struct web_config *wc)
{
	return wc && (wc->nusers > 0 || wc->client_auth == WEB_REQUIRE_AND_VERIFY_CLIENT_CERT);
}

void webconfig_tls_options(const struct web_config *wc, const char **cert, const char **key, const char **ca,
			   const char **priorities)
{
	*cert = wc->cert;
	*key = wc->key;
	*ca = wc->ca;
	*priorities = wc->priorities;
}

static bool equal_ct(const unsigned char *a, const unsigned char *b, size_t n)
{
	unsigned char d = 0;
	for (size_t i = 0; i < n; i++)
		d |= a[i] ^ b[i];
	return d == 0;
}

static void digest(const struct web_config *wc, const char *user, const char *pass, const char *hash,
		   unsigned char out[32])
{
	size_t ul = strlen(user), pl = strlen(pass), hl = strlen(hash);
	size_t n = sizeof wc->salt + ul + 1 + pl + 1 + hl;
	unsigned char *buf = malloc(n);
	if (!buf) {
		memset(out, 0, 32); /* never matches a cached entry: a zero digest is never stored */
		return;
	}
	memcpy(buf, wc->salt, sizeof wc->salt);
	memcpy(buf + sizeof wc->salt, user, ul + 1);
	memcpy(buf + sizeof wc->salt + ul + 1, pass, pl + 1);
	memcpy(buf + sizeof wc->salt + ul + 1 + pl + 1, hash, hl);
	if (gnutls_hash_fast(GNUTLS_DIG_SHA256, buf, n, out) != 0)
		memset(out, 0, 32);
	explicit_bzero(buf, n);
	free(buf);
}

/* Is (user, pass) right?  A hit in the cache of verified credentials
 * skips bcrypt; an unknown user costs a bcrypt all the same, so that the
 * time taken does not tell which user names exist. */
static bool credentials_ok(struct web_config *wc, const char *user, const char *pass)
{
	const struct web_user *u = NULL;
	for (size_t i = 0; i < wc->nusers; i++)
		if (strcmp(wc->users[i].name, user) == 0)
			u = &wc->users[i];
	const char *hash = u ? u->hash : wc->users[0].hash;
	unsigned char dg[32], zero[32] = {0};
	digest(wc, user, pass, hash, dg);
	bool hit = false;
	pthread_mutex_lock(&wc->mu);
	for (unsigned i = 0; i < wc->cache_used; i++)
		hit |= equal_ct(wc->cache[i], dg, 32);
	pthread_mutex_unlock(&wc->mu);
	if (u && hit && !equal_ct(dg, zero, 32))
		return true;
	struct crypt_data *cd = calloc(1, sizeof *cd);
	if (!cd)
		return false;
	const char *h = crypt_r(pass, hash, cd);
	bool ok = u && h && strlen(h) == strlen(hash) && equal_ct((const unsigned char *)h, (const unsigned char *)hash,
								 strlen(hash));
	explicit_bzero(cd, sizeof *cd);
	free(cd);
	if (ok && !equal_ct(dg, zero, 32)) {
		pthread_mutex_lock(&wc->mu);
		memcpy(wc->cache[wc->cache_next], dg, 32);
		wc->cache_next = (wc->cache_next + 1) % WEB_CACHE;
		if (wc->cache_used < WEB_CACHE)
			wc->cache_used++;
		pthread_mutex_unlock(&wc->mu);
	}
	return ok;
}

static enum MHD_Result refuse(struct MHD_Connection *conn, unsigned status, const char *body, bool challenge)
{
	struct MHD_Response *r =
		MHD_create_response_from_buffer(strlen(body), (void *)(uintptr_t)body, MHD_RESPMEM_PERSISTENT);
	if (!r)
		return MHD_NO;
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; charset=utf-8");
	enum MHD_Result rc = challenge ? MHD_queue_basic_auth_fail_response(conn, "shmetricsd", r)
				       : MHD_queue_response(conn, status, r);
	MHD_destroy_response(r);
	return rc;
}

bool webconfig_admit(struct web_config *wc, struct MHD_Connection *conn, enum MHD_Result *rc)
{
	if (!wc)
		return true;
	if (wc->tls && wc->client_auth != WEB_NO_CLIENT_CERT) {
		const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_GNUTLS_SESSION);
		gnutls_session_t s = ci ? (gnutls_session_t)ci->tls_session : NULL;
		unsigned npeers = 0;
		bool given = s && gnutls_certificate_get_peers(s, &npeers) && npeers > 0;
		bool verify = wc->client_auth == WEB_VERIFY_CLIENT_CERT_IF_GIVEN ||
			      wc->client_auth == WEB_REQUIRE_AND_VERIFY_CLIENT_CERT;
		bool required = wc->client_auth == WEB_REQUIRE_ANY_CLIENT_CERT ||
				wc->client_auth == WEB_REQUIRE_AND_VERIFY_CLIENT_CERT;
		unsigned status = 1;
		if (given && verify && (gnutls_certificate_verify_peers2(s, &status) != GNUTLS_E_SUCCESS || status != 0)) {
			*rc = refuse(conn, MHD_HTTP_FORBIDDEN, "client certificate not trusted (client_ca_file)\n", false);
			return false;
		}
		if (!given && required) {
			*rc = refuse(conn, MHD_HTTP_FORBIDDEN, "a client certificate is required\n", false);
			return false;
		}
	}
	if (wc->nusers == 0)
		return true;
	char *pass = NULL;
	char *user = MHD_basic_auth_get_username_password(conn, &pass);
	bool ok = user && pass && credentials_ok(wc, user, pass);
	if (pass) {
		explicit_bzero(pass, strlen(pass));
		MHD_free(pass);
	}
	if (user)
		MHD_free(user);
	if (!ok)
		*rc = refuse(conn, MHD_HTTP_UNAUTHORIZED, "unauthorized: basic authentication required\n", true);
	return ok;
}
