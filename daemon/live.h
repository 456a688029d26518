/* live.h — the Server-Sent Events hub behind GET /api/v1/events.
 *
 * The ingest thread publishes points, restarts and alert changes; each
 * event is formatted once (strings quoted by cJSON, numbers exact) and
 * appended to ONE shared ring of encoded events. Every client has only a
 * cursor into that ring, so publishing costs O(1) whatever the number of
 * clients or how slow they are; it never blocks on a client and never does
 * I/O (see live.c for the structure).
 *
 * Budgets (gw_live_config_t): at most max_clients subscribers, at most
 * max_per_address from one client address (a new one over either is
 * refused: GW_EFULL, counted); the ring holds at most total_max_bytes of
 * event text; a client more than client_max_bytes behind the newest event
 * is dropped: its connection is closed and counted. A client that finds the
 * events it had not read yet evicted from the ring (the total budget ran
 * out first) is sent `event: resync` and continues from the newest event.
 * Either way the page re-fetches history (a browser reconnects by itself).
 *
 * Each client is a libmicrohttpd connection whose response is produced by a
 * content-reader callback: when nothing is left for it the callback
 * suspends the connection (MHD_suspend_connection) and the hub's notifier
 * thread resumes it (MHD_resume_connection) after a publish, so no thread
 * polls or busy-waits. The same thread sends idle clients a heartbeat every
 * 15 s (which also lets libmicrohttpd notice clients that went away) and
 * sweeps for clients over their share.
 *
 * Events on the wire:
 *   event: point\ndata: {"run","tag","step",<every metric of point.h>}\n\n
 *   event: alert\ndata: <the alert object>\n\n
 *   event: restart\ndata: {"run","tag","step","incarnation","prev_incarnation","reason","time"}\n\n
 *                                  (incarnations as decimal strings: 64-bit ids)
 *   event: resync\ndata: {}\n\n
 *   : hb\n\n                       (heartbeat comment)
 * JSON numbers that are NaN/Inf are null.
 */
#ifndef GW_LIVE_H
#define GW_LIVE_H

#include <stddef.h>
#include <stdint.h>

#include "point.h"
#include "sink.h"
#include "stats.h"

struct MHD_Connection;
struct MHD_Response;

typedef struct gw_live_s gw_live_t;

#define GW_LIVE_CLIENT_MAX_DEFAULT ((size_t)4 << 20)  /* bytes a client may be behind */
#define GW_LIVE_TOTAL_MAX_DEFAULT ((size_t)32 << 20)  /* bytes of events held in all */
#define GW_LIVE_MAX_CLIENTS_DEFAULT 256u
#define GW_LIVE_MAX_PER_ADDRESS_DEFAULT 32u
#define GW_LIVE_HEARTBEAT_MS 15000
#define GW_LIVE_SWEEP_MS 100 /* how often clients over their share are looked for */

/* Zero fields take the defaults above. client_max_bytes is at least 4096
 * and at most total_max_bytes (raised/cut to fit). */
typedef struct gw_live_config_s {
  size_t client_max_bytes; /* a client further behind than this is dropped */
  size_t total_max_bytes;  /* event text held by the ring, for all clients */
  unsigned max_clients;    /* subscribers at once */
  unsigned max_per_address; /* subscribers at once from one client address */
} gw_live_config_t;

/* cfg NULL = every default. stats is borrowed (live_dropped, sse_*) and
 * must outlive the hub. Starts the notifier thread. Returns 0, GW_ENOMEM
 * or -errno; *out is NULL on failure. */
int gw_live_new(gw_live_t **out, const gw_live_config_t *cfg, gw_stats_t *stats);
/* Stops the heartbeat thread and frees the hub. Every client must be gone:
 * stop the HTTP server (gw_http_stop) first. Accepts NULL. */
void gw_live_free(gw_live_t *live);

/* Change the heartbeat interval (tests); takes effect at the next tick. */
void gw_live_set_heartbeat_ms(gw_live_t *live, uint32_t ms);

/* ---- publisher side (ingest thread; never blocks on a client) ---- */

/* O(1) in the number of clients. Returns 0, or GW_ENOMEM (the event is
 * lost for every client and counted in live_dropped once per subscribed
 * client). */
int gw_live_publish_point(gw_live_t *live, const char *run, const char *tag,
                          const gw_point_t *p);
/* json_object: a JSON object (borrowed); its "run" string, if any, is matched
 * against run filters. GW_EINVAL if it is not a JSON object. */
int gw_live_publish_alert(gw_live_t *live, const char *json_object);
/* A stream's window restarted (sink.h): `event: restart` to the clients of
 * its run. 0 or GW_ENOMEM. */
int gw_live_publish_restart(gw_live_t *live, const gw_stream_ref_t *s, const gw_restart_t *r);
/* The hub as a sink: point → gw_live_publish_point, restart →
 * gw_live_publish_restart. */
void gw_live_sink(gw_live_t *live, gw_sink_t *out);

/* ---- HTTP side ---- */

/* Subscribe the connection: run/tag (NULL = any) filter point events
 * exactly; run also filters alerts that carry a run. On success *out is a
 * response to queue with MHD_queue_response (and then destroy); the client
 * lives until libmicrohttpd frees that response. Returns 0, GW_ENOMEM,
 * GW_EFULL (max_clients or max_per_address reached; counted in
 * stats->sse_dropped), or GW_EDENIED after gw_live_close_clients. Call only
 * from the access handler of a daemon started with MHD_ALLOW_SUSPEND_RESUME. */
int gw_live_serve(gw_live_t *live, struct MHD_Connection *c, const char *run,
                  const char *tag, struct MHD_Response **out);

/* End every client's stream and refuse new ones, for good: call before
 * MHD_stop_daemon (libmicrohttpd must not be stopped with suspended
 * connections). */
void gw_live_close_clients(gw_live_t *live);

/* Number of subscribed clients. */
size_t gw_live_client_count(gw_live_t *live);

#endif
