/* test_metrics.c — Prometheus exposition: exact text for known points,
 * number formatting, label escaping, the tag glob, counters from gw_stats_t,
 * the extra-families callback, the sink (a retired stream's series go, the
 * retirement and restart counters count), and (when installed) `promtool
 * check metrics`. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "metrics.h"

static gw_point_t point(uint64_t step, double kappa1, double kappa_ema) {
  gw_point_t p;
  memset(&p, 0, sizeof p);
  p.step = step;
  p.kappa_onestep = kappa1;
  p.kappa_ema = kappa_ema;
  p.kappa_onestep_cum = NAN;
  p.kappa_ema_cum = NAN;
  p.stable_rank = NAN;
  p.grad_norm = NAN;
  p.loss = NAN;
  p.lr = NAN;
  p.kappa_linear = p.kappa_linear_cum = NAN;
  p.path_onestep_cum = p.path_ema_cum = p.path_linear_cum = NAN;
  p.kappa_best = p.best_predictor = p.tail_kappa_90 = NAN;
  return p;
}

static char *render(gw_metrics_t *m, gw_stats_t *st) {
  char *out = NULL;
  size_t len = 0;
  assert_int_equal(gw_metrics_render(m, st, NULL, NULL, &out, &len), 0);
  assert_non_null(out);
  assert_int_equal(len, strlen(out));
  return out;
}

/* Two streams, written out by hand: family order, sorting by (run, tag),
 * NaN samples omitted, integer and shortest-round-trip formatting. */
static void renders_exact_text(void **state) {
  (void)state;
  gw_metrics_t *m;
  assert_int_equal(gw_metrics_new(&m, NULL), 0);
  gw_point_t a = point(42, 0.5, 1.25);
  a.kappa_onestep_cum = 0.1 + 0.2; /* needs 17 digits */
  a.kappa_ema_cum = 1e-10;
  a.rank_90 = 3;
  a.rank_99 = 7;
  a.stable_rank = 2.5;
  a.grad_norm = 12345.5;
  a.loss = -0.25;
  gw_point_t b = point(7, NAN, INFINITY);
  b.rank_90 = 1;
  b.rank_99 = 2;
  assert_int_equal(gw_metrics_observe(m, "r1", "all", &a), 0);
  assert_int_equal(gw_metrics_observe(m, "r0", "layer1.weight", &b), 0);
  char *out = render(m, NULL);
  const char *want =
      "# HELP gradwatch_kappa Windowed predictability index kappa_W, by predictor.\n"
      "# TYPE gradwatch_kappa gauge\n"
      "gradwatch_kappa{run=\"r1\",tag=\"all\",predictor=\"onestep\"} 0.5\n"
      "gradwatch_kappa{run=\"r0\",tag=\"layer1.weight\",predictor=\"ema\"} +Inf\n"
      "gradwatch_kappa{run=\"r1\",tag=\"all\",predictor=\"ema\"} 1.25\n"
      "# HELP gradwatch_kappa_cum Cumulative predictability index since the stream began, by predictor.\n"
      "# TYPE gradwatch_kappa_cum gauge\n"
      "gradwatch_kappa_cum{run=\"r1\",tag=\"all\",predictor=\"onestep\"} 0.30000000000000004\n"
      "gradwatch_kappa_cum{run=\"r1\",tag=\"all\",predictor=\"ema\"} 1e-10\n"
      "# HELP gradwatch_rank Predictable rank r*(eps) of the window's increments, by energy percent.\n"
      "# TYPE gradwatch_rank gauge\n"
      "gradwatch_rank{run=\"r0\",tag=\"layer1.weight\",energy=\"90\"} 1\n"
      "gradwatch_rank{run=\"r1\",tag=\"all\",energy=\"90\"} 3\n"
      "gradwatch_rank{run=\"r0\",tag=\"layer1.weight\",energy=\"99\"} 2\n"
      "gradwatch_rank{run=\"r1\",tag=\"all\",energy=\"99\"} 7\n"
      "# HELP gradwatch_stable_rank Stable rank of the window's increment matrix.\n"
      "# TYPE gradwatch_stable_rank gauge\n"
      "gradwatch_stable_rank{run=\"r1\",tag=\"all\"} 2.5\n"
      "# HELP gradwatch_grad_norm Norm of the full gradient as sent by the client.\n"
      "# TYPE gradwatch_grad_norm gauge\n"
      "gradwatch_grad_norm{run=\"r1\",tag=\"all\"} 12345.5\n"
      "# HELP gradwatch_loss Training loss as sent by the client.\n"
      "# TYPE gradwatch_loss gauge\n"
      "gradwatch_loss{run=\"r1\",tag=\"all\"} -0.25\n"
      "# HELP gradwatch_last_step Step of the stream's latest point.\n"
      "# TYPE gradwatch_last_step gauge\n"
      "gradwatch_last_step{run=\"r0\",tag=\"layer1.weight\"} 7\n"
      "gradwatch_last_step{run=\"r1\",tag=\"all\"} 42\n"
      "# HELP gradwatch_last_seen_timestamp_seconds When the daemon received the stream's latest message (Unix seconds).\n"
      "# TYPE gradwatch_last_seen_timestamp_seconds gauge\n"
      "# HELP gradwatch_path_cum Cumulative prediction-based path length P since the stream began, by predictor.\n"
      "# TYPE gradwatch_path_cum gauge\n"
      "# HELP gradwatch_kappa_best Smallest windowed kappa of the three predictors; predictor names it.\n"
      "# TYPE gradwatch_kappa_best gauge\n"
      "# HELP gradwatch_tail_kappa Window increments' energy beyond rank r, on kappa's scale, by energy percent of r.\n"
      "# TYPE gradwatch_tail_kappa gauge\n"
      "# HELP gradwatch_rank_run Predictable rank of the whole run's increments (Frequent Directions), by energy percent.\n"
      "# TYPE gradwatch_rank_run gauge\n"
      "gradwatch_rank_run{run=\"r0\",tag=\"layer1.weight\",energy=\"90\"} 0\n"
      "gradwatch_rank_run{run=\"r1\",tag=\"all\",energy=\"90\"} 0\n"
      "gradwatch_rank_run{run=\"r0\",tag=\"layer1.weight\",energy=\"99\"} 0\n"
      "gradwatch_rank_run{run=\"r1\",tag=\"all\",energy=\"99\"} 0\n"
      "# HELP gradwatch_streams_retired_total Streams retired from memory after --stream-idle of silence.\n"
      "# TYPE gradwatch_streams_retired_total counter\n"
      "gradwatch_streams_retired_total 0\n"
      "# HELP gradwatch_stream_restarts_total Stream windows started afresh, by reason.\n"
      "# TYPE gradwatch_stream_restarts_total counter\n"
      "gradwatch_stream_restarts_total{reason=\"incarnation\"} 0\n"
      "gradwatch_stream_restarts_total{reason=\"resumed\"} 0\n"
      "gradwatch_stream_restarts_total{reason=\"config_changed\"} 0\n"
      "gradwatch_stream_restarts_total{reason=\"no_state\"} 0\n";
  assert_string_equal(out, want);
  free(out);

  /* A later point replaces the values; it does not add a series. */
  gw_point_t a2 = point(43, 0.75, 1.0);
  assert_int_equal(gw_metrics_observe(m, "r1", "all", &a2), 0);
  assert_int_equal(gw_metrics_stream_count(m), 2);
  out = render(m, NULL);
  assert_non_null(strstr(out, "gradwatch_kappa{run=\"r1\",tag=\"all\",predictor=\"onestep\"} 0.75\n"));
  assert_non_null(strstr(out, "gradwatch_last_step{run=\"r1\",tag=\"all\"} 43\n"));
  assert_null(strstr(out, " 0.5\n"));
  assert_null(strstr(out, "gradwatch_stable_rank{run=\"r1\"")); /* now NaN */
  free(out);
  gw_metrics_free(m);
}

static void escapes_label_values(void **state) {
  (void)state;
  gw_metrics_t *m;
  assert_int_equal(gw_metrics_new(&m, "*"), 0);
  gw_point_t p = point(1, 2.0, NAN);
  assert_int_equal(gw_metrics_observe(m, "a\"b\\c\nd", "t", &p), 0);
  char *out = render(m, NULL);
  assert_non_null(strstr(out,
      "gradwatch_kappa{run=\"a\\\"b\\\\c\\nd\",tag=\"t\",predictor=\"onestep\"} 2\n"));
  /* No raw newline inside any sample line: every line starts a name or #. */
  for (const char *l = out; *l; l = strchr(l, '\n') + 1)
    assert_true(*l == '#' || strncmp(l, "gradwatch_", 10) == 0);
  free(out);
  gw_metrics_free(m);
}

static void glob_limits_tags(void **state) {
  (void)state;
  gw_metrics_t *m;
  assert_int_equal(gw_metrics_new(&m, ""), GW_EINVAL);
  assert_null(m);
  assert_int_equal(gw_metrics_new(&m, "layer*"), 0);
  gw_point_t p = point(5, 1.0, 1.0);
  assert_int_equal(gw_metrics_observe(m, "r", "all", &p), 0);
  assert_int_equal(gw_metrics_observe(m, "r", "layer1.weight", &p), 0);
  assert_int_equal(gw_metrics_observe(m, "r", "layer2/conv.bias", &p), 0);
  assert_int_equal(gw_metrics_observe(m, "r", "xlayer", &p), 0);
  assert_int_equal(gw_metrics_stream_count(m), 2);
  char *out = render(m, NULL);
  assert_null(strstr(out, "tag=\"all\""));
  assert_null(strstr(out, "tag=\"xlayer\""));
  assert_non_null(strstr(out, "gradwatch_last_step{run=\"r\",tag=\"layer1.weight\"} 5\n"));
  assert_non_null(strstr(out, "gradwatch_last_step{run=\"r\",tag=\"layer2/conv.bias\"} 5\n"));
  free(out);
  assert_int_equal(gw_metrics_forget(m, "r", "layer1.weight"), 0);
  assert_int_equal(gw_metrics_forget(m, "r", "layer1.weight"), GW_ENOTFOUND);
  assert_int_equal(gw_metrics_forget(m, "r", "all"), GW_ENOTFOUND);
  assert_int_equal(gw_metrics_stream_count(m), 1);
  out = render(m, NULL);
  assert_null(strstr(out, "layer1.weight"));
  free(out);
  gw_metrics_free(m);
}

/* Counters come from gw_stats_t; every rejection reason appears, zeros too. */
static void renders_daemon_counters(void **state) {
  (void)state;
  gw_metrics_t *m;
  gw_stats_t st;
  memset(&st, 0, sizeof st);
  gw_stats_add(&st.received, 5);
  gw_stats_add(&st.points, 4);
  gw_stats_reject(&st, GW_ETRUNC);
  gw_stats_reject(&st, GW_ETRUNC);
  gw_stats_reject(&st, -12345); /* counts as invalid_argument */
  gw_stats_add(&st.streams, 9);
  gw_stats_add(&st.store_dropped, 11);
  gw_stats_add(&st.store_written, 12);
  gw_stats_add(&st.store_errors, 13);
  gw_stats_add(&st.store_queue_depth, 14);
  gw_stats_add(&st.live_dropped, 15);
  gw_stats_add(&st.meta_accepted, 16);
  assert_int_equal(gw_metrics_new(&m, NULL), 0);
  char *out = render(m, &st);
  const char *lines[] = {
      "# TYPE gradwatch_messages_received_total counter\ngradwatch_messages_received_total 5\n",
      "gradwatch_messages_rejected_total{reason=\"truncated\"} 2\n",
      "gradwatch_messages_rejected_total{reason=\"invalid_argument\"} 1\n",
      "gradwatch_messages_rejected_total{reason=\"denied\"} 0\n",
      "# TYPE gradwatch_points_total counter\ngradwatch_points_total 4\n",
      "# TYPE gradwatch_run_meta_received_total counter\ngradwatch_run_meta_received_total 16\n",
      "# TYPE gradwatch_streams gauge\ngradwatch_streams 9\n",
      "# TYPE gradwatch_store_dropped_total counter\ngradwatch_store_dropped_total 11\n",
      "# TYPE gradwatch_store_written_total counter\ngradwatch_store_written_total 12\n",
      "# TYPE gradwatch_store_errors_total counter\ngradwatch_store_errors_total 13\n",
      "# TYPE gradwatch_store_queue_depth gauge\ngradwatch_store_queue_depth 14\n",
      "# TYPE gradwatch_live_dropped_total counter\ngradwatch_live_dropped_total 15\n",
      "# TYPE gradwatch_streams_retired_total counter\ngradwatch_streams_retired_total 0\n",
  };
  for (size_t i = 0; i < sizeof lines / sizeof *lines; i++) {
    if (!strstr(out, lines[i])) fail_msg("missing: %s", lines[i]);
  }
  /* One sample per reason of gw_error.h, each reason once. */
  int n = 0;
  for (const char *p = out; (p = strstr(p, "gradwatch_messages_rejected_total{")); p++) n++;
  assert_int_equal(n, GW_E_COUNT);
  for (int i = 0; i < GW_E_COUNT; i++) {
    char want[128];
    snprintf(want, sizeof want, "{reason=\"%s\"}", gw_err_reason(GW_E_BASE - i));
    assert_non_null(strstr(out, want));
  }
  free(out);
  gw_metrics_free(m);
}

static int extra_ok(void *arg, gw_metrics_writer_t *w) {
  int *calls = arg;
  (*calls)++;
  const char *labels[] = {"rule", "kappa_high", NULL};
  assert_int_equal(gw_metrics_family(w, "gradwatch_test_extra", "gauge", "Test family."), 0);
  assert_int_equal(gw_metrics_sample(w, "gradwatch_test_extra", labels, 1.5), 0);
  assert_int_equal(gw_metrics_sample(w, "gradwatch_test_extra", NULL, NAN), 0);
  return 0;
}

static int extra_fail(void *arg, gw_metrics_writer_t *w) {
  (void)arg;
  (void)w;
  return GW_EDB;
}

static void extra_families(void **state) {
  (void)state;
  gw_metrics_t *m;
  int calls = 0;
  char *out;
  size_t len;
  assert_int_equal(gw_metrics_new(&m, NULL), 0);
  assert_int_equal(gw_metrics_render(m, NULL, extra_ok, &calls, &out, &len), 0);
  assert_int_equal(calls, 1);
  const char *tail = "# HELP gradwatch_test_extra Test family.\n"
                     "# TYPE gradwatch_test_extra gauge\n"
                     "gradwatch_test_extra{rule=\"kappa_high\"} 1.5\n";
  assert_true(len >= strlen(tail));
  assert_string_equal(out + len - strlen(tail), tail);
  free(out);
  out = (char *)1;
  assert_int_equal(gw_metrics_render(m, NULL, extra_fail, NULL, &out, &len), GW_EDB);
  assert_null(out);
  gw_metrics_free(m);
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Many streams (the table grows several times), half forgotten: the rest
 * render once each, sorted as qsort of the names sorts them. */
static void many_streams_sorted(void **state) {
  (void)state;
  enum { N = 3000 };
  gw_metrics_t *m;
  static char names[N][32];
  char *keep[N];
  size_t nk = 0;
  assert_int_equal(gw_metrics_new(&m, NULL), 0);
  for (int i = 0; i < N; i++) {
    int j = (i * 7919) % N; /* insert in a scrambled order */
    snprintf(names[j], sizeof names[j], "run%d", j);
    gw_point_t p = point((uint64_t)j, 1.0, 1.0);
    assert_int_equal(gw_metrics_observe(m, names[j], "all", &p), 0);
  }
  for (int j = 0; j < N; j++) {
    if (j % 2) assert_int_equal(gw_metrics_forget(m, names[j], "all"), 0);
    else keep[nk++] = names[j];
  }
  assert_int_equal(gw_metrics_stream_count(m), nk);
  qsort(keep, nk, sizeof *keep, cmp_str);
  char *out = render(m, NULL);
  const char *p = strstr(out, "# TYPE gradwatch_last_step gauge\n");
  assert_non_null(p);
  p = strchr(p, '\n') + 1;
  for (size_t i = 0; i < nk; i++) {
    char want[96];
    int step = atoi(keep[i] + 3);
    int n = snprintf(want, sizeof want, "gradwatch_last_step{run=\"%s\",tag=\"all\"} %d\n",
                     keep[i], step);
    if (strncmp(p, want, (size_t)n) != 0) fail_msg("line %zu: want %s", i, want);
    p += n;
  }
  assert_true(strncmp(p, "# HELP gradwatch_last_seen_timestamp_seconds", 44) == 0);
  free(out);
  gw_metrics_free(m);
}

/* The sink: points make series; forget removes every series of that stream
 * (and only its) and counts a retirement, also for a stream the tag glob
 * kept out; restarts are counted by reason, a reason without a name not. */
static void sink_lifecycle(void **state) {
  (void)state;
  gw_metrics_t *m;
  gw_sink_t sk;
  assert_int_equal(gw_metrics_new(&m, "all"), 0);
  gw_metrics_sink(m, &sk);
  assert_ptr_equal(sk.arg, m);
  assert_string_equal(sk.name, "metrics");
  assert_null(sk.open);
  assert_null(sk.sketch);
  gw_stream_ref_t r1 = {.stream_id = 1, .run = "r1", .tag = "all", .k = 4};
  gw_stream_ref_t r2 = {.stream_id = 2, .run = "r2", .tag = "all", .k = 4};
  gw_stream_ref_t hidden = {.stream_id = 3, .run = "r1", .tag = "layer0", .k = 4};
  gw_point_t p = point(5, 0.5, 0.25);
  p.grad_norm = 2.0;
  sk.point(sk.arg, &r1, &p);
  sk.point(sk.arg, &r2, &p);
  sk.point(sk.arg, &hidden, &p);
  assert_int_equal(gw_metrics_stream_count(m), 2);
  gw_restart_t rs = {.reason = GW_RESTART_INCARNATION, .step = 6};
  sk.restart(sk.arg, &r1, &rs);
  sk.restart(sk.arg, &r2, &rs);
  rs.reason = GW_RESTART_RESUMED;
  sk.restart(sk.arg, &r1, &rs);
  rs.reason = GW_RESTART_NONE; /* no name: not counted */
  sk.restart(sk.arg, &r1, &rs);
  rs.reason = GW_RESTART_COUNT;
  sk.restart(sk.arg, &r1, &rs);
  char *out = render(m, NULL);
  assert_non_null(strstr(out, "gradwatch_kappa{run=\"r1\",tag=\"all\",predictor=\"onestep\"} 0.5\n"));
  free(out);

  sk.forget(sk.arg, &r1);
  sk.forget(sk.arg, &hidden); /* no series, still a retirement */
  assert_int_equal(gw_metrics_stream_count(m), 1);
  out = render(m, NULL);
  assert_null(strstr(out, "run=\"r1\""));
  assert_non_null(strstr(out, "gradwatch_kappa{run=\"r2\",tag=\"all\",predictor=\"onestep\"} 0.5\n"));
  assert_non_null(strstr(out, "gradwatch_grad_norm{run=\"r2\",tag=\"all\"} 2\n"));
  assert_non_null(strstr(out, "gradwatch_last_step{run=\"r2\",tag=\"all\"} 5\n"));
  assert_non_null(strstr(out, "\ngradwatch_streams_retired_total 2\n"));
  assert_non_null(strstr(out, "\ngradwatch_stream_restarts_total{reason=\"incarnation\"} 2\n"
                              "gradwatch_stream_restarts_total{reason=\"resumed\"} 1\n"
                              "gradwatch_stream_restarts_total{reason=\"config_changed\"} 0\n"
                              "gradwatch_stream_restarts_total{reason=\"no_state\"} 0\n"));
  free(out);
  /* the stream comes back: a new series, the counters stay */
  sk.point(sk.arg, &r1, &p);
  out = render(m, NULL);
  assert_non_null(strstr(out, "gradwatch_last_step{run=\"r1\",tag=\"all\"} 5\n"));
  assert_non_null(strstr(out, "\ngradwatch_streams_retired_total 2\n"));
  free(out);
  gw_metrics_free(m);
}

/* The value of the sample that starts with `prefix` (NAN if none). */
static double sample_value(const char *text, const char *prefix) {
  const char *p = strstr(text, prefix);
  if (!p) return NAN;
  return strtod(p + strlen(prefix), NULL);
}

/* The linear predictor, the whole-run terms and the tail: each value lands
 * in its family with the right labels, exactly; the best predictor's label
 * follows best_predictor; the last-seen time is recv_ns in seconds. */
static void renders_whole_run_quantities(void **state) {
  (void)state;
  gw_metrics_t *m;
  assert_int_equal(gw_metrics_new(&m, NULL), 0);
  gw_point_t p = point(10, 1.5, 1.0);
  p.kappa_linear = 2.5;
  p.kappa_linear_cum = 1.75;
  p.path_onestep_cum = 10;
  p.path_ema_cum = 20.5;
  p.path_linear_cum = 0.1 + 0.2;
  p.kappa_best = 1.0;
  p.best_predictor = 1; /* EMA */
  p.tail_kappa_90 = 0.125;
  p.rank_90_run = 5;
  p.rank_99_run = 12;
  p.recv_ns = 1700000000500000000; /* 1700000000.5 s */
  gw_point_t q = point(3, 0.25, 0.5);
  q.kappa_linear = 0.0625;
  q.kappa_best = 0.0625;
  q.best_predictor = 2; /* linear */
  assert_int_equal(gw_metrics_observe(m, "r", "all", &p), 0);
  assert_int_equal(gw_metrics_observe(m, "s", "all", &q), 0);
  char *out = render(m, NULL);
  const char *want[] = {
      "gradwatch_kappa{run=\"r\",tag=\"all\",predictor=\"ema\"} 1\n"
      "gradwatch_kappa{run=\"s\",tag=\"all\",predictor=\"ema\"} 0.5\n"
      "gradwatch_kappa{run=\"r\",tag=\"all\",predictor=\"linear\"} 2.5\n"
      "gradwatch_kappa{run=\"s\",tag=\"all\",predictor=\"linear\"} 0.0625\n",
      "gradwatch_kappa_cum{run=\"r\",tag=\"all\",predictor=\"linear\"} 1.75\n",
      "# TYPE gradwatch_path_cum gauge\n"
      "gradwatch_path_cum{run=\"r\",tag=\"all\",predictor=\"onestep\"} 10\n"
      "gradwatch_path_cum{run=\"r\",tag=\"all\",predictor=\"ema\"} 20.5\n"
      "gradwatch_path_cum{run=\"r\",tag=\"all\",predictor=\"linear\"} 0.30000000000000004\n"
      "# HELP gradwatch_kappa_best",
      "# TYPE gradwatch_kappa_best gauge\n"
      "gradwatch_kappa_best{run=\"r\",tag=\"all\",predictor=\"ema\"} 1\n"
      "gradwatch_kappa_best{run=\"s\",tag=\"all\",predictor=\"linear\"} 0.0625\n"
      "# HELP gradwatch_tail_kappa",
      "# TYPE gradwatch_tail_kappa gauge\n"
      "gradwatch_tail_kappa{run=\"r\",tag=\"all\",energy=\"90\"} 0.125\n"
      "# HELP gradwatch_rank_run",
      "gradwatch_rank_run{run=\"r\",tag=\"all\",energy=\"90\"} 5\n",
      "gradwatch_rank_run{run=\"r\",tag=\"all\",energy=\"99\"} 12\n",
      /* the windowed families keep their series as before */
      "gradwatch_rank{run=\"r\",tag=\"all\",energy=\"90\"} 0\n",
  };
  for (size_t i = 0; i < sizeof want / sizeof *want; i++)
    if (!strstr(out, want[i])) fail_msg("missing:\n%s\nin:\n%s", want[i], out);
  double seen = sample_value(out, "gradwatch_last_seen_timestamp_seconds{run=\"r\",tag=\"all\"} ");
  assert_true(fabs(seen - 1700000000.5) < 1e-6);
  /* no receive time: no sample */
  assert_null(strstr(out, "gradwatch_last_seen_timestamp_seconds{run=\"s\""));
  free(out);
  /* best_predictor NaN (all three κ null): no kappa_best sample */
  q.kappa_best = q.best_predictor = NAN;
  assert_int_equal(gw_metrics_observe(m, "s", "all", &q), 0);
  out = render(m, NULL);
  assert_null(strstr(out, "gradwatch_kappa_best{run=\"s\""));
  assert_non_null(strstr(out, "gradwatch_kappa_best{run=\"r\""));
  free(out);
  gw_metrics_free(m);
}

/* Open descriptors counted in /proc/self/fd by hand. */
static int count_fds(void) {
  int n = 0;
  char path[64];
  for (int fd = 0; fd < 4096; fd++) {
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    if (access(path, F_OK) == 0) n++;
  }
  return n;
}

/* build_info and process_*: the version label; open fds match a count made
 * another way (and follow three dup()s exactly); max fds is getrlimit's;
 * the start time is before now and after the test began minus its CPU
 * time; CPU seconds grow by about the CPU burnt between two renders (vs
 * getrusage); resident memory is below the peak getrusage reports. */
static void renders_build_and_process(void **state) {
  (void)state;
  gw_metrics_t *m;
  gw_stats_t st;
  memset(&st, 0, sizeof st);
  assert_int_equal(gw_metrics_new(&m, NULL), 0);
  char *out = render(m, &st);
  char want[128];
  snprintf(want, sizeof want, "gradwatch_build_info{version=\"%s\"", GW_VERSION);
  assert_non_null(strstr(out, want));
  assert_non_null(strstr(out, "\"} 1\n"));
  assert_non_null(strstr(out, "# TYPE process_cpu_seconds_total counter\n"));
  int fds = count_fds();
  double open0 = sample_value(out, "\nprocess_open_fds ");
  assert_true(fabs(open0 - fds) <= 1); /* popen-free: only the renders' own fds may differ */
  struct rlimit rl;
  assert_int_equal(getrlimit(RLIMIT_NOFILE, &rl), 0);
  assert_true(sample_value(out, "\nprocess_max_fds ") == (double)rl.rlim_cur);
  struct timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  struct rusage ru0, ru1;
  assert_int_equal(getrusage(RUSAGE_SELF, &ru0), 0);
  double start = sample_value(out, "\nprocess_start_time_seconds ");
  double cpu_used = (double)ru0.ru_utime.tv_sec + ru0.ru_utime.tv_usec * 1e-6 +
                    (double)ru0.ru_stime.tv_sec + ru0.ru_stime.tv_usec * 1e-6;
  assert_true(start <= (double)now.tv_sec + 1);
  assert_true(start >= (double)now.tv_sec - 600 - cpu_used);
  double rss = sample_value(out, "\nprocess_resident_memory_bytes ");
  assert_true(rss > 100e3 && rss <= (double)ru0.ru_maxrss * 1024.0 + 65536);
  double cpu0 = sample_value(out, "\nprocess_cpu_seconds_total ");
  free(out);

  int d[3];
  for (int i = 0; i < 3; i++) assert_true((d[i] = dup(1)) >= 0);
  volatile double x = 0; /* burn about 0.3 s of CPU */
  struct timespec t0, t1;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t0);
  do {
    for (int i = 0; i < 100000; i++) x += sqrt((double)i);
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t1);
  } while ((double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9 < 0.3);
  out = render(m, &st);
  assert_int_equal(getrusage(RUSAGE_SELF, &ru1), 0);
  assert_true(sample_value(out, "\nprocess_open_fds ") == open0 + 3);
  double cpu1 = sample_value(out, "\nprocess_cpu_seconds_total ");
  double ru_delta = (double)(ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec) +
                    (ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec) * 1e-6 +
                    (double)(ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec) +
                    (ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec) * 1e-6;
  /* clock ticks are 10 ms: allow two ticks each way */
  if (fabs((cpu1 - cpu0) - ru_delta) > 0.05)
    fail_msg("cpu seconds grew %g, getrusage says %g", cpu1 - cpu0, ru_delta);
  assert_true(sample_value(out, "\nprocess_start_time_seconds ") == start);
  for (int i = 0; i < 3; i++) close(d[i]);
  free(out);
  gw_metrics_free(m);
}

/* promtool (Debian's prometheus package) is the independent checker. */
static void promtool_accepts(void **state) {
  (void)state;
  if (access("/usr/bin/promtool", X_OK) != 0) {
    print_message("promtool not installed: skipping `promtool check metrics`\n");
    skip();
  }
  gw_metrics_t *m;
  gw_stats_t st;
  memset(&st, 0, sizeof st);
  gw_stats_add(&st.received, 3);
  assert_int_equal(gw_metrics_new(&m, NULL), 0);
  gw_point_t p = point(9, 0.5, 0.25);
  p.grad_norm = 3.0;
  assert_int_equal(gw_metrics_observe(m, "r1", "layer1/w", &p), 0);
  assert_int_equal(gw_metrics_observe(m, "r\"2", "all", &p), 0);
  gw_sink_t sk; /* the lifecycle counters with values */
  gw_metrics_sink(m, &sk);
  gw_stream_ref_t ref = {.stream_id = 1, .run = "r3", .tag = "all", .k = 4};
  gw_restart_t rs = {.reason = GW_RESTART_CONFIG, .step = 1};
  sk.point(sk.arg, &ref, &p);
  sk.restart(sk.arg, &ref, &rs);
  sk.forget(sk.arg, &ref);
  char *out = render(m, &st);
  assert_non_null(strstr(out, "gradwatch_stream_restarts_total{reason=\"config_changed\"} 1\n"));
  assert_non_null(strstr(out, "\ngradwatch_streams_retired_total 1\n"));
  char path[] = "/tmp/gw_test_metrics_XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, out, strlen(out)), (ssize_t)strlen(out));
  close(fd);
  char cmd[256];
  snprintf(cmd, sizeof cmd, "/usr/bin/promtool check metrics < %s 2>&1", path);
  FILE *f = popen(cmd, "r");
  assert_non_null(f);
  char msg[4096];
  size_t n = fread(msg, 1, sizeof msg - 1, f);
  msg[n] = '\0';
  int status = pclose(f);
  unlink(path);
  if (status != 0 || n != 0) fail_msg("promtool: status %d: %s", status, msg);
  free(out);
  gw_metrics_free(m);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(renders_exact_text),
      cmocka_unit_test(escapes_label_values),
      cmocka_unit_test(glob_limits_tags),
      cmocka_unit_test(renders_daemon_counters),
      cmocka_unit_test(extra_families),
      cmocka_unit_test(many_streams_sorted),
      cmocka_unit_test(sink_lifecycle),
      cmocka_unit_test(renders_whole_run_quantities),
      cmocka_unit_test(renders_build_and_process),
      cmocka_unit_test(promtool_accepts),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
