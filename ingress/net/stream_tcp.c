/* Plain TCP implementation of sg_stream_t on top of uv_tcp_t. */
#include "net/stream.h"
#include "net/turn_end.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static void tcp_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *out)
{
    sg_stream_t *s = h->data;
    sg_buf_t *b = sg_buf_alloc(s->pool);
    /* read_cb finds the owning sg_buf again from the data pointer. */
    out->base = b->data;
    out->len = b->cap;
}

static sg_buf_t *buf_of_data(char *data)
{
    return (sg_buf_t *)(data - offsetof(sg_buf_t, data));
}

#define SG_PREAMBLE_MAX 4352 /* largest PROXY v2 header we accept, with room */

int sg_stream__preamble_feed(sg_stream_t *s, const char *data, size_t len, size_t *used)
{
    ssize_t r;
    *used = 0;
    if (!s->pre_len) {
        r = s->preamble(s, data, len);
        if (r > 0) {
            *used = (size_t)r;
            s->preamble = NULL;
            return 1;
        }
        if (r < 0) return -1;
    }
    size_t old = s->pre_len;
    size_t take = len < SG_PREAMBLE_MAX - old ? len : SG_PREAMBLE_MAX - old;
    if (!s->pre_buf) {
        s->pre_buf = malloc(SG_PREAMBLE_MAX);
        if (!s->pre_buf) return -1;
    }
    memcpy(s->pre_buf + old, data, take);
    s->pre_len += take;
    if (old) {
        r = s->preamble(s, s->pre_buf, s->pre_len);
    } else {
        r = 0; /* the direct attempt above already said "more" */
    }
    if (r > 0) {
        *used = (size_t)r - old;
        s->preamble = NULL;
        sg_stream__preamble_free(s);
        return 1;
    }
    if (r < 0 || s->pre_len == SG_PREAMBLE_MAX) return -1;
    *used = take;
    return 0;
}

void sg_stream__preamble_free(sg_stream_t *s)
{
    free(s->pre_buf);
    s->pre_buf = NULL;
    s->pre_len = 0;
}

static void tcp_read_cb(uv_stream_t *h, ssize_t nread, const uv_buf_t *ub)
{
    sg_stream_t *s = h->data;
    sg_buf_t *b = ub->base ? buf_of_data(ub->base) : NULL;
    if (nread > 0 && s->preamble) {
        size_t used = 0;
        int r = sg_stream__preamble_feed(s, b->data, (size_t)nread, &used);
        if (r < 0) {
            sg_buf_unref(b);
            s->read_cb(s, UV_EPROTO, NULL);
            return;
        }
        if (r == 0 || used == (size_t)nread) {
            sg_buf_unref(b);
            return;
        }
        /* The stream proper starts inside this read: hand on the rest. */
        memmove(b->data, b->data + used, (size_t)nread - used);
        nread -= (ssize_t)used;
    }
    if (nread > 0) {
        s->read_cb(s, nread, b);
    } else if (nread < 0) {
        s->read_cb(s, nread, NULL);
    }
    if (b) sg_buf_unref(b);
}

static int tcp_read_start(sg_stream_t *s, sg_stream_read_cb cb)
{
    s->read_cb = cb;
    if (s->reading || s->closing) return 0;
    int rc = uv_read_start((uv_stream_t *)&s->tcp, tcp_alloc_cb, tcp_read_cb);
    if (rc == 0) s->reading = 1;
    return rc;
}

static int tcp_read_stop(sg_stream_t *s)
{
    if (!s->reading) return 0;
    s->reading = 0;
    return uv_read_stop((uv_stream_t *)&s->tcp);
}

static void tcp_write_cb(uv_write_t *req, int status)
{
    sg_stream_write_t *w = req->data;
    w->stream->write_queue_bytes -= w->bytes;
    w->cb(w, status);
}

/* Writes that uv_try_write finished inside write() wait here for their
 * callbacks, which the contract says never run inside write(). One queue
 * per loop thread (sg_stream_tcp_loop_init). Why not always uv_write: each
 * completed uv_write makes libuv re-register the socket with epoll
 * (EPOLL_CTL_MOD, even with unchanged events), two system calls per proxied
 * request; a direct write that takes every byte needs none. */
typedef struct {
    sg_turn_end_t turn_end;         /* first: the callbacks below get it */
    sg_stream_write_t *head, *tail; /* linked through w->impl */
} done_queue_t;

static _Thread_local done_queue_t *tls_done;

static void run_done(sg_turn_end_t *te)
{
    done_queue_t *q = (done_queue_t *)te;
    /* Callbacks may write again: those join the list and run in this pass. */
    while (q->head) {
        sg_stream_write_t *w = q->head;
        q->head = w->impl;
        if (!q->head) q->tail = NULL;
        w->impl = NULL;
        w->stream->write_queue_bytes -= w->bytes;
        w->cb(w, 0);
    }
    sg_turn_end_set_pending(te, 0);
}

static void defer_done(done_queue_t *q, sg_stream_write_t *w)
{
    w->impl = NULL;
    if (q->tail)
        q->tail->impl = w;
    else
        q->head = w;
    q->tail = w;
    sg_turn_end_set_pending(&q->turn_end, 1);
}

int sg_stream__try_write(sg_stream_t *s, const uv_buf_t *bufs, unsigned n)
{
    done_queue_t *q = tls_done;
    if (!q || q->turn_end.loop != s->tcp.loop || s->closing) return UV_EAGAIN;
    return uv_try_write((uv_stream_t *)&s->tcp, bufs, n);
}

int sg_stream__defer_done(sg_stream_t *s, sg_stream_write_t *w)
{
    done_queue_t *q = tls_done;
    if (!q || q->turn_end.loop != s->tcp.loop) return -1;
    defer_done(q, w);
    return 0;
}

int sg_stream_tcp_loop_init(uv_loop_t *loop)
{
    done_queue_t *q = calloc(1, sizeof(*q));
    if (!q) return UV_ENOMEM;
    sg_turn_end_init(&q->turn_end, loop, run_done);
    tls_done = q;
    return 0;
}

static void free_done_queue(sg_turn_end_t *te)
{
    free(te);
}

void sg_stream_tcp_loop_close(uv_loop_t *loop)
{
    done_queue_t *q = tls_done;
    if (!q || q->turn_end.loop != loop) return;
    tls_done = NULL;
    /* Every stream was closed first, and closing runs after the check
     * phase that drained the list. */
    sg_turn_end_close(&q->turn_end, free_done_queue);
}

static int tcp_write(sg_stream_t *s, sg_stream_write_t *w, const uv_buf_t *bufs, unsigned n,
                     sg_stream_write_cb cb)
{
    size_t total = 0;
    for (unsigned i = 0; i < n; i++) total += bufs[i].len;
    w->stream = s;
    w->cb = cb;
    w->bytes = total;
    w->req.data = w;
    done_queue_t *q = tls_done;
    size_t sent = 0;
    uv_buf_t rest[8];
    if (q && q->turn_end.loop == s->tcp.loop && total && !s->closing &&
        n <= sizeof(rest) / sizeof(rest[0])) {
        /* uv_try_write declines (EAGAIN) while earlier writes are queued, so
         * bytes never overtake each other. */
        int r = uv_try_write((uv_stream_t *)&s->tcp, bufs, n);
        if (r >= 0) sent = (size_t)r;
        if (sent == total) {
            s->write_queue_bytes += total;
            defer_done(q, w);
            return 0;
        }
    }
    const uv_buf_t *out = bufs;
    unsigned nout = n;
    if (sent) {
        /* Partly written: queue the remainder. */
        unsigned i = 0;
        while (sent >= bufs[i].len) sent -= bufs[i++].len;
        for (unsigned j = i; j < n; j++) rest[j - i] = bufs[j];
        rest[0].base += sent;
        rest[0].len -= sent;
        out = rest;
        nout = n - i;
    }
    int rc = uv_write(&w->req, (uv_stream_t *)&s->tcp, out, nout, tcp_write_cb);
    if (rc == 0) s->write_queue_bytes += total;
    return rc;
}

static void tcp_shutdown_cb(uv_shutdown_t *req, int status)
{
    sg_stream_t *s = req->data;
    free(req);
    if (s->shutdown_cb) s->shutdown_cb(s, status);
}

static int tcp_shutdown(sg_stream_t *s, sg_stream_shutdown_cb cb)
{
    uv_shutdown_t *req = malloc(sizeof(*req));
    if (!req) return UV_ENOMEM;
    req->data = s;
    s->shutdown_cb = cb;
    int rc = uv_shutdown(req, (uv_stream_t *)&s->tcp, tcp_shutdown_cb);
    if (rc) free(req);
    return rc;
}

static void tcp_close_cb(uv_handle_t *h)
{
    sg_stream_t *s = h->data;
    sg_stream__preamble_free(s);
    if (s->close_cb) s->close_cb(s);
}

static void tcp_close(sg_stream_t *s, sg_stream_close_cb cb)
{
    if (s->closing) return;
    s->closing = 1;
    s->reading = 0;
    s->close_cb = cb;
    uv_close((uv_handle_t *)&s->tcp, tcp_close_cb);
}

const sg_stream_ops_t sg_stream_tcp_ops = {
    .name = "tcp",
    .read_start = tcp_read_start,
    .read_stop = tcp_read_stop,
    .write = tcp_write,
    .shutdown = tcp_shutdown,
    .close = tcp_close,
};

int sg_stream_tcp_init(sg_stream_t *s, uv_loop_t *loop, sg_buf_pool_t *pool)
{
    *s = (sg_stream_t){.ops = &sg_stream_tcp_ops, .pool = pool};
    int rc = uv_tcp_init(loop, &s->tcp);
    s->tcp.data = s;
    return rc;
}

void sg_socket_ack_now(int fd)
{
    int on = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &on, sizeof on);
}

void sg_stream_ack_now(sg_stream_t *s)
{
    uv_os_fd_t fd;
    if (!s->closing && uv_fileno((uv_handle_t *)&s->tcp, &fd) == 0) sg_socket_ack_now(fd);
}
