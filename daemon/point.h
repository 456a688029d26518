/* point.h — a point (what the engine produces for every message n >= 1)
 * and its named metrics.
 *
 * Every sink (store, live feed, metrics, alerts) sees points through this
 * header only, so none of them depends on the engine or on LAPACK.
 *
 * One table, GW_METRIC_MAP, gives every metric a stable id, its public name
 * (the `metrics=` names of /api/v1/series, the fields of SSE events) and how
 * to read it from a gw_point_t. The store packs a point as GW_METRIC_COUNT
 * little-endian float64 values in id order; NAN means null. Append only:
 * reordering changes the stored format.
 */
#ifndef GW_POINT_H
#define GW_POINT_H

#include <stdint.h>
#include <stddef.h>

#define GW_TOP_SIGMA 8 /* sigma[] and tail_energy[] length */

/* One point: the state of a stream after message n >= 1. Fields that are
 * null in JSON are NAN here. */
typedef struct gw_point_s {
  uint32_t stream_id; /* engine: its local id; sinks: the daemon-wide id (sink.h) */
  uint64_t n;         /* message index within the stream (>= 1) */
  uint64_t step;
  int64_t wall_ns;     /* the publisher's clock, informational */
  int64_t recv_ns;     /* the daemon's clock when the message arrived */
  uint64_t incarnation; /* publisher incarnation (0: a version 1 publisher) */
  uint32_t window_len; /* |J_n| */
  double path_onestep, path_ema;
  double kappa_onestep, kappa_ema;         /* NAN for 0/0 */
  double kappa_onestep_cum, kappa_ema_cum; /* NAN for 0/0 */
  uint32_t rank_90, rank_99;
  double stable_rank;                 /* NAN when H = 0 */
  double tail_energy[GW_TOP_SIGMA];   /* r = 1..8; NAN when H = 0 */
  double sigma[GW_TOP_SIGMA];         /* top singular values, 0-padded */
  uint64_t rank_step;                 /* step at which rank fields were computed */
  double grad_norm, loss, lr;         /* NAN when not sent */
  double sketch_norm;                 /* ‖z_n‖ */
  /* the linear-extrapolation predictor m_n = 2 z_{n-1} - z_{n-2} (m_1 = z_0) */
  double path_linear, kappa_linear, kappa_linear_cum;
  double path_onestep_cum, path_ema_cum, path_linear_cum; /* P over j = 1..n */
  double kappa_best;     /* min of the three windowed κ (NAN when they are) */
  double best_predictor; /* which: 0 one-step, 1 EMA, 2 linear (ties: lowest) */
  double tail_kappa_90;  /* Σ_{i>rank_90} σ_i² / Σ_{j∈J} ‖z_j‖², with the rank fields */
  /* whole-run rank from the stream's Frequent Directions sketch (engine.c);
   * a rank equal to fd_rows means "fd_rows or more" */
  uint32_t rank_90_run, rank_99_run;
  double sigma_run[GW_TOP_SIGMA]; /* top singular values of the sketch, 0-padded */
  uint64_t rank_run_step;         /* step at which the run fields were computed */
} gw_point_t;

/* XX(id suffix, "name", expression over `p` (const gw_point_t *)) */
#define GW_METRIC_MAP(XX)                                         \
  XX(PATH_ONESTEP, "path_onestep", p->path_onestep)               \
  XX(PATH_EMA, "path_ema", p->path_ema)                           \
  XX(KAPPA_ONESTEP, "kappa_onestep", p->kappa_onestep)            \
  XX(KAPPA_EMA, "kappa_ema", p->kappa_ema)                        \
  XX(KAPPA_ONESTEP_CUM, "kappa_onestep_cum", p->kappa_onestep_cum) \
  XX(KAPPA_EMA_CUM, "kappa_ema_cum", p->kappa_ema_cum)            \
  XX(RANK_90, "rank_90", (double)p->rank_90)                      \
  XX(RANK_99, "rank_99", (double)p->rank_99)                      \
  XX(STABLE_RANK, "stable_rank", p->stable_rank)                  \
  XX(TAIL_ENERGY_1, "tail_energy_1", p->tail_energy[0])           \
  XX(TAIL_ENERGY_2, "tail_energy_2", p->tail_energy[1])           \
  XX(TAIL_ENERGY_3, "tail_energy_3", p->tail_energy[2])           \
  XX(TAIL_ENERGY_4, "tail_energy_4", p->tail_energy[3])           \
  XX(TAIL_ENERGY_5, "tail_energy_5", p->tail_energy[4])           \
  XX(TAIL_ENERGY_6, "tail_energy_6", p->tail_energy[5])           \
  XX(TAIL_ENERGY_7, "tail_energy_7", p->tail_energy[6])           \
  XX(TAIL_ENERGY_8, "tail_energy_8", p->tail_energy[7])           \
  XX(SIGMA_1, "sigma_1", p->sigma[0])                             \
  XX(SIGMA_2, "sigma_2", p->sigma[1])                             \
  XX(SIGMA_3, "sigma_3", p->sigma[2])                             \
  XX(SIGMA_4, "sigma_4", p->sigma[3])                             \
  XX(SIGMA_5, "sigma_5", p->sigma[4])                             \
  XX(SIGMA_6, "sigma_6", p->sigma[5])                             \
  XX(SIGMA_7, "sigma_7", p->sigma[6])                             \
  XX(SIGMA_8, "sigma_8", p->sigma[7])                             \
  XX(GRAD_NORM, "grad_norm", p->grad_norm)                        \
  XX(SKETCH_NORM, "sketch_norm", p->sketch_norm)                  \
  XX(LOSS, "loss", p->loss)                                       \
  XX(LR, "lr", p->lr)                                             \
  XX(WALL_TIME, "wall_time", (double)p->wall_ns * 1e-9)           \
  XX(PATH_LINEAR, "path_linear", p->path_linear)                  \
  XX(KAPPA_LINEAR, "kappa_linear", p->kappa_linear)               \
  XX(KAPPA_LINEAR_CUM, "kappa_linear_cum", p->kappa_linear_cum)   \
  XX(PATH_ONESTEP_CUM, "path_onestep_cum", p->path_onestep_cum)   \
  XX(PATH_EMA_CUM, "path_ema_cum", p->path_ema_cum)               \
  XX(PATH_LINEAR_CUM, "path_linear_cum", p->path_linear_cum)      \
  XX(KAPPA_BEST, "kappa_best", p->kappa_best)                     \
  XX(BEST_PREDICTOR, "best_predictor", p->best_predictor)         \
  XX(TAIL_KAPPA_90, "tail_kappa_90", p->tail_kappa_90)            \
  XX(RANK_90_RUN, "rank_90_run", (double)p->rank_90_run)          \
  XX(RANK_99_RUN, "rank_99_run", (double)p->rank_99_run)          \
  XX(SIGMA_RUN_1, "sigma_run_1", p->sigma_run[0])                 \
  XX(SIGMA_RUN_2, "sigma_run_2", p->sigma_run[1])                 \
  XX(SIGMA_RUN_3, "sigma_run_3", p->sigma_run[2])                 \
  XX(SIGMA_RUN_4, "sigma_run_4", p->sigma_run[3])                 \
  XX(SIGMA_RUN_5, "sigma_run_5", p->sigma_run[4])                 \
  XX(SIGMA_RUN_6, "sigma_run_6", p->sigma_run[5])                 \
  XX(SIGMA_RUN_7, "sigma_run_7", p->sigma_run[6])                 \
  XX(SIGMA_RUN_8, "sigma_run_8", p->sigma_run[7])

typedef enum {
#define XX(id, name, expr) GW_METRIC_##id,
  GW_METRIC_MAP(XX)
#undef XX
  GW_METRIC_COUNT
} gw_metric_t;

/* Id of a metric name, or -1. `sigma` is not a metric: ask for sigma_1..8. */
int gw_metric_lookup(const char *name, size_t len);
const char *gw_metric_name(int id); /* NULL if out of range */
double gw_point_get(const gw_point_t *p, int id);
/* All metrics of p in id order (out has GW_METRIC_COUNT slots). */
void gw_point_values(const gw_point_t *p, double *out);

#endif
