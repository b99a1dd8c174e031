/* Splices two connected byte streams both ways: what one side reads is
 * written to the other, zero-copy (the pooled read buffer itself is
 * written), with backpressure, half-close and byte counts. Knows nothing of
 * HTTP or policy; the egress proxy uses it for allowed connections.
 *
 * Ownership: the owner embeds the pipe, owns both streams and closes them.
 * While the pipe runs it owns both streams' `data` pointers and read
 * callbacks (the owner finds itself again through pipe->data).
 *
 * Backpressure: when more than high_water bytes wait to be written to one
 * side, reading from the other stops until the backlog drains below half.
 *
 * Half-close: EOF from one side becomes a shutdown (FIN) of the other once
 * everything read before it is written. When both directions are finished
 * `done` fires with 0; on the first read or write error it fires with that
 * error. `done` fires at most once; the owner then closes both streams
 * (writes still queued complete with UV_ECANCELED, which the pipe expects). */
#ifndef SG_NET_PIPE_H
#define SG_NET_PIPE_H

#include "net/stream.h"

#include <stdint.h>

typedef struct sg_pipe_s sg_pipe_t;
typedef void (*sg_pipe_done_cb)(sg_pipe_t *p, int status);

typedef struct {
    sg_stream_t *from, *to;
    uint64_t bytes;   /* forwarded from `from` to `to` */
    unsigned eof : 1; /* `from` finished sending */
    unsigned shut : 1;
    unsigned paused : 1;
} sg_pipe_dir_t;

struct sg_pipe_s {
    sg_pipe_dir_t dir[2]; /* [0]: a -> b, [1]: b -> a */
    uv_loop_t *loop;
    uint64_t last_activity; /* loop time (ms) of the last byte either way */
    size_t high_water;
    sg_pipe_done_cb done;
    void *data; /* owner's */
    unsigned pending_writes;
    unsigned finished : 1;
};

/* Starts both directions. a and b are connected and not reading. Returns 0
 * or a libuv error from starting to read (then nothing was started). */
int sg_pipe_start(sg_pipe_t *p, uv_loop_t *loop, sg_stream_t *a, sg_stream_t *b, size_t high_water,
                  sg_pipe_done_cb done, void *data);

/* Queues len malloc'd bytes (ownership passes to the pipe) in direction
 * dir (0: to b, 1: to a) ahead of anything read later: bytes the owner read
 * before the pipe started. */
void sg_pipe_send(sg_pipe_t *p, unsigned dir, char *heap, size_t len);

/* Stops forwarding: no callback fires after this (the owner is closing).
 * Buffers held by pending writes are released as those complete. */
void sg_pipe_stop(sg_pipe_t *p);

#endif
