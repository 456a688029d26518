/* engine.h — rolling windows and the predictability math of docs/CONTRACT.md §2.
 *
 * The engine owns every stream's state: a ring of the last W increments
 * z_j − z_{j−1}, the previous sketch, the EMA, the windowed and cumulative
 * sums, the W×W Gram matrix of the increments kept up to date
 * incrementally, and a Frequent Directions sketch of every increment since
 * the stream began (the whole-run rank; daemon/fdsketch.h). A stream's memory grows with its
 * window: the ring doubles its rows as the window fills, the sketch is
 * allocated at its first shrink, and every byte a stream holds is charged
 * to an optional budget shared by several engines (gw_engine_budget_t).
 * It does no I/O: messages come in already decoded
 * (gw_msg_t), points go out as plain structs. It is not thread-safe; one
 * engine is driven by one thread (the daemon may run several, each owning a
 * disjoint set of streams).
 */
#ifndef GW_ENGINE_H
#define GW_ENGINE_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "gw_error.h"
#include "gw_proto.h"
#include "point.h"


/* A cap on the bytes of stream state held by every engine sharing it (the
 * daemon: one per worker thread). Any thread: the count is atomic. A
 * stream whose creation or growth would pass the limit is refused with
 * GW_EBUDGET; a dropped stream gives its bytes back. */
typedef struct gw_engine_budget_s {
  _Atomic uint64_t used; /* bytes charged now */
  uint64_t limit;        /* bytes; 0 = no limit */
} gw_engine_budget_t;

void gw_engine_budget_init(gw_engine_budget_t *b, uint64_t limit);
uint64_t gw_engine_budget_used(gw_engine_budget_t *b);

typedef struct gw_engine_config_s {
  uint32_t window;      /* W, >= 2 (default 64) */
  uint32_t rank_every;  /* recompute rank-derived fields every N points, >= 1 */
  double ema_beta;      /* in [0, 1) (default 0.9) */
  uint32_t max_streams; /* cap on live streams (default 10000) */
  uint32_t max_k;       /* cap on k (default 65536) */
  uint32_t fd_rows;     /* ℓ, rows of the whole-run Frequent Directions sketch,
                         * in [2, 1024] (default 64) */
  gw_engine_budget_t *budget; /* borrowed, may be shared; NULL = no limit */
} gw_engine_config_t;

/* Defaults of docs/CONTRACT.md §5. */
void gw_engine_config_default(gw_engine_config_t *cfg);



/* Read-only view of a stream for listing. */
typedef struct gw_stream_info_s {
  uint32_t stream_id;
  const char *run; /* NUL-terminated, owned by the engine */
  const char *tag;
  uint32_t k;
  uint8_t kind, s;
  uint64_t seed;
  uint64_t n_messages; /* accepted messages */
  uint64_t last_step;
  int64_t last_wall_ns;
  /* additions for the stream lifecycle */
  uint64_t incarnation; /* current publisher incarnation (0: version 1) */
  int64_t last_recv_ns; /* daemon clock of the last accepted message */
} gw_stream_info_t;

typedef struct gw_engine_s gw_engine_t;

/* Returns NULL on allocation failure or an invalid config. */
gw_engine_t *gw_engine_new(const gw_engine_config_t *cfg);
void gw_engine_free(gw_engine_t *e); /* accepts NULL */

/* Feed one decoded message. Returns:
 *   1  a point was produced into *out (n >= 1),
 *   0  accepted without a point (the stream's first message, n = 0),
 *   <0 rejected, stream state unchanged: GW_ENONFINITE (also |z_i| > 1e60,
 *      so sums cannot overflow), GW_EORDER, GW_EMISMATCH, GW_ESTREAMS,
 *      GW_EKLIMIT, GW_ENAME (run/tag length 0 or > 128), GW_EINVAL (NULL
 *      arguments), GW_ENOMEM, GW_EBUDGET (the stream, or its window's
 *      growth, would pass the memory budget); gw_engine_push also GW_ELENGTH, GW_EDTYPE.
 * κ is NAN whenever its denominator is 0 (JSON has no infinity).
 * out may be NULL. */
int gw_engine_push(gw_engine_t *e, const gw_msg_t *m, gw_point_t *out);

/* Same, with the payload already converted to float64 (z[0..m->k-1]); used
 * by tests and replays. m->payload is ignored. */
int gw_engine_push_f64(gw_engine_t *e, const gw_msg_t *m, const double *z,
                       gw_point_t *out);

/* What a push did to the stream besides (maybe) producing a point. */
#define GW_ENGINE_OPENED 0x1u    /* the stream was created by this message */
#define GW_ENGINE_RESTARTED 0x2u /* its window restarted with this message (n = 0) */

typedef struct gw_engine_event_s {
  uint32_t stream_id;        /* set whenever the message was accepted */
  unsigned flags;            /* GW_ENGINE_* */
  int reason;                /* gw_restart_reason_t (sink.h) when RESTARTED */
  uint64_t prev_incarnation; /* before the restart */
  uint64_t prev_last_step;   /* last step before the restart (0: none) */
} gw_engine_event_t;

/* The full form of a push. recv_ns is the daemon's receive time (what idle
 * retirement measures). A message whose incarnation differs from the
 * stream's restarts it: window, EMA and cumulative sums start afresh with
 * this message as n = 0 (no point), whatever its step, and the event says
 * GW_ENGINE_RESTARTED with reason GW_RESTART_INCARNATION. Within
 * one incarnation a step not above the last is GW_EORDER; in every
 * incarnation the sketch parameters must stay those of the stream
 * (GW_EMISMATCH). ev may be NULL.
 * Same return values as gw_engine_push_f64. */
int gw_engine_push_at(gw_engine_t *e, const gw_msg_t *m, const double *z, int64_t recv_ns,
                      gw_point_t *out, gw_engine_event_t *ev);

/* Retire every stream whose last message arrived before idle_before_ns (the
 * daemon clock): cb (may be NULL) sees each one's info, then it is dropped.
 * Returns the number retired. O(streams). */
size_t gw_engine_reap(gw_engine_t *e, int64_t idle_before_ns,
                      void (*cb)(void *arg, const gw_stream_info_t *info), void *arg);

/* ---- state across daemon restarts ----
 *
 * A stream's whole state (window, Gram matrix, EMA, last sketch, cumulative
 * sums, rank fields, last step, incarnation) as an opaque, versioned blob of
 * gw_engine_state_bytes() bytes. Loading it into an engine with the same
 * window, rank_every and ema_beta continues the stream exactly as if the
 * daemon had never stopped (bit for bit). */

/* Serialise stream_id into a malloc'd blob (*blob is the caller's to free).
 * GW_ENOTFOUND, GW_ENOMEM. */
int gw_engine_stream_save(const gw_engine_t *e, uint32_t stream_id, void **blob, size_t *len);
/* Recreate a stream from a blob; *id gets its id. GW_ECONFIG when the blob
 * was written with another window, rank_every, ema_beta or fd_rows (the caller then
 * starts the stream afresh), GW_EINVAL for a damaged or foreign blob or a
 * stream that already exists, GW_ESTREAMS, GW_EKLIMIT, GW_ENOMEM, GW_EBUDGET. */
int gw_engine_stream_load(gw_engine_t *e, const void *blob, size_t len, uint32_t *id);
/* A stream known only by its identity and last step (state lost): it holds
 * no window. Its next message of the same incarnation must still be above
 * last_step (GW_EORDER otherwise) and starts a fresh window with a
 * GW_ENGINE_RESTARTED event of the given reason. info supplies run, tag, k,
 * kind, s, seed, last_step, incarnation, last_recv_ns. */
int gw_engine_stream_stub(gw_engine_t *e, const gw_stream_info_t *info, int reason, uint32_t *id);

/* The id of a live stream by name; GW_ENOTFOUND if absent. */
int gw_engine_stream_find(const gw_engine_t *e, const char *run, size_t run_len, const char *tag,
                          size_t tag_len, uint32_t *id);

/* Number of live streams, and a lookup by id (GW_ENOTFOUND if absent). */
size_t gw_engine_stream_count(const gw_engine_t *e);
int gw_engine_stream_info(const gw_engine_t *e, uint32_t stream_id,
                          gw_stream_info_t *out);

/* Forget a stream (e.g. retention); its id may later be reused.
 * GW_ENOTFOUND for an unknown id. */
int gw_engine_stream_drop(gw_engine_t *e, uint32_t stream_id);

/* Bytes of stream state this engine holds now (what it charged to its
 * budget). */
size_t gw_engine_bytes(const gw_engine_t *e);
/* Bytes one live stream holds now; 0 for an unknown id. */
size_t gw_engine_stream_held(const gw_engine_t *e, uint32_t stream_id);

/* Bytes held for one stream of sketch length k at window W with the
 * default fd_rows once its window is full and its sketch allocated (the
 * most a stream ever holds; for the memory model and the RSS benchmark). */
size_t gw_engine_stream_bytes(uint32_t k, uint32_t window);
/* The same for fd_rows = ell. */
size_t gw_engine_stream_bytes_fd(uint32_t k, uint32_t window, uint32_t ell);

#endif
