/* store.c — SQLite persistence for gradwatchd (see store.h for the contract).
 *
 * NOTES ON THE DESIGN OF THE STORE
 *
 * Three parties touch a store: the ingest thread(s) calling gw_store_put_*,
 * the writer thread started by gw_store_open, and reader threads calling
 * the query functions.
 *
 * Queue. Records (stream declarations, points, sketches, alerts) are copied
 * into fixed-size blocks of BLK_RECS records chained in a FIFO under q_mu.
 * A put is O(1): lock, copy into the tail block (taking a recycled block or
 * malloc'ing one when it is full), unlock. It never touches SQLite. `depth`
 * counts every record not yet committed, queued or already taken by the
 * writer, so queue_max bounds the memory of both, including a batch kept
 * across a disk fault. Every record gets a sequence number (enq_seq);
 * done_seq is the last committed one, which is what gw_store_flush waits on.
 *
 * Writer states and moves:
 *
 *     idle --(flush_ms elapsed | BATCH_MAX queued | flush | close)--> take
 *     take: detach the whole FIFO onto the writer's pending list (O(1))
 *     commit: pending is written in transactions of <= BATCH_MAX records
 *        ok   --> done_seq advances, blocks are recycled --> maintenance --> idle
 *        fail --> ROLLBACK, the map undo log is replayed, the records stay
 *                 pending --> failing
 *     failing --(backoff 100 ms doubling to 5 s elapsed | flush | close)--> commit
 *     close: commit until nothing is left, or until close_timeout_ms passes
 *            while failing, then drop the rest (counted) and exit.
 *
 * A transaction resolves records in queue order (stream declarations
 * upsert runs/streams rows and set map[engine id] = db stream id), then
 * sorts the chunk's points by (db stream, step, queue order) and inserts
 * them, so each stream's rows go into the B-tree contiguously and the stream
 * row (first/last step, last_seen, point count) and its point_minutes row
 * are updated once per stream per transaction, not per point. A point whose
 * (stream, step) exists replaces it (the INSERT's primary-key conflict falls
 * back to an UPDATE and is not counted as a new row).
 *
 * Errors. Result codes that concern one record (CONSTRAINT, TOOBIG,
 * MISMATCH, RANGE) skip that record and count a store error; every other
 * failure (FULL, IOERR, BUSY, NOMEM, …) fails the whole transaction, which
 * is retried as described. Nothing is logged unless cfg->log is set.
 *
 * Maintenance (writer thread, only while commits succeed): retention deletes
 * points whose minute bucket (wall_ns / 60 s, from point_minutes) is older
 * than retention_days, every retention_check_ms; max_db_mb deletes the
 * oldest minute buckets of all streams, one transaction per bucket, until
 * the used pages are under 90% of the limit, then runs incremental vacuum
 * (the schema sets auto_vacuum = INCREMENTAL at creation) and a passive
 * checkpoint so the file shrinks. The -wal file is not counted; it is
 * bounded by journal_size_limit after each checkpoint.
 *
 * Checkpoints. The writer never checkpoints in the normal case (its
 * wal_autocheckpoint is 0): with synchronous = NORMAL a WAL commit does not
 * fsync, the checkpoint does, and a writer waiting on those fsyncs measured
 * about 40% slower. A checkpointer thread with its own connection runs
 * PASSIVE checkpoints when the WAL hook reports CKPT_FRAMES frames, and at
 * least every CKPT_EVERY_FLUSHES × flush_ms (1 s by default) after a commit.
 * (Durability does not depend on it: a committed WAL frame survives kill -9
 * and is replayed at the next open.) Only if the WAL still reaches
 * WAL_HARD_FRAMES (checkpoints failing or too slow) does the writer
 * checkpoint itself, as backpressure.
 *
 * Readers. A file database is read through read-only connections kept in a
 * small pool (cfg->read_conns; 0 opens one per call); WAL gives each query a
 * snapshot beside the writer. A ":memory:" database exists only in the
 * writer's connection, so readers use that connection under db_mu, which the
 * writer also holds for each transaction.
 */
#include "store.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BLK_RECS 256        /* records per queue block */
#define BATCH_MAX 16384     /* records per writer transaction */
#define FREE_BLKS_MAX 64    /* recycled blocks kept (about 4 MB) */
#define STREAM_ID_MAX (1u << 24) /* engine stream ids are small slot indexes */
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define BUSY_TIMEOUT_MS 5000
#define SIZE_CHECK_MAX_ROUNDS 256 /* minute buckets deleted per size pass */
#define NS_PER_MIN 60000000000LL
#define CKPT_FRAMES 1000        /* WAL frames that wake the checkpointer */
#define CKPT_EVERY_FLUSHES 5    /* checkpoint at least every 5 flush_ms (1 s) */
#define WAL_HARD_FRAMES 65536   /* the writer checkpoints itself past this */
#define BLOB_BYTES (GW_METRIC_COUNT * 8)

enum { REC_STREAM = 1, REC_POINT, REC_SKETCH, REC_ALERT };

typedef struct rec_s {
  uint8_t type;
  uint32_t sid; /* engine stream id (stream, point, sketch) */
  int64_t step;
  int64_t wall_ns;
  union {
    unsigned char v[BLOB_BYTES]; /* point: packed little-endian float64 */
    struct {
      char *run, *tag;
      uint32_t k;
      uint8_t kind, s;
      uint64_t seed;
    } st;
    struct {
      float *z;
      uint32_t k;
    } sk;
    gw_store_alert_t *al; /* deep copy, one allocation */
  } u;
} rec_t;

typedef struct blk_s {
  struct blk_s *next;
  uint32_t n; /* records filled */
  rec_t r[BLK_RECS];
} blk_t;

typedef struct {
  uint8_t declared;
  uint8_t kept_first; /* store_every: first point since declaration kept */
} istream_t;

typedef struct { /* one point of the chunk being written */
  int64_t db, step, wall;
  uint32_t ord;
  const unsigned char *v;
} prow_t;

typedef struct {
  int64_t db;
  const rec_t *r;
} skrow_t;

typedef struct {
  uint32_t sid;
  int64_t old;
} undo_t;

enum { S_RUN_INS, S_RUN_GET, S_STREAM_UP, S_PT_INS, S_PT_UPD, S_ST_UPD,
       S_MIN_UP, S_SK_INS, S_AL_UP, S_COUNT };

static const char *const wsql[S_COUNT] = {
    [S_RUN_INS] = "INSERT INTO runs(name, created_ns) VALUES(?1, ?2) "
                  "ON CONFLICT(name) DO NOTHING",
    [S_RUN_GET] = "SELECT id FROM runs WHERE name = ?1",
    [S_STREAM_UP] =
        "INSERT INTO streams(run, tag, k, kind, s, seed, points) "
        "VALUES(?1, ?2, ?3, ?4, ?5, ?6, 0) ON CONFLICT(run, tag) DO UPDATE "
        "SET k = excluded.k, kind = excluded.kind, s = excluded.s, "
        "seed = excluded.seed RETURNING id",
    [S_PT_INS] = "INSERT INTO points(stream, step, v) VALUES(?1, ?2, ?3)",
    [S_PT_UPD] = "UPDATE points SET v = ?3 WHERE stream = ?1 AND step = ?2",
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
    [S_SK_INS] = "INSERT OR REPLACE INTO sketches(stream, step, k, z) "
                 "VALUES(?1, ?2, ?3, ?4)",
    [S_AL_UP] = "INSERT OR REPLACE INTO alerts(id, rule, run, tag, severity, "
                "state, value, threshold, started_step, started_ns, fired_ns, "
                "resolved_ns, labels, annotations) VALUES(?1, ?2, ?3, ?4, ?5, "
                "?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
};

/* Schema migrations: entry v-1 moves user_version v-1 to v. Append only. */
static const char *const migrations[GW_STORE_SCHEMA_VERSION] = {
    /* v1 */
    "CREATE TABLE runs("
    "  id INTEGER PRIMARY KEY,"
    "  name TEXT NOT NULL UNIQUE,"
    "  created_ns INTEGER NOT NULL);"
    "CREATE TABLE streams("
    "  id INTEGER PRIMARY KEY,"
    "  run INTEGER NOT NULL REFERENCES runs(id),"
    "  tag TEXT NOT NULL,"
    "  k INTEGER NOT NULL, kind INTEGER NOT NULL, s INTEGER NOT NULL,"
    "  seed INTEGER NOT NULL,"
    "  first_step INTEGER, last_step INTEGER, last_seen INTEGER,"
    "  points INTEGER NOT NULL DEFAULT 0,"
    "  UNIQUE(run, tag));"
    "CREATE TABLE points("
    "  stream INTEGER NOT NULL, step INTEGER NOT NULL, v BLOB NOT NULL,"
    "  PRIMARY KEY(stream, step)) WITHOUT ROWID;"
    "CREATE TABLE point_minutes("
    "  stream INTEGER NOT NULL, minute INTEGER NOT NULL,"
    "  max_step INTEGER NOT NULL,"
    "  PRIMARY KEY(stream, minute)) WITHOUT ROWID;"
    "CREATE INDEX point_minutes_by_minute ON point_minutes(minute);"
    "CREATE TABLE sketches("
    "  stream INTEGER NOT NULL, step INTEGER NOT NULL, k INTEGER NOT NULL,"
    "  z BLOB NOT NULL,"
    "  PRIMARY KEY(stream, step));"
    "CREATE TABLE alerts("
    "  id INTEGER PRIMARY KEY,"
    "  rule TEXT NOT NULL, run TEXT, tag TEXT, severity TEXT,"
    "  state TEXT NOT NULL CHECK(state IN ('pending','firing','resolved')),"
    "  value REAL, threshold REAL,"
    "  started_step INTEGER, started_ns INTEGER, fired_ns INTEGER,"
    "  resolved_ns INTEGER,"
    "  labels TEXT, annotations TEXT);"
    "CREATE INDEX alerts_by_state ON alerts(state);",
};

static const char *const state_names[] = {"pending", "firing", "resolved"};

struct gw_store_s {
  gw_store_config_t cfg;
  char *path;
  int mem; /* ":memory:" */
  gw_stats_t *stats;

  /* ---- queue, under q_mu ---- */
  pthread_mutex_t q_mu;
  pthread_cond_t q_cv;    /* writer waits: work, flush, stop */
  pthread_cond_t done_cv; /* flushers wait: done_seq, err_flush_gen */
  blk_t *q_head, *q_tail;
  size_t q_n;   /* records in the FIFO (not yet taken) */
  size_t depth; /* records not yet committed (FIFO + writer's pending) */
  blk_t *free_blks;
  size_t n_free;
  uint64_t enq_seq, done_seq;
  uint64_t flush_gen;     /* bumped by each gw_store_flush that must wait */
  uint64_t err_flush_gen; /* flush_gen seen by the last failed commit attempt */
  int last_err;
  int stop, writer_done;
  istream_t *ing;
  size_t ing_cap;
  uint64_t next_alert_id;

  /* ---- writer thread only ---- */
  pthread_t thr;
  sqlite3 *wdb;
  sqlite3_stmt *ws[S_COUNT];
  pthread_mutex_t db_mu; /* ":memory:": guards wdb between writer and readers */
  int64_t *map;          /* engine stream id → db stream id (0 = none) */
  size_t map_cap;
  undo_t *undo;
  size_t undo_n, undo_cap;
  prow_t *rows;
  skrow_t *skrows;
  blk_t *p_head, *p_tail; /* pending: taken from the FIFO, not committed */
  uint32_t p_idx;         /* first uncommitted record of p_head */

  /* ---- checkpointer (file databases); ck_req/dirty/stop under ck_mu ---- */
  pthread_t ck_thr;
  int ck_started;
  sqlite3 *ckdb;
  pthread_mutex_t ck_mu;
  pthread_cond_t ck_cv;
  int ck_req;   /* the WAL passed CKPT_FRAMES */
  int ck_dirty; /* commits since the last checkpoint */
  int ck_stop;
  int ck_failing;

  /* ---- readers ---- */
  pthread_mutex_t rd_mu;
  sqlite3 **pool;
  size_t pool_n;
};

/* ------------------------------------------------------------------ utils */

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void abs_deadline(struct timespec *ts, int64_t at_ms) {
  ts->tv_sec = at_ms / 1000;
  ts->tv_nsec = (at_ms % 1000) * 1000000;
}

static int64_t wall_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int64_t floor_div(int64_t a, int64_t b) {
  int64_t q = a / b;
  return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

static void put_f64le(unsigned char *p, double v) {
  uint64_t u;
  memcpy(&u, &v, 8);
  for (int i = 0; i < 8; i++) p[i] = (unsigned char)(u >> (8 * i));
}

static double get_f64le(const unsigned char *p) {
  uint64_t u = 0;
  double v;
  for (int i = 0; i < 8; i++) u |= (uint64_t)p[i] << (8 * i);
  memcpy(&v, &u, 8);
  return v;
}

static void put_f32le(unsigned char *p, float v) {
  uint32_t u;
  memcpy(&u, &v, 4);
  for (int i = 0; i < 4; i++) p[i] = (unsigned char)(u >> (8 * i));
}

static float get_f32le(const unsigned char *p) {
  uint32_t u = 0;
  float v;
  for (int i = 0; i < 4; i++) u |= (uint32_t)p[i] << (8 * i);
  memcpy(&v, &u, 4);
  return v;
}

/* SQLite result code → GW_E* / -errno. */
static int map_rc(int rc) {
  switch (rc & 0xff) {
    case SQLITE_OK:
    case SQLITE_DONE:
    case SQLITE_ROW:
      return 0;
    case SQLITE_FULL:
      return -ENOSPC;
    case SQLITE_IOERR:
    case SQLITE_CANTOPEN:
      return GW_EIO;
    case SQLITE_NOMEM:
      return GW_ENOMEM;
    default:
      return GW_EDB;
  }
}

/* Result codes that concern one record, not the disk: skip the record. */
static int record_error(int rc) {
  switch (rc & 0xff) {
    case SQLITE_CONSTRAINT:
    case SQLITE_TOOBIG:
    case SQLITE_MISMATCH:
    case SQLITE_RANGE:
      return 1;
    default:
      return 0;
  }
}

static void slog(gw_store_t *st, int level, const char *fmt, ...) {
  char buf[512];
  va_list ap;
  if (!st->cfg.log) return;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  st->cfg.log(st->cfg.log_arg, level, buf);
}

static int fault(gw_store_t *st, int op) {
  return st->cfg.fault ? st->cfg.fault(st->cfg.fault_arg, op) : SQLITE_OK;
}

static int64_t clamp_step(uint64_t s) {
  return s > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)s;
}

static char *xstrdup(const char *s) {
  size_t n;
  char *d;
  if (!s) return NULL;
  n = strlen(s) + 1;
  d = malloc(n);
  if (d) memcpy(d, s, n);
  return d;
}

void gw_store_config_default(gw_store_config_t *cfg) {
  memset(cfg, 0, sizeof *cfg);
  cfg->path = "./gradwatch.db";
  cfg->flush_ms = 200;
  cfg->queue_max = 1000000;
  cfg->store_every = 1;
  cfg->retention_check_ms = 60000;
  cfg->close_timeout_ms = 10000;
  cfg->read_conns = 4;
}

/* ---------------------------------------------------------------- records */

static void rec_release(rec_t *r) {
  switch (r->type) {
    case REC_STREAM:
      free(r->u.st.run);
      free(r->u.st.tag);
      break;
    case REC_SKETCH:
      free(r->u.sk.z);
      break;
    case REC_ALERT:
      free(r->u.al);
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

int gw_store_put_stream(gw_store_t *st, uint32_t stream_id, const char *run,
                        const char *tag, uint32_t k, uint8_t kind, uint8_t s,
                        uint64_t seed) {
  char *r = NULL, *t = NULL;
  rec_t *slot;
  int rc = 0;
  if (!st || !run || !tag || !*run || !*tag || stream_id >= STREAM_ID_MAX)
    return GW_EINVAL;
  r = xstrdup(run);
  t = xstrdup(tag);
  if (!r || !t) {
    rc = GW_ENOMEM;
    goto out;
  }
  pthread_mutex_lock(&st->q_mu);
  rc = ing_grow(st, stream_id);
  slot = rc ? NULL : q_slot(st);
  if (!rc && !slot) rc = GW_ENOMEM;
  if (!rc) {
    slot->type = REC_STREAM;
    slot->sid = stream_id;
    slot->step = 0;
    slot->wall_ns = 0;
    slot->u.st.run = r;
    slot->u.st.tag = t;
    slot->u.st.k = k;
    slot->u.st.kind = kind;
    slot->u.st.s = s;
    slot->u.st.seed = seed;
    r = t = NULL; /* owned by the record */
    st->ing[stream_id].declared = 1;
    st->ing[stream_id].kept_first = 0;
    enqueued(st);
  }
  pthread_mutex_unlock(&st->q_mu);
out:
  free(r);
  free(t);
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
    slot->wall_ns = p->wall_ns;
    gw_point_values(p, vals);
    for (int i = 0; i < GW_METRIC_COUNT; i++) put_f64le(slot->u.v + 8 * i, vals[i]);
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
    slot->wall_ns = 0;
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
    slot->wall_ns = 0;
    slot->u.al = c;
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

/* ----------------------------------------------------------------- writer */

/* Step a writer statement once (through the fault seam), read column 0 of a
 * returned row into *id if asked, reset. SQLITE_OK or the error code. */
static int wrun(gw_store_t *st, sqlite3_stmt *s, int64_t *id) {
  int rc = fault(st, GW_STORE_OP_STEP);
  if (rc == SQLITE_OK) {
    rc = sqlite3_step(s);
    if (rc == SQLITE_ROW && id) *id = sqlite3_column_int64(s, 0);
    if (rc == SQLITE_ROW || rc == SQLITE_DONE) rc = SQLITE_OK;
  }
  sqlite3_reset(s);
  return rc;
}

static int wbegin(gw_store_t *st) {
  int rc = fault(st, GW_STORE_OP_BEGIN);
  if (rc == SQLITE_OK && !sqlite3_get_autocommit(st->wdb))
    sqlite3_exec(st->wdb, "ROLLBACK", NULL, NULL, NULL); /* left by a failed rollback */
  if (rc == SQLITE_OK) rc = sqlite3_exec(st->wdb, "BEGIN IMMEDIATE", NULL, NULL, NULL);
  return rc;
}

static int wcommit(gw_store_t *st) {
  int rc = fault(st, GW_STORE_OP_COMMIT);
  if (rc == SQLITE_OK) rc = sqlite3_exec(st->wdb, "COMMIT", NULL, NULL, NULL);
  return rc;
}

static void wrollback(gw_store_t *st) {
  if (!sqlite3_get_autocommit(st->wdb))
    sqlite3_exec(st->wdb, "ROLLBACK", NULL, NULL, NULL);
}

static int map_set(gw_store_t *st, uint32_t sid, int64_t db) {
  if (sid >= st->map_cap) {
    size_t cap = st->map_cap ? st->map_cap : 64;
    int64_t *n;
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
  st->map[sid] = db;
  return SQLITE_OK;
}

static int64_t map_get(const gw_store_t *st, uint32_t sid) {
  return sid < st->map_cap ? st->map[sid] : 0;
}

static void map_undo(gw_store_t *st) {
  while (st->undo_n > 0) {
    undo_t *u = &st->undo[--st->undo_n];
    st->map[u->sid] = u->old;
  }
}

/* Upsert the run and stream of a declaration; *db = stream row id. */
static int w_stream(gw_store_t *st, const rec_t *r, int64_t *db) {
  sqlite3_stmt *s;
  int64_t run_id = 0;
  int rc;
  s = st->ws[S_RUN_INS];
  sqlite3_bind_text(s, 1, r->u.st.run, -1, SQLITE_STATIC);
  sqlite3_bind_int64(s, 2, wall_ns());
  rc = wrun(st, s, NULL);
  if (rc == SQLITE_OK) {
    s = st->ws[S_RUN_GET];
    sqlite3_bind_text(s, 1, r->u.st.run, -1, SQLITE_STATIC);
    rc = wrun(st, s, &run_id);
  }
  if (rc == SQLITE_OK && run_id == 0) rc = SQLITE_CORRUPT;
  if (rc == SQLITE_OK) {
    s = st->ws[S_STREAM_UP];
    sqlite3_bind_int64(s, 1, run_id);
    sqlite3_bind_text(s, 2, r->u.st.tag, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 3, r->u.st.k);
    sqlite3_bind_int(s, 4, r->u.st.kind);
    sqlite3_bind_int(s, 5, r->u.st.s);
    sqlite3_bind_int64(s, 6, (sqlite3_int64)r->u.st.seed);
    *db = 0;
    rc = wrun(st, s, db);
    if (rc == SQLITE_OK && *db == 0) rc = SQLITE_CORRUPT;
  }
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
  sqlite3_bind_text(s, 6, state_names[a->state], -1, SQLITE_STATIC);
  sqlite3_bind_double(s, 7, a->value); /* NaN binds as NULL */
  sqlite3_bind_double(s, 8, a->threshold);
  sqlite3_bind_int64(s, 9, clamp_step(a->started_step));
  bind_ns_or_null(s, 10, a->started_ns);
  bind_ns_or_null(s, 11, a->fired_ns);
  bind_ns_or_null(s, 12, a->resolved_ns);
  bind_text_or_null(s, 13, a->labels);
  bind_text_or_null(s, 14, a->annotations);
  return wrun(st, s, NULL);
}

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

/* Insert the points rows[i..j) of one db stream (sorted by step), then
 * update its stream row and minute index once. *written = rows committed. */
static int w_points(gw_store_t *st, size_t i, size_t j, uint64_t *written,
                    uint64_t *skipped) {
  const prow_t *rw = st->rows;
  sqlite3_stmt *ins = st->ws[S_PT_INS], *upd = st->ws[S_PT_UPD], *s;
  int64_t db = rw[i].db, added = 0, seen = INT64_MIN, minute = 0, min_max = 0;
  int have_min = 0, rc = SQLITE_OK;
  for (size_t x = i; x < j && rc == SQLITE_OK; x++) {
    int64_t m;
    sqlite3_bind_int64(ins, 1, db);
    sqlite3_bind_int64(ins, 2, rw[x].step);
    sqlite3_bind_blob(ins, 3, rw[x].v, BLOB_BYTES, SQLITE_STATIC);
    rc = wrun(st, ins, NULL);
    if (rc == SQLITE_OK) {
      added++;
    } else if ((rc & 0xff) == SQLITE_CONSTRAINT) { /* (stream, step) exists */
      sqlite3_bind_int64(upd, 1, db);
      sqlite3_bind_int64(upd, 2, rw[x].step);
      sqlite3_bind_blob(upd, 3, rw[x].v, BLOB_BYTES, SQLITE_STATIC);
      rc = wrun(st, upd, NULL);
    }
    if (rc != SQLITE_OK && record_error(rc)) {
      (*skipped)++;
      rc = SQLITE_OK;
      continue;
    }
    if (rc != SQLITE_OK) break;
    (*written)++;
    if (rw[x].wall > seen) seen = rw[x].wall;
    m = floor_div(rw[x].wall, NS_PER_MIN);
    if (have_min && m != minute) rc = w_minute(st, db, minute, min_max);
    minute = m;
    min_max = rw[x].step;
    have_min = 1;
  }
  if (rc == SQLITE_OK && have_min) rc = w_minute(st, db, minute, min_max);
  if (rc == SQLITE_OK && have_min) {
    s = st->ws[S_ST_UPD];
    sqlite3_bind_int64(s, 1, db);
    sqlite3_bind_int64(s, 2, rw[i].step);
    sqlite3_bind_int64(s, 3, rw[j - 1].step);
    sqlite3_bind_int64(s, 4, seen);
    sqlite3_bind_int64(s, 5, added);
    rc = wrun(st, s, NULL);
  }
  return rc;
}

/* Write up to BATCH_MAX pending records in one transaction. On success
 * *consumed = records done and *points = point rows committed; on failure
 * everything is rolled back (database and map). Caller holds db_mu when mem. */
static int w_chunk(gw_store_t *st, size_t *consumed, uint64_t *points,
                   uint64_t *skipped) {
  blk_t *b = st->p_head;
  uint32_t i = st->p_idx;
  size_t c = 0, np = 0, nsk = 0;
  int rc;
  *consumed = 0;
  *points = 0;
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
      case REC_STREAM:
        rc = w_stream(st, r, &db);
        if (rc != SQLITE_OK && record_error(rc)) {
          (*skipped)++;
          db = 0;
          rc = SQLITE_OK;
        }
        if (rc == SQLITE_OK) rc = map_set(st, r->sid, db);
        break;
      case REC_POINT:
        db = map_get(st, r->sid);
        if (db == 0) { /* its declaration was refused by SQLite */
          (*skipped)++;
          break;
        }
        st->rows[np].db = db;
        st->rows[np].step = r->step;
        st->rows[np].wall = r->wall_ns;
        st->rows[np].ord = (uint32_t)np;
        st->rows[np].v = r->u.v;
        np++;
        break;
      case REC_SKETCH:
        db = map_get(st, r->sid);
        if (db == 0) {
          (*skipped)++;
          break;
        }
        st->skrows[nsk].db = db;
        st->skrows[nsk].r = r;
        nsk++;
        break;
      case REC_ALERT:
        rc = w_alert(st, r->u.al);
        if (rc != SQLITE_OK && record_error(rc)) {
          (*skipped)++;
          rc = SQLITE_OK;
        }
        break;
      default:
        break;
    }
  }
  if (rc == SQLITE_OK && np > 1) qsort(st->rows, np, sizeof *st->rows, prow_cmp);
  for (size_t x = 0; rc == SQLITE_OK && x < np;) {
    size_t y = x + 1;
    while (y < np && st->rows[y].db == st->rows[x].db) y++;
    rc = w_points(st, x, y, points, skipped);
    x = y;
  }
  for (size_t x = 0; rc == SQLITE_OK && x < nsk; x++) {
    const rec_t *r = st->skrows[x].r;
    sqlite3_stmt *s = st->ws[S_SK_INS];
    size_t bytes = (size_t)r->u.sk.k * 4;
    unsigned char *buf = malloc(bytes);
    if (!buf) {
      rc = SQLITE_NOMEM;
      break;
    }
    for (uint32_t q = 0; q < r->u.sk.k; q++) put_f32le(buf + 4 * q, r->u.sk.z[q]);
    sqlite3_bind_int64(s, 1, st->skrows[x].db);
    sqlite3_bind_int64(s, 2, r->step);
    sqlite3_bind_int64(s, 3, r->u.sk.k);
    sqlite3_bind_blob(s, 4, buf, (int)bytes, SQLITE_STATIC);
    rc = wrun(st, s, NULL);
    free(buf);
    if (rc != SQLITE_OK && record_error(rc)) {
      (*skipped)++;
      rc = SQLITE_OK;
    }
  }
  if (rc == SQLITE_OK) rc = wcommit(st);
  if (rc != SQLITE_OK) {
    wrollback(st);
    map_undo(st);
    *points = 0;
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
      rec_release(&b->r[st->p_idx++]);
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
  if (c) slog(st, GW_STORE_LOG_ERR,
              "store: closing with the disk still failing: %llu points not written",
              (unsigned long long)points);
}

static void db_lock(gw_store_t *st) {
  if (st->mem) pthread_mutex_lock(&st->db_mu);
}
static void db_unlock(gw_store_t *st) {
  if (st->mem) pthread_mutex_unlock(&st->db_mu);
}

/* Commit all pending records. 0, or the SQLite code of the failed chunk. */
static int w_commit_pending(gw_store_t *st) {
  int rc = SQLITE_OK;
  while (rc == SQLITE_OK && st->p_head) {
    size_t c = 0;
    uint64_t points = 0, skipped = 0;
    db_lock(st);
    rc = w_chunk(st, &c, &points, &skipped);
    db_unlock(st);
    if (rc != SQLITE_OK) break;
    pending_consume(st, c);
    gw_stats_add(&st->stats->store_written, points);
    if (skipped) gw_stats_add(&st->stats->store_errors, skipped);
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
  int code = map_rc(sqlite_rc);
  gw_stats_add(&st->stats->store_errors, 1);
  atomic_store_explicit(&st->stats->store_last_error, code, memory_order_relaxed);
  if (!tell_flushers) return;
  pthread_mutex_lock(&st->q_mu);
  st->last_err = code;
  st->err_flush_gen = flush_seen;
  pthread_cond_broadcast(&st->done_cv);
  pthread_mutex_unlock(&st->q_mu);
}

/* Delete the points (and sketches) of db stream `db` with step <= max_step
 * and fix its row. Inside a transaction. */
static int m_delete_upto(gw_store_t *st, sqlite3_stmt *dp, sqlite3_stmt *ds,
                         sqlite3_stmt *us, int64_t db, int64_t max_step) {
  int rc;
  int64_t n;
  sqlite3_bind_int64(dp, 1, db);
  sqlite3_bind_int64(dp, 2, max_step);
  rc = wrun(st, dp, NULL);
  n = sqlite3_changes64(st->wdb);
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

/* Run `sel` (bound by the caller) collecting (stream, max_step) pairs. */
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

enum { M_DEL_PTS, M_DEL_SK, M_UPD_ST, M_RET_SEL, M_RET_DEL, M_OLDEST,
       M_MIN_SEL, M_MIN_DEL, M_COUNT };
static const char *const msql[M_COUNT] = {
    [M_DEL_PTS] = "DELETE FROM points WHERE stream = ?1 AND step <= ?2",
    [M_DEL_SK] = "DELETE FROM sketches WHERE stream = ?1 AND step <= ?2",
    [M_UPD_ST] = "UPDATE streams SET points = max(points - ?2, 0), "
                 "first_step = (SELECT min(step) FROM points WHERE stream = ?1) "
                 "WHERE id = ?1",
    [M_RET_SEL] = "SELECT stream, max(max_step) FROM point_minutes "
                  "WHERE minute < ?1 GROUP BY stream",
    [M_RET_DEL] = "DELETE FROM point_minutes WHERE minute < ?1",
    [M_OLDEST] = "SELECT min(minute) FROM point_minutes",
    [M_MIN_SEL] = "SELECT stream, max_step FROM point_minutes WHERE minute = ?1",
    [M_MIN_DEL] = "DELETE FROM point_minutes WHERE minute <= ?1",
};

static int pragma_int(sqlite3 *db, const char *sql, int64_t *v) {
  sqlite3_stmt *s = NULL;
  int rc = sqlite3_prepare_v2(db, sql, -1, &s, NULL);
  if (rc == SQLITE_OK) {
    rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
      *v = sqlite3_column_int64(s, 0);
      rc = SQLITE_OK;
    } else if (rc == SQLITE_DONE) {
      rc = SQLITE_ERROR;
    }
  }
  sqlite3_finalize(s);
  return rc;
}

/* Bytes in use by the database file (pages not on the freelist). */
static int m_used_bytes(gw_store_t *st, int64_t *used) {
  int64_t pc = 0, fl = 0, ps = 0;
  int rc = pragma_int(st->wdb, "PRAGMA page_count", &pc);
  if (rc == SQLITE_OK) rc = pragma_int(st->wdb, "PRAGMA freelist_count", &fl);
  if (rc == SQLITE_OK) rc = pragma_int(st->wdb, "PRAGMA page_size", &ps);
  *used = (pc - fl) * ps;
  return rc;
}

/* One retention pass (if do_retention) and one size pass (max_db_mb). */
static int w_maintain(gw_store_t *st, int do_retention) {
  sqlite3_stmt *m[M_COUNT] = {0};
  cut_t *cuts = NULL;
  size_t ncut = 0;
  int64_t used = 0, limit = (int64_t)st->cfg.max_db_mb << 20;
  int rc = SQLITE_OK, deleted = 0, shrink;
  if (limit) rc = m_used_bytes(st, &used);
  shrink = limit && used > limit;
  if (rc != SQLITE_OK || (!shrink && !(do_retention && st->cfg.retention_days)))
    return rc;
  for (int i = 0; i < M_COUNT && rc == SQLITE_OK; i++)
    rc = sqlite3_prepare_v2(st->wdb, msql[i], -1, &m[i], NULL);

  if (rc == SQLITE_OK && do_retention && st->cfg.retention_days) {
    uint32_t days = st->cfg.retention_days > 100000 ? 100000 : st->cfg.retention_days;
    int64_t cutoff = floor_div(wall_ns() - (int64_t)days * 86400 * 1000000000LL,
                               NS_PER_MIN);
    rc = wbegin(st);
    if (rc == SQLITE_OK) {
      sqlite3_bind_int64(m[M_RET_SEL], 1, cutoff);
      rc = m_collect(m[M_RET_SEL], &cuts, &ncut);
    }
    for (size_t i = 0; rc == SQLITE_OK && i < ncut; i++)
      rc = m_delete_upto(st, m[M_DEL_PTS], m[M_DEL_SK], m[M_UPD_ST], cuts[i].db,
                         cuts[i].max_step);
    if (rc == SQLITE_OK) {
      sqlite3_bind_int64(m[M_RET_DEL], 1, cutoff);
      rc = wrun(st, m[M_RET_DEL], NULL);
    }
    if (rc == SQLITE_OK) rc = wcommit(st);
    if (rc == SQLITE_OK) deleted = ncut > 0;
    if (rc == SQLITE_OK && limit) rc = m_used_bytes(st, &used);
    shrink = limit && used > limit;
  }

  /* Over max_db_mb: delete the oldest minute of every stream, one minute per
   * transaction, down to 90% of the limit (hysteresis: the next pass does
   * not start before the limit is crossed again). */
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
      for (size_t i = 0; rc == SQLITE_OK && i < ncut; i++)
        rc = m_delete_upto(st, m[M_DEL_PTS], m[M_DEL_SK], m[M_UPD_ST],
                           cuts[i].db, cuts[i].max_step);
      if (rc == SQLITE_OK) {
        sqlite3_bind_int64(m[M_MIN_DEL], 1, oldest);
        rc = wrun(st, m[M_MIN_DEL], NULL);
      }
    }
    if (rc == SQLITE_OK) rc = wcommit(st);
    if (rc == SQLITE_OK) rc = m_used_bytes(st, &used);
    deleted = 1;
    if (!have) break; /* nothing left to delete */
  }

  if (rc == SQLITE_OK && deleted) { /* give the freed pages back to the FS */
    rc = sqlite3_exec(st->wdb, "PRAGMA incremental_vacuum", NULL, NULL, NULL);
    if (rc == SQLITE_OK && !st->mem)
      rc = sqlite3_exec(st->wdb, "PRAGMA wal_checkpoint(PASSIVE)", NULL, NULL, NULL);
  }
  if (rc != SQLITE_OK) wrollback(st);
  for (int i = 0; i < M_COUNT; i++) sqlite3_finalize(m[i]);
  free(cuts);
  return rc;
}

/* WAL hook of the writer's connection, after each commit. */
static int wal_hook(void *arg, sqlite3 *db, const char *name, int frames) {
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

static void *ckpt_main(void *arg) {
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
      rc = fault(st, GW_STORE_OP_CHECKPOINT);
      if (rc == SQLITE_OK)
        rc = sqlite3_wal_checkpoint_v2(st->ckdb, NULL, SQLITE_CHECKPOINT_PASSIVE,
                                       NULL, NULL);
      if (rc != SQLITE_OK && (rc & 0xff) != SQLITE_BUSY) {
        /* nothing is lost (the WAL keeps the pages); count, retry later */
        gw_stats_add(&st->stats->store_errors, 1);
        if (!st->ck_failing)
          slog(st, GW_STORE_LOG_WARNING, "store: checkpoint failed: %s",
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

static void *writer_main(void *arg) {
  gw_store_t *st = arg;
  int failing = 0, stop_seen = 0;
  int64_t backoff = 0, retry_at = 0, close_deadline = 0;
  int64_t last_cycle = mono_ms(), next_retention = 0; /* retention once at start */
  uint64_t flush_seen = 0;
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
          slog(st, GW_STORE_LOG_ERR, "store: commit failed: %s (%s); retrying",
               gw_strerror(map_rc(rc)), sqlite3_errstr(rc));
        w_error(st, rc, 1, flush_seen);
        failing = 1;
        backoff = backoff ? backoff * 2 : BACKOFF_MIN_MS;
        if (backoff > BACKOFF_MAX_MS) backoff = BACKOFF_MAX_MS;
        retry_at = mono_ms() + backoff;
      } else {
        committed = 1;
        if (failing) slog(st, GW_STORE_LOG_INFO, "store: writes resumed");
        failing = 0;
        backoff = 0;
      }
    }
    if (!failing) {
      int do_ret = st->cfg.retention_days && mono_ms() >= next_retention;
      /* size pass after each commit, and once more when closing */
      if (do_ret || ((committed || stop_seen) && st->cfg.max_db_mb)) {
        int rc;
        db_lock(st);
        rc = w_maintain(st, do_ret);
        db_unlock(st);
        if (do_ret) next_retention = mono_ms() + st->cfg.retention_check_ms;
        if (rc != SQLITE_OK) w_error(st, rc, 0, 0);
      }
    }
    if (stop_seen) {
      pthread_mutex_lock(&st->q_mu);
      empty = !st->q_head && !st->p_head;
      pthread_mutex_unlock(&st->q_mu);
      if (empty) break;
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

/* ------------------------------------------------------------ open/close */

static int exec_rc(sqlite3 *db, const char *sql) {
  return sqlite3_exec(db, sql, NULL, NULL, NULL);
}

/* Open the writer connection, check and migrate the schema, prepare the
 * writer's statements. SQLite result code (reasons go to cfg->log). */
static int db_open_writer(gw_store_t *st) {
  sqlite3 *db = NULL;
  int64_t uv = 0, tables = 0;
  int rc = fault(st, GW_STORE_OP_OPEN);
  if (rc == SQLITE_OK)
    rc = sqlite3_open_v2(st->path, &db,
                         SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
                             SQLITE_OPEN_NOMUTEX,
                         NULL);
  st->wdb = db;
  if (rc != SQLITE_OK) {
    slog(st, GW_STORE_LOG_ERR, "store: cannot open %s: %s", st->path,
         db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
    return rc;
  }
  sqlite3_extended_result_codes(db, 1);
  sqlite3_busy_timeout(db, BUSY_TIMEOUT_MS);
  rc = pragma_int(db, "PRAGMA user_version", &uv);
  if (rc == SQLITE_OK)
    rc = pragma_int(db, "SELECT count(*) FROM sqlite_master", &tables);
  if (rc != SQLITE_OK) {
    slog(st, GW_STORE_LOG_ERR, "store: %s is not a readable database: %s",
         st->path, sqlite3_errmsg(db));
    return rc;
  }
  if (uv > GW_STORE_SCHEMA_VERSION) {
    slog(st, GW_STORE_LOG_ERR,
         "store: %s has schema version %lld, newer than this gradwatchd "
         "supports (%d); upgrade gradwatchd or use another --db",
         st->path, (long long)uv, GW_STORE_SCHEMA_VERSION);
    return SQLITE_ERROR;
  }
  if (uv == 0 && tables > 0) {
    slog(st, GW_STORE_LOG_ERR,
         "store: %s is not a gradwatch database (tables but no schema version)",
         st->path);
    return SQLITE_ERROR;
  }
  if (uv == 0) rc = exec_rc(db, "PRAGMA auto_vacuum = INCREMENTAL");
  if (rc == SQLITE_OK && !st->mem) {
    sqlite3_stmt *s = NULL;
    rc = sqlite3_prepare_v2(db, "PRAGMA journal_mode = WAL", -1, &s, NULL);
    if (rc == SQLITE_OK && sqlite3_step(s) == SQLITE_ROW) {
      const char *mode = (const char *)sqlite3_column_text(s, 0);
      if (!mode || strcmp(mode, "wal") != 0) rc = SQLITE_ERROR;
    } else if (rc == SQLITE_OK) {
      rc = sqlite3_errcode(db) ? sqlite3_errcode(db) : SQLITE_ERROR;
    }
    sqlite3_finalize(s);
    if (rc != SQLITE_OK)
      slog(st, GW_STORE_LOG_ERR, "store: cannot enable WAL on %s", st->path);
  }
  if (rc == SQLITE_OK) rc = exec_rc(db, "PRAGMA synchronous = NORMAL");
  if (rc == SQLITE_OK) rc = exec_rc(db, "PRAGMA journal_size_limit = 67108864");
  if (rc == SQLITE_OK) rc = exec_rc(db, "PRAGMA secure_delete = OFF");
  if (rc == SQLITE_OK) rc = exec_rc(db, "PRAGMA cache_size = -16384");
  if (rc == SQLITE_OK && !st->mem) { /* checkpoints: see ckpt_main */
    rc = exec_rc(db, "PRAGMA wal_autocheckpoint = 0");
    sqlite3_wal_hook(db, wal_hook, st);
  }
  if (rc == SQLITE_OK && uv < GW_STORE_SCHEMA_VERSION) {
    char sql[64];
    rc = exec_rc(db, "BEGIN IMMEDIATE");
    for (int64_t v = uv; rc == SQLITE_OK && v < GW_STORE_SCHEMA_VERSION; v++)
      rc = exec_rc(db, migrations[v]);
    snprintf(sql, sizeof sql, "PRAGMA user_version = %d", GW_STORE_SCHEMA_VERSION);
    if (rc == SQLITE_OK) rc = exec_rc(db, sql);
    if (rc == SQLITE_OK) rc = exec_rc(db, "COMMIT");
    if (rc != SQLITE_OK) {
      slog(st, GW_STORE_LOG_ERR, "store: schema migration of %s failed: %s",
           st->path, sqlite3_errmsg(db));
      if (!sqlite3_get_autocommit(db)) exec_rc(db, "ROLLBACK");
    }
  }
  for (int i = 0; i < S_COUNT && rc == SQLITE_OK; i++)
    rc = sqlite3_prepare_v3(db, wsql[i], -1, SQLITE_PREPARE_PERSISTENT,
                            &st->ws[i], NULL);
  if (rc == SQLITE_OK) {
    int64_t next = 1;
    rc = pragma_int(db, "SELECT coalesce(max(id), 0) + 1 FROM alerts", &next);
    st->next_alert_id = (uint64_t)next;
  }
  return rc;
}

static void db_close_writer(gw_store_t *st) {
  for (int i = 0; i < S_COUNT; i++) {
    sqlite3_finalize(st->ws[i]);
    st->ws[i] = NULL;
  }
  sqlite3_close(st->wdb);
  st->wdb = NULL;
}

static void store_free(gw_store_t *st) {
  blk_t *b;
  if (st->ck_started) {
    pthread_mutex_lock(&st->ck_mu);
    st->ck_stop = 1;
    pthread_cond_signal(&st->ck_cv);
    pthread_mutex_unlock(&st->ck_mu);
    pthread_join(st->ck_thr, NULL);
  }
  sqlite3_close(st->ckdb);
  for (size_t i = 0; i < st->pool_n; i++) sqlite3_close(st->pool[i]);
  free(st->pool);
  db_close_writer(st);
  for (b = st->q_head; b;) { /* only after a failed open or a dropped close */
    blk_t *n = b->next;
    for (uint32_t i = 0; i < b->n; i++) rec_release(&b->r[i]);
    free(b);
    b = n;
  }
  for (b = st->free_blks; b;) {
    blk_t *n = b->next;
    free(b);
    b = n;
  }
  pthread_cond_destroy(&st->q_cv);
  pthread_cond_destroy(&st->done_cv);
  pthread_mutex_destroy(&st->q_mu);
  pthread_mutex_destroy(&st->db_mu);
  pthread_mutex_destroy(&st->rd_mu);
  pthread_mutex_destroy(&st->ck_mu);
  pthread_cond_destroy(&st->ck_cv);
  free(st->ing);
  free(st->map);
  free(st->undo);
  free(st->rows);
  free(st->skrows);
  free(st->path);
  free(st);
}

int gw_store_open(gw_store_t **out, const gw_store_config_t *cfg,
                  gw_stats_t *stats) {
  gw_store_t *st = NULL;
  pthread_condattr_t ca;
  int rc = 0;
  if (out) *out = NULL;
  if (!out || !cfg || !stats || !cfg->path || !*cfg->path || cfg->flush_ms == 0 ||
      cfg->queue_max == 0 || cfg->store_every == 0 || cfg->retention_check_ms == 0)
    return GW_EINVAL;
  if (!sqlite3_threadsafe()) return GW_EDB;
  st = calloc(1, sizeof *st);
  if (!st) return GW_ENOMEM;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_mutex_init(&st->q_mu, NULL);
  pthread_mutex_init(&st->db_mu, NULL);
  pthread_mutex_init(&st->rd_mu, NULL);
  pthread_cond_init(&st->q_cv, &ca);
  pthread_cond_init(&st->done_cv, &ca);
  pthread_mutex_init(&st->ck_mu, NULL);
  pthread_cond_init(&st->ck_cv, &ca);
  pthread_condattr_destroy(&ca);
  st->cfg = *cfg;
  st->stats = stats;
  st->path = xstrdup(cfg->path);
  st->cfg.path = st->path;
  st->mem = st->path && strcmp(st->path, ":memory:") == 0;
  st->rows = malloc(BATCH_MAX * sizeof *st->rows);
  st->skrows = malloc(BATCH_MAX * sizeof *st->skrows);
  if (cfg->read_conns) st->pool = calloc(cfg->read_conns, sizeof *st->pool);
  if (!st->path || !st->rows || !st->skrows || (cfg->read_conns && !st->pool)) {
    rc = GW_ENOMEM;
    goto fail;
  }

  rc = db_open_writer(st);
  if (rc != SQLITE_OK) {
    rc = map_rc(rc);
    goto fail;
  }
  if (!st->mem) {
    rc = sqlite3_open_v2(st->path, &st->ckdb,
                         SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc == SQLITE_OK) rc = sqlite3_busy_timeout(st->ckdb, BUSY_TIMEOUT_MS);
    if (rc == SQLITE_OK) { /* a first read opens the WAL; until then a
                              checkpoint on this connection does nothing */
      int64_t tables = 0;
      rc = pragma_int(st->ckdb, "SELECT count(*) FROM sqlite_master", &tables);
    }
    if (rc != SQLITE_OK) {
      rc = map_rc(rc);
      goto fail;
    }
    rc = pthread_create(&st->ck_thr, NULL, ckpt_main, st);
    if (rc != 0) {
      rc = -rc;
      goto fail;
    }
    st->ck_started = 1;
  }
  atomic_store_explicit(&stats->store_last_error, 0, memory_order_relaxed);
  atomic_store_explicit(&stats->store_queue_depth, 0, memory_order_relaxed);
  rc = pthread_create(&st->thr, NULL, writer_main, st);
  if (rc != 0) {
    rc = -rc;
    goto fail;
  }
  *out = st;
  return 0;
fail:
  store_free(st);
  return rc;
}

void gw_store_close(gw_store_t *st) {
  if (!st) return;
  pthread_mutex_lock(&st->q_mu);
  st->stop = 1;
  pthread_cond_signal(&st->q_cv);
  pthread_mutex_unlock(&st->q_mu);
  pthread_join(st->thr, NULL);
  store_free(st);
}

/* ---------------------------------------------------------------- readers */

/* A connection to read from: pooled read-only one, or (":memory:") the
 * writer's under db_mu. Release with rd_release. */
static int rd_acquire(gw_store_t *st, sqlite3 **out) {
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
    return map_rc(rc);
  }
  sqlite3_extended_result_codes(db, 1);
  sqlite3_busy_timeout(db, BUSY_TIMEOUT_MS);
  *out = db;
  return 0;
}

static void rd_release(gw_store_t *st, sqlite3 *db) {
  if (!db) return;
  if (!sqlite3_get_autocommit(db)) exec_rc(db, "ROLLBACK");
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

/* Copy column i as a fresh string (NULL stays NULL). rc: 0 or GW_ENOMEM. */
static int col_dup(sqlite3_stmt *s, int i, char **out) {
  const unsigned char *t = sqlite3_column_text(s, i);
  *out = NULL;
  if (!t) return sqlite3_column_type(s, i) == SQLITE_NULL ? 0 : GW_ENOMEM;
  *out = xstrdup((const char *)t);
  return *out ? 0 : GW_ENOMEM;
}

static int grow(void **arr, size_t *cap, size_t n, size_t elem) {
  void *p;
  size_t nc;
  if (n < *cap) return 0;
  nc = *cap ? *cap * 2 : 16;
  p = realloc(*arr, nc * elem);
  if (!p) return GW_ENOMEM;
  *arr = p;
  *cap = nc;
  return 0;
}

int gw_store_runs(gw_store_t *st, gw_store_run_t **out, size_t *n) {
  static const char sql[] =
      "SELECT r.name, count(s.id), coalesce(min(s.first_step), 0), "
      "coalesce(max(s.last_step), 0), coalesce(max(s.last_seen), 0) "
      "FROM runs r LEFT JOIN streams s ON s.run = r.id GROUP BY r.id "
      "ORDER BY r.name";
  sqlite3 *db = NULL;
  sqlite3_stmt *s = NULL;
  gw_store_run_t *a = NULL;
  size_t cnt = 0, cap = 0;
  int rc;
  if (!st || !out || !n) return GW_EINVAL;
  *out = NULL;
  *n = 0;
  rc = rd_acquire(st, &db);
  if (rc) return rc;
  rc = map_rc(sqlite3_prepare_v2(db, sql, -1, &s, NULL));
  while (rc == 0) {
    int r = sqlite3_step(s);
    if (r == SQLITE_DONE) break;
    if (r != SQLITE_ROW) {
      rc = map_rc(r);
      break;
    }
    rc = grow((void **)&a, &cap, cnt, sizeof *a);
    if (rc) break;
    memset(&a[cnt], 0, sizeof a[cnt]);
    rc = col_dup(s, 0, &a[cnt].run);
    if (rc) break;
    a[cnt].streams = (uint64_t)sqlite3_column_int64(s, 1);
    a[cnt].first_step = (uint64_t)sqlite3_column_int64(s, 2);
    a[cnt].last_step = (uint64_t)sqlite3_column_int64(s, 3);
    a[cnt].last_seen_ns = sqlite3_column_int64(s, 4);
    cnt++;
  }
  sqlite3_finalize(s);
  rd_release(st, db);
  if (rc) {
    gw_store_runs_free(a, cnt);
    return rc;
  }
  *out = a;
  *n = cnt;
  return 0;
}

void gw_store_runs_free(gw_store_run_t *runs, size_t n) {
  if (!runs) return;
  for (size_t i = 0; i < n; i++) free(runs[i].run);
  free(runs);
}

int gw_store_streams(gw_store_t *st, const char *run, gw_store_stream_t **out,
                     size_t *n) {
  static const char sql_run[] = "SELECT id FROM runs WHERE name = ?1";
  static const char sql[] =
      "SELECT tag, k, points, coalesce(last_step, 0), coalesce(last_seen, 0), "
      "coalesce(first_step, 0), kind, s, seed FROM streams WHERE run = ?1 "
      "ORDER BY tag";
  sqlite3 *db = NULL;
  sqlite3_stmt *s = NULL;
  gw_store_stream_t *a = NULL;
  size_t cnt = 0, cap = 0;
  int64_t run_id = 0;
  int rc, r;
  if (!st || !run || !out || !n) return GW_EINVAL;
  *out = NULL;
  *n = 0;
  rc = rd_acquire(st, &db);
  if (rc) return rc;
  rc = map_rc(exec_rc(db, "BEGIN"));
  if (rc == 0) rc = map_rc(sqlite3_prepare_v2(db, sql_run, -1, &s, NULL));
  if (rc == 0) {
    sqlite3_bind_text(s, 1, run, -1, SQLITE_STATIC);
    r = sqlite3_step(s);
    if (r == SQLITE_ROW)
      run_id = sqlite3_column_int64(s, 0);
    else
      rc = r == SQLITE_DONE ? GW_ENOTFOUND : map_rc(r);
  }
  sqlite3_finalize(s);
  s = NULL;
  if (rc == 0) rc = map_rc(sqlite3_prepare_v2(db, sql, -1, &s, NULL));
  if (rc == 0) sqlite3_bind_int64(s, 1, run_id);
  while (rc == 0) {
    r = sqlite3_step(s);
    if (r == SQLITE_DONE) break;
    if (r != SQLITE_ROW) {
      rc = map_rc(r);
      break;
    }
    rc = grow((void **)&a, &cap, cnt, sizeof *a);
    if (rc) break;
    memset(&a[cnt], 0, sizeof a[cnt]);
    rc = col_dup(s, 0, &a[cnt].tag);
    if (rc) break;
    a[cnt].k = (uint32_t)sqlite3_column_int64(s, 1);
    a[cnt].points = (uint64_t)sqlite3_column_int64(s, 2);
    a[cnt].last_step = (uint64_t)sqlite3_column_int64(s, 3);
    a[cnt].last_seen_ns = sqlite3_column_int64(s, 4);
    a[cnt].first_step = (uint64_t)sqlite3_column_int64(s, 5);
    a[cnt].kind = (uint8_t)sqlite3_column_int(s, 6);
    a[cnt].s = (uint8_t)sqlite3_column_int(s, 7);
    a[cnt].seed = (uint64_t)sqlite3_column_int64(s, 8);
    cnt++;
  }
  sqlite3_finalize(s);
  if (!sqlite3_get_autocommit(db)) exec_rc(db, "COMMIT");
  rd_release(st, db);
  if (rc) {
    gw_store_streams_free(a, cnt);
    return rc;
  }
  *out = a;
  *n = cnt;
  return 0;
}

void gw_store_streams_free(gw_store_stream_t *s, size_t n) {
  if (!s) return;
  for (size_t i = 0; i < n; i++) free(s[i].tag);
  free(s);
}

/* db stream id and k of (run, tag): 0, GW_ENOTFOUND or an error. */
static int lookup_stream(sqlite3 *db, const char *run, const char *tag,
                         int64_t *id, uint32_t *k) {
  static const char sql[] =
      "SELECT s.id, s.k FROM streams s JOIN runs r ON r.id = s.run "
      "WHERE r.name = ?1 AND s.tag = ?2";
  sqlite3_stmt *s = NULL;
  int rc = map_rc(sqlite3_prepare_v2(db, sql, -1, &s, NULL));
  if (rc == 0) {
    int r;
    sqlite3_bind_text(s, 1, run, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, tag, -1, SQLITE_STATIC);
    r = sqlite3_step(s);
    if (r == SQLITE_ROW) {
      *id = sqlite3_column_int64(s, 0);
      if (k) *k = (uint32_t)sqlite3_column_int64(s, 1);
    } else {
      rc = r == SQLITE_DONE ? GW_ENOTFOUND : map_rc(r);
    }
  }
  sqlite3_finalize(s);
  return rc;
}

static double blob_metric(const unsigned char *v, int bytes, int m) {
  return (m + 1) * 8 <= bytes ? get_f64le(v + 8 * m) : NAN;
}

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
  memset(s, 0, sizeof *s);
}

int gw_store_series(gw_store_t *st, const char *run, const char *tag,
                    const int *metrics, size_t n_metrics, uint64_t from,
                    uint64_t to, size_t max_points, gw_series_t *out) {
  static const char sql_count[] =
      "SELECT count(*) FROM points WHERE stream = ?1 AND step BETWEEN ?2 AND ?3";
  static const char sql_rows[] =
      "SELECT step, v FROM points WHERE stream = ?1 AND step BETWEEN ?2 AND ?3 "
      "ORDER BY step";
  sqlite3 *db = NULL;
  sqlite3_stmt *s = NULL;
  int64_t sid = 0, total = 0;
  size_t rows, nb = 0, i = 0, b = 0, end = 0;
  double *mn = NULL, *mx = NULL;
  uint64_t first_step = 0;
  int rc, r;
  if (out) memset(out, 0, sizeof *out);
  if (!st || !run || !tag || !out || (n_metrics && !metrics) || max_points == 1)
    return GW_EINVAL;
  for (size_t m = 0; m < n_metrics; m++)
    if (metrics[m] < 0 || metrics[m] >= GW_METRIC_COUNT) return GW_EINVAL;
  rc = rd_acquire(st, &db);
  if (rc) return rc;
  rc = map_rc(exec_rc(db, "BEGIN")); /* one snapshot for count and rows */
  if (rc == 0) rc = lookup_stream(db, run, tag, &sid, NULL);
  if (rc == 0 && from <= to) {
    rc = map_rc(sqlite3_prepare_v2(db, sql_count, -1, &s, NULL));
    if (rc == 0) {
      sqlite3_bind_int64(s, 1, sid);
      sqlite3_bind_int64(s, 2, clamp_step(from));
      sqlite3_bind_int64(s, 3, clamp_step(to));
      r = sqlite3_step(s);
      if (r == SQLITE_ROW)
        total = sqlite3_column_int64(s, 0);
      else
        rc = r == SQLITE_DONE ? GW_EDB : map_rc(r);
    }
    sqlite3_finalize(s);
    s = NULL;
  }
  if (rc) goto done;
  out->n_metrics = n_metrics;
  out->downsampled = max_points && (size_t)total > max_points;
  nb = out->downsampled ? max_points / 2 : 0;
  rows = out->downsampled ? 2 * nb : (size_t)total;
  out->cols = calloc(n_metrics ? n_metrics : 1, sizeof *out->cols);
  out->step = malloc((rows ? rows : 1) * sizeof *out->step);
  mn = malloc((n_metrics ? n_metrics : 1) * sizeof *mn);
  mx = malloc((n_metrics ? n_metrics : 1) * sizeof *mx);
  if (!out->cols || !out->step || !mn || !mx) {
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
  rc = map_rc(sqlite3_prepare_v2(db, sql_rows, -1, &s, NULL));
  if (rc) goto done;
  sqlite3_bind_int64(s, 1, sid);
  sqlite3_bind_int64(s, 2, clamp_step(from));
  sqlite3_bind_int64(s, 3, clamp_step(to));
  if (nb) end = bucket_start(1, (size_t)total, nb);
  while ((r = sqlite3_step(s)) == SQLITE_ROW && i < (size_t)total) {
    uint64_t step = (uint64_t)sqlite3_column_int64(s, 0);
    const unsigned char *v = sqlite3_column_blob(s, 1);
    int bytes = sqlite3_column_bytes(s, 1);
    if (!nb) {
      out->step[i] = step;
      for (size_t m = 0; m < n_metrics; m++)
        out->cols[m][i] = blob_metric(v, bytes, metrics[m]);
      i++;
      continue;
    }
    if (i == bucket_start(b, (size_t)total, nb)) { /* bucket opens */
      first_step = step;
      for (size_t m = 0; m < n_metrics; m++) mn[m] = mx[m] = NAN;
    }
    for (size_t m = 0; m < n_metrics; m++) {
      double x = blob_metric(v, bytes, metrics[m]);
      if (isnan(x)) continue;
      if (isnan(mn[m]) || x < mn[m]) mn[m] = x;
      if (isnan(mx[m]) || x > mx[m]) mx[m] = x;
    }
    i++;
    if (i == end) { /* bucket closes: (first step, mins), (last step, maxes) */
      out->step[2 * b] = first_step;
      out->step[2 * b + 1] = step;
      for (size_t m = 0; m < n_metrics; m++) {
        out->cols[m][2 * b] = mn[m];
        out->cols[m][2 * b + 1] = mx[m];
      }
      b++;
      end = bucket_start(b + 1, (size_t)total, nb);
    }
  }
  if (r != SQLITE_ROW && r != SQLITE_DONE) rc = map_rc(r);
  else if ((nb ? b != nb : i != (size_t)total)) rc = GW_EDB; /* snapshot broke */
  out->n = nb ? 2 * nb : i;
done:
  sqlite3_finalize(s);
  if (!sqlite3_get_autocommit(db)) exec_rc(db, "COMMIT");
  rd_release(st, db);
  free(mn);
  free(mx);
  if (rc) gw_store_series_free(out);
  return rc;
}

int gw_store_sketches(gw_store_t *st, const char *run, const char *tag,
                      uint64_t from, uint64_t to, uint64_t **steps, float **z,
                      uint32_t *k, size_t *n) {
  static const char sql[] =
      "SELECT step, z FROM sketches WHERE stream = ?1 AND k = ?2 "
      "AND step BETWEEN ?3 AND ?4 ORDER BY step";
  sqlite3 *db = NULL;
  sqlite3_stmt *s = NULL;
  uint64_t *sa = NULL;
  float *za = NULL;
  size_t cnt = 0, cap = 0;
  int64_t sid = 0;
  uint32_t kk = 0;
  int rc, r;
  if (!st || !run || !tag || !steps || !z || !k || !n) return GW_EINVAL;
  *steps = NULL;
  *z = NULL;
  *k = 0;
  *n = 0;
  rc = rd_acquire(st, &db);
  if (rc) return rc;
  rc = map_rc(exec_rc(db, "BEGIN"));
  if (rc == 0) rc = lookup_stream(db, run, tag, &sid, &kk);
  if (rc == 0 && from <= to) {
    rc = map_rc(sqlite3_prepare_v2(db, sql, -1, &s, NULL));
    if (rc == 0) {
      sqlite3_bind_int64(s, 1, sid);
      sqlite3_bind_int64(s, 2, kk);
      sqlite3_bind_int64(s, 3, clamp_step(from));
      sqlite3_bind_int64(s, 4, clamp_step(to));
    }
    while (rc == 0 && (r = sqlite3_step(s)) != SQLITE_DONE) {
      const unsigned char *v;
      if (r != SQLITE_ROW) {
        rc = map_rc(r);
        break;
      }
      if ((size_t)sqlite3_column_bytes(s, 1) != (size_t)kk * 4) continue;
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
      sa[cnt] = (uint64_t)sqlite3_column_int64(s, 0);
      v = sqlite3_column_blob(s, 1);
      for (uint32_t q = 0; q < kk; q++) za[cnt * kk + q] = get_f32le(v + 4 * q);
      cnt++;
    }
  }
  sqlite3_finalize(s);
  if (!sqlite3_get_autocommit(db)) exec_rc(db, "COMMIT");
  rd_release(st, db);
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

int gw_store_row_count(gw_store_t *st, uint64_t *rows) {
  sqlite3 *db = NULL;
  int64_t v = 0;
  int rc;
  if (!st || !rows) return GW_EINVAL;
  *rows = 0;
  rc = rd_acquire(st, &db);
  if (rc) return rc;
  rc = map_rc(pragma_int(db, "SELECT coalesce(sum(points), 0) FROM streams", &v));
  rd_release(st, db);
  if (rc == 0) *rows = (uint64_t)v;
  return rc;
}

int gw_store_integrity_check(gw_store_t *st) {
  sqlite3 *db = NULL;
  sqlite3_stmt *s = NULL;
  int rc;
  if (!st) return GW_EINVAL;
  rc = rd_acquire(st, &db);
  if (rc) return rc;
  rc = map_rc(sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &s, NULL));
  if (rc == 0) {
    int r = sqlite3_step(s);
    const unsigned char *t = r == SQLITE_ROW ? sqlite3_column_text(s, 0) : NULL;
    if (!t || strcmp((const char *)t, "ok") != 0) rc = GW_EDB;
    /* a second row means more than one problem; "ok" comes alone */
    if (rc == 0 && sqlite3_step(s) != SQLITE_DONE) rc = GW_EDB;
  }
  sqlite3_finalize(s);
  rd_release(st, db);
  return rc;
}

/* ----------------------------------------------------------------- alerts */

static int alerts_query(gw_store_t *st, const char *sql, int bind_state,
                        int state, size_t limit, gw_store_alert_t **out,
                        size_t *n) {
  sqlite3 *db = NULL;
  sqlite3_stmt *s = NULL;
  gw_store_alert_t *a = NULL;
  size_t cnt = 0, cap = 0;
  int rc, r;
  *out = NULL;
  *n = 0;
  rc = rd_acquire(st, &db);
  if (rc) return rc;
  rc = map_rc(sqlite3_prepare_v2(db, sql, -1, &s, NULL));
  if (rc == 0) {
    int p = 1;
    if (bind_state) sqlite3_bind_text(s, p++, state_names[state], -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, p, limit ? (sqlite3_int64)limit : -1);
  }
  while (rc == 0 && (r = sqlite3_step(s)) != SQLITE_DONE) {
    gw_store_alert_t *x;
    char *str[6] = {0};
    const char *state_txt;
    if (r != SQLITE_ROW) {
      rc = map_rc(r);
      break;
    }
    rc = grow((void **)&a, &cap, cnt, sizeof *a);
    if (rc) break;
    x = &a[cnt];
    memset(x, 0, sizeof *x);
    cnt++;
    for (int c = 0; c < 6 && rc == 0; c++) {
      static const int cols[6] = {1, 2, 3, 4, 12, 13};
      rc = col_dup(s, cols[c], &str[c]);
      if (rc)
        while (c-- > 0) free(str[c]);
    }
    if (rc) break;
    x->rule = str[0], x->run = str[1], x->tag = str[2], x->severity = str[3];
    x->labels = str[4], x->annotations = str[5];
    x->id = (uint64_t)sqlite3_column_int64(s, 0);
    state_txt = (const char *)sqlite3_column_text(s, 5);
    x->state = GW_ALERT_PENDING;
    for (int q = 0; q < 3; q++)
      if (state_txt && strcmp(state_txt, state_names[q]) == 0) x->state = q;
    x->value = sqlite3_column_type(s, 6) == SQLITE_NULL ? NAN : sqlite3_column_double(s, 6);
    x->threshold = sqlite3_column_type(s, 7) == SQLITE_NULL ? NAN : sqlite3_column_double(s, 7);
    x->started_step = (uint64_t)sqlite3_column_int64(s, 8);
    x->started_ns = sqlite3_column_int64(s, 9);
    x->fired_ns = sqlite3_column_int64(s, 10);
    x->resolved_ns = sqlite3_column_int64(s, 11);
  }
  sqlite3_finalize(s);
  rd_release(st, db);
  if (rc) {
    gw_store_alerts_free(a, cnt);
    return rc;
  }
  *out = a;
  *n = cnt;
  return 0;
}

#define ALERT_COLS                                                           \
  "SELECT id, rule, run, tag, severity, state, value, threshold, "          \
  "started_step, started_ns, fired_ns, resolved_ns, labels, annotations "   \
  "FROM alerts "

int gw_store_alerts(gw_store_t *st, int state, size_t limit,
                    gw_store_alert_t **out, size_t *n) {
  if (!st || !out || !n || state < GW_ALERT_ANY || state > GW_ALERT_RESOLVED)
    return GW_EINVAL;
  if (state == GW_ALERT_ANY)
    return alerts_query(st,
                        ALERT_COLS "ORDER BY coalesce(started_ns, 0) DESC, id DESC "
                                   "LIMIT ?1",
                        0, 0, limit, out, n);
  return alerts_query(st,
                      ALERT_COLS "WHERE state = ?1 "
                                 "ORDER BY coalesce(started_ns, 0) DESC, id DESC "
                                 "LIMIT ?2",
                      1, state, limit, out, n);
}

int gw_store_alerts_firing(gw_store_t *st, gw_store_alert_t **out, size_t *n) {
  if (!st || !out || !n) return GW_EINVAL;
  return alerts_query(st,
                      ALERT_COLS "WHERE state IN ('pending', 'firing') "
                                 "ORDER BY id LIMIT ?1",
                      0, 0, 0, out, n);
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
