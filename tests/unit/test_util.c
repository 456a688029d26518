/* test_util.c — daemon/util.c: FNV-1a against published test values, the
 * growable buffer against snprintf, the (run, tag) table against a linear
 * list model under random inserts, finds and removals. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "util.h"

static void fnv_values(void **state) {
  (void)state;
  /* FNV-1a 64 reference values (Fowler/Noll/Vo test suite) */
  assert_int_equal(gw_fnv1a(GW_FNV_OFFSET, "", 0), 0xcbf29ce484222325ull);
  assert_int_equal(gw_fnv1a(GW_FNV_OFFSET, "a", 1), 0xaf63dc4c8601ec8cull);
  assert_int_equal(gw_fnv1a(GW_FNV_OFFSET, "foobar", 6), 0x85944171f73967e8ull);
  /* folding in pieces equals one pass; the pair hash is run, 0xff, tag */
  uint64_t h = gw_fnv1a(gw_fnv1a(GW_FNV_OFFSET, "foo", 3), "bar", 3);
  assert_int_equal(h, 0x85944171f73967e8ull);
  assert_int_equal(gw_stream_hash("ab", 2, "c", 1), gw_fnv1a(GW_FNV_OFFSET, "ab\xff" "c", 4));
  assert_int_not_equal(gw_stream_hash("ab", 2, "c", 1), gw_stream_hash("a", 1, "bc", 2));
}

static void buf_grows(void **state) {
  (void)state;
  gw_buf_t b;
  gw_buf_init(&b);
  char want[20000];
  size_t n = 0;
  for (int i = 0; i < 2000; i++) {
    gw_buf_printf(&b, "%d,", i);
    n += (size_t)snprintf(want + n, sizeof want - n, "%d,", i);
  }
  char big[600];
  memset(big, 'x', sizeof big - 1);
  big[sizeof big - 1] = '\0';
  gw_buf_printf(&b, "%s", big); /* longer than the small stack buffer */
  n += (size_t)snprintf(want + n, sizeof want - n, "%s", big);
  gw_buf_append(&b, "\0z", 2); /* embedded NUL kept, length exact */
  assert_int_equal(b.len, n + 2);
  assert_memory_equal(b.p, want, n);
  assert_int_equal(b.p[n + 1], 'z');
  assert_int_equal(b.p[b.len], '\0');
  gw_buf_reset(&b);
  assert_int_equal(b.len, 0);
  gw_buf_puts(&b, "hi");
  char *s = gw_buf_steal(&b);
  assert_string_equal(s, "hi");
  assert_null(b.p);
  free(s);
  gw_buf_t e;
  gw_buf_init(&e);
  s = gw_buf_steal(&e); /* an empty buffer gives "" */
  assert_string_equal(s, "");
  free(s);
}

typedef struct {
  gw_rtnode_t node; /* first member */
  char run[16], tag[16];
  int live;
} ent_t;

static void rtmap_model(void **state) {
  (void)state;
  enum { N = 3000 };
  ent_t *e = calloc(N, sizeof *e);
  gw_rtmap_t m;
  assert_int_equal(gw_rtmap_init(&m), 0);
  for (int i = 0; i < N; i++) {
    snprintf(e[i].run, sizeof e[i].run, "r%d", i % 37);
    snprintf(e[i].tag, sizeof e[i].tag, "t%d", i);
    e[i].node.run = e[i].run;
    e[i].node.tag = e[i].tag;
  }
  uint64_t s = 9;
  size_t live = 0;
  for (int it = 0; it < 40000; it++) {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    int i = (int)(s % N);
    gw_rtnode_t *f = gw_rtmap_find(&m, e[i].run, e[i].tag);
    assert_ptr_equal(f, e[i].live ? &e[i].node : NULL);
    if (!e[i].live) {
      assert_int_equal(gw_rtmap_insert(&m, &e[i].node), 0);
      e[i].live = 1;
      live++;
    } else if (s & 0x100) {
      assert_ptr_equal(gw_rtmap_remove(&m, e[i].run, e[i].tag), &e[i].node);
      e[i].live = 0;
      live--;
    }
    assert_int_equal(m.count, live);
  }
  /* iteration visits every live entry once, and may remove as it goes */
  size_t seen = 0;
  gw_rtiter_t it = {0};
  gw_rtnode_t *n;
  while ((n = gw_rtmap_next(&m, &it))) {
    ent_t *x = GW_CONTAINER_OF(n, ent_t, node);
    assert_true(x->live);
    x->live = 2;
    seen++;
    if (seen % 2) assert_ptr_equal(gw_rtmap_remove(&m, x->run, x->tag), n);
  }
  assert_int_equal(seen, live);
  assert_int_equal(m.count, live / 2);
  assert_null(gw_rtmap_find(&m, "nope", "t1"));
  gw_rtmap_free(&m);
  free(e);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(fnv_values),
      cmocka_unit_test(buf_grows),
      cmocka_unit_test(rtmap_model),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
