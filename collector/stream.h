/* stream.h — GET /api/v1/metrics/stream: the dashboard's frames as
 * Server-Sent Events, and the thread that makes them.
 *
 * Every --stream-interval seconds the stream thread samples the view
 * (frame.h), turns the samples into a frame, keeps it in a ring of the last
 * HISTORY_SPAN_S seconds (every history_step seconds one also goes to the
 * segment: history.h) and wakes the clients.  Each client is a suspended
 * libmicrohttpd connection whose content callback copies the frames it has
 * not had yet; frames are built once, whatever the number of clients, and
 * no lock is shared with /metrics.
 *
 * Protocol: each frame is one event, "id: <id>\ndata: <json>\n\n"; ids grow
 * (they are the frame's wall-clock milliseconds, or one more than the last)
 * and outlive a restart through the history.  A client that reconnects with
 * Last-Event-ID gets every frame after that id still kept; ?backlog=S
 * (without Last-Event-ID) first sends the kept history of the last S
 * seconds, one frame every history_step; otherwise the stream starts with
 * the newest frame.  A comment line (": heartbeat") goes out after
 * STREAM_HEARTBEAT_S without an event, so proxies and clients can tell a
 * quiet stream from a dead one.  Past --stream-max-clients, 503.
 *
 * Threads: stream_start/stream_stop/stream_free from the main thread
 * (http_start, http_stop); stream_serve and the content callbacks from
 * libmicrohttpd's threads; everything shared is under st->mu.
 */
#ifndef SHMET_STREAM_H
#define SHMET_STREAM_H

#include "http.h"

#define STREAM_PATH "/api/v1/metrics/stream"
#define STREAM_DEFAULT_INTERVAL 1.0   /* seconds */
#define STREAM_DEFAULT_MAX_CLIENTS 64u
#define STREAM_HEARTBEAT_S 5.0

int stream_start(struct collector *c, char *err, size_t errlen);
/* Stop the thread and end every stream (before MHD_stop_daemon, which may
 * not run with suspended connections). */
void stream_stop(struct collector *c);
/* After MHD_stop_daemon: the last clients are gone. */
void stream_free(struct collector *c);

enum MHD_Result stream_serve(struct collector *c, struct MHD_Connection *conn);

struct stream_stats {
	uint32_t clients;
	uint64_t refused, frames;
};
void stream_stats(struct collector *c, struct stream_stats *out);

#endif
