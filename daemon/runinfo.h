/* runinfo.h — gradwatch_run_info{run,<keys>} 1 on /metrics: the run
 * metadata the operator chose to export (--metrics-labels KEYS).
 *
 * Data flow: ingest's meta sink call (and, at start-up, the metadata kept
 * in the store) → gw_runinfo_observe, which reads only the chosen keys out
 * of the document and keeps their values per run → gw_runinfo_render from
 * /metrics' extra families. A key is a label key of the run's "labels", or
 * "config.NAME" for a top-level scalar member of its "config". Each key
 * becomes a Prometheus label name (characters outside [A-Za-z0-9_] become
 * '_', a leading digit gets a '_' in front, and a name that is "run" or
 * starts with "__" gets "label_" in front); values are cut to
 * GW_RUNINFO_VALUE_MAX bytes at a character boundary; a run without a
 * value for a key gets the empty value (Prometheus: label absent). One
 * mutex guards the table; render copies nothing large and formats under it
 * (the table is small: one short row per run).
 */
#ifndef GW_RUNINFO_H
#define GW_RUNINFO_H

#include <stddef.h>

#include "metrics.h"
#include "sink.h"

#define GW_RUNINFO_KEYS_MAX 16
#define GW_RUNINFO_VALUE_MAX 128 /* bytes of an exported value */
#define GW_RUNINFO_RUNS_MAX 100000 /* runs kept; later runs are not exported */

typedef struct gw_runinfo_s gw_runinfo_t;

/* keys: comma-separated list (copied). Returns 0, GW_ECONFIG with a message
 * in err (empty list, a bad key, more than GW_RUNINFO_KEYS_MAX keys, two keys
 * with the same label name) or GW_ENOMEM; *out NULL on failure. */
int gw_runinfo_new(gw_runinfo_t **out, const char *keys, char *err, size_t errlen);
void gw_runinfo_free(gw_runinfo_t *ri); /* accepts NULL */

/* Record run's metadata document (JSON text, as stored), replacing what was
 * kept for run. 0, GW_EMETA (doc is not JSON), GW_EFULL (run cap reached,
 * not recorded) or GW_ENOMEM. Any thread. */
int gw_runinfo_observe(gw_runinfo_t *ri, const char *run, const char *doc);

/* Runs with a row (tests). */
size_t gw_runinfo_count(gw_runinfo_t *ri);

/* The gradwatch_run_info family, rows sorted by run. */
int gw_runinfo_render(gw_runinfo_t *ri, gw_metrics_writer_t *w);

/* As a sink (sink.h): meta → gw_runinfo_observe. */
void gw_runinfo_sink(gw_runinfo_t *ri, gw_sink_t *out);

#endif
