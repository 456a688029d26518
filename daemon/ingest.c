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
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#include "alerts.h"
#include "gw_proto.h"
#include "live.h"
#include "metrics.h"
#include "store.h"

#define DRAIN_BUDGET 2048 /* messages per socket per loop turn */
#define ZAP_ENDPOINT "inproc://zeromq.zap.01"
#define CURVE_KEY_LEN 32
#define RING_BYTES ((size_t)8 << 20) /* per worker: ~7,000 k=256 messages */
#define RING_SKIP UINT32_MAX         /* record header: rest of the ring unused */

typedef struct watcher_s {
  uv_poll_t poll;
  void *sock;
  gw_ingest_t *in;
  int pending; /* budget ran out (or a worker was full) with messages left */
  int is_zap;
} watcher_t;

/* Single-producer (loop thread) single-consumer (worker) byte ring of
 * records: u32 length of topic+body, u32 topic length, the bytes, padded to
 * 8. head and tail count bytes ever written/read; position = count % cap. */
typedef struct ring_s {
  uint8_t *buf;
  size_t cap;
  _Atomic size_t head;
  _Atomic size_t tail;
} ring_t;

typedef struct worker_s {
  gw_ingest_t *in;
  pthread_t thread;
  int started;
  gw_engine_t *engine; /* owned; only this worker touches it */
  ring_t ring;
  pthread_mutex_t mu; /* guards sleeping/stop for the condvar handshake */
  pthread_cond_t cv;
  int sleeping, stop;
  int dirty;      /* loop thread: pushed since the last wake-up */
  double *z;      /* scratch: payload as float64 */
  size_t streams; /* engine's stream count last reported to stats */
} worker_t;

struct gw_ingest_s {
  uv_loop_t *loop;
  const gw_config_t *cfg;
  gw_stats_t *stats;
  gw_log_t *log;
  gw_ingest_sinks_t sinks;
  pthread_mutex_t sink_mu; /* serialises sinks, the shared rate limiter */
  void *zctx;
  watcher_t *w;
  size_t n_w;
  worker_t *workers;
  size_t n_workers;
  uv_idle_t idle;
  int idle_active;
  uv_async_t wake; /* a worker freed ring space while the loop was blocked */
  atomic_int blocked;
  uint8_t *stash; /* the message that did not fit its worker's ring */
  size_t stash_len, stash_topic_len, stash_cap;
  worker_t *stash_worker;
  int open_handles; /* handles still to be closed before freeing */
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

#define FNV_OFFSET 0xcbf29ce484222325ull

/* FNV-1a 64: fold len bytes into h. */
static uint64_t fnv1a(uint64_t h, const void *bytes, size_t len) {
  const uint8_t *b = bytes;
  for (size_t i = 0; i < len; i++) h = (h ^ b[i]) * 0x100000001b3ull;
  return h;
}

uint32_t gw_ingest_shard_of(const char *run, size_t len, uint32_t n) {
  return n ? (uint32_t)(fnv1a(FNV_OFFSET, run, len) % n) : 0;
}

/* ---- rejections ---- */

/* Count and (rate-limited) log a rejection. Any thread. */
static void reject(gw_ingest_t *in, int code, const gw_msg_t *m) {
  gw_stats_reject(in->stats, code);
  uint64_t suppressed = 0;
  pthread_mutex_lock(&in->sink_mu);
  int allow = gw_ratelimit_allow(&in->reject_rl, now_ns(), &suppressed);
  pthread_mutex_unlock(&in->sink_mu);
  if (!allow) return;
  if (m)
    gw_log(in->log, GW_LOG_WARN, "reject", "reason=%s run=%.*s tag=%.*s step=%llu suppressed=%llu",
           gw_err_reason(code), (int)m->run_len, m->run, (int)m->tag_len, m->tag,
           (unsigned long long)m->step, (unsigned long long)suppressed);
  else
    gw_log(in->log, GW_LOG_WARN, "reject", "reason=%s suppressed=%llu", gw_err_reason(code),
           (unsigned long long)suppressed);
}

/* ---- the ring between the loop thread and a worker ---- */

static size_t pad8(size_t n) { return (n + 7) & ~(size_t)7; }

/* Loop thread: append one record; 0 if there is no room now. */
static int ring_push(ring_t *r, const void *topic, size_t tlen, const void *body, size_t blen) {
  size_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
  size_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
  size_t need = 8 + pad8(tlen + blen), pos = head % r->cap, skip = 0;
  if (r->cap - pos < need) skip = r->cap - pos; /* wrap: waste the end */
  if (need + skip > r->cap - (head - tail)) return 0;
  if (skip) {
    uint32_t mark[2] = {RING_SKIP, 0};
    if (skip >= 8) memcpy(r->buf + pos, mark, 8);
    head += skip;
    pos = 0;
  }
  uint32_t hdr[2] = {(uint32_t)(tlen + blen), (uint32_t)tlen};
  memcpy(r->buf + pos, hdr, 8);
  memcpy(r->buf + pos + 8, topic, tlen);
  memcpy(r->buf + pos + 8 + tlen, body, blen);
  atomic_store_explicit(&r->head, head + need, memory_order_release);
  return 1;
}

/* Worker: the next record, or NULL if empty. Consume with ring_pop. */
static const uint8_t *ring_peek(ring_t *r, uint32_t *len, uint32_t *tlen) {
  for (;;) {
    size_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
    size_t head = atomic_load_explicit(&r->head, memory_order_acquire);
    if (tail == head) return NULL;
    size_t pos = tail % r->cap;
    uint32_t hdr[2] = {RING_SKIP, 0};
    if (r->cap - pos >= 8) memcpy(hdr, r->buf + pos, 8);
    if (hdr[0] == RING_SKIP) { /* the producer wrapped here */
      atomic_store_explicit(&r->tail, tail + (r->cap - pos), memory_order_release);
      continue;
    }
    *len = hdr[0];
    *tlen = hdr[1];
    return r->buf + pos + 8;
  }
}

static void ring_pop(ring_t *r, uint32_t len) {
  size_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
  atomic_store_explicit(&r->tail, tail + 8 + pad8(len), memory_order_release);
}

static size_t ring_used(ring_t *r) {
  return atomic_load_explicit(&r->head, memory_order_acquire) -
         atomic_load_explicit(&r->tail, memory_order_acquire);
}

/* ---- worker threads: engine → sinks ---- */

/* Hand p to every sink. Called with sink_mu held, so sinks see one point
 * at a time, in order per stream. Engine stream ids are per worker; sinks
 * get daemon-wide ones: local id × workers + worker index. */
static void deliver(gw_ingest_t *in, worker_t *w, const gw_point_t *local, const double *z,
                    uint32_t k) {
  gw_stream_info_t info;
  if (gw_engine_stream_info(w->engine, local->stream_id, &info) != 0) return;
  gw_point_t global = *local;
  const gw_point_t *p = &global;
  global.stream_id = local->stream_id * (uint32_t)in->n_workers + (uint32_t)(w - in->workers);
  const gw_ingest_sinks_t *s = &in->sinks;
  if (s->store) {
    if (p->n == 1) { /* bridge until ingest calls the sinks' open/restart */
      gw_stream_ref_t ref = {p->stream_id, info.run, info.tag, info.k, info.kind, info.s,
                             info.seed, p->incarnation};
      gw_open_t o = {GW_OPEN_NEW, p->step, p->recv_ns};
      gw_store_open_stream(s->store, p->stream_id, &ref, &o);
    }
    gw_store_put_point(s->store, p); /* GW_EFULL is counted by the store */
    if (in->cfg->store_sketches) gw_store_put_sketch(s->store, p->stream_id, p->step, z, k);
  }
  if (s->metrics) gw_metrics_observe(s->metrics, info.run, info.tag, p);
  if (s->live) gw_live_publish_point(s->live, info.run, info.tag, p);
  if (s->alerts) gw_alerts_observe(s->alerts, info.run, info.tag, p, (int64_t)uv_hrtime());
}

static void process(worker_t *w, const uint8_t *rec, uint32_t len, uint32_t tlen) {
  gw_ingest_t *in = w->in;
  gw_msg_t m;
  /* Validated by the loop thread already; decoding again only re-derives
   * the borrowed pointers into this copy. */
  int rc = gw_proto_decode(rec, tlen, rec + tlen, len - tlen, in->cfg->engine.max_k, &m);
  if (rc == 0) rc = gw_proto_read_payload(&m, w->z);
  gw_point_t p;
  if (rc == 0) rc = gw_engine_push_f64(w->engine, &m, w->z, &p);
  if (rc < 0) {
    reject(in, rc, &m);
    return;
  }
  gw_stats_add(&in->stats->accepted, 1);
  size_t streams = gw_engine_stream_count(w->engine);
  if (streams != w->streams) { /* stats->streams is the sum over workers */
    atomic_fetch_add_explicit(&in->stats->streams, (uint64_t)streams - (uint64_t)w->streams,
                              memory_order_relaxed);
    w->streams = streams;
  }
  if (rc == 1) {
    gw_stats_add(&in->stats->points, 1);
    pthread_mutex_lock(&in->sink_mu);
    deliver(in, w, &p, w->z, m.k);
    pthread_mutex_unlock(&in->sink_mu);
  }
}

static void *worker_main(void *arg) {
  worker_t *w = arg;
  gw_ingest_t *in = w->in;
  for (;;) {
    uint32_t len, tlen;
    const uint8_t *rec = ring_peek(&w->ring, &len, &tlen);
    if (rec) {
      process(w, rec, len, tlen);
      ring_pop(&w->ring, len);
      if (atomic_load_explicit(&in->blocked, memory_order_acquire) &&
          ring_used(&w->ring) < w->ring.cap / 2)
        uv_async_send(&in->wake);
      continue;
    }
    pthread_mutex_lock(&w->mu);
    while (ring_used(&w->ring) == 0 && !w->stop) {
      w->sleeping = 1;
      pthread_cond_wait(&w->cv, &w->mu);
      w->sleeping = 0;
    }
    int done = w->stop && ring_used(&w->ring) == 0;
    pthread_mutex_unlock(&w->mu);
    if (done) return NULL;
  }
}

static void wake_worker(worker_t *w) {
  pthread_mutex_lock(&w->mu);
  if (w->sleeping) pthread_cond_signal(&w->cv);
  pthread_mutex_unlock(&w->mu);
}

/* Streams are spread over workers by (run, tag), so a stream's messages stay
 * in order on one worker. */
static worker_t *route(gw_ingest_t *in, const gw_msg_t *m) {
  uint64_t h = fnv1a(FNV_OFFSET, m->run, m->run_len);
  h = fnv1a(h, "/", 1);
  h = fnv1a(h, m->tag, m->tag_len);
  return &in->workers[h % in->n_workers];
}

/* Loop thread: validate, then queue for the stream's worker. Returns 0 if
 * the worker's ring was full (the message is kept in the stash). */
static int handle(gw_ingest_t *in, const zmq_msg_t *parts, int n_parts) {
  gw_msg_t m;
  gw_stats_add(&in->stats->received, 1);
  if (n_parts != 2) {
    reject(in, GW_EFRAMES, NULL);
    return 1;
  }
  const void *topic = zmq_msg_data((zmq_msg_t *)&parts[0]);
  const void *body = zmq_msg_data((zmq_msg_t *)&parts[1]);
  size_t tlen = zmq_msg_size((zmq_msg_t *)&parts[0]), blen = zmq_msg_size((zmq_msg_t *)&parts[1]);
  int rc = gw_proto_decode(topic, tlen, body, blen, in->cfg->engine.max_k, &m);
  if (rc) {
    reject(in, rc, NULL);
    return 1;
  }
  if (in->cfg->shard_count > 1 &&
      gw_ingest_shard_of(m.run, m.run_len, in->cfg->shard_count) != in->cfg->shard_index)
    return 1; /* another daemon's run: not ours, not an error */
  worker_t *w = route(in, &m);
  w->dirty = 1;
  if (ring_push(&w->ring, topic, tlen, body, blen)) return 1;
  /* Full: keep it, stop draining until the worker catches up. */
  memcpy(in->stash, topic, tlen);
  memcpy(in->stash + tlen, body, blen);
  in->stash_len = tlen + blen;
  in->stash_topic_len = tlen;
  in->stash_worker = w;
  atomic_store_explicit(&in->blocked, 1, memory_order_release);
  return 0;
}

static void wake_dirty(gw_ingest_t *in) {
  for (size_t i = 0; i < in->n_workers; i++)
    if (in->workers[i].dirty) {
      in->workers[i].dirty = 0;
      wake_worker(&in->workers[i]);
    }
}

/* Loop thread: retry the stashed message; 1 once it is queued. */
static int unstash(gw_ingest_t *in) {
  if (!in->stash_worker) return 1;
  worker_t *w = in->stash_worker;
  const uint8_t *t = in->stash;
  if (!ring_push(&w->ring, t, in->stash_topic_len, t + in->stash_topic_len,
                 in->stash_len - in->stash_topic_len)) {
    wake_worker(w);
    return 0;
  }
  in->stash_worker = NULL;
  atomic_store_explicit(&in->blocked, 0, memory_order_release);
  wake_worker(w);
  return 1;
}

/* Read one whole multipart message; 1 if read and queued, 2 if read but its
 * worker is full (stashed), 0 on EAGAIN, <0 on error. Frames past the second
 * are read and discarded (the message is rejected as bad_frames): libzmq
 * delivers all parts of a message atomically. */
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
  int queued = handle(in, parts, n);
  for (int i = 0; i < (n < 2 ? n : 2); i++) zmq_msg_close(&parts[i]);
  return queued ? 1 : 2;
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
      /* the limiter is shared with the workers' reject(): same lock */
      pthread_mutex_lock(&in->sink_mu);
      int allow = gw_ratelimit_allow(&in->reject_rl, now_ns(), &sup);
      pthread_mutex_unlock(&in->sink_mu);
      if (allow) {
        /* the peer's IP address, as libzmq puts it in the request */
        size_t al = n >= 4 ? zmq_msg_size(&f[3]) : 0;
        char addr[64], q[80];
        snprintf(addr, sizeof addr, "%.*s", (int)(al < 63 ? al : 63),
                 al ? (const char *)zmq_msg_data(&f[3]) : "");
        gw_log(in->log, GW_LOG_WARN, "curve_denied", "address=%s suppressed=%llu",
               gw_log_quote(q, sizeof q, addr), (unsigned long long)sup);
      }
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

/* Returns 1 if messages may be left (budget spent, or a worker is full). */
static int drain(watcher_t *w) {
  gw_ingest_t *in = w->in;
  if (w->is_zap) {
    zap_handle(in, w->sock);
    return 0;
  }
  if (atomic_load_explicit(&in->blocked, memory_order_acquire)) return 1;
  int more = 1;
  for (int i = 0; i < DRAIN_BUDGET; i++) {
    int rc = recv_one(in, w->sock);
    if (rc == 0) {
      more = 0;
      break;
    }
    if (rc == 2) break; /* blocked: the wake-up async resumes us */
    if (rc < 0 && rc != -EINTR) {
      gw_log(in->log, GW_LOG_ERROR, "zmq_recv", "error=\"%s\"", zmq_strerror(-rc));
      more = 0;
      break;
    }
  }
  wake_dirty(in);
  return more;
}

static void update_idle(gw_ingest_t *in);

static void on_idle(uv_idle_t *h) {
  gw_ingest_t *in = h->data;
  for (size_t i = 0; i < in->n_w; i++)
    if (in->w[i].pending) in->w[i].pending = drain(&in->w[i]);
  update_idle(in);
}

/* The idle handle runs while some socket has messages left, except while a
 * worker is full: then the wake-up async restarts draining. */
static void update_idle(gw_ingest_t *in) {
  int any = 0;
  for (size_t i = 0; i < in->n_w; i++) any |= in->w[i].pending;
  if (atomic_load_explicit(&in->blocked, memory_order_acquire)) any = 0;
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
  w->pending = drain(w) || w->pending;
  update_idle(w->in);
}

static void on_wake(uv_async_t *h) {
  gw_ingest_t *in = h->data;
  if (unstash(in)) update_idle(in);
}

static void stop_workers(gw_ingest_t *in) {
  /* A stashed message is still owed to its worker. */
  while (in->stash_worker && !unstash(in)) {
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
  }
  for (size_t i = 0; i < in->n_workers; i++) {
    worker_t *w = &in->workers[i];
    if (!w->started) continue;
    pthread_mutex_lock(&w->mu);
    w->stop = 1;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->thread, NULL); /* drains its ring first */
    w->started = 0;
  }
}

static void free_ingest(gw_ingest_t *in) {
  for (size_t i = 0; i < in->n_w; i++)
    if (in->w[i].sock) zmq_close(in->w[i].sock);
  if (in->zctx) zmq_ctx_term(in->zctx);
  for (size_t i = 0; in->workers && i < in->n_workers; i++) {
    worker_t *w = &in->workers[i];
    gw_engine_free(w->engine);
    free(w->ring.buf);
    free(w->z);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
  }
  pthread_mutex_destroy(&in->sink_mu);
  free(in->workers);
  free(in->w);
  free(in->stash);
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
  in->open_handles = 2; /* the idle and async handles */
  for (size_t i = 0; i < in->n_w; i++)
    if (in->w[i].poll.data) in->open_handles++;
  for (size_t i = 0; i < in->n_w; i++)
    if (in->w[i].poll.data) uv_close((uv_handle_t *)&in->w[i].poll, on_closed);
  /* No more input; let the workers finish what was queued. */
  stop_workers(in);
  uv_close((uv_handle_t *)&in->idle, on_closed);
  uv_close((uv_handle_t *)&in->wake, on_closed);
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

static int start_workers(gw_ingest_t *in, char *err, size_t errlen) {
  const gw_config_t *cfg = in->cfg;
  gw_engine_config_t ec = cfg->engine;
  /* The stream cap is split evenly: a stream belongs to one worker. */
  ec.max_streams = (cfg->engine.max_streams + in->n_workers - 1) / in->n_workers;
  if (!(in->workers = calloc(in->n_workers, sizeof(worker_t)))) return GW_ENOMEM;
  for (size_t i = 0; i < in->n_workers; i++) {
    worker_t *w = &in->workers[i];
    w->in = in;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    w->ring.cap = RING_BYTES;
    if (!(w->engine = gw_engine_new(&ec))) {
      snprintf(err, errlen, "engine: invalid window settings or out of memory");
      return GW_ECONFIG;
    }
    if (!(w->ring.buf = malloc(w->ring.cap)) || !(w->z = malloc(sizeof(double) * cfg->engine.max_k)))
      return GW_ENOMEM;
  }
  for (size_t i = 0; i < in->n_workers; i++) {
    worker_t *w = &in->workers[i];
    int rc = pthread_create(&w->thread, NULL, worker_main, w);
    if (rc) return -rc;
    w->started = 1;
  }
  return 0;
}

int gw_ingest_start(gw_ingest_t **out, uv_loop_t *loop, const gw_config_t *cfg,
                    gw_stats_t *stats, gw_log_t *log, const gw_ingest_sinks_t *sinks, char *err,
                    size_t errlen) {
  *out = NULL;
  gw_ingest_t *in = calloc(1, sizeof(*in));
  if (!in) return GW_ENOMEM;
  int rc = GW_ENOMEM;
  char *sk = NULL; /* the daemon's Z85 CURVE secret key, 40 characters */
  in->loop = loop;
  in->cfg = cfg;
  in->stats = stats;
  in->log = log;
  if (sinks) in->sinks = *sinks;
  in->reject_rl.per_sec = 10;
  in->n_workers = cfg->engine_threads ? cfg->engine_threads : 1;
  pthread_mutex_init(&in->sink_mu, NULL);
  size_t n_sock = cfg->n_zmq + cfg->n_zmq_pull + 1;
  in->stash_cap = GW_PROTO_TOPIC_MAX + GW_PROTO_HEADER_SIZE + (size_t)cfg->engine.max_k * 4;
  if (!(in->w = calloc(n_sock, sizeof(watcher_t))) || !(in->stash = malloc(in->stash_cap)) ||
      !(in->zctx = zmq_ctx_new()))
    goto fail_early;
  if ((rc = uv_idle_init(loop, &in->idle))) goto fail_early;
  in->idle.data = in;
  if ((rc = uv_async_init(loop, &in->wake, on_wake))) {
    uv_close((uv_handle_t *)&in->idle, NULL);
    goto fail_early;
  }
  in->wake.data = in;
  if ((rc = start_workers(in, err, errlen))) goto fail;

  if (cfg->curve_secret_key) {
    if (!zmq_has("curve")) {
      snprintf(err, errlen, "curve-secret-key: this libzmq has no CURVE support");
      rc = GW_ECONFIG;
      goto fail;
    }
    if ((rc = gw_config_read_secret("curve-secret-key", cfg->curve_secret_key, 40, 40, &sk, err,
                                    errlen)))
      goto fail;
    if ((rc = gw_ingest_reload_keys(in))) {
      snprintf(err, errlen, "curve-allow: %s: %s", cfg->curve_allow, gw_strerror(rc));
      rc = GW_ECONFIG;
      goto fail;
    }
    if ((rc = add_socket(in, ZMQ_REP, ZAP_ENDPOINT, NULL, err, errlen))) goto fail;
  }
  for (size_t i = 0; i < cfg->n_zmq; i++)
    if ((rc = add_socket(in, ZMQ_SUB, cfg->zmq[i], sk, err, errlen))) goto fail;
  for (size_t i = 0; i < cfg->n_zmq_pull; i++)
    if ((rc = add_socket(in, ZMQ_PULL, cfg->zmq_pull[i], sk, err, errlen))) goto fail;
  update_idle(in);
  free(sk);
  *out = in;
  return 0;

fail:
  free(sk);
  if (!err[0])
    snprintf(err, errlen, "ingest: %s", rc > -1000 && rc < 0 ? uv_strerror(rc) : gw_strerror(rc));
  gw_ingest_stop(in); /* frees once the loop has closed the handles */
  return rc;
fail_early:
  if (!err[0]) snprintf(err, errlen, "ingest: out of memory");
  if (in->zctx) zmq_ctx_term(in->zctx);
  pthread_mutex_destroy(&in->sink_mu);
  free(in->w);
  free(in->stash);
  free(in);
  return rc;
}
