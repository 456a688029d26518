/* gw_sketch.h — the seeded random projection z = S g shared by every client
 * (proto/SKETCH.md is the normative definition and lists the test vectors).
 *
 * S ∈ R^{k×d} is fixed by (seed, kind, s, k). Column i of S depends only on
 * (seed, i), never on d, so a gradient sharded across processes can be
 * sketched piecewise at its global coordinate offsets and the partial sketches
 * summed: sketch(g) = Σ_shards accum(shard, offset).
 */
#ifndef GW_SKETCH_H
#define GW_SKETCH_H

#include <stddef.h>
#include <stdint.h>

#include "gw_error.h"
#include "gw_proto.h"

typedef struct gw_sketch_params_s {
  uint32_t k;    /* 1..GW_PROTO_K_MAX */
  uint8_t kind;  /* GW_SKETCH_SJLT or GW_SKETCH_GAUSSIAN */
  uint8_t s;     /* sjlt: 1..8 nonzeros per column (and s <= k); gaussian: 0 */
  uint64_t seed;
} gw_sketch_params_t;

/* 0 if the parameters are valid, GW_EKIND or GW_EKLIMIT otherwise. */
int gw_sketch_check(const gw_sketch_params_t *p);

/* The documented 64-bit hash of (seed, i, j) (see proto/SKETCH.md). */
uint64_t gw_sketch_hash(uint64_t seed, uint64_t i, uint64_t j);

/* z[0..k-1] += S[:, offset .. offset+n-1] · g[0..n-1]. z is float64 and is
 * not cleared, so shards and chunks accumulate. g may be NULL when n = 0;
 * offset + n - 1 must fit in 64 bits (else GW_EINVAL). Returns 0 or GW_E*. */
int gw_sketch_accum_f32(const gw_sketch_params_t *p, const float *g, size_t n,
                        uint64_t offset, double *z);
int gw_sketch_accum_f64(const gw_sketch_params_t *p, const double *g, size_t n,
                        uint64_t offset, double *z);

/* z = S g for a whole gradient g ∈ R^d (z cleared first, rounded to float).
 * Invalid parameters leave z untouched; a later failure leaves it zeroed. */
int gw_sketch_f32(const gw_sketch_params_t *p, const float *g, size_t d,
                  float *z);

/* Element types of a gradient buffer handed to gw_sketch_bufs (not wire
 * payload types: see gw_dtype_t for those). */
typedef enum {
  GW_GRAD_F32 = 0,
  GW_GRAD_F64 = 1,
  GW_GRAD_F16 = 2, /* IEEE binary16 */
  GW_GRAD_BF16 = 3 /* bfloat16 */
} gw_grad_dtype_t;

/* One gradient buffer: n contiguous elements of dtype (borrowed), holding
 * the global coordinates offset .. offset+n-1 of the model's gradient. */
typedef struct gw_sketch_buf_s {
  const void *data; /* may be NULL only when n = 0 */
  size_t n;
  uint64_t offset;
  int dtype; /* gw_grad_dtype_t */
} gw_sketch_buf_t;

/* Sketch m buffers straight from their memory, one row each: for every i,
 * z[i*k .. i*k+k-1] = S[:, off_i .. off_i+n_i-1] · buf_i (the row is cleared
 * first; float64) and, when sq is not NULL, sq[i] = ‖buf_i‖² in float64.
 * Row i is exactly what gw_sketch_accum_f32 (float32, and float16/bfloat16
 * widened to float32 first, which is exact) or gw_sketch_accum_f64 adds into
 * a zeroed z, bit for bit. By linearity the sketch of the concatenation of
 * buffers laid end to end at their offsets is the sum of the rows.
 * Returns 0, GW_EKIND/GW_EKLIMIT (bad p), GW_EINVAL (NULL z with m > 0, a
 * NULL buffer with n > 0, an unknown dtype, offset + n - 1 beyond 2^64),
 * or GW_ENOMEM; z and sq hold nothing meaningful after a failure. */
int gw_sketch_bufs(const gw_sketch_params_t *p, const gw_sketch_buf_t *bufs, size_t m,
                   double *z, double *sq);

#endif
