/* net/resolver against a real DNS server: tests/integration/dns_server.py
 * (dnslib, UDP and TCP) runs as a child process on 127.0.0.1 with a zone
 * file written here, for the whole group. Each test resolves on a real uv
 * loop and ends with the resolver closed and every handle gone. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"
#include "net/resolver.h"

#define ZONE "resolver.test"
#define PYTHON "/usr/bin/python3"
#define SERVER_START_MS 15000
#define RUN_LIMIT_MS 10000

/* ---- the DNS server child ---------------------------------------------- */

static const char zone_json[] =
    "{\"zone\": \"" ZONE "\", \"ttl\": 30, \"records\": {\n"
    "  \"both\": {\"A\": [\"192.0.2.1\", \"192.0.2.2\"], \"AAAA\": [\"2001:db8::1\"]},\n"
    "  \"v6\": {\"AAAA\": [\"2001:db8::6\"]},\n"
    "  \"nested\": {\"A\": [\"192.0.2.20\"]},\n"
    "  \"txtonly\": {\"TXT\": [\"hello\"]},\n"
    "  \"broken\": {\"rcode\": \"SERVFAIL\"},\n"
    "  \"dead\": {\"drop\": true},\n"
    "  \"slow\": {\"A\": [\"192.0.2.3\"], \"delay_ms\": 300}\n"
    "}}\n";

static struct {
    char dir[256];
    char zone[320], stats[320], ready[320], log[320];
    pid_t pid;
    uint16_t port;
} server;

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* dns_server.py next to this file's folder: tests/integration/. */
static void server_script(char *out, size_t len)
{
    const char *here = __FILE__; /* absolute under CMake */
    const char *slash = strrchr(here, '/');
    if (access("tests/integration/dns_server.py", R_OK) == 0 || !slash) {
        snprintf(out, len, "tests/integration/dns_server.py");
        return;
    }
    snprintf(out, len, "%.*s/../integration/dns_server.py", (int)(slash - here), here);
}

static void dump_log(void)
{
    FILE *f = fopen(server.log, "r");
    if (!f) return;
    char line[512];
    while (fgets(line, sizeof(line), f)) fprintf(stderr, "dns_server: %s", line);
    fclose(f);
}

static void server_stop(void)
{
    if (server.pid <= 0) return;
    kill(server.pid, SIGTERM);
    uint64_t deadline = now_ms() + 5000;
    int st;
    while (waitpid(server.pid, &st, WNOHANG) == 0) {
        if (now_ms() > deadline) {
            kill(server.pid, SIGKILL);
            waitpid(server.pid, &st, 0);
            break;
        }
        usleep(10000);
    }
    server.pid = 0;
}

static int group_setup(void **state)
{
    const char *base = getenv("TMPDIR");
    snprintf(server.dir, sizeof(server.dir), "%s/sg_resolver_XXXXXX",
             base && *base ? base : "/tmp");
    if (!mkdtemp(server.dir)) return -1;
    snprintf(server.zone, sizeof(server.zone), "%s/zone.json", server.dir);
    snprintf(server.stats, sizeof(server.stats), "%s/stats.json", server.dir);
    snprintf(server.ready, sizeof(server.ready), "%s/ready", server.dir);
    snprintf(server.log, sizeof(server.log), "%s/server.log", server.dir);
    FILE *z = fopen(server.zone, "w");
    if (!z) return -1;
    fputs(zone_json, z);
    fclose(z);

    char script[1024];
    server_script(script, sizeof(script));
    pid_t parent = getpid();
    server.pid = fork();
    if (server.pid < 0) return -1;
    if (server.pid == 0) {
        /* dies with this test even when it crashes */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(1);
        FILE *log = freopen(server.log, "w", stdout);
        if (!log || dup2(fileno(stdout), 2) < 0) _exit(1);
        execl(PYTHON, PYTHON, script, "--port", "0", "--addr", "127.0.0.1", "--zone-file",
              server.zone, "--stats-file", server.stats, "--ready-file", server.ready,
              (char *)NULL);
        _exit(127);
    }
    /* The ready file appears (atomically) once both sockets listen. */
    uint64_t deadline = now_ms() + SERVER_START_MS;
    for (;;) {
        FILE *r = fopen(server.ready, "r");
        if (r) {
            unsigned port = 0;
            int got = fscanf(r, "%u", &port);
            fclose(r);
            if (got == 1 && port > 0 && port < 65536) {
                server.port = (uint16_t)port;
                return 0;
            }
        }
        int st;
        if (waitpid(server.pid, &st, WNOHANG) == server.pid || now_ms() > deadline) {
            fprintf(stderr, "dns_server.py did not start (%s)\n", script);
            dump_log();
            if (waitpid(server.pid, &st, WNOHANG) == 0) server_stop();
            server.pid = 0;
            return -1;
        }
        usleep(20000);
    }
}

static int group_teardown(void **state)
{
    server_stop();
    unlink(server.zone);
    unlink(server.stats);
    unlink(server.ready);
    unlink(server.log);
    rmdir(server.dir);
    return 0;
}

/* Queries of one type the server received for name, from its stats file. */
static int server_count(const char *name, const char *type)
{
    json_t *doc = json_load_file(server.stats, 0, NULL);
    assert_non_null(doc);
    json_t *n = json_object_get(json_object_get(json_object_get(doc, "names"), name), type);
    int count = n ? (int)json_integer_value(n) : 0;
    json_decref(doc);
    return count;
}

/* ---- loop and resolver fixture ------------------------------------------ */

typedef struct {
    int calls;
    int status;
    size_t n;
    struct sockaddr_storage addrs[SG_RESOLVER_MAX_ADDRS];
    int seq; /* order among callbacks and on_closed */
    void (*hook)(void);
} result_t;

typedef struct {
    uv_loop_t loop;
    sg_resolver_t *r;
    int closed;     /* on_closed fired */
    int closed_seq; /* ... in this place of the order */
    int seq;
} fx_t;

static fx_t *current;

static void on_resolved(void *data, int status, const struct sockaddr_storage *addrs, size_t n)
{
    result_t *res = data;
    res->calls++;
    res->status = status;
    res->n = n;
    res->seq = ++current->seq;
    if (status == 0) {
        assert_non_null(addrs);
        assert_true(n >= 1 && n <= SG_RESOLVER_MAX_ADDRS);
        memcpy(res->addrs, addrs, n * sizeof(*addrs));
    } else {
        assert_null(addrs);
        assert_int_equal(n, 0);
    }
    if (res->hook) res->hook();
}

static void on_closed(void *data)
{
    fx_t *f = data;
    assert_false(f->closed);
    f->closed = 1;
    f->closed_seq = ++f->seq;
}

static void fx_open(fx_t *f, uint64_t timeout_ms, unsigned tries)
{
    memset(f, 0, sizeof(*f));
    assert_int_equal(uv_loop_init(&f->loop), 0);
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    sin->sin_family = AF_INET;
    sin->sin_port = htons(server.port);
    inet_pton(AF_INET, "127.0.0.1", &sin->sin_addr);
    sg_resolver_opts_t o = {
        .servers = &ss, .n_servers = 1, .timeout_ms = timeout_ms, .tries = tries};
    assert_int_equal(sg_resolver_new(&f->loop, &o, &f->r), 0);
    current = f;
}

static void on_watchdog(uv_timer_t *t)
{
    *(int *)t->data = 1;
}

static void on_watchdog_closed(uv_handle_t *h)
{
    *(int *)h->data = 1;
}

/* Runs the loop until *done (or ms pass when done is NULL); fails the test
 * when the limit passes first. */
static void run(fx_t *f, const int *done, uint64_t ms)
{
    int expired = 0, closed = 0;
    uv_timer_t wd;
    uv_timer_init(&f->loop, &wd);
    wd.data = &expired;
    uv_timer_start(&wd, on_watchdog, done ? RUN_LIMIT_MS : ms, 0);
    while (!(done && *done) && !expired) uv_run(&f->loop, UV_RUN_ONCE);
    wd.data = &closed;
    uv_close((uv_handle_t *)&wd, on_watchdog_closed);
    while (!closed) uv_run(&f->loop, UV_RUN_NOWAIT);
    if (done) assert_false(expired);
}

/* Closes the resolver (unless a test did) and checks that it let go of
 * the loop: on_closed fired and no handle is left. */
static void fx_close(fx_t *f)
{
    if (f->r) sg_resolver_close(f->r, on_closed, f);
    f->r = NULL;
    run(f, &f->closed, 0);
    assert_int_equal(uv_run(&f->loop, UV_RUN_NOWAIT), 0);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    current = NULL;
}

static int has_addr(const result_t *res, const char *ip, uint16_t port)
{
    for (size_t i = 0; i < res->n; i++) {
        char buf[INET6_ADDRSTRLEN];
        const struct sockaddr_storage *ss = &res->addrs[i];
        if (ss->ss_family == AF_INET) {
            const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
            inet_ntop(AF_INET, &sin->sin_addr, buf, sizeof(buf));
            if (strcmp(buf, ip) == 0 && ntohs(sin->sin_port) == port) return 1;
        } else if (ss->ss_family == AF_INET6) {
            const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
            inet_ntop(AF_INET6, &sin6->sin6_addr, buf, sizeof(buf));
            if (strcmp(buf, ip) == 0 && ntohs(sin6->sin6_port) == port) return 1;
        }
    }
    return 0;
}

/* ---- tests ----------------------------------------------------------- */

static void test_new_rejects_bad_opts(void **state)
{
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    sg_resolver_t *r = (sg_resolver_t *)&loop; /* must stay untouched */
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    ss.ss_family = AF_UNIX;
    sg_resolver_opts_t none = {.servers = NULL, .n_servers = 0};
    sg_resolver_opts_t unix_server = {.servers = &ss, .n_servers = 1};
    assert_int_equal(sg_resolver_new(&loop, NULL, &r), UV_EINVAL);
    assert_int_equal(sg_resolver_new(&loop, &none, &r), UV_EINVAL);
    assert_int_equal(sg_resolver_new(&loop, &unix_server, &r), UV_EINVAL);
    assert_ptr_equal(r, (sg_resolver_t *)&loop);
    assert_int_equal(uv_loop_close(&loop), 0); /* nothing was opened */
}

static void test_a_and_aaaa(void **state)
{
    fx_t f;
    fx_open(&f, 2000, 2);
    result_t both = {0}, dotted = {0}, v6 = {0};
    int before_a = server_count("both." ZONE, "A");
    int before_aaaa = server_count("both." ZONE, "AAAA");
    assert_non_null(sg_resolver_resolve(f.r, "both." ZONE, 8443, on_resolved, &both));
    assert_non_null(sg_resolver_resolve(f.r, "both." ZONE ".", 80, on_resolved, &dotted));
    assert_non_null(sg_resolver_resolve(f.r, "V6." ZONE, 443, on_resolved, &v6));
    assert_int_equal(both.calls + dotted.calls + v6.calls, 0); /* never inside the call */
    run(&f, &both.calls, 0);
    run(&f, &dotted.calls, 0);
    run(&f, &v6.calls, 0);

    assert_int_equal(both.status, 0);
    assert_int_equal(both.n, 3);
    assert_true(has_addr(&both, "192.0.2.1", 8443));
    assert_true(has_addr(&both, "192.0.2.2", 8443));
    assert_true(has_addr(&both, "2001:db8::1", 8443));
    /* one trailing dot names the same host */
    assert_int_equal(dotted.status, 0);
    assert_int_equal(dotted.n, 3);
    assert_true(has_addr(&dotted, "2001:db8::1", 80));
    assert_int_equal(v6.status, 0);
    assert_int_equal(v6.n, 1);
    assert_int_equal(v6.addrs[0].ss_family, AF_INET6);
    assert_true(has_addr(&v6, "2001:db8::6", 443));
    /* the answers came from the server: both families were asked, for the
     * exact name (no search domain appended) */
    assert_true(server_count("both." ZONE, "A") >= before_a + 2);
    assert_true(server_count("both." ZONE, "AAAA") >= before_aaaa + 2);
    run(&f, NULL, 20);
    assert_int_equal(both.calls, 1);
    assert_int_equal(dotted.calls, 1);
    assert_int_equal(v6.calls, 1);
    fx_close(&f);
}

static void test_not_found_and_failures(void **state)
{
    fx_t f;
    fx_open(&f, 2000, 2);
    result_t nx = {0}, nodata = {0}, servfail = {0};
    assert_non_null(sg_resolver_resolve(f.r, "nope." ZONE, 80, on_resolved, &nx));
    assert_non_null(sg_resolver_resolve(f.r, "txtonly." ZONE, 80, on_resolved, &nodata));
    assert_non_null(sg_resolver_resolve(f.r, "broken." ZONE, 80, on_resolved, &servfail));
    run(&f, &nx.calls, 0);
    run(&f, &nodata.calls, 0);
    run(&f, &servfail.calls, 0);
    assert_int_equal(nx.status, UV_ENOENT);
    assert_int_equal(nodata.status, UV_ENOENT);
    assert_int_equal(servfail.status, UV_EAI_FAIL);
    assert_true(server_count("nope." ZONE, "A") >= 1);
    assert_true(server_count("txtonly." ZONE, "AAAA") >= 1);
    fx_close(&f);
}

/* The timer drives c-ares' retries: a server that never answers ends in
 * UV_ETIMEDOUT after about timeout_ms per try. */
static void test_timeout(void **state)
{
    fx_t f;
    fx_open(&f, 200, 2);
    result_t dead = {0};
    int before = server_count("dead." ZONE, "A");
    uint64_t t0 = now_ms();
    assert_non_null(sg_resolver_resolve(f.r, "dead." ZONE, 80, on_resolved, &dead));
    run(&f, &dead.calls, 0);
    uint64_t took = now_ms() - t0;
    assert_int_equal(dead.status, UV_ETIMEDOUT);
    assert_true(took >= 350); /* two tries of 200 ms */
    assert_true(took < 3000);
    assert_true(server_count("dead." ZONE, "A") >= before + 2);
    fx_close(&f);
}

/* IP literals answer themselves, and c-ares answers a name it refuses
 * inside ares_getaddrinfo: the callbacks still come from the loop, after
 * the call returned, in the order asked, and no query is sent. */
static void test_answers_without_query_come_from_loop(void **state)
{
    fx_t f;
    fx_open(&f, 2000, 2);
    result_t v4 = {0}, v6 = {0}, bad = {0};
    int before = server_count("192.0.2.77", "A");
    assert_non_null(sg_resolver_resolve(f.r, "192.0.2.77", 8080, on_resolved, &v4));
    assert_non_null(sg_resolver_resolve(f.r, "2001:db8::77", 8081, on_resolved, &v6));
    assert_non_null(sg_resolver_resolve(f.r, "a..b", 80, on_resolved, &bad));
    assert_int_equal(v4.calls + v6.calls + bad.calls, 0);
    run(&f, &bad.calls, 0);
    assert_int_equal(v4.calls, 1);
    assert_int_equal(v6.calls, 1);
    assert_true(v4.seq < v6.seq && v6.seq < bad.seq);
    assert_int_equal(v4.status, 0);
    assert_int_equal(v4.n, 1);
    assert_true(has_addr(&v4, "192.0.2.77", 8080));
    assert_int_equal(v6.status, 0);
    assert_int_equal(v6.n, 1);
    assert_true(has_addr(&v6, "2001:db8::77", 8081));
    assert_int_equal(bad.status, UV_EINVAL);
    assert_int_equal(server_count("192.0.2.77", "A"), before);
    fx_close(&f);
}

static void test_cancel(void **state)
{
    fx_t f;
    fx_open(&f, 2000, 2);
    result_t slow = {0}, lit = {0}, both = {0};
    int before = server_count("slow." ZONE, "A");
    sg_resolver_req_t *q = sg_resolver_resolve(f.r, "slow." ZONE, 80, on_resolved, &slow);
    sg_resolver_req_t *l = sg_resolver_resolve(f.r, "192.0.2.5", 80, on_resolved, &lit);
    assert_non_null(q);
    assert_non_null(l);
    assert_non_null(sg_resolver_resolve(f.r, "both." ZONE, 80, on_resolved, &both));
    sg_resolver_cancel(q); /* in flight in c-ares */
    sg_resolver_cancel(l); /* answered, waiting for the loop */
    run(&f, &both.calls, 0);
    assert_int_equal(both.status, 0);
    /* the slow answer (300 ms) arrives and is dropped */
    uint64_t t0 = now_ms();
    while (server_count("slow." ZONE, "A") == before && now_ms() - t0 < RUN_LIMIT_MS)
        run(&f, NULL, 20);
    run(&f, NULL, 600);
    assert_int_equal(slow.calls, 0);
    assert_int_equal(lit.calls, 0);
    fx_close(&f);
    assert_int_equal(slow.calls, 0);
}

/* Requests not told at close (in c-ares, or answered and waiting for the
 * loop) get UV_ECANCELED, from the loop, before on_closed; cancelled ones
 * get nothing; no new request is taken. */
static void test_close_cancels_pending(void **state)
{
    fx_t f;
    fx_open(&f, 2000, 2);
    result_t slow = {0}, dead = {0}, lit = {0}, gone = {0}, late = {0};
    assert_non_null(sg_resolver_resolve(f.r, "slow." ZONE, 80, on_resolved, &slow));
    assert_non_null(sg_resolver_resolve(f.r, "dead." ZONE, 80, on_resolved, &dead));
    sg_resolver_req_t *g = sg_resolver_resolve(f.r, "slow." ZONE, 80, on_resolved, &gone);
    assert_non_null(g);
    run(&f, NULL, 20); /* queries on the wire */
    assert_non_null(sg_resolver_resolve(f.r, "192.0.2.6", 80, on_resolved, &lit));
    sg_resolver_close(f.r, on_closed, &f);
    sg_resolver_cancel(g); /* still allowed after close */
    assert_null(sg_resolver_resolve(f.r, "both." ZONE, 80, on_resolved, &late));
    assert_int_equal(slow.calls + dead.calls + lit.calls, 0); /* never inside close */
    f.r = NULL;
    run(&f, &f.closed, 0);
    assert_int_equal(slow.calls, 1);
    assert_int_equal(slow.status, UV_ECANCELED);
    assert_int_equal(dead.calls, 1);
    assert_int_equal(dead.status, UV_ECANCELED);
    assert_int_equal(gone.calls, 0);
    assert_int_equal(late.calls, 0);
    assert_int_equal(lit.calls, 1);
    assert_int_equal(lit.status, UV_ECANCELED);
    assert_true(slow.seq < f.closed_seq && dead.seq < f.closed_seq && lit.seq < f.closed_seq);
    fx_close(&f);
}

/* From inside a callback: cancelling itself is a no-op, a nested resolve
 * works, and a close waits until c-ares returns; the rest then get
 * UV_ECANCELED and a resolve after the close is refused. */
static sg_resolver_req_t *self_req;
static result_t nested_res, after_close_res, other_res;
static sg_resolver_req_t *after_close_req;

static void cancel_self_and_nest(void)
{
    sg_resolver_cancel(self_req);
    assert_non_null(sg_resolver_resolve(current->r, "nested." ZONE, 81, on_resolved, &nested_res));
}

static void close_inside(void)
{
    sg_resolver_close(current->r, on_closed, current);
    after_close_req =
        sg_resolver_resolve(current->r, "both." ZONE, 80, on_resolved, &after_close_res);
}

static void test_callbacks_nest_cancel_and_close(void **state)
{
    fx_t f;
    fx_open(&f, 2000, 2);
    result_t first = {0}, closer = {0};
    memset(&nested_res, 0, sizeof(nested_res));
    memset(&after_close_res, 0, sizeof(after_close_res));
    memset(&other_res, 0, sizeof(other_res));
    first.hook = cancel_self_and_nest;
    self_req = sg_resolver_resolve(f.r, "both." ZONE, 80, on_resolved, &first);
    assert_non_null(self_req);
    run(&f, &first.calls, 0);
    run(&f, &nested_res.calls, 0);
    assert_int_equal(first.calls, 1);
    assert_int_equal(first.status, 0);
    assert_int_equal(nested_res.status, 0);
    assert_true(has_addr(&nested_res, "192.0.2.20", 81));

    closer.hook = close_inside;
    assert_non_null(sg_resolver_resolve(f.r, "v6." ZONE, 80, on_resolved, &closer));
    assert_non_null(sg_resolver_resolve(f.r, "slow." ZONE, 80, on_resolved, &other_res));
    run(&f, &closer.calls, 0);
    assert_int_equal(closer.status, 0);
    assert_null(after_close_req);
    f.r = NULL;
    run(&f, &f.closed, 0);
    assert_int_equal(other_res.calls, 1);
    assert_int_equal(other_res.status, UV_ECANCELED);
    assert_int_equal(after_close_res.calls, 0);
    fx_close(&f);
}

int main(void)
{
    sg_log_set_level(SG_LOG_ERROR);
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_new_rejects_bad_opts),
        cmocka_unit_test(test_a_and_aaaa),
        cmocka_unit_test(test_not_found_and_failures),
        cmocka_unit_test(test_timeout),
        cmocka_unit_test(test_answers_without_query_come_from_loop),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_close_cancels_pending),
        cmocka_unit_test(test_callbacks_nest_cancel_and_close),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
