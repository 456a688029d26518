/* http_query.h — what an HTTP request names, parsed and validated: the
 * route of a URL path, the parameters of /api/v1/series, the %XX decoding
 * applied to both, and the error text that quotes a client's bytes back.
 *
 * These are pure functions of their input strings (no I/O, no
 * libmicrohttpd connection state, no allocation), kept apart from http.c so
 * tests/fuzz/fuzz_http_query.c can drive them directly with hostile bytes.
 * http.c is their one user in the daemon; the order of its checks (token,
 * method, route, parameters, data) is described there.
 */
#ifndef GW_HTTP_QUERY_H
#define GW_HTTP_QUERY_H

#include <stddef.h>
#include <stdint.h>

#include "point.h"

#define GW_HTTP_MAX_POINTS_MAX 1000000u /* largest max_points accepted */

typedef enum {
  GW_ROUTE_NONE = 0, /* under /api/ but no such endpoint: 404 */
  GW_ROUTE_ASSET,    /* anything outside /api/: an embedded file, if one has this exact path */
  GW_ROUTE_HEALTHZ,
  GW_ROUTE_READYZ,
  GW_ROUTE_METRICS,
  GW_ROUTE_STATS,
  GW_ROUTE_EVENTS,
  GW_ROUTE_RUNS,
  GW_ROUTE_ALERTS,
  GW_ROUTE_SERIES,
  GW_ROUTE_STREAMS, /* "/api/v1/runs/RUN/streams": arg, arg_len name the run */
  GW_ROUTE_RESTARTS,
  GW_ROUTE_RUN,         /* "/api/v1/runs/RUN": arg, arg_len name the run */
  GW_ROUTE_RUN_SUMMARY, /* "/api/v1/runs/RUN/summary": arg, arg_len name the run */
  GW_ROUTE_SUMMARY      /* "/api/v1/summary?runs=A,B" */
} gw_route_t;

/* The route of a decoded URL path. For GW_ROUTE_STREAMS, GW_ROUTE_RUN and
 * GW_ROUTE_RUN_SUMMARY, *arg and *arg_len are
 * the run's bytes inside url (not validated: the caller checks the name);
 * for GW_ROUTE_ASSET, *arg is the asset path to look up ("/" means
 * "/index.html") and *arg_len its length; otherwise *arg is NULL and
 * *arg_len 0. Never fails. */
gw_route_t gw_http_route(const char *url, const char **arg, size_t *arg_len);

/* Decimal uint64: digits only, at least one, no sign, no overflow.
 * 0 with *out set, or GW_EINVAL (*out untouched). */
int gw_http_parse_u64(const char *s, uint64_t *out);

/* Decode %XX escapes in place (libmicrohttpd's MHD_http_unescape; it has
 * already turned '+' into ' ' in query arguments); returns the new length. A string holding "%00" is left as is: a
 * decoded NUL would silently cut it short ("/index.html%00.txt"), while
 * left encoded it matches no route and fails every name check. */
size_t gw_http_unescape(char *s);

/* "what: value" into msg (cap bytes, always NUL-terminated when cap > 0):
 * value cut at 64 bytes, every byte outside printable ASCII shown as '?',
 * so the text is valid UTF-8 and safe in JSON whatever the client sent.
 * Returns msg. */
const char *gw_http_errmsg(char *msg, size_t cap, const char *what,
                           const char *value, size_t vlen);

/* The validated parameters of /api/v1/series. */
typedef struct gw_series_query_s {
  const char *run, *tag;     /* borrowed from the arguments */
  int ids[GW_METRIC_COUNT];  /* metric ids, in the order asked, no duplicates */
  size_t n_metrics;          /* >= 1 */
  uint64_t from, to;         /* from <= to (defaults 0 and UINT64_MAX) */
  uint64_t max_points;       /* 0 = all points, else 2..GW_HTTP_MAX_POINTS_MAX */
  int all_incarnations;      /* incarnations=all (set by gw_http_incarnations) */
} gw_series_query_t;

/* Validate the parameters of /api/v1/series (NULL = absent): run and tag
 * required and well formed (PROTOCOL.md names), metrics a comma list of
 * known, distinct names (absent = every metric), from/to/max_points
 * decimal. 0 with *q filled, or GW_EINVAL with the client's error text in msg
 * (printable ASCII naming the parameter; *q is then unspecified). */
int gw_http_series_query(gw_series_query_t *q, const char *run, const char *tag,
                         const char *metrics, const char *from, const char *to,
                         const char *max_points, char *msg, size_t msglen);

/* The incarnations= parameter of /api/v1/series: absent or "default" → 0
 * (points superseded by a newer incarnation left out), "all" → 1. 0 with
 * *all set, or GW_EINVAL with the client's error text in msg. */
int gw_http_incarnations(const char *v, int *all, char *msg, size_t msglen);

#endif
