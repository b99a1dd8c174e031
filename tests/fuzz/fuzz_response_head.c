/* libFuzzer harness for the response path a sandbox controls: the response
 * head step (http/h1_head.h: sg_h1_response_head_input, the code relay.c's
 * response_head_input runs), the llhttp glue (http/h1.h) and the response
 * head rewrite (http/rewrite.h). Around them it plays relay.c's part without
 * sockets: forwarding interim heads, final_head, response_body_input and
 * upstream_ended.
 *
 * Input: byte 0 = flags (see below), byte 1 = seed for the read sizes, then
 * the sandbox's bytes, delivered in reads of pseudo-random size into a head
 * buffer reallocated to its exact size on every append (stale pointers and
 * reads past the end are ASan errors). The input ending is the sandbox's
 * EOF.
 *
 * Invariants (abort on violation), checked against a fresh response parser
 * that plays the client reading what sandgate forwards:
 *   - an interim (1xx) head is forwarded only when it is one complete,
 *     well-formed 1xx head that the client also sees as a complete message;
 *   - the rewritten final head is one well-formed HTTP/1.x head: the status
 *     line as received ("HTTP/1.m NNN ..."), then "name: value" lines (token
 *     names, no CR/LF/NUL in values), exactly one CRLFCRLF at its end;
 *   - its headers are what rewrite.h promises: hop-by-hop removed (Upgrade
 *     kept on 101), then exactly the one Connection header the client needs
 *     (upgrade / close / keep-alive) and every other header byte-for-byte in
 *     order; "Connection: close" whenever the body is delimited by EOF;
 *   - framing is preserved: the client's parser, given the forwarded head,
 *     the body bytes that came with it and every later read, ends the
 *     message exactly where sandgate's parser does. */
#include "http/h1_head.h"
#include "http/rewrite.h"

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

/* Open findings (tests/fuzz/README.md) abort like any other violation;
 * FUZZ_CFLAGS=-DSG_FUZZ_TOLERATE_KNOWN drops inputs that hit one
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

#define SG_MAX_HEADERS 512 /* conn.c */

/* Flags (byte 0):
 *   bit 0: the request was HEAD (skip_body)
 *   bit 1: the request asked to upgrade (expect_upgrade)
 *   bit 2: the client keeps the connection alive
 *   bit 3: the client spoke HTTP/1.1 (else HTTP/1.0) */

typedef struct {
    char *base;
    size_t len;
} xbuf_t;

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

/* Drops the first n bytes (relay.c's memmove), reallocating exactly. */
static void xbuf_consume(xbuf_t *b, size_t n)
{
    xbuf_t rest = {0};
    xbuf_append(&rest, b->base + n, b->len - n);
    free(b->base);
    *b = rest;
}

typedef struct {
    const uint8_t *data;
    size_t size, pos;
    uint32_t rng;
} reader_t;

static size_t next_read(reader_t *r, const char **out)
{
    size_t left = r->size - r->pos, n;
    if (!left) return 0;
    uint32_t x = r->rng;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    r->rng = x;
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

static int is_tchar(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static int is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static int eq(sg_slice_t a, const char *b)
{
    return sg_slice_eq_nocase(a, sg_slice_cstr(b));
}

static int same_bytes(sg_slice_t a, sg_slice_t b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.base, b.base, a.len) == 0);
}

typedef struct {
    sg_slice_t name, value;
} line_t;

/* Checks that head is one well-formed HTTP/1.x response head and splits it. */
static size_t split_head(sg_slice_t head, sg_slice_t *start, line_t *lines, size_t cap)
{
    CHECK(head.len >= 4 && memcmp(head.base + head.len - 4, "\r\n\r\n", 4) == 0);
    CHECK(memmem(head.base, head.len, "\r\n\r\n", 4) == head.base + head.len - 4);
    CHECK(sg_h1_check_head_bytes(head.base, head.len) == NULL);
    for (size_t i = 0; i < head.len; i++) {
        unsigned char c = (unsigned char)head.base[i];
        CHECK(c != '\0');
        if (c == '\r') CHECK(i + 1 < head.len && head.base[i + 1] == '\n');
        if (c == '\n') CHECK(i > 0 && head.base[i - 1] == '\r');
    }
    const char *p = head.base, *end = head.base + head.len - 2;
    const char *eol = memmem(p, (size_t)(end - p), "\r\n", 2);
    CHECK(eol != NULL);
    *start = sg_slice(p, (size_t)(eol - p));
    /* status-line = HTTP-version SP 3DIGIT SP [reason]; version 1.0 or 1.1 */
    CHECK(start->len >= 12 && memcmp(start->base, "HTTP/1.", 7) == 0);
    CHECK(start->base[7] == '0' || start->base[7] == '1');
    CHECK(start->base[8] == ' ' && is_digit((unsigned char)start->base[9]) &&
          is_digit((unsigned char)start->base[10]) && is_digit((unsigned char)start->base[11]));
    CHECK(start->len == 12 || start->base[12] == ' ');
    p = eol + 2;
    size_t n = 0;
    while (p < end) {
        eol = memmem(p, (size_t)(end - p), "\r\n", 2);
        CHECK(eol != NULL);
        const char *colon = memchr(p, ':', (size_t)(eol - p));
        CHECK(colon != NULL && colon > p);
        for (const char *q = p; q < colon; q++) CHECK(is_tchar((unsigned char)*q));
        const char *v = colon + 1;
        while (v < eol && (*v == ' ' || *v == '\t')) v++;
        CHECK(n < cap);
        lines[n].name = sg_slice(p, (size_t)(colon - p));
        lines[n].value = sg_slice(v, (size_t)(eol - v));
        n++;
        p = eol + 2;
    }
    return n;
}

static int listed_in_connection(const sg_http_response_t *r, sg_slice_t name)
{
    for (size_t i = 0; i < r->n_headers; i++)
        if (eq(r->headers[i].name, "Connection") &&
            sg_http_value_has_token(r->headers[i].value, name))
            return 1;
    return 0;
}

static int kept(const sg_http_response_t *r, sg_slice_t n)
{
    if (eq(n, "Upgrade")) return r->status == 101;
    if (eq(n, "Connection") || eq(n, "Keep-Alive") || eq(n, "Proxy-Connection") || eq(n, "TE"))
        return 0;
    if (eq(n, "Host") || eq(n, "Content-Length") || eq(n, "Transfer-Encoding")) return 1;
    return !listed_in_connection(r, n);
}

typedef struct {
    reader_t rd;
    uint8_t flags;
    int client_keep_alive, client_minor;
    sg_h1_parser_t res;
    xbuf_t head;            /* res_head */
    size_t parsed;          /* res_parsed */
    unsigned interim_count; /* interim_count */
    sg_h1_parser_t client;  /* the client reading what we forward */
} conn_t;

enum { MORE, STOP, BODY };

static void client_init(conn_t *c)
{
    sg_h1_reset(&c->client, HTTP_RESPONSE);
    c->client.skip_body = c->flags & 1;
    c->client.expect_upgrade = (c->flags >> 1) & 1;
}

/* The client reads n forwarded bytes; it must consume them all and finish
 * its message exactly when ours does. */
static int client_feed(conn_t *c, const char *base, const char *d, size_t n, int want_done)
{
    size_t consumed = 0;
    llhttp_errno_t err = sg_h1_execute(&c->client, base, d, n, &consumed);
    CHECK(err == HPE_OK);
    CHECK(consumed == n);
    CHECK(c->client.message_done == (unsigned)want_done);
    return MORE;
}

static void check_final(conn_t *c, size_t head_len, const sg_http_response_t *r, sg_slice_t out,
                        int close_after, int client_keep)
{
    size_t cap = r->n_headers + 4;
    line_t *lines = calloc(cap, sizeof(*lines));
    CHECK(lines != NULL);
    sg_slice_t start;
    size_t n = split_head(out, &start, lines, cap);
    /* The status line as received: the buffer's first line. */
    CHECK(same_bytes(start, r->status_line));
    CHECK(c->head.base + head_len >= r->status_line.base + r->status_line.len);
    CHECK(r->status_line.base == c->head.base + sg_h1_skip_blank_lines(c->head.base, head_len));

    size_t next = 0, conns = 0;
    for (size_t i = 0; i < n; i++) {
        const line_t *l = &lines[i];
        CHECK(!eq(l->name, "Keep-Alive") && !eq(l->name, "Proxy-Connection") && !eq(l->name, "TE"));
        if (eq(l->name, "Connection")) {
            const char *want = r->status == 101 ? "upgrade" : !client_keep ? "close" : "keep-alive";
            CHECK(eq(l->value, want));
            CHECK(i == n - 1);
            conns++;
            continue;
        }
        while (next < r->n_headers && !kept(r, r->headers[next].name)) next++;
        CHECK(next < r->n_headers);
        CHECK(same_bytes(l->name, r->headers[next].name));
        CHECK(same_bytes(l->value, r->headers[next].value));
        next++;
    }
    for (; next < r->n_headers; next++) CHECK(!kept(r, r->headers[next].name));
    size_t want_conns = (r->status == 101 || !client_keep || c->client_minor == 0) ? 1u : 0u;
    CHECK(conns == want_conns);
    if (close_after) CHECK(!client_keep);
    free(lines);
}

/* relay.c final_head and the body that follows: what the client gets is
 * the rewritten head and the body bytes that came with it. */
static int final_head(conn_t *c, const sg_h1_response_head_t *h)
{
    size_t head_len = h->head_len;
    const sg_http_response_t *r = &h->response;
    CHECK(r->status >= 200 || r->status == 101);
    CHECK(r->status <= 999);
    /* A Transfer-Encoding that goes on is one llhttp frames as chunked
     * (or the body is skipped anyway). */
    if (sg_http_find_header(r->headers, r->n_headers, SG_SLICE_LIT("transfer-encoding")))
        CHECK((c->res.llhttp.flags & F_CHUNKED) || c->res.skip_body);
    int status = r->status;
    int tunnel = status == 101;
    int close_after = h->body_to_eof;
    int client_keep = c->client_keep_alive && !close_after;
    sg_strbuf_t out = {0};
    sg_http_rewrite_response(r, client_keep, c->client_minor, &out);
    size_t rewritten = out.len;
    check_final(c, head_len, r, sg_slice(out.base, out.len), close_after, client_keep);
    size_t body_end = tunnel ? head_len : c->parsed;
    CHECK(body_end >= head_len);
    sg_strbuf_append(&out, c->head.base + head_len, body_end - head_len);

    /* The client reads the head and the body bytes that came with it. */
    client_init(c);
    size_t consumed = 0;
    llhttp_errno_t err = sg_h1_execute(&c->client, out.base, out.base, out.len, &consumed);
    CHECK(err == HPE_OK);
    CHECK(c->client.headers_done);
    CHECK(sg_h1_head_length(out.base, out.len) == rewritten);
    CHECK(consumed == out.len);
    CHECK(c->client.llhttp.status_code == status);
    if (tunnel) {
        CHECK(c->client.message_done);
        sg_strbuf_free(&out);
        return STOP;
    }
    CHECK(c->client.message_done == c->res.message_done);
    CHECK(!!llhttp_message_needs_eof(&c->client.llhttp) == !!close_after);
    sg_strbuf_free(&out);
    if (c->res.message_done) return STOP;

    /* response_body_input: later reads stream through the same parser. */
    const char *d;
    size_t n;
    while ((n = next_read(&c->rd, &d)) > 0) {
        size_t used = 0;
        err = sg_h1_execute(&c->res, NULL, d, n, &used);
        CHECK(used <= n);
        /* On an error relay.c still forwards the bytes before the error
         * position (which may include the offending byte), then cuts the
         * connection: the client sees a broken body, nothing to compare. */
        if (err != HPE_OK) return STOP;
        if (used && client_feed(c, NULL, d, used, c->res.message_done) == STOP) return STOP;
        if (c->res.message_done) return STOP;
        CHECK(used == n);
    }
    /* upstream_ended: EOF completes a close-delimited body. */
    if (llhttp_message_needs_eof(&c->res.llhttp) && sg_h1_finish(&c->res) == HPE_OK) {
        CHECK(close_after);
        CHECK(sg_h1_finish(&c->client) == HPE_OK);
        CHECK(c->client.message_done);
    }
    return STOP;
}

/* How the bytes were cut into reads must not matter: the same buffer parsed
 * in one go gives the same verdict and, when accepted, the same end and
 * spans. */
static int check_split_independent(conn_t *c, llhttp_errno_t err)
{
    sg_h1_parser_t one;
    sg_h1_init(&one, HTTP_RESPONSE, SG_MAX_HEADERS);
    one.skip_body = c->res.skip_body;
    one.expect_upgrade = c->res.expect_upgrade;
    size_t consumed = 0;
    llhttp_errno_t e = sg_h1_execute(&one, c->head.base, c->head.base, c->head.len, &consumed);
    int same = (e == HPE_OK) == (err == HPE_OK);
    if (same && err == HPE_OK) {
        CHECK(one.headers_done == c->res.headers_done && one.message_done == c->res.message_done);
        CHECK(consumed == c->parsed);
        CHECK(one.first_off == c->res.first_off && one.first_len == c->res.first_len);
        CHECK(one.n_spans == c->res.n_spans);
        for (size_t i = 0; i < one.n_spans; i++)
            CHECK(memcmp(&one.spans[i], &c->res.spans[i], sizeof(one.spans[i])) == 0);
    }
    sg_h1_free(&one);
    CHECK(same);
    return MORE;
}

/* relay.c response_head_input: the step decides, this acts. */
static int head_input(conn_t *c)
{
    for (;;) {
        size_t before = c->parsed;
        sg_h1_response_head_t h;
        sg_h1_head_step_t step = sg_h1_response_head_input(&c->res, c->head.base, c->head.len,
                                                           &c->parsed, &c->interim_count, &h);
        CHECK(c->parsed >= before && c->parsed <= c->head.len);
        if ((h.parse_error != HPE_OK || c->res.headers_done) &&
            check_split_independent(c, h.parse_error) == STOP)
            return STOP;
        if (step == SG_H1_HEAD_ERROR) { /* 502 */
            CHECK(h.detail != NULL);
            return STOP;
        }
        if (step == SG_H1_HEAD_MORE) {
            CHECK(!c->res.headers_done && c->parsed == c->head.len);
            CHECK(c->head.len <= SG_H1_MAX_RESPONSE_HEAD);
            return MORE;
        }
        /* A head: every span lies in it, the parser got at least that far,
         * and only blank lines come before its status line. */
        size_t head_len = h.head_len;
        CHECK(head_len == sg_h1_head_length(c->head.base, c->head.len));
        CHECK(head_len > 0 && head_len <= SG_H1_MAX_RESPONSE_HEAD && head_len <= c->parsed);
        CHECK(h.start % 2 == 0 && h.start < head_len && c->head.base[h.start] != '\r');
        for (size_t i = 0; i < h.start; i += 2)
            CHECK(c->head.base[i] == '\r' && c->head.base[i + 1] == '\n');
        CHECK((size_t)c->res.first_off + c->res.first_len <= head_len);
        for (size_t i = 0; i < c->res.n_spans; i++) {
            const sg_h1_span_t *s = &c->res.spans[i];
            CHECK((size_t)s->name_off + s->name_len <= head_len);
            CHECK((size_t)s->value_off + s->value_len <= head_len);
        }
        int status = c->res.llhttp.status_code;
        if (step == SG_H1_HEAD_DONE) return final_head(c, &h);

        /* Interim response: forwarded without the blank lines before it to
         * HTTP/1.1 clients, a few. */
        CHECK(step == SG_H1_HEAD_INTERIM);
        CHECK(status >= 100 && status < 200 && status != 101);
        CHECK(c->interim_count >= 1 && c->interim_count <= SG_H1_MAX_INTERIM);
        if (c->client_minor >= 1) {
            sg_slice_t fwd = sg_slice(c->head.base + h.start, head_len - h.start);
            sg_slice_t start;
            line_t lines[SG_MAX_HEADERS + 1];
            split_head(fwd, &start, lines, SG_MAX_HEADERS + 1);
            client_init(c);
            if (client_feed(c, fwd.base, fwd.base, fwd.len, 1) == STOP) return STOP;
            CHECK(c->client.llhttp.status_code == status);
        }
        /* The interim message ends with its head. */
        CHECK(c->parsed == head_len);
        xbuf_consume(&c->head, c->parsed);
        c->parsed = 0;
        sg_h1_response_next(&c->res);
        if (!c->head.len) return MORE;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2) return 0;
    conn_t *c = calloc(1, sizeof(*c));
    CHECK(c != NULL);
    c->flags = data[0];
    c->rd = (reader_t){.data = data + 2, .size = size - 2, .rng = 0x85EBCA6Bu ^ data[1]};
    c->client_keep_alive = (c->flags >> 2) & 1;
    c->client_minor = (c->flags >> 3) & 1;
    sg_h1_init(&c->res, HTTP_RESPONSE, SG_MAX_HEADERS);
    sg_h1_init(&c->client, HTTP_RESPONSE, SG_MAX_HEADERS + 8);
    c->res.skip_body = c->flags & 1;
    c->res.expect_upgrade = (c->flags >> 1) & 1;

    int state = MORE;
    while (state == MORE) {
        const char *d;
        size_t n = next_read(&c->rd, &d);
        if (!n) break; /* EOF before a complete head: 502 */
        xbuf_append(&c->head, d, n);
        state = head_input(c);
    }
    free(c->head.base);
    sg_h1_free(&c->res);
    sg_h1_free(&c->client);
    free(c);
    return 0;
}
