/* cli_export.c — `gradwatch export RUN`: every stored point of a run, one
 * line per point, as CSV (run,tag,step,metrics...) or JSON lines.
 *
 * GET /api/v1/runs/{run}/streams names the tags (or --tag gives one), then
 * GET /api/v1/series per tag. The CSV header is the first stream's columns;
 * later streams are printed in those columns, looked up by name (a metric a
 * stream lacks is empty). Fetching and formatting live in cli_series.c.
 */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_httpc.h"
#include "cli_series.h"

static const char export_help[] =
    "Usage: gradwatch export RUN [OPTIONS]\n"
    "\n"
    "Write the stored points of every stream of RUN to stdout, one line per point\n"
    "(GET /api/v1/runs/RUN/streams, then /api/v1/series for each tag).\n"
    "\n"
    "  --format csv|jsonl    CSV with a header (run,tag,step,metrics...) or one JSON\n"
    "                        object per line (default csv)\n"
    "  --tag TAG             only this stream\n"
    "  --metrics LIST|all    comma-separated metric names (default all)\n"
    "  --from STEP, --to STEP  only steps in this range (inclusive)\n";

enum { E_FORMAT = 1, E_TAG, E_METRICS, E_FROM, E_TO, E_HELP };

static const struct option export_opts[] = {
    {"format", required_argument, NULL, E_FORMAT},
    {"tag", required_argument, NULL, E_TAG},
    {"metrics", required_argument, NULL, E_METRICS},
    {"from", required_argument, NULL, E_FROM},
    {"to", required_argument, NULL, E_TO},
    {"help", no_argument, NULL, E_HELP},
    CLI_HTTP_LONG_OPTIONS,
    {NULL, 0, NULL, 0},
};

/* Split "a,b,c" into an array of borrowed pointers into *copy (both the
 * caller's to free, also after a failure). */
static int split_list(const char *cmd, const char *spec, char **copy, const char ***out, size_t *n) {
  size_t cap = 1;
  for (const char *p = spec; *p; p++) cap += *p == ',';
  *copy = strdup(spec);
  *out = calloc(cap, sizeof **out);
  *n = 0;
  if (*copy == NULL || *out == NULL) return cli_fail(cmd, "out of memory");
  for (char *p = *copy;;) {
    char *e = strchr(p, ',');
    if (e) *e = '\0';
    if (*p == '\0') return cli_usage(cmd, "empty name in --metrics '%s'", spec);
    (*out)[(*n)++] = p;
    if (!e) break;
    p = e + 1;
  }
  return 0;
}

/* Print the rows of s (stream run/tag); CSV in head's columns. Stops at a
 * write error or out of memory (line->oom / cell->oom), which the caller
 * reports. */
static void export_rows(const char *run, const char *tag, const cli_series_t *s, cli_rows_t *r,
                        const cli_series_t *head, int jsonl, gw_buf_t *line, gw_buf_t *cell) {
  for (size_t row = 0; row < s->n; row++, cli_rows_next(r, s->ncols)) {
    gw_buf_reset(line);
    if (jsonl) {
      gw_buf_puts(line, "{\"run\":");
      cli_json_str(run, line);
      gw_buf_puts(line, ",\"tag\":");
      cli_json_str(tag, line);
      cli_fmt_step(r->step, CLI_FMT_JSON, cell);
      gw_buf_printf(line, ",\"step\":%s", cell->p ? cell->p : "null");
      for (size_t i = 0; i < s->ncols; i++) {
        gw_buf_puts(line, ",");
        cli_json_str(s->names[i], line);
        cli_fmt_value(r->cur[i], CLI_FMT_JSON, cell);
        gw_buf_puts(line, ":");
        gw_buf_append(line, cell->p, cell->len);
      }
      gw_buf_puts(line, "}");
    } else {
      gw_buf_printf(line, "%s,%s,", run, tag);
      cli_fmt_step(r->step, CLI_FMT_CSV, cell);
      gw_buf_append(line, cell->p, cell->len);
      for (size_t i = 0; i < head->ncols; i++) {
        const cJSON *v = NULL;
        for (size_t j = 0; j < s->ncols; j++)
          if (strcmp(s->names[j], head->names[i]) == 0) {
            v = r->cur[j];
            break;
          }
        cli_fmt_value(v, CLI_FMT_CSV, cell);
        gw_buf_puts(line, ",");
        gw_buf_append(line, cell->p, cell->len);
      }
    }
    if (line->oom || cell->oom || ferror(stdout)) return;
    fwrite(line->p, 1, line->len, stdout);
    putchar('\n');
  }
}

/* The tags of run from /api/v1/runs/{run}/streams: *tags borrowed from
 * *doc (both the caller's, also after a failure). */
static int list_tags(cli_http_t *h, const char *cmd, const char *run, cJSON **doc,
                     const char ***tags, size_t *nt) {
  gw_buf_t path;
  char *e = curl_easy_escape(h->curl, run, 0);
  int rc;

  gw_buf_init(&path);
  if (e) gw_buf_printf(&path, "/api/v1/runs/%s/streams", e);
  curl_free(e);
  if (e == NULL || path.oom) {
    gw_buf_free(&path);
    return cli_fail(cmd, "out of memory");
  }
  rc = cli_http_get_json(h, cmd, path.p, doc);
  gw_buf_free(&path);
  if (rc != 0) return rc;
  const cJSON *arr = cJSON_GetObjectItemCaseSensitive(*doc, "streams");
  if (!cJSON_IsArray(arr))
    return cli_fail(cmd, "malformed answer for run %s: no \"streams\" array", run);
  if ((*tags = calloc((size_t)cJSON_GetArraySize(arr) + 1, sizeof **tags)) == NULL)
    return cli_fail(cmd, "out of memory");
  for (const cJSON *st = arr->child; st; st = st->next) {
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(st, "tag");
    if (!cJSON_IsString(t))
      return cli_fail(cmd, "malformed answer for run %s: a stream without a \"tag\" string", run);
    (*tags)[(*nt)++] = t->valuestring;
  }
  return 0;
}

int cli_export(int argc, char **argv) {
  const char *cmd = "export", *tag = NULL, *from = NULL, *to = NULL, *mspec = NULL;
  cli_http_t h;
  cJSON *streams_doc = NULL;
  cli_series_t head = {0}, s = {0};
  cli_rows_t r = {0};
  char *mcopy = NULL;
  const char **metrics = NULL, **tags = NULL;
  size_t nm = 0, nt = 0;
  gw_buf_t line, cell;
  int c, rc = 0, jsonl = 0, status = CLI_FAIL;
  uint64_t u;

  cli_http_init(&h);
  gw_buf_init(&line);
  gw_buf_init(&cell);
  opterr = 0;
  while (rc == 0 && (c = getopt_long(argc, argv, ":h", export_opts, NULL)) != -1) {
    switch (c) {
    case 'h':
    case E_HELP:
      printf("%s%s", export_help, cli_http_help);
      cli_http_free(&h);
      return CLI_OK;
    case E_FORMAT:
      if (strcmp(optarg, "csv") == 0) jsonl = 0;
      else if (strcmp(optarg, "jsonl") == 0) jsonl = 1;
      else rc = cli_usage(cmd, "--format is csv or jsonl, not '%s'", optarg);
      break;
    case E_TAG: tag = optarg; break;
    case E_METRICS: mspec = optarg; break;
    case E_FROM: rc = cli_opt_u64(cmd, "--from", optarg, 0, INT64_MAX, &u); from = optarg; break;
    case E_TO: rc = cli_opt_u64(cmd, "--to", optarg, 0, INT64_MAX, &u); to = optarg; break;
    case '?':
    case ':': rc = cli_bad_option(cmd, c, argv); break;
    default: rc = cli_http_option(&h, cmd, c, optarg);
    }
  }
  if (rc == 0 && argc - optind < 1) rc = cli_usage(cmd, "which RUN?");
  if (rc == 0 && argc - optind > 1) rc = cli_usage(cmd, "one RUN only (got '%s' too)", argv[optind + 1]);
  if (rc == 0) rc = cli_http_check_names(cmd, argv[optind], tag);
  if (rc == 0 && mspec && strcmp(mspec, "all") != 0) rc = split_list(cmd, mspec, &mcopy, &metrics, &nm);
  if (rc != 0) {
    status = rc;
    goto done;
  }
  const char *run = argv[optind];
  cli_catch_signals();
  if (cli_http_open(&h, cmd) != 0) goto done;

  if (tag) {
    nt = 1;
    if ((tags = calloc(1, sizeof *tags)) == NULL) goto oom;
    tags[0] = tag;
  } else if (list_tags(&h, cmd, run, &streams_doc, &tags, &nt) != 0) {
    goto done;
  }

  for (size_t i = 0; i < nt && !cli_stopped(); i++) {
    cli_series_t *cur = i == 0 ? &head : &s;
    if (i > 1) cli_series_free(&s);
    if (cli_series_get(&h, cmd, run, tags[i], metrics, nm, from, to, NULL, metrics != NULL, cur) != 0)
      goto done;
    if (i == 0 && !jsonl) {
      fputs("run,tag,step", stdout);
      for (size_t j = 0; j < head.ncols; j++) printf(",%s", head.names[j]);
      putchar('\n');
    }
    if (cli_rows_start(&r, cur) != 0) goto oom;
    export_rows(run, tags[i], cur, &r, &head, jsonl, &line, &cell);
    if (line.oom || cell.oom) goto oom;
    if (cli_stdout_ok(cmd) != 0) goto done;
  }
  if (nt == 0 && !jsonl) { /* an empty run: just the fixed columns */
    fputs("run,tag,step", stdout);
    for (size_t j = 0; j < nm; j++) printf(",%s", metrics[j]);
    putchar('\n');
  }
  if (cli_stdout_ok(cmd) != 0) goto done;
  status = cli_stopped() ? CLI_FAIL : CLI_OK;
  goto done;
oom:
  cli_fail(cmd, "out of memory");
done:
  free(r.cur);
  cli_series_free(&head);
  cli_series_free(&s);
  cJSON_Delete(streams_doc);
  free(tags);
  free(metrics);
  free(mcopy);
  gw_buf_free(&line);
  gw_buf_free(&cell);
  cli_http_free(&h);
  return status;
}
