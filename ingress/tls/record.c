/* TLS 1.3 record protection (RFC 8446 section 5) for connections whose
 * handshake OpenSSL has finished: the SSL object is freed and the stream
 * keeps only the traffic secrets, keys and sequence numbers, about 230 bytes
 * instead of the 14 KB OpenSSL holds per connection. Cipher contexts are
 * per thread, shared by that thread's connections and re-keyed on use. */
#include "tls/tls_internal.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <string.h>

#define TAG_LEN 16

static const struct {
    uint16_t id; /* IANA cipher suite number */
    const char *cipher, *digest;
    uint8_t key_len, hash_len;
} suites[SG_TLS_SUITES] = {
    {0x1301, "AES-128-GCM", "SHA256", 16, 32},
    {0x1302, "AES-256-GCM", "SHA384", 32, 48},
    {0x1303, "ChaCha20-Poly1305", "SHA256", 32, 32},
};

static EVP_CIPHER *ciphers[SG_TLS_SUITES];
static EVP_MD *digests[SG_TLS_SUITES];

/* One context per suite and thread; key_id says whose key it holds so a
 * context used by one connection many times in a row is keyed once. Ids
 * are never reused on a thread (a freed stream's address may come back). */
static _Thread_local struct {
    EVP_CIPHER_CTX *ctx[SG_TLS_SUITES];
    EVP_MD_CTX *md_ctx; /* key schedule */
    uint64_t key_id[SG_TLS_SUITES];
    uint64_t next_id;
    unsigned users;
} tl;

int sg_tls__rec_global_init(void)
{
    /* A suite whose algorithms are missing (a FIPS-only configuration has
     * no ChaCha20) is simply left to OpenSSL. */
    for (int i = 0; i < SG_TLS_SUITES; i++) {
        ciphers[i] = EVP_CIPHER_fetch(NULL, suites[i].cipher, NULL);
        digests[i] = EVP_MD_fetch(NULL, suites[i].digest, NULL);
    }
    return 0;
}

void sg_tls__rec_global_cleanup(void)
{
    for (int i = 0; i < SG_TLS_SUITES; i++) {
        EVP_CIPHER_free(ciphers[i]);
        EVP_MD_free(digests[i]);
        ciphers[i] = NULL;
        digests[i] = NULL;
    }
}

int sg_tls__rec_suite(uint16_t id)
{
    for (int i = 0; i < SG_TLS_SUITES; i++)
        if (suites[i].id == id) return ciphers[i] && digests[i] ? i : -1;
    return -1;
}

/* HMAC(key, msg) with a fetched digest and the thread's digest context:
 * HMAC() fetches the digest and a MAC implementation on every call, which
 * cost more than the rest of the key schedule together. key_len <= block. */
static int hmac(int suite, const uint8_t *key, size_t key_len, const uint8_t *msg, size_t len,
                uint8_t *out)
{
    const EVP_MD *md = digests[suite];
    size_t block = (size_t)EVP_MD_get_block_size(md), hl = suites[suite].hash_len;
    uint8_t pad[128], inner[EVP_MAX_MD_SIZE];
    if (block > sizeof(pad) || key_len > block) return -1;
    if (!tl.md_ctx && !(tl.md_ctx = EVP_MD_CTX_new())) return -1;
    EVP_MD_CTX *c = tl.md_ctx;
    int ok = 1;
    for (int pass = 0; pass < 2 && ok; pass++) {
        uint8_t x = pass ? 0x5c : 0x36;
        memset(pad, x, block);
        for (size_t i = 0; i < key_len; i++) pad[i] ^= key[i];
        ok = EVP_DigestInit_ex2(c, md, NULL) == 1 && EVP_DigestUpdate(c, pad, block) == 1 &&
             EVP_DigestUpdate(c, pass ? inner : msg, pass ? hl : len) == 1 &&
             EVP_DigestFinal_ex(c, pass ? out : inner, NULL) == 1;
    }
    OPENSSL_cleanse(pad, sizeof(pad));
    OPENSSL_cleanse(inner, sizeof(inner));
    return ok ? 0 : -1;
}

/* HKDF-Expand-Label(secret, label, "", len) for len <= hash length: a single
 * HMAC block (RFC 8446 section 7.1, RFC 5869). */
static int expand_label(int suite, const uint8_t *secret, const char *label, uint8_t *out,
                        size_t len)
{
    uint8_t info[2 + 1 + 6 + 16 + 1 + 1];
    size_t ll = strlen(label), n = 0;
    info[n++] = (uint8_t)(len >> 8);
    info[n++] = (uint8_t)len;
    info[n++] = (uint8_t)(6 + ll);
    memcpy(info + n, "tls13 ", 6);
    n += 6;
    memcpy(info + n, label, ll);
    n += ll;
    info[n++] = 0; /* empty context */
    info[n++] = 1; /* block counter */
    uint8_t t[EVP_MAX_MD_SIZE];
    if (hmac(suite, secret, suites[suite].hash_len, info, n, t) != 0) return -1;
    memcpy(out, t, len);
    OPENSSL_cleanse(t, sizeof(t));
    return 0;
}

static int install(int suite, sg_tls_dir_t *d)
{
    if (expand_label(suite, d->secret, "key", d->key, suites[suite].key_len) != 0 ||
        expand_label(suite, d->secret, "iv", d->iv, sizeof(d->iv)) != 0)
        return -1;
    d->seq = 0;
    d->key_id = ++tl.next_id;
    return 0;
}

int sg_tls__rec_init(sg_tls_rec_t *r, int suite, uint64_t wr_seq)
{
    if (suite < 0 || suite >= SG_TLS_SUITES || r->secret_len != suites[suite].hash_len) return -1;
    r->suite = (uint8_t)suite;
    tl.users++; /* before install: it may create the thread's contexts */
    r->active = 1;
    if (install(suite, &r->rd) != 0 || install(suite, &r->wr) != 0) return -1;
    r->wr.seq = wr_seq;
    return 0;
}

void sg_tls__rec_free(sg_tls_rec_t *r)
{
    if (r->active && !--tl.users) {
        /* The thread's last protected stream is gone: so are the contexts. */
        for (int i = 0; i < SG_TLS_SUITES; i++) {
            EVP_CIPHER_CTX_free(tl.ctx[i]);
            tl.ctx[i] = NULL;
            tl.key_id[i] = 0;
        }
        EVP_MD_CTX_free(tl.md_ctx);
        tl.md_ctx = NULL;
    }
    OPENSSL_cleanse(r, sizeof(*r));
}

int sg_tls__rec_update(sg_tls_rec_t *r, sg_tls_dir_t *d)
{
    uint8_t next[SG_TLS_MAX_HASH];
    size_t hl = suites[r->suite].hash_len;
    if (expand_label(r->suite, d->secret, "traffic upd", next, hl) != 0) return -1;
    memcpy(d->secret, next, hl);
    OPENSSL_cleanse(next, sizeof(next));
    return install(r->suite, d);
}

/* The thread's context for this suite, keyed for d and set to d's nonce. */
static EVP_CIPHER_CTX *ctx_for(const sg_tls_rec_t *r, const sg_tls_dir_t *d, int enc)
{
    int s = r->suite;
    if (!tl.ctx[s]) {
        tl.ctx[s] = EVP_CIPHER_CTX_new();
        if (!tl.ctx[s] || EVP_CipherInit_ex(tl.ctx[s], ciphers[s], NULL, NULL, NULL, enc) != 1) {
            EVP_CIPHER_CTX_free(tl.ctx[s]);
            tl.ctx[s] = NULL;
            return NULL;
        }
        tl.key_id[s] = 0;
    }
    uint8_t nonce[12];
    memcpy(nonce, d->iv, sizeof(nonce));
    for (int i = 0; i < 8; i++) nonce[4 + i] ^= (uint8_t)(d->seq >> (56 - 8 * i));
    const uint8_t *key = tl.key_id[s] == d->key_id ? NULL : d->key;
    tl.key_id[s] = 0; /* unknown until the init succeeds */
    if (EVP_CipherInit_ex(tl.ctx[s], NULL, NULL, key, nonce, enc) != 1) return NULL;
    tl.key_id[s] = d->key_id;
    return tl.ctx[s];
}

size_t sg_tls__rec_seal_v(sg_tls_rec_t *r, uint8_t type, const uv_buf_t *in, unsigned n_in,
                          uint8_t *out)
{
    size_t len = 0;
    for (unsigned i = 0; i < n_in; i++) len += in[i].len;
    if (len > SG_TLS_MAX_PLAINTEXT || r->wr.seq == UINT64_MAX) return 0;
    size_t body = len + 1 + TAG_LEN;
    out[0] = SG_TLS_CT_APPLICATION_DATA;
    out[1] = 3;
    out[2] = 3;
    out[3] = (uint8_t)(body >> 8);
    out[4] = (uint8_t)body;
    EVP_CIPHER_CTX *c = ctx_for(r, &r->wr, 1);
    int ol;
    if (!c || EVP_CipherUpdate(c, NULL, &ol, out, 5) != 1) return 0;
    /* AEAD updates stream: the pieces are sealed where they lie, as if
     * they were one buffer, and the record costs one nonce and one tag. */
    uint8_t *dst = out + 5;
    for (unsigned i = 0; i < n_in; i++) {
        if (!in[i].len) continue;
        if (EVP_CipherUpdate(c, dst, &ol, (const uint8_t *)in[i].base, (int)in[i].len) != 1)
            return 0;
        dst += in[i].len;
    }
    if (EVP_CipherUpdate(c, dst, &ol, &type, 1) != 1 || EVP_CipherFinal_ex(c, dst + 1, &ol) != 1 ||
        EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_GET_TAG, TAG_LEN, dst + 1) != 1)
        return 0;
    r->wr.seq++;
    return 5 + body;
}

size_t sg_tls__rec_seal(sg_tls_rec_t *r, uint8_t type, const uint8_t *in, size_t len, uint8_t *out)
{
    /* not uv_buf_init: record.c links without libuv (the fuzz harness) */
    uv_buf_t piece = {.base = (char *)in, .len = len};
    return sg_tls__rec_seal_v(r, type, &piece, 1, out);
}

int sg_tls__rec_open(sg_tls_rec_t *r, const uint8_t *rec, size_t rec_len, uint8_t *out,
                     size_t *out_len, uint8_t *type)
{
    if (rec_len < 5) return SG_TLS_ALERT_DECODE_ERROR;
    size_t body = (size_t)rec[3] << 8 | rec[4];
    if (rec[0] != SG_TLS_CT_APPLICATION_DATA) return SG_TLS_ALERT_UNEXPECTED_MESSAGE;
    if (body > SG_TLS_MAX_CIPHERTEXT) return SG_TLS_ALERT_RECORD_OVERFLOW;
    if (body != rec_len - 5) return SG_TLS_ALERT_DECODE_ERROR;
    if (body < 1 + TAG_LEN) return SG_TLS_ALERT_BAD_RECORD_MAC;
    if (r->rd.seq == UINT64_MAX) return SG_TLS_ALERT_INTERNAL_ERROR;
    size_t n = body - TAG_LEN;
    EVP_CIPHER_CTX *c = ctx_for(r, &r->rd, 0);
    int ol;
    if (!c) return SG_TLS_ALERT_INTERNAL_ERROR;
    if (EVP_CipherUpdate(c, NULL, &ol, rec, 5) != 1 ||
        EVP_CipherUpdate(c, out, &ol, rec + 5, (int)n) != 1 ||
        EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_SET_TAG, TAG_LEN, (void *)(rec + 5 + n)) != 1 ||
        EVP_CipherFinal_ex(c, out + n, &ol) != 1)
        return SG_TLS_ALERT_BAD_RECORD_MAC;
    r->rd.seq++;
    /* The content type is the last non-zero byte; zeros after it are padding. */
    while (n && !out[n - 1]) n--;
    if (!n) return SG_TLS_ALERT_UNEXPECTED_MESSAGE;
    *type = out[n - 1];
    *out_len = n - 1;
    if (*out_len > SG_TLS_MAX_PLAINTEXT) return SG_TLS_ALERT_RECORD_OVERFLOW;
    return 0;
}

int sg_tls__rec_handshake(sg_tls_rec_t *r, const uint8_t *msg, size_t len, int *update_requested)
{
    /* After the handshake a client may only send KeyUpdate (we never ask
     * for post-handshake authentication): a whole one, alone in its record,
     * since the keys change right after it. */
    *update_requested = 0;
    if (len < 4 || msg[0] != SG_TLS_HS_KEY_UPDATE) return SG_TLS_ALERT_UNEXPECTED_MESSAGE;
    if (len != 5 || msg[1] || msg[2] || msg[3] != 1 || msg[4] > 1) return SG_TLS_ALERT_DECODE_ERROR;
    if (sg_tls__rec_update(r, &r->rd) != 0) return SG_TLS_ALERT_INTERNAL_ERROR;
    *update_requested = msg[4];
    return 0;
}

size_t sg_tls__rec_seal_key_update(sg_tls_rec_t *r, uint8_t *out)
{
    static const uint8_t ku[5] = {SG_TLS_HS_KEY_UPDATE, 0, 0, 1, 0}; /* update_not_requested */
    size_t n = sg_tls__rec_seal(r, SG_TLS_CT_HANDSHAKE, ku, sizeof(ku), out);
    if (n && sg_tls__rec_update(r, &r->wr) != 0) return 0;
    return n;
}

int sg_tls__rec_parse_keylog(const char *line, sg_tls_rec_t *r, uint8_t *have)
{
    static const char cl[] = "CLIENT_TRAFFIC_SECRET_0 ", sv[] = "SERVER_TRAFFIC_SECRET_0 ";
    sg_tls_dir_t *d;
    uint8_t bit;
    if (strncmp(line, cl, sizeof(cl) - 1) == 0) {
        d = &r->rd; /* the client's traffic is what the server reads */
        bit = SG_TLS_HAVE_CLIENT;
    } else if (strncmp(line, sv, sizeof(sv) - 1) == 0) {
        d = &r->wr;
        bit = SG_TLS_HAVE_SERVER;
    } else {
        return 0;
    }
    const char *p = strchr(line + sizeof(cl) - 1, ' '); /* after the client random */
    if (!p) return -1;
    p++;
    size_t hex = strlen(p);
    if (hex != 64 && hex != 96) return -1;
    for (size_t i = 0; i < hex / 2; i++) {
        int hi = OPENSSL_hexchar2int((unsigned char)p[2 * i]);
        int lo = OPENSSL_hexchar2int((unsigned char)p[2 * i + 1]);
        if (hi < 0 || lo < 0) return -1;
        d->secret[i] = (uint8_t)(hi << 4 | lo);
    }
    r->secret_len = (uint8_t)(hex / 2);
    *have |= bit;
    return 1;
}
