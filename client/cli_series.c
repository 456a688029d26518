/* cli_series.c — fetching, walking and formatting /api/v1/series answers
 * (see cli_series.h). The answer stays one cJSON document; names and
 * columns point into it, so a series is freed with one cli_series_free.
 */
#include "cli_series.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gw_error.h"

void cli_series_free(cli_series_t *s) {
  cJSON_Delete(s->doc);
  free(s->names);
  free(s->cols);
  memset(s, 0, sizeof *s);
}

static int is_meta(const char *key) {
  return strcmp(key, "run") == 0 || strcmp(key, "tag") == 0 || strcmp(key, "step") == 0;
}

int cli_series_get(cli_http_t *h, const char *cmd, const char *run, const char *tag,
                   const char *const *metrics, size_t n_metrics, const char *from,
                   const char *to, const char *max_points, int strict, cli_series_t *s) {
  gw_buf_t path;
  int rc;

  memset(s, 0, sizeof *s);
  gw_buf_init(&path);
  gw_buf_puts(&path, "/api/v1/series");
  cli_http_param(h, &path, "run", run);
  cli_http_param(h, &path, "tag", tag);
  if (metrics) {
    gw_buf_t list;
    gw_buf_init(&list);
    for (size_t i = 0; i < n_metrics; i++) {
      if (i) gw_buf_puts(&list, ",");
      gw_buf_puts(&list, metrics[i]);
    }
    if (!list.oom) cli_http_param(h, &path, "metrics", list.p ? list.p : "");
    path.oom |= list.oom;
    gw_buf_free(&list);
  }
  if (from) cli_http_param(h, &path, "from", from);
  if (to) cli_http_param(h, &path, "to", to);
  if (max_points) cli_http_param(h, &path, "max_points", max_points);
  if (path.oom) {
    gw_buf_free(&path);
    return cli_fail(cmd, "out of memory");
  }
  rc = cli_http_get_json(h, cmd, path.p, &s->doc);
  gw_buf_free(&path);
  if (rc != 0) return rc;

  s->step = cJSON_GetObjectItemCaseSensitive(s->doc, "step");
  if (!cJSON_IsObject(s->doc) || !cJSON_IsArray(s->step)) {
    cli_series_free(s);
    return cli_fail(cmd, "malformed answer for %s/%s: no \"step\" array", run, tag);
  }
  s->n = (size_t)cJSON_GetArraySize(s->step);
  if (metrics) {
    s->ncols = n_metrics;
  } else {
    for (const cJSON *c = s->doc->child; c; c = c->next)
      if (!is_meta(c->string)) s->ncols++;
  }
  s->names = calloc(s->ncols ? s->ncols : 1, sizeof *s->names);
  s->cols = calloc(s->ncols ? s->ncols : 1, sizeof *s->cols);
  if (!s->names || !s->cols) {
    cli_series_free(s);
    return cli_fail(cmd, "out of memory");
  }
  if (metrics) {
    for (size_t i = 0; i < n_metrics; i++) s->names[i] = metrics[i];
  } else {
    size_t i = 0;
    for (const cJSON *c = s->doc->child; c; c = c->next)
      if (!is_meta(c->string)) s->names[i++] = c->string;
  }
  for (size_t i = 0; i < s->ncols; i++) {
    const cJSON *col = cJSON_GetObjectItemCaseSensitive(s->doc, s->names[i]);
    if (col == NULL && !strict) continue;
    if (!cJSON_IsArray(col) || (size_t)cJSON_GetArraySize(col) != s->n) {
      rc = cli_fail(cmd, "malformed answer for %s/%s: \"%s\" is %s", run, tag, s->names[i],
                    col == NULL ? "missing" : "not an array as long as \"step\"");
      cli_series_free(s);
      return rc;
    }
    s->cols[i] = col;
  }
  return 0;
}

int cli_rows_start(cli_rows_t *r, const cli_series_t *s) {
  free(r->cur);
  r->cur = calloc(s->ncols ? s->ncols : 1, sizeof *r->cur);
  if (r->cur == NULL) return GW_ENOMEM;
  cli_rows_rewind(r, s);
  return 0;
}

void cli_rows_rewind(cli_rows_t *r, const cli_series_t *s) {
  r->step = s->step->child;
  for (size_t i = 0; i < s->ncols; i++) r->cur[i] = s->cols[i] ? s->cols[i]->child : NULL;
}

void cli_rows_next(cli_rows_t *r, size_t ncols) {
  r->step = r->step->next;
  for (size_t i = 0; i < ncols; i++)
    if (r->cur[i]) r->cur[i] = r->cur[i]->next;
}

/* Append s, in double quotes with inner quotes doubled when quote is set
 * (CSV). */
static void put_field(gw_buf_t *b, const char *s, int quote) {
  if (!quote) {
    gw_buf_puts(b, s);
    return;
  }
  gw_buf_puts(b, "\"");
  for (const char *q; (q = strchr(s, '"')) != NULL; s = q + 1) {
    gw_buf_append(b, s, (size_t)(q - s));
    gw_buf_puts(b, "\"\"");
  }
  gw_buf_puts(b, s);
  gw_buf_puts(b, "\"");
}

void cli_fmt_value(const cJSON *v, int fmt, gw_buf_t *b) {
  char num[64];
  gw_buf_reset(b);
  if (v == NULL || cJSON_IsNull(v)) {
    gw_buf_puts(b, fmt == CLI_FMT_TABLE ? "-" : fmt == CLI_FMT_JSON ? "null" : "");
  } else if (cJSON_IsNumber(v)) {
    if (fmt == CLI_FMT_TABLE)
      snprintf(num, sizeof num, "%.6g", v->valuedouble);
    else
      cli_fmt_exact(v->valuedouble, num, sizeof num);
    gw_buf_puts(b, num);
  } else if (cJSON_IsString(v) && fmt != CLI_FMT_JSON) {
    const char *s = v->valuestring;
    put_field(b, s, fmt == CLI_FMT_CSV && strpbrk(s, ",\"\r\n") != NULL);
  } else { /* bool, array, object, or a string in JSON: compact JSON */
    char *j = cJSON_PrintUnformatted(v);
    if (j == NULL) {
      b->oom = 1;
      return;
    }
    put_field(b, j, fmt == CLI_FMT_CSV && strpbrk(j, ",\"\r\n") != NULL);
    free(j);
  }
}

void cli_fmt_step(const cJSON *v, int fmt, gw_buf_t *b) {
  if (cJSON_IsNumber(v) && v->valuedouble >= 0 && v->valuedouble < 0x1p63 &&
      v->valuedouble == floor(v->valuedouble)) {
    gw_buf_reset(b);
    gw_buf_printf(b, "%.0f", v->valuedouble);
  } else {
    cli_fmt_value(v, fmt, b);
  }
}

/* Run/tag/metric names need no escapes, but a server could send anything. */
void cli_json_str(const char *s, gw_buf_t *b) {
  cJSON *t = cJSON_CreateString(s);
  char *j = t ? cJSON_PrintUnformatted(t) : NULL;
  if (j) gw_buf_puts(b, j);
  else b->oom = 1;
  free(j);
  cJSON_Delete(t);
}

int cli_stdout_ok(const char *cmd) {
  if (fflush(stdout) == 0 && !ferror(stdout)) return 0;
  if (errno != EPIPE) cli_fail(cmd, "writing the output: %s", strerror(errno));
  return CLI_FAIL;
}
