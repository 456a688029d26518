/* alert_notify.h — how an alert transition leaves the alerts module: its
 * labels and annotations (templated from the rule), the alert JSON object,
 * the SSE event and the webhook notifications. Internal to the alerts
 * library; alerts.c is its one caller (and http.c, through gw_alerts_json
 * in alerts.h, for the same JSON object).
 *
 * A gw_alert_notify_t owns the webhooks in force, and the Alertmanager
 * pusher when one is configured (started once, kept across reloads). They are started from a
 * rule set, replaced at reload (a webhook whose URL and settings did not
 * change is kept, with its queue), and drained at free. Its mutex guards
 * the webhook list and the receiver settings; it is taken after the alerts'
 * own locks and before a webhook's.
 */
#ifndef GW_ALERT_NOTIFY_H
#define GW_ALERT_NOTIFY_H

#include <stddef.h>
#include <stdint.h>

#include "alert_rules.h"
#include "alertmanager.h"
#include "log.h"
#include "metrics.h"
#include "store.h"
#include "webhook.h"

struct gw_live_s;

/* What tripped a firing alert: the kind's verdict and where. */
typedef struct gw_alert_trip_s {
  double value, observed, baseline; /* NAN where the kind has none */
  uint64_t step, started_step;
} gw_alert_trip_t;

/* Labels {alertname, run, tag, severity} and annotations {summary,
 * description, kind, [metric], value, [observed], [baseline], step} of a
 * firing alert of rule r on (run, tag), as JSON text, the caller's to free.
 * summary and description are r's templates with {placeholders} filled
 * ({rule} {run} {tag} {metric} {value} {observed} {baseline} {threshold}
 * {op} {step} {started_step} {window} {for_steps} {seconds} {severity}
 * {kind}; unknown ones stay as written). 0 or GW_ENOMEM (both NULL). */
int gw_alert_notify_describe(const gw_alert_rule_t *r, const char *run, const char *tag,
                             const gw_alert_trip_t *t, char **labels, char **annotations);

/* Set key to value in the JSON object text *annotations (replaced by a new
 * text; NULL or unparsable text starts an empty object). 0 or GW_ENOMEM
 * (*annotations unchanged). */
int gw_alert_notify_annotate(char **annotations, const char *key, const char *value);

typedef struct gw_alert_notify_s gw_alert_notify_t;

/* Start the webhooks of rs. live and log may be NULL (borrowed). 0, or
 * GW_ECONFIG / GW_ENOMEM / a webhook's code with err naming the URL. */
int gw_alert_notify_new(gw_alert_notify_t **out, const gw_alert_rules_t *rs,
                        struct gw_live_s *live, gw_log_t *log, char *err, size_t errlen);

/* Put the webhooks and receiver settings of rs in force. On failure the
 * old ones stay, and err says why. */
int gw_alert_notify_reload(gw_alert_notify_t *n, const gw_alert_rules_t *rs, char *err,
                           size_t errlen);

/* A transition: publish rec (with "step") on SSE, then queue it to every
 * webhook. metric: the rule's metric for the generatorURL, or -1. */
void gw_alert_notify_emit(gw_alert_notify_t *n, const gw_store_alert_t *rec, uint64_t step,
                          int metric);

/* Also push alerts to Alertmanager (alertmanager.h), from now on: every
 * firing and resolved transition, re-sent while firing; generatorURL opens
 * the dashboard at the run (<external_url>/#/run/<run>). Once, before any
 * transition. 0, GW_EINVAL (already started, or a bad cfg) or the
 * starter's code. */
int gw_alert_notify_alertmanager(gw_alert_notify_t *n, const gw_alertmanager_config_t *cfg);

/* A firing alert restored from the store at start: Alertmanager only (the
 * webhooks were told when it fired), so it is re-sent while it fires. */
void gw_alert_notify_restored(gw_alert_notify_t *n, const gw_store_alert_t *rec);

/* The Alertmanager families for /metrics (nothing without Alertmanager):
 * gradwatch_alertmanager_posts_total{result}, _queue_depth, _alerts. */
int gw_alert_notify_metrics(gw_alert_notify_t *n, gw_metrics_writer_t *w);

/* Webhooks (and Alertmanager) only (an alert closed at start-up, never on SSE). */
void gw_alert_notify_send(gw_alert_notify_t *n, const gw_store_alert_t *rec, int metric);

/* Counters of every webhook, those replaced at reload included. Any thread. */
void gw_alert_notify_stats(gw_alert_notify_t *n, gw_webhook_stats_t *out);

size_t gw_alert_notify_webhooks(gw_alert_notify_t *n); /* in force */

/* Give the webhooks up to drain_ms in all, stop and free them. NULL ok. */
void gw_alert_notify_free(gw_alert_notify_t *n, uint32_t drain_ms);

#endif
