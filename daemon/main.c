/* main.c — gradwatchd: wires the modules together and owns their lifetimes.
 *
 * Start-up order follows the data flow backwards, so every sink exists
 * before anything can reach it: log → store → live/metrics/alerts → http →
 * the streams to resume (from the store) → ingest (which owns the engines,
 * one per worker thread, and is handed the sinks store, live, metrics,
 * alerts and, with --remote-write, remote write, in that order); then
 * READY=1. Shutdown (SIGTERM/SIGINT) runs it forwards: stop ingest (no new points; workers joined), save every live
 * stream's engine state into the store, flush and close the store, stop
 * http, free. SIGHUP reopens the log file and reloads the CURVE allow list
 * (on the loop: both are quick) and the alert rules, which a thread of
 * their own parses and swaps in (gw_alerts_reload_cancel) while the loop
 * keeps serving; a SIGHUP during a reload queues one more, and SIGTERM
 * abandons a parse in flight, so shutdown never waits for a rule file.
 * One daemon context struct, passed explicitly; no globals.
 */
#include <cblas.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>
#include <time.h>
#include <uv.h>

#include "alert_rules.h"
#include "alertmanager.h"
#include "alerts.h"
#include "config.h"
#include "engine.h"
#include "http.h"
#include "ingest.h"
#include "live.h"
#include "log.h"
#include "metrics.h"
#include "remote_write.h"
#include "runinfo.h"
#include "stats.h"
#include "store.h"
#include "util.h"

/* The alert rules' reload thread. The loop thread owns running, again and
 * the handle; the thread writes rc and err, then (under mu, unless the
 * daemon is closing) wakes the loop, which joins it. */
typedef struct reload_s {
  pthread_t thread;
  int running;       /* a thread to join */
  int again;         /* SIGHUP during a reload: one more after it */
  atomic_int cancel; /* shutdown: abandon the parse */
  pthread_mutex_t mu;
  int closing;       /* under mu: the async handle is closed */
  uv_async_t done;
  gw_alerts_t *alerts;
  const char *path;
  int rc;
  char err[1024];
} reload_t;

typedef struct daemon_s {
  gw_config_t cfg;
  gw_log_t log;
  uv_loop_t loop;
  gw_stats_t stats;
  gw_store_t *store;
  gw_live_t *live;
  gw_metrics_t *metrics;
  gw_runinfo_t *runinfo; /* NULL without --metrics-labels */
  gw_alerts_t *alerts;
  gw_http_t *http;
  gw_ingest_t *ingest;
  gw_sink_t sinks[GW_SINKS_MAX];
  size_t n_sinks;
  gw_remote_write_t *remote_write; /* NULL without --remote-write */
  atomic_int ready;
  char *token;
  int sigfd;          /* signalfd of SIGTERM, SIGINT, SIGHUP (loop_signals) */
  uv_poll_t sig_poll; /* the loop's watch on it */
  uv_timer_t watchdog;
  uv_timer_t alerts_tick; /* 1 s: stalled rules, silent streams */
  reload_t reload;
  int watchdog_on;
  int exit_code;
} daemon_t;

static void on_closed_noop(uv_handle_t *h) { (void)h; }

static void on_alerts_tick(uv_timer_t *t) {
  daemon_t *d = t->data;
  gw_alerts_tick(d->alerts, (int64_t)uv_hrtime());
}

static int save_one(void *arg, const char *run, const char *tag, const void *blob, size_t len) {
  return gw_store_state_put(arg, run, tag, blob, len);
}

/* After the workers are joined: every live stream's engine state into the
 * store, in one transaction, so a restart continues every window. */
static void save_state(daemon_t *d) {
  int64_t t0 = gw_mono_ns();
  size_t n = 0;
  int rc = gw_store_flush(d->store);
  if (rc == 0) rc = gw_store_state_begin(d->store);
  if (rc == 0) {
    rc = gw_ingest_save(d->ingest, save_one, d->store, &n);
    int rc2 = gw_store_state_commit(d->store); /* what was saved is kept */
    if (rc == 0) rc = rc2;
  }
  gw_log(&d->log, rc ? GW_LOG_ERROR : GW_LOG_INFO, "state_saved", "streams=%zu ms=%.1f error=\"%s\"",
         n, (double)(gw_mono_ns() - t0) * 1e-6, rc ? gw_strerror(rc) : "");
}

static void reload_close(daemon_t *d);

static void shutdown_daemon(daemon_t *d) {
  if (!d->ingest) return;
  sd_notify(0, "STOPPING=1");
  gw_log(&d->log, GW_LOG_INFO, "stopping", "received=%llu points=%llu",
         (unsigned long long)gw_stats_get(&d->stats.received),
         (unsigned long long)gw_stats_get(&d->stats.points));
  atomic_store(&d->ready, 0);
  gw_ingest_stop(d->ingest); /* joins the workers; frees once the loop closes its handles */
  save_state(d);
  d->ingest = NULL;
  uv_close((uv_handle_t *)&d->sig_poll, on_closed_noop);
  uv_close((uv_handle_t *)&d->alerts_tick, on_closed_noop);
  reload_close(d);
  if (d->watchdog_on) uv_close((uv_handle_t *)&d->watchdog, on_closed_noop);
}

static void *reload_main(void *arg) {
  reload_t *r = arg;
  r->err[0] = '\0';
  r->rc = gw_alerts_reload_cancel(r->alerts, r->path, &r->cancel, r->err, sizeof(r->err));
  pthread_mutex_lock(&r->mu);
  if (!r->closing) uv_async_send(&r->done);
  pthread_mutex_unlock(&r->mu);
  return NULL;
}

/* SIGTERM, SIGINT and SIGHUP are blocked on the main thread (the loop's)
 * for good, before any thread of ours exists (every thread inherits the
 * mask), and read from a signalfd that the loop polls: no asynchronous
 * handler runs on our threads. The kernel keeps such a signal pending until
 * the loop reads it, so none can be lost on a thread that would only pass
 * it on, or, under a sanitizer's deferred delivery, sit on it
 * (ThreadSanitizer did, now and then, with libuv's handler: the loop ran
 * on and SIGTERM was never acted on). Threads a library started before
 * main (OpenBLAS's pool) do not block them: on those, forward_signal hands
 * the signal to the main thread, whose thread id is the process id, where
 * it waits in the signalfd like the rest. Returns the signalfd, or -errno. */
static void forward_signal(int signo) {
  int saved = errno;
  (void)syscall(SYS_tgkill, (long)getpid(), (long)getpid(), (long)signo);
  errno = saved;
}

static int loop_signals(void) {
  sigset_t s;
  struct sigaction sa;
  sigemptyset(&s);
  sigaddset(&s, SIGTERM);
  sigaddset(&s, SIGINT);
  sigaddset(&s, SIGHUP);
  int rc = pthread_sigmask(SIG_BLOCK, &s, NULL); /* first: the handler never runs here */
  if (rc) return -rc;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = forward_signal;
  sa.sa_flags = SA_RESTART;
  sigfillset(&sa.sa_mask);
  if (sigaction(SIGTERM, &sa, NULL) || sigaction(SIGINT, &sa, NULL) ||
      sigaction(SIGHUP, &sa, NULL))
    return -errno;
  int fd = signalfd(-1, &s, SFD_NONBLOCK | SFD_CLOEXEC);
  return fd < 0 ? -errno : fd;
}

static void reload_start(daemon_t *d) {
  reload_t *r = &d->reload;
  if (r->running) {
    r->again = 1; /* after the one in flight */
    return;
  }
  r->again = 0;
  int rc = pthread_create(&r->thread, NULL, reload_main, r);
  if (rc) {
    gw_log(&d->log, GW_LOG_ERROR, "alerts_reload", "error=\"%s\"", strerror(rc));
    return;
  }
  r->running = 1;
}

/* Loop thread: the reload thread has finished. */
static void on_reload_done(uv_async_t *h) {
  daemon_t *d = h->data;
  reload_t *r = &d->reload;
  if (!r->running) return;
  pthread_join(r->thread, NULL);
  r->running = 0;
  char quoted[1100];
  if (r->rc == -ECANCELED)
    gw_log(&d->log, GW_LOG_INFO, "alerts_reload", "abandoned=true");
  else if (r->rc)
    gw_log(&d->log, GW_LOG_ERROR, "alerts_reload", "error=%s",
           gw_log_quote(quoted, sizeof(quoted), r->err));
  if (r->again && d->ingest) reload_start(d);
}

/* Shutdown: abandon a parse in flight; the thread is joined at teardown
 * (it stops within milliseconds, or after the swap it was in). */
static void reload_close(daemon_t *d) {
  reload_t *r = &d->reload;
  atomic_store(&r->cancel, 1);
  pthread_mutex_lock(&r->mu);
  r->closing = 1;
  pthread_mutex_unlock(&r->mu);
  uv_close((uv_handle_t *)&r->done, on_closed_noop);
}

static void on_signal(daemon_t *d, int signum) {
  if (signum == SIGHUP) {
    int rc = gw_log_reopen(&d->log);
    gw_log(&d->log, rc ? GW_LOG_ERROR : GW_LOG_INFO, "sighup", "log_reopen=%s",
           rc ? strerror(-rc) : "ok");
    if (d->ingest && (rc = gw_ingest_reload_keys(d->ingest)))
      gw_log(&d->log, GW_LOG_ERROR, "curve_reload", "error=\"%s\"", gw_strerror(rc));
    if (d->alerts && d->ingest) reload_start(d);
    return;
  }
  gw_log(&d->log, GW_LOG_INFO, "signal", "signal=%s", signum == SIGTERM ? "SIGTERM" : "SIGINT");
  shutdown_daemon(d);
}

/* The signalfd is readable: act on every signal queued, in order; after
 * SIGTERM or SIGINT the watch is closed and the rest is left. */
static void on_sigfd(uv_poll_t *h, int status, int events) {
  daemon_t *d = h->data;
  struct signalfd_siginfo si;
  (void)status;
  (void)events;
  while (read(d->sigfd, &si, sizeof si) == (ssize_t)sizeof si) {
    on_signal(d, (int)si.ssi_signo);
    if (si.ssi_signo != SIGHUP) break;
  }
}

static void on_watchdog(uv_timer_t *t) {
  (void)t;
  sd_notify(0, "WATCHDOG=1");
}

static int replay(void *arg, const char *run, const char *tag,
                  int (*cb)(void *cb_arg, uint64_t step, const double *z, uint32_t k),
                  void *cb_arg) {
  return gw_store_replay(arg, run, tag, cb, cb_arg);
}

/* Ingest, with the streams the store says were live within stream_idle:
 * their saved state, or a replay of their sketches, or a fresh start. */
static int start_ingest(daemon_t *d, char *err, size_t errlen) {
  gw_config_t *c = &d->cfg;
  gw_store_resume_t *rs = NULL;
  size_t n = 0;
  int64_t since = gw_now_ns() - (int64_t)c->stream_idle * 1000000000;
  int rc = gw_store_resume_list(d->store, since, &rs, &n);
  if (rc) {
    snprintf(err, errlen, "store: cannot read the streams to resume: %s", gw_strerror(rc));
    return rc;
  }
  gw_ingest_resume_t *items = n ? calloc(n, sizeof(*items)) : NULL;
  if (n && !items) {
    gw_store_resume_free(rs, n);
    return GW_ENOMEM;
  }
  for (size_t i = 0; i < n; i++)
    items[i] = (gw_ingest_resume_t){.run = rs[i].run, .tag = rs[i].tag, .k = rs[i].k,
                                    .kind = rs[i].kind, .s = rs[i].s, .seed = rs[i].seed,
                                    .incarnation = rs[i].incarnation,
                                    .last_step = rs[i].last_step,
                                    .last_seen_ns = rs[i].last_seen_ns, .state = rs[i].state,
                                    .state_len = rs[i].state_len,
                                    .has_sketches = rs[i].has_sketches};
  gw_ingest_restore_t restore = {.items = items, .n = n,
                                 .replay = c->store_sketches ? replay : NULL,
                                 .replay_arg = d->store};
  rc = gw_ingest_start(&d->ingest, &d->loop, c, &d->stats, &d->log, d->sinks, d->n_sinks, &restore, err,
                       errlen);
  free(items);
  gw_store_resume_free(rs, n);
  /* Restored state is used once: a later kill -9 must not bring it back. */
  if (rc == 0 && (rc = gw_store_state_clear(d->store)))
    snprintf(err, errlen, "store: cannot clear the saved state: %s", gw_strerror(rc));
  return rc;
}

/* /metrics extras: the alerts' families, then remote write's. */
static int metrics_extra(void *arg, gw_metrics_writer_t *w) {
  daemon_t *d = arg;
  int rc = gw_alerts_metrics(d->alerts, w);
  if (rc == 0 && d->runinfo) rc = gw_runinfo_render(d->runinfo, w);
  if (rc == 0 && d->remote_write) rc = gw_remote_write_metrics(d->remote_write, w);
  return rc;
}

/* --metrics-labels: gradwatch_run_info, seeded with the metadata the store
 * kept, then fed by the meta sink call. */
static int start_runinfo(daemon_t *d, char *err, size_t errlen) {
  gw_store_run_t *runs = NULL;
  size_t n = 0;
  int rc = gw_runinfo_new(&d->runinfo, d->cfg.metrics_labels, err, errlen);
  if (rc) return rc;
  if (gw_store_runs(d->store, gw_now_ns(), 0, &runs, &n) == 0) {
    for (size_t i = 0; i < n; i++)
      if (runs[i].meta) gw_runinfo_observe(d->runinfo, runs[i].run, runs[i].meta);
    gw_store_runs_free(runs, n);
  }
  return 0;
}

/* --remote-write: a sink of its own, after the others. */
static int start_remote_write(daemon_t *d, char *err, size_t errlen) {
  gw_remote_write_config_t rc_;
  if (d->cfg.n_remote_write == 0) return 0;
  gw_remote_write_config_default(&rc_);
  rc_.urls = (const char *const *)d->cfg.remote_write;
  rc_.n_urls = d->cfg.n_remote_write;
  rc_.metrics = d->cfg.remote_write_metrics;
  rc_.labels = (const char *const *)d->cfg.remote_write_label;
  rc_.n_labels = d->cfg.n_remote_write_label;
  rc_.log = &d->log;
  return gw_remote_write_new(&d->remote_write, &rc_, err, errlen);
}

/* Every ZeroMQ peer, HTTP client and SSE subscriber holds a descriptor: a
 * daemon started from a shell would otherwise live within a soft limit of
 * 1024. Raise the soft limit to the hard one and say what it is. */
static void raise_nofile(gw_log_t *log) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
  rlim_t was = rl.rlim_cur;
  if (rl.rlim_cur != rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) rl.rlim_cur = was;
  }
  gw_log(log, GW_LOG_INFO, "nofile_limit", "soft=%llu was=%llu hard=%llu",
         (unsigned long long)rl.rlim_cur, (unsigned long long)was,
         (unsigned long long)rl.rlim_max);
}

static int start(daemon_t *d, char *err, size_t errlen) {
  int rc;
  gw_config_t *c = &d->cfg;
  raise_nofile(&d->log);
  atomic_store(&d->stats.started_ns, gw_now_ns());
  /* At least 16 characters: a short token is guessable. */
  if (c->http_token_file && (rc = gw_config_read_secret("http-token-file", c->http_token_file, 16,
                                                        1024, &d->token, err, errlen)))
    return rc;
  if (c->max_db_mb && c->max_db_mb < gw_store_min_db_mb()) {
    snprintf(err, errlen,
             "max-db-mb %u is too small: the database needs at least %u MB to hold one flush "
             "(schema, a full batch of points in the file and in its WAL)",
             c->max_db_mb, gw_store_min_db_mb());
    return GW_EINVAL;
  }
  gw_store_config_t sc;
  gw_store_config_default(&sc);
  sc.path = c->db;
  sc.flush_ms = c->flush_ms;
  sc.retention_days = c->retention_days;
  sc.max_db_mb = c->max_db_mb;
  sc.chunk_points = c->chunk_points;
  sc.full_resolution_days = c->full_resolution_days;
  sc.store_every = c->store_every;
  sc.store_sketches = c->store_sketches;
  sc.log = &d->log;
  if ((rc = gw_store_open(&d->store, &sc, &d->stats))) {
    snprintf(err, errlen, "store: cannot open %s: %s", c->db, gw_strerror(rc));
    return rc;
  }
  gw_live_config_t lc = {.client_max_bytes = (size_t)c->sse_client_kb << 10,
                         .total_max_bytes = (size_t)c->sse_total_mb << 20,
                         .max_clients = c->sse_max_clients,
                         .max_per_address = c->sse_max_per_address};
  if ((rc = gw_live_new(&d->live, &lc, &d->stats))) {
    snprintf(err, errlen, "live: %s", gw_strerror(rc));
    return rc;
  }
  if ((rc = gw_metrics_new(&d->metrics, c->metrics_tags))) {
    snprintf(err, errlen, "metrics: %s", gw_strerror(rc));
    return rc;
  }
  if (c->metrics_labels && (rc = start_runinfo(d, err, errlen))) return rc;
  gw_alertmanager_config_t am;
  gw_alertmanager_config_default(&am);
  am.urls = (const char *const *)c->alertmanager_url;
  am.n_urls = c->n_alertmanager_url;
  am.resend_ms = c->alertmanager_resend * 1000u;
  am.runbook_url = c->alertmanager_runbook_url;
  am.log = &d->log;
  gw_alerts_deps_t ad = {.store = d->store, .live = d->live, .log = &d->log, .alertmanager = &am};
  if ((rc = gw_alerts_new(&d->alerts, c->config_path, &ad, err, errlen))) return rc;
  gw_http_config_t hc = {.addr = c->http, .token = d->token,
                         .cert_file = c->http_cert, .key_file = c->http_key,
                         .series_max_bytes = (size_t)c->series_max_mb << 20,
                         .answer_budget_bytes = (size_t)c->http_answer_budget_mb << 20};
  gw_http_deps_t deps = {.store = d->store,
                         .live = d->live,
                         .metrics = d->metrics,
                         .stats = &d->stats,
                         .ready = &d->ready,
                         .metrics_extra = metrics_extra,
                         .metrics_extra_arg = d};
  if ((rc = start_remote_write(d, err, errlen))) return rc;
  if ((rc = gw_http_start(&d->http, &hc, &deps))) {
    snprintf(err, errlen, "http: cannot listen on %s: %s", c->http, gw_strerror(rc));
    return rc;
  }
  gw_store_sink(d->store, &d->sinks[0]);
  gw_live_sink(d->live, &d->sinks[1]);
  gw_metrics_sink(d->metrics, &d->sinks[2]);
  gw_alerts_sink(d->alerts, &d->sinks[3]);
  d->n_sinks = 4;
  if (d->runinfo) gw_runinfo_sink(d->runinfo, &d->sinks[d->n_sinks++]);
  if (d->remote_write) gw_remote_write_sink(d->remote_write, &d->sinks[d->n_sinks++]);
  if ((rc = start_ingest(d, err, errlen))) return rc;
  d->reload.alerts = d->alerts;
  d->reload.path = c->config_path;
  d->reload.done.data = d;
  uv_async_init(&d->loop, &d->reload.done, on_reload_done);
  uv_poll_init(&d->loop, &d->sig_poll, d->sigfd);
  d->sig_poll.data = d;
  uv_poll_start(&d->sig_poll, UV_READABLE, on_sigfd);
  uv_timer_init(&d->loop, &d->alerts_tick);
  d->alerts_tick.data = d;
  uv_timer_start(&d->alerts_tick, on_alerts_tick, 1000, 1000);
  uint64_t wd_usec = 0;
  if (sd_watchdog_enabled(0, &wd_usec) > 0 && wd_usec > 0) {
    uv_timer_init(&d->loop, &d->watchdog);
    uv_timer_start(&d->watchdog, on_watchdog, 0, wd_usec / 2000 ? wd_usec / 2000 : 1);
    d->watchdog_on = 1;
  }
  atomic_store(&d->ready, 1);
  sd_notify(0, "READY=1");
  gw_log(&d->log, GW_LOG_INFO, "ready",
         "http=%s port=%d db=%s zmq=%s window=%u rank_every=%u engine_threads=%u stream_idle=%u",
         c->http, gw_http_port(d->http), c->db, c->n_zmq ? c->zmq[0] : c->zmq_pull[0],
         c->engine.window, c->engine.rank_every, c->engine_threads, c->stream_idle);
  return 0;
}

static void teardown(daemon_t *d) {
  if (d->ingest) {
    gw_ingest_stop(d->ingest);
    d->ingest = NULL;
  }
  uv_run(&d->loop, UV_RUN_DEFAULT); /* let handles close */
  if (d->reload.running) { /* cancelled at shutdown: it ends promptly */
    pthread_join(d->reload.thread, NULL);
    d->reload.running = 0;
  }
  gw_http_stop(d->http);           /* no render may call into alerts or the store now */
  gw_alerts_free(d->alerts, 2000); /* webhooks get 2 s to deliver what is queued */
  gw_remote_write_free(d->remote_write, 2000); /* so do remote-write receivers */
  gw_store_close(d->store);        /* flushes */
  gw_live_free(d->live);
  gw_metrics_free(d->metrics);
  gw_runinfo_free(d->runinfo);
  free(d->token);
  uv_loop_close(&d->loop);
}

/* --check-config: the alert rules of FILE, through the daemon's own parser. */
static int check_alert_rules(const char *path, char *err, size_t errlen) {
  gw_alert_rules_t rs;
  int rc = gw_alert_rules_load(&rs, path, err, errlen);
  if (rc == 0) gw_alert_rules_free(&rs);
  return rc;
}

int main(int argc, char **argv) {
  daemon_t d;
  char err[1024] = "";
  memset(&d, 0, sizeof(d));
  pthread_mutex_init(&d.reload.mu, NULL);
  atomic_init(&d.reload.cancel, 0);
  signal(SIGPIPE, SIG_IGN);
  openblas_set_num_threads(1); /* the engine's eigenproblems are small */
  gw_config_init(&d.cfg);
  if (gw_config_parse(&d.cfg, argc, argv, err, sizeof(err))) {
    fprintf(stderr, "gradwatchd: %s\n", err);
    gw_config_free(&d.cfg);
    return 2;
  }
  if (d.cfg.want_help) {
    gw_config_usage(stdout);
    gw_config_free(&d.cfg);
    return 0;
  }
  if (d.cfg.want_version) {
    printf("gradwatchd %s (protocol v%d)\n", GW_VERSION, GW_PROTO_VERSION);
    gw_config_free(&d.cfg);
    return 0;
  }
  if (d.cfg.check_config) {
    int bad = gw_config_check_file_with(d.cfg.check_config, stderr, check_alert_rules) != 0;
    if (!bad) printf("%s: OK\n", d.cfg.check_config);
    gw_config_free(&d.cfg);
    return bad ? 1 : 0;
  }
  /* Before anything can start a thread (the options above exit at once and
   * keep the default signal actions: Ctrl-C stops --check-config). */
  d.sigfd = loop_signals();
  if (d.sigfd < 0) {
    fprintf(stderr, "gradwatchd: cannot set up signal handling: %s\n", strerror(-d.sigfd));
    gw_config_free(&d.cfg);
    return 1;
  }
  int rc = gw_log_init(&d.log, d.cfg.log_file, d.cfg.log_level);
  if (rc) {
    fprintf(stderr, "gradwatchd: log-file %s: %s\n", d.cfg.log_file, strerror(-rc));
    gw_config_free(&d.cfg);
    return 2;
  }
  uv_loop_init(&d.loop);
  rc = start(&d, err, sizeof(err)); /* a signal that comes meanwhile waits in the signalfd */
  if (rc) {
    gw_log(&d.log, GW_LOG_ERROR, "start_failed", "error=\"%s\"", err);
    fprintf(stderr, "gradwatchd: %s\n", err);
    teardown(&d);
    gw_log_close(&d.log);
    gw_config_free(&d.cfg);
    return rc == GW_ECONFIG ? 2 : 1;
  }
  uv_run(&d.loop, UV_RUN_DEFAULT);
  teardown(&d);
  gw_log(&d.log, GW_LOG_INFO, "stopped", "written=%llu dropped=%llu",
         (unsigned long long)gw_stats_get(&d.stats.store_written),
         (unsigned long long)gw_stats_get(&d.stats.store_dropped));
  gw_log_close(&d.log);
  gw_config_free(&d.cfg);
  pthread_mutex_destroy(&d.reload.mu);
  close(d.sigfd);
  return d.exit_code;
}
