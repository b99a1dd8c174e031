/* sg_stream_t over TLS. A custom BIO reads ciphertext straight from the
 * pooled buffer libuv filled (no intermediate copy, nothing held while idle)
 * and writes ciphertext into pooled chunks that go to uv_write as they are;
 * each chunk carries its own uv_write_t so no write allocates.
 *
 * Once a TLS 1.3 handshake is done the SSL object is freed and records are
 * protected here (record.c) with the traffic secrets OpenSSL reported:
 * OpenSSL keeps about 14 KB per connection, the key state 230 bytes, and
 * memory per idle connection is part of the product. TLS 1.2 connections
 * keep OpenSSL to the end. */
#include "tls/tls_internal.h"

#include "core/log.h"

#include <openssl/err.h>
#include <stdlib.h>
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

const size_t sg_tls_stream_size = sizeof(struct sg_tls_stream_s);

static BIO_METHOD *sg_bio_method;
static int sg_ssl_ex_index = -1;

#define T(s) ((sg_tls_stream_t *)(s))

/* ---- the BIO ---- */

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

/* The chunk ciphertext goes into next, started when there is none. */
static tls_chunk_t *tx_chunk(sg_tls_stream_t *s)
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

static size_t tx_room(const tls_chunk_t *c)
{
    return c->buf->cap - sizeof(*c) - c->len;
}

static void tx_push(sg_tls_stream_t *s)
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
        tls_chunk_t *c = tx_chunk(s);
        size_t room = tx_room(c);
        size_t n = left < room ? left : room;
        memcpy((char *)(c + 1) + c->len, in, n);
        c->len += n;
        in += n;
        left -= n;
        if (c->len == c->buf->cap - sizeof(*c)) tx_push(s);
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

/* ---- writing ciphertext ---- */

static void chunk_write_cb(uv_write_t *req, int status)
{
    tls_chunk_t *c = req->data;
    sg_tls_stream_t *s = c->stream;
    sg_stream_write_t *user = c->user;
    sg_buf_unref(c->buf);
    if (user) {
        s->base.write_queue_bytes -= user->bytes;
        user->cb(user, status);
    }
}

/* Submits every produced chunk; the last one carries `user` (may be NULL
 * for handshake and alert bytes). Returns 0 or a libuv error. One writev
 * offers all chunks (up to SG_TLS_FLUSH_IOV) to the socket: chunks it takes
 * whole need no write request (see sg_stream_tcp_loop_init: each completed
 * uv_write costs an epoll_ctl); the first one it does not take whole, and
 * every later one, go through uv_write so the order holds. */
#define SG_TLS_FLUSH_IOV 16
static int flush_tx(sg_tls_stream_t *s, sg_stream_write_t *user)
{
    if (s->tx_cur && s->tx_cur->len) tx_push(s);
    uv_buf_t iov[SG_TLS_FLUSH_IOV];
    unsigned niov = 0;
    for (size_t i = 0; i < s->n_tx_ready && niov < SG_TLS_FLUSH_IOV; i++)
        iov[niov++] = uv_buf_init((char *)(s->tx_ready[i] + 1), (unsigned)s->tx_ready[i]->len);
    int taken = niov ? sg_stream__try_write(&s->base, iov, niov) : UV_EAGAIN;
    /* direct while chunks complete without a request: try_write answered
     * (so the loop has a deferred-callback queue and nothing was queued
     * before), and no earlier chunk of this flush went to uv_write */
    int direct = taken >= 0;
    size_t left = taken > 0 ? (size_t)taken : 0;
    int rc = 0;
    for (size_t i = 0; i < s->n_tx_ready; i++) {
        tls_chunk_t *c = s->tx_ready[i];
        int last = i + 1 == s->n_tx_ready;
        c->user = last ? user : NULL;
        c->req.data = c;
        uv_buf_t b = uv_buf_init((char *)(c + 1), (unsigned)c->len);
        if (!rc && direct && left >= c->len) {
            left -= c->len;
            sg_buf_unref(c->buf);
            if (c->user && sg_stream__defer_done(&s->base, c->user) != 0) {
                s->base.write_queue_bytes -= c->user->bytes;
                c->user->cb(c->user, 0); /* unreachable: direct needs the queue */
            }
            continue;
        }
        if (left) {
            b.base += left;
            b.len -= left;
            left = 0;
        }
        direct = 0;
        int r = rc ? rc : uv_write(&c->req, (uv_stream_t *)&s->base.tcp, &b, 1, chunk_write_cb);
        if (r) {
            rc = r;
            sg_buf_unref(c->buf);
        }
    }
    s->n_tx_ready = 0;
    return rc;
}

/* ---- reading ---- */

/* SSL_get_error needs an empty error queue before the call it explains.
 * ERR_clear_error walks every slot of the queue (hundreds of instructions,
 * three times per proxied request); peeking an empty queue is cheap. */
static inline void clear_ssl_errors(void)
{
    if (ERR_peek_error()) ERR_clear_error();
}

static void fail(sg_tls_stream_t *s, int status)
{
    s->failed = 1;
    sg_tls__hs_cancel(&s->hs);
    if (s->tcp_reading) uv_read_stop((uv_stream_t *)&s->base.tcp);
    s->tcp_reading = 0;
    if (s->base.read_cb && !s->base.closing) s->base.read_cb(&s->base, status, NULL);
}

static void update_tcp_reading(sg_tls_stream_t *s);

/* ---- TLS 1.3 records after the handshake (record.c) ---- */

/* Takes over from OpenSSL after a TLS 1.3 handshake when everything it
 * needs is known: both application secrets, a supported suite, where the
 * server's write sequence stands, and no bytes OpenSSL read but did not
 * process. Otherwise the connection simply keeps OpenSSL. */
static void offload(sg_tls_stream_t *s)
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

/* Length of the complete record at the start of rx, else 0. */
static size_t rx_record(const sg_tls_stream_t *s)
{
    if (s->rx_len < 5) return 0;
    const unsigned char *h = (const unsigned char *)s->rx_buf->data + s->rx_off;
    size_t n = 5 + ((size_t)h[3] << 8 | h[4]);
    return n <= s->rx_len ? n : 0;
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

/* Seals len bytes of content `type` into the pending ciphertext, as many
 * records as it takes. Returns 0 or -1. */
static int tx_seal(sg_tls_stream_t *s, uint8_t type, const char *data, size_t len)
{
    do {
        tls_chunk_t *c = tx_chunk(s);
        size_t room = tx_room(c);
        size_t n = len < SG_TLS_MAX_PLAINTEXT ? len : SG_TLS_MAX_PLAINTEXT;
        if (room < n + SG_TLS_RECORD_OVERHEAD) {
            /* A record never shrinks to fill a chunk's tail: full-size
             * records cost the peer (and us) one AEAD pass each, and a
             * 64 KiB read would otherwise leave a sliver record behind.
             * flush_tx sends the chunks in one writev anyway. */
            if (c->len) {
                tx_push(s);
                continue;
            }
            if (room <= SG_TLS_RECORD_OVERHEAD) return -1; /* chunks too small: cannot be */
            n = room - SG_TLS_RECORD_OVERHEAD;
        }
        size_t w =
            sg_tls__rec_seal(&s->rec, type, (const uint8_t *)data, n, (uint8_t *)(c + 1) + c->len);
        if (!w) return -1;
        c->len += w;
        data += n;
        len -= n;
        if (tx_room(c) <= SG_TLS_RECORD_OVERHEAD) tx_push(s);
    } while (len);
    return 0;
}

/* Sends a fatal alert (unless alert < 0: the peer sent one) and fails. */
static void fail_alert(sg_tls_stream_t *s, int alert)
{
    if (alert > 0 && !s->base.closing) {
        const char a[2] = {2, (char)alert};
        if (tx_seal(s, SG_TLS_CT_ALERT, a, sizeof(a)) == 0) flush_tx(s, NULL);
    }
    sg_log_debug("tls: record layer: %s alert %d", alert > 0 ? "sent" : "received", abs(alert));
    fail(s, UV_EPROTO);
}

/* Decrypts complete records from rx into pooled buffers and hands the
 * plaintext to the owner while it reads. Alerts and KeyUpdate are handled
 * here; a partial record waits in rx for the rest (see tcp_alloc_cb). */
static void records_in(sg_tls_stream_t *s)
{
    while (s->base.reading && !s->base.closing && !s->failed) {
        sg_buf_t *pt = NULL;
        size_t pt_len = 0, n;
        int alert = 0;
        while ((n = rx_record(s)) != 0) {
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
                    tls_chunk_t *c = tx_chunk(s);
                    if (tx_room(c) < 5 + SG_TLS_RECORD_OVERHEAD) {
                        tx_push(s);
                        c = tx_chunk(s);
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
        if (s->eof && !rx_record(s)) s->base.read_cb(&s->base, UV_EOF, NULL);
        break;
    }
    if (!s->base.closing && !s->failed) flush_tx(s, NULL); /* a KeyUpdate */
}

/* Runs the handshake, then hands plaintext to the owner while it reads. */
static void pump(sg_tls_stream_t *s)
{
    if (!s->handshake_done) {
        clear_ssl_errors();
        int r = SSL_do_handshake(s->ssl);
        flush_tx(s, NULL);
        if (r != 1) {
            int e = SSL_get_error(s->ssl, r);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return;
            if (s->counters) sg_counter_inc(&s->counters->handshake_failures);
            sg_log_debug("tls handshake failed: %s",
                         ERR_peek_last_error() ? ERR_reason_error_string(ERR_peek_last_error())
                                               : "peer closed");
            fail(s, UV_EPROTO);
            return;
        }
        s->handshake_done = 1;
        s->resumed = SSL_session_reused(s->ssl) ? 1 : 0;
        offload(s);
        s->base.server_name =
            s->ssl ? SSL_get_servername(s->ssl, TLSEXT_NAMETYPE_host_name) : s->sni;
        if (!s->cert) s->cert = s->store->default_cert;
        if (s->counters) {
            sg_counter_inc(&s->counters->handshakes);
            if (s->resumed) sg_counter_inc(&s->counters->resumed);
        }
        if (s->base.on_handshake) s->base.on_handshake(&s->base);
        if (s->base.closing) return;
        /* No update_tcp_reading here: every caller runs it after pump, once
         * the records that came with the client's Finished are consumed.
         * Run now it would see them undrained and stop the socket, and the
         * caller would start it again: libuv turns that pair into two
         * epoll_ctl calls (ADD, EEXIST, MOD) per connection. */
    }
    if (s->offloaded) {
        records_in(s);
        return;
    }
    while (s->base.reading && !s->base.closing && !s->failed) {
        sg_buf_t *buf = sg_buf_alloc(s->base.pool);
        clear_ssl_errors();
        int n = SSL_read(s->ssl, buf->data, (int)buf->cap);
        if (n > 0) {
            s->base.read_cb(&s->base, n, buf);
            sg_buf_unref(buf);
            /* Every received byte went to OpenSSL and it holds nothing more,
             * processed or not: another SSL_read could only say WANT_READ.
             * The next bytes from the socket pump again. */
            if (!s->rx_len && !s->eof && !SSL_has_pending(s->ssl)) break;
            continue;
        }
        sg_buf_unref(buf);
        int e = SSL_get_error(s->ssl, n);
        flush_tx(s, NULL); /* post-handshake messages (tickets, key updates) */
        if (e == SSL_ERROR_WANT_READ) {
            if (s->eof) s->base.read_cb(&s->base, UV_EOF, NULL);
            break;
        }
        if (e == SSL_ERROR_ZERO_RETURN) {
            s->base.read_cb(&s->base, UV_EOF, NULL);
            break;
        }
        fail(s, UV_EPROTO);
        break;
    }
    if (!s->base.closing) flush_tx(s, NULL);
}

static void tcp_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *out)
{
    sg_tls_stream_t *s = h->data;
    if (s->offloaded && s->rx_len) {
        /* The rest of a partial record lands right after it, in the same
         * buffer (only ever ours: plaintext goes to buffers of its own). A
         * record is at most 16 KiB + 261 bytes, a buffer 64 KiB. */
        if (s->rx_off) memmove(s->rx_buf->data, s->rx_buf->data + s->rx_off, s->rx_len);
        s->rx_off = 0;
        s->rx_appending = 1;
        out->base = s->rx_buf->data + s->rx_len;
        out->len = s->rx_buf->cap - s->rx_len;
        return;
    }
    sg_buf_t *b = sg_buf_alloc(s->base.pool);
    out->base = b->data;
    out->len = b->cap;
}

static void tcp_read_cb(uv_stream_t *h, ssize_t nread, const uv_buf_t *ub)
{
    sg_tls_stream_t *s = h->data;
    if (s->rx_appending) {
        s->rx_appending = 0;
        if (nread > 0) {
            s->rx_len += (size_t)nread;
            pump(s);
            update_tcp_reading(s);
            return;
        }
        ub = NULL; /* the tail of rx_buf: nothing to give back */
    }
    sg_buf_t *b = ub && ub->base ? (sg_buf_t *)(ub->base - offsetof(sg_buf_t, data)) : NULL;
    if (nread < 0) {
        if (b) sg_buf_unref(b);
        if (!s->handshake_done) {
            if (s->counters && nread != UV_EOF) sg_counter_inc(&s->counters->handshake_failures);
            fail(s, nread == UV_EOF ? UV_EOF : (int)nread);
            return;
        }
        if (nread == UV_EOF) {
            s->eof = 1;
            uv_read_stop(h);
            s->tcp_reading = 0;
            pump(s);
            return;
        }
        fail(s, (int)nread);
        return;
    }
    if (nread == 0) {
        if (b) sg_buf_unref(b);
        return;
    }
    if (s->base.preamble) {
        /* A PROXY header travels in clear before the ClientHello. */
        size_t used = 0;
        int r = sg_stream__preamble_feed(&s->base, b->data, (size_t)nread, &used);
        if (r < 0) {
            sg_buf_unref(b);
            if (s->counters) sg_counter_inc(&s->counters->handshake_failures);
            fail(s, UV_EPROTO);
            return;
        }
        if (r == 0 || used == (size_t)nread) {
            sg_buf_unref(b);
            return;
        }
        memmove(b->data, b->data + used, (size_t)nread - used);
        nread -= (ssize_t)used;
    }
    if (s->rx_len) {
        /* Unconsumed ciphertext remains (a handshake waiting in the queue,
         * or OpenSSL holding input while the owner does not read): join it
         * with the new bytes. More than a buffer of it is no client's
         * ClientHello and never happens after a handshake (reading stops
         * while rx holds input). */
        sg_buf_t *j = sg_buf_alloc(s->base.pool);
        if (s->rx_len + (size_t)nread > j->cap) {
            sg_buf_unref(j);
            sg_buf_unref(b);
            if (!s->handshake_done && s->counters) sg_counter_inc(&s->counters->handshake_failures);
            fail(s, UV_EPROTO);
            return;
        }
        memcpy(j->data, s->rx_buf->data + s->rx_off, s->rx_len);
        memcpy(j->data + s->rx_len, b->data, (size_t)nread);
        sg_buf_unref(s->rx_buf);
        sg_buf_unref(b);
        s->rx_buf = j;
        s->rx_off = 0;
        s->rx_len += (size_t)nread;
    } else {
        s->rx_buf = b;
        s->rx_off = 0;
        s->rx_len = (size_t)nread;
    }
    /* A ClientHello is metered (hs_queue.c): it may wait for a later turn,
     * the socket read meanwhile, bytes joining rx. The client's Finished is
     * not: the request that usually comes with it is served now, and
     * finishing a handshake is cheap next to starting one. */
    if (!s->handshake_done && SSL_in_before(s->ssl) && !s->hs.queued) {
        int r = sg_tls__hs_submit(s->base.tcp.loop, &s->hs);
        if (r == 1 && s->counters) sg_counter_inc(&s->counters->deferred);
        if (r >= 0) return;
    } else if (s->hs.queued) {
        return; /* more of a ClientHello whose turn has not come */
    }
    pump(s);
    update_tcp_reading(s);
}

void sg_tls__hs_run(sg_tls_hs_item_t *it)
{
    sg_tls_stream_t *s = (sg_tls_stream_t *)((char *)it - offsetof(sg_tls_stream_t, hs));
    if (s->base.closing || s->failed) return;
    pump(s);
    update_tcp_reading(s);
}

/* The socket is read during the handshake, and afterwards only while the
 * owner reads and OpenSSL has consumed what it was given (offloaded: while
 * rx holds no complete record). */
static void update_tcp_reading(sg_tls_stream_t *s)
{
    if (s->base.closing || s->failed) return;
    int drained = s->offloaded ? !rx_record(s) : !s->rx_len;
    int want = !s->eof && (!s->handshake_done || (s->base.reading && drained));
    if (want && !s->tcp_reading) {
        if (uv_read_start((uv_stream_t *)&s->base.tcp, tcp_alloc_cb, tcp_read_cb) == 0)
            s->tcp_reading = 1;
    } else if (!want && s->tcp_reading) {
        uv_read_stop((uv_stream_t *)&s->base.tcp);
        s->tcp_reading = 0;
    }
}

static void pending_idle_cb(uv_idle_t *h)
{
    sg_tls_stream_t *s = h->data;
    uv_idle_stop(h);
    s->idle_active = 0;
    pump(s);
    update_tcp_reading(s);
}

static int tls_read_start(sg_stream_t *base, sg_stream_read_cb cb)
{
    sg_tls_stream_t *s = T(base);
    base->read_cb = cb;
    if (base->closing) return 0;
    base->reading = 1;
    /* Plaintext may already be buffered inside OpenSSL or in rx: deliver it
     * from the loop, never from inside this call. */
    if (s->handshake_done && (s->rx_len || s->eof || (s->ssl && SSL_pending(s->ssl))) &&
        !s->idle_active) {
        s->idle_active = 1;
        uv_idle_start(&s->pending_idle, pending_idle_cb);
    }
    update_tcp_reading(s);
    return 0;
}

static int tls_read_stop(sg_stream_t *base)
{
    sg_tls_stream_t *s = T(base);
    base->reading = 0;
    if (s->idle_active) {
        uv_idle_stop(&s->pending_idle);
        s->idle_active = 0;
    }
    update_tcp_reading(s);
    return 0;
}

static int tls_write(sg_stream_t *base, sg_stream_write_t *w, const uv_buf_t *bufs, unsigned n,
                     sg_stream_write_cb cb)
{
    sg_tls_stream_t *s = T(base);
    if (!s->handshake_done || s->failed || base->closing) return UV_ENOTCONN;
    size_t total = 0;
    w->stream = base;
    w->cb = cb;
    for (unsigned i = 0; i < n; i++) {
        if (!bufs[i].len) continue;
        if (s->offloaded) {
            if (tx_seal(s, SG_TLS_CT_APPLICATION_DATA, bufs[i].base, bufs[i].len) != 0) {
                flush_tx(s, NULL);
                return UV_EPROTO;
            }
            total += bufs[i].len;
            continue;
        }
        clear_ssl_errors();
        int r = SSL_write(s->ssl, bufs[i].base, (int)bufs[i].len);
        if (r <= 0) {
            flush_tx(s, NULL);
            return UV_EPROTO;
        }
        total += bufs[i].len;
    }
    w->bytes = total;
    if (!s->tx_cur && !s->n_tx_ready) {
        /* Nothing to send (empty write): complete it from the loop anyway by
         * producing no chunk; treat as an immediate success via a 0-byte
         * write so ordering is kept. */
        tx_chunk(s);
        tx_push(s);
    }
    base->write_queue_bytes += total;
    int rc = flush_tx(s, w);
    if (rc) {
        base->write_queue_bytes -= total;
        return rc;
    }
    return 0;
}

static void tls_shutdown_cb(uv_shutdown_t *req, int status)
{
    sg_tls_stream_t *s = req->data;
    free(req);
    if (s->base.shutdown_cb) s->base.shutdown_cb(&s->base, status);
}

static int tls_shutdown(sg_stream_t *base, sg_stream_shutdown_cb cb)
{
    sg_tls_stream_t *s = T(base);
    if (s->handshake_done && !s->failed && s->offloaded) {
        static const char close_notify[2] = {1, SG_TLS_ALERT_CLOSE_NOTIFY};
        if (tx_seal(s, SG_TLS_CT_ALERT, close_notify, sizeof(close_notify)) == 0) flush_tx(s, NULL);
    } else if (s->handshake_done && !s->failed) {
        clear_ssl_errors();
        SSL_shutdown(s->ssl); /* queues close_notify */
        flush_tx(s, NULL);
    }
    uv_shutdown_t *req = malloc(sizeof(*req));
    if (!req) return UV_ENOMEM;
    req->data = s;
    base->shutdown_cb = cb;
    int rc = uv_shutdown(req, (uv_stream_t *)&base->tcp, tls_shutdown_cb);
    if (rc) free(req);
    return rc;
}

static void handle_closed(uv_handle_t *h)
{
    sg_tls_stream_t *s = h->data;
    if (--s->handles_open) return;
    if (s->ssl) SSL_free(s->ssl);
    s->ssl = NULL;
    sg_tls__rec_free(&s->rec); /* also wipes secrets a handshake left */
    free(s->sni);
    s->sni = NULL;
    s->base.server_name = NULL;
    if (s->rx_buf) sg_buf_unref(s->rx_buf);
    s->rx_buf = NULL;
    if (s->tx_cur) sg_buf_unref(s->tx_cur->buf);
    s->tx_cur = NULL;
    for (size_t i = 0; i < s->n_tx_ready; i++) sg_buf_unref(s->tx_ready[i]->buf);
    free(s->tx_ready);
    s->tx_ready = NULL;
    sg_tls_store_unref(s->store);
    sg_stream__preamble_free(&s->base);
    if (s->base.close_cb) s->base.close_cb(&s->base);
}

static void tls_close(sg_stream_t *base, sg_stream_close_cb cb)
{
    sg_tls_stream_t *s = T(base);
    if (base->closing) return;
    base->closing = 1;
    base->reading = 0;
    base->close_cb = cb;
    sg_tls__hs_cancel(&s->hs);
    uv_close((uv_handle_t *)&base->tcp, handle_closed);
    uv_close((uv_handle_t *)&s->pending_idle, handle_closed);
}

static const sg_stream_ops_t sg_stream_tls_ops = {
    .name = "tls",
    .read_start = tls_read_start,
    .read_stop = tls_read_stop,
    .write = tls_write,
    .shutdown = tls_shutdown,
    .close = tls_close,
};

int sg_tls_stream_init(sg_stream_t *base, uv_loop_t *loop, sg_buf_pool_t *pool,
                       sg_tls_store_t *store, sg_tls_counters_t *counters)
{
    sg_tls_stream_t *s = T(base);
    memset(s, 0, sizeof(*s));
    base->ops = &sg_stream_tls_ops;
    base->pool = pool;
    base->is_tls = 1;
    s->store = store;
    sg_tls_store_ref(store);
    s->counters = counters;
    int rc = uv_tcp_init(loop, &base->tcp);
    if (rc) {
        sg_tls_store_unref(store);
        return rc;
    }
    base->tcp.data = s;
    uv_idle_init(loop, &s->pending_idle);
    s->pending_idle.data = s;
    s->handles_open = 2;
    return 0;
}

int sg_tls_stream_attach(sg_stream_t *base)
{
    sg_tls_stream_t *s = T(base);
    s->ssl = SSL_new(s->store->default_cert->ctx);
    if (!s->ssl) return UV_ENOMEM;
    BIO *bio = BIO_new(sg_bio_method);
    if (!bio) return UV_ENOMEM;
    BIO_set_data(bio, s);
    SSL_set_bio(s->ssl, bio, bio);
    SSL_set_ex_data(s->ssl, sg_ssl_ex_index, s);
    SSL_set_accept_state(s->ssl);
    return 0;
}

int sg_tls_stream_covers_host(sg_stream_t *base, const char *host, size_t len)
{
    sg_tls_stream_t *s = T(base);
    return s->cert && sg_tls__cert_covers(s->cert, host, len);
}

int sg_tls_stream_resumed(sg_stream_t *base)
{
    sg_tls_stream_t *s = T(base);
    return s->handshake_done ? s->resumed : 0;
}
