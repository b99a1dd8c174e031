/* The byte stream every HTTP, tunnel and proxy path talks to: a small table
 * of functions with a plain TCP implementation here and a TLS one in tls/.
 * Code above this interface never sees a socket option or an SSL object.
 *
 * Contracts (libuv's, carried over):
 * - The owner allocates the stream (usually embedded in a larger object) and
 *   may free that memory only in or after the close callback.
 * - A read callback gets (stream, nread, buf): nread > 0 bytes are at
 *   buf->data[0..nread). The stream drops its reference after the callback;
 *   the callee keeps the bytes by taking its own with sg_buf_ref (zero-copy
 *   forwarding). nread < 0 is UV_EOF (peer finished sending) or an error; then
 *   buf is NULL.
 * - write() borrows the uv_buf_t memory until the write callback fires; the
 *   callback fires exactly once, always from the loop (never inside write()),
 *   with status 0, an error, or UV_ECANCELED when the stream is closed first.
 * - close() may be called at any time, once; pending writes complete with
 *   UV_ECANCELED before the close callback. */
#ifndef SG_NET_STREAM_H
#define SG_NET_STREAM_H

#include "core/buf.h"
#include <uv.h>

typedef struct sg_stream_s sg_stream_t;
typedef struct sg_stream_write_s sg_stream_write_t;

typedef void (*sg_stream_read_cb)(sg_stream_t *s, ssize_t nread, sg_buf_t *buf);
typedef void (*sg_stream_write_cb)(sg_stream_write_t *w, int status);
typedef void (*sg_stream_shutdown_cb)(sg_stream_t *s, int status);
typedef void (*sg_stream_close_cb)(sg_stream_t *s);

/* One write in flight. Caller-allocated; `data` is the caller's. */
struct sg_stream_write_s {
    uv_write_t req;
    sg_stream_t *stream;
    sg_stream_write_cb cb;
    size_t bytes; /* plaintext bytes this write accounts for */
    void *data;
    void *impl; /* implementation's (TLS: ciphertext buffer) */
};

typedef struct {
    const char *name;
    int (*read_start)(sg_stream_t *s, sg_stream_read_cb cb);
    int (*read_stop)(sg_stream_t *s);
    int (*write)(sg_stream_t *s, sg_stream_write_t *w, const uv_buf_t *bufs, unsigned n,
                 sg_stream_write_cb cb);
    /* Half-close after queued writes (FIN). */
    int (*shutdown)(sg_stream_t *s, sg_stream_shutdown_cb cb);
    void (*close)(sg_stream_t *s, sg_stream_close_cb cb);
} sg_stream_ops_t;

struct sg_stream_s {
    const sg_stream_ops_t *ops;
    uv_tcp_t tcp;        /* the socket; tcp.data points back to this stream */
    sg_buf_pool_t *pool; /* read buffers come from here */
    void *data;          /* owner's */
    sg_stream_read_cb read_cb;
    sg_stream_shutdown_cb shutdown_cb;
    sg_stream_close_cb close_cb;
    size_t write_queue_bytes; /* accepted by write(), not yet completed */
    const char *server_name;  /* TLS: the SNI sent by the client, else NULL */
    /* TLS: fires once when the handshake completes, before any read
     * callback delivers plaintext. Set by the owner; may be NULL. */
    void (*on_handshake)(sg_stream_t *s);
    /* Optional, set by the owner before reading starts: bytes that precede
     * the stream proper (a PROXY protocol header) are offered here first,
     * raw, before TLS. Returns the preamble length once complete (> 0), 0
     * to ask for more bytes, or < 0 to reject the connection (the stream
     * then reports UV_EPROTO to its read callback). */
    ssize_t (*preamble)(sg_stream_t *s, const char *data, size_t len);
    char *pre_buf; /* preamble bytes gathered across reads */
    size_t pre_len;
    unsigned is_tls : 1;
    unsigned reading : 1;
    unsigned closing : 1;
};

/* For implementations: feeds len raw bytes to s->preamble. Returns 1 when
 * the preamble is complete (*used = how many of these bytes it took; the
 * rest belong to the stream), 0 when it needs more (all taken), or -1 when
 * it was rejected. Clears s->preamble once done. */
/* For implementations (TLS): the direct-write path of
 * sg_stream_tcp_loop_init. try_write writes what the socket takes now of
 * bufs[0..n) in one writev (bytes written, or UV_EAGAIN when the loop has no
 * queue, the stream is closing, or writes are queued); defer_done queues w's callback (status 0,
 * write_queue_bytes lowered by w->bytes first) for the loop's check phase,
 * returning -1 when this loop has no queue. */
int sg_stream__try_write(sg_stream_t *s, const uv_buf_t *bufs, unsigned n);
int sg_stream__defer_done(sg_stream_t *s, sg_stream_write_t *w);
int sg_stream__preamble_feed(sg_stream_t *s, const char *data, size_t len, size_t *used);
void sg_stream__preamble_free(sg_stream_t *s);

/* Plain TCP. `sg_stream_tcp_init` prepares an unconnected handle on loop
 * (for accept or connect); the caller then uses s->tcp directly for those. */
extern const sg_stream_ops_t sg_stream_tcp_ops;
int sg_stream_tcp_init(sg_stream_t *s, uv_loop_t *loop, sg_buf_pool_t *pool);

/* Sends now the ACK the kernel owes for bytes already read, instead of at
 * the delayed-ACK timer. For whoever reads a large body that continues:
 * Linux judges a connection that sends right after it receives (request
 * after response) interactive and delays its ACKs, up to 40 ms, to ride on
 * the next reply. A body in flight has no reply, and its sender, held by a
 * receive window that only this ACK reopens, stalls for the whole timer:
 * that was the tail of the 1 MiB benchmark rows (p99 50-80 ms, TCP's
 * DelayedACKs counter ~30/s). TCP_QUICKACK is not sticky (sending on the
 * connection turns delaying back on), so callers repeat it after every
 * read that leaves more of the body to come. Best effort: a failure only
 * means the ACK waits as before. */
void sg_socket_ack_now(int fd);
void sg_stream_ack_now(sg_stream_t *s);

/* Optional, once per loop, on the thread that runs it, before its first
 * stream (the queue is thread-local): lets writes that
 * the socket takes at once complete without a write request (their
 * callbacks still run later, from this loop's check phase). Without it every
 * write goes through uv_write. sg_stream_tcp_loop_close, after every stream
 * of the loop is closed, releases it (memory goes in close callbacks). */
int sg_stream_tcp_loop_init(uv_loop_t *loop);
void sg_stream_tcp_loop_close(uv_loop_t *loop);

static inline int sg_stream_read_start(sg_stream_t *s, sg_stream_read_cb cb)
{
    return s->ops->read_start(s, cb);
}
static inline int sg_stream_read_stop(sg_stream_t *s)
{
    return s->ops->read_stop(s);
}
static inline int sg_stream_write(sg_stream_t *s, sg_stream_write_t *w, const uv_buf_t *bufs,
                                  unsigned n, sg_stream_write_cb cb)
{
    return s->ops->write(s, w, bufs, n, cb);
}
static inline int sg_stream_shutdown(sg_stream_t *s, sg_stream_shutdown_cb cb)
{
    return s->ops->shutdown(s, cb);
}
static inline void sg_stream_close(sg_stream_t *s, sg_stream_close_cb cb)
{
    s->ops->close(s, cb);
}

#endif
