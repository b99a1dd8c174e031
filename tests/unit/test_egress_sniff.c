/* Egress sniffers (egress/sniff.h): the TLS ClientHello's SNI and the HTTP
 * request head's Host. Every input is placed so its last byte sits right
 * before a PROT_NONE page (an over-read crashes), fed whole and as every
 * prefix, with the answer checked against the contract: MORE before the end,
 * DONE with the name (in place) at the end, INVALID for the rest. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "egress/sniff.h"
#include "guard_page.h"

#include <stdio.h>
#include <string.h>

#define CAP 16384

/* A real ClientHello, generated once with Python 3.11 / OpenSSL 3.0.19 over
 * a socket pair (the client's first flight is the hello alone):
 *   a, b = socket.socketpair()
 *   c = ssl.create_default_context().wrap_socket(
 *       a, server_hostname="sandbox.example.com", do_handshake_on_connect=False)
 *   c.setblocking(False); c.do_handshake() -> SSLWantReadError; b.recv(65536)
 * One 512-byte record: TLS 1.3 + 1.2 suites, SNI "sandbox.example.com" at
 * offset 127, key_share, and a padding extension (0x0015) of zeros. */
static const unsigned char python_hello[] = {
    0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 0xe0, 0x82, 0xfa, 0x4a, 0x61,
    0x8e, 0x45, 0x72, 0x8f, 0xc3, 0x26, 0x7e, 0xdd, 0x78, 0x8e, 0x88, 0x3a, 0x65, 0xaa, 0x02, 0x29,
    0x3e, 0xcc, 0xf3, 0xc4, 0xf3, 0x70, 0x82, 0x88, 0x88, 0x73, 0x81, 0x20, 0x7d, 0x99, 0xf6, 0xfa,
    0x4e, 0x1e, 0xff, 0x70, 0x24, 0xbe, 0x72, 0x71, 0x17, 0x6f, 0xd2, 0x5d, 0x6b, 0xf8, 0x97, 0x62,
    0x51, 0xc6, 0xee, 0x84, 0xa9, 0xc8, 0xce, 0xfb, 0xf2, 0xfd, 0x51, 0xd9, 0x00, 0x24, 0x13, 0x02,
    0x13, 0x03, 0x13, 0x01, 0xc0, 0x2c, 0xc0, 0x30, 0xc0, 0x2b, 0xc0, 0x2f, 0xcc, 0xa9, 0xcc, 0xa8,
    0xc0, 0x24, 0xc0, 0x28, 0xc0, 0x23, 0xc0, 0x27, 0x00, 0x9f, 0x00, 0x9e, 0x00, 0x6b, 0x00, 0x67,
    0x00, 0xff, 0x01, 0x00, 0x01, 0x8f, 0x00, 0x00, 0x00, 0x18, 0x00, 0x16, 0x00, 0x00, 0x13, 0x73,
    0x61, 0x6e, 0x64, 0x62, 0x6f, 0x78, 0x2e, 0x65, 0x78, 0x61, 0x6d, 0x70, 0x6c, 0x65, 0x2e, 0x63,
    0x6f, 0x6d, 0x00, 0x0b, 0x00, 0x04, 0x03, 0x00, 0x01, 0x02, 0x00, 0x0a, 0x00, 0x16, 0x00, 0x14,
    0x00, 0x1d, 0x00, 0x17, 0x00, 0x1e, 0x00, 0x19, 0x00, 0x18, 0x01, 0x00, 0x01, 0x01, 0x01, 0x02,
    0x01, 0x03, 0x01, 0x04, 0x00, 0x23, 0x00, 0x00, 0x00, 0x16, 0x00, 0x00, 0x00, 0x17, 0x00, 0x00,
    0x00, 0x0d, 0x00, 0x2a, 0x00, 0x28, 0x04, 0x03, 0x05, 0x03, 0x06, 0x03, 0x08, 0x07, 0x08, 0x08,
    0x08, 0x09, 0x08, 0x0a, 0x08, 0x0b, 0x08, 0x04, 0x08, 0x05, 0x08, 0x06, 0x04, 0x01, 0x05, 0x01,
    0x06, 0x01, 0x03, 0x03, 0x03, 0x01, 0x03, 0x02, 0x04, 0x02, 0x05, 0x02, 0x06, 0x02, 0x00, 0x2b,
    0x00, 0x05, 0x04, 0x03, 0x04, 0x03, 0x03, 0x00, 0x2d, 0x00, 0x02, 0x01, 0x01, 0x00, 0x33, 0x00,
    0x26, 0x00, 0x24, 0x00, 0x1d, 0x00, 0x20, 0xf3, 0x13, 0xf4, 0xc9, 0xdb, 0x61, 0x16, 0x83, 0x31,
    0xa8, 0xd4, 0xb4, 0x48, 0xd6, 0xc9, 0xd5, 0xf9, 0x5f, 0x4a, 0x5a, 0xaf, 0x2f, 0xe2, 0x14, 0xe1,
    0x2d, 0x82, 0x5d, 0x55, 0x1b, 0xbc, 0x08, 0x00, 0x15, 0x00, 0xda, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00,
};
#define PYTHON_SNI "sandbox.example.com"
#define PYTHON_SNI_OFF 127

/* A real ClientHello without SNI, generated once with
 *   echo | openssl s_client -connect 127.0.0.1:PORT -noservername
 * (OpenSSL 3.0.19) against a Python socket server that saved the first bytes
 * it read. */
static const unsigned char openssl_nosni_hello[] = {
    0x16, 0x03, 0x01, 0x01, 0x24, 0x01, 0x00, 0x01, 0x20, 0x03, 0x03, 0x6b, 0xae, 0xf4, 0x8a, 0x4c,
    0x56, 0x2d, 0xcc, 0xf9, 0x2b, 0x1a, 0x40, 0x79, 0x45, 0xd8, 0xed, 0xfc, 0x03, 0x7e, 0x61, 0x7b,
    0x9b, 0x5a, 0xcd, 0x59, 0xd1, 0xf9, 0xaf, 0xfc, 0x83, 0xe6, 0x6b, 0x20, 0x73, 0x32, 0x79, 0x50,
    0x3d, 0xfa, 0xe3, 0xe4, 0xe8, 0x4c, 0x56, 0xa5, 0x34, 0x1c, 0xc7, 0xf6, 0x9a, 0xa6, 0x1a, 0x57,
    0x9a, 0x8b, 0x60, 0x3b, 0x18, 0x47, 0xb6, 0xa6, 0xb5, 0x78, 0x8e, 0x88, 0x00, 0x3e, 0x13, 0x02,
    0x13, 0x03, 0x13, 0x01, 0xc0, 0x2c, 0xc0, 0x30, 0x00, 0x9f, 0xcc, 0xa9, 0xcc, 0xa8, 0xcc, 0xaa,
    0xc0, 0x2b, 0xc0, 0x2f, 0x00, 0x9e, 0xc0, 0x24, 0xc0, 0x28, 0x00, 0x6b, 0xc0, 0x23, 0xc0, 0x27,
    0x00, 0x67, 0xc0, 0x0a, 0xc0, 0x14, 0x00, 0x39, 0xc0, 0x09, 0xc0, 0x13, 0x00, 0x33, 0x00, 0x9d,
    0x00, 0x9c, 0x00, 0x3d, 0x00, 0x3c, 0x00, 0x35, 0x00, 0x2f, 0x00, 0xff, 0x01, 0x00, 0x00, 0x99,
    0x00, 0x0b, 0x00, 0x04, 0x03, 0x00, 0x01, 0x02, 0x00, 0x0a, 0x00, 0x16, 0x00, 0x14, 0x00, 0x1d,
    0x00, 0x17, 0x00, 0x1e, 0x00, 0x19, 0x00, 0x18, 0x01, 0x00, 0x01, 0x01, 0x01, 0x02, 0x01, 0x03,
    0x01, 0x04, 0x00, 0x23, 0x00, 0x00, 0x00, 0x16, 0x00, 0x00, 0x00, 0x17, 0x00, 0x00, 0x00, 0x0d,
    0x00, 0x2a, 0x00, 0x28, 0x04, 0x03, 0x05, 0x03, 0x06, 0x03, 0x08, 0x07, 0x08, 0x08, 0x08, 0x09,
    0x08, 0x0a, 0x08, 0x0b, 0x08, 0x04, 0x08, 0x05, 0x08, 0x06, 0x04, 0x01, 0x05, 0x01, 0x06, 0x01,
    0x03, 0x03, 0x03, 0x01, 0x03, 0x02, 0x04, 0x02, 0x05, 0x02, 0x06, 0x02, 0x00, 0x2b, 0x00, 0x09,
    0x08, 0x03, 0x04, 0x03, 0x03, 0x03, 0x02, 0x03, 0x01, 0x00, 0x2d, 0x00, 0x02, 0x01, 0x01, 0x00,
    0x33, 0x00, 0x26, 0x00, 0x24, 0x00, 0x1d, 0x00, 0x20, 0xcb, 0x3e, 0x1e, 0x2f, 0x98, 0x95, 0x89,
    0x52, 0x4f, 0x2e, 0x9e, 0xa9, 0xe0, 0xbc, 0xf1, 0xb1, 0x5a, 0x15, 0xb7, 0x92, 0xf5, 0x97, 0xfe,
    0xc7, 0xc2, 0x35, 0xaa, 0x47, 0x4f, 0xaa, 0xa9, 0x53,
};

/* ---- running a sniffer against a guard page --------------------------------- */

typedef sg_sniff_result_t (*sniffer_t)(const char *, size_t, size_t, sg_slice_t *);

typedef struct {
    sg_sniff_result_t result;
    size_t off;     /* DONE: the name's offset in the input */
    char name[300]; /* DONE: the name, NUL-terminated */
} outcome_t;

/* Runs the sniffer on a guarded copy of data[0..len) and checks the output
 * contract: *name untouched unless DONE; on DONE it lies inside the input. */
static outcome_t run(sniffer_t sniff, const void *data, size_t len, size_t max)
{
    outcome_t o = {0};
    guarded_t g = guard_copy(data, len);
    sg_slice_t sentinel = {(const char *)&o, 12345}, name = sentinel;
    o.result = sniff(g.data, len, max, &name);
    assert_true(o.result == SG_SNIFF_MORE || o.result == SG_SNIFF_DONE ||
                o.result == SG_SNIFF_INVALID);
    if (o.result != SG_SNIFF_DONE) {
        assert_ptr_equal(name.base, sentinel.base);
        assert_int_equal(name.len, sentinel.len);
    } else {
        assert_true(name.base >= g.data && name.base + name.len <= g.data + len);
        assert_true(name.len <= SG_SNIFF_NAME_MAX);
        o.off = (size_t)(name.base - g.data);
        memcpy(o.name, name.base, name.len);
        o.name[name.len] = '\0';
    }
    guard_free(&g);
    return o;
}

/* Feeds every prefix: MORE up to complete-1 bytes, then DONE with want
 * (NULL: DONE with no name) from complete bytes to len. */
static void every_prefix_done(sniffer_t sniff, const void *data, size_t len, size_t complete,
                              const char *want)
{
    for (size_t p = 0; p <= len; p++) {
        outcome_t o = run(sniff, data, p, CAP);
        if (p < complete) {
            if (o.result != SG_SNIFF_MORE)
                fail_msg("prefix %zu/%zu: %d, want MORE", p, len, o.result);
            continue;
        }
        if (o.result != SG_SNIFF_DONE) fail_msg("prefix %zu/%zu: %d, want DONE", p, len, o.result);
        assert_string_equal(o.name, want ? want : "");
    }
}

static outcome_t tls(const void *data, size_t len)
{
    return run(sg_sniff_tls_sni, data, len, CAP);
}

static outcome_t http(const char *head)
{
    return run(sg_sniff_http_host, head, strlen(head), CAP);
}

/* ---- building ClientHellos ---------------------------------------------------- */

typedef struct {
    unsigned char b[70000];
    size_t n;
} bytes_t;

static void put(bytes_t *o, const void *p, size_t n)
{
    assert_true(o->n + n <= sizeof(o->b));
    memcpy(o->b + o->n, p, n);
    o->n += n;
}

static void put_u8(bytes_t *o, size_t v)
{
    unsigned char c = (unsigned char)v;
    put(o, &c, 1);
}

static void put_u16(bytes_t *o, size_t v)
{
    put_u8(o, v >> 8);
    put_u8(o, v);
}

/* One extension: type, length, data. */
static void put_ext(bytes_t *o, size_t type, const void *data, size_t n)
{
    put_u16(o, type);
    put_u16(o, n);
    put(o, data, n);
}

/* server_name extension holding one host_name entry. */
static void put_sni(bytes_t *o, const char *name, size_t n)
{
    put_u16(o, 0);
    put_u16(o, n + 5);
    put_u16(o, n + 3);
    put_u8(o, 0);
    put_u16(o, n);
    put(o, name, n);
}

/* The handshake message: a ClientHello with the given extension block
 * (exts NULL: no extension block at all, as TLS 1.0 clients send). */
static void put_hello_message(bytes_t *o, const bytes_t *exts)
{
    size_t body = 2 + 32 + 1 + 4 + 2 + (exts ? 2 + exts->n : 0);
    static const unsigned char random[32] = {0x11, 0x22, 0x33};
    put_u8(o, 1);
    put_u8(o, body >> 16);
    put_u16(o, body & 0xffff);
    put_u16(o, 0x0303);
    put(o, random, sizeof(random));
    put_u8(o, 0);  /* session id */
    put_u16(o, 2); /* cipher suites */
    put_u16(o, 0x1301);
    put_u8(o, 1); /* compression methods */
    put_u8(o, 0);
    if (exts) {
        put_u16(o, exts->n);
        put(o, exts->b, exts->n);
    }
}

/* Wraps a handshake payload into records whose payloads end at the given
 * offsets (ascending; the last record takes the rest). */
static void put_records(bytes_t *o, const unsigned char *payload, size_t n, const size_t *cuts,
                        size_t n_cuts)
{
    size_t start = 0;
    for (size_t i = 0; i <= n_cuts; i++) {
        size_t end = i < n_cuts ? cuts[i] : n;
        assert_true(end > start && end <= n);
        put_u8(o, 22);
        put_u16(o, 0x0301);
        put_u16(o, end - start);
        put(o, payload + start, end - start);
        start = end;
    }
}

/* A single-record hello with the given extensions. */
static void build_hello(bytes_t *o, const bytes_t *exts)
{
    static bytes_t msg;
    msg.n = 0;
    put_hello_message(&msg, exts);
    put_records(o, msg.b, msg.n, NULL, 0);
}

/* ---- TLS ------------------------------------------------------------------ */

static void test_tls_real_hello_every_prefix(void **state)
{
    (void)state;
    every_prefix_done(sg_sniff_tls_sni, python_hello, sizeof(python_hello), sizeof(python_hello),
                      PYTHON_SNI);
    outcome_t o = tls(python_hello, sizeof(python_hello));
    assert_int_equal(o.off, PYTHON_SNI_OFF);

    /* What follows the hello (a TLS 1.3 middlebox ChangeCipherSpec) does not matter. */
    static bytes_t b;
    b.n = 0;
    put(&b, python_hello, sizeof(python_hello));
    put(&b, "\x14\x03\x03\x00\x01\x01", 6);
    o = tls(b.b, b.n);
    assert_int_equal(o.result, SG_SNIFF_DONE);
    assert_string_equal(o.name, PYTHON_SNI);
}

static void test_tls_real_hello_fragmented(void **state)
{
    (void)state;
    const unsigned char *payload = python_hello + 5;
    size_t n = sizeof(python_hello) - 5;
    /* 2 records split in the random; 3 records split inside the handshake
     * header and right before the SNI extension; then one byte per record
     * for the first 40 bytes. */
    static const size_t two[] = {20};
    static const size_t three[] = {2, PYTHON_SNI_OFF - 5 - 9};
    size_t tiny[40];
    for (size_t i = 0; i < 40; i++) tiny[i] = i + 1;
    struct {
        const size_t *cuts;
        size_t n_cuts;
    } splits[] = {{two, 1}, {three, 2}, {tiny, 40}};
    for (size_t s = 0; s < sizeof(splits) / sizeof(splits[0]); s++) {
        static bytes_t b;
        b.n = 0;
        put_records(&b, payload, n, splits[s].cuts, splits[s].n_cuts);
        assert_int_equal(b.n, sizeof(python_hello) + 5 * splits[s].n_cuts);
        every_prefix_done(sg_sniff_tls_sni, b.b, b.n, b.n, PYTHON_SNI);
    }
}

static void test_tls_name_split_across_records(void **state)
{
    (void)state;
    /* Documented: a host_name with a record header inside it cannot be
     * returned in place, so the hello is INVALID (caller decides on the
     * address); the prefixes before the cut still ask for more. */
    static const size_t cut[] = {PYTHON_SNI_OFF - 5 + 4};
    static bytes_t b;
    b.n = 0;
    put_records(&b, python_hello + 5, sizeof(python_hello) - 5, cut, 1);
    assert_int_equal(tls(b.b, PYTHON_SNI_OFF - 1).result, SG_SNIFF_MORE);
    assert_int_equal(tls(b.b, PYTHON_SNI_OFF).result, SG_SNIFF_INVALID);
    assert_int_equal(tls(b.b, b.n).result, SG_SNIFF_INVALID);
}

static void test_tls_no_sni(void **state)
{
    (void)state;
    every_prefix_done(sg_sniff_tls_sni, openssl_nosni_hello, sizeof(openssl_nosni_hello),
                      sizeof(openssl_nosni_hello), NULL);
    /* A TLS 1.0-style hello without an extension block at all. */
    static bytes_t b;
    b.n = 0;
    build_hello(&b, NULL);
    every_prefix_done(sg_sniff_tls_sni, b.b, b.n, b.n, NULL);
}

static void test_tls_grease_and_ech_shapes(void **state)
{
    (void)state;
    /* GREASE extension and cipher-like values, an ECH outer extension
     * (0xfe0d) with opaque contents, an unknown name_type entry before the
     * host_name in the list, then a trailing empty GREASE extension. */
    static bytes_t exts, b;
    unsigned char ech[200];
    for (size_t i = 0; i < sizeof(ech); i++) ech[i] = (unsigned char)(i * 7);
    exts.n = b.n = 0;
    put_ext(&exts, 0x0a0a, "", 0);
    put_ext(&exts, 0xfe0d, ech, sizeof(ech));
    put_u16(&exts, 0);                            /* server_name */
    put_u16(&exts, 2 + 3 + 4 + 3 + 14);           /* ext len */
    put_u16(&exts, 3 + 4 + 3 + 14);               /* list len */
    put(&exts, "\x2a\x00\x04zzzz", 7);            /* unknown name_type 42 */
    put(&exts, "\x00\x00\x0epublic.example", 17); /* host_name */
    put_ext(&exts, 0xdada, "\x00", 1);
    build_hello(&b, &exts);
    every_prefix_done(sg_sniff_tls_sni, b.b, b.n, b.n, "public.example");
}

static void test_tls_garbage_and_wrong_type(void **state)
{
    (void)state;
    static const struct {
        const char *data;
        size_t len;
    } junk[] = {
        {"GET / HTTP/1.1\r\n", 16}, /* HTTP to the TLS port: fails at byte 0 */
        {"SSH-2.0-OpenSSH_9.2\r\n", 21},
        {"\x17\x03\x03\x00\x10", 5},                 /* application data */
        {"\x15\x03\x03\x00\x02\x02\x28", 7},         /* alert */
        {"\x14\x03\x03\x00\x01\x01", 6},             /* change cipher spec */
        {"\x16\x02\x00\x00\x04", 5},                 /* legacy version major 2 */
        {"\x16\x03\x01\x00\x00", 5},                 /* empty record */
        {"\x16\x03\x01\x41\x01", 5},                 /* 16641 > 16384 + 256 */
        {"\x16\x03\x01\x00\x04\x02\x00\x00\x00", 9}, /* ServerHello */
        {"\x16\x03\x01\x00\x04\x01\x00\x00\x00", 9}, /* empty hello body */
        /* SSLv2-compatible ClientHello (2-byte header, msg type 1) */
        {"\x80\x2e\x01\x03\x01\x00\x15\x00\x00\x00\x10", 11},
    };
    for (size_t i = 0; i < sizeof(junk) / sizeof(junk[0]); i++) {
        outcome_t o = tls(junk[i].data, junk[i].len);
        if (o.result != SG_SNIFF_INVALID) fail_msg("junk %zu: %d", i, o.result);
    }
    assert_int_equal(tls("\x16", 1).result, SG_SNIFF_MORE);
    assert_int_equal(tls("", 0).result, SG_SNIFF_MORE);
    assert_int_equal(tls("G", 1).result, SG_SNIFF_INVALID);

    /* A real hello whose second record is not a handshake record. */
    static const size_t cut[] = {100};
    static bytes_t b;
    b.n = 0;
    put_records(&b, python_hello + 5, sizeof(python_hello) - 5, cut, 1);
    b.b[5 + 100] = 23;
    assert_int_equal(tls(b.b, 5 + 100).result, SG_SNIFF_MORE);
    assert_int_equal(tls(b.b, 5 + 101).result, SG_SNIFF_INVALID);
}

static void test_tls_max(void **state)
{
    (void)state;
    size_t n = sizeof(python_hello);
    /* A hello of exactly max bytes fits; bytes past max are never read. */
    assert_int_equal(run(sg_sniff_tls_sni, python_hello, n, n).result, SG_SNIFF_DONE);
    static bytes_t b;
    b.n = 0;
    put(&b, python_hello, n);
    put(&b, "\x17\x03\x03", 3);
    assert_int_equal(run(sg_sniff_tls_sni, b.b, b.n, n).result, SG_SNIFF_DONE);
    /* One byte short: known as soon as the handshake header gives the length. */
    assert_int_equal(run(sg_sniff_tls_sni, python_hello, 8, n - 1).result, SG_SNIFF_MORE);
    assert_int_equal(run(sg_sniff_tls_sni, python_hello, 9, n - 1).result, SG_SNIFF_INVALID);
    assert_int_equal(run(sg_sniff_tls_sni, python_hello, n, n - 1).result, SG_SNIFF_INVALID);
    /* A fragmented hello: its record headers count against max too. */
    static const size_t cut[] = {300};
    b.n = 0;
    put_records(&b, python_hello + 5, n - 5, cut, 1);
    assert_int_equal(run(sg_sniff_tls_sni, b.b, b.n, b.n).result, SG_SNIFF_DONE);
    assert_int_equal(run(sg_sniff_tls_sni, b.b, b.n, b.n - 1).result, SG_SNIFF_INVALID);
    assert_int_equal(run(sg_sniff_tls_sni, b.b, b.n - 1, b.n - 1).result, SG_SNIFF_INVALID);
    /* A handshake header promising more than max: rejected at once. */
    assert_int_equal(run(sg_sniff_tls_sni, "\x16\x03\x01\x10\x00\x01\x00\x0f\xfc", 9, 1024).result,
                     SG_SNIFF_INVALID);
    assert_int_equal(run(sg_sniff_tls_sni, "", 0, 0).result, SG_SNIFF_INVALID);
}

/* Builds a single-record hello around exts and expects INVALID for it. */
static void expect_invalid_hello(const bytes_t *exts, const char *what)
{
    static bytes_t b;
    b.n = 0;
    build_hello(&b, exts);
    outcome_t o = tls(b.b, b.n);
    if (o.result != SG_SNIFF_INVALID) fail_msg("%s: %d, want INVALID", what, o.result);
}

static void test_tls_malformed_extensions(void **state)
{
    (void)state;
    static bytes_t e;
    char long_name[300];
    memset(long_name, 'a', sizeof(long_name));

    e.n = 0;
    put_sni(&e, "a.example", 9);
    put_sni(&e, "b.example", 9);
    expect_invalid_hello(&e, "two server_name extensions");

    e.n = 0;
    put_u16(&e, 0);
    put_u16(&e, 2 + 2 * 12);
    put_u16(&e, 2 * 12);
    put(&e,
        "\x00\x00\x09"
        "a.example"
        "\x00\x00\x09"
        "b.example",
        24);
    expect_invalid_hello(&e, "two host_name entries");

    e.n = 0;
    put_sni(&e, "a\0.example", 10);
    expect_invalid_hello(&e, "NUL in host_name");
    e.n = 0;
    put_sni(&e, "a\n.example", 10);
    expect_invalid_hello(&e, "LF in host_name");
    e.n = 0;
    put_sni(&e, "a .example", 10);
    expect_invalid_hello(&e, "space in host_name");
    e.n = 0;
    put_sni(&e, "\xc3\xa9.example", 10);
    expect_invalid_hello(&e, "non-ASCII host_name");
    e.n = 0;
    put_sni(&e, "", 0);
    expect_invalid_hello(&e, "empty host_name");
    e.n = 0;
    put_sni(&e, long_name, 256);
    expect_invalid_hello(&e, "256-byte host_name");

    e.n = 0;
    put_ext(&e, 0, "", 0);
    expect_invalid_hello(&e, "empty server_name extension");

    e.n = 0;
    put_u16(&e, 0);
    put_u16(&e, 2 + 12 + 1);
    put_u16(&e, 12);
    put(&e,
        "\x00\x00\x09"
        "a.example"
        "x",
        13);
    expect_invalid_hello(&e, "server_name list shorter than the extension");

    e.n = 0;
    put_u16(&e, 0);
    put_u16(&e, 2 + 12);
    put_u16(&e, 12);
    put(&e,
        "\x00\x00\x0a"
        "a.example",
        12);
    expect_invalid_hello(&e, "host_name longer than its list");

    e.n = 0;
    put_u16(&e, 0x000a);
    put_u16(&e, 50); /* longer than the block */
    put(&e, "\x00\x02\x00\x1d", 4);
    expect_invalid_hello(&e, "extension overruns the block");

    e.n = 0;
    put_ext(&e, 0x000b, "\x01\x00", 2);
    put_u8(&e, 0x00); /* 1 stray byte: not a whole extension header */
    expect_invalid_hello(&e, "trailing byte in the extension block");

    /* 255 bytes is the longest name returned. */
    static bytes_t b;
    e.n = b.n = 0;
    put_sni(&e, long_name, 255);
    build_hello(&b, &e);
    outcome_t o = tls(b.b, b.n);
    assert_int_equal(o.result, SG_SNIFF_DONE);
    assert_int_equal(strlen(o.name), 255);
}

static void test_tls_malformed_body(void **state)
{
    (void)state;
    static bytes_t e, b;
    e.n = 0;
    put_sni(&e, "a.example", 9);
    /* Offsets in a built hello: 5 record + 4 handshake header, then version
     * (9), random (11), session id length (43), cipher suites length (44). */
    struct {
        size_t off;
        unsigned char value;
        const char *what;
    } pokes[] = {
        {9, 2, "client version major 2"},
        {43, 33, "session id over 32"},
        {45, 3, "odd cipher suites length"},
        {45, 0, "no cipher suites"},
        {48, 0, "no compression methods"},
        {50, 0xff, "extension block too long"},
        {51, 0x0f, "extension block too short"},
        {8, 0xff, "extensions short of the hello"},
        {8, 0x10, "hello shorter than its extensions"},
    };
    for (size_t i = 0; i < sizeof(pokes) / sizeof(pokes[0]); i++) {
        b.n = 0;
        build_hello(&b, &e);
        assert_int_equal(tls(b.b, b.n).result, SG_SNIFF_DONE);
        b.b[pokes[i].off] = pokes[i].value;
        outcome_t o = tls(b.b, b.n);
        if (o.result != SG_SNIFF_INVALID) fail_msg("%s: %d", pokes[i].what, o.result);
    }

    /* A record longer than the hello: the hello is complete, the rest of
     * the record is not waited for. A hello longer than its record: the
     * next record is waited for (the hello ends in an extension after the
     * SNI, or the name would straddle the record boundary). */
    put_ext(&e, 0x0017, "", 0);
    b.n = 0;
    build_hello(&b, &e);
    b.b[4] = (unsigned char)(b.b[4] + 10);
    outcome_t o = tls(b.b, b.n);
    assert_int_equal(o.result, SG_SNIFF_DONE);
    assert_string_equal(o.name, "a.example");
    b.b[4] = (unsigned char)(b.b[4] - 11);
    assert_int_equal(tls(b.b, b.n - 1).result, SG_SNIFF_MORE);
    /* The hello's last byte is where the next record's header starts. */
    assert_int_equal(tls(b.b, b.n).result, SG_SNIFF_INVALID);
    b.b[b.n - 1] = 22;
    assert_int_equal(tls(b.b, b.n).result, SG_SNIFF_MORE);
}

/* ---- HTTP ----------------------------------------------------------------- */

static void expect_host(const char *head, const char *want)
{
    outcome_t o = http(head);
    if (o.result != SG_SNIFF_DONE) fail_msg("%s: %d, want DONE", head, o.result);
    assert_string_equal(o.name, want);
}

static void expect_http_invalid(const char *head)
{
    outcome_t o = http(head);
    if (o.result != SG_SNIFF_INVALID) fail_msg("%s: %d, want INVALID", head, o.result);
}

static void test_http_hosts(void **state)
{
    (void)state;
    expect_host("GET / HTTP/1.1\r\nHost: example.com\r\n\r\n", "example.com");
    expect_host("GET / HTTP/1.0\r\nHost: example.com:8080\r\n\r\n", "example.com");
    expect_host("GET / HTTP/1.1\r\nhost: a.example\r\n\r\n", "a.example");
    expect_host("GET / HTTP/1.1\r\nHOST: a.example\r\n\r\n", "a.example");
    expect_host("GET / HTTP/1.1\r\nhOsT:\t a.example \t\r\n\r\n", "a.example");
    expect_host("GET / HTTP/1.1\r\nHost:a.example\r\n\r\n", "a.example");
    expect_host("GET / HTTP/1.1\r\nHost: [2001:db8::1]:8080\r\n\r\n", "2001:db8::1");
    expect_host("GET / HTTP/1.1\r\nHost: [::ffff:192.0.2.1]\r\n\r\n", "::ffff:192.0.2.1");
    expect_host("GET / HTTP/1.1\r\nHost: 192.0.2.1:80\r\n\r\n", "192.0.2.1");
    expect_host("GET / HTTP/1.1\r\nHost: Mixed.Case.Example.\r\n\r\n", "Mixed.Case.Example.");
    expect_host("OPTIONS * HTTP/1.1\r\nX-Host: evil.example\r\nHost: ok.example\r\n\r\n",
                "ok.example");
    /* Absolute form: the Host header decides; without one, the target does. */
    expect_host("GET http://target.example/x HTTP/1.1\r\nHost: header.example\r\n\r\n",
                "header.example");
    expect_host("GET http://target.example:8080/x?y HTTP/1.1\r\nAccept: */*\r\n\r\n",
                "target.example");
    expect_host("GET HTTP://[2001:db8::2]?q HTTP/1.1\r\n\r\n", "2001:db8::2");
    expect_host("GET http://t.example HTTP/1.1\r\n\r\n", "t.example");
    /* No name at all. */
    expect_host("GET / HTTP/1.0\r\n\r\n", "");
    expect_host("GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", "");
    expect_host("GET https://t.example/ HTTP/1.1\r\n\r\n", "");
    expect_host("CONNECT t.example:443 HTTP/1.1\r\n\r\n", "");

    outcome_t o = http("GET / HTTP/1.1\r\nHost: h.example\r\n\r\n");
    assert_int_equal(o.off, strlen("GET / HTTP/1.1\r\nHost: "));
}

static void test_http_captured_heads(void **state)
{
    (void)state;
    /* Heads as sent by curl 7.88.1 (plain and through -x as a proxy),
     * python-requests 2.28.1 (with a body after the head) and
     * Python-urllib/3.11, captured by a socket server. */
    expect_host("GET / HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/7.88.1\r\n"
                "Accept: */*\r\n\r\n",
                "example.com");
    expect_host("GET http://api.example.org:8080/v1/x?y=1 HTTP/1.1\r\n"
                "Host: api.example.org:8080\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n"
                "Proxy-Connection: Keep-Alive\r\n\r\n",
                "api.example.org");
    expect_host("POST /upload HTTP/1.1\r\nUser-Agent: python-requests/2.28.1\r\n"
                "Accept-Encoding: gzip, deflate\r\nAccept: */*\r\nConnection: keep-alive\r\n"
                "Host: [2001:db8::1]:8080\r\nContent-Length: 1\r\n\r\nx",
                "2001:db8::1");
    expect_host("GET /p HTTP/1.1\r\nAccept-Encoding: identity\r\nHost: 127.0.0.1:18080\r\n"
                "User-Agent: Python-urllib/3.11\r\nConnection: close\r\n\r\n",
                "127.0.0.1");
}

static void test_http_every_prefix(void **state)
{
    (void)state;
    static const char *heads[] = {
        ("GET /index.html?q=1 HTTP/1.1\r\nHost: www.example.com:8080\r\nUser-Agent: t\r\n"
         "Accept: */*\r\n\r\nbody"),
        "GET http://abs.example/ HTTP/1.0\r\nX: \x80\xff\r\n\r\n",
        "GET / HTTP/1.1\r\n\r\n",
    };
    static const char *want[] = {"www.example.com", "abs.example", NULL};
    for (size_t i = 0; i < 3; i++) {
        const char *end = strstr(heads[i], "\r\n\r\n") + 4;
        every_prefix_done(sg_sniff_http_host, heads[i], strlen(heads[i]), (size_t)(end - heads[i]),
                          want[i]);
    }
}

static void test_http_invalid(void **state)
{
    (void)state;
    /* Two Host headers, however spelled. */
    expect_http_invalid("GET / HTTP/1.1\r\nHost: a.example\r\nhost: a.example\r\n\r\n");
    expect_http_invalid("GET / HTTP/1.1\r\nHost: a.example\r\nX: y\r\nHOST: b.example\r\n\r\n");
    /* Implausible hosts. */
    static const char *bad_hosts[] = {
        "",
        " ",
        "a b.example",
        "a/b",
        "user@a.example",
        "a.example?",
        "a#b",
        "a\\b",
        "2001:db8::1",
        "[2001:db8::1",
        "[zz::1]",
        "[1.2.3.4]",
        "[::1]x",
        "a:",
        "a:65536",
        "a:123456",
        "a:8o",
        "a.example:80:80",
        "\x80.example",
        "\"a\"",
        "<a>",
        "[]",
        ":80",
    };
    char head[512];
    for (size_t i = 0; i < sizeof(bad_hosts) / sizeof(bad_hosts[0]); i++) {
        snprintf(head, sizeof(head), "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", bad_hosts[i]);
        expect_http_invalid(head);
    }
    char long_host[300];
    memset(long_host, 'a', 256);
    long_host[256] = '\0';
    snprintf(head, sizeof(head), "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", long_host);
    expect_http_invalid(head);
    long_host[255] = '\0';
    snprintf(head, sizeof(head), "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", long_host);
    expect_host(head, long_host);
    /* Absolute form without Host: the authority must be plausible too. */
    expect_http_invalid("GET http://user@a.example/ HTTP/1.1\r\n\r\n");
    expect_http_invalid("GET http:///x HTTP/1.1\r\n\r\n");

    /* Not HTTP/1.x, or off the grammar. */
    static const char *junk[] = {
        "\x16\x03\x01\x02\x00\x01",
        "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        "GET / HTTP/2.0\r\nHost: a\r\n\r\n",
        "GET / HTTP/1.2\r\nHost: a\r\n\r\n",
        "GET / HTTP/0.9\r\nHost: a\r\n\r\n",
        "GET / http/1.1\r\nHost: a\r\n\r\n",
        "GET /\r\n",
        "GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
        " GET / HTTP/1.1\r\n\r\n",
        "\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        "G@T / HTTP/1.1\r\n\r\n",
        "GET /\x7f HTTP/1.1\r\n\r\n",
        "GET /\xc3\xa9 HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\nHost: a\r\n\r\n", /* bare LF: rejected everywhere */
        "GET / HTTP/1.1\r\nHost: a\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\n\n",
        "GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
        "GET / HTTP/1.1\r\n: a\r\n\r\n",
        "GET / HTTP/1.1\r\nX: y\r\n folded\r\n\r\n",
        "GET / HTTP/1.1\r\nHo{st: a\r\n\r\n",
        "GET / HTTP/1.1\r\nX: a\x01\r\n\r\n",
        "GET / HTTP/1.1\r\nX: a\x7f\r\n\r\n",
        "SSH-2.0-OpenSSH_9.2\r\n",
    };
    for (size_t i = 0; i < sizeof(junk) / sizeof(junk[0]); i++) expect_http_invalid(junk[i]);
    /* NUL inside a value. */
    assert_int_equal(run(sg_sniff_http_host, "GET / HTTP/1.1\r\nX: a\0b\r\n\r\n", 26, CAP).result,
                     SG_SNIFF_INVALID);
}

static void test_http_max(void **state)
{
    (void)state;
    const char *head = "GET / HTTP/1.1\r\nHost: a.example\r\n\r\n";
    size_t n = strlen(head);
    assert_int_equal(run(sg_sniff_http_host, head, n, n).result, SG_SNIFF_DONE);
    assert_int_equal(run(sg_sniff_http_host, head, n - 1, n).result, SG_SNIFF_MORE);
    assert_int_equal(run(sg_sniff_http_host, head, n - 1, n - 1).result, SG_SNIFF_INVALID);
    assert_int_equal(run(sg_sniff_http_host, head, n, n - 1).result, SG_SNIFF_INVALID);
    /* A body after the head is never looked at, even past max. */
    const char *with_body = "GET / HTTP/1.1\r\nHost: a.example\r\n\r\nxxxxxxxxxxxxxxxxxxxxxxx";
    outcome_t o = run(sg_sniff_http_host, with_body, strlen(with_body), n);
    assert_int_equal(o.result, SG_SNIFF_DONE);
    assert_string_equal(o.name, "a.example");
    /* A head that keeps growing: MORE below the cap, INVALID at it. */
    static char big[CAP + 100];
    memcpy(big, "GET / HTTP/1.1\r\nX: ", 19);
    memset(big + 19, 'x', sizeof(big) - 19);
    assert_int_equal(run(sg_sniff_http_host, big, CAP - 1, CAP).result, SG_SNIFF_MORE);
    assert_int_equal(run(sg_sniff_http_host, big, CAP, CAP).result, SG_SNIFF_INVALID);
    assert_int_equal(run(sg_sniff_http_host, big, sizeof(big), CAP).result, SG_SNIFF_INVALID);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tls_real_hello_every_prefix),
        cmocka_unit_test(test_tls_real_hello_fragmented),
        cmocka_unit_test(test_tls_name_split_across_records),
        cmocka_unit_test(test_tls_no_sni),
        cmocka_unit_test(test_tls_grease_and_ech_shapes),
        cmocka_unit_test(test_tls_garbage_and_wrong_type),
        cmocka_unit_test(test_tls_max),
        cmocka_unit_test(test_tls_malformed_extensions),
        cmocka_unit_test(test_tls_malformed_body),
        cmocka_unit_test(test_http_hosts),
        cmocka_unit_test(test_http_captured_heads),
        cmocka_unit_test(test_http_every_prefix),
        cmocka_unit_test(test_http_invalid),
        cmocka_unit_test(test_http_max),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
