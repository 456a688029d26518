/* runinfo.c — the gradwatch_run_info family (runinfo.h).
 *
 * The table is an array of rows sorted by run name (binary search on
 * observe, already in render order); a row is one allocation: the run name
 * and one NUL-terminated value per configured key. Metadata messages are
 * rare (a publisher's start, a daemon's subscription, a resend every 30 s),
 * so an insert's memmove is of no concern.
 */
#include "runinfo.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "gw_error.h"
#include "runmeta.h"

typedef struct row_s {
  char *run;
  char *val[GW_RUNINFO_KEYS_MAX]; /* point into the same allocation */
} row_t;

struct gw_runinfo_s {
  pthread_mutex_t mu; /* rows, n, cap */
  size_t n_keys;
  char *key[GW_RUNINFO_KEYS_MAX];   /* as the operator wrote them */
  char *label[GW_RUNINFO_KEYS_MAX]; /* Prometheus label names */
  row_t **rows;
  size_t n, cap;
};

/* The Prometheus label name of a key (the caller's to free). */
static char *label_name(const char *key) {
  size_t n = strlen(key);
  char *s = malloc(n + 8);
  size_t k = 0;
  if (!s) return NULL;
  if (key[0] >= '0' && key[0] <= '9') s[k++] = '_';
  for (size_t i = 0; i < n; i++) {
    char c = key[i];
    int ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
    s[k++] = ok ? c : '_';
  }
  s[k] = '\0';
  if (strcmp(s, "run") == 0 || strncmp(s, "__", 2) == 0) {
    memmove(s + 6, s, k + 1);
    memcpy(s, "label_", 6);
  }
  return s;
}

static int key_ok(const char *k) {
  static const char cfg[] = "config.";
  if (strncmp(k, cfg, sizeof cfg - 1) == 0) k += sizeof cfg - 1;
  return gw_runmeta_key_ok(k, strlen(k));
}

int gw_runinfo_new(gw_runinfo_t **out, const char *keys, char *err, size_t errlen) {
  gw_runinfo_t *ri;
  int rc = GW_ENOMEM;
  *out = NULL;
  if (!keys || !*keys) {
    snprintf(err, errlen, "metrics-labels: empty list");
    return GW_ECONFIG;
  }
  if (!(ri = calloc(1, sizeof *ri))) return GW_ENOMEM;
  if (pthread_mutex_init(&ri->mu, NULL) != 0) {
    free(ri);
    return GW_ENOMEM;
  }
  for (const char *p = keys;;) {
    const char *e = strchr(p, ',');
    size_t len = e ? (size_t)(e - p) : strlen(p);
    char *k = NULL;
    if (ri->n_keys == GW_RUNINFO_KEYS_MAX) {
      snprintf(err, errlen, "metrics-labels: more than %d keys", GW_RUNINFO_KEYS_MAX);
      rc = GW_ECONFIG;
      goto fail;
    }
    if (!(k = strndup(p, len))) goto fail;
    if (!key_ok(k)) {
      snprintf(err, errlen, "metrics-labels: bad key '%.64s' (a label key, or config.NAME, "
               "of [A-Za-z0-9._-])", k);
      free(k);
      rc = GW_ECONFIG;
      goto fail;
    }
    ri->key[ri->n_keys] = k;
    if (!(ri->label[ri->n_keys] = label_name(k))) {
      ri->n_keys++;
      goto fail;
    }
    for (size_t i = 0; i < ri->n_keys; i++)
      if (strcmp(ri->label[i], ri->label[ri->n_keys]) == 0) {
        snprintf(err, errlen, "metrics-labels: keys '%.64s' and '%.64s' give one label name '%.64s'",
                 ri->key[i], k, ri->label[i]);
        ri->n_keys++;
        rc = GW_ECONFIG;
        goto fail;
      }
    ri->n_keys++;
    if (!e) break;
    p = e + 1;
  }
  *out = ri;
  return 0;
fail:
  gw_runinfo_free(ri);
  return rc;
}

void gw_runinfo_free(gw_runinfo_t *ri) {
  if (!ri) return;
  for (size_t i = 0; i < ri->n; i++) free(ri->rows[i]);
  free(ri->rows);
  for (size_t i = 0; i < ri->n_keys; i++) {
    free(ri->key[i]);
    free(ri->label[i]);
  }
  pthread_mutex_destroy(&ri->mu);
  free(ri);
}

/* Index of run, or of where it would go (*found 0). */
static size_t find(const gw_runinfo_t *ri, const char *run, int *found) {
  size_t lo = 0, hi = ri->n;
  *found = 0;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    int c = strcmp(ri->rows[mid]->run, run);
    if (c == 0) {
      *found = 1;
      return mid;
    }
    if (c < 0) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

int gw_runinfo_observe(gw_runinfo_t *ri, const char *run, const char *doc) {
  char vals[GW_RUNINFO_KEYS_MAX][GW_RUNINFO_VALUE_MAX + 1];
  size_t total = sizeof(row_t) + strlen(run) + 1;
  cJSON *meta = cJSON_Parse(doc);
  int rc = 0, found;
  if (!meta) return GW_EMETA;
  for (size_t i = 0; i < ri->n_keys; i++) {
    gw_runmeta_export_value(meta, ri->key[i], vals[i], sizeof vals[i]);
    total += strlen(vals[i]) + 1;
  }
  cJSON_Delete(meta);
  row_t *r = malloc(total);
  if (!r) return GW_ENOMEM;
  char *p = (char *)(r + 1);
  r->run = p;
  p = stpcpy(p, run) + 1;
  for (size_t i = 0; i < ri->n_keys; i++) {
    r->val[i] = p;
    p = stpcpy(p, vals[i]) + 1;
  }
  pthread_mutex_lock(&ri->mu);
  size_t at = find(ri, run, &found);
  if (found) {
    free(ri->rows[at]);
    ri->rows[at] = r;
    r = NULL;
  } else if (ri->n >= GW_RUNINFO_RUNS_MAX) {
    rc = GW_EFULL;
  } else {
    if (ri->n == ri->cap) {
      size_t cap = ri->cap ? 2 * ri->cap : 64;
      row_t **rows = realloc(ri->rows, cap * sizeof *rows);
      if (!rows) {
        rc = GW_ENOMEM;
        goto out;
      }
      ri->rows = rows;
      ri->cap = cap;
    }
    memmove(ri->rows + at + 1, ri->rows + at, (ri->n - at) * sizeof *ri->rows);
    ri->rows[at] = r;
    ri->n++;
    r = NULL;
  }
out:
  pthread_mutex_unlock(&ri->mu);
  free(r);
  return rc;
}

size_t gw_runinfo_count(gw_runinfo_t *ri) {
  pthread_mutex_lock(&ri->mu);
  size_t n = ri->n;
  pthread_mutex_unlock(&ri->mu);
  return n;
}

int gw_runinfo_render(gw_runinfo_t *ri, gw_metrics_writer_t *w) {
  const char *labels[2 * (GW_RUNINFO_KEYS_MAX + 1) + 1];
  int rc;
  pthread_mutex_lock(&ri->mu);
  rc = gw_metrics_family(w, "gradwatch_run_info", "gauge",
                         "Run metadata (--metrics-labels keys) as labels; always 1");
  for (size_t i = 0; rc == 0 && i < ri->n; i++) {
    size_t k = 0;
    labels[k++] = "run";
    labels[k++] = ri->rows[i]->run;
    for (size_t j = 0; j < ri->n_keys; j++) {
      labels[k++] = ri->label[j];
      labels[k++] = ri->rows[i]->val[j];
    }
    labels[k] = NULL;
    rc = gw_metrics_sample(w, "gradwatch_run_info", labels, 1.0);
  }
  pthread_mutex_unlock(&ri->mu);
  return rc;
}

static void sink_meta(void *arg, const gw_run_meta_t *m) {
  (void)gw_runinfo_observe(arg, m->run, m->doc); /* a failure leaves the run unexported */
}

void gw_runinfo_sink(gw_runinfo_t *ri, gw_sink_t *out) {
  memset(out, 0, sizeof *out);
  out->name = "runinfo";
  out->arg = ri;
  out->meta = sink_meta;
}
