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

#endif
