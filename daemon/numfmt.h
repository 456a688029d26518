/* numfmt.h — doubles as short decimal text that reads back exactly.
 *
 * JSON (http.c, live.c) and the Prometheus text (metrics.c) print numbers
 * with this, so a value leaves the daemon bit-for-bit as it was computed.
 * Short, not always shortest: 15 significant digits when they suffice, else
 * 17.
 * (cJSON's own printer accepts %.15g when it is within an epsilon of the
 * value, which can change the last bit.) The caller decides what non-finite
 * values become: null in JSON, +Inf/-Inf/omitted in Prometheus.
 */
#ifndef GW_NUMFMT_H
#define GW_NUMFMT_H

#include <stdio.h>
#include <stdlib.h>

#define GW_NUMFMT_MAX 32 /* "-1.2345678901234567e-308" and NUL fit */

/* Write finite v into buf (GW_NUMFMT_MAX bytes); returns the length.
 * %.15g when that reads back exactly (short text for round values), else
 * %.17g, which always does. (Skipping %.16g costs a digit on some values and
 * saves a third of the time: printf and strtod dominate the SSE publish.) */
static inline int gw_fmt_double(char *buf, double v) {
  int n = snprintf(buf, GW_NUMFMT_MAX, "%.15g", v);
  if (strtod(buf, NULL) != v) n = snprintf(buf, GW_NUMFMT_MAX, "%.17g", v);
  return n;
}

#endif
