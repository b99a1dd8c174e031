/* net/upstream's pool on real loopback TCP: which released connections are
 * parked and which are closed. The test owns a listening socket (the
 * "sandbox") and accepts with plain blocking calls; the pool runs on a uv
 * loop with the direct-write queue (sg_stream_tcp_loop_init) as in workers.
 *
 * The case that matters most: a write the kernel took in this loop turn
 * still has its callback deferred to the check phase, and a fast sandbox's
 * whole response can be read before that phase. Releasing the connection
 * then must pool it; only bytes still queued in libuv make it unusable. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "net/upstream.h"

#define RUN_LIMIT_MS 10000

typedef struct {
    uv_loop_t loop;
    sg_buf_pool_t bufs;
    sg_upstream_pool_t pool;
    int listen_fd;
    struct sockaddr_storage addr;
    char key[SG_UPSTREAM_KEY_MAX];
    size_t key_len;
    uv_timer_t limit, poll_timer;
    int (*until)(void *); /* run_until's condition */
    void *until_arg;
    int connected, connect_status;
    sg_upstream_t *up;
    int writes_done, write_status;
    sg_counter_t want_open; /* open_is's condition */
} fixture_t;

static void limit_cb(uv_timer_t *t)
{
    fail_msg("loop condition not reached within %d ms", RUN_LIMIT_MS);
    (void)t;
}

static void setup_fixture(fixture_t *f, uint64_t idle_timeout_ms)
{
    memset(f, 0, sizeof(*f));
    assert_int_equal(uv_loop_init(&f->loop), 0);
    assert_int_equal(sg_stream_tcp_loop_init(&f->loop), 0);
    sg_buf_pool_init(&f->bufs, 65536, 8);
    sg_upstream_pool_init(&f->pool, &f->loop, &f->bufs, 4, idle_timeout_ms);
    f->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(f->listen_fd >= 0);
    struct sockaddr_in *sin = (struct sockaddr_in *)&f->addr;
    sin->sin_family = AF_INET;
    sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(*sin);
    assert_int_equal(bind(f->listen_fd, (struct sockaddr *)sin, sizeof(*sin)), 0);
    assert_int_equal(listen(f->listen_fd, 8), 0);
    assert_int_equal(getsockname(f->listen_fd, (struct sockaddr *)sin, &len), 0);
    f->key_len = sg_upstream_make_key(f->key, &f->addr);
    uv_timer_init(&f->loop, &f->limit);
    uv_timer_start(&f->limit, limit_cb, RUN_LIMIT_MS, 0);
    uv_unref((uv_handle_t *)&f->limit);
    uv_timer_init(&f->loop, &f->poll_timer);
    f->poll_timer.data = f;
}

static void teardown_fixture(fixture_t *f)
{
    sg_upstream_pool_close(&f->pool);
    uv_close((uv_handle_t *)&f->limit, NULL);
    uv_close((uv_handle_t *)&f->poll_timer, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    sg_stream_tcp_loop_close(&f->loop);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0); /* every handle closed */
    assert_int_equal(f->pool.stats.open, 0);
    sg_buf_pool_destroy(&f->bufs);
    close(f->listen_fd);
}

static void poll_cb(uv_timer_t *t)
{
    fixture_t *f = t->data;
    if (f->until(f->until_arg)) uv_stop(&f->loop);
}

/* Runs the loop until cond(arg) holds, checked every millisecond. */
static void run_until(fixture_t *f, int (*cond)(void *), void *arg)
{
    f->until = cond;
    f->until_arg = arg;
    uv_timer_start(&f->poll_timer, poll_cb, 1, 1);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    uv_timer_stop(&f->poll_timer);
    assert_true(cond(arg));
}

static int is_connected(void *arg)
{
    return ((fixture_t *)arg)->connected;
}

static int pool_empty_of_open(void *arg)
{
    return ((fixture_t *)arg)->pool.stats.open == 0;
}

static void on_connect(void *data, int status, sg_upstream_t *up)
{
    fixture_t *f = data;
    f->connected = 1;
    f->connect_status = status;
    f->up = up;
}

static void on_write(sg_stream_write_t *w, int status)
{
    fixture_t *f = w->data;
    f->writes_done++;
    f->write_status = status;
}

/* A fresh connection, connected, with the server side accepted. */
static sg_upstream_t *connect_new(fixture_t *f, int *server_fd)
{
    sg_upstream_opts_t opts = {.connect_timeout_ms = 2000, .retry_window_ms = 0};
    sg_upstream_t *up = NULL;
    f->connected = 0;
    assert_int_equal(
        sg_upstream_get(&f->pool, f->key, f->key_len, &f->addr, &opts, on_connect, f, &up), 0);
    run_until(f, is_connected, f);
    assert_int_equal(f->connect_status, 0);
    assert_ptr_equal(f->up, up);
    *server_fd = accept(f->listen_fd, NULL, NULL);
    assert_true(*server_fd >= 0);
    return up;
}

/* 1 with *out set when the pool had an idle connection; else cancels the
 * connect it started and returns 0. */
static int take_pooled(fixture_t *f, sg_upstream_t **out)
{
    sg_upstream_opts_t opts = {.connect_timeout_ms = 2000, .retry_window_ms = 0};
    int rc = sg_upstream_get(&f->pool, f->key, f->key_len, &f->addr, &opts, on_connect, f, out);
    assert_true(rc >= 0);
    if (rc == 0) sg_upstream_cancel(*out);
    return rc;
}

static void read_exactly(int fd, const char *want, size_t len)
{
    char got[256];
    size_t n = 0;
    assert_true(len <= sizeof(got));
    while (n < len) {
        ssize_t r = read(fd, got + n, len - n);
        assert_true(r > 0);
        n += (size_t)r;
    }
    assert_memory_equal(got, want, len);
}

static void test_write_finished_this_turn_still_pools(void **state)
{
    (void)state;
    fixture_t f;
    setup_fixture(&f, 60000);
    int server;
    sg_upstream_t *up = connect_new(&f, &server);
    static const char req[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    sg_stream_write_t w = {.data = &f};
    uv_buf_t b = uv_buf_init((char *)req, sizeof(req) - 1);
    assert_int_equal(sg_stream_write(&up->stream, &w, &b, 1, on_write), 0);
    /* the kernel has every byte; the callback waits for the check phase */
    assert_int_equal(f.writes_done, 0);
    assert_int_equal(uv_stream_get_write_queue_size((uv_stream_t *)&up->stream.tcp), 0);
    sg_upstream_release(up, 1);
    sg_upstream_t *again = NULL;
    assert_int_equal(take_pooled(&f, &again), 1);
    assert_ptr_equal(again, up);
    assert_int_equal(f.pool.stats.hits, 1);
    sg_stream_read_stop(&again->stream);
    uv_run(&f.loop, UV_RUN_NOWAIT);
    assert_int_equal(f.writes_done, 1); /* fired once, later, for its writer */
    assert_int_equal(f.write_status, 0);
    read_exactly(server, req, sizeof(req) - 1);
    sg_upstream_release(again, 1);
    close(server);
    teardown_fixture(&f);
}

static void test_unsent_bytes_close_instead_of_pooling(void **state)
{
    (void)state;
    fixture_t f;
    setup_fixture(&f, 60000);
    int server;
    sg_upstream_t *up = connect_new(&f, &server);
    /* more than loopback's socket buffers hold: the server never reads */
    size_t len = 64u << 20;
    char *big = calloc(1, len);
    assert_non_null(big);
    sg_stream_write_t w = {.data = &f};
    uv_buf_t b = uv_buf_init(big, (unsigned)len);
    assert_int_equal(sg_stream_write(&up->stream, &w, &b, 1, on_write), 0);
    assert_true(uv_stream_get_write_queue_size((uv_stream_t *)&up->stream.tcp) > 0);
    sg_upstream_release(up, 1);
    sg_upstream_t *again = NULL;
    assert_int_equal(take_pooled(&f, &again), 0);
    assert_int_equal(f.pool.stats.hits, 0);
    run_until(&f, pool_empty_of_open, &f);
    assert_int_equal(f.writes_done, 1);
    assert_int_equal(f.write_status, UV_ECANCELED);
    free(big);
    close(server);
    teardown_fixture(&f);
}

static void test_idle_connection_closed_by_sandbox_leaves_pool(void **state)
{
    (void)state;
    fixture_t f;
    setup_fixture(&f, 60000);
    int server;
    sg_upstream_t *up = connect_new(&f, &server);
    sg_upstream_release(up, 1);
    assert_int_equal(f.pool.stats.open, 1);
    close(server); /* FIN while idle */
    run_until(&f, pool_empty_of_open, &f);
    sg_upstream_t *again = NULL;
    assert_int_equal(take_pooled(&f, &again), 0);
    teardown_fixture(&f);
}

static void test_idle_timeout_closes_and_taking_keeps_it_open(void **state)
{
    (void)state;
    fixture_t f;
    setup_fixture(&f, 40);
    int server;
    sg_upstream_t *up = connect_new(&f, &server);
    sg_upstream_release(up, 1);
    /* in use for longer than the idle timeout: the timer must not close it */
    sg_upstream_t *again = NULL;
    assert_int_equal(take_pooled(&f, &again), 1);
    sg_stream_read_stop(&again->stream);
    usleep(80 * 1000);
    uv_run(&f.loop, UV_RUN_NOWAIT);
    uv_run(&f.loop, UV_RUN_NOWAIT);
    assert_int_equal(f.pool.stats.open, 1);
    sg_upstream_release(again, 1);
    run_until(&f, pool_empty_of_open, &f);
    char c;
    assert_int_equal(read(server, &c, 1), 0); /* the sandbox sees the close */
    close(server);
    teardown_fixture(&f);
}

static int open_is(void *arg)
{
    fixture_t *f = arg;
    return f->pool.stats.open == f->want_open;
}

/* Releases n fresh connections to the fixture's current destination. */
static void release_fresh(fixture_t *f, int n, int *servers)
{
    sg_upstream_t *ups[8];
    assert_true(n <= 8);
    for (int i = 0; i < n; i++) ups[i] = connect_new(f, &servers[i]);
    for (int i = 0; i < n; i++) sg_upstream_release(ups[i], 1);
}

static void test_idle_limit_is_per_destination(void **state)
{
    (void)state;
    fixture_t f;
    setup_fixture(&f, 60000);
    /* One bucket for every destination: the limit must count this
     * destination's connections, not the bucket's. */
    size_t buckets = f.pool.n_buckets;
    f.pool.n_buckets = 1;
    int a_servers[6], b_servers[2];
    release_fresh(&f, 6, a_servers); /* limit 4: two are closed */
    f.want_open = 4;
    run_until(&f, open_is, &f);
    assert_int_equal(f.pool.stats.open, 4);

    /* a second destination, same bucket, still pools */
    fixture_t a = f;
    f.listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in *sin = (struct sockaddr_in *)&f.addr;
    sin->sin_port = 0;
    socklen_t len = sizeof(*sin);
    assert_int_equal(bind(f.listen_fd, (struct sockaddr *)sin, sizeof(*sin)), 0);
    assert_int_equal(listen(f.listen_fd, 8), 0);
    assert_int_equal(getsockname(f.listen_fd, (struct sockaddr *)sin, &len), 0);
    f.key_len = sg_upstream_make_key(f.key, &f.addr);
    release_fresh(&f, 2, b_servers);
    f.want_open = 6;
    run_until(&f, open_is, &f);
    sg_upstream_t *b1 = NULL, *b2 = NULL, *b3 = NULL;
    assert_int_equal(take_pooled(&f, &b1), 1);
    assert_int_equal(take_pooled(&f, &b2), 1);
    assert_int_equal(take_pooled(&f, &b3), 0);
    sg_upstream_release(b1, 1);
    sg_upstream_release(b2, 1);
    close(f.listen_fd);

    /* taking from the full destination frees its places, and releasing
     * fills them again: the count follows both ways */
    memcpy(f.key, a.key, sizeof(f.key));
    f.key_len = a.key_len;
    f.addr = a.addr;
    f.listen_fd = a.listen_fd;
    sg_upstream_t *taken[4];
    for (int i = 0; i < 4; i++) assert_int_equal(take_pooled(&f, &taken[i]), 1);
    sg_upstream_t *extra = NULL;
    assert_int_equal(take_pooled(&f, &extra), 0);
    for (int i = 0; i < 4; i++) {
        sg_stream_read_stop(&taken[i]->stream);
        sg_upstream_release(taken[i], 1);
    }
    for (int i = 0; i < 4; i++) assert_int_equal(take_pooled(&f, &taken[i]), 1);
    for (int i = 0; i < 4; i++) {
        sg_stream_read_stop(&taken[i]->stream);
        sg_upstream_release(taken[i], 1);
    }
    f.want_open = 6;
    run_until(&f, open_is, &f);
    for (int i = 0; i < 6; i++) close(a_servers[i]);
    for (int i = 0; i < 2; i++) close(b_servers[i]);
    f.pool.n_buckets = buckets; /* restored: only bucket 0 was used */
    teardown_fixture(&f);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_write_finished_this_turn_still_pools),
        cmocka_unit_test(test_unsent_bytes_close_instead_of_pooling),
        cmocka_unit_test(test_idle_connection_closed_by_sandbox_leaves_pool),
        cmocka_unit_test(test_idle_timeout_closes_and_taking_keeps_it_open),
        cmocka_unit_test(test_idle_limit_is_per_destination),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
