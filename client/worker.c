/* worker.c — whole-model steps published from a background thread.
 *
 * A worker owns one thread, a staging copy of one step (every layer's
 * gradient bytes, the gw_layer_t array pointing into them, the tags and the
 * extras) and the outcome of that step (z, norms, status, rc). The caller's
 * thread copies (gw_worker_submit), the worker's thread sketches and sends
 * (gw_publisher_publish_layers on the copy), and the caller collects the
 * outcome (gw_worker_wait). The training loop thus pays for a memcpy of its
 * gradients instead of the sketch, which runs beside the next step on a
 * core the training does not use.
 *
 * NOTES ON THE DESIGN OF THE WORKER
 *
 * States (st: written under mu, read without it only by the spinning
 * thread and gw_worker_pending), moved only by the named calls:
 *
 *     IDLE --submit--> QUEUED --thread: published--> DONE --wait--> IDLE
 *
 * submit refuses anything but IDLE, so at most one step is in flight and
 * the staging buffers are never written while the thread reads them: the
 * thread reads them only in QUEUED, the caller writes them only in IDLE.
 * The results are written by the thread in QUEUED and read by the caller
 * in DONE. The publisher is touched only by the thread in QUEUED (the
 * caller promises not to touch it then; gradwatch.h).
 *
 * Memory: the staging area grows to the largest step submitted (one copy
 * of the model's gradient, e.g. 37 MB for 9.3M float32 parameters) and is
 * kept for the next steps; nothing is allocated per step once it has
 * grown. A failed growth leaves the old buffers and the state untouched.
 *
 * Between steps the thread spins for SPIN_NS, then sleeps on go; submit
 * signals go only when it sleeps.
 *
 * gw_worker_free lets the thread finish the step in flight (its messages
 * are sent) before it stops: a training script that ends right after its
 * last submit does not lose that step.
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

enum { IDLE, QUEUED, DONE };

#define ALIGN 64u /* each layer's copy starts on a cache line */

struct gw_worker_s {
  gw_publisher_t *pub; /* borrowed; the thread's while QUEUED */
  size_t k;            /* the publisher's sketch length */
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t go;   /* IDLE -> QUEUED, or stop */
  pthread_cond_t done; /* QUEUED -> DONE */
  _Atomic int st;      /* IDLE, QUEUED or DONE; written under mu */
  _Atomic int stop;    /* gw_worker_free asks the thread to end */
  int sleeping;        /* the thread waits on go (under mu) */

  /* the staged step (written by submit in IDLE, read by the thread) */
  uint64_t step;
  int has_all, has_extras;
  gw_extras_t extras;
  size_t m;
  gw_layer_t *layers; /* m entries; grad.data into mem, tag into tags */
  unsigned char *mem; /* the gradients' bytes */
  char *tags;         /* all_tag (or an empty string) then the layers' tags */
  size_t lcap, mcap, tcap; /* bytes held by layers, mem, tags */

  /* its outcome (written by the thread, read by wait in DONE) */
  int rc;
  double *z, *norms; /* (m + 1) × k, m + 1 */
  uint8_t *status;   /* m + 1 */
  size_t zcap, ncap, scap; /* bytes held by z, norms, status */
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

/* Spin until a step is queued, free is called, or ns have passed. */
static void spin(gw_worker_t *w, int64_t ns) {
  int64_t end = mono_ns() + ns;
  for (unsigned i = 1;; i++) {
    if (atomic_load_explicit(&w->st, memory_order_acquire) == QUEUED ||
        atomic_load_explicit(&w->stop, memory_order_relaxed))
      return;
    if ((i & 255) == 0 && mono_ns() >= end) return;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }
}

static void *run(void *arg) {
  gw_worker_t *w = arg;
  int64_t last = 0, gap = SPIN_NS; /* when the last step came, the interval before it */
#ifdef SCHED_IDLE
  /* Run only on a CPU nothing else wants: never preempt the training
   * thread. Best effort (a failure leaves the default policy). */
  struct sched_param sp = {0};
  (void)pthread_setschedparam(pthread_self(), SCHED_IDLE, &sp);
#endif
  pthread_mutex_lock(&w->mu);
  for (;;) {
    if (w->st != QUEUED && !w->stop) {
      pthread_mutex_unlock(&w->mu);
      if (gap < SPIN_NS) spin(w, 2 * gap);
      pthread_mutex_lock(&w->mu);
      while (w->st != QUEUED && !w->stop) {
        w->sleeping = 1;
        pthread_cond_wait(&w->go, &w->mu);
        w->sleeping = 0;
      }
    }
    if (w->st != QUEUED) break; /* stop, nothing in flight */
    int64_t t = mono_ns();
    gap = last ? t - last : SPIN_NS;
    last = t;
    pthread_mutex_unlock(&w->mu);
    int rc = gw_publisher_publish_layers(w->pub, w->step, w->has_all ? w->tags : NULL,
                                         w->layers, w->m, w->has_extras ? &w->extras : NULL,
                                         w->z, w->norms, w->status);
    pthread_mutex_lock(&w->mu);
    w->rc = rc;
    w->st = DONE;
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
  w->st = IDLE;
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
  pthread_join(w->thread, NULL); /* the thread finishes a QUEUED step first */
  pthread_cond_destroy(&w->done);
  pthread_cond_destroy(&w->go);
  pthread_mutex_destroy(&w->mu);
  free(w->layers);
  free(w->mem);
  free(w->tags);
  free(w->z);
  free(w->norms);
  free(w->status);
  free(w);
}

int gw_worker_pending(const gw_worker_t *w) {
  return w != NULL && atomic_load(&w->st) != IDLE;
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

int gw_worker_submit(gw_worker_t *w, uint64_t step, const char *all_tag,
                     const gw_layer_t *layers, size_t m, const gw_extras_t *extras) {
  size_t bytes = 0, tbytes = all_tag ? strlen(all_tag) + 1 : 1, k;
  int rc;
  if (w == NULL || gw_worker_pending(w)) return GW_EINVAL;
  if ((rc = gw_publisher_check_layers(w->pub, step, all_tag, layers, m, extras)) != 0) return rc;
  /* Only the caller's thread moves IDLE -> QUEUED, so the state stays IDLE
   * from here on and the staging buffers are the caller's. */
  for (size_t i = 0; i < m; i++) {
    const gw_sketch_buf_t *b = &layers[i].grad;
    if (layers[i].tag) tbytes += strlen(layers[i].tag) + 1;
    if (b->data == NULL) continue;
    size_t len = b->n * elem_size(b->dtype), pad = (ALIGN - bytes % ALIGN) % ALIGN;
    if (len / elem_size(b->dtype) != b->n || bytes > SIZE_MAX - pad - len) return GW_ENOMEM;
    bytes += pad + len;
  }
  k = w->k; /* (m + 1)·k doubles fit: checked above */
  if ((rc = reserve((void **)&w->mem, &w->mcap, bytes ? bytes : 1)) != 0 ||
      (rc = reserve((void **)&w->layers, &w->lcap, (m ? m : 1) * sizeof *w->layers)) != 0 ||
      (rc = reserve((void **)&w->tags, &w->tcap, tbytes)) != 0 ||
      (rc = reserve((void **)&w->z, &w->zcap, (m + 1) * k * sizeof *w->z)) != 0 ||
      (rc = reserve((void **)&w->norms, &w->ncap, (m + 1) * sizeof *w->norms)) != 0 ||
      (rc = reserve((void **)&w->status, &w->scap, (m + 1) * sizeof *w->status)) != 0)
    return rc;
  /* the copy: the only work left on the caller's thread */
  char *t = w->tags;
  w->has_all = all_tag != NULL;
  if (all_tag) t = stpcpy(t, all_tag) + 1;
  else *t++ = '\0';
  bytes = 0;
  for (size_t i = 0; i < m; i++) {
    const gw_sketch_buf_t *b = &layers[i].grad;
    w->layers[i] = layers[i];
    if (layers[i].tag) {
      w->layers[i].tag = t;
      t = stpcpy(t, layers[i].tag) + 1;
    }
    if (b->data == NULL) continue;
    size_t len = b->n * elem_size(b->dtype);
    bytes += (ALIGN - bytes % ALIGN) % ALIGN;
    if (len) memcpy(w->mem + bytes, b->data, len);
    w->layers[i].grad.data = w->mem + bytes;
    bytes += len;
  }
  w->m = m;
  w->step = step;
  w->has_extras = extras != NULL;
  if (extras) w->extras = *extras;
  pthread_mutex_lock(&w->mu);
  atomic_store_explicit(&w->st, QUEUED, memory_order_release);
  if (w->sleeping) pthread_cond_signal(&w->go); /* else it spins and sees st */
  pthread_mutex_unlock(&w->mu);
  return 0;
}

int gw_worker_wait(gw_worker_t *w, uint64_t *step, double *z, double *norms, uint8_t *status) {
  size_t k, m;
  if (w == NULL) return GW_EINVAL;
  pthread_mutex_lock(&w->mu);
  if (w->st == IDLE) {
    pthread_mutex_unlock(&w->mu);
    return GW_ENOTFOUND;
  }
  while (w->st == QUEUED) pthread_cond_wait(&w->done, &w->mu);
  pthread_mutex_unlock(&w->mu);
  /* DONE: the thread is back waiting for QUEUED; the results are ours */
  k = w->k;
  m = w->m;
  if (step) *step = w->step;
  if (z) memcpy(z, w->z, (m + 1) * k * sizeof *z);
  if (norms) memcpy(norms, w->norms, (m + 1) * sizeof *norms);
  if (status) memcpy(status, w->status, (m + 1) * sizeof *status);
  int rc = w->rc;
  pthread_mutex_lock(&w->mu);
  w->st = IDLE;
  pthread_mutex_unlock(&w->mu);
  return rc;
}
