/* cli_sse.c — the incremental event-stream parser of cli_sse.h.
 *
 * Data flow: cli_sse_feed cuts the input at CR/LF into lines; a line that
 * arrives whole inside one feed is parsed straight from the caller's bytes,
 * a line cut by a feed boundary is gathered in p->line first. Each line
 * updates the type/data/id buffers or, when empty, dispatches the event to
 * the callback. Every buffer is capped before it grows (put()), so memory
 * is bounded by max_line + max_data (+ the type and id, each <= max_line).
 */
#include "cli_sse.h"

#include <errno.h>
#include <string.h>

#include "gw_error.h"

static const char BOM[3] = {'\xEF', '\xBB', '\xBF'};

static void buf_clear(gw_buf_t *b) {
  gw_buf_reset(b);
  b->oom = 0;
}

void cli_sse_init(cli_sse_t *p, size_t max_line, size_t max_data) {
  memset(p, 0, sizeof *p);
  gw_buf_init(&p->line);
  gw_buf_init(&p->type);
  gw_buf_init(&p->data);
  gw_buf_init(&p->id);
  p->max_line = max_line ? max_line : 1;
  p->max_data = max_data ? max_data : 1;
  p->retry_ms = -1;
}

void cli_sse_free(cli_sse_t *p) {
  gw_buf_free(&p->line);
  gw_buf_free(&p->type);
  gw_buf_free(&p->data);
  gw_buf_free(&p->id);
}

void cli_sse_reset(cli_sse_t *p) {
  buf_clear(&p->line);
  buf_clear(&p->type);
  buf_clear(&p->data);
  if (p->id.oom) buf_clear(&p->id); /* a failed copy is no ID */
  p->after_cr = 0;
  p->bom = 0;
  p->err = 0;
}

/* Append n bytes to b if it stays within cap (b->len <= cap always holds).
 * On failure the parser fails: 0, -EMSGSIZE or GW_ENOMEM. */
static int put(cli_sse_t *p, gw_buf_t *b, const void *s, size_t n, size_t cap) {
  if (n > cap - b->len) return p->err = -EMSGSIZE;
  gw_buf_append(b, s, n);
  if (b->oom) return p->err = GW_ENOMEM;
  return 0;
}

/* An empty line: deliver the event if there is data, then clear it. Returns
 * the callback's value. */
static int dispatch(cli_sse_t *p, cli_sse_cb cb, void *ud) {
  int rc = 0;
  if (p->data.len > 0) {
    cli_sse_event_t ev;
    p->data.p[--p->data.len] = '\0'; /* the final LF */
    ev.type = p->type.len ? p->type.p : "message";
    ev.type_len = p->type.len ? p->type.len : 7;
    ev.data = p->data.p;
    ev.data_len = p->data.len;
    ev.id = p->id.len ? p->id.p : "";
    if (cb) rc = cb(ud, &ev);
  }
  gw_buf_reset(&p->type);
  gw_buf_reset(&p->data);
  return rc;
}

/* "retry": all ASCII digits (at least one) sets retry_ms, saturating. */
static void set_retry(cli_sse_t *p, const char *v, size_t n) {
  int64_t ms = 0;
  if (n == 0) return;
  for (size_t i = 0; i < n; i++) {
    if (v[i] < '0' || v[i] > '9') return;
    ms = ms > (INT64_MAX - 9) / 10 ? INT64_MAX : ms * 10 + (v[i] - '0');
  }
  p->retry_ms = ms;
}

/* One complete line l[0..n) without its terminator. Returns 0, a parser
 * error (p->err set) or the callback's value. */
static int line(cli_sse_t *p, const char *l, size_t n, cli_sse_cb cb, void *ud) {
  const char *colon, *v;
  size_t flen, vlen;
  int rc;

  if (n == 0) return dispatch(p, cb, ud);
  if (l[0] == ':') return 0; /* comment */
  colon = memchr(l, ':', n);
  flen = colon ? (size_t)(colon - l) : n;
  v = colon ? colon + 1 : l + n;
  vlen = n - (size_t)(v - l);
  if (vlen > 0 && *v == ' ') {
    v++;
    vlen--;
  }
  if (flen == 5 && memcmp(l, "event", 5) == 0) {
    gw_buf_reset(&p->type);
    return put(p, &p->type, v, vlen, p->max_line);
  }
  if (flen == 4 && memcmp(l, "data", 4) == 0) {
    if ((rc = put(p, &p->data, v, vlen, p->max_data)) != 0) return rc;
    return put(p, &p->data, "\n", 1, p->max_data);
  }
  if (flen == 2 && memcmp(l, "id", 2) == 0) {
    if (memchr(v, '\0', vlen) != NULL) return 0;
    gw_buf_reset(&p->id);
    return put(p, &p->id, v, vlen, p->max_line);
  }
  if (flen == 5 && memcmp(l, "retry", 5) == 0) set_retry(p, v, vlen);
  return 0; /* other fields are ignored */
}

int cli_sse_feed(cli_sse_t *p, const char *bytes, size_t n, cli_sse_cb cb, void *ud) {
  size_t i = 0;
  int rc = 0;

  if (p->err) return p->err;
  /* The BOM check may itself be split across feeds: bom counts the bytes
   * matched so far; on a mismatch those bytes were content after all (they
   * hold no line end, so they only start the first line). */
  while (p->bom < 3 && i < n) {
    if (bytes[i] == BOM[p->bom]) {
      p->bom++;
      i++;
      continue;
    }
    size_t had = (size_t)p->bom;
    p->bom = 3;
    if (had && (rc = put(p, &p->line, BOM, had, p->max_line)) != 0) return rc;
  }
  while (i < n) {
    size_t j = i;
    if (p->after_cr) {
      p->after_cr = 0;
      if (bytes[i] == '\n') { /* the LF of a CRLF */
        i++;
        continue;
      }
    }
    while (j < n && bytes[j] != '\r' && bytes[j] != '\n') j++;
    if (j == n) { /* no line end in this feed: keep the piece */
      rc = put(p, &p->line, bytes + i, n - i, p->max_line);
      break;
    }
    p->after_cr = bytes[j] == '\r';
    if (p->line.len == 0) {
      rc = j - i > p->max_line ? (p->err = -EMSGSIZE) : line(p, bytes + i, j - i, cb, ud);
    } else if ((rc = put(p, &p->line, bytes + i, j - i, p->max_line)) == 0) {
      rc = line(p, p->line.p, p->line.len, cb, ud);
      gw_buf_reset(&p->line);
    }
    i = j + 1;
    if (rc != 0) break;
  }
  return p->err ? p->err : rc;
}
