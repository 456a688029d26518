/* test_engine.c — the window engine against docs/CONTRACT.md §2.
 *
 * reference_streams runs tests/unit/engine_ref.py (an independent NumPy
 * computation: explicit predictors, SVD of the increment matrix) and compares
 * every point of every stream for W ∈ {4, 16, 64} and rank_every ∈ {1, 5}.
 * The other cases check closed forms and the rejection paths: a rejected
 * message must leave the stream exactly as if it had never been sent.
 *
 * Tolerances. κ and P: 1e-9 relative (docs/CONTRACT.md §2). rank_90/rank_99 exact (the
 * script guarantees no cumulative energy fraction lies within 1e-9 of a
 * threshold). stable_rank, tail energies and sigma: 1e-8 relative, with a
 * floor for what a Gram-matrix eigensolver can resolve at all (engine.c,
 * "Rank fields"): eigenvalues carry an absolute error of ~|J|·eps·σ_1², so
 * σ_i is compared through σ_i² with an absolute slack of 5e-14·|J|·σ_1², and
 * tail energies (fractions of Σσ²) with an absolute slack of 5e-14·|J|.
 */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include <lapacke.h>

#include "engine.h"
#include "sink.h"

/* ---- helpers ------------------------------------------------------------ */

static gw_msg_t msg(const char *run, const char *tag, uint32_t k, uint64_t step) {
  gw_msg_t m;
  memset(&m, 0, sizeof m);
  m.run = run;
  m.run_len = strlen(run);
  m.tag = tag;
  m.tag_len = strlen(tag);
  m.version = GW_PROTO_VERSION;
  m.dtype = GW_DTYPE_F32;
  m.kind = GW_SKETCH_SJLT;
  m.s = 4;
  m.k = k;
  m.step = step;
  m.wall_ns = (int64_t)step * 1000;
  m.seed = 7;
  return m;
}

static gw_engine_t *engine_fd(uint32_t w, uint32_t rank_every, double beta, uint32_t ell) {
  gw_engine_config_t c;
  gw_engine_config_default(&c);
  c.window = w;
  c.rank_every = rank_every;
  c.ema_beta = beta;
  c.fd_rows = ell;
  gw_engine_t *e = gw_engine_new(&c);
  assert_non_null(e);
  return e;
}

static gw_engine_t *engine(uint32_t w, uint32_t rank_every, double beta) {
  return engine_fd(w, rank_every, beta, 64);
}

/* Deterministic pseudo-random doubles in [-1, 1) (splitmix64). */
static double urand(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return (double)(z >> 11) / 4503599627370496.0 - 1.0;
}

/* Points equal in every field but stream_id (bitwise, NaN == NaN). */
static void assert_point_same(const gw_point_t *a, const gw_point_t *b) {
  gw_point_t x = *a, y = *b;
  x.stream_id = y.stream_id = 0;
  assert_memory_equal(&x, &y, sizeof x);
}

static int close_rel(double a, double b, double rel, double abs_slack) {
  if (isnan(a) || isnan(b)) return isnan(a) && isnan(b);
  return fabs(a - b) <= rel * fabs(b) + abs_slack;
}

/* ---- the NumPy reference ------------------------------------------------ */

enum {
  F_N, F_WLEN, F_P1, F_PE, F_K1, F_KE, F_K1C, F_KEC, F_R90, F_R99, F_SRANK,
  F_TAIL, F_SIGMA = F_TAIL + 8, F_RSTEP = F_SIGMA + 8, F_SNORM,
  F_PL, F_KL, F_KLC, F_P1C, F_PEC, F_PLC, F_KBEST, F_BEST, F_TK90, F_R90R, F_R99R,
  F_SIGR, F_RRSTEP = F_SIGR + 8, F_ZW, NFIELDS
};

typedef struct {
  uint32_t k, n;
  uint64_t *steps;
  double *z;
} ref_stream_t;

static void read_exact(FILE *f, void *p, size_t n) {
  assert_int_equal(fread(p, 1, n, f), n);
}

/* Run engine_ref.py into the build dir; returns the open output file. */
static FILE *run_reference(void) {
  const char *py = getenv("GW_PYTHON3"), *src = getenv("GW_SOURCE_DIR"),
             *bin = getenv("GW_BINARY_DIR");
  if (!py || !src || !bin) fail_msg("GW_PYTHON3, GW_SOURCE_DIR, GW_BINARY_DIR must be set (run via ctest)");
  char script[4096], out[4096];
  snprintf(script, sizeof script, "%s/tests/unit/engine_ref.py", src);
  snprintf(out, sizeof out, "%s/tests/unit/engine_ref.bin", bin);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    execl(py, py, script, "--out", out, (char *)NULL);
    _exit(127);
  }
  int status = 0;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    fail_msg("%s %s failed (status %d)", py, script, status);
  FILE *f = fopen(out, "rb");
  if (!f) fail_msg("cannot open %s: %s", out, strerror(errno));
  return f;
}

/* Largest errors seen, printed at the end: κ/P relative, σ relative (where
 * σ_i >= 1e-3 σ_1), σ_i² absolute over σ_1², tail energy absolute,
 * sigma_run² absolute over sigma_run_1². */
static double worst[5];

static void track(int i, double err) {
  if (err > worst[i]) worst[i] = err;
}

static void compare_point(const gw_point_t *p, const double *x, uint32_t c,
                          const char *where) {
  static const char *names[] = {"n", "window_len", "path_onestep", "path_ema",
                                "kappa_onestep", "kappa_ema", "kappa_onestep_cum",
                                "kappa_ema_cum"};
  double got[8] = {(double)p->n, (double)p->window_len, p->path_onestep,
                   p->path_ema, p->kappa_onestep, p->kappa_ema,
                   p->kappa_onestep_cum, p->kappa_ema_cum};
  for (int i = 2; i < 8; i++)
    if (x[i] != 0 && !isnan(x[i])) track(0, fabs(got[i] - x[i]) / fabs(x[i]));
  for (int i = 0; i < 8; i++)
    if (!close_rel(got[i], x[i], 1e-9, 0))
      fail_msg("%s: %s = %.17g, reference %.17g", where, names[i], got[i], x[i]);
  if (p->rank_90 != (uint32_t)x[F_R90] || p->rank_99 != (uint32_t)x[F_R99])
    fail_msg("%s: rank_90/99 = %u/%u, reference %g/%g", where, p->rank_90,
             p->rank_99, x[F_R90], x[F_R99]);
  if (!close_rel(p->stable_rank, x[F_SRANK], 1e-8, 0))
    fail_msg("%s: stable_rank = %.17g, reference %.17g", where, p->stable_rank,
             x[F_SRANK]);
  double s1 = x[F_SIGMA];
  for (int i = 0; i < 8; i++) {
    double t = p->tail_energy[i], tr = x[F_TAIL + i];
    if (!close_rel(t, tr, 1e-8, 5e-14 * c))
      fail_msg("%s: tail_energy_%d = %.17g, reference %.17g", where, i + 1, t, tr);
    double s = p->sigma[i], sr = x[F_SIGMA + i];
    if (!isnan(tr)) track(3, fabs(t - tr));
    if (s1 > 0 && sr >= 1e-3 * s1) track(1, fabs(s - sr) / sr);
    if (s1 > 0) track(2, fabs(s * s - sr * sr) / (s1 * s1));
    if (!close_rel(s, sr, 1e-8, 0) &&
        !(fabs(s * s - sr * sr) <= 5e-14 * c * s1 * s1))
      fail_msg("%s: sigma_%d = %.17g, reference %.17g (sigma_1 %.17g)", where,
               i + 1, s, sr, s1);
  }
  if (p->rank_step != (uint64_t)x[F_RSTEP])
    fail_msg("%s: rank_step = %llu, reference %g", where,
             (unsigned long long)p->rank_step, x[F_RSTEP]);
  if (!close_rel(p->sketch_norm, x[F_SNORM], 1e-12, 0))
    fail_msg("%s: sketch_norm = %.17g, reference %.17g", where, p->sketch_norm,
             x[F_SNORM]);
  /* the linear predictor, cumulative paths, best κ: 1e-9 relative */
  static const char *pnames[] = {"path_linear", "kappa_linear", "kappa_linear_cum",
                                 "path_onestep_cum", "path_ema_cum", "path_linear_cum",
                                 "kappa_best"};
  double pg[7] = {p->path_linear, p->kappa_linear, p->kappa_linear_cum, p->path_onestep_cum,
                  p->path_ema_cum, p->path_linear_cum, p->kappa_best};
  for (int i = 0; i < 7; i++) {
    double r = x[F_PL + i];
    if (r != 0 && !isnan(r)) track(0, fabs(pg[i] - r) / fabs(r));
    if (!close_rel(pg[i], r, 1e-9, 0))
      fail_msg("%s: %s = %.17g, reference %.17g", where, pnames[i], pg[i], r);
  }
  if (!(isnan(p->best_predictor) ? isnan(x[F_BEST]) : p->best_predictor == x[F_BEST]))
    fail_msg("%s: best_predictor = %g, reference %g", where, p->best_predictor, x[F_BEST]);
  /* tail_kappa_90: a tail energy on κ's scale, same slack as tail_energy */
  double zw = x[F_ZW], sl = zw > 0 ? 5e-14 * c * s1 * s1 / zw : 0;
  if (!close_rel(p->tail_kappa_90, x[F_TK90], 1e-8, sl))
    fail_msg("%s: tail_kappa_90 = %.17g, reference %.17g", where, p->tail_kappa_90, x[F_TK90]);
  /* whole run: ranks exact; sigma_run 1e-8 relative, or its square within
   * 4u·Σσ_run² (u = 2^-24, Σ over the eight reported values, a lower bound
   * of ‖B‖_F²): the sketch is stored as float32, so each shrink rounds its
   * rows (≤ u relative per entry, moving each σ² by ≤ 2u‖B‖_F²) along
   * eigenvectors that LAPACK and NumPy pick differently within near-equal
   * eigenvalues, and the two roundings differ; OpenBLAS's summation order
   * (one thread, as in the daemon, or several) moves which ones. The
   * effect is additive on the scale of sigma_run_1^2, where the sketch's
   * own error (engine.c) lives too */
  if (p->rank_90_run != (uint32_t)x[F_R90R] || p->rank_99_run != (uint32_t)x[F_R99R])
    fail_msg("%s: rank_90/99_run = %u/%u, reference %g/%g", where, p->rank_90_run,
             p->rank_99_run, x[F_R90R], x[F_R99R]);
  if (p->rank_run_step != (uint64_t)x[F_RRSTEP])
    fail_msg("%s: rank_run_step = %llu, reference %g", where,
             (unsigned long long)p->rank_run_step, x[F_RRSTEP]);
  double r1 = x[F_SIGR], e2 = 0;
  for (int i = 0; i < 8; i++) e2 += x[F_SIGR + i] * x[F_SIGR + i];
  for (int i = 0; i < 8; i++) {
    double s = p->sigma_run[i], sr = x[F_SIGR + i];
    if (r1 > 0) track(4, fabs(s * s - sr * sr) / (r1 * r1));
    if (!close_rel(s, sr, 1e-8, 0) && !(fabs(s * s - sr * sr) <= 4 * 0x1p-24 * e2))
      fail_msg("%s: sigma_run_%d = %.17g, reference %.17g (sigma_run_1 %.17g)", where, i + 1,
               s, sr, r1);
  }
}

static void reference_streams(void **state) {
  (void)state;
  FILE *f = run_reference();
  char magic[8];
  read_exact(f, magic, 8);
  assert_memory_equal(magic, "GWREF001", 8);
  uint32_t hdr[2];
  read_exact(f, hdr, sizeof hdr);
  uint32_t n_streams = hdr[0], n_cases = hdr[1];
  assert_true(n_streams >= 4 && n_cases >= 6 * 4);
  ref_stream_t *rs = calloc(n_streams, sizeof *rs);
  assert_non_null(rs);
  for (uint32_t i = 0; i < n_streams; i++) {
    uint32_t kn[2];
    read_exact(f, kn, sizeof kn);
    rs[i].k = kn[0];
    rs[i].n = kn[1];
    rs[i].steps = malloc(rs[i].n * sizeof(uint64_t));
    rs[i].z = malloc((size_t)rs[i].n * rs[i].k * sizeof(double));
    assert_true(rs[i].steps && rs[i].z);
    read_exact(f, rs[i].steps, rs[i].n * sizeof(uint64_t));
    read_exact(f, rs[i].z, (size_t)rs[i].n * rs[i].k * sizeof(double));
  }
  unsigned seen_w[3] = {0, 0, 0}, seen_r[2] = {0, 0}, seen_small_fd = 0, points = 0;
  for (uint32_t c = 0; c < n_cases; c++) {
    uint32_t h[4];
    double beta;
    read_exact(f, h, sizeof h);
    read_exact(f, &beta, sizeof beta);
    assert_true(h[0] < n_streams);
    const ref_stream_t *s = &rs[h[0]];
    double *x = malloc((size_t)(s->n - 1) * NFIELDS * sizeof(double));
    assert_non_null(x);
    read_exact(f, x, (size_t)(s->n - 1) * NFIELDS * sizeof(double));
    seen_w[0] += h[1] == 4, seen_w[1] += h[1] == 16, seen_w[2] += h[1] == 64;
    seen_r[0] += h[2] == 1, seen_r[1] += h[2] == 5;
    seen_small_fd += h[3] < 16;

    gw_engine_t *e = engine_fd(h[1], h[2], beta, h[3]);
    for (uint32_t j = 0; j < s->n; j++) {
      gw_msg_t m = msg("ref", "all", s->k, s->steps[j]);
      gw_point_t p;
      int rc = gw_engine_push_f64(e, &m, s->z + (size_t)j * s->k, &p);
      assert_int_equal(rc, j == 0 ? 0 : 1);
      if (j == 0) continue;
      char where[128];
      snprintf(where, sizeof where, "stream %u (k=%u) W=%u rank_every=%u fd_rows=%u point n=%u",
               h[0], s->k, h[1], h[2], h[3], j);
      compare_point(&p, x + (size_t)(j - 1) * NFIELDS, p.window_len, where);
      points++;
    }
    gw_engine_free(e);
    free(x);
  }
  for (int i = 0; i < 3; i++) assert_true(seen_w[i] > 0);
  for (int i = 0; i < 2; i++) assert_true(seen_r[i] > 0);
  assert_true(seen_small_fd > 0);
  assert_true(points > 1000);
  print_message("%u points; worst: kappa/P rel %.2g, sigma rel %.2g, "
                "sigma^2 abs/sigma_1^2 %.2g, tail abs %.2g, sigma_run^2 abs/sigma_run_1^2 %.2g\n",
                points, worst[0], worst[1], worst[2], worst[3], worst[4]);
  char end;
  assert_int_equal(fread(&end, 1, 1, f), 0); /* nothing left over */
  fclose(f);
  for (uint32_t i = 0; i < n_streams; i++) {
    free(rs[i].steps);
    free(rs[i].z);
  }
  free(rs);
}

/* ---- closed forms ------------------------------------------------------- */

/* z_n = c: every increment is 0, so P = 0, κ = 0, H = 0. */
static void constant_stream(void **state) {
  (void)state;
  gw_engine_t *e = engine(8, 1, 0.9);
  double z[5] = {1, -2, 3, 0.5, 4};
  for (uint64_t s = 1; s <= 20; s++) {
    gw_msg_t m = msg("r", "c", 5, s);
    gw_point_t p;
    assert_int_equal(gw_engine_push_f64(e, &m, z, &p), s == 1 ? 0 : 1);
    if (s == 1) continue;
    assert_true(p.path_onestep == 0 && p.path_ema == 0);
    assert_true(p.kappa_onestep == 0 && p.kappa_ema == 0);
    assert_true(p.kappa_onestep_cum == 0 && p.kappa_ema_cum == 0);
    assert_int_equal(p.rank_90, 0);
    assert_int_equal(p.rank_99, 0);
    assert_true(isnan(p.stable_rank) && isnan(p.tail_energy[0]) && isnan(p.tail_energy[7]));
    for (int i = 0; i < GW_TOP_SIGMA; i++) assert_true(p.sigma[i] == 0);
    assert_true(fabs(p.sketch_norm - sqrt(1 + 4 + 9 + 0.25 + 16)) < 1e-15);
  }
  /* z_n = 0: κ is 0/0 → NAN */
  double zero[5] = {0};
  for (uint64_t s = 1; s <= 3; s++) {
    gw_msg_t m = msg("r", "zero", 5, s);
    gw_point_t p;
    assert_int_equal(gw_engine_push_f64(e, &m, zero, &p), s == 1 ? 0 : 1);
    if (s > 1) assert_true(isnan(p.kappa_onestep) && isnan(p.kappa_ema_cum));
  }
  gw_engine_free(e);
}

/* z_n = n·v: increments all v, so H = v·1ᵀ has rank 1 and σ_1 = |v|·sqrt(|J|);
 * P_onestep = |J|·|v|²; EMA e_n = a_n v with a_n = n − β(1−β^n)/(1−β), so the
 * EMA residual of message n is (n − a_{n−1})²·|v|². */
static void linear_stream(void **state) {
  (void)state;
  const uint32_t w = 16, k = 6;
  const double beta = 0.7;
  gw_engine_t *e = engine(w, 1, beta);
  double v[6] = {0.3, -1.1, 2.0, 0.25, -0.5, 1.5}, vv = 0;
  for (uint32_t i = 0; i < k; i++) vv += v[i] * v[i];
  for (uint32_t n = 0; n < 50; n++) {
    double z[6];
    for (uint32_t i = 0; i < k; i++) z[i] = n * v[i];
    gw_msg_t m = msg("r", "lin", k, 100 + 2 * n);
    gw_point_t p;
    assert_int_equal(gw_engine_push_f64(e, &m, z, &p), n == 0 ? 0 : 1);
    if (n == 0) continue;
    uint32_t lo = n >= w ? n - w + 1 : 1, len = n - lo + 1;
    double zz = 0, pe = 0, zc = 0, pec = 0;
    for (uint32_t j = 1; j <= n; j++) {
      double a_prev = (j - 1) - beta * (1 - pow(beta, j - 1)) / (1 - beta);
      double rj = (j - a_prev) * (j - a_prev) * vv;
      zc += (double)j * j * vv;
      pec += rj;
      if (j >= lo) {
        zz += (double)j * j * vv;
        pe += rj;
      }
    }
    assert_int_equal(p.window_len, len);
    assert_true(close_rel(p.path_onestep, len * vv, 1e-12, 0));
    assert_true(close_rel(p.kappa_onestep, len * vv / zz, 1e-12, 0));
    assert_true(close_rel(p.kappa_onestep_cum, n * vv / zc, 1e-12, 0));
    assert_true(close_rel(p.path_ema, pe, 1e-10, 0));
    assert_true(close_rel(p.kappa_ema, pe / zz, 1e-10, 0));
    assert_true(close_rel(p.kappa_ema_cum, pec / zc, 1e-10, 0));
    /* the linear predictor is exact from n = 2 on: P_lin = |v|^2 (n = 1 only) */
    double plin = lo == 1 ? vv : 0;
    assert_true(fabs(p.path_linear - plin) <= 1e-20 * zz);
    assert_true(fabs(p.path_linear_cum - vv) <= 1e-20 * zc);
    assert_true(close_rel(p.path_onestep_cum, n * vv, 1e-12, 0));
    assert_true(close_rel(p.path_ema_cum, pec, 1e-10, 0));
    if (n >= 2) {
      assert_true(p.best_predictor == 2);
      assert_true(p.kappa_best == p.kappa_linear);
    }
    assert_true(p.tail_kappa_90 <= 1e-13 * p.sigma[0] * p.sigma[0] / zz);
    assert_int_equal(p.rank_90_run, 1);
    uint32_t nr = (uint32_t)(p.rank_run_step - 100) / 2; /* n of the last refresh */
    assert_true(nr <= n && n - nr < w);
    assert_true(close_rel(p.sigma_run[0], sqrt(vv * nr), 1e-7, 0));
    assert_int_equal(p.rank_90, 1);
    assert_int_equal(p.rank_99, 1);
    assert_true(close_rel(p.sigma[0], sqrt(vv * len), 1e-12, 0));
    assert_true(p.sigma[1] <= 1e-6 * p.sigma[0]);
    assert_true(close_rel(p.stable_rank, 1.0, 1e-12, 0));
    assert_true(p.tail_energy[0] <= 1e-13);
    assert_int_equal(p.rank_step, m.step);
  }
  gw_engine_free(e);
}

/* The whole-run sketch against the exact SVD of every increment: a stream
 * whose increments lie in a fixed r = 4 dimensional subspace plus small
 * full-rank noise, 1280 increments, W = 64. The windowed rank sees <= 4, the
 * whole-run rank exactly 4, and every sigma_run_i^2 lies in
 * [sigma_i(A)^2 - bound, sigma_i(A)^2] with the Frequent Directions bound
 * min_r ||A - A_r||_F^2 / (l - r) (plus float32 storage slack). */
static void fd_whole_run(void **state) {
  (void)state;
  enum { N = 1280, W = 64, R = 4 };
  static const uint32_t ks[] = {64, 256}, ells[] = {16, 64};
  for (int c = 0; c < 2; c++) {
    const uint32_t k = ks[c], ell = ells[c];
    gw_engine_t *e = engine_fd(W, 8, 0.9, ell);
    double *U = malloc((size_t)R * k * sizeof(double)), *A = malloc((size_t)N * k * sizeof(double));
    double *z = calloc(k, sizeof(double));
    assert_true(U && A && z);
    uint64_t seed = 77 + c;
    for (size_t i = 0; i < (size_t)R * k; i++) U[i] = urand(&seed);
    static const double scale[R] = {1.0, 0.9, 0.8, 0.7};
    gw_point_t p;
    gw_msg_t m = msg("fd", "all", k, 1);
    assert_int_equal(gw_engine_push_f64(e, &m, z, &p), 0);
    for (uint32_t j = 0; j < N; j++) {
      double *d = A + (size_t)j * k, co[R];
      for (int a = 0; a < R; a++) co[a] = scale[a] * urand(&seed);
      for (uint32_t i = 0; i < k; i++) {
        d[i] = 1e-3 * urand(&seed);
        for (int a = 0; a < R; a++) d[i] += co[a] * U[(size_t)a * k + i];
      }
      /* push z_j = z_{j-1} + d, then take the increment the engine saw */
      for (uint32_t i = 0; i < k; i++) {
        double zn = z[i] + d[i];
        d[i] = zn - z[i];
        z[i] = zn;
      }
      m.step = 2 + j;
      assert_int_equal(gw_engine_push_f64(e, &m, z, &p), 1);
      assert_true(p.rank_90 <= R);
    }
    assert_int_equal(p.rank_run_step, m.step); /* N is a multiple of W: a shrink */
    assert_int_equal(p.rank_90_run, R);
    assert_int_equal(p.rank_99_run, R);
    /* exact singular values of the N×k increment matrix */
    uint32_t ns = k < N ? k : N;
    double *sv = malloc(ns * sizeof(double));
    assert_non_null(sv);
    assert_int_equal(LAPACKE_dgesdd(LAPACK_COL_MAJOR, 'N', (lapack_int)k, N, A, (lapack_int)k,
                                    sv, NULL, 1, NULL, 1),
                     0);
    double bound = INFINITY, tail = 0;
    for (uint32_t i = 0; i < ns; i++) tail += sv[i] * sv[i];
    for (uint32_t r = 0; r < ell; r++) {
      if (r > 0) tail -= sv[r - 1] * sv[r - 1];
      double b = tail / (double)(ell - r);
      if (b < bound) bound = b;
    }
    double s1 = sv[0] * sv[0], slack = 1e-6 * s1;
    assert_true(bound > 0 && bound < 1e-3 * s1);
    for (int i = 0; i < GW_TOP_SIGMA; i++) {
      double got = p.sigma_run[i] * p.sigma_run[i], want = sv[i] * sv[i];
      if (!(got <= want + slack && got >= want - bound - slack))
        fail_msg("k=%u l=%u sigma_run_%d^2 = %.17g, exact %.17g, bound %.3g", k, ell, i + 1,
                 got, want, bound);
    }
    print_message("k=%u l=%u: FD bound %.3g sigma_1^2; sigma_run_5^2 %.3g exact %.3g\n", k, ell,
                  bound / s1, p.sigma_run[4] * p.sigma_run[4], sv[4] * sv[4]);
    free(sv);
    free(U);
    free(A);
    free(z);
    gw_engine_free(e);
  }
}

/* White noise z_n (i.i.d., mean 0, variance s² per entry): E r_onestep =
 * 2ks², E r_linear = (1 + 4 + 1)ks² = 6ks² (z_n − 2z_{n−1} + z_{n−2}), E r_EMA =
 * (1 + (1-β)/(1+β))ks² = 2ks²/(1+β) in the stationary EMA, E|z|² = ks².
 * So a stream with no signal reads κ_onestep ≈ 2, κ_linear ≈ 6,
 * κ_EMA ≈ 2/(1+β) (docs/MATH.md): checked to 3 % over 64 × 1024 samples. */
static void white_noise_kappa(void **state) {
  (void)state;
  enum { K = 1024, W = 64 };
  const double beta = 0.9;
  gw_engine_t *e = engine(W, 64, beta);
  double *z = malloc(K * sizeof(double));
  assert_non_null(z);
  uint64_t seed = 99;
  gw_point_t p;
  for (uint32_t n = 0; n < 400; n++) {
    for (uint32_t i = 0; i < K; i++) z[i] = urand(&seed); /* variance 1/3 */
    gw_msg_t m = msg("r", "noise", K, 1 + n);
    assert_true(gw_engine_push_f64(e, &m, z, &p) >= 0);
  }
  assert_true(fabs(p.kappa_onestep - 2.0) < 0.06);
  assert_true(fabs(p.kappa_linear - 6.0) < 0.18);
  assert_true(fabs(p.kappa_ema - 2.0 / (1 + beta)) < 0.03 * 2.0 / (1 + beta));
  assert_true(p.best_predictor == 1 && p.kappa_best == p.kappa_ema);
  assert_true(fabs(p.kappa_linear_cum - 6.0) < 0.1);
  free(z);
  gw_engine_free(e);
}

/* Rank fields are computed at n = 1, 1 + R, … and carried in between. */
static void rank_every_carries(void **state) {
  (void)state;
  gw_engine_t *e = engine(8, 3, 0.9);
  uint64_t seed = 1, rank_at = 0;
  gw_point_t first = {0};
  for (uint32_t n = 0; n < 12; n++) {
    double z[4];
    for (int i = 0; i < 4; i++) z[i] = urand(&seed);
    gw_msg_t m = msg("r", "t", 4, 5 + n);
    gw_point_t p;
    assert_int_equal(gw_engine_push_f64(e, &m, z, &p), n == 0 ? 0 : 1);
    if (n == 0) continue;
    if ((n - 1) % 3 == 0) {
      rank_at = m.step;
      first = p;
    }
    assert_int_equal(p.rank_step, rank_at);
    assert_int_equal(p.rank_90, first.rank_90);
    assert_memory_equal(p.sigma, first.sigma, sizeof p.sigma);
  }
  gw_engine_free(e);
}

/* ---- rejections leave the stream untouched ------------------------------ */

static void nonfinite_rejected(void **state) {
  (void)state;
  gw_engine_t *a = engine(4, 1, 0.9), *b = engine(4, 1, 0.9);
  uint64_t seed = 3;
  double bad_values[] = {NAN, INFINITY, -INFINITY, 1e101, -2e300};
  /* a NaN first message creates nothing */
  double zb[3] = {NAN, 0, 0};
  gw_msg_t m0 = msg("r", "t", 3, 1);
  assert_int_equal(gw_engine_push_f64(a, &m0, zb, NULL), GW_ENONFINITE);
  assert_int_equal(gw_engine_stream_count(a), 0);
  for (uint32_t n = 0; n < 10; n++) {
    double z[3];
    for (int i = 0; i < 3; i++) z[i] = urand(&seed);
    gw_msg_t m = msg("r", "t", 3, 10 + n);
    gw_point_t pa, pb;
    /* into a: first a poisoned copy of the message, then the message */
    double poisoned[3];
    memcpy(poisoned, z, sizeof z);
    poisoned[n % 3] = bad_values[n % 5];
    assert_int_equal(gw_engine_push_f64(a, &m, poisoned, &pa), GW_ENONFINITE);
    gw_msg_t ms = m;
    ms.flags = GW_HAS_LOSS;
    ms.loss = NAN;
    assert_int_equal(gw_engine_push_f64(a, &ms, z, &pa), GW_ENONFINITE);
    ms.flags = GW_HAS_GRAD_NORM;
    ms.loss = 0;
    ms.grad_norm = INFINITY;
    assert_int_equal(gw_engine_push_f64(a, &ms, z, &pa), GW_ENONFINITE);
    int ra = gw_engine_push_f64(a, &m, z, &pa);
    int rb = gw_engine_push_f64(b, &m, z, &pb);
    assert_int_equal(ra, rb);
    if (ra == 1) assert_point_same(&pa, &pb);
  }
  gw_stream_info_t ia, ib;
  assert_int_equal(gw_engine_stream_info(a, 0, &ia), 0);
  assert_int_equal(gw_engine_stream_info(b, 0, &ib), 0);
  assert_int_equal(ia.n_messages, 10);
  assert_int_equal(ia.n_messages, ib.n_messages);
  assert_int_equal(ia.last_step, ib.last_step);
  gw_engine_free(a);
  gw_engine_free(b);
}

/* Push the same good sequence into a and b; before each message a also gets
 * the bad variant produced by spoil(), which must fail with want. */
typedef void (*spoil_fn)(gw_msg_t *m, int variant);

static void rejected_sequence(spoil_fn spoil, int variants, int want) {
  gw_engine_t *a = engine(4, 2, 0.9), *b = engine(4, 2, 0.9);
  uint64_t seed = 11;
  for (uint32_t n = 0; n < 12; n++) {
    double z[5];
    for (int i = 0; i < 5; i++) z[i] = urand(&seed);
    gw_msg_t m = msg("run", "layer1.weight", 5, 20 + 3 * n);
    gw_point_t pa, pb;
    if (n > 0) {
      for (int v = 0; v < variants; v++) {
        gw_msg_t bad = m;
        spoil(&bad, v);
        double zz[8] = {0};
        memcpy(zz, z, sizeof z);
        assert_int_equal(gw_engine_push_f64(a, &bad, zz, &pa), want);
      }
    }
    int ra = gw_engine_push_f64(a, &m, z, &pa);
    int rb = gw_engine_push_f64(b, &m, z, &pb);
    assert_int_equal(ra, n == 0 ? 0 : 1);
    assert_int_equal(ra, rb);
    if (ra == 1) assert_point_same(&pa, &pb);
  }
  assert_int_equal(gw_engine_stream_count(a), 1);
  gw_engine_free(a);
  gw_engine_free(b);
}

static void spoil_order(gw_msg_t *m, int v) {
  m->step = v == 0 ? m->step - 3 /* equal to the last step */ : m->step - 4 - v;
}

static void spoil_params(gw_msg_t *m, int v) {
  switch (v) {
  case 0: m->k = 6; break;
  case 1: m->kind = GW_SKETCH_GAUSSIAN; m->s = 4; break;
  case 2: m->s = 2; break;
  default: m->seed = 8; break;
  }
}

static void order_rejected(void **state) {
  (void)state;
  rejected_sequence(spoil_order, 2, GW_EORDER);
}

static void mismatch_rejected(void **state) {
  (void)state;
  rejected_sequence(spoil_params, 4, GW_EMISMATCH);
}

static void limits_rejected(void **state) {
  (void)state;
  gw_engine_config_t c;
  gw_engine_config_default(&c);
  c.max_k = 16;
  c.max_streams = 3;
  gw_engine_t *e = gw_engine_new(&c);
  assert_non_null(e);
  double z[17] = {0};
  gw_msg_t m = msg("r", "t", 17, 1);
  assert_int_equal(gw_engine_push_f64(e, &m, z, NULL), GW_EKLIMIT);
  m.k = 0;
  assert_int_equal(gw_engine_push_f64(e, &m, z, NULL), GW_EKLIMIT);
  m = msg("", "t", 4, 1);
  assert_int_equal(gw_engine_push_f64(e, &m, z, NULL), GW_ENAME);
  assert_int_equal(gw_engine_stream_count(e), 0);
  /* stream cap */
  const char *tags[] = {"a", "b", "c", "d"};
  for (int i = 0; i < 3; i++) {
    m = msg("r", tags[i], 4, 1);
    assert_int_equal(gw_engine_push_f64(e, &m, z, NULL), 0);
  }
  m = msg("r", "d", 4, 1);
  assert_int_equal(gw_engine_push_f64(e, &m, z, NULL), GW_ESTREAMS);
  assert_int_equal(gw_engine_stream_count(e), 3);
  m = msg("r", "b", 4, 2); /* existing streams still accepted at the cap */
  assert_int_equal(gw_engine_push_f64(e, &m, z, NULL), 1);
  assert_int_equal(gw_engine_stream_drop(e, 0), 0);
  m = msg("r", "d", 4, 1);
  assert_int_equal(gw_engine_push_f64(e, &m, z, NULL), 0);
  assert_int_equal(gw_engine_stream_count(e), 3);
  gw_engine_free(e);

  /* defaults of docs/CONTRACT.md §5 */
  gw_engine_config_default(&c);
  assert_int_equal(c.window, 64);
  assert_true(c.ema_beta == 0.9);
  assert_int_equal(c.max_streams, 10000);
  assert_int_equal(c.max_k, 65536);
  assert_true(c.rank_every >= 1);
  /* invalid configurations */
  gw_engine_config_default(&c);
  c.window = 1;
  assert_null(gw_engine_new(&c));
  gw_engine_config_default(&c);
  c.rank_every = 0;
  assert_null(gw_engine_new(&c));
  gw_engine_config_default(&c);
  c.ema_beta = 1.0;
  assert_null(gw_engine_new(&c));
  gw_engine_config_default(&c);
  c.max_k = GW_PROTO_K_MAX + 1;
  assert_null(gw_engine_new(&c));
  gw_engine_config_default(&c);
  assert_int_equal(c.fd_rows, 64);
  c.fd_rows = 1;
  assert_null(gw_engine_new(&c));
  c.fd_rows = 1025;
  assert_null(gw_engine_new(&c));
  assert_null(gw_engine_new(NULL));
  gw_engine_free(NULL);
}

/* ---- streams ------------------------------------------------------------ */

static void first_message_no_point(void **state) {
  (void)state;
  gw_engine_t *e = engine(64, 1, 0.9);
  double z0[2] = {3, 4}, z1[2] = {3, 5};
  gw_msg_t m = msg("r", "t", 2, 7);
  m.flags = GW_HAS_LOSS | GW_HAS_LR;
  m.loss = 2.5;
  m.lr = 0.01;
  gw_point_t p;
  memset(&p, 0xAB, sizeof p);
  gw_point_t untouched = p;
  assert_int_equal(gw_engine_push_f64(e, &m, z0, &p), 0);
  assert_memory_equal(&p, &untouched, sizeof p);
  m.step = 8;
  m.wall_ns = 8000;
  assert_int_equal(gw_engine_push_f64(e, &m, z1, &p), 1);
  assert_int_equal(p.n, 1);
  assert_int_equal(p.step, 8);
  assert_int_equal(p.wall_ns, 8000);
  assert_int_equal(p.window_len, 1);
  assert_true(p.path_onestep == 1.0);                  /* |z1 − z0|² */
  assert_true(close_rel(p.kappa_onestep, 1.0 / 34, 1e-15, 0));
  assert_true(close_rel(p.path_ema, 1.0, 1e-15, 0));   /* e_0 = z_0 */
  assert_true(p.sigma[0] == 1.0 && p.sigma[1] == 0);
  assert_int_equal(p.rank_90, 1);
  assert_true(isnan(p.grad_norm) && p.loss == 2.5 && p.lr == 0.01);
  assert_true(close_rel(p.sketch_norm, sqrt(34), 1e-15, 0));
  gw_stream_info_t info;
  assert_int_equal(gw_engine_stream_info(e, p.stream_id, &info), 0);
  assert_string_equal(info.run, "r");
  assert_string_equal(info.tag, "t");
  assert_int_equal(info.k, 2);
  assert_int_equal(info.n_messages, 2);
  assert_int_equal(info.last_step, 8);
  assert_int_equal(info.seed, 7);
  gw_engine_free(e);
}

/* Many streams interleaved in one engine give the points each gives alone. */
static void interleaved_streams(void **state) {
  (void)state;
  enum { NS = 40, K = 12, NMSG = 30 };
  gw_engine_t *shared = engine(8, 3, 0.85);
  gw_engine_t *alone[NS];
  char tags[NS][16];
  uint64_t seeds[NS];
  for (int s = 0; s < NS; s++) {
    alone[s] = engine(8, 3, 0.85);
    snprintf(tags[s], sizeof tags[s], "layer%d.w", s);
    seeds[s] = 1000 + s;
  }
  for (int n = 0; n < NMSG; n++) {
    for (int i = 0; i < NS; i++) {
      int s = (i * 7 + n) % NS; /* a different order each round */
      double z[K];
      for (int j = 0; j < K; j++) z[j] = urand(&seeds[s]) * (1 + s % 3);
      gw_msg_t m = msg(s % 2 ? "runA" : "runB", tags[s], K, 1 + n);
      gw_point_t p1, p2;
      int r1 = gw_engine_push_f64(shared, &m, z, &p1);
      int r2 = gw_engine_push_f64(alone[s], &m, z, &p2);
      assert_int_equal(r1, n == 0 ? 0 : 1);
      assert_int_equal(r1, r2);
      if (r1 == 1) assert_point_same(&p1, &p2);
    }
  }
  assert_int_equal(gw_engine_stream_count(shared), NS);
  for (int s = 0; s < NS; s++) gw_engine_free(alone[s]);
  gw_engine_free(shared);
}

/* Dropping streams (which shifts hash-table entries back) keeps every other
 * stream findable; a dropped stream starts afresh. */
static void stream_drop(void **state) {
  (void)state;
  enum { NS = 300 };
  gw_engine_t *e = engine(4, 1, 0.9);
  double z[3] = {1, 2, 3};
  char tag[32];
  uint32_t ids[NS];
  for (int round = 0; round < 2; round++) {
    for (int s = 0; s < NS; s++) {
      snprintf(tag, sizeof tag, "t%d", s);
      gw_msg_t m = msg("r", tag, 3, 1 + round);
      gw_point_t p;
      int rc = gw_engine_push_f64(e, &m, z, &p);
      assert_int_equal(rc, round == 0 ? 0 : 1);
      if (round == 1) {
        ids[s] = p.stream_id;
        assert_int_equal(p.n, 1);
      }
    }
  }
  assert_int_equal(gw_engine_stream_count(e), NS);
  for (int s = 0; s < NS; s += 3) assert_int_equal(gw_engine_stream_drop(e, ids[s]), 0);
  assert_int_equal(gw_engine_stream_drop(e, ids[0]), GW_ENOTFOUND);
  assert_int_equal(gw_engine_stream_drop(e, 100000), GW_ENOTFOUND);
  gw_stream_info_t info;
  assert_int_equal(gw_engine_stream_info(e, ids[0], &info), GW_ENOTFOUND);
  assert_int_equal(gw_engine_stream_count(e), NS - (NS + 2) / 3);
  for (int s = 0; s < NS; s++) {
    snprintf(tag, sizeof tag, "t%d", s);
    gw_msg_t m = msg("r", tag, 3, 3);
    gw_point_t p;
    int rc = gw_engine_push_f64(e, &m, z, &p);
    if (s % 3 == 0) {
      assert_int_equal(rc, 0); /* starts afresh: a first message */
    } else {
      assert_int_equal(rc, 1);
      assert_int_equal(p.n, 2);
      assert_int_equal(p.stream_id, ids[s]); /* ids are stable */
      assert_int_equal(gw_engine_stream_info(e, ids[s], &info), 0);
      assert_string_equal(info.tag, tag);
    }
  }
  assert_int_equal(gw_engine_stream_count(e), NS);
  gw_engine_free(e);
}

/* gw_engine_push decodes the payload (f32, f16) and then behaves like
 * gw_engine_push_f64 on the same values; a NaN payload changes nothing. */
static void payload_push(void **state) {
  (void)state;
  enum { K = 6 };
  gw_engine_t *a = engine(4, 1, 0.9), *b = engine(4, 1, 0.9);
  uint64_t seed = 5;
  for (uint32_t n = 0; n < 10; n++) {
    float f[K];
    uint16_t h[K];
    double z[K], zh[K];
    for (int i = 0; i < K; i++) {
      f[i] = (float)urand(&seed);
      z[i] = f[i];
      /* multiples of 1/64 in [-4, 4]: exact in binary16 */
      zh[i] = (double)(int)(urand(&seed) * 256) / 64.0;
      h[i] = gw_f32_to_f16((float)zh[i]);
    }
    gw_msg_t m = msg("r", "f32", K, 1 + n), mh = msg("r", "f16", K, 1 + n);
    m.payload = f;
    m.payload_len = sizeof f;
    mh.dtype = GW_DTYPE_F16;
    mh.payload = h;
    mh.payload_len = sizeof h;
    gw_point_t pa, pb;
    /* a NaN payload first: rejected, nothing changes */
    float fbad[K];
    memcpy(fbad, f, sizeof f);
    fbad[n % K] = NAN;
    gw_msg_t mbad = m;
    mbad.payload = fbad;
    assert_int_equal(gw_engine_push(a, &mbad, &pa), GW_ENONFINITE);
    mbad.payload_len = sizeof f - 1;
    assert_int_equal(gw_engine_push(a, &mbad, &pa), GW_ELENGTH);
    mbad = m;
    mbad.dtype = 9;
    assert_int_equal(gw_engine_push(a, &mbad, &pa), GW_EDTYPE);
    int ra = gw_engine_push(a, &m, &pa), rb = gw_engine_push_f64(b, &m, z, &pb);
    assert_int_equal(ra, n == 0 ? 0 : 1);
    assert_int_equal(ra, rb);
    if (ra == 1) assert_point_same(&pa, &pb);
    ra = gw_engine_push(a, &mh, &pa);
    rb = gw_engine_push_f64(b, &mh, zh, &pb);
    assert_int_equal(ra, rb);
    if (ra == 1) assert_point_same(&pa, &pb);
  }
  gw_engine_free(a);
  gw_engine_free(b);
}

/* Memory: the window (ring, Gram), the FD sketch (63 float rows at the
 * default l = 64) and the rest; within 1.5x of the 170204 bytes a stream
 * took before the whole-run sketch. */
static void stream_bytes_budget(void **state) {
  (void)state;
  size_t own = 64u * 256u * 8u, b = gw_engine_stream_bytes(256, 64);
  assert_true(b >= own + 64u * 64u * 8u + 2u * 256u * 8u + 63u * 256u * 4u);
  assert_true(b <= 170204u * 3u / 2u);
  assert_int_equal(gw_engine_stream_bytes_fd(256, 64, 64), b);
  assert_true(gw_engine_stream_bytes_fd(256, 64, 128) >= b + 64u * 256u * 4u);
  assert_true(gw_engine_stream_bytes(1024, 128) > gw_engine_stream_bytes(256, 64));
}

/* ---- lifecycle: incarnations, retirement, state across restarts -------- */

/* A pseudo-random sketch for message j of a stream (deterministic). */
static void zvec(double *z, uint32_t k, uint64_t j, uint64_t salt) {
  uint64_t x = (j + 1) * 0x9e3779b97f4a7c15ull ^ salt;
  for (uint32_t i = 0; i < k; i++) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    /* a float32 value, as a sketch from the wire is */
    z[i] = (double)(float)((double)(x >> 11) / 9007199254740992.0 - 0.5 + 0.01 * (double)j);
  }
}

/* Lazy allocation and the memory budget. A stream holds its block (Gram,
 * zprev, EMA) from its first message, its ring grows in doubling rows as
 * the window fills and the FD sketch appears at the first shrink; the
 * points are bit for bit those of an engine without a budget, and the
 * shared budget counts exactly what the engines hold. */
static void lazy_window_and_budget(void **state) {
  (void)state;
  enum { K = 512, W = 16, ELL = 8 };
  gw_engine_budget_t budget;
  gw_engine_budget_init(&budget, 0); /* no limit yet: measure */
  gw_engine_config_t c;
  gw_engine_config_default(&c);
  c.window = W;
  c.rank_every = 1;
  c.fd_rows = ELL;
  gw_engine_t *ref = gw_engine_new(&c);
  c.budget = &budget;
  gw_engine_t *a = gw_engine_new(&c), *b = gw_engine_new(&c);
  assert_non_null(ref);
  assert_non_null(a);
  assert_non_null(b);
  double z[K];
  gw_point_t pa, pr;
  const size_t full = gw_engine_stream_bytes_fd(K, W, ELL);
  size_t prev = 0, first = 0;
  for (uint64_t s = 0; s < 3 * W + 5; s++) {
    gw_msg_t m = msg("r", "t", K, s);
    zvec(z, K, s, 5);
    int ra = gw_engine_push_f64(a, &m, z, &pa), rr = gw_engine_push_f64(ref, &m, z, &pr);
    assert_int_equal(ra, rr);
    if (ra == 1) assert_point_same(&pa, &pr);
    size_t held = gw_engine_stream_held(a, 0);
    assert_int_equal(held, gw_engine_bytes(a));
    assert_int_equal(gw_engine_budget_used(&budget), held);
    assert_true(held >= prev); /* grows, never shrinks while live */
    assert_true(held <= full);
    if (s == 0) {
      first = held;
      /* no ring row, no sketch: far below a whole window of k doubles */
      assert_true(held < (size_t)W * K * sizeof(double) / 4);
      assert_true(held >= 2u * K * sizeof(double));
    }
    /* the ring's rows: 1, 2, 4, 8, 16 as slots 0..15 are first used */
    if (s == 1) assert_int_equal(held - first, (size_t)K * sizeof(double));
    if (s == 3) assert_int_equal(held - first, (size_t)4 * K * sizeof(double));
    if (s == W - 1) assert_int_equal(held - first, (size_t)W * K * sizeof(double));
    /* the first shrink (n = W) adds the sketch's (ℓ−1)·k floats */
    if (s == W) assert_int_equal(held - prev, (size_t)(ELL - 1) * K * sizeof(float));
    prev = held;
  }
  /* the index share is the only difference from the documented maximum */
  assert_true(full - prev < 64);

  /* Limit: room for a's stream and one block more, not its ring. */
  budget.limit = gw_engine_budget_used(&budget) + first + 1;
  gw_msg_t m = msg("r", "u", K, 0);
  zvec(z, K, 0, 6);
  assert_int_equal(gw_engine_push_f64(b, &m, z, &pa), 0); /* block: fits */
  uint64_t used = gw_engine_budget_used(&budget);
  gw_msg_t m2 = msg("r", "v", K, 0);
  assert_int_equal(gw_engine_push_f64(b, &m2, z, &pa), GW_EBUDGET); /* a new stream */
  assert_int_equal(gw_engine_stream_count(b), 1);
  assert_int_equal(gw_engine_budget_used(&budget), used);
  /* growth refused: the stream is left as it was ... */
  m = msg("r", "u", K, 1);
  zvec(z, K, 1, 6);
  assert_int_equal(gw_engine_push_f64(b, &m, z, &pa), GW_EBUDGET);
  assert_int_equal(gw_engine_budget_used(&budget), used);
  gw_stream_info_t info;
  assert_int_equal(gw_engine_stream_info(b, 0, &info), 0);
  assert_int_equal(info.n_messages, 1);
  /* ... and once a's stream is dropped its bytes come back and the same
   * message goes through, with the point a fresh engine computes */
  assert_int_equal(gw_engine_stream_drop(a, 0), 0);
  assert_int_equal(gw_engine_bytes(a), 0);
  assert_int_equal(gw_engine_budget_used(&budget), gw_engine_bytes(b));
  gw_engine_t *fresh = engine_fd(W, 1, 0.9, ELL);
  gw_msg_t f0 = msg("r", "u", K, 0);
  zvec(z, K, 0, 6);
  assert_int_equal(gw_engine_push_f64(fresh, &f0, z, &pr), 0);
  zvec(z, K, 1, 6);
  assert_int_equal(gw_engine_push_f64(fresh, &m, z, &pr), 1);
  assert_int_equal(gw_engine_push_f64(b, &m, z, &pa), 1);
  assert_point_same(&pa, &pr);
  /* a stream larger than the whole budget is refused, never allocated */
  budget.limit = 1;
  gw_msg_t big = msg("big", "t", K, 0);
  assert_int_equal(gw_engine_push_f64(a, &big, z, &pa), GW_EBUDGET);
  assert_int_equal(gw_engine_stream_count(a), 0);
  gw_engine_free(b); /* gives back what it held */
  assert_int_equal(gw_engine_budget_used(&budget), 0);
  gw_engine_free(a);
  gw_engine_free(ref);
  gw_engine_free(fresh);
}

/* State saved from a grown stream loads into an engine under a budget,
 * charging what the loaded window holds; a budget too small refuses it
 * (GW_EBUDGET) and leaves no stream behind. */
static void load_under_budget(void **state) {
  (void)state;
  enum { K = 64, W = 8 };
  gw_engine_t *a = engine_fd(W, 1, 0.9, 4);
  double z[K];
  gw_point_t p;
  for (uint64_t s = 0; s < 13; s++) {
    gw_msg_t m = msg("r", "t", K, s);
    zvec(z, K, s, 9);
    assert_true(gw_engine_push_f64(a, &m, z, &p) >= 0);
  }
  void *blob;
  size_t len;
  assert_int_equal(gw_engine_stream_save(a, 0, &blob, &len), 0);
  gw_engine_budget_t budget;
  gw_engine_budget_init(&budget, gw_engine_stream_held(a, 0) - 1);
  gw_engine_config_t c;
  gw_engine_config_default(&c);
  c.window = W;
  c.rank_every = 1;
  c.fd_rows = 4;
  c.budget = &budget;
  gw_engine_t *b = gw_engine_new(&c);
  uint32_t id;
  assert_int_equal(gw_engine_stream_load(b, blob, len, &id), GW_EBUDGET);
  assert_int_equal(gw_engine_stream_count(b), 0);
  assert_int_equal(gw_engine_budget_used(&budget), 0);
  budget.limit = gw_engine_stream_held(a, 0);
  assert_int_equal(gw_engine_stream_load(b, blob, len, &id), 0);
  assert_int_equal(gw_engine_budget_used(&budget), gw_engine_stream_held(a, 0));
  /* and continues exactly */
  gw_point_t pa, pb;
  gw_msg_t m = msg("r", "t", K, 13);
  zvec(z, K, 13, 9);
  assert_int_equal(gw_engine_push_f64(a, &m, z, &pa), 1);
  assert_int_equal(gw_engine_push_f64(b, &m, z, &pb), 1);
  assert_point_same(&pa, &pb);
  free(blob);
  gw_engine_free(a);
  gw_engine_free(b);
  assert_int_equal(gw_engine_budget_used(&budget), 0);
}

/* A new incarnation restarts the stream: the points after the restart equal
 * those of a fresh engine fed only the new incarnation's messages, even at
 * steps the old incarnation already used. */
static void incarnation_restarts(void **state) {
  (void)state;
  enum { K = 16 };
  gw_engine_t *a = engine(8, 1, 0.9), *fresh = engine(8, 1, 0.9);
  double z[K];
  gw_point_t pa, pf;
  gw_engine_event_t ev;
  for (uint64_t s = 0; s < 30; s++) {
    gw_msg_t m = msg("r", "t", K, s);
    m.incarnation = 11;
    zvec(z, K, s, 1);
    int rc = gw_engine_push_at(a, &m, z, 1000 + (int64_t)s, &pa, &ev);
    assert_int_equal(rc, s == 0 ? 0 : 1);
    assert_int_equal(ev.flags, s == 0 ? GW_ENGINE_OPENED : 0u);
  }
  /* within the incarnation a regression is still out of order */
  gw_msg_t back = msg("r", "t", K, 10);
  back.incarnation = 11;
  assert_int_equal(gw_engine_push_at(a, &back, z, 2000, &pa, &ev), GW_EORDER);
  /* resume from the step-20 checkpoint as incarnation 12 */
  for (uint64_t s = 20; s < 50; s++) {
    gw_msg_t m = msg("r", "t", K, s);
    m.incarnation = 12;
    zvec(z, K, s, 2);
    int ra = gw_engine_push_at(a, &m, z, 3000 + (int64_t)s, &pa, &ev);
    int rf = gw_engine_push_at(fresh, &m, z, 3000 + (int64_t)s, &pf, NULL);
    assert_int_equal(ra, rf);
    if (s == 20) {
      assert_int_equal(ra, 0);
      assert_int_equal(ev.flags, GW_ENGINE_RESTARTED);
      assert_int_equal(ev.reason, GW_RESTART_INCARNATION);
      assert_int_equal(ev.prev_incarnation, 11);
      assert_int_equal(ev.prev_last_step, 29);
    } else {
      assert_int_equal(ev.flags, 0u);
      assert_int_equal(pa.incarnation, 12);
      assert_int_equal(pa.recv_ns, 3000 + (int64_t)s);
      assert_point_same(&pa, &pf);
    }
  }
  assert_int_equal(gw_engine_stream_count(a), 1);
  /* a new incarnation keeps the stream's sketch parameters */
  gw_msg_t m = msg("r", "t", 8, 5);
  m.incarnation = 13;
  zvec(z, 8, 5, 3);
  assert_int_equal(gw_engine_push_at(a, &m, z, 9000, &pa, &ev), GW_EMISMATCH);
  m = msg("r", "t", K, 5);
  m.incarnation = 13;
  m.seed = 99;
  zvec(z, K, 5, 3);
  assert_int_equal(gw_engine_push_at(a, &m, z, 9000, &pa, &ev), GW_EMISMATCH);
  m.seed = 7;
  assert_int_equal(gw_engine_push_at(a, &m, z, 9000, &pa, &ev), 0);
  assert_int_equal(ev.reason, GW_RESTART_INCARNATION);
  m.step = 6;
  zvec(z, K, 6, 3);
  assert_int_equal(gw_engine_push_at(a, &m, z, 9001, &pa, &ev), 1);
  assert_int_equal(pa.n, 1);
  gw_engine_free(a);
  gw_engine_free(fresh);
}

static int reaped_count;
static void on_reap(void *arg, const gw_stream_info_t *info) {
  (void)arg;
  assert_string_equal(info->tag, "old");
  reaped_count++;
}

static void reap_idle(void **state) {
  (void)state;
  enum { K = 4 };
  gw_engine_t *e = engine(4, 1, 0.9);
  double z[K];
  zvec(z, K, 0, 0);
  gw_msg_t old = msg("r", "old", K, 1), young = msg("r", "young", K, 1);
  assert_int_equal(gw_engine_push_at(e, &old, z, 100, NULL, NULL), 0);
  assert_int_equal(gw_engine_push_at(e, &young, z, 500, NULL, NULL), 0);
  /* the cutoff is exclusive: last_recv 100 < 101 goes, 500 stays */
  assert_int_equal(gw_engine_reap(e, 100, on_reap, NULL), 0);
  assert_int_equal(gw_engine_reap(e, 101, on_reap, NULL), 1);
  assert_int_equal(reaped_count, 1);
  assert_int_equal(gw_engine_stream_count(e), 1);
  /* the retired stream speaks again: a new stream, no out_of_order */
  old.step = 1;
  gw_engine_event_t ev;
  assert_int_equal(gw_engine_push_at(e, &old, z, 600, NULL, &ev), 0);
  assert_int_equal(ev.flags, GW_ENGINE_OPENED);
  gw_engine_free(e);
}

/* Save every stream mid-run, load into a new engine, continue: every later
 * point is bit-identical to the uninterrupted run's, for windows that are
 * partly filled, exactly full and wrapped several times. */
static void save_load_continues(void **state) {
  (void)state;
  enum { K = 24, W = 16 };
  const uint64_t cut[] = {1, 2, 9, 16, 17, 40, 49};
  for (size_t c = 0; c < 2 * sizeof cut / sizeof cut[0]; c++) {
    /* the second round with l = 5, so the whole-run sketch discards */
    const uint32_t ell = c < sizeof cut / sizeof cut[0] ? 64 : 5;
    const uint64_t cutc = cut[c % (sizeof cut / sizeof cut[0])];
    gw_engine_t *a = engine_fd(W, 3, 0.8, ell), *b = engine_fd(W, 3, 0.8, ell);
    double z[K];
    gw_point_t pa, pb;
    uint32_t id = 0;
    for (uint64_t s = 0; s < cutc; s++) {
      gw_msg_t m = msg("run-1", "layer.0/w", K, 10 + s);
      m.incarnation = 5;
      m.flags = GW_HAS_LOSS;
      m.loss = 1.0 / (double)(s + 1);
      zvec(z, K, s, 7);
      gw_engine_event_t ev;
      assert_true(gw_engine_push_at(a, &m, z, (int64_t)s, &pa, &ev) >= 0);
      id = ev.stream_id;
    }
    void *blob;
    size_t len;
    assert_int_equal(gw_engine_stream_save(a, id, &blob, &len), 0);
    uint32_t bid;
    assert_int_equal(gw_engine_stream_load(b, blob, len, &bid), 0);
    /* loading twice is refused: the stream exists */
    assert_int_equal(gw_engine_stream_load(b, blob, len, &bid), GW_EINVAL);
    for (uint64_t s = cutc; s < cutc + 50; s++) {
      gw_msg_t m = msg("run-1", "layer.0/w", K, 10 + s);
      m.incarnation = 5;
      zvec(z, K, s, 7);
      int ra = gw_engine_push_at(a, &m, z, (int64_t)s, &pa, NULL);
      int rb = gw_engine_push_at(b, &m, z, (int64_t)s, &pb, NULL);
      assert_int_equal(ra, 1);
      assert_int_equal(rb, 1);
      assert_point_same(&pa, &pb);
    }
    /* another config refuses the blob with GW_ECONFIG; damage with EINVAL */
    gw_engine_t *w4 = engine_fd(4, 3, 0.8, ell), *beta = engine_fd(W, 3, 0.9, ell),
                *re = engine_fd(W, 1, 0.8, ell), *fd = engine_fd(W, 3, 0.8, ell == 64 ? 5 : 64);
    assert_int_equal(gw_engine_stream_load(fd, blob, len, NULL), GW_ECONFIG);
    gw_engine_free(fd);
    assert_int_equal(gw_engine_stream_load(w4, blob, len, NULL), GW_ECONFIG);
    assert_int_equal(gw_engine_stream_load(beta, blob, len, NULL), GW_ECONFIG);
    assert_int_equal(gw_engine_stream_load(re, blob, len, NULL), GW_ECONFIG);
    gw_engine_t *d = engine_fd(W, 3, 0.8, ell);
    assert_int_equal(gw_engine_stream_load(d, blob, len - 1, NULL), GW_EINVAL);
    assert_int_equal(gw_engine_stream_load(d, blob, 10, NULL), GW_EINVAL);
    ((unsigned char *)blob)[0] ^= 1;
    assert_int_equal(gw_engine_stream_load(d, blob, len, NULL), GW_EINVAL);
    assert_int_equal(gw_engine_stream_count(d), 0);
    free(blob);
    gw_engine_free(a);
    gw_engine_free(b);
    gw_engine_free(w4);
    gw_engine_free(beta);
    gw_engine_free(re);
    gw_engine_free(d);
  }
}

/* A stub knows the last step: regressions of the same incarnation are out
 * of order, the next message starts a window with the stub's reason, and a
 * new incarnation restarts with reason incarnation. */
static void stub_semantics(void **state) {
  (void)state;
  enum { K = 8 };
  gw_engine_t *e = engine(8, 1, 0.9);
  gw_stream_info_t info = {.run = "r", .tag = "t", .k = K, .kind = GW_SKETCH_SJLT, .s = 4,
                           .seed = 7, .last_step = 100, .incarnation = 3, .last_recv_ns = 50};
  uint32_t id;
  assert_int_equal(gw_engine_stream_stub(e, &info, GW_RESTART_NO_STATE, &id), 0);
  assert_int_equal(gw_engine_stream_stub(e, &info, GW_RESTART_NO_STATE, &id), GW_EINVAL);
  assert_int_equal(gw_engine_stream_stub(e, &info, GW_RESTART_NONE, NULL), GW_EINVAL);
  double z[K];
  zvec(z, K, 0, 0);
  gw_msg_t m = msg("r", "t", K, 100);
  m.incarnation = 3;
  gw_engine_event_t ev;
  assert_int_equal(gw_engine_push_at(e, &m, z, 60, NULL, &ev), GW_EORDER);
  m.seed = 8;
  m.step = 101;
  assert_int_equal(gw_engine_push_at(e, &m, z, 60, NULL, &ev), GW_EMISMATCH);
  m.seed = 7;
  assert_int_equal(gw_engine_push_at(e, &m, z, 60, NULL, &ev), 0);
  assert_int_equal(ev.flags, GW_ENGINE_RESTARTED);
  assert_int_equal(ev.reason, GW_RESTART_NO_STATE);
  assert_int_equal(ev.prev_last_step, 100);
  m.step = 102;
  zvec(z, K, 1, 0);
  gw_point_t p;
  assert_int_equal(gw_engine_push_at(e, &m, z, 61, &p, &ev), 1);
  assert_int_equal(p.n, 1);
  /* a stub whose next message is a new incarnation */
  gw_stream_info_t i2 = info;
  i2.tag = "u";
  assert_int_equal(gw_engine_stream_stub(e, &i2, GW_RESTART_CONFIG, NULL), 0);
  gw_msg_t m2 = msg("r", "u", K, 5);
  m2.incarnation = 4;
  assert_int_equal(gw_engine_push_at(e, &m2, z, 70, NULL, &ev), 0);
  assert_int_equal(ev.reason, GW_RESTART_INCARNATION);
  /* stubs count toward the cap and can be retired like any stream */
  assert_int_equal(gw_engine_stream_count(e), 2);
  assert_int_equal(gw_engine_reap(e, 1000, NULL, NULL), 2);
  gw_engine_free(e);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(reference_streams),
      cmocka_unit_test(constant_stream),
      cmocka_unit_test(linear_stream),
      cmocka_unit_test(rank_every_carries),
      cmocka_unit_test(fd_whole_run),
      cmocka_unit_test(white_noise_kappa),
      cmocka_unit_test(nonfinite_rejected),
      cmocka_unit_test(order_rejected),
      cmocka_unit_test(mismatch_rejected),
      cmocka_unit_test(limits_rejected),
      cmocka_unit_test(first_message_no_point),
      cmocka_unit_test(interleaved_streams),
      cmocka_unit_test(stream_drop),
      cmocka_unit_test(payload_push),
      cmocka_unit_test(stream_bytes_budget),
      cmocka_unit_test(lazy_window_and_budget),
      cmocka_unit_test(load_under_budget),
      cmocka_unit_test(incarnation_restarts),
      cmocka_unit_test(reap_idle),
      cmocka_unit_test(save_load_continues),
      cmocka_unit_test(stub_semantics),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
