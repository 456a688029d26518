/* remote_write.h — a sink that sends every point, as it is computed, to one
 * or more Prometheus remote-write receivers (Prometheus with
 * --web.enable-remote-write-receiver, Mimir, Thanos Receive,
 * VictoriaMetrics), so the cluster view has per-step resolution instead of
 * scrape resolution.
 *
 * Series. For every point of stream (run, tag) and every metric M of the
 * configured list (default kappa_onestep, kappa_ema, rank_90, rank_99,
 * grad_norm, loss) one sample of `gradwatch_point_<M>{run, tag}`, plus one
 * of `gradwatch_point_step{run, tag}` holding the step, all at the same
 * timestamp: the daemon's receive time of the message in milliseconds
 * (gw_point_t.recv_ns). Two points of a stream received within the same
 * millisecond get timestamps one millisecond apart (the later one moved
 * forward), because a receiver keeps one sample per series and timestamp.
 * A null metric (NaN: κ of 0/0, a loss never sent) is no sample at all.
 * Labels (__name__, run, tag and any configured `name=value` ones, e.g.
 * replica="a", or cluster and __replica__ for Mimir's HA deduplication) are
 * sorted by name, as the protocol requires.
 *
 * Data flow. The sink's point callback (ingest, serialised) copies a fixed
 * size record — a reference to the stream's labels, the timestamp, the step
 * and the metric values — into each receiver's bounded ring: O(1), a mutex
 * held for a memcpy, never any I/O. A full ring drops the new point and
 * counts it (gradwatch_remote_write_dropped_points_total). Each receiver has
 * its own worker thread: it waits up to batch_wait_ms for batch_max points
 * to gather (fewer requests, each series' labels sent once for several
 * samples), takes up to batch_max queued points, encodes
 * them as one WriteRequest (proto/remote.proto, protoc-c), compresses it
 * with snappy and POSTs it with libcurl. A transport error, a 5xx or a 429
 * is retried after backoff_ms, doubling up to backoff_max_ms, until it is
 * accepted or the sink stops (points arriving meanwhile queue behind it, up
 * to the ring's bound); any other 4xx drops the batch as refused (counted as
 * failed, logged with the receiver's message). A dead receiver delays only
 * its own queue.
 *
 * States of a point, per receiver: queued → in flight → (waiting to retry
 * → in flight)* → sent | failed; or dropped (ring full, or stopped before
 * it was sent).
 */
#ifndef GW_REMOTE_WRITE_H
#define GW_REMOTE_WRITE_H

#include <stddef.h>
#include <stdint.h>

#include "gw_error.h"
#include "log.h"
#include "metrics.h"
#include "point.h"
#include "sink.h"

#define GW_REMOTE_WRITE_LABELS_MAX 8
#define GW_REMOTE_WRITE_DEFAULT_METRICS "kappa_onestep,kappa_ema,rank_90,rank_99,grad_norm,loss"

typedef struct gw_remote_write_config_s {
  const char *const *urls; /* http:// or https:// receiver URLs (copied) */
  size_t n_urls;           /* >= 1 */
  const char *metrics;     /* comma-separated metric names; NULL: the default list */
  const char *const *labels; /* "name=value" labels added to every series (copied) */
  size_t n_labels;           /* <= GW_REMOTE_WRITE_LABELS_MAX */
  size_t queue_max;        /* points waiting per receiver (default 100000) */
  uint32_t batch_max;      /* points per request (default 2000) */
  uint32_t batch_wait_ms;  /* wait this long for a batch to fill before sending
                              what there is (default 50; 0: send at once) */
  uint32_t timeout_ms;     /* one attempt, connect included (default 10000) */
  uint32_t backoff_ms;     /* first retry delay (default 100) */
  uint32_t backoff_max_ms; /* cap of the doubling delay (default 5000) */
  gw_log_t *log;           /* failures and drops, rate-limited; NULL: silent */
} gw_remote_write_config_t;

void gw_remote_write_config_default(gw_remote_write_config_t *cfg);

/* Parse a metric list ("kappa_ema,rank_90"; spaces around names allowed)
 * into point.h metric ids, in the order given; duplicates are errors.
 * Returns 0 with *n ids, or GW_ECONFIG with a message in err. */
int gw_remote_write_parse_metrics(const char *list, int ids[GW_METRIC_COUNT], size_t *n,
                                  char *err, size_t errlen);

typedef struct gw_remote_write_s gw_remote_write_t;

/* Start one worker per URL. GW_ECONFIG (bad URL, metric list or label, message in
 * err), GW_EINVAL (queue_max, batch_max or timeout_ms 0), GW_ENOMEM,
 * GW_EIO (libcurl) or -errno (threads); *out is NULL on failure. */
int gw_remote_write_new(gw_remote_write_t **out, const gw_remote_write_config_t *cfg, char *err,
                        size_t errlen);

/* Wait up to drain_ms for every queued point to be sent, then stop: an
 * attempt in flight is aborted and what is left is dropped (counted).
 * Call after ingest has stopped. Accepts NULL. */
void gw_remote_write_free(gw_remote_write_t *rw, uint32_t drain_ms);

/* The sink (open, point, forget; name "remote_write"). */
void gw_remote_write_sink(gw_remote_write_t *rw, gw_sink_t *out);

/* Wait until nothing is queued or in flight on any receiver, at most
 * timeout_ms: 0, or -ETIMEDOUT with work left. */
int gw_remote_write_drain(gw_remote_write_t *rw, uint32_t timeout_ms);

/* Counters of receiver i (< gw_remote_write_count); a snapshot, any thread. */
typedef struct gw_remote_write_stats_s {
  uint64_t sent;     /* points accepted by the receiver (2xx) */
  uint64_t failed;   /* points refused (a 4xx other than 429) */
  uint64_t dropped;  /* points never sent: ring full, or stopped */
  uint64_t requests; /* POSTs started, retries included */
  uint64_t retries;  /* POSTs that were retries */
  uint64_t queued;   /* points waiting now, those in flight included */
} gw_remote_write_stats_t;

size_t gw_remote_write_count(const gw_remote_write_t *rw);
int gw_remote_write_stats(gw_remote_write_t *rw, size_t i, gw_remote_write_stats_t *out);

/* gw_metrics_extra_fn (arg = the gw_remote_write_t): the counters above as
 * gradwatch_remote_write_{sent,failed,dropped}_points_total{url},
 * gradwatch_remote_write_requests_total{url},
 * gradwatch_remote_write_retries_total{url} and the gauge
 * gradwatch_remote_write_queued_points{url} (url without user:password).
 * Any thread. */
int gw_remote_write_metrics(void *arg, gw_metrics_writer_t *w);

#endif
