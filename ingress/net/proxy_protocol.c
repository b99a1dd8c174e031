/* PROXY protocol v1/v2 parser. Every step answers one of three things about
 * the bytes seen so far: complete, a valid prefix (NEED), or impossible (BAD),
 * so a caller can feed it each read until it stops saying NEED. */
#include "net/proxy_protocol.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>

#define PP_BAD (-1)
#define PP_NEED 0
#define PP_OK 1

static const char v2_sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

/* Matches the part of literal lit[0..n) that has arrived: PP_OK when all of
 * it is there, PP_NEED when what is there matches, PP_BAD on a mismatch. */
static int match_lit(const unsigned char *p, size_t avail, const char *lit, size_t n)
{
    size_t k = avail < n ? avail : n;
    if (memcmp(p, lit, k) != 0) return PP_BAD;
    return k == n ? PP_OK : PP_NEED;
}

static void set_inet(struct sockaddr_storage *ss, const void *addr4, const void *port)
{
    struct sockaddr_in *sin = (struct sockaddr_in *)ss;
    sin->sin_family = AF_INET;
    memcpy(&sin->sin_addr, addr4, 4);
    memcpy(&sin->sin_port, port, 2);
}

static void set_inet6(struct sockaddr_storage *ss, const void *addr16, const void *port)
{
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
    sin6->sin6_family = AF_INET6;
    memcpy(&sin6->sin6_addr, addr16, 16);
    memcpy(&sin6->sin6_port, port, 2);
}

/* ---- v1 ------------------------------------------------------------------- */

enum { F_IPV4, F_IPV6, F_PORT };

static int is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static int is_hex(unsigned char c)
{
    return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static int in_field(int kind, unsigned char c)
{
    if (kind == F_IPV6) return is_hex(c) || c == ':' || c == '.';
    if (kind == F_IPV4) return is_digit(c) || c == '.';
    return is_digit(c);
}

/* Dotted quad, octets 0..255 without leading zeros. A partial literal passes
 * when some completion of it would. Only digits and dots reach here. */
static int ipv4_ok(const unsigned char *s, size_t n, int partial, struct in_addr *out)
{
    uint32_t addr = 0;
    unsigned dots = 0, val = 0, digits = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '.') {
            if (digits == 0 || dots == 3) return 0;
            addr = addr << 8 | val;
            dots++;
            val = digits = 0;
            continue;
        }
        if (digits == 1 && val == 0) return 0; /* "01" */
        val = val * 10 + (unsigned)(s[i] - '0');
        digits++;
        if (val > 255) return 0; /* also bounds the digit count */
    }
    if (partial) return 1;
    if (dots != 3 || digits == 0) return 0;
    addr = addr << 8 | val;
    out->s_addr = htonl(addr);
    return 1;
}

/* IPv6 text as inet_pton(3) takes it (RFC 4291, embedded IPv4 allowed, no
 * zone). A partial literal only gets the cheap necessary checks: at most 4
 * hex digits a group, one "::" (":::" counts twice), nothing but the IPv4
 * tail after a dot; inet_pton decides once the delimiter arrives. */
static int ipv6_ok(const unsigned char *s, size_t n, int partial, struct in6_addr *out)
{
    char buf[INET6_ADDRSTRLEN];
    unsigned run = 0, double_colons = 0;
    int dotted = 0;
    if (n >= sizeof(buf)) return 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == ':') {
            if (dotted) return 0;
            if (i > 0 && s[i - 1] == ':' && ++double_colons > 1) return 0;
            run = 0;
        } else if (s[i] == '.') {
            dotted = 1;
            run = 0;
        } else if (++run > 4) {
            return 0;
        }
    }
    if (partial) return 1;
    memcpy(buf, s, n);
    buf[n] = '\0';
    return inet_pton(AF_INET6, buf, out) == 1;
}

/* Decimal 0..65535, no sign, no leading zeros. */
static int port_ok(const unsigned char *s, size_t n, int partial, uint16_t *out)
{
    unsigned val = 0;
    if (n == 0) return partial;
    if (n > 5 || (s[0] == '0' && n > 1)) return 0;
    for (size_t i = 0; i < n; i++) val = val * 10 + (unsigned)(s[i] - '0');
    if (val > 65535) return 0;
    *out = htons((uint16_t)val);
    return 1;
}

static int field_ok(int kind, const unsigned char *s, size_t n, int partial, void *val)
{
    if (kind == F_IPV4) return ipv4_ok(s, n, partial, val);
    if (kind == F_IPV6) return ipv6_ok(s, n, partial, val);
    return port_ok(s, n, partial, val);
}

/* One field followed by its delimiter; on PP_OK *pp is past the delimiter. */
static int v1_field(const unsigned char **pp, const unsigned char *end, int kind,
                    unsigned char delim, void *val)
{
    const unsigned char *start = *pp, *p = start;
    while (p < end && in_field(kind, *p)) p++;
    if (p == end) return field_ok(kind, start, (size_t)(p - start), 1, val) ? PP_NEED : PP_BAD;
    if (*p != delim || !field_ok(kind, start, (size_t)(p - start), 0, val)) return PP_BAD;
    *pp = p + 1;
    return PP_OK;
}

/* p is just past the CR. */
static ssize_t v1_lf(const unsigned char *data, const unsigned char *p, const unsigned char *end)
{
    if (p == end) return PP_NEED;
    if (*p != '\n') return PP_BAD;
    return p + 1 - data;
}

static ssize_t v1_parse_window(const unsigned char *data, const unsigned char *end,
                               sg_proxy_header_t *h)
{
    static const char *const protos[] = {"TCP4", "TCP6", "UNKNOWN"};
    const unsigned char *p = data, *tok;
    size_t tok_len, i;
    int r, kind;
    union {
        struct in_addr a4;
        struct in6_addr a6;
    } src, dst; /* a union keeps either member correctly aligned */
    uint16_t sport = 0, dport = 0;

    r = match_lit(p, (size_t)(end - p), "PROXY ", 6);
    if (r != PP_OK) return r;
    p += 6;

    tok = p;
    while (p < end && *p != ' ' && *p != '\r') p++;
    tok_len = (size_t)(p - tok);
    for (i = 0; i < 3; i++) {
        size_t n = strlen(protos[i]);
        if (p == end && tok_len <= n && memcmp(tok, protos[i], tok_len) == 0) return PP_NEED;
        if (tok_len == n && memcmp(tok, protos[i], n) == 0) break;
    }
    if (i == 3 || p == end) return PP_BAD;

    if (i == 2) {
        /* UNKNOWN: the spec says to ignore the rest of the line; we still
         * want it to be text so binary junk is not taken for a header. */
        for (; p < end && *p != '\r'; p++)
            if (*p < 0x20 || *p > 0x7e) return PP_BAD;
        if (p == end) return PP_NEED;
        h->version = 1;
        h->local = 1;
        return v1_lf(data, p + 1, end);
    }

    if (*p++ != ' ') return PP_BAD;
    kind = i == 0 ? F_IPV4 : F_IPV6;
    if ((r = v1_field(&p, end, kind, ' ', &src)) != PP_OK) return r;
    if ((r = v1_field(&p, end, kind, ' ', &dst)) != PP_OK) return r;
    if ((r = v1_field(&p, end, F_PORT, ' ', &sport)) != PP_OK) return r;
    if ((r = v1_field(&p, end, F_PORT, '\r', &dport)) != PP_OK) return r;

    h->version = 1;
    if (kind == F_IPV4) {
        set_inet(&h->src, &src.a4, &sport);
        set_inet(&h->dst, &dst.a4, &dport);
    } else {
        set_inet6(&h->src, &src.a6, &sport);
        set_inet6(&h->dst, &dst.a6, &dport);
    }
    return v1_lf(data, p, end);
}

static ssize_t v1_parse(const unsigned char *data, size_t len, sg_proxy_header_t *h)
{
    /* Parse only the first SG_PROXY_V1_MAX bytes: a line that has not ended
     * by then never will, whatever comes next. */
    size_t window = len < SG_PROXY_V1_MAX ? len : SG_PROXY_V1_MAX;
    ssize_t r = v1_parse_window(data, data + window, h);
    if (r == PP_NEED && len >= SG_PROXY_V1_MAX) return PP_BAD;
    return r;
}

/* ---- v2 ------------------------------------------------------------------- */

static ssize_t v2_parse(const unsigned char *d, size_t len, sg_proxy_header_t *h)
{
    size_t addr_len, block, total, p;
    int proxy, inet = 0, r;

    r = match_lit(d, len, v2_sig, sizeof(v2_sig));
    if (r != PP_OK) return r;
    /* Each byte is judged as soon as it arrives so junk fails fast. */
    if (len < 13) return PP_NEED;
    if ((d[12] >> 4) != 2 || (d[12] & 0x0f) > 1) return PP_BAD;
    proxy = d[12] & 1;
    if (len < 14) return PP_NEED;
    switch (d[13]) {
    case 0x00: /* UNSPEC */
        addr_len = 0;
        break;
    case 0x11: /* INET STREAM */
    case 0x12: /* INET DGRAM */
        addr_len = 12;
        break;
    case 0x21: /* INET6 STREAM */
    case 0x22: /* INET6 DGRAM */
        addr_len = 36;
        break;
    case 0x31: /* UNIX STREAM */
    case 0x32: /* UNIX DGRAM */
        addr_len = 216;
        break;
    default:
        return PP_BAD; /* the spec says undefined values must be rejected */
    }
    /* Addresses are only taken from TCP; UDP ones would be wrong for this
     * connection. UNIX and UNSPEC are local whatever the transport, and LOCAL
     * ignores the family, so any defined one goes. */
    if (proxy && (d[13] == 0x12 || d[13] == 0x22)) return PP_BAD;
    inet = proxy && (d[13] == 0x11 || d[13] == 0x21);
    if (len < 16) return PP_NEED;

    block = (size_t)d[14] << 8 | d[15];
    total = 16 + block;
    if (total > SG_PROXY_V2_MAX || block < addr_len) return PP_BAD;

    /* TLVs: lengths are checked against the block as soon as they arrive.
     * The order of tests keeps every subtraction from wrapping. */
    for (p = 16 + addr_len; p < total;) {
        size_t tlv_len;
        if (total - p < 3) return PP_BAD;
        if (len < p + 3) return PP_NEED;
        tlv_len = (size_t)d[p + 1] << 8 | d[p + 2];
        if (tlv_len > total - p - 3) return PP_BAD;
        p += 3 + tlv_len;
    }
    if (len < total) return PP_NEED;

    h->version = 2;
    h->local = !inet;
    if (d[13] == 0x11 && inet) {
        set_inet(&h->src, d + 16, d + 24);
        set_inet(&h->dst, d + 20, d + 26);
    } else if (inet) {
        set_inet6(&h->src, d + 16, d + 48);
        set_inet6(&h->dst, d + 32, d + 50);
    }
    return (ssize_t)total;
}

/* ---- public --------------------------------------------------------------- */

ssize_t sg_proxy_protocol_parse(const char *data, size_t len, sg_proxy_header_t *out)
{
    const unsigned char *d = (const unsigned char *)data;
    sg_proxy_header_t h;
    ssize_t r;

    if (len == 0) return PP_NEED;
    memset(&h, 0, sizeof(h));
    if (d[0] == 'P')
        r = v1_parse(d, len, &h);
    else if (d[0] == 0x0D)
        r = v2_parse(d, len, &h);
    else
        return PP_BAD;
    if (r > 0 && out) *out = h;
    return r;
}

int sg_proxy_protocol_impossible(const char *data, size_t len)
{
    return len > 0 && data[0] != 'P' && data[0] != 0x0D;
}
