/* cli_sse.h — an incremental Server-Sent-Events (text/event-stream) parser
 * for `gradwatch tail`. Pure: no I/O, no clock, no global state.
 *
 * Bytes go in with cli_sse_feed in pieces of any size (a network read, one
 * byte, a whole file); each complete event comes out through the callback,
 * during the feed call that completes it. Splitting the same stream at
 * different places yields the same events.
 *
 * The rules are the WHATWG "event stream interpretation":
 *   - a UTF-8 byte order mark at the very start of the stream is skipped;
 *   - lines end in CRLF, LF or CR (a CRLF split across two feeds is one end);
 *   - a line starting with ':' is a comment (heartbeats) and is ignored;
 *   - "field:value" splits at the first ':'; one space after it is dropped;
 *     a line without ':' is a field with an empty value;
 *   - field "event" sets the event type, "data" appends the value and a LF
 *     to the data buffer, "id" sets the last event ID (ignored if the value
 *     holds a NUL byte), "retry" sets the reconnection time when the value
 *     is all ASCII digits; other fields are ignored;
 *   - an empty line dispatches: if the data buffer is empty nothing is
 *     dispatched, else its final LF is removed and the event (type, default
 *     "message"; data; last event ID) is delivered; data and type are then
 *     cleared (the last event ID persists);
 *   - an event not finished by an empty line when the stream ends is
 *     discarded (cli_sse_reset drops it).
 *
 * States: reading (err == 0) ⇄ failed (err != 0); cli_sse_feed moves to
 * failed, cli_sse_reset back to reading.
 *
 * Memory is bounded: a line (without its terminator) longer than max_line
 * bytes, or an event whose data buffer (the values plus one LF per data
 * line) would exceed max_data bytes, makes the feed
 * fail with -EMSGSIZE. The parser then stays failed (every feed returns the
 * same code) until cli_sse_reset. Buffers grow only as far as those caps.
 */
#ifndef GW_CLI_SSE_H
#define GW_CLI_SSE_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

/* One dispatched event. Every pointer is borrowed from the parser and valid
 * only during the callback; each string is NUL-terminated (type and data
 * may also hold NUL bytes: use the lengths; id never does). */
typedef struct cli_sse_event_s {
  const char *type; /* the "event" field, or "message" */
  size_t type_len;  /* a type holding NUL bytes matches no C-string name */
  const char *data; /* data lines joined with LF */
  size_t data_len;
  const char *id;   /* the last event ID seen so far on this stream, "" if none */
} cli_sse_event_t;

/* Called for every event. Return 0 to go on; any other value stops the feed
 * at once (the rest of that feed's bytes are not parsed) and is returned by
 * cli_sse_feed. The parser is left in a consistent state: feeding can
 * resume with the next bytes. */
typedef int (*cli_sse_cb)(void *ud, const cli_sse_event_t *ev);

typedef struct cli_sse_s {
  gw_buf_t line;  /* the current, unterminated line */
  gw_buf_t type;  /* event type buffer */
  gw_buf_t data;  /* data buffer (values + LF) */
  gw_buf_t id;    /* last event ID buffer */
  size_t max_line, max_data;
  int64_t retry_ms; /* the last valid "retry" value, -1 if none */
  int after_cr;     /* the previous byte ended a line with CR: a LF next is part of it */
  int bom;          /* bytes of the start-of-stream BOM matched; 3 = past the check */
  int err;          /* 0, or the sticky error of a failed feed */
} cli_sse_t;

/* max_line, max_data: the caps above (at least 1). The parser owns its
 * buffers; cli_sse_free releases them. */
void cli_sse_init(cli_sse_t *p, size_t max_line, size_t max_data);
void cli_sse_free(cli_sse_t *p);
/* The stream ended; the next bytes start a new one (a reconnect): drop the
 * unfinished line and event and any error, expect a BOM again. The last
 * event ID and retry_ms persist, as an EventSource keeps them across
 * reconnections. Keeps the caps and the memory. */
void cli_sse_reset(cli_sse_t *p);

/* Parse n bytes. Returns 0, -EMSGSIZE (a cap was passed), GW_ENOMEM, or the
 * callback's nonzero value. After -EMSGSIZE or GW_ENOMEM the parser is
 * failed until cli_sse_reset. */
int cli_sse_feed(cli_sse_t *p, const char *bytes, size_t n, cli_sse_cb cb, void *ud);

#endif
