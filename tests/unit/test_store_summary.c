/* test_store_summary.c — the regime summary (daemon/store_summary.c) over a
 * real store on a temp file, filled through gw_store_put_* + flush, against
 * closed-form values worked out by hand below; the quantile rule against
 * hand-sorted cases; the runs= list of /api/v1/summary (http_summary.c). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "gw_error.h"
#include "http_summary.h"
#include "store_summary.h"

static void near(double a, double b, int line) {
  if (!(fabs(a - b) <= 1e-12 * (1.0 + fabs(b)))) fail_msg("line %d: %.17g != %.17g", line, a, b);
}
#define NEAR(a, b) near((a), (double)(b), __LINE__)

/* r/all at step s = 1..100: kappa_onestep s/8 with a spike at 37, kappa_ema
 * 1/s, kappa_linear null on odd steps else 2s, rank_90 s % 7, rank_99 12,
 * stable_rank s, kappa_onestep_cum 0.3, kappa_ema_cum null, kappa_linear_cum
 * s/1000 except the last step (null), rank_90_run s/10. */
static gw_point_t point(uint32_t id, uint64_t s) {
  gw_point_t p;
  memset(&p, 0, sizeof p);
  p.stream_id = id;
  p.n = s;
  p.step = s;
  p.wall_ns = p.recv_ns = 1700000000000000000LL + (int64_t)s * 1000000000LL;
  p.kappa_onestep = (double)s / 8.0 + (s == 37 ? 100.0 : 0.0);
  p.kappa_ema = 1.0 / (double)s;
  p.kappa_linear = (s % 2) ? NAN : 2.0 * (double)s;
  p.kappa_onestep_cum = 0.1 + 0.2;
  p.kappa_ema_cum = NAN;
  p.kappa_linear_cum = s == 100 ? NAN : (double)s / 1000.0;
  p.kappa_best = 0.5;
  p.rank_90 = (uint32_t)(s % 7);
  p.rank_99 = 12;
  p.rank_90_run = (uint32_t)(s / 10);
  p.rank_99_run = 20;
  p.stable_rank = (double)s;
  p.loss = p.lr = p.grad_norm = NAN;
  return p;
}

typedef struct {
  char dir[64], path[96];
  gw_stats_t stats;
  gw_store_t *store;
} fx_t;

static void open_s(gw_store_t *st, uint32_t sid, const char *run, const char *tag, uint64_t step) {
  gw_stream_ref_t ref = {sid, run, tag, 16, 1, 4, 7, 1};
  gw_open_t o = {GW_OPEN_NEW, step, 0};
  assert_int_equal(gw_store_open_stream(st, sid, &ref, &o), 0);
}

static int setup(void **state) {
  fx_t *f = calloc(1, sizeof *f);
  assert_non_null(f);
  snprintf(f->dir, sizeof f->dir, "/tmp/gw_test_summary_XXXXXX");
  assert_non_null(mkdtemp(f->dir));
  snprintf(f->path, sizeof f->path, "%s/gw.db", f->dir);
  gw_store_config_t sc;
  gw_store_config_default(&sc);
  sc.path = f->path;
  assert_int_equal(gw_store_open(&f->store, &sc, &f->stats), 0);
  open_s(f->store, 0, "r", "all", 1);
  open_s(f->store, 1, "r", "idle", 0); /* no points */
  open_s(f->store, 2, "other", "all", 1);
  for (uint64_t s = 1; s <= 100; s++) {
    gw_point_t p = point(0, s);
    assert_int_equal(gw_store_put_point(f->store, &p), 0);
  }
  gw_point_t q = point(2, 1);
  assert_int_equal(gw_store_put_point(f->store, &q), 0);
  /* Two fired alerts on r/all (one resolved), one pending (never fired), one
   * fired on another run, one fired on r without a tag: only the first two count. */
  gw_store_alert_t a = {.rule = "k", .run = "r", .tag = "all", .state = GW_ALERT_FIRING,
                        .value = 1, .threshold = NAN, .started_ns = 1, .fired_ns = 2};
  assert_int_equal(gw_store_put_alert(f->store, &a, NULL), 0);
  a.state = GW_ALERT_RESOLVED;
  a.resolved_ns = 3;
  assert_int_equal(gw_store_put_alert(f->store, &a, NULL), 0);
  gw_store_alert_t pending = a;
  pending.state = GW_ALERT_PENDING;
  pending.fired_ns = pending.resolved_ns = 0;
  assert_int_equal(gw_store_put_alert(f->store, &pending, NULL), 0);
  gw_store_alert_t other = a;
  other.run = "other";
  assert_int_equal(gw_store_put_alert(f->store, &other, NULL), 0);
  gw_store_alert_t untagged = a;
  untagged.tag = NULL;
  assert_int_equal(gw_store_put_alert(f->store, &untagged, NULL), 0);
  assert_int_equal(gw_store_flush(f->store), 0);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fx_t *f = *state;
  gw_store_close(f->store);
  char cmd[160];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->dir);
  assert_int_equal(system(cmd), 0);
  free(f);
  return 0;
}

/* numpy.quantile(x, p) (method "linear") of hand-sorted data. */
static void quantile_rule(void **state) {
  (void)state;
  double x[] = {NAN, 3, 1, NAN, 2, 10};
  size_t m = gw_summary_sort(x, 6);
  assert_int_equal(m, 4);
  assert_true(x[0] == 1 && x[1] == 2 && x[2] == 3 && x[3] == 10);
  NEAR(gw_summary_quantile(x, m, 0.5), 2.5);   /* numpy: 2.5 */
  NEAR(gw_summary_quantile(x, m, 0.05), 1.15); /* h = 0.15 */
  NEAR(gw_summary_quantile(x, m, 0.95), 8.95); /* h = 2.85: 3 + 0.85*7 */
  assert_true(gw_summary_quantile(x, m, 0.0) == 1 && gw_summary_quantile(x, m, 1.0) == 10);
  assert_true(gw_summary_quantile(x, 1, 0.95) == 1);
  assert_true(isnan(gw_summary_quantile(x, 0, 0.5)));
  assert_true(isnan(gw_summary_quantile(x, m, 1.5)));
  double all_nan[] = {NAN, NAN};
  assert_int_equal(gw_summary_sort(all_nan, 2), 0);
}

static void summary_values(void **state) {
  fx_t *f = *state;
  gw_store_summary_t *rows = NULL;
  size_t n = 0;
  assert_int_equal(gw_store_summary(f->store, "r", &rows, &n), 0);
  assert_int_equal(n, 2);
  const gw_store_summary_t *all = strcmp(rows[0].tag, "all") == 0 ? &rows[0] : &rows[1];
  const gw_store_summary_t *idle = all == &rows[0] ? &rows[1] : &rows[0];
  assert_string_equal(idle->tag, "idle");

  assert_int_equal(all->steps, 100);
  assert_int_equal(all->first_step, 1);
  assert_int_equal(all->last_step, 100);
  /* kappa_onestep sorted: s/8 for s = 1..36, 38..100, then 104.625.
   * p5: h = 4.95 → 5/8 + 0.95/8; median: h = 49.5 → (51 + 0.5)/8;
   * p95: h = 94.05 → 96/8 + 0.05/8. */
  NEAR(all->kappa[GW_SUMMARY_ONESTEP].p5, 5.95 / 8);
  NEAR(all->kappa[GW_SUMMARY_ONESTEP].median, 51.5 / 8);
  NEAR(all->kappa[GW_SUMMARY_ONESTEP].p95, 96.05 / 8);
  /* kappa_ema sorted: 1/100, 1/99, ..., 1/1 → x[i] = 1/(100-i). */
  NEAR(all->kappa[GW_SUMMARY_EMA].p5, 1.0 / 96 + 0.95 * (1.0 / 95 - 1.0 / 96));
  NEAR(all->kappa[GW_SUMMARY_EMA].median, 1.0 / 51 + 0.5 * (1.0 / 50 - 1.0 / 51));
  NEAR(all->kappa[GW_SUMMARY_EMA].p95, 1.0 / 6 + 0.05 * (1.0 / 5 - 1.0 / 6));
  /* kappa_linear: 2s for even s = 4, 8, ..., 200 (50 values; nulls skipped):
   * x[i] = 4(i+1); p5: h = 2.45 → 12 + 0.45*4; median: h = 24.5 → 100 + 2;
   * p95: h = 46.55 → 188 + 0.55*4. */
  NEAR(all->kappa[GW_SUMMARY_LINEAR].p5, 13.8);
  NEAR(all->kappa[GW_SUMMARY_LINEAR].median, 102);
  NEAR(all->kappa[GW_SUMMARY_LINEAR].p95, 190.2);
  NEAR(all->kappa_cum[GW_SUMMARY_ONESTEP], 0.1 + 0.2);
  assert_true(isnan(all->kappa_cum[GW_SUMMARY_EMA]));      /* never present */
  NEAR(all->kappa_cum[GW_SUMMARY_LINEAR], 99.0 / 1000.0); /* last present value */
  NEAR(all->kappa_best, 0.5);
  /* rank_90 = s % 7 over 1..100: 14 zeros, 15 ones, 15 twos, 14 threes, … → x[49] = x[50] = 3. */
  NEAR(all->rank_90_median, 3);
  NEAR(all->rank_99_median, 12);
  NEAR(all->stable_rank_median, 50.5);
  NEAR(all->rank_90_run, 10);
  NEAR(all->rank_99_run, 20);
  assert_int_equal(all->alerts_fired, 2);

  assert_int_equal(idle->steps, 0);
  assert_int_equal(idle->first_step, 0);
  assert_true(isnan(idle->kappa[GW_SUMMARY_ONESTEP].median) && isnan(idle->kappa_best));
  assert_true(isnan(idle->rank_90_median) && isnan(idle->rank_99_run));
  assert_int_equal(idle->alerts_fired, 0);
  gw_store_summary_free(rows, n);

  assert_int_equal(gw_store_summary(f->store, "nope", &rows, &n), GW_ENOTFOUND);
  assert_null(rows);
  assert_int_equal(n, 0);
  assert_int_equal(gw_store_summary(f->store, NULL, &rows, &n), GW_EINVAL);
  assert_int_equal(gw_store_summary(NULL, "r", &rows, &n), GW_EINVAL);
}

static void runs_list(void **state) {
  (void)state;
  char buf[GW_HTTP_SUMMARY_RUNS_MAX * 130], msg[160], big[GW_HTTP_SUMMARY_RUNS_MAX * 4 + 16];
  const char *names[GW_HTTP_SUMMARY_RUNS_MAX];
  size_t n = 99;
  assert_int_equal(gw_http_summary_runs("a,b.c,d-1", buf, sizeof buf, names, &n, msg, sizeof msg), 0);
  assert_int_equal(n, 3);
  assert_string_equal(names[0], "a");
  assert_string_equal(names[1], "b.c");
  assert_string_equal(names[2], "d-1");
  assert_int_equal(gw_http_summary_runs("solo", buf, sizeof buf, names, &n, msg, sizeof msg), 0);
  assert_int_equal(n, 1);
  struct {
    const char *v, *err;
  } bad[] = {{NULL, "missing parameter: runs"}, {"", "missing parameter: runs"},
             {"a,,b", "bad run name"},          {"a,", "bad run name"},
             {",a", "bad run name"},            {"a b", "bad run name: a b"},
             {"a,b,a", "duplicate run: a"},     {"x/y", "bad run name"}};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    msg[0] = '\0';
    assert_int_equal(gw_http_summary_runs(bad[i].v, buf, sizeof buf, names, &n, msg, sizeof msg),
                     GW_EINVAL);
    if (!strstr(msg, bad[i].err)) fail_msg("%s: \"%s\" lacks \"%s\"", bad[i].v, msg, bad[i].err);
  }
  /* 64 runs pass, 65 do not. */
  size_t k = 0;
  for (int i = 0; i < GW_HTTP_SUMMARY_RUNS_MAX + 1; i++)
    k += (size_t)snprintf(big + k, sizeof big - k, "%s%02d", i ? "," : "", i);
  assert_int_equal(gw_http_summary_runs(big, buf, sizeof buf, names, &n, msg, sizeof msg), GW_EINVAL);
  assert_non_null(strstr(msg, "at most 64"));
  big[k - 3] = '\0'; /* drop ",64" */
  assert_int_equal(gw_http_summary_runs(big, buf, sizeof buf, names, &n, msg, sizeof msg), 0);
  assert_int_equal(n, 64);
  /* A text longer than the buffer is refused, not cut. */
  assert_int_equal(gw_http_summary_runs("abcdef", buf, 4, names, &n, msg, sizeof msg), GW_EINVAL);
  assert_non_null(strstr(msg, "too long"));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(quantile_rule),
      cmocka_unit_test_setup_teardown(summary_values, setup, teardown),
      cmocka_unit_test(runs_list),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
