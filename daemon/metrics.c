/* metrics.c — latest values per stream and the Prometheus text rendering.
 *
 * The table is a gw_rtmap_t keyed by (run, tag); each entry is one
 * allocation holding the values and both names. One mutex guards the table
 * and the lifecycle counters; render copies the entries into a flat
 * snapshot under it, then sorts and formats without it. Numbers are written
 * by gw_fmt_double (numfmt.h), the shortest text that reads back exactly,
 * so values reach Prometheus bit for bit.
 */
#include "metrics.h"

#include <dirent.h>
#include <fnmatch.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "gw_error.h"
#include "numfmt.h"
#include "util.h"

/* The per-stream values exported; order is the render order of families. */
enum {
  V_KAPPA_ONESTEP,
  V_KAPPA_EMA,
  V_KAPPA_ONESTEP_CUM,
  V_KAPPA_EMA_CUM,
  V_RANK_90,
  V_RANK_99,
  V_STABLE_RANK,
  V_GRAD_NORM,
  V_LOSS,
  /* the linear predictor, the whole-run terms and the tail on κ's scale */
  V_KAPPA_LINEAR,
  V_KAPPA_LINEAR_CUM,
  V_PATH_ONESTEP_CUM,
  V_PATH_EMA_CUM,
  V_PATH_LINEAR_CUM,
  V_KAPPA_BEST,
  V_TAIL_KAPPA_90,
  V_RANK_90_RUN,
  V_RANK_99_RUN,
  V_LAST_SEEN, /* the daemon's receive time, Unix seconds */
  V_COUNT
};

/* best_predictor's values (point.h) as the predictor label says them. */
static const char *const predictor_names[] = {"onestep", "ema", "linear"};

typedef struct entry_s {
  gw_rtnode_t node; /* run, tag point into name[] */
  uint64_t last_step;
  int best; /* index in predictor_names, or -1 */
  double v[V_COUNT];
  char name[];
} entry_t;

struct gw_metrics_s {
  pthread_mutex_t mu; /* the fields below */
  char *glob;
  gw_rtmap_t map; /* entry_t by (run, tag) */
  uint64_t retired;                     /* sink forgets */
  uint64_t restarts[GW_RESTART_COUNT];  /* sink restarts, by reason */
};

struct gw_metrics_writer_s {
  char *buf;
  size_t len, cap;
  int oom;
};

#define ENTRY(n) GW_CONTAINER_OF(n, entry_t, node)

int gw_metrics_new(gw_metrics_t **out, const char *tags_glob) {
  gw_metrics_t *m = NULL;
  *out = NULL;
  if (!tags_glob) tags_glob = "*";
  if (!*tags_glob) return GW_EINVAL;
  if (!(m = calloc(1, sizeof *m))) return GW_ENOMEM;
  m->glob = strdup(tags_glob);
  if (!m->glob || gw_rtmap_init(&m->map) != 0) goto fail;
  if (pthread_mutex_init(&m->mu, NULL) != 0) goto fail;
  *out = m;
  return 0;
fail:
  free(m->glob);
  gw_rtmap_free(&m->map);
  free(m);
  return GW_ENOMEM;
}

void gw_metrics_free(gw_metrics_t *m) {
  if (!m) return;
  gw_rtiter_t it = {0};
  gw_rtnode_t *n;
  while ((n = gw_rtmap_next(&m->map, &it))) free(ENTRY(n));
  pthread_mutex_destroy(&m->mu);
  gw_rtmap_free(&m->map);
  free(m->glob);
  free(m);
}

int gw_metrics_observe(gw_metrics_t *m, const char *run, const char *tag,
                       const gw_point_t *p) {
  int rc = 0;
  if (fnmatch(m->glob, tag, 0) != 0) return 0;
  pthread_mutex_lock(&m->mu);
  gw_rtnode_t *n = gw_rtmap_find(&m->map, run, tag);
  entry_t *e = n ? ENTRY(n) : NULL;
  if (!e) {
    size_t rl = strlen(run) + 1, tl = strlen(tag) + 1;
    if (!(e = malloc(sizeof *e + rl + tl))) {
      rc = GW_ENOMEM;
      goto out;
    }
    memcpy(e->name, run, rl);
    memcpy(e->name + rl, tag, tl);
    e->node.run = e->name;
    e->node.tag = e->name + rl;
    if ((rc = gw_rtmap_insert(&m->map, &e->node)) != 0) {
      free(e);
      goto out;
    }
  }
  e->last_step = p->step;
  e->v[V_KAPPA_ONESTEP] = p->kappa_onestep;
  e->v[V_KAPPA_EMA] = p->kappa_ema;
  e->v[V_KAPPA_ONESTEP_CUM] = p->kappa_onestep_cum;
  e->v[V_KAPPA_EMA_CUM] = p->kappa_ema_cum;
  e->v[V_RANK_90] = (double)p->rank_90;
  e->v[V_RANK_99] = (double)p->rank_99;
  e->v[V_STABLE_RANK] = p->stable_rank;
  e->v[V_GRAD_NORM] = p->grad_norm;
  e->v[V_LOSS] = p->loss;
  e->v[V_KAPPA_LINEAR] = p->kappa_linear;
  e->v[V_KAPPA_LINEAR_CUM] = p->kappa_linear_cum;
  e->v[V_PATH_ONESTEP_CUM] = p->path_onestep_cum;
  e->v[V_PATH_EMA_CUM] = p->path_ema_cum;
  e->v[V_PATH_LINEAR_CUM] = p->path_linear_cum;
  e->v[V_KAPPA_BEST] = p->kappa_best;
  e->v[V_TAIL_KAPPA_90] = p->tail_kappa_90;
  e->v[V_RANK_90_RUN] = (double)p->rank_90_run;
  e->v[V_RANK_99_RUN] = (double)p->rank_99_run;
  e->v[V_LAST_SEEN] = p->recv_ns > 0 ? (double)p->recv_ns * 1e-9 : NAN;
  e->best = p->best_predictor >= 0 && p->best_predictor < 3 ? (int)p->best_predictor : -1;
out:
  pthread_mutex_unlock(&m->mu);
  return rc;
}

int gw_metrics_forget(gw_metrics_t *m, const char *run, const char *tag) {
  pthread_mutex_lock(&m->mu);
  gw_rtnode_t *n = gw_rtmap_remove(&m->map, run, tag);
  pthread_mutex_unlock(&m->mu);
  free(n ? ENTRY(n) : NULL);
  return n ? 0 : GW_ENOTFOUND;
}

size_t gw_metrics_stream_count(gw_metrics_t *m) {
  pthread_mutex_lock(&m->mu);
  size_t n = m->map.count;
  pthread_mutex_unlock(&m->mu);
  return n;
}

/* ---- sink ---- */

static void sink_point(void *arg, const gw_stream_ref_t *s, const gw_point_t *p) {
  gw_metrics_observe(arg, s->run, s->tag, p);
}

static void sink_forget(void *arg, const gw_stream_ref_t *s) {
  gw_metrics_t *m = arg;
  gw_metrics_forget(m, s->run, s->tag);
  pthread_mutex_lock(&m->mu);
  m->retired++;
  pthread_mutex_unlock(&m->mu);
}

static void sink_restart(void *arg, const gw_stream_ref_t *s, const gw_restart_t *r) {
  gw_metrics_t *m = arg;
  (void)s;
  if (!gw_restart_reason_name(r->reason)) return; /* not a reason we can name */
  pthread_mutex_lock(&m->mu);
  m->restarts[r->reason]++;
  pthread_mutex_unlock(&m->mu);
}

void gw_metrics_sink(gw_metrics_t *m, gw_sink_t *out) {
  memset(out, 0, sizeof *out);
  out->name = "metrics";
  out->arg = m;
  out->point = sink_point;
  out->restart = sink_restart;
  out->forget = sink_forget;
}

/* ---- writer ---- */

static void put(gw_metrics_writer_t *w, const char *s, size_t n) {
  if (w->oom) return;
  if (w->len + n + 1 > w->cap) {
    size_t cap = w->cap ? w->cap : 4096;
    while (cap < w->len + n + 1) cap *= 2;
    char *b = realloc(w->buf, cap);
    if (!b) {
      w->oom = 1;
      return;
    }
    w->buf = b;
    w->cap = cap;
  }
  memcpy(w->buf + w->len, s, n);
  w->len += n;
  w->buf[w->len] = '\0';
}

static void puts_(gw_metrics_writer_t *w, const char *s) { put(w, s, strlen(s)); }

/* Label value escaping of the text format: \ → \\, " → \", newline → \n. */
static void put_escaped(gw_metrics_writer_t *w, const char *s) {
  const char *run = s;
  for (; *s; s++) {
    const char *rep = *s == '\\' ? "\\\\" : *s == '"' ? "\\\"" : *s == '\n' ? "\\n" : NULL;
    if (!rep) continue;
    put(w, run, (size_t)(s - run));
    put(w, rep, 2);
    run = s + 1;
  }
  put(w, run, (size_t)(s - run));
}

static void put_double(gw_metrics_writer_t *w, double v) {
  char b[GW_NUMFMT_MAX];
  if (isinf(v)) {
    puts_(w, v > 0 ? "+Inf" : "-Inf");
    return;
  }
  put(w, b, (size_t)gw_fmt_double(b, v));
}

static void put_u64(gw_metrics_writer_t *w, uint64_t v) {
  char b[24];
  int n = snprintf(b, sizeof b, "%" PRIu64, v);
  put(w, b, (size_t)n);
}

int gw_metrics_family(gw_metrics_writer_t *w, const char *name,
                      const char *type, const char *help) {
  puts_(w, "# HELP ");
  puts_(w, name);
  put(w, " ", 1);
  puts_(w, help); /* constant text from our code: no \ or newline */
  puts_(w, "\n# TYPE ");
  puts_(w, name);
  put(w, " ", 1);
  puts_(w, type);
  put(w, "\n", 1);
  return w->oom ? GW_ENOMEM : 0;
}

static void put_labels(gw_metrics_writer_t *w, const char *const *labels) {
  if (!labels || !labels[0]) return;
  put(w, "{", 1);
  for (size_t i = 0; labels[i] && labels[i + 1]; i += 2) {
    if (i) put(w, ",", 1);
    puts_(w, labels[i]);
    put(w, "=\"", 2);
    put_escaped(w, labels[i + 1]);
    put(w, "\"", 1);
  }
  put(w, "}", 1);
}

int gw_metrics_sample(gw_metrics_writer_t *w, const char *name,
                      const char *const *labels, double value) {
  if (isnan(value)) return 0;
  puts_(w, name);
  put_labels(w, labels);
  put(w, " ", 1);
  put_double(w, value);
  put(w, "\n", 1);
  return w->oom ? GW_ENOMEM : 0;
}

static void sample_u64(gw_metrics_writer_t *w, const char *name,
                       const char *const *labels, uint64_t value) {
  puts_(w, name);
  put_labels(w, labels);
  put(w, " ", 1);
  put_u64(w, value);
  put(w, "\n", 1);
}

/* ---- render ---- */

static int cmp_entry(const void *a, const void *b) {
  const entry_t *x = *(entry_t *const *)a, *y = *(entry_t *const *)b;
  int c = strcmp(x->node.run, y->node.run);
  return c ? c : strcmp(x->node.tag, y->node.tag);
}

/* What render shows besides the entries, copied with them. */
typedef struct counts_s {
  uint64_t retired;
  uint64_t restarts[GW_RESTART_COUNT];
} counts_t;

/* A copy of the table: entries (with names) in one block, then pointers. */
static int snapshot(gw_metrics_t *m, entry_t ***out, size_t *n, void **block,
                    counts_t *counts) {
  int rc = 0;
  gw_rtiter_t it = {0};
  gw_rtnode_t *node;
  *out = NULL;
  *block = NULL;
  pthread_mutex_lock(&m->mu);
  counts->retired = m->retired;
  memcpy(counts->restarts, m->restarts, sizeof counts->restarts);
  size_t bytes = 0;
  *n = m->map.count;
  while ((node = gw_rtmap_next(&m->map, &it))) {
    size_t sz = sizeof(entry_t) + strlen(node->run) + strlen(node->tag) + 2;
    bytes += (sz + 15) & ~(size_t)15;
  }
  char *blk = malloc(bytes + 1);
  entry_t **ptrs = malloc((*n + 1) * sizeof *ptrs);
  if (!blk || !ptrs) {
    free(blk);
    free(ptrs);
    rc = GW_ENOMEM;
    goto out;
  }
  size_t off = 0, k = 0;
  it = (gw_rtiter_t){0};
  while ((node = gw_rtmap_next(&m->map, &it))) {
    entry_t *e = ENTRY(node);
    size_t rl = strlen(node->run) + 1, tl = strlen(node->tag) + 1;
    size_t sz = sizeof *e + rl + tl;
    entry_t *c = (entry_t *)(blk + off);
    memcpy(c, e, sz);
    c->node.run = c->name;
    c->node.tag = c->name + rl;
    c->node.next = NULL;
    ptrs[k++] = c;
    off += (sz + 15) & ~(size_t)15;
  }
  *out = ptrs;
  *block = blk;
out:
  pthread_mutex_unlock(&m->mu);
  return rc;
}

static void counter(gw_metrics_writer_t *w, const char *name, const char *help,
                    atomic_uint_fast64_t *c) {
  gw_metrics_family(w, name, "counter", help);
  sample_u64(w, name, NULL, gw_stats_get(c));
}

static void gauge(gw_metrics_writer_t *w, const char *name, const char *help,
                  uint64_t v) {
  gw_metrics_family(w, name, "gauge", help);
  sample_u64(w, name, NULL, v);
}

/* ---- the process (Prometheus' standard process_* names) ---- */

/* What /proc says about this process; NAN where it could not be read. */
typedef struct proc_s {
  double cpu_s, rss_bytes, open_fds, max_fds, start_s;
} proc_t;

/* Fields 14 (utime), 15 (stime), 22 (starttime, ticks after boot) and 24
 * (rss, pages) of /proc/self/stat; the boot time is /proc/stat's btime.
 * Field 2 (comm) may hold spaces and ')', so parsing starts after the
 * last ')'. */
static void read_proc(proc_t *p) {
  char buf[1024];
  *p = (proc_t){NAN, NAN, NAN, NAN, NAN};
  long tick = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
  FILE *f = fopen("/proc/self/stat", "r");
  size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
  if (f) fclose(f);
  buf[n] = '\0';
  char *rp = strrchr(buf, ')');
  unsigned long long fld[25] = {0}; /* fld[i]: field i (1-based, as proc(5) numbers them) */
  int got = 0;
  if (rp) {
    char *t = rp + 1, *end;
    for (int i = 3; i <= 24; i++, t = end) {
      while (*t == ' ') t++;
      if (i == 3) { /* state: a letter */
        end = t + 1;
        continue;
      }
      fld[i] = strtoull(t, &end, 10); /* negative fields (nice) are not used */
      if (end == t) break;
      got = i;
    }
  }
  if (got == 24 && tick > 0) {
    unsigned long long utime = fld[14], stime = fld[15], start = fld[22], rss = fld[24];
    p->cpu_s = (double)(utime + stime) / (double)tick;
    if (page > 0) p->rss_bytes = (double)rss * (double)page;
    if ((f = fopen("/proc/stat", "r"))) {
      char line[256];
      unsigned long long btime;
      while (fgets(line, sizeof line, f))
        if (sscanf(line, "btime %llu", &btime) == 1) {
          p->start_s = (double)btime + (double)start / (double)tick;
          break;
        }
      fclose(f);
    }
  }
  DIR *d = opendir("/proc/self/fd");
  if (d) {
    double k = 0;
    struct dirent *de;
    while ((de = readdir(d)))
      if (de->d_name[0] != '.') k++;
    closedir(d);
    p->open_fds = k - 1; /* the directory stream's own descriptor */
  }
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
    p->max_fds = rl.rlim_cur == RLIM_INFINITY ? INFINITY : (double)rl.rlim_cur;
}

static void process_families(gw_metrics_writer_t *w) {
  proc_t p;
  read_proc(&p);
  gw_metrics_family(w, "process_cpu_seconds_total", "counter",
                    "Total user and system CPU time spent in seconds.");
  gw_metrics_sample(w, "process_cpu_seconds_total", NULL, p.cpu_s);
  gw_metrics_family(w, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.");
  gw_metrics_sample(w, "process_resident_memory_bytes", NULL, p.rss_bytes);
  gw_metrics_family(w, "process_open_fds", "gauge", "Number of open file descriptors.");
  gw_metrics_sample(w, "process_open_fds", NULL, p.open_fds);
  gw_metrics_family(w, "process_max_fds", "gauge", "Maximum number of open file descriptors.");
  gw_metrics_sample(w, "process_max_fds", NULL, p.max_fds);
  gw_metrics_family(w, "process_start_time_seconds", "gauge",
                    "Start time of the process since unix epoch in seconds.");
  gw_metrics_sample(w, "process_start_time_seconds", NULL, p.start_s);
}

/* gradwatch_build_info: the version (and the git revision when the build
 * knew it), value 1, as Prometheus' own *_build_info. */
static void build_info(gw_metrics_writer_t *w) {
  const char *labels[] = {"version", GW_VERSION,
#ifdef GW_REVISION
                          "revision", GW_REVISION,
#endif
                          NULL};
  gw_metrics_family(w, "gradwatch_build_info", "gauge",
                    "A metric with a constant '1' value labeled by the version it was built from.");
  gw_metrics_sample(w, "gradwatch_build_info", labels, 1);
}

/* One per-stream family: value index vi, with an extra label (or NULL). */
static void stream_family(gw_metrics_writer_t *w, entry_t **es, size_t n,
                          const char *name, int vi, const char *xname,
                          const char *xval) {
  for (size_t i = 0; i < n; i++) {
    const char *labels[] = {"run", es[i]->node.run, "tag", es[i]->node.tag, xname, xval, NULL};
    gw_metrics_sample(w, name, labels, es[i]->v[vi]);
  }
}

int gw_metrics_render(gw_metrics_t *m, gw_stats_t *stats,
                      gw_metrics_extra_fn extra, void *extra_arg, char **out,
                      size_t *len) {
  gw_metrics_writer_t w = {0};
  entry_t **es = NULL;
  void *block = NULL;
  size_t n = 0;
  counts_t counts;
  int rc;
  *out = NULL;
  *len = 0;
  if ((rc = snapshot(m, &es, &n, &block, &counts)) != 0) goto fail;
  qsort(es, n, sizeof *es, cmp_entry);

  if (stats) {
    build_info(&w);
    process_families(&w);
    counter(&w, "gradwatch_messages_received_total",
            "Messages read from ZeroMQ.", &stats->received);
    gw_metrics_family(&w, "gradwatch_messages_rejected_total", "counter",
                      "Messages rejected, by reason.");
    for (int i = 0; i < GW_E_COUNT; i++) {
      const char *labels[] = {"reason", gw_err_reason(GW_E_BASE - i), NULL};
      sample_u64(&w, "gradwatch_messages_rejected_total", labels,
                 gw_stats_get(&stats->rejected[i]));
    }
    counter(&w, "gradwatch_run_meta_received_total",
            "Run-metadata messages accepted (PROTOCOL.md section 11).", &stats->meta_accepted);
    counter(&w, "gradwatch_points_total", "Points computed by the engine.",
            &stats->points);
    gauge(&w, "gradwatch_streams", "Live streams.", gw_stats_get(&stats->streams));
    counter(&w, "gradwatch_store_dropped_total",
            "Points dropped because the store queue was full.",
            &stats->store_dropped);
    counter(&w, "gradwatch_store_written_total",
            "Points committed to SQLite.", &stats->store_written);
    counter(&w, "gradwatch_store_errors_total",
            "Failed store flushes (I/O errors, disk full).", &stats->store_errors);
    gauge(&w, "gradwatch_store_queue_depth", "Points waiting for the store writer.",
          gw_stats_get(&stats->store_queue_depth));
    counter(&w, "gradwatch_live_dropped_total",
            "Live (SSE) events dropped for slow clients.", &stats->live_dropped);
    gauge(&w, "gradwatch_sse_clients", "Subscribed live (SSE) clients.",
          gw_stats_get(&stats->sse_clients));
    gw_metrics_family(&w, "gradwatch_sse_dropped_total", "counter",
                      "Live (SSE) clients dropped (slow) or refused (max_clients, per_address), by reason.");
    for (int i = 0; i < GW_SSE_DROP_COUNT; i++) {
      const char *labels[] = {"reason", gw_sse_drop_name(i), NULL};
      sample_u64(&w, "gradwatch_sse_dropped_total", labels, gw_stats_get(&stats->sse_dropped[i]));
    }
    gauge(&w, "gradwatch_http_answer_bytes", "Bytes held for data answers (built or being sent).",
          gw_stats_get(&stats->http_answer_bytes));
    gw_metrics_family(&w, "gradwatch_http_refused_total", "counter",
                      "Data answers refused, by reason (too_large, budget, queue).");
    for (int i = 0; i < GW_HTTP_REFUSE_COUNT; i++) {
      const char *labels[] = {"reason", gw_http_refuse_name(i), NULL};
      sample_u64(&w, "gradwatch_http_refused_total", labels, gw_stats_get(&stats->http_refused[i]));
    }
  }

  gw_metrics_family(&w, "gradwatch_kappa", "gauge",
                    "Windowed predictability index kappa_W, by predictor.");
  stream_family(&w, es, n, "gradwatch_kappa", V_KAPPA_ONESTEP, "predictor", "onestep");
  stream_family(&w, es, n, "gradwatch_kappa", V_KAPPA_EMA, "predictor", "ema");
  stream_family(&w, es, n, "gradwatch_kappa", V_KAPPA_LINEAR, "predictor", "linear");
  gw_metrics_family(&w, "gradwatch_kappa_cum", "gauge",
                    "Cumulative predictability index since the stream began, by predictor.");
  stream_family(&w, es, n, "gradwatch_kappa_cum", V_KAPPA_ONESTEP_CUM, "predictor", "onestep");
  stream_family(&w, es, n, "gradwatch_kappa_cum", V_KAPPA_EMA_CUM, "predictor", "ema");
  stream_family(&w, es, n, "gradwatch_kappa_cum", V_KAPPA_LINEAR_CUM, "predictor", "linear");
  gw_metrics_family(&w, "gradwatch_rank", "gauge",
                    "Predictable rank r*(eps) of the window's increments, by energy percent.");
  stream_family(&w, es, n, "gradwatch_rank", V_RANK_90, "energy", "90");
  stream_family(&w, es, n, "gradwatch_rank", V_RANK_99, "energy", "99");
  gw_metrics_family(&w, "gradwatch_stable_rank", "gauge",
                    "Stable rank of the window's increment matrix.");
  stream_family(&w, es, n, "gradwatch_stable_rank", V_STABLE_RANK, NULL, NULL);
  gw_metrics_family(&w, "gradwatch_grad_norm", "gauge",
                    "Norm of the full gradient as sent by the client.");
  stream_family(&w, es, n, "gradwatch_grad_norm", V_GRAD_NORM, NULL, NULL);
  gw_metrics_family(&w, "gradwatch_loss", "gauge", "Training loss as sent by the client.");
  stream_family(&w, es, n, "gradwatch_loss", V_LOSS, NULL, NULL);
  gw_metrics_family(&w, "gradwatch_last_step", "gauge", "Step of the stream's latest point.");
  for (size_t i = 0; i < n; i++) {
    const char *labels[] = {"run", es[i]->node.run, "tag", es[i]->node.tag, NULL};
    sample_u64(&w, "gradwatch_last_step", labels, es[i]->last_step);
  }
  gw_metrics_family(&w, "gradwatch_last_seen_timestamp_seconds", "gauge",
                    "When the daemon received the stream's latest message (Unix seconds).");
  stream_family(&w, es, n, "gradwatch_last_seen_timestamp_seconds", V_LAST_SEEN, NULL, NULL);
  gw_metrics_family(&w, "gradwatch_path_cum", "gauge",
                    "Cumulative prediction-based path length P since the stream began, by predictor.");
  stream_family(&w, es, n, "gradwatch_path_cum", V_PATH_ONESTEP_CUM, "predictor", "onestep");
  stream_family(&w, es, n, "gradwatch_path_cum", V_PATH_EMA_CUM, "predictor", "ema");
  stream_family(&w, es, n, "gradwatch_path_cum", V_PATH_LINEAR_CUM, "predictor", "linear");
  gw_metrics_family(&w, "gradwatch_kappa_best", "gauge",
                    "Smallest windowed kappa of the three predictors; predictor names it.");
  for (size_t i = 0; i < n; i++) {
    if (es[i]->best < 0) continue;
    const char *labels[] = {"run", es[i]->node.run, "tag", es[i]->node.tag, "predictor",
                            predictor_names[es[i]->best], NULL};
    gw_metrics_sample(&w, "gradwatch_kappa_best", labels, es[i]->v[V_KAPPA_BEST]);
  }
  gw_metrics_family(&w, "gradwatch_tail_kappa", "gauge",
                    "Window increments' energy beyond rank r, on kappa's scale, by energy percent of r.");
  stream_family(&w, es, n, "gradwatch_tail_kappa", V_TAIL_KAPPA_90, "energy", "90");
  gw_metrics_family(&w, "gradwatch_rank_run", "gauge",
                    "Predictable rank of the whole run's increments (Frequent Directions), by energy percent.");
  stream_family(&w, es, n, "gradwatch_rank_run", V_RANK_90_RUN, "energy", "90");
  stream_family(&w, es, n, "gradwatch_rank_run", V_RANK_99_RUN, "energy", "99");
  gw_metrics_family(&w, "gradwatch_streams_retired_total", "counter",
                    "Streams retired from memory after --stream-idle of silence.");
  sample_u64(&w, "gradwatch_streams_retired_total", NULL, counts.retired);
  gw_metrics_family(&w, "gradwatch_stream_restarts_total", "counter",
                    "Stream windows started afresh, by reason.");
  for (int r = 1; r < GW_RESTART_COUNT; r++) {
    const char *labels[] = {"reason", gw_restart_reason_name(r), NULL};
    sample_u64(&w, "gradwatch_stream_restarts_total", labels, counts.restarts[r]);
  }

  if (extra && !w.oom && (rc = extra(extra_arg, &w)) != 0) goto fail;
  if (w.oom) {
    rc = GW_ENOMEM;
    goto fail;
  }
  if (!w.buf) puts_(&w, ""); /* never hand back NULL on success */
  if (w.oom) {
    rc = GW_ENOMEM;
    goto fail;
  }
  free(es);
  free(block);
  *out = w.buf;
  *len = w.len;
  return 0;
fail:
  free(es);
  free(block);
  free(w.buf);
  return rc;
}
