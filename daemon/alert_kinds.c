/* alert_kinds.c — the kind table (see alert_kinds.h) and the baseline the
 * relative kind compares against.
 *
 *   threshold  value op threshold, resolved when no longer value op resolve
 *   relative   value / median(baseline) op threshold, same hysteresis on the
 *              ratio; no verdict before min_points baseline values or while
 *              the median is not above 0 and at least min_baseline
 *   stalled    no point for `seconds` (judged on clock ticks); resolved by
 *              the stream's next point
 *
 * A rule's kind keys arrive here after the whole text is read; parse sees
 * only keys listed in its entry, each once (alert_rules.c checks both).
 * Fields a kind leaves alone keep alert_rules.c's "not given" values:
 * metric -1, threshold and resolve NAN, for_steps, window, min_points 0,
 * seconds 0.
 */
#include "alert_kinds.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gw_error.h"

/* ------------------------------------------------------------ baseline */

int gw_alert_baseline_init(gw_alert_baseline_t *b, uint32_t cap) {
  memset(b, 0, sizeof(*b));
  if (cap == 0) return 0;
  if (!(b->ring = malloc(2 * (size_t)cap * sizeof(double)))) return GW_ENOMEM;
  b->sorted = b->ring + cap;
  b->cap = cap;
  return 0;
}

void gw_alert_baseline_free(gw_alert_baseline_t *b) {
  free(b->ring);
  memset(b, 0, sizeof(*b));
}

void gw_alert_baseline_reset(gw_alert_baseline_t *b) { b->len = b->head = 0; }

static uint32_t lower_bound(const double *s, uint32_t n, double v) {
  uint32_t lo = 0, hi = n;
  while (lo < hi) {
    uint32_t mid = lo + (hi - lo) / 2;
    if (s[mid] < v) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

void gw_alert_baseline_add(gw_alert_baseline_t *b, double v) {
  if (b->cap == 0) return;
  if (b->len == b->cap) {
    double old = b->ring[b->head];
    uint32_t i = lower_bound(b->sorted, b->len, old);
    memmove(&b->sorted[i], &b->sorted[i + 1], (b->len - i - 1) * sizeof(double));
    b->len--;
  }
  uint32_t i = lower_bound(b->sorted, b->len, v);
  memmove(&b->sorted[i + 1], &b->sorted[i], (b->len - i) * sizeof(double));
  b->sorted[i] = v;
  b->len++;
  b->ring[b->head] = v;
  b->head = (b->head + 1) % b->cap;
}

double gw_alert_baseline_median(const gw_alert_baseline_t *b) {
  uint32_t n = b->len;
  if (n == 0) return NAN;
  return n % 2 ? b->sorted[n / 2] : 0.5 * (b->sorted[n / 2 - 1] + b->sorted[n / 2]);
}

/* ------------------------------------------------------------- helpers */

static int fail(char *msg, size_t msglen, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, msglen, fmt, ap);
  va_end(ap);
  return GW_ECONFIG;
}

static int set_default_text(char **dst, const char *text) {
  if (*dst) return 0;
  return (*dst = strdup(text)) ? 0 : GW_ENOMEM;
}

/* metric, op, threshold, resolve, for_steps: the keys of kinds that judge
 * a metric. 0, GW_ECONFIG, or 1 when key is none of them. */
static int metric_key(gw_alert_rule_t *r, const char *key, const char *v, char *msg,
                      size_t msglen) {
  if (!strcmp(key, "metric")) {
    if ((r->metric = gw_metric_lookup(v, strlen(v))) < 0)
      return fail(msg, msglen, "[alert %s] metric: '%s' is not a metric name (see daemon/point.h)",
                  r->name, v);
  } else if (!strcmp(key, "op")) {
    for (r->op = GW_ALERT_OP_GT; r->op <= GW_ALERT_OP_LE; r->op++)
      if (!strcmp(v, gw_alert_op_name(r->op))) return 0;
    return fail(msg, msglen, "[alert %s] op: '%s' is not >, >=, < or <=", r->name, v);
  } else if (!strcmp(key, "threshold")) {
    if (gw_alert_rules_number(v, &r->threshold))
      return fail(msg, msglen, "[alert %s] threshold: '%s' is not a finite number", r->name, v);
  } else if (!strcmp(key, "resolve")) {
    if (gw_alert_rules_number(v, &r->resolve))
      return fail(msg, msglen, "[alert %s] resolve: '%s' is not a finite number", r->name, v);
  } else if (!strcmp(key, "for_steps")) {
    if (gw_alert_rules_integer(v, 1, 1000000, &r->for_steps))
      return fail(msg, msglen, "[alert %s] for_steps: '%s' is not an integer in [1, 1000000]",
                  r->name, v);
  } else {
    return 1;
  }
  return 0;
}

/* The checks of a metric kind: metric and threshold given, resolve on the
 * easy side of threshold (hysteresis), defaults filled. */
static int metric_validate(gw_alert_rule_t *r, const char *kind, char *msg, size_t msglen) {
  if (r->metric < 0)
    return fail(msg, msglen, "[alert %s] metric: required by kind = %s", r->name, kind);
  if (isnan(r->threshold))
    return fail(msg, msglen, "[alert %s] threshold: required by kind = %s", r->name, kind);
  if (isnan(r->resolve)) r->resolve = r->threshold;
  if (r->for_steps == 0) r->for_steps = 1;
  int upward = r->op == GW_ALERT_OP_GT || r->op == GW_ALERT_OP_GE;
  if (upward ? r->resolve > r->threshold : r->resolve < r->threshold)
    return fail(msg, msglen,
                "[alert %s] resolve: %g must be %s threshold %g (hysteresis: an alert firing on "
                "'%s' resolves when the value is no longer %s resolve)",
                r->name, r->resolve, upward ? "<=" : ">=", r->threshold, gw_alert_op_name(r->op),
                gw_alert_op_name(r->op));
  return 0;
}

/* ------------------------------------------------------------ threshold */

static const char *const threshold_keys[] = {"metric", "op", "threshold", "resolve", "for_steps",
                                             NULL};

static int threshold_parse(gw_alert_rule_t *r, const char *key, const char *v, char *msg,
                           size_t msglen) {
  return metric_key(r, key, v, msg, msglen); /* only its keys come here */
}

static int threshold_validate(gw_alert_rule_t *r, char *msg, size_t msglen) {
  int rc = metric_validate(r, "threshold", msg, msglen);
  if (rc) return rc;
  return set_default_text(&r->summary, "{metric} on {run}/{tag} is {value} ({op} {threshold})");
}

static void threshold_eval(const gw_alert_rule_t *r, const gw_alert_input_t *in,
                           gw_alert_verdict_t *out) {
  double v = in->p ? gw_point_get(in->p, r->metric) : NAN;
  *out = (gw_alert_verdict_t){.value = v, .observed = v, .baseline = NAN, .absorb = NAN};
  if (!isfinite(v)) return; /* a tick, or no data */
  out->seen = 1;
  out->breach = gw_alert_op_holds(r->op, v, r->threshold);
  out->holds = gw_alert_op_holds(r->op, v, r->resolve);
}

static void threshold_describe(const gw_alert_rule_t *r, gw_alert_desc_t *out) {
  out->threshold = r->threshold;
  out->shows = GW_ALERT_SHOWS_OBSERVED;
}

/* ------------------------------------------------------------- relative */

static const char *const relative_keys[] = {"metric",     "op",     "threshold",
                                            "resolve",    "for_steps", "window",
                                            "min_points", "min_baseline", NULL};

static int relative_parse(gw_alert_rule_t *r, const char *key, const char *v, char *msg,
                          size_t msglen) {
  int rc = metric_key(r, key, v, msg, msglen);
  if (rc <= 0) return rc;
  if (!strcmp(key, "window")) {
    if (gw_alert_rules_integer(v, 2, 4096, &r->window))
      return fail(msg, msglen, "[alert %s] window: '%s' is not an integer in [2, 4096]", r->name,
                  v);
  } else if (!strcmp(key, "min_points")) {
    if (gw_alert_rules_integer(v, 1, 4096, &r->min_points))
      return fail(msg, msglen, "[alert %s] min_points: '%s' is not an integer in [1, 4096]",
                  r->name, v);
  } else { /* min_baseline */
    if (gw_alert_rules_number(v, &r->min_baseline) || r->min_baseline < 0)
      return fail(msg, msglen, "[alert %s] min_baseline: '%s' is not a number >= 0", r->name, v);
  }
  return 0;
}

static int relative_validate(gw_alert_rule_t *r, char *msg, size_t msglen) {
  int rc = metric_validate(r, "relative", msg, msglen);
  if (rc) return rc;
  if (r->window == 0) r->window = 64;
  if (r->min_points == 0) r->min_points = r->window;
  if (r->min_points > r->window)
    return fail(msg, msglen, "[alert %s] min_points: %u is more than window %u", r->name,
                r->min_points, r->window);
  if (r->threshold <= 0 || r->resolve <= 0)
    return fail(msg, msglen,
                "[alert %s] threshold: a relative rule compares value/median with a positive ratio",
                r->name);
  return set_default_text(
      &r->summary,
      "{metric} on {run}/{tag} is {value}x its trailing median ({observed} vs {baseline})");
}

static void relative_eval(const gw_alert_rule_t *r, const gw_alert_input_t *in,
                          gw_alert_verdict_t *out) {
  double v = in->p ? gw_point_get(in->p, r->metric) : NAN;
  *out = (gw_alert_verdict_t){.value = NAN, .observed = v, .baseline = NAN, .absorb = NAN};
  if (!isfinite(v)) return;
  out->absorb = v; /* taken only if the state ends the point inactive */
  if (in->phase == GW_ALERT_PHASE_INACTIVE && in->base->len < r->min_points) return;
  double base = gw_alert_baseline_median(in->base);
  if (!(base > 0) || base < r->min_baseline) return; /* a ratio to this means nothing */
  double x = v / base;
  out->seen = 1;
  out->value = x;
  out->baseline = base;
  out->breach = gw_alert_op_holds(r->op, x, r->threshold);
  out->holds = gw_alert_op_holds(r->op, x, r->resolve);
}

static void relative_describe(const gw_alert_rule_t *r, gw_alert_desc_t *out) {
  out->threshold = r->threshold;
  out->shows = GW_ALERT_SHOWS_OBSERVED | GW_ALERT_SHOWS_BASELINE;
}

/* -------------------------------------------------------------- stalled */

static const char *const stalled_keys[] = {"seconds", NULL};

static int stalled_parse(gw_alert_rule_t *r, const char *key, const char *v, char *msg,
                         size_t msglen) {
  (void)key; /* "seconds", its only key */
  if (gw_alert_rules_number(v, &r->seconds) || r->seconds <= 0 || r->seconds > 1e7)
    return fail(msg, msglen, "[alert %s] seconds: '%s' is not a number in (0, 1e7]", r->name, v);
  return 0;
}

static int stalled_validate(gw_alert_rule_t *r, char *msg, size_t msglen) {
  if (r->seconds <= 0)
    return fail(msg, msglen, "[alert %s] seconds: required by kind = stalled", r->name);
  r->for_steps = 1; /* the tick that finds the silence fires */
  return set_default_text(&r->summary, "no message from {run}/{tag} for {seconds} s");
}

static void stalled_eval(const gw_alert_rule_t *r, const gw_alert_input_t *in,
                         gw_alert_verdict_t *out) {
  *out = (gw_alert_verdict_t){.seen = 1, .value = NAN, .observed = NAN, .baseline = NAN,
                              .absorb = NAN};
  if (in->p) return; /* a point: not silent (breach 0), and a firing alert ends (holds 0) */
  out->value = (double)in->silent_ns * 1e-9;
  out->breach = (double)in->silent_ns >= r->seconds * 1e9;
  out->holds = 1; /* only a point ends the silence */
}

static void stalled_describe(const gw_alert_rule_t *r, gw_alert_desc_t *out) {
  out->threshold = r->seconds;
  out->shows = 0;
}

/* ---------------------------------------------------------------- table */

static const gw_alert_kind_t kinds[] = {
    {"threshold", threshold_keys, threshold_parse, threshold_validate, threshold_eval,
     threshold_describe},
    {"relative", relative_keys, relative_parse, relative_validate, relative_eval,
     relative_describe},
    {"stalled", stalled_keys, stalled_parse, stalled_validate, stalled_eval, stalled_describe},
};
#define N_KINDS (sizeof(kinds) / sizeof(kinds[0]))

const gw_alert_kind_t *gw_alert_kind(int id) {
  return id >= 0 && (size_t)id < N_KINDS ? &kinds[id] : NULL;
}

size_t gw_alert_kind_count(void) { return N_KINDS; }

int gw_alert_kind_lookup(const char *name) {
  for (size_t i = 0; i < N_KINDS; i++)
    if (!strcmp(kinds[i].name, name)) return (int)i;
  return -1;
}
