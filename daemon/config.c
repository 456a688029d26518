/* config.c — defaults, INI file (libinih) and command-line flags, in that
 * order of precedence, for gradwatchd.
 *
 * One table, `opts`, names every setting once: its flag, its INI section and
 * key, whether it takes a value, and how the value is applied. Both the INI
 * handler and the flag parser go through `apply`, so a key and its flag can
 * never disagree. [alert NAME] sections and the [alerts] section belong to
 * the alerts module, which reads the same file itself.
 */
#include "config.h"

#include <errno.h>
#include <ini.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef enum { T_STR, T_LIST, T_U32, T_DOUBLE, T_BOOL, T_SHARD, T_FLAG } opt_type_t;

typedef struct opt_s {
  const char *name;    /* flag without dashes; INI key with '-' → '_' */
  const char *section; /* INI section */
  opt_type_t type;
  size_t off;       /* offset of the field in gw_config_t */
  size_t count_off; /* T_LIST: offset of the count */
  double min, max;  /* numeric bounds */
  const char *help;
} opt_t;

#define F(field) offsetof(gw_config_t, field)
#define E(field) offsetof(gw_config_t, engine.field)

static const opt_t opts[] = {
    {"config", "", T_STR, F(config_path), 0, 0, 0, "INI config file"},
    {"zmq", "ingest", T_LIST, F(zmq), F(n_zmq), 0, 0,
     "bind a SUB socket (repeatable; default tcp://127.0.0.1:5557)"},
    {"zmq-pull", "ingest", T_LIST, F(zmq_pull), F(n_zmq_pull), 0, 0,
     "bind a PULL socket (repeatable)"},
    {"zmq-subscribe", "ingest", T_LIST, F(zmq_subscribe), F(n_zmq_subscribe), 0, 0,
     "topic prefix to subscribe to (repeatable; default all)"},
    {"zmq-rcvhwm", "ingest", T_U32, F(zmq_rcvhwm), 0, 1, 10000000,
     "ZeroMQ receive high-water mark per socket (100000)"},
    {"shard", "ingest", T_SHARD, 0, 0, 0, 0, "i/N: keep only runs whose hash falls in shard i of N"},
    {"max-streams", "ingest", T_U32, E(max_streams), 0, 1, 10000000, "stream cap (10000)"},
    {"max-k", "ingest", T_U32, E(max_k), 0, 1, 65536, "largest sketch length accepted (65536)"},
    {"curve-secret-key", "ingest", T_STR, F(curve_secret_key), 0, 0, 0,
     "file with the daemon's Z85 CURVE secret key (enables CURVE)"},
    {"curve-allow", "ingest", T_STR, F(curve_allow), 0, 0, 0,
     "directory of allowed publisher public keys"},
    {"http", "http", T_STR, F(http), 0, 0, 0, "HTTP listen ADDR:PORT (127.0.0.1:8080)"},
    {"http-token-file", "http", T_STR, F(http_token_file), 0, 0, 0,
     "require Authorization: Bearer <token in FILE>"},
    {"http-cert", "http", T_STR, F(http_cert), 0, 0, 0,
     "serve HTTPS with this PEM certificate (chain) file (needs --http-key)"},
    {"http-key", "http", T_STR, F(http_key), 0, 0, 0, "PEM private key file for --http-cert"},
    {"metrics-tags", "http", T_STR, F(metrics_tags), 0, 0, 0,
     "glob of tags exported per stream on /metrics (*)"},
    {"db", "store", T_STR, F(db), 0, 0, 0, "SQLite database (./gradwatch.db; :memory: allowed)"},
    {"retention-days", "store", T_U32, F(retention_days), 0, 0, 100000, "delete points older than N days (0 = keep)"},
    {"max-db-mb", "store", T_U32, F(max_db_mb), 0, 0, 100000000, "cap the database size (0 = none)"},
    {"store-every", "store", T_U32, F(store_every), 0, 1, 1000000, "store every Nth point per stream (1)"},
    {"flush-ms", "store", T_U32, F(flush_ms), 0, 10, 1000, "max delay before points are committed (200)"},
    {"store-sketches", "store", T_BOOL, F(store_sketches), 0, 0, 0, "also keep raw sketches"},
    {"window", "window", T_U32, E(window), 0, 2, 4096, "window W (64)"},
    {"rank-every", "window", T_U32, E(rank_every), 0, 1, 1000000, "recompute rank fields every N points (8)"},
    {"ema-beta", "window", T_DOUBLE, E(ema_beta), 0, 0, 0.999999, "EMA predictor beta (0.9)"},
    {"stream-idle", "window", T_U32, F(stream_idle), 0, 1, 315360000,
     "retire a stream silent this many seconds (3600)"},
    {"engine-threads", "window", T_U32, F(engine_threads), 0, 1, 64,
     "threads computing windows (number of CPUs, at most 8)"},
    {"log-level", "daemon", T_STR, F(log_level), 0, 0, 0, "error|warn|info|debug (info)"},
    {"log-file", "daemon", T_STR, F(log_file), 0, 0, 0, "log to FILE instead of stderr (reopened on SIGHUP)"},
    {"help", "", T_FLAG, F(want_help), 0, 0, 0, "this text"},
    {"version", "", T_FLAG, F(want_version), 0, 0, 0, "print the version"},
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
  c->flush_ms = 200;
  long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  c->engine_threads = cpus < 1 ? 1 : cpus > 8 ? 8 : (uint32_t)cpus;
  c->stream_idle = 3600;
}

static void free_list(char **list, size_t *n) {
  for (size_t i = 0; i < *n; i++) free(list[i]);
  *n = 0;
}

void gw_config_free(gw_config_t *c) {
  for (size_t i = 0; i < N_OPTS; i++) {
    const opt_t *o = &opts[i];
    if (o->type == T_STR) {
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

/* Apply value v to option o. `replace` clears a list before its first
 * command-line item (flags replace the file's list). */
static int apply(gw_config_t *c, const opt_t *o, const char *v, int *list_fresh,
                 char *err, size_t errlen) {
  char *base = (char *)c;
  switch (o->type) {
    case T_STR: {
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

typedef struct ini_ctx_s {
  gw_config_t *c;
  const char *path;
  char *err;
  size_t errlen;
  int rc;
} ini_ctx_t;

static int on_ini(void *user, const char *section, const char *name,
                  const char *value) {
  ini_ctx_t *x = user;
  if (x->rc) return 0;
  /* The alerts module owns [alerts] and [alert NAME]. */
  if (!strcmp(section, "alerts") || !strncmp(section, "alert ", 6)) return 1;
  const opt_t *o = find_opt(name);
  int known_section = !strcmp(section, "ingest") || !strcmp(section, "http") ||
                      !strcmp(section, "store") || !strcmp(section, "window") ||
                      !strcmp(section, "daemon");
  if (!known_section) {
    fail(x->err, x->errlen, "unknown section [%s]", section);
    x->rc = GW_ECONFIG;
    return 0;
  }
  if (!o || o->type == T_FLAG || strcmp(o->section, section)) {
    fail(x->err, x->errlen, "unknown key '%s' in [%s]", name, section);
    x->rc = GW_ECONFIG;
    return 0;
  }
  char sub[512];
  int rc = apply(x->c, o, value, NULL, sub, sizeof(sub));
  if (rc) {
    fail(x->err, x->errlen, "[%s] %s", section, sub);
    x->rc = rc;
    return 0;
  }
  return 1;
}

int gw_config_load_file(gw_config_t *c, const char *path, char *err, size_t errlen) {
  FILE *f = fopen(path, "r");
  if (!f) {
    int e = errno;
    fail(err, errlen, "%s: %s", path, strerror(e));
    return GW_ECONFIG;
  }
  ini_ctx_t x = {c, path, err, errlen, 0};
  /* A handler returning 0 makes ini_parse_file return that line. */
  int line = ini_parse_file(f, on_ini, &x);
  fclose(f);
  if (x.rc) {
    char msg[512];
    snprintf(msg, sizeof(msg), "%s", err);
    fail(err, errlen, "%s:%d: %s", path, line, msg);
    return x.rc;
  }
  if (line > 0) {
    fail(err, errlen, "%s:%d: syntax error", path, line);
    return GW_ECONFIG;
  }
  if (line < 0) {
    fail(err, errlen, "%s: cannot parse", path);
    return GW_ECONFIG;
  }
  return 0;
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

int gw_config_parse(gw_config_t *c, int argc, char **argv, char *err, size_t errlen) {
  int rc;
  /* Pass 1: --config, so flags can override the file. */
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--config") && i + 1 < argc) {
      if ((rc = apply(c, find_opt("config"), argv[i + 1], NULL, err, errlen))) return rc;
    } else if (!strncmp(a, "--config=", 9)) {
      if ((rc = apply(c, find_opt("config"), a + 9, NULL, err, errlen))) return rc;
    }
  }
  if (c->config_path && (rc = gw_config_load_file(c, c->config_path, err, errlen)))
    return rc;
  /* Pass 2: every flag. */
  int fresh[N_OPTS] = {0};
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strncmp(a, "--", 2) != 0 || a[2] == '\0') {
      fail(err, errlen, "unexpected argument '%s' (see --help)", a);
      return GW_ECONFIG;
    }
    char name[64];
    const char *eq = strchr(a + 2, '='), *val = NULL;
    size_t len = eq ? (size_t)(eq - (a + 2)) : strlen(a + 2);
    if (len >= sizeof(name)) len = sizeof(name) - 1;
    memcpy(name, a + 2, len);
    name[len] = '\0';
    const opt_t *o = find_opt(name);
    if (!o || !name_eq(o->name, name) || strchr(name, '_')) {
      fail(err, errlen, "unknown flag '--%s' (see --help)", name);
      return GW_ECONFIG;
    }
    if (o->type == T_FLAG || o->type == T_BOOL) {
      if (eq) {
        val = eq + 1;
      } else {
        val = "true";
      }
      if (o->type == T_FLAG && eq) {
        fail(err, errlen, "--%s takes no value", o->name);
        return GW_ECONFIG;
      }
    } else if (eq) {
      val = eq + 1;
    } else if (i + 1 < argc) {
      val = argv[++i];
    } else {
      fail(err, errlen, "--%s needs a value", o->name);
      return GW_ECONFIG;
    }
    if (!strcmp(o->name, "config")) continue;
    if ((rc = apply(c, o, val, &fresh[o - opts], err, errlen))) return rc;
  }
  if ((rc = apply_defaults_after(c))) return rc;
  if (c->want_help || c->want_version) return 0;
  return validate(c, err, errlen);
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
  fputs("usage: gradwatchd [--config FILE] [flags]\n"
        "Every flag is also a key in the INI file's section shown in brackets\n"
        "(--foo-bar is key foo_bar); flags win over the file.\n\n",
        out);
  for (size_t i = 0; i < N_OPTS; i++) {
    const opt_t *o = &opts[i];
    const char *arg = (o->type == T_FLAG || o->type == T_BOOL) ? "" : " V";
    char left[64];
    snprintf(left, sizeof(left), "--%s%s", o->name, arg);
    fprintf(out, "  %-26s %s%s%s%s\n", left, o->help, *o->section ? " [" : "",
            o->section, *o->section ? "]" : "");
  }
}
