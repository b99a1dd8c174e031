/* Head lookup helpers and the request/response head rewrite. Each rewrite
 * case compares the complete output head byte for byte. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "http/head.h"
#include "http/rewrite.h"

#define MAX_HEADERS 16

typedef struct {
    const char *name, *value;
} kv_t;

static size_t to_headers(const kv_t *kv, sg_header_t *out)
{
    size_t n = 0;
    for (; kv[n].name; n++) {
        assert_true(n < MAX_HEADERS);
        out[n].name = sg_slice_cstr(kv[n].name);
        out[n].value = sg_slice_cstr(kv[n].value);
    }
    return n;
}

static void assert_output(const sg_strbuf_t *out, const char *want, const char *label)
{
    size_t wl = strlen(want);
    if (out->len != wl || memcmp(out->base, want, wl) != 0)
        print_error("%s:\n--- got ---\n%.*s--- want ---\n%s-----------\n", label, (int)out->len,
                    out->base, want);
    assert_int_equal(out->len, wl);
    assert_memory_equal(out->base, want, wl);
}

/* ---- head.h ---- */

static void test_find_header(void **state)
{
    const kv_t kv[] = {
        {"Host", "a"}, {"X-Foo", "1"}, {"x-foo", "2"}, {"Content-Length", "3"}, {NULL, NULL}};
    sg_header_t hs[MAX_HEADERS];
    size_t n = to_headers(kv, hs);

    const sg_header_t *h = sg_http_find_header(hs, n, SG_SLICE_LIT("X-FOO"));
    assert_ptr_equal(h, &hs[1]); /* first of duplicates */
    assert_ptr_equal(sg_http_find_header(hs, n, SG_SLICE_LIT("host")), &hs[0]);
    assert_ptr_equal(sg_http_find_header(hs, n, SG_SLICE_LIT("content-length")), &hs[3]);
    assert_null(sg_http_find_header(hs, n, SG_SLICE_LIT("Content-Lengt")));
    assert_null(sg_http_find_header(hs, n, SG_SLICE_LIT("Content-Length ")));
    assert_null(sg_http_find_header(hs, n, SG_SLICE_LIT("")));
    assert_null(sg_http_find_header(hs, 0, SG_SLICE_LIT("Host")));
    assert_null(sg_http_find_header(NULL, 0, SG_SLICE_LIT("Host")));
}

typedef struct {
    const char *value;
    const char *token;
    int want;
} token_case_t;

static const token_case_t token_cases[] = {
    {"close", "close", 1},
    {"Close", "close", 1},
    {"close", "CLOSE", 1},
    {"  close  ", "close", 1},
    {"\tclose\t", "close", 1},
    {"keep-alive, Upgrade", "upgrade", 1},
    {"keep-alive,Upgrade", "upgrade", 1},
    {"keep-alive , upgrade ,x", "upgrade", 1},
    {"keep-alive, Upgrade", "keep-alive", 1},
    {"a,,b", "b", 1},
    {",,close,,", "close", 1},
    {"upgrade-insecure", "upgrade", 0},
    {"xupgrade", "upgrade", 0},
    {"upgrade2", "upgrade", 0},
    {"clo se", "close", 0},
    {"close;q=1", "close", 0},
    {"\"close\"", "close", 0},
    {"", "close", 0},
    {",", "close", 0},
    {"a,,b", "", 0},
    {"", "", 0},
    {" , ", "", 0},
};

static void test_value_has_token(void **state)
{
    for (size_t i = 0; i < sizeof(token_cases) / sizeof(token_cases[0]); i++) {
        const token_case_t *c = &token_cases[i];
        int got = sg_http_value_has_token(sg_slice_cstr(c->value), sg_slice_cstr(c->token));
        if (got != c->want)
            print_error("case %zu: \"%s\" has \"%s\": got %d\n", i, c->value, c->token, got);
        assert_int_equal(got, c->want);
    }
    assert_int_equal(sg_http_value_has_token(sg_slice(NULL, 0), SG_SLICE_LIT("x")), 0);
}

/* ---- request rewrite ---- */

typedef struct {
    const char *label;
    const char *method, *target;
    int minor;
    kv_t headers[MAX_HEADERS];
    const char *host, *original_host, *client, *proto, *strip; /* NULL: unset */
    int upgrade;
    const char *want;
} req_case_t;

static const req_case_t req_cases[] = {
    {.label = "plain pass-through, forwarded headers appended",
     .method = "GET",
     .target = "/path?q=1&r=%20",
     .minor = 1,
     .headers = {{"Host", "3000-abc.e2b.app"}, {"User-Agent", "curl/8.0"}, {"Accept", "*/*"}},
     .client = "10.0.0.1",
     .proto = "https",
     .want = "GET /path?q=1&r=%20 HTTP/1.1\r\n"
             "Host: 3000-abc.e2b.app\r\n"
             "User-Agent: curl/8.0\r\n"
             "Accept: */*\r\n"
             "X-Forwarded-For: 10.0.0.1\r\n"
             "X-Forwarded-Proto: https\r\n"
             "\r\n"},
    {.label = "mask replaces Host in place and adds X-Forwarded-Host",
     .method = "POST",
     .target = "/api",
     .minor = 1,
     .headers = {{"Accept", "*/*"}, {"host", "3000-abc.e2b.app"}, {"Content-Length", "5"}},
     .host = "localhost:3000",
     .original_host = "3000-abc.e2b.app",
     .client = "10.0.0.1",
     .proto = "http",
     .want = "POST /api HTTP/1.1\r\n"
             "Accept: */*\r\n"
             "host: localhost:3000\r\n"
             "Content-Length: 5\r\n"
             "X-Forwarded-For: 10.0.0.1\r\n"
             "X-Forwarded-Host: 3000-abc.e2b.app\r\n"
             "X-Forwarded-Proto: http\r\n"
             "\r\n"},
    {.label = "hop-by-hop and Connection-listed headers removed",
     .method = "GET",
     .target = "/",
     .minor = 1,
     .headers = {{"Host", "h"},
                 {"Connection", "close, X-Foo"},
                 {"X-Foo", "secret"},
                 {"Keep-Alive", "timeout=5"},
                 {"x-foo", "secret2"},
                 {"Proxy-Connection", "keep-alive"},
                 {"TE", "trailers"},
                 {"Upgrade", "websocket"},
                 {"connection", "x-bar"},
                 {"X-Bar", "b"},
                 {"X-Baz", "kept"}},
     .client = "",
     .proto = "",
     .want = "GET / HTTP/1.1\r\n"
             "Host: h\r\n"
             "X-Baz: kept\r\n"
             "\r\n"},
    {.label = "Connection may not remove framing or Host (smuggling)",
     .method = "POST",
     .target = "/",
     .minor = 1,
     .headers = {{"Host", "h"},
                 {"Connection", "Content-Length, Transfer-Encoding, Host, close"},
                 {"Transfer-Encoding", "chunked"},
                 {"Content-Length", "10"}},
     .want = "POST / HTTP/1.1\r\n"
             "Host: h\r\n"
             "Transfer-Encoding: chunked\r\n"
             "Content-Length: 10\r\n"
             "\r\n"},
    {.label = "upgrade keeps Upgrade even though Connection lists it",
     .method = "GET",
     .target = "/ws",
     .minor = 1,
     .headers = {{"Host", "h"},
                 {"Connection", "keep-alive, Upgrade"},
                 {"Upgrade", "websocket"},
                 {"Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="},
                 {"Sec-WebSocket-Version", "13"}},
     .client = "192.0.2.1",
     .proto = "https",
     .upgrade = 1,
     .want = "GET /ws HTTP/1.1\r\n"
             "Host: h\r\n"
             "Upgrade: websocket\r\n"
             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
             "Sec-WebSocket-Version: 13\r\n"
             "X-Forwarded-For: 192.0.2.1\r\n"
             "X-Forwarded-Proto: https\r\n"
             "Connection: upgrade\r\n"
             "\r\n"},
    {.label = "X-Forwarded-For folded into the first, in order, client last",
     .method = "GET",
     .target = "/",
     .minor = 1,
     .headers = {{"x-forwarded-for", "1.1.1.1"},
                 {"Host", "h"},
                 {"X-Forwarded-For", "2.2.2.2, 3.3.3.3"},
                 {"X-Forwarded-For", ""},
                 {"Accept", "*/*"}},
     .client = "10.0.0.1",
     .want = "GET / HTTP/1.1\r\n"
             "x-forwarded-for: 1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.1\r\n"
             "Host: h\r\n"
             "Accept: */*\r\n"
             "\r\n"},
    {.label = "X-Forwarded-For kept when there is no client address",
     .method = "GET",
     .target = "/",
     .minor = 1,
     .headers = {{"Host", "h"}, {"X-Forwarded-For", "1.1.1.1"}},
     .want = "GET / HTTP/1.1\r\n"
             "Host: h\r\n"
             "X-Forwarded-For: 1.1.1.1\r\n"
             "\r\n"},
    {.label = "empty X-Forwarded-For and no client: no header at all",
     .method = "GET",
     .target = "/",
     .minor = 1,
     .headers = {{"Host", "h"}, {"X-Forwarded-For", ""}},
     .want = "GET / HTTP/1.1\r\n"
             "Host: h\r\n"
             "\r\n"},
    {.label = "client X-Forwarded-Host/Proto cannot be spoofed",
     .method = "GET",
     .target = "/",
     .minor = 1,
     .headers = {{"Host", "3000-abc.e2b.app"},
                 {"X-Forwarded-Host", "evil.example"},
                 {"x-forwarded-proto", "https"},
                 {"X-Forwarded-Port", "443"}},
     .host = "localhost",
     .original_host = "3000-abc.e2b.app",
     .client = "10.0.0.1",
     .proto = "http",
     .want = "GET / HTTP/1.1\r\n"
             "Host: localhost\r\n"
             "X-Forwarded-Port: 443\r\n"
             "X-Forwarded-For: 10.0.0.1\r\n"
             "X-Forwarded-Host: 3000-abc.e2b.app\r\n"
             "X-Forwarded-Proto: http\r\n"
             "\r\n"},
    {.label = "no mask: client X-Forwarded-Host dropped, none added",
     .method = "GET",
     .target = "/",
     .minor = 1,
     .headers = {{"Host", "h"}, {"X-Forwarded-Host", "evil"}},
     .original_host = "h",
     .want = "GET / HTTP/1.1\r\n"
             "Host: h\r\n"
             "\r\n"},
    {.label = "access token header stripped, any case, every copy",
     .method = "GET",
     .target = "/",
     .minor = 1,
     .headers = {{"Host", "h"},
                 {"E2b-Traffic-Access-Token", "t1"},
                 {"Cookie", "a=b"},
                 {"e2b-traffic-access-token", "t2"}},
     .strip = "E2B-Traffic-Access-Token",
     .want = "GET / HTTP/1.1\r\n"
             "Host: h\r\n"
             "Cookie: a=b\r\n"
             "\r\n"},
    {.label = "HTTP/1.0 without Host still gets the mask",
     .method = "GET",
     .target = "/",
     .minor = 0,
     .headers = {{"Accept", "*/*"}},
     .host = "localhost:8080",
     .original_host = "",
     .want = "GET / HTTP/1.0\r\n"
             "Accept: */*\r\n"
             "Host: localhost:8080\r\n"
             "\r\n"},
    {.label = "duplicate Host with mask: exactly one Host reaches the sandbox",
     .method = "GET",
     .target = "/",
     .minor = 1,
     .headers = {{"Host", "3000-abc.e2b.app"}, {"X-A", "1"}, {"HOST", "evil"}},
     .host = "localhost",
     .original_host = "3000-abc.e2b.app",
     .want = "GET / HTTP/1.1\r\n"
             "Host: localhost\r\n"
             "X-A: 1\r\n"
             "X-Forwarded-Host: 3000-abc.e2b.app\r\n"
             "\r\n"},
    {.label = "Connection listing X-Forwarded-For drops the client's, ours is fresh",
     .method = "GET",
     .target = "/",
     .minor = 1,
     .headers = {{"Host", "h"}, {"X-Forwarded-For", "6.6.6.6"}, {"Connection", "X-Forwarded-For"}},
     .client = "10.0.0.1",
     .want = "GET / HTTP/1.1\r\n"
             "Host: h\r\n"
             "X-Forwarded-For: 10.0.0.1\r\n"
             "\r\n"},
    {.label = "raw target, method and odd-but-legal values pass unchanged",
     .method = "OPTIONS",
     .target = "http://3000-abc.e2b.app/a%2Fb?x=\"y\"#",
     .minor = 1,
     .headers = {{"Host", "3000-abc.e2b.app"},
                 {"X-Empty", ""},
                 {"X-Utf8", "caf\xc3\xa9"},
                 {"x-MiXeD", "V a L"}},
     .strip = "",
     .want = "OPTIONS http://3000-abc.e2b.app/a%2Fb?x=\"y\"# HTTP/1.1\r\n"
             "Host: 3000-abc.e2b.app\r\n"
             "X-Empty: \r\n"
             "X-Utf8: caf\xc3\xa9\r\n"
             "x-MiXeD: V a L\r\n"
             "\r\n"},
    {.label = "no headers at all",
     .method = "GET",
     .target = "*",
     .minor = 1,
     .want = "GET * HTTP/1.1\r\n"
             "\r\n"},
};

static sg_slice_t opt(const char *s)
{
    return s ? sg_slice_cstr(s) : sg_slice(NULL, 0);
}

static void test_rewrite_request_table(void **state)
{
    for (size_t i = 0; i < sizeof(req_cases) / sizeof(req_cases[0]); i++) {
        const req_case_t *c = &req_cases[i];
        sg_header_t hs[MAX_HEADERS];
        sg_http_request_t req = {
            .method = sg_slice_cstr(c->method),
            .target = sg_slice_cstr(c->target),
            .minor_version = c->minor,
            .headers = hs,
            .n_headers = to_headers(c->headers, hs),
        };
        sg_rewrite_request_params_t p = {
            .host = opt(c->host),
            .original_host = opt(c->original_host),
            .client_addr = opt(c->client),
            .proto = opt(c->proto),
            .upgrade = c->upgrade,
            .strip_header = opt(c->strip),
        };
        sg_strbuf_t out = {0};
        sg_strbuf_append_cstr(&out, "PREFIX"); /* output is appended */
        sg_http_rewrite_request(&req, &p, &out);
        assert_true(out.len >= 6);
        assert_memory_equal(out.base, "PREFIX", 6);
        memmove(out.base, out.base + 6, out.len - 6);
        out.len -= 6;
        assert_output(&out, c->want, c->label);
        sg_strbuf_free(&out);
    }
}

/* ---- response rewrite ---- */

typedef struct {
    const char *label;
    const char *status_line;
    int status;
    kv_t headers[MAX_HEADERS];
    int keep_alive, minor;
    const char *want;
} res_case_t;

static const res_case_t res_cases[] = {
    {.label = "keep-alive HTTP/1.1 client: no Connection added",
     .status_line = "HTTP/1.1 200 OK",
     .status = 200,
     .headers = {{"Content-Type", "text/plain"},
                 {"Connection", "keep-alive"},
                 {"Keep-Alive", "timeout=5, max=100"},
                 {"Content-Length", "5"}},
     .keep_alive = 1,
     .minor = 1,
     .want = "HTTP/1.1 200 OK\r\n"
             "Content-Type: text/plain\r\n"
             "Content-Length: 5\r\n"
             "\r\n"},
    {.label = "client closing",
     .status_line = "HTTP/1.1 404 Not Found",
     .status = 404,
     .headers = {{"Content-Length", "0"}},
     .keep_alive = 0,
     .minor = 1,
     .want = "HTTP/1.1 404 Not Found\r\n"
             "Content-Length: 0\r\n"
             "Connection: close\r\n"
             "\r\n"},
    {.label = "HTTP/1.0 client kept alive",
     .status_line = "HTTP/1.1 200 OK",
     .status = 200,
     .headers = {{"Content-Length", "2"}, {"Connection", "close"}},
     .keep_alive = 1,
     .minor = 0,
     .want = "HTTP/1.1 200 OK\r\n"
             "Content-Length: 2\r\n"
             "Connection: keep-alive\r\n"
             "\r\n"},
    {.label = "HTTP/1.0 client closing",
     .status_line = "HTTP/1.0 200 OK",
     .status = 200,
     .headers = {{"Content-Length", "2"}},
     .keep_alive = 0,
     .minor = 0,
     .want = "HTTP/1.0 200 OK\r\n"
             "Content-Length: 2\r\n"
             "Connection: close\r\n"
             "\r\n"},
    {.label = "101 keeps Upgrade and says upgrade, whatever keep-alive says",
     .status_line = "HTTP/1.1 101 Switching Protocols",
     .status = 101,
     .headers = {{"Upgrade", "websocket"},
                 {"Connection", "Upgrade"},
                 {"Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="}},
     .keep_alive = 0,
     .minor = 1,
     .want = "HTTP/1.1 101 Switching Protocols\r\n"
             "Upgrade: websocket\r\n"
             "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
             "Connection: upgrade\r\n"
             "\r\n"},
    {.label = "Upgrade advertised outside 101 is hop-by-hop",
     .status_line = "HTTP/1.1 200 OK",
     .status = 200,
     .headers = {{"Upgrade", "h2c"}, {"Connection", "Upgrade"}, {"Content-Length", "0"}},
     .keep_alive = 1,
     .minor = 1,
     .want = "HTTP/1.1 200 OK\r\n"
             "Content-Length: 0\r\n"
             "\r\n"},
    {.label = "Connection-listed names removed, framing kept",
     .status_line = "HTTP/1.1 200 OK",
     .status = 200,
     .headers = {{"Connection", "X-Secret, Transfer-Encoding, content-length"},
                 {"X-Secret", "s"},
                 {"Transfer-Encoding", "chunked"},
                 {"TE", "trailers"},
                 {"Proxy-Connection", "close"},
                 {"Set-Cookie", "a=b"},
                 {"Set-Cookie", "c=d"}},
     .keep_alive = 1,
     .minor = 1,
     .want = "HTTP/1.1 200 OK\r\n"
             "Transfer-Encoding: chunked\r\n"
             "Set-Cookie: a=b\r\n"
             "Set-Cookie: c=d\r\n"
             "\r\n"},
    {.label = "X-Forwarded-* in responses are not ours to touch",
     .status_line = "HTTP/1.1 204 No Content",
     .status = 204,
     .headers = {{"X-Forwarded-Host", "x"}, {"X-Forwarded-For", "y"}},
     .keep_alive = 1,
     .minor = 1,
     .want = "HTTP/1.1 204 No Content\r\n"
             "X-Forwarded-Host: x\r\n"
             "X-Forwarded-For: y\r\n"
             "\r\n"},
};

static void test_rewrite_response_table(void **state)
{
    for (size_t i = 0; i < sizeof(res_cases) / sizeof(res_cases[0]); i++) {
        const res_case_t *c = &res_cases[i];
        sg_header_t hs[MAX_HEADERS];
        sg_http_response_t res = {
            .status = c->status,
            .minor_version = 1,
            .status_line = sg_slice_cstr(c->status_line),
            .headers = hs,
            .n_headers = to_headers(c->headers, hs),
        };
        sg_strbuf_t out = {0};
        sg_http_rewrite_response(&res, c->keep_alive, c->minor, &out);
        assert_output(&out, c->want, c->label);
        sg_strbuf_free(&out);
    }
}

int main(void)
{
    const struct CMUnitTest head_tests[] = {
        cmocka_unit_test(test_find_header),
        cmocka_unit_test(test_value_has_token),
    };
    const struct CMUnitTest rewrite_tests[] = {
        cmocka_unit_test(test_rewrite_request_table),
        cmocka_unit_test(test_rewrite_response_table),
    };
    int failed = cmocka_run_group_tests_name("http/head", head_tests, NULL, NULL);
    failed += cmocka_run_group_tests_name("http/rewrite", rewrite_tests, NULL, NULL);
    return failed;
}
