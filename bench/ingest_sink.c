/* ingest_sink.c — the raw ZeroMQ baseline for bench_ingest.py: binds SUB
 * (or PULL), receives N multipart messages and discards them, printing the
 * rate from the first to the last message.
 *
 *   ingest_sink ENDPOINT N [sub|pull]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: ingest_sink ENDPOINT N [sub|pull]\n");
    return 2;
  }
  long n = atol(argv[2]), got = 0;
  int pull = argc > 3 && !strcmp(argv[3], "pull");
  void *ctx = zmq_ctx_new();
  void *sock = zmq_socket(ctx, pull ? ZMQ_PULL : ZMQ_SUB);
  int hwm = 0, timeout = 10000;
  zmq_setsockopt(sock, ZMQ_RCVHWM, &hwm, sizeof(hwm));
  zmq_setsockopt(sock, ZMQ_RCVTIMEO, &timeout, sizeof(timeout));
  if (!pull) zmq_setsockopt(sock, ZMQ_SUBSCRIBE, "gw1/", 4);
  if (zmq_bind(sock, argv[1]) != 0) {
    fprintf(stderr, "bind %s: %s\n", argv[1], zmq_strerror(zmq_errno()));
    return 1;
  }
  printf("ready\n");
  fflush(stdout);
  double t0 = 0;
  zmq_msg_t msg;
  zmq_msg_init(&msg);
  while (got < n) {
    if (zmq_msg_recv(&msg, sock, 0) < 0) break; /* timeout: report what came */
    if (!zmq_msg_more(&msg)) {
      if (got++ == 0) t0 = now_s();
    }
  }
  double dt = now_s() - t0;
  zmq_msg_close(&msg);
  printf("received %ld in %.3f s = %.0f msg/s\n", got, dt, got > 1 ? (got - 1) / dt : 0.0);
  zmq_close(sock);
  zmq_ctx_term(ctx);
  return got == n ? 0 : 1;
}
