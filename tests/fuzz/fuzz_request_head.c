/* libFuzzer harness for the request path a client controls: the request
 * head step and the request checks (http/h1_head.h:
 * sg_h1_request_head_input, sg_http_validate_request, the code conn.c's
 * head_input and on_request_head run), the llhttp glue (http/h1.h), Host
 * routing (route/host.h), mask expansion (route/mask.h), the request head
 * rewrite (http/rewrite.h) and error pages (http/errpage.h). Around them it
 * plays conn.c's part without sockets: sg_conn_upstream_ready,
 * sg_conn_feed_body, next_request.
 *
 * Input: byte 0 = flags (see below), byte 1 = seed for the read sizes, then
 * the client's bytes. The bytes arrive in reads of pseudo-random size
 * (derived from byte 1); each read is appended to a head buffer that is
 * reallocated to its exact size on every append (stale pointers and reads
 * past the end are ASan errors) and parsed incrementally as the proxy does.
 * Pipelined requests run in turn while the connection stays alive.
 *
 * Invariants (abort on violation):
 *   - every span of the parsed head (method, target, header names and values)
 *     lies inside the head as sg_h1_head_length delimits it, and the parser
 *     consumed at least that head;
 *   - the rewritten head is one well-formed head: "method SP target SP
 *     HTTP/1.m" first, then "name: value" lines (token names, no CR/LF/NUL
 *     in values), exactly one CRLFCRLF, at its end; sg_h1_check_head_bytes
 *     accepts it;
 *   - its headers are exactly what rewrite.h promises: hop-by-hop and client
 *     X-Forwarded-Host/Proto gone, the token header gone, Host replaced by
 *     the mask (once) or kept, framing headers untouched, X-Forwarded-For
 *     folded with the client address, every other header byte-for-byte in
 *     order;
 *   - framing is preserved: a fresh parser reading what goes upstream (the
 *     rewritten head, the body bytes that came with it, then each later
 *     read) sees one request ending exactly where the client's parser says
 *     it ends, never a second one;
 *   - every error page is a parseable HTTP/1.1 response whose status and
 *     X-Sandgate-Error match the error, whose Content-Length is the body's
 *     length, and whose JSON body parses with the documented fields (or
 *     whose HTML has no unescaped markup from the request). */
#include "http/errpage.h"
#include "http/h1_head.h"
#include "http/rewrite.h"
#include "route/host.h"
#include "route/mask.h"

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* Open findings (tests/fuzz/README.md) abort like any other violation. To
 * fuzz past them until they are fixed, build with
 * FUZZ_CFLAGS=-DSG_FUZZ_TOLERATE_KNOWN: inputs that hit one are dropped
 * (-DSG_FUZZ_KNOWN_MASK selects which, bit n = Fn). */
#ifdef SG_FUZZ_TOLERATE_KNOWN
#ifndef SG_FUZZ_KNOWN_MASK
#define SG_FUZZ_KNOWN_MASK (~0u)
#endif
#define KNOWN_BUG(n, cond)                                                                         \
    do {                                                                                           \
        if ((((unsigned)(SG_FUZZ_KNOWN_MASK) >> (n)) & 1u) && (cond)) return STOP;                 \
    } while (0)
#else
#define KNOWN_BUG(n, cond) ((void)0)
#endif

#define MAX_REQUESTS 4
#define TOKEN_HEADER "X-Traffic-Access-Token"

static char *const domains[] = {"e2b.app", "example.com", "sandbox.example.com"};
#define N_DOMAINS (sizeof(domains) / sizeof(domains[0]))

/* Flags (byte 0):
 *   bits 0-1: sandbox mask: none / "${PORT}-x.internal" / "localhost:${PORT}" /
 *             "[${PORT}${PORT}]:${PORT}_"
 *   bit 2:    TLS listener (X-Forwarded-Proto: https)
 *   bits 3-4: client address "" / "203.0.113.7" / "2001:db8::1" / "10.0.0.1"
 *   bit 5:    no token header configured (strip_header empty)
 *   bit 6:    max_header_bytes 1024 instead of 64 KiB
 *   bit 7:    max_headers 4 instead of 512 (sg_h1_init's bound) */
static const char *const masks[] = {NULL, "${PORT}-x.internal", "localhost:${PORT}",
                                    "[${PORT}${PORT}]:${PORT}_"};
static const char *const clients[] = {"", "203.0.113.7", "2001:db8::1", "10.0.0.1"};

typedef struct {
    char *base;
    size_t len;
} xbuf_t; /* exact-size heap buffer */

static void xbuf_append(xbuf_t *b, const char *d, size_t n)
{
    char *p = malloc(b->len + n ? b->len + n : 1);
    CHECK(p != NULL);
    if (b->len) memcpy(p, b->base, b->len);
    if (n) memcpy(p + b->len, d, n);
    free(b->base);
    b->base = p;
    b->len += n;
}

static void xbuf_free(xbuf_t *b)
{
    free(b->base);
    b->base = NULL;
    b->len = 0;
}

typedef struct {
    const uint8_t *data;
    size_t size, pos;
    uint32_t rng;
} reader_t;

static uint32_t next_rand(reader_t *r)
{
    uint32_t x = r->rng;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return r->rng = x;
}

/* The next client read: 1, 1..8, 1..64 bytes or all that is left. */
static size_t next_read(reader_t *r, const char **out)
{
    size_t left = r->size - r->pos, n;
    if (!left) return 0;
    uint32_t x = next_rand(r);
    switch (x & 3) {
    case 0:
        n = 1;
        break;
    case 1:
        n = 1 + ((x >> 2) & 7);
        break;
    case 2:
        n = 1 + ((x >> 2) & 63);
        break;
    default:
        n = left;
    }
    if (n > left) n = left;
    *out = (const char *)r->data + r->pos;
    r->pos += n;
    return n;
}

/* ---- helpers ---------------------------------------------------------- */

static int is_tchar(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static int eq(sg_slice_t a, const char *b)
{
    return sg_slice_eq_nocase(a, sg_slice_cstr(b));
}

static int same_bytes(sg_slice_t a, sg_slice_t b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.base, b.base, a.len) == 0);
}

static int span_in(uint32_t off, uint32_t len, size_t head_len)
{
    return (size_t)off + len <= head_len;
}

/* A parsed header line of the rewritten head. */
typedef struct {
    sg_slice_t name, value;
} line_t;

/* Splits a rewritten head into its start line and header lines, checking the
 * shape. Returns the number of header lines (at most cap). */
static size_t split_head(sg_slice_t head, sg_slice_t *start, line_t *lines, size_t cap)
{
    CHECK(head.len >= 4 && memcmp(head.base + head.len - 4, "\r\n\r\n", 4) == 0);
    const char *first = memmem(head.base, head.len, "\r\n\r\n", 4);
    CHECK(first == head.base + head.len - 4);
    CHECK(sg_h1_check_head_bytes(head.base, head.len) == NULL);
    for (size_t i = 0; i < head.len; i++) {
        unsigned char c = (unsigned char)head.base[i];
        CHECK(c != '\0');
        if (c == '\r') CHECK(i + 1 < head.len && head.base[i + 1] == '\n');
        if (c == '\n') CHECK(i > 0 && head.base[i - 1] == '\r');
    }
    const char *p = head.base, *end = head.base + head.len - 2; /* before the final CRLF */
    const char *eol = memmem(p, (size_t)(end - p), "\r\n", 2);
    CHECK(eol != NULL);
    *start = sg_slice(p, (size_t)(eol - p));
    p = eol + 2;
    size_t n = 0;
    while (p < end) {
        eol = memmem(p, (size_t)(end - p), "\r\n", 2);
        CHECK(eol != NULL);
        const char *colon = memchr(p, ':', (size_t)(eol - p));
        CHECK(colon != NULL && colon > p);
        for (const char *q = p; q < colon; q++) CHECK(is_tchar((unsigned char)*q));
        CHECK(colon + 1 < eol ? colon[1] == ' ' : 1);
        const char *v = colon + 1 < eol ? colon + 2 : eol;
        CHECK(v <= eol);
        CHECK(n < cap);
        lines[n].name = sg_slice(p, (size_t)(colon - p));
        lines[n].value = sg_slice(v, (size_t)(eol - v));
        n++;
        p = eol + 2;
    }
    return n;
}

/* ---- error pages ------------------------------------------------------ */

static void check_errpage(sg_err_t err, const char *detail, sg_slice_t sandbox_id, int html,
                          int keep, int head_only)
{
    sg_strbuf_t out = {0};
    sg_errpage_t page = {.err = err, .detail = detail, .sandbox_id = sandbox_id};
    sg_errpage_render(&out, &page, html, keep, head_only);
    int status = sg_err_status(err);

    /* A response parser frames it: head, then exactly Content-Length bytes. */
    sg_h1_parser_t rp;
    sg_h1_init(&rp, HTTP_RESPONSE, 64);
    rp.skip_body = (unsigned)head_only;
    size_t consumed = 0;
    CHECK(sg_h1_execute(&rp, out.base, out.base, out.len, &consumed) == HPE_OK);
    CHECK(rp.headers_done && rp.message_done && consumed == out.len);
    size_t head_len = sg_h1_head_length(out.base, out.len);
    CHECK(head_len > 0);
    CHECK(sg_h1_check_head_bytes(out.base, head_len) == NULL);
    sg_http_response_t res;
    sg_h1_response_view(&rp, out.base, head_len, &res);
    CHECK(res.status == status && res.minor_version == 1);
    const sg_header_t *cl =
        sg_http_find_header(res.headers, res.n_headers, SG_SLICE_LIT("Content-Length"));
    const sg_header_t *xe =
        sg_http_find_header(res.headers, res.n_headers, SG_SLICE_LIT("X-Sandgate-Error"));
    const sg_header_t *conn =
        sg_http_find_header(res.headers, res.n_headers, SG_SLICE_LIT("Connection"));
    CHECK(cl && xe);
    CHECK(eq(xe->value, sg_err_name(err)));
    CHECK(keep ? conn == NULL : (conn && eq(conn->value, "close")));
    char clbuf[32];
    snprintf(clbuf, sizeof(clbuf), "%.*s", (int)cl->value.len, cl->value.base);
    size_t body_len = (size_t)strtoul(clbuf, NULL, 10);
    CHECK(head_only ? out.len == head_len : out.len - head_len == body_len);

    if (!head_only) {
        const char *body = out.base + head_len;
        if (html) {
            /* Markup in the interpolated text would show up as a '<' inside
             * the <p> or <dd> text. */
            const char *p = memmem(body, body_len, "<p>", 3);
            const char *q = memmem(body, body_len, "</p>", 4);
            CHECK(p && q && p < q);
            CHECK(memchr(p + 3, '<', (size_t)(q - p - 3)) == NULL);
            CHECK(memchr(p + 3, '>', (size_t)(q - p - 3)) == NULL);
            if (sandbox_id.len) {
                const char *d = memmem(body, body_len, "<dd>", 4);
                const char *e = d ? memmem(d, body_len - (size_t)(d - body), "</dd>", 5) : NULL;
                CHECK(d && e);
                CHECK(memchr(d + 4, '<', (size_t)(e - d - 4)) == NULL);
            }
        } else {
            json_error_t jerr;
            json_t *doc = json_loadb(body, body_len, 0, &jerr);
            CHECK(doc != NULL && json_is_object(doc));
            CHECK(json_integer_value(json_object_get(doc, "code")) == status);
            const char *msg = json_string_value(json_object_get(doc, "message"));
            const char *want = sg_err_message(err);
            CHECK(msg && strncmp(msg, want, strlen(want)) == 0);
            json_t *sid = json_object_get(doc, "sandboxId");
            if (sandbox_id.len) {
                /* Same length: invalid UTF-8 bytes become '?', one for one. */
                CHECK(json_is_string(sid) && json_string_length(sid) == sandbox_id.len);
            } else {
                CHECK(sid == NULL);
            }
            json_decref(doc);
        }
    }
    sg_h1_free(&rp);
    sg_strbuf_free(&out);
}

/* ---- the rewrite's contract ------------------------------------------- */

static int listed_in_connection(const sg_http_request_t *r, sg_slice_t name)
{
    for (size_t i = 0; i < r->n_headers; i++)
        if (eq(r->headers[i].name, "Connection") &&
            sg_http_value_has_token(r->headers[i].value, name))
            return 1;
    return 0;
}

/* Whether the rewrite keeps header h of the client's request unchanged (in
 * place), per rewrite.h. Host (when replaced) and X-Forwarded-For are
 * handled by the caller. */
static int kept_as_is(const sg_http_request_t *r, const sg_header_t *h,
                      const sg_rewrite_request_params_t *p)
{
    sg_slice_t n = h->name;
    if (eq(n, "Upgrade")) {
        if (!p->upgrade) return 0;
    } else if (eq(n, "Connection") || eq(n, "Keep-Alive") || eq(n, "Proxy-Connection") ||
               eq(n, "TE")) {
        return 0;
    } else if (!eq(n, "Host") && !eq(n, "Content-Length") && !eq(n, "Transfer-Encoding") &&
               listed_in_connection(r, n)) {
        return 0;
    }
    if (eq(n, "X-Forwarded-Host") || eq(n, "X-Forwarded-Proto")) return 0;
    if (p->strip_header.len && sg_slice_eq_nocase(n, p->strip_header)) return 0;
    return 1;
}

static void check_rewrite(const sg_http_request_t *r, const sg_rewrite_request_params_t *p,
                          sg_slice_t out)
{
    sg_slice_t start;
    size_t cap = r->n_headers + 8;
    line_t *lines = calloc(cap, sizeof(*lines));
    CHECK(lines != NULL);
    size_t n = split_head(out, &start, lines, cap);

    /* Start line: method, raw target and version as received. */
    char version[16];
    int vn = snprintf(version, sizeof(version), " HTTP/1.%d", r->minor_version);
    CHECK(start.len == r->method.len + 1 + r->target.len + (size_t)vn);
    CHECK(memcmp(start.base, r->method.base, r->method.len) == 0);
    CHECK(start.base[r->method.len] == ' ');
    CHECK(memcmp(start.base + r->method.len + 1, r->target.base, r->target.len) == 0);
    CHECK(memcmp(start.base + r->method.len + 1 + r->target.len, version, (size_t)vn) == 0);

    /* Expected X-Forwarded-For value. */
    sg_strbuf_t xff = {0};
    int xff_hop = listed_in_connection(r, SG_SLICE_LIT("X-Forwarded-For"));
    for (size_t i = 0; i < r->n_headers && !xff_hop; i++) {
        if (!eq(r->headers[i].name, "X-Forwarded-For") || !r->headers[i].value.len) continue;
        if (p->strip_header.len && sg_slice_eq_nocase(r->headers[i].name, p->strip_header))
            continue;
        if (xff.len) sg_strbuf_append(&xff, ", ", 2);
        sg_strbuf_append_slice(&xff, r->headers[i].value);
    }
    if (p->client_addr.len) {
        if (xff.len) sg_strbuf_append(&xff, ", ", 2);
        sg_strbuf_append_slice(&xff, p->client_addr);
    }

    /* Walk the output: our own headers are counted; every other line must
     * be the next client header that is kept as is. */
    const int replace = p->host.base != NULL;
    size_t next = 0, hosts = 0, xffs = 0, xfhs = 0, xfps = 0, conns = 0;
    for (size_t i = 0; i < n; i++) {
        const line_t *l = &lines[i];
        CHECK(!eq(l->name, "Keep-Alive") && !eq(l->name, "Proxy-Connection") && !eq(l->name, "TE"));
        if (p->strip_header.len) CHECK(!sg_slice_eq_nocase(l->name, p->strip_header));
        if (eq(l->name, "Host") && replace) {
            CHECK(same_bytes(l->value, p->host));
            hosts++;
            continue;
        }
        if (eq(l->name, "X-Forwarded-For")) {
            CHECK(same_bytes(l->value, sg_slice(xff.base, xff.len)));
            xffs++;
            continue;
        }
        if (eq(l->name, "X-Forwarded-Host")) {
            CHECK(replace && same_bytes(l->value, p->original_host));
            xfhs++;
            continue;
        }
        if (eq(l->name, "X-Forwarded-Proto")) {
            CHECK(same_bytes(l->value, p->proto));
            xfps++;
            continue;
        }
        if (eq(l->name, "Connection")) {
            CHECK(p->upgrade && same_bytes(l->value, SG_SLICE_LIT("upgrade")));
            conns++;
            continue;
        }
        /* The next kept client header, byte for byte. */
        while (next < r->n_headers) {
            const sg_header_t *h = &r->headers[next];
            if (!(replace && eq(h->name, "Host")) && !eq(h->name, "X-Forwarded-For") &&
                kept_as_is(r, h, p))
                break;
            next++;
        }
        CHECK(next < r->n_headers);
        CHECK(same_bytes(l->name, r->headers[next].name));
        CHECK(same_bytes(l->value, r->headers[next].value));
        next++;
    }
    /* No kept client header was lost. */
    for (; next < r->n_headers; next++) {
        const sg_header_t *h = &r->headers[next];
        CHECK((replace && eq(h->name, "Host")) || eq(h->name, "X-Forwarded-For") ||
              !kept_as_is(r, h, p));
    }
    CHECK(hosts == (replace ? 1u : 0u));
    CHECK(xffs == (xff.len ? 1u : 0u));
    CHECK(xfhs == (replace && p->original_host.len ? 1u : 0u));
    CHECK(xfps == (p->proto.len ? 1u : 0u));
    CHECK(conns == (p->upgrade ? 1u : 0u));
    sg_strbuf_free(&xff);
    free(lines);
}

/* ---- the connection ----------------------------------------------------- */

typedef struct {
    reader_t rd;
    uint8_t flags;
    size_t max_header_bytes, max_headers;
    sg_h1_parser_t req;
    xbuf_t head;   /* req_head */
    size_t parsed; /* req_parsed */
    size_t head_len;
    sg_http_request_t request;
    int keep_alive, upgrade, head_method;
    sg_slice_t host;
    char host_lower[SG_HOST_MAX + 1];
    sg_route_t route;
} conn_t;

enum { MORE, STOP, NEXT };

static void send_error(conn_t *c, sg_err_t err, const char *detail, int have_view)
{
    /* conn.c decides HTML from c->request; here only when this request's
     * view was built. */
    int html = have_view && sg_errpage_wants_html(c->request.headers, c->request.n_headers);
    int keep = c->keep_alive && c->req.message_done && sg_err_status(err) != 400 &&
               sg_err_status(err) != 431 && sg_err_status(err) != 414;
    check_errpage(err, detail, sg_slice(NULL, 0), html, keep, c->head_method);
    /* The interpolated strings of a page are escaped whatever they hold:
     * render one with the raw target as sandbox id and the Host as detail. */
    if (have_view && c->request.target.len) {
        char detail_buf[256];
        snprintf(detail_buf, sizeof(detail_buf), "%.*s",
                 (int)(c->host.len < 200 ? c->host.len : 200), c->host.base ? c->host.base : "");
        check_errpage(SG_ERR_SANDBOX_NOT_FOUND, detail_buf, c->request.target, html, 1, 0);
        check_errpage(SG_ERR_SANDBOX_NOT_FOUND, detail_buf, c->request.target, !html, 0, 0);
    }
}

/* Feeds the upstream parser and compares its framing with the client's. */
static int upstream_feed(sg_h1_parser_t *up, const char *base, const char *d, size_t n,
                         size_t want_consumed, int want_done)
{
    size_t consumed = 0;
    llhttp_errno_t err = sg_h1_execute(up, base, d, n, &consumed);
    CHECK(err == HPE_OK);
    CHECK(consumed == want_consumed);
    CHECK(up->message_done == (unsigned)want_done);
    return MORE;
}

/* conn.c on_request_head and what follows it: validate, route, rewrite,
 * forward, stream the body. */
static int on_request_head(conn_t *c, const sg_h1_request_head_t *h)
{
    const sg_http_request_t *r = &c->request;
    c->keep_alive = h->keep_alive;
    c->head_method = h->head_method;
    c->upgrade = h->upgrade;
    CHECK(c->head_method == sg_slice_eq_nocase(r->method, SG_SLICE_LIT("HEAD")));
    CHECK(!c->upgrade || (r->minor_version >= 1 &&
                          sg_http_find_header(r->headers, r->n_headers, SG_SLICE_LIT("upgrade"))));

    const char *detail = NULL;
    sg_err_t err = sg_http_validate_request(&c->req, r, &c->host, &detail);
    if (err != SG_ERR_NONE) {
        CHECK(sg_err_status(err) == 400);
        CHECK(err != SG_ERR_BAD_REQUEST || detail != NULL);
        c->keep_alive = 0;
        send_error(c, err, detail, 1);
        return STOP;
    }
    /* The routing authority is the Host value or the absolute-form
     * target's, which lies inside the target. */
    CHECK(!c->host.len || (c->host.base >= c->head.base &&
                           c->host.base + c->host.len <= c->head.base + c->head_len));
    err = sg_route_parse_host(c->host, domains, N_DOMAINS, c->host_lower, &c->route, &detail);
    CHECK(memchr(c->host_lower, '\0', sizeof(c->host_lower)) != NULL);
    if (err != SG_ERR_NONE) {
        send_error(c, err, err == SG_ERR_HOST_UNKNOWN_DOMAIN ? NULL : detail, 1);
        return STOP;
    }
    CHECK(c->route.port >= 1 && c->route.id.len >= 1 && c->route.id.len <= 64);
    /* The rewrite writes "HTTP/1.<minor>": only HTTP/1.x may get this far. */
    CHECK(c->req.llhttp.http_major == 1 && r->minor_version <= 1);
    /* The page for a missing sandbox carries the routed id. */
    check_errpage(SG_ERR_SANDBOX_NOT_FOUND, NULL, c->route.id, 0, 1, c->head_method);

    /* Lookup found a sandbox; upstream_ready builds what goes upstream. */
    const char *mask = masks[c->flags & 3];
    sg_rewrite_request_params_t p = {
        .client_addr = sg_slice_cstr(clients[(c->flags >> 3) & 3]),
        .proto = (c->flags & 4) ? SG_SLICE_LIT("https") : SG_SLICE_LIT("http"),
        .upgrade = c->upgrade,
        .strip_header = (c->flags & 32) ? sg_slice(NULL, 0) : SG_SLICE_LIT(TOKEN_HEADER),
    };
    sg_strbuf_t scratch = {0}, out = {0};
    if (mask) {
        CHECK(sg_mask_validate(sg_slice_cstr(mask)) == NULL);
        sg_mask_expand(&scratch, sg_slice_cstr(mask), c->route.port);
        CHECK(scratch.len > 0 && !memmem(scratch.base, scratch.len, "${PORT}", 7));
        p.host = sg_slice(scratch.base, scratch.len);
        p.original_host = c->host;
    }
    sg_http_rewrite_request(r, &p, &out);
    size_t rewritten = out.len;
    check_rewrite(r, &p, sg_slice(out.base, out.len));
    size_t body = c->parsed - c->head_len;
    sg_strbuf_append(&out, c->head.base + c->head_len, body);

    /* What the sandbox reads: one request, framed where ours ends. */
    sg_h1_parser_t up;
    sg_h1_init(&up, HTTP_REQUEST, 4096);
    if (upstream_feed(&up, out.base, out.base, out.len, out.len, c->req.message_done) == STOP) {
        sg_h1_free(&up);
        sg_strbuf_free(&scratch);
        sg_strbuf_free(&out);
        return STOP;
    }
    CHECK(up.headers_done);
    CHECK(sg_h1_head_length(out.base, out.len) == rewritten);
    sg_http_request_t upr;
    sg_h1_request_view(&up, out.base, &upr);
    CHECK(same_bytes(upr.method, r->method) && same_bytes(upr.target, r->target));
    CHECK(upr.minor_version == r->minor_version);
    CHECK(!!llhttp_message_needs_eof(&up.llhttp) == !!llhttp_message_needs_eof(&c->req.llhttp));

    int result = NEXT;
    xbuf_t rest = {0};
    if (c->parsed < c->head.len)
        xbuf_append(&rest, c->head.base + c->parsed, c->head.len - c->parsed);
    if (!c->req.message_done) {
        /* sg_conn_feed_body: later reads go through the same parser. */
        CHECK(c->parsed == c->head.len);
        const char *d;
        size_t n;
        while (!c->req.message_done && (n = next_read(&c->rd, &d)) > 0) {
            size_t consumed = 0;
            llhttp_errno_t e = sg_h1_execute(&c->req, NULL, d, n, &consumed);
            CHECK(consumed <= n);
            if (e != HPE_OK) {
                send_error(c, SG_ERR_BAD_REQUEST, llhttp_errno_name(e), 0);
                result = STOP;
                break;
            }
            CHECK(consumed == n || c->req.message_done);
            if (upstream_feed(&up, NULL, d, consumed, consumed, c->req.message_done) == STOP) {
                result = STOP;
                break;
            }
            if (c->req.message_done && consumed < n) xbuf_append(&rest, d + consumed, n - consumed);
        }
        if (!c->req.message_done) result = STOP; /* EOF mid-body */
    }
    if (c->upgrade) result = STOP; /* a 101 would turn this into a tunnel */
    if (!c->keep_alive) result = STOP;
    sg_h1_free(&up);
    sg_strbuf_free(&scratch);
    sg_strbuf_free(&out);

    /* next_request: what followed becomes the next head buffer. */
    xbuf_free(&c->head);
    c->head = rest;
    return result;
}

/* How the bytes were cut into reads must not matter: the same buffer parsed
 * in one go gives the same verdict and, when accepted, the same end and the
 * same spans. (The error code may differ: the glue's own checks can fire
 * before llhttp's.) */
static int check_split_independent(conn_t *c, llhttp_errno_t err)
{
    sg_h1_parser_t one;
    sg_h1_init(&one, HTTP_REQUEST, c->max_headers);
    size_t consumed = 0;
    llhttp_errno_t e = sg_h1_execute(&one, c->head.base, c->head.base, c->head.len, &consumed);
    int same = (e == HPE_OK) == (err == HPE_OK);
    if (same && err == HPE_OK) {
        CHECK(one.headers_done == c->req.headers_done && one.message_done == c->req.message_done);
        CHECK(consumed == c->parsed);
        CHECK(one.first_off == c->req.first_off && one.first_len == c->req.first_len);
        CHECK(one.target_off == c->req.target_off && one.target_len == c->req.target_len);
        CHECK(one.n_spans == c->req.n_spans);
        for (size_t i = 0; i < one.n_spans; i++)
            CHECK(memcmp(&one.spans[i], &c->req.spans[i], sizeof(one.spans[i])) == 0);
    }
    sg_h1_free(&one);
    CHECK(same);
    return MORE;
}

/* conn.c head_input: the step decides, this acts. */
static int head_input(conn_t *c)
{
    size_t before = c->parsed;
    sg_h1_request_head_t h;
    sg_h1_head_step_t step = sg_h1_request_head_input(&c->req, c->head.base, c->head.len,
                                                      &c->parsed, c->max_header_bytes, &h);
    CHECK(step != SG_H1_HEAD_INTERIM);
    CHECK(c->parsed >= before && c->parsed <= c->head.len);
    if ((h.parse_error != HPE_OK || c->req.headers_done) &&
        check_split_independent(c, h.parse_error) == STOP)
        return STOP;
    CHECK(c->req.n_spans <= c->max_headers);
    if (step == SG_H1_HEAD_MORE) {
        CHECK(!c->req.headers_done && c->parsed == c->head.len);
        CHECK(c->head.len <= c->max_header_bytes);
        return MORE;
    }
    if (step == SG_H1_HEAD_ERROR) {
        int status = sg_err_status(h.err);
        CHECK(status == 400 || status == 414 || status == 431);
        CHECK(h.err != SG_ERR_BAD_REQUEST || h.detail != NULL);
        /* A view only for a head read whole (its body bytes failed). */
        CHECK(!h.has_view || (c->req.headers_done && h.parse_error != HPE_OK));
        if (h.has_view) c->request = h.request;
        send_error(c, h.err, h.detail, h.has_view);
        return STOP;
    }
    CHECK(step == SG_H1_HEAD_DONE && h.has_view && h.parse_error == HPE_OK);
    c->head_len = h.head_len;
    c->request = h.request;
    CHECK(c->head_len == sg_h1_head_length(c->head.base, c->head.len));
    CHECK(c->head_len > 0 && c->head_len <= c->max_header_bytes);
    /* The head the checks looked at is the head llhttp parsed. */
    CHECK(span_in(c->req.first_off, c->req.first_len, c->head_len));
    CHECK(span_in(c->req.target_off, c->req.target_len, c->head_len));
    for (size_t i = 0; i < c->req.n_spans; i++) {
        const sg_h1_span_t *s = &c->req.spans[i];
        CHECK(span_in(s->name_off, s->name_len, c->head_len));
        CHECK(span_in(s->value_off, s->value_len, c->head_len));
    }
    CHECK(c->head_len <= c->parsed);
    CHECK(c->req.first_len > 0);
    return on_request_head(c, &h);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2) return 0;
    conn_t *c = calloc(1, sizeof(*c));
    CHECK(c != NULL);
    c->flags = data[0];
    c->rd = (reader_t){.data = data + 2, .size = size - 2, .rng = 0x9E3779B9u ^ data[1]};
    c->max_header_bytes = (c->flags & 64) ? 1024 : 64 * 1024;
    c->max_headers = (c->flags & 128) ? 4 : 512;
    sg_h1_init(&c->req, HTTP_REQUEST, c->max_headers);

    for (int n = 0; n < MAX_REQUESTS; n++) {
        /* next_request / reset_request */
        if (n) sg_h1_reset(&c->req, HTTP_REQUEST);
        c->parsed = c->head_len = 0;
        c->keep_alive = c->upgrade = c->head_method = 0;
        c->host = sg_slice(NULL, 0);
        memset(&c->request, 0, sizeof(c->request));
        int state = c->head.len ? head_input(c) : MORE;
        while (state == MORE) {
            const char *d;
            size_t len = next_read(&c->rd, &d);
            if (!len) break; /* EOF: the proxy closes */
            xbuf_append(&c->head, d, len);
            state = head_input(c);
        }
        if (state != NEXT) break;
    }
    xbuf_free(&c->head);
    sg_h1_free(&c->req);
    free(c);
    return 0;
}
