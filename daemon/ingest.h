/* ingest.h — ZeroMQ sockets driven by libuv, feeding the engine.
 *
 * Data flow: ZeroMQ frame → gw_proto_decode → (shard filter) → the
 * stream's worker → gw_proto_read_payload → gw_engine_push_at → events and
 * points → the sinks main registered (sink.h: store queue, live SSE hub,
 * Prometheus latest values, alerts), which ingest never names. Sinks are
 * downstream and never call back into ingest.
 *
 * Stream lifecycle: a stream silent for stream_idle seconds (daemon clock)
 * is retired by its worker (engine state freed, sinks' forget); a new
 * publisher incarnation restarts a stream (sinks' restart); at shutdown the
 * engines' state is handed to a save callback and at start-up it comes back
 * (or is rebuilt from stored sketches, or the stream restarts fresh).
 *
 * Threads: the libuv loop thread receives and validates; `engine_threads`
 * workers each own a gw_engine_t and the streams hashed to it by (run, tag),
 * so a stream's messages stay in order. A worker's input is a bounded
 * single-producer ring; when it is full the loop stops reading ZeroMQ
 * (whose RCVHWM then applies) until the worker catches up — memory stays
 * bounded. Workers call the sinks one at a time under a mutex, so sinks see
 * a single stream of points, as if from one thread. The engines share one
 * memory budget for stream state (--max-stream-memory-mb, an atomic count
 * every worker charges): past it a message is rejected as memory_budget.
 * Every bound socket drops a peer that has not completed its ZeroMQ
 * handshake within --zmq-handshake-ms.
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
#include "sink.h"
#include "stats.h"

/* A stream to bring back at start-up (what the store kept of it). Borrowed
 * for the call to gw_ingest_start. */
typedef struct gw_ingest_resume_s {
  const char *run, *tag;
  uint32_t k;
  uint8_t kind, s;
  uint64_t seed, incarnation;
  uint64_t last_step;   /* last step known for it */
  int64_t last_seen_ns; /* daemon clock */
  const void *state;    /* engine state saved at the last shutdown, or NULL */
  size_t state_len;
  int has_sketches;     /* stored sketches can rebuild the window */
} gw_ingest_resume_t;

/* Replays the stored sketches of (run, tag)'s current incarnation in step
 * order through cb; returns 0, a negative code, or what cb returned. */
typedef int (*gw_ingest_replay_fn)(void *arg, const char *run, const char *tag,
                                   int (*cb)(void *cb_arg, uint64_t step, const double *z,
                                             uint32_t k),
                                   void *cb_arg);

typedef struct gw_ingest_restore_s {
  const gw_ingest_resume_t *items;
  size_t n;
  gw_ingest_replay_fn replay; /* may be NULL */
  void *replay_arg;
} gw_ingest_restore_t;

/* Receives one saved stream at shutdown; 0 or a negative code (stops). */
typedef int (*gw_ingest_save_fn)(void *arg, const char *run, const char *tag, const void *blob,
                                 size_t len);

typedef struct gw_ingest_s gw_ingest_t;

/* Create the engines, bring back the streams of `restore` (may be NULL;
 * each one's sinks get open(GW_OPEN_RESTORED) before anything else), start
 * the workers, create the ZeroMQ sockets, bind every endpoint of cfg,
 * start polling on loop and the once-a-second reaper that retires streams
 * silent for cfg->stream_idle seconds (sinks get forget). sinks[0..n_sinks)
 * are called in that order (at most GW_SINKS_MAX) and copied; what they
 * point to, and everything else passed in, is borrowed and must outlive the
 * ingest. Returns 0 or a negative code (GW_ECONFIG with a message in err for
 * bad endpoints or keys); *out is NULL on failure and nothing is left open. */
int gw_ingest_start(gw_ingest_t **out, uv_loop_t *loop, const gw_config_t *cfg,
                    gw_stats_t *stats, gw_log_t *log, const gw_sink_t *sinks, size_t n_sinks,
                    const gw_ingest_restore_t *restore, char *err, size_t errlen);

/* Stop polling, let the workers finish every queued message (their points
 * reach the sinks before this returns), join them, close the sockets; the
 * struct is freed once libuv has closed its handles (run the loop
 * afterwards). Accepts NULL. */
void gw_ingest_stop(gw_ingest_t *in);

/* After gw_ingest_stop and before the loop runs again (the workers are
 * joined, the engines not yet freed): hand every live stream's state to
 * put, one at a time. *saved (may be NULL) gets the number handed over.
 * Stubs (streams whose window was lost and has not restarted) are skipped.
 * Returns 0 or the first error of put or of serialisation. */
int gw_ingest_save(gw_ingest_t *in, gw_ingest_save_fn put, void *arg, size_t *saved);

/* Reload the --curve-allow directory (SIGHUP). */
int gw_ingest_reload_keys(gw_ingest_t *in);

/* Stable shard of a run name: FNV-1a 64 of the bytes, mod n (documented in
 * docs/SCALE.md so operators can compute it). */
uint32_t gw_ingest_shard_of(const char *run, size_t len, uint32_t n);

#endif
