/* jsonnum.h — numbers into cJSON objects as raw text, so they leave the
 * daemon exactly: integers as written, doubles by gw_fmt_double (numfmt.h),
 * non-finite values as null. Shared by the HTTP API (http.c) and the alert
 * JSON (alert_notify.c); header-only, static inline.
 *
 * Each returns the added item, or NULL when out of memory (o unchanged).
 */
#ifndef GW_JSONNUM_H
#define GW_JSONNUM_H

#include <cjson/cJSON.h>
#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>

#include "numfmt.h"

static inline cJSON *gw_json_add_u64(cJSON *o, const char *key, uint64_t v) {
  char b[24];
  snprintf(b, sizeof b, "%" PRIu64, v);
  return cJSON_AddRawToObject(o, key, b);
}

static inline cJSON *gw_json_add_num(cJSON *o, const char *key, double v) {
  char b[GW_NUMFMT_MAX];
  if (!isfinite(v)) return cJSON_AddNullToObject(o, key);
  gw_fmt_double(b, v);
  return cJSON_AddRawToObject(o, key, b);
}

#endif
