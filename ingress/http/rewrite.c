#include "http/rewrite.h"

static const sg_slice_t h_connection = SG_SLICE_LIT("Connection");
static const sg_slice_t h_keep_alive = SG_SLICE_LIT("Keep-Alive");
static const sg_slice_t h_proxy_connection = SG_SLICE_LIT("Proxy-Connection");
static const sg_slice_t h_te = SG_SLICE_LIT("TE");
static const sg_slice_t h_upgrade = SG_SLICE_LIT("Upgrade");
static const sg_slice_t h_host = SG_SLICE_LIT("Host");
static const sg_slice_t h_content_length = SG_SLICE_LIT("Content-Length");
static const sg_slice_t h_transfer_encoding = SG_SLICE_LIT("Transfer-Encoding");
static const sg_slice_t h_xff = SG_SLICE_LIT("X-Forwarded-For");
static const sg_slice_t h_xfh = SG_SLICE_LIT("X-Forwarded-Host");
static const sg_slice_t h_xfp = SG_SLICE_LIT("X-Forwarded-Proto");

static int name_is(sg_slice_t name, sg_slice_t want)
{
    return sg_slice_eq_nocase(name, want);
}

static void emit(sg_strbuf_t *out, sg_slice_t name, sg_slice_t value)
{
    sg_strbuf_append_slice(out, name);
    sg_strbuf_append(out, ": ", 2);
    sg_strbuf_append_slice(out, value);
    sg_strbuf_append(out, "\r\n", 2);
}

static int listed_in_connection(const sg_header_t *hs, size_t n, sg_slice_t name)
{
    for (size_t i = 0; i < n; i++)
        if (name_is(hs[i].name, h_connection) && sg_http_value_has_token(hs[i].value, name))
            return 1;
    return 0;
}

/* Hop-by-hop removal shared by both directions. Connection's tokens are chosen
 * by the peer, so they may never remove framing or routing: the body is
 * streamed untouched, and dropping Content-Length / Transfer-Encoding would
 * let the next hop frame it differently (request smuggling). */
static int is_hop_by_hop(const sg_header_t *hs, size_t n, sg_slice_t name, int keep_upgrade,
                         int has_connection)
{
    if (name_is(name, h_upgrade)) return !keep_upgrade;
    if (name_is(name, h_connection) || name_is(name, h_keep_alive) ||
        name_is(name, h_proxy_connection) || name_is(name, h_te))
        return 1;
    if (!has_connection) return 0; /* the common case: nothing else can be listed */
    if (name_is(name, h_host) || name_is(name, h_content_length) ||
        name_is(name, h_transfer_encoding))
        return 0;
    return listed_in_connection(hs, n, name);
}

/* Whether any Connection header exists, so the per-header check of its
 * tokens (quadratic in the header count) only runs when it can matter. */
static int any_connection(const sg_header_t *hs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (name_is(hs[i].name, h_connection)) return 1;
    return 0;
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
        if (!name_is(h->name, h_xff) || h->value.len == 0) continue;
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
    sg_strbuf_appendf(out, " HTTP/1.%d\r\n", req->minor_version);

    const int replace_host = p->host.base != NULL;
    const int has_connection = any_connection(req->headers, req->n_headers);
    int host_done = 0, xff_done = 0;
    for (size_t i = 0; i < req->n_headers; i++) {
        const sg_header_t *h = &req->headers[i];
        if (is_hop_by_hop(req->headers, req->n_headers, h->name, p->upgrade, has_connection))
            continue;
        if (name_is(h->name, h_xfh) || name_is(h->name, h_xfp)) continue;
        if (p->strip_header.len && name_is(h->name, p->strip_header)) continue;
        if (replace_host && name_is(h->name, h_host)) {
            /* Duplicates go too: the sandbox must see exactly our value. */
            if (!host_done) emit(out, h->name, p->host);
            host_done = 1;
            continue;
        }
        if (name_is(h->name, h_xff)) {
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
    const int has_connection = any_connection(res->headers, res->n_headers);
    for (size_t i = 0; i < res->n_headers; i++) {
        const sg_header_t *h = &res->headers[i];
        if (is_hop_by_hop(res->headers, res->n_headers, h->name, upgraded, has_connection))
            continue;
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
