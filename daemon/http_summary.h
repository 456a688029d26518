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

#include <microhttpd.h>

#include "http_query.h"
#include "store.h"

#define GW_HTTP_SUMMARY_RUNS_MAX 64 /* runs one /api/v1/summary may name */

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
