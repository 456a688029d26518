/* fuzz_http_query.c — libFuzzer target for what an HTTP request names
 * (daemon/http_query.c): the URL route, the /api/v1/series parameters, the
 * %XX decoding libmicrohttpd applies to both through our callback, and the
 * error text that quotes the client's bytes back.
 *
 * Input layout: fields separated by NUL bytes, in this order: URL path,
 * run, tag, metrics, from, to, max_points. A field the input does not reach
 * is absent (NULL, as when the query string lacks that parameter); a field
 * whose first byte is 0x01 is absent too (so later fields can be present
 * without it). Each present field is copied into a heap block of exactly its
 * size + 1 and decoded in place with gw_http_unescape, as libmicrohttpd
 * does before the handler sees it, so ASan flags any read past it.
 *
 * Checked promises (a broken one aborts):
 *   - decoding never grows a string, and a string holding "%00" is left as is;
 *   - the route's argument lies inside the URL and matches the route's form
 *     ("/api/v1/runs/" RUN, RUN "/streams", RUN "/summary", or the asset path);
 *   - gw_http_series_query returns 0 or GW_EINVAL; on 0 every field obeys
 *     the contract (names valid per PROTOCOL.md, known and distinct metric
 *     ids, from/to/max_points equal to an independent decimal parse,
 *     from <= to, max_points 0 or 2..10^6); on GW_EINVAL the message is a
 *     non-empty NUL-terminated run of printable ASCII.
 *
 * Built and run by tests/fuzz/run.sh http_query SECONDS (ctest fuzz_http_query).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gw_error.h"
#include "gw_proto.h"
#include "http_query.h"
#include "point.h"

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) abort();                                                      \
  } while (0)

#define N_FIELDS 7

/* Reference decimal parse, written differently from gw_http_parse_u64:
 * digits only, rejected when the value would pass 2^64 - 1 (checked by
 * comparing digit strings against "18446744073709551615"). */
static int ref_u64(const char *s, uint64_t *out) {
  static const char max[] = "18446744073709551615";
  size_t n = strlen(s), i = 0;
  uint64_t v = 0;
  if (n == 0) return -1;
  for (i = 0; i < n; i++)
    if (s[i] < '0' || s[i] > '9') return -1;
  while (n > 1 && *s == '0') { /* leading zeros do not count */
    s++;
    n--;
  }
  if (n > sizeof max - 1 || (n == sizeof max - 1 && strcmp(s, max) > 0)) return -1;
  for (i = 0; i < n; i++) v = v * 10 + (uint64_t)(s[i] - '0');
  *out = v;
  return 0;
}

static void check_printable(const char *msg, size_t cap) {
  size_t n = strnlen(msg, cap);
  CHECK(n > 0 && n < cap);
  for (size_t i = 0; i < n; i++)
    CHECK((unsigned char)msg[i] >= 0x20 && (unsigned char)msg[i] < 0x7f);
}

static void check_route(const char *url) {
  const char *arg = (const char *)1;
  size_t len = 12345;
  gw_route_t r = gw_http_route(url, &arg, &len);
  size_t ul = strlen(url);
  CHECK(r >= GW_ROUTE_NONE && r <= GW_ROUTE_SUMMARY);
  if (r == GW_ROUTE_RUN) { /* "/api/v1/runs/" RUN, RUN without '/' */
    static const char pre[] = "/api/v1/runs/";
    CHECK(arg == url + sizeof pre - 1);
    CHECK(len >= 1 && ul == sizeof pre - 1 + len);
    CHECK(memcmp(url, pre, sizeof pre - 1) == 0 && !memchr(arg, '/', len));
  } else if (r == GW_ROUTE_RUN_SUMMARY) {
    static const char pre[] = "/api/v1/runs/", suf[] = "/summary";
    CHECK(arg == url + sizeof pre - 1);
    CHECK(len >= 1 && ul == sizeof pre - 1 + len + sizeof suf - 1);
    CHECK(memcmp(url, pre, sizeof pre - 1) == 0);
    CHECK(memcmp(url + ul - (sizeof suf - 1), suf, sizeof suf - 1) == 0);
  } else if (r == GW_ROUTE_STREAMS) {
    static const char pre[] = "/api/v1/runs/", suf[] = "/streams";
    CHECK(arg == url + sizeof pre - 1);
    CHECK(len >= 1 && ul == sizeof pre - 1 + len + sizeof suf - 1);
    CHECK(memcmp(url, pre, sizeof pre - 1) == 0);
    CHECK(memcmp(url + ul - (sizeof suf - 1), suf, sizeof suf - 1) == 0);
  } else if (r == GW_ROUTE_ASSET) {
    CHECK(strncmp(url, "/api/", 5) != 0);
    CHECK(arg != NULL && strlen(arg) == len);
    CHECK(strcmp(url, "/") == 0 ? strcmp(arg, "/index.html") == 0 : arg == url);
  } else {
    CHECK(arg == NULL && len == 0);
    if (r == GW_ROUTE_NONE) CHECK(strncmp(url, "/api/", 5) == 0);
  }
}

static void check_series(char *const f[N_FIELDS]) {
  gw_series_query_t q;
  char msg[160];
  memset(msg, 0x7f, sizeof msg); /* not printable: an unwritten message fails */
  int rc = gw_http_series_query(&q, f[1], f[2], f[3], f[4], f[5], f[6], msg, sizeof msg);
  CHECK(rc == 0 || rc == GW_EINVAL);
  if (rc != 0) {
    check_printable(msg, sizeof msg);
    /* a shorter buffer still gets a terminated prefix */
    char small[8];
    gw_series_query_t q2;
    CHECK(gw_http_series_query(&q2, f[1], f[2], f[3], f[4], f[5], f[6], small,
                               sizeof small) == GW_EINVAL);
    CHECK(strnlen(small, sizeof small) < sizeof small);
    return;
  }
  CHECK(f[1] && f[2] && q.run == f[1] && q.tag == f[2]);
  CHECK(gw_proto_check_run(q.run, strlen(q.run)) == 0);
  CHECK(gw_proto_check_tag(q.tag, strlen(q.tag)) == 0);
  CHECK(q.n_metrics >= 1 && q.n_metrics <= GW_METRIC_COUNT);
  for (size_t i = 0; i < q.n_metrics; i++) {
    const char *name = gw_metric_name(q.ids[i]);
    CHECK(name != NULL);
    for (size_t j = 0; j < i; j++) CHECK(q.ids[j] != q.ids[i]);
    if (f[3]) CHECK(strstr(f[3], name) != NULL);
  }
  if (!f[3]) CHECK(q.n_metrics == GW_METRIC_COUNT);
  uint64_t v;
  CHECK(f[4] ? ref_u64(f[4], &v) == 0 && v == q.from : q.from == 0);
  CHECK(f[5] ? ref_u64(f[5], &v) == 0 && v == q.to : q.to == UINT64_MAX);
  CHECK(q.from <= q.to);
  CHECK(f[6] ? ref_u64(f[6], &v) == 0 && v == q.max_points : q.max_points == 0);
  CHECK(q.max_points == 0 || (q.max_points >= 2 && q.max_points <= GW_HTTP_MAX_POINTS_MAX));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *f[N_FIELDS] = {0};
  size_t pos = 0;
  for (int i = 0; i < N_FIELDS && pos <= size; i++) {
    const uint8_t *end = pos < size ? memchr(data + pos, 0, size - pos) : NULL;
    size_t len = end ? (size_t)(end - (data + pos)) : size - pos;
    if (pos == size && i > 0) break; /* input ended after a separator */
    if (!(len >= 1 && data[pos] == 0x01)) {
      f[i] = malloc(len + 1);
      CHECK(f[i] != NULL);
      memcpy(f[i], data + pos, len);
      f[i][len] = '\0';
      int has_nul_escape = strstr(f[i], "%00") != NULL;
      char *before = has_nul_escape ? strdup(f[i]) : NULL;
      size_t n = gw_http_unescape(f[i]);
      CHECK(n == strlen(f[i]) && n <= len);
      if (before) {
        CHECK(strcmp(before, f[i]) == 0);
        free(before);
      }
    }
    pos += len + 1;
  }
  if (f[0]) check_route(f[0]);
  check_series(f);

  /* the error text helper on the raw bytes, at every small capacity */
  char msg[80];
  for (size_t cap = 1; cap <= 12; cap += 11) {
    gw_http_errmsg(msg, cap, "what", (const char *)data, size);
    CHECK(strnlen(msg, cap) < cap);
  }
  gw_http_errmsg(msg, sizeof msg, "what", (const char *)data, size);
  check_printable(msg, sizeof msg);
  CHECK(strlen(msg) == 6 + (size < 64 ? size : 64) ||
        strlen(msg) == sizeof msg - 1);

  for (int i = 0; i < N_FIELDS; i++) free(f[i]);
  return 0;
}
