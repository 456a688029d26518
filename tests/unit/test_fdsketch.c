/* test_fdsketch.c — the Frequent Directions module against its guarantees.
 *
 * The engine's test (test_engine.c) compares the whole-run fields with a
 * float64 NumPy implementation of the same schedule; this file checks the
 * module on its own: argument and state errors, the byte accounting the
 * memory budget relies on, an exact closed form (fewer rows than ℓ: no
 * shrink loss, singular values = the row norms of orthogonal rows), and on
 * random data over many shrinks the two deterministic bounds against the
 * exact AᵀA of every row fed (eigenvalues from LAPACK's dsyev of the k×k
 * matrix, a computation the sketch never does):
 *   0 ⪯ AᵀA − BᵀB ⪯ Δ·I   and   Δ ≤ ‖A − A_r‖_F² / (ℓ − r) for r < ℓ.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <cblas.h>
#include <lapacke.h>

#include "fdsketch.h"

static double gauss(uint64_t *s) {
  double u = 0;
  for (int i = 0; i < 12; i++) {
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    u += (double)(*s >> 11) / 9007199254740992.0;
  }
  return u - 6.0;
}

/* Gram matrix D Dᵀ of n rows of k (row-major, ld k), n×n row-major. */
static void gram(const double *d, uint32_t n, uint32_t k, double *g) {
  for (uint32_t a = 0; a < n; a++)
    for (uint32_t c = 0; c < n; c++) {
      double s = 0;
      for (uint32_t i = 0; i < k; i++) s += d[(size_t)a * k + i] * d[(size_t)c * k + i];
      g[(size_t)a * n + c] = s;
    }
}

static void errors_and_bytes(void **state) {
  (void)state;
  gw_fd_t fd;
  assert_int_equal(gw_fd_init(&fd, 1, 8), GW_EINVAL);
  assert_int_equal(gw_fd_init(&fd, GW_FD_ROWS_MAX + 1, 8), GW_EINVAL);
  assert_int_equal(gw_fd_init(&fd, 4, 0), GW_EINVAL);
  assert_int_equal(gw_fd_init(&fd, 64, 256), 0);
  assert_int_equal(gw_fd_bytes(&fd), 0); /* nothing held before the first reserve */
  assert_int_equal(gw_fd_bytes(NULL), 0);
  assert_int_equal(gw_fd_bytes_max(64, 256), 63u * 256u * 4u);
  gw_fd_work_t w;
  assert_int_equal(gw_fd_work_init(&w, 64, 0), GW_EINVAL);
  assert_int_equal(gw_fd_work_init(&w, 1, 8), GW_EINVAL);
  assert_int_equal(gw_fd_work_init(&w, 64, 64), 0);
  double d[256] = {1.0}, g[1] = {1.0};
  /* not reserved, work not sized for k, block too large: refused, nothing changes */
  assert_int_equal(gw_fd_shrink(&fd, &w, d, 1, 256, g, 1, 1.0, NULL), GW_EINVAL);
  assert_int_equal(gw_fd_reserve(&fd), 0);
  assert_int_equal(gw_fd_bytes(&fd), 63u * 256u * 4u);
  assert_int_equal(gw_fd_shrink(&fd, &w, d, 1, 256, g, 1, 1.0, NULL), GW_EINVAL);
  assert_int_equal(gw_fd_work_reserve(&w, 256), 0);
  assert_int_equal(gw_fd_shrink(&fd, &w, d, 65, 256, g, 1, 1.0, NULL), GW_EINVAL);
  assert_int_equal(gw_fd_shrink(&fd, &w, d, 0, 256, g, 1, 1.0, NULL), GW_EINVAL);
  assert_int_equal(fd.rows, 0);
  /* load: rows must be < ℓ, Δ finite and >= 0 */
  float rows[2 * 256] = {0};
  rows[3] = 2.0f;
  assert_int_equal(gw_fd_load(&fd, 64, 0.0, rows), GW_EINVAL);
  assert_int_equal(gw_fd_load(&fd, 1, -1.0, rows), GW_EINVAL);
  assert_int_equal(gw_fd_load(&fd, 1, NAN, rows), GW_EINVAL);
  assert_int_equal(gw_fd_load(&fd, 1, INFINITY, rows), GW_EINVAL);
  assert_int_equal(fd.rows, 0);
  assert_int_equal(gw_fd_load(&fd, 2, 0.5, rows), 0);
  assert_int_equal(fd.rows, 2);
  assert_true(fd.delta == 0.5 && fd.b[3] == 2.0f);
  gw_fd_reset(&fd);
  assert_int_equal(fd.rows, 0);
  assert_true(fd.delta == 0);
  assert_int_equal(gw_fd_bytes(&fd), 63u * 256u * 4u); /* storage kept */
  gw_fd_free(&fd);
  assert_int_equal(gw_fd_bytes(&fd), 0);
  gw_fd_free(&fd); /* twice, and NULL */
  gw_fd_free(NULL);
  gw_fd_work_free(&w);
  gw_fd_work_free(NULL);
}

/* Orthogonal rows of norms 5, 4, 3, 2, 1 into a sketch with ℓ = 8: no row
 * is lost (m < ℓ, δ = 0), sigma are the norms, and the ranks against the
 * total 55 = 25 + 16 + 9 + 4 + 1 are 3 (50/55 = 0.909) and 4 (54/55 =
 * 0.982 < 0.99, so 5). */
static void closed_form(void **state) {
  (void)state;
  const uint32_t k = 6, n = 5;
  double d[5 * 6] = {0}, g[25];
  for (uint32_t j = 0; j < n; j++) d[j * k + (j + 1) % k] = (double)(5 - j);
  gram(d, n, k, g);
  gw_fd_t fd;
  gw_fd_work_t w;
  assert_int_equal(gw_fd_init(&fd, 8, k), 0);
  assert_int_equal(gw_fd_work_init(&w, 8, n), 0);
  assert_int_equal(gw_fd_reserve(&fd), 0);
  assert_int_equal(gw_fd_work_reserve(&w, k), 0);
  gw_fd_fields_t f;
  assert_int_equal(gw_fd_shrink(&fd, &w, d, n, k, g, n, 55.0, &f), 0);
  assert_int_equal(f.rank_90, 3);
  assert_int_equal(f.rank_99, 5);
  for (uint32_t i = 0; i < 5; i++) assert_true(fabs(f.sigma[i] - (5.0 - i)) < 1e-12);
  for (uint32_t i = 5; i < GW_TOP_SIGMA; i++) assert_true(f.sigma[i] == 0);
  assert_int_equal(fd.rows, 5);
  assert_true(fd.delta == 0);
  /* BᵀB = AᵀA: each stored row is ± one of the inputs (distinct norms),
   * stored smallest first */
  for (uint32_t r = 0; r < 5; r++) {
    double nrm = 0;
    for (uint32_t i = 0; i < k; i++) nrm += (double)fd.b[r * k + i] * fd.b[r * k + i];
    assert_true(fabs(sqrt(nrm) - (1.0 + r)) < 1e-6);
    assert_true(fabs(fabs(fd.b[r * k + (5 - r) % k]) - (1.0 + r)) < 1e-6);
  }
  /* the total of a zero stream: ranks 0 */
  assert_int_equal(gw_fd_shrink(&fd, &w, d, 1, k, g, n, 0.0, &f), 0);
  assert_int_equal(f.rank_90, 0);
  assert_int_equal(f.rank_99, 0);
  gw_fd_free(&fd);
  gw_fd_work_free(&w);
}

/* Eigenvalues (ascending) of the k×k symmetric m. */
static void eig(double *m, uint32_t k, double *lam) {
  assert_int_equal(LAPACKE_dsyev(LAPACK_ROW_MAJOR, 'N', 'U', (lapack_int)k, m, (lapack_int)k, lam),
                   0);
}

static void bounds_random(void **state) {
  (void)state;
  /* ℓ = 6 rows for k = 20 dimensions of a stream whose energy is spread
   * over all of them, plus a strong rank-3 part: the sketch must discard */
  const uint32_t k = 20, ell = 6, blk = 7, blocks = 30;
  uint64_t s = 7;
  gw_fd_t fd;
  gw_fd_work_t w;
  assert_int_equal(gw_fd_init(&fd, ell, k), 0);
  assert_int_equal(gw_fd_work_init(&w, ell, blk), 0);
  assert_int_equal(gw_fd_reserve(&fd), 0);
  assert_int_equal(gw_fd_work_reserve(&w, k), 0);
  double ata[20 * 20] = {0}, d[7 * 20], g[49], diff[400], lam[20], lama[20], total = 0;
  double max_delta_rel = 0;
  for (uint32_t b = 0; b < blocks; b++) {
    for (uint32_t j = 0; j < blk; j++)
      for (uint32_t i = 0; i < k; i++) {
        double low = (i < 3) ? (3.0 - i) * sin(0.3 * (b * blk + j) + i) * 4.0 : 0.0;
        d[j * k + i] = low + gauss(&s);
      }
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, (int)k, (int)blk, 1.0, d, (int)k, 1.0,
                ata, (int)k);
    for (uint32_t j = 0; j < blk * k; j++) total += d[j] * d[j];
    gram(d, blk, k, g);
    gw_fd_fields_t f;
    double delta_before = fd.delta;
    assert_int_equal(gw_fd_shrink(&fd, &w, d, blk, k, g, blk, total, &f), 0);
    assert_true(fd.delta >= delta_before);
    assert_true(fd.rows <= ell - 1);
    /* AᵀA − BᵀB, upper triangle (row-major) */
    memcpy(diff, ata, sizeof diff);
    for (uint32_t r = 0; r < fd.rows; r++)
      for (uint32_t a = 0; a < k; a++)
        for (uint32_t c = a; c < k; c++)
          diff[a * k + c] -= (double)fd.b[r * k + a] * (double)fd.b[r * k + c];
    eig(diff, k, lam);
    double scale = total * 1e-6; /* float32 storage of B */
    assert_true(lam[0] >= -scale);
    assert_true(lam[k - 1] <= fd.delta + scale);
    /* Δ ≤ ‖A − A_r‖_F² / (ℓ − r) */
    double m2[400];
    for (uint32_t a = 0; a < k; a++)
      for (uint32_t c = 0; c < k; c++) m2[a * k + c] = a <= c ? ata[a * k + c] : ata[c * k + a];
    eig(m2, k, lama);
    for (uint32_t r = 0; r < ell; r++) {
      double tail = 0;
      for (uint32_t i = 0; i + r < k; i++) tail += lama[i]; /* all but the top r */
      assert_true(fd.delta <= tail / (ell - r) * (1 + 1e-9) + scale);
    }
    /* ranks never above the exact rank of AᵀA */
    double c = 0;
    uint32_t r90 = 0;
    for (uint32_t i = 0; i < k && !r90; i++) {
      c += lama[k - 1 - i];
      if (c / total >= 0.9) r90 = i + 1;
    }
    assert_true(f.rank_90 <= r90 || (r90 >= ell && f.rank_90 == ell));
    if (fd.delta / total > max_delta_rel) max_delta_rel = fd.delta / total;
  }
  assert_true(max_delta_rel > 0); /* it did discard */
  gw_fd_free(&fd);
  gw_fd_work_free(&w);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(errors_and_bytes),
      cmocka_unit_test(closed_form),
      cmocka_unit_test(bounds_random),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
