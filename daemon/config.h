/* config.h — gradwatchd's settings: defaults, the INI file, the flags.
 *
 * Every flag of docs/CONTRACT.md §5 is also a key of the INI file (libinih), in the
 * section the flag belongs to ([ingest] [http] [store] [window] [alerts],
 * plus [daemon] for logging); a flag `--foo-bar` is the key `foo_bar` (a dash
 * is accepted too). Order of precedence: defaults < file < flags; a
 * repeatable flag given on the command line replaces the file's list.
 * Parsing never exits the process: errors come back as GW_ECONFIG with a
 * message naming the flag or the file, line and key. Flags are read with
 * getopt_long (exact names only, `--flag value` or `--flag=value`).
 */
#ifndef GW_CONFIG_H
#define GW_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "engine.h"

#define GW_CONFIG_LIST_MAX 16

typedef struct gw_config_s {
  char *config_path; /* --config, NULL if none */
  /* [ingest] */
  char *zmq[GW_CONFIG_LIST_MAX];      /* SUB endpoints (bound) */
  size_t n_zmq;
  char *zmq_pull[GW_CONFIG_LIST_MAX]; /* PULL endpoints (bound) */
  size_t n_zmq_pull;
  char *zmq_subscribe[GW_CONFIG_LIST_MAX]; /* topic prefixes; none = all */
  size_t n_zmq_subscribe;
  uint32_t zmq_rcvhwm;    /* per-socket receive high-water mark */
  uint32_t shard_index;   /* --shard i/N: keep runs whose hash % N == i */
  uint32_t shard_count;   /* 0 or 1 = no sharding */
  char *curve_secret_key; /* file holding the server's Z85 secret key */
  char *curve_allow;      /* directory of allowed client public keys */
  uint32_t max_stream_memory_mb; /* budget of stream state; 0 = derived (gw_config_stream_memory) */
  uint32_t zmq_handshake_ms;     /* a ZeroMQ peer that has not greeted by then is dropped */
  /* [http] */
  char *http;            /* ADDR:PORT */
  char *http_token_file; /* bearer token file, NULL = open */
  char *http_cert;       /* HTTPS certificate (PEM), NULL = plain HTTP */
  char *http_key;        /* HTTPS private key (PEM); both or neither */
  char *metrics_tags;    /* glob of tags with per-stream series */
  char *metrics_labels;  /* comma list of run metadata keys on gradwatch_run_info; NULL = none */
  uint32_t sse_max_clients;     /* SSE subscribers at once (256) */
  uint32_t sse_max_per_address; /* SSE subscribers from one address (32) */
  uint32_t sse_client_kb;       /* KiB an SSE client may fall behind before it is dropped (4096) */
  uint32_t sse_total_mb;        /* MiB of live events held for all SSE clients (32) */
  uint32_t series_max_mb;       /* largest /api/v1/series answer, MiB (64) */
  uint32_t http_answer_budget_mb; /* MiB held for data answers across connections (256) */
  /* [store] */
  char *db;
  uint32_t retention_days;
  uint32_t chunk_points; /* points per compressed chunk (256; 0 = a row each) */
  uint32_t full_resolution_days; /* older chunks kept only downsampled (0 = forever) */
  uint32_t max_db_mb;
  uint32_t store_every;
  uint32_t flush_ms;
  int store_sketches;
  char *remote_write[GW_CONFIG_LIST_MAX]; /* remote-write receiver URLs */
  size_t n_remote_write;
  char *remote_write_metrics; /* comma list; NULL: the default list */
  char *remote_write_label[GW_CONFIG_LIST_MAX]; /* NAME=VALUE added to every series */
  size_t n_remote_write_label;
  /* [window] */
  gw_engine_config_t engine;
  uint32_t engine_threads; /* worker threads running engines (default: CPUs, <= 8) */
  uint32_t stream_idle;    /* seconds of silence before a stream is retired (3600) */
  /* [alertmanager] (keys url, resend, runbook_url) */
  char *alertmanager_url[GW_CONFIG_LIST_MAX]; /* base URLs, one per cluster member */
  size_t n_alertmanager_url;
  uint32_t alertmanager_resend;   /* seconds between re-sends while firing (60) */
  char *alertmanager_runbook_url; /* base of the runbook_url annotation, NULL = none */
  /* [daemon] */
  char *log_level; /* error|warn|info|debug */
  char *log_file;  /* NULL = stderr */
  /* set by --help / --version: the caller prints and exits 0 */
  int want_help, want_version;
  /* --check-config FILE: the caller runs gw_config_check_file and exits */
  char *check_config;
} gw_config_t;

/* Fill defaults (docs/CONTRACT.md §5). */
void gw_config_init(gw_config_t *c);
void gw_config_free(gw_config_t *c); /* frees the strings; c stays valid-empty */

/* Parse argv: find --config first, load the file, then apply the flags.
 * On error returns GW_ECONFIG and writes a message into err (errlen bytes). */
int gw_config_parse(gw_config_t *c, int argc, char **argv, char *err,
                    size_t errlen);

/* Load one INI file into c (used by parse; also by tests). */
int gw_config_load_file(gw_config_t *c, const char *path, char *err,
                        size_t errlen);

/* Read a one-line secret (token, key) from the file a flag names: up to 1
 * KiB, surrounding whitespace dropped, between min_len and max_len bytes.
 * On success *out is the caller's to free; on failure GW_ECONFIG with a
 * message naming the flag and the file in err. */
int gw_config_read_secret(const char *flag, const char *path, size_t min_len,
                          size_t max_len, char **out, char *err, size_t errlen);

/* Checks the rules of [alert NAME] sections (the alerts module's parser).
 * Returns 0, or a GW_E* code with "path:line: message" lines in err. */
typedef int (*gw_config_alert_check_fn)(const char *path, char *err, size_t errlen);

/* `gradwatchd --check-config FILE`: reads FILE as gradwatchd would and
 * reports every error it finds, one "path:line: message" line each on
 * errout (settings that only fail together: "path: message"). Every key
 * and value of [ingest] [http] [store] [window] [daemon] is checked;
 * [alerts] and [alert NAME] sections must parse as INI and name their
 * rule, and their rules go to check_alerts when given (NULL: not checked).
 * Returns 0 if the file is valid, GW_ECONFIG (or GW_ENOMEM) otherwise. */
int gw_config_check_file_with(const char *path, FILE *errout,
                              gw_config_alert_check_fn check_alerts);
int gw_config_check_file(const char *path, FILE *errout); /* check_alerts NULL */

/* The stream-state budget in bytes: --max-stream-memory-mb, or by default a
 * quarter of the machine's physical memory (sysconf), at least 256 MiB and
 * at most 64 GiB (1 GiB when the memory size is unknown). */
uint64_t gw_config_stream_memory(const gw_config_t *c);

/* Print the --help text. */
void gw_config_usage(FILE *out);

#endif
