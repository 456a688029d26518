/* point.c — name ↔ id ↔ value for the metrics of GW_METRIC_MAP. */
#include "point.h"

#include <string.h>

static const char *const names[GW_METRIC_COUNT] = {
#define XX(id, name, expr) name,
    GW_METRIC_MAP(XX)
#undef XX
};

int gw_metric_lookup(const char *name, size_t len) {
  for (int i = 0; i < GW_METRIC_COUNT; i++)
    if (strlen(names[i]) == len && memcmp(names[i], name, len) == 0) return i;
  return -1;
}

const char *gw_metric_name(int id) {
  return (id >= 0 && id < GW_METRIC_COUNT) ? names[id] : NULL;
}

double gw_point_get(const gw_point_t *p, int id) {
  switch (id) {
#define XX(id, name, expr) \
  case GW_METRIC_##id:     \
    return expr;
    GW_METRIC_MAP(XX)
#undef XX
    default:
      return 0.0 / 0.0;
  }
}

void gw_point_values(const gw_point_t *p, double *out) {
  int i = 0;
#define XX(id, name, expr) out[i++] = expr;
  GW_METRIC_MAP(XX)
#undef XX
}

/* ---- restart reasons (sink.h) ---- */

#include "sink.h"

static const char *const reasons[GW_RESTART_COUNT] = {
    NULL,
#define XX(id, name) name,
    GW_RESTART_MAP(XX)
#undef XX
};

const char *gw_restart_reason_name(int reason) {
  return reason > 0 && reason < GW_RESTART_COUNT ? reasons[reason] : NULL;
}

int gw_restart_reason_lookup(const char *name) {
  for (int i = 1; i < GW_RESTART_COUNT; i++)
    if (name && strcmp(reasons[i], name) == 0) return i;
  return GW_RESTART_NONE;
}
