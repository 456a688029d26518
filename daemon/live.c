/* live.c — the SSE hub: one shared ring of encoded events, a cursor per
 * client, suspend/resume, the notifier thread.
 *
 * NOTES ON THE DESIGN OF THE HUB
 *
 * Why a ring. Each event used to be copied into a queue per client, and a
 * client that never read made every publish cut and rescan its full queue:
 * with 250 stalled clients publishing cost ~0.8 ms per event (10,000 events
 * took 8 s) and each stalled client held its own megabytes. Now an event is
 * formatted once into one allocation (ev_t) and put in one ring; a client is
 * a cursor (seq: the next event to look at; cur/off: the event it is part-way
 * through, held by a reference so eviction cannot free it under the reader).
 * Publishing is: format, evict from the tail while over the total budget,
 * append at the head, maybe signal the notifier. O(1) in the clients.
 *
 * One mutex (live->mu) guards the ring, the client list and every cursor.
 * Bytes are positions in the stream of all events ever published (ev->pos,
 * live->end_pos), so "how far behind is this client" is end_pos minus its
 * position, whatever filters it has.
 *
 * Client states, moved by the functions named:
 *
 *   active ──reader finds nothing for it──▶ suspended   (MHD_suspend_connection)
 *   suspended ──notifier after a publish / heartbeat / close_clients──▶ active
 *                                                  (MHD_resume_connection)
 *   any ──sweep finds it over client_max_bytes──▶ dropped: shutdown(2) of its
 *         socket (or, if suspended, a resume whose reader ends the stream),
 *         so libmicrohttpd closes it at its next write
 *   any ──response freed by libmicrohttpd──▶ gone    (client_free)
 *
 * The reader runs in a libmicrohttpd thread with the response's mutex held;
 * it takes live->mu and may call MHD_suspend_connection. The notifier takes
 * live->mu and may call MHD_resume_connection, which is thread-safe. Since
 * "suspended" is only set and cleared under live->mu, resume is called
 * exactly once per suspend, and only while the connection is suspended
 * (libmicrohttpd requires both). libmicrohttpd frees a connection's response
 * (client_free, which unlinks under live->mu) before it closes the socket,
 * so the descriptor a linked client names is still that client's: shutdown
 * cannot hit another connection.
 *
 * Costs. publish: one allocation and one copy of the event text, O(1)
 * locking; a signal to the notifier only when some client is suspended and
 * no wake is pending. Notifier: O(clients) per batch of publishes and per
 * sweep (every GW_LIVE_SWEEP_MS), off the ingest thread. Memory: the ring
 * (total_max_bytes plus one event) plus, per client, its struct and at most
 * one event it is part-way through; libmicrohttpd adds its buffers per
 * connection.
 */
#include "live.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <cjson/cJSON.h>
#include <microhttpd.h>

#include "gw_error.h"
#include "numfmt.h"
#include "point.h"
#include "util.h"

#define BLOCK_SIZE 16384 /* most bytes handed to libmicrohttpd per call */
#define RING_SLOTS_MIN 1024u
#define RING_SLOTS_MAX ((size_t)1 << 20)
#define WAKE_BATCH_MS 20 /* resumes are batched over this long (live latency) */
#define SNDBUF_BYTES 16384 /* kernel send buffer of an SSE connection */
#define EVENT_MIN_BYTES 64 /* a point event is ~700 bytes; slots = total / this */

static const char RESYNC[] = "event: resync\ndata: {}\n\n";
static const char HEARTBEAT[] = ": hb\n\n";
static const char HELLO[] = "retry: 3000\n\n"; /* browser reconnect delay */

/* One encoded event, shared by every client. run/tag (inside the same
 * allocation, after text) say who takes it; NULL = every client. */
typedef struct ev_s {
  uint64_t pos;  /* offset of text[0] in the stream of all events */
  size_t len;
  unsigned refs; /* the ring's, plus one per client part-way through it */
  const char *run, *tag;
  char text[];
} ev_t;

typedef struct client_s {
  struct client_s *prev, *next;
  gw_live_t *live;
  struct MHD_Connection *conn;
  int fd;            /* the connection's socket (libmicrohttpd's) */
  unsigned char addr[16]; /* client address: IPv4 in 4 bytes, IPv6 in 16 */
  char *run, *tag;   /* filters, NULL = any */
  uint64_t seq;      /* next ring event to consider */
  ev_t *cur;         /* event part-way handed out (a reference), or NULL */
  size_t off;        /* bytes of cur handed out */
  char local[32];    /* this client's own text (hello, resync, heartbeat) */
  size_t loff, llen; /* only filled at an event boundary (cur == NULL) */
  int suspended;
  int dropped; /* over its share: its stream ends with an error */
  int linked;  /* in live's list */
} client_t;

struct gw_live_s {
  pthread_mutex_t mu;
  pthread_cond_t cv; /* wakes the notifier (publish, stop, interval change) */
  pthread_t th;
  uint32_t hb_ms;
  int stop;        /* notifier must exit */
  int closing;     /* gw_live_close_clients was called */
  int wake_pending; /* a publish happened while clients were suspended */
  gw_live_config_t cfg;
  gw_stats_t *stats;
  /* ring: events [tail, head) by sequence number, slot seq & mask */
  ev_t **ring;
  size_t mask;
  uint64_t tail, head;
  size_t ring_bytes;
  uint64_t end_pos; /* bytes ever published */
  client_t *head_client;
  size_t nclients, nsuspended;
  struct MHD_Connection **waking; /* notifier only: connections to resume */
  size_t wcap;
  int resuming;              /* the notifier is resuming them, unlocked */
  pthread_cond_t resumed_cv; /* resuming went back to 0 */
};

/* ---- ring ---- */

static void ev_unref(ev_t *e) {
  if (e && --e->refs == 0) free(e);
}

static void evict_one(gw_live_t *live) {
  ev_t *e = live->ring[live->tail & live->mask];
  live->ring[live->tail & live->mask] = NULL;
  live->ring_bytes -= e->len;
  live->tail++;
  ev_unref(e);
}

/* An event: text (n bytes) and the filters, in one allocation. */
static ev_t *ev_new(const char *text, size_t n, const char *run, const char *tag) {
  size_t rl = run ? strlen(run) + 1 : 0, tl = tag ? strlen(tag) + 1 : 0;
  ev_t *e = malloc(sizeof *e + n + rl + tl);
  if (!e) return NULL;
  e->len = n;
  e->refs = 1;
  memcpy(e->text, text, n);
  e->run = run ? memcpy(e->text + n, run, rl) : NULL;
  e->tag = tag ? memcpy(e->text + n + rl, tag, tl) : NULL;
  return e;
}

/* Append e (the ring takes the reference). With live->mu held. O(1)
 * amortised: each event is evicted once. */
static void ring_push(gw_live_t *live, ev_t *e) {
  if (e->len > live->cfg.total_max_bytes) { /* could never be held */
    gw_stats_add(&live->stats->live_dropped, live->nclients);
    ev_unref(e);
    return;
  }
  while (live->head != live->tail &&
         (live->head - live->tail > live->mask ||
          live->ring_bytes + e->len > live->cfg.total_max_bytes))
    evict_one(live);
  e->pos = live->end_pos;
  live->end_pos += e->len;
  live->ring[live->head & live->mask] = e;
  live->head++;
  live->ring_bytes += e->len;
  if (live->nsuspended && !live->wake_pending) {
    live->wake_pending = 1;
    pthread_cond_signal(&live->cv);
  }
}

static int matches(const client_t *c, const ev_t *e) {
  return (!c->run || !e->run || strcmp(c->run, e->run) == 0) &&
         (!c->tag || !e->tag || strcmp(c->tag, e->tag) == 0);
}

/* Where the client stands in the stream of all events. */
static uint64_t client_pos(const gw_live_t *live, const client_t *c) {
  if (c->cur) return c->cur->pos + c->off;
  if (c->seq < live->tail) return live->tail == live->head ? live->end_pos
                                                           : live->ring[live->tail & live->mask]->pos;
  if (c->seq < live->head) return live->ring[c->seq & live->mask]->pos;
  return live->end_pos;
}

static void set_local(client_t *c, const char *text, size_t n) {
  assert(!c->cur && c->loff == c->llen && n <= sizeof c->local);
  memcpy(c->local, text, n);
  c->loff = 0;
  c->llen = n;
}

/* Copy up to max bytes of what the client has not had yet into out. With
 * live->mu held. */
static size_t fill(gw_live_t *live, client_t *c, char *out, size_t max) {
  size_t k = 0;
  while (k < max) {
    if (c->loff < c->llen) {
      size_t n = c->llen - c->loff < max - k ? c->llen - c->loff : max - k;
      memcpy(out + k, c->local + c->loff, n);
      c->loff += n;
      k += n;
      continue;
    }
    if (c->cur) {
      size_t n = c->cur->len - c->off < max - k ? c->cur->len - c->off : max - k;
      memcpy(out + k, c->cur->text + c->off, n);
      c->off += n;
      k += n;
      if (c->off == c->cur->len) {
        ev_unref(c->cur);
        c->cur = NULL;
        c->off = 0;
      }
      continue;
    }
    if (c->seq < live->tail) { /* its events were evicted: start afresh */
      gw_stats_add(&live->stats->live_dropped, live->tail - c->seq);
      c->seq = live->head;
      set_local(c, RESYNC, sizeof RESYNC - 1);
      continue;
    }
    if (c->seq == live->head) break;
    ev_t *e = live->ring[c->seq & live->mask];
    c->seq++;
    if (!matches(c, e)) continue;
    c->cur = e;
    e->refs++;
    c->off = 0;
  }
  return k;
}

static void wake(gw_live_t *live, client_t *c) {
  if (c->suspended) {
    c->suspended = 0;
    live->nsuspended--;
    MHD_resume_connection(c->conn);
  }
}

/* Over its share: end its stream. A suspended client's reader ends it; a
 * busy one is blocked in a write libmicrohttpd retries when the socket is
 * writable, which shutdown makes it at once (and the write then fails). */
static void drop(gw_live_t *live, client_t *c) {
  c->dropped = 1;
  gw_stats_add(&live->stats->sse_dropped[GW_SSE_DROP_SLOW], 1);
  gw_stats_add(&live->stats->live_dropped, live->head - (c->seq < live->tail ? live->tail : c->seq));
  if (c->suspended) wake(live, c);
  else if (c->fd >= 0) shutdown(c->fd, SHUT_RDWR);
}

/* ---- libmicrohttpd callbacks ---- */

static ssize_t reader(void *cls, uint64_t pos, char *out, size_t max) {
  client_t *c = cls;
  gw_live_t *live = c->live;
  ssize_t n;
  (void)pos;
  pthread_mutex_lock(&live->mu);
  if (live->closing) {
    n = MHD_CONTENT_READER_END_OF_STREAM;
  } else if (c->dropped) {
    n = MHD_CONTENT_READER_END_WITH_ERROR;
  } else {
    size_t k = fill(live, c, out, max);
    if (k == 0) {
      c->suspended = 1;
      live->nsuspended++;
      MHD_suspend_connection(c->conn);
    }
    n = (ssize_t)k;
  }
  pthread_mutex_unlock(&live->mu);
  return n;
}

static void client_free(void *cls) {
  client_t *c = cls;
  gw_live_t *live = c->live;
  pthread_mutex_lock(&live->mu);
  if (c->linked) {
    if (c->prev) c->prev->next = c->next;
    else live->head_client = c->next;
    if (c->next) c->next->prev = c->prev;
    live->nclients--;
    if (c->suspended) live->nsuspended--; /* not expected: suspended ones are never freed */
    atomic_store_explicit(&live->stats->sse_clients, live->nclients, memory_order_relaxed);
  }
  ev_unref(c->cur);
  pthread_mutex_unlock(&live->mu);
  free(c->run);
  free(c->tag);
  free(c);
}

/* The connection's client address into a (16 bytes, zero-padded). */
static void conn_addr(struct MHD_Connection *conn, unsigned char a[16]) {
  const union MHD_ConnectionInfo *ci =
      MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
  memset(a, 0, 16);
  if (!ci || !ci->client_addr) return;
  if (ci->client_addr->sa_family == AF_INET)
    memcpy(a, &((const struct sockaddr_in *)(const void *)ci->client_addr)->sin_addr, 4);
  else if (ci->client_addr->sa_family == AF_INET6)
    memcpy(a, &((const struct sockaddr_in6 *)(const void *)ci->client_addr)->sin6_addr, 16);
}

int gw_live_serve(gw_live_t *live, struct MHD_Connection *conn, const char *run,
                  const char *tag, struct MHD_Response **out) {
  client_t *c;
  struct MHD_Response *r = NULL;
  *out = NULL;
  if (!(c = calloc(1, sizeof *c))) return GW_ENOMEM;
  c->live = live;
  c->conn = conn;
  const union MHD_ConnectionInfo *fi =
      MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
  c->fd = fi ? (int)fi->connect_fd : -1;
  /* A small kernel send buffer: a client that stops reading holds 64 KiB
   * of kernel memory (not the megabytes TCP autotuning grows to) and
   * stalls, so the sweep sees it fall behind. */
  int sndbuf = SNDBUF_BYTES;
  if (c->fd >= 0) setsockopt(c->fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
  conn_addr(conn, c->addr);
  set_local(c, HELLO, sizeof HELLO - 1);
  if ((run && !(c->run = strdup(run))) || (tag && !(c->tag = strdup(tag)))) goto nomem;
  r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, BLOCK_SIZE, reader,
                                        c, client_free);
  if (!r) goto nomem;
  pthread_mutex_lock(&live->mu);
  int rc = 0;
  if (live->closing) {
    rc = GW_EDENIED;
  } else if (live->nclients >= live->cfg.max_clients) {
    gw_stats_add(&live->stats->sse_dropped[GW_SSE_DROP_MAX_CLIENTS], 1);
    rc = GW_EFULL;
  } else {
    unsigned same = 0; /* O(clients), once per subscription */
    for (client_t *o = live->head_client; o; o = o->next)
      if (memcmp(o->addr, c->addr, sizeof c->addr) == 0) same++;
    if (same >= live->cfg.max_per_address) {
      gw_stats_add(&live->stats->sse_dropped[GW_SSE_DROP_PER_ADDRESS], 1);
      rc = GW_EFULL;
    }
  }
  if (rc) {
    pthread_mutex_unlock(&live->mu);
    MHD_destroy_response(r); /* frees c (client_free; not linked) */
    return rc;
  }
  c->seq = live->head; /* events from now on */
  c->linked = 1;
  c->next = live->head_client;
  if (live->head_client) live->head_client->prev = c;
  live->head_client = c;
  live->nclients++;
  atomic_store_explicit(&live->stats->sse_clients, live->nclients, memory_order_relaxed);
  pthread_mutex_unlock(&live->mu);
  *out = r;
  return 0;
nomem:
  free(c->run);
  free(c->tag);
  free(c);
  return GW_ENOMEM;
}

/* ---- publisher ---- */

/* Put one event in the ring for clients whose filters admit run/tag (NULL:
 * every client). Takes text (malloc'd, n bytes) and frees it. */
static int publish_text(gw_live_t *live, char *text, size_t n, const char *run,
                        const char *tag) {
  ev_t *e = text ? ev_new(text, n, run, tag) : NULL;
  free(text);
  pthread_mutex_lock(&live->mu);
  int rc = 0;
  if (!e) {
    gw_stats_add(&live->stats->live_dropped, live->nclients);
    rc = GW_ENOMEM;
  } else if (live->nclients == 0 || live->closing) {
    ev_unref(e);
  } else {
    ring_push(live, e);
  }
  pthread_mutex_unlock(&live->mu);
  return rc;
}

static size_t listeners(gw_live_t *live) {
  pthread_mutex_lock(&live->mu);
  size_t n = live->nclients;
  pthread_mutex_unlock(&live->mu);
  return n;
}

/* `event: <name>` with obj as its data, for the clients whose run filter
 * admits run (NULL: every client). Printed only if someone listens. */
static int publish_json(gw_live_t *live, const char *name, const cJSON *obj, const char *run) {
  if (listeners(live) == 0) return 0;
  char *json = cJSON_PrintUnformatted(obj);
  if (!json) return publish_text(live, NULL, 0, NULL, NULL);
  gw_buf_t b;
  gw_buf_init(&b);
  gw_buf_printf(&b, "event: %s\ndata: %s\n\n", name, json);
  free(json);
  size_t n = b.len;
  return publish_text(live, gw_buf_steal(&b), n, run, NULL);
}

/* cJSON's quoting of a string (run and tag are user data). */
static void put_string(gw_buf_t *b, const char *s) {
  cJSON *item = cJSON_CreateStringReference(s);
  char *q = item ? cJSON_PrintUnformatted(item) : NULL;
  if (q)
    gw_buf_puts(b, q);
  else
    b->oom = 1;
  cJSON_Delete(item);
  free(q);
}

/* The whole event text for a point, written directly (not as a cJSON tree:
 * this runs per point per publish). Metric names are constants from
 * point.h; numbers come from gw_fmt_double; run and tag are quoted by cJSON. */
static char *point_event(const char *run, const char *tag, const gw_point_t *p,
                         size_t *len) {
  char num[GW_NUMFMT_MAX + 40];
  gw_buf_t b;
  gw_buf_init(&b);
  gw_buf_puts(&b, "event: point\ndata: {\"run\":");
  put_string(&b, run);
  gw_buf_puts(&b, ",\"tag\":");
  put_string(&b, tag);
  gw_buf_printf(&b, ",\"step\":%" PRIu64, p->step);
  for (int i = 0; i < GW_METRIC_COUNT; i++) {
    double v = gw_point_get(p, i);
    const char *name = gw_metric_name(i);
    size_t k = strlen(name);
    num[0] = ',';
    num[1] = '"';
    assert(k + 4 + GW_NUMFMT_MAX <= sizeof num); /* names are short constants */
    memcpy(num + 2, name, k);
    num[k + 2] = '"';
    num[k + 3] = ':';
    k += 4;
    if (isfinite(v)) {
      k += (size_t)gw_fmt_double(num + k, v);
    } else {
      memcpy(num + k, "null", 4);
      k += 4;
    }
    gw_buf_append(&b, num, k);
  }
  gw_buf_puts(&b, "}\n\n");
  *len = b.len;
  return gw_buf_steal(&b);
}

int gw_live_publish_point(gw_live_t *live, const char *run, const char *tag,
                          const gw_point_t *p) {
  size_t len = 0;
  if (listeners(live) == 0) return 0; /* nobody listens: skip building the text */
  char *ev = point_event(run, tag, p, &len);
  return publish_text(live, ev, len, run, tag);
}

int gw_live_publish_alert(gw_live_t *live, const char *json_object) {
  int rc;
  cJSON *o = cJSON_Parse(json_object);
  if (!o) return GW_EINVAL; /* also on ENOMEM; the caller made the text */
  if (!cJSON_IsObject(o)) {
    cJSON_Delete(o);
    return GW_EINVAL;
  }
  const cJSON *r = cJSON_GetObjectItemCaseSensitive(o, "run");
  rc = publish_json(live, "alert", o, cJSON_IsString(r) ? r->valuestring : NULL);
  cJSON_Delete(o);
  return rc;
}

int gw_live_publish_restart(gw_live_t *live, const gw_stream_ref_t *s, const gw_restart_t *r) {
  char inc[24], prev[24];
  snprintf(inc, sizeof inc, "%" PRIu64, s->incarnation);
  snprintf(prev, sizeof prev, "%" PRIu64, r->prev_incarnation);
  cJSON *o = cJSON_CreateObject();
  int ok = o && cJSON_AddStringToObject(o, "run", s->run) && cJSON_AddStringToObject(o, "tag", s->tag) &&
           cJSON_AddNumberToObject(o, "step", (double)r->step) &&
           cJSON_AddStringToObject(o, "incarnation", inc) &&
           cJSON_AddStringToObject(o, "prev_incarnation", prev) &&
           cJSON_AddStringToObject(o, "reason", gw_restart_reason_name(r->reason)) &&
           cJSON_AddNumberToObject(o, "time", (double)r->recv_ns * 1e-9);
  int rc = ok ? publish_json(live, "restart", o, s->run) : GW_ENOMEM;
  cJSON_Delete(o);
  return rc;
}

/* ---- as a sink (sink.h) ---- */

static void sink_point(void *arg, const gw_stream_ref_t *s, const gw_point_t *p) {
  gw_live_publish_point(arg, s->run, s->tag, p);
}

static void sink_restart(void *arg, const gw_stream_ref_t *s, const gw_restart_t *r) {
  gw_live_publish_restart(arg, s, r);
}

void gw_live_sink(gw_live_t *live, gw_sink_t *out) {
  memset(out, 0, sizeof *out);
  out->name = "live";
  out->arg = live;
  out->point = sink_point;
  out->restart = sink_restart;
}

/* ---- notifier: wakes, heartbeats, sweeps ---- */

static void sweep(gw_live_t *live) {
  for (client_t *c = live->head_client; c; c = c->next)
    if (!c->dropped && !c->suspended &&
        live->end_pos - client_pos(live, c) > live->cfg.client_max_bytes)
      drop(live, c);
}

/* Resume every suspended client. Under live->mu they are only marked
 * active and collected; the resumes (a syscall each) run with the lock
 * released, so publish never waits on them. That is safe: a connection
 * stays suspended, so libmicrohttpd neither reads nor frees it, until its
 * resume below; and no one else resumes it since it is no longer marked
 * suspended. */
static void wake_all(gw_live_t *live) {
  size_t n = 0;
  if (live->nsuspended > live->wcap) {
    size_t cap = live->nsuspended * 2;
    struct MHD_Connection **w = realloc(live->waking, cap * sizeof *w);
    if (!w) { /* no room to collect: resume under the lock */
      for (client_t *c = live->head_client; c && live->nsuspended; c = c->next) wake(live, c);
      return;
    }
    live->waking = w;
    live->wcap = cap;
  }
  for (client_t *c = live->head_client; c && live->nsuspended; c = c->next)
    if (c->suspended) {
      c->suspended = 0;
      live->nsuspended--;
      live->waking[n++] = c->conn;
    }
  live->resuming = 1;
  pthread_mutex_unlock(&live->mu);
  for (size_t i = 0; i < n; i++) MHD_resume_connection(live->waking[i]);
  pthread_mutex_lock(&live->mu);
  live->resuming = 0;
  pthread_cond_broadcast(&live->resumed_cv);
}

static uint64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void *notifier(void *arg) {
  gw_live_t *live = arg;
  pthread_mutex_lock(&live->mu);
  uint64_t next_hb = mono_ms() + live->hb_ms, next_sweep = mono_ms() + GW_LIVE_SWEEP_MS;
  while (!live->stop) {
    if (!live->wake_pending) {
      uint64_t until = next_hb < next_sweep ? next_hb : next_sweep;
      struct timespec ts;
      ts.tv_sec = (time_t)(until / 1000u);
      ts.tv_nsec = (long)(until % 1000u) * 1000000L;
      pthread_cond_timedwait(&live->cv, &live->mu, &ts); /* the condvar's clock */
    }
    if (live->stop) break;
    uint64_t now = mono_ms();
    if (live->wake_pending) {
      /* Wake every suspended client, then stay "pending" for WAKE_BATCH_MS
       * so publishers do not signal again: one pass per batch of events,
       * not per event. */
      uint64_t h0 = live->head;
      wake_all(live);
      struct timespec ts;
      clock_gettime(CLOCK_MONOTONIC, &ts);
      ts.tv_nsec += WAKE_BATCH_MS * 1000000L;
      if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
      }
      pthread_cond_timedwait(&live->cv, &live->mu, &ts);
      if (live->head == h0 || !live->nsuspended) live->wake_pending = 0;
      if (live->stop) break;
      now = mono_ms();
    }
    if (now >= next_sweep) {
      sweep(live);
      next_sweep = now + GW_LIVE_SWEEP_MS;
    }
    if (next_hb > now + live->hb_ms) next_hb = now + live->hb_ms; /* interval shortened */
    if (now >= next_hb) {
      /* Only idle (suspended) clients need it; a busy one is sending. */
      for (client_t *c = live->head_client; c; c = c->next)
        if (c->suspended && !live->closing && !c->cur && c->loff == c->llen) {
          set_local(c, HEARTBEAT, sizeof HEARTBEAT - 1);
          wake(live, c);
        }
      next_hb = now + live->hb_ms;
    }
  }
  pthread_mutex_unlock(&live->mu);
  return NULL;
}

void gw_live_set_heartbeat_ms(gw_live_t *live, uint32_t ms) {
  pthread_mutex_lock(&live->mu);
  live->hb_ms = ms ? ms : GW_LIVE_HEARTBEAT_MS;
  pthread_cond_signal(&live->cv);
  pthread_mutex_unlock(&live->mu);
}

/* ---- life cycle ---- */

int gw_live_new(gw_live_t **out, const gw_live_config_t *cfg, gw_stats_t *stats) {
  gw_live_t *live;
  int rc;
  *out = NULL;
  if (!(live = calloc(1, sizeof *live))) return GW_ENOMEM;
  if (cfg) live->cfg = *cfg;
  if (!live->cfg.total_max_bytes) live->cfg.total_max_bytes = GW_LIVE_TOTAL_MAX_DEFAULT;
  if (!live->cfg.client_max_bytes) live->cfg.client_max_bytes = GW_LIVE_CLIENT_MAX_DEFAULT;
  if (live->cfg.total_max_bytes < 4096) live->cfg.total_max_bytes = 4096;
  if (live->cfg.client_max_bytes < 4096) live->cfg.client_max_bytes = 4096;
  if (live->cfg.client_max_bytes > live->cfg.total_max_bytes)
    live->cfg.client_max_bytes = live->cfg.total_max_bytes;
  if (!live->cfg.max_clients) live->cfg.max_clients = GW_LIVE_MAX_CLIENTS_DEFAULT;
  if (!live->cfg.max_per_address) live->cfg.max_per_address = GW_LIVE_MAX_PER_ADDRESS_DEFAULT;
  size_t slots = RING_SLOTS_MIN;
  while (slots < live->cfg.total_max_bytes / EVENT_MIN_BYTES && slots < RING_SLOTS_MAX) slots *= 2;
  live->mask = slots - 1;
  live->hb_ms = GW_LIVE_HEARTBEAT_MS;
  live->stats = stats;
  if (!(live->ring = calloc(slots, sizeof *live->ring))) {
    free(live);
    return GW_ENOMEM;
  }
  pthread_condattr_t ca;
  if ((rc = pthread_condattr_init(&ca)) != 0) goto fail_mu;
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* immune to clock steps */
  if ((rc = pthread_mutex_init(&live->mu, NULL)) != 0) {
    pthread_condattr_destroy(&ca);
    goto fail_mu;
  }
  rc = pthread_cond_init(&live->cv, &ca);
  pthread_condattr_destroy(&ca);
  if (rc != 0) goto fail_cv;
  if ((rc = pthread_cond_init(&live->resumed_cv, NULL)) != 0) {
    pthread_cond_destroy(&live->cv);
    goto fail_cv;
  }
  if ((rc = pthread_create(&live->th, NULL, notifier, live)) != 0) goto fail_thread;
  *out = live;
  return 0;
fail_thread:
  pthread_cond_destroy(&live->resumed_cv);
  pthread_cond_destroy(&live->cv);
fail_cv:
  pthread_mutex_destroy(&live->mu);
fail_mu:
  free(live->ring);
  free(live);
  return rc == ENOMEM ? GW_ENOMEM : -rc;
}

void gw_live_close_clients(gw_live_t *live) {
  pthread_mutex_lock(&live->mu);
  live->closing = 1;
  /* libmicrohttpd may be stopped once this returns: no resume may be in
   * flight then. */
  while (live->resuming) pthread_cond_wait(&live->resumed_cv, &live->mu);
  for (client_t *c = live->head_client; c; c = c->next) wake(live, c);
  pthread_mutex_unlock(&live->mu);
}

size_t gw_live_client_count(gw_live_t *live) { return listeners(live); }

void gw_live_free(gw_live_t *live) {
  if (!live) return;
  pthread_mutex_lock(&live->mu);
  live->stop = 1;
  pthread_cond_signal(&live->cv);
  pthread_mutex_unlock(&live->mu);
  pthread_join(live->th, NULL);
  /* Clients are owned by libmicrohttpd responses; all must be gone. */
  assert(live->nclients == 0);
  while (live->tail != live->head) evict_one(live);
  free(live->ring);
  free(live->waking);
  pthread_cond_destroy(&live->resumed_cv);
  pthread_cond_destroy(&live->cv);
  pthread_mutex_destroy(&live->mu);
  free(live);
}
