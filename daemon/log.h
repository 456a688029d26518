/* log.h — one logfmt line per event (`ts=… level=… event=… key=value …`) on
 * stderr or a file, with levels, a rate limiter for events a client can
 * trigger at will (bad frames), and reopen for SIGHUP/logrotate.
 *
 * A gw_log_t is shared by the daemon's threads; writes take its mutex, one
 * fputs per line, so lines never interleave.
 */
#ifndef GW_LOG_H
#define GW_LOG_H

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>

typedef enum { GW_LOG_ERROR = 0, GW_LOG_WARN, GW_LOG_INFO, GW_LOG_DEBUG } gw_log_level_t;

typedef struct gw_log_s {
  pthread_mutex_t mu;
  FILE *f;    /* stderr or the opened file */
  char *path; /* NULL for stderr */
  int level;
} gw_log_t;

/* path NULL = stderr. level: "error"|"warn"|"info"|"debug". */
int gw_log_init(gw_log_t *l, const char *path, const char *level);
void gw_log_close(gw_log_t *l);
/* Reopen the file (after rotation). 0, or -errno with the old file kept. */
int gw_log_reopen(gw_log_t *l);

/* Write `ts=… level=… event=EVENT ` followed by the formatted key=value
 * pairs. Use gw_log_quote for values that may hold spaces or quotes. */
void gw_log(gw_log_t *l, int level, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Quote s for logfmt into buf (always NUL-terminated, truncated to cap);
 * returns buf. */
const char *gw_log_quote(char *buf, size_t cap, const char *s);

/* Token bucket: allow at most `per_sec` events a second; the rest are
 * counted in `suppressed` and reported by the next allowed event. */
typedef struct gw_ratelimit_s {
  int64_t window_ns;
  uint32_t count;
  uint32_t per_sec;
  uint64_t suppressed;
} gw_ratelimit_t;

/* 1 if the event may be logged now (then *suppressed gets the number held
 * back since the last allowed one, and the counter resets), 0 if not. */
int gw_ratelimit_allow(gw_ratelimit_t *r, int64_t now_ns, uint64_t *suppressed);

#endif
