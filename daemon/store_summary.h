/* store_summary.h — the regime summary of a run: per tag, one row of the
 * quantities that say how predictable the run was (docs/CONTRACT.md §6,
 * GET /api/v1/runs/{run}/summary and GET /api/v1/summary?runs=…).
 *
 * Computed on the reader side from the store's public read API (streams,
 * series, alerts), on the caller's thread, nothing cached: one pass of
 * gw_store_series per tag over the visible points (the same points
 * /api/v1/series returns without incarnations=all), then sorting copies of
 * the columns for the quantiles. Cost O(points log points) per call.
 *
 * Definitions. Quantiles skip absent (null) values and interpolate linearly
 * between order statistics: for sorted x[0..n-1] and p in [0,1], h = (n-1)p,
 * q = x[⌊h⌋] + (h-⌊h⌋)(x[⌊h⌋+1] - x[⌊h⌋]) (numpy's default "linear"); NAN
 * when no value is present. A "final" value is the last present value in
 * step order. alerts_fired counts the stored alerts of (run, tag) that have
 * fired (fired_ns set), resolved ones included.
 */
#ifndef GW_STORE_SUMMARY_H
#define GW_STORE_SUMMARY_H

#include <stddef.h>
#include <stdint.h>

#include "store.h"

/* The predictors, in this order everywhere below. */
enum { GW_SUMMARY_ONESTEP = 0, GW_SUMMARY_EMA, GW_SUMMARY_LINEAR, GW_SUMMARY_PREDICTORS };

typedef struct gw_quantiles_s {
  double p5, median, p95; /* NAN when no value */
} gw_quantiles_t;

typedef struct gw_store_summary_s {
  char *tag;                                  /* owned */
  uint64_t steps;                             /* visible points */
  uint64_t first_step, last_step;             /* 0 when none */
  gw_quantiles_t kappa[GW_SUMMARY_PREDICTORS]; /* kappa_onestep, kappa_ema, kappa_linear */
  double kappa_cum[GW_SUMMARY_PREDICTORS];    /* final kappa_*_cum */
  double kappa_best;                          /* final */
  double rank_90_median, rank_99_median, stable_rank_median;
  double rank_90_run, rank_99_run;            /* final */
  uint64_t alerts_fired;
} gw_store_summary_t;

/* One row per tag of run (tags in the store's order). 0 with *out (the
 * caller's: gw_store_summary_free) and *n, GW_ENOTFOUND for a run never
 * stored, GW_EINVAL for bad arguments, or the store's error; *out is NULL
 * and *n 0 on failure. */
int gw_store_summary(gw_store_t *st, const char *run, gw_store_summary_t **out, size_t *n);
void gw_store_summary_free(gw_store_summary_t *rows, size_t n);

/* Move the values of x[0..n) that are not NAN to its front, sorted
 * ascending; returns how many there are. */
size_t gw_summary_sort(double *x, size_t n);

/* The p-quantile (0 <= p <= 1) of sorted[0..n) (no NAN), by the rule above;
 * NAN when n is 0. */
double gw_summary_quantile(const double *sorted, size_t n, double p);

#endif
