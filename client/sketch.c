/* sketch.c — the seeded random projection z = S g (proto/SKETCH.md is the
 * normative definition; this file implements exactly that).
 *
 * This module owns the hash H(seed, i, j), the two kinds of S (sjlt and
 * gaussian) and the kernels that apply S to a float32 or float64 gradient.
 * Nothing is kept between calls: S is never stored, every nonzero is
 * recomputed from (seed, global index) when needed, which is what lets a
 * sharded gradient be sketched piecewise at its global offsets.
 *
 * The sjlt kernel is the hot path (CountSketch on 10^7 floats must run at a
 * good fraction of memcpy's bandwidth). Per block of coordinates:
 *
 *   g[block] --hash--> entries (idx[q], val[q]) --scatter--> acc[idx[q]] += val[q]
 *   after the last block:  z[r] += scale * (acc[r*C] + ... + acc[r*C + C-1])
 *
 * An entry is one nonzero of S times its coordinate: q = j*nb + e for
 * nonzero j of coordinate e, idx = row * C + (e mod C), val = ±g[e]. The
 * portable block hashes every entry into two arrays and then scatters them
 * in order of q. The AVX2 and AVX-512 blocks hash 4 or 8 coordinates at
 * once and scatter in the same loop, a step behind (AVX-512 straight from
 * the vector registers), so the vector units and the load/store units work
 * side by side. Every version adds the same values into the same cells in
 * the same order, so all give the same z bit for bit
 * (tests/unit/test_sketch.c checks it). What bounds the speed is the
 * scatter: a load, an add and a store per entry, ~1.5-2 cycles.
 *
 * acc holds C interleaved copies of z (coordinate e of a block goes to copy
 * e mod C) so that neighbouring coordinates that hash to the same row do not
 * wait on each other's store, a chain that matters when k is small. The
 * 1/sqrt(s) scale is applied once at the end. When a call is too short to
 * pay for clearing and summing the copies, or k is too large for them to
 * fit in L1, entries go straight into z with the scale folded into val.
 *
 * The gaussian kind computes every entry (a log, a cos and a sqrt each,
 * ~20 ns); it is meant for small d.
 *
 * gw_sketch_bufs runs the same kernels over many buffers (a model's
 * parameters, read where they lie, in float32, float64, float16 or
 * bfloat16), one row of z each plus its squared norm: the native path of
 * the Python client, which derives the whole model's sketch from the rows.
 */
#include "gw_sketch.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* GW_SKETCH_PORTABLE builds only the portable block, as on a non-x86 host
 * (tests/unit builds test_sketch_portable that way). */
#if defined(__GNUC__) && defined(__x86_64__) && !defined(GW_SKETCH_PORTABLE)
#define GW_SKETCH_X86 1
#include <immintrin.h>
#endif

/* target_clones picks the AVX2 body at load time through an ifunc
 * resolver, which the dynamic loader runs before ThreadSanitizer's runtime
 * is up; an instrumented resolver crashes there, so a TSan build keeps the
 * default body only. */
#if defined(GW_SKETCH_X86) && !defined(__SANITIZE_THREAD__)
#define GW_CLONES_AVX2 __attribute__((target_clones("avx2", "default")))
#else
#define GW_CLONES_AVX2
#endif

/* The constants of proto/SKETCH.md. */
#define GOLDEN 0x9E3779B97F4A7C15ull  /* G: the seed's multiplier */
#define FMIX_C1 0xFF51AFD7ED558CCDull /* MurmurHash3 fmix64 */
#define FMIX_C2 0xC4CEB9FE1A85EC53ull
#define GAUSS_TAG 0x8000000000000000ull /* keeps gaussian keys apart from sjlt's */
#define TWO_PI 6.283185307179586476925

/* The block versions; also the `isa` argument of gw_sketch_accum_isa
 * (declared by the tests and the benchmark only). */
enum { ISA_AUTO = 0, ISA_SCALAR = 1, ISA_AVX2 = 2, ISA_AVX512 = 3 };

#define BLOCK_ENTRIES 1024 /* entries per block: 16 KiB of (idx, val) */
#define ACC_MAX 4096       /* doubles in the C copies of z: 32 KiB, fits L1 */
#define LAG 32             /* the AVX2 block scatters entries this far behind */

/* What a block needs to know, derived once per call. */
typedef struct plan_s {
  uint64_t key;                /* seed * G */
  unsigned s;                  /* nonzeros per column */
  unsigned logc;               /* log2 of the number of copies C; 0: into z */
  int pow2;                    /* all w_j = 2^b and lo_j = j * 2^b (s | k, k/s = 2^b) */
  double vscale;               /* factor on every value: 1/sqrt(s) into z, else 1 */
  uint32_t lo[GW_PROTO_S_MAX]; /* first row of row block j */
  uint32_t w[GW_PROTO_S_MAX];  /* rows in row block j */
} plan_t;

/* One block: the nb coordinates g[0..nb-1], global indices gi0, gi0+1, ...
 * Adds their entries q = j*nb + e (j < s, e < nb), in increasing q, into
 * acc: acc[row(gi0 + e, j) * C + (e mod C)] += ±g[e] * vscale. idx and val
 * are scratch space for BLOCK_ENTRIES entries. */
typedef void block_fn(const plan_t *pl, const void *g, int f64, size_t nb,
                      uint64_t gi0, uint64_t *idx, double *val, double *acc);

static inline uint64_t fmix64(uint64_t x) {
  x ^= x >> 33;
  x *= FMIX_C1;
  x ^= x >> 33;
  x *= FMIX_C2;
  x ^= x >> 33;
  return x;
}

uint64_t gw_sketch_hash(uint64_t seed, uint64_t i, uint64_t j) {
  return fmix64((seed * GOLDEN) ^ (i * 8 + j));
}

int gw_sketch_check(const gw_sketch_params_t *p) {
  if (p == NULL) return GW_EINVAL;
  if (p->k == 0 || p->k > GW_PROTO_K_MAX) return GW_EKLIMIT;
  switch (p->kind) {
  case GW_SKETCH_SJLT:
    return (p->s >= 1 && p->s <= GW_PROTO_S_MAX && p->s <= p->k) ? 0 : GW_EKIND;
  case GW_SKETCH_GAUSSIAN:
    return p->s == 0 ? 0 : GW_EKIND;
  default:
    return GW_EKIND;
  }
}

/* ---- the portable block ----------------------------------------------- */

static inline double load_g(const void *g, int f64, size_t e) {
  return f64 ? ((const double *)g)[e] : (double)((const float *)g)[e];
}

/* ±x by the low bit of h, without a branch (the bit is a coin flip, and a
 * mispredicted branch per entry would cost more than the hash). Flipping the
 * sign bit is exactly what the SIMD blocks' xor does. */
static inline double flip(double x, uint64_t h) {
  uint64_t u;
  memcpy(&u, &x, sizeof u);
  u ^= (h & 1) << 63;
  memcpy(&x, &u, sizeof x);
  return x;
}

/* Entry (j, e) straight from the definition. */
static inline void fill_entry(const plan_t *pl, double gv, uint64_t gi,
                              size_t e, unsigned j, uint64_t *ix, double *v) {
  uint64_t h = fmix64(pl->key ^ (gi * 8 + j));
  uint64_t row = pl->lo[j] + (((h >> 32) * pl->w[j]) >> 32);
  *ix = (row << pl->logc) | (e & ((1u << pl->logc) - 1));
  *v = flip(gv, h) * pl->vscale;
}

static inline void scatter(double *acc, const uint64_t *idx, const double *val,
                           size_t m) {
  for (size_t q = 0; q < m; q++) acc[idx[q]] += val[q];
}

static void block_scalar(const plan_t *pl, const void *g, int f64, size_t nb,
                         uint64_t gi0, uint64_t *idx, double *val, double *acc) {
  const uint64_t key = pl->key, cmask = (1u << pl->logc) - 1;
  const unsigned logc = pl->logc;
  const double vscale = pl->vscale;
  for (unsigned j = 0; j < pl->s; j++) {
    const uint64_t lo = pl->lo[j], w = pl->w[j], k0 = gi0 * 8 + j;
    uint64_t *ix = idx + j * nb;
    double *v = val + j * nb;
    for (size_t e = 0; e < nb; e++) { /* fill_entry with the plan in registers */
      uint64_t h = fmix64(key ^ (k0 + e * 8));
      ix[e] = ((lo + (((h >> 32) * w) >> 32)) << logc) | (e & cmask);
      v[e] = flip(load_g(g, f64, e), h) * vscale;
    }
  }
  scatter(acc, idx, val, pl->s * nb);
}

/* ---- SIMD blocks -------------------------------------------------------
 * Both prefetch the next block's g while they work: the scatter issues no
 * loads from g that would keep the hardware prefetcher streaming. */

#ifdef GW_SKETCH_X86
__attribute__((target("avx2"))) static inline __m256i
mul64_avx2(__m256i a, __m256i blo, __m256i bhi) {
  __m256i ll = _mm256_mul_epu32(a, blo);
  __m256i hl = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), blo);
  __m256i lh = _mm256_mul_epu32(a, bhi);
  return _mm256_add_epi64(ll, _mm256_slli_epi64(_mm256_add_epi64(hl, lh), 32));
}

/* AVX2 has no 64-bit multiply, so the hash costs three 32-bit ones per
 * product; entries go through idx/val and are scattered LAG behind. */
__attribute__((target("avx2"), always_inline)) static inline void
body_avx2(const plan_t *pl, const void *g, const int f64, size_t nb,
          uint64_t gi0, uint64_t *idx, double *val, double *acc) {
  const __m256i key = _mm256_set1_epi64x((long long)pl->key);
  const __m256i c1lo = _mm256_set1_epi64x((long long)(FMIX_C1 & 0xFFFFFFFFu));
  const __m256i c1hi = _mm256_set1_epi64x((long long)(FMIX_C1 >> 32));
  const __m256i c2lo = _mm256_set1_epi64x((long long)(FMIX_C2 & 0xFFFFFFFFu));
  const __m256i c2hi = _mm256_set1_epi64x((long long)(FMIX_C2 >> 32));
  /* copy = e mod C for lanes e..e+3; e is a multiple of 4 and C <= 8 */
  const __m256i cmask = _mm256_set1_epi64x((1 << pl->logc) - 1);
  const __m256i copy0 = _mm256_and_si256(_mm256_setr_epi64x(0, 1, 2, 3), cmask);
  const __m256i copy4 = _mm256_and_si256(_mm256_setr_epi64x(4, 5, 6, 7), cmask);
  const __m256i step = _mm256_set1_epi64x(32);
  const __m128i logc = _mm_cvtsi32_si128((int)pl->logc);
  const __m256d vscale = _mm256_set1_pd(pl->vscale);
  const size_t nv = nb & ~(size_t)3, esz = f64 ? sizeof(double) : sizeof(float);
  size_t done = 0; /* entries already added into acc */

  for (unsigned j = 0; j < pl->s; j++) {
    const __m256i lo = _mm256_set1_epi64x(pl->lo[j]);
    const __m256i w = _mm256_set1_epi64x(pl->w[j]);
    const char *pf = j == 0 ? (const char *)g + nb * esz : (const char *)g;
    __m256i kv = _mm256_add_epi64(_mm256_set1_epi64x((long long)(gi0 * 8 + j)),
                                  _mm256_setr_epi64x(0, 8, 16, 24));
    uint64_t *ix = idx + j * nb;
    double *v = val + j * nb;
    for (size_t e = 0; e < nv; e += 4) {
      if (e % 16 == 0) _mm_prefetch(pf + e * esz, _MM_HINT_T0);
      __m256i h = _mm256_xor_si256(key, kv);
      h = _mm256_xor_si256(h, _mm256_srli_epi64(h, 33));
      h = mul64_avx2(h, c1lo, c1hi);
      h = _mm256_xor_si256(h, _mm256_srli_epi64(h, 33));
      h = mul64_avx2(h, c2lo, c2hi);
      h = _mm256_xor_si256(h, _mm256_srli_epi64(h, 33));
      __m256i row = _mm256_add_epi64(
          lo, _mm256_srli_epi64(_mm256_mul_epu32(_mm256_srli_epi64(h, 32), w), 32));
      _mm256_storeu_si256((__m256i *)(ix + e),
                          _mm256_or_si256(_mm256_sll_epi64(row, logc),
                                          e & 4 ? copy4 : copy0));
      __m256d gv = f64 ? _mm256_loadu_pd((const double *)g + e)
                       : _mm256_cvtps_pd(_mm_loadu_ps((const float *)g + e));
      __m256d sg = _mm256_castsi256_pd(_mm256_slli_epi64(h, 63));
      __m256d sv = _mm256_xor_pd(gv, sg);
      _mm256_storeu_pd(v + e, _mm256_mul_pd(sv, vscale));
      kv = _mm256_add_epi64(kv, step);
      if (j * nb + e >= done + LAG) {
        scatter(acc, idx + done, val + done, 4);
        done += 4;
      }
    }
    for (size_t e = nv; e < nb; e++)
      fill_entry(pl, load_g(g, f64, e), gi0 + e, e, j, ix + e, v + e);
  }
  scatter(acc, idx + done, val + done, pl->s * nb - done);
}

__attribute__((target("avx2"))) static void
block_avx2(const plan_t *pl, const void *g, int f64, size_t nb, uint64_t gi0,
           uint64_t *idx, double *val, double *acc) {
  if (f64)
    body_avx2(pl, g, 1, nb, gi0, idx, val, acc);
  else
    body_avx2(pl, g, 0, nb, gi0, idx, val, acc);
}

/* acc[ix[l]] += lane l of v, for l = 0..7 in order, taking the values from
 * the register: 7 shuffles instead of 8 loads, as loads and stores are what
 * the scatter is short of. */
__attribute__((target("avx512f,avx512dq,avx512vl"), always_inline)) static inline void
scatter8_avx512(double *acc, const uint64_t *ix, __m512d v) {
  __m256d lo = _mm512_castpd512_pd256(v), hi = _mm512_extractf64x4_pd(v, 1);
  __m128d a = _mm256_castpd256_pd128(lo), b = _mm256_extractf128_pd(lo, 1);
  __m128d c = _mm256_castpd256_pd128(hi), d = _mm256_extractf128_pd(hi, 1);
  acc[ix[0]] += _mm_cvtsd_f64(a);
  acc[ix[1]] += _mm_cvtsd_f64(_mm_unpackhi_pd(a, a));
  acc[ix[2]] += _mm_cvtsd_f64(b);
  acc[ix[3]] += _mm_cvtsd_f64(_mm_unpackhi_pd(b, b));
  acc[ix[4]] += _mm_cvtsd_f64(c);
  acc[ix[5]] += _mm_cvtsd_f64(_mm_unpackhi_pd(c, c));
  acc[ix[6]] += _mm_cvtsd_f64(d);
  acc[ix[7]] += _mm_cvtsd_f64(_mm_unpackhi_pd(d, d));
}

/* Hashes coordinates e..e+7 of row block j, stores their indices at ix + e
 * and sets out to their values. With pow2 the row is the top b bits of h
 * and lo_j's bits do not overlap it, so one ternary-logic op assembles
 * (t & mask) | (lo << logc | copy); otherwise row = (hi32(h) * w) >> 32. */
#define HASH8_AVX512(e, out)                                                   \
  do {                                                                         \
    __m512i h_ = _mm512_xor_si512(key, kv);                                    \
    h_ = _mm512_xor_si512(h_, _mm512_srli_epi64(h_, 33));                      \
    h_ = _mm512_mullo_epi64(h_, c1);                                           \
    h_ = _mm512_xor_si512(h_, _mm512_srli_epi64(h_, 33));                      \
    h_ = _mm512_mullo_epi64(h_, c2);                                           \
    h_ = _mm512_xor_si512(h_, _mm512_srli_epi64(h_, 33));                      \
    __m512i t_ = _mm512_srl_epi64(                                             \
        pow2 ? h_ : _mm512_mul_epu32(_mm512_srli_epi64(h_, 32), w), sh);       \
    _mm512_storeu_si512(                                                       \
        ix + (e), pow2 ? _mm512_ternarylogic_epi64(t_, mask, cj, 0xEA)         \
                       : _mm512_add_epi64(_mm512_and_si512(t_, mask), cj));    \
    __m512d gv_ = f64 ? _mm512_loadu_pd((const double *)g + (e))               \
                      : _mm512_cvtps_pd(_mm256_loadu_ps((const float *)g + (e))); \
    __m512d sv_ = _mm512_castsi512_pd(                                         \
        _mm512_xor_si512(_mm512_castpd_si512(gv_), _mm512_slli_epi64(h_, 63))); \
    (out) = scaled ? _mm512_mul_pd(sv_, vscale) : sv_;                         \
    kv = _mm512_add_epi64(kv, step);                                           \
  } while (0)

/* 16 coordinates a round; the 16 values of the previous round are scattered
 * after this round's hashes, so the two overlap. */
__attribute__((target("avx512f,avx512dq,avx512vl"), always_inline)) static inline void
body_avx512(const plan_t *pl, const void *g, const int f64, const int pow2,
            const int scaled, size_t nb, uint64_t gi0, uint64_t *idx,
            double *val, double *acc) {
  const __m512i key = _mm512_set1_epi64((long long)pl->key);
  const __m512i c1 = _mm512_set1_epi64((long long)FMIX_C1);
  const __m512i c2 = _mm512_set1_epi64((long long)FMIX_C2);
  const __m512i copy = _mm512_and_si512(_mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7),
                                        _mm512_set1_epi64((1 << pl->logc) - 1));
  const __m512i mask = _mm512_set1_epi64(~(long long)((1 << pl->logc) - 1));
  const __m512i step = _mm512_set1_epi64(64);
  const __m512d vscale = _mm512_set1_pd(pl->vscale);
  const size_t esz = f64 ? sizeof(double) : sizeof(float);

  for (unsigned j = 0; j < pl->s; j++) {
    const int b = __builtin_ctz(pl->w[j]); /* w_j = 2^b when pow2 */
    const __m128i sh = _mm_cvtsi32_si128(pow2 ? 64 - b - (int)pl->logc
                                              : 32 - (int)pl->logc);
    const __m512i w = _mm512_set1_epi64(pl->w[j]);
    const __m512i cj = _mm512_add_epi64(
        _mm512_set1_epi64((long long)pl->lo[j] << pl->logc), copy);
    const char *pf = j == 0 ? (const char *)g + nb * esz : (const char *)g;
    __m512i kv = _mm512_add_epi64(_mm512_set1_epi64((long long)(gi0 * 8 + j)),
                                  _mm512_setr_epi64(0, 8, 16, 24, 32, 40, 48, 56));
    uint64_t *ix = idx + j * nb;
    double *v = val + j * nb;
    size_t e = 0;
    __m512d pa, pb; /* the previous round's values */

    if (nb >= 16) {
      _mm_prefetch(pf, _MM_HINT_T0);
      HASH8_AVX512(0, pa);
      HASH8_AVX512(8, pb);
      for (e = 16; e + 16 <= nb; e += 16) {
        __m512d na, nb8;
        _mm_prefetch(pf + e * esz, _MM_HINT_T0);
        if (f64) _mm_prefetch(pf + e * esz + 64, _MM_HINT_T0);
        HASH8_AVX512(e, na);
        HASH8_AVX512(e + 8, nb8);
        scatter8_avx512(acc, ix + e - 16, pa);
        scatter8_avx512(acc, ix + e - 8, pb);
        pa = na;
        pb = nb8;
      }
      scatter8_avx512(acc, ix + e - 16, pa);
      scatter8_avx512(acc, ix + e - 8, pb);
    }
    if (e + 8 <= nb) {
      HASH8_AVX512(e, pa);
      scatter8_avx512(acc, ix + e, pa);
      e += 8;
    }
    for (; e < nb; e++) {
      fill_entry(pl, load_g(g, f64, e), gi0 + e, e, j, ix + e, v + e);
      acc[ix[e]] += v[e];
    }
  }
}

/* One compiled body per (dtype, pow2, scaled), each with no branch on them. */
__attribute__((target("avx512f,avx512dq,avx512vl"))) static void
block_avx512(const plan_t *pl, const void *g, int f64, size_t nb, uint64_t gi0,
             uint64_t *idx, double *val, double *acc) {
  const int scaled = pl->vscale != 1.0;
#define BODY(a, b, c) body_avx512(pl, g, a, b, c, nb, gi0, idx, val, acc)
  switch ((f64 ? 4 : 0) | (pl->pow2 ? 2 : 0) | (scaled ? 1 : 0)) {
  case 0: BODY(0, 0, 0); break;
  case 1: BODY(0, 0, 1); break;
  case 2: BODY(0, 1, 0); break;
  case 3: BODY(0, 1, 1); break;
  case 4: BODY(1, 0, 0); break;
  case 5: BODY(1, 0, 1); break;
  case 6: BODY(1, 1, 0); break;
  default: BODY(1, 1, 1); break;
  }
#undef BODY
}
#endif

/* The block function for isa (ISA_AUTO: the best this CPU runs), or NULL if
 * this CPU or build cannot run it. */
static block_fn *pick_block(int isa) {
#ifdef GW_SKETCH_X86
  int has512 = __builtin_cpu_supports("avx512f") &&
               __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx512vl");
  int has2 = __builtin_cpu_supports("avx2");
  if (isa == ISA_AUTO) isa = has512 ? ISA_AVX512 : has2 ? ISA_AVX2 : ISA_SCALAR;
  if (isa == ISA_AVX512) return has512 ? block_avx512 : NULL;
  if (isa == ISA_AVX2) return has2 ? block_avx2 : NULL;
#else
  if (isa == ISA_AUTO) isa = ISA_SCALAR;
#endif
  return isa == ISA_SCALAR ? block_scalar : NULL;
}

/* ---- the sjlt driver -------------------------------------------------- */

/* log2 of the number of copies of z worth keeping for this call; 0 means
 * scatter straight into z. Copies pay when rows collide often (small k) and
 * the call is long enough to amortise clearing and summing them. */
static unsigned pick_logc(uint32_t k, unsigned s, size_t n) {
  unsigned logc = 3;
  while (logc > 0 && ((size_t)k << logc) > ACC_MAX) logc--;
  if (logc == 0 || n < ((size_t)k << logc) * 4 / s) return 0;
  return logc;
}

static double sq_f32(const float *g, size_t n);
static double sq_f64(const double *g, size_t n);

/* z += S g for sjlt. When sq is not NULL, *sq += ‖g‖², summed a block at a
 * time right after the block is sketched, while it is still in L1: the
 * norm costs no second pass over memory. */
static int sjlt(const gw_sketch_params_t *p, const void *g, int f64, size_t n,
                uint64_t offset, double *z, int isa, double *sq) {
  block_fn *block = pick_block(isa);
  plan_t pl;
  size_t nb;
  uint64_t *idx = NULL;
  double *val = NULL, *acc = NULL;
  const double scale = p->s == 1 ? 1.0 : 1.0 / sqrt((double)p->s);
  int rc = 0;

  if (block == NULL) return -ENOTSUP;
  pl.key = p->seed * GOLDEN;
  pl.s = p->s;
  pl.logc = pick_logc(p->k, p->s, n);
  pl.vscale = pl.logc > 0 ? 1.0 : scale;
  for (unsigned j = 0; j < pl.s; j++) {
    pl.lo[j] = (uint32_t)((uint64_t)j * p->k / pl.s);
    pl.w[j] = (uint32_t)((uint64_t)(j + 1) * p->k / pl.s) - pl.lo[j];
  }
  pl.pow2 = p->k % pl.s == 0 && (pl.w[0] & (pl.w[0] - 1)) == 0;
  nb = (BLOCK_ENTRIES / pl.s) & ~(size_t)7; /* a multiple of 8, hence of C */

  idx = malloc(BLOCK_ENTRIES * sizeof *idx);
  val = malloc(BLOCK_ENTRIES * sizeof *val);
  if (pl.logc > 0) acc = calloc((size_t)p->k << pl.logc, sizeof *acc);
  if (idx == NULL || val == NULL || (pl.logc > 0 && acc == NULL)) {
    rc = GW_ENOMEM;
    goto done;
  }

  for (size_t b = 0; b < n; b += nb) {
    size_t m = n - b < nb ? n - b : nb;
    const void *gb = f64 ? (const void *)((const double *)g + b)
                         : (const void *)((const float *)g + b);
    block(&pl, gb, f64, m, offset + b, idx, val, acc != NULL ? acc : z);
    if (sq != NULL) *sq += f64 ? sq_f64(gb, m) : sq_f32(gb, m);
  }
  if (acc != NULL) {
    const size_t c = (size_t)1 << pl.logc;
    for (uint32_t r = 0; r < p->k; r++) {
      double sum = 0.0;
      for (size_t i = 0; i < c; i++) sum += acc[r * c + i];
      z[r] += scale * sum;
    }
  }
done:
  free(idx);
  free(val);
  free(acc);
  return rc;
}

/* ---- gaussian --------------------------------------------------------- */

static void gaussian(const gw_sketch_params_t *p, const void *g, int f64,
                     size_t n, uint64_t offset, double *z) {
  const uint64_t key = p->seed * GOLDEN;
  const double sqrtk = sqrt((double)p->k);

  for (size_t e = 0; e < n; e++) {
    const double gv = load_g(g, f64, e);
    const uint64_t base = (offset + e) * 65536;
    if (gv == 0.0) continue; /* S is finite, so a zero adds nothing */
    for (uint32_t b = 0; b < p->k; b++) {
      uint64_t h = fmix64(key ^ (base + b) ^ GAUSS_TAG);
      double u1 = ((double)(h >> 32) + 0.5) * 0x1p-32;
      double u2 = ((double)(h & 0xFFFFFFFFu) + 0.5) * 0x1p-32;
      double sij = sqrt(-2.0 * log(u1)) * cos(TWO_PI * u2) / sqrtk;
      z[b] += sij * gv;
    }
  }
}

/* ---- entry points ----------------------------------------------------- */

/* Not public (tests and the benchmark declare it): gw_sketch_accum_* with a
 * chosen fill (isa: 0 best available, 1 portable scalar, 2 AVX2, 3 AVX-512)
 * and g float32 (f64 = 0) or float64. -ENOTSUP if this CPU lacks isa. */
int gw_sketch_accum_isa(const gw_sketch_params_t *p, const void *g, int f64,
                        size_t n, uint64_t offset, double *z, int isa);

int gw_sketch_accum_isa(const gw_sketch_params_t *p, const void *g, int f64,
                        size_t n, uint64_t offset, double *z, int isa) {
  int rc = gw_sketch_check(p);
  if (rc != 0) return rc;
  if (n == 0) return 0;
  /* The last global index offset + n - 1 must fit in 64 bits. */
  if (g == NULL || z == NULL || n - 1 > UINT64_MAX - offset) return GW_EINVAL;
  if (p->kind == GW_SKETCH_GAUSSIAN) {
    gaussian(p, g, f64, n, offset, z);
    return 0;
  }
  return sjlt(p, g, f64, n, offset, z, isa, NULL);
}

int gw_sketch_accum_f32(const gw_sketch_params_t *p, const float *g, size_t n,
                        uint64_t offset, double *z) {
  return gw_sketch_accum_isa(p, g, 0, n, offset, z, ISA_AUTO);
}

int gw_sketch_accum_f64(const gw_sketch_params_t *p, const double *g, size_t n,
                        uint64_t offset, double *z) {
  return gw_sketch_accum_isa(p, g, 1, n, offset, z, ISA_AUTO);
}

int gw_sketch_f32(const gw_sketch_params_t *p, const float *g, size_t d,
                  float *z) {
  double *acc = NULL;
  int rc = gw_sketch_check(p);
  if (rc != 0) return rc;
  if (z == NULL) return GW_EINVAL;
  acc = calloc(p->k, sizeof *acc);
  if (acc == NULL) return GW_ENOMEM;
  rc = gw_sketch_accum_f32(p, g, d, 0, acc);
  for (uint32_t r = 0; r < p->k; r++) z[r] = rc == 0 ? (float)acc[r] : 0.0f;
  free(acc);
  return rc;
}

/* ---- many buffers at once (gw_sketch_bufs) -----------------------------
 * The native path of the Python client: a model's parameters' gradients are
 * sketched straight from their own memory, one row of z per buffer, with no
 * staging copy (float16/bfloat16 alone are widened into one float32 scratch
 * array, the cost of a read and a write per element). The squared norm is a
 * second pass over each buffer, with eight partial sums (two vector lanes
 * of four, so the adds do not wait on one another). */

typedef double v4d __attribute__((vector_size(32)));

typedef float v4f __attribute__((vector_size(16)));

GW_CLONES_AVX2
static double sq_f32(const float *g, size_t n) {
  v4d a = {0, 0, 0, 0}, b = {0, 0, 0, 0};
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    v4f xf, yf;
    memcpy(&xf, g + i, sizeof xf);
    memcpy(&yf, g + i + 4, sizeof yf);
    v4d x = __builtin_convertvector(xf, v4d), y = __builtin_convertvector(yf, v4d);
    a += x * x;
    b += y * y;
  }
  double s = ((a[0] + b[0]) + (a[1] + b[1])) + ((a[2] + b[2]) + (a[3] + b[3]));
  for (; i < n; i++) s += (double)g[i] * g[i];
  return s;
}

GW_CLONES_AVX2
static double sq_f64(const double *g, size_t n) {
  v4d a = {0, 0, 0, 0}, b = {0, 0, 0, 0};
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    v4d x, y;
    memcpy(&x, g + i, sizeof x);
    memcpy(&y, g + i + 4, sizeof y);
    a += x * x;
    b += y * y;
  }
  double s = ((a[0] + b[0]) + (a[1] + b[1])) + ((a[2] + b[2]) + (a[3] + b[3]));
  for (; i < n; i++) s += g[i] * g[i];
  return s;
}

static void widen16(const uint16_t *h, size_t n, int bf16, float *out) {
  if (bf16) {
    for (size_t i = 0; i < n; i++) {
      uint32_t u = (uint32_t)h[i] << 16;
      memcpy(&out[i], &u, sizeof u);
    }
  } else {
    for (size_t i = 0; i < n; i++) out[i] = gw_f16_to_f32(h[i]);
  }
}

int gw_sketch_bufs(const gw_sketch_params_t *p, const gw_sketch_buf_t *bufs, size_t m,
                   double *z, double *sq) {
  float *wide = NULL; /* float32 copy of the largest 16-bit buffer */
  size_t wide_n = 0;
  int rc = gw_sketch_check(p);

  if (rc != 0) return rc;
  if (m > 0 && (bufs == NULL || z == NULL)) return GW_EINVAL;
  for (size_t i = 0; i < m; i++) {
    const gw_sketch_buf_t *b = &bufs[i];
    if ((b->data == NULL && b->n > 0) || b->dtype < GW_GRAD_F32 || b->dtype > GW_GRAD_BF16 ||
        (b->n > 0 && b->n - 1 > UINT64_MAX - b->offset))
      return GW_EINVAL;
    if ((b->dtype == GW_GRAD_F16 || b->dtype == GW_GRAD_BF16) && b->n > wide_n) wide_n = b->n;
  }
  if (wide_n > 0 && (wide = malloc(wide_n * sizeof *wide)) == NULL) return GW_ENOMEM;

  for (size_t i = 0; i < m && rc == 0; i++) {
    const gw_sketch_buf_t *b = &bufs[i];
    double *row = z + i * p->k;
    memset(row, 0, (size_t)p->k * sizeof *row);
    if (b->n == 0) {
      if (sq != NULL) sq[i] = 0.0;
      continue;
    }
    const void *g = b->data;
    const int f64 = b->dtype == GW_GRAD_F64;
    double ss = 0.0;
    if (b->dtype == GW_GRAD_F16 || b->dtype == GW_GRAD_BF16) {
      widen16(b->data, b->n, b->dtype == GW_GRAD_BF16, wide);
      g = wide;
    }
    if (p->kind == GW_SKETCH_SJLT) {
      rc = sjlt(p, g, f64, b->n, b->offset, row, ISA_AUTO, sq != NULL ? &ss : NULL);
    } else {
      gaussian(p, g, f64, b->n, b->offset, row);
      if (sq != NULL) ss = f64 ? sq_f64(g, b->n) : sq_f32(g, b->n);
    }
    if (sq != NULL) sq[i] = ss;
  }
  free(wide);
  return rc;
}
