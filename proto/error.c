/* error.c — messages and reason names for the codes of gw_error.h. */
#include "gw_error.h"

#include <string.h>

static const char *const reasons[GW_E_COUNT] = {
#define XX(name, reason, msg) reason,
    GW_ERRNO_MAP(XX)
#undef XX
};

static const char *const messages[GW_E_COUNT] = {
#define XX(name, reason, msg) msg,
    GW_ERRNO_MAP(XX)
#undef XX
};

int gw_err_index(int code) {
  int i = GW_E_BASE - code;
  return (code <= GW_E_BASE && i < GW_E_COUNT) ? i : -1;
}

const char *gw_strerror(int code) {
  int i = gw_err_index(code);
  if (code == 0) return "success";
  if (i >= 0) return messages[i];
  if (code < 0 && code > GW_E_BASE) return strerror(-code);
  return "unknown error";
}

const char *gw_err_reason(int code) {
  int i = gw_err_index(code);
  if (code == 0) return "ok";
  if (i >= 0) return reasons[i];
  return "errno";
}
