/* store_writer.c — the store's writer thread: batched transactions of the
 * queued records (segments, restart events, points, sketches, alerts),
 * maintenance (retention, max_db_mb) and the checkpointer thread.
 *
 * The writer's connection, statements, map (daemon stream id → current
 * segment), undo log and pending list belong to the writer thread alone
 * (GW_ASSERT_OWNER(&st->w_owner) where it matters); it shares only the FIFO
 * (under q_mu) with store_queue.c, and, for ":memory:" databases, the
 * connection with readers under db_mu. States, moves and the segment rules
 * are in the design note at the top of store.c.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "store_int.h"

static const char *const wsql[S_COUNT] = {
    [S_RUN_INS] = "INSERT INTO runs(name, created_ns) VALUES(?1, ?2) "
                  "ON CONFLICT(name) DO NOTHING",
    [S_RUN_GET] = "SELECT id FROM runs WHERE name = ?1",
    [S_SEG_LAST] = "SELECT id, seq, incarnation, k, kind, s, seed FROM streams "
                   "WHERE run = ?1 AND tag = ?2 ORDER BY seq DESC LIMIT 1",
    [S_SEG_INS] = "INSERT INTO streams(run, tag, seq, incarnation, k, kind, s, seed, "
                  "start_step, last_seen, points, live) "
                  "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 0, 1) RETURNING id",
    [S_SEG_RETIRE_OLDER] = "UPDATE streams SET live = 0 "
                           "WHERE run = ?1 AND tag = ?2 AND seq < ?3 AND live = 1",
    [S_SEG_LIVE] = "UPDATE streams SET live = ?2, last_seen = CASE "
                   "WHEN ?3 IS NULL THEN last_seen "
                   "WHEN last_seen IS NULL OR last_seen < ?3 THEN ?3 "
                   "ELSE last_seen END WHERE id = ?1",
    [S_EVENT_INS] = "INSERT INTO restarts(run, tag, step, incarnation, "
                    "prev_incarnation, reason, recv_ns) "
                    "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    [S_PT_INS] = "INSERT INTO points(stream, step, v) VALUES(?1, ?2, ?3) "
                 "ON CONFLICT DO NOTHING",
    [S_ST_UPD] =
        "UPDATE streams SET "
        "first_step = CASE WHEN first_step IS NULL OR first_step > ?2 "
        "THEN ?2 ELSE first_step END, "
        "last_step = CASE WHEN last_step IS NULL OR last_step < ?3 "
        "THEN ?3 ELSE last_step END, "
        "last_seen = CASE WHEN last_seen IS NULL OR last_seen < ?4 "
        "THEN ?4 ELSE last_seen END, "
        "points = points + ?5 WHERE id = ?1",
    [S_MIN_UP] = "INSERT INTO point_minutes(stream, minute, max_step) "
                 "VALUES(?1, ?2, ?3) ON CONFLICT(stream, minute) DO UPDATE "
                 "SET max_step = max(max_step, excluded.max_step)",
    [S_SK_INS] = "INSERT INTO sketches(stream, step, k, z) VALUES(?1, ?2, ?3, ?4) "
                 "ON CONFLICT DO NOTHING",
    [S_AL_UP] = "INSERT OR REPLACE INTO alerts(id, rule, run, tag, severity, "
                "state, value, threshold, started_step, started_ns, fired_ns, "
                "resolved_ns, labels, annotations) VALUES(?1, ?2, ?3, ?4, ?5, "
                "?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    [S_META_UP] = "INSERT OR REPLACE INTO run_meta(run, incarnation, wall_ns, recv_ns, doc) "
                  "VALUES(?1, ?2, ?3, ?4, ?5)",
};

int gws_prepare_writer(gw_store_t *st) {
  int rc = SQLITE_OK;
  for (int i = 0; i < S_COUNT && rc == SQLITE_OK; i++)
    rc = sqlite3_prepare_v3(st->wdb, wsql[i], -1, SQLITE_PREPARE_PERSISTENT,
                            &st->ws[i], NULL);
  return rc;
}

void gws_finalize_writer(gw_store_t *st) {
  for (int i = 0; i < S_COUNT; i++) {
    sqlite3_finalize(st->ws[i]);
    st->ws[i] = NULL;
  }
}

static void abs_deadline(struct timespec *ts, int64_t at_ms) {
  ts->tv_sec = at_ms / 1000;
  ts->tv_nsec = (at_ms % 1000) * 1000000;
}

static int64_t mono_ms(void) { return gw_mono_ns() / NS_PER_MS; }

/* ------------------------------------------------------------ statements */

/* Step a writer statement once (through the fault seam), read column 0 of a
 * returned row into *id if asked, reset. SQLITE_OK or the error code. */
static int wrun(gw_store_t *st, sqlite3_stmt *s, int64_t *id) {
  int rc = gws_fault(st, GW_STORE_OP_STEP);
  GW_ASSERT_OWNER(&st->w_owner);
  if (rc == SQLITE_OK) {
    rc = sqlite3_step(s);
    if (rc == SQLITE_ROW && id) *id = sqlite3_column_int64(s, 0);
    if (rc == SQLITE_ROW || rc == SQLITE_DONE) rc = SQLITE_OK;
  }
  sqlite3_reset(s);
  return rc;
}

static int wbegin(gw_store_t *st) {
  int rc = gws_fault(st, GW_STORE_OP_BEGIN);
  GW_ASSERT_OWNER(&st->w_owner);
  if (rc == SQLITE_OK && !sqlite3_get_autocommit(st->wdb))
    gws_exec(st->wdb, "ROLLBACK"); /* left by a failed rollback */
  if (rc == SQLITE_OK) rc = gws_exec(st->wdb, "BEGIN IMMEDIATE");
  return rc;
}

static int wcommit(gw_store_t *st) {
  int rc = gws_fault(st, GW_STORE_OP_COMMIT);
  if (rc == SQLITE_OK) rc = gws_exec(st->wdb, "COMMIT");
  return rc;
}

static void wrollback(gw_store_t *st) {
  if (!sqlite3_get_autocommit(st->wdb)) gws_exec(st->wdb, "ROLLBACK");
}

/* ------------------------------------------------------------------ map */

static int map_set(gw_store_t *st, uint32_t sid, const wseg_t *v) {
  GW_ASSERT_OWNER(&st->w_owner);
  if (sid >= st->map_cap) {
    size_t cap = st->map_cap ? st->map_cap : 64;
    wseg_t *n;
    while (cap <= sid) cap *= 2;
    n = realloc(st->map, cap * sizeof *n);
    if (!n) return SQLITE_NOMEM;
    memset(n + st->map_cap, 0, (cap - st->map_cap) * sizeof *n);
    st->map = n;
    st->map_cap = cap;
  }
  if (st->undo_n == st->undo_cap) {
    size_t cap = st->undo_cap ? 2 * st->undo_cap : 64;
    undo_t *u = realloc(st->undo, cap * sizeof *u);
    if (!u) return SQLITE_NOMEM;
    st->undo = u;
    st->undo_cap = cap;
  }
  st->undo[st->undo_n].sid = sid;
  st->undo[st->undo_n].old = st->map[sid];
  st->undo_n++;
  st->map[sid] = *v;
  return SQLITE_OK;
}

static const wseg_t *map_get(const gw_store_t *st, uint32_t sid) {
  static const wseg_t none = {0};
  return sid < st->map_cap ? &st->map[sid] : &none;
}

static void map_undo(gw_store_t *st) {
  while (st->undo_n > 0) {
    undo_t *u = &st->undo[--st->undo_n];
    st->map[u->sid] = u->old;
  }
}

/* ------------------------------------------------------- stream lifecycle */

static int key_equal(const segkey_t *a, const segkey_t *b) {
  return a->k == b->k && a->kind == b->kind && a->s == b->s && a->seed == b->seed &&
         a->incarnation == b->incarnation;
}

/* *run_id of run name (inserted if new). */
static int w_run(gw_store_t *st, const char *run, int64_t *run_id) {
  sqlite3_stmt *s = st->ws[S_RUN_INS];
  int rc;
  sqlite3_bind_text(s, 1, run, -1, SQLITE_STATIC);
  sqlite3_bind_int64(s, 2, gw_now_ns());
  rc = wrun(st, s, NULL);
  *run_id = 0;
  if (rc == SQLITE_OK) {
    s = st->ws[S_RUN_GET];
    sqlite3_bind_text(s, 1, run, -1, SQLITE_STATIC);
    rc = wrun(st, s, run_id);
  }
  if (rc == SQLITE_OK && *run_id == 0) rc = SQLITE_CORRUPT;
  return rc;
}

/* The latest segment of (run_id, tag) into *cur; cur->seg = 0 if none. */
static int w_seg_last(gw_store_t *st, int64_t run_id, const char *tag, wseg_t *cur) {
  sqlite3_stmt *s = st->ws[S_SEG_LAST];
  int rc = gws_fault(st, GW_STORE_OP_STEP);
  memset(cur, 0, sizeof *cur);
  if (rc == SQLITE_OK) {
    sqlite3_bind_int64(s, 1, run_id);
    sqlite3_bind_text(s, 2, tag, -1, SQLITE_STATIC);
    rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
      cur->seg = sqlite3_column_int64(s, 0);
      cur->run_id = run_id;
      cur->seq = sqlite3_column_int64(s, 1);
      cur->key.incarnation = (uint64_t)sqlite3_column_int64(s, 2);
      cur->key.k = (uint32_t)sqlite3_column_int64(s, 3);
      cur->key.kind = (uint8_t)sqlite3_column_int(s, 4);
      cur->key.s = (uint8_t)sqlite3_column_int(s, 5);
      cur->key.seed = (uint64_t)sqlite3_column_int64(s, 6);
    }
    if (rc == SQLITE_ROW || rc == SQLITE_DONE) rc = SQLITE_OK;
  }
  sqlite3_reset(s);
  return rc;
}

/* A new segment seq of (run_id, tag) starting at step; the older ones stop
 * being live. *out describes it. */
static int w_seg_new(gw_store_t *st, int64_t run_id, const char *tag, int64_t seq,
                     const segkey_t *key, int64_t step, int64_t recv_ns, wseg_t *out) {
  sqlite3_stmt *s = st->ws[S_SEG_INS];
  int rc;
  memset(out, 0, sizeof *out);
  sqlite3_bind_int64(s, 1, run_id);
  sqlite3_bind_text(s, 2, tag, -1, SQLITE_STATIC);
  sqlite3_bind_int64(s, 3, seq);
  sqlite3_bind_int64(s, 4, (sqlite3_int64)key->incarnation);
  sqlite3_bind_int64(s, 5, key->k);
  sqlite3_bind_int(s, 6, key->kind);
  sqlite3_bind_int(s, 7, key->s);
  sqlite3_bind_int64(s, 8, (sqlite3_int64)key->seed);
  sqlite3_bind_int64(s, 9, step);
  sqlite3_bind_int64(s, 10, recv_ns);
  rc = wrun(st, s, &out->seg);
  if (rc == SQLITE_OK && out->seg == 0) rc = SQLITE_CORRUPT;
  if (rc == SQLITE_OK) {
    s = st->ws[S_SEG_RETIRE_OLDER];
    sqlite3_bind_int64(s, 1, run_id);
    sqlite3_bind_text(s, 2, tag, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 3, seq);
    rc = wrun(st, s, NULL);
  }
  out->run_id = run_id;
  out->seq = seq;
  out->key = *key;
  return rc;
}

/* Set a segment's live flag; recv_ns != 0 also advances its last_seen. */
static int w_seg_live(gw_store_t *st, int64_t seg, int live, int64_t recv_ns) {
  sqlite3_stmt *s = st->ws[S_SEG_LIVE];
  sqlite3_bind_int64(s, 1, seg);
  sqlite3_bind_int(s, 2, live);
  if (recv_ns)
    sqlite3_bind_int64(s, 3, recv_ns);
  else
    sqlite3_bind_null(s, 3);
  return wrun(st, s, NULL);
}

static int w_event(gw_store_t *st, int64_t run_id, const char *tag, int64_t step,
                   uint64_t inc, uint64_t prev, int reason, int64_t recv_ns) {
  sqlite3_stmt *s = st->ws[S_EVENT_INS];
  sqlite3_bind_int64(s, 1, run_id);
  sqlite3_bind_text(s, 2, tag, -1, SQLITE_STATIC);
  sqlite3_bind_int64(s, 3, step);
  sqlite3_bind_int64(s, 4, (sqlite3_int64)inc);
  sqlite3_bind_int64(s, 5, (sqlite3_int64)prev);
  sqlite3_bind_text(s, 6, gw_restart_reason_name(reason), -1, SQLITE_STATIC);
  sqlite3_bind_int64(s, 7, recv_ns);
  return wrun(st, s, NULL);
}

/* REC_OPEN: continue the latest segment or start a new one (store.h). */
static int w_open(gw_store_t *st, const rec_t *r) {
  const char *tag = r->u.op.tag;
  const segkey_t *key = &r->u.op.key;
  int is_new = r->u.op.how == GW_OPEN_NEW;
  int64_t run_id = 0;
  wseg_t cur, next;
  int rc = w_run(st, r->u.op.run, &run_id);
  if (rc == SQLITE_OK) rc = w_seg_last(st, run_id, tag, &cur);
  if (rc != SQLITE_OK) return rc;
  if (cur.seg == 0) { /* no history */
    rc = w_seg_new(st, run_id, tag, 0, key, r->step, r->recv_ns, &next);
  } else if (key_equal(&cur.key, key)) {
    next = cur;
    rc = w_seg_live(st, cur.seg, 1, r->recv_ns);
    if (rc == SQLITE_OK && is_new)
      rc = w_event(st, run_id, tag, r->step, key->incarnation, cur.key.incarnation,
                   GW_RESTART_RESUMED, r->recv_ns);
  } else {
    rc = w_seg_new(st, run_id, tag, cur.seq + 1, key, r->step, r->recv_ns, &next);
    if (rc == SQLITE_OK && is_new)
      rc = w_event(st, run_id, tag, r->step, key->incarnation, cur.key.incarnation,
                   GW_RESTART_INCARNATION, r->recv_ns);
  }
  if (rc == SQLITE_OK) rc = map_set(st, r->sid, &next);
  return rc;
}

/* REC_RESTART: record the event; a new segment on a parameter change. */
static int w_restart(gw_store_t *st, const rec_t *r, uint64_t *skipped) {
  const wseg_t *m = map_get(st, r->sid);
  const char *tag = r->u.op.tag;
  const segkey_t *key = &r->u.op.key;
  wseg_t cur, next;
  int rc;
  if (m->seg == 0) { /* its open was refused by SQLite */
    (*skipped)++;
    return SQLITE_OK;
  }
  cur = *m;
  rc = w_event(st, cur.run_id, tag, r->step, key->incarnation, r->u.op.prev_incarnation,
               r->u.op.how, r->recv_ns);
  if (rc == SQLITE_OK && !key_equal(&cur.key, key)) {
    wseg_t last;
    rc = w_seg_last(st, cur.run_id, tag, &last);
    if (rc == SQLITE_OK)
      rc = w_seg_new(st, cur.run_id, tag, (last.seg ? last.seq : cur.seq) + 1, key,
                     r->step, r->recv_ns, &next);
    if (rc == SQLITE_OK) rc = map_set(st, r->sid, &next);
  } else if (rc == SQLITE_OK) {
    rc = w_seg_live(st, cur.seg, 1, r->recv_ns);
  }
  return rc;
}

/* REC_FORGET: not live any more; the id is released. */
static int w_forget(gw_store_t *st, const rec_t *r) {
  const wseg_t *m = map_get(st, r->sid);
  static const wseg_t none = {0};
  int rc = SQLITE_OK;
  if (m->seg == 0) return SQLITE_OK;
  rc = w_seg_live(st, m->seg, 0, 0);
  if (rc == SQLITE_OK) rc = map_set(st, r->sid, &none);
  return rc;
}

static void bind_text_or_null(sqlite3_stmt *s, int i, const char *t) {
  if (t)
    sqlite3_bind_text(s, i, t, -1, SQLITE_STATIC);
  else
    sqlite3_bind_null(s, i);
}

static void bind_ns_or_null(sqlite3_stmt *s, int i, int64_t v) {
  if (v)
    sqlite3_bind_int64(s, i, v);
  else
    sqlite3_bind_null(s, i);
}

static int w_alert(gw_store_t *st, const gw_store_alert_t *a) {
  sqlite3_stmt *s = st->ws[S_AL_UP];
  sqlite3_bind_int64(s, 1, (sqlite3_int64)a->id);
  sqlite3_bind_text(s, 2, a->rule, -1, SQLITE_STATIC);
  bind_text_or_null(s, 3, a->run);
  bind_text_or_null(s, 4, a->tag);
  bind_text_or_null(s, 5, a->severity);
  sqlite3_bind_text(s, 6, gws_alert_state_names[a->state], -1, SQLITE_STATIC);
  sqlite3_bind_double(s, 7, a->value); /* NaN binds as NULL */
  sqlite3_bind_double(s, 8, a->threshold);
  sqlite3_bind_int64(s, 9, gws_clamp_step(a->started_step));
  bind_ns_or_null(s, 10, a->started_ns);
  bind_ns_or_null(s, 11, a->fired_ns);
  bind_ns_or_null(s, 12, a->resolved_ns);
  bind_text_or_null(s, 13, a->labels);
  bind_text_or_null(s, 14, a->annotations);
  return wrun(st, s, NULL);
}

/* The run's metadata replaces what was stored (latest wins). */
static int w_meta(gw_store_t *st, const rec_t *r) {
  int64_t run_id;
  int rc = w_run(st, r->u.meta.run, &run_id);
  if (rc != SQLITE_OK) return rc;
  sqlite3_stmt *s = st->ws[S_META_UP];
  sqlite3_bind_int64(s, 1, run_id);
  sqlite3_bind_int64(s, 2, (sqlite3_int64)r->u.meta.incarnation);
  sqlite3_bind_int64(s, 3, r->u.meta.wall_ns);
  sqlite3_bind_int64(s, 4, r->recv_ns);
  sqlite3_bind_text(s, 5, r->u.meta.doc, -1, SQLITE_STATIC);
  return wrun(st, s, NULL);
}

/* --------------------------------------------------------------- points */

static int prow_cmp(const void *a, const void *b) {
  const prow_t *x = a, *y = b;
  if (x->db != y->db) return x->db < y->db ? -1 : 1;
  if (x->step != y->step) return x->step < y->step ? -1 : 1;
  return x->ord < y->ord ? -1 : (x->ord > y->ord);
}

static int w_minute(gw_store_t *st, int64_t db, int64_t minute, int64_t max_step) {
  sqlite3_stmt *s = st->ws[S_MIN_UP];
  sqlite3_bind_int64(s, 1, db);
  sqlite3_bind_int64(s, 2, minute);
  sqlite3_bind_int64(s, 3, max_step);
  return wrun(st, s, NULL);
}

typedef struct {
  uint64_t points, skipped, dups; /* committed rows, skipped records, duplicates */
} wcount_t;

/* Forget the writer's cache of every segment's chunk bookkeeping (after a
 * rollback or a maintenance pass changed what it describes). */
static void map_forget_chunks(gw_store_t *st) {
  for (size_t i = 0; i < st->map_cap; i++) st->map[i].ck_known = 0;
}

/* The chunk bookkeeping of segment db: w, filled from the database if not
 * known yet. */
static int w_chunk_state(gw_store_t *st, int64_t db, wseg_t *w) {
  static const char sql[] = "SELECT count(*) FROM points WHERE stream = ?1";
  sqlite3_stmt *s = NULL;
  int rc;
  if (w->ck_known) return SQLITE_OK;
  rc = gws_chunk_last_step(st->wdb, db, &w->ck_last);
  if (rc == SQLITE_OK) rc = sqlite3_prepare_v2(st->wdb, sql, -1, &s, NULL);
  if (rc == SQLITE_OK) {
    sqlite3_bind_int64(s, 1, db);
    rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
      w->ck_rows = sqlite3_column_int64(s, 0);
      w->ck_known = 1;
      rc = SQLITE_OK;
    }
  }
  sqlite3_finalize(s);
  return rc;
}

/* Insert the points rows[i..j) of one segment (sorted by step), then update
 * its row and minute index once, then seal its rows into chunks of
 * chunk_points. A (segment, step) already stored is left as it is and
 * counted in c->dups; a step inside the sealed range goes into its chunk
 * (store_chunks.c). */
static int w_points(gw_store_t *st, size_t i, size_t j, wcount_t *c) {
  const prow_t *rw = st->rows;
  sqlite3_stmt *ins = st->ws[S_PT_INS], *s;
  int64_t db = rw[i].db, added = 0, seen = INT64_MIN, minute = 0, min_max = 0;
  int64_t lo = 0, hi = 0;
  int have_min = 0, rc = SQLITE_OK;
  uint32_t sid = rw[i].sid;
  wseg_t tmp = {0}, *w = sid < st->map_cap && st->map[sid].seg == db ? &st->map[sid] : &tmp;
  size_t direct_end = i, nd = 0; /* rw[i..direct_end): straight into chunks */
  uint32_t cp = st->cfg.chunk_points;
  rc = w_chunk_state(st, db, w);
  if (rc == SQLITE_OK && cp && w->ck_rows == 0) {
    /* no rows waiting: whole chunks of this batch skip the rows table (the
     * last of each chunk's steps ends it; duplicates of it stay inside) */
    size_t distinct = 0;
    for (size_t x = i; x < j; x++) {
      if (rw[x].step <= w->ck_last || (x > i && rw[x].step == rw[x - 1].step)) continue;
      if (++distinct % cp == 0) direct_end = x + 1;
    }
    while (direct_end > i && direct_end < j && rw[direct_end].step == rw[direct_end - 1].step)
      direct_end++;
  }
  for (size_t x = i; x < j && rc == SQLITE_OK; x++) {
    int64_t m;
    if (rw[x].step <= w->ck_last) { /* late: inside the sealed range */
      int in = 0;
      rc = gws_chunk_add_late(st->wdb, db, rw[x].step, rw[x].v, BLOB_BYTES, &in);
      if (rc == SQLITE_CORRUPT) { /* that chunk is damaged: skip the point */
        c->skipped++;
        rc = SQLITE_OK;
        continue;
      }
      if (rc != SQLITE_OK) break;
      if (!in) {
        c->dups++;
        continue;
      }
    } else if (x < direct_end) {
      if (nd > 0 && st->dsteps[nd - 1] == rw[x].step) { /* a second point at a step */
        c->dups++;
        continue;
      }
      st->dsteps[nd] = rw[x].step;
      st->dvals[nd++] = rw[x].v;
      if (nd == cp) {
        rc = gws_chunk_put_blobs(st->wdb, db, st->dsteps, st->dvals, BLOB_BYTES, nd);
        if (rc != SQLITE_OK) break;
        w->ck_last = st->dsteps[nd - 1];
        nd = 0;
      }
    } else {
      sqlite3_bind_int64(ins, 1, db);
      sqlite3_bind_int64(ins, 2, rw[x].step);
      sqlite3_bind_blob(ins, 3, rw[x].v, BLOB_BYTES, SQLITE_STATIC);
      rc = wrun(st, ins, NULL);
      if (rc != SQLITE_OK && gws_record_error(rc)) {
        c->skipped++;
        rc = SQLITE_OK;
        continue;
      }
      if (rc != SQLITE_OK) break;
      if (sqlite3_changes(st->wdb) == 0) { /* (segment, step) already stored */
        c->dups++;
        continue;
      }
      w->ck_rows++;
    }
    added++;
    if (!have_min) lo = rw[x].step;
    hi = rw[x].step;
    if (rw[x].recv > seen) seen = rw[x].recv;
    m = gws_floor_div(rw[x].recv, NS_PER_MIN);
    if (have_min && m != minute) rc = w_minute(st, db, minute, min_max);
    minute = m;
    min_max = rw[x].step;
    have_min = 1;
  }
  if (rc == SQLITE_OK && have_min) rc = w_minute(st, db, minute, min_max);
  if (rc == SQLITE_OK && have_min) {
    s = st->ws[S_ST_UPD];
    sqlite3_bind_int64(s, 1, db);
    sqlite3_bind_int64(s, 2, lo);
    sqlite3_bind_int64(s, 3, hi);
    sqlite3_bind_int64(s, 4, seen);
    sqlite3_bind_int64(s, 5, added);
    rc = wrun(st, s, NULL);
  }
  if (rc == SQLITE_OK && st->cfg.chunk_points && w->ck_rows >= st->cfg.chunk_points) {
    int64_t sealed = 0;
    rc = gws_chunk_seal(st->wdb, db, st->cfg.chunk_points, st->cfg.chunk_points, 0, &sealed);
    w->ck_rows -= sealed;
    if (rc == SQLITE_OK) rc = gws_chunk_last_step(st->wdb, db, &w->ck_last);
  }
  if (rc == SQLITE_OK) c->points += (uint64_t)added;
  return rc;
}

static int w_sketch(gw_store_t *st, int64_t db, const rec_t *r) {
  sqlite3_stmt *s = st->ws[S_SK_INS];
  size_t bytes = (size_t)r->u.sk.k * 4;
  if (bytes > st->skbuf_cap) {
    unsigned char *b = realloc(st->skbuf, bytes);
    if (!b) return SQLITE_NOMEM;
    st->skbuf = b;
    st->skbuf_cap = bytes;
  }
  for (uint32_t q = 0; q < r->u.sk.k; q++) gws_put_f32le(st->skbuf + 4 * q, r->u.sk.z[q]);
  sqlite3_bind_int64(s, 1, db);
  sqlite3_bind_int64(s, 2, r->step);
  sqlite3_bind_int64(s, 3, r->u.sk.k);
  sqlite3_bind_blob(s, 4, st->skbuf, (int)bytes, SQLITE_STATIC);
  return wrun(st, s, NULL);
}

/* Write up to BATCH_MAX pending records in one transaction. On success
 * *consumed = records done and *c the counts; on failure everything is
 * rolled back (database and map) and *c is zero. Caller holds db_mu when
 * mem. */
static int w_chunk(gw_store_t *st, size_t *consumed, wcount_t *cnt) {
  blk_t *b = st->p_head;
  uint32_t i = st->p_idx;
  size_t c = 0, np = 0, nsk = 0;
  int rc;
  GW_ASSERT_OWNER(&st->w_owner);
  *consumed = 0;
  memset(cnt, 0, sizeof *cnt);
  st->undo_n = 0;
  rc = wbegin(st);
  while (rc == SQLITE_OK && b && c < BATCH_MAX) {
    const rec_t *r;
    int64_t db;
    if (i >= b->n) {
      b = b->next;
      i = 0;
      continue;
    }
    r = &b->r[i++];
    c++;
    switch (r->type) {
      case REC_OPEN:
      case REC_RESTART:
      case REC_FORGET:
      case REC_ALERT:
      case REC_META:
        rc = r->type == REC_OPEN      ? w_open(st, r)
             : r->type == REC_RESTART ? w_restart(st, r, &cnt->skipped)
             : r->type == REC_FORGET  ? w_forget(st, r)
             : r->type == REC_META    ? w_meta(st, r)
                                      : w_alert(st, r->u.al);
        if (rc != SQLITE_OK && gws_record_error(rc)) {
          cnt->skipped++;
          rc = SQLITE_OK;
          if (r->type == REC_OPEN) { /* puts of this stream are skipped */
            static const wseg_t none = {0};
            rc = map_set(st, r->sid, &none);
          }
        }
        break;
      case REC_POINT:
        db = map_get(st, r->sid)->seg;
        if (db == 0) { /* its open was refused by SQLite */
          cnt->skipped++;
          break;
        }
        st->rows[np].db = db;
        st->rows[np].step = r->step;
        st->rows[np].recv = r->recv_ns;
        st->rows[np].ord = (uint32_t)np;
        st->rows[np].sid = r->sid;
        st->rows[np].v = r->u.v;
        np++;
        break;
      case REC_SKETCH:
        db = map_get(st, r->sid)->seg;
        if (db == 0) {
          cnt->skipped++;
          break;
        }
        st->skrows[nsk].db = db;
        st->skrows[nsk].r = r;
        nsk++;
        break;
      default:
        break;
    }
  }
  if (rc == SQLITE_OK && np > 1) qsort(st->rows, np, sizeof *st->rows, prow_cmp);
  for (size_t x = 0; rc == SQLITE_OK && x < np;) {
    size_t y = x + 1;
    while (y < np && st->rows[y].db == st->rows[x].db) y++;
    rc = w_points(st, x, y, cnt);
    x = y;
  }
  for (size_t x = 0; rc == SQLITE_OK && x < nsk; x++) {
    rc = w_sketch(st, st->skrows[x].db, st->skrows[x].r);
    if (rc != SQLITE_OK && gws_record_error(rc)) {
      cnt->skipped++;
      rc = SQLITE_OK;
    }
  }
  if (rc == SQLITE_OK) rc = wcommit(st);
  if (rc != SQLITE_OK) {
    wrollback(st);
    map_undo(st);
    map_forget_chunks(st);
    memset(cnt, 0, sizeof *cnt);
    return rc;
  }
  st->undo_n = 0;
  *consumed = c;
  return SQLITE_OK;
}

/* Release the first c pending records (committed or dropped). */
static void pending_consume(gw_store_t *st, size_t c) {
  blk_t *done = NULL;
  while (c > 0 && st->p_head) {
    blk_t *b = st->p_head;
    while (c > 0 && st->p_idx < b->n) {
      gws_rec_release(&b->r[st->p_idx++]);
      c--;
    }
    if (st->p_idx >= b->n) {
      st->p_head = b->next;
      st->p_idx = 0;
      b->next = done;
      done = b;
    }
  }
  if (!st->p_head) st->p_tail = NULL;
  pthread_mutex_lock(&st->q_mu);
  while (done) {
    blk_t *b = done;
    done = b->next;
    if (st->n_free < FREE_BLKS_MAX) {
      b->next = st->free_blks;
      st->free_blks = b;
      st->n_free++;
    } else {
      free(b);
    }
  }
  pthread_mutex_unlock(&st->q_mu);
}

/* Drop every pending record (close while the disk keeps failing). */
static void pending_drop_all(gw_store_t *st) {
  uint64_t points = 0;
  size_t c = 0;
  for (blk_t *b = st->p_head; b; b = b->next)
    for (uint32_t i = (b == st->p_head ? st->p_idx : 0); i < b->n; i++) {
      points += b->r[i].type == REC_POINT;
      c++;
    }
  pending_consume(st, c);
  gw_stats_add(&st->stats->store_dropped, points);
  pthread_mutex_lock(&st->q_mu);
  st->depth -= c;
  st->done_seq += c;
  atomic_store_explicit(&st->stats->store_queue_depth, st->depth,
                        memory_order_relaxed);
  pthread_cond_broadcast(&st->done_cv);
  pthread_mutex_unlock(&st->q_mu);
  if (c)
    gw_log(st->log, GW_LOG_ERROR, "store",
           "msg=\"closing with the disk still failing\" points_lost=%llu",
           (unsigned long long)points);
}

/* Commit all pending records. 0, or the SQLite code of the failed chunk. */
static int w_commit_pending(gw_store_t *st) {
  int rc = SQLITE_OK;
  while (rc == SQLITE_OK && st->p_head) {
    size_t c = 0;
    wcount_t cnt;
    gws_db_lock(st);
    rc = w_chunk(st, &c, &cnt);
    gws_db_unlock(st);
    if (rc != SQLITE_OK) break;
    pending_consume(st, c);
    gw_stats_add(&st->stats->store_written, cnt.points);
    if (cnt.dups) gw_stats_add(&st->stats->store_duplicates, cnt.dups);
    if (cnt.skipped) gw_stats_add(&st->stats->store_errors, cnt.skipped);
    /* healthy again, visible before any flush waiting on this returns */
    atomic_store_explicit(&st->stats->store_last_error, 0, memory_order_relaxed);
    pthread_mutex_lock(&st->q_mu);
    st->depth -= c;
    st->done_seq += c;
    atomic_store_explicit(&st->stats->store_queue_depth, st->depth,
                          memory_order_relaxed);
    pthread_cond_broadcast(&st->done_cv);
    pthread_mutex_unlock(&st->q_mu);
  }
  return rc;
}

/* Count a failed transaction. A failed commit attempt also ends the waits
 * of the gw_store_flush calls it started after (flush_gen <= flush_seen: an
 * attempt already running when a flush began does not fail that flush, the
 * flush forces a fresh attempt instead). A failed maintenance pass ends no
 * wait, as no queued record depends on it. */
static void w_error(gw_store_t *st, int sqlite_rc, int tell_flushers,
                    uint64_t flush_seen) {
  int code = gws_map_rc(sqlite_rc);
  gw_stats_add(&st->stats->store_errors, 1);
  atomic_store_explicit(&st->stats->store_last_error, code, memory_order_relaxed);
  if (!tell_flushers) return;
  pthread_mutex_lock(&st->q_mu);
  st->last_err = code;
  st->err_flush_gen = flush_seen;
  pthread_cond_broadcast(&st->done_cv);
  pthread_mutex_unlock(&st->q_mu);
}

/* ----------------------------------------------------------- maintenance */

/* Delete the points (and sketches) of segment `db` with step <= max_step
 * and fix its row. Inside a transaction. */
static int m_delete_upto(gw_store_t *st, sqlite3_stmt *dp, sqlite3_stmt *ds,
                         sqlite3_stmt *us, int64_t db, int64_t max_step, int64_t *points) {
  int rc;
  int64_t n;
  sqlite3_bind_int64(dp, 1, db);
  sqlite3_bind_int64(dp, 2, max_step);
  rc = wrun(st, dp, NULL);
  n = sqlite3_changes64(st->wdb);
  if (rc == SQLITE_OK) rc = gws_chunk_delete_upto(st->wdb, db, max_step, &n);
  if (rc == SQLITE_OK) *points += n;
  if (rc == SQLITE_OK) {
    sqlite3_bind_int64(ds, 1, db);
    sqlite3_bind_int64(ds, 2, max_step);
    rc = wrun(st, ds, NULL);
  }
  if (rc == SQLITE_OK) {
    sqlite3_bind_int64(us, 1, db);
    sqlite3_bind_int64(us, 2, n);
    rc = wrun(st, us, NULL);
  }
  return rc;
}

typedef struct {
  int64_t db, max_step;
} cut_t;

/* Run `sel` (bound by the caller) collecting (segment, max_step) pairs. */
static int m_collect(sqlite3_stmt *sel, cut_t **cuts, size_t *n) {
  size_t cap = 0;
  int rc;
  *n = 0;
  while ((rc = sqlite3_step(sel)) == SQLITE_ROW) {
    if (*n == cap) {
      size_t nc = cap ? 2 * cap : 64;
      cut_t *c = realloc(*cuts, nc * sizeof *c);
      if (!c) {
        rc = SQLITE_NOMEM;
        break;
      }
      *cuts = c;
      cap = nc;
    }
    (*cuts)[*n].db = sqlite3_column_int64(sel, 0);
    (*cuts)[*n].max_step = sqlite3_column_int64(sel, 1);
    (*n)++;
  }
  sqlite3_reset(sel);
  return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* A point_minutes row pm the size pass may delete: not the newest bucket of
 * a live segment. */
#define SIZE_KEEP                                                                  \
  "NOT EXISTS (SELECT 1 FROM streams s WHERE s.id = pm.stream AND s.live = 1 "     \
  "AND pm.minute = (SELECT max(p2.minute) FROM point_minutes p2 "                  \
  "WHERE p2.stream = pm.stream))"

enum { M_DEL_PTS, M_DEL_SK, M_UPD_ST, M_RET_SEL, M_RET_DEL, M_OLDEST,
       M_MIN_SEL, M_MIN_DEL, M_COUNT };
static const char *const msql[M_COUNT] = {
    [M_DEL_PTS] = "DELETE FROM points WHERE stream = ?1 AND step <= ?2",
    [M_DEL_SK] = "DELETE FROM sketches WHERE stream = ?1 AND step <= ?2",
    [M_UPD_ST] = "UPDATE streams SET points = max(points - ?2, 0), "
                 "first_step = (SELECT min(f) FROM ("
                 "SELECT min(first_step) AS f FROM chunks WHERE stream = ?1 "
                 "UNION ALL SELECT min(step) FROM points WHERE stream = ?1)) "
                 "WHERE id = ?1",
    [M_RET_SEL] = "SELECT stream, max(max_step) FROM point_minutes "
                  "WHERE minute < ?1 GROUP BY stream",
    [M_RET_DEL] = "DELETE FROM point_minutes WHERE minute < ?1",
    /* the size pass never takes the newest minute bucket of a live segment */
    [M_OLDEST] = "SELECT min(pm.minute) FROM point_minutes pm WHERE " SIZE_KEEP,
    [M_MIN_SEL] = "SELECT pm.stream, pm.max_step FROM point_minutes pm "
                  "WHERE pm.minute = ?1 AND " SIZE_KEEP,
    [M_MIN_DEL] = "DELETE FROM point_minutes WHERE stream = ?1 AND minute <= ?2",
};

/* Bytes in use by the database file (pages not on the freelist). */
static int m_used_bytes(gw_store_t *st, int64_t *used) {
  int64_t pc = 0, fl = 0, ps = 0;
  int rc = gws_pragma_int(st->wdb, "PRAGMA page_count", &pc);
  if (rc == SQLITE_OK) rc = gws_pragma_int(st->wdb, "PRAGMA freelist_count", &fl);
  if (rc == SQLITE_OK) rc = gws_pragma_int(st->wdb, "PRAGMA page_size", &ps);
  *used = (pc - fl) * ps;
  return rc;
}

/* Size of the -wal file beside the database (0 for :memory: or none). */
static int64_t m_wal_bytes(const gw_store_t *st) {
  char path[4096];
  struct stat sb;
  if (st->mem || snprintf(path, sizeof path, "%s-wal", st->path) >= (int)sizeof path ||
      stat(path, &sb) != 0)
    return 0;
  return (int64_t)sb.st_size;
}

uint32_t gw_store_min_db_mb(void) {
  /* the schema and its indexes, one flush of points in the database and
   * again in the WAL, and the WAL the checkpointer lets build up */
  uint64_t b = ((uint64_t)1 << 20) + 2ull * BATCH_MAX * GW_STORE_POINT_BYTES +
               (uint64_t)CKPT_FRAMES * 4096;
  return (uint32_t)((b + ((1u << 20) - 1)) >> 20);
}

/* One retention pass (if do_retention) and one size pass (max_db_mb). Both
 * go by the receive-time minute index, never by the publisher's clock. */
static int w_maintain(gw_store_t *st, int do_retention) {
  sqlite3_stmt *m[M_COUNT] = {0};
  cut_t *cuts = NULL;
  size_t ncut = 0;
  /* the size counted is the file's pages in use plus the -wal file, whose
   * size is taken once per pass (the deletions' own WAL frames are
   * checkpointed afterwards and must not feed back into the pass) */
  int64_t used = 0, wal = 0, limit = (int64_t)st->cfg.max_db_mb << 20, trimmed = 0, before = 0;
  int rc = SQLITE_OK, deleted = 0, shrink, rounds = 0;
  GW_ASSERT_OWNER(&st->w_owner);
  if (limit) {
    wal = m_wal_bytes(st);
    rc = m_used_bytes(st, &used);
    used += wal;
  }
  shrink = limit && used > limit;
  if (rc == SQLITE_OK && shrink && wal > 0) {
    /* WAL a burst left behind is space a checkpoint gives back without
     * deleting a point: truncate it first, not waiting on readers (one
     * that holds it leaves the WAL as it is, counted as before) */
    sqlite3_busy_timeout(st->wdb, 0);
    (void)sqlite3_wal_checkpoint_v2(st->wdb, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
    sqlite3_busy_timeout(st->wdb, BUSY_TIMEOUT_MS);
    wal = m_wal_bytes(st);
    rc = m_used_bytes(st, &used);
    used += wal;
    shrink = used > limit;
  }
  if (rc != SQLITE_OK ||
      (!shrink && !(do_retention && (st->cfg.retention_days || st->cfg.full_resolution_days))))
    return rc;
  for (int i = 0; i < M_COUNT && rc == SQLITE_OK; i++)
    rc = sqlite3_prepare_v2(st->wdb, msql[i], -1, &m[i], NULL);

  if (rc == SQLITE_OK && do_retention && st->cfg.retention_days) {
    uint32_t days = st->cfg.retention_days > 100000 ? 100000 : st->cfg.retention_days;
    int64_t cutoff = gws_floor_div(gw_now_ns() - (int64_t)days * 86400 * 1000000000LL,
                                   NS_PER_MIN);
    rc = wbegin(st);
    if (rc == SQLITE_OK) {
      sqlite3_bind_int64(m[M_RET_SEL], 1, cutoff);
      rc = m_collect(m[M_RET_SEL], &cuts, &ncut);
    }
    int64_t gone = 0;
    for (size_t i = 0; rc == SQLITE_OK && i < ncut; i++)
      rc = m_delete_upto(st, m[M_DEL_PTS], m[M_DEL_SK], m[M_UPD_ST], cuts[i].db,
                         cuts[i].max_step, &gone);
    if (rc == SQLITE_OK) {
      sqlite3_bind_int64(m[M_RET_DEL], 1, cutoff);
      rc = wrun(st, m[M_RET_DEL], NULL);
    }
    if (rc == SQLITE_OK) rc = wcommit(st);
    if (rc == SQLITE_OK) deleted = ncut > 0;
    if (rc == SQLITE_OK && gone)
      gw_log(st->log, GW_LOG_INFO, "retention", "days=%u points_deleted=%lld", days,
             (long long)gone);
    if (rc == SQLITE_OK && limit) {
      rc = m_used_bytes(st, &used);
      used += wal;
    }
    shrink = limit && used > limit;
  }
  if (rc == SQLITE_OK && do_retention && st->cfg.full_resolution_days) {
    /* older than full_resolution_days: chunks become their min/max form,
     * at most TIER_CHUNKS_PER_PASS chunks a pass (the next pass goes on) */
    uint32_t days =
        st->cfg.full_resolution_days > 100000 ? 100000 : st->cfg.full_resolution_days;
    int64_t cutoff = gws_floor_div(gw_now_ns() - (int64_t)days * 86400 * 1000000000LL,
                                   NS_PER_MIN);
    int64_t budget = TIER_CHUNKS_PER_PASS, gone = 0;
    rc = wbegin(st);
    if (rc == SQLITE_OK) {
      sqlite3_bind_int64(m[M_RET_SEL], 1, cutoff);
      rc = m_collect(m[M_RET_SEL], &cuts, &ncut);
    }
    for (size_t i = 0; rc == SQLITE_OK && i < ncut && budget > 0; i++) {
      int64_t g = 0;
      rc = gws_chunk_tier_upto(st->wdb, cuts[i].db, cuts[i].max_step, &budget, &g);
      if (rc == SQLITE_OK && g) {
        sqlite3_bind_int64(m[M_UPD_ST], 1, cuts[i].db);
        sqlite3_bind_int64(m[M_UPD_ST], 2, g);
        rc = wrun(st, m[M_UPD_ST], NULL);
      }
      gone += g;
    }
    if (rc == SQLITE_OK) rc = wcommit(st);
    if (rc == SQLITE_OK && gone) {
      deleted = 1;
      gw_log(st->log, GW_LOG_INFO, "full_resolution", "days=%u points_downsampled=%lld",
             days, (long long)gone);
    }
  }
  before = used;

  /* Over max_db_mb: delete the oldest minute of every segment, one minute
   * per transaction, down to 90% of the limit (hysteresis: the next pass
   * does not start before the limit is crossed again). */
  for (int round = 0; rc == SQLITE_OK && shrink && used > limit / 10 * 9 &&
                      round < SIZE_CHECK_MAX_ROUNDS;
       round++) {
    int64_t oldest = 0;
    int have = 0;
    rc = wbegin(st);
    if (rc == SQLITE_OK) {
      rc = sqlite3_step(m[M_OLDEST]);
      if (rc == SQLITE_ROW) {
        have = sqlite3_column_type(m[M_OLDEST], 0) != SQLITE_NULL;
        oldest = sqlite3_column_int64(m[M_OLDEST], 0);
        rc = SQLITE_OK;
      }
      sqlite3_reset(m[M_OLDEST]);
    }
    if (rc == SQLITE_OK && have) {
      sqlite3_bind_int64(m[M_MIN_SEL], 1, oldest);
      rc = m_collect(m[M_MIN_SEL], &cuts, &ncut);
      for (size_t i = 0; rc == SQLITE_OK && i < ncut; i++) {
        rc = m_delete_upto(st, m[M_DEL_PTS], m[M_DEL_SK], m[M_UPD_ST],
                           cuts[i].db, cuts[i].max_step, &trimmed);
        if (rc == SQLITE_OK) {
          sqlite3_bind_int64(m[M_MIN_DEL], 1, cuts[i].db);
          sqlite3_bind_int64(m[M_MIN_DEL], 2, oldest);
          rc = wrun(st, m[M_MIN_DEL], NULL);
        }
      }
    }
    if (rc == SQLITE_OK) rc = wcommit(st);
    if (rc == SQLITE_OK) {
      rc = m_used_bytes(st, &used);
      used += wal;
    }
    deleted |= have;
    rounds += have;
    if (!have) break; /* nothing left that may be deleted */
  }
  /* every trim is logged; a cap that only the newest minutes of live
   * streams exceed, once a minute */
  if (rc == SQLITE_OK && shrink && (trimmed > 0 || mono_ms() >= st->size_warn_at)) {
    st->size_warn_at = mono_ms() + 60000;
    gw_log(st->log, GW_LOG_WARN, "db_trimmed",
           "max_db_mb=%u before_bytes=%lld after_bytes=%lld wal_bytes=%lld points_deleted=%lld "
           "minutes=%d under_cap=%s",
           st->cfg.max_db_mb, (long long)before, (long long)used, (long long)wal,
           (long long)trimmed, rounds, used <= limit ? "yes" : "no");
  }

  if (rc == SQLITE_OK && deleted) { /* give the freed pages back to the FS */
    rc = gws_exec(st->wdb, "PRAGMA incremental_vacuum");
    if (rc == SQLITE_OK && !st->mem)
      rc = gws_exec(st->wdb, "PRAGMA wal_checkpoint(PASSIVE)");
  }
  if (rc != SQLITE_OK) wrollback(st);
  map_forget_chunks(st); /* chunks and rows may be gone */
  for (int i = 0; i < M_COUNT; i++) sqlite3_finalize(m[i]);
  free(cuts);
  return rc;
}

/* ---------------------------------------------------------- checkpointer */

/* WAL hook of the writer's connection, after each commit. */
int gws_wal_hook(void *arg, sqlite3 *db, const char *name, int frames) {
  gw_store_t *st = arg;
  if (frames >= WAL_HARD_FRAMES) { /* the checkpointer is not keeping up */
    sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
    return SQLITE_OK;
  }
  pthread_mutex_lock(&st->ck_mu);
  st->ck_dirty = 1;
  if (frames >= CKPT_FRAMES && !st->ck_req) {
    st->ck_req = 1;
    pthread_cond_signal(&st->ck_cv);
  }
  pthread_mutex_unlock(&st->ck_mu);
  return SQLITE_OK;
}

void *gws_ckpt_main(void *arg) {
  gw_store_t *st = arg;
  pthread_mutex_lock(&st->ck_mu);
  while (!st->ck_stop) {
    int run, rc;
    if (!st->ck_req) {
      struct timespec ts;
      abs_deadline(&ts, mono_ms() + (int64_t)st->cfg.flush_ms * CKPT_EVERY_FLUSHES);
      pthread_cond_timedwait(&st->ck_cv, &st->ck_mu, &ts);
    }
    if (st->ck_stop) break;
    run = st->ck_req || st->ck_dirty;
    st->ck_req = st->ck_dirty = 0;
    pthread_mutex_unlock(&st->ck_mu);
    if (run) {
      rc = gws_fault(st, GW_STORE_OP_CHECKPOINT);
      if (rc == SQLITE_OK)
        rc = sqlite3_wal_checkpoint_v2(st->ckdb, NULL, SQLITE_CHECKPOINT_PASSIVE,
                                       NULL, NULL);
      if (rc != SQLITE_OK && (rc & 0xff) != SQLITE_BUSY) {
        /* nothing is lost (the WAL keeps the pages); count, retry later */
        gw_stats_add(&st->stats->store_errors, 1);
        if (!st->ck_failing)
          gw_log(st->log, GW_LOG_WARN, "store", "msg=\"checkpoint failed\" error=\"%s\"",
                 sqlite3_errstr(rc));
        st->ck_failing = 1;
      } else if (rc == SQLITE_OK) {
        st->ck_failing = 0;
      }
    }
    pthread_mutex_lock(&st->ck_mu);
    if (run && st->ck_failing) st->ck_dirty = 1; /* try again next period */
  }
  pthread_mutex_unlock(&st->ck_mu);
  return NULL;
}

/* ---------------------------------------------------------------- writer */

/* Caller holds q_mu: move the whole FIFO to the end of the pending list. */
static void take_fifo(gw_store_t *st) {
  if (!st->q_head) return;
  if (st->p_tail)
    st->p_tail->next = st->q_head;
  else
    st->p_head = st->q_head;
  st->p_tail = st->q_tail;
  st->q_head = st->q_tail = NULL;
  st->q_n = 0;
}

void *gws_writer_main(void *arg) {
  gw_store_t *st = arg;
  int failing = 0, stop_seen = 0;
  int64_t backoff = 0, retry_at = 0, close_deadline = 0;
  int64_t last_cycle = mono_ms(), next_retention = 0; /* retention once at start */
  uint64_t flush_seen = 0;
  gw_owner_claim(&st->w_owner);
  for (;;) {
    int forced, committed = 0, empty;
    int64_t now;
    pthread_mutex_lock(&st->q_mu);
    for (;;) {
      int64_t wake = failing ? retry_at : last_cycle + st->cfg.flush_ms;
      struct timespec ts;
      if (failing && stop_seen && close_deadline < wake) wake = close_deadline;
      if ((st->stop && !stop_seen) || st->flush_gen != flush_seen) break;
      if (!failing && st->q_n >= BATCH_MAX) break;
      if (mono_ms() >= wake) break;
      abs_deadline(&ts, wake);
      pthread_cond_timedwait(&st->q_cv, &st->q_mu, &ts);
    }
    forced = (st->stop && !stop_seen) || st->flush_gen != flush_seen;
    flush_seen = st->flush_gen;
    if (st->stop && !stop_seen) {
      stop_seen = 1;
      close_deadline = mono_ms() + st->cfg.close_timeout_ms;
    }
    take_fifo(st);
    pthread_mutex_unlock(&st->q_mu);

    now = mono_ms();
    last_cycle = now;
    if (st->p_head && (!failing || forced || now >= retry_at)) {
      int rc = w_commit_pending(st);
      if (rc != SQLITE_OK) {
        if (!failing)
          gw_log(st->log, GW_LOG_ERROR, "store",
                 "msg=\"commit failed; retrying\" error=%s sqlite=\"%s\"",
                 gw_strerror(gws_map_rc(rc)), sqlite3_errstr(rc));
        w_error(st, rc, 1, flush_seen);
        failing = 1;
        backoff = backoff ? backoff * 2 : BACKOFF_MIN_MS;
        if (backoff > BACKOFF_MAX_MS) backoff = BACKOFF_MAX_MS;
        retry_at = mono_ms() + backoff;
      } else {
        committed = 1;
        if (failing) gw_log(st->log, GW_LOG_INFO, "store", "msg=\"writes resumed\"");
        failing = 0;
        backoff = 0;
      }
    }
    if (!failing) {
      int do_ret = (st->cfg.retention_days || st->cfg.full_resolution_days) &&
                   mono_ms() >= next_retention;
      /* size pass after each commit, and once more when closing */
      if (do_ret || ((committed || stop_seen) && st->cfg.max_db_mb)) {
        int rc;
        gws_db_lock(st);
        rc = w_maintain(st, do_ret);
        gws_db_unlock(st);
        if (do_ret) next_retention = mono_ms() + st->cfg.retention_check_ms;
        if (rc != SQLITE_OK) w_error(st, rc, 0, 0);
      }
    }
    if (stop_seen) {
      pthread_mutex_lock(&st->q_mu);
      empty = !st->q_head && !st->p_head;
      pthread_mutex_unlock(&st->q_mu);
      if (empty) {
        if (!failing && st->cfg.chunk_points) { /* seal every tail: the
                                                   rows cost 4x a chunk */
          int64_t sealed = 0;
          gws_db_lock(st);
          int rc = gws_chunk_seal_all(st->wdb, st->cfg.chunk_points, GWS_SEAL_TAILS_ALL,
                                      &sealed);
          gws_db_unlock(st);
          if (rc != SQLITE_OK) w_error(st, rc, 0, 0);
        }
        break;
      }
      if (failing && mono_ms() >= close_deadline) {
        pthread_mutex_lock(&st->q_mu); /* nothing new arrives after close */
        take_fifo(st);
        pthread_mutex_unlock(&st->q_mu);
        pending_drop_all(st);
        break;
      }
    }
  }
  pthread_mutex_lock(&st->q_mu);
  st->writer_done = 1;
  pthread_cond_broadcast(&st->done_cv);
  pthread_mutex_unlock(&st->q_mu);
  return NULL;
}
