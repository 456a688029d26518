/* bench_engine.c — engine ingest rate (messages/s, one stream, one thread)
 * beside an SVD-per-message baseline, measured in the same run.
 *
 * Engine rows: every (k, W, rank_every) of k ∈ {256, 1024}, W ∈ {32, 64,
 * 128}, rank_every ∈ {1, 8}, through gw_engine_push_f64 with a full window
 * (the stream is warmed with 2W messages first). Baseline row (k = 256,
 * W = 64): the same per-message bookkeeping (ring of increments, one-step
 * and EMA residuals, windowed and cumulative κ) but the rank fields come
 * from LAPACKE_dgesdd (values only) on the k×|J| increment matrix, every
 * message — what the engine would cost without its Gram matrix.
 *
 * Each figure is the median over REPS repetitions; the engine's
 * (256, 64, 1) row and the baseline are timed alternately, repetition by
 * repetition, so their ratio is fair on a loaded machine. OpenBLAS runs on
 * one thread (openblas_set_num_threads(1), as OPENBLAS_NUM_THREADS=1 would).
 *
 * A table sweeps rank_every at k = 256, W = 64 (the defaults) to show
 * what fresher rank fields cost.
 *
 * The last table compares, in the same run, this engine (linear predictor,
 * cumulative paths, tail_kappa_90, the whole-run Frequent Directions
 * sketch) with the engine before those were added, built from git
 * (bench/CMakeLists.txt, GW_BENCH_BASELINE_ENGINE) with its public names
 * prefixed prev_; each repetition times them ABBA (this, previous,
 * previous, this; half the seconds each) so a drift in the machine's load
 * falls on both alike; and the FD cost for fd_rows 16, 32, 64. Bytes per
 * stream are each engine's own accounting of its per-stream block(s) and
 * index share (gw_engine_stream_bytes*).
 *
 *   usage: bench_engine [ab] [REPS] [SECONDS_PER_MEASUREMENT]   (default 5 0.2)
 *   ab: only the last table
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <malloc.h>
#include <time.h>

#include <cblas.h>
#include <lapacke.h>

#include "engine.h"

#define POOL 509 /* distinct sketches, cycled; prime and > W */

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static double gauss(uint64_t *s) {
  double u = 0;
  for (int i = 0; i < 12; i++) {
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    u += (double)(*s >> 11) / 9007199254740992.0;
  }
  return u - 6.0;
}

/* A random walk with a rank-4 drift: increments neither trivial nor
 * degenerate, like a real gradient stream. */
static double *make_pool(uint32_t k) {
  double *z = malloc((size_t)POOL * k * sizeof(double));
  if (!z) return NULL;
  uint64_t s = 42;
  for (uint32_t j = 0; j < POOL; j++)
    for (uint32_t i = 0; i < k; i++) {
      double drift = sin(0.05 * j + i % 4) * (double)(i % 4 + 1);
      z[(size_t)j * k + i] = (j ? z[(size_t)(j - 1) * k + i] : 0) + drift + 0.3 * gauss(&s);
    }
  return z;
}

/* ---- the engine --------------------------------------------------------- */

/* The engine under test, or the previous one (same API, prev_ names). */
typedef struct {
  gw_engine_t *(*make)(const gw_engine_config_t *);
  void (*free)(gw_engine_t *);
  int (*push)(gw_engine_t *, const gw_msg_t *, const double *, gw_point_t *);
} ops_t;

static const ops_t cur_ops = {gw_engine_new, gw_engine_free, gw_engine_push_f64};

#ifdef GW_BENCH_HAVE_PREV
gw_engine_t *prev_gw_engine_new(const gw_engine_config_t *cfg);
void prev_gw_engine_free(gw_engine_t *e);
int prev_gw_engine_push_f64(gw_engine_t *e, const gw_msg_t *m, const double *z, gw_point_t *out);
size_t prev_gw_engine_stream_bytes(uint32_t k, uint32_t window);
static const ops_t prev_ops = {prev_gw_engine_new, prev_gw_engine_free, prev_gw_engine_push_f64};
#endif

static double engine_rate_ops(const ops_t *ops, uint32_t k, uint32_t w, uint32_t r,
                              uint32_t ell, const double *pool, double seconds) {
  gw_engine_config_t c;
  gw_engine_config_default(&c);
  c.window = w;
  c.rank_every = r;
  c.fd_rows = ell;
  gw_engine_t *e = ops->make(&c);
  if (!e) return -1;
  gw_msg_t m;
  memset(&m, 0, sizeof m);
  m.run = "bench";
  m.run_len = 5;
  m.tag = "all";
  m.tag_len = 3;
  m.k = k;
  m.kind = GW_SKETCH_SJLT;
  m.s = 4;
  gw_point_t p;
  uint64_t step = 0, sink = 0;
  for (uint32_t i = 0; i < 2 * w; i++) {
    m.step = ++step;
    ops->push(e, &m, pool + (step % POOL) * k, &p);
  }
  uint64_t count = 0;
  double t0 = now_s(), t;
  do {
    for (int i = 0; i < 64; i++) {
      m.step = ++step;
      sink += (uint64_t)ops->push(e, &m, pool + (step % POOL) * k, &p);
      sink += p.rank_90;
    }
    count += 64;
    t = now_s();
  } while (t - t0 < seconds);
  ops->free(e);
  if (sink == 0) return -1; /* keeps the loop from being optimised away */
  return (double)count / (t - t0);
}

/* Heap bytes per stream, measured (glibc's mallinfo2): the growth of the
 * allocated total over `streams` streams of k, W, each fed 2W + 1 messages
 * (window full, whole-run sketch held), divided by their number. */
static double engine_heap_per_stream(const ops_t *ops, uint32_t k, uint32_t w, uint32_t ell,
                                     const double *pool, uint32_t streams) {
  gw_engine_config_t c;
  gw_engine_config_default(&c);
  c.window = w;
  c.fd_rows = ell;
  gw_engine_t *e = ops->make(&c);
  if (!e) return -1;
  char tag[32];
  gw_msg_t m;
  memset(&m, 0, sizeof m);
  m.run = "bench";
  m.run_len = 5;
  m.tag = tag;
  m.k = k;
  m.kind = GW_SKETCH_SJLT;
  m.s = 4;
  /* one stream first, so the engine's shared scratch is not counted */
  snprintf(tag, sizeof tag, "warm");
  m.tag_len = strlen(tag);
  for (uint32_t i = 0; i <= 2 * w; i++) {
    m.step = i + 1;
    ops->push(e, &m, pool + (i % POOL) * k, NULL);
  }
  size_t before = mallinfo2().uordblks;
  for (uint32_t s = 0; s < streams; s++) {
    m.tag_len = (size_t)snprintf(tag, sizeof tag, "t%u", s);
    for (uint32_t i = 0; i <= 2 * w; i++) {
      m.step = i + 1;
      ops->push(e, &m, pool + ((i + s) % POOL) * k, NULL);
    }
  }
  double per = ((double)mallinfo2().uordblks - (double)before) / streams;
  ops->free(e);
  return per;
}

static double engine_rate(uint32_t k, uint32_t w, uint32_t r, const double *pool,
                          double seconds) {
  return engine_rate_ops(&cur_ops, k, w, r, 64, pool, seconds);
}

/* ---- the baseline: SVD of the increment matrix every message ------------ */

typedef struct {
  uint32_t k, w;
  uint64_t n;
  double *ring, *zprev, *ema, *r1, *re, *zz;
  double cum_r1, cum_re, cum_zz;
  double *h, *s, *work;
  lapack_int lwork, *iwork;
} svdref_t;

static void svdref_free(svdref_t *b) {
  free(b->ring);
  free(b->zprev);
  free(b->ema);
  free(b->r1);
  free(b->re);
  free(b->zz);
  free(b->h);
  free(b->s);
  free(b->work);
  free(b->iwork);
}

static int svdref_init(svdref_t *b, uint32_t k, uint32_t w) {
  memset(b, 0, sizeof *b);
  b->k = k;
  b->w = w;
  b->ring = malloc((size_t)w * k * sizeof(double));
  b->zprev = malloc(k * sizeof(double));
  b->ema = malloc(k * sizeof(double));
  b->r1 = calloc(w, sizeof(double));
  b->re = calloc(w, sizeof(double));
  b->zz = calloc(w, sizeof(double));
  b->h = malloc((size_t)w * k * sizeof(double));
  b->s = malloc(w * sizeof(double));
  b->iwork = malloc(8 * (size_t)w * sizeof(lapack_int));
  double q;
  if (!b->ring || !b->zprev || !b->ema || !b->r1 || !b->re || !b->zz || !b->h ||
      !b->s || !b->iwork ||
      LAPACKE_dgesdd_work(LAPACK_COL_MAJOR, 'N', (lapack_int)k, (lapack_int)w, b->h,
                          (lapack_int)k, b->s, NULL, 1, NULL, 1, &q, -1, b->iwork) != 0)
    return -1;
  b->lwork = (lapack_int)q;
  b->work = malloc((size_t)b->lwork * sizeof(double));
  return b->work ? 0 : -1;
}

/* Same point fields as the engine; returns rank_90. */
static uint32_t svdref_push(svdref_t *b, const double *z, double beta, double *kappa) {
  const uint32_t k = b->k, w = b->w;
  if (b->n == 0) {
    memcpy(b->zprev, z, k * sizeof(double));
    memcpy(b->ema, z, k * sizeof(double));
    b->n = 1;
    return 0;
  }
  uint64_t n = b->n++;
  uint32_t slot = (uint32_t)((n - 1) % w), len = n < w ? (uint32_t)n : w;
  double *d = b->ring + (size_t)slot * k, r1 = 0, re = 0, zz = 0;
  for (uint32_t i = 0; i < k; i++) {
    d[i] = z[i] - b->zprev[i];
    double f = z[i] - b->ema[i];
    r1 += d[i] * d[i];
    re += f * f;
    zz += z[i] * z[i];
    b->ema[i] = beta * b->ema[i] + (1 - beta) * z[i];
  }
  memcpy(b->zprev, z, k * sizeof(double));
  b->r1[slot] = r1;
  b->re[slot] = re;
  b->zz[slot] = zz;
  b->cum_r1 += r1;
  b->cum_re += re;
  b->cum_zz += zz;
  double p1 = 0, pe = 0, zw = 0;
  for (uint32_t t = 0; t < len; t++) {
    p1 += b->r1[t];
    pe += b->re[t];
    zw += b->zz[t];
  }
  kappa[0] = p1 / zw;
  kappa[1] = pe / zw;
  kappa[2] = b->cum_r1 / b->cum_zz;
  kappa[3] = b->cum_re / b->cum_zz;
  /* the ring is already column-major k×len; dgesdd destroys its input */
  memcpy(b->h, b->ring, (size_t)len * k * sizeof(double));
  if (LAPACKE_dgesdd_work(LAPACK_COL_MAJOR, 'N', (lapack_int)k, (lapack_int)len, b->h,
                          (lapack_int)k, b->s, NULL, 1, NULL, 1, b->work, b->lwork,
                          b->iwork) != 0)
    return 0;
  double total = 0, c = 0;
  for (uint32_t i = 0; i < len; i++) total += b->s[i] * b->s[i];
  for (uint32_t i = 0; i < len; i++) {
    c += b->s[i] * b->s[i];
    if (c / total >= 0.9) return i + 1;
  }
  return len;
}

static double svd_rate(uint32_t k, uint32_t w, const double *pool, double seconds) {
  svdref_t b;
  if (svdref_init(&b, k, w) != 0) {
    svdref_free(&b);
    return -1;
  }
  double kappa[4];
  uint64_t step = 0, sink = 0;
  for (uint32_t i = 0; i < 2 * w; i++, step++) svdref_push(&b, pool + (step % POOL) * k, 0.9, kappa);
  uint64_t count = 0;
  double t0 = now_s(), t;
  do {
    for (int i = 0; i < 64; i++, step++)
      sink += svdref_push(&b, pool + (step % POOL) * k, 0.9, kappa);
    count += 64;
    t = now_s();
  } while (t - t0 < seconds);
  svdref_free(&b);
  if (sink == 0) return -1;
  return (double)count / (t - t0);
}

/* What refreshing the whole-run rank every rank_every messages would cost:
 * the eigenvalues (dsytrd + dsterf, as the windowed rank) of the Gram matrix
 * of [B; the p increments since the last shrink], m = ℓ − 1 + p, for the p
 * a refresh at rank_every r sees (1, 1 + r, …, < W); µs per message. */
static double refresh_cost(uint32_t k, uint32_t w, uint32_t ell, uint32_t r, const double *pool,
                           int reps) {
  const uint32_t mmax = ell - 1 + w;
  double *g = malloc((size_t)mmax * mmax * sizeof(double)), *a = malloc((size_t)mmax * mmax * sizeof(double));
  double *lam = malloc(mmax * sizeof(double)), *off = malloc(mmax * sizeof(double));
  double *tau = malloc(mmax * sizeof(double)), *work = malloc(mmax * sizeof(double));
  double *c = malloc((size_t)mmax * k * sizeof(double));
  double total = 0;
  if (!g || !a || !lam || !off || !tau || !work || !c) goto done;
  for (uint32_t j = 0; j < mmax; j++)
    for (uint32_t i = 0; i < k; i++) c[(size_t)j * k + i] = pool[(size_t)(j + 1) * k + i] - pool[(size_t)j * k + i];
  cblas_dsyrk(CblasColMajor, CblasUpper, CblasTrans, (int)mmax, (int)k, 1.0, c, (int)k, 0.0, g, (int)mmax);
  for (int rep = 0; rep < reps; rep++)
    for (uint32_t p = 1; p < w; p += r) {
      const uint32_t m = ell - 1 + p;
      double t0 = now_s();
      for (uint32_t j = 0; j < m; j++) memcpy(a + (size_t)j * m, g + (size_t)j * mmax, (j + 1) * sizeof(double));
      LAPACKE_dsytrd_work(LAPACK_COL_MAJOR, 'U', (lapack_int)m, a, (lapack_int)m, lam, off, tau, work, (lapack_int)m);
      LAPACKE_dsterf_work((lapack_int)m, lam, off);
      total += now_s() - t0;
    }
done:
  free(g);
  free(a);
  free(lam);
  free(off);
  free(tau);
  free(work);
  free(c);
  /* refreshes happen once every r messages */
  return total > 0 ? 1e6 * total / reps / ((w - 1) / r + 1) / r : NAN;
}

int main(int argc, char **argv) {
  int only_ab = argc > 1 && strcmp(argv[1], "ab") == 0;
  if (only_ab) argc--, argv++;
  int reps = argc > 1 ? atoi(argv[1]) : 5;
  double seconds = argc > 2 ? atof(argv[2]) : 0.2;
  if (reps < 1 || reps > 101 || !(seconds > 0)) {
    fprintf(stderr, "usage: bench_engine [REPS] [SECONDS_PER_MEASUREMENT]\n");
    return 2;
  }
  openblas_set_num_threads(1);
  static const uint32_t ks[] = {256, 1024}, ws[] = {32, 64, 128}, rs[] = {1, 8};
  double *pool[2] = {make_pool(256), make_pool(1024)};
  double *v = malloc((size_t)reps * sizeof(double)), *vb = malloc((size_t)reps * sizeof(double));
  if (!pool[0] || !pool[1] || !v || !vb) return 1;

  if (only_ab) goto ab;
  /* the headline: engine (256, 64, 1) and the SVD baseline, alternately */
  for (int i = 0; i < reps; i++) {
    v[i] = engine_rate(256, 64, 1, pool[0], seconds);
    vb[i] = svd_rate(256, 64, pool[0], seconds);
  }
  double eng = median(v, reps), svd = median(vb, reps);

  printf("bench_engine: %d reps x %.2f s, median messages/s, one stream, one thread\n\n",
         reps, seconds);
  printf("| k | W | rank_every | messages/s | us/message | bytes/stream |\n");
  printf("|---:|---:|---:|---:|---:|---:|\n");
  for (int a = 0; a < 2; a++)
    for (int b = 0; b < 3; b++)
      for (int c = 0; c < 2; c++) {
        double rate;
        if (ks[a] == 256 && ws[b] == 64 && rs[c] == 1) {
          rate = eng;
        } else {
          for (int i = 0; i < reps; i++)
            v[i] = engine_rate(ks[a], ws[b], rs[c], pool[a], seconds);
          rate = median(v, reps);
        }
        printf("| %u | %u | %u | %.0f | %.1f | %zu |\n", ks[a], ws[b], rs[c], rate,
               1e6 / rate, gw_engine_stream_bytes(ks[a], ws[b]));
        fflush(stdout);
      }
  /* for the default rank_every: the cost of freshness at the default W */
  static const uint32_t sweep[] = {1, 2, 4, 8, 16, 32, 1000000};
  double rate_sweep[7];
  printf("\nrank_every sweep at k 256, W 64 (1000000: rank computed once, i.e. "
         "the ingest cost without rank):\n\n");
  printf("| rank_every | messages/s | us/message | rank fields stale by at most |\n");
  printf("|---:|---:|---:|---:|\n");
  for (int c = 0; c < 7; c++) {
    for (int i = 0; i < reps; i++) v[i] = engine_rate(256, 64, sweep[c], pool[0], seconds);
    rate_sweep[c] = median(v, reps);
    printf("| %u | %.0f | %.1f | %u messages |\n", sweep[c], rate_sweep[c],
           1e6 / rate_sweep[c], sweep[c] - 1);
    fflush(stdout);
  }
  printf("\nrank recompute at k 256, W 64: %.1f us; everything else: %.1f us/message\n",
         1e6 / rate_sweep[0] - 1e6 / rate_sweep[6], 1e6 / rate_sweep[6]);
  printf("\nbaseline (dgesdd of the k x |J| increment matrix every message), k 256, W 64: "
         "%.0f messages/s (%.1f us/message)\n",
         svd, 1e6 / svd);
  printf("ratio engine/baseline at k 256, W 64, rank_every 1: %.2fx\n", eng / svd);
  printf("window bytes W*k*8 at k 256, W 64: %u; stream block: %zu (%.2fx)\n",
         64u * 256u * 8u, gw_engine_stream_bytes(256, 64),
         (double)gw_engine_stream_bytes(256, 64) / (64.0 * 256 * 8));

ab:
  /* this engine against the one before the whole-run quantities */
  printf("\nwhole-run quantities: this engine (fd_rows l) vs the previous engine, "
         "k 256, W 64, alternately:\n\n");
  printf("| rank_every | l | previous us/message | this us/message | ratio | "
         "bytes/stream previous | this | ratio |\n");
  printf("|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  static const uint32_t rr[] = {8, 1, 8, 8}, ll[] = {64, 64, 32, 16};
  for (int c = 0; c < 4; c++) {
    double prev_us = NAN;
    size_t prev_bytes = 0;
    for (int i = 0; i < reps; i++) { /* ABBA: this, previous, previous, this */
      double a1 = engine_rate_ops(&cur_ops, 256, 64, rr[c], ll[c], pool[0], seconds / 2);
#ifdef GW_BENCH_HAVE_PREV
      double b1 = engine_rate_ops(&prev_ops, 256, 64, rr[c], ll[c], pool[0], seconds / 2);
      double b2 = engine_rate_ops(&prev_ops, 256, 64, rr[c], ll[c], pool[0], seconds / 2);
      vb[i] = 2.0 / (1.0 / b1 + 1.0 / b2);
#endif
      double a2 = engine_rate_ops(&cur_ops, 256, 64, rr[c], ll[c], pool[0], seconds / 2);
      v[i] = 2.0 / (1.0 / a1 + 1.0 / a2);
    }
#ifdef GW_BENCH_HAVE_PREV
    prev_us = 1e6 / median(vb, reps);
    prev_bytes = prev_gw_engine_stream_bytes(256, 64);
#endif
    double cur_us = 1e6 / median(v, reps);
    size_t cur_bytes = gw_engine_stream_bytes_fd(256, 64, ll[c]);
    printf("| %u | %u | %.1f | %.1f | %.2fx | %zu | %zu | %.2fx |\n", rr[c], ll[c], prev_us,
           cur_us, cur_us / prev_us, prev_bytes, cur_bytes,
           prev_bytes ? (double)cur_bytes / (double)prev_bytes : NAN);
    fflush(stdout);
  }
  {
    double cur = engine_heap_per_stream(&cur_ops, 256, 64, 64, pool[0], 256), prev = NAN;
#ifdef GW_BENCH_HAVE_PREV
    prev = engine_heap_per_stream(&prev_ops, 256, 64, 64, pool[0], 256);
#endif
    printf("\nheap per stream, measured (mallinfo2, 256 streams, k 256, W 64, l 64): previous %.0f, "
           "this %.0f bytes (%.2fx)\n", prev, cur, cur / prev);
  }
  printf("\nrefreshing the whole-run rank every rank_every = 8 messages instead (eigenvalues of "
         "[B; increments since the shrink], up to %u rows): %.1f us/message more\n",
         63u + 63u, refresh_cost(256, 64, 64, 8, pool[0], reps * 20));
  free(pool[0]);
  free(pool[1]);
  free(v);
  free(vb);
  return 0;
}
