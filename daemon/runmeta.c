/* runmeta.c — validation of run-metadata documents and the helpers that
 * read them (runmeta.h). The JSON is parsed by cJSON, never by hand; this
 * file only walks the tree it builds and applies PROTOCOL.md §11.3.
 */
#include "runmeta.h"

#include <string.h>

#include "gw_error.h"
#include "gw_meta.h"
#include "numfmt.h"

static int is_alnum(unsigned char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

int gw_runmeta_tag_ok(const char *s, size_t len) {
  if (!s || len == 0 || len > GW_META_NAME_MAX) return 0;
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)s[i];
    if (!is_alnum(c) && !strchr("._:/+=@-", c)) return 0;
  }
  return 1;
}

int gw_runmeta_key_ok(const char *s, size_t len) {
  if (!s || len == 0 || len > GW_META_NAME_MAX) return 0;
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)s[i];
    if (!is_alnum(c) && c != '.' && c != '_' && c != '-') return 0;
  }
  return 1;
}

/* Length of the UTF-8 sequence at s (n bytes left), 0 if it is not one
 * (overlong forms, surrogates and code points past U+10FFFF included). */
static size_t utf8_len(const unsigned char *s, size_t n) {
  unsigned char c = s[0];
  size_t k;
  uint32_t cp;
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) k = 2, cp = c & 0x1F;
  else if (c >= 0xE0 && c <= 0xEF) k = 3, cp = c & 0x0F;
  else if (c >= 0xF0 && c <= 0xF4) k = 4, cp = c & 0x07;
  else return 0;
  if (n < k) return 0;
  for (size_t i = 1; i < k; i++) {
    if ((s[i] & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (s[i] & 0x3F);
  }
  if ((k == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) || (k == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
    return 0;
  return k;
}

int gw_runmeta_value_ok(const char *s, size_t len) {
  const unsigned char *p = (const unsigned char *)s;
  if (!s || len > GW_META_VALUE_MAX) return 0;
  for (size_t i = 0; i < len;) {
    if (p[i] < 0x20 || p[i] == 0x7F) return 0;
    size_t k = utf8_len(p + i, len - i);
    if (!k) return 0;
    i += k;
  }
  return 1;
}

/* Depth of nested arrays/objects below item (a scalar is 0). Stops counting
 * past limit so a pathological tree costs no more than needed. */
static int depth(const cJSON *item, int limit) {
  int best = 0;
  if (!cJSON_IsArray(item) && !cJSON_IsObject(item)) return 0;
  if (limit <= 0) return 1;
  for (const cJSON *c = item->child; c; c = c->next) {
    int d = depth(c, limit - 1);
    if (d > best) best = d;
    if (best >= limit) break;
  }
  return best + 1;
}

/* Every string in the tree is valid UTF-8 (cJSON passes bytes through). */
static int strings_ok(const cJSON *item) {
  if (cJSON_IsString(item)) {
    const unsigned char *p = (const unsigned char *)item->valuestring;
    size_t n = strlen(item->valuestring);
    for (size_t i = 0; i < n;) {
      size_t k = utf8_len(p + i, n - i);
      if (!k) return 0;
      i += k;
    }
  }
  if (item->string && !cJSON_IsInvalid(item)) {
    const unsigned char *p = (const unsigned char *)item->string;
    size_t n = strlen(item->string);
    for (size_t i = 0; i < n;) {
      size_t k = utf8_len(p + i, n - i);
      if (!k) return 0;
      i += k;
    }
  }
  for (const cJSON *c = item->child; c; c = c->next)
    if (!strings_ok(c)) return 0;
  return 1;
}

static int check_tags(const cJSON *tags) {
  int n = 0;
  if (!cJSON_IsArray(tags)) return GW_EMETA;
  for (const cJSON *t = tags->child; t; t = t->next) {
    if (++n > GW_META_TAGS_MAX) return GW_EMETASIZE;
    if (!cJSON_IsString(t) || !gw_runmeta_tag_ok(t->valuestring, strlen(t->valuestring)))
      return GW_EMETA;
  }
  return 0;
}

static int check_labels(const cJSON *labels) {
  int n = 0;
  if (!cJSON_IsObject(labels)) return GW_EMETA;
  for (const cJSON *l = labels->child; l; l = l->next) {
    if (++n > GW_META_LABELS_MAX) return GW_EMETASIZE;
    if (!cJSON_IsString(l) || !gw_runmeta_key_ok(l->string, strlen(l->string)) ||
        !gw_runmeta_value_ok(l->valuestring, strlen(l->valuestring)))
      return GW_EMETA;
    for (const cJSON *o = labels->child; o != l; o = o->next)
      if (strcmp(o->string, l->string) == 0) return GW_EMETA; /* repeated key */
  }
  return 0;
}

static const char *const members[] = {"config", "tags", "labels", "client"};
#define N_MEMBERS (sizeof members / sizeof members[0])

int gw_runmeta_parse(const char *doc, size_t len, cJSON **out) {
  const cJSON *found[N_MEMBERS] = {0};
  const char *end = NULL;
  cJSON *root = NULL, *norm = NULL;
  int rc = GW_EMETA;
  *out = NULL;
  if (!doc || len == 0) return GW_EMETA;
  if (len > GW_META_DOC_MAX) return GW_EMETASIZE;
  if (memchr(doc, '\0', len)) return GW_EMETA;
  root = cJSON_ParseWithLengthOpts(doc, len, &end, 0);
  if (!root) return GW_EMETA;
  while (end && end < doc + len && strchr(" \t\r\n", *end)) end++;
  if (end != doc + len || !cJSON_IsObject(root) || !strings_ok(root)) goto done;
  for (const cJSON *m = root->child; m; m = m->next) {
    size_t i = 0;
    while (i < N_MEMBERS && strcmp(m->string, members[i]) != 0) i++;
    if (i == N_MEMBERS || found[i]) goto done; /* unknown or repeated */
    found[i] = m;
  }
  for (size_t i = 0; i < N_MEMBERS; i += 3) /* config and client: objects, bounded depth */
    if (found[i] && (!cJSON_IsObject(found[i]) || depth(found[i], GW_META_DEPTH_MAX) > GW_META_DEPTH_MAX))
      goto done;
  if (found[1] && (rc = check_tags(found[1])) != 0) goto done;
  if (found[2] && (rc = check_labels(found[2])) != 0) goto done;
  rc = GW_ENOMEM;
  if (!(norm = cJSON_CreateObject())) goto done;
  for (size_t i = 0; i < N_MEMBERS; i++) {
    if (!found[i]) continue;
    cJSON *item = cJSON_DetachItemViaPointer(root, (cJSON *)found[i]);
    if (!cJSON_AddItemToObject(norm, members[i], item)) {
      cJSON_Delete(item);
      goto done;
    }
  }
  *out = norm;
  norm = NULL;
  rc = 0;
done:
  cJSON_Delete(root);
  cJSON_Delete(norm);
  return rc;
}

int gw_runmeta_has_tag(const cJSON *meta, const char *tag) {
  const cJSON *tags = meta ? cJSON_GetObjectItemCaseSensitive(meta, "tags") : NULL;
  for (const cJSON *t = tags ? tags->child : NULL; t; t = t->next)
    if (cJSON_IsString(t) && strcmp(t->valuestring, tag) == 0) return 1;
  return 0;
}

const char *gw_runmeta_label(const cJSON *meta, const char *key) {
  const cJSON *labels = meta ? cJSON_GetObjectItemCaseSensitive(meta, "labels") : NULL;
  const cJSON *v = labels ? cJSON_GetObjectItemCaseSensitive(labels, key) : NULL;
  return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Copy at most cap-1 bytes of s, cut at a character boundary. */
static void copy_cut(char *buf, size_t cap, const char *s) {
  size_t n = strlen(s);
  if (n > cap - 1) {
    n = cap - 1;
    while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80) n--;
  }
  memcpy(buf, s, n);
  buf[n] = '\0';
}

int gw_runmeta_export_value(const cJSON *meta, const char *key, char *buf, size_t cap) {
  static const char cfg[] = "config.";
  if (cap == 0) return 0;
  buf[0] = '\0';
  if (!meta) return 0;
  if (strncmp(key, cfg, sizeof cfg - 1) == 0) {
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(meta, "config");
    const cJSON *v = c ? cJSON_GetObjectItemCaseSensitive(c, key + sizeof cfg - 1) : NULL;
    char num[64];
    if (cJSON_IsString(v)) {
      copy_cut(buf, cap, v->valuestring);
    } else if (cJSON_IsBool(v)) {
      copy_cut(buf, cap, cJSON_IsTrue(v) ? "true" : "false");
    } else if (cJSON_IsNumber(v)) {
      gw_fmt_double(num, v->valuedouble);
      copy_cut(buf, cap, num);
    } else {
      return 0;
    }
    /* control characters would break nothing in the exposition format
     * (values are escaped), but keep the value one printable line */
    for (char *p = buf; *p; p++)
      if ((unsigned char)*p < 0x20) *p = ' ';
    return 1;
  }
  const char *v = gw_runmeta_label(meta, key);
  if (!v) return 0;
  copy_cut(buf, cap, v);
  return 1;
}
