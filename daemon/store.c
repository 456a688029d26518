/* store.c — SQLite persistence for gradwatchd (see store.h for the
 * contract): open/close, the schema and its migrations, and the helpers the
 * other parts share (store_int.h lists the parts).
 *
 * NOTES ON THE DESIGN OF THE STORE
 *
 * Four parties touch a store: the ingest thread(s) calling gw_store_put_*
 * and the lifecycle calls (store_queue.c), the writer thread started by
 * gw_store_open (store_writer.c), reader threads calling the query functions
 * and the daemon's main thread making the synchronous state-save and resume
 * calls (store_read.c).
 *
 * Queue. Records (stream open/restart/forget, points, sketches, alerts) are
 * copied into fixed-size blocks of BLK_RECS records chained in a FIFO under
 * q_mu. A put is O(1): lock, copy into the tail block (taking a recycled
 * block or malloc'ing one when it is full), unlock. It never touches SQLite.
 * `depth` counts every record not yet committed, queued or already taken by
 * the writer, so queue_max bounds the memory of both, including a batch kept
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
 * Segments. A transaction resolves lifecycle records in queue order: an open
 * finds the stream's latest segment (streams row with the highest seq) and
 * either continues it (same incarnation and sketch parameters) or inserts a
 * new one (seq + 1, first_step = the opening step) and retires the older
 * ones' live flag; restarts do the same on a parameter change; both record
 * rows in `restarts`. The writer's map sends each daemon stream id to its
 * current segment (undone on rollback). Then the chunk's points are sorted
 * by (segment, step, queue order) and inserted, so each segment's rows go
 * into the B-tree contiguously and its row (first/last step, last_seen,
 * point count) and point_minutes row are updated once per transaction, not
 * per point. A point whose (segment, step) exists is ignored (INSERT … ON
 * CONFLICT DO NOTHING) and counted in store_duplicates: history is never
 * rewritten. Visibility (what series shows by default) is computed at read
 * time from the segments' first_step, so no stored row changes when an
 * incarnation supersedes another.
 *
 * Errors. Result codes that concern one record (CONSTRAINT, TOOBIG,
 * MISMATCH, RANGE) skip that record and count a store error; every other
 * failure (FULL, IOERR, BUSY, NOMEM, …) fails the whole transaction, which
 * is retried as described. Nothing is logged unless cfg->log is set.
 *
 * Maintenance (writer thread, only while commits succeed): retention deletes
 * points whose receive minute (recv_ns / 60 s, from point_minutes) is older
 * than retention_days, every retention_check_ms; past max_db_mb the -wal
 * file is first truncated by a checkpoint that does not wait on readers,
 * then max_db_mb deletes the oldest minute buckets of all segments, one transaction per bucket, until
 * the used pages plus the -wal file are under 90% of the limit, never the
 * newest bucket of a live segment, logs a warning (db_trimmed: bytes
 * before and after, points deleted), then runs incremental vacuum (the
 * schema sets auto_vacuum = INCREMENTAL at creation) and a passive
 * checkpoint so the file shrinks. The -wal file is truncated to
 * journal_size_limit (a quarter of the cap, at most 64 MiB) after a
 * checkpoint. A nonzero cap below gw_store_min_db_mb() is refused at open.
 * The publisher's clock never decides what is deleted.
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
 *
 * Synchronous writes (state save at shutdown, the resume list's retiring of
 * stale streams, state clear) go through a third read-write connection (sdb,
 * opened at first use) under sy_mu on the caller's thread; they take
 * SQLite's write lock like the writer, which waits on it (busy timeout) or
 * retries. A ":memory:" store uses the writer's connection under db_mu.
 *
 * Lock order: sy_mu → db_mu → q_mu; rd_mu and ck_mu are leaves.
 */
#include "store.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "store_int.h"

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
    /* v2: streams rows become segments (one per incarnation of a (run, tag),
     * unique on (run, tag, seq)); points, sketches and point_minutes keep
     * their keys, now naming the segment (v1 rows become seq 0, incarnation
     * 0, with the same id). start_step is the segment's first_step of the
     * visibility rule; first_step stays the oldest stored step. live marks
     * the stream live (on its latest segment only). Restart events and the
     * engine state saved at shutdown get tables of their own. v1 last_seen
     * and minute index held the publisher's clock; they are kept as they are
     * (the next points bring receive times). */
    "CREATE TABLE streams_v2("
    "  id INTEGER PRIMARY KEY,"
    "  run INTEGER NOT NULL REFERENCES runs(id),"
    "  tag TEXT NOT NULL,"
    "  seq INTEGER NOT NULL,"
    "  incarnation INTEGER NOT NULL,"
    "  k INTEGER NOT NULL, kind INTEGER NOT NULL, s INTEGER NOT NULL,"
    "  seed INTEGER NOT NULL,"
    "  start_step INTEGER NOT NULL,"
    "  first_step INTEGER, last_step INTEGER, last_seen INTEGER,"
    "  points INTEGER NOT NULL DEFAULT 0,"
    "  live INTEGER NOT NULL DEFAULT 0,"
    "  UNIQUE(run, tag, seq));"
    "INSERT INTO streams_v2(id, run, tag, seq, incarnation, k, kind, s, seed,"
    "  start_step, first_step, last_step, last_seen, points, live)"
    "  SELECT id, run, tag, 0, 0, k, kind, s, seed, coalesce(first_step, 0),"
    "  first_step, last_step, last_seen, points, 0 FROM streams;"
    "DROP TABLE streams;"
    "ALTER TABLE streams_v2 RENAME TO streams;"
    "CREATE INDEX streams_live ON streams(live) WHERE live = 1;"
    "CREATE TABLE restarts("
    "  id INTEGER PRIMARY KEY,"
    "  run INTEGER NOT NULL REFERENCES runs(id),"
    "  tag TEXT NOT NULL,"
    "  step INTEGER NOT NULL,"
    "  incarnation INTEGER NOT NULL, prev_incarnation INTEGER NOT NULL,"
    "  reason TEXT NOT NULL,"
    "  recv_ns INTEGER NOT NULL);"
    "CREATE INDEX restarts_by_run ON restarts(run, recv_ns);"
    "CREATE TABLE stream_state("
    "  run TEXT NOT NULL, tag TEXT NOT NULL, blob BLOB NOT NULL,"
    "  PRIMARY KEY(run, tag));",
    /* v3: sealed points as compressed columnar chunks (store_chunks.c); the
     * points table keeps each segment's newest, not yet sealed points. The
     * rows of a v2 file are sealed after this step by the pass every open
     * runs (transactions of 64 chunks, so an interrupted pass resumes).
     * xf: which derived columns the blob leaves out; tier 1: the chunk was
     * replaced by its 2-point min/max form (full_resolution_days). */
    "CREATE TABLE chunks("
    "  stream INTEGER NOT NULL, first_step INTEGER NOT NULL,"
    "  last_step INTEGER NOT NULL, n INTEGER NOT NULL, blob BLOB NOT NULL,"
    "  xf INTEGER NOT NULL DEFAULT 0, tier INTEGER NOT NULL DEFAULT 0,"
    "  PRIMARY KEY(stream, first_step));",
    /* v4: run metadata (PROTOCOL.md §11), the latest document per run. */
    "CREATE TABLE run_meta("
    "  run INTEGER PRIMARY KEY REFERENCES runs(id),"
    "  incarnation INTEGER NOT NULL,"
    "  wall_ns INTEGER NOT NULL,"
    "  recv_ns INTEGER NOT NULL,"
    "  doc TEXT NOT NULL);",
};

const char *const gws_alert_state_names[3] = {"pending", "firing", "resolved"};

/* ------------------------------------------------------------ helpers */

int64_t gws_floor_div(int64_t a, int64_t b) {
  int64_t q = a / b;
  return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

void gws_put_f64le(unsigned char *p, double v) {
  uint64_t u;
  memcpy(&u, &v, 8);
  for (int i = 0; i < 8; i++) p[i] = (unsigned char)(u >> (8 * i));
}

double gws_get_f64le(const unsigned char *p) {
  uint64_t u = 0;
  double v;
  for (int i = 0; i < 8; i++) u |= (uint64_t)p[i] << (8 * i);
  memcpy(&v, &u, 8);
  return v;
}

void gws_put_f32le(unsigned char *p, float v) {
  uint32_t u;
  memcpy(&u, &v, 4);
  for (int i = 0; i < 4; i++) p[i] = (unsigned char)(u >> (8 * i));
}

float gws_get_f32le(const unsigned char *p) {
  uint32_t u = 0;
  float v;
  for (int i = 0; i < 4; i++) u |= (uint32_t)p[i] << (8 * i);
  memcpy(&v, &u, 4);
  return v;
}

int gws_map_rc(int rc) {
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

int gws_record_error(int rc) {
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

int gws_fault(gw_store_t *st, int op) {
  return st->cfg.fault ? st->cfg.fault(st->cfg.fault_arg, op) : SQLITE_OK;
}

char *gws_strdup(const char *s) {
  size_t n;
  char *d;
  if (!s) return NULL;
  n = strlen(s) + 1;
  d = malloc(n);
  if (d) memcpy(d, s, n);
  return d;
}

int gws_exec(sqlite3 *db, const char *sql) {
  return sqlite3_exec(db, sql, NULL, NULL, NULL);
}

int gws_pragma_int(sqlite3 *db, const char *sql, int64_t *v) {
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

void gws_db_lock(gw_store_t *st) {
  if (st->mem) pthread_mutex_lock(&st->db_mu);
}
void gws_db_unlock(gw_store_t *st) {
  if (st->mem) pthread_mutex_unlock(&st->db_mu);
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
  cfg->chunk_points = GW_STORE_CHUNK_POINTS;
}

/* ------------------------------------------------------------ open/close */

/* Open the writer connection, check and migrate the schema, prepare the
 * writer's statements. SQLite result code (reasons go to cfg->log). */
static int db_open_writer(gw_store_t *st) {
  sqlite3 *db = NULL;
  int64_t uv = 0, tables = 0;
  char q[300];
  int rc = gws_fault(st, GW_STORE_OP_OPEN);
  if (rc == SQLITE_OK)
    rc = sqlite3_open_v2(st->path, &db,
                         SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
                             SQLITE_OPEN_NOMUTEX,
                         NULL);
  st->wdb = db;
  gw_log_quote(q, sizeof q, st->path);
  if (rc != SQLITE_OK) {
    char m[200];
    gw_log(st->log, GW_LOG_ERROR, "store", "msg=\"cannot open\" path=%s error=%s", q,
           gw_log_quote(m, sizeof m, db ? sqlite3_errmsg(db) : sqlite3_errstr(rc)));
    return rc;
  }
  sqlite3_extended_result_codes(db, 1);
  sqlite3_busy_timeout(db, BUSY_TIMEOUT_MS);
  rc = gws_pragma_int(db, "PRAGMA user_version", &uv);
  if (rc == SQLITE_OK)
    rc = gws_pragma_int(db, "SELECT count(*) FROM sqlite_master", &tables);
  if (rc != SQLITE_OK) {
    char m[200];
    gw_log(st->log, GW_LOG_ERROR, "store", "msg=\"not a readable database\" path=%s error=%s",
           q, gw_log_quote(m, sizeof m, sqlite3_errmsg(db)));
    return rc;
  }
  if (uv > GW_STORE_SCHEMA_VERSION) {
    gw_log(st->log, GW_LOG_ERROR, "store",
           "msg=\"schema newer than this gradwatchd supports; upgrade gradwatchd or use "
           "another --db\" path=%s version=%lld supported=%d",
           q, (long long)uv, GW_STORE_SCHEMA_VERSION);
    return SQLITE_ERROR;
  }
  if (uv == 0 && tables > 0) {
    gw_log(st->log, GW_LOG_ERROR, "store",
           "msg=\"not a gradwatch database (tables but no schema version)\" path=%s", q);
    return SQLITE_ERROR;
  }
  if (uv == 0) rc = gws_exec(db, "PRAGMA auto_vacuum = INCREMENTAL");
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
      gw_log(st->log, GW_LOG_ERROR, "store", "msg=\"cannot enable WAL\" path=%s", q);
  }
  if (rc == SQLITE_OK) rc = gws_exec(db, "PRAGMA synchronous = NORMAL");
  if (rc == SQLITE_OK) {
    /* under a size cap the WAL left after a checkpoint is part of it */
    uint64_t jl = (uint64_t)64 << 20;
    if (st->cfg.max_db_mb && ((uint64_t)st->cfg.max_db_mb << 20) / 4 < jl)
      jl = ((uint64_t)st->cfg.max_db_mb << 20) / 4;
    char jq[64];
    snprintf(jq, sizeof jq, "PRAGMA journal_size_limit = %llu", (unsigned long long)jl);
    rc = gws_exec(db, jq);
  }
  if (rc == SQLITE_OK) rc = gws_exec(db, "PRAGMA secure_delete = OFF");
  if (rc == SQLITE_OK) rc = gws_exec(db, "PRAGMA cache_size = -16384");
  if (rc == SQLITE_OK && !st->mem) { /* checkpoints: see gws_ckpt_main */
    rc = gws_exec(db, "PRAGMA wal_autocheckpoint = 0");
    sqlite3_wal_hook(db, gws_wal_hook, st);
  }
  if (rc == SQLITE_OK && uv < GW_STORE_SCHEMA_VERSION) {
    char sql[64];
    rc = gws_exec(db, "BEGIN IMMEDIATE");
    for (int64_t v = uv; rc == SQLITE_OK && v < GW_STORE_SCHEMA_VERSION; v++)
      rc = gws_exec(db, migrations[v]);
    snprintf(sql, sizeof sql, "PRAGMA user_version = %d", GW_STORE_SCHEMA_VERSION);
    if (rc == SQLITE_OK) rc = gws_exec(db, sql);
    if (rc == SQLITE_OK) rc = gws_exec(db, "COMMIT");
    if (rc != SQLITE_OK) {
      char m[200];
      gw_log(st->log, GW_LOG_ERROR, "store", "msg=\"schema migration failed\" path=%s error=%s",
             q, gw_log_quote(m, sizeof m, sqlite3_errmsg(db)));
      if (!sqlite3_get_autocommit(db)) gws_exec(db, "ROLLBACK");
    } else if (uv > 0) {
      gw_log(st->log, GW_LOG_INFO, "store", "msg=\"schema migrated\" path=%s from=%lld to=%d",
             q, (long long)uv, GW_STORE_SCHEMA_VERSION);
    }
  }
  if (rc == SQLITE_OK && st->cfg.chunk_points) {
    /* seal what a v2 file, an interrupted pass or a kill -9 left as rows:
     * full chunks everywhere, the tails of segments no longer live */
    int64_t sealed = 0;
    int64_t t0 = gw_mono_ns();
    int src = gws_chunk_seal_all(db, st->cfg.chunk_points, GWS_SEAL_TAILS_IDLE, &sealed);
    if (src != SQLITE_OK) { /* every point is still readable: go on */
      char m[200];
      gw_log(st->log, GW_LOG_WARN, "store", "msg=\"sealing chunks failed\" path=%s error=%s",
             q, gw_log_quote(m, sizeof m, sqlite3_errstr(src)));
    } else if (sealed > 0) {
      gw_log(st->log, GW_LOG_INFO, "store", "msg=\"rows sealed into chunks\" path=%s points=%lld ms=%lld",
             q, (long long)sealed, (long long)((gw_mono_ns() - t0) / 1000000));
    }
  }
  if (rc == SQLITE_OK) rc = gws_prepare_writer(st);
  if (rc == SQLITE_OK) {
    int64_t next = 1;
    rc = gws_pragma_int(db, "SELECT coalesce(max(id), 0) + 1 FROM alerts", &next);
    st->next_alert_id = (uint64_t)next;
  }
  return rc;
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
  gws_sy_close(st);
  gws_finalize_writer(st);
  sqlite3_close(st->wdb);
  for (b = st->q_head; b;) { /* only after a failed open or a dropped close */
    blk_t *n = b->next;
    for (uint32_t i = 0; i < b->n; i++) gws_rec_release(&b->r[i]);
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
  pthread_mutex_destroy(&st->sy_mu);
  pthread_mutex_destroy(&st->ck_mu);
  pthread_cond_destroy(&st->ck_cv);
  free(st->ing);
  free(st->map);
  free(st->undo);
  free(st->rows);
  free(st->dsteps);
  free(st->dvals);
  free(st->skrows);
  free(st->skbuf);
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
      cfg->queue_max == 0 || cfg->store_every == 0 || cfg->retention_check_ms == 0 ||
      (cfg->max_db_mb && cfg->max_db_mb < gw_store_min_db_mb()))
    return GW_EINVAL;
  if (!sqlite3_threadsafe()) return GW_EDB;
  st = calloc(1, sizeof *st);
  if (!st) return GW_ENOMEM;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_mutex_init(&st->q_mu, NULL);
  pthread_mutex_init(&st->db_mu, NULL);
  pthread_mutex_init(&st->rd_mu, NULL);
  pthread_mutex_init(&st->sy_mu, NULL);
  pthread_cond_init(&st->q_cv, &ca);
  pthread_cond_init(&st->done_cv, &ca);
  pthread_mutex_init(&st->ck_mu, NULL);
  pthread_cond_init(&st->ck_cv, &ca);
  pthread_condattr_destroy(&ca);
  st->cfg = *cfg;
  st->stats = stats;
  st->log = cfg->log;
  st->path = gws_strdup(cfg->path);
  st->cfg.path = st->path;
  st->mem = st->path && strcmp(st->path, ":memory:") == 0;
  st->rows = malloc(BATCH_MAX * sizeof *st->rows);
  st->skrows = malloc(BATCH_MAX * sizeof *st->skrows);
  if (cfg->read_conns) st->pool = calloc(cfg->read_conns, sizeof *st->pool);
  if (cfg->chunk_points) {
    st->dsteps = malloc(cfg->chunk_points * sizeof *st->dsteps);
    st->dvals = malloc(cfg->chunk_points * sizeof *st->dvals);
  }
  if (!st->path || !st->rows || !st->skrows || (cfg->read_conns && !st->pool) ||
      (cfg->chunk_points && (!st->dsteps || !st->dvals))) {
    rc = GW_ENOMEM;
    goto fail;
  }

  rc = db_open_writer(st);
  if (rc != SQLITE_OK) {
    rc = gws_map_rc(rc);
    goto fail;
  }
  if (!st->mem) {
    rc = sqlite3_open_v2(st->path, &st->ckdb,
                         SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc == SQLITE_OK) rc = sqlite3_busy_timeout(st->ckdb, BUSY_TIMEOUT_MS);
    if (rc == SQLITE_OK) { /* a first read opens the WAL; until then a
                              checkpoint on this connection does nothing */
      int64_t tables = 0;
      rc = gws_pragma_int(st->ckdb, "SELECT count(*) FROM sqlite_master", &tables);
    }
    if (rc != SQLITE_OK) {
      rc = gws_map_rc(rc);
      goto fail;
    }
    rc = pthread_create(&st->ck_thr, NULL, gws_ckpt_main, st);
    if (rc != 0) {
      rc = -rc;
      goto fail;
    }
    st->ck_started = 1;
  }
  atomic_store_explicit(&stats->store_last_error, 0, memory_order_relaxed);
  atomic_store_explicit(&stats->store_queue_depth, 0, memory_order_relaxed);
  rc = pthread_create(&st->thr, NULL, gws_writer_main, st);
  if (rc != 0) {
    rc = -rc;
    goto fail;
  }
  st->thr_started = 1;
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

const char *gw_store_run_state_name(int state) {
  static const char *const names[] = {
#define XX(id, name) name,
      GW_RUN_STATE_MAP(XX)
#undef XX
  };
  return state >= 0 && state < GW_RUN_STATE_COUNT ? names[state] : NULL;
}
