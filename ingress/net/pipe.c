#include "net/pipe.h"

#include <stdlib.h>

/* One write in flight: holds the read buffer's reference until the write
 * completes, whatever happened to the pipe in between. */
typedef struct {
    sg_stream_write_t w;
    sg_buf_t *buf;   /* a pooled read buffer, or NULL */
    char *heap;      /* or malloc'd bytes given to sg_pipe_send */
    sg_pipe_t *pipe; /* valid until the owner frees it, after both close callbacks */
    unsigned dir;
} pipe_write_t;

static void finish(sg_pipe_t *p, int status)
{
    if (p->finished) return;
    p->finished = 1;
    for (unsigned i = 0; i < 2; i++)
        if (!p->dir[i].eof) sg_stream_read_stop(p->dir[i].from);
    if (p->done) p->done(p, status);
}

static void maybe_done(sg_pipe_t *p)
{
    if (p->dir[0].shut && p->dir[1].shut && !p->pending_writes) finish(p, 0);
}

static void on_shutdown(sg_stream_t *s, int status)
{
    sg_pipe_t *p = s->data;
    if (!p || p->finished) return;
    /* A peer that already closed its read side makes FIN fail (ENOTCONN):
     * the direction is over either way. */
    maybe_done(p);
}

static void shut_if_drained(sg_pipe_t *p, sg_pipe_dir_t *d)
{
    if (!d->eof || d->shut || d->to->write_queue_bytes) return;
    d->shut = 1;
    if (sg_stream_shutdown(d->to, on_shutdown) != 0) maybe_done(p);
}

static void on_write(sg_stream_write_t *sw, int status)
{
    pipe_write_t *pw = (pipe_write_t *)sw;
    sg_pipe_t *p = pw->pipe;
    if (pw->buf) sg_buf_unref(pw->buf);
    free(pw->heap);
    unsigned dir = pw->dir;
    free(pw);
    p->pending_writes--;
    if (p->finished) return;
    if (status < 0) {
        finish(p, status);
        return;
    }
    sg_pipe_dir_t *d = &p->dir[dir];
    if (d->paused && d->to->write_queue_bytes <= p->high_water / 2) {
        d->paused = 0;
        if (!d->eof) sg_stream_read_start(d->from, d->from->read_cb);
    }
    shut_if_drained(p, d);
    maybe_done(p);
}

/* Writes len bytes (held by buf or heap, whose ownership passes here) in
 * direction dir. */
static void forward(sg_pipe_t *p, unsigned dir, sg_buf_t *buf, char *heap, const char *data,
                    size_t len)
{
    sg_pipe_dir_t *d = &p->dir[dir];
    p->last_activity = uv_now(p->loop);
    d->bytes += len;
    pipe_write_t *pw = malloc(sizeof(*pw));
    if (!pw) abort();
    *pw = (pipe_write_t){.buf = buf, .heap = heap, .pipe = p, .dir = dir};
    uv_buf_t ub = uv_buf_init((char *)data, (unsigned)len);
    int rc = sg_stream_write(d->to, &pw->w, &ub, 1, on_write);
    if (rc < 0) {
        if (buf) sg_buf_unref(buf);
        free(heap);
        free(pw);
        finish(p, rc);
        return;
    }
    p->pending_writes++;
    if (d->to->write_queue_bytes > p->high_water && !d->paused) {
        d->paused = 1;
        if (!d->eof) sg_stream_read_stop(d->from);
    }
}

static void on_read(sg_stream_t *s, ssize_t nread, sg_buf_t *buf)
{
    sg_pipe_t *p = s->data;
    unsigned dir = p->dir[0].from == s ? 0 : 1;
    sg_pipe_dir_t *d = &p->dir[dir];
    if (p->finished) return;
    if (nread == UV_EOF) {
        d->eof = 1;
        sg_stream_read_stop(s);
        shut_if_drained(p, d);
        maybe_done(p);
        return;
    }
    if (nread < 0) {
        finish(p, (int)nread);
        return;
    }
    sg_buf_ref(buf);
    forward(p, dir, buf, NULL, buf->data, (size_t)nread);
}

int sg_pipe_start(sg_pipe_t *p, uv_loop_t *loop, sg_stream_t *a, sg_stream_t *b, size_t high_water,
                  sg_pipe_done_cb done, void *data)
{
    *p = (sg_pipe_t){.loop = loop, .high_water = high_water, .done = done, .data = data};
    p->dir[0].from = a;
    p->dir[0].to = b;
    p->dir[1].from = b;
    p->dir[1].to = a;
    p->last_activity = uv_now(loop);
    a->data = p;
    b->data = p;
    int rc = sg_stream_read_start(a, on_read);
    if (rc == 0) rc = sg_stream_read_start(b, on_read);
    if (rc) sg_stream_read_stop(a);
    return rc;
}

void sg_pipe_send(sg_pipe_t *p, unsigned dir, char *heap, size_t len)
{
    if (p->finished || !len) {
        free(heap);
        return;
    }
    forward(p, dir, NULL, heap, heap, len);
}

void sg_pipe_stop(sg_pipe_t *p)
{
    p->finished = 1;
    p->done = NULL;
}
