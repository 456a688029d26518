/* sink.h — what ingest hands downstream, and the one interface every
 * consumer of points implements.
 *
 * Data flows one way: ingest (ZeroMQ → proto → engine) calls the sinks that
 * main registered, in registration order; a sink never calls ingest, the
 * engine or another sink. The sinks today are the store (SQLite), the live
 * feed (SSE), the Prometheus metrics and the alerts.
 *
 * Lifecycle of a stream as the sinks see it:
 *
 *   open ──► (sketch, point)* ──► restart ──► (sketch, point)* … ──► forget
 *
 *   open     the stream became live in this process: its first message ever,
 *            its first message after it was retired, or restored at start-up.
 *            stream_id is daemon-wide and stays the stream's until forget;
 *            after forget it may be given to another stream.
 *   sketch   every accepted message's sketch z (k float64), the first one of
 *            a window included; only sinks that keep raw sketches use it.
 *   point    every message n >= 1 of the current window.
 *   restart  the window and the cumulative sums started afresh (a new
 *            publisher incarnation, or state that could not be carried over
 *            a daemon restart); the ref already carries the new incarnation
 *            and sketch parameters. Delivered before the sketch of the message
 *            that caused it.
 *   forget   the stream was retired (silent for --stream-idle): drop whatever
 *            is held for it in memory; history stays in the store.
 *
 * Runs have one more call, outside any stream's lifecycle:
 *
 *   meta     an accepted run-metadata message (PROTOCOL.md §11): the run's
 *            metadata document, validated and normalised (runmeta.h). The
 *            latest one received for a run replaces the earlier ones; it may
 *            come before, between or after the run's points.
 *
 * Threads: ingest serialises all calls (one at a time, under its mutex), so a
 * sink sees one ordered sequence of calls, as if from one thread, though not
 * always the same thread. Calls must not block on I/O: the store only queues.
 * Every pointer is borrowed for the duration of the call.
 */
#ifndef GW_SINK_H
#define GW_SINK_H

#include <stdint.h>

#include "point.h"

typedef struct gw_stream_ref_s {
  uint32_t stream_id; /* daemon-wide, see above */
  const char *run, *tag; /* NUL-terminated */
  uint32_t k;
  uint8_t kind, s; /* sketch kind (gw_sketch_kind_t) and nonzeros per column */
  uint64_t seed;
  uint64_t incarnation; /* 0: a version 1 publisher (no incarnation) */
} gw_stream_ref_t;

/* Why a stream's window started afresh. */
#define GW_RESTART_MAP(XX)                                                        \
  XX(INCARNATION, "incarnation")   /* a new publisher incarnation (rerun/resume) */ \
  XX(RESUMED, "resumed")           /* spoke again after it was retired */         \
  XX(CONFIG, "config_changed")     /* window/ema_beta/rank_every changed across a \
                                      daemon restart */                            \
  XX(NO_STATE, "no_state")         /* the daemon restarted without saved state \
                                      (kill -9) and no sketches to rebuild from */

typedef enum {
  GW_RESTART_NONE = 0,
#define XX(id, name) GW_RESTART_##id,
  GW_RESTART_MAP(XX)
#undef XX
  GW_RESTART_COUNT
} gw_restart_reason_t;

/* The public name of a reason ("incarnation", …), or NULL. */
const char *gw_restart_reason_name(int reason);
/* The reason of a name, or GW_RESTART_NONE. */
int gw_restart_reason_lookup(const char *name);

typedef struct gw_restart_s {
  int reason;                /* gw_restart_reason_t */
  uint64_t step;             /* first step of the new window */
  uint64_t prev_incarnation; /* incarnation before the restart */
  uint64_t prev_last_step;   /* last step accepted before it (0: none known) */
  int64_t recv_ns;           /* daemon clock */
} gw_restart_t;

/* How a stream became live in this process. */
typedef enum {
  GW_OPEN_NEW = 1,  /* by a message (its first, or its first after retirement):
                       the sink may find history of the stream from before */
  GW_OPEN_RESTORED  /* at start-up, with its state carried over a daemon
                       restart: a continuation, not a new window */
} gw_open_how_t;

typedef struct gw_open_s {
  int how;         /* gw_open_how_t */
  uint64_t step;   /* GW_OPEN_NEW: the step of the message; RESTORED: last step */
  int64_t recv_ns; /* daemon clock */
} gw_open_t;

/* A run's metadata, as the meta call sees it. */
typedef struct gw_run_meta_s {
  const char *run;      /* NUL-terminated */
  uint64_t incarnation; /* of the publisher that sent it (never 0) */
  int64_t wall_ns;      /* publisher clock when it made the document */
  int64_t recv_ns;      /* daemon clock */
  const char *doc;      /* compact JSON text of the normalised document */
} gw_run_meta_t;

typedef struct gw_sink_s {
  const char *name; /* for logs: "store", "live", … */
  void *arg;        /* the sink's own object */
  /* Any callback may be NULL. */
  void (*open)(void *arg, const gw_stream_ref_t *s, const gw_open_t *o);
  void (*sketch)(void *arg, const gw_stream_ref_t *s, uint64_t step, const double *z);
  void (*point)(void *arg, const gw_stream_ref_t *s, const gw_point_t *p);
  void (*restart)(void *arg, const gw_stream_ref_t *s, const gw_restart_t *r);
  void (*forget)(void *arg, const gw_stream_ref_t *s);
  void (*meta)(void *arg, const gw_run_meta_t *m);
} gw_sink_t;

#define GW_SINKS_MAX 8

#endif
