/* test_runmeta.c — the run-metadata document's rules (daemon/runmeta.c) and
 * the gradwatch_run_info family (daemon/runinfo.c).
 *
 * References: proto/vectors/meta_frames.json (gen_meta.py, written from
 * PROTOCOL.md §11 with Python's struct and json): every golden frame must
 * pass frame codec + validator and normalise to its document; every
 * malformed frame must be refused with its reason, by whichever of the two
 * checks it. The run_info text is compared with literal expected lines.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <cjson/cJSON.h>

#include "gw_error.h"
#include "gw_meta.h"
#include "metrics.h"
#include "runinfo.h"
#include "runmeta.h"

static char *slurp(const char *rel) {
  const char *root = getenv("GW_SOURCE_DIR");
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", root && *root ? root : ".", rel);
  FILE *f = fopen(path, "rb");
  if (!f) fail_msg("cannot open %s", path);
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *b = malloc((size_t)n + 1);
  assert_non_null(b);
  assert_int_equal(fread(b, 1, (size_t)n, f), (size_t)n);
  b[n] = '\0';
  fclose(f);
  return b;
}

static unsigned char *unhex(const char *hex, size_t *len) {
  size_t n = strlen(hex) / 2;
  unsigned char *b = malloc(n ? n : 1);
  assert_non_null(b);
  for (size_t i = 0; i < n; i++) {
    unsigned v;
    assert_int_equal(sscanf(hex + 2 * i, "%2x", &v), 1);
    b[i] = (unsigned char)v;
  }
  *len = n;
  return b;
}

static const char *jstr(const cJSON *o, const char *k) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
  assert_true(cJSON_IsString(v));
  return v->valuestring;
}

/* The receiver's whole check: frame, then document. */
static int receive(const unsigned char *t, size_t tl, const unsigned char *b, size_t bl,
                   cJSON **out) {
  gw_meta_msg_t m;
  int rc = gw_meta_decode(t, tl, b, bl, &m);
  *out = NULL;
  return rc ? rc : gw_runmeta_parse(m.doc, m.doc_len, out);
}

static void vectors(void **state) {
  (void)state;
  char *text = slurp("proto/vectors/meta_frames.json");
  cJSON *root = cJSON_Parse(text), *e;
  free(text);
  assert_non_null(root);
  cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(root, "golden")) {
    size_t tl, bl;
    unsigned char *t = unhex(jstr(e, "topic_hex"), &tl), *b = unhex(jstr(e, "body"), &bl);
    cJSON *meta;
    int rc = receive(t, tl, b, bl, &meta);
    if (rc) fail_msg("%s: %s", jstr(e, "name"), gw_err_reason(rc));
    assert_true(cJSON_Compare(meta, cJSON_GetObjectItemCaseSensitive(e, "doc"), 1));
    cJSON_Delete(meta);
    free(t);
    free(b);
  }
  int seen_bad = 0, seen_large = 0;
  cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(root, "malformed")) {
    size_t tl, bl;
    unsigned char *t = unhex(jstr(e, "topic_hex"), &tl), *b = unhex(jstr(e, "body"), &bl);
    cJSON *meta;
    int rc = receive(t, tl, b, bl, &meta);
    assert_null(meta);
    if (strcmp(gw_err_reason(rc), jstr(e, "reason")) != 0)
      fail_msg("%s: got %s, want %s", jstr(e, "name"), gw_err_reason(rc), jstr(e, "reason"));
    seen_bad += rc == GW_EMETA;
    seen_large += rc == GW_EMETASIZE;
    free(t);
    free(b);
  }
  assert_true(seen_bad >= 15);
  assert_true(seen_large >= 2);
  cJSON_Delete(root);
}

static int parse_str(const char *doc, cJSON **out) { return gw_runmeta_parse(doc, strlen(doc), out); }

static void limits_and_normalising(void **state) {
  (void)state;
  cJSON *m;
  /* members come back in a fixed order, nothing else kept */
  assert_int_equal(parse_str(" {\"client\":{},\"labels\":{\"a\":\"\"},\"tags\":[],\"config\":{}} \n", &m), 0);
  char *t = cJSON_PrintUnformatted(m);
  assert_string_equal(t, "{\"config\":{},\"tags\":[],\"labels\":{\"a\":\"\"},\"client\":{}}");
  free(t);
  cJSON_Delete(m);
  /* exactly at the limits: 64 tags of 64 bytes, 64 labels, 256-byte value, depth 16 */
  char *doc = malloc(GW_META_DOC_MAX + 16), *p = doc;
  p += sprintf(p, "{\"tags\":[");
  for (int i = 0; i < GW_META_TAGS_MAX; i++) p += sprintf(p, "%s\"%063d\"", i ? "," : "", i);
  p += sprintf(p, "],\"labels\":{");
  for (int i = 0; i < GW_META_LABELS_MAX; i++) p += sprintf(p, "%s\"k%02d\":\"v\"", i ? "," : "", i);
  p += sprintf(p, ",\"long\":\"%0256d\"}", 0);
  p += sprintf(p, ",\"config\":");
  for (int i = 0; i < GW_META_DEPTH_MAX - 1; i++) p += sprintf(p, "{\"a\":");
  p += sprintf(p, "{}");
  for (int i = 0; i < GW_META_DEPTH_MAX - 1; i++) p += sprintf(p, "}");
  sprintf(p, "}");
  /* 65 labels: "long" is one too many */
  assert_int_equal(parse_str(doc, &m), GW_EMETASIZE);
  char *k63 = strstr(doc, ",\"k63\":\"v\"");
  assert_non_null(k63);
  memmove(k63, k63 + 10, strlen(k63 + 10) + 1);
  assert_int_equal(parse_str(doc, &m), 0);
  assert_true(gw_runmeta_has_tag(m, "000000000000000000000000000000000000000000000000000000000000063"));
  assert_false(gw_runmeta_has_tag(m, "x"));
  assert_string_equal(gw_runmeta_label(m, "k07"), "v");
  assert_null(gw_runmeta_label(m, "k63"));
  cJSON_Delete(m);
  /* one level deeper is refused */
  assert_int_equal(parse_str("{\"client\":{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":"
                             "{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":[]}}}}}}}}}}}}}}}}}",
                             &m), GW_EMETA);
  /* a document over 64 KiB */
  memset(doc, ' ', GW_META_DOC_MAX + 1);
  doc[0] = '{';
  doc[GW_META_DOC_MAX] = '}';
  assert_int_equal(gw_runmeta_parse(doc, GW_META_DOC_MAX + 1, &m), GW_EMETASIZE);
  assert_int_equal(gw_runmeta_parse(doc, GW_META_DOC_MAX, &m), GW_EMETA); /* no closing brace */
  doc[GW_META_DOC_MAX - 1] = '}';
  assert_int_equal(gw_runmeta_parse(doc, GW_META_DOC_MAX, &m), 0);
  cJSON_Delete(m);
  free(doc);
  /* UTF-8: overlong, surrogate, past U+10FFFF, truncated */
  assert_false(gw_runmeta_value_ok("\xc0\xaf", 2));
  assert_false(gw_runmeta_value_ok("\xed\xa0\x80", 3));
  assert_false(gw_runmeta_value_ok("\xf4\x90\x80\x80", 4));
  assert_false(gw_runmeta_value_ok("\xe2\x82", 2));
  assert_true(gw_runmeta_value_ok("\xe2\x82\xac", 3));
  assert_true(gw_runmeta_value_ok("", 0));
}

static void export_values(void **state) {
  (void)state;
  cJSON *m;
  char buf[8];
  assert_int_equal(parse_str("{\"config\":{\"lr\":0.001,\"opt\":\"adamw-long-name\",\"amp\":true,"
                             "\"nested\":{}},\"labels\":{\"team\":\"\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\"}}",
                             &m), 0);
  assert_int_equal(gw_runmeta_export_value(m, "config.lr", buf, sizeof buf), 1);
  assert_string_equal(buf, "0.001");
  assert_int_equal(gw_runmeta_export_value(m, "config.opt", buf, sizeof buf), 1);
  assert_string_equal(buf, "adamw-l"); /* cut to 7 bytes */
  assert_int_equal(gw_runmeta_export_value(m, "config.amp", buf, sizeof buf), 1);
  assert_string_equal(buf, "true");
  assert_int_equal(gw_runmeta_export_value(m, "config.nested", buf, sizeof buf), 0);
  assert_string_equal(buf, "");
  assert_int_equal(gw_runmeta_export_value(m, "team", buf, sizeof buf), 1);
  assert_string_equal(buf, "\xc3\xa9\xc3\xa9\xc3\xa9"); /* cut at a character boundary */
  assert_int_equal(gw_runmeta_export_value(m, "absent", buf, sizeof buf), 0);
  assert_int_equal(gw_runmeta_export_value(NULL, "team", buf, sizeof buf), 0);
  cJSON_Delete(m);
}

static int extra(void *arg, gw_metrics_writer_t *w) { return gw_runinfo_render(arg, w); }

static void run_info_family(void **state) {
  (void)state;
  gw_runinfo_t *ri;
  gw_metrics_t *mt;
  char err[256], *text;
  size_t len;
  assert_int_equal(gw_runinfo_new(&ri, "team,config.lr,9x,run,__a", err, sizeof err), 0);
  assert_int_equal(gw_metrics_new(&mt, NULL), 0);
  assert_int_equal(gw_runinfo_observe(ri, "r2", "{\"labels\":{\"team\":\"a\\\"b\"}}"), 0);
  assert_int_equal(gw_runinfo_observe(ri, "r1", "{\"config\":{\"lr\":0.5},\"labels\":{\"team\":\"x\"}}"), 0);
  assert_int_equal(gw_runinfo_observe(ri, "r1", "{\"config\":{\"lr\":0.25},\"labels\":{\"run\":\"y\"}}"), 0);
  assert_int_equal(gw_runinfo_observe(ri, "r3", "not json"), GW_EMETA);
  assert_int_equal(gw_runinfo_count(ri), 2);
  assert_int_equal(gw_metrics_render(mt, NULL, extra, ri, &text, &len), 0);
  const char *want =
      "# HELP gradwatch_run_info Run metadata (--metrics-labels keys) as labels; always 1\n"
      "# TYPE gradwatch_run_info gauge\n"
      "gradwatch_run_info{run=\"r1\",team=\"\",config_lr=\"0.25\",_9x=\"\",label_run=\"y\",label___a=\"\"} 1\n"
      "gradwatch_run_info{run=\"r2\",team=\"a\\\"b\",config_lr=\"\",_9x=\"\",label_run=\"\",label___a=\"\"} 1\n";
  assert_non_null(strstr(text, want));
  free(text);
  gw_metrics_free(mt);
  gw_runinfo_free(ri);
  /* configuration errors */
  assert_int_equal(gw_runinfo_new(&ri, "", err, sizeof err), GW_ECONFIG);
  assert_int_equal(gw_runinfo_new(&ri, "a,,b", err, sizeof err), GW_ECONFIG);
  assert_int_equal(gw_runinfo_new(&ri, "a b", err, sizeof err), GW_ECONFIG);
  assert_int_equal(gw_runinfo_new(&ri, "a.b,a-b", err, sizeof err), GW_ECONFIG);
  assert_non_null(strstr(err, "one label name"));
  assert_int_equal(gw_runinfo_new(&ri, "a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q", err, sizeof err), GW_ECONFIG);
  assert_null(ri);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(vectors),
      cmocka_unit_test(limits_and_normalising),
      cmocka_unit_test(export_values),
      cmocka_unit_test(run_info_family),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
