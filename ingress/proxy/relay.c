/* The byte-moving half of the pipeline: zero-copy forwarding with
 * backpressure, the response head and body, and 101 tunnels. */
#include "proxy/conn.h"

#include "core/log.h"
#include "http/h1_head.h"
#include "net/splice.h"
#include "http/rewrite.h"

#include <stdlib.h>
#include <string.h>

/* Backpressure: stop reading a side once the other's queue holds this much
 * (bytes) or this many writes (each pins one pooled read buffer). Resume
 * below the low-water mark. Bounds memory per connection. */
#define SG_HIGH_WATER (512 * 1024)
#define SG_LOW_WATER (128 * 1024)
#define SG_MAX_WRITES 16

/* Bodies (responses and uploads) with at least this many bytes still to
 * come, of known length, between plain sockets, move by splice(2)
 * (net/splice.h); one splice per connection at a time: below
 * it the pipe and descriptor set-up costs more than the copies it saves. */
#define SG_SPLICE_MIN (64 * 1024)

static sg_fwd_write_t *fwd_get(sg_worker_t *w)
{
    sg_fwd_write_t *fw = w->free_writes;
    if (fw) {
        w->free_writes = fw->next_free;
    } else {
        fw = malloc(sizeof(*fw));
        if (!fw) abort();
    }
    memset(fw, 0, sizeof(*fw));
    return fw;
}

static void fwd_put(sg_worker_t *w, sg_fwd_write_t *fw)
{
    fw->next_free = w->free_writes;
    w->free_writes = fw;
}

void sg_fwd_write_free_all(sg_worker_t *w)
{
    while (w->free_writes) {
        sg_fwd_write_t *fw = w->free_writes;
        w->free_writes = fw->next_free;
        free(fw);
    }
}

static void set_upstream_reading(sg_conn_t *c)
{
    if (!c->up || c->splice) return; /* a splice reads the socket itself */
    if (c->upstream_paused || c->upstream_eof)
        sg_stream_read_stop(&c->up->stream);
    else
        sg_stream_read_start(&c->up->stream, sg_relay_upstream_read_cb);
}

static void tunnel_maybe_close(sg_conn_t *c)
{
    if (c->client_eof && c->upstream_eof && !c->client_writes && !c->upstream_writes)
        sg_conn_close(c);
}

static void fwd_write_cb(sg_stream_write_t *sw, int status)
{
    sg_fwd_write_t *fw = sw->data;
    sg_conn_t *c = fw->conn;
    sg_worker_t *w = c->w;
    int to_upstream = fw->to_upstream;
    sg_upstream_t *target = fw->up;
    if (fw->buf) sg_buf_unref(fw->buf);
    free(fw->heap);
    fwd_put(w, fw);
    if (to_upstream)
        c->upstream_writes--;
    else
        c->client_writes--;

    if (c->closing || (to_upstream && target != c->up)) {
        /* Closed connection, or a write to an upstream we already let go. */
    } else if (status < 0) {
        if (!to_upstream) {
            sg_conn_close(c);
        } else if (c->state == SG_CONN_TUNNEL) {
            sg_conn_close(c);
        } else {
            /* The sandbox stopped taking the request; its read side decides
             * between a response it already sent and a 502. */
            c->req_broken = 1;
            c->close_after = 1;
        }
    } else {
        c->last_activity = uv_now(&w->loop);
        if (to_upstream && c->client_paused && c->up->stream.write_queue_bytes < SG_LOW_WATER &&
            c->upstream_writes < SG_MAX_WRITES / 2) {
            c->client_paused = 0;
            sg_conn_update_reading(c);
        } else if (!to_upstream && c->upstream_paused &&
                   c->client.write_queue_bytes < SG_LOW_WATER &&
                   c->client_writes < SG_MAX_WRITES / 2) {
            c->upstream_paused = 0;
            set_upstream_reading(c);
        }
        if (!to_upstream && !c->client_writes) sg_conn_client_flushed(c);
        if (c->state == SG_CONN_TUNNEL) tunnel_maybe_close(c);
    }
    sg_conn_unref(c);
}

/* One write of bufs[0..n) (n <= 2): the memory stays valid until
 * fwd_write_cb, held by fw (buf, heap) or by the connection (its strbufs). */
static void submit_bufs(sg_conn_t *c, sg_fwd_write_t *fw, int to_upstream, const uv_buf_t *bufs,
                        unsigned n)
{
    sg_stream_t *dst = to_upstream ? &c->up->stream : &c->client;
    size_t len = 0;
    for (unsigned i = 0; i < n; i++) len += bufs[i].len;
    fw->conn = c;
    fw->to_upstream = to_upstream;
    fw->up = to_upstream ? c->up : NULL;
    fw->w.data = fw;
    c->refs++;
    if (to_upstream)
        c->upstream_writes++;
    else
        c->client_writes++, c->req_bytes_out += len, sg_counter_add(&c->w->stats.bytes_out, len);
    int rc = sg_stream_write(dst, &fw->w, bufs, n, fwd_write_cb);
    if (rc) {
        /* Report like an asynchronous failure so there is one error path. */
        sg_log_debug("write failed: %s", uv_strerror(rc));
        fw->w.stream = dst;
        fwd_write_cb(&fw->w, rc);
        return;
    }
    /* The source pauses while the destination's queue is deep. */
    if (dst->write_queue_bytes > SG_HIGH_WATER ||
        (to_upstream ? c->upstream_writes : c->client_writes) >= SG_MAX_WRITES) {
        if (to_upstream && !c->client_paused) {
            c->client_paused = 1;
            sg_conn_update_reading(c);
        } else if (!to_upstream && !c->upstream_paused) {
            c->upstream_paused = 1;
            set_upstream_reading(c);
        }
    }
}

static void submit(sg_conn_t *c, sg_fwd_write_t *fw, int to_upstream, const char *data, size_t len)
{
    uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
    submit_bufs(c, fw, to_upstream, &b, 1);
}

void sg_relay_write(sg_conn_t *c, int to_upstream, const char *data, size_t len, sg_buf_t *buf)
{
    if (!len || c->closing || (to_upstream && !c->up)) return;
    sg_fwd_write_t *fw = fwd_get(c->w);
    fw->buf = buf;
    sg_buf_ref(buf);
    submit(c, fw, to_upstream, data, len);
}

void sg_relay_write_copy(sg_conn_t *c, int to_upstream, const char *data, size_t len)
{
    while (len && !c->closing) {
        sg_buf_t *b = sg_buf_alloc(&c->w->bufs);
        size_t n = len < b->cap ? len : b->cap;
        memcpy(b->data, data, n);
        sg_relay_write(c, to_upstream, b->data, n, b);
        sg_buf_unref(b);
        data += n;
        len -= n;
    }
}

void sg_relay_write_strbuf(sg_conn_t *c, int to_upstream, sg_strbuf_t *sb)
{
    /* The strbuf belongs to the connection and is not reused before this
     * request's writes have completed (next_request waits for the flush). */
    if (!sb->len || c->closing || (to_upstream && !c->up)) return;
    submit(c, fwd_get(c->w), to_upstream, sb->base, sb->len);
}

void sg_relay_write_strbuf_and(sg_conn_t *c, int to_upstream, sg_strbuf_t *head, const char *body,
                               size_t len, sg_buf_t *buf)
{
    if (!len) {
        sg_relay_write_strbuf(c, to_upstream, head);
        return;
    }
    if (c->closing || (to_upstream && !c->up)) return;
    sg_fwd_write_t *fw = fwd_get(c->w);
    fw->buf = buf;
    sg_buf_ref(buf);
    uv_buf_t bufs[2] = {uv_buf_init(head->base, (unsigned)head->len),
                        uv_buf_init((char *)body, (unsigned)len)};
    submit_bufs(c, fw, to_upstream, bufs, 2);
}

static void write_heap_copy(sg_conn_t *c, int to_upstream, const char *data, size_t len)
{
    if (!len || c->closing) return;
    sg_fwd_write_t *fw = fwd_get(c->w);
    fw->heap = malloc(len);
    if (!fw->heap) abort();
    memcpy(fw->heap, data, len);
    submit(c, fw, to_upstream, fw->heap, len);
}

void sg_relay_detach_upstream(sg_conn_t *c, int reusable)
{
    sg_upstream_t *up = c->up;
    if (!up) return;
    if (c->splice) {
        /* A cut body: the upstream goes (a request body still coming, or a
         * response body cut short) and the connection with it, or lingers. */
        sg_splice_stop(c->splice);
        c->splice = NULL;
        c->client_spliced = 0;
    }
    c->up = NULL;
    c->upstream_paused = 0;
    up->stream.data = up;
    /* Released now, in this callback: a reusable connection gets the pool's
     * read callback (no stop/start round trip), the others are closed. */
    sg_upstream_release(up, reusable);
}

static void response_complete(sg_conn_t *c)
{
    c->res_done = 1;
    /* Not after HEAD: its response carries the framing of a body that must
     * not follow, and a sandbox that sends the body anyway would desync the
     * next request on a reused connection. HEAD is rare; a new connection
     * is cheap insurance. */
    int reusable = !c->up_junk && c->req_done && !c->req_broken && !c->head_method &&
                   llhttp_should_keep_alive(&c->res.llhttp);
    sg_relay_detach_upstream(c, reusable);
    sg_conn_request_finished(c);
}

static void splice_progress(void *data, size_t n)
{
    sg_conn_t *c = data;
    c->last_activity = uv_now(&c->w->loop);
    c->req_bytes_out += n;
    sg_counter_add(&c->w->stats.bytes_out, n);
    sg_counter_add(&c->w->stats.bytes_spliced, n);
}

static void splice_done(void *data, int status)
{
    sg_conn_t *c = data;
    c->splice = NULL;
    if (status != 0) {
        /* The sandbox ended the body early or a socket failed: the head is
         * out, so the client must see a cut. */
        sg_log_debug("splice: %s", uv_strerror(status));
        sg_conn_close(c);
        return;
    }
    c->res.message_done = 1; /* the parser saw the head; the length was exact */
    sg_conn_release_slot(c);
    response_complete(c);
}

/* After the head went out: hands the rest of a large Content-Length body to
 * splice(2) when both sockets are plain and the client's write queue is
 * empty (so spliced bytes cannot overtake queued ones). Returns 1 when the
 * splice owns the body. */
static int splice_body(sg_conn_t *c)
{
    const llhttp_t *p = &c->res.llhttp;
    if (c->client.is_tls || !c->up || c->closing || c->splice || !(p->flags & F_CONTENT_LENGTH) ||
        (p->flags & F_CHUNKED) || p->content_length < SG_SPLICE_MIN ||
        uv_stream_get_write_queue_size((uv_stream_t *)&c->client.tcp) != 0)
        return 0;
    sg_stream_read_stop(&c->up->stream);
    c->splice = sg_splice_start(&c->w->splices, &c->up->stream, &c->client, p->content_length,
                                splice_progress, splice_done, c);
    if (c->splice) return 1;
    set_upstream_reading(c);
    return 0;
}

static void request_splice_progress(void *data, size_t n)
{
    sg_conn_t *c = data;
    c->last_activity = uv_now(&c->w->loop);
    c->req_bytes_in += n;
    sg_counter_add(&c->w->stats.bytes_in, n);
    sg_counter_add(&c->w->stats.bytes_spliced_in, n);
}

static void request_splice_done(void *data, int status)
{
    sg_conn_t *c = data;
    c->splice = NULL;
    c->client_spliced = 0;
    if (status == UV_EOF) {
        c->client_eof = 1; /* the client ended its request early: an abort */
        sg_conn_close(c);
        return;
    }
    if (status != 0) {
        /* One of the sockets failed. As for a failed upstream write, the
         * response side decides (a response already sent, or a 502); reading
         * the client again shows whether it is the one that went away. */
        sg_log_debug("request splice: %s", uv_strerror(status));
        c->req_broken = 1;
        c->close_after = 1;
        sg_conn_update_reading(c);
        return;
    }
    c->req.message_done = 1; /* the parser saw the head; the length was exact */
    sg_conn_request_sent(c);
    if (!c->closing) sg_conn_update_reading(c);
}

/* Large uploads of known length take the same path as large responses,
 * the other way: client socket -> pipe -> sandbox socket. Only when every
 * byte forwarded so far is in the kernel (libuv's queue to the sandbox is
 * empty), nothing is buffered ahead of the body, and no other splice runs
 * on this connection (a response body can start while an upload is still
 * coming; it then takes the ordinary path). */
void sg_relay_splice_request_body(sg_conn_t *c)
{
    const llhttp_t *p = &c->req.llhttp;
    if (c->client.is_tls || !c->up || c->closing || c->splice || c->req_done || c->req_broken ||
        c->state != SG_CONN_PROXYING || c->inbuf.len || !(p->flags & F_CONTENT_LENGTH) ||
        (p->flags & F_CHUNKED) || p->content_length < SG_SPLICE_MIN ||
        uv_stream_get_write_queue_size((uv_stream_t *)&c->up->stream.tcp) != 0)
        return;
    c->splice = sg_splice_start(&c->w->splices, &c->client, &c->up->stream, p->content_length,
                                request_splice_progress, request_splice_done, c);
    if (!c->splice) return;
    c->client_spliced = 1;
    c->body_streamed = 1;
    sg_conn_update_reading(c); /* the splice reads the client socket now */
}

static void tunnel_start(sg_conn_t *c)
{
    c->state = SG_CONN_TUNNEL;
    sg_counter_inc(&c->w->stats.tunnels_open);
    sg_conn_arm_timer(c, SG_TIMER_IDLE, c->w->config->timeouts.stream_idle_ms);
    /* Upstream bytes that followed the 101 head, and client bytes that
     * followed the upgrade request, start the tunnel in order. */
    if (c->res_parsed < c->res_in.len)
        sg_relay_write_copy(c, 0, c->res_in.base + c->res_parsed, c->res_in.len - c->res_parsed);
    if (c->inbuf.len) {
        sg_relay_write_copy(c, 1, c->inbuf.base, c->inbuf.len);
        sg_strbuf_reset(&c->inbuf);
    }
    sg_conn_update_reading(c);
}

/* Where the latest upstream read lies in res_in: its bytes are
 * res_in.base[start, res_in.len), found at data in buf. */
typedef struct {
    sg_buf_t *buf;
    const char *data;
    size_t start;
} read_tail_t;

/* res_in loses its first n bytes (a passed-on 1xx head); the latest read
 * moves with them. */
static void drop_response_input(sg_conn_t *c, size_t n, read_tail_t *tail)
{
    sg_head_in_drop(&c->res_in, n);
    if (n <= tail->start) {
        tail->start -= n;
    } else {
        tail->data += n - tail->start;
        tail->start = 0;
    }
}

void sg_relay_reset_response_input(sg_conn_t *c)
{
    sg_head_in_reset(&c->res_in);
    c->res_parsed = 0;
}

/* The rewritten head and the body bytes that came with it leave in one
 * write; those body bytes are written from the read buffer they arrived in
 * when the head ended in the latest read (always, unless 1xx heads and a
 * split head shuffled them), else copied after the head. */
static void write_head_and_body(sg_conn_t *c, const char *body, size_t len, const read_tail_t *tail)
{
    size_t at = (size_t)(body - c->res_in.base);
    if (!len || at < tail->start) {
        sg_strbuf_append(&c->res_out, body, len);
        sg_relay_write_strbuf(c, 0, &c->res_out);
        return;
    }
    sg_relay_write_strbuf_and(c, 0, &c->res_out, tail->data + (at - tail->start), len, tail->buf);
}

static void final_head(sg_conn_t *c, const sg_h1_response_head_t *h, const read_tail_t *tail)
{
    size_t head_len = h->head_len;
    c->response = h->response;
    c->status = c->response.status;
    c->t_first_byte = uv_hrtime();
    int tunnel = c->status == 101;
    if (h->body_to_eof) c->close_after = 1;
    int client_keep = c->keep_alive && !c->close_after;
    sg_strbuf_reset(&c->res_out);
    sg_http_rewrite_response(&c->response, client_keep, c->request.minor_version, &c->res_out);
    size_t body_end = tunnel ? head_len : c->res_parsed;
    if (c->res.message_done && !tunnel) sg_conn_release_slot(c);
    c->res_started = 1;
    write_head_and_body(c, c->res_in.base + head_len, body_end - head_len, tail);
    if (tunnel) {
        c->res_parsed = head_len;
        tunnel_start(c);
        return;
    }
    sg_conn_arm_timer(c, SG_TIMER_IDLE, c->w->config->timeouts.stream_idle_ms);
    if (c->res.message_done) {
        if (c->res_parsed < c->res_in.len) c->up_junk = 1;
        response_complete(c);
        return;
    }
    if (c->res_parsed == c->res_in.len) splice_body(c);
}

/* Parses the response head (http/h1_head.h decides) in the read buffer it
 * arrived in, or gathered when it spans reads (proxy/head_in.h); forwards
 * interim (1xx) heads as they come. */
static void response_head_input(sg_conn_t *c, sg_buf_t *buf, size_t nread)
{
    read_tail_t tail = {buf, buf->data, sg_head_in_add(&c->res_in, buf, nread)};
    for (;;) {
        sg_h1_response_head_t h;
        switch (sg_h1_response_head_input(&c->res, c->res_in.base, c->res_in.len, &c->res_parsed,
                                          &c->interim_count, &h)) {
        case SG_H1_HEAD_MORE:
            sg_head_in_gather(&c->res_in);
            return;
        case SG_H1_HEAD_ERROR:
            if (h.parse_error != HPE_OK)
                sg_log_info("sandbox %.*s: invalid response: %s", (int)c->route.id.len,
                            c->route.id.base, h.detail);
            c->up_junk = 1;
            sg_conn_send_error(c, SG_ERR_UPSTREAM_BAD_RESPONSE, h.detail, 0);
            return;
        case SG_H1_HEAD_DONE:
            final_head(c, &h, &tail);
            return;
        case SG_H1_HEAD_INTERIM:
            break;
        }
        /* Interim response (100 Continue, 103 Early Hints): pass it on to
         * HTTP/1.1 clients, then parse what follows as a new response. */
        if (c->request.minor_version >= 1)
            write_heap_copy(c, 0, c->res_in.base + h.start, h.head_len - h.start);
        drop_response_input(c, c->res_parsed, &tail);
        c->res_parsed = 0;
        sg_h1_response_next(&c->res);
        if (!c->res_in.len) {
            sg_head_in_gather(&c->res_in); /* nothing left: lets the read buffer go */
            return;
        }
    }
}

static void response_body_input(sg_conn_t *c, const char *data, size_t len, sg_buf_t *buf)
{
    size_t consumed = 0;
    llhttp_errno_t err = sg_h1_execute(&c->res, NULL, data, len, &consumed);
    if (c->res.message_done) sg_conn_release_slot(c);
    if (consumed && err == HPE_OK) sg_relay_write(c, 0, data, consumed, buf);
    if (err != HPE_OK) {
        sg_log_info("sandbox %.*s: invalid response body: %s", (int)c->route.id.len,
                    c->route.id.base, llhttp_errno_name(err));
        sg_conn_close(c); /* head already sent: cut */
        return;
    }
    if (c->res.message_done) {
        if (consumed < len) c->up_junk = 1;
        response_complete(c);
    }
}

static void upstream_ended(sg_conn_t *c, ssize_t nread)
{
    if (c->state == SG_CONN_TUNNEL) {
        if (nread != UV_EOF) {
            sg_conn_close(c);
            return;
        }
        c->upstream_eof = 1;
        sg_stream_read_stop(&c->up->stream);
        if (!c->client_eof) sg_stream_shutdown(&c->client, NULL);
        tunnel_maybe_close(c);
        return;
    }
    if (c->res.headers_done) {
        if (nread == UV_EOF && llhttp_message_needs_eof(&c->res.llhttp) &&
            sg_h1_finish(&c->res) == HPE_OK) {
            c->close_after = 1;
            c->up_junk = 1; /* a closed connection is not reusable */
            response_complete(c);
            return;
        }
        sg_conn_close(c); /* truncated body: the client must see a cut */
        return;
    }
    if (c->up_from_pool && !c->retried && !c->res_in.len && c->req_done && !c->body_streamed) {
        /* A pooled connection the sandbox closed while idle: the request
         * never reached it, so it is safe to send it again on a fresh one. */
        c->retried = 1;
        sg_relay_detach_upstream(c, 0);
        sg_conn_get_upstream(c, 1);
        return;
    }
    sg_conn_send_error(c, c->res_in.len ? SG_ERR_UPSTREAM_BAD_RESPONSE : SG_ERR_UPSTREAM_CLOSED,
                       nread == UV_EOF ? NULL : uv_strerror((int)nread), 0);
}

void sg_relay_upstream_read_cb(sg_stream_t *s, ssize_t nread, sg_buf_t *buf)
{
    sg_conn_t *c = s->data;
    if (c->closing) return;
    if (nread < 0) {
        upstream_ended(c, nread);
        return;
    }
    c->last_activity = uv_now(&c->w->loop);
    if (c->state == SG_CONN_TUNNEL) {
        sg_relay_write(c, 0, buf->data, (size_t)nread, buf);
    } else if (!c->res.headers_done) {
        response_head_input(c, buf, (size_t)nread);
    } else {
        response_body_input(c, buf->data, (size_t)nread, buf);
    }
    /* A body continues past these bytes: ACK them now, not at the kernel's
     * delayed-ACK timer (sg_stream_ack_now says why). */
    if (!c->closing && c->up && c->res.headers_done && !c->res.message_done)
        sg_stream_ack_now(&c->up->stream);
}

void sg_relay_tunnel_client_data(sg_conn_t *c, ssize_t nread, sg_buf_t *buf)
{
    if (nread > 0) {
        sg_relay_write(c, 1, buf->data, (size_t)nread, buf);
        return;
    }
    if (nread != UV_EOF || !c->up) {
        sg_conn_close(c);
        return;
    }
    /* Half-close travels through: the sandbox sees FIN after our queue. */
    sg_stream_shutdown(&c->up->stream, NULL);
    tunnel_maybe_close(c);
}
