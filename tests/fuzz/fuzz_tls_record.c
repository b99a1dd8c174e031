/* libFuzzer harness for the TLS 1.3 record layer (tls/record.c): what a
 * client can make sandgate's record reader do after the handshake.
 *
 * Two record states share one pair of traffic secrets: `server` is
 * sandgate's (reads the client's direction), `client` is its mirror (its
 * write keys are the server's read keys and the other way round), so the
 * harness can produce records that authenticate and reach the code behind
 * the AEAD check. Input: a suite byte, then operations, each an op byte and
 * its operands:
 *   0 raw:      2-byte length L, then L bytes opened as one record as they are
 *               (framing, length and type checks; the tag fails);
 *   1 sealed:   type byte, 2-byte content length, padding byte: the client
 *               seals content || type || zeros (as a padded TLS 1.3 record)
 *               and the server opens it; the result must match a model of
 *               padding removal;
 *   2 tampered: like 1, then one byte (position and mask from the input) is
 *               changed: open must fail;
 *   3 key update: a shape byte (well-formed either way, one byte replaced
 *               from the input, or all five from the input) sealed as a
 *               handshake record: a well-formed KeyUpdate renews the
 *               server's read keys (the client renews its write keys to
 *               match and, when asked, the server's reply must open on the
 *               client); anything else is an alert;
 *   4 reply:    2-byte length: the server seals that many bytes, the client
 *               opens them unchanged;
 *   5 keylog:   a NUL- or end-terminated line for sg_tls__rec_parse_keylog.
 * After a failed open a real connection is closed, so the harness stops.
 * Build and run: tests/fuzz/run.sh (see tests/fuzz/README.md). */
#include "tls/tls_internal.h"

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

#define REC_MAX (5 + SG_TLS_MAX_CIPHERTEXT)

typedef struct {
    const uint8_t *p;
    size_t left;
} input_t;

static int take(input_t *in, void *out, size_t n)
{
    if (in->left < n) return 0;
    memcpy(out, in->p, n);
    in->p += n;
    in->left -= n;
    return 1;
}

static size_t take_u16(input_t *in, size_t max)
{
    uint8_t b[2] = {0, 0};
    take(in, b, sizeof(b));
    size_t v = (size_t)b[0] << 8 | b[1];
    return v % (max + 1);
}

/* Content bytes: from the input while it lasts, then a pattern. */
static void fill(input_t *in, uint8_t *out, size_t n)
{
    size_t k = in->left < n ? in->left : n;
    take(in, out, k);
    for (size_t i = k; i < n; i++) out[i] = (uint8_t)(i * 131 + 7);
}

/* The mirror of r: what the client holds for the same connection. */
static void mirror(const sg_tls_rec_t *r, sg_tls_rec_t *m)
{
    memset(m, 0, sizeof(*m));
    memcpy(m->rd.secret, r->wr.secret, sizeof(m->rd.secret));
    memcpy(m->wr.secret, r->rd.secret, sizeof(m->wr.secret));
    m->secret_len = r->secret_len;
}

static int initialized;

static int sealed_roundtrip(input_t *in, sg_tls_rec_t *server, sg_tls_rec_t *client, int tamper)
{
    static uint8_t plain[SG_TLS_MAX_PLAINTEXT + 1], rec[REC_MAX], out[REC_MAX];
    uint8_t type = 0, pad = 0;
    take(in, &type, 1);
    size_t len = take_u16(in, SG_TLS_MAX_PLAINTEXT);
    take(in, &pad, 1);
    /* content || type || pad zeros, then seal appends one more zero
     * (sealed as "type 0"): the record carries pad + 1 bytes of padding */
    size_t padding = pad % 64;
    if (len + 1 + padding > SG_TLS_MAX_PLAINTEXT) padding = 0;
    if (len + 1 > SG_TLS_MAX_PLAINTEXT) len = SG_TLS_MAX_PLAINTEXT - 1;
    fill(in, plain, len);
    plain[len] = type;
    memset(plain + len + 1, 0, padding);
    size_t n = sg_tls__rec_seal(client, 0, plain, len + 1 + padding, rec);
    CHECK(n == 5 + len + 1 + padding + 1 + 16);
    if (tamper) {
        size_t at = take_u16(in, 0xffff) % n;
        uint8_t mask = 0;
        take(in, &mask, 1);
        rec[at] ^= mask ? mask : 1;
    }
    size_t out_len = 0;
    uint8_t got_type = 0;
    int alert = sg_tls__rec_open(server, rec, n, out, &out_len, &got_type);
    if (tamper) {
        CHECK(alert != 0);
        return -1;
    }
    /* model: the content type is the last non-zero byte */
    size_t end = len + 1;
    while (end && !plain[end - 1]) end--;
    if (!end) {
        CHECK(alert == SG_TLS_ALERT_UNEXPECTED_MESSAGE);
        return -1;
    }
    CHECK(alert == 0);
    CHECK(got_type == plain[end - 1]);
    CHECK(out_len == end - 1);
    CHECK(memcmp(out, plain, out_len) == 0);
    return 0;
}

static int key_update(input_t *in, sg_tls_rec_t *server, sg_tls_rec_t *client)
{
    static uint8_t rec[REC_MAX], out[REC_MAX];
    uint8_t msg[5] = {SG_TLS_HS_KEY_UPDATE, 0, 0, 1, 0};
    uint8_t shape = 0;
    take(in, &shape, 1);
    switch (shape % 4) {
    case 0: /* well-formed, update_not_requested */
        break;
    case 1: /* well-formed, update_requested */
        msg[4] = 1;
        break;
    case 2: { /* one field off: reaches each check on its own */
        uint8_t v = 0;
        take(in, &v, 1);
        msg[(shape >> 2) % sizeof(msg)] = v;
        break;
    }
    default: /* anything */
        fill(in, msg, sizeof(msg));
    }
    size_t n = sg_tls__rec_seal(client, SG_TLS_CT_HANDSHAKE, msg, sizeof(msg), rec);
    CHECK(n);
    size_t out_len = 0;
    uint8_t type = 0;
    CHECK(sg_tls__rec_open(server, rec, n, out, &out_len, &type) == 0);
    CHECK(type == SG_TLS_CT_HANDSHAKE && out_len == sizeof(msg));
    int requested = -1;
    int alert = sg_tls__rec_handshake(server, out, out_len, &requested);
    int valid = msg[0] == SG_TLS_HS_KEY_UPDATE && !msg[1] && !msg[2] && msg[3] == 1 && msg[4] <= 1;
    if (!valid) {
        CHECK(alert != 0);
        return -1;
    }
    CHECK(alert == 0 && requested == msg[4]);
    CHECK(sg_tls__rec_update(client, &client->wr) == 0);
    if (requested) {
        /* the server answers with its own KeyUpdate; the client follows */
        n = sg_tls__rec_seal_key_update(server, rec);
        CHECK(n);
        CHECK(sg_tls__rec_open(client, rec, n, out, &out_len, &type) == 0);
        CHECK(type == SG_TLS_CT_HANDSHAKE && out_len == 5 && out[4] == 0);
        CHECK(sg_tls__rec_update(client, &client->rd) == 0);
    }
    return 0;
}

static void reply(input_t *in, sg_tls_rec_t *server, sg_tls_rec_t *client)
{
    static uint8_t plain[SG_TLS_MAX_PLAINTEXT], rec[REC_MAX], out[REC_MAX];
    size_t len = take_u16(in, SG_TLS_MAX_PLAINTEXT);
    fill(in, plain, len);
    size_t n = sg_tls__rec_seal(server, SG_TLS_CT_APPLICATION_DATA, plain, len, rec);
    CHECK(n == len + SG_TLS_RECORD_OVERHEAD);
    size_t out_len = 0;
    uint8_t type = 0;
    CHECK(sg_tls__rec_open(client, rec, n, out, &out_len, &type) == 0);
    CHECK(type == SG_TLS_CT_APPLICATION_DATA && out_len == len);
    CHECK(memcmp(out, plain, len) == 0);
}

static void keylog(input_t *in)
{
    char line[256];
    size_t n = 0;
    while (n + 1 < sizeof(line) && in->left) {
        char c = (char)*in->p++;
        in->left--;
        if (!c) break;
        line[n++] = c;
    }
    line[n] = 0;
    sg_tls_rec_t r;
    memset(&r, 0, sizeof(r));
    uint8_t have = 0;
    int rc = sg_tls__rec_parse_keylog(line, &r, &have);
    CHECK(rc >= -1 && rc <= 1);
    if (rc == 1) {
        CHECK(have == SG_TLS_HAVE_CLIENT || have == SG_TLS_HAVE_SERVER);
        CHECK(r.secret_len == 32 || r.secret_len == 48);
    } else {
        CHECK(have == 0);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!initialized) {
        CHECK(sg_tls__rec_global_init() == 0);
        initialized = 1;
    }
    if (size < 1) return 0;
    static const uint16_t suites[] = {0x1301, 0x1302, 0x1303};
    int suite = sg_tls__rec_suite(suites[data[0] % 3]);
    if (suite < 0) return 0; /* unavailable in this OpenSSL: nothing to fuzz */
    input_t in = {data + 1, size - 1};
    sg_tls_rec_t server, client;
    memset(&server, 0, sizeof(server));
    server.secret_len = data[0] % 3 == 1 ? 48 : 32; /* SHA-384 for AES-256-GCM */
    for (size_t i = 0; i < server.secret_len; i++) {
        server.rd.secret[i] = (uint8_t)(i * 7 + 1);
        server.wr.secret[i] = (uint8_t)(i * 11 + 3);
    }
    mirror(&server, &client);
    CHECK(sg_tls__rec_init(&server, suite, 0) == 0);
    CHECK(sg_tls__rec_init(&client, suite, 0) == 0);
    static uint8_t rec[REC_MAX], out[REC_MAX];
    int open = 1;
    for (unsigned ops = 0; open && in.left && ops < 64; ops++) {
        uint8_t op = 0;
        take(&in, &op, 1);
        switch (op % 6) {
        case 0: {
            size_t len = take_u16(&in, REC_MAX);
            if (len > in.left) len = in.left;
            memcpy(rec, in.p, len);
            in.p += len;
            in.left -= len;
            size_t out_len = 0;
            uint8_t type = 0;
            int alert = sg_tls__rec_open(&server, rec, len, out, &out_len, &type);
            if (alert == 0)
                CHECK(out_len <= SG_TLS_MAX_PLAINTEXT); /* forged a tag? */
            else
                open = 0;
            break;
        }
        case 1:
            open = sealed_roundtrip(&in, &server, &client, 0) == 0;
            break;
        case 2:
            sealed_roundtrip(&in, &server, &client, 1);
            open = 0;
            break;
        case 3:
            open = key_update(&in, &server, &client) == 0;
            break;
        case 4:
            reply(&in, &server, &client);
            break;
        case 5:
            keylog(&in);
            break;
        }
    }
    sg_tls__rec_free(&client);
    sg_tls__rec_free(&server);
    return 0;
}
