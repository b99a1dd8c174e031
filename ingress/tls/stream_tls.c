/* sg_stream_t over TLS: the stream interface, the handshake, and reading
 * and writing through OpenSSL's record layer. Ciphertext goes through the
 * BIO in bio.c: read straight from the pooled buffer libuv filled (no
 * intermediate copy, nothing held while idle), written into pooled chunks
 * that go to uv_write as they are; each chunk carries its own uv_write_t so
 * no write allocates.
 *
 * Once a TLS 1.3 handshake is done the SSL object is freed and records are
 * protected by stream_rec.c (record.c) with the traffic secrets OpenSSL
 * reported: OpenSSL keeps about 14 KB per connection, the key state 230
 * bytes, and memory per idle connection is part of the product. TLS 1.2
 * connections keep OpenSSL to the end. */
#include "tls/stream_tls_internal.h"

#include "core/log.h"

#include <openssl/err.h>
#include <stdlib.h>
#include <string.h>

const size_t sg_tls_stream_size = sizeof(struct sg_tls_stream_s);

#define T(s) ((sg_tls_stream_t *)(s))

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

/* One writev offers all chunks (up to SG_TLS_FLUSH_IOV) to the socket: chunks it takes
 * whole need no write request (see sg_stream_tcp_loop_init: each completed
 * uv_write costs an epoll_ctl); the first one it does not take whole, and
 * every later one, go through uv_write so the order holds. */
#define SG_TLS_FLUSH_IOV 16
int sg_tls__flush_tx(sg_tls_stream_t *s, sg_stream_write_t *user)
{
    if (s->tx_cur && s->tx_cur->len) sg_tls__tx_push(s);
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

void sg_tls__fail(sg_tls_stream_t *s, int status)
{
    s->failed = 1;
    sg_tls__hs_cancel(&s->hs);
    if (s->tcp_reading) uv_read_stop((uv_stream_t *)&s->base.tcp);
    s->tcp_reading = 0;
    if (s->base.read_cb && !s->base.closing) s->base.read_cb(&s->base, status, NULL);
}

static void update_tcp_reading(sg_tls_stream_t *s);

/* Runs the handshake, then hands plaintext to the owner while it reads. */
static void pump(sg_tls_stream_t *s)
{
    if (!s->handshake_done) {
        clear_ssl_errors();
        int r = SSL_do_handshake(s->ssl);
        sg_tls__flush_tx(s, NULL);
        if (r != 1) {
            int e = SSL_get_error(s->ssl, r);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return;
            if (s->counters) sg_counter_inc(&s->counters->handshake_failures);
            sg_log_debug("tls handshake failed: %s",
                         ERR_peek_last_error() ? ERR_reason_error_string(ERR_peek_last_error())
                                               : "peer closed");
            sg_tls__fail(s, UV_EPROTO);
            return;
        }
        s->handshake_done = 1;
        s->resumed = SSL_session_reused(s->ssl) ? 1 : 0;
        sg_tls__offload(s);
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
        sg_tls__records_in(s);
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
        sg_tls__flush_tx(s, NULL); /* post-handshake messages (tickets, key updates) */
        if (e == SSL_ERROR_WANT_READ) {
            if (s->eof) s->base.read_cb(&s->base, UV_EOF, NULL);
            break;
        }
        if (e == SSL_ERROR_ZERO_RETURN) {
            s->base.read_cb(&s->base, UV_EOF, NULL);
            break;
        }
        sg_tls__fail(s, UV_EPROTO);
        break;
    }
    if (!s->base.closing) sg_tls__flush_tx(s, NULL);
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
            sg_tls__fail(s, nread == UV_EOF ? UV_EOF : (int)nread);
            return;
        }
        if (nread == UV_EOF) {
            s->eof = 1;
            uv_read_stop(h);
            s->tcp_reading = 0;
            pump(s);
            return;
        }
        sg_tls__fail(s, (int)nread);
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
            sg_tls__fail(s, UV_EPROTO);
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
            sg_log_debug("tls: %zu bytes arrived before the handshake ran, more than %zu; "
                         "connection refused",
                         s->rx_len + (size_t)nread, (size_t)j->cap);
            sg_buf_unref(j);
            sg_buf_unref(b);
            if (!s->handshake_done && s->counters) {
                sg_counter_inc(&s->counters->handshake_failures);
                sg_counter_inc(&s->counters->early_input_refused);
            }
            sg_tls__fail(s, UV_EPROTO);
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
    int drained = s->offloaded ? !sg_tls__rx_record(s) : !s->rx_len;
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

/* Ciphertext goes to the socket every SG_TLS_FLUSH_BYTES of plaintext, not
 * in one writev per call: TCP paces a socket (BBR, or fq) at about the rate
 * it delivers, and a burst of several records written at once runs ahead of
 * that, so the kernel holds the rest back and arms a pacing timer that
 * sends it later from a softirq: about 6 timers per 1 MiB response, and
 * 17% of the proxy's CPU time in the 1 MiB HTTPS benchmark. Sealing takes
 * about as long as the wire needs for the bytes sealed, so writing every
 * two records keeps the socket within its pace (nginx, writing each record
 * as SSL_write makes it, gets there the same way). */
#define SG_TLS_FLUSH_BYTES (2 * SG_TLS_MAX_PLAINTEXT)

/* Most pieces one record gathers; a write with more small buffers than this
 * simply makes more records. */
#define SG_TLS_GATHER_MAX 16

/* Protects one record's worth of pieces: in place by record.c once OpenSSL is
 * gone, else through SSL_write, which takes one buffer (several pieces are
 * copied into one first: at most a record, and only on TLS 1.2 or a
 * connection that kept OpenSSL). Returns 0 or -1. */
static int seal_record(sg_tls_stream_t *s, const uv_buf_t *pieces, unsigned n, size_t len)
{
    if (s->offloaded) return sg_tls__tx_seal_v(s, SG_TLS_CT_APPLICATION_DATA, pieces, n, len);
    static _Thread_local char gathered[SG_TLS_MAX_PLAINTEXT];
    const char *p = pieces[0].base;
    if (n > 1) {
        size_t off = 0;
        for (unsigned i = 0; i < n; i++) {
            memcpy(gathered + off, pieces[i].base, pieces[i].len);
            off += pieces[i].len;
        }
        p = gathered;
    }
    clear_ssl_errors();
    return SSL_write(s->ssl, p, (int)len) > 0 ? 0 : -1;
}

/* Seals one record of the write, first sending what earlier records of it
 * made once that reaches SG_TLS_FLUSH_BYTES. Returns 0 or a libuv error. */
static int write_record(sg_tls_stream_t *s, const uv_buf_t *pieces, unsigned n, size_t len,
                        size_t *unflushed)
{
    if (*unflushed >= SG_TLS_FLUSH_BYTES) {
        int rc = sg_tls__flush_tx(s, NULL);
        if (rc) return rc; /* what was submitted completes on its own */
        *unflushed = 0;
    }
    if (seal_record(s, pieces, n, len) != 0) {
        sg_tls__flush_tx(s, NULL);
        return UV_EPROTO;
    }
    *unflushed += len;
    return 0;
}

/* Records are cut from the write's buffers as if they were one: a response
 * head and the body bytes after it, or a chunk's size line, data and CRLF,
 * share a record instead of costing one each (a record per buffer also
 * made a client that reads one record per wake-up, as wrk does, wait a
 * turn of its loop for the second). */
static int tls_write(sg_stream_t *base, sg_stream_write_t *w, const uv_buf_t *bufs, unsigned n,
                     sg_stream_write_cb cb)
{
    sg_tls_stream_t *s = T(base);
    if (!s->handshake_done || s->failed || base->closing) return UV_ENOTCONN;
    size_t total = 0, unflushed = 0, rec_len = 0;
    size_t rec_max = s->offloaded ? sg_tls__tx_record_max(s) : SG_TLS_MAX_PLAINTEXT;
    uv_buf_t pieces[SG_TLS_GATHER_MAX];
    unsigned n_pieces = 0;
    int rc;
    w->stream = base;
    w->cb = cb;
    for (unsigned i = 0; i < n; i++) {
        const char *p = bufs[i].base;
        size_t left = bufs[i].len;
        total += left;
        while (left) {
            size_t k = left < rec_max - rec_len ? left : rec_max - rec_len;
            pieces[n_pieces++] = uv_buf_init((char *)p, (unsigned)k);
            rec_len += k;
            p += k;
            left -= k;
            if (rec_len < rec_max && n_pieces < SG_TLS_GATHER_MAX) continue;
            if ((rc = write_record(s, pieces, n_pieces, rec_len, &unflushed)) != 0) return rc;
            rec_len = 0;
            n_pieces = 0;
        }
    }
    if (n_pieces && (rc = write_record(s, pieces, n_pieces, rec_len, &unflushed)) != 0) return rc;
    w->bytes = total;
    if (!s->tx_cur && !s->n_tx_ready) {
        /* Nothing to send (empty write): complete it from the loop anyway by
         * producing no chunk; treat as an immediate success via a 0-byte
         * write so ordering is kept. */
        sg_tls__tx_chunk(s);
        sg_tls__tx_push(s);
    }
    base->write_queue_bytes += total;
    rc = sg_tls__flush_tx(s, w);
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
        static char close_notify[2] = {1, SG_TLS_ALERT_CLOSE_NOTIFY};
        const uv_buf_t alert = uv_buf_init(close_notify, sizeof(close_notify));
        if (sg_tls__tx_seal_v(s, SG_TLS_CT_ALERT, &alert, 1, alert.len) == 0)
            sg_tls__flush_tx(s, NULL);
    } else if (s->handshake_done && !s->failed) {
        clear_ssl_errors();
        SSL_shutdown(s->ssl); /* queues close_notify */
        sg_tls__flush_tx(s, NULL);
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
    if (sg_tls__bio_attach(s) != 0) return UV_ENOMEM;
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
