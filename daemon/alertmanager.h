/* alertmanager.h — alerts pushed to Alertmanager's v2 API
 * (POST <url>/api/v2/alerts, a JSON array of alerts), the way Prometheus
 * pushes its own.
 *
 * A gw_alertmanager_t keeps the alerts firing now (by label fingerprint)
 * and one delivery queue per Alertmanager URL (a gw_webhook_t: bounded,
 * its own worker thread, retries with doubling backoff, counted). Several
 * URLs are one Alertmanager cluster: every alert goes to each of them, and
 * the cluster deduplicates.
 *
 * States of an alert here: absent → firing (gw_alertmanager_push with
 * ends_ns 0: kept, sent at once) → resolved (push with ends_ns set:
 * dropped, sent once more with endsAt = ends_ns). While firing, a resender
 * thread sends every firing alert again each resend_ms, with endsAt
 * = now + 4 × resend_ms, so Alertmanager neither resolves an alert between
 * two resends nor keeps one forever when the daemon dies (it resolves by
 * itself after endsAt, as for a Prometheus that stopped).
 *
 * Data flow: the alerts module (ingest or loop thread) → push: builds the
 * JSON and copies it into each URL's queue; O(size of the alert), no I/O.
 * The resender and the queues' workers do the network. Locking: `mu`
 * guards the table; it is taken before a queue's own mutex.
 */
#ifndef GW_ALERTMANAGER_H
#define GW_ALERTMANAGER_H

#include <stddef.h>
#include <stdint.h>

#include "log.h"
#include "webhook.h"

#define GW_ALERTMANAGER_URLS_MAX 16

typedef struct gw_alertmanager_config_s {
  const char *const *urls; /* base URLs (http:// or https://), copied */
  size_t n_urls;           /* 1..GW_ALERTMANAGER_URLS_MAX */
  uint32_t resend_ms;      /* resend interval while firing, >= 1 (default 60000) */
  gw_webhook_config_t delivery; /* timeouts, retries, backoff, queue; its url is ignored */
  const char *runbook_url; /* NULL/"": none; else every alert gets the annotation
                              runbook_url = "<runbook_url>#runbook-<alertname>" (copied) */
  gw_log_t *log;           /* NULL: silent (borrowed) */
} gw_alertmanager_config_t;

/* Defaults: no URL, resend 60 s, webhook.h's delivery defaults. */
void gw_alertmanager_config_default(gw_alertmanager_config_t *cfg);

/* The endpoint alerts are POSTed to for a base URL: "<url>/api/v2/alerts"
 * (one slash between; a URL already ending in /api/v2/alerts is kept).
 * The caller frees it; NULL when out of memory. */
char *gw_alertmanager_endpoint(const char *url);

/* One alert. labels and annotations: name/value pairs ending with NULL;
 * labels must hold alertname. */
typedef struct gw_alertmanager_alert_s {
  const char *const *labels;
  const char *const *annotations; /* may be NULL */
  int64_t starts_ns;              /* Unix ns */
  int64_t ends_ns;                /* Unix ns; 0 = firing */
  const char *generator_url;      /* NULL or "": left out */
} gw_alertmanager_alert_t;

/* The v2 body for n alerts:
 *   [{"labels":{…},"annotations":{…},"startsAt","endsAt","generatorURL"},…]
 * times RFC 3339 UTC with nanoseconds; a firing alert's endsAt is
 * firing_ends_ns; runbook_url as in the config. The caller frees the text; NULL when out of memory or an
 * alert has no alertname. */
char *gw_alertmanager_payload(const gw_alertmanager_alert_t *const *alerts, size_t n,
                              int64_t firing_ends_ns, const char *runbook_url);

typedef struct gw_alertmanager_s gw_alertmanager_t;

/* Start the queues and the resender. GW_EINVAL (no URL, too many, a URL
 * not http(s), resend_ms 0), GW_ENOMEM, GW_EIO or -errno; *out NULL then. */
int gw_alertmanager_new(gw_alertmanager_t **out, const gw_alertmanager_config_t *cfg);

/* A transition (see the states above). 0, GW_EINVAL (no alertname) or
 * GW_ENOMEM (nothing sent, the table unchanged). Any thread. */
int gw_alertmanager_push(gw_alertmanager_t *am, const gw_alertmanager_alert_t *a);

/* Alerts firing now (in the resend table). Any thread. */
size_t gw_alertmanager_firing(gw_alertmanager_t *am);

/* Counters summed over the URLs (one POST to one URL counts once). */
void gw_alertmanager_stats(gw_alertmanager_t *am, gw_webhook_stats_t *out);

/* Stop the resender, give the queues up to drain_ms in all, free. The
 * firing alerts are not resolved: Alertmanager keeps them until their
 * endsAt, and a restarted daemon sends them again. NULL ok. */
void gw_alertmanager_free(gw_alertmanager_t *am, uint32_t drain_ms);

#endif
