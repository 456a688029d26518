/* live.c — the SSE hub: bounded per-client queues, suspend/resume, heartbeat.
 *
 * NOTES ON THE DESIGN OF THE HUB
 *
 * One mutex (live->mu) guards the client list and every client's queue.
 * A queue is a byte buffer holding [off, len): event text not yet handed to
 * libmicrohttpd. Events are appended whole; the reader callback hands out any
 * number of bytes, so at a given moment the head of the queue may be the tail
 * of an event whose start was already sent. last2 remembers the last two
 * bytes handed out: every event ends with "\n\n" and holds no other blank
 * line, so "the reader stands at an event boundary" is "last2 is \n\n".
 *
 * Client states, moved by the functions named:
 *
 *   active ──reader finds queue empty──▶ suspended   (MHD_suspend_connection)
 *   suspended ──publish / heartbeat / close_clients──▶ active   (MHD_resume_connection)
 *   any ──response freed by libmicrohttpd──▶ gone    (client_free)
 *
 * The reader runs in a libmicrohttpd thread with the response's mutex held;
 * it takes live->mu and may call MHD_suspend_connection. publish takes
 * live->mu and may call MHD_resume_connection, which is thread-safe. Since
 * "suspended" is only set and cleared under live->mu, resume is called
 * exactly once per suspend, and only while the connection is suspended
 * (libmicrohttpd requires both). A suspended connection is never closed by
 * libmicrohttpd, so it cannot be freed under us; the free callback takes
 * live->mu before unlinking, so publish never touches a dead client.
 *
 * Lagging. When an event does not fit a client's bound, the queue is cut
 * back to the end of the event the reader is in the middle of (so the client
 * never sees half an event), the dropped events are counted in
 * stats->live_dropped, `event: resync` is queued, then the new event if it
 * fits. A cut scans at most one queue (per_client_max_bytes). Publishing a
 * point costs formatting its text once (~30 numbers, only when someone
 * listens) plus one memcpy per matching client; it never waits for a
 * socket. Memory per client is bounded by per_client_max_bytes plus one
 * event.
 */
#include "live.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>
#include <microhttpd.h>

#include "gw_error.h"
#include "numfmt.h"
#include "point.h"
#include "util.h"

#define BLOCK_SIZE 16384 /* most bytes handed to libmicrohttpd per call */
#define SHRINK_ABOVE 65536 /* free an idle client's buffer above this */

static const char RESYNC[] = "event: resync\ndata: {}\n\n";
static const char HEARTBEAT[] = ": hb\n\n";
static const char HELLO[] = "retry: 3000\n\n"; /* browser reconnect delay */

typedef struct client_s {
  struct client_s *prev, *next;
  gw_live_t *live;
  struct MHD_Connection *conn;
  char *run, *tag; /* filters, NULL = any */
  char *buf;
  size_t off, len, cap;
  char last2[2];
  int suspended;
  int linked; /* in live's list */
} client_t;

struct gw_live_s {
  pthread_mutex_t mu;
  pthread_cond_t cv; /* wakes the heartbeat thread (stop, interval change) */
  pthread_t hb;
  uint32_t hb_ms;
  int stop;    /* heartbeat thread must exit */
  int closing; /* gw_live_close_clients was called */
  size_t max_bytes;
  gw_stats_t *stats;
  client_t *head;
  size_t nclients;
};

/* ---- queue ---- */

static int reserve(client_t *c, size_t n) {
  if (c->len + n <= c->cap) return 0;
  if (c->off > 0) { /* compact first */
    memmove(c->buf, c->buf + c->off, c->len - c->off);
    c->len -= c->off;
    c->off = 0;
    if (c->len + n <= c->cap) return 0;
  }
  size_t cap = c->cap ? c->cap : 4096;
  while (cap < c->len + n) cap *= 2;
  char *b = realloc(c->buf, cap);
  if (!b) return GW_ENOMEM;
  c->buf = b;
  c->cap = cap;
  return 0;
}

/* Index just past the first "\n\n" in buf[a, b), or b if there is none. */
static size_t past_blank(const char *buf, size_t a, size_t b) {
  for (size_t i = a; i + 1 < b; i++)
    if (buf[i] == '\n' && buf[i + 1] == '\n') return i + 2;
  return b;
}

/* Data events (not comments, not resyncs) starting at event boundaries in
 * buf[a, b), a being one. */
static uint64_t count_events(const char *buf, size_t a, size_t b) {
  uint64_t n = 0;
  for (size_t p = a; p < b; p = past_blank(buf, p, b))
    if (b - p >= 7 && memcmp(buf + p, "event: ", 7) == 0 &&
        !(b - p >= sizeof RESYNC - 1 && memcmp(buf + p, RESYNC, sizeof RESYNC - 1) == 0))
      n++;
  return n;
}

/* The client cannot take n more bytes: cut its queue back to the end of the
 * partly sent event, count the dropped events, queue resync. */
static void lag(client_t *c) {
  size_t keep = c->off;
  if (!(c->last2[0] == '\n' && c->last2[1] == '\n') && c->off < c->len) {
    if (c->last2[1] == '\n' && c->buf[c->off] == '\n') {
      keep = c->off + 1;
    } else {
      keep = past_blank(c->buf, c->off, c->len);
    }
  }
  uint64_t dropped = count_events(c->buf, keep, c->len);
  c->len = keep;
  if (dropped) gw_stats_add(&c->live->stats->live_dropped, dropped);
  /* resync always fits: the kept tail is under one event, and reserve()
   * grows past max_bytes if it must. */
  if (reserve(c, sizeof RESYNC - 1) == 0) {
    memcpy(c->buf + c->len, RESYNC, sizeof RESYNC - 1);
    c->len += sizeof RESYNC - 1;
  }
}

static void wake(client_t *c) {
  if (c->suspended) {
    c->suspended = 0;
    MHD_resume_connection(c->conn);
  }
}

/* Append one whole event (with live->mu held). */
static void enqueue(client_t *c, const char *ev, size_t n, int is_event) {
  if (c->len - c->off + n > c->live->max_bytes) {
    lag(c);
    if (c->len - c->off + n > c->live->max_bytes) {
      if (is_event) gw_stats_add(&c->live->stats->live_dropped, 1);
      wake(c);
      return;
    }
  }
  if (reserve(c, n) != 0) {
    if (is_event) gw_stats_add(&c->live->stats->live_dropped, 1);
    wake(c);
    return;
  }
  memcpy(c->buf + c->len, ev, n);
  c->len += n;
  wake(c);
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
  } else if (c->off == c->len) {
    if (c->cap > SHRINK_ABOVE) {
      free(c->buf);
      c->buf = NULL;
      c->cap = c->off = c->len = 0;
    }
    c->suspended = 1;
    MHD_suspend_connection(c->conn);
    n = 0;
  } else {
    size_t k = c->len - c->off;
    if (k > max) k = max;
    memcpy(out, c->buf + c->off, k);
    if (k >= 2) {
      c->last2[0] = c->buf[c->off + k - 2];
      c->last2[1] = c->buf[c->off + k - 1];
    } else {
      c->last2[0] = c->last2[1];
      c->last2[1] = c->buf[c->off];
    }
    c->off += k;
    if (c->off == c->len) c->off = c->len = 0;
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
    else live->head = c->next;
    if (c->next) c->next->prev = c->prev;
    live->nclients--;
  }
  pthread_mutex_unlock(&live->mu);
  free(c->buf);
  free(c->run);
  free(c->tag);
  free(c);
}

int gw_live_serve(gw_live_t *live, struct MHD_Connection *conn, const char *run,
                  const char *tag, struct MHD_Response **out) {
  client_t *c;
  struct MHD_Response *r = NULL;
  *out = NULL;
  if (!(c = calloc(1, sizeof *c))) return GW_ENOMEM;
  c->live = live;
  c->conn = conn;
  c->last2[0] = c->last2[1] = '\n'; /* the stream starts at a boundary */
  if ((run && !(c->run = strdup(run))) || (tag && !(c->tag = strdup(tag))) ||
      reserve(c, sizeof HELLO - 1) != 0)
    goto nomem;
  memcpy(c->buf, HELLO, sizeof HELLO - 1);
  c->len = sizeof HELLO - 1;
  r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, BLOCK_SIZE, reader,
                                        c, client_free);
  if (!r) goto nomem;
  pthread_mutex_lock(&live->mu);
  if (live->closing) {
    pthread_mutex_unlock(&live->mu);
    MHD_destroy_response(r); /* frees c (client_free; not linked) */
    return GW_EDENIED;
  }
  c->linked = 1;
  c->next = live->head;
  if (live->head) live->head->prev = c;
  live->head = c;
  live->nclients++;
  pthread_mutex_unlock(&live->mu);
  *out = r;
  return 0;
nomem:
  free(c->buf);
  free(c->run);
  free(c->tag);
  free(c);
  return GW_ENOMEM;
}

/* ---- publisher ---- */

static int matches(const client_t *c, const char *run, const char *tag) {
  return (!c->run || (run && strcmp(c->run, run) == 0)) &&
         (!c->tag || (tag && strcmp(c->tag, tag) == 0));
}

/* Queue `event: alert` with obj's JSON to every client whose run filter
 * accepts run (NULL: the alert has no run, every client takes it). obj is
 * printed once, and only if someone listens. */
/* Queue `event: <name>` with obj as its data to every client whose run
 * filter admits run (NULL: every client). */
static int publish_json(gw_live_t *live, const char *name, const cJSON *obj, const char *run) {
  int rc = 0;
  char *json = NULL, *ev = NULL;
  size_t n = 0;
  pthread_mutex_lock(&live->mu);
  for (client_t *c = live->head; c; c = c->next) {
    if (c->run && run && strcmp(c->run, run) != 0) continue;
    if (!ev) {
      if (!(json = cJSON_PrintUnformatted(obj))) goto nomem;
      gw_buf_t b;
      gw_buf_init(&b);
      gw_buf_printf(&b, "event: %s\ndata: %s\n\n", name, json);
      n = b.len;
      if (!(ev = gw_buf_steal(&b))) goto nomem;
    }
    enqueue(c, ev, n, 1);
  }
  goto out;
nomem:
  rc = GW_ENOMEM;
  gw_stats_add(&live->stats->live_dropped, live->nclients);
out:
  pthread_mutex_unlock(&live->mu);
  free(json);
  free(ev);
  return rc;
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
  pthread_mutex_lock(&live->mu);
  size_t n = live->nclients;
  pthread_mutex_unlock(&live->mu);
  if (n == 0) return 0; /* nobody listens: skip building the text */
  char *ev = point_event(run, tag, p, &len);
  if (!ev) {
    gw_stats_add(&live->stats->live_dropped, n);
    return GW_ENOMEM;
  }
  pthread_mutex_lock(&live->mu);
  for (client_t *c = live->head; c; c = c->next)
    if (matches(c, run, tag)) enqueue(c, ev, len, 1);
  pthread_mutex_unlock(&live->mu);
  free(ev);
  return 0;
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

/* ---- heartbeat ---- */

static void *heartbeat(void *arg) {
  gw_live_t *live = arg;
  pthread_mutex_lock(&live->mu);
  while (!live->stop) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* the condvar's clock */
    uint64_t ns = (uint64_t)ts.tv_nsec + (uint64_t)live->hb_ms * 1000000u;
    ts.tv_sec += (time_t)(ns / 1000000000u);
    ts.tv_nsec = (long)(ns % 1000000000u);
    int rc = pthread_cond_timedwait(&live->cv, &live->mu, &ts);
    if (live->stop) break;
    if (rc != ETIMEDOUT) continue; /* interval changed: restart the wait */
    /* Only idle (suspended) clients need it; a busy one is sending. */
    for (client_t *c = live->head; c; c = c->next)
      if (c->suspended && !live->closing) enqueue(c, HEARTBEAT, sizeof HEARTBEAT - 1, 0);
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

int gw_live_new(gw_live_t **out, size_t per_client_max_bytes, gw_stats_t *stats) {
  gw_live_t *live;
  int rc;
  *out = NULL;
  if (!(live = calloc(1, sizeof *live))) return GW_ENOMEM;
  live->max_bytes = per_client_max_bytes ? per_client_max_bytes : GW_LIVE_CLIENT_MAX_DEFAULT;
  if (live->max_bytes < 4096) live->max_bytes = 4096;
  live->hb_ms = GW_LIVE_HEARTBEAT_MS;
  live->stats = stats;
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
  if ((rc = pthread_create(&live->hb, NULL, heartbeat, live)) != 0) goto fail_thread;
  *out = live;
  return 0;
fail_thread:
  pthread_cond_destroy(&live->cv);
fail_cv:
  pthread_mutex_destroy(&live->mu);
fail_mu:
  free(live);
  return rc == ENOMEM ? GW_ENOMEM : -rc;
}

void gw_live_close_clients(gw_live_t *live) {
  pthread_mutex_lock(&live->mu);
  live->closing = 1;
  for (client_t *c = live->head; c; c = c->next) wake(c);
  pthread_mutex_unlock(&live->mu);
}

size_t gw_live_client_count(gw_live_t *live) {
  pthread_mutex_lock(&live->mu);
  size_t n = live->nclients;
  pthread_mutex_unlock(&live->mu);
  return n;
}

void gw_live_free(gw_live_t *live) {
  if (!live) return;
  pthread_mutex_lock(&live->mu);
  live->stop = 1;
  pthread_cond_signal(&live->cv);
  pthread_mutex_unlock(&live->mu);
  pthread_join(live->hb, NULL);
  /* Clients are owned by libmicrohttpd responses; all must be gone. */
  assert(live->nclients == 0);
  pthread_cond_destroy(&live->cv);
  pthread_mutex_destroy(&live->mu);
  free(live);
}
