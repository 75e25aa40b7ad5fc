/* dashboard.h — GET /dashboard and its files, compiled into shmetricsd.
 *
 * The page and everything it loads (collector/dashboard/: the page, its
 * script and style, and the vendored chart library) are turned into a C
 * array at build time (collector/dashboard/embed.sh), so the collector
 * needs no file and no network at run time.
 */
#ifndef SHMET_DASHBOARD_H
#define SHMET_DASHBOARD_H

#include <microhttpd.h>
#include <stddef.h>

struct dashboard_asset {
	const char *path; /* relative to collector/dashboard/, e.g. "app.js" */
	const unsigned char *data;
	size_t len;
};

/* Generated: every file, in the order embed.sh was given them. */
extern const struct dashboard_asset dashboard_assets[];
extern const size_t dashboard_nassets;

/* url is "/dashboard" (the page) or "/dashboard/<path>". */
enum MHD_Result dashboard_serve(struct MHD_Connection *conn, const char *url);

#endif
