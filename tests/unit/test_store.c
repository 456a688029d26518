/* test_store.c — the SQLite store: round trips, listings, series and their
 * min/max downsampling (against a brute-force reference written here),
 * store_every, durability across reopen, schema versions and the in-place
 * migration of a version 1 database (written here from the version 1 SQL),
 * queue overflow, injected disk faults (SQLITE_FULL, SQLITE_IOERR, a
 * mid-batch failure, one inside a new incarnation's batch) and recovery,
 * retention by receive time, max_db_mb, concurrent readers, alerts,
 * sketches; segments per incarnation (the crash/resume scenario, visibility
 * against an independent computation on random layouts), duplicates never
 * overwriting, restart events, run states, engine state save/resume/clear,
 * replay. Independent checks read the database file with plain SQLite and
 * decode the documented blob format byte by byte. Files live under /tmp and
 * are removed.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>
#include <sqlite3.h>

#include "chunk.h"
#include "log.h"
#include "store.h"

/* ---------------------------------------------------------------- helpers */

typedef struct {
  char path[256];
  gw_stats_t stats;
  gw_store_t *st;
} fx_t;

static int fx_setup(void **state) {
  static atomic_int counter;
  fx_t *f = calloc(1, sizeof *f);
  if (!f) return -1;
  snprintf(f->path, sizeof f->path, "/tmp/gw_test_store_%d_%d.db", (int)getpid(),
           atomic_fetch_add(&counter, 1));
  *state = f;
  return 0;
}

static void rm_db(const char *path) {
  char p[300];
  unlink(path);
  snprintf(p, sizeof p, "%s-wal", path);
  unlink(p);
  snprintf(p, sizeof p, "%s-shm", path);
  unlink(p);
}

static int fx_teardown(void **state) {
  fx_t *f = *state;
  gw_store_close(f->st);
  rm_db(f->path);
  free(f);
  return 0;
}

static void cfg_init(gw_store_config_t *c, const char *path) {
  gw_store_config_default(c);
  c->path = path;
  c->flush_ms = 20;
}

static void open_ok(fx_t *f, const gw_store_config_t *c) {
  assert_int_equal(gw_store_open(&f->st, c, &f->stats), 0);
  assert_non_null(f->st);
}

static uint64_t splitmix(uint64_t *x) {
  uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static double unif(uint64_t *x) { return (double)(splitmix(x) >> 11) * 0x1p-53; }

/* A point with every field set from (sid, n), NANs in a few patterns. */
static gw_point_t mkpoint(uint32_t sid, uint64_t n, uint64_t step, int64_t wall) {
  gw_point_t p;
  uint64_t x = (uint64_t)sid * 1000003u + n;
  memset(&p, 0, sizeof p);
  p.stream_id = sid;
  p.n = n;
  p.step = step;
  p.wall_ns = wall;
  p.recv_ns = wall; /* receive time = publisher time unless a test says otherwise */
  p.window_len = (uint32_t)(n < 64 ? n : 64);
  p.path_onestep = unif(&x) * 100;
  p.path_ema = unif(&x) * 100;
  p.kappa_onestep = n % 7 == 0 ? NAN : unif(&x) * 3;
  p.kappa_ema = n % 7 == 0 ? NAN : unif(&x) * 2 - 1e-300;
  p.kappa_onestep_cum = unif(&x) / 3;
  p.kappa_ema_cum = n % 9 == 0 ? NAN : -unif(&x);
  p.rank_90 = (uint32_t)(n % 13);
  p.rank_99 = (uint32_t)(n % 17);
  p.stable_rank = n % 11 == 0 ? NAN : 1 + unif(&x) * 10;
  for (int i = 0; i < GW_TOP_SIGMA; i++) {
    p.tail_energy[i] = n % 11 == 0 ? NAN : unif(&x);
    p.sigma[i] = unif(&x) * 1e6;
  }
  p.rank_step = step;
  p.grad_norm = n % 5 == 0 ? NAN : unif(&x) * 50;
  p.loss = n % 3 == 0 ? NAN : unif(&x);
  p.lr = n % 2 == 0 ? NAN : 1e-3 * unif(&x);
  p.sketch_norm = unif(&x) * 7;
  return p;
}

static int same_double(double a, double b) {
  return (isnan(a) && isnan(b)) || memcmp(&a, &b, sizeof a) == 0;
}

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Open (declare) a stream as ingest does: a version-1 publisher (incarnation 0). */
static int declare(gw_store_t *st, uint32_t sid, const char *run, const char *tag, uint32_t k,
                   uint8_t kind, uint8_t sp, uint64_t seed) {
  gw_stream_ref_t ref = {sid, run, tag, k, kind, sp, seed, 0};
  gw_open_t o = {GW_OPEN_NEW, 0, 0}; /* no receive time: last_seen comes from points */
  return gw_store_open_stream(st, sid, &ref, &o);
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static int all_metrics[GW_METRIC_COUNT];

static void init_all_metrics(void) {
  for (int i = 0; i < GW_METRIC_COUNT; i++) all_metrics[i] = i;
}

/* Raw SQLite access to the file, for independent checks. */
static sqlite3 *raw_open(const char *path) {
  sqlite3 *db = NULL;
  assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL),
                   SQLITE_OK);
  sqlite3_busy_timeout(db, 5000);
  return db;
}

static int64_t raw_int(sqlite3 *db, const char *sql) {
  sqlite3_stmt *s = NULL;
  int64_t v = -1;
  assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &s, NULL), SQLITE_OK);
  if (sqlite3_step(s) == SQLITE_ROW) v = sqlite3_column_int64(s, 0);
  sqlite3_finalize(s);
  return v;
}

static void raw_text(sqlite3 *db, const char *sql, char *out, size_t cap) {
  sqlite3_stmt *s = NULL;
  out[0] = 0;
  assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &s, NULL), SQLITE_OK);
  if (sqlite3_step(s) == SQLITE_ROW && sqlite3_column_text(s, 0))
    snprintf(out, cap, "%s", (const char *)sqlite3_column_text(s, 0));
  sqlite3_finalize(s);
}

/* Decode float64 number m of a blob as the header documents (LE). */
static double blob_le(const unsigned char *v, int m) {
  uint64_t u = 0;
  double d;
  for (int i = 7; i >= 0; i--) u = (u << 8) | v[8 * m + i];
  memcpy(&d, &u, 8);
  return d;
}

/* Every stored point: the rows of the points table and the sealed chunks. */
#define RAW_ALL_POINTS                                                   \
  "SELECT (SELECT count(*) FROM points) + (SELECT coalesce(sum(n), 0) FROM chunks)"

/* Every stored stream's `points` equals its real point count (rows plus
 * chunked points), every chunk decodes to n points within its step range,
 * chunks do not overlap, and every row lies above its segment's chunks. */
static void raw_check_counts(const char *path) {
  sqlite3 *db = raw_open(path);
  sqlite3_stmt *q;
  char ok[64];
  int64_t prev_seg = -1, prev_last = INT64_MIN;
  assert_int_equal(raw_int(db, "SELECT count(*) FROM streams s WHERE s.points != "
                               "(SELECT count(*) FROM points p WHERE p.stream = s.id) + "
                               "(SELECT coalesce(sum(n), 0) FROM chunks c WHERE c.stream = s.id)"),
                   0);
  assert_int_equal(raw_int(db, "SELECT count(*) FROM points p WHERE p.step <= "
                               "(SELECT max(last_step) FROM chunks c WHERE c.stream = p.stream)"),
                   0);
  assert_int_equal(sqlite3_prepare_v2(db, "SELECT stream, first_step, last_step, n, blob "
                                          "FROM chunks ORDER BY stream, first_step",
                                      -1, &q, NULL),
                   SQLITE_OK);
  while (sqlite3_step(q) == SQLITE_ROW) {
    uint64_t *steps;
    double *vals;
    size_t n, nc;
    int64_t seg = sqlite3_column_int64(q, 0), first = sqlite3_column_int64(q, 1),
            last = sqlite3_column_int64(q, 2);
    assert_int_equal(gw_chunk_decode(sqlite3_column_blob(q, 4),
                                     (size_t)sqlite3_column_bytes(q, 4), &steps, &vals, &n, &nc),
                     0);
    assert_int_equal(n, sqlite3_column_int64(q, 3));
    assert_int_equal(nc, GW_METRIC_COUNT);
    assert_true(n > 0);
    assert_int_equal((int64_t)steps[0], first);
    assert_int_equal((int64_t)steps[n - 1], last);
    for (size_t i = 1; i < n; i++) assert_true(steps[i] > steps[i - 1]);
    if (seg == prev_seg) assert_true(first > prev_last);
    prev_seg = seg;
    prev_last = last;
    free(steps);
    free(vals);
  }
  sqlite3_finalize(q);
  raw_text(db, "PRAGMA integrity_check", ok, sizeof ok);
  assert_string_equal(ok, "ok");
  sqlite3_close(db);
}

typedef struct {
  atomic_int op, code, after, calls, once;
} fault_t;

static int fault_cb(void *arg, int op) {
  fault_t *f = arg;
  int c = atomic_load(&f->code);
  if (!c || op != atomic_load(&f->op)) return 0;
  if (atomic_fetch_sub(&f->after, 1) > 0) return 0;
  atomic_fetch_add(&f->calls, 1);
  if (atomic_load(&f->once)) atomic_store(&f->code, 0);
  return c;
}

/* The store's log lines, captured through a real gw_log_t on a file. */
typedef struct {
  char path[280];
  gw_log_t log;
} logcap_t;

static void logcap_open(logcap_t *l, const char *db_path) {
  snprintf(l->path, sizeof l->path, "%s.log", db_path);
  unlink(l->path);
  assert_int_equal(gw_log_init(&l->log, l->path, "info"), 0);
}

/* 1 if the log holds s. */
static int logcap_has(logcap_t *l, const char *s) {
  char buf[8192];
  size_t n;
  FILE *fp;
  fflush(l->log.f);
  fp = fopen(l->path, "r");
  if (!fp) return 0;
  n = fread(buf, 1, sizeof buf - 1, fp);
  fclose(fp);
  buf[n] = '\0';
  return strstr(buf, s) != NULL;
}

static void logcap_close(logcap_t *l) {
  gw_log_close(&l->log);
  unlink(l->path);
}

/* ------------------------------------------------------------------ tests */

static void roundtrip_points(void **state) {
  fx_t *f = *state;
  gw_store_config_t c;
  gw_point_t *pts = calloc(600, sizeof *pts);
  gw_series_t s;
  sqlite3 *db;
  sqlite3_stmt *q;
  int64_t t0 = now_ns();
  assert_non_null(pts);
  cfg_init(&c, f->path);
  open_ok(f, &c);
  assert_int_equal(declare(f->st, 0, "runA", "all", 256, 1, 4,
                                       0xdeadbeefcafebabeull), 0);
  assert_int_equal(declare(f->st, 1, "runA", "layer1.weight", 128, 2, 0, 7), 0);
  for (int i = 0; i < 600; i++) {
    uint32_t sid = (uint32_t)(i % 2);
    uint64_t n = (uint64_t)(i / 2) + 1;
    pts[i] = mkpoint(sid, n, 10 * n, t0 + (int64_t)n * 1000000);
    assert_int_equal(gw_store_put_point(f->st, &pts[i]), 0);
  }
  assert_int_equal(gw_store_flush(f->st), 0);
  assert_int_equal(gw_stats_get(&f->stats.store_written), 600);
  assert_int_equal(gw_stats_get(&f->stats.store_queue_depth), 0);

  for (uint32_t sid = 0; sid < 2; sid++) {
    assert_int_equal(gw_store_series(f->st, "runA", sid ? "layer1.weight" : "all",
                                     all_metrics, GW_METRIC_COUNT, 0, UINT64_MAX, 0, &s, 0),
                     0);
    assert_int_equal(s.n, 300);
    assert_int_equal(s.n_metrics, GW_METRIC_COUNT);
    assert_false(s.downsampled);
    for (size_t r = 0; r < s.n; r++) {
      const gw_point_t *p = &pts[2 * r + sid];
      assert_int_equal(s.step[r], p->step);
      for (int m = 0; m < GW_METRIC_COUNT; m++)
        if (!same_double(s.cols[m][r], gw_point_get(p, m)))
          fail_msg("stream %u row %zu metric %s: %.17g != %.17g", sid, r,
                   gw_metric_name(m), s.cols[m][r], gw_point_get(p, m));
    }
    gw_store_series_free(&s);
  }

  /* The file, read with plain SQLite and decoded as documented: the
   * sealed chunks (chunk.h) in step order, then the rows. */
  db = raw_open(f->path);
  {
    uint64_t *rs = calloc(300, sizeof *rs);
    double *rv = calloc(300 * GW_METRIC_COUNT, sizeof *rv);
    size_t got = 0;
    assert_non_null(rs);
    assert_non_null(rv);
    assert_int_equal(sqlite3_prepare_v2(db,
                                        "SELECT c.blob FROM chunks c JOIN streams s "
                                        "ON s.id = c.stream WHERE s.tag = 'all' ORDER BY c.first_step",
                                        -1, &q, NULL),
                     SQLITE_OK);
    while (sqlite3_step(q) == SQLITE_ROW) {
      uint64_t *cs;
      double *cv;
      size_t cn, nc;
      assert_int_equal(gw_chunk_decode(sqlite3_column_blob(q, 0),
                                       (size_t)sqlite3_column_bytes(q, 0), &cs, &cv, &cn, &nc),
                       0);
      assert_int_equal(nc, GW_METRIC_COUNT);
      assert_true(got + cn <= 300);
      memcpy(rs + got, cs, cn * sizeof *cs);
      memcpy(rv + got * GW_METRIC_COUNT, cv, cn * GW_METRIC_COUNT * sizeof *cv);
      got += cn;
      free(cs);
      free(cv);
    }
    sqlite3_finalize(q);
    assert_int_equal(got, 256); /* one full chunk sealed, the rest rows */
    assert_int_equal(sqlite3_prepare_v2(db,
                                        "SELECT p.step, p.v FROM points p JOIN streams s "
                                        "ON s.id = p.stream WHERE s.tag = 'all' ORDER BY p.step",
                                        -1, &q, NULL),
                     SQLITE_OK);
    while (sqlite3_step(q) == SQLITE_ROW) {
      const unsigned char *v = sqlite3_column_blob(q, 1);
      assert_true(got < 300);
      assert_int_equal(sqlite3_column_bytes(q, 1), GW_METRIC_COUNT * 8);
      rs[got] = (uint64_t)sqlite3_column_int64(q, 0);
      for (int m = 0; m < GW_METRIC_COUNT; m++) rv[got * GW_METRIC_COUNT + m] = blob_le(v, m);
      got++;
    }
    sqlite3_finalize(q);
    assert_int_equal(got, 300);
    for (int r = 0; r < 300; r++) {
      const double *v = rv + (size_t)r * GW_METRIC_COUNT;
      assert_int_equal(rs[r], pts[2 * r].step);
      assert_true(same_double(v[GW_METRIC_KAPPA_EMA], pts[2 * r].kappa_ema));
      assert_true(same_double(v[GW_METRIC_SIGMA_8], pts[2 * r].sigma[7]));
      assert_true(same_double(v[GW_METRIC_LOSS], pts[2 * r].loss));
      assert_true(same_double(v[GW_METRIC_RANK_90], (double)pts[2 * r].rank_90));
      for (int m = 0; m < GW_METRIC_COUNT; m++)
        assert_true(same_double(v[m], gw_point_get(&pts[2 * r], m)));
    }
    free(rs);
    free(rv);
  }
  /* seed >= 2^63 survives the signed column */
  assert_int_equal((uint64_t)raw_int(db, "SELECT seed FROM streams WHERE tag = 'all'"),
                   0xdeadbeefcafebabeull);
  sqlite3_close(db);
  assert_int_equal(gw_store_integrity_check(f->st), 0);
  free(pts);
}

static void listings(void **state) {
  fx_t *f = *state;
  gw_store_config_t c;
  gw_store_run_t *runs;
  gw_store_stream_t *ss;
  gw_series_t s;
  size_t n;
  uint64_t rows;
  int64_t t0 = 1700000000000000000LL;
  sqlite3 *db;
  cfg_init(&c, f->path);
  open_ok(f, &c);
  assert_int_equal(declare(f->st, 3, "alpha", "all", 256, 1, 4, 11), 0);
  assert_int_equal(declare(f->st, 4, "alpha", "x", 64, 2, 0, 12), 0);
  assert_int_equal(declare(f->st, 5, "beta", "all", 32, 1, 1, 13), 0);
  assert_int_equal(declare(f->st, 6, "gamma", "idle", 16, 1, 2, 14), 0);
  for (uint64_t i = 0; i < 10; i++) {
    gw_point_t p = mkpoint(3, i + 1, 5 + 5 * i, t0 + (int64_t)i);
    assert_int_equal(gw_store_put_point(f->st, &p), 0);
    p = mkpoint(4, i + 1, 100 + i, t0 + 1000 + (int64_t)i);
    assert_int_equal(gw_store_put_point(f->st, &p), 0);
  }
  for (uint64_t i = 1; i <= 3; i++) {
    gw_point_t p = mkpoint(5, i, i, t0 + 5000 + (int64_t)i);
    assert_int_equal(gw_store_put_point(f->st, &p), 0);
  }
  assert_int_equal(gw_store_flush(f->st), 0);

  assert_int_equal(gw_store_runs(f->st, now_ns(), 60000000000LL, &runs, &n), 0);
  assert_int_equal(n, 3);
  assert_string_equal(runs[0].run, "alpha");
  assert_int_equal(runs[0].streams, 2);
  assert_int_equal(runs[0].first_step, 5);
  assert_int_equal(runs[0].last_step, 109);
  assert_int_equal(runs[0].last_seen_ns, t0 + 1009);
  assert_string_equal(runs[1].run, "beta");
  assert_int_equal(runs[1].streams, 1);
  assert_int_equal(runs[1].first_step, 1);
  assert_int_equal(runs[1].last_step, 3);
  assert_int_equal(runs[1].last_seen_ns, t0 + 5003);
  assert_string_equal(runs[2].run, "gamma"); /* declared, no point yet */
  assert_int_equal(runs[2].streams, 1);
  assert_int_equal(runs[2].last_step, 0);
  gw_store_runs_free(runs, n);

  assert_int_equal(gw_store_streams(f->st, "alpha", &ss, &n), 0);
  assert_int_equal(n, 2);
  assert_string_equal(ss[0].tag, "all");
  assert_int_equal(ss[0].k, 256);
  assert_int_equal(ss[0].points, 10);
  assert_int_equal(ss[0].first_step, 5);
  assert_int_equal(ss[0].last_step, 50);
  assert_int_equal(ss[0].last_seen_ns, t0 + 9);
  assert_int_equal(ss[0].kind, 1);
  assert_int_equal(ss[0].s, 4);
  assert_int_equal(ss[0].seed, 11);
  assert_string_equal(ss[1].tag, "x");
  assert_int_equal(ss[1].k, 64);
  assert_int_equal(ss[1].points, 10);
  assert_int_equal(ss[1].first_step, 100);
  assert_int_equal(ss[1].last_step, 109);
  gw_store_streams_free(ss, n);

  assert_int_equal(gw_store_streams(f->st, "nope", &ss, &n), GW_ENOTFOUND);
  assert_null(ss);
  assert_int_equal(gw_store_series(f->st, "alpha", "nope", all_metrics, 1, 0, 10, 0, &s, 0),
                   GW_ENOTFOUND);
  assert_int_equal(gw_store_series(f->st, "nope", "all", all_metrics, 1, 0, 10, 0, &s, 0),
                   GW_ENOTFOUND);
  assert_int_equal(s.n, 0);
  assert_int_equal(gw_store_row_count(f->st, &rows), 0);
  assert_int_equal(rows, 23);
  db = raw_open(f->path);
  assert_int_equal(raw_int(db, RAW_ALL_POINTS), 23);
  assert_int_equal(raw_int(db, "SELECT count(*) FROM runs"), 3);
  sqlite3_close(db);
  assert_int_equal(gw_store_integrity_check(f->st), 0);
}

static void series_range(void **state) {
  fx_t *f = *state;
  gw_store_config_t c;
  static const struct {
    uint64_t from, to;
  } ranges[] = {{0, UINT64_MAX}, {30, 60}, {31, 59}, {3000, 3000}, {2999, 2999},
                {5000, 6000},    {0, 2},   {60, 30},  {UINT64_MAX - 1, UINT64_MAX}};
  int metrics[2] = {GW_METRIC_KAPPA_ONESTEP, GW_METRIC_RANK_99};
  cfg_init(&c, f->path);
  open_ok(f, &c);
  assert_int_equal(declare(f->st, 0, "r", "t", 8, 1, 1, 1), 0);
  for (uint64_t n = 1; n <= 1000; n++) {
    gw_point_t p = mkpoint(0, n, 3 * n, (int64_t)n);
    assert_int_equal(gw_store_put_point(f->st, &p), 0);
  }
  assert_int_equal(gw_store_flush(f->st), 0);
  for (size_t r = 0; r < sizeof ranges / sizeof ranges[0]; r++) {
    gw_series_t s;
    size_t want = 0;
    assert_int_equal(gw_store_series(f->st, "r", "t", metrics, 2, ranges[r].from,
                                     ranges[r].to, 0, &s, 0),
                     0);
    for (uint64_t n = 1; n <= 1000; n++) { /* brute force */
      if (3 * n < ranges[r].from || 3 * n > ranges[r].to) continue;
      assert_true(want < s.n);
      assert_int_equal(s.step[want], 3 * n);
      gw_point_t p = mkpoint(0, n, 3 * n, (int64_t)n);
      assert_true(same_double(s.cols[0][want], p.kappa_onestep));
      assert_true(same_double(s.cols[1][want], (double)p.rank_99));
      want++;
    }
    assert_int_equal(s.n, want);
    gw_store_series_free(&s);
  }
  assert_int_equal(gw_store_integrity_check(f->st), 0);
}

/* Reference min/max downsampling, written from the header's words. */
static void check_downsample(fx_t *f, const gw_point_t *pts, size_t npts, uint64_t from,
                             uint64_t to, size_t max_points, const int *metrics,
                             size_t nm) {
  gw_series_t s;
  size_t idx[20000], n = 0;
  for (size_t i = 0; i < npts; i++)
    if (pts[i].step >= from && pts[i].step <= to) idx[n++] = i;
  assert_int_equal(gw_store_series(f->st, "r", "d", metrics, nm, from, to, max_points, &s, 0),
                   0);
  if (n <= max_points) {
    assert_false(s.downsampled);
    assert_int_equal(s.n, n);
    gw_store_series_free(&s);
    return;
  }
  size_t B = max_points / 2;
  assert_true(s.downsampled);
  assert_int_equal(s.n, 2 * B);
  assert_true(s.n <= max_points);
  for (size_t b = 0; b < B; b++) {
    size_t lo = b * n / B, hi = (b + 1) * n / B; /* n, B small: no overflow */
    assert_true(hi - lo >= 2);
    assert_int_equal(s.step[2 * b], pts[idx[lo]].step);
    assert_int_equal(s.step[2 * b + 1], pts[idx[hi - 1]].step);
    for (size_t m = 0; m < nm; m++) {
      double mn = NAN, mx = NAN;
      for (size_t i = lo; i < hi; i++) {
        double v = gw_point_get(&pts[idx[i]], metrics[m]);
        if (isnan(v)) continue;
        if (isnan(mn) || v < mn) mn = v;
        if (isnan(mx) || v > mx) mx = v;
      }
      if (!same_double(s.cols[m][2 * b], mn) || !same_double(s.cols[m][2 * b + 1], mx))
        fail_msg("bucket %zu metric %d: got %g/%g want %g/%g", b, metrics[m],
                 s.cols[m][2 * b], s.cols[m][2 * b + 1], mn, mx);
    }
  }
  for (size_t m = 0; m < nm; m++) { /* global extremes survive */
    double gmn = NAN, gmx = NAN, smn = NAN, smx = NAN;
    for (size_t i = 0; i < n; i++) {
      double v = gw_point_get(&pts[idx[i]], metrics[m]);
      if (!isnan(v) && (isnan(gmn) || v < gmn)) gmn = v;
      if (!isnan(v) && (isnan(gmx) || v > gmx)) gmx = v;
    }
    for (size_t r = 0; r < s.n; r++) {
      double v = s.cols[m][r];
      if (!isnan(v) && (isnan(smn) || v < smn)) smn = v;
      if (!isnan(v) && (isnan(smx) || v > smx)) smx = v;
    }
    assert_true(same_double(gmn, smn));
    assert_true(same_double(gmx, smx));
  }
  gw_store_series_free(&s);
}

static void downsampling(void **state) {
  fx_t *f = *state;
  gw_store_config_t c;
  enum { NPTS = 5003 };
  gw_point_t *pts = calloc(NPTS, sizeof *pts);
  int metrics[5] = {GW_METRIC_KAPPA_EMA, GW_METRIC_LOSS, GW_METRIC_SIGMA_1,
                    GW_METRIC_RANK_90, GW_METRIC_GRAD_NORM};
  gw_series_t s;
  assert_non_null(pts);
  cfg_init(&c, f->path);
  open_ok(f, &c);
  assert_int_equal(declare(f->st, 0, "r", "d", 8, 1, 1, 1), 0);
  for (size_t i = 0; i < NPTS; i++) {
    pts[i] = mkpoint(0, i + 1, 2 * i + 7, (int64_t)i);
    if (i >= 1000 && i < 1400) pts[i].loss = NAN; /* whole null buckets */
    assert_int_equal(gw_store_put_point(f->st, &pts[i]), 0);
  }
  assert_int_equal(gw_store_flush(f->st), 0);
  check_downsample(f, pts, NPTS, 0, UINT64_MAX, 100, metrics, 5);
  check_downsample(f, pts, NPTS, 0, UINT64_MAX, 101, metrics, 5);
  check_downsample(f, pts, NPTS, 0, UINT64_MAX, 2, metrics, 5);
  check_downsample(f, pts, NPTS, 0, UINT64_MAX, 9999, metrics, 5);
  check_downsample(f, pts, NPTS, 500, 3000, 64, metrics, 5);
  check_downsample(f, pts, NPTS, 500, 3000, 1247, metrics, 5);
  check_downsample(f, pts, NPTS, 0, UINT64_MAX, NPTS, metrics, 5);
  /* a bucket entirely null in `loss` stays null */
  assert_int_equal(gw_store_series(f->st, "r", "d", metrics, 5, 0, UINT64_MAX, 100, &s, 0), 0);
  {
    int nulls = 0;
    for (size_t r = 0; r < s.n; r++) nulls += isnan(s.cols[1][r]);
    assert_true(nulls >= 2);
  }
  gw_store_series_free(&s);
  assert_int_equal(gw_store_series(f->st, "r", "d", metrics, 5, 0, UINT64_MAX, 1, &s, 0),
                   GW_EINVAL);
  {
    int bad = GW_METRIC_COUNT;
    assert_int_equal(gw_store_series(f->st, "r", "d", &bad, 1, 0, UINT64_MAX, 0, &s, 0),
                     GW_EINVAL);
    bad = -1;
    assert_int_equal(gw_store_series(f->st, "r", "d", &bad, 1, 0, UINT64_MAX, 0, &s, 0),
                     GW_EINVAL);
  }
  assert_int_equal(gw_store_integrity_check(f->st), 0);
  free(pts);
}

static void store_every(void **state) {
  fx_t *f = *state;
  gw_store_config_t c;
  gw_series_t s;
  static const uint64_t want[] = {1, 4, 8, 12, 16, 20, 21, 24};
  cfg_init(&c, f->path);
  c.store_every = 4;
  open_ok(f, &c);
  assert_int_equal(declare(f->st, 2, "r", "e", 8, 1, 1, 1), 0);
  for (uint64_t n = 1; n <= 20; n++) {
    gw_point_t p = mkpoint(2, n, 100 + n, (int64_t)n);
    assert_int_equal(gw_store_put_point(f->st, &p), 0);
  }
  /* re-declaration (daemon restart, id reuse): its first point is kept */
  assert_int_equal(declare(f->st, 2, "r", "e", 8, 1, 1, 1), 0);
  for (uint64_t n = 21; n <= 24; n++) {
    gw_point_t p = mkpoint(2, n, 100 + n, (int64_t)n);
    assert_int_equal(gw_store_put_point(f->st, &p), 0);
  }
  assert_int_equal(gw_store_flush(f->st), 0);
  assert_int_equal(gw_store_series(f->st, "r", "e", all_metrics, 1, 0, UINT64_MAX, 0, &s, 0), 0);
  assert_int_equal(s.n, sizeof want / sizeof want[0]);
  for (size_t i = 0; i < s.n; i++) assert_int_equal(s.step[i], 100 + want[i]);
  gw_store_series_free(&s);
  assert_int_equal(gw_stats_get(&f->stats.store_dropped), 0);
  assert_int_equal(gw_store_integrity_check(f->st), 0);
}

/* Run metadata: latest wins per run, a run with metadata and no point is
 * listed, it survives a reopen, and a version 2 database gains the table. */
static void run_metadata(void **state) {
  fx_t *f = *state;
  gw_store_config_t c;
  gw_store_run_t *runs;
  size_t n;
  sqlite3 *db;
  char text[256];
  cfg_init(&c, f->path);
  open_ok(f, &c);
  gw_run_meta_t m = {.run = "mr", .incarnation = UINT64_MAX, .wall_ns = -5, .recv_ns = 77,
                     .doc = "{\"tags\":[\"a\"]}"};
  assert_int_equal(gw_store_put_meta(f->st, &m), 0);
  m.doc = "{\"tags\":[\"b\"]}";
  m.recv_ns = 78;
  assert_int_equal(gw_store_put_meta(f->st, &m), 0);
  gw_run_meta_t bad = {.run = "", .doc = "{}"};
  assert_int_equal(gw_store_put_meta(f->st, &bad), GW_EINVAL);
  bad.run = "x";
  bad.doc = NULL;
  assert_int_equal(gw_store_put_meta(f->st, &bad), GW_EINVAL);
  assert_int_equal(gw_store_flush(f->st), 0);
  for (int round = 0; round < 2; round++) {
    assert_int_equal(gw_store_runs(f->st, 100, 10, &runs, &n), 0);
    assert_int_equal(n, 1);
    assert_string_equal(runs[0].run, "mr");
    assert_int_equal(runs[0].streams, 0);
    assert_string_equal(runs[0].meta, "{\"tags\":[\"b\"]}");
    assert_true(runs[0].meta_incarnation == UINT64_MAX);
    assert_int_equal(runs[0].meta_wall_ns, -5);
    assert_int_equal(runs[0].meta_recv_ns, 78);
    gw_store_runs_free(runs, n);
    gw_store_close(f->st);
    f->st = NULL;
    open_ok(f, &c);
  }
  gw_store_close(f->st);
  f->st = NULL;
  /* make it a version 3 database (no run_meta), then open: migrated */
  db = raw_open(f->path);
  assert_int_equal(sqlite3_exec(db, "DROP TABLE run_meta; PRAGMA user_version = 3;", NULL, NULL, NULL),
                   SQLITE_OK);
  sqlite3_close(db);
  open_ok(f, &c);
  assert_int_equal(gw_store_runs(f->st, 100, 10, &runs, &n), 0);
  assert_int_equal(n, 1);
  assert_null(runs[0].meta);
  gw_store_runs_free(runs, n);
  assert_int_equal(gw_store_put_meta(f->st, &m), 0);
  assert_int_equal(gw_store_flush(f->st), 0);
  db = raw_open(f->path);
  assert_int_equal(raw_int(db, "PRAGMA user_version"), GW_STORE_SCHEMA_VERSION);
  raw_text(db, "SELECT doc FROM run_meta", text, sizeof text);
  assert_string_equal(text, "{\"tags\":[\"b\"]}");
  sqlite3_close(db);
  assert_int_equal(gw_store_integrity_check(f->st), 0);
}

static void durability_reopen(void **state) {
  fx_t *f = *state;
  gw_store_config_t c;
  gw_store_stream_t *ss;
  gw_series_t s;
  size_t n;
  uint64_t rows;
  sqlite3 *db;
  char mode[32];
  cfg_init(&c, f->path);
  c.flush_ms = 60000; /* only close commits */
  open_ok(f, &c);
  for (uint32_t sid = 0; sid < 3; sid++) {
    char tag[8];
    snprintf(tag, sizeof tag, "t%u", sid);
    assert_int_equal(declare(f->st, sid, "dur", tag, 8, 1, 1, sid), 0);
  }
  for (uint64_t i = 0; i < 999; i++) {
    gw_point_t p = mkpoint((uint32_t)(i % 3), i / 3 + 1, i / 3 + 1, (int64_t)i);
    assert_int_equal(gw_store_put_point(f->st, &p), 0);
  }
  gw_store_close(f->st); /* no flush: close commits everything */
  f->st = NULL;

  db = raw_open(f->path);
  assert_int_equal(raw_int(db, "PRAGMA user_version"), GW_STORE_SCHEMA_VERSION);
  assert_int_equal(raw_int(db, "PRAGMA auto_vacuum"), 2); /* incremental */
  raw_text(db, "PRAGMA journal_mode", mode, sizeof mode);
  assert_string_equal(mode, "wal");
  assert_int_equal(raw_int(db, RAW_ALL_POINTS), 999);
  sqlite3_close(db);

  c.flush_ms = 20;
  open_ok(f, &c);
  assert_int_equal(gw_store_row_count(f->st, &rows), 0);
  assert_int_equal(rows, 999);
  /* the same run/tag after a restart continues the same stream */
  assert_int_equal(declare(f->st, 9, "dur", "t1", 8, 1, 1, 1), 0);
  {
    gw_point_t p = mkpoint(9, 1000, 1000, 5);
    assert_int_equal(gw_store_put_point(f->st, &p), 0);
  }
  assert_int_equal(gw_store_flush(f->st), 0);
  assert_int_equal(gw_store_streams(f->st, "dur", &ss, &n), 0);
  assert_int_equal(n, 3);
  assert_string_equal(ss[1].tag, "t1");
  assert_int_equal(ss[1].points, 334);
  assert_int_equal(ss[1].first_step, 1);
  assert_int_equal(ss[1].last_step, 1000);
  gw_store_streams_free(ss, n);
  assert_int_equal(gw_store_series(f->st, "dur", "t2", all_metrics, GW_METRIC_COUNT, 0,
                                   UINT64_MAX, 0, &s, 0),
                   0);
  assert_int_equal(s.n, 333);
  for (size_t r = 0; r < s.n; r++) {
    gw_point_t p = mkpoint(2, r + 1, r + 1, (int64_t)(3 * r + 2));
    for (int m = 0; m < GW_METRIC_COUNT; m++)
      assert_true(same_double(s.cols[m][r], gw_point_get(&p, m)));
  }
  gw_store_series_free(&s);
  assert_int_equal(gw_store_integrity_check(f->st), 0);
}

/* docs/CONTRACT.md §9: a kill -9 loses at most what was not yet committed. A child
 * writes points and reports each step it has flushed; the parent kills it
 * mid-stream and finds every reported point, and a sound database. */
static void kill9_durability(void **state) {
  fx_t *f = *state;
  gw_store_config_t c;
  gw_series_t s;
  int fds[2];
  uint64_t reported = 0, got;
  pid_t pid;
  cfg_init(&c, f->path);
  assert_int_equal(pipe(fds), 0);
  pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    gw_stats_t stats;
    gw_store_t *st = NULL;
    close(fds[0]);
    memset(&stats, 0, sizeof stats);
    if (gw_store_open(&st, &c, &stats) ||
        declare(st, 0, "k9", "t", 8, 1, 1, 1))
      _exit(2);
    for (uint64_t n = 1;; n++) {
      gw_point_t p = mkpoint(0, n, n, (int64_t)n);
      if (gw_store_put_point(st, &p)) _exit(3);
      if (n % 50 == 0 && (gw_store_flush(st) ||
                          write(fds[1], &n, sizeof n) != (ssize_t)sizeof n))
        _exit(4);
    }
  }
  close(fds[1]);
  while (reported < 2000 && read(fds[0], &got, sizeof got) == (ssize_t)sizeof got)
    reported = got;
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
  close(fds[0]);
  assert_true(reported >= 2000);
  open_ok(f, &c);
  assert_int_equal(gw_store_series(f->st, "k9", "t", all_metrics, GW_METRIC_COUNT, 0,
                                   UINT64_MAX, 0, &s, 0),
                   0);
  assert_true(s.n >= reported);
  for (size_t i = 0; i < s.n; i++) {
    gw_point_t p = mkpoint(0, i + 1, i + 1, (int64_t)i + 1);
    assert_int_equal(s.step[i], i + 1);
    for (int m = 0; m < GW_METRIC_COUNT; m++)
      assert_true(same_double(s.cols[m][i], gw_point_get(&p, m)));
  }
  gw_store_series_free(&s);
  assert_int_equal(gw_store_integrity_check(f->st), 0);
  gw_store_close(f->st);
  f->st = NULL;
  raw_check_counts(f->path);
}

static void schema_newer_refused(void **state) {
  fx_t *f = *state;
  gw_store_config_t c;
  logcap_t lc;
  gw_store_t *st2 = (gw_store_t *)&lc; /* must be reset to NULL */
  sqlite3 *db;
  char want[64];
  FILE *fp;
  cfg_init(&c, f->path);
  logcap_open(&lc, f->path);
  c.log = &lc.log;
  open_ok(f, &c);
  gw_store_close(f->st);
  f->st = NULL;
  db = raw_open(f->path);
  snprintf(want, sizeof want, "PRAGMA user_version = %d", GW_STORE_SCHEMA_VERSION + 1);
  assert_int_equal(sqlite3_exec(db, want, NULL, NULL, NULL), SQLITE_OK);
  sqlite3_close(db);
  assert_int_equal(gw_store_open(&st2, &c, &f->stats), GW_EDB);
  assert_null(st2);
  snprintf(want, sizeof want, "version=%d supported=%d", GW_STORE_SCHEMA_VERSION + 1,
           GW_STORE_SCHEMA_VERSION);
  assert_true(logcap_has(&lc, want));
  assert_true(logcap_has(&lc, "event=store"));
  assert_true(logcap_has(&lc, "schema newer"));
  db = raw_open(f->path); /* refused without touching it */
  assert_int_equal(raw_int(db, "PRAGMA user_version"), GW_STORE_SCHEMA_VERSION + 1);
  sqlite3_close(db);
  rm_db(f->path);

  /* a foreign SQLite database */
  db = raw_open(f->path);
  assert_int_equal(sqlite3_exec(db, "CREATE TABLE foo(x)", NULL, NULL, NULL), SQLITE_OK);
  sqlite3_close(db);
  assert_int_equal(gw_store_open(&st2, &c, &f->stats), GW_EDB);
  assert_true(logcap_has(&lc, "not a gradwatch database"));
  rm_db(f->path);

  /* not a database at all */
  fp = fopen(f->path, "wb");
  assert_non_null(fp);
  for (int i = 0; i < 4096; i++) fputc(i * 7, fp);
  fclose(fp);
  assert_int_equal(gw_store_open(&st2, &c, &f->stats), GW_EDB);
  assert_null(st2);
  logcap_close(&lc);
}

static void queue_full(void **state) {
  fx_t *f = *state;
  gw_store_config_t c;
  fault_t ft = {0};
  uint64_t rows;
  int ok = 0, full = 0;
  atomic_store(&ft.op, GW_STORE_OP_BEGIN);
  atomic_store(&ft.code, SQLITE_BUSY);
  cfg_init(&c, f->path);
  c.queue_max = 100;
  c.fault = fault_cb;
  c.fault_arg = &ft;
  open_ok(f, &c);
  assert_int_equal(declare(f->st, 0, "q", "t", 8, 1, 1, 1), 0);
  for (uint64_t n = 1; n <= 150; n++) {
    gw_point_t p = mkpoint(0, n, n, 1);
    int rc = gw_store_put_point(f->st, &p);
    if (rc == 0) ok++;
    else if (rc == GW_EFULL) full++;
    else fail_msg("unexpected %d", rc);
  }
  /* the declaration is one of the 100 records; nothing can commit */
  assert_int_equal(ok, 99);
  assert_int_equal(full, 51);
  assert_int_equal(gw_stats_get(&f->stats.store_dropped), 51);
  assert_int_equal(gw_stats_get(&f->stats.store_queue_depth), 100);
  assert_int_equal(gw_store_flush(f->st), GW_EDB); /* SQLITE_BUSY */
  assert_int_equal(atomic_load(&f->stats.store_last_error), GW_EDB);
  atomic_store(&ft.code, 0);
  assert_int_equal(gw_store_flush(f->st), 0);
  assert_int_equal(gw_store_row_count(f->st, &rows), 0);
  assert_int_equal(rows, 99);
  assert_int_equal(gw_stats_get(&f->stats.store_queue_depth), 0);
  assert_int_equal(atomic_load(&f->stats.store_last_error), 0);
  assert_int_equal(gw_store_integrity_check(f->st), 0);
}

/* Inject `code` at `op` after a healthy start; ingest keeps queueing;
 * clearing the fault lands everything. */
static void fault_then_recover(fx_t *f, int op, int code, int want_err) {
  gw_store_config_t c;
  fault_t ft = {0};
  gw_series_t s;
  uint64_t rows, errs;
  cfg_init(&c, f->path);
  c.fault = fault_cb;
  c.fault_arg = &ft;
  open_ok(f, &c);
  assert_int_equal(declare(f->st, 0, "f", "a", 8, 1, 1, 1), 0);
  assert_int_equal(declare(f->st, 1, "f", "b", 8, 1, 1, 1), 0);
  for (uint64_t n = 1; n <= 50; n++) {
    gw_point_t p = mkpoint((uint32_t)(n % 2), n, n, 1);
    assert_int_equal(gw_store_put_point(f->st, &p), 0);
  }
  assert_int_equal(gw_store_flush(f->st), 0);
  assert_int_equal(gw_stats_get(&f->stats.store_written), 50);

  atomic_store(&ft.op, op);
  atomic_store(&ft.code, code);
  for (uint64_t n = 51; n <= 250; n++) { /* ingest side keeps working */
    gw_point_t p = mkpoint((uint32_t)(n % 2), n, n, 1);
    assert_int_equal(gw_store_put_point(f->st, &p), 0);
  }
  /* a new stream declared while the disk fails */
  assert_int_equal(declare(f->st, 2, "f2", "c", 8, 1, 1, 1), 0);
  for (uint64_t n = 1; n <= 30; n++) {
    gw_point_t p = mkpoint(2, n, n, 1);
    assert_int_equal(gw_store_put_point(f->st, &p), 0);
  }
  assert_int_equal(gw_store_flush(f->st), want_err);
  assert_int_equal(atomic_load(&f->stats.store_last_error), want_err);
  assert_int_equal(gw_stats_get(&f->stats.store_written), 50);
  assert_int_equal(gw_stats_get(&f->stats.store_queue_depth), 231);
  errs = gw_stats_get(&f->stats.store_errors);
  assert_true(errs >= 1);
  sleep_ms(350); /* the writer retries on its own: 100 ms, then 200 ms */
  assert_true(gw_stats_get(&f->stats.store_errors) > errs);
  assert_int_equal(gw_store_row_count(f->st, &rows), 0);
  assert_int_equal(rows, 50); /* nothing half-written */

  atomic_store(&ft.code, 0);
  assert_int_equal(gw_store_flush(f->st), 0);
  assert_int_equal(atomic_load(&f->stats.store_last_error), 0);
  assert_int_equal(gw_stats_get(&f->stats.store_written), 280);
  assert_int_equal(gw_stats_get(&f->stats.store_queue_depth), 0);
  assert_int_equal(gw_store_row_count(f->st, &rows), 0);
  assert_int_equal(rows, 280);
  assert_int_equal(gw_store_series(f->st, "f", "b", all_metrics, GW_METRIC_COUNT, 0,
                                   UINT64_MAX, 0, &s, 0),
                   0);
  assert_int_equal(s.n, 125);
  for (size_t r = 0; r < s.n; r++) {
    gw_point_t p = mkpoint(1, 2 * r + 1, 2 * r + 1, 1);
    assert_int_equal(s.step[r], 2 * r + 1);
    for (int m = 0; m < GW_METRIC_COUNT; m++)
      assert_true(same_double(s.cols[m][r], gw_point_get(&p, m)));
  }
  gw_store_series_free(&s);
  assert_int_equal(gw_store_series(f->st, "f2", "c", all_metrics, 1, 0, UINT64_MAX, 0, &s, 0), 0);
  assert_int_equal(s.n, 30);
  gw_store_series_free(&s);
  assert_int_equal(gw_store_integrity_check(f->st), 0);
  raw_check_counts(f->path);
}

static void fault_disk_full(void **state) {
  fault_then_recover(*state, GW_STORE_OP_STEP, SQLITE_FULL, -ENOSPC);
}

static void fault_ioerr_commit(void **state) {
  fault_then_recover(*state, GW_STORE_OP_COMMIT, SQLITE_IOERR_WRITE, GW_EIO);
}

static void fault_ioerr_begin(void **state) {
  fault_then_recover(*state, GW_STORE_OP_BEGIN, SQLITE_IOERR_LOCK, GW_EIO);
}

/* One failure in the middle of a batch that also re-declares a stream id:
 * the retry must attribute every point to the stream it was queued for. */
static void fault_mid_batch(void **state) {
  fx_t *f = *state;
  gw_store_config_t c;
  fault_t ft = {0};
  gw_series_t s;
  cfg_init(&c, f->path);
  c.flush_ms = 60000; /* one batch, cut by the flush below */
  c.fault = fault_cb;
  c.fault_arg = &ft;
  open_ok(f, &c);
  assert_int_equal(declare(f->st, 0, "m", "old", 8, 1, 1, 1), 0);
  assert_int_equal(gw_store_flush(f->st), 0);
  for (uint64_t n = 1; n <= 40; n++) {
    gw_point_t p = mkpoint(0, n, n, 1);
    assert_int_equal(gw_store_put_point(f->st, &p), 0);
  }
  assert_int_equal(declare(f->st, 0, "m", "new", 8, 1, 1, 1), 0);
  for (uint64_t n = 41; n <= 100; n++) {
    gw_point_t p = mkpoint(0, n, n, 1);
    assert_int_equal(gw_store_put_point(f->st, &p), 0);
  }
  atomic_store(&ft.op, GW_STORE_OP_STEP);
  atomic_store(&ft.after, 30); /* 3 steps declare "new", then 27 inserts */
  atomic_store(&ft.once, 1);
  atomic_store(&ft.code, SQLITE_IOERR_WRITE);
  assert_int_equal(gw_store_flush(f->st), GW_EIO);
  assert_int_equal(atomic_load(&ft.calls), 1);
  assert_int_equal(gw_store_flush(f->st), 0); /* the retry */
  assert_int_equal(gw_store_series(f->st, "m", "old", all_metrics, 1, 0, UINT64_MAX, 0, &s, 0), 0);
  assert_int_equal(s.n, 40);
  for (size_t i = 0; i < s.n; i++) assert_int_equal(s.step[i], i + 1);
  gw_store_series_free(&s);
  assert_int_equal(gw_store_series(f->st, "m", "new", all_metrics, 1, 0, UINT64_MAX, 0, &s, 0), 0);
  assert_int_equal(s.n, 60);
  for (size_t i = 0; i < s.n; i++) assert_int_equal(s.step[i], i + 41);
  gw_store_series_free(&s);
  assert_int_equal(gw_store_integrity_check(f->st), 0);
  raw_check_counts(f->path);
}

static void close_while_failing(void **state) {
  fx_t *f = *state;
  gw_store_config_t c;
  fault_t ft = {0};
  struct timespec a, b;
  atomic_store(&ft.op, GW_STORE_OP_COMMIT);
  atomic_store(&ft.code, SQLITE_FULL);
  cfg_init(&c, f->path);
  c.fault = fault_cb;
  c.fault_arg = &ft;
  c.close_timeout_ms = 300;
  open_ok(f, &c);
  assert_int_equal(declare(f->st, 0, "c", "t", 8, 1, 1, 1), 0);
  for (uint64_t n = 1; n <= 10; n++) {
    gw_point_t p = mkpoint(0, n, n, 1);
    assert_int_equal(gw_store_put_point(f->st, &p), 0);
  }
  clock_gettime(CLOCK_MONOTONIC, &a);
  gw_store_close(f->st);
  f->st = NULL;
  clock_gettime(CLOCK_MONOTONIC, &b);
  assert_true((b.tv_sec - a.tv_sec) * 1000 + (b.tv_nsec - a.tv_nsec) / 1000000 < 3000);
  assert_int_equal(gw_stats_get(&f->stats.store_dropped), 10);
  assert_int_equal(gw_stats_get(&f->stats.store_written), 0);
  raw_check_counts(f->path);
}

static off_t file_size(const char *path) {
  struct stat sb;
  return stat(path, &sb) == 0 ? sb.st_size : -1;
}

/* The writer leaves checkpoints to the checkpointer thread: while they fail
 * nothing is lost and errors are counted; once they pass, the pages reach
 * the main database file. */
static void checkpointer(void **state) {
  fx_t *f = *state;
  gw_store_config_t c;
  fault_t ft = {0};
  uint64_t rows;
  int i;
  atomic_store(&ft.op, GW_STORE_OP_CHECKPOINT);
  atomic_store(&ft.code, SQLITE_IOERR_FSYNC);
  cfg_init(&c, f->path);
  c.fault = fault_cb;
  c.fault_arg = &ft;
  open_ok(f, &c);
  assert_int_equal(declare(f->st, 0, "ck", "t", 8, 1, 1, 1), 0);
  for (uint64_t n = 1; n <= 3000; n++) {
    gw_point_t p = mkpoint(0, n, n, 1);
    assert_int_equal(gw_store_put_point(f->st, &p), 0);
  }
  assert_int_equal(gw_store_flush(f->st), 0);
  for (i = 0; i < 300 && atomic_load(&ft.calls) == 0; i++) sleep_ms(10);
  assert_true(atomic_load(&ft.calls) >= 1);
  assert_true(gw_stats_get(&f->stats.store_errors) >= 1);
  assert_true(file_size(f->path) < 100000); /* all of it still in the WAL */
  assert_int_equal(gw_store_row_count(f->st, &rows), 0);
  assert_int_equal(rows, 3000);
  atomic_store(&ft.code, 0);
  for (i = 0; i < 300 && file_size(f->path) < 500000; i++) sleep_ms(10);
  assert_true(file_size(f->path) >= 500000); /* 3000 × 240 B blobs */
  assert_int_equal(gw_store_integrity_check(f->st), 0);
  gw_store_close(f->st);
  f->st = NULL;
  raw_check_counts(f->path);
}

static void retention(void **state) {
  fx_t *f = *state;
  gw_store_config_t c;
  gw_store_stream_t *ss;
  gw_series_t s;
  size_t n;
  uint64_t rows = 0, *steps;
  float *z;
  uint32_t k;
  int64_t now = now_ns(), day = 86400LL * 1000000000LL;
  double zz[4] = {1, 2, 3, 4};
  sqlite3 *db;
  cfg_init(&c, f->path);
  c.retention_days = 1;
  c.retention_check_ms = 50;
  c.store_sketches = 1;
  open_ok(f, &c);
  assert_int_equal(declare(f->st, 0, "ret", "t", 4, 1, 1, 1), 0);
  assert_int_equal(declare(f->st, 1, "ret", "u", 4, 1, 1, 1), 0);
  for (uint64_t i = 1; i <= 200; i++) {
    int64_t wall = i <= 100 ? now - 3 * day + (int64_t)i * 1000000000LL
                            : now - 3600LL * 1000000000LL + (int64_t)i;
    gw_point_t p = mkpoint(0, i, i, wall);
    assert_int_equal(gw_store_put_point(f->st, &p), 0);
    p = mkpoint(1, i, i, now - 3600LL * 1000000000LL); /* all young */
    assert_int_equal(gw_store_put_point(f->st, &p), 0);
  }
  assert_int_equal(gw_store_put_sketch(f->st, 0, 50, zz, 4), 0);
  assert_int_equal(gw_store_put_sketch(f->st, 0, 150, zz, 4), 0);
  assert_int_equal(gw_store_flush(f->st), 0);
  for (int i = 0; i < 200; i++) { /* retention runs every 50 ms */
    assert_int_equal(gw_store_row_count(f->st, &rows), 0);
    if (rows == 300) break;
    sleep_ms(10);
  }
  assert_int_equal(rows, 300);
  assert_int_equal(gw_store_series(f->st, "ret", "t", all_metrics, 1, 0, UINT64_MAX, 0, &s, 0), 0);
  assert_int_equal(s.n, 100);
  for (size_t i = 0; i < s.n; i++) assert_int_equal(s.step[i], 101 + i);
  gw_store_series_free(&s);
  assert_int_equal(gw_store_streams(f->st, "ret", &ss, &n), 0);
  assert_int_equal(n, 2);
  assert_int_equal(ss[0].points, 100);
  assert_int_equal(ss[0].first_step, 101);
  assert_int_equal(ss[0].last_step, 200);
  assert_int_equal(ss[1].points, 200);
  assert_int_equal(ss[1].first_step, 1);
  gw_store_streams_free(ss, n);
  assert_int_equal(gw_store_sketches(f->st, "ret", "t", 0, UINT64_MAX, &steps, &z, &k, &n), 0);
  assert_int_equal(n, 1);
  assert_int_equal(steps[0], 150);
  free(steps);
  free(z);
  db = raw_open(f->path);
  assert_int_equal(raw_int(db, RAW_ALL_POINTS), 300);
  sqlite3_close(db);
  assert_int_equal(gw_store_integrity_check(f->st), 0);
  raw_check_counts(f->path);
}

static void max_db_size(void **state) {
  fx_t *f = *state;
  gw_store_config_t c;
  struct stat sb;
  uint64_t rows;
  gw_series_t s;
  int64_t t0 = now_ns();
  enum { STREAMS = 4, PER = 40000 };
  cfg_init(&c, f->path);
  /* a cap too small for one flush is refused */
  c.max_db_mb = gw_store_min_db_mb() - 1;
  gw_stats_t stats;
  memset(&stats, 0, sizeof stats);
  gw_store_t *tiny = NULL;
  assert_int_equal(gw_store_open(&tiny, &c, &stats), GW_EINVAL);
  assert_null(tiny);
  c.max_db_mb = gw_store_min_db_mb();
  open_ok(f, &c);
  for (uint32_t sid = 0; sid < STREAMS; sid++) {
    char tag[8];
    snprintf(tag, sizeof tag, "s%u", sid);
    assert_int_equal(declare(f->st, sid, "big", tag, 8, 1, 1, 1), 0);
  }
  for (uint64_t n = 1; n <= PER; n++) {
    for (uint32_t sid = 0; sid < STREAMS; sid++) { /* one step per second */
      gw_point_t p = mkpoint(sid, n, n, t0 + (int64_t)n * 1000000000LL);
      assert_int_equal(gw_store_put_point(f->st, &p), 0);
    }
    if (n % 500 == 0) assert_int_equal(gw_store_flush(f->st), 0);
  }
  assert_int_equal(gw_store_flush(f->st), 0);
  assert_int_equal(gw_store_row_count(f->st, &rows), 0);
  assert_true(rows > 0);
  /* 160000 points do not fit (as rows they are ~50 MB): some went. How
   * many stay depends on how many were sealed into chunks (about 4x denser
   * than rows) when each trim ran and on whether the WAL could be
   * truncated first, so the count moves with timing (7k-85k seen); what
   * holds is the cap (the file size below) and the order of deletion. */
  assert_true(rows < STREAMS * PER);
  /* the newest points are kept, the oldest went */
  for (uint32_t sid = 0; sid < STREAMS; sid++) {
    char tag[8];
    snprintf(tag, sizeof tag, "s%u", sid);
    assert_int_equal(gw_store_series(f->st, "big", tag, all_metrics, 1, 0, UINT64_MAX, 0, &s, 0), 0);
    assert_true(s.n > 0);
    assert_int_equal(s.step[s.n - 1], PER);
    assert_true(s.step[0] > 1);
    for (size_t i = 1; i < s.n; i++) assert_int_equal(s.step[i], s.step[i - 1] + 1);
    gw_store_series_free(&s);
  }
  assert_int_equal(gw_store_integrity_check(f->st), 0);
  gw_store_close(f->st);
  f->st = NULL;
  assert_int_equal(stat(f->path, &sb), 0);
  assert_true(sb.st_size <= (off_t)gw_store_min_db_mb() << 20);
  raw_check_counts(f->path);
}

/* Past the cap, a long -wal file is truncated before any point is deleted:
 * with the checkpointer failing (injected), ~13 MB of points leave the WAL
 * at the same size again, file + WAL over a 20 MB cap, though the points
 * alone are well under it. Every point is kept and the WAL is given back. */
static void max_db_truncates_wal_first(void **state) {
  fx_t *f = *state;
  gw_store_config_t c;
  uint64_t rows;
  struct stat sb;
  char wal[300];
  fault_t ft = {0};
  int64_t t0 = now_ns() - 3600LL * 1000000000LL; /* received an hour ago */
  enum { PER = 28000 };
  cfg_init(&c, f->path);
  c.max_db_mb = gw_store_min_db_mb();
  c.chunk_points = 0; /* rows: ~470 bytes a point in the file and in the WAL */
  c.fault = fault_cb;
  c.fault_arg = &ft;
  atomic_store(&ft.op, GW_STORE_OP_CHECKPOINT);
  atomic_store(&ft.code, SQLITE_IOERR_WRITE);
  open_ok(f, &c);
  assert_int_equal(declare(f->st, 0, "w", "t", 8, 1, 1, 1), 0);
  for (uint64_t n = 1; n <= PER; n++) {
    gw_point_t p = mkpoint(0, n, n, t0 + (int64_t)n * 100000000LL); /* 10 a second */
    assert_int_equal(gw_store_put_point(f->st, &p), 0);
    if (n % 2000 == 0) assert_int_equal(gw_store_flush(f->st), 0);
  }
  assert_int_equal(gw_store_flush(f->st), 0);
  assert_int_equal(gw_store_flush(f->st), 0); /* a second pass after the last write */
  assert_true(atomic_load(&ft.calls) > 0);    /* the checkpointer did fail */
  assert_int_equal(gw_store_row_count(f->st, &rows), 0);
  assert_int_equal(rows, PER); /* nothing deleted */
  snprintf(wal, sizeof wal, "%s-wal", f->path);
  assert_int_equal(stat(wal, &sb), 0);
  assert_true(sb.st_size < (off_t)gw_store_min_db_mb() << 18); /* under a quarter of the cap */
  assert_int_equal(gw_store_integrity_check(f->st), 0);
}

typedef struct {
  gw_store_t *st;
  atomic_int stop;
  int iterations, errors;
  uint64_t last_rows;
  int monotonic;
} reader_t;

static void *reader_main(void *arg) {
  reader_t *r = arg;
  int metrics[2] = {GW_METRIC_KAPPA_EMA, GW_METRIC_SIGMA_1};
  r->monotonic = 1;
  while (!atomic_load(&r->stop)) {
    gw_store_run_t *runs;
    gw_store_stream_t *ss;
    gw_series_t s;
    size_t n;
    uint64_t rows;
    int rc = gw_store_runs(r->st, now_ns(), 60000000000LL, &runs, &n);
    if (rc == 0) gw_store_runs_free(runs, n);
    else r->errors++;
    rc = gw_store_streams(r->st, "conc", &ss, &n);
    if (rc == 0) gw_store_streams_free(ss, n);
    else if (rc != GW_ENOTFOUND) r->errors++;
    rc = gw_store_series(r->st, "conc", "t7", metrics, 2, 0, UINT64_MAX, 50, &s, 0);
    if (rc == 0) {
      if (s.n > 50) r->errors++;
      gw_store_series_free(&s);
    } else if (rc != GW_ENOTFOUND) {
      r->errors++;
    }
    rc = gw_store_row_count(r->st, &rows);
    if (rc) r->errors++;
    else if (rows < r->last_rows) r->monotonic = 0;
    else r->last_rows = rows;
    r->iterations++;
  }
  return NULL;
}

static void concurrent_readers_at(fx_t *f, const char *path, int per) {
  gw_store_config_t c;
  pthread_t th;
  reader_t r = {0};
  uint64_t rows;
  cfg_init(&c, path);
  open_ok(f, &c);
  r.st = f->st;
  assert_int_equal(pthread_create(&th, NULL, reader_main, &r), 0);
  for (uint32_t sid = 0; sid < 100; sid++) {
    char tag[8];
    snprintf(tag, sizeof tag, "t%u", sid);
    assert_int_equal(declare(f->st, sid, "conc", tag, 8, 1, 1, 1), 0);
  }
  for (int n = 1; n <= per; n++) {
    for (uint32_t sid = 0; sid < 100; sid++) {
      gw_point_t p = mkpoint(sid, (uint64_t)n, (uint64_t)n, n);
      assert_int_equal(gw_store_put_point(f->st, &p), 0);
    }
    if (n % 10 == 0) assert_int_equal(gw_store_flush(f->st), 0);
  }
  assert_int_equal(gw_store_flush(f->st), 0);
  sleep_ms(20);
  atomic_store(&r.stop, 1);
  pthread_join(th, NULL);
  assert_int_equal(r.errors, 0);
  assert_true(r.iterations > 0);
  assert_true(r.monotonic);
  assert_int_equal(gw_store_row_count(f->st, &rows), 0);
  assert_int_equal(rows, 100u * (uint64_t)per);
  assert_int_equal(gw_stats_get(&f->stats.store_written), 100u * (uint64_t)per);
  assert_int_equal(gw_store_integrity_check(f->st), 0);
}

static void concurrent_readers(void **state) {
  fx_t *f = *state;
  concurrent_readers_at(f, f->path, 200); /* 20,000 points */
  gw_store_close(f->st);
  f->st = NULL;
  raw_check_counts(f->path);
}

static void memory_db(void **state) {
  fx_t *f = *state;
  gw_series_t s;
  concurrent_readers_at(f, ":memory:", 50);
  assert_int_equal(gw_store_series(f->st, "conc", "t3", all_metrics, GW_METRIC_COUNT, 0,
                                   UINT64_MAX, 0, &s, 0),
                   0);
  assert_int_equal(s.n, 50);
  for (size_t r = 0; r < s.n; r++) {
    gw_point_t p = mkpoint(3, r + 1, r + 1, (int64_t)r + 1);
    for (int m = 0; m < GW_METRIC_COUNT; m++)
      assert_true(same_double(s.cols[m][r], gw_point_get(&p, m)));
  }
  gw_store_series_free(&s);
  assert_int_equal(access(":memory:", F_OK), -1); /* no file was created */
}

static void check_alert(const gw_store_alert_t *got, const gw_store_alert_t *want) {
  assert_int_equal(got->id, want->id);
  assert_string_equal(got->rule, want->rule);
  if (want->run) assert_string_equal(got->run, want->run);
  else assert_null(got->run);
  if (want->tag) assert_string_equal(got->tag, want->tag);
  else assert_null(got->tag);
  assert_string_equal(got->severity, want->severity);
  assert_int_equal(got->state, want->state);
  assert_true(same_double(got->value, want->value));
  assert_true(same_double(got->threshold, want->threshold));
  assert_int_equal(got->started_step, want->started_step);
  assert_int_equal(got->started_ns, want->started_ns);
  assert_int_equal(got->fired_ns, want->fired_ns);
  assert_int_equal(got->resolved_ns, want->resolved_ns);
  if (want->labels) assert_string_equal(got->labels, want->labels);
  else assert_null(got->labels);
  if (want->annotations) assert_string_equal(got->annotations, want->annotations);
  else assert_null(got->annotations);
}

static void alerts_roundtrip(void **state) {
  fx_t *f = *state;
  gw_store_config_t c;
  gw_store_alert_t *a;
  size_t n;
  uint64_t id;
  gw_store_alert_t A = {.rule = "kappa_jump", .run = "r1", .tag = "all",
                        .severity = "warning", .state = GW_ALERT_PENDING,
                        .value = 3.25, .threshold = 2.5, .started_step = 1200,
                        .started_ns = 1000, .labels = "{\"team\":\"ml\"}",
                        .annotations = "{\"summary\":\"κ jumped\"}"};
  gw_store_alert_t B = {.rule = "stalled", .run = "r2", .tag = NULL,
                        .severity = "critical", .state = GW_ALERT_RESOLVED,
                        .value = NAN, .threshold = 60, .started_step = 0,
                        .started_ns = 2000, .fired_ns = 2100, .resolved_ns = 2500};
  gw_store_alert_t C = {.rule = "rank_jump", .run = "r1", .tag = "layer1",
                        .severity = "warning", .state = GW_ALERT_FIRING,
                        .value = 40, .threshold = NAN, .started_step = 7,
                        .started_ns = 3000, .fired_ns = 3001};
  cfg_init(&c, f->path);
  open_ok(f, &c);
  assert_int_equal(gw_store_put_alert(f->st, &A, &A.id), 0);
  assert_int_equal(A.id, 1);
  assert_int_equal(gw_store_flush(f->st), 0);
  A.state = GW_ALERT_FIRING; /* pending → firing: same row */
  A.fired_ns = 1500;
  assert_int_equal(gw_store_put_alert(f->st, &A, &id), 0);
  assert_int_equal(id, A.id);
  assert_int_equal(gw_store_put_alert(f->st, &B, &B.id), 0);
  assert_int_equal(gw_store_put_alert(f->st, &C, &C.id), 0);
  assert_int_equal(B.id, 2);
  assert_int_equal(C.id, 3);
  assert_int_equal(gw_store_flush(f->st), 0);

  assert_int_equal(gw_store_alerts(f->st, GW_ALERT_ANY, 0, &a, &n), 0);
  assert_int_equal(n, 3); /* newest first */
  check_alert(&a[0], &C);
  check_alert(&a[1], &B);
  check_alert(&a[2], &A);
  gw_store_alerts_free(a, n);
  assert_int_equal(gw_store_alerts(f->st, GW_ALERT_ANY, 2, &a, &n), 0);
  assert_int_equal(n, 2);
  gw_store_alerts_free(a, n);
  assert_int_equal(gw_store_alerts(f->st, GW_ALERT_FIRING, 0, &a, &n), 0);
  assert_int_equal(n, 2);
  check_alert(&a[0], &C);
  check_alert(&a[1], &A);
  gw_store_alerts_free(a, n);
  assert_int_equal(gw_store_alerts(f->st, GW_ALERT_RESOLVED, 0, &a, &n), 0);
  assert_int_equal(n, 1);
  check_alert(&a[0], &B);
  gw_store_alerts_free(a, n);
  assert_int_equal(gw_store_alerts(f->st, GW_ALERT_PENDING, 0, &a, &n), 0);
  assert_int_equal(n, 0);
  gw_store_alerts_free(a, n);
  assert_int_equal(gw_store_alerts(f->st, 7, 0, &a, &n), GW_EINVAL);
  {
    gw_store_alert_t bad = A;
    bad.rule = NULL;
    assert_int_equal(gw_store_put_alert(f->st, &bad, NULL), GW_EINVAL);
    bad.rule = "x";
    bad.state = 3;
    assert_int_equal(gw_store_put_alert(f->st, &bad, NULL), GW_EINVAL);
  }
  assert_int_equal(gw_store_integrity_check(f->st), 0);

  /* restart: active alerts come back; new ids continue after the old ones */
  gw_store_close(f->st);
  f->st = NULL;
  open_ok(f, &c);
  assert_int_equal(gw_store_alerts_firing(f->st, &a, &n), 0);
  assert_int_equal(n, 2);
  check_alert(&a[0], &A);
  check_alert(&a[1], &C);
  gw_store_alerts_free(a, n);
  {
    gw_store_alert_t D = C;
    D.id = 0;
    assert_int_equal(gw_store_put_alert(f->st, &D, &id), 0);
    assert_int_equal(id, 4);
  }
  assert_int_equal(gw_store_flush(f->st), 0);
  assert_int_equal(gw_store_integrity_check(f->st), 0);
}

static void sketches(void **state) {
  fx_t *f = *state;
  gw_store_config_t c;
  uint64_t *steps;
  float *z;
  uint32_t k;
  size_t n;
  double zz[10][8];
  uint64_t x = 42;
  cfg_init(&c, f->path);
  c.store_sketches = 1;
  open_ok(f, &c);
  assert_int_equal(declare(f->st, 0, "sk", "all", 8, 1, 1, 1), 0);
  for (int i = 0; i < 10; i++) {
    for (int j = 0; j < 8; j++) zz[i][j] = (unif(&x) - 0.5) * 1e3;
    assert_int_equal(gw_store_put_sketch(f->st, 0, (uint64_t)(10 + i), zz[i], 8), 0);
  }
  assert_int_equal(gw_store_put_sketch(f->st, 5, 1, zz[0], 8), GW_ENOTFOUND);
  assert_int_equal(gw_store_put_sketch(f->st, 0, 1, zz[0], 0), GW_EINVAL);
  assert_int_equal(gw_store_flush(f->st), 0);
  assert_int_equal(gw_store_sketches(f->st, "sk", "all", 12, 15, &steps, &z, &k, &n), 0);
  assert_int_equal(k, 8);
  assert_int_equal(n, 4);
  for (size_t i = 0; i < n; i++) {
    assert_int_equal(steps[i], 12 + i);
    for (int j = 0; j < 8; j++) {
      float want = (float)zz[12 + i - 10][j];
      assert_memory_equal(&z[i * 8 + (size_t)j], &want, sizeof want);
    }
  }
  free(steps);
  free(z);
  assert_int_equal(gw_store_sketches(f->st, "sk", "nope", 0, 1, &steps, &z, &k, &n),
                   GW_ENOTFOUND);
  assert_int_equal(gw_store_integrity_check(f->st), 0);
  gw_store_close(f->st);
  f->st = NULL;

  /* without store_sketches, a put is accepted and ignored */
  c.store_sketches = 0;
  open_ok(f, &c);
  assert_int_equal(gw_store_put_sketch(f->st, 0, 100, zz[0], 8), 0);
  assert_int_equal(gw_store_flush(f->st), 0);
  assert_int_equal(gw_store_sketches(f->st, "sk", "all", 100, 100, &steps, &z, &k, &n), 0);
  assert_int_equal(n, 0);
  free(steps);
  free(z);
}

static void bad_input(void **state) {
  fx_t *f = *state;
  gw_store_config_t c;
  gw_store_t *st2 = NULL;
  fault_t ft = {0};
  gw_series_t s;
  gw_point_t p = mkpoint(0, 1, 1, 1);
  cfg_init(&c, f->path);
  assert_int_equal(gw_store_open(&st2, NULL, &f->stats), GW_EINVAL);
  assert_int_equal(gw_store_open(&st2, &c, NULL), GW_EINVAL);
  c.path = "";
  assert_int_equal(gw_store_open(&st2, &c, &f->stats), GW_EINVAL);
  c.path = f->path;
  c.store_every = 0;
  assert_int_equal(gw_store_open(&st2, &c, &f->stats), GW_EINVAL);
  c.store_every = 1;
  c.path = "/nonexistent-dir-gw/x.db";
  assert_int_equal(gw_store_open(&st2, &c, &f->stats), GW_EIO);
  assert_null(st2);
  c.path = f->path;
  atomic_store(&ft.op, GW_STORE_OP_OPEN);
  atomic_store(&ft.code, SQLITE_IOERR);
  c.fault = fault_cb;
  c.fault_arg = &ft;
  assert_int_equal(gw_store_open(&st2, &c, &f->stats), GW_EIO);
  assert_null(st2);
  c.fault = NULL;

  open_ok(f, &c);
  assert_int_equal(gw_store_put_point(f->st, &p), GW_ENOTFOUND);
  assert_int_equal(declare(f->st, 0, "", "t", 8, 1, 1, 1), GW_EINVAL);
  assert_int_equal(declare(f->st, 0, "r", NULL, 8, 1, 1, 1), GW_EINVAL);
  assert_int_equal(declare(f->st, 1u << 30, "r", "t", 8, 1, 1, 1), GW_EINVAL);
  assert_int_equal(declare(f->st, 0, "r", "t", 8, 1, 1, 1), 0);
  p.step = (uint64_t)INT64_MAX + 1;
  assert_int_equal(gw_store_put_point(f->st, &p), GW_EINVAL);
  p.step = 1;
  assert_int_equal(gw_store_put_point(f->st, &p), 0);
  assert_int_equal(gw_store_put_point(f->st, NULL), GW_EINVAL);
  assert_int_equal(gw_store_series(f->st, "r", "t", NULL, 2, 0, 1, 0, &s, 0), GW_EINVAL);
  assert_int_equal(gw_store_flush(f->st), 0);
  /* a point at a stored (segment, step) never replaces it: ignored, counted */
  {
    gw_point_t first = p, again = mkpoint(0, 2, 1, 1);
    uint64_t rows = 0;
    assert_int_equal(gw_store_put_point(f->st, &again), 0);
    assert_int_equal(gw_store_put_point(f->st, &again), 0);
    assert_int_equal(gw_store_flush(f->st), 0);
    assert_int_equal(gw_stats_get(&f->stats.store_duplicates), 2);
    assert_int_equal(gw_store_row_count(f->st, &rows), 0);
    assert_int_equal(rows, 1);
    assert_int_equal(
        gw_store_series(f->st, "r", "t", all_metrics, GW_METRIC_COUNT, 0, 9, 0, &s, 1), 0);
    assert_int_equal(s.n, 1);
    for (int m = 0; m < GW_METRIC_COUNT; m++)
      assert_true(same_double(s.cols[m][0], gw_point_get(&first, m)));
    gw_store_series_free(&s);
  }
  assert_int_equal(gw_store_integrity_check(f->st), 0);
  gw_store_close(NULL);
  gw_store_close(f->st);
  f->st = NULL;
  raw_check_counts(f->path);
}

/* ------------------------------------------- segments, lifecycle, continuity */

/* Open a stream with an incarnation and sketch parameters. */
static int open_inc(gw_store_t *st, uint32_t sid, const char *run, const char *tag, uint32_t k,
                    uint64_t inc, int how, uint64_t step, int64_t recv) {
  gw_stream_ref_t ref = {sid, run, tag, k, 1, 1, 5, inc};
  gw_open_t o = {how, step, recv};
  return gw_store_open_stream(st, sid, &ref, &o);
}

/* A point of incarnation inc whose loss encodes (inc, step), received at recv. */
static int put_inc(gw_store_t *st, uint32_t sid, uint64_t inc, uint64_t step, int64_t recv) {
  gw_point_t p = mkpoint(sid, step + 1, step, recv);
  p.incarnation = inc;
  p.loss = (double)inc * 1e6 + (double)step;
  return gw_store_put_point(st, &p);
}

/* The version 1 schema as it shipped (an independent copy, not the store's). */
static const char v1_schema[] =
    "CREATE TABLE runs(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,"
    " created_ns INTEGER NOT NULL);"
    "CREATE TABLE streams(id INTEGER PRIMARY KEY, run INTEGER NOT NULL REFERENCES runs(id),"
    " tag TEXT NOT NULL, k INTEGER NOT NULL, kind INTEGER NOT NULL, s INTEGER NOT NULL,"
    " seed INTEGER NOT NULL, first_step INTEGER, last_step INTEGER, last_seen INTEGER,"
    " points INTEGER NOT NULL DEFAULT 0, UNIQUE(run, tag));"
    "CREATE TABLE points(stream INTEGER NOT NULL, step INTEGER NOT NULL, v BLOB NOT NULL,"
    " PRIMARY KEY(stream, step)) WITHOUT ROWID;"
    "CREATE TABLE point_minutes(stream INTEGER NOT NULL, minute INTEGER NOT NULL,"
    " max_step INTEGER NOT NULL, PRIMARY KEY(stream, minute)) WITHOUT ROWID;"
    "CREATE INDEX point_minutes_by_minute ON point_minutes(minute);"
    "CREATE TABLE sketches(stream INTEGER NOT NULL, step INTEGER NOT NULL, k INTEGER NOT NULL,"
    " z BLOB NOT NULL, PRIMARY KEY(stream, step));"
    "CREATE TABLE alerts(id INTEGER PRIMARY KEY, rule TEXT NOT NULL, run TEXT, tag TEXT,"
    " severity TEXT, state TEXT NOT NULL CHECK(state IN ('pending','firing','resolved')),"
    " value REAL, threshold REAL, started_step INTEGER, started_ns INTEGER, fired_ns INTEGER,"
    " resolved_ns INTEGER, labels TEXT, annotations TEXT);"
    "CREATE INDEX alerts_by_state ON alerts(state);"
    "PRAGMA user_version = 1;";

/* A version 1 database (written here with plain SQLite) is migrated in place
 * at open: every point, stream and alert survives, and the stream carries on
 * as segment 0 of incarnation 0. */
static void migration_v1(void **state) {
  fx_t *f = *state;
  gw_store_config_t c;
  gw_series_t s;
  gw_store_stream_t *ss;
  gw_store_restart_t *ev;
  gw_store_alert_t *al;
  size_t n;
  uint64_t rows;
  sqlite3 *db = raw_open(f->path);
  sqlite3_stmt *ins;
  int64_t t0 = 1700000000000000000LL;
  assert_int_equal(sqlite3_exec(db, v1_schema, NULL, NULL, NULL), SQLITE_OK);
  assert_int_equal(sqlite3_exec(db,
                                "INSERT INTO runs VALUES(1, 'old', 1);"
                                "INSERT INTO streams VALUES(1, 1, 'a', 8, 1, 1, 5, 1, 300, 0, 300);"
                                "INSERT INTO streams VALUES(2, 1, 'b', 4, 2, 0, -1, 7, 7, 0, 1);"
                                "INSERT INTO alerts(id, rule, state) VALUES(4, 'x', 'firing');",
                                NULL, NULL, NULL),
                   SQLITE_OK);
  assert_int_equal(sqlite3_prepare_v2(db, "INSERT INTO points VALUES(?1, ?2, ?3)", -1, &ins, NULL),
                   SQLITE_OK);
  for (int i = 0; i <= 300; i++) {
    int sid = i == 300 ? 2 : 1, step = i == 300 ? 7 : i + 1;
    gw_point_t p = mkpoint((uint32_t)sid, (uint64_t)step, (uint64_t)step, t0 + step);
    unsigned char v[GW_METRIC_COUNT * 8];
    for (int m = 0; m < GW_METRIC_COUNT; m++) {
      double d = gw_point_get(&p, m);
      uint64_t u;
      memcpy(&u, &d, 8);
      for (int b = 0; b < 8; b++) v[8 * m + b] = (unsigned char)(u >> (8 * b));
    }
    sqlite3_bind_int(ins, 1, sid);
    sqlite3_bind_int(ins, 2, step);
    sqlite3_bind_blob(ins, 3, v, sizeof v, SQLITE_TRANSIENT);
    assert_int_equal(sqlite3_step(ins), SQLITE_DONE);
    sqlite3_reset(ins);
  }
  sqlite3_finalize(ins);
  sqlite3_close(db);

  cfg_init(&c, f->path);
  open_ok(f, &c);
  db = raw_open(f->path);
  assert_int_equal(raw_int(db, "PRAGMA user_version"), GW_STORE_SCHEMA_VERSION);
  assert_int_equal(raw_int(db, RAW_ALL_POINTS), 301);
  assert_int_equal(raw_int(db, "SELECT count(*) FROM streams WHERE seq = 0 AND incarnation = 0"), 2);
  assert_int_equal(raw_int(db, "SELECT seed FROM streams WHERE id = 2"), -1);
  sqlite3_close(db);
  assert_int_equal(gw_store_row_count(f->st, &rows), 0);
  assert_int_equal(rows, 301);
  assert_int_equal(gw_store_series(f->st, "old", "a", all_metrics, GW_METRIC_COUNT, 0, UINT64_MAX,
                                   0, &s, 0),
                   0);
  assert_int_equal(s.n, 300);
  for (size_t r = 0; r < s.n; r++) {
    gw_point_t p = mkpoint(1, r + 1, r + 1, t0 + (int64_t)r + 1);
    assert_int_equal(s.step[r], r + 1);
    assert_int_equal(s.inc[r], 0);
    for (int m = 0; m < GW_METRIC_COUNT; m++)
      assert_true(same_double(s.cols[m][r], gw_point_get(&p, m)));
  }
  gw_store_series_free(&s);
  assert_int_equal(gw_store_streams(f->st, "old", &ss, &n), 0);
  assert_int_equal(n, 2);
  assert_int_equal(ss[0].points, 300);
  assert_int_equal(ss[1].seed, UINT64_MAX);
  assert_int_equal(ss[1].points, 1);
  assert_int_equal(ss[0].segments, 1);
  gw_store_streams_free(ss, n);
  assert_int_equal(gw_store_alerts(f->st, GW_ALERT_ANY, 0, &al, &n), 0);
  assert_int_equal(n, 1);
  gw_store_alerts_free(al, n);
  /* an old (incarnation 0) publisher carries on in the same segment */
  assert_int_equal(open_inc(f->st, 0, "old", "a", 8, 0, GW_OPEN_NEW, 301, now_ns()), 0);
  assert_int_equal(put_inc(f->st, 0, 0, 301, now_ns()), 0);
  assert_int_equal(gw_store_flush(f->st), 0);
  assert_int_equal(gw_store_streams(f->st, "old", &ss, &n), 0);
  assert_int_equal(ss[0].segments, 1);
  assert_int_equal(ss[0].points, 301);
  assert_int_equal(ss[0].last_step, 301);
  gw_store_streams_free(ss, n);
  assert_int_equal(gw_store_restarts(f->st, "old", NULL, 0, &ev, &n), 0);
  assert_int_equal(n, 1);
  assert_string_equal(ev[0].reason, "resumed");
  gw_store_restarts_free(ev, n);
  assert_int_equal(gw_store_integrity_check(f->st), 0);
  /* and the migrated file opens again as version 2, untouched */
  gw_store_close(f->st);
  f->st = NULL;
  open_ok(f, &c);
  assert_int_equal(gw_store_row_count(f->st, &rows), 0);
  assert_int_equal(rows, 302);
}

/* The crash/resume scenario: incarnation 1 reaches step 5200 and dies; the
 * job resumes from its step-5000 checkpoint as incarnation 2. */
static void crash_resume(void **state) {
  fx_t *f = *state;
  gw_store_config_t c;
  gw_series_t s;
  gw_store_stream_t *ss;
  gw_store_restart_t *ev;
  size_t n;
  int metric = GW_METRIC_LOSS;
  int64_t t = now_ns();
  cfg_init(&c, f->path);
  open_ok(f, &c);
  assert_int_equal(open_inc(f->st, 7, "job", "all", 8, 1, GW_OPEN_NEW, 0, t), 0);
  for (uint64_t step = 0; step <= 5200; step++) assert_int_equal(put_inc(f->st, 7, 1, step, t), 0);
  assert_int_equal(gw_store_forget_stream(f->st, 7), 0);
  assert_int_equal(put_inc(f->st, 7, 1, 5201, t), GW_ENOTFOUND); /* forgotten */
  assert_int_equal(open_inc(f->st, 3, "job", "all", 8, 2, GW_OPEN_NEW, 5000, t + 1), 0);
  for (uint64_t step = 5000; step <= 6000; step++)
    assert_int_equal(put_inc(f->st, 3, 2, step, t + 1), 0);
  assert_int_equal(gw_store_flush(f->st), 0);

  assert_int_equal(gw_store_series(f->st, "job", "all", &metric, 1, 0, UINT64_MAX, 0, &s, 0), 0);
  assert_int_equal(s.n, 6001);
  for (size_t i = 0; i < s.n; i++) {
    uint64_t inc = i < 5000 ? 1 : 2;
    assert_int_equal(s.step[i], i);
    assert_int_equal(s.inc[i], inc);
    assert_true(s.cols[0][i] == (double)inc * 1e6 + (double)i);
  }
  gw_store_series_free(&s);
  /* a range inside the superseded stretch */
  assert_int_equal(gw_store_series(f->st, "job", "all", &metric, 1, 4990, 5010, 0, &s, 0), 0);
  assert_int_equal(s.n, 21);
  assert_int_equal(s.inc[9], 1);
  assert_int_equal(s.inc[10], 2);
  gw_store_series_free(&s);
  assert_int_equal(gw_store_series(f->st, "job", "all", &metric, 1, 0, UINT64_MAX, 0, &s, 1), 0);
  assert_int_equal(s.n, 5201 + 1001);
  for (size_t i = 0; i < s.n; i++) { /* 0..4999, then pairs (1, 2), then 5201.. */
    uint64_t step = i < 5000 ? i : i < 5000 + 402 ? 5000 + (i - 5000) / 2 : i - 201;
    uint64_t inc = i < 5000 ? 1 : i < 5402 ? 1 + (i - 5000) % 2 : 2;
    assert_int_equal(s.step[i], step);
    assert_int_equal(s.inc[i], inc);
    assert_true(s.cols[0][i] == (double)inc * 1e6 + (double)step);
  }
  gw_store_series_free(&s);
  /* downsampling works on the visible rows */
  assert_int_equal(gw_store_series(f->st, "job", "all", &metric, 1, 0, UINT64_MAX, 10, &s, 0), 0);
  assert_true(s.downsampled);
  assert_int_equal(s.n, 10);
  assert_true(s.cols[0][0] == 1e6);           /* min of the first bucket: inc 1, step 0 */
  assert_true(s.cols[0][9] == 2e6 + 6000);    /* max of the last: inc 2, step 6000 */
  assert_int_equal(s.inc[9], 2);
  gw_store_series_free(&s);

  assert_int_equal(gw_store_streams(f->st, "job", &ss, &n), 0);
  assert_int_equal(n, 1);
  assert_int_equal(ss[0].points, 6001);
  assert_int_equal(ss[0].first_step, 0);
  assert_int_equal(ss[0].last_step, 6000);
  assert_int_equal(ss[0].segments, 2);
  assert_int_equal(ss[0].incarnation, 2);
  gw_store_streams_free(ss, n);
  assert_int_equal(gw_store_restarts(f->st, "job", "all", 0, &ev, &n), 0);
  assert_int_equal(n, 1);
  assert_string_equal(ev[0].reason, "incarnation");
  assert_int_equal(ev[0].step, 5000);
  assert_int_equal(ev[0].incarnation, 2);
  assert_int_equal(ev[0].prev_incarnation, 1);
  assert_int_equal(ev[0].recv_ns, t + 1);
  gw_store_restarts_free(ev, n);
  assert_int_equal(gw_store_integrity_check(f->st), 0);
}

typedef struct {
  uint64_t step, seq;
} vis_t;

static int vis_cmp(const void *a, const void *b) {
  const vis_t *x = a, *y = b;
  if (x->step != y->step) return x->step < y->step ? -1 : 1;
  return x->seq < y->seq ? -1 : (x->seq > y->seq);
}

/* Visibility against a brute-force reference on random segment layouts:
 * segment i's point at step t is visible iff t < start of every later
 * segment; series returns the visible rows (or all) by (step, seq). */
static void visibility_random(void **state) {
  fx_t *f = *state;
  gw_store_config_t c;
  uint64_t x = 7;
  int metric = GW_METRIC_LOSS;
  cfg_init(&c, f->path);
  open_ok(f, &c);
  for (int trial = 0; trial < 40; trial++) {
    char run[32];
    uint64_t start[6];
    static vis_t all[6 * 64], vis[6 * 64];
    size_t na = 0, nv = 0, nseg = 1 + splitmix(&x) % 6;
    uint64_t from = splitmix(&x) % 40, to = from + splitmix(&x) % 120;
    snprintf(run, sizeof run, "vis%d", trial);
    for (size_t g = 0; g < nseg; g++) {
      start[g] = splitmix(&x) % 80;
      assert_int_equal(open_inc(f->st, (uint32_t)trial, run, "t", 4, 100 + g, GW_OPEN_NEW, start[g],
                                1000),
                       0);
      for (uint64_t step = start[g]; step < start[g] + 64; step++) {
        if (splitmix(&x) % 3 == 0) continue;
        assert_int_equal(put_inc(f->st, (uint32_t)trial, 100 + g, step, 1000), 0);
        all[na].step = step;
        all[na++].seq = g;
      }
    }
    for (size_t i = 0; i < na; i++) { /* the reference */
      uint64_t cut = UINT64_MAX;
      for (size_t h = all[i].seq + 1; h < nseg; h++)
        if (start[h] < cut) cut = start[h];
      if (all[i].step < cut) vis[nv++] = all[i];
    }
    qsort(all, na, sizeof *all, vis_cmp);
    qsort(vis, nv, sizeof *vis, vis_cmp);
    assert_int_equal(gw_store_flush(f->st), 0);
    for (int mode = 0; mode < 2; mode++) {
      const vis_t *want = mode ? all : vis;
      size_t nw = mode ? na : nv, j = 0;
      gw_series_t s;
      assert_int_equal(gw_store_series(f->st, run, "t", &metric, 1, from, to, 0, &s, mode), 0);
      for (size_t i = 0; i < nw; i++) {
        if (want[i].step < from || want[i].step > to) continue;
        assert_true(j < s.n);
        assert_int_equal(s.step[j], want[i].step);
        assert_int_equal(s.inc[j], 100 + want[i].seq);
        assert_true(s.cols[0][j] == (double)(100 + want[i].seq) * 1e6 + (double)want[i].step);
        j++;
      }
      assert_int_equal(j, s.n);
      gw_store_series_free(&s);
    }
    { /* the listing counts the visible points */
      gw_store_stream_t *ss;
      size_t n;
      assert_int_equal(gw_store_streams(f->st, run, &ss, &n), 0);
      assert_int_equal(n, 1);
      assert_int_equal(ss[0].points, nv);
      assert_int_equal(ss[0].segments, nseg);
      if (nv) {
        assert_int_equal(ss[0].first_step, vis[0].step);
        assert_int_equal(ss[0].last_step, vis[nv - 1].step);
      }
      gw_store_streams_free(ss, n);
    }
  }
  assert_int_equal(gw_store_integrity_check(f->st), 0);
}

/* Restart events: resumed on a re-open with history (same incarnation),
 * nothing for a restored open, incarnation for new parameters; engine
 * restarts record their reason and split only on a parameter change. */
static void lifecycle_events(void **state) {
  fx_t *f = *state;
  gw_store_config_t c;
  gw_store_restart_t *ev;
  gw_store_stream_t *ss;
  size_t n;
  gw_stream_ref_t ref = {1, "lc", "t", 8, 1, 1, 5, 9};
  gw_restart_t rs = {GW_RESTART_NO_STATE, 20, 9, 12, 105};
  cfg_init(&c, f->path);
  open_ok(f, &c);
  assert_int_equal(open_inc(f->st, 1, "lc", "t", 8, 9, GW_OPEN_NEW, 0, 100), 0);
  for (uint64_t st = 0; st < 10; st++) assert_int_equal(put_inc(f->st, 1, 9, st, 100), 0);
  assert_int_equal(gw_store_forget_stream(f->st, 1), 0);
  assert_int_equal(gw_store_forget_stream(f->st, 1), GW_ENOTFOUND);
  assert_int_equal(open_inc(f->st, 1, "lc", "t", 8, 9, GW_OPEN_NEW, 10, 101), 0);      /* resumed */
  assert_int_equal(open_inc(f->st, 2, "lc", "t", 8, 9, GW_OPEN_RESTORED, 11, 102), 0); /* silent */
  assert_int_equal(put_inc(f->st, 2, 9, 11, 102), 0);
  assert_int_equal(gw_store_restart_stream(f->st, 2, &ref, &rs), 0); /* same key: event only */
  ref.k = 16;
  rs.reason = GW_RESTART_CONFIG;
  rs.step = 30;
  rs.recv_ns = 106;
  assert_int_equal(gw_store_restart_stream(f->st, 2, &ref, &rs), 0); /* new k: new segment */
  assert_int_equal(gw_store_restart_stream(f->st, 9, &ref, &rs), GW_ENOTFOUND);
  rs.reason = 0;
  assert_int_equal(gw_store_restart_stream(f->st, 2, &ref, &rs), GW_EINVAL);
  assert_int_equal(open_inc(f->st, 3, "lc", "u", 8, 9, GW_OPEN_NEW, 0, 103), 0); /* no history */
  assert_int_equal(open_inc(f->st, 4, "", "u", 8, 9, GW_OPEN_NEW, 0, 103), GW_EINVAL);
  assert_int_equal(open_inc(f->st, 4, "lc", "u", 8, 9, 7, 0, 103), GW_EINVAL);
  assert_int_equal(gw_store_flush(f->st), 0);

  assert_int_equal(gw_store_restarts(f->st, "lc", NULL, 0, &ev, &n), 0);
  assert_int_equal(n, 3); /* newest first */
  assert_string_equal(ev[0].reason, "config_changed");
  assert_int_equal(ev[0].step, 30);
  assert_int_equal(ev[0].recv_ns, 106);
  assert_string_equal(ev[1].reason, "no_state");
  assert_int_equal(ev[1].prev_incarnation, 9);
  assert_int_equal(ev[1].recv_ns, 105);
  assert_string_equal(ev[2].reason, "resumed");
  assert_int_equal(ev[2].step, 10);
  assert_int_equal(ev[2].incarnation, 9);
  assert_int_equal(ev[2].prev_incarnation, 9);
  assert_string_equal(ev[2].run, "lc");
  assert_string_equal(ev[2].tag, "t");
  gw_store_restarts_free(ev, n);
  assert_int_equal(gw_store_restarts(f->st, "lc", "u", 0, &ev, &n), 0);
  assert_int_equal(n, 0);
  gw_store_restarts_free(ev, n);
  assert_int_equal(gw_store_restarts(f->st, "lc", "t", 2, &ev, &n), 0);
  assert_int_equal(n, 2);
  gw_store_restarts_free(ev, n);
  assert_int_equal(gw_store_restarts(f->st, "nope", NULL, 0, &ev, &n), GW_ENOTFOUND);
  assert_int_equal(gw_store_restarts(f->st, NULL, NULL, 0, &ev, &n), GW_EINVAL);
  assert_int_equal(gw_store_streams(f->st, "lc", &ss, &n), 0);
  assert_int_equal(n, 2);
  assert_int_equal(ss[0].segments, 2); /* t: incarnation 9 at k 8, then k 16 */
  assert_int_equal(ss[0].k, 16);
  assert_int_equal(ss[0].points, 11);
  assert_int_equal(ss[0].last_seen_ns, 106);
  gw_store_streams_free(ss, n);
}

static int64_t T_MIN = 60LL * 1000000000LL;

/* Run state: live (received within stall), stalled, finished (retired). */
static void runs_state(void **state) {
  fx_t *f = *state;
  gw_store_config_t c;
  gw_store_run_t *runs;
  size_t n;
  int64_t now = now_ns();
  cfg_init(&c, f->path);
  open_ok(f, &c);
  assert_int_equal(open_inc(f->st, 0, "a_live", "t", 8, 1, GW_OPEN_NEW, 0, now - 2 * T_MIN), 0);
  assert_int_equal(put_inc(f->st, 0, 1, 1, now - 2 * T_MIN), 0);
  assert_int_equal(open_inc(f->st, 1, "a_live", "u", 8, 1, GW_OPEN_NEW, 0, now), 0);
  assert_int_equal(put_inc(f->st, 1, 1, 1, now - 1000), 0);
  assert_int_equal(open_inc(f->st, 2, "b_stalled", "t", 8, 1, GW_OPEN_NEW, 0, now - 2 * T_MIN), 0);
  assert_int_equal(put_inc(f->st, 2, 1, 1, now - 2 * T_MIN), 0);
  assert_int_equal(open_inc(f->st, 3, "c_finished", "t", 8, 1, GW_OPEN_NEW, 0, now), 0);
  assert_int_equal(put_inc(f->st, 3, 1, 1, now), 0);
  assert_int_equal(gw_store_forget_stream(f->st, 3), 0);
  assert_int_equal(gw_store_flush(f->st), 0);
  assert_int_equal(gw_store_runs(f->st, now, T_MIN, &runs, &n), 0);
  assert_int_equal(n, 3);
  assert_int_equal(runs[0].state, GW_RUN_LIVE);
  assert_int_equal(runs[0].last_seen_ns, now);
  assert_int_equal(runs[1].state, GW_RUN_STALLED);
  assert_int_equal(runs[2].state, GW_RUN_FINISHED);
  assert_string_equal(gw_store_run_state_name(runs[1].state), "stalled");
  assert_null(gw_store_run_state_name(GW_RUN_STATE_COUNT));
  gw_store_runs_free(runs, n);
  /* three minutes later the live run has stalled */
  assert_int_equal(gw_store_runs(f->st, now + 3 * T_MIN, T_MIN, &runs, &n), 0);
  assert_int_equal(runs[0].state, GW_RUN_STALLED);
  gw_store_runs_free(runs, n);
  assert_int_equal(gw_store_runs(f->st, now, -1, &runs, &n), GW_EINVAL);
}

/* Retention goes by the daemon's receive time: the publisher's clock
 * (wall_ns) may say anything. */
static void retention_by_recv(void **state) {
  fx_t *f = *state;
  gw_store_config_t c;
  gw_series_t s;
  uint64_t rows = 0;
  int64_t now = now_ns(), day = 86400LL * 1000000000LL;
  int metric = GW_METRIC_WALL_TIME;
  cfg_init(&c, f->path);
  c.retention_days = 1;
  c.retention_check_ms = 30;
  open_ok(f, &c);
  assert_int_equal(open_inc(f->st, 0, "rr", "t", 8, 1, GW_OPEN_NEW, 0, now), 0);
  /* within a segment receive time grows with the step (the minute index
   * deletes a segment's steps up to a minute's last one) */
  gw_point_t p = mkpoint(0, 1, 1, now); /* publisher says now, received 3 days ago */
  p.recv_ns = now - 3 * day;
  assert_int_equal(gw_store_put_point(f->st, &p), 0);
  p = mkpoint(0, 2, 2, INT64_MIN); /* publisher clock at the dawn of time */
  p.recv_ns = now;
  assert_int_equal(gw_store_put_point(f->st, &p), 0);
  p = mkpoint(0, 3, 3, 1000);
  p.recv_ns = now;
  assert_int_equal(gw_store_put_point(f->st, &p), 0);
  p = mkpoint(0, 4, 4, now - 3 * day);
  p.recv_ns = now;
  assert_int_equal(gw_store_put_point(f->st, &p), 0);
  assert_int_equal(gw_store_flush(f->st), 0);
  for (int i = 0; i < 300; i++) {
    assert_int_equal(gw_store_row_count(f->st, &rows), 0);
    if (rows == 3) break;
    sleep_ms(10);
  }
  assert_int_equal(rows, 3);
  sleep_ms(100); /* more passes change nothing */
  assert_int_equal(gw_store_series(f->st, "rr", "t", &metric, 1, 0, UINT64_MAX, 0, &s, 0), 0);
  assert_int_equal(s.n, 3);
  assert_int_equal(s.step[0], 2);
  assert_int_equal(s.step[1], 3);
  assert_int_equal(s.step[2], 4);
  assert_true(s.cols[0][1] == (double)1000 * 1e-9); /* wall_ns still stored, as wall_time */
  gw_store_series_free(&s);
  assert_int_equal(gw_store_integrity_check(f->st), 0);
}

/* Replay: the current segment's sketches in step order, as float64. */
typedef struct {
  uint64_t steps[16];
  double first[16];
  uint32_t k;
  size_t n, stop_at;
} replay_cap_t;

static int replay_cb(void *arg, uint64_t step, const double *z, uint32_t k) {
  replay_cap_t *r = arg;
  r->steps[r->n] = step;
  r->first[r->n] = z[k - 1];
  r->k = k;
  if (++r->n == r->stop_at) return 42;
  return 0;
}

static void replay(void **state) {
  fx_t *f = *state;
  gw_store_config_t c;
  replay_cap_t r = {0};
  double z[4];
  cfg_init(&c, f->path);
  c.store_sketches = 1;
  open_ok(f, &c);
  assert_int_equal(open_inc(f->st, 0, "rp", "t", 4, 1, GW_OPEN_NEW, 1, 1), 0);
  for (uint64_t st = 1; st <= 5; st++) {
    for (int i = 0; i < 4; i++) z[i] = (double)st + 0.25 * i;
    assert_int_equal(gw_store_put_sketch(f->st, 0, st, z, 4), 0);
  }
  assert_int_equal(open_inc(f->st, 0, "rp", "t", 4, 2, GW_OPEN_NEW, 3, 2), 0);
  for (uint64_t st = 6; st >= 3; st--) { /* queued out of order: read back in order */
    for (int i = 0; i < 4; i++) z[i] = 100.0 + (double)st + 0.1 * i;
    assert_int_equal(gw_store_put_sketch(f->st, 0, st, z, 4), 0);
  }
  assert_int_equal(gw_store_flush(f->st), 0);
  assert_int_equal(gw_store_replay(f->st, "rp", "t", replay_cb, &r), 0);
  assert_int_equal(r.n, 4);
  assert_int_equal(r.k, 4);
  for (size_t i = 0; i < 4; i++) {
    assert_int_equal(r.steps[i], 3 + i);
    assert_true(r.first[i] == (double)(float)(100.0 + (double)(3 + i) + 0.3));
  }
  memset(&r, 0, sizeof r);
  r.stop_at = 2;
  assert_int_equal(gw_store_replay(f->st, "rp", "t", replay_cb, &r), 42);
  assert_int_equal(r.n, 2);
  assert_int_equal(gw_store_replay(f->st, "rp", "nope", replay_cb, &r), GW_ENOTFOUND);
  assert_int_equal(gw_store_replay(f->st, "rp", "t", NULL, &r), GW_EINVAL);
  { /* export (sketches) keeps visibility: 1, 2 from the first, 3..6 from the second */
    uint64_t *steps;
    float *zz;
    uint32_t k;
    size_t n;
    assert_int_equal(gw_store_sketches(f->st, "rp", "t", 0, UINT64_MAX, &steps, &zz, &k, &n), 0);
    assert_int_equal(n, 6);
    for (size_t i = 0; i < n; i++) {
      assert_int_equal(steps[i], i + 1);
      assert_true(zz[i * 4] == (float)(i < 2 ? (double)(i + 1) : 100.0 + (double)(i + 1)));
    }
    free(steps);
    free(zz);
  }
}

/* Blob i of the state round trip: bytes from (i, position). */
static void state_blob(unsigned char *b, size_t len, uint32_t i) {
  uint64_t x = i * 0x9E3779B97F4A7C15ull + 1;
  for (size_t j = 0; j < len; j += 8) {
    uint64_t v = splitmix(&x);
    memcpy(b + j, &v, len - j < 8 ? len - j : 8);
  }
}

#define ST_N 1000
#define ST_LEN (100 * 1024)

/* Save 1,000 engine states of 100 KB, reopen (a daemon restart), resume
 * them, clear them; and the bad cases. */
static void state_roundtrip(void **state) {
  fx_t *f = *state;
  gw_store_config_t c;
  gw_store_resume_t *rs;
  size_t n;
  unsigned char *blob = malloc(ST_LEN), *want = malloc(ST_LEN);
  int64_t now = now_ns();
  fault_t ft = {0};
  sqlite3 *db;
  assert_non_null(blob);
  assert_non_null(want);
  cfg_init(&c, f->path);
  c.store_sketches = 1;
  c.fault = fault_cb;
  c.fault_arg = &ft;
  open_ok(f, &c);
  /* bad cases before any transaction */
  assert_int_equal(gw_store_state_put(f->st, "r", "t", blob, 8), GW_EINVAL);
  assert_int_equal(gw_store_state_commit(f->st), GW_EINVAL);
  for (uint32_t i = 0; i < ST_N; i++) {
    char tag[16];
    double z[4] = {1, 2, 3, 4};
    snprintf(tag, sizeof tag, "t%u", i);
    assert_int_equal(open_inc(f->st, i, "st", tag, 4, 1000 + i, GW_OPEN_NEW, 10, now), 0);
    assert_int_equal(put_inc(f->st, i, 1000 + i, 10 + i % 7, now), 0);
    if (i % 2) assert_int_equal(gw_store_put_sketch(f->st, i, 10, z, 4), 0);
  }
  /* begin flushes what is queued */
  assert_int_equal(gw_store_state_begin(f->st), 0);
  assert_int_equal(gw_store_state_begin(f->st), GW_EINVAL);
  assert_int_equal(gw_store_state_put(f->st, "", "t", blob, 8), GW_EINVAL);
  assert_int_equal(gw_store_state_put(f->st, "st", "t0", NULL, 8), GW_EINVAL);
  assert_int_equal(gw_store_state_put(f->st, "st", "t0", blob, 0), GW_EINVAL);
  for (uint32_t i = 0; i < ST_N; i++) {
    char tag[16];
    snprintf(tag, sizeof tag, "t%u", i);
    state_blob(blob, ST_LEN - i, i);
    assert_int_equal(gw_store_state_put(f->st, "st", tag, blob, ST_LEN - i), 0);
  }
  assert_int_equal(gw_store_state_commit(f->st), 0);
  assert_int_equal(gw_store_state_commit(f->st), GW_EINVAL);
  gw_store_close(f->st); /* the daemon restarts */
  f->st = NULL;
  open_ok(f, &c);
  assert_int_equal(gw_store_resume_list(f->st, now - T_MIN, &rs, &n), 0);
  assert_int_equal(n, ST_N);
  for (size_t j = 0; j < n; j++) {
    uint32_t i = (uint32_t)atoi(rs[j].tag + 1);
    assert_string_equal(rs[j].run, "st");
    assert_int_equal(rs[j].incarnation, 1000 + i);
    assert_int_equal(rs[j].k, 4);
    assert_int_equal(rs[j].kind, 1);
    assert_int_equal(rs[j].s, 1);
    assert_int_equal(rs[j].seed, 5);
    assert_int_equal(rs[j].first_step, 10);
    assert_int_equal(rs[j].last_step, 10 + i % 7);
    assert_int_equal(rs[j].last_seen_ns, now);
    assert_int_equal(rs[j].has_sketches, (int)(i % 2));
    assert_int_equal(rs[j].state_len, ST_LEN - i);
    state_blob(want, ST_LEN - i, i);
    assert_memory_equal(rs[j].state, want, ST_LEN - i);
  }
  gw_store_resume_free(rs, n);

  /* a failing commit rolls back: the saved rows stay as they were */
  assert_int_equal(gw_store_state_begin(f->st), 0);
  assert_int_equal(gw_store_state_put(f->st, "st", "t0", "x", 1), 0);
  atomic_store(&ft.op, GW_STORE_OP_COMMIT);
  atomic_store(&ft.once, 1);
  atomic_store(&ft.code, SQLITE_IOERR);
  assert_int_equal(gw_store_state_commit(f->st), GW_EIO);
  assert_int_equal(gw_store_state_put(f->st, "st", "t0", "x", 1), GW_EINVAL); /* ended */
  /* a failing put too, and ends the transaction */
  assert_int_equal(gw_store_state_begin(f->st), 0);
  atomic_store(&ft.op, GW_STORE_OP_STEP);
  atomic_store(&ft.once, 1);
  atomic_store(&ft.code, SQLITE_FULL);
  assert_int_equal(gw_store_state_put(f->st, "st", "t1", "x", 1), -ENOSPC);
  assert_int_equal(gw_store_state_commit(f->st), GW_EINVAL);
  db = raw_open(f->path);
  assert_int_equal(raw_int(db, "SELECT count(*) FROM stream_state"), ST_N);
  assert_int_equal(raw_int(db, "SELECT length(blob) FROM stream_state WHERE tag = 't0'"), ST_LEN);
  sqlite3_close(db);
  assert_int_equal(gw_store_integrity_check(f->st), 0);

  /* clear: streams resume without state */
  assert_int_equal(gw_store_state_clear(f->st), 0);
  assert_int_equal(gw_store_resume_list(f->st, now - T_MIN, &rs, &n), 0);
  assert_int_equal(n, ST_N);
  for (size_t j = 0; j < n; j++) {
    assert_null(rs[j].state);
    assert_int_equal(rs[j].state_len, 0);
  }
  gw_store_resume_free(rs, n);
  /* a new save replaces every old row */
  assert_int_equal(gw_store_state_begin(f->st), 0);
  assert_int_equal(gw_store_state_put(f->st, "st", "t5", "abc", 3), 0);
  assert_int_equal(gw_store_state_commit(f->st), 0);
  db = raw_open(f->path);
  assert_int_equal(raw_int(db, "SELECT count(*) FROM stream_state"), 1);
  sqlite3_close(db);
  free(blob);
  free(want);
}

/* resume_list retires streams marked live whose last receive is older than
 * live_since; forgotten streams are not resumed at all. */
static void resume_stale(void **state) {
  fx_t *f = *state;
  gw_store_config_t c;
  gw_store_resume_t *rs;
  gw_store_run_t *runs;
  size_t n;
  int64_t now = now_ns(), hour = 60 * T_MIN;
  sqlite3 *db;
  cfg_init(&c, f->path);
  open_ok(f, &c);
  assert_int_equal(open_inc(f->st, 0, "fresh", "t", 8, 1, GW_OPEN_NEW, 0, now), 0);
  assert_int_equal(open_inc(f->st, 1, "stale", "t", 8, 2, GW_OPEN_NEW, 0, now - 2 * hour), 0);
  assert_int_equal(put_inc(f->st, 1, 2, 4, now - 2 * hour), 0);
  assert_int_equal(open_inc(f->st, 2, "gone", "t", 8, 3, GW_OPEN_NEW, 0, now), 0);
  assert_int_equal(gw_store_forget_stream(f->st, 2), 0);
  assert_int_equal(gw_store_flush(f->st), 0);
  gw_store_close(f->st); /* kill -9 or SIGTERM: live flags stay as they were */
  f->st = NULL;
  open_ok(f, &c);
  assert_int_equal(gw_store_resume_list(f->st, now - hour, &rs, &n), 0);
  assert_int_equal(n, 1);
  assert_string_equal(rs[0].run, "fresh");
  assert_int_equal(rs[0].incarnation, 1);
  assert_int_equal(rs[0].last_step, 0); /* no point yet: its first step */
  assert_int_equal(rs[0].has_sketches, 0);
  assert_null(rs[0].state);
  gw_store_resume_free(rs, n);
  db = raw_open(f->path);
  assert_int_equal(raw_int(db, "SELECT count(*) FROM streams WHERE live = 1"), 1);
  sqlite3_close(db);
  assert_int_equal(gw_store_runs(f->st, now, T_MIN, &runs, &n), 0);
  assert_int_equal(n, 3);
  assert_int_equal(runs[0].state, GW_RUN_LIVE);     /* fresh */
  assert_int_equal(runs[1].state, GW_RUN_FINISHED); /* gone */
  assert_int_equal(runs[2].state, GW_RUN_FINISHED); /* stale, retired */
  gw_store_runs_free(runs, n);
  assert_int_equal(gw_store_resume_list(f->st, now - hour, NULL, &n), GW_EINVAL);
}

/* ":memory:" serves the synchronous calls from the writer's connection. */
static void memory_state(void **state) {
  fx_t *f = *state;
  gw_store_config_t c;
  gw_store_resume_t *rs;
  size_t n;
  (void)f;
  cfg_init(&c, ":memory:");
  open_ok(f, &c);
  assert_int_equal(open_inc(f->st, 0, "m", "t", 8, 1, GW_OPEN_NEW, 0, now_ns()), 0);
  assert_int_equal(gw_store_state_begin(f->st), 0);
  assert_int_equal(gw_store_state_put(f->st, "m", "t", "blob", 4), 0);
  assert_int_equal(gw_store_state_commit(f->st), 0);
  assert_int_equal(gw_store_resume_list(f->st, 0, &rs, &n), 0);
  assert_int_equal(n, 1);
  assert_int_equal(rs[0].state_len, 4);
  assert_memory_equal(rs[0].state, "blob", 4);
  gw_store_resume_free(rs, n);
  assert_int_equal(gw_store_state_clear(f->st), 0);
}

/* A disk fault in the middle of a batch holding a new incarnation: the whole
 * transaction (segment, event, points) rolls back with the writer's map, the
 * retry writes it once, and the database stays sound. */
static void fault_new_incarnation(void **state) {
  fx_t *f = *state;
  gw_store_config_t c;
  gw_store_restart_t *ev;
  gw_series_t s;
  size_t n;
  fault_t ft = {0};
  int metric = GW_METRIC_LOSS;
  cfg_init(&c, f->path);
  c.fault = fault_cb;
  c.fault_arg = &ft;
  open_ok(f, &c);
  assert_int_equal(open_inc(f->st, 0, "fi", "t", 8, 1, GW_OPEN_NEW, 0, 10), 0);
  for (uint64_t st = 0; st < 20; st++) assert_int_equal(put_inc(f->st, 0, 1, st, 10), 0);
  assert_int_equal(gw_store_flush(f->st), 0);
  for (int after = 0; after < 12; after += 3) {
    char run[16];
    snprintf(run, sizeof run, "fi%d", after);
    assert_int_equal(open_inc(f->st, 1, run, "t", 8, 1, GW_OPEN_NEW, 0, 10), 0);
    for (uint64_t st = 0; st < 20; st++) assert_int_equal(put_inc(f->st, 1, 1, st, 10), 0);
    assert_int_equal(gw_store_flush(f->st), 0);
    atomic_store(&ft.op, GW_STORE_OP_STEP);
    atomic_store(&ft.after, after);
    atomic_store(&ft.once, 1);
    atomic_store(&ft.code, SQLITE_IOERR);
    assert_int_equal(open_inc(f->st, 1, run, "t", 8, 2, GW_OPEN_NEW, 10, 20), 0);
    for (uint64_t st = 10; st < 30; st++) assert_int_equal(put_inc(f->st, 1, 2, st, 20), 0);
    assert_int_equal(gw_store_flush(f->st), GW_EIO);
    assert_int_equal(gw_store_flush(f->st), 0); /* the retry */
    assert_int_equal(gw_store_restarts(f->st, run, NULL, 0, &ev, &n), 0);
    assert_int_equal(n, 1);
    assert_string_equal(ev[0].reason, "incarnation");
    gw_store_restarts_free(ev, n);
    assert_int_equal(gw_store_series(f->st, run, "t", &metric, 1, 0, UINT64_MAX, 0, &s, 0), 0);
    assert_int_equal(s.n, 30);
    for (size_t i = 0; i < s.n; i++) {
      assert_int_equal(s.step[i], i);
      assert_int_equal(s.inc[i], i < 10 ? 1 : 2);
    }
    gw_store_series_free(&s);
    assert_int_equal(gw_store_series(f->st, run, "t", &metric, 1, 0, UINT64_MAX, 0, &s, 1), 0);
    assert_int_equal(s.n, 40);
    gw_store_series_free(&s);
    assert_int_equal(gw_store_integrity_check(f->st), 0);
  }
  assert_int_equal(gw_stats_get(&f->stats.store_duplicates), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(roundtrip_points, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(listings, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(run_metadata, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(series_range, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(downsampling, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(store_every, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(durability_reopen, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(kill9_durability, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(schema_newer_refused, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(queue_full, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(fault_disk_full, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(fault_ioerr_commit, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(fault_ioerr_begin, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(fault_mid_batch, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(close_while_failing, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(checkpointer, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(retention, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(max_db_size, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(max_db_truncates_wal_first, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(concurrent_readers, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(memory_db, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(alerts_roundtrip, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(sketches, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(bad_input, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(migration_v1, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(crash_resume, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(visibility_random, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(lifecycle_events, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(runs_state, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(retention_by_recv, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(replay, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(state_roundtrip, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(resume_stale, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(memory_state, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(fault_new_incarnation, fx_setup, fx_teardown),
  };
  init_all_metrics();
  return cmocka_run_group_tests(tests, NULL, NULL);
}
