/* assets.h — the dashboard's files, built into the binary.
 *
 * daemon/assets.cmake turns every file under web/ into a byte array at build
 * time (gw_assets.c in the build tree), so the daemon serves its dashboard
 * with no files on disk and no network. Lookup is by exact URL path
 * ("/index.html"); nothing else can be served, which is why no request path,
 * however it is spelt, can reach the filesystem.
 */
#ifndef GW_ASSETS_H
#define GW_ASSETS_H

#include <stddef.h>

typedef struct gw_asset_s {
  const char *path;         /* "/index.html" */
  const unsigned char *data;
  size_t len;
  const char *content_type; /* "text/html; charset=utf-8" */
  const char *etag;         /* quoted, from the file's SHA-256 */
} gw_asset_t;

extern const gw_asset_t gw_assets[];
extern const size_t gw_assets_count;

/* The asset at exactly path, or NULL. */
const gw_asset_t *gw_asset_find(const char *path);

#endif
