/* The TLS 1.3 record layer (tls/record.c) against OpenSSL as the client: a
 * real handshake in memory, then records both ways for every suite, with
 * padding, KeyUpdate in both directions, session tickets already sent,
 * tampering and malformed records, and two connections sharing the
 * thread's cipher contexts. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "tls/tls_internal.h"

#include <openssl/evp.h>
#include <openssl/x509.h>

static EVP_PKEY *key;
static X509 *cert;

static int group_setup(void **state)
{
    if (sg_tls__rec_global_init() != 0) return -1;
    key = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    cert = X509_new();
    if (!key || !cert) return -1;
    X509_set_version(cert, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
    X509_gmtime_adj(X509_getm_notBefore(cert), -60);
    X509_gmtime_adj(X509_getm_notAfter(cert), 3600);
    X509_NAME *n = X509_get_subject_name(cert);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)"t.test", -1, -1, 0);
    X509_set_issuer_name(cert, n);
    X509_set_pubkey(cert, key);
    return X509_sign(cert, key, NULL) > 0 ? 0 : -1;
}

static int group_teardown(void **state)
{
    X509_free(cert);
    EVP_PKEY_free(key);
    sg_tls__rec_global_cleanup();
    return 0;
}

/* One client/server pair over memory BIOs; the server's secrets land in rec
 * through the keylog callback, as in stream_tls.c. */
typedef struct {
    SSL_CTX *sctx, *cctx;
    SSL *s, *c;
    BIO *c_in, *c_out, *s_in, *s_out; /* the client's, the server's */
    sg_tls_rec_t rec;
    uint8_t have;
} pair_t;

static pair_t *keylog_target;

static void keylog(const SSL *ssl, const char *line)
{
    assert_true(sg_tls__rec_parse_keylog(line, &keylog_target->rec, &keylog_target->have) >= 0);
}

static void shuttle(BIO *from, BIO *to)
{
    char buf[4096];
    int n;
    while ((n = BIO_read(from, buf, sizeof(buf))) > 0) assert_int_equal(BIO_write(to, buf, n), n);
}

/* Handshake with `suite` (TLS 1.3 name); tickets: how many the server sends.
 * Then the server SSL is freed and rec continues from where it stood. */
static void pair_open(pair_t *p, const char *suite, int tickets, int padding)
{
    memset(p, 0, sizeof(*p));
    p->sctx = SSL_CTX_new(TLS_server_method());
    p->cctx = SSL_CTX_new(TLS_client_method());
    assert_non_null(p->sctx);
    assert_non_null(p->cctx);
    SSL_CTX_set_min_proto_version(p->sctx, TLS1_3_VERSION);
    SSL_CTX_set_min_proto_version(p->cctx, TLS1_3_VERSION);
    assert_int_equal(SSL_CTX_set_ciphersuites(p->cctx, suite), 1);
    assert_int_equal(SSL_CTX_use_certificate(p->sctx, cert), 1);
    assert_int_equal(SSL_CTX_use_PrivateKey(p->sctx, key), 1);
    SSL_CTX_set_num_tickets(p->sctx, (size_t)tickets);
    SSL_CTX_set_keylog_callback(p->sctx, keylog);
    if (padding) SSL_CTX_set_block_padding(p->cctx, (size_t)padding);
    keylog_target = p;
    p->s = SSL_new(p->sctx);
    p->c = SSL_new(p->cctx);
    p->c_in = BIO_new(BIO_s_mem());
    p->c_out = BIO_new(BIO_s_mem());
    p->s_in = BIO_new(BIO_s_mem());
    p->s_out = BIO_new(BIO_s_mem());
    SSL_set_bio(p->c, p->c_in, p->c_out);
    SSL_set_bio(p->s, p->s_in, p->s_out);
    SSL_set_connect_state(p->c);
    SSL_set_accept_state(p->s);
    int cdone = 0, sdone = 0;
    for (int i = 0; i < 20 && !(cdone && sdone); i++) {
        if (!cdone) cdone = SSL_do_handshake(p->c) == 1;
        shuttle(p->c_out, p->s_in);
        if (!sdone) sdone = SSL_do_handshake(p->s) == 1;
        shuttle(p->s_out, p->c_in);
    }
    assert_true(cdone && sdone);
    assert_int_equal(p->have, SG_TLS_HAVE_CLIENT | SG_TLS_HAVE_SERVER);
    int idx = sg_tls__rec_suite(SSL_CIPHER_get_protocol_id(SSL_get_current_cipher(p->s)));
    assert_true(idx >= 0);
    /* The client reads the tickets (the server wrote them before its
     * handshake returned): one record each under the application keys. */
    char tmp[16];
    assert_true(SSL_read(p->c, tmp, sizeof(tmp)) <= 0);
    assert_int_equal(sg_tls__rec_init(&p->rec, idx, (uint64_t)tickets), 0);
    SSL_free(p->s); /* as the stream does: the record layer takes over */
    p->s = NULL;
}

static void pair_close(pair_t *p)
{
    sg_tls__rec_free(&p->rec);
    SSL_free(p->c);
    SSL_CTX_free(p->sctx);
    SSL_CTX_free(p->cctx);
}

/* Everything the client has written, as one buffer. */
static size_t client_output(pair_t *p, uint8_t *out, size_t cap)
{
    int n = BIO_read(p->c_out, out, (int)cap);
    return n > 0 ? (size_t)n : 0;
}

static size_t rec_len_at(const uint8_t *b)
{
    return 5 + ((size_t)b[3] << 8 | b[4]);
}

/* Client -> server: SSL_write, then open every record; returns the app data. */
static size_t client_says(pair_t *p, const void *data, size_t len, uint8_t *got)
{
    static uint8_t wire[1 << 18];
    static uint8_t pt[SG_TLS_MAX_CIPHERTEXT];
    if (len) assert_int_equal(SSL_write(p->c, data, (int)len), (int)len);
    size_t n = client_output(p, wire, sizeof(wire)), off = 0, total = 0;
    while (off < n) {
        size_t rl = rec_len_at(wire + off);
        size_t plen;
        uint8_t type;
        assert_int_equal(sg_tls__rec_open(&p->rec, wire + off, rl, pt, &plen, &type), 0);
        if (type == SG_TLS_CT_APPLICATION_DATA) {
            memcpy(got + total, pt, plen);
            total += plen;
        } else {
            assert_int_equal(type, SG_TLS_CT_HANDSHAKE);
            int req = 0;
            assert_int_equal(sg_tls__rec_handshake(&p->rec, pt, plen, &req), 0);
            if (req) {
                uint8_t ku[64];
                size_t w = sg_tls__rec_seal_key_update(&p->rec, ku);
                assert_int_equal(w, 5 + 5 + 1 + 16);
                assert_int_equal(BIO_write(p->c_in, ku, (int)w), (int)w);
            }
        }
        off += rl;
    }
    assert_int_equal(off, n);
    return total;
}

/* Server -> client: seal into records of at most 16 KiB, client reads all. */
static void server_says(pair_t *p, const uint8_t *data, size_t len)
{
    static uint8_t rec[SG_TLS_MAX_PLAINTEXT + SG_TLS_RECORD_OVERHEAD];
    static uint8_t got[1 << 18];
    for (size_t off = 0; off < len || (!len && !off);) {
        size_t n = len - off < SG_TLS_MAX_PLAINTEXT ? len - off : SG_TLS_MAX_PLAINTEXT;
        size_t w = sg_tls__rec_seal(&p->rec, SG_TLS_CT_APPLICATION_DATA, data + off, n, rec);
        assert_int_equal(w, n + SG_TLS_RECORD_OVERHEAD);
        assert_int_equal(BIO_write(p->c_in, rec, (int)w), (int)w);
        off += n;
        if (!len) break;
    }
    size_t total = 0;
    int r;
    while (total < len && (r = SSL_read(p->c, got + total, (int)(sizeof(got) - total))) > 0)
        total += (size_t)r;
    assert_int_equal(total, len);
    assert_memory_equal(got, data, len);
}

static const char *suite_names[] = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                                    "TLS_CHACHA20_POLY1305_SHA256"};

static void both_ways(pair_t *p, size_t len)
{
    static uint8_t data[100000], got[1 << 18];
    for (size_t i = 0; i < len; i++) data[i] = (uint8_t)(i * 7 + len);
    assert_int_equal(client_says(p, data, len, got), len);
    assert_memory_equal(got, data, len);
    server_says(p, data, len);
}

static void test_every_suite_both_ways(void **state)
{
    for (int s = 0; s < 3; s++) {
        for (int tickets = 0; tickets <= 2; tickets += 2) {
            pair_t p;
            pair_open(&p, suite_names[s], tickets, 0);
            both_ways(&p, 1);
            both_ways(&p, 5000);
            both_ways(&p, 100000);
            pair_close(&p);
        }
    }
}

/* A record gathered from pieces (empty ones included, sizes that split
 * AES blocks) is one record that OpenSSL's client opens to their
 * concatenation, in every suite. */
static void test_gathered_record_is_one_record(void **state)
{
    static uint8_t data[SG_TLS_MAX_PLAINTEXT], got[SG_TLS_MAX_PLAINTEXT];
    static uint8_t rec[SG_TLS_MAX_PLAINTEXT + SG_TLS_RECORD_OVERHEAD];
    static const size_t cuts[][5] = {{247, 100, 0, 0, 0},
                                     {0, 1, 15, 17, 33},
                                     {5, 0, 16000, 0, 379},
                                     {SG_TLS_MAX_PLAINTEXT - 2, 2, 0, 0, 0}};
    for (size_t i = 0; i < sizeof(data); i++) data[i] = (uint8_t)(i * 13 + 1);
    for (int s = 0; s < 3; s++) {
        pair_t p;
        pair_open(&p, suite_names[s], 0, 0);
        for (size_t c = 0; c < sizeof(cuts) / sizeof(cuts[0]); c++) {
            uv_buf_t pieces[5];
            size_t off = 0;
            for (int k = 0; k < 5; k++) {
                pieces[k] = uv_buf_init((char *)data + off, (unsigned)cuts[c][k]);
                off += cuts[c][k];
            }
            size_t w = sg_tls__rec_seal_v(&p.rec, SG_TLS_CT_APPLICATION_DATA, pieces, 5, rec);
            assert_int_equal(w, off + SG_TLS_RECORD_OVERHEAD);
            assert_int_equal(rec_len_at(rec), w);
            assert_int_equal(BIO_write(p.c_in, rec, (int)w), (int)w);
            /* one record: one SSL_read returns all of it */
            assert_int_equal(SSL_read(p.c, got, sizeof(got)), (int)off);
            assert_memory_equal(got, data, off);
        }
        uv_buf_t too_much[2] = {uv_buf_init((char *)data, SG_TLS_MAX_PLAINTEXT),
                                uv_buf_init((char *)data, 1)};
        assert_int_equal(sg_tls__rec_seal_v(&p.rec, SG_TLS_CT_APPLICATION_DATA, too_much, 2, rec),
                         0);
        pair_close(&p);
    }
}

static void test_padded_records(void **state)
{
    pair_t p;
    pair_open(&p, suite_names[1], 1, 512);
    both_ways(&p, 3);
    both_ways(&p, 700);
    pair_close(&p);
}

static void test_key_updates_both_ways(void **state)
{
    for (int s = 0; s < 3; s++) {
        pair_t p;
        pair_open(&p, suite_names[s], 1, 0);
        for (int i = 0; i < 6; i++) {
            /* requested: the server's KeyUpdate goes to the client first */
            assert_int_equal(SSL_key_update(p.c, i % 2 ? SSL_KEY_UPDATE_NOT_REQUESTED
                                                       : SSL_KEY_UPDATE_REQUESTED),
                             1);
            both_ways(&p, 100 + (size_t)i);
        }
        pair_close(&p);
    }
}

static void test_tampered_and_malformed_records(void **state)
{
    pair_t p;
    pair_open(&p, suite_names[0], 0, 0);
    uint8_t wire[512], pt[SG_TLS_MAX_CIPHERTEXT], type;
    size_t plen;
    assert_int_equal(SSL_write(p.c, "hello", 5), 5);
    size_t n = client_output(&p, wire, sizeof(wire));
    assert_int_equal(n, 5 + 5 + 1 + 16);
    wire[7] ^= 1;
    assert_int_equal(sg_tls__rec_open(&p.rec, wire, n, pt, &plen, &type),
                     SG_TLS_ALERT_BAD_RECORD_MAC);
    wire[7] ^= 1;
    /* a failed record does not advance the sequence: the intact one opens */
    assert_int_equal(sg_tls__rec_open(&p.rec, wire, n, pt, &plen, &type), 0);
    assert_int_equal(plen, 5);
    assert_memory_equal(pt, "hello", 5);
    /* replayed: the sequence number moved on */
    assert_int_equal(sg_tls__rec_open(&p.rec, wire, n, pt, &plen, &type),
                     SG_TLS_ALERT_BAD_RECORD_MAC);

    uint8_t hdr[5 + 17] = {SG_TLS_CT_HANDSHAKE, 3, 3, 0, 17};
    assert_int_equal(sg_tls__rec_open(&p.rec, hdr, sizeof(hdr), pt, &plen, &type),
                     SG_TLS_ALERT_UNEXPECTED_MESSAGE);
    uint8_t big[5] = {SG_TLS_CT_APPLICATION_DATA, 3, 3, 0x41, 0x01};
    assert_int_equal(sg_tls__rec_open(&p.rec, big, 5, pt, &plen, &type),
                     SG_TLS_ALERT_RECORD_OVERFLOW);
    uint8_t tiny[5 + 16] = {SG_TLS_CT_APPLICATION_DATA, 3, 3, 0, 16};
    assert_int_equal(sg_tls__rec_open(&p.rec, tiny, sizeof(tiny), pt, &plen, &type),
                     SG_TLS_ALERT_BAD_RECORD_MAC);
    /* only KeyUpdate may follow the handshake */
    int req;
    const uint8_t ticket[5] = {4, 0, 0, 1, 0}, ku_bad[5] = {24, 0, 0, 1, 2};
    assert_int_equal(sg_tls__rec_handshake(&p.rec, ticket, 5, &req),
                     SG_TLS_ALERT_UNEXPECTED_MESSAGE);
    assert_int_equal(sg_tls__rec_handshake(&p.rec, ku_bad, 5, &req), SG_TLS_ALERT_DECODE_ERROR);
    pair_close(&p);
}

static void test_connections_share_thread_contexts(void **state)
{
    /* Interleaved records of two connections with the same suite: the
     * thread's context is re-keyed for each, never mixed up. */
    pair_t a, b;
    pair_open(&a, suite_names[1], 1, 0);
    pair_open(&b, suite_names[1], 1, 0);
    for (int i = 0; i < 4; i++) {
        both_ways(&a, 10 + (size_t)i);
        both_ways(&b, 20 + (size_t)i);
    }
    pair_close(&a);
    both_ways(&b, 30); /* the contexts outlive a's reference */
    pair_close(&b);
}

static void test_keylog_lines(void **state)
{
    sg_tls_rec_t r;
    uint8_t have = 0;
    memset(&r, 0, sizeof(r));
    assert_int_equal(sg_tls__rec_parse_keylog("CLIENT_RANDOM 00 11", &r, &have), 0);
    assert_int_equal(
        sg_tls__rec_parse_keylog("SERVER_TRAFFIC_SECRET_0 "
                                 "0000000000000000000000000000000000000000000000000000000000000000 "
                                 "zz00000000000000000000000000000000000000000000000000000000000000",
                                 &r, &have),
        -1);
    assert_int_equal(sg_tls__rec_parse_keylog("CLIENT_TRAFFIC_SECRET_0 ab 0011", &r, &have), -1);
    assert_int_equal(have, 0);
    assert_int_equal(
        sg_tls__rec_parse_keylog("CLIENT_TRAFFIC_SECRET_0 "
                                 "0000000000000000000000000000000000000000000000000000000000000000 "
                                 "0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20",
                                 &r, &have),
        1);
    assert_int_equal(have, SG_TLS_HAVE_CLIENT);
    assert_int_equal(r.rd.secret[0], 1);
    assert_int_equal(r.rd.secret[31], 0x20);
    /* a SHA-256 secret cannot key a SHA-384 suite */
    assert_int_not_equal(sg_tls__rec_init(&r, sg_tls__rec_suite(0x1302), 0), 0);
    assert_int_equal(sg_tls__rec_suite(0x1304), -1); /* CCM: stays with OpenSSL */
    sg_tls__rec_free(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_suite_both_ways),
        cmocka_unit_test(test_gathered_record_is_one_record),
        cmocka_unit_test(test_padded_records),
        cmocka_unit_test(test_key_updates_both_ways),
        cmocka_unit_test(test_tampered_and_malformed_records),
        cmocka_unit_test(test_connections_share_thread_contexts),
        cmocka_unit_test(test_keylog_lines),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
