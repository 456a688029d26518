/* fdsketch.h — the whole-run Frequent Directions sketch of one stream.
 *
 * A gw_fd_t is the sketch B (at most ℓ−1 rows of k, float32, its own heap
 * block) of every row fed to it, with Δ, the sum of every shrink's δ; BᵀB
 * approximates AᵀA (A: all rows so far) within 0 ⪯ AᵀA − BᵀB ⪯ Δ·I and
 * Δ ≤ ‖A − A_r‖_F² / (ℓ − r) for every r < ℓ (Liberty 2013; Ghashami,
 * Liberty, Phillips, Woodruff 2016). Rows come in blocks: gw_fd_shrink
 * takes a block D with its Gram matrix D Dᵀ (the engine's window and the
 * Gram matrix it keeps anyway), shrinks [B; D] into B and returns the run
 * fields of [B; D]. The module does no allocation on the shrink path
 * besides gw_fd_reserve / gw_fd_work_reserve, which the caller runs before
 * committing anything, so a failed reservation leaves the sketch unchanged.
 *
 * Shrink scratch (the Gram matrix of [B; D], LAPACK's workspace, float64
 * copies of B) is a gw_fd_work_t shared by every sketch a thread drives.
 * Neither type is thread-safe.
 */
#ifndef GW_FDSKETCH_H
#define GW_FDSKETCH_H

#include <stddef.h>
#include <stdint.h>

#include <lapacke.h>

#include "gw_error.h"
#include "point.h"

#define GW_FD_ROWS_MAX 1024u /* sanity bound on ℓ */

typedef struct gw_fd_s {
  uint32_t ell;  /* ℓ: B holds at most ℓ − 1 rows */
  uint32_t k;    /* row length */
  uint32_t rows; /* rows of B in use */
  double delta;  /* Δ: the sum of every shrink's δ */
  float *b;      /* rows × k, row-major; NULL until the first gw_fd_reserve */
} gw_fd_t;

/* The whole-run fields of a shrink (see gw_fd_shrink). */
typedef struct gw_fd_fields_s {
  uint32_t rank_90, rank_99; /* ℓ means "ℓ or more"; 0 when the total is 0 */
  double sigma[GW_TOP_SIGMA]; /* top singular values of [B; D], 0-padded */
} gw_fd_fields_t;

/* Empty sketch of ℓ in [2, GW_FD_ROWS_MAX] and k >= 1; allocates nothing.
 * GW_EINVAL otherwise (fd is then zeroed). */
int gw_fd_init(gw_fd_t *fd, uint32_t ell, uint32_t k);
/* Release B and zero fd; accepts NULL. */
void gw_fd_free(gw_fd_t *fd);
/* Empty the sketch (rows 0, Δ 0), keeping its storage. */
void gw_fd_reset(gw_fd_t *fd);
/* Allocate B's (ℓ−1)×k floats if not yet held. GW_ENOMEM leaves fd as it was. */
int gw_fd_reserve(gw_fd_t *fd);
/* Heap bytes fd holds now (0 for NULL or before gw_fd_reserve). */
size_t gw_fd_bytes(const gw_fd_t *fd);
/* Heap bytes a sketch of ℓ rows and length k holds once reserved. */
size_t gw_fd_bytes_max(uint32_t ell, uint32_t k);
/* Replace the content with rows rows (< ℓ) of k floats and Δ = delta, as
 * saved from fd->b, fd->rows, fd->delta. GW_EINVAL (rows >= ℓ, delta
 * negative or not finite), GW_ENOMEM; fd unchanged on failure. */
int gw_fd_load(gw_fd_t *fd, uint32_t rows, double delta, const void *b);

/* Shrink scratch for blocks of up to max_block rows and sketches of ℓ rows. */
typedef struct gw_fd_work_s {
  uint32_t ell, max_block, kcap;
  double *g;    /* m_max²: the Gram matrix of [B; D], then its eigenvectors */
  double *w;    /* m_max: eigenvalues (ascending) */
  double *work; /* dsyevd's workspace */
  lapack_int *iwork;
  lapack_int lwork, liwork;
  double *bd, *out; /* (ℓ−1) × kcap: B in float64, the new B */
} gw_fd_work_t;

/* GW_EINVAL for ℓ out of range or max_block 0, GW_ENOMEM; w is zeroed on
 * failure (gw_fd_work_free is still safe). */
int gw_fd_work_init(gw_fd_work_t *w, uint32_t ell, uint32_t max_block);
void gw_fd_work_free(gw_fd_work_t *w); /* accepts NULL */
/* Make the float64 copies fit rows of length k. GW_ENOMEM leaves w as it was. */
int gw_fd_work_reserve(gw_fd_work_t *w, uint32_t k);

/* Shrink C = [B; D] into B. D is nd <= max_block rows of fd->k doubles,
 * row j at d + j·ldd (any row order), and dgram its Gram matrix D Dᵀ
 * (upper triangle read: dgram[a·ldg + c] = d_a·d_c for a <= c). total is
 * the exact Σ‖a_j‖² over every row ever fed, these included; the run
 * fields in *out (may be NULL) come from the eigenvalues λ_i of C Cᵀ:
 * rank_q is the smallest r <= ℓ with Σ_{i<=r} (λ_i + Δ) >= q·total (Δ as
 * before this shrink: the upper ends of Weyl's bracket), ℓ if none;
 * sigma_i = √λ_i. Then δ = λ_ℓ (0 if C has fewer than ℓ rows), B keeps
 * √(λ_i − δ)·v_iᵀ for the top ℓ − 1 with λ_i > δ, and Δ += δ.
 * Requires gw_fd_reserve(fd) and gw_fd_work_reserve(w, fd->k) done, and
 * w->ell == fd->ell. Cost: one (rows + nd)-sized dsyevd (all vectors) and
 * three products of ℓ × (rows + nd) × k. GW_EINVAL if LAPACK failed to
 * converge (fd and *out unchanged). */
int gw_fd_shrink(gw_fd_t *fd, gw_fd_work_t *w, const double *d, uint32_t nd, size_t ldd,
                 const double *dgram, size_t ldg, double total, gw_fd_fields_t *out);

#endif
