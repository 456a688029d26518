/* http_query.c — routes and /api/v1/series parameters (see http_query.h).
 *
 * Everything here reads its arguments and writes only its out-parameters:
 * no allocation, no locks, so a hostile request can cost at most a pass over
 * its own bytes (bounded by http.c's per-connection memory limit).
 */
#include "http_query.h"

#include <stdio.h>
#include <string.h>

#include <microhttpd.h>

#include "gw_error.h"
#include "gw_proto.h"

gw_route_t gw_http_route(const char *url, const char **arg, size_t *arg_len) {
  static const char runs_prefix[] = "/api/v1/runs/", streams_suffix[] = "/streams";
  static const struct {
    const char *path;
    gw_route_t route;
  } exact[] = {
      {"/healthz", GW_ROUTE_HEALTHZ},      {"/readyz", GW_ROUTE_READYZ},
      {"/metrics", GW_ROUTE_METRICS},      {"/api/v1/stats", GW_ROUTE_STATS},
      {"/api/v1/events", GW_ROUTE_EVENTS}, {"/api/v1/runs", GW_ROUTE_RUNS},
      {"/api/v1/alerts", GW_ROUTE_ALERTS}, {"/api/v1/series", GW_ROUTE_SERIES},
      {"/api/v1/restarts", GW_ROUTE_RESTARTS}, {"/api/v1/summary", GW_ROUTE_SUMMARY},
  };
  *arg = NULL;
  *arg_len = 0;
  for (size_t i = 0; i < sizeof exact / sizeof exact[0]; i++)
    if (strcmp(url, exact[i].path) == 0) return exact[i].route;
  if (strncmp(url, runs_prefix, sizeof runs_prefix - 1) == 0) {
    const char *run = url + sizeof runs_prefix - 1;
    size_t ul = strlen(run), sl = sizeof streams_suffix - 1;
    if (ul > sl && strcmp(run + ul - sl, streams_suffix) == 0) {
      *arg = run;
      *arg_len = ul - sl;
      return GW_ROUTE_STREAMS;
    }
    static const char summary_suffix[] = "/summary";
    sl = sizeof summary_suffix - 1;
    if (ul > sl && strcmp(run + ul - sl, summary_suffix) == 0) {
      *arg = run;
      *arg_len = ul - sl;
      return GW_ROUTE_RUN_SUMMARY;
    }
    if (ul > 0 && !strchr(run, '/')) {
      *arg = run;
      *arg_len = ul;
      return GW_ROUTE_RUN;
    }
    return GW_ROUTE_NONE;
  }
  if (strncmp(url, "/api/", 5) == 0) return GW_ROUTE_NONE;
  *arg = strcmp(url, "/") == 0 ? "/index.html" : url;
  *arg_len = strlen(*arg);
  return GW_ROUTE_ASSET;
}

int gw_http_parse_u64(const char *s, uint64_t *out) {
  uint64_t v = 0;
  if (!*s) return GW_EINVAL;
  for (; *s; s++) {
    if (*s < '0' || *s > '9') return GW_EINVAL;
    unsigned d = (unsigned)(*s - '0');
    if (v > (UINT64_MAX - d) / 10) return GW_EINVAL;
    v = v * 10 + d;
  }
  *out = v;
  return 0;
}

size_t gw_http_unescape(char *s) {
  for (const char *p = s; *p; p++)
    if (p[0] == '%' && p[1] == '0' && p[2] == '0') return strlen(s);
  return MHD_http_unescape(s);
}

const char *gw_http_errmsg(char *msg, size_t cap, const char *what,
                           const char *value, size_t vlen) {
  size_t k;
  int n;
  if (cap == 0) return msg;
  if (vlen > 64) vlen = 64;
  n = snprintf(msg, cap, "%s: ", what);
  k = n < 0 ? 0 : (size_t)n >= cap ? cap - 1 : (size_t)n;
  for (size_t i = 0; i < vlen && k + 1 < cap; i++) {
    unsigned char ch = (unsigned char)value[i];
    msg[k++] = (ch >= 0x20 && ch < 0x7f) ? (char)ch : '?';
  }
  msg[k] = '\0';
  return msg;
}

static int bad(char *msg, size_t msglen, const char *what, const char *v, size_t vlen) {
  if (v) gw_http_errmsg(msg, msglen, what, v, vlen);
  else if (msglen) snprintf(msg, msglen, "%s", what);
  return GW_EINVAL;
}

int gw_http_series_query(gw_series_query_t *q, const char *run, const char *tag,
                         const char *metrics, const char *from, const char *to,
                         const char *max_points, char *msg, size_t msglen) {
  memset(q, 0, sizeof *q);
  q->to = UINT64_MAX;
  if (!run) return bad(msg, msglen, "missing parameter: run", NULL, 0);
  if (!tag) return bad(msg, msglen, "missing parameter: tag", NULL, 0);
  if (gw_proto_check_run(run, strlen(run)) != 0)
    return bad(msg, msglen, "bad run name", run, strlen(run));
  if (gw_proto_check_tag(tag, strlen(tag)) != 0)
    return bad(msg, msglen, "bad tag name", tag, strlen(tag));
  q->run = run;
  q->tag = tag;
  if (!metrics) {
    for (int i = 0; i < GW_METRIC_COUNT; i++) q->ids[q->n_metrics++] = i;
  } else {
    const char *p = metrics;
    for (;;) {
      const char *e = strchr(p, ',');
      size_t len = e ? (size_t)(e - p) : strlen(p);
      if (len == 0) return bad(msg, msglen, "empty metric name", NULL, 0);
      int id = gw_metric_lookup(p, len);
      if (id < 0) return bad(msg, msglen, "unknown metric", p, len);
      for (size_t i = 0; i < q->n_metrics; i++)
        if (q->ids[i] == id) return bad(msg, msglen, "duplicate metric", p, len);
      q->ids[q->n_metrics++] = id; /* no duplicates, so n_metrics <= GW_METRIC_COUNT */
      if (!e) break;
      p = e + 1;
    }
  }
  if (from && gw_http_parse_u64(from, &q->from) != 0)
    return bad(msg, msglen, "bad from", from, strlen(from));
  if (to && gw_http_parse_u64(to, &q->to) != 0)
    return bad(msg, msglen, "bad to", to, strlen(to));
  if (q->from > q->to) return bad(msg, msglen, "from is greater than to", NULL, 0);
  if (max_points &&
      (gw_http_parse_u64(max_points, &q->max_points) != 0 || q->max_points < 2 ||
       q->max_points > GW_HTTP_MAX_POINTS_MAX))
    return bad(msg, msglen, "bad max_points: an integer from 2 to 1000000", NULL, 0);
  return 0;
}

int gw_http_incarnations(const char *v, int *all, char *msg, size_t msglen) {
  *all = 0;
  if (!v || strcmp(v, "default") == 0) return 0;
  if (strcmp(v, "all") == 0) {
    *all = 1;
    return 0;
  }
  return bad(msg, msglen, "bad incarnations: default or all", NULL, 0);
}
