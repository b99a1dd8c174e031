/* The BIO between OpenSSL and a TLS stream: reads ciphertext straight from
 * the pooled buffer libuv filled (no intermediate copy), writes ciphertext
 * into the stream's pooled chunks, and collects the TLS 1.3 traffic secrets
 * OpenSSL reports through the key-log callback. */
#include "tls/stream_tls_internal.h"

#include <stdlib.h>
#include <string.h>

static BIO_METHOD *sg_bio_method;
static int sg_ssl_ex_index = -1;

static int bio_read(BIO *b, char *out, int outl)
{
    sg_tls_stream_t *s = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (!s->rx_len) {
        BIO_set_retry_read(b);
        return -1;
    }
    size_t n = (size_t)outl < s->rx_len ? (size_t)outl : s->rx_len;
    memcpy(out, s->rx_buf->data + s->rx_off, n);
    s->rx_off += n;
    s->rx_len -= n;
    if (!s->rx_len) {
        sg_buf_unref(s->rx_buf);
        s->rx_buf = NULL;
    }
    return (int)n;
}

void sg_tls__tx_push(sg_tls_stream_t *s)
{
    if (s->n_tx_ready == s->cap_tx_ready) {
        size_t cap = s->cap_tx_ready ? s->cap_tx_ready * 2 : 4;
        tls_chunk_t **r = realloc(s->tx_ready, cap * sizeof(*r));
        if (!r) abort();
        s->tx_ready = r;
        s->cap_tx_ready = cap;
    }
    s->tx_ready[s->n_tx_ready++] = s->tx_cur;
    s->tx_cur = NULL;
}

/* Follows the record headers in what OpenSSL writes; records that start
 * after the server's application secret was derived count towards the
 * write sequence number the record layer continues from. */
static void count_records(sg_tls_stream_t *s, const unsigned char *p, size_t n)
{
    while (n) {
        if (s->out_body) {
            size_t k = n < s->out_body ? n : s->out_body;
            s->out_body -= (uint32_t)k;
            p += k;
            n -= k;
            continue;
        }
        s->out_hdr[s->out_hdr_n++] = *p++;
        n--;
        if (s->out_hdr_n == 5) {
            s->out_body = (uint32_t)s->out_hdr[3] << 8 | s->out_hdr[4];
            s->out_hdr_n = 0;
            if (s->have_secrets & SG_TLS_HAVE_SERVER) s->out_app_records++;
        }
    }
}

static int bio_write(BIO *b, const char *in, int inl)
{
    sg_tls_stream_t *s = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    size_t left = (size_t)inl;
    if (!s->handshake_done) count_records(s, (const unsigned char *)in, left);
    while (left) {
        tls_chunk_t *c = sg_tls__tx_chunk(s);
        size_t room = sg_tls__tx_room(c);
        size_t n = left < room ? left : room;
        memcpy((char *)(c + 1) + c->len, in, n);
        c->len += n;
        in += n;
        left -= n;
        if (c->len == c->buf->cap - sizeof(*c)) sg_tls__tx_push(s);
    }
    return inl;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    sg_tls_stream_t *s = BIO_get_data(b);
    switch (cmd) {
    case BIO_CTRL_FLUSH:
        return 1;
    case BIO_CTRL_PENDING:
        return s ? (long)s->rx_len : 0;
    case BIO_CTRL_WPENDING:
        return 0;
    default:
        return 0;
    }
}

static int bio_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

int sg_tls__bio_init(void)
{
    sg_bio_method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "sandgate");
    if (!sg_bio_method) return -1;
    BIO_meth_set_read(sg_bio_method, bio_read);
    BIO_meth_set_write(sg_bio_method, bio_write);
    BIO_meth_set_ctrl(sg_bio_method, bio_ctrl);
    BIO_meth_set_create(sg_bio_method, bio_create);
    sg_ssl_ex_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    if (sg_ssl_ex_index < 0) return -1;
    return sg_tls__rec_global_init();
}

void sg_tls__bio_cleanup(void)
{
    BIO_meth_free(sg_bio_method);
    sg_bio_method = NULL;
    sg_tls__rec_global_cleanup();
}

void sg_tls__keylog_cb(const SSL *ssl, const char *line)
{
    sg_tls_stream_t *s = SSL_get_ex_data(ssl, sg_ssl_ex_index);
    if (s && !s->handshake_done && sg_tls__rec_parse_keylog(line, &s->rec, &s->have_secrets) < 0)
        s->have_secrets = 0; /* malformed: this connection keeps OpenSSL */
}

void sg_tls__stream_set_cert(SSL *ssl, sg_tls_cert_t *cert)
{
    sg_tls_stream_t *s = SSL_get_ex_data(ssl, sg_ssl_ex_index);
    if (s) s->cert = cert;
}

int sg_tls__bio_attach(sg_tls_stream_t *s)
{
    BIO *bio = BIO_new(sg_bio_method);
    if (!bio) return UV_ENOMEM;
    BIO_set_data(bio, s);
    SSL_set_bio(s->ssl, bio, bio);
    SSL_set_ex_data(s->ssl, sg_ssl_ex_index, s);
    return 0;
}
