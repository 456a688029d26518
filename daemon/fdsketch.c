/* fdsketch.c — Frequent Directions: the whole-run sketch of a stream.
 *
 * NOTES ON THE DESIGN OF THE SKETCH
 *
 * States of a gw_fd_t: empty (rows 0, b maybe NULL) → holding rows
 * (after a shrink that kept any) → empty again (gw_fd_reset). b is
 * allocated once, by gw_fd_reserve, at its full (ℓ−1)×k size, so a stream
 * that never reaches a shrink holds no sketch memory.
 *
 * The shrink (gw_fd_shrink) is the "doubled buffer" form of Frequent
 * Directions with the block D as the buffer: C = [B; D] (m = rows + nd
 * rows), eigen-decompose the m×m Gram matrix C Cᵀ (its B-block by dsyrk
 * from B, the D-block given by the caller, the cross block one dgemm),
 * take δ = λ_ℓ (the ℓ-th largest eigenvalue, 0 when m < ℓ) and keep the
 * rows √((λ_i − δ)/λ_i) u_iᵀ C = √(λ_i − δ) v_iᵀ for the top ℓ − 1 with
 * λ_i > δ. Row order within C does not matter (CᵀC is a sum over rows).
 * The Gram route is cheaper than an SVD of C while m < k, and the engine
 * already keeps D Dᵀ for its windowed rank.
 *
 * Cost, measured at ℓ = 64, nd = 64, k = 256 (bench/RESULTS.md): ~1.2 ms
 * per shrink on a quiet core (18 µs per row), most of it the 127×127
 * dsyevd with all vectors, the rest forming the Gram matrix and rebuilding
 * B. The textbook
 * "O(ℓk) amortised per row" assumes k ≫ ℓ; at k = 4ℓ the (2ℓ)³ eigen-solve
 * per ℓ rows is the larger term, O(ℓ²) per row with a large constant.
 * Other block sizes do not help: the cost per row, ~(ℓ + nd)³ / nd for the
 * eigen-solve plus the products, is least near nd = ℓ/2 and no lower there
 * than at nd = ℓ once the products are counted.
 *
 * Storage: B is float32 (half the bytes of float64), which keeps a stream
 * within 1.5× of its size without the sketch. Products and the eigen-solve
 * run in float64 on a converted copy; the rounding adds a relative 6e-8 per
 * entry to B, far below the sketch's own error Δ.
 *
 * Guarantee (Δ = Σ δ over all shrinks, A every row fed so far):
 * 0 ⪯ AᵀA − BᵀB ⪯ Δ·I, and since each shrink removes at least ℓ·δ of
 * Frobenius mass, Δ ≤ ‖A − A_r‖_F² / (ℓ − r) for every r < ℓ. Weyl's
 * inequality brackets each eigenvalue: λ_i(BᵀB) ≤ λ_i(AᵀA) ≤ λ_i(BᵀB) + Δ.
 * The run fields use the eigenvalues of C Cᵀ (the sketch of every row so
 * far, whose error is the Δ of the shrinks before) and the upper ends of
 * the bracket for the ranks: never above the true rank, below it only
 * where the true cumulative energy is within r·Δ/total below q
 * (docs/MATH.md has the reasoning and a real run).
 */
#include "fdsketch.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

int gw_fd_init(gw_fd_t *fd, uint32_t ell, uint32_t k) {
  memset(fd, 0, sizeof *fd);
  if (ell < 2 || ell > GW_FD_ROWS_MAX || k == 0) return GW_EINVAL;
  fd->ell = ell;
  fd->k = k;
  return 0;
}

void gw_fd_free(gw_fd_t *fd) {
  if (!fd) return;
  free(fd->b);
  memset(fd, 0, sizeof *fd);
}

void gw_fd_reset(gw_fd_t *fd) {
  fd->rows = 0;
  fd->delta = 0;
}

size_t gw_fd_bytes_max(uint32_t ell, uint32_t k) {
  return ell < 2 ? 0 : (size_t)(ell - 1) * k * sizeof(float);
}

int gw_fd_reserve(gw_fd_t *fd) {
  if (fd->b) return 0;
  fd->b = malloc(gw_fd_bytes_max(fd->ell, fd->k));
  return fd->b ? 0 : GW_ENOMEM;
}

size_t gw_fd_bytes(const gw_fd_t *fd) {
  return fd && fd->b ? gw_fd_bytes_max(fd->ell, fd->k) : 0;
}

int gw_fd_load(gw_fd_t *fd, uint32_t rows, double delta, const void *b) {
  if (rows >= fd->ell || !(delta >= 0) || !isfinite(delta) || (rows && !b)) return GW_EINVAL;
  if (rows) {
    int rc = gw_fd_reserve(fd);
    if (rc) return rc;
    memcpy(fd->b, b, (size_t)rows * fd->k * sizeof(float));
  }
  fd->rows = rows;
  fd->delta = delta;
  return 0;
}

/* ---- scratch ------------------------------------------------------------ */

int gw_fd_work_init(gw_fd_work_t *w, uint32_t ell, uint32_t max_block) {
  memset(w, 0, sizeof *w);
  if (ell < 2 || ell > GW_FD_ROWS_MAX || max_block == 0) return GW_EINVAL;
  w->ell = ell;
  w->max_block = max_block;
  const size_t mm = (size_t)ell - 1 + max_block;
  w->g = malloc(mm * mm * sizeof(double));
  w->w = malloc(mm * sizeof(double));
  if (!w->g || !w->w) goto fail;
  double wq;
  lapack_int iq;
  if (LAPACKE_dsyevd_work(LAPACK_COL_MAJOR, 'V', 'U', (lapack_int)mm, w->g, (lapack_int)mm,
                          w->w, &wq, -1, &iq, -1) != 0)
    goto fail;
  w->lwork = (lapack_int)wq;
  w->liwork = iq;
  w->work = malloc((size_t)w->lwork * sizeof(double));
  w->iwork = malloc((size_t)w->liwork * sizeof(lapack_int));
  if (!w->work || !w->iwork) goto fail;
  return 0;
fail:
  gw_fd_work_free(w);
  return GW_ENOMEM;
}

void gw_fd_work_free(gw_fd_work_t *w) {
  if (!w) return;
  free(w->g);
  free(w->w);
  free(w->work);
  free(w->iwork);
  free(w->bd);
  free(w->out);
  memset(w, 0, sizeof *w);
}

int gw_fd_work_reserve(gw_fd_work_t *w, uint32_t k) {
  if (k <= w->kcap) return 0;
  size_t nb = (size_t)(w->ell - 1) * k * sizeof(double);
  double *a = malloc(nb), *b = malloc(nb);
  if (!a || !b) {
    free(a);
    free(b);
    return GW_ENOMEM;
  }
  free(w->bd);
  free(w->out);
  w->bd = a;
  w->out = b;
  w->kcap = k;
  return 0;
}

/* ---- the shrink --------------------------------------------------------- */

/* Run fields from the top q eigenvalues, ascending in asc[0..q-1]
 * (negatives read as 0), against the exact total; ranks from λ_i + delta. */
static void run_fields(const double *asc, uint32_t q, uint32_t ell, double total, double delta,
                       gw_fd_fields_t *rf) {
  memset(rf, 0, sizeof *rf);
  if (total > 0) {
    double c = 0;
    for (uint32_t i = 0; i < q; i++) {
      double lam = asc[q - 1 - i] > 0 ? asc[q - 1 - i] : 0;
      c += lam + delta;
      double frac = c / total;
      if (rf->rank_90 == 0 && frac >= 0.9) rf->rank_90 = i + 1;
      if (frac >= 0.99) {
        rf->rank_99 = i + 1;
        break;
      }
    }
    if (rf->rank_90 == 0) rf->rank_90 = ell; /* "ℓ or more" */
    if (rf->rank_99 == 0) rf->rank_99 = ell;
  }
  for (uint32_t i = 0; i < GW_TOP_SIGMA && i < q; i++)
    rf->sigma[i] = asc[q - 1 - i] > 0 ? sqrt(asc[q - 1 - i]) : 0;
}

int gw_fd_shrink(gw_fd_t *fd, gw_fd_work_t *w, const double *d, uint32_t nd, size_t ldd,
                 const double *dgram, size_t ldg, double total, gw_fd_fields_t *out) {
  if (!fd->b || w->ell != fd->ell || w->kcap < fd->k || nd == 0 || nd > w->max_block)
    return GW_EINVAL;
  const uint32_t ell = fd->ell, k = fd->k, b = fd->rows, m = b + nd, q = ell < m ? ell : m;
  double *g = w->g, *bd = w->bd, *z, *wv = w->w;
  for (size_t i = 0; i < (size_t)b * k; i++) bd[i] = fd->b[i];
  /* C Cᵀ, upper triangle, column-major m×m: indices 0..b-1 are B's rows,
   * b..m-1 D's. B row-major is Bᵀ column-major (k×b), D likewise (k×nd,
   * leading dimension ldd). */
  if (b) {
    cblas_dsyrk(CblasColMajor, CblasUpper, CblasTrans, (int)b, (int)k, 1.0, bd, (int)k, 0.0,
                g, (int)m);
    cblas_dgemm(CblasColMajor, CblasTrans, CblasNoTrans, (int)b, (int)nd, (int)k, 1.0, bd,
                (int)k, d, (int)ldd, 0.0, g + (size_t)b * m, (int)m);
  }
  for (uint32_t c = 0; c < nd; c++)
    for (uint32_t a = 0; a <= c; a++) g[(size_t)(b + c) * m + b + a] = dgram[(size_t)a * ldg + c];
  /* all eigenpairs by divide and conquer (vectors overwrite g); the top q
   * are the last q, ascending */
  lapack_int info = LAPACKE_dsyevd_work(LAPACK_COL_MAJOR, 'V', 'U', (lapack_int)m, g,
                                        (lapack_int)m, wv, w->work, w->lwork, w->iwork,
                                        w->liwork);
  if (info != 0) return GW_EINVAL;
  wv += m - q;
  z = g + (size_t)(m - q) * m;
  if (out) run_fields(wv, q, ell, total, fd->delta, out);
  /* δ = λ_ℓ; keep λ_i > δ among the top ℓ−1 (ascending: columns q−r..q−1) */
  double delta = m >= ell && wv[0] > 0 ? wv[0] : 0;
  uint32_t r = 0;
  while (r < q && r < ell - 1 && wv[q - 1 - r] > delta) r++;
  const uint32_t c0 = q - r;
  for (uint32_t j = c0; j < q; j++) {
    double sc = sqrt((wv[j] - delta) / wv[j]);
    for (uint32_t a = 0; a < m; a++) z[(size_t)j * m + a] *= sc;
  }
  /* new Bᵀ (k×r) = Cᵀ (U S): the B part and the D part */
  double *o = w->out;
  if (r) {
    if (b)
      cblas_dgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, (int)k, (int)r, (int)b, 1.0, bd,
                  (int)k, z + (size_t)c0 * m, (int)m, 0.0, o, (int)k);
    cblas_dgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, (int)k, (int)r, (int)nd, 1.0, d,
                (int)ldd, z + (size_t)c0 * m + b, (int)m, b ? 1.0 : 0.0, o, (int)k);
  }
  for (size_t i = 0; i < (size_t)r * k; i++) fd->b[i] = (float)o[i];
  fd->rows = r;
  fd->delta += delta;
  return 0;
}
