/* test_proto.c — the wire codec (proto/proto.c) against independent references:
 *
 *  - proto/vectors/frames.json, written by an independent Python encoder
 *    (proto/vectors/gen_frames.py, struct only): golden frames of versions 1
 *    and 2 are decoded field by field (incarnation included) and re-encoded
 *    byte for byte, malformed frames must fail with their exact reason, and
 *    their f16/bf16 conversions must agree; each v2 golden frame re-encoded
 *    as version 1 must give its v1 twin (the versions differ only by the
 *    incarnation);
 *  - closed forms: a binary16 value is m·2^-24 or (1024+m)·2^(e-25) (ldexp),
 *    a bfloat16 value is its bits << 16, and the round-to-nearest-even tie
 *    points between every pair of adjacent f16/bf16 values are computed in
 *    float64;
 *  - the grammar of PROTOCOL.md §2 for names, restated here as a character
 *    list and applied to all 256 byte values.
 *
 * Every frame is copied into a heap block of exactly its length, so under
 * ASan any read past the end of a frame fails the test.
 */
#include <errno.h>
#include <float.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <cjson/cJSON.h>

#include "gw_meta.h"
#include "gw_proto.h"

/* ---- fixtures: files, hex, frames ---------------------------------------- */

static char *src_path(const char *rel) {
  const char *root = getenv("GW_SOURCE_DIR");
  size_t n;
  char *p;
  if (root == NULL || *root == '\0') root = ".";
  n = strlen(root) + 1 + strlen(rel) + 1;
  p = malloc(n);
  assert_non_null(p);
  snprintf(p, n, "%s/%s", root, rel);
  return p;
}

static char *slurp(const char *rel, size_t *len) {
  char *path = src_path(rel), *buf;
  FILE *f = fopen(path, "rb");
  long n;
  if (f == NULL) fail_msg("cannot open %s", path);
  assert_int_equal(fseek(f, 0, SEEK_END), 0);
  n = ftell(f);
  assert_true(n > 0);
  rewind(f);
  buf = malloc((size_t)n + 1);
  assert_non_null(buf);
  assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
  buf[n] = '\0';
  fclose(f);
  free(path);
  if (len) *len = (size_t)n;
  return buf;
}

static int hexval(int c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

/* Exactly-sized heap copy of a hex string (at least 1 byte allocated so an
 * empty frame still has a valid, unreadable-past pointer). */
static unsigned char *unhex(const char *hex, size_t *len) {
  size_t n = strlen(hex);
  unsigned char *b;
  assert_int_equal(n % 2, 0);
  b = malloc(n / 2 ? n / 2 : 1);
  assert_non_null(b);
  for (size_t i = 0; i < n / 2; i++) {
    int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
    assert_true(hi >= 0 && lo >= 0);
    b[i] = (unsigned char)(hi << 4 | lo);
  }
  *len = n / 2;
  return b;
}

static unsigned char *dup_exact(const void *p, size_t n) {
  unsigned char *b = malloc(n ? n : 1);
  assert_non_null(b);
  if (n) memcpy(b, p, n);
  return b;
}

static const cJSON *get(const cJSON *o, const char *key) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  if (v == NULL) fail_msg("frames.json: missing key %s", key);
  return v;
}

static const char *str(const cJSON *o, const char *key) {
  const cJSON *v = get(o, key);
  assert_true(cJSON_IsString(v));
  return v->valuestring;
}

static double num(const cJSON *o, const char *key) {
  const cJSON *v = get(o, key);
  assert_true(cJSON_IsNumber(v));
  return v->valuedouble;
}

typedef struct frame_s {
  const char *name;
  unsigned char *topic, *body;
  size_t topic_len, body_len;
  uint32_t max_k;
} frame_t;

static void frame_load(const cJSON *e, frame_t *f) {
  f->name = str(e, "name");
  f->topic = unhex(str(e, "topic_hex"), &f->topic_len);
  f->body = unhex(str(e, "body"), &f->body_len);
  f->max_k = (uint32_t)num(e, "max_k");
}

static void frame_free(frame_t *f) {
  free(f->topic);
  free(f->body);
}

static int decode(const frame_t *f, gw_msg_t *m) {
  return gw_proto_decode(f->topic, f->topic_len, f->body, f->body_len,
                         f->max_k, m);
}

static int setup(void **state) {
  char *text = slurp("proto/vectors/frames.json", NULL);
  cJSON *root = cJSON_Parse(text);
  free(text);
  if (root == NULL) return -1;
  *state = root;
  return 0;
}

static int teardown(void **state) {
  cJSON_Delete(*state);
  return 0;
}

static const cJSON *list(void **state, const char *key) {
  const cJSON *a = get(*state, key);
  assert_true(cJSON_IsArray(a));
  assert_true(cJSON_GetArraySize(a) > 0);
  return a;
}

/* Same double, including the sign of zero. */
static int same_double(double a, double b) {
  return a == b && signbit(a) == signbit(b);
}

/* ---- closed-form references ---------------------------------------------- */

static double f16_ref(uint16_t h) {
  int e = (h >> 10) & 31, m = h & 1023;
  double v;
  if (e == 31)
    v = m ? NAN : INFINITY;
  else if (e == 0)
    v = ldexp(m, -24);
  else
    v = ldexp(1024 + m, e - 25);
  return (h & 0x8000) ? -v : v;
}

static float f32_of(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static uint32_t bits_of(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

/* ---- golden frames ------------------------------------------------------- */

static void check_golden_fields(const cJSON *e, const frame_t *f,
                                const gw_msg_t *m) {
  const cJSON *fl = get(e, "fields");
  const char *run = str(fl, "run"), *tag = str(fl, "tag");
  size_t w = gw_dtype_size((int)num(fl, "dtype"));

  assert_int_equal(m->run_len, strlen(run));
  assert_memory_equal(m->run, run, m->run_len);
  assert_int_equal(m->tag_len, strlen(tag));
  assert_memory_equal(m->tag, tag, m->tag_len);
  /* borrowed, not copied */
  assert_ptr_equal(m->run, (const char *)f->topic + 4);
  assert_ptr_equal(m->tag, (const char *)f->topic + 5 + m->run_len);
  assert_int_equal(m->version, (int)num(fl, "version"));
  assert_int_equal(m->dtype, (int)num(fl, "dtype"));
  assert_int_equal(m->kind, (int)num(fl, "kind"));
  assert_int_equal(m->s, (int)num(fl, "s"));
  assert_int_equal(m->k, (uint32_t)num(fl, "k"));
  assert_int_equal(m->flags, (uint32_t)num(fl, "flags"));
  assert_true(m->step == strtoull(str(fl, "step"), NULL, 10));
  assert_true(m->wall_ns == strtoll(str(fl, "wall_ns"), NULL, 10));
  assert_true(m->seed == strtoull(str(fl, "seed"), NULL, 10));
  assert_true(m->incarnation == strtoull(str(fl, "incarnation"), NULL, 10));
  if (m->version == 1) assert_true(m->incarnation == 0);
  assert_true(same_double(m->grad_norm, num(fl, "grad_norm")));
  assert_true(same_double(m->loss, num(fl, "loss")));
  assert_true(same_double(m->lr, num(fl, "lr")));
  /* the payload starts where the version's header ends (64 or 72) */
  assert_ptr_equal(m->payload,
                   f->body + (m->version == 1 ? 64 : m->version == 2 ? 72 : -1));
  assert_int_equal(m->payload_len, m->k * w);
}

static void check_golden_payload(const cJSON *e, const gw_msg_t *m) {
  const cJSON *pay = get(e, "payload"), *x;
  double *out = malloc(m->k * sizeof *out);
  size_t i = 0;
  assert_non_null(out);
  assert_int_equal(gw_proto_read_payload(m, out), 0);
  assert_int_equal(cJSON_GetArraySize(pay), (int)m->k);
  cJSON_ArrayForEach(x, pay) {
    if (!same_double(out[i], x->valuedouble))
      fail_msg("%s: payload[%zu] = %.17g, want %.17g", str(e, "name"), i,
               out[i], x->valuedouble);
    i++;
  }
  free(out);
}

static void golden_frames_decode(void **state) {
  const cJSON *e;
  cJSON_ArrayForEach(e, list(state, "golden")) {
    frame_t f;
    gw_msg_t m;
    frame_load(e, &f);
    int rc = decode(&f, &m);
    if (rc != 0) fail_msg("%s: decode -> %s", f.name, gw_err_reason(rc));
    check_golden_fields(e, &f, &m);
    check_golden_payload(e, &m);
    frame_free(&f);
  }
}

static void golden_frames_reencode_byte_for_byte(void **state) {
  const cJSON *e;
  cJSON_ArrayForEach(e, list(state, "golden")) {
    frame_t f;
    gw_msg_t m;
    char topic[GW_PROTO_TOPIC_MAX + 1];
    const cJSON *canon = cJSON_GetObjectItemCaseSensitive(e, "canonical_body");
    unsigned char *want, *buf;
    size_t want_len;

    frame_load(e, &f);
    assert_int_equal(decode(&f, &m), 0);
    assert_int_equal(gw_proto_encode_topic(&m, topic, sizeof topic),
                     (int)f.topic_len);
    assert_memory_equal(topic, f.topic, f.topic_len);
    assert_int_equal(topic[f.topic_len], '\0');
    assert_int_equal(gw_proto_encode_topic(&m, topic, f.topic_len), -ENOBUFS);

    want = canon ? unhex(canon->valuestring, &want_len)
                 : dup_exact(f.body, f.body_len);
    if (!canon) want_len = f.body_len;
    buf = malloc(want_len);
    assert_non_null(buf);
    assert_int_equal(gw_proto_encode_body(&m, buf, want_len), (int)want_len);
    if (memcmp(buf, want, want_len) != 0)
      fail_msg("%s: re-encoded body differs", f.name);
    memset(buf, 0xAB, want_len);
    assert_int_equal(gw_proto_encode_body(&m, buf, want_len - 1), -ENOBUFS);
    assert_int_equal(buf[0], 0xAB); /* untouched on failure */
    free(buf);
    free(want);
    frame_free(&f);
  }
}

static void golden_frames_unaligned(void **state) {
  const cJSON *e;
  cJSON_ArrayForEach(e, list(state, "golden")) {
    frame_t f;
    frame_load(e, &f);
    for (size_t off = 1; off < 8; off++) {
      unsigned char *t = malloc(f.topic_len + off), *b = malloc(f.body_len + off);
      frame_t g = f;
      gw_msg_t m;
      assert_non_null(t);
      assert_non_null(b);
      memcpy(t + off, f.topic, f.topic_len);
      memcpy(b + off, f.body, f.body_len);
      g.topic = t + off;
      g.body = b + off;
      assert_int_equal(decode(&g, &m), 0);
      check_golden_fields(e, &g, &m);
      check_golden_payload(e, &m);
      free(t);
      free(b);
    }
    frame_free(&f);
  }
}

/* ---- malformed frames ---------------------------------------------------- */

/* The reasons gw_proto_decode and gw_proto_read_payload may return, as
 * documented in gw_proto.h (restated, not derived from the vectors). */
static const char *const decoder_reasons[] = {
    "bad_topic", "bad_name",     "truncated", "bad_magic",
    "bad_version", "bad_dtype",  "bad_sketch", "k_over_limit",
    "bad_flags", "non_finite",   "bad_length", "bad_incarnation",
};
#define N_REASONS (sizeof decoder_reasons / sizeof decoder_reasons[0])

static void malformed_frames_exact_reason(void **state) {
  const cJSON *e;
  cJSON_ArrayForEach(e, list(state, "malformed")) {
    frame_t f;
    gw_msg_t m;
    frame_load(e, &f);
    int rc = decode(&f, &m);
    if (rc >= 0 || strcmp(gw_err_reason(rc), str(e, "reason")) != 0)
      fail_msg("%s: decode -> %d (%s), want %s", f.name, rc,
               gw_err_reason(rc), str(e, "reason"));
    frame_free(&f);
  }
}

static void payload_rejected_frames(void **state) {
  const cJSON *e;
  cJSON_ArrayForEach(e, list(state, "payload_rejected")) {
    frame_t f;
    gw_msg_t m;
    double out[16];
    frame_load(e, &f);
    assert_int_equal(decode(&f, &m), 0);
    assert_true(m.k <= 16);
    if (gw_proto_read_payload(&m, out) != GW_ENONFINITE)
      fail_msg("%s: read_payload accepted a non-finite element", f.name);
    frame_free(&f);
  }
}

static void malformed_frames_cover_every_reason(void **state) {
  int seen[N_REASONS] = {0};
  const char *lists[] = {"malformed", "payload_rejected"};
  for (size_t l = 0; l < 2; l++) {
    const cJSON *e;
    cJSON_ArrayForEach(e, list(state, lists[l])) {
      const char *r = str(e, "reason");
      size_t i = 0;
      while (i < N_REASONS && strcmp(decoder_reasons[i], r) != 0) i++;
      if (i == N_REASONS) fail_msg("%s: unexpected reason %s", str(e, "name"), r);
      seen[i]++;
    }
  }
  for (size_t i = 0; i < N_REASONS; i++)
    if (!seen[i]) fail_msg("no malformed frame for reason %s", decoder_reasons[i]);
}

/* Every byte length short of a golden frame is "truncated", one more byte is
 * "bad_length"; every prefix of its topic fails or succeeds as the grammar
 * says. Each cut is a fresh exact-size block (ASan catches over-reads). */
static void truncation_at_every_length(void **state) {
  const cJSON *e;
  cJSON_ArrayForEach(e, list(state, "golden")) {
    frame_t f;
    gw_msg_t m;
    frame_load(e, &f);
    for (size_t n = 0; n < f.body_len; n++) {
      unsigned char *b = dup_exact(f.body, n);
      int rc = gw_proto_decode(f.topic, f.topic_len, b, n, 0, &m);
      if (rc != GW_ETRUNC)
        fail_msg("%s cut to %zu bytes: %s", f.name, n, gw_err_reason(rc));
      free(b);
    }
    {
      unsigned char *b = malloc(f.body_len + 1);
      assert_non_null(b);
      memcpy(b, f.body, f.body_len);
      b[f.body_len] = 0;
      assert_int_equal(
          gw_proto_decode(f.topic, f.topic_len, b, f.body_len + 1, 0, &m),
          GW_ELENGTH);
      free(b);
    }
    for (size_t n = 0; n <= f.topic_len; n++) {
      unsigned char *t = dup_exact(f.topic, n);
      const unsigned char *sep = n > 4 ? memchr(t + 4, '/', n - 4) : NULL;
      int want;
      if (n < 4 || sep == NULL)
        want = GW_ETOPIC; /* no full prefix, or no run/tag separator yet */
      else if (sep == t + 4 || sep == t + n - 1)
        want = GW_ENAME; /* empty run or empty tag */
      else
        want = 0; /* a shorter tag is still a tag */
      int rc = gw_proto_decode(t, n, f.body, f.body_len, 0, &m);
      if (rc != want)
        fail_msg("%s topic cut to %zu: %s, want %s", f.name, n,
                 gw_err_reason(rc), gw_err_reason(want));
      free(t);
    }
    frame_free(&f);
  }
}

/* ---- names --------------------------------------------------------------- */

static const char run_chars[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-";

static void names_at_128_and_129(void **state) {
  char name[GW_PROTO_NAME_MAX + 2], topic[GW_PROTO_TOPIC_MAX + 2];
  static const unsigned char body[GW_PROTO_HEADER_SIZE_V1 + 4] = {
      0x47, 0x57, 0x53, 0x4B, 1, 1, 1, 1, 1}; /* f32, sjlt s=1, k=1 */
  gw_msg_t m;
  (void)state;

  memset(name, 'a', sizeof name);
  assert_int_equal(gw_proto_check_run(name, 128), 0);
  assert_int_equal(gw_proto_check_run(name, 129), GW_ENAME);
  assert_int_equal(gw_proto_check_run(name, 0), GW_ENAME);
  assert_int_equal(gw_proto_check_run(NULL, 0), GW_ENAME);
  memset(name, '/', sizeof name);
  assert_int_equal(gw_proto_check_tag(name, 128), 0);
  assert_int_equal(gw_proto_check_tag(name, 129), GW_ENAME);
  assert_int_equal(gw_proto_check_tag(name, 0), GW_ENAME);
  assert_int_equal(gw_proto_check_run(name, 1), GW_ENAME);

  /* the longest topic, and one byte over in run or tag, through decode */
  for (int extra_run = 0; extra_run < 2; extra_run++) {
    for (int extra_tag = 0; extra_tag < 2; extra_tag++) {
      size_t rl = 128 + (size_t)extra_run, tl = 128 + (size_t)extra_tag;
      size_t n = 4 + rl + 1 + tl;
      unsigned char *t;
      memcpy(topic, "gw1/", 4);
      memset(topic + 4, 'R', rl);
      topic[4 + rl] = '/';
      memset(topic + 5 + rl, 't', tl);
      t = dup_exact(topic, n);
      int rc = gw_proto_decode(t, n, body, sizeof body, 0, &m);
      if (extra_run || extra_tag) {
        assert_int_equal(rc, GW_ENAME);
      } else {
        char again[GW_PROTO_TOPIC_MAX + 1];
        assert_int_equal(rc, 0);
        assert_int_equal(n, GW_PROTO_TOPIC_MAX);
        assert_int_equal(m.run_len, 128);
        assert_int_equal(m.tag_len, 128);
        assert_int_equal(gw_proto_encode_topic(&m, again, sizeof again), (int)n);
        assert_memory_equal(again, t, n);
      }
      free(t);
    }
  }
}

/* All 256 byte values in a run, and in a tag, directly and inside a topic. */
static void every_character_class(void **state) {
  static const unsigned char body[GW_PROTO_HEADER_SIZE_V1 + 4] = {
      0x47, 0x57, 0x53, 0x4B, 1, 1, 1, 1, 1};
  (void)state;
  for (int c = 0; c < 256; c++) {
    char nm[3] = {'a', (char)c, 'b'};
    int in_run = c != 0 && strchr(run_chars, c) != NULL;
    int in_tag = in_run || c == '/';
    char topic[16];
    gw_msg_t m;

    assert_int_equal(gw_proto_check_run(nm, 3), in_run ? 0 : GW_ENAME);
    assert_int_equal(gw_proto_check_tag(nm, 3), in_tag ? 0 : GW_ENAME);
    /* single-character names too (first = last position) */
    assert_int_equal(gw_proto_check_run(nm + 1, 1), in_run ? 0 : GW_ENAME);
    assert_int_equal(gw_proto_check_tag(nm + 1, 1), in_tag ? 0 : GW_ENAME);

    memcpy(topic, "gw1/r/a", 7);
    topic[7] = (char)c;
    topic[8] = 'b';
    unsigned char *t = dup_exact(topic, 9);
    assert_int_equal(gw_proto_decode(t, 9, body, sizeof body, 0, &m),
                     in_tag ? 0 : GW_ENAME);
    free(t);
    if (c != '/') { /* a '/' in run position just ends the run */
      memcpy(topic, "gw1/a", 5);
      topic[5] = (char)c;
      memcpy(topic + 6, "b/t", 3);
      t = dup_exact(topic, 9);
      assert_int_equal(gw_proto_decode(t, 9, body, sizeof body, 0, &m),
                       in_run ? 0 : GW_ENAME);
      free(t);
    }
  }
}

/* ---- f16 / bf16 ---------------------------------------------------------- */

static void f16_known_bit_patterns(void **state) {
  static const struct {
    uint32_t f32;
    uint16_t f16;
  } enc[] = {
      {0x00000000u, 0x0000}, /* +0 */
      {0x80000000u, 0x8000}, /* -0 */
      {0x3F800000u, 0x3C00}, /* 1 */
      {0xC0000000u, 0xC000}, /* -2 */
      {0x477FE000u, 0x7BFF}, /* 65504, largest finite */
      {0x477FEFFFu, 0x7BFF}, /* just under 65520 */
      {0x477FF000u, 0x7C00}, /* 65520: tie, 0x7BFF odd -> Inf */
      {0x47800000u, 0x7C00}, /* 65536 */
      {0x7F7FFFFFu, 0x7C00}, /* FLT_MAX */
      {0x7F800000u, 0x7C00}, /* +Inf */
      {0xFF800000u, 0xFC00}, /* -Inf */
      {0x38800000u, 0x0400}, /* 2^-14, smallest normal */
      {0x387FC000u, 0x03FF}, /* 1023 * 2^-24, largest subnormal */
      {0x387FE000u, 0x0400}, /* 1023.5 * 2^-24: tie, odd -> rounds up to normal */
      {0x33800000u, 0x0001}, /* 2^-24, smallest subnormal */
      {0x33000000u, 0x0000}, /* 2^-25: tie between 0 and 2^-24 -> 0 (even) */
      {0x33000001u, 0x0001}, /* just over 2^-25 */
      {0xB3000000u, 0x8000}, /* -2^-25 -> -0 */
      {0x33C00000u, 0x0002}, /* 3 * 2^-25: tie between 1 and 2 -> 2 */
      {0x34200000u, 0x0002}, /* 5 * 2^-25: tie between 2 and 3 -> 2 */
      {0x32FFFFFFu, 0x0000}, /* under 2^-25 */
      {0x00000001u, 0x0000}, /* binary32 subnormal */
      {0x3F801000u, 0x3C00}, /* 1 + 2^-11: tie -> 1 (even) */
      {0x3F803000u, 0x3C02}, /* 1 + 3*2^-11: tie -> 0x3C02 (even) */
      {0x3F801001u, 0x3C01}, /* just over the tie */
      {0x3EAAAAABu, 0x3555}, /* 1/3 */
      {0x40490FDBu, 0x4248}, /* pi */
  };
  (void)state;
  for (size_t i = 0; i < sizeof enc / sizeof enc[0]; i++) {
    uint16_t got = gw_f32_to_f16(f32_of(enc[i].f32));
    if (got != enc[i].f16)
      fail_msg("f32 %08x -> f16 %04x, want %04x", enc[i].f32, got, enc[i].f16);
  }
  /* NaN stays NaN (never Inf), sign kept, including signalling NaNs whose
   * payload is only in the low bits */
  static const uint32_t nans[] = {0x7FC00000u, 0xFFC00000u, 0x7F800001u,
                                  0x7FBFFFFFu, 0xFF800001u};
  for (size_t i = 0; i < sizeof nans / sizeof nans[0]; i++) {
    uint16_t h = gw_f32_to_f16(f32_of(nans[i]));
    assert_int_equal(h & 0x7C00, 0x7C00);
    assert_int_not_equal(h & 0x03FF, 0);
    assert_int_equal(h >> 15, nans[i] >> 31);
  }
  /* decoding: NaN patterns decode to NaN, Inf to Inf */
  assert_true(isnan(gw_f16_to_f32(0x7E00)));
  assert_true(isnan(gw_f16_to_f32(0x7C01)));
  assert_true(isnan(gw_f16_to_f32(0xFFFF)));
  assert_true(isinf(gw_f16_to_f32(0x7C00)) && gw_f16_to_f32(0x7C00) > 0);
  assert_true(isinf(gw_f16_to_f32(0xFC00)) && gw_f16_to_f32(0xFC00) < 0);
  assert_int_equal(bits_of(gw_f16_to_f32(0x8000)), 0x80000000u);
  assert_int_equal(bits_of(gw_f16_to_f32(0x0001)), 0x33800000u);
  assert_int_equal(bits_of(gw_f16_to_f32(0x03FF)), 0x387FC000u);
  assert_int_equal(bits_of(gw_f16_to_f32(0xFBFF)), 0xC77FE000u);
}

static void bf16_known_bit_patterns(void **state) {
  static const struct {
    uint32_t f32;
    uint16_t bf16;
  } enc[] = {
      {0x00000000u, 0x0000}, {0x80000000u, 0x8000}, /* ±0 */
      {0x3F800000u, 0x3F80},                        /* 1 */
      {0x40490FDBu, 0x4049},                        /* pi */
      {0x3F808000u, 0x3F80}, /* 1 + 2^-8: tie -> even 0x3F80 */
      {0x3F818000u, 0x3F82}, /* 1 + 3*2^-8: tie -> even 0x3F82 */
      {0x3F808001u, 0x3F81}, /* just over the tie */
      {0x3F807FFFu, 0x3F80}, /* just under */
      {0x7F7F8000u, 0x7F80}, /* tie above the largest finite, odd -> Inf */
      {0x7F7F7FFFu, 0x7F7F}, /* rounds down to largest finite */
      {0x7F7FFFFFu, 0x7F80}, /* FLT_MAX rounds to Inf */
      {0xFF7FFFFFu, 0xFF80}, /* -FLT_MAX -> -Inf */
      {0x7F800000u, 0x7F80}, {0xFF800000u, 0xFF80}, /* ±Inf */
      {0x00000001u, 0x0000}, /* smallest subnormal: under half a bf16 ulp */
      {0x00008000u, 0x0000}, /* tie between 0 and 0x0001 -> 0 */
      {0x00018000u, 0x0002}, /* tie between 1 and 2 -> 2 */
      {0x007FFFFFu, 0x0080}, /* largest subnormal rounds up to smallest normal */
  };
  (void)state;
  for (size_t i = 0; i < sizeof enc / sizeof enc[0]; i++) {
    uint16_t got = gw_f32_to_bf16(f32_of(enc[i].f32));
    if (got != enc[i].bf16)
      fail_msg("f32 %08x -> bf16 %04x, want %04x", enc[i].f32, got, enc[i].bf16);
  }
  /* NaN must not round into Inf (0x7F80FFFF + rounding would) */
  static const uint32_t nans[] = {0x7FC00000u, 0x7F800001u, 0x7F80FFFFu,
                                  0xFFFFFFFFu};
  for (size_t i = 0; i < sizeof nans / sizeof nans[0]; i++) {
    uint16_t h = gw_f32_to_bf16(f32_of(nans[i]));
    assert_int_equal(h & 0x7F80, 0x7F80);
    assert_int_not_equal(h & 0x007F, 0);
    assert_int_equal(h >> 15, nans[i] >> 31);
  }
  for (uint32_t h = 0; h < 0x10000; h++)
    assert_int_equal(bits_of(gw_bf16_to_f32((uint16_t)h)), h << 16);
}

/* All 65536 binary16 patterns: both gw_f16_to_f32 and the payload path of
 * gw_proto_read_payload against the ldexp closed form. */
static void f16_decode_exhaustive(void **state) {
  unsigned char *pay = malloc(2 * 65536);
  double *out = malloc(65536 * sizeof *out);
  gw_msg_t m;
  uint32_t k = 0;
  (void)state;
  assert_non_null(pay);
  assert_non_null(out);
  for (uint32_t h = 0; h < 0x10000; h++) {
    double ref = f16_ref((uint16_t)h);
    float got = gw_f16_to_f32((uint16_t)h);
    if (isnan(ref)) {
      assert_true(isnan(got));
      continue;
    }
    if (!same_double(got, ref)) fail_msg("f16 %04x -> %.9g, want %.9g", h, got, ref);
    if (isfinite(ref)) { /* little-endian on the wire, whatever the host */
      pay[2 * k] = (unsigned char)h;
      pay[2 * k + 1] = (unsigned char)(h >> 8);
      k++;
    }
  }
  assert_int_equal(k, 65536 - 2 * 1024); /* exponent 31 excluded */
  memset(&m, 0, sizeof m);
  m.dtype = GW_DTYPE_F16;
  m.k = k;
  m.payload = pay;
  m.payload_len = 2 * (size_t)k;
  assert_int_equal(gw_proto_read_payload(&m, out), 0);
  for (uint32_t i = 0; i < k; i++) {
    uint16_t h = (uint16_t)(pay[2 * i] | pay[2 * i + 1] << 8);
    if (!same_double(out[i], f16_ref(h)))
      fail_msg("read_payload f16 %04x -> %.17g, want %.17g", h, out[i], f16_ref(h));
  }
  free(pay);
  free(out);
}

/* For every pair of adjacent non-negative binary16 values (lo, hi), the
 * midpoint (exact in float64 and in binary32) must round to the even one, and
 * the binary32 values just below and above it to lo and hi; lo itself must
 * round to lo. 65504..65536 is the pair whose upper end is Inf. Negative
 * values are checked by symmetry. */
static void f16_round_to_nearest_even_sweep(void **state) {
  (void)state;
  for (uint32_t h = 0; h < 0x7C00; h++) {
    double lo = f16_ref((uint16_t)h);
    double hi = h + 1 < 0x7C00 ? f16_ref((uint16_t)(h + 1)) : 65536.0;
    double mid = (lo + hi) / 2;
    float fm = (float)mid;
    uint16_t even = (h & 1) ? (uint16_t)(h + 1) : (uint16_t)h;
    assert_true((double)fm == mid);
    for (int neg = 0; neg < 2; neg++) {
      uint16_t s = neg ? 0x8000 : 0;
      float sg = neg ? -1.0f : 1.0f;
      if (gw_f32_to_f16(sg * (float)lo) != (uint16_t)(h | s))
        fail_msg("f16 %04x: exact value does not round to itself", h);
      if (gw_f32_to_f16(sg * fm) != (uint16_t)(even | s))
        fail_msg("f16 %04x: tie %.9g -> %04x, want %04x", h, sg * fm,
                 gw_f32_to_f16(sg * fm), even | s);
      if (gw_f32_to_f16(sg * nextafterf(fm, 0.0f)) != (uint16_t)(h | s))
        fail_msg("f16 %04x: below the tie", h);
      if (gw_f32_to_f16(sg * nextafterf(fm, INFINITY)) != (uint16_t)((h + 1) | s))
        fail_msg("f16 %04x: above the tie", h);
    }
  }
}

/* Same for bfloat16, over all 32639 pairs of adjacent non-negative values. */
static void bf16_round_to_nearest_even_sweep(void **state) {
  (void)state;
  for (uint32_t h = 0; h < 0x7F80; h++) {
    double lo = f32_of(h << 16);
    double hi = h + 1 < 0x7F80 ? (double)f32_of((h + 1) << 16) : ldexp(1.0, 128);
    double mid = (lo + hi) / 2;
    float fm = (float)mid;
    uint16_t even = (h & 1) ? (uint16_t)(h + 1) : (uint16_t)h;
    assert_true((double)fm == mid); /* last pair: 2^128 - 2^119, then Inf */
    for (int neg = 0; neg < 2; neg++) {
      uint16_t s = neg ? 0x8000 : 0;
      float sg = neg ? -1.0f : 1.0f;
      assert_int_equal(gw_f32_to_bf16(sg * (float)lo), h | s);
      assert_int_equal(gw_f32_to_bf16(sg * fm), even | s);
      assert_int_equal(gw_f32_to_bf16(sg * nextafterf(fm, 0.0f)), h | s);
      assert_int_equal(gw_f32_to_bf16(sg * nextafterf(fm, INFINITY)), (h + 1) | s);
    }
  }
}

/* frames.json "conversions": Python's struct 'e' and an integer RNE (checked
 * against torch when the generator ran) for ~500 binary32 inputs. */
static void conversions_match_python(void **state) {
  const cJSON *e;
  cJSON_ArrayForEach(e, list(state, "conversions")) {
    uint32_t f = (uint32_t)strtoul(str(e, "f32"), NULL, 16);
    uint16_t h = (uint16_t)strtoul(str(e, "f16"), NULL, 16);
    uint16_t b = (uint16_t)strtoul(str(e, "bf16"), NULL, 16);
    if (gw_f32_to_f16(f32_of(f)) != h)
      fail_msg("f32 %08x -> f16 %04x, python %04x", f, gw_f32_to_f16(f32_of(f)), h);
    if (gw_f32_to_bf16(f32_of(f)) != b)
      fail_msg("f32 %08x -> bf16 %04x, python %04x", f, gw_f32_to_bf16(f32_of(f)), b);
    if ((h & 0x7C00) != 0x7C00)
      assert_true(same_double(gw_f16_to_f32(h), f16_ref(h)));
  }
}

/* ---- read_payload -------------------------------------------------------- */

/* k = 37 covers two full vector blocks and a scalar tail. */
#define PK 37

static void put_elem(unsigned char *p, int dtype, uint32_t i, uint32_t bits) {
  size_t w = gw_dtype_size(dtype);
  for (size_t b = 0; b < w; b++) p[i * w + b] = (unsigned char)(bits >> (8 * b));
}

static void read_payload_rejects_nonfinite_each_dtype(void **state) {
  static const struct {
    int dtype;
    uint32_t one, bad[4], big, tiny;
  } dt[] = {
      {GW_DTYPE_F32, 0x3F800000u,
       {0x7F800000u, 0xFF800000u, 0x7FC00000u, 0x7F800001u}, 0x7F7FFFFFu, 1},
      {GW_DTYPE_F16, 0x3C00u, {0x7C00u, 0xFC00u, 0x7E00u, 0xFC01u}, 0x7BFFu, 1},
      {GW_DTYPE_BF16, 0x3F80u, {0x7F80u, 0xFF80u, 0x7FC0u, 0xFF81u}, 0x7F7Fu, 1},
  };
  static const uint32_t pos[] = {0, 1, 15, 16, 31, 32, 36};
  unsigned char pay[PK * 4];
  double out[PK];
  gw_msg_t m;
  (void)state;
  for (size_t d = 0; d < 3; d++) {
    memset(&m, 0, sizeof m);
    m.dtype = (uint8_t)dt[d].dtype;
    m.k = PK;
    m.payload = pay;
    m.payload_len = PK * gw_dtype_size(dt[d].dtype);
    /* all finite, with the largest finite and the smallest subnormal */
    for (uint32_t i = 0; i < PK; i++) put_elem(pay, dt[d].dtype, i, dt[d].one);
    put_elem(pay, dt[d].dtype, 3, dt[d].big);
    put_elem(pay, dt[d].dtype, 33, dt[d].tiny);
    assert_int_equal(gw_proto_read_payload(&m, out), 0);
    for (uint32_t i = 0; i < PK; i++) {
      double want = i == 3 ? (d == 0 ? FLT_MAX : d == 1 ? 65504.0 : ldexp(255, 120))
                  : i == 33 ? (d == 0 ? ldexp(1, -149) : d == 1 ? ldexp(1, -24) : ldexp(1, -133))
                            : 1.0;
      if (out[i] != want) fail_msg("dtype %d: out[%u] = %.17g, want %.17g",
                                   dt[d].dtype, i, out[i], want);
    }
    for (size_t b = 0; b < 4; b++) {
      for (size_t p = 0; p < sizeof pos / sizeof pos[0]; p++) {
        for (uint32_t i = 0; i < PK; i++) put_elem(pay, dt[d].dtype, i, dt[d].one);
        put_elem(pay, dt[d].dtype, pos[p], dt[d].bad[b]);
        if (gw_proto_read_payload(&m, out) != GW_ENONFINITE)
          fail_msg("dtype %d: %x at %u accepted", dt[d].dtype, dt[d].bad[b], pos[p]);
      }
    }
  }
}

/* Random finite binary32 patterns widen exactly, also from an odd address. */
static void read_payload_f32_and_bf16_exact(void **state) {
  enum { K = 1000 };
  unsigned char *buf = malloc(4 * K + 1), *pay = buf + 1;
  double *out = malloc(K * sizeof *out);
  uint32_t x = 12345u, *want = malloc(K * sizeof *want);
  gw_msg_t m;
  (void)state;
  assert_non_null(buf);
  assert_non_null(out);
  assert_non_null(want);
  for (uint32_t i = 0; i < K; i++) {
    do { /* xorshift32 */
      x ^= x << 13;
      x ^= x >> 17;
      x ^= x << 5;
    } while ((x & 0x7F800000u) == 0x7F800000u);
    want[i] = x;
    put_elem(pay, GW_DTYPE_F32, i, x);
  }
  memset(&m, 0, sizeof m);
  m.dtype = GW_DTYPE_F32;
  m.k = K;
  m.payload = pay;
  m.payload_len = 4 * K;
  assert_int_equal(gw_proto_read_payload(&m, out), 0);
  for (uint32_t i = 0; i < K; i++)
    assert_true(same_double(out[i], (double)f32_of(want[i])));
  for (uint32_t i = 0; i < K; i++) put_elem(pay, GW_DTYPE_BF16, i, want[i] >> 16);
  m.dtype = GW_DTYPE_BF16;
  m.payload_len = 2 * K;
  assert_int_equal(gw_proto_read_payload(&m, out), 0);
  for (uint32_t i = 0; i < K; i++)
    assert_true(same_double(out[i], (double)f32_of(want[i] & 0xFFFF0000u)));
  free(buf);
  free(out);
  free(want);
}

/* ---- encoder ------------------------------------------------------------- */

static void valid_msg(gw_msg_t *m, const void *payload) {
  memset(m, 0, sizeof *m);
  m->run = "r1";
  m->run_len = 2;
  m->tag = "all";
  m->tag_len = 3;
  m->version = GW_PROTO_VERSION;
  m->incarnation = UINT64_C(0xC0FFEE0000000001);
  m->dtype = GW_DTYPE_F32;
  m->kind = GW_SKETCH_SJLT;
  m->s = 2;
  m->k = 2;
  m->step = 5;
  m->payload = payload;
  m->payload_len = 8;
}

static void encoder_validates_like_decoder(void **state) {
  static const float pay[2] = {1.0f, 2.0f};
  unsigned char buf[GW_PROTO_HEADER_SIZE + 8];
  char topic[GW_PROTO_TOPIC_MAX + 1];
  gw_msg_t m, d;
  (void)state;

  valid_msg(&m, pay);
  assert_int_equal(gw_proto_encode_body(&m, buf, sizeof buf), (int)sizeof buf);
  assert_int_equal(gw_proto_encode_topic(&m, topic, sizeof topic), 10);
  assert_string_equal(topic, "gw1/r1/all");
#define BAD(field, value, code)                                                \
  do {                                                                         \
    valid_msg(&m, pay);                                                        \
    m.field = value;                                                           \
    assert_int_equal(gw_proto_encode_body(&m, buf, sizeof buf), code);         \
  } while (0)
  BAD(version, 0, GW_EVERSION);
  BAD(version, 3, GW_EVERSION);
  BAD(version, 255, GW_EVERSION);
  BAD(incarnation, 0, GW_EINCARNATION); /* version 2 needs one */
  BAD(dtype, 0, GW_EDTYPE);
  BAD(dtype, 4, GW_EDTYPE);
  BAD(kind, 0, GW_EKIND);
  BAD(kind, 3, GW_EKIND);
  BAD(s, 0, GW_EKIND);
  BAD(s, 9, GW_EKIND);
  BAD(s, 3, GW_EKIND); /* s > k = 2 */
  BAD(k, 0, GW_EKLIMIT);
  BAD(k, GW_PROTO_K_MAX + 1, GW_EKLIMIT);
  BAD(k, 3, GW_ELENGTH); /* payload_len 8 != 3 * 4 */
  BAD(flags, 8, GW_EFLAGS);
  BAD(flags, 0x80000000u, GW_EFLAGS);
  BAD(step, UINT64_C(1) << 63, GW_EFLAGS);
  BAD(payload_len, 7, GW_ELENGTH);
  BAD(payload, NULL, GW_EINVAL);
  /* version 1 has no room for an incarnation: refusing beats dropping it */
  valid_msg(&m, pay);
  m.version = 1;
  assert_int_equal(gw_proto_encode_body(&m, buf, sizeof buf), GW_EINCARNATION);
  m.incarnation = 0;
  assert_int_equal(gw_proto_encode_body(&m, buf, sizeof buf), (int)sizeof buf - 8);
  assert_int_equal(buf[4], 1);
  assert_int_equal(gw_proto_decode("gw1/r1/all", 10, buf, sizeof buf - 8, 0, &d), 0);
  assert_true(d.version == 1 && d.incarnation == 0 && d.step == 5);
  assert_ptr_equal(d.payload, buf + 64);
  /* and version 2 writes the incarnation little-endian at offset 64 */
  valid_msg(&m, pay);
  assert_int_equal(gw_proto_encode_body(&m, buf, sizeof buf), (int)sizeof buf);
  assert_int_equal(buf[4], 2);
  for (int i = 0; i < 8; i++)
    assert_int_equal(buf[64 + i], (m.incarnation >> (8 * i)) & 0xFF);
  assert_int_equal(gw_proto_decode("gw1/r1/all", 10, buf, sizeof buf, 0, &d), 0);
  assert_true(d.version == 2 && d.incarnation == m.incarnation);
  assert_ptr_equal(d.payload, buf + 72);
  assert_int_equal(gw_proto_encode_body(&m, buf, sizeof buf - 1), -ENOBUFS);
  valid_msg(&m, pay);
  m.kind = GW_SKETCH_GAUSSIAN;
  assert_int_equal(gw_proto_encode_body(&m, buf, sizeof buf), GW_EKIND);
  m.s = 0;
  assert_int_equal(gw_proto_encode_body(&m, buf, sizeof buf), (int)sizeof buf);
  valid_msg(&m, pay);
  m.flags = GW_HAS_LOSS;
  m.loss = NAN;
  assert_int_equal(gw_proto_encode_body(&m, buf, sizeof buf), GW_ENONFINITE);
  m.loss = -INFINITY;
  assert_int_equal(gw_proto_encode_body(&m, buf, sizeof buf), GW_ENONFINITE);
  m.flags = 0; /* absent: ignored, and written as zero */
  m.grad_norm = NAN;
  m.lr = INFINITY;
  assert_int_equal(gw_proto_encode_body(&m, buf, sizeof buf), (int)sizeof buf);
  for (int i = 40; i < 64; i++) assert_int_equal(buf[i], 0);
  assert_int_equal(gw_proto_decode("gw1/r1/all", 10, buf, sizeof buf, 0, &d), 0);
  assert_true(d.grad_norm == 0 && d.loss == 0 && d.lr == 0);
  assert_int_equal(gw_proto_encode_body(&m, buf, sizeof buf - 1), -ENOBUFS);

  /* topic */
  valid_msg(&m, pay);
  m.run = "a/b";
  m.run_len = 3;
  assert_int_equal(gw_proto_encode_topic(&m, topic, sizeof topic), GW_ENAME);
  valid_msg(&m, pay);
  m.tag_len = 0;
  assert_int_equal(gw_proto_encode_topic(&m, topic, sizeof topic), GW_ENAME);
  valid_msg(&m, pay);
  assert_int_equal(gw_proto_encode_topic(&m, topic, 10), -ENOBUFS);
  assert_int_equal(gw_proto_encode_topic(&m, topic, 11), 10);
#undef BAD
}

/* The payload may already sit at buf + 64 (encode in place, memmove). */
static void encoder_in_place(void **state) {
  unsigned char buf[GW_PROTO_HEADER_SIZE + 6];
  static const unsigned char want_pay[6] = {0x00, 0x3C, 0x00, 0xC0, 0x01, 0x00};
  gw_msg_t m, d;
  double out[3];
  (void)state;
  memcpy(buf + GW_PROTO_HEADER_SIZE, want_pay, 6);
  valid_msg(&m, buf + GW_PROTO_HEADER_SIZE);
  m.dtype = GW_DTYPE_F16;
  m.k = 3;
  m.s = 1;
  m.payload_len = 6;
  assert_int_equal(gw_proto_encode_body(&m, buf, sizeof buf), (int)sizeof buf);
  assert_memory_equal(buf + GW_PROTO_HEADER_SIZE, want_pay, 6);
  assert_int_equal(gw_proto_decode("gw1/r1/all", 10, buf, sizeof buf, 0, &d), 0);
  assert_int_equal(gw_proto_read_payload(&d, out), 0);
  assert_true(out[0] == 1.0 && out[1] == -2.0 && out[2] == ldexp(1, -24));

  /* version 1 from the same buffer: the payload moves down to offset 64 */
  memcpy(buf + GW_PROTO_HEADER_SIZE, want_pay, 6);
  m.version = 1;
  m.incarnation = 0;
  m.payload = buf + GW_PROTO_HEADER_SIZE;
  assert_int_equal(gw_proto_encode_body(&m, buf, sizeof buf), (int)sizeof buf - 8);
  assert_memory_equal(buf + GW_PROTO_HEADER_SIZE_V1, want_pay, 6);
  assert_int_equal(gw_proto_decode("gw1/r1/all", 10, buf, sizeof buf - 8, 0, &d), 0);
  assert_int_equal(gw_proto_read_payload(&d, out), 0);
  assert_true(out[0] == 1.0 && out[1] == -2.0 && out[2] == ldexp(1, -24));
}

static void header_sizes(void **state) {
  (void)state;
  assert_int_equal(gw_proto_header_size(1), 64);
  assert_int_equal(gw_proto_header_size(2), 72);
  assert_int_equal(gw_proto_header_size(0), 0);
  assert_int_equal(gw_proto_header_size(3), 0);
  assert_int_equal(gw_proto_header_size(-1), 0);
  assert_int_equal(GW_PROTO_HEADER_SIZE, 72); /* the largest: sizes buffers */
  assert_int_equal(GW_PROTO_VERSION, 2);
}

/* Every v2 golden frame has a v1 twin with the same fields ("v2_" + name):
 * re-encoded as version 1 (incarnation 0) it must give the twin's bytes, and
 * the twin re-encoded as version 2 with the v2 frame's incarnation must give
 * the v2 bytes. So the versions differ by the incarnation and nothing else. */
static void versions_differ_only_by_incarnation(void **state) {
  const cJSON *e2, *e1;
  int pairs = 0;
  cJSON_ArrayForEach(e2, list(state, "golden")) {
    const char *name = str(e2, "name");
    if (strncmp(name, "v2_", 3) != 0) continue;
    cJSON_ArrayForEach(e1, list(state, "golden")) {
      if (strcmp(str(e1, "name"), name + 3) != 0) continue;
      frame_t f1, f2;
      gw_msg_t m1, m2;
      const cJSON *c1 = cJSON_GetObjectItemCaseSensitive(e1, "canonical_body");
      const cJSON *c2 = cJSON_GetObjectItemCaseSensitive(e2, "canonical_body");
      unsigned char *w1, *w2, buf[GW_PROTO_HEADER_SIZE + 4 * 16];
      size_t n1, n2;
      frame_load(e1, &f1);
      frame_load(e2, &f2);
      w1 = unhex(c1 ? c1->valuestring : str(e1, "body"), &n1);
      w2 = unhex(c2 ? c2->valuestring : str(e2, "body"), &n2);
      assert_int_equal(decode(&f1, &m1), 0);
      assert_int_equal(decode(&f2, &m2), 0);
      assert_int_equal(m1.version, 1);
      assert_int_equal(m2.version, 2);
      assert_int_equal(n2, n1 + 8);
      assert_true(n2 <= sizeof buf);
      m2.version = 1;
      m2.incarnation = 0;
      assert_int_equal(gw_proto_encode_body(&m2, buf, sizeof buf), (int)n1);
      if (memcmp(buf, w1, n1) != 0) fail_msg("%s as version 1 differs from its twin", name);
      m1.version = 2;
      decode(&f2, &m2);
      m1.incarnation = m2.incarnation;
      assert_int_equal(gw_proto_encode_body(&m1, buf, sizeof buf), (int)n2);
      if (memcmp(buf, w2, n2) != 0) fail_msg("%s as version 2 differs from its twin", name);
      free(w1);
      free(w2);
      frame_free(&f1);
      frame_free(&f2);
      pairs++;
    }
  }
  assert_true(pairs >= 6);
}

/* max_k: 0 means GW_PROTO_K_MAX, larger values are clamped to it. The k =
 * 65536 frame is built by hand here (f16, zeros). */
static void max_k_semantics(void **state) {
  size_t len = GW_PROTO_HEADER_SIZE_V1 + 2 * (size_t)GW_PROTO_K_MAX;
  unsigned char *b = calloc(1, len);
  gw_msg_t m;
  (void)state;
  assert_non_null(b);
  memcpy(b, "GWSK", 4);
  b[4] = 1;
  b[5] = GW_DTYPE_F16;
  b[6] = GW_SKETCH_GAUSSIAN;
  b[10] = 1; /* k = 0x00010000 = 65536, little-endian */
  assert_int_equal(gw_proto_decode("gw1/a/b", 7, b, len, 0, &m), 0);
  assert_int_equal(m.k, 65536);
  assert_int_equal(gw_proto_decode("gw1/a/b", 7, b, len, 65536, &m), 0);
  assert_int_equal(gw_proto_decode("gw1/a/b", 7, b, len, 65535, &m), GW_EKLIMIT);
  b[8] = 1; /* k = 65537 */
  assert_int_equal(gw_proto_decode("gw1/a/b", 7, b, len, 0, &m), GW_EKLIMIT);
  assert_int_equal(gw_proto_decode("gw1/a/b", 7, b, len, UINT32_MAX, &m), GW_EKLIMIT);
  free(b);

  /* the largest version 2 body: 72 + 65536 * 4 bytes, f32 */
  len = GW_PROTO_HEADER_SIZE_V2 + 4 * (size_t)GW_PROTO_K_MAX;
  assert_int_equal(len, 262216);
  b = calloc(1, len);
  assert_non_null(b);
  memcpy(b, "GWSK", 4);
  b[4] = 2;
  b[5] = GW_DTYPE_F32;
  b[6] = GW_SKETCH_GAUSSIAN;
  b[10] = 1;
  b[71] = 0x80; /* incarnation 2^63 */
  assert_int_equal(gw_proto_decode("gw1/a/b", 7, b, len, 0, &m), 0);
  assert_true(m.k == 65536 && m.incarnation == UINT64_C(1) << 63);
  assert_int_equal(gw_proto_decode("gw1/a/b", 7, b, len - 1, 0, &m), GW_ETRUNC);
  free(b);
}

static void dtype_sizes(void **state) {
  (void)state;
  assert_int_equal(gw_dtype_size(GW_DTYPE_F32), 4);
  assert_int_equal(gw_dtype_size(GW_DTYPE_F16), 2);
  assert_int_equal(gw_dtype_size(GW_DTYPE_BF16), 2);
  assert_int_equal(gw_dtype_size(0), 0);
  assert_int_equal(gw_dtype_size(4), 0);
  assert_int_equal(gw_dtype_size(-1), 0);
}

/* PROTOCOL.md shows the golden frames marked in_protocol_md byte for byte,
 * and names every reason the decoder can return. */
static void protocol_md_matches_vectors(void **state) {
  char *doc = slurp("proto/PROTOCOL.md", NULL), *flat, *w;
  const cJSON *e;
  char key[32];
  int shown = 0;
  flat = malloc(strlen(doc) + 1);
  assert_non_null(flat);
  w = flat;
  for (const char *r = doc; *r; r++)
    if (*r != ' ' && *r != '\n') *w++ = *r;
  *w = '\0';
  cJSON_ArrayForEach(e, list(state, "golden")) {
    if (!cJSON_IsTrue(get(e, "in_protocol_md"))) continue;
    if (strstr(flat, str(e, "body")) == NULL)
      fail_msg("PROTOCOL.md does not show golden frame %s", str(e, "name"));
    shown++;
  }
  assert_true(shown >= 3);
  for (size_t i = 0; i < N_REASONS; i++) {
    snprintf(key, sizeof key, "`%s`", decoder_reasons[i]);
    if (strstr(doc, key) == NULL) fail_msg("PROTOCOL.md never names %s", key);
  }
  free(flat);
  free(doc);
}

/* ---- run metadata frames (PROTOCOL.md section 11) ----
 * proto/vectors/meta_frames.json comes from gen_meta.py, an encoder written
 * from the spec with struct and json. The frame codec checks the topic, the
 * header and the document's length; the document's own rules are the
 * daemon's (test_runmeta.c), so a malformed frame whose reason concerns the
 * document must pass the frame codec here. */
static int frame_reason(const char *r) {
  static const char *const doc_reasons[] = {"bad_meta", "meta_too_large"};
  for (size_t i = 0; i < 2; i++)
    if (strcmp(r, doc_reasons[i]) == 0) return 0;
  return 1;
}

static void meta_golden_frames(void **state) {
  (void)state;
  char *text = slurp("proto/vectors/meta_frames.json", NULL);
  cJSON *root = cJSON_Parse(text), *e;
  free(text);
  assert_non_null(root);
  int n = 0;
  cJSON_ArrayForEach(e, get(root, "golden")) {
    size_t tl, bl;
    unsigned char *t = unhex(str(e, "topic_hex"), &tl), *b = unhex(str(e, "body"), &bl);
    const cJSON *fl = get(e, "fields");
    gw_meta_msg_t m;
    assert_true(gw_meta_is_topic(t, tl));
    assert_int_equal(gw_meta_decode(t, tl, b, bl, &m), 0);
    assert_int_equal(m.run_len, strlen(str(fl, "run")));
    assert_memory_equal(m.run, str(fl, "run"), m.run_len);
    assert_int_equal(m.version, 1);
    assert_true(m.incarnation == strtoull(str(fl, "incarnation"), NULL, 10));
    assert_true(m.wall_ns == strtoll(str(fl, "wall_ns"), NULL, 10));
    assert_ptr_equal(m.doc, (const char *)b + GW_META_HEADER_SIZE);
    cJSON *doc = cJSON_ParseWithLength(m.doc, m.doc_len);
    assert_non_null(doc);
    assert_true(cJSON_Compare(doc, get(e, "doc"), 1));
    cJSON_Delete(doc);
    /* the encoder writes the same bytes from the fields */
    char topic[GW_PROTO_TOPIC_MAX + 1];
    unsigned char *out = malloc(bl);
    assert_int_equal(gw_meta_encode_topic(m.run, m.run_len, topic, sizeof topic), (int)tl);
    assert_memory_equal(topic, t, tl);
    assert_int_equal(gw_meta_encode_body(m.incarnation, m.wall_ns, m.doc, m.doc_len, out, bl),
                     (int)bl);
    assert_memory_equal(out, b, bl);
    assert_int_equal(gw_meta_encode_body(m.incarnation, m.wall_ns, m.doc, m.doc_len, out, bl - 1),
                     -ENOBUFS);
    /* every shorter body is refused, never read past (exact-size copies) */
    for (size_t cut = 0; cut < GW_META_HEADER_SIZE + 1; cut++) {
      unsigned char *c = dup_exact(b, cut);
      int rc = gw_meta_decode(t, tl, c, cut, &m);
      assert_int_equal(rc, cut < GW_META_HEADER_SIZE ? GW_ETRUNC : GW_EMETA);
      free(c);
    }
    free(out);
    free(t);
    free(b);
    n++;
  }
  assert_true(n >= 3);
  n = 0;
  cJSON_ArrayForEach(e, get(root, "malformed")) {
    size_t tl, bl;
    unsigned char *t = unhex(str(e, "topic_hex"), &tl), *b = unhex(str(e, "body"), &bl);
    gw_meta_msg_t m;
    const char *want = str(e, "reason");
    int rc = gw_meta_decode(t, tl, b, bl, &m);
    if (frame_reason(want)) {
      if (strcmp(gw_err_reason(rc), want) != 0)
        fail_msg("%s: got %s, want %s", str(e, "name"), gw_err_reason(rc), want);
      n++;
    } else if (strcmp(str(e, "name"), "empty_doc") != 0) {
      if (rc != 0) fail_msg("%s: frame codec said %s", str(e, "name"), gw_err_reason(rc));
    }
    free(t);
    free(b);
  }
  assert_true(n >= 7);
  cJSON_Delete(root);
}

/* Limits the vectors leave out (a 64 KiB document), and the encoder's refusals. */
static void meta_limits(void **state) {
  (void)state;
  size_t big = GW_META_HEADER_SIZE + GW_META_DOC_MAX + 1;
  unsigned char *b = calloc(1, big);
  char topic[GW_PROTO_TOPIC_MAX + 1];
  gw_meta_msg_t m;
  assert_non_null(b);
  memset(b + GW_META_HEADER_SIZE, ' ', GW_META_DOC_MAX + 1);
  assert_int_equal(gw_meta_encode_body(1, 0, (char *)b + GW_META_HEADER_SIZE, GW_META_DOC_MAX, b,
                                       big), (int)(big - 1));
  assert_int_equal(gw_meta_encode_topic("r", 1, topic, sizeof topic), 11);
  assert_int_equal(gw_meta_decode(topic, 11, b, big - 1, &m), 0);
  assert_int_equal(m.doc_len, GW_META_DOC_MAX);
  assert_int_equal(gw_meta_decode(topic, 11, b, big, &m), GW_EMETASIZE);
  assert_int_equal(gw_meta_encode_body(1, 0, "x", GW_META_DOC_MAX + 1, b, big), GW_EMETASIZE);
  assert_int_equal(gw_meta_encode_body(0, 0, "{}", 2, b, big), GW_EINCARNATION);
  assert_int_equal(gw_meta_encode_body(1, 0, "", 0, b, big), GW_EMETA);
  assert_int_equal(gw_meta_encode_topic("a/b", 3, topic, sizeof topic), GW_ENAME);
  assert_int_equal(gw_meta_encode_topic("r", 1, topic, 11), -ENOBUFS);
  /* the topic test: exactly gw1/<run>/@meta */
  assert_true(gw_meta_is_topic("gw1/r/@meta", 11));
  assert_false(gw_meta_is_topic("gw1/r/@meta/x", 13));
  assert_false(gw_meta_is_topic("gw1/r/x/@meta", 13));
  assert_false(gw_meta_is_topic("gw1/r/@metax", 12));
  assert_false(gw_meta_is_topic("gw2/r/@meta", 11));
  /* an old-style decoder sees a bad tag, so old daemons reject it cleanly */
  gw_msg_t pm;
  assert_int_equal(gw_proto_decode("gw1/r/@meta", 11, b, 100, 0, &pm), GW_ENAME);
  free(b);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(meta_golden_frames),
      cmocka_unit_test(meta_limits),
      cmocka_unit_test(golden_frames_decode),
      cmocka_unit_test(golden_frames_reencode_byte_for_byte),
      cmocka_unit_test(golden_frames_unaligned),
      cmocka_unit_test(malformed_frames_exact_reason),
      cmocka_unit_test(payload_rejected_frames),
      cmocka_unit_test(malformed_frames_cover_every_reason),
      cmocka_unit_test(truncation_at_every_length),
      cmocka_unit_test(names_at_128_and_129),
      cmocka_unit_test(every_character_class),
      cmocka_unit_test(f16_known_bit_patterns),
      cmocka_unit_test(bf16_known_bit_patterns),
      cmocka_unit_test(f16_decode_exhaustive),
      cmocka_unit_test(f16_round_to_nearest_even_sweep),
      cmocka_unit_test(bf16_round_to_nearest_even_sweep),
      cmocka_unit_test(conversions_match_python),
      cmocka_unit_test(read_payload_rejects_nonfinite_each_dtype),
      cmocka_unit_test(read_payload_f32_and_bf16_exact),
      cmocka_unit_test(encoder_validates_like_decoder),
      cmocka_unit_test(encoder_in_place),
      cmocka_unit_test(max_k_semantics),
      cmocka_unit_test(header_sizes),
      cmocka_unit_test(versions_differ_only_by_incarnation),
      cmocka_unit_test(dtype_sizes),
      cmocka_unit_test(protocol_md_matches_vectors),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
