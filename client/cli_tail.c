/* cli_tail.c — `gradwatch tail`: follow GET /api/v1/events (Server-Sent
 * Events) and print one line per point and per alert change, until Ctrl-C
 * or --count points.
 *
 * Data flow: libcurl hands each received piece to on_sse; a 200 answer's
 * bytes go to the event-stream parser (cli_sse.c), whose events come back
 * to on_event, which filters, formats and prints them; a non-200 answer's
 * body is kept for the error message. tail reconnects (1, 2, 4 … 10 s
 * apart) when an established stream ends or breaks; a first connection
 * that fails, or any non-200 answer, is an error.
 */
#include "cli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_httpc.h"
#include "cli_sse.h"

#define LINE_MAX_BYTES ((size_t)16 << 20) /* one SSE line */
#define DATA_MAX_BYTES ((size_t)16 << 20) /* one event's data */

static const char tail_help[] =
    "Usage: gradwatch tail [OPTIONS]\n"
    "\n"
    "Follow the daemon's live feed (GET /api/v1/events, Server-Sent Events) and print\n"
    "one line per point — step, run/tag, kappa one-step and EMA, rank_90 — and per\n"
    "alert change, until Ctrl-C. Reconnects if an established feed breaks.\n"
    "\n"
    "  --run RUN             only this run\n"
    "  --tag TAG             only this tag\n"
    "  --count N             exit after N points\n"
    "  --json                print each event as a JSON line {\"event\":..,\"data\":..}\n";

enum { T_RUN = 1, T_TAG, T_COUNT, T_JSON, T_HELP };

static const struct option tail_opts[] = {
    {"run", required_argument, NULL, T_RUN},
    {"tag", required_argument, NULL, T_TAG},
    {"count", required_argument, NULL, T_COUNT},
    {"json", no_argument, NULL, T_JSON},
    {"help", no_argument, NULL, T_HELP},
    CLI_HTTP_LONG_OPTIONS,
    {NULL, 0, NULL, 0},
};

/* One tail session: options, the parser, and the state of the current
 * connection (reset before each). */
typedef struct tail_s {
  const char *run, *tag; /* filters, NULL = any */
  int json;
  uint64_t count, seen; /* stop after count points (0 = never) */
  int done;             /* count reached, or stdout failed */
  int out_err;          /* errno of a failed write to stdout, 0 if none */
  long status;          /* HTTP status once known, 0 before */
  int got_data;         /* some bytes of a 200 answer arrived */
  int parse_err;        /* the parser's error (-EMSGSIZE, GW_ENOMEM), 0 if none */
  gw_buf_t errbody;     /* the body of a non-200 answer */
  cli_sse_t sse;
  CURL *curl;
} tail_t;

static void print_kv(const cJSON *o, const char *key, int *any) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  if (v == NULL) return;
  if (cJSON_IsString(v)) printf("  %s=%s", key, v->valuestring);
  else if (cJSON_IsNumber(v)) printf("  %s=%.6g", key, v->valuedouble);
  else if (cJSON_IsBool(v)) printf("  %s=%s", key, cJSON_IsTrue(v) ? "true" : "false");
  else return;
  *any = 1;
}

static void num_cell(const cJSON *o, const char *key, char *buf, size_t cap) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  if (cJSON_IsNumber(v)) snprintf(buf, cap, "%.6g", v->valuedouble);
  else snprintf(buf, cap, "-");
}

static void print_point(const cJSON *d, const cJSON *run, const cJSON *tag) {
  char step[32], k1[32], ke[32], r90[32], rt[2 * GW_PROTO_NAME_MAX + 2];
  const cJSON *st = cJSON_GetObjectItemCaseSensitive(d, "step");
  num_cell(d, "step", step, sizeof step);
  if (cJSON_IsNumber(st) && st->valuedouble >= 0 && st->valuedouble < 0x1p63)
    snprintf(step, sizeof step, "%.0f", st->valuedouble);
  num_cell(d, "kappa_onestep", k1, sizeof k1);
  num_cell(d, "kappa_ema", ke, sizeof ke);
  num_cell(d, "rank_90", r90, sizeof r90);
  snprintf(rt, sizeof rt, "%.128s/%.128s", cJSON_IsString(run) ? run->valuestring : "?",
           cJSON_IsString(tag) ? tag->valuestring : "?");
  printf("%12s  %-31s %12s %12s %8s\n", step, rt, k1, ke, r90);
}

static void print_alert(const cJSON *d, const char *data) {
  static const char *const keys[] = {"state", "name", "rule", "severity", "run", "tag",
                                     "metric", "value", "threshold", "step", "message"};
  int any = 0;
  fputs("ALERT", stdout);
  for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) print_kv(d, keys[i], &any);
  if (!any) printf("  %s", data);
  putchar('\n');
}

/* An event from the parser: "point" and "alert" are printed (after the
 * filters), "resync" is reported, others are ignored. Returns 1 to stop
 * parsing once done (count reached or stdout failed). */
static int on_event(void *ud, const cli_sse_event_t *ev) {
  tail_t *t = ud;
  const char *name = ev->type;
  int point = strcmp(name, "point") == 0;
  cJSON *d = NULL;

  if (strcmp(name, "resync") == 0) {
    fprintf(stderr, "gradwatch tail: the feed fell behind; some events were skipped (resync)\n");
    return 0;
  }
  if (!point && strcmp(name, "alert") != 0) return 0;
  d = cJSON_ParseWithLength(ev->data, ev->data_len);
  if (!cJSON_IsObject(d)) {
    fprintf(stderr, "gradwatch tail: ignoring a %s event whose data is not a JSON object\n", name);
    goto out;
  }
  const cJSON *run = cJSON_GetObjectItemCaseSensitive(d, "run");
  const cJSON *tag = cJSON_GetObjectItemCaseSensitive(d, "tag");
  /* The daemon filters too (?run=&tag=); this keeps the client right with
   * any server. Alerts without a run always pass. */
  if (t->run && cJSON_IsString(run) && strcmp(run->valuestring, t->run) != 0) goto out;
  if (t->tag && point && (!cJSON_IsString(tag) || strcmp(tag->valuestring, t->tag) != 0)) goto out;
  if (t->json) printf("{\"event\":\"%s\",\"data\":%s}\n", name, ev->data);
  else if (point) print_point(d, run, tag);
  else print_alert(d, ev->data);
  if (fflush(stdout) != 0 || ferror(stdout)) {
    t->out_err = errno ? errno : EIO;
    t->done = 1;
  }
  if (point && t->count && ++t->seen >= t->count) t->done = 1;
out:
  cJSON_Delete(d);
  return t->done;
}

static size_t on_sse(char *p, size_t size, size_t nmemb, void *ud) {
  tail_t *t = ud;
  size_t n = size * nmemb;
  int rc;
  if (t->status == 0) curl_easy_getinfo(t->curl, CURLINFO_RESPONSE_CODE, &t->status);
  if (t->status != 200) {
    cli_http_body_append(&t->errbody, p, n, CLI_HTTP_ERR_BODY_MAX);
    return n;
  }
  t->got_data = 1;
  rc = cli_sse_feed(&t->sse, p, n, on_event, t);
  if (rc < 0) t->parse_err = rc;
  return rc != 0 || t->done ? 0 : n; /* 0 aborts the transfer */
}

int cli_tail(int argc, char **argv) {
  const char *cmd = "tail";
  cli_http_t h;
  tail_t t;
  gw_buf_t url;
  int c, rc = 0, status = CLI_FAIL, connected = 0;
  double backoff = 1;

  cli_http_init(&h);
  memset(&t, 0, sizeof t);
  gw_buf_init(&url);
  gw_buf_init(&t.errbody);
  cli_sse_init(&t.sse, LINE_MAX_BYTES, DATA_MAX_BYTES);
  opterr = 0;
  while (rc == 0 && (c = getopt_long(argc, argv, ":h", tail_opts, NULL)) != -1) {
    switch (c) {
    case 'h':
    case T_HELP:
      printf("%s%s", tail_help, cli_http_help);
      status = CLI_OK;
      goto done;
    case T_RUN: t.run = optarg; break;
    case T_TAG: t.tag = optarg; break;
    case T_COUNT: rc = cli_opt_u64(cmd, "--count", optarg, 1, UINT64_MAX, &t.count); break;
    case T_JSON: t.json = 1; break;
    case '?':
    case ':': rc = cli_bad_option(cmd, c, argv); break;
    default: rc = cli_http_option(&h, cmd, c, optarg);
    }
  }
  if (rc == 0 && optind < argc) rc = cli_usage(cmd, "unexpected argument '%s'", argv[optind]);
  if (rc == 0) rc = cli_http_check_names(cmd, t.run, t.tag);
  if (rc != 0) {
    status = rc;
    goto done;
  }
  cli_catch_signals();
  if (cli_http_open(&h, cmd) != 0) goto done;
  gw_buf_printf(&url, "%s/api/v1/events", h.server);
  if (t.run) cli_http_param(&h, &url, "run", t.run);
  if (t.tag) cli_http_param(&h, &url, "tag", t.tag);
  if (url.oom) {
    cli_fail(cmd, "out of memory");
    goto done;
  }
  if (!t.json) {
    printf("%12s  %-31s %12s %12s %8s\n", "step", "run/tag", "kappa_1step", "kappa_ema", "rank_90");
    fflush(stdout);
  }
  t.curl = h.curl;
  for (;;) {
    CURLcode cc;
    t.status = 0;
    t.got_data = 0;
    t.parse_err = 0;
    cli_sse_reset(&t.sse);
    cli_http_prepare(&h, url.p);
    curl_easy_setopt(h.curl, CURLOPT_WRITEFUNCTION, on_sse);
    curl_easy_setopt(h.curl, CURLOPT_WRITEDATA, &t);
    curl_easy_setopt(h.curl, CURLOPT_TCP_KEEPALIVE, 1L);
    cc = curl_easy_perform(h.curl);
    if (t.out_err) {
      if (t.out_err != EPIPE) cli_fail(cmd, "writing the output: %s", strerror(t.out_err));
      goto done;
    }
    if (t.done || cli_stopped()) break;
    if (t.status == 0) curl_easy_getinfo(h.curl, CURLINFO_RESPONSE_CODE, &t.status);
    if (t.status != 0 && t.status != 200) {
      cli_http_server_error(cmd, t.status, &t.errbody);
      goto done;
    }
    if (t.parse_err == -EMSGSIZE) {
      cli_fail(cmd, "an event line or event is too long (over 16 MiB)");
      goto done;
    }
    if (t.parse_err != 0) {
      cli_fail(cmd, "reading the feed: %s", gw_strerror(t.parse_err));
      goto done;
    }
    if (!connected && t.status != 200) {
      cli_fail(cmd, "cannot get %s: %s", url.p, h.errbuf[0] ? h.errbuf : curl_easy_strerror(cc));
      goto done;
    }
    connected = 1;
    if (t.got_data) backoff = 1;
    fprintf(stderr, "gradwatch tail: feed %s (%s); reconnecting in %g s\n",
            cc == CURLE_OK ? "ended" : "broke",
            cc == CURLE_OK ? "server closed it" : h.errbuf[0] ? h.errbuf : curl_easy_strerror(cc),
            backoff);
    cli_sleep(backoff);
    if (cli_stopped()) break;
    backoff = backoff * 2 > 10 ? 10 : backoff * 2;
  }
  status = CLI_OK;
done:
  gw_buf_free(&url);
  gw_buf_free(&t.errbody);
  cli_sse_free(&t.sse);
  cli_http_free(&h);
  return status;
}
