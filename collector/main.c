/* shmetricsd: the collector daemon.  Flags, signals, start and stop. */
#include "http.h"
#include "stream.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

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
		"  -l, --listen HOST:PORT      where to serve HTTP (default 127.0.0.1:%d; port 0 picks a free one)\n"
		"      --regions N             regions, if this process creates the segment (default %u)\n"
		"      --region-size BYTES     bytes per region, if this process creates the segment (default %llu)\n"
		"      --retired-size BYTES    bytes for the totals of dead workers, if this process creates the\n"
		"                              segment (default twice the region size)\n"
		"      --scan-interval SECONDS how often to look for new series and dead workers (default 1)\n"
		"      --segment-owner UID     also accept a segment owned by this uid (default: only our own)\n"
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
		SHMET_DEFAULT_PATH, DEFAULT_PORT, SHMET_DEFAULT_REGIONS, (unsigned long long)SHMET_DEFAULT_REGION_SIZE,
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

static int parse_listen(const char *s, char *host, size_t cap, int *port)
{
	const char *colon = strrchr(s, ':');
	if (!colon)
		return -1;
	const char *h = s;
	size_t hl = (size_t)(colon - s);
	if (hl >= 2 && s[0] == '[' && s[hl - 1] == ']')
		h++, hl -= 2;
	uint64_t p;
	if (hl == 0 || hl >= cap || parse_u64(colon + 1, 65535, &p) != 0)
		return -1;
	memcpy(host, h, hl);
	host[hl] = 0;
	*port = (int)p;
	return 0;
}

int main(int argc, char **argv)
{
	static char host[256] = "127.0.0.1";
	struct collector_config cfg = {
		.segment = NULL, .listen_host = host, .listen_port = DEFAULT_PORT, .scan_interval = 1.0,
		.push_max_batch = 1000, .push_series_limit = 1000, .push_body_limit = 4u << 20,
		.push_rate = 50, .push_burst = 100,
	};
	enum {
		OPT_REGIONS = 256, OPT_REGION_SIZE, OPT_RETIRED_SIZE, OPT_SCAN, OPT_TOKEN, OPT_BATCH, OPT_SERIES, OPT_RATE,
		OPT_OWNER, OPT_HTTP_MAX, OPT_HTTP_PER_CLIENT, OPT_HTTP_IDLE, OPT_HTTP_REQUEST,
		OPT_STREAM_INTERVAL, OPT_STREAM_CLIENTS,
	};
	static const struct option opts[] = {
		{"segment", required_argument, NULL, 's'},
		{"listen", required_argument, NULL, 'l'},
		{"regions", required_argument, NULL, OPT_REGIONS},
		{"region-size", required_argument, NULL, OPT_REGION_SIZE},
		{"retired-size", required_argument, NULL, OPT_RETIRED_SIZE},
		{"scan-interval", required_argument, NULL, OPT_SCAN},
		{"segment-owner", required_argument, NULL, OPT_OWNER},
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
			if (parse_listen(optarg, host, sizeof host, &cfg.listen_port) != 0) {
				fprintf(stderr, "shmetricsd: --listen wants HOST:PORT, e.g. 127.0.0.1:%d (got \"%s\")\n",
					DEFAULT_PORT, optarg);
				return 2;
			}
			break;
		case OPT_REGIONS:
			if (parse_u64(optarg, SHMET_MAX_REGIONS, &u) != 0 || u == 0) {
				fprintf(stderr, "shmetricsd: --regions wants 1..%u\n", SHMET_MAX_REGIONS);
				return 2;
			}
			cfg.regions = (uint32_t)u;
			break;
		case OPT_REGION_SIZE:
			if (parse_u64(optarg, SHMET_MAX_REGION_SIZE, &u) != 0 || u < SHMET_MIN_REGION_SIZE) {
				fprintf(stderr, "shmetricsd: --region-size wants %llu..%llu bytes\n",
					(unsigned long long)SHMET_MIN_REGION_SIZE, (unsigned long long)SHMET_MAX_REGION_SIZE);
				return 2;
			}
			cfg.region_size = u;
			break;
		case OPT_RETIRED_SIZE:
			if (parse_u64(optarg, 4 * SHMET_MAX_REGION_SIZE, &u) != 0 || u < SHMET_MIN_REGION_SIZE) {
				fprintf(stderr, "shmetricsd: --retired-size wants %llu..%llu bytes\n",
					(unsigned long long)SHMET_MIN_REGION_SIZE, (unsigned long long)(4 * SHMET_MAX_REGION_SIZE));
				return 2;
			}
			cfg.retired_size = u;
			break;
		case OPT_SCAN:
			cfg.scan_interval = strtod(optarg, &end);
			if (*end || !(cfg.scan_interval >= 0.01 && cfg.scan_interval <= 3600)) {
				fprintf(stderr, "shmetricsd: --scan-interval wants seconds between 0.01 and 3600\n");
				return 2;
			}
			break;
		case OPT_TOKEN:
			cfg.push_token_file = optarg;
			break;
		case OPT_OWNER:
			if (shmet_parse_uid(optarg, &cfg.owner_uid) != 0) {
				fprintf(stderr, "shmetricsd: --segment-owner wants a numeric uid (got \"%s\")\n", optarg);
				return 2;
			}
			cfg.allow_owner = true;
			/* the push API's writer attaches through shmet_init, which
			 * takes the owner from the environment */
			setenv(SHMET_ENV_SEGMENT_OWNER, optarg, 1);
			break;
		case OPT_BATCH:
			if (parse_u64(optarg, 100000, &u) != 0 || u == 0) {
				fprintf(stderr, "shmetricsd: --push-max-batch wants 1..100000\n");
				return 2;
			}
			cfg.push_max_batch = (uint32_t)u;
			break;
		case OPT_SERIES:
			if (parse_u64(optarg, 1000000, &u) != 0 || u == 0) {
				fprintf(stderr, "shmetricsd: --push-series-limit wants 1..1000000\n");
				return 2;
			}
			cfg.push_series_limit = (uint32_t)u;
			break;
		case OPT_RATE:
			cfg.push_rate = strtod(optarg, &end);
			if (*end || !(cfg.push_rate > 0 && cfg.push_rate <= 1e6)) {
				fprintf(stderr, "shmetricsd: --push-rate wants requests per second, > 0\n");
				return 2;
			}
			cfg.push_burst = 2 * cfg.push_rate;
			break;
		case OPT_HTTP_MAX:
		case OPT_HTTP_PER_CLIENT:
			if (parse_u64(optarg, 65536, &u) != 0 || u == 0) {
				fprintf(stderr, "shmetricsd: --%s wants 1..65536\n",
					o == OPT_HTTP_MAX ? "http-max-connections" : "http-max-per-client");
				return 2;
			}
			*(o == OPT_HTTP_MAX ? &cfg.http_max_connections : &cfg.http_max_per_client) = (uint32_t)u;
			break;
		case OPT_HTTP_IDLE:
		case OPT_HTTP_REQUEST:
			if (parse_u64(optarg, 3600, &u) != 0 || u == 0) {
				fprintf(stderr, "shmetricsd: --%s wants whole seconds, 1..3600\n",
					o == OPT_HTTP_IDLE ? "http-idle-timeout" : "http-request-timeout");
				return 2;
			}
			*(o == OPT_HTTP_IDLE ? &cfg.http_idle_timeout : &cfg.http_request_timeout) = (unsigned)u;
			break;
		case OPT_STREAM_INTERVAL:
			cfg.stream_interval = strtod(optarg, &end);
			if (*end || !(cfg.stream_interval >= 0.1 && cfg.stream_interval <= 60)) {
				fprintf(stderr, "shmetricsd: --stream-interval wants seconds between 0.1 and 60\n");
				return 2;
			}
			break;
		case OPT_STREAM_CLIENTS:
			if (parse_u64(optarg, 10000, &u) != 0 || u == 0) {
				fprintf(stderr, "shmetricsd: --stream-max-clients wants 1..10000\n");
				return 2;
			}
			cfg.stream_max_clients = (uint32_t)u;
			break;
		case 'h':
			usage(stdout);
			return 0;
		case 'V':
			printf("shmetricsd %s (segment layout %u.%u)\n", SHMET_VERSION_STRING, SHMET_VERSION_MAJOR,
			       SHMET_VERSION_MINOR);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "shmetricsd: unexpected argument \"%s\"\n", argv[optind]);
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
	if (collector_open(&c, &cfg, err, sizeof err) != SHMET_OK) {
		fprintf(stderr, "shmetricsd: %s\n", err);
		return 1;
	}
	if (api_init(&c, err, sizeof err) != SHMET_OK || collector_start(&c, err, sizeof err) != SHMET_OK) {
		fprintf(stderr, "shmetricsd: %s\n", err);
		api_free(&c);
		collector_close(&c);
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
	collector_log("stopped");
	return 0;
}
