/* test_store_chunks.c — the compact (chunked) store answers exactly as the
 * row store did.
 *
 * The same script of stream opens, points (gaps, duplicates, late points
 * that fall into sealed chunks, NaN payloads, -0.0), incarnation restarts,
 * forgets, close/reopen and a retention pass is applied to three real
 * SQLite files: one that never seals (chunk_points 0: every point a row,
 * the pre-chunk layout, which is the reference) and two that seal every 7
 * and every 256 points. After every phase every reader must give
 * bit-identical answers: series over many ranges, with and without
 * downsampling and incarnation filtering, series counts, streams, runs, row
 * count and the writer's counters. Also: a version 2 file (rows only) is
 * converted at open, and a conversion cut short is finished by the next
 * open.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>
#include <sqlite3.h>

#include "engine.h"
#include "store.h"

#define NST 3 /* stores: rows (reference), chunks of 7, chunks of 256 */
#define NTAG 3

static const uint32_t chunk_of[NST] = {0, 7, GW_STORE_CHUNK_POINTS};

typedef struct {
  char path[NST][256];
  gw_stats_t stats[NST];
  gw_store_t *st[NST];
  uint64_t last[NTAG]; /* last step put per tag */
  uint64_t inc[NTAG];
} fx_t;

static void rm_db(const char *path) {
  char p[300];
  unlink(path);
  snprintf(p, sizeof p, "%s-wal", path);
  unlink(p);
  snprintf(p, sizeof p, "%s-shm", path);
  unlink(p);
}

static int fx_setup(void **state) {
  static atomic_int counter;
  fx_t *f = calloc(1, sizeof *f);
  if (!f) return -1;
  int c = atomic_fetch_add(&counter, 1);
  for (int i = 0; i < NST; i++) {
    snprintf(f->path[i], sizeof f->path[i], "/tmp/gw_test_chunks_%d_%d_%d.db", (int)getpid(), c,
             i);
    rm_db(f->path[i]);
  }
  *state = f;
  return 0;
}

static int fx_teardown(void **state) {
  fx_t *f = *state;
  for (int i = 0; i < NST; i++) {
    gw_store_close(f->st[i]);
    rm_db(f->path[i]);
  }
  free(f);
  return 0;
}

static void open_all(fx_t *f, uint32_t retention_days) {
  for (int i = 0; i < NST; i++) {
    gw_store_config_t c;
    gw_store_config_default(&c);
    c.path = f->path[i];
    c.flush_ms = 20;
    c.chunk_points = chunk_of[i];
    c.retention_days = retention_days;
    c.retention_check_ms = 30;
    assert_int_equal(gw_store_open(&f->st[i], &c, &f->stats[i]), 0);
  }
}

static void close_all(fx_t *f) {
  for (int i = 0; i < NST; i++) {
    gw_store_close(f->st[i]);
    f->st[i] = NULL;
  }
}

static void flush_all(fx_t *f) {
  for (int i = 0; i < NST; i++) assert_int_equal(gw_store_flush(f->st[i]), 0);
}

static uint64_t splitmix(uint64_t *x) {
  uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static double unif(uint64_t *x) { return (double)(splitmix(x) >> 11) * 0x1p-53; }

static double bits_double(uint64_t u) {
  double d;
  memcpy(&d, &u, sizeof d);
  return d;
}

/* A point whose every field comes from (tag, step, inc): smooth values,
 * NaNs in patterns, a NaN with a payload, -0.0, a subnormal. The quotient
 * columns are computed as the engine does (kappa = path / energy, the best
 * one copied), so chunks may leave them out, except in steps 200..230 where
 * they are independent, so chunks there must keep them; every 13th step the
 * window energy is 0 (the engine's NANs). */
static gw_point_t mkpoint(uint32_t sid, uint64_t step, uint64_t inc, int64_t recv) {
  gw_point_t p;
  uint64_t x = (uint64_t)sid * 1000003u + step * 7919u + inc;
  memset(&p, 0, sizeof p);
  p.stream_id = sid;
  p.n = step + 1;
  p.step = step;
  p.incarnation = inc;
  p.wall_ns = recv;
  p.recv_ns = recv;
  p.window_len = (uint32_t)(step < 64 ? step : 64);
  p.path_onestep = 100 + (double)step * 0.01 + unif(&x);
  p.path_ema = unif(&x) * 100;
  p.path_linear = step % 10 == 0 ? -0.0 : unif(&x) * 90;
  double zw = step % 13 == 0 ? 0 : 1 + unif(&x) * 1e3;
  p.kappa_onestep = zw != 0 ? p.path_onestep / zw : NAN;
  p.kappa_ema = zw != 0 ? p.path_ema / zw : NAN;
  p.kappa_linear = zw != 0 ? p.path_linear / zw : NAN;
  if (zw != 0) {
    int b = 0;
    double bp = p.path_onestep;
    if (p.path_ema < bp) b = 1, bp = p.path_ema;
    if (p.path_linear < bp) b = 2, bp = p.path_linear;
    p.best_predictor = b;
    p.kappa_best = bp / zw;
  } else {
    p.best_predictor = NAN;
    p.kappa_best = NAN;
  }
  double cz = 1e4 + (double)step * 3.7 + unif(&x);
  p.path_onestep_cum = (double)step * 101.3 + unif(&x);
  p.path_ema_cum = (double)step * 55.1 + unif(&x);
  p.path_linear_cum = step % 9 == 0 ? 4.9e-324 : (double)step * 45.5 + unif(&x);
  p.kappa_onestep_cum = p.path_onestep_cum / cz;
  p.kappa_ema_cum = p.path_ema_cum / cz;
  p.kappa_linear_cum = p.path_linear_cum / cz;
  if (step >= 200 && step <= 230) { /* independent columns */
    p.kappa_ema = step % 7 == 0 ? bits_double(0x7ff8dead00000000ull + step) : unif(&x) * 2;
    p.kappa_linear_cum = -unif(&x);
    p.kappa_best = unif(&x);
  }
  p.rank_90 = (uint32_t)(step / 8 % 13);
  p.rank_99 = (uint32_t)(step / 8 % 17);
  p.stable_rank = step % 11 == 0 ? NAN : 1 + unif(&x) * 10;
  for (int i = 0; i < GW_TOP_SIGMA; i++) {
    p.tail_energy[i] = step % 11 == 0 ? NAN : unif(&x);
    p.sigma[i] = unif(&x) * 1e6;
  }
  p.rank_step = step / 8 * 8;
  p.grad_norm = step % 5 == 0 ? NAN : unif(&x) * 50;
  p.loss = (double)inc * 1e6 + (double)step;
  p.lr = 1e-3;
  p.sketch_norm = unif(&x) * 7;
  return p;
}

static const char *tag_name(int t) {
  static const char *const names[NTAG] = {"a", "b", "c"};
  return names[t];
}

static void open_tag(fx_t *f, int t, uint64_t inc, uint64_t step) {
  for (int i = 0; i < NST; i++) {
    gw_stream_ref_t ref = {(uint32_t)t, "r", tag_name(t), 8, 1, 1, 5, inc};
    gw_open_t o = {GW_OPEN_NEW, step, 0};
    assert_int_equal(gw_store_open_stream(f->st[i], (uint32_t)t, &ref, &o), 0);
  }
  f->inc[t] = inc;
}

static void put(fx_t *f, int t, uint64_t step, int64_t recv) {
  gw_point_t p = mkpoint((uint32_t)t, step, f->inc[t], recv);
  for (int i = 0; i < NST; i++) assert_int_equal(gw_store_put_point(f->st[i], &p), 0);
  if (step > f->last[t]) f->last[t] = step;
}

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* n points per tag after each tag's last step: gaps of 1 to 3, every 17th
 * a duplicate of the one before, every 23rd a late step 1 to 40 back; a
 * flush every 50 so that late points find their range sealed. */
static void feed(fx_t *f, uint64_t *rng, int n, int64_t recv) {
  for (int k = 0; k < n; k++) {
    for (int t = 0; t < NTAG; t++) {
      uint64_t s = f->last[t] + 1 + splitmix(rng) % 3;
      put(f, t, s, recv);
      if (k % 17 == 16) put(f, t, s, recv);
      if (k % 23 == 22 && s > 41) put(f, t, s - 1 - splitmix(rng) % 40, recv);
    }
    if (k % 50 == 49) flush_all(f);
  }
  flush_all(f);
}

static int same_bits(double a, double b) { return memcmp(&a, &b, sizeof a) == 0; }

static void same_series(const gw_series_t *a, const gw_series_t *b, const char *what) {
  if (a->n != b->n || a->downsampled != b->downsampled || a->n_metrics != b->n_metrics)
    fail_msg("%s: n %zu/%zu downsampled %d/%d", what, a->n, b->n, a->downsampled,
             b->downsampled);
  for (size_t r = 0; r < a->n; r++) {
    if (a->step[r] != b->step[r] || a->inc[r] != b->inc[r])
      fail_msg("%s: row %zu step %llu/%llu inc %llu/%llu", what, r,
               (unsigned long long)a->step[r], (unsigned long long)b->step[r],
               (unsigned long long)a->inc[r], (unsigned long long)b->inc[r]);
    for (size_t m = 0; m < a->n_metrics; m++)
      if (!same_bits(a->cols[m][r], b->cols[m][r]))
        fail_msg("%s: row %zu metric %zu: %.17g / %.17g", what, r, m, a->cols[m][r],
                 b->cols[m][r]);
  }
}

/* Every reader of every store against the row store. */
static void compare(fx_t *f, uint64_t seed) {
  static int metrics[GW_METRIC_COUNT];
  static const size_t maxp[] = {0, 2, 6, 64, 1000};
  uint64_t rng = seed, rows[NST];
  for (int m = 0; m < GW_METRIC_COUNT; m++) metrics[m] = m;
  for (int i = 0; i < NST; i++) {
    assert_int_equal(gw_store_row_count(f->st[i], &rows[i]), 0);
    assert_int_equal(rows[i], rows[0]);
    assert_int_equal(gw_stats_get(&f->stats[i].store_written),
                     gw_stats_get(&f->stats[0].store_written));
    assert_int_equal(gw_stats_get(&f->stats[i].store_duplicates),
                     gw_stats_get(&f->stats[0].store_duplicates));
    assert_int_equal(gw_stats_get(&f->stats[i].store_errors), 0);
  }
  gw_store_run_t *runs[NST];
  gw_store_stream_t *ss[NST];
  size_t nr[NST], ns[NST];
  for (int i = 0; i < NST; i++) {
    assert_int_equal(gw_store_runs(f->st[i], 0, 1, &runs[i], &nr[i]), 0);
    assert_int_equal(gw_store_streams(f->st[i], "r", &ss[i], &ns[i]), 0);
  }
  for (int i = 1; i < NST; i++) {
    assert_int_equal(nr[i], nr[0]);
    for (size_t j = 0; j < nr[0]; j++) {
      assert_string_equal(runs[i][j].run, runs[0][j].run);
      assert_int_equal(runs[i][j].streams, runs[0][j].streams);
      assert_int_equal(runs[i][j].first_step, runs[0][j].first_step);
      assert_int_equal(runs[i][j].last_step, runs[0][j].last_step);
      assert_int_equal(runs[i][j].last_seen_ns, runs[0][j].last_seen_ns);
    }
    assert_int_equal(ns[i], ns[0]);
    for (size_t j = 0; j < ns[0]; j++) {
      assert_string_equal(ss[i][j].tag, ss[0][j].tag);
      assert_int_equal(ss[i][j].points, ss[0][j].points);
      assert_int_equal(ss[i][j].first_step, ss[0][j].first_step);
      assert_int_equal(ss[i][j].last_step, ss[0][j].last_step);
      assert_int_equal(ss[i][j].last_seen_ns, ss[0][j].last_seen_ns);
      assert_int_equal(ss[i][j].segments, ss[0][j].segments);
      assert_int_equal(ss[i][j].incarnation, ss[0][j].incarnation);
    }
  }
  for (int i = 0; i < NST; i++) {
    gw_store_runs_free(runs[i], nr[i]);
    gw_store_streams_free(ss[i], ns[i]);
  }
  for (int t = 0; t < NTAG; t++) {
    uint64_t hi = f->last[t] + 5;
    for (int q = 0; q < 24; q++) {
      uint64_t from, to;
      if (q == 0) {
        from = 0;
        to = UINT64_MAX;
      } else if (q == 1) {
        from = to = splitmix(&rng) % hi; /* one step */
      } else if (q == 2) {
        from = 10;
        to = 5; /* empty */
      } else {
        from = splitmix(&rng) % hi;
        to = from + splitmix(&rng) % (hi - from + 1);
      }
      for (int all = 0; all < 2; all++) {
        uint64_t cnt[NST];
        for (int i = 0; i < NST; i++) {
          assert_int_equal(
              gw_store_series_count(f->st[i], "r", tag_name(t), from, to, all, &cnt[i]), 0);
          assert_int_equal(cnt[i], cnt[0]);
        }
        for (size_t mp = 0; mp < sizeof maxp / sizeof maxp[0]; mp++) {
          gw_series_t s[NST];
          char what[160];
          for (int i = 0; i < NST; i++)
            assert_int_equal(gw_store_series(f->st[i], "r", tag_name(t), metrics,
                                             GW_METRIC_COUNT, from, to, maxp[mp], &s[i], all),
                             0);
          assert_int_equal(s[0].n, maxp[mp] && cnt[0] > maxp[mp] ? maxp[mp] / 2 * 2 : cnt[0]);
          for (int i = 1; i < NST; i++) {
            snprintf(what, sizeof what, "store %d tag %s [%llu, %llu] all %d max_points %zu",
                     i, tag_name(t), (unsigned long long)from, (unsigned long long)to, all,
                     maxp[mp]);
            same_series(&s[0], &s[i], what);
          }
          for (int i = 0; i < NST; i++) gw_store_series_free(&s[i]);
        }
      }
    }
  }
  for (int i = 0; i < NST; i++) assert_int_equal(gw_store_integrity_check(f->st[i]), 0);
}

static int64_t raw_int(const char *path, const char *sql) {
  sqlite3 *db = NULL;
  sqlite3_stmt *s = NULL;
  int64_t v = -1;
  assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
  assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &s, NULL), SQLITE_OK);
  if (sqlite3_step(s) == SQLITE_ROW) v = sqlite3_column_int64(s, 0);
  sqlite3_finalize(s);
  sqlite3_close(db);
  return v;
}

static void raw_exec(const char *path, const char *sql) {
  sqlite3 *db = NULL;
  assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
  assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
  sqlite3_close(db);
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static void same_answers(void **state) {
  fx_t *f = *state;
  uint64_t rng = 42;
  int64_t now = now_ns(), old = now - 3 * 86400LL * 1000000000LL;
  open_all(f, 0);
  for (int t = 0; t < NTAG; t++) open_tag(f, t, 0, 1);
  feed(f, &rng, 40, old); /* received 3 days ago: retention takes them */
  feed(f, &rng, 300, now);
  compare(f, 1);
  /* the 256-point store sealed, the 7-point one sealed many */
  assert_true(raw_int(f->path[1], "SELECT count(*) FROM chunks") > 100);
  assert_true(raw_int(f->path[2], "SELECT count(*) FROM chunks") >= NTAG);
  assert_int_equal(raw_int(f->path[0], "SELECT count(*) FROM chunks"), 0);
  /* derived columns left out where they reproduce, kept where they do not */
  assert_true(raw_int(f->path[1], "SELECT count(*) FROM chunks WHERE xf & 7 = 7") > 50);
  assert_true(raw_int(f->path[1], "SELECT count(*) FROM chunks WHERE xf & 7 = 0") > 0);
  assert_true(raw_int(f->path[2], "SELECT count(*) FROM chunks WHERE xf & 7 = 0") > 0);

  /* tag b restarts as incarnation 1 from half its last step: a new
   * segment hides the old one's points from there on */
  open_tag(f, 1, 1, f->last[1] / 2);
  f->last[1] /= 2;
  feed(f, &rng, 120, now);
  compare(f, 2);

  /* tag c retired; close (tails sealed) and reopen (the open pass) */
  for (int i = 0; i < NST; i++) assert_int_equal(gw_store_forget_stream(f->st[i], 2), 0);
  flush_all(f);
  close_all(f);
  assert_int_equal(raw_int(f->path[2], "SELECT count(*) FROM points"), 0);
  open_all(f, 0);
  compare(f, 3);
  for (int t = 0; t < NTAG; t++) open_tag(f, t, f->inc[t], f->last[t]);
  feed(f, &rng, 90, now); /* late points fall into the sealed tails */
  compare(f, 4);

  /* retention (one pass at open): the first 40 points of each tag go, a
   * straddling chunk keeps its newer points */
  close_all(f);
  open_all(f, 1);
  uint64_t want = 0, rows[NST];
  for (int tries = 0; tries < 500; tries++) {
    int same = 1;
    for (int i = 0; i < NST; i++) {
      assert_int_equal(gw_store_row_count(f->st[i], &rows[i]), 0);
      same &= rows[i] == rows[0];
    }
    if (same && tries > 5 && rows[0] == want) break;
    want = rows[0];
    sleep_ms(20);
  }
  compare(f, 5);
  gw_series_t s;
  int m = GW_METRIC_LOSS;
  assert_int_equal(gw_store_series(f->st[1], "r", "a", &m, 1, 0, UINT64_MAX, 0, &s, 1), 0);
  assert_true(s.n > 300);
  assert_true(s.step[0] > 40); /* the old points are gone */
  gw_store_series_free(&s);
}

/* Open a store on path in a child process and kill -9 it after delay_ms:
 * the conversion at open is cut short somewhere (or has finished). */
static void killed_open(const char *path, uint32_t chunk, int delay_ms) {
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    gw_store_config_t c;
    gw_stats_t stats;
    gw_store_t *st = NULL;
    memset(&stats, 0, sizeof stats);
    gw_store_config_default(&c);
    c.path = path;
    c.chunk_points = chunk;
    if (gw_store_open(&st, &c, &stats) == 0) sleep_ms(10000);
    _exit(0);
  }
  sleep_ms(delay_ms);
  kill(pid, SIGKILL);
  int status = 0;
  assert_int_equal(waitpid(pid, &status, 0), pid);
}

/* A version 2 file (rows only, no chunks table) converts at open, losslessly,
 * also when a first conversion was killed part way. */
static void migrate_v2(void **state) {
  fx_t *f = *state;
  uint64_t rng = 7;
  int64_t now = now_ns();
  open_all(f, 0);
  for (int t = 0; t < NTAG; t++) open_tag(f, t, 0, 1);
  feed(f, &rng, 700, now);
  for (int i = 0; i < NST; i++) assert_int_equal(gw_store_forget_stream(f->st[i], 0), 0);
  flush_all(f);
  close_all(f);
  assert_int_equal(raw_int(f->path[0], "SELECT count(*) FROM chunks"), 0);
  int64_t rows = raw_int(f->path[0], "SELECT count(*) FROM points");
  assert_true(rows >= 3 * 700);
  /* stores 1 and 2 become version 2 files: the reference's rows, no chunks */
  for (int i = 1; i < NST; i++) {
    char sql[600];
    rm_db(f->path[i]);
    snprintf(sql, sizeof sql, "VACUUM INTO '%s';", f->path[i]);
    raw_exec(f->path[0], sql);
    raw_exec(f->path[i], "DROP TABLE chunks; DROP TABLE run_meta; PRAGMA user_version = 2;");
    assert_int_equal(raw_int(f->path[i], "SELECT count(*) FROM points"), rows);
  }
  killed_open(f->path[1], chunk_of[1], 3);
  killed_open(f->path[2], chunk_of[2], 1);
  open_all(f, 0);
  for (int i = 1; i < NST; i++) {
    assert_int_equal(raw_int(f->path[i], "PRAGMA user_version"), GW_STORE_SCHEMA_VERSION);
    /* tag a (retired) sealed entirely; b and c (live) all but a tail */
    assert_int_equal(raw_int(f->path[i], "SELECT count(*) FROM points p JOIN streams s ON "
                                         "s.id = p.stream WHERE s.tag = 'a'"),
                     0);
    assert_true(raw_int(f->path[i], "SELECT count(*) FROM points") < 2 * (int64_t)chunk_of[i]);
    assert_int_equal(raw_int(f->path[i], "SELECT (SELECT count(*) FROM points) + "
                                         "(SELECT sum(n) FROM chunks)"),
                     rows);
  }
  compare(f, 11);
  close_all(f);
  assert_int_equal(raw_int(f->path[1], "SELECT count(*) FROM points"), 0);
  open_all(f, 0);
  compare(f, 12);
}

/* full_resolution_days: the chunks whose points were all received before
 * the cut become 2 points each — first step with each metric's minimum,
 * last step with the maxima (NaNs skipped) — and series answer those; the
 * newer chunk and the rows stay whole. */
static void full_resolution(void **state) {
  fx_t *f = *state;
  gw_store_config_t c;
  gw_stats_t stats;
  gw_store_t *st = NULL;
  int64_t now = now_ns(), old = now - 3 * 86400LL * 1000000000LL;
  uint64_t rows = 0;
  memset(&stats, 0, sizeof stats);
  gw_store_config_default(&c);
  c.path = f->path[1];
  c.flush_ms = 20;
  c.chunk_points = 100;
  c.full_resolution_days = 1;
  c.retention_check_ms = 30;
  assert_int_equal(gw_store_open(&st, &c, &stats), 0);
  gw_stream_ref_t ref = {0, "r", "a", 8, 1, 1, 5, 0};
  gw_open_t o = {GW_OPEN_NEW, 1, 0};
  assert_int_equal(gw_store_open_stream(st, 0, &ref, &o), 0);
  for (uint64_t s = 1; s <= 730; s++) {
    gw_point_t p = mkpoint(0, s, 0, s <= 600 ? old + (int64_t)s * 1000000 : now);
    assert_int_equal(gw_store_put_point(st, &p), 0);
  }
  assert_int_equal(gw_store_flush(st), 0);
  for (int i = 0; i < 500; i++) {
    assert_int_equal(gw_store_row_count(st, &rows), 0);
    if (rows == 6 * 2 + 130) break;
    sleep_ms(20);
  }
  assert_int_equal(rows, 6 * 2 + 130);
  gw_series_t s;
  static int metrics[GW_METRIC_COUNT];
  for (int m = 0; m < GW_METRIC_COUNT; m++) metrics[m] = m;
  assert_int_equal(gw_store_series(st, "r", "a", metrics, GW_METRIC_COUNT, 0, UINT64_MAX, 0, &s, 0),
                   0);
  assert_int_equal(s.n, 6 * 2 + 130);
  for (int k = 0; k < 6; k++) {
    assert_int_equal(s.step[2 * k], 100 * (uint64_t)k + 1);
    assert_int_equal(s.step[2 * k + 1], 100 * (uint64_t)k + 100);
    for (int m = 0; m < GW_METRIC_COUNT; m++) {
      double mn = NAN, mx = NAN;
      for (uint64_t st_ = 100 * (uint64_t)k + 1; st_ <= 100 * (uint64_t)k + 100; st_++) {
        gw_point_t p = mkpoint(0, st_, 0, old + (int64_t)st_ * 1000000);
        double y = gw_point_get(&p, m);
        if (isnan(y)) continue;
        if (isnan(mn) || y < mn) mn = y;
        if (isnan(mx) || y > mx) mx = y;
      }
      if (!same_bits(s.cols[m][2 * k], mn) || !same_bits(s.cols[m][2 * k + 1], mx))
        fail_msg("chunk %d metric %d: %.17g..%.17g, want %.17g..%.17g", k, m,
                 s.cols[m][2 * k], s.cols[m][2 * k + 1], mn, mx);
    }
  }
  for (uint64_t r = 12; r < s.n; r++) { /* 601..730 whole */
    gw_point_t p = mkpoint(0, 589 + r, 0, now);
    assert_int_equal(s.step[r], 589 + r);
    for (int m = 0; m < GW_METRIC_COUNT; m++)
      assert_true(same_bits(s.cols[m][r], gw_point_get(&p, m)));
  }
  gw_store_series_free(&s);
  gw_store_stream_t *ss;
  size_t n;
  assert_int_equal(gw_store_streams(st, "r", &ss, &n), 0);
  assert_int_equal(n, 1);
  assert_int_equal(ss[0].points, 6 * 2 + 130);
  assert_int_equal(ss[0].first_step, 1);
  assert_int_equal(ss[0].last_step, 730);
  gw_store_streams_free(ss, n);
  assert_int_equal(gw_store_integrity_check(st), 0);
  gw_store_close(st);
  assert_int_equal(raw_int(f->path[1], "SELECT count(*) FROM chunks WHERE tier = 1 AND n = 2"), 6);
  assert_int_equal(raw_int(f->path[1], "SELECT count(*) FROM chunks WHERE tier = 0"), 2);
}

/* A damaged chunk is an error, never a misread: the integrity check names
 * it, a series over it fails, a series beside it still answers. */
static void corrupt_chunk(void **state) {
  fx_t *f = *state;
  uint64_t rng = 3;
  int m = GW_METRIC_LOSS;
  gw_series_t s;
  open_all(f, 0);
  for (int t = 0; t < NTAG; t++) open_tag(f, t, 0, 1);
  feed(f, &rng, 100, now_ns());
  assert_int_equal(gw_store_integrity_check(f->st[1]), 0);
  close_all(f);
  /* flip one byte in the middle of tag a's third chunk (chunks of 7) */
  raw_exec(f->path[1],
           "UPDATE chunks SET blob = substr(blob, 1, 20) || "
           "CAST(char((unicode(substr(blob, 21, 1)) + 1) % 256) AS BLOB) || substr(blob, 22) "
           "WHERE rowid = (SELECT c.rowid FROM chunks c JOIN streams s ON s.id = c.stream "
           "WHERE s.tag = 'a' ORDER BY c.first_step LIMIT 1 OFFSET 2)");
  int64_t lo = raw_int(f->path[1], "SELECT c.first_step FROM chunks c JOIN streams s ON "
                                   "s.id = c.stream WHERE s.tag = 'a' ORDER BY c.first_step "
                                   "LIMIT 1 OFFSET 2");
  open_all(f, 0);
  assert_int_equal(gw_store_integrity_check(f->st[1]), GW_EDB);
  assert_int_not_equal(
      gw_store_series(f->st[1], "r", "a", &m, 1, (uint64_t)lo, (uint64_t)lo, 0, &s, 0), 0);
  assert_int_equal(s.n, 0);
  assert_int_equal(gw_store_series(f->st[1], "r", "b", &m, 1, 0, UINT64_MAX, 0, &s, 0), 0);
  assert_true(s.n >= 100);
  gw_store_series_free(&s);
  /* an xf bit this build does not know (a damaged or a future chunk) is an
   * error too, never a misread */
  close_all(f);
  raw_exec(f->path[1], "UPDATE chunks SET xf = xf | 64 WHERE rowid = (SELECT c.rowid FROM "
                       "chunks c JOIN streams s ON s.id = c.stream WHERE s.tag = 'b' "
                       "ORDER BY c.first_step LIMIT 1)");
  open_all(f, 0);
  assert_int_equal(gw_store_integrity_check(f->st[1]), GW_EDB);
  assert_int_not_equal(gw_store_series(f->st[1], "r", "b", &m, 1, 0, UINT64_MAX, 0, &s, 0), 0);
  assert_int_equal(s.n, 0);
  assert_int_equal(gw_store_series(f->st[1], "r", "c", &m, 1, 0, UINT64_MAX, 0, &s, 0), 0);
  assert_true(s.n >= 100);
  gw_store_series_free(&s);
}

/* Points of the real engine (W = 16, rank every 4) on a drifting random
 * sketch, with hostile values written over some of them (-0.0, infinities,
 * NaN, a subnormal, a zero window energy): the predicted columns (windowed
 * sums from cumulative ones, cz from sketch_norm) engage with the window as
 * their lag, and every reader answers bit for bit as the row store. */
static void engine_predicted(void **state) {
  fx_t *f = *state;
  gw_engine_config_t c;
  gw_engine_config_default(&c);
  c.window = 16;
  c.rank_every = 4;
  gw_engine_t *e = gw_engine_new(&c);
  assert_non_null(e);
  uint64_t x = 99;
  int64_t now = now_ns();
  double z[16], drift[16];
  for (int i = 0; i < 16; i++) drift[i] = unif(&x) - 0.5;
  open_all(f, 0);
  for (int t = 0; t < NTAG; t++) open_tag(f, t, 0, 0);
  for (uint64_t step = 1; step <= 900; step++) {
    gw_msg_t m;
    gw_point_t p;
    memset(&m, 0, sizeof m);
    m.run = "r";
    m.run_len = 1;
    m.tag = "a";
    m.tag_len = 1;
    m.version = GW_PROTO_VERSION;
    m.dtype = GW_DTYPE_F32;
    m.kind = GW_SKETCH_SJLT;
    m.s = 4;
    m.k = 16;
    m.seed = 7;
    m.step = step;
    m.wall_ns = now;
    for (int i = 0; i < 16; i++) z[i] = drift[i] * (double)step * 0.01 + unif(&x) - 0.5;
    int rc = gw_engine_push_f64(e, &m, z, &p);
    assert_true(rc >= 0);
    if (rc == 0) continue;
    p.stream_id = 0;
    p.recv_ns = now;
    switch (step >= 300 && step < 500 ? step % 31 : 0) { /* hostile values, in one stretch */
      case 1: p.path_onestep = -0.0; break;
      case 5: p.path_ema_cum = INFINITY; break;
      case 9: p.sketch_norm = NAN; break;
      case 13: p.path_linear = 4.9e-324; break;
      case 17: p.path_onestep_cum = -INFINITY; break;
      case 21: p.kappa_onestep = p.kappa_ema = p.kappa_linear = NAN; break;
      default: break;
    }
    for (int t = 0; t < NTAG; t++) { /* the same points under every tag */
      p.stream_id = (uint32_t)t;
      for (int i = 0; i < NST; i++) assert_int_equal(gw_store_put_point(f->st[i], &p), 0);
      f->last[t] = step;
    }
  }
  gw_engine_free(e);
  flush_all(f);
  compare(f, 7);
  /* the 256-point store: predictions on, lag = the window (xf bits 16..) */
  assert_true(raw_int(f->path[2], "SELECT count(*) FROM chunks") >= 3);
  assert_int_equal(raw_int(f->path[2], "SELECT count(*) FROM chunks WHERE xf & 63 = 63 AND "
                                       "xf >> 16 = 16 AND (first_step > 500 OR last_step < 300)"),
                   raw_int(f->path[2], "SELECT count(*) FROM chunks WHERE "
                                       "first_step > 500 OR last_step < 300"));
  assert_true(raw_int(f->path[2], "SELECT count(*) FROM chunks WHERE xf & 63 = 63") >= 2 * NTAG);
  assert_true(raw_int(f->path[2], "SELECT count(*) FROM chunks WHERE xf & 63 != 63") >= NTAG);
  close_all(f);
  open_all(f, 0); /* and again from the files */
  compare(f, 8);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(same_answers, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(engine_predicted, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(migrate_v2, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(full_resolution, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(corrupt_chunk, fx_setup, fx_teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
