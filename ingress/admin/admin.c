/* Admin HTTP server: connection handling and routing. Sandbox endpoints
 * live in sandboxes.c. */
#include "admin/admin_internal.h"

#include "core/log.h"
#include "egress/egress.h"
#include "net/listener.h"

#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>

#define SG_ADMIN_MAX_REQUEST (64 * 1024)

static void admin_conn_read_cb(uv_stream_t *h, ssize_t nread, const uv_buf_t *buf);

static void conn_closed_cb(uv_handle_t *h)
{
    sg_admin_conn_t *c = h->data;
    sg_strbuf_free(&c->in);
    sg_strbuf_free(&c->out);
    sg_h1_free(&c->parser);
    free(c);
}

static void conn_close(sg_admin_conn_t *c)
{
    if (c->closing) return;
    c->closing = 1;
    sg_admin_t *a = c->admin;
    if (c->prev)
        c->prev->next = c->next;
    else
        a->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    uv_close((uv_handle_t *)&c->tcp, conn_closed_cb);
}

static void process(sg_admin_conn_t *c);

static void write_cb(uv_write_t *req, int status)
{
    sg_admin_conn_t *c = req->data;
    c->writing = 0;
    if (c->closing) return;
    if (status < 0 || !c->keep_alive) {
        conn_close(c);
        return;
    }
    /* Next request: drop the one just served and parse what follows. */
    memmove(c->in.base, c->in.base + c->consumed, c->in.len - c->consumed);
    c->in.len -= c->consumed;
    c->consumed = 0;
    sg_h1_reset(&c->parser, HTTP_REQUEST);
    uv_read_start((uv_stream_t *)&c->tcp, sg_admin__alloc_cb, admin_conn_read_cb);
    if (c->in.len) process(c);
}

static const char *reason(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 204:
        return "No Content";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 409:
        return "Conflict";
    case 411:
        return "Length Required";
    case 413:
        return "Payload Too Large";
    case 500:
        return "Internal Server Error";
    case 503:
        return "Service Unavailable";
    default:
        return "Unknown";
    }
}

void sg_admin__respond(sg_admin_conn_t *c, int status, const char *content_type, const char *body,
                       size_t len)
{
    sg_strbuf_reset(&c->out);
    sg_strbuf_appendf(&c->out, "HTTP/1.1 %d %s\r\n", status, reason(status));
    if (status == 401) sg_strbuf_append_cstr(&c->out, "WWW-Authenticate: Bearer\r\n");
    if (status != 204) {
        sg_strbuf_appendf(&c->out, "Content-Type: %s\r\nContent-Length: %zu\r\n", content_type,
                          len);
    }
    sg_strbuf_append_cstr(&c->out, "Cache-Control: no-store\r\n");
    if (!c->keep_alive) sg_strbuf_append_cstr(&c->out, "Connection: close\r\n");
    sg_strbuf_append_cstr(&c->out, "\r\n");
    if (status != 204 && !c->head_only) sg_strbuf_append(&c->out, body, len);
    uv_buf_t b = uv_buf_init(c->out.base, (unsigned)c->out.len);
    c->write_req.data = c;
    c->writing = 1;
    uv_read_stop((uv_stream_t *)&c->tcp);
    if (uv_write(&c->write_req, (uv_stream_t *)&c->tcp, &b, 1, write_cb) != 0) {
        c->writing = 0;
        conn_close(c);
    }
}

void sg_admin__respond_json(sg_admin_conn_t *c, int status, json_t *body)
{
    char *text = json_dumps(body, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(body);
    if (!text) {
        sg_admin__respond(c, 500, "application/json", "{\"message\":\"out of memory\"}", 27);
        return;
    }
    sg_admin__respond(c, status, "application/json", text, strlen(text));
    free(text);
}

void sg_admin__error(sg_admin_conn_t *c, int status, const char *field, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    /* Messages may quote client bytes: keep them printable ASCII so the JSON
     * string is always valid (jansson refuses invalid UTF-8). */
    for (char *q = msg; *q; q++)
        if ((unsigned char)*q < 0x20 || (unsigned char)*q >= 0x7f) *q = '?';
    json_t *o = json_object();
    json_object_set_new(o, "message", json_string(msg));
    if (field) json_object_set_new(o, "field", json_string(field));
    json_object_set_new(o, "code", json_integer(status));
    sg_admin__respond_json(c, status, o);
}

static int authorized(sg_admin_conn_t *c)
{
    const char *token = c->admin->token;
    if (!token) return 1;
    const sg_header_t *h = sg_http_find_header(c->request.headers, c->request.n_headers,
                                               SG_SLICE_LIT("authorization"));
    if (!h || h->value.len < 7 || strncasecmp(h->value.base, "Bearer ", 7) != 0) return 0;
    sg_slice_t given = sg_slice_trim(sg_slice(h->value.base + 7, h->value.len - 7));
    size_t tl = strlen(token);
    /* Constant time over the expected token's length. */
    return given.len == tl && CRYPTO_memcmp(given.base, token, tl) == 0;
}

static int path_is(sg_slice_t path, const char *p)
{
    return path.len == strlen(p) && memcmp(path.base, p, path.len) == 0;
}

void sg_admin_set_egress(sg_admin_t *a, struct sg_egress_s *eg)
{
    a->egress = eg;
}

static void route(sg_admin_conn_t *c, sg_slice_t body)
{
    sg_admin_t *a = c->admin;
    sg_slice_t target = c->request.target;
    const char *q = memchr(target.base, '?', target.len);
    sg_slice_t path = sg_slice(target.base, q ? (size_t)(q - target.base) : target.len);
    sg_slice_t query = q ? sg_slice(q + 1, target.len - path.len - 1) : sg_slice(NULL, 0);
    sg_slice_t m = c->request.method;
    int get = sg_slice_eq_nocase(m, SG_SLICE_LIT("GET")) || c->head_only;

    if (path_is(path, "/healthz")) {
        if (!get) goto not_allowed;
        sg_admin__respond(c, 200, "application/json", "{\"status\":\"ok\"}", 15);
        return;
    }
    if (path_is(path, "/readyz")) {
        if (!get) goto not_allowed;
        int ready = !a->hooks.ready || a->hooks.ready(a->hooks.ctx);
        if (ready)
            sg_admin__respond(c, 200, "application/json", "{\"status\":\"ready\"}", 18);
        else
            sg_admin__respond(c, 503, "application/json", "{\"status\":\"draining\"}", 21);
        return;
    }
    if (!authorized(c)) {
        sg_admin__error(c, 401, NULL, "missing or wrong admin token (Authorization: Bearer)");
        return;
    }
    if (path_is(path, "/metrics")) {
        if (!get) goto not_allowed;
        sg_strbuf_t text = {0};
        if (a->hooks.metrics) a->hooks.metrics(a->hooks.ctx, &text);
        sg_admin__respond(c, 200, "text/plain; version=0.0.4; charset=utf-8",
                          text.base ? text.base : "", text.len);
        sg_strbuf_free(&text);
        return;
    }
    if (path_is(path, "/v1/reload")) {
        if (!sg_slice_eq_nocase(m, SG_SLICE_LIT("POST"))) goto not_allowed;
        char err[8192] = "";
        if (!a->hooks.reload || a->hooks.reload(a->hooks.ctx, err, sizeof(err)) == 0) {
            sg_admin__respond(c, 200, "application/json", "{\"status\":\"reloaded\"}", 21);
        } else {
            json_t *errs = json_array();
            for (char *line = strtok(err, "\n"); line; line = strtok(NULL, "\n"))
                json_array_append_new(errs, json_string(line));
            json_t *o = json_object();
            json_object_set_new(o, "message", json_string("reload rejected"));
            json_object_set_new(o, "errors", errs);
            json_object_set_new(o, "code", json_integer(500));
            sg_admin__respond_json(c, 500, o);
        }
        return;
    }
    if (path_is(path, "/v1/egress/nftables")) {
        if (!get) goto not_allowed;
        if (!a->egress) {
            sg_admin__error(c, 404, NULL, "the egress role is off");
            return;
        }
        const char *rules = sg_egress_ruleset(a->egress);
        sg_admin__respond(c, 200, "text/plain; charset=utf-8", rules, strlen(rules));
        return;
    }
    if (path.len >= 13 && memcmp(path.base, "/v1/sandboxes", 13) == 0 &&
        (path.len == 13 || path.base[13] == '/')) {
        sg_admin__sandboxes(c, sg_slice(path.base + 13, path.len - 13), query, body);
        return;
    }
    sg_admin__error(c, 404, NULL, "no such endpoint");
    return;
not_allowed:
    sg_admin__error(c, 405, NULL, "method not allowed");
}

static void process(sg_admin_conn_t *c)
{
    c->head_only = 0; /* a previous HEAD must not shape this answer */
    size_t consumed = 0;
    llhttp_errno_t err = sg_h1_execute(&c->parser, c->in.base, c->in.base + c->parsed,
                                       c->in.len - c->parsed, &consumed);
    c->parsed += consumed;
    if (err != HPE_OK) {
        c->keep_alive = 0;
        sg_admin__error(c, 400, NULL, "malformed request: %s", llhttp_errno_name(err));
        return;
    }
    if (c->in.len > SG_ADMIN_MAX_REQUEST) {
        c->keep_alive = 0;
        sg_admin__error(c, 413, NULL, "request larger than %d bytes", SG_ADMIN_MAX_REQUEST);
        return;
    }
    if (!c->parser.message_done) return;
    size_t head_len = sg_h1_head_length(c->in.base, c->in.len);
    sg_h1_request_view(&c->parser, c->in.base, &c->request);
    c->keep_alive = llhttp_should_keep_alive(&c->parser.llhttp) != 0;
    c->head_only = sg_slice_eq_nocase(c->request.method, SG_SLICE_LIT("HEAD"));
    c->consumed = c->parsed;
    c->parsed = 0;
    if (c->parser.llhttp.flags & F_CHUNKED) {
        c->keep_alive = 0;
        sg_admin__error(c, 411, NULL, "send a Content-Length body");
        return;
    }
    route(c, sg_slice(c->in.base + head_len, c->consumed - head_len));
}

void sg_admin__alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *out)
{
    sg_admin_conn_t *c = h->data;
    sg_strbuf_reserve(&c->in, 16384);
    out->base = c->in.base + c->in.len;
    out->len = c->in.cap - c->in.len;
}

static void admin_conn_read_cb(uv_stream_t *h, ssize_t nread, const uv_buf_t *buf)
{
    sg_admin_conn_t *c = h->data;
    if (nread < 0) {
        if (!c->writing) conn_close(c);
        return;
    }
    c->in.len += (size_t)nread;
    if (!c->writing) process(c);
}

static void on_connection(uv_stream_t *server, int status)
{
    sg_admin_t *a = server->data;
    if (status < 0 || a->closing) return;
    sg_admin_conn_t *c = calloc(1, sizeof(*c));
    if (!c) abort();
    c->admin = a;
    uv_tcp_init(a->loop, &c->tcp);
    c->tcp.data = c;
    sg_h1_init(&c->parser, HTTP_REQUEST, 128);
    c->next = a->conns;
    if (c->next) c->next->prev = c;
    a->conns = c;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        conn_close(c);
        return;
    }
    uv_read_start((uv_stream_t *)&c->tcp, sg_admin__alloc_cb, admin_conn_read_cb);
}

static int is_loopback(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)ss)->sin_addr.s_addr) >> 24) == 127;
    if (ss->ss_family == AF_INET6)
        return IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)ss)->sin6_addr);
    return 0;
}

int sg_admin_start(uv_loop_t *loop, const sg_admin_conf_t *conf, sg_store_t *store,
                   const sg_admin_hooks_t *hooks, sg_admin_t **out)
{
    sg_admin_t *a = calloc(1, sizeof(*a));
    if (!a) abort();
    a->loop = loop;
    a->store = store;
    a->hooks = *hooks;
    sg_admin_set_token(a, conf->token);
    a->listeners = calloc(conf->n_listens ? conf->n_listens : 1, sizeof(*a->listeners));
    if (!a->listeners) abort();
    for (size_t i = 0; i < conf->n_listens; i++) {
        if (!a->token && !is_loopback(&conf->listens[i].addr)) {
            /* The config check refuses this too; keep the guarantee here. */
            sg_log_error("admin listen %s: not loopback and no admin.token", conf->listens[i].text);
            sg_admin_close(a);
            return UV_EACCES;
        }
        int rc =
            sg_listener_open(loop, &a->listeners[i],
                             (const struct sockaddr *)&conf->listens[i].addr, 128, on_connection);
        if (rc) {
            sg_log_error("admin listen %s: %s", conf->listens[i].text, uv_strerror(rc));
            sg_admin_close(a);
            return rc;
        }
        a->listeners[i].data = a;
        a->n_listeners++;
        sg_log_info("admin API on %s", conf->listens[i].text);
    }
    *out = a;
    return 0;
}

void sg_admin_set_token(sg_admin_t *a, const char *token)
{
    free(a->token);
    a->token = token ? strdup(token) : NULL;
}

static void listener_closed_cb(uv_handle_t *h)
{
    sg_admin_t *a = h->data;
    if (--a->open_listeners == 0) {
        free(a->listeners);
        free(a->token);
        free(a);
    }
}

void sg_admin_close(sg_admin_t *a)
{
    a->closing = 1;
    while (a->conns) conn_close(a->conns);
    a->open_listeners = a->n_listeners;
    if (!a->n_listeners) {
        free(a->listeners);
        free(a->token);
        free(a);
        return;
    }
    for (size_t i = 0; i < a->n_listeners; i++) {
        a->listeners[i].data = a;
        uv_close((uv_handle_t *)&a->listeners[i], listener_closed_cb);
    }
}
