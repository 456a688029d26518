/* store_read.c — the store's readers (runs, streams, series, sketches,
 * replay, restart events, alerts, row count, integrity) and its synchronous
 * read-write calls (state save, resume list, state clear).
 *
 * Readers run on any thread, each on a pooled read-only connection
 * (":memory:": the writer's, under db_mu) and, where a call makes more than
 * one query, inside one read transaction so they see one snapshot. Every
 * query goes through query(): prepare, bind, one row callback per row, so
 * there is one row loop here; the series and sketch readers also merge the
 * per-segment cursors of a stream by step (merge_*).
 *
 * Visibility: the segments of a stream, in seq order, each get a cut =
 * min(start_step of every later segment); a segment's rows with step < cut
 * are visible (the latest segment has no cut). With all_incarnations every
 * row is read. The merge yields rows by (step, seq).
 *
 * The synchronous calls (state_*, resume_list, state_clear) take sy_mu and
 * a read-write connection of their own (sy_acquire); a state transaction
 * keeps both from begin to commit, on the caller's thread.
 */
#include <limits.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "store_int.h"

/* ------------------------------------------------------------ connections */

int gws_rd_acquire(gw_store_t *st, sqlite3 **out) {
  sqlite3 *db = NULL;
  int rc;
  *out = NULL;
  if (st->mem) {
    pthread_mutex_lock(&st->db_mu);
    *out = st->wdb;
    return 0;
  }
  pthread_mutex_lock(&st->rd_mu);
  if (st->pool_n > 0) db = st->pool[--st->pool_n];
  pthread_mutex_unlock(&st->rd_mu);
  if (db) {
    *out = db;
    return 0;
  }
  rc = sqlite3_open_v2(st->path, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX,
                       NULL);
  if (rc != SQLITE_OK) {
    sqlite3_close(db);
    return gws_map_rc(rc);
  }
  sqlite3_extended_result_codes(db, 1);
  sqlite3_busy_timeout(db, BUSY_TIMEOUT_MS);
  *out = db;
  return 0;
}

void gws_rd_release(gw_store_t *st, sqlite3 *db) {
  if (!db) return;
  if (!sqlite3_get_autocommit(db)) gws_exec(db, "ROLLBACK");
  if (st->mem) {
    pthread_mutex_unlock(&st->db_mu);
    return;
  }
  pthread_mutex_lock(&st->rd_mu);
  if (st->pool_n < st->cfg.read_conns) {
    st->pool[st->pool_n++] = db;
    db = NULL;
  }
  pthread_mutex_unlock(&st->rd_mu);
  sqlite3_close(db);
}

/* Acquire a reader connection and open a read transaction (one snapshot). */
static int rd_begin(gw_store_t *st, sqlite3 **db) {
  int rc = gws_rd_acquire(st, db);
  if (rc == 0) rc = gws_map_rc(gws_exec(*db, "BEGIN"));
  if (rc && *db) {
    gws_rd_release(st, *db);
    *db = NULL;
  }
  return rc;
}

static void rd_end(gw_store_t *st, sqlite3 *db) {
  if (db && !sqlite3_get_autocommit(db)) gws_exec(db, "COMMIT");
  gws_rd_release(st, db);
}

/* ------------------------------------------------------------- row loop */

/* A query parameter: text (t != NULL or is_null) or a 64-bit integer. */
typedef struct {
  const char *t;
  int64_t i;
  int is_null;
} arg_t;
#define A_INT(v) ((arg_t){NULL, (int64_t)(v), 0})
#define A_TEXT(v) ((arg_t){(v), 0, (v) == NULL})

typedef int (*row_fn)(void *arg, sqlite3_stmt *s);

static void bind_args(sqlite3_stmt *s, const arg_t *a, size_t na) {
  for (size_t i = 0; i < na; i++) {
    if (a[i].is_null)
      sqlite3_bind_null(s, (int)i + 1);
    else if (a[i].t)
      sqlite3_bind_text(s, (int)i + 1, a[i].t, -1, SQLITE_STATIC);
    else
      sqlite3_bind_int64(s, (int)i + 1, a[i].i);
  }
}

/* The one row loop: prepare sql, bind args ?1..?na, call row (may be NULL)
 * for each result row; stops at row's first nonzero return. 0, that value,
 * or the SQLite error as GW_E*. Returns GW_ENOTFOUND when need_row is set
 * and the query yields no row. */
static int query(sqlite3 *db, const char *sql, const arg_t *args, size_t na,
                 row_fn row, void *arg, int need_row) {
  sqlite3_stmt *s = NULL;
  int rc = gws_map_rc(sqlite3_prepare_v2(db, sql, -1, &s, NULL)), r = SQLITE_DONE;
  size_t rows = 0;
  if (rc == 0) {
    bind_args(s, args, na);
    while (rc == 0 && (r = sqlite3_step(s)) == SQLITE_ROW) {
      rows++;
      if (row) rc = row(arg, s);
    }
    if (rc == 0 && r != SQLITE_DONE) rc = gws_map_rc(r);
    if (rc == 0 && need_row && rows == 0) rc = GW_ENOTFOUND;
  }
  sqlite3_finalize(s);
  return rc;
}

/* Row callback: column 0 as int64 into *(int64_t *)arg. */
static int row_int(void *arg, sqlite3_stmt *s) {
  *(int64_t *)arg = sqlite3_column_int64(s, 0);
  return 0;
}

/* Copy column i as a fresh string (NULL stays NULL). rc: 0 or GW_ENOMEM. */
static int col_dup(sqlite3_stmt *s, int i, char **out) {
  const unsigned char *t = sqlite3_column_text(s, i);
  *out = NULL;
  if (!t) return sqlite3_column_type(s, i) == SQLITE_NULL ? 0 : GW_ENOMEM;
  *out = gws_strdup((const char *)t);
  return *out ? 0 : GW_ENOMEM;
}

/* A growable array of elem-sized items: room for one more at a[n]. */
typedef struct {
  void *a;
  size_t n, cap, elem;
} vec_t;

static void *vec_push(vec_t *v) {
  if (v->n == v->cap) {
    size_t nc = v->cap ? v->cap * 2 : 16;
    void *p = realloc(v->a, nc * v->elem);
    if (!p) return NULL;
    v->a = p;
    v->cap = nc;
  }
  memset((char *)v->a + v->n * v->elem, 0, v->elem);
  return (char *)v->a + v->n++ * v->elem;
}

/* ------------------------------------------------------------- segments */

typedef struct {
  int64_t id, seq;
  uint64_t inc;
  int64_t start, cut; /* cut = INT64_MAX for the latest segment */
  uint32_t k;
} seg_t;

static int row_seg(void *arg, sqlite3_stmt *s) {
  seg_t *g = vec_push(arg);
  if (!g) return GW_ENOMEM;
  g->id = sqlite3_column_int64(s, 0);
  g->seq = sqlite3_column_int64(s, 1);
  g->inc = (uint64_t)sqlite3_column_int64(s, 2);
  g->start = sqlite3_column_int64(s, 3);
  g->k = (uint32_t)sqlite3_column_int64(s, 4);
  return 0;
}

/* Suffix minimum of start over later segments (segs in seq order). */
static void set_cuts(seg_t *g, size_t n) {
  int64_t cut = INT64_MAX;
  for (size_t i = n; i-- > 0;) {
    g[i].cut = cut;
    if (g[i].start < cut) cut = g[i].start;
  }
}

/* The segments of (run, tag) in seq order with their cuts; GW_ENOTFOUND if
 * the stream is unknown. *segs is the caller's to free (also on failure). */
static int load_segs(sqlite3 *db, const char *run, const char *tag, vec_t *segs) {
  static const char sql[] =
      "SELECT s.id, s.seq, s.incarnation, s.start_step, s.k FROM streams s "
      "JOIN runs r ON r.id = s.run WHERE r.name = ?1 AND s.tag = ?2 ORDER BY s.seq";
  arg_t a[2] = {A_TEXT(run), A_TEXT(tag)};
  int rc;
  segs->elem = sizeof(seg_t);
  rc = query(db, sql, a, 2, row_seg, segs, 1);
  if (rc == 0) set_cuts(segs->a, segs->n);
  return rc;
}

/* The step range of segment g read for [from, to]: 0 if empty. */
static int seg_range(const seg_t *g, uint64_t from, uint64_t to, int all, int64_t *lo,
                     int64_t *hi) {
  *lo = gws_clamp_step(from);
  *hi = gws_clamp_step(to);
  if (!all && g->cut != INT64_MAX) {
    if (g->cut <= 0) return 0;
    if (g->cut - 1 < *hi) *hi = g->cut - 1;
  }
  return *lo <= *hi;
}

/* Merge of per-segment cursors by (step, seq). Each cursor runs sql with
 * ?1 segment, ?2 lo, ?3 hi (and ?4 = k when k != 0); column 0 is the step. */
typedef struct {
  sqlite3_stmt *s;
  size_t seg; /* index into the segment array */
  int has;
  int64_t step;
} cur_t;

typedef struct {
  cur_t *c;
  size_t n;
  size_t last; /* cursor of the row handed out last, SIZE_MAX: none */
} merge_t;

static int cur_step(cur_t *c) {
  int r = sqlite3_step(c->s);
  c->has = r == SQLITE_ROW;
  if (c->has) c->step = sqlite3_column_int64(c->s, 0);
  return r == SQLITE_ROW || r == SQLITE_DONE ? 0 : gws_map_rc(r);
}

static void merge_close(merge_t *m) {
  for (size_t i = 0; i < m->n; i++) sqlite3_finalize(m->c[i].s);
  free(m->c);
  memset(m, 0, sizeof *m);
}

static int merge_open(merge_t *m, sqlite3 *db, const char *sql, const seg_t *g,
                      size_t ng, uint64_t from, uint64_t to, int all, uint32_t k) {
  int rc = 0;
  memset(m, 0, sizeof *m);
  m->last = SIZE_MAX;
  m->c = calloc(ng ? ng : 1, sizeof *m->c);
  if (!m->c) return GW_ENOMEM;
  for (size_t i = 0; i < ng && rc == 0; i++) {
    int64_t lo, hi;
    cur_t *c;
    if (!seg_range(&g[i], from, to, all, &lo, &hi)) continue;
    c = &m->c[m->n];
    rc = gws_map_rc(sqlite3_prepare_v2(db, sql, -1, &c->s, NULL));
    if (rc) break;
    m->n++;
    c->seg = i;
    sqlite3_bind_int64(c->s, 1, g[i].id);
    sqlite3_bind_int64(c->s, 2, lo);
    sqlite3_bind_int64(c->s, 3, hi);
    if (k) sqlite3_bind_int64(c->s, 4, k);
    rc = cur_step(c);
  }
  if (rc) merge_close(m);
  return rc;
}

/* 1 with *c the cursor holding the next row (valid until the next call), 0
 * at the end, or an error. Ties on step go to the lower seq. */
static int merge_next(merge_t *m, cur_t **out) {
  size_t best = SIZE_MAX;
  if (m->last != SIZE_MAX) {
    int rc = cur_step(&m->c[m->last]);
    m->last = SIZE_MAX;
    if (rc) return rc;
  }
  for (size_t i = 0; i < m->n; i++)
    if (m->c[i].has && (best == SIZE_MAX || m->c[i].step < m->c[best].step)) best = i;
  if (best == SIZE_MAX) return 0;
  m->last = best;
  *out = &m->c[best];
  return 1;
}

/* The same merge over the point cursors of segments (store_chunks.c):
 * chunks and rows of each segment in step order, ties to the lower seq. */
typedef struct {
  gws_pcur_t *c;
  size_t *seg;
  size_t n;
  size_t last;
} pmerge_t;

static void pmerge_close(pmerge_t *m) {
  for (size_t i = 0; i < m->n; i++) gws_pcur_close(&m->c[i]);
  free(m->c);
  free(m->seg);
  memset(m, 0, sizeof *m);
}

static int pmerge_open(pmerge_t *m, sqlite3 *db, const seg_t *g, size_t ng, uint64_t from,
                       uint64_t to, int all) {
  int rc = 0;
  memset(m, 0, sizeof *m);
  m->last = SIZE_MAX;
  m->c = calloc(ng ? ng : 1, sizeof *m->c);
  m->seg = calloc(ng ? ng : 1, sizeof *m->seg);
  if (!m->c || !m->seg) {
    pmerge_close(m);
    return GW_ENOMEM;
  }
  for (size_t i = 0; i < ng && rc == 0; i++) {
    int64_t lo, hi;
    if (!seg_range(&g[i], from, to, all, &lo, &hi)) continue;
    rc = gws_pcur_open(&m->c[m->n], db, g[i].id, lo, hi);
    if (rc) {
      gws_pcur_close(&m->c[m->n]);
      break;
    }
    m->seg[m->n++] = i;
  }
  if (rc) pmerge_close(m);
  return rc;
}

static int pmerge_next(pmerge_t *m, gws_pcur_t **out, size_t *seg) {
  size_t best = SIZE_MAX;
  if (m->last != SIZE_MAX) {
    int rc = gws_pcur_next(&m->c[m->last]);
    m->last = SIZE_MAX;
    if (rc) return rc;
  }
  for (size_t i = 0; i < m->n; i++)
    if (m->c[i].has && (best == SIZE_MAX || m->c[i].step < m->c[best].step)) best = i;
  if (best == SIZE_MAX) return 0;
  m->last = best;
  *out = &m->c[best];
  *seg = m->seg[best];
  return 1;
}

/* ----------------------------------------------------------------- runs */

typedef struct {
  vec_t v;
  int64_t live_after; /* now - stall */
} runs_ctx_t;

static int row_run(void *arg, sqlite3_stmt *s) {
  runs_ctx_t *x = arg;
  gw_store_run_t *r = vec_push(&x->v);
  int live;
  if (!r) return GW_ENOMEM;
  r->streams = (uint64_t)sqlite3_column_int64(s, 1);
  r->first_step = (uint64_t)sqlite3_column_int64(s, 2);
  r->last_step = (uint64_t)sqlite3_column_int64(s, 3);
  r->last_seen_ns = sqlite3_column_int64(s, 4);
  live = sqlite3_column_int(s, 5);
  r->state = !live ? GW_RUN_FINISHED
             : r->last_seen_ns >= x->live_after ? GW_RUN_LIVE
                                                : GW_RUN_STALLED;
  r->meta_incarnation = (uint64_t)sqlite3_column_int64(s, 7);
  r->meta_wall_ns = sqlite3_column_int64(s, 8);
  r->meta_recv_ns = sqlite3_column_int64(s, 9);
  int rc = col_dup(s, 6, &r->meta);
  return rc ? rc : col_dup(s, 0, &r->run);
}

int gw_store_runs(gw_store_t *st, int64_t now_ns, int64_t stall_ns,
                  gw_store_run_t **out, size_t *n) {
  static const char sql[] =
      "SELECT r.name, count(DISTINCT s.tag), coalesce(min(s.first_step), 0), "
      "coalesce(max(s.last_step), 0), coalesce(max(s.last_seen), 0), "
      "coalesce(max(s.live), 0), m.doc, m.incarnation, m.wall_ns, m.recv_ns "
      "FROM runs r LEFT JOIN streams s ON s.run = r.id "
      "LEFT JOIN run_meta m ON m.run = r.id GROUP BY r.id "
      "ORDER BY r.name";
  runs_ctx_t x = {.v = {.elem = sizeof(gw_store_run_t)}};
  sqlite3 *db = NULL;
  int rc;
  if (!st || !out || !n || stall_ns < 0) return GW_EINVAL;
  *out = NULL;
  *n = 0;
  x.live_after = now_ns - stall_ns;
  rc = gws_rd_acquire(st, &db);
  if (rc) return rc;
  rc = query(db, sql, NULL, 0, row_run, &x, 0);
  gws_rd_release(st, db);
  if (rc) {
    gw_store_runs_free(x.v.a, x.v.n);
    return rc;
  }
  *out = x.v.a;
  *n = x.v.n;
  return 0;
}

void gw_store_runs_free(gw_store_run_t *runs, size_t n) {
  if (!runs) return;
  for (size_t i = 0; i < n; i++) {
    free(runs[i].run);
    free(runs[i].meta);
  }
  free(runs);
}

/* -------------------------------------------------------------- streams */

typedef struct {
  char *tag;
  int64_t id, start, first, last, seen, points;
  uint64_t inc, seed;
  uint32_t k;
  uint8_t kind, s;
} segrow_t;

static int row_segrow(void *arg, sqlite3_stmt *s) {
  segrow_t *g = vec_push(arg);
  if (!g) return GW_ENOMEM;
  g->id = sqlite3_column_int64(s, 1);
  g->inc = (uint64_t)sqlite3_column_int64(s, 2);
  g->k = (uint32_t)sqlite3_column_int64(s, 3);
  g->kind = (uint8_t)sqlite3_column_int(s, 4);
  g->s = (uint8_t)sqlite3_column_int(s, 5);
  g->seed = (uint64_t)sqlite3_column_int64(s, 6);
  g->start = sqlite3_column_int64(s, 7);
  g->first = sqlite3_column_type(s, 8) == SQLITE_NULL ? -1 : sqlite3_column_int64(s, 8);
  g->last = sqlite3_column_type(s, 9) == SQLITE_NULL ? -1 : sqlite3_column_int64(s, 9);
  g->seen = sqlite3_column_int64(s, 10);
  g->points = sqlite3_column_int64(s, 11);
  return col_dup(s, 0, &g->tag);
}

/* count, min and max step of the visible points (step < cut) of a
 * superseded segment. */
static int row_vis(sqlite3 *db, segrow_t *g, int64_t cut) {
  int64_t n = 0, mn = 0, mx = 0;
  int rc = gws_chunk_count(db, g->id, INT64_MIN, cut - 1, &n, &mn, &mx);
  if (rc) return rc;
  g->points = n;
  g->first = n ? mn : -1;
  g->last = n ? mx : -1;
  return 0;
}

int gw_store_streams(gw_store_t *st, const char *run, gw_store_stream_t **out,
                     size_t *n) {
  static const char sql_run[] = "SELECT id FROM runs WHERE name = ?1";
  /* tags ascending, segments newest first: the running minimum of
   * start_step is each segment's cut */
  static const char sql[] =
      "SELECT tag, id, incarnation, k, kind, s, seed, start_step, first_step, "
      "last_step, coalesce(last_seen, 0), points FROM streams WHERE run = ?1 "
      "ORDER BY tag, seq DESC";
  vec_t segs = {.elem = sizeof(segrow_t)}, res = {.elem = sizeof(gw_store_stream_t)};
  sqlite3 *db = NULL;
  int64_t run_id = 0, cut = INT64_MAX;
  gw_store_stream_t *cur = NULL;
  int rc;
  if (!st || !run || !out || !n) return GW_EINVAL;
  *out = NULL;
  *n = 0;
  rc = rd_begin(st, &db);
  if (rc) return rc;
  rc = query(db, sql_run, (arg_t[]){A_TEXT(run)}, 1, row_int, &run_id, 1);
  if (rc == 0) rc = query(db, sql, (arg_t[]){A_INT(run_id)}, 1, row_segrow, &segs, 0);
  for (size_t i = 0; rc == 0 && i < segs.n; i++) {
    segrow_t *g = &((segrow_t *)segs.a)[i];
    if (!cur || strcmp(cur->tag, g->tag) != 0) { /* latest segment of a tag */
      cur = vec_push(&res);
      if (!cur) {
        rc = GW_ENOMEM;
        break;
      }
      cur->tag = g->tag;
      g->tag = NULL;
      cur->k = g->k;
      cur->kind = g->kind;
      cur->s = g->s;
      cur->seed = g->seed;
      cur->incarnation = g->inc;
      cut = INT64_MAX;
    } else if (cut > 0) { /* superseded from cut on */
      rc = row_vis(db, g, cut);
    } else {
      g->points = 0;
      g->first = g->last = -1;
    }
    cur->segments++;
    if (g->points > 0 && g->first >= 0) {
      if (cur->points == 0 || (uint64_t)g->first < cur->first_step)
        cur->first_step = (uint64_t)g->first;
      if ((uint64_t)g->last > cur->last_step) cur->last_step = (uint64_t)g->last;
      cur->points += (uint64_t)g->points;
    }
    if (g->seen > cur->last_seen_ns) cur->last_seen_ns = g->seen;
    if (g->start < cut) cut = g->start;
  }
  rd_end(st, db);
  for (size_t i = 0; i < segs.n; i++) free(((segrow_t *)segs.a)[i].tag);
  free(segs.a);
  if (rc) {
    gw_store_streams_free(res.a, res.n);
    return rc;
  }
  *out = res.a;
  *n = res.n;
  return 0;
}

void gw_store_streams_free(gw_store_stream_t *s, size_t n) {
  if (!s) return;
  for (size_t i = 0; i < n; i++) free(s[i].tag);
  free(s);
}

/* --------------------------------------------------------------- series */

/* First index of bucket b when n points are split into nb buckets. */
static size_t bucket_start(size_t b, size_t n, size_t nb) {
  return (size_t)((unsigned __int128)b * n / nb);
}

void gw_store_series_free(gw_series_t *s) {
  if (!s) return;
  if (s->cols)
    for (size_t m = 0; m < s->n_metrics; m++) free(s->cols[m]);
  free(s->cols);
  free(s->step);
  free(s->inc);
  memset(s, 0, sizeof *s);
}

/* The series being built: plain rows, or min/max buckets. */
typedef struct {
  gw_series_t *out;
  const int *metrics;
  size_t nm, total, nb, i, b, end;
  double *mn, *mx;
  uint64_t first_step, first_inc;
} ser_t;

static void ser_row(ser_t *x, uint64_t step, uint64_t inc, const gws_pcur_t *v) {
  gw_series_t *o = x->out;
  if (!x->nb) {
    o->step[x->i] = step;
    o->inc[x->i] = inc;
    for (size_t m = 0; m < x->nm; m++) o->cols[m][x->i] = gws_pcur_metric(v, x->metrics[m]);
    x->i++;
    return;
  }
  if (x->i == bucket_start(x->b, x->total, x->nb)) { /* bucket opens */
    x->first_step = step;
    x->first_inc = inc;
    for (size_t m = 0; m < x->nm; m++) x->mn[m] = x->mx[m] = NAN;
  }
  for (size_t m = 0; m < x->nm; m++) {
    double y = gws_pcur_metric(v, x->metrics[m]);
    if (isnan(y)) continue;
    if (isnan(x->mn[m]) || y < x->mn[m]) x->mn[m] = y;
    if (isnan(x->mx[m]) || y > x->mx[m]) x->mx[m] = y;
  }
  x->i++;
  if (x->i == x->end) { /* bucket closes: (first step, mins), (last step, maxes) */
    size_t r = 2 * x->b;
    o->step[r] = x->first_step;
    o->inc[r] = x->first_inc;
    o->step[r + 1] = step;
    o->inc[r + 1] = inc;
    for (size_t m = 0; m < x->nm; m++) {
      o->cols[m][r] = x->mn[m];
      o->cols[m][r + 1] = x->mx[m];
    }
    x->b++;
    x->end = bucket_start(x->b + 1, x->total, x->nb);
  }
}

/* Rows a series of these segments would select (before downsampling). */
static int count_rows(sqlite3 *db, const vec_t *segs, uint64_t from, uint64_t to, int all,
                      int64_t *total) {
  int rc = 0;
  *total = 0;
  for (size_t i = 0; rc == 0 && i < segs->n && from <= to; i++) {
    const seg_t *g = &((const seg_t *)segs->a)[i];
    int64_t lo, hi, c = 0, mn, mx;
    if (!seg_range(g, from, to, all, &lo, &hi)) continue;
    rc = gws_chunk_count(db, g->id, lo, hi, &c, &mn, &mx);
    *total += c;
  }
  return rc;
}

int gw_store_series_count(gw_store_t *st, const char *run, const char *tag, uint64_t from,
                          uint64_t to, int all_incarnations, uint64_t *n) {
  vec_t segs = {0};
  sqlite3 *db = NULL;
  int64_t total = 0;
  int rc;
  if (!st || !run || !tag || !n) return GW_EINVAL;
  *n = 0;
  rc = rd_begin(st, &db);
  if (rc) return rc;
  rc = load_segs(db, run, tag, &segs);
  if (rc == 0) rc = count_rows(db, &segs, from, to, all_incarnations, &total);
  rd_end(st, db);
  free(segs.a);
  if (rc == 0) *n = (uint64_t)total;
  return rc;
}

int gw_store_series(gw_store_t *st, const char *run, const char *tag,
                    const int *metrics, size_t n_metrics, uint64_t from,
                    uint64_t to, size_t max_points, gw_series_t *out,
                    int all_incarnations) {
  vec_t segs = {0};
  pmerge_t mg = {0};
  ser_t x = {0};
  sqlite3 *db = NULL;
  int64_t total = 0;
  size_t rows, nmx;
  int rc;
  if (out) memset(out, 0, sizeof *out);
  if (!st || !run || !tag || !out || (n_metrics && !metrics) || max_points == 1)
    return GW_EINVAL;
  for (size_t m = 0; m < n_metrics; m++)
    if (metrics[m] < 0 || metrics[m] >= GW_METRIC_COUNT) return GW_EINVAL;
  rc = rd_begin(st, &db); /* one snapshot for count and rows */
  if (rc) return rc;
  rc = load_segs(db, run, tag, &segs);
  if (rc == 0) rc = count_rows(db, &segs, from, to, all_incarnations, &total);
  if (rc) goto done;
  out->n_metrics = n_metrics;
  out->downsampled = max_points && (size_t)total > max_points;
  x.out = out;
  x.metrics = metrics;
  x.nm = n_metrics;
  x.total = (size_t)total;
  x.nb = out->downsampled ? max_points / 2 : 0;
  rows = out->downsampled ? 2 * x.nb : (size_t)total;
  nmx = n_metrics ? n_metrics : 1;
  out->cols = calloc(nmx, sizeof *out->cols);
  out->step = malloc((rows ? rows : 1) * sizeof *out->step);
  out->inc = malloc((rows ? rows : 1) * sizeof *out->inc);
  x.mn = malloc(nmx * sizeof *x.mn);
  x.mx = malloc(nmx * sizeof *x.mx);
  if (!out->cols || !out->step || !out->inc || !x.mn || !x.mx) {
    rc = GW_ENOMEM;
    goto done;
  }
  for (size_t m = 0; m < n_metrics; m++) {
    out->cols[m] = malloc((rows ? rows : 1) * sizeof(double));
    if (!out->cols[m]) {
      rc = GW_ENOMEM;
      goto done;
    }
  }
  if (total == 0) goto done;
  rc = pmerge_open(&mg, db, segs.a, segs.n, from, to, all_incarnations);
  if (x.nb) x.end = bucket_start(1, x.total, x.nb);
  while (rc == 0 && x.i < x.total) {
    gws_pcur_t *c = NULL;
    size_t seg = 0;
    int r = pmerge_next(&mg, &c, &seg);
    if (r <= 0) {
      rc = r;
      break;
    }
    ser_row(&x, (uint64_t)c->step, ((seg_t *)segs.a)[seg].inc, c);
  }
  if (rc == 0 && (x.nb ? x.b != x.nb : x.i != x.total)) rc = GW_EDB; /* snapshot broke */
  out->n = x.nb ? 2 * x.nb : x.i;
done:
  pmerge_close(&mg);
  rd_end(st, db);
  free(segs.a);
  free(x.mn);
  free(x.mx);
  if (rc) gw_store_series_free(out);
  return rc;
}

/* ------------------------------------------------------------- sketches */

int gw_store_sketches(gw_store_t *st, const char *run, const char *tag,
                      uint64_t from, uint64_t to, uint64_t **steps, float **z,
                      uint32_t *k, size_t *n) {
  static const char sql[] =
      "SELECT step, z FROM sketches WHERE stream = ?1 AND step BETWEEN ?2 AND ?3 "
      "AND k = ?4 ORDER BY step";
  vec_t segs = {0};
  merge_t mg = {0};
  uint64_t *sa = NULL;
  float *za = NULL;
  size_t cnt = 0, cap = 0;
  sqlite3 *db = NULL;
  uint32_t kk = 0;
  int rc;
  if (!st || !run || !tag || !steps || !z || !k || !n) return GW_EINVAL;
  *steps = NULL;
  *z = NULL;
  *k = 0;
  *n = 0;
  rc = rd_begin(st, &db);
  if (rc) return rc;
  rc = load_segs(db, run, tag, &segs);
  if (rc == 0) kk = ((seg_t *)segs.a)[segs.n - 1].k;
  if (rc == 0 && from <= to && kk > 0)
    rc = merge_open(&mg, db, sql, segs.a, segs.n, from, to, 0, kk);
  while (rc == 0 && from <= to && kk > 0) {
    cur_t *c = NULL;
    const unsigned char *v;
    int r = merge_next(&mg, &c);
    if (r <= 0) {
      rc = r;
      break;
    }
    if ((size_t)sqlite3_column_bytes(c->s, 1) != (size_t)kk * 4) continue;
    if (cnt == cap) {
      size_t nc = cap ? 2 * cap : 16;
      uint64_t *ns = realloc(sa, nc * sizeof *ns);
      float *nz;
      if (ns) sa = ns;
      nz = ns ? realloc(za, nc * kk * sizeof *nz) : NULL;
      if (!nz) {
        rc = GW_ENOMEM;
        break;
      }
      za = nz;
      cap = nc;
    }
    sa[cnt] = (uint64_t)c->step;
    v = sqlite3_column_blob(c->s, 1);
    for (uint32_t q = 0; q < kk; q++) za[cnt * kk + q] = gws_get_f32le(v + 4 * q);
    cnt++;
  }
  merge_close(&mg);
  rd_end(st, db);
  free(segs.a);
  if (rc) {
    free(sa);
    free(za);
    return rc;
  }
  *steps = sa;
  *z = za;
  *k = kk;
  *n = cnt;
  return 0;
}

typedef struct {
  int (*cb)(void *arg, uint64_t step, const double *z, uint32_t k);
  void *arg;
  double *buf;
  size_t cap;
} replay_t;

static int row_replay(void *arg, sqlite3_stmt *s) {
  replay_t *x = arg;
  uint32_t k = (uint32_t)sqlite3_column_int64(s, 1);
  const unsigned char *v = sqlite3_column_blob(s, 2);
  if (k == 0 || (size_t)sqlite3_column_bytes(s, 2) != (size_t)k * 4) return 0; /* damaged */
  if (k > x->cap) {
    double *b = realloc(x->buf, (size_t)k * sizeof *b);
    if (!b) return GW_ENOMEM;
    x->buf = b;
    x->cap = k;
  }
  for (uint32_t q = 0; q < k; q++) x->buf[q] = gws_get_f32le(v + 4 * q);
  return x->cb(x->arg, (uint64_t)sqlite3_column_int64(s, 0), x->buf, k);
}

int gw_store_replay(gw_store_t *st, const char *run, const char *tag,
                    int (*cb)(void *arg, uint64_t step, const double *z,
                              uint32_t k),
                    void *arg) {
  static const char sql[] =
      "SELECT step, k, z FROM sketches WHERE stream = ?1 ORDER BY step";
  vec_t segs = {0};
  replay_t x = {cb, arg, NULL, 0};
  sqlite3 *db = NULL;
  int rc;
  if (!st || !run || !tag || !cb) return GW_EINVAL;
  rc = rd_begin(st, &db);
  if (rc) return rc;
  rc = load_segs(db, run, tag, &segs);
  if (rc == 0)
    rc = query(db, sql, (arg_t[]){A_INT(((seg_t *)segs.a)[segs.n - 1].id)}, 1, row_replay,
               &x, 0);
  rd_end(st, db);
  free(segs.a);
  free(x.buf);
  return rc;
}

/* ------------------------------------------------------------- restarts */

static int row_restart(void *arg, sqlite3_stmt *s) {
  gw_store_restart_t *e = vec_push(arg);
  const char *reason;
  int rc;
  if (!e) return GW_ENOMEM;
  e->step = (uint64_t)sqlite3_column_int64(s, 2);
  e->incarnation = (uint64_t)sqlite3_column_int64(s, 3);
  e->prev_incarnation = (uint64_t)sqlite3_column_int64(s, 4);
  reason = gw_restart_reason_name(
      gw_restart_reason_lookup((const char *)sqlite3_column_text(s, 5)));
  e->reason = reason ? reason : "unknown";
  e->recv_ns = sqlite3_column_int64(s, 6);
  rc = col_dup(s, 0, &e->run);
  if (rc == 0) rc = col_dup(s, 1, &e->tag);
  return rc;
}

int gw_store_restarts(gw_store_t *st, const char *run, const char *tag,
                      size_t limit, gw_store_restart_t **out, size_t *n) {
  static const char sql_run[] = "SELECT id FROM runs WHERE name = ?1";
  static const char sql[] =
      "SELECT r.name, e.tag, e.step, e.incarnation, e.prev_incarnation, e.reason, "
      "e.recv_ns FROM restarts e JOIN runs r ON r.id = e.run "
      "WHERE e.run = ?1 AND (?2 IS NULL OR e.tag = ?2) "
      "ORDER BY e.recv_ns DESC, e.id DESC LIMIT ?3";
  vec_t v = {.elem = sizeof(gw_store_restart_t)};
  sqlite3 *db = NULL;
  int64_t run_id = 0;
  int rc;
  if (!st || !run || !out || !n || limit > (size_t)INT64_MAX) return GW_EINVAL;
  *out = NULL;
  *n = 0;
  rc = rd_begin(st, &db);
  if (rc) return rc;
  rc = query(db, sql_run, (arg_t[]){A_TEXT(run)}, 1, row_int, &run_id, 1);
  if (rc == 0)
    rc = query(db, sql,
               (arg_t[]){A_INT(run_id), A_TEXT(tag), A_INT(limit ? (int64_t)limit : -1)}, 3,
               row_restart, &v, 0);
  rd_end(st, db);
  if (rc) {
    gw_store_restarts_free(v.a, v.n);
    return rc;
  }
  *out = v.a;
  *n = v.n;
  return 0;
}

void gw_store_restarts_free(gw_store_restart_t *r, size_t n) {
  if (!r) return;
  for (size_t i = 0; i < n; i++) {
    free(r[i].run);
    free(r[i].tag);
  }
  free(r);
}

/* ---------------------------------------------------------- small reads */

int gw_store_row_count(gw_store_t *st, uint64_t *rows) {
  sqlite3 *db = NULL;
  int64_t v = 0;
  int rc;
  if (!st || !rows) return GW_EINVAL;
  *rows = 0;
  rc = gws_rd_acquire(st, &db);
  if (rc) return rc;
  rc = query(db, "SELECT coalesce(sum(points), 0) FROM streams", NULL, 0, row_int, &v, 1);
  gws_rd_release(st, db);
  if (rc == 0) *rows = (uint64_t)v;
  return rc;
}

static int row_integrity(void *arg, sqlite3_stmt *s) {
  const unsigned char *t = sqlite3_column_text(s, 0);
  /* "ok" comes alone; any other row is a problem */
  (void)arg;
  return t && strcmp((const char *)t, "ok") == 0 ? 0 : GW_EDB;
}

int gw_store_integrity_check(gw_store_t *st) {
  sqlite3 *db = NULL;
  int rc;
  if (!st) return GW_EINVAL;
  rc = gws_rd_acquire(st, &db);
  if (rc) return rc;
  rc = query(db, "PRAGMA integrity_check", NULL, 0, row_integrity, NULL, 1);
  if (rc == 0) rc = gws_chunk_verify(db);
  gws_rd_release(st, db);
  return rc == GW_ENOTFOUND ? GW_EDB : rc;
}

/* --------------------------------------------------------------- alerts */

static int row_alert(void *arg, sqlite3_stmt *s) {
  static const int cols[6] = {1, 2, 3, 4, 12, 13};
  gw_store_alert_t *x = vec_push(arg);
  char *str[6] = {0};
  const char *state_txt;
  int rc = 0;
  if (!x) return GW_ENOMEM;
  for (int c = 0; c < 6 && rc == 0; c++) rc = col_dup(s, cols[c], &str[c]);
  x->rule = str[0], x->run = str[1], x->tag = str[2], x->severity = str[3];
  x->labels = str[4], x->annotations = str[5];
  if (rc) return rc; /* the strings copied so far are freed with the array */
  x->id = (uint64_t)sqlite3_column_int64(s, 0);
  state_txt = (const char *)sqlite3_column_text(s, 5);
  x->state = GW_ALERT_PENDING;
  for (int q = 0; q < 3; q++)
    if (state_txt && strcmp(state_txt, gws_alert_state_names[q]) == 0) x->state = q;
  x->value = sqlite3_column_type(s, 6) == SQLITE_NULL ? NAN : sqlite3_column_double(s, 6);
  x->threshold = sqlite3_column_type(s, 7) == SQLITE_NULL ? NAN : sqlite3_column_double(s, 7);
  x->started_step = (uint64_t)sqlite3_column_int64(s, 8);
  x->started_ns = sqlite3_column_int64(s, 9);
  x->fired_ns = sqlite3_column_int64(s, 10);
  x->resolved_ns = sqlite3_column_int64(s, 11);
  return 0;
}

static int alerts_query(gw_store_t *st, const char *sql, const arg_t *a, size_t na,
                        gw_store_alert_t **out, size_t *n) {
  vec_t v = {.elem = sizeof(gw_store_alert_t)};
  sqlite3 *db = NULL;
  int rc;
  *out = NULL;
  *n = 0;
  rc = gws_rd_acquire(st, &db);
  if (rc) return rc;
  rc = query(db, sql, a, na, row_alert, &v, 0);
  gws_rd_release(st, db);
  if (rc) {
    gw_store_alerts_free(v.a, v.n);
    return rc;
  }
  *out = v.a;
  *n = v.n;
  return 0;
}

#define ALERT_COLS                                                           \
  "SELECT id, rule, run, tag, severity, state, value, threshold, "          \
  "started_step, started_ns, fired_ns, resolved_ns, labels, annotations "   \
  "FROM alerts "

int gw_store_alerts(gw_store_t *st, int state, size_t limit,
                    gw_store_alert_t **out, size_t *n) {
  int64_t lim = limit && limit <= (size_t)INT64_MAX ? (int64_t)limit : -1;
  if (!st || !out || !n || state < GW_ALERT_ANY || state > GW_ALERT_RESOLVED)
    return GW_EINVAL;
  if (state == GW_ALERT_ANY)
    return alerts_query(st,
                        ALERT_COLS "ORDER BY coalesce(started_ns, 0) DESC, id DESC "
                                   "LIMIT ?1",
                        (arg_t[]){A_INT(lim)}, 1, out, n);
  return alerts_query(st,
                      ALERT_COLS "WHERE state = ?1 "
                                 "ORDER BY coalesce(started_ns, 0) DESC, id DESC "
                                 "LIMIT ?2",
                      (arg_t[]){A_TEXT(gws_alert_state_names[state]), A_INT(lim)}, 2,
                      out, n);
}

int gw_store_alerts_firing(gw_store_t *st, gw_store_alert_t **out, size_t *n) {
  if (!st || !out || !n) return GW_EINVAL;
  return alerts_query(st,
                      ALERT_COLS "WHERE state IN ('pending', 'firing') ORDER BY id",
                      NULL, 0, out, n);
}

void gw_store_alerts_free(gw_store_alert_t *a, size_t n) {
  if (!a) return;
  for (size_t i = 0; i < n; i++) {
    free((char *)a[i].rule);
    free((char *)a[i].run);
    free((char *)a[i].tag);
    free((char *)a[i].severity);
    free((char *)a[i].labels);
    free((char *)a[i].annotations);
  }
  free(a);
}

/* ------------------------------------------------ synchronous read-write */

/* Lock sy_mu and get the read-write connection (":memory:": the writer's,
 * under db_mu). 0 or GW_E* (then nothing is held). */
static int sy_acquire(gw_store_t *st, sqlite3 **db) {
  int rc = SQLITE_OK;
  pthread_mutex_lock(&st->sy_mu);
  if (st->mem) {
    pthread_mutex_lock(&st->db_mu);
    *db = st->wdb;
    return 0;
  }
  if (!st->sdb) {
    rc = sqlite3_open_v2(st->path, &st->sdb, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX,
                         NULL);
    if (rc == SQLITE_OK) {
      sqlite3_extended_result_codes(st->sdb, 1);
      rc = sqlite3_busy_timeout(st->sdb, BUSY_TIMEOUT_MS);
    }
    if (rc != SQLITE_OK) {
      sqlite3_close(st->sdb);
      st->sdb = NULL;
      pthread_mutex_unlock(&st->sy_mu);
      return gws_map_rc(rc);
    }
  }
  *db = st->sdb;
  return 0;
}

static void sy_release(gw_store_t *st, sqlite3 *db) {
  if (!sqlite3_get_autocommit(db)) gws_exec(db, "ROLLBACK");
  if (st->mem) pthread_mutex_unlock(&st->db_mu);
  pthread_mutex_unlock(&st->sy_mu);
}

void gws_sy_close(gw_store_t *st) {
  sqlite3_finalize(st->sy_ins);
  st->sy_ins = NULL;
  sqlite3_close(st->sdb);
  st->sdb = NULL;
}

/* An exec through the fault seam (op) on the synchronous connection. */
static int sy_exec(gw_store_t *st, sqlite3 *db, int op, const char *sql) {
  int rc = gws_fault(st, op);
  if (rc == SQLITE_OK) rc = gws_exec(db, sql);
  return rc;
}

static sqlite3 *sy_db(gw_store_t *st) { return st->mem ? st->wdb : st->sdb; }

/* End the state transaction (after its rollback or commit). */
static void state_end(gw_store_t *st) {
  sqlite3_finalize(st->sy_ins);
  st->sy_ins = NULL;
  sy_release(st, sy_db(st));
}

int gw_store_state_begin(gw_store_t *st) {
  static const char ins[] =
      "INSERT INTO stream_state(run, tag, blob) VALUES(?1, ?2, ?3) "
      "ON CONFLICT(run, tag) DO UPDATE SET blob = excluded.blob";
  sqlite3 *db = NULL;
  int rc;
  if (!st) return GW_EINVAL;
  pthread_mutex_lock(&st->q_mu); /* sy_ins is only set between begin and commit */
  rc = st->sy_ins ? GW_EINVAL : 0;
  pthread_mutex_unlock(&st->q_mu);
  if (rc) return rc;
  rc = gw_store_flush(st);
  if (rc) return rc;
  rc = sy_acquire(st, &db);
  if (rc) return rc;
  rc = sy_exec(st, db, GW_STORE_OP_BEGIN, "BEGIN IMMEDIATE");
  if (rc == SQLITE_OK) rc = sy_exec(st, db, GW_STORE_OP_STEP, "DELETE FROM stream_state");
  if (rc == SQLITE_OK) {
    sqlite3_stmt *s = NULL;
    rc = sqlite3_prepare_v2(db, ins, -1, &s, NULL);
    pthread_mutex_lock(&st->q_mu);
    st->sy_ins = s;
    pthread_mutex_unlock(&st->q_mu);
  }
  if (rc != SQLITE_OK) {
    state_end(st);
    return gws_map_rc(rc);
  }
  return 0;
}

int gw_store_state_put(gw_store_t *st, const char *run, const char *tag,
                       const void *blob, size_t len) {
  sqlite3_stmt *s;
  int rc;
  if (!st || !st->sy_ins || !run || !tag || !*run || !*tag || !blob || len == 0 ||
      len > INT_MAX)
    return GW_EINVAL;
  s = st->sy_ins;
  rc = gws_fault(st, GW_STORE_OP_STEP);
  if (rc == SQLITE_OK) {
    sqlite3_bind_text(s, 1, run, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, tag, -1, SQLITE_STATIC);
    sqlite3_bind_blob(s, 3, blob, (int)len, SQLITE_STATIC);
    rc = sqlite3_step(s);
    if (rc == SQLITE_DONE) rc = SQLITE_OK;
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
  }
  if (rc != SQLITE_OK) {
    state_end(st); /* rolls back */
    return gws_map_rc(rc);
  }
  return 0;
}

int gw_store_state_commit(gw_store_t *st) {
  int rc;
  if (!st || !st->sy_ins) return GW_EINVAL;
  rc = sy_exec(st, sy_db(st), GW_STORE_OP_COMMIT, "COMMIT");
  state_end(st); /* rolls back if the commit failed */
  return gws_map_rc(rc);
}

int gw_store_state_clear(gw_store_t *st) {
  sqlite3 *db = NULL;
  int rc;
  if (!st || st->sy_ins) return GW_EINVAL;
  rc = sy_acquire(st, &db);
  if (rc) return rc;
  rc = gws_map_rc(sy_exec(st, db, GW_STORE_OP_STEP, "DELETE FROM stream_state"));
  sy_release(st, db);
  return rc;
}

static int row_resume(void *arg, sqlite3_stmt *s) {
  gw_store_resume_t *r = vec_push(arg);
  int rc, len;
  if (!r) return GW_ENOMEM;
  r->k = (uint32_t)sqlite3_column_int64(s, 2);
  r->kind = (uint8_t)sqlite3_column_int(s, 3);
  r->s = (uint8_t)sqlite3_column_int(s, 4);
  r->seed = (uint64_t)sqlite3_column_int64(s, 5);
  r->incarnation = (uint64_t)sqlite3_column_int64(s, 6);
  r->first_step = (uint64_t)sqlite3_column_int64(s, 7);
  r->last_step = (uint64_t)sqlite3_column_int64(s, 8);
  r->last_seen_ns = sqlite3_column_int64(s, 9);
  r->has_sketches = sqlite3_column_int(s, 10) != 0;
  rc = col_dup(s, 0, &r->run);
  if (rc == 0) rc = col_dup(s, 1, &r->tag);
  len = sqlite3_column_bytes(s, 11);
  if (rc == 0 && len > 0) {
    r->state = malloc((size_t)len);
    if (!r->state) return GW_ENOMEM;
    memcpy(r->state, sqlite3_column_blob(s, 11), (size_t)len);
    r->state_len = (size_t)len;
  }
  return rc;
}

int gw_store_resume_list(gw_store_t *st, int64_t live_since_ns,
                         gw_store_resume_t **out, size_t *n) {
  static const char retire[] =
      "UPDATE streams SET live = 0 WHERE live = 1 AND coalesce(last_seen, 0) < ?1";
  static const char sql[] =
      "SELECT r.name, s.tag, s.k, s.kind, s.s, s.seed, s.incarnation, s.start_step, "
      "coalesce(s.last_step, s.start_step), coalesce(s.last_seen, 0), "
      "EXISTS(SELECT 1 FROM sketches WHERE stream = s.id), ss.blob "
      "FROM streams s JOIN runs r ON r.id = s.run "
      "LEFT JOIN stream_state ss ON ss.run = r.name AND ss.tag = s.tag "
      "WHERE s.live = 1 ORDER BY r.name, s.tag";
  vec_t v = {.elem = sizeof(gw_store_resume_t)};
  sqlite3 *db = NULL;
  int rc;
  if (!st || !out || !n || st->sy_ins) return GW_EINVAL;
  *out = NULL;
  *n = 0;
  rc = sy_acquire(st, &db);
  if (rc) return rc;
  rc = gws_map_rc(sy_exec(st, db, GW_STORE_OP_BEGIN, "BEGIN IMMEDIATE"));
  if (rc == 0) {
    rc = gws_map_rc(gws_fault(st, GW_STORE_OP_STEP));
    if (rc == 0) rc = query(db, retire, (arg_t[]){A_INT(live_since_ns)}, 1, NULL, NULL, 0);
  }
  if (rc == 0) rc = query(db, sql, NULL, 0, row_resume, &v, 0);
  if (rc == 0) rc = gws_map_rc(sy_exec(st, db, GW_STORE_OP_COMMIT, "COMMIT"));
  sy_release(st, db); /* rolls back on failure */
  if (rc) {
    gw_store_resume_free(v.a, v.n);
    return rc;
  }
  *out = v.a;
  *n = v.n;
  return 0;
}

void gw_store_resume_free(gw_store_resume_t *r, size_t n) {
  if (!r) return;
  for (size_t i = 0; i < n; i++) {
    free(r[i].run);
    free(r[i].tag);
    free(r[i].state);
  }
  free(r);
}
