/* Error pages: the exact E2B JSON shapes, HTML escaping, the response head,
 * and the browser-navigation test. JSON bodies are parsed back with jansson. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "http/errpage.h"

/* A rendered response split into head and body. */
typedef struct {
    sg_strbuf_t raw;
    const char *head; /* NUL-terminated copy of the head (with final CRLFCRLF) */
    char head_buf[2048];
    const char *body;
    size_t body_len;
} page_t;

static void render(page_t *p, const sg_errpage_t *e, int html, int keep_alive, int head_only)
{
    memset(p, 0, sizeof(*p));
    sg_errpage_render(&p->raw, e, html, keep_alive, head_only);
    assert_non_null(p->raw.base);
    const char *end = memmem(p->raw.base, p->raw.len, "\r\n\r\n", 4);
    assert_non_null(end);
    size_t head_len = (size_t)(end - p->raw.base) + 4;
    assert_true(head_len < sizeof(p->head_buf));
    memcpy(p->head_buf, p->raw.base, head_len);
    p->head_buf[head_len] = '\0';
    p->head = p->head_buf;
    p->body = p->raw.base + head_len;
    p->body_len = p->raw.len - head_len;
}

static void page_free(page_t *p)
{
    sg_strbuf_free(&p->raw);
}

/* Value of header `name` in the head, or NULL. Names here are exact. */
static const char *header_value(const page_t *p, const char *name, char *buf, size_t cap)
{
    char needle[128];
    snprintf(needle, sizeof(needle), "\r\n%s: ", name);
    const char *at = strstr(p->head, needle);
    if (!at) return NULL;
    at += strlen(needle);
    const char *eol = strstr(at, "\r\n");
    size_t n = (size_t)(eol - at);
    assert_true(n < cap);
    memcpy(buf, at, n);
    buf[n] = '\0';
    return buf;
}

static size_t content_length(const page_t *p)
{
    char buf[32];
    assert_non_null(header_value(p, "Content-Length", buf, sizeof(buf)));
    return (size_t)strtoul(buf, NULL, 10);
}

static void assert_body(const page_t *p, const char *want)
{
    if (p->body_len != strlen(want) || memcmp(p->body, want, p->body_len) != 0)
        print_error("got body: %.*s\nwant:     %s\n", (int)p->body_len, p->body, want);
    assert_int_equal(p->body_len, strlen(want));
    assert_memory_equal(p->body, want, p->body_len);
}

static json_t *parse_body(const page_t *p)
{
    json_error_t jerr;
    json_t *j = json_loadb(p->body, p->body_len, JSON_ALLOW_NUL, &jerr);
    if (!j) print_error("JSON parse error: %s\n", jerr.text);
    assert_non_null(j);
    assert_true(json_is_object(j));
    return j;
}

/* ---- exact E2B shapes ---- */

typedef struct {
    sg_errpage_t e;
    const char *head;
    const char *body;
} exact_case_t;

static void test_json_exact(void **state)
{
    const exact_case_t cases[] = {
        {{SG_ERR_SANDBOX_NOT_FOUND, SG_SLICE_LIT("i0v2nq0pbr5pftn5s1j9x"), 0, NULL},
         "HTTP/1.1 502 Bad Gateway\r\n"
         "Content-Type: application/json\r\n"
         "Content-Length: 86\r\n"
         "Cache-Control: no-store\r\n"
         "X-Sandgate-Error: sandbox_not_found\r\n"
         "\r\n",
         "{\"sandboxId\":\"i0v2nq0pbr5pftn5s1j9x\",\"message\":\"The sandbox was not "
         "found\",\"code\":502}"},
        {{SG_ERR_PORT_NOT_OPEN, SG_SLICE_LIT("abc"), 3000, NULL},
         "HTTP/1.1 502 Bad Gateway\r\n"
         "Content-Type: application/json\r\n"
         "Content-Length: 98\r\n"
         "Cache-Control: no-store\r\n"
         "X-Sandgate-Error: port_not_open\r\n"
         "\r\n",
         "{\"sandboxId\":\"abc\",\"message\":\"The sandbox is running but port is not "
         "open\",\"port\":3000,\"code\":502}"},
        {{SG_ERR_HOST_UNKNOWN_DOMAIN, {NULL, 0}, 0, NULL},
         "HTTP/1.1 421 Misdirected Request\r\n"
         "Content-Type: application/json\r\n"
         "Content-Length: 63\r\n"
         "Cache-Control: no-store\r\n"
         "X-Sandgate-Error: host_unknown_domain\r\n"
         "\r\n",
         "{\"message\":\"Host is not under a domain served here\",\"code\":421}"},
        {{SG_ERR_HOST_MALFORMED, {NULL, 0}, 0, "port must be 1..65535"},
         "HTTP/1.1 400 Bad Request\r\n"
         "Content-Type: application/json\r\n"
         "Content-Length: 70\r\n"
         "Cache-Control: no-store\r\n"
         "X-Sandgate-Error: host_malformed\r\n"
         "\r\n",
         "{\"message\":\"Malformed sandbox host: port must be 1..65535\",\"code\":400}"},
        /* an empty detail adds nothing */
        {{SG_ERR_UPSTREAM_HEAD_TIMEOUT, SG_SLICE_LIT("x1"), 0, ""},
         "HTTP/1.1 504 Gateway Timeout\r\n"
         "Content-Type: application/json\r\n"
         "Content-Length: 76\r\n"
         "Cache-Control: no-store\r\n"
         "X-Sandgate-Error: upstream_head_timeout\r\n"
         "\r\n",
         "{\"sandboxId\":\"x1\",\"message\":\"The sandbox did not answer in time\",\"code\":504}"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        page_t p;
        render(&p, &cases[i].e, 0, 1, 0);
        assert_string_equal(p.head, cases[i].head);
        assert_body(&p, cases[i].body);
        assert_int_equal(content_length(&p), p.body_len);
        page_free(&p);
    }
}

/* ---- every error in the table ---- */

static const struct {
    sg_err_t err;
    int status;
    const char *reason;
} status_rows[] = {
    {SG_ERR_BAD_REQUEST, 400, "Bad Request"},
    {SG_ERR_HOST_MISSING, 400, "Bad Request"},
    {SG_ERR_HOST_MALFORMED, 400, "Bad Request"},
    {SG_ERR_HOST_CONFLICT, 400, "Bad Request"},
    {SG_ERR_HOST_UNKNOWN_DOMAIN, 421, "Misdirected Request"},
    {SG_ERR_MISDIRECTED, 421, "Misdirected Request"},
    {SG_ERR_REQUEST_TIMEOUT, 408, "Request Timeout"},
    {SG_ERR_HEADERS_TOO_LARGE, 431, "Request Header Fields Too Large"},
    {SG_ERR_URI_TOO_LONG, 414, "URI Too Long"},
    {SG_ERR_TOKEN_MISSING, 403, "Forbidden"},
    {SG_ERR_TOKEN_INVALID, 403, "Forbidden"},
    {SG_ERR_TOO_MANY_CONNECTIONS, 429, "Too Many Requests"},
    {SG_ERR_SANDBOX_NOT_FOUND, 502, "Bad Gateway"},
    {SG_ERR_PORT_NOT_OPEN, 502, "Bad Gateway"},
    {SG_ERR_UPSTREAM_CONNECT_TIMEOUT, 504, "Gateway Timeout"},
    {SG_ERR_UPSTREAM_HEAD_TIMEOUT, 504, "Gateway Timeout"},
    {SG_ERR_UPSTREAM_BAD_RESPONSE, 502, "Bad Gateway"},
    {SG_ERR_UPSTREAM_CLOSED, 502, "Bad Gateway"},
    {SG_ERR_UPSTREAM_TRUNCATED, 502, "Bad Gateway"},
    {SG_ERR_CLIENT_CLOSED, 499, "Client Closed Request"},
    {SG_ERR_LOOKUP_FAILED, 503, "Service Unavailable"},
    {SG_ERR_INTERNAL, 500, "Internal Server Error"},
    /* rendering "no error" is a caller bug, reported as one */
    {SG_ERR_NONE, 500, "Internal Server Error"},
};

static void test_every_error(void **state)
{
    /* the table above covers the whole enum */
    assert_int_equal(sizeof(status_rows) / sizeof(status_rows[0]), SG_ERR__COUNT);
    for (size_t i = 0; i < SG_ERR__COUNT; i++) {
        sg_err_t err = status_rows[i].err;
        sg_err_t shown = err == SG_ERR_NONE ? SG_ERR_INTERNAL : err;
        for (int html = 0; html <= 1; html++) {
            sg_errpage_t e = {err, SG_SLICE_LIT("sbx"), 0, NULL};
            page_t p;
            render(&p, &e, html, 1, 0);
            char line[128], buf[128];
            snprintf(line, sizeof(line), "HTTP/1.1 %d %s\r\n", status_rows[i].status,
                     status_rows[i].reason);
            assert_true(strncmp(p.head, line, strlen(line)) == 0);
            assert_string_equal(header_value(&p, "X-Sandgate-Error", buf, sizeof(buf)),
                                sg_err_name(shown));
            assert_string_equal(header_value(&p, "Content-Type", buf, sizeof(buf)),
                                html ? "text/html; charset=utf-8" : "application/json");
            assert_string_equal(header_value(&p, "Cache-Control", buf, sizeof(buf)), "no-store");
            assert_null(header_value(&p, "Connection", buf, sizeof(buf)));
            assert_int_equal(content_length(&p), p.body_len);
            if (!html) {
                json_t *j = parse_body(&p);
                assert_int_equal(json_integer_value(json_object_get(j, "code")),
                                 status_rows[i].status);
                assert_string_equal(json_string_value(json_object_get(j, "message")),
                                    sg_err_message(shown));
                assert_string_equal(json_string_value(json_object_get(j, "sandboxId")), "sbx");
                assert_null(json_object_get(j, "port"));
                json_decref(j);
            } else {
                assert_non_null(memmem(p.body, p.body_len, line + 9, strlen(line) - 11));
            }
            page_free(&p);
        }
    }
}

/* ---- escaping ---- */

static void test_json_escaping(void **state)
{
    const char detail[] = "bad \"quote\" \\ back\nline\r\t</script>\x01 caf\xc3\xa9";
    const char id[] = "a\"b\\c\0d";
    sg_errpage_t e = {SG_ERR_BAD_REQUEST, sg_slice(id, sizeof(id) - 1), 0, detail};
    page_t p;
    render(&p, &e, 0, 1, 0);
    /* one line of JSON: no raw control bytes survive */
    for (size_t i = 0; i < p.body_len; i++) assert_true((unsigned char)p.body[i] >= 0x20);
    json_t *j = parse_body(&p);
    json_t *sid = json_object_get(j, "sandboxId");
    assert_int_equal(json_string_length(sid), sizeof(id) - 1);
    assert_memory_equal(json_string_value(sid), id, sizeof(id) - 1);
    char want[256];
    snprintf(want, sizeof(want), "%s: %s", sg_err_message(SG_ERR_BAD_REQUEST), detail);
    assert_string_equal(json_string_value(json_object_get(j, "message")), want);
    json_decref(j);
    page_free(&p);
}

/* Invalid UTF-8 cannot go into JSON; the page survives with '?' in its place. */
static void test_json_invalid_utf8(void **state)
{
    sg_errpage_t e = {SG_ERR_SANDBOX_NOT_FOUND, SG_SLICE_LIT("ab\xff\xfe"), 0, "x\xc3("};
    page_t p;
    render(&p, &e, 0, 1, 0);
    json_t *j = parse_body(&p);
    assert_string_equal(json_string_value(json_object_get(j, "sandboxId")), "ab??");
    assert_string_equal(json_string_value(json_object_get(j, "message")),
                        "The sandbox was not found: x?(");
    assert_int_equal(content_length(&p), p.body_len);
    json_decref(j);
    page_free(&p);
}

static void test_html(void **state)
{
    sg_errpage_t e = {SG_ERR_PORT_NOT_OPEN, SG_SLICE_LIT("abc123"), 8080, NULL};
    page_t p;
    render(&p, &e, 1, 1, 0);
    char body[4096];
    assert_true(p.body_len < sizeof(body));
    memcpy(body, p.body, p.body_len);
    body[p.body_len] = '\0';
    assert_non_null(strstr(body, "<!DOCTYPE html>"));
    assert_non_null(strstr(body, "<title>502 Bad Gateway</title>"));
    assert_non_null(strstr(body, "<h1>502 Bad Gateway</h1>"));
    assert_non_null(strstr(body, "<p>The sandbox is running but port is not open</p>"));
    assert_non_null(strstr(body, "<dd>abc123</dd>"));
    assert_non_null(strstr(body, "<dd>8080</dd>"));
    assert_null(strstr(body, "<script"));
    page_free(&p);

    /* unknown sandbox and port: neither is mentioned */
    sg_errpage_t anon = {SG_ERR_HOST_MISSING, {NULL, 0}, 0, NULL};
    render(&p, &anon, 1, 1, 0);
    memcpy(body, p.body, p.body_len);
    body[p.body_len] = '\0';
    assert_non_null(strstr(body, "<title>400 Bad Request</title>"));
    assert_non_null(strstr(body, "<p>Missing Host header</p>"));
    assert_null(strstr(body, "<dl>"));
    assert_null(strstr(body, "Sandbox"));
    page_free(&p);
}

static void test_html_escaping(void **state)
{
    const char id[] = "<script>alert('x')</script>&\"\0";
    sg_errpage_t e = {SG_ERR_SANDBOX_NOT_FOUND, sg_slice(id, sizeof(id) - 1), 0,
                      "<img src=x onerror=alert(1)> & \"q\" 'a'\r\n"};
    page_t p;
    render(&p, &e, 1, 1, 0);
    char body[4096];
    assert_true(p.body_len < sizeof(body));
    memcpy(body, p.body, p.body_len);
    body[p.body_len] = '\0';
    /* the NUL became a replacement character, so the body is one C string */
    assert_int_equal(strlen(body), p.body_len);
    assert_null(strstr(body, "<script"));
    assert_null(strstr(body, "<img"));
    assert_null(strstr(body, "'x'"));
    assert_non_null(strstr(body, "<dd>&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
                                 "&#xFFFD;</dd>"));
    assert_non_null(strstr(body, "The sandbox was not found: &lt;img src=x onerror=alert(1)&gt; "
                                 "&amp; &quot;q&quot; &#39;a&#39;&#xFFFD;&#xFFFD;</p>"));
    page_free(&p);
}

/* ---- head variants ---- */

static void test_connection_close(void **state)
{
    sg_errpage_t e = {SG_ERR_REQUEST_TIMEOUT, {NULL, 0}, 0, NULL};
    page_t p;
    char buf[64];
    render(&p, &e, 0, 0, 0);
    assert_string_equal(header_value(&p, "Connection", buf, sizeof(buf)), "close");
    assert_string_equal(p.head, "HTTP/1.1 408 Request Timeout\r\n"
                                "Content-Type: application/json\r\n"
                                "Content-Length: 58\r\n"
                                "Cache-Control: no-store\r\n"
                                "X-Sandgate-Error: request_timeout\r\n"
                                "Connection: close\r\n"
                                "\r\n");
    assert_body(&p, "{\"message\":\"Request head not received in time\",\"code\":408}");
    page_free(&p);
}

static void test_head_only(void **state)
{
    sg_errpage_t e = {SG_ERR_PORT_NOT_OPEN, SG_SLICE_LIT("abc"), 3000, NULL};
    for (int html = 0; html <= 1; html++) {
        page_t full, head;
        render(&full, &e, html, 1, 0);
        render(&head, &e, html, 1, 1);
        assert_int_equal(head.body_len, 0);
        /* same head, Content-Length describing the body a GET would get */
        assert_string_equal(head.head, full.head);
        assert_int_equal(content_length(&head), full.body_len);
        page_free(&full);
        page_free(&head);
    }
}

static void test_appends(void **state)
{
    sg_strbuf_t out = {0};
    sg_strbuf_append_cstr(&out, "KEEP");
    sg_errpage_t e = {SG_ERR_INTERNAL, {NULL, 0}, 0, NULL};
    sg_errpage_render(&out, &e, 0, 1, 0);
    assert_true(out.len > 4);
    assert_memory_equal(out.base, "KEEPHTTP/1.1 500 Internal Server Error\r\n", 40);
    sg_strbuf_free(&out);
}

/* ---- wants_html ---- */

typedef struct {
    const char *name, *value;
} kv_t;

typedef struct {
    kv_t h[3];
    int want;
} html_case_t;

static const html_case_t html_cases[] = {
    {{{"Sec-Fetch-Mode", "navigate"}}, 1},
    {{{"sec-fetch-mode", "Navigate"}}, 1},
    {{{"Sec-Fetch-Mode", " navigate "}}, 1},
    {{{"Sec-Fetch-Mode", "cors"}, {"Accept", "*/*"}}, 0},
    {{{"Sec-Fetch-Mode", "no-cors"}}, 0},
    {{{"Sec-Fetch-Mode", "navigated"}}, 0},
    {{{"Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}}, 1},
    {{{"accept", "TEXT/HTML"}}, 1},
    {{{"Accept", "  text/html  , */*"}}, 1},
    {{{"Accept", "text/html;q=0.1, application/json"}}, 1}, /* q-values ignored */
    {{{"Accept", "text/html ;level=1"}}, 1},
    {{{"Accept", "application/json, text/html"}}, 0},
    {{{"Accept", "*/*"}}, 0},
    {{{"Accept", "text/*"}}, 0},
    {{{"Accept", "text/htmlx"}}, 0},
    {{{"Accept", "text/plain"}}, 0},
    {{{"Accept", ""}}, 0},
    {{{"Accept", ",text/html"}}, 0},
    {{{"User-Agent", "Mozilla/5.0"}}, 0},
    {{{NULL, NULL}}, 0},
};

static void test_wants_html(void **state)
{
    for (size_t i = 0; i < sizeof(html_cases) / sizeof(html_cases[0]); i++) {
        sg_header_t hs[3];
        size_t n = 0;
        for (; n < 3 && html_cases[i].h[n].name; n++) {
            hs[n].name = sg_slice_cstr(html_cases[i].h[n].name);
            hs[n].value = sg_slice_cstr(html_cases[i].h[n].value);
        }
        int got = sg_errpage_wants_html(hs, n);
        if (got != html_cases[i].want) print_error("case %zu: got %d\n", i, got);
        assert_int_equal(got, html_cases[i].want);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_exact),
        cmocka_unit_test(test_every_error),
        cmocka_unit_test(test_json_escaping),
        cmocka_unit_test(test_json_invalid_utf8),
        cmocka_unit_test(test_html),
        cmocka_unit_test(test_html_escaping),
        cmocka_unit_test(test_connection_close),
        cmocka_unit_test(test_head_only),
        cmocka_unit_test(test_appends),
        cmocka_unit_test(test_wants_html),
    };
    return cmocka_run_group_tests_name("http/errpage", tests, NULL, NULL);
}
