#include "egress/policy.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_RULES 256
#define MAX_RULE_BYTES 300
#define MAX_NAME 253

/* ---- addresses ---- */

/* An address as matched: IPv4-mapped IPv6 already turned into IPv4. */
typedef struct {
    int family;
    uint8_t b[16];
} addr_t;

static const uint8_t mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

static int addr_from_sockaddr(const struct sockaddr *sa, addr_t *a)
{
    memset(a, 0, sizeof(*a));
    if (!sa) return -1;
    if (sa->sa_family == AF_INET) {
        a->family = AF_INET;
        memcpy(a->b, &((const struct sockaddr_in *)sa)->sin_addr, 4);
        return 0;
    }
    if (sa->sa_family == AF_INET6) {
        const uint8_t *b6 = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
        if (memcmp(b6, mapped_prefix, 12) == 0) {
            a->family = AF_INET;
            memcpy(a->b, b6 + 12, 4);
        } else {
            a->family = AF_INET6;
            memcpy(a->b, b6, 16);
        }
        return 0;
    }
    return -1;
}

static int prefix_equal(const uint8_t *a, const uint8_t *b, unsigned bits)
{
    unsigned full = bits / 8, rest = bits % 8;
    if (memcmp(a, b, full) != 0) return 0;
    if (!rest) return 1;
    uint8_t m = (uint8_t)(0xff << (8 - rest));
    return (a[full] & m) == (b[full] & m);
}

static int cidr_contains_addr(const sg_cidr_t *c, const addr_t *a)
{
    if (c->all_traffic) return 1;
    return c->family == a->family && prefix_equal(c->addr, a->b, c->prefix);
}

int sg_cidr_contains(const sg_cidr_t *c, const struct sockaddr *addr)
{
    addr_t a;
    if (addr_from_sockaddr(addr, &a) != 0) return 0;
    return cidr_contains_addr(c, &a);
}

int sg_cidr_covers(const sg_cidr_t *outer, const sg_cidr_t *inner)
{
    if (outer->all_traffic) return 1;
    if (inner->all_traffic) return 0;
    return outer->family == inner->family && outer->prefix <= inner->prefix &&
           prefix_equal(outer->addr, inner->addr, outer->prefix);
}

char *sg_cidr_format(const sg_cidr_t *c, char *buf)
{
    char a[INET6_ADDRSTRLEN];
    inet_ntop(c->family, c->addr, a, sizeof(a));
    snprintf(buf, SG_CIDR_TEXT_MAX, "%s/%u", a, c->prefix);
    return buf;
}

/* Parses text (NUL-terminated) into out; canon (may be NULL) gets the
 * normalised text as written (IPv6 stays IPv6, a bare address stays bare)
 * and, on SG_CIDR_EHOSTBITS, the range with host bits cleared. */
static int cidr_parse(const char *text, sg_cidr_t *out, char *canon)
{
    memset(out, 0, sizeof(*out));
    const char *slash = strchr(text, '/');
    size_t alen = slash ? (size_t)(slash - text) : strlen(text);
    char abuf[INET6_ADDRSTRLEN];
    if (alen == 0 || alen >= sizeof(abuf)) return SG_CIDR_EADDR;
    memcpy(abuf, text, alen);
    abuf[alen] = '\0';
    int family = memchr(abuf, ':', alen) ? AF_INET6 : AF_INET;
    if (inet_pton(family, abuf, out->addr) != 1) return SG_CIDR_EADDR;
    unsigned max = family == AF_INET ? 32 : 128, prefix = max;
    if (slash) {
        const char *p = slash + 1;
        size_t n = strlen(p);
        if (n == 0 || n > 3 || (n > 1 && p[0] == '0')) return SG_CIDR_EPREFIX;
        prefix = 0;
        for (size_t i = 0; i < n; i++) {
            if (p[i] < '0' || p[i] > '9') return SG_CIDR_EPREFIX;
            prefix = prefix * 10 + (unsigned)(p[i] - '0');
        }
        if (prefix > max) return SG_CIDR_EPREFIX;
    }
    out->family = family;
    out->prefix = (uint8_t)prefix;
    uint8_t net[16] = {0};
    memcpy(net, out->addr, prefix / 8);
    if (prefix % 8) net[prefix / 8] = out->addr[prefix / 8] & (uint8_t)(0xff << (8 - prefix % 8));
    int host_bits = memcmp(net, out->addr, 16) != 0;
    if (canon) {
        char a[INET6_ADDRSTRLEN];
        inet_ntop(family, host_bits ? net : out->addr, a, sizeof(a));
        if (slash)
            snprintf(canon, SG_CIDR_TEXT_MAX, "%s/%u", a, prefix);
        else
            snprintf(canon, SG_CIDR_TEXT_MAX, "%s", a);
    }
    if (host_bits) return SG_CIDR_EHOSTBITS;
    out->all_traffic = family == AF_INET && prefix == 0;
    if (family == AF_INET6 && prefix >= 96 && memcmp(out->addr, mapped_prefix, 12) == 0) {
        out->family = AF_INET;
        out->prefix = (uint8_t)(prefix - 96);
        memmove(out->addr, out->addr + 12, 4);
        memset(out->addr + 4, 0, 12);
    }
    return SG_CIDR_OK;
}

int sg_cidr_parse(const char *text, sg_cidr_t *out)
{
    return cidr_parse(text, out, NULL);
}

/* ---- host names ---- */

static char ascii_lower(char c)
{
    return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

static int label_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_';
}

/* Resolvers accept numeric shapes that are no IP literal to inet_pton
 * ("127.1", "0x7f.1", "1.0x1"); a name in such a shape must never count as
 * a domain, or a rule like *.0.0.1 would let 127.0.0.1 through by name. */
static int looks_numeric(const char *name, size_t len)
{
    size_t last = len;
    while (last > 0 && name[last - 1] != '.') last--;
    int digits = 1;
    for (size_t i = last; i < len; i++)
        if (name[i] < '0' || name[i] > '9') digits = 0;
    if (digits) return 1;
    char buf[MAX_NAME + 1];
    memcpy(buf, name, len);
    buf[len] = '\0';
    struct in_addr a4;
    return inet_aton(buf, &a4) != 0;
}

/* Checks a host name (or, with allow_wildcard, a domain rule whose first
 * label may be exactly "*") and writes it lower-cased without its trailing
 * dot into out[MAX_NAME + 1]. Returns the length, or -1 with *why set. */
static int name_normalise(const char *s, size_t len, int allow_wildcard, char *out, int *wildcard,
                          const char **why)
{
    *wildcard = 0;
    if (len > 0 && s[len - 1] == '.') len--;
    if (len == 0) return *why = "empty domain name", -1;
    if (len > MAX_NAME) return *why = "domain name longer than 253 characters", -1;
    size_t start = 0, labels = 0;
    if (len >= 2 && s[0] == '*' && s[1] == '.' && allow_wildcard) {
        *wildcard = 1;
        start = 2;
        labels = 1;
    }
    for (size_t i = start; i <= len; i++) {
        if (i < len && s[i] != '.') {
            if (s[i] == '*') return *why = "'*' is allowed only as the whole first label", -1;
            if (!label_char(s[i])) return *why = "invalid character in domain name", -1;
            continue;
        }
        size_t llen = i - start;
        if (llen == 0) return *why = "empty label in domain name", -1;
        if (llen > 63) return *why = "domain label longer than 63 characters", -1;
        if (s[start] == '-' || s[i - 1] == '-')
            return *why = "domain label starts or ends with '-'", -1;
        labels++;
        start = i + 1;
    }
    if (labels < 2) return *why = "domain name needs at least two labels", -1;
    if (looks_numeric(s + (*wildcard ? 2 : 0), len - (*wildcard ? 2 : 0)))
        return *why = "not an IP address, CIDR or domain name", -1;
    for (size_t i = 0; i < len; i++) out[i] = ascii_lower(s[i]);
    out[len] = '\0';
    return (int)len;
}

/* ---- policy ---- */

typedef struct {
    const char *text; /* lower-case; for a wildcard "*.suffix" */
    size_t len;
    int wildcard;
} domain_rule_t;

struct sg_egress_policy_s {
    char **allow_texts; /* allow_out as normalised, in order (owned) */
    size_t n_allow;
    char **deny_texts; /* deny_out as normalised, in order (owned) */
    size_t n_deny;
    sg_cidr_t *allow_cidrs;
    const char **allow_cidr_texts; /* borrowed from allow_texts */
    size_t n_allow_cidrs;
    sg_cidr_t *deny_cidrs; /* parallel to deny_texts */
    domain_rule_t *domains;
    size_t n_domains;
    int deny_all; /* deny_out holds 0.0.0.0/0 */
};

const char *sg_egress_reason_name(sg_egress_reason_t r)
{
    static const char *const names[SG_EGRESS_REASON_COUNT] = {
        "domain",          "cidr",         "default",     "always_denied",
        "unknown_sandbox", "sniff_failed", "dial_failed",
    };
    return (unsigned)r < SG_EGRESS_REASON_COUNT ? names[r] : "unknown";
}

void sg_egress_policy_free(sg_egress_policy_t *p)
{
    if (!p) return;
    for (size_t i = 0; i < p->n_allow; i++) free(p->allow_texts[i]);
    for (size_t i = 0; i < p->n_deny; i++) free(p->deny_texts[i]);
    free(p->allow_texts);
    free(p->deny_texts);
    free(p->allow_cidrs);
    free(p->allow_cidr_texts);
    free(p->deny_cidrs);
    free(p->domains);
    free(p);
}

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size);
    if (!p) abort();
    return p;
}

static char *xstrdup(const char *s)
{
    char *d = strdup(s);
    if (!d) abort();
    return d;
}

/* The value for a message: quoted, escaped, cut at 64 bytes. */
static void quote_value(const char *s, size_t len, char *out, size_t cap)
{
    size_t o = 0;
    out[o++] = '"';
    for (size_t i = 0; i < len && i < 64 && o + 6 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\')
            o += (size_t)snprintf(out + o, cap - o, "\\%c", c);
        else if (c < 0x20 || c >= 0x7f)
            o += (size_t)snprintf(out + o, cap - o, "\\x%02x", c);
        else
            out[o++] = (char)c;
    }
    if (len > 64 && o + 5 < cap) o += (size_t)snprintf(out + o, cap - o, "...");
    snprintf(out + o, cap - o, "\"");
}

static int fail(char *err, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(char *err, size_t cap, const char *fmt, ...)
{
    if (cap) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, cap, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* A string entry (into text and len) or a failure naming it. */
static int entry_string(const json_t *v, const char *list, size_t i, const char **text, size_t *len,
                        char *err, size_t cap)
{
    if (!json_is_string(v)) return fail(err, cap, "network.%s[%zu]: must be a string", list, i);
    *text = json_string_value(v);
    *len = json_string_length(v);
    char q[300];
    quote_value(*text, *len, q, sizeof(q));
    if (*len == 0) return fail(err, cap, "network.%s[%zu]: \"\": empty rule", list, i);
    if (*len > MAX_RULE_BYTES)
        return fail(err, cap, "network.%s[%zu]: %s: longer than %d bytes", list, i, q,
                    MAX_RULE_BYTES);
    if (strlen(*text) != *len)
        return fail(err, cap, "network.%s[%zu]: %s: contains a NUL byte", list, i, q);
    return 0;
}

/* Entries that must be read as addresses: anything with ':' or '/', or made
 * of digits and dots only. */
static int address_shaped(const char *s, size_t len)
{
    if (memchr(s, ':', len) || memchr(s, '/', len)) return 1;
    for (size_t i = 0; i < len; i++)
        if (!(s[i] == '.' || (s[i] >= '0' && s[i] <= '9'))) return 0;
    return 1;
}

static int cidr_failure(int status, const char *list, size_t i, const char *q, const char *canon,
                        int family_v4, char *err, size_t cap)
{
    switch (status) {
    case SG_CIDR_EPREFIX:
        return fail(err, cap, "network.%s[%zu]: %s: prefix length must be 0-%d", list, i, q,
                    family_v4 ? 32 : 128);
    case SG_CIDR_EHOSTBITS:
        return fail(err, cap, "network.%s[%zu]: %s: host bits set (did you mean %s?)", list, i, q,
                    canon);
    default:
        if (strcmp(list, "allow_out") == 0)
            return fail(err, cap, "network.%s[%zu]: %s: not an IP address, CIDR or domain name",
                        list, i, q);
        return fail(err, cap, "network.%s[%zu]: %s: not an IP address or CIDR", list, i, q);
    }
}

static int check_list(const json_t *v, const char *list, char *err, size_t cap)
{
    if (!json_is_array(v)) return fail(err, cap, "network.%s: must be an array of strings", list);
    if (json_array_size(v) > MAX_RULES)
        return fail(err, cap, "network.%s: at most %d entries", list, MAX_RULES);
    return 0;
}

static int parse_deny(sg_egress_policy_t *p, const json_t *deny, int internet, char *err,
                      size_t cap)
{
    size_t n = deny ? json_array_size(deny) : 0;
    p->deny_texts = xcalloc(n + 1, sizeof(char *));
    p->deny_cidrs = xcalloc(n + 1, sizeof(sg_cidr_t));
    for (size_t i = 0; i < n; i++) {
        const char *s;
        size_t len;
        if (entry_string(json_array_get(deny, i), "deny_out", i, &s, &len, err, cap) != 0)
            return -1;
        char canon[SG_CIDR_TEXT_MAX], q[300], name[MAX_NAME + 1];
        quote_value(s, len, q, sizeof(q));
        int st = cidr_parse(s, &p->deny_cidrs[i], canon);
        if (st != SG_CIDR_OK) {
            int wildcard;
            const char *why;
            if (st == SG_CIDR_EADDR && !address_shaped(s, len) &&
                name_normalise(s, len, 1, name, &wildcard, &why) >= 0)
                return fail(err, cap,
                            "network.deny_out[%zu]: %s: domain rules are allowed only in allow_out",
                            i, q);
            return cidr_failure(st, "deny_out", i, q, canon, !strchr(s, ':'), err, cap);
        }
        p->deny_texts[p->n_deny++] = xstrdup(canon);
        if (p->deny_cidrs[i].all_traffic) p->deny_all = 1;
    }
    if (!internet && !p->deny_all) {
        cidr_parse("0.0.0.0/0", &p->deny_cidrs[p->n_deny], NULL);
        p->deny_texts[p->n_deny++] = xstrdup("0.0.0.0/0");
        p->deny_all = 1;
    }
    return 0;
}

static int parse_allow(sg_egress_policy_t *p, const json_t *allow, char *err, size_t cap)
{
    size_t n = allow ? json_array_size(allow) : 0;
    p->allow_texts = xcalloc(n, sizeof(char *));
    p->allow_cidrs = xcalloc(n, sizeof(sg_cidr_t));
    p->allow_cidr_texts = xcalloc(n, sizeof(char *));
    p->domains = xcalloc(n, sizeof(domain_rule_t));
    for (size_t i = 0; i < n; i++) {
        const char *s;
        size_t len;
        if (entry_string(json_array_get(allow, i), "allow_out", i, &s, &len, err, cap) != 0)
            return -1;
        char canon[SG_CIDR_TEXT_MAX], q[300], name[MAX_NAME + 1];
        quote_value(s, len, q, sizeof(q));
        if (address_shaped(s, len)) {
            sg_cidr_t *c = &p->allow_cidrs[p->n_allow_cidrs];
            int st = cidr_parse(s, c, canon);
            if (st != SG_CIDR_OK)
                return cidr_failure(st, "allow_out", i, q, canon, !strchr(s, ':'), err, cap);
            p->allow_texts[p->n_allow] = xstrdup(canon);
            p->allow_cidr_texts[p->n_allow_cidrs++] = p->allow_texts[p->n_allow++];
            continue;
        }
        int wildcard;
        const char *why;
        int nlen = name_normalise(s, len, 1, name, &wildcard, &why);
        if (nlen < 0) return fail(err, cap, "network.allow_out[%zu]: %s: %s", i, q, why);
        if (!p->deny_all)
            return fail(err, cap,
                        "network.allow_out[%zu]: %s: domain rules need deny_out to contain "
                        "0.0.0.0/0",
                        i, q);
        p->allow_texts[p->n_allow] = xstrdup(name);
        p->domains[p->n_domains++] =
            (domain_rule_t){p->allow_texts[p->n_allow], (size_t)nlen, wildcard};
        p->n_allow++;
    }
    return 0;
}

int sg_egress_policy_from_json(const json_t *allow_internet_access, const json_t *network,
                               sg_egress_policy_t **out, char *err, size_t err_cap,
                               const char **field)
{
    *out = NULL;
    *field = "allow_internet_access";
    int internet = 1;
    if (allow_internet_access) {
        if (!json_is_boolean(allow_internet_access))
            return fail(err, err_cap, "allow_internet_access: must be true or false");
        internet = json_is_true(allow_internet_access);
    }
    *field = "network";
    const json_t *allow = NULL, *deny = NULL;
    if (network) {
        if (!json_is_object(network))
            return fail(err, err_cap, "network: must be an object with allow_out and/or deny_out");
        for (void *it = json_object_iter((json_t *)network); it;
             it = json_object_iter_next((json_t *)network, it)) {
            const char *key = json_object_iter_key(it);
            if (strcmp(key, "allow_out") == 0)
                allow = json_object_iter_value(it);
            else if (strcmp(key, "deny_out") == 0)
                deny = json_object_iter_value(it);
            else {
                char q[300];
                quote_value(key, strlen(key), q, sizeof(q));
                return fail(err, err_cap, "network: unknown key %s (expected allow_out, deny_out)",
                            q);
            }
        }
        if (allow && check_list(allow, "allow_out", err, err_cap) != 0) return -1;
        if (deny && check_list(deny, "deny_out", err, err_cap) != 0) return -1;
    }
    sg_egress_policy_t *p = xcalloc(1, sizeof(*p));
    if (parse_deny(p, deny, internet, err, err_cap) != 0 ||
        parse_allow(p, allow, err, err_cap) != 0) {
        sg_egress_policy_free(p);
        return -1;
    }
    *field = NULL;
    if (p->n_allow == 0 && p->n_deny == 0) {
        sg_egress_policy_free(p);
        return 0;
    }
    *out = p;
    return 0;
}

void sg_egress_policy_to_json(const sg_egress_policy_t *p, json_t *obj)
{
    json_t *allow = json_array(), *deny = json_array(), *net = json_object();
    for (size_t i = 0; p && i < p->n_allow; i++)
        json_array_append_new(allow, json_string(p->allow_texts[i]));
    for (size_t i = 0; p && i < p->n_deny; i++)
        json_array_append_new(deny, json_string(p->deny_texts[i]));
    json_object_set_new(net, "allow_out", allow);
    json_object_set_new(net, "deny_out", deny);
    json_object_set_new(obj, "allow_internet_access", json_boolean(!(p && p->deny_all)));
    json_object_set_new(obj, "network", net);
}

static int texts_equal(char *const *a, size_t na, char *const *b, size_t nb)
{
    if (na != nb) return 0;
    for (size_t i = 0; i < na; i++)
        if (strcmp(a[i], b[i]) != 0) return 0;
    return 1;
}

int sg_egress_policy_equal(const sg_egress_policy_t *a, const sg_egress_policy_t *b)
{
    if (!a || !b) return a == b; /* a built policy is never the default */
    return texts_equal(a->allow_texts, a->n_allow, b->allow_texts, b->n_allow) &&
           texts_equal(a->deny_texts, a->n_deny, b->deny_texts, b->n_deny);
}

int sg_egress_policy_has_domains(const sg_egress_policy_t *p)
{
    return p && p->n_domains > 0;
}

size_t sg_egress_policy_cidrs(const sg_egress_policy_t *p, int allow, const sg_cidr_t **cidrs,
                              const char *const **texts)
{
    if (!p) {
        *cidrs = NULL;
        if (texts) *texts = NULL;
        return 0;
    }
    *cidrs = allow ? p->allow_cidrs : p->deny_cidrs;
    if (texts)
        *texts =
            allow ? (const char *const *)p->allow_cidr_texts : (const char *const *)p->deny_texts;
    return allow ? p->n_allow_cidrs : p->n_deny;
}

/* ---- guard ---- */

#define V4(a, b, p)                                                                                \
    {                                                                                              \
        AF_INET, p, {a, b}, 0                                                                      \
    }
#define V6(a, b, last, p)                                                                          \
    {                                                                                              \
        AF_INET6, p, {a, b, [15] = last}, 0                                                        \
    }
static const sg_cidr_t always_denied[] = {
    V4(0, 0, 8),      V4(10, 0, 8),          V4(100, 64, 10),   V4(127, 0, 8),     V4(169, 254, 16),
    V4(172, 16, 12),  V4(192, 168, 16),      V4(224, 0, 4),     V4(240, 0, 4),     V6(0, 0, 0, 128),
    V6(0, 0, 1, 128), V6(0xfe, 0x80, 0, 10), V6(0xfc, 0, 0, 7), V6(0xff, 0, 0, 8),
};
static const char *const always_denied_texts[] = {
    "0.0.0.0/8",     "10.0.0.0/8",     "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.168.0.0/16", "224.0.0.0/4",   "240.0.0.0/4", "::/128",
    "::1/128",       "fe80::/10",      "fc00::/7",      "ff00::/8",
};
#define N_ALWAYS_DENIED (sizeof(always_denied) / sizeof(always_denied[0]))
_Static_assert(sizeof(always_denied_texts) / sizeof(always_denied_texts[0]) == N_ALWAYS_DENIED,
               "one text per always-denied range");

struct sg_egress_guard_s {
    sg_cidr_t nameserver;
    char nameserver_text[SG_CIDR_TEXT_MAX];
    sg_cidr_t *exceptions;
    char **exception_texts;
    size_t n_exceptions;
};

size_t sg_egress_always_denied_ranges(const sg_cidr_t **cidrs, const char *const **texts)
{
    *cidrs = always_denied;
    if (texts) *texts = always_denied_texts;
    return N_ALWAYS_DENIED;
}

void sg_egress_guard_free(sg_egress_guard_t *g)
{
    if (!g) return;
    for (size_t i = 0; i < g->n_exceptions; i++) free(g->exception_texts[i]);
    free(g->exception_texts);
    free(g->exceptions);
    free(g);
}

int sg_egress_guard_new(const char *nameserver, const char *const *exceptions, size_t n_exceptions,
                        sg_egress_guard_t **out, char *err, size_t err_cap)
{
    *out = NULL;
    if (!nameserver) nameserver = "8.8.8.8";
    sg_egress_guard_t *g = xcalloc(1, sizeof(*g));
    char q[300];
    if (strchr(nameserver, '/') ||
        cidr_parse(nameserver, &g->nameserver, g->nameserver_text) != SG_CIDR_OK) {
        quote_value(nameserver, strlen(nameserver), q, sizeof(q));
        sg_egress_guard_free(g);
        return fail(err, err_cap, "egress.nameserver: %s: not an IP address", q);
    }
    g->exceptions = xcalloc(n_exceptions, sizeof(sg_cidr_t));
    g->exception_texts = xcalloc(n_exceptions, sizeof(char *));
    for (size_t i = 0; i < n_exceptions; i++) {
        char canon[SG_CIDR_TEXT_MAX];
        int st = cidr_parse(exceptions[i], &g->exceptions[i], canon);
        if (st != SG_CIDR_OK) {
            quote_value(exceptions[i], strlen(exceptions[i]), q, sizeof(q));
            sg_egress_guard_free(g);
            if (st == SG_CIDR_EHOSTBITS)
                return fail(err, err_cap,
                            "egress.always_denied_exceptions[%zu]: %s: host bits set (did you "
                            "mean %s?)",
                            i, q, canon);
            return fail(err, err_cap, "egress.always_denied_exceptions[%zu]: %s: not a CIDR", i, q);
        }
        g->exception_texts[g->n_exceptions++] = xstrdup(canon);
    }
    *out = g;
    return 0;
}

const sg_cidr_t *sg_egress_guard_nameserver(const sg_egress_guard_t *g, const char **text)
{
    if (text) *text = g->nameserver_text;
    return &g->nameserver;
}

size_t sg_egress_guard_exceptions(const sg_egress_guard_t *g, const sg_cidr_t **cidrs,
                                  const char *const **texts)
{
    *cidrs = g ? g->exceptions : NULL;
    if (texts) *texts = g ? (const char *const *)g->exception_texts : NULL;
    return g ? g->n_exceptions : 0;
}

static int always_denied_addr(const sg_egress_guard_t *g, const addr_t *a, const char **range)
{
    for (size_t i = 0; i < N_ALWAYS_DENIED; i++) {
        if (!cidr_contains_addr(&always_denied[i], a)) continue;
        for (size_t j = 0; g && j < g->n_exceptions; j++)
            if (cidr_contains_addr(&g->exceptions[j], a)) return 0;
        if (range) *range = always_denied_texts[i];
        return 1;
    }
    return 0;
}

int sg_egress_always_denied(const sg_egress_guard_t *g, const struct sockaddr *addr,
                            const char **range)
{
    addr_t a;
    if (addr_from_sockaddr(addr, &a) != 0) {
        if (range) *range = "-";
        return 1;
    }
    return always_denied_addr(g, &a, range);
}

sg_egress_verdict_t sg_egress_decide_addr(const sg_egress_policy_t *p, const sg_egress_guard_t *g,
                                          const struct sockaddr *dst)
{
    addr_t a;
    const char *range = NULL;
    if (addr_from_sockaddr(dst, &a) != 0)
        return (sg_egress_verdict_t){0, SG_EGRESS_REASON_ALWAYS_DENIED, "-"};
    if (always_denied_addr(g, &a, &range))
        return (sg_egress_verdict_t){0, SG_EGRESS_REASON_ALWAYS_DENIED, range};
    if (!p) return (sg_egress_verdict_t){1, SG_EGRESS_REASON_DEFAULT, NULL};
    for (size_t i = 0; i < p->n_allow_cidrs; i++)
        if (cidr_contains_addr(&p->allow_cidrs[i], &a))
            return (sg_egress_verdict_t){1, SG_EGRESS_REASON_CIDR, p->allow_cidr_texts[i]};
    if (g && p->n_domains && cidr_contains_addr(&g->nameserver, &a))
        return (sg_egress_verdict_t){1, SG_EGRESS_REASON_CIDR, g->nameserver_text};
    for (size_t i = 0; i < p->n_deny; i++)
        if (cidr_contains_addr(&p->deny_cidrs[i], &a))
            return (sg_egress_verdict_t){0, SG_EGRESS_REASON_CIDR, p->deny_texts[i]};
    return (sg_egress_verdict_t){1, SG_EGRESS_REASON_DEFAULT, NULL};
}

int sg_egress_name_allowed(const sg_egress_policy_t *p, const char *name, size_t len,
                           const char **rule)
{
    if (!p || !p->n_domains || !name) return 0;
    char norm[MAX_NAME + 1];
    int wildcard;
    const char *why;
    int n = name_normalise(name, len, 0, norm, &wildcard, &why);
    if (n < 0) return 0;
    size_t nlen = (size_t)n;
    for (size_t i = 0; i < p->n_domains; i++) {
        const domain_rule_t *d = &p->domains[i];
        int hit;
        if (d->wildcard) {
            size_t slen = d->len - 2; /* the suffix after "*." */
            hit = nlen > slen + 1 && norm[nlen - slen - 1] == '.' &&
                  memcmp(norm + nlen - slen, d->text + 2, slen) == 0;
        } else {
            hit = nlen == d->len && memcmp(norm, d->text, nlen) == 0;
        }
        if (hit) {
            if (rule) *rule = d->text;
            return 1;
        }
    }
    return 0;
}
