/* util.c — clocks, FNV-1a, gw_buf_t and gw_rtmap_t (see util.h). */
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gw_error.h"

#define RTMAP_START 64

int64_t gw_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t gw_mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

uint64_t gw_fnv1a(uint64_t h, const void *bytes, size_t len) {
  const uint8_t *b = bytes;
  for (size_t i = 0; i < len; i++) h = (h ^ b[i]) * 0x100000001b3ull;
  return h;
}

uint64_t gw_stream_hash(const char *run, size_t run_len, const char *tag, size_t tag_len) {
  static const uint8_t sep = 0xff;
  uint64_t h = gw_fnv1a(GW_FNV_OFFSET, run, run_len);
  h = gw_fnv1a(h, &sep, 1);
  return gw_fnv1a(h, tag, tag_len);
}

/* ---- gw_buf_t ---- */

void gw_buf_init(gw_buf_t *b) { memset(b, 0, sizeof(*b)); }

void gw_buf_free(gw_buf_t *b) {
  free(b->p);
  memset(b, 0, sizeof(*b));
}

void gw_buf_reset(gw_buf_t *b) {
  b->len = 0;
  if (b->p) b->p[0] = '\0';
}

int gw_buf_reserve(gw_buf_t *b, size_t n) {
  if (b->oom) return GW_ENOMEM;
  if (b->len + n + 1 <= b->cap) return 0;
  size_t cap = b->cap ? b->cap : 256;
  while (cap < b->len + n + 1) {
    if (cap > SIZE_MAX / 2) {
      b->oom = 1;
      return GW_ENOMEM;
    }
    cap *= 2;
  }
  char *p = realloc(b->p, cap);
  if (!p) {
    b->oom = 1;
    return GW_ENOMEM;
  }
  b->p = p;
  b->cap = cap;
  return 0;
}

void gw_buf_append(gw_buf_t *b, const void *s, size_t n) {
  if (gw_buf_reserve(b, n)) return;
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = '\0';
}

void gw_buf_puts(gw_buf_t *b, const char *s) { gw_buf_append(b, s, strlen(s)); }

void gw_buf_vprintf(gw_buf_t *b, const char *fmt, va_list ap) {
  if (b->oom) return;
  va_list ap2;
  va_copy(ap2, ap);
  char small[256];
  int n = vsnprintf(small, sizeof(small), fmt, ap);
  if (n < 0) {
    va_end(ap2);
    return;
  }
  if ((size_t)n < sizeof(small)) {
    gw_buf_append(b, small, (size_t)n);
  } else if (gw_buf_reserve(b, (size_t)n) == 0) {
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap2);
    b->len += (size_t)n;
  }
  va_end(ap2);
}

void gw_buf_printf(gw_buf_t *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  gw_buf_vprintf(b, fmt, ap);
  va_end(ap);
}

char *gw_buf_steal(gw_buf_t *b) {
  char *p = NULL;
  if (!b->oom) {
    if (!b->p && gw_buf_reserve(b, 0) == 0) b->p[0] = '\0';
    p = b->p;
    if (p) b->p = NULL;
  }
  gw_buf_free(b);
  return p;
}

/* ---- gw_rtmap_t ---- */

int gw_rtmap_init(gw_rtmap_t *m) {
  m->count = 0;
  m->nbuckets = RTMAP_START;
  m->buckets = calloc(m->nbuckets, sizeof(*m->buckets));
  return m->buckets ? 0 : GW_ENOMEM;
}

void gw_rtmap_free(gw_rtmap_t *m) {
  free(m->buckets);
  memset(m, 0, sizeof(*m));
}

static uint64_t node_hash(const char *run, const char *tag) {
  return gw_stream_hash(run, strlen(run), tag, strlen(tag));
}

static gw_rtnode_t **slot(const gw_rtmap_t *m, const char *run, const char *tag, uint64_t h) {
  gw_rtnode_t **pp = &m->buckets[h & (m->nbuckets - 1)];
  for (; *pp; pp = &(*pp)->next)
    if ((*pp)->hash == h && strcmp((*pp)->run, run) == 0 && strcmp((*pp)->tag, tag) == 0) break;
  return pp;
}

gw_rtnode_t *gw_rtmap_find(const gw_rtmap_t *m, const char *run, const char *tag) {
  return *slot(m, run, tag, node_hash(run, tag));
}

static int grow(gw_rtmap_t *m) {
  size_t nb = m->nbuckets * 2;
  gw_rtnode_t **b = calloc(nb, sizeof(*b));
  if (!b) return GW_ENOMEM;
  for (size_t i = 0; i < m->nbuckets; i++)
    for (gw_rtnode_t *n = m->buckets[i], *next; n; n = next) {
      next = n->next;
      n->next = b[n->hash & (nb - 1)];
      b[n->hash & (nb - 1)] = n;
    }
  free(m->buckets);
  m->buckets = b;
  m->nbuckets = nb;
  return 0;
}

int gw_rtmap_insert(gw_rtmap_t *m, gw_rtnode_t *n) {
  if (m->count + 1 > m->nbuckets && grow(m) != 0) return GW_ENOMEM;
  n->hash = node_hash(n->run, n->tag);
  gw_rtnode_t **b = &m->buckets[n->hash & (m->nbuckets - 1)];
  n->next = *b;
  *b = n;
  m->count++;
  return 0;
}

gw_rtnode_t *gw_rtmap_remove(gw_rtmap_t *m, const char *run, const char *tag) {
  gw_rtnode_t **pp = slot(m, run, tag, node_hash(run, tag));
  gw_rtnode_t *n = *pp;
  if (!n) return NULL;
  *pp = n->next;
  n->next = NULL;
  m->count--;
  return n;
}

gw_rtnode_t *gw_rtmap_next(const gw_rtmap_t *m, gw_rtiter_t *it) {
  gw_rtnode_t *n = it->next;
  while (!n && it->pos < m->nbuckets) n = m->buckets[it->pos++];
  it->next = n ? n->next : NULL; /* saved now, so n may be removed */
  return n;
}
