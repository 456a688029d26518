/* fuzz_sse.c — libFuzzer target for the CLI's event-stream parser
 * (client/cli_sse.c), which reads whatever a server sends to `gradwatch
 * tail`.
 *
 * The input is one stream, parsed three ways with small caps (line 64
 * bytes, data 256): whole, in two pieces cut at a place chosen by the first
 * byte, and one byte at a time. Each run records its events (type, data,
 * id) into a log.
 *
 * Checked promises (a broken one aborts; ASan/LeakSanitizer catch overflows
 * and leaks): every feed returns 0 or -EMSGSIZE; every event has a non-empty
 * NUL-terminated type (type_len bytes) and id within max_line and data within max_data,
 * NUL-terminated; the buffers never exceed their caps; the three runs give
 * the same events and the same final result.
 *
 * Built and run by tests/fuzz/run.sh sse SECONDS (ctest fuzz_sse).
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cli_sse.h"
#include "gw_error.h"

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) abort();                                                      \
  } while (0)

#define MAX_LINE 64
#define MAX_DATA 256

static int record(void *ud, const cli_sse_event_t *e) {
  gw_buf_t *log = ud;
  size_t tl = e->type_len, il = strlen(e->id);
  CHECK(tl > 0 && tl <= MAX_LINE && e->type[tl] == '\0');
  CHECK(il <= MAX_LINE);
  CHECK(e->data_len < MAX_DATA); /* the final LF was removed */
  CHECK(e->data[e->data_len] == '\0');
  gw_buf_append(log, e->type, tl + 1);
  gw_buf_append(log, e->id, il + 1);
  gw_buf_append(log, &e->data_len, sizeof e->data_len);
  gw_buf_append(log, e->data, e->data_len);
  CHECK(!log->oom);
  return 0;
}

static void check_caps(const cli_sse_t *p) {
  CHECK(p->line.len <= MAX_LINE && p->type.len <= MAX_LINE && p->id.len <= MAX_LINE);
  CHECK(p->data.len <= MAX_DATA);
}

/* Parse data in pieces of `piece` bytes (0 = cut once at `cut`). */
static int run(const uint8_t *data, size_t n, size_t piece, size_t cut, gw_buf_t *log) {
  cli_sse_t p;
  int rc = 0;
  cli_sse_init(&p, MAX_LINE, MAX_DATA);
  if (piece == 0) {
    rc = cli_sse_feed(&p, (const char *)data, cut, record, log);
    if (rc == 0) rc = cli_sse_feed(&p, (const char *)data + cut, n - cut, record, log);
  } else {
    for (size_t i = 0; i < n && rc == 0; i += piece) {
      rc = cli_sse_feed(&p, (const char *)data + i, n - i < piece ? n - i : piece, record, log);
      check_caps(&p);
    }
  }
  CHECK(rc == 0 || rc == -EMSGSIZE);
  check_caps(&p);
  if (rc != 0) CHECK(cli_sse_feed(&p, "\n\n", 2, record, log) == rc); /* sticky */
  cli_sse_reset(&p);
  CHECK(cli_sse_feed(&p, "data: x\n\n", 9, NULL, NULL) == 0); /* usable again */
  cli_sse_free(&p);
  return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  gw_buf_t a, b, c;
  size_t cut = size ? data[0] % (size + 1) : 0;
  gw_buf_init(&a);
  gw_buf_init(&b);
  gw_buf_init(&c);
  int ra = run(data, size, size ? size : 1, 0, &a);
  int rb = run(data, size, 0, cut, &b);
  int rc = run(data, size, 1, 0, &c);
  CHECK(ra == rb && rb == rc);
  CHECK(a.len == b.len && b.len == c.len);
  CHECK(a.len == 0 || (memcmp(a.p, b.p, a.len) == 0 && memcmp(b.p, c.p, b.len) == 0));
  gw_buf_free(&a);
  gw_buf_free(&b);
  gw_buf_free(&c);
  return 0;
}
