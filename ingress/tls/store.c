/* Certificates, SSL_CTX set-up, SNI selection, ALPN and ticket keys. */
#include "tls/tls_internal.h"

#include "core/log.h"

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

/* TLS 1.2 suites: forward secret AEADs only. TLS 1.3 keeps OpenSSL's
 * default suites, all of which are modern. */
#define SG_TLS12_CIPHERS                                                                           \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"                                   \
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"                                   \
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"

/* ---- session ticket keys: one ring for the process ---- */

typedef struct {
    unsigned char name[16];
    unsigned char aes[32];
    unsigned char hmac[32];
} ticket_key_t;

static pthread_mutex_t ticket_lock = PTHREAD_MUTEX_INITIALIZER;
static ticket_key_t ticket_keys[2]; /* [0] current, [1] previous */
static int ticket_nkeys;

void sg_tls_rotate_ticket_keys(void)
{
    ticket_key_t k;
    if (RAND_bytes((unsigned char *)&k, sizeof(k)) != 1) {
        sg_log_error("tls: cannot generate ticket keys");
        return;
    }
    pthread_mutex_lock(&ticket_lock);
    ticket_keys[1] = ticket_keys[0];
    ticket_keys[0] = k;
    if (ticket_nkeys < 2) ticket_nkeys++;
    pthread_mutex_unlock(&ticket_lock);
    OPENSSL_cleanse(&k, sizeof(k));
}

static int ticket_cb(SSL *ssl, unsigned char key_name[16], unsigned char *iv, EVP_CIPHER_CTX *cctx,
                     EVP_MAC_CTX *hctx, int enc)
{
    ticket_key_t k;
    int which = -1;
    pthread_mutex_lock(&ticket_lock);
    if (enc) {
        which = ticket_nkeys ? 0 : -1;
    } else {
        for (int i = 0; i < ticket_nkeys; i++)
            if (memcmp(key_name, ticket_keys[i].name, 16) == 0) which = i;
    }
    if (which >= 0) k = ticket_keys[which];
    pthread_mutex_unlock(&ticket_lock);
    if (which < 0) return 0; /* unknown key: full handshake */

    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, k.hmac, sizeof(k.hmac)),
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    int rc;
    if (enc) {
        memcpy(key_name, k.name, 16);
        if (RAND_bytes(iv, EVP_MAX_IV_LENGTH) != 1 ||
            EVP_EncryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, k.aes, iv) != 1 ||
            EVP_MAC_CTX_set_params(hctx, params) != 1)
            rc = -1;
        else
            rc = 1;
    } else {
        if (EVP_DecryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, k.aes, iv) != 1 ||
            EVP_MAC_CTX_set_params(hctx, params) != 1)
            rc = -1;
        else
            /* 2 = valid, and issue a fresh ticket: clients (browsers, wrk) use
             * each ticket once, so a resumed session must get a new one or
             * every other connection does a full handshake. */
            rc = 2;
    }
    OPENSSL_cleanse(&k, sizeof(k));
    return rc;
}

/* ---- store ---- */

static int alpn_select_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                          const unsigned char *in, unsigned int inlen, void *arg)
{
    /* Our preference list; h2 joins it when HTTP/2 lands. */
    static const unsigned char protos[] = "\x08http/1.1";
    unsigned char *sel = NULL;
    if (SSL_select_next_proto(&sel, outlen, protos, sizeof(protos) - 1, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

static int name_matches(const char *pattern, const char *host, size_t len)
{
    size_t plen = strlen(pattern);
    if (pattern[0] == '*' && pattern[1] == '.') {
        /* One label only: "*.d" covers "x.d", not "d" nor "y.x.d". */
        const char *dot = memchr(host, '.', len);
        if (!dot || dot == host) return 0;
        size_t rest = len - (size_t)(dot - host);
        return rest == plen - 1 && strncasecmp(dot, pattern + 1, rest) == 0;
    }
    return plen == len && strncasecmp(pattern, host, len) == 0;
}

static sg_tls_cert_t *find_cert(sg_tls_store_t *st, const char *host, size_t len)
{
    /* Exact names first, then wildcards. */
    for (int pass = 0; pass < 2; pass++)
        for (size_t i = 0; i < st->n_certs; i++)
            for (size_t j = 0; j < st->certs[i].n_names; j++) {
                const char *n = st->certs[i].names[j];
                if ((n[0] == '*') != pass) continue;
                if (name_matches(n, host, len)) return &st->certs[i];
            }
    return NULL;
}

int sg_tls__cert_covers(const sg_tls_cert_t *cert, const char *host, size_t len)
{
    for (size_t j = 0; j < cert->n_names; j++)
        if (name_matches(cert->names[j], host, len)) return 1;
    return 0;
}

static int servername_cb(SSL *ssl, int *alert, void *arg)
{
    sg_tls_store_t *st = arg;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    sg_tls_cert_t *cert = name ? find_cert(st, name, strlen(name)) : NULL;
    if (!cert) cert = st->default_cert;
    if (cert->ctx != SSL_get_SSL_CTX(ssl)) SSL_set_SSL_CTX(ssl, cert->ctx);
    sg_tls__stream_set_cert(ssl, cert);
    return SSL_TLSEXT_ERR_OK;
}

static void err_line(char **err, size_t *left, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void err_line(char **err, size_t *left, const char *fmt, ...)
{
    if (*left <= 1) return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(*err, *left, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    size_t used = (size_t)n < *left - 1 ? (size_t)n : *left - 1;
    *err += used;
    *left -= used;
    if (*left > 1) {
        *(*err)++ = '\n';
        **err = '\0';
        (*left)--;
    }
}

static const char *openssl_reason(void)
{
    unsigned long e = ERR_peek_last_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    return r ? r : "unknown OpenSSL error";
}

static SSL_CTX *new_ctx(void)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) return NULL;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
    SSL_CTX_set_cipher_list(ctx, SG_TLS12_CIPHERS);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE |
                                 SSL_OP_NO_COMPRESSION);
    /* Idle connections give their record buffers back (memory per idle
     * connection is part of the product). */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_num_tickets(ctx, 1);
    SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"sandgate", 8);
    SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticket_cb);
    SSL_CTX_set_alpn_select_cb(ctx, alpn_select_cb, NULL);
    /* TLS 1.3 secrets go to the stream, which takes over the records once
     * the handshake is done (stream_tls.c); nothing is logged anywhere. */
    SSL_CTX_set_keylog_callback(ctx, sg_tls__keylog_cb);
    return ctx;
}

static int name_under_domains(const char *name, char *const *domains, size_t n)
{
    const char *n0 = name[0] == '*' && name[1] == '.' ? name + 2 : name;
    size_t len = strlen(n0);
    for (size_t i = 0; i < n; i++) {
        size_t dl = strlen(domains[i]);
        if (len == dl && strcasecmp(n0, domains[i]) == 0) return 1;
        if (len > dl && n0[len - dl - 1] == '.' && strcasecmp(n0 + len - dl, domains[i]) == 0)
            return 1;
    }
    return 0;
}

static int load_names(sg_tls_cert_t *c, X509 *x)
{
    GENERAL_NAMES *sans = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    int n = sans ? sk_GENERAL_NAME_num(sans) : 0;
    c->names = calloc((size_t)n + 1, sizeof(char *));
    if (!c->names) abort();
    for (int i = 0; i < n; i++) {
        const GENERAL_NAME *gn = sk_GENERAL_NAME_value(sans, i);
        if (gn->type != GEN_DNS) continue;
        const unsigned char *s = ASN1_STRING_get0_data(gn->d.dNSName);
        int len = ASN1_STRING_length(gn->d.dNSName);
        c->names[c->n_names] = strndup((const char *)s, (size_t)len);
        if (!c->names[c->n_names]) abort();
        c->n_names++;
    }
    GENERAL_NAMES_free(sans);
    return (int)c->n_names;
}

static void free_store(sg_tls_store_t *st)
{
    for (size_t i = 0; i < st->n_certs; i++) {
        sg_tls_cert_t *c = &st->certs[i];
        if (c->ctx) SSL_CTX_free(c->ctx);
        for (size_t j = 0; j < c->n_names; j++) free(c->names[j]);
        free(c->names);
        free(c->path);
    }
    free(st->certs);
    free(st);
}

int sg_tls_store_load(const sg_tls_cert_conf_t *confs, size_t n, char *const *domains,
                      size_t n_domains, uint64_t expiry_warn_seconds, sg_tls_store_t **out,
                      char *err, size_t errlen, char *warn, size_t warnlen)
{
    size_t err_left = errlen, warn_left = warnlen;
    char *e = err, *wp = warn;
    if (errlen) err[0] = '\0';
    if (warnlen) warn[0] = '\0';
    sg_tls_store_t *st = calloc(1, sizeof(*st));
    if (!st) abort();
    atomic_init(&st->refs, 1);
    st->certs = calloc(n ? n : 1, sizeof(*st->certs));
    if (!st->certs) abort();
    int failed = 0;
    time_t now = time(NULL);
    for (size_t i = 0; i < n; i++) {
        sg_tls_cert_t *c = &st->certs[st->n_certs++];
        c->path = strdup(confs[i].chain_path);
        if (!c->path) abort();
        ERR_clear_error();
        c->ctx = new_ctx();
        if (!c->ctx) {
            err_line(&e, &err_left, "%s: cannot create TLS context: %s", c->path, openssl_reason());
            failed = 1;
            continue;
        }
        if (SSL_CTX_use_certificate_chain_file(c->ctx, confs[i].chain_path) != 1) {
            err_line(&e, &err_left, "%s: cannot load certificate chain: %s", confs[i].chain_path,
                     openssl_reason());
            failed = 1;
            continue;
        }
        if (SSL_CTX_use_PrivateKey_file(c->ctx, confs[i].key_path, SSL_FILETYPE_PEM) != 1) {
            err_line(&e, &err_left, "%s: cannot load private key: %s", confs[i].key_path,
                     openssl_reason());
            failed = 1;
            continue;
        }
        if (SSL_CTX_check_private_key(c->ctx) != 1) {
            err_line(&e, &err_left, "%s: private key %s does not match the certificate",
                     confs[i].chain_path, confs[i].key_path);
            failed = 1;
            continue;
        }
        X509 *x = SSL_CTX_get0_certificate(c->ctx);
        if (X509_cmp_time(X509_get0_notAfter(x), &now) <= 0) {
            err_line(&e, &err_left, "%s: certificate has expired", c->path);
            failed = 1;
            continue;
        }
        if (X509_cmp_time(X509_get0_notBefore(x), &now) > 0) {
            err_line(&e, &err_left, "%s: certificate is not valid yet", c->path);
            failed = 1;
            continue;
        }
        time_t soon = now + (time_t)expiry_warn_seconds;
        if (X509_cmp_time(X509_get0_notAfter(x), &soon) <= 0)
            err_line(&wp, &warn_left, "%s: certificate expires within %llu days", c->path,
                     (unsigned long long)(expiry_warn_seconds / 86400));
        if (load_names(c, x) == 0) {
            err_line(&e, &err_left, "%s: certificate has no DNS subjectAltName", c->path);
            failed = 1;
            continue;
        }
        for (size_t j = 0; j < c->n_names; j++) {
            if (!name_under_domains(c->names[j], domains, n_domains)) {
                err_line(&e, &err_left, "%s: certificate name %s is under none of the domains",
                         c->path, c->names[j]);
                failed = 1;
            }
        }
        if (confs[i].is_default) st->default_cert = c;
    }
    if (!failed && n == 0) {
        err_line(&e, &err_left, "tls: a TLS listener needs at least one certificate");
        failed = 1;
    }
    if (failed) {
        free_store(st);
        return -1;
    }
    if (!st->default_cert) st->default_cert = &st->certs[0];
    /* Every handshake starts on the default context; SNI may switch it. */
    for (size_t i = 0; i < st->n_certs; i++)
        SSL_CTX_set_tlsext_servername_callback(st->certs[i].ctx, servername_cb),
            SSL_CTX_set_tlsext_servername_arg(st->certs[i].ctx, st);
    *out = st;
    return 0;
}

void sg_tls_store_ref(sg_tls_store_t *st)
{
    atomic_fetch_add_explicit(&st->refs, 1, memory_order_relaxed);
}

void sg_tls_store_unref(sg_tls_store_t *st)
{
    if (atomic_fetch_sub_explicit(&st->refs, 1, memory_order_acq_rel) == 1) free_store(st);
}

size_t sg_tls_store_describe(const sg_tls_store_t *st, char *out, size_t cap)
{
    size_t n = 0;
    if (cap) out[0] = '\0';
    for (size_t i = 0; i < st->n_certs; i++)
        for (size_t j = 0; j < st->certs[i].n_names && n < cap; j++)
            n += (size_t)snprintf(out + n, cap - n, "%s%s", n ? ", " : "", st->certs[i].names[j]);
    return n < cap ? n : cap;
}

int sg_tls_global_init(void)
{
    if (sg_tls__bio_init() != 0) return -1;
    sg_tls_rotate_ticket_keys();
    return 0;
}

void sg_tls_global_cleanup(void)
{
    sg_tls__bio_cleanup();
    OPENSSL_cleanse(ticket_keys, sizeof(ticket_keys));
}
