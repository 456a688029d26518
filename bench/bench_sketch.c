/* bench_sketch.c — throughput of the sketch beside memcpy and a plain float
 * sum over the same array, measured in the same run.
 *
 * For each size every repetition times, back to back: memcpy of the array,
 * a float sum of it, and gw_sketch_accum_f32 (k = 256; the path this CPU
 * runs best, and the portable path for comparison). Each figure is the median over
 * the repetitions, as bytes of the input array per second; the ratios to
 * memcpy and to the sum are what to compare across machines, since the
 * absolute figures move with the machine's load.
 *
 *   usage: bench_sketch [REPS]     (default 9)
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gw_sketch.h"

/* Internal hook of client/sketch.c: isa 0 = best available, 1 = portable. */
int gw_sketch_accum_isa(const gw_sketch_params_t *p, const void *g, int f64,
                        size_t n, uint64_t offset, double *z, int isa);

enum { ROW_MEMCPY, ROW_SUM, ROW_FIRST_SKETCH };

typedef struct job_s {
  const char *name;
  uint8_t kind, s;
  int isa;
} job_t;

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

/* Sixteen independent partial sums, so the sum is limited by memory, not by
 * the latency of one chain of additions. */
static float sum_f32(const float *g, size_t n) {
  float acc[16] = {0};
  size_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int j = 0; j < 16; j++) acc[j] += g[i + j];
  for (; i < n; i++) acc[0] += g[i];
  float s = 0;
  for (int j = 0; j < 16; j++) s += acc[j];
  return s;
}

static void fill_input(float *g, size_t n) {
  uint64_t x = 0x243F6A8885A308D3ull;
  for (size_t i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    g[i] = (float)((double)(x >> 11) * 0x1p-53 - 0.5);
  }
}

/* Times the jobs on an array of d floats, reps times, and prints table rows. */
static int run_size(size_t d, const job_t *jobs, int njobs, int reps) {
  const int nrows = ROW_FIRST_SKETCH + njobs;
  float *g = malloc(d * sizeof *g), *dst = malloc(d * sizeof *dst);
  double *t = calloc((size_t)nrows * (size_t)reps, sizeof *t);
  double z[256];
  volatile float sink = 0;
  int rc = 0;

  if (g == NULL || dst == NULL || t == NULL) {
    rc = -ENOMEM;
    goto done;
  }
  fill_input(g, d);
  memset(dst, 0, d * sizeof *dst);
  for (int r = -1; r < reps; r++) { /* r = -1 warms up, not recorded */
    double t0 = now_s();
    memcpy(dst, g, d * sizeof *g);
    double t1 = now_s();
    sink += sum_f32(g, d) + dst[d / 2];
    double t2 = now_s();
    if (r >= 0) {
      t[ROW_MEMCPY * reps + r] = t1 - t0;
      t[ROW_SUM * reps + r] = t2 - t1;
    }
    for (int j = 0; j < njobs; j++) {
      gw_sketch_params_t p = {.k = 256, .kind = jobs[j].kind, .s = jobs[j].s, .seed = 7};
      memset(z, 0, sizeof z);
      double a = now_s();
      rc = gw_sketch_accum_isa(&p, g, 0, d, 0, z, jobs[j].isa);
      double b = now_s();
      if (rc != 0) goto done;
      sink += (float)z[3];
      if (r >= 0) t[(ROW_FIRST_SKETCH + j) * reps + r] = b - a;
    }
  }
  double med[ROW_FIRST_SKETCH + 16];
  for (int i = 0; i < nrows; i++) med[i] = median(t + (size_t)i * (size_t)reps, reps);
  const double bytes = (double)d * sizeof(float);
  for (int i = 0; i < nrows; i++) {
    const char *name = i == ROW_MEMCPY ? "memcpy"
                       : i == ROW_SUM  ? "float sum"
                                       : jobs[i - ROW_FIRST_SKETCH].name;
    printf("| 1e%d | %-24s | %9.3f | %8.3f | %8.3g | %6.1f%% | %6.1f%% |\n",
           (int)lround(log10((double)d)), name, med[i] * 1e3, med[i] / (double)d * 1e9,
           bytes / med[i] / 1e9, 100.0 * med[ROW_MEMCPY] / med[i],
           100.0 * med[ROW_SUM] / med[i]);
  }
  (void)sink;
done:
  free(g);
  free(dst);
  free(t);
  return rc;
}

int main(int argc, char **argv) {
  int reps = argc > 1 ? atoi(argv[1]) : 9;
  static const job_t big[] = {
      {"sjlt s=1, best", GW_SKETCH_SJLT, 1, 0},
      {"sjlt s=4, best", GW_SKETCH_SJLT, 4, 0},
      {"sjlt s=1, portable", GW_SKETCH_SJLT, 1, 1},
      {"sjlt s=4, portable", GW_SKETCH_SJLT, 4, 1},
  };
  static const job_t small[] = {
      {"gaussian", GW_SKETCH_GAUSSIAN, 0, 0},
  };
  int rc = 0;

  if (reps < 1) {
    fprintf(stderr, "usage: bench_sketch [REPS]\n");
    return 2;
  }
  printf("| d | what | median ms | ns/coord | GB/s | vs memcpy | vs sum |\n");
  printf("|---|------|----------:|---------:|-----:|----------:|-------:|\n");
  rc = run_size(1000000, big, 4, reps);
  if (rc == 0) rc = run_size(10000000, big, 4, reps);
  if (rc == 0) rc = run_size(100000, small, 1, reps < 3 ? reps : 3);
  if (rc != 0) {
    fprintf(stderr, "bench_sketch: %s\n", gw_strerror(rc));
    return 1;
  }
  return 0;
}
