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

/* Why an SSE client was dropped (connection closed) or refused: the label
 * of gradwatch_sse_dropped_total{reason}. */
#define GW_SSE_DROP_MAP(XX)                                                  \
  XX(SLOW, "slow")               /* more than its share of bytes behind */   \
  XX(MAX_CLIENTS, "max_clients") /* refused: --sse-max-clients reached */    \
  XX(PER_ADDRESS, "per_address") /* refused: --sse-max-per-address reached */

typedef enum {
#define XX(id, name) GW_SSE_DROP_##id,
  GW_SSE_DROP_MAP(XX)
#undef XX
  GW_SSE_DROP_COUNT
} gw_sse_drop_t;

static inline const char *gw_sse_drop_name(int i) {
  static const char *const names[] = {
#define XX(id, name) name,
      GW_SSE_DROP_MAP(XX)
#undef XX
  };
  return i >= 0 && i < GW_SSE_DROP_COUNT ? names[i] : "unknown";
}

/* Why a data answer (/api/v1/series) was refused: the label of
 * gradwatch_http_refused_total{reason}. */
#define GW_HTTP_REFUSE_MAP(XX)                                                   \
  XX(TOO_LARGE, "too_large") /* 400: over --series-max-mb */                   \
  XX(BUDGET, "budget")       /* 503: --http-answer-budget-mb held by others */ \
  XX(QUEUE, "queue")         /* 503: too many answers waiting for a worker */

typedef enum {
#define XX(id, name) GW_HTTP_REFUSE_##id,
  GW_HTTP_REFUSE_MAP(XX)
#undef XX
  GW_HTTP_REFUSE_COUNT
} gw_http_refuse_t;

static inline const char *gw_http_refuse_name(int i) {
  static const char *const names[] = {
#define XX(id, name) name,
      GW_HTTP_REFUSE_MAP(XX)
#undef XX
  };
  return i >= 0 && i < GW_HTTP_REFUSE_COUNT ? names[i] : "unknown";
}

typedef struct gw_stats_s {
  atomic_uint_fast64_t received;             /* messages read from ZeroMQ */
  atomic_uint_fast64_t accepted;             /* accepted by the engine */
  atomic_uint_fast64_t meta_accepted;        /* run-metadata messages accepted */
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
  /* SSE and HTTP answer budgets (live.c, http.c) */
  atomic_uint_fast64_t sse_clients;                    /* subscribed SSE clients (gauge) */
  atomic_uint_fast64_t sse_dropped[GW_SSE_DROP_COUNT]; /* SSE clients dropped or refused, by reason */
  atomic_uint_fast64_t http_refused[GW_HTTP_REFUSE_COUNT]; /* data answers refused, by reason */
  atomic_uint_fast64_t http_answer_bytes;              /* bytes held for data answers (gauge) */
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
