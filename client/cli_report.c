/* cli_report.c — `gradwatch report RUN...`: the regime summary of runs (GET
 * /api/v1/summary?runs=A,B; one row per run and tag) as an aligned text
 * table, CSV, JSON or a Markdown table.
 *
 * Data flow: run names (checked against the wire grammar) → one request
 * through cli_httpc.c → the parsed document's "rows" → formatted here. Text
 * and Markdown show the headline columns (COLS below) at 6 significant
 * digits, "-" for absent; CSV has every field of a row, in the server's
 * order, numbers exact (they read back bit for bit), absent values empty;
 * JSON is the server's document (numbers re-printed exactly, not by cJSON's
 * printer, which may round the last bit).
 */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_httpc.h"
#include "cli_series.h"

#define CMD "report"

static const char report_help[] =
    "Usage: gradwatch report RUN... [OPTIONS]\n"
    "\n"
    "Print the regime summary of each RUN, one row per stream (tag): steps, the\n"
    "p5/median/p95 of kappa_onestep and kappa_ema, the final cumulative kappas,\n"
    "the median rank_90, rank_99 and stable rank, and the alerts fired\n"
    "(GET /api/v1/summary). At most 64 runs.\n"
    "\n"
    "  --format F            text (default), csv (every field, exact numbers),\n"
    "                        json (the server's document) or md (a Markdown table)\n";

enum { R_FORMAT = 1, R_HELP };
enum { F_TEXT, F_CSV, F_JSON, F_MD };

static const struct option report_opts[] = {
    {"format", required_argument, NULL, R_FORMAT},
    {"help", no_argument, NULL, R_HELP},
    CLI_HTTP_LONG_OPTIONS,
    {NULL, 0, NULL, 0},
};

/* The columns of the text and Markdown tables: header, field. */
static const struct {
  const char *head, *key;
} COLS[] = {
    {"run", "run"},
    {"tag", "tag"},
    {"steps", "steps"},
    {"k1_p5", "kappa_onestep_p5"},
    {"k1_med", "kappa_onestep_median"},
    {"k1_p95", "kappa_onestep_p95"},
    {"kema_p5", "kappa_ema_p5"},
    {"kema_med", "kappa_ema_median"},
    {"kema_p95", "kappa_ema_p95"},
    {"k1_cum", "kappa_onestep_cum"},
    {"kema_cum", "kappa_ema_cum"},
    {"klin_cum", "kappa_linear_cum"},
    {"rank90_med", "rank_90_median"},
    {"rank99_med", "rank_99_median"},
    {"srank_med", "stable_rank_median"},
    {"alerts", "alerts_fired"},
};
#define NCOLS (sizeof COLS / sizeof COLS[0])

static const cJSON *field(const cJSON *row, const char *key) {
  return cJSON_GetObjectItemCaseSensitive(row, key);
}

/* Text: two passes (widths, then rows); md: one pass with '|' separators. */
static int print_table(const cJSON *rows, int md) {
  size_t w[NCOLS];
  gw_buf_t cell;
  const cJSON *row;
  gw_buf_init(&cell);
  for (size_t i = 0; i < NCOLS; i++) w[i] = strlen(COLS[i].head);
  cJSON_ArrayForEach(row, rows) {
    for (size_t i = 0; i < NCOLS; i++) {
      cli_fmt_value(field(row, COLS[i].key), CLI_FMT_TABLE, &cell);
      if (cell.len > w[i]) w[i] = cell.len;
    }
  }
  for (size_t i = 0; i < NCOLS; i++)
    printf(md ? "| %-*s " : i ? "  %*s" : "%-*s", (int)w[i], COLS[i].head);
  fputs(md ? "|\n" : "\n", stdout);
  if (md) {
    for (size_t i = 0; i < NCOLS; i++) {
      fputs(i < 2 ? "|:" : "|", stdout);
      for (size_t k = 0; k < w[i] + 1; k++) putchar('-');
      fputs(i < 2 ? "" : ":", stdout);
    }
    fputs("|\n", stdout);
  }
  cJSON_ArrayForEach(row, rows) {
    for (size_t i = 0; i < NCOLS && !cell.oom; i++) {
      cli_fmt_value(field(row, COLS[i].key), CLI_FMT_TABLE, &cell);
      const char *t = cell.p ? cell.p : "";
      if (md) printf(i < 2 ? "| %-*s " : "| %*s ", (int)w[i], t);
      else printf(i == 0 ? "%-*s" : i == 1 ? "  %-*s" : "  %*s", (int)w[i], t);
    }
    fputs(md ? "|\n" : "\n", stdout);
  }
  int rc = cell.oom ? GW_ENOMEM : 0;
  gw_buf_free(&cell);
  return rc;
}

static int print_csv(const cJSON *rows) {
  const cJSON *first = cJSON_GetArrayItem(rows, 0), *f, *row;
  gw_buf_t cell;
  gw_buf_init(&cell);
  if (first == NULL) return 0; /* no streams at all: nothing, not even a header */
  cJSON_ArrayForEach(f, first) printf("%s%s", f == first->child ? "" : ",", f->string);
  putchar('\n');
  cJSON_ArrayForEach(row, rows) {
    cJSON_ArrayForEach(f, first) {
      cli_fmt_value(field(row, f->string), CLI_FMT_CSV, &cell);
      printf("%s%s", f == first->child ? "" : ",", cell.p ? cell.p : "");
    }
    putchar('\n');
  }
  int rc = cell.oom ? GW_ENOMEM : 0;
  gw_buf_free(&cell);
  return rc;
}

/* JSON as the server sent it: cJSON's own printer may round a double's
 * last bit, so numbers go through cli_fmt_value (exact) instead. */
static void put_json(const cJSON *v, gw_buf_t *out, gw_buf_t *cell) {
  if (cJSON_IsObject(v) || cJSON_IsArray(v)) {
    const cJSON *c;
    gw_buf_puts(out, cJSON_IsObject(v) ? "{" : "[");
    cJSON_ArrayForEach(c, v) {
      if (c != v->child) gw_buf_puts(out, ",");
      if (cJSON_IsObject(v)) {
        cli_json_str(c->string, out);
        gw_buf_puts(out, ":");
      }
      put_json(c, out, cell);
    }
    gw_buf_puts(out, cJSON_IsObject(v) ? "}" : "]");
    return;
  }
  cli_fmt_value(v, CLI_FMT_JSON, cell);
  if (cell->oom) out->oom = 1;
  else gw_buf_puts(out, cell->p ? cell->p : "null");
}

int cli_report(int argc, char **argv) {
  cli_http_t h;
  cJSON *doc = NULL;
  gw_buf_t path;
  int c, rc = 0, fmt = F_TEXT, status = CLI_FAIL;

  cli_http_init(&h);
  gw_buf_init(&path);
  opterr = 0;
  while (rc == 0 && (c = getopt_long(argc, argv, ":h", report_opts, NULL)) != -1) {
    switch (c) {
    case 'h':
    case R_HELP:
      printf("%s%s", report_help, cli_http_help);
      cli_http_free(&h);
      return CLI_OK;
    case R_FORMAT:
      if (strcmp(optarg, "text") == 0) fmt = F_TEXT;
      else if (strcmp(optarg, "csv") == 0) fmt = F_CSV;
      else if (strcmp(optarg, "json") == 0) fmt = F_JSON;
      else if (strcmp(optarg, "md") == 0) fmt = F_MD;
      else rc = cli_usage(CMD, "--format is text, csv, json or md, not '%s'", optarg);
      break;
    case '?':
    case ':': rc = cli_bad_option(CMD, c, argv); break;
    default: rc = cli_http_option(&h, CMD, c, optarg);
    }
  }
  if (rc == 0 && optind >= argc) rc = cli_usage(CMD, "need at least one RUN");
  if (rc == 0 && argc - optind > 64) rc = cli_usage(CMD, "at most 64 runs, not %d", argc - optind);
  for (int i = optind; rc == 0 && i < argc; i++) rc = cli_http_check_names(CMD, argv[i], NULL);
  if (rc != 0) {
    cli_http_free(&h);
    return rc;
  }
  cli_catch_signals();
  if ((rc = cli_http_open(&h, CMD)) != 0) {
    status = rc; /* CLI_USAGE for a bad GRADWATCH_SERVER */
    goto done;
  }
  gw_buf_puts(&path, "/api/v1/summary?runs=");
  for (int i = optind; i < argc; i++) gw_buf_printf(&path, "%s%s", i > optind ? "," : "", argv[i]);
  if (path.oom) goto oom; /* names are [A-Za-z0-9._:-]: nothing to escape */
  if (cli_http_get_json(&h, CMD, path.p, &doc) != 0) goto done;
  const cJSON *rows = cJSON_GetObjectItemCaseSensitive(doc, "rows");
  if (!cJSON_IsArray(rows)) {
    cli_fail(CMD, "the answer has no \"rows\" array");
    goto done;
  }
  if (fmt == F_JSON) {
    gw_buf_t out, cell;
    int oom;
    gw_buf_init(&out);
    gw_buf_init(&cell);
    put_json(doc, &out, &cell);
    oom = out.oom || cell.oom;
    if (!oom) puts(out.p);
    gw_buf_free(&out);
    gw_buf_free(&cell);
    if (oom) goto oom;
  } else if ((fmt == F_CSV ? print_csv(rows) : print_table(rows, fmt == F_MD)) != 0) {
    goto oom;
  }
  if (cli_stdout_ok(CMD) != 0) goto done;
  status = CLI_OK;
  goto done;
oom:
  cli_fail(CMD, "out of memory");
done:
  cJSON_Delete(doc);
  gw_buf_free(&path);
  cli_http_free(&h);
  return status;
}
