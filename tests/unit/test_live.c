/* test_live.c — the SSE hub over real TCP: a libmicrohttpd daemon set up as
 * http.c sets it up (epoll pool, suspend/resume) serves gw_live_serve, and
 * plain sockets subscribe. Checks event text and JSON against the published
 * points, filters, heartbeat, disconnect cleanup, shutdown, the client caps
 * (in all and per address), that a client that never reads is dropped
 * without slowing publishing or breaking another client, and that the cost
 * of publishing does not grow with the number of stalled clients. */
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
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
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <microhttpd.h>

#include "live.h"
#include "point.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- a server like http.c's, serving only the hub ---- */

typedef struct {
  gw_stats_t stats;
  gw_live_t *live;
  struct MHD_Daemon *mhd;
  uint16_t port;
} server_t;

static enum MHD_Result serve(void *cls, struct MHD_Connection *c, const char *url,
                             const char *method, const char *version,
                             const char *upload, size_t *upload_size, void **ctx) {
  server_t *s = cls;
  struct MHD_Response *r = NULL;
  unsigned status = MHD_HTTP_OK;
  (void)url, (void)method, (void)version, (void)upload, (void)upload_size, (void)ctx;
  int rc = gw_live_serve(s->live, c,
                         MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "run"),
                         MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "tag"), &r);
  if (rc != 0) {
    status = MHD_HTTP_SERVICE_UNAVAILABLE;
    r = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
  } else {
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
  }
  enum MHD_Result ret = MHD_queue_response(c, status, r);
  MHD_destroy_response(r);
  return ret;
}

static server_t *server_start_with(const gw_live_config_t *lc) {
  server_t *s = calloc(1, sizeof *s);
  assert_non_null(s);
  assert_int_equal(gw_live_new(&s->live, lc, &s->stats), 0);
  s->mhd = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO |
                                MHD_ALLOW_SUSPEND_RESUME,
                            0, NULL, NULL, serve, s, MHD_OPTION_THREAD_POOL_SIZE, 2u,
                            MHD_OPTION_CONNECTION_TIMEOUT, 60u, MHD_OPTION_END);
  assert_non_null(s->mhd);
  const union MHD_DaemonInfo *info = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_BIND_PORT);
  assert_non_null(info);
  s->port = info->port;
  return s;
}

static server_t *server_start(size_t max_bytes) {
  gw_live_config_t lc = {.client_max_bytes = max_bytes, .total_max_bytes = 4 * max_bytes,
                         .max_clients = 1000, .max_per_address = 1000};
  return server_start_with(&lc);
}

static void server_stop(server_t *s) {
  gw_live_close_clients(s->live);
  MHD_stop_daemon(s->mhd);
  assert_int_equal(gw_live_client_count(s->live), 0);
  gw_live_free(s->live);
  free(s);
}

static void wait_clients(server_t *s, size_t n) {
  double t0 = now_s();
  while (gw_live_client_count(s->live) != n) {
    if (now_s() - t0 > 5) fail_msg("expected %zu clients, have %zu", n, gw_live_client_count(s->live));
    usleep(1000);
  }
}

/* ---- a raw SSE client ---- */

typedef struct {
  int fd;
  char *buf;
  size_t len, cap, pos; /* pos: start of the first unparsed event */
  int eof;
} client_t;

/* Read what is available within timeout_ms; 1 if bytes came, 0 on EOF, -1
 * on timeout. */
static int client_read(client_t *c, int timeout_ms) {
  struct pollfd p = {.fd = c->fd, .events = POLLIN};
  if (poll(&p, 1, timeout_ms) <= 0) return -1;
  if (c->cap - c->len < 65536) {
    if (c->pos > 0) { /* drop parsed bytes */
      memmove(c->buf, c->buf + c->pos, c->len - c->pos);
      c->len -= c->pos;
      c->pos = 0;
    }
    if (c->cap - c->len < 65536) {
      c->cap = c->cap ? c->cap * 2 : 1 << 17;
      c->buf = realloc(c->buf, c->cap);
      assert_non_null(c->buf);
    }
  }
  ssize_t n = recv(c->fd, c->buf + c->len, c->cap - c->len - 1, 0);
  if (n <= 0) {
    c->eof = 1;
    return 0;
  }
  c->len += (size_t)n;
  c->buf[c->len] = '\0';
  return 1;
}

/* Connect from 127.0.0.src (src 1..254) and subscribe. The status line is
 * in *status (when status is given, any status is accepted; otherwise it
 * must be 200). */
static client_t *client_open_from(uint16_t port, const char *path, int rcvbuf, int src,
                                  int *status) {
  client_t *c = calloc(1, sizeof *c);
  assert_non_null(c);
  c->fd = socket(AF_INET, SOCK_STREAM, 0);
  assert_true(c->fd >= 0);
  if (rcvbuf) setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
  struct sockaddr_in me = {.sin_family = AF_INET};
  me.sin_addr.s_addr = htonl(0x7f000000u | (uint32_t)src);
  assert_int_equal(bind(c->fd, (struct sockaddr *)&me, sizeof me), 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  assert_int_equal(connect(c->fd, (struct sockaddr *)&a, sizeof a), 0);
  char req[512];
  int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: x\r\n\r\n", path);
  assert_int_equal(send(c->fd, req, (size_t)n, 0), n);
  /* Headers, then the hello ("retry:") block proves the subscription. */
  char *end;
  while (!(end = strstr(c->buf ? c->buf : "", "\r\n\r\n")))
    if (client_read(c, 5000) != 1) fail_msg("no response headers");
  *end = '\0';
  if (status) {
    *status = strstr(c->buf, " 200 ") ? 200 : strstr(c->buf, " 503 ") ? 503 : 0;
    c->pos = (size_t)(end - c->buf) + 4;
    return c;
  }
  if (!strstr(c->buf, " 200 ")) fail_msg("status: %s", c->buf);
  assert_non_null(strstr(c->buf, "text/event-stream"));
  c->pos = (size_t)(end - c->buf) + 4;
  return c;
}

static client_t *client_open(uint16_t port, const char *path, int rcvbuf) {
  return client_open_from(port, path, rcvbuf, 1, NULL);
}

static void client_close(client_t *c) {
  close(c->fd);
  free(c->buf);
  free(c);
}

typedef struct {
  char name[16]; /* "" for blocks without an event line (comments, retry) */
  char *data;    /* the data line, NUL-terminated inside the buffer */
  int comment;   /* block holds a ':' comment line */
  const char *malformed; /* why the block is not one well-formed event */
} event_t;

/* Next complete block ("...\n\n") from the buffer, or 0 if none yet.
 * Strict, as a browser would see it: at most one event and one data line
 * (a second data line would be glued to the first with a newline), event
 * lines known, a data line only with an event. */
static int next_event(client_t *c, event_t *ev) {
  char *start = c->buf + c->pos, *stop = c->buf + c->len, *end = NULL;
  /* memchr, not strstr: this runs per event over a buffer of many events */
  for (char *p = start; p < stop && (p = memchr(p, '\n', (size_t)(stop - p))); p++)
    if (p + 1 < stop && p[1] == '\n') {
      end = p;
      break;
    }
  if (!end) return 0;
  *end = '\0';
  c->pos = (size_t)(end - c->buf) + 2;
  memset(ev, 0, sizeof *ev);
  for (char *line = start; line && *line;) {
    char *nl = strchr(line, '\n');
    if (nl) *nl = '\0';
    if (strncmp(line, "event: ", 7) == 0) {
      if (ev->name[0]) ev->malformed = "two event lines";
      snprintf(ev->name, sizeof ev->name, "%s", line + 7);
    } else if (strncmp(line, "data: ", 6) == 0) {
      if (ev->data) ev->malformed = "two data lines";
      ev->data = line + 6;
    } else if (line[0] == ':') {
      ev->comment = 1;
    } else if (strncmp(line, "retry: ", 7) != 0) {
      ev->malformed = "unknown line";
    }
    line = nl ? nl + 1 : NULL;
  }
  if (!ev->malformed && ev->name[0] && !ev->data) ev->malformed = "event without data";
  if (!ev->malformed && ev->name[0] && strcmp(ev->name, "point") != 0 &&
      strcmp(ev->name, "alert") != 0 && strcmp(ev->name, "resync") != 0)
    ev->malformed = "unknown event";
  if (!ev->malformed && strcmp(ev->name, "resync") == 0 && strcmp(ev->data, "{}") != 0)
    ev->malformed = "resync with data";
  return 1;
}

/* Collect n named events (skipping comments) within 5 s. Their data is
 * copied (the buffer moves as it fills): free with release(). */
static void collect(client_t *c, event_t *evs, int n) {
  int got = 0;
  double t0 = now_s();
  while (got < n) {
    event_t ev;
    if (next_event(c, &ev)) {
      if (ev.malformed) fail_msg("malformed SSE block (%s)", ev.malformed);
      if (!ev.name[0]) continue;
      if (ev.data) assert_non_null(ev.data = strdup(ev.data));
      evs[got++] = ev;
      continue;
    }
    if (now_s() - t0 > 5) fail_msg("got %d of %d events", got, n);
    if (client_read(c, 100) == 0) fail_msg("EOF after %d of %d events", got, n);
  }
}

static void release(event_t *evs, int n) {
  for (int i = 0; i < n; i++) free(evs[i].data);
}

static gw_point_t make_point(uint64_t step) {
  gw_point_t p;
  memset(&p, 0, sizeof p);
  p.n = step;
  p.step = step;
  p.wall_ns = (int64_t)step * 1000000000;
  p.window_len = 64;
  p.path_onestep = (double)step * 3.0;
  p.path_ema = (double)step * 0.5;
  p.kappa_onestep = (double)step / 7.0;
  p.kappa_ema = 1.0 / 3.0;
  p.kappa_onestep_cum = NAN;
  p.kappa_ema_cum = 0.1 + 0.2;
  p.rank_90 = (uint32_t)(step % 5);
  p.rank_99 = 9;
  p.stable_rank = NAN;
  for (int i = 0; i < GW_TOP_SIGMA; i++) {
    p.tail_energy[i] = 1.0 / (i + 2);
    p.sigma[i] = (double)step * 0.5 / (i + 1);
  }
  p.grad_norm = NAN;
  p.loss = -(double)step;
  p.lr = 1e-3;
  p.sketch_norm = 2.0;
  return p;
}

/* The event's JSON against the point: every metric of point.h, NaN ↔ null,
 * numbers exact (cJSON prints round-trip digits). */
static void check_point_event(const event_t *ev, const char *run, const char *tag,
                              uint64_t step) {
  assert_string_equal(ev->name, "point");
  assert_non_null(ev->data);
  cJSON *o = cJSON_Parse(ev->data);
  if (!o) fail_msg("bad JSON: %.100s", ev->data);
  assert_string_equal(cJSON_GetObjectItemCaseSensitive(o, "run")->valuestring, run);
  assert_string_equal(cJSON_GetObjectItemCaseSensitive(o, "tag")->valuestring, tag);
  assert_true(cJSON_GetObjectItemCaseSensitive(o, "step")->valuedouble == (double)step);
  /* a few fields by hand, independent of the table */
  assert_true(cJSON_GetObjectItemCaseSensitive(o, "kappa_onestep")->valuedouble == (double)step / 7.0);
  assert_true(cJSON_GetObjectItemCaseSensitive(o, "kappa_ema_cum")->valuedouble == 0.1 + 0.2);
  assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(o, "grad_norm")));
  assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(o, "stable_rank")));
  assert_true(cJSON_GetObjectItemCaseSensitive(o, "rank_90")->valuedouble == (double)(step % 5));
  assert_true(cJSON_GetObjectItemCaseSensitive(o, "sigma_2")->valuedouble == (double)step * 0.25);
  assert_true(cJSON_GetObjectItemCaseSensitive(o, "wall_time")->valuedouble ==
              (double)((int64_t)step * 1000000000) * 1e-9);
  /* then every metric name */
  gw_point_t p = make_point(step);
  assert_int_equal(cJSON_GetArraySize(o), GW_METRIC_COUNT + 3);
  for (int i = 0; i < GW_METRIC_COUNT; i++) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, gw_metric_name(i));
    if (!v) fail_msg("missing %s", gw_metric_name(i));
    double want = gw_point_get(&p, i);
    if (isnan(want)) assert_true(cJSON_IsNull(v));
    else assert_true(cJSON_IsNumber(v) && v->valuedouble == want);
  }
  cJSON_Delete(o);
}

static void delivers_points_and_alerts_with_filters(void **state) {
  (void)state;
  server_t *s = server_start(0);
  client_t *all = client_open(s->port, "/events", 0);
  client_t *r1 = client_open(s->port, "/events?run=r1", 0);
  client_t *r2t = client_open(s->port, "/events?run=r2&tag=layer/w", 0);
  wait_clients(s, 3);
  for (uint64_t i = 1; i <= 50; i++) {
    gw_point_t p = make_point(i);
    assert_int_equal(gw_live_publish_point(s->live, "r1", "all", &p), 0);
    assert_int_equal(gw_live_publish_point(s->live, "r2", "layer/w", &p), 0);
    assert_int_equal(gw_live_publish_point(s->live, "r2", "other", &p), 0);
  }
  assert_int_equal(gw_live_publish_alert(s->live, "{\"run\":\"r1\",\"rule\":\"kappa\",\"state\":\"firing\"}"), 0);
  assert_int_equal(gw_live_publish_alert(s->live, "{\"rule\":\"global\"}"), 0);

  event_t ev[152];
  collect(all, ev, 152);
  for (uint64_t i = 1; i <= 50; i++) {
    check_point_event(&ev[3 * (i - 1)], "r1", "all", i);
    check_point_event(&ev[3 * (i - 1) + 1], "r2", "layer/w", i);
    check_point_event(&ev[3 * (i - 1) + 2], "r2", "other", i);
  }
  assert_string_equal(ev[150].name, "alert");
  assert_string_equal(ev[150].data, "{\"run\":\"r1\",\"rule\":\"kappa\",\"state\":\"firing\"}");
  assert_string_equal(ev[151].data, "{\"rule\":\"global\"}");
  release(ev, 152);

  collect(r1, ev, 52);
  for (uint64_t i = 1; i <= 50; i++) check_point_event(&ev[i - 1], "r1", "all", i);
  assert_string_equal(ev[50].name, "alert");
  assert_string_equal(ev[51].data, "{\"rule\":\"global\"}");
  release(ev, 52);

  collect(r2t, ev, 51); /* its points, then the alert without a run */
  for (uint64_t i = 1; i <= 50; i++) check_point_event(&ev[i - 1], "r2", "layer/w", i);
  assert_string_equal(ev[50].data, "{\"rule\":\"global\"}");
  release(ev, 51);
  assert_int_equal(gw_stats_get(&s->stats.live_dropped), 0);

  assert_int_equal(gw_live_publish_alert(s->live, "[1,2]"), GW_EINVAL);
  assert_int_equal(gw_live_publish_alert(s->live, "nope"), GW_EINVAL);

  client_close(all);
  client_close(r1);
  client_close(r2t);
  server_stop(s);
}

/* Heartbeats reach an idle (suspended) client; a client that went away is
 * noticed on the next heartbeat and freed. */
static void heartbeat_and_disconnect(void **state) {
  (void)state;
  server_t *s = server_start(0);
  gw_live_set_heartbeat_ms(s->live, 50);
  client_t *a = client_open(s->port, "/events", 0);
  client_t *b = client_open(s->port, "/events", 0);
  wait_clients(s, 2);
  int beats = 0;
  double t0 = now_s();
  while (beats < 3) {
    event_t ev;
    if (next_event(a, &ev)) {
      assert_null(ev.malformed);
      if (ev.comment) beats++;
      else assert_string_equal(ev.name, "");
      continue;
    }
    if (now_s() - t0 > 5) fail_msg("only %d heartbeats", beats);
    assert_int_not_equal(client_read(a, 200), 0);
  }
  client_close(b);
  wait_clients(s, 1);
  /* the survivor still gets events after the heartbeats */
  gw_point_t p = make_point(7);
  assert_int_equal(gw_live_publish_point(s->live, "r", "t", &p), 0);
  event_t ev;
  collect(a, &ev, 1);
  check_point_event(&ev, "r", "t", 7);
  release(&ev, 1);
  client_close(a);
  server_stop(s);
}

/* close_clients ends every stream (EOF) and refuses new subscribers. */
static void close_clients_ends_streams(void **state) {
  (void)state;
  server_t *s = server_start(0);
  client_t *a = client_open(s->port, "/events", 0);
  wait_clients(s, 1);
  gw_live_close_clients(s->live);
  double t0 = now_s();
  while (!a->eof) {
    if (now_s() - t0 > 5) fail_msg("stream did not end");
    client_read(a, 100);
  }
  wait_clients(s, 0);
  /* a new subscriber is refused */
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(s->port)};
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
  const char req[] = "GET /events HTTP/1.0\r\n\r\n";
  assert_int_equal(send(fd, req, sizeof req - 1, 0), (ssize_t)(sizeof req - 1));
  char buf[256] = {0};
  ssize_t n = recv(fd, buf, sizeof buf - 1, MSG_WAITALL);
  assert_true(n > 0);
  assert_non_null(strstr(buf, " 503 "));
  close(fd);
  client_close(a);
  server_stop(s);
}

/* ---- the slow-client test ---- */

enum { N_POINTS = 100000 };

typedef struct {
  client_t *c;
  uint64_t last_step, points, resyncs;
  int bad;
  char why[160];
} reader_t;

/* Consume events; check order and shape without a full JSON parse (100k). */
static int reader_step(reader_t *r) {
  event_t ev;
  int n = 0;
  while (next_event(r->c, &ev)) {
    if (ev.malformed) {
      if (!r->bad) snprintf(r->why, sizeof r->why, "malformed SSE block (%s)", ev.malformed);
      r->bad = 1;
      continue;
    }
    if (!ev.name[0]) continue;
    if (strcmp(ev.name, "resync") == 0) {
      r->resyncs++;
      continue;
    }
    const char *st = ev.data ? strstr(ev.data, "\"step\":") : NULL;
    size_t dl = ev.data ? strlen(ev.data) : 0;
    if (strcmp(ev.name, "point") != 0 || !st || ev.data[0] != '{' || ev.data[dl - 1] != '}' ||
        strncmp(ev.data, "{\"run\":\"r\",\"tag\":\"t\",", 20) != 0) {
      if (!r->bad) snprintf(r->why, sizeof r->why, "bad event %s: %.100s", ev.name, ev.data ? ev.data : "");
      r->bad = 1;
      continue;
    }
    uint64_t step = strtoull(st + 7, NULL, 10);
    if (step <= r->last_step && !r->bad) {
      snprintf(r->why, sizeof r->why, "step %llu after %llu", (unsigned long long)step,
               (unsigned long long)r->last_step);
      r->bad = 1;
    }
    r->last_step = step;
    r->points++;
    n++;
  }
  return n;
}

static void *reader_main(void *arg) {
  reader_t *r = arg;
  double t0 = now_s();
  while (r->last_step < N_POINTS && now_s() - t0 < 60) {
    if (client_read(r->c, 100) == 0) break;
    reader_step(r);
  }
  return NULL;
}

static void stalled_client_is_dropped_not_waited_for(void **state) {
  (void)state;
  /* 8 MiB per client: the good reader never falls that far behind; the
   * stalled one (4 KiB receive buffer, never reads) passes it and is
   * dropped. */
  server_t *s = server_start((size_t)8 << 20);
  client_t *good = client_open(s->port, "/events", 0);
  client_t *stalled = client_open(s->port, "/events", 4096);
  wait_clients(s, 2);

  reader_t rg = {.c = good};
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, reader_main, &rg), 0);

  double t0 = now_s(), worst = 0;
  for (uint64_t i = 1; i <= N_POINTS; i++) {
    gw_point_t p = make_point(i);
    double a = now_s();
    assert_int_equal(gw_live_publish_point(s->live, "r", "t", &p), 0);
    double d = now_s() - a;
    if (d > worst) worst = d;
  }
  double total = now_s() - t0;
  pthread_join(th, NULL);
  print_message("published %d points to 2 clients (one stalled) in %.3f s, "
                "%.2f us/point, slowest call %.3f ms; live_dropped=%llu\n",
                N_POINTS, total, total / N_POINTS * 1e6, worst * 1e3,
                (unsigned long long)gw_stats_get(&s->stats.live_dropped));

  /* Publishing never waited on the stalled socket. */
  assert_true(worst < 0.5);
  assert_true(total < 30.0);

  /* The good client saw every point, in order, and no resync. */
  if (rg.bad) fail_msg("good client: %s", rg.why);
  assert_int_equal(rg.points, N_POINTS);
  assert_int_equal(rg.last_step, N_POINTS);
  assert_int_equal(rg.resyncs, 0);

  /* The stalled client was dropped: counted, and gone from the hub. */
  wait_clients(s, 1);
  assert_int_equal(gw_stats_get(&s->stats.sse_dropped[GW_SSE_DROP_SLOW]), 1);
  assert_int_equal(gw_stats_get(&s->stats.sse_clients), 1);
  assert_true(gw_stats_get(&s->stats.live_dropped) > 0);

  /* What it had been sent before that is well formed, whole events in
   * increasing order (an unfinished last block is discarded, as a browser
   * does), and the stream then ends. */
  reader_t rs = {.c = stalled};
  double t1 = now_s();
  while (!stalled->eof && now_s() - t1 < 20) {
    client_read(stalled, 200);
    reader_step(&rs);
  }
  if (rs.bad) fail_msg("stalled client: %s", rs.why);
  assert_true(stalled->eof);
  assert_true(rs.points > 0 && rs.last_step < N_POINTS);

  client_close(good);
  client_close(stalled);
  server_stop(s);
}

/* Over max_clients or max_per_address a subscriber is refused (503 from
 * the test server), counted by reason; the gauge follows. */
static void client_caps_in_all_and_per_address(void **state) {
  (void)state;
  gw_live_config_t lc = {.max_clients = 3, .max_per_address = 2};
  server_t *s = server_start_with(&lc);
  gw_live_set_heartbeat_ms(s->live, 50); /* so a client that left is noticed */
  int st;
  client_t *a1 = client_open_from(s->port, "/events", 0, 1, &st);
  assert_int_equal(st, 200);
  client_t *a2 = client_open_from(s->port, "/events", 0, 1, &st);
  assert_int_equal(st, 200);
  client_t *a3 = client_open_from(s->port, "/events", 0, 1, &st);
  assert_int_equal(st, 503); /* third from 127.0.0.1 */
  client_t *b1 = client_open_from(s->port, "/events", 0, 2, &st);
  assert_int_equal(st, 200);
  client_t *c1 = client_open_from(s->port, "/events", 0, 3, &st);
  assert_int_equal(st, 503); /* fourth in all */
  wait_clients(s, 3);
  assert_int_equal(gw_stats_get(&s->stats.sse_dropped[GW_SSE_DROP_PER_ADDRESS]), 1);
  assert_int_equal(gw_stats_get(&s->stats.sse_dropped[GW_SSE_DROP_MAX_CLIENTS]), 1);
  assert_int_equal(gw_stats_get(&s->stats.sse_clients), 3);
  /* one leaves: a new one from 127.0.0.3 fits again, and is served */
  client_close(a1);
  wait_clients(s, 2);
  client_t *c2 = client_open_from(s->port, "/events", 0, 3, &st);
  assert_int_equal(st, 200);
  wait_clients(s, 3);
  gw_point_t p = make_point(5);
  assert_int_equal(gw_live_publish_point(s->live, "r", "t", &p), 0);
  event_t ev;
  collect(c2, &ev, 1);
  check_point_event(&ev, "r", "t", 5);
  release(&ev, 1);
  client_close(a2);
  client_close(a3);
  client_close(b1);
  client_close(c1);
  client_close(c2);
  server_stop(s);
}

/* Seconds to publish n points while one client reads them all. */
static double timed_publish(server_t *s, uint64_t first, uint64_t n) {
  double t0 = now_s();
  for (uint64_t i = first; i < first + n; i++) {
    gw_point_t p = make_point(i);
    assert_int_equal(gw_live_publish_point(s->live, "r", "t", &p), 0);
  }
  return now_s() - t0;
}

/* The cost of a publish does not depend on how many clients have stalled:
 * 20,000 points beside 200 stalled clients take about as long as beside
 * none (the old per-client queues made it hundreds of times slower). */
static void publish_cost_is_independent_of_stalled_clients(void **state) {
  (void)state;
  enum { N = 20000, STALLED = 200 };
  gw_live_config_t lc = {.client_max_bytes = (size_t)8 << 20, .total_max_bytes = (size_t)32 << 20,
                         .max_clients = 1000, .max_per_address = 1000};
  server_t *s = server_start_with(&lc);
  client_t *good = client_open(s->port, "/events", 0);
  wait_clients(s, 1);
  reader_t rg = {.c = good};
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, reader_main, &rg), 0);
  double alone = timed_publish(s, 1, N);
  client_t *st[STALLED];
  for (int i = 0; i < STALLED; i++) st[i] = client_open(s->port, "/events", 4096);
  wait_clients(s, 1 + STALLED);
  double beside = timed_publish(s, 1 + N, N);
  /* the rest, so the reader thread (waiting for N_POINTS) can finish */
  timed_publish(s, 1 + 2 * N, N_POINTS - 2 * N);
  pthread_join(th, NULL);
  print_message("%d points: %.3f s with one reader, %.3f s beside %d stalled clients; "
                "dropped slow=%llu\n", N, alone, beside, STALLED,
                (unsigned long long)gw_stats_get(&s->stats.sse_dropped[GW_SSE_DROP_SLOW]));
  assert_true(beside < 3.0 * alone + 0.5);
  if (rg.bad) fail_msg("good client: %s", rg.why);
  assert_int_equal(rg.points, N_POINTS);
  assert_int_equal(rg.resyncs, 0);
  /* 20,000 events of ~700 bytes: every stalled client fell 8 MiB behind */
  double t0 = now_s();
  while (gw_stats_get(&s->stats.sse_dropped[GW_SSE_DROP_SLOW]) < STALLED && now_s() - t0 < 10)
    usleep(10000);
  assert_int_equal(gw_stats_get(&s->stats.sse_dropped[GW_SSE_DROP_SLOW]), STALLED);
  wait_clients(s, 1);
  for (int i = 0; i < STALLED; i++) client_close(st[i]);
  client_close(good);
  server_stop(s);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(delivers_points_and_alerts_with_filters),
      cmocka_unit_test(heartbeat_and_disconnect),
      cmocka_unit_test(close_clients_ends_streams),
      cmocka_unit_test(stalled_client_is_dropped_not_waited_for),
      cmocka_unit_test(client_caps_in_all_and_per_address),
      cmocka_unit_test(publish_cost_is_independent_of_stalled_clients),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
