/* bench_compact.c — the compact store against the row store, side by side:
 * the time of a series query of N points (one stream, every point, and
 * downsampled), and the file's bytes per point.
 *
 * usage: bench_compact [N] [rounds] [dir]
 *
 * Two real SQLite files in dir (default /tmp) get the same N points of one
 * stream: A with chunk_points 0 (one row per point, the layout before
 * chunks), B with the default chunks of GW_STORE_CHUNK_POINTS. Both are
 * closed and reopened (so every point of B is sealed), then the queries run
 * in ABBA order, rounds times: gw_store_series of every point for one metric
 * (kappa_ema, what bench_notebook asks), for all 49 metrics, and with
 * max_points 1000. Printed: the median of each, for each store.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "store.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t splitmix(uint64_t *x) {
  uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static double unif(uint64_t *x) { return (double)(splitmix(x) >> 11) * 0x1p-53; }

/* Engine-like point: quotient columns computed as the engine does. */
static gw_point_t mkpoint(uint64_t step, int64_t t0) {
  gw_point_t p;
  uint64_t x = step * 7919u;
  memset(&p, 0, sizeof p);
  p.n = step + 1;
  p.step = step;
  p.wall_ns = p.recv_ns = t0 + (int64_t)step * 1000000;
  p.window_len = 64;
  p.path_onestep = 1 + unif(&x);
  p.path_ema = 1 + unif(&x);
  p.path_linear = 1 + unif(&x);
  double zw = 2 + unif(&x), cz = 1e3 + (double)step;
  p.kappa_onestep = p.path_onestep / zw;
  p.kappa_ema = p.path_ema / zw;
  p.kappa_linear = p.path_linear / zw;
  p.best_predictor = 0;
  p.kappa_best = p.kappa_onestep;
  p.path_onestep_cum = (double)step * 1.5;
  p.path_ema_cum = (double)step * 1.4;
  p.path_linear_cum = (double)step * 1.3;
  p.kappa_onestep_cum = p.path_onestep_cum / cz;
  p.kappa_ema_cum = p.path_ema_cum / cz;
  p.kappa_linear_cum = p.path_linear_cum / cz;
  p.rank_90 = (uint32_t)(step / 8 % 7);
  p.rank_99 = (uint32_t)(step / 8 % 9);
  p.stable_rank = 3 + unif(&x);
  for (int i = 0; i < GW_TOP_SIGMA; i++) {
    p.tail_energy[i] = unif(&x);
    p.sigma[i] = unif(&x) * 10;
  }
  p.rank_step = step / 8 * 8;
  p.grad_norm = unif(&x);
  p.loss = 1.0 / (1 + (double)step);
  p.lr = 1e-3;
  p.sketch_norm = unif(&x);
  return p;
}

static int open_store(gw_store_t **st, gw_stats_t *stats, const char *path, uint32_t chunk) {
  gw_store_config_t c;
  gw_store_config_default(&c);
  c.path = path;
  c.chunk_points = chunk;
  return gw_store_open(st, &c, stats);
}

static int fill(const char *path, uint32_t chunk, uint64_t n) {
  gw_stats_t stats;
  gw_store_t *st = NULL;
  memset(&stats, 0, sizeof stats);
  if (open_store(&st, &stats, path, chunk)) return -1;
  gw_stream_ref_t ref = {0, "bench", "t", 16, 1, 4, 0, 0};
  gw_open_t o = {GW_OPEN_NEW, 0, 0};
  if (gw_store_open_stream(st, 0, &ref, &o)) return -1;
  int64_t t0 = 1700000000000000000LL;
  for (uint64_t s = 1; s <= n; s++) {
    gw_point_t p = mkpoint(s, t0);
    while (gw_store_put_point(st, &p) == GW_EFULL) gw_store_flush(st);
  }
  gw_store_flush(st);
  gw_store_close(st);
  return 0;
}

static long long file_bytes(const char *path) {
  struct stat sb;
  return stat(path, &sb) == 0 ? (long long)sb.st_size : -1;
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double query(gw_store_t *st, const int *metrics, size_t nm, size_t max_points,
                    uint64_t want) {
  gw_series_t s;
  double t = now_s();
  if (gw_store_series(st, "bench", "t", metrics, nm, 0, UINT64_MAX, max_points, &s, 0) != 0) {
    fprintf(stderr, "series failed\n");
    exit(1);
  }
  t = now_s() - t;
  if ((max_points ? s.n != max_points : s.n != want)) {
    fprintf(stderr, "series: %zu rows, want %llu\n", s.n, (unsigned long long)want);
    exit(1);
  }
  gw_store_series_free(&s);
  return t;
}

int main(int argc, char **argv) {
  uint64_t n = argc > 1 ? strtoull(argv[1], NULL, 10) : 1000000;
  int rounds = argc > 2 ? atoi(argv[2]) : 5;
  const char *dir = argc > 3 ? argv[3] : "/tmp";
  char path[2][400];
  const char *name[2] = {"rows (chunk_points 0)", "chunks of 256"};
  uint32_t chunk[2] = {0, GW_STORE_CHUNK_POINTS};
  gw_store_t *st[2];
  gw_stats_t stats[2];
  int all[GW_METRIC_COUNT], ema = GW_METRIC_KAPPA_EMA;
  for (int m = 0; m < GW_METRIC_COUNT; m++) all[m] = m;
  for (int i = 0; i < 2; i++) {
    snprintf(path[i], sizeof path[i], "%.300s/bench_compact_%d_%d.db", dir, (int)getpid(), i);
    double t = now_s();
    if (fill(path[i], chunk[i], n)) {
      fprintf(stderr, "cannot fill %s\n", path[i]);
      return 1;
    }
    printf("%-22s filled %llu points in %.2f s: %lld bytes, %.1f bytes/point\n", name[i],
           (unsigned long long)n, now_s() - t, file_bytes(path[i]),
           (double)file_bytes(path[i]) / (double)n);
    memset(&stats[i], 0, sizeof stats[i]);
    if (open_store(&st[i], &stats[i], path[i], chunk[i])) return 1;
  }
  /* ABBA: rounds of A B B A for each query kind */
  struct {
    const char *what;
    const int *m;
    size_t nm, maxp;
  } kinds[3] = {{"1 metric, every point", &ema, 1, 0},
                {"49 metrics, every point", all, GW_METRIC_COUNT, 0},
                {"1 metric, max_points 1000", &ema, 1, 1000}};
  for (int k = 0; k < 3; k++) {
    double *t[2];
    int cnt[2] = {0, 0};
    t[0] = calloc((size_t)rounds * 2, sizeof(double));
    t[1] = calloc((size_t)rounds * 2, sizeof(double));
    query(st[0], kinds[k].m, kinds[k].nm, kinds[k].maxp, n); /* warm both caches */
    query(st[1], kinds[k].m, kinds[k].nm, kinds[k].maxp, n);
    for (int r = 0; r < rounds; r++) {
      static const int order[4] = {0, 1, 1, 0};
      for (int j = 0; j < 4; j++) {
        int i = order[j];
        t[i][cnt[i]++] = query(st[i], kinds[k].m, kinds[k].nm, kinds[k].maxp, n);
      }
    }
    qsort(t[0], (size_t)cnt[0], sizeof(double), cmp_d);
    qsort(t[1], (size_t)cnt[1], sizeof(double), cmp_d);
    printf("%-26s %s %.3f s   %s %.3f s   (median of %d, ABBA)\n", kinds[k].what, name[0],
           t[0][cnt[0] / 2], name[1], t[1][cnt[1] / 2], cnt[0]);
    free(t[0]);
    free(t[1]);
  }
  for (int i = 0; i < 2; i++) {
    char p[1000];
    gw_store_close(st[i]);
    unlink(path[i]);
    snprintf(p, sizeof p, "%s-wal", path[i]);
    unlink(p);
    snprintf(p, sizeof p, "%s-shm", path[i]);
    unlink(p);
  }
  return 0;
}
