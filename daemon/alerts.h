/* alerts.h — rules evaluated on every point, alert states, notifications
 * (SPEC §7; docs/ALERTS.md is the operator's guide).
 *
 * Rules come from the daemon's INI file: `[alert NAME]` sections (kind
 * threshold | relative | stalled) and the `[alerts]` section (webhooks,
 * defaults, limits); the shipped default rules (GW_ALERTS_DEFAULT_RULES)
 * are loaded first and a user rule of the same name replaces one.
 *
 * Data flow: ingest → gw_alerts_observe (every point) and a 1 s libuv timer
 * → gw_alerts_tick; a state change is written to the store
 * (gw_store_put_alert), published on SSE (gw_live_publish_alert), counted
 * in gradwatch_alerts_firing (gw_metrics_set_alerts_firing) and queued to
 * every webhook (gw_webhook_send). Nothing here waits on disk or network.
 *
 * Threads: observe, tick, forget and counters may be called from any
 * thread and serialise on an internal mutex (ingest's workers observe, the
 * loop thread ticks); reload too, but from one thread at a time (SIGHUP on
 * the loop). gw_alerts_metrics and gw_alerts_firing_count may run on any
 * thread (HTTP) beside them. new and free: nothing else may run.
 */
#ifndef GW_ALERTS_H
#define GW_ALERTS_H

#include <stddef.h>
#include <stdint.h>

#include "point.h"
#include "metrics.h"

struct gw_store_s;
struct gw_live_s;
struct gw_metrics_s;

/* What the module writes to. All borrowed, each may be NULL, and each must
 * outlive the gw_alerts_t. */
typedef struct gw_alerts_deps_s {
  struct gw_store_s *store;     /* persistence + restore at start; NULL: ids are local */
  struct gw_live_s *live;       /* SSE */
  struct gw_metrics_s *metrics; /* gradwatch_alerts_firing */
  /* Log sink: level is gw_log_level_t (0 error … 3 debug), event a short
   * snake_case name, kv logfmt key=value pairs (quoted where needed). Called
   * from the loop thread; strings borrowed for the call. */
  void (*log)(void *arg, int level, const char *event, const char *kv);
  void *log_arg;
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

/* Evaluate every rule matching (run, tag) on point p; now_ns is a monotonic
 * clock (uv_hrtime()), the same one gw_alerts_tick gets. Also marks the
 * stream alive for stalled rules. Returns 0 or GW_ENOMEM / GW_EINVAL
 * (the point is then not evaluated). States are only created for streams
 * that match a rule, at most max_states in all (the rest are counted). */
int gw_alerts_observe(gw_alerts_t *a, const char *run, const char *tag, const gw_point_t *p,
                      int64_t now_ns);

/* Once a second: stalled rules fire for streams silent for their
 * `seconds`; streams silent for forget_after are forgotten (their alerts
 * resolve). Returns 0. */
int gw_alerts_tick(gw_alerts_t *a, int64_t now_ns);

/* The stream is gone (the engine dropped it): resolve its alerts and free
 * its states. 0, or GW_ENOTFOUND. */
int gw_alerts_forget(gw_alerts_t *a, const char *run, const char *tag);

/* gw_metrics_extra_fn (arg = the gw_alerts_t): writes the per-alert gauge
 * gradwatch_alert{rule,run,tag,severity} 1 for every firing alert and the
 * notification counters. Any thread. */
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

/* The shipped default rules, INI text (loaded unless [alerts] defaults = false). */
extern const char GW_ALERTS_DEFAULT_RULES[];

#endif
