/* store.h — SQLite persistence of streams, points, alerts and (optionally)
 * raw sketches.
 *
 * Data flow: the ingest thread hands records to gw_store_put_* which only
 * append to a bounded in-memory queue (never touching SQLite, never waiting
 * on the disk). A writer thread owned by the store drains that queue in
 * batched transactions, at least every flush_ms (200 ms) and at close, so
 * ingest never waits on fsync. Readers (HTTP threads) query through their own
 * read-only connections; WAL mode lets them run beside the writer.
 *
 * A checkpointer thread with its own connection moves the WAL into the
 * database file, so the writer does not wait on those fsyncs.
 *
 * Failures of the disk (SQLITE_FULL, SQLITE_IOERR, …) never stop ingest: the
 * writer keeps the failed batch, records the error in gw_stats_t
 * (store_errors, store_last_error), retries with backoff (100 ms doubling to
 * 5 s) and resumes when the fault clears; when the queue is full, new points
 * are dropped and counted (store_dropped).
 *
 * On disk (schema version GW_STORE_SCHEMA_VERSION, kept in PRAGMA
 * user_version): runs, streams, points (stream, step, v BLOB) WITHOUT ROWID
 * where v is GW_METRIC_COUNT little-endian float64 in gw_metric_t order (NAN =
 * null; a shorter blob written by an older build reads as null for the
 * missing metrics), point_minutes (the per-stream minute index retention and
 * max_db_mb delete by), sketches (k little-endian float32), alerts. Steps and
 * seeds are stored as SQLite's signed 64-bit integers (steps are < 2^63 by
 * the protocol; a seed >= 2^63 reads back unchanged through the cast).
 *
 * ":memory:" keeps everything in one private in-memory connection: the
 * writer uses it inside a mutex and readers are served from the same
 * connection under that mutex (so reads wait for the batch in progress).
 */
#ifndef GW_STORE_H
#define GW_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "point.h"
#include "stats.h"

#define GW_STORE_SCHEMA_VERSION 1

/* Points of the fault-injection seam (SPEC §9, STYLE "fault injection"). */
typedef enum {
  GW_STORE_OP_OPEN = 1, /* opening / migrating the database in gw_store_open */
  GW_STORE_OP_BEGIN,    /* BEGIN of a writer transaction (batch or maintenance) */
  GW_STORE_OP_STEP,     /* each sqlite3_step of a writer statement */
  GW_STORE_OP_COMMIT,   /* COMMIT of a writer transaction */
  GW_STORE_OP_CHECKPOINT /* a WAL checkpoint by the checkpointer thread */
} gw_store_op_t;

/* Log levels passed to the optional log callback (syslog numbering). */
enum { GW_STORE_LOG_ERR = 3, GW_STORE_LOG_WARNING = 4, GW_STORE_LOG_INFO = 6 };

typedef struct gw_store_config_s {
  const char *path;       /* file path or ":memory:" (copied) */
  uint32_t flush_ms;      /* max delay before a batch commits (default 200) */
  size_t queue_max;       /* max records queued or uncommitted (default 1,000,000) */
  uint32_t retention_days; /* 0 = keep forever; else delete points whose
                              wall_ns (the publisher's clock) is older, in
                              whole minutes, every retention_check_ms */
  uint32_t max_db_mb;     /* 0 = unlimited; past it, delete the oldest minutes
                             of points down to 90% and give the pages back
                             (the -wal file is not counted) */
  uint32_t store_every;   /* store every Nth point per stream (>= 1), see put_point */
  int store_sketches;     /* also keep raw sketches */
  /* --- additions to the original contract --- */
  uint32_t retention_check_ms; /* retention pass interval (default 60000) */
  uint32_t close_timeout_ms;   /* how long close keeps retrying a failing
                                  disk before dropping what is left (10000) */
  uint32_t read_conns;    /* read-only connections kept pooled (default 4;
                             0 = open one per call) */
  /* Fault injection: when set, called by the writer before each operation
   * `op` (gw_store_op_t); a nonzero SQLite result code makes the store act as
   * if SQLite had returned it. Called from the writer thread, the
   * checkpointer thread (GW_STORE_OP_CHECKPOINT) and gw_store_open
   * (GW_STORE_OP_OPEN), so it must be thread-safe. */
  int (*fault)(void *arg, int op);
  void *fault_arg;
  /* Optional log sink for state changes (commit failing, writes resumed,
   * points dropped at close, refused schema, checkpoint failing). Called
   * from the writer or checkpointer thread or from gw_store_open; msg is
   * borrowed for the call. */
  void (*log)(void *arg, int level, const char *msg);
  void *log_arg;
} gw_store_config_t;

void gw_store_config_default(gw_store_config_t *cfg);

typedef struct gw_store_s gw_store_t;

/* Open (creating and migrating the schema via PRAGMA user_version), set WAL,
 * start the writer thread. stats is borrowed and must outlive the store.
 * Returns 0 or GW_EINVAL (bad config), GW_EDB (not a gradwatch database, or
 * a schema newer than GW_STORE_SCHEMA_VERSION: refused, file untouched, the
 * reason goes to cfg->log), GW_EIO / -ENOSPC / GW_ENOMEM; *out is NULL on
 * failure. */
int gw_store_open(gw_store_t **out, const gw_store_config_t *cfg,
                  gw_stats_t *stats);
/* Commit everything queued, stop the writer, close. While the disk keeps
 * failing, retries for close_timeout_ms, then drops what is left (points
 * counted in store_dropped). No other call on st may be in progress or
 * follow (puts and readers included). Accepts NULL. */
void gw_store_close(gw_store_t *st);

/* ---- writer side: called from the ingest thread; never block on disk ---- */

/* Declare a stream before its first point (engine stream id → run/tag). May be
 * called again for the same id after a drop/reuse. Strings are copied.
 * Declarations are never refused for a full queue (they are bounded by the
 * engine's stream cap). GW_EINVAL for a NULL/empty name. */
int gw_store_put_stream(gw_store_t *st, uint32_t stream_id, const char *run,
                        const char *tag, uint32_t k, uint8_t kind, uint8_t s,
                        uint64_t seed);
/* Queue a point of a declared stream. GW_EFULL when the queue is full (the
 * point is dropped and counted), GW_ENOTFOUND for an undeclared stream,
 * GW_EINVAL for step >= 2^63. O(1), never waits on the writer.
 * store_every N: the first point after each gw_store_put_stream of the
 * stream is kept, then those with p->n % N == 0; the others return 0 without
 * being queued. A point with an existing (stream, step) replaces it. */
int gw_store_put_point(gw_store_t *st, const gw_point_t *p);
/* Queue a raw sketch (only kept when store_sketches is set; else no-op).
 * Every sketch is kept (store_every does not apply). GW_EFULL, GW_ENOTFOUND,
 * GW_EINVAL as for points (also for k == 0 or z == NULL). */
int gw_store_put_sketch(gw_store_t *st, uint32_t stream_id, uint64_t step,
                        const double *z, uint32_t k);
/* Block until everything queued before the call is committed: 0. If a
 * commit attempt fails meanwhile, returns that error at once (-ENOSPC,
 * GW_EIO, GW_EDB, …; the records stay queued and are retried). A flush also
 * cuts short the writer's backoff so it retries immediately. */
int gw_store_flush(gw_store_t *st);

/* ---- alerts (the alerts module's persistence) ---- */

typedef enum {
  GW_ALERT_PENDING = 0,
  GW_ALERT_FIRING = 1,
  GW_ALERT_RESOLVED = 2
} gw_alert_state_t;
#define GW_ALERT_ANY (-1) /* state filter of gw_store_alerts: all states */

/* One alert instance. Strings: borrowed (copied) by gw_store_put_alert;
 * owned by the array returned by gw_store_alerts*, freed by
 * gw_store_alerts_free. NULL strings are stored as SQL NULL. */
typedef struct gw_store_alert_s {
  uint64_t id;          /* 0 on put = new alert: the store assigns an id */
  const char *rule;     /* rule name, required */
  const char *run, *tag; /* may be NULL (rule not tied to a stream) */
  const char *severity;
  int state;            /* gw_alert_state_t */
  double value;         /* the value that tripped the rule; NAN = null */
  double threshold;     /* NAN = null */
  uint64_t started_step;
  int64_t started_ns, fired_ns, resolved_ns; /* 0 = not (yet) */
  const char *labels;      /* JSON object text (not validated here) */
  const char *annotations; /* JSON object text */
} gw_store_alert_t;

/* Queue an insert (a->id == 0) or an update of alert a->id (all fields are
 * replaced). *id_out (may be NULL) receives the id: ids are unique across
 * restarts (the next id is read from the database at open). GW_EINVAL for a
 * missing rule or bad state; never refused for a full queue (alerts are
 * rare and must not be lost). */
int gw_store_put_alert(gw_store_t *st, const gw_store_alert_t *a,
                       uint64_t *id_out);
/* Committed alerts in state `state` (a gw_alert_state_t or GW_ALERT_ANY),
 * newest first (started_ns, then id, descending), at most limit (0 = all). */
int gw_store_alerts(gw_store_t *st, int state, size_t limit,
                    gw_store_alert_t **out, size_t *n);
/* Alerts still active (pending or firing), by id: what the alerts module
 * restores after a restart. */
int gw_store_alerts_firing(gw_store_t *st, gw_store_alert_t **out, size_t *n);
void gw_store_alerts_free(gw_store_alert_t *a, size_t n);

/* ---- reader side: any thread ---- */

typedef struct gw_store_run_s {
  char *run;
  uint64_t streams;
  uint64_t first_step, last_step; /* 0 while the run has no point */
  int64_t last_seen_ns;           /* latest point wall time */
} gw_store_run_t;

typedef struct gw_store_stream_s {
  char *tag;
  uint32_t k;
  uint64_t points; /* stored points */
  uint64_t last_step;
  int64_t last_seen_ns;
  /* additions to the original contract */
  uint64_t first_step; /* oldest stored step (0 when no point is stored) */
  uint8_t kind, s;
  uint64_t seed;
} gw_store_stream_t;

/* Columnar series: step[i] and cols[m][i] for the requested metrics, NAN for
 * null. Owned by the caller: gw_store_series_free. */
typedef struct gw_series_s {
  size_t n;
  size_t n_metrics;
  uint64_t *step;
  double **cols;
  int downsampled; /* 1 if min/max downsampling was applied */
} gw_series_t;

/* Runs by name. */
int gw_store_runs(gw_store_t *st, gw_store_run_t **out, size_t *n);
void gw_store_runs_free(gw_store_run_t *runs, size_t n);
/* Streams of a run by tag. GW_ENOTFOUND if the run is unknown. */
int gw_store_streams(gw_store_t *st, const char *run, gw_store_stream_t **out,
                     size_t *n);
void gw_store_streams_free(gw_store_stream_t *s, size_t n);

/* Points of (run, tag) with from <= step <= to, metrics by id
 * (gw_metric_lookup; GW_EINVAL for an id out of range). max_points = 0 means
 * no limit. When the range holds n > max_points points it is downsampled:
 * split, in step order, into B = max_points / 2 buckets of equal point count
 * (bucket b holds points [floor(b n / B), floor((b+1) n / B))), and each
 * bucket yields two rows: the step of its first point carrying every
 * metric's minimum over the bucket, then the step of its last point carrying
 * the maximum. NaN-aware: nulls are ignored, a bucket's value is null only if
 * all its values are null. So 2B <= max_points rows, and every metric's global
 * min and max over the range survive. max_points == 1 is GW_EINVAL.
 * GW_ENOTFOUND if the stream is unknown. *out is zeroed on failure. */
int gw_store_series(gw_store_t *st, const char *run, const char *tag,
                    const int *metrics, size_t n_metrics, uint64_t from,
                    uint64_t to, size_t max_points, gw_series_t *out);
void gw_store_series_free(gw_series_t *s);

/* Raw sketches of a stream (store_sketches) with from <= step <= to, for
 * export/replay: *n rows of the stream's current *k, z row-major (n × k).
 * Rows stored with another k (a redeclared stream) are skipped. *steps and
 * *z are the caller's to free(). GW_ENOTFOUND if the stream is unknown. */
int gw_store_sketches(gw_store_t *st, const char *run, const char *tag,
                      uint64_t from, uint64_t to, uint64_t **steps,
                      float **z, uint32_t *k, size_t *n);

/* Rows in the points table (from the per-stream counters: exact, O(streams)). */
int gw_store_row_count(gw_store_t *st, uint64_t *rows);

/* Run `PRAGMA integrity_check`; 0 if "ok", GW_EDB otherwise. */
int gw_store_integrity_check(gw_store_t *st);

#endif
