/* cli.c — `gradwatch`, the command-line client: dispatch and shared helpers.
 *
 * main() picks the subcommand from argv[1] and hands it the rest of the
 * command line (cli.h lists the modules). This file also owns what several
 * subcommands share: error messages and exit codes, strict number parsing,
 * the publisher options of publish and replay (including CURVE keys read
 * from Z85 text or ZeroMQ certificate files), pacing (a token bucket),
 * progress reports, exact number formatting, and the SIGINT/SIGTERM flag —
 * the one piece of process-wide state, since a signal handler has no
 * argument to write through.
 */
#include "cli.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <zmq.h>

/* ---- messages ------------------------------------------------------------- */

static void vmsg(const char *cmd, const char *fmt, va_list ap) {
  fprintf(stderr, "gradwatch%s%s: ", cmd ? " " : "", cmd ? cmd : "");
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
}

int cli_usage(const char *cmd, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vmsg(cmd, fmt, ap);
  va_end(ap);
  fprintf(stderr, "Try 'gradwatch %s%s--help'.\n", cmd ? cmd : "", cmd ? " " : "");
  return CLI_USAGE;
}

int cli_fail(const char *cmd, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vmsg(cmd, fmt, ap);
  va_end(ap);
  return CLI_FAIL;
}

int cli_bad_option(const char *cmd, int c, char **argv) {
  const char *arg = optind > 0 ? argv[optind - 1] : "?";
  if (c == ':') return cli_usage(cmd, "option '%s' needs a value", arg);
  if (optopt != 0 && strncmp(arg, "--", 2) == 0 && strchr(arg, '=') != NULL)
    return cli_usage(cmd, "option '%.*s' takes no value", (int)(strchr(arg, '=') - arg), arg);
  if (optopt != 0 && optopt < CLI_O_BASE && strncmp(arg, "--", 2) != 0)
    return cli_usage(cmd, "unknown option '-%c'", optopt);
  return cli_usage(cmd, "unknown option '%s'", arg);
}

/* ---- parsing ---------------------------------------------------------------- */

int cli_parse_u64(const char *s, uint64_t *out) {
  char *end;
  unsigned long long v;
  if (s == NULL || *s < '0' || *s > '9') return -1; /* no sign, no space */
  errno = 0;
  v = strtoull(s, &end, 10);
  if (errno != 0 || *end != '\0') return -1;
  *out = (uint64_t)v;
  return 0;
}

int cli_parse_double(const char *s, double *out) {
  char *end;
  double v;
  if (s == NULL || *s == '\0' || *s == ' ') return -1;
  errno = 0;
  v = strtod(s, &end);
  if (errno != 0 || *end != '\0' || !isfinite(v)) return -1;
  *out = v;
  return 0;
}

int cli_opt_u64(const char *cmd, const char *opt, const char *s, uint64_t lo, uint64_t hi,
                uint64_t *out) {
  if (cli_parse_u64(s, out) != 0 || *out < lo || *out > hi)
    return cli_usage(cmd, "%s wants an integer from %llu to %llu, not '%s'", opt,
                     (unsigned long long)lo, (unsigned long long)hi, s);
  return 0;
}

int cli_opt_double(const char *cmd, const char *opt, const char *s, double lo, double hi,
                   double *out) {
  if (cli_parse_double(s, out) != 0 || *out < lo || *out > hi)
    return cli_usage(cmd, "%s wants a number from %g to %g, not '%s'", opt, lo, hi, s);
  return 0;
}

/* ---- time, signals, pacing ---------------------------------------------------- */

static volatile sig_atomic_t stop_flag;

static void on_signal(int sig) {
  (void)sig;
  stop_flag = 1;
}

void cli_catch_signals(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal; /* no SA_RESTART: sleeps and polls return early */
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  sa.sa_handler = SIG_IGN;
  sigaction(SIGPIPE, &sa, NULL);
}

int cli_stopped(void) { return stop_flag != 0; }

double cli_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void cli_sleep(double sec) {
  struct timespec ts;
  if (!(sec > 0)) return;
  ts.tv_sec = (time_t)sec;
  ts.tv_nsec = (long)((sec - (double)ts.tv_sec) * 1e9);
  nanosleep(&ts, NULL);
}

void cli_bucket_init(cli_bucket_t *b, double rate) {
  b->rate = rate;
  b->burst = rate / 100.0 > 1.0 ? rate / 100.0 : 1.0;
  b->tokens = 1.0;
  b->last = cli_now();
}

void cli_bucket_take(cli_bucket_t *b) {
  double now;
  if (!(b->rate > 0)) return;
  for (;;) {
    now = cli_now();
    b->tokens += (now - b->last) * b->rate;
    b->last = now;
    if (b->tokens > b->burst) b->tokens = b->burst;
    if (b->tokens >= 1.0 || cli_stopped()) break;
    cli_sleep((1.0 - b->tokens) / b->rate);
  }
  b->tokens -= 1.0;
}

/* ---- number formatting ------------------------------------------------------- */

void cli_fmt_exact(double v, char *buf, size_t cap) {
  for (int prec = 15; prec <= 17; prec++) {
    snprintf(buf, cap, "%.*g", prec, v);
    if (strtod(buf, NULL) == v) return;
  }
}

/* ---- publisher options ---------------------------------------------------------- */

const char cli_pub_help[] =
    "Sketch and transport:\n"
    "  --endpoint E          ZeroMQ endpoint of gradwatchd (default $GRADWATCH_ENDPOINT,\n"
    "                        else tcp://127.0.0.1:5557)\n"
    "  --socket pub|push     socket pattern (default pub; push for a daemon that PULLs)\n"
    "  --k K                 sketch length, 1..65536 (default 256)\n"
    "  --kind sjlt|gaussian  sketch kind written in the header (default sjlt)\n"
    "  --s S                 sjlt nonzeros per column, 1..8 (default 4; 0 for gaussian)\n"
    "  --seed SEED           sketch seed (default 0)\n"
    "  --dtype f32|f16|bf16  payload type on the wire (default f32)\n"
    "  --sndhwm N            messages queued per peer before dropping (default 10000)\n"
    "  --wait SECONDS        wait this long for a subscriber before sending\n"
    "  --linger MS           at exit, wait this long to flush queued messages\n"
    "                        (default 2000; -1 forever)\n"
    "  --curve-server-key KEY|FILE  CURVE: the daemon's public key (Z85, 40 chars,\n"
    "                        or a ZeroMQ certificate file)\n"
    "  --curve-public-key KEY|FILE, --curve-secret-key KEY|FILE\n"
    "                        CURVE: this client's key pair (a secret certificate file\n"
    "                        given as --curve-secret-key also supplies the public key)\n"
    "  --report              print sent/dropped/rate every second and a summary\n";

void cli_pub_opts_init(cli_pub_opts_t *o, double wait_s) {
  memset(o, 0, sizeof *o);
  gw_publisher_config_init(&o->cfg);
  o->cfg.endpoint = getenv(CLI_ENV_ENDPOINT);
  o->endpoint_from_env = o->cfg.endpoint != NULL && o->cfg.endpoint[0] != '\0';
  if (!o->endpoint_from_env) o->cfg.endpoint = "tcp://127.0.0.1:5557";
  o->cfg.linger_ms = 2000;
  o->wait_s = wait_s;
}

static int valid_z85_key(const char *k) {
  uint8_t raw[32];
  return strlen(k) == 40 && zmq_z85_decode(raw, k) != NULL;
}

/* Find `name = "KEY"` (zcert format) in text; copy KEY into out. */
static int cert_field(const char *text, const char *name, char out[41]) {
  const char *p = text;
  size_t nl = strlen(name);
  while ((p = strstr(p, name)) != NULL) {
    const char *q = p + nl;
    p = q;
    while (*q == ' ' || *q == '\t') q++;
    if (*q++ != '=') continue;
    while (*q == ' ' || *q == '\t') q++;
    if (*q++ != '"') continue;
    const char *e = strchr(q, '"');
    if (e == NULL || e - q != 40) continue;
    memcpy(out, q, 40);
    out[40] = '\0';
    return 0;
  }
  return -1;
}

/* A CURVE key from arg: 40 characters of Z85, or a file holding either that
 * text or a ZeroMQ certificate ("public-key = \"...\"", "secret-key = ..."),
 * from which field `want` is taken. also_public: if non-NULL and the file is a
 * certificate with a public key too, copy that there. */
static int read_key(const char *cmd, const char *opt, const char *arg, const char *want,
                    char out[41], char also_public[41]) {
  char text[8192];
  size_t n;
  FILE *f;

  if (strlen(arg) == 40 && valid_z85_key(arg)) {
    memcpy(out, arg, 41);
    return 0;
  }
  if ((f = fopen(arg, "r")) == NULL)
    return cli_usage(cmd, "%s: '%s' is neither a 40-character Z85 key nor a readable file (%s)",
                     opt, arg, strerror(errno));
  n = fread(text, 1, sizeof text - 1, f);
  fclose(f);
  text[n] = '\0';
  if (cert_field(text, want, out) == 0 && valid_z85_key(out)) {
    if (also_public && cert_field(text, "public-key", also_public) != 0) also_public[0] = '\0';
    return 0;
  }
  while (n > 0 && (text[n - 1] == '\n' || text[n - 1] == '\r' || text[n - 1] == ' '))
    text[--n] = '\0';
  if (n == 40 && valid_z85_key(text)) {
    memcpy(out, text, 41);
    return 0;
  }
  return cli_usage(cmd, "%s: file '%s' holds no Z85 key (no %s = \"...\" line either)", opt,
                   arg, want);
}

int cli_pub_opts_parse(cli_pub_opts_t *o, const char *cmd, int c, const char *arg) {
  uint64_t u;
  double d;
  int rc = 0;

  switch (c) {
  case CLI_O_ENDPOINT:
    if (strstr(arg, "://") == NULL)
      return cli_usage(cmd, "--endpoint wants a ZeroMQ endpoint like tcp://127.0.0.1:5557, not '%s'",
                       arg);
    o->cfg.endpoint = arg;
    o->endpoint_from_env = 0;
    break;
  case CLI_O_SOCKET:
    if (strcmp(arg, "pub") == 0)
      o->cfg.socket = GW_PUBLISHER_PUB;
    else if (strcmp(arg, "push") == 0)
      o->cfg.socket = GW_PUBLISHER_PUSH;
    else
      return cli_usage(cmd, "--socket is pub or push, not '%s'", arg);
    break;
  case CLI_O_K:
    if ((rc = cli_opt_u64(cmd, "--k", arg, 1, GW_PROTO_K_MAX, &u)) == 0) o->cfg.sketch.k = (uint32_t)u;
    break;
  case CLI_O_KIND:
    if (strcmp(arg, "sjlt") == 0)
      o->cfg.sketch.kind = GW_SKETCH_SJLT;
    else if (strcmp(arg, "gaussian") == 0)
      o->cfg.sketch.kind = GW_SKETCH_GAUSSIAN;
    else
      return cli_usage(cmd, "--kind is sjlt or gaussian, not '%s'", arg);
    break;
  case CLI_O_S:
    if ((rc = cli_opt_u64(cmd, "--s", arg, 0, GW_PROTO_S_MAX, &u)) == 0) {
      o->cfg.sketch.s = (uint8_t)u;
      o->s_given = 1;
    }
    break;
  case CLI_O_SEED:
    if (cli_parse_u64(arg, &u) != 0)
      return cli_usage(cmd, "--seed wants an integer from 0 to 2^64-1, not '%s'", arg);
    o->cfg.sketch.seed = u;
    break;
  case CLI_O_DTYPE:
    if (strcmp(arg, "f32") == 0)
      o->cfg.dtype = GW_DTYPE_F32;
    else if (strcmp(arg, "f16") == 0)
      o->cfg.dtype = GW_DTYPE_F16;
    else if (strcmp(arg, "bf16") == 0)
      o->cfg.dtype = GW_DTYPE_BF16;
    else
      return cli_usage(cmd, "--dtype is f32, f16 or bf16, not '%s'", arg);
    break;
  case CLI_O_SNDHWM:
    if ((rc = cli_opt_u64(cmd, "--sndhwm", arg, 1, INT_MAX, &u)) == 0) o->cfg.sndhwm = (int)u;
    break;
  case CLI_O_LINGER:
    if (strcmp(arg, "-1") == 0)
      o->cfg.linger_ms = -1;
    else if ((rc = cli_opt_u64(cmd, "--linger", arg, 0, INT_MAX, &u)) == 0)
      o->cfg.linger_ms = (int)u;
    break;
  case CLI_O_WAIT:
    if ((rc = cli_opt_double(cmd, "--wait", arg, 0, 86400, &d)) == 0) o->wait_s = d;
    break;
  case CLI_O_CURVE_SERVER:
    rc = read_key(cmd, "--curve-server-key", arg, "public-key", o->server_key, NULL);
    break;
  case CLI_O_CURVE_PUBLIC:
    rc = read_key(cmd, "--curve-public-key", arg, "public-key", o->public_key, NULL);
    break;
  case CLI_O_CURVE_SECRET: {
    char pub[41] = "";
    rc = read_key(cmd, "--curve-secret-key", arg, "secret-key", o->secret_key, pub);
    if (rc == 0 && o->public_key[0] == '\0' && valid_z85_key(pub)) memcpy(o->public_key, pub, 41);
    break;
  }
  case CLI_O_REPORT:
    o->report = 1;
    break;
  default:
    return cli_usage(cmd, "internal: unhandled option %d", c);
  }
  return rc;
}

int cli_pub_opts_finish(cli_pub_opts_t *o, const char *cmd) {
  gw_sketch_params_t *sk = &o->cfg.sketch;
  int ncurve = (o->server_key[0] != 0) + (o->public_key[0] != 0) + (o->secret_key[0] != 0);

  if (o->endpoint_from_env && strstr(o->cfg.endpoint, "://") == NULL)
    return cli_usage(cmd, "%s wants a ZeroMQ endpoint like tcp://127.0.0.1:5557, not '%s'",
                     CLI_ENV_ENDPOINT, o->cfg.endpoint);
  if (!o->s_given) sk->s = sk->kind == GW_SKETCH_GAUSSIAN ? 0 : (sk->k < 4 ? (uint8_t)sk->k : 4);
  if (gw_sketch_check(sk) != 0) {
    if (sk->kind == GW_SKETCH_GAUSSIAN)
      return cli_usage(cmd, "--kind gaussian needs --s 0 (got %u)", sk->s);
    return cli_usage(cmd, "--kind sjlt needs --s from 1 to min(8, k) (got s %u, k %u)", sk->s,
                     sk->k);
  }
  if (ncurve != 0 && ncurve != 3)
    return cli_usage(cmd, "CURVE needs --curve-server-key and this client's key pair "
                          "(--curve-public-key and --curve-secret-key)");
  if (ncurve == 3) {
    o->cfg.curve_server_key = o->server_key;
    o->cfg.curve_public_key = o->public_key;
    o->cfg.curve_secret_key = o->secret_key;
  }
  return 0;
}

void cli_wait_subscribers(const cli_pub_opts_t *o, const char *cmd, gw_publisher_t **pubs,
                          size_t n) {
  double deadline = cli_now() + o->wait_s;
  size_t missing = 0;

  if (!(o->wait_s > 0)) return;
  for (size_t i = 0; i < n && !cli_stopped(); i++) {
    int rc;
    do { /* slices, so Ctrl-C is noticed */
      double left = deadline - cli_now();
      rc = gw_publisher_wait_subscribed(pubs[i], NULL, left > 0.1 ? 100 : left > 0 ? (int)(left * 1000) : 0);
    } while (rc == -ETIMEDOUT && cli_now() < deadline && !cli_stopped());
    if (rc != 0) missing++;
  }
  if (missing && !cli_stopped())
    fprintf(stderr,
            "gradwatch %s: no %s at %s after %g s for %zu of %zu run(s); publishing anyway "
            "(messages are dropped until one connects)\n",
            cmd, o->cfg.socket == GW_PUBLISHER_PUSH ? "peer" : "subscriber", o->cfg.endpoint,
            o->wait_s, missing, n);
}

void cli_progress_start(cli_progress_t *p) {
  p->t0 = p->last_t = cli_now();
  p->next = p->t0 + 1.0;
  p->last_count = 0;
}

/* rate = messages published (sent or dropped) per second since the last line. */
void cli_progress_tick(cli_progress_t *p, uint64_t sent, uint64_t dropped) {
  double now = cli_now();
  if (now < p->next) return;
  printf("%8.1fs  sent %llu  dropped %llu  rate %.1f msg/s\n", now - p->t0,
         (unsigned long long)sent, (unsigned long long)dropped,
         (double)(sent + dropped - p->last_count) / (now - p->last_t));
  fflush(stdout);
  p->last_t = now;
  p->last_count = sent + dropped;
  while (p->next <= now) p->next += 1.0;
}

void cli_progress_end(cli_progress_t *p, uint64_t sent, uint64_t dropped) {
  double dt = cli_now() - p->t0;
  printf("total: sent %llu  dropped %llu  in %.2f s  (%.1f msg/s)\n", (unsigned long long)sent,
         (unsigned long long)dropped, dt, dt > 0 ? (double)(sent + dropped) / dt : 0.0);
  fflush(stdout);
}

/* ---- main ---------------------------------------------------------------------- */

static const char usage_text[] =
    "Usage: gradwatch COMMAND [OPTIONS] [ARGS]\n"
    "\n"
    "The command-line client of gradwatchd (docs/cli.md).\n"
    "\n"
    "Commands:\n"
    "  publish --synthetic      publish synthetic sketches of known rank and predictability\n"
    "  replay FILE              publish the rows of a .npy (or raw float32) file as a stream\n"
    "  query RUN TAG METRIC...  print a stream's metrics as a table, CSV or JSON\n"
    "  tail                     follow live points and alerts\n"
    "  export RUN               write every stream of a run as CSV or JSON lines\n"
    "  report RUN...            the regime summary of runs (text, CSV, JSON, Markdown)\n"
    "  proxy                    forward publishers to sharded daemons (docs/SCALE.md)\n"
    "\n"
    "'gradwatch COMMAND --help' describes a command's options; --version prints the version.\n"
    "Exit status: 0 success, 1 run-time failure, 2 usage error.\n";

typedef struct cmd_s {
  const char *name;
  int (*run)(int argc, char **argv);
} cmd_t;


static const cmd_t commands[] = {
    {"publish", cli_publish}, {"replay", cli_replay}, {"query", cli_query},
    {"tail", cli_tail},       {"export", cli_export}, {"proxy", cli_proxy},
    {"report", cli_report},
};

static const cmd_t *find_cmd(const char *name) {
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    if (strcmp(commands[i].name, name) == 0) return &commands[i];
  return NULL;
}

int main(int argc, char **argv) {
  const cmd_t *c;
  if (argc < 2) {
    fputs(usage_text, stderr);
    return CLI_USAGE;
  }
  if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
    fputs(usage_text, stdout);
    return CLI_OK;
  }
  if (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "-V") == 0) {
    printf("gradwatch %s\n", GW_VERSION);
    return CLI_OK;
  }
  if (strcmp(argv[1], "help") == 0) {
    char help[] = "--help";
    if (argc < 3) {
      fputs(usage_text, stdout);
      return CLI_OK;
    }
    if ((c = find_cmd(argv[2])) == NULL) return cli_usage(NULL, "unknown command '%s'", argv[2]);
    char *av[] = {argv[2], help, NULL};
    return c->run(2, av);
  }
  if ((c = find_cmd(argv[1])) == NULL) {
    if (argv[1][0] == '-') return cli_usage(NULL, "unknown option '%s'", argv[1]);
    return cli_usage(NULL, "unknown command '%s'", argv[1]);
  }
  return c->run(argc - 1, argv + 1);
}
