/* test_ring.c — the SPSC record ring (daemon/ring.c).
 *
 * Single-threaded: random record sizes against a model FIFO (an array of the
 * records pushed and not yet popped): every record comes back whole, in
 * order, "full" is reported exactly when the model says the bytes don't fit,
 * including the bytes wasted at a wrap. Two threads: a producer pushes
 * 300,000 numbered records with content derived from their number while a
 * consumer checks each one; a torn or reordered record fails the test.
 */
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "ring.h"

static uint64_t rng(uint64_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s;
}

static void fill(uint8_t *p, size_t n, uint64_t seq) {
  for (size_t i = 0; i < n; i++) p[i] = (uint8_t)(seq * 31 + i * 7);
}

static size_t pad8(size_t n) { return (n + 7) & ~(size_t)7; }

typedef struct {
  uint64_t seq;
  size_t tlen, blen;
} rec_t;

static void model_fifo(void **state) {
  (void)state;
  gw_ring_t r;
  assert_int_equal(gw_ring_init(&r, 1000), 0); /* rounded up to 1000 → 1000 */
  assert_int_equal(r.cap % 8, 0);
  rec_t q[4096];
  size_t qh = 0, qt = 0;
  uint64_t s = 42, next = 0;
  size_t head = 0, tail = 0; /* the model's byte counters */
  uint8_t topic[300], body[300];
  for (int it = 0; it < 200000; it++) {
    if (rng(&s) % 2) {
      size_t tl = 1 + rng(&s) % 40, bl = rng(&s) % 200;
      fill(topic, tl, next);
      fill(body, bl, next + 1000);
      size_t need = 8 + pad8(tl + bl), pos = head % r.cap;
      size_t skip = r.cap - pos < need ? r.cap - pos : 0;
      int fits = need + skip <= r.cap - (head - tail);
      int got = gw_ring_push(&r, topic, tl, body, bl);
      assert_int_equal(got, fits);
      if (got) {
        head += skip + need;
        q[qh++ % 4096] = (rec_t){next++, tl, bl};
      }
    } else {
      uint32_t len, tlen;
      const uint8_t *p = gw_ring_peek(&r, &len, &tlen);
      if (qt == qh) {
        assert_null(p);
        continue;
      }
      assert_non_null(p);
      rec_t e = q[qt++ % 4096];
      assert_int_equal(tlen, e.tlen);
      assert_int_equal(len, e.tlen + e.blen);
      fill(topic, e.tlen, e.seq);
      fill(body, e.blen, e.seq + 1000);
      assert_memory_equal(p, topic, e.tlen);
      if (e.blen) assert_memory_equal(p + e.tlen, body, e.blen);
      gw_ring_pop(&r, len);
      /* the model's tail: past any skip, then past the record */
      size_t pos = tail % r.cap, need = 8 + pad8(len);
      if (r.cap - pos < need) tail += r.cap - pos;
      tail += need;
    }
    assert_int_equal(gw_ring_used(&r), head - tail);
  }
  assert_true(next > 10000);
  assert_true(gw_ring_fits(&r, 100, 100));
  assert_false(gw_ring_fits(&r, 500, 500));
  gw_ring_free(&r);
}

typedef struct {
  gw_ring_t *r;
  uint64_t n;
} prod_t;

static void *producer(void *arg) {
  prod_t *p = arg;
  uint8_t body[256];
  uint64_t s = 7;
  for (uint64_t i = 0; i < p->n; i++) {
    size_t bl = 8 + rng(&s) % 200;
    memcpy(body, &i, 8);
    fill(body + 8, bl - 8, i);
    while (!gw_ring_push(p->r, "t", 1, body, bl)) sched_yield();
  }
  return NULL;
}

static void two_threads(void **state) {
  (void)state;
  gw_ring_t r;
  assert_int_equal(gw_ring_init(&r, 4096), 0);
  prod_t p = {&r, 300000};
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, producer, &p), 0);
  uint8_t want[256];
  for (uint64_t i = 0; i < p.n;) {
    uint32_t len, tlen;
    const uint8_t *rec = gw_ring_peek(&r, &len, &tlen);
    if (!rec) {
      sched_yield();
      continue;
    }
    assert_int_equal(tlen, 1);
    assert_int_equal(rec[0], 't');
    uint64_t seq;
    memcpy(&seq, rec + 1, 8);
    assert_int_equal(seq, i);
    fill(want, len - 9, i);
    assert_memory_equal(rec + 9, want, len - 9);
    gw_ring_pop(&r, len);
    i++;
  }
  pthread_join(th, NULL);
  assert_int_equal(gw_ring_used(&r), 0);
  gw_ring_free(&r);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(model_fifo),
      cmocka_unit_test(two_threads),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
