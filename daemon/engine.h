/* engine.h — rolling windows and the predictability math of SPEC §2.
 *
 * The engine owns every stream's state: a ring of the last W increments
 * z_j − z_{j−1}, the previous sketch, the EMA, the windowed and cumulative
 * sums, and the W×W Gram matrix of the increments kept up to date
 * incrementally. It does no I/O: messages come in already decoded
 * (gw_msg_t), points go out as plain structs. It is not thread-safe; one
 * engine is driven by one thread (the daemon may run several, each owning a
 * disjoint set of streams).
 */
#ifndef GW_ENGINE_H
#define GW_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "gw_error.h"
#include "gw_proto.h"
#include "point.h"


typedef struct gw_engine_config_s {
  uint32_t window;      /* W, >= 2 (default 64) */
  uint32_t rank_every;  /* recompute rank-derived fields every N points, >= 1 */
  double ema_beta;      /* in [0, 1) (default 0.9) */
  uint32_t max_streams; /* cap on live streams (default 10000) */
  uint32_t max_k;       /* cap on k (default 65536) */
} gw_engine_config_t;

/* Defaults of SPEC §5. */
void gw_engine_config_default(gw_engine_config_t *cfg);



/* Read-only view of a stream for listing. */
typedef struct gw_stream_info_s {
  uint32_t stream_id;
  const char *run; /* NUL-terminated, owned by the engine */
  const char *tag;
  uint32_t k;
  uint8_t kind, s;
  uint64_t seed;
  uint64_t n_messages; /* accepted messages */
  uint64_t last_step;
  int64_t last_wall_ns;
} gw_stream_info_t;

typedef struct gw_engine_s gw_engine_t;

/* Returns NULL on allocation failure or an invalid config. */
gw_engine_t *gw_engine_new(const gw_engine_config_t *cfg);
void gw_engine_free(gw_engine_t *e); /* accepts NULL */

/* Feed one decoded message. Returns:
 *   1  a point was produced into *out (n >= 1),
 *   0  accepted without a point (the stream's first message, n = 0),
 *   <0 rejected, stream state unchanged: GW_ENONFINITE (also |z_i| > 1e60,
 *      so sums cannot overflow), GW_EORDER, GW_EMISMATCH, GW_ESTREAMS,
 *      GW_EKLIMIT, GW_ENAME (run/tag length 0 or > 128), GW_EINVAL (NULL
 *      arguments), GW_ENOMEM; gw_engine_push also GW_ELENGTH, GW_EDTYPE.
 * κ is NAN whenever its denominator is 0 (JSON has no infinity).
 * out may be NULL. */
int gw_engine_push(gw_engine_t *e, const gw_msg_t *m, gw_point_t *out);

/* Same, with the payload already converted to float64 (z[0..m->k-1]); used
 * by tests and replays. m->payload is ignored. */
int gw_engine_push_f64(gw_engine_t *e, const gw_msg_t *m, const double *z,
                       gw_point_t *out);

/* Number of live streams, and a lookup by id (GW_ENOTFOUND if absent). */
size_t gw_engine_stream_count(const gw_engine_t *e);
int gw_engine_stream_info(const gw_engine_t *e, uint32_t stream_id,
                          gw_stream_info_t *out);

/* Forget a stream (e.g. retention); its id may later be reused.
 * GW_ENOTFOUND for an unknown id. */
int gw_engine_stream_drop(gw_engine_t *e, uint32_t stream_id);

/* Bytes held for one stream of sketch length k at window W (for the memory
 * model and the RSS benchmark). */
size_t gw_engine_stream_bytes(uint32_t k, uint32_t window);

#endif
