/* bench_chunk.c — bytes per stored point with the columnar chunk codec
 * (daemon/chunk.c), measured on a real gradwatchd database.
 *
 *   bench_chunk DB [POINTS_PER_CHUNK=256] [ZSTD_LEVEL=3]
 *
 * Reads every stream's points (points table: step, v = float64 values) in
 * step order, cuts them into chunks of POINTS_PER_CHUNK, encodes each,
 * decodes it again and checks the round trip bit for bit, then prints the
 * database's bytes per point today (file size / points), the raw point
 * (8 + |v|), and the chunks' bytes per point, with and without an estimate
 * of 24 bytes of SQLite row and index overhead per chunk. Encode and decode
 * rates are for one core.
 */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "chunk.h"

#define ROW_OVERHEAD 24 /* per chunk row: key (stream, first_step), record header, cell */

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

typedef struct acc_s {
  size_t chunks, points, bytes;
  double t_enc, t_dec;
  int bad;
} acc_t;

static void flush(acc_t *a, const uint64_t *steps, const double *v, size_t n, size_t ncols,
                  int level) {
  gw_buf_t b;
  uint64_t *s2;
  double *v2;
  size_t n2, c2;
  if (!n) return;
  gw_buf_init(&b);
  double t = now_s();
  int rc = gw_chunk_encode(steps, v, n, ncols, level, &b);
  a->t_enc += now_s() - t;
  t = now_s();
  if (rc == 0) rc = gw_chunk_decode(b.p, b.len, &s2, &v2, &n2, &c2);
  a->t_dec += now_s() - t;
  if (rc || n2 != n || c2 != ncols || memcmp(s2, steps, n * 8) || memcmp(v2, v, n * ncols * 8)) {
    fprintf(stderr, "round trip failed (rc %d)\n", rc);
    a->bad = 1;
  }
  if (rc == 0) {
    free(s2);
    free(v2);
  }
  a->chunks++;
  a->points += n;
  a->bytes += b.len;
  gw_buf_free(&b);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: bench_chunk DB [POINTS_PER_CHUNK] [ZSTD_LEVEL]\n");
    return 2;
  }
  size_t per = argc > 2 ? (size_t)atol(argv[2]) : 256;
  int level = argc > 3 ? atoi(argv[3]) : 3;
  sqlite3 *db;
  sqlite3_stmt *st;
  struct stat sb;
  if (per == 0 || stat(argv[1], &sb) != 0 ||
      sqlite3_open_v2(argv[1], &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
    fprintf(stderr, "cannot open %s\n", argv[1]);
    return 1;
  }
  if (sqlite3_prepare_v2(db, "SELECT stream, step, v FROM points ORDER BY stream, step", -1, &st,
                         NULL) != SQLITE_OK) {
    fprintf(stderr, "%s\n", sqlite3_errmsg(db));
    return 1;
  }
  uint64_t *steps = malloc(per * sizeof *steps);
  double *v = NULL;
  size_t n = 0, ncols = 0, vlen = 0;
  int64_t stream = -1;
  acc_t a = {0};
  while (sqlite3_step(st) == SQLITE_ROW) {
    int64_t s = sqlite3_column_int64(st, 0);
    const void *blob = sqlite3_column_blob(st, 2);
    size_t len = (size_t)sqlite3_column_bytes(st, 2);
    if (!ncols) {
      vlen = len;
      ncols = len / 8;
      v = malloc(per * vlen);
    }
    if (len != vlen) {
      fprintf(stderr, "rows of different widths (%zu, %zu)\n", len, vlen);
      return 1;
    }
    if (s != stream || n == per) {
      flush(&a, steps, v, n, ncols, level);
      n = 0;
      stream = s;
    }
    steps[n] = (uint64_t)sqlite3_column_int64(st, 1);
    memcpy(v + n * ncols, blob, len);
    n++;
  }
  flush(&a, steps, v, n, ncols, level);
  sqlite3_finalize(st);
  sqlite3_close(db);
  if (!a.points) {
    fprintf(stderr, "no points\n");
    return 1;
  }
  printf("points %zu, streams' chunks %zu (%zu points each at most), %zu values a point\n",
         a.points, a.chunks, per, ncols);
  printf("database today: %.0f bytes/point (file %lld bytes)\n",
         (double)sb.st_size / (double)a.points, (long long)sb.st_size);
  printf("raw point: %zu bytes\n", 8 + vlen);
  printf("chunks: %.1f bytes/point (%.1f with %d bytes of row overhead per chunk), "
         "lossless %s\n",
         (double)a.bytes / (double)a.points,
         (double)(a.bytes + a.chunks * ROW_OVERHEAD) / (double)a.points, ROW_OVERHEAD,
         a.bad ? "NO" : "yes");
  printf("encode %.0f points/s, decode %.0f points/s (one core, zstd level %d)\n",
         (double)a.points / a.t_enc, (double)a.points / a.t_dec, level);
  free(steps);
  free(v);
  return a.bad;
}
