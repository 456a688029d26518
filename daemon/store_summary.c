/* store_summary.c — the per-tag regime summary of a run (store_summary.h).
 *
 * Data flow: gw_store_streams names the run's tags → for each tag one
 * gw_store_series of the columns below over every visible point → the
 * quantiles from sorted copies, the final values from a backward scan →
 * the run's fired alerts counted per tag from gw_store_alerts. Only the
 * store's public read API is used, so this file holds no SQL and no lock.
 */
#include "store_summary.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gw_error.h"

/* The columns asked of gw_store_series, and their index in the answer. */
enum {
  C_K1, C_KE, C_KL,       /* kappa_onestep, kappa_ema, kappa_linear */
  C_C1, C_CE, C_CL,       /* their _cum */
  C_BEST, C_R90, C_R99, C_SR, C_R90R, C_R99R,
  C_COUNT
};

static int column_ids(int ids[C_COUNT]) {
  static const char *const names[C_COUNT] = {
      "kappa_onestep", "kappa_ema",  "kappa_linear", "kappa_onestep_cum",
      "kappa_ema_cum", "kappa_linear_cum", "kappa_best", "rank_90",
      "rank_99",       "stable_rank", "rank_90_run", "rank_99_run"};
  for (int i = 0; i < C_COUNT; i++)
    if ((ids[i] = gw_metric_lookup(names[i], strlen(names[i]))) < 0) return GW_EINVAL;
  return 0;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

size_t gw_summary_sort(double *x, size_t n) {
  size_t m = 0;
  for (size_t i = 0; i < n; i++)
    if (!isnan(x[i])) x[m++] = x[i];
  qsort(x, m, sizeof *x, cmp_double);
  return m;
}

double gw_summary_quantile(const double *sorted, size_t n, double p) {
  if (n == 0 || !(p >= 0.0 && p <= 1.0)) return NAN;
  double h = (double)(n - 1) * p, fl = floor(h);
  size_t lo = (size_t)fl;
  if (lo + 1 >= n) return sorted[n - 1];
  return sorted[lo] + (h - fl) * (sorted[lo + 1] - sorted[lo]);
}

static double final_value(const double *v, size_t n) {
  for (size_t i = n; i-- > 0;)
    if (!isnan(v[i])) return v[i];
  return NAN;
}

/* Quantiles of v[0..n) through the scratch buffer tmp (n doubles). */
static gw_quantiles_t quantiles(const double *v, size_t n, double *tmp) {
  gw_quantiles_t q = {NAN, NAN, NAN};
  if (n == 0) return q; /* no points: tmp may be NULL */
  memcpy(tmp, v, n * sizeof *v);
  size_t m = gw_summary_sort(tmp, n);
  q.p5 = gw_summary_quantile(tmp, m, 0.05);
  q.median = gw_summary_quantile(tmp, m, 0.5);
  q.p95 = gw_summary_quantile(tmp, m, 0.95);
  return q;
}

static double median(const double *v, size_t n, double *tmp) { return quantiles(v, n, tmp).median; }

/* Fill row from the series s of its tag. tmp: s->n doubles of scratch. */
static void summarize(gw_store_summary_t *row, const gw_series_t *s, double *tmp) {
  row->steps = s->n;
  row->first_step = s->n ? s->step[0] : 0;
  row->last_step = s->n ? s->step[s->n - 1] : 0;
  for (int p = 0; p < GW_SUMMARY_PREDICTORS; p++) {
    row->kappa[p] = quantiles(s->cols[C_K1 + p], s->n, tmp);
    row->kappa_cum[p] = final_value(s->cols[C_C1 + p], s->n);
  }
  row->kappa_best = final_value(s->cols[C_BEST], s->n);
  row->rank_90_median = median(s->cols[C_R90], s->n, tmp);
  row->rank_99_median = median(s->cols[C_R99], s->n, tmp);
  row->stable_rank_median = median(s->cols[C_SR], s->n, tmp);
  row->rank_90_run = final_value(s->cols[C_R90R], s->n);
  row->rank_99_run = final_value(s->cols[C_R99R], s->n);
}

void gw_store_summary_free(gw_store_summary_t *rows, size_t n) {
  for (size_t i = 0; rows && i < n; i++) free(rows[i].tag);
  free(rows);
}

int gw_store_summary(gw_store_t *st, const char *run, gw_store_summary_t **out, size_t *n) {
  gw_store_stream_t *ss = NULL;
  gw_store_alert_t *as = NULL;
  gw_store_summary_t *rows = NULL;
  size_t ns = 0, na = 0;
  int ids[C_COUNT], rc;

  if (out) *out = NULL;
  if (n) *n = 0;
  if (!st || !run || !out || !n) return GW_EINVAL;
  if ((rc = column_ids(ids)) != 0) return rc;
  if ((rc = gw_store_streams(st, run, &ss, &ns)) != 0) return rc;
  if (ns && !(rows = calloc(ns, sizeof *rows))) {
    rc = GW_ENOMEM;
    goto done;
  }
  for (size_t i = 0; i < ns; i++) {
    gw_series_t s = {0};
    double *tmp = NULL;
    if (!(rows[i].tag = strdup(ss[i].tag))) {
      rc = GW_ENOMEM;
      goto done;
    }
    rc = gw_store_series(st, run, ss[i].tag, ids, C_COUNT, 0, UINT64_MAX, 0, &s, 0);
    if (rc == 0 && s.n && !(tmp = malloc(s.n * sizeof *tmp))) rc = GW_ENOMEM;
    if (rc == 0) summarize(&rows[i], &s, tmp);
    free(tmp);
    gw_store_series_free(&s);
    if (rc != 0) goto done;
  }
  if ((rc = gw_store_alerts(st, GW_ALERT_ANY, 0, &as, &na)) != 0) goto done;
  for (size_t a = 0; a < na; a++) {
    if (!as[a].fired_ns || !as[a].run || !as[a].tag || strcmp(as[a].run, run) != 0) continue;
    for (size_t i = 0; i < ns; i++)
      if (strcmp(rows[i].tag, as[a].tag) == 0) rows[i].alerts_fired++;
  }
  *out = rows;
  *n = ns;
  rows = NULL;
done:
  gw_store_summary_free(rows, ns);
  gw_store_alerts_free(as, na);
  gw_store_streams_free(ss, ns);
  return rc;
}
