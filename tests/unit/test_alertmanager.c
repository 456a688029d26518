/* test_alertmanager.c — the Alertmanager v2 pusher against a real loopback
 * HTTP receiver (libmicrohttpd in this process): the endpoint each base URL
 * maps to; the v2 body parsed back with cJSON (times against hand-written
 * RFC 3339 strings, the runbook annotation, generatorURL left out when
 * empty); a firing alert reaches every URL at once and again every
 * resend interval with endsAt moving forward (4 intervals ahead), a
 * resolved one once with its endsAt and never again; refusals (no
 * alertname, bad configs); a dead URL counted as failed. */
#include <arpa/inet.h>
#include <math.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <cjson/cJSON.h>
#include <cmocka.h>

#include "alertmanager.h"
#include "gw_error.h"

/* ---- a loopback receiver: every POST's path and body ---- */

#define MAX_REQ 256

typedef struct recv_s {
  struct MHD_Daemon *d;
  uint16_t port;
  pthread_mutex_t mu;
  int n;
  char *body[MAX_REQ];
  char path[MAX_REQ][64];
} recv_t;

typedef struct upload_s {
  char *p;
  size_t len;
} upload_t;

static enum MHD_Result on_req(void *cls, struct MHD_Connection *c, const char *url,
                              const char *method, const char *version, const char *data,
                              size_t *size, void **con_cls) {
  recv_t *r = cls;
  upload_t *u = *con_cls;
  if (!u) {
    *con_cls = calloc(1, sizeof(upload_t));
    return *con_cls ? MHD_YES : MHD_NO;
  }
  if (*size) {
    char *np = realloc(u->p, u->len + *size + 1);
    if (!np) return MHD_NO;
    memcpy(np + u->len, data, *size);
    u->p = np;
    u->len += *size;
    u->p[u->len] = '\0';
    *size = 0;
    return MHD_YES;
  }
  pthread_mutex_lock(&r->mu);
  if (r->n < MAX_REQ && !strcmp(method, "POST")) {
    r->body[r->n] = u->p ? u->p : strdup("");
    u->p = NULL;
    snprintf(r->path[r->n], sizeof r->path[0], "%s", url);
    r->n++;
  }
  pthread_mutex_unlock(&r->mu);
  struct MHD_Response *resp = MHD_create_response_from_buffer(0, "", MHD_RESPMEM_PERSISTENT);
  enum MHD_Result ret = MHD_queue_response(c, 200, resp);
  MHD_destroy_response(resp);
  return ret;
}

static void on_done(void *cls, struct MHD_Connection *c, void **con_cls,
                    enum MHD_RequestTerminationCode toe) {
  upload_t *u = *con_cls;
  if (u) free(u->p);
  free(u);
  *con_cls = NULL;
}

static void recv_start(recv_t *r) {
  memset(r, 0, sizeof *r);
  pthread_mutex_init(&r->mu, NULL);
  struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = 0};
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  r->d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, 0, NULL, NULL,
                          on_req, r, MHD_OPTION_SOCK_ADDR, &sin, MHD_OPTION_NOTIFY_COMPLETED,
                          on_done, NULL, MHD_OPTION_END);
  assert_non_null(r->d);
  r->port = MHD_get_daemon_info(r->d, MHD_DAEMON_INFO_BIND_PORT)->port;
}

static void recv_stop(recv_t *r) {
  MHD_stop_daemon(r->d);
  for (int i = 0; i < r->n; i++) free(r->body[i]);
  pthread_mutex_destroy(&r->mu);
}

/* Bodies received at path so far (copies parsed as JSON), and how many. */
static int recv_bodies(recv_t *r, const char *path, cJSON **out, int cap) {
  int k = 0;
  pthread_mutex_lock(&r->mu);
  for (int i = 0; i < r->n && k < cap; i++)
    if (!strcmp(r->path[i], path)) out[k++] = cJSON_Parse(r->body[i]);
  pthread_mutex_unlock(&r->mu);
  return k;
}

static int recv_count(recv_t *r, const char *path) {
  int k = 0;
  pthread_mutex_lock(&r->mu);
  for (int i = 0; i < r->n; i++) k += !strcmp(r->path[i], path);
  pthread_mutex_unlock(&r->mu);
  return k;
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Seconds of an RFC 3339 UTC time with nanoseconds (timegm + fraction). */
static double parse_time(const char *s) {
  struct tm tm = {0};
  long ns = 0;
  assert_int_equal(sscanf(s, "%d-%d-%dT%d:%d:%d.%9ldZ", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                          &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &ns), 7);
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  return (double)timegm(&tm) + ns * 1e-9;
}

static const char *str(const cJSON *o, const char *k) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
  return cJSON_IsString(v) ? v->valuestring : NULL;
}

static const char *labels[] = {"alertname", "quiet", "run", "r1", "tag", "beat",
                               "severity", "warning", NULL};
static const char *annotations[] = {"summary", "r1/beat is silent", NULL};

/* ---- tests ---- */

static void endpoints(void **state) {
  (void)state;
  const char *cases[][2] = {
      {"http://am:9093", "http://am:9093/api/v2/alerts"},
      {"http://am:9093//", "http://am:9093/api/v2/alerts"},
      {"https://am.example/prefix/", "https://am.example/prefix/api/v2/alerts"},
      {"http://am:9093/api/v2/alerts", "http://am:9093/api/v2/alerts"},
      {"http://am:9093/api/v2/alerts/", "http://am:9093/api/v2/alerts"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    char *e = gw_alertmanager_endpoint(cases[i][0]);
    assert_string_equal(e, cases[i][1]);
    free(e);
  }
}

static void payload_shape(void **state) {
  (void)state;
  const char *with_rb[] = {"summary", "s", "runbook_url", "https://own/rb", NULL};
  const char *l2[] = {"alertname", "kappa_surge", "run", "r2", "tag", "all", NULL};
  gw_alertmanager_alert_t a = {.labels = labels,
                               .annotations = annotations,
                               .starts_ns = 1700000000123456789,
                               .generator_url = "http://gw:8080/#/run/r1"};
  gw_alertmanager_alert_t b = {.labels = l2,
                               .annotations = with_rb,
                               .starts_ns = 1000000000,
                               .ends_ns = 1000000005000000001,
                               .generator_url = ""};
  const gw_alertmanager_alert_t *both[] = {&a, &b};
  char *text = gw_alertmanager_payload(both, 2, 1700000060000000000, "https://docs/ALERTS.md");
  assert_non_null(text);
  cJSON *arr = cJSON_Parse(text);
  assert_true(cJSON_IsArray(arr));
  assert_int_equal(cJSON_GetArraySize(arr), 2);
  cJSON *x = cJSON_GetArrayItem(arr, 0), *y = cJSON_GetArrayItem(arr, 1);
  cJSON *xl = cJSON_GetObjectItemCaseSensitive(x, "labels");
  assert_int_equal(cJSON_GetArraySize(xl), 4);
  assert_string_equal(str(xl, "alertname"), "quiet");
  assert_string_equal(str(xl, "run"), "r1");
  assert_string_equal(str(xl, "tag"), "beat");
  assert_string_equal(str(xl, "severity"), "warning");
  cJSON *xa = cJSON_GetObjectItemCaseSensitive(x, "annotations");
  assert_string_equal(str(xa, "summary"), "r1/beat is silent");
  assert_string_equal(str(xa, "runbook_url"), "https://docs/ALERTS.md#runbook-quiet");
  /* 1700000000 s = 2023-11-14T22:13:20Z (date -u -d @1700000000) */
  assert_string_equal(str(x, "startsAt"), "2023-11-14T22:13:20.123456789Z");
  assert_string_equal(str(x, "endsAt"), "2023-11-14T22:14:20.000000000Z"); /* firing: given */
  assert_string_equal(str(x, "generatorURL"), "http://gw:8080/#/run/r1");
  /* 1000000000 s = 2001-09-09T01:46:40Z; a resolved alert keeps its end */
  assert_string_equal(str(y, "startsAt"), "1970-01-01T00:00:01.000000000Z");
  assert_string_equal(str(y, "endsAt"), "2001-09-09T01:46:45.000000001Z");
  assert_null(cJSON_GetObjectItemCaseSensitive(y, "generatorURL"));
  /* an annotation runbook_url of its own wins */
  assert_string_equal(str(cJSON_GetObjectItemCaseSensitive(y, "annotations"), "runbook_url"),
                      "https://own/rb");
  cJSON_Delete(arr);
  free(text);
  /* no runbook base: no annotation */
  const gw_alertmanager_alert_t *one[] = {&a};
  text = gw_alertmanager_payload(one, 1, 1, NULL);
  assert_null(strstr(text, "runbook_url"));
  free(text);
  /* no alertname: nothing */
  const char *nameless[] = {"run", "r1", NULL};
  gw_alertmanager_alert_t bad = {.labels = nameless, .starts_ns = 1};
  const gw_alertmanager_alert_t *badp[] = {&bad};
  assert_null(gw_alertmanager_payload(badp, 1, 1, NULL));
}

static void bad_configs(void **state) {
  (void)state;
  gw_alertmanager_t *am = (gw_alertmanager_t *)1;
  gw_alertmanager_config_t c;
  gw_alertmanager_config_default(&c);
  assert_int_equal(c.resend_ms, 60000);
  assert_int_equal(gw_alertmanager_new(&am, &c), GW_EINVAL); /* no URL */
  assert_null(am);
  const char *ftp[] = {"ftp://am:9093"};
  c.urls = ftp;
  c.n_urls = 1;
  assert_int_equal(gw_alertmanager_new(&am, &c), GW_EINVAL);
  const char *ok[] = {"http://127.0.0.1:1"};
  c.urls = ok;
  c.resend_ms = 0;
  assert_int_equal(gw_alertmanager_new(&am, &c), GW_EINVAL);
  const char *many[GW_ALERTMANAGER_URLS_MAX + 1];
  for (size_t i = 0; i <= GW_ALERTMANAGER_URLS_MAX; i++) many[i] = "http://127.0.0.1:1";
  c.urls = many;
  c.n_urls = GW_ALERTMANAGER_URLS_MAX + 1;
  c.resend_ms = 1000;
  assert_int_equal(gw_alertmanager_new(&am, &c), GW_EINVAL);
  gw_alertmanager_free(NULL, 0);
}

/* The first alert of a body at path, by index. */
static const cJSON *first_alert(cJSON *body) {
  assert_true(cJSON_IsArray(body));
  return cJSON_GetArrayItem(body, 0);
}

static void fire_resend_resolve(void **state) {
  (void)state;
  recv_t r;
  recv_start(&r);
  char ua[64], ub[64];
  snprintf(ua, sizeof ua, "http://127.0.0.1:%u/a", (unsigned)r.port);
  snprintf(ub, sizeof ub, "http://127.0.0.1:%u/b/", (unsigned)r.port);
  const char *urls[] = {ua, ub};
  gw_alertmanager_config_t c;
  gw_alertmanager_config_default(&c);
  c.urls = urls;
  c.n_urls = 2;
  c.resend_ms = 200;
  gw_alertmanager_t *am;
  assert_int_equal(gw_alertmanager_new(&am, &c), 0);

  const char *nameless[] = {"run", "r1", NULL};
  gw_alertmanager_alert_t bad = {.labels = nameless, .starts_ns = 1};
  assert_int_equal(gw_alertmanager_push(am, &bad), GW_EINVAL);

  int64_t t0 = now_ns();
  gw_alertmanager_alert_t a = {.labels = labels, .annotations = annotations, .starts_ns = t0};
  assert_int_equal(gw_alertmanager_push(am, &a), 0);
  assert_int_equal(gw_alertmanager_firing(am), 1);
  assert_int_equal(gw_alertmanager_push(am, &a), 0); /* the same labels: still one */
  assert_int_equal(gw_alertmanager_firing(am), 1);
  /* at once at both URLs, then again each 200 ms */
  for (int i = 0; i < 300 && (recv_count(&r, "/a/api/v2/alerts") < 5 ||
                              recv_count(&r, "/b/api/v2/alerts") < 5); i++)
    sleep_ms(10);
  cJSON *bodies[MAX_REQ];
  int n = recv_bodies(&r, "/a/api/v2/alerts", bodies, MAX_REQ);
  assert_true(n >= 5);
  assert_true(recv_count(&r, "/b/api/v2/alerts") >= 5);
  double prev_end = 0;
  for (int i = 0; i < n; i++) {
    const cJSON *x = first_alert(bodies[i]);
    assert_int_equal(cJSON_GetArraySize(bodies[i]), 1);
    assert_string_equal(str(cJSON_GetObjectItemCaseSensitive(x, "labels"), "alertname"), "quiet");
    double st = parse_time(str(x, "startsAt")), end = parse_time(str(x, "endsAt"));
    assert_true(st > t0 * 1e-9 - 1e-6 && st < t0 * 1e-9 + 1e-6);
    /* endsAt = send time + 4 × 200 ms: after t0 + 0.8 s, and moving forward */
    assert_true(end >= t0 * 1e-9 + 0.8 - 1e-3);
    assert_true(end >= prev_end);
    prev_end = end;
    cJSON_Delete(bodies[i]);
  }
  assert_true(prev_end >= t0 * 1e-9 + 0.8 + 0.6); /* the 4th+ body was a resend */

  /* resolved: sent once with its endsAt, gone from the table, no more resends */
  int64_t tr = now_ns();
  a.ends_ns = tr;
  int before = recv_count(&r, "/a/api/v2/alerts");
  assert_int_equal(gw_alertmanager_push(am, &a), 0);
  assert_int_equal(gw_alertmanager_firing(am), 0);
  sleep_ms(700); /* three resend intervals */
  n = recv_bodies(&r, "/a/api/v2/alerts", bodies, MAX_REQ);
  /* the resolve, after at most the resend rounds already queued or in flight */
  assert_true(n >= before + 1 && n <= before + 3);
  const cJSON *last = first_alert(bodies[n - 1]);
  assert_true(fabs(parse_time(str(last, "endsAt")) - tr * 1e-9) < 1e-6);
  for (int i = 0; i < n; i++) cJSON_Delete(bodies[i]);
  gw_webhook_stats_t s;
  gw_alertmanager_stats(am, &s);
  assert_int_equal(s.sent, (uint64_t)(recv_count(&r, "/a/api/v2/alerts") +
                                      recv_count(&r, "/b/api/v2/alerts")));
  assert_int_equal(s.failed, 0);
  gw_alertmanager_free(am, 1000);
  recv_stop(&r);
}

/* A URL nobody listens on: failed after its retries, counted. */
static void dead_url_counted(void **state) {
  (void)state;
  int s = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = 0};
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof sin;
  assert_int_equal(bind(s, (struct sockaddr *)&sin, sizeof sin), 0);
  assert_int_equal(getsockname(s, (struct sockaddr *)&sin, &len), 0);
  close(s);
  char url[64];
  snprintf(url, sizeof url, "http://127.0.0.1:%u", (unsigned)ntohs(sin.sin_port));
  const char *urls[] = {url};
  gw_alertmanager_config_t c;
  gw_alertmanager_config_default(&c);
  c.urls = urls;
  c.n_urls = 1;
  c.delivery.retries = 1;
  c.delivery.backoff_ms = 10;
  gw_alertmanager_t *am;
  assert_int_equal(gw_alertmanager_new(&am, &c), 0);
  gw_alertmanager_alert_t a = {.labels = labels, .starts_ns = now_ns()};
  assert_int_equal(gw_alertmanager_push(am, &a), 0);
  gw_webhook_stats_t st = {0};
  for (int i = 0; i < 500 && st.failed == 0; i++) {
    sleep_ms(10);
    gw_alertmanager_stats(am, &st);
  }
  assert_int_equal(st.failed, 1);
  assert_int_equal(st.sent, 0);
  assert_int_equal(st.attempts, 2);
  gw_alertmanager_free(am, 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(endpoints),        cmocka_unit_test(payload_shape),
      cmocka_unit_test(bad_configs),      cmocka_unit_test(fire_resend_resolve),
      cmocka_unit_test(dead_url_counted),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
