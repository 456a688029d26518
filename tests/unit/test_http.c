/* test_http.c — the HTTP API end to end: the real server on 127.0.0.1:0, a
 * real store on a temp file filled through gw_store_put_* + flush, and plain
 * HTTP/1.1 over a socket. Bodies are parsed with cJSON and compared with what
 * was put; every 400/401/404/405 path; the bearer token; /metrics line by
 * line (and promtool when installed); the embedded page against web/ on
 * disk; traversal attempts; SSE through the server. */
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include <cjson/cJSON.h>

#include "alerts.h"
#include "http.h"
#include "point.h"
#include "util.h"

#define TOKEN "s3cret-token-0123456789"

/* ---- fixture: a store with three streams, two alerts; two servers ---- */

typedef struct {
  char dir[64], path[96];
  gw_stats_t stats;
  gw_store_t *store;
  gw_live_t *live;
  gw_metrics_t *metrics;
  atomic_int ready;
  gw_http_t *open_srv, *auth_srv;
  uint16_t port, auth_port;
} fx_t;

static fx_t *F;

/* The values put for stream r1/all at step s (an independent closed form). */
static gw_point_t r1_point(uint32_t id, uint64_t s) {
  gw_point_t p;
  memset(&p, 0, sizeof p);
  p.stream_id = id;
  p.n = s;
  p.step = s;
  p.wall_ns = 1700000000000000000LL + (int64_t)s * 1000000000LL;
  p.recv_ns = p.wall_ns;
  p.window_len = 64;
  p.path_onestep = (double)s * 2.0;
  p.path_ema = (double)s;
  p.kappa_onestep = (double)s / 8.0 + (s == 37 ? 100.0 : 0.0); /* a spike */
  p.kappa_ema = 1.0 / (double)s;
  p.kappa_onestep_cum = 0.1 + 0.2;
  p.kappa_ema_cum = NAN;
  p.rank_90 = (uint32_t)(s % 7);
  p.rank_99 = 12;
  p.stable_rank = 1.5;
  for (int i = 0; i < GW_TOP_SIGMA; i++) {
    p.tail_energy[i] = 1.0 / (i + 3);
    p.sigma[i] = 8.0 - i;
  }
  p.grad_norm = (s % 2) ? NAN : (double)s * 10.0;
  p.loss = 3.0 - (double)s / 100.0;
  p.lr = 1e-3;
  p.sketch_norm = 4.0;
  return p;
}

/* Open (declare) a stream in the store as ingest does. */
static void open_s(gw_store_t *st, uint32_t sid, const char *run, const char *tag, uint32_t k,
                   uint8_t kind, uint8_t sp, uint64_t seed, uint64_t inc, uint64_t step,
                   int64_t recv) {
  gw_stream_ref_t ref = {sid, run, tag, k, kind, sp, seed, inc};
  gw_open_t o = {GW_OPEN_NEW, step, recv};
  assert_int_equal(gw_store_open_stream(st, sid, &ref, &o), 0);
}

#define R4_INC2 UINT64_MAX /* needs all 64 bits: JSON carries it as a string */
static int64_t R4_T0; /* receive time of r4's points: now, so r4 is live */

static int setup(void **state) {
  (void)state;
  fx_t *f = calloc(1, sizeof *f);
  assert_non_null(f);
  snprintf(f->dir, sizeof f->dir, "/tmp/gw_test_http_XXXXXX");
  assert_non_null(mkdtemp(f->dir));
  snprintf(f->path, sizeof f->path, "%s/gw.db", f->dir);

  gw_store_config_t sc;
  gw_store_config_default(&sc);
  sc.path = f->path;
  assert_int_equal(gw_store_open(&f->store, &sc, &f->stats), 0);
  open_s(f->store, 0, "r1", "all", 256, 1, 4, 7, 0, 1, 0);
  open_s(f->store, 1, "r1", "layer1/w", 128, 1, 4, 7, 0, 10, 0);
  open_s(f->store, 2, "r2", "all", 64, 2, 0, 9, 0, 5, 0);
  open_s(f->store, 3, "r3", "idle", 32, 1, 1, 1, 0, 0, 0); /* no points */
  for (uint64_t s = 1; s <= 100; s++) {
    gw_point_t p = r1_point(0, s);
    assert_int_equal(gw_store_put_point(f->store, &p), 0);
  }
  for (uint64_t s = 10; s <= 20; s++) {
    gw_point_t p = r1_point(1, s);
    assert_int_equal(gw_store_put_point(f->store, &p), 0);
  }
  for (uint64_t s = 5; s <= 6; s++) {
    gw_point_t p = r1_point(2, s);
    assert_int_equal(gw_store_put_point(f->store, &p), 0);
  }
  assert_int_equal(gw_store_forget_stream(f->store, 2), 0); /* r2 finished */
  /* r4: incarnation 1 at steps 1..10, then incarnation R4_INC2 resumes at 5
   * (5..8), then a config restart at 9 (an event, same segment) */
  R4_T0 = gw_now_ns();
  open_s(f->store, 4, "r4", "all", 8, 1, 1, 3, 1, 1, R4_T0);
  for (uint64_t s = 1; s <= 10; s++) {
    gw_point_t p = r1_point(4, s);
    p.recv_ns = R4_T0;
    p.incarnation = 1;
    assert_int_equal(gw_store_put_point(f->store, &p), 0);
  }
  open_s(f->store, 4, "r4", "all", 8, 1, 1, 3, R4_INC2, 5, R4_T0 + 1000000000);
  for (uint64_t s = 5; s <= 8; s++) {
    gw_point_t p = r1_point(4, s);
    p.recv_ns = R4_T0 + 1000000000;
    p.incarnation = R4_INC2;
    assert_int_equal(gw_store_put_point(f->store, &p), 0);
  }
  gw_point_t dup = r1_point(4, 8); /* a second point at a stored step: ignored, counted */
  dup.recv_ns = R4_T0 + 1000000000;
  dup.incarnation = R4_INC2;
  dup.loss = -1;
  assert_int_equal(gw_store_put_point(f->store, &dup), 0);
  gw_stream_ref_t ref4 = {4, "r4", "all", 8, 1, 1, 3, R4_INC2};
  gw_restart_t rs = {GW_RESTART_CONFIG, 9, R4_INC2, 8, R4_T0 + 2000000000};
  assert_int_equal(gw_store_restart_stream(f->store, 4, &ref4, &rs), 0);
  gw_store_alert_t a = {.rule = "kappa_high", .run = "r1", .tag = "all",
                        .severity = "warning", .state = GW_ALERT_FIRING,
                        .value = 2.5, .threshold = NAN, .started_step = 37,
                        .started_ns = 1700000037000000000LL,
                        .fired_ns = 1700000040000000000LL,
                        .labels = "{\"team\":\"ml\"}", .annotations = "not json"};
  assert_int_equal(gw_store_put_alert(f->store, &a, NULL), 0);
  gw_store_alert_t b = {.rule = "stalled", .run = "r2", .state = GW_ALERT_RESOLVED,
                        .value = NAN, .threshold = 60, .started_step = 6,
                        .started_ns = 1700000001000000000LL,
                        .resolved_ns = 1700000002000000000LL};
  assert_int_equal(gw_store_put_alert(f->store, &b, NULL), 0);
  assert_int_equal(gw_store_flush(f->store), 0);

  assert_int_equal(gw_live_new(&f->live, NULL, &f->stats), 0);
  assert_int_equal(gw_metrics_new(&f->metrics, NULL), 0);
  gw_point_t last = r1_point(0, 100);
  assert_int_equal(gw_metrics_observe(f->metrics, "r1", "all", &last), 0);
  atomic_init(&f->ready, 1);
  atomic_store(&f->stats.started_ns, 1);

  gw_http_config_t hc;
  gw_http_config_default(&hc);
  hc.addr = "127.0.0.1:0";
  gw_http_deps_t deps = {.store = f->store, .live = f->live, .metrics = f->metrics,
                         .stats = &f->stats, .ready = &f->ready};
  assert_int_equal(gw_http_start(&f->open_srv, &hc, &deps), 0);
  f->port = gw_http_port(f->open_srv);
  assert_true(f->port != 0);
  hc.token = TOKEN;
  assert_int_equal(gw_http_start(&f->auth_srv, &hc, &deps), 0);
  f->auth_port = gw_http_port(f->auth_srv);
  assert_true(f->auth_port != 0 && f->auth_port != f->port);
  F = f;
  return 0;
}

static int teardown(void **state) {
  (void)state;
  fx_t *f = F;
  gw_http_stop(f->open_srv);
  gw_http_stop(f->auth_srv);
  gw_live_free(f->live);
  gw_metrics_free(f->metrics);
  assert_int_equal(gw_store_integrity_check(f->store), 0);
  gw_store_close(f->store);
  char cmd[160];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->dir);
  assert_int_equal(system(cmd), 0);
  free(f);
  return 0;
}

/* ---- a small HTTP/1.1 client ---- */

typedef struct {
  int status;
  char *head; /* status line + headers */
  char *body;
  size_t len;
} resp_t;

static void resp_free(resp_t *r) {
  free(r->head);
  free(r->body);
}

static int connect_to(int family, uint16_t port) {
  int fd = socket(family, SOCK_STREAM, 0);
  assert_true(fd >= 0);
  if (family == AF_INET6) {
    struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons(port)};
    a.sin6_addr = in6addr_loopback;
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
  } else {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
  }
  return fd;
}

static void send_all(int fd, const char *p, size_t n) {
  while (n) {
    ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return; /* the server may close early (oversized request) */
    p += k;
    n -= (size_t)k;
  }
}

/* Header value (case-insensitive name) from a head, copied into buf. */
static const char *header(const resp_t *r, const char *name, char *buf, size_t cap) {
  size_t nl = strlen(name);
  for (const char *l = strstr(r->head, "\r\n"); l && l[2]; l = strstr(l + 2, "\r\n")) {
    const char *h = l + 2;
    if (strncasecmp(h, name, nl) == 0 && h[nl] == ':') {
      h += nl + 1;
      while (*h == ' ') h++;
      const char *e = strstr(h, "\r\n");
      size_t n = e ? (size_t)(e - h) : strlen(h);
      if (n >= cap) n = cap - 1;
      memcpy(buf, h, n);
      buf[n] = '\0';
      return buf;
    }
  }
  return NULL;
}

/* Decode a chunked body in place; returns the decoded length. */
static size_t dechunk(char *b, size_t n) {
  size_t in = 0, out = 0;
  while (in < n) {
    char *end;
    unsigned long sz = strtoul(b + in, &end, 16);
    char *crlf = strstr(end, "\r\n");
    assert_non_null(crlf);
    in = (size_t)(crlf - b) + 2;
    if (sz == 0) break;
    assert_true(in + sz <= n);
    memmove(b + out, b + in, sz);
    out += sz;
    in += sz + 2;
  }
  b[out] = '\0';
  return out;
}

/* Send raw request text, read to EOF (the request says Connection: close). */
static resp_t raw(uint16_t port, const char *req, size_t req_len) {
  resp_t r = {0};
  int fd = connect_to(AF_INET, port);
  send_all(fd, req, req_len);
  size_t cap = 1 << 16, n = 0;
  char *buf = malloc(cap + 1);
  assert_non_null(buf);
  for (;;) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 5000) <= 0) fail_msg("timeout reading response to %.60s", req);
    if (n == cap) assert_non_null(buf = realloc(buf, (cap *= 2) + 1));
    ssize_t k = recv(fd, buf + n, cap - n, 0);
    if (k < 0 && errno == ECONNRESET) break;
    if (k <= 0) break;
    n += (size_t)k;
  }
  close(fd);
  buf[n] = '\0';
  char *sep = strstr(buf, "\r\n\r\n");
  if (!sep) { /* closed without a response */
    free(buf);
    r.status = 0;
    r.head = strdup("");
    r.body = strdup("");
    return r;
  }
  r.head = strndup(buf, (size_t)(sep - buf) + 2);
  r.len = n - (size_t)(sep + 4 - buf);
  r.body = malloc(r.len + 1);
  memcpy(r.body, sep + 4, r.len);
  r.body[r.len] = '\0';
  free(buf);
  assert_int_equal(sscanf(r.head, "HTTP/1.%*d %d", &r.status), 1);
  char te[64];
  if (header(&r, "Transfer-Encoding", te, sizeof te) && strcasecmp(te, "chunked") == 0)
    r.len = dechunk(r.body, r.len);
  return r;
}

/* method path, optional extra header lines ("Name: v\r\n..."). */
static resp_t req(uint16_t port, const char *method, const char *path, const char *extra) {
  char buf[8192];
  int n = snprintf(buf, sizeof buf,
                   "%s %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n%s\r\n",
                   method, path, extra ? extra : "");
  assert_true(n > 0 && (size_t)n < sizeof buf);
  return raw(port, buf, (size_t)n);
}

static resp_t get(const char *path) { return req(F->port, "GET", path, NULL); }

/* Parse the JSON body (must be JSON with the right content type). */
static cJSON *json_of(const resp_t *r) {
  char ct[128];
  assert_non_null(header(r, "Content-Type", ct, sizeof ct));
  assert_string_equal(ct, "application/json");
  cJSON *o = cJSON_Parse(r->body);
  if (!o) fail_msg("not JSON: %.200s", r->body);
  return o;
}

/* GET path, expect status and an {"error": ...} body containing `needle`. */
static void expect_error(uint16_t port, const char *method, const char *path,
                         const char *extra, int status, const char *needle) {
  resp_t r = req(port, method, path, extra);
  if (r.status != status)
    fail_msg("%s %s: status %d, want %d: %.80s", method, path, r.status, status, r.body);
  if (strcmp(method, "HEAD") != 0) {
    cJSON *o = json_of(&r);
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(o, "error");
    assert_true(cJSON_IsString(e));
    assert_int_equal(cJSON_GetArraySize(o), 1);
    if (needle && !strstr(e->valuestring, needle))
      fail_msg("%s: error \"%s\" lacks \"%s\"", path, e->valuestring, needle);
    cJSON_Delete(o);
  }
  resp_free(&r);
}

static double num(const cJSON *o, const char *key) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!cJSON_IsNumber(v)) fail_msg("%s is not a number", key);
  return v->valuedouble;
}

/* ---- cases ---- */

static void health_and_ready(void **state) {
  (void)state;
  resp_t r = get("/healthz");
  assert_int_equal(r.status, 200);
  assert_string_equal(r.body, "{\"status\":\"ok\"}");
  resp_free(&r);
  r = get("/readyz");
  assert_int_equal(r.status, 200);
  assert_string_equal(r.body, "{\"status\":\"ready\"}");
  resp_free(&r);
  atomic_store(&F->ready, 0);
  expect_error(F->port, "GET", "/readyz", NULL, 503, "not ready");
  r = get("/healthz"); /* health does not depend on readiness */
  assert_int_equal(r.status, 200);
  resp_free(&r);
  atomic_store(&F->ready, 1);
}

/* Bodiless GETs keep the connection open: two requests, one socket. A GET
 * carrying a body is answered, then the connection is closed unread. */
static void keep_alive(void **state) {
  (void)state;
  int fd = connect_to(AF_INET, F->port);
  const char one[] = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
  const char two[] = "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  char buf[4096] = {0};
  size_t n = 0;
  send_all(fd, one, sizeof one - 1);
  while (!strstr(buf, "{\"status\":\"ok\"}")) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    assert_true(poll(&p, 1, 5000) > 0);
    ssize_t k = recv(fd, buf + n, sizeof buf - 1 - n, 0);
    assert_true(k > 0); /* not closed after the first answer */
    n += (size_t)k;
    buf[n] = '\0';
  }
  assert_null(strstr(buf, "Connection: close"));
  send_all(fd, two, sizeof two - 1);
  ssize_t k;
  while ((k = recv(fd, buf + n, sizeof buf - 1 - n, 0)) > 0) n += (size_t)k;
  buf[n] = '\0';
  close(fd);
  assert_non_null(strstr(buf, "{\"status\":\"ready\"}"));

  const char body[] = "GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
  resp_t r = raw(F->port, body, sizeof body - 1);
  assert_int_equal(r.status, 200);
  char h[64];
  assert_string_equal(header(&r, "Connection", h, sizeof h), "close");
  resp_free(&r);
}

static void runs_and_streams(void **state) {
  (void)state;
  resp_t r = get("/api/v1/runs");
  assert_int_equal(r.status, 200);
  cJSON *o = json_of(&r), *runs = cJSON_GetObjectItemCaseSensitive(o, "runs");
  assert_int_equal(cJSON_GetArraySize(runs), 4);
  cJSON *r1 = cJSON_GetArrayItem(runs, 0), *r2 = cJSON_GetArrayItem(runs, 1);
  cJSON *r3 = cJSON_GetArrayItem(runs, 2);
  assert_string_equal(cJSON_GetObjectItemCaseSensitive(r3, "run")->valuestring, "r3");
  assert_true(num(r3, "streams") == 1 && num(r3, "last_step") == 0);
  assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(r3, "last_seen"))); /* never */
  assert_string_equal(cJSON_GetObjectItemCaseSensitive(r1, "run")->valuestring, "r1");
  assert_true(num(r1, "streams") == 2);
  assert_true(num(r1, "first_step") == 1);
  assert_true(num(r1, "last_step") == 100);
  assert_true(num(r1, "last_seen") == (double)(1700000000000000000LL + 100 * 1000000000LL) * 1e-9);
  assert_string_equal(cJSON_GetObjectItemCaseSensitive(r2, "run")->valuestring, "r2");
  assert_true(num(r2, "streams") == 1);
  assert_true(num(r2, "first_step") == 5);
  assert_true(num(r2, "last_step") == 6);
  cJSON_Delete(o);
  resp_free(&r);

  r = get("/api/v1/runs/r1/streams");
  assert_int_equal(r.status, 200);
  o = json_of(&r);
  cJSON *ss = cJSON_GetObjectItemCaseSensitive(o, "streams");
  assert_int_equal(cJSON_GetArraySize(ss), 2);
  cJSON *s0 = cJSON_GetArrayItem(ss, 0), *s1 = cJSON_GetArrayItem(ss, 1);
  assert_string_equal(cJSON_GetObjectItemCaseSensitive(s0, "tag")->valuestring, "all");
  assert_true(num(s0, "k") == 256 && num(s0, "points") == 100 && num(s0, "last_step") == 100);
  assert_true(num(s0, "first_step") == 1);
  assert_string_equal(cJSON_GetObjectItemCaseSensitive(s1, "tag")->valuestring, "layer1/w");
  assert_true(num(s1, "k") == 128 && num(s1, "points") == 11 && num(s1, "last_step") == 20);
  assert_true(num(s1, "first_step") == 10);
  assert_true(num(s1, "last_seen") == (double)(1700000000000000000LL + 20 * 1000000000LL) * 1e-9);
  cJSON_Delete(o);
  resp_free(&r);

  expect_error(F->port, "GET", "/api/v1/runs/nope/streams", NULL, 404, "unknown run");
  expect_error(F->port, "GET", "/api/v1/runs/bad%20name/streams", NULL, 400, "bad run name");
  expect_error(F->port, "GET", "/api/v1/runs/a/b/streams", NULL, 400, "bad run name");
  expect_error(F->port, "GET", "/api/v1/runs//streams", NULL, 404, NULL);
  expect_error(F->port, "GET", "/api/v1/runs/r1/streams/", NULL, 404, NULL);
  expect_error(F->port, "GET", "/api/v1/runs/r1/nope", NULL, 404, NULL);
  expect_error(F->port, "GET", "/api/v1/runs/", NULL, 404, NULL);
  expect_error(F->port, "GET", "/api/v1/nope", NULL, 404, "not found");
}

static const char *str(const cJSON *o, const char *key) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  assert_true(cJSON_IsString(v));
  return v->valuestring;
}

/* Run states, series by incarnation (default hides superseded points, all
 * shows them with the incarnation each came from), restart events. */
static void runs_state_incarnations_restarts(void **state) {
  (void)state;
  resp_t r = get("/api/v1/runs");
  assert_int_equal(r.status, 200);
  cJSON *o = json_of(&r), *runs = cJSON_GetObjectItemCaseSensitive(o, "runs");
  static const char *const want[] = {"stalled", "finished", "stalled", "live"}; /* r1..r4 */
  for (int i = 0; i < 4; i++) assert_string_equal(str(cJSON_GetArrayItem(runs, i), "state"), want[i]);
  cJSON *r4 = cJSON_GetArrayItem(runs, 3);
  assert_true(num(r4, "streams") == 1 && num(r4, "first_step") == 1 && num(r4, "last_step") == 10);
  cJSON_Delete(o);
  resp_free(&r);

  /* default: 1..4 from incarnation 1, 5..8 from the second; no incarnation column */
  const char *dflt[] = {"/api/v1/series?run=r4&tag=all&metrics=loss",
                        "/api/v1/series?run=r4&tag=all&metrics=loss&incarnations=default"};
  for (int q = 0; q < 2; q++) {
    r = get(dflt[q]);
    assert_int_equal(r.status, 200);
    o = json_of(&r);
    cJSON *step = cJSON_GetObjectItemCaseSensitive(o, "step");
    assert_int_equal(cJSON_GetArraySize(step), 8);
    for (int i = 0; i < 8; i++) assert_true(cJSON_GetArrayItem(step, i)->valuedouble == i + 1);
    assert_null(cJSON_GetObjectItemCaseSensitive(o, "incarnation"));
    cJSON_Delete(o);
    resp_free(&r);
  }
  /* all: both incarnations, ties on step by segment order */
  r = get("/api/v1/series?run=r4&tag=all&metrics=loss&incarnations=all");
  assert_int_equal(r.status, 200);
  assert_non_null(strstr(r.body, "\"18446744073709551615\"")); /* exact, as a string */
  o = json_of(&r);
  cJSON *step = cJSON_GetObjectItemCaseSensitive(o, "step");
  cJSON *inc = cJSON_GetObjectItemCaseSensitive(o, "incarnation");
  static const int wsteps[] = {1, 2, 3, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 10};
  static const int wnew[] = {0, 0, 0, 0, 0, 1, 0, 1, 0, 1, 0, 1, 0, 0};
  assert_int_equal(cJSON_GetArraySize(step), 14);
  assert_int_equal(cJSON_GetArraySize(inc), 14);
  for (int i = 0; i < 14; i++) {
    assert_true(cJSON_GetArrayItem(step, i)->valuedouble == wsteps[i]);
    assert_string_equal(cJSON_GetArrayItem(inc, i)->valuestring,
                        wnew[i] ? "18446744073709551615" : "1");
  }
  cJSON_Delete(o);
  resp_free(&r);
  expect_error(F->port, "GET", "/api/v1/series?run=r4&tag=all&incarnations=newest", NULL, 400,
               "incarnations");
  expect_error(F->port, "GET", "/api/v1/series?run=r4&tag=all&incarnations=", NULL, 400,
               "incarnations");

  /* restarts: newest first */
  r = get("/api/v1/restarts?run=r4");
  assert_int_equal(r.status, 200);
  o = json_of(&r);
  cJSON *ev = cJSON_GetObjectItemCaseSensitive(o, "restarts");
  assert_int_equal(cJSON_GetArraySize(ev), 2);
  cJSON *e0 = cJSON_GetArrayItem(ev, 0), *e1 = cJSON_GetArrayItem(ev, 1);
  assert_string_equal(str(e0, "run"), "r4");
  assert_string_equal(str(e0, "tag"), "all");
  assert_string_equal(str(e0, "reason"), "config_changed");
  assert_true(num(e0, "step") == 9);
  assert_string_equal(str(e0, "incarnation"), "18446744073709551615");
  assert_string_equal(str(e0, "prev_incarnation"), "18446744073709551615");
  assert_true(num(e0, "time") == (double)(R4_T0 + 2000000000) * 1e-9);
  assert_string_equal(str(e1, "reason"), "incarnation");
  assert_true(num(e1, "step") == 5);
  assert_string_equal(str(e1, "incarnation"), "18446744073709551615");
  assert_string_equal(str(e1, "prev_incarnation"), "1");
  assert_true(num(e1, "time") == (double)(R4_T0 + 1000000000) * 1e-9);
  cJSON_Delete(o);
  resp_free(&r);
  const struct {
    const char *q;
    int n;
  } counts[] = {{"run=r4&tag=all", 2}, {"run=r4&tag=nope", 0}, {"run=r4&limit=1", 1},
                {"run=r1", 0}};
  for (size_t i = 0; i < sizeof counts / sizeof counts[0]; i++) {
    char path[128];
    snprintf(path, sizeof path, "/api/v1/restarts?%s", counts[i].q);
    r = get(path);
    assert_int_equal(r.status, 200);
    o = json_of(&r);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(o, "restarts")),
                     counts[i].n);
    cJSON_Delete(o);
    resp_free(&r);
  }
  expect_error(F->port, "GET", "/api/v1/restarts", NULL, 400, "run");
  expect_error(F->port, "GET", "/api/v1/restarts?tag=all", NULL, 400, "run");
  expect_error(F->port, "GET", "/api/v1/restarts?run=nope", NULL, 404, "unknown run");
  expect_error(F->port, "GET", "/api/v1/restarts?run=bad%20name", NULL, 400, "bad run name");
  expect_error(F->port, "GET", "/api/v1/restarts?run=r4&limit=0", NULL, 400, "limit");
  expect_error(F->port, "GET", "/api/v1/restarts?run=r4&limit=x", NULL, 400, "limit");
}

static void series_values_and_downsampling(void **state) {
  (void)state;
  resp_t r = get("/api/v1/series?run=r1&tag=all&metrics=kappa_onestep,grad_norm,kappa_ema_cum"
                 "&from=10&to=20");
  assert_int_equal(r.status, 200);
  cJSON *o = json_of(&r);
  assert_int_equal(cJSON_GetArraySize(o), 6);
  assert_string_equal(cJSON_GetObjectItemCaseSensitive(o, "run")->valuestring, "r1");
  assert_string_equal(cJSON_GetObjectItemCaseSensitive(o, "tag")->valuestring, "all");
  cJSON *step = cJSON_GetObjectItemCaseSensitive(o, "step");
  cJSON *k1 = cJSON_GetObjectItemCaseSensitive(o, "kappa_onestep");
  cJSON *gn = cJSON_GetObjectItemCaseSensitive(o, "grad_norm");
  cJSON *kc = cJSON_GetObjectItemCaseSensitive(o, "kappa_ema_cum");
  assert_int_equal(cJSON_GetArraySize(step), 11);
  for (int i = 0; i < 11; i++) {
    uint64_t s = 10 + (uint64_t)i;
    assert_true(cJSON_GetArrayItem(step, i)->valuedouble == (double)s);
    assert_true(cJSON_GetArrayItem(k1, i)->valuedouble == (double)s / 8.0);
    if (s % 2) assert_true(cJSON_IsNull(cJSON_GetArrayItem(gn, i)));
    else assert_true(cJSON_GetArrayItem(gn, i)->valuedouble == (double)s * 10.0);
    assert_true(cJSON_IsNull(cJSON_GetArrayItem(kc, i)));
  }
  cJSON_Delete(o);
  resp_free(&r);

  /* A tag with '/', percent-encoded; every metric when none is named;
   * values bit-exact (0.1 + 0.2 needs 17 digits). */
  r = get("/api/v1/series?run=r1&tag=layer1%2Fw");
  assert_int_equal(r.status, 200);
  o = json_of(&r);
  assert_int_equal(cJSON_GetArraySize(o), 3 + GW_METRIC_COUNT);
  gw_point_t p15 = r1_point(1, 15);
  for (int m = 0; m < GW_METRIC_COUNT; m++) {
    cJSON *col = cJSON_GetObjectItemCaseSensitive(o, gw_metric_name(m));
    assert_non_null(col);
    assert_int_equal(cJSON_GetArraySize(col), 11);
    cJSON *v = cJSON_GetArrayItem(col, 5); /* step 15 */
    double want = gw_point_get(&p15, m);
    if (isnan(want)) assert_true(cJSON_IsNull(v));
    else if (v->valuedouble != want) fail_msg("%s: %.17g != %.17g", gw_metric_name(m), v->valuedouble, want);
  }
  assert_true(cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(o, "kappa_onestep_cum"), 0)
                  ->valuedouble == 0.1 + 0.2);
  cJSON_Delete(o);
  resp_free(&r);

  /* Downsampled: at most max_points rows; the spike at step 37 (the
   * global max) and the minimum at step 1 survive. */
  r = get("/api/v1/series?run=r1&tag=all&metrics=kappa_onestep&max_points=10");
  assert_int_equal(r.status, 200);
  o = json_of(&r);
  step = cJSON_GetObjectItemCaseSensitive(o, "step");
  k1 = cJSON_GetObjectItemCaseSensitive(o, "kappa_onestep");
  int n = cJSON_GetArraySize(step);
  assert_true(n >= 2 && n <= 10);
  assert_int_equal(cJSON_GetArraySize(k1), n);
  double mx = -1, mn = 1e300;
  for (int i = 0; i < n; i++) {
    double v = cJSON_GetArrayItem(k1, i)->valuedouble;
    if (v > mx) mx = v;
    if (v < mn) mn = v;
    if (i) assert_true(cJSON_GetArrayItem(step, i)->valuedouble >=
                       cJSON_GetArrayItem(step, i - 1)->valuedouble);
  }
  assert_true(mx == 37.0 / 8.0 + 100.0);
  assert_true(mn == 1.0 / 8.0);
  cJSON_Delete(o);
  resp_free(&r);

  /* An empty range is an empty table, not an error. */
  r = get("/api/v1/series?run=r1&tag=all&metrics=loss&from=500&to=600");
  assert_int_equal(r.status, 200);
  assert_string_equal(r.body, "{\"run\":\"r1\",\"tag\":\"all\",\"step\":[],\"loss\":[]}");
  resp_free(&r);
}

static void series_rejects_bad_requests(void **state) {
  (void)state;
  const struct {
    const char *q;
    int status;
    const char *needle;
  } cases[] = {
      {"tag=all", 400, "missing parameter: run"},
      {"run=r1", 400, "missing parameter: tag"},
      {"run=r1&tag=all&metrics=kappa_onestep,bogus_metric", 400, "unknown metric: bogus_metric"},
      {"run=r1&tag=all&metrics=sigma", 400, "unknown metric: sigma"},
      {"run=r1&tag=all&metrics=", 400, "empty metric name"},
      {"run=r1&tag=all&metrics=loss,,lr", 400, "empty metric name"},
      {"run=r1&tag=all&metrics=loss,", 400, "empty metric name"},
      {"run=r1&tag=all&metrics=loss,lr,loss", 400, "duplicate metric: loss"},
      {"run=r1&tag=all&from=abc", 400, "bad from"},
      {"run=r1&tag=all&from=-1", 400, "bad from"},
      {"run=r1&tag=all&from=1.5", 400, "bad from"},
      {"run=r1&tag=all&to=", 400, "bad to"},
      {"run=r1&tag=all&to=18446744073709551616", 400, "bad to"}, /* 2^64 */
      {"run=r1&tag=all&from=5&to=4", 400, "from is greater than to"},
      {"run=r1&tag=all&max_points=0", 400, "bad max_points"},
      {"run=r1&tag=all&max_points=1", 400, "bad max_points"},
      {"run=r1&tag=all&max_points=1000001", 400, "bad max_points"},
      {"run=r1&tag=all&max_points=ten", 400, "bad max_points"},
      {"run=r%2F1&tag=all", 400, "bad run name"},
      {"run=r1&tag=a%20b", 400, "bad tag name"},
      {"run=r1%00&tag=all", 400, "bad run name"},
      {"run=r1&tag=nope", 404, "unknown stream"},
      {"run=r9&tag=all", 404, "unknown stream"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    char path[256];
    snprintf(path, sizeof path, "/api/v1/series?%s", cases[i].q);
    expect_error(F->port, "GET", path, NULL, cases[i].status, cases[i].needle);
  }
  /* bounds themselves are fine */
  resp_t r = get("/api/v1/series?run=r1&tag=all&metrics=loss&max_points=2&to=18446744073709551615");
  assert_int_equal(r.status, 200);
  resp_free(&r);
}

static void alerts_by_state(void **state) {
  (void)state;
  resp_t r = get("/api/v1/alerts?state=firing");
  assert_int_equal(r.status, 200);
  cJSON *o = json_of(&r), *as = cJSON_GetObjectItemCaseSensitive(o, "alerts");
  assert_int_equal(cJSON_GetArraySize(as), 1);
  cJSON *a = cJSON_GetArrayItem(as, 0);
  assert_string_equal(cJSON_GetObjectItemCaseSensitive(a, "rule")->valuestring, "kappa_high");
  assert_string_equal(cJSON_GetObjectItemCaseSensitive(a, "run")->valuestring, "r1");
  assert_string_equal(cJSON_GetObjectItemCaseSensitive(a, "tag")->valuestring, "all");
  assert_string_equal(cJSON_GetObjectItemCaseSensitive(a, "state")->valuestring, "firing");
  assert_string_equal(cJSON_GetObjectItemCaseSensitive(a, "severity")->valuestring, "warning");
  assert_true(num(a, "value") == 2.5);
  assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(a, "threshold")));
  assert_true(num(a, "started_step") == 37);
  assert_true(num(a, "started_at") == (double)1700000037000000000LL * 1e-9);
  assert_true(num(a, "fired_at") == (double)1700000040000000000LL * 1e-9);
  assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(a, "resolved_at")));
  assert_string_equal(cJSON_GetObjectItemCaseSensitive(
                          cJSON_GetObjectItemCaseSensitive(a, "labels"), "team")->valuestring, "ml");
  assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(a, "annotations"))); /* not JSON */
  assert_true(num(a, "id") >= 1);
  cJSON_Delete(o);
  resp_free(&r);

  r = get("/api/v1/alerts?state=resolved");
  o = json_of(&r);
  as = cJSON_GetObjectItemCaseSensitive(o, "alerts");
  assert_int_equal(cJSON_GetArraySize(as), 1);
  a = cJSON_GetArrayItem(as, 0);
  assert_string_equal(cJSON_GetObjectItemCaseSensitive(a, "rule")->valuestring, "stalled");
  assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(a, "tag")));
  assert_true(num(a, "threshold") == 60);
  cJSON_Delete(o);
  resp_free(&r);

  const char *all[] = {"/api/v1/alerts?state=all", "/api/v1/alerts"};
  for (int i = 0; i < 2; i++) {
    r = get(all[i]);
    o = json_of(&r);
    as = cJSON_GetObjectItemCaseSensitive(o, "alerts");
    assert_int_equal(cJSON_GetArraySize(as), 2); /* newest first */
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(as, 0), "rule")->valuestring,
                        "kappa_high");
    cJSON_Delete(o);
    resp_free(&r);
  }
  r = get("/api/v1/alerts?limit=1");
  o = json_of(&r);
  assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(o, "alerts")), 1);
  cJSON_Delete(o);
  resp_free(&r);
  expect_error(F->port, "GET", "/api/v1/alerts?state=pending", NULL, 400, "bad state");
  expect_error(F->port, "GET", "/api/v1/alerts?state=", NULL, 400, "bad state");
  expect_error(F->port, "GET", "/api/v1/alerts?limit=0", NULL, 400, "bad limit");

  /* The alerts' helper (SSE publishes with it, the route lists with it)
   * gives the same object. */
  gw_store_alert_t x = {.id = 5, .rule = "r\"q", .state = GW_ALERT_PENDING, .value = NAN,
                        .threshold = 1.0};
  char *text = gw_alerts_json(&x);
  assert_non_null(text);
  o = cJSON_Parse(text);
  assert_string_equal(cJSON_GetObjectItemCaseSensitive(o, "rule")->valuestring, "r\"q");
  assert_string_equal(cJSON_GetObjectItemCaseSensitive(o, "state")->valuestring, "pending");
  assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(o, "run")));
  assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(o, "started_at")));
  cJSON_Delete(o);
  free(text);
}

static void stats_counters(void **state) {
  (void)state;
  gw_stats_t *st = &F->stats;
  gw_stats_add(&st->received, 1000);
  gw_stats_add(&st->accepted, 990);
  gw_stats_add(&st->points, 985);
  gw_stats_reject(st, GW_EMAGIC);
  gw_stats_reject(st, GW_EORDER);
  gw_stats_reject(st, GW_EORDER);
  gw_stats_add(&st->live_dropped, 4);
  gw_stats_add(&st->streams, 3);
  atomic_store(&st->store_last_error, GW_EIO);
  resp_t r = get("/api/v1/stats");
  assert_int_equal(r.status, 200);
  cJSON *o = json_of(&r);
  assert_true(num(o, "received") == (double)gw_stats_get(&st->received));
  assert_true(num(o, "received") >= 1000);
  assert_true(num(o, "accepted") == (double)gw_stats_get(&st->accepted));
  assert_true(num(o, "points") == (double)gw_stats_get(&st->points));
  cJSON *rej = cJSON_GetObjectItemCaseSensitive(o, "rejected");
  assert_int_equal(cJSON_GetArraySize(rej), GW_E_COUNT);
  assert_true(num(rej, "bad_magic") == 1);
  assert_true(num(rej, "out_of_order") == 2);
  assert_true(num(rej, "truncated") == 0);
  assert_true(num(rej, "denied") == 0);
  cJSON *drop = cJSON_GetObjectItemCaseSensitive(o, "dropped");
  assert_true(num(drop, "live") == (double)gw_stats_get(&st->live_dropped));
  assert_true(num(drop, "store") == 0);
  assert_true(num(o, "streams") == (double)gw_stats_get(&st->streams));
  assert_true(num(o, "db_rows") == 100 + 11 + 2 + 10 + 4); /* r4: both incarnations */
  assert_true(num(o, "queue_depth") == 0);
  cJSON *store = cJSON_GetObjectItemCaseSensitive(o, "store");
  assert_true(num(store, "errors") == 0);
  assert_true(num(store, "written") == (double)gw_stats_get(&st->store_written));
  assert_true(num(store, "duplicates") == 1); /* r4's step 8 sent twice */
  assert_string_equal(cJSON_GetObjectItemCaseSensitive(store, "last_error")->valuestring,
                      "I/O error");
  assert_true(num(o, "uptime_s") > 1e9); /* started_ns = 1 ns after the epoch */
  cJSON_Delete(o);
  resp_free(&r);
  atomic_store(&st->store_last_error, 0);
  r = get("/api/v1/stats");
  o = json_of(&r);
  assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(
      cJSON_GetObjectItemCaseSensitive(o, "store"), "last_error")));
  cJSON_Delete(o);
  resp_free(&r);
}

/* /metrics: content type; every line is a HELP/TYPE comment or a sample
 * `name{labels} value` whose family was declared just before; the values
 * of the observed point. */
static void metrics_text(void **state) {
  (void)state;
  resp_t r = get("/metrics");
  assert_int_equal(r.status, 200);
  char ct[128];
  assert_string_equal(header(&r, "Content-Type", ct, sizeof ct), GW_METRICS_CONTENT_TYPE);
  char family[128] = "";
  int samples = 0;
  char *save = NULL;
  char *copy = strdup(r.body);
  for (char *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
    if (strncmp(line, "# HELP ", 7) == 0) {
      sscanf(line + 7, "%127s", family);
      continue;
    }
    if (strncmp(line, "# TYPE ", 7) == 0) {
      char name[128], type[32];
      assert_int_equal(sscanf(line + 7, "%127s %31s", name, type), 2);
      assert_string_equal(name, family);
      assert_true(strcmp(type, "counter") == 0 || strcmp(type, "gauge") == 0);
      continue;
    }
    size_t fl = strlen(family);
    if (strncmp(line, family, fl) != 0 || (line[fl] != '{' && line[fl] != ' '))
      fail_msg("sample outside its family %s: %s", family, line);
    char *sp = strrchr(line, ' ');
    char *end;
    strtod(sp + 1, &end);
    if (*end || end == sp + 1) fail_msg("bad value: %s", line);
    samples++;
  }
  free(copy);
  assert_true(samples > GW_E_COUNT);
  const char *want[] = {
      "gradwatch_kappa{run=\"r1\",tag=\"all\",predictor=\"onestep\"} 12.5\n",
      "gradwatch_kappa{run=\"r1\",tag=\"all\",predictor=\"ema\"} 0.01\n",
      "gradwatch_rank{run=\"r1\",tag=\"all\",energy=\"90\"} 2\n",
      "gradwatch_rank{run=\"r1\",tag=\"all\",energy=\"99\"} 12\n",
      "gradwatch_last_step{run=\"r1\",tag=\"all\"} 100\n",
      "gradwatch_grad_norm{run=\"r1\",tag=\"all\"} 1000\n",
      "gradwatch_messages_rejected_total{reason=\"bad_magic\"} 1\n",
      "gradwatch_streams_retired_total 0\n", /* the alert families are the alerts' (test_alerts) */
  };
  for (size_t i = 0; i < sizeof want / sizeof *want; i++)
    if (!strstr(r.body, want[i])) fail_msg("missing: %s", want[i]);

  if (access("/usr/bin/promtool", X_OK) == 0) {
    char path[] = "/tmp/gw_test_http_metrics_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, r.body, r.len), (ssize_t)r.len);
    close(fd);
    char cmd[160], out[4096];
    snprintf(cmd, sizeof cmd, "/usr/bin/promtool check metrics < %s 2>&1", path);
    FILE *f = popen(cmd, "r");
    size_t n = fread(out, 1, sizeof out - 1, f);
    out[n] = '\0';
    int status = pclose(f);
    unlink(path);
    if (status != 0 || n) fail_msg("promtool: %s", out);
  } else {
    print_message("promtool not installed: skipping `promtool check metrics`\n");
  }
  resp_free(&r);
}

static char *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *b = malloc((size_t)n + 1);
  assert_int_equal(fread(b, 1, (size_t)n, f), (size_t)n);
  fclose(f);
  b[n] = '\0';
  *len = (size_t)n;
  return b;
}

static void static_page_and_traversal(void **state) {
  (void)state;
  const char *src = getenv("GW_SOURCE_DIR");
  char path[512];
  snprintf(path, sizeof path, "%s/web/index.html", src ? src : ".");
  size_t flen;
  char *file = read_file(path, &flen);
  assert_non_null(file);

  resp_t r = get("/");
  assert_int_equal(r.status, 200);
  char h[256], etag[128];
  assert_string_equal(header(&r, "Content-Type", h, sizeof h), "text/html; charset=utf-8");
  assert_non_null(header(&r, "ETag", etag, sizeof etag));
  assert_non_null(header(&r, "Cache-Control", h, sizeof h));
  assert_int_equal(r.len, flen);
  assert_memory_equal(r.body, file, flen); /* the bytes built in are web/'s */
  assert_non_null(strstr(r.body, "/api/v1/runs"));
  resp_free(&r);

  r = get("/index.html");
  assert_int_equal(r.status, 200);
  assert_int_equal(r.len, flen);
  resp_free(&r);

  char inm[200];
  snprintf(inm, sizeof inm, "If-None-Match: %s\r\n", etag);
  r = req(F->port, "GET", "/", inm);
  assert_int_equal(r.status, 304);
  assert_int_equal(r.len, 0);
  resp_free(&r);
  r = req(F->port, "GET", "/", "If-None-Match: \"stale\"\r\n");
  assert_int_equal(r.status, 200);
  resp_free(&r);

  r = req(F->port, "HEAD", "/", NULL);
  assert_int_equal(r.status, 200);
  assert_int_equal(r.len, 0);
  resp_free(&r);

  const char *bad[] = {
      "/../etc/passwd",      "/%2e%2e/etc/passwd", "/%2E%2E/%2E%2E/etc/passwd",
      "//etc/passwd",        "/..%2f..%2fetc%2fpasswd", "/./index.html",
      "/web/index.html",     "/index.html/",       "/index.html%00",
      "/index.html%00.txt",
      "/INDEX.HTML",         "/etc/passwd",        "/api/v1/../../index.html",
      "/..",                 "/%2e%2e",
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
    expect_error(F->port, "GET", bad[i], NULL, 404, "not found");
  free(file);
}

static void methods_other_than_get_head(void **state) {
  (void)state;
  const char *m[] = {"POST", "PUT", "DELETE", "PATCH", "OPTIONS"};
  const char *p[] = {"/api/v1/runs", "/", "/healthz", "/metrics", "/nope"};
  for (int i = 0; i < 5; i++) {
    resp_t r = req(F->port, m[i], p[i], "Content-Length: 0\r\n");
    assert_int_equal(r.status, 405);
    char allow[64];
    assert_string_equal(header(&r, "Allow", allow, sizeof allow), "GET, HEAD");
    cJSON *o = json_of(&r);
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(o, "error")->valuestring,
                        "method not allowed");
    cJSON_Delete(o);
    resp_free(&r);
  }
  resp_t r = req(F->port, "HEAD", "/api/v1/runs", NULL);
  assert_int_equal(r.status, 200);
  assert_int_equal(r.len, 0);
  resp_free(&r);
}

static void bearer_token(void **state) {
  (void)state;
  uint16_t port = F->auth_port;
  const char *paths[] = {"/api/v1/runs", "/api/v1/stats", "/metrics", "/readyz",
                         "/api/v1/events", "/api/v1/alerts", "/nope", "/api/v1/index.html"};
  const char *wrong[] = {NULL,
                         "Authorization: Bearer wrong\r\n",
                         "Authorization: Bearer " TOKEN "x\r\n",
                         "Authorization: Bearer s3cret-token-012345678\r\n", /* prefix */
                         "Authorization: Basic " TOKEN "\r\n",
                         "Authorization: " TOKEN "\r\n",
                         "Authorization: Bearer\r\n"};
  for (size_t i = 0; i < sizeof paths / sizeof *paths; i++)
    for (size_t j = 0; j < sizeof wrong / sizeof *wrong; j++) {
      resp_t r = req(port, "GET", paths[i], wrong[j]);
      if (r.status != 401) fail_msg("%s with %s: %d", paths[i], wrong[j] ? wrong[j] : "-", r.status);
      char h[128];
      assert_string_equal(header(&r, "WWW-Authenticate", h, sizeof h), "Bearer realm=\"gradwatch\"");
      cJSON *o = json_of(&r);
      assert_true(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(o, "error")));
      cJSON_Delete(o);
      resp_free(&r);
    }
  /* the dashboard's embedded files load without it (no data in them) */
  resp_t pub = req(port, "GET", "/", NULL);
  assert_int_equal(pub.status, 200);
  resp_free(&pub);
  pub = req(port, "GET", "/index.html", NULL);
  assert_int_equal(pub.status, 200);
  resp_free(&pub);
  /* a POST without a token is refused for the token first */
  expect_error(port, "POST", "/api/v1/runs", "Content-Length: 0\r\n", 401, NULL);
  resp_t r = req(port, "GET", "/api/v1/runs", "Authorization: Bearer " TOKEN "\r\n");
  assert_int_equal(r.status, 200);
  resp_free(&r);
  r = req(port, "GET", "/metrics", "authorization: bearer " TOKEN "\r\n");
  assert_int_equal(r.status, 200);
  resp_free(&r);
  r = req(port, "GET", "/healthz", NULL); /* the one open endpoint */
  assert_int_equal(r.status, 200);
  resp_free(&r);
  expect_error(port, "POST", "/healthz", "Content-Length: 0\r\n", 405, NULL);
}

/* SSE through the real server, HTTP/1.1 chunked. */
static void events_over_http(void **state) {
  (void)state;
  expect_error(F->port, "GET", "/api/v1/events?run=bad%20run", NULL, 400, "bad run name");
  expect_error(F->port, "GET", "/api/v1/events?tag=a%20b", NULL, 400, "bad tag name");
  resp_t h = req(F->port, "HEAD", "/api/v1/events", NULL);
  assert_int_equal(h.status, 200);
  resp_free(&h);
  assert_int_equal(gw_live_client_count(F->live), 0); /* HEAD subscribes nobody */

  int fd = connect_to(AF_INET, F->port);
  const char rq[] = "GET /api/v1/events?run=r1 HTTP/1.1\r\nHost: x\r\n\r\n";
  send_all(fd, rq, sizeof rq - 1);
  double t0 = (double)time(NULL);
  while (gw_live_client_count(F->live) != 1) {
    assert_true((double)time(NULL) - t0 < 5);
    usleep(1000);
  }
  gw_point_t p = r1_point(0, 101);
  assert_int_equal(gw_live_publish_point(F->live, "r2", "all", &p), 0); /* filtered */
  assert_int_equal(gw_live_publish_point(F->live, "r1", "all", &p), 0);
  static char buf[65536];
  size_t n = 0;
  const char *ev;
  buf[0] = '\0';
  while (!(ev = strstr(buf, "event: point\ndata: "))) {
    struct pollfd pf = {.fd = fd, .events = POLLIN};
    assert_true(poll(&pf, 1, 5000) > 0);
    ssize_t k = recv(fd, buf + n, sizeof buf - 1 - n, 0);
    assert_true(k > 0);
    n += (size_t)k;
    buf[n] = '\0';
  }
  assert_non_null(strstr(buf, "HTTP/1.1 200"));
  assert_non_null(strstr(buf, "Transfer-Encoding: chunked"));
  assert_non_null(strstr(buf, "Content-Type: text/event-stream"));
  /* the first point event is r1's (r2's was filtered); read its data line */
  while (!strchr(ev + 19, '\n')) {
    ssize_t k = recv(fd, buf + n, sizeof buf - 1 - n, 0);
    assert_true(k > 0);
    n += (size_t)k;
    buf[n] = '\0';
  }
  char *nl = strchr(ev + 19, '\n');
  *nl = '\0';
  cJSON *o = cJSON_Parse(ev + 19);
  assert_non_null(o);
  assert_string_equal(cJSON_GetObjectItemCaseSensitive(o, "run")->valuestring, "r1");
  assert_true(num(o, "step") == 101);
  assert_true(num(o, "kappa_ema") == 1.0 / 101.0);
  cJSON_Delete(o);
  close(fd);
}

static void oversized_request_refused(void **state) {
  (void)state;
  size_t n = 100 * 1024;
  char *big = malloc(n + 256);
  int k = snprintf(big, 256, "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: ");
  memset(big + k, 'a', n);
  memcpy(big + k + n, "\r\n\r\n", 5);
  resp_t r = raw(F->port, big, (size_t)k + n + 4);
  /* libmicrohttpd answers 431 (or just closes); never a 200 */
  assert_true(r.status == 0 || r.status == 431 || r.status == 413);
  resp_free(&r);
  free(big);
}

static void addresses_and_missing_deps(void **state) {
  (void)state;
  gw_http_t *h = NULL;
  gw_http_config_t hc;
  gw_http_config_default(&hc);
  gw_stats_t st;
  memset(&st, 0, sizeof st);
  gw_http_deps_t deps = {.stats = &st};
  const char *bad[] = {"nonsense", "127.0.0.1", "127.0.0.1:", "127.0.0.1:99999",
                       "127.0.0.1:-1", "::1:80", "[::1]80", "[::1", "no.such.host.invalid:80"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    hc.addr = bad[i];
    int rc = gw_http_start(&h, &hc, &deps);
    if (rc != GW_ECONFIG) fail_msg("%s: %d", bad[i], rc);
    assert_null(h);
  }
  gw_http_deps_t nostats = {0};
  hc.addr = "127.0.0.1:0";
  assert_int_equal(gw_http_start(&h, &hc, &nostats), GW_EINVAL);

  /* the port of a running server is taken */
  char addr[32];
  snprintf(addr, sizeof addr, "127.0.0.1:%u", F->port);
  hc.addr = addr;
  assert_int_equal(gw_http_start(&h, &hc, &deps), -EADDRINUSE);
  assert_null(h);

  /* no store, live or metrics: those endpoints say so; the rest works */
  hc.addr = "127.0.0.1:0";
  assert_int_equal(gw_http_start(&h, &hc, &deps), 0);
  uint16_t port = gw_http_port(h);
  expect_error(port, "GET", "/api/v1/runs", NULL, 503, "store");
  expect_error(port, "GET", "/api/v1/series?run=a&tag=b", NULL, 503, "store");
  expect_error(port, "GET", "/api/v1/alerts", NULL, 503, "store");
  expect_error(port, "GET", "/api/v1/restarts?run=a", NULL, 503, "store");
  expect_error(port, "GET", "/metrics", NULL, 503, "metrics");
  expect_error(port, "GET", "/api/v1/events", NULL, 503, "live");
  resp_t r = req(port, "GET", "/api/v1/stats", NULL);
  assert_int_equal(r.status, 200);
  cJSON *o = json_of(&r);
  assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(o, "db_rows")));
  assert_true(num(o, "uptime_s") == 0); /* started_ns unset */
  cJSON_Delete(o);
  resp_free(&r);
  gw_http_stop(h);
  gw_http_stop(NULL);

  /* IPv6 loopback, when the host has it */
  int s6 = socket(AF_INET6, SOCK_STREAM, 0);
  struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
  int have6 = s6 >= 0 && bind(s6, (struct sockaddr *)&a6, sizeof a6) == 0;
  if (s6 >= 0) close(s6);
  if (!have6) {
    print_message("no IPv6 loopback: skipping [::1]\n");
    return;
  }
  hc.addr = "[::1]:0";
  assert_int_equal(gw_http_start(&h, &hc, &deps), 0);
  int fd = connect_to(AF_INET6, gw_http_port(h));
  const char rq[] = "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  send_all(fd, rq, sizeof rq - 1);
  char buf[1024] = {0};
  size_t n = 0;
  ssize_t k;
  while (n < sizeof buf - 1 && (k = recv(fd, buf + n, sizeof buf - 1 - n, 0)) > 0) n += (size_t)k;
  close(fd);
  assert_non_null(strstr(buf, "HTTP/1.1 200"));
  assert_non_null(strstr(buf, "{\"status\":\"ok\"}"));
  gw_http_stop(h);
}

/* /api/v1/series within its caps: an ask whose worst case is over
 * series_max_bytes is refused 400 (and smaller asks of the same stream are
 * answered whole); one that would overdraw the budget for answers gets 503
 * with Retry-After; each is counted by reason, and every byte charged is
 * given back once the answers are gone. */
static void series_answer_caps(void **state) {
  (void)state;
  gw_http_t *h = NULL;
  gw_http_config_t hc;
  gw_http_config_default(&hc);
  hc.addr = "127.0.0.1:0";
  /* r1/all has 100 points. Every metric: > 100 x GW_METRIC_COUNT x 25 bytes
   * in the worst case, over 64 KiB; two columns: ~8 KiB. */
  hc.series_max_bytes = 64 * 1024;
  hc.answer_budget_bytes = 1 << 20;
  assert_true(100.0 * (GW_METRIC_COUNT + 1) * 25 > 64 * 1024);
  gw_http_deps_t deps = {.store = F->store, .stats = &F->stats};
  uint64_t large0 = gw_stats_get(&F->stats.http_refused[GW_HTTP_REFUSE_TOO_LARGE]);
  uint64_t budget0 = gw_stats_get(&F->stats.http_refused[GW_HTTP_REFUSE_BUDGET]);
  assert_int_equal(gw_http_start(&h, &hc, &deps), 0);
  uint16_t port = gw_http_port(h);
  expect_error(port, "GET", "/api/v1/series?run=r1&tag=all", NULL, 400, "answer too large");
  assert_int_equal(gw_stats_get(&F->stats.http_refused[GW_HTTP_REFUSE_TOO_LARGE]), large0 + 1);
  /* downsampled, the same metrics fit */
  resp_t r = req(port, "GET", "/api/v1/series?run=r1&tag=all&max_points=10", NULL);
  assert_int_equal(r.status, 200);
  cJSON *o = json_of(&r);
  assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(o, "step")), 10);
  cJSON_Delete(o);
  resp_free(&r);
  /* two columns, every point, values as put */
  r = req(port, "GET", "/api/v1/series?run=r1&tag=all&metrics=loss", NULL);
  assert_int_equal(r.status, 200);
  o = json_of(&r);
  const cJSON *steps = cJSON_GetObjectItemCaseSensitive(o, "step");
  assert_int_equal(cJSON_GetArraySize(steps), 100);
  for (int i = 0; i < 100; i++)
    assert_true(cJSON_GetArrayItem(steps, i)->valuedouble == (double)(i + 1));
  cJSON_Delete(o);
  resp_free(&r);
  /* unknown stream: still 404 from the answer thread */
  expect_error(port, "GET", "/api/v1/series?run=r1&tag=nope", NULL, 404, "unknown stream");
  gw_http_stop(h);
  assert_int_equal(gw_stats_get(&F->stats.http_answer_bytes), 0);

  /* a budget smaller than one answer's charge: 503, Retry-After, counted */
  hc.answer_budget_bytes = 4096;
  assert_int_equal(gw_http_start(&h, &hc, &deps), 0);
  port = gw_http_port(h);
  r = req(port, "GET", "/api/v1/series?run=r1&tag=all&metrics=loss", NULL);
  assert_int_equal(r.status, 503);
  char ra[32];
  assert_non_null(header(&r, "Retry-After", ra, sizeof ra));
  assert_string_equal(ra, "5");
  o = json_of(&r);
  assert_non_null(strstr(cJSON_GetObjectItemCaseSensitive(o, "error")->valuestring, "busy"));
  cJSON_Delete(o);
  resp_free(&r);
  assert_int_equal(gw_stats_get(&F->stats.http_refused[GW_HTTP_REFUSE_BUDGET]), budget0 + 1);
  /* a small answer still fits; /healthz is unaffected */
  r = req(port, "GET", "/api/v1/series?run=r1&tag=layer1/w&metrics=loss", NULL);
  assert_int_equal(r.status, 200);
  resp_free(&r);
  r = req(port, "GET", "/healthz", NULL);
  assert_int_equal(r.status, 200);
  resp_free(&r);
  gw_http_stop(h);
  assert_int_equal(gw_stats_get(&F->stats.http_answer_bytes), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(health_and_ready),
      cmocka_unit_test(keep_alive),
      cmocka_unit_test(runs_and_streams),
      cmocka_unit_test(runs_state_incarnations_restarts),
      cmocka_unit_test(series_values_and_downsampling),
      cmocka_unit_test(series_rejects_bad_requests),
      cmocka_unit_test(alerts_by_state),
      cmocka_unit_test(stats_counters),
      cmocka_unit_test(metrics_text),
      cmocka_unit_test(static_page_and_traversal),
      cmocka_unit_test(methods_other_than_get_head),
      cmocka_unit_test(bearer_token),
      cmocka_unit_test(events_over_http),
      cmocka_unit_test(oversized_request_refused),
      cmocka_unit_test(addresses_and_missing_deps),
      cmocka_unit_test(series_answer_caps),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
