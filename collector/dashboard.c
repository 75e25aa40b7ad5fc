/* GET /dashboard: the files embedded from collector/dashboard/ (see
 * dashboard.h). */
#include "dashboard.h"

#include "http.h"

#include <string.h>

static const char *content_type(const char *path)
{
	static const struct {
		const char *ext, *type;
	} types[] = {
		{".html", "text/html; charset=utf-8"},
		{".js", "text/javascript; charset=utf-8"},
		{".css", "text/css; charset=utf-8"},
		{".svg", "image/svg+xml"},
		{".txt", "text/plain; charset=utf-8"},
	};
	const char *dot = strrchr(path, '.');
	for (size_t i = 0; dot && i < sizeof types / sizeof *types; i++)
		if (strcmp(dot, types[i].ext) == 0)
			return types[i].type;
	return "application/octet-stream";
}

enum MHD_Result dashboard_serve(struct MHD_Connection *conn, const char *url)
{
	const char *path = strcmp(url, "/dashboard") == 0 || strcmp(url, "/dashboard/") == 0 ? "index.html" : url + 11;
	for (size_t i = 0; i < dashboard_nassets; i++) {
		const struct dashboard_asset *a = &dashboard_assets[i];
		if (strcmp(a->path, path) != 0)
			continue;
		struct MHD_Response *r =
			MHD_create_response_from_buffer(a->len, (void *)(uintptr_t)a->data, MHD_RESPMEM_PERSISTENT);
		if (!r)
			return MHD_NO;
		MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, content_type(path));
		/* a new collector may bring a new page: ask every time (cheap, local) */
		MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
		/* everything comes from here: no CDN, no inline script */
		MHD_add_response_header(r, "Content-Security-Policy",
					"default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
					"frame-ancestors 'none'");
		MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
		enum MHD_Result rc = MHD_queue_response(conn, MHD_HTTP_OK, r);
		MHD_destroy_response(r);
		return rc;
	}
	return http_respond_static(conn, MHD_HTTP_NOT_FOUND, "text/plain; charset=utf-8",
				   "no such dashboard file; the page is /dashboard\n");
}
