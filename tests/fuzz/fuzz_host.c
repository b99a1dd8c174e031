/* libFuzzer harness for sg_route_parse_host (route/host.h). The input is the
 * raw Host value. Beyond "no crash, no over-read" (the value is an exact-size
 * heap copy and `lower` is an exact SG_HOST_MAX + 1 heap buffer), it checks:
 *   - the result is one of the four documented codes; reason is NULL exactly
 *     on success; `lower` is always a NUL-terminated C string in bounds;
 *   - success agrees with an independent model of the documented grammar
 *     `<port>-<id>[-<part>...].<domain>[.][:port]` (longest domain wins),
 *     and port, id and domain_index agree with it;
 *   - on success, `id` points into `lower`, which is the lower-cased name;
 *   - the result does not depend on case, and an extra ":443" is ignored
 *     when the value carries no port;
 *   - out is written only on success.
 * Build and run: tests/fuzz/run.sh (see tests/fuzz/README.md). */
#include "route/host.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* Overlapping suffixes so "longest wins" matters; an empty entry and a NULL
 * are ignored by contract. */
static char *const domains[] = {"e2b.app", "example.com", "sandbox.example.com", "", NULL,
                                "a.b",     "b",           "xn--bcher-kva.dev"};
#define N_DOMAINS (sizeof(domains) / sizeof(domains[0]))

static int is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static int is_lower_alnum(unsigned char c)
{
    return is_digit(c) || (c >= 'a' && c <= 'z');
}

static unsigned char to_lower(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : c;
}

typedef struct {
    int ok;
    unsigned port;
    size_t id_off, id_len;
    size_t domain_index;
} model_t;

/* The grammar, written independently of host.c from the header's contract
 * and DESIGN.md. Only decides success and its fields. */
static model_t model(const char *h, size_t len)
{
    model_t m = {0};
    if (len == 0 || h[0] == '[') return m;
    size_t name_len = 0;
    while (name_len < len && h[name_len] != ':') name_len++;
    if (name_len < len) { /* Host port: 0..5 digits, <= 65535 */
        size_t plen = len - name_len - 1;
        unsigned long v = 0;
        if (plen > 5) return m;
        for (size_t i = 0; i < plen; i++) {
            if (!is_digit((unsigned char)h[name_len + 1 + i])) return m;
            v = v * 10 + (unsigned long)(h[name_len + 1 + i] - '0');
        }
        if (v > 65535) return m;
    }
    char name[512];
    if (name_len == 0 || name_len > sizeof(name)) return m;
    for (size_t i = 0; i < name_len; i++) {
        unsigned char c = to_lower((unsigned char)h[i]);
        if (!is_lower_alnum(c) && c != '-' && c != '.') return m;
        name[i] = (char)c;
    }
    if (name[name_len - 1] == '.') name_len--;
    if (name_len == 0 || name_len > SG_HOST_MAX) return m;
    int numeric = 1;
    for (size_t i = 0; i < name_len; i++) {
        if (name[i] == '.' && (i == 0 || name[i - 1] == '.' || i + 1 == name_len)) return m;
        if (!is_digit((unsigned char)name[i]) && name[i] != '.') numeric = 0;
    }
    if (numeric) return m;

    size_t best = 0, best_i = 0;
    int exact = 0;
    for (size_t d = 0; d < N_DOMAINS; d++) {
        if (!domains[d]) continue;
        size_t dl = strlen(domains[d]);
        if (dl == 0 || dl > name_len || dl <= best) continue;
        if (memcmp(name + name_len - dl, domains[d], dl) != 0) continue;
        if (dl < name_len && name[name_len - dl - 1] != '.') continue;
        best = dl;
        best_i = d;
        exact = dl == name_len;
    }
    if (!best || exact) return m;

    /* label = <port>-<id>(-[a-z0-9]+)* */
    size_t label_len = name_len - best - 1, i = 0;
    if (memchr(name, '.', label_len)) return m;
    unsigned long port = 0;
    while (i < label_len && is_digit((unsigned char)name[i])) {
        if (i == 5) return m;
        port = port * 10 + (unsigned long)(name[i] - '0');
        i++;
    }
    if (i == 0 || (name[0] == '0' && i > 1) || port == 0 || port > 65535) return m;
    if (i == label_len || name[i] != '-') return m;
    size_t id_off = ++i;
    while (i < label_len && is_lower_alnum((unsigned char)name[i])) i++;
    size_t id_len = i - id_off;
    if (id_len == 0 || id_len > 64) return m;
    while (i < label_len) {
        if (name[i] != '-') return m;
        size_t start = ++i;
        while (i < label_len && is_lower_alnum((unsigned char)name[i])) i++;
        if (i == start) return m;
    }
    m.ok = 1;
    m.port = (unsigned)port;
    m.id_off = id_off;
    m.id_len = id_len;
    m.domain_index = best_i;
    return m;
}

typedef struct {
    sg_err_t err;
    sg_route_t r;
    const char *reason;
    char lower[SG_HOST_MAX + 1];
} result_t;

/* Parses an exact-size copy into an exact-size `lower`, checks the
 * per-call contract and returns what came out. */
static result_t parse(const char *s, size_t len)
{
    result_t res;
    char *copy = malloc(len ? len : 1);
    char *lower = malloc(SG_HOST_MAX + 1);
    CHECK(copy && lower);
    if (len) memcpy(copy, s, len);
    memset(lower, 'Z', SG_HOST_MAX + 1);
    memset(&res.r, 0xA5, sizeof(res.r));
    sg_route_t untouched = res.r;
    res.reason = (const char *)1;

    res.err =
        sg_route_parse_host(sg_slice(copy, len), domains, N_DOMAINS, lower, &res.r, &res.reason);
    CHECK(res.err == SG_ERR_NONE || res.err == SG_ERR_HOST_MISSING ||
          res.err == SG_ERR_HOST_MALFORMED || res.err == SG_ERR_HOST_UNKNOWN_DOMAIN);
    CHECK(memchr(lower, '\0', SG_HOST_MAX + 1) != NULL);
    CHECK((res.err == SG_ERR_HOST_MISSING) == (len == 0));
    if (res.err == SG_ERR_NONE) {
        CHECK(res.reason == NULL);
        CHECK(res.r.id.base >= lower && res.r.id.base + res.r.id.len <= lower + strlen(lower));
        res.r.id = sg_slice((const char *)(res.r.id.base - lower), res.r.id.len); /* offset */
    } else {
        CHECK(res.reason != NULL && res.reason[0] != '\0');
        CHECK(strchr(res.reason, '\n') == NULL);
        CHECK(memcmp(&res.r, &untouched, sizeof(untouched)) == 0);
    }
    /* NULL reason pointer is allowed. */
    sg_route_t r2;
    CHECK(sg_route_parse_host(sg_slice(copy, len), domains, N_DOMAINS, lower, &r2, NULL) ==
          res.err);
    memcpy(res.lower, lower, SG_HOST_MAX + 1);
    free(lower);
    free(copy);
    return res;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    if (size > 4096) return 0;
    result_t a = parse(s, size);
    model_t m = model(s, size);

    CHECK((a.err == SG_ERR_NONE) == m.ok);
    if (m.ok) {
        CHECK(a.r.port == m.port);
        CHECK((size_t)a.r.id.base == m.id_off && a.r.id.len == m.id_len);
        CHECK(a.r.domain_index == m.domain_index);
        /* lower is the lower-cased name without port and trailing dot. */
        size_t ll = strlen(a.lower);
        CHECK(ll <= size);
        for (size_t i = 0; i < ll; i++) CHECK(a.lower[i] == (char)to_lower((unsigned char)s[i]));
        CHECK(ll == size || s[ll] == ':' || (s[ll] == '.' && (ll + 1 == size || s[ll + 1] == ':')));
    }

    /* Case does not matter: same code, same fields. */
    char *buf = malloc(size + 8);
    CHECK(buf != NULL);
    for (size_t i = 0; i < size; i++) {
        unsigned char c = (unsigned char)s[i];
        buf[i] = (char)((c >= 'a' && c <= 'z') ? c - 32 : c);
    }
    result_t up = parse(buf, size);
    CHECK(up.err == a.err);
    if (a.err == SG_ERR_NONE) {
        CHECK(up.r.port == a.r.port && up.r.id.len == a.r.id.len);
        CHECK(up.r.id.base == a.r.id.base && up.r.domain_index == a.r.domain_index);
        CHECK(strcmp(up.lower, a.lower) == 0);
    }

    /* A Host port is checked but never used for routing. */
    if (size && !memchr(s, ':', size) && s[0] != '[') {
        memcpy(buf, s, size);
        memcpy(buf + size, ":443", 4);
        result_t p = parse(buf, size + 4);
        CHECK(p.err == a.err);
        if (a.err == SG_ERR_NONE) {
            CHECK(p.r.port == a.r.port && p.r.id.len == a.r.id.len);
            CHECK(p.r.domain_index == a.r.domain_index && strcmp(p.lower, a.lower) == 0);
        }
    }
    free(buf);
    return 0;
}
