/* net/splice on real loopback TCP connections: a writer thread feeds the
 * `from` socket's peer, a reader thread drains the `to` socket's peer, and
 * the uv loop runs the splice until `done` fires. Checks exact byte counts
 * and content, early end of the source, a destination that goes away,
 * stopping half-way, and reuse of the pooled object. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <dirent.h>
#include <sys/socket.h>
#include <unistd.h>

#include "net/splice.h"

#define RUN_LIMIT_MS 20000

/* Byte i of the test stream: a pattern that catches reordering and loss. */
static unsigned char pattern(uint64_t i)
{
    return (unsigned char)((i * 2654435761u) >> 13);
}

static int open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    assert_non_null(d);
    int n = 0;
    while (readdir(d)) n++;
    closedir(d);
    return n;
}

/* A connected loopback pair: *a and *b are the two ends. */
static void tcp_pair(int *a, int *b)
{
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(ls >= 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sin);
    assert_int_equal(bind(ls, (struct sockaddr *)&sin, sizeof(sin)), 0);
    assert_int_equal(listen(ls, 1), 0);
    assert_int_equal(getsockname(ls, (struct sockaddr *)&sin, &len), 0);
    *a = socket(AF_INET, SOCK_STREAM, 0);
    assert_int_equal(connect(*a, (struct sockaddr *)&sin, sizeof(sin)), 0);
    *b = accept(ls, NULL, NULL);
    assert_true(*b >= 0);
    close(ls);
}

typedef struct {
    int fd;
    uint64_t len;     /* writer: bytes to send; reader: read until EOF */
    uint64_t done;    /* bytes written / read */
    uint64_t bad_at;  /* reader: first mismatching offset + 1, 0 = none */
    int close_after;  /* writer: close (FIN) when finished */
    uint64_t stop_at; /* reader: close after this many bytes (0 = never) */
} peer_t;

static void *writer_main(void *arg)
{
    peer_t *p = arg;
    unsigned char buf[65536];
    while (p->done < p->len) {
        size_t n = p->len - p->done < sizeof(buf) ? (size_t)(p->len - p->done) : sizeof(buf);
        for (size_t i = 0; i < n; i++) buf[i] = pattern(p->done + i);
        ssize_t w = write(p->fd, buf, n);
        if (w <= 0) break;
        p->done += (uint64_t)w;
    }
    if (p->close_after) shutdown(p->fd, SHUT_WR);
    return NULL;
}

static void *reader_main(void *arg)
{
    peer_t *p = arg;
    unsigned char buf[65536];
    for (;;) {
        size_t want = sizeof(buf);
        if (p->stop_at && p->stop_at - p->done < want) want = (size_t)(p->stop_at - p->done);
        ssize_t n = read(p->fd, buf, want);
        if (n <= 0) break;
        for (ssize_t i = 0; i < n && !p->bad_at; i++)
            if (buf[i] != pattern(p->done + (uint64_t)i)) p->bad_at = p->done + (uint64_t)i + 1;
        p->done += (uint64_t)n;
        if (p->stop_at && p->done >= p->stop_at) {
            close(p->fd);
            p->fd = -1;
            break;
        }
    }
    return NULL;
}

typedef struct {
    uv_loop_t loop;
    sg_buf_pool_t bufs;
    sg_splice_pool_t pool;
    sg_stream_t from, to;
    int from_peer, to_peer; /* the test's ends */
    uint64_t progressed;
    int status;
    int fired;
    sg_splice_t *sp;
    uint64_t stop_after; /* progress: stop the splice past this many bytes */
    uv_timer_t limit;
} fixture_t;

static void on_progress(void *data, size_t n)
{
    fixture_t *f = data;
    f->progressed += n;
    if (f->stop_after && f->progressed >= f->stop_after && f->sp) {
        sg_splice_stop(f->sp);
        f->sp = NULL;
        uv_stop(&f->loop);
    }
}

static void on_done(void *data, int status)
{
    fixture_t *f = data;
    f->fired++;
    f->status = status;
    f->sp = NULL;
    uv_stop(&f->loop);
}

static void limit_cb(uv_timer_t *t)
{
    fail_msg("splice did not finish within %d ms", RUN_LIMIT_MS);
    (void)t;
}

/* shutdown(2) on a stream's own socket, as its peer would see it. */
static void shut_stream(sg_stream_t *s, int how)
{
    uv_os_fd_t fd;
    assert_int_equal(uv_fileno((uv_handle_t *)&s->tcp, &fd), 0);
    shutdown(fd, how);
}

static void open_stream(fixture_t *f, sg_stream_t *s, int fd)
{
    assert_int_equal(sg_stream_tcp_init(s, &f->loop, &f->bufs), 0);
    assert_int_equal(uv_tcp_open(&s->tcp, fd), 0);
}

static void setup_fixture(fixture_t *f)
{
    memset(f, 0, sizeof(*f));
    assert_int_equal(uv_loop_init(&f->loop), 0);
    sg_buf_pool_init(&f->bufs, 65536, 8);
    sg_splice_pool_init(&f->pool, &f->loop);
    int from_fd, to_fd;
    tcp_pair(&f->from_peer, &from_fd);
    tcp_pair(&to_fd, &f->to_peer);
    open_stream(f, &f->from, from_fd);
    open_stream(f, &f->to, to_fd);
    uv_timer_init(&f->loop, &f->limit);
    uv_timer_start(&f->limit, limit_cb, RUN_LIMIT_MS, 0);
}

static void run_splice(fixture_t *f, uint64_t len)
{
    f->fired = 0;
    f->progressed = 0;
    f->sp = sg_splice_start(&f->pool, &f->from, &f->to, len, on_progress, on_done, f);
    assert_non_null(f->sp);
    assert_int_equal(f->fired, 0); /* never inside start */
    uv_run(&f->loop, UV_RUN_DEFAULT);
}

static void teardown_fixture(fixture_t *f)
{
    if (f->from_peer >= 0) close(f->from_peer);
    if (f->to_peer >= 0) close(f->to_peer);
    sg_stream_close(&f->from, NULL);
    sg_stream_close(&f->to, NULL);
    uv_close((uv_handle_t *)&f->limit, NULL);
    sg_splice_pool_close(&f->pool);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0); /* every handle closed */
    sg_buf_pool_destroy(&f->bufs);
}

/* Exactly len bytes move, twice on the same pool object; bytes past len
 * stay in the source socket for whoever reads it next. */
static void test_moves_exact_length_and_reuses_pipe(void **state)
{
    (void)state;
    fixture_t f;
    setup_fixture(&f);
    const uint64_t len = 5 * 1024 * 1024 + 123, extra = 100;
    peer_t w = {.fd = f.from_peer, .len = 2 * len + extra};
    peer_t r = {.fd = f.to_peer};
    pthread_t wt, rt;
    pthread_create(&wt, NULL, writer_main, &w);
    pthread_create(&rt, NULL, reader_main, &r);
    int fds0 = open_fds();
    run_splice(&f, len);
    assert_int_equal(f.fired, 1);
    assert_int_equal(f.status, 0);
    assert_int_equal(f.progressed, len);
    uv_run(&f.loop, UV_RUN_NOWAIT);     /* poll handles finish closing */
    assert_int_equal(open_fds(), fds0); /* no pipe or dup'd descriptor left */
    assert_int_equal(f.pool.n_free, 1); /* back in the pool */
    assert_int_equal(f.sp, NULL);
    run_splice(&f, len);
    assert_int_equal(f.status, 0);
    assert_int_equal(f.progressed, len);
    assert_int_equal(f.pool.n_free, 1);
    pthread_join(wt, NULL);
    /* the extra bytes are still in the source socket, in order */
    unsigned char tail[256];
    uv_os_fd_t fd;
    uv_fileno((uv_handle_t *)&f.from.tcp, &fd);
    size_t got = 0;
    while (got < extra) {
        ssize_t n = read(fd, tail + got, sizeof(tail) - got);
        if (n < 0 && errno == EAGAIN) continue;
        assert_true(n > 0);
        got += (size_t)n;
    }
    assert_int_equal(got, extra);
    for (size_t i = 0; i < extra; i++) assert_int_equal(tail[i], pattern(2 * len + i));
    shutdown(fd, SHUT_RDWR);
    shut_stream(&f.to, SHUT_WR); /* the reader sees EOF */
    pthread_join(rt, NULL);
    assert_int_equal(r.done, 2 * len);
    assert_int_equal(r.bad_at, 0);
    teardown_fixture(&f);
}

/* The source ends early: every byte it sent still reaches the destination,
 * then done reports UV_EOF. */
static void test_early_eof_delivers_what_came_then_reports(void **state)
{
    (void)state;
    fixture_t f;
    setup_fixture(&f);
    peer_t w = {.fd = f.from_peer, .len = 3 * 1024 * 1024 + 7, .close_after = 1};
    peer_t r = {.fd = f.to_peer};
    pthread_t wt, rt;
    pthread_create(&wt, NULL, writer_main, &w);
    pthread_create(&rt, NULL, reader_main, &r);
    run_splice(&f, 8 * 1024 * 1024);
    assert_int_equal(f.fired, 1);
    assert_int_equal(f.status, UV_EOF);
    assert_int_equal(f.progressed, w.len);
    pthread_join(wt, NULL);
    shut_stream(&f.to, SHUT_WR);
    pthread_join(rt, NULL);
    assert_int_equal(r.done, w.len);
    assert_int_equal(r.bad_at, 0);
    teardown_fixture(&f);
}

/* The destination's reader leaves after 1 MiB: done reports a write error
 * instead of waiting forever; the pipe goes with the bytes it still holds. */
static void test_destination_gone_is_an_error(void **state)
{
    (void)state;
    fixture_t f;
    setup_fixture(&f);
    peer_t w = {.fd = f.from_peer, .len = 64 * 1024 * 1024};
    peer_t r = {.fd = f.to_peer, .stop_at = 1024 * 1024};
    f.to_peer = -1; /* the reader closes it */
    pthread_t wt, rt;
    pthread_create(&wt, NULL, writer_main, &w);
    pthread_create(&rt, NULL, reader_main, &r);
    run_splice(&f, w.len);
    pthread_join(rt, NULL);
    assert_int_equal(f.fired, 1);
    if (f.status != UV_EPIPE && f.status != UV_ECONNRESET)
        fail_msg("done with %s, expected EPIPE or ECONNRESET", uv_err_name(f.status));
    assert_true(f.progressed < w.len);
    close(f.from_peer); /* the writer's blocked write fails */
    f.from_peer = -1;
    shut_stream(&f.from, SHUT_RDWR);
    pthread_join(wt, NULL);
    teardown_fixture(&f);
}

/* Stopped half-way from the progress callback: no callback after, and the
 * object goes back to the pool without its (non-empty) pipe. */
static void test_stop_halfway_fires_nothing_more(void **state)
{
    (void)state;
    fixture_t f;
    setup_fixture(&f);
    peer_t w = {.fd = f.from_peer, .len = 4 * 1024 * 1024};
    peer_t r = {.fd = f.to_peer};
    pthread_t wt, rt;
    pthread_create(&wt, NULL, writer_main, &w);
    pthread_create(&rt, NULL, reader_main, &r);
    f.stop_after = 1024 * 1024;
    run_splice(&f, w.len);
    assert_int_equal(f.fired, 0);
    assert_true(f.progressed >= f.stop_after && f.progressed < w.len);
    uv_run(&f.loop, UV_RUN_NOWAIT); /* nothing may fire now */
    assert_int_equal(f.fired, 0);
    shut_stream(&f.from, SHUT_RDWR);
    close(f.from_peer);
    f.from_peer = -1;
    pthread_join(wt, NULL);
    shut_stream(&f.to, SHUT_WR);
    pthread_join(rt, NULL);
    assert_int_equal(r.bad_at, 0);
    assert_int_equal(r.done, f.progressed);
    teardown_fixture(&f);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_moves_exact_length_and_reuses_pipe),
        cmocka_unit_test(test_early_eof_delivers_what_came_then_reports),
        cmocka_unit_test(test_destination_gone_is_an_error),
        cmocka_unit_test(test_stop_halfway_fires_nothing_more),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
