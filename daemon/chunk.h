/* chunk.h — a run of one stream's points as one compressed, columnar,
 * lossless blob: the codec for storing points a few hundred at a time
 * instead of one row each.
 *
 * Input: n points in step order, each a step and ncols float64 values (the
 * store's point layout: GW_METRIC_COUNT values in point.h id order, NaN for
 * null). Output: a self-describing blob that decodes to exactly the same
 * steps and the same 64-bit patterns (NaN payloads, -0.0, subnormals kept).
 *
 * Layout (all integers little-endian or LEB128 varints):
 *
 *   "GWC1"  u8 codec (1 = zstd)  varint n  varint ncols  varint raw_len
 *   zstd frame (content checksum on) of the raw image:
 *     steps   varint step_0, then for i >= 1 the zigzag varint of
 *             (step_i - step_{i-1}) - (step_{i-1} - step_{i-2})
 *             (delta of delta, mod 2^64; the delta before step_0 is 0)
 *     columns for each column c: the n words bits(v_i) XOR bits(v_{i-1})
 *             (bits(v_{-1}) = 0), stored as 8 byte planes — byte 0 of every
 *             word, then byte 1, … — so runs of equal values and slowly
 *             moving exponents become long runs of zero bytes for zstd.
 *
 * Integrity: zstd's checksum covers the image; the header's n, ncols and
 * raw_len must agree with it exactly, so truncation and corruption are
 * errors (GW_ETRUNC, GW_EMAGIC, GW_EVERSION, GW_EINVAL), never a misread.
 */
#ifndef GW_CHUNK_H
#define GW_CHUNK_H

#include <stddef.h>
#include <stdint.h>

#include "gw_error.h"
#include "util.h"

#define GW_CHUNK_MAX_POINTS (1u << 20)
#define GW_CHUNK_MAX_COLS 1024u

/* Append the chunk of n points (steps[n], values[n * ncols] row-major) to
 * out. level: zstd level (1..19; 3 is a good default). 0, GW_EINVAL (n or
 * ncols over the limits, ncols 0), GW_ENOMEM or GW_EIO (zstd). */
int gw_chunk_encode(const uint64_t *steps, const double *values, size_t n, size_t ncols,
                    int level, gw_buf_t *out);

/* Decode a chunk. On success *steps (n) and *values (n * ncols, row-major)
 * are the caller's to free (NULL when n is 0). On failure both are NULL and
 * *n = *ncols = 0. */
int gw_chunk_decode(const void *blob, size_t len, uint64_t **steps, double **values, size_t *n,
                    size_t *ncols);

#endif
