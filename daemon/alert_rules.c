/* alert_rules.c — INI text → gw_alert_rules_t (see alert_rules.h for the
 * data flow and the message format).
 *
 * libinih reads the text through our own line reader, which counts lines,
 * so every key knows its line even after its check is deferred to the
 * rule's kind. Long lines are refused up front: libinih would cut a line
 * at INI_MAX_LINE and read the rest as a line of its own.
 *
 * Cost: a key is O(1) (rule found through the name index; a kind key is
 * checked against the at most ~10 raw keys of its rule), so a text of N
 * rules parses in O(N).
 */
#include "alert_rules.h"

#include <errno.h>
#include <ini.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alert_kinds.h"
#include "gw_error.h"
#include "util.h"

#define LINE_MAX_CHARS INI_MAX_LINE /* libinih's line buffer (200 in Debian's build) */

/* Measured with eval/run.py (docs/ALERTS.md has the table, the runs and
 * the seeds): real vision, language and control runs with nine injected
 * failures, streamed through a daemon with these rules; chosen on the
 * tuning split, silent on every healthy run of both splits. rank_collapse
 * and kappa_surge watch the whole-model stream `all` (a gradient spike,
 * divergence); kappa_drop catches gradients that became predictable (a
 * data loader repeating one batch); the two layer rules watch the
 * per-parameter streams, which see a frozen layer and a collapse confined
 * to some layers that the whole-model stream averages away. */
const char GW_ALERTS_DEFAULT_RULES[] =
    "[alert rank_collapse]\n"
    "tag = all\n"
    "kind = relative\n"
    "metric = rank_90\n"
    "op = <\n"
    "threshold = 0.3\n"
    "resolve = 0.5\n"
    "for_steps = 1\n"
    "window = 128\n"
    "min_points = 64\n"
    "min_baseline = 4\n"
    "severity = critical\n"
    "summary = predictability collapse on {run}/{tag}: rank_90 fell to {observed}, {value}x its "
    "trailing median {baseline}\n"
    "description = One direction dominates the gradient increments of the window since step\n"
    "  {started_step} (a gradient spike, divergence): the predictable rank left the run's regime\n"
    "  (below {threshold}x the median of the last {window} healthy points).\n"
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
    "[alert kappa_drop]\n"
    "tag = all\n"
    "kind = relative\n"
    "metric = kappa_linear\n"
    "op = <\n"
    "threshold = 0.25\n"
    "resolve = 0.5\n"
    "for_steps = 4\n"
    "window = 128\n"
    "min_points = 64\n"
    "severity = critical\n"
    "summary = gradients of {run}/{tag} became predictable: kappa_linear {observed} is {value}x "
    "its trailing median {baseline}\n"
    "description = Since step {started_step} each gradient is extrapolated from the two before\n"
    "  it far better than in the run's own past (below {threshold}x the median of the last\n"
    "  {window} healthy points for {for_steps} points): the batches stopped changing (a data\n"
    "  loader repeating one batch) or the steps stopped moving the model.\n"
    "[alert layer_rank_collapse]\n"
    "tag = *.*\n"
    "kind = relative\n"
    "metric = rank_90\n"
    "op = <\n"
    "threshold = 0.2\n"
    "resolve = 0.5\n"
    "for_steps = 4\n"
    "window = 128\n"
    "min_points = 64\n"
    "min_baseline = 4\n"
    "severity = warning\n"
    "summary = predictability collapse in layer {tag} of {run}: rank_90 fell to {observed}, "
    "{value}x its trailing median {baseline}\n"
    "description = One direction dominates this parameter's gradient increments since step\n"
    "  {started_step} (below {threshold}x the median of the last {window} healthy points for\n"
    "  {for_steps} points): corrupted labels, a learning rate too high for this layer.\n"
    "[alert layer_gradient_vanished]\n"
    "tag = *\n"
    "kind = relative\n"
    "metric = grad_norm\n"
    "op = <\n"
    "threshold = 0.01\n"
    "resolve = 0.1\n"
    "for_steps = 4\n"
    "window = 128\n"
    "min_points = 64\n"
    "severity = critical\n"
    "summary = gradient of {run}/{tag} vanished: norm {observed} is {value}x its trailing "
    "median {baseline}\n"
    "description = Since step {started_step} the gradient is below {threshold}x the median of\n"
    "  its last {window} healthy points ({for_steps} points in a row): a frozen layer\n"
    "  (requires_grad switched off, a detached branch), or a model that stopped learning.\n"
    "[alert stream_stalled]\n"
    "tag = all\n"
    "kind = stalled\n"
    "seconds = 600\n"
    "severity = warning\n"
    "summary = no message from {run}/{tag} for {seconds} s (last step {step})\n";

/* Keys every kind has; a bit each in gw_alert_rule_t.given. */
enum { KEY_KIND, KEY_SEVERITY, KEY_RUN, KEY_TAG, KEY_SUMMARY, KEY_DESCRIPTION, KEY_COUNT };
static const char *const common_keys[KEY_COUNT] = {"kind", "severity", "run",
                                                   "tag",  "summary",  "description"};

static const char *const akey_names[GW_ALERTS_KEY_COUNT] = {
    "webhook_timeout_ms", "webhook_retries", "webhook_backoff_ms", "webhook_queue",
    "defaults",           "external_url",    "receiver",           "max_states",
    "forget_after"};

/* ------------------------------------------------------------- values */

int gw_alert_rules_number(const char *v, double *out) {
  char *end;
  errno = 0;
  double x = strtod(v, &end);
  if (errno || end == v || *end || !isfinite(x)) return -1;
  *out = x;
  return 0;
}

int gw_alert_rules_integer(const char *v, uint32_t lo, uint32_t hi, uint32_t *out) {
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

static const char *const op_names[] = {">", ">=", "<", "<="};

const char *gw_alert_op_name(int op) { return op >= 0 && op < 4 ? op_names[op] : "?"; }

int gw_alert_op_holds(int op, double x, double t) {
  switch (op) {
    case GW_ALERT_OP_GT: return x > t;
    case GW_ALERT_OP_GE: return x >= t;
    case GW_ALERT_OP_LT: return x < t;
    default: return x <= t;
  }
}

static int valid_name(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > GW_ALERT_NAME_MAX) return 0;
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
  if (a + b + 2 > GW_ALERT_TEXT_MAX) return GW_EINVAL;
  char *d = realloc(*dst, a + b + 2);
  if (!d) return GW_ENOMEM;
  d[a] = ' ';
  memcpy(d + a + 1, v, b + 1);
  *dst = d;
  return 0;
}

/* -------------------------------------------------------------- rule set */

static void rule_free(gw_alert_rule_t *r) {
  free(r->name);
  free(r->severity);
  free(r->run_glob);
  free(r->tag_glob);
  free(r->summary);
  free(r->description);
  for (size_t i = 0; i < r->n_raw; i++) {
    free(r->raw[i].key);
    free(r->raw[i].value);
  }
  free(r->raw);
  memset(r, 0, sizeof(*r));
}

void gw_alert_rules_init(gw_alert_rules_t *rs) {
  memset(rs, 0, sizeof(*rs));
  rs->defaults = 1;
  rs->max_states = 65536;
  rs->forget_after = 86400;
}

void gw_alert_rules_free(gw_alert_rules_t *rs) {
  for (size_t i = 0; i < rs->n; i++) rule_free(&rs->rules[i]);
  free(rs->rules);
  free(rs->index);
  for (size_t i = 0; i < rs->n_webhooks; i++) free(rs->webhooks[i]);
  free(rs->external_url);
  free(rs->receiver);
  gw_alert_rules_init(rs);
}

static size_t name_slot(const gw_alert_rules_t *rs, const char *name) {
  size_t mask = rs->index_cap - 1;
  size_t i = (size_t)gw_fnv1a(GW_FNV_OFFSET, name, strlen(name)) & mask;
  while (rs->index[i] && strcmp(rs->rules[rs->index[i] - 1].name, name)) i = (i + 1) & mask;
  return i;
}

gw_alert_rule_t *gw_alert_rules_find(const gw_alert_rules_t *rs, const char *name) {
  if (!rs->index_cap) return NULL;
  uint32_t k = rs->index[name_slot(rs, name)];
  return k ? &rs->rules[k - 1] : NULL;
}

/* Make room for one more rule (array and index). 0 or GW_ENOMEM. */
static int reserve(gw_alert_rules_t *rs) {
  if (rs->n == UINT32_MAX - 1) return GW_ENOMEM;
  if (rs->n == rs->cap) {
    size_t nc = rs->cap ? 2 * rs->cap : 8;
    gw_alert_rule_t *nr = realloc(rs->rules, nc * sizeof(*nr));
    if (!nr) return GW_ENOMEM;
    rs->rules = nr;
    rs->cap = nc;
  }
  if (2 * (rs->n + 1) > rs->index_cap) {
    size_t nc = rs->index_cap ? 2 * rs->index_cap : 16;
    uint32_t *old = rs->index, *ni = calloc(nc, sizeof(*ni));
    if (!ni) return GW_ENOMEM;
    rs->index = ni;
    rs->index_cap = nc;
    for (size_t i = 0; i < rs->n; i++) rs->index[name_slot(rs, rs->rules[i].name)] = (uint32_t)i + 1;
    free(old);
  }
  return 0;
}

/* Move r (its name not yet in rs) into rs; r is zeroed. 0 or GW_ENOMEM. */
static int push(gw_alert_rules_t *rs, gw_alert_rule_t *r) {
  int rc = reserve(rs);
  if (rc) return rc;
  rs->index[name_slot(rs, r->name)] = (uint32_t)rs->n + 1;
  rs->rules[rs->n++] = *r;
  memset(r, 0, sizeof(*r));
  return 0;
}

/* A new rule of that name with every field "not given" (alert_kinds.c). */
static gw_alert_rule_t *add_rule(gw_alert_rules_t *rs, const char *name) {
  gw_alert_rule_t r;
  memset(&r, 0, sizeof(r));
  r.kind = -1;
  r.metric = -1;
  r.op = GW_ALERT_OP_GT;
  r.threshold = r.resolve = NAN;
  if (!(r.name = strdup(name))) return NULL;
  if (push(rs, &r)) {
    free(r.name);
    return NULL;
  }
  return &rs->rules[rs->n - 1];
}

/* -------------------------------------------------------------- parsing */

typedef struct parse_s {
  gw_alert_rules_t *rs;
  const char *text; /* what the reader has not handed out yet */
  unsigned line, next_line;
  char msg[768]; /* first error, without origin and line */
  int rc;
  const atomic_int *cancel; /* NULL, or nonzero: stop (-ECANCELED) */
} parse_t;

static int cancelled(const atomic_int *cancel) {
  return cancel && atomic_load_explicit(cancel, memory_order_relaxed);
}

/* libinih's reader: one line of the text per call (long lines were
 * refused before), counting lines. */
static char *read_line(char *str, int num, void *stream) {
  parse_t *p = stream;
  if (!*p->text || num < 2) return NULL;
  if (p->rc == -ECANCELED) return NULL; /* stop reading: the parse is abandoned */
  int i = 0;
  while (i < num - 1 && p->text[i]) {
    str[i] = p->text[i];
    if (p->text[i++] == '\n') break;
  }
  str[i] = '\0';
  p->text += i;
  p->line = p->next_line;
  if (str[i - 1] == '\n') p->next_line++;
  return str;
}

#define PFAIL(...)                                       \
  do {                                                   \
    snprintf(p->msg, sizeof(p->msg), __VA_ARGS__);       \
    p->rc = GW_ECONFIG;                                  \
    return 0;                                            \
  } while (0)

static int nomem(parse_t *p) {
  p->rc = GW_ENOMEM;
  snprintf(p->msg, sizeof(p->msg), "out of memory");
  return 0;
}

/* Whether some kind has key, and whether kind id has it. */
static int kind_has(int id, const char *key) {
  const gw_alert_kind_t *k = gw_alert_kind(id);
  for (size_t i = 0; k && k->keys[i]; i++)
    if (!strcmp(k->keys[i], key)) return 1;
  return 0;
}

static int any_kind_has(const char *key) {
  for (size_t id = 0; id < gw_alert_kind_count(); id++)
    if (kind_has((int)id, key)) return 1;
  return 0;
}

/* "threshold, relative or stalled" */
static void kind_list(char *buf, size_t cap) {
  size_t n = gw_alert_kind_count(), o = 0;
  buf[0] = '\0';
  for (size_t i = 0; i < n && o < cap; i++)
    o += (size_t)snprintf(buf + o, cap - o, "%s%s", i == 0 ? "" : i + 1 == n ? " or " : ", ",
                          gw_alert_kind((int)i)->name);
}

static int rule_key(parse_t *p, gw_alert_rule_t *r, const char *name, const char *v) {
  int k, rc = 0;
  for (k = 0; k < KEY_COUNT; k++)
    if (!strcmp(common_keys[k], name)) break;
  if (k == KEY_COUNT) { /* a kind's key: kept as text until the kind is known */
    if (!any_kind_has(name)) PFAIL("[alert %s] %s: unknown key", r->name, name);
    for (size_t i = 0; i < r->n_raw; i++)
      if (!strcmp(r->raw[i].key, name)) PFAIL("[alert %s] %s: given twice", r->name, name);
    gw_alert_rawkey_t *nr = realloc(r->raw, (r->n_raw + 1) * sizeof(*nr));
    if (!nr) return nomem(p);
    r->raw = nr;
    gw_alert_rawkey_t *rk = &r->raw[r->n_raw];
    rk->line = p->line;
    rk->key = strdup(name);
    rk->value = strdup(v);
    if (!rk->key || !rk->value) {
      free(rk->key);
      free(rk->value);
      return nomem(p);
    }
    r->n_raw++;
    return 1;
  }
  if ((r->given & (1u << k)) && k != KEY_SUMMARY && k != KEY_DESCRIPTION)
    PFAIL("[alert %s] %s: given twice", r->name, name);
  r->given |= 1u << k;
  switch (k) {
    case KEY_KIND:
      if ((r->kind = gw_alert_kind_lookup(v)) < 0) {
        char list[128];
        kind_list(list, sizeof(list));
        PFAIL("[alert %s] kind: '%s' is not %s", r->name, v, list);
      }
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
    default: /* KEY_SUMMARY, KEY_DESCRIPTION */
      rc = append_str(k == KEY_SUMMARY ? &r->summary : &r->description, v);
      if (rc == GW_EINVAL)
        PFAIL("[alert %s] %s: longer than %d bytes", r->name, name, GW_ALERT_TEXT_MAX);
      break;
  }
  return rc ? nomem(p) : 1;
}

static int alerts_key(parse_t *p, const char *name, const char *v) {
  gw_alert_rules_t *rs = p->rs;
  if (!strcmp(name, "webhook")) {
    if (rs->n_webhooks == GW_ALERT_WEBHOOKS_MAX)
      PFAIL("[alerts] webhook: at most %d", GW_ALERT_WEBHOOKS_MAX);
    if (strncmp(v, "http://", 7) && strncmp(v, "https://", 8))
      PFAIL("[alerts] webhook: '%s' is not an http:// or https:// URL", v);
    for (size_t i = 0; i < rs->n_webhooks; i++)
      if (!strcmp(rs->webhooks[i], v)) PFAIL("[alerts] webhook: '%s' given twice", v);
    if (!(rs->webhooks[rs->n_webhooks] = strdup(v))) return nomem(p);
    rs->n_webhooks++;
    return 1;
  }
  int k;
  for (k = 0; k < GW_ALERTS_KEY_COUNT; k++)
    if (!strcmp(akey_names[k], name)) break;
  if (k == GW_ALERTS_KEY_COUNT) PFAIL("[alerts] %s: unknown key", name);
  if (rs->given & (1u << k)) PFAIL("[alerts] %s: given twice", name);
  rs->given |= 1u << k;
  switch (k) {
    case GW_ALERTS_KEY_WEBHOOK_TIMEOUT:
      if (gw_alert_rules_integer(v, 10, 600000, &rs->webhook_timeout_ms))
        PFAIL("[alerts] webhook_timeout_ms: '%s' is not an integer in [10, 600000]", v);
      break;
    case GW_ALERTS_KEY_WEBHOOK_RETRIES:
      if (gw_alert_rules_integer(v, 0, 20, &rs->webhook_retries))
        PFAIL("[alerts] webhook_retries: '%s' is not an integer in [0, 20]", v);
      break;
    case GW_ALERTS_KEY_WEBHOOK_BACKOFF:
      if (gw_alert_rules_integer(v, 1, 600000, &rs->webhook_backoff_ms))
        PFAIL("[alerts] webhook_backoff_ms: '%s' is not an integer in [1, 600000]", v);
      break;
    case GW_ALERTS_KEY_WEBHOOK_QUEUE:
      if (gw_alert_rules_integer(v, 1, 1000000, &rs->webhook_queue))
        PFAIL("[alerts] webhook_queue: '%s' is not an integer in [1, 1000000]", v);
      break;
    case GW_ALERTS_KEY_DEFAULTS:
      if (parse_bool(v, &rs->defaults)) PFAIL("[alerts] defaults: '%s' is not true or false", v);
      break;
    case GW_ALERTS_KEY_EXTERNAL_URL:
      if (set_str(&rs->external_url, v)) return nomem(p);
      break;
    case GW_ALERTS_KEY_RECEIVER:
      if (set_str(&rs->receiver, v)) return nomem(p);
      break;
    case GW_ALERTS_KEY_MAX_STATES:
      if (gw_alert_rules_integer(v, 1, 100000000, &rs->max_states))
        PFAIL("[alerts] max_states: '%s' is not an integer in [1, 100000000]", v);
      break;
    default: /* GW_ALERTS_KEY_FORGET_AFTER */
      if (gw_alert_rules_number(v, &rs->forget_after) || rs->forget_after < 0 ||
          rs->forget_after > 1e9)
        PFAIL("[alerts] forget_after: '%s' is not a number of seconds in [0, 1e9]", v);
      break;
  }
  return 1;
}

static int on_ini(void *user, const char *section, const char *name, const char *value) {
  parse_t *p = user;
  if (p->rc) return 0;
  if (cancelled(p->cancel)) {
    p->rc = -ECANCELED;
    snprintf(p->msg, sizeof(p->msg), "cancelled");
    return 0;
  }
  if (!strcmp(section, "alerts")) return alerts_key(p, name, value);
  if (strncmp(section, "alert ", 6)) return 1; /* another module's section */
  const char *rn = section + 6;
  while (*rn == ' ') rn++;
  if (!valid_name(rn))
    PFAIL("[alert %s]: a rule name is 1-%d characters of [A-Za-z0-9_.:-]", rn, GW_ALERT_NAME_MAX);
  gw_alert_rule_t *r = gw_alert_rules_find(p->rs, rn);
  if (!r && !(r = add_rule(p->rs, rn))) return nomem(p);
  return rule_key(p, r, name, value);
}

/* The kind parses its keys and validates the rule; then the defaults every
 * kind shares. On error *line is the line of the key at fault (0: none). */
static int rule_finish(gw_alert_rule_t *r, char *msg, size_t msglen, unsigned *line) {
  int rc = 0;
  *line = 0;
  if (r->kind < 0) r->kind = gw_alert_kind_lookup("threshold");
  const gw_alert_kind_t *k = gw_alert_kind(r->kind);
  for (size_t i = 0; i < r->n_raw && !rc; i++) {
    const gw_alert_rawkey_t *rk = &r->raw[i];
    *line = rk->line;
    if (!kind_has(r->kind, rk->key)) {
      snprintf(msg, msglen, "[alert %s] %s: not a key of kind = %s", r->name, rk->key, k->name);
      return GW_ECONFIG;
    }
    rc = k->parse(r, rk->key, rk->value, msg, msglen);
  }
  if (rc) return rc;
  *line = 0;
  for (size_t i = 0; i < r->n_raw; i++) {
    free(r->raw[i].key);
    free(r->raw[i].value);
  }
  free(r->raw);
  r->raw = NULL;
  r->n_raw = 0;
  if ((rc = k->validate(r, msg, msglen))) return rc;
  if ((!r->severity && set_str(&r->severity, "warning")) ||
      (!r->run_glob && set_str(&r->run_glob, "*")) || (!r->tag_glob && set_str(&r->tag_glob, "*")) ||
      (!r->summary && set_str(&r->summary, "")) ||
      (!r->description && set_str(&r->description, ""))) {
    snprintf(msg, msglen, "out of memory");
    return GW_ENOMEM;
  }
  return 0;
}

/* First line of text with LINE_MAX_CHARS - 1 characters or more, or 0. */
static unsigned long_line(const char *text, const atomic_int *cancel) {
  unsigned line = 1;
  size_t len = 0;
  for (size_t i = 0; *text; text++, i++) {
    if ((i & 0xfffff) == 0 && cancelled(cancel)) return 0; /* the caller sees it */
    if (*text == '\n') {
      line++;
      len = 0;
    } else if (++len >= LINE_MAX_CHARS - 1) {
      return line;
    }
  }
  return 0;
}

static void say(char *err, size_t errlen, const char *origin, unsigned line, const char *msg) {
  if (line) snprintf(err, errlen, "%s:%u: %s", origin, line, msg);
  else snprintf(err, errlen, "%s: %s", origin, msg);
}

static int parse_text(gw_alert_rules_t *rs, const char *text, const char *origin,
                      const atomic_int *cancel, char *err, size_t errlen) {
  parse_t p = {.rs = rs, .text = text, .line = 1, .next_line = 1, .cancel = cancel};
  unsigned line = long_line(text, cancel);
  if (line) {
    snprintf(p.msg, sizeof(p.msg),
             "line longer than %d characters (libinih's limit; continue a summary or description "
             "on indented lines)",
             LINE_MAX_CHARS - 1);
    say(err, errlen, origin, line, p.msg);
    return GW_ECONFIG;
  }
  int at = cancelled(cancel) ? 0 : ini_parse_stream(read_line, &p, on_ini, &p);
  if (cancelled(cancel)) p.rc = -ECANCELED, snprintf(p.msg, sizeof(p.msg), "cancelled");
  if (p.rc == -ECANCELED) {
    say(err, errlen, origin, 0, p.msg);
    return p.rc;
  }
  if (p.rc) {
    say(err, errlen, origin, p.rc == GW_ENOMEM ? 0 : (unsigned)at, p.msg);
    return p.rc;
  }
  if (at) {
    say(err, errlen, origin, at > 0 ? (unsigned)at : 0, at > 0 ? "syntax error" : "cannot parse");
    return GW_ECONFIG;
  }
  for (size_t i = 0; i < rs->n; i++) {
    if (cancelled(cancel)) {
      say(err, errlen, origin, 0, "cancelled");
      return -ECANCELED;
    }
    int rc = rule_finish(&rs->rules[i], p.msg, sizeof(p.msg), &line);
    if (rc) {
      say(err, errlen, origin, line, p.msg);
      return rc;
    }
  }
  return 0;
}

int gw_alert_rules_parse(gw_alert_rules_t *rs, const char *text, const char *origin, char *err,
                         size_t errlen) {
  return parse_text(rs, text, origin, NULL, err, errlen);
}

/* The whole text of path (theirs to free), or NULL with err set (and *rc
 * -ECANCELED when *cancel became nonzero while reading). */
static char *read_file(const char *path, const atomic_int *cancel, char *err, size_t errlen,
                       int *rc) {
  gw_buf_t b;
  char chunk[65536];
  size_t n;
  FILE *f = fopen(path, "r");
  gw_buf_init(&b);
  if (!f) {
    snprintf(err, errlen, "%s: %s", path, strerror(errno));
    *rc = GW_ECONFIG;
    return NULL;
  }
  gw_buf_append(&b, "", 0); /* terminated even when the file is empty */
  while (!cancelled(cancel) && (n = fread(chunk, 1, sizeof(chunk), f)) > 0)
    gw_buf_append(&b, chunk, n);
  int bad = ferror(f);
  fclose(f);
  if (cancelled(cancel)) {
    snprintf(err, errlen, "%s: cancelled", path);
    gw_buf_free(&b);
    *rc = -ECANCELED;
    return NULL;
  }
  if (bad) {
    snprintf(err, errlen, "%s: read error", path);
    gw_buf_free(&b);
    *rc = GW_ECONFIG;
    return NULL;
  }
  char *text = gw_buf_steal(&b);
  if (!text) {
    snprintf(err, errlen, "%s: out of memory", path);
    *rc = GW_ENOMEM;
  }
  return text;
}

int gw_alert_rules_load(gw_alert_rules_t *out, const char *path, char *err, size_t errlen) {
  return gw_alert_rules_load_cancel(out, path, NULL, err, errlen);
}

int gw_alert_rules_load_cancel(gw_alert_rules_t *out, const char *path, const atomic_int *cancel,
                               char *err, size_t errlen) {
  gw_alert_rules_t user, def;
  int rc = 0;
  gw_alert_rules_init(out);
  gw_alert_rules_init(&user);
  gw_alert_rules_init(&def);
  if (path) {
    char *text = read_file(path, cancel, err, errlen, &rc);
    if (!text) goto done;
    rc = parse_text(&user, text, path, cancel, err, errlen);
    free(text);
    if (rc) goto done;
  }
  if (user.defaults &&
      (rc = parse_text(&def, GW_ALERTS_DEFAULT_RULES, "built-in rules", cancel, err, errlen)))
    goto done; /* a bug of ours: tests catch it */
  /* file rules replace shipped ones of the same name, the rest follow */
  for (size_t i = 0; i < user.n; i++) {
    gw_alert_rule_t *d = gw_alert_rules_find(&def, user.rules[i].name);
    if (d) {
      rule_free(d);
      *d = user.rules[i]; /* same name: the index stays right */
      memset(&user.rules[i], 0, sizeof(user.rules[i]));
    } else if ((rc = push(&def, &user.rules[i]))) {
      snprintf(err, errlen, "out of memory");
      goto done;
    }
  }
  /* the settings are the file's, the rules the merged ones */
  for (size_t i = 0; i < user.n; i++) rule_free(&user.rules[i]);
  free(user.rules);
  free(user.index);
  user.rules = def.rules;
  user.n = def.n;
  user.cap = def.cap;
  user.index = def.index;
  user.index_cap = def.index_cap;
  def.rules = NULL;
  def.index = NULL;
  def.n = def.cap = def.index_cap = 0;
  if ((!user.receiver && set_str(&user.receiver, "gradwatch")) ||
      (!user.external_url && set_str(&user.external_url, ""))) {
    rc = GW_ENOMEM;
    snprintf(err, errlen, "out of memory");
    goto done;
  }
  *out = user;
  gw_alert_rules_init(&user);
done:
  gw_alert_rules_free(&user);
  gw_alert_rules_free(&def);
  return rc;
}
