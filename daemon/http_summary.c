/* http_summary.c — GET /api/v1/runs/{run}, /api/v1/runs/{run}/summary and
 * /api/v1/summary?runs=A,B (see http_summary.h).
 *
 * Data flow: the run names from the path or the runs= list (checked against
 * the wire grammar) → gw_store_runs / gw_store_summary on this HTTP thread
 * (read-only connections of the store) → a cJSON document, numbers as raw
 * text (integers exact, doubles by gw_fmt_double, NAN as null) → one
 * response. An unknown run is a 404 naming it; nothing is half answered.
 */
#include "http_summary.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "gw_error.h"
#include "gw_meta.h"
#include "gw_proto.h"
#include "jsonnum.h"
#include "numfmt.h"
#include "runmeta.h"
#include "store_summary.h"
#include "util.h"

/* ---- answers ---- */

static enum MHD_Result queue_text(struct MHD_Connection *c, unsigned status, char *text) {
  struct MHD_Response *r;
  enum MHD_Result ret;
  if (!text) return MHD_NO; /* out of memory: libmicrohttpd closes the connection */
  r = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
  if (!r) {
    free(text);
    return MHD_NO;
  }
  MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
  MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
  MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
  ret = MHD_queue_response(c, status, r);
  MHD_destroy_response(r);
  return ret;
}

/* Takes ownership of o. */
static enum MHD_Result queue_json(struct MHD_Connection *c, unsigned status, cJSON *o) {
  char *text = o ? cJSON_PrintUnformatted(o) : NULL;
  cJSON_Delete(o);
  return queue_text(c, status, text);
}

static enum MHD_Result queue_error(struct MHD_Connection *c, unsigned status, const char *msg) {
  cJSON *o = cJSON_CreateObject();
  if (o && !cJSON_AddStringToObject(o, "error", msg)) {
    cJSON_Delete(o);
    o = NULL;
  }
  return queue_json(c, status, o);
}

/* An error of ours (store, memory): 503 for memory, 500 otherwise. */
static enum MHD_Result queue_failure(struct MHD_Connection *c, int rc) {
  return queue_error(c, rc == GW_ENOMEM ? MHD_HTTP_SERVICE_UNAVAILABLE
                                        : MHD_HTTP_INTERNAL_SERVER_ERROR,
                     gw_strerror(rc));
}

/* ---- the runs= list ---- */

static int bad(char *msg, size_t msglen, const char *what, const char *v, size_t vlen) {
  if (v) gw_http_errmsg(msg, msglen, what, v, vlen);
  else if (msglen) snprintf(msg, msglen, "%s", what);
  return GW_EINVAL;
}

int gw_http_summary_runs(const char *v, char *buf, size_t cap,
                         const char *names[GW_HTTP_SUMMARY_RUNS_MAX], size_t *n, char *msg,
                         size_t msglen) {
  size_t len;
  *n = 0;
  if (!v || !*v) return bad(msg, msglen, "missing parameter: runs", NULL, 0);
  len = strlen(v);
  if (len >= cap) return bad(msg, msglen, "bad runs: too long", NULL, 0);
  memcpy(buf, v, len + 1);
  for (char *p = buf;;) {
    char *e = strchr(p, ',');
    size_t l = e ? (size_t)(e - p) : strlen(p);
    if (e) *e = '\0';
    if (gw_proto_check_run(p, l) != 0) return bad(msg, msglen, "bad run name", p, l);
    for (size_t i = 0; i < *n; i++)
      if (strcmp(names[i], p) == 0) return bad(msg, msglen, "duplicate run", p, l);
    if (*n == GW_HTTP_SUMMARY_RUNS_MAX)
      return bad(msg, msglen, "bad runs: at most 64 runs", NULL, 0);
    names[(*n)++] = p;
    if (!e) break;
    p = e + 1;
  }
  return 0;
}

/* ---- documents ---- */

/* Append the rows of run to arr. 0, GW_ENOTFOUND, or the store's error. */
static int add_rows(gw_store_t *st, const char *run, cJSON *arr) {
  static const char *const pred[GW_SUMMARY_PREDICTORS] = {"onestep", "ema", "linear"};
  gw_store_summary_t *rows = NULL;
  size_t n = 0;
  int rc = gw_store_summary(st, run, &rows, &n);
  for (size_t i = 0; rc == 0 && i < n; i++) {
    const gw_store_summary_t *s = &rows[i];
    char key[48];
    cJSON *o = cJSON_CreateObject();
    if (!o || !cJSON_AddItemToArray(arr, o)) {
      cJSON_Delete(o);
      rc = GW_ENOMEM;
      break;
    }
    int ok = cJSON_AddStringToObject(o, "run", run) && cJSON_AddStringToObject(o, "tag", s->tag) &&
             gw_json_add_u64(o, "steps", s->steps) && gw_json_add_u64(o, "first_step", s->first_step) &&
             gw_json_add_u64(o, "last_step", s->last_step);
    for (int p = 0; ok && p < GW_SUMMARY_PREDICTORS; p++) {
      snprintf(key, sizeof key, "kappa_%s_p5", pred[p]);
      ok = ok && gw_json_add_num(o, key, s->kappa[p].p5);
      snprintf(key, sizeof key, "kappa_%s_median", pred[p]);
      ok = ok && gw_json_add_num(o, key, s->kappa[p].median);
      snprintf(key, sizeof key, "kappa_%s_p95", pred[p]);
      ok = ok && gw_json_add_num(o, key, s->kappa[p].p95);
    }
    for (int p = 0; ok && p < GW_SUMMARY_PREDICTORS; p++) {
      snprintf(key, sizeof key, "kappa_%s_cum", pred[p]);
      ok = ok && gw_json_add_num(o, key, s->kappa_cum[p]);
    }
    ok = ok && gw_json_add_num(o, "kappa_best", s->kappa_best) &&
         gw_json_add_num(o, "rank_90_median", s->rank_90_median) &&
         gw_json_add_num(o, "rank_99_median", s->rank_99_median) &&
         gw_json_add_num(o, "stable_rank_median", s->stable_rank_median) &&
         gw_json_add_num(o, "rank_90_run", s->rank_90_run) && gw_json_add_num(o, "rank_99_run", s->rank_99_run) &&
         gw_json_add_u64(o, "alerts_fired", s->alerts_fired);
    if (!ok) rc = GW_ENOMEM;
  }
  gw_store_summary_free(rows, n);
  return rc;
}

static enum MHD_Result serve_summary(struct MHD_Connection *c, gw_store_t *st,
                                     const char *const *names, size_t n, int single) {
  cJSON *o = cJSON_CreateObject(), *arr = NULL, *list = NULL;
  int rc = 0;
  if (!o) return queue_failure(c, GW_ENOMEM);
  if (single) {
    if (!cJSON_AddStringToObject(o, "run", names[0])) rc = GW_ENOMEM;
  } else if (!(list = cJSON_AddArrayToObject(o, "runs"))) {
    rc = GW_ENOMEM;
  }
  for (size_t i = 0; rc == 0 && list && i < n; i++) {
    cJSON *s = cJSON_CreateString(names[i]);
    if (!s || !cJSON_AddItemToArray(list, s)) {
      cJSON_Delete(s);
      rc = GW_ENOMEM;
    }
  }
  if (rc == 0 && !(arr = cJSON_AddArrayToObject(o, "rows"))) rc = GW_ENOMEM;
  for (size_t i = 0; rc == 0 && i < n; i++) {
    rc = add_rows(st, names[i], arr);
    if (rc == GW_ENOTFOUND) {
      char msg[160];
      cJSON_Delete(o);
      return queue_error(c, MHD_HTTP_NOT_FOUND,
                         gw_http_errmsg(msg, sizeof msg, "unknown run", names[i], strlen(names[i])));
    }
  }
  if (rc != 0) {
    cJSON_Delete(o);
    return queue_failure(c, rc);
  }
  return queue_json(c, MHD_HTTP_OK, o);
}

/* ---- run metadata in run rows ---- */

static cJSON *dup_or_new(const cJSON *meta, const char *key, int array) {
  const cJSON *v = meta ? cJSON_GetObjectItemCaseSensitive(meta, key) : NULL;
  if (v) return cJSON_Duplicate(v, 1);
  return array ? cJSON_CreateArray() : cJSON_CreateObject();
}

static int add_dup(cJSON *o, const char *key, cJSON *v) {
  if (!v) return 0;
  if (!cJSON_AddItemToObject(o, key, v)) {
    cJSON_Delete(v);
    return 0;
  }
  return 1;
}

int gw_http_add_run_meta(cJSON *o, const gw_store_run_t *r, int full, cJSON **parsed) {
  cJSON *meta = r->meta ? cJSON_Parse(r->meta) : NULL;
  int ok = add_dup(o, "tags", dup_or_new(meta, "tags", 1)) &&
           add_dup(o, "labels", dup_or_new(meta, "labels", 0));
  if (ok && full) {
    if (!meta) {
      ok = cJSON_AddNullToObject(o, "meta") != NULL;
    } else {
      cJSON *m = cJSON_CreateObject();
      ok = add_dup(o, "meta", m) && add_dup(m, "config", dup_or_new(meta, "config", 0)) &&
           add_dup(m, "tags", dup_or_new(meta, "tags", 1)) &&
           add_dup(m, "labels", dup_or_new(meta, "labels", 0)) &&
           add_dup(m, "client", dup_or_new(meta, "client", 0)) &&
           gw_json_add_u64(m, "incarnation", r->meta_incarnation) &&
           gw_json_add_num(m, "wall_time", (double)r->meta_wall_ns * 1e-9) &&
           gw_json_add_num(m, "received", (double)r->meta_recv_ns * 1e-9);
    }
  }
  if (parsed) *parsed = meta;
  else cJSON_Delete(meta);
  if (!ok && parsed) {
    cJSON_Delete(*parsed);
    *parsed = NULL;
  }
  return ok ? 0 : GW_ENOMEM;
}

static enum MHD_Result filter_arg(void *cls, enum MHD_ValueKind kind, const char *key,
                                  const char *value) {
  gw_run_filter_t *f = cls;
  (void)kind;
  if (!key || !value) return MHD_YES;
  if (strcmp(key, "tag") == 0) {
    if (f->n_tags == GW_HTTP_RUN_FILTERS_MAX) f->too_many = 1;
    else f->tag[f->n_tags++] = value;
  } else if (strcmp(key, "label") == 0) {
    if (f->n_labels == GW_HTTP_RUN_FILTERS_MAX) f->too_many = 1;
    else f->label[f->n_labels++] = value;
  }
  return MHD_YES;
}

void gw_http_run_filter(struct MHD_Connection *c, gw_run_filter_t *f) {
  memset(f, 0, sizeof *f);
  MHD_get_connection_values(c, MHD_GET_ARGUMENT_KIND, filter_arg, f);
}

int gw_http_run_filter_match(const gw_run_filter_t *f, const cJSON *meta) {
  for (size_t i = 0; i < f->n_tags; i++)
    if (!gw_runmeta_has_tag(meta, f->tag[i])) return 0;
  for (size_t i = 0; i < f->n_labels; i++) {
    const char *eq = strchr(f->label[i], '=');
    char key[GW_META_NAME_MAX + 1];
    size_t kl = eq ? (size_t)(eq - f->label[i]) : strlen(f->label[i]);
    if (kl == 0 || kl > GW_META_NAME_MAX) return 0;
    memcpy(key, f->label[i], kl);
    key[kl] = '\0';
    const char *v = gw_runmeta_label(meta, key);
    if (!v || (eq && strcmp(v, eq + 1) != 0)) return 0; /* "label=K" alone: has the key */
  }
  return 1;
}

static enum MHD_Result serve_run(struct MHD_Connection *c, gw_store_t *st, int64_t stall_ns,
                                 const char *run) {
  gw_store_run_t *runs = NULL;
  size_t n = 0;
  char msg[160];
  int rc = gw_store_runs(st, gw_now_ns(), stall_ns, &runs, &n);
  if (rc != 0) return queue_failure(c, rc);
  for (size_t i = 0; i < n; i++) {
    const gw_store_run_t *r = &runs[i];
    if (strcmp(r->run, run) != 0) continue;
    cJSON *o = cJSON_CreateObject();
    int ok = o && cJSON_AddStringToObject(o, "run", r->run) && gw_json_add_u64(o, "streams", r->streams) &&
             gw_json_add_u64(o, "first_step", r->first_step) && gw_json_add_u64(o, "last_step", r->last_step) &&
             (r->last_seen_ns ? gw_json_add_num(o, "last_seen", (double)r->last_seen_ns * 1e-9)
                              : cJSON_AddNullToObject(o, "last_seen")) &&
             cJSON_AddStringToObject(o, "state", gw_store_run_state_name(r->state)) &&
             gw_http_add_run_meta(o, r, 1, NULL) == 0;
    gw_store_runs_free(runs, n);
    if (!ok) {
      cJSON_Delete(o);
      return queue_failure(c, GW_ENOMEM);
    }
    return queue_json(c, MHD_HTTP_OK, o);
  }
  gw_store_runs_free(runs, n);
  return queue_error(c, MHD_HTTP_NOT_FOUND,
                     gw_http_errmsg(msg, sizeof msg, "unknown run", run, strlen(run)));
}

enum MHD_Result gw_http_summary_serve(struct MHD_Connection *c, gw_store_t *st,
                                      int64_t stall_ns, gw_route_t route, const char *arg,
                                      size_t arg_len) {
  char msg[160], name[GW_PROTO_NAME_MAX + 1];
  if (route == GW_ROUTE_SUMMARY) {
    char buf[GW_HTTP_SUMMARY_RUNS_MAX * (GW_PROTO_NAME_MAX + 1)];
    const char *names[GW_HTTP_SUMMARY_RUNS_MAX];
    size_t n;
    const char *v = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "runs");
    if (gw_http_summary_runs(v, buf, sizeof buf, names, &n, msg, sizeof msg) != 0)
      return queue_error(c, MHD_HTTP_BAD_REQUEST, msg);
    return serve_summary(c, st, names, n, 0);
  }
  if (!arg || gw_proto_check_run(arg, arg_len) != 0)
    return queue_error(c, MHD_HTTP_BAD_REQUEST,
                       gw_http_errmsg(msg, sizeof msg, "bad run name", arg ? arg : "", arg_len));
  memcpy(name, arg, arg_len);
  name[arg_len] = '\0';
  if (route == GW_ROUTE_RUN) return serve_run(c, st, stall_ns, name);
  const char *names[1] = {name};
  return serve_summary(c, st, names, 1, 1);
}
