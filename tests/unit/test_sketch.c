/* test_sketch.c — the sketch (client/sketch.c) against proto/SKETCH.md.
 *
 * References: the NumPy vectors in proto/vectors/sketch_vectors.json
 * (proto/vectors/gen_sketch.py, float64), a plain-loop implementation of the
 * definition written here (ref_sketch), and closed forms: every sjlt column
 * has exactly s nonzeros ±1/sqrt(s), one per row block, so ‖S e_i‖ = 1;
 * E‖Sg‖² = ‖g‖² over seeds; S is linear; S(2g) = 2 Sg exactly.
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
#include <cmocka.h>

#include <cjson/cJSON.h>

#include "gw_sketch.h"

/* Internal hook of client/sketch.c: isa 0 = best, 1 = portable scalar,
 * 2 = AVX2, 3 = AVX-512; -ENOTSUP where this CPU lacks it. */
int gw_sketch_accum_isa(const gw_sketch_params_t *p, const void *g, int f64,
                        size_t n, uint64_t offset, double *z, int isa);

#define ISA_SCALAR 1
#define ISA_LAST 3

/* ---- helpers ---------------------------------------------------------- */

static uint64_t rng_next(uint64_t *st) { /* splitmix64 */
  uint64_t x = (*st += 0x9E3779B97F4A7C15ull);
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

static double rng_unit(uint64_t *st) { /* uniform in [-1, 1) */
  return (double)(rng_next(st) >> 11) * 0x1p-52 - 1.0;
}

static double norm2(const double *z, size_t k) {
  double s = 0;
  for (size_t i = 0; i < k; i++) s += z[i] * z[i];
  return sqrt(s);
}

static double max_abs_diff(const double *a, const double *b, size_t k) {
  double m = 0;
  for (size_t i = 0; i < k; i++) m = fmax(m, fabs(a[i] - b[i]));
  return m;
}

/* The definition, written out as plainly as possible. */
static uint64_t ref_fmix(uint64_t x) {
  x ^= x >> 33;
  x *= 0xFF51AFD7ED558CCDull;
  x ^= x >> 33;
  x *= 0xC4CEB9FE1A85EC53ull;
  x ^= x >> 33;
  return x;
}

static void ref_sketch(const gw_sketch_params_t *p, const double *g, size_t n,
                       uint64_t offset, double *z) {
  const uint64_t key = p->seed * 0x9E3779B97F4A7C15ull;
  for (size_t e = 0; e < n; e++) {
    uint64_t i = offset + e;
    if (p->kind == GW_SKETCH_SJLT) {
      for (unsigned j = 0; j < p->s; j++) {
        uint64_t lo = (uint64_t)j * p->k / p->s, hi = (uint64_t)(j + 1) * p->k / p->s;
        uint64_t h = ref_fmix(key ^ (i * 8 + j));
        uint64_t row = lo + (((h >> 32) * (hi - lo)) >> 32);
        z[row] += ((h & 1) ? -1.0 : 1.0) / sqrt((double)p->s) * g[e];
      }
    } else {
      for (uint32_t b = 0; b < p->k; b++) {
        uint64_t h = ref_fmix(key ^ (i * 65536 + b) ^ 0x8000000000000000ull);
        double u1 = ((double)(h >> 32) + 0.5) / 4294967296.0;
        double u2 = ((double)(h & 0xFFFFFFFFu) + 0.5) / 4294967296.0;
        z[b] += sqrt(-2.0 * log(u1)) * cos(2.0 * 3.14159265358979323846 * u2) /
                sqrt((double)p->k) * g[e];
      }
    }
  }
}

static int isa_available(int isa) {
  gw_sketch_params_t p = {.k = 4, .kind = GW_SKETCH_SJLT, .s = 1, .seed = 0};
  float g = 1.0f;
  double z[4] = {0};
  return gw_sketch_accum_isa(&p, &g, 0, 1, 0, z, isa) == 0;
}

static char *read_text(const char *path) {
  FILE *f = fopen(path, "rb");
  char *buf = NULL;
  long len;
  if (f == NULL) return NULL;
  if (fseek(f, 0, SEEK_END) == 0 && (len = ftell(f)) >= 0 &&
      fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t)len + 1)) != NULL) {
    if (fread(buf, 1, (size_t)len, f) != (size_t)len) {
      free(buf);
      buf = NULL;
    } else {
      buf[len] = '\0';
    }
  }
  fclose(f);
  return buf;
}

static cJSON *load_vectors(void) {
  const char *src = getenv("GW_SOURCE_DIR");
  char path[4096];
  snprintf(path, sizeof path, "%s/proto/vectors/sketch_vectors.json",
           src != NULL ? src : ".");
  char *text = read_text(path);
  if (text == NULL) fail_msg("cannot read %s", path);
  cJSON *doc = cJSON_Parse(text);
  free(text);
  if (doc == NULL) fail_msg("%s is not valid JSON", path);
  return doc;
}

static uint64_t json_u64(const cJSON *obj, const char *key) {
  const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
  assert_non_null(it);
  assert_true(cJSON_IsString(it));
  return strtoull(it->valuestring, NULL, 10);
}

static int json_int(const cJSON *obj, const char *key) {
  const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
  assert_non_null(it);
  assert_true(cJSON_IsNumber(it));
  return it->valueint;
}

/* ---- cases ------------------------------------------------------------ */

static void hash_matches_vectors(void **state) {
  (void)state;
  cJSON *doc = load_vectors();
  const cJSON *h;
  int count = 0;
  cJSON_ArrayForEach(h, cJSON_GetObjectItemCaseSensitive(doc, "hashes")) {
    uint64_t seed = json_u64(h, "seed"), i = json_u64(h, "i"), j = json_u64(h, "j");
    uint64_t want = json_u64(h, "h");
    assert_true(gw_sketch_hash(seed, i, j) == want);
    assert_true(ref_fmix((seed * 0x9E3779B97F4A7C15ull) ^ (i * 8 + j)) == want);
    count++;
  }
  assert_true(count >= 5);
  /* The worked example of SKETCH.md. */
  assert_true(gw_sketch_hash(1, 2, 0) == 0x00DDBEA04AD81625ull);
  assert_true(gw_sketch_hash(0, 0, 0) == 0);
  cJSON_Delete(doc);
}

static void sketch_matches_vectors(void **state) {
  (void)state;
  cJSON *doc = load_vectors();
  const cJSON *v;
  int count = 0, kinds = 0;
  cJSON_ArrayForEach(v, cJSON_GetObjectItemCaseSensitive(doc, "vectors")) {
    const char *kind = cJSON_GetObjectItemCaseSensitive(v, "kind")->valuestring;
    gw_sketch_params_t p = {
        .k = (uint32_t)json_int(v, "k"),
        .kind = strcmp(kind, "sjlt") == 0 ? GW_SKETCH_SJLT : GW_SKETCH_GAUSSIAN,
        .s = (uint8_t)json_int(v, "s"),
        .seed = json_u64(v, "seed")};
    size_t d = (size_t)json_int(v, "d");
    const cJSON *in = cJSON_GetObjectItemCaseSensitive(v, "input");
    const cJSON *ex = cJSON_GetObjectItemCaseSensitive(v, "expected");
    assert_int_equal(cJSON_GetArraySize(in), (int)d);
    assert_int_equal(cJSON_GetArraySize(ex), (int)p.k);
    assert_int_equal(gw_sketch_check(&p), 0);

    float *g = malloc(d * sizeof *g);
    double *g64 = malloc(d * sizeof *g64);
    double *want = malloc(p.k * sizeof *want), *z = malloc(p.k * sizeof *z);
    float *zf = malloc(p.k * sizeof *zf);
    assert_non_null(g);
    assert_non_null(g64);
    assert_non_null(want);
    assert_non_null(z);
    assert_non_null(zf);
    for (size_t i = 0; i < d; i++) {
      g[i] = (float)cJSON_GetArrayItem(in, (int)i)->valuedouble;
      g64[i] = g[i];
    }
    for (uint32_t r = 0; r < p.k; r++) want[r] = cJSON_GetArrayItem(ex, (int)r)->valuedouble;
    const double tol = 1e-6 * norm2(want, p.k);

    for (int isa = 0; isa <= ISA_LAST; isa++) {
      for (int f64 = 0; f64 <= 1; f64++) {
        memset(z, 0, p.k * sizeof *z);
        int rc = gw_sketch_accum_isa(&p, f64 ? (const void *)g64 : (const void *)g,
                                     f64, d, 0, z, isa);
        if (rc == -ENOTSUP) continue;
        assert_int_equal(rc, 0);
        if (max_abs_diff(z, want, p.k) > tol)
          fail_msg("%s isa %d f64 %d: off by %g (tolerance %g)",
                   cJSON_GetObjectItemCaseSensitive(v, "name")->valuestring, isa,
                   f64, max_abs_diff(z, want, p.k), tol);
      }
    }
    memset(z, 0, p.k * sizeof *z);
    assert_int_equal(gw_sketch_accum_f32(&p, g, d, 0, z), 0);
    assert_true(max_abs_diff(z, want, p.k) <= tol);
    memset(z, 0, p.k * sizeof *z);
    assert_int_equal(gw_sketch_accum_f64(&p, g64, d, 0, z), 0);
    assert_true(max_abs_diff(z, want, p.k) <= tol);
    assert_int_equal(gw_sketch_f32(&p, g, d, zf), 0);
    for (uint32_t r = 0; r < p.k; r++) assert_true(fabs(zf[r] - want[r]) <= tol);

    kinds |= p.kind == GW_SKETCH_SJLT ? 1 : 2;
    count++;
    free(g);
    free(g64);
    free(want);
    free(z);
    free(zf);
  }
  assert_true(count >= 10);
  assert_int_equal(kinds, 3);
  cJSON_Delete(doc);
}

/* Random shapes, offsets (up to the top of the index space), dtypes and
 * call lengths on both sides of the copies/direct threshold, against the
 * plain-loop definition. */
static void matches_plain_definition(void **state) {
  (void)state;
  static const uint32_t ks[] = {1, 2, 3, 7, 16, 100, 256, 1000, 5000};
  uint64_t st = 1;
  for (int trial = 0; trial < 120; trial++) {
    gw_sketch_params_t p = {.k = ks[rng_next(&st) % 9], .seed = rng_next(&st)};
    int gauss = trial % 6 == 5;
    p.kind = gauss ? GW_SKETCH_GAUSSIAN : GW_SKETCH_SJLT;
    p.s = gauss ? 0 : (uint8_t)(1 + rng_next(&st) % 8);
    if (!gauss && p.s > p.k) p.s = (uint8_t)p.k;
    if (gauss && p.k > 256) p.k = 256;
    size_t n = gauss ? rng_next(&st) % 200 : rng_next(&st) % 6000;
    uint64_t offset = trial % 4 == 0   ? 0
                      : trial % 4 == 1 ? rng_next(&st) % 100000
                      : trial % 4 == 2 ? UINT64_MAX - n + 1 /* last index 2^64-1 */
                                       : rng_next(&st) >> 3;
    if (n == 0 && trial % 4 == 2) offset = 0;
    double *g = malloc((n + 1) * sizeof *g);
    float *gf = malloc((n + 1) * sizeof *gf);
    double *want = calloc(p.k, sizeof *want), *z = calloc(p.k, sizeof *z);
    assert_non_null(g);
    assert_non_null(gf);
    assert_non_null(want);
    assert_non_null(z);
    for (size_t i = 0; i < n; i++) {
      gf[i] = (float)(rng_unit(&st) * 4.0);
      g[i] = trial % 2 ? rng_unit(&st) : (double)gf[i];
    }
    ref_sketch(&p, g, n, offset, want);
    int rc = trial % 2 ? gw_sketch_accum_f64(&p, g, n, offset, z)
                       : gw_sketch_accum_f32(&p, gf, n, offset, z);
    assert_int_equal(rc, 0);
    double err = max_abs_diff(z, want, p.k), tol = 1e-12 * (norm2(want, p.k) + 1e-300);
    if (err > tol)
      fail_msg("trial %d k %u s %u n %zu offset %llu: off by %g (tolerance %g)",
               trial, p.k, p.s, n, (unsigned long long)offset, err, tol);
    free(g);
    free(gf);
    free(want);
    free(z);
  }
}

/* Every SIMD path against the portable one, bit for bit: all sizes around
 * the vector widths and block ends, unaligned starts, both dtypes, z not
 * cleared beforehand. */
static void simd_equals_scalar_bitwise(void **state) {
  (void)state;
  static const uint32_t ks[] = {1, 5, 16, 256, 300, 4096, 65536};
  static const size_t ns[] = {1, 7, 8, 9, 15, 16, 17, 31, 33, 127, 1000,
                              1023, 1024, 1025, 4100, 20000};
  uint64_t st = 7;
  int paths = 0;
  double *g = malloc(20001 * sizeof *g);
  float *gf = malloc(20001 * sizeof *gf);
  assert_non_null(g);
  assert_non_null(gf);
  for (size_t i = 0; i < 20001; i++) {
    gf[i] = (float)(rng_unit(&st) * 100.0);
    g[i] = rng_unit(&st) * 1e-3;
  }
  for (int isa = 2; isa <= ISA_LAST; isa++) {
    if (!isa_available(isa)) {
      print_message("isa %d not available on this CPU: not compared\n", isa);
      continue;
    }
    paths++;
    for (size_t a = 0; a < sizeof ks / sizeof ks[0]; a++) {
      for (unsigned s = 1; s <= 8; s++) {
        if (s > ks[a]) break;
        for (size_t b = 0; b < sizeof ns / sizeof ns[0]; b++) {
          gw_sketch_params_t p = {.k = ks[a], .kind = GW_SKETCH_SJLT,
                                  .s = (uint8_t)s, .seed = rng_next(&st)};
          size_t skip = rng_next(&st) % 2; /* unaligned start */
          uint64_t offset = rng_next(&st) % 3 == 0 ? 0 : rng_next(&st) >> 4;
          int f64 = (int)(rng_next(&st) % 2);
          const void *src = f64 ? (const void *)(g + skip) : (const void *)(gf + skip);
          double *z1 = malloc(p.k * sizeof *z1), *z2 = malloc(p.k * sizeof *z2);
          assert_non_null(z1);
          assert_non_null(z2);
          for (uint32_t r = 0; r < p.k; r++) z1[r] = z2[r] = (double)r * 0.25;
          assert_int_equal(gw_sketch_accum_isa(&p, src, f64, ns[b], offset, z1, ISA_SCALAR), 0);
          assert_int_equal(gw_sketch_accum_isa(&p, src, f64, ns[b], offset, z2, isa), 0);
          if (memcmp(z1, z2, p.k * sizeof *z1) != 0)
            fail_msg("isa %d differs from scalar: k %u s %u n %zu f64 %d", isa,
                     p.k, s, ns[b], f64);
          free(z1);
          free(z2);
        }
      }
    }
  }
  /* The default path is one of the compared ones. */
  gw_sketch_params_t p = {.k = 256, .kind = GW_SKETCH_SJLT, .s = 4, .seed = 3};
  double z1[256] = {0}, z2[256] = {0};
  assert_int_equal(gw_sketch_accum_isa(&p, gf, 0, 20000, 5, z1, ISA_SCALAR), 0);
  assert_int_equal(gw_sketch_accum_f32(&p, gf, 20000, 5, z2), 0);
  assert_memory_equal(z1, z2, sizeof z1);
  print_message("compared %d SIMD path(s) with the scalar path\n", paths);
  free(g);
  free(gf);
}

/* Column i of sjlt S: exactly s nonzeros, ±1/sqrt(s), one in each row block;
 * so ‖S e_i‖ = 1 exactly. Rows land uniformly over blocks. */
static void sjlt_columns_are_well_formed(void **state) {
  (void)state;
  uint64_t st = 11;
  for (unsigned s = 1; s <= 8; s++) {
    const uint32_t k = 37;
    gw_sketch_params_t p = {.k = k, .kind = GW_SKETCH_SJLT, .s = (uint8_t)s, .seed = 5};
    unsigned hits[37] = {0};
    for (int t = 0; t < 2000; t++) {
      double z[37] = {0};
      float one = 1.0f;
      uint64_t i = t < 1000 ? (uint64_t)t : rng_next(&st);
      assert_int_equal(gw_sketch_accum_f32(&p, &one, 1, i, z), 0);
      for (unsigned j = 0; j < s; j++) {
        uint32_t lo = j * k / s, hi = (j + 1) * k / s, nz = 0;
        for (uint32_t r = lo; r < hi; r++) {
          if (z[r] == 0.0) continue;
          nz++;
          hits[r]++;
          assert_true(fabs(fabs(z[r]) - 1.0 / sqrt((double)s)) < 1e-15);
        }
        assert_int_equal(nz, 1);
      }
      assert_true(fabs(norm2(z, k) - 1.0) < 1e-14);
    }
    /* 2000 columns over a block of w rows: each row ~2000/w times. */
    for (unsigned j = 0; j < s; j++) {
      uint32_t lo = j * k / s, hi = (j + 1) * k / s;
      for (uint32_t r = lo; r < hi; r++) {
        double mean = 2000.0 / (hi - lo);
        assert_true(fabs(hits[r] - mean) < 5.0 * sqrt(mean) + 1.0);
      }
    }
  }
}

/* E‖Sg‖² = ‖g‖²: the mean over many seeds is within 3% (the spread of one
 * seed is ~sqrt(2/k) ≈ 9% at k = 256, so 200 seeds put 3% at > 5 sigma). */
static void norm_preserved_in_expectation(void **state) {
  (void)state;
  struct {
    uint8_t kind, s;
    uint32_t k;
    size_t d;
    int seeds;
  } cases[] = {
      {GW_SKETCH_SJLT, 1, 256, 1000, 200},   {GW_SKETCH_SJLT, 3, 256, 1000, 200},
      {GW_SKETCH_SJLT, 4, 256, 1000, 200},   {GW_SKETCH_SJLT, 8, 64, 1000, 300},
      {GW_SKETCH_GAUSSIAN, 0, 64, 200, 300},
  };
  uint64_t st = 99;
  float *g = malloc(1000 * sizeof *g);
  assert_non_null(g);
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    double gg = 0, zz = 0;
    for (size_t i = 0; i < cases[c].d; i++) {
      g[i] = (float)rng_unit(&st);
      gg += (double)g[i] * g[i];
    }
    for (int t = 0; t < cases[c].seeds; t++) {
      gw_sketch_params_t p = {.k = cases[c].k, .kind = cases[c].kind,
                              .s = cases[c].s, .seed = (uint64_t)t * 7919 + 1};
      double z[256] = {0};
      assert_int_equal(gw_sketch_accum_f32(&p, g, cases[c].d, 0, z), 0);
      double n = norm2(z, p.k);
      zz += n * n;
    }
    double ratio = zz / cases[c].seeds / gg;
    if (fabs(ratio - 1.0) > 0.03)
      fail_msg("case %zu: E|z|^2 / |g|^2 = %.4f", c, ratio);
  }
  free(g);
}

static void seed_determines_sketch(void **state) {
  (void)state;
  uint64_t st = 5;
  float g[3000];
  for (size_t i = 0; i < 3000; i++) g[i] = (float)rng_unit(&st);
  for (int gauss = 0; gauss <= 1; gauss++) {
    const uint64_t seeds[] = {0, 1, 2, UINT64_MAX};
    double z[4][64];
    for (int a = 0; a < 4; a++) {
      gw_sketch_params_t p = {.k = 64, .kind = gauss ? GW_SKETCH_GAUSSIAN : GW_SKETCH_SJLT,
                              .s = gauss ? 0 : 4, .seed = seeds[a]};
      double again[64] = {0};
      size_t d = gauss ? 300 : 3000;
      memset(z[a], 0, sizeof z[a]);
      assert_int_equal(gw_sketch_accum_f32(&p, g, d, 0, z[a]), 0);
      assert_int_equal(gw_sketch_accum_f32(&p, g, d, 0, again), 0);
      assert_memory_equal(z[a], again, sizeof again);
    }
    for (int a = 0; a < 4; a++)
      for (int b = a + 1; b < 4; b++) {
        int same = 0;
        for (int r = 0; r < 64; r++) same += z[a][r] == z[b][r];
        assert_true(same < 4); /* independent sketches share no coordinates */
      }
  }
  /* sjlt and gaussian hash different keys even for the same seed. */
  gw_sketch_params_t ps = {.k = 8, .kind = GW_SKETCH_SJLT, .s = 1, .seed = 0};
  gw_sketch_params_t pg = {.k = 8, .kind = GW_SKETCH_GAUSSIAN, .s = 0, .seed = 0};
  double zs[8] = {0}, zg[8] = {0};
  assert_int_equal(gw_sketch_accum_f32(&ps, g, 100, 0, zs), 0);
  assert_int_equal(gw_sketch_accum_f32(&pg, g, 100, 0, zg), 0);
  assert_true(max_abs_diff(zs, zg, 8) > 0.1);
}

static void sketch_is_linear(void **state) {
  (void)state;
  uint64_t st = 17;
  enum { D = 5000 };
  double *a = malloc(D * sizeof *a), *b = malloc(D * sizeof *b);
  double *ab = malloc(D * sizeof *ab), *a2 = malloc(D * sizeof *a2);
  assert_non_null(a);
  assert_non_null(b);
  assert_non_null(ab);
  assert_non_null(a2);
  for (size_t i = 0; i < D; i++) {
    a[i] = rng_unit(&st);
    b[i] = rng_unit(&st) * 3.0;
    ab[i] = a[i] + b[i];
    a2[i] = 2.0 * a[i];
  }
  for (int c = 0; c < 4; c++) {
    gw_sketch_params_t p = {.k = 128, .kind = c == 3 ? GW_SKETCH_GAUSSIAN : GW_SKETCH_SJLT,
                            .s = c == 3 ? 0 : (uint8_t)(1 + 3 * c), .seed = 1234 + c};
    size_t d = c == 3 ? 400 : D;
    double za[128] = {0}, zb[128] = {0}, zab[128] = {0}, z2[128] = {0}, sum[128];
    assert_int_equal(gw_sketch_accum_f64(&p, a, d, 0, za), 0);
    assert_int_equal(gw_sketch_accum_f64(&p, b, d, 0, zb), 0);
    assert_int_equal(gw_sketch_accum_f64(&p, ab, d, 0, zab), 0);
    assert_int_equal(gw_sketch_accum_f64(&p, a2, d, 0, z2), 0);
    for (int r = 0; r < 128; r++) {
      sum[r] = za[r] + zb[r];
      assert_true(z2[r] == 2.0 * za[r]); /* scaling by 2 is exact */
    }
    assert_true(max_abs_diff(zab, sum, 128) <= 1e-12 * norm2(zab, 128));
  }
  free(a);
  free(b);
  free(ab);
  free(a2);
}

/* A gradient cut into shards, each sketched at its global offset into the
 * same z, gives the sketch of the whole. */
static void shards_sum_to_whole(void **state) {
  (void)state;
  uint64_t st = 23;
  enum { D = 20000 };
  float *g = malloc(D * sizeof *g);
  assert_non_null(g);
  for (size_t i = 0; i < D; i++) g[i] = (float)rng_unit(&st);
  for (int c = 0; c < 4; c++) {
    gw_sketch_params_t p = {.k = c == 3 ? 16 : 256,
                            .kind = c == 3 ? GW_SKETCH_GAUSSIAN : GW_SKETCH_SJLT,
                            .s = c == 3 ? 0 : (uint8_t)(1 << c), .seed = 77 + c};
    size_t d = c == 3 ? 2000 : D;
    double whole[256] = {0}, parts[256] = {0};
    uint64_t base = c == 2 ? 1000000007ull : 0; /* the whole may start anywhere */
    assert_int_equal(gw_sketch_accum_f32(&p, g, d, base, whole), 0);
    size_t at = 0;
    while (at < d) {
      size_t len = rng_next(&st) % 3 == 0 ? rng_next(&st) % 20 : rng_next(&st) % 7000;
      if (len > d - at) len = d - at;
      assert_int_equal(gw_sketch_accum_f32(&p, g + at, len, base + at, parts), 0);
      at += len;
    }
    assert_true(max_abs_diff(whole, parts, p.k) <= 1e-12 * norm2(whole, p.k));
  }
  free(g);
}

static void f32_result_is_rounded_accum(void **state) {
  (void)state;
  uint64_t st = 31;
  float g[777], zf[50];
  double z[50] = {0};
  for (size_t i = 0; i < 777; i++) g[i] = (float)rng_unit(&st);
  gw_sketch_params_t p = {.k = 50, .kind = GW_SKETCH_SJLT, .s = 2, .seed = 8};
  memset(zf, 0xFF, sizeof zf);
  assert_int_equal(gw_sketch_accum_f32(&p, g, 777, 0, z), 0);
  assert_int_equal(gw_sketch_f32(&p, g, 777, zf), 0);
  for (int r = 0; r < 50; r++) assert_true(zf[r] == (float)z[r]);
  /* d = 0 gives the zero vector. */
  assert_int_equal(gw_sketch_f32(&p, NULL, 0, zf), 0);
  for (int r = 0; r < 50; r++) assert_true(zf[r] == 0.0f);
}

static void check_rejects_bad_params(void **state) {
  (void)state;
  struct {
    uint32_t k;
    uint8_t kind, s;
    int want;
  } cases[] = {
      {256, GW_SKETCH_SJLT, 4, 0},
      {1, GW_SKETCH_SJLT, 1, 0},
      {8, GW_SKETCH_SJLT, 8, 0},
      {GW_PROTO_K_MAX, GW_SKETCH_SJLT, 8, 0},
      {256, GW_SKETCH_GAUSSIAN, 0, 0},
      {0, GW_SKETCH_SJLT, 1, GW_EKLIMIT},
      {GW_PROTO_K_MAX + 1, GW_SKETCH_SJLT, 1, GW_EKLIMIT},
      {0, GW_SKETCH_GAUSSIAN, 0, GW_EKLIMIT},
      {256, GW_SKETCH_SJLT, 0, GW_EKIND},
      {256, GW_SKETCH_SJLT, 9, GW_EKIND},
      {3, GW_SKETCH_SJLT, 4, GW_EKIND}, /* s > k */
      {256, GW_SKETCH_GAUSSIAN, 1, GW_EKIND},
      {256, 0, 1, GW_EKIND},
      {256, 3, 1, GW_EKIND},
      {256, 255, 0, GW_EKIND},
  };
  float g[4] = {1, 2, 3, 4}, zf[4];
  double z[4] = {0};
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    gw_sketch_params_t p = {.k = cases[c].k, .kind = cases[c].kind, .s = cases[c].s};
    assert_int_equal(gw_sketch_check(&p), cases[c].want);
    if (cases[c].want != 0) {
      assert_int_equal(gw_sketch_accum_f32(&p, g, 4, 0, z), cases[c].want);
      assert_int_equal(gw_sketch_accum_f64(&p, z, 4, 0, z), cases[c].want);
      assert_int_equal(gw_sketch_f32(&p, g, 4, zf), cases[c].want);
    }
  }
  assert_int_equal(gw_sketch_check(NULL), GW_EINVAL);
  gw_sketch_params_t p = {.k = 4, .kind = GW_SKETCH_SJLT, .s = 1, .seed = 0};
  assert_int_equal(gw_sketch_accum_f32(&p, NULL, 4, 0, z), GW_EINVAL);
  assert_int_equal(gw_sketch_accum_f32(&p, g, 4, 0, NULL), GW_EINVAL);
  assert_int_equal(gw_sketch_f32(&p, g, 4, NULL), GW_EINVAL);
  assert_int_equal(gw_sketch_f32(&p, NULL, 4, zf), GW_EINVAL);
  /* Global indices must fit in 64 bits: offset + n - 1 <= 2^64 - 1. */
  assert_int_equal(gw_sketch_accum_f32(&p, g, 4, UINT64_MAX - 2, z), GW_EINVAL);
  assert_int_equal(gw_sketch_accum_f32(&p, g, 3, UINT64_MAX - 2, z), 0);
  /* Nothing to add is fine, and leaves z alone. */
  double z0[4] = {1, 2, 3, 4};
  assert_int_equal(gw_sketch_accum_f32(&p, NULL, 0, 0, z0), 0);
  assert_true(z0[0] == 1 && z0[3] == 4);
  /* A path this CPU lacks is refused, not faked. */
  assert_int_equal(gw_sketch_accum_isa(&p, g, 0, 4, 0, z, 99), -ENOTSUP);
}

/* gw_sketch_bufs: every row is exactly gw_sketch_accum_* of its buffer into
 * zeros (float16/bfloat16 through their float32 values), with its float64
 * squared norm; bad buffers are refused. */
static void sketch_bufs_rows_equal_accum(void **state) {
  (void)state;
  enum { D = 3000, K = 64 };
  uint64_t st = 99;
  static float f[D], fw[D], bw[D];
  static double g[D];
  static uint16_t h[D], b[D];
  double z[4 * K], want[K], sq[4];
  gw_sketch_params_t p = {.k = K, .kind = GW_SKETCH_SJLT, .s = 4, .seed = 5};

  for (size_t i = 0; i < D; i++) {
    g[i] = rng_unit(&st);
    f[i] = (float)rng_unit(&st);
    h[i] = gw_f32_to_f16(f[i]);
    fw[i] = gw_f16_to_f32(h[i]);
    b[i] = gw_f32_to_bf16(f[i]);
    bw[i] = gw_bf16_to_f32(b[i]);
  }
  gw_sketch_buf_t bufs[4] = {{f, D, 0, GW_GRAD_F32}, {g, D - 7, D, GW_GRAD_F64},
                             {h, D, 7777, GW_GRAD_F16}, {b, 10, 1ull << 40, GW_GRAD_BF16}};
  const void *ref[4] = {f, g, fw, bw};
  for (size_t i = 0; i < 4 * K; i++) z[i] = NAN; /* rows are cleared, not added to */
  assert_int_equal(gw_sketch_bufs(&p, bufs, 4, z, sq), 0);
  for (int i = 0; i < 4; i++) {
    double ss = 0;
    memset(want, 0, sizeof want);
    if (i == 1) {
      assert_int_equal(gw_sketch_accum_f64(&p, g, bufs[i].n, bufs[i].offset, want), 0);
      for (size_t e = 0; e < bufs[i].n; e++) ss += g[e] * g[e];
    } else {
      const float *x = ref[i];
      assert_int_equal(gw_sketch_accum_f32(&p, x, bufs[i].n, bufs[i].offset, want), 0);
      for (size_t e = 0; e < bufs[i].n; e++) ss += (double)x[e] * x[e];
    }
    assert_memory_equal(z + i * K, want, sizeof want);
    assert_true(fabs(sq[i] - ss) <= 1e-12 * ss);
  }
  /* sq may be NULL; m = 0 is a no-op */
  assert_int_equal(gw_sketch_bufs(&p, bufs, 1, z, NULL), 0);
  assert_int_equal(gw_sketch_bufs(&p, NULL, 0, NULL, NULL), 0);
  /* refused: unknown dtype, NULL data with n > 0, offset past 2^64, NULL z, bad p */
  gw_sketch_buf_t bad = {f, 4, 0, 7};
  assert_int_equal(gw_sketch_bufs(&p, &bad, 1, z, sq), GW_EINVAL);
  bad = (gw_sketch_buf_t){NULL, 4, 0, GW_GRAD_F32};
  assert_int_equal(gw_sketch_bufs(&p, &bad, 1, z, sq), GW_EINVAL);
  bad = (gw_sketch_buf_t){f, 4, UINT64_MAX - 2, GW_GRAD_F32};
  assert_int_equal(gw_sketch_bufs(&p, &bad, 1, z, sq), GW_EINVAL);
  assert_int_equal(gw_sketch_bufs(&p, bufs, 1, NULL, sq), GW_EINVAL);
  p.s = 9;
  assert_int_equal(gw_sketch_bufs(&p, bufs, 1, z, sq), GW_EKIND);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(hash_matches_vectors),
      cmocka_unit_test(sketch_matches_vectors),
      cmocka_unit_test(matches_plain_definition),
      cmocka_unit_test(simd_equals_scalar_bitwise),
      cmocka_unit_test(sjlt_columns_are_well_formed),
      cmocka_unit_test(norm_preserved_in_expectation),
      cmocka_unit_test(seed_determines_sketch),
      cmocka_unit_test(sketch_is_linear),
      cmocka_unit_test(sketch_bufs_rows_equal_accum),
      cmocka_unit_test(shards_sum_to_whole),
      cmocka_unit_test(f32_result_is_rounded_accum),
      cmocka_unit_test(check_rejects_bad_params),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
