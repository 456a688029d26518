/* cli_publish.c — `gradwatch publish --synthetic`: a load and demo generator
 * whose streams have a known structure (docs/cli.md §publish is the
 * normative statement of the math below; tests and benchmarks rely on it).
 *
 * For run a and tag b, step t, with R = --rank, k = --k, σ = --noise:
 *
 *   z_t = g · U_b c_t + σ ξ_t,     c_{t,i} = A + b_i sin(ω_i t + φ_{a,b,i})
 *
 *   A = 10, g = 1 / (A √R), ω_i = (π/2)(i+1)/(R+1), b_i = 1 / (2 sin(ω_i/2)),
 *   U_b ∈ R^{k×R} orthonormal columns (Gram–Schmidt of N(0,1) entries),
 *   φ uniform in [0, 2π), ξ_t ~ N(0, I_k) fresh every step.
 *
 * So ‖z_t‖ ≈ 1 when σ = 0, every increment z_t − z_{t−1} lies in span(U_b)
 * (the increment matrix has rank ≤ R, hence rank_90 ≤ R), and each
 * coefficient's increment has amplitude g (b_i compensates the frequency),
 * which balances the singular values: rank_90 = R for R ≤ 7 at W = 64.
 * κ_onestep ≈ (1/(2A²) + 2σ²k) / (1 + σ²k) — 0.005 without noise.
 * From step --collapse-at on, z_t = ‖z̃_t‖ η_t/‖η_t‖ with z̃_t the formula
 * above and η_t ~ N(0, I_k): pure noise of the same norm, κ_onestep ≈ 2,
 * κ_ema ≈ 1.05, rank_90 ≈ most of min(k, W).
 *
 * Randomness is splitmix64 (Vigna) seeded with gw_sketch_hash(seed, 0, b)
 * for U_b and gw_sketch_hash(seed, a + 1, b) for stream (a, b) (phases, then
 * ξ and η in step order); normals by Box–Muller. Same flags, same numbers.
 *
 * Data flow per message: token bucket → c_t → z (float64, then float32) →
 * gw_publisher_publish_sketch (one publisher per run, one shared ZeroMQ
 * context). Memory: tags × k × R doubles for the bases, R per stream.
 */
#include "cli.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <unistd.h>

#include <cjson/cJSON.h>
#include <zmq.h>

#include "gw_meta.h"

#define CMD "publish"
#define AMP_A 10.0
#define MAX_RUNS 100000
#define MAX_TAGS 100000
#define MAX_BASIS_BYTES ((size_t)1 << 30)
#define PI 3.14159265358979323846

/* ---- random numbers ------------------------------------------------------- */

typedef struct rng_s {
  uint64_t s;
  int has_spare;
  double spare;
} rng_t;

static void rng_seed(rng_t *r, uint64_t seed) {
  r->s = seed;
  r->has_spare = 0;
}

static uint64_t rng_next(rng_t *r) { /* splitmix64 */
  uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static double rng_uniform(rng_t *r) { /* [0, 1) */
  return (double)(rng_next(r) >> 11) * 0x1p-53;
}

static double rng_normal(rng_t *r) { /* Box–Muller; the sine half is kept */
  double u1, u2, rad;
  if (r->has_spare) {
    r->has_spare = 0;
    return r->spare;
  }
  u1 = 1.0 - rng_uniform(r); /* (0, 1]: log is finite */
  u2 = rng_uniform(r);
  rad = sqrt(-2.0 * log(u1));
  r->spare = rad * sin(2 * PI * u2);
  r->has_spare = 1;
  return rad * cos(2 * PI * u2);
}

/* ---- the generator ----------------------------------------------------------- */

typedef struct synth_s {
  uint32_t k, R;
  double sigma;
  int collapse; /* collapse_at is set */
  uint64_t collapse_at;
  double g;      /* 1 / (A √R) */
  double *omega; /* R */
  double *amp;   /* R: b_i */
  double *U;     /* ntags blocks of k×R, column i at U + (b*R + i)*k */
  double *phi;   /* nstreams × R */
  rng_t *rng;    /* nstreams */
  double *tmp;   /* k */
} synth_t;

static void synth_free(synth_t *s) {
  free(s->omega);
  free(s->amp);
  free(s->U);
  free(s->phi);
  free(s->rng);
  free(s->tmp);
}

/* Orthonormalize the R columns of U (k rows) in place: modified Gram–Schmidt,
 * applied twice ("twice is enough", Giraud et al.) for orthogonality to
 * rounding. Gaussian columns are independent with probability 1. */
static void orthonormalize(double *U, uint32_t k, uint32_t R) {
  for (int pass = 0; pass < 2; pass++)
    for (uint32_t i = 0; i < R; i++) {
      double *u = U + (size_t)i * k, nrm = 0;
      for (uint32_t j = 0; j < i; j++) {
        const double *v = U + (size_t)j * k;
        double dot = 0;
        for (uint32_t r = 0; r < k; r++) dot += u[r] * v[r];
        for (uint32_t r = 0; r < k; r++) u[r] -= dot * v[r];
      }
      for (uint32_t r = 0; r < k; r++) nrm += u[r] * u[r];
      nrm = sqrt(nrm);
      for (uint32_t r = 0; r < k; r++) u[r] /= nrm;
    }
}

static int synth_init(synth_t *s, uint64_t seed, uint32_t k, uint32_t R, double sigma,
                      size_t nruns, size_t ntags) {
  size_t nstreams = nruns * ntags;
  memset(s, 0, sizeof *s);
  s->k = k;
  s->R = R;
  s->sigma = sigma;
  s->g = R ? 1.0 / (AMP_A * sqrt((double)R)) : 0.0;
  s->omega = malloc((R ? R : 1) * sizeof *s->omega);
  s->amp = malloc((R ? R : 1) * sizeof *s->amp);
  s->U = malloc((R ? ntags * R * (size_t)k : 1) * sizeof *s->U);
  s->phi = malloc((R ? nstreams * R : 1) * sizeof *s->phi);
  s->rng = malloc(nstreams * sizeof *s->rng);
  s->tmp = malloc((size_t)k * sizeof *s->tmp);
  if (!s->omega || !s->amp || !s->U || !s->phi || !s->rng || !s->tmp) {
    synth_free(s);
    return GW_ENOMEM;
  }
  for (uint32_t i = 0; i < R; i++) {
    s->omega[i] = (PI / 2) * (i + 1) / (R + 1);
    s->amp[i] = 1.0 / (2.0 * sin(s->omega[i] / 2));
  }
  for (size_t b = 0; b < ntags; b++) {
    rng_t r;
    double *Ub = s->U + b * R * (size_t)k;
    rng_seed(&r, gw_sketch_hash(seed, 0, b));
    for (size_t e = 0; e < (size_t)R * k; e++) Ub[e] = rng_normal(&r);
    orthonormalize(Ub, k, R);
  }
  for (size_t a = 0; a < nruns; a++)
    for (size_t b = 0; b < ntags; b++) {
      size_t st = a * ntags + b;
      rng_seed(&s->rng[st], gw_sketch_hash(seed, a + 1, b));
      for (uint32_t i = 0; i < R; i++) s->phi[st * R + i] = 2 * PI * rng_uniform(&s->rng[st]);
    }
  return 0;
}

/* z for stream (a, b) = st at step t. */
static void synth_z(synth_t *s, size_t st, size_t b, uint64_t t, float *z) {
  const uint32_t k = s->k, R = s->R;
  const double *Ub = s->U + b * R * (size_t)k, *phi = s->phi + st * R;
  double *x = s->tmp;
  rng_t *rng = &s->rng[st];

  memset(x, 0, (size_t)k * sizeof *x);
  for (uint32_t i = 0; i < R; i++) {
    const double c = s->g * (AMP_A + s->amp[i] * sin(s->omega[i] * (double)t + phi[i]));
    const double *u = Ub + (size_t)i * k;
    for (uint32_t r = 0; r < k; r++) x[r] += c * u[r];
  }
  if (s->sigma > 0)
    for (uint32_t r = 0; r < k; r++) x[r] += s->sigma * rng_normal(rng);
  if (s->collapse && t >= s->collapse_at) {
    double nz = 0, ne = 0;
    for (uint32_t r = 0; r < k; r++) nz += x[r] * x[r];
    for (uint32_t r = 0; r < k; r++) {
      x[r] = rng_normal(rng);
      ne += x[r] * x[r];
    }
    const double f = sqrt(nz / ne);
    for (uint32_t r = 0; r < k; r++) x[r] *= f;
  }
  for (uint32_t r = 0; r < k; r++) z[r] = (float)x[r];
}

/* ---- names -------------------------------------------------------------------- */

typedef struct names_s {
  char **v;
  size_t n;
} names_t;

static void names_free(names_t *n) {
  for (size_t i = 0; i < n->n; i++) free(n->v[i]);
  free(n->v);
  n->v = NULL;
  n->n = 0;
}

static int names_add(names_t *n, const char *s, size_t len) {
  char **v = realloc(n->v, (n->n + 1) * sizeof *v);
  if (v == NULL) return GW_ENOMEM;
  n->v = v;
  if ((v[n->n] = malloc(len + 1)) == NULL) return GW_ENOMEM;
  memcpy(v[n->n], s, len);
  v[n->n][len] = '\0';
  n->n++;
  return 0;
}

static int all_digits(const char *s) {
  if (*s == '\0') return 0;
  for (; *s; s++)
    if (*s < '0' || *s > '9') return 0;
  return 1;
}

/* Tags from --tags (a count or a comma-separated list) and --tag-prefix. */
static int make_tags(names_t *out, const char *spec, const char *prefix) {
  char buf[GW_PROTO_NAME_MAX + 32];
  uint64_t n;

  if (spec == NULL) spec = prefix ? "1" : "all";
  if (all_digits(spec)) {
    if (cli_opt_u64(CMD, "--tags", spec, 1, MAX_TAGS, &n) != 0) return CLI_USAGE;
    if (prefix == NULL) prefix = "layer";
    for (uint64_t i = 0; i < n; i++) {
      int len = snprintf(buf, sizeof buf, "%s%llu", prefix, (unsigned long long)i);
      if (len < 0 || (size_t)len >= sizeof buf || gw_proto_check_tag(buf, (size_t)len) != 0)
        return cli_usage(CMD, "--tag-prefix '%s' makes a bad tag '%s' (1..128 of [A-Za-z0-9._:/-])",
                         prefix, buf);
      if (names_add(out, buf, (size_t)len) != 0) return cli_fail(CMD, "out of memory");
    }
    return 0;
  }
  if (prefix != NULL) return cli_usage(CMD, "--tag-prefix goes with a count (--tags N), not a list");
  for (const char *p = spec;;) {
    const char *e = strchr(p, ',');
    size_t len = e ? (size_t)(e - p) : strlen(p);
    if (gw_proto_check_tag(p, len) != 0)
      return cli_usage(CMD, "bad tag '%.*s' in --tags: 1..128 of [A-Za-z0-9._:/-]", (int)len, p);
    for (size_t i = 0; i < out->n; i++)
      if (strlen(out->v[i]) == len && memcmp(out->v[i], p, len) == 0)
        return cli_usage(CMD, "tag '%.*s' appears twice in --tags", (int)len, p);
    if (out->n == MAX_TAGS) return cli_usage(CMD, "more than %d tags", MAX_TAGS);
    if (names_add(out, p, len) != 0) return cli_fail(CMD, "out of memory");
    if (!e) break;
    p = e + 1;
  }
  return 0;
}

static int make_runs(names_t *out, const char *run, uint64_t nruns) {
  char buf[GW_PROTO_NAME_MAX + 32];
  for (uint64_t a = 0; a < nruns; a++) {
    int len = nruns == 1 ? snprintf(buf, sizeof buf, "%s", run)
                         : snprintf(buf, sizeof buf, "%s-%llu", run, (unsigned long long)a);
    if (len < 0 || (size_t)len >= sizeof buf || gw_proto_check_run(buf, (size_t)len) != 0)
      return cli_usage(CMD, "bad run name '%s': 1..128 of [A-Za-z0-9._:-]", buf);
    if (names_add(out, buf, (size_t)len) != 0) return cli_fail(CMD, "out of memory");
  }
  return 0;
}

/* ---- the command ------------------------------------------------------------------ */

/* The library's no-daemon warning, on stderr. */
static void warn_stderr(void *arg, const char *msg) {
  (void)arg;
  fprintf(stderr, "gradwatch %s: warning: %s\n", CMD, msg);
}

static const char help_text[] =
    "Usage: gradwatch publish --synthetic [OPTIONS]\n"
    "\n"
    "Publish synthetic sketches with a known structure, for demos and load tests:\n"
    "z_t = g U c_t + noise, with U an orthonormal k x R basis and smooth coefficients\n"
    "c_t, so the increments have rank <= R and are predictable (kappa_onestep ~ 0.005\n"
    "without noise). docs/cli.md states the formulas.\n"
    "\n"
    "Streams:\n"
    "  --synthetic           the generator (required)\n"
    "  --run NAME            run name (default $GRADWATCH_RUN, else synthetic); with\n"
    "                        --runs N > 1 the runs are NAME-0 .. NAME-(N-1)\n"
    "  --runs N              number of runs, one publisher each (default 1)\n"
    "  --tags LIST|N         comma-separated tags (default all), or a count N: tags\n"
    "                        PREFIX0 .. PREFIX(N-1)\n"
    "  --tag-prefix PREFIX   prefix of counted tags (default layer; alone: --tags 1)\n"
    "  --steps N             steps per stream, 0 = until interrupted (default 0)\n"
    "  --start STEP          first step (default 0)\n"
    "  --rate R              messages per second per stream, 0 = as fast as possible\n"
    "                        (default 10)\n"
    "  --total-rate R        messages per second over all streams (instead of --rate)\n"
    "Signal:\n"
    "  --rank R              dimension of the subspace, 0..k (default 4)\n"
    "  --noise SIGMA         isotropic Gaussian noise per coordinate (default 0)\n"
    "  --collapse-at STEP    from this step on, pure noise of the same norm\n"
    "  --loss                send a synthetic loss 0.1 + 2.2 exp(-t/1000)\n"
    "  --lr LR               send this learning rate with every message\n"
    "  (--seed also seeds the generator)\n"
    "Run metadata (sent to the daemon with each run, PROTOCOL.md section 11):\n"
    "  --tag-run T           tag the run(s) with T (repeatable; [A-Za-z0-9._:/+=@-], 1..64)\n"
    "  --label K=V           label the run(s) (repeatable)\n"
    "  --config-json JSON    the run's config, a JSON object\n";

enum {
  O_SYNTHETIC = 1,
  O_RUN,
  O_RUNS,
  O_TAGS,
  O_TAG_PREFIX,
  O_STEPS,
  O_START,
  O_RATE,
  O_TOTAL_RATE,
  O_RANK,
  O_NOISE,
  O_COLLAPSE,
  O_LOSS,
  O_LR,
  O_TAG_RUN,
  O_LABEL,
  O_CONFIG_JSON,
  O_HELP
};

static const struct option long_opts[] = {
    {"synthetic", no_argument, NULL, O_SYNTHETIC},
    {"run", required_argument, NULL, O_RUN},
    {"runs", required_argument, NULL, O_RUNS},
    {"tags", required_argument, NULL, O_TAGS},
    {"tag-prefix", required_argument, NULL, O_TAG_PREFIX},
    {"steps", required_argument, NULL, O_STEPS},
    {"start", required_argument, NULL, O_START},
    {"rate", required_argument, NULL, O_RATE},
    {"total-rate", required_argument, NULL, O_TOTAL_RATE},
    {"rank", required_argument, NULL, O_RANK},
    {"noise", required_argument, NULL, O_NOISE},
    {"collapse-at", required_argument, NULL, O_COLLAPSE},
    {"loss", no_argument, NULL, O_LOSS},
    {"lr", required_argument, NULL, O_LR},
    {"tag-run", required_argument, NULL, O_TAG_RUN},
    {"label", required_argument, NULL, O_LABEL},
    {"config-json", required_argument, NULL, O_CONFIG_JSON},
    {"help", no_argument, NULL, O_HELP},
    CLI_PUB_LONG_OPTIONS,
    {NULL, 0, NULL, 0},
};

typedef struct args_s {
  cli_pub_opts_t pub;
  int synthetic, loss, has_lr, total;
  const char *run, *tags, *tag_prefix;
  uint64_t runs, steps, start, rank, collapse_at;
  int has_collapse;
  double rate, noise, lr;
  cJSON *meta; /* the run metadata document, NULL when none was asked for */
} args_t;

static int tag_ok(const char *t) {
  size_t n = strlen(t);
  if (n == 0 || n > GW_META_NAME_MAX) return 0;
  for (; *t; t++)
    if (!((*t >= 'A' && *t <= 'Z') || (*t >= 'a' && *t <= 'z') || (*t >= '0' && *t <= '9') ||
          strchr("._:/+=@-", *t)))
      return 0;
  return 1;
}

static int key_ok(const char *k, size_t n) {
  if (n == 0 || n > GW_META_NAME_MAX) return 0;
  for (size_t i = 0; i < n; i++)
    if (!((k[i] >= 'A' && k[i] <= 'Z') || (k[i] >= 'a' && k[i] <= 'z') ||
          (k[i] >= '0' && k[i] <= '9') || strchr("._-", k[i])))
      return 0;
  return 1;
}

/* One --tag-run, --label or --config-json into a->meta. */
static int meta_opt(args_t *a, int c, const char *v) {
  cJSON *m, *x;
  if (!a->meta && !(a->meta = cJSON_CreateObject())) return cli_fail(CMD, "out of memory");
  m = a->meta;
  if (c == O_TAG_RUN) {
    if (!tag_ok(v)) return cli_usage(CMD, "--tag-run '%s': 1..64 characters of [A-Za-z0-9._:/+=@-]", v);
    x = cJSON_GetObjectItemCaseSensitive(m, "tags");
    if (!x) x = cJSON_AddArrayToObject(m, "tags");
    if (!x || !cJSON_AddItemToArray(x, cJSON_CreateString(v))) return CLI_FAIL;
  } else if (c == O_LABEL) {
    const char *eq = strchr(v, '=');
    if (!eq || !key_ok(v, (size_t)(eq - v)) || strlen(eq + 1) > GW_META_VALUE_MAX)
      return cli_usage(CMD, "--label '%s': want KEY=VALUE, KEY of [A-Za-z0-9._-] (1..64), "
                            "VALUE up to 256 bytes", v);
    x = cJSON_GetObjectItemCaseSensitive(m, "labels");
    if (!x) x = cJSON_AddObjectToObject(m, "labels");
    char key[GW_META_NAME_MAX + 1];
    memcpy(key, v, (size_t)(eq - v));
    key[eq - v] = '\0';
    cJSON_DeleteItemFromObjectCaseSensitive(x, key); /* the last one wins */
    if (!x || !cJSON_AddStringToObject(x, key, eq + 1)) return CLI_FAIL;
  } else {
    cJSON *cfg = cJSON_Parse(v);
    if (!cJSON_IsObject(cfg)) {
      cJSON_Delete(cfg);
      return cli_usage(CMD, "--config-json: not a JSON object: %.80s", v);
    }
    cJSON_DeleteItemFromObjectCaseSensitive(m, "config");
    cJSON_AddItemToObject(m, "config", cfg);
  }
  return 0;
}

/* The metadata text for gw_publisher_set_meta: the members in protocol
 * order, with "client" saying who sent it. The caller frees it. */
static char *meta_text(cJSON *m) {
  char host[256] = "";
  static const char *const order[] = {"config", "tags", "labels"};
  cJSON *out = cJSON_CreateObject(), *client;
  char *text = NULL;
  if (!out) return NULL;
  for (size_t i = 0; i < 3; i++) {
    cJSON *x = cJSON_GetObjectItemCaseSensitive(m, order[i]);
    if (x) cJSON_AddItemToObject(out, order[i], cJSON_Duplicate(x, 1));
  }
  gethostname(host, sizeof host - 1);
  if ((client = cJSON_AddObjectToObject(out, "client")) &&
      cJSON_AddStringToObject(client, "program", "gradwatch " CMD) &&
      cJSON_AddStringToObject(client, "gradwatch", GW_VERSION) &&
      cJSON_AddStringToObject(client, "host", host) &&
      cJSON_AddNumberToObject(client, "pid", (double)getpid()))
    text = cJSON_PrintUnformatted(out);
  cJSON_Delete(out);
  return text;
}

static int parse_args(args_t *a, int argc, char **argv) {
  int c, rc;
  memset(a, 0, sizeof *a);
  cli_pub_opts_init(&a->pub, 1.0);
  a->run = getenv(CLI_ENV_RUN) && getenv(CLI_ENV_RUN)[0] ? getenv(CLI_ENV_RUN) : "synthetic";
  a->runs = 1;
  a->rank = 4;
  a->rate = 10;

  opterr = 0;
  while ((c = getopt_long(argc, argv, ":h", long_opts, NULL)) != -1) {
    rc = 0;
    switch (c) {
    case 'h':
    case O_HELP:
      printf("%s%s", help_text, cli_pub_help);
      return -1;
    case O_SYNTHETIC: a->synthetic = 1; break;
    case O_RUN: a->run = optarg; break;
    case O_RUNS: rc = cli_opt_u64(CMD, "--runs", optarg, 1, MAX_RUNS, &a->runs); break;
    case O_TAGS: a->tags = optarg; break;
    case O_TAG_PREFIX: a->tag_prefix = optarg; break;
    case O_STEPS: rc = cli_opt_u64(CMD, "--steps", optarg, 0, INT64_MAX, &a->steps); break;
    case O_START: rc = cli_opt_u64(CMD, "--start", optarg, 0, INT64_MAX, &a->start); break;
    case O_RATE:
      rc = cli_opt_double(CMD, "--rate", optarg, 0, 1e9, &a->rate);
      a->total = 0;
      break;
    case O_TOTAL_RATE:
      rc = cli_opt_double(CMD, "--total-rate", optarg, 0, 1e9, &a->rate);
      a->total = 1;
      break;
    case O_RANK: rc = cli_opt_u64(CMD, "--rank", optarg, 0, GW_PROTO_K_MAX, &a->rank); break;
    case O_NOISE: rc = cli_opt_double(CMD, "--noise", optarg, 0, 1e6, &a->noise); break;
    case O_COLLAPSE:
      rc = cli_opt_u64(CMD, "--collapse-at", optarg, 0, INT64_MAX, &a->collapse_at);
      a->has_collapse = 1;
      break;
    case O_LOSS: a->loss = 1; break;
    case O_LR:
      rc = cli_opt_double(CMD, "--lr", optarg, -1e300, 1e300, &a->lr);
      a->has_lr = 1;
      break;
    case O_TAG_RUN:
    case O_LABEL:
    case O_CONFIG_JSON: rc = meta_opt(a, c, optarg); break;
    case '?':
    case ':':
      return cli_bad_option(CMD, c, argv);
    default:
      rc = cli_pub_opts_parse(&a->pub, CMD, c, optarg);
    }
    if (rc != 0) return rc;
  }
  if (optind < argc) return cli_usage(CMD, "unexpected argument '%s'", argv[optind]);
  if (!a->synthetic)
    return cli_usage(CMD, "say --synthetic (the only source of publish; "
                          "'gradwatch replay FILE' publishes a file)");
  if ((rc = cli_pub_opts_finish(&a->pub, CMD)) != 0) return rc;
  if (a->rank > a->pub.cfg.sketch.k)
    return cli_usage(CMD, "--rank %llu is larger than --k %u", (unsigned long long)a->rank,
                     a->pub.cfg.sketch.k);
  if (a->steps > (uint64_t)INT64_MAX - a->start)
    return cli_usage(CMD, "--start + --steps is beyond the largest step 2^63-1");
  return 0;
}

static uint64_t sum_counts(gw_publisher_t **pubs, size_t n, int dropped) {
  uint64_t s = 0;
  for (size_t i = 0; i < n; i++) s += dropped ? gw_publisher_dropped(pubs[i]) : gw_publisher_sent(pubs[i]);
  return s;
}

int cli_publish(int argc, char **argv) {
  args_t a;
  names_t runs = {0}, tags = {0};
  synth_t syn = {0};
  gw_publisher_t **pubs = NULL;
  void *ctx = NULL;
  float *z = NULL;
  cli_bucket_t bucket;
  cli_progress_t prog;
  int rc, status = CLI_FAIL, have_syn = 0;

  char *meta = NULL;
  if ((rc = parse_args(&a, argc, argv)) != 0) {
    cJSON_Delete(a.meta);
    return rc < 0 ? CLI_OK : rc;
  }
  if (a.meta && !(meta = meta_text(a.meta))) {
    cli_fail(CMD, "out of memory");
    goto done;
  }
  if ((rc = make_runs(&runs, a.run, a.runs)) != 0 || (rc = make_tags(&tags, a.tags, a.tag_prefix)) != 0) {
    status = rc;
    goto done;
  }
  const uint32_t k = a.pub.cfg.sketch.k;
  if ((double)tags.n * (double)a.rank * k * sizeof(double) > (double)MAX_BASIS_BYTES) {
    status = cli_usage(CMD, "tags x rank x k = %zu x %llu x %u is too large (bases over 1 GiB)",
                       tags.n, (unsigned long long)a.rank, k);
    goto done;
  }
  if (synth_init(&syn, a.pub.cfg.sketch.seed, k, (uint32_t)a.rank, a.noise, runs.n, tags.n) != 0) {
    cli_fail(CMD, "out of memory");
    goto done;
  }
  have_syn = 1;
  syn.collapse = a.has_collapse;
  syn.collapse_at = a.collapse_at;

  cli_catch_signals();
  z = malloc((size_t)k * sizeof *z);
  pubs = calloc(runs.n, sizeof *pubs);
  if ((ctx = zmq_ctx_new()) == NULL || z == NULL || pubs == NULL) {
    cli_fail(CMD, "cannot start: out of memory or ZeroMQ failed");
    goto done;
  }
  for (size_t i = 0; i < runs.n; i++) {
    gw_publisher_config_t cfg = a.pub.cfg;
    cfg.run = runs.v[i];
    cfg.zmq_context = ctx;
    if ((rc = gw_publisher_new(&pubs[i], &cfg)) != 0) {
      cli_fail(CMD, "cannot publish to %s: %s", cfg.endpoint, gw_strerror(rc));
      goto done;
    }
    if (meta && (rc = gw_publisher_set_meta(pubs[i], meta)) != 0) {
      cli_fail(CMD, "run metadata: %s", gw_strerror(rc));
      goto done;
    }
  }
  cli_wait_subscribers(&a.pub, CMD, pubs, runs.n);
  /* --wait has already warned about a publisher nobody subscribed to; the
   * others warn (once, on stderr) if no daemon comes within 5 s. */
  for (size_t i = 0; i < runs.n; i++)
    if (!(a.pub.wait_s > 0) || gw_publisher_connected(pubs[i]))
      gw_publisher_set_warn(pubs[i], warn_stderr, NULL);

  cli_bucket_init(&bucket, a.total ? a.rate : a.rate * (double)(runs.n * tags.n));
  cli_progress_start(&prog);
  for (uint64_t t = a.start; (a.steps == 0 || t - a.start < a.steps) && !cli_stopped(); t++) {
    gw_extras_t x = {0};
    if (a.loss) {
      x.flags |= GW_HAS_LOSS;
      x.loss = 0.1 + 2.2 * exp(-(double)t / 1000.0);
    }
    if (a.has_lr) {
      x.flags |= GW_HAS_LR;
      x.lr = a.lr;
    }
    for (size_t r = 0; r < runs.n && !cli_stopped(); r++)
      for (size_t b = 0; b < tags.n && !cli_stopped(); b++) {
        cli_bucket_take(&bucket);
        synth_z(&syn, r * tags.n + b, b, t, z);
        rc = gw_publisher_publish_sketch(pubs[r], tags.v[b], t, z, &x);
        if (rc < 0) {
          cli_fail(CMD, "run %s tag %s step %llu: %s", runs.v[r], tags.v[b],
                   (unsigned long long)t, gw_strerror(rc));
          goto done;
        }
        if (a.pub.report && cli_now() >= prog.next)
          cli_progress_tick(&prog, sum_counts(pubs, runs.n, 0), sum_counts(pubs, runs.n, 1));
      }
    if (t == INT64_MAX) break;
  }
  if (a.pub.report)
    cli_progress_end(&prog, sum_counts(pubs, runs.n, 0), sum_counts(pubs, runs.n, 1));
  status = CLI_OK;

done:
  for (size_t i = 0; pubs && i < runs.n; i++) gw_publisher_free(pubs[i]);
  if (ctx) zmq_ctx_term(ctx);
  free(pubs);
  free(z);
  if (have_syn) synth_free(&syn);
  names_free(&runs);
  names_free(&tags);
  cJSON_Delete(a.meta);
  free(meta);
  return status;
}
