/* publisher.c — libgradwatch's publisher: sketches in, ZeroMQ frames out,
 * never blocking the training loop (PROTOCOL.md §1.3).
 *
 * A publisher owns one socket connected to the daemon, the run name and
 * sketch parameters of its run, its incarnation (a random nonzero 64-bit id
 * drawn with getrandom(2) at creation and written into every message, so a
 * daemon can tell a rerun or a resume from a continuation; PROTOCOL.md
 * §3.2), and three buffers sized once at creation: the body (the largest
 * header + k payload elements, the largest message it can send), the
 * topic, and — for gw_publisher_publish — a float64 accumulator and a
 * float32 sketch of length k. Every publish writes the payload straight
 * into the body buffer (converting to the payload dtype and refusing NaN/Inf
 * on the way), lets gw_proto_encode_body fill the header in front of it, and
 * hands both frames to ZeroMQ with ZMQ_DONTWAIT. Nothing is allocated per
 * message by this file (ZeroMQ copies the frames into its own messages).
 *
 * Why an XPUB socket and not PUB: a PUB socket silently discards a message
 * nobody subscribed to and, past SNDHWM, one a slow subscriber has no room
 * for, so the client could not count what it loses. An XPUB socket with
 * ZMQ_XPUB_NODROP instead fails the send with EAGAIN when a matching
 * subscriber's queue is full, and reports subscriptions as messages
 * ("\x01prefix" / "\x00prefix") that this file reads before every send and
 * keeps as a set of prefixes. A message whose topic matches none of them is
 * dropped here, before ZeroMQ sees it. For subscribers it is an ordinary PUB
 * socket. Both sockets are created with ZMQ_IMMEDIATE: a PUSH socket with no
 * connected peer then fails the send with EAGAIN instead of queueing for a
 * peer that may never come, and an XPUB socket keeps a daemon's pipe (and
 * its subscriptions) only while the connection is up, so a daemon that goes
 * away unsubscribes (messages are dropped and counted, not queued for
 * later) and one that comes back subscribes again, visibly.
 *
 * Outcome of a send, counted exactly once:
 *   no subscriber matches the topic (PUB)                 -> dropped
 *   ZeroMQ says EAGAIN (queue full, or PUSH with no peer) -> dropped
 *   any other ZeroMQ error                                -> dropped, last_error
 *   both frames accepted                                  -> sent
 * Once ZeroMQ accepts the first frame of a message it accepts the second:
 * the high-water mark counts whole messages, so the check that let the
 * first frame through holds for the rest of that message.
 *
 * Bad arguments (names, step, scalars, non-finite sketches) are rejected with
 * a GW_E* code before anything is sent or counted: the daemon would reject
 * such a message anyway, and a caller learns of its bug at once.
 *
 * Is a daemon there? poll_peers is the one place that reads what the socket
 * says about its peers: with PUB the (un)subscription messages above, with
 * PUSH the events of a socket monitor (ZMQ_EVENT_HANDSHAKE_SUCCEEDED and
 * _DISCONNECTED, read from an inproc PAIR socket). From them it keeps
 * `connected` (a daemon takes this run's messages now: with PUB a
 * subscription matching some topic of the run, with PUSH a handshaken
 * connection) and `ever_connected`, and it returns 1 when a daemon newly
 * arrived: the hook for anything to be sent to a daemon when it arrives.
 * It runs on every publish and in gw_publisher_connected; nothing runs in
 * the background. The run's metadata (gw_publisher_set_meta, PROTOCOL.md
 * §11) rides on it: it is sent when set, before the next publish after a
 * daemon subscribes to the run (XPUB: ZMQ_XPUB_VERBOSE, so a second daemon
 * subscribing to a prefix the first already has is seen too; PUSH: each
 * completed handshake), and every META_EVERY_NS while publishing. The no-daemon warning is checked at those same two
 * places: the first check at least warn_after_ns after the first publish
 * that finds ever_connected still 0 calls the warning callback, once.
 *
 *   created ──first publish──► waiting ──daemon subscribes──► connected
 *                                 │                              (never warns)
 *                                 └──5 s pass, then a check──► warned (once)
 */
#include "gradwatch.h"
#include "gw_meta.h"

#include <assert.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include <zmq.h>

#define SUBS_MAX 65536 /* prefixes remembered; beyond, every topic matches */
#define STEP_MAX 0x7FFFFFFFFFFFFFFFull
#define WARN_AFTER_MS_DEFAULT 5000
#define WARN_ENV "GW_PUBLISHER_WARN_MS" /* overrides the 5 s, e.g. for tests */
#define META_EVERY_NS (30 * 1000000000LL) /* periodic metadata resend */

typedef struct sub_s {
  size_t len;
  char *prefix; /* not NUL-terminated; len may be 0 (subscribe to all) */
} sub_t;

struct gw_publisher_s {
  void *ctx;
  int own_ctx; /* ctx is ours to terminate */
  void *sock;
  int socket; /* gw_publisher_socket_t */
  char run[GW_PROTO_NAME_MAX + 1];
  size_t run_len;
  char run_prefix[GW_PROTO_TOPIC_MAX + 1]; /* "gw1/<run>/": topics of this run */
  size_t run_prefix_len;
  char *endpoint; /* a copy, for the warning */
  gw_sketch_params_t sk;
  uint8_t dtype;
  uint8_t version;      /* wire version written: 2, or 1 when configured */
  uint64_t incarnation; /* never 0 with version 2; 0 with version 1 */
  unsigned char *body;  /* GW_PROTO_HEADER_SIZE + k * dtype size */
  size_t body_cap;
  double *acc; /* k: gw_publisher_publish's sketch accumulator */
  float *z;    /* k: the accumulator rounded to float */
  char topic[GW_PROTO_TOPIC_MAX + 1];
  sub_t *subs; /* current subscriptions (PUB only), a set */
  size_t nsubs, cap_subs;
  int subs_overflow; /* more than SUBS_MAX prefixes: match everything */
  void *mon;         /* PUSH: PAIR socket receiving the monitor's events */
  int peers;         /* PUSH: handshaken connections now */
  int connected;      /* a daemon takes this run's messages now */
  int ever_connected; /* ... at some time since creation */
  int published;      /* a publish got as far as sending */
  int64_t first_publish_ns;  /* CLOCK_MONOTONIC, when published became 1 */
  int64_t warn_after_ns;     /* no daemon this long after it: warn */
  gw_publisher_warn_fn warn; /* NULL: no warning */
  void *warn_arg;
  int warned; /* the warning has been given */
  uint64_t sent, dropped;
  int last_error;
  unsigned char *meta_body; /* the metadata message's body, NULL: none set */
  size_t meta_len;
  char meta_topic[GW_PROTO_TOPIC_MAX + 1];
  int meta_topic_len;
  int meta_due;            /* send it before the next publish */
  int64_t meta_sent_ns;    /* CLOCK_MONOTONIC of the last attempt */
  uint64_t meta_sent;      /* metadata messages sent */
};

void gw_publisher_config_init(gw_publisher_config_t *cfg) {
  assert(cfg != NULL);
  memset(cfg, 0, sizeof *cfg);
  cfg->sketch.k = 256;
  cfg->sketch.kind = GW_SKETCH_SJLT;
  cfg->sketch.s = 4;
  cfg->sketch.seed = 0;
  cfg->dtype = GW_DTYPE_F32;
  cfg->socket = GW_PUBLISHER_PUB;
  cfg->sndhwm = 10000;
  cfg->linger_ms = 1000;
  cfg->incarnation = 0;  /* draw one */
  cfg->wire_version = 0; /* GW_PROTO_VERSION */
}

/* ---- configuration ------------------------------------------------------ */

/* 0 if key is 40 characters of Z85 encoding a 32-byte key (into raw). */
static int z85_key(const char *key, uint8_t raw[32]) {
  if (key == NULL || strlen(key) != 40) return GW_EINVAL;
  return zmq_z85_decode(raw, key) != NULL ? 0 : GW_EINVAL;
}

static int check_config(const gw_publisher_config_t *c) {
  int rc, ncurve;
  if (c->endpoint == NULL || c->run == NULL) return GW_EINVAL;
  if ((rc = gw_proto_check_run(c->run, strnlen(c->run, GW_PROTO_NAME_MAX + 1))))
    return rc;
  if ((rc = gw_sketch_check(&c->sketch)) != 0) return rc;
  if (gw_dtype_size(c->dtype) == 0) return GW_EDTYPE;
  if (c->socket != GW_PUBLISHER_PUB && c->socket != GW_PUBLISHER_PUSH)
    return GW_EINVAL;
  if (c->sndhwm < 1 || c->linger_ms < -1) return GW_EINVAL;
  if (c->wire_version != 0 && c->wire_version != 1 && c->wire_version != 2)
    return GW_EVERSION;
  if (c->wire_version == 1 && c->incarnation != 0) return GW_EINCARNATION;
  ncurve = (c->curve_server_key != NULL) + (c->curve_public_key != NULL) +
           (c->curve_secret_key != NULL);
  if (ncurve != 0 && ncurve != 3) return GW_EINVAL;
  return 0;
}

static int set_curve(void *sock, const gw_publisher_config_t *c) {
  uint8_t server[32], pub[32], sec[32];
  int rc = 0;
  if (!zmq_has("curve")) return -ENOTSUP;
  if (z85_key(c->curve_server_key, server) || z85_key(c->curve_public_key, pub) ||
      z85_key(c->curve_secret_key, sec))
    rc = GW_EINVAL;
  else if (zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, server, 32) ||
           zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, pub, 32) ||
           zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, sec, 32))
    rc = -errno;
  memset(sec, 0, sizeof sec);
  return rc;
}

/* 64 random bits from the kernel's CSPRNG, never 0 (PROTOCOL.md §3.2). */
static int draw_incarnation(uint64_t *out) {
  uint64_t v = 0;
  while (v == 0) {
    unsigned char *b = (unsigned char *)&v;
    size_t got = 0;
    while (got < sizeof v) {
      ssize_t n = getrandom(b + got, sizeof v - got, 0);
      if (n < 0) {
        if (errno == EINTR) continue;
        return -errno;
      }
      got += (size_t)n;
    }
  }
  *out = v;
  return 0;
}

/* GW_PUBLISHER_WARN_MS if set to a whole number of ms, else 5 s. */
static int64_t warn_after_ns(void) {
  const char *e = getenv(WARN_ENV);
  char *end;
  long long ms;
  if (e == NULL || *e == '\0') return (int64_t)WARN_AFTER_MS_DEFAULT * 1000000;
  errno = 0;
  ms = strtoll(e, &end, 10);
  if (errno != 0 || *end != '\0' || ms < 0 || ms > 86400000LL * 365)
    return (int64_t)WARN_AFTER_MS_DEFAULT * 1000000;
  return (int64_t)ms * 1000000;
}

static int64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* PUSH: watch p->sock's handshakes and disconnections through a PAIR socket
 * on a private inproc endpoint, connected before p->sock connects so no
 * event is missed. Only these two events are asked for: they come once per
 * connection, so the few a caller who never publishes leaves unread stay
 * few. */
static int open_monitor(gw_publisher_t *p) {
  char addr[64];
  snprintf(addr, sizeof addr, "inproc://gradwatch-publisher-%p", (void *)p);
  if (zmq_socket_monitor(p->sock, addr,
                         ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_DISCONNECTED) != 0)
    return -errno;
  if ((p->mon = zmq_socket(p->ctx, ZMQ_PAIR)) == NULL) return -errno;
  if (zmq_connect(p->mon, addr) != 0) return -errno;
  return 0;
}

int gw_publisher_new(gw_publisher_t **out, const gw_publisher_config_t *cfg) {
  gw_publisher_t *p = NULL;
  int rc, one = 1, zero = 0;

  if (out == NULL) return GW_EINVAL;
  *out = NULL;
  if (cfg == NULL) return GW_EINVAL;
  if ((rc = check_config(cfg)) != 0) return rc;

  p = calloc(1, sizeof *p);
  if (p == NULL) return GW_ENOMEM;
  p->socket = cfg->socket;
  p->run_len = strlen(cfg->run);
  memcpy(p->run, cfg->run, p->run_len + 1);
  p->run_prefix_len = (size_t)snprintf(p->run_prefix, sizeof p->run_prefix, "%s%s/",
                                       GW_PROTO_TOPIC_PREFIX, p->run);
  p->sk = cfg->sketch;
  p->dtype = cfg->dtype;
  p->version = cfg->wire_version == 1 ? 1 : GW_PROTO_VERSION;
  p->incarnation = cfg->incarnation;
  if (p->version >= 2 && p->incarnation == 0 && (rc = draw_incarnation(&p->incarnation)) != 0)
    goto fail;
  p->warn_after_ns = warn_after_ns();
  /* The payload always goes at GW_PROTO_HEADER_SIZE (the largest header);
   * a version 1 body ends 8 bytes short of body_cap. */
  p->body_cap = GW_PROTO_HEADER_SIZE + (size_t)p->sk.k * gw_dtype_size(p->dtype);
  p->body = malloc(p->body_cap);
  p->acc = malloc((size_t)p->sk.k * sizeof *p->acc);
  p->z = malloc((size_t)p->sk.k * sizeof *p->z);
  p->endpoint = strdup(cfg->endpoint);
  if (p->body == NULL || p->acc == NULL || p->z == NULL || p->endpoint == NULL) {
    rc = GW_ENOMEM;
    goto fail;
  }

  p->ctx = cfg->zmq_context;
  if (p->ctx == NULL) {
    if ((p->ctx = zmq_ctx_new()) == NULL) {
      rc = -errno;
      goto fail;
    }
    p->own_ctx = 1;
  }
  p->sock = zmq_socket(p->ctx, p->socket == GW_PUBLISHER_PUB ? ZMQ_XPUB : ZMQ_PUSH);
  if (p->sock == NULL) {
    rc = -errno;
    goto fail;
  }
  if (zmq_setsockopt(p->sock, ZMQ_SNDHWM, &cfg->sndhwm, sizeof(int)) ||
      zmq_setsockopt(p->sock, ZMQ_LINGER, &cfg->linger_ms, sizeof(int)) ||
      zmq_setsockopt(p->sock, ZMQ_IMMEDIATE, &one, sizeof one) ||
      (p->socket == GW_PUBLISHER_PUB &&
       (zmq_setsockopt(p->sock, ZMQ_XPUB_NODROP, &one, sizeof one) ||
        zmq_setsockopt(p->sock, ZMQ_XPUB_VERBOSE, &one, sizeof one)))) {
    rc = -errno;
    goto fail;
  }
  if (cfg->curve_server_key != NULL && (rc = set_curve(p->sock, cfg)) != 0)
    goto fail;
  if (p->socket == GW_PUBLISHER_PUSH && (rc = open_monitor(p)) != 0) goto fail;
  if (zmq_connect(p->sock, cfg->endpoint) != 0) {
    rc = -errno;
    goto fail;
  }
  *out = p;
  return 0;

fail:
  if (p->sock) zmq_setsockopt(p->sock, ZMQ_LINGER, &zero, sizeof zero);
  gw_publisher_free(p);
  return rc;
}

void gw_publisher_free(gw_publisher_t *pub) {
  int zero = 0;
  if (pub == NULL) return;
  if (pub->mon) {
    zmq_socket_monitor(pub->sock, NULL, 0); /* stop it before its reader goes */
    zmq_setsockopt(pub->mon, ZMQ_LINGER, &zero, sizeof zero);
    zmq_close(pub->mon);
  }
  if (pub->sock) zmq_close(pub->sock);
  if (pub->own_ctx) {
    while (zmq_ctx_term(pub->ctx) != 0 && errno == EINTR) {
    }
  }
  for (size_t i = 0; i < pub->nsubs; i++) free(pub->subs[i].prefix);
  free(pub->subs);
  free(pub->endpoint);
  free(pub->body);
  free(pub->acc);
  free(pub->z);
  free(pub->meta_body);
  free(pub);
}

/* ---- subscriptions (PUB) ------------------------------------------------ */

static sub_t *find_sub(gw_publisher_t *p, const char *s, size_t len) {
  for (size_t i = 0; i < p->nsubs; i++)
    if (p->subs[i].len == len && memcmp(p->subs[i].prefix, s, len) == 0)
      return &p->subs[i];
  return NULL;
}

static void add_sub(gw_publisher_t *p, const char *s, size_t len) {
  if (find_sub(p, s, len)) return;
  if (p->nsubs == SUBS_MAX) {
    p->subs_overflow = 1;
    return;
  }
  if (p->nsubs == p->cap_subs) {
    size_t cap = p->cap_subs ? 2 * p->cap_subs : 8;
    sub_t *n = realloc(p->subs, cap * sizeof *n);
    if (n == NULL) {
      p->subs_overflow = 1; /* fail open: ZeroMQ still filters */
      return;
    }
    p->subs = n;
    p->cap_subs = cap;
  }
  char *c = malloc(len ? len : 1);
  if (c == NULL) {
    p->subs_overflow = 1;
    return;
  }
  memcpy(c, s, len);
  p->subs[p->nsubs].prefix = c;
  p->subs[p->nsubs].len = len;
  p->nsubs++;
}

static void del_sub(gw_publisher_t *p, const char *s, size_t len) {
  sub_t *x = find_sub(p, s, len);
  if (x == NULL) return;
  free(x->prefix);
  *x = p->subs[--p->nsubs];
}

/* 1 if some subscription would take some topic starting with pre (a
 * subscription that is a prefix of pre, or one that extends it). */
static int matches_any_under(const gw_publisher_t *p, const char *pre, size_t len) {
  if (p->subs_overflow) return 1;
  for (size_t i = 0; i < p->nsubs; i++) {
    size_t l = p->subs[i].len < len ? p->subs[i].len : len;
    if (memcmp(p->subs[i].prefix, pre, l) == 0) return 1;
  }
  return 0;
}

/* 1 if sock has a message waiting (ZMQ_EVENTS, never blocks). */
static int readable(void *sock) {
  int events;
  size_t elen = sizeof events;
  return zmq_getsockopt(sock, ZMQ_EVENTS, &events, &elen) == 0 && (events & ZMQ_POLLIN);
}

/* PUB: read every pending (un)subscription. ZeroMQ reports a prefix once,
 * when its first subscriber subscribes, and unsubscribes it when its last
 * subscriber leaves or disconnects, so a set is the right model. Returns 1
 * if the set changed. */
static int read_subs(gw_publisher_t *p) {
  char buf[1 + GW_PROTO_TOPIC_MAX + 1];
  int changed = 0;

  while (readable(p->sock)) {
    int n = zmq_recv(p->sock, buf, sizeof buf, ZMQ_DONTWAIT);
    if (n < 1) break;
    /* A prefix longer than any topic can match nothing: ignore it (and its
     * unsubscription) rather than keep a truncated copy. */
    if ((size_t)n > sizeof buf) continue;
    if (buf[0] == 1) {
      size_t l = (size_t)n - 1;
      if ((l <= p->run_prefix_len && memcmp(buf + 1, p->run_prefix, l) == 0) ||
          (l > p->run_prefix_len && memcmp(buf + 1, p->run_prefix, p->run_prefix_len) == 0))
        p->meta_due = 1; /* a daemon (re)subscribed to this run */
      add_sub(p, buf + 1, l);
      changed = 1;
    } else if (buf[0] == 0) {
      del_sub(p, buf + 1, (size_t)n - 1);
      changed = 1;
    }
  }
  return changed;
}

/* PUSH: read every pending monitor event (frame 1: u16 event, u32 value in
 * host order; frame 2: the endpoint) and count handshaken connections. */
static void read_monitor(gw_publisher_t *p) {
  unsigned char ev[6];
  char ep[256];

  while (readable(p->mon)) {
    uint16_t id;
    int n = zmq_recv(p->mon, ev, sizeof ev, ZMQ_DONTWAIT);
    int more = 0;
    size_t ml = sizeof more;
    if (n < 0) break;
    while (zmq_getsockopt(p->mon, ZMQ_RCVMORE, &more, &ml) == 0 && more &&
           zmq_recv(p->mon, ep, sizeof ep, ZMQ_DONTWAIT) >= 0) {
    }
    if (n < 2) continue;
    memcpy(&id, ev, sizeof id);
    if (id == ZMQ_EVENT_HANDSHAKE_SUCCEEDED) {
      p->peers++;
      p->meta_due = 1;
    }
    else if (id == ZMQ_EVENT_DISCONNECTED && p->peers > 0)
      p->peers--;
  }
}

/* Everything the socket says about daemons, without blocking: updates
 * connected and ever_connected and returns 1 when a daemon newly takes
 * this run's messages (the hook for a later "send to a daemon that just
 * arrived", e.g. the run's metadata). */
static int poll_peers(gw_publisher_t *p) {
  int was = p->connected;
  if (p->socket == GW_PUBLISHER_PUB) {
    if (read_subs(p))
      p->connected = matches_any_under(p, p->run_prefix, p->run_prefix_len);
  } else {
    read_monitor(p);
    p->connected = p->peers > 0;
  }
  if (p->connected) p->ever_connected = 1;
  return p->connected && !was;
}

/* The no-daemon warning: once, at the first check at least warn_after_ns
 * after the first publish that finds no daemon has ever been there. */
static void check_warn(gw_publisher_t *p) {
  char msg[512];
  double s;
  if (p->warned || p->ever_connected || p->warn == NULL || !p->published) return;
  if (mono_ns() - p->first_publish_ns < p->warn_after_ns) return;
  p->warned = 1;
  s = (double)p->warn_after_ns / 1e9;
  if (p->socket == GW_PUBLISHER_PUB)
    snprintf(msg, sizeof msg,
             "no gradwatch daemon has subscribed to run '%s' at %s within %g s of the first "
             "publish; messages are dropped until one does (is gradwatchd running, listening "
             "there, and subscribed to this run?)",
             p->run, p->endpoint, s);
  else
    snprintf(msg, sizeof msg,
             "no gradwatch daemon has connected at %s within %g s of the first publish of "
             "run '%s'; messages are dropped until one does (is gradwatchd running and "
             "pulling there?)",
             p->endpoint, s, p->run);
  p->warn(p->warn_arg, msg);
}

/* 1 if some subscription is a prefix of topic[0..len). */
static int matches(const gw_publisher_t *p, const char *topic, size_t len) {
  if (p->subs_overflow) return 1;
  for (size_t i = 0; i < p->nsubs; i++)
    if (p->subs[i].len <= len && memcmp(p->subs[i].prefix, topic, p->subs[i].len) == 0)
      return 1;
  return 0;
}

/* ---- encoding and sending ----------------------------------------------- */

static int check_tag(const char *tag) {
  return gw_proto_check_tag(tag, strnlen(tag, GW_PROTO_NAME_MAX + 1));
}

static int check_extras(const gw_extras_t *x) {
  if (x == NULL) return 0;
  if (x->flags & ~GW_FLAGS_KNOWN) return GW_EINVAL;
  if (((x->flags & GW_HAS_GRAD_NORM) && !isfinite(x->grad_norm)) ||
      ((x->flags & GW_HAS_LOSS) && !isfinite(x->loss)) ||
      ((x->flags & GW_HAS_LR) && !isfinite(x->lr)))
    return GW_ENONFINITE;
  return 0;
}

static int check_args(const char *tag, uint64_t step, const gw_extras_t *x) {
  int rc;
  if ((rc = check_tag(tag)) != 0) return rc;
  if (step > STEP_MAX) return GW_EINVAL;
  return check_extras(x);
}

static inline void put16(unsigned char *b, uint16_t v) {
  b[0] = (unsigned char)v;
  b[1] = (unsigned char)(v >> 8);
}

/* z[0..k-1] as little-endian dtype into out; GW_ENONFINITE if an element is
 * NaN/Inf or becomes Inf in dtype. */
static int encode_payload(const float *z, uint32_t k, uint8_t dtype, unsigned char *out) {
  uint32_t bad = 0;
  switch (dtype) {
  case GW_DTYPE_F32:
    for (uint32_t i = 0; i < k; i++) {
      uint32_t u;
      memcpy(&u, &z[i], 4);
      bad |= (u & 0x7F800000u) == 0x7F800000u;
      put16(out + 4 * (size_t)i, (uint16_t)u);
      put16(out + 4 * (size_t)i + 2, (uint16_t)(u >> 16));
    }
    break;
  case GW_DTYPE_F16:
    for (uint32_t i = 0; i < k; i++) {
      uint16_t h = gw_f32_to_f16(z[i]);
      bad |= (h & 0x7C00u) == 0x7C00u;
      put16(out + 2 * (size_t)i, h);
    }
    break;
  case GW_DTYPE_BF16:
    for (uint32_t i = 0; i < k; i++) {
      uint16_t h = gw_f32_to_bf16(z[i]);
      bad |= (h & 0x7F80u) == 0x7F80u;
      put16(out + 2 * (size_t)i, h);
    }
    break;
  default:
    assert(0 && "dtype checked at creation");
    return GW_EDTYPE;
  }
  return bad ? GW_ENONFINITE : 0;
}

static int64_t wall_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int drop(gw_publisher_t *p, int err) {
  if (err != EAGAIN) p->last_error = -err;
  p->dropped++;
  return GW_PUBLISH_DROPPED;
}

/* Send the metadata message if one is set and it is due (set, a daemon
 * arrived, or META_EVERY_NS passed). Counted in meta_sent only. */
static void meta_tick(gw_publisher_t *p) {
  if (!p->meta_body) return;
  int64_t now = mono_ns();
  if (!p->meta_due && now - p->meta_sent_ns < META_EVERY_NS) return;
  p->meta_due = 0;
  p->meta_sent_ns = now;
  if (p->socket == GW_PUBLISHER_PUB && !matches(p, p->meta_topic, (size_t)p->meta_topic_len)) {
    p->meta_due = 1; /* nobody to tell yet */
    return;
  }
  if (zmq_send(p->sock, p->meta_topic, (size_t)p->meta_topic_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) {
    p->meta_due = 1;
    return;
  }
  if (zmq_send(p->sock, p->meta_body, p->meta_len, ZMQ_DONTWAIT) >= 0) p->meta_sent++;
}

int gw_publisher_set_meta(gw_publisher_t *pub, const char *doc) {
  unsigned char *b;
  size_t n;
  int rc;
  if (pub == NULL) return GW_EINVAL;
  if (doc == NULL) {
    free(pub->meta_body);
    pub->meta_body = NULL;
    return 0;
  }
  if (pub->incarnation == 0) return GW_EVERSION; /* wire version 1: no incarnation to name */
  n = strlen(doc);
  if (n == 0) return GW_EMETA;
  if (n > GW_META_DOC_MAX) return GW_EMETASIZE;
  if ((rc = gw_meta_encode_topic(pub->run, pub->run_len, pub->meta_topic,
                                 sizeof pub->meta_topic)) < 0)
    return rc;
  pub->meta_topic_len = rc;
  if (!(b = malloc(GW_META_HEADER_SIZE + n))) return GW_ENOMEM;
  if ((rc = gw_meta_encode_body(pub->incarnation, wall_ns(), doc, n, b, GW_META_HEADER_SIZE + n)) < 0) {
    free(b);
    return rc;
  }
  free(pub->meta_body);
  pub->meta_body = b;
  pub->meta_len = (size_t)rc;
  pub->meta_due = 1;
  poll_peers(pub);
  meta_tick(pub);
  return 0;
}

uint64_t gw_publisher_meta_sent(const gw_publisher_t *pub) { return pub ? pub->meta_sent : 0; }

/* The first publish starts the no-daemon warning's clock (check_warn). */
static void mark_published(gw_publisher_t *p) {
  if (!p->published) {
    p->published = 1;
    p->first_publish_ns = mono_ns();
  }
}

/* Arguments already checked. Encode z into the body buffer and send.
 * peers: read pending (un)subscriptions first (a system call in ZeroMQ);
 * gw_publisher_publish_layers reads them once for all its messages. */
static int send_z(gw_publisher_t *p, const char *tag, uint64_t step, const float *z,
                  const gw_extras_t *x, int peers) {
  gw_msg_t m;
  int rc, tlen, blen;

  rc = encode_payload(z, p->sk.k, p->dtype, p->body + GW_PROTO_HEADER_SIZE);
  if (rc != 0) return rc;
  memset(&m, 0, sizeof m);
  m.run = p->run;
  m.run_len = p->run_len;
  m.tag = tag;
  m.tag_len = strlen(tag);
  m.version = p->version;
  m.incarnation = p->incarnation;
  m.dtype = p->dtype;
  m.kind = p->sk.kind;
  m.s = p->sk.s;
  m.k = p->sk.k;
  m.step = step;
  m.wall_ns = wall_ns();
  m.seed = p->sk.seed;
  if (x != NULL) {
    m.flags = x->flags;
    m.grad_norm = x->grad_norm;
    m.loss = x->loss;
    m.lr = x->lr;
  }
  m.payload = p->body + GW_PROTO_HEADER_SIZE; /* encode_body memmoves in place */
  m.payload_len = p->body_cap - GW_PROTO_HEADER_SIZE;
  if ((tlen = gw_proto_encode_topic(&m, p->topic, sizeof p->topic)) < 0) return tlen;
  if ((blen = gw_proto_encode_body(&m, p->body, p->body_cap)) < 0) return blen;

  mark_published(p);
  if (peers) {
    poll_peers(p);
    check_warn(p);
  }
  meta_tick(p);
  if (p->socket == GW_PUBLISHER_PUB && !matches(p, p->topic, (size_t)tlen))
    return drop(p, EAGAIN);
  if (zmq_send(p->sock, p->topic, (size_t)tlen, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0)
    return drop(p, errno);
  if (zmq_send(p->sock, p->body, (size_t)blen, ZMQ_DONTWAIT) < 0) return drop(p, errno);
  p->sent++;
  return 0;
}

int gw_publisher_publish_sketch(gw_publisher_t *pub, const char *tag, uint64_t step,
                                const float *z, const gw_extras_t *extras) {
  int rc;
  if (pub == NULL || tag == NULL || z == NULL) return GW_EINVAL;
  if ((rc = check_args(tag, step, extras)) != 0) return rc;
  return send_z(pub, tag, step, z, extras, 1);
}

/* ‖g‖ in float64 (four partial sums: independent chains, so the loop runs at
 * memory speed instead of one add latency per element). */
static double norm_f32(const float *g, size_t d) {
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  size_t i = 0;
  for (; i + 4 <= d; i += 4) {
    s0 += (double)g[i] * g[i];
    s1 += (double)g[i + 1] * g[i + 1];
    s2 += (double)g[i + 2] * g[i + 2];
    s3 += (double)g[i + 3] * g[i + 3];
  }
  for (; i < d; i++) s0 += (double)g[i] * g[i];
  return sqrt((s0 + s1) + (s2 + s3));
}

int gw_publisher_publish(gw_publisher_t *pub, const char *tag, uint64_t step,
                         const float *grad, size_t d, const gw_extras_t *extras) {
  gw_extras_t x = {0};
  int rc;

  if (pub == NULL || tag == NULL || (grad == NULL && d > 0)) return GW_EINVAL;
  if ((rc = check_args(tag, step, extras)) != 0) return rc;
  if (extras != NULL) x = *extras;
  if (!(x.flags & GW_HAS_GRAD_NORM)) {
    x.grad_norm = norm_f32(grad, d);
    if (!isfinite(x.grad_norm)) return GW_ENONFINITE;
    x.flags |= GW_HAS_GRAD_NORM;
  }
  /* What gw_sketch_f32 computes, into buffers kept between calls. */
  memset(pub->acc, 0, (size_t)pub->sk.k * sizeof *pub->acc);
  if ((rc = gw_sketch_accum_f32(&pub->sk, grad, d, 0, pub->acc)) != 0) return rc;
  for (uint32_t r = 0; r < pub->sk.k; r++) pub->z[r] = (float)pub->acc[r];
  return send_z(pub, tag, step, pub->z, &x, 1);
}

int gw_publisher_wait_subscribed(gw_publisher_t *pub, const char *tag, int timeout_ms) {
  char pre[GW_PROTO_TOPIC_MAX + 1];
  struct timespec t0, t;
  size_t len;
  int rc;

  if (pub == NULL) return GW_EINVAL;
  if (tag != NULL && (rc = check_tag(tag)) != 0) return rc;
  /* The topic, or (tag NULL) the run's topic prefix "gw1/<run>/". */
  len = (size_t)snprintf(pre, sizeof pre, "%s%s/%s", GW_PROTO_TOPIC_PREFIX, pub->run,
                         tag ? tag : "");
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (;;) {
    zmq_pollitem_t it = {pub->sock, 0, ZMQ_POLLIN, 0};
    long left = 50;
    poll_peers(pub);
    if (pub->socket == GW_PUBLISHER_PUB &&
        (tag ? matches(pub, pre, len) : matches_any_under(pub, pre, len)))
      return 0;
    if (timeout_ms >= 0) {
      clock_gettime(CLOCK_MONOTONIC, &t);
      long el = (t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000;
      if (el >= timeout_ms) return -ETIMEDOUT;
      if (timeout_ms - el < left) left = timeout_ms - el;
    }
    if (pub->socket == GW_PUBLISHER_PUSH) it.events = ZMQ_POLLOUT;
    rc = zmq_poll(&it, 1, left);
    if (rc < 0 && errno != EINTR) return -errno;
    if (pub->socket == GW_PUBLISHER_PUSH && rc > 0 && (it.revents & ZMQ_POLLOUT)) return 0;
  }
}

int gw_publisher_connected(gw_publisher_t *pub) {
  if (pub == NULL) return 0;
  poll_peers(pub);
  check_warn(pub);
  return pub->connected;
}

int gw_publisher_set_warn(gw_publisher_t *pub, gw_publisher_warn_fn fn, void *arg) {
  if (pub == NULL) return GW_EINVAL;
  pub->warn = fn;
  pub->warn_arg = arg;
  return 0;
}

uint64_t gw_publisher_incarnation(const gw_publisher_t *pub) {
  return pub ? pub->incarnation : 0;
}

uint64_t gw_publisher_sent(const gw_publisher_t *pub) { return pub ? pub->sent : 0; }

uint64_t gw_publisher_dropped(const gw_publisher_t *pub) { return pub ? pub->dropped : 0; }

int gw_publisher_last_error(const gw_publisher_t *pub) { return pub ? pub->last_error : 0; }

const char *gw_publisher_run(const gw_publisher_t *pub) { return pub ? pub->run : NULL; }

const gw_sketch_params_t *gw_publisher_sketch_params(const gw_publisher_t *pub) {
  return pub ? &pub->sk : NULL;
}

/* ---- a whole model per call (gw_publisher_publish_layers) ----------------
 * Every layer is sketched from its own buffer into its row of z, the sum
 * row is added up from the layer rows (the sketch is linear and each layer
 * is sketched at its global offset, so this is the sketch of the whole
 * gradient, without a second pass over it), then each stream is encoded
 * into the body buffer and sent like gw_publisher_publish_sketch. */

/* Send row zr (k float64) with norm gn as (tag, step); a gw_layer_status_t. */
static int send_row(gw_publisher_t *p, const char *tag, uint64_t step, const double *zr,
                    double gn, const gw_extras_t *x) {
  gw_extras_t e = *x;
  int rc;
  if (!isfinite(gn)) return GW_LAYER_NONFINITE;
  for (uint32_t r = 0; r < p->sk.k; r++) p->z[r] = (float)zr[r];
  e.flags |= GW_HAS_GRAD_NORM;
  e.grad_norm = gn;
  rc = send_z(p, tag, step, p->z, &e, 0);
  if (rc == GW_ENONFINITE) return GW_LAYER_NONFINITE;
  return rc == 0 ? GW_LAYER_SENT : GW_LAYER_DROPPED;
}

int gw_publisher_check_layers(const gw_publisher_t *pub, uint64_t step, const char *all_tag,
                              const gw_layer_t *layers, size_t m, const gw_extras_t *extras) {
  int rc;
  if (pub == NULL || (layers == NULL && m > 0) || step > STEP_MAX) return GW_EINVAL;
  if ((rc = check_extras(extras)) != 0) return rc;
  if (all_tag != NULL && (rc = check_tag(all_tag)) != 0) return rc;
  if (m >= SIZE_MAX / sizeof(double) / pub->sk.k - 1) return GW_EINVAL;
  for (size_t i = 0; i < m; i++) {
    const gw_sketch_buf_t *b = &layers[i].grad;
    if (layers[i].tag != NULL && (rc = check_tag(layers[i].tag)) != 0) return rc;
    if (b->data == NULL) continue; /* no gradient: n and dtype are not read */
    if (b->dtype < GW_GRAD_F32 || b->dtype > GW_GRAD_BF16) return GW_EINVAL;
    if (b->n > 0 && b->offset > UINT64_MAX - (b->n - 1)) return GW_EINVAL;
  }
  return 0;
}

int gw_publisher_publish_layers(gw_publisher_t *pub, uint64_t step, const char *all_tag,
                                const gw_layer_t *layers, size_t m,
                                const gw_extras_t *extras, double *z, double *norms,
                                uint8_t *status) {
  gw_extras_t x = {0};
  double *own_z = NULL, *own_n = NULL, sum_sq = 0.0;
  size_t k;
  int rc = 0;

  if ((rc = gw_publisher_check_layers(pub, step, all_tag, layers, m, extras)) != 0) return rc;
  if (extras != NULL) x = *extras;
  x.flags &= ~GW_HAS_GRAD_NORM;
  k = pub->sk.k;
  if (z == NULL) z = own_z = malloc((m + 1) * k * sizeof *z);
  if (norms == NULL) norms = own_n = malloc((m + 1) * sizeof *norms);
  if (z == NULL || norms == NULL) {
    rc = GW_ENOMEM;
    goto done;
  }

  /* Sketch: row 1+i per layer; a layer with no gradient is a row of zeros. */
  for (size_t i = 0; i < m && rc == 0; i++) {
    double *row = z + (1 + i) * k, sq = 0.0;
    if (layers[i].grad.data == NULL)
      memset(row, 0, k * sizeof *row);
    else
      rc = gw_sketch_bufs(&pub->sk, &layers[i].grad, 1, row, &sq);
    norms[1 + i] = sqrt(sq);
    sum_sq += sq;
  }
  if (rc != 0) goto done;
  memset(z, 0, k * sizeof *z);
  for (size_t i = 0; i < m; i++) {
    const double *row = z + (1 + i) * k;
    for (size_t r = 0; r < k; r++) z[r] += row[r];
  }
  norms[0] = sqrt(sum_sq);

  /* Send: the sum first, then the layers in order, after one look at the
   * subscriptions (send_row does not look again). */
  mark_published(pub);
  poll_peers(pub);
  check_warn(pub);
  for (size_t i = 0; i <= m; i++) {
    const char *tag = i == 0 ? all_tag : layers[i - 1].tag;
    int st = GW_LAYER_SKIPPED;
    if (tag != NULL && (i == 0 || layers[i - 1].grad.data != NULL))
      st = send_row(pub, tag, step, z + i * k, norms[i], &x);
    if (status != NULL) status[i] = (uint8_t)st;
  }
done:
  free(own_z);
  free(own_n);
  return rc;
}
