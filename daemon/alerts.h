/* alerts.h — rules evaluated on every point, alert states, notifications
 * (docs/ALERTS.md is the operator's guide).
 *
 * The module is four files: alert_rules.c parses and validates the rules
 * (`[alert NAME]` sections, kind threshold | relative | stalled, and the
 * `[alerts]` section; the shipped defaults GW_ALERTS_DEFAULT_RULES are
 * loaded first and a user rule of the same name replaces one),
 * alert_kinds.c says what each kind means, alerts.c keeps the streams and
 * the state machine, alert_notify.c writes and sends what changed.
 *
 * Data flow: ingest → the alerts sink (gw_alerts_sink: every point, and a
 * stream's restart and retirement) and a 1 s libuv timer → gw_alerts_tick;
 * a state change is written to the store (gw_store_put_alert), published
 * on SSE (gw_live_publish_alert) and queued to every webhook
 * (gw_webhook_send). /metrics pulls the alert families (gw_alerts_metrics);
 * nothing here pushes into the metrics. Nothing here waits on disk or
 * network.
 *
 * Threads: observe, tick, forget, the sink's callbacks and counters may be
 * called from any thread and serialise on an internal mutex (ingest's
 * workers observe, the loop thread ticks); reload too, but from one thread
 * at a time (SIGHUP: the daemon's reload thread, off the loop). gw_alerts_metrics and
 * gw_alerts_firing_count may run on any thread (HTTP) beside them. new and
 * free: nothing else may run.
 */
#ifndef GW_ALERTS_H
#define GW_ALERTS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "log.h"
#include "metrics.h"
#include "point.h"
#include "sink.h"
#include "store.h"

struct gw_live_s;

/* What the module writes to. All borrowed, each may be NULL, and each must
 * outlive the gw_alerts_t. */
typedef struct gw_alerts_deps_s {
  struct gw_store_s *store; /* persistence + restore at start; NULL: ids are local */
  struct gw_live_s *live;   /* SSE */
  gw_log_t *log;            /* NULL: silent */
  /* Alertmanager's v2 API (alertmanager.h): NULL or no URL: none. Read by
   * gw_alerts_new only; kept across reloads. */
  const struct gw_alertmanager_config_s *alertmanager;
} gw_alerts_deps_t;

typedef struct gw_alerts_s gw_alerts_t;

/* Load the rules of path (NULL: the defaults alone), start the webhooks and
 * restore the alerts the store holds as active (pending/firing), so they are
 * not notified again and resolve when their stream recovers. Returns 0,
 * GW_ECONFIG (message in err, naming file, line where known, rule and key),
 * GW_ENOMEM, or the code of a failing webhook or store read; *out is NULL on
 * failure. */
int gw_alerts_new(gw_alerts_t **out, const char *path, const gw_alerts_deps_t *deps,
                  char *err, size_t errlen);

/* Give the webhooks up to drain_ms to deliver what is queued, then stop
 * them and free everything. Active alerts stay active in the store (they
 * are restored at the next start). Accepts NULL. */
void gw_alerts_free(gw_alerts_t *a, uint32_t drain_ms);

/* SIGHUP: parse path again. On any error the old rules and webhooks stay
 * in force and GW_ECONFIG comes back with the message in err. On success
 * states of rules that kept their name, kind, metric and window survive;
 * alerts of rules that are gone (or no longer match their stream) resolve. */
int gw_alerts_reload(gw_alerts_t *a, const char *path, char *err, size_t errlen);

/* The same, for a reload run off the event loop (one at a time): the parse
 * is abandoned as soon as *cancel (may be NULL) becomes nonzero, and a rule
 * set parsed after that is dropped (-ECANCELED, the old rules stay).
 * Once the new rules are being put in force that finishes; it holds the
 * module's lock for O(streams × rules) rule matches, never for the parse. */
int gw_alerts_reload_cancel(gw_alerts_t *a, const char *path, const atomic_int *cancel, char *err,
                            size_t errlen);

/* Evaluate every rule matching (run, tag) on point p; now_ns is the
 * monotonic clock (gw_mono_ns(), CLOCK_MONOTONIC), the same one
 * gw_alerts_tick gets. Also marks the stream alive for stalled rules.
 * Returns 0 or GW_ENOMEM / GW_EINVAL (the point is then not evaluated).
 * States are only created for streams that match a rule, at most
 * max_states in all (the rest are counted). */
int gw_alerts_observe(gw_alerts_t *a, const char *run, const char *tag, const gw_point_t *p,
                      int64_t now_ns);

/* Once a second: stalled rules fire for streams silent for their
 * `seconds`; streams silent for forget_after are forgotten (their alerts
 * resolve). Returns 0. */
int gw_alerts_tick(gw_alerts_t *a, int64_t now_ns);

/* The stream was retired: drop its evaluation state. A pending alert of it
 * is dropped; a firing one resolves with the annotation reason = "stream
 * retired" (persisted and notified). 0, or GW_ENOTFOUND. */
int gw_alerts_forget(gw_alerts_t *a, const char *run, const char *tag);

/* The alerts as a sink (sink.h), arg = a: point → gw_alerts_observe at
 * gw_mono_ns(); restart → the stream's baselines start afresh (a new
 * incarnation is a new regime) and pending counts end, while firing alerts
 * keep their baseline and resolve by hysteresis; forget →
 * gw_alerts_forget. */
void gw_alerts_sink(gw_alerts_t *a, gw_sink_t *out);

/* gw_metrics_extra_fn (arg = the gw_alerts_t): writes gradwatch_alerts_firing,
 * the per-alert gauge gradwatch_alert{rule,run,tag,severity} 1 for every
 * firing alert and the transition and notification counters. Any thread. */
int gw_alerts_metrics(void *arg, gw_metrics_writer_t *w);

/* Alerts firing now. Any thread. */
size_t gw_alerts_firing_count(gw_alerts_t *a);

/* Counters, a snapshot. Any thread. */
typedef struct gw_alerts_counters_s {
  size_t rules;           /* rules in force */
  size_t streams;         /* streams tracked */
  size_t states;          /* (rule, stream) states */
  uint64_t states_capped; /* states not created: max_states reached */
  uint64_t fired, resolved;
  uint64_t webhook_sent, webhook_failed, webhook_dropped;
} gw_alerts_counters_t;
void gw_alerts_counters(gw_alerts_t *a, gw_alerts_counters_t *out);

/* The JSON object of an alert, as /api/v1/alerts lists it, SSE publishes
 * it (with "step" added) and the store's record holds it:
 *   {"id","rule","run","tag","severity","state":"pending|firing|resolved",
 *    "value","threshold","started_step","started_at","fired_at",
 *    "resolved_at","labels":{…},"annotations":{…}}
 * times in Unix seconds; absent values null. The caller frees the text;
 * NULL when out of memory. */
char *gw_alerts_json(const gw_store_alert_t *a);

#endif
