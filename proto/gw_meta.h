/* gw_meta.h — the run-metadata message of the gradwatch wire format
 * (proto/PROTOCOL.md §11 is the byte-exact specification).
 *
 * A metadata message is two ZeroMQ frames, like a sketch message:
 *   frame 0: topic  "gw1/<run>/@meta"   ('@' is no tag character, so a
 *            receiver that predates metadata rejects it as bad_name, and a
 *            subscription to "gw1/<run>/" still selects it)
 *   frame 1: body   24-byte header + a UTF-8 JSON document (little-endian)
 *
 * Header layout (offsets in bytes):
 *    0  u32  magic        0x444D5747 ("GWMD" as bytes G W M D)
 *    4  u8   version      1
 *    5  u8[3] reserved    0
 *    8  u64  incarnation  the publisher's incarnation id, never 0
 *   16  i64  wall_ns      publisher wall clock when the document was made
 *   24  ...  document     1..GW_META_DOC_MAX bytes of JSON (the rest of the body)
 *
 * This codec checks the frame (topic, header, length); what the document
 * may hold (config, tags, labels, client, and their limits) is checked by
 * the receiver's JSON validator (gradwatchd: daemon/runmeta.c). Decoding
 * borrows pointers into the caller's frames.
 */
#ifndef GW_META_H
#define GW_META_H

#include <stddef.h>
#include <stdint.h>

#include "gw_error.h"

#define GW_META_MAGIC 0x444D5747u
#define GW_META_VERSION 1
#define GW_META_HEADER_SIZE 24
#define GW_META_TAG "@meta" /* the topic's last component */
#define GW_META_DOC_MAX 65536u /* bytes of JSON document */
#define GW_META_TAGS_MAX 64    /* entries of "tags" */
#define GW_META_LABELS_MAX 64  /* members of "labels" */
#define GW_META_NAME_MAX 64    /* bytes of a run tag or label key */
#define GW_META_VALUE_MAX 256  /* bytes of a label value */
#define GW_META_DEPTH_MAX 16   /* nesting of "config" and "client" */

typedef struct gw_meta_msg_s {
  const char *run; /* not NUL-terminated */
  size_t run_len;
  uint8_t version;
  uint64_t incarnation;
  int64_t wall_ns;
  const char *doc; /* the JSON document, not NUL-terminated */
  size_t doc_len;
} gw_meta_msg_t;

/* 1 if the topic is a metadata topic ("gw1/<anything>/@meta" with no other
 * '/'), 0 otherwise. Cheap: how a receiver decides which decoder to use. */
int gw_meta_is_topic(const void *topic, size_t topic_len);

/* Validate a metadata message's frames (PROTOCOL.md §11.4, checks 2–9) and
 * fill *out (borrowing). Returns 0 or GW_ETOPIC, GW_ENAME, GW_ETRUNC,
 * GW_EMAGIC, GW_EVERSION, GW_EFLAGS (reserved bytes), GW_EINCARNATION,
 * GW_EMETASIZE (document over GW_META_DOC_MAX), GW_EMETA (empty document).
 * The document's contents are not inspected here. */
int gw_meta_decode(const void *topic, size_t topic_len, const void *body, size_t body_len,
                   gw_meta_msg_t *out);

/* Write "gw1/<run>/@meta" into buf (cap bytes, NUL-terminated). Returns its
 * length, GW_ENAME for a bad run, or -ENOBUFS. */
int gw_meta_encode_topic(const char *run, size_t run_len, char *buf, size_t cap);

/* Write the header and doc (doc_len bytes, 1..GW_META_DOC_MAX) into buf.
 * Returns the body length, GW_EINCARNATION for incarnation 0,
 * GW_EMETASIZE / GW_EMETA for a bad doc length, or -ENOBUFS. */
int gw_meta_encode_body(uint64_t incarnation, int64_t wall_ns, const char *doc, size_t doc_len,
                        void *buf, size_t cap);

#endif
