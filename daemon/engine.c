/* engine.c — per-stream rolling windows and the math of docs/CONTRACT.md §2.
 *
 * NOTES ON THE DESIGN OF THE ENGINE
 *
 * Streams. A stream is (run, tag). The engine finds it through an
 * open-addressing hash table (linear probing, load <= 1/2, backward-shift
 * deletion so there are no tombstones) whose slots hold the stream's id and
 * 32 bits of its hash. Ids index e->streams[]; an id is handed out once and
 * stays the stream's until gw_engine_stream_drop, after which it may be
 * reused. Run and tag are copied into the stream's own block.
 *
 * Three allocations per stream. The block, allocated when the stream is
 * created, whose size depends only on (k, W) (see layout()):
 *
 *   stream_t | gram W×W | zprev k | ema k | r1 W | re W | zz W | rl W | names
 *
 * then the ring, which grows as the window fills (its rows double, from 1
 * up to W, when message n needs slot n−1; realloc keeps the rows, so the
 * values are those of a ring allocated whole), and the FD sketch's
 * (ℓ−1)×k floats (daemon/fdsketch.h), allocated at the stream's first shrink (n = W). A
 * stream that never sends W messages never holds W×k doubles. Every byte
 * of the three (st->bytes) is charged to the engine's budget (shared by the
 * daemon's workers, an atomic counter) before it is allocated; a charge
 * that would pass the limit refuses the message with GW_EBUDGET and leaves
 * the stream as it was (it may have grown capacity, never values). A
 * dropped stream gives its bytes back. The engine's own scratch (the FD
 * shrink's float64 copies, sized for the largest k seen) is not stream
 * state: a fixed overhead per engine of at most 2·(ℓ−1)·max_k doubles.
 *
 * Message n of a stream (n = 0, 1, 2, … in accepted order) writes its
 * increment d_n = z_n − z_{n−1} into ring slot (n−1) mod W, so the window
 * J_n = {max(1, n−W+1), …, n} is exactly the filled slots 0..|J_n|−1. The
 * per-slot scalars are r1 = ‖d_n‖² (one-step residual), re = ‖z_n − e_{n−1}‖²
 * (EMA residual), rl = ‖d_n − d_{n−1}‖² (the linear predictor's residual:
 * z_n − (2z_{n−1} − z_{n−2}) = d_n − d_{n−1}, with d_{n−1} read from the
 * ring; rl = ‖d_1‖² at n = 1, where m_1 = z_0) and zz = ‖z_n‖². Windowed sums are recomputed from those W
 * scalars on every point, so nothing drifts; cumulative sums since n = 1 are
 * running (Neumaier-compensated) sums. gram[a][b] = d_a·d_b by slot; when d_n
 * enters slot s, row and column s are overwritten with one dgemv against the
 * ring (O(W·k)); the rest of the matrix is untouched. Slots are not in time
 * order, but a permutation does not change eigenvalues.
 *
 * Stream states: absent → (first message, n = 0: store z_0 = e_0, no point)
 * → live (every later message yields a point) → absent
 * (gw_engine_stream_drop). A rejected message never changes a stream: every
 * check (limits, parameters, step order, NaN/Inf) and the residual norms are
 * done before the first write.
 *
 * Rank fields. The singular values of the k×|J| increment matrix H are the
 * square roots of the eigenvalues of the |J|×|J| Gram matrix H^T H, so the
 * engine reduces a copy of the Gram matrix to tridiagonal form (LAPACK
 * dsytrd, O(|J|³)) and takes its eigenvalues with dsterf (O(|J|²), but a
 * latency-bound chain of divisions: about half the time at W = 64) instead
 * of an SVD of H (O(k·|J|²)): ~3x cheaper per recompute at k = 256, W = 64
 * (bench/RESULTS.md). That costs accuracy only for singular values far below
 * σ_1: an eigenvalue carries an absolute error of about |J|·eps·σ_1², so σ_i
 * is good to ~1e-8 relative while σ_i/σ_1 >~ 1e-3 and to ~1e-8·σ_1 absolute
 * below that. Tiny negative eigenvalues (rounding) are clamped to 0. The
 * eigen-solve is the O(W³) part of a message, hence rank_every: rank fields
 * are recomputed at n = 1, 1 + R, 1 + 2R, … and carried in between, with
 * rank_step naming the step they belong to.
 *
 * Predictable rank and its tie rule: with λ_1 ≥ … ≥ λ_m the clamped
 * eigenvalues, c_r = λ_1 + … + λ_r summed in that order and T = c_m,
 * r*(ε) is the smallest r with the double c_r / T ≥ 1 − ε, where 1 − ε is the
 * double nearest 0.9 (0.99). At an exact tie (c_r / T equal to that double)
 * the smaller r wins. Since c_m / T = 1 the search always ends at r <= m.
 * H = 0 (trace of the Gram matrix exactly 0): ranks 0, stable_rank and
 * tail_energy NAN, sigma all 0.
 *
 * Magnitudes. A component with |z_i| > 1e60 is rejected like NaN/Inf
 * (GW_ENONFINITE): squares of such values could overflow the sums to Inf.
 * Every wire dtype (f32, f16, bf16) is far below that bound.
 *
 * κ is NAN whenever its denominator Σ‖z_j‖² is 0: 0/0, and x/0 as
 * well, since the value is meaningless and JSON has no infinity.
 *
 * Whole-run rank: Frequent Directions (daemon/fdsketch.c has the
 * algorithm, its bound and its cost). The buffer of the "doubled" variant
 * is the ring itself: the increments d_{n−W+1..n} are all still in the ring
 * when n is a multiple of W, so at exactly those messages the engine hands
 * the ring and its Gram matrix (already kept for the windowed rank) to
 * gw_fd_shrink — no memory beyond the sketch's ℓ−1 float rows. The run
 * fields come from that shrink, against the exact total T = Σ_{j≤n} ‖d_j‖²
 * (the cumulative one-step sum), so they are refreshed every W messages,
 * whatever rank_every is: a refresh between shrinks needs the eigenvalues
 * of [B; the pending increments] (up to 126×126 at ℓ = W = 64), which
 * would cost more per message than the whole rest of the engine at
 * rank_every = 8 (bench/RESULTS.md). Before the first shrink (n < W) the
 * whole run is the window, and the run fields are the window's, copied at
 * each rank recompute (ranks capped at ℓ). rank_run_step names the step.
 */
#include "engine.h"

#include <assert.h>
#include <stddef.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>
#include <lapacke.h>

#include "fdsketch.h"
#include "sink.h"

#define MAG_MAX 1e60        /* larger |z_i| rejected as GW_ENONFINITE */
#define WINDOW_MAX 65536u   /* sanity bound on W */
#define NAME_CAP (GW_PROTO_NAME_MAX + 1)

/* Neumaier-compensated running sum. */
typedef struct {
  double s, c;
} ksum_t;

static void ksum_add(ksum_t *k, double x) {
  double t = k->s + x;
  if (fabs(k->s) >= fabs(x))
    k->c += (k->s - t) + x;
  else
    k->c += (x - t) + k->s;
  k->s = t;
}

static double ksum_get(const ksum_t *k) { return k->s + k->c; }

/* The rank-derived part of a point, carried between recomputes. */
typedef struct {
  uint32_t rank_90, rank_99;
  double stable_rank;
  double tail[GW_TOP_SIGMA];
  double sigma[GW_TOP_SIGMA];
  double tail_kappa_90;
  uint64_t rank_step;
} rankf_t;

/* The whole-run rank fields, carried between shrinks. */
typedef struct {
  uint32_t rank_90, rank_99;
  double sigma[GW_TOP_SIGMA];
  uint64_t step;
} runf_t;

typedef struct stream_s {
  uint32_t id;
  uint32_t hash; /* low 32 bits of the key hash, also stored in the table */
  uint32_t k;
  uint8_t kind, s;
  uint64_t seed;
  uint64_t n_msgs; /* messages of this window; the next one has index n = n_msgs */
  uint64_t last_step;
  int64_t last_wall_ns;
  int64_t last_recv_ns;  /* daemon clock: what retirement measures */
  uint64_t incarnation;  /* of the current window */
  int has_last;          /* last_step is meaningful (also for a stub) */
  int stub_reason;       /* a stub (n_msgs = 0, no window): restart reason */
  ksum_t cum_r1, cum_re, cum_zz, cum_rl; /* sums over j = 1..n */
  rankf_t rank;
  runf_t whole;
  uint32_t ring_rows; /* rows allocated in ring (0..W), grown as the window fills */
  size_t bytes;       /* block + ring + fd: what this stream charged */
  gw_fd_t fd;         /* whole-run sketch of d_1..d_n (fdsketch.h) */
  uint16_t run_len, tag_len;
  char *run, *tag; /* NUL-terminated, inside the block */
  double *ring;    /* ring_rows (<= W) rows of k: slot (j−1) mod W holds d_j */
  double *gram;    /* W×W, symmetric, gram[a*W + b] = d_a·d_b */
  double *zprev;   /* z_{n−1} */
  double *ema;     /* e_{n−1} */
  double *r1;      /* per slot: ‖d_j‖² */
  double *re;      /* per slot: ‖z_j − e_{j−1}‖² */
  double *zz;      /* per slot: ‖z_j‖² */
  double *rl;      /* per slot: ‖d_j − d_{j−1}‖² (linear predictor) */
} stream_t;

typedef struct {
  uint32_t id1; /* stream id + 1; 0 marks an empty slot */
  uint32_t hash;
} tslot_t;

struct gw_engine_s {
  gw_engine_config_t cfg;
  uint64_t hash_seed;
  /* streams by id; ids below next_id are either live or on the free list */
  stream_t **streams;
  uint32_t streams_cap, next_id;
  uint32_t *free_ids;
  uint32_t n_free;
  size_t count;
  tslot_t *table; /* table_cap slots, a power of two */
  size_t table_cap;
  /* scratch shared by all streams (the engine is single-threaded) */
  double *zbuf; /* gw_engine_push: payload as float64 */
  size_t zbuf_cap;
  double *gcopy; /* W×W: the reduction to tridiagonal destroys its input */
  double *evals; /* W: the diagonal, then the eigenvalues */
  double *offd;  /* W: the off-diagonal */
  double *tau;   /* W: Householder scalars (unused) */
  double *work;  /* W: dsytrd's workspace */
  gw_fd_work_t fdw; /* FD shrink scratch, blocks of W rows */
  size_t held; /* bytes of this engine's streams (charged to cfg.budget) */
};

/* ---- configuration ------------------------------------------------------ */

void gw_engine_config_default(gw_engine_config_t *cfg) {
  cfg->window = 64;
  cfg->rank_every = 8; /* bench/RESULTS.md, "Engine" */
  cfg->ema_beta = 0.9;
  cfg->max_streams = 10000;
  cfg->max_k = GW_PROTO_K_MAX;
  cfg->fd_rows = 64;
  cfg->budget = NULL;
}

static int config_ok(const gw_engine_config_t *c) {
  return c->window >= 2 && c->window <= WINDOW_MAX && c->rank_every >= 1 &&
         c->ema_beta >= 0.0 && c->ema_beta < 1.0 && c->max_streams >= 1 &&
         c->max_k >= 1 && c->max_k <= GW_PROTO_K_MAX && c->fd_rows >= 2 &&
         c->fd_rows <= GW_FD_ROWS_MAX;
}

/* ---- the per-stream block ----------------------------------------------- */

typedef struct {
  size_t gram, zprev, ema, r1, re, zz, rl, names, total;
} layout_t;

static size_t al64(size_t x) { return (x + 63) & ~(size_t)63; }

static void layout(uint32_t k, uint32_t w, layout_t *L) {
  size_t off = al64(sizeof(stream_t));
  L->gram = off;
  off += al64((size_t)w * w * sizeof(double));
  L->zprev = off;
  off += al64((size_t)k * sizeof(double));
  L->ema = off;
  off += al64((size_t)k * sizeof(double));
  L->r1 = off;
  off += (size_t)w * sizeof(double);
  L->re = off;
  off += (size_t)w * sizeof(double);
  L->zz = off;
  off += (size_t)w * sizeof(double);
  L->rl = off;
  off += al64((size_t)w * sizeof(double));
  L->names = off;
  off += 2 * NAME_CAP;
  L->total = al64(off);
}

size_t gw_engine_stream_bytes(uint32_t k, uint32_t window) {
  return gw_engine_stream_bytes_fd(k, window, 64);
}

static size_t ring_bytes(uint32_t rows, uint32_t k) {
  return al64((size_t)rows * k * sizeof(double));
}

size_t gw_engine_stream_bytes_fd(uint32_t k, uint32_t window, uint32_t ell) {
  layout_t L;
  layout(k, window, &L);
  /* plus its share of the index: two table slots (load <= 1/2), the id
   * pointer and a free-list entry */
  return L.total + ring_bytes(window, k) + gw_fd_bytes_max(ell < 2 ? 2 : ell, k) +
         2 * sizeof(tslot_t) + sizeof(stream_t *) + sizeof(uint32_t);
}

/* ---- the memory budget --------------------------------------------------- */

void gw_engine_budget_init(gw_engine_budget_t *b, uint64_t limit) {
  atomic_init(&b->used, 0);
  b->limit = limit;
}

uint64_t gw_engine_budget_used(gw_engine_budget_t *b) {
  return atomic_load_explicit(&b->used, memory_order_relaxed);
}

/* Charge n bytes to e's budget: 0, or GW_EBUDGET (nothing charged). */
static int charge(gw_engine_t *e, size_t n) {
  gw_engine_budget_t *b = e->cfg.budget;
  if (b) {
    uint64_t cur = atomic_load_explicit(&b->used, memory_order_relaxed);
    do {
      if (b->limit && (n > b->limit || cur > b->limit - n)) return GW_EBUDGET;
    } while (!atomic_compare_exchange_weak_explicit(&b->used, &cur, cur + n,
                                                    memory_order_relaxed, memory_order_relaxed));
  }
  e->held += n;
  return 0;
}

static void uncharge(gw_engine_t *e, size_t n) {
  if (e->cfg.budget) atomic_fetch_sub_explicit(&e->cfg.budget->used, n, memory_order_relaxed);
  e->held -= n;
}

size_t gw_engine_bytes(const gw_engine_t *e) { return e ? e->held : 0; }

static void stream_free(gw_engine_t *e, stream_t *st) {
  if (!st) return;
  uncharge(e, st->bytes);
  free(st->ring);
  gw_fd_free(&st->fd);
  free(st);
}

/* Make the ring hold at least `need` rows (<= W): the rows double, so a
 * window filled one message at a time is copied O(log W) times. The rows
 * in use are kept. GW_EBUDGET or GW_ENOMEM leave the stream as it was. */
static int ring_reserve(gw_engine_t *e, stream_t *st, uint32_t need) {
  if (need <= st->ring_rows) return 0;
  const uint32_t w = e->cfg.window, k = st->k;
  uint32_t rows = st->ring_rows ? 2 * st->ring_rows : 1;
  if (rows < need) rows = need;
  if (rows > w) rows = w;
  size_t old = st->ring_rows ? ring_bytes(st->ring_rows, k) : 0, nb = ring_bytes(rows, k);
  int rc = charge(e, nb - old);
  if (rc) return rc;
  double *r = aligned_alloc(64, nb);
  if (!r) {
    uncharge(e, nb - old);
    return GW_ENOMEM;
  }
  if (st->ring_rows) memcpy(r, st->ring, (size_t)st->ring_rows * k * sizeof(double));
  free(st->ring);
  st->ring = r;
  st->ring_rows = rows;
  st->bytes += nb - old;
  return 0;
}

/* The FD sketch's rows, allocated before the stream's first shrink. */
static int fd_alloc(gw_engine_t *e, stream_t *st) {
  if (st->fd.b) return 0;
  size_t nb = gw_fd_bytes_max(st->fd.ell, st->k);
  int rc = charge(e, nb);
  if (rc) return rc;
  if ((rc = gw_fd_reserve(&st->fd))) {
    uncharge(e, nb);
    return rc;
  }
  st->bytes += nb;
  return 0;
}

/* What a stream block is made from: its identity and sketch parameters. */
typedef struct {
  const char *run, *tag;
  size_t run_len, tag_len;
  uint32_t k;
  uint8_t kind, s;
  uint64_t seed;
} sparams_t;

static void params_of_msg(const gw_msg_t *m, sparams_t *p) {
  p->run = m->run;
  p->tag = m->tag;
  p->run_len = m->run_len;
  p->tag_len = m->tag_len;
  p->k = m->k;
  p->kind = m->kind;
  p->s = m->s;
  p->seed = m->seed;
}

/* A new stream block (no ring, no sketch yet), charged to the budget.
 * GW_EBUDGET or GW_ENOMEM. */
static int stream_new(gw_engine_t *e, const sparams_t *m, uint32_t hash, stream_t **out) {
  layout_t L;
  layout(m->k, e->cfg.window, &L);
  int rc = charge(e, L.total);
  if (rc) return rc;
  char *b = aligned_alloc(64, L.total);
  if (!b) {
    uncharge(e, L.total);
    return GW_ENOMEM;
  }
  memset(b, 0, L.total);
  stream_t *st = (stream_t *)b;
  st->hash = hash;
  st->k = m->k;
  st->kind = m->kind;
  st->s = m->s;
  st->seed = m->seed;
  st->bytes = L.total;
  st->gram = (double *)(b + L.gram);
  st->zprev = (double *)(b + L.zprev);
  st->ema = (double *)(b + L.ema);
  st->r1 = (double *)(b + L.r1);
  st->re = (double *)(b + L.re);
  st->zz = (double *)(b + L.zz);
  st->rl = (double *)(b + L.rl);
  (void)gw_fd_init(&st->fd, e->cfg.fd_rows, m->k); /* both checked: config_ok, k >= 1 */
  st->run = b + L.names;
  st->tag = b + L.names + NAME_CAP;
  memcpy(st->run, m->run, m->run_len);
  memcpy(st->tag, m->tag, m->tag_len);
  st->run_len = (uint16_t)m->run_len;
  st->tag_len = (uint16_t)m->tag_len;
  *out = st;
  return 0;
}

/* ---- the index: hash table (run, tag) → id ------------------------------ */

static uint32_t key_hash(uint64_t seed, const char *run, size_t rl,
                         const char *tag, size_t tl) {
  uint64_t h = 0xcbf29ce484222325ull ^ seed; /* FNV-1a, seeded */
  for (size_t i = 0; i < rl; i++) h = (h ^ (unsigned char)run[i]) * 0x100000001b3ull;
  h = (h ^ 0x100u) * 0x100000001b3ull; /* separator no byte can equal */
  for (size_t i = 0; i < tl; i++) h = (h ^ (unsigned char)tag[i]) * 0x100000001b3ull;
  h ^= h >> 29;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 32;
  return (uint32_t)h;
}

/* Table position of the key, or of the empty slot where it would go. */
static size_t table_find(const gw_engine_t *e, uint32_t hash, const char *run,
                         size_t rl, const char *tag, size_t tl) {
  size_t mask = e->table_cap - 1;
  for (size_t i = hash & mask;; i = (i + 1) & mask) {
    const tslot_t *t = &e->table[i];
    if (t->id1 == 0) return i;
    if (t->hash != hash) continue;
    const stream_t *st = e->streams[t->id1 - 1];
    if (st->run_len == rl && st->tag_len == tl && memcmp(st->run, run, rl) == 0 &&
        memcmp(st->tag, tag, tl) == 0)
      return i;
  }
}

static int table_grow(gw_engine_t *e) {
  size_t cap = e->table_cap * 2;
  tslot_t *t = calloc(cap, sizeof *t);
  if (!t) return GW_ENOMEM;
  for (size_t i = 0; i < e->table_cap; i++) {
    if (e->table[i].id1 == 0) continue;
    size_t j = e->table[i].hash & (cap - 1);
    while (t[j].id1 != 0) j = (j + 1) & (cap - 1);
    t[j] = e->table[i];
  }
  free(e->table);
  e->table = t;
  e->table_cap = cap;
  return 0;
}

/* Remove slot i; later entries of the probe run move back into the hole. */
static void table_remove(gw_engine_t *e, size_t i) {
  size_t mask = e->table_cap - 1;
  e->table[i].id1 = 0;
  for (size_t j = (i + 1) & mask; e->table[j].id1 != 0; j = (j + 1) & mask) {
    size_t home = e->table[j].hash & mask;
    /* the entry at j may fill hole i unless its home lies cyclically in (i, j] */
    int stays = (i <= j) ? (home > i && home <= j) : (home > i || home <= j);
    if (stays) continue;
    e->table[i] = e->table[j];
    e->table[j].id1 = 0;
    i = j;
  }
}

/* ---- engine lifetime ---------------------------------------------------- */

gw_engine_t *gw_engine_new(const gw_engine_config_t *cfg) {
  if (!cfg || !config_ok(cfg)) return NULL;
  gw_engine_t *e = calloc(1, sizeof *e);
  if (!e) return NULL;
  e->cfg = *cfg;
  /* the address varies from run to run (ASLR), which keeps chosen-collision
   * floods of stream names from being computed in advance */
  e->hash_seed = (uint64_t)(uintptr_t)e * 0x9e3779b97f4a7c15ull;
  e->table_cap = 16;
  e->table = calloc(e->table_cap, sizeof *e->table);
  uint32_t w = cfg->window;
  e->gcopy = malloc((size_t)w * w * sizeof(double));
  e->evals = malloc((size_t)w * sizeof(double));
  e->offd = malloc((size_t)w * sizeof(double));
  e->tau = malloc((size_t)w * sizeof(double));
  e->work = malloc((size_t)w * sizeof(double));
  if (!e->table || !e->gcopy || !e->evals || !e->offd || !e->tau || !e->work)
    goto fail;
  if (gw_fd_work_init(&e->fdw, cfg->fd_rows, w) != 0) goto fail;
  return e;
fail:
  gw_engine_free(e);
  return NULL;
}

void gw_engine_free(gw_engine_t *e) {
  if (!e) return;
  for (uint32_t id = 0; id < e->next_id; id++) stream_free(e, e->streams[id]);
  free(e->streams);
  free(e->free_ids);
  free(e->table);
  free(e->zbuf);
  free(e->gcopy);
  free(e->evals);
  free(e->offd);
  free(e->tau);
  free(e->work);
  gw_fd_work_free(&e->fdw);
  free(e);
}

/* Give st an id and enter it in the table at position pos (from
 * table_find). On failure nothing is changed. */
static int stream_register(gw_engine_t *e, stream_t *st, size_t pos) {
  if (2 * (e->count + 1) > e->table_cap) {
    int rc = table_grow(e);
    if (rc) return rc;
    pos = table_find(e, st->hash, st->run, st->run_len, st->tag, st->tag_len);
  }
  uint32_t id;
  if (e->n_free > 0) {
    id = e->free_ids[e->n_free - 1];
  } else {
    if (e->next_id == e->streams_cap) {
      uint32_t cap = e->streams_cap ? 2 * e->streams_cap : 16;
      stream_t **s = realloc(e->streams, cap * sizeof *s);
      if (!s) return GW_ENOMEM;
      e->streams = s;
      uint32_t *f = realloc(e->free_ids, cap * sizeof *f);
      if (!f) return GW_ENOMEM;
      e->free_ids = f;
      e->streams_cap = cap;
    }
    id = e->next_id;
  }
  if (e->n_free > 0)
    e->n_free--;
  else
    e->next_id++;
  st->id = id;
  e->streams[id] = st;
  e->table[pos].id1 = id + 1;
  e->table[pos].hash = st->hash;
  e->count++;
  return 0;
}

/* ---- rank fields -------------------------------------------------------- */

/* Eigenvalues of the m×m leading Gram block → rank fields. Returns 0, or
 * GW_EINVAL if LAPACK failed to converge (rf is then untouched). */
static int rank_compute(gw_engine_t *e, const stream_t *st, uint32_t m,
                        uint64_t step, double zw, rankf_t *rf) {
  uint32_t w = e->cfg.window;
  double trace = 0;
  for (uint32_t i = 0; i < m; i++) trace += st->gram[(size_t)i * w + i];
  rankf_t r;
  memset(&r, 0, sizeof r);
  r.rank_step = step;
  r.tail_kappa_90 = zw != 0 ? 0.0 : NAN;
  if (trace == 0) { /* H = 0 */
    r.stable_rank = NAN;
    for (int i = 0; i < GW_TOP_SIGMA; i++) r.tail[i] = NAN;
    *rf = r;
    return 0;
  }
  /* pack the upper triangle, column-major, leading dimension m */
  double *a = e->gcopy;
  for (uint32_t j = 0; j < m; j++)
    memcpy(a + (size_t)j * m, st->gram + (size_t)j * w, (j + 1) * sizeof(double));
  /* What dsyevd does for values only, minus its norm scaling (MAG_MAX keeps
   * the Gram matrix well inside range) and with the unblocked reduction
   * (lwork = m), which is ~25% faster than the blocked one at m = 64. */
  double *lam = e->evals;
  lapack_int info = LAPACKE_dsytrd_work(LAPACK_COL_MAJOR, 'U', (lapack_int)m, a,
                                        (lapack_int)m, lam, e->offd, e->tau,
                                        e->work, (lapack_int)m);
  if (info == 0) info = LAPACKE_dsterf_work((lapack_int)m, lam, e->offd);
  if (info != 0) return GW_EINVAL;
  /* ascending → descending, clamp rounding negatives */
  for (uint32_t i = 0; i < m / 2; i++) {
    double t = lam[i];
    lam[i] = lam[m - 1 - i];
    lam[m - 1 - i] = t;
  }
  for (uint32_t i = 0; i < m; i++)
    if (lam[i] < 0) lam[i] = 0;
  double total = 0;
  for (uint32_t i = 0; i < m; i++) total += lam[i];
  if (total == 0) { /* only possible if every eigenvalue rounded below 0 */
    r.stable_rank = NAN;
    for (int i = 0; i < GW_TOP_SIGMA; i++) r.tail[i] = NAN;
    *rf = r;
    return 0;
  }
  /* ranks: smallest r with c_r / T >= 1 − ε (see the tie rule above) */
  double c = 0;
  for (uint32_t i = 0; i < m; i++) {
    c += lam[i];
    double frac = c / total;
    if (r.rank_90 == 0 && frac >= 0.9) r.rank_90 = i + 1;
    if (frac >= 0.99) {
      r.rank_99 = i + 1;
      break;
    }
  }
  if (r.rank_90 == 0) r.rank_90 = m; /* unreachable: c_m / T = 1 */
  if (r.rank_99 == 0) r.rank_99 = m;
  r.stable_rank = total / lam[0];
  /* tail_energy_r = Σ_{i>r} λ_i / T, summed from the smallest λ up; it
   * stays 0 for r >= m */
  double tail = 0;
  for (uint32_t i = m; i-- > 1;) {
    tail += lam[i]; /* λ_{i+1} + … + λ_m in 1-based ranks, i.e. r = i */
    if (i <= GW_TOP_SIGMA) r.tail[i - 1] = tail / total;
    if (i == r.rank_90 && zw != 0) r.tail_kappa_90 = tail / zw;
  }
  for (uint32_t i = 0; i < GW_TOP_SIGMA && i < m; i++) r.sigma[i] = sqrt(lam[i]);
  *rf = r;
  return 0;
}

/* ---- whole-run rank: the Frequent Directions sketch --------------------- */

/* Shrink [B; ring] (n is a multiple of W, so every ring slot holds one of
 * the W increments not yet in the sketch) and set the run fields. On a
 * LAPACK failure the sketch and the run fields are unchanged (carried). */
static void fd_shrink(gw_engine_t *e, stream_t *st, uint64_t step) {
  const uint32_t w = e->cfg.window;
  gw_fd_fields_t f;
  if (gw_fd_shrink(&st->fd, &e->fdw, st->ring, w, st->k, st->gram, w, ksum_get(&st->cum_r1),
                   &f) != 0)
    return;
  st->whole.rank_90 = f.rank_90;
  st->whole.rank_99 = f.rank_99;
  memcpy(st->whole.sigma, f.sigma, sizeof st->whole.sigma);
  st->whole.step = step;
}

/* ---- ingest ------------------------------------------------------------- */

static int scalar_bad(const gw_msg_t *m, uint32_t flag, double v) {
  return (m->flags & flag) && !isfinite(v);
}

/* Start a fresh window in st (n = 0): same id, table slot and block (the
 * sketch parameters never change). */
static void stream_restart(stream_t *st) {
  memset(&st->cum_r1, 0, sizeof st->cum_r1);
  memset(&st->cum_re, 0, sizeof st->cum_re);
  memset(&st->cum_zz, 0, sizeof st->cum_zz);
  memset(&st->cum_rl, 0, sizeof st->cum_rl);
  memset(&st->rank, 0, sizeof st->rank);
  memset(&st->whole, 0, sizeof st->whole);
  gw_fd_reset(&st->fd); /* the whole-run sketch starts empty */
  /* ring, gram and the per-slot scalars need no clearing: a slot is
   * written before any sum or Gram entry reads it (see the design note) */
}

int gw_engine_push_at(gw_engine_t *e, const gw_msg_t *m, const double *z, int64_t recv_ns,
                      gw_point_t *out, gw_engine_event_t *ev) {
  if (!e || !m || !z || !m->run || !m->tag) return GW_EINVAL;
  if (m->run_len == 0 || m->run_len > GW_PROTO_NAME_MAX || m->tag_len == 0 ||
      m->tag_len > GW_PROTO_NAME_MAX)
    return GW_ENAME;
  if (m->k == 0 || m->k > e->cfg.max_k) return GW_EKLIMIT;
  if (scalar_bad(m, GW_HAS_GRAD_NORM, m->grad_norm) ||
      scalar_bad(m, GW_HAS_LOSS, m->loss) || scalar_bad(m, GW_HAS_LR, m->lr))
    return GW_ENONFINITE;

  uint32_t hash = key_hash(e->hash_seed, m->run, m->run_len, m->tag, m->tag_len);
  size_t pos = table_find(e, hash, m->run, m->run_len, m->tag, m->tag_len);
  stream_t *st = e->table[pos].id1 ? e->streams[e->table[pos].id1 - 1] : NULL;
  int restart = GW_RESTART_NONE; /* nonzero: this message starts a new window */
  if (st) {
    /* a stream keeps its sketch parameters, whatever the incarnation */
    if (st->k != m->k || st->kind != m->kind || st->s != m->s || st->seed != m->seed)
      return GW_EMISMATCH;
    if (m->incarnation != st->incarnation) {
      restart = GW_RESTART_INCARNATION; /* whatever its step */
    } else {
      if (st->has_last && m->step <= st->last_step) return GW_EORDER;
      if (st->n_msgs == 0) restart = st->stub_reason;
    }
  } else if (e->count >= e->cfg.max_streams) {
    return GW_ESTREAMS;
  }

  /* Pass 1, read-only: finiteness and the four squared norms. */
  const uint32_t k = m->k;
  double zz = 0, r1 = 0, re = 0, rl = 0;
  for (uint32_t i = 0; i < k; i++) {
    double v = z[i];
    if (!(fabs(v) <= MAG_MAX)) return GW_ENONFINITE; /* also catches NaN */
    zz += v * v;
  }
  int fresh = !st || restart != GW_RESTART_NONE || st->n_msgs == 0;
  if (!fresh) {
    const uint64_t n = st->n_msgs;
    /* d_{n−1}, still in the ring (W >= 2); at n = 1 the linear predictor is z_0 */
    const double *dp = n >= 2 ? st->ring + (size_t)((n - 2) % e->cfg.window) * k : NULL;
    for (uint32_t i = 0; i < k; i++) {
      double d = z[i] - st->zprev[i], f = z[i] - st->ema[i];
      double l = dp ? d - dp[i] : d;
      r1 += d * d;
      re += f * f;
      rl += l * l;
    }
    /* room for d_n in slot (n−1) mod W: the ring grows as the window fills */
    int rc = ring_reserve(e, st, (uint32_t)((n - 1) % e->cfg.window) + 1);
    if (rc) return rc;
    if (n % e->cfg.window == 0) { /* this message shrinks the FD sketch */
      if ((rc = fd_alloc(e, st))) return rc;
      if ((rc = gw_fd_work_reserve(&e->fdw, k))) return rc;
    }
  }

  if (fresh) { /* n = 0: a window begins, no point */
    gw_engine_event_t ev0 = {0};
    if (!st) {
      sparams_t p;
      params_of_msg(m, &p);
      int rc = stream_new(e, &p, hash, &st);
      if (rc) return rc;
      if ((rc = stream_register(e, st, pos))) {
        stream_free(e, st);
        return rc;
      }
      ev0.flags = GW_ENGINE_OPENED;
    } else {
      ev0.flags = GW_ENGINE_RESTARTED;
      ev0.reason = restart;
      ev0.prev_incarnation = st->incarnation;
      ev0.prev_last_step = st->has_last ? st->last_step : 0;
      stream_restart(st);
    }
    memcpy(st->zprev, z, k * sizeof(double));
    memcpy(st->ema, z, k * sizeof(double));
    st->n_msgs = 1;
    st->last_step = m->step;
    st->last_wall_ns = m->wall_ns;
    st->last_recv_ns = recv_ns;
    st->incarnation = m->incarnation;
    st->has_last = 1;
    st->stub_reason = GW_RESTART_NONE;
    ev0.stream_id = st->id;
    if (ev) *ev = ev0;
    return 0;
  }
  if (ev) {
    memset(ev, 0, sizeof *ev);
    ev->stream_id = st->id;
  }

  /* Pass 2: commit message n. */
  const uint32_t w = e->cfg.window;
  const double beta = e->cfg.ema_beta;
  const uint64_t n = st->n_msgs;
  const uint32_t slot = (uint32_t)((n - 1) % w);
  const uint32_t len = n < w ? (uint32_t)n : w; /* |J_n|: slots 0..len-1 */
  double *d = st->ring + (size_t)slot * k;
  for (uint32_t i = 0; i < k; i++) {
    d[i] = z[i] - st->zprev[i];
    st->ema[i] = beta * st->ema[i] + (1.0 - beta) * z[i];
  }
  memcpy(st->zprev, z, k * sizeof(double));
  st->r1[slot] = r1;
  st->re[slot] = re;
  st->zz[slot] = zz;
  st->rl[slot] = rl;
  ksum_add(&st->cum_r1, r1);
  ksum_add(&st->cum_re, re);
  ksum_add(&st->cum_zz, zz);
  ksum_add(&st->cum_rl, rl);
  st->n_msgs = n + 1;
  st->last_step = m->step;
  st->last_wall_ns = m->wall_ns;
  st->last_recv_ns = recv_ns;

  /* Gram row and column of the new slot: d_t · d_n for every t in J_n */
  double *row = st->gram + (size_t)slot * w;
  cblas_dgemv(CblasRowMajor, CblasNoTrans, (int)len, (int)k, 1.0, st->ring,
              (int)k, d, 1, 0.0, row, 1);
  for (uint32_t t = 0; t < len; t++) st->gram[(size_t)t * w + slot] = row[t];

  double p1 = 0, pe = 0, pl = 0, zw = 0;
  for (uint32_t t = 0; t < len; t++) {
    p1 += st->r1[t];
    pe += st->re[t];
    pl += st->rl[t];
    zw += st->zz[t];
  }

  if ((n - 1) % e->cfg.rank_every == 0) {
    (void)rank_compute(e, st, len, m->step, zw, &st->rank); /* on failure: carry */
    if (n < w) { /* no shrink yet: the whole run is the window */
      const uint32_t ell = e->cfg.fd_rows;
      st->whole.rank_90 = st->rank.rank_90 < ell ? st->rank.rank_90 : ell;
      st->whole.rank_99 = st->rank.rank_99 < ell ? st->rank.rank_99 : ell;
      memcpy(st->whole.sigma, st->rank.sigma, sizeof st->whole.sigma);
      st->whole.step = st->rank.rank_step;
    }
  }
  if (n % w == 0) fd_shrink(e, st, m->step); /* on failure: carry */

  if (!out) return 1;
  double c1 = ksum_get(&st->cum_r1), ce = ksum_get(&st->cum_re),
         cz = ksum_get(&st->cum_zz), cl = ksum_get(&st->cum_rl);
  memset(out, 0, sizeof *out);
  out->stream_id = st->id;
  out->n = n;
  out->step = m->step;
  out->wall_ns = m->wall_ns;
  out->recv_ns = recv_ns;
  out->incarnation = st->incarnation;
  out->window_len = len;
  out->path_onestep = p1;
  out->path_ema = pe;
  out->kappa_onestep = zw != 0 ? p1 / zw : NAN;
  out->kappa_ema = zw != 0 ? pe / zw : NAN;
  out->kappa_onestep_cum = cz != 0 ? c1 / cz : NAN;
  out->kappa_ema_cum = cz != 0 ? ce / cz : NAN;
  out->rank_90 = st->rank.rank_90;
  out->rank_99 = st->rank.rank_99;
  out->stable_rank = st->rank.stable_rank;
  memcpy(out->tail_energy, st->rank.tail, sizeof out->tail_energy);
  memcpy(out->sigma, st->rank.sigma, sizeof out->sigma);
  out->rank_step = st->rank.rank_step;
  out->grad_norm = (m->flags & GW_HAS_GRAD_NORM) ? m->grad_norm : NAN;
  out->loss = (m->flags & GW_HAS_LOSS) ? m->loss : NAN;
  out->lr = (m->flags & GW_HAS_LR) ? m->lr : NAN;
  out->sketch_norm = sqrt(zz);
  out->path_linear = pl;
  out->kappa_linear = zw != 0 ? pl / zw : NAN;
  out->kappa_linear_cum = cz != 0 ? cl / cz : NAN;
  out->path_onestep_cum = c1;
  out->path_ema_cum = ce;
  out->path_linear_cum = cl;
  if (zw != 0) { /* one denominator: the least P is the least κ */
    int best = 0;
    double bp = p1;
    if (pe < bp) best = 1, bp = pe;
    if (pl < bp) best = 2, bp = pl;
    out->best_predictor = best;
    out->kappa_best = bp / zw;
  } else {
    out->best_predictor = NAN;
    out->kappa_best = NAN;
  }
  out->tail_kappa_90 = st->rank.tail_kappa_90;
  out->rank_90_run = st->whole.rank_90;
  out->rank_99_run = st->whole.rank_99;
  memcpy(out->sigma_run, st->whole.sigma, sizeof out->sigma_run);
  out->rank_run_step = st->whole.step;
  return 1;
}

int gw_engine_push_f64(gw_engine_t *e, const gw_msg_t *m, const double *z,
                       gw_point_t *out) {
  return gw_engine_push_at(e, m, z, m ? m->wall_ns : 0, out, NULL);
}

int gw_engine_push(gw_engine_t *e, const gw_msg_t *m, gw_point_t *out) {
  if (!e || !m) return GW_EINVAL;
  if (m->k == 0 || m->k > e->cfg.max_k) return GW_EKLIMIT;
  size_t esz = gw_dtype_size(m->dtype);
  if (esz == 0) return GW_EDTYPE;
  if (!m->payload || m->payload_len != (size_t)m->k * esz) return GW_ELENGTH;
  if (m->k > e->zbuf_cap) {
    double *b = realloc(e->zbuf, (size_t)m->k * sizeof(double));
    if (!b) return GW_ENOMEM;
    e->zbuf = b;
    e->zbuf_cap = m->k;
  }
  int rc = gw_proto_read_payload(m, e->zbuf);
  if (rc) return rc;
  return gw_engine_push_f64(e, m, e->zbuf, out);
}

/* ---- listing and retention ---------------------------------------------- */

size_t gw_engine_stream_count(const gw_engine_t *e) { return e ? e->count : 0; }

static stream_t *by_id(const gw_engine_t *e, uint32_t id) {
  return (e && id < e->next_id) ? e->streams[id] : NULL;
}

int gw_engine_stream_info(const gw_engine_t *e, uint32_t stream_id,
                          gw_stream_info_t *out) {
  const stream_t *st = by_id(e, stream_id);
  if (!st) return GW_ENOTFOUND;
  if (!out) return GW_EINVAL;
  out->stream_id = st->id;
  out->run = st->run;
  out->tag = st->tag;
  out->k = st->k;
  out->kind = st->kind;
  out->s = st->s;
  out->seed = st->seed;
  out->n_messages = st->n_msgs;
  out->last_step = st->last_step;
  out->last_wall_ns = st->last_wall_ns;
  out->incarnation = st->incarnation;
  out->last_recv_ns = st->last_recv_ns;
  return 0;
}

int gw_engine_stream_find(const gw_engine_t *e, const char *run, size_t run_len, const char *tag,
                          size_t tag_len, uint32_t *id) {
  if (!e || !run || !tag) return GW_EINVAL;
  uint32_t hash = key_hash(e->hash_seed, run, run_len, tag, tag_len);
  size_t pos = table_find(e, hash, run, run_len, tag, tag_len);
  if (!e->table[pos].id1) return GW_ENOTFOUND;
  if (id) *id = e->table[pos].id1 - 1;
  return 0;
}

int gw_engine_stream_drop(gw_engine_t *e, uint32_t stream_id) {
  stream_t *st = by_id(e, stream_id);
  if (!st) return GW_ENOTFOUND;
  size_t pos = table_find(e, st->hash, st->run, st->run_len, st->tag, st->tag_len);
  assert(e->table[pos].id1 == stream_id + 1);
  table_remove(e, pos);
  e->streams[stream_id] = NULL;
  e->free_ids[e->n_free++] = stream_id;
  e->count--;
  stream_free(e, st);
  return 0;
}

size_t gw_engine_stream_held(const gw_engine_t *e, uint32_t stream_id) {
  const stream_t *st = by_id(e, stream_id);
  return st ? st->bytes : 0;
}

size_t gw_engine_reap(gw_engine_t *e, int64_t idle_before_ns,
                      void (*cb)(void *arg, const gw_stream_info_t *info), void *arg) {
  size_t n = 0;
  for (uint32_t id = 0; e && id < e->next_id; id++) {
    const stream_t *st = e->streams[id];
    if (!st || st->last_recv_ns >= idle_before_ns) continue;
    if (cb) {
      gw_stream_info_t info;
      gw_engine_stream_info(e, id, &info);
      cb(arg, &info);
    }
    gw_engine_stream_drop(e, id);
    n++;
  }
  return n;
}

/* ---- state across daemon restarts --------------------------------------- */

/* The blob: a fixed header, then the run and tag bytes, then the window in
 * slot order (only the `len` filled slots): ring rows (len × k), Gram rows
 * (len × len), zprev (k), ema (k), r1, re, zz, rl (len each), then the FD
 * sketch's fd_rows rows of k floats. Native byte order:
 * a blob is read back by the same build on the same host (the state table
 * is not an interchange format; a foreign or older blob fails the checks and
 * the stream starts afresh). */
#define STATE_MAGIC 0x53455747u /* "GWES" */
#define STATE_VERSION 2u

typedef struct {
  uint32_t magic, version, header_bytes, window, rank_every, k;
  uint32_t fd_cap, fd_rows; /* ℓ of the engine, rows of B in use */
  double ema_beta, fd_delta;
  uint8_t kind, s;
  uint16_t run_len, tag_len, pad;
  uint64_t seed, incarnation, n_msgs, last_step;
  int64_t last_wall_ns, last_recv_ns;
  uint32_t has_last, len;
  ksum_t cum_r1, cum_re, cum_zz, cum_rl;
  rankf_t rank;
  runf_t whole;
} state_hdr_t;

static size_t state_len(uint32_t k, uint32_t len, size_t names, uint32_t fd_rows) {
  return sizeof(state_hdr_t) + names +
         sizeof(double) * ((size_t)len * k + (size_t)len * len + 2 * (size_t)k + 4 * (size_t)len) +
         sizeof(float) * (size_t)fd_rows * k;
}

static uint32_t filled(const stream_t *st, uint32_t w) {
  if (st->n_msgs <= 1) return 0;
  return st->n_msgs - 1 < w ? (uint32_t)(st->n_msgs - 1) : w;
}

int gw_engine_stream_save(const gw_engine_t *e, uint32_t stream_id, void **blob, size_t *len) {
  *blob = NULL;
  *len = 0;
  const stream_t *st = by_id(e, stream_id);
  if (!st) return GW_ENOTFOUND;
  const uint32_t w = e->cfg.window, k = st->k, m = filled(st, w);
  size_t total = state_len(k, m, (size_t)st->run_len + st->tag_len, st->fd.rows);
  unsigned char *b = malloc(total), *q = b;
  if (!b) return GW_ENOMEM;
  state_hdr_t h;
  memset(&h, 0, sizeof h);
  h.magic = STATE_MAGIC;
  h.version = STATE_VERSION;
  h.header_bytes = sizeof h;
  h.window = w;
  h.rank_every = e->cfg.rank_every;
  h.ema_beta = e->cfg.ema_beta;
  h.k = k;
  h.kind = st->kind;
  h.s = st->s;
  h.run_len = st->run_len;
  h.tag_len = st->tag_len;
  h.seed = st->seed;
  h.incarnation = st->incarnation;
  h.n_msgs = st->n_msgs;
  h.last_step = st->last_step;
  h.last_wall_ns = st->last_wall_ns;
  h.last_recv_ns = st->last_recv_ns;
  h.has_last = (uint32_t)st->has_last;
  h.len = m;
  h.cum_r1 = st->cum_r1;
  h.cum_re = st->cum_re;
  h.cum_zz = st->cum_zz;
  h.rank = st->rank;
  h.fd_cap = e->cfg.fd_rows;
  h.fd_rows = st->fd.rows;
  h.fd_delta = st->fd.delta;
  h.cum_rl = st->cum_rl;
  h.whole = st->whole;
  memcpy(q, &h, sizeof h);
  q += sizeof h;
  memcpy(q, st->run, st->run_len);
  q += st->run_len;
  memcpy(q, st->tag, st->tag_len);
  q += st->tag_len;
  if (m) memcpy(q, st->ring, sizeof(double) * m * k);
  q += sizeof(double) * m * k;
  for (uint32_t a = 0; a < m; a++, q += sizeof(double) * m)
    memcpy(q, st->gram + (size_t)a * w, sizeof(double) * m);
  memcpy(q, st->zprev, sizeof(double) * k);
  q += sizeof(double) * k;
  memcpy(q, st->ema, sizeof(double) * k);
  q += sizeof(double) * k;
  memcpy(q, st->r1, sizeof(double) * m);
  q += sizeof(double) * m;
  memcpy(q, st->re, sizeof(double) * m);
  q += sizeof(double) * m;
  memcpy(q, st->zz, sizeof(double) * m);
  q += sizeof(double) * m;
  memcpy(q, st->rl, sizeof(double) * m);
  q += sizeof(double) * m;
  if (st->fd.rows) memcpy(q, st->fd.b, sizeof(float) * st->fd.rows * k);
  q += sizeof(float) * st->fd.rows * k;
  assert((size_t)(q - b) == total);
  *blob = b;
  *len = total;
  return 0;
}

/* Enter a new stream of params p (must be absent) and return it. */
static int stream_add(gw_engine_t *e, const sparams_t *p, stream_t **out) {
  if (p->run_len == 0 || p->run_len > GW_PROTO_NAME_MAX || p->tag_len == 0 ||
      p->tag_len > GW_PROTO_NAME_MAX)
    return GW_ENAME;
  if (p->k == 0 || p->k > e->cfg.max_k) return GW_EKLIMIT;
  uint32_t hash = key_hash(e->hash_seed, p->run, p->run_len, p->tag, p->tag_len);
  size_t pos = table_find(e, hash, p->run, p->run_len, p->tag, p->tag_len);
  if (e->table[pos].id1) return GW_EINVAL; /* already live */
  if (e->count >= e->cfg.max_streams) return GW_ESTREAMS;
  stream_t *st;
  int rc = stream_new(e, p, hash, &st);
  if (rc) return rc;
  if ((rc = stream_register(e, st, pos))) {
    stream_free(e, st);
    return rc;
  }
  *out = st;
  return 0;
}

int gw_engine_stream_load(gw_engine_t *e, const void *blob, size_t len, uint32_t *id) {
  state_hdr_t h;
  if (!e || !blob || len < sizeof h) return GW_EINVAL;
  memcpy(&h, blob, sizeof h);
  if (h.magic != STATE_MAGIC || h.version != STATE_VERSION || h.header_bytes != sizeof h)
    return GW_EINVAL;
  if (h.window != e->cfg.window || h.rank_every != e->cfg.rank_every ||
      h.ema_beta != e->cfg.ema_beta || h.fd_cap != e->cfg.fd_rows)
    return GW_ECONFIG;
  if (h.k == 0 || h.k > GW_PROTO_K_MAX || h.len > h.window || h.n_msgs == 0 ||
      h.len != filled(&(stream_t){.n_msgs = h.n_msgs}, h.window) || h.fd_rows >= h.fd_cap ||
      !(h.fd_delta >= 0) || !isfinite(h.fd_delta) ||
      len != state_len(h.k, h.len, (size_t)h.run_len + h.tag_len, h.fd_rows))
    return GW_EINVAL;
  const unsigned char *q = (const unsigned char *)blob + sizeof h;
  sparams_t p = {.run = (const char *)q, .run_len = h.run_len,
                 .tag = (const char *)q + h.run_len, .tag_len = h.tag_len,
                 .k = h.k, .kind = h.kind, .s = h.s, .seed = h.seed};
  if (gw_proto_check_run(p.run, p.run_len) || gw_proto_check_tag(p.tag, p.tag_len))
    return GW_EINVAL;
  stream_t *st;
  int rc = stream_add(e, &p, &st);
  if (rc) return rc;
  const uint32_t w = e->cfg.window, k = h.k, m = h.len;
  /* the window's rows and the sketch, as a stream that had grown them */
  if ((m && (rc = ring_reserve(e, st, m))) || (h.fd_rows && (rc = fd_alloc(e, st)))) {
    gw_engine_stream_drop(e, st->id);
    return rc;
  }
  q += (size_t)h.run_len + h.tag_len;
  if (m) memcpy(st->ring, q, sizeof(double) * m * k);
  q += sizeof(double) * m * k;
  for (uint32_t a = 0; a < m; a++, q += sizeof(double) * m)
    memcpy(st->gram + (size_t)a * w, q, sizeof(double) * m);
  memcpy(st->zprev, q, sizeof(double) * k);
  q += sizeof(double) * k;
  memcpy(st->ema, q, sizeof(double) * k);
  q += sizeof(double) * k;
  memcpy(st->r1, q, sizeof(double) * m);
  q += sizeof(double) * m;
  memcpy(st->re, q, sizeof(double) * m);
  q += sizeof(double) * m;
  memcpy(st->zz, q, sizeof(double) * m);
  q += sizeof(double) * m;
  memcpy(st->rl, q, sizeof(double) * m);
  q += sizeof(double) * m;
  rc = gw_fd_load(&st->fd, h.fd_rows, h.fd_delta, q);
  if (rc) { /* GW_ENOMEM: the stream is not loaded */
    gw_engine_stream_drop(e, st->id);
    return rc;
  }
  st->cum_rl = h.cum_rl;
  st->whole = h.whole;
  st->incarnation = h.incarnation;
  st->n_msgs = h.n_msgs;
  st->last_step = h.last_step;
  st->last_wall_ns = h.last_wall_ns;
  st->last_recv_ns = h.last_recv_ns;
  st->has_last = h.has_last != 0;
  st->cum_r1 = h.cum_r1;
  st->cum_re = h.cum_re;
  st->cum_zz = h.cum_zz;
  st->rank = h.rank;
  if (id) *id = st->id;
  return 0;
}

int gw_engine_stream_stub(gw_engine_t *e, const gw_stream_info_t *info, int reason, uint32_t *id) {
  if (!e || !info || !info->run || !info->tag || reason <= GW_RESTART_NONE ||
      reason >= GW_RESTART_COUNT)
    return GW_EINVAL;
  sparams_t p = {.run = info->run, .run_len = strlen(info->run), .tag = info->tag,
                 .tag_len = strlen(info->tag), .k = info->k, .kind = info->kind,
                 .s = info->s, .seed = info->seed};
  stream_t *st;
  int rc = stream_add(e, &p, &st);
  if (rc) return rc;
  st->incarnation = info->incarnation;
  st->last_step = info->last_step;
  st->last_wall_ns = info->last_wall_ns;
  st->last_recv_ns = info->last_recv_ns;
  st->has_last = 1;
  st->n_msgs = 0;
  st->stub_reason = reason;
  if (id) *id = st->id;
  return 0;
}
