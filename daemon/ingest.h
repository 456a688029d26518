/* ingest.h — ZeroMQ sockets driven by libuv, feeding the engine.
 *
 * Data flow: ZeroMQ frame → gw_proto_decode → (shard filter) → the
 * stream's worker → gw_proto_read_payload → gw_engine_push_f64 → point →
 * sinks (store queue, live SSE hub, Prometheus latest values, alerts).
 * Sinks are downstream and never call back into ingest.
 *
 * Threads: the libuv loop thread receives and validates; `engine_threads`
 * workers each own a gw_engine_t and the streams hashed to it by (run, tag),
 * so a stream's messages stay in order. A worker's input is a bounded
 * single-producer ring; when it is full the loop stops reading ZeroMQ
 * (whose RCVHWM then applies) until the worker catches up — memory stays
 * bounded. Workers call the sinks one at a time under a mutex, so sinks see
 * a single stream of points, as if from one thread.
 *
 * Each bound socket (SUB or PULL) is watched through its ZMQ_FD with a
 * uv_poll_t. That FD is edge-triggered and only says "look at ZMQ_EVENTS":
 * on every wake-up ingest reads messages with ZMQ_DONTWAIT until EAGAIN, up
 * to a budget per turn so one busy socket can't starve the loop; when the
 * budget runs out a uv_idle_t brings it back on the next loop iteration
 * instead of waiting for an edge that may never come.
 *
 * With CURVE on, a ZAP handler (inproc://zeromq.zap.01, also on the loop)
 * accepts only publishers whose public key is in the --curve-allow directory;
 * refusals are counted as "denied".
 */
#ifndef GW_INGEST_H
#define GW_INGEST_H

#include <uv.h>

#include "config.h"
#include "engine.h"
#include "log.h"
#include "stats.h"

struct gw_store_s;
struct gw_live_s;
struct gw_metrics_s;
struct gw_alerts_s;

typedef struct gw_ingest_sinks_s {
  struct gw_store_s *store;     /* may be NULL */
  struct gw_live_s *live;       /* may be NULL */
  struct gw_metrics_s *metrics; /* may be NULL */
  struct gw_alerts_s *alerts;   /* may be NULL */
} gw_ingest_sinks_t;

typedef struct gw_ingest_s gw_ingest_t;

/* Create the ZeroMQ sockets, bind every endpoint of cfg, start polling on
 * loop. Everything passed in is borrowed and must outlive the ingest.
 * Returns 0 or a negative code (GW_ECONFIG with a message in err for bad
 * endpoints or keys); *out is NULL on failure and nothing is left open. */
int gw_ingest_start(gw_ingest_t **out, uv_loop_t *loop, const gw_config_t *cfg,
                    gw_stats_t *stats, gw_log_t *log, const gw_ingest_sinks_t *sinks,
                    char *err, size_t errlen);

/* Stop polling, let the workers finish every queued message (their points
 * reach the sinks before this returns), join them, close the sockets; the
 * struct is freed once libuv has closed its handles (run the loop
 * afterwards). Accepts NULL. */
void gw_ingest_stop(gw_ingest_t *in);

/* Reload the --curve-allow directory (SIGHUP). */
int gw_ingest_reload_keys(gw_ingest_t *in);

/* Stable shard of a run name: FNV-1a 64 of the bytes, mod n (documented in
 * docs/SCALE.md so operators can compute it). */
uint32_t gw_ingest_shard_of(const char *run, size_t len, uint32_t n);

#endif
