/* fuzz_config.c — libFuzzer target for gradwatchd's settings
 * (daemon/config.c): the INI file through libinih and the command line.
 *
 * Input layout: an INI file, then optionally the two bytes "\0\0" followed
 * by command-line arguments separated by single NUL bytes. The INI part is
 * written to an in-memory file (memfd) and
 *   1. loaded on its own with gw_config_load_file into a fresh config;
 *   2. given as --config FILE together with the arguments to
 *      gw_config_parse (argv[0] "gradwatchd"), so flags and file interact
 *      (a list flag replacing the file's list, defaults filled afterwards);
 *   3. checked with gw_config_check_file (--check-config), which must agree
 *      with step 1 (a file that does not load never checks clean), return 0
 *      exactly when it printed nothing, and start every line with the path.
 * Arguments naming another config file ("--config…") are dropped: the
 * fuzzer must not make the parser read /dev/zero or block on a FIFO.
 *
 * Checked promises (a broken one aborts; LeakSanitizer catches leaks, ASan
 * any overflow): both calls return 0 or GW_ECONFIG/GW_ENOMEM; on failure the
 * error text is non-empty and terminated; after a successful parse the
 * config is complete (ADDR:PORT http, db, a known log level, at least one
 * endpoint, every list item non-empty, every number inside the bounds of
 * `gradwatchd --help`), and gw_config_free leaves nothing behind.
 *
 * Built and run by tests/fuzz/run.sh config SECONDS (ctest fuzz_config).
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "config.h"
#include "gw_error.h"

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) abort();                                                      \
  } while (0)

#define MAX_ARGS 64

static void check_list(char *const *list, size_t n) {
  CHECK(n <= GW_CONFIG_LIST_MAX);
  for (size_t i = 0; i < n; i++) CHECK(list[i] != NULL && list[i][0] != '\0');
}

static void check_complete(const gw_config_t *c) {
  CHECK(c->http && strchr(c->http, ':'));
  CHECK(c->db && c->metrics_tags && c->log_level);
  CHECK(!strcmp(c->log_level, "error") || !strcmp(c->log_level, "warn") ||
        !strcmp(c->log_level, "info") || !strcmp(c->log_level, "debug"));
  CHECK(c->n_zmq + c->n_zmq_pull >= 1);
  check_list(c->zmq, c->n_zmq);
  check_list(c->zmq_pull, c->n_zmq_pull);
  check_list(c->zmq_subscribe, c->n_zmq_subscribe);
  CHECK(!!c->curve_secret_key == !!c->curve_allow);
  CHECK(c->engine.window >= 2 && c->engine.window <= 4096);
  CHECK(c->engine.rank_every >= 1);
  CHECK(c->engine.ema_beta >= 0.0 && c->engine.ema_beta < 1.0);
  CHECK(c->engine.max_k >= 1 && c->engine.max_k <= 65536);
  CHECK(c->engine.max_streams >= 1);
  CHECK(c->store_every >= 1 && c->flush_ms >= 10 && c->flush_ms <= 1000);
  CHECK(c->zmq_rcvhwm >= 1);
  CHECK(c->engine_threads >= 1 && c->engine_threads <= 64);
  CHECK(c->shard_count == 0 || c->shard_index < c->shard_count);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  size_t ini_len = size;
  const uint8_t *sep = NULL;
  for (size_t i = 0; i + 1 < size; i++)
    if (data[i] == 0 && data[i + 1] == 0) {
      sep = data + i;
      break;
    }
  if (sep) ini_len = (size_t)(sep - data);

  int fd = memfd_create("fuzz_config.ini", MFD_CLOEXEC);
  CHECK(fd >= 0);
  CHECK(write(fd, data, ini_len) == (ssize_t)ini_len);
  char path[64];
  snprintf(path, sizeof path, "/proc/self/fd/%d", fd);

  char err[1024];
  gw_config_t c;
  int rc;

  /* 1. the file alone */
  gw_config_init(&c);
  err[0] = '\0';
  rc = gw_config_load_file(&c, path, err, sizeof err);
  CHECK(rc == 0 || rc == GW_ECONFIG || rc == GW_ENOMEM);
  if (rc == GW_ECONFIG) CHECK(err[0] != '\0' && strnlen(err, sizeof err) < sizeof err);
  gw_config_free(&c);
  int load_rc = rc;

  /* 3. --check-config on the same file */
  char *out = NULL;
  size_t out_len = 0;
  FILE *mem = open_memstream(&out, &out_len);
  CHECK(mem != NULL);
  int crc = gw_config_check_file(path, mem);
  fclose(mem);
  CHECK(crc == 0 || crc == GW_ECONFIG || crc == GW_ENOMEM);
  if (load_rc == GW_ECONFIG) CHECK(crc != 0);
  if (crc == 0) CHECK(load_rc == 0 && out_len == 0);
  if (crc == GW_ECONFIG) CHECK(out_len > 0);
  for (char *line = out; line && *line;) {
    CHECK(strncmp(line, path, strlen(path)) == 0);
    char *nl = strchr(line, '\n');
    CHECK(nl != NULL);
    line = nl + 1;
  }
  free(out);

  /* 2. the command line, with the file as --config */
  char *argv[MAX_ARGS + 4];
  char *copy = NULL;
  int argc = 0;
  argv[argc++] = "gradwatchd";
  if (sep) {
    size_t alen = size - (ini_len + 2);
    copy = malloc(alen + 1);
    CHECK(copy != NULL);
    memcpy(copy, sep + 2, alen);
    copy[alen] = '\0';
    for (char *p = copy; p <= copy + alen && argc < MAX_ARGS + 1;) {
      size_t l = strlen(p);
      if (strncmp(p, "--config", 8) != 0) argv[argc++] = p;
      p += l + 1;
    }
  }
  argv[argc++] = "--config";
  argv[argc++] = path;
  argv[argc] = NULL;
  gw_config_init(&c);
  err[0] = '\0';
  rc = gw_config_parse(&c, argc, argv, err, sizeof err);
  CHECK(rc == 0 || rc == GW_ECONFIG || rc == GW_ENOMEM);
  if (rc == GW_ECONFIG) CHECK(err[0] != '\0' && strnlen(err, sizeof err) < sizeof err);
  if (rc == 0 && !c.want_help && !c.want_version && !c.check_config) check_complete(&c);
  gw_config_free(&c);
  /* after free the config is valid-empty: freeing twice is harmless */
  gw_config_free(&c);

  free(copy);
  close(fd);
  return 0;
}
