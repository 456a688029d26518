/* test_remote_write.c — the remote-write sink against a real loopback HTTP
 * receiver (libmicrohttpd in this process). Bodies are snappy-decompressed
 * with libsnappy and decoded by a protobuf wire reader written here from the
 * encoding rules (varints, length-delimited fields, fixed64 doubles), not by
 * the protoc-c code the sink uses; the field numbers are those of the
 * remote-write 1.0 messages. Checked: every point arrives as one sample per
 * series with the right value, labels sorted, timestamps from recv_ns and
 * moved forward within one millisecond, NaN left out, headers; a 503 is
 * retried with the same body, a 400 is not; with the receiver down the sink
 * never waits and a full queue drops and counts; a stream forgotten while
 * its points are queued keeps its labels until they are out; the metric
 * list parser's errors. */
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <snappy-c.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "remote_write.h"

/* ---- a loopback receiver ---- */

#define MAX_REQ 64

typedef struct recv_s {
  struct MHD_Daemon *d;
  uint16_t port;
  pthread_mutex_t mu;
  unsigned status[MAX_REQ]; /* answer of request i; the last one repeats */
  int n_status;
  int n;
  char *body[MAX_REQ];
  size_t len[MAX_REQ];
  char enc[MAX_REQ][32], ctype[MAX_REQ][64], ver[MAX_REQ][16];
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
    char *np = realloc(u->p, u->len + *size);
    if (!np) return MHD_NO;
    memcpy(np + u->len, data, *size);
    u->p = np;
    u->len += *size;
    *size = 0;
    return MHD_YES;
  }
  const char *e = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Encoding");
  const char *ct = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Type");
  const char *v = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Prometheus-Remote-Write-Version");
  pthread_mutex_lock(&r->mu);
  int i = r->n;
  if (r->n < MAX_REQ) {
    r->body[i] = u->p;
    r->len[i] = u->len;
    u->p = NULL;
    snprintf(r->enc[i], sizeof r->enc[0], "%s", e ? e : "");
    snprintf(r->ctype[i], sizeof r->ctype[0], "%s", ct ? ct : "");
    snprintf(r->ver[i], sizeof r->ver[0], "%s", v ? v : "");
    r->n++;
  }
  unsigned status = r->status[i < r->n_status ? i : r->n_status - 1];
  pthread_mutex_unlock(&r->mu);
  struct MHD_Response *resp = MHD_create_response_from_buffer(
      status == 400 ? 14 : 0, (void *)"out of bounds!", MHD_RESPMEM_PERSISTENT);
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

static void recv_start(recv_t *r, int n_status, ...) {
  va_list ap;
  memset(r, 0, sizeof *r);
  pthread_mutex_init(&r->mu, NULL);
  va_start(ap, n_status);
  for (int i = 0; i < n_status; i++) r->status[i] = va_arg(ap, unsigned);
  va_end(ap);
  r->n_status = n_status;
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

/* ---- an independent protobuf wire reader ---- */

#define MAX_SAMPLES 4096

typedef struct sample_s {
  char name[64], run[64], tag[64];
  char all[512]; /* "name=value;" of every label, in wire order */
  int n_labels, sorted;
  double value;
  int64_t ts;
} sample_t;

typedef struct decoded_s {
  sample_t s[MAX_SAMPLES];
  int n;
} decoded_t;

static uint64_t varint(const uint8_t **p, const uint8_t *end) {
  uint64_t v = 0;
  for (int shift = 0; *p < end && shift < 64; shift += 7) {
    uint8_t b = *(*p)++;
    v |= (uint64_t)(b & 0x7f) << shift;
    if (!(b & 0x80)) return v;
  }
  fail_msg("bad varint");
  return 0;
}

/* Next field of [*p, end): its number and wire type; for LEN fields the
 * payload in [*f, *fend). */
static int field(const uint8_t **p, const uint8_t *end, int *wt, const uint8_t **f,
                 const uint8_t **fend, uint64_t *v) {
  uint64_t key = varint(p, end);
  *wt = (int)(key & 7);
  if (*wt == 2) {
    uint64_t len = varint(p, end);
    assert_true(len <= (uint64_t)(end - *p));
    *f = *p;
    *fend = *p + len;
    *p += len;
  } else if (*wt == 1) {
    assert_true(end - *p >= 8);
    memcpy(v, *p, 8); /* little-endian host */
    *p += 8;
  } else if (*wt == 0) {
    *v = varint(p, end);
  } else {
    fail_msg("unexpected wire type %d", *wt);
  }
  return (int)(key >> 3);
}

static void copy_str(char *dst, size_t cap, const uint8_t *a, const uint8_t *b) {
  size_t n = (size_t)(b - a);
  assert_true(n < cap);
  memcpy(dst, a, n);
  dst[n] = '\0';
}

static void decode_series(decoded_t *out, const uint8_t *p, const uint8_t *end) {
  char names[8][64], values[8][64];
  int nl = 0, first = out->n;
  while (p < end) {
    int wt;
    const uint8_t *f = NULL, *fe = NULL;
    uint64_t v;
    int num = field(&p, end, &wt, &f, &fe, &v);
    assert_int_equal(wt, 2);
    if (num == 1) { /* Label */
      assert_true(nl < 8);
      names[nl][0] = values[nl][0] = '\0';
      while (f < fe) {
        const uint8_t *g, *ge;
        int n2 = field(&f, fe, &wt, &g, &ge, &v);
        assert_int_equal(wt, 2);
        copy_str(n2 == 1 ? names[nl] : values[nl], 64, g, ge);
      }
      nl++;
    } else if (num == 2) { /* Sample */
      assert_true(out->n < MAX_SAMPLES);
      sample_t *s = &out->s[out->n++];
      memset(s, 0, sizeof *s);
      while (f < fe) {
        const uint8_t *g, *ge;
        int n2 = field(&f, fe, &wt, &g, &ge, &v);
        if (n2 == 1 && wt == 1) memcpy(&s->value, &v, 8);
        else if (n2 == 2 && wt == 0) s->ts = (int64_t)v;
        else fail_msg("unexpected sample field %d/%d", n2, wt);
      }
    } else {
      fail_msg("unexpected series field %d", num);
    }
  }
  int sorted = 1;
  for (int i = 1; i < nl; i++) sorted &= strcmp(names[i - 1], names[i]) < 0;
  for (int i = first; i < out->n; i++) {
    sample_t *s = &out->s[i];
    s->n_labels = nl;
    s->all[0] = '\0';
    for (int j = 0; j < nl; j++) {
      size_t used = strlen(s->all);
      snprintf(s->all + used, sizeof s->all - used, "%.60s=%.60s;", names[j], values[j]);
    }
    s->sorted = sorted;
    for (int j = 0; j < nl; j++) {
      char *dst = !strcmp(names[j], "__name__") ? s->name
                  : !strcmp(names[j], "run")    ? s->run
                  : !strcmp(names[j], "tag")    ? s->tag
                                                : NULL;
      if (dst) memcpy(dst, values[j], sizeof values[j]);
    }
  }
}

/* Every sample of request i. */
static void decode_body(recv_t *r, int i, decoded_t *out) {
  size_t n = 0;
  assert_int_equal(snappy_uncompressed_length(r->body[i], r->len[i], &n), SNAPPY_OK);
  char *raw = malloc(n ? n : 1);
  assert_int_equal(snappy_uncompress(r->body[i], r->len[i], raw, &n), SNAPPY_OK);
  const uint8_t *p = (const uint8_t *)raw, *end = p + n;
  while (p < end) {
    int wt;
    const uint8_t *f, *fe;
    uint64_t v;
    assert_int_equal(field(&p, end, &wt, &f, &fe, &v), 1);
    assert_int_equal(wt, 2);
    decode_series(out, f, fe);
  }
  free(raw);
}

/* ---- helpers ---- */

static void config(gw_remote_write_config_t *c, const char **urls, size_t n, const char *metrics) {
  gw_remote_write_config_default(c);
  c->urls = urls;
  c->n_urls = n;
  c->metrics = metrics;
  c->backoff_ms = 20;
  c->backoff_max_ms = 40;
  c->timeout_ms = 2000;
}

static gw_point_t point(uint64_t step, int64_t recv_ns, double kappa_ema, double loss) {
  gw_point_t p;
  memset(&p, 0, sizeof p);
  p.step = step;
  p.recv_ns = recv_ns;
  p.kappa_ema = kappa_ema;
  p.loss = loss;
  p.grad_norm = NAN;
  return p;
}

static double mono(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static const sample_t *find(const decoded_t *d, const char *name, const char *run, int64_t ts) {
  for (int i = 0; i < d->n; i++)
    if (!strcmp(d->s[i].name, name) && !strcmp(d->s[i].run, run) && d->s[i].ts == ts)
      return &d->s[i];
  return NULL;
}

static int count(const decoded_t *d, const char *name, const char *run) {
  int n = 0;
  for (int i = 0; i < d->n; i++) n += !strcmp(d->s[i].name, name) && !strcmp(d->s[i].run, run);
  return n;
}

/* ---- tests ---- */

static void test_points_arrive_as_samples(void **state) {
  recv_t r;
  char url[64];
  const char *urls[1] = {url};
  gw_remote_write_config_t c;
  gw_remote_write_t *rw;
  gw_sink_t sink;
  char err[256];
  recv_start(&r, 1, 204u);
  snprintf(url, sizeof url, "http://127.0.0.1:%u/api/v1/write", (unsigned)r.port);
  config(&c, urls, 1, "kappa_ema, loss");
  assert_int_equal(gw_remote_write_new(&rw, &c, err, sizeof err), 0);
  gw_remote_write_sink(rw, &sink);
  gw_stream_ref_t a = {.stream_id = 3, .run = "run-a", .tag = "all", .k = 8};
  gw_stream_ref_t b = {.stream_id = 0, .run = "run-b", .tag = "layer.1", .k = 8};
  gw_open_t o = {.how = GW_OPEN_NEW};
  sink.open(sink.arg, &a, &o);
  sink.open(sink.arg, &b, &o);
  const int64_t t0 = 1700000000123000000LL; /* ms 1700000000123 */
  /* a: steps 10..14; 10 and 11 in the same millisecond, 12 in the next
   * (already taken by 11: moved to +2), 13 later; loss null at step 12. */
  const int64_t at[5] = {t0, t0 + 400000, t0 + 1000000, t0 + 7000000, t0 + 9000000};
  const int64_t want_ms[5] = {1700000000123, 1700000000124, 1700000000125, 1700000000130,
                              1700000000132};
  for (int i = 0; i < 5; i++) {
    gw_point_t p = point(10 + i, at[i], 0.25 * i, i == 2 ? NAN : 1.0 / (i + 1));
    sink.point(sink.arg, &a, &p);
  }
  gw_point_t pb = point(7, t0, 3.5, NAN);
  sink.point(sink.arg, &b, &pb);
  assert_int_equal(gw_remote_write_drain(rw, 5000), 0);
  gw_remote_write_stats_t st;
  assert_int_equal(gw_remote_write_stats(rw, 0, &st), 0);
  assert_int_equal(st.sent, 6);
  assert_int_equal(st.failed + st.dropped + st.retries + st.queued, 0);
  assert_true(st.requests >= 1);
  assert_int_equal(gw_remote_write_stats(rw, 1, &st), GW_EINVAL);

  static decoded_t d;
  memset(&d, 0, sizeof d);
  for (int i = 0; i < r.n; i++) {
    assert_string_equal(r.enc[i], "snappy");
    assert_string_equal(r.ctype[i], "application/x-protobuf");
    assert_string_equal(r.ver[i], "0.1.0");
    decode_body(&r, i, &d);
  }
  /* 5 steps + 5 κ + 4 losses for a; step + κ for b. */
  assert_int_equal(d.n, 16);
  for (int i = 0; i < d.n; i++) {
    assert_int_equal(d.s[i].n_labels, 3);
    assert_true(d.s[i].sorted);
  }
  for (int i = 0; i < 5; i++) {
    const sample_t *s = find(&d, "gradwatch_point_step", "run-a", want_ms[i]);
    assert_non_null(s);
    assert_string_equal(s->tag, "all");
    assert_true(s->value == 10 + i);
    s = find(&d, "gradwatch_point_kappa_ema", "run-a", want_ms[i]);
    assert_non_null(s);
    assert_true(s->value == 0.25 * i);
    s = find(&d, "gradwatch_point_loss", "run-a", want_ms[i]);
    if (i == 2)
      assert_null(s);
    else
      assert_true(s && s->value == 1.0 / (i + 1));
  }
  assert_int_equal(count(&d, "gradwatch_point_loss", "run-a"), 4);
  assert_int_equal(count(&d, "gradwatch_point_loss", "run-b"), 0);
  const sample_t *s = find(&d, "gradwatch_point_kappa_ema", "run-b", 1700000000123);
  assert_true(s && s->value == 3.5 && !strcmp(s->tag, "layer.1"));
  s = find(&d, "gradwatch_point_step", "run-b", 1700000000123);
  assert_true(s && s->value == 7);
  gw_remote_write_free(rw, 1000);
  recv_stop(&r);
}

/* Send 5 points and wait until nothing is queued. */
static void send_five(gw_remote_write_t *rw) {
  gw_sink_t sink;
  gw_remote_write_sink(rw, &sink);
  gw_stream_ref_t a = {.stream_id = 0, .run = "r", .tag = "t", .k = 8};
  gw_open_t o = {.how = GW_OPEN_NEW};
  sink.open(sink.arg, &a, &o);
  for (int i = 1; i <= 5; i++) {
    gw_point_t p = point(i, (int64_t)i * 1000000000, i, i);
    sink.point(sink.arg, &a, &p);
  }
}

static void test_5xx_retried_4xx_refused(void **state) {
  recv_t r;
  char url[64];
  const char *urls[1] = {url};
  gw_remote_write_config_t c;
  gw_remote_write_t *rw;
  gw_remote_write_stats_t st;
  char err[256];
  recv_start(&r, 3, 503u, 500u, 200u);
  snprintf(url, sizeof url, "http://127.0.0.1:%u/w", (unsigned)r.port);
  config(&c, urls, 1, NULL);
  c.batch_max = 5;
  assert_int_equal(gw_remote_write_new(&rw, &c, err, sizeof err), 0);
  send_five(rw);
  assert_int_equal(gw_remote_write_drain(rw, 5000), 0);
  gw_remote_write_stats(rw, 0, &st);
  assert_int_equal(st.sent + st.failed, 5);
  /* The 5 points may have gone in one batch or several; the first request
   * got 503 and the second 500, so at least two retries, all with the
   * same body as the attempt before. */
  assert_int_equal(st.sent, 5);
  assert_int_equal(st.requests, (uint64_t)r.n);
  assert_true(st.retries >= 2);
  assert_int_equal(r.len[0], r.len[1]);
  assert_memory_equal(r.body[0], r.body[1], r.len[0]);
  assert_memory_equal(r.body[1], r.body[2], r.len[1]);
  gw_remote_write_free(rw, 1000);
  recv_stop(&r);

  recv_start(&r, 1, 400u);
  snprintf(url, sizeof url, "http://127.0.0.1:%u/w", (unsigned)r.port);
  assert_int_equal(gw_remote_write_new(&rw, &c, err, sizeof err), 0);
  send_five(rw);
  assert_int_equal(gw_remote_write_drain(rw, 5000), 0);
  gw_remote_write_stats(rw, 0, &st);
  assert_int_equal(st.failed, 5);
  assert_int_equal(st.sent + st.retries + st.dropped, 0);
  assert_int_equal(st.requests, (uint64_t)r.n);
  gw_remote_write_free(rw, 1000);
  recv_stop(&r);
}

static void test_receiver_down_never_blocks_and_drops(void **state) {
  char url[64];
  const char *urls[1] = {url};
  gw_remote_write_config_t c;
  gw_remote_write_t *rw;
  gw_remote_write_stats_t st;
  gw_sink_t sink;
  char err[256];
  snprintf(url, sizeof url, "http://127.0.0.1:%u/w", (unsigned)dead_port());
  config(&c, urls, 1, NULL);
  c.queue_max = 10;
  c.batch_max = 4;
  assert_int_equal(gw_remote_write_new(&rw, &c, err, sizeof err), 0);
  gw_remote_write_sink(rw, &sink);
  gw_stream_ref_t a = {.stream_id = 5, .run = "r", .tag = "t", .k = 8};
  gw_open_t o = {.how = GW_OPEN_NEW};
  sink.open(sink.arg, &a, &o);
  double t = mono();
  for (int i = 1; i <= 1000; i++) {
    gw_point_t p = point(i, (int64_t)i * 1000000, i, i);
    sink.point(sink.arg, &a, &p);
  }
  t = mono() - t;
  assert_true(t < 0.5); /* 1000 points with the receiver down: no waiting */
  /* The stream is forgotten while its points are queued: they keep its labels. */
  sink.forget(sink.arg, &a);
  /* Wait until the worker has retried at least once. */
  for (int i = 0; i < 500; i++) {
    gw_remote_write_stats(rw, 0, &st);
    if (st.retries >= 1) break;
    usleep(10000);
  }
  gw_remote_write_stats(rw, 0, &st);
  assert_true(st.retries >= 1);
  assert_int_equal(st.sent + st.failed, 0);
  assert_true(st.queued <= 14 && st.queued >= 10);
  assert_int_equal(st.dropped + st.queued, 1000);
  assert_int_equal(gw_remote_write_drain(rw, 50), -ETIMEDOUT);
  t = mono();
  gw_remote_write_free(rw, 0); /* aborts the wait, drops the rest */
  assert_true(mono() - t < 1.5);
}

static void test_extra_labels_sorted(void **state) {
  recv_t r;
  char url[64];
  const char *urls[1] = {url};
  const char *labels[] = {"replica=b", "cluster=c1", "__replica__=gw-1", "zone=eu_1"};
  gw_remote_write_config_t c;
  gw_remote_write_t *rw;
  char err[256];
  recv_start(&r, 1, 200u);
  snprintf(url, sizeof url, "http://127.0.0.1:%u/w", (unsigned)r.port);
  config(&c, urls, 1, "rank_90");
  c.labels = labels;
  c.n_labels = 4;
  assert_int_equal(gw_remote_write_new(&rw, &c, err, sizeof err), 0);
  send_five(rw);
  assert_int_equal(gw_remote_write_drain(rw, 5000), 0);
  static decoded_t d;
  memset(&d, 0, sizeof d);
  for (int i = 0; i < r.n; i++) decode_body(&r, i, &d);
  assert_int_equal(d.n, 10); /* step and rank_90, 5 points */
  for (int i = 0; i < d.n; i++) {
    assert_int_equal(d.s[i].n_labels, 7);
    assert_true(d.s[i].sorted);
  }
  const sample_t *s = find(&d, "gradwatch_point_rank_90", "r", 3000);
  assert_non_null(s);
  assert_string_equal(s->all, "__name__=gradwatch_point_rank_90;__replica__=gw-1;cluster=c1;"
                              "replica=b;run=r;tag=t;zone=eu_1;");
  gw_remote_write_free(rw, 1000);
  recv_stop(&r);

  const char *ok[] = {"http://127.0.0.1:1/w"};
  const char *bad[][2] = {{"noequals", NULL}, {"=v", NULL}, {"1a=b", NULL}, {"run=x", NULL},
                          {"a=b", "a=c"}, {"a=", NULL}, {"a-b=c", NULL}, {"__name__=x", NULL}};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    config(&c, ok, 1, NULL);
    c.labels = bad[i];
    c.n_labels = bad[i][1] ? 2 : 1;
    rw = NULL;
    assert_int_equal(gw_remote_write_new(&rw, &c, err, sizeof err), GW_ECONFIG);
    assert_null(rw);
  }
}

static void test_metric_list_and_bad_config(void **state) {
  int ids[GW_METRIC_COUNT];
  size_t n;
  char err[256];
  assert_int_equal(gw_remote_write_parse_metrics(NULL, ids, &n, err, sizeof err), 0);
  assert_int_equal(n, 6);
  assert_int_equal(ids[0], GW_METRIC_KAPPA_ONESTEP);
  assert_int_equal(ids[5], GW_METRIC_LOSS);
  assert_int_equal(gw_remote_write_parse_metrics(" rank_90 ,sigma_3", ids, &n, err, sizeof err), 0);
  assert_int_equal(n, 2);
  assert_int_equal(ids[0], GW_METRIC_RANK_90);
  assert_int_equal(ids[1], GW_METRIC_SIGMA_3);
  const char *bad[] = {"", "kappa", "loss,,rank_90", "loss,loss", "loss,", "sigma"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    assert_int_equal(gw_remote_write_parse_metrics(bad[i], ids, &n, err, sizeof err), GW_ECONFIG);

  gw_remote_write_config_t c;
  gw_remote_write_t *rw = (gw_remote_write_t *)1;
  const char *urls[] = {"ftp://x/"}, *ok[] = {"http://127.0.0.1:1/w"};
  config(&c, urls, 1, NULL);
  assert_int_equal(gw_remote_write_new(&rw, &c, err, sizeof err), GW_ECONFIG);
  assert_null(rw);
  assert_non_null(strstr(err, "ftp://x/"));
  config(&c, ok, 0, NULL);
  assert_int_equal(gw_remote_write_new(&rw, &c, err, sizeof err), GW_ECONFIG);
  config(&c, ok, 1, "nope");
  assert_int_equal(gw_remote_write_new(&rw, &c, err, sizeof err), GW_ECONFIG);
  assert_non_null(strstr(err, "nope"));
  config(&c, ok, 1, NULL);
  c.queue_max = 0;
  assert_int_equal(gw_remote_write_new(&rw, &c, err, sizeof err), GW_EINVAL);
  gw_remote_write_free(NULL, 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_points_arrive_as_samples),
      cmocka_unit_test(test_5xx_retried_4xx_refused),
      cmocka_unit_test(test_receiver_down_never_blocks_and_drops),
      cmocka_unit_test(test_extra_labels_sorted),
      cmocka_unit_test(test_metric_list_and_bad_config),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
