/* worker.c — whole-model steps published from a background thread.
 *
 * A worker owns one thread and GW_WORKER_DEPTH slots. A slot holds the
 * staging copy of one step (every layer's gradient bytes, the gw_layer_t
 * array pointing into them, the tags and the extras) and the outcome of that
 * step (z, norms, status, rc). The caller's thread copies into a free slot
 * (gw_worker_submit), the worker's thread sketches and sends
 * (gw_publisher_publish_layers on the copy), and the caller collects the
 * outcome (gw_worker_wait). The training loop thus pays for a memcpy of its
 * gradients instead of the sketch, which runs beside the next step on a
 * core the training does not use.
 *
 * NOTES ON THE DESIGN OF THE WORKER
 *
 * Three step counters order everything: sub (steps submitted), fin (steps
 * the thread has published) and col (steps collected), col <= fin <= sub <=
 * col + GW_WORKER_DEPTH. Step number n (counting submissions from 0) lives
 * in slot at[n % GW_WORKER_DEPTH]. sub and at[] are written by the caller
 * under mu; fin by the thread under mu; col by the caller alone. Steps
 * col..sub-1 are in flight; a slot that holds none of them is free:
 *
 *     free --submit (sub++)--> queued --thread: published (fin++)--> done
 *          <----------------- wait (col++) ---------------------------'
 *
 * The caller writes only free slots; the thread reads the staging of step
 * fin (queued) and writes its outcome; the caller reads the outcome of step
 * col once fin > col. So no slot is written by one thread while the other
 * uses it, and the thread publishes in the order of submission. The
 * publisher is touched only by the thread while anything is in flight
 * (gradwatch.h).
 *
 * Memory: submit takes the free slot with the lowest index, so a loop whose
 * steps are published before the next comes always uses slot 0 and holds
 * one copy of its gradient; a slot grows to the largest step it was given
 * and keeps it, and nothing is allocated per step once grown. A failed
 * growth leaves the slot's old buffers and the state untouched.
 *
 * Between steps the thread spins for a while (below), then sleeps on go;
 * submit signals go only when it sleeps.
 *
 * gw_worker_free lets the thread finish the steps in flight (their messages
 * are sent) before it stops: a training script that ends right after its
 * last submit does not lose those steps.
 */
#define _GNU_SOURCE /* SCHED_IDLE */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>

#include "gradwatch.h"

#define ALIGN 64u /* each layer's copy starts on a cache line */

typedef struct {
  /* the staged step (written by submit while free, read by the thread) */
  uint64_t step;
  int has_all, has_extras;
  gw_extras_t extras;
  size_t m;
  gw_layer_t *layers; /* m entries; grad.data into mem, tag into tags */
  unsigned char *mem; /* the gradients' bytes */
  char *tags;         /* all_tag (or an empty string) then the layers' tags */
  size_t lcap, mcap, tcap; /* bytes held by layers, mem, tags */

  /* its outcome (written by the thread, read by wait once published) */
  int rc;
  double *z, *norms; /* (m + 1) × k, m + 1 */
  uint8_t *status;   /* m + 1 */
  size_t zcap, ncap, scap; /* bytes held by z, norms, status */
} slot_t;

struct gw_worker_s {
  gw_publisher_t *pub; /* borrowed; the thread's while anything is in flight */
  size_t k;            /* the publisher's sketch length */
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t go;   /* sub grew, or stop */
  pthread_cond_t done; /* fin grew */
  _Atomic uint64_t sub; /* steps submitted; written under mu */
  _Atomic uint64_t fin; /* steps published; written under mu */
  uint64_t col;         /* steps collected (the caller's) */
  unsigned at[GW_WORKER_DEPTH]; /* slot of step n: at[n % GW_WORKER_DEPTH] */
  int last;            /* slot of the step last collected, -1 before any */
  _Atomic int stop;    /* gw_worker_free asks the thread to end */
  int sleeping;        /* the thread waits on go (under mu) */
  slot_t slot[GW_WORKER_DEPTH];
};

static size_t elem_size(int dtype) {
  return dtype == GW_GRAD_F64 ? 8 : dtype == GW_GRAD_F32 ? 4 : 2;
}

/* After a step the thread spins (at SCHED_IDLE, so only on a CPU nothing
 * else wants) before it sleeps, for twice the last interval between two
 * steps when that was under SPIN_NS, else not at all: a fast training loop
 * then hands each step over without waking a sleeping thread, which costs
 * the submitting thread a system call and, in a VM, tens of µs for an idle
 * virtual CPU to come back (the MLP of bench/bench_client.py: 1.54 instead
 * of 1.74 times the plain step); a slower one, for which that is noise,
 * does not burn a CPU waiting. */
#define SPIN_NS 1000000

static int64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Spin until a step is queued after the fin published ones, free is
 * called, or ns have passed. */
static void spin(gw_worker_t *w, uint64_t fin, int64_t ns) {
  int64_t end = mono_ns() + ns;
  for (unsigned i = 1;; i++) {
    if (atomic_load_explicit(&w->sub, memory_order_acquire) != fin ||
        atomic_load_explicit(&w->stop, memory_order_relaxed))
      return;
    if ((i & 255) == 0 && mono_ns() >= end) return;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }
}

/* The thread's scheduling class: SCHED_IDLE while it waits (its spin then
 * runs only on a CPU nothing else wants), the default class while it
 * publishes (the work has to be done before the queue fills: at SCHED_IDLE
 * any busy process on the spare CPU, a local receiver say, would starve it
 * and the training thread would wait in gw_worker_wait). Leaving SCHED_IDLE
 * needs privilege or an RLIMIT_NICE that allows it, so the thread tries the
 * round trip once at start (idle_ok) and, where it fails, stays in the
 * class it is left in. Best effort throughout. */
typedef struct {
  int ok;   /* SCHED_IDLE can be entered and left */
  int idle; /* the thread is at SCHED_IDLE now */
} sched_state_t;

static int set_class(int idle) {
#ifdef SCHED_IDLE
  struct sched_param sp = {0};
  return pthread_setschedparam(pthread_self(), idle ? SCHED_IDLE : SCHED_OTHER, &sp);
#else
  (void)idle;
  return -1;
#endif
}

static void sched_start(sched_state_t *s) {
  s->idle = 0;
  s->ok = 0;
  if (set_class(1) != 0) return;
  s->idle = 1;
  if (set_class(0) != 0) return; /* stuck at SCHED_IDLE: so be it */
  s->idle = 0;
  s->ok = 1;
}

static void set_idle(sched_state_t *s, int want) {
  if (s->ok && s->idle != want && set_class(want) == 0) s->idle = want;
}

static void *run(void *arg) {
  gw_worker_t *w = arg;
  int64_t last = 0, gap = SPIN_NS; /* when the last step came, the interval before it */
  sched_state_t sch;
  (void)pthread_setname_np(pthread_self(), "gw-worker"); /* top -H, gdb, the tests */
  sched_start(&sch);
  pthread_mutex_lock(&w->mu);
  for (;;) {
    uint64_t fin = w->fin;
    if (w->sub == fin && !w->stop) {
      pthread_mutex_unlock(&w->mu);
      set_idle(&sch, 1);
      if (gap < SPIN_NS) spin(w, fin, 2 * gap);
      pthread_mutex_lock(&w->mu);
      while (w->sub == fin && !w->stop) {
        w->sleeping = 1;
        pthread_cond_wait(&w->go, &w->mu);
        w->sleeping = 0;
      }
    }
    if (w->sub == fin) break; /* stop, nothing in flight */
    slot_t *sl = &w->slot[w->at[fin % GW_WORKER_DEPTH]];
    int64_t t = mono_ns();
    gap = last ? t - last : SPIN_NS;
    last = t;
    pthread_mutex_unlock(&w->mu);
    set_idle(&sch, 0);
    int rc = gw_publisher_publish_layers(w->pub, sl->step, sl->has_all ? sl->tags : NULL,
                                         sl->layers, sl->m, sl->has_extras ? &sl->extras : NULL,
                                         sl->z, sl->norms, sl->status);
    pthread_mutex_lock(&w->mu);
    sl->rc = rc;
    atomic_store_explicit(&w->fin, fin + 1, memory_order_release);
    pthread_cond_broadcast(&w->done);
  }
  pthread_mutex_unlock(&w->mu);
  return NULL;
}

int gw_worker_new(gw_worker_t **out, gw_publisher_t *pub) {
  gw_worker_t *w;
  int rc;
  if (out == NULL) return GW_EINVAL;
  *out = NULL;
  if (pub == NULL) return GW_EINVAL;
  if ((w = calloc(1, sizeof *w)) == NULL) return GW_ENOMEM;
  w->pub = pub;
  w->k = gw_publisher_sketch_params(pub)->k;
  w->last = -1;
  if ((rc = pthread_mutex_init(&w->mu, NULL)) != 0) goto fail_mu;
  if ((rc = pthread_cond_init(&w->go, NULL)) != 0) goto fail_go;
  if ((rc = pthread_cond_init(&w->done, NULL)) != 0) goto fail_done;
  if ((rc = pthread_create(&w->thread, NULL, run, w)) != 0) goto fail_thread;
  *out = w;
  return 0;
fail_thread:
  pthread_cond_destroy(&w->done);
fail_done:
  pthread_cond_destroy(&w->go);
fail_go:
  pthread_mutex_destroy(&w->mu);
fail_mu:
  free(w);
  return rc == ENOMEM ? GW_ENOMEM : -rc;
}

void gw_worker_free(gw_worker_t *w) {
  if (w == NULL) return;
  pthread_mutex_lock(&w->mu);
  w->stop = 1;
  pthread_cond_signal(&w->go);
  pthread_mutex_unlock(&w->mu);
  pthread_join(w->thread, NULL); /* the thread publishes the steps in flight first */
  pthread_cond_destroy(&w->done);
  pthread_cond_destroy(&w->go);
  pthread_mutex_destroy(&w->mu);
  for (int i = 0; i < GW_WORKER_DEPTH; i++) {
    slot_t *sl = &w->slot[i];
    free(sl->layers);
    free(sl->mem);
    free(sl->tags);
    free(sl->z);
    free(sl->norms);
    free(sl->status);
  }
  free(w);
}

int gw_worker_pending(const gw_worker_t *w) {
  /* sub is written by this (the caller's) thread only: a relaxed load */
  return w == NULL ? 0 : (int)(atomic_load_explicit(&w->sub, memory_order_relaxed) - w->col);
}

int gw_worker_ready(const gw_worker_t *w) {
  return w != NULL && atomic_load_explicit(&w->fin, memory_order_acquire) > w->col;
}

/* Make *p hold at least need bytes (contents not kept). 0 or GW_ENOMEM, *p
 * and *cap unchanged on failure. */
static int reserve(void **p, size_t *cap, size_t need) {
  void *n;
  if (need <= *cap) return 0;
  if ((n = malloc(need)) == NULL) return GW_ENOMEM;
  free(*p);
  *p = n;
  *cap = need;
  return 0;
}

/* The free slot with the lowest index (one exists: fewer than
 * GW_WORKER_DEPTH steps are in flight). */
static slot_t *free_slot(gw_worker_t *w, unsigned *index) {
  uint64_t sub = atomic_load_explicit(&w->sub, memory_order_relaxed);
  for (unsigned i = 0;; i++) {
    int used = 0;
    for (uint64_t n = w->col; n < sub; n++) used |= w->at[n % GW_WORKER_DEPTH] == i;
    if (!used) {
      *index = i;
      return &w->slot[i];
    }
  }
}

int gw_worker_submit(gw_worker_t *w, uint64_t step, const char *all_tag,
                     const gw_layer_t *layers, size_t m, const gw_extras_t *extras) {
  size_t bytes = 0, tbytes = all_tag ? strlen(all_tag) + 1 : 1, k;
  unsigned index;
  slot_t *sl;
  int rc;
  if (w == NULL || gw_worker_pending(w) >= GW_WORKER_DEPTH) return GW_EINVAL;
  if ((rc = gw_publisher_check_layers(w->pub, step, all_tag, layers, m, extras)) != 0) return rc;
  /* Only this thread makes a slot busy, so the free slot stays free (and
   * its buffers this thread's) until the step is queued below. */
  sl = free_slot(w, &index);
  if ((int)index == w->last) w->last = -1; /* its outcome is overwritten from here on */
  for (size_t i = 0; i < m; i++) {
    const gw_sketch_buf_t *b = &layers[i].grad;
    if (layers[i].tag) tbytes += strlen(layers[i].tag) + 1;
    if (b->data == NULL) continue;
    size_t len = b->n * elem_size(b->dtype), pad = (ALIGN - bytes % ALIGN) % ALIGN;
    if (len / elem_size(b->dtype) != b->n || bytes > SIZE_MAX - pad - len) return GW_ENOMEM;
    bytes += pad + len;
  }
  k = w->k; /* (m + 1)·k doubles fit: checked above */
  if ((rc = reserve((void **)&sl->mem, &sl->mcap, bytes ? bytes : 1)) != 0 ||
      (rc = reserve((void **)&sl->layers, &sl->lcap, (m ? m : 1) * sizeof *sl->layers)) != 0 ||
      (rc = reserve((void **)&sl->tags, &sl->tcap, tbytes)) != 0 ||
      (rc = reserve((void **)&sl->z, &sl->zcap, (m + 1) * k * sizeof *sl->z)) != 0 ||
      (rc = reserve((void **)&sl->norms, &sl->ncap, (m + 1) * sizeof *sl->norms)) != 0 ||
      (rc = reserve((void **)&sl->status, &sl->scap, (m + 1) * sizeof *sl->status)) != 0)
    return rc;
  /* the copy: the only work left on the caller's thread */
  char *t = sl->tags;
  sl->has_all = all_tag != NULL;
  if (all_tag) t = stpcpy(t, all_tag) + 1;
  else *t++ = '\0';
  bytes = 0;
  for (size_t i = 0; i < m; i++) {
    const gw_sketch_buf_t *b = &layers[i].grad;
    sl->layers[i] = layers[i];
    if (layers[i].tag) {
      sl->layers[i].tag = t;
      t = stpcpy(t, layers[i].tag) + 1;
    }
    if (b->data == NULL) continue;
    size_t len = b->n * elem_size(b->dtype);
    bytes += (ALIGN - bytes % ALIGN) % ALIGN;
    if (len) memcpy(sl->mem + bytes, b->data, len);
    sl->layers[i].grad.data = sl->mem + bytes;
    bytes += len;
  }
  sl->m = m;
  sl->step = step;
  sl->has_extras = extras != NULL;
  if (extras) sl->extras = *extras;
  pthread_mutex_lock(&w->mu);
  uint64_t sub = atomic_load_explicit(&w->sub, memory_order_relaxed);
  w->at[sub % GW_WORKER_DEPTH] = index;
  atomic_store_explicit(&w->sub, sub + 1, memory_order_release);
  if (w->sleeping) pthread_cond_signal(&w->go); /* else it spins and sees sub */
  pthread_mutex_unlock(&w->mu);
  return 0;
}

int gw_worker_wait(gw_worker_t *w, uint64_t *step, double *z, double *norms, uint8_t *status) {
  size_t k, m;
  slot_t *sl;
  if (w == NULL) return GW_EINVAL;
  if (gw_worker_pending(w) == 0) return GW_ENOTFOUND;
  pthread_mutex_lock(&w->mu);
  while (w->fin <= w->col) pthread_cond_wait(&w->done, &w->mu);
  sl = &w->slot[w->at[w->col % GW_WORKER_DEPTH]];
  pthread_mutex_unlock(&w->mu);
  /* published: the thread has moved on; this outcome is ours */
  k = w->k;
  m = sl->m;
  if (step) *step = sl->step;
  if (z) memcpy(z, sl->z, (m + 1) * k * sizeof *z);
  if (norms) memcpy(norms, sl->norms, (m + 1) * sizeof *norms);
  if (status) memcpy(status, sl->status, (m + 1) * sizeof *status);
  w->last = (int)(sl - w->slot);
  w->col++; /* the slot is free again (its outcome stays until it is reused) */
  return sl->rc;
}

int gw_worker_last(const gw_worker_t *w, uint64_t *step, double *z) {
  const slot_t *sl;
  if (w == NULL || gw_worker_pending(w) != 0) return GW_EINVAL;
  if (w->last < 0) return GW_ENOTFOUND;
  /* nothing in flight: no submit has reused the slot since it was collected */
  sl = &w->slot[w->last];
  if (step) *step = sl->step;
  if (z) memcpy(z, sl->z, (sl->m + 1) * w->k * sizeof *z);
  return 0;
}
