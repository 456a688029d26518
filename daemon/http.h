/* http.h — the daemon's HTTP server (docs/CONTRACT.md §6): JSON API, SSE, /metrics,
 * health, and the dashboard built into the binary.
 *
 * libmicrohttpd runs its own threads (an epoll thread pool); handlers only
 * read: the store through its reader connections, counters from gw_stats_t,
 * per-stream values from gw_metrics_t, and live events from gw_live_t. Nothing
 * here calls back into ingest, so a slow HTTP client can only slow itself.
 *
 * Endpoints (GET and HEAD only; anything else 405 with Allow):
 *   /                       dashboard (web/, embedded; ETag, 304)
 *   /api/v1/runs            {"runs":[{"run","streams","first_step","last_step","last_seen"}]}
 *   /api/v1/runs/{run}/streams  {"streams":[{"tag","k","points","first_step","last_step","last_seen"}]}
 *   /api/v1/series?run=&tag=&metrics=a,b&from=&to=&max_points=
 *                           {"run","tag","step":[…],"a":[…],"b":[…]} (no metrics=: all;
 *                           max_points 2..1000000, min/max downsampling by the store)
 *   /api/v1/alerts?state=firing|resolved|all&limit=   {"alerts":[gw_alerts_json objects]}
 *   /api/v1/events?run=&tag= Server-Sent Events (live.h)
 *   /api/v1/stats           daemon counters (gw_stats_t, store rows)
 *   /metrics                Prometheus text (metrics.h)
 *   /healthz, /readyz       {"status":"ok"} / {"status":"ready"} or 503
 * /api/v1/series answers are built by answer threads of their own (the
 * connection is suspended meanwhile), so libmicrohttpd's threads only ever
 * do cheap work and /healthz is answered whatever data requests are doing.
 * Times are Unix seconds (null when never); numbers leave bit-exact. Errors
 * are {"error":"..."}: 400 bad parameter (named), 401 token (with
 * WWW-Authenticate: Bearer), 404 unknown path/run/stream, 405, 503 (not
 * ready, dependency not configured, shutting down; with Retry-After: too
 * many SSE clients, answer budget held by others), 500 store failure; a
 * series ask whose worst case is over series_max_bytes is 400.
 *
 * Life cycle: gw_http_start binds the address and starts serving;
 * gw_http_stop stops accepting, ends every SSE stream (gw_live_close_clients,
 * for good), waits for libmicrohttpd's threads and frees the server.
 */
#ifndef GW_HTTP_H
#define GW_HTTP_H

#include <stdatomic.h>
#include <stdint.h>

#include "live.h"
#include "metrics.h"
#include "stats.h"
#include "store.h"

/* Zero / NULL fields take the defaults. */
typedef struct gw_http_config_s {
  const char *addr;      /* "HOST:PORT", "[V6]:PORT"; port 0 = ephemeral */
  const char *token;     /* bearer token; NULL or "" = no auth (copied) */
  unsigned threads;      /* poll threads (default 4: a request waits behind the
                            connections of its thread only) */
  unsigned conn_limit;   /* open connections, SSE included (default 1024) */
  unsigned per_ip_limit; /* per client address (default 256) */
  unsigned timeout_s;    /* idle connection timeout (default 60; SSE clients
                            are kept alive by the 15 s heartbeat) */
  const char *cert_file; /* HTTPS: PEM certificate (chain) file; NULL = plain HTTP */
  const char *key_file;  /* HTTPS: PEM private key file; both or neither */
  size_t series_max_bytes;    /* largest /api/v1/series answer (default 64 MiB):
                                 an ask whose worst case is larger gets 400 */
  size_t answer_budget_bytes; /* bytes held for data answers across all
                                 connections, built or being sent (default
                                 256 MiB): over it 503 with Retry-After */
  unsigned answer_threads;    /* threads building data answers (default 2) */
} gw_http_config_t;

/* addr "127.0.0.1:8080", no token, and the defaults above. */
void gw_http_config_default(gw_http_config_t *cfg);

/* What the handlers read. All borrowed; each must outlive the server. */
typedef struct gw_http_deps_s {
  gw_store_t *store;     /* NULL: store endpoints answer 503 */
  gw_live_t *live;       /* NULL: /api/v1/events answers 503 */
  gw_metrics_t *metrics; /* NULL: /metrics answers 503 */
  gw_stats_t *stats;     /* required */
  atomic_int *ready;     /* /readyz is 200 while *ready != 0; NULL = ready */
  /* Extra /metrics families (alerts); may be NULL. */
  gw_metrics_extra_fn metrics_extra;
  void *metrics_extra_arg;
} gw_http_deps_t;

typedef struct gw_http_s gw_http_t;

/* Bind cfg->addr and start serving (HTTPS when cert_file and key_file are
 * given: libmicrohttpd's GnuTLS, files read once here). Returns 0; GW_EINVAL
 * (no stats); GW_ECONFIG (unparsable address, only one of cert/key, no TLS
 * in this libmicrohttpd); -errno from reading the PEM files or from
 * socket/bind/listen (-EADDRINUSE, -EACCES, …); GW_ENOMEM; GW_EIO
 * (libmicrohttpd failed to start, e.g. a certificate or key GnuTLS
 * refuses). *out is NULL on failure. */
int gw_http_start(gw_http_t **out, const gw_http_config_t *cfg,
                  const gw_http_deps_t *deps);

/* The bound port (the ephemeral one when the address asked for port 0). */
uint16_t gw_http_port(const gw_http_t *h);

/* Stop and free; see the life cycle above. Accepts NULL. */
void gw_http_stop(gw_http_t *h);

#endif
