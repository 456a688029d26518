/* metrics.h — Prometheus exposition of the daemon (GET /metrics, docs/CONTRACT.md §6).
 *
 * gw_metrics_t keeps the latest values of every stream whose tag matches the
 * operator's glob (--metrics-tags, fnmatch(3), default "*"), so the number of
 * per-stream series stays in the operator's hands. The ingest thread calls
 * gw_metrics_observe for every point; HTTP threads call gw_metrics_render,
 * which snapshots the table under the mutex and formats outside it, so a
 * scrape holds ingest up for a copy, never for the formatting. Daemon-wide
 * counters come straight from gw_stats_t at render time, with
 * gradwatch_build_info and Prometheus' standard process_* families (read
 * from /proc/self at render time).
 *
 * Per stream: κ and κ_cum by predictor (onestep, ema, linear), the rank
 * families (gradwatch_rank by energy for the window, gradwatch_rank_run for
 * the whole run), gradwatch_path_cum by predictor, gradwatch_kappa_best
 * labelled with the predictor that wins, gradwatch_tail_kappa, and the
 * daemon's receive time of the latest message
 * (gradwatch_last_seen_timestamp_seconds).
 *
 * As a sink (gw_metrics_sink) it also counts the streams' lifecycle:
 * gradwatch_streams_retired_total and gradwatch_stream_restarts_total{reason}.
 * Other modules' families come through the extra callback of
 * gw_metrics_render: this module knows none of them.
 *
 * Output is the text format 0.0.4: every family is one HELP line, one TYPE
 * line and its samples; label values are escaped (\\, \", \n); a NaN value
 * omits its sample; streams are rendered sorted by (run, tag).
 */
#ifndef GW_METRICS_H
#define GW_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "point.h"
#include "sink.h"
#include "stats.h"

typedef struct gw_metrics_s gw_metrics_t;

/* Content-Type of the rendered text. */
#define GW_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* tags_glob: fnmatch pattern on the tag (copied); NULL means "*".
 * Returns 0, GW_EINVAL (empty glob) or GW_ENOMEM; *out is NULL on failure. */
int gw_metrics_new(gw_metrics_t **out, const char *tags_glob);
void gw_metrics_free(gw_metrics_t *m); /* accepts NULL */

/* Record p as the latest point of (run, tag) if tag matches the glob; else
 * a no-op returning 0. Strings are copied on the stream's first point.
 * Returns 0 or GW_ENOMEM (the point is not recorded). Any thread. */
int gw_metrics_observe(gw_metrics_t *m, const char *run, const char *tag,
                       const gw_point_t *p);

/* Drop the series of (run, tag) (the stream was dropped). 0, or
 * GW_ENOTFOUND if it had none. Not counted as a retirement (the sink's
 * forget is). */
int gw_metrics_forget(gw_metrics_t *m, const char *run, const char *tag);

/* Number of streams with series (for tests and stats). */
size_t gw_metrics_stream_count(gw_metrics_t *m);

/* The metrics as a sink (sink.h), arg = m: point → gw_metrics_observe;
 * forget → gw_metrics_forget, counted in gradwatch_streams_retired_total;
 * restart → counted in gradwatch_stream_restarts_total{reason}. */
void gw_metrics_sink(gw_metrics_t *m, gw_sink_t *out);

/* ---- extra families (other modules') ---- */

/* A writer handed to the render callback. Families must be written whole:
 * gw_metrics_family once, then its samples. */
typedef struct gw_metrics_writer_s gw_metrics_writer_t;

/* type: "counter", "gauge", "untyped". */
int gw_metrics_family(gw_metrics_writer_t *w, const char *name,
                      const char *type, const char *help);
/* labels: NULL, or name/value pairs ending with NULL
 * ({"run", "r1", "tag", "all", NULL}); values are escaped here.
 * A NaN value writes nothing and returns 0. */
int gw_metrics_sample(gw_metrics_writer_t *w, const char *name,
                      const char *const *labels, double value);

/* Called by render after the built-in families; returns 0 or a negative
 * code that aborts the render. */
typedef int (*gw_metrics_extra_fn)(void *arg, gw_metrics_writer_t *w);

/* Render everything. stats may be NULL (daemon counters, build_info and
 * process_* are then omitted);
 * extra may be NULL. On success *out is a NUL-terminated string of *len
 * bytes, the caller's to free(); on failure (GW_ENOMEM, or extra's code)
 * *out is NULL. */
int gw_metrics_render(gw_metrics_t *m, gw_stats_t *stats,
                      gw_metrics_extra_fn extra, void *extra_arg, char **out,
                      size_t *len);

#endif
