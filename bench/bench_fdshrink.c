/* bench_fdshrink.c — where the time of one Frequent Directions shrink goes,
 * against what the engine-time target leaves for it (bench/RESULTS.md,
 * "Whole-run quantities").
 *
 * At ℓ = 64, W = 64, k = 256 the engine shrinks [B; D] — 63 rows of the
 * sketch and the window's 64 increments — once every 64 messages. The
 * shrink is gw_fd_shrink (daemon/fdsketch.c); beside it, its pieces on the
 * same 127 × 256 matrix: the Gram matrix (dsyrk), the eigen-solve with all
 * vectors (dsyevd 'V', what the shrink runs), the eigenvalues alone
 * (dsyevd 'N': the least any exact shrink needs, since δ is the ℓ-th
 * eigenvalue), the same solve in float32 (ssyevd 'V') and the rebuild of B
 * (one dgemm). Median µs per call over REPS interleaved rounds, OpenBLAS on
 * one thread as the daemon runs it. The budget line is 64 × (1.25 − 1) ×
 * the previous engine's µs/message (14.9 on the quiet run of
 * bench/RESULTS.md): what a ≤ 1.25× engine leaves for a shrink.
 *
 *   ./build/bench/bench_fdshrink [REPS]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cblas.h>
#include <lapacke.h>

#include "fdsketch.h"

void openblas_set_num_threads(int n);

enum { ELL = 64, W = 64, K = 256, M = ELL - 1 + W };

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp);
  return v[n / 2];
}

/* A random-walk-like stream: increments with a decaying spectrum. */
static void fill(double *rows, int n, uint64_t *x) {
  for (int i = 0; i < n * K; i++) {
    *x = *x * 6364136223846793005ull + 1442695040888963407ull;
    double u = (double)(*x >> 11) * 0x1p-53 - 0.5;
    rows[i] = u / (1.0 + (i % K) * 0.05);
  }
}

int main(int argc, char **argv) {
  int reps = argc > 1 ? atoi(argv[1]) : 101;
  if (reps < 1) reps = 1;
  openblas_set_num_threads(1);
  static double c[M * K], g0[M * M], g[M * M], ev[M], out[K * ELL], d[W * K], dg[W * W];
  static float gs0[M * M], gs[M * M], evs[M];
  double *t[6];
  uint64_t x = 7;
  gw_fd_t fd;
  gw_fd_work_t fw;
  gw_fd_fields_t ff;
  for (int i = 0; i < 6; i++) t[i] = malloc((size_t)reps * sizeof(double));
  if (gw_fd_init(&fd, ELL, K) || gw_fd_reserve(&fd) || gw_fd_work_init(&fw, ELL, W) ||
      gw_fd_work_reserve(&fw, K)) {
    fprintf(stderr, "bench_fdshrink: setup failed\n");
    return 1;
  }
  fill(c, M, &x);
  cblas_dsyrk(CblasColMajor, CblasUpper, CblasTrans, M, K, 1.0, c, K, 0.0, g0, M);
  for (int i = 0; i < M * M; i++) gs0[i] = (float)g0[i];
  double total = 0;
  for (int r = -3; r < reps; r++) { /* 3 warm-up rounds */
    double t0;
    fill(d, W, &x);
    cblas_dsyrk(CblasColMajor, CblasUpper, CblasTrans, W, K, 1.0, d, K, 0.0, dg, W);
    for (int i = 0; i < W; i++) total += dg[i * W + i];
    t0 = now();
    int rc = gw_fd_shrink(&fd, &fw, d, W, K, dg, W, total, &ff);
    double ts = now() - t0;
    if (rc) {
      fprintf(stderr, "bench_fdshrink: shrink failed (%d)\n", rc);
      return 1;
    }
    t0 = now();
    cblas_dsyrk(CblasColMajor, CblasUpper, CblasTrans, M, K, 1.0, c, K, 0.0, g, M);
    double tg = now() - t0;
    memcpy(g, g0, sizeof g);
    t0 = now();
    LAPACKE_dsyevd(LAPACK_COL_MAJOR, 'V', 'U', M, g, M, ev);
    double tv = now() - t0;
    memcpy(g, g0, sizeof g);
    t0 = now();
    LAPACKE_dsyevd(LAPACK_COL_MAJOR, 'N', 'U', M, g, M, ev);
    double tn = now() - t0;
    memcpy(gs, gs0, sizeof gs);
    t0 = now();
    LAPACKE_ssyevd(LAPACK_COL_MAJOR, 'V', 'U', M, gs, M, evs);
    double tf = now() - t0;
    t0 = now();
    cblas_dgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, K, ELL - 1, M, 1.0, c, K, g0, M, 0.0,
                out, K);
    double tr = now() - t0;
    if (r >= 0) {
      t[0][r] = ts, t[1][r] = tg, t[2][r] = tv, t[3][r] = tn, t[4][r] = tf, t[5][r] = tr;
    }
  }
  static const char *what[6] = {"gw_fd_shrink (the whole shrink)", "Gram matrix, dsyrk",
                                "eigen-solve with vectors, dsyevd 'V'",
                                "eigenvalues alone, dsyevd 'N'", "float32 solve, ssyevd 'V'",
                                "rebuild of B, dgemm"};
  printf("l = %d, W = %d, k = %d: a %d x %d problem every %d messages, %d rounds\n\n", ELL, W,
         K, M, M, W, reps);
  printf("| piece | median µs per shrink | µs per message |\n|---|---:|---:|\n");
  for (int i = 0; i < 6; i++) {
    double m = median(t[i], reps) * 1e6;
    printf("| %s | %.0f | %.1f |\n", what[i], m, m / W);
  }
  printf("| budget at <= 1.25x of 14.9 us/message | %.0f | %.1f |\n", 64 * 0.25 * 14.9,
         0.25 * 14.9);
  for (int i = 0; i < 6; i++) free(t[i]);
  gw_fd_work_free(&fw);
  gw_fd_free(&fd);
  return 0;
}
