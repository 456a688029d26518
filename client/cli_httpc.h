/* cli_httpc.h — the CLI's HTTP client for gradwatchd's API (libcurl):
 * the shared --server/--token/--token-file/--timeout options, one curl
 * handle with its headers (Accept, Authorization: Bearer), GET of a JSON
 * document, and the messages for transport and server errors.
 *
 * Lifecycle: cli_http_init → cli_http_option (per option) → cli_http_open
 * (libcurl's global state and the handle) → requests → cli_http_free
 * (always, also after a failure; it wipes the token from memory).
 *
 * Like the rest of the CLI (cli.h), functions that can fail print
 * "gradwatch CMD: message" on stderr themselves and return a process exit
 * status: 0 (CLI_OK), CLI_FAIL or CLI_USAGE.
 */
#ifndef GW_CLI_HTTPC_H
#define GW_CLI_HTTPC_H

#include <stddef.h>

#include <cjson/cJSON.h>
#include <curl/curl.h>

#include "cli.h"
#include "util.h"

#define CLI_ENV_SERVER "GRADWATCH_SERVER" /* --server when not given */
#define CLI_ENV_TOKEN "GRADWATCH_TOKEN"   /* --token when neither --token nor --token-file */
#define CLI_HTTP_BODY_MAX ((size_t)1 << 31) /* largest response kept in memory */
#define CLI_HTTP_ERR_BODY_MAX 65536         /* bytes kept of a non-200 answer */

/* getopt codes and long options of the server options: a subcommand puts
 * CLI_HTTP_LONG_OPTIONS into its option table and passes these codes to
 * cli_http_option; cli_http_help is their help text. */
enum { CLI_H_SERVER = 900, CLI_H_TOKEN, CLI_H_TOKEN_FILE, CLI_H_TIMEOUT };
#define CLI_HTTP_LONG_OPTIONS                                    \
  {"server", required_argument, NULL, CLI_H_SERVER},             \
      {"token", required_argument, NULL, CLI_H_TOKEN},           \
      {"token-file", required_argument, NULL, CLI_H_TOKEN_FILE}, \
      {"timeout", required_argument, NULL, CLI_H_TIMEOUT}
extern const char cli_http_help[];

typedef struct cli_http_s {
  char *server;   /* base URL without a trailing '/' (owned) */
  char *token;    /* bearer token (owned, wiped on free), NULL = none */
  double timeout; /* seconds: connect, and a whole cli_http_get_json */
  CURL *curl;     /* NULL until cli_http_open */
  struct curl_slist *headers;
  int global;     /* curl_global_init was called (cli_http_free undoes it) */
  char errbuf[CURL_ERROR_SIZE];
} cli_http_t;

void cli_http_init(cli_http_t *h);
void cli_http_free(cli_http_t *h);
/* Handle getopt code c (a CLI_H_* value) with its argument. */
int cli_http_option(cli_http_t *h, const char *cmd, int c, const char *arg);
/* After option parsing: GRADWATCH_SERVER / GRADWATCH_TOKEN for what no
 * option set, libcurl, the handle and the request headers. */
int cli_http_open(cli_http_t *h, const char *cmd);

/* Append "?name=value" (the first) or "&name=value" to url, the value
 * URL-escaped. Sets url->oom on failure (check once at the end). */
void cli_http_param(cli_http_t *h, gw_buf_t *url, const char *name, const char *value);
/* Reset the handle for a GET of url: headers, user agent, connect timeout,
 * Ctrl-C aborting the transfer (cli_stopped), http/https only. The caller
 * sets the write callback and anything else. */
void cli_http_prepare(cli_http_t *h, const char *url);
/* Append n bytes of a response to b unless b would exceed cap bytes; past
 * the cap, or out of memory, b->oom is set and later appends do nothing. */
void cli_http_body_append(gw_buf_t *b, const void *s, size_t n, size_t cap);

/* GET h->server + path (path starts with '/'); on 200 the parsed JSON
 * document is in *out (the caller's, cJSON_Delete), else *out is NULL and
 * the message is printed. */
int cli_http_get_json(cli_http_t *h, const char *cmd, const char *path, cJSON **out);
/* The message of a non-200 answer: its {"error": "..."} or its first bytes.
 * Returns CLI_FAIL. */
int cli_http_server_error(const char *cmd, long status, const gw_buf_t *body);

/* run and tag (either may be NULL) against the wire grammar, so a typo is a
 * usage error instead of an empty answer. */
int cli_http_check_names(const char *cmd, const char *run, const char *tag);

#endif
