/* store.h — SQLite persistence of streams (as segments), points, restart
 * events, alerts, saved engine state and (optionally) raw sketches.
 *
 * Data flow: the ingest thread hands records to gw_store_put_* and the
 * stream lifecycle calls (open, restart, forget), which only append to a
 * bounded in-memory queue (never touching SQLite, never waiting on the
 * disk). A writer thread owned by the store drains that queue in batched
 * transactions, at least every flush_ms (200 ms) and at close, so ingest
 * never waits on fsync. Readers (HTTP threads) query through their own
 * read-only connections; WAL mode lets them run beside the writer. The state
 * save at shutdown and the resume list at start-up are synchronous, on the
 * caller's thread, through a connection of their own.
 *
 * A checkpointer thread with its own connection moves the WAL into the
 * database file, so the writer does not wait on those fsyncs.
 *
 * Segments. A stream is (run, tag); each publisher incarnation of it (a
 * rerun or a resume from a checkpoint, or new sketch parameters) is a
 * segment holding its own points and sketches keyed by (segment, step), so
 * two incarnations can both have a point at one step. Segments of a stream
 * are numbered seq 0, 1, … in order of creation; segment i's points are
 * visible iff step < min(first_step of every later segment): points the new
 * incarnation re-covers are superseded (hidden by default, shown with
 * all_incarnations). Example: crash at step 5200, resume from the step-5000
 * checkpoint → steps ..4999 from incarnation 1, 5000.. from incarnation 2.
 *
 * Failures of the disk (SQLITE_FULL, SQLITE_IOERR, …) never stop ingest: the
 * writer keeps the failed batch, records the error in gw_stats_t
 * (store_errors, store_last_error), retries with backoff (100 ms doubling to
 * 5 s) and resumes when the fault clears; when the queue is full, new points
 * are dropped and counted (store_dropped).
 *
 * On disk (schema version GW_STORE_SCHEMA_VERSION, kept in PRAGMA
 * user_version; version 1, 2 and 3 databases are migrated in place at open):
 * runs, streams (one row per segment), chunks (segment, first_step,
 * last_step, n, blob, xf, tier: sealed runs of a segment's points, each
 * blob a gw_chunk (chunk.h) of GW_METRIC_COUNT columns, xf the derived
 * columns it leaves out and those it stores as the XOR with a prediction
 * (with the prediction's lag), tier 1 its min/max form; store_chunks.c), points
 * (segment, step, v BLOB) WITHOUT ROWID: each segment's newest points not
 * yet sealed, all above its chunks, where v is GW_METRIC_COUNT
 * little-endian float64 in gw_metric_t order (NAN = null; a shorter blob
 * written by an older build reads as null for the missing metrics),
 * point_minutes (the per-segment index of receive
 * minutes retention and max_db_mb delete by), sketches (k little-endian
 * float32), restarts (events), stream_state (saved engine state), alerts,
 * run_meta (v4: each run's latest metadata document, keyed by run name).
 * Steps, seeds and incarnations are stored as SQLite's signed 64-bit
 * integers (steps are < 2^63 by the protocol; a seed or incarnation >= 2^63
 * reads back unchanged through the cast). All times are the daemon's receive
 * clock, never the publisher's.
 *
 * ":memory:" keeps everything in one private in-memory connection: the
 * writer uses it inside a mutex and readers are served from the same
 * connection under that mutex (so reads wait for the batch in progress).
 */
#ifndef GW_STORE_H
#define GW_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "log.h"
#include "point.h"
#include "sink.h"
#include "stats.h"

#define GW_STORE_SCHEMA_VERSION 4
/* Points per sealed chunk (gw_store_config_t.chunk_points default). */
#define GW_STORE_CHUNK_POINTS 256

/* Points of the fault-injection seam (docs/CONTRACT.md §9, STYLE "fault injection"). */
typedef enum {
  GW_STORE_OP_OPEN = 1, /* opening / migrating the database in gw_store_open */
  GW_STORE_OP_BEGIN,    /* BEGIN of a writer transaction (batch or maintenance) */
  GW_STORE_OP_STEP,     /* each sqlite3_step of a writer statement */
  GW_STORE_OP_COMMIT,   /* COMMIT of a writer transaction */
  GW_STORE_OP_CHECKPOINT /* a WAL checkpoint by the checkpointer thread */
} gw_store_op_t;

typedef struct gw_store_config_s {
  const char *path;       /* file path or ":memory:" (copied) */
  uint32_t flush_ms;      /* max delay before a batch commits (default 200) */
  size_t queue_max;       /* max records queued or uncommitted (default 1,000,000) */
  uint32_t retention_days; /* 0 = keep forever; else delete points received
                              (recv_ns, the daemon's clock) longer ago, in
                              whole minutes, every retention_check_ms */
  uint32_t max_db_mb;     /* 0 = unlimited; past it (pages in use plus the
                             -wal file), delete the oldest minutes of points
                             down to 90%, never the newest minute of a live
                             stream, log a warning, give the pages back; at
                             least gw_store_min_db_mb() */
  uint32_t store_every;   /* store every Nth point per stream (>= 1), see put_point */
  int store_sketches;     /* also keep raw sketches */
  /* --- additions to the original contract --- */
  uint32_t retention_check_ms; /* retention pass interval (default 60000) */
  uint32_t close_timeout_ms;   /* how long close keeps retrying a failing
                                  disk before dropping what is left (10000) */
  uint32_t read_conns;    /* read-only connections kept pooled (default 4;
                             0 = open one per call) */
  uint32_t full_resolution_days; /* 0 = keep every point; else each sealed
                             chunk whose points were all received longer
                             ago is replaced by 2 points: its first step with
                             every metric's minimum, its last step with the
                             maxima (checked with retention) */
  uint32_t chunk_points;  /* seal a segment's rows into a compressed chunk
                             every this many points (default
                             GW_STORE_CHUNK_POINTS; 0 = keep rows, the
                             pre-chunk layout, readers still read chunks) */
  /* Fault injection: when set, called by the writer before each operation
   * `op` (gw_store_op_t); a nonzero SQLite result code makes the store act as
   * if SQLite had returned it. Called from the writer thread, the
   * checkpointer thread (GW_STORE_OP_CHECKPOINT) and gw_store_open
   * (GW_STORE_OP_OPEN), so it must be thread-safe. */
  int (*fault)(void *arg, int op);
  void *fault_arg;
  /* State changes (commit failing, writes resumed, points dropped at close,
   * refused schema, migration, checkpoint failing) as event "store", from the
   * writer or checkpointer thread or from gw_store_open. NULL = silent.
   * Borrowed: must outlive the store. */
  gw_log_t *log;
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

/* Open (declare) a stream for this process under the daemon-wide
 * stream_id (ids are reused after forget). ref: run, tag, k, kind, s, seed,
 * incarnation (strings copied). o->how GW_OPEN_NEW: first message in this
 * process at o->step; GW_OPEN_RESTORED: state carried over a restart
 * (continue, no event). With GW_OPEN_NEW, if (run, tag) already has stored
 * history: same incarnation and same sketch parameters → continue its
 * current segment and record a restart event "resumed"; a different
 * incarnation or different sketch parameters → start a new segment
 * (first_step = o->step) and record an event "incarnation". Marks the
 * stream live. Never refused for a full queue (bounded by the stream cap).
 * GW_EINVAL for a NULL/empty name, a bad stream_id or step >= 2^63. */
int gw_store_open_stream(gw_store_t *st, uint32_t stream_id,
                         const gw_stream_ref_t *ref, const gw_open_t *o);
/* An engine-detected restart of an open stream: record the event (run, tag,
 * r->step, ref->incarnation, r->prev_incarnation, r->reason, r->recv_ns);
 * if ref->incarnation or the sketch parameters differ from the current
 * segment's, start a new segment whose first_step = r->step. Never refused
 * for a full queue. GW_ENOTFOUND for a stream not open, GW_EINVAL for bad
 * arguments. */
int gw_store_restart_stream(gw_store_t *st, uint32_t stream_id,
                            const gw_stream_ref_t *ref, const gw_restart_t *r);
/* The stream was retired: mark it not live and release stream_id (puts for
 * it are GW_ENOTFOUND until it is opened again). History stays.
 * GW_ENOTFOUND for a stream not open. */
int gw_store_forget_stream(gw_store_t *st, uint32_t stream_id);
/* Queue a point of an open stream into its current segment. GW_EFULL when
 * the queue is full (the point is dropped and counted), GW_ENOTFOUND for a
 * stream not open, GW_EINVAL for step >= 2^63. O(1), never waits on the
 * writer. p->recv_ns (daemon clock) is what last_seen, retention and runs'
 * state use; p->wall_ns (publisher clock) is only stored as the wall_time
 * metric. store_every N: the first point after each open/restart of the
 * stream is kept, then those with p->n % N == 0; the others return 0
 * without being queued. A stored (segment, step) is never overwritten: a
 * second point at that step is ignored and counted (store_duplicates). */
int gw_store_put_point(gw_store_t *st, const gw_point_t *p);
/* Queue a raw sketch into the stream's current segment (only kept when
 * store_sketches is set; else no-op). Every sketch is kept (store_every does
 * not apply); a second sketch at a stored (segment, step) is ignored. GW_EFULL, GW_ENOTFOUND,
 * GW_EINVAL as for points (also for k == 0 or z == NULL). */
int gw_store_put_sketch(gw_store_t *st, uint32_t stream_id, uint64_t step,
                        const double *z, uint32_t k);
/* Block until everything queued before the call is committed: 0. If a
 * commit attempt fails meanwhile, returns that error at once (-ENOSPC,
 * GW_EIO, GW_EDB, …; the records stay queued and are retried). A flush also
 * cuts short the writer's backoff so it retries immediately. */
int gw_store_flush(gw_store_t *st);

/* Queue run m->run's metadata document m->doc (copied), replacing the
 * stored one: latest wins. Creates the run if it has no row yet (a run with
 * metadata and no point is listed with 0 streams). Never refused for a full
 * queue (metadata is rare). GW_EINVAL for a NULL/empty run or doc. */
int gw_store_put_meta(gw_store_t *st, const gw_run_meta_t *m);

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

/* A run's state: finished when no stream of it is live (all retired or
 * never opened since), live when its newest receive time is within stall_ns
 * of now, else stalled. */
#define GW_RUN_STATE_MAP(XX) \
  XX(LIVE, "live")           \
  XX(STALLED, "stalled")     \
  XX(FINISHED, "finished")

typedef enum {
#define XX(id, name) GW_RUN_##id,
  GW_RUN_STATE_MAP(XX)
#undef XX
  GW_RUN_STATE_COUNT
} gw_run_state_t;

/* "live", "stalled", "finished"; NULL out of range. */
const char *gw_store_run_state_name(int state);

typedef struct gw_store_run_s {
  char *run;
  uint64_t streams;               /* distinct tags */
  uint64_t first_step, last_step; /* 0 while the run has no point */
  int64_t last_seen_ns;           /* latest receive time (daemon clock), 0: none */
  int state;                      /* gw_run_state_t */
  char *meta;                     /* the latest metadata document (JSON text),
                                     NULL when the run has none */
  uint64_t meta_incarnation;      /* its publisher's incarnation */
  int64_t meta_wall_ns;           /* publisher clock when it was made */
  int64_t meta_recv_ns;           /* daemon clock when it arrived */
} gw_store_run_t;

/* One entry per tag: the latest segment's k/kind/s/seed, the visible points
 * over all segments and their step range, the latest receive time. */
typedef struct gw_store_stream_s {
  char *tag;
  uint32_t k;
  uint64_t points; /* visible stored points */
  uint64_t last_step;
  int64_t last_seen_ns;
  uint64_t first_step; /* oldest visible stored step (0 when none) */
  uint8_t kind, s;
  uint64_t seed;
  uint64_t incarnation; /* the latest segment's */
  uint64_t segments;    /* number of segments (incarnations) */
} gw_store_stream_t;

/* Columnar series: step[i], inc[i] (the incarnation the row came from) and
 * cols[m][i] for the requested metrics, NAN for null. Owned by the caller:
 * gw_store_series_free. */
typedef struct gw_series_s {
  size_t n;
  size_t n_metrics;
  uint64_t *step;
  uint64_t *inc;
  double **cols;
  int downsampled; /* 1 if min/max downsampling was applied */
} gw_series_t;

/* Runs by name, with their state at now_ns (daemon clock) for a stall
 * threshold of stall_ns, and their metadata. */
int gw_store_runs(gw_store_t *st, int64_t now_ns, int64_t stall_ns,
                  gw_store_run_t **out, size_t *n);
void gw_store_runs_free(gw_store_run_t *runs, size_t n);
/* Streams of a run by tag. GW_ENOTFOUND if the run is unknown. */
int gw_store_streams(gw_store_t *st, const char *run, gw_store_stream_t **out,
                     size_t *n);
void gw_store_streams_free(gw_store_stream_t *s, size_t n);

/* Points of (run, tag) with from <= step <= to, metrics by id
 * (gw_metric_lookup; GW_EINVAL for an id out of range). all_incarnations 0:
 * only visible points (see the top of this file), in step order;
 * 1: every point of every segment, in step order, ties by segment seq.
 * max_points = 0 means no limit. When the selected rows number n >
 * max_points they are downsampled: split, in order, into B = max_points / 2
 * buckets of equal point count (bucket b holds points [floor(b n / B),
 * floor((b+1) n / B))), and each bucket yields two rows: the step (and
 * incarnation) of its first point carrying every metric's minimum over the
 * bucket, then the step of its last point carrying the maximum. NaN-aware:
 * nulls are ignored, a bucket's value is null only if all its values are
 * null. So 2B <= max_points rows, and every metric's global min and max over
 * the range survive. max_points == 1 is GW_EINVAL. GW_ENOTFOUND if the
 * stream is unknown. *out is zeroed on failure. Cost: O(segments) per row
 * (segments are merged by step). */
int gw_store_series(gw_store_t *st, const char *run, const char *tag,
                    const int *metrics, size_t n_metrics, uint64_t from,
                    uint64_t to, size_t max_points, gw_series_t *out,
                    int all_incarnations);
void gw_store_series_free(gw_series_t *s);
/* How many rows gw_store_series would select before downsampling (the
 * same visibility rules), so a caller can bound the answer before reading
 * it. 0 with *n set, GW_ENOTFOUND if the stream is unknown. */
int gw_store_series_count(gw_store_t *st, const char *run, const char *tag, uint64_t from,
                          uint64_t to, int all_incarnations, uint64_t *n);

/* Raw sketches of a stream (store_sketches) with from <= step <= to, for
 * export: the visible rows (as for series) of the latest segment's k, *n
 * rows of *k values, z row-major (n × k); rows stored with another k are
 * skipped. *steps and *z are the caller's to free(). GW_ENOTFOUND if the
 * stream is unknown. */
int gw_store_sketches(gw_store_t *st, const char *run, const char *tag,
                      uint64_t from, uint64_t to, uint64_t **steps,
                      float **z, uint32_t *k, size_t *n);

/* Replay source after a kill -9: the current segment's sketches of
 * (run, tag) in step order, one callback per row (z as float64, k values,
 * borrowed for the call). Stops early if cb returns nonzero and returns that
 * value; else 0, GW_ENOTFOUND for an unknown stream, or an error. */
int gw_store_replay(gw_store_t *st, const char *run, const char *tag,
                    int (*cb)(void *arg, uint64_t step, const double *z,
                              uint32_t k),
                    void *arg);

/* A recorded restart of a stream (reason: gw_restart_reason_name). */
typedef struct gw_store_restart_s {
  char *run, *tag;
  uint64_t step;             /* first step of the new window */
  uint64_t incarnation, prev_incarnation;
  const char *reason;        /* static string */
  int64_t recv_ns;
} gw_store_restart_t;

/* Restart events of run (tag NULL: every tag), newest first (recv time,
 * then record order), at most limit (0 = all). GW_ENOTFOUND for an unknown
 * run. */
int gw_store_restarts(gw_store_t *st, const char *run, const char *tag,
                      size_t limit, gw_store_restart_t **out, size_t *n);
void gw_store_restarts_free(gw_store_restart_t *r, size_t n);

/* ---- continuity across daemon restarts (synchronous, caller's thread) ---- */

/* Save every live stream's engine state: begin flushes the queue (its error
 * is returned) and opens one transaction that replaces all previous state
 * rows; put streams one row (run, tag, blob of len bytes, copied); commit
 * ends it. Any failure rolls the transaction back (the previous state rows
 * stay) and ends it; a put or commit without begin, or a second begin, is
 * GW_EINVAL. One transaction at a time; it holds the write lock, so the
 * writer waits (or retries) until commit. */
int gw_store_state_begin(gw_store_t *st);
int gw_store_state_put(gw_store_t *st, const char *run, const char *tag,
                       const void *blob, size_t len);
int gw_store_state_commit(gw_store_t *st);

/* What start-up resumes: every stream marked live whose last_seen (receive
 * time) >= live_since_ns, with its current segment's incarnation and sketch
 * parameters, the segment's last stored step (its first_step while it has
 * no point), its first_step, whether it has stored sketches, and the saved
 * state blob if any (NULL, 0 otherwise). Streams marked live but older than
 * live_since_ns are marked retired. Owned by the caller:
 * gw_store_resume_free. */
typedef struct gw_store_resume_s {
  char *run, *tag;
  uint32_t k;
  uint8_t kind, s;
  uint64_t seed;
  uint64_t incarnation;
  uint64_t first_step, last_step;
  int64_t last_seen_ns;
  int has_sketches;
  void *state;
  size_t state_len;
} gw_store_resume_t;
int gw_store_resume_list(gw_store_t *st, int64_t live_since_ns,
                         gw_store_resume_t **out, size_t *n);
void gw_store_resume_free(gw_store_resume_t *r, size_t n);
/* Delete all saved state rows (after restoring). */
int gw_store_state_clear(gw_store_t *st);

/* Rows in the points table, every segment (from the per-segment counters:
 * exact, O(segments)). */
int gw_store_row_count(gw_store_t *st, uint64_t *rows);

/* Run `PRAGMA integrity_check`, then decode every chunk (its checksum, its
 * n and step range, the chunks of a segment disjoint, its rows above them);
 * 0 if all is well, GW_EDB otherwise. */
int gw_store_integrity_check(gw_store_t *st);

/* The store as a sink (sink.h): open → gw_store_open_stream, sketch →
 * gw_store_put_sketch, point → gw_store_put_point, restart →
 * gw_store_restart_stream, forget → gw_store_forget_stream, meta →
 * gw_store_put_meta (store_sink.c). */
void gw_store_sink(gw_store_t *st, gw_sink_t *out);

/* The smallest max_db_mb that holds one flush: 1 MiB of schema, a full
 * writer batch of points (BATCH_MAX of them, ~600 bytes each) in the
 * database and again in the WAL, and the WAL the checkpointer lets build up
 * (1000 pages) — 20 MB. gw_store_open refuses a smaller nonzero cap
 * (GW_EINVAL). Stored sketches are not in this floor. */
uint32_t gw_store_min_db_mb(void);

#endif
