/* ring.h — a bounded single-producer single-consumer byte ring of records,
 * the hand-off between ingest's loop thread (producer) and one engine
 * worker (consumer).
 *
 * A record is a topic and a body copied back to back behind an 8-byte
 * header (u32 length of topic+body, u32 topic length), padded to 8 bytes.
 * head and tail count bytes ever written and read; a position is
 * count % cap. When a record does not fit before the end of the buffer the
 * producer marks the rest as skipped and wraps, so a record is always
 * contiguous. Lock-free: head is written only by the producer (release) and
 * tail only by the consumer (release); each reads the other's with acquire,
 * so the bytes of a record are visible before its header is.
 */
#ifndef GW_RING_H
#define GW_RING_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

typedef struct gw_ring_s {
  uint8_t *buf;
  size_t cap; /* bytes, a multiple of 8 */
  _Atomic size_t head;
  _Atomic size_t tail;
} gw_ring_t;

/* cap is rounded up to a multiple of 8. 0 or GW_ENOMEM. */
int gw_ring_init(gw_ring_t *r, size_t cap);
void gw_ring_free(gw_ring_t *r);

/* Producer: append one record; 1 if appended, 0 if there is no room now
 * (nothing written). A record larger than the ring can never fit: check
 * gw_ring_fits first. */
int gw_ring_push(gw_ring_t *r, const void *topic, size_t tlen, const void *body, size_t blen);
/* 1 if a record of these sizes can ever fit in the ring. */
int gw_ring_fits(const gw_ring_t *r, size_t tlen, size_t blen);

/* Consumer: the next record (topic at the returned pointer, *tlen bytes,
 * then the body, *len - *tlen bytes), or NULL if the ring is empty. The
 * bytes stay valid until gw_ring_pop. */
const uint8_t *gw_ring_peek(gw_ring_t *r, uint32_t *len, uint32_t *tlen);
/* Consumer: release the record returned by gw_ring_peek (len from it). */
void gw_ring_pop(gw_ring_t *r, uint32_t len);

/* Bytes in use, either side (a snapshot). */
size_t gw_ring_used(gw_ring_t *r);

#endif
