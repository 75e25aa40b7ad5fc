/* http.h — the HTTP side of shmetricsd (libmicrohttpd). */
#ifndef SHMET_HTTP_H
#define SHMET_HTTP_H

#include "collector.h"

#include <microhttpd.h>

/* Queue a response that owns body (malloc'd; freed by libmicrohttpd). */
enum MHD_Result http_respond(struct MHD_Connection *conn, unsigned status, const char *content_type, char *body,
			     size_t len);
/* Queue a response with a constant body. */
enum MHD_Result http_respond_static(struct MHD_Connection *conn, unsigned status, const char *content_type,
				    const char *body);

/* Defaults of the HTTP limits (struct collector_config's http_* at 0). */
#define HTTP_DEFAULT_MAX_CONNECTIONS 256u
#define HTTP_DEFAULT_MAX_PER_CLIENT 64u
#define HTTP_DEFAULT_IDLE_TIMEOUT 15u    /* seconds */
#define HTTP_DEFAULT_REQUEST_TIMEOUT 30u /* seconds */

int http_start(struct collector *c, char *err, size_t errlen);
/* conn's answer is a stream: the whole-request deadline does not apply. */
void http_streaming(struct collector *c, struct MHD_Connection *conn);
void http_stop(struct collector *c);

/* The JSON API (api.c): every /api/ URL goes there.  *con_cls is the
 * request's state between libmicrohttpd's calls; api_completed frees it. */
enum MHD_Result api_handle(struct collector *c, struct MHD_Connection *conn, const char *url, const char *method,
			   const char *upload_data, size_t *upload_data_size, void **con_cls);
void api_completed(void *con_cls);
int api_init(struct collector *c, char *err, size_t errlen);
void api_tick(struct collector *c); /* updater: once per scan */
void api_free(struct collector *c);

#endif
