#include "http/errpage.h"

#include <jansson.h>
#include <stdlib.h>

static const char *reason_phrase(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 408:
        return "Request Timeout";
    case 414:
        return "URI Too Long";
    case 421:
        return "Misdirected Request";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 499: /* nginx's code for a client that left; never sent, only logged */
        return "Client Closed Request";
    case 500:
        return "Internal Server Error";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return "Error";
    }
}

/* jansson refuses invalid UTF-8; such bytes (never expected: ids are
 * [a-z0-9], details are our own) become '?' rather than losing the page. */
static json_t *json_text(const char *s, size_t len)
{
    json_t *j = json_stringn(s, len);
    if (j) return j;
    char *copy = malloc(len ? len : 1);
    if (!copy) abort();
    for (size_t i = 0; i < len; i++) copy[i] = ((unsigned char)s[i] < 0x80) ? s[i] : '?';
    j = json_stringn(copy, len);
    free(copy);
    if (!j) abort();
    return j;
}

static void obj_set(json_t *obj, const char *key, json_t *val)
{
    if (!val || json_object_set_new(obj, key, val) != 0) abort();
}

/* "<message>" or "<message>: <detail>" */
static void message_text(sg_strbuf_t *b, const sg_errpage_t *e, sg_err_t err)
{
    sg_strbuf_append_cstr(b, sg_err_message(err));
    if (e->detail && e->detail[0]) {
        sg_strbuf_append(b, ": ", 2);
        sg_strbuf_append_cstr(b, e->detail);
    }
}

static void render_json(sg_strbuf_t *body, const sg_errpage_t *e, sg_err_t err, const char *msg,
                        size_t msg_len)
{
    json_t *obj = json_object();
    if (!obj) abort();
    if (e->sandbox_id.len)
        obj_set(obj, "sandboxId", json_text(e->sandbox_id.base, e->sandbox_id.len));
    obj_set(obj, "message", json_text(msg, msg_len));
    if (e->port > 0) obj_set(obj, "port", json_integer(e->port));
    obj_set(obj, "code", json_integer(sg_err_status(err)));
    char *text = json_dumps(obj, JSON_PRESERVE_ORDER | JSON_COMPACT);
    json_decref(obj);
    if (!text) abort();
    sg_strbuf_append_cstr(body, text);
    free(text);
}

static void html_escape(sg_strbuf_t *b, const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        switch (c) {
        case '&':
            sg_strbuf_append_cstr(b, "&amp;");
            break;
        case '<':
            sg_strbuf_append_cstr(b, "&lt;");
            break;
        case '>':
            sg_strbuf_append_cstr(b, "&gt;");
            break;
        case '"':
            sg_strbuf_append_cstr(b, "&quot;");
            break;
        case '\'':
            sg_strbuf_append_cstr(b, "&#39;");
            break;
        default:
            /* Control bytes (NUL included) are parse errors in HTML. */
            if (c < 0x20 || c == 0x7f)
                sg_strbuf_append_cstr(b, "&#xFFFD;");
            else
                sg_strbuf_append(b, &s[i], 1);
        }
    }
}

static void render_html(sg_strbuf_t *body, const sg_errpage_t *e, int status, const char *reason,
                        const char *msg, size_t msg_len)
{
    char title[64];
    int tn = snprintf(title, sizeof(title), "%d %s", status, reason);
    size_t title_len = tn > 0 ? (size_t)tn : 0;

    sg_strbuf_append_cstr(body, "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n"
                                "<meta charset=\"utf-8\">\n"
                                "<meta name=\"viewport\" content=\"width=device-width, "
                                "initial-scale=1\">\n<title>");
    html_escape(body, title, title_len);
    sg_strbuf_append_cstr(body, "</title>\n<style>body{font-family:system-ui,sans-serif;"
                                "max-width:40rem;margin:4rem auto;padding:0 1rem;color:#222}"
                                "dt{font-weight:bold}</style>\n</head>\n<body>\n<h1>");
    html_escape(body, title, title_len);
    sg_strbuf_append_cstr(body, "</h1>\n<p>");
    html_escape(body, msg, msg_len);
    sg_strbuf_append_cstr(body, "</p>\n");
    if (e->sandbox_id.len || e->port > 0) {
        sg_strbuf_append_cstr(body, "<dl>\n");
        if (e->sandbox_id.len) {
            sg_strbuf_append_cstr(body, "<dt>Sandbox</dt><dd>");
            html_escape(body, e->sandbox_id.base, e->sandbox_id.len);
            sg_strbuf_append_cstr(body, "</dd>\n");
        }
        if (e->port > 0) sg_strbuf_appendf(body, "<dt>Port</dt><dd>%d</dd>\n", e->port);
        sg_strbuf_append_cstr(body, "</dl>\n");
    }
    sg_strbuf_append_cstr(body, "</body>\n</html>\n");
}

void sg_errpage_render(sg_strbuf_t *out, const sg_errpage_t *e, int html, int keep_alive,
                       int head_only)
{
    /* An error page for "no error" is a caller bug; say so rather than 200. */
    sg_err_t err = (e->err == SG_ERR_NONE) ? SG_ERR_INTERNAL : e->err;
    int status = sg_err_status(err);
    const char *reason = reason_phrase(status);

    sg_strbuf_t msg = {0}, body = {0};
    message_text(&msg, e, err);
    if (html)
        render_html(&body, e, status, reason, msg.base, msg.len);
    else
        render_json(&body, e, err, msg.base, msg.len);

    sg_strbuf_appendf(out,
                      "HTTP/1.1 %d %s\r\n"
                      "Content-Type: %s\r\n"
                      "Content-Length: %zu\r\n"
                      "Cache-Control: no-store\r\n"
                      "X-Sandgate-Error: %s\r\n"
                      "%s"
                      "\r\n",
                      status, reason, html ? "text/html; charset=utf-8" : "application/json",
                      body.len, sg_err_name(err), keep_alive ? "" : "Connection: close\r\n");
    if (!head_only) sg_strbuf_append(out, body.base, body.len);
    sg_strbuf_free(&msg);
    sg_strbuf_free(&body);
}

/* Browsers label navigations with Sec-Fetch-Mode; older ones are recognised by
 * putting text/html first in Accept, which fetch()/curl/SDKs never do. */
int sg_errpage_wants_html(const sg_header_t *headers, size_t n)
{
    const sg_header_t *mode = sg_http_find_header(headers, n, SG_SLICE_LIT("Sec-Fetch-Mode"));
    if (mode && sg_slice_eq_nocase(sg_slice_trim(mode->value), SG_SLICE_LIT("navigate"))) return 1;
    const sg_header_t *accept = sg_http_find_header(headers, n, SG_SLICE_LIT("Accept"));
    if (!accept) return 0;
    sg_slice_t v = accept->value;
    size_t end = 0;
    while (end < v.len && v.base[end] != ',' && v.base[end] != ';') end++;
    sg_slice_t first = sg_slice_trim(sg_slice(v.base, end));
    return sg_slice_eq_nocase(first, SG_SLICE_LIT("text/html"));
}
