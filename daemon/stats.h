/* stats.h — the daemon's counters (GET /api/v1/stats, /metrics).
 *
 * Written by the ingest/loop thread and the store writer, read by HTTP
 * threads: every field is a C11 atomic, relaxed ordering (they are counters,
 * not synchronisation). The struct is embedded in the daemon context.
 */
#ifndef GW_STATS_H
#define GW_STATS_H

#include <stdatomic.h>
#include <stdint.h>

#include "gw_error.h"

typedef struct gw_stats_s {
  atomic_uint_fast64_t received;             /* messages read from ZeroMQ */
  atomic_uint_fast64_t accepted;             /* accepted by the engine */
  atomic_uint_fast64_t points;               /* points produced */
  atomic_uint_fast64_t rejected[GW_E_COUNT]; /* by reason (gw_err_index) */
  atomic_uint_fast64_t store_dropped;        /* points lost: store queue full */
  atomic_uint_fast64_t store_written;        /* points committed to SQLite */
  atomic_uint_fast64_t store_duplicates;     /* points ignored: (segment, step) already stored */
  atomic_uint_fast64_t store_errors;         /* failed flushes (I/O, full) */
  atomic_uint_fast64_t live_dropped;         /* SSE events dropped (slow client) */
  atomic_uint_fast64_t streams;              /* live streams in the engine */
  atomic_uint_fast64_t streams_retired;      /* streams retired for idleness */
  atomic_uint_fast64_t stream_restarts;      /* windows restarted (incarnation, …) */
  atomic_uint_fast64_t store_queue_depth;    /* points waiting for the writer */
  atomic_int store_last_error;               /* GW_E* / -errno of the last failed flush, 0 if healthy */
  atomic_int_fast64_t started_ns;            /* daemon start, wall clock */
} gw_stats_t;

static inline void gw_stats_add(atomic_uint_fast64_t *c, uint64_t v) {
  atomic_fetch_add_explicit(c, v, memory_order_relaxed);
}
static inline uint64_t gw_stats_get(atomic_uint_fast64_t *c) {
  return atomic_load_explicit(c, memory_order_relaxed);
}
/* Count a rejection by its GW_E* reason (other codes count as invalid_argument). */
static inline void gw_stats_reject(gw_stats_t *s, int code) {
  int i = gw_err_index(code);
  gw_stats_add(&s->rejected[i < 0 ? GW_EINVAL_INDEX : i], 1);
}

#endif
