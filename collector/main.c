/* shmetricsd: the collector daemon.  Flags, signals, start and stop. */
#include "http.h"
#include "stream.h"
#include "listen.h"
#include "selfmetrics.h"
#include "watch.h"
#include "webconfig.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define SHMET_STR_(x) #x
#define SHMET_STR(x) SHMET_STR_(x)
#define DEFAULT_PORT 9089 /* beside Prometheus' own 9090-9094, outside the exporters' 9100-9999 */

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
	stop_requested = sig;
}

static void usage(FILE *out)
{
	fprintf(out,
		"Usage: shmetricsd [OPTION]...\n"
		"Serve the metrics of a shmetrics segment to Prometheus.\n\n"
		"  -s, --segment PATH          segment file (default $SHMETRICS_SEGMENT, then %s)\n"
		"      --web.listen-address ADDR  where to serve HTTP: HOST:PORT, [IPv6]:PORT, or :PORT for every\n"
		"                              address; repeat it for more than one (default 127.0.0.1:%d; port 0\n"
		"                              picks a free one)\n"
		"  -l, --listen ADDR           the same as --web.listen-address\n"
		"      --web.telemetry-path PATH  where the metrics are served (default /metrics)\n"
		"      --web.config.file FILE  TLS and basic authentication, in the Prometheus exporter-toolkit\n"
		"                              format (tls_server_config, basic_auth_users)\n"
		"      --log.level LEVEL       debug, info, warn or error (default info)\n"
		"      --log.format FORMAT     logfmt or json (default logfmt)\n"
		"      --collector.host        also serve the host's CPU, memory and disk usage (off; node_exporter\n"
		"                              is the standard for host metrics)\n"
		"      --no-writer-warning N   warn when no writer has attached after N scans (default %u; 0: never)\n"
		"      --regions N             regions, if this process creates the segment (default %u)\n"
		"      --region-size BYTES     bytes per region, if this process creates the segment (default %llu)\n"
		"      --retired-size BYTES    bytes for the totals of dead workers, if this process creates the\n"
		"                              segment (default twice the region size)\n"
		"      --series-limit N        series one process may hold per family, the default of a segment this\n"
		"                              process creates (default $SHMETRICS_SERIES_LIMIT, then 2000); past\n"
		"                              it new label sets go to the family's overflow series\n"
		"      --retired-ttl SECONDS   drop series that only dead workers' totals hold and that no live\n"
		"                              process has written for SECONDS (default 0: keep them)\n"
		"      --scan-interval SECONDS how often to look for new series and dead workers (default 1)\n"
		"      --segment-owner UID     also accept a segment owned by this uid (default: only our own)\n"
		"      --segment-mode MODE     mode of a segment this process creates: 0600 (default), 0640 or 0660\n"
		"                              to share it with its group (default $SHMETRICS_SEGMENT_MODE)\n"
		"      --segment-group GROUP   group of a segment this process creates, a name or a gid (default\n"
		"                              $SHMETRICS_SEGMENT_GROUP, then our own)\n"
		"      --push-token-file PATH  enable the push API; bearer token read from PATH\n"
		"      --push-max-batch N      samples per /api/v1/metrics/batch request (default 1000)\n"
		"      --push-series-limit N   series per pushed family (default 1000)\n"
		"      --push-rate R           push requests per second per client (default 50, burst 2x)\n"
		"      --http-max-connections N  HTTP connections served at once (default %u)\n"
		"      --http-max-per-client N   of them from one address (default %u)\n"
		"      --http-idle-timeout S     close a connection silent for S seconds (default %u)\n"
		"      --http-request-timeout S  a whole request and its answer, at most S seconds (default %u)\n"
		"      --stream-interval S     seconds between frames of /api/v1/metrics/stream and /dashboard (default 1)\n"
		"      --stream-max-clients N  streams served at once; more get 503 (default %u)\n"
		"  -h, --help                  show this help\n"
		"  -V, --version               show the version\n\n"
		"SIGTERM or SIGINT stops it.  Logs go to stderr.\n",
		SHMET_DEFAULT_PATH, DEFAULT_PORT, WATCH_DEFAULT_NO_WRITER_SCANS, SHMET_DEFAULT_REGIONS, (unsigned long long)SHMET_DEFAULT_REGION_SIZE,
		HTTP_DEFAULT_MAX_CONNECTIONS, HTTP_DEFAULT_MAX_PER_CLIENT, HTTP_DEFAULT_IDLE_TIMEOUT,
		HTTP_DEFAULT_REQUEST_TIMEOUT, STREAM_DEFAULT_MAX_CLIENTS);
}

static int parse_u64(const char *s, uint64_t max, uint64_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || end == s || *end || s[0] == '-' || v > max)
		return -1;
	*out = v;
	return 0;
}

/* --log.format and --log.level take effect before any other flag is read,
 * so that even a complaint about an earlier flag is logged in the format
 * asked for. */
static int configure_log(int argc, char **argv)
{
	enum log_format fmt = LOG_FORMAT_LOGFMT;
	enum log_level lvl = LOG_LEVEL_INFO;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = NULL;
		bool is_fmt = strncmp(a, "--log.format", 12) == 0, is_lvl = strncmp(a, "--log.level", 11) == 0;
		if (!is_fmt && !is_lvl)
			continue;
		const char *rest = a + (is_fmt ? 12 : 11);
		if (*rest == '=')
			v = rest + 1;
		else if (*rest == 0 && i + 1 < argc)
			v = argv[++i];
		else
			continue; /* getopt complains */
		if (is_fmt && log_parse_format(v, &fmt) != 0) {
			collector_error("--log.format wants logfmt or json (got \"%s\")", v);
			return -1;
		}
		if (is_lvl && log_parse_level(v, &lvl) != 0) {
			collector_error("--log.level wants debug, info, warn or error (got \"%s\")", v);
			return -1;
		}
		log_configure(fmt, lvl);
	}
	return 0;
}

/* A segment this start created and no writer has claimed a region of yet
 * goes when the start fails: the next start creates it with its own flags. */
static void remove_if_ours(struct collector *c)
{
	if (!c->seg.map.created)
		return;
	for (uint32_t i = 0; i < c->seg.regions; i++) {
		struct shmet_region_info info;
		shmet_region_info(&c->seg, i, &info);
		/* the collector's own dashboard history is no writer's */
		if (info.state != SHMET_REGION_FREE && !(info.flags & SHMET_SLOT_HISTORY))
			return;
	}
	if (unlink(c->seg.path) == 0)
		collector_log("removed the segment %s this failed start created", c->seg.path);
}

int main(int argc, char **argv)
{
	struct collector_config cfg = {
		.segment = NULL, .listen_host = "127.0.0.1", .listen_port = DEFAULT_PORT, .scan_interval = 1.0,
		.push_max_batch = 1000, .push_series_limit = 1000, .push_body_limit = 4u << 20,
		.push_rate = 50, .push_burst = 100, .no_writer_scans = WATCH_DEFAULT_NO_WRITER_SCANS,
	};
	const char *listen_specs[HTTP_MAX_LISTEN], *web_config_file = NULL;
	unsigned nspecs = 0;
	if (configure_log(argc, argv) != 0)
		return 2;
	/* the writers' variables are the collector's defaults too: one setting for both */
	const char *env_mode = getenv(SHMET_ENV_SEGMENT_MODE), *env_group = getenv(SHMET_ENV_SEGMENT_GROUP);
	if (env_mode && *env_mode && shmet_parse_mode(env_mode, &cfg.segment_mode) != 0) {
		collector_error("%s wants 0600, 0640 or 0660 (got \"%s\")", SHMET_ENV_SEGMENT_MODE, env_mode);
		return 2;
	}
	if (env_group && *env_group) {
		if (shmet_parse_group(env_group, &cfg.segment_group) != 0) {
			collector_error("%s: no such group \"%s\"", SHMET_ENV_SEGMENT_GROUP, env_group);
			return 2;
		}
		cfg.set_group = true;
	}
	enum {
		OPT_REGIONS = 256, OPT_REGION_SIZE, OPT_RETIRED_SIZE, OPT_SCAN, OPT_TOKEN, OPT_BATCH, OPT_SERIES, OPT_RATE,
		OPT_OWNER, OPT_HTTP_MAX, OPT_HTTP_PER_CLIENT, OPT_HTTP_IDLE, OPT_HTTP_REQUEST, OPT_TELEMETRY,
		OPT_WEB_CONFIG, OPT_LOG_LEVEL, OPT_LOG_FORMAT, OPT_HOST, OPT_NO_WRITER, OPT_SEG_MODE, OPT_SEG_GROUP,
		OPT_STREAM_INTERVAL, OPT_STREAM_CLIENTS, OPT_SERIES_LIMIT, OPT_RETIRED_TTL,
	};
	static const struct option opts[] = {
		{"segment", required_argument, NULL, 's'},
		{"listen", required_argument, NULL, 'l'},
		{"web.listen-address", required_argument, NULL, 'l'},
		{"web.telemetry-path", required_argument, NULL, OPT_TELEMETRY},
		{"web.config.file", required_argument, NULL, OPT_WEB_CONFIG},
		{"log.level", required_argument, NULL, OPT_LOG_LEVEL},
		{"log.format", required_argument, NULL, OPT_LOG_FORMAT},
		{"collector.host", no_argument, NULL, OPT_HOST},
		{"no-writer-warning", required_argument, NULL, OPT_NO_WRITER},
		{"regions", required_argument, NULL, OPT_REGIONS},
		{"region-size", required_argument, NULL, OPT_REGION_SIZE},
		{"retired-size", required_argument, NULL, OPT_RETIRED_SIZE},
		{"series-limit", required_argument, NULL, OPT_SERIES_LIMIT},
		{"retired-ttl", required_argument, NULL, OPT_RETIRED_TTL},
		{"scan-interval", required_argument, NULL, OPT_SCAN},
		{"segment-owner", required_argument, NULL, OPT_OWNER},
		{"segment-mode", required_argument, NULL, OPT_SEG_MODE},
		{"segment-group", required_argument, NULL, OPT_SEG_GROUP},
		{"push-token-file", required_argument, NULL, OPT_TOKEN},
		{"push-max-batch", required_argument, NULL, OPT_BATCH},
		{"push-series-limit", required_argument, NULL, OPT_SERIES},
		{"push-rate", required_argument, NULL, OPT_RATE},
		{"http-max-connections", required_argument, NULL, OPT_HTTP_MAX},
		{"http-max-per-client", required_argument, NULL, OPT_HTTP_PER_CLIENT},
		{"http-idle-timeout", required_argument, NULL, OPT_HTTP_IDLE},
		{"http-request-timeout", required_argument, NULL, OPT_HTTP_REQUEST},
		{"stream-interval", required_argument, NULL, OPT_STREAM_INTERVAL},
		{"stream-max-clients", required_argument, NULL, OPT_STREAM_CLIENTS},
		{"help", no_argument, NULL, 'h'},
		{"version", no_argument, NULL, 'V'},
		{NULL, 0, NULL, 0},
	};
	int o;
	uint64_t u;
	char *end;
	while ((o = getopt_long(argc, argv, "s:l:hV", opts, NULL)) != -1) {
		switch (o) {
		case 's':
			cfg.segment = optarg;
			break;
		case 'l':
			if (nspecs == HTTP_MAX_LISTEN) {
				collector_error("at most %d listen addresses", HTTP_MAX_LISTEN);
				return 2;
			}
			if (!http_listen_syntax_ok(optarg)) {
				collector_error("--web.listen-address wants HOST:PORT, [IPv6]:PORT or :PORT, e.g. "
						"127.0.0.1:%d (got \"%s\")", DEFAULT_PORT, optarg);
				return 2;
			}
			listen_specs[nspecs++] = optarg;
			break;
		case OPT_SEG_MODE:
			if (shmet_parse_mode(optarg, &cfg.segment_mode) != 0) {
				collector_error("--segment-mode wants 0600, 0640 or 0660 (got \"%s\")", optarg);
				return 2;
			}
			/* the push API's writer creates nothing, but says the same */
			setenv(SHMET_ENV_SEGMENT_MODE, optarg, 1);
			break;
		case OPT_SEG_GROUP:
			if (shmet_parse_group(optarg, &cfg.segment_group) != 0) {
				collector_error("--segment-group: no such group \"%s\"", optarg);
				return 2;
			}
			cfg.set_group = true;
			break;
		case OPT_TELEMETRY:
			if (optarg[0] != '/' || strcmp(optarg, "/") == 0 || strncmp(optarg, "/-/", 3) == 0 ||
			    strncmp(optarg, "/api/", 5) == 0) {
				collector_error("--web.telemetry-path wants a path such as /metrics, not / nor under /-/ "
						"or /api/ (got \"%s\")", optarg);
				return 2;
			}
			cfg.telemetry_path = optarg;
			break;
		case OPT_WEB_CONFIG:
			web_config_file = optarg;
			break;
		case OPT_LOG_LEVEL:
		case OPT_LOG_FORMAT:
			break; /* configure_log took them */
		case OPT_HOST:
			cfg.host_metrics = true;
			break;
		case OPT_NO_WRITER:
			if (parse_u64(optarg, 1000000, &u) != 0) {
				collector_error("--no-writer-warning wants a number of scans, 0..1000000");
				return 2;
			}
			cfg.no_writer_scans = (unsigned)u;
			break;
		case OPT_REGIONS:
			if (parse_u64(optarg, SHMET_MAX_REGIONS, &u) != 0 || u == 0) {
				collector_error("--regions wants 1..%u", SHMET_MAX_REGIONS);
				return 2;
			}
			cfg.regions = (uint32_t)u;
			break;
		case OPT_REGION_SIZE:
			if (parse_u64(optarg, SHMET_MAX_REGION_SIZE, &u) != 0 || u < SHMET_MIN_REGION_SIZE) {
				collector_error("--region-size wants %llu..%llu bytes",
					(unsigned long long)SHMET_MIN_REGION_SIZE, (unsigned long long)SHMET_MAX_REGION_SIZE);
				return 2;
			}
			cfg.region_size = u;
			break;
		case OPT_RETIRED_SIZE:
			if (parse_u64(optarg, 4 * SHMET_MAX_REGION_SIZE, &u) != 0 || u < SHMET_MIN_REGION_SIZE) {
				collector_error("--retired-size wants %llu..%llu bytes",
					(unsigned long long)SHMET_MIN_REGION_SIZE, (unsigned long long)(4 * SHMET_MAX_REGION_SIZE));
				return 2;
			}
			cfg.retired_size = u;
			break;
		case OPT_SERIES_LIMIT:
			if (parse_u64(optarg, UINT32_MAX, &u) != 0 || u == 0) {
				collector_error("--series-limit wants 1..%u series", UINT32_MAX);
				return 2;
			}
			cfg.series_limit = (uint32_t)u;
			break;
		case OPT_RETIRED_TTL:
			cfg.retired_ttl = strtod(optarg, &end);
			if (*end || !(cfg.retired_ttl >= 0 && cfg.retired_ttl <= 365 * 86400.0)) {
				collector_error("--retired-ttl wants seconds between 0 (off) and 31536000");
				return 2;
			}
			break;
		case OPT_SCAN:
			cfg.scan_interval = strtod(optarg, &end);
			if (*end || !(cfg.scan_interval >= 0.01 && cfg.scan_interval <= 3600)) {
				collector_error("--scan-interval wants seconds between 0.01 and 3600");
				return 2;
			}
			break;
		case OPT_TOKEN:
			cfg.push_token_file = optarg;
			break;
		case OPT_OWNER:
			if (shmet_parse_uid(optarg, &cfg.owner_uid) != 0) {
				collector_error("--segment-owner wants a numeric uid (got \"%s\")", optarg);
				return 2;
			}
			cfg.allow_owner = true;
			/* the push API's writer attaches through shmet_init, which
			 * takes the owner from the environment */
			setenv(SHMET_ENV_SEGMENT_OWNER, optarg, 1);
			break;
		case OPT_BATCH:
			if (parse_u64(optarg, 100000, &u) != 0 || u == 0) {
				collector_error("--push-max-batch wants 1..100000");
				return 2;
			}
			cfg.push_max_batch = (uint32_t)u;
			break;
		case OPT_SERIES:
			if (parse_u64(optarg, 1000000, &u) != 0 || u == 0) {
				collector_error("--push-series-limit wants 1..1000000");
				return 2;
			}
			cfg.push_series_limit = (uint32_t)u;
			break;
		case OPT_RATE:
			cfg.push_rate = strtod(optarg, &end);
			if (*end || !(cfg.push_rate > 0 && cfg.push_rate <= 1e6)) {
				collector_error("--push-rate wants requests per second, > 0");
				return 2;
			}
			cfg.push_burst = 2 * cfg.push_rate;
			break;
		case OPT_HTTP_MAX:
		case OPT_HTTP_PER_CLIENT:
			if (parse_u64(optarg, 65536, &u) != 0 || u == 0) {
				collector_error("--%s wants 1..65536",
					o == OPT_HTTP_MAX ? "http-max-connections" : "http-max-per-client");
				return 2;
			}
			*(o == OPT_HTTP_MAX ? &cfg.http_max_connections : &cfg.http_max_per_client) = (uint32_t)u;
			break;
		case OPT_HTTP_IDLE:
		case OPT_HTTP_REQUEST:
			if (parse_u64(optarg, 3600, &u) != 0 || u == 0) {
				collector_error("--%s wants whole seconds, 1..3600",
					o == OPT_HTTP_IDLE ? "http-idle-timeout" : "http-request-timeout");
				return 2;
			}
			*(o == OPT_HTTP_IDLE ? &cfg.http_idle_timeout : &cfg.http_request_timeout) = (unsigned)u;
			break;
		case OPT_STREAM_INTERVAL:
			cfg.stream_interval = strtod(optarg, &end);
			if (*end || !(cfg.stream_interval >= 0.1 && cfg.stream_interval <= 60)) {
				collector_error("--stream-interval wants seconds between 0.1 and 60");
				return 2;
			}
			break;
		case OPT_STREAM_CLIENTS:
			if (parse_u64(optarg, 10000, &u) != 0 || u == 0) {
				collector_error("--stream-max-clients wants 1..10000");
				return 2;
			}
			cfg.stream_max_clients = (uint32_t)u;
			break;
		case 'h':
			usage(stdout);
			return 0;
		case 'V':
			printf("shmetricsd, version %s (revision: %s)\n  build date: %s\n  segment layout: %u.%u\n",
			       SHMET_VERSION_STRING, shmetricsd_revision, shmetricsd_build_date, SHMET_VERSION_MAJOR,
			       SHMET_VERSION_MINOR);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind < argc) {
		collector_error("unexpected argument \"%s\"", argv[optind]);
		return 2;
	}
	if (!cfg.segment)
		cfg.segment = shmet_default_path();

	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	static struct collector c;
	char err[512];
	if (web_config_file && webconfig_load(web_config_file, &cfg.web, err, sizeof err) != 0) {
		collector_error("--web.config.file: %s", err);
		return 1;
	}
	/* Listen first: a port in use or not permitted fails the start
	 * before a segment is created. */
	static struct http_listener listeners[HTTP_MAX_LISTEN];
	if (nspecs == 0)
		listen_specs[nspecs++] = "127.0.0.1:" SHMET_STR(DEFAULT_PORT);
	for (unsigned i = 0; i < nspecs; i++)
		if (http_listen_bind(listen_specs[i], &listeners[cfg.nlisteners++], err, sizeof err) != 0) {
			collector_error("%s", err);
			http_listen_close(listeners, cfg.nlisteners);
			webconfig_free(cfg.web);
			return 1;
		}
	cfg.listeners = listeners;
	if (collector_open(&c, &cfg, err, sizeof err) != SHMET_OK) {
		collector_error("%s", err);
		http_listen_close(listeners, cfg.nlisteners);
		webconfig_free(cfg.web);
		return 1;
	}
	if (api_init(&c, err, sizeof err) != SHMET_OK || collector_start(&c, err, sizeof err) != SHMET_OK) {
		collector_error("%s", err);
		api_free(&c);
		remove_if_ours(&c);
		collector_close(&c);
		http_listen_close(listeners, cfg.nlisteners);
		webconfig_free(cfg.web);
		return 1;
	}
	/* The handler only sets a flag; a short sleep (not pause(), which could
	 * miss a signal landing just before it) notices it. */
	while (!stop_requested) {
		struct timespec tick = {0, 100000000};
		nanosleep(&tick, NULL);
	}
	collector_log("signal %d: stopping", (int)stop_requested);
	collector_stop(&c);
	api_free(&c);
	collector_close(&c);
	webconfig_free(cfg.web);
	collector_log("stopped");
	return 0;
}
