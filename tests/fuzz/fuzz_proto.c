/* fuzz_proto.c — libFuzzer target for the wire decoder (proto/proto.c).
 *
 * Input layout: a u16 little-endian topic length n, then n bytes of topic
 * (clamped to what is there), then the body; the seeds in
 * tests/fuzz/corpus/proto are written this way by proto/vectors/gen_frames.py.
 *
 * Each topic and body is copied into a heap block of exactly its size, so
 * ASan flags any read past a frame. When decode accepts a message the target
 * checks what the decoder promises: the borrowed pointers lie inside the
 * frames, the payload starts where the header of its version ends, a
 * version 2 message has a nonzero incarnation and a version 1 message none, the payload is converted or rejected only as non_finite, accepted
 * payloads are finite and survive an f16/bf16 round trip, and re-encoding
 * gives back the input exactly (with absent scalar slots zeroed, the one
 * liberty PROTOCOL.md §3.1 allows). Any broken promise aborts.
 *
 * A run-metadata topic ("gw1/<run>/@meta", PROTOCOL.md §11) goes to the
 * metadata frame codec and the daemon's document validator instead: only
 * their documented reasons may come back, an accepted document lies inside
 * the body, re-encodes to the same body, and normalises to a document that
 * is itself accepted and prints the same.
 *
 * Build (by hand, or tests/fuzz/run.sh proto):
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Iproto -Idaemon \
 *     tests/fuzz/fuzz_proto.c proto/proto.c proto/meta.c proto/error.c \
 *     daemon/runmeta.c -lcjson -lm -o /tmp/fuzz_proto
 *   /tmp/fuzz_proto -max_total_time=30 tests/fuzz/corpus/proto
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gw_meta.h"
#include "gw_proto.h"
#include "runmeta.h"

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) abort();                                                      \
  } while (0)

static int inside(const void *p, size_t n, const unsigned char *base,
                  size_t len) {
  const unsigned char *q = p;
  return q >= base && q + n <= base + len;
}

static void check_accepted(const gw_msg_t *m, const unsigned char *topic,
                           size_t topic_len, const unsigned char *body,
                           size_t body_len) {
  size_t w = gw_dtype_size(m->dtype), hs = gw_proto_header_size(m->version);
  char t[GW_PROTO_TOPIC_MAX + 1];
  unsigned char *re, *want;
  double *out;
  int rc;

  CHECK(inside(m->run, m->run_len, topic, topic_len));
  CHECK(inside(m->tag, m->tag_len, topic, topic_len));
  CHECK(hs == (m->version == 1 ? 64u : 72u) && m->version == body[4]);
  CHECK(m->version == 1 ? m->incarnation == 0 : m->incarnation != 0);
  CHECK(m->payload == body + hs);
  CHECK(w != 0 && m->k >= 1 && m->k <= GW_PROTO_K_MAX);
  CHECK(m->payload_len == m->k * w && body_len == hs + m->payload_len);

  out = malloc(m->k * sizeof *out);
  CHECK(out != NULL);
  rc = gw_proto_read_payload(m, out);
  CHECK(rc == 0 || rc == GW_ENONFINITE);
  if (rc == 0) {
    const unsigned char *p = m->payload;
    for (uint32_t i = 0; i < m->k; i++) {
      CHECK(isfinite(out[i]));
      if (m->dtype == GW_DTYPE_F16) { /* exact, so encoding back is identity */
        uint16_t h = (uint16_t)(p[2 * i] | p[2 * i + 1] << 8);
        CHECK(gw_f32_to_f16((float)out[i]) == h);
        CHECK((double)gw_f16_to_f32(h) == out[i]);
      } else if (m->dtype == GW_DTYPE_BF16) {
        uint16_t h = (uint16_t)(p[2 * i] | p[2 * i + 1] << 8);
        CHECK(gw_f32_to_bf16((float)out[i]) == h);
      }
    }
  }
  free(out);

  CHECK(gw_proto_encode_topic(m, t, sizeof t) == (int)topic_len);
  CHECK(memcmp(t, topic, topic_len) == 0);

  re = malloc(body_len);
  want = malloc(body_len);
  CHECK(re != NULL && want != NULL);
  memcpy(want, body, body_len);
  if (!(m->flags & GW_HAS_GRAD_NORM)) memset(want + 40, 0, 8);
  if (!(m->flags & GW_HAS_LOSS)) memset(want + 48, 0, 8);
  if (!(m->flags & GW_HAS_LR)) memset(want + 56, 0, 8);
  CHECK(gw_proto_encode_body(m, re, body_len) == (int)body_len);
  CHECK(memcmp(re, want, body_len) == 0);
  free(re);
  free(want);
}

static void check_meta(const unsigned char *topic, size_t tlen, const unsigned char *body,
                       size_t blen) {
  gw_meta_msg_t mm;
  cJSON *meta = NULL, *again = NULL;
  int rc = gw_meta_decode(topic, tlen, body, blen, &mm);
  CHECK(rc == 0 || rc == GW_ETOPIC || rc == GW_ENAME || rc == GW_ETRUNC || rc == GW_EMAGIC ||
        rc == GW_EVERSION || rc == GW_EFLAGS || rc == GW_EINCARNATION || rc == GW_EMETA ||
        rc == GW_EMETASIZE);
  if (rc != 0) return;
  CHECK(inside(mm.run, mm.run_len, topic, tlen));
  CHECK(mm.doc == (const char *)body + GW_META_HEADER_SIZE && mm.doc_len == blen - GW_META_HEADER_SIZE);
  unsigned char *re = malloc(blen);
  CHECK(re != NULL);
  CHECK(gw_meta_encode_body(mm.incarnation, mm.wall_ns, mm.doc, mm.doc_len, re, blen) == (int)blen);
  CHECK(memcmp(re, body, blen) == 0);
  free(re);
  rc = gw_runmeta_parse(mm.doc, mm.doc_len, &meta);
  CHECK(rc == 0 || rc == GW_EMETA || rc == GW_EMETASIZE || rc == GW_ENOMEM);
  if (rc != 0) {
    CHECK(meta == NULL);
    return;
  }
  char *text = cJSON_PrintUnformatted(meta), *text2 = NULL;
  if (text && strlen(text) <= GW_META_DOC_MAX) {
    CHECK(gw_runmeta_parse(text, strlen(text), &again) == 0);
    text2 = cJSON_PrintUnformatted(again);
    CHECK(text2 != NULL && strcmp(text, text2) == 0);
  }
  free(text);
  free(text2);
  cJSON_Delete(again);
  cJSON_Delete(meta);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  size_t tlen, blen;
  unsigned char *topic, *body;
  gw_msg_t m;
  int rc;

  if (size < 2) return 0;
  tlen = (size_t)data[0] | (size_t)data[1] << 8;
  if (tlen > size - 2) tlen = size - 2;
  blen = size - 2 - tlen;
  topic = malloc(tlen ? tlen : 1);
  body = malloc(blen ? blen : 1);
  CHECK(topic != NULL && body != NULL);
  memcpy(topic, data + 2, tlen);
  memcpy(body, data + 2 + tlen, blen);

  if (gw_meta_is_topic(topic, tlen)) {
    check_meta(topic, tlen, body, blen);
    free(topic);
    free(body);
    return 0;
  }
  rc = gw_proto_decode(topic, tlen, body, blen, 0, &m);
  /* only the reasons gw_proto.h documents for the decoder */
  CHECK(rc == 0 || rc == GW_ETOPIC || rc == GW_ENAME || rc == GW_ETRUNC ||
        rc == GW_EMAGIC || rc == GW_EVERSION || rc == GW_EDTYPE ||
        rc == GW_EKIND || rc == GW_EKLIMIT || rc == GW_EFLAGS ||
        rc == GW_ELENGTH || rc == GW_ENONFINITE || rc == GW_EINCARNATION);
  if (rc == 0) check_accepted(&m, topic, tlen, body, blen);

  free(topic);
  free(body);
  return 0;
}
