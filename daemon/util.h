/* util.h — the small things every daemon module needs once: clocks, FNV-1a
 * hashing, a growable byte buffer and an intrusive (run, tag) hash table.
 *
 * Nothing here allocates behind the caller's back or keeps global state. The
 * buffer and the table are not thread-safe; their owners lock around them.
 */
#ifndef GW_UTIL_H
#define GW_UTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

/* ---- clocks ---- */

/* CLOCK_REALTIME in nanoseconds since the Unix epoch (the daemon's receive
 * time; never the publisher's clock). */
int64_t gw_now_ns(void);
/* CLOCK_MONOTONIC in nanoseconds (intervals, deadlines). */
int64_t gw_mono_ns(void);

/* ---- thread ownership ---- */

/* "Only thread X touches this": record the owner once, assert it where the
 * invariant matters. The checks compile away under NDEBUG (release builds);
 * debug and sanitizer builds keep them. */
#include <assert.h>
#include <pthread.h>
typedef struct gw_owner_s {
  pthread_t tid;
  int set;
} gw_owner_t;
static inline void gw_owner_claim(gw_owner_t *o) {
  o->tid = pthread_self();
  o->set = 1;
}
#define GW_ASSERT_OWNER(o) assert(!(o)->set || pthread_equal((o)->tid, pthread_self()))

/* ---- hashing ---- */

#define GW_FNV_OFFSET 0xcbf29ce484222325ull
/* FNV-1a 64: fold len bytes into h (start with GW_FNV_OFFSET). */
uint64_t gw_fnv1a(uint64_t h, const void *bytes, size_t len);
/* Hash of a (run, tag) pair: FNV-1a over run, the byte 0xff (which no name
 * byte can be), tag. */
uint64_t gw_stream_hash(const char *run, size_t run_len, const char *tag, size_t tag_len);

/* ---- growable buffer ---- */

/* A byte string that grows by doubling. After an allocation failure `oom`
 * is set and every later append is a no-op, so callers check once at the
 * end. p is always NUL-terminated when non-NULL. */
typedef struct gw_buf_s {
  char *p;
  size_t len, cap;
  int oom;
} gw_buf_t;

void gw_buf_init(gw_buf_t *b);
void gw_buf_free(gw_buf_t *b); /* frees p; b may be reused after gw_buf_init */
void gw_buf_reset(gw_buf_t *b); /* len = 0, keeps the memory */
/* Make room for n more bytes; 0 or GW_ENOMEM (then oom is set). */
int gw_buf_reserve(gw_buf_t *b, size_t n);
void gw_buf_append(gw_buf_t *b, const void *s, size_t n);
void gw_buf_puts(gw_buf_t *b, const char *s);
void gw_buf_printf(gw_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void gw_buf_vprintf(gw_buf_t *b, const char *fmt, va_list ap);
/* Hand the string to the caller (theirs to free) and reset b; NULL if oom. */
char *gw_buf_steal(gw_buf_t *b);

/* ---- (run, tag) table ---- */

/* Intrusive chained hash table keyed by (run, tag). Embed a gw_rtnode_t in
 * the entry (first member, or use GW_CONTAINER_OF), set run and tag (the
 * entry owns the strings; the table only borrows them) and insert. Grows at
 * load factor 1; never shrinks below its start size. */
typedef struct gw_rtnode_s {
  struct gw_rtnode_s *next;
  uint64_t hash;
  const char *run, *tag; /* NUL-terminated, owned by the entry */
} gw_rtnode_t;

typedef struct gw_rtmap_s {
  gw_rtnode_t **buckets;
  size_t nbuckets; /* power of two */
  size_t count;
} gw_rtmap_t;

#define GW_CONTAINER_OF(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

int gw_rtmap_init(gw_rtmap_t *m); /* 0 or GW_ENOMEM */
void gw_rtmap_free(gw_rtmap_t *m); /* frees the buckets, not the entries */
gw_rtnode_t *gw_rtmap_find(const gw_rtmap_t *m, const char *run, const char *tag);
/* Insert n (n->run/tag set; its hash is computed here). The key must not be
 * present. 0 or GW_ENOMEM (n is then not inserted). */
int gw_rtmap_insert(gw_rtmap_t *m, gw_rtnode_t *n);
/* Unlink and return the node of (run, tag), or NULL. */
gw_rtnode_t *gw_rtmap_remove(gw_rtmap_t *m, const char *run, const char *tag);
/* Iteration: gw_rtiter_t it = {0}; while ((n = gw_rtmap_next(m, &it))) …
 * Removing (and freeing) the node just returned is allowed; inserting or
 * removing any other node during the walk is not. */
typedef struct gw_rtiter_s {
  size_t pos;
  gw_rtnode_t *next;
} gw_rtiter_t;
gw_rtnode_t *gw_rtmap_next(const gw_rtmap_t *m, gw_rtiter_t *it);

#endif
