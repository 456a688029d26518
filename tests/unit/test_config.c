/* test_config.c — defaults, INI file, flags (getopt_long: --flag value and
 * --flag=value), precedence, --help, gw_config_check_file (file:line of
 * every error) and every error path of daemon/config.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "config.h"

static char path[64];

static void write_file(const char *text) {
  snprintf(path, sizeof(path), "/tmp/gwcfg-%d.ini", (int)getpid());
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
}

static int parse(gw_config_t *c, char *err, int argc, const char **argv) {
  gw_config_init(c);
  return gw_config_parse(c, argc, (char **)argv, err, 512);
}

static void defaults_match_spec(void **state) {
  (void)state;
  gw_config_t c;
  char err[512] = "";
  const char *argv[] = {"gradwatchd"};
  assert_int_equal(parse(&c, err, 1, argv), 0);
  assert_int_equal(c.n_zmq, 1);
  assert_string_equal(c.zmq[0], "tcp://127.0.0.1:5557");
  assert_int_equal(c.n_zmq_subscribe, 0);
  assert_string_equal(c.http, "127.0.0.1:8080");
  assert_string_equal(c.db, "./gradwatch.db");
  assert_string_equal(c.metrics_tags, "*");
  assert_int_equal(c.engine.window, 64);
  assert_true(c.engine.ema_beta == 0.9);
  assert_int_equal(c.engine.max_streams, 10000);
  assert_int_equal(c.engine.max_k, 65536);
  assert_int_equal(c.store_every, 1);
  assert_int_equal(c.store_sketches, 0);
  assert_null(c.http_token_file);
  gw_config_free(&c);
}

static void flags_are_applied(void **state) {
  (void)state;
  gw_config_t c;
  char err[512] = "";
  const char *argv[] = {"gradwatchd", "--zmq", "tcp://127.0.0.1:6001", "--zmq=ipc:///tmp/x",
                        "--zmq-subscribe", "gw1/r1/", "--http", "127.0.0.1:0", "--db",
                        ":memory:", "--window", "32", "--rank-every=4", "--ema-beta", "0.5",
                        "--max-streams", "7", "--max-k", "1024", "--store-every", "3",
                        "--store-sketches", "--retention-days", "9", "--max-db-mb", "100",
                        "--log-level", "debug", "--shard", "2/3", "--metrics-tags", "layer*"};
  assert_int_equal(parse(&c, err, (int)(sizeof(argv) / sizeof(*argv)), argv), 0);
  assert_int_equal(c.n_zmq, 2);
  assert_string_equal(c.zmq[1], "ipc:///tmp/x");
  assert_string_equal(c.zmq_subscribe[0], "gw1/r1/");
  assert_string_equal(c.db, ":memory:");
  assert_int_equal(c.engine.window, 32);
  assert_int_equal(c.engine.rank_every, 4);
  assert_true(c.engine.ema_beta == 0.5);
  assert_int_equal(c.engine.max_streams, 7);
  assert_int_equal(c.engine.max_k, 1024);
  assert_int_equal(c.store_every, 3);
  assert_int_equal(c.store_sketches, 1);
  assert_int_equal(c.retention_days, 9);
  assert_int_equal(c.max_db_mb, 100);
  assert_string_equal(c.log_level, "debug");
  assert_int_equal(c.shard_index, 2);
  assert_int_equal(c.shard_count, 3);
  assert_string_equal(c.metrics_tags, "layer*");
  gw_config_free(&c);
}

static void file_then_flags_win(void **state) {
  (void)state;
  write_file("; comment\n[ingest]\nzmq = tcp://127.0.0.1:7001\nzmq = tcp://127.0.0.1:7002\n"
             "max-streams = 50\n[window]\nwindow = 16\nema_beta = 0.8\n"
             "[store]\ndb = /tmp/x.db\nstore_sketches = yes\n[http]\nhttp = 127.0.0.1:9\n"
             "[alert kappa_jump]\nmetric = kappa_ema\n[alerts]\nwebhook = http://x\n");
  gw_config_t c;
  char err[512] = "";
  const char *argv[] = {"gradwatchd", "--config", path, "--window", "8",
                        "--zmq", "tcp://127.0.0.1:7003"};
  assert_int_equal(parse(&c, err, 7, argv), 0);
  assert_int_equal(c.engine.window, 8);         /* flag wins */
  assert_true(c.engine.ema_beta == 0.8);        /* from the file */
  assert_int_equal(c.engine.max_streams, 50);   /* dash form of the key */
  assert_string_equal(c.db, "/tmp/x.db");
  assert_int_equal(c.store_sketches, 1);
  assert_int_equal(c.n_zmq, 1);                 /* flags replace the file's list */
  assert_string_equal(c.zmq[0], "tcp://127.0.0.1:7003");
  gw_config_free(&c);

  const char *argv2[] = {"gradwatchd", "--config", path};
  assert_int_equal(parse(&c, err, 3, argv2), 0);
  assert_int_equal(c.n_zmq, 2);
  assert_string_equal(c.zmq[1], "tcp://127.0.0.1:7002");
  gw_config_free(&c);
  unlink(path);
}

static void expect_error(const char **argv, int argc, const char *needle) {
  gw_config_t c;
  char err[512] = "";
  assert_int_equal(parse(&c, err, argc, argv), GW_ECONFIG);
  if (!strstr(err, needle)) fail_msg("error '%s' does not mention '%s'", err, needle);
  gw_config_free(&c);
}

static void bad_flags_are_named(void **state) {
  (void)state;
  const char *a1[] = {"gradwatchd", "--window", "1"};
  expect_error(a1, 3, "window");
  const char *a2[] = {"gradwatchd", "--window", "12x"};
  expect_error(a2, 3, "'12x'");
  const char *a3[] = {"gradwatchd", "--nope"};
  expect_error(a3, 2, "unknown flag '--nope'");
  const char *a4[] = {"gradwatchd", "--db"};
  expect_error(a4, 2, "--db needs a value");
  const char *a5[] = {"gradwatchd", "--ema-beta", "1.0"};
  expect_error(a5, 3, "ema-beta");
  const char *a6[] = {"gradwatchd", "--shard", "3/3"};
  expect_error(a6, 3, "shard");
  const char *a7[] = {"gradwatchd", "--log-level", "loud"};
  expect_error(a7, 3, "log-level");
  const char *a8[] = {"gradwatchd", "--curve-secret-key", "/x"};
  expect_error(a8, 3, "together");
  const char *a9[] = {"gradwatchd", "stray"};
  expect_error(a9, 2, "unexpected argument 'stray'");
  const char *a10[] = {"gradwatchd", "--max-k", "65537"};
  expect_error(a10, 3, "max-k");
  const char *a11[] = {"gradwatchd", "--window", "-5"};
  expect_error(a11, 3, "window");
  const char *a12[] = {"gradwatchd", "--help=1"};
  expect_error(a12, 2, "takes no value");
  const char *a13[] = {"gradwatchd", "--config", "/nonexistent/gw.ini"};
  expect_error(a13, 3, "/nonexistent/gw.ini");
  const char *a14[] = {"gradwatchd", "--http", "8080"};
  expect_error(a14, 3, "ADDR:PORT");
  const char *a15[] = {"gradwatchd", "--http-cert", "/x.pem"};
  expect_error(a15, 3, "http-cert and http-key must be given together");
  const char *a16[] = {"gradwatchd", "--engine-threads", "0"};
  expect_error(a16, 3, "engine-threads");
}

static void bad_files_are_named(void **state) {
  (void)state;
  const char *argv[] = {"gradwatchd", "--config", path};
  write_file("[window]\nwindow = 0\n");
  expect_error(argv, 3, ":2: [window] window");
  write_file("[window]\nwindoww = 3\n");
  expect_error(argv, 3, "unknown key 'windoww' in [window]");
  write_file("[ingest]\nwindow = 3\n");
  expect_error(argv, 3, "unknown key 'window' in [ingest]");
  write_file("[bogus]\nx = 1\n");
  expect_error(argv, 3, "unknown section [bogus]");
  write_file("[store]\nthis line has no equals sign\n");
  expect_error(argv, 3, ":2: syntax error");
  write_file("[store]\nstore_sketches = maybe\n");
  expect_error(argv, 3, "not a boolean");
  unlink(path);
}

static void help_and_version(void **state) {
  (void)state;
  gw_config_t c;
  char err[512] = "";
  const char *argv[] = {"gradwatchd", "--help", "--window", "1"};
  assert_int_equal(parse(&c, err, 2, argv), 0);
  assert_int_equal(c.want_help, 1);
  gw_config_free(&c);
  const char *argv2[] = {"gradwatchd", "--version"};
  assert_int_equal(parse(&c, err, 2, argv2), 0);
  assert_int_equal(c.want_version, 1);
  gw_config_free(&c);
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  gw_config_usage(f);
  fclose(f);
  const char *flags[] = {"--zmq ", "--zmq-subscribe", "--http ", "--http-token-file", "--db ",
                         "--retention-days", "--max-db-mb", "--store-every", "--window ",
                         "--rank-every", "--ema-beta", "--max-streams", "--max-k",
                         "--store-sketches", "--curve-secret-key", "--curve-allow",
                         "--log-level", "--version", "--help", "--config", "--metrics-tags",
                         "--engine-threads", "--http-cert", "--http-key", "--shard",
                         "--zmq-pull", "--flush-ms", "--log-file"};
  for (size_t i = 0; i < sizeof(flags) / sizeof(*flags); i++)
    if (!strstr(buf, flags[i])) fail_msg("--help lacks %s", flags[i]);
  /* Named placeholders, one group per INI section (in this order), and
   * examples at the end. */
  const char *want[] = {"--window W ", "--db PATH ", "--http ADDR:PORT ", "--zmq ENDPOINT ",
                        "--shard I/N ", "--check-config FILE ", "--store-sketches[=BOOL]",
                        "--log-level LEVEL "};
  for (size_t i = 0; i < sizeof(want) / sizeof(*want); i++)
    if (!strstr(buf, want[i])) fail_msg("--help lacks '%s'", want[i]);
  assert_null(strstr(buf, " V "));
  const char *order[] = {"\n[ingest]", "--max-k", "\n[http]", "--metrics-tags", "\n[store]",
                         "--flush-ms", "\n[window]", "--ema-beta", "\n[daemon]", "--log-file",
                         "\nExamples:", "gradwatchd --check-config /etc/gradwatch/gradwatchd.conf"};
  const char *at = buf;
  for (size_t i = 0; i < sizeof(order) / sizeof(*order); i++) {
    const char *p = strstr(at, order[i]);
    if (!p) fail_msg("--help: '%s' missing or out of order", order[i]);
    at = p;
  }
  free(buf);
}

static void secrets_are_trimmed_and_bounded(void **state) {
  (void)state;
  char err[512] = "", *out = NULL;
  write_file("  s3cret-token-0123456789 \r\n\n");
  assert_int_equal(gw_config_read_secret("http-token-file", path, 16, 1024, &out, err, 512), 0);
  assert_string_equal(out, "s3cret-token-0123456789");
  free(out);
  write_file("short\n");
  assert_int_equal(gw_config_read_secret("http-token-file", path, 16, 1024, &out, err, 512),
                   GW_ECONFIG);
  assert_null(out);
  assert_non_null(strstr(err, "http-token-file"));
  assert_non_null(strstr(err, "found 5"));
  write_file("0123456789012345678901234567890123456789x\n");
  assert_int_equal(gw_config_read_secret("curve-secret-key", path, 40, 40, &out, err, 512),
                   GW_ECONFIG);
  assert_non_null(strstr(err, "expected a 40-character value, found 41"));
  unlink(path);
  assert_int_equal(gw_config_read_secret("curve-secret-key", path, 40, 40, &out, err, 512),
                   GW_ECONFIG);
  assert_non_null(strstr(err, "No such file"));
}


/* Every value-taking flag, typed as `--flag value` (eq = 0) or
 * `--flag=value` (eq = 1); the resulting fields are checked one by one. */
static void every_flag_one_form(int eq) {
  static const char *pairs[][2] = {
      {"zmq", "tcp://127.0.0.1:6001"},      {"zmq-pull", "tcp://127.0.0.1:6002"},
      {"zmq-subscribe", "gw1/a/"},          {"zmq-rcvhwm", "777"},
      {"shard", "1/4"},                     {"max-streams", "12"},
      {"max-k", "2048"},                    {"curve-secret-key", "/k/secret"},
      {"curve-allow", "/k/allowed"},        {"http", "0.0.0.0:81"},
      {"http-token-file", "/t/token"},      {"http-cert", "/c.pem"},
      {"http-key", "/k.pem"},               {"metrics-tags", "layer?"},
      {"db", "/d/g.db"},                    {"retention-days", "5"},
      {"max-db-mb", "64"},                  {"store-every", "4"},
      {"flush-ms", "50"},                   {"store-sketches", "true"},
      {"window", "100"},                    {"rank-every", "3"},
      {"ema-beta", "0.25"},                 {"engine-threads", "5"},
      {"log-level", "warn"},                {"log-file", "/l/g.log"},
  };
  enum { N = sizeof(pairs) / sizeof(pairs[0]) };
  const char *argv[1 + 2 * N];
  char buf[N][96];
  int argc = 1;
  argv[0] = "gradwatchd";
  for (size_t i = 0; i < N; i++) {
    if (eq || !strcmp(pairs[i][0], "store-sketches")) { /* optional value: only =V */
      snprintf(buf[i], sizeof(buf[i]), "--%s=%s", pairs[i][0], pairs[i][1]);
      argv[argc++] = buf[i];
    } else {
      snprintf(buf[i], sizeof(buf[i]), "--%s", pairs[i][0]);
      argv[argc++] = buf[i];
      argv[argc++] = pairs[i][1];
    }
  }
  gw_config_t c;
  char err[512] = "";
  if (parse(&c, err, argc, argv)) fail_msg("parse failed: %s", err);
  assert_int_equal(c.n_zmq, 1);
  assert_string_equal(c.zmq[0], "tcp://127.0.0.1:6001");
  assert_int_equal(c.n_zmq_pull, 1);
  assert_string_equal(c.zmq_pull[0], "tcp://127.0.0.1:6002");
  assert_int_equal(c.n_zmq_subscribe, 1);
  assert_string_equal(c.zmq_subscribe[0], "gw1/a/");
  assert_int_equal(c.zmq_rcvhwm, 777);
  assert_int_equal(c.shard_index, 1);
  assert_int_equal(c.shard_count, 4);
  assert_int_equal(c.engine.max_streams, 12);
  assert_int_equal(c.engine.max_k, 2048);
  assert_string_equal(c.curve_secret_key, "/k/secret");
  assert_string_equal(c.curve_allow, "/k/allowed");
  assert_string_equal(c.http, "0.0.0.0:81");
  assert_string_equal(c.http_token_file, "/t/token");
  assert_string_equal(c.http_cert, "/c.pem");
  assert_string_equal(c.http_key, "/k.pem");
  assert_string_equal(c.metrics_tags, "layer?");
  assert_string_equal(c.db, "/d/g.db");
  assert_int_equal(c.retention_days, 5);
  assert_int_equal(c.max_db_mb, 64);
  assert_int_equal(c.store_every, 4);
  assert_int_equal(c.flush_ms, 50);
  assert_int_equal(c.store_sketches, 1);
  assert_int_equal(c.engine.window, 100);
  assert_int_equal(c.engine.rank_every, 3);
  assert_true(c.engine.ema_beta == 0.25);
  assert_int_equal(c.engine_threads, 5);
  assert_string_equal(c.log_level, "warn");
  assert_string_equal(c.log_file, "/l/g.log");
  assert_null(c.check_config);
  gw_config_free(&c);
}

static void every_flag_both_forms(void **state) {
  (void)state;
  every_flag_one_form(0);
  every_flag_one_form(1);
}

static void getopt_edge_cases(void **state) {
  (void)state;
  gw_config_t c;
  char err[512] = "";
  /* A boolean flag takes only the attached form; the next word stays an
   * argument of its own. */
  const char *a1[] = {"gradwatchd", "--store-sketches=off"};
  assert_int_equal(parse(&c, err, 2, a1), 0);
  assert_int_equal(c.store_sketches, 0);
  gw_config_free(&c);
  const char *a2[] = {"gradwatchd", "--store-sketches", "false"};
  expect_error(a2, 3, "unexpected argument 'false'");
  /* Values that look like flags are values when the flag needs one. */
  const char *a3[] = {"gradwatchd", "--db", "--weird.db"};
  assert_int_equal(parse(&c, err, 3, a3), 0);
  assert_string_equal(c.db, "--weird.db");
  gw_config_free(&c);
  /* Abbreviations, underscores and short options are refused by name. */
  const char *a4[] = {"gradwatchd", "--win", "3"};
  expect_error(a4, 3, "unknown flag '--win'");
  const char *a5[] = {"gradwatchd", "--max_k", "3"};
  expect_error(a5, 3, "unknown flag '--max_k'");
  const char *a6[] = {"gradwatchd", "-w"};
  expect_error(a6, 2, "unknown flag '-w'");
  const char *a7[] = {"gradwatchd", "--window=3x"};
  expect_error(a7, 2, "window: '3x'");
  const char *a8[] = {"gradwatchd", "--version=2"};
  expect_error(a8, 2, "--version takes no value");
  const char *a9[] = {"gradwatchd", "--zmq"};
  expect_error(a9, 2, "--zmq needs a value");
  const char *a10[] = {"gradwatchd", "--window", "8", "extra"};
  expect_error(a10, 4, "unexpected argument 'extra'");
  /* --check-config records the file and skips validation of the rest. */
  const char *a11[] = {"gradwatchd", "--check-config", "/x.conf"};
  assert_int_equal(parse(&c, err, 3, a11), 0);
  assert_string_equal(c.check_config, "/x.conf");
  gw_config_free(&c);
  /* Parsing twice in one process starts getopt afresh. */
  const char *a12[] = {"gradwatchd", "--window=9"};
  assert_int_equal(parse(&c, err, 2, a12), 0);
  assert_int_equal(c.engine.window, 9);
  gw_config_free(&c);
  assert_int_equal(parse(&c, err, 2, a12), 0);
  assert_int_equal(c.engine.window, 9);
  gw_config_free(&c);
}

/* Runs gw_config_check_file_with on `path`; returns its code, output in *out. */
static int check(gw_config_alert_check_fn hook, char **out) {
  size_t len = 0;
  FILE *f = open_memstream(out, &len);
  assert_non_null(f);
  int rc = gw_config_check_file_with(path, f, hook);
  fclose(f);
  return rc;
}

static int count_lines(const char *s) {
  int n = 0;
  for (; *s; s++) n += *s == '\n';
  return n;
}

static void expect_line(const char *out, int line, const char *msg) {
  char want[256];
  snprintf(want, sizeof(want), "%s:%d: %s", path, line, msg);
  if (!strstr(out, want)) fail_msg("check output lacks '%s':\n%s", want, out);
}

static void check_config_reports_every_error(void **state) {
  (void)state;
  char *out = NULL;
  /* A valid file: 0 and silence. */
  write_file("[daemon]\nlog_level = debug\n[window]\nwindow = 8\n[alert x]\nkind = threshold\n");
  assert_int_equal(check(NULL, &out), 0);
  assert_string_equal(out, "");
  free(out);

  /* Errors on known lines, each reported with its line; a line longer than
   * inih's buffer is one error at its own line and shifts nothing. */
  char text[2048];
  char longc[400];
  memset(longc, 'x', sizeof(longc) - 1);
  longc[0] = ';';
  longc[sizeof(longc) - 1] = '\0';
  snprintf(text, sizeof(text),
           "[window]\n"            /* 1 */
           "window = 1\n"          /* 2: out of range */
           "%s\n"                  /* 3: too long */
           "ema_beta = 0.5\n"      /* 4: fine */
           "[ingest]\n"            /* 5 */
           "windoww = 3\n"         /* 6: unknown key */
           "[daemon]\n"            /* 7 */
           "log_level = loud\n"    /* 8: bad choice */
           "[nope]\n"              /* 9 */
           "x = 1\n"               /* 10: unknown section */
           "[alert ]\n"            /* 11 */
           "kind = stalled\n"      /* 12: rule without a name */
           "[http]\n"              /* 13 */
           "http = 8080\n",        /* 14: not ADDR:PORT */
           longc);
  write_file(text);
  assert_int_equal(check(NULL, &out), GW_ECONFIG);
  expect_line(out, 2, "[window] window: '1' is not an integer in [2, 4096]");
  expect_line(out, 6, "unknown key 'windoww' in [ingest]");
  expect_line(out, 8, "[daemon] log-level: 'loud' is not error|warn|info|debug");
  expect_line(out, 10, "unknown section [nope]");
  expect_line(out, 3, "line longer than 198 characters");
  expect_line(out, 12, "[alert ] needs a rule name");
  expect_line(out, 14, "[http] http: '8080' is not ADDR:PORT");
  assert_int_equal(count_lines(out), 7);
  free(out);

  /* A syntax error is reported with its line too. */
  write_file("[store]\ndb = /x.db\nno equals sign here\n");
  assert_int_equal(check(NULL, &out), GW_ECONFIG);
  expect_line(out, 3, "syntax error");
  assert_int_equal(count_lines(out), 1);
  free(out);

  /* Keys valid one by one but not together: named with the file. */
  write_file("[ingest]\ncurve_secret_key = /k\n");
  assert_int_equal(check(NULL, &out), GW_ECONFIG);
  char want[256];
  snprintf(want, sizeof(want), "%s: curve-secret-key and curve-allow must be given together", path);
  assert_non_null(strstr(out, want));
  free(out);

  /* The shipped example config is valid. */
  size_t len = 0;
  FILE *f = open_memstream(&out, &len);
  const char *src = getenv("GW_SOURCE_DIR");
  char example[512];
  snprintf(example, sizeof(example), "%s/systemd/gradwatchd.conf.example", src ? src : ".");
  assert_int_equal(gw_config_check_file(example, f), 0);
  fclose(f);
  assert_string_equal(out, "");
  free(out);

  /* A missing file: one line naming it. */
  unlink(path);
  assert_int_equal(check(NULL, &out), GW_ECONFIG);
  assert_non_null(strstr(out, path));
  assert_non_null(strstr(out, "No such file"));
  free(out);
}

/* The alert-rule hook: called with the path, its message printed, its
 * failure makes the whole check fail (and a passing hook changes nothing). */
static int hook_calls;
static char hook_path[64];
static int hook_reject(const char *p, char *err, size_t errlen) {
  hook_calls++;
  snprintf(hook_path, sizeof(hook_path), "%s", p);
  snprintf(err, errlen, "%s:2: [alert x] kind: 'bogus' is not threshold|relative|stalled", p);
  return GW_ECONFIG;
}
static int hook_accept(const char *p, char *err, size_t errlen) {
  (void)err;
  (void)errlen;
  hook_calls++;
  snprintf(hook_path, sizeof(hook_path), "%s", p);
  return 0;
}

static void check_config_alert_hook(void **state) {
  (void)state;
  char *out = NULL;
  write_file("[alert x]\nkind = bogus\n");
  hook_calls = 0;
  assert_int_equal(check(hook_accept, &out), 0);
  assert_int_equal(hook_calls, 1);
  assert_string_equal(hook_path, path);
  assert_string_equal(out, "");
  free(out);
  assert_int_equal(check(hook_reject, &out), GW_ECONFIG);
  assert_int_equal(hook_calls, 2);
  expect_line(out, 2, "[alert x] kind: 'bogus'");
  free(out);
  /* Other sections' errors and the hook's are both reported. */
  write_file("[window]\nwindow = 0\n[alert x]\nkind = bogus\n");
  assert_int_equal(check(hook_reject, &out), GW_ECONFIG);
  expect_line(out, 2, "[window] window");
  assert_int_equal(count_lines(out), 2);
  free(out);
  unlink(path);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(defaults_match_spec), cmocka_unit_test(flags_are_applied),
      cmocka_unit_test(file_then_flags_win), cmocka_unit_test(bad_flags_are_named),
      cmocka_unit_test(bad_files_are_named), cmocka_unit_test(help_and_version),
      cmocka_unit_test(secrets_are_trimmed_and_bounded),
      cmocka_unit_test(every_flag_both_forms), cmocka_unit_test(getopt_edge_cases),
      cmocka_unit_test(check_config_reports_every_error),
      cmocka_unit_test(check_config_alert_hook),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
