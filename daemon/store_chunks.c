/* store_chunks.c — a segment's points as compressed columnar chunks
 * (chunk.h) beside the points rows: sealing rows into chunks, the rare late
 * point that falls inside a sealed range, deleting by step, counting, and
 * the point cursor every series read goes through.
 *
 * Layout of one segment's points (schema v3):
 *   chunks(stream, first_step, last_step, n, blob, xf, tier): sealed runs of points,
 *       step ranges disjoint, each blob a gw_chunk of GW_METRIC_COUNT columns;
 *   points(stream, step, v): the open, partial chunk — every row's step is
 *       greater than the last chunk's last_step.
 * A point is in exactly one of the two. Sealing (gws_chunk_seal) moves the
 * oldest rows of a segment into one chunk, inserting the chunk and deleting
 * the rows in the caller's transaction, so a kill -9 at any moment leaves
 * every committed point either still a row or already in its chunk. A point
 * arriving with a step at or below the last chunk's last_step (a late point)
 * is merged into the chunk whose range it falls in or next to (decoded,
 * re-encoded), so the invariant holds and readers read chunks, then rows.
 *
 * Readers (gws_pcur_*) walk the chunks overlapping [lo, hi] in step order,
 * decoding one at a time, then the rows: one segment's points in step
 * order, as the points table alone gave them before.
 *
 * A chunk leaves out the columns that are exact quotients of others when
 * that reproduces them bit for bit, and stores the windowed sums as their
 * XOR with a prediction from the cumulative ones (xf, "derived columns" and
 * "predicted columns" below); past
 * full_resolution_days a chunk is replaced by its 2-point min/max envelope
 * (tier 1), which readers read like any chunk.
 *
 * Callers hold the connection (writer thread, or a reader's connection in
 * a read transaction); nothing here is shared state.
 */
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "chunk.h"
#include "store_int.h"

#define CHUNK_LEVEL 3
#define SEAL_TXN_CHUNKS 64 /* chunks sealed per transaction by a whole-store pass */

static int step_done(sqlite3_stmt *s) {
  int rc = sqlite3_step(s);
  return rc == SQLITE_ROW || rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* Decode a chunk blob into points; SQLite-style code (SQLITE_CORRUPT for a
 * blob that does not decode, SQLITE_NOMEM). */
static void xf_decode(double *vals, size_t n, size_t ncols, int xf);
static int xf_valid(int xf);

static int decode(const void *blob, int bytes, int xf, uint64_t **steps, double **vals,
                  size_t *n, size_t *ncols) {
  int rc = gw_chunk_decode(blob, bytes > 0 ? (size_t)bytes : 0, steps, vals, n, ncols);
  if (rc == GW_ENOMEM) return SQLITE_NOMEM;
  if (rc) return SQLITE_CORRUPT;
  if (!xf_valid(xf)) {
    free(*steps);
    free(*vals);
    *steps = NULL;
    *vals = NULL;
    *n = *ncols = 0;
    return SQLITE_CORRUPT;
  }
  xf_decode(*vals, *n, *ncols, xf);
  return SQLITE_OK;
}

/* ---------------------------------------------------- derived columns
 *
 * Columns that are exact functions of others are not stored when, for
 * every point of a chunk, the function gives them back bit for bit; the
 * chunk's xf bits say which (0: all 49 stored). The engine computes
 *   kappa_X     = path_X / zw        (one window energy zw, or NAN if 0)
 *   kappa_X_cum = path_X_cum / cz    (one cumulative energy cz)
 *   kappa_best  = the kappa_X named by best_predictor (NAN if that is)
 * so a chunk stores d (a zw or cz that reproduces all three quotients) in
 * the first kappa column and zeros in the other two, and zeros for
 * kappa_best. Nothing is assumed: the encoder checks each reconstruction
 * with the decoder's own arithmetic and keeps the columns otherwise. */
enum { XF_WIN = 1, XF_CUM = 2, XF_BEST = 4, XF_PCUM = 8, XF_PWIN = 16, XF_PZW = 32 };
#define XF_LAG_SHIFT 16
#define XF_LAG_MAX 4096
/* Every xf a chunk may carry; any other bit is a damaged (or future) chunk,
 * refused rather than misread. */
#define XF_KNOWN (63u | (0x1fffu << XF_LAG_SHIFT))

static const int xf_win_p[3] = {GW_METRIC_PATH_ONESTEP, GW_METRIC_PATH_EMA,
                                GW_METRIC_PATH_LINEAR};
static const int xf_win_k[3] = {GW_METRIC_KAPPA_ONESTEP, GW_METRIC_KAPPA_EMA,
                                GW_METRIC_KAPPA_LINEAR};
static const int xf_cum_p[3] = {GW_METRIC_PATH_ONESTEP_CUM, GW_METRIC_PATH_EMA_CUM,
                                GW_METRIC_PATH_LINEAR_CUM};
static const int xf_cum_k[3] = {GW_METRIC_KAPPA_ONESTEP_CUM, GW_METRIC_KAPPA_EMA_CUM,
                                GW_METRIC_KAPPA_LINEAR_CUM};

static int same_bits(double a, double b) { return memcmp(&a, &b, sizeof a) == 0; }

/* kappa = path / d, or NAN (the engine's) when d is NaN. */
static double quot(double path, double d) { return isnan(d) ? (double)NAN : path / d; }

static int quot_ok(const double *row, const int p[3], const int k[3], double d) {
  for (int i = 0; i < 3; i++)
    if (!same_bits(quot(row[p[i]], d), row[k[i]])) return 0;
  return 1;
}

/* A d reproducing the three quotients of this point, or 0. */
static int find_d(const double *row, const int p[3], const int k[3], double *d) {
  if (quot_ok(row, p, k, (double)NAN)) {
    *d = (double)NAN;
    return 1;
  }
  if (quot_ok(row, p, k, 1.0)) {
    *d = 1.0;
    return 1;
  }
  for (int i = 0; i < 3; i++) {
    double pi = row[p[i]], ki = row[k[i]];
    if (!isfinite(pi) || !isfinite(ki) || ki == 0) continue;
    double c = pi / ki, lo = c, hi = c;
    if (!isfinite(c) || c == 0) continue;
    if (quot_ok(row, p, k, c)) {
      *d = c;
      return 1;
    }
    for (int u = 0; u < 4; u++) {
      lo = nextafter(lo, -INFINITY);
      hi = nextafter(hi, INFINITY);
      if (quot_ok(row, p, k, lo)) {
        *d = lo;
        return 1;
      }
      if (quot_ok(row, p, k, hi)) {
        *d = hi;
        return 1;
      }
    }
  }
  return 0;
}

static double best_of(const double *row) {
  double b = row[GW_METRIC_BEST_PREDICTOR];
  if (b == 0 || b == 1 || b == 2) return row[xf_win_k[(int)b]];
  return (double)NAN;
}

/* ---------------------------------------------------- predicted columns
 *
 * What the quotients leave is mostly sums the engine keeps two ways: over
 * the window (path_X, and zw in the first kappa column) and over the whole
 * stream (path_X_cum, and cz in kappa_onestep_cum), where cz grows by
 * sketch_norm^2 each message and a window of L messages holds, to rounding,
 * the cumulative sum's growth over the last L rows. Such a column is stored
 * as bits(value) XOR bits(prediction), the prediction computed from the
 * chunk's rows decoded before it; when it is off by a few ulps the high
 * bytes of the XOR are zero and zstd stores them in almost nothing.
 * Lossless whatever the data: a bad prediction only costs bytes. The lag L
 * is the one that predicts the windowed paths best (the daemon's --window;
 * 0 = none); xf keeps it in bits 16 and up:
 *   XF_PCUM  kappa_onestep_cum (cz, needs XF_CUM): cz[r-1] + sketch_norm[r]^2
 *   XF_PWIN  path_X for r >= L: path_X_cum[r] - path_X_cum[r-L]
 *   XF_PZW   kappa_onestep (zw, needs XF_WIN, XF_CUM): cz[r] - cz[r-L]
 * The predictions are IEEE basic operations on stored doubles, each rounded
 * on its own (volatile: no fused multiply-add in any build), so every build
 * of the decoder computes the encoder's bits. */
static uint64_t xbits(double d) {
  uint64_t u;
  memcpy(&u, &d, sizeof u);
  return u;
}

static double xor_pred(double v, double pred) {
  uint64_t u = xbits(v) ^ xbits(pred);
  double d;
  memcpy(&d, &u, sizeof d);
  return d;
}

static double pred_cz(const double *vals, size_t r) {
  if (r == 0) return 0.0;
  const double *row = vals + r * GW_METRIC_COUNT;
  volatile double sq = row[GW_METRIC_SKETCH_NORM] * row[GW_METRIC_SKETCH_NORM];
  return vals[(r - 1) * GW_METRIC_COUNT + GW_METRIC_KAPPA_ONESTEP_CUM] + sq;
}

static double pred_lag(const double *vals, size_t r, size_t lag, int col) {
  if (lag == 0 || r < lag) return 0.0;
  return vals[r * GW_METRIC_COUNT + col] - vals[(r - lag) * GW_METRIC_COUNT + col];
}

/* Whether lag predicts row r's path_onestep to a relative 2^-30. */
static int lag_hit(const double *vals, size_t r, size_t lag) {
  double v = vals[r * GW_METRIC_COUNT + GW_METRIC_PATH_ONESTEP];
  double e = v - pred_lag(vals, r, lag, GW_METRIC_PATH_ONESTEP_CUM);
  return isfinite(v) && v != 0 && fabs(e) <= fabs(v) * 0x1p-30;
}

/* The lag (1..XF_LAG_MAX) that predicts path_onestep (to a relative 2^-30)
 * for the most rows; 0 when none beats a quarter of them. A lag is first
 * tried on the chunk's last row (the one every lag can predict): the
 * daemon's window passes, nearly every other lag is out after one test. */
static size_t best_lag(const double *vals, size_t n) {
  size_t best = 0, best_hits = n / 4, lmax = n > XF_LAG_MAX ? XF_LAG_MAX : n - 1;
  for (size_t lag = 1; n > 1 && lag <= lmax; lag++) {
    size_t hits = 0;
    if (n - lag <= best_hits) break; /* cannot beat it any more */
    if (!lag_hit(vals, n - 1, lag) && !lag_hit(vals, n - 2, lag)) continue;
    for (size_t r = lag; r < n; r++) hits += (size_t)lag_hit(vals, r, lag);
    if (hits > best_hits) {
      best = lag;
      best_hits = hits;
    }
  }
  return best;
}

static const int xf_pwin_c[3] = {GW_METRIC_PATH_ONESTEP_CUM, GW_METRIC_PATH_EMA_CUM,
                                 GW_METRIC_PATH_LINEAR_CUM};

/* Replace the predicted columns by their XOR with the prediction; the bits
 * to add to xf. Rows go last to first, and within a row zw before cz, so
 * every prediction still reads original values (pred_decode's mirror). */
static int pred_encode(double *vals, size_t n, int xf) {
  int px = 0;
  size_t lag = best_lag(vals, n);
  if (xf & XF_CUM) px |= XF_PCUM;
  if (lag) px |= XF_PWIN | ((xf & XF_WIN) && (xf & XF_CUM) ? XF_PZW : 0);
  for (size_t r = n; r-- > 0;) {
    double *row = vals + r * GW_METRIC_COUNT;
    if (px & XF_PWIN)
      for (int i = 0; i < 3; i++)
        row[xf_win_p[i]] = xor_pred(row[xf_win_p[i]], pred_lag(vals, r, lag, xf_pwin_c[i]));
    if (px & XF_PZW)
      row[GW_METRIC_KAPPA_ONESTEP] = xor_pred(
          row[GW_METRIC_KAPPA_ONESTEP], pred_lag(vals, r, lag, GW_METRIC_KAPPA_ONESTEP_CUM));
    if (px & XF_PCUM)
      row[GW_METRIC_KAPPA_ONESTEP_CUM] = xor_pred(row[GW_METRIC_KAPPA_ONESTEP_CUM], pred_cz(vals, r));
  }
  return px ? px | (int)(lag << XF_LAG_SHIFT) : 0;
}

static int xf_valid(int xf) { return ((unsigned)xf & ~XF_KNOWN) == 0; }

/* Undo pred_encode, row by row (each prediction reads rows already done). */
static void pred_decode(double *vals, size_t n, int xf) {
  size_t lag = (size_t)((unsigned)xf >> XF_LAG_SHIFT);
  if (!(xf & (XF_PCUM | XF_PWIN | XF_PZW))) return;
  for (size_t r = 0; r < n; r++) {
    double *row = vals + r * GW_METRIC_COUNT;
    if (xf & XF_PCUM)
      row[GW_METRIC_KAPPA_ONESTEP_CUM] = xor_pred(row[GW_METRIC_KAPPA_ONESTEP_CUM], pred_cz(vals, r));
    if (xf & XF_PZW)
      row[GW_METRIC_KAPPA_ONESTEP] = xor_pred(
          row[GW_METRIC_KAPPA_ONESTEP], pred_lag(vals, r, lag, GW_METRIC_KAPPA_ONESTEP_CUM));
    if (xf & XF_PWIN)
      for (int i = 0; i < 3; i++)
        row[xf_win_p[i]] = xor_pred(row[xf_win_p[i]], pred_lag(vals, r, lag, xf_pwin_c[i]));
  }
}

/* Replace derivable columns of vals (n rows) in place; the xf bits. */
static int xf_encode(double *vals, size_t n) {
  int xf = XF_WIN | XF_CUM | XF_BEST;
  const int *const ps[2] = {xf_win_p, xf_cum_p}, *const ks[2] = {xf_win_k, xf_cum_k};
  double *d = malloc(2 * (n ? n : 1) * sizeof *d);
  if (!d) return 0;
  for (size_t r = 0; r < n && xf; r++) {
    const double *row = vals + r * GW_METRIC_COUNT;
    if ((xf & XF_BEST) && !same_bits(best_of(row), row[GW_METRIC_KAPPA_BEST])) xf &= ~XF_BEST;
    for (int g = 0; g < 2; g++)
      if ((xf & (1 << g)) && !find_d(row, ps[g], ks[g], &d[2 * r + g])) xf &= ~(1 << g);
  }
  for (size_t r = 0; r < n && xf; r++) {
    double *row = vals + r * GW_METRIC_COUNT;
    if (xf & XF_BEST) row[GW_METRIC_KAPPA_BEST] = 0;
    for (int g = 0; g < 2; g++)
      if (xf & (1 << g)) {
        row[ks[g][0]] = d[2 * r + g];
        row[ks[g][1]] = row[ks[g][2]] = 0;
      }
  }
  free(d);
  return xf | pred_encode(vals, n, xf);
}

/* Undo xf_encode. */
static void xf_decode(double *vals, size_t n, size_t ncols, int xf) {
  const int *const ps[2] = {xf_win_p, xf_cum_p}, *const ks[2] = {xf_win_k, xf_cum_k};
  if (!xf || ncols != GW_METRIC_COUNT) return;
  pred_decode(vals, n, xf);
  for (size_t r = 0; r < n; r++) {
    double *row = vals + r * GW_METRIC_COUNT;
    for (int g = 0; g < 2; g++)
      if (xf & (1 << g)) {
        double d = row[ks[g][0]];
        for (int i = 0; i < 3; i++) row[ks[g][i]] = quot(row[ps[g][i]], d);
      }
    if (xf & XF_BEST) row[GW_METRIC_KAPPA_BEST] = best_of(row);
  }
}

/* Insert one chunk of n points (values n x GW_METRIC_COUNT). */
static int put_chunk(sqlite3 *db, int64_t seg, const uint64_t *steps, const double *vals,
                     size_t n, int tier) {
  static const char sql[] =
      "INSERT INTO chunks(stream, first_step, last_step, n, blob, xf, tier) "
      "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)";
  gw_buf_t b;
  sqlite3_stmt *s = NULL;
  double *tv;
  int rc, xf;
  if (n == 0) return SQLITE_OK;
  gw_buf_init(&b);
  if (!(tv = malloc(n * GW_METRIC_COUNT * sizeof *tv))) return SQLITE_NOMEM;
  memcpy(tv, vals, n * GW_METRIC_COUNT * sizeof *tv);
  xf = xf_encode(tv, n);
  rc = gw_chunk_encode(steps, tv, n, GW_METRIC_COUNT, CHUNK_LEVEL, &b);
  free(tv);
  if (rc) {
    gw_buf_free(&b);
    return rc == GW_ENOMEM ? SQLITE_NOMEM : SQLITE_ERROR;
  }
  rc = sqlite3_prepare_v2(db, sql, -1, &s, NULL);
  if (rc == SQLITE_OK) {
    sqlite3_bind_int64(s, 1, seg);
    sqlite3_bind_int64(s, 2, (int64_t)steps[0]);
    sqlite3_bind_int64(s, 3, (int64_t)steps[n - 1]);
    sqlite3_bind_int64(s, 4, (int64_t)n);
    sqlite3_bind_blob(s, 5, b.p, (int)b.len, SQLITE_STATIC);
    sqlite3_bind_int(s, 6, xf);
    sqlite3_bind_int(s, 7, tier);
    rc = step_done(s);
  }
  sqlite3_finalize(s);
  gw_buf_free(&b);
  return rc;
}

/* One row's blob as GW_METRIC_COUNT doubles (missing metrics NAN, as the
 * readers of rows give them). */
static void unpack_row(const unsigned char *v, int bytes, double *out) {
  for (int m = 0; m < GW_METRIC_COUNT; m++)
    out[m] = (m + 1) * 8 <= bytes ? gws_get_f64le(v + 8 * m) : NAN;
}

int gws_chunk_seal(sqlite3 *db, int64_t seg, size_t chunk_n, size_t min_n, size_t max_chunks,
                   int64_t *sealed) {
  static const char sql_sel[] =
      "SELECT step, v FROM points WHERE stream = ?1 ORDER BY step LIMIT ?2";
  static const char sql_del[] = "DELETE FROM points WHERE stream = ?1 AND step <= ?2";
  sqlite3_stmt *sel = NULL, *del = NULL;
  uint64_t *steps = malloc(chunk_n * sizeof *steps);
  double *vals = malloc(chunk_n * GW_METRIC_COUNT * sizeof *vals);
  int rc = steps && vals ? SQLITE_OK : SQLITE_NOMEM;
  size_t made = 0;
  if (min_n == 0) min_n = 1;
  if (rc == SQLITE_OK) rc = sqlite3_prepare_v2(db, sql_sel, -1, &sel, NULL);
  if (rc == SQLITE_OK) rc = sqlite3_prepare_v2(db, sql_del, -1, &del, NULL);
  while (rc == SQLITE_OK) {
    size_t n = 0;
    sqlite3_bind_int64(sel, 1, seg);
    sqlite3_bind_int64(sel, 2, (int64_t)chunk_n);
    while ((rc = sqlite3_step(sel)) == SQLITE_ROW) {
      steps[n] = (uint64_t)sqlite3_column_int64(sel, 0);
      unpack_row(sqlite3_column_blob(sel, 1), sqlite3_column_bytes(sel, 1),
                 vals + n * GW_METRIC_COUNT);
      n++;
    }
    sqlite3_reset(sel);
    if (rc != SQLITE_DONE) break;
    rc = SQLITE_OK;
    if (n < min_n) break;
    rc = put_chunk(db, seg, steps, vals, n, 0);
    if (rc == SQLITE_OK) {
      sqlite3_bind_int64(del, 1, seg);
      sqlite3_bind_int64(del, 2, (int64_t)steps[n - 1]);
      rc = step_done(del);
      sqlite3_reset(del);
    }
    if (rc == SQLITE_OK && sealed) *sealed += (int64_t)n;
    if (n < chunk_n) break; /* that was the tail */
    if (max_chunks && ++made == max_chunks) break;
  }
  sqlite3_finalize(sel);
  sqlite3_finalize(del);
  free(steps);
  free(vals);
  return rc;
}

int gws_chunk_put_blobs(sqlite3 *db, int64_t seg, const int64_t *steps,
                        const unsigned char *const *v, int bytes, size_t n) {
  uint64_t *st = malloc((n ? n : 1) * sizeof *st);
  double *vals = malloc((n ? n : 1) * GW_METRIC_COUNT * sizeof *vals);
  int rc = st && vals ? SQLITE_OK : SQLITE_NOMEM;
  for (size_t i = 0; rc == SQLITE_OK && i < n; i++) {
    st[i] = (uint64_t)steps[i];
    unpack_row(v[i], bytes, vals + i * GW_METRIC_COUNT);
  }
  if (rc == SQLITE_OK) rc = put_chunk(db, seg, st, vals, n, 0);
  free(st);
  free(vals);
  return rc;
}

int gws_chunk_last_step(sqlite3 *db, int64_t seg, int64_t *last) {
  static const char sql[] =
      "SELECT last_step FROM chunks WHERE stream = ?1 ORDER BY first_step DESC LIMIT 1";
  sqlite3_stmt *s = NULL;
  int rc = sqlite3_prepare_v2(db, sql, -1, &s, NULL);
  *last = INT64_MIN;
  if (rc == SQLITE_OK) {
    sqlite3_bind_int64(s, 1, seg);
    rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) *last = sqlite3_column_int64(s, 0);
    rc = rc == SQLITE_ROW || rc == SQLITE_DONE ? SQLITE_OK : rc;
  }
  sqlite3_finalize(s);
  return rc;
}

/* Replace chunk (seg, old_first) by the n points given. */
static int replace_chunk(sqlite3 *db, int64_t seg, int64_t old_first, const uint64_t *steps,
                         const double *vals, size_t n, int tier) {
  static const char sql[] = "DELETE FROM chunks WHERE stream = ?1 AND first_step = ?2";
  sqlite3_stmt *s = NULL;
  int rc = sqlite3_prepare_v2(db, sql, -1, &s, NULL);
  if (rc == SQLITE_OK) {
    sqlite3_bind_int64(s, 1, seg);
    sqlite3_bind_int64(s, 2, old_first);
    rc = step_done(s);
  }
  sqlite3_finalize(s);
  if (rc == SQLITE_OK) rc = put_chunk(db, seg, steps, vals, n, tier);
  return rc;
}

/* The chunk sql finds (binding ?1 = seg, ?2 = x; selecting first_step,
 * blob, xf, tier), decoded into the caller's *steps, *vals (n points of
 * GW_METRIC_COUNT columns); *have = 0 when there is none. SQLITE_CORRUPT
 * for a chunk that does not decode to GW_METRIC_COUNT columns. */
static int load_chunk(sqlite3 *db, const char *sql, int64_t seg, int64_t x, int *have,
                      int64_t *first, int *tier, uint64_t **steps, double **vals, size_t *n) {
  sqlite3_stmt *s = NULL;
  size_t ncols = 0;
  int rc = sqlite3_prepare_v2(db, sql, -1, &s, NULL);
  *have = 0;
  if (rc == SQLITE_OK) {
    sqlite3_bind_int64(s, 1, seg);
    sqlite3_bind_int64(s, 2, x);
    rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
      *have = 1;
      *first = sqlite3_column_int64(s, 0);
      *tier = sqlite3_column_int(s, 3);
      rc = decode(sqlite3_column_blob(s, 1), sqlite3_column_bytes(s, 1),
                  sqlite3_column_int(s, 2), steps, vals, n, &ncols);
    } else if (rc == SQLITE_DONE) {
      rc = SQLITE_OK;
    }
  }
  sqlite3_finalize(s);
  if (rc == SQLITE_OK && *have && ncols != GW_METRIC_COUNT) rc = SQLITE_CORRUPT;
  return rc;
}

int gws_chunk_add_late(sqlite3 *db, int64_t seg, int64_t step, const unsigned char *v,
                       int bytes, int *added) {
  /* the chunk the step falls in or follows; else the first one */
  static const char sql[] =
      "SELECT first_step, blob, xf, tier FROM chunks WHERE stream = ?1 "
      "ORDER BY (first_step <= ?2) DESC, "
      "CASE WHEN first_step <= ?2 THEN -first_step ELSE first_step END LIMIT 1";
  uint64_t *steps = NULL, *ns = NULL;
  double *vals = NULL, *nv = NULL;
  size_t n = 0, pos;
  int64_t first = 0;
  int have = 0, tier = 0;
  int rc = load_chunk(db, sql, seg, step, &have, &first, &tier, &steps, &vals, &n);
  *added = 0;
  if (rc == SQLITE_OK && !have) rc = SQLITE_ERROR; /* the caller saw a chunk: cannot happen */
  if (rc != SQLITE_OK) goto done;
  for (pos = 0; pos < n && (int64_t)steps[pos] < step; pos++) {
  }
  if (pos < n && (int64_t)steps[pos] == step) goto done; /* a duplicate */
  ns = malloc((n + 1) * sizeof *ns);
  nv = malloc((n + 1) * GW_METRIC_COUNT * sizeof *nv);
  if (!ns || !nv) {
    rc = SQLITE_NOMEM;
    goto done;
  }
  memcpy(ns, steps, pos * sizeof *ns);
  memcpy(nv, vals, pos * GW_METRIC_COUNT * sizeof *nv);
  ns[pos] = (uint64_t)step;
  unpack_row(v, bytes, nv + pos * GW_METRIC_COUNT);
  memcpy(ns + pos + 1, steps + pos, (n - pos) * sizeof *ns);
  memcpy(nv + (pos + 1) * GW_METRIC_COUNT, vals + pos * GW_METRIC_COUNT,
         (n - pos) * GW_METRIC_COUNT * sizeof *nv);
  rc = replace_chunk(db, seg, first, ns, nv, n + 1, tier);
  if (rc == SQLITE_OK) *added = 1;
done:
  free(steps);
  free(vals);
  free(ns);
  free(nv);
  return rc;
}

int gws_chunk_delete_upto(sqlite3 *db, int64_t seg, int64_t max_step, int64_t *deleted) {
  static const char sql_cnt[] =
      "SELECT coalesce(sum(n), 0) FROM chunks WHERE stream = ?1 AND last_step <= ?2";
  static const char sql_del[] = "DELETE FROM chunks WHERE stream = ?1 AND last_step <= ?2";
  static const char sql_cut[] =
      "SELECT first_step, blob, xf, tier FROM chunks WHERE stream = ?1 AND first_step <= ?2 "
      "AND last_step > ?2";
  sqlite3_stmt *s = NULL;
  uint64_t *steps = NULL;
  double *vals = NULL;
  size_t n = 0, k = 0;
  int64_t first = 0;
  int have = 0, tier = 0;
  int rc = sqlite3_prepare_v2(db, sql_cnt, -1, &s, NULL);
  if (rc == SQLITE_OK) {
    sqlite3_bind_int64(s, 1, seg);
    sqlite3_bind_int64(s, 2, max_step);
    rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
      *deleted += sqlite3_column_int64(s, 0);
      rc = SQLITE_OK;
    }
  }
  sqlite3_finalize(s);
  s = NULL;
  if (rc == SQLITE_OK) rc = sqlite3_prepare_v2(db, sql_del, -1, &s, NULL);
  if (rc == SQLITE_OK) {
    sqlite3_bind_int64(s, 1, seg);
    sqlite3_bind_int64(s, 2, max_step);
    rc = step_done(s);
  }
  sqlite3_finalize(s);
  s = NULL;
  /* at most one chunk straddles the cut: keep its points above it */
  if (rc == SQLITE_OK)
    rc = load_chunk(db, sql_cut, seg, max_step, &have, &first, &tier, &steps, &vals, &n);
  if (rc == SQLITE_OK && have) {
    while (k < n && (int64_t)steps[k] <= max_step) k++;
    *deleted += (int64_t)k;
    rc = replace_chunk(db, seg, first, steps + k, vals + k * GW_METRIC_COUNT, n - k, tier);
  }
  free(steps);
  free(vals);
  return rc;
}

/* The downsampled form of n points: (first step, each column's minimum),
 * (last step, each column's maximum), NaNs skipped (NaN when all are) —
 * the envelope a series' max_points downsampling draws for one bucket. */
static void envelope(const uint64_t *steps, const double *vals, size_t n, uint64_t out_steps[2],
                     double *out) {
  double *mn = out, *mx = out + GW_METRIC_COUNT;
  out_steps[0] = steps[0];
  out_steps[1] = steps[n - 1];
  for (int m = 0; m < GW_METRIC_COUNT; m++) mn[m] = mx[m] = NAN;
  for (size_t i = 0; i < n; i++)
    for (int m = 0; m < GW_METRIC_COUNT; m++) {
      double y = vals[i * GW_METRIC_COUNT + m];
      if (isnan(y)) continue;
      if (isnan(mn[m]) || y < mn[m]) mn[m] = y;
      if (isnan(mx[m]) || y > mx[m]) mx[m] = y;
    }
}

int gws_chunk_tier_upto(sqlite3 *db, int64_t seg, int64_t max_step, int64_t *budget,
                        int64_t *removed) {
  static const char sql[] =
      "SELECT first_step, blob, xf, tier FROM chunks WHERE stream = ?1 AND last_step <= ?2 "
      "AND tier = 0 AND n > 2 ORDER BY first_step LIMIT 1";
  int rc = SQLITE_OK;
  while (rc == SQLITE_OK && *budget > 0) {
    uint64_t *steps = NULL, es[2];
    double *vals = NULL, ev[2 * GW_METRIC_COUNT];
    size_t n = 0;
    int64_t first = 0;
    int have = 0, tier = 0;
    rc = load_chunk(db, sql, seg, max_step, &have, &first, &tier, &steps, &vals, &n);
    if (rc == SQLITE_OK && have && n < 3) rc = SQLITE_CORRUPT;
    if (rc == SQLITE_OK && have) {
      envelope(steps, vals, n, es, ev);
      rc = replace_chunk(db, seg, first, es, ev, 2, 1);
      if (rc == SQLITE_OK) *removed += (int64_t)n - 2;
      (*budget)--;
    }
    free(steps);
    free(vals);
    if (!have) break;
  }
  return rc;
}

/* ---------------------------------------------------------------- reads */

/* Chunks of a segment that overlap [?2, ?3], in step order: those from the
 * one holding ?2 (the last starting at or before it) up to ?3. */
#define CHUNKS_IN_RANGE                                                              \
  "FROM chunks WHERE stream = ?1 AND first_step <= ?3 AND last_step >= ?2 "          \
  "AND first_step >= coalesce((SELECT max(first_step) FROM chunks "                   \
  "WHERE stream = ?1 AND first_step <= ?2), -9223372036854775807 - 1) "

int gws_chunk_count(sqlite3 *db, int64_t seg, int64_t lo, int64_t hi, int64_t *n,
                    int64_t *min, int64_t *max) {
  static const char sql_rows[] =
      "SELECT count(*), min(step), max(step) FROM points WHERE stream = ?1 "
      "AND step BETWEEN ?2 AND ?3";
  static const char sql_in[] =
      "SELECT coalesce(sum(n), 0), min(first_step), max(last_step) " CHUNKS_IN_RANGE
      "AND first_step >= ?2 AND last_step <= ?3";
  static const char sql_edge[] =
      "SELECT blob " CHUNKS_IN_RANGE "AND (first_step < ?2 OR last_step > ?3)";
  const char *const q3[2] = {sql_rows, sql_in};
  sqlite3_stmt *s = NULL;
  int rc = SQLITE_OK;
  *n = 0;
  *min = INT64_MAX;
  *max = INT64_MIN;
  if (lo > hi) return 0;
  for (int q = 0; q < 2 && rc == SQLITE_OK; q++) {
    rc = sqlite3_prepare_v2(db, q3[q], -1, &s, NULL);
    if (rc == SQLITE_OK) {
      sqlite3_bind_int64(s, 1, seg);
      sqlite3_bind_int64(s, 2, lo);
      sqlite3_bind_int64(s, 3, hi);
      rc = sqlite3_step(s);
      if (rc == SQLITE_ROW) {
        rc = SQLITE_OK;
        *n += sqlite3_column_int64(s, 0);
        if (sqlite3_column_type(s, 1) != SQLITE_NULL && sqlite3_column_int64(s, 1) < *min)
          *min = sqlite3_column_int64(s, 1);
        if (sqlite3_column_type(s, 2) != SQLITE_NULL && sqlite3_column_int64(s, 2) > *max)
          *max = sqlite3_column_int64(s, 2);
      }
    }
    sqlite3_finalize(s);
    s = NULL;
  }
  if (rc == SQLITE_OK) rc = sqlite3_prepare_v2(db, sql_edge, -1, &s, NULL);
  if (rc == SQLITE_OK) {
    sqlite3_bind_int64(s, 1, seg);
    sqlite3_bind_int64(s, 2, lo);
    sqlite3_bind_int64(s, 3, hi);
    while (rc == SQLITE_OK && (rc = sqlite3_step(s)) == SQLITE_ROW) {
      uint64_t *steps = NULL;
      double *vals = NULL;
      size_t k = 0, nc = 0;
      rc = decode(sqlite3_column_blob(s, 0), sqlite3_column_bytes(s, 0), 0, &steps, &vals, &k,
                  &nc); /* steps only: the columns stay as stored */
      for (size_t i = 0; rc == SQLITE_OK && i < k; i++) {
        int64_t t = (int64_t)steps[i];
        if (t < lo || t > hi) continue;
        (*n)++;
        if (t < *min) *min = t;
        if (t > *max) *max = t;
      }
      free(steps);
      free(vals);
    }
    if (rc == SQLITE_DONE) rc = SQLITE_OK;
  }
  sqlite3_finalize(s);
  return gws_map_rc(rc);
}

void gws_pcur_close(gws_pcur_t *c) {
  sqlite3_finalize(c->ck);
  sqlite3_finalize(c->rw);
  free(c->steps);
  free(c->vals);
  memset(c, 0, sizeof *c);
}

int gws_pcur_open(gws_pcur_t *c, sqlite3 *db, int64_t seg, int64_t lo, int64_t hi) {
  static const char sql_ck[] = "SELECT blob, xf " CHUNKS_IN_RANGE "ORDER BY first_step";
  static const char sql_rw[] =
      "SELECT step, v FROM points WHERE stream = ?1 AND step BETWEEN ?2 AND ?3 "
      "ORDER BY step";
  int rc;
  memset(c, 0, sizeof *c);
  c->lo = lo;
  c->hi = hi;
  rc = sqlite3_prepare_v2(db, sql_ck, -1, &c->ck, NULL);
  if (rc == SQLITE_OK) rc = sqlite3_prepare_v2(db, sql_rw, -1, &c->rw, NULL);
  if (rc == SQLITE_OK) {
    sqlite3_stmt *s[2] = {c->ck, c->rw};
    for (int i = 0; i < 2; i++) {
      sqlite3_bind_int64(s[i], 1, seg);
      sqlite3_bind_int64(s[i], 2, lo);
      sqlite3_bind_int64(s[i], 3, hi);
    }
  }
  if (rc != SQLITE_OK) {
    gws_pcur_close(c);
    return gws_map_rc(rc);
  }
  return gws_pcur_next(c);
}

int gws_pcur_next(gws_pcur_t *c) {
  int rc;
  c->has = 0;
  while (!c->rows) {
    while (c->i < c->n) { /* the decoded chunk */
      size_t i = c->i++;
      int64_t t = (int64_t)c->steps[i];
      if (t < c->lo) continue;
      if (t > c->hi) break;
      c->has = 1;
      c->step = t;
      c->cv = c->vals + i * c->ncols;
      return 0;
    }
    free(c->steps);
    free(c->vals);
    c->steps = NULL;
    c->vals = NULL;
    c->n = c->i = 0;
    rc = sqlite3_step(c->ck);
    if (rc == SQLITE_ROW) {
      rc = decode(sqlite3_column_blob(c->ck, 0), sqlite3_column_bytes(c->ck, 0),
                  sqlite3_column_int(c->ck, 1), &c->steps, &c->vals, &c->n, &c->ncols);
      if (rc != SQLITE_OK) return gws_map_rc(rc);
      continue;
    }
    if (rc != SQLITE_DONE) return gws_map_rc(rc);
    c->rows = 1;
  }
  c->cv = NULL;
  rc = sqlite3_step(c->rw);
  if (rc == SQLITE_ROW) {
    c->has = 1;
    c->step = sqlite3_column_int64(c->rw, 0);
    c->blob = sqlite3_column_blob(c->rw, 1);
    c->bytes = sqlite3_column_bytes(c->rw, 1);
    return 0;
  }
  return rc == SQLITE_DONE ? 0 : gws_map_rc(rc);
}

double gws_pcur_metric(const gws_pcur_t *c, int m) {
  if (c->cv) return (size_t)m < c->ncols ? c->cv[m] : NAN;
  return (m + 1) * 8 <= c->bytes ? gws_get_f64le(c->blob + 8 * m) : NAN;
}

int gws_chunk_verify(sqlite3 *db) {
  static const char sql[] =
      "SELECT stream, first_step, last_step, n, blob, xf FROM chunks ORDER BY stream, first_step";
  static const char sql_rows[] =
      "SELECT count(*) FROM points p WHERE p.step <= "
      "(SELECT max(last_step) FROM chunks c WHERE c.stream = p.stream)";
  sqlite3_stmt *s = NULL;
  int64_t prev_seg = INT64_MIN, prev_last = INT64_MIN;
  int rc = sqlite3_prepare_v2(db, sql, -1, &s, NULL), bad = 0;
  while (rc == SQLITE_OK && !bad && (rc = sqlite3_step(s)) == SQLITE_ROW) {
    uint64_t *steps = NULL;
    double *vals = NULL;
    size_t n = 0, nc = 0;
    int64_t seg = sqlite3_column_int64(s, 0), first = sqlite3_column_int64(s, 1),
            last = sqlite3_column_int64(s, 2);
    rc = decode(sqlite3_column_blob(s, 4), sqlite3_column_bytes(s, 4), sqlite3_column_int(s, 5),
                &steps, &vals, &n, &nc);
    if (rc == SQLITE_CORRUPT) {
      bad = 1;
      rc = SQLITE_OK;
    } else if (rc == SQLITE_OK) {
      bad = n == 0 || (int64_t)n != sqlite3_column_int64(s, 3) || nc != GW_METRIC_COUNT ||
            (int64_t)steps[0] != first || (int64_t)steps[n - 1] != last ||
            (seg == prev_seg && first <= prev_last);
      for (size_t i = 1; i < n && !bad; i++) bad = steps[i] <= steps[i - 1];
    }
    prev_seg = seg;
    prev_last = last;
    free(steps);
    free(vals);
  }
  if (rc == SQLITE_DONE) rc = SQLITE_OK;
  sqlite3_finalize(s);
  if (rc == SQLITE_OK && !bad) {
    s = NULL;
    rc = sqlite3_prepare_v2(db, sql_rows, -1, &s, NULL);
    if (rc == SQLITE_OK && (rc = sqlite3_step(s)) == SQLITE_ROW) {
      bad = sqlite3_column_int64(s, 0) != 0;
      rc = SQLITE_OK;
    }
    sqlite3_finalize(s);
  }
  if (rc != SQLITE_OK) return gws_map_rc(rc) ? gws_map_rc(rc) : GW_EDB;
  return bad ? GW_EDB : 0;
}

/* ---------------------------------------------------------- whole store */

int gws_chunk_seal_all(sqlite3 *db, size_t chunk_n, int tails, int64_t *sealed) {
  /* segments with a full chunk of rows, or (tails) any rows at all of a
   * segment not live; transactions of at most SEAL_TXN_CHUNKS chunks keep
   * memory and the WAL bounded, and a pass cut short is simply resumed by
   * the next */
  static const char sql[] =
      "SELECT p.stream, count(*), s.live FROM points p JOIN streams s ON s.id = p.stream "
      "GROUP BY p.stream";
  sqlite3_stmt *s = NULL;
  int64_t *segs = NULL;
  size_t n = 0, cap = 0;
  int rc = sqlite3_prepare_v2(db, sql, -1, &s, NULL);
  while (rc == SQLITE_OK && (rc = sqlite3_step(s)) == SQLITE_ROW) {
    int64_t cnt = sqlite3_column_int64(s, 1);
    int live = sqlite3_column_int(s, 2);
    int tail = tails == GWS_SEAL_TAILS_ALL || (tails == GWS_SEAL_TAILS_IDLE && !live);
    rc = SQLITE_OK;
    if (cnt < (int64_t)chunk_n && !tail) continue;
    if (n == cap) {
      size_t nc = cap ? 2 * cap : 64;
      int64_t *g = realloc(segs, nc * sizeof *g);
      if (!g) {
        rc = SQLITE_NOMEM;
        break;
      }
      segs = g;
      cap = nc;
    }
    segs[n] = sqlite3_column_int64(s, 0) * 2 + tail;
    n++;
  }
  if (rc == SQLITE_DONE) rc = SQLITE_OK;
  sqlite3_finalize(s);
  for (size_t i = 0, txn = 0; rc == SQLITE_OK && i < n; i++) {
    int64_t seg = segs[i] / 2, before;
    size_t min_n = (segs[i] & 1) ? 1 : chunk_n;
    do { /* SEAL_TXN_CHUNKS chunks a transaction: a big segment's pass
            keeps the WAL short (checkpoints between transactions) */
      before = *sealed;
      rc = gws_exec(db, "BEGIN IMMEDIATE");
      if (rc == SQLITE_OK) rc = gws_chunk_seal(db, seg, chunk_n, min_n, SEAL_TXN_CHUNKS, sealed);
      if (rc == SQLITE_OK) rc = gws_exec(db, "COMMIT");
      if (rc != SQLITE_OK && !sqlite3_get_autocommit(db)) gws_exec(db, "ROLLBACK");
      if (rc == SQLITE_OK && ++txn % 16 == 0)
        sqlite3_wal_checkpoint_v2(db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
    } while (rc == SQLITE_OK && *sealed - before == (int64_t)(SEAL_TXN_CHUNKS * chunk_n));
  }
  if (rc == SQLITE_OK && n > 0) { /* give the rows' pages back */
    rc = gws_exec(db, "PRAGMA incremental_vacuum");
    sqlite3_wal_checkpoint_v2(db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
  }
  free(segs);
  return rc;
}
