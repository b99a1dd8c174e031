#include "http/rewrite.h"

static const sg_slice_t h_connection = SG_SLICE_LIT("Connection");
static const sg_slice_t h_host = SG_SLICE_LIT("Host");
static const sg_slice_t h_xff = SG_SLICE_LIT("X-Forwarded-For");
static const sg_slice_t h_xfh = SG_SLICE_LIT("X-Forwarded-Host");
static const sg_slice_t h_xfp = SG_SLICE_LIT("X-Forwarded-Proto");

static int name_is(sg_slice_t name, sg_slice_t want)
{
    return sg_slice_eq_nocase(name, want);
}

/* Copies n bytes; those of up to 16 (most header names and many values)
 * with two fixed-size, possibly overlapping moves inside [s, s + n) and
 * [d, d + n) instead of a call into the library's memcpy. */
static inline void copy(char *d, const char *s, size_t n)
{
    if (n >= 8 && n <= 16) {
        memcpy(d, s, 8);
        memcpy(d + n - 8, s + n - 8, 8);
    } else if (n >= 4 && n < 8) {
        memcpy(d, s, 4);
        memcpy(d + n - 4, s + n - 4, 4);
    } else if (n) {
        memcpy(d, s, n);
    }
}

/* One header line, with one room check for its four pieces. */
static void emit(sg_strbuf_t *out, sg_slice_t name, sg_slice_t value)
{
    sg_strbuf_reserve(out, name.len + value.len + 4);
    char *d = out->base + out->len;
    copy(d, name.base, name.len);
    d += name.len;
    *d++ = ':';
    *d++ = ' ';
    copy(d, value.base, value.len);
    d += value.len;
    *d++ = '\r';
    *d++ = '\n';
    out->len = (size_t)(d - out->base);
}

/* Up to this many Connection tokens are collected once per head; a head
 * listing more falls back to scanning the Connection values per header. */
#define SG_CONN_TOKENS_MAX 16

/* What the Connection headers of one head list. */
typedef struct {
    sg_slice_t tokens[SG_CONN_TOKENS_MAX];
    size_t n;
    int any;      /* at least one Connection header */
    int overflow; /* more tokens than fit: tokens[] is incomplete */
} conn_tokens_t;

static void collect_connection(const sg_header_t *hs, size_t n, conn_tokens_t *ct)
{
    ct->n = 0;
    ct->any = ct->overflow = 0;
    for (size_t i = 0; i < n; i++) {
        if (!name_is(hs[i].name, h_connection)) continue;
        ct->any = 1;
        size_t pos = 0;
        for (sg_slice_t t; (t = sg_http_value_next_element(hs[i].value, &pos)).base;) {
            if (ct->n == SG_CONN_TOKENS_MAX) {
                ct->overflow = 1;
                return;
            }
            ct->tokens[ct->n++] = t;
        }
    }
}

/* Whether a Connection header lists `name` (the elements compared as
 * sg_http_value_has_token does). */
static int listed_in_connection(const sg_header_t *hs, size_t n, const conn_tokens_t *ct,
                                sg_slice_t name)
{
    if (ct->overflow) {
        for (size_t i = 0; i < n; i++)
            if (name_is(hs[i].name, h_connection) && sg_http_value_has_token(hs[i].value, name))
                return 1;
        return 0;
    }
    for (size_t i = 0; i < ct->n; i++)
        if (name_is(ct->tokens[i], name)) return 1;
    return 0;
}

/* Hop-by-hop removal shared by both directions; id is sg_http_header_id(name).
 * Connection's tokens are chosen by the peer, so they may never remove
 * framing or routing: the body is streamed untouched, and dropping
 * Content-Length / Transfer-Encoding would let the next hop frame it
 * differently (request smuggling). */
static int is_hop_by_hop(const sg_header_t *hs, size_t n, const conn_tokens_t *ct,
                         sg_header_id_t id, sg_slice_t name, int keep_upgrade)
{
    switch (id) {
    case SG_HDR_UPGRADE:
        return !keep_upgrade;
    case SG_HDR_CONNECTION:
    case SG_HDR_KEEP_ALIVE:
    case SG_HDR_PROXY_CONNECTION:
    case SG_HDR_TE:
        return 1;
    case SG_HDR_HOST:
    case SG_HDR_CONTENT_LENGTH:
    case SG_HDR_TRANSFER_ENCODING:
        return 0;
    default:
        /* the common case: no Connection header, nothing else is listed */
        return ct->any && listed_in_connection(hs, n, ct, name);
    }
}

/* All client X-Forwarded-For values in order, then the client's own address,
 * as one comma-separated list under the first header's original name. */
static void emit_xff(sg_strbuf_t *out, const sg_http_request_t *req, size_t first,
                     sg_slice_t client)
{
    size_t mark = out->len;
    sg_strbuf_append_slice(out, req->headers[first].name);
    sg_strbuf_append(out, ": ", 2);
    size_t value_start = out->len;
    for (size_t i = first; i < req->n_headers; i++) {
        const sg_header_t *h = &req->headers[i];
        if (h->value.len == 0 || sg_http_header_id(h->name) != SG_HDR_X_FORWARDED_FOR) continue;
        if (out->len > value_start) sg_strbuf_append(out, ", ", 2);
        sg_strbuf_append_slice(out, h->value);
    }
    if (client.len) {
        if (out->len > value_start) sg_strbuf_append(out, ", ", 2);
        sg_strbuf_append_slice(out, client);
    }
    if (out->len == value_start) {
        out->len = mark; /* nothing to forward: no empty header */
        return;
    }
    sg_strbuf_append(out, "\r\n", 2);
}

void sg_http_rewrite_request(const sg_http_request_t *req, const sg_rewrite_request_params_t *p,
                             sg_strbuf_t *out)
{
    sg_strbuf_append_slice(out, req->method);
    sg_strbuf_append(out, " ", 1);
    sg_strbuf_append_slice(out, req->target);
    /* llhttp reads the minor version as one digit, written here directly:
     * a printf per request cost more than building the rest of the head. */
    if (req->minor_version >= 0 && req->minor_version <= 9) {
        char version[] = " HTTP/1.0\r\n";
        version[8] = (char)('0' + req->minor_version);
        sg_strbuf_append(out, version, sizeof(version) - 1);
    } else {
        sg_strbuf_appendf(out, " HTTP/1.%d\r\n", req->minor_version);
    }

    const int replace_host = p->host.base != NULL;
    conn_tokens_t ct;
    collect_connection(req->headers, req->n_headers, &ct);
    int host_done = 0, xff_done = 0;
    for (size_t i = 0; i < req->n_headers; i++) {
        const sg_header_t *h = &req->headers[i];
        sg_header_id_t id = sg_http_header_id(h->name);
        if (is_hop_by_hop(req->headers, req->n_headers, &ct, id, h->name, p->upgrade)) continue;
        if (id == SG_HDR_X_FORWARDED_HOST || id == SG_HDR_X_FORWARDED_PROTO) continue;
        if (p->strip_header.len && name_is(h->name, p->strip_header)) continue;
        if (replace_host && id == SG_HDR_HOST) {
            /* Duplicates go too: the sandbox must see exactly our value. */
            if (!host_done) emit(out, h->name, p->host);
            host_done = 1;
            continue;
        }
        if (id == SG_HDR_X_FORWARDED_FOR) {
            if (!xff_done) emit_xff(out, req, i, p->client_addr);
            xff_done = 1;
            continue;
        }
        emit(out, h->name, h->value);
    }

    /* HTTP/1.0 may omit Host; the mask still has to reach the sandbox. */
    if (replace_host && !host_done) emit(out, h_host, p->host);
    if (!xff_done && p->client_addr.len) emit(out, h_xff, p->client_addr);
    if (replace_host && p->original_host.len) emit(out, h_xfh, p->original_host);
    if (p->proto.len) emit(out, h_xfp, p->proto);
    if (p->upgrade) emit(out, h_connection, SG_SLICE_LIT("upgrade"));
    sg_strbuf_append(out, "\r\n", 2);
}

void sg_http_rewrite_response(const sg_http_response_t *res, int client_keep_alive,
                              int client_minor_version, sg_strbuf_t *out)
{
    sg_strbuf_append_slice(out, res->status_line);
    sg_strbuf_append(out, "\r\n", 2);

    const int upgraded = res->status == 101;
    conn_tokens_t ct;
    collect_connection(res->headers, res->n_headers, &ct);
    for (size_t i = 0; i < res->n_headers; i++) {
        const sg_header_t *h = &res->headers[i];
        sg_header_id_t id = sg_http_header_id(h->name);
        if (is_hop_by_hop(res->headers, res->n_headers, &ct, id, h->name, upgraded)) continue;
        emit(out, h->name, h->value);
    }

    if (upgraded)
        emit(out, h_connection, SG_SLICE_LIT("upgrade"));
    else if (!client_keep_alive)
        emit(out, h_connection, SG_SLICE_LIT("close"));
    else if (client_minor_version == 0)
        emit(out, h_connection, SG_SLICE_LIT("keep-alive"));
    sg_strbuf_append(out, "\r\n", 2);
}
