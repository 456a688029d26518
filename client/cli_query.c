/* cli_query.c — `gradwatch query RUN TAG METRIC...`: one stream's stored
 * points (GET /api/v1/series) as an aligned table, CSV, or the server's
 * columnar JSON unchanged. Fetching and formatting live in cli_series.c.
 */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_httpc.h"
#include "cli_series.h"

static const char query_help[] =
    "Usage: gradwatch query RUN TAG METRIC... [OPTIONS]\n"
    "\n"
    "Print the stored points of stream RUN/TAG (GET /api/v1/series): a column for\n"
    "the step and one per METRIC (kappa_onestep, kappa_ema, rank_90, ... or 'all').\n"
    "\n"
    "  --csv                 comma-separated values with a header line\n"
    "  --json                the server's columnar JSON object, unchanged\n"
    "  --from STEP, --to STEP  only steps in this range (inclusive)\n"
    "  --max-points N        downsample to at most N points (min/max preserving)\n";

enum { Q_CSV = 1, Q_JSON, Q_FROM, Q_TO, Q_MAX, Q_HELP };

static const struct option query_opts[] = {
    {"csv", no_argument, NULL, Q_CSV},
    {"json", no_argument, NULL, Q_JSON},
    {"from", required_argument, NULL, Q_FROM},
    {"to", required_argument, NULL, Q_TO},
    {"max-points", required_argument, NULL, Q_MAX},
    {"help", no_argument, NULL, Q_HELP},
    CLI_HTTP_LONG_OPTIONS,
    {NULL, 0, NULL, 0},
};

/* Two passes: column widths, then the rows right-aligned. */
static int print_table(const cli_series_t *s, cli_rows_t *r) {
  size_t nc = s->ncols + 1, *w = calloc(nc, sizeof *w);
  gw_buf_t cell;
  int rc;
  if (w == NULL) return GW_ENOMEM;
  gw_buf_init(&cell);
  w[0] = strlen("step");
  for (size_t i = 0; i < s->ncols; i++) w[i + 1] = strlen(s->names[i]);
  for (size_t row = 0; row < s->n; row++, cli_rows_next(r, s->ncols)) {
    cli_fmt_step(r->step, CLI_FMT_TABLE, &cell);
    if (cell.len > w[0]) w[0] = cell.len;
    for (size_t i = 0; i < s->ncols; i++) {
      cli_fmt_value(r->cur[i], CLI_FMT_TABLE, &cell);
      if (cell.len > w[i + 1]) w[i + 1] = cell.len;
    }
  }
  cli_rows_rewind(r, s);
  printf("%*s", (int)w[0], "step");
  for (size_t i = 0; i < s->ncols; i++) printf("  %*s", (int)w[i + 1], s->names[i]);
  putchar('\n');
  for (size_t row = 0; row < s->n && !cell.oom; row++, cli_rows_next(r, s->ncols)) {
    cli_fmt_step(r->step, CLI_FMT_TABLE, &cell);
    printf("%*s", (int)w[0], cell.p ? cell.p : "");
    for (size_t i = 0; i < s->ncols; i++) {
      cli_fmt_value(r->cur[i], CLI_FMT_TABLE, &cell);
      printf("  %*s", (int)w[i + 1], cell.p ? cell.p : "");
    }
    putchar('\n');
  }
  rc = cell.oom ? GW_ENOMEM : 0;
  gw_buf_free(&cell);
  free(w);
  return rc;
}

static int print_csv(const cli_series_t *s, cli_rows_t *r) {
  gw_buf_t cell;
  int rc;
  gw_buf_init(&cell);
  fputs("step", stdout);
  for (size_t i = 0; i < s->ncols; i++) printf(",%s", s->names[i]);
  putchar('\n');
  for (size_t row = 0; row < s->n && !cell.oom; row++, cli_rows_next(r, s->ncols)) {
    cli_fmt_step(r->step, CLI_FMT_CSV, &cell);
    fputs(cell.p ? cell.p : "", stdout);
    for (size_t i = 0; i < s->ncols; i++) {
      cli_fmt_value(r->cur[i], CLI_FMT_CSV, &cell);
      printf(",%s", cell.p ? cell.p : "");
    }
    putchar('\n');
  }
  rc = cell.oom ? GW_ENOMEM : 0;
  gw_buf_free(&cell);
  return rc;
}

int cli_query(int argc, char **argv) {
  const char *cmd = "query", *from = NULL, *to = NULL, *maxp = NULL;
  cli_http_t h;
  cli_series_t s = {0};
  cli_rows_t r = {0};
  int c, rc = 0, fmt = CLI_FMT_TABLE, status = CLI_FAIL;
  uint64_t u;

  cli_http_init(&h);
  opterr = 0;
  while (rc == 0 && (c = getopt_long(argc, argv, ":h", query_opts, NULL)) != -1) {
    switch (c) {
    case 'h':
    case Q_HELP:
      printf("%s%s", query_help, cli_http_help);
      cli_http_free(&h);
      return CLI_OK;
    case Q_CSV: fmt = CLI_FMT_CSV; break;
    case Q_JSON: fmt = CLI_FMT_JSON; break;
    case Q_FROM: rc = cli_opt_u64(cmd, "--from", optarg, 0, INT64_MAX, &u); from = optarg; break;
    case Q_TO: rc = cli_opt_u64(cmd, "--to", optarg, 0, INT64_MAX, &u); to = optarg; break;
    case Q_MAX: rc = cli_opt_u64(cmd, "--max-points", optarg, 2, 1000000, &u); maxp = optarg; break;
    case '?':
    case ':': rc = cli_bad_option(cmd, c, argv); break;
    default: rc = cli_http_option(&h, cmd, c, optarg);
    }
  }
  if (rc == 0 && argc - optind < 3) rc = cli_usage(cmd, "need RUN TAG and at least one METRIC");
  if (rc != 0) {
    cli_http_free(&h);
    return rc;
  }
  const char *run = argv[optind], *tag = argv[optind + 1];
  char **metrics = argv + optind + 2;
  size_t nm = (size_t)(argc - optind - 2);
  int all = nm == 1 && strcmp(metrics[0], "all") == 0;
  rc = cli_http_check_names(cmd, run, tag);
  for (size_t i = 0; rc == 0 && i < nm && !all; i++)
    if (metrics[i][0] == '\0' || strchr(metrics[i], ','))
      rc = cli_usage(cmd, "bad metric name '%s' (give metrics as separate arguments)", metrics[i]);
  if (rc != 0) {
    cli_http_free(&h);
    return rc;
  }
  cli_catch_signals();
  if (cli_http_open(&h, cmd) != 0) goto done;
  if (cli_series_get(&h, cmd, run, tag, all ? NULL : (const char *const *)metrics, nm, from, to,
                     maxp, 1, &s) != 0)
    goto done;
  if (fmt == CLI_FMT_JSON) {
    char *j = cJSON_PrintUnformatted(s.doc);
    if (j == NULL) goto oom;
    puts(j);
    free(j);
  } else if (cli_rows_start(&r, &s) != 0) {
    goto oom;
  } else if ((fmt == CLI_FMT_TABLE ? print_table(&s, &r) : print_csv(&s, &r)) != 0) {
    goto oom;
  }
  if (cli_stdout_ok(cmd) != 0) goto done;
  status = CLI_OK;
  goto done;
oom:
  cli_fail(cmd, "out of memory");
done:
  free(r.cur);
  cli_series_free(&s);
  cli_http_free(&h);
  return status;
}
