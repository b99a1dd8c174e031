/* The TLS stream's state, shared by its files: stream_tls.c (the stream
 * interface, handshake, OpenSSL's record layer), bio.c (the BIO between
 * OpenSSL and the stream's buffers) and stream_rec.c (TLS 1.3 records after
 * the handshake, once OpenSSL is gone). Private to tls/. */
#ifndef SG_TLS_STREAM_TLS_INTERNAL_H
#define SG_TLS_STREAM_TLS_INTERNAL_H

#include "tls/tls_internal.h"

#include <string.h>

/* Lives at the start of a pooled buffer; ciphertext follows it. */
typedef struct {
    uv_write_t req;
    sg_buf_t *buf;
    struct sg_tls_stream_s *stream;
    sg_stream_write_t *user; /* fires when this, the last chunk of a write, is done */
    size_t len;
} tls_chunk_t;

struct sg_tls_stream_s {
    sg_stream_t base;
    SSL *ssl;
    sg_tls_store_t *store;
    sg_tls_cert_t *cert;
    sg_tls_counters_t *counters;
    uv_idle_t pending_idle; /* delivers buffered plaintext after read_start */
    sg_tls_hs_item_t hs;    /* waiting in the loop's handshake queue */
    /* ciphertext received but not yet consumed by OpenSSL */
    sg_buf_t *rx_buf;
    size_t rx_off, rx_len;
    /* ciphertext produced, not yet submitted */
    tls_chunk_t *tx_cur;
    tls_chunk_t **tx_ready;
    size_t n_tx_ready, cap_tx_ready;
    int handles_open;
    /* TLS 1.3: secrets gathered during the handshake, then the record
     * state that replaces ssl (offloaded). */
    sg_tls_rec_t rec;
    char *sni; /* the server name, copied before ssl is freed */
    /* Record boundaries of the ciphertext OpenSSL writes, to count the
     * records it sent under the server's application keys (tickets). */
    uint32_t out_body, out_app_records;
    uint8_t out_hdr[5], out_hdr_n;
    uint8_t have_secrets; /* SG_TLS_HAVE_ bits */
    unsigned handshake_done : 1, failed : 1, tcp_reading : 1, idle_active : 1, eof : 1;
    unsigned resumed : 1;
    unsigned offloaded : 1;    /* ssl is gone; rec protects the records */
    unsigned rx_appending : 1; /* the read in flight lands after rx's partial record */
};

/* ---- ciphertext out (bio.c, stream_tls.c) ---- */

/* The chunk ciphertext goes into next, started when there is none. */
static inline tls_chunk_t *sg_tls__tx_chunk(sg_tls_stream_t *s)
{
    if (!s->tx_cur) {
        sg_buf_t *buf = sg_buf_alloc(s->base.pool);
        s->tx_cur = (tls_chunk_t *)buf->data;
        memset(s->tx_cur, 0, sizeof(*s->tx_cur));
        s->tx_cur->buf = buf;
        s->tx_cur->stream = s;
    }
    return s->tx_cur;
}

static inline size_t sg_tls__tx_room(const tls_chunk_t *c)
{
    return c->buf->cap - sizeof(*c) - c->len;
}

/* Length of the complete record at the start of rx, else 0. */
static inline size_t sg_tls__rx_record(const sg_tls_stream_t *s)
{
    if (s->rx_len < 5) return 0;
    const unsigned char *h = (const unsigned char *)s->rx_buf->data + s->rx_off;
    size_t n = 5 + ((size_t)h[3] << 8 | h[4]);
    return n <= s->rx_len ? n : 0;
}

/* Moves the current chunk to the ready list. */
void sg_tls__tx_push(sg_tls_stream_t *s);
/* Submits every ready chunk; the last one carries `user` (may be NULL for
 * handshake and alert bytes). Returns 0 or a libuv error. */
int sg_tls__flush_tx(sg_tls_stream_t *s, sg_stream_write_t *user);
/* Marks the stream failed, stops reading and tells the owner (status). */
void sg_tls__fail(sg_tls_stream_t *s, int status);

/* ---- the BIO (bio.c) ---- */

/* Gives s->ssl its BIO and links ssl back to s. Returns 0 or UV_ENOMEM. */
int sg_tls__bio_attach(sg_tls_stream_t *s);

/* ---- TLS 1.3 records after the handshake (stream_rec.c) ---- */

/* Frees the SSL object and continues with record.c when everything it
 * needs is known; otherwise leaves the connection with OpenSSL. */
void sg_tls__offload(sg_tls_stream_t *s);
/* The most plaintext one record may carry here: a full TLS record, unless
 * the pool's buffers are too small to hold one. */
size_t sg_tls__tx_record_max(const sg_tls_stream_t *s);
/* Seals the n pieces (len bytes in all, at most sg_tls__tx_record_max) of
 * content `type` into the pending ciphertext as one record. Returns 0 or
 * -1. */
int sg_tls__tx_seal_v(sg_tls_stream_t *s, uint8_t type, const uv_buf_t *pieces, unsigned n,
                      size_t len);
/* Opens the complete records in rx and hands the plaintext to the owner
 * while it reads; alerts and KeyUpdate are handled here. */
void sg_tls__records_in(sg_tls_stream_t *s);

#endif
