/* ring.c — the SPSC record ring of ring.h. */
#include "ring.h"

#include <stdlib.h>
#include <string.h>

#include "gw_error.h"

#define RING_SKIP UINT32_MAX /* record header: rest of the buffer unused */

static size_t pad8(size_t n) { return (n + 7) & ~(size_t)7; }

int gw_ring_init(gw_ring_t *r, size_t cap) {
  cap = pad8(cap);
  r->buf = cap ? malloc(cap) : NULL;
  r->cap = cap;
  atomic_init(&r->head, 0);
  atomic_init(&r->tail, 0);
  return r->buf ? 0 : GW_ENOMEM;
}

void gw_ring_free(gw_ring_t *r) {
  free(r->buf);
  r->buf = NULL;
  r->cap = 0;
}

int gw_ring_fits(const gw_ring_t *r, size_t tlen, size_t blen) {
  return 8 + pad8(tlen + blen) <= r->cap;
}

int gw_ring_push(gw_ring_t *r, const void *topic, size_t tlen, const void *body, size_t blen) {
  size_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
  size_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
  size_t need = 8 + pad8(tlen + blen), pos = head % r->cap, skip = 0;
  if (r->cap - pos < need) skip = r->cap - pos; /* wrap: waste the end */
  if (need + skip > r->cap - (head - tail)) return 0;
  if (skip) {
    uint32_t mark[2] = {RING_SKIP, 0};
    memcpy(r->buf + pos, mark, 8); /* pos and cap are multiples of 8 */
    head += skip;
    pos = 0;
  }
  uint32_t hdr[2] = {(uint32_t)(tlen + blen), (uint32_t)tlen};
  memcpy(r->buf + pos, hdr, 8);
  memcpy(r->buf + pos + 8, topic, tlen);
  memcpy(r->buf + pos + 8 + tlen, body, blen);
  atomic_store_explicit(&r->head, head + need, memory_order_release);
  return 1;
}

const uint8_t *gw_ring_peek(gw_ring_t *r, uint32_t *len, uint32_t *tlen) {
  for (;;) {
    size_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
    size_t head = atomic_load_explicit(&r->head, memory_order_acquire);
    if (tail == head) return NULL;
    size_t pos = tail % r->cap;
    uint32_t hdr[2];
    memcpy(hdr, r->buf + pos, 8);
    if (hdr[0] == RING_SKIP) { /* the producer wrapped here */
      atomic_store_explicit(&r->tail, tail + (r->cap - pos), memory_order_release);
      continue;
    }
    *len = hdr[0];
    *tlen = hdr[1];
    return r->buf + pos + 8;
  }
}

void gw_ring_pop(gw_ring_t *r, uint32_t len) {
  size_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
  atomic_store_explicit(&r->tail, tail + 8 + pad8(len), memory_order_release);
}

size_t gw_ring_used(gw_ring_t *r) {
  return atomic_load_explicit(&r->head, memory_order_acquire) -
         atomic_load_explicit(&r->tail, memory_order_acquire);
}
