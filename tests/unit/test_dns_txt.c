/* The DNS source: TXT settings from a table of cases placed against a guard
 * page, then the whole source (c-ares on a libuv loop) against a small UDP
 * responder running on a thread: caching, negative caching, coalescing,
 * cancel, failures, expiry, eviction and close. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"
#include "route/dns.h"
#include "route/dns_internal.h"
#include "route/lookup.h"

#include "guard_page.h"

/* ------------------------------------------------------------------ TXT */

#define HEX64_A "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
#define HEX64_B "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"

typedef struct {
    const char *txt;
    size_t len; /* 0: strlen */
    int rc;
    const char *mask;      /* expected rec->mask (NULL: none) */
    const char *token_hex; /* expected token (NULL: has_token == 0) */
    unsigned max_conn;
} txt_case_t;

static const txt_case_t txt_cases[] = {
    /* valid */
    {"mask_request_host=${PORT}-abc.example.com", 0, 0, "${PORT}-abc.example.com", NULL, 0},
    {"mask_request_host=localhost:${PORT}", 0, 0, "localhost:${PORT}", NULL, 0},
    {"traffic_access_token_sha256=" HEX64_A, 0, 0, NULL, HEX64_A, 0},
    {"traffic_access_token_sha256=0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF",
     0, 0, NULL, HEX64_A, 0},
    {"max_incoming_connections=1", 0, 0, NULL, NULL, 1},
    {"max_incoming_connections=1000000", 0, 0, NULL, NULL, 1000000},
    {"max_incoming_connections=0000042", 0, 0, NULL, NULL, 42},
    /* keys: case-insensitive, spaces around the key ignored */
    {"Traffic_Access_Token_SHA256=" HEX64_A, 0, 0, NULL, HEX64_A, 0},
    {"  max_incoming_connections\t=7", 0, 0, NULL, NULL, 7},
    /* unknown keys and empty strings are ignored */
    {"v=spf1 -all", 0, 0, NULL, NULL, 0},
    {"owner=team-a", 0, 0, NULL, NULL, 0},
    {"max_incoming_connections_x=bad", 0, 0, NULL, NULL, 0},
    {"x_traffic_access_token_sha256=zz", 0, 0, NULL, NULL, 0},
    {"", 0, 0, NULL, NULL, 0},
    {"   ", 0, 0, NULL, NULL, 0},
    {"=", 0, 0, NULL, NULL, 0},
    {"=value", 0, 0, NULL, NULL, 0},
    {"hello world", 0, 0, NULL, NULL, 0},
    /* missing '=' on a known key fails rather than drops the setting */
    {"traffic_access_token_sha256", 0, -1, NULL, NULL, 0},
    {"traffic_access_token_sha256:" HEX64_A, 0, -1, NULL, NULL, 0},
    {"traffic_access_token_sha256 " HEX64_A, 0, -1, NULL, NULL, 0},
    {"MASK_REQUEST_HOST", 0, -1, NULL, NULL, 0},
    /* token: bad hex, wrong length, spaces */
    {"traffic_access_token_sha256=", 0, -1, NULL, NULL, 0},
    {"traffic_access_token_sha256=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdeg",
     0, -1, NULL, NULL, 0},
    {"traffic_access_token_sha256=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde",
     0, -1, NULL, NULL, 0},
    {"traffic_access_token_sha256=" HEX64_A "0", 0, -1, NULL, NULL, 0},
    {"traffic_access_token_sha256=" HEX64_A " ", 0, -1, NULL, NULL, 0},
    {"traffic_access_token_sha256= " HEX64_A, 0, -1, NULL, NULL, 0},
    {"traffic_access_token_sha256=0x23456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
     0, -1, NULL, NULL, 0},
    /* mask: injection and other bad templates */
    {"mask_request_host=evil.com\r\nX-Injected: 1", 0, -1, NULL, NULL, 0},
    {"mask_request_host=evil.com\n", 0, -1, NULL, NULL, 0},
    {"mask_request_host=a b", 0, -1, NULL, NULL, 0},
    {"mask_request_host=", 0, -1, NULL, NULL, 0},
    {"mask_request_host=${HOST}", 0, -1, NULL, NULL, 0},
    {"mask_request_host=h\xc3\xa9.com", 0, -1, NULL, NULL, 0},
    {"mask_request_host=a\0b", 20, -1, NULL, NULL, 0},
    /* limits */
    {"max_incoming_connections=0", 0, -1, NULL, NULL, 0},
    {"max_incoming_connections=1000001", 0, -1, NULL, NULL, 0},
    {"max_incoming_connections=99999999999999999999999999", 0, -1, NULL, NULL, 0},
    {"max_incoming_connections=18446744073709551617", 0, -1, NULL, NULL, 0},
    {"max_incoming_connections=4294967297", 0, -1, NULL, NULL, 0},
    {"max_incoming_connections=-1", 0, -1, NULL, NULL, 0},
    {"max_incoming_connections=+5", 0, -1, NULL, NULL, 0},
    {"max_incoming_connections=5 ", 0, -1, NULL, NULL, 0},
    {"max_incoming_connections=", 0, -1, NULL, NULL, 0},
    {"max_incoming_connections=1e3", 0, -1, NULL, NULL, 0},
};

static sg_sandbox_t *new_record(void)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    ss.ss_family = AF_INET;
    sg_sandbox_t *rec = sg_sandbox_new(SG_SLICE_LIT("abc"), &ss, NULL);
    rec->source = "dns";
    return rec;
}

static void hex_to_bytes(const char *hex, unsigned char out[32])
{
    for (int i = 0; i < 32; i++) {
        unsigned v;
        assert_int_equal(sscanf(hex + 2 * i, "%2x", &v), 1);
        out[i] = (unsigned char)v;
    }
}

static void test_txt_table(void **state)
{
    for (size_t i = 0; i < sizeof(txt_cases) / sizeof(txt_cases[0]); i++) {
        const txt_case_t *c = &txt_cases[i];
        size_t len = c->len ? c->len : strlen(c->txt);
        guarded_t g = guard_copy(c->txt, len);
        sg_sandbox_t *rec = new_record();
        const char *why = NULL;
        int rc = sg_dns_apply_txt(rec, g.data, len, &why);
        if (rc != c->rc)
            fail_msg("case %zu \"%s\": rc %d, want %d (%s)", i, c->txt, rc, c->rc, why);
        if (rc == 0) {
            if (c->mask) {
                assert_non_null(rec->mask);
                assert_string_equal(rec->mask, c->mask);
            } else {
                assert_null(rec->mask);
            }
            assert_int_equal(rec->has_token, c->token_hex != NULL);
            if (c->token_hex) {
                unsigned char want[32];
                hex_to_bytes(c->token_hex, want);
                assert_memory_equal(rec->token_sha256, want, 32);
            }
            assert_int_equal(rec->max_connections, c->max_conn);
        } else {
            assert_non_null(why);
        }
        sg_sandbox_unref(rec);
        guard_free(&g);
    }
}

static int apply(sg_sandbox_t *rec, const char *s)
{
    const char *why = NULL;
    return sg_dns_apply_txt(rec, s, strlen(s), &why);
}

/* Several strings on one record (one TXT RRset): settings add up; a key
 * given twice must agree. */
static void test_txt_sequence(void **state)
{
    sg_sandbox_t *rec = new_record();
    assert_int_equal(apply(rec, "mask_request_host=${PORT}-x.example.com"), 0);
    assert_int_equal(apply(rec, "traffic_access_token_sha256=" HEX64_A), 0);
    assert_int_equal(apply(rec, "max_incoming_connections=10"), 0);
    assert_int_equal(apply(rec, "comment=hello"), 0);
    /* same values again: fine */
    assert_int_equal(apply(rec, "mask_request_host=${PORT}-x.example.com"), 0);
    assert_int_equal(apply(rec, "traffic_access_token_sha256=" HEX64_A), 0);
    assert_int_equal(apply(rec, "max_incoming_connections=10"), 0);
    assert_string_equal(rec->mask, "${PORT}-x.example.com");
    assert_true(rec->has_token);
    assert_int_equal(rec->max_connections, 10);
    /* different values: ambiguous, fail */
    assert_int_equal(apply(rec, "mask_request_host=other.example.com"), -1);
    assert_int_equal(apply(rec, "traffic_access_token_sha256=" HEX64_B), -1);
    assert_int_equal(apply(rec, "max_incoming_connections=11"), -1);
    sg_sandbox_unref(rec);
}

/* ------------------------------------------------------ UDP responder */

#define T_A 1
#define T_TXT 16
#define T_AAAA 28

typedef enum { REC_NORMAL, REC_SERVFAIL, REC_SILENT, REC_REFUSED } rec_mode_t;

typedef struct {
    char name[80]; /* full name, lower case, no trailing dot */
    rec_mode_t mode;
    const char *a; /* dotted quad or NULL */
    const char *aaaa;
    uint32_t ttl;
    const char *txt[4];
} zone_rec_t;

#define MAX_RECS 16

typedef struct {
    int fd;
    int family;
    uint16_t port;
    pthread_t thread;
    atomic_int stop;
    atomic_int mute;        /* drop every query */
    atomic_uint queries[3]; /* A, AAAA, TXT */
    pthread_mutex_t lock;
    zone_rec_t recs[MAX_RECS];
    size_t n_recs;
} responder_t;

static int qindex(unsigned qtype)
{
    return qtype == T_A ? 0 : qtype == T_AAAA ? 1 : qtype == T_TXT ? 2 : -1;
}

static size_t put16(unsigned char *p, unsigned v)
{
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
    return 2;
}

static size_t put32(unsigned char *p, uint32_t v)
{
    put16(p, v >> 16);
    put16(p + 2, v & 0xffff);
    return 4;
}

static size_t put_rr_head(unsigned char *p, unsigned type, uint32_t ttl, unsigned rdlen)
{
    size_t n = 0;
    n += put16(p + n, 0xc00c); /* the question's name */
    n += put16(p + n, type);
    n += put16(p + n, 1);
    n += put32(p + n, ttl);
    n += put16(p + n, rdlen);
    return n;
}

/* Answers one query into out; returns its length, or 0 to stay silent. */
static size_t respond(responder_t *r, const unsigned char *q, size_t qlen, unsigned char *out)
{
    if (qlen < 12 || (q[4] << 8 | q[5]) != 1) return 0;
    char name[256];
    size_t nlen = 0, pos = 12;
    while (pos < qlen && q[pos]) {
        size_t l = q[pos++];
        if (pos + l > qlen || nlen + l + 1 >= sizeof(name)) return 0;
        if (nlen) name[nlen++] = '.';
        for (size_t i = 0; i < l; i++) {
            unsigned char c = q[pos + i];
            name[nlen++] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
        }
        pos += l;
    }
    name[nlen] = '\0';
    if (pos + 5 > qlen) return 0;
    pos++;
    unsigned qtype = (unsigned)(q[pos] << 8 | q[pos + 1]);
    size_t qend = pos + 4;
    int qi = qindex(qtype);
    if (qi >= 0) atomic_fetch_add(&r->queries[qi], 1);
    if (atomic_load(&r->mute)) return 0;

    pthread_mutex_lock(&r->lock);
    const zone_rec_t *rec = NULL;
    for (size_t i = 0; i < r->n_recs; i++)
        if (strcmp(r->recs[i].name, name) == 0) rec = &r->recs[i];
    zone_rec_t copy = {0};
    if (rec) copy = *rec;
    pthread_mutex_unlock(&r->lock);
    if (rec && copy.mode == REC_SILENT) return 0;

    unsigned rcode = !rec                        ? 3 /* NXDOMAIN */
                     : copy.mode == REC_SERVFAIL ? 2
                     : copy.mode == REC_REFUSED  ? 5
                                                 : 0;
    memcpy(out, q, qend);                           /* header and question */
    out[2] = (unsigned char)(0x84 | (q[2] & 0x01)); /* QR, AA, RD copied */
    out[3] = (unsigned char)(0x80 | rcode);         /* RA */
    put16(out + 6, 0);
    put16(out + 8, 0);
    put16(out + 10, 0);
    size_t n = qend;
    unsigned an = 0;
    if (rcode == 0 && qtype == T_A && copy.a) {
        n += put_rr_head(out + n, T_A, copy.ttl, 4);
        if (inet_pton(AF_INET, copy.a, out + n) != 1) abort();
        n += 4;
        an++;
    } else if (rcode == 0 && qtype == T_AAAA && copy.aaaa) {
        n += put_rr_head(out + n, T_AAAA, copy.ttl, 16);
        if (inet_pton(AF_INET6, copy.aaaa, out + n) != 1) abort();
        n += 16;
        an++;
    } else if (rcode == 0 && qtype == T_TXT && copy.txt[0]) {
        /* one RR per string */
        for (int i = 0; i < 4 && copy.txt[i]; i++) {
            size_t l = strlen(copy.txt[i]);
            n += put_rr_head(out + n, T_TXT, copy.ttl, (unsigned)l + 1);
            out[n++] = (unsigned char)l;
            memcpy(out + n, copy.txt[i], l);
            n += l;
            an++;
        }
    }
    put16(out + 6, an);
    return n;
}

static void *responder_main(void *arg)
{
    responder_t *r = arg;
    unsigned char in[512], out[1500];
    while (!atomic_load(&r->stop)) {
        struct pollfd pfd = {.fd = r->fd, .events = POLLIN};
        if (poll(&pfd, 1, 20) <= 0) continue;
        struct sockaddr_storage from;
        socklen_t flen = sizeof(from);
        ssize_t n = recvfrom(r->fd, in, sizeof(in), 0, (struct sockaddr *)&from, &flen);
        if (n <= 0) continue;
        size_t len = respond(r, in, (size_t)n, out);
        if (len) sendto(r->fd, out, len, 0, (struct sockaddr *)&from, flen);
    }
    return NULL;
}

/* Returns -1 when the family cannot be bound here (no IPv6). */
static int responder_start(responder_t *r, int family)
{
    memset(r, 0, sizeof(*r));
    pthread_mutex_init(&r->lock, NULL);
    r->family = family;
    r->fd = socket(family, SOCK_DGRAM, 0);
    assert_true(r->fd >= 0);
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    socklen_t len;
    if (family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
        sin->sin_family = AF_INET;
        sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        len = sizeof(*sin);
    } else {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_addr = in6addr_loopback;
        len = sizeof(*sin6);
    }
    if (bind(r->fd, (struct sockaddr *)&ss, len) != 0) {
        close(r->fd);
        pthread_mutex_destroy(&r->lock);
        return -1;
    }
    assert_int_equal(getsockname(r->fd, (struct sockaddr *)&ss, &len), 0);
    r->port = ntohs(family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
                                      : ((struct sockaddr_in6 *)&ss)->sin6_port);
    assert_int_equal(pthread_create(&r->thread, NULL, responder_main, r), 0);
    return 0;
}

static void responder_stop(responder_t *r)
{
    atomic_store(&r->stop, 1);
    pthread_join(r->thread, NULL);
    close(r->fd);
    pthread_mutex_destroy(&r->lock);
}

/* Adds or replaces the record for "<id>.sb.test". */
static void zone_set(responder_t *r, const char *id, zone_rec_t rec)
{
    snprintf(rec.name, sizeof(rec.name), "%s.sb.test", id);
    pthread_mutex_lock(&r->lock);
    size_t i = 0;
    while (i < r->n_recs && strcmp(r->recs[i].name, rec.name) != 0) i++;
    assert_true(i < MAX_RECS);
    r->recs[i] = rec;
    if (i == r->n_recs) r->n_recs++;
    pthread_mutex_unlock(&r->lock);
}

static unsigned total_queries(responder_t *r, int qi)
{
    return atomic_load(&r->queries[qi]);
}

/* ------------------------------------------------------- source fixture */

typedef struct {
    int done;
    sg_err_t err;
    sg_sandbox_t *sb;
    void (*hook)(sg_lookup_req_t *req); /* runs inside the callback */
} result_t;

typedef struct {
    responder_t dns;
    uv_loop_t loop;
    uv_timer_t deadline;
    int timed_out;
    sg_dns_conf_t conf;
    struct sockaddr_storage server;
    sg_dns_source_t *src;
    sg_lookup_t lookup;
    int closed; /* the test closed the source itself */
} fx_t;

static fx_t *current; /* for hooks */

static void on_deadline(uv_timer_t *t)
{
    fx_t *f = t->data;
    f->timed_out = 1;
}

static void fx_conf(fx_t *f, uint64_t timeout_ms, uint64_t ttl_min, uint64_t ttl_max, uint64_t neg)
{
    memset(&f->server, 0, sizeof(f->server));
    if (f->dns.family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&f->server;
        sin->sin_family = AF_INET;
        sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        sin->sin_port = htons(f->dns.port);
    } else {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&f->server;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_addr = in6addr_loopback;
        sin6->sin6_port = htons(f->dns.port);
    }
    f->conf = (sg_dns_conf_t){.zone = (char *)"sb.test.",
                              .servers = &f->server,
                              .n_servers = 1,
                              .timeout_ms = timeout_ms,
                              .tries = 1,
                              .ttl_min_ms = ttl_min,
                              .ttl_max_ms = ttl_max,
                              .negative_ttl_ms = neg};
}

static void fx_open_source(fx_t *f)
{
    assert_int_equal(sg_dns_source_new(&f->loop, &f->conf, &f->src), 0);
    sg_lookup_init(&f->lookup);
    sg_lookup_add_source(&f->lookup, sg_dns_source_lookup(f->src));
}

static int fx_setup_family(void **state, int family)
{
    fx_t *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    if (responder_start(&f->dns, family) != 0) {
        free(f);
        return -1;
    }
    assert_int_equal(uv_loop_init(&f->loop), 0);
    uv_timer_init(&f->loop, &f->deadline);
    f->deadline.data = f;
    fx_conf(f, 200, 0, 60000, 60000);
    fx_open_source(f);
    current = f;
    *state = f;
    return 0;
}

static int fx_setup(void **state)
{
    return fx_setup_family(state, AF_INET);
}

static int fx_teardown(void **state)
{
    fx_t *f = *state;
    if (!f) return 0;
    if (!f->closed) sg_dns_source_close(f->src);
    uv_close((uv_handle_t *)&f->deadline, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0); /* every handle closed */
    responder_stop(&f->dns);
    free(f);
    current = NULL;
    return 0;
}

static void on_result(sg_lookup_req_t *req, sg_err_t err, sg_sandbox_t *sb)
{
    result_t *r = req->data;
    assert_false(r->done); /* exactly once */
    r->done = 1;
    r->err = err;
    r->sb = sb;
    if (r->hook) r->hook(req);
}

/* Starts a lookup; returns 1 when answered synchronously (res filled). */
static int lookup(fx_t *f, sg_lookup_req_t *req, result_t *res, const char *id)
{
    memset(req, 0, sizeof(*req));
    memset(res, 0, sizeof(*res));
    req->data = res;
    sg_err_t err = SG_ERR_INTERNAL;
    sg_sandbox_t *sb = NULL;
    int now = sg_lookup_start(&f->lookup, req, sg_slice_cstr(id), on_result, &err, &sb);
    if (now) {
        res->done = 1;
        res->err = err;
        res->sb = sb;
    }
    return now;
}

/* Runs the loop until *flag is set (5 s at most). */
static void run_until(fx_t *f, const int *flag)
{
    f->timed_out = 0;
    uv_timer_start(&f->deadline, on_deadline, 5000, 0);
    while (!*flag && !f->timed_out) uv_run(&f->loop, UV_RUN_ONCE);
    uv_timer_stop(&f->deadline);
    assert_false(f->timed_out);
}

/* Runs the loop for ms, letting timers and sockets work. */
static void run_for(fx_t *f, uint64_t ms)
{
    f->timed_out = 0;
    uv_timer_start(&f->deadline, on_deadline, ms, 0);
    while (!f->timed_out) uv_run(&f->loop, UV_RUN_ONCE);
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void release(result_t *r)
{
    if (r->sb) sg_sandbox_unref(r->sb);
    r->sb = NULL;
}

static void assert_v4(const sg_sandbox_t *sb, const char *ip)
{
    assert_int_equal(sb->addr.ss_family, AF_INET);
    char buf[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &((const struct sockaddr_in *)&sb->addr)->sin_addr, buf, sizeof(buf));
    assert_string_equal(buf, ip);
    assert_int_equal(((const struct sockaddr_in *)&sb->addr)->sin_port, 0);
}

/* ------------------------------------------------------------- the tests */

static void test_found_then_cached(void **state)
{
    fx_t *f = *state;
    zone_set(&f->dns, "abc",
             (zone_rec_t){.a = "10.1.2.3",
                          .ttl = 60,
                          .txt = {"mask_request_host=${PORT}-abc.example.com",
                                  "traffic_access_token_sha256=" HEX64_A,
                                  "max_incoming_connections=5", "note=ignored"}});
    sg_lookup_req_t req;
    result_t res;
    assert_int_equal(lookup(f, &req, &res, "abc"), 0);
    run_until(f, &res.done);
    assert_int_equal(res.err, SG_ERR_NONE);
    assert_non_null(res.sb);
    assert_v4(res.sb, "10.1.2.3");
    assert_string_equal(res.sb->source, "dns");
    assert_string_equal(res.sb->mask, "${PORT}-abc.example.com");
    assert_true(res.sb->has_token);
    unsigned char want[32];
    hex_to_bytes(HEX64_A, want);
    assert_memory_equal(res.sb->token_sha256, want, 32);
    assert_int_equal(res.sb->max_connections, 5);
    assert_int_equal(res.sb->id_len, 3);
    assert_string_equal(res.sb->id, "abc");

    /* cache hit: synchronous, same record, no query */
    sg_lookup_req_t req2;
    result_t res2;
    assert_int_equal(lookup(f, &req2, &res2, "abc"), 1);
    assert_int_equal(res2.err, SG_ERR_NONE);
    assert_ptr_equal(res2.sb, res.sb);
    for (int q = 0; q < 3; q++) assert_int_equal(total_queries(&f->dns, q), 1);
    const sg_dns_stats_t *st = sg_dns_source_stats(f->src);
    assert_int_equal(sg_counter_get(&st->queries), 1);
    assert_int_equal(sg_counter_get(&st->cache_hits), 1);
    assert_int_equal(sg_counter_get(&st->failures), 0);
    assert_int_equal(sg_dns_source__cached(f->src), 1);
    release(&res);
    release(&res2);
}

static void test_prefer_a_then_aaaa(void **state)
{
    fx_t *f = *state;
    zone_set(&f->dns, "both", (zone_rec_t){.a = "10.0.0.9", .aaaa = "fd00::9", .ttl = 60});
    zone_set(&f->dns, "six", (zone_rec_t){.aaaa = "fd00::6", .ttl = 60});
    sg_lookup_req_t r1, r2;
    result_t s1, s2;
    assert_int_equal(lookup(f, &r1, &s1, "both"), 0);
    assert_int_equal(lookup(f, &r2, &s2, "six"), 0);
    run_until(f, &s1.done);
    run_until(f, &s2.done);
    assert_int_equal(s1.err, SG_ERR_NONE);
    assert_v4(s1.sb, "10.0.0.9");
    assert_int_equal(s2.err, SG_ERR_NONE);
    assert_int_equal(s2.sb->addr.ss_family, AF_INET6);
    char buf[INET6_ADDRSTRLEN];
    inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&s2.sb->addr)->sin6_addr, buf, sizeof(buf));
    assert_string_equal(buf, "fd00::6");
    assert_null(s2.sb->mask);
    assert_false(s2.sb->has_token);
    release(&s1);
    release(&s2);
}

static void test_nxdomain_negative_cache(void **state)
{
    fx_t *f = *state;
    sg_dns_source_close(f->src);
    run_for(f, 1);
    fx_conf(f, 200, 0, 60000, 500); /* negative_ttl 500 ms */
    fx_open_source(f);
    zone_set(&f->dns, "txtonly", (zone_rec_t){.ttl = 60, .txt = {"owner=x"}});

    sg_lookup_req_t req;
    result_t res;
    assert_int_equal(lookup(f, &req, &res, "missing"), 0);
    run_until(f, &res.done);
    assert_int_equal(res.err, SG_ERR_SANDBOX_NOT_FOUND);
    assert_null(res.sb);
    /* NOERROR without an address counts as absent too */
    assert_int_equal(lookup(f, &req, &res, "txtonly"), 0);
    run_until(f, &res.done);
    assert_int_equal(res.err, SG_ERR_SANDBOX_NOT_FOUND);

    /* negative hits answer at once */
    assert_int_equal(lookup(f, &req, &res, "missing"), 1);
    assert_int_equal(res.err, SG_ERR_SANDBOX_NOT_FOUND);
    assert_int_equal(lookup(f, &req, &res, "txtonly"), 1);
    assert_int_equal(total_queries(&f->dns, 0), 2);
    const sg_dns_stats_t *st = sg_dns_source_stats(f->src);
    assert_int_equal(sg_counter_get(&st->negative_hits), 2);

    /* after negative_ttl, the name is asked again and now exists */
    zone_set(&f->dns, "missing", (zone_rec_t){.a = "10.9.9.9", .ttl = 60});
    sleep_ms(600);
    uv_update_time(&f->loop);
    assert_int_equal(lookup(f, &req, &res, "missing"), 0);
    run_until(f, &res.done);
    assert_int_equal(res.err, SG_ERR_NONE);
    assert_v4(res.sb, "10.9.9.9");
    assert_int_equal(total_queries(&f->dns, 0), 3);
    release(&res);
}

#define N_COALESCE 100

static void test_coalescing(void **state)
{
    fx_t *f = *state;
    zone_set(&f->dns, "hot", (zone_rec_t){.a = "10.0.0.1", .ttl = 60});
    static sg_lookup_req_t reqs[N_COALESCE];
    static result_t res[N_COALESCE];
    for (int i = 0; i < N_COALESCE; i++) assert_int_equal(lookup(f, &reqs[i], &res[i], "hot"), 0);
    /* cancelling removes just that request */
    sg_lookup_cancel(&reqs[10]);
    sg_lookup_cancel(&reqs[0]);
    sg_lookup_cancel(&reqs[N_COALESCE - 1]);
    run_until(f, &res[N_COALESCE - 2].done);
    run_for(f, 20);
    for (int i = 0; i < N_COALESCE; i++) {
        if (i == 0 || i == 10 || i == N_COALESCE - 1) {
            assert_false(res[i].done);
            continue;
        }
        assert_true(res[i].done);
        assert_int_equal(res[i].err, SG_ERR_NONE);
        assert_v4(res[i].sb, "10.0.0.1");
        release(&res[i]);
    }
    for (int q = 0; q < 3; q++) assert_int_equal(total_queries(&f->dns, q), 1);
    const sg_dns_stats_t *st = sg_dns_source_stats(f->src);
    assert_int_equal(sg_counter_get(&st->queries), 1);
    assert_int_equal(sg_counter_get(&st->coalesced), N_COALESCE - 1);
    assert_int_equal(sg_dns_source__waiting(f->src), 0);
}

static void test_silent_server_fails_uncached(void **state)
{
    fx_t *f = *state;
    zone_set(&f->dns, "abc", (zone_rec_t){.a = "10.0.0.1", .ttl = 60});
    atomic_store(&f->dns.mute, 1);
    sg_lookup_req_t reqs[3];
    result_t res[3];
    for (int i = 0; i < 3; i++) assert_int_equal(lookup(f, &reqs[i], &res[i], "abc"), 0);
    for (int i = 0; i < 3; i++) {
        run_until(f, &res[i].done);
        assert_int_equal(res[i].err, SG_ERR_LOOKUP_FAILED);
        assert_null(res[i].sb);
    }
    const sg_dns_stats_t *st = sg_dns_source_stats(f->src);
    assert_int_equal(sg_counter_get(&st->failures), 1);
    assert_int_equal(sg_dns_source__cached(f->src), 0);
    unsigned before = total_queries(&f->dns, 0);

    /* nothing cached: the next request asks again, and the server is back */
    atomic_store(&f->dns.mute, 0);
    assert_int_equal(lookup(f, &reqs[0], &res[0], "abc"), 0);
    run_until(f, &res[0].done);
    assert_int_equal(res[0].err, SG_ERR_NONE);
    assert_int_equal(total_queries(&f->dns, 0), before + 1);
    release(&res[0]);
}

static void test_servfail_refused_fail(void **state)
{
    fx_t *f = *state;
    zone_set(&f->dns, "sf", (zone_rec_t){.mode = REC_SERVFAIL});
    zone_set(&f->dns, "rf", (zone_rec_t){.mode = REC_REFUSED});
    sg_lookup_req_t r1, r2;
    result_t s1, s2;
    assert_int_equal(lookup(f, &r1, &s1, "sf"), 0);
    assert_int_equal(lookup(f, &r2, &s2, "rf"), 0);
    run_until(f, &s1.done);
    run_until(f, &s2.done);
    assert_int_equal(s1.err, SG_ERR_LOOKUP_FAILED);
    assert_int_equal(s2.err, SG_ERR_LOOKUP_FAILED);
    /* not cached */
    assert_int_equal(lookup(f, &r1, &s1, "sf"), 0);
    run_until(f, &s1.done);
    assert_int_equal(s1.err, SG_ERR_LOOKUP_FAILED);
    assert_int_equal(sg_counter_get(&sg_dns_source_stats(f->src)->failures), 3);
}

static void test_bad_txt_fails_closed(void **state)
{
    fx_t *f = *state;
    zone_set(
        &f->dns, "priv",
        (zone_rec_t){.a = "10.0.0.2", .ttl = 60, .txt = {"traffic_access_token_sha256=nothex"}});
    zone_set(&f->dns, "twotok",
             (zone_rec_t){.a = "10.0.0.2",
                          .ttl = 60,
                          .txt = {"traffic_access_token_sha256=" HEX64_A,
                                  "traffic_access_token_sha256=" HEX64_B}});
    sg_lookup_req_t req;
    result_t res;
    assert_int_equal(lookup(f, &req, &res, "priv"), 0);
    run_until(f, &res.done);
    assert_int_equal(res.err, SG_ERR_LOOKUP_FAILED);
    assert_null(res.sb);
    assert_int_equal(lookup(f, &req, &res, "twotok"), 0);
    run_until(f, &res.done);
    assert_int_equal(res.err, SG_ERR_LOOKUP_FAILED);
    assert_int_equal(sg_dns_source__cached(f->src), 0);
    /* fixed in the zone: the next request sees it */
    zone_set(
        &f->dns, "priv",
        (zone_rec_t){.a = "10.0.0.2", .ttl = 60, .txt = {"traffic_access_token_sha256=" HEX64_B}});
    assert_int_equal(lookup(f, &req, &res, "priv"), 0);
    run_until(f, &res.done);
    assert_int_equal(res.err, SG_ERR_NONE);
    assert_true(res.sb->has_token);
    release(&res);
}

static void test_ttl_clamp_and_refresh(void **state)
{
    fx_t *f = *state;
    sg_dns_source_close(f->src);
    run_for(f, 1);
    fx_conf(f, 200, 300, 900, 60000); /* ttl clamped to [300 ms, 900 ms] */
    fx_open_source(f);
    zone_set(&f->dns, "zero", (zone_rec_t){.a = "10.0.0.1", .ttl = 0});
    zone_set(&f->dns, "long", (zone_rec_t){.a = "10.0.0.2", .ttl = 86400});
    sg_lookup_req_t req;
    result_t res, held;
    assert_int_equal(lookup(f, &req, &res, "zero"), 0);
    run_until(f, &res.done);
    held = res; /* keep the first record: a refresh must not disturb it */
    assert_int_equal(lookup(f, &req, &res, "long"), 0);
    run_until(f, &res.done);
    release(&res);
    /* TTL 0 still cached for ttl_min */
    assert_int_equal(lookup(f, &req, &res, "zero"), 1);
    release(&res);
    sleep_ms(400);
    uv_update_time(&f->loop);
    zone_set(&f->dns, "zero", (zone_rec_t){.a = "10.0.0.3", .ttl = 0});
    assert_int_equal(lookup(f, &req, &res, "zero"), 0); /* expired after ttl_min */
    run_until(f, &res.done);
    assert_v4(res.sb, "10.0.0.3");
    assert_v4(held.sb, "10.0.0.1");
    release(&res);
    release(&held);
    assert_int_equal(lookup(f, &req, &res, "long"), 1); /* within ttl_max */
    release(&res);
    sleep_ms(600);
    uv_update_time(&f->loop);
    assert_int_equal(lookup(f, &req, &res, "long"), 0); /* clamped to ttl_max */
    run_until(f, &res.done);
    assert_int_equal(res.err, SG_ERR_NONE);
    release(&res);
}

static void test_eviction_bound(void **state)
{
    fx_t *f = *state;
    sg_dns_source__set_max_entries(f->src, 4);
    const char *ids[] = {"e0", "e1", "e2", "e3", "e4", "e5"};
    for (int i = 0; i < 6; i++) {
        zone_set(&f->dns, ids[i], (zone_rec_t){.a = "10.0.0.1", .ttl = 60});
        sg_lookup_req_t req;
        result_t res;
        assert_int_equal(lookup(f, &req, &res, ids[i]), 0);
        run_until(f, &res.done);
        release(&res);
        assert_true(sg_dns_source__cached(f->src) <= 4);
    }
    /* the newest is still cached; the oldest was evicted */
    sg_lookup_req_t req;
    result_t res;
    assert_int_equal(lookup(f, &req, &res, "e5"), 1);
    release(&res);
    assert_int_equal(lookup(f, &req, &res, "e0"), 0);
    run_until(f, &res.done);
    release(&res);
}

/* When full, expired entries go before live ones, even younger ones. */
static void test_eviction_expired_first(void **state)
{
    fx_t *f = *state;
    sg_dns_source__set_max_entries(f->src, 4);
    const char *ids[] = {"e1", "e0", "e2", "e3", "e4"};
    for (int i = 0; i < 5; i++) {
        /* e0 has TTL 0 (ttl_min is 0 here): answered, cached, already expired */
        zone_set(&f->dns, ids[i], (zone_rec_t){.a = "10.0.0.1", .ttl = i == 1 ? 0 : 60});
        sg_lookup_req_t req;
        result_t res;
        assert_int_equal(lookup(f, &req, &res, ids[i]), 0);
        run_until(f, &res.done);
        release(&res);
    }
    assert_int_equal(sg_dns_source__cached(f->src), 4);
    const char *live[] = {"e1", "e2", "e3", "e4"};
    for (int i = 0; i < 4; i++) {
        sg_lookup_req_t req;
        result_t res;
        assert_int_equal(lookup(f, &req, &res, live[i]), 1);
        release(&res);
    }
}

/* Counters can live in the caller's storage (a worker's stats), which stays
 * readable after the source is gone. */
static void test_external_stats(void **state)
{
    fx_t *f = *state;
    static sg_dns_stats_t mine;
    memset(&mine, 0, sizeof(mine));
    sg_dns_source_set_stats(f->src, &mine);
    assert_ptr_equal(sg_dns_source_stats(f->src), &mine);
    zone_set(&f->dns, "st", (zone_rec_t){.a = "10.0.0.1", .ttl = 60});
    sg_lookup_req_t req;
    result_t res;
    assert_int_equal(lookup(f, &req, &res, "st"), 0);
    run_until(f, &res.done);
    release(&res);
    assert_int_equal(lookup(f, &req, &res, "st"), 1);
    release(&res);
    sg_dns_source_close(f->src);
    f->closed = 1;
    run_for(f, 5);
    assert_int_equal(sg_counter_get(&mine.queries), 1);
    assert_int_equal(sg_counter_get(&mine.cache_hits), 1);
}

/* Thousands of requests wait for one id and most of them cancel, in random
 * order: each cancel is O(1) through the waiter index, the rest are told. */
#define N_HERD 5000

static void test_herd_cancel(void **state)
{
    fx_t *f = *state;
    atomic_store(&f->dns.mute, 1); /* answer after the timeout: FAILED */
    static sg_lookup_req_t reqs[N_HERD];
    static result_t res[N_HERD];
    static int cancelled[N_HERD];
    srand(7);
    for (int i = 0; i < N_HERD; i++) {
        cancelled[i] = 0;
        assert_int_equal(lookup(f, &reqs[i], &res[i], "herd"), 0);
    }
    assert_int_equal(sg_dns_source__waiting(f->src), N_HERD);
    int left = N_HERD;
    for (int n = 0; n < N_HERD * 2 / 3; n++) {
        int i = rand() % N_HERD;
        if (cancelled[i]) continue;
        sg_lookup_cancel(&reqs[i]);
        cancelled[i] = 1;
        left--;
    }
    int last = N_HERD - 1;
    while (cancelled[last]) last--;
    run_until(f, &res[last].done);
    int told = 0;
    for (int i = 0; i < N_HERD; i++) {
        assert_int_equal(res[i].done, !cancelled[i]);
        if (res[i].done) {
            assert_int_equal(res[i].err, SG_ERR_LOOKUP_FAILED);
            told++;
        }
    }
    assert_int_equal(told, left);
    assert_int_equal(total_queries(&f->dns, 0), 1);
    assert_int_equal(sg_dns_source__waiting(f->src), 0);
}

/* The waiter index against a plain array, with random puts and takes. */
static void test_waitmap(void **state)
{
    enum { N = 3000 };
    static sg_lookup_req_t reqs[N];
    static int in[N];
    static size_t idx[N];
    sg_dns_waitmap_t m = {0};
    size_t want;
    assert_int_equal(sg_dns__waitmap_take(&m, &reqs[0], &want), 0);
    srand(11);
    for (int round = 0; round < 200000; round++) {
        int i = rand() % N;
        if (!in[i] || rand() % 3 == 0) {
            idx[i] = (size_t)rand();
            sg_dns__waitmap_put(&m, &reqs[i], idx[i]);
            in[i] = 1;
        } else {
            size_t got = 0;
            assert_int_equal(sg_dns__waitmap_take(&m, &reqs[i], &got), 1);
            assert_int_equal(got, idx[i]);
            in[i] = 0;
            assert_int_equal(sg_dns__waitmap_take(&m, &reqs[i], &got), 0);
        }
    }
    size_t count = 0;
    for (int i = 0; i < N; i++) {
        size_t got = 0;
        assert_int_equal(sg_dns__waitmap_take(&m, &reqs[i], &got), in[i]);
        if (in[i]) assert_int_equal(got, idx[i]), count++;
    }
    assert_int_equal(m.count, 0);
    assert_true(count > 0);
    sg_dns__waitmap_free(&m);
}

static void test_bad_ids_not_asked(void **state)
{
    fx_t *f = *state;
    const char *ids[] = {"a.b", "a\\b", "", "a b",
                         "0123456789012345678901234567890123456789012345678901234567890123"};
    for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++) {
        sg_lookup_req_t req;
        result_t res;
        assert_int_equal(lookup(f, &req, &res, ids[i]), 1);
        assert_int_equal(res.err, SG_ERR_SANDBOX_NOT_FOUND);
    }
    run_for(f, 20);
    assert_int_equal(total_queries(&f->dns, 0), 0);
}

static void test_close_with_pending(void **state)
{
    fx_t *f = *state;
    atomic_store(&f->dns.mute, 1);
    sg_lookup_req_t reqs[3];
    result_t res[3];
    assert_int_equal(lookup(f, &reqs[0], &res[0], "p1"), 0);
    assert_int_equal(lookup(f, &reqs[1], &res[1], "p1"), 0);
    assert_int_equal(lookup(f, &reqs[2], &res[2], "p2"), 0);
    sg_lookup_cancel(&reqs[0]);
    run_for(f, 20); /* queries on the wire */
    sg_dns_source_close(f->src);
    f->closed = 1;
    run_for(f, 300); /* past the query timeout */
    for (int i = 0; i < 3; i++) assert_false(res[i].done);
}

static void close_from_callback(sg_lookup_req_t *req)
{
    sg_dns_source_close(current->src);
    current->closed = 1;
}

static sg_lookup_req_t *cancel_target;

static void cancel_other(sg_lookup_req_t *req)
{
    sg_lookup_cancel(cancel_target);
}

static void test_callback_cancels_or_closes(void **state)
{
    fx_t *f = *state;
    zone_set(&f->dns, "cb", (zone_rec_t){.a = "10.0.0.1", .ttl = 60});
    sg_lookup_req_t reqs[4];
    result_t res[4];
    for (int i = 0; i < 4; i++) assert_int_equal(lookup(f, &reqs[i], &res[i], "cb"), 0);
    /* the first waiter cancels the second (same batch), the third closes
     * the source: the fourth is dropped silently */
    cancel_target = &reqs[1];
    res[0].hook = cancel_other;
    res[2].hook = close_from_callback;
    run_until(f, &res[2].done);
    run_for(f, 20);
    assert_true(res[0].done);
    assert_false(res[1].done);
    assert_true(res[2].done);
    assert_false(res[3].done);
    release(&res[0]);
    release(&res[2]);
}

/* A callback starting a new lookup from inside c-ares (for the same id and
 * for another) works: cache hit at once, and a fresh query. */
static sg_lookup_req_t nested_req[2];
static result_t nested_res[2];

static void start_nested(sg_lookup_req_t *req)
{
    assert_int_equal(lookup(current, &nested_req[0], &nested_res[0], "outer"), 1);
    assert_int_equal(lookup(current, &nested_req[1], &nested_res[1], "inner"), 0);
}

static void test_nested_start(void **state)
{
    fx_t *f = *state;
    zone_set(&f->dns, "outer", (zone_rec_t){.a = "10.0.0.1", .ttl = 60});
    zone_set(&f->dns, "inner", (zone_rec_t){.a = "10.0.0.2", .ttl = 60});
    sg_lookup_req_t req;
    result_t res;
    assert_int_equal(lookup(f, &req, &res, "outer"), 0);
    res.hook = start_nested;
    run_until(f, &res.done);
    run_until(f, &nested_res[1].done);
    assert_int_equal(nested_res[0].err, SG_ERR_NONE);
    assert_v4(nested_res[1].sb, "10.0.0.2");
    release(&res);
    release(&nested_res[0]);
    release(&nested_res[1]);
}

static void test_ipv6_server(void **state)
{
    fx_t *f = NULL;
    if (fx_setup_family((void **)&f, AF_INET6) != 0) skip();
    zone_set(&f->dns, "v6", (zone_rec_t){.a = "10.6.6.6", .ttl = 60});
    sg_lookup_req_t req;
    result_t res;
    assert_int_equal(lookup(f, &req, &res, "v6"), 0);
    run_until(f, &res.done);
    assert_int_equal(res.err, SG_ERR_NONE);
    assert_v4(res.sb, "10.6.6.6");
    release(&res);
    fx_teardown((void **)&f);
}

static void test_new_rejects_bad_conf(void **state)
{
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    struct sockaddr_storage server;
    memset(&server, 0, sizeof(server));
    server.ss_family = AF_INET;
    sg_dns_conf_t ok = {.zone = (char *)"sb.test",
                        .servers = &server,
                        .n_servers = 1,
                        .timeout_ms = 100,
                        .tries = 1};
    sg_dns_source_t *d = NULL;
    sg_dns_conf_t c = ok;
    c.zone = NULL;
    assert_int_equal(sg_dns_source_new(&loop, &c, &d), UV_EINVAL);
    c = ok;
    c.n_servers = 0;
    assert_int_equal(sg_dns_source_new(&loop, &c, &d), UV_EINVAL);
    const char *bad_zones[] = {"", ".", "a..b", ".a", "a b", "a\\.b", "x.."};
    for (size_t i = 0; i < sizeof(bad_zones) / sizeof(bad_zones[0]); i++) {
        c = ok;
        c.zone = (char *)bad_zones[i];
        assert_int_equal(sg_dns_source_new(&loop, &c, &d), UV_EINVAL);
    }
    struct sockaddr_storage unix_server;
    memset(&unix_server, 0, sizeof(unix_server));
    unix_server.ss_family = AF_UNIX;
    c = ok;
    c.servers = &unix_server;
    assert_int_equal(sg_dns_source_new(&loop, &c, &d), UV_EINVAL);
    assert_null(d);
    /* a good one opens and closes cleanly without ever querying */
    assert_int_equal(sg_dns_source_new(&loop, &ok, &d), 0);
    assert_non_null(sg_dns_source_lookup(d));
    assert_string_equal(sg_dns_source_lookup(d)->name, "dns");
    sg_dns_source_close(d);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void)
{
    sg_log_set_level(SG_LOG_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_txt_table),
        cmocka_unit_test(test_txt_sequence),
        cmocka_unit_test(test_new_rejects_bad_conf),
        cmocka_unit_test_setup_teardown(test_found_then_cached, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_prefer_a_then_aaaa, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_nxdomain_negative_cache, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_coalescing, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_silent_server_fails_uncached, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_servfail_refused_fail, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_bad_txt_fails_closed, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_ttl_clamp_and_refresh, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_eviction_bound, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_eviction_expired_first, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_external_stats, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_herd_cancel, fx_setup, fx_teardown),
        cmocka_unit_test(test_waitmap),
        cmocka_unit_test_setup_teardown(test_bad_ids_not_asked, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_close_with_pending, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_callback_cancels_or_closes, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_nested_start, fx_setup, fx_teardown),
        cmocka_unit_test(test_ipv6_server),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
