/* gradwatch.h — the public API of libgradwatch, the C client of gradwatch.
 *
 * A training process sketches each gradient g ∈ R^d into z = S g ∈ R^k
 * (gw_sketch.h, proto/SKETCH.md) and publishes z over ZeroMQ to gradwatchd
 * (proto/PROTOCOL.md). This header is the one a program includes: it brings
 * in the sketch API (gw_sketch.h), the wire format's types and limits
 * (gw_proto.h) and the error table (gw_error.h), and declares the publisher.
 *
 *   gw_publisher_config_t cfg;
 *   gw_publisher_config_init(&cfg);
 *   cfg.endpoint = "tcp://127.0.0.1:5557";
 *   cfg.run = "resnet-17";
 *   gw_publisher_t *pub;
 *   int rc = gw_publisher_new(&pub, &cfg);       // 0 or GW_E* / -errno
 *   ...
 *   gw_extras_t x = {.flags = GW_HAS_LOSS, .loss = loss};
 *   gw_publisher_publish(pub, "all", step, grad, d, &x);   // never blocks
 *   ...
 *   gw_publisher_free(pub);
 *
 * Publishing never blocks training: every send is non-blocking and a message
 * that cannot be handed to ZeroMQ right away — no subscriber wants it yet, or
 * the peer's queue holds SNDHWM messages — is dropped and counted
 * (gw_publisher_dropped). gw_publisher_connected says whether a daemon is
 * there, and gw_publisher_set_warn asks to be told (once) when none has come
 * 5 s after the first publish.
 *
 * Every publisher is one *incarnation* of its run (PROTOCOL.md §3.2): it
 * draws a random nonzero 64-bit id at creation and sends it with every
 * message (wire version 2), so the daemon starts the run's streams afresh
 * when a script is rerun or resumed from a checkpoint at an earlier step,
 * instead of rejecting those steps as out of order. A publisher is not thread-safe: use one per thread
 * (several may share one ZeroMQ context, see gw_publisher_config_t).
 *
 * Link with `pkg-config --cflags --libs gradwatch`.
 */
#ifndef GRADWATCH_H
#define GRADWATCH_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" { /* also around the included headers, which have no guards of their own */
#endif

#include "gw_error.h"
#include "gw_proto.h"
#include "gw_sketch.h"

/* Socket pattern of a publisher (PROTOCOL.md §1). */
typedef enum {
  GW_PUBLISHER_PUB = 0, /* PUB side (an XPUB socket): the daemon SUBscribes */
  GW_PUBLISHER_PUSH = 1 /* PUSH to a daemon that PULLs */
} gw_publisher_socket_t;

typedef struct gw_publisher_config_s {
  const char *endpoint;      /* required: ZeroMQ endpoint to connect to */
  const char *run;           /* required: run name, 1..128 of [A-Za-z0-9._:-] */
  gw_sketch_params_t sketch; /* k, kind, s, seed of every stream of the run */
  uint8_t dtype;             /* payload type: GW_DTYPE_F32, _F16 or _BF16 */
  int socket;                /* gw_publisher_socket_t */
  int sndhwm;                /* messages queued per peer before dropping, >= 1 */
  int linger_ms;             /* at free: wait this long for queued messages; -1 forever */
  /* CURVE (all three or none): Z85 text, 40 characters each. */
  const char *curve_server_key; /* the daemon's public key */
  const char *curve_public_key; /* this publisher's key pair */
  const char *curve_secret_key;
  /* A ZeroMQ context (void * from zmq_ctx_new) to create the socket in, kept
   * by the caller and terminated after every publisher using it is freed.
   * NULL: the publisher creates and terminates its own. */
  void *zmq_context;
  /* This publisher's incarnation id. 0 (the default): draw a random one with
   * getrandom(2), as every training process should; nonzero: use it (to
   * replay data as a chosen incarnation). */
  uint64_t incarnation;
  /* Wire version to write: 0 (default) or 2; 1 only for receivers that
   * predate version 2 (and tests): no incarnation is sent, so incarnation
   * must be 0 and gw_publisher_incarnation returns 0. */
  int wire_version;
} gw_publisher_config_t;

/* Optional scalars sent along with a sketch. Only the fields whose GW_HAS_*
 * bit is set in flags are sent; a present one must be finite. */
typedef struct gw_extras_s {
  uint32_t flags;   /* GW_HAS_GRAD_NORM | GW_HAS_LOSS | GW_HAS_LR */
  double grad_norm; /* ‖g‖ of the full, unprojected gradient */
  double loss;
  double lr;
} gw_extras_t;

typedef struct gw_publisher_s gw_publisher_t;

/* Returned by the publish functions when the message was dropped (and
 * counted) instead of sent. Positive: not an error. */
#define GW_PUBLISH_DROPPED 1

/* Defaults: no endpoint or run (both must be set), k = 256, sjlt, s = 4,
 * seed = 0, f32, PUB, sndhwm = 10000, linger_ms = 1000, no CURVE, own
 * context, a random incarnation, wire version 2. */
void gw_publisher_config_init(gw_publisher_config_t *cfg);

/* Create a publisher and connect it (connecting is asynchronous: it
 * succeeds whether or not the daemon is up). Returns 0, or:
 *   GW_EINVAL   NULL argument, unknown socket or negative/zero sndhwm,
 *               CURVE keys given partly or not 40 characters of valid Z85
 *   GW_ENAME    bad run name
 *   GW_EKIND, GW_EKLIMIT  bad sketch parameters (gw_sketch_check)
 *   GW_EDTYPE   unknown dtype
 *   GW_EVERSION wire_version other than 0, 1, 2
 *   GW_EINCARNATION  wire_version 1 with a nonzero incarnation
 *   GW_ENOMEM
 *   -ENOTSUP    CURVE asked for but libzmq was built without it
 *   -errno      from ZeroMQ (a malformed endpoint gives -EINVAL,
 *               an unknown transport -EPROTONOSUPPORT), or from getrandom
 * *out is NULL after a failure. */
int gw_publisher_new(gw_publisher_t **out, const gw_publisher_config_t *cfg);

/* Close the socket (waiting up to linger_ms for queued messages) and free
 * everything. Accepts NULL. */
void gw_publisher_free(gw_publisher_t *pub);

/* Send the sketch z[0..k-1] (already projected with this run's parameters)
 * as step `step` of stream (run, tag). extras may be NULL (no scalars).
 * Returns 0 if the message was handed to ZeroMQ, GW_PUBLISH_DROPPED if it
 * was dropped and counted, or, with nothing sent or counted:
 *   GW_EINVAL     NULL pub/tag/z, step >= 2^63, unknown bits in extras->flags
 *   GW_ENAME      bad tag (1..128 of [A-Za-z0-9._:/-])
 *   GW_ENONFINITE a present extra or an element of z is NaN/±Inf, or
 *                 overflows the payload dtype (f16 beyond ±65504)
 * Never blocks and never allocates. */
int gw_publisher_publish_sketch(gw_publisher_t *pub, const char *tag,
                                uint64_t step, const float *z,
                                const gw_extras_t *extras);

/* Sketch the gradient grad[0..d-1] (the same z as gw_sketch_f32 with this
 * run's parameters) and send it like gw_publisher_publish_sketch. grad_norm
 * is computed here (in float64) unless extras carries one. Also returns
 * GW_ENONFINITE if grad holds NaN/±Inf, GW_EINVAL if grad is NULL with
 * d > 0. Costs one pass over grad for the norm and one for the sketch. */
int gw_publisher_publish(gw_publisher_t *pub, const char *tag, uint64_t step,
                         const float *grad, size_t d,
                         const gw_extras_t *extras);

/* Wait until a peer would take this run's messages: with PUB, a subscriber
 * whose subscription matches tag (or, tag NULL, any tag of the run); with
 * PUSH, a connected peer. For start-up in scripts and tests: without it,
 * messages published before the daemon's subscription arrives (ZeroMQ's
 * "slow joiner") are dropped. Returns 0, -ETIMEDOUT after timeout_ms
 * (-1: no limit), GW_ENAME for a bad tag, or -errno from ZeroMQ. */
int gw_publisher_wait_subscribed(gw_publisher_t *pub, const char *tag,
                                 int timeout_ms);

/* 1 if a daemon takes this run's messages now, 0 if not (never blocks).
 * PUB: some subscriber's subscription matches a topic of this run (a daemon
 * subscribed only to other runs does not count). PUSH: a connection to the
 * endpoint has completed its ZeroMQ handshake (seen through a socket
 * monitor); PUSH cannot tell whether that peer is a gradwatch daemon. Like
 * every publish, this also reads pending subscriptions and may give the
 * no-daemon warning (gw_publisher_set_warn). 0 for NULL. */
int gw_publisher_connected(gw_publisher_t *pub);

/* Called at most once per publisher, with a one-line message (borrowed,
 * valid during the call) naming the run and the endpoint. */
typedef void (*gw_publisher_warn_fn)(void *arg, const char *msg);

/* Opt in to the no-daemon warning: fn(arg, msg) is called once, from the
 * first gw_publisher_publish*, or gw_publisher_connected call made 5 s or
 * more after the first publish, if no daemon has been connected (in the
 * sense of gw_publisher_connected) at any time since the publisher was
 * created. It runs on the caller's thread inside that call (for a publisher
 * driven by a gw_worker_t, the worker's thread); nothing runs on a timer, so
 * a program that stops publishing is not warned. The
 * environment variable GW_PUBLISHER_WARN_MS, read by gw_publisher_new,
 * replaces the 5 s (e.g. for tests). fn NULL turns the warning off.
 * Returns 0, or GW_EINVAL for a NULL pub. */
int gw_publisher_set_warn(gw_publisher_t *pub, gw_publisher_warn_fn fn, void *arg);

/* The incarnation id sent with every message (never 0), or 0 for a wire
 * version 1 publisher or NULL. */
uint64_t gw_publisher_incarnation(const gw_publisher_t *pub);

/* Messages handed to ZeroMQ / dropped since gw_publisher_new. */
uint64_t gw_publisher_sent(const gw_publisher_t *pub);
uint64_t gw_publisher_dropped(const gw_publisher_t *pub);

/* The last ZeroMQ error that made a send fail for a reason other than a full
 * queue or no subscriber (as -errno), or 0 if there was none. */
int gw_publisher_last_error(const gw_publisher_t *pub);

/* Run metadata (proto/PROTOCOL.md §11). doc is the metadata document, a
 * JSON object with any of "config" (object), "tags" (array of strings),
 * "labels" (object of strings) and "client" (object), copied. It is sent at
 * once when a daemon is there, again before the next publish after a daemon
 * subscribes to the run (a daemon started or restarted later still gets
 * it), and every 30 s while publishing; gw_publisher_meta_sent counts the
 * messages (they are not in sent/dropped). Only its length is checked here
 * (1..65536 bytes); the daemon validates the rest and rejects a bad
 * document as bad_meta or meta_too_large. NULL stops sending any. Returns
 * 0, GW_EMETA (empty), GW_EMETASIZE, GW_EVERSION (a wire version 1
 * publisher has no incarnation to send with it), GW_EINVAL or GW_ENOMEM. */
int gw_publisher_set_meta(gw_publisher_t *pub, const char *doc);
uint64_t gw_publisher_meta_sent(const gw_publisher_t *pub);

/* The run and sketch parameters the publisher was created with (borrowed). */
const char *gw_publisher_run(const gw_publisher_t *pub);
const gw_sketch_params_t *gw_publisher_sketch_params(const gw_publisher_t *pub);

/* ---- many streams per step: a model's layers (the native path) ---------- */

/* One layer of gw_publisher_publish_layers: its gradient buffer (at its
 * global offset in the model's gradient) and the tag it is published under. */
typedef struct gw_layer_s {
  const char *tag;      /* stream tag; NULL: counted into the sum, not published */
  gw_sketch_buf_t grad; /* grad.data NULL: no gradient (zeros; not published) */
} gw_layer_t;

/* Outcome of each stream of gw_publisher_publish_layers (status[]). */
typedef enum {
  GW_LAYER_SENT = 0,      /* handed to ZeroMQ */
  GW_LAYER_DROPPED = 1,   /* dropped and counted (gw_publisher_dropped) */
  GW_LAYER_SKIPPED = 2,   /* not published: no tag, or no gradient */
  GW_LAYER_NONFINITE = 3  /* not published: NaN/Inf gradient, or a sketch the
                             payload dtype cannot hold */
} gw_layer_status_t;

/* One step of a whole model in one call: sketch every layer's gradient
 * straight from its buffer (gw_sketch_bufs), derive the sum stream all_tag
 * (e.g. "all": the sketch of the concatenated gradient) from the layers'
 * sketches by linearity, z_all = Σ_i z_i, ‖g‖² = Σ_i ‖g_i‖², instead of
 * sketching twice, and send a message for all_tag (unless NULL) and for
 * every layer with a tag and a gradient. Each message carries its own
 * stream's grad_norm; loss and lr come from extras (whose GW_HAS_GRAD_NORM
 * bit is ignored). Rows: z[0..k-1] is the sum, z[(1+i)k ..] layer i, as
 * float64; norms[0] and norms[1+i] likewise (‖·‖, not squared); status[0]
 * and status[1+i] the gw_layer_status_t of each. z, norms and status may be
 * NULL (z is then allocated for the call). The sum counts every layer,
 * tagged or not; a layer with no gradient counts as zeros.
 * Returns 0 once every stream has been handled (dropped and non-finite
 * streams included: see status), or, with nothing sent or counted:
 *   GW_EINVAL   NULL pub, layers NULL with m > 0, a step >= 2^63, unknown
 *               bits in extras->flags, a bad buffer (gw_sketch_bufs)
 *   GW_ENAME    a bad tag or all_tag
 *   GW_ENONFINITE  a non-finite loss or lr in extras
 *   GW_ENOMEM */
int gw_publisher_publish_layers(gw_publisher_t *pub, uint64_t step, const char *all_tag,
                                const gw_layer_t *layers, size_t m,
                                const gw_extras_t *extras, double *z, double *norms,
                                uint8_t *status);

/* The argument checks of gw_publisher_publish_layers alone (sends and counts
 * nothing): 0, or the code that call would return for these arguments before
 * sketching — GW_EINVAL (also for an unknown dtype or an offset + n − 1
 * beyond 2^64 in a layer that has a gradient), GW_ENAME or GW_ENONFINITE. */
int gw_publisher_check_layers(const gw_publisher_t *pub, uint64_t step, const char *all_tag,
                              const gw_layer_t *layers, size_t m, const gw_extras_t *extras);

/* ---- the same, on a background thread (client/worker.c) ----------------- */

/* A worker publishes whole-model steps for one publisher on a thread of its
 * own, so the training loop pays only for a copy of the gradients:
 *
 *   gw_worker_t *w;
 *   gw_worker_new(&w, pub);                      // pub now belongs to w
 *   for each step:
 *     loss.backward() ...
 *     while (gw_worker_pending(w) == GW_WORKER_DEPTH || gw_worker_ready(w))
 *       gw_worker_wait(w, &prev, z, norms, status); // an earlier step's outcome
 *     gw_worker_submit(w, step, "all", layers, m, &x);  // copies, returns
 *   while (gw_worker_pending(w)) gw_worker_wait(w, ...);
 *   gw_worker_free(w); gw_publisher_free(pub);
 *
 * gw_worker_submit copies every layer's gradient (and the tags) into memory
 * the worker owns and returns; the thread then runs
 * gw_publisher_publish_layers on the copy, in the order of submission, so
 * the caller may overwrite or free the gradients as soon as submit returns.
 * Up to GW_WORKER_DEPTH steps are in flight (submitted, not yet collected):
 * a step that comes while the thread is still publishing the previous one
 * (its CPU was busy, say) is queued behind it instead of making the caller
 * wait. Each in-flight step has its own copy, allocated when first needed
 * and kept for reuse: a training loop whose steps are always published
 * before the next one comes uses one copy of its gradient, at worst
 * GW_WORKER_DEPTH copies. gw_worker_wait collects the oldest step's outcome.
 * While any step is in flight the publisher is the worker thread's: the
 * caller must not call any gw_publisher_* function on it until
 * gw_worker_pending is 0 again. A worker is driven from one thread. */
typedef struct gw_worker_s gw_worker_t;

/* Steps that can be in flight at once. */
#define GW_WORKER_DEPTH 2

/* Start the thread. GW_EINVAL (NULL pub or out), GW_ENOMEM, or -errno from
 * pthread_create; *out is NULL on failure. */
int gw_worker_new(gw_worker_t **out, gw_publisher_t *pub);
/* Let the thread publish every step in flight (their outcomes are
 * discarded), stop it and free the worker (not the publisher). Accepts
 * NULL. */
void gw_worker_free(gw_worker_t *w);
/* Check the arguments as gw_publisher_check_layers does, copy the gradients
 * and queue the step for the thread. Returns 0, that check's code,
 * GW_EINVAL when GW_WORKER_DEPTH steps are in flight (collect one with
 * gw_worker_wait first), or GW_ENOMEM (the copy could not grow); on failure
 * nothing is queued. */
int gw_worker_submit(gw_worker_t *w, uint64_t step, const char *all_tag,
                     const gw_layer_t *layers, size_t m, const gw_extras_t *extras);
/* How many submitted steps have not been collected by gw_worker_wait yet
 * (0 .. GW_WORKER_DEPTH; 0 for NULL). Never blocks. */
int gw_worker_pending(const gw_worker_t *w);
/* 1 when the oldest step in flight has been published, so gw_worker_wait
 * returns without blocking; 0 otherwise (nothing in flight, or NULL). */
int gw_worker_ready(const gw_worker_t *w);
/* Block until the oldest step in flight has been published and collect its
 * outcome: *step (may be NULL) its step, and — each may be NULL — z, norms
 * and status filled as gw_publisher_publish_layers fills them for that
 * step's m layers ((m + 1) × k doubles, m + 1 doubles, m + 1 bytes). Returns
 * what gw_publisher_publish_layers returned for it (0, or GW_ENOMEM /
 * GW_EINVAL from the sketch, with nothing sent), or GW_ENOTFOUND when no
 * step is in flight (outputs untouched). */
int gw_worker_wait(gw_worker_t *w, uint64_t *step, double *z, double *norms, uint8_t *status);
/* With no step in flight, the outcome gw_worker_wait last collected once
 * more: *step and z ((m + 1) × k doubles; each may be NULL), so a caller
 * that passed z = NULL to gw_worker_wait can fetch the sketches of the
 * latest step only when it needs them. 0, GW_EINVAL while steps are in
 * flight (a later submit may be reusing that memory) or for NULL w, or
 * GW_ENOTFOUND when there is none (before the first collection, or after a
 * submit that reused that memory failed). */
int gw_worker_last(const gw_worker_t *w, uint64_t *step, double *z);

#ifdef __cplusplus
}
#endif

#endif
