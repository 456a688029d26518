/* store_int.h — what the parts of the store share, private to them.
 *
 * The store is one object split by job, as SQLite splits pager from WAL:
 *   store.c        open/close, schema and migrations, the design note
 *   store_queue.c  gw_store_put_* and the stream lifecycle calls: the bounded
 *                  queue the ingest thread appends to
 *   store_writer.c the writer thread (batches, segments, restart events),
 *                  maintenance (retention, max_db_mb) and the checkpointer
 *   store_chunks.c a segment's points as compressed chunks beside the rows:
 *                  sealing, late points, deletes, counts, the point cursor
 *   store_read.c   readers (runs, streams, series, sketches, restarts,
 *                  resume list, replay), the synchronous state save, alerts
 * Nothing outside these files includes this header.
 */
#ifndef GW_STORE_INT_H
#define GW_STORE_INT_H

#include <pthread.h>
#include <sqlite3.h>
#include <stdint.h>

#include "log.h"
#include "store.h"
#include "util.h"

#define BLK_RECS 256        /* records per queue block */
#define BATCH_MAX 16384     /* records per writer transaction */
#define FREE_BLKS_MAX 64    /* recycled blocks kept (about 4 MB) */
#define STREAM_ID_MAX (1u << 24) /* daemon stream ids are small slot indexes */
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define BUSY_TIMEOUT_MS 5000
#define SIZE_CHECK_MAX_ROUNDS 256 /* minute buckets deleted per size pass */
#define TIER_CHUNKS_PER_PASS 4096 /* chunks downsampled per full_resolution pass */
#define NS_PER_MIN 60000000000LL
/* A stored point's bytes on disk as the size floor counts them: the packed
 * metrics plus its key, row and point_minutes overhead. */
#define GW_STORE_POINT_BYTES (BLOB_BYTES + 64)
#define NS_PER_MS 1000000LL
#define CKPT_FRAMES 1000        /* WAL frames that wake the checkpointer */
#define CKPT_EVERY_FLUSHES 5    /* checkpoint at least every 5 flush_ms (1 s) */
#define WAL_HARD_FRAMES 65536   /* the writer checkpoints itself past this */
#define BLOB_BYTES (GW_METRIC_COUNT * 8)

/* Queued record types. */
enum { REC_OPEN = 1, REC_RESTART, REC_FORGET, REC_POINT, REC_SKETCH, REC_ALERT, REC_META };

/* The sketch parameters and incarnation a segment is defined by. */
typedef struct segkey_s {
  uint64_t seed, incarnation;
  uint32_t k;
  uint8_t kind, s;
} segkey_t;

typedef struct rec_s {
  uint8_t type;
  uint32_t sid;   /* daemon stream id (all but alerts) */
  int64_t step;   /* point/sketch step; open/restart: the new window's step */
  int64_t recv_ns; /* daemon clock */
  union {
    unsigned char v[BLOB_BYTES]; /* point: packed little-endian float64 */
    struct {                     /* open, restart */
      char *run, *tag;           /* one allocation: tag follows run */
      segkey_t key;
      int how;                   /* open: gw_open_how_t; restart: reason */
      uint64_t prev_incarnation; /* restart */
    } op;
    struct {
      float *z;
      uint32_t k;
    } sk;
    gw_store_alert_t *al; /* deep copy, one allocation */
    struct {              /* run metadata */
      char *run, *doc;    /* one allocation: doc follows run */
      uint64_t incarnation;
      int64_t wall_ns;
    } meta;
  } u;
} rec_t;

typedef struct blk_s {
  struct blk_s *next;
  uint32_t n; /* records filled */
  rec_t r[BLK_RECS];
} blk_t;

typedef struct {
  uint8_t declared;   /* opened and not forgotten */
  uint8_t kept_first; /* store_every: first point since open/restart kept */
} istream_t;

/* Writer's view of an open stream: its current segment. seg == 0: none
 * (not open, or its open was refused by SQLite). */
typedef struct wseg_s {
  int64_t seg, run_id, seq;
  segkey_t key;
  /* chunk bookkeeping, a cache of the database (ck_known 0: ask it):
   * the segment's rows in points and its last chunk's last_step */
  int64_t ck_rows, ck_last;
  int ck_known;
} wseg_t;

typedef struct { /* one point of the chunk being written */
  int64_t db, step, recv;
  uint32_t ord, sid;
  const unsigned char *v;
} prow_t;

typedef struct {
  int64_t db;
  const rec_t *r;
} skrow_t;

typedef struct {
  uint32_t sid;
  wseg_t old;
} undo_t;

/* Writer statements (store_writer.c prepares them at open through
 * gws_prepare_writer). */
enum { S_RUN_INS, S_RUN_GET, S_SEG_LAST, S_SEG_INS, S_SEG_RETIRE_OLDER,
       S_SEG_LIVE, S_EVENT_INS, S_PT_INS, S_ST_UPD, S_MIN_UP,
       S_SK_INS, S_AL_UP, S_META_UP, S_COUNT };

struct gw_store_s {
  gw_store_config_t cfg;
  char *path;
  int mem; /* ":memory:" */
  gw_stats_t *stats;
  gw_log_t *log; /* cfg.log; NULL = silent */

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

  /* ---- writer thread only (GW_ASSERT_OWNER(&st->w_owner)) ---- */
  gw_owner_t w_owner;
  int64_t size_warn_at; /* mono ms: next "cannot trim below max_db_mb" warning */
  pthread_t thr;
  int thr_started;
  sqlite3 *wdb;
  sqlite3_stmt *ws[S_COUNT];
  pthread_mutex_t db_mu; /* ":memory:": guards wdb between writer, readers
                            and the state transaction */
  wseg_t *map;           /* daemon stream id → current segment */
  size_t map_cap;
  undo_t *undo;
  size_t undo_n, undo_cap;
  prow_t *rows;
  int64_t *dsteps;              /* a chunk sealed straight from a batch */
  const unsigned char **dvals;
  skrow_t *skrows;
  unsigned char *skbuf; /* float32 encoding buffer of the chunk's sketches */
  size_t skbuf_cap;
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

  /* ---- synchronous read-write calls (state save, resume list), under
   * sy_mu; a state transaction holds it from begin to commit ---- */
  pthread_mutex_t sy_mu;
  sqlite3 *sdb;          /* file databases: opened at first use */
  sqlite3_stmt *sy_ins;  /* the open state transaction's insert, or NULL */
};

/* ---- helpers (store.c) ---- */

int gws_map_rc(int sqlite_rc);   /* SQLite result code → GW_E* / -errno */
int gws_record_error(int sqlite_rc); /* 1: concerns one record, skip it */
int gws_fault(gw_store_t *st, int op); /* the fault seam: SQLITE_OK or a code */
int gws_pragma_int(sqlite3 *db, const char *sql, int64_t *v);
int gws_exec(sqlite3 *db, const char *sql);
char *gws_strdup(const char *s);
int64_t gws_floor_div(int64_t a, int64_t b);
static inline int64_t gws_clamp_step(uint64_t s) {
  return s > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)s;
}
void gws_put_f64le(unsigned char *p, double v);
double gws_get_f64le(const unsigned char *p);
void gws_put_f32le(unsigned char *p, float v);
float gws_get_f32le(const unsigned char *p);
/* ":memory:" databases: serialise the one connection. No-ops for files. */
void gws_db_lock(gw_store_t *st);
void gws_db_unlock(gw_store_t *st);
extern const char *const gws_alert_state_names[3];

/* ---- queue (store_queue.c) ---- */

void gws_rec_release(rec_t *r);

/* ---- writer (store_writer.c) ---- */

void *gws_writer_main(void *arg);
void *gws_ckpt_main(void *arg);
int gws_wal_hook(void *arg, sqlite3 *db, const char *name, int frames);
int gws_prepare_writer(gw_store_t *st); /* SQLite result code */
void gws_finalize_writer(gw_store_t *st);

/* ---- chunks (store_chunks.c): a segment's sealed points; SQLite result
 * codes unless said otherwise ---- */

/* Move the oldest rows of segment seg into chunks of chunk_n points while at
 * least min_n rows remain (min_n 1: every row, the tail as a short chunk),
 * at most max_chunks chunks (0: no limit). Inside the caller's transaction.
 * *sealed += points moved. */
int gws_chunk_seal(sqlite3 *db, int64_t seg, size_t chunk_n, size_t min_n, size_t max_chunks,
                   int64_t *sealed);
/* The whole store, one transaction per segment: full chunks of every
 * segment, and the rows left as a short chunk: of no segment
 * (GWS_SEAL_FULL), of segments not live (GWS_SEAL_TAILS_IDLE, at open) or
 * of every segment (GWS_SEAL_TAILS_ALL, at close). */
int gws_chunk_seal_all(sqlite3 *db, size_t chunk_n, int tails, int64_t *sealed);
enum { GWS_SEAL_FULL, GWS_SEAL_TAILS_IDLE, GWS_SEAL_TAILS_ALL }; /* tails */
/* Insert n points (ascending steps, all above the segment's chunks, the
 * segment without rows) as one chunk, straight from their packed blobs. */
int gws_chunk_put_blobs(sqlite3 *db, int64_t seg, const int64_t *steps,
                        const unsigned char *const *v, int bytes, size_t n);
/* The last chunk's last_step, INT64_MIN when the segment has none. */
int gws_chunk_last_step(sqlite3 *db, int64_t seg, int64_t *last);
/* A point at or below the last chunk's last_step: merged into its chunk
 * (*added 1) unless that step is stored (*added 0). */
int gws_chunk_add_late(sqlite3 *db, int64_t seg, int64_t step, const unsigned char *v,
                       int bytes, int *added);
/* Delete the chunked points with step <= max_step (a straddling chunk is
 * re-encoded with the rest); *deleted += points deleted. */
int gws_chunk_delete_upto(sqlite3 *db, int64_t seg, int64_t max_step, int64_t *deleted);
/* Replace each whole chunk of segment seg with last_step <= max_step by its
 * downsampled form (2 points: first step with every column's minimum, last
 * step with the maxima; chunks.tier = 1), at most *budget chunks (counted
 * down); *removed += points no longer stored. Inside the caller's
 * transaction. */
int gws_chunk_tier_upto(sqlite3 *db, int64_t seg, int64_t max_step, int64_t *budget,
                        int64_t *removed);
/* Points (chunks and rows) of a segment with step in [lo, hi]: count, min
 * and max step (INT64_MAX / INT64_MIN when none). 0 or GW_E*. */
int gws_chunk_count(sqlite3 *db, int64_t seg, int64_t lo, int64_t hi, int64_t *n,
                    int64_t *min, int64_t *max);

/* Every chunk decodes (checksum), with its row's n, first and last step,
 * the chunks of a segment do not overlap and its rows lie above them. 0 or
 * GW_EDB (GW_ENOMEM). */
int gws_chunk_verify(sqlite3 *db);

/* One segment's points in [lo, hi] in step order, chunks then rows. After
 * open and each next: has, step and the values (gws_pcur_metric), valid
 * until the next call. 0 or GW_E*. */
typedef struct {
  sqlite3_stmt *ck, *rw;
  int64_t lo, hi;
  uint64_t *steps; /* the decoded chunk */
  double *vals;
  size_t n, i, ncols;
  int rows; /* chunks done: reading rows */
  int has;
  int64_t step;
  const double *cv;          /* values of a chunked point, or NULL */
  const unsigned char *blob; /* a row's packed values */
  int bytes;
} gws_pcur_t;
int gws_pcur_open(gws_pcur_t *c, sqlite3 *db, int64_t seg, int64_t lo, int64_t hi);
int gws_pcur_next(gws_pcur_t *c);
double gws_pcur_metric(const gws_pcur_t *c, int m);
void gws_pcur_close(gws_pcur_t *c);

/* ---- readers (store_read.c) ---- */

/* A connection to read from; release with gws_rd_release. 0 or GW_E*. */
int gws_rd_acquire(gw_store_t *st, sqlite3 **out);
void gws_rd_release(gw_store_t *st, sqlite3 *db);
/* Close the synchronous connection (store_free). */
void gws_sy_close(gw_store_t *st);

#endif
