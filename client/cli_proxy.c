/* cli_proxy.c — `gradwatch proxy`: one ZeroMQ address for every publisher
 * of a cluster, fanning out to the sharded daemons (docs/SCALE.md).
 *
 * Topology. gradwatchd *binds* its SUB socket (--zmq), so the proxy is the
 * side that connects on both ends' behalf:
 *
 *   publishers (PUB/XPUB, connect) ──► XSUB, bound on every --frontend
 *                                        │ zmq_proxy_steerable
 *   daemons (SUB, bound --zmq)     ◄── XPUB, connected to every --backend
 *
 * Subscriptions flow the other way: each daemon's SUB subscribes on its own
 * connection (gw1/, or its --zmq-subscribe prefixes); the XPUB keeps one
 * filter per connection, so a daemon receives only the topics it asked for,
 * and passes the union upstream through the XSUB to every publisher, so a
 * publisher sends nothing that no daemon wants. A daemon started with
 * --shard i/N still subscribes to all of gw1/ and drops other shards' runs
 * itself; prefix sharding (--zmq-subscribe) filters here and at publishers.
 *
 * Routed (--shards N). Every --backend belongs to a shard (`I=ENDPOINT`, or
 * plain ENDPOINTs taking shards 0, 1, … in order); a shard may have several
 * backends, its replicas. Each backend then gets an XPUB of its own, and
 * the main thread runs route() instead of zmq_proxy: it reads a message
 * from the XSUB, finds the run in its topic gw1/<run>/<tag>, and sends the
 * message to every backend of shard FNV-1a-64(run) mod N — the same
 * function as gradwatchd's --shard I/N (gw_fnv1a, daemon/util.c) — so each
 * daemon receives its own share only, and every replica of a shard the
 * same messages in the same order. A topic without a run goes nowhere
 * (counted as unroutable). Subscriptions still flow upstream from every
 * backend's XPUB to the XSUB.
 *
 * Never blocks: the XPUB drops a message for a daemon whose queue holds
 * --sndhwm messages (a daemon that is down keeps its queue and subscription
 * while the proxy reconnects, so a restart within the queue's reach loses
 * nothing); the XSUB reads at most --rcvhwm messages ahead per publisher,
 * beyond which the publisher's own non-blocking send fails and counts a drop.
 *
 * Threads. The main thread runs zmq_proxy_steerable(frontend, backend, NULL,
 * control), or route() with --shards, until told to stop (route() answers
 * the same TERMINATE and STATISTICS commands). A control thread owns everything else: the
 * other end of the inproc control pair, one monitor socket per side
 * (publishers accepted/gone, daemons connected/gone, logged on stderr), and
 * the signals: SIGINT and SIGTERM are blocked in every thread before any is
 * created and taken by the control thread with sigtimedwait, which then
 * sends TERMINATE — no handler, no EINTR inside libzmq. With --report it
 * sends STATISTICS every second and prints the reply. If the proxy returns
 * on its own (an error), main raises `done` and the control thread leaves.
 */
#include "cli.h"
#include "util.h" /* gw_fnv1a: the shard function */

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <zmq.h>

#define CMD "proxy"
#define MAX_ENDPOINTS 256
#define CONTROL_ENDPOINT "inproc://gradwatch-proxy-control"
#define MONITOR_FRONT "inproc://gradwatch-proxy-monitor-frontend"
#define MONITOR_BACK "inproc://gradwatch-proxy-monitor-backend" /* -<i> when routed */
#define SHARDS_MAX 65536 /* as gradwatchd --shard */
#define STATS_TIMEOUT_MS 1000 /* wait this long for a STATISTICS reply */

/* ---- options ------------------------------------------------------------------ */

static const char help_text[] =
    "Usage: gradwatch proxy --frontend ENDPOINT... --backend ENDPOINT... [OPTIONS]\n"
    "\n"
    "Forward publishers' messages to sharded daemons (docs/SCALE.md). Publishers\n"
    "connect to a frontend (--endpoint of publish/replay, the Python Publisher);\n"
    "the proxy connects to each backend, a gradwatchd --zmq endpoint. Each daemon\n"
    "gets the topics it subscribed to (gw1/ or its --zmq-subscribe prefixes) and\n"
    "keeps the runs of its --shard. Runs until SIGINT or SIGTERM (exit 0).\n"
    "\n"
    "  --frontend ENDPOINT   bind here for publishers (repeatable, at least one),\n"
    "                        e.g. tcp://*:5557\n"
    "  --backend ENDPOINT    connect to a daemon's --zmq endpoint (repeatable, at\n"
    "                        least one), e.g. tcp://gw-d0:5557\n"
    "  --shards N            route each run only to the daemons of its shard\n"
    "                        (FNV-1a-64 of the run mod N, as gradwatchd --shard I/N);\n"
    "                        then each --backend is I=ENDPOINT (shard I; give a\n"
    "                        shard several for replicas) or a plain ENDPOINT for\n"
    "                        the next shard in order; every shard needs one\n"
    "  --sndhwm N            messages queued per daemon before dropping (default\n"
    "                        100000; also what a restarting daemon gets replayed)\n"
    "  --rcvhwm N            messages read ahead per publisher (default 100000)\n"
    "  --linger MS           at exit, wait this long for queued messages to go out\n"
    "                        (default 1000; -1 forever)\n"
    "  --report              print forwarded messages, rate, connected publishers\n"
    "                        and daemons every second (stdout), and a summary at exit\n";

enum { O_FRONTEND = 1, O_BACKEND, O_SNDHWM, O_RCVHWM, O_LINGER, O_REPORT, O_HELP, O_SHARDS };

static const struct option long_opts[] = {
    {"frontend", required_argument, NULL, O_FRONTEND},
    {"backend", required_argument, NULL, O_BACKEND},
    {"sndhwm", required_argument, NULL, O_SNDHWM},
    {"rcvhwm", required_argument, NULL, O_RCVHWM},
    {"linger", required_argument, NULL, O_LINGER},
    {"report", no_argument, NULL, O_REPORT},
    {"shards", required_argument, NULL, O_SHARDS},
    {"help", no_argument, NULL, O_HELP},
    {NULL, 0, NULL, 0},
};

typedef struct args_s {
  const char *frontend[MAX_ENDPOINTS]; /* borrowed from argv */
  const char *backend[MAX_ENDPOINTS];
  uint32_t shard[MAX_ENDPOINTS];        /* with --shards: the backend's shard */
  int explicit_shard[MAX_ENDPOINTS];     /* given as I=ENDPOINT */
  size_t n_frontend, n_backend;
  uint32_t shards; /* --shards N; 0: not routed */
  int sndhwm, rcvhwm, linger_ms, report;
} args_t;

static int add_endpoint(const char **list, size_t *n, const char *opt, const char *arg) {
  if (strstr(arg, "://") == NULL)
    return cli_usage(CMD, "%s wants a ZeroMQ endpoint like tcp://127.0.0.1:5557, not '%s'", opt,
                     arg);
  if (*n == MAX_ENDPOINTS) return cli_usage(CMD, "more than %d %s endpoints", MAX_ENDPOINTS, opt);
  list[(*n)++] = arg;
  return 0;
}

/* 0, -1 after --help (printed), or CLI_USAGE. */
static int parse_args(args_t *a, int argc, char **argv) {
  uint64_t u;
  int c, rc;

  memset(a, 0, sizeof *a);
  a->sndhwm = 100000;
  a->rcvhwm = 100000;
  a->linger_ms = 1000;
  opterr = 0;
  while ((c = getopt_long(argc, argv, ":h", long_opts, NULL)) != -1) {
    rc = 0;
    switch (c) {
    case 'h':
    case O_HELP:
      fputs(help_text, stdout);
      return -1;
    case O_FRONTEND: rc = add_endpoint(a->frontend, &a->n_frontend, "--frontend", optarg); break;
    case O_BACKEND: {
      /* I=ENDPOINT: digits then '=' (an endpoint never starts so) */
      const char *ep = optarg, *eq = strchr(optarg, '=');
      int expl = eq && eq > optarg && strspn(optarg, "0123456789") == (size_t)(eq - optarg);
      if (expl) ep = eq + 1;
      if ((rc = add_endpoint(a->backend, &a->n_backend, "--backend", ep)) == 0 && expl) {
        a->explicit_shard[a->n_backend - 1] = 1;
        a->shard[a->n_backend - 1] = (uint32_t)strtoul(optarg, NULL, 10);
        if (eq - optarg > 5 || a->shard[a->n_backend - 1] >= SHARDS_MAX)
          rc = cli_usage(CMD, "--backend '%s': shard out of range", optarg);
      }
      break;
    }
    case O_SHARDS:
      if ((rc = cli_opt_u64(CMD, "--shards", optarg, 1, SHARDS_MAX, &u)) == 0) a->shards = (uint32_t)u;
      break;
    case O_SNDHWM:
      if ((rc = cli_opt_u64(CMD, "--sndhwm", optarg, 1, INT_MAX, &u)) == 0) a->sndhwm = (int)u;
      break;
    case O_RCVHWM:
      if ((rc = cli_opt_u64(CMD, "--rcvhwm", optarg, 1, INT_MAX, &u)) == 0) a->rcvhwm = (int)u;
      break;
    case O_LINGER:
      if (strcmp(optarg, "-1") == 0)
        a->linger_ms = -1;
      else if ((rc = cli_opt_u64(CMD, "--linger", optarg, 0, INT_MAX, &u)) == 0)
        a->linger_ms = (int)u;
      break;
    case O_REPORT: a->report = 1; break;
    default: return cli_bad_option(CMD, c, argv);
    }
    if (rc != 0) return rc;
  }
  if (optind < argc) return cli_usage(CMD, "unexpected argument '%s'", argv[optind]);
  if (a->n_frontend == 0)
    return cli_usage(CMD, "say where publishers connect: --frontend ENDPOINT (e.g. tcp://*:5557)");
  if (a->n_backend == 0)
    return cli_usage(CMD, "say which daemons to feed: --backend ENDPOINT (a gradwatchd --zmq)");
  if (a->shards) {
    uint32_t next = 0;
    for (size_t j = 0; j < a->n_backend; j++) {
      if (!a->explicit_shard[j]) a->shard[j] = next++;
      if (a->shard[j] >= a->shards)
        return cli_usage(CMD, "--backend %s is for shard %u, but --shards is %u (shards 0..%u)",
                         a->backend[j], a->shard[j], a->shards, a->shards - 1);
    }
    if (a->shards > a->n_backend)
      return cli_usage(CMD, "%u shards but %zu --backend: every shard needs one", a->shards,
                       a->n_backend);
    for (uint32_t i = 0; i < a->shards; i++) {
      size_t j = 0;
      while (j < a->n_backend && a->shard[j] != i) j++;
      if (j == a->n_backend)
        return cli_usage(CMD, "shard %u of %u has no --backend (give %u=ENDPOINT)", i, a->shards, i);
    }
  } else {
    for (size_t j = 0; j < a->n_backend; j++)
      if (a->explicit_shard[j])
        return cli_usage(CMD, "--backend %u=… names a shard: add --shards N", a->shard[j]);
  }
  for (size_t i = 0; i < a->n_frontend; i++)
    for (size_t j = 0; j < a->n_backend; j++)
      if (strcmp(a->frontend[i], a->backend[j]) == 0)
        return cli_usage(CMD, "'%s' is both a frontend and a backend: the proxy would feed itself",
                         a->frontend[i]);
  return 0;
}

/* ---- the control thread ---------------------------------------------------------- */

typedef struct ctl_s {
  void *control;          /* PAIR, connected to the proxy's control socket */
  void *mon_front;        /* PAIR, the frontend's monitor */
  void *mon_back[MAX_ENDPOINTS]; /* PAIR, each backend socket's monitor */
  size_t n_mon_back;      /* 1, or one per backend when routed */
  sigset_t signals;       /* SIGINT, SIGTERM: blocked everywhere, taken here */
  int report;             /* --report */
  size_t n_backend;       /* daemons configured */
  long publishers;        /* connections accepted - gone, on the frontends */
  long daemons;           /* connections made - gone, to the backends */
  double t0, last_t;      /* start; time of the last report line */
  uint64_t last_msgs;     /* forwarded at the last report line */
  atomic_int done;        /* set by main when the proxy returned by itself */
  int stopped_by_signal;  /* written by the thread, read by main after join */
} ctl_t;

/* Proxy counters (libzmq's STATISTICS reply: per side, messages and bytes
 * in and out, a multipart message counting once). */
typedef struct pstats_s {
  uint64_t v[8];
} pstats_t;
enum { FRONT_MSG_IN, FRONT_BYTES_IN, FRONT_MSG_OUT, FRONT_BYTES_OUT,
       BACK_MSG_IN, BACK_BYTES_IN, BACK_MSG_OUT, BACK_BYTES_OUT };

/* Ask the proxy for its counters. 0, or -1 if it did not answer in time. */
static int ask_stats(ctl_t *c, pstats_t *s) {
  zmq_pollitem_t it = {c->control, 0, ZMQ_POLLIN, 0};
  if (zmq_send(c->control, "STATISTICS", 10, 0) != 10) return -1;
  for (int i = 0; i < 8; i++) {
    int more = 0;
    size_t ml = sizeof more;
    if (zmq_poll(&it, 1, STATS_TIMEOUT_MS) != 1) return -1;
    if (zmq_recv(c->control, &s->v[i], sizeof s->v[i], 0) != (int)sizeof s->v[i]) return -1;
    zmq_getsockopt(c->control, ZMQ_RCVMORE, &more, &ml);
    if ((i < 7) != (more != 0)) return -1;
  }
  return 0;
}

static void report_line(ctl_t *c) {
  pstats_t s;
  double now = cli_now();
  if (ask_stats(c, &s) != 0) return;
  const uint64_t m = s.v[FRONT_MSG_IN];
  printf("%8.1fs  forwarded %llu  rate %.1f msg/s  bytes %llu  publishers %ld  daemons %ld/%zu\n",
         now - c->t0, (unsigned long long)m, (double)(m - c->last_msgs) / (now - c->last_t),
         (unsigned long long)s.v[FRONT_BYTES_IN], c->publishers, c->daemons, c->n_backend);
  fflush(stdout);
  c->last_t = now;
  c->last_msgs = m;
}

static void report_end(ctl_t *c) {
  pstats_t s;
  double dt = cli_now() - c->t0;
  if (ask_stats(c, &s) != 0) return;
  printf("total: forwarded %llu messages (%llu bytes) in %.2f s (%.1f msg/s)\n",
         (unsigned long long)s.v[FRONT_MSG_IN], (unsigned long long)s.v[FRONT_BYTES_IN], dt,
         dt > 0 ? (double)s.v[FRONT_MSG_IN] / dt : 0.0);
  fflush(stdout);
}

/* Read every pending monitor event of one side without blocking. An event is
 * two frames: 6 bytes (uint16 event, uint32 value, host order), then the
 * peer's endpoint. */
static void drain_monitor(ctl_t *c, void *mon, int backend) {
  for (;;) {
    uint8_t ev[6];
    char addr[256];
    uint16_t id;
    int n = zmq_recv(mon, ev, sizeof ev, ZMQ_DONTWAIT);
    if (n < 0) return;
    int a = zmq_recv(mon, addr, sizeof addr - 1, 0);
    if (n != (int)sizeof ev || a < 0) continue;
    addr[a < (int)sizeof addr - 1 ? a : (int)sizeof addr - 1] = '\0';
    memcpy(&id, ev, sizeof id);
    if (backend && id == ZMQ_EVENT_CONNECTED) {
      c->daemons++;
      fprintf(stderr, "gradwatch %s: daemon %s connected (%ld/%zu)\n", CMD, addr, c->daemons,
              c->n_backend);
    } else if (backend && id == ZMQ_EVENT_DISCONNECTED) {
      c->daemons--;
      fprintf(stderr, "gradwatch %s: daemon %s disconnected (%ld/%zu); reconnecting\n", CMD, addr,
              c->daemons, c->n_backend);
    } else if (!backend && id == ZMQ_EVENT_ACCEPTED) {
      c->publishers++;
    } else if (!backend && id == ZMQ_EVENT_DISCONNECTED) {
      c->publishers--;
    }
  }
}

static void *ctl_main(void *arg) {
  ctl_t *c = arg;
  const struct timespec zero = {0, 0};
  double next = c->t0 + 1.0;

  zmq_pollitem_t it[1 + MAX_ENDPOINTS];
  while (!atomic_load(&c->done)) {
    it[0] = (zmq_pollitem_t){c->mon_front, 0, ZMQ_POLLIN, 0};
    for (size_t i = 0; i < c->n_mon_back; i++)
      it[1 + i] = (zmq_pollitem_t){c->mon_back[i], 0, ZMQ_POLLIN, 0};
    zmq_poll(it, 1 + (int)c->n_mon_back, 100); /* a monitor event, or 100 ms: the signal latency */
    drain_monitor(c, c->mon_front, 0);
    for (size_t i = 0; i < c->n_mon_back; i++) drain_monitor(c, c->mon_back[i], 1);
    if (sigtimedwait(&c->signals, NULL, &zero) > 0) {
      c->stopped_by_signal = 1;
      if (c->report) report_end(c);
      zmq_send(c->control, "TERMINATE", 9, 0);
      break;
    }
    if (c->report && cli_now() >= next) {
      report_line(c);
      while (next <= cli_now()) next += 1.0;
    }
  }
  return NULL;
}

/* ---- sockets ------------------------------------------------------------------ */

/* A libzmq error from bind/connect as an exit status: the endpoint's
 * syntax or transport is the command line's fault, the rest is run time. */
static int endpoint_error(const char *what, const char *opt, const char *ep) {
  int e = zmq_errno();
  if (e == EINVAL || e == EPROTONOSUPPORT || e == ENOCOMPATPROTO)
    return cli_usage(CMD, "%s '%s': %s", opt, ep, zmq_strerror(e));
  return cli_fail(CMD, "cannot %s %s: %s", what, ep, zmq_strerror(e));
}

static int set_int(void *sock, int opt, int v) { return zmq_setsockopt(sock, opt, &v, sizeof v); }

/* Options both sides share. ZMTP heartbeats notice a daemon host that
 * vanished without closing its connections; reconnects back off to 1 s. */
static int tune(void *sock, const args_t *a) {
  int64_t maxmsg = GW_PROTO_HEADER_SIZE + (int64_t)GW_PROTO_K_MAX * 4 + GW_PROTO_TOPIC_MAX;
  if (set_int(sock, ZMQ_SNDHWM, a->sndhwm) || set_int(sock, ZMQ_RCVHWM, a->rcvhwm) ||
      set_int(sock, ZMQ_LINGER, a->linger_ms) || set_int(sock, ZMQ_HEARTBEAT_IVL, 2000) ||
      set_int(sock, ZMQ_HEARTBEAT_TIMEOUT, 6000) || set_int(sock, ZMQ_RECONNECT_IVL_MAX, 1000) ||
      zmq_setsockopt(sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg))
    return -1;
  return 0;
}

/* A PAIR socket connected to a monitor endpoint (receives only). */
static void *monitor_pair(void *ctx, void *sock, const char *ep, int events) {
  void *p;
  if (zmq_socket_monitor(sock, ep, events) != 0) return NULL;
  if ((p = zmq_socket(ctx, ZMQ_PAIR)) == NULL) return NULL;
  set_int(p, ZMQ_LINGER, 0);
  if (zmq_connect(p, ep) != 0) {
    zmq_close(p);
    return NULL;
  }
  return p;
}

/* ---- routing (--shards) ------------------------------------------------------------ */

typedef struct router_s {
  void *front;
  void **back;             /* one XPUB per backend */
  size_t n_back;
  uint32_t shards;
  size_t *first;           /* shards + 1 offsets into dest: shard i's backends */
  size_t *dest;            /* backend indices, grouped by shard */
  pstats_t st;             /* as zmq_proxy's STATISTICS */
  uint64_t unroutable;     /* messages whose topic names no run */
} router_t;

/* The shard of a message by its first frame, gw1/<run>/<tag>; -1 if the
 * topic names no run. */
static long shard_of(const router_t *r, const zmq_msg_t *topic) {
  const char *t = zmq_msg_data((zmq_msg_t *)topic);
  size_t n = zmq_msg_size((zmq_msg_t *)topic), len;
  if (n < 6 || memcmp(t, "gw1/", 4) != 0) return -1;
  const char *run = t + 4, *slash = memchr(run, '/', n - 4);
  if (!slash || (len = (size_t)(slash - run)) == 0) return -1;
  return (long)(gw_fnv1a(GW_FNV_OFFSET, run, len) % r->shards);
}

/* Forward one message from the frontend to its shard's backends. 1 when
 * one was forwarded, 0 when none was waiting, -1 on an error. Sends never
 * block: an XPUB drops for a daemon whose queue is full. */
static int route_one(router_t *r) {
  zmq_msg_t part;
  size_t a = 0, b = 0;
  zmq_msg_init(&part);
  if (zmq_msg_recv(&part, r->front, ZMQ_DONTWAIT) < 0) {
    zmq_msg_close(&part);
    return zmq_errno() == EAGAIN ? 0 : -1;
  }
  long shard = shard_of(r, &part);
  if (shard >= 0) {
    a = r->first[shard];
    b = r->first[shard + 1];
  } else {
    r->unroutable++;
  }
  r->st.v[FRONT_MSG_IN]++;
  for (;;) {
    int more = zmq_msg_more(&part), flags = ZMQ_DONTWAIT | (more ? ZMQ_SNDMORE : 0);
    size_t size = zmq_msg_size(&part);
    r->st.v[FRONT_BYTES_IN] += size;
    for (size_t k = a; k < b; k++) {
      zmq_msg_t *out = &part, copy;
      if (k + 1 < b) { /* replicas share the frame's buffer (reference counted) */
        zmq_msg_init(&copy);
        zmq_msg_copy(&copy, &part);
        out = &copy;
      }
      if (zmq_msg_send(out, r->back[r->dest[k]], flags) < 0) zmq_msg_close(out);
      if (!more) r->st.v[BACK_MSG_OUT]++;
      r->st.v[BACK_BYTES_OUT] += size;
    }
    if (a == b) zmq_msg_close(&part);
    if (!more) return 1;
    zmq_msg_init(&part); /* the rest of a message arrives with its first frame */
    if (zmq_msg_recv(&part, r->front, 0) < 0) {
      zmq_msg_close(&part);
      return -1;
    }
  }
}

/* Subscriptions from one backend's daemon, upstream to the publishers. */
static void subscriptions_up(router_t *r, void *back) {
  for (;;) {
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, back, ZMQ_DONTWAIT) < 0) {
      zmq_msg_close(&m);
      return;
    }
    r->st.v[BACK_MSG_IN]++;
    r->st.v[BACK_BYTES_IN] += zmq_msg_size(&m);
    r->st.v[FRONT_MSG_OUT]++;
    r->st.v[FRONT_BYTES_OUT] += zmq_msg_size(&m);
    if (zmq_msg_send(&m, r->front, ZMQ_DONTWAIT) < 0) zmq_msg_close(&m);
  }
}

/* The control socket's command: 1 after TERMINATE, else 0. */
static int command(router_t *r, void *control) {
  char cmd[16];
  int n = zmq_recv(control, cmd, sizeof cmd, ZMQ_DONTWAIT);
  if (n == 9 && memcmp(cmd, "TERMINATE", 9) == 0) return 1;
  if (n == 10 && memcmp(cmd, "STATISTICS", 10) == 0)
    for (int i = 0; i < 8; i++) zmq_send(control, &r->st.v[i], sizeof r->st.v[i], i < 7 ? ZMQ_SNDMORE : 0);
  return 0;
}

/* The routed proxy loop: 0 after TERMINATE, -1 on an error (errno set). */
static int route(router_t *r, void *control) {
  zmq_pollitem_t it[2 + MAX_ENDPOINTS];
  const int n = 2 + (int)r->n_back;
  it[0] = (zmq_pollitem_t){control, 0, ZMQ_POLLIN, 0};
  it[1] = (zmq_pollitem_t){r->front, 0, ZMQ_POLLIN, 0};
  for (size_t j = 0; j < r->n_back; j++) it[2 + j] = (zmq_pollitem_t){r->back[j], 0, ZMQ_POLLIN, 0};
  for (;;) {
    if (zmq_poll(it, n, -1) < 0) {
      if (zmq_errno() == EINTR) continue;
      return -1;
    }
    if ((it[0].revents & ZMQ_POLLIN) && command(r, control)) return 0;
    if (it[1].revents & ZMQ_POLLIN)
      for (int k = 0; k < 1024; k++) { /* a burst, then look at the others again */
        int rc = route_one(r);
        if (rc < 0) return -1;
        if (rc == 0) break;
      }
    for (size_t j = 0; j < r->n_back; j++)
      if (it[2 + j].revents & ZMQ_POLLIN) subscriptions_up(r, r->back[j]);
  }
}

/* shard → backends, grouped (counting sort). 0 or -1 (no memory). */
static int router_init(router_t *r, const args_t *a) {
  memset(r, 0, sizeof *r);
  r->shards = a->shards;
  if (!(r->first = calloc((size_t)a->shards + 1, sizeof *r->first)) ||
      !(r->dest = calloc(a->n_backend, sizeof *r->dest)))
    return -1;
  for (size_t j = 0; j < a->n_backend; j++) r->first[a->shard[j] + 1]++;
  for (uint32_t i = 0; i < a->shards; i++) r->first[i + 1] += r->first[i];
  size_t *fill = calloc(a->shards, sizeof *fill);
  if (!fill) return -1;
  for (size_t j = 0; j < a->n_backend; j++)
    r->dest[r->first[a->shard[j]] + fill[a->shard[j]]++] = j;
  free(fill);
  return 0;
}

/* ---- the command ------------------------------------------------------------------ */

int cli_proxy(int argc, char **argv) {
  args_t a;
  ctl_t c;
  router_t r;
  pthread_t thread;
  void *ctx = NULL, *front = NULL, *back[MAX_ENDPOINTS] = {NULL}, *control = NULL;
  size_t n_back = 0;
  int rc, status = CLI_FAIL, monitoring = 0;

  if ((rc = parse_args(&a, argc, argv)) != 0) return rc < 0 ? CLI_OK : rc;

  memset(&c, 0, sizeof c);
  memset(&r, 0, sizeof r);
  atomic_init(&c.done, 0);
  sigemptyset(&c.signals);
  sigaddset(&c.signals, SIGINT);
  sigaddset(&c.signals, SIGTERM);
  /* Before any thread exists (libzmq's own included), so all inherit it. */
  pthread_sigmask(SIG_BLOCK, &c.signals, NULL);
  signal(SIGPIPE, SIG_IGN);

  if (a.shards && router_init(&r, &a) != 0) {
    cli_fail(CMD, "out of memory");
    goto done;
  }
  n_back = a.shards ? a.n_backend : 1; /* routed: one XPUB per daemon */
  if ((ctx = zmq_ctx_new()) == NULL || (front = zmq_socket(ctx, ZMQ_XSUB)) == NULL ||
      (control = zmq_socket(ctx, ZMQ_PAIR)) == NULL ||
      (c.control = zmq_socket(ctx, ZMQ_PAIR)) == NULL) {
    cli_fail(CMD, "cannot start ZeroMQ: %s", zmq_strerror(zmq_errno()));
    goto done;
  }
  for (size_t j = 0; j < n_back; j++)
    if ((back[j] = zmq_socket(ctx, ZMQ_XPUB)) == NULL || tune(back[j], &a) != 0) {
      cli_fail(CMD, "cannot open a backend socket: %s", zmq_strerror(zmq_errno()));
      goto done;
    }
  if (tune(front, &a) != 0 || set_int(control, ZMQ_LINGER, 0) != 0 ||
      set_int(c.control, ZMQ_LINGER, 0) != 0) {
    cli_fail(CMD, "cannot set socket options: %s", zmq_strerror(zmq_errno()));
    goto done;
  }
  if (zmq_bind(control, CONTROL_ENDPOINT) != 0 || zmq_connect(c.control, CONTROL_ENDPOINT) != 0) {
    cli_fail(CMD, "cannot open the control socket: %s", zmq_strerror(zmq_errno()));
    goto done;
  }
  monitoring = 1; /* from here on, stop the monitors before closing */
  c.mon_front = monitor_pair(ctx, front, MONITOR_FRONT, ZMQ_EVENT_ACCEPTED | ZMQ_EVENT_DISCONNECTED);
  for (size_t j = 0; j < n_back; j++) {
    char ep[64];
    snprintf(ep, sizeof ep, MONITOR_BACK "-%zu", j);
    c.mon_back[j] = monitor_pair(ctx, back[j], ep, ZMQ_EVENT_CONNECTED | ZMQ_EVENT_DISCONNECTED);
    c.n_mon_back = j + 1;
    if (c.mon_back[j] == NULL) break;
  }
  if (c.mon_front == NULL || c.mon_back[c.n_mon_back - 1] == NULL) {
    cli_fail(CMD, "cannot monitor the sockets: %s", zmq_strerror(zmq_errno()));
    goto done;
  }
  for (size_t i = 0; i < a.n_frontend; i++)
    if (zmq_bind(front, a.frontend[i]) != 0) {
      status = endpoint_error("bind frontend", "--frontend", a.frontend[i]);
      goto done;
    }
  for (size_t i = 0; i < a.n_backend; i++)
    if (zmq_connect(back[a.shards ? i : 0], a.backend[i]) != 0) {
      status = endpoint_error("connect to backend", "--backend", a.backend[i]);
      goto done;
    }

  c.report = a.report;
  c.n_backend = a.n_backend;
  c.t0 = c.last_t = cli_now();
  if ((rc = pthread_create(&thread, NULL, ctl_main, &c)) != 0) {
    cli_fail(CMD, "cannot start the control thread: %s", strerror(rc));
    goto done;
  }

  /* Returns 0 after TERMINATE, -1 on an error (errno set). */
  if (a.shards) {
    r.front = front;
    r.back = back;
    r.n_back = n_back;
    rc = route(&r, control);
  } else {
    rc = zmq_proxy_steerable(front, back[0], NULL, control);
  }
  int err = zmq_errno();
  atomic_store(&c.done, 1);
  pthread_join(thread, NULL);
  if (rc == 0 && c.stopped_by_signal)
    status = CLI_OK;
  else
    cli_fail(CMD, "the proxy stopped: %s", rc == 0 ? "terminated" : zmq_strerror(err));
  if (r.unroutable)
    fprintf(stderr, "gradwatch %s: %llu messages had no gw1/<run>/ topic and went nowhere\n", CMD,
            (unsigned long long)r.unroutable);

done: /* the control thread, if it ran, has been joined */
  if (monitoring) {
    if (front) zmq_socket_monitor(front, NULL, 0);
    for (size_t j = 0; j < n_back; j++)
      if (back[j]) zmq_socket_monitor(back[j], NULL, 0);
  }
  if (c.mon_front) zmq_close(c.mon_front);
  for (size_t j = 0; j < c.n_mon_back; j++)
    if (c.mon_back[j]) zmq_close(c.mon_back[j]);
  if (c.control) zmq_close(c.control);
  if (control) zmq_close(control);
  if (front) zmq_close(front);
  for (size_t j = 0; j < n_back; j++)
    if (back[j]) zmq_close(back[j]);
  if (ctx) zmq_ctx_term(ctx); /* waits up to --linger for queued messages */
  free(r.first);
  free(r.dest);
  return status;
}
