/* alert_kinds.h — what each kind of alert rule means: one table entry per
 * kind (threshold, relative, stalled) with how it parses its keys,
 * validates a rule, evaluates an input and describes a firing alert.
 * Adding a kind is one entry in alert_kinds.c plus its tests; nothing else
 * names a kind.
 *
 * The state machine (alerts.c) owns the phases and the baseline and asks
 * the kind for a verdict on every input: a point of the stream, or a clock
 * tick with the stream's silence. The verdict says whether the input
 * breaches the threshold (starts or continues PENDING), whether a FIRING
 * alert still holds (hysteresis: `resolve` is a separate, easier bound),
 * and which value, if any, the baseline should absorb — the machine
 * absorbs it only if the state ends the input INACTIVE (frozen baseline).
 */
#ifndef GW_ALERT_KINDS_H
#define GW_ALERT_KINDS_H

#include <stddef.h>
#include <stdint.h>

#include "alert_rules.h"
#include "point.h"

enum { GW_ALERT_PHASE_INACTIVE, GW_ALERT_PHASE_PENDING, GW_ALERT_PHASE_FIRING };

/* ---- baseline: the last `cap` values, and their median in O(1) ---- */

/* A ring (insertion order) plus a sorted copy: an update is a binary
 * search and a memmove of at most cap doubles. */
typedef struct gw_alert_baseline_s {
  double *ring, *sorted; /* one allocation at ring */
  uint32_t cap, len, head;
} gw_alert_baseline_t;

int gw_alert_baseline_init(gw_alert_baseline_t *b, uint32_t cap); /* 0 or GW_ENOMEM */
void gw_alert_baseline_free(gw_alert_baseline_t *b);
void gw_alert_baseline_reset(gw_alert_baseline_t *b); /* empty, keeps the memory */
/* Add v, evicting the oldest value when full. */
void gw_alert_baseline_add(gw_alert_baseline_t *b, double v);
/* Median of the values held; NAN when empty. */
double gw_alert_baseline_median(const gw_alert_baseline_t *b);

/* ---- evaluation ---- */

typedef struct gw_alert_input_s {
  const gw_point_t *p;             /* the point, or NULL on a clock tick */
  int64_t silent_ns;               /* tick: time since the stream's last point */
  uint64_t step;                   /* the point's step; tick: the stream's last */
  int phase;                       /* GW_ALERT_PHASE_* before this input */
  const gw_alert_baseline_t *base; /* the state's (rules with a window), else NULL */
} gw_alert_input_t;

typedef struct gw_alert_verdict_s {
  int seen;     /* 0: no data (NaN, no baseline yet, a tick): no phase moves */
  int breach;   /* crosses the threshold */
  int holds;    /* a firing alert stays firing */
  double value; /* what is compared: the metric, a ratio, seconds of silence */
  double observed, baseline; /* the metric's value and the baseline's median; NAN */
  double absorb; /* for the baseline if the state ends INACTIVE; NAN: nothing */
} gw_alert_verdict_t;

/* What a firing alert of the rule reports besides its value. */
enum { GW_ALERT_SHOWS_OBSERVED = 1, GW_ALERT_SHOWS_BASELINE = 2 };
typedef struct gw_alert_desc_s {
  double threshold; /* the alert record's threshold (seconds for stalled) */
  unsigned shows;   /* GW_ALERT_SHOWS_* annotations */
} gw_alert_desc_t;

typedef struct gw_alert_kind_s {
  const char *name;         /* `kind =` value */
  const char *const *keys;  /* the keys of this kind, NULL-terminated */
  /* One of its keys (from `keys`) into r: 0, or GW_ECONFIG with the
   * message "[alert NAME] KEY: …" in msg. */
  int (*parse)(gw_alert_rule_t *r, const char *key, const char *value, char *msg, size_t msglen);
  /* After every key: fill defaults, check keys that need each other.
   * 0, GW_ECONFIG (msg) or GW_ENOMEM. */
  int (*validate)(gw_alert_rule_t *r, char *msg, size_t msglen);
  /* The verdict on one input; never fails. */
  void (*eval)(const gw_alert_rule_t *r, const gw_alert_input_t *in, gw_alert_verdict_t *out);
  void (*describe)(const gw_alert_rule_t *r, gw_alert_desc_t *out);
} gw_alert_kind_t;

/* The kind of id (0 .. gw_alert_kind_count() - 1), or NULL. */
const gw_alert_kind_t *gw_alert_kind(int id);
size_t gw_alert_kind_count(void);
/* Id of a kind name, or -1. */
int gw_alert_kind_lookup(const char *name);

#endif
