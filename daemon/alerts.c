/* alerts.c — per-(rule, stream) states and their transitions. See alerts.h
 * for the data flow and threads, docs/ALERTS.md for the rules as operators
 * write them.
 *
 * NOTES ON THE DESIGN
 *
 * Rules. A rule set (alert_rules.c) is parsed whole and validated before
 * it replaces the one in force, so a broken file changes nothing. What a
 * kind means (its verdict on a point or a tick) is alert_kinds.c's; what a
 * transition says and where it goes is alert_notify.c's. This file never
 * asks which kind a rule is.
 *
 * Streams. A gw_rtmap_t keyed by (run, tag) holds one entry per stream seen
 * since start, with the states of the rules whose run and tag globs match
 * it (matched once, when the stream is first seen, and again at reload). A
 * stream matching no rule keeps an entry without states, so its globs are
 * not matched again on every point. Entries plus states are capped at
 * max_states; a stream silent for forget_after seconds, or retired by
 * ingest (forget), is dropped.
 *
 * States of one (rule, stream), moved by step() on every input (a point,
 * or a tick with the stream's silence) from the kind's verdict:
 *
 *     INACTIVE --breach--> PENDING --for_steps consecutive breaches--> FIRING
 *        ^  ^                 |                                          |
 *        |  +--no breach------+                                          |
 *        +------------ verdict no longer holds (notified: resolved) -----+
 *
 * with for_steps = 1 a breach goes straight to FIRING. "Holds" is judged
 * against the rule's resolve bound, on the easy side of the threshold
 * (hysteresis), so a value hovering at the threshold does not flap. Only
 * FIRING and its end are persisted and notified: a PENDING state is the
 * count-down of for_steps, most end without firing, and writing each would
 * flood the store and the receivers with noise. A verdict of "no data" (a
 * NaN, a baseline still filling) moves nothing. forget() and reload resolve
 * what disappears, with the reason in the annotations.
 *
 * Baselines. A rule with a window (relative) keeps the last `window`
 * values of its metric in the state, but only values seen while the state
 * ends its input INACTIVE: values seen while PENDING or FIRING are not
 * absorbed, so a sustained departure cannot become its own baseline
 * (frozen baseline). A stream's restart (a new publisher incarnation, …)
 * empties the baselines of its states that are not firing and ends their
 * pending counts: the new regime is judged against itself once min_points
 * of it are in. A firing state keeps its baseline and resolves against it.
 *
 * Restore. At start the store's active alerts come back as FIRING states
 * (not notified again), their baselines refilled from the stored points
 * before the alert started; those no rule carries any more are closed.
 *
 * Threads. observe (ingest's workers, one at a time), tick and reload (the
 * loop thread) and forget serialise on `eval_mu`, which guards the rules,
 * the streams and their states. The HTTP side (gw_alerts_metrics,
 * gw_alerts_firing_count) reads `firing` and the counters under `mu`,
 * which the evaluating side takes only on a transition or a reload; the
 * webhooks are the notifier's, under its own mutex. Lock order: eval_mu,
 * then mu, then the notifier's, then a webhook's own mutex.
 */
#include "alerts.h"

#include <errno.h>
#include <fnmatch.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alert_kinds.h"
#include "alert_notify.h"
#include "alert_rules.h"
#include "gw_error.h"
#include "util.h"

#define CAPPED_LOG_NS 60000000000LL /* log "states capped" at most once a minute */
#define SEEN_UNKNOWN INT64_MIN      /* last_seen of a restored stream until the first tick */

typedef struct state_s {
  uint32_t rule; /* index in the rule set in force; UINT32_MAX: moved (reload) */
  uint8_t phase; /* GW_ALERT_PHASE_* */
  uint32_t breaches; /* consecutive, while PENDING */
  uint64_t id;       /* store id while FIRING */
  uint64_t started_step;
  int64_t started_ns, fired_ns; /* wall clock */
  double value;                 /* what tripped: the kind's verdict value */
  char *labels, *annotations;   /* JSON text, while FIRING */
  gw_alert_baseline_t base;     /* rules with a window */
} state_t;

typedef struct stream_s {
  gw_rtnode_t node;  /* run, tag point into names[] */
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
  gw_alert_rules_t rs;
  gw_rtmap_t streams;
  size_t n_states; /* real (rule, stream) states */
  size_t used;     /* what max_states caps: states + streams without states */
  uint64_t local_id;
  uint64_t capped, capped_unlogged;
  int64_t capped_logged_ns;
  gw_alert_notify_t *notify;
  /* shared with HTTP threads, under mu */
  pthread_mutex_t mu;
  firing_t *firing;
  size_t n_firing, cap_firing;
  uint64_t fired, resolved;
};

#define RUN(s) ((s)->node.run)
#define TAG(s) ((s)->node.tag)

static const gw_alert_kind_t *kind_of(const gw_alert_rule_t *r) { return gw_alert_kind(r->kind); }

/* ------------------------------------------------------------- streams */

static stream_t *find_stream(const gw_alerts_t *a, const char *run, const char *tag) {
  gw_rtnode_t *n = gw_rtmap_find(&a->streams, run, tag);
  return n ? GW_CONTAINER_OF(n, stream_t, node) : NULL;
}

static int rule_matches(const gw_alert_rule_t *r, const char *run, const char *tag) {
  return fnmatch(r->run_glob, run, 0) == 0 && fnmatch(r->tag_glob, tag, 0) == 0;
}

static void state_release(state_t *st) {
  gw_alert_baseline_free(&st->base);
  free(st->labels);
  free(st->annotations);
  st->labels = st->annotations = NULL;
}

static int state_init(state_t *st, uint32_t rule_idx, const gw_alert_rule_t *r) {
  memset(st, 0, sizeof(*st));
  st->rule = rule_idx;
  return gw_alert_baseline_init(&st->base, r->window);
}

static uint64_t cost(uint32_t n_states) { return n_states ? n_states : 1; }

/* The (rule index) states of a stream (run, tag) under rs: matched rules,
 * at most `room` of them. Returns the count in *n (states allocated) and
 * whether some were left out in *capped. */
static int build_states(const gw_alert_rules_t *rs, const char *run, const char *tag, size_t room,
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
  gw_log(a->deps.log, GW_LOG_WARN, "alert_states_capped", "max_states=%u not_created=%" PRIu64,
         a->rs.max_states, a->capped_unlogged);
  a->capped_unlogged = 0;
  a->capped_logged_ns = now ? now : 1;
}

/* Find or create the entry of (run, tag); NULL when out of memory (*rc) or
 * at the cap (counted, *rc = 0). */
static stream_t *get_stream(gw_alerts_t *a, const char *run, const char *tag, int64_t now,
                            int *rc) {
  stream_t *s = find_stream(a, run, tag);
  *rc = 0;
  if (s) return s;
  if (a->used >= a->rs.max_states) {
    note_capped(a, now);
    return NULL;
  }
  size_t lr = strlen(run), lt = strlen(tag);
  if (!(s = calloc(1, sizeof(*s) + lr + lt + 2))) {
    *rc = GW_ENOMEM;
    return NULL;
  }
  memcpy(s->names, run, lr + 1);
  memcpy(s->names + lr + 1, tag, lt + 1);
  s->node.run = s->names;
  s->node.tag = s->names + lr + 1;
  s->last_seen = now;
  int capped;
  /* the entry itself costs 1 out of max_states when it has no state */
  if ((*rc = build_states(&a->rs, run, tag, a->rs.max_states - a->used, &s->states, &s->n,
                          &capped)) ||
      (*rc = gw_rtmap_insert(&a->streams, &s->node))) {
    for (uint32_t i = 0; i < s->n; i++) state_release(&s->states[i]);
    free(s->states);
    free(s);
    return NULL;
  }
  if (capped) note_capped(a, now);
  a->used += cost(s->n);
  a->n_states += s->n;
  return s;
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

/* ------------------------------------------------------- transitions */

/* Persist, publish and notify one transition of st (state = FIRING or
 * RESOLVED) at `step`. */
static void emit(gw_alerts_t *a, const stream_t *s, state_t *st, const gw_alert_rule_t *r,
                 int state, uint64_t step, int64_t resolved_ns) {
  char b1[96], b2[160], b3[160];
  gw_alert_desc_t d;
  kind_of(r)->describe(r, &d);
  gw_store_alert_t rec = {.id = st->id,
                          .rule = r->name,
                          .run = RUN(s),
                          .tag = TAG(s),
                          .severity = r->severity,
                          .state = state,
                          .value = st->value,
                          .threshold = d.threshold,
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
      gw_log(a->deps.log, GW_LOG_ERROR, "alert_store", "rule=%s error=\"%s\"",
             gw_log_quote(b1, sizeof(b1), r->name), gw_strerror(rc));
    else
      st->id = rec.id = id;
  } else if (!st->id) {
    st->id = rec.id = ++a->local_id;
  }
  gw_alert_notify_emit(a->notify, &rec, step, r->metric);
  pthread_mutex_lock(&a->mu);
  if (state == GW_ALERT_FIRING) {
    a->fired++;
    firing_add(a, st->id, r->name, RUN(s), TAG(s), r->severity);
  } else {
    a->resolved++;
    firing_remove(a, r->name, RUN(s), TAG(s));
  }
  pthread_mutex_unlock(&a->mu);
  gw_log(a->deps.log, state == GW_ALERT_FIRING ? GW_LOG_WARN : GW_LOG_INFO,
         state == GW_ALERT_FIRING ? "alert_firing" : "alert_resolved",
         "id=%" PRIu64 " rule=%s run=%s tag=%s severity=%s value=%.6g step=%" PRIu64
         " started_step=%" PRIu64,
         st->id, gw_log_quote(b1, sizeof(b1), r->name), gw_log_quote(b2, sizeof(b2), RUN(s)),
         gw_log_quote(b3, sizeof(b3), TAG(s)), r->severity, st->value, step, st->started_step);
}

static void fire(gw_alerts_t *a, const stream_t *s, state_t *st, const gw_alert_rule_t *r,
                 const gw_alert_trip_t *t) {
  st->phase = GW_ALERT_PHASE_FIRING;
  st->fired_ns = gw_now_ns();
  st->value = t->value;
  st->id = 0;
  free(st->labels);
  free(st->annotations);
  if (gw_alert_notify_describe(r, RUN(s), TAG(s), t, &st->labels, &st->annotations))
    gw_log(a->deps.log, GW_LOG_ERROR, "alert_describe", "error=\"out of memory\"");
  emit(a, s, st, r, GW_ALERT_FIRING, t->step, 0);
}

/* End a FIRING state; reason (may be NULL) goes into the annotations. */
static void resolve(gw_alerts_t *a, const stream_t *s, state_t *st, const gw_alert_rule_t *r,
                    uint64_t step, const char *reason) {
  if (reason && gw_alert_notify_annotate(&st->annotations, "reason", reason))
    gw_log(a->deps.log, GW_LOG_ERROR, "alert_describe", "error=\"out of memory\"");
  emit(a, s, st, r, GW_ALERT_RESOLVED, step, gw_now_ns());
  free(st->labels);
  free(st->annotations);
  st->labels = st->annotations = NULL;
  st->phase = GW_ALERT_PHASE_INACTIVE;
  st->breaches = 0;
  st->id = 0;
}

/* One input (a point p, or a tick when p is NULL) through one state. */
static void step(gw_alerts_t *a, const stream_t *s, state_t *st, const gw_alert_rule_t *r,
                 const gw_point_t *p, int64_t silent_ns) {
  gw_alert_input_t in = {.p = p,
                         .silent_ns = silent_ns,
                         .step = p ? p->step : s->last_step,
                         .phase = st->phase,
                         .base = r->window ? &st->base : NULL};
  gw_alert_verdict_t v;
  kind_of(r)->eval(r, &in, &v);
  if (v.seen) {
    switch (st->phase) {
      case GW_ALERT_PHASE_INACTIVE:
        if (v.breach) {
          st->phase = GW_ALERT_PHASE_PENDING;
          st->breaches = 1;
          st->started_step = in.step;
          st->started_ns = gw_now_ns();
        }
        break;
      case GW_ALERT_PHASE_PENDING:
        if (v.breach) {
          st->breaches++;
        } else {
          st->phase = GW_ALERT_PHASE_INACTIVE;
          st->breaches = 0;
        }
        break;
      default: /* FIRING */
        if (!v.holds) resolve(a, s, st, r, in.step, NULL);
        break;
    }
    if (st->phase == GW_ALERT_PHASE_PENDING && st->breaches >= r->for_steps) {
      gw_alert_trip_t t = {v.value, v.observed, v.baseline, in.step, st->started_step};
      fire(a, s, st, r, &t);
    }
  }
  if (st->phase == GW_ALERT_PHASE_INACTIVE && isfinite(v.absorb))
    gw_alert_baseline_add(&st->base, v.absorb);
}

int gw_alerts_observe(gw_alerts_t *a, const char *run, const char *tag, const gw_point_t *p,
                      int64_t now_ns) {
  if (!a || !run || !tag || !p) return GW_EINVAL;
  int rc;
  pthread_mutex_lock(&a->eval_mu);
  stream_t *s = get_stream(a, run, tag, now_ns, &rc);
  if (s) {
    s->last_seen = now_ns;
    s->last_step = p->step;
    for (uint32_t i = 0; i < s->n; i++)
      step(a, s, &s->states[i], &a->rs.rules[s->states[i].rule], p, 0);
  }
  pthread_mutex_unlock(&a->eval_mu);
  return rc;
}

/* Resolve what fires on s (with reason), free it (unlinked by the caller). */
static void drop_stream(gw_alerts_t *a, stream_t *s, const char *reason) {
  for (uint32_t i = 0; i < s->n; i++) {
    state_t *st = &s->states[i];
    if (st->phase == GW_ALERT_PHASE_FIRING)
      resolve(a, s, st, &a->rs.rules[st->rule], s->last_step, reason);
    state_release(st);
  }
  a->used -= cost(s->n);
  a->n_states -= s->n;
  free(s->states);
  free(s);
}

int gw_alerts_tick(gw_alerts_t *a, int64_t now_ns) {
  pthread_mutex_lock(&a->eval_mu);
  double forget_ns = a->rs.forget_after * 1e9;
  gw_rtiter_t it = {0};
  gw_rtnode_t *node;
  while ((node = gw_rtmap_next(&a->streams, &it))) {
    stream_t *s = GW_CONTAINER_OF(node, stream_t, node);
    if (s->last_seen == SEEN_UNKNOWN) s->last_seen = now_ns; /* restored: silence starts now */
    int64_t silent_ns = now_ns - s->last_seen;
    if (forget_ns > 0 && (double)silent_ns >= forget_ns) {
      char b1[160], b2[160];
      gw_log(a->deps.log, GW_LOG_INFO, "alert_stream_forgotten", "run=%s tag=%s silent_s=%.0f",
             gw_log_quote(b1, sizeof(b1), RUN(s)), gw_log_quote(b2, sizeof(b2), TAG(s)),
             (double)silent_ns * 1e-9);
      gw_rtmap_remove(&a->streams, RUN(s), TAG(s));
      drop_stream(a, s, "stream silent for forget_after");
      continue;
    }
    for (uint32_t i = 0; i < s->n; i++)
      step(a, s, &s->states[i], &a->rs.rules[s->states[i].rule], NULL, silent_ns);
  }
  pthread_mutex_unlock(&a->eval_mu);
  return 0;
}

int gw_alerts_forget(gw_alerts_t *a, const char *run, const char *tag) {
  if (!a || !run || !tag) return GW_EINVAL;
  int rc = GW_ENOTFOUND;
  pthread_mutex_lock(&a->eval_mu);
  gw_rtnode_t *n = gw_rtmap_remove(&a->streams, run, tag);
  if (n) {
    drop_stream(a, GW_CONTAINER_OF(n, stream_t, node), "stream retired");
    rc = 0;
  }
  pthread_mutex_unlock(&a->eval_mu);
  return rc;
}

/* A new regime: baselines and pending counts start afresh; firing states
 * keep theirs (see Baselines above). */
static void restart_stream(gw_alerts_t *a, const char *run, const char *tag) {
  pthread_mutex_lock(&a->eval_mu);
  stream_t *s = find_stream(a, run, tag);
  for (uint32_t i = 0; s && i < s->n; i++) {
    state_t *st = &s->states[i];
    if (st->phase == GW_ALERT_PHASE_FIRING) continue;
    st->phase = GW_ALERT_PHASE_INACTIVE;
    st->breaches = 0;
    gw_alert_baseline_reset(&st->base);
  }
  pthread_mutex_unlock(&a->eval_mu);
}

/* ---------------------------------------------------------------- sink */

static void sink_point(void *arg, const gw_stream_ref_t *s, const gw_point_t *p) {
  gw_alerts_observe(arg, s->run, s->tag, p, gw_mono_ns());
}

static void sink_restart(void *arg, const gw_stream_ref_t *s, const gw_restart_t *r) {
  (void)r;
  restart_stream(arg, s->run, s->tag);
}

static void sink_forget(void *arg, const gw_stream_ref_t *s) {
  gw_alerts_forget(arg, s->run, s->tag);
}

void gw_alerts_sink(gw_alerts_t *a, gw_sink_t *out) {
  memset(out, 0, sizeof(*out));
  out->name = "alerts";
  out->arg = a;
  out->point = sink_point;
  out->restart = sink_restart;
  out->forget = sink_forget;
}

/* ------------------------------------------------------------ restore */

/* Refill a restored state's baseline from the stored points before the
 * alert started (best effort: nothing stored, nothing filled). */
static void restore_baseline(gw_alerts_t *a, const stream_t *s, state_t *st,
                             const gw_alert_rule_t *r) {
  gw_series_t ser;
  int m = r->metric;
  if (st->started_step == 0 || m < 0 ||
      gw_store_series(a->deps.store, RUN(s), TAG(s), &m, 1, 0, st->started_step - 1, 0, &ser, 0))
    return;
  size_t i = ser.n, got = 0;
  while (i > 0 && got < r->window)
    if (isfinite(ser.cols[0][--i])) got++;
  for (; i < ser.n; i++)
    if (isfinite(ser.cols[0][i])) gw_alert_baseline_add(&st->base, ser.cols[0][i]);
  gw_store_series_free(&ser);
}

static char *dup_or_null(const char *s) { return s ? strdup(s) : NULL; }

/* Close a stored active alert that no rule carries any more. */
static void close_stale(gw_alerts_t *a, gw_store_alert_t *rec, const char *why) {
  char b1[96];
  rec->state = GW_ALERT_RESOLVED;
  rec->resolved_ns = gw_now_ns();
  int rc = gw_store_put_alert(a->deps.store, rec, NULL);
  gw_alert_notify_send(a->notify, rec, -1);
  pthread_mutex_lock(&a->mu);
  a->resolved++;
  pthread_mutex_unlock(&a->mu);
  gw_log(a->deps.log, GW_LOG_INFO, "alert_resolved", "id=%" PRIu64 " rule=%s reason=%s store=%s",
         rec->id, gw_log_quote(b1, sizeof(b1), rec->rule), why, gw_strerror(rc));
}

static int restore(gw_alerts_t *a, int64_t now) {
  gw_store_alert_t *recs = NULL;
  size_t n = 0, kept = 0;
  if (!a->deps.store) return 0;
  int rc = gw_store_alerts_firing(a->deps.store, &recs, &n);
  if (rc) return rc;
  for (size_t i = 0; i < n; i++) {
    gw_store_alert_t *rec = &recs[i];
    gw_alert_rule_t *r = gw_alert_rules_find(&a->rs, rec->rule);
    state_t *st = NULL;
    stream_t *s = NULL;
    const char *why = "rule_removed";
    if (r && rec->state == GW_ALERT_FIRING && rec->run && rec->tag) {
      why = "stream_not_matched";
      if (rule_matches(r, rec->run, rec->tag) && (s = get_stream(a, rec->run, rec->tag, now, &rc)))
        for (uint32_t k = 0; k < s->n && !st; k++)
          if (&a->rs.rules[s->states[k].rule] == r) st = &s->states[k];
      if (st && st->phase != GW_ALERT_PHASE_INACTIVE) {
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
    st->phase = GW_ALERT_PHASE_FIRING;
    st->id = rec->id;
    st->started_step = rec->started_step;
    st->started_ns = rec->started_ns;
    st->fired_ns = rec->fired_ns;
    st->value = rec->value;
    st->labels = dup_or_null(rec->labels);
    st->annotations = dup_or_null(rec->annotations);
    if (!st->labels || !st->annotations) {
      gw_alert_trip_t t = {rec->value, NAN, NAN, rec->started_step, rec->started_step};
      free(st->labels);
      free(st->annotations);
      if ((rc = gw_alert_notify_describe(r, RUN(s), TAG(s), &t, &st->labels, &st->annotations)))
        goto done;
    }
    if (r->window) restore_baseline(a, s, st, r);
    pthread_mutex_lock(&a->mu);
    rc = firing_add(a, st->id, r->name, RUN(s), TAG(s), r->severity);
    pthread_mutex_unlock(&a->mu);
    if (rc) goto done;
    gw_store_alert_t again = *rec;
    again.labels = st->labels;
    again.annotations = st->annotations;
    gw_alert_notify_restored(a->notify, &again); /* Alertmanager re-sends it while it fires */
    kept++;
  }
  gw_log(a->deps.log, GW_LOG_INFO, "alerts_restored", "firing=%zu closed=%zu", kept, n - kept);
done:
  gw_store_alerts_free(recs, n);
  return rc;
}

/* ------------------------------------------------------------ life cycle */

int gw_alerts_new(gw_alerts_t **out, const char *path, const gw_alerts_deps_t *deps, char *err,
                  size_t errlen) {
  *out = NULL;
  gw_alerts_t *a = calloc(1, sizeof(*a));
  if (!a) return GW_ENOMEM;
  int rc;
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
  gw_alert_rules_init(&a->rs);
  if ((rc = gw_rtmap_init(&a->streams))) goto fail;
  if ((rc = gw_alert_rules_load(&a->rs, path, err, errlen))) goto fail;
  if ((rc = gw_alert_notify_new(&a->notify, &a->rs, a->deps.live, a->deps.log, err, errlen)))
    goto fail;
  if (a->deps.alertmanager && a->deps.alertmanager->n_urls &&
      (rc = gw_alert_notify_alertmanager(a->notify, a->deps.alertmanager))) {
    snprintf(err, errlen, "[alertmanager] url: %s", gw_strerror(rc));
    goto fail;
  }
  a->deps.alertmanager = NULL; /* borrowed for new only */
  if ((rc = restore(a, SEEN_UNKNOWN))) {
    snprintf(err, errlen, "alerts: restoring active alerts from the store: %s", gw_strerror(rc));
    goto fail;
  }
  gw_log(a->deps.log, GW_LOG_INFO, "alerts_loaded", "rules=%zu webhooks=%zu defaults=%s", a->rs.n,
         gw_alert_notify_webhooks(a->notify), a->rs.defaults ? "true" : "false");
  *out = a;
  return 0;
fail:
  gw_alerts_free(a, 0);
  return rc;
}

static void free_streams(gw_alerts_t *a) {
  gw_rtiter_t it = {0};
  gw_rtnode_t *node;
  while (a->streams.buckets && (node = gw_rtmap_next(&a->streams, &it))) {
    stream_t *s = GW_CONTAINER_OF(node, stream_t, node);
    for (uint32_t i = 0; i < s->n; i++) state_release(&s->states[i]);
    free(s->states);
    free(s);
  }
  gw_rtmap_free(&a->streams);
}

void gw_alerts_free(gw_alerts_t *a, uint32_t drain_ms) {
  if (!a) return;
  gw_alert_notify_free(a->notify, drain_ms);
  free_streams(a);
  firing_clear(a);
  free(a->firing);
  gw_alert_rules_free(&a->rs);
  pthread_mutex_destroy(&a->eval_mu);
  pthread_mutex_destroy(&a->mu);
  free(a);
}

/* Same rule for a surviving state: name, kind, metric, window. */
static int same_identity(const gw_alert_rule_t *x, const gw_alert_rule_t *y) {
  return !strcmp(x->name, y->name) && x->kind == y->kind && x->metric == y->metric &&
         x->window == y->window;
}

int gw_alerts_reload(gw_alerts_t *a, const char *path, char *err, size_t errlen) {
  return gw_alerts_reload_cancel(a, path, NULL, err, errlen);
}

int gw_alerts_reload_cancel(gw_alerts_t *a, const char *path, const atomic_int *cancel, char *err,
                            size_t errlen) {
  gw_alert_rules_t n;
  int rc = gw_alert_rules_load_cancel(&n, path, cancel, err, errlen);
  if (rc) return rc;
  if (cancel && atomic_load(cancel)) { /* parsed, but the daemon is stopping */
    gw_alert_rules_free(&n);
    snprintf(err, errlen, "cancelled");
    return -ECANCELED;
  }
  if ((rc = gw_alert_notify_reload(a->notify, &n, err, errlen))) {
    gw_alert_rules_free(&n);
    return rc;
  }
  /* From here on nothing fails but allocations, which degrade (a stream
   * left without states) instead of undoing the reload. */
  pthread_mutex_lock(&a->eval_mu);
  size_t used = 0, n_states = 0;
  gw_rtiter_t it = {0};
  gw_rtnode_t *node;
  while ((node = gw_rtmap_next(&a->streams, &it))) {
    stream_t *s = GW_CONTAINER_OF(node, stream_t, node);
    state_t *sts = NULL;
    uint32_t cnt = 0;
    int capped = 0;
    size_t room = n.max_states > used ? n.max_states - used : 0;
    if (build_states(&n, RUN(s), TAG(s), room, &sts, &cnt, &capped))
      gw_log(a->deps.log, GW_LOG_ERROR, "alert_reload", "error=\"out of memory\"");
    if (capped) note_capped(a, s->last_seen);
    for (uint32_t k = 0; k < cnt; k++) {
      const gw_alert_rule_t *nr = &n.rules[sts[k].rule];
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
      if (os->phase == GW_ALERT_PHASE_FIRING)
        resolve(a, s, os, &a->rs.rules[os->rule], s->last_step, "rule removed or changed");
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
  gw_alert_rules_free(&a->rs);
  a->rs = n;

  pthread_mutex_lock(&a->mu);
  firing_clear(a);
  it = (gw_rtiter_t){0};
  while ((node = gw_rtmap_next(&a->streams, &it))) {
    stream_t *s = GW_CONTAINER_OF(node, stream_t, node);
    for (uint32_t i = 0; i < s->n; i++)
      if (s->states[i].phase == GW_ALERT_PHASE_FIRING) {
        const gw_alert_rule_t *r = &a->rs.rules[s->states[i].rule];
        firing_add(a, s->states[i].id, r->name, RUN(s), TAG(s), r->severity);
      }
  }
  pthread_mutex_unlock(&a->mu);
  gw_log(a->deps.log, GW_LOG_INFO, "alerts_reloaded", "rules=%zu webhooks=%zu streams=%zu states=%zu",
         a->rs.n, gw_alert_notify_webhooks(a->notify), a->streams.count, a->n_states);
  pthread_mutex_unlock(&a->eval_mu);
  return 0;
}

/* ------------------------------------------------------------ exports */

size_t gw_alerts_firing_count(gw_alerts_t *a) {
  pthread_mutex_lock(&a->mu);
  size_t n = a->n_firing;
  pthread_mutex_unlock(&a->mu);
  return n;
}

void gw_alerts_counters(gw_alerts_t *a, gw_alerts_counters_t *out) {
  gw_webhook_stats_t t;
  memset(out, 0, sizeof(*out));
  pthread_mutex_lock(&a->eval_mu);
  out->rules = a->rs.n;
  out->streams = a->streams.count;
  out->states = a->n_states;
  out->states_capped = a->capped;
  pthread_mutex_unlock(&a->eval_mu);
  pthread_mutex_lock(&a->mu);
  out->fired = a->fired;
  out->resolved = a->resolved;
  pthread_mutex_unlock(&a->mu);
  gw_alert_notify_stats(a->notify, &t);
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
  pthread_mutex_unlock(&a->mu);
  gw_alert_notify_stats(a->notify, &t);
  if (rc) goto done;
  if (n) qsort(snap, n, sizeof(*snap), firing_cmp);
  if ((rc = gw_metrics_family(w, "gradwatch_alerts_firing", "gauge", "Alerts currently firing.")) ||
      (rc = gw_metrics_sample(w, "gradwatch_alerts_firing", NULL, (double)n)))
    goto done;
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
  rc = gw_alert_notify_metrics(a->notify, w);
done:
  for (size_t i = 0; i < n; i++) free(snap[i].rule);
  free(snap);
  return rc;
}
