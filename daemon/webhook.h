/* webhook.h — delivery of alert notifications to one HTTP receiver, and the
 * Alertmanager webhook payload (version 4) they are written in.
 *
 * One gw_webhook_t is one receiver URL with its own bounded queue and its own
 * worker thread, so a dead receiver delays nobody but itself and each
 * receiver sees its notifications in the order they were sent.
 *
 * Data flow: the alerts module (ingest thread) calls gw_webhook_send, which
 * copies the body into the queue and signals the worker: O(1), no I/O, never
 * waits on the network. When the queue is full the *oldest* queued body is
 * dropped and counted. The worker POSTs each body with libcurl (Content-Type
 * application/json), one attempt at a time with timeout_ms per attempt;
 * a transport error, a 5xx, 408 or 429 is retried after backoff_ms, doubling
 * each time up to backoff_max_ms, at most `retries` times; any other 4xx is
 * a permanent failure (the receiver refuses the payload; retrying won't help).
 *
 * States of a notification: queued → in flight → (waiting to retry →
 * in flight)* → sent | failed; or queued → dropped (queue full, or the
 * webhook freed before it was delivered). A failed or dropped notification
 * is logged (cfg.log), at most a few lines a second per receiver, with the
 * count of those held back.
 */
#ifndef GW_WEBHOOK_H
#define GW_WEBHOOK_H

#include <stddef.h>
#include <stdint.h>

#include "gw_error.h"
#include "log.h"

typedef struct gw_webhook_config_s {
  const char *url;         /* http:// or https:// URL (copied), required */
  uint32_t timeout_ms;     /* whole attempt, connect included (default 5000) */
  uint32_t retries;        /* attempts after the first (default 3) */
  uint32_t backoff_ms;     /* delay before the first retry (default 500) */
  uint32_t backoff_max_ms; /* cap of the doubling delay (default 30000) */
  size_t queue_max;        /* bodies waiting; >= 1 (default 256) */
  gw_log_t *log;           /* delivery failures; NULL: silent (borrowed) */
} gw_webhook_config_t;

void gw_webhook_config_default(gw_webhook_config_t *cfg);

/* Counters of one receiver; a snapshot, any thread. */
typedef struct gw_webhook_stats_s {
  uint64_t sent;     /* delivered (2xx) */
  uint64_t failed;   /* gave up: retries exhausted or a permanent 4xx */
  uint64_t dropped;  /* never attempted to the end: queue full, or freed */
  uint64_t attempts; /* POSTs started, retries included */
  uint64_t queued;   /* waiting now, the one in flight included */
} gw_webhook_stats_t;

typedef struct gw_webhook_s gw_webhook_t;

/* Start the worker. GW_EINVAL (no URL, scheme not http/https, queue_max 0,
 * timeout_ms 0), GW_ENOMEM, GW_EIO (libcurl init) or -errno (thread);
 * *out is NULL on failure. */
int gw_webhook_new(gw_webhook_t **out, const gw_webhook_config_t *cfg);

/* Stop at once: an attempt in flight is aborted, a retry wait cut short,
 * queued bodies dropped (counted). Never waits on the network. Accepts NULL. */
void gw_webhook_free(gw_webhook_t *w);

/* Queue a copy of body (a JSON document). O(1) apart from the copy; never
 * blocks on the worker or the network. Returns 0 (also when the oldest body
 * had to be dropped to make room), GW_EINVAL or GW_ENOMEM. */
int gw_webhook_send(gw_webhook_t *w, const char *body);

/* Wait until nothing is queued or in flight, at most timeout_ms: 0, or
 * -ETIMEDOUT with work left (shutdown uses it before gw_webhook_free). */
int gw_webhook_drain(gw_webhook_t *w, uint32_t timeout_ms);

void gw_webhook_stats(gw_webhook_t *w, gw_webhook_stats_t *out);

/* The configuration it runs with (strings borrowed from w). */
const gw_webhook_config_t *gw_webhook_config(const gw_webhook_t *w);

/* ---- payload ---- */

/* One alert of a notification. labels and annotations are name/value
 * pairs ending with NULL ({"alertname", "x", "run", "r1", NULL}); labels
 * must hold alertname. */
typedef struct gw_webhook_alert_s {
  int resolved;                   /* 0 = firing, 1 = resolved */
  const char *const *labels;
  const char *const *annotations; /* may be NULL */
  int64_t starts_ns;              /* Unix ns */
  int64_t ends_ns;                /* Unix ns; 0 = not ended (firing) */
  const char *generator_url;      /* may be NULL ("") */
} gw_webhook_alert_t;

/* Alertmanager's webhook payload, version 4, for one alert:
 *   {"version":"4","groupKey","truncatedAlerts":0,"status":"firing|resolved",
 *    "receiver","groupLabels","commonLabels","commonAnnotations",
 *    "externalURL","alerts":[{"status","labels","annotations","startsAt",
 *    "endsAt","generatorURL","fingerprint"}]}
 * The group is the alert itself: groupLabels = commonLabels = its labels,
 * groupKey = "{}:{name=\"value\",…}" with names sorted. Times are RFC 3339
 * UTC with nanoseconds; a firing alert's endsAt is "0001-01-01T00:00:00Z"
 * (Go's zero time, as Alertmanager writes it). fingerprint is Prometheus's
 * label-set fingerprint (FNV-1a 64 over the sorted name 0xff value 0xff
 * bytes) as 16 hex digits, so the same alert keeps the same fingerprint
 * from firing to resolved and matches what Prometheus would compute.
 * receiver and external_url may be NULL (""). Returns text the caller
 * frees, or NULL (out of memory, no alertname). */
char *gw_webhook_payload(const gw_webhook_alert_t *a, const char *receiver,
                         const char *external_url);

/* The fingerprint above, alone (for tests and logs). */
uint64_t gw_webhook_fingerprint(const char *const *labels);

#endif
