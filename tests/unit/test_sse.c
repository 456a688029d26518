/* test_sse.c — the CLI's event-stream parser (client/cli_sse.c) against the
 * WHATWG event-stream rules, each case with its expected events written out
 * by hand: fields, multi-line data, comments, CR/LF/CRLF line ends, the
 * byte order mark, dispatch rules, every split of a stream into two and
 * into single bytes, the size caps and their sticky error, stopping from the
 * callback.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "cli_sse.h"
#include "gw_error.h"

#define MAXEV 32

typedef struct ev_s {
  char type[64], id[64];
  char data[256];
  size_t data_len;
} ev_t;

typedef struct got_s {
  ev_t ev[MAXEV];
  size_t n;
  size_t stop_after; /* return 7 from the callback after this many (0 = never) */
} got_t;

static int collect(void *ud, const cli_sse_event_t *e) {
  got_t *g = ud;
  assert_true(g->n < MAXEV);
  assert_int_equal(strlen(e->type), e->type_len);
  assert_true(e->type_len < sizeof g->ev[0].type);
  assert_true(strlen(e->id) < sizeof g->ev[0].id);
  assert_true(e->data_len < sizeof g->ev[0].data);
  assert_int_equal(e->data[e->data_len], '\0'); /* NUL-terminated */
  ev_t *v = &g->ev[g->n++];
  strcpy(v->type, e->type);
  strcpy(v->id, e->id);
  memcpy(v->data, e->data, e->data_len + 1);
  v->data_len = e->data_len;
  return g->stop_after && g->n >= g->stop_after ? 7 : 0;
}

/* Expected events: triples of type, data, id (NULL-terminated list). */
static void expect(const got_t *g, const char *const *want) {
  size_t n = 0;
  for (; want[3 * n]; n++) {
    assert_true(n < g->n);
    assert_string_equal(g->ev[n].type, want[3 * n]);
    assert_int_equal(g->ev[n].data_len, strlen(want[3 * n + 1]));
    assert_memory_equal(g->ev[n].data, want[3 * n + 1], g->ev[n].data_len);
    assert_string_equal(g->ev[n].id, want[3 * n + 2]);
  }
  assert_int_equal(g->n, n);
}

/* Parse s whole with fresh parser and default caps. */
static int parse(const char *s, size_t n, got_t *g) {
  cli_sse_t p;
  cli_sse_init(&p, 1024, 4096);
  memset(g, 0, sizeof *g);
  int rc = cli_sse_feed(&p, s, n, collect, g);
  cli_sse_free(&p);
  return rc;
}

static void fields(void **state) {
  (void)state;
  static const char s[] =
      "event: point\ndata: {\"a\":1}\nid: 5\n\n"  /* a typed event with an id */
      "data:no space\n\n"                          /* no space after ':' */
      "data:  two spaces\n\n"                      /* only one space is dropped */
      "data\n\n"                                   /* no colon: empty value, one LF removed */
      "foo: bar\nretry: x\ndata: x:y: z\n\n"       /* unknown field; value keeps later colons */
      "event:\ndata: typed empty\n\n"              /* an empty type is "message" */
      "id\ndata: id cleared\n\n";                  /* an empty id */
  static const char *const want[] = {
      "point", "{\"a\":1}", "5",
      "message", "no space", "5",
      "message", " two spaces", "5",
      "message", "", "5",
      "message", "x:y: z", "5",
      "message", "typed empty", "5",
      "message", "id cleared", "",
      NULL};
  got_t g;
  assert_int_equal(parse(s, sizeof s - 1, &g), 0);
  expect(&g, want);
}

static void multiline_and_comments(void **state) {
  (void)state;
  static const char s[] =
      ": heartbeat\n"
      "data: a\n: a comment between data lines\ndata: b\ndata\ndata: c\n\n"
      "data\ndata\n\n"               /* two empty lines of data: one LF */
      ":\n\n"                        /* a bare comment then an empty line: nothing */
      "event: lonely\n\n"            /* no data: nothing, and the type is cleared */
      "data: after\n\n";
  static const char *const want[] = {
      "message", "a\nb\n\nc", "",
      "message", "\n", "",
      "message", "after", "",
      NULL};
  got_t g;
  assert_int_equal(parse(s, sizeof s - 1, &g), 0);
  expect(&g, want);
}

static void line_ends(void **state) {
  (void)state;
  static const char *const want[] = {
      "e", "one\ntwo", "",
      "message", "three", "",
      NULL};
  static const char lf[] = "event: e\ndata: one\ndata: two\n\ndata: three\n\n";
  static const char crlf[] = "event: e\r\ndata: one\r\ndata: two\r\n\r\ndata: three\r\n\r\n";
  static const char cr[] = "event: e\rdata: one\rdata: two\r\rdata: three\r\r";
  static const char mixed[] = "event: e\rdata: one\r\ndata: two\n\r\ndata: three\n\r";
  const char *all[] = {lf, crlf, cr, mixed};
  got_t g;
  for (size_t i = 0; i < 4; i++) {
    assert_int_equal(parse(all[i], strlen(all[i]), &g), 0);
    expect(&g, want);
  }
  /* CR CR is two line ends (an empty line: dispatch); LF CR too. */
  static const char *const want2[] = {"message", "a", "", "message", "b", "", NULL};
  assert_int_equal(parse("data: a\r\rdata: b\n\r", 18, &g), 0);
  expect(&g, want2);
  /* A CR must not swallow a following non-LF byte. */
  static const char *const want3[] = {"message", "x\ny", "", NULL};
  assert_int_equal(parse("data: x\rdata: y\r\n\r\n", 19, &g), 0);
  expect(&g, want3);
}

static void unfinished_event_is_discarded(void **state) {
  (void)state;
  cli_sse_t p;
  got_t g;
  memset(&g, 0, sizeof g);
  cli_sse_init(&p, 64, 64);
  /* Data without the closing empty line, then the stream ends. */
  assert_int_equal(cli_sse_feed(&p, "id: 9\ndata: lost\n", 17, collect, &g), 0);
  assert_int_equal(g.n, 0);
  cli_sse_reset(&p); /* reconnect: a new stream */
  assert_int_equal(cli_sse_feed(&p, "data: kept\n\n", 12, collect, &g), 0);
  /* The half line "data: lo" is also dropped by a reset. */
  assert_int_equal(cli_sse_feed(&p, "data: lo", 8, collect, &g), 0);
  cli_sse_reset(&p);
  assert_int_equal(cli_sse_feed(&p, "\n\n", 2, collect, &g), 0);
  /* The last event ID survives the reconnect (EventSource keeps it). */
  static const char *const want[] = {"message", "kept", "9", NULL};
  expect(&g, want);
  cli_sse_free(&p);
}

static void id_and_retry(void **state) {
  (void)state;
  cli_sse_t p;
  got_t g;
  memset(&g, 0, sizeof g);
  cli_sse_init(&p, 64, 64);
  static const char s[] = "id: a\0b\ndata: 1\n\nretry: 1500\nretry: 15x\nretry:\ndata: 2\n\n";
  assert_int_equal(cli_sse_feed(&p, "id: first\n", 10, collect, &g), 0);
  assert_int_equal(cli_sse_feed(&p, s, sizeof s - 1, collect, &g), 0);
  static const char *const want[] = {"message", "1", "first", "message", "2", "first", NULL};
  expect(&g, want); /* an id holding NUL is ignored */
  assert_int_equal(p.retry_ms, 1500); /* non-digits and empty values ignored */
  assert_int_equal(cli_sse_feed(&p, "retry: 99999999999999999999999\n", 31, collect, &g), 0);
  assert_true(p.retry_ms == INT64_MAX); /* saturates */
  cli_sse_free(&p);
}

static void data_may_hold_nul(void **state) {
  (void)state;
  got_t g;
  static const char s[] = "data: a\0b\n\n";
  assert_int_equal(parse(s, sizeof s - 1, &g), 0);
  assert_int_equal(g.n, 1);
  assert_int_equal(g.ev[0].data_len, 3);
  assert_memory_equal(g.ev[0].data, "a\0b", 3);
}

static void byte_order_mark(void **state) {
  (void)state;
  got_t g;
  static const char *const want[] = {"message", "x", "", NULL};
  assert_int_equal(parse("\xEF\xBB\xBF" "data: x\n\n", 12, &g), 0);
  expect(&g, want);
  /* Only at the start: a second BOM makes the field name unknown. */
  assert_int_equal(parse("\xEF\xBB\xBF\xEF\xBB\xBF" "data: x\n\n", 15, &g), 0);
  assert_int_equal(g.n, 0);
  /* A partial BOM is content: here it spoils the field name. */
  assert_int_equal(parse("\xEF\xBB" "data: x\n\n", 11, &g), 0);
  assert_int_equal(g.n, 0);
  /* A partial BOM then a line end: the byte is a line of its own (an
   * unknown field), the stream goes on. */
  assert_int_equal(parse("\xEF" "\n" "data: y\n\n", 11, &g), 0);
  static const char *const want_y[] = {"message", "y", "", NULL};
  expect(&g, want_y);
}

/* The reference stream for the split tests and its events. */
static const char split_src[] =
    "\xEF\xBB\xBF: hi\r\n"
    "event: point\r\ndata: {\"step\":1}\r\nid: 1\r\n\r\n"
    "data: a\rdata: b\r\r"
    "data:c\n\n"
    "retry: 10\n"
    "event: alert\ndata: x\r\ndata: y\r\n\n";
static const char *const split_want[] = {
    "point", "{\"step\":1}", "1",
    "message", "a\nb", "1",
    "message", "c", "1",
    "alert", "x\ny", "1",
    NULL};

static void every_split_gives_the_same_events(void **state) {
  (void)state;
  const size_t n = sizeof split_src - 1;
  got_t g;
  assert_int_equal(parse(split_src, n, &g), 0);
  expect(&g, split_want);
  for (size_t cut = 0; cut <= n; cut++) { /* two pieces, cut anywhere */
    cli_sse_t p;
    memset(&g, 0, sizeof g);
    cli_sse_init(&p, 1024, 4096);
    assert_int_equal(cli_sse_feed(&p, split_src, cut, collect, &g), 0);
    assert_int_equal(cli_sse_feed(&p, split_src + cut, n - cut, collect, &g), 0);
    expect(&g, split_want);
    assert_int_equal(p.retry_ms, 10);
    cli_sse_free(&p);
  }
  for (size_t step = 1; step <= 7; step++) { /* pieces of 1..7 bytes */
    cli_sse_t p;
    memset(&g, 0, sizeof g);
    cli_sse_init(&p, 1024, 4096);
    for (size_t i = 0; i < n; i += step)
      assert_int_equal(cli_sse_feed(&p, split_src + i, i + step <= n ? step : n - i, collect, &g), 0);
    expect(&g, split_want);
    cli_sse_free(&p);
  }
}

static void oversized_line_is_rejected(void **state) {
  (void)state;
  cli_sse_t p;
  got_t g;
  memset(&g, 0, sizeof g);
  cli_sse_init(&p, 10, 1000);
  /* "data: 1234" is exactly 10 bytes: accepted, whole or byte by byte. */
  assert_int_equal(cli_sse_feed(&p, "data: 1234\n\n", 12, collect, &g), 0);
  for (const char *s = "data: 5678\n\n"; *s; s++) assert_int_equal(cli_sse_feed(&p, s, 1, collect, &g), 0);
  assert_int_equal(g.n, 2);
  /* 11 bytes: rejected within one feed ... */
  assert_int_equal(cli_sse_feed(&p, "data: 12345\n\n", 13, collect, &g), -EMSGSIZE);
  /* ... and the error sticks until a reset. */
  assert_int_equal(cli_sse_feed(&p, "data: 1\n\n", 9, collect, &g), -EMSGSIZE);
  assert_int_equal(g.n, 2);
  cli_sse_reset(&p);
  assert_int_equal(cli_sse_feed(&p, "data: 1\n\n", 9, collect, &g), 0);
  assert_int_equal(g.n, 3);
  /* A line growing past the cap across feeds fails before its end arrives,
   * and also a comment line counts. */
  assert_int_equal(cli_sse_feed(&p, ": 34567890", 10, collect, &g), 0);
  assert_int_equal(cli_sse_feed(&p, "1", 1, collect, &g), -EMSGSIZE);
  assert_int_equal(p.line.len, 10); /* nothing past the cap was kept */
  cli_sse_free(&p);
}

static void oversized_data_is_rejected(void **state) {
  (void)state;
  cli_sse_t p;
  got_t g;
  memset(&g, 0, sizeof g);
  cli_sse_init(&p, 100, 8);
  /* data buffer "abc\nde\n" = 7 bytes <= 8: fine. */
  assert_int_equal(cli_sse_feed(&p, "data: abc\ndata: de\n\n", 20, collect, &g), 0);
  static const char *const want[] = {"message", "abc\nde", "", NULL};
  expect(&g, want);
  /* "abc\ndef\n" = 8 fits; "abc\ndefg\n" = 9 does not. */
  assert_int_equal(cli_sse_feed(&p, "data: abc\ndata: def\n\n", 21, collect, &g), 0);
  assert_int_equal(g.n, 2);
  assert_int_equal(cli_sse_feed(&p, "data: abc\ndata: defg\n\n", 22, collect, &g), -EMSGSIZE);
  assert_int_equal(g.n, 2);
  assert_true(p.data.len <= 8);
  cli_sse_free(&p);
}

static void callback_stops_the_feed(void **state) {
  (void)state;
  cli_sse_t p;
  got_t g;
  memset(&g, 0, sizeof g);
  g.stop_after = 1;
  cli_sse_init(&p, 64, 64);
  static const char s[] = "data: 1\n\ndata: 2\n\n";
  assert_int_equal(cli_sse_feed(&p, s, sizeof s - 1, collect, &g), 7);
  assert_int_equal(g.n, 1); /* the second event was not parsed */
  g.stop_after = 0;
  /* Feeding resumes cleanly with the bytes after the first event. */
  assert_int_equal(cli_sse_feed(&p, s + 9, sizeof s - 1 - 9, collect, &g), 0);
  static const char *const want[] = {"message", "1", "", "message", "2", "", NULL};
  expect(&g, want);
  /* No callback: events are parsed and dropped. */
  assert_int_equal(cli_sse_feed(&p, s, sizeof s - 1, NULL, NULL), 0);
  cli_sse_free(&p);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(fields),
      cmocka_unit_test(multiline_and_comments),
      cmocka_unit_test(line_ends),
      cmocka_unit_test(unfinished_event_is_discarded),
      cmocka_unit_test(id_and_retry),
      cmocka_unit_test(data_may_hold_nul),
      cmocka_unit_test(byte_order_mark),
      cmocka_unit_test(every_split_gives_the_same_events),
      cmocka_unit_test(oversized_line_is_rejected),
      cmocka_unit_test(oversized_data_is_rejected),
      cmocka_unit_test(callback_stops_the_feed),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
