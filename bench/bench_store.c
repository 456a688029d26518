/* bench_store.c — store throughput: points/s committed by the writer, the
 * cost of a put on the ingest side, and reader latency with a pool of
 * read-only connections vs one connection per call.
 *
 * usage: bench_store [DB_PATH [POINTS [STREAMS [CHUNK_POINTS]]]]
 *   defaults: /tmp/gw_bench_store.db, 2,000,000 points, 100 streams, chunks
 *   of GW_STORE_CHUNK_POINTS (0: one row per point, the layout before chunks).
 * Points are k=256-shaped (the stored blob is GW_METRIC_COUNT float64 whatever
 * k is). The producer round-robins over the streams like interleaved
 * training jobs; when the queue is full it waits 100 µs and retries, so the
 * committed rate is the writer's ceiling, not the queue's size.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "store.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void rm_db(const char *path) {
  char p[512];
  unlink(path);
  snprintf(p, sizeof p, "%s-wal", path);
  unlink(p);
  snprintf(p, sizeof p, "%s-shm", path);
  unlink(p);
}

static void fill(gw_point_t *p, uint32_t sid, uint64_t n) {
  double x = (double)n * 0.001 + sid;
  memset(p, 0, sizeof *p);
  p->stream_id = sid;
  p->n = n;
  p->step = n;
  p->wall_ns = 1700000000000000000LL + (int64_t)n * 10000000LL;
  p->recv_ns = p->wall_ns;
  p->window_len = 64;
  p->path_onestep = x, p->path_ema = x / 2;
  p->kappa_onestep = sin(x), p->kappa_ema = cos(x);
  p->kappa_onestep_cum = x / 3, p->kappa_ema_cum = x / 4;
  p->rank_90 = 7, p->rank_99 = 19;
  p->stable_rank = 3.5;
  for (int i = 0; i < GW_TOP_SIGMA; i++) {
    p->tail_energy[i] = 1.0 / (i + 2);
    p->sigma[i] = 100.0 / (i + 1) + x;
  }
  p->grad_norm = NAN, p->loss = x, p->lr = 1e-3, p->sketch_norm = 12.5;
}

static double reader_rate(gw_store_t *st, int calls, int series) {
  int metrics[3] = {GW_METRIC_KAPPA_ONESTEP, GW_METRIC_KAPPA_EMA, GW_METRIC_RANK_90};
  double t0 = now_s();
  for (int i = 0; i < calls; i++) {
    if (series) {
      gw_series_t s;
      if (gw_store_series(st, "bench", "t7", metrics, 3, 0, UINT64_MAX, 500, &s, 0) == 0)
        gw_store_series_free(&s);
    } else {
      gw_store_stream_t *ss;
      size_t n;
      if (gw_store_streams(st, "bench", &ss, &n) == 0) gw_store_streams_free(ss, n);
    }
  }
  return (now_s() - t0) / calls * 1e6;
}

int main(int argc, char **argv) {
  const char *path = argc > 1 ? argv[1] : "/tmp/gw_bench_store.db";
  uint64_t total = argc > 2 ? strtoull(argv[2], NULL, 10) : 2000000;
  uint32_t streams = argc > 3 ? (uint32_t)strtoul(argv[3], NULL, 10) : 100;
  uint32_t chunk = argc > 4 ? (uint32_t)strtoul(argv[4], NULL, 10) : GW_STORE_CHUNK_POINTS;
  gw_store_config_t cfg;
  gw_stats_t stats;
  gw_store_t *st = NULL;
  gw_point_t p;
  uint64_t waits = 0;
  double t0, t_put, t_done, put_ns = 0;
  struct stat sb;
  int rc;

  rm_db(path);
  memset(&stats, 0, sizeof stats);
  gw_store_config_default(&cfg);
  cfg.chunk_points = chunk;
  cfg.path = path;
  cfg.queue_max = 200000;
  rc = gw_store_open(&st, &cfg, &stats);
  if (rc) {
    fprintf(stderr, "open: %s\n", gw_strerror(rc));
    return 1;
  }
  for (uint32_t s = 0; s < streams; s++) {
    char tag[16];
    snprintf(tag, sizeof tag, "t%u", s);
    gw_stream_ref_t ref = {s, "bench", tag, 256, 1, 4, 42, 0};
    gw_open_t o = {GW_OPEN_NEW, 1, 0};
    gw_store_open_stream(st, s, &ref, &o);
  }
  t0 = now_s();
  for (uint64_t i = 0; i < total; i++) {
    uint32_t sid = (uint32_t)(i % streams);
    fill(&p, sid, i / streams + 1);
    double a = now_s();
    while ((rc = gw_store_put_point(st, &p)) == GW_EFULL) {
      struct timespec ts = {0, 100000};
      waits++;
      nanosleep(&ts, NULL);
      a = now_s();
    }
    put_ns += now_s() - a;
    if (rc) {
      fprintf(stderr, "put: %s\n", gw_strerror(rc));
      return 1;
    }
  }
  t_put = now_s();
  rc = gw_store_flush(st);
  t_done = now_s();
  if (rc) fprintf(stderr, "flush: %s\n", gw_strerror(rc));
  stat(path, &sb);
  printf("store write: %llu points, %u streams, blob %d B: %.0f points/s committed "
         "(%.2f s), put %.0f ns/point, producer waited on a full queue %llu times, "
         "file %.1f MB (%.0f B/point)\n",
         (unsigned long long)total, streams, GW_METRIC_COUNT * 8,
         (double)total / (t_done - t0), t_done - t0, put_ns / (double)total * 1e9,
         (unsigned long long)waits, (double)sb.st_size / 1e6,
         (double)sb.st_size / (double)total);
  (void)t_put;
  gw_store_close(st);

  /* readers: pool of 4 vs one connection per call */
  for (int pooled = 1; pooled >= 0; pooled--) {
    cfg.read_conns = pooled ? 4 : 0;
    st = NULL;
    if (gw_store_open(&st, &cfg, &stats)) return 1;
    reader_rate(st, 50, 0); /* warm the page cache */
    printf("reader (%s): streams listing %.1f us/call, series of %llu points "
           "downsampled to 500: %.1f us/call\n",
           pooled ? "pool of 4" : "connection per call", reader_rate(st, 2000, 0),
           (unsigned long long)(total / streams), reader_rate(st, 50, 1));
    gw_store_close(st);
  }
  rm_db(path);
  return 0;
}
