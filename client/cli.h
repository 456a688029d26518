/* cli.h — internals shared by the modules of the `gradwatch` command-line
 * client (docs/cli.md is its user documentation). Not installed.
 *
 *   cli.c          main: dispatch to a subcommand, shared helpers below
 *   cli_publish.c  publish --synthetic: the generator and its send loop
 *   cli_replay.c   replay FILE: .npy / raw float32 rows as one stream
 *   cli_query.c    query RUN TAG METRIC...: one stream's points (table/CSV/JSON)
 *   cli_export.c   export RUN: every stream of a run as CSV or JSON lines
 *   cli_tail.c     tail: the live feed (Server-Sent Events), one line per event
 *   cli_series.c   query/export's /api/v1/series fetch, row walk and formatting
 *   cli_httpc.c    the HTTP client of those three (libcurl): options, GET, errors
 *   cli_sse.c      the event-stream parser of tail (pure: bytes in, events out)
 *   cli_proxy.c    proxy: XSUB/XPUB forwarder in front of sharded daemons
 *   cli_report.c   report RUN...: the regime summary of runs (text/CSV/JSON/Markdown)
 *
 * Every subcommand is `int cli_NAME(int argc, char **argv)` with argv[0] the
 * subcommand's name, and returns the process exit status: CLI_OK, CLI_FAIL
 * (a run-time failure: I/O, network, server error, bad file) or CLI_USAGE
 * (bad command line). Errors go to stderr as "gradwatch NAME: message".
 */
#ifndef GW_CLI_H
#define GW_CLI_H

#include <getopt.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "gradwatch.h"

enum { CLI_OK = 0, CLI_FAIL = 1, CLI_USAGE = 2 };

int cli_publish(int argc, char **argv);
int cli_replay(int argc, char **argv);
int cli_query(int argc, char **argv);
int cli_tail(int argc, char **argv);
int cli_export(int argc, char **argv);
int cli_proxy(int argc, char **argv);
int cli_report(int argc, char **argv);

/* ---- messages ----------------------------------------------------------- */

/* "gradwatch CMD: ..." and "Try 'gradwatch CMD --help'." on stderr; returns
 * CLI_USAGE. */
int cli_usage(const char *cmd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* "gradwatch CMD: ..." on stderr; returns CLI_FAIL. */
int cli_fail(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The usage error for getopt_long's return value '?' or ':' (opterr = 0). */
int cli_bad_option(const char *cmd, int c, char **argv);

/* ---- parsing (whole string, no sign tricks; 0 or -1) ----------------------- */

int cli_parse_u64(const char *s, uint64_t *out);
int cli_parse_double(const char *s, double *out); /* finite only */
/* Parse into *out and check lo <= v <= hi, else print a usage error naming
 * the option. Return 0 or CLI_USAGE. */
int cli_opt_u64(const char *cmd, const char *opt, const char *s, uint64_t lo, uint64_t hi,
                uint64_t *out);
int cli_opt_double(const char *cmd, const char *opt, const char *s, double lo, double hi,
                   double *out);

/* ---- time, signals, pacing ------------------------------------------------ */

double cli_now(void);        /* CLOCK_MONOTONIC seconds */
void cli_sleep(double sec);  /* returns early on a signal */

/* SIGINT/SIGTERM set the flag (and nothing else); SIGPIPE is ignored. The
 * flag lives in cli.c: the one piece of process-wide state, as a signal
 * handler has nowhere else to write. */
void cli_catch_signals(void);
int cli_stopped(void);

/* Token bucket: take() waits until a token is available. rate <= 0 means
 * no limit. The bucket holds at most 10 ms of tokens (at least one), so
 * bursts stay short and the long-run rate is exact. */
typedef struct cli_bucket_s {
  double rate, burst, tokens, last;
} cli_bucket_t;
void cli_bucket_init(cli_bucket_t *b, double rate);
void cli_bucket_take(cli_bucket_t *b);

/* ---- number formatting ----------------------------------------------------- */

/* Shortest of %.15g/%.16g/%.17g that reads back as exactly v (so CSV/JSON
 * output round-trips). buf: at least 32 bytes. */
void cli_fmt_exact(double v, char *buf, size_t cap);

/* ---- publisher options shared by publish and replay ------------------------ */

typedef struct cli_pub_opts_s {
  gw_publisher_config_t cfg; /* endpoint, sketch, dtype, socket, sndhwm, linger, CURVE */
  double wait_s;             /* wait this long for a subscriber before sending */
  int report;                /* --report: print progress every second */
  int s_given;               /* --s was given (else it follows --kind) */
  int endpoint_from_env;     /* cfg.endpoint is $GRADWATCH_ENDPOINT (checked at finish) */
  /* CURVE keys read from the command line or files, 40 chars + NUL. */
  char server_key[41], public_key[41], secret_key[41];
} cli_pub_opts_t;

/* getopt codes and long options of cli_pub_opts_t: a subcommand puts
 * CLI_PUB_LONG_OPTIONS into its own struct option table and passes codes
 * >= CLI_O_BASE to cli_pub_opts_parse. cli_pub_help is their help text. */
enum {
  CLI_O_BASE = 1000,
  CLI_O_ENDPOINT = CLI_O_BASE,
  CLI_O_SOCKET,
  CLI_O_K,
  CLI_O_KIND,
  CLI_O_S,
  CLI_O_SEED,
  CLI_O_DTYPE,
  CLI_O_SNDHWM,
  CLI_O_LINGER,
  CLI_O_WAIT,
  CLI_O_CURVE_SERVER,
  CLI_O_CURVE_PUBLIC,
  CLI_O_CURVE_SECRET,
  CLI_O_REPORT
};
#define CLI_PUB_LONG_OPTIONS                                      \
  {"endpoint", required_argument, NULL, CLI_O_ENDPOINT},          \
      {"socket", required_argument, NULL, CLI_O_SOCKET},          \
      {"k", required_argument, NULL, CLI_O_K},                    \
      {"kind", required_argument, NULL, CLI_O_KIND},              \
      {"s", required_argument, NULL, CLI_O_S},                    \
      {"seed", required_argument, NULL, CLI_O_SEED},              \
      {"dtype", required_argument, NULL, CLI_O_DTYPE},            \
      {"sndhwm", required_argument, NULL, CLI_O_SNDHWM},          \
      {"linger", required_argument, NULL, CLI_O_LINGER},          \
      {"wait", required_argument, NULL, CLI_O_WAIT},              \
      {"curve-server-key", required_argument, NULL, CLI_O_CURVE_SERVER}, \
      {"curve-public-key", required_argument, NULL, CLI_O_CURVE_PUBLIC}, \
      {"curve-secret-key", required_argument, NULL, CLI_O_CURVE_SECRET}, \
      {"report", no_argument, NULL, CLI_O_REPORT}
extern const char cli_pub_help[];

/* Environment defaults of the client (an option always wins). */
#define CLI_ENV_ENDPOINT "GRADWATCH_ENDPOINT" /* --endpoint of publish and replay */
#define CLI_ENV_RUN "GRADWATCH_RUN"           /* --run of publish and replay */

/* Defaults; the endpoint from $GRADWATCH_ENDPOINT when set. */
void cli_pub_opts_init(cli_pub_opts_t *o, double wait_s);
/* Handle getopt code c (>= CLI_O_BASE) with optarg. 0 or CLI_USAGE. */
int cli_pub_opts_parse(cli_pub_opts_t *o, const char *cmd, int c, const char *arg);
/* Final checks after parsing (s follows kind unless given). 0 or CLI_USAGE. */
int cli_pub_opts_finish(cli_pub_opts_t *o, const char *cmd);

/* Wait (up to o->wait_s in total) until each of the n publishers sees a
 * subscriber; warns on stderr for those that do not. */
void cli_wait_subscribers(const cli_pub_opts_t *o, const char *cmd, gw_publisher_t **pubs,
                          size_t n);

/* Progress: --report prints "t s: sent, dropped, rate" lines every second
 * and a summary at the end; rate counts messages published (sent or
 * dropped) per second. */
typedef struct cli_progress_s {
  double t0, next, last_t;
  uint64_t last_count; /* sent + dropped at the last line */
} cli_progress_t;
void cli_progress_start(cli_progress_t *p);
void cli_progress_tick(cli_progress_t *p, uint64_t sent, uint64_t dropped);
void cli_progress_end(cli_progress_t *p, uint64_t sent, uint64_t dropped);

#endif
