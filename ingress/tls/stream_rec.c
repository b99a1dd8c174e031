/* A TLS stream after its TLS 1.3 handshake, once OpenSSL is gone: records
 * in and out through record.c, in the stream's pooled buffers. */
#include "tls/stream_tls_internal.h"

#include "core/log.h"

#include <stdlib.h>
#include <string.h>

/* Takes over from OpenSSL after a TLS 1.3 handshake when everything it
 * needs is known: both application secrets, a supported suite, where the
 * server's write sequence stands, and no bytes OpenSSL read but did not
 * process. Otherwise the connection simply keeps OpenSSL. */
void sg_tls__offload(sg_tls_stream_t *s)
{
    if (SSL_version(s->ssl) != TLS1_3_VERSION) return; /* TLS 1.2: OpenSSL to the end */
    const SSL_CIPHER *cipher = SSL_get_current_cipher(s->ssl);
    int suite = cipher ? sg_tls__rec_suite(SSL_CIPHER_get_protocol_id(cipher)) : -1;
    const char *why = suite < 0 ? "cipher suite"
                      : s->have_secrets != (SG_TLS_HAVE_CLIENT | SG_TLS_HAVE_SERVER)
                          ? "traffic secrets"
                      : s->out_hdr_n || s->out_body ? "record boundary"
                      : SSL_has_pending(s->ssl)     ? "unprocessed input"
                                                    : NULL;
    const char *name = SSL_get_servername(s->ssl, TLSEXT_NAMETYPE_host_name);
    char *copy = !why && name ? strdup(name) : NULL;
    if (!why && ((name && !copy) || sg_tls__rec_init(&s->rec, suite, s->out_app_records) != 0))
        why = "key schedule";
    if (why) {
        free(copy);
        sg_log_debug("tls: connection keeps OpenSSL's record layer (%s)", why);
        return;
    }
    s->sni = copy;
    SSL_free(s->ssl); /* and the BIO with it */
    s->ssl = NULL;
    s->offloaded = 1;
}

static void rx_consume(sg_tls_stream_t *s, size_t n)
{
    s->rx_off += n;
    s->rx_len -= n;
    if (!s->rx_len) {
        sg_buf_unref(s->rx_buf);
        s->rx_buf = NULL;
        s->rx_off = 0;
    }
}

size_t sg_tls__tx_record_max(const sg_tls_stream_t *s)
{
    size_t fresh = s->base.pool->buf_size - sizeof(tls_chunk_t) - SG_TLS_RECORD_OVERHEAD;
    return fresh < SG_TLS_MAX_PLAINTEXT ? fresh : SG_TLS_MAX_PLAINTEXT;
}

int sg_tls__tx_seal_v(sg_tls_stream_t *s, uint8_t type, const uv_buf_t *pieces, unsigned n,
                      size_t len)
{
    if (len > sg_tls__tx_record_max(s)) return -1;
    tls_chunk_t *c = sg_tls__tx_chunk(s);
    if (sg_tls__tx_room(c) < len + SG_TLS_RECORD_OVERHEAD) {
        /* A record never shrinks to fill a chunk's tail: full-size
         * records cost the peer (and us) one AEAD pass each, and a 64 KiB
         * read would otherwise leave a sliver record behind. flush_tx
         * sends the chunks in one writev anyway. */
        sg_tls__tx_push(s);
        c = sg_tls__tx_chunk(s);
    }
    size_t w = sg_tls__rec_seal_v(&s->rec, type, pieces, n, (uint8_t *)(c + 1) + c->len);
    if (!w) return -1;
    c->len += w;
    if (sg_tls__tx_room(c) <= SG_TLS_RECORD_OVERHEAD) sg_tls__tx_push(s);
    return 0;
}

/* Sends a fatal alert (unless alert < 0: the peer sent one) and fails. */
static void fail_alert(sg_tls_stream_t *s, int alert)
{
    if (alert > 0 && !s->base.closing) {
        const uv_buf_t a = uv_buf_init((char[]){2, (char)alert}, 2);
        if (sg_tls__tx_seal_v(s, SG_TLS_CT_ALERT, &a, 1, a.len) == 0) sg_tls__flush_tx(s, NULL);
    }
    sg_log_debug("tls: record layer: %s alert %d", alert > 0 ? "sent" : "received", abs(alert));
    sg_tls__fail(s, UV_EPROTO);
}

/* Decrypts complete records from rx into pooled buffers and hands the
 * plaintext to the owner while it reads. Alerts and KeyUpdate are handled
 * here; a partial record waits in rx for the rest (see tcp_alloc_cb). */
void sg_tls__records_in(sg_tls_stream_t *s)
{
    while (s->base.reading && !s->base.closing && !s->failed) {
        sg_buf_t *pt = NULL;
        size_t pt_len = 0, n;
        int alert = 0;
        while ((n = sg_tls__rx_record(s)) != 0) {
            if (pt && pt->cap - pt_len < n) break; /* deliver what is there first */
            if (!pt) pt = sg_buf_alloc(s->base.pool);
            unsigned char *out = (unsigned char *)pt->data + pt_len;
            size_t len = 0;
            uint8_t type = 0;
            alert = sg_tls__rec_open(&s->rec, (const uint8_t *)s->rx_buf->data + s->rx_off, n, out,
                                     &len, &type);
            rx_consume(s, n);
            if (alert) break;
            if (type == SG_TLS_CT_APPLICATION_DATA) {
                pt_len += len;
            } else if (type == SG_TLS_CT_ALERT) {
                if (len != 2) {
                    alert = SG_TLS_ALERT_DECODE_ERROR;
                    break;
                }
                if (out[1] == SG_TLS_ALERT_USER_CANCELED) continue;
                if (out[1] != SG_TLS_ALERT_CLOSE_NOTIFY) {
                    alert = -out[1];
                    break;
                }
                /* close_notify: the peer is done sending; ignore the rest. */
                if (s->rx_len) rx_consume(s, s->rx_len);
                s->eof = 1;
                break;
            } else if (type == SG_TLS_CT_HANDSHAKE) {
                int update_requested = 0;
                alert = sg_tls__rec_handshake(&s->rec, out, len, &update_requested);
                if (alert) break;
                if (update_requested) {
                    tls_chunk_t *c = sg_tls__tx_chunk(s);
                    if (sg_tls__tx_room(c) < 5 + SG_TLS_RECORD_OVERHEAD) {
                        sg_tls__tx_push(s);
                        c = sg_tls__tx_chunk(s);
                    }
                    size_t w = sg_tls__rec_seal_key_update(&s->rec, (uint8_t *)(c + 1) + c->len);
                    if (!w) {
                        alert = SG_TLS_ALERT_INTERNAL_ERROR;
                        break;
                    }
                    c->len += w;
                }
            } else {
                alert = SG_TLS_ALERT_UNEXPECTED_MESSAGE;
                break;
            }
        }
        if (!alert && !n && s->rx_len >= 5) {
            /* Judge a record by its header before waiting for its body. */
            const unsigned char *h = (const unsigned char *)s->rx_buf->data + s->rx_off;
            if (h[0] != SG_TLS_CT_APPLICATION_DATA)
                alert = SG_TLS_ALERT_UNEXPECTED_MESSAGE;
            else if (((size_t)h[3] << 8 | h[4]) > SG_TLS_MAX_CIPHERTEXT)
                alert = SG_TLS_ALERT_RECORD_OVERFLOW;
        }
        if (pt_len) s->base.read_cb(&s->base, (ssize_t)pt_len, pt);
        if (pt) sg_buf_unref(pt);
        if (alert) {
            if (!s->base.closing && !s->failed) fail_alert(s, alert);
            break;
        }
        if (pt_len) continue;
        if (s->eof && !sg_tls__rx_record(s)) s->base.read_cb(&s->base, UV_EOF, NULL);
        break;
    }
    if (!s->base.closing && !s->failed) sg_tls__flush_tx(s, NULL); /* a KeyUpdate */
}
