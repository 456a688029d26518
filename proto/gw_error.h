/* gw_error.h — the one error table of gradwatch.
 *
 * Every function that can fail returns int: 0 on success, a negative code
 * otherwise. Codes are either -errno passed through unchanged (as libuv does)
 * or one of the GW_E* codes below, which live at -1000 and below so they never
 * collide with an errno. Each GW_E* code also has a short snake_case *reason*
 * name; the daemon counts rejected messages by reason and exports the names
 * as the `reason` label of gradwatch_messages_rejected_total.
 */
#ifndef GW_ERROR_H
#define GW_ERROR_H

/* XX(NAME, reason, message) — order fixes the numeric codes; append only. */
#define GW_ERRNO_MAP(XX)                                                       \
  XX(EINVAL, "invalid_argument", "invalid argument")                          \
  XX(ENOMEM, "no_memory", "out of memory")                                    \
  XX(EFRAMES, "bad_frames", "wrong number of message frames")                 \
  XX(ETOPIC, "bad_topic", "topic is not gw1/<run>/<tag>")                     \
  XX(ENAME, "bad_name", "run or tag has a bad length or character")           \
  XX(ETRUNC, "truncated", "frame shorter than its header says")               \
  XX(ELENGTH, "bad_length", "payload length does not match k and dtype")      \
  XX(EMAGIC, "bad_magic", "bad magic number")                                 \
  XX(EVERSION, "bad_version", "unsupported protocol version")                 \
  XX(EDTYPE, "bad_dtype", "unknown payload dtype")                            \
  XX(EKIND, "bad_sketch", "unknown sketch kind or bad sjlt s")                \
  XX(EKLIMIT, "k_over_limit", "k is zero or over the limit")                  \
  XX(EFLAGS, "bad_flags", "reserved header bits are set")                     \
  XX(ENONFINITE, "non_finite", "NaN or Inf in the payload or a scalar")       \
  XX(EORDER, "out_of_order", "step not greater than the stream's last step") \
  XX(EMISMATCH, "sketch_mismatch", "sketch parameters differ from the stream's") \
  XX(ESTREAMS, "too_many_streams", "stream limit reached")                    \
  XX(EIO, "io_error", "I/O error")                                            \
  XX(EDB, "db_error", "database error")                                       \
  XX(ENOTFOUND, "not_found", "not found")                                     \
  XX(ECONFIG, "bad_config", "bad configuration")                              \
  XX(EFULL, "queue_full", "queue full")                                       \
  XX(EDENIED, "denied", "access denied")                                      \
  XX(EINCARNATION, "bad_incarnation", "version 2 message with incarnation 0")     \
  XX(EBUDGET, "memory_budget", "stream memory budget exhausted")             \
  XX(EMETA, "bad_meta", "run metadata is not a valid metadata document")     \
  XX(EMETASIZE, "meta_too_large", "run metadata over a size or count limit")

#define GW_E_BASE (-1000)

typedef enum {
#define XX(name, reason, msg) GW_##name##_INDEX,
  GW_ERRNO_MAP(XX)
#undef XX
  GW_E_COUNT /* number of GW_E* codes */
} gw_errindex_t;

enum {
  GW_OK = 0,
#define XX(name, reason, msg) GW_##name = GW_E_BASE - GW_##name##_INDEX,
  GW_ERRNO_MAP(XX)
#undef XX
};

/* Human-readable message for any code (GW_E* or -errno). Never NULL. */
const char *gw_strerror(int code);

/* snake_case reason name of a GW_E* code ("truncated"); "errno" for -errno
 * codes and "ok" for 0. Never NULL. */
const char *gw_err_reason(int code);

/* Index 0..GW_E_COUNT-1 of a GW_E* code, or -1 if code is not one. */
int gw_err_index(int code);

#endif
