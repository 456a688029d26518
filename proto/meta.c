/* meta.c — the run-metadata frame codec (gw_meta.h, PROTOCOL.md §11).
 *
 * Stateless, like proto.c: it checks and builds the two frames of a
 * metadata message — topic "gw1/<run>/@meta", a 24-byte little-endian
 * header and a JSON document — and never looks inside the document (the
 * receiver's JSON validator does, with a real JSON parser). Decoding only
 * borrows pointers into the caller's frames and never reads outside them.
 */
#include "gw_meta.h"

#include <assert.h>
#include <errno.h>
#include <string.h>

#include "gw_proto.h"

#define OFF_MAGIC 0
#define OFF_VERSION 4
#define OFF_RESERVED 5
#define OFF_INCARNATION 8
#define OFF_WALL 16

static uint64_t ld64(const unsigned char *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
  return v;
}

static uint32_t ld32(const unsigned char *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void st64(unsigned char *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static void st32(unsigned char *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

int gw_meta_is_topic(const void *topic, size_t topic_len) {
  const size_t pre = sizeof GW_PROTO_TOPIC_PREFIX - 1, tl = sizeof GW_META_TAG - 1;
  const char *t = topic;
  if (!t || topic_len < pre + 2 + tl || memcmp(t, GW_PROTO_TOPIC_PREFIX, pre) != 0) return 0;
  const char *slash = memchr(t + pre, '/', topic_len - pre);
  return slash && (size_t)(t + topic_len - (slash + 1)) == tl &&
         memcmp(slash + 1, GW_META_TAG, tl) == 0;
}

int gw_meta_decode(const void *topic, size_t topic_len, const void *body, size_t body_len,
                   gw_meta_msg_t *out) {
  const size_t pre = sizeof GW_PROTO_TOPIC_PREFIX - 1;
  const char *t = topic;
  const unsigned char *b = body;
  assert(out != NULL);
  /* checks 2-5: the topic */
  if (!t || topic_len < pre || memcmp(t, GW_PROTO_TOPIC_PREFIX, pre) != 0) return GW_ETOPIC;
  const char *slash = memchr(t + pre, '/', topic_len - pre);
  if (!slash) return GW_ETOPIC;
  out->run = t + pre;
  out->run_len = (size_t)(slash - out->run);
  if (gw_proto_check_run(out->run, out->run_len) != 0) return GW_ENAME;
  if (!gw_meta_is_topic(topic, topic_len)) return GW_ENAME;
  /* checks 6-12: the header and the document's length */
  if (!b || body_len < 5) return GW_ETRUNC;
  if (ld32(b + OFF_MAGIC) != GW_META_MAGIC) return GW_EMAGIC;
  if (b[OFF_VERSION] != GW_META_VERSION) return GW_EVERSION;
  if (body_len < GW_META_HEADER_SIZE) return GW_ETRUNC;
  if (b[OFF_RESERVED] | b[OFF_RESERVED + 1] | b[OFF_RESERVED + 2]) return GW_EFLAGS;
  out->version = b[OFF_VERSION];
  out->incarnation = ld64(b + OFF_INCARNATION);
  if (out->incarnation == 0) return GW_EINCARNATION;
  out->wall_ns = (int64_t)ld64(b + OFF_WALL);
  out->doc = (const char *)b + GW_META_HEADER_SIZE;
  out->doc_len = body_len - GW_META_HEADER_SIZE;
  if (out->doc_len == 0) return GW_EMETA;
  if (out->doc_len > GW_META_DOC_MAX) return GW_EMETASIZE;
  return 0;
}

int gw_meta_encode_topic(const char *run, size_t run_len, char *buf, size_t cap) {
  const size_t pre = sizeof GW_PROTO_TOPIC_PREFIX - 1, tl = sizeof GW_META_TAG - 1;
  assert(buf != NULL || cap == 0);
  if (!run || gw_proto_check_run(run, run_len) != 0) return GW_ENAME;
  size_t n = pre + run_len + 1 + tl;
  if (cap < n + 1) return -ENOBUFS;
  memcpy(buf, GW_PROTO_TOPIC_PREFIX, pre);
  memcpy(buf + pre, run, run_len);
  buf[pre + run_len] = '/';
  memcpy(buf + pre + run_len + 1, GW_META_TAG, tl);
  buf[n] = '\0';
  return (int)n;
}

int gw_meta_encode_body(uint64_t incarnation, int64_t wall_ns, const char *doc, size_t doc_len,
                        void *buf, size_t cap) {
  unsigned char *b = buf;
  assert(buf != NULL || cap == 0);
  if (incarnation == 0) return GW_EINCARNATION;
  if (!doc || doc_len == 0) return GW_EMETA;
  if (doc_len > GW_META_DOC_MAX) return GW_EMETASIZE;
  if (cap < GW_META_HEADER_SIZE + doc_len) return -ENOBUFS;
  memmove(b + GW_META_HEADER_SIZE, doc, doc_len);
  st32(b + OFF_MAGIC, GW_META_MAGIC);
  b[OFF_VERSION] = GW_META_VERSION;
  b[OFF_RESERVED] = b[OFF_RESERVED + 1] = b[OFF_RESERVED + 2] = 0;
  st64(b + OFF_INCARNATION, incarnation);
  st64(b + OFF_WALL, (uint64_t)wall_ns);
  return (int)(GW_META_HEADER_SIZE + doc_len);
}
