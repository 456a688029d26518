/* alert_rules.h — the alert rules as operators write them: `[alert NAME]`
 * sections and the `[alerts]` section of the daemon's INI file, parsed and
 * validated into a gw_alert_rules_t. Pure: no daemon state, no I/O but
 * reading the file in gw_alert_rules_load, no threads.
 *
 * Data flow: INI text → libinih → one handler call per key. Keys every kind
 * shares (kind, severity, run, tag, summary, description) are parsed at
 * once; a kind's own keys (metric, threshold, window, …) are kept as text
 * with their line until the whole text is read, because `kind =` may come
 * after them. Then every rule's kind (alert_kinds.h) parses its keys and
 * validates the rule as a whole, filling its defaults. Rules are indexed
 * by name (FNV-1a, open addressing), so a text of N rules parses in O(N).
 *
 * Error messages name the origin (file or "built-in rules"), the line where
 * it is known, the rule or section, and the key:
 *   gw.ini:5: [alert hot] window: '1' is not an integer in [2, 4096]
 */
#ifndef GW_ALERT_RULES_H
#define GW_ALERT_RULES_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define GW_ALERT_WEBHOOKS_MAX 8
#define GW_ALERT_NAME_MAX 64    /* rule name length */
#define GW_ALERT_TEXT_MAX 4096  /* summary / description length */

enum { GW_ALERT_OP_GT, GW_ALERT_OP_GE, GW_ALERT_OP_LT, GW_ALERT_OP_LE };

/* A kind's key as read, before the kind parses it (parse time only). */
typedef struct gw_alert_rawkey_s {
  char *key, *value;
  unsigned line;
} gw_alert_rawkey_t;

typedef struct gw_alert_rule_s {
  char *name;
  int kind;   /* index in the kind table (alert_kinds.h) */
  int metric; /* gw_metric_t, or -1 (a kind without a metric) */
  int op;     /* GW_ALERT_OP_* */
  double threshold, resolve; /* resolve: hysteresis, see alert_kinds.h */
  uint32_t for_steps;        /* consecutive breaches before firing, >= 1 */
  uint32_t window;           /* values in the state's baseline; 0: none */
  uint32_t min_points;       /* baseline values before any verdict */
  double min_baseline;       /* no verdict while the baseline's median is below */
  double seconds;            /* stalled: silence that fires */
  char *severity, *run_glob, *tag_glob, *summary, *description;
  /* parse time only: common keys given (bits), the kind's keys as text */
  unsigned given;
  gw_alert_rawkey_t *raw;
  size_t n_raw;
} gw_alert_rule_t;

/* [alerts] keys with one value each; a bit each in gw_alert_rules_t.given. */
enum {
  GW_ALERTS_KEY_WEBHOOK_TIMEOUT,
  GW_ALERTS_KEY_WEBHOOK_RETRIES,
  GW_ALERTS_KEY_WEBHOOK_BACKOFF,
  GW_ALERTS_KEY_WEBHOOK_QUEUE,
  GW_ALERTS_KEY_DEFAULTS,
  GW_ALERTS_KEY_EXTERNAL_URL,
  GW_ALERTS_KEY_RECEIVER,
  GW_ALERTS_KEY_MAX_STATES,
  GW_ALERTS_KEY_FORGET_AFTER,
  GW_ALERTS_KEY_COUNT
};

typedef struct gw_alert_rules_s {
  gw_alert_rule_t *rules; /* in order of first appearance */
  size_t n, cap;
  uint32_t *index;        /* open addressing by name: rule index + 1, 0 empty */
  size_t index_cap;       /* power of two, > 2n */
  char *webhooks[GW_ALERT_WEBHOOKS_MAX];
  size_t n_webhooks;
  /* webhook settings; each applies only where its bit is in `given`,
   * webhook.h's default otherwise */
  uint32_t webhook_timeout_ms, webhook_retries, webhook_backoff_ms, webhook_queue;
  int defaults;        /* load the shipped rules too */
  char *external_url;  /* "" after load when not given */
  char *receiver;      /* "gradwatch" after load when not given */
  uint32_t max_states;
  double forget_after; /* seconds; 0 = never */
  unsigned given;      /* 1 << GW_ALERTS_KEY_* */
} gw_alert_rules_t;

/* The shipped default rules, INI text (loaded unless [alerts] defaults = false). */
extern const char GW_ALERTS_DEFAULT_RULES[];

void gw_alert_rules_init(gw_alert_rules_t *rs); /* empty, [alerts] defaults */
void gw_alert_rules_free(gw_alert_rules_t *rs); /* then as after init; NULL-safe fields */

/* Parse INI text (NUL-terminated) into rs, which must be fresh from init,
 * and validate every rule. origin names the text in messages. Returns 0,
 * GW_ECONFIG (message in err) or GW_ENOMEM; after a failure rs holds what
 * was read so far and must still be freed. Sections other than [alerts]
 * and [alert NAME] are not ours and are skipped. */
int gw_alert_rules_parse(gw_alert_rules_t *rs, const char *text, const char *origin, char *err,
                         size_t errlen);

/* The rule set in force for the file at path (NULL: the shipped defaults
 * alone): the file's rules, then the shipped ones unless it says
 * defaults = false, a file rule replacing the shipped rule of its name
 * (which keeps its place). [alerts] settings come from the file. On
 * failure *out is as after init and err says why (GW_ECONFIG, GW_ENOMEM). */
int gw_alert_rules_load(gw_alert_rules_t *out, const char *path, char *err, size_t errlen);

/* The same, abandoned as soon as *cancel (may be NULL) becomes nonzero,
 * from any thread: -ECANCELED, *out as after init. A parse is checked
 * between INI lines and between rules, so it stops within milliseconds
 * whatever the file's size. */
int gw_alert_rules_load_cancel(gw_alert_rules_t *out, const char *path, const atomic_int *cancel,
                               char *err, size_t errlen);

/* The rule of that name, or NULL. O(1). */
gw_alert_rule_t *gw_alert_rules_find(const gw_alert_rules_t *rs, const char *name);

/* Value parsers the kinds share: 0, or -1 when v is not a finite number /
 * an integer in [lo, hi]. */
int gw_alert_rules_number(const char *v, double *out);
int gw_alert_rules_integer(const char *v, uint32_t lo, uint32_t hi, uint32_t *out);

/* ">", ">=", "<", "<=" of a GW_ALERT_OP_*; "?" out of range. */
const char *gw_alert_op_name(int op);
/* Whether x op t holds. */
int gw_alert_op_holds(int op, double x, double t);

#endif
