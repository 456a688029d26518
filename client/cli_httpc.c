/* cli_httpc.c — the CLI's HTTP client (see cli_httpc.h): options, the curl
 * handle and its headers, GET of a JSON document, error messages.
 *
 * Unset options fall back to the environment (GRADWATCH_SERVER,
 * GRADWATCH_TOKEN) in cli_http_open, so an option always wins.
 * The token lives in h->token and in the Authorization header list only;
 * both are wiped or freed by cli_http_free. Responses are gathered in a
 * gw_buf_t capped at CLI_HTTP_BODY_MAX (a larger answer is an error, not a
 * crash); non-200 answers keep at most CLI_HTTP_ERR_BODY_MAX bytes for the
 * message.
 */
#include "cli_httpc.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char cli_http_help[] =
    "Server:\n"
    "  --server URL          gradwatchd's HTTP address (default $GRADWATCH_SERVER,\n"
    "                        else http://127.0.0.1:8080)\n"
    "  --token TOKEN         bearer token (the daemon's --http-token-file; default\n"
    "                        $GRADWATCH_TOKEN)\n"
    "  --token-file FILE     read the token from the first line of FILE\n"
    "  --timeout SECONDS     give up on a request after this long (default 30;\n"
    "                        tail: connecting only)\n";

void cli_http_init(cli_http_t *h) {
  memset(h, 0, sizeof *h);
  h->timeout = 30;
}

void cli_http_free(cli_http_t *h) {
  if (h->curl) curl_easy_cleanup(h->curl);
  curl_slist_free_all(h->headers);
  free(h->server);
  if (h->token) memset(h->token, 0, strlen(h->token));
  free(h->token);
  if (h->global) curl_global_cleanup();
  memset(h, 0, sizeof *h);
}

/* A copy of s[0..n) without surrounding blanks (and trailing CR/LF). */
static char *trimmed_dup(const char *s, size_t n) {
  while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' ' || s[n - 1] == '\t')) n--;
  while (n > 0 && (*s == ' ' || *s == '\t')) {
    s++;
    n--;
  }
  char *d = malloc(n + 1);
  if (d) {
    memcpy(d, s, n);
    d[n] = '\0';
  }
  return d;
}

/* The server URL from `what` (--server or GRADWATCH_SERVER). */
static int set_server(cli_http_t *h, const char *cmd, const char *what, const char *arg) {
  size_t n = strlen(arg);
  if (strncmp(arg, "http://", 7) != 0 && strncmp(arg, "https://", 8) != 0)
    return cli_usage(cmd, "%s wants a URL like http://127.0.0.1:8080, not '%s'", what, arg);
  while (n > 0 && arg[n - 1] == '/') n--;
  free(h->server);
  if ((h->server = trimmed_dup(arg, n)) == NULL) return cli_fail(cmd, "out of memory");
  return 0;
}

int cli_http_option(cli_http_t *h, const char *cmd, int c, const char *arg) {
  switch (c) {
  case CLI_H_SERVER:
    return set_server(h, cmd, "--server", arg);
  case CLI_H_TOKEN:
    free(h->token);
    if ((h->token = trimmed_dup(arg, strlen(arg))) == NULL) return cli_fail(cmd, "out of memory");
    if (h->token[0] == '\0') return cli_usage(cmd, "--token is empty");
    return 0;
  case CLI_H_TOKEN_FILE: {
    char line[4096];
    FILE *f = fopen(arg, "r");
    if (f == NULL) return cli_fail(cmd, "--token-file %s: %s", arg, strerror(errno));
    if (fgets(line, sizeof line, f) == NULL) line[0] = '\0';
    fclose(f);
    free(h->token);
    h->token = trimmed_dup(line, strlen(line));
    memset(line, 0, sizeof line);
    if (h->token == NULL) return cli_fail(cmd, "out of memory");
    if (h->token[0] == '\0') return cli_fail(cmd, "--token-file %s: the first line is empty", arg);
    return 0;
  }
  case CLI_H_TIMEOUT:
    return cli_opt_double(cmd, "--timeout", arg, 0.001, 86400, &h->timeout);
  }
  return cli_usage(cmd, "internal: unhandled option %d", c);
}

int cli_http_open(cli_http_t *h, const char *cmd) {
  const char *env;
  int rc;
  /* Options win; then the environment; then the built-in default. */
  if (h->server == NULL && (env = getenv(CLI_ENV_SERVER)) != NULL && env[0] != '\0' &&
      (rc = set_server(h, cmd, CLI_ENV_SERVER, env)) != 0)
    return rc;
  if (h->token == NULL && (env = getenv(CLI_ENV_TOKEN)) != NULL) {
    if ((h->token = trimmed_dup(env, strlen(env))) == NULL) return cli_fail(cmd, "out of memory");
    if (h->token[0] == '\0') {
      free(h->token);
      h->token = NULL;
    }
  }
  if (!h->global) {
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
      return cli_fail(cmd, "cannot initialize libcurl");
    h->global = 1;
  }
  if (h->server == NULL && (h->server = trimmed_dup("http://127.0.0.1:8080", 21)) == NULL)
    return cli_fail(cmd, "out of memory");
  if ((h->curl = curl_easy_init()) == NULL) return cli_fail(cmd, "cannot initialize libcurl");
  h->headers = curl_slist_append(NULL, "Accept: application/json, text/event-stream");
  if (h->headers == NULL) return cli_fail(cmd, "out of memory");
  if (h->token) {
    gw_buf_t a;
    int oom;
    gw_buf_init(&a);
    gw_buf_printf(&a, "Authorization: Bearer %s", h->token);
    oom = a.oom;
    if (!oom) {
      struct curl_slist *l = curl_slist_append(h->headers, a.p);
      if (l) h->headers = l;
      else oom = 1;
    }
    if (a.p) memset(a.p, 0, a.len);
    gw_buf_free(&a);
    if (oom) return cli_fail(cmd, "out of memory");
  }
  return 0;
}

void cli_http_param(cli_http_t *h, gw_buf_t *url, const char *name, const char *value) {
  char *e = curl_easy_escape(h->curl, value, 0);
  if (e == NULL) {
    url->oom = 1;
    return;
  }
  gw_buf_printf(url, "%c%s=%s", url->p && strchr(url->p, '?') ? '&' : '?', name, e);
  curl_free(e);
}

void cli_http_body_append(gw_buf_t *b, const void *s, size_t n, size_t cap) {
  if (b->oom) return;
  if (n > cap || b->len + 1 > cap - n) {
    b->oom = 1;
    return;
  }
  gw_buf_append(b, s, n);
}

static size_t on_body(char *p, size_t size, size_t n, void *ud) {
  gw_buf_t *b = ud;
  cli_http_body_append(b, p, size * n, CLI_HTTP_BODY_MAX);
  return b->oom ? 0 : size * n;
}

static int on_progress(void *ud, curl_off_t a, curl_off_t b, curl_off_t c, curl_off_t d) {
  (void)ud, (void)a, (void)b, (void)c, (void)d;
  return cli_stopped(); /* nonzero aborts the transfer */
}

void cli_http_prepare(cli_http_t *h, const char *url) {
  curl_easy_reset(h->curl);
  curl_easy_setopt(h->curl, CURLOPT_URL, url);
  curl_easy_setopt(h->curl, CURLOPT_HTTPHEADER, h->headers);
  curl_easy_setopt(h->curl, CURLOPT_USERAGENT, "gradwatch/" GW_VERSION);
  curl_easy_setopt(h->curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h->curl, CURLOPT_ERRORBUFFER, h->errbuf);
  curl_easy_setopt(h->curl, CURLOPT_CONNECTTIMEOUT_MS, (long)(h->timeout * 1000));
  curl_easy_setopt(h->curl, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(h->curl, CURLOPT_XFERINFOFUNCTION, on_progress);
  curl_easy_setopt(h->curl, CURLOPT_PROTOCOLS_STR, "http,https");
  h->errbuf[0] = '\0';
}

int cli_http_server_error(const char *cmd, long status, const gw_buf_t *body) {
  cJSON *j = body->p ? cJSON_ParseWithLength(body->p, body->len) : NULL;
  const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
  if (cJSON_IsString(e))
    cli_fail(cmd, "server answered %ld: %s", status, e->valuestring);
  else
    cli_fail(cmd, "server answered %ld%s%.200s", status, body->len ? ": " : "",
             body->p ? body->p : "");
  cJSON_Delete(j);
  return CLI_FAIL;
}

int cli_http_get_json(cli_http_t *h, const char *cmd, const char *path, cJSON **out) {
  gw_buf_t url, body;
  long status = 0;
  CURLcode cc;
  int rc = CLI_FAIL;

  *out = NULL;
  gw_buf_init(&url);
  gw_buf_init(&body);
  gw_buf_printf(&url, "%s%s", h->server, path);
  if (url.oom) {
    cli_fail(cmd, "out of memory");
    goto done;
  }
  cli_http_prepare(h, url.p);
  curl_easy_setopt(h->curl, CURLOPT_TIMEOUT_MS, (long)(h->timeout * 1000));
  curl_easy_setopt(h->curl, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(h->curl, CURLOPT_WRITEDATA, &body);
  curl_easy_setopt(h->curl, CURLOPT_ACCEPT_ENCODING, "");
  cc = curl_easy_perform(h->curl);
  if (cc == CURLE_ABORTED_BY_CALLBACK) goto done; /* interrupted: say nothing more */
  if (cc != CURLE_OK) {
    if (body.oom)
      cli_fail(cmd, "%s: response too large or out of memory", url.p);
    else
      cli_fail(cmd, "cannot get %s: %s", url.p, h->errbuf[0] ? h->errbuf : curl_easy_strerror(cc));
    goto done;
  }
  curl_easy_getinfo(h->curl, CURLINFO_RESPONSE_CODE, &status);
  if (status != 200) {
    rc = cli_http_server_error(cmd, status, &body);
    goto done;
  }
  if ((*out = cJSON_ParseWithLength(body.p ? body.p : "", body.len)) == NULL) {
    cli_fail(cmd, "%s: the answer is not JSON: %.100s", url.p, body.p ? body.p : "(empty)");
    goto done;
  }
  rc = 0;
done:
  gw_buf_free(&url);
  gw_buf_free(&body);
  return rc;
}

int cli_http_check_names(const char *cmd, const char *run, const char *tag) {
  if (run && gw_proto_check_run(run, strlen(run)) != 0)
    return cli_usage(cmd, "bad run name '%s': 1..128 of [A-Za-z0-9._:-]", run);
  if (tag && gw_proto_check_tag(tag, strlen(tag)) != 0)
    return cli_usage(cmd, "bad tag '%s': 1..128 of [A-Za-z0-9._:/-]", tag);
  return 0;
}
