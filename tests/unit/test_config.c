/* test_config.c — defaults, INI file, flags, precedence and every error path
 * of daemon/config.c. */
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

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(defaults_match_spec), cmocka_unit_test(flags_are_applied),
      cmocka_unit_test(file_then_flags_win), cmocka_unit_test(bad_flags_are_named),
      cmocka_unit_test(bad_files_are_named), cmocka_unit_test(help_and_version),
      cmocka_unit_test(secrets_are_trimmed_and_bounded),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
