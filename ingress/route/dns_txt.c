/* TXT settings of DNS-sourced sandboxes: one "key=value" string at a time.
 * Pure and allocation-free except for the mask copy; fuzzed by
 * tests/fuzz/fuzz_dns_txt.c. */
#include "route/dns.h"
#include "route/mask.h"

#include <stdlib.h>
#include <string.h>

#define MAX_CONNECTIONS_LIMIT 1000000u

typedef enum { KEY_MASK, KEY_TOKEN, KEY_MAX_CONN, KEY__COUNT } txt_key_t;

static const sg_slice_t keys[KEY__COUNT] = {
    [KEY_MASK] = SG_SLICE_LIT("mask_request_host"),
    [KEY_TOKEN] = SG_SLICE_LIT("traffic_access_token_sha256"),
    [KEY_MAX_CONN] = SG_SLICE_LIT("max_incoming_connections"),
};

static int is_ows(char c)
{
    return c == ' ' || c == '\t';
}

static int lower(int c)
{
    return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
}

/* Does s start with key, ASCII case-insensitively? */
static int has_prefix_nocase(sg_slice_t s, sg_slice_t key)
{
    if (s.len < key.len) return 0;
    for (size_t i = 0; i < key.len; i++)
        if (lower((unsigned char)s.base[i]) != key.base[i]) return 0;
    return 1;
}

static int hex_value(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int apply_token(sg_sandbox_t *rec, sg_slice_t v, const char **why)
{
    unsigned char digest[sizeof(rec->token_sha256)];
    if (v.len != 2 * sizeof(digest)) {
        *why = "traffic_access_token_sha256 must be 64 hex digits";
        return -1;
    }
    for (size_t i = 0; i < sizeof(digest); i++) {
        int hi = hex_value((unsigned char)v.base[2 * i]);
        int lo = hex_value((unsigned char)v.base[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            *why = "traffic_access_token_sha256 must be 64 hex digits";
            return -1;
        }
        digest[i] = (unsigned char)(hi << 4 | lo);
    }
    if (rec->has_token && memcmp(rec->token_sha256, digest, sizeof(digest)) != 0) {
        *why = "traffic_access_token_sha256 given twice with different values";
        return -1;
    }
    memcpy(rec->token_sha256, digest, sizeof(digest));
    rec->has_token = 1;
    return 0;
}

static int apply_max_connections(sg_sandbox_t *rec, sg_slice_t v, const char **why)
{
    unsigned n = 0;
    if (v.len == 0) {
        *why = "max_incoming_connections is empty";
        return -1;
    }
    for (size_t i = 0; i < v.len; i++) {
        unsigned char c = (unsigned char)v.base[i];
        if (c < '0' || c > '9') {
            *why = "max_incoming_connections must be a decimal number";
            return -1;
        }
        n = n * 10 + (unsigned)(c - '0');
        /* checked every digit, so n never exceeds 10 * limit + 9 */
        if (n > MAX_CONNECTIONS_LIMIT) {
            *why = "max_incoming_connections must be 1..1000000";
            return -1;
        }
    }
    if (n == 0) {
        *why = "max_incoming_connections must be 1..1000000";
        return -1;
    }
    if (rec->max_connections && rec->max_connections != n) {
        *why = "max_incoming_connections given twice with different values";
        return -1;
    }
    rec->max_connections = n;
    return 0;
}

static int apply_mask(sg_sandbox_t *rec, sg_slice_t v, const char **why)
{
    const char *bad = sg_mask_validate(v);
    if (bad) {
        *why = bad;
        return -1;
    }
    /* validated: no NUL inside, so the copy is a proper C string */
    if (rec->mask) {
        if (strlen(rec->mask) == v.len && memcmp(rec->mask, v.base, v.len) == 0) return 0;
        *why = "mask_request_host given twice with different values";
        return -1;
    }
    char *copy = malloc(v.len + 1);
    if (!copy) abort();
    memcpy(copy, v.base, v.len);
    copy[v.len] = '\0';
    rec->mask = copy;
    return 0;
}

int sg_dns_apply_txt(sg_sandbox_t *rec, const char *txt, size_t len, const char **why)
{
    sg_slice_t s = sg_slice(txt, len);
    while (s.len && is_ows(s.base[0])) s.base++, s.len--;
    if (s.len == 0) return 0;

    const char *eq = memchr(s.base, '=', s.len);
    if (!eq) {
        /* "traffic_access_token_sha256:..." or a bare key: a typo that
         * would otherwise drop a setting, so it fails instead. */
        for (int k = 0; k < KEY__COUNT; k++) {
            if (has_prefix_nocase(s, keys[k])) {
                *why = "setting without '=' (expected key=value)";
                return -1;
            }
        }
        return 0;
    }
    sg_slice_t key = sg_slice(s.base, (size_t)(eq - s.base));
    while (key.len && is_ows(key.base[key.len - 1])) key.len--;
    sg_slice_t value = sg_slice(eq + 1, (size_t)(s.base + s.len - (eq + 1)));

    for (int k = 0; k < KEY__COUNT; k++) {
        if (key.len != keys[k].len || !has_prefix_nocase(key, keys[k])) continue;
        switch ((txt_key_t)k) {
        case KEY_MASK:
            return apply_mask(rec, value, why);
        case KEY_TOKEN:
            return apply_token(rec, value, why);
        case KEY_MAX_CONN:
            return apply_max_connections(rec, value, why);
        case KEY__COUNT:
            break;
        }
    }
    return 0; /* unknown keys are for other readers of the zone */
}
