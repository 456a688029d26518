/* store_queue.c — the store's bounded queue: gw_store_put_*, the stream
 * lifecycle calls (open, restart, forget) and gw_store_flush.
 *
 * Called from the ingest thread (serialised by ingest, see sink.h) and, for
 * alerts, from the alerts module. Every call copies its record into the
 * FIFO under q_mu in O(1) and returns; nothing here touches SQLite (the
 * writer thread, store_writer.c, takes the FIFO). `ing` keeps, per daemon
 * stream id, whether the stream is open and whether store_every has kept
 * its first point since the last open/restart; it is read and written only
 * under q_mu. Bounds: points and sketches are refused past queue_max
 * (GW_EFULL, counted); lifecycle records and alerts never are (they are
 * bounded by the stream cap and the alert rules).
 */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "store_int.h"

void gws_rec_release(rec_t *r) {
  switch (r->type) {
    case REC_OPEN:
    case REC_RESTART:
      free(r->u.op.run); /* the tag shares its allocation */
      break;
    case REC_SKETCH:
      free(r->u.sk.z);
      break;
    case REC_ALERT:
      free(r->u.al);
      break;
    case REC_META:
      free(r->u.meta.run); /* the doc shares its allocation */
      break;
    default:
      break;
  }
  r->type = 0;
}

static gw_store_alert_t *alert_dup(const gw_store_alert_t *a) {
  const char *src[6] = {a->rule, a->run, a->tag, a->severity, a->labels,
                        a->annotations};
  size_t len[6], total = sizeof(gw_store_alert_t);
  gw_store_alert_t *c;
  char *p;
  const char **dst[6];
  for (int i = 0; i < 6; i++) {
    len[i] = src[i] ? strlen(src[i]) + 1 : 0;
    total += len[i];
  }
  c = malloc(total);
  if (!c) return NULL;
  *c = *a;
  dst[0] = &c->rule, dst[1] = &c->run, dst[2] = &c->tag;
  dst[3] = &c->severity, dst[4] = &c->labels, dst[5] = &c->annotations;
  p = (char *)(c + 1);
  for (int i = 0; i < 6; i++) {
    if (!src[i]) {
      *dst[i] = NULL;
      continue;
    }
    memcpy(p, src[i], len[i]);
    *dst[i] = p;
    p += len[i];
  }
  return c;
}

/* Caller holds q_mu. A slot at the FIFO's tail, not yet counted (enqueued()
 * counts it). NULL on allocation failure. */
static rec_t *q_slot(gw_store_t *st) {
  blk_t *b = st->q_tail;
  if (!b || b->n == BLK_RECS) {
    if (st->free_blks) {
      b = st->free_blks;
      st->free_blks = b->next;
      st->n_free--;
    } else {
      b = malloc(sizeof *b);
      if (!b) return NULL;
    }
    b->next = NULL;
    b->n = 0;
    if (st->q_tail)
      st->q_tail->next = b;
    else
      st->q_head = b;
    st->q_tail = b;
  }
  return &b->r[b->n];
}

/* Caller holds q_mu: the slot from q_slot() is filled. */
static void enqueued(gw_store_t *st) {
  st->q_tail->n++;
  st->q_n++;
  st->depth++;
  st->enq_seq++;
  atomic_store_explicit(&st->stats->store_queue_depth, st->depth,
                        memory_order_relaxed);
  if (st->q_n == BATCH_MAX) pthread_cond_signal(&st->q_cv);
}

static int ing_grow(gw_store_t *st, uint32_t sid) {
  size_t cap = st->ing_cap ? st->ing_cap : 64;
  istream_t *n;
  if (sid < st->ing_cap) return 0;
  while (cap <= sid) cap *= 2;
  n = realloc(st->ing, cap * sizeof *n);
  if (!n) return GW_ENOMEM;
  memset(n + st->ing_cap, 0, (cap - st->ing_cap) * sizeof *n);
  st->ing = n;
  st->ing_cap = cap;
  return 0;
}

static int ref_ok(const gw_stream_ref_t *ref) {
  return ref && ref->run && ref->tag && *ref->run && *ref->tag;
}

/* run and tag in one allocation (tag after run's NUL). */
static char *names_dup(const char *run, const char *tag, char **tag_out) {
  size_t rl = strlen(run) + 1, tl = strlen(tag) + 1;
  char *p = malloc(rl + tl);
  if (!p) return NULL;
  memcpy(p, run, rl);
  memcpy(p + rl, tag, tl);
  *tag_out = p + rl;
  return p;
}

/* Queue a lifecycle record (open or restart). need_open: the stream must
 * already be open (restart). */
static int put_lifecycle(gw_store_t *st, uint8_t type, uint32_t sid,
                         const gw_stream_ref_t *ref, int how, uint64_t step,
                         uint64_t prev_inc, int64_t recv_ns) {
  char *names, *tag = NULL;
  rec_t *slot;
  int rc = 0;
  names = names_dup(ref->run, ref->tag, &tag);
  if (!names) return GW_ENOMEM;
  pthread_mutex_lock(&st->q_mu);
  if (type == REC_RESTART && (sid >= st->ing_cap || !st->ing[sid].declared))
    rc = GW_ENOTFOUND;
  if (!rc) rc = ing_grow(st, sid);
  slot = rc ? NULL : q_slot(st);
  if (!rc && !slot) rc = GW_ENOMEM;
  if (!rc) {
    memset(slot, 0, offsetof(rec_t, u));
    slot->type = type;
    slot->sid = sid;
    slot->step = (int64_t)step;
    slot->recv_ns = recv_ns;
    slot->u.op.run = names;
    slot->u.op.tag = tag;
    slot->u.op.key.k = ref->k;
    slot->u.op.key.kind = ref->kind;
    slot->u.op.key.s = ref->s;
    slot->u.op.key.seed = ref->seed;
    slot->u.op.key.incarnation = ref->incarnation;
    slot->u.op.how = how;
    slot->u.op.prev_incarnation = prev_inc;
    names = NULL; /* owned by the record */
    st->ing[sid].declared = 1;
    st->ing[sid].kept_first = 0;
    enqueued(st);
  }
  pthread_mutex_unlock(&st->q_mu);
  free(names);
  return rc;
}

int gw_store_open_stream(gw_store_t *st, uint32_t stream_id,
                         const gw_stream_ref_t *ref, const gw_open_t *o) {
  if (!st || !ref_ok(ref) || !o || stream_id >= STREAM_ID_MAX ||
      (o->how != GW_OPEN_NEW && o->how != GW_OPEN_RESTORED) ||
      o->step > (uint64_t)INT64_MAX)
    return GW_EINVAL;
  return put_lifecycle(st, REC_OPEN, stream_id, ref, o->how, o->step, 0, o->recv_ns);
}

int gw_store_restart_stream(gw_store_t *st, uint32_t stream_id,
                            const gw_stream_ref_t *ref, const gw_restart_t *r) {
  if (!st || !ref_ok(ref) || !r || stream_id >= STREAM_ID_MAX ||
      !gw_restart_reason_name(r->reason) || r->step > (uint64_t)INT64_MAX)
    return GW_EINVAL;
  return put_lifecycle(st, REC_RESTART, stream_id, ref, r->reason, r->step,
                       r->prev_incarnation, r->recv_ns);
}

int gw_store_forget_stream(gw_store_t *st, uint32_t stream_id) {
  rec_t *slot;
  int rc = 0;
  if (!st) return GW_EINVAL;
  pthread_mutex_lock(&st->q_mu);
  if (stream_id >= st->ing_cap || !st->ing[stream_id].declared) {
    rc = GW_ENOTFOUND;
  } else if (!(slot = q_slot(st))) {
    rc = GW_ENOMEM;
  } else {
    memset(slot, 0, offsetof(rec_t, u));
    slot->type = REC_FORGET;
    slot->sid = stream_id;
    st->ing[stream_id].declared = 0;
    enqueued(st);
  }
  pthread_mutex_unlock(&st->q_mu);
  return rc;
}

int gw_store_put_point(gw_store_t *st, const gw_point_t *p) {
  double vals[GW_METRIC_COUNT];
  rec_t *slot;
  int rc = 0;
  if (!st || !p || p->step > (uint64_t)INT64_MAX) return GW_EINVAL;
  pthread_mutex_lock(&st->q_mu);
  if (p->stream_id >= st->ing_cap || !st->ing[p->stream_id].declared) {
    rc = GW_ENOTFOUND;
  } else if (st->cfg.store_every > 1 && st->ing[p->stream_id].kept_first &&
             p->n % st->cfg.store_every != 0) {
    rc = 0; /* thinned out by store_every */
  } else if (st->depth >= st->cfg.queue_max) {
    rc = GW_EFULL;
    gw_stats_add(&st->stats->store_dropped, 1);
  } else if (!(slot = q_slot(st))) {
    rc = GW_ENOMEM;
    gw_stats_add(&st->stats->store_dropped, 1);
  } else {
    slot->type = REC_POINT;
    slot->sid = p->stream_id;
    slot->step = (int64_t)p->step;
    slot->recv_ns = p->recv_ns;
    gw_point_values(p, vals);
    for (int i = 0; i < GW_METRIC_COUNT; i++) gws_put_f64le(slot->u.v + 8 * i, vals[i]);
    st->ing[p->stream_id].kept_first = 1;
    enqueued(st);
  }
  pthread_mutex_unlock(&st->q_mu);
  return rc;
}

int gw_store_put_sketch(gw_store_t *st, uint32_t stream_id, uint64_t step,
                        const double *z, uint32_t k) {
  float *f = NULL;
  rec_t *slot;
  int rc = 0;
  if (!st || !z || k == 0 || step > (uint64_t)INT64_MAX) return GW_EINVAL;
  if (!st->cfg.store_sketches) return 0;
  f = malloc((size_t)k * sizeof *f);
  if (!f) return GW_ENOMEM;
  for (uint32_t i = 0; i < k; i++) f[i] = (float)z[i];
  pthread_mutex_lock(&st->q_mu);
  if (stream_id >= st->ing_cap || !st->ing[stream_id].declared) {
    rc = GW_ENOTFOUND;
  } else if (st->depth >= st->cfg.queue_max) {
    rc = GW_EFULL;
  } else if (!(slot = q_slot(st))) {
    rc = GW_ENOMEM;
  } else {
    slot->type = REC_SKETCH;
    slot->sid = stream_id;
    slot->step = (int64_t)step;
    slot->recv_ns = 0;
    slot->u.sk.z = f;
    slot->u.sk.k = k;
    f = NULL;
    enqueued(st);
  }
  pthread_mutex_unlock(&st->q_mu);
  free(f);
  return rc;
}

int gw_store_put_alert(gw_store_t *st, const gw_store_alert_t *a,
                       uint64_t *id_out) {
  gw_store_alert_t *c;
  rec_t *slot;
  int rc = 0;
  if (!st || !a || !a->rule || !*a->rule || a->state < GW_ALERT_PENDING ||
      a->state > GW_ALERT_RESOLVED || a->id > (uint64_t)INT64_MAX)
    return GW_EINVAL;
  c = alert_dup(a);
  if (!c) return GW_ENOMEM;
  pthread_mutex_lock(&st->q_mu);
  slot = q_slot(st);
  if (!slot) {
    rc = GW_ENOMEM;
  } else {
    if (c->id == 0) c->id = st->next_alert_id++;
    if (c->id >= st->next_alert_id) st->next_alert_id = c->id + 1;
    if (id_out) *id_out = c->id;
    slot->type = REC_ALERT;
    slot->sid = 0;
    slot->step = 0;
    slot->recv_ns = 0;
    slot->u.al = c;
    c = NULL;
    enqueued(st);
  }
  pthread_mutex_unlock(&st->q_mu);
  free(c);
  return rc;
}

int gw_store_put_meta(gw_store_t *st, const gw_run_meta_t *m) {
  rec_t *slot;
  char *c;
  int rc = 0;
  if (!st || !m || !m->run || !*m->run || !m->doc || !*m->doc) return GW_EINVAL;
  size_t rl = strlen(m->run) + 1, dl = strlen(m->doc) + 1;
  if (!(c = malloc(rl + dl))) return GW_ENOMEM;
  memcpy(c, m->run, rl);
  memcpy(c + rl, m->doc, dl);
  pthread_mutex_lock(&st->q_mu);
  slot = q_slot(st);
  if (!slot) {
    rc = GW_ENOMEM;
  } else {
    slot->type = REC_META;
    slot->sid = 0;
    slot->step = 0;
    slot->recv_ns = m->recv_ns;
    slot->u.meta.run = c;
    slot->u.meta.doc = c + rl;
    slot->u.meta.incarnation = m->incarnation;
    slot->u.meta.wall_ns = m->wall_ns;
    c = NULL;
    enqueued(st);
  }
  pthread_mutex_unlock(&st->q_mu);
  free(c);
  return rc;
}

int gw_store_flush(gw_store_t *st) {
  uint64_t target, my = 0;
  int rc = 0;
  if (!st) return GW_EINVAL;
  pthread_mutex_lock(&st->q_mu);
  target = st->enq_seq;
  if (st->done_seq < target) {
    my = ++st->flush_gen;
    pthread_cond_signal(&st->q_cv);
  }
  while (st->done_seq < target && st->err_flush_gen < my && !st->writer_done)
    pthread_cond_wait(&st->done_cv, &st->q_mu);
  if (st->done_seq < target) rc = st->last_err ? st->last_err : GW_EDB;
  pthread_mutex_unlock(&st->q_mu);
  return rc;
}
