/* alerts.c — rules, per-(rule, stream) states, transitions and where they
 * are sent. See alerts.h for the data flow and threads, docs/ALERTS.md for
 * the rules as operators write them.
 *
 * NOTES ON THE DESIGN
 *
 * Rules. A ruleset is parsed whole (the shipped defaults, then the file; a
 * user rule replaces the default of the same name) and validated before it
 * replaces the one in force, so a broken file changes nothing.
 *
 * Streams. A chained hash table keyed by (run, tag) holds one entry per
 * stream seen since start, with the states of the rules whose run and tag
 * globs match it (matched once, when the stream is first seen, and again at
 * reload). A stream matching no rule keeps an entry without states, so its
 * globs are not matched again on every point. Entries plus states are capped
 * at max_states; a stream silent for forget_after seconds is dropped.
 *
 * States of one (rule, stream):
 *
 *     INACTIVE --breach--> PENDING --for_steps consecutive breaches--> FIRING
 *        ^  ^                 |                                          |
 *        |  +--no breach------+                                          |
 *        +-------------- value back past `resolve` (notified: resolved) --+
 *
 * with for_steps = 1 a breach goes straight to FIRING. Only FIRING and its
 * end are persisted and notified: a PENDING state is the count-down of
 * for_steps, most end without firing, and writing each would flood the
 * store and the receivers with noise. A NaN value is no data: it moves
 * nothing. eval() makes every point move; tick() fires stalled rules and
 * forgets silent streams; forget() and reload resolve what disappears.
 *
 * Relative rules compare value / median(baseline), where the baseline is the
 * last `window` values of the stream's metric that were seen while the
 * state was INACTIVE: values seen while PENDING or FIRING are not absorbed,
 * so a sustained departure cannot become its own baseline. The baseline is
 * a ring (insertion order) plus a sorted copy: an update is a binary search
 * and a memmove of at most window doubles, the median is O(1).
 *
 * Threads. observe (ingest's workers, one at a time), tick and reload (the
 * loop thread) and forget serialise on `eval_mu`, which guards the rules,
 * the streams and their states. The HTTP side (gw_alerts_metrics,
 * gw_alerts_firing_count) reads `firing`, the counters and the webhook list
 * under `mu`, which the evaluating side takes only on a transition or a
 * reload. Lock order: eval_mu, then mu, then a webhook's own mutex.
 */
#include "alerts.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fnmatch.h>
#include <ini.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "http.h"
#include "live.h"
#include "log.h"
#include "point.h"
#include "store.h"
#include "webhook.h"

#define MAX_WEBHOOKS 8
#define NAME_MAX_LEN 64
#define TEXT_MAX_LEN 4096
#define INI_LINE_MAX INI_MAX_LINE /* libinih's line buffer (200 in Debian's build) */
#define CAPPED_LOG_NS 60000000000LL /* log "states capped" at most once a minute */
#define SEEN_UNKNOWN INT64_MIN      /* last_seen of a restored stream until the first tick */

enum { K_THRESHOLD, K_RELATIVE, K_STALLED };
enum { OP_GT, OP_GE, OP_LT, OP_LE };
enum { P_INACTIVE, P_PENDING, P_FIRING };

static const char *const kind_names[] = {"threshold", "relative", "stalled"};
static const char *const op_names[] = {">", ">=", "<", "<="};

/* Keys of an [alert NAME] section; a bit each in rule_t.given. */
enum {
  KEY_KIND,
  KEY_METRIC,
  KEY_OP,
  KEY_THRESHOLD,
  KEY_RESOLVE,
  KEY_FOR_STEPS,
  KEY_WINDOW,
  KEY_MIN_POINTS,
  KEY_SECONDS,
  KEY_SEVERITY,
  KEY_RUN,
  KEY_TAG,
  KEY_SUMMARY,
  KEY_DESCRIPTION,
  KEY_MIN_BASELINE,
  KEY_COUNT
};
static const char *const key_names[KEY_COUNT] = {
    "kind",       "metric",  "op",       "threshold", "resolve", "for_steps", "window",
    "min_points", "seconds", "severity", "run",       "tag",     "summary",   "description",
    "min_baseline"};

typedef struct rule_s {
  char *name;
  int kind, metric, op;
  double threshold, resolve;
  uint32_t for_steps, window, min_points;
  double seconds;
  double min_baseline; /* relative: no verdict while the median is below it */
  char *severity, *run_glob, *tag_glob, *summary, *description;
  unsigned given; /* 1 << KEY_* of the keys present */
} rule_t;

typedef struct ruleset_s {
  rule_t *rules;
  size_t n, cap;
  char *webhooks[MAX_WEBHOOKS];
  size_t n_webhooks;
  gw_webhook_config_t wh; /* everything but the url */
  int defaults;
  char *external_url, *receiver;
  uint32_t max_states;
  double forget_after; /* seconds; 0 = never */
  unsigned given;      /* [alerts] scalar keys present (duplicates) */
} ruleset_t;

typedef struct state_s {
  uint32_t rule; /* index in the ruleset in force */
  uint8_t phase;
  uint32_t breaches; /* consecutive, while PENDING */
  uint64_t id;       /* store id while FIRING */
  uint64_t started_step;
  int64_t started_ns, fired_ns; /* wall clock */
  double value;                 /* what tripped: ratio for relative, seconds for stalled */
  char *labels, *annotations;   /* JSON text, while FIRING */
  double *ring, *sorted;        /* relative: window values each, one allocation */
  uint32_t len, head;
} state_t;

typedef struct stream_s {
  struct stream_s *next;
  uint64_t hash;
  char *run, *tag; /* into names[] */
  int64_t last_seen; /* monotonic ns of the last point; SEEN_UNKNOWN */
  uint64_t last_step;
  state_t *states;
  uint32_t n;
  char names[];
} stream_t;

typedef struct firing_s {
  uint64_t id;
  char *rule, *run, *tag, *severity; /* one allocation at rule */
} firing_t;

struct gw_alerts_s {
  gw_alerts_deps_t deps;
  pthread_mutex_t eval_mu; /* rules, streams, states: see Threads above */
  ruleset_t rs;
  stream_t **buckets;
  size_t nbuckets, n_streams;
  size_t n_states; /* real (rule, stream) states */
  size_t used;     /* what max_states caps: states + streams without states */
  uint64_t local_id;
  uint64_t capped, capped_unlogged;
  int64_t capped_logged_ns;
  /* shared with HTTP threads, under mu */
  pthread_mutex_t mu;
  gw_webhook_t *wh[MAX_WEBHOOKS];
  size_t n_wh;
  firing_t *firing;
  size_t n_firing, cap_firing;
  uint64_t fired, resolved;
  gw_webhook_stats_t retired; /* counters of webhooks replaced at reload */
};

/* Tuned on examples/train_digits.py (docs/ALERTS.md has the runs and the
 * numbers): silent on healthy SGD/Adam runs, minibatch and full batch;
 * rank_collapse fires 4-24 points after an lr change that makes the run
 * diverge, kappa_surge confirms ~70 points later. They watch the whole-model
 * stream `all` that every gradwatch client publishes: one alert per run,
 * not one per layer. */
const char GW_ALERTS_DEFAULT_RULES[] =
    "[alert rank_collapse]\n"
    "tag = all\n"
    "kind = relative\n"
    "metric = rank_90\n"
    "op = <\n"
    "threshold = 0.3\n"
    "resolve = 0.5\n"
    "for_steps = 4\n"
    "window = 128\n"
    "min_points = 64\n"
    "min_baseline = 4\n"
    "severity = critical\n"
    "summary = predictability collapse on {run}/{tag}: rank_90 fell to {observed}, {value}x its "
    "trailing median {baseline}\n"
    "description = One direction dominates the gradient increments of the window since step\n"
    "  {started_step} (a gradient spike, divergence): the predictable rank left the run's regime\n"
    "  (below {threshold}x the median of the last {window} healthy points for {for_steps} points).\n"
    "[alert kappa_surge]\n"
    "tag = all\n"
    "kind = relative\n"
    "metric = kappa_ema\n"
    "op = >\n"
    "threshold = 20\n"
    "resolve = 2\n"
    "for_steps = 4\n"
    "window = 128\n"
    "min_points = 64\n"
    "severity = critical\n"
    "summary = predictability collapse on {run}/{tag}: kappa_ema {observed} is {value}x its "
    "trailing median {baseline}\n"
    "description = The EMA predictor's relative path length left the run's regime at step\n"
    "  {started_step} (above {threshold}x the median of the last {window} healthy points for\n"
    "  {for_steps} points).\n"
    "[alert stream_stalled]\n"
    "tag = all\n"
    "kind = stalled\n"
    "seconds = 600\n"
    "severity = warning\n"
    "summary = no message from {run}/{tag} for {seconds} s (last step {step})\n";

/* ------------------------------------------------------------ utilities */

static int64_t wall_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void say(char *err, size_t errlen, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
}

static void logf_(gw_alerts_t *a, int level, const char *event, const char *fmt, ...) {
  if (!a->deps.log) return;
  char kv[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(kv, sizeof(kv), fmt, ap);
  va_end(ap);
  a->deps.log(a->deps.log_arg, level, event, kv);
}

/* logfmt-quoted copy of s (for names that may hold '=' or spaces). */
static const char *q(char *buf, size_t cap, const char *s) {
  size_t j = 0;
  if (cap < 3) return "";
  buf[j++] = '"';
  for (; s && *s && j + 3 < cap; s++) {
    if (*s == '"' || *s == '\\') buf[j++] = '\\';
    buf[j++] = *s == '\n' ? ' ' : *s;
  }
  buf[j++] = '"';
  buf[j] = '\0';
  return buf;
}

static void fmt_num(char *buf, size_t cap, double v) {
  if (isnan(v)) snprintf(buf, cap, "n/a");
  else snprintf(buf, cap, "%.4g", v);
}

/* ----------------------------------------------------------- the rules */

static void rule_free(rule_t *r) {
  free(r->name);
  free(r->severity);
  free(r->run_glob);
  free(r->tag_glob);
  free(r->summary);
  free(r->description);
  memset(r, 0, sizeof(*r));
}

static void ruleset_free(ruleset_t *rs) {
  for (size_t i = 0; i < rs->n; i++) rule_free(&rs->rules[i]);
  free(rs->rules);
  for (size_t i = 0; i < rs->n_webhooks; i++) free(rs->webhooks[i]);
  free(rs->external_url);
  free(rs->receiver);
  memset(rs, 0, sizeof(*rs));
}

static void ruleset_init(ruleset_t *rs) {
  memset(rs, 0, sizeof(*rs));
  gw_webhook_config_default(&rs->wh);
  rs->defaults = 1;
  rs->max_states = 65536;
  rs->forget_after = 86400;
}

static rule_t *find_rule(ruleset_t *rs, const char *name) {
  for (size_t i = 0; i < rs->n; i++)
    if (!strcmp(rs->rules[i].name, name)) return &rs->rules[i];
  return NULL;
}

static rule_t *add_rule(ruleset_t *rs, const char *name) {
  if (rs->n == rs->cap) {
    size_t nc = rs->cap ? 2 * rs->cap : 8;
    rule_t *nr = realloc(rs->rules, nc * sizeof(*nr));
    if (!nr) return NULL;
    rs->rules = nr;
    rs->cap = nc;
  }
  rule_t *r = &rs->rules[rs->n];
  memset(r, 0, sizeof(*r));
  r->metric = -1;
  if (!(r->name = strdup(name))) return NULL;
  rs->n++;
  return r;
}

typedef struct parse_s {
  ruleset_t *rs;
  char *msg; /* first error, without file and line */
  size_t msglen;
  int rc;
} parse_t;

static int parse_double(const char *v, double *out) {
  char *end;
  errno = 0;
  double x = strtod(v, &end);
  if (errno || end == v || *end || !isfinite(x)) return -1;
  *out = x;
  return 0;
}

static int parse_u32(const char *v, uint32_t lo, uint32_t hi, uint32_t *out) {
  char *end;
  if (*v < '0' || *v > '9') return -1;
  errno = 0;
  unsigned long long x = strtoull(v, &end, 10);
  if (errno || *end || x < lo || x > hi) return -1;
  *out = (uint32_t)x;
  return 0;
}

static int parse_bool(const char *v, int *out) {
  if (!strcmp(v, "true") || !strcmp(v, "yes") || !strcmp(v, "on") || !strcmp(v, "1"))
    *out = 1;
  else if (!strcmp(v, "false") || !strcmp(v, "no") || !strcmp(v, "off") || !strcmp(v, "0"))
    *out = 0;
  else
    return -1;
  return 0;
}

static int valid_name(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > NAME_MAX_LEN) return 0;
  for (; *s; s++)
    if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
          *s == '_' || *s == '-' || *s == '.' || *s == ':'))
      return 0;
  return 1;
}

/* Replace *dst by a copy of v; 0 or GW_ENOMEM. */
static int set_str(char **dst, const char *v) {
  char *d = strdup(v);
  if (!d) return GW_ENOMEM;
  free(*dst);
  *dst = d;
  return 0;
}

/* summary/description: a repeated key (or an inih continuation line, an
 * indented line under it) continues the text after a space. */
static int append_str(char **dst, const char *v) {
  if (!*dst) return set_str(dst, v);
  size_t a = strlen(*dst), b = strlen(v);
  if (a + b + 2 > TEXT_MAX_LEN) return GW_EINVAL;
  char *d = realloc(*dst, a + b + 2);
  if (!d) return GW_ENOMEM;
  d[a] = ' ';
  memcpy(d + a + 1, v, b + 1);
  *dst = d;
  return 0;
}

#define PFAIL(...)                         \
  do {                                     \
    say(p->msg, p->msglen, __VA_ARGS__);   \
    p->rc = GW_ECONFIG;                    \
    return 0;                              \
  } while (0)

static int rule_key(parse_t *p, rule_t *r, const char *name, const char *v) {
  int k;
  for (k = 0; k < KEY_COUNT; k++)
    if (!strcmp(key_names[k], name)) break;
  if (k == KEY_COUNT) PFAIL("[alert %s] %s: unknown key", r->name, name);
  if ((r->given & (1u << k)) && k != KEY_SUMMARY && k != KEY_DESCRIPTION)
    PFAIL("[alert %s] %s: given twice", r->name, name);
  r->given |= 1u << k;
  int rc = 0;
  switch (k) {
    case KEY_KIND:
      for (r->kind = 0; r->kind < 3; r->kind++)
        if (!strcmp(v, kind_names[r->kind])) break;
      if (r->kind == 3)
        PFAIL("[alert %s] kind: '%s' is not threshold, relative or stalled", r->name, v);
      break;
    case KEY_METRIC:
      if ((r->metric = gw_metric_lookup(v, strlen(v))) < 0)
        PFAIL("[alert %s] metric: '%s' is not a metric name (see daemon/point.h)", r->name, v);
      break;
    case KEY_OP:
      for (r->op = 0; r->op < 4; r->op++)
        if (!strcmp(v, op_names[r->op])) break;
      if (r->op == 4) PFAIL("[alert %s] op: '%s' is not >, >=, < or <=", r->name, v);
      break;
    case KEY_THRESHOLD:
      if (parse_double(v, &r->threshold))
        PFAIL("[alert %s] threshold: '%s' is not a finite number", r->name, v);
      break;
    case KEY_RESOLVE:
      if (parse_double(v, &r->resolve))
        PFAIL("[alert %s] resolve: '%s' is not a finite number", r->name, v);
      break;
    case KEY_FOR_STEPS:
      if (parse_u32(v, 1, 1000000, &r->for_steps))
        PFAIL("[alert %s] for_steps: '%s' is not an integer in [1, 1000000]", r->name, v);
      break;
    case KEY_WINDOW:
      if (parse_u32(v, 2, 4096, &r->window))
        PFAIL("[alert %s] window: '%s' is not an integer in [2, 4096]", r->name, v);
      break;
    case KEY_MIN_POINTS:
      if (parse_u32(v, 1, 4096, &r->min_points))
        PFAIL("[alert %s] min_points: '%s' is not an integer in [1, 4096]", r->name, v);
      break;
    case KEY_SECONDS:
      if (parse_double(v, &r->seconds) || r->seconds <= 0 || r->seconds > 1e7)
        PFAIL("[alert %s] seconds: '%s' is not a number in (0, 1e7]", r->name, v);
      break;
    case KEY_MIN_BASELINE:
      if (parse_double(v, &r->min_baseline) || r->min_baseline < 0)
        PFAIL("[alert %s] min_baseline: '%s' is not a number >= 0", r->name, v);
      break;
    case KEY_SEVERITY:
      if (strcmp(v, "info") && strcmp(v, "warning") && strcmp(v, "critical"))
        PFAIL("[alert %s] severity: '%s' is not info, warning or critical", r->name, v);
      rc = set_str(&r->severity, v);
      break;
    case KEY_RUN:
    case KEY_TAG:
      if (!*v) PFAIL("[alert %s] %s: empty glob", r->name, name);
      rc = set_str(k == KEY_RUN ? &r->run_glob : &r->tag_glob, v);
      break;
    case KEY_SUMMARY:
    case KEY_DESCRIPTION:
      rc = append_str(k == KEY_SUMMARY ? &r->summary : &r->description, v);
      if (rc == GW_EINVAL)
        PFAIL("[alert %s] %s: longer than %d bytes", r->name, name, TEXT_MAX_LEN);
      break;
  }
  if (rc) {
    p->rc = rc;
    say(p->msg, p->msglen, "out of memory");
    return 0;
  }
  return 1;
}

enum {
  AK_WEBHOOK_TIMEOUT,
  AK_WEBHOOK_RETRIES,
  AK_WEBHOOK_BACKOFF,
  AK_WEBHOOK_QUEUE,
  AK_DEFAULTS,
  AK_EXTERNAL_URL,
  AK_RECEIVER,
  AK_MAX_STATES,
  AK_FORGET_AFTER,
  AK_COUNT
};
static const char *const akey_names[AK_COUNT] = {
    "webhook_timeout_ms", "webhook_retries", "webhook_backoff_ms", "webhook_queue",
    "defaults",           "external_url",    "receiver",           "max_states",
    "forget_after"};

static int alerts_key(parse_t *p, const char *name, const char *v) {
  ruleset_t *rs = p->rs;
  if (!strcmp(name, "webhook")) {
    if (rs->n_webhooks == MAX_WEBHOOKS) PFAIL("[alerts] webhook: at most %d", MAX_WEBHOOKS);
    if (strncmp(v, "http://", 7) && strncmp(v, "https://", 8))
      PFAIL("[alerts] webhook: '%s' is not an http:// or https:// URL", v);
    for (size_t i = 0; i < rs->n_webhooks; i++)
      if (!strcmp(rs->webhooks[i], v)) PFAIL("[alerts] webhook: '%s' given twice", v);
    if (!(rs->webhooks[rs->n_webhooks] = strdup(v))) goto nomem;
    rs->n_webhooks++;
    return 1;
  }
  int k;
  for (k = 0; k < AK_COUNT; k++)
    if (!strcmp(akey_names[k], name)) break;
  if (k == AK_COUNT) PFAIL("[alerts] %s: unknown key", name);
  if (rs->given & (1u << k)) PFAIL("[alerts] %s: given twice", name);
  rs->given |= 1u << k;
  uint32_t u;
  switch (k) {
    case AK_WEBHOOK_TIMEOUT:
      if (parse_u32(v, 10, 600000, &rs->wh.timeout_ms))
        PFAIL("[alerts] webhook_timeout_ms: '%s' is not an integer in [10, 600000]", v);
      break;
    case AK_WEBHOOK_RETRIES:
      if (parse_u32(v, 0, 20, &rs->wh.retries))
        PFAIL("[alerts] webhook_retries: '%s' is not an integer in [0, 20]", v);
      break;
    case AK_WEBHOOK_BACKOFF:
      if (parse_u32(v, 1, 600000, &rs->wh.backoff_ms))
        PFAIL("[alerts] webhook_backoff_ms: '%s' is not an integer in [1, 600000]", v);
      break;
    case AK_WEBHOOK_QUEUE:
      if (parse_u32(v, 1, 1000000, &u))
        PFAIL("[alerts] webhook_queue: '%s' is not an integer in [1, 1000000]", v);
      rs->wh.queue_max = u;
      break;
    case AK_DEFAULTS:
      if (parse_bool(v, &rs->defaults)) PFAIL("[alerts] defaults: '%s' is not true or false", v);
      break;
    case AK_EXTERNAL_URL:
      if (set_str(&rs->external_url, v)) goto nomem;
      break;
    case AK_RECEIVER:
      if (set_str(&rs->receiver, v)) goto nomem;
      break;
    case AK_MAX_STATES:
      if (parse_u32(v, 1, 100000000, &rs->max_states))
        PFAIL("[alerts] max_states: '%s' is not an integer in [1, 100000000]", v);
      break;
    case AK_FORGET_AFTER:
      if (parse_double(v, &rs->forget_after) || rs->forget_after < 0 || rs->forget_after > 1e9)
        PFAIL("[alerts] forget_after: '%s' is not a number of seconds in [0, 1e9]", v);
      break;
  }
  return 1;
nomem:
  p->rc = GW_ENOMEM;
  say(p->msg, p->msglen, "out of memory");
  return 0;
}

static int on_ini(void *user, const char *section, const char *name, const char *value) {
  parse_t *p = user;
  if (p->rc) return 0;
  if (!strcmp(section, "alerts")) return alerts_key(p, name, value);
  if (strncmp(section, "alert ", 6)) return 1; /* another module's section */
  const char *rn = section + 6;
  while (*rn == ' ') rn++;
  if (!valid_name(rn))
    PFAIL("[alert %s]: a rule name is 1-%d characters of [A-Za-z0-9_.:-]", rn, NAME_MAX_LEN);
  rule_t *r = find_rule(p->rs, rn);
  if (!r && !(r = add_rule(p->rs, rn))) {
    p->rc = GW_ENOMEM;
    say(p->msg, p->msglen, "out of memory");
    return 0;
  }
  return rule_key(p, r, name, value);
}

/* Fill the defaults of one rule and check it as a whole (keys that need
 * each other or don't belong to its kind). */
static int rule_finish(rule_t *r, char *msg, size_t msglen) {
  static const unsigned only_metric_kinds = (1u << KEY_METRIC) | (1u << KEY_OP) |
                                            (1u << KEY_THRESHOLD) | (1u << KEY_RESOLVE) |
                                            (1u << KEY_FOR_STEPS);
  static const unsigned only_relative =
      (1u << KEY_WINDOW) | (1u << KEY_MIN_POINTS) | (1u << KEY_MIN_BASELINE);
  static const unsigned only_stalled = 1u << KEY_SECONDS;
  unsigned bad = r->kind == K_STALLED    ? (only_metric_kinds | only_relative)
                 : r->kind == K_RELATIVE ? only_stalled
                                         : (only_relative | only_stalled);
  for (int k = 0; k < KEY_COUNT; k++)
    if (r->given & bad & (1u << k)) {
      say(msg, msglen, "[alert %s] %s: not a key of kind = %s", r->name, key_names[k],
          kind_names[r->kind]);
      return GW_ECONFIG;
    }
  if (r->kind == K_STALLED) {
    if (!(r->given & (1u << KEY_SECONDS))) {
      say(msg, msglen, "[alert %s] seconds: required by kind = stalled", r->name);
      return GW_ECONFIG;
    }
  } else {
    if (!(r->given & (1u << KEY_METRIC))) {
      say(msg, msglen, "[alert %s] metric: required by kind = %s", r->name, kind_names[r->kind]);
      return GW_ECONFIG;
    }
    if (!(r->given & (1u << KEY_THRESHOLD))) {
      say(msg, msglen, "[alert %s] threshold: required by kind = %s", r->name,
          kind_names[r->kind]);
      return GW_ECONFIG;
    }
    if (!(r->given & (1u << KEY_RESOLVE))) r->resolve = r->threshold;
    if (!(r->given & (1u << KEY_FOR_STEPS))) r->for_steps = 1;
    int upward = r->op == OP_GT || r->op == OP_GE;
    if (upward ? r->resolve > r->threshold : r->resolve < r->threshold) {
      say(msg, msglen,
          "[alert %s] resolve: %g must be %s threshold %g (hysteresis: an alert firing on "
          "'%s' resolves when the value is no longer %s resolve)",
          r->name, r->resolve, upward ? "<=" : ">=", r->threshold, op_names[r->op],
          op_names[r->op]);
      return GW_ECONFIG;
    }
    if (r->kind == K_RELATIVE) {
      if (!(r->given & (1u << KEY_WINDOW))) r->window = 64;
      if (!(r->given & (1u << KEY_MIN_POINTS))) r->min_points = r->window;
      if (r->min_points > r->window) {
        say(msg, msglen, "[alert %s] min_points: %u is more than window %u", r->name,
            r->min_points, r->window);
        return GW_ECONFIG;
      }
      if (r->threshold <= 0 || r->resolve <= 0) {
        say(msg, msglen, "[alert %s] threshold: a relative rule compares value/median with a "
            "positive ratio", r->name);
        return GW_ECONFIG;
      }
    }
  }
  if ((!r->severity && set_str(&r->severity, "warning")) ||
      (!r->run_glob && set_str(&r->run_glob, "*")) || (!r->tag_glob && set_str(&r->tag_glob, "*")))
    return GW_ENOMEM;
  if (!r->summary) {
    const char *s = r->kind == K_STALLED
                        ? "no message from {run}/{tag} for {seconds} s"
                    : r->kind == K_RELATIVE
                        ? "{metric} on {run}/{tag} is {value}x its trailing median ({observed} vs {baseline})"
                        : "{metric} on {run}/{tag} is {value} ({op} {threshold})";
    if (set_str(&r->summary, s)) return GW_ENOMEM;
  }
  if (!r->description && set_str(&r->description, "")) return GW_ENOMEM;
  return 0;
}

/* Parse INI text (file f, or string s) into rs. *line gets inih's answer. */
static int parse_into(ruleset_t *rs, FILE *f, const char *s, int *line, char *msg, size_t msglen) {
  parse_t p = {rs, msg, msglen, 0};
  *line = f ? ini_parse_file(f, on_ini, &p) : ini_parse_string(s, on_ini, &p);
  if (p.rc) return p.rc;
  if (*line) {
    say(msg, msglen, *line > 0 ? "syntax error" : "cannot parse");
    return GW_ECONFIG;
  }
  return 0;
}

/* First line of f with INI_LINE_MAX - 1 characters or more (inih would cut
 * it and read the rest as a line of its own), or 0; f is rewound. */
static int long_line(FILE *f) {
  int c, line = 1, found = 0;
  size_t len = 0;
  while (!found && (c = getc(f)) != EOF) {
    if (c == '\n') {
      line++;
      len = 0;
    } else if (++len >= INI_LINE_MAX - 1) {
      found = line;
    }
  }
  rewind(f);
  return found;
}

/* The whole ruleset of path (NULL: defaults only): the file, then the
 * defaults under it unless it says defaults = false. */
static int load_ruleset(ruleset_t *out, const char *path, char *err, size_t errlen) {
  ruleset_t user, def;
  char msg[768] = "";
  int line = 0, rc = 0;
  ruleset_init(&user);
  ruleset_init(&def);
  if (path) {
    FILE *f = fopen(path, "r");
    if (!f) {
      say(err, errlen, "%s: %s", path, strerror(errno));
      rc = GW_ECONFIG;
      goto done;
    }
    if ((line = long_line(f)) > 0) {
      fclose(f);
      say(err, errlen, "%s:%d: line longer than %d characters (libinih's limit; continue a "
          "summary or description on indented lines)", path, line, INI_LINE_MAX - 1);
      rc = GW_ECONFIG;
      goto done;
    }
    rc = parse_into(&user, f, NULL, &line, msg, sizeof(msg));
    fclose(f);
    if (rc) {
      if (line > 0) say(err, errlen, "%s:%d: %s", path, line, msg);
      else say(err, errlen, "%s: %s", path, msg);
      goto done;
    }
    for (size_t i = 0; i < user.n; i++)
      if ((rc = rule_finish(&user.rules[i], msg, sizeof(msg)))) {
        say(err, errlen, "%s: %s", path, msg);
        goto done;
      }
  }
  if (user.defaults) {
    rc = parse_into(&def, NULL, GW_ALERTS_DEFAULT_RULES, &line, msg, sizeof(msg));
    for (size_t i = 0; !rc && i < def.n; i++) rc = rule_finish(&def.rules[i], msg, sizeof(msg));
    if (rc) {
      say(err, errlen, "built-in rules: %s", msg); /* a bug of ours: tests catch it */
      goto done;
    }
  }
  /* user rules replace defaults of the same name; defaults come first */
  for (size_t i = 0; i < user.n; i++) {
    rule_t *d = find_rule(&def, user.rules[i].name);
    if (d) {
      rule_free(d);
      *d = user.rules[i];
    } else {
      if (!add_rule(&def, "")) {
        rc = GW_ENOMEM;
        say(err, errlen, "out of memory");
        goto done;
      }
      free(def.rules[def.n - 1].name);
      def.rules[def.n - 1] = user.rules[i];
    }
    memset(&user.rules[i], 0, sizeof(rule_t));
  }
  /* [alerts] settings come from the user file */
  free(user.rules);
  user.rules = def.rules;
  user.n = def.n;
  user.cap = def.cap;
  def.rules = NULL;
  def.n = def.cap = 0;
  if ((!user.receiver && set_str(&user.receiver, "gradwatch")) ||
      (!user.external_url && set_str(&user.external_url, ""))) {
    rc = GW_ENOMEM;
    say(err, errlen, "out of memory");
    goto done;
  }
  *out = user;
  ruleset_init(&user);
done:
  ruleset_free(&user);
  ruleset_free(&def);
  return rc;
}

/* ------------------------------------------------------ baseline (median) */

static uint32_t lower_bound(const double *s, uint32_t n, double v) {
  uint32_t lo = 0, hi = n;
  while (lo < hi) {
    uint32_t mid = lo + (hi - lo) / 2;
    if (s[mid] < v) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/* Add v to the baseline of st (window w), evicting the oldest when full. */
static void absorb(state_t *st, uint32_t w, double v) {
  if (st->len == w) {
    double old = st->ring[st->head];
    uint32_t i = lower_bound(st->sorted, st->len, old);
    memmove(&st->sorted[i], &st->sorted[i + 1], (st->len - i - 1) * sizeof(double));
    st->len--;
  }
  uint32_t i = lower_bound(st->sorted, st->len, v);
  memmove(&st->sorted[i + 1], &st->sorted[i], (st->len - i) * sizeof(double));
  st->sorted[i] = v;
  st->len++;
  st->ring[st->head] = v;
  st->head = (st->head + 1) % w;
}

static double median(const state_t *st) {
  uint32_t n = st->len;
  if (n == 0) return NAN;
  return n % 2 ? st->sorted[n / 2] : 0.5 * (st->sorted[n / 2 - 1] + st->sorted[n / 2]);
}

/* ------------------------------------------------------------- streams */

static uint64_t key_hash(const char *run, const char *tag) {
  uint64_t h = 14695981039346656037ULL;
  for (const unsigned char *s = (const unsigned char *)run; *s; s++) h = (h ^ *s) * 1099511628211ULL;
  h = (h ^ 0xffu) * 1099511628211ULL;
  for (const unsigned char *s = (const unsigned char *)tag; *s; s++) h = (h ^ *s) * 1099511628211ULL;
  return h;
}

static stream_t **find_slot(gw_alerts_t *a, const char *run, const char *tag, uint64_t h) {
  stream_t **pp = &a->buckets[h & (a->nbuckets - 1)];
  for (; *pp; pp = &(*pp)->next)
    if ((*pp)->hash == h && !strcmp((*pp)->run, run) && !strcmp((*pp)->tag, tag)) break;
  return pp;
}

static int grow_table(gw_alerts_t *a) {
  size_t nb = a->nbuckets * 2;
  stream_t **b = calloc(nb, sizeof(*b));
  if (!b) return GW_ENOMEM;
  for (size_t i = 0; i < a->nbuckets; i++)
    for (stream_t *s = a->buckets[i], *next; s; s = next) {
      next = s->next;
      s->next = b[s->hash & (nb - 1)];
      b[s->hash & (nb - 1)] = s;
    }
  free(a->buckets);
  a->buckets = b;
  a->nbuckets = nb;
  return 0;
}

static int rule_matches(const rule_t *r, const char *run, const char *tag) {
  return fnmatch(r->run_glob, run, 0) == 0 && fnmatch(r->tag_glob, tag, 0) == 0;
}

static void state_release(state_t *st) {
  free(st->ring);
  free(st->labels);
  free(st->annotations);
  st->ring = st->sorted = NULL;
  st->labels = st->annotations = NULL;
}

static int state_init(state_t *st, uint32_t rule_idx, const rule_t *r) {
  memset(st, 0, sizeof(*st));
  st->rule = rule_idx;
  if (r->kind == K_RELATIVE) {
    if (!(st->ring = malloc(2 * (size_t)r->window * sizeof(double)))) return GW_ENOMEM;
    st->sorted = st->ring + r->window;
  }
  return 0;
}

static uint64_t cost(uint32_t n_states) { return n_states ? n_states : 1; }

/* The (rule index) states of a stream (run, tag) under rs: matched rules,
 * at most `room` of them. Returns the count in *n (states allocated) and
 * whether some were left out in *capped. */
static int build_states(const ruleset_t *rs, const char *run, const char *tag, size_t room,
                        state_t **out, uint32_t *n, int *capped) {
  uint32_t c = 0;
  state_t *sts = NULL;
  *out = NULL;
  *n = 0;
  *capped = 0;
  for (size_t i = 0; i < rs->n; i++) c += rule_matches(&rs->rules[i], run, tag);
  if (c > room) {
    *capped = 1;
    c = (uint32_t)room;
  }
  if (c == 0) return 0;
  if (!(sts = calloc(c, sizeof(*sts)))) return GW_ENOMEM;
  uint32_t k = 0;
  for (size_t i = 0; i < rs->n && k < c; i++) {
    if (!rule_matches(&rs->rules[i], run, tag)) continue;
    if (state_init(&sts[k], (uint32_t)i, &rs->rules[i])) {
      while (k--) state_release(&sts[k]);
      free(sts);
      return GW_ENOMEM;
    }
    k++;
  }
  *out = sts;
  *n = c;
  return 0;
}

static void note_capped(gw_alerts_t *a, int64_t now) {
  if (now == SEEN_UNKNOWN) now = 0;
  a->capped++;
  a->capped_unlogged++;
  if (a->capped_logged_ns && now - a->capped_logged_ns < CAPPED_LOG_NS) return;
  logf_(a, GW_LOG_WARN, "alert_states_capped", "max_states=%u not_created=%llu",
        a->rs.max_states, (unsigned long long)a->capped_unlogged);
  a->capped_unlogged = 0;
  a->capped_logged_ns = now ? now : 1;
}

/* Find or create the entry of (run, tag); NULL when out of memory or at
 * the cap (counted). */
static stream_t *get_stream(gw_alerts_t *a, const char *run, const char *tag, int64_t now,
                            int *rc) {
  uint64_t h = key_hash(run, tag);
  stream_t **pp = find_slot(a, run, tag, h);
  *rc = 0;
  if (*pp) return *pp;
  if (a->used >= a->rs.max_states) {
    note_capped(a, now);
    return NULL;
  }
  size_t lr = strlen(run), lt = strlen(tag);
  stream_t *s = calloc(1, sizeof(*s) + lr + lt + 2);
  if (!s) {
    *rc = GW_ENOMEM;
    return NULL;
  }
  s->hash = h;
  s->run = s->names;
  s->tag = s->names + lr + 1;
  memcpy(s->run, run, lr + 1);
  memcpy(s->tag, tag, lt + 1);
  s->last_seen = now;
  int capped;
  /* the entry itself costs 1 out of max_states when it has no state */
  if ((*rc = build_states(&a->rs, run, tag, a->rs.max_states - a->used, &s->states, &s->n,
                          &capped))) {
    free(s);
    return NULL;
  }
  if (capped) note_capped(a, now);
  a->used += cost(s->n);
  a->n_states += s->n;
  if (a->n_streams + 1 > a->nbuckets && grow_table(a) == 0) pp = find_slot(a, run, tag, h);
  s->next = *pp;
  *pp = s;
  a->n_streams++;
  return s;
}

/* ------------------------------------------------------- transitions */

/* Expand {name} placeholders of tmpl; unknown ones stay as written. */
static char *expand(const char *tmpl, const char *const *vars) {
  size_t cap = strlen(tmpl) + 64, len = 0;
  char *out = malloc(cap);
  if (!out) return NULL;
  for (const char *t = tmpl; *t;) {
    const char *rep = NULL, *end = NULL;
    if (*t == '{' && (end = strchr(t, '}'))) {
      for (size_t i = 0; vars[i]; i += 2)
        if (strlen(vars[i]) == (size_t)(end - t - 1) && !strncmp(vars[i], t + 1, end - t - 1)) {
          rep = vars[i + 1];
          break;
        }
    }
    size_t add = rep ? strlen(rep) : 1;
    if (len + add + 1 > cap) {
      cap = 2 * (len + add + 1);
      char *n = realloc(out, cap);
      if (!n) {
        free(out);
        return NULL;
      }
      out = n;
    }
    if (rep) {
      memcpy(out + len, rep, add);
      t = end + 1;
    } else {
      out[len] = *t++;
    }
    len += add;
  }
  out[len] = '\0';
  return out;
}

/* What a notification says, computed when the alert fires. */
typedef struct trip_s {
  double value, observed, baseline;
  uint64_t step;
} trip_t;

/* Labels and annotations JSON text of a firing state; 0 or GW_ENOMEM. */
static int describe(gw_alerts_t *a, const stream_t *s, state_t *st, const rule_t *r,
                    const trip_t *t) {
  char value[32], observed[32], baseline[32], threshold[32], step[32], started[32], window[16],
      for_steps[16], seconds[32];
  fmt_num(value, sizeof(value), t->value);
  fmt_num(observed, sizeof(observed), t->observed);
  fmt_num(baseline, sizeof(baseline), t->baseline);
  fmt_num(threshold, sizeof(threshold), r->threshold);
  fmt_num(seconds, sizeof(seconds), r->seconds);
  snprintf(step, sizeof(step), "%llu", (unsigned long long)t->step);
  snprintf(started, sizeof(started), "%llu", (unsigned long long)st->started_step);
  snprintf(window, sizeof(window), "%u", r->window);
  snprintf(for_steps, sizeof(for_steps), "%u", r->for_steps);
  const char *metric = r->metric >= 0 ? gw_metric_name(r->metric) : "";
  const char *vars[] = {"rule",     r->name,  "run",          s->run,    "tag",       s->tag,
                        "metric",   metric,   "value",        value,     "observed",  observed,
                        "baseline", baseline, "threshold",    threshold, "op",        op_names[r->op],
                        "step",     step,     "started_step", started,   "window",    window,
                        "for_steps", for_steps, "seconds",    seconds,   "severity",  r->severity,
                        "kind",     kind_names[r->kind], NULL};
  char *summary = expand(r->summary, vars), *description = expand(r->description, vars);
  cJSON *lab = cJSON_CreateObject(), *ann = cJSON_CreateObject();
  int rc = GW_ENOMEM;
  if (!summary || !description || !lab || !ann) goto done;
  if (!cJSON_AddStringToObject(lab, "alertname", r->name) ||
      !cJSON_AddStringToObject(lab, "run", s->run) || !cJSON_AddStringToObject(lab, "tag", s->tag) ||
      !cJSON_AddStringToObject(lab, "severity", r->severity))
    goto done;
  if (!cJSON_AddStringToObject(ann, "summary", summary) ||
      !cJSON_AddStringToObject(ann, "description", description) ||
      !cJSON_AddStringToObject(ann, "kind", kind_names[r->kind]) ||
      (r->metric >= 0 && !cJSON_AddStringToObject(ann, "metric", metric)) ||
      !cJSON_AddStringToObject(ann, "value", value) ||
      (r->kind != K_STALLED && !cJSON_AddStringToObject(ann, "observed", observed)) ||
      (r->kind == K_RELATIVE && !cJSON_AddStringToObject(ann, "baseline", baseline)) ||
      !cJSON_AddStringToObject(ann, "step", step))
    goto done;
  free(st->labels);
  free(st->annotations);
  st->labels = cJSON_PrintUnformatted(lab);
  st->annotations = cJSON_PrintUnformatted(ann);
  rc = st->labels && st->annotations ? 0 : GW_ENOMEM;
done:
  free(summary);
  free(description);
  cJSON_Delete(lab);
  cJSON_Delete(ann);
  return rc;
}

/* name/value pairs of a flat JSON object of strings (into `store`, which
 * owns the parsed tree); NULL-terminated. */
static const char **pairs_of(const char *json, cJSON **store) {
  *store = json ? cJSON_Parse(json) : NULL;
  size_t n = 0;
  cJSON *it;
  cJSON_ArrayForEach(it, *store) n++;
  const char **kv = calloc(2 * n + 1, sizeof(char *));
  if (!kv) return NULL;
  size_t i = 0;
  cJSON_ArrayForEach(it, *store) if (cJSON_IsString(it)) {
    kv[i++] = it->string;
    kv[i++] = it->valuestring;
  }
  return kv;
}

/* Percent-encoding of everything but RFC 3986's unreserved characters. */
static char *url_escape(const char *s) {
  static const char hex[] = "0123456789ABCDEF";
  char *out = malloc(3 * strlen(s) + 1), *o = out;
  if (!out) return NULL;
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
        c == '.' || c == '_' || c == '~') {
      *o++ = (char)c;
    } else {
      *o++ = '%';
      *o++ = hex[c >> 4];
      *o++ = hex[c & 15];
    }
  }
  *o = '\0';
  return out;
}

/* Queue the notification of rec to every webhook; metric < 0 for none
 * (then generatorURL is the external URL alone). */
static void notify_webhooks(gw_alerts_t *a, const gw_store_alert_t *rec, int metric) {
  if (!a->n_wh) return;
  cJSON *lt = NULL, *at = NULL;
  const char **lab = pairs_of(rec->labels, &lt), **ann = pairs_of(rec->annotations, &at);
  char *url = NULL, *body = NULL, *re = NULL, *te = NULL;
  if (!lab || !ann) goto done;
  if (metric >= 0 && a->rs.external_url[0] && rec->run && rec->tag) {
    re = url_escape(rec->run);
    te = url_escape(rec->tag);
  }
  if (re && te) {
    size_t n = strlen(a->rs.external_url) + strlen(re) + strlen(te) + 96;
    if ((url = malloc(n)))
      snprintf(url, n, "%s/api/v1/series?run=%s&tag=%s&metrics=%s", a->rs.external_url, re, te,
               gw_metric_name(metric));
  }
  gw_webhook_alert_t wa = {.resolved = rec->state == GW_ALERT_RESOLVED,
                           .labels = lab,
                           .annotations = ann,
                           .starts_ns = rec->started_ns,
                           .ends_ns = rec->resolved_ns,
                           .generator_url = url ? url : a->rs.external_url};
  if (!(body = gw_webhook_payload(&wa, a->rs.receiver, a->rs.external_url))) goto done;
  for (size_t i = 0; i < a->n_wh; i++) gw_webhook_send(a->wh[i], body);
done:
  if (!body) logf_(a, GW_LOG_ERROR, "alert_webhook", "error=\"out of memory\"");
  free(body);
  free(url);
  free(re);
  free(te);
  free(lab);
  free(ann);
  cJSON_Delete(lt);
  cJSON_Delete(at);
}

/* ------------------------------------------------ the firing snapshot */

static int firing_cmp(const void *x, const void *y) {
  const firing_t *a = x, *b = y;
  int c = strcmp(a->rule, b->rule);
  if (!c) c = strcmp(a->run, b->run);
  if (!c) c = strcmp(a->tag, b->tag);
  return c;
}

/* f = a copy of (id, names) in one allocation at f->rule; 0 or GW_ENOMEM. */
static int firing_fill(firing_t *f, uint64_t id, const char *rule, const char *run,
                       const char *tag, const char *severity) {
  size_t l1 = strlen(rule) + 1, l2 = strlen(run) + 1, l3 = strlen(tag) + 1,
         l4 = strlen(severity) + 1;
  char *b = malloc(l1 + l2 + l3 + l4);
  if (!b) return GW_ENOMEM;
  f->id = id;
  f->rule = memcpy(b, rule, l1);
  f->run = memcpy(b + l1, run, l2);
  f->tag = memcpy(b + l1 + l2, tag, l3);
  f->severity = memcpy(b + l1 + l2 + l3, severity, l4);
  return 0;
}

/* Caller holds mu. 0 or GW_ENOMEM. */
static int firing_add(gw_alerts_t *a, uint64_t id, const char *rule, const char *run,
                      const char *tag, const char *severity) {
  if (a->n_firing == a->cap_firing) {
    size_t nc = a->cap_firing ? 2 * a->cap_firing : 16;
    firing_t *nf = realloc(a->firing, nc * sizeof(*nf));
    if (!nf) return GW_ENOMEM;
    a->firing = nf;
    a->cap_firing = nc;
  }
  int rc = firing_fill(&a->firing[a->n_firing], id, rule, run, tag, severity);
  if (rc == 0) a->n_firing++;
  return rc;
}

/* Caller holds mu. Removes the entry of (rule, run, tag). */
static void firing_remove(gw_alerts_t *a, const char *rule, const char *run, const char *tag) {
  for (size_t i = 0; i < a->n_firing; i++) {
    firing_t *f = &a->firing[i];
    if (strcmp(f->rule, rule) || strcmp(f->run, run) || strcmp(f->tag, tag)) continue;
    free(f->rule);
    a->firing[i] = a->firing[--a->n_firing];
    return;
  }
}

static void firing_clear(gw_alerts_t *a) {
  for (size_t i = 0; i < a->n_firing; i++) free(a->firing[i].rule);
  a->n_firing = 0;
}

static void publish_count(gw_alerts_t *a) {
  pthread_mutex_lock(&a->mu);
  size_t n = a->n_firing;
  pthread_mutex_unlock(&a->mu);
  if (a->deps.metrics) gw_metrics_set_alerts_firing(a->deps.metrics, n);
}

/* ------------------------------------------------------- transitions */

static int cmp_op(int op, double x, double t) {
  switch (op) {
    case OP_GT: return x > t;
    case OP_GE: return x >= t;
    case OP_LT: return x < t;
    default: return x <= t;
  }
}

/* Persist, publish and notify one transition of st (state = FIRING or
 * RESOLVED) at `step`. */
static void emit(gw_alerts_t *a, const stream_t *s, state_t *st, const rule_t *r, int state,
                 uint64_t step, int64_t resolved_ns) {
  char b1[96], b2[160], b3[160];
  gw_store_alert_t rec = {.id = st->id,
                          .rule = r->name,
                          .run = s->run,
                          .tag = s->tag,
                          .severity = r->severity,
                          .state = state,
                          .value = st->value,
                          .threshold = r->kind == K_STALLED ? r->seconds : r->threshold,
                          .started_step = st->started_step,
                          .started_ns = st->started_ns,
                          .fired_ns = st->fired_ns,
                          .resolved_ns = resolved_ns,
                          .labels = st->labels,
                          .annotations = st->annotations};
  if (a->deps.store) {
    uint64_t id = 0;
    int rc = gw_store_put_alert(a->deps.store, &rec, &id);
    if (rc)
      logf_(a, GW_LOG_ERROR, "alert_store", "rule=%s error=\"%s\"", q(b1, sizeof(b1), r->name),
            gw_strerror(rc));
    else
      st->id = rec.id = id;
  } else if (!st->id) {
    st->id = rec.id = ++a->local_id;
  }
  if (a->deps.live) {
    char *text = gw_http_alert_json(&rec), *out = NULL;
    cJSON *o = text ? cJSON_Parse(text) : NULL;
    if (o && cJSON_AddNumberToObject(o, "step", (double)step)) out = cJSON_PrintUnformatted(o);
    if (out) gw_live_publish_alert(a->deps.live, out);
    free(out);
    free(text);
    cJSON_Delete(o);
  }
  notify_webhooks(a, &rec, r->metric);
  pthread_mutex_lock(&a->mu);
  if (state == GW_ALERT_FIRING) {
    a->fired++;
    firing_add(a, st->id, r->name, s->run, s->tag, r->severity);
  } else {
    a->resolved++;
    firing_remove(a, r->name, s->run, s->tag);
  }
  pthread_mutex_unlock(&a->mu);
  publish_count(a);
  logf_(a, state == GW_ALERT_FIRING ? GW_LOG_WARN : GW_LOG_INFO,
        state == GW_ALERT_FIRING ? "alert_firing" : "alert_resolved",
        "id=%llu rule=%s run=%s tag=%s severity=%s value=%.6g step=%llu started_step=%llu",
        (unsigned long long)st->id, q(b1, sizeof(b1), r->name), q(b2, sizeof(b2), s->run),
        q(b3, sizeof(b3), s->tag), r->severity, st->value, (unsigned long long)step,
        (unsigned long long)st->started_step);
}

static void fire(gw_alerts_t *a, const stream_t *s, state_t *st, const rule_t *r, const trip_t *t) {
  st->phase = P_FIRING;
  st->fired_ns = wall_ns();
  st->value = t->value;
  st->id = 0;
  if (describe(a, s, st, r, t)) logf_(a, GW_LOG_ERROR, "alert_describe", "error=\"out of memory\"");
  emit(a, s, st, r, GW_ALERT_FIRING, t->step, 0);
}

static void resolve(gw_alerts_t *a, const stream_t *s, state_t *st, const rule_t *r, uint64_t step) {
  emit(a, s, st, r, GW_ALERT_RESOLVED, step, wall_ns());
  free(st->labels);
  free(st->annotations);
  st->labels = st->annotations = NULL;
  st->phase = P_INACTIVE;
  st->breaches = 0;
  st->id = 0;
}

/* One point through one threshold/relative state. */
static void eval(gw_alerts_t *a, const stream_t *s, state_t *st, const rule_t *r,
                 const gw_point_t *p) {
  double v = gw_point_get(p, r->metric), x = v, base = NAN;
  int relative = r->kind == K_RELATIVE;
  if (!isfinite(v)) return; /* no data: nothing moves */
  if (relative) {
    if (st->phase == P_INACTIVE && st->len < r->min_points) {
      absorb(st, r->window, v);
      return;
    }
    base = median(st);
    if (!(base > 0) || base < r->min_baseline) { /* a ratio to this means nothing */
      if (st->phase == P_INACTIVE) absorb(st, r->window, v);
      return;
    }
    x = v / base;
  }
  int breach = cmp_op(r->op, x, r->threshold);
  switch (st->phase) {
    case P_INACTIVE:
      if (!breach) {
        if (relative) absorb(st, r->window, v);
        return;
      }
      st->phase = P_PENDING;
      st->breaches = 1;
      st->started_step = p->step;
      st->started_ns = wall_ns();
      break;
    case P_PENDING:
      if (!breach) {
        st->phase = P_INACTIVE;
        st->breaches = 0;
        if (relative) absorb(st, r->window, v);
        return;
      }
      st->breaches++;
      break;
    default: /* P_FIRING */
      if (!cmp_op(r->op, x, r->resolve)) {
        resolve(a, s, st, r, p->step);
        if (relative) absorb(st, r->window, v);
      }
      return;
  }
  if (st->breaches >= r->for_steps) {
    trip_t t = {x, v, base, p->step};
    fire(a, s, st, r, &t);
  }
}

int gw_alerts_observe(gw_alerts_t *a, const char *run, const char *tag, const gw_point_t *p,
                      int64_t now_ns) {
  if (!a || !run || !tag || !p) return GW_EINVAL;
  int rc;
  pthread_mutex_lock(&a->eval_mu);
  stream_t *s = get_stream(a, run, tag, now_ns, &rc);
  if (!s) {
    pthread_mutex_unlock(&a->eval_mu);
    return rc;
  }
  s->last_seen = now_ns;
  s->last_step = p->step;
  for (uint32_t i = 0; i < s->n; i++) {
    state_t *st = &s->states[i];
    const rule_t *r = &a->rs.rules[st->rule];
    if (r->kind != K_STALLED) eval(a, s, st, r, p);
    else if (st->phase == P_FIRING) resolve(a, s, st, r, p->step);
  }
  pthread_mutex_unlock(&a->eval_mu);
  return 0;
}

/* Resolve what fires on s, free it (unlinked by the caller). */
static void drop_stream(gw_alerts_t *a, stream_t *s) {
  for (uint32_t i = 0; i < s->n; i++) {
    state_t *st = &s->states[i];
    if (st->phase == P_FIRING) resolve(a, s, st, &a->rs.rules[st->rule], s->last_step);
    state_release(st);
  }
  a->used -= cost(s->n);
  a->n_states -= s->n;
  a->n_streams--;
  free(s->states);
  free(s);
}

int gw_alerts_tick(gw_alerts_t *a, int64_t now_ns) {
  pthread_mutex_lock(&a->eval_mu);
  double forget_ns = a->rs.forget_after * 1e9;
  for (size_t b = 0; b < a->nbuckets; b++) {
    for (stream_t **pp = &a->buckets[b]; *pp;) {
      stream_t *s = *pp;
      if (s->last_seen == SEEN_UNKNOWN) s->last_seen = now_ns; /* restored: silence starts now */
      double silent_ns = (double)(now_ns - s->last_seen);
      if (forget_ns > 0 && silent_ns >= forget_ns) {
        *pp = s->next;
        char b1[160], b2[160];
        logf_(a, GW_LOG_INFO, "alert_stream_forgotten", "run=%s tag=%s silent_s=%.0f",
              q(b1, sizeof(b1), s->run), q(b2, sizeof(b2), s->tag), silent_ns * 1e-9);
        drop_stream(a, s);
        continue;
      }
      for (uint32_t i = 0; i < s->n; i++) {
        state_t *st = &s->states[i];
        const rule_t *r = &a->rs.rules[st->rule];
        if (r->kind != K_STALLED || st->phase != P_INACTIVE || silent_ns < r->seconds * 1e9)
          continue;
        st->started_step = s->last_step;
        st->started_ns = wall_ns();
        trip_t t = {silent_ns * 1e-9, NAN, NAN, s->last_step};
        fire(a, s, st, r, &t);
      }
      pp = &s->next;
    }
  }
  pthread_mutex_unlock(&a->eval_mu);
  return 0;
}

int gw_alerts_forget(gw_alerts_t *a, const char *run, const char *tag) {
  if (!a || !run || !tag) return GW_EINVAL;
  int rc = GW_ENOTFOUND;
  pthread_mutex_lock(&a->eval_mu);
  stream_t **pp = find_slot(a, run, tag, key_hash(run, tag));
  if (*pp) {
    stream_t *s = *pp;
    *pp = s->next;
    drop_stream(a, s);
    rc = 0;
  }
  pthread_mutex_unlock(&a->eval_mu);
  return rc;
}

/* ------------------------------------------------------------ restore */

/* Refill a restored relative state's baseline from the stored points
 * before the alert started (best effort: nothing stored, nothing filled). */
static void restore_baseline(gw_alerts_t *a, const stream_t *s, state_t *st, const rule_t *r) {
  gw_series_t ser;
  int m = r->metric;
  if (st->started_step == 0 ||
      gw_store_series(a->deps.store, s->run, s->tag, &m, 1, 0, st->started_step - 1, 0, &ser, 0))
    return;
  size_t i = ser.n, got = 0;
  while (i > 0 && got < r->window)
    if (isfinite(ser.cols[0][--i])) got++;
  for (; i < ser.n; i++)
    if (isfinite(ser.cols[0][i])) absorb(st, r->window, ser.cols[0][i]);
  gw_store_series_free(&ser);
}

static char *dup_or_null(const char *s) { return s ? strdup(s) : NULL; }

/* Close a stored active alert that no rule carries any more. */
static void close_stale(gw_alerts_t *a, gw_store_alert_t *rec, const char *why) {
  char b1[96];
  rec->state = GW_ALERT_RESOLVED;
  rec->resolved_ns = wall_ns();
  int rc = gw_store_put_alert(a->deps.store, rec, NULL);
  notify_webhooks(a, rec, -1);
  pthread_mutex_lock(&a->mu);
  a->resolved++;
  pthread_mutex_unlock(&a->mu);
  logf_(a, GW_LOG_INFO, "alert_resolved", "id=%llu rule=%s reason=%s store=%s",
        (unsigned long long)rec->id, q(b1, sizeof(b1), rec->rule), why, gw_strerror(rc));
}

static int restore(gw_alerts_t *a, int64_t now) {
  gw_store_alert_t *recs = NULL;
  size_t n = 0, kept = 0;
  if (!a->deps.store) return 0;
  int rc = gw_store_alerts_firing(a->deps.store, &recs, &n);
  if (rc) return rc;
  for (size_t i = 0; i < n; i++) {
    gw_store_alert_t *rec = &recs[i];
    rule_t *r = find_rule(&a->rs, rec->rule);
    state_t *st = NULL;
    stream_t *s = NULL;
    const char *why = "rule_removed";
    if (r && rec->state == GW_ALERT_FIRING && rec->run && rec->tag) {
      why = "stream_not_matched";
      if (rule_matches(r, rec->run, rec->tag) && (s = get_stream(a, rec->run, rec->tag, now, &rc)))
        for (uint32_t k = 0; k < s->n && !st; k++)
          if (&a->rs.rules[s->states[k].rule] == r) st = &s->states[k];
      if (st && st->phase != P_INACTIVE) {
        st = NULL;
        why = "duplicate";
      }
    } else if (r) {
      why = rec->state == GW_ALERT_PENDING ? "pending_at_start" : "no_stream";
    }
    if (rc == GW_ENOMEM) goto done;
    if (!st) {
      close_stale(a, rec, why);
      continue;
    }
    st->phase = P_FIRING;
    st->id = rec->id;
    st->started_step = rec->started_step;
    st->started_ns = rec->started_ns;
    st->fired_ns = rec->fired_ns;
    st->value = rec->value;
    st->labels = dup_or_null(rec->labels);
    st->annotations = dup_or_null(rec->annotations);
    if (!st->labels || !st->annotations) {
      trip_t t = {rec->value, NAN, NAN, rec->started_step};
      if ((rc = describe(a, s, st, r, &t))) goto done;
    }
    if (r->kind == K_RELATIVE) restore_baseline(a, s, st, r);
    pthread_mutex_lock(&a->mu);
    rc = firing_add(a, st->id, r->name, s->run, s->tag, r->severity);
    pthread_mutex_unlock(&a->mu);
    if (rc) goto done;
    kept++;
  }
  logf_(a, GW_LOG_INFO, "alerts_restored", "firing=%zu closed=%zu", kept, n - kept);
done:
  gw_store_alerts_free(recs, n);
  publish_count(a);
  return rc;
}

/* ------------------------------------------------------------ webhooks */

static int same_webhook(const gw_webhook_config_t *x, const gw_webhook_config_t *y) {
  return !strcmp(x->url, y->url) && x->timeout_ms == y->timeout_ms && x->retries == y->retries &&
         x->backoff_ms == y->backoff_ms && x->backoff_max_ms == y->backoff_max_ms &&
         x->queue_max == y->queue_max;
}

static void add_stats(gw_webhook_stats_t *acc, const gw_webhook_stats_t *s) {
  acc->sent += s->sent;
  acc->failed += s->failed;
  acc->dropped += s->dropped;
  acc->attempts += s->attempts;
}

/* Webhooks for rs into out[]: the ones of `old` with the same settings
 * are reused (taken[i] set), the others are started. On failure those
 * started are freed and err says which URL. */
static int start_webhooks(const ruleset_t *rs, gw_webhook_t *const *old, size_t n_old,
                          gw_webhook_t **out, int *taken, char *err, size_t errlen) {
  int fresh[MAX_WEBHOOKS] = {0};
  for (size_t i = 0; i < rs->n_webhooks; i++) {
    gw_webhook_config_t c = rs->wh;
    c.url = rs->webhooks[i];
    out[i] = NULL;
    for (size_t j = 0; j < n_old && !out[i]; j++)
      if (!taken[j] && same_webhook(gw_webhook_config(old[j]), &c)) {
        taken[j] = 1;
        out[i] = old[j];
      }
    if (out[i]) continue;
    int rc = gw_webhook_new(&out[i], &c);
    if (rc) {
      say(err, errlen, "[alerts] webhook %s: %s", c.url, gw_strerror(rc));
      for (size_t k = 0; k < i; k++)
        if (fresh[k]) gw_webhook_free(out[k]);
      return rc == GW_EINVAL ? GW_ECONFIG : rc;
    }
    fresh[i] = 1;
  }
  return 0;
}

/* ------------------------------------------------------------ life cycle */

int gw_alerts_new(gw_alerts_t **out, const char *path, const gw_alerts_deps_t *deps, char *err,
                  size_t errlen) {
  *out = NULL;
  gw_alerts_t *a = calloc(1, sizeof(*a));
  if (!a) return GW_ENOMEM;
  int rc, taken[MAX_WEBHOOKS] = {0};
  if (deps) a->deps = *deps;
  if ((rc = -pthread_mutex_init(&a->mu, NULL))) {
    free(a);
    return rc;
  }
  if ((rc = -pthread_mutex_init(&a->eval_mu, NULL))) {
    pthread_mutex_destroy(&a->mu);
    free(a);
    return rc;
  }
  ruleset_init(&a->rs);
  a->nbuckets = 64;
  if (!(a->buckets = calloc(a->nbuckets, sizeof(*a->buckets)))) {
    rc = GW_ENOMEM;
    goto fail;
  }
  ruleset_free(&a->rs);
  if ((rc = load_ruleset(&a->rs, path, err, errlen))) goto fail;
  if ((rc = start_webhooks(&a->rs, NULL, 0, a->wh, taken, err, errlen))) goto fail;
  a->n_wh = a->rs.n_webhooks;
  if ((rc = restore(a, SEEN_UNKNOWN))) {
    say(err, errlen, "alerts: restoring active alerts from the store: %s", gw_strerror(rc));
    goto fail;
  }
  logf_(a, GW_LOG_INFO, "alerts_loaded", "rules=%zu webhooks=%zu defaults=%s", a->rs.n, a->n_wh,
        a->rs.defaults ? "true" : "false");
  *out = a;
  return 0;
fail:
  gw_alerts_free(a, 0);
  return rc;
}

static void free_streams(gw_alerts_t *a) {
  for (size_t b = 0; a->buckets && b < a->nbuckets; b++)
    for (stream_t *s = a->buckets[b], *next; s; s = next) {
      next = s->next;
      for (uint32_t i = 0; i < s->n; i++) state_release(&s->states[i]);
      free(s->states);
      free(s);
    }
  free(a->buckets);
}

void gw_alerts_free(gw_alerts_t *a, uint32_t drain_ms) {
  if (!a) return;
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (size_t i = 0; i < a->n_wh; i++) {
    clock_gettime(CLOCK_MONOTONIC, &t1);
    int64_t spent = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
    gw_webhook_drain(a->wh[i], spent < drain_ms ? drain_ms - (uint32_t)spent : 0);
  }
  for (size_t i = 0; i < a->n_wh; i++) gw_webhook_free(a->wh[i]);
  free_streams(a);
  firing_clear(a);
  free(a->firing);
  ruleset_free(&a->rs);
  pthread_mutex_destroy(&a->eval_mu);
  pthread_mutex_destroy(&a->mu);
  free(a);
}

/* Same rule for a surviving state: name, kind, metric, window. */
static int same_identity(const rule_t *x, const rule_t *y) {
  return !strcmp(x->name, y->name) && x->kind == y->kind && x->metric == y->metric &&
         (x->kind != K_RELATIVE || x->window == y->window);
}

int gw_alerts_reload(gw_alerts_t *a, const char *path, char *err, size_t errlen) {
  ruleset_t n;
  gw_webhook_t *nw[MAX_WEBHOOKS], *old[MAX_WEBHOOKS];
  int taken[MAX_WEBHOOKS] = {0};
  int rc = load_ruleset(&n, path, err, errlen);
  if (rc) return rc;
  if ((rc = start_webhooks(&n, a->wh, a->n_wh, nw, taken, err, errlen))) {
    ruleset_free(&n);
    return rc;
  }
  /* From here on nothing fails but allocations, which degrade (a stream
   * left without states) instead of undoing the reload. */
  size_t n_old = 0;
  pthread_mutex_lock(&a->eval_mu); /* observe reads the webhook list too */
  pthread_mutex_lock(&a->mu);
  for (size_t j = 0; j < a->n_wh; j++)
    if (!taken[j]) old[n_old++] = a->wh[j];
  memcpy(a->wh, nw, n.n_webhooks * sizeof(nw[0]));
  a->n_wh = n.n_webhooks;
  pthread_mutex_unlock(&a->mu);

  size_t used = 0, n_states = 0;
  for (size_t b = 0; b < a->nbuckets; b++)
    for (stream_t *s = a->buckets[b]; s; s = s->next) {
      state_t *sts = NULL;
      uint32_t cnt = 0;
      int capped = 0;
      size_t room = n.max_states > used ? n.max_states - used : 0;
      if (build_states(&n, s->run, s->tag, room, &sts, &cnt, &capped))
        logf_(a, GW_LOG_ERROR, "alert_reload", "error=\"out of memory\"");
      if (capped) note_capped(a, s->last_seen);
      for (uint32_t k = 0; k < cnt; k++) {
        const rule_t *nr = &n.rules[sts[k].rule];
        for (uint32_t i = 0; i < s->n; i++) {
          state_t *os = &s->states[i];
          if (os->rule == UINT32_MAX || !same_identity(&a->rs.rules[os->rule], nr)) continue;
          uint32_t idx = sts[k].rule;
          state_release(&sts[k]);
          sts[k] = *os;
          sts[k].rule = idx;
          memset(os, 0, sizeof(*os));
          os->rule = UINT32_MAX; /* moved */
          break;
        }
      }
      for (uint32_t i = 0; i < s->n; i++) {
        state_t *os = &s->states[i];
        if (os->rule == UINT32_MAX) continue;
        if (os->phase == P_FIRING) resolve(a, s, os, &a->rs.rules[os->rule], s->last_step);
        state_release(os);
      }
      free(s->states);
      s->states = sts;
      s->n = cnt;
      used += cost(cnt);
      n_states += cnt;
    }
  a->used = used;
  a->n_states = n_states;
  ruleset_free(&a->rs);
  a->rs = n;

  pthread_mutex_lock(&a->mu);
  firing_clear(a);
  for (size_t b = 0; b < a->nbuckets; b++)
    for (stream_t *s = a->buckets[b]; s; s = s->next)
      for (uint32_t i = 0; i < s->n; i++)
        if (s->states[i].phase == P_FIRING) {
          const rule_t *r = &a->rs.rules[s->states[i].rule];
          firing_add(a, s->states[i].id, r->name, s->run, s->tag, r->severity);
        }
  for (size_t j = 0; j < n_old; j++) {
    gw_webhook_stats_t ws;
    gw_webhook_stats(old[j], &ws);
    add_stats(&a->retired, &ws);
    a->retired.dropped += ws.queued; /* freed below with what it still holds */
  }
  pthread_mutex_unlock(&a->mu);
  publish_count(a);
  logf_(a, GW_LOG_INFO, "alerts_reloaded", "rules=%zu webhooks=%zu streams=%zu states=%zu",
        a->rs.n, a->n_wh, a->n_streams, a->n_states);
  pthread_mutex_unlock(&a->eval_mu);
  for (size_t j = 0; j < n_old; j++) gw_webhook_free(old[j]); /* drops what they still queue */
  return 0;
}

/* ------------------------------------------------------------ exports */

size_t gw_alerts_firing_count(gw_alerts_t *a) {
  pthread_mutex_lock(&a->mu);
  size_t n = a->n_firing;
  pthread_mutex_unlock(&a->mu);
  return n;
}

/* Counters of every webhook, the retired included; caller holds mu. */
static void webhook_totals(gw_alerts_t *a, gw_webhook_stats_t *t) {
  *t = a->retired;
  for (size_t i = 0; i < a->n_wh; i++) {
    gw_webhook_stats_t ws;
    gw_webhook_stats(a->wh[i], &ws);
    add_stats(t, &ws);
  }
}

void gw_alerts_counters(gw_alerts_t *a, gw_alerts_counters_t *out) {
  gw_webhook_stats_t t;
  memset(out, 0, sizeof(*out));
  pthread_mutex_lock(&a->eval_mu);
  out->rules = a->rs.n;
  out->streams = a->n_streams;
  out->states = a->n_states;
  out->states_capped = a->capped;
  pthread_mutex_unlock(&a->eval_mu);
  pthread_mutex_lock(&a->mu);
  out->fired = a->fired;
  out->resolved = a->resolved;
  webhook_totals(a, &t);
  pthread_mutex_unlock(&a->mu);
  out->webhook_sent = t.sent;
  out->webhook_failed = t.failed;
  out->webhook_dropped = t.dropped;
}

int gw_alerts_metrics(void *arg, gw_metrics_writer_t *w) {
  gw_alerts_t *a = arg;
  gw_webhook_stats_t t;
  firing_t *snap = NULL;
  size_t n = 0;
  uint64_t fired, resolved;
  int rc = 0;
  /* copy under the lock, format outside it */
  pthread_mutex_lock(&a->mu);
  if (a->n_firing && !(snap = calloc(a->n_firing, sizeof(*snap)))) rc = GW_ENOMEM;
  for (size_t i = 0; !rc && i < a->n_firing; i++) {
    const firing_t *f = &a->firing[i];
    if (!(rc = firing_fill(&snap[i], f->id, f->rule, f->run, f->tag, f->severity))) n++;
  }
  fired = a->fired;
  resolved = a->resolved;
  webhook_totals(a, &t);
  pthread_mutex_unlock(&a->mu);
  if (rc) goto done;
  if (n) qsort(snap, n, sizeof(*snap), firing_cmp);
  if ((rc = gw_metrics_family(w, "gradwatch_alert", "gauge",
                              "Alerts firing now: 1 per alert (rule, run, tag, severity).")))
    goto done;
  for (size_t i = 0; i < n && !rc; i++) {
    const char *labels[] = {"rule", snap[i].rule, "run", snap[i].run, "tag", snap[i].tag,
                            "severity", snap[i].severity, NULL};
    rc = gw_metrics_sample(w, "gradwatch_alert", labels, 1);
  }
  if (rc || (rc = gw_metrics_family(w, "gradwatch_alert_transitions_total", "counter",
                                    "Alert state changes notified, by new state.")))
    goto done;
  const char *lf[] = {"state", "firing", NULL}, *lr[] = {"state", "resolved", NULL};
  if ((rc = gw_metrics_sample(w, "gradwatch_alert_transitions_total", lf, (double)fired)) ||
      (rc = gw_metrics_sample(w, "gradwatch_alert_transitions_total", lr, (double)resolved)))
    goto done;
  if ((rc = gw_metrics_family(w, "gradwatch_alert_notifications_total", "counter",
                              "Webhook notifications by outcome (sent, failed after retries, "
                              "dropped from a full queue).")))
    goto done;
  const char *ls[] = {"result", "sent", NULL}, *lx[] = {"result", "failed", NULL},
             *ld[] = {"result", "dropped", NULL};
  if ((rc = gw_metrics_sample(w, "gradwatch_alert_notifications_total", ls, (double)t.sent)) ||
      (rc = gw_metrics_sample(w, "gradwatch_alert_notifications_total", lx, (double)t.failed)) ||
      (rc = gw_metrics_sample(w, "gradwatch_alert_notifications_total", ld, (double)t.dropped)))
    goto done;
done:
  for (size_t i = 0; i < n; i++) free(snap[i].rule);
  free(snap);
  return rc;
}
