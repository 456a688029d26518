/* runmeta.h — the run-metadata document: validation and the questions the
 * daemon asks of it (PROTOCOL.md §11.3).
 *
 * Data flow: ingest hands a metadata message's JSON document (already
 * framed by gw_meta_decode) to gw_runmeta_parse, which parses it with cJSON,
 * checks every rule and limit, and returns a normalised object holding only
 * the known members ("config", "tags", "labels", "client"). Ingest then
 * gives the sinks (store, run info) the object's compact text. Readers (the
 * HTTP API, the run-info metrics) parse that stored text again and ask it
 * for tags and labels with the helpers below. Nothing here keeps state.
 */
#ifndef GW_RUNMETA_H
#define GW_RUNMETA_H

#include <stddef.h>

#include <cjson/cJSON.h>

/* Validate doc (len bytes, need not be NUL-terminated). On success *out is
 * a new object (the caller's, cJSON_Delete) with the members present in doc,
 * in the order config, tags, labels, client. Returns 0, GW_EMETA (not JSON,
 * not an object, an unknown or repeated member, a member of the wrong type,
 * a bad tag, label key or value, nesting deeper than GW_META_DEPTH_MAX) or
 * GW_EMETASIZE (over GW_META_DOC_MAX bytes, more than GW_META_TAGS_MAX tags
 * or GW_META_LABELS_MAX labels), GW_ENOMEM. *out is NULL on failure. */
int gw_runmeta_parse(const char *doc, size_t len, cJSON **out);

/* 1 if s (len bytes) is a valid run tag: 1..GW_META_NAME_MAX bytes of
 * [A-Za-z0-9._:/+=@-]. */
int gw_runmeta_tag_ok(const char *s, size_t len);
/* 1 if s is a valid label key: 1..GW_META_NAME_MAX bytes of [A-Za-z0-9._-]. */
int gw_runmeta_key_ok(const char *s, size_t len);
/* 1 if s is a valid label value: 0..GW_META_VALUE_MAX bytes of UTF-8 with
 * no control character. */
int gw_runmeta_value_ok(const char *s, size_t len);

/* Questions about a parsed document (NULL meta: no metadata). */
int gw_runmeta_has_tag(const cJSON *meta, const char *tag);
/* The label's value, or NULL (borrowed from meta). */
const char *gw_runmeta_label(const cJSON *meta, const char *key);
/* The value for a --metrics-labels key: "config.NAME" is the top-level
 * config member NAME when it is a string, number or boolean (as text),
 * anything else is a label key. Writes a NUL-terminated value of at most
 * cap-1 bytes (cut at a UTF-8 character boundary) into buf; returns 1, or
 * 0 if the run has no such value (buf is then ""). */
int gw_runmeta_export_value(const cJSON *meta, const char *key, char *buf, size_t cap);

#endif
