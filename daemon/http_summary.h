/* http_summary.h — the per-run endpoints of the HTTP API beside the ones
 * http.c answers itself: GET /api/v1/runs/{run} (one run's entry),
 * GET /api/v1/runs/{run}/summary and GET /api/v1/summary?runs=A,B (the
 * regime summary of store_summary.h, one row per run and tag).
 *
 * http.c routes here after its own checks (bearer token, method, store
 * present), so this file sees only authorized GET/HEAD requests for its
 * three routes; it validates the names, reads the store and queues the
 * JSON answer (or {"error": ...}) on the connection.
 */
#ifndef GW_HTTP_SUMMARY_H
#define GW_HTTP_SUMMARY_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>
#include <microhttpd.h>

#include "http_query.h"
#include "store.h"

#define GW_HTTP_SUMMARY_RUNS_MAX 64 /* runs one /api/v1/summary may name */
#define GW_HTTP_RUN_FILTERS_MAX 16 /* tag= and label= parameters of /api/v1/runs */

/* Add r's "tags" (array) and "labels" (object) to o — empty when the run has
 * no metadata — and, with full, "meta": {"config", "tags", "labels",
 * "client", "incarnation", "wall_time", "received"} or null. Returns 0 or
 * GW_ENOMEM. *parsed (may be NULL) receives the parsed document for the
 * caller's filters (the caller's to cJSON_Delete; NULL when none). */
int gw_http_add_run_meta(cJSON *o, const gw_store_run_t *r, int full, cJSON **parsed);

/* The run filters of /api/v1/runs: every tag=T and label=K=V parameter of
 * the request (at most GW_HTTP_RUN_FILTERS_MAX of them). */
typedef struct gw_run_filter_s {
  const char *tag[GW_HTTP_RUN_FILTERS_MAX];
  size_t n_tags;
  const char *label[GW_HTTP_RUN_FILTERS_MAX]; /* "K=V", borrowed from the request */
  size_t n_labels;
  int too_many;
} gw_run_filter_t;
void gw_http_run_filter(struct MHD_Connection *c, gw_run_filter_t *f);
/* 1 if the parsed metadata (NULL: none) passes every filter. */
int gw_http_run_filter_match(const gw_run_filter_t *f, const cJSON *meta);

/* Answer route (GW_ROUTE_RUN, GW_ROUTE_RUN_SUMMARY or GW_ROUTE_SUMMARY) on
 * c; arg/arg_len: the run named in the path (gw_http_route). stall_ns: a
 * live run silent this long is "stalled" (as /api/v1/runs says). Returns
 * libmicrohttpd's result of queueing the answer. */
enum MHD_Result gw_http_summary_serve(struct MHD_Connection *c, gw_store_t *st,
                                      int64_t stall_ns, gw_route_t route, const char *arg,
                                      size_t arg_len);

/* Split and check the runs= list of /api/v1/summary: 1..GW_HTTP_SUMMARY_RUNS_MAX
 * comma-separated distinct run names. names[i] point into buf (a copy of v
 * with the commas replaced by NULs, cap bytes). 0 with *n set, or GW_EINVAL
 * with the client's error text in msg. Pure: no I/O. */
int gw_http_summary_runs(const char *v, char *buf, size_t cap,
                         const char *names[GW_HTTP_SUMMARY_RUNS_MAX], size_t *n, char *msg,
                         size_t msglen);

#endif
