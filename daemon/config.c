/* config.c — defaults, INI file (libinih) and command-line flags, in that
 * order of precedence, for gradwatchd.
 *
 * One table, `opts`, names every setting once: its flag, its INI section and
 * key, whether it takes a value, and how the value is applied. Both the INI
 * handler and the flag parser go through `apply`, so a key and its flag can
 * never disagree. [alert NAME] sections and the [alerts] section belong to
 * the alerts module, which reads the same file itself.
 *
 * Flags go through getopt_long (glibc; its state optind/opterr is the C
 * library's, so parsing is not thread-safe — it runs once, in main). Only
 * exact names count: getopt's unique-prefix abbreviations are refused, so a
 * flag and its INI key are the same word. The flags are read in one pass
 * into a list, the --config file is loaded, then the list is applied in
 * order (defaults < file < flags).
 *
 * gw_config_check_file (`gradwatchd --check-config FILE`) reads a file the
 * same way but keeps going after an error, reporting each as file:line.
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <ini.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef enum { T_STR, T_LIST, T_U32, T_DOUBLE, T_BOOL, T_SHARD, T_FLAG, T_ADDR } opt_type_t;

typedef struct opt_s {
  const char *name;    /* flag without dashes; INI key with '-' → '_' */
  const char *section; /* INI section */
  opt_type_t type;
  size_t off;       /* offset of the field in gw_config_t */
  size_t count_off; /* T_LIST: offset of the count */
  double min, max;  /* numeric bounds */
  const char *arg;  /* placeholder in --help (NULL: takes no value) */
  const char *help;
  const char *choices; /* T_STR: "a|b|c" allowed values, NULL = any */
} opt_t;

#define F(field) offsetof(gw_config_t, field)
#define E(field) offsetof(gw_config_t, engine.field)

/* Order = order in --help, grouped by INI section ("" = command line only). */
static const opt_t opts[] = {
    {"config", "", T_STR, F(config_path), 0, 0, 0, "FILE", "read settings from this INI file first", NULL},
    {"check-config", "", T_STR, F(check_config), 0, 0, 0, "FILE",
     "check FILE and exit: 0 if valid, 1 with file:line of each error",
     NULL},
    {"help", "", T_FLAG, F(want_help), 0, 0, 0, NULL, "print this text and exit", NULL},
    {"version", "", T_FLAG, F(want_version), 0, 0, 0, NULL, "print the version and exit", NULL},
    {"zmq", "ingest", T_LIST, F(zmq), F(n_zmq), 0, 0, "ENDPOINT",
     "bind a SUB socket (repeatable; default tcp://127.0.0.1:5557)", NULL},
    {"zmq-pull", "ingest", T_LIST, F(zmq_pull), F(n_zmq_pull), 0, 0, "ENDPOINT",
     "bind a PULL socket (repeatable)", NULL},
    {"zmq-subscribe", "ingest", T_LIST, F(zmq_subscribe), F(n_zmq_subscribe), 0, 0, "PREFIX",
     "topic prefix to subscribe to (repeatable; default all)", NULL},
    {"zmq-rcvhwm", "ingest", T_U32, F(zmq_rcvhwm), 0, 1, 10000000, "N",
     "ZeroMQ receive high-water mark per socket (100000)", NULL},
    {"shard", "ingest", T_SHARD, 0, 0, 0, 0, "I/N",
     "keep only runs whose hash falls in shard I of N", NULL},
    {"max-streams", "ingest", T_U32, E(max_streams), 0, 1, 10000000, "N", "stream cap (10000)", NULL},
    {"max-k", "ingest", T_U32, E(max_k), 0, 1, 65536, "K", "largest sketch length accepted (65536)", NULL},
    {"curve-secret-key", "ingest", T_STR, F(curve_secret_key), 0, 0, 0, "FILE",
     "file with the daemon's Z85 CURVE secret key (enables CURVE)", NULL},
    {"curve-allow", "ingest", T_STR, F(curve_allow), 0, 0, 0, "DIR",
     "directory of allowed publisher public keys", NULL},
    {"max-stream-memory-mb", "ingest", T_U32, F(max_stream_memory_mb), 0, 1, 16777216, "MB",
     "memory budget of all streams' windows (a quarter of RAM, 256 MB..64 GB)", NULL},
    {"zmq-handshake-ms", "ingest", T_U32, F(zmq_handshake_ms), 0, 100, 3600000, "MS",
     "drop a ZeroMQ connection that has not completed its handshake by then (10000)", NULL},
    {"http", "http", T_ADDR, F(http), 0, 0, 0, "ADDR:PORT", "HTTP listen address (127.0.0.1:8080)", NULL},
    {"http-token-file", "http", T_STR, F(http_token_file), 0, 0, 0, "FILE",
     "require Authorization: Bearer <the token in FILE>", NULL},
    {"http-cert", "http", T_STR, F(http_cert), 0, 0, 0, "FILE",
     "serve HTTPS with this PEM certificate (chain) file (needs --http-key)", NULL},
    {"http-key", "http", T_STR, F(http_key), 0, 0, 0, "FILE", "PEM private key file for --http-cert", NULL},
    {"metrics-tags", "http", T_STR, F(metrics_tags), 0, 0, 0, "GLOB",
     "tags exported per stream on /metrics (*)", NULL},
    {"metrics-labels", "http", T_STR, F(metrics_labels), 0, 0, 0, "KEYS",
     "run metadata keys (labels, or config.NAME) exported on gradwatch_run_info (none)", NULL},
    {"sse-max-clients", "http", T_U32, F(sse_max_clients), 0, 1, 100000, "N",
     "live (SSE) clients at once (256)", NULL},
    {"sse-max-per-address", "http", T_U32, F(sse_max_per_address), 0, 1, 100000, "N",
     "live (SSE) clients at once from one address (32)", NULL},
    {"sse-client-kb", "http", T_U32, F(sse_client_kb), 0, 4, 4194304, "KB",
     "drop a live client this far behind (4096)", NULL},
    {"sse-total-mb", "http", T_U32, F(sse_total_mb), 0, 1, 65536, "MB",
     "live events held for all clients (32)", NULL},
    {"series-max-mb", "http", T_U32, F(series_max_mb), 0, 1, 65536, "MB",
     "largest /api/v1/series answer; larger asks get 400 (64)", NULL},
    {"http-answer-budget-mb", "http", T_U32, F(http_answer_budget_mb), 0, 1, 1048576, "MB",
     "bytes held for data answers across connections; over it 503 (256)", NULL},
    {"db", "store", T_STR, F(db), 0, 0, 0, "PATH", "SQLite database (./gradwatch.db; :memory: allowed)", NULL},
    {"retention-days", "store", T_U32, F(retention_days), 0, 0, 100000, "DAYS",
     "delete points older than DAYS (0 = keep)", NULL},
    {"full-resolution-days", "store", T_U32, F(full_resolution_days), 0, 0, 100000, "N",
     "keep points older than N days only downsampled (0 = keep every point)", NULL},
    {"chunk-points", "store", T_U32, F(chunk_points), 0, 0, 65536, "N",
     "store points as compressed chunks of N (256; 0 = one row per point)", NULL},
    {"max-db-mb", "store", T_U32, F(max_db_mb), 0, 0, 100000000, "MB", "cap the database size (0 = none)", NULL},
    {"store-every", "store", T_U32, F(store_every), 0, 1, 1000000, "N", "store every Nth point per stream (1)", NULL},
    {"flush-ms", "store", T_U32, F(flush_ms), 0, 10, 1000, "MS", "max delay before points are committed (200)", NULL},
    {"store-sketches", "store", T_BOOL, F(store_sketches), 0, 0, 0, NULL,
     "also keep raw sketches (--store-sketches=false turns it off)", NULL},
    {"remote-write", "store", T_LIST, F(remote_write), F(n_remote_write), 0, 0, "URL",
     "also send every point to this Prometheus remote-write receiver (repeatable)", NULL},
    {"remote-write-metrics", "store", T_STR, F(remote_write_metrics), 0, 0, 0, "LIST",
     "metrics sent by --remote-write (kappa_onestep,kappa_ema,rank_90,rank_99,grad_norm,loss)",
     NULL},
    {"remote-write-label", "store", T_LIST, F(remote_write_label), F(n_remote_write_label), 0, 0,
     "NAME=VALUE", "add this label to every remote-written series (repeatable, e.g. replica=a)",
     NULL},
    {"window", "window", T_U32, E(window), 0, 2, 4096, "W", "window length W in points (64)", NULL},
    {"rank-every", "window", T_U32, E(rank_every), 0, 1, 1000000, "N",
     "recompute rank fields every N points (8)", NULL},
    {"ema-beta", "window", T_DOUBLE, E(ema_beta), 0, 0, 0.999999, "BETA", "EMA predictor beta (0.9)", NULL},
    {"fd-rows", "window", T_U32, E(fd_rows), 0, 2, 1024, "L",
     "rows of the whole-run Frequent Directions sketch (64)", NULL},
    {"stream-idle", "window", T_U32, F(stream_idle), 0, 1, 315360000, "SECONDS",
     "retire a stream silent this many seconds (3600)", NULL},
    {"engine-threads", "window", T_U32, F(engine_threads), 0, 1, 64, "N",
     "threads computing windows (number of CPUs, at most 8)", NULL},
    {"log-level", "daemon", T_STR, F(log_level), 0, 0, 0, "LEVEL", "error|warn|info|debug (info)",
     "error|warn|info|debug"},
    {"log-file", "daemon", T_STR, F(log_file), 0, 0, 0, "FILE",
     "log to FILE instead of stderr (reopened on SIGHUP)", NULL},
    {"alertmanager-url", "alertmanager", T_LIST, F(alertmanager_url), F(n_alertmanager_url), 0, 0,
     "URL", "push alerts to this Alertmanager (repeatable: every URL of a cluster)", NULL},
    {"alertmanager-resend", "alertmanager", T_U32, F(alertmanager_resend), 0, 1, 86400, "SECONDS",
     "re-send firing alerts to Alertmanager this often (60)", NULL},
    {"alertmanager-runbook-url", "alertmanager", T_STR, F(alertmanager_runbook_url), 0, 0, 0, "URL",
     "annotate alerts with runbook_url = URL#runbook-<alertname>", NULL},
};
#define N_OPTS (sizeof(opts) / sizeof(opts[0]))

static void fail(char *err, size_t errlen, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
}

void gw_config_init(gw_config_t *c) {
  memset(c, 0, sizeof(*c));
  gw_engine_config_default(&c->engine);
  c->zmq_rcvhwm = 100000;
  c->store_every = 1;
  c->chunk_points = 256;
  c->flush_ms = 200;
  long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  c->engine_threads = cpus < 1 ? 1 : cpus > 8 ? 8 : (uint32_t)cpus;
  c->stream_idle = 3600;
  c->alertmanager_resend = 60;
  c->zmq_handshake_ms = 10000;
  c->sse_max_clients = 256;
  c->sse_max_per_address = 32;
  c->sse_client_kb = 4096;
  c->sse_total_mb = 32;
  c->series_max_mb = 64;
  c->http_answer_budget_mb = 256;
}

uint64_t gw_config_stream_memory(const gw_config_t *c) {
  if (c->max_stream_memory_mb) return (uint64_t)c->max_stream_memory_mb << 20;
  long pages = sysconf(_SC_PHYS_PAGES), psize = sysconf(_SC_PAGESIZE);
  if (pages <= 0 || psize <= 0) return (uint64_t)1 << 30;
  uint64_t quarter = (uint64_t)pages * (uint64_t)psize / 4;
  const uint64_t lo = (uint64_t)256 << 20, hi = (uint64_t)64 << 30;
  return quarter < lo ? lo : quarter > hi ? hi : quarter;
}

static void free_list(char **list, size_t *n) {
  for (size_t i = 0; i < *n; i++) free(list[i]);
  *n = 0;
}

void gw_config_free(gw_config_t *c) {
  for (size_t i = 0; i < N_OPTS; i++) {
    const opt_t *o = &opts[i];
    if (o->type == T_STR || o->type == T_ADDR) {
      char **p = (char **)((char *)c + o->off);
      free(*p);
      *p = NULL;
    } else if (o->type == T_LIST) {
      free_list((char **)((char *)c + o->off), (size_t *)((char *)c + o->count_off));
    }
  }
}

/* Same name, treating '-' and '_' alike. */
static int name_eq(const char *a, const char *b) {
  for (; *a && *b; a++, b++) {
    char x = *a == '_' ? '-' : *a, y = *b == '_' ? '-' : *b;
    if (x != y) return 0;
  }
  return *a == *b;
}

static const opt_t *find_opt(const char *name) {
  for (size_t i = 0; i < N_OPTS; i++)
    if (name_eq(opts[i].name, name)) return &opts[i];
  return NULL;
}

static int parse_u64(const char *v, unsigned long long *out) {
  char *end;
  if (*v == '-' || *v == '\0') return -1;
  errno = 0;
  unsigned long long x = strtoull(v, &end, 10);
  if (errno || *end) return -1;
  *out = x;
  return 0;
}

/* v is one of the '|'-separated words of choices. */
static int is_choice(const char *choices, const char *v) {
  size_t n = strlen(v);
  for (const char *p = choices; *p;) {
    const char *bar = strchr(p, '|');
    size_t len = bar ? (size_t)(bar - p) : strlen(p);
    if (len == n && n > 0 && !strncmp(p, v, n)) return 1;
    if (!bar) break;
    p = bar + 1;
  }
  return 0;
}

/* Apply value v to option o. `replace` clears a list before its first
 * command-line item (flags replace the file's list). */
static int apply(gw_config_t *c, const opt_t *o, const char *v, int *list_fresh,
                 char *err, size_t errlen) {
  char *base = (char *)c;
  switch (o->type) {
    case T_ADDR:
      if (!strchr(v, ':')) {
        fail(err, errlen, "%s: '%s' is not ADDR:PORT", o->name, v);
        return GW_ECONFIG;
      }
      /* fall through */
    case T_STR: {
      if (o->choices && !is_choice(o->choices, v)) {
        fail(err, errlen, "%s: '%s' is not %s", o->name, v, o->choices);
        return GW_ECONFIG;
      }
      char **p = (char **)(base + o->off);
      char *dup = strdup(v);
      if (!dup) return GW_ENOMEM;
      free(*p);
      *p = dup;
      return 0;
    }
    case T_LIST: {
      char **list = (char **)(base + o->off);
      size_t *n = (size_t *)(base + o->count_off);
      if (list_fresh && !*list_fresh) {
        free_list(list, n);
        *list_fresh = 1;
      }
      if (*n >= GW_CONFIG_LIST_MAX) {
        fail(err, errlen, "%s: at most %d values", o->name, GW_CONFIG_LIST_MAX);
        return GW_ECONFIG;
      }
      if (!*v) {
        fail(err, errlen, "%s: empty value", o->name);
        return GW_ECONFIG;
      }
      if (o->arg && !strcmp(o->arg, "URL") && strncmp(v, "http://", 7) && strncmp(v, "https://", 8)) {
        fail(err, errlen, "%s: '%s' is not an http:// or https:// URL", o->name, v);
        return GW_ECONFIG;
      }
      if (!(list[*n] = strdup(v))) return GW_ENOMEM;
      (*n)++;
      return 0;
    }
    case T_U32: {
      unsigned long long x;
      if (parse_u64(v, &x) || x < o->min || x > o->max) {
        fail(err, errlen, "%s: '%s' is not an integer in [%.0f, %.0f]", o->name, v,
             o->min, o->max);
        return GW_ECONFIG;
      }
      *(uint32_t *)(base + o->off) = (uint32_t)x;
      return 0;
    }
    case T_DOUBLE: {
      char *end;
      errno = 0;
      double x = strtod(v, &end);
      if (errno || *end || !*v || !(x >= o->min && x <= o->max)) {
        fail(err, errlen, "%s: '%s' is not a number in [%g, %g]", o->name, v, o->min,
             o->max);
        return GW_ECONFIG;
      }
      *(double *)(base + o->off) = x;
      return 0;
    }
    case T_BOOL: {
      int b;
      if (!strcmp(v, "1") || !strcmp(v, "true") || !strcmp(v, "yes") || !strcmp(v, "on"))
        b = 1;
      else if (!strcmp(v, "0") || !strcmp(v, "false") || !strcmp(v, "no") ||
               !strcmp(v, "off"))
        b = 0;
      else {
        fail(err, errlen, "%s: '%s' is not a boolean (true/false)", o->name, v);
        return GW_ECONFIG;
      }
      *(int *)(base + o->off) = b;
      return 0;
    }
    case T_SHARD: {
      unsigned i, n;
      char tail;
      if (sscanf(v, "%u/%u%c", &i, &n, &tail) != 2 || n == 0 || i >= n || n > 65536) {
        fail(err, errlen, "shard: '%s' is not i/N with 0 <= i < N", v);
        return GW_ECONFIG;
      }
      c->shard_index = i;
      c->shard_count = n;
      return 0;
    }
    case T_FLAG:
      *(int *)(base + o->off) = 1;
      return 0;
  }
  return GW_EINVAL;
}

/* libinih reads through read_line so the handler knows the line it is on
 * (the Debian build of inih does not pass line numbers). A line longer
 * than inih's buffer is an error of its own at its line; its tail is
 * skipped, so inih's line count (syntax errors) stays the file's. */
typedef struct ini_ctx_s ini_ctx_t;
typedef struct line_reader_s {
  FILE *f;
  int line; /* line of the text last returned, 1-based */
  ini_ctx_t *x;
} line_reader_t;

struct ini_ctx_s {
  gw_config_t *c;
  const char *path;
  line_reader_t *reader;
  char *err; /* load mode: the first error; NULL in check mode */
  size_t errlen;
  FILE *errout; /* check mode: every error goes here as path:line: msg */
  int rc;       /* first error code */
  int errors;   /* check mode: how many */
  int err_line; /* line of the first error */
};

static void ini_error(ini_ctx_t *x, int rc, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  if (!x->rc) {
    x->rc = rc;
    x->err_line = x->reader->line;
    if (x->err) fail(x->err, x->errlen, "%s", msg);
  }
  x->errors++;
  if (x->errout) fprintf(x->errout, "%s:%d: %s\n", x->path, x->reader->line, msg);
}

static char *read_line(char *str, int num, void *stream) {
  line_reader_t *r = stream;
  char *s = fgets(str, num, r->f);
  if (!s) return NULL;
  r->line++;
  size_t n = strlen(s);
  if (n > 0 && s[n - 1] != '\n' && !feof(r->f)) {
    int ch;
    while ((ch = fgetc(r->f)) != EOF && ch != '\n') {
    }
    if (ch == '\n' || !feof(r->f))
      ini_error(r->x, GW_ECONFIG, "line longer than %d characters", num - 2);
  }
  return s;
}

static int on_ini(void *user, const char *section, const char *name,
                  const char *value) {
  ini_ctx_t *x = user;
  if (x->rc && !x->errout) return 0;
  /* The alerts module owns [alerts] and [alert NAME]; here they only have
   * to parse as INI (and a rule needs a name). */
  if (!strcmp(section, "alerts")) return 1;
  if (!strncmp(section, "alert ", 6)) {
    const char *n = section + 6;
    while (*n == ' ') n++;
    if (!*n) ini_error(x, GW_ECONFIG, "[%s] needs a rule name: [alert NAME]", section);
    return !x->rc || x->errout != NULL;
  }
  const opt_t *o = find_opt(name);
  char amkey[96]; /* [alertmanager] key K is the flag --alertmanager-K */
  if (!strcmp(section, "alertmanager") && snprintf(amkey, sizeof(amkey), "alertmanager-%s", name) <
                                              (int)sizeof(amkey))
    o = find_opt(amkey);
  int known_section = !strcmp(section, "ingest") || !strcmp(section, "http") ||
                      !strcmp(section, "store") || !strcmp(section, "window") ||
                      !strcmp(section, "daemon") || !strcmp(section, "alertmanager");
  char sub[512];
  int rc;
  if (!known_section) {
    ini_error(x, GW_ECONFIG, "unknown section [%s]", section);
  } else if (!o || o->type == T_FLAG || strcmp(o->section, section)) {
    ini_error(x, GW_ECONFIG, "unknown key '%s' in [%s]", name, section);
  } else if ((rc = apply(x->c, o, value, NULL, sub, sizeof(sub)))) {
    if (rc == GW_ENOMEM) snprintf(sub, sizeof(sub), "out of memory");
    ini_error(x, rc, "[%s] %s", section, sub);
  }
  /* Load mode stops at the first error; check mode reports them all. */
  return !x->rc || x->errout != NULL;
}

/* Parse path into c. Load mode (errout NULL): stop at the first error,
 * "path:line: msg" in err. Check mode: every error to errout. */
static int load(gw_config_t *c, const char *path, char *err, size_t errlen, FILE *errout,
                int *n_errors) {
  char local[512];
  if (!err) {
    err = local;
    errlen = sizeof(local);
  }
  FILE *f = fopen(path, "r");
  if (!f) {
    int e = errno;
    fail(err, errlen, "%s: %s", path, strerror(e));
    if (errout) fprintf(errout, "%s\n", err);
    if (n_errors) *n_errors = 1;
    return GW_ECONFIG;
  }
  line_reader_t r = {f, 0, NULL};
  ini_ctx_t x = {c, path, &r, errout ? NULL : err, errlen, errout, 0, 0, 0};
  r.x = &x;
  int line = ini_parse_stream(read_line, &r, on_ini, &x);
  fclose(f);
  int rc = x.rc;
  if (!errout && x.rc && !(line > 0 && line < x.err_line)) {
    char msg[512];
    snprintf(msg, sizeof(msg), "%s", err);
    fail(err, errlen, "%s:%d: %s", path, x.err_line, msg);
  } else if (line > 0 && (!x.rc || line != x.err_line)) {
    rc = GW_ECONFIG;
    /* A line inih could not read; it reports the first one only. */
    fail(err, errlen, "%s:%d: syntax error (expected [section], key = value or a comment)",
         path, line);
    if (errout) fprintf(errout, "%s\n", err);
    x.errors++;
    if (!rc) rc = GW_ECONFIG;
  } else if (line < 0) {
    fail(err, errlen, "%s: cannot parse (%s)", path, line == -2 ? "out of memory" : "read error");
    if (errout) fprintf(errout, "%s\n", err);
    x.errors++;
    if (!rc) rc = line == -2 ? GW_ENOMEM : GW_ECONFIG;
  }
  if (n_errors) *n_errors = x.errors;
  return rc;
}

int gw_config_load_file(gw_config_t *c, const char *path, char *err, size_t errlen) {
  return load(c, path, err, errlen, NULL, NULL);
}

static int apply_defaults_after(gw_config_t *c) {
  static const struct {
    size_t off;
    const char *v;
  } str_defaults[] = {
      {F(http), "127.0.0.1:8080"},
      {F(db), "./gradwatch.db"},
      {F(metrics_tags), "*"},
      {F(log_level), "info"},
  };
  for (size_t i = 0; i < sizeof(str_defaults) / sizeof(str_defaults[0]); i++) {
    char **p = (char **)((char *)c + str_defaults[i].off);
    if (!*p && !(*p = strdup(str_defaults[i].v))) return GW_ENOMEM;
  }
  if (c->n_zmq == 0 && c->n_zmq_pull == 0) {
    if (!(c->zmq[0] = strdup("tcp://127.0.0.1:5557"))) return GW_ENOMEM;
    c->n_zmq = 1;
  }
  return 0;
}

static int validate(const gw_config_t *c, char *err, size_t errlen) {
  const char *lv = c->log_level;
  if (strcmp(lv, "error") && strcmp(lv, "warn") && strcmp(lv, "info") &&
      strcmp(lv, "debug")) {
    fail(err, errlen, "log-level: '%s' is not error|warn|info|debug", lv);
    return GW_ECONFIG;
  }
  if (!!c->curve_secret_key != !!c->curve_allow) {
    fail(err, errlen, "curve-secret-key and curve-allow must be given together");
    return GW_ECONFIG;
  }
  if (!!c->http_cert != !!c->http_key) {
    fail(err, errlen, "http-cert and http-key must be given together");
    return GW_ECONFIG;
  }
  if (!strchr(c->http, ':')) {
    fail(err, errlen, "http: '%s' is not ADDR:PORT", c->http);
    return GW_ECONFIG;
  }
  return 0;
}

/* The name a flag was typed with: "--name" or "--name=value" → name. */
static void typed_name(const char *arg, char *name, size_t size) {
  const char *p = arg[0] == '-' && arg[1] == '-' ? arg + 2 : arg[0] == '-' ? arg + 1 : arg;
  size_t len = strcspn(p, "=");
  if (len >= size) len = size - 1;
  memcpy(name, p, len);
  name[len] = '\0';
}

int gw_config_parse(gw_config_t *c, int argc, char **argv, char *err, size_t errlen) {
  struct option longopts[N_OPTS + 1];
  /* Flags in command-line order, applied after the file: opts index and value. */
  size_t *which = calloc((size_t)argc + 1, sizeof(*which));
  const char **vals = calloc((size_t)argc + 1, sizeof(*vals));
  size_t n = 0;
  int rc = 0;
  char name[64];
  if (!which || !vals) {
    rc = GW_ENOMEM;
    goto done;
  }
  for (size_t i = 0; i < N_OPTS; i++) {
    longopts[i].name = opts[i].name;
    longopts[i].has_arg = opts[i].type == T_FLAG   ? no_argument
                          : opts[i].type == T_BOOL ? optional_argument
                                                   : required_argument;
    longopts[i].flag = NULL;
    longopts[i].val = 256 + (int)i;
  }
  memset(&longopts[N_OPTS], 0, sizeof(longopts[N_OPTS]));
  /* "+": stop at the first non-flag; ":": a missing value returns ':'. */
  opterr = 0;
  optind = 0; /* glibc: 0 re-initialises getopt's state for a fresh argv */
  for (;;) {
    int r = getopt_long(argc, argv, "+:", longopts, NULL);
    if (r == -1) break;
    const char *arg = argv[optind - 1];
    if (r == ':') {
      fail(err, errlen, "--%s needs a value (see --help)", opts[optopt - 256].name);
      rc = GW_ECONFIG;
      goto done;
    }
    if (r == '?' && optopt >= 256) {
      fail(err, errlen, "--%s takes no value", opts[optopt - 256].name);
      rc = GW_ECONFIG;
      goto done;
    }
    if (r == '?' || r < 256) {
      typed_name(arg, name, sizeof(name));
      fail(err, errlen, "unknown flag '%s%s' (see --help)", arg[1] == '-' ? "--" : "-", name);
      rc = GW_ECONFIG;
      goto done;
    }
    const opt_t *o = &opts[r - 256];
    /* The typed word: a separate value means the flag came one earlier. */
    if (optarg && optarg == argv[optind - 1] && optind >= 2) arg = argv[optind - 2];
    typed_name(arg, name, sizeof(name));
    if (strcmp(name, o->name) != 0) { /* getopt accepted an abbreviation */
      fail(err, errlen, "unknown flag '--%s' (see --help; did you mean --%s?)", name, o->name);
      rc = GW_ECONFIG;
      goto done;
    }
    const char *v = optarg ? optarg : "true";
    if (!strcmp(o->name, "config")) { /* read before the file, not after */
      if ((rc = apply(c, o, v, NULL, err, errlen))) goto done;
      continue;
    }
    which[n] = (size_t)(o - opts);
    vals[n++] = v;
  }
  if (optind < argc) {
    fail(err, errlen, "unexpected argument '%s' (see --help)", argv[optind]);
    rc = GW_ECONFIG;
    goto done;
  }
  if (c->config_path && (rc = gw_config_load_file(c, c->config_path, err, errlen))) goto done;
  int fresh[N_OPTS] = {0}; /* a list flag replaces the file's list */
  for (size_t i = 0; i < n; i++)
    if ((rc = apply(c, &opts[which[i]], vals[i], &fresh[which[i]], err, errlen))) goto done;
  if ((rc = apply_defaults_after(c))) goto done;
  if (!c->want_help && !c->want_version && !c->check_config) rc = validate(c, err, errlen);
done:
  free(which);
  free(vals);
  return rc;
}

int gw_config_check_file_with(const char *path, FILE *errout,
                              gw_config_alert_check_fn check_alerts) {
  gw_config_t c;
  char err[512] = "";
  int n_errors = 0;
  gw_config_init(&c);
  int rc = load(&c, path, err, sizeof(err), errout, &n_errors);
  if (rc == 0 && (rc = apply_defaults_after(&c)) == 0 && (rc = validate(&c, err, sizeof(err)))) {
    /* Settings fine one by one but not together (a key without its pair). */
    fprintf(errout, "%s: %s\n", path, err);
    n_errors++;
  }
  if (n_errors == 0 || rc != GW_ENOMEM) {
    /* Rules are checked even when other sections have errors: one run
     * lists everything to fix. */
    if (check_alerts && access(path, R_OK) == 0) {
      err[0] = '\0';
      int arc = check_alerts(path, err, sizeof(err));
      if (arc) {
        fprintf(errout, "%s\n", err[0] ? err : "alert rules: invalid");
        n_errors++;
        if (!rc) rc = arc == GW_ENOMEM ? GW_ENOMEM : GW_ECONFIG;
      }
    }
  }
  gw_config_free(&c);
  if (n_errors && !rc) rc = GW_ECONFIG;
  return rc;
}

int gw_config_check_file(const char *path, FILE *errout) {
  return gw_config_check_file_with(path, errout, NULL);
}

int gw_config_read_secret(const char *flag, const char *path, size_t min_len,
                          size_t max_len, char **out, char *err, size_t errlen) {
  *out = NULL;
  FILE *f = fopen(path, "r");
  if (!f) {
    int e = errno;
    fail(err, errlen, "%s: %s: %s", flag, path, strerror(e));
    return GW_ECONFIG;
  }
  char buf[1025];
  size_t n = fread(buf, 1, sizeof(buf) - 1, f);
  fclose(f);
  buf[n] = '\0';
  char *s = buf, *e = buf + n;
  while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r') s++;
  while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\n' || e[-1] == '\r')) *--e = '\0';
  size_t len = strlen(s);
  if (len < min_len || len > max_len) {
    if (min_len == max_len)
      fail(err, errlen, "%s: %s: expected a %zu-character value, found %zu", flag, path, min_len,
           len);
    else
      fail(err, errlen, "%s: %s: expected %zu to %zu characters, found %zu", flag, path, min_len,
           max_len, len);
    return GW_ECONFIG;
  }
  if (!(*out = strdup(s))) return GW_ENOMEM;
  return 0;
}

void gw_config_usage(FILE *out) {
  static const struct {
    const char *section, *title;
  } groups[] = {
      {"", "Command line"},
      {"ingest", "[ingest] receiving sketches (ZeroMQ)"},
      {"http", "[http] dashboard, API, /metrics"},
      {"store", "[store] SQLite persistence"},
      {"window", "[window] the statistics"},
      {"daemon", "[daemon] logging"},
      {"alertmanager", "[alertmanager] pushing alerts (key K is --alertmanager-K)"},
  };
  fputs("Usage: gradwatchd [--config FILE] [OPTION]...\n"
        "  or:  gradwatchd --check-config FILE\n"
        "Receive gradient sketches from training runs, compute windowed\n"
        "predictability and rank statistics per stream, store them, serve them.\n\n"
        "Every option below a [section] heading is also a key of that section of\n"
        "the INI file (--foo-bar is key foo_bar); options win over the file, and\n"
        "a repeatable option on the command line replaces the file's list.\n",
        out);
  for (size_t g = 0; g < sizeof(groups) / sizeof(groups[0]); g++) {
    fprintf(out, "\n%s:\n", groups[g].title);
    for (size_t i = 0; i < N_OPTS; i++) {
      const opt_t *o = &opts[i];
      if (strcmp(o->section, groups[g].section)) continue;
      char left[64];
      if (o->type == T_BOOL)
        snprintf(left, sizeof(left), "--%s[=BOOL]", o->name);
      else
        snprintf(left, sizeof(left), "--%s%s%s", o->name, o->arg ? " " : "", o->arg ? o->arg : "");
      if (strlen(left) > 24)
        fprintf(out, "  %s\n  %-24s  %s\n", left, "", o->help);
      else
        fprintf(out, "  %-24s  %s\n", left, o->help);
    }
  }
  fputs("\nExamples:\n"
        "  gradwatchd --config /etc/gradwatch/gradwatchd.conf\n"
        "  gradwatchd --zmq tcp://0.0.0.0:5557 --http 0.0.0.0:8080 --db /var/lib/gradwatch/gradwatch.db\n"
        "  gradwatchd --db :memory: --window 128 --rank-every 1 --log-level debug\n"
        "  gradwatchd --check-config /etc/gradwatch/gradwatchd.conf\n",
        out);
}
