/* proto.c — the gradwatch wire codec, versions 1 and 2 (proto/PROTOCOL.md).
 *
 * Owns the translation between the two ZeroMQ frames of a message (topic
 * "gw1/<run>/<tag>" and a little-endian header + payload) and a gw_msg_t,
 * plus the binary16/bfloat16 conversions. Version 2's header is version 1's
 * 64 bytes followed by the publisher's 8-byte incarnation id, so both
 * versions share every offset below 64 and differ only in where the
 * payload starts (gw_proto_header_size). It is stateless and never
 * allocates, so any thread may call it.
 *
 * Data flow: ingest hands the raw frames to gw_proto_decode, which validates
 * every field in the order of PROTOCOL.md §6 and returns the first failure's
 * specific GW_E* code. On success the gw_msg_t borrows from the frames (run,
 * tag and payload point into them; nothing is copied). The engine then calls
 * gw_proto_read_payload, the only pass over the payload bytes, which widens
 * the elements to float64 and rejects NaN/Inf. The encoder is the exact
 * inverse of the decoder and shares its header checks (check_header), so a
 * publisher cannot produce a body the daemon would refuse for its header.
 *
 * Invariants: every multi-byte load and store goes through memcpy (or byte
 * shifts in the portable build), so frames may be unaligned and the bytes on
 * the wire are the same on big-endian hosts. The decoder reads no byte it
 * has not first proven to be inside the frame.
 */
#include "gw_proto.h"

#include <assert.h>
#include <errno.h>
#include <string.h>

/* Native little-endian hosts load with a plain memcpy; everything else (and
 * the build the tests use to exercise it, GW_PROTO_PORTABLE_LOADS) assembles
 * values from bytes, which is correct on any byte order. */
#if !defined(GW_PROTO_PORTABLE_LOADS) && defined(__BYTE_ORDER__) && \
    defined(__ORDER_LITTLE_ENDIAN__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define NATIVE_LE 1
#else
#define NATIVE_LE 0
#endif

/* Header offsets (PROTOCOL.md §3). */
enum {
  OFF_MAGIC = 0,
  OFF_VERSION = 4,
  OFF_DTYPE = 5,
  OFF_KIND = 6,
  OFF_S = 7,
  OFF_K = 8,
  OFF_FLAGS = 12,
  OFF_STEP = 16,
  OFF_WALL = 24,
  OFF_SEED = 32,
  OFF_GRAD_NORM = 40,
  OFF_LOSS = 48,
  OFF_LR = 56,
  OFF_INCARNATION = 64, /* version 2 */
};

#define STEP_RESERVED (UINT64_C(1) << 63)
#define F64_EXP_MASK UINT64_C(0x7FF0000000000000)

static inline uint16_t ld16(const unsigned char *p) {
#if NATIVE_LE
  uint16_t v;
  memcpy(&v, p, sizeof v);
  return v;
#else
  return (uint16_t)(p[0] | (unsigned)p[1] << 8);
#endif
}

static inline uint32_t ld32(const unsigned char *p) {
#if NATIVE_LE
  uint32_t v;
  memcpy(&v, p, sizeof v);
  return v;
#else
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
         (uint32_t)p[3] << 24;
#endif
}

static inline uint64_t ld64(const unsigned char *p) {
#if NATIVE_LE
  uint64_t v;
  memcpy(&v, p, sizeof v);
  return v;
#else
  return (uint64_t)ld32(p) | (uint64_t)ld32(p + 4) << 32;
#endif
}

static inline void st32(unsigned char *p, uint32_t v) {
#if NATIVE_LE
  memcpy(p, &v, sizeof v);
#else
  p[0] = (unsigned char)v;
  p[1] = (unsigned char)(v >> 8);
  p[2] = (unsigned char)(v >> 16);
  p[3] = (unsigned char)(v >> 24);
#endif
}

static inline void st64(unsigned char *p, uint64_t v) {
  st32(p, (uint32_t)v);
  st32(p + 4, (uint32_t)(v >> 32));
}

static inline double f64_from_bits(uint64_t u) {
  double d;
  memcpy(&d, &u, sizeof d);
  return d;
}

static inline uint64_t f64_bits(double d) {
  uint64_t u;
  memcpy(&u, &d, sizeof u);
  return u;
}

static inline float f32_from_bits(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

static inline uint32_t f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

size_t gw_dtype_size(int dtype) {
  switch (dtype) {
  case GW_DTYPE_F32:
    return 4;
  case GW_DTYPE_F16:
  case GW_DTYPE_BF16:
    return 2;
  default:
    return 0;
  }
}

size_t gw_proto_header_size(int version) {
  switch (version) {
  case 1:
    return GW_PROTO_HEADER_SIZE_V1;
  case 2:
    return GW_PROTO_HEADER_SIZE_V2;
  default:
    return 0;
  }
}

/* ---- names and topic ----------------------------------------------------- */

/* [A-Za-z0-9._:-], plus '/' when slash is set. Explicit ranges, not
 * isalnum(): the grammar is ASCII whatever the locale. */
static inline int name_char(unsigned char c, int slash) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
         (c >= '0' && c <= '9') || c == '.' || c == '_' || c == ':' ||
         c == '-' || (slash && c == '/');
}

static int check_name(const char *name, size_t len, int slash) {
  if (name == NULL || len == 0 || len > GW_PROTO_NAME_MAX) return GW_ENAME;
  for (size_t i = 0; i < len; i++)
    if (!name_char((unsigned char)name[i], slash)) return GW_ENAME;
  return 0;
}

int gw_proto_check_run(const char *name, size_t len) {
  return check_name(name, len, 0);
}

int gw_proto_check_tag(const char *name, size_t len) {
  return check_name(name, len, 1);
}

/* Checks 2-5 of PROTOCOL.md §6: prefix, separator, run, tag. */
static int parse_topic(const char *t, size_t len, gw_msg_t *m) {
  const size_t pre = sizeof GW_PROTO_TOPIC_PREFIX - 1;
  const char *run, *slash;
  int rc;

  if (t == NULL || len < pre || memcmp(t, GW_PROTO_TOPIC_PREFIX, pre) != 0)
    return GW_ETOPIC;
  run = t + pre;
  slash = memchr(run, '/', len - pre);
  if (slash == NULL) return GW_ETOPIC;
  m->run = run;
  m->run_len = (size_t)(slash - run);
  m->tag = slash + 1;
  m->tag_len = len - pre - m->run_len - 1;
  if ((rc = gw_proto_check_run(m->run, m->run_len)) != 0) return rc;
  return gw_proto_check_tag(m->tag, m->tag_len);
}

/* ---- header -------------------------------------------------------------- */

static inline int finite_bits(uint64_t u) {
  return (u & F64_EXP_MASK) != F64_EXP_MASK;
}

/* Checks 8 and 10-17 of PROTOCOL.md §6 on a filled-in message; shared by the
 * decoder and the encoder so both accept exactly the same headers. */
static int check_header(const gw_msg_t *m, uint32_t max_k) {
  if (gw_proto_header_size(m->version) == 0) return GW_EVERSION;
  if (gw_dtype_size(m->dtype) == 0) return GW_EDTYPE;
  if (m->kind == GW_SKETCH_SJLT) {
    if (m->s < 1 || m->s > GW_PROTO_S_MAX) return GW_EKIND;
  } else if (m->kind == GW_SKETCH_GAUSSIAN) {
    if (m->s != 0) return GW_EKIND;
  } else {
    return GW_EKIND;
  }
  if (m->k == 0 || m->k > max_k) return GW_EKLIMIT;
  if (m->kind == GW_SKETCH_SJLT && m->s > m->k) return GW_EKIND;
  if (m->flags & ~(uint32_t)GW_FLAGS_KNOWN) return GW_EFLAGS;
  if (m->step & STEP_RESERVED) return GW_EFLAGS;
  if ((m->flags & GW_HAS_GRAD_NORM) && !finite_bits(f64_bits(m->grad_norm)))
    return GW_ENONFINITE;
  if ((m->flags & GW_HAS_LOSS) && !finite_bits(f64_bits(m->loss)))
    return GW_ENONFINITE;
  if ((m->flags & GW_HAS_LR) && !finite_bits(f64_bits(m->lr)))
    return GW_ENONFINITE;
  /* Version 2 must carry an incarnation; version 1 has no room for one (the
   * decoder leaves it 0, so only an encoder's caller can trip this). */
  if (m->version >= 2 ? m->incarnation == 0 : m->incarnation != 0)
    return GW_EINCARNATION;
  return 0;
}

static uint32_t effective_max_k(uint32_t max_k) {
  return (max_k == 0 || max_k > GW_PROTO_K_MAX) ? GW_PROTO_K_MAX : max_k;
}

/* An absent scalar decodes as 0 whatever its slot holds (PROTOCOL.md §3.1). */
static double scalar(const unsigned char *b, size_t off, uint32_t flags,
                     uint32_t bit) {
  return (flags & bit) ? f64_from_bits(ld64(b + off)) : 0.0;
}

int gw_proto_decode(const void *topic, size_t topic_len, const void *body,
                    size_t body_len, uint32_t max_k, gw_msg_t *out) {
  const unsigned char *b = body;
  size_t hs, need;
  int rc;

  assert(out != NULL);
  memset(out, 0, sizeof *out);
  if ((rc = parse_topic(topic, topic_len, out)) != 0) return rc;
  if (b == NULL || body_len < OFF_VERSION + 1) return GW_ETRUNC;
  if (ld32(b + OFF_MAGIC) != GW_PROTO_MAGIC) return GW_EMAGIC;
  if ((hs = gw_proto_header_size(b[OFF_VERSION])) == 0) return GW_EVERSION;
  if (body_len < hs) return GW_ETRUNC;

  out->version = b[OFF_VERSION];
  out->dtype = b[OFF_DTYPE];
  out->kind = b[OFF_KIND];
  out->s = b[OFF_S];
  out->k = ld32(b + OFF_K);
  out->flags = ld32(b + OFF_FLAGS);
  out->step = ld64(b + OFF_STEP);
  out->wall_ns = (int64_t)ld64(b + OFF_WALL);
  out->seed = ld64(b + OFF_SEED);
  out->grad_norm = scalar(b, OFF_GRAD_NORM, out->flags, GW_HAS_GRAD_NORM);
  out->loss = scalar(b, OFF_LOSS, out->flags, GW_HAS_LOSS);
  out->lr = scalar(b, OFF_LR, out->flags, GW_HAS_LR);
  if (out->version >= 2) out->incarnation = ld64(b + OFF_INCARNATION);
  if ((rc = check_header(out, effective_max_k(max_k))) != 0) return rc;

  /* k <= 65536 and size <= 4: no overflow. */
  need = hs + (size_t)out->k * gw_dtype_size(out->dtype);
  if (body_len < need) return GW_ETRUNC;
  if (body_len > need) return GW_ELENGTH;
  out->payload = b + hs;
  out->payload_len = need - hs;
  return 0;
}

/* ---- payload ------------------------------------------------------------- */

/* The three loops below are the ingest hot path. Each is written so GCC and
 * Clang vectorise it at -O2: a fixed-width inner block (GCC's -O2 cost model
 * only vectorises loops whose trip count needs no scalar epilogue), restrict
 * pointers (no runtime alias checks), and a branch-free body that ORs a
 * "non-finite seen" flag instead of returning early. A bad element therefore
 * costs the rest of the pass, which only happens to messages being rejected. */
#define BLOCK 16
/* Kept out of line so the restrict promise survives (GCC drops it when the
 * loop is inlined into gw_proto_read_payload and then wants alias checks). */
#if defined(__GNUC__)
#define NOINLINE __attribute__((noinline))
#else
#define NOINLINE
#endif

static inline double f32_elem(const unsigned char *p, uint32_t *bad) {
  uint32_t u = ld32(p);
  *bad |= (uint32_t)((u & 0x7F800000u) == 0x7F800000u);
  return (double)f32_from_bits(u);
}

/* Exact binary16 -> binary64 in two operations: the half's sign, exponent
 * and fraction are placed at the top of a binary64 (fraction bits 9..0 become
 * bits 51..42), which reads as the half's value times 2^(15-1023), normal or
 * subnormal alike; multiplying by 2^1008 undoes that exactly. Inf/NaN halves
 * give garbage here and set *bad. (Needs IEEE subnormals, i.e. no DAZ: the
 * build never uses -ffast-math.) On x86-64 at k = 65536 this measured
 * 0.40 ns/element against 0.82 for a branch-free select between a normal
 * and a subnormal path, and the same 0.40 on all-subnormal payloads. */
static inline double f16_elem(const unsigned char *p, uint32_t *bad) {
  uint64_t h = ld16(p);
  *bad |= (uint32_t)((h & 0x7C00u) == 0x7C00u);
  return f64_from_bits((h & 0x8000u) << 48 | (h & 0x7FFFu) << 42) * 0x1p1008;
}

static inline double bf16_elem(const unsigned char *p, uint32_t *bad) {
  uint32_t h = ld16(p);
  *bad |= (uint32_t)((h & 0x7F80u) == 0x7F80u);
  return (double)f32_from_bits(h << 16);
}

#define READ_LOOP(name, width, elem)                                           \
  static NOINLINE int name(const unsigned char *restrict p, size_t n,          \
                           double *restrict out) {                             \
    uint32_t bad = 0;                                                          \
    size_t i = 0;                                                              \
    for (; i + BLOCK <= n; i += BLOCK)                                         \
      for (size_t j = 0; j < BLOCK; j++)                                       \
        out[i + j] = elem(p + (i + j) * (width), &bad);                        \
    for (; i < n; i++) out[i] = elem(p + i * (width), &bad);                   \
    return bad ? GW_ENONFINITE : 0;                                            \
  }

READ_LOOP(read_f32, 4, f32_elem)
READ_LOOP(read_f16, 2, f16_elem)
READ_LOOP(read_bf16, 2, bf16_elem)

int gw_proto_read_payload(const gw_msg_t *m, double *out) {
  assert(m != NULL && out != NULL);
  assert(m->payload_len == (size_t)m->k * gw_dtype_size(m->dtype));
  switch (m->dtype) {
  case GW_DTYPE_F32:
    return read_f32(m->payload, m->k, out);
  case GW_DTYPE_F16:
    return read_f16(m->payload, m->k, out);
  case GW_DTYPE_BF16:
    return read_bf16(m->payload, m->k, out);
  default:
    return GW_EDTYPE;
  }
}

/* ---- encoding ------------------------------------------------------------ */

int gw_proto_encode_topic(const gw_msg_t *m, char *buf, size_t cap) {
  const size_t pre = sizeof GW_PROTO_TOPIC_PREFIX - 1;
  size_t n;
  int rc;

  assert(m != NULL && (buf != NULL || cap == 0));
  if ((rc = gw_proto_check_run(m->run, m->run_len)) != 0) return rc;
  if ((rc = gw_proto_check_tag(m->tag, m->tag_len)) != 0) return rc;
  n = pre + m->run_len + 1 + m->tag_len;
  if (cap < n + 1) return -ENOBUFS;
  memcpy(buf, GW_PROTO_TOPIC_PREFIX, pre);
  memcpy(buf + pre, m->run, m->run_len);
  buf[pre + m->run_len] = '/';
  memcpy(buf + pre + m->run_len + 1, m->tag, m->tag_len);
  buf[n] = '\0';
  return (int)n;
}

/* Absent scalars are written as 0 whatever m holds (PROTOCOL.md §3.1). The
 * payload is moved first, with memmove, so it may already sit in buf — at
 * buf + GW_PROTO_HEADER_SIZE, say, for either version: a caller can convert
 * the sketch straight into its send buffer. On failure buf is untouched. */
int gw_proto_encode_body(const gw_msg_t *m, void *buf, size_t cap) {
  unsigned char *b = buf;
  size_t hs, n;
  int rc;

  assert(m != NULL && (buf != NULL || cap == 0));
  if ((rc = check_header(m, GW_PROTO_K_MAX)) != 0) return rc;
  if (m->payload_len != (size_t)m->k * gw_dtype_size(m->dtype))
    return GW_ELENGTH;
  if (m->payload == NULL) return GW_EINVAL;
  hs = gw_proto_header_size(m->version);
  n = hs + m->payload_len;
  if (cap < n) return -ENOBUFS;

  memmove(b + hs, m->payload, m->payload_len);
  st32(b + OFF_MAGIC, GW_PROTO_MAGIC);
  b[OFF_VERSION] = m->version;
  b[OFF_DTYPE] = m->dtype;
  b[OFF_KIND] = m->kind;
  b[OFF_S] = m->s;
  st32(b + OFF_K, m->k);
  st32(b + OFF_FLAGS, m->flags);
  st64(b + OFF_STEP, m->step);
  st64(b + OFF_WALL, (uint64_t)m->wall_ns);
  st64(b + OFF_SEED, m->seed);
  st64(b + OFF_GRAD_NORM,
       (m->flags & GW_HAS_GRAD_NORM) ? f64_bits(m->grad_norm) : 0);
  st64(b + OFF_LOSS, (m->flags & GW_HAS_LOSS) ? f64_bits(m->loss) : 0);
  st64(b + OFF_LR, (m->flags & GW_HAS_LR) ? f64_bits(m->lr) : 0);
  if (hs > OFF_INCARNATION) st64(b + OFF_INCARNATION, m->incarnation);
  return (int)n;
}

/* ---- binary16 and bfloat16 ----------------------------------------------- */

float gw_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t e = (h >> 10) & 0x1Fu, m = h & 0x3FFu, u;

  if (e == 0x1F) {
    u = sign | 0x7F800000u | m << 13; /* Inf, or NaN keeping its payload */
  } else if (e != 0) {
    u = sign | (e + 127 - 15) << 23 | m << 13;
  } else if (m == 0) {
    u = sign;
  } else { /* subnormal m * 2^-24: normalise into a binary32 normal */
    e = 127 - 15 + 1;
    while (!(m & 0x400u)) {
      m <<= 1;
      e--;
    }
    u = sign | e << 23 | (m & 0x3FFu) << 13;
  }
  return f32_from_bits(u);
}

/* Round q + rem/2^shift to nearest, ties to even. */
static inline uint32_t round_rne(uint32_t q, uint32_t rem, uint32_t shift) {
  uint32_t half = 1u << (shift - 1);
  return q + (rem > half || (rem == half && (q & 1u)));
}

uint16_t gw_f32_to_f16(float f) {
  uint32_t u = f32_bits(f);
  uint32_t sign = (u >> 16) & 0x8000u, a = u & 0x7FFFFFFFu;
  uint32_t e = a >> 23, r;

  if (a > 0x7F800000u) /* NaN: stay NaN (quiet), keep the top payload bits */
    return (uint16_t)(sign | 0x7E00u | (a >> 13 & 0x3FFu));
  if (a >= 0x47800000u) /* >= 2^16 (or Inf): beyond rounding, Inf */
    return (uint16_t)(sign | 0x7C00u);
  if (e >= 127 - 14) { /* binary16 normal range; rounding may carry into the
                          exponent, up to 0x7C00 (Inf) from >= 65520 */
    r = a - ((127u - 15u) << 23);
    return (uint16_t)(sign | round_rne(r >> 13, r & 0x1FFFu, 13));
  }
  if (e < 127 - 25) /* < 2^-25: rounds to zero (2^-25 itself is e = 102) */
    return (uint16_t)sign;
  /* Subnormal result: value = M * 2^(e-150) with 24-bit M, in units of
   * 2^-24 that is M >> (126 - e), shift 14..24. Rounding up from the largest
   * subnormal gives 0x400, the smallest normal, which is right. */
  {
    uint32_t mant = (a & 0x7FFFFFu) | 0x800000u, shift = 126 - e;
    r = round_rne(mant >> shift, mant & ((1u << shift) - 1), shift);
  }
  return (uint16_t)(sign | r);
}

float gw_bf16_to_f32(uint16_t h) { return f32_from_bits((uint32_t)h << 16); }

uint16_t gw_f32_to_bf16(float f) {
  uint32_t u = f32_bits(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) /* NaN: quiet, never rounded to Inf */
    return (uint16_t)((u >> 16) | 0x0040u);
  return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}
