/* ingest.c — ZeroMQ → proto → engine → sinks, on the libuv loop. See
 * ingest.h for the flow and the edge-triggered ZMQ_FD rule this file obeys.
 *
 * States of a socket watcher: polling (uv_poll active, waiting for an edge)
 * → draining (read until EAGAIN or the budget) → polling, or → pending (the
 * budget ran out with messages left: the shared uv_idle_t is started and
 * drains again on the next iteration) → polling. gw_ingest_stop moves every
 * watcher to closing; the struct is freed when the last handle's close
 * callback has run.
 */
#include "ingest.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#include "gw_proto.h"
#include "live.h"
#include "metrics.h"
#include "store.h"

#define DRAIN_BUDGET 2048 /* messages per socket per loop turn */
#define ZAP_ENDPOINT "inproc://zeromq.zap.01"
#define CURVE_KEY_LEN 32

typedef struct watcher_s {
  uv_poll_t poll;
  void *sock;
  gw_ingest_t *in;
  int pending; /* budget ran out with messages left */
  int is_zap;
} watcher_t;

struct gw_ingest_s {
  uv_loop_t *loop;
  const gw_config_t *cfg;
  gw_engine_t *engine;
  gw_stats_t *stats;
  gw_log_t *log;
  gw_ingest_sinks_t sinks;
  void *zctx;
  watcher_t *w;
  size_t n_w;
  uv_idle_t idle;
  int idle_active;
  int open_handles; /* handles still to be closed before freeing */
  double *z;        /* scratch: payload as float64, max_k long */
  uint32_t z_cap;
  gw_ratelimit_t reject_rl;
  /* CURVE allow list: n_keys keys of 32 bytes */
  uint8_t (*keys)[CURVE_KEY_LEN];
  size_t n_keys;
};

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

uint32_t gw_ingest_shard_of(const char *run, size_t len, uint32_t n) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < len; i++) {
    h ^= (uint8_t)run[i];
    h *= 0x100000001b3ull;
  }
  return n ? (uint32_t)(h % n) : 0;
}

/* ---- rejections ---- */

static void reject(gw_ingest_t *in, int code, const gw_msg_t *m, int decoded) {
  gw_stats_reject(in->stats, code);
  uint64_t suppressed = 0;
  if (!gw_ratelimit_allow(&in->reject_rl, now_ns(), &suppressed)) return;
  if (decoded)
    gw_log(in->log, GW_LOG_WARN, "reject", "reason=%s run=%.*s tag=%.*s step=%llu suppressed=%llu",
           gw_err_reason(code), (int)m->run_len, m->run, (int)m->tag_len, m->tag,
           (unsigned long long)m->step, (unsigned long long)suppressed);
  else
    gw_log(in->log, GW_LOG_WARN, "reject", "reason=%s suppressed=%llu", gw_err_reason(code),
           (unsigned long long)suppressed);
}

/* ---- one message ---- */

static void deliver(gw_ingest_t *in, const gw_point_t *p, const double *z, uint32_t k) {
  gw_stream_info_t info;
  if (gw_engine_stream_info(in->engine, p->stream_id, &info) != 0) return;
  const gw_ingest_sinks_t *s = &in->sinks;
  if (s->store) {
    if (p->n == 1)
      gw_store_put_stream(s->store, p->stream_id, info.run, info.tag, info.k, info.kind,
                          info.s, info.seed);
    gw_store_put_point(s->store, p); /* GW_EFULL is counted by the store */
    if (in->cfg->store_sketches) gw_store_put_sketch(s->store, p->stream_id, p->step, z, k);
  }
  if (s->metrics) gw_metrics_observe(s->metrics, info.run, info.tag, p);
  if (s->live) gw_live_publish_point(s->live, info.run, info.tag, p);
}

static void handle(gw_ingest_t *in, zmq_msg_t *parts, int n_parts) {
  gw_msg_t m;
  gw_stats_add(&in->stats->received, 1);
  if (n_parts != 2) {
    reject(in, GW_EFRAMES, NULL, 0);
    return;
  }
  int rc = gw_proto_decode(zmq_msg_data(&parts[0]), zmq_msg_size(&parts[0]),
                           zmq_msg_data(&parts[1]), zmq_msg_size(&parts[1]),
                           in->cfg->engine.max_k, &m);
  if (rc) {
    reject(in, rc, NULL, 0);
    return;
  }
  if (in->cfg->shard_count > 1 &&
      gw_ingest_shard_of(m.run, m.run_len, in->cfg->shard_count) != in->cfg->shard_index)
    return; /* another daemon's run: not ours, not an error */
  if ((rc = gw_proto_read_payload(&m, in->z))) {
    reject(in, rc, &m, 1);
    return;
  }
  gw_point_t p;
  rc = gw_engine_push_f64(in->engine, &m, in->z, &p);
  if (rc < 0) {
    reject(in, rc, &m, 1);
    return;
  }
  gw_stats_add(&in->stats->accepted, 1);
  atomic_store_explicit(&in->stats->streams, gw_engine_stream_count(in->engine),
                        memory_order_relaxed);
  if (rc == 1) {
    gw_stats_add(&in->stats->points, 1);
    deliver(in, &p, in->z, m.k);
  }
}

/* Read one whole multipart message; 1 if read, 0 on EAGAIN, <0 on error.
 * Frames past the second are read and discarded (the message is rejected
 * as bad_frames): libzmq delivers all parts of a message atomically. */
static int recv_one(gw_ingest_t *in, void *sock) {
  zmq_msg_t parts[2];
  int n = 0, more = 1;
  while (more) {
    zmq_msg_t extra, *msg = n < 2 ? &parts[n] : &extra;
    zmq_msg_init(msg);
    if (zmq_msg_recv(msg, sock, ZMQ_DONTWAIT) < 0) {
      int e = zmq_errno();
      zmq_msg_close(msg);
      for (int i = 0; i < (n < 2 ? n : 2); i++) zmq_msg_close(&parts[i]);
      return n == 0 && e == EAGAIN ? 0 : -e;
    }
    more = zmq_msg_more(msg);
    if (msg == &extra) zmq_msg_close(msg);
    n++;
  }
  handle(in, parts, n);
  for (int i = 0; i < (n < 2 ? n : 2); i++) zmq_msg_close(&parts[i]);
  return 1;
}

/* ---- ZAP (CURVE authentication) ---- */

static int key_allowed(gw_ingest_t *in, const uint8_t *key, size_t len) {
  if (len != CURVE_KEY_LEN) return 0;
  for (size_t i = 0; i < in->n_keys; i++)
    if (memcmp(in->keys[i], key, CURVE_KEY_LEN) == 0) return 1;
  return 0;
}

static void zap_handle(gw_ingest_t *in, void *sock) {
  for (;;) {
    zmq_msg_t f[8];
    int n = 0, more = 1;
    while (more) {
      zmq_msg_t tmp, *msg = n < 8 ? &f[n] : &tmp;
      zmq_msg_init(msg);
      if (zmq_msg_recv(msg, sock, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(msg);
        for (int i = 0; i < (n < 8 ? n : 8); i++) zmq_msg_close(&f[i]);
        return; /* EAGAIN (n == 0) or broken request */
      }
      more = zmq_msg_more(msg);
      if (n >= 8) zmq_msg_close(msg);
      n++;
    }
    /* version, request id, domain, address, identity, mechanism, key */
    int ok = n >= 7 && zmq_msg_size(&f[5]) == 5 && !memcmp(zmq_msg_data(&f[5]), "CURVE", 5) &&
             key_allowed(in, zmq_msg_data(&f[6]), zmq_msg_size(&f[6]));
    const char *status = ok ? "200" : "400";
    const char *text = ok ? "OK" : "key not allowed";
    if (n >= 2) {
      zmq_send(sock, "1.0", 3, ZMQ_SNDMORE);
      zmq_send(sock, zmq_msg_data(&f[1]), zmq_msg_size(&f[1]), ZMQ_SNDMORE);
      zmq_send(sock, status, 3, ZMQ_SNDMORE);
      zmq_send(sock, text, strlen(text), ZMQ_SNDMORE);
      zmq_send(sock, "", 0, ZMQ_SNDMORE);
      zmq_send(sock, "", 0, 0);
    }
    if (!ok) {
      gw_stats_reject(in->stats, GW_EDENIED);
      uint64_t sup = 0;
      if (gw_ratelimit_allow(&in->reject_rl, now_ns(), &sup))
        gw_log(in->log, GW_LOG_WARN, "curve_denied", "suppressed=%llu",
               (unsigned long long)sup);
    }
    for (int i = 0; i < (n < 8 ? n : 8); i++) zmq_msg_close(&f[i]);
  }
}

/* Parse a file holding a Z85 public key: the first run of 40 Z85 characters
 * (a bare key, or zmq's zcert "public-key = \"...\"" line). */
static int load_key_file(const char *path, uint8_t out[CURVE_KEY_LEN]) {
  FILE *f = fopen(path, "r");
  if (!f) return -errno;
  char buf[4096];
  size_t len = fread(buf, 1, sizeof(buf) - 1, f);
  fclose(f);
  buf[len] = '\0';
  static const char z85[] =
      "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";
  size_t run = 0;
  for (size_t i = 0; i <= len; i++) {
    if (i < len && buf[i] && strchr(z85, buf[i])) {
      run++;
      continue;
    }
    if (run == 40) {
      char key[41];
      memcpy(key, buf + i - 40, 40);
      key[40] = '\0';
      return zmq_z85_decode(out, key) ? 0 : GW_EINVAL;
    }
    run = 0;
  }
  return GW_EINVAL;
}

int gw_ingest_reload_keys(gw_ingest_t *in) {
  if (!in->cfg->curve_allow) return 0;
  DIR *d = opendir(in->cfg->curve_allow);
  if (!d) return -errno;
  uint8_t (*keys)[CURVE_KEY_LEN] = NULL;
  size_t n = 0, cap = 0;
  struct dirent *de;
  int rc = 0;
  while ((de = readdir(d))) {
    if (de->d_name[0] == '.') continue;
    char path[4096];
    uint8_t key[CURVE_KEY_LEN];
    snprintf(path, sizeof(path), "%s/%s", in->cfg->curve_allow, de->d_name);
    if (load_key_file(path, key) != 0) {
      gw_log(in->log, GW_LOG_WARN, "curve_key_skipped", "file=%s", de->d_name);
      continue;
    }
    if (n == cap) {
      size_t nc = cap ? cap * 2 : 16;
      void *nk = realloc(keys, nc * CURVE_KEY_LEN);
      if (!nk) {
        rc = GW_ENOMEM;
        break;
      }
      keys = nk;
      cap = nc;
    }
    memcpy(keys[n++], key, CURVE_KEY_LEN);
  }
  closedir(d);
  if (rc) {
    free(keys);
    return rc;
  }
  free(in->keys);
  in->keys = keys;
  in->n_keys = n;
  gw_log(in->log, GW_LOG_INFO, "curve_keys_loaded", "count=%zu", n);
  return 0;
}

/* ---- the loop side ---- */

static int drain(watcher_t *w) {
  gw_ingest_t *in = w->in;
  if (w->is_zap) {
    zap_handle(in, w->sock);
    return 0;
  }
  for (int i = 0; i < DRAIN_BUDGET; i++) {
    int rc = recv_one(in, w->sock);
    if (rc == 0) return 0;
    if (rc < 0 && rc != -EINTR) {
      gw_log(in->log, GW_LOG_ERROR, "zmq_recv", "error=\"%s\"", zmq_strerror(-rc));
      return 0;
    }
  }
  return 1; /* budget spent: messages may be left */
}

static void update_idle(gw_ingest_t *in);

static void on_idle(uv_idle_t *h) {
  gw_ingest_t *in = h->data;
  for (size_t i = 0; i < in->n_w; i++)
    if (in->w[i].pending) in->w[i].pending = drain(&in->w[i]);
  update_idle(in);
}

static void update_idle(gw_ingest_t *in) {
  int any = 0;
  for (size_t i = 0; i < in->n_w; i++) any |= in->w[i].pending;
  if (any && !in->idle_active) {
    uv_idle_start(&in->idle, on_idle);
    in->idle_active = 1;
  } else if (!any && in->idle_active) {
    uv_idle_stop(&in->idle);
    in->idle_active = 0;
  }
}

static void on_poll(uv_poll_t *h, int status, int events) {
  watcher_t *w = h->data;
  if (status < 0) return;
  w->pending = drain(w);
  update_idle(w->in);
}

static void free_ingest(gw_ingest_t *in) {
  for (size_t i = 0; i < in->n_w; i++)
    if (in->w[i].sock) zmq_close(in->w[i].sock);
  if (in->zctx) zmq_ctx_term(in->zctx);
  free(in->w);
  free(in->z);
  free(in->keys);
  free(in);
}

static void on_closed(uv_handle_t *h) {
  gw_ingest_t *in = h->data;
  if (h->type == UV_POLL) in = ((watcher_t *)h->data)->in;
  if (--in->open_handles == 0) free_ingest(in);
}

void gw_ingest_stop(gw_ingest_t *in) {
  if (!in) return;
  in->open_handles = 1; /* the idle handle */
  for (size_t i = 0; i < in->n_w; i++)
    if (in->w[i].poll.data) in->open_handles++;
  for (size_t i = 0; i < in->n_w; i++)
    if (in->w[i].poll.data) uv_close((uv_handle_t *)&in->w[i].poll, on_closed);
  uv_close((uv_handle_t *)&in->idle, on_closed);
}

static int read_secret_key(const char *path, char z85[41], char *err, size_t errlen) {
  FILE *f = fopen(path, "r");
  if (!f) {
    snprintf(err, errlen, "curve-secret-key: %s: %s", path, strerror(errno));
    return GW_ECONFIG;
  }
  char buf[256];
  size_t len = fread(buf, 1, sizeof(buf) - 1, f);
  fclose(f);
  buf[len] = '\0';
  while (len && (buf[len - 1] == '\n' || buf[len - 1] == '\r' || buf[len - 1] == ' '))
    buf[--len] = '\0';
  if (len != 40) {
    snprintf(err, errlen, "curve-secret-key: %s: expected a 40-character Z85 key", path);
    return GW_ECONFIG;
  }
  memcpy(z85, buf, 41);
  return 0;
}

static int add_socket(gw_ingest_t *in, int type, const char *endpoint, const char *secret,
                      char *err, size_t errlen) {
  watcher_t *w = &in->w[in->n_w];
  w->in = in;
  w->is_zap = type == ZMQ_REP;
  if (!(w->sock = zmq_socket(in->zctx, type))) return GW_ENOMEM;
  in->n_w++;
  int hwm = (int)in->cfg->zmq_rcvhwm, linger = 0;
  int64_t maxsize = GW_PROTO_HEADER_SIZE + (int64_t)in->cfg->engine.max_k * 4 + 4096;
  zmq_setsockopt(w->sock, ZMQ_RCVHWM, &hwm, sizeof(hwm));
  zmq_setsockopt(w->sock, ZMQ_LINGER, &linger, sizeof(linger));
  if (!w->is_zap) zmq_setsockopt(w->sock, ZMQ_MAXMSGSIZE, &maxsize, sizeof(maxsize));
  if (secret) {
    int one = 1;
    zmq_setsockopt(w->sock, ZMQ_CURVE_SERVER, &one, sizeof(one));
    if (zmq_setsockopt(w->sock, ZMQ_CURVE_SECRETKEY, secret, 40) != 0) {
      snprintf(err, errlen, "curve-secret-key: rejected by libzmq: %s", zmq_strerror(zmq_errno()));
      return GW_ECONFIG;
    }
  }
  if (type == ZMQ_SUB) {
    if (in->cfg->n_zmq_subscribe == 0) {
      zmq_setsockopt(w->sock, ZMQ_SUBSCRIBE, GW_PROTO_TOPIC_PREFIX, 4);
    } else {
      for (size_t i = 0; i < in->cfg->n_zmq_subscribe; i++)
        zmq_setsockopt(w->sock, ZMQ_SUBSCRIBE, in->cfg->zmq_subscribe[i],
                       strlen(in->cfg->zmq_subscribe[i]));
    }
  }
  if (zmq_bind(w->sock, endpoint) != 0) {
    snprintf(err, errlen, "cannot bind %s: %s", endpoint, zmq_strerror(zmq_errno()));
    return GW_ECONFIG;
  }
  int fd;
  size_t fdlen = sizeof(fd);
  if (zmq_getsockopt(w->sock, ZMQ_FD, &fd, &fdlen) != 0) return GW_EIO;
  int rc = uv_poll_init(in->loop, &w->poll, fd);
  if (rc) return rc;
  w->poll.data = w;
  if ((rc = uv_poll_start(&w->poll, UV_READABLE, on_poll))) return rc;
  /* Messages may already be queued; the edge for them may have passed. */
  w->pending = 1;
  return 0;
}

int gw_ingest_start(gw_ingest_t **out, uv_loop_t *loop, const gw_config_t *cfg,
                    gw_engine_t *engine, gw_stats_t *stats, gw_log_t *log,
                    const gw_ingest_sinks_t *sinks, char *err, size_t errlen) {
  *out = NULL;
  gw_ingest_t *in = calloc(1, sizeof(*in));
  if (!in) return GW_ENOMEM;
  int rc = GW_ENOMEM;
  in->loop = loop;
  in->cfg = cfg;
  in->engine = engine;
  in->stats = stats;
  in->log = log;
  if (sinks) in->sinks = *sinks;
  in->reject_rl.per_sec = 10;
  in->z_cap = cfg->engine.max_k;
  size_t n_sock = cfg->n_zmq + cfg->n_zmq_pull + 1;
  if (!(in->z = malloc(sizeof(double) * in->z_cap)) || !(in->w = calloc(n_sock, sizeof(watcher_t))) ||
      !(in->zctx = zmq_ctx_new()))
    goto fail_early;
  if ((rc = uv_idle_init(loop, &in->idle))) goto fail_early;
  in->idle.data = in;

  char secret[41], *sk = NULL;
  if (cfg->curve_secret_key) {
    if (!zmq_has("curve")) {
      snprintf(err, errlen, "curve-secret-key: this libzmq has no CURVE support");
      rc = GW_ECONFIG;
      goto fail;
    }
    if ((rc = read_secret_key(cfg->curve_secret_key, secret, err, errlen))) goto fail;
    if ((rc = gw_ingest_reload_keys(in))) {
      snprintf(err, errlen, "curve-allow: %s: %s", cfg->curve_allow, gw_strerror(rc));
      rc = GW_ECONFIG;
      goto fail;
    }
    if ((rc = add_socket(in, ZMQ_REP, ZAP_ENDPOINT, NULL, err, errlen))) goto fail;
    sk = secret;
  }
  for (size_t i = 0; i < cfg->n_zmq; i++)
    if ((rc = add_socket(in, ZMQ_SUB, cfg->zmq[i], sk, err, errlen))) goto fail;
  for (size_t i = 0; i < cfg->n_zmq_pull; i++)
    if ((rc = add_socket(in, ZMQ_PULL, cfg->zmq_pull[i], sk, err, errlen))) goto fail;
  update_idle(in);
  *out = in;
  return 0;

fail:
  if (!err[0]) snprintf(err, errlen, "ingest: %s", rc > -1000 && rc < 0 ? uv_strerror(rc) : gw_strerror(rc));
  gw_ingest_stop(in); /* frees once the loop has closed the handles */
  return rc;
fail_early:
  if (!err[0]) snprintf(err, errlen, "ingest: out of memory");
  if (in->zctx) zmq_ctx_term(in->zctx);
  free(in->w);
  free(in->z);
  free(in);
  return rc;
}
