/* test_error.c — the error table: codes, reasons, messages, errno passthrough. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>
#include <cmocka.h>

#include "gw_error.h"

static void codes_are_distinct_and_indexed(void **state) {
  (void)state;
  assert_int_equal(GW_EINVAL, -1000);
  assert_int_equal(gw_err_index(GW_EINVAL), GW_EINVAL_INDEX);
  assert_int_equal(gw_err_index(GW_EMETASIZE), GW_E_COUNT - 1);
  assert_int_equal(GW_EINCARNATION, GW_EDENIED - 1); /* appended, codes kept */
  assert_int_equal(GW_EBUDGET, GW_EINCARNATION - 1);
  assert_int_equal(GW_EMETA, GW_EBUDGET - 1);
  assert_int_equal(GW_EMETASIZE, GW_EMETA - 1);
  assert_int_equal(gw_err_index(0), -1);
  assert_int_equal(gw_err_index(-ENOENT), -1);
  assert_int_equal(gw_err_index(GW_E_BASE - GW_E_COUNT), -1);
}

static void reasons_match_spec_names(void **state) {
  (void)state;
  assert_string_equal(gw_err_reason(GW_ETRUNC), "truncated");
  assert_string_equal(gw_err_reason(GW_EORDER), "out_of_order");
  assert_string_equal(gw_err_reason(GW_EMISMATCH), "sketch_mismatch");
  assert_string_equal(gw_err_reason(GW_ENONFINITE), "non_finite");
  assert_string_equal(gw_err_reason(GW_EINCARNATION), "bad_incarnation");
  assert_string_equal(gw_err_reason(GW_EBUDGET), "memory_budget");
  assert_string_equal(gw_err_reason(GW_EMETA), "bad_meta");
  assert_string_equal(gw_err_reason(GW_EMETASIZE), "meta_too_large");
  assert_string_equal(gw_err_reason(0), "ok");
  assert_string_equal(gw_err_reason(-EIO), "errno");
}

static void messages_cover_errno(void **state) {
  (void)state;
  assert_string_equal(gw_strerror(0), "success");
  assert_string_equal(gw_strerror(-ENOENT), strerror(ENOENT));
  assert_string_equal(gw_strerror(GW_EMAGIC), "bad magic number");
  assert_string_equal(gw_strerror(12345), "unknown error");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(codes_are_distinct_and_indexed),
      cmocka_unit_test(reasons_match_spec_names),
      cmocka_unit_test(messages_cover_errno),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
