#include "route/host.h"

#include <stdint.h>
#include <string.h>

/* Longest sandbox id accepted in the left-most label (E2B ids are shorter). */
#define SG_HOST_ID_MAX 64
/* Longest ":port" digit run accepted on the Host value itself. */
#define SG_HOST_PORT_DIGITS_MAX 5

static int is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static int is_hex(unsigned char c)
{
    return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* For each byte a host name may hold ([A-Za-z0-9.-]): its lower-case form
 * in the low byte, plus HOST_NOT_NUMERIC for letters and '-' (what an IP
 * address lacks). 0 for every other byte. One lookup checks, folds and
 * classifies a byte. */
#define HOST_NOT_NUMERIC 0x100u
#define SAME(c) [c] = c
#define LETTER(c)                                                                                  \
    [c] = ((c) | 0x20) | HOST_NOT_NUMERIC, [(c) | 0x20] = ((c) | 0x20) | HOST_NOT_NUMERIC
#define DIGITS                                                                                     \
    SAME('0'), SAME('1'), SAME('2'), SAME('3'), SAME('4'), SAME('5'), SAME('6'), SAME('7'),        \
        SAME('8'), SAME('9')
#define LETTERS                                                                                    \
    LETTER('A'), LETTER('B'), LETTER('C'), LETTER('D'), LETTER('E'), LETTER('F'), LETTER('G'),     \
        LETTER('H'), LETTER('I'), LETTER('J'), LETTER('K'), LETTER('L'), LETTER('M'), LETTER('N'), \
        LETTER('O'), LETTER('P'), LETTER('Q'), LETTER('R'), LETTER('S'), LETTER('T'), LETTER('U'), \
        LETTER('V'), LETTER('W'), LETTER('X'), LETTER('Y'), LETTER('Z')
static const uint16_t name_lower[256] = {
    ['-'] = '-' | HOST_NOT_NUMERIC, SAME('.'), DIGITS, LETTERS};
#undef SAME
#undef LETTER
#undef DIGITS
#undef LETTERS

static sg_err_t fail(const char **reason, sg_err_t err, const char *why)
{
    if (reason) *reason = why;
    return err;
}

/* Validates the digits after the Host's ':' (the client's view of our port,
 * which routing ignores). RFC 9110 allows an empty port; an absurd one is
 * still rejected so nothing downstream has to think about it. */
static const char *check_host_port(const char *p, size_t len)
{
    unsigned long v = 0;
    if (len > SG_HOST_PORT_DIGITS_MAX) return "Host port has more than 5 digits";
    for (size_t i = 0; i < len; i++) {
        if (!is_digit((unsigned char)p[i])) return "Host port must be decimal digits";
        v = v * 10 + (unsigned long)(p[i] - '0');
    }
    if (v > 65535) return "Host port must be 0..65535";
    return NULL;
}

/* "[v6]" or "[v6]:port". Never routable, but only a well-formed literal earns
 * UNKNOWN_DOMAIN; anything else in brackets is treated as an attack. */
static sg_err_t parse_ip_literal(sg_slice_t h, const char **reason)
{
    size_t i = 1;
    while (i < h.len && h.base[i] != ']') {
        unsigned char c = (unsigned char)h.base[i];
        if (!is_hex(c) && c != ':' && c != '.')
            return fail(reason, SG_ERR_HOST_MALFORMED, "Host IP literal contains bad characters");
        i++;
    }
    if (i >= h.len) return fail(reason, SG_ERR_HOST_MALFORMED, "Host IP literal lacks ']'");
    if (i == 1) return fail(reason, SG_ERR_HOST_MALFORMED, "Host IP literal is empty");
    i++;
    if (i < h.len) {
        if (h.base[i] != ':')
            return fail(reason, SG_ERR_HOST_MALFORMED, "Host has bytes after the IP literal");
        const char *why = check_host_port(h.base + i + 1, h.len - i - 1);
        if (why) return fail(reason, SG_ERR_HOST_MALFORMED, why);
    }
    return fail(reason, SG_ERR_HOST_UNKNOWN_DOMAIN, "IP address literals are not sandbox hosts");
}

/* Picks the longest configured domain the name ends in as ".<domain>".
 * Returns the domain length, 0 for none; *exact is set when the whole name
 * equals a domain, which outranks every shorter suffix match. */
static size_t match_domain(const char *name, size_t len, char *const *domains, size_t n_domains,
                           size_t *index, int *exact)
{
    size_t best = 0;
    *exact = 0;
    for (size_t d = 0; d < n_domains; d++) {
        if (!domains[d]) continue;
        sg_slice_t dom = sg_slice_cstr(domains[d]);
        /* An empty domain would make every name "under" it. */
        if (dom.len == 0 || dom.len > len || dom.len <= best) continue;
        sg_slice_t tail = sg_slice(name + len - dom.len, dom.len);
        if (!sg_slice_eq_nocase(tail, dom)) continue;
        if (dom.len == len) {
            *exact = 1;
        } else if (name[len - dom.len - 1] == '.') {
            *exact = 0;
        } else {
            continue;
        }
        best = dom.len;
        *index = d;
    }
    return best;
}

/* The left-most label: <port>-<id>[-<part>...], already lower-case and made
 * of [a-z0-9-] only. */
static sg_err_t parse_label(const char *label, size_t len, sg_route_t *out, const char **reason)
{
    const char *d = memchr(label, '-', len);
    size_t dash = d ? (size_t)(d - label) : len;
    if (dash == len) return fail(reason, SG_ERR_HOST_MALFORMED, "label must be <port>-<id>");
    if (dash == 0) return fail(reason, SG_ERR_HOST_MALFORMED, "port missing before '-'");

    unsigned long port = 0;
    for (size_t i = 0; i < dash; i++) {
        if (!is_digit((unsigned char)label[i]))
            return fail(reason, SG_ERR_HOST_MALFORMED, "port must be decimal digits");
    }
    /* Checked before the value so huge digit runs never overflow. */
    if (dash > 5) return fail(reason, SG_ERR_HOST_MALFORMED, "port has more than 5 digits");
    if (label[0] == '0' && dash > 1)
        return fail(reason, SG_ERR_HOST_MALFORMED, "port must not have leading zeros");
    for (size_t i = 0; i < dash; i++) port = port * 10 + (unsigned long)(label[i] - '0');
    if (port == 0 || port > 65535)
        return fail(reason, SG_ERR_HOST_MALFORMED, "port must be 1..65535");

    const char *id = label + dash + 1;
    size_t rest = len - dash - 1;
    const char *id_end = memchr(id, '-', rest);
    size_t id_len = id_end ? (size_t)(id_end - id) : rest;
    if (id_len == 0) return fail(reason, SG_ERR_HOST_MALFORMED, "sandbox id is empty");
    if (id_len > SG_HOST_ID_MAX)
        return fail(reason, SG_ERR_HOST_MALFORMED, "sandbox id is longer than 64 characters");

    /* Ignored suffix parts: each "-" must introduce at least one [a-z0-9]. */
    for (size_t i = id_len; i < rest; i++) {
        if (id[i] == '-' && (i + 1 == rest || id[i + 1] == '-'))
            return fail(reason, SG_ERR_HOST_MALFORMED, "empty '-' part after the sandbox id");
    }

    out->port = (uint16_t)port;
    out->id = sg_slice(id, id_len);
    return SG_ERR_NONE;
}

sg_err_t sg_route_parse_host(sg_slice_t host, char *const *domains, size_t n_domains,
                             char lower[SG_HOST_MAX + 1], sg_route_t *out, const char **reason)
{
    lower[0] = '\0';
    if (reason) *reason = NULL;
    if (host.len == 0 || !host.base) return fail(reason, SG_ERR_HOST_MISSING, "Host is empty");
    if (host.base[0] == '[') return parse_ip_literal(host, reason);

    /* Split off ":port" at the first ':' so a bare IPv6 (many colons) fails
     * the digits check instead of being mistaken for a name. */
    const char *colon = memchr(host.base, ':', host.len);
    size_t name_len = colon ? (size_t)(colon - host.base) : host.len;
    if (colon) {
        const char *why = check_host_port(colon + 1, host.len - name_len - 1);
        if (why) return fail(reason, SG_ERR_HOST_MALFORMED, why);
    }
    if (name_len == 0) return fail(reason, SG_ERR_HOST_MALFORMED, "Host has a port but no name");
    static const char bad_chars[] = "Host may only contain letters, digits, '-' and '.'";
    /* One trailing dot is the absolute form of the same name (a dot is a
     * valid byte, so the checks below cover every byte that can be bad). */
    size_t n = name_len - (host.base[name_len - 1] == '.');
    if (n > SG_HOST_MAX) {
        for (size_t i = 0; i < n; i++) /* the bad-byte reason comes first */
            if (!name_lower[(unsigned char)host.base[i]])
                return fail(reason, SG_ERR_HOST_MALFORMED, bad_chars);
        return fail(reason, SG_ERR_HOST_MALFORMED, "Host is longer than 253 characters");
    }

    /* One pass checks, lower-cases and classifies each byte; the checks
     * after it keep their order: bad bytes first, then empty labels, a name
     * of just a dot, an IP address. */
    unsigned seen = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned t = name_lower[(unsigned char)host.base[i]];
        if (!t) {
            lower[0] = '\0';
            return fail(reason, SG_ERR_HOST_MALFORMED, bad_chars);
        }
        lower[i] = (char)(t & 0xff);
        seen |= t;
    }
    /* Dots are few: visit them to find the first, and the first that starts
     * the name, ends it or follows another (an empty label). */
    size_t first_dot = SIZE_MAX;
    for (const char *d = memchr(lower, '.', n); d;
         d = memchr(d + 1, '.', (size_t)(lower + n - d - 1))) {
        size_t i = (size_t)(d - lower);
        if (first_dot == SIZE_MAX) first_dot = i;
        if (i == 0 || lower[i - 1] == '.' || i + 1 == n) {
            lower[i] = '\0';
            return fail(reason, SG_ERR_HOST_MALFORMED, "Host has an empty label");
        }
    }
    if (n == 0) return fail(reason, SG_ERR_HOST_MALFORMED, "Host is only a dot");
    lower[n] = '\0';
    if (!(seen & HOST_NOT_NUMERIC))
        return fail(reason, SG_ERR_HOST_UNKNOWN_DOMAIN, "IP addresses are not sandbox hosts");

    size_t index = 0;
    int exact = 0;
    size_t dom_len = match_domain(lower, n, domains, n_domains, &index, &exact);
    if (dom_len == 0)
        return fail(reason, SG_ERR_HOST_UNKNOWN_DOMAIN, "Host is not under a served domain");
    /* The bare domain does not end in ".<domain>": it is not a sandbox host. */
    if (exact)
        return fail(reason, SG_ERR_HOST_UNKNOWN_DOMAIN, "the domain itself names no sandbox");

    size_t label_len = n - dom_len - 1;
    if (first_dot < label_len)
        return fail(reason, SG_ERR_HOST_MALFORMED, "more than one label before the domain");

    sg_route_t r;
    sg_err_t err = parse_label(lower, label_len, &r, reason);
    if (err != SG_ERR_NONE) return err;
    r.domain_index = index;
    *out = r;
    return SG_ERR_NONE;
}
