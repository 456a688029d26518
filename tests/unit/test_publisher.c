/* test_publisher.c — libgradwatch's publisher (client/publisher.c) against a
 * real ZeroMQ SUB (or PULL) socket bound on loopback in the test.
 *
 * References are independent of the code under test:
 *  - the body layout of proto/gw_proto.h, read back here byte by byte at its
 *    fixed offsets (little-endian), and gw_proto_decode for the full check;
 *  - f16/bf16 payloads: values chosen so the expected binary16/bfloat16
 *    result is a closed form (exact values, and round-to-nearest-even ties
 *    1 + 2^-11 -> 1, 1 + 3*2^-11 -> 1 + 2^-9 for f16; 1 + 2^-8 -> 1,
 *    1 + 3*2^-8 -> 1 + 2^-6 for bf16);
 *  - grad_norm: 3-4-5 exactly, and a long double sum for a random gradient;
 *  - the sketch of publish(): gw_sketch_f32, the library's documented
 *    one-shot sketch, and for d = 1 with s = 1 the closed form (one nonzero);
 *  - never blocking: wall-clock bound, and sent + dropped == published, and a
 *    subscriber that drains its queue receives exactly `sent` messages in
 *    step order;
 *  - incarnations: the u64 at offset 64 of every body, the same for every
 *    message of one publisher and different between publishers;
 *  - connected: a real SUB's (un)subscriptions and a real PULL's
 *    connection and closing; the no-daemon warning with its delay cut to
 *    200 ms through GW_PUBLISHER_WARN_MS, counted by the callback;
 *  - the worker: steps in flight from their own copies, in order, and the
 *    scheduling class its thread waits in.
 */
#define _GNU_SOURCE /* SCHED_IDLE */
#include <errno.h>
#include <math.h>
#include <dirent.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include <zmq.h>

#include "gradwatch.h"
#include "gw_meta.h"

#define RECV_TIMEOUT_MS 5000

/* ---- fixtures -------------------------------------------------------------- */

typedef struct peer_s {
  void *ctx;
  void *sock;
  char endpoint[128]; /* where the publisher connects */
} peer_t;

/* A SUB (subscribed to `sub`, NULL for none) or PULL socket bound to an
 * ephemeral loopback port. curve_secret: make it a CURVE server. */
static void peer_open(peer_t *p, int type, const char *sub, const char *curve_secret) {
  size_t len = sizeof p->endpoint;
  int t = RECV_TIMEOUT_MS;
  p->ctx = zmq_ctx_new();
  assert_non_null(p->ctx);
  p->sock = zmq_socket(p->ctx, type);
  assert_non_null(p->sock);
  assert_int_equal(zmq_setsockopt(p->sock, ZMQ_RCVTIMEO, &t, sizeof t), 0);
  if (curve_secret) {
    int one = 1;
    assert_int_equal(zmq_setsockopt(p->sock, ZMQ_CURVE_SERVER, &one, sizeof one), 0);
    assert_int_equal(zmq_setsockopt(p->sock, ZMQ_CURVE_SECRETKEY, curve_secret, 40), 0);
  }
  if (sub) assert_int_equal(zmq_setsockopt(p->sock, ZMQ_SUBSCRIBE, sub, strlen(sub)), 0);
  assert_int_equal(zmq_bind(p->sock, "tcp://127.0.0.1:*"), 0);
  assert_int_equal(zmq_getsockopt(p->sock, ZMQ_LAST_ENDPOINT, p->endpoint, &len), 0);
}

static void peer_close(peer_t *p) {
  int zero = 0;
  zmq_setsockopt(p->sock, ZMQ_LINGER, &zero, sizeof zero);
  zmq_close(p->sock);
  zmq_ctx_term(p->ctx);
}

/* One received message: its two frames, exactly sized heap copies. */
typedef struct frames_s {
  unsigned char *topic, *body;
  size_t topic_len, body_len;
} frames_t;

static unsigned char *recv_frame(void *sock, size_t *len, int *more) {
  zmq_msg_t m;
  unsigned char *b;
  assert_int_equal(zmq_msg_init(&m), 0);
  if (zmq_msg_recv(&m, sock, 0) < 0) fail_msg("recv: %s", zmq_strerror(errno));
  *len = zmq_msg_size(&m);
  b = malloc(*len ? *len : 1);
  assert_non_null(b);
  memcpy(b, zmq_msg_data(&m), *len);
  *more = zmq_msg_more(&m);
  zmq_msg_close(&m);
  return b;
}

static void recv_msg(void *sock, frames_t *f) {
  int more;
  f->topic = recv_frame(sock, &f->topic_len, &more);
  assert_true(more);
  f->body = recv_frame(sock, &f->body_len, &more);
  assert_false(more);
}

static void frames_free(frames_t *f) {
  free(f->topic);
  free(f->body);
}

static uint32_t le32(const unsigned char *b) {
  return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

static uint64_t le64(const unsigned char *b) {
  return (uint64_t)le32(b) | (uint64_t)le32(b + 4) << 32;
}

static double f64_at(const unsigned char *b) {
  uint64_t u = le64(b);
  double d;
  memcpy(&d, &u, 8);
  return d;
}

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static double mono_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Wait for the publisher to see peer's subscription. The test is single
 * threaded, and a bound SUB socket attaches an accepted connection (and
 * sends its subscriptions down it) only when its owner calls into it, as a
 * daemon's event loop does all the time: so poke the peer between waits. */
static int wait_sub(peer_t *peer, gw_publisher_t *p, const char *tag, int timeout_ms) {
  double t0 = mono_s();
  for (;;) {
    int events, rc;
    size_t len = sizeof events;
    zmq_getsockopt(peer->sock, ZMQ_EVENTS, &events, &len);
    rc = gw_publisher_wait_subscribed(p, tag, 10);
    if (rc != -ETIMEDOUT || (mono_s() - t0) * 1000 >= timeout_ms) return rc;
  }
}

static gw_publisher_t *pub_open(const char *endpoint, const char *run, uint8_t dtype) {
  gw_publisher_config_t c;
  gw_publisher_t *p = NULL;
  gw_publisher_config_init(&c);
  c.endpoint = endpoint;
  c.run = run;
  c.dtype = dtype;
  c.sketch.k = 8;
  c.sketch.seed = 77;
  c.sketch.s = 2;
  assert_int_equal(gw_publisher_new(&p, &c), 0);
  assert_non_null(p);
  return p;
}

/* ---- frames decode to exactly what was sent ------------------------------- */

static void check_frames(uint8_t dtype, const float *z, const double *want) {
  peer_t sub;
  gw_publisher_t *p;
  frames_t f;
  gw_msg_t m;
  double got[8];
  int64_t t0, t1;
  gw_extras_t x = {.flags = GW_HAS_LOSS | GW_HAS_LR, .loss = 0.6931, .lr = 3e-4};

  peer_open(&sub, ZMQ_SUB, "gw1/", NULL);
  p = pub_open(sub.endpoint, "exp:a_b.c-1", dtype);
  assert_int_equal(wait_sub(&sub, p, NULL, RECV_TIMEOUT_MS), 0);
  t0 = now_ns();
  assert_int_equal(gw_publisher_publish_sketch(p, "model/enc.0/attn:q-proj", 4242, z, &x), 0);
  t1 = now_ns();
  assert_int_equal(gw_publisher_sent(p), 1);
  assert_int_equal(gw_publisher_dropped(p), 0);
  recv_msg(sub.sock, &f);

  /* Layout of gw_proto.h, read independently of the decoder. */
  size_t w = dtype == GW_DTYPE_F32 ? 4 : 2;
  assert_int_equal(f.topic_len, strlen("gw1/exp:a_b.c-1/model/enc.0/attn:q-proj"));
  assert_memory_equal(f.topic, "gw1/exp:a_b.c-1/model/enc.0/attn:q-proj", f.topic_len);
  assert_int_equal(f.body_len, 72 + 8 * w); /* version 2 */
  assert_memory_equal(f.body, "GWSK", 4);
  assert_int_equal(f.body[4], 2);
  assert_int_equal(f.body[5], dtype);
  assert_int_equal(f.body[6], 1); /* sjlt */
  assert_int_equal(f.body[7], 2); /* s */
  assert_int_equal(le32(f.body + 8), 8);
  assert_int_equal(le32(f.body + 12), 0x6);
  assert_int_equal(le64(f.body + 16), 4242);
  assert_true((int64_t)le64(f.body + 24) >= t0 && (int64_t)le64(f.body + 24) <= t1);
  assert_int_equal(le64(f.body + 32), 77);
  assert_true(f64_at(f.body + 40) == 0.0); /* absent grad_norm is zero */
  assert_true(f64_at(f.body + 48) == 0.6931);
  assert_true(f64_at(f.body + 56) == 3e-4);
  assert_true(le64(f.body + 64) == gw_publisher_incarnation(p));
  assert_true(gw_publisher_incarnation(p) != 0);

  assert_int_equal(gw_proto_decode(f.topic, f.topic_len, f.body, f.body_len, 0, &m), 0);
  assert_int_equal(m.run_len, 11);
  assert_memory_equal(m.run, "exp:a_b.c-1", 11);
  assert_int_equal(m.tag_len, strlen("model/enc.0/attn:q-proj"));
  assert_int_equal(m.dtype, dtype);
  assert_int_equal(m.k, 8);
  assert_int_equal(m.step, 4242);
  assert_int_equal(m.seed, 77);
  assert_int_equal(m.flags, GW_HAS_LOSS | GW_HAS_LR);
  assert_int_equal(m.version, 2);
  assert_true(m.incarnation == gw_publisher_incarnation(p));
  assert_ptr_equal(m.payload, f.body + 72);
  assert_int_equal(gw_proto_read_payload(&m, got), 0);
  for (int i = 0; i < 8; i++)
    if (got[i] != want[i]) fail_msg("dtype %d element %d: got %.17g want %.17g", dtype, i, got[i], want[i]);
  frames_free(&f);
  gw_publisher_free(p);
  peer_close(&sub);
}

static void frames_f32(void **state) {
  (void)state;
  const float z[8] = {1.0f, -2.5f, 0.1f, 3.4028235e38f, -1e-40f, 0.0f, -0.0f, 65504.0f};
  double want[8];
  for (int i = 0; i < 8; i++) want[i] = (double)z[i]; /* f32 is exact */
  check_frames(GW_DTYPE_F32, z, want);
}

static void frames_f16(void **state) {
  (void)state;
  const float z[8] = {1.0f, -2.5f, 0x1p-14f, 0x1p-24f, 1.0f + 0x1p-11f, 1.0f + 0x3p-11f,
                      65504.0f, -0.375f};
  const double want[8] = {1.0, -2.5, 0x1p-14, 0x1p-24, 1.0, 1.0 + 0x1p-9, 65504.0, -0.375};
  check_frames(GW_DTYPE_F16, z, want);
}

static void frames_bf16(void **state) {
  (void)state;
  const float z[8] = {1.0f, -2.5f, 0x1p-126f, 0x1.fep127f, 1.0f + 0x1p-8f, 1.0f + 0x3p-8f,
                      -0.375f, 1.0f + 0x1p-9f};
  const double want[8] = {1.0, -2.5, 0x1p-126, 0x1.fep127, 1.0, 1.0 + 0x1p-6, -0.375, 1.0};
  check_frames(GW_DTYPE_BF16, z, want);
}

/* ---- publish(): sketch and norm ------------------------------------------- */

static void publish_gradient_sketches_and_norms(void **state) {
  (void)state;
  enum { D = 1000, K = 64 };
  peer_t sub;
  gw_publisher_config_t c;
  gw_publisher_t *p = NULL;
  frames_t f;
  gw_msg_t m;
  static float g[D], zref[K];
  double got[K];
  long double ss = 0;
  uint64_t x = 12345;

  for (int i = 0; i < D; i++) { /* deterministic LCG values in [-1, 1) */
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    g[i] = (float)((double)(x >> 11) * 0x1p-53 * 2.0 - 1.0);
    ss += (long double)g[i] * g[i];
  }
  peer_open(&sub, ZMQ_SUB, "", NULL);
  gw_publisher_config_init(&c);
  c.endpoint = sub.endpoint;
  c.run = "r1";
  c.sketch.k = K;
  c.sketch.seed = 9;
  for (int kind = GW_SKETCH_SJLT; kind <= GW_SKETCH_GAUSSIAN; kind++) {
    c.sketch.kind = (uint8_t)kind;
    c.sketch.s = kind == GW_SKETCH_SJLT ? 4 : 0;
    assert_int_equal(gw_publisher_new(&p, &c), 0);
    assert_int_equal(wait_sub(&sub, p, "all", RECV_TIMEOUT_MS), 0);
    assert_int_equal(gw_sketch_f32(&c.sketch, g, D, zref), 0);

    assert_int_equal(gw_publisher_publish(p, "all", 1, g, D, NULL), 0);
    recv_msg(sub.sock, &f);
    assert_int_equal(gw_proto_decode(f.topic, f.topic_len, f.body, f.body_len, 0, &m), 0);
    assert_int_equal(m.flags, GW_HAS_GRAD_NORM);
    assert_int_equal(m.kind, kind);
    assert_int_equal(m.s, c.sketch.s);
    assert_true(fabs(m.grad_norm - (double)sqrtl(ss)) <= 1e-12 * (double)sqrtl(ss));
    assert_int_equal(gw_proto_read_payload(&m, got), 0);
    for (int i = 0; i < K; i++) assert_true(got[i] == (double)zref[i]);
    frames_free(&f);

    /* The caller's grad_norm wins; loss rides along. */
    gw_extras_t ex = {.flags = GW_HAS_GRAD_NORM | GW_HAS_LOSS, .grad_norm = 7.5, .loss = 2};
    assert_int_equal(gw_publisher_publish(p, "all", 2, g, D, &ex), 0);
    recv_msg(sub.sock, &f);
    assert_int_equal(gw_proto_decode(f.topic, f.topic_len, f.body, f.body_len, 0, &m), 0);
    assert_int_equal(m.flags, GW_HAS_GRAD_NORM | GW_HAS_LOSS);
    assert_true(m.grad_norm == 7.5 && m.loss == 2.0);
    frames_free(&f);
    gw_publisher_free(p);
    p = NULL;
  }

  /* Closed forms: ‖(3, 4)‖ = 5, and with s = 1 and d = 1 the sketch of g is
   * one nonzero ±g[0] (at a row the hash picks). */
  c.sketch.kind = GW_SKETCH_SJLT;
  c.sketch.s = 1;
  assert_int_equal(gw_publisher_new(&p, &c), 0);
  assert_int_equal(wait_sub(&sub, p, "all", RECV_TIMEOUT_MS), 0);
  const float g34[2] = {3.0f, 4.0f}, g1[1] = {0.75f};
  assert_int_equal(gw_publisher_publish(p, "all", 3, g34, 2, NULL), 0);
  recv_msg(sub.sock, &f);
  assert_int_equal(gw_proto_decode(f.topic, f.topic_len, f.body, f.body_len, 0, &m), 0);
  assert_true(m.grad_norm == 5.0);
  frames_free(&f);
  assert_int_equal(gw_publisher_publish(p, "all", 4, g1, 1, NULL), 0);
  recv_msg(sub.sock, &f);
  assert_int_equal(gw_proto_decode(f.topic, f.topic_len, f.body, f.body_len, 0, &m), 0);
  assert_true(m.grad_norm == 0.75);
  assert_int_equal(gw_proto_read_payload(&m, got), 0);
  int nonzero = 0;
  for (int i = 0; i < K; i++)
    if (got[i] != 0) {
      nonzero++;
      assert_true(fabs(got[i]) == 0.75);
    }
  assert_int_equal(nonzero, 1);
  frames_free(&f);
  /* An empty gradient: zero sketch, zero norm. */
  assert_int_equal(gw_publisher_publish(p, "all", 5, NULL, 0, NULL), 0);
  recv_msg(sub.sock, &f);
  assert_int_equal(gw_proto_decode(f.topic, f.topic_len, f.body, f.body_len, 0, &m), 0);
  assert_true(m.grad_norm == 0.0);
  assert_int_equal(gw_proto_read_payload(&m, got), 0);
  for (int i = 0; i < K; i++) assert_true(got[i] == 0.0);
  frames_free(&f);
  gw_publisher_free(p);
  peer_close(&sub);
}

/* ---- bad names and parameters ----------------------------------------------- */

static int new_rc(gw_publisher_config_t *c) {
  gw_publisher_t *p = (gw_publisher_t *)&p; /* must come back NULL */
  int rc = gw_publisher_new(&p, c);
  if (rc == 0) {
    gw_publisher_free(p);
  } else {
    assert_null(p);
  }
  return rc;
}

static void bad_config(void **state) {
  (void)state;
  gw_publisher_config_t c;
  char long_run[130], pk[41], sk[41];
  memset(long_run, 'a', 129);
  long_run[129] = '\0';
#define RESET()                         \
  do {                                  \
    gw_publisher_config_init(&c);       \
    c.endpoint = "tcp://127.0.0.1:9"; \
    c.run = "ok";                       \
  } while (0)
  RESET();
  assert_int_equal(new_rc(&c), 0);
  assert_int_equal(gw_publisher_new(NULL, &c), GW_EINVAL);
  assert_int_equal(new_rc(NULL), GW_EINVAL);
  RESET(); c.endpoint = NULL; assert_int_equal(new_rc(&c), GW_EINVAL);
  RESET(); c.run = NULL; assert_int_equal(new_rc(&c), GW_EINVAL);
  RESET(); c.run = ""; assert_int_equal(new_rc(&c), GW_ENAME);
  RESET(); c.run = "a/b"; assert_int_equal(new_rc(&c), GW_ENAME);
  RESET(); c.run = "a b"; assert_int_equal(new_rc(&c), GW_ENAME);
  RESET(); c.run = long_run; assert_int_equal(new_rc(&c), GW_ENAME);
  long_run[128] = '\0'; /* exactly 128: fine */
  RESET(); c.run = long_run; assert_int_equal(new_rc(&c), 0);
  RESET(); c.sketch.k = 0; assert_int_equal(new_rc(&c), GW_EKLIMIT);
  RESET(); c.sketch.k = GW_PROTO_K_MAX + 1; assert_int_equal(new_rc(&c), GW_EKLIMIT);
  RESET(); c.sketch.k = GW_PROTO_K_MAX; assert_int_equal(new_rc(&c), 0);
  RESET(); c.sketch.kind = 3; assert_int_equal(new_rc(&c), GW_EKIND);
  RESET(); c.sketch.s = 0; assert_int_equal(new_rc(&c), GW_EKIND);
  RESET(); c.sketch.s = 9; assert_int_equal(new_rc(&c), GW_EKIND);
  RESET(); c.sketch.k = 2; c.sketch.s = 3; assert_int_equal(new_rc(&c), GW_EKIND);
  RESET(); c.sketch.kind = GW_SKETCH_GAUSSIAN; assert_int_equal(new_rc(&c), GW_EKIND);
  RESET(); c.sketch.kind = GW_SKETCH_GAUSSIAN; c.sketch.s = 0; assert_int_equal(new_rc(&c), 0);
  RESET(); c.dtype = 0; assert_int_equal(new_rc(&c), GW_EDTYPE);
  RESET(); c.dtype = 4; assert_int_equal(new_rc(&c), GW_EDTYPE);
  RESET(); c.socket = 2; assert_int_equal(new_rc(&c), GW_EINVAL);
  RESET(); c.sndhwm = 0; assert_int_equal(new_rc(&c), GW_EINVAL);
  RESET(); c.linger_ms = -2; assert_int_equal(new_rc(&c), GW_EINVAL);
  RESET(); c.endpoint = "not an endpoint"; assert_int_equal(new_rc(&c), -EINVAL);
  RESET(); c.endpoint = "bogus://x"; assert_int_equal(new_rc(&c), -EPROTONOSUPPORT);
  RESET(); c.socket = GW_PUBLISHER_PUSH; c.endpoint = "bogus://x";
  assert_int_equal(new_rc(&c), -EPROTONOSUPPORT); /* monitor cleaned up too (ASan) */
  RESET(); c.wire_version = 3; assert_int_equal(new_rc(&c), GW_EVERSION);
  RESET(); c.wire_version = -1; assert_int_equal(new_rc(&c), GW_EVERSION);
  RESET(); c.wire_version = 1; c.incarnation = 5; assert_int_equal(new_rc(&c), GW_EINCARNATION);
  RESET(); c.wire_version = 1; assert_int_equal(new_rc(&c), 0);
  RESET(); c.wire_version = 2; c.incarnation = 5; assert_int_equal(new_rc(&c), 0);
  /* CURVE: all three or none, each 40 characters of valid Z85. */
  assert_int_equal(zmq_curve_keypair(pk, sk), 0);
  RESET(); c.curve_server_key = pk; assert_int_equal(new_rc(&c), GW_EINVAL);
  RESET(); c.curve_server_key = pk; c.curve_public_key = pk;
  assert_int_equal(new_rc(&c), GW_EINVAL);
  RESET(); c.curve_server_key = pk; c.curve_public_key = pk; c.curve_secret_key = sk;
  assert_int_equal(new_rc(&c), 0);
  RESET(); c.curve_server_key = "short"; c.curve_public_key = pk; c.curve_secret_key = sk;
  assert_int_equal(new_rc(&c), GW_EINVAL);
  char badz[41];
  memcpy(badz, pk, 41);
  badz[3] = '"'; /* not in the Z85 alphabet */
  RESET(); c.curve_server_key = pk; c.curve_public_key = badz; c.curve_secret_key = sk;
  assert_int_equal(new_rc(&c), GW_EINVAL);
#undef RESET
}

static void bad_publish_arguments(void **state) {
  (void)state;
  peer_t sub;
  gw_publisher_t *p;
  float z[8] = {1, 2, 3, 4, 5, 6, 7, 8}, g[3] = {1, 2, 3};
  char long_tag[130];
  memset(long_tag, 'x', 129);
  long_tag[129] = '\0';

  peer_open(&sub, ZMQ_SUB, "", NULL);
  p = pub_open(sub.endpoint, "r", GW_DTYPE_F16);
  assert_int_equal(wait_sub(&sub, p, NULL, RECV_TIMEOUT_MS), 0);
  assert_int_equal(gw_publisher_publish_sketch(NULL, "t", 1, z, NULL), GW_EINVAL);
  assert_int_equal(gw_publisher_publish_sketch(p, NULL, 1, z, NULL), GW_EINVAL);
  assert_int_equal(gw_publisher_publish_sketch(p, "t", 1, NULL, NULL), GW_EINVAL);
  assert_int_equal(gw_publisher_publish_sketch(p, "", 1, z, NULL), GW_ENAME);
  assert_int_equal(gw_publisher_publish_sketch(p, "a b", 1, z, NULL), GW_ENAME);
  assert_int_equal(gw_publisher_publish_sketch(p, "é", 1, z, NULL), GW_ENAME);
  assert_int_equal(gw_publisher_publish_sketch(p, long_tag, 1, z, NULL), GW_ENAME);
  assert_int_equal(gw_publisher_publish_sketch(p, "t", 1ull << 63, z, NULL), GW_EINVAL);
  gw_extras_t x = {.flags = 0x8};
  assert_int_equal(gw_publisher_publish_sketch(p, "t", 1, z, &x), GW_EINVAL);
  x = (gw_extras_t){.flags = GW_HAS_LOSS, .loss = NAN};
  assert_int_equal(gw_publisher_publish_sketch(p, "t", 1, z, &x), GW_ENONFINITE);
  x = (gw_extras_t){.flags = GW_HAS_LR, .lr = -INFINITY};
  assert_int_equal(gw_publisher_publish_sketch(p, "t", 1, z, &x), GW_ENONFINITE);
  x = (gw_extras_t){.flags = GW_HAS_GRAD_NORM, .grad_norm = INFINITY};
  assert_int_equal(gw_publisher_publish_sketch(p, "t", 1, z, &x), GW_ENONFINITE);
  /* An absent scalar may hold anything. */
  x = (gw_extras_t){.flags = GW_HAS_LOSS, .loss = 1, .lr = NAN};
  z[7] = NAN;
  assert_int_equal(gw_publisher_publish_sketch(p, "t", 1, z, &x), GW_ENONFINITE);
  z[7] = 65520.0f; /* finite in f32, Inf in f16 */
  assert_int_equal(gw_publisher_publish_sketch(p, "t", 1, z, &x), GW_ENONFINITE);
  assert_int_equal(gw_publisher_publish(p, "t", 1, NULL, 3, NULL), GW_EINVAL);
  g[1] = NAN;
  assert_int_equal(gw_publisher_publish(p, "t", 1, g, 3, NULL), GW_ENONFINITE);
  x = (gw_extras_t){.flags = GW_HAS_GRAD_NORM, .grad_norm = 1}; /* norm given: the sketch catches it */
  assert_int_equal(gw_publisher_publish(p, "t", 1, g, 3, &x), GW_ENONFINITE);
  /* None of that was sent or counted; a good message still goes through. */
  assert_int_equal(gw_publisher_sent(p), 0);
  assert_int_equal(gw_publisher_dropped(p), 0);
  z[7] = 65504.0f;
  long_tag[128] = '\0';
  assert_int_equal(gw_publisher_publish_sketch(p, long_tag, 0, z, &x), 0);
  assert_int_equal(gw_publisher_sent(p), 1);
  frames_t f;
  recv_msg(sub.sock, &f);
  assert_int_equal(f.topic_len, 4 + 1 + 1 + 128);
  frames_free(&f);
  assert_int_equal(gw_publisher_wait_subscribed(p, "a b", 0), GW_ENAME);
  gw_publisher_free(p);
  gw_publisher_free(NULL);
  peer_close(&sub);
}

/* ---- never blocking ------------------------------------------------------------ */

enum { FLOOD = 100000 };

static void flood_no_peer(int socket) {
  gw_publisher_config_t c;
  gw_publisher_t *p;
  float z[256];
  double t0, dt;
  for (int i = 0; i < 256; i++) z[i] = (float)i;
  gw_publisher_config_init(&c);
  c.endpoint = "tcp://127.0.0.1:9"; /* discard port: nothing listens */
  c.run = "flood";
  c.socket = socket;
  c.sndhwm = 4;
  c.linger_ms = 0;
  assert_int_equal(gw_publisher_new(&p, &c), 0);
  t0 = mono_s();
  for (int i = 0; i < FLOOD; i++) {
    int rc = gw_publisher_publish_sketch(p, "all", (uint64_t)i, z, NULL);
    assert_true(rc == 0 || rc == GW_PUBLISH_DROPPED);
  }
  dt = mono_s() - t0;
  print_message("%s, no peer: %d publishes in %.3f s, sent %llu dropped %llu\n",
                socket == GW_PUBLISHER_PUB ? "PUB" : "PUSH", FLOOD, dt,
                (unsigned long long)gw_publisher_sent(p),
                (unsigned long long)gw_publisher_dropped(p));
  assert_true(dt < 10.0);
  assert_int_equal(gw_publisher_sent(p) + gw_publisher_dropped(p), FLOOD);
  assert_int_equal(gw_publisher_dropped(p), FLOOD); /* nobody to send to */
  assert_int_equal(gw_publisher_last_error(p), 0);
  assert_int_equal(gw_publisher_wait_subscribed(p, NULL, 20), -ETIMEDOUT);
  gw_publisher_free(p);
}

static void never_blocks_without_peer_pub(void **state) {
  (void)state;
  flood_no_peer(GW_PUBLISHER_PUB);
}

static void never_blocks_without_peer_push(void **state) {
  (void)state;
  flood_no_peer(GW_PUBLISHER_PUSH);
}

/* A subscriber that does not read: its queue fills, publishing goes on, the
 * excess is dropped and counted. Then it drains: it gets exactly the
 * messages counted as sent, in step order (none is lost silently). */
static void never_blocks_with_stalled_subscriber(void **state) {
  (void)state;
  peer_t sub;
  gw_publisher_config_t c;
  gw_publisher_t *p;
  float z[256];
  double t0, dt;
  int hwm = 8, quiet = 1000; /* ms without a message: drained */
  uint64_t last = 0, n = 0;

  for (int i = 0; i < 256; i++) z[i] = (float)i;
  peer_open(&sub, ZMQ_SUB, NULL, NULL);
  assert_int_equal(zmq_setsockopt(sub.sock, ZMQ_RCVHWM, &hwm, sizeof hwm), 0);
  assert_int_equal(zmq_setsockopt(sub.sock, ZMQ_SUBSCRIBE, "gw1/", 4), 0);
  gw_publisher_config_init(&c);
  c.endpoint = sub.endpoint;
  c.run = "flood";
  c.sndhwm = 8;
  c.linger_ms = 0;
  assert_int_equal(gw_publisher_new(&p, &c), 0);
  assert_int_equal(wait_sub(&sub, p, "all", RECV_TIMEOUT_MS), 0);
  t0 = mono_s();
  for (int i = 0; i < FLOOD; i++) {
    int rc = gw_publisher_publish_sketch(p, "all", (uint64_t)i + 1, z, NULL);
    assert_true(rc == 0 || rc == GW_PUBLISH_DROPPED);
  }
  dt = mono_s() - t0;
  uint64_t sent = gw_publisher_sent(p), dropped = gw_publisher_dropped(p);
  print_message("stalled subscriber: %d publishes in %.3f s, sent %llu dropped %llu\n",
                FLOOD, dt, (unsigned long long)sent, (unsigned long long)dropped);
  assert_true(dt < 10.0);
  assert_int_equal(sent + dropped, FLOOD);
  assert_true(sent >= 1 && dropped >= 1);

  assert_int_equal(zmq_setsockopt(sub.sock, ZMQ_RCVTIMEO, &quiet, sizeof quiet), 0);
  for (;;) {
    zmq_msg_t m;
    gw_msg_t d;
    zmq_msg_t b;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, sub.sock, 0) < 0) {
      assert_int_equal(errno, EAGAIN);
      zmq_msg_close(&m);
      break;
    }
    zmq_msg_init(&b);
    assert_true(zmq_msg_more(&m));
    assert_true(zmq_msg_recv(&b, sub.sock, 0) >= 0);
    assert_int_equal(gw_proto_decode(zmq_msg_data(&m), zmq_msg_size(&m), zmq_msg_data(&b),
                                     zmq_msg_size(&b), 0, &d), 0);
    assert_true(d.step > last);
    last = d.step;
    n++;
    zmq_msg_close(&m);
    zmq_msg_close(&b);
  }
  assert_int_equal(n, sent);
  gw_publisher_free(p);
  peer_close(&sub);
}

/* ---- subscriptions, PUSH, CURVE ------------------------------------------------ */

static void follows_subscriptions(void **state) {
  (void)state;
  peer_t sub;
  gw_publisher_t *p;
  float z[8] = {0};
  frames_t f;

  peer_open(&sub, ZMQ_SUB, "gw1/r1/layer1.", NULL);
  p = pub_open(sub.endpoint, "r1", GW_DTYPE_F32);
  assert_int_equal(wait_sub(&sub, p, "layer1.weight", RECV_TIMEOUT_MS), 0);
  assert_int_equal(gw_publisher_wait_subscribed(p, NULL, 0), 0);
  assert_int_equal(wait_sub(&sub, p, "layer2.weight", 50), -ETIMEDOUT);
  assert_int_equal(gw_publisher_publish_sketch(p, "layer2.weight", 1, z, NULL), GW_PUBLISH_DROPPED);
  assert_int_equal(gw_publisher_publish_sketch(p, "layer1.weight", 1, z, NULL), 0);
  recv_msg(sub.sock, &f);
  assert_memory_equal(f.topic, "gw1/r1/layer1.weight", f.topic_len);
  frames_free(&f);
  assert_int_equal(gw_publisher_sent(p), 1);
  assert_int_equal(gw_publisher_dropped(p), 1);

  /* Another run under the same subscriber's filter: nothing matches it. */
  gw_publisher_t *q = pub_open(sub.endpoint, "r2", GW_DTYPE_F32);
  assert_int_equal(wait_sub(&sub, q, NULL, 100), -ETIMEDOUT);
  gw_publisher_free(q);

  /* Unsubscribing stops the sending: drops start once it arrives. */
  assert_int_equal(zmq_setsockopt(sub.sock, ZMQ_UNSUBSCRIBE, "gw1/r1/layer1.", 14), 0);
  double t0 = mono_s();
  uint64_t step = 2;
  while (gw_publisher_publish_sketch(p, "layer1.weight", step++, z, NULL) == 0) {
    assert_true(mono_s() - t0 < 5.0);
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
  }
  assert_int_equal(wait_sub(&sub, p, NULL, 0), -ETIMEDOUT);
  gw_publisher_free(p);
  peer_close(&sub);
}

static void push_to_pull(void **state) {
  (void)state;
  peer_t pull;
  gw_publisher_config_t c;
  gw_publisher_t *p;
  float z[4] = {1, 2, 3, 4};
  frames_t f;
  gw_msg_t m;
  double got[4];

  peer_open(&pull, ZMQ_PULL, NULL, NULL);
  gw_publisher_config_init(&c);
  c.endpoint = pull.endpoint;
  c.run = "r";
  c.socket = GW_PUBLISHER_PUSH;
  c.sketch.k = 4;
  c.sketch.s = 1;
  assert_int_equal(gw_publisher_new(&p, &c), 0);
  assert_int_equal(wait_sub(&pull, p, NULL, RECV_TIMEOUT_MS), 0);
  assert_int_equal(gw_publisher_publish_sketch(p, "all", 5, z, NULL), 0);
  recv_msg(pull.sock, &f);
  assert_int_equal(gw_proto_decode(f.topic, f.topic_len, f.body, f.body_len, 0, &m), 0);
  assert_int_equal(m.step, 5);
  assert_int_equal(gw_proto_read_payload(&m, got), 0);
  for (int i = 0; i < 4; i++) assert_true(got[i] == i + 1);
  frames_free(&f);
  gw_publisher_free(p);
  peer_close(&pull);
}

static void curve(void **state) {
  (void)state;
  char spk[41], ssk[41], cpk[41], csk[41], opk[41], osk[41];
  peer_t sub;
  gw_publisher_config_t c;
  gw_publisher_t *p;
  float z[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  frames_t f;
  gw_msg_t m;

  if (!zmq_has("curve")) skip();
  assert_int_equal(zmq_curve_keypair(spk, ssk), 0);
  assert_int_equal(zmq_curve_keypair(cpk, csk), 0);
  assert_int_equal(zmq_curve_keypair(opk, osk), 0);
  peer_open(&sub, ZMQ_SUB, "gw1/", ssk);
  gw_publisher_config_init(&c);
  c.endpoint = sub.endpoint;
  c.run = "secure";
  c.sketch.k = 8;
  c.curve_server_key = spk;
  c.curve_public_key = cpk;
  c.curve_secret_key = csk;
  assert_int_equal(gw_publisher_new(&p, &c), 0);
  assert_int_equal(wait_sub(&sub, p, NULL, RECV_TIMEOUT_MS), 0);
  assert_int_equal(gw_publisher_publish_sketch(p, "all", 1, z, NULL), 0);
  recv_msg(sub.sock, &f);
  assert_int_equal(gw_proto_decode(f.topic, f.topic_len, f.body, f.body_len, 0, &m), 0);
  assert_int_equal(m.step, 1);
  frames_free(&f);
  gw_publisher_free(p);

  /* The wrong server key: the handshake fails, no subscription ever comes. */
  c.curve_server_key = opk;
  assert_int_equal(gw_publisher_new(&p, &c), 0);
  assert_int_equal(wait_sub(&sub, p, NULL, 300), -ETIMEDOUT);
  assert_int_equal(gw_publisher_publish_sketch(p, "all", 2, z, NULL), GW_PUBLISH_DROPPED);
  gw_publisher_free(p);
  peer_close(&sub);
}

/* ---- incarnations ---------------------------------------------------------------- */

static uint64_t recv_incarnation(void *sock, int want_version, const char *want_topic) {
  frames_t f;
  gw_msg_t m;
  uint64_t inc;
  recv_msg(sock, &f);
  assert_int_equal(f.topic_len, strlen(want_topic));
  assert_memory_equal(f.topic, want_topic, f.topic_len);
  assert_int_equal(gw_proto_decode(f.topic, f.topic_len, f.body, f.body_len, 0, &m), 0);
  assert_int_equal(m.version, want_version);
  assert_int_equal(f.body[4], want_version);
  inc = want_version == 2 ? le64(f.body + 64) : 0;
  assert_true(m.incarnation == inc);
  frames_free(&f);
  return inc;
}

static void incarnation_per_publisher(void **state) {
  (void)state;
  peer_t sub;
  gw_publisher_t *a, *b, *c, *v1;
  gw_publisher_config_t cfg;
  float z[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  uint64_t ia, ib;

  peer_open(&sub, ZMQ_SUB, "gw1/", NULL);
  a = pub_open(sub.endpoint, "same-run", GW_DTYPE_F32);
  b = pub_open(sub.endpoint, "same-run", GW_DTYPE_F32); /* a rerun of it */
  ia = gw_publisher_incarnation(a);
  ib = gw_publisher_incarnation(b);
  assert_true(ia != 0 && ib != 0 && ia != ib);
  assert_int_equal(wait_sub(&sub, a, NULL, RECV_TIMEOUT_MS), 0);
  assert_int_equal(wait_sub(&sub, b, NULL, RECV_TIMEOUT_MS), 0);
  /* every message of a publisher, on every tag, carries its id */
  for (uint64_t step = 1; step <= 3; step++) {
    assert_int_equal(gw_publisher_publish_sketch(a, "all", step, z, NULL), 0);
    assert_true(recv_incarnation(sub.sock, 2, "gw1/same-run/all") == ia);
    assert_int_equal(gw_publisher_publish_sketch(a, "layer/0", step, z, NULL), 0);
    assert_true(recv_incarnation(sub.sock, 2, "gw1/same-run/layer/0") == ia);
    assert_int_equal(gw_publisher_publish_sketch(b, "all", step, z, NULL), 0);
    assert_true(recv_incarnation(sub.sock, 2, "gw1/same-run/all") == ib);
  }
  assert_true(gw_publisher_incarnation(a) == ia); /* fixed for life */

  /* a chosen incarnation (replay), and wire version 1 (none at all) */
  gw_publisher_config_init(&cfg);
  cfg.endpoint = sub.endpoint;
  cfg.run = "chosen";
  cfg.sketch.k = 8;
  cfg.incarnation = UINT64_C(0xFEDCBA9876543210);
  assert_int_equal(gw_publisher_new(&c, &cfg), 0);
  assert_true(gw_publisher_incarnation(c) == cfg.incarnation);
  cfg.run = "old";
  cfg.incarnation = 0;
  cfg.wire_version = 1;
  assert_int_equal(gw_publisher_new(&v1, &cfg), 0);
  assert_true(gw_publisher_incarnation(v1) == 0);
  assert_int_equal(wait_sub(&sub, c, NULL, RECV_TIMEOUT_MS), 0);
  assert_int_equal(wait_sub(&sub, v1, NULL, RECV_TIMEOUT_MS), 0);
  assert_int_equal(gw_publisher_publish_sketch(c, "all", 1, z, NULL), 0);
  assert_true(recv_incarnation(sub.sock, 2, "gw1/chosen/all") == UINT64_C(0xFEDCBA9876543210));
  assert_int_equal(gw_publisher_publish_sketch(v1, "all", 1, z, NULL), 0);
  {
    frames_t f;
    recv_msg(sub.sock, &f);
    assert_int_equal(f.body_len, 64 + 8 * 4); /* the version 1 layout */
    assert_int_equal(f.body[4], 1);
    assert_int_equal(le32(f.body + 64), 0x3F800000u); /* payload[0] = 1.0f at 64 */
    frames_free(&f);
  }
  gw_publisher_free(a);
  gw_publisher_free(b);
  gw_publisher_free(c);
  gw_publisher_free(v1);
  peer_close(&sub);
}

static void sleep_ms(int ms);

/* Run metadata: sent when set (a daemon is there), before the next publish
 * after a daemon subscribes again, decoded by gw_meta_decode to the same
 * document and incarnation; not counted in sent; the refusals. */
static void run_metadata(void **state) {
  (void)state;
  peer_t sub;
  gw_publisher_t *p;
  float z[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  const char *doc = "{\"config\":{\"lr\":0.5},\"tags\":[\"a\"],\"labels\":{\"k\":\"v\"}}";
  frames_t f;
  gw_meta_msg_t m;

  peer_open(&sub, ZMQ_SUB, "gw1/metarun/", NULL);
  p = pub_open(sub.endpoint, "metarun", GW_DTYPE_F32);
  assert_int_equal(wait_sub(&sub, p, NULL, RECV_TIMEOUT_MS), 0);
  assert_int_equal(gw_publisher_set_meta(p, doc), 0);
  assert_int_equal(gw_publisher_meta_sent(p), 1);
  recv_msg(sub.sock, &f);
  assert_int_equal(gw_meta_decode(f.topic, f.topic_len, f.body, f.body_len, &m), 0);
  assert_int_equal(f.topic_len, strlen("gw1/metarun/@meta"));
  assert_memory_equal(f.topic, "gw1/metarun/@meta", f.topic_len);
  assert_true(m.incarnation == gw_publisher_incarnation(p));
  assert_int_equal(m.doc_len, strlen(doc));
  assert_memory_equal(m.doc, doc, m.doc_len);
  assert_true(llabs(m.wall_ns - now_ns()) < 60 * INT64_C(1000000000));
  frames_free(&f);
  /* the next publish is the sketch alone: the metadata is not due again */
  assert_int_equal(gw_publisher_publish_sketch(p, "all", 1, z, NULL), 0);
  recv_msg(sub.sock, &f);
  assert_memory_equal(f.topic, "gw1/metarun/all", f.topic_len);
  frames_free(&f);
  assert_int_equal(gw_publisher_sent(p), 1);
  /* a second subscriber (another daemon) makes it due before the next publish */
  assert_int_equal(zmq_setsockopt(sub.sock, ZMQ_SUBSCRIBE, "gw1/", 4), 0);
  for (int i = 0; i < 200 && gw_publisher_meta_sent(p) == 1; i++) {
    int events;
    size_t len = sizeof events;
    zmq_getsockopt(sub.sock, ZMQ_EVENTS, &events, &len);
    gw_publisher_connected(p);
    assert_int_equal(gw_publisher_publish_sketch(p, "all", 2 + (uint64_t)i, z, NULL), 0);
    sleep_ms(10);
  }
  assert_int_equal(gw_publisher_meta_sent(p), 2);
  /* refusals: empty, too long; NULL stops it */
  char *big = malloc(GW_META_DOC_MAX + 2);
  assert_non_null(big);
  memset(big, ' ', GW_META_DOC_MAX + 1);
  big[GW_META_DOC_MAX + 1] = '\0';
  assert_int_equal(gw_publisher_set_meta(p, big), GW_EMETASIZE);
  free(big);
  assert_int_equal(gw_publisher_set_meta(p, ""), GW_EMETA);
  assert_int_equal(gw_publisher_set_meta(NULL, doc), GW_EINVAL);
  assert_int_equal(gw_publisher_set_meta(p, NULL), 0);
  gw_publisher_free(p);
  peer_close(&sub);
}

/* Many draws: all nonzero and distinct, and every bit of the 64 takes both
 * values (a constant or a 32-bit id would fail). No peer needed. */
static void incarnations_are_random(void **state) {
  (void)state;
  enum { N = 48 };
  gw_publisher_t *p[N];
  uint64_t v[N], ones = 0, zeros = 0;
  void *ctx = zmq_ctx_new();
  gw_publisher_config_t c;
  gw_publisher_config_init(&c);
  c.endpoint = "tcp://127.0.0.1:9";
  c.run = "r";
  c.sketch.k = 4;
  c.linger_ms = 0;
  c.zmq_context = ctx;
  for (int i = 0; i < N; i++) {
    assert_int_equal(gw_publisher_new(&p[i], &c), 0);
    v[i] = gw_publisher_incarnation(p[i]);
    assert_true(v[i] != 0);
    for (int j = 0; j < i; j++) assert_true(v[i] != v[j]);
    ones |= v[i];
    zeros |= ~v[i];
  }
  assert_true(ones == UINT64_MAX && zeros == UINT64_MAX);
  for (int i = 0; i < N; i++) gw_publisher_free(p[i]);
  zmq_ctx_term(ctx);
}

/* ---- connected, and the no-daemon warning ------------------------------------------ */

/* connected() until it equals want or timeout_ms pass, poking the peer (see
 * wait_sub). Returns the last value. */
static int wait_connected(peer_t *peer, gw_publisher_t *p, int want, int timeout_ms) {
  double t0 = mono_s();
  for (;;) {
    int events, c;
    size_t len = sizeof events;
    if (peer) zmq_getsockopt(peer->sock, ZMQ_EVENTS, &events, &len);
    c = gw_publisher_connected(p);
    if (c == want || (mono_s() - t0) * 1000 >= timeout_ms) return c;
    struct timespec ts = {0, 2000000};
    nanosleep(&ts, NULL);
  }
}

static void connected_follows_subscriptions(void **state) {
  (void)state;
  peer_t sub;
  gw_publisher_t *mine, *other;

  peer_open(&sub, ZMQ_SUB, NULL, NULL); /* connected, subscribed to nothing */
  mine = pub_open(sub.endpoint, "mine", GW_DTYPE_F32);
  other = pub_open(sub.endpoint, "other", GW_DTYPE_F32);
  assert_int_equal(gw_publisher_connected(NULL), 0);
  assert_int_equal(wait_connected(&sub, mine, 1, 200), 0);
  /* A daemon subscribed to another run only: "other" sees it, "mine" not. */
  assert_int_equal(zmq_setsockopt(sub.sock, ZMQ_SUBSCRIBE, "gw1/other/", 10), 0);
  assert_int_equal(wait_connected(&sub, other, 1, RECV_TIMEOUT_MS), 1);
  assert_int_equal(wait_connected(&sub, mine, 1, 200), 0);
  /* Subscribed to one tag of the run: that counts. */
  assert_int_equal(zmq_setsockopt(sub.sock, ZMQ_SUBSCRIBE, "gw1/mine/layer1.", 16), 0);
  assert_int_equal(wait_connected(&sub, mine, 1, RECV_TIMEOUT_MS), 1);
  assert_int_equal(gw_publisher_connected(mine), 1); /* and stays */
  /* Unsubscribed: no longer. */
  assert_int_equal(zmq_setsockopt(sub.sock, ZMQ_UNSUBSCRIBE, "gw1/mine/layer1.", 16), 0);
  assert_int_equal(wait_connected(&sub, mine, 0, RECV_TIMEOUT_MS), 0);
  /* The daemon goes away: its subscriptions go with it. */
  assert_int_equal(zmq_setsockopt(sub.sock, ZMQ_SUBSCRIBE, "gw1/", 4), 0);
  assert_int_equal(wait_connected(&sub, mine, 1, RECV_TIMEOUT_MS), 1);
  peer_close(&sub);
  assert_int_equal(wait_connected(NULL, mine, 0, RECV_TIMEOUT_MS), 0);
  assert_int_equal(wait_connected(NULL, other, 0, RECV_TIMEOUT_MS), 0);
  gw_publisher_free(mine);
  gw_publisher_free(other);
}

static void connected_push(void **state) {
  (void)state;
  peer_t pull;
  gw_publisher_config_t c;
  gw_publisher_t *p, *lonely;

  peer_open(&pull, ZMQ_PULL, NULL, NULL);
  gw_publisher_config_init(&c);
  c.endpoint = pull.endpoint;
  c.run = "r";
  c.socket = GW_PUBLISHER_PUSH;
  c.sketch.k = 4;
  c.sketch.s = 1;
  assert_int_equal(gw_publisher_new(&p, &c), 0);
  assert_int_equal(wait_connected(&pull, p, 1, RECV_TIMEOUT_MS), 1);
  peer_close(&pull); /* the peer closes: DISCONNECTED */
  assert_int_equal(wait_connected(NULL, p, 0, RECV_TIMEOUT_MS), 0);
  gw_publisher_free(p);

  c.endpoint = "tcp://127.0.0.1:9"; /* nothing listens there */
  assert_int_equal(gw_publisher_new(&lonely, &c), 0);
  assert_int_equal(wait_connected(NULL, lonely, 1, 200), 0);
  gw_publisher_free(lonely);
}

typedef struct warned_s {
  int calls;
  char msg[512];
} warned_t;

static void on_warn(void *arg, const char *msg) {
  warned_t *w = arg;
  w->calls++;
  snprintf(w->msg, sizeof w->msg, "%s", msg);
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
  nanosleep(&ts, NULL);
}

/* No daemon at all: the callback runs once, at the first publish or
 * connected() call 200 ms or more after the first publish. */
static void warns_once_without_daemon(int socket) {
  gw_publisher_config_t c;
  gw_publisher_t *p;
  warned_t w = {0};
  float z[4] = {1, 2, 3, 4};

  assert_int_equal(setenv("GW_PUBLISHER_WARN_MS", "200", 1), 0);
  gw_publisher_config_init(&c);
  c.endpoint = "tcp://127.0.0.1:9";
  c.run = "lonely-run";
  c.socket = socket;
  c.sketch.k = 4;
  c.linger_ms = 0;
  assert_int_equal(gw_publisher_new(&p, &c), 0);
  assert_int_equal(gw_publisher_set_warn(NULL, on_warn, &w), GW_EINVAL);
  assert_int_equal(gw_publisher_set_warn(p, on_warn, &w), 0);
  sleep_ms(250); /* the clock starts at the first publish, not at creation */
  assert_int_equal(gw_publisher_connected(p), 0);
  assert_int_equal(w.calls, 0);
  assert_int_equal(gw_publisher_publish_sketch(p, "all", 1, z, NULL), GW_PUBLISH_DROPPED);
  assert_int_equal(gw_publisher_connected(p), 0);
  assert_int_equal(w.calls, 0);
  sleep_ms(250);
  assert_int_equal(gw_publisher_publish_sketch(p, "all", 2, z, NULL), GW_PUBLISH_DROPPED);
  assert_int_equal(w.calls, 1);
  assert_non_null(strstr(w.msg, "lonely-run"));
  assert_non_null(strstr(w.msg, "tcp://127.0.0.1:9"));
  for (int i = 0; i < 5; i++) {
    gw_publisher_publish_sketch(p, "all", 3 + (uint64_t)i, z, NULL);
    gw_publisher_connected(p);
  }
  assert_int_equal(w.calls, 1); /* once */
  gw_publisher_free(p);

  /* Checked from connected() alone as well; no callback set: nothing. */
  memset(&w, 0, sizeof w);
  assert_int_equal(gw_publisher_new(&p, &c), 0);
  assert_int_equal(gw_publisher_publish_sketch(p, "all", 1, z, NULL), GW_PUBLISH_DROPPED);
  sleep_ms(250);
  assert_int_equal(gw_publisher_connected(p), 0);
  assert_int_equal(gw_publisher_set_warn(p, on_warn, &w), 0);
  assert_int_equal(gw_publisher_connected(p), 0);
  assert_int_equal(w.calls, 1);
  gw_publisher_free(p);

  /* A bad value falls back to 5 s: no warning after 250 ms. */
  memset(&w, 0, sizeof w);
  assert_int_equal(setenv("GW_PUBLISHER_WARN_MS", "soon", 1), 0);
  assert_int_equal(gw_publisher_new(&p, &c), 0);
  assert_int_equal(gw_publisher_set_warn(p, on_warn, &w), 0);
  gw_publisher_publish_sketch(p, "all", 1, z, NULL);
  sleep_ms(250);
  gw_publisher_publish_sketch(p, "all", 2, z, NULL);
  assert_int_equal(gw_publisher_connected(p), 0);
  assert_int_equal(w.calls, 0);
  gw_publisher_free(p);
  assert_int_equal(unsetenv("GW_PUBLISHER_WARN_MS"), 0);
}

static void warns_once_without_daemon_pub(void **state) {
  (void)state;
  warns_once_without_daemon(GW_PUBLISHER_PUB);
}

static void warns_once_without_daemon_push(void **state) {
  (void)state;
  warns_once_without_daemon(GW_PUBLISHER_PUSH);
}

/* A daemon that is there (PUB and PUSH), or that was there and left: never. */
static void never_warns_with_daemon(void **state) {
  (void)state;
  warned_t w = {0};
  float z[8] = {0};
  peer_t sub, pull;
  gw_publisher_t *p, *q;
  gw_publisher_config_t c;

  assert_int_equal(setenv("GW_PUBLISHER_WARN_MS", "100", 1), 0);
  peer_open(&sub, ZMQ_SUB, "gw1/", NULL);
  peer_open(&pull, ZMQ_PULL, NULL, NULL);
  p = pub_open(sub.endpoint, "watched", GW_DTYPE_F32);
  gw_publisher_config_init(&c);
  c.endpoint = pull.endpoint;
  c.run = "pushed";
  c.socket = GW_PUBLISHER_PUSH;
  c.sketch.k = 8;
  assert_int_equal(gw_publisher_new(&q, &c), 0);
  assert_int_equal(gw_publisher_set_warn(p, on_warn, &w), 0);
  assert_int_equal(gw_publisher_set_warn(q, on_warn, &w), 0);
  assert_int_equal(wait_sub(&sub, p, NULL, RECV_TIMEOUT_MS), 0);
  assert_int_equal(wait_connected(&pull, q, 1, RECV_TIMEOUT_MS), 1);
  assert_int_equal(gw_publisher_publish_sketch(p, "all", 1, z, NULL), 0);
  assert_int_equal(gw_publisher_publish_sketch(q, "all", 1, z, NULL), 0);
  sleep_ms(200);
  assert_int_equal(gw_publisher_publish_sketch(p, "all", 2, z, NULL), 0);
  assert_int_equal(gw_publisher_publish_sketch(q, "all", 2, z, NULL), 0);
  assert_int_equal(gw_publisher_connected(p), 1);
  assert_int_equal(gw_publisher_connected(q), 1);
  peer_close(&sub);
  peer_close(&pull);
  assert_int_equal(wait_connected(NULL, p, 0, RECV_TIMEOUT_MS), 0);
  assert_int_equal(wait_connected(NULL, q, 0, RECV_TIMEOUT_MS), 0);
  sleep_ms(150);
  gw_publisher_publish_sketch(p, "all", 3, z, NULL);
  gw_publisher_publish_sketch(q, "all", 3, z, NULL);
  assert_int_equal(w.calls, 0); /* a daemon came within the window */
  gw_publisher_free(p);
  gw_publisher_free(q);
  assert_int_equal(unsetenv("GW_PUBLISHER_WARN_MS"), 0);
}

/* ---- a whole model per call ------------------------------------------------- */

/* gw_publisher_publish_layers: a message per tagged layer with a gradient and
 * one for the sum, each payload the float of its row, the row of a layer
 * exactly its gw_sketch_accum sketch, the sum row the sum of the layer rows,
 * the norms in float64; bad arguments send nothing. */
static void publish_layers_sends_layers_and_sum(void **state) {
  (void)state;
  enum { K = 32, N0 = 700, N1 = 300, N2 = 50 };
  peer_t sub;
  gw_publisher_config_t c;
  gw_publisher_t *p = NULL;
  frames_t f;
  gw_msg_t m;
  static float g0[N0], g2[N2];
  static double g1[N1];
  double z[5 * K], norms[5], got[K], want[K];
  uint8_t status[5];
  uint64_t x = 777;

  for (int i = 0; i < N0; i++) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    g0[i] = (float)((double)(x >> 11) * 0x1p-53 * 2.0 - 1.0);
    if (i < N1) g1[i] = 0.5 * g0[i] + 0.25;
    if (i < N2) g2[i] = -g0[i];
  }
  /* layer 3 has no gradient; layer 2 has no tag (in the sum only) */
  gw_layer_t layers[4] = {{"fc.weight", {g0, N0, 0, GW_GRAD_F32}},
                          {"fc.bias", {g1, N1, N0, GW_GRAD_F64}},
                          {NULL, {g2, N2, N0 + N1, GW_GRAD_F32}},
                          {"gone", {NULL, 9, N0 + N1 + N2, GW_GRAD_F32}}};
  peer_open(&sub, ZMQ_SUB, "", NULL);
  gw_publisher_config_init(&c);
  c.endpoint = sub.endpoint;
  c.run = "layers";
  c.sketch.k = K;
  c.sketch.seed = 3;
  assert_int_equal(gw_publisher_new(&p, &c), 0);
  assert_int_equal(wait_sub(&sub, p, "all", RECV_TIMEOUT_MS), 0);

  gw_extras_t ex = {.flags = GW_HAS_LOSS | GW_HAS_GRAD_NORM, .loss = 1.5, .grad_norm = 99};
  assert_int_equal(gw_publisher_publish_layers(p, 4, "all", layers, 4, &ex, z, norms, status),
                   0);
  assert_int_equal(status[0], GW_LAYER_SENT);
  assert_int_equal(status[1], GW_LAYER_SENT);
  assert_int_equal(status[2], GW_LAYER_SENT);
  assert_int_equal(status[3], GW_LAYER_SKIPPED);
  assert_int_equal(status[4], GW_LAYER_SKIPPED);
  assert_int_equal(gw_publisher_sent(p), 3);
  /* rows: each layer's own sketch; the sum row adds them up */
  for (int i = 0; i < 3; i++) {
    memset(want, 0, sizeof want);
    if (i == 1)
      assert_int_equal(gw_sketch_accum_f64(&c.sketch, g1, N1, N0, want), 0);
    else
      assert_int_equal(gw_sketch_accum_f32(&c.sketch, i == 0 ? g0 : g2, i == 0 ? N0 : N2,
                                           i == 0 ? 0 : N0 + N1, want), 0);
    assert_memory_equal(z + (1 + i) * K, want, sizeof want);
  }
  for (int r = 0; r < K; r++) {
    assert_true(z[r] == ((z[K + r] + z[2 * K + r]) + z[3 * K + r]) + z[4 * K + r]);
    assert_true(z[4 * K + r] == 0.0);
  }
  double s0 = 0, s1 = 0, s2 = 0;
  for (int i = 0; i < N0; i++) s0 += (double)g0[i] * g0[i];
  for (int i = 0; i < N1; i++) s1 += g1[i] * g1[i];
  for (int i = 0; i < N2; i++) s2 += (double)g2[i] * g2[i];
  assert_true(fabs(norms[1] - sqrt(s0)) <= 1e-12 * sqrt(s0));
  assert_true(fabs(norms[0] - sqrt(s0 + s1 + s2)) <= 1e-12 * sqrt(s0 + s1 + s2));
  assert_true(norms[4] == 0.0);
  /* the messages: "all", then the tagged layers, in order */
  const char *tags[3] = {"all", "fc.weight", "fc.bias"};
  const int rows[3] = {0, 1, 2};
  for (int i = 0; i < 3; i++) {
    char topic[64];
    recv_msg(sub.sock, &f);
    assert_int_equal(gw_proto_decode(f.topic, f.topic_len, f.body, f.body_len, 0, &m), 0);
    snprintf(topic, sizeof topic, "%s", tags[i]);
    assert_int_equal(m.tag_len, strlen(topic));
    assert_memory_equal(m.tag, topic, m.tag_len);
    assert_int_equal(m.step, 4);
    assert_int_equal(m.flags, GW_HAS_GRAD_NORM | GW_HAS_LOSS);
    assert_true(m.loss == 1.5 && m.grad_norm == norms[rows[i]]); /* not the caller's 99 */
    assert_int_equal(gw_proto_read_payload(&m, got), 0);
    for (int r = 0; r < K; r++) assert_true(got[r] == (double)(float)z[rows[i] * K + r]);
    frames_free(&f);
  }

  /* A NaN in a layer: that layer and the sum are skipped, the rest sent. */
  g0[5] = NAN;
  assert_int_equal(gw_publisher_publish_layers(p, 5, "all", layers, 2, NULL, NULL, NULL, status),
                   0);
  assert_int_equal(status[0], GW_LAYER_NONFINITE);
  assert_int_equal(status[1], GW_LAYER_NONFINITE);
  assert_int_equal(status[2], GW_LAYER_SENT);
  g0[5] = 0.5f;
  recv_msg(sub.sock, &f);
  assert_int_equal(gw_proto_decode(f.topic, f.topic_len, f.body, f.body_len, 0, &m), 0);
  assert_int_equal(m.step, 5);
  frames_free(&f);

  /* Refused, nothing sent or counted. */
  uint64_t sent = gw_publisher_sent(p), dropped = gw_publisher_dropped(p);
  gw_layer_t badtag[1] = {{"bad tag", {g0, N0, 0, GW_GRAD_F32}}};
  assert_int_equal(gw_publisher_publish_layers(p, 6, "all", badtag, 1, NULL, z, norms, status),
                   GW_ENAME);
  assert_int_equal(gw_publisher_publish_layers(p, 6, "a b", layers, 1, NULL, z, norms, status),
                   GW_ENAME);
  assert_int_equal(gw_publisher_publish_layers(NULL, 6, "all", layers, 1, NULL, z, norms, status),
                   GW_EINVAL);
  assert_int_equal(gw_publisher_publish_layers(p, 6, "all", NULL, 1, NULL, z, norms, status),
                   GW_EINVAL);
  assert_int_equal(gw_publisher_publish_layers(p, 1ull << 63, "all", layers, 1, NULL, z, norms,
                                               status), GW_EINVAL);
  gw_extras_t nan_loss = {.flags = GW_HAS_LOSS, .loss = NAN};
  assert_int_equal(gw_publisher_publish_layers(p, 6, "all", layers, 1, &nan_loss, z, norms,
                                               status), GW_ENONFINITE);
  gw_layer_t baddt[1] = {{"x", {g0, N0, 0, 42}}};
  assert_int_equal(gw_publisher_publish_layers(p, 6, "all", baddt, 1, NULL, z, norms, status),
                   GW_EINVAL);
  assert_int_equal(gw_publisher_sent(p), sent);
  assert_int_equal(gw_publisher_dropped(p), dropped);
  /* No sum stream (all_tag NULL): only the layers. */
  assert_int_equal(gw_publisher_publish_layers(p, 7, NULL, layers + 2, 1, NULL, z, norms,
                                               status), 0);
  assert_int_equal(status[0], GW_LAYER_SKIPPED);
  assert_int_equal(status[1], GW_LAYER_SKIPPED);
  assert_int_equal(gw_publisher_sent(p), sent);
  gw_publisher_free(p);
  peer_close(&sub);
}

/* The scheduling policy of this process's thread named name (-1: none). */
static int thread_policy(const char *name) {
  char path[300], comm[32];
  DIR *d = opendir("/proc/self/task");
  struct dirent *e;
  int policy = -1;
  assert_non_null(d);
  while (policy < 0 && (e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.') continue;
    snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
    FILE *f = fopen(path, "r");
    if (f == NULL) continue;
    if (fgets(comm, sizeof comm, f) && strncmp(comm, name, strlen(name)) == 0 &&
        comm[strlen(name)] == '\n')
      policy = sched_getscheduler((pid_t)atoi(e->d_name));
    fclose(f);
  }
  closedir(d);
  return policy;
}

/* Wait (up to 5 s) for the thread named name to have policy want. */
static int wait_policy(const char *name, int want) {
  for (int i = 0; i < 500; i++) {
    if (thread_policy(name) == want) return 1;
    struct timespec ts = {0, 10 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  return 0;
}

/* Whether a thread of this process may leave SCHED_IDLE again (root with
 * CAP_SYS_NICE, or RLIMIT_NICE 20): tried on a thread of its own. */
static void *try_idle_round_trip(void *arg) {
  struct sched_param sp = {0};
  *(int *)arg = pthread_setschedparam(pthread_self(), SCHED_IDLE, &sp) == 0 &&
                pthread_setschedparam(pthread_self(), SCHED_OTHER, &sp) == 0;
  return NULL;
}

/* The worker's thread ("gw-worker") waits for steps at SCHED_IDLE, before
 * the first step and after each (its spin then takes no CPU anything else
 * wants), and publishes at SCHED_OTHER where the process may leave
 * SCHED_IDLE (seen while it sketches a 16 MB step); the thread is gone
 * after gw_worker_free. */
static void worker_waits_at_idle_priority(void **state) {
  (void)state;
  enum { K = 16, N = 1 << 22 }; /* 16 MB: a sketch of several ms */
  peer_t sub;
  gw_publisher_config_t c;
  gw_publisher_t *p = NULL;
  gw_worker_t *w = NULL;
  static float g[N];
  uint8_t status[2];
  uint64_t step = 0;
  for (int i = 0; i < N; i++) g[i] = (float)(i % 13) - 6.0f;
  gw_layer_t layers[1] = {{"w", {g, N, 0, GW_GRAD_F32}}};
  peer_open(&sub, ZMQ_SUB, "", NULL);
  gw_publisher_config_init(&c);
  c.endpoint = sub.endpoint;
  c.run = "sched";
  c.sketch.k = K;
  assert_int_equal(gw_publisher_new(&p, &c), 0);
  assert_int_equal(wait_sub(&sub, p, "all", RECV_TIMEOUT_MS), 0);
  assert_int_equal(thread_policy("gw-worker"), -1);
  assert_int_equal(gw_worker_new(&w, p), 0);
  assert_true(wait_policy("gw-worker", SCHED_IDLE));
  int can_leave = 0;
  pthread_t probe;
  assert_int_equal(pthread_create(&probe, NULL, try_idle_round_trip, &can_leave), 0);
  assert_int_equal(pthread_join(probe, NULL), 0);
  for (uint64_t st = 0; st < 3; st++) {
    int seen_other = 0;
    assert_int_equal(gw_worker_submit(w, st, "all", layers, 1, NULL), 0);
    while (!gw_worker_ready(w)) seen_other |= thread_policy("gw-worker") == SCHED_OTHER;
    assert_int_equal(gw_worker_wait(w, &step, NULL, NULL, status), 0);
    assert_int_equal(step, st);
    assert_int_equal(status[0], GW_LAYER_SENT);
    if (can_leave) assert_true(seen_other); /* published at the default class */
    assert_true(wait_policy("gw-worker", SCHED_IDLE)); /* back to waiting */
  }
  printf("worker: may leave SCHED_IDLE: %s\n", can_leave ? "yes" : "no");
  gw_worker_free(w);
  assert_int_equal(thread_policy("gw-worker"), -1);
  gw_publisher_free(p);
  peer_close(&sub);
}

/* gw_worker: the step published from the worker's thread is the step
 * gw_publisher_publish_layers publishes (rows bit for bit the layers'
 * gw_sketch_accum sketches), computed from the copy taken at submit (the
 * caller's buffers are overwritten right after); GW_WORKER_DEPTH steps in
 * flight, each from its own copy, collected oldest first; bad arguments
 * queue nothing; steps arrive in order; free sends the steps in flight. */
static void worker_publishes_copies_in_order(void **state) {
  (void)state;
  enum { K = 16, N0 = 900, N1 = 130, STEPS = 40 };
  peer_t sub;
  gw_publisher_config_t c;
  gw_publisher_t *p = NULL;
  gw_worker_t *w = NULL;
  frames_t f;
  gw_msg_t msg;
  static float g0[N0], keep0[N0];
  static double g1[N1];
  double z[3 * K], norms[3], want[K], got[K];
  uint8_t status[3];
  uint64_t x = 99, step = 0;

  for (int i = 0; i < N0; i++) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    g0[i] = keep0[i] = (float)((double)(x >> 11) * 0x1p-53 - 0.5);
    if (i < N1) g1[i] = 3.0 * g0[i];
  }
  gw_layer_t layers[2] = {{"w", {g0, N0, 0, GW_GRAD_F32}}, {"b", {g1, N1, N0, GW_GRAD_F64}}};
  peer_open(&sub, ZMQ_SUB, "", NULL);
  gw_publisher_config_init(&c);
  c.endpoint = sub.endpoint;
  c.run = "bg";
  c.sketch.k = K;
  c.sketch.seed = 11;
  assert_int_equal(gw_publisher_new(&p, &c), 0);
  assert_int_equal(wait_sub(&sub, p, "all", RECV_TIMEOUT_MS), 0);
  assert_int_equal(gw_worker_new(NULL, p), GW_EINVAL);
  assert_int_equal(gw_worker_new(&w, NULL), GW_EINVAL);
  assert_null(w);
  assert_int_equal(gw_worker_new(&w, p), 0);
  assert_int_equal(gw_worker_wait(w, &step, z, norms, status), GW_ENOTFOUND);
  assert_int_equal(gw_worker_pending(w), 0);
  assert_int_equal(gw_worker_ready(w), 0);
  assert_int_equal(gw_worker_pending(NULL), 0);
  assert_int_equal(gw_worker_ready(NULL), 0);
  assert_int_equal(gw_worker_last(w, &step, z), GW_ENOTFOUND); /* nothing collected yet */
  assert_int_equal(gw_worker_last(NULL, &step, z), GW_EINVAL);

  gw_extras_t ex = {.flags = GW_HAS_LR, .lr = 0.125};
  assert_int_equal(gw_worker_submit(w, 3, "all", layers, 2, &ex), 0);
  for (int i = 0; i < N0; i++) g0[i] = 1e3f * (float)(i % 7); /* reused at once */
  assert_int_equal(gw_worker_pending(w), 1);
  assert_int_equal(gw_worker_submit(w, 4, "all", layers, 2, &ex), 0); /* the second slot */
  assert_int_equal(GW_WORKER_DEPTH, 2);
  assert_int_equal(gw_worker_pending(w), 2);
  assert_int_equal(gw_worker_submit(w, 5, "all", layers, 2, &ex), GW_EINVAL); /* full */
  assert_int_equal(gw_worker_pending(w), 2);
  assert_int_equal(gw_worker_wait(w, &step, z, norms, status), 0);
  assert_int_equal(step, 3);
  assert_int_equal(gw_worker_pending(w), 1);
  memset(want, 0, sizeof want);
  assert_int_equal(gw_sketch_accum_f32(&c.sketch, keep0, N0, 0, want), 0);
  assert_memory_equal(z + K, want, sizeof want);
  {
    double z4[3 * K], n4[3], zl[3 * K];
    uint8_t st4[3];
    uint64_t step4 = 0, stepl = 0;
    assert_int_equal(gw_worker_last(w, &stepl, zl), GW_EINVAL); /* step 4 in flight */
    while (!gw_worker_ready(w)) sched_yield(); /* published: wait does not block */
    assert_int_equal(gw_worker_wait(w, &step4, NULL, n4, st4), 0); /* z read back below */
    assert_int_equal(gw_worker_last(w, &stepl, z4), 0);
    assert_int_equal(stepl, 4);
    assert_int_equal(gw_worker_last(w, NULL, zl), 0); /* again: the same */
    assert_memory_equal(zl, z4, sizeof zl);
    assert_int_equal(step4, 4);
    assert_int_equal(gw_worker_pending(w), 0);
    assert_int_equal(gw_worker_ready(w), 0);
    memset(want, 0, sizeof want);
    assert_int_equal(gw_sketch_accum_f32(&c.sketch, g0, N0, 0, want), 0);
    assert_memory_equal(z4 + K, want, sizeof want); /* its own copy, not step 3's */
    assert_int_equal(st4[0], GW_LAYER_SENT);
  }
  memset(want, 0, sizeof want);
  assert_int_equal(gw_sketch_accum_f64(&c.sketch, g1, N1, N0, want), 0);
  assert_memory_equal(z + 2 * K, want, sizeof want);
  for (int r = 0; r < K; r++) assert_true(z[r] == z[K + r] + z[2 * K + r]);
  assert_int_equal(status[0], GW_LAYER_SENT);
  assert_int_equal(status[1], GW_LAYER_SENT);
  assert_int_equal(status[2], GW_LAYER_SENT);
  double s0 = 0;
  for (int i = 0; i < N0; i++) s0 += (double)keep0[i] * keep0[i];
  assert_true(fabs(norms[1] - sqrt(s0)) <= 1e-12 * sqrt(s0));
  for (int i = 0; i < 3; i++) {
    recv_msg(sub.sock, &f);
    assert_int_equal(gw_proto_decode(f.topic, f.topic_len, f.body, f.body_len, 0, &msg), 0);
    assert_int_equal(msg.step, 3);
    assert_true(msg.lr == 0.125 && msg.grad_norm == norms[i]);
    assert_int_equal(gw_proto_read_payload(&msg, got), 0);
    for (int r = 0; r < K; r++) assert_true(got[r] == (double)(float)z[i * K + r]);
    frames_free(&f);
  }
  for (int i = 0; i < 3; i++) { /* then step 4's, in order */
    recv_msg(sub.sock, &f);
    assert_int_equal(gw_proto_decode(f.topic, f.topic_len, f.body, f.body_len, 0, &msg), 0);
    assert_int_equal(msg.step, 4);
    frames_free(&f);
  }
  memcpy(g0, keep0, sizeof g0);

  /* refused: nothing queued */
  gw_layer_t badtag[1] = {{"no spaces", {g0, N0, 0, GW_GRAD_F32}}};
  gw_layer_t baddt[1] = {{"x", {g0, N0, 0, 7}}};
  gw_extras_t nan_lr = {.flags = GW_HAS_LR, .lr = NAN};
  assert_int_equal(gw_worker_submit(w, 5, "all", badtag, 1, NULL), GW_ENAME);
  assert_int_equal(gw_worker_submit(w, 5, "all", baddt, 1, NULL), GW_EINVAL);
  assert_int_equal(gw_worker_submit(w, 5, "all", layers, 2, &nan_lr), GW_ENONFINITE);
  assert_int_equal(gw_worker_submit(w, 1ull << 63, "all", layers, 2, NULL), GW_EINVAL);
  assert_int_equal(gw_worker_submit(NULL, 5, "all", layers, 2, NULL), GW_EINVAL);
  assert_int_equal(gw_worker_pending(w), 0);

  /* a training loop: collect what is published (all of it when the queue
   * is full), submit this step; then free with steps in flight */
  uint64_t next = 10;
  for (uint64_t st = 10; st < 10 + STEPS; st++) {
    while (gw_worker_pending(w) == GW_WORKER_DEPTH || gw_worker_ready(w)) {
      assert_int_equal(gw_worker_wait(w, &step, NULL, NULL, status), 0);
      assert_int_equal(step, next++); /* oldest first */
      assert_int_equal(status[0], GW_LAYER_SENT);
    }
    g0[st % N0] += 1.0f;
    assert_int_equal(gw_worker_submit(w, st, "all", layers, 2, NULL), 0);
    assert_true(gw_worker_pending(w) >= 1 && gw_worker_pending(w) <= GW_WORKER_DEPTH);
  }
  gw_worker_free(w);
  gw_worker_free(NULL);
  for (uint64_t st = 10; st < 10 + STEPS; st++)
    for (int i = 0; i < 3; i++) {
      recv_msg(sub.sock, &f);
      assert_int_equal(gw_proto_decode(f.topic, f.topic_len, f.body, f.body_len, 0, &msg), 0);
      assert_int_equal(msg.step, st);
      assert_int_equal(msg.tag_len, i == 0 ? 3 : 1);
      frames_free(&f);
    }
  assert_int_equal(gw_publisher_sent(p), 6 + 3 * STEPS); /* steps 3, 4 and the loop */
  gw_publisher_free(p);
  peer_close(&sub);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(frames_f32),
      cmocka_unit_test(worker_waits_at_idle_priority),
      cmocka_unit_test(frames_f16),
      cmocka_unit_test(frames_bf16),
      cmocka_unit_test(publish_gradient_sketches_and_norms),
      cmocka_unit_test(publish_layers_sends_layers_and_sum),
      cmocka_unit_test(worker_publishes_copies_in_order),
      cmocka_unit_test(bad_config),
      cmocka_unit_test(bad_publish_arguments),
      cmocka_unit_test(never_blocks_without_peer_pub),
      cmocka_unit_test(never_blocks_without_peer_push),
      cmocka_unit_test(never_blocks_with_stalled_subscriber),
      cmocka_unit_test(follows_subscriptions),
      cmocka_unit_test(push_to_pull),
      cmocka_unit_test(curve),
      cmocka_unit_test(incarnation_per_publisher),
      cmocka_unit_test(run_metadata),
      cmocka_unit_test(incarnations_are_random),
      cmocka_unit_test(connected_follows_subscriptions),
      cmocka_unit_test(connected_push),
      cmocka_unit_test(warns_once_without_daemon_pub),
      cmocka_unit_test(warns_once_without_daemon_push),
      cmocka_unit_test(never_warns_with_daemon),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
