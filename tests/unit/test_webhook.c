/* test_webhook.c — webhook delivery against a real loopback HTTP receiver
 * (libmicrohttpd in this process): firing and resolved payloads arrive in
 * order, in Alertmanager's v4 shape (parsed with cJSON); a 503 receiver gets
 * exactly 1 + retries attempts at doubling intervals; a 400 is not retried;
 * with the receiver down, sending stays O(1) and drops the oldest; a stuck
 * receiver doesn't hold up gw_webhook_free. Fingerprints are checked against
 * values computed by an independent Python transcription of Prometheus's
 * LabelsToSignature (FNV-1a over sorted name 0xff value 0xff). */
#include <arpa/inet.h>
#include <errno.h>
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

#include "webhook.h"

/* ---- a loopback receiver ---- */

#define MAX_REQ 64

typedef struct recv_s {
  struct MHD_Daemon *d;
  uint16_t port;
  pthread_mutex_t mu;
  unsigned status; /* answer of every request */
  int n;
  char *body[MAX_REQ];
  char ctype[MAX_REQ][64];
  double at[MAX_REQ]; /* monotonic seconds */
} recv_t;

typedef struct upload_s {
  char *p;
  size_t len;
} upload_t;

static double mono(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

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
  const char *ct = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Type");
  pthread_mutex_lock(&r->mu);
  if (r->n < MAX_REQ && !strcmp(method, "POST")) {
    r->body[r->n] = u->p ? u->p : strdup("");
    u->p = NULL;
    snprintf(r->ctype[r->n], sizeof r->ctype[0], "%s", ct ? ct : "");
    r->at[r->n] = mono();
    r->n++;
  }
  unsigned status = r->status;
  pthread_mutex_unlock(&r->mu);
  struct MHD_Response *resp = MHD_create_response_from_buffer(2, "ok", MHD_RESPMEM_PERSISTENT);
  enum MHD_Result ret = MHD_queue_response(c, status, resp);
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

static void recv_start(recv_t *r, unsigned status) {
  memset(r, 0, sizeof *r);
  pthread_mutex_init(&r->mu, NULL);
  r->status = status;
  struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = 0};
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  r->d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, 0, NULL, NULL,
                          on_req, r, MHD_OPTION_SOCK_ADDR, &sin, MHD_OPTION_NOTIFY_COMPLETED,
                          on_done, NULL, MHD_OPTION_END);
  assert_non_null(r->d);
  r->port = MHD_get_daemon_info(r->d, MHD_DAEMON_INFO_BIND_PORT)->port;
  assert_true(r->port > 0);
}

static void recv_stop(recv_t *r) {
  MHD_stop_daemon(r->d);
  for (int i = 0; i < r->n; i++) free(r->body[i]);
  pthread_mutex_destroy(&r->mu);
}

static int recv_count(recv_t *r) {
  pthread_mutex_lock(&r->mu);
  int n = r->n;
  pthread_mutex_unlock(&r->mu);
  return n;
}

static void config(gw_webhook_config_t *c, char *url, size_t cap, uint16_t port) {
  gw_webhook_config_default(c);
  snprintf(url, cap, "http://127.0.0.1:%u/hook", (unsigned)port);
  c->url = url;
  c->timeout_ms = 2000;
  c->backoff_ms = 20;
}

/* A port nothing listens on (bound, then closed). */
static uint16_t dead_port(void) {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = 0};
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof sin;
  assert_int_equal(bind(s, (struct sockaddr *)&sin, sizeof sin), 0);
  assert_int_equal(getsockname(s, (struct sockaddr *)&sin, &len), 0);
  close(s);
  return ntohs(sin.sin_port);
}

static const char *const LABELS[] = {"alertname", "kappa_collapse", "run", "r1", "tag", "all",
                                     "severity", "critical", NULL};
static const char *const ANNOTATIONS[] = {"summary", "kappa left its regime", "description",
                                          "quote \" and newline \n", NULL};

static const char *str(cJSON *o, const char *k) {
  cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
  if (!cJSON_IsString(v)) fail_msg("'%s' is not a string", k);
  return v->valuestring;
}

/* Check one payload: v4 keys, types and values for one alert. */
static void check_payload(const char *text, const char *status, const char *starts,
                          const char *ends) {
  cJSON *o = cJSON_Parse(text);
  assert_non_null(o);
  assert_string_equal(str(o, "version"), "4");
  assert_string_equal(str(o, "status"), status);
  assert_string_equal(str(o, "receiver"), "gradwatch");
  assert_string_equal(str(o, "externalURL"), "http://gw.example:8080");
  assert_string_equal(str(o, "groupKey"),
                      "{}:{alertname=\"kappa_collapse\",run=\"r1\",severity=\"critical\",tag=\"all\"}");
  cJSON *gl = cJSON_GetObjectItemCaseSensitive(o, "groupLabels");
  cJSON *cl = cJSON_GetObjectItemCaseSensitive(o, "commonLabels");
  cJSON *ca = cJSON_GetObjectItemCaseSensitive(o, "commonAnnotations");
  assert_true(cJSON_IsObject(gl) && cJSON_IsObject(cl) && cJSON_IsObject(ca));
  assert_string_equal(str(cl, "alertname"), "kappa_collapse");
  assert_string_equal(str(gl, "run"), "r1");
  assert_string_equal(str(ca, "description"), "quote \" and newline \n");
  cJSON *alerts = cJSON_GetObjectItemCaseSensitive(o, "alerts");
  assert_true(cJSON_IsArray(alerts));
  assert_int_equal(cJSON_GetArraySize(alerts), 1);
  cJSON *a = cJSON_GetArrayItem(alerts, 0);
  assert_string_equal(str(a, "status"), status);
  cJSON *l = cJSON_GetObjectItemCaseSensitive(a, "labels");
  assert_int_equal(cJSON_GetArraySize(l), 4);
  assert_string_equal(str(l, "alertname"), "kappa_collapse");
  assert_string_equal(str(l, "run"), "r1");
  assert_string_equal(str(l, "tag"), "all");
  assert_string_equal(str(l, "severity"), "critical");
  cJSON *an = cJSON_GetObjectItemCaseSensitive(a, "annotations");
  assert_string_equal(str(an, "summary"), "kappa left its regime");
  assert_string_equal(str(a, "startsAt"), starts);
  assert_string_equal(str(a, "endsAt"), ends);
  assert_string_equal(str(a, "generatorURL"), "http://gw.example:8080/api/v1/series?run=r1");
  assert_string_equal(str(a, "fingerprint"), "94631ddeb90f32ac"); /* Python reference */
  cJSON_Delete(o);
}

/* 2024-01-02T03:04:05.000000006Z */
#define T_START (1704164645LL * 1000000000LL + 6)
#define T_END (1704164700LL * 1000000000LL + 500000000)

static char *payload(int resolved) {
  gw_webhook_alert_t a = {.resolved = resolved,
                          .labels = LABELS,
                          .annotations = ANNOTATIONS,
                          .starts_ns = T_START,
                          .ends_ns = resolved ? T_END : 0,
                          .generator_url = "http://gw.example:8080/api/v1/series?run=r1"};
  char *p = gw_webhook_payload(&a, "gradwatch", "http://gw.example:8080");
  assert_non_null(p);
  return p;
}

static void fingerprint_matches_prometheus(void **state) {
  (void)state;
  /* values from the Python reference in the file comment */
  assert_int_equal(gw_webhook_fingerprint(LABELS), 0x94631ddeb90f32acULL);
  const char *one[] = {"alertname", "a", NULL};
  assert_int_equal(gw_webhook_fingerprint(one), 0xd258efc389808447ULL);
  /* order of the pairs doesn't matter */
  const char *shuffled[] = {"tag", "all", "severity", "critical", "run", "r1", "alertname",
                            "kappa_collapse", NULL};
  assert_int_equal(gw_webhook_fingerprint(shuffled), 0x94631ddeb90f32acULL);
  const char *nameless[] = {"run", "r1", NULL};
  gw_webhook_alert_t a = {.labels = nameless};
  assert_null(gw_webhook_payload(&a, NULL, NULL));
}

static void receiver_gets_firing_then_resolved(void **state) {
  (void)state;
  recv_t r;
  recv_start(&r, 200);
  gw_webhook_config_t c;
  char url[64];
  config(&c, url, sizeof url, r.port);
  gw_webhook_t *w;
  assert_int_equal(gw_webhook_new(&w, &c), 0);
  char *fire = payload(0), *res = payload(1);
  assert_int_equal(gw_webhook_send(w, fire), 0);
  assert_int_equal(gw_webhook_send(w, res), 0);
  assert_int_equal(gw_webhook_drain(w, 5000), 0);
  gw_webhook_stats_t s;
  gw_webhook_stats(w, &s);
  assert_int_equal(s.sent, 2);
  assert_int_equal(s.attempts, 2);
  assert_int_equal(s.failed + s.dropped + s.queued, 0);
  assert_int_equal(recv_count(&r), 2);
  assert_string_equal(r.ctype[0], "application/json");
  check_payload(r.body[0], "firing", "2024-01-02T03:04:05.000000006Z", "0001-01-01T00:00:00Z");
  check_payload(r.body[1], "resolved", "2024-01-02T03:04:05.000000006Z",
                "2024-01-02T03:05:00.500000000Z");
  free(fire);
  free(res);
  gw_webhook_free(w);
  recv_stop(&r);
}

/* 503: 1 + retries attempts, waits 20, 40, 80 ms between them (doubling). */
static void retries_are_bounded_with_backoff(void **state) {
  (void)state;
  recv_t r;
  recv_start(&r, 503);
  gw_webhook_config_t c;
  char url[64];
  config(&c, url, sizeof url, r.port);
  c.retries = 3;
  gw_webhook_t *w;
  assert_int_equal(gw_webhook_new(&w, &c), 0);
  assert_int_equal(gw_webhook_send(w, "{}"), 0);
  assert_int_equal(gw_webhook_drain(w, 5000), 0);
  usleep(200000); /* nothing more comes */
  gw_webhook_stats_t s;
  gw_webhook_stats(w, &s);
  assert_int_equal(s.attempts, 4);
  assert_int_equal(s.failed, 1);
  assert_int_equal(s.sent, 0);
  assert_int_equal(recv_count(&r), 4);
  for (int i = 1; i < 4; i++) {
    double gap = r.at[i] - r.at[i - 1], want = 0.020 * (1 << (i - 1));
    if (gap < want || gap > want + 0.5) fail_msg("gap %d: %.3f s, want ~%.3f s", i, gap, want);
  }
  gw_webhook_free(w);
  recv_stop(&r);
  /* a 400 means the receiver refuses the payload: no retry */
  recv_start(&r, 400);
  config(&c, url, sizeof url, r.port);
  assert_int_equal(gw_webhook_new(&w, &c), 0);
  assert_int_equal(gw_webhook_send(w, "{}"), 0);
  assert_int_equal(gw_webhook_drain(w, 5000), 0);
  gw_webhook_stats(w, &s);
  assert_int_equal(s.attempts, 1);
  assert_int_equal(s.failed, 1);
  gw_webhook_free(w);
  recv_stop(&r);
}

/* Failures go to the log, at most 5 lines a second per receiver; each
 * line reports how many were held back since the last, so lines plus
 * held-back counts add up to every failure. */
static void failures_logged_rate_limited(void **state) {
  (void)state;
  char path[] = "/tmp/gw_test_webhook_log_XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  close(fd);
  gw_log_t log;
  assert_int_equal(gw_log_init(&log, path, "warn"), 0);
  recv_t r;
  recv_start(&r, 400);
  gw_webhook_config_t c;
  char url[64];
  config(&c, url, sizeof url, r.port);
  c.retries = 0;
  c.log = &log;
  gw_webhook_t *w;
  assert_int_equal(gw_webhook_new(&w, &c), 0);
  double t0 = mono();
  for (int i = 0; i < 20; i++) {
    assert_int_equal(gw_webhook_send(w, "{}"), 0);
    assert_int_equal(gw_webhook_drain(w, 5000), 0); /* one at a time: all reach the receiver */
  }
  double spent = mono() - t0;
  usleep(1100000); /* a new second: the next failure is logged with the held-back count */
  assert_int_equal(gw_webhook_send(w, "{}"), 0);
  assert_int_equal(gw_webhook_drain(w, 5000), 0);
  gw_webhook_stats_t s;
  gw_webhook_stats(w, &s);
  assert_int_equal(s.failed, 21);
  gw_webhook_free(w);
  recv_stop(&r);
  gw_log_close(&log);

  FILE *f = fopen(path, "r");
  assert_non_null(f);
  char line[2048];
  int lines = 0;
  unsigned long long held = 0;
  while (fgets(line, sizeof line, f)) {
    if (!strstr(line, "event=webhook_delivery")) continue;
    lines++;
    assert_non_null(strstr(line, "result=failed detail=refused"));
    assert_non_null(strstr(line, url));
    const char *sp = strstr(line, "suppressed=");
    assert_non_null(sp);
    held += strtoull(sp + 11, NULL, 10);
  }
  fclose(f);
  unlink(path);
  assert_int_equal((unsigned long long)lines + held, 21);
  assert_true(lines >= 2); /* the first failure, and the one after the pause */
  assert_true(held > 0 || spent > 3.0); /* 20 failures in a second or so: some held back */
  assert_true(lines <= 5 * ((int)spent + 2) + 1);
}

/* Receiver down: 10,000 sends take microseconds each (no network on the
 * caller's thread), the queue keeps the newest queue_max, and every
 * notification attempted is given up after exactly 1 + retries attempts. */
static void receiver_down_never_blocks(void **state) {
  (void)state;
  gw_webhook_config_t c;
  char url[64];
  config(&c, url, sizeof url, dead_port());
  c.queue_max = 16;
  c.retries = 2;
  c.backoff_ms = 5;
  gw_webhook_t *w;
  assert_int_equal(gw_webhook_new(&w, &c), 0);
  double t0 = mono(), worst = 0;
  for (int i = 0; i < 10000; i++) {
    double t = mono();
    assert_int_equal(gw_webhook_send(w, "{\"status\":\"firing\"}"), 0);
    if (mono() - t > worst) worst = mono() - t;
  }
  double total = mono() - t0;
  if (total > 0.5 || worst > 0.05) fail_msg("send took %.3f s in all, %.4f s at worst", total, worst);
  gw_webhook_stats_t s;
  gw_webhook_stats(w, &s);
  assert_true(s.queued <= 17);
  assert_true(s.dropped >= 10000 - 20);
  assert_int_equal(gw_webhook_drain(w, 10000), 0);
  gw_webhook_stats(w, &s);
  assert_int_equal(s.sent, 0);
  assert_int_equal(s.failed + s.dropped, 10000);
  assert_true(s.failed >= 16 && s.failed <= 20); /* the last 16, and what the worker
                                                    took while the loop ran */
  assert_int_equal(s.attempts, 3 * s.failed);
  gw_webhook_free(w);
}

/* A receiver that accepts the connection and never answers: free() aborts
 * the attempt in flight at once instead of waiting out its timeout. */
static void free_aborts_stuck_attempt(void **state) {
  (void)state;
  int ls = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = 0};
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof sin;
  assert_int_equal(bind(ls, (struct sockaddr *)&sin, sizeof sin), 0);
  assert_int_equal(listen(ls, 8), 0); /* the kernel completes handshakes; nobody reads */
  assert_int_equal(getsockname(ls, (struct sockaddr *)&sin, &len), 0);
  gw_webhook_config_t c;
  char url[64];
  config(&c, url, sizeof url, ntohs(sin.sin_port));
  c.timeout_ms = 30000;
  gw_webhook_t *w;
  assert_int_equal(gw_webhook_new(&w, &c), 0);
  assert_int_equal(gw_webhook_send(w, "{}"), 0);
  assert_int_equal(gw_webhook_send(w, "{}"), 0);
  assert_int_equal(gw_webhook_drain(w, 200), -ETIMEDOUT);
  gw_webhook_stats_t s;
  gw_webhook_stats(w, &s);
  assert_int_equal(s.attempts, 1);
  assert_int_equal(s.queued, 2);
  double t0 = mono();
  gw_webhook_free(w);
  double took = mono() - t0;
  if (took > 0.5) fail_msg("free took %.3f s", took);
  close(ls);
}

static void bad_configs(void **state) {
  (void)state;
  gw_webhook_config_t c;
  gw_webhook_t *w = (gw_webhook_t *)1;
  gw_webhook_config_default(&c);
  assert_int_equal(gw_webhook_new(&w, &c), GW_EINVAL); /* no url */
  assert_null(w);
  c.url = "ftp://127.0.0.1/";
  assert_int_equal(gw_webhook_new(&w, &c), GW_EINVAL);
  c.url = "http://127.0.0.1/";
  c.queue_max = 0;
  assert_int_equal(gw_webhook_new(&w, &c), GW_EINVAL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(fingerprint_matches_prometheus),
      cmocka_unit_test(receiver_gets_firing_then_resolved),
      cmocka_unit_test(retries_are_bounded_with_backoff),
      cmocka_unit_test(receiver_down_never_blocks),
      cmocka_unit_test(free_aborts_stuck_attempt),
      cmocka_unit_test(bad_configs),
      cmocka_unit_test(failures_logged_rate_limited),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
