/* test_chunk.c — the columnar chunk codec: bit-exact round trips (random
 * bit patterns, NaN payloads, -0.0, infinities, subnormals, steps with gaps,
 * wrap-around and the extremes of uint64), the size of a smooth run against
 * its raw size, every truncation and every single-byte corruption of a
 * chunk detected as an error (never a wrong decode), bad arguments. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "chunk.h"

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t rnd(void) { /* splitmix64 */
  uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static double from_bits(uint64_t u) {
  double d;
  memcpy(&d, &u, sizeof d);
  return d;
}

static void roundtrip(const uint64_t *steps, const double *v, size_t n, size_t ncols, size_t *bytes) {
  gw_buf_t b;
  gw_buf_init(&b);
  assert_int_equal(gw_chunk_encode(steps, v, n, ncols, 3, &b), 0);
  uint64_t *s2;
  double *v2;
  size_t n2, c2;
  assert_int_equal(gw_chunk_decode(b.p, b.len, &s2, &v2, &n2, &c2), 0);
  assert_int_equal(n2, n);
  assert_int_equal(c2, ncols);
  if (n) {
    assert_memory_equal(s2, steps, n * sizeof *steps);
    assert_memory_equal(v2, v, n * ncols * sizeof *v); /* the bits, NaN payloads included */
  } else {
    assert_null(s2);
    assert_null(v2);
  }
  if (bytes) *bytes = b.len;
  free(s2);
  free(v2);
  gw_buf_free(&b);
}

static void test_roundtrip_bit_exact(void **state) {
  enum { N = 300, C = 49 };
  static uint64_t steps[N];
  static double v[N * C];
  /* random bit patterns everywhere: every NaN payload, subnormal, sign */
  for (size_t i = 0; i < N; i++) {
    steps[i] = rnd();
    for (size_t c = 0; c < C; c++) v[i * C + c] = from_bits(rnd());
  }
  roundtrip(steps, v, N, C, NULL);
  /* special values, and steps at the extremes and wrapping around */
  const double special[] = {0.0, -0.0, INFINITY, -INFINITY, NAN, -NAN, 5e-324, 2.2250738585072014e-308,
                            1.7976931348623157e308, from_bits(0x7ff8dead0000beefull)};
  const uint64_t st[] = {0, UINT64_MAX, 1, UINT64_MAX - 1, 1ull << 63, 7, 8, 9, 1000000, 3};
  for (size_t i = 0; i < 10; i++) {
    steps[i] = st[i];
    for (size_t c = 0; c < C; c++) v[i * C + c] = special[(i + c) % 10];
  }
  roundtrip(steps, v, 10, C, NULL);
  roundtrip(steps, v, 1, C, NULL);
  roundtrip(steps, v, 0, C, NULL);
  roundtrip(steps, v, 10, 1, NULL);
}

/* A smooth stream (the shape of real points: steps + 1, slowly moving κ,
 * integer ranks, constant columns, nulls) compresses far below its raw
 * 8 + 8 * 49 bytes a point. */
static void test_smooth_run_is_small(void **state) {
  enum { N = 256, C = 49 };
  static uint64_t steps[N];
  static double v[N * C];
  for (size_t i = 0; i < N; i++) {
    steps[i] = 1000 + i;
    for (size_t c = 0; c < C; c++) {
      double x;
      if (c < 8) x = 1.0 + 0.01 * (double)c + 1e-3 * sin((double)i / 10.0 + (double)c);
      else if (c < 16) x = (double)(5 + (i / 8) % 3); /* ranks, recomputed every 8 */
      else if (c < 24) x = NAN;                        /* nulls */
      else x = 42.0;                                   /* constant */
      v[i * C + c] = x;
    }
  }
  size_t bytes;
  roundtrip(steps, v, N, C, &bytes);
  /* 8 noisy columns of ~6 bytes a value; the rest nearly free */
  assert_true((double)bytes / N < 80.0);
  assert_true(bytes < (size_t)N * (8 + 8 * C) / 5);
}

static void test_truncation_and_corruption_detected(void **state) {
  enum { N = 64, C = 5 };
  uint64_t steps[N];
  double v[N * C];
  for (size_t i = 0; i < N; i++) {
    steps[i] = 10 + 2 * i;
    for (size_t c = 0; c < C; c++) v[i * C + c] = (double)i * 0.5 + (double)c;
  }
  gw_buf_t b;
  gw_buf_init(&b);
  assert_int_equal(gw_chunk_encode(steps, v, N, C, 3, &b), 0);
  uint64_t *s2;
  double *v2;
  size_t n2, c2;
  for (size_t len = 0; len < b.len; len++) {
    int rc = gw_chunk_decode(b.p, len, &s2, &v2, &n2, &c2);
    assert_true(rc < 0);
    assert_null(s2);
    assert_null(v2);
    assert_int_equal(n2 + c2, 0);
  }
  char *copy = malloc(b.len);
  for (size_t i = 0; i < b.len; i++)
    for (int bit = 0; bit < 8; bit++) {
      memcpy(copy, b.p, b.len);
      copy[i] ^= (char)(1 << bit);
      int rc = gw_chunk_decode(copy, b.len, &s2, &v2, &n2, &c2);
      if (rc == 0) { /* only a change the checksum cannot see may decode, and
                        then it must decode to the original */
        assert_memory_equal(s2, steps, sizeof steps);
        assert_memory_equal(v2, v, sizeof v);
        free(s2);
        free(v2);
      } else {
        assert_null(s2);
        assert_null(v2);
      }
    }
  free(copy);
  assert_int_equal(gw_chunk_decode("GWC2\001", 5, &s2, &v2, &n2, &c2), GW_EMAGIC);
  assert_int_equal(gw_chunk_decode("GWC1\002", 5, &s2, &v2, &n2, &c2), GW_EVERSION);
  assert_int_equal(gw_chunk_decode("GWC1\001\001\000\000", 8, &s2, &v2, &n2, &c2), GW_EINVAL);
  gw_buf_free(&b);
}

static void test_bad_arguments(void **state) {
  gw_buf_t b;
  uint64_t s = 1;
  double v = 1;
  gw_buf_init(&b);
  assert_int_equal(gw_chunk_encode(&s, &v, 1, 0, 3, &b), GW_EINVAL);
  assert_int_equal(gw_chunk_encode(&s, &v, 1, GW_CHUNK_MAX_COLS + 1, 3, &b), GW_EINVAL);
  assert_int_equal(gw_chunk_encode(&s, &v, GW_CHUNK_MAX_POINTS + 1, 1, 3, &b), GW_EINVAL);
  assert_int_equal(gw_chunk_encode(NULL, &v, 1, 1, 3, &b), GW_EINVAL);
  assert_int_equal(b.len, 0);
  gw_buf_free(&b);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_roundtrip_bit_exact),
      cmocka_unit_test(test_smooth_run_is_small),
      cmocka_unit_test(test_truncation_and_corruption_detected),
      cmocka_unit_test(test_bad_arguments),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
