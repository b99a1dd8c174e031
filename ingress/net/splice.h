/* Moves an exact number of bytes from one plain TCP stream's socket to
 * another's with splice(2) through a pipe: the kernel hands pages from one
 * socket to the other, nothing is copied in user space or held in a read
 * buffer. The relay uses it for large bodies of known length: responses
 * (sandbox -> client) and uploads (client -> sandbox).
 *
 * Preconditions: both streams are plain TCP (no TLS, no preamble), `from` is
 * not reading and every byte written to `to` so far is already in the kernel
 * (libuv's write queue is empty). While the move runs nobody else reads
 * `from` or writes `to`. libuv allows one watcher per descriptor, so
 * readiness is watched through dup'd descriptors, created only when a
 * splice would block.
 *
 * Ownership: the splice object belongs to the per-worker pool (the pipe is
 * made for each move and closed after it);
 * the owner holds a pointer from sg_splice_start until `done` fires or it
 * calls sg_splice_stop, whichever is first, and must not use it after. */
#ifndef SG_NET_SPLICE_H
#define SG_NET_SPLICE_H

#include "net/stream.h"

#include <stdint.h>

typedef struct sg_splice_s sg_splice_t;
typedef struct sg_splice_pool_s sg_splice_pool_t;

/* n more bytes reached `to`. May call sg_splice_stop. */
typedef void (*sg_splice_progress_cb)(void *data, size_t n);
/* Fires once: 0 when all bytes reached `to`; UV_EOF when `from` ended early,
 * or its read error, after every byte taken from it reached `to`; or a
 * write error of `to`. The object is already the pool's again. */
typedef void (*sg_splice_done_cb)(void *data, int status);

struct sg_splice_s {
    sg_splice_pool_t *pool;
    void *data; /* owner's */
    sg_splice_progress_cb progress;
    sg_splice_done_cb done;
    int from_fd, to_fd;   /* the streams' descriptors, not owned */
    int pipe_r, pipe_w;   /* owned, for one move; -1 when not open */
    size_t pipe_cap;      /* bytes the pipe holds */
    uint64_t to_read;     /* bytes still to take from `from` */
    int src_status;       /* UV_EOF or an error once `from` failed; 0 before */
    size_t in_pipe;       /* taken, not yet written to `to` */
    uv_idle_t kick;       /* runs the first pump from the loop; lives as long as the object */
    uv_poll_t poll_from;  /* on dup_from: readable */
    uv_poll_t poll_to;    /* on dup_to: writable */
    int dup_from, dup_to; /* -1 until a splice would block */
    unsigned polls_open;  /* poll handles not yet closed */
    unsigned active : 1;  /* between start and done/stop */
    unsigned pumping : 1; /* inside pump: callbacks must not re-enter */
    sg_splice_t *next_free;
};

struct sg_splice_pool_s {
    uv_loop_t *loop;
    sg_splice_t *free; /* idle objects (no pipe, no descriptor) */
    size_t n_free;
    unsigned closing : 1;
};

void sg_splice_pool_init(sg_splice_pool_t *pool, uv_loop_t *loop);
/* Frees idle objects and their pipes; objects still in use free themselves
 * when their handles close. */
void sg_splice_pool_close(sg_splice_pool_t *pool);

/* Starts moving len (> 0) bytes. Returns the splice (callbacks fire later,
 * from the loop, never inside this call) or NULL when no pipe could be
 * made (the caller forwards the ordinary way). */
sg_splice_t *sg_splice_start(sg_splice_pool_t *pool, sg_stream_t *from, sg_stream_t *to,
                             uint64_t len, sg_splice_progress_cb progress, sg_splice_done_cb done,
                             void *data);

/* Abandons a running move: no callback fires after this. Bytes already in
 * the pipe are dropped with it (the caller is closing the connections). */
void sg_splice_stop(sg_splice_t *sp);

#endif
