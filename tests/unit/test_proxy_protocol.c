/* PROXY protocol v1/v2 parser: a table of headers, each placed so its last
 * byte sits just before a PROT_NONE guard page (an over-read crashes), tried
 * whole, at every truncation, and with bytes after it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "net/proxy_protocol.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* ---- guard page ------------------------------------------------------------- */

#define SPAN_MIN (3 * SG_PROXY_HEADER_MAX)

static char *g_region; /* g_span usable bytes, then one PROT_NONE page */
static size_t g_span;

static int setup(void **state)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    g_span = (SPAN_MIN + page - 1) / page * page;
    g_region =
        mmap(NULL, g_span + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (g_region == MAP_FAILED) return -1;
    return mprotect(g_region + g_span, page, PROT_NONE);
}

static int teardown(void **state)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    return munmap(g_region, g_span + page);
}

/* Copies a[0..an) then b[0..bn) so the last byte touches the guard page. */
static const char *place(const char *a, size_t an, const char *b, size_t bn)
{
    char *dst = g_region + g_span - an - bn;
    assert_true(an + bn <= g_span);
    memcpy(dst, a, an);
    if (bn) memcpy(dst + an, b, bn);
    return dst;
}

/* ---- cases ------------------------------------------------------------------ */

enum { OK, NEED, BAD };

typedef struct {
    const char *name;
    const char *data; /* the header (OK), a valid prefix (NEED) or junk (BAD) */
    size_t len;
    int want;
    const char *tail; /* OK: bytes after the header (the client's first request) */
    int local;
    int family; /* when !local */
    const char *src, *dst;
    int sport, dport;
    int impossible; /* BAD only: sg_proxy_protocol_impossible() says 1 */
} pp_case_t;

#define B(lit) lit, sizeof(lit) - 1
#define SIG "\x0D\x0A\x0D\x0A\x00\x0D\x0A\x51\x55\x49\x54\x0A"
#define REQ "GET / HTTP/1.1\r\nHost: 80-abc.example.com\r\n\r\n"

#define OK_ADDR(n, lit, t, fam, s, sp, d, dp)                                                      \
    {                                                                                              \
        .name = n, .data = B(lit), .want = OK, .tail = t, .family = fam, .src = s, .sport = sp,    \
        .dst = d, .dport = dp                                                                      \
    }
#define OK_LOCAL(n, lit, t)                                                                        \
    {                                                                                              \
        .name = n, .data = B(lit), .want = OK, .tail = t, .local = 1                               \
    }
#define NEEDS(n, lit)                                                                              \
    {                                                                                              \
        .name = n, .data = B(lit), .want = NEED                                                    \
    }
#define BADC(n, lit)                                                                               \
    {                                                                                              \
        .name = n, .data = B(lit), .want = BAD                                                     \
    }
#define JUNK(n, lit)                                                                               \
    {                                                                                              \
        .name = n, .data = B(lit), .want = BAD, .impossible = 1                                    \
    }

/* v2 address blocks */
#define V4_ADDRS                                                                                   \
    "\xC0\x00\x02\x01"                                                                             \
    "\xC6\x33\x64\x02"                                                                             \
    "\xDC\x04"                                                                                     \
    "\x01\xBB"
#define V6_SRC "\x20\x01\x0D\xB8\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01"
#define V6_DST "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\xFF\xFF\x0A\x00\x00\x01"
#define V6_ADDRS                                                                                   \
    V6_SRC V6_DST "\x00\x01"                                                                       \
                  "\xFF\xFF"
#define TLVS                                                                                       \
    "\x01\x00\x02"                                                                                 \
    "h2"                                                                                           \
    "\x02\x00\x0B"                                                                                 \
    "example.com"                                                                                  \
    "\x04\x00\x00" /* 22 bytes */
#define FFFF6 "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"

static const pp_case_t cases[] = {
    /* v1 valid */
    OK_ADDR("v1 tcp4", "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n", "", AF_INET,
            "192.168.0.1", 56324, "192.168.0.11", 443),
    OK_ADDR("v1 tcp4 + request", "PROXY TCP4 10.1.2.3 10.0.0.1 1 80\r\n", REQ, AF_INET, "10.1.2.3",
            1, "10.0.0.1", 80),
    OK_ADDR("v1 tcp4 extremes", "PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n", "", AF_INET,
            "0.0.0.0", 0, "255.255.255.255", 65535),
    OK_ADDR("v1 tcp6", "PROXY TCP6 2001:db8::1 ::1 1 80\r\n", REQ, AF_INET6, "2001:db8::1", 1,
            "::1", 80),
    OK_ADDR("v1 tcp6 full form (104 bytes)", "PROXY TCP6 " FFFF6 " " FFFF6 " 65535 65535\r\n", "",
            AF_INET6, FFFF6, 65535, FFFF6, 65535),
    OK_ADDR("v1 tcp6 v4-mapped, upper case", "PROXY TCP6 ::ffff:192.0.2.1 2001:DB8::A 443 8443\r\n",
            "", AF_INET6, "::ffff:192.0.2.1", 443, "2001:db8::a", 8443),
    OK_LOCAL("v1 unknown", "PROXY UNKNOWN\r\n", REQ),
    OK_LOCAL("v1 unknown, spec worst case (107 bytes)",
             "PROXY UNKNOWN " FFFF6 " " FFFF6 " 65535 65535\r\n", ""),
    OK_LOCAL("v1 unknown, free text", "PROXY UNKNOWN whatever: it's ignored\r\n", "\r\n"),

    /* v2 valid */
    OK_ADDR("v2 proxy ipv4", SIG "\x21\x11\x00\x0C" V4_ADDRS, "", AF_INET, "192.0.2.1", 56324,
            "198.51.100.2", 443),
    OK_ADDR("v2 proxy ipv4 + request", SIG "\x21\x11\x00\x0C" V4_ADDRS, REQ, AF_INET, "192.0.2.1",
            56324, "198.51.100.2", 443),
    OK_ADDR("v2 proxy ipv6", SIG "\x21\x21\x00\x24" V6_ADDRS, "", AF_INET6, "2001:db8::1", 1,
            "::ffff:10.0.0.1", 65535),
    OK_ADDR("v2 proxy ipv4 + TLVs", SIG "\x21\x11\x00\x22" V4_ADDRS TLVS, REQ, AF_INET, "192.0.2.1",
            56324, "198.51.100.2", 443),
    OK_ADDR("v2 proxy ipv6 + unique-id TLV",
            SIG "\x21\x21\x00\x2B" V6_ADDRS "\x05\x00\x04"
                "abcd",
            "", AF_INET6, "2001:db8::1", 1, "::ffff:10.0.0.1", 65535),
    OK_LOCAL("v2 local", SIG "\x20\x00\x00\x00", ""),
    OK_LOCAL("v2 local + request", SIG "\x20\x00\x00\x00", REQ),
    OK_LOCAL("v2 local + TLVs", SIG "\x20\x00\x00\x16" TLVS, ""),
    OK_LOCAL("v2 local, inet addresses ignored", SIG "\x20\x11\x00\x0C" V4_ADDRS, REQ),
    OK_LOCAL("v2 local, udp family ignored", SIG "\x20\x22\x00\x24" V6_ADDRS, ""),
    OK_LOCAL("v2 proxy unspec", SIG "\x21\x00\x00\x00", REQ),
    OK_LOCAL("v2 proxy unspec + TLV",
             SIG "\x21\x00\x00\x03"
                 "\x04\x00\x00",
             ""),

    /* valid prefixes: more bytes needed */
    NEEDS("v1 no CRLF yet", "PROXY TCP4 1.2.3.4 5.6.7.8 1 2"),
    NEEDS("v1 CR without LF yet", "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r"),
    NEEDS("v2 half an address block", SIG "\x21\x11\x00\x0C"
                                          "\xC0\x00\x02\x01\xC6\x33"),
    NEEDS("v2 TLV value not all here", SIG "\x21\x11\x00\x22" V4_ADDRS "\x01\x00\x02"
                                           "h"),

    /* v1 invalid: addresses */
    BADC("v1 octet 999", "PROXY TCP4 999.1.1.1 1.2.3.4 1 2\r\n"),
    BADC("v1 octet 256", "PROXY TCP4 1.2.3.4 1.2.3.256 1 2\r\n"),
    BADC("v1 octet leading zero", "PROXY TCP4 01.2.3.4 1.2.3.4 1 2\r\n"),
    BADC("v1 octet 00", "PROXY TCP4 1.2.3.4 1.00.3.4 1 2\r\n"),
    BADC("v1 three octets", "PROXY TCP4 1.2.3 1.2.3.4 1 2\r\n"),
    BADC("v1 five octets", "PROXY TCP4 1.2.3.4.5 1.2.3.4 1 2\r\n"),
    BADC("v1 empty octet", "PROXY TCP4 1..3.4 1.2.3.4 1 2\r\n"),
    BADC("v1 trailing dot", "PROXY TCP4 1.2.3.4. 1.2.3.4 1 2\r\n"),
    BADC("v1 ipv6 in TCP4", "PROXY TCP4 ::1 1.2.3.4 1 2\r\n"),
    BADC("v1 ipv6 dst in TCP4", "PROXY TCP4 1.2.3.4 2001:db8::1 1 2\r\n"),
    BADC("v1 ipv4 in TCP6", "PROXY TCP6 1.2.3.4 ::1 1 2\r\n"),
    BADC("v1 ipv6 two ::", "PROXY TCP6 1::2::3 ::1 1 2\r\n"),
    BADC("v1 ipv6 :::", "PROXY TCP6 1:::3 ::1 1 2\r\n"),
    BADC("v1 ipv6 nine groups", "PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n"),
    BADC("v1 ipv6 five hex digits", "PROXY TCP6 12345:: ::1 1 2\r\n"),
    BADC("v1 ipv6 zone", "PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n"),
    BADC("v1 ipv6 bad embedded ipv4", "PROXY TCP6 ::ffff:1.02.3.4 ::1 1 2\r\n"),
    BADC("v1 too long (116 bytes)",
         "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255 "
         "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255 65535 65535\r\n"),
    BADC("v1 unknown too long (108 bytes)", "PROXY UNKNOWN " FFFF6 " " FFFF6 " 65535 655355\r\n"),

    /* v1 invalid: ports */
    BADC("v1 port 65536", "PROXY TCP4 1.2.3.4 5.6.7.8 65536 80\r\n"),
    BADC("v1 port 99999", "PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n"),
    BADC("v1 port six digits", "PROXY TCP4 1.2.3.4 5.6.7.8 100000 80\r\n"),
    BADC("v1 port +1", "PROXY TCP4 1.2.3.4 5.6.7.8 +1 80\r\n"),
    BADC("v1 port -1", "PROXY TCP4 1.2.3.4 5.6.7.8 -1 80\r\n"),
    BADC("v1 port 01", "PROXY TCP4 1.2.3.4 5.6.7.8 01 80\r\n"),
    BADC("v1 port 00", "PROXY TCP4 1.2.3.4 5.6.7.8 1 00\r\n"),
    BADC("v1 port hex", "PROXY TCP4 1.2.3.4 5.6.7.8 0x50 80\r\n"),

    /* v1 invalid: framing */
    BADC("v1 double space after PROXY", "PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n"),
    BADC("v1 double space between addresses", "PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n"),
    BADC("v1 double space between ports", "PROXY TCP4 1.2.3.4 5.6.7.8 1  2\r\n"),
    BADC("v1 tab", "PROXY\tTCP4 1.2.3.4 5.6.7.8 1 2\r\n"),
    BADC("v1 trailing space", "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n"),
    BADC("v1 LF only", "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"),
    BADC("v1 CR then junk", "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX"),
    BADC("v1 missing port", "PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"),
    BADC("v1 extra field", "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n"),
    BADC("v1 TCP4 then CRLF", "PROXY TCP4\r\n"),
    BADC("v1 lower-case protocol", "PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n"),
    BADC("v1 unknown protocol", "PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n"),
    BADC("v1 UNKNOWNX", "PROXY UNKNOWNX\r\n"),
    BADC("v1 unknown with control byte", "PROXY UNKNOWN \x01\r\n"),
    BADC("v1 unknown LF only", "PROXY UNKNOWN\n"),
    BADC("v1 PROXX", "PROXX"),
    BADC("v1 fails fast inside an octet", "PROXY TCP4 999"),
    BADC("v1 fails fast inside a port", "PROXY TCP4 1.2.3.4 5.6.7.8 655360"),
    JUNK("v1 lower-case proxy", "proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n"),
    JUNK("plain HTTP request", REQ),
    JUNK("TLS ClientHello", "\x16\x03\x01\x02\x00\x01"),

    /* v2 invalid */
    BADC("v2 wrong signature (QUIX)",
         "\x0D\x0A\x0D\x0A\x00\x0D\x0A\x51\x55\x49\x58\x0A\x21\x11\x00\x0C" V4_ADDRS),
    BADC("v2 signature fails fast", "\x0D\x0A\x0D\x0B"),
    BADC("v2 version 1", SIG "\x11\x11\x00\x0C" V4_ADDRS),
    BADC("v2 version 3", SIG "\x31\x11\x00\x0C" V4_ADDRS),
    BADC("v2 command 2", SIG "\x22\x11\x00\x0C" V4_ADDRS),
    BADC("v2 command 15", SIG "\x2F\x11\x00\x0C" V4_ADDRS),
    BADC("v2 family 4", SIG "\x21\x41\x00\x0C" V4_ADDRS),
    BADC("v2 transport 3", SIG "\x21\x13\x00\x0C" V4_ADDRS),
    BADC("v2 inet, unspec transport", SIG "\x21\x10\x00\x0C" V4_ADDRS),
    BADC("v2 unspec family, stream", SIG "\x20\x01\x00\x00"),
    BADC("v2 proxy over udp", SIG "\x21\x12\x00\x0C" V4_ADDRS),
    BADC("v2 proxy over udp6", SIG "\x21\x22\x00\x24" V6_ADDRS),
    BADC("v2 length over cap (4097 total)", SIG "\x21\x11\x0F\xF1"),
    BADC("v2 length 65535", SIG "\x20\x00\xFF\xFF"),
    BADC("v2 ipv4 block of 11", SIG "\x21\x11\x00\x0B"
                                    "\xC0\x00\x02\x01\xC6\x33\x64\x02\xDC\x04\x01"),
    BADC("v2 ipv6 block of 12", SIG "\x21\x21\x00\x0C" V4_ADDRS),
    BADC("v2 empty ipv4 block", SIG "\x21\x11\x00\x00"),
    BADC("v2 local, short ipv4 block", SIG "\x20\x11\x00\x04"
                                           "\x01\x02\x03\x04"),
    BADC("v2 unix block of 12", SIG "\x21\x31\x00\x0C" V4_ADDRS),
    BADC("v2 TLV longer than block", SIG "\x21\x11\x00\x10" V4_ADDRS "\x01\x00\x05"
                                         "h"),
    BADC("v2 TLV overrun fails before its value", SIG "\x21\x11\x00\x10" V4_ADDRS "\x01\x01\x00"),
    BADC("v2 two stray bytes after TLVs", SIG "\x20\x00\x00\x05"
                                              "\x04\x00\x00"
                                              "\x04\x00"),
    BADC("v2 one stray byte", SIG "\x21\x11\x00\x0D" V4_ADDRS "\x04"),
};

/* ---- checking ---------------------------------------------------------------- */

static void assert_sockaddr(const char *name, const struct sockaddr_storage *ss, int family,
                            const char *ip, int port)
{
    char buf[INET6_ADDRSTRLEN] = "";
    const void *addr;
    uint16_t nport;
    if (ss->ss_family != family) fail_msg("%s: family %d, want %d", name, ss->ss_family, family);
    if (family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
        addr = &sin->sin_addr;
        nport = sin->sin_port;
    } else {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
        addr = &sin6->sin6_addr;
        nport = sin6->sin6_port;
    }
    assert_non_null(inet_ntop(family, addr, buf, sizeof(buf)));
    if (strcmp(buf, ip) != 0) fail_msg("%s: address %s, want %s", name, buf, ip);
    if (ntohs(nport) != port) fail_msg("%s: port %d, want %d", name, ntohs(nport), port);
}

static int is_zero(const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i]) return 0;
    return 1;
}

/* parse() against the guard page; checks *out is untouched unless > 0. */
static ssize_t parse_at_guard(const char *a, size_t an, const char *b, size_t bn,
                              sg_proxy_header_t *out)
{
    sg_proxy_header_t before;
    const char *p = place(a, an, b, bn);
    ssize_t r;
    memset(out, 0xA5, sizeof(*out));
    before = *out;
    r = sg_proxy_protocol_parse(p, an + bn, out);
    if (r <= 0) assert_memory_equal(out, &before, sizeof(before));
    assert_int_equal(sg_proxy_protocol_parse(p, an + bn, NULL), r);
    return r;
}

static void check_case(const pp_case_t *c)
{
    sg_proxy_header_t h;
    ssize_t r;
    size_t k, tail_len = c->tail ? strlen(c->tail) : 0;
    /* A -1 is final: no later bytes may turn it into a header. */
    static const char more[] = "\r\n\r\n"
                               "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"
                               "\x00\x00\x00\x00";

    /* Every strict prefix of a header or of a valid prefix needs more bytes. */
    size_t upto = c->want == BAD ? 0 : c->len;
    for (k = 0; k < upto; k++) {
        r = parse_at_guard(c->data, k, NULL, 0, &h);
        if (r != 0) fail_msg("%s: prefix of %zu/%zu bytes -> %zd, want 0", c->name, k, c->len, r);
        if (sg_proxy_protocol_impossible(place(c->data, k, NULL, 0), k))
            fail_msg("%s: prefix of %zu bytes deemed impossible", c->name, k);
    }

    if (c->want == NEED) {
        if ((r = parse_at_guard(c->data, c->len, NULL, 0, &h)) != 0)
            fail_msg("%s: -> %zd, want 0", c->name, r);
        return;
    }
    if (c->want == BAD) {
        if ((r = parse_at_guard(c->data, c->len, NULL, 0, &h)) != -1)
            fail_msg("%s: -> %zd, want -1", c->name, r);
        if ((r = parse_at_guard(c->data, c->len, more, sizeof(more) - 1, &h)) != -1)
            fail_msg("%s: with more bytes -> %zd, want -1", c->name, r);
        if (sg_proxy_protocol_impossible(place(c->data, c->len, NULL, 0), c->len) != c->impossible)
            fail_msg("%s: impossible() != %d", c->name, c->impossible);
        return;
    }

    /* The header, then each growing piece of what follows it. */
    for (k = 0; k <= tail_len; k++) {
        r = parse_at_guard(c->data, c->len, c->tail, k, &h);
        if (r != (ssize_t)c->len)
            fail_msg("%s: with %zu tail bytes -> %zd, want %zu", c->name, k, r, c->len);
    }
    assert_int_equal(h.version, c->data[0] == 'P' ? 1 : 2);
    if (h.local != c->local) fail_msg("%s: local %d, want %d", c->name, h.local, c->local);
    if (c->local) {
        if (!is_zero(&h.src, sizeof(h.src)) || !is_zero(&h.dst, sizeof(h.dst)))
            fail_msg("%s: local header with addresses", c->name);
        return;
    }
    assert_sockaddr(c->name, &h.src, c->family, c->src, c->sport);
    assert_sockaddr(c->name, &h.dst, c->family, c->dst, c->dport);
}

static void test_table(void **state)
{
    size_t n = sizeof(cases) / sizeof(cases[0]);
    assert_true(n >= 40);
    for (size_t i = 0; i < n; i++) check_case(&cases[i]);
    print_message("%zu table cases\n", n);
}

/* ---- generated cases (too long for literals) --------------------------------- */

static char gbuf[SG_PROXY_HEADER_MAX + 64];

/* A v2 header: signature, ver_cmd, fam, block length, then block_len bytes
 * of `fill` (the caller overwrites what it needs). */
static size_t v2_build(unsigned ver_cmd, unsigned fam, size_t block_len, int fill)
{
    assert_true(16 + block_len <= sizeof(gbuf));
    memcpy(gbuf, SIG, 12);
    gbuf[12] = (char)ver_cmd;
    gbuf[13] = (char)fam;
    gbuf[14] = (char)(block_len >> 8);
    gbuf[15] = (char)block_len;
    memset(gbuf + 16, fill, block_len);
    return 16 + block_len;
}

static void check_generated(const char *name, size_t len, int want, int local)
{
    pp_case_t c = {.name = name,
                   .data = gbuf,
                   .len = len,
                   .want = want,
                   .tail = REQ,
                   .local = local,
                   .family = AF_INET,
                   .src = "1.1.1.1",
                   .sport = 257,
                   .dst = "1.1.1.1",
                   .dport = 257};
    check_case(&c);
}

static void test_v2_unix(void **state)
{
    size_t n = v2_build(0x21, 0x31, 216, '/');
    check_generated("v2 proxy unix stream", n, OK, 1);
    n = v2_build(0x21, 0x32, 216 + 3, 0);
    gbuf[16 + 216] = 0x04; /* NOOP TLV */
    check_generated("v2 proxy unix dgram + TLV", n, OK, 1);
    n = v2_build(0x21, 0x31, 215, '/');
    check_generated("v2 unix block of 215", n, BAD, 0);
}

static void test_v2_size_cap(void **state)
{
    /* One TLV filling the block up to exactly SG_PROXY_V2_MAX. */
    size_t tlv = SG_PROXY_V2_MAX - 16 - 12 - 3;
    size_t n = v2_build(0x21, 0x11, 12 + 3 + tlv, 1);
    gbuf[28] = 0x04;
    gbuf[29] = (char)(tlv >> 8);
    gbuf[30] = (char)tlv;
    assert_int_equal(n, SG_PROXY_V2_MAX);
    check_generated("v2 at the cap", n, OK, 0);

    /* Same, one byte more. */
    n = v2_build(0x21, 0x11, 12 + 3 + tlv + 1, 1);
    check_generated("v2 one over the cap", n, BAD, 0);

    /* Many small TLVs. */
    n = v2_build(0x20, 0x00, 300 * 3, 0);
    for (size_t i = 0; i < 300; i++) gbuf[16 + 3 * i] = 0x04;
    check_generated("v2 local + 300 NOOP TLVs", n, OK, 1);
}

static void test_v1_length_bound(void **state)
{
    /* "PROXY UNKNOWN " + x... + CRLF: 107 bytes pass, 108 do not. */
    memcpy(gbuf, "PROXY UNKNOWN ", 14);
    memset(gbuf + 14, 'x', 91);
    memcpy(gbuf + 105, "\r\n", 2);
    check_generated("v1 unknown of exactly 107 bytes", 107, OK, 1);
    memset(gbuf + 14, 'x', 92);
    memcpy(gbuf + 106, "\r\n", 2);
    check_generated("v1 unknown of 108 bytes", 108, BAD, 0);

    /* No CR at all: decided at byte 107, whatever follows. */
    memset(gbuf + 14, 'x', 93);
    check_generated("v1 no CR in 107 bytes", 107, BAD, 0);
    check_generated("v1 no CR in 106 bytes", 106, NEED, 0);
}

/* Bytes are fed one read at a time, as a connection would. */
static void test_incremental(void **state)
{
    static const char hdr[] = "PROXY TCP4 203.0.113.7 10.0.0.2 40000 8080\r\n";
    char buf[256];
    size_t have = 0;
    ssize_t r = 0;
    sg_proxy_header_t h;
    memcpy(buf, hdr, sizeof(hdr) - 1);
    memcpy(buf + sizeof(hdr) - 1, REQ, sizeof(REQ) - 1);
    for (size_t chunk = 1; chunk <= 7; chunk++) {
        for (have = 0, r = 0; r == 0;) {
            have += chunk;
            if (have > sizeof(hdr) - 1 + sizeof(REQ) - 1) break;
            r = parse_at_guard(buf, have, NULL, 0, &h);
        }
        assert_int_equal(r, sizeof(hdr) - 1);
        assert_sockaddr("incremental", &h.src, AF_INET, "203.0.113.7", 40000);
    }
}

static void test_impossible(void **state)
{
    assert_int_equal(sg_proxy_protocol_impossible(NULL, 0), 0);
    assert_int_equal(sg_proxy_protocol_parse(NULL, 0, NULL), 0);
    assert_int_equal(sg_proxy_protocol_impossible(place(B("P"), NULL, 0), 1), 0);
    assert_int_equal(sg_proxy_protocol_impossible(place(B("\r"), NULL, 0), 1), 0);
    assert_int_equal(sg_proxy_protocol_impossible(place(B("G"), NULL, 0), 1), 1);
    assert_int_equal(sg_proxy_protocol_impossible(place(B("\0"), NULL, 0), 1), 1);
    /* The first byte alone decides, even when later bytes already fail. */
    assert_int_equal(sg_proxy_protocol_impossible(place(B("PUT /"), NULL, 0), 5), 0);
    /* Every byte value: impossible() == 1 implies parse() == -1. */
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        const char *p = place(&c, 1, NULL, 0);
        ssize_t r = sg_proxy_protocol_parse(p, 1, NULL);
        if (sg_proxy_protocol_impossible(p, 1))
            assert_int_equal(r, -1);
        else
            assert_int_equal(r, 0);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),       cmocka_unit_test(test_v2_unix),
        cmocka_unit_test(test_v2_size_cap), cmocka_unit_test(test_v1_length_bound),
        cmocka_unit_test(test_incremental), cmocka_unit_test(test_impossible),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
