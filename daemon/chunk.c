/* chunk.c — the columnar point chunk codec (chunk.h has the layout).
 *
 * Encoding builds the raw image in one buffer (steps as delta-of-delta
 * varints, then each column XOR-delta'd and split into byte planes) and
 * compresses it with zstd in one call; decoding checks the header,
 * decompresses into a buffer of exactly raw_len bytes and undoes both
 * steps. Pure functions of their inputs: no state, any thread.
 */
#include "chunk.h"

#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#define MAGIC "GWC1"
#define CODEC_ZSTD 1

static size_t put_varint(uint8_t *p, uint64_t v) {
  size_t n = 0;
  while (v >= 0x80) {
    p[n++] = (uint8_t)(v | 0x80);
    v >>= 7;
  }
  p[n++] = (uint8_t)v;
  return n;
}

/* 0 and the value, or GW_ETRUNC past end / GW_EINVAL for an overlong one. */
static int get_varint(const uint8_t **p, const uint8_t *end, uint64_t *v) {
  uint64_t x = 0;
  for (int shift = 0; shift < 70; shift += 7) {
    if (*p == end) return GW_ETRUNC;
    uint8_t b = *(*p)++;
    if (shift == 63 && b > 1) return GW_EINVAL;
    x |= (uint64_t)(b & 0x7f) << shift;
    if (!(b & 0x80)) {
      *v = x;
      return 0;
    }
  }
  return GW_EINVAL;
}

static uint64_t zigzag(uint64_t v) { return (v << 1) ^ (uint64_t)-(int64_t)(v >> 63); }
static uint64_t unzigzag(uint64_t z) { return (z >> 1) ^ (uint64_t)-(int64_t)(z & 1); }

static uint64_t bits(double d) {
  uint64_t u;
  memcpy(&u, &d, sizeof u);
  return u;
}

int gw_chunk_encode(const uint64_t *steps, const double *values, size_t n, size_t ncols,
                    int level, gw_buf_t *out) {
  if (n > GW_CHUNK_MAX_POINTS || ncols == 0 || ncols > GW_CHUNK_MAX_COLS || (n && (!steps || !values)))
    return GW_EINVAL;
  size_t raw_cap = n * 10 + n * ncols * 8, raw_len = 0;
  uint8_t *raw = malloc(raw_cap ? raw_cap : 1);
  if (!raw) return GW_ENOMEM;
  uint64_t prev = 0, prev_delta = 0;
  for (size_t i = 0; i < n; i++) {
    if (i == 0) {
      raw_len += put_varint(raw + raw_len, steps[0]);
    } else {
      uint64_t delta = steps[i] - prev;
      raw_len += put_varint(raw + raw_len, zigzag(delta - prev_delta));
      prev_delta = delta;
    }
    prev = steps[i];
  }
  for (size_t c = 0; c < ncols; c++) {
    uint8_t *plane = raw + raw_len;
    uint64_t last = 0;
    for (size_t i = 0; i < n; i++) {
      uint64_t u = bits(values[i * ncols + c]), x = u ^ last;
      last = u;
      for (int b = 0; b < 8; b++) plane[(size_t)b * n + i] = (uint8_t)(x >> (8 * b));
    }
    raw_len += 8 * n;
  }
  int rc = 0;
  uint8_t hdr[5 + 3 * 10];
  size_t h = 0;
  memcpy(hdr, MAGIC, 4);
  hdr[4] = CODEC_ZSTD;
  h = 5;
  h += put_varint(hdr + h, n);
  h += put_varint(hdr + h, ncols);
  h += put_varint(hdr + h, raw_len);
  size_t bound = ZSTD_compressBound(raw_len);
  ZSTD_CCtx *cx = ZSTD_createCCtx();
  if (!cx || gw_buf_reserve(out, h + bound)) {
    rc = GW_ENOMEM;
    goto done;
  }
  gw_buf_append(out, hdr, h);
  if (ZSTD_isError(ZSTD_CCtx_setParameter(cx, ZSTD_c_compressionLevel, level)) ||
      ZSTD_isError(ZSTD_CCtx_setParameter(cx, ZSTD_c_checksumFlag, 1))) {
    rc = GW_EINVAL;
    out->len -= h;
    goto done;
  }
  size_t z = ZSTD_compress2(cx, out->p + out->len, bound, raw, raw_len);
  if (ZSTD_isError(z)) {
    rc = GW_EIO;
    out->len -= h;
    goto done;
  }
  out->len += z;
  out->p[out->len] = '\0';
done:
  ZSTD_freeCCtx(cx);
  free(raw);
  return rc;
}

int gw_chunk_decode(const void *blob, size_t len, uint64_t **steps_out, double **values_out,
                    size_t *n_out, size_t *ncols_out) {
  const uint8_t *p = blob, *end = p + len;
  uint64_t n, ncols, raw_len;
  uint64_t *steps = NULL;
  double *values = NULL;
  uint8_t *raw = NULL;
  int rc;
  *steps_out = NULL;
  *values_out = NULL;
  *n_out = *ncols_out = 0;
  if (len < 5) return GW_ETRUNC;
  if (memcmp(p, MAGIC, 4)) return GW_EMAGIC;
  if (p[4] != CODEC_ZSTD) return GW_EVERSION;
  p += 5;
  if ((rc = get_varint(&p, end, &n)) || (rc = get_varint(&p, end, &ncols)) ||
      (rc = get_varint(&p, end, &raw_len)))
    return rc;
  if (n > GW_CHUNK_MAX_POINTS || ncols == 0 || ncols > GW_CHUNK_MAX_COLS ||
      raw_len < n * ncols * 8 + n || raw_len > n * 10 + n * ncols * 8)
    return GW_EINVAL;
  unsigned long long content = ZSTD_getFrameContentSize(p, (size_t)(end - p));
  if (content == ZSTD_CONTENTSIZE_ERROR) return GW_ETRUNC;
  if (content != raw_len) return GW_EINVAL;
  if (!(raw = malloc(raw_len ? raw_len : 1)) || (n && (!(steps = malloc(n * sizeof *steps)) ||
                                                      !(values = malloc(n * ncols * sizeof *values))))) {
    rc = GW_ENOMEM;
    goto fail;
  }
  size_t got = ZSTD_decompress(raw, raw_len, p, (size_t)(end - p));
  if (ZSTD_isError(got)) {
    rc = GW_EINVAL; /* corrupt or truncated frame, or a checksum mismatch */
    goto fail;
  }
  if (got != raw_len) {
    rc = GW_EINVAL;
    goto fail;
  }
  const uint8_t *q = raw, *qend = raw + raw_len - n * ncols * 8;
  uint64_t prev = 0, delta = 0;
  for (size_t i = 0; i < n; i++) {
    uint64_t v;
    if ((rc = get_varint(&q, qend, &v))) {
      rc = GW_EINVAL;
      goto fail;
    }
    if (i == 0) {
      prev = v;
    } else {
      delta += unzigzag(v);
      prev += delta;
    }
    steps[i] = prev;
  }
  if (q != qend) {
    rc = GW_EINVAL;
    goto fail;
  }
  for (size_t c = 0; c < ncols; c++) {
    const uint8_t *plane = q + c * 8 * n;
    uint64_t last = 0;
    for (size_t i = 0; i < n; i++) {
      uint64_t x = 0;
      for (int b = 0; b < 8; b++) x |= (uint64_t)plane[(size_t)b * n + i] << (8 * b);
      last ^= x;
      memcpy(&values[i * ncols + c], &last, sizeof last);
    }
  }
  free(raw);
  *steps_out = steps;
  *values_out = values;
  *n_out = n;
  *ncols_out = ncols;
  return 0;
fail:
  free(raw);
  free(steps);
  free(values);
  return rc;
}
