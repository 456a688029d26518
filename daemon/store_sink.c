/* store_sink.c — the store as a sink (sink.h): each call becomes one
 * queued record of the store's queue (store.h), so none of them touches
 * SQLite or waits on the disk. */
#include <string.h>

#include "store.h"

static void s_open(void *arg, const gw_stream_ref_t *s, const gw_open_t *o) {
  gw_store_open_stream(arg, s->stream_id, s, o);
}

static void s_sketch(void *arg, const gw_stream_ref_t *s, uint64_t step, const double *z) {
  gw_store_put_sketch(arg, s->stream_id, step, z, s->k); /* no-op without store_sketches */
}

static void s_point(void *arg, const gw_stream_ref_t *s, const gw_point_t *p) {
  (void)s;
  gw_store_put_point(arg, p); /* a full queue is counted by the store */
}

static void s_restart(void *arg, const gw_stream_ref_t *s, const gw_restart_t *r) {
  gw_store_restart_stream(arg, s->stream_id, s, r);
}

static void s_forget(void *arg, const gw_stream_ref_t *s) {
  gw_store_forget_stream(arg, s->stream_id);
}

static void s_meta(void *arg, const gw_run_meta_t *m) {
  gw_store_put_meta(arg, m);
}

void gw_store_sink(gw_store_t *st, gw_sink_t *out) {
  memset(out, 0, sizeof *out);
  out->name = "store";
  out->arg = st;
  out->open = s_open;
  out->sketch = s_sketch;
  out->point = s_point;
  out->restart = s_restart;
  out->forget = s_forget;
  out->meta = s_meta;
}
