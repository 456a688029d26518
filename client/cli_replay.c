/* cli_replay.c — `gradwatch replay FILE`: publish the rows of a file of
 * sketches as one stream, row i as step --start + i.
 *
 * Formats: NumPy .npy (recognized by its magic, whatever the file's name),
 * versions 1.0, 2.0 and 3.0, dtype '<f4' or '<f8', C order, shape (steps, k);
 * or raw little-endian float32 with k given by --k. The header is parsed
 * here (it is a Python dict literal: {'descr': '<f4', 'fortran_order':
 * False, 'shape': (100, 256), }) and every way a file can be wrong is named
 * in the error: magic, version, header syntax, dtype, order, shape, and a
 * data size that does not match the shape.
 *
 * Rows are read one at a time (memory: one row), converted to float32 (f8
 * rounds to nearest) and published. Replay is not training, so it may wait:
 * a row that is dropped because the subscriber's queue is full is retried
 * (every 1 ms, until --retry-ms pass without any row going out) rather than
 * lost; a row still not sent then — or dropped for want of any subscriber —
 * is counted, and any such row makes the exit status 1.
 *
 * A replay is one publisher incarnation (PROTOCOL.md §3.2): random, so the
 * daemon restarts the stream at the first replayed row, or chosen with
 * --incarnation N (replaying again as the same N continues that stream, and
 * its steps must then be new). --wire-version 1 sends the old layout with no
 * incarnation, for daemons that predate version 2.
 */
#include "cli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define CMD "replay"

/* ---- .npy header ------------------------------------------------------------ */

typedef struct npy_s {
  int f64;              /* '<f8' (else '<f4') */
  uint64_t rows, cols;  /* shape */
  uint64_t data_offset; /* bytes before the data */
} npy_t;

static const char *skip_ws(const char *p, const char *e) {
  while (p < e && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
  return p;
}

/* A quoted Python string at *pp (single or double quotes, no escapes). */
static int py_string(const char **pp, const char *e, const char **s, size_t *len) {
  const char *p = *pp, *q;
  char quote;
  if (p >= e || (*p != '\'' && *p != '"')) return -1;
  quote = *p++;
  q = memchr(p, quote, (size_t)(e - p));
  if (q == NULL) return -1;
  *s = p;
  *len = (size_t)(q - p);
  *pp = q + 1;
  return 0;
}

/* Parse the header dict into n; on failure write the reason into err. */
static int npy_parse_dict(const char *h, size_t hlen, npy_t *n, char *err, size_t errcap) {
  const char *p = h, *e = h + hlen;
  int have_descr = 0, have_order = 0, have_shape = 0, fortran = 0;
  uint64_t dims[8];
  int ndim = 0;

  p = skip_ws(p, e);
  if (p >= e || *p++ != '{') goto syntax;
  for (;;) {
    const char *key;
    size_t klen;
    p = skip_ws(p, e);
    if (p < e && *p == '}') break;
    if (py_string(&p, e, &key, &klen) != 0) goto syntax;
    p = skip_ws(p, e);
    if (p >= e || *p++ != ':') goto syntax;
    p = skip_ws(p, e);
    if (klen == 5 && memcmp(key, "descr", 5) == 0) {
      const char *d;
      size_t dlen;
      if (py_string(&p, e, &d, &dlen) != 0) {
        snprintf(err, errcap, "'descr' is not a simple dtype string (structured arrays are not sketches)");
        return -1;
      }
      if (dlen == 3 && memcmp(d, "<f4", 3) == 0) {
        n->f64 = 0;
      } else if (dlen == 3 && memcmp(d, "<f8", 3) == 0) {
        n->f64 = 1;
      } else if (dlen == 3 && d[0] == '>' && d[1] == 'f') {
        snprintf(err, errcap, "dtype '%.*s' is big-endian; need little-endian '<f4' or '<f8'", (int)dlen, d);
        return -1;
      } else {
        snprintf(err, errcap, "dtype '%.*s' is not supported; need '<f4' (float32) or '<f8' (float64)",
                 (int)(dlen > 32 ? 32 : dlen), d);
        return -1;
      }
      have_descr = 1;
    } else if (klen == 13 && memcmp(key, "fortran_order", 13) == 0) {
      if ((size_t)(e - p) >= 4 && memcmp(p, "True", 4) == 0) {
        fortran = 1;
        p += 4;
      } else if ((size_t)(e - p) >= 5 && memcmp(p, "False", 5) == 0) {
        p += 5;
      } else {
        goto syntax;
      }
      have_order = 1;
    } else if (klen == 5 && memcmp(key, "shape", 5) == 0) {
      if (p >= e || *p++ != '(') goto syntax;
      for (;;) {
        p = skip_ws(p, e);
        if (p < e && *p == ')') {
          p++;
          break;
        }
        if (p >= e || *p < '0' || *p > '9') goto syntax;
        uint64_t v = 0;
        while (p < e && *p >= '0' && *p <= '9') {
          if (v > (UINT64_MAX - 9) / 10) goto syntax;
          v = v * 10 + (uint64_t)(*p++ - '0');
        }
        if (p < e && *p == 'L') p++; /* Python 2 long */
        if (ndim == 8) goto syntax;
        dims[ndim++] = v;
        p = skip_ws(p, e);
        if (p < e && *p == ',') p++;
      }
      have_shape = 1;
    } else {
      snprintf(err, errcap, "unexpected key '%.*s' in the header", (int)(klen > 32 ? 32 : klen), key);
      return -1;
    }
    p = skip_ws(p, e);
    if (p < e && *p == ',') /* a comma, or the closing brace, must follow */
      p++;
    else if (p >= e || *p != '}')
      goto syntax;
  }
  if (!have_descr || !have_order || !have_shape) {
    snprintf(err, errcap, "header lacks %s", !have_descr ? "'descr'" : !have_order ? "'fortran_order'" : "'shape'");
    return -1;
  }
  if (ndim != 2) {
    snprintf(err, errcap, "array is %d-D; need 2-D shape (steps, k)", ndim);
    return -1;
  }
  if (fortran && dims[0] > 1 && dims[1] > 1) {
    snprintf(err, errcap, "array is in Fortran order; save a C-ordered copy (np.ascontiguousarray)");
    return -1;
  }
  n->rows = dims[0];
  n->cols = dims[1];
  return 0;
syntax:
  snprintf(err, errcap, "malformed header dict near byte %zu: %.60s", (size_t)(p - h), h);
  for (char *c = err; *c; c++)
    if (*c == '\n') *c = ' ';
  return -1;
}

/* Read and check the header at the start of f (positioned at 0). Returns 1 if
 * the file is an .npy (n filled), 0 if it has no .npy magic, -1 on a bad .npy
 * (err says why). */
static int npy_open(FILE *f, npy_t *n, char *err, size_t errcap) {
  unsigned char pre[12];
  size_t got = fread(pre, 1, sizeof pre, f);
  uint32_t hlen;
  size_t hoff;
  char *h;
  int rc;

  if (got < 6 || memcmp(pre, "\x93NUMPY", 6) != 0) return 0;
  if (got < 10) {
    snprintf(err, errcap, "truncated .npy preamble (%zu bytes)", got);
    return -1;
  }
  if (pre[6] == 1) {
    hlen = (uint32_t)pre[8] | (uint32_t)pre[9] << 8;
    hoff = 10;
  } else if (pre[6] == 2 || pre[6] == 3) {
    if (got < 12) {
      snprintf(err, errcap, "truncated .npy preamble (%zu bytes)", got);
      return -1;
    }
    hlen = (uint32_t)pre[8] | (uint32_t)pre[9] << 8 | (uint32_t)pre[10] << 16 | (uint32_t)pre[11] << 24;
    hoff = 12;
  } else {
    snprintf(err, errcap, ".npy format version %u.%u is not supported (1.0, 2.0, 3.0 are)", pre[6], pre[7]);
    return -1;
  }
  if (hlen > (1u << 24)) {
    snprintf(err, errcap, ".npy header length %u is implausible", hlen);
    return -1;
  }
  if ((h = malloc((size_t)hlen + 1)) == NULL) {
    snprintf(err, errcap, "out of memory");
    return -1;
  }
  if (fseek(f, (long)hoff, SEEK_SET) != 0 || fread(h, 1, hlen, f) != hlen) {
    snprintf(err, errcap, "truncated .npy header (wants %u bytes)", hlen);
    free(h);
    return -1;
  }
  h[hlen] = '\0';
  rc = npy_parse_dict(h, hlen, n, err, errcap);
  free(h);
  n->data_offset = hoff + hlen;
  return rc == 0 ? 1 : -1;
}

/* ---- the command ---------------------------------------------------------------- */

static const char help_text[] =
    "Usage: gradwatch replay FILE [OPTIONS]\n"
    "\n"
    "Publish the rows of FILE as one stream: row i becomes step START + i.\n"
    "FILE is a NumPy .npy (versions 1-3, dtype <f4 or <f8, C order, shape (steps, k))\n"
    "or raw little-endian float32 (then --k is required).\n"
    "\n"
    "  --run NAME            run (default $GRADWATCH_RUN, else replay)\n"
    "  --tag TAG             tag (default all)\n"
    "  --start STEP          step of the first row (default 0)\n"
    "  --rate R              rows per second, 0 = as fast as possible (default 0)\n"
    "  --retry-ms MS         retry a row dropped on a full queue until MS pass\n"
    "                        without progress (default 10000)\n"
    "  --incarnation N       replay as publisher incarnation N (1..2^64-1, decimal or\n"
    "                        0x hex; default: a random one, as a new training run)\n"
    "  --wire-version 1|2    wire format version (default 2; 1 sends no incarnation,\n"
    "                        for daemons older than version 2)\n"
    "  (--k: the row length of a raw file; for .npy it must match shape[1] if given)\n"
    "Exit status 1 if a row could not be sent (named on stderr).\n"
    "\n";

enum { O_RUN = 1, O_TAG, O_START, O_RATE, O_RETRY, O_INCARNATION, O_WIRE, O_HELP };

static const struct option long_opts[] = {
    {"run", required_argument, NULL, O_RUN},     {"tag", required_argument, NULL, O_TAG},
    {"start", required_argument, NULL, O_START}, {"rate", required_argument, NULL, O_RATE},
    {"retry-ms", required_argument, NULL, O_RETRY}, {"help", no_argument, NULL, O_HELP},
    {"incarnation", required_argument, NULL, O_INCARNATION},
    {"wire-version", required_argument, NULL, O_WIRE},
    CLI_PUB_LONG_OPTIONS,                        {NULL, 0, NULL, 0},
};

typedef struct args_s {
  cli_pub_opts_t pub;
  const char *file, *run, *tag;
  uint64_t start, retry_ms;
  double rate;
  int k_given;
} args_t;

/* An incarnation id: 1..2^64-1, decimal or 0x-prefixed hex. */
static int opt_incarnation(const char *s, uint64_t *out) {
  char *end;
  unsigned long long v;
  int hex = s[0] == '0' && (s[1] == 'x' || s[1] == 'X');
  const char *d = hex ? s + 2 : s;
  if (!((*d >= '0' && *d <= '9') || (hex && ((*d >= 'a' && *d <= 'f') || (*d >= 'A' && *d <= 'F')))))
    goto bad;
  errno = 0;
  v = strtoull(d, &end, hex ? 16 : 10);
  if (errno != 0 || *end != '\0' || v == 0) goto bad;
  *out = (uint64_t)v;
  return 0;
bad:
  return cli_usage(CMD, "--incarnation wants an id from 1 to 2^64-1 (decimal or 0x hex), not '%s'", s);
}

static int parse_args(args_t *a, int argc, char **argv) {
  uint64_t wire;
  int c, rc;
  memset(a, 0, sizeof *a);
  cli_pub_opts_init(&a->pub, 5.0);
  a->run = getenv(CLI_ENV_RUN) && getenv(CLI_ENV_RUN)[0] ? getenv(CLI_ENV_RUN) : "replay";
  a->tag = "all";
  a->retry_ms = 10000;

  opterr = 0;
  while ((c = getopt_long(argc, argv, ":h", long_opts, NULL)) != -1) {
    rc = 0;
    switch (c) {
    case 'h':
    case O_HELP:
      printf("%s%s", help_text, cli_pub_help);
      return -1;
    case O_RUN: a->run = optarg; break;
    case O_TAG: a->tag = optarg; break;
    case O_START: rc = cli_opt_u64(CMD, "--start", optarg, 0, INT64_MAX, &a->start); break;
    case O_RATE: rc = cli_opt_double(CMD, "--rate", optarg, 0, 1e9, &a->rate); break;
    case O_RETRY: rc = cli_opt_u64(CMD, "--retry-ms", optarg, 0, 86400000, &a->retry_ms); break;
    case O_INCARNATION: rc = opt_incarnation(optarg, &a->pub.cfg.incarnation); break;
    case O_WIRE:
      if ((rc = cli_opt_u64(CMD, "--wire-version", optarg, 1, 2, &wire)) == 0)
        a->pub.cfg.wire_version = (int)wire;
      break;
    case '?':
    case ':':
      return cli_bad_option(CMD, c, argv);
    default:
      if (c == CLI_O_K) a->k_given = 1;
      rc = cli_pub_opts_parse(&a->pub, CMD, c, optarg);
    }
    if (rc != 0) return rc;
  }
  if (optind >= argc) return cli_usage(CMD, "which FILE?");
  a->file = argv[optind++];
  if (optind < argc) return cli_usage(CMD, "unexpected argument '%s' (one FILE only)", argv[optind]);
  if (gw_proto_check_run(a->run, strlen(a->run)) != 0)
    return cli_usage(CMD, "bad run name '%s': 1..128 of [A-Za-z0-9._:-]", a->run);
  if (gw_proto_check_tag(a->tag, strlen(a->tag)) != 0)
    return cli_usage(CMD, "bad tag '%s': 1..128 of [A-Za-z0-9._:/-]", a->tag);
  if (a->pub.cfg.wire_version == 1 && a->pub.cfg.incarnation != 0)
    return cli_usage(CMD, "--wire-version 1 carries no incarnation; drop --incarnation");
  return 0;
}

/* The library's no-daemon warning, on stderr. */
static void warn_stderr(void *arg, const char *msg) {
  (void)arg;
  fprintf(stderr, "gradwatch %s: warning: %s\n", CMD, msg);
}

/* Publish one row. A row dropped while a subscriber is there (its queue is
 * full) is retried every millisecond until it is sent or *progress + retry_ms
 * has passed, *progress being when the last row went out; a row dropped with
 * no subscriber at all (PUB) is not retried. (PUSH cannot tell a full queue
 * from a missing peer, so it always retries.) Returns 0 sent,
 * GW_PUBLISH_DROPPED given up, or a negative GW_E* code. */
static int send_row(gw_publisher_t *p, const args_t *a, uint64_t step, const float *z,
                    double *progress) {
  for (;;) {
    int rc = gw_publisher_publish_sketch(p, a->tag, step, z, NULL);
    if (rc == 0) *progress = cli_now();
    if (rc != GW_PUBLISH_DROPPED || cli_stopped() ||
        cli_now() >= *progress + (double)a->retry_ms / 1000.0)
      return rc;
    if (a->pub.cfg.socket == GW_PUBLISHER_PUB && gw_publisher_wait_subscribed(p, a->tag, 0) != 0)
      return rc;
    cli_sleep(0.001);
  }
}

int cli_replay(int argc, char **argv) {
  args_t a;
  FILE *f = NULL;
  npy_t n = {0};
  struct stat st;
  char err[256];
  void *row = NULL;
  float *z = NULL;
  gw_publisher_t *pub = NULL;
  cli_bucket_t bucket;
  cli_progress_t prog;
  uint64_t rows, sent = 0, lost = 0, first_lost = 0, i;
  size_t esize;
  double progress;
  int rc, status = CLI_FAIL;

  if ((rc = parse_args(&a, argc, argv)) != 0) return rc < 0 ? CLI_OK : rc;
  if ((f = fopen(a.file, "rb")) == NULL) return cli_fail(CMD, "%s: %s", a.file, strerror(errno));
  if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
    cli_fail(CMD, "%s: not a regular file", a.file);
    goto done;
  }
  rc = npy_open(f, &n, err, sizeof err);
  if (rc < 0) {
    cli_fail(CMD, "%s: %s", a.file, err);
    goto done;
  }
  if (rc == 1) { /* .npy */
    if (n.cols < 1 || n.cols > GW_PROTO_K_MAX) {
      cli_fail(CMD, "%s: shape (%llu, %llu): k = %llu is outside 1..%u", a.file,
               (unsigned long long)n.rows, (unsigned long long)n.cols, (unsigned long long)n.cols,
               GW_PROTO_K_MAX);
      goto done;
    }
    if (a.k_given && n.cols != a.pub.cfg.sketch.k) {
      status = cli_usage(CMD, "%s has k = %llu (shape[1]) but --k says %u", a.file,
                         (unsigned long long)n.cols, a.pub.cfg.sketch.k);
      goto done;
    }
    a.pub.cfg.sketch.k = (uint32_t)n.cols;
    esize = n.f64 ? 8 : 4;
    uint64_t want = (uint64_t)n.data_offset + n.rows * n.cols * esize;
    if (n.rows > UINT64_MAX / (n.cols * esize) || (uint64_t)st.st_size < want) {
      cli_fail(CMD, "%s: truncated: shape (%llu, %llu) of %s needs %llu bytes of data, the file has %llu",
               a.file, (unsigned long long)n.rows, (unsigned long long)n.cols, n.f64 ? "<f8" : "<f4",
               (unsigned long long)(n.rows * n.cols * esize),
               (unsigned long long)((uint64_t)st.st_size - n.data_offset));
      goto done;
    }
    if ((uint64_t)st.st_size > want) {
      cli_fail(CMD, "%s: %llu bytes after the data of shape (%llu, %llu); not a single .npy array",
               a.file, (unsigned long long)((uint64_t)st.st_size - want), (unsigned long long)n.rows,
               (unsigned long long)n.cols);
      goto done;
    }
    rows = n.rows;
  } else { /* raw float32 */
    if (!a.k_given) {
      status = cli_usage(CMD, "%s is not a .npy file (no \\x93NUMPY magic); give --k K to read it "
                              "as raw little-endian float32 rows of length K", a.file);
      goto done;
    }
    esize = 4;
    n.data_offset = 0;
    uint64_t rowbytes = (uint64_t)a.pub.cfg.sketch.k * 4;
    if ((uint64_t)st.st_size % rowbytes != 0) {
      cli_fail(CMD, "%s: size %llu is not a multiple of the row size 4 x k = %llu", a.file,
               (unsigned long long)st.st_size, (unsigned long long)rowbytes);
      goto done;
    }
    rows = (uint64_t)st.st_size / rowbytes;
  }
  if ((rc = cli_pub_opts_finish(&a.pub, CMD)) != 0) {
    status = rc;
    goto done;
  }
  if (rows > 0 && rows - 1 > (uint64_t)INT64_MAX - a.start) {
    status = cli_usage(CMD, "--start + rows goes beyond the largest step 2^63-1");
    goto done;
  }
  if (fseek(f, (long)n.data_offset, SEEK_SET) != 0) {
    cli_fail(CMD, "%s: %s", a.file, strerror(errno));
    goto done;
  }

  const uint32_t k = a.pub.cfg.sketch.k;
  row = malloc((size_t)k * esize);
  z = malloc((size_t)k * sizeof *z);
  if (row == NULL || z == NULL) {
    cli_fail(CMD, "out of memory");
    goto done;
  }
  cli_catch_signals();
  a.pub.cfg.run = a.run;
  if ((rc = gw_publisher_new(&pub, &a.pub.cfg)) != 0) {
    cli_fail(CMD, "cannot publish to %s: %s", a.pub.cfg.endpoint, gw_strerror(rc));
    goto done;
  }
  cli_wait_subscribers(&a.pub, CMD, &pub, 1);
  /* --wait has already said so if nobody came; otherwise let the library
   * say it if nobody comes 5 s into the replay. */
  if (!(a.pub.wait_s > 0) || gw_publisher_connected(pub)) gw_publisher_set_warn(pub, warn_stderr, NULL);
  cli_bucket_init(&bucket, a.rate);
  cli_progress_start(&prog);
  progress = cli_now();
  for (i = 0; i < rows && !cli_stopped(); i++) {
    const unsigned char *b = row;
    if (fread(row, esize, k, f) != k) {
      cli_fail(CMD, "%s: read error at row %llu: %s", a.file, (unsigned long long)i,
               ferror(f) ? strerror(errno) : "unexpected end of file");
      goto done;
    }
    for (uint32_t j = 0; j < k; j++) { /* little-endian, whatever the host */
      if (esize == 4) {
        uint32_t u = (uint32_t)b[4 * j] | (uint32_t)b[4 * j + 1] << 8 |
                     (uint32_t)b[4 * j + 2] << 16 | (uint32_t)b[4 * j + 3] << 24;
        memcpy(&z[j], &u, 4);
      } else {
        uint64_t u = 0;
        double d;
        for (int q = 7; q >= 0; q--) u = u << 8 | b[8 * j + (size_t)q];
        memcpy(&d, &u, 8);
        z[j] = (float)d;
      }
    }
    cli_bucket_take(&bucket);
    rc = send_row(pub, &a, a.start + i, z, &progress);
    if (rc < 0) {
      cli_fail(CMD, "%s: row %llu (step %llu): %s%s", a.file, (unsigned long long)i,
               (unsigned long long)(a.start + i), gw_strerror(rc),
               rc == GW_ENONFINITE ? " (NaN/Inf, or beyond the range of --dtype)" : "");
      goto done;
    }
    if (rc == GW_PUBLISH_DROPPED) {
      if (lost++ == 0) first_lost = i;
    } else {
      sent++;
    }
    if (a.pub.report) cli_progress_tick(&prog, sent, lost);
  }
  if (a.pub.report) cli_progress_end(&prog, sent, lost);
  if (lost) {
    cli_fail(CMD, "%llu of %llu rows were not sent (the first: row %llu); no subscriber, or its "
                  "queue stayed full for --retry-ms",
             (unsigned long long)lost, (unsigned long long)(sent + lost), (unsigned long long)first_lost);
    goto done;
  }
  status = CLI_OK;

done:
  gw_publisher_free(pub); /* lingers: queued rows still go out */
  if (f) fclose(f);
  free(row);
  free(z);
  return status;
}
