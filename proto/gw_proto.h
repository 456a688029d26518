/* gw_proto.h — the gradwatch wire format, version 2 (version 1 still read;
 * proto/PROTOCOL.md is the byte-exact specification, this header its C face).
 *
 * A message is two ZeroMQ frames:
 *   frame 0: topic  "gw1/<run>/<tag>"               (no terminating NUL)
 *   frame 1: body   header (72 bytes, v1: 64) + payload (little-endian)
 *
 * Header layout (offsets in bytes):
 *    0  u32  magic       0x4B535747 ("GWSK" as bytes G W S K)
 *    4  u8   version     2 (1: the 64-byte header without incarnation)
 *    5  u8   dtype       1 = f32, 2 = f16 (IEEE binary16), 3 = bf16
 *    6  u8   kind        1 = sjlt, 2 = gaussian
 *    7  u8   s           sjlt nonzeros per column, 1..8; 0 for gaussian
 *    8  u32  k           sketch length, 1..GW_PROTO_K_MAX
 *   12  u32  flags       bit 0 grad_norm present, bit 1 loss, bit 2 lr; others 0
 *   16  u64  step        training step, 0..2^63-1
 *   24  i64  wall_ns     publisher wall clock, ns since the Unix epoch
 *   32  u64  seed        sketch seed
 *   40  f64  grad_norm   ‖g‖ of the full gradient (0 when absent)
 *   48  f64  loss        (0 when absent)
 *   56  f64  lr          (0 when absent)
 *   64  u64  incarnation version 2 only: the publisher's random id, never 0
 *   72  ...  payload     k elements of dtype, exactly k * size(dtype) bytes
 *                        (at offset 64 in version 1)
 *
 * Decoding borrows: gw_msg_t points into the caller's frames and never copies
 * the payload. Converting the payload to float64 (gw_proto_read_payload) is a
 * separate pass that also rejects NaN/Inf.
 */
#ifndef GW_PROTO_H
#define GW_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include "gw_error.h"

#define GW_PROTO_MAGIC 0x4B535747u
#define GW_PROTO_VERSION 2     /* the version senders write */
#define GW_PROTO_VERSION_MIN 1 /* the oldest version receivers still accept */
#define GW_PROTO_HEADER_SIZE_V1 64
#define GW_PROTO_HEADER_SIZE_V2 72
/* The largest header of any accepted version: sizes buffers and limits. */
#define GW_PROTO_HEADER_SIZE GW_PROTO_HEADER_SIZE_V2
#define GW_PROTO_TOPIC_PREFIX "gw1/"
#define GW_PROTO_NAME_MAX 128 /* run and tag: 1..128 bytes */
#define GW_PROTO_K_MAX 65536u /* hard limit; the daemon's --max-k may be lower */
#define GW_PROTO_S_MAX 8
/* Longest topic: "gw1/" + run + "/" + tag. */
#define GW_PROTO_TOPIC_MAX (4 + GW_PROTO_NAME_MAX + 1 + GW_PROTO_NAME_MAX)

typedef enum { GW_DTYPE_F32 = 1, GW_DTYPE_F16 = 2, GW_DTYPE_BF16 = 3 } gw_dtype_t;
typedef enum { GW_SKETCH_SJLT = 1, GW_SKETCH_GAUSSIAN = 2 } gw_sketch_kind_t;

#define GW_HAS_GRAD_NORM 0x1u
#define GW_HAS_LOSS 0x2u
#define GW_HAS_LR 0x4u
#define GW_FLAGS_KNOWN (GW_HAS_GRAD_NORM | GW_HAS_LOSS | GW_HAS_LR)

/* One decoded message. Pointers are borrowed from the frames passed to
 * gw_proto_decode and are valid only as long as those frames are. */
typedef struct gw_msg_s {
  const char *run; /* not NUL-terminated */
  size_t run_len;
  const char *tag; /* not NUL-terminated */
  size_t tag_len;
  uint8_t version;
  uint8_t dtype; /* gw_dtype_t */
  uint8_t kind;  /* gw_sketch_kind_t */
  uint8_t s;
  uint32_t k;
  uint32_t flags; /* GW_HAS_* */
  uint64_t step;
  int64_t wall_ns;
  uint64_t seed;
  double grad_norm; /* meaningful only when the matching flag is set */
  double loss;
  double lr;
  const void *payload; /* k * gw_dtype_size(dtype) bytes, may be unaligned */
  size_t payload_len;
  uint64_t incarnation; /* version 2: the publisher's incarnation id (never 0);
                           0 for version 1 */
} gw_msg_t;

/* Size in bytes of one element of dtype, 0 if unknown. */
size_t gw_dtype_size(int dtype);

/* Header size of a body of this version (64 for 1, 72 for 2), 0 if the
 * version is not one this codec implements. The payload starts there. */
size_t gw_proto_header_size(int version);

/* 0 if name is a valid run (1..128 of [A-Za-z0-9._:-]) / tag (1..128 of
 * [A-Za-z0-9._:/-]), GW_ENAME otherwise. */
int gw_proto_check_run(const char *name, size_t len);
int gw_proto_check_tag(const char *name, size_t len);

/* Validate both frames completely and fill *out (borrowing). max_k bounds k
 * (0 means GW_PROTO_K_MAX). Returns 0 or the specific GW_E* reason:
 * ETOPIC, ENAME, ETRUNC, EMAGIC, EVERSION, EDTYPE, EKIND, EKLIMIT, EFLAGS,
 * ENONFINITE (a present scalar is NaN/Inf), EINCARNATION (version 2 with
 * incarnation 0), ELENGTH. Versions 1 and 2 are accepted; out->version says
 * which, and out->incarnation is 0 for version 1. A body shorter than
 * header + k·size is ETRUNC, a longer one ELENGTH; step >= 2^63 is EFLAGS
 * (bit 63 is reserved); max_k above GW_PROTO_K_MAX is clamped to it. On
 * failure *out is unspecified. The payload's values are not inspected here. */
int gw_proto_decode(const void *topic, size_t topic_len, const void *body,
                    size_t body_len, uint32_t max_k, gw_msg_t *out);

/* Convert the payload to float64 into out[0..k-1]. Returns 0, or GW_ENONFINITE
 * if any element is NaN or ±Inf (out is then unspecified). */
int gw_proto_read_payload(const gw_msg_t *m, double *out);

/* Write the topic "gw1/<run>/<tag>" of m into buf (cap bytes, NUL-terminated).
 * Returns its length (without NUL), -ENOBUFS if cap is too small, or a
 * negative GW_E* code. */
int gw_proto_encode_topic(const gw_msg_t *m, char *buf, size_t cap);

/* Write the header of m in version m->version followed by the payload
 * m->payload (m->payload_len bytes, must equal k * dtype size) into buf.
 * Version 2 (GW_PROTO_VERSION, what senders use) needs m->incarnation != 0;
 * version 1 (kept for tests and old receivers) needs m->incarnation == 0,
 * having nowhere to put it. Validates m like the decoder would. Returns the
 * body length, -ENOBUFS if cap is too small (buf untouched), or a negative
 * GW_E* code (GW_EVERSION for any other version, GW_EINCARNATION for a bad
 * incarnation). The payload may already sit anywhere in buf, e.g. at
 * buf + GW_PROTO_HEADER_SIZE for either version (it is moved with memmove). */
int gw_proto_encode_body(const gw_msg_t *m, void *buf, size_t cap);

/* IEEE 754 binary16 and bfloat16 conversions (round to nearest even). */
float gw_f16_to_f32(uint16_t h);
uint16_t gw_f32_to_f16(float f);
float gw_bf16_to_f32(uint16_t h);
uint16_t gw_f32_to_bf16(float f);

#endif
