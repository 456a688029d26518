/* log.c — logfmt lines, levels, rate limiting, reopen. See log.h. */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *const level_names[] = {"error", "warn", "info", "debug"};

int gw_log_init(gw_log_t *l, const char *path, const char *level) {
  memset(l, 0, sizeof(*l));
  l->level = GW_LOG_INFO;
  for (int i = 0; i < 4; i++)
    if (level && !strcmp(level, level_names[i])) l->level = i;
  l->f = stderr;
  if (path) {
    if (!(l->path = strdup(path))) return -ENOMEM;
    if (!(l->f = fopen(path, "a"))) {
      int e = errno;
      free(l->path);
      l->path = NULL;
      l->f = stderr;
      return -e;
    }
    setvbuf(l->f, NULL, _IOLBF, 0);
  }
  pthread_mutex_init(&l->mu, NULL);
  return 0;
}

void gw_log_close(gw_log_t *l) {
  if (!l->f) return;
  if (l->f != stderr) fclose(l->f);
  l->f = NULL;
  free(l->path);
  l->path = NULL;
  pthread_mutex_destroy(&l->mu);
}

int gw_log_reopen(gw_log_t *l) {
  if (!l->path) return 0;
  FILE *f = fopen(l->path, "a");
  if (!f) return -errno;
  setvbuf(f, NULL, _IOLBF, 0);
  pthread_mutex_lock(&l->mu);
  FILE *old = l->f;
  l->f = f;
  pthread_mutex_unlock(&l->mu);
  if (old && old != stderr) fclose(old);
  return 0;
}

void gw_log(gw_log_t *l, int level, const char *event, const char *fmt, ...) {
  if (!l || !l->f || level > l->level) return;
  char line[2048];
  struct timespec ts;
  struct tm tm;
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  int n = snprintf(line, sizeof(line),
                   "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s event=%s ",
                   tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                   tm.tm_sec, ts.tv_nsec / 1000000, level_names[level], event);
  if (n < 0) return;
  va_list ap;
  va_start(ap, fmt);
  if ((size_t)n < sizeof(line)) vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
  va_end(ap);
  size_t len = strlen(line);
  if (len + 1 >= sizeof(line)) len = sizeof(line) - 2;
  line[len] = '\n';
  line[len + 1] = '\0';
  pthread_mutex_lock(&l->mu);
  fputs(line, l->f);
  fflush(l->f);
  pthread_mutex_unlock(&l->mu);
}

const char *gw_log_quote(char *buf, size_t cap, const char *s) {
  size_t o = 0;
  int needs = !s || !*s;
  for (const char *p = s; p && *p; p++)
    if (*p == ' ' || *p == '"' || *p == '=' || *p == '\\' || (unsigned char)*p < 0x20)
      needs = 1;
  if (cap == 0) return buf;
  if (!needs) {
    snprintf(buf, cap, "%s", s);
    return buf;
  }
  if (o + 1 < cap) buf[o++] = '"';
  for (const char *p = s; p && *p && o + 3 < cap; p++) {
    unsigned char c = (unsigned char)*p;
    if (c == '"' || c == '\\') {
      buf[o++] = '\\';
      buf[o++] = (char)c;
    } else if (c == '\n') {
      buf[o++] = '\\';
      buf[o++] = 'n';
    } else if (c < 0x20) {
      buf[o++] = '?';
    } else {
      buf[o++] = (char)c;
    }
  }
  if (o + 1 < cap) buf[o++] = '"';
  buf[o] = '\0';
  return buf;
}

int gw_ratelimit_allow(gw_ratelimit_t *r, int64_t now_ns, uint64_t *suppressed) {
  const int64_t sec = 1000000000;
  if (now_ns - r->window_ns >= sec || now_ns < r->window_ns) {
    r->window_ns = now_ns;
    r->count = 0;
  }
  if (r->count >= (r->per_sec ? r->per_sec : 1)) {
    r->suppressed++;
    return 0;
  }
  r->count++;
  if (suppressed) *suppressed = r->suppressed;
  r->suppressed = 0;
  return 1;
}
