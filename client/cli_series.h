/* cli_series.h — stored points for `gradwatch query` and `export`: fetch
 * GET /api/v1/series (columnar JSON) through cli_httpc, walk it row by row,
 * and format its values as table cells, CSV fields or JSON.
 *
 * Numbers in CSV and JSON are printed so they read back as exactly the value
 * the server sent (cli_fmt_exact); the table rounds to 6 digits. null is "-"
 * in the table, empty in CSV, null in JSON.
 */
#ifndef GW_CLI_SERIES_H
#define GW_CLI_SERIES_H

#include <stddef.h>

#include <cjson/cJSON.h>

#include "cli_httpc.h"
#include "util.h"

enum { CLI_FMT_TABLE, CLI_FMT_CSV, CLI_FMT_JSON };

/* One stream's answer. names and cols are parallel arrays of ncols. */
typedef struct cli_series_s {
  cJSON *doc;          /* the parsed answer (owned) */
  const cJSON *step;   /* its "step" array */
  size_t n;            /* points */
  size_t ncols;
  const char **names;  /* borrowed from doc or the caller's metrics */
  const cJSON **cols;  /* arrays, or NULL when a column is missing (all null) */
} cli_series_t;

/* Fetch the series of run/tag. metrics: n_metrics names, or NULL for all
 * (columns then = the answer's keys other than run, tag, step, in order).
 * from/to/max_points: query values or NULL. strict: a requested column
 * missing from the answer is an error. On failure *s is empty (freed). */
int cli_series_get(cli_http_t *h, const char *cmd, const char *run, const char *tag,
                   const char *const *metrics, size_t n_metrics, const char *from,
                   const char *to, const char *max_points, int strict, cli_series_t *s);
void cli_series_free(cli_series_t *s); /* accepts a zeroed series */

/* Row cursors over step and each column (cJSON arrays are linked lists). */
typedef struct cli_rows_s {
  const cJSON *step;
  const cJSON **cur; /* owned: free(r->cur) when done */
} cli_rows_t;

/* Allocate the cursors (freeing earlier ones) at row 0. 0 or GW_ENOMEM. */
int cli_rows_start(cli_rows_t *r, const cli_series_t *s);
void cli_rows_rewind(cli_rows_t *r, const cli_series_t *s);
void cli_rows_next(cli_rows_t *r, size_t ncols);

/* One value (or a step: an integer when it is one) as text in b, which is
 * reset first. Out of memory sets b->oom. */
void cli_fmt_value(const cJSON *v, int fmt, gw_buf_t *b);
void cli_fmt_step(const cJSON *v, int fmt, gw_buf_t *b);
/* Append s as a JSON string literal. */
void cli_json_str(const char *s, gw_buf_t *b);

/* 0 if everything written to stdout so far went out; else CLI_FAIL, with a
 * message unless the reader simply went away (EPIPE: `| head`). */
int cli_stdout_ok(const char *cmd);

#endif
