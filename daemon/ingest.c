/* ingest.c — ZeroMQ → proto → engine → sinks, on the libuv loop. See
 * ingest.h for the flow and the edge-triggered ZMQ_FD rule this file obeys.
 *
 * Threads and ownership: the loop thread owns the sockets, the watchers, the
 * stash and the producer side of every worker's ring; worker i owns its
 * engine (and so its streams) and the consumer side of its ring. Sinks are
 * called by workers under sink_mu, one call at a time. The reaper timer
 * (loop thread) only posts a cutoff to each worker; the worker retires its
 * own streams between messages. Start-up restores streams into the engines
 * before any worker or socket exists; gw_ingest_save reads them after every
 * worker has been joined.
 *
 * States of a socket watcher: polling (uv_poll active, waiting for an edge)
 * → draining (read until EAGAIN or the budget) → polling, or → pending (the
 * budget ran out with messages left: the shared uv_idle_t is started and
 * drains again on the next iteration) → polling. gw_ingest_stop moves every
 * watcher to closing; the struct is freed when the last handle's close
 * callback has run.
 */
#include "ingest.h"

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#include "gw_meta.h"
#include "gw_proto.h"
#include "ring.h"
#include "runmeta.h"
#include "util.h"

#define DRAIN_BUDGET 2048 /* messages per socket per loop turn */
#define ZAP_ENDPOINT "inproc://zeromq.zap.01"
#define CURVE_KEY_LEN 32
#define RING_BYTES ((size_t)8 << 20) /* per worker: ~7,000 k=256 messages */

typedef struct watcher_s {
  uv_poll_t poll;
  void *sock;
  gw_ingest_t *in;
  int pending; /* budget ran out (or a worker was full) with messages left */
  int is_zap;
} watcher_t;

typedef struct worker_s {
  gw_ingest_t *in;
  uint32_t index;
  pthread_t thread;
  int started;
  gw_engine_t *engine; /* owned; only this worker touches it once started */
  gw_owner_t owner;    /* the worker thread, once started */
  gw_ring_t ring;
  pthread_mutex_t mu; /* guards sleeping/stop for the condvar handshake */
  pthread_cond_t cv;
  int sleeping, stop;
  int dirty;                 /* loop thread: pushed since the last wake-up */
  _Atomic int64_t reap_before; /* posted by the reaper timer; 0 = nothing to do */
  double *z;                 /* scratch: payload as float64 */
  size_t streams;            /* engine's stream count last reported to stats */
} worker_t;

struct gw_ingest_s {
  uv_loop_t *loop;
  const gw_config_t *cfg;
  gw_stats_t *stats;
  gw_log_t *log;
  gw_sink_t sinks[GW_SINKS_MAX];
  size_t n_sinks;
  pthread_mutex_t sink_mu; /* serialises sinks, the shared rate limiter */
  void *zctx;
  watcher_t *w;
  size_t n_w;
  worker_t *workers;
  size_t n_workers;
  uv_idle_t idle;
  int idle_active;
  uv_async_t wake; /* a worker freed ring space while the loop was blocked */
  uv_timer_t reaper; /* every second: post the idle cutoff to the workers */
  atomic_int blocked;
  uint8_t *stash; /* the message that did not fit its worker's ring */
  size_t stash_len, stash_topic_len, stash_cap;
  worker_t *stash_worker;
  int open_handles; /* handles still to be closed before freeing */
  gw_ratelimit_t reject_rl;
  gw_engine_budget_t budget; /* stream state of every worker's engine */
  /* CURVE allow list: n_keys keys of 32 bytes */
  uint8_t (*keys)[CURVE_KEY_LEN];
  size_t n_keys;
};

uint32_t gw_ingest_shard_of(const char *run, size_t len, uint32_t n) {
  return n ? (uint32_t)(gw_fnv1a(GW_FNV_OFFSET, run, len) % n) : 0;
}

/* ---- rejections ---- */

/* Count and (rate-limited) log a rejection. Any thread. */
static void reject(gw_ingest_t *in, int code, const gw_msg_t *m) {
  gw_stats_reject(in->stats, code);
  uint64_t suppressed = 0;
  pthread_mutex_lock(&in->sink_mu);
  int allow = gw_ratelimit_allow(&in->reject_rl, gw_now_ns(), &suppressed);
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

/* ---- sinks ---- */

/* Engine stream ids are per worker; sinks get daemon-wide ones: local id ×
 * workers + worker index. */
static uint32_t global_id(const gw_ingest_t *in, const worker_t *w, uint32_t local) {
  return local * (uint32_t)in->n_workers + w->index;
}

static void ref_of(const gw_ingest_t *in, const worker_t *w, const gw_stream_info_t *info,
                   gw_stream_ref_t *ref) {
  ref->stream_id = global_id(in, w, info->stream_id);
  ref->run = info->run;
  ref->tag = info->tag;
  ref->k = info->k;
  ref->kind = info->kind;
  ref->s = info->s;
  ref->seed = info->seed;
  ref->incarnation = info->incarnation;
}

#define EACH_SINK(in, sk) for (const gw_sink_t *sk = (in)->sinks; sk < (in)->sinks + (in)->n_sinks; sk++)

/* Caller holds sink_mu (or runs before any worker exists). */
static void sinks_open(gw_ingest_t *in, const gw_stream_ref_t *ref, int how, uint64_t step,
                       int64_t recv_ns) {
  gw_open_t o = {.how = how, .step = step, .recv_ns = recv_ns};
  EACH_SINK(in, sk) if (sk->open) sk->open(sk->arg, ref, &o);
}

/* Everything one accepted message means downstream, in the order of
 * sink.h: open, restart, sketch, point. */
static void deliver(gw_ingest_t *in, worker_t *w, const gw_msg_t *m, const double *z,
                    const gw_engine_event_t *ev, const gw_point_t *local, int64_t recv_ns) {
  gw_stream_info_t info;
  if (gw_engine_stream_info(w->engine, ev->stream_id, &info) != 0) return;
  gw_stream_ref_t ref;
  ref_of(in, w, &info, &ref);
  pthread_mutex_lock(&in->sink_mu);
  if (ev->flags & GW_ENGINE_OPENED) sinks_open(in, &ref, GW_OPEN_NEW, m->step, recv_ns);
  if (ev->flags & GW_ENGINE_RESTARTED) {
    gw_restart_t r = {.reason = ev->reason, .step = m->step,
                      .prev_incarnation = ev->prev_incarnation,
                      .prev_last_step = ev->prev_last_step, .recv_ns = recv_ns};
    EACH_SINK(in, sk) if (sk->restart) sk->restart(sk->arg, &ref, &r);
    gw_stats_add(&in->stats->stream_restarts, 1);
    gw_log(in->log, GW_LOG_INFO, "stream_restart",
           "run=%s tag=%s step=%llu reason=%s incarnation=%llu prev_incarnation=%llu", info.run,
           info.tag, (unsigned long long)m->step, gw_restart_reason_name(ev->reason),
           (unsigned long long)info.incarnation, (unsigned long long)ev->prev_incarnation);
  }
  EACH_SINK(in, sk) if (sk->sketch) sk->sketch(sk->arg, &ref, m->step, z);
  if (local) {
    gw_point_t p = *local;
    p.stream_id = ref.stream_id;
    EACH_SINK(in, sk) if (sk->point) sk->point(sk->arg, &ref, &p);
  }
  pthread_mutex_unlock(&in->sink_mu);
}

/* gw_engine_reap callback: the stream is about to be dropped. */
static void on_retire(void *arg, const gw_stream_info_t *info) {
  worker_t *w = arg;
  gw_ingest_t *in = w->in;
  gw_stream_ref_t ref;
  ref_of(in, w, info, &ref);
  pthread_mutex_lock(&in->sink_mu);
  EACH_SINK(in, sk) if (sk->forget) sk->forget(sk->arg, &ref);
  pthread_mutex_unlock(&in->sink_mu);
}

/* ---- worker threads: engine → sinks ---- */

static void note_streams(worker_t *w) {
  size_t streams = gw_engine_stream_count(w->engine);
  if (streams != w->streams) { /* stats->streams is the sum over workers */
    atomic_fetch_add_explicit(&w->in->stats->streams, (uint64_t)streams - (uint64_t)w->streams,
                              memory_order_relaxed);
    w->streams = streams;
  }
}

static void reap(worker_t *w) {
  GW_ASSERT_OWNER(&w->owner);
  int64_t cutoff = atomic_exchange_explicit(&w->reap_before, 0, memory_order_acq_rel);
  if (cutoff == 0) return;
  size_t n = gw_engine_reap(w->engine, cutoff, on_retire, w);
  if (n) {
    gw_stats_add(&w->in->stats->streams_retired, n);
    note_streams(w);
  }
}

static void process(worker_t *w, const uint8_t *rec, uint32_t len, uint32_t tlen) {
  GW_ASSERT_OWNER(&w->owner);
  gw_ingest_t *in = w->in;
  gw_msg_t m;
  /* Validated by the loop thread already; decoding again only re-derives
   * the borrowed pointers into this copy. */
  int rc = gw_proto_decode(rec, tlen, rec + tlen, len - tlen, in->cfg->engine.max_k, &m);
  if (rc == 0) rc = gw_proto_read_payload(&m, w->z);
  gw_point_t p;
  gw_engine_event_t ev;
  int64_t recv_ns = gw_now_ns();
  if (rc == 0) rc = gw_engine_push_at(w->engine, &m, w->z, recv_ns, &p, &ev);
  if (rc < 0) {
    reject(in, rc, &m);
    return;
  }
  gw_stats_add(&in->stats->accepted, 1);
  note_streams(w);
  if (rc == 1) gw_stats_add(&in->stats->points, 1);
  deliver(in, w, &m, w->z, &ev, rc == 1 ? &p : NULL, recv_ns);
}

static void *worker_main(void *arg) {
  worker_t *w = arg;
  gw_ingest_t *in = w->in;
  gw_owner_claim(&w->owner);
  for (;;) {
    uint32_t len, tlen;
    reap(w);
    const uint8_t *rec = gw_ring_peek(&w->ring, &len, &tlen);
    if (rec) {
      process(w, rec, len, tlen);
      gw_ring_pop(&w->ring, len);
      if (atomic_load_explicit(&in->blocked, memory_order_acquire) &&
          gw_ring_used(&w->ring) < w->ring.cap / 2)
        uv_async_send(&in->wake);
      continue;
    }
    pthread_mutex_lock(&w->mu);
    while (gw_ring_used(&w->ring) == 0 && !w->stop &&
           atomic_load_explicit(&w->reap_before, memory_order_acquire) == 0) {
      w->sleeping = 1;
      pthread_cond_wait(&w->cv, &w->mu);
      w->sleeping = 0;
    }
    int done = w->stop && gw_ring_used(&w->ring) == 0;
    pthread_mutex_unlock(&w->mu);
    if (done) return NULL;
  }
}

static void wake_worker(worker_t *w) {
  pthread_mutex_lock(&w->mu);
  if (w->sleeping) pthread_cond_signal(&w->cv);
  pthread_mutex_unlock(&w->mu);
}

/* Loop thread, every second: streams silent for stream_idle seconds are
 * retired by their worker within about a second of reaching that age. */
static void on_reaper(uv_timer_t *t) {
  gw_ingest_t *in = t->data;
  int64_t cutoff = gw_now_ns() - (int64_t)in->cfg->stream_idle * 1000000000;
  for (size_t i = 0; i < in->n_workers; i++) {
    atomic_store_explicit(&in->workers[i].reap_before, cutoff, memory_order_release);
    wake_worker(&in->workers[i]);
  }
}

/* Streams are spread over workers by (run, tag), so a stream's messages stay
 * in order on one worker. */
static worker_t *route_name(gw_ingest_t *in, const char *run, size_t rl, const char *tag,
                            size_t tl) {
  return &in->workers[gw_stream_hash(run, rl, tag, tl) % in->n_workers];
}

static worker_t *route(gw_ingest_t *in, const gw_msg_t *m) {
  return route_name(in, m->run, m->run_len, m->tag, m->tag_len);
}

/* Loop thread: a run-metadata message (PROTOCOL.md §11). Rare and small
 * (at most 64 KiB), so it is validated and handed to the sinks here, under
 * sink_mu, without going through a worker: it belongs to no stream. */
static void handle_meta(gw_ingest_t *in, const void *topic, size_t tlen, const void *body,
                        size_t blen) {
  gw_meta_msg_t mm;
  cJSON *meta = NULL;
  char *doc = NULL, run[GW_PROTO_NAME_MAX + 1];
  int rc = gw_meta_decode(topic, tlen, body, blen, &mm);
  if (rc == 0) rc = gw_runmeta_parse(mm.doc, mm.doc_len, &meta);
  if (rc == 0 && !(doc = cJSON_PrintUnformatted(meta))) rc = GW_ENOMEM;
  cJSON_Delete(meta);
  if (rc != 0) {
    if (rc == GW_ENOMEM) gw_stats_reject(in->stats, rc);
    else reject(in, rc, NULL);
    free(doc);
    return;
  }
  if (in->cfg->shard_count > 1 &&
      gw_ingest_shard_of(mm.run, mm.run_len, in->cfg->shard_count) != in->cfg->shard_index) {
    free(doc); /* another daemon's run */
    return;
  }
  memcpy(run, mm.run, mm.run_len);
  run[mm.run_len] = '\0';
  gw_run_meta_t m = {.run = run, .incarnation = mm.incarnation, .wall_ns = mm.wall_ns,
                     .recv_ns = gw_now_ns(), .doc = doc};
  gw_stats_add(&in->stats->meta_accepted, 1);
  pthread_mutex_lock(&in->sink_mu);
  EACH_SINK(in, sk) if (sk->meta) sk->meta(sk->arg, &m);
  pthread_mutex_unlock(&in->sink_mu);
  gw_log(in->log, GW_LOG_INFO, "run_meta", "run=%s incarnation=%llu bytes=%zu", run,
         (unsigned long long)mm.incarnation, strlen(doc));
  free(doc);
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
  if (gw_meta_is_topic(topic, tlen)) {
    handle_meta(in, topic, tlen, body, blen);
    return 1;
  }
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
  if (gw_ring_push(&w->ring, topic, tlen, body, blen)) return 1;
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
  if (!gw_ring_push(&w->ring, t, in->stash_topic_len, t + in->stash_topic_len,
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
      int allow = gw_ratelimit_allow(&in->reject_rl, gw_now_ns(), &sup);
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
    gw_ring_free(&w->ring);
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
  in->open_handles = 3; /* the idle, async and reaper handles */
  for (size_t i = 0; i < in->n_w; i++)
    if (in->w[i].poll.data) in->open_handles++;
  for (size_t i = 0; i < in->n_w; i++)
    if (in->w[i].poll.data) uv_close((uv_handle_t *)&in->w[i].poll, on_closed);
  /* No more input; let the workers finish what was queued. */
  stop_workers(in);
  uv_close((uv_handle_t *)&in->idle, on_closed);
  uv_close((uv_handle_t *)&in->wake, on_closed);
  uv_close((uv_handle_t *)&in->reaper, on_closed);
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
  /* a peer that connects and never greets holds a descriptor: drop it */
  int hs = (int)in->cfg->zmq_handshake_ms;
  zmq_setsockopt(w->sock, ZMQ_HANDSHAKE_IVL, &hs, sizeof(hs));
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
  /* The stream cap is split evenly: a stream belongs to one worker. The
   * memory budget is shared: an atomic count every engine charges. */
  ec.max_streams = (cfg->engine.max_streams + in->n_workers - 1) / in->n_workers;
  gw_engine_budget_init(&in->budget, gw_config_stream_memory(cfg));
  ec.budget = &in->budget;
  gw_log(in->log, GW_LOG_INFO, "stream_memory_budget", "bytes=%llu full_stream_bytes=%zu",
         (unsigned long long)in->budget.limit,
         gw_engine_stream_bytes_fd(cfg->engine.max_k, cfg->engine.window, cfg->engine.fd_rows));
  if (!(in->workers = calloc(in->n_workers, sizeof(worker_t)))) return GW_ENOMEM;
  for (size_t i = 0; i < in->n_workers; i++) {
    worker_t *w = &in->workers[i];
    w->in = in;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    w->index = (uint32_t)i;
    atomic_init(&w->reap_before, 0);
    if (!(w->engine = gw_engine_new(&ec))) {
      snprintf(err, errlen, "engine: invalid window settings or out of memory");
      return GW_ECONFIG;
    }
    if (gw_ring_init(&w->ring, RING_BYTES) || !(w->z = malloc(sizeof(double) * cfg->engine.max_k)))
      return GW_ENOMEM;
  }
  return 0;
}

static int start_threads(gw_ingest_t *in) {
  for (size_t i = 0; i < in->n_workers; i++) {
    worker_t *w = &in->workers[i];
    int rc = pthread_create(&w->thread, NULL, worker_main, w);
    if (rc) return -rc;
    w->started = 1;
  }
  return 0;
}

/* ---- start-up: streams carried over a daemon restart ---- */

typedef struct {
  worker_t *w;
  const gw_ingest_resume_t *r;
  int64_t recv_ns;
  size_t n;
} replay_t;

/* gw_ingest_replay_fn callback: one stored sketch back through the engine. */
static int replay_one(void *arg, uint64_t step, const double *z, uint32_t k) {
  replay_t *rp = arg;
  const gw_ingest_resume_t *r = rp->r;
  gw_msg_t m;
  memset(&m, 0, sizeof m);
  m.run = r->run;
  m.run_len = strlen(r->run);
  m.tag = r->tag;
  m.tag_len = strlen(r->tag);
  m.k = k;
  m.kind = r->kind;
  m.s = r->s;
  m.seed = r->seed;
  m.step = step;
  m.incarnation = r->incarnation;
  int rc = gw_engine_push_at(rp->w->engine, &m, z, rp->recv_ns, NULL, NULL);
  if (rc < 0) return rc;
  rp->n++;
  return 0;
}

/* Bring one stream back into its worker's engine: its saved state, else a
 * replay of its stored sketches, else a stub that knows only its last step
 * (its next message starts a fresh window with a restart event). Returns
 * the restart reason a stub was made with, or 0 if the state came back. */
static int restore_one(gw_ingest_t *in, const gw_ingest_resume_t *r, gw_ingest_replay_fn replay,
                       void *replay_arg) {
  worker_t *w = route_name(in, r->run, strlen(r->run), r->tag, strlen(r->tag));
  int reason = GW_RESTART_NO_STATE;
  uint32_t id;
  int rc = GW_ENOTFOUND;
  if (r->state) {
    rc = gw_engine_stream_load(w->engine, r->state, r->state_len, &id);
    if (rc == GW_ECONFIG) reason = GW_RESTART_CONFIG;
  } else if (r->has_sketches && replay) {
    replay_t rp = {.w = w, .r = r, .recv_ns = r->last_seen_ns};
    rc = replay(replay_arg, r->run, r->tag, replay_one, &rp);
    if (rc == 0)
      rc = gw_engine_stream_find(w->engine, r->run, strlen(r->run), r->tag, strlen(r->tag), &id);
    if (rc == 0 && rp.n == 0) rc = GW_ENOTFOUND;
  }
  if (rc != 0 && rc != GW_ESTREAMS) {
    gw_stream_info_t info = {.run = r->run, .tag = r->tag, .k = r->k, .kind = r->kind,
                             .s = r->s, .seed = r->seed, .last_step = r->last_step,
                             .incarnation = r->incarnation, .last_recv_ns = r->last_seen_ns};
    int src = rc;
    rc = gw_engine_stream_stub(w->engine, &info, reason, &id);
    if (rc == 0)
      gw_log(in->log, GW_LOG_INFO, "stream_stub", "run=%s tag=%s reason=%s state_error=\"%s\"",
             r->run, r->tag, gw_restart_reason_name(reason), gw_strerror(src));
  }
  if (rc != 0) {
    gw_log(in->log, GW_LOG_WARN, "stream_not_restored", "run=%s tag=%s error=\"%s\"", r->run,
           r->tag, gw_strerror(rc));
    return rc;
  }
  gw_stream_info_t info;
  gw_engine_stream_info(w->engine, id, &info);
  gw_stream_ref_t ref;
  ref_of(in, w, &info, &ref);
  sinks_open(in, &ref, GW_OPEN_RESTORED, info.last_step, info.last_recv_ns);
  return info.n_messages > 0 ? 0 : reason;
}

static void restore_all(gw_ingest_t *in, const gw_ingest_restore_t *rs) {
  size_t exact = 0, stubs = 0, failed = 0;
  for (size_t i = 0; i < rs->n; i++) {
    int rc = restore_one(in, &rs->items[i], rs->replay, rs->replay_arg);
    if (rc < 0)
      failed++;
    else if (rc > 0)
      stubs++;
    else
      exact++;
  }
  for (size_t i = 0; i < in->n_workers; i++) note_streams(&in->workers[i]);
  if (rs->n)
    gw_log(in->log, GW_LOG_INFO, "streams_restored", "restored=%zu fresh=%zu failed=%zu", exact,
           stubs, failed);
}

int gw_ingest_save(gw_ingest_t *in, gw_ingest_save_fn put, void *arg, size_t *saved) {
  size_t n = 0;
  int rc = 0;
  for (size_t i = 0; i < in->n_workers && rc == 0; i++) {
    worker_t *w = &in->workers[i];
    assert(!w->started); /* joined: the engine is ours again */
    size_t count = gw_engine_stream_count(w->engine);
    for (uint32_t id = 0, seen = 0; seen < count && rc == 0; id++) {
      gw_stream_info_t info;
      if (gw_engine_stream_info(w->engine, id, &info) != 0) continue;
      seen++;
      if (info.n_messages == 0) continue; /* a stub: nothing to save, it stays live */
      void *blob;
      size_t len;
      if ((rc = gw_engine_stream_save(w->engine, id, &blob, &len))) break;
      rc = put(arg, info.run, info.tag, blob, len);
      free(blob);
      if (rc == 0) n++;
    }
  }
  if (saved) *saved = n;
  return rc;
}

int gw_ingest_start(gw_ingest_t **out, uv_loop_t *loop, const gw_config_t *cfg,
                    gw_stats_t *stats, gw_log_t *log, const gw_sink_t *sinks, size_t n_sinks,
                    const gw_ingest_restore_t *restore, char *err, size_t errlen) {
  *out = NULL;
  gw_ingest_t *in = calloc(1, sizeof(*in));
  if (!in) return GW_ENOMEM;
  int rc = GW_ENOMEM;
  char *sk = NULL; /* the daemon's Z85 CURVE secret key, 40 characters */
  in->loop = loop;
  in->cfg = cfg;
  in->stats = stats;
  in->log = log;
  if (n_sinks > GW_SINKS_MAX) {
    free(in);
    snprintf(err, errlen, "ingest: at most %d sinks", GW_SINKS_MAX);
    return GW_EINVAL;
  }
  for (size_t i = 0; i < n_sinks; i++) in->sinks[i] = sinks[i];
  in->n_sinks = n_sinks;
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
  uv_timer_init(loop, &in->reaper);
  in->reaper.data = in;
  if ((rc = start_workers(in, err, errlen))) goto fail;
  /* No worker thread and no socket yet: the engines are the loop thread's. */
  if (restore) restore_all(in, restore);
  if ((rc = start_threads(in))) goto fail;
  uv_timer_start(&in->reaper, on_reaper, 1000, 1000);

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
