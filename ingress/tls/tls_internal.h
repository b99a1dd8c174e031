/* Shared between the TLS store and the TLS stream; OpenSSL types allowed. */
#ifndef SG_TLS_INTERNAL_H
#define SG_TLS_INTERNAL_H

#include "tls/tls.h"
#include <openssl/ssl.h>

typedef struct {
    SSL_CTX *ctx;
    char **names; /* DNS SANs, may start with "*." */
    size_t n_names;
    char *path;
} sg_tls_cert_t;

struct sg_tls_store_s {
    _Atomic int refs;
    sg_tls_cert_t *certs;
    size_t n_certs;
    sg_tls_cert_t *default_cert;
};

int sg_tls__cert_covers(const sg_tls_cert_t *cert, const char *host, size_t len);
/* Called from the SNI callback: remembers which certificate serves ssl. */
void sg_tls__stream_set_cert(SSL *ssl, sg_tls_cert_t *cert);
int sg_tls__bio_init(void);
void sg_tls__bio_cleanup(void);

#endif
