/* ingest_pub.c — load generator for bench_ingest.py: S streams of k-float
 * sketches, M messages each, sent round-robin over PUB (or PUSH) as fast as
 * possible or at a fixed total rate. Frames are encoded with proto/ once per
 * stream; per message only the step, wall time and payload change.
 *
 *   ingest_pub ENDPOINT STREAMS K MESSAGES_PER_STREAM [RATE_TOTAL] [pub|push] [RUN_PREFIX]
 *              [TAGS_PER_RUN]
 *
 * Stream s is run RUN_PREFIX-(s / TAGS_PER_RUN), tag layer.(s % TAGS_PER_RUN)
 * (10 tags per run by default; 1 gives as many runs as streams, which
 * spreads evenly over shards).
 *
 * The payload of stream s at step t is a low-rank smooth signal plus noise
 * drawn from a precomputed pool, so the daemon does its real work. Prints
 * "sent N in T s = R msg/s, dropped D" on stdout.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <zmq.h>

#include "gw_proto.h"

#define POOL 128

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int64_t wall_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int main(int argc, char **argv) {
  if (argc < 5) {
    fprintf(stderr, "usage: ingest_pub ENDPOINT STREAMS K MSGS_PER_STREAM [RATE] [pub|push] [RUN_PREFIX] [TAGS_PER_RUN]\n");
    return 2;
  }
  const char *ep = argv[1];
  int S = atoi(argv[2]);
  uint32_t k = (uint32_t)atoi(argv[3]);
  long M = atol(argv[4]);
  double rate = argc > 5 ? atof(argv[5]) : 0;
  int push = argc > 6 && !strcmp(argv[6], "push");
  const char *prefix = argc > 7 ? argv[7] : "bench";
  int per_run = argc > 8 ? atoi(argv[8]) : 10;
  if (S <= 0 || k == 0 || M <= 0 || per_run <= 0) return 2;

  float *pool = malloc(sizeof(float) * POOL * k);
  srand(1);
  for (int t = 0; t < POOL; t++)
    for (uint32_t i = 0; i < k; i++)
      pool[(size_t)t * k + i] = (float)(sin(0.05 * t + i) + 0.1 * ((double)rand() / RAND_MAX - 0.5));

  size_t body_len = GW_PROTO_HEADER_SIZE + (size_t)k * 4;
  uint64_t incarnation = 0; /* one publisher incarnation per run of this tool */
  while (incarnation == 0)
    if (getrandom(&incarnation, sizeof incarnation, 0) != (ssize_t)sizeof incarnation) return 1;
  char (*topics)[GW_PROTO_TOPIC_MAX + 1] = malloc(sizeof(*topics) * S);
  int *topic_len = malloc(sizeof(int) * S);
  uint8_t *body = malloc(body_len);
  char run[64], tag[64];
  for (int s = 0; s < S; s++) {
    snprintf(run, sizeof(run), "%s-%d", prefix, s / per_run);
    snprintf(tag, sizeof(tag), "layer.%d", s % per_run);
    gw_msg_t m = {.run = run, .run_len = strlen(run), .tag = tag, .tag_len = strlen(tag)};
    topic_len[s] = gw_proto_encode_topic(&m, topics[s], sizeof(topics[s]));
    if (topic_len[s] < 0) return 1;
  }

  void *ctx = zmq_ctx_new();
  void *sock = zmq_socket(ctx, push ? ZMQ_PUSH : ZMQ_PUB);
  int hwm = 0; /* unbounded: the benchmark measures the receiver, not drops */
  zmq_setsockopt(sock, ZMQ_SNDHWM, &hwm, sizeof(hwm));
  if (zmq_connect(sock, ep) != 0) {
    fprintf(stderr, "connect %s: %s\n", ep, zmq_strerror(zmq_errno()));
    return 1;
  }
  struct timespec slow = {0, 500000000}; /* PUB/SUB slow joiner */
  nanosleep(&slow, NULL);

  long total = (long)S * M, sent = 0, dropped = 0;
  double t0 = now_s();
  for (long t = 0; t < M; t++) {
    for (int s = 0; s < S; s++) {
      gw_msg_t m = {.run = "x", .run_len = 1, .tag = "x", .tag_len = 1,
                    .version = GW_PROTO_VERSION, .incarnation = incarnation,
                    .dtype = GW_DTYPE_F32,
                    .kind = GW_SKETCH_SJLT, .s = 4, .k = k, .flags = GW_HAS_LOSS,
                    .step = (uint64_t)t, .wall_ns = wall_ns(), .seed = 0,
                    .loss = 1.0 / (1.0 + t),
                    .payload = pool + (size_t)((t + s) % POOL) * k,
                    .payload_len = (size_t)k * 4};
      int n = gw_proto_encode_body(&m, body, body_len);
      if (n < 0) {
        fprintf(stderr, "encode: %s\n", gw_strerror(n));
        return 1;
      }
      if (zmq_send(sock, topics[s], (size_t)topic_len[s], ZMQ_SNDMORE) < 0 ||
          zmq_send(sock, body, (size_t)n, 0) < 0)
        dropped++;
      else
        sent++;
      if (rate > 0) {
        double due = t0 + (double)(sent + dropped) / rate;
        double d;
        while ((d = due - now_s()) > 0) {
          if (d > 0.0005) {
            struct timespec ts = {0, (long)(d * 1e9 * 0.5)};
            nanosleep(&ts, NULL);
          }
        }
      }
    }
  }
  double dt = now_s() - t0;
  printf("sent %ld in %.3f s = %.0f msg/s, dropped %ld\n", sent, dt, sent / dt, dropped);
  fflush(stdout);
  int linger = -1;
  zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof(linger));
  zmq_close(sock);
  zmq_ctx_term(ctx);
  free(pool);
  free(topics);
  free(topic_len);
  free(body);
  return total == sent + dropped ? 0 : 1;
}
