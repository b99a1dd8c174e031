#include "net/splice.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

/* 64 KiB per step (the kernel's default pipe size, set explicitly): each
 * splice into the client socket is a burst that TCP's pacing (BBR here)
 * must absorb, and smaller bursts need fewer pacing timers. Against 256 KiB
 * in paired runs of the 1 MiB HTTP benchmark: 1,616 -> 1,709 and 1,650 ->
 * 1,817 MiB per proxy CPU-second, pacing timers 4.7 -> 4.1 per response.
 * A pipe lives for one move: an idle worker holds no descriptors for it
 * (four system calls per large body buy that). */
#define SG_SPLICE_PIPE_SIZE (64 * 1024)
#define SG_SPLICE_POOL_MAX 64

void sg_splice_pool_init(sg_splice_pool_t *pool, uv_loop_t *loop)
{
    *pool = (sg_splice_pool_t){.loop = loop};
}

static void close_pipe(sg_splice_t *sp)
{
    if (sp->pipe_r >= 0) close(sp->pipe_r);
    if (sp->pipe_w >= 0) close(sp->pipe_w);
    sp->pipe_r = sp->pipe_w = -1;
    sp->in_pipe = 0;
}

static int open_pipe(sg_splice_t *sp)
{
    int fds[2];
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) return -1;
    sp->pipe_r = fds[0];
    sp->pipe_w = fds[1];
    int cap = fcntl(fds[1], F_SETPIPE_SZ, SG_SPLICE_PIPE_SIZE);
    if (cap < 0) cap = fcntl(fds[1], F_GETPIPE_SZ);
    sp->pipe_cap = cap > 0 ? (size_t)cap : 65536;
    return 0;
}

static void kick_closed_cb(uv_handle_t *h)
{
    free(h->data);
}

/* The object is idle (not active, no poll handle open): back to the free
 * list, or gone when the pool is closing or full. */
static void recycle(sg_splice_t *sp)
{
    sg_splice_pool_t *pool = sp->pool;
    if (pool->closing || pool->n_free >= SG_SPLICE_POOL_MAX) {
        uv_close((uv_handle_t *)&sp->kick, kick_closed_cb);
        return;
    }
    sp->next_free = pool->free;
    pool->free = sp;
    pool->n_free++;
}

static void poll_closed_cb(uv_handle_t *h)
{
    sg_splice_t *sp = h->data;
    int *fd = h == (uv_handle_t *)&sp->poll_from ? &sp->dup_from : &sp->dup_to;
    close(*fd);
    *fd = -1;
    if (--sp->polls_open == 0 && !sp->active) recycle(sp);
}

/* Ends a use of the object: no callback fires after this. A pipe that
 * still holds bytes is discarded with them. */
static void release(sg_splice_t *sp)
{
    sp->active = 0;
    sp->progress = NULL;
    sp->done = NULL;
    uv_idle_stop(&sp->kick);
    close_pipe(sp);
    if (sp->dup_from >= 0 && !uv_is_closing((uv_handle_t *)&sp->poll_from))
        uv_close((uv_handle_t *)&sp->poll_from, poll_closed_cb);
    if (sp->dup_to >= 0 && !uv_is_closing((uv_handle_t *)&sp->poll_to))
        uv_close((uv_handle_t *)&sp->poll_to, poll_closed_cb);
    if (!sp->polls_open) recycle(sp);
}

static void finish(sg_splice_t *sp, int status)
{
    sg_splice_done_cb done = sp->done;
    void *data = sp->data;
    sp->pumping = 0;
    release(sp);
    done(data, status);
}

static void on_poll(uv_poll_t *h, int status, int events);
static void kick_cb(uv_idle_t *h);

/* Starts watching one side, dup'ing its descriptor the first time. A side
 * already watched is left alone: libuv turns every uv_poll_start, even one
 * that changes nothing, into EPOLL_CTL_ADD -> EEXIST -> EPOLL_CTL_MOD. */
static int watch(sg_splice_t *sp, int to_side)
{
    uv_poll_t *h = to_side ? &sp->poll_to : &sp->poll_from;
    int *dupfd = to_side ? &sp->dup_to : &sp->dup_from;
    if (*dupfd >= 0 && uv_is_active((uv_handle_t *)h)) return 0;
    if (*dupfd < 0) {
        int fd = fcntl(to_side ? sp->to_fd : sp->from_fd, F_DUPFD_CLOEXEC, 0);
        if (fd < 0) return -errno;
        int rc = uv_poll_init(sp->pool->loop, h, fd);
        if (rc) {
            close(fd);
            return rc;
        }
        h->data = sp;
        *dupfd = fd;
        sp->polls_open++;
    }
    return uv_poll_start(h, to_side ? UV_WRITABLE : UV_READABLE, on_poll);
}

static void unwatch(sg_splice_t *sp, int to_side)
{
    uv_poll_t *h = to_side ? &sp->poll_to : &sp->poll_from;
    if ((to_side ? sp->dup_to : sp->dup_from) >= 0 && uv_is_active((uv_handle_t *)h))
        uv_poll_stop(h);
}

/* Moves what the sockets allow now; then waits on exactly one side: the
 * destination while the pipe holds bytes (a pipe can also run out of
 * slots before bytes, so reading more is not attempted then), else the
 * source. After SG_SPLICE_ROUNDS busy rounds it yields to the loop so one
 * fast pair of sockets cannot starve the worker's other connections. */
#define SG_SPLICE_ROUNDS 16
static void pump(sg_splice_t *sp)
{
    sp->pumping = 1;
    for (unsigned rounds = 0;; rounds++) {
        int progressed = 0;
        if (sp->to_read && !sp->src_status && sp->in_pipe < sp->pipe_cap) {
            size_t ask = sp->pipe_cap - sp->in_pipe;
            if (ask > sp->to_read) ask = (size_t)sp->to_read;
            ssize_t n =
                splice(sp->from_fd, NULL, sp->pipe_w, NULL, ask, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
            if (n > 0) {
                sp->to_read -= (uint64_t)n;
                sp->in_pipe += (size_t)n;
                progressed = 1;
                if (sp->to_read) sg_socket_ack_now(sp->from_fd);
            } else if (n == 0) {
                sp->src_status = UV_EOF; /* early: what the pipe holds still goes out */
            } else if (errno != EAGAIN && errno != EINTR) {
                sp->src_status = -errno;
            }
        }
        int out_blocked = 0;
        if (sp->in_pipe) {
            unsigned flags = SPLICE_F_NONBLOCK | SPLICE_F_MOVE | (sp->to_read ? SPLICE_F_MORE : 0);
            ssize_t n = splice(sp->pipe_r, NULL, sp->to_fd, NULL, sp->in_pipe, flags);
            if (n > 0) {
                sp->in_pipe -= (size_t)n;
                progressed = 1;
                sp->progress(sp->data, (size_t)n);
                if (!sp->active) { /* stopped by the owner */
                    sp->pumping = 0;
                    return;
                }
            } else if (n < 0 && errno == EAGAIN) {
                out_blocked = 1;
            } else if (n == 0 || errno != EINTR) {
                finish(sp, n == 0 ? UV_EPIPE : -errno);
                return;
            }
        }
        if (!sp->in_pipe && (!sp->to_read || sp->src_status)) {
            finish(sp, sp->src_status);
            return;
        }
        if (progressed && rounds < SG_SPLICE_ROUNDS) continue;
        if (progressed) {
            uv_idle_start(&sp->kick, kick_cb);
            sp->pumping = 0;
            return;
        }
        int rc;
        if (sp->in_pipe && out_blocked) {
            unwatch(sp, 0);
            rc = watch(sp, 1);
        } else {
            unwatch(sp, 1);
            rc = watch(sp, 0);
        }
        sp->pumping = 0;
        if (rc) finish(sp, rc);
        return;
    }
}

/* A socket error (a reset, say) arrives as status UV_EBADF: libuv's word for
 * POLLERR, which also stops the handle. Pumping anyway lets the splice call
 * report the socket's own error (EPIPE, ECONNRESET), which is what the owner
 * logs; pump re-arms the watch if the socket merely became ready. */
static void on_poll(uv_poll_t *h, int status, int events)
{
    sg_splice_t *sp = h->data;
    (void)status;
    (void)events;
    if (sp->active && !sp->pumping) pump(sp);
}

static void kick_cb(uv_idle_t *h)
{
    sg_splice_t *sp = h->data;
    uv_idle_stop(h);
    if (sp->active) pump(sp);
}

sg_splice_t *sg_splice_start(sg_splice_pool_t *pool, sg_stream_t *from, sg_stream_t *to,
                             uint64_t len, sg_splice_progress_cb progress, sg_splice_done_cb done,
                             void *data)
{
    uv_os_fd_t from_fd, to_fd;
    if (pool->closing || !len || uv_fileno((uv_handle_t *)&from->tcp, &from_fd) != 0 ||
        uv_fileno((uv_handle_t *)&to->tcp, &to_fd) != 0)
        return NULL;
    sg_splice_t *sp = pool->free;
    if (sp) {
        pool->free = sp->next_free;
        pool->n_free--;
    } else {
        sp = calloc(1, sizeof(*sp));
        if (!sp) return NULL;
        sp->pool = pool;
        sp->pipe_r = sp->pipe_w = -1;
        sp->dup_from = sp->dup_to = -1;
        uv_idle_init(pool->loop, &sp->kick);
        sp->kick.data = sp;
    }
    if (open_pipe(sp) != 0) {
        recycle(sp);
        return NULL;
    }
    sp->from_fd = from_fd;
    sp->to_fd = to_fd;
    sp->to_read = len;
    sp->src_status = 0;
    sp->in_pipe = 0;
    sp->progress = progress;
    sp->done = done;
    sp->data = data;
    sp->active = 1;
    sp->pumping = 0;
    sp->next_free = NULL;
    uv_idle_start(&sp->kick, kick_cb);
    return sp;
}

void sg_splice_stop(sg_splice_t *sp)
{
    if (sp->active) release(sp);
}

void sg_splice_pool_close(sg_splice_pool_t *pool)
{
    pool->closing = 1;
    while (pool->free) {
        sg_splice_t *sp = pool->free;
        pool->free = sp->next_free;
        uv_close((uv_handle_t *)&sp->kick, kick_closed_cb);
    }
    pool->n_free = 0;
}
