#include "http/h1_head.h"

#include <string.h>

/* 414 when the request line alone is over the bound (or has no end yet),
 * else 431. */
static sg_err_t too_large(const char *buf, size_t len, size_t max_head_bytes)
{
    const char *eol = memmem(buf, len, "\r\n", 2);
    int long_line = !eol || (size_t)(eol - buf) > max_head_bytes;
    return long_line ? SG_ERR_URI_TOO_LONG : SG_ERR_HEADERS_TOO_LARGE;
}

static sg_h1_head_step_t request_error(sg_h1_request_head_t *out, sg_err_t err, const char *detail)
{
    out->err = err;
    out->detail = detail;
    return SG_H1_HEAD_ERROR;
}

sg_h1_head_step_t sg_h1_request_head_input(sg_h1_parser_t *p, const char *buf, size_t len,
                                           size_t *parsed, size_t max_head_bytes,
                                           sg_h1_request_head_t *out)
{
    memset(out, 0, sizeof(*out));
    size_t consumed = 0;
    llhttp_errno_t err = sg_h1_execute(p, buf, buf + *parsed, len - *parsed, &consumed);
    *parsed += consumed;
    out->parse_error = err;
    if (!p->headers_done) {
        if (err != HPE_OK)
            return p->too_many ? request_error(out, SG_ERR_HEADERS_TOO_LARGE, NULL)
                               : request_error(out, SG_ERR_BAD_REQUEST, llhttp_errno_name(err));
        if (len > max_head_bytes)
            return request_error(out, too_large(buf, len, max_head_bytes), NULL);
        /* HTTP/0.9 ("GET /" and a line end) would wait for a version llhttp
         * never gets: refuse it as soon as the line is complete. */
        const char *eol = memmem(buf, len, "\r\n", 2);
        if (eol && !memmem(buf, (size_t)(eol - buf), " HTTP/", 6))
            return request_error(out, SG_ERR_BAD_REQUEST, "HTTP/0.9 is not supported");
        return SG_H1_HEAD_MORE;
    }
    const char *why;
    size_t head_len = sg_h1_head_scan(buf, len, &why);
    if (!head_len || head_len > max_head_bytes)
        return request_error(out, too_large(buf, len, max_head_bytes), NULL);
    if (why) return request_error(out, SG_ERR_BAD_REQUEST, why);
    sg_h1_request_view(p, buf, &out->request);
    out->has_view = 1;
    /* The head was fine but the body bytes that came with it are not. */
    if (err != HPE_OK) return request_error(out, SG_ERR_BAD_REQUEST, llhttp_errno_name(err));

    const sg_http_request_t *r = &out->request;
    out->head_len = head_len;
    out->keep_alive = llhttp_should_keep_alive(&p->llhttp) != 0;
    out->head_method = sg_slice_eq_nocase(r->method, SG_SLICE_LIT("HEAD"));
    const sg_header_t *upg = sg_http_find_header(r->headers, r->n_headers, SG_SLICE_LIT("upgrade"));
    const sg_header_t *conn_h =
        sg_http_find_header(r->headers, r->n_headers, SG_SLICE_LIT("connection"));
    out->upgrade = upg && conn_h && r->minor_version >= 1 &&
                   sg_http_value_has_token(conn_h->value, SG_SLICE_LIT("upgrade"));
    return SG_H1_HEAD_DONE;
}

/* Absolute-form target: returns the authority, or an empty slice (base
 * NULL). *bad is set when the authority carries userinfo. */
static sg_slice_t absolute_authority(sg_slice_t target, int *bad)
{
    sg_slice_t none = {NULL, 0};
    size_t skip = 0;
    if (target.len >= 7 && sg_slice_eq_nocase(sg_slice(target.base, 7), SG_SLICE_LIT("http://")))
        skip = 7;
    else if (target.len >= 8 &&
             sg_slice_eq_nocase(sg_slice(target.base, 8), SG_SLICE_LIT("https://")))
        skip = 8;
    if (!skip) return none;
    size_t end = skip;
    while (end < target.len && target.base[end] != '/' && target.base[end] != '?' &&
           target.base[end] != '#') {
        if (target.base[end] == '@') *bad = 1;
        end++;
    }
    return sg_slice(target.base + skip, end - skip);
}

sg_err_t sg_http_validate_request(const sg_h1_parser_t *p, const sg_http_request_t *r,
                                  sg_slice_t *authority_out, const char **detail)
{
    const sg_header_t *host = NULL;
    int te = 0;
    for (size_t i = 0; i < r->n_headers; i++) {
        const sg_header_t *h = &r->headers[i];
        if (sg_slice_eq_nocase(h->name, SG_SLICE_LIT("host"))) {
            if (host) {
                *detail = "duplicate Host header";
                return SG_ERR_BAD_REQUEST;
            }
            host = h;
        } else if (sg_slice_eq_nocase(h->name, SG_SLICE_LIT("transfer-encoding"))) {
            if (te++ || !sg_slice_eq_nocase(h->value, SG_SLICE_LIT("chunked"))) {
                *detail = "unsupported Transfer-Encoding";
                return SG_ERR_BAD_REQUEST;
            }
        }
    }
    if (p->llhttp.http_major != 1) {
        *detail = "unsupported HTTP version";
        return SG_ERR_BAD_REQUEST;
    }
    if (te && !(p->llhttp.flags & F_CHUNKED)) {
        *detail = "unsupported Transfer-Encoding";
        return SG_ERR_BAD_REQUEST;
    }
    if (te && r->minor_version == 0) {
        *detail = "Transfer-Encoding in an HTTP/1.0 request";
        return SG_ERR_BAD_REQUEST;
    }
    if (sg_slice_eq_nocase(r->method, SG_SLICE_LIT("CONNECT"))) {
        *detail = "CONNECT is not supported";
        return SG_ERR_BAD_REQUEST;
    }
    int bad = 0;
    sg_slice_t authority = absolute_authority(r->target, &bad);
    if (bad) {
        *detail = "userinfo in request target";
        return SG_ERR_BAD_REQUEST;
    }
    if (!authority.base && !(r->target.len && (r->target.base[0] == '/' ||
                                               (r->target.len == 1 && r->target.base[0] == '*')))) {
        *detail = "invalid request target";
        return SG_ERR_BAD_REQUEST;
    }
    if (authority.base) {
        if (host && !sg_slice_eq_nocase(host->value, authority)) return SG_ERR_HOST_CONFLICT;
        *authority_out = authority;
    } else if (host) {
        *authority_out = host->value;
    } else {
        *authority_out = sg_slice(NULL, 0);
    }
    if (!host && r->minor_version >= 1) return SG_ERR_HOST_MISSING;
    return SG_ERR_NONE;
}

static sg_h1_head_step_t response_error(sg_h1_response_head_t *out, const char *detail)
{
    out->detail = detail;
    return SG_H1_HEAD_ERROR;
}

sg_h1_head_step_t sg_h1_response_head_input(sg_h1_parser_t *p, const char *buf, size_t len,
                                            size_t *parsed, unsigned *interim_count,
                                            sg_h1_response_head_t *out)
{
    memset(out, 0, sizeof(*out));
    size_t consumed = 0;
    llhttp_errno_t err = sg_h1_execute(p, buf, buf + *parsed, len - *parsed, &consumed);
    *parsed += consumed;
    if (err != HPE_OK) {
        out->parse_error = err;
        return response_error(out, llhttp_errno_name(err));
    }
    if (!p->headers_done)
        return len > SG_H1_MAX_RESPONSE_HEAD ? response_error(out, "response head too large")
                                             : SG_H1_HEAD_MORE;
    const char *why;
    size_t head_len = sg_h1_head_scan(buf, len, &why);
    if (head_len > SG_H1_MAX_RESPONSE_HEAD) return response_error(out, "response head too large");
    if (!head_len) return response_error(out, "malformed response head");
    size_t start = sg_h1_skip_blank_lines(buf, head_len);
    if (why) return response_error(out, why);
    int status = p->llhttp.status_code;
    if (p->llhttp.http_major != 1 || status < 100 || status > 999)
        return response_error(out, "unsupported version or status");
    out->start = start;
    out->head_len = head_len;
    if (status < 200 && status != 101) {
        if (++*interim_count > SG_H1_MAX_INTERIM)
            return response_error(out, "too many interim responses");
        return SG_H1_HEAD_INTERIM;
    }
    sg_h1_response_view(p, buf, head_len, &out->response);
    if (sg_http_find_header(out->response.headers, out->response.n_headers,
                            SG_SLICE_LIT("transfer-encoding")) &&
        !(p->llhttp.flags & F_CHUNKED) && !p->skip_body)
        return response_error(out, "unsupported Transfer-Encoding");
    out->body_to_eof = status != 101 && llhttp_message_needs_eof(&p->llhttp);
    return SG_H1_HEAD_DONE;
}

void sg_h1_response_next(sg_h1_parser_t *p)
{
    unsigned skip = p->skip_body, upgrade = p->expect_upgrade;
    sg_h1_reset(p, HTTP_RESPONSE);
    p->skip_body = skip;
    p->expect_upgrade = upgrade;
}
