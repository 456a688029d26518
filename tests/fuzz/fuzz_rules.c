/* fuzz_rules.c — libFuzzer target for the alert rule parser
 * (daemon/alert_rules.c with the kind table of daemon/alert_kinds.c).
 *
 * The input is INI text. It is
 *   1. parsed alone with gw_alert_rules_parse;
 *   2. written to an in-memory file (memfd) and loaded with
 *      gw_alert_rules_load, which merges the shipped default rules under it.
 *
 * Checked promises (a broken one aborts; LeakSanitizer catches leaks, ASan
 * any overflow): both calls return 0, GW_ECONFIG or GW_ENOMEM; on failure
 * the message is non-empty and terminated; after success every rule is
 * complete (a known kind, a name found by the index at its own slot, names
 * unique, severity info|warning|critical, globs and texts set, for_steps
 * >= 1, resolve on the easy side of threshold for metric kinds, min_points
 * <= window), and every rule's eval and describe run on a point, a NaN
 * point and a tick without crashing, giving verdicts that agree with
 * themselves (no breach without data).
 *
 * Built and run by tests/fuzz/run.sh rules SECONDS (ctest fuzz_rules).
 */
#define _GNU_SOURCE
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "alert_kinds.h"
#include "alert_rules.h"
#include "gw_error.h"

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) abort();                                                      \
  } while (0)

static void check_eval(const gw_alert_rule_t *r) {
  const gw_alert_kind_t *k = gw_alert_kind(r->kind);
  gw_alert_baseline_t b;
  CHECK(gw_alert_baseline_init(&b, r->window) == 0);
  gw_point_t p;
  memset(&p, 0, sizeof p);
  p.step = 3;
  for (int i = 0; i < 5; i++) gw_alert_baseline_add(&b, 1.0 + i);
  double values[] = {2.0, NAN, -1.0, 1e300};
  for (size_t i = 0; i < sizeof values / sizeof *values; i++) {
    p.loss = p.kappa_ema = p.kappa_onestep = p.grad_norm = p.stable_rank = values[i];
    for (int phase = GW_ALERT_PHASE_INACTIVE; phase <= GW_ALERT_PHASE_FIRING; phase++) {
      gw_alert_input_t in = {.p = &p, .step = 3, .phase = phase, .base = r->window ? &b : NULL};
      gw_alert_verdict_t v;
      k->eval(r, &in, &v);
      if (!v.seen) CHECK(!v.breach);
      if (r->metric >= 0 && isnan(gw_point_get(&p, r->metric))) CHECK(!v.seen && isnan(v.absorb));
    }
  }
  gw_alert_input_t tick = {.p = NULL, .silent_ns = 5000000000LL, .step = 3,
                           .phase = GW_ALERT_PHASE_INACTIVE, .base = r->window ? &b : NULL};
  gw_alert_verdict_t v;
  k->eval(r, &tick, &v);
  if (!v.seen) CHECK(!v.breach);
  gw_alert_desc_t d;
  k->describe(r, &d);
  gw_alert_baseline_free(&b);
}

static void check_complete(const gw_alert_rules_t *rs) {
  CHECK(rs->n_webhooks <= GW_ALERT_WEBHOOKS_MAX);
  CHECK(rs->max_states >= 1);
  for (size_t i = 0; i < rs->n; i++) {
    const gw_alert_rule_t *r = &rs->rules[i];
    CHECK(r->name && strlen(r->name) >= 1 && strlen(r->name) <= GW_ALERT_NAME_MAX);
    CHECK(gw_alert_rules_find(rs, r->name) == r); /* unique, indexed */
    CHECK(gw_alert_kind(r->kind) != NULL);
    CHECK(r->severity && (!strcmp(r->severity, "info") || !strcmp(r->severity, "warning") ||
                          !strcmp(r->severity, "critical")));
    CHECK(r->run_glob && r->tag_glob && r->summary && r->description);
    CHECK(r->raw == NULL && r->n_raw == 0);
    CHECK(r->for_steps >= 1);
    CHECK(r->min_points <= r->window);
    if (r->metric >= 0) {
      CHECK(isfinite(r->threshold) && isfinite(r->resolve));
      int up = r->op == GW_ALERT_OP_GT || r->op == GW_ALERT_OP_GE;
      CHECK(up ? r->resolve <= r->threshold : r->resolve >= r->threshold);
    }
    check_eval(r);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *text = malloc(size + 1);
  CHECK(text != NULL);
  memcpy(text, data, size);
  text[size] = '\0';
  char err[1024];
  gw_alert_rules_t rs;

  /* 1. the text alone */
  gw_alert_rules_init(&rs);
  err[0] = '\0';
  int rc = gw_alert_rules_parse(&rs, text, "fuzz.ini", err, sizeof err);
  CHECK(rc == 0 || rc == GW_ECONFIG || rc == GW_ENOMEM);
  if (rc) CHECK(err[0] != '\0' && strnlen(err, sizeof err) < sizeof err);
  else check_complete(&rs);
  gw_alert_rules_free(&rs);
  gw_alert_rules_free(&rs); /* valid-empty after free */

  /* 2. as a file, with the shipped rules merged under it */
  int fd = memfd_create("fuzz_rules.ini", MFD_CLOEXEC);
  CHECK(fd >= 0);
  CHECK(write(fd, data, size) == (ssize_t)size);
  char path[64];
  snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  err[0] = '\0';
  rc = gw_alert_rules_load(&rs, path, err, sizeof err);
  CHECK(rc == 0 || rc == GW_ECONFIG || rc == GW_ENOMEM);
  if (rc) {
    CHECK(err[0] != '\0' && strnlen(err, sizeof err) < sizeof err);
    CHECK(rs.n == 0 && rs.rules == NULL);
  } else {
    check_complete(&rs);
    CHECK(rs.receiver && rs.external_url);
  }
  gw_alert_rules_free(&rs);
  close(fd);
  free(text);
  return 0;
}
