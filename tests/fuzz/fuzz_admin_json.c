/* libFuzzer harness for the admin API's request handling and sandbox JSON
 * validation (ingress/admin/admin.c, sandboxes.c) over a memory-only store.
 *
 * There is no pure entry point for the JSON validation (put_sandbox is
 * static and answers through the connection), so the harness drives the
 * real admin server through a fake of the few libuv calls it makes:
 * sg_listener_open, uv_tcp_init, uv_accept, uv_read_start/stop, uv_write,
 * uv_close, uv_buf_init and uv_strerror are defined here (libuv is not
 * linked). Reads are delivered through the server's own alloc/read
 * callbacks; each uv_write is captured as one response, checked, then
 * completed so keep-alive and pipelining run as in production.
 *
 * Input: byte 0 = flags, then
 *   bit 0 clear ("JSON mode"): the rest is a PUT body for /v1/sandboxes/<id>
 *     (id picked by bits 2-3). The harness frames it (Content-Length) and
 *     pipelines GET <id>, a list, a DELETE and a GET again; it checks the PUT
 *     verdict against an independent reading of the documented rules and the
 *     GET record against the accepted body;
 *   bit 0 set ("raw mode"): the rest is the client's raw byte stream, cut
 *     into reads by byte 1.
 *   bit 1: the admin token "s3cret" is configured (requests in JSON mode
 *     carry it).
 * Every response must be one well-formed HTTP/1.1 response (status line,
 * Content-Length matching the body, "Connection: close" when the server
 * closes); JSON bodies must parse, and errors must be {"message": non-empty
 * string, "field"?: string, "code": status}. */
#include "admin/admin_internal.h"
#include "net/listener.h"
#include "route/mask.h"

#include <arpa/inet.h>
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

#define TOKEN "s3cret"
#define MAX_RESPONSES 16

/* ---- a fake of the libuv calls admin.c makes ---------------------------- */

static struct {
    uv_connection_cb on_connection;
    uv_tcp_t *listener;
    uv_stream_t *reading; /* stream with reads started, NULL when stopped */
    uv_alloc_cb alloc_cb;
    uv_read_cb read_cb;
    uv_write_t *write_req; /* write in flight */
    uv_write_cb write_cb;
    char *written; /* its bytes */
    size_t written_len;
    uv_handle_t *closing[8];
    uv_close_cb close_cbs[8];
    size_t n_closing;
} fake;

int sg_listener_open(uv_loop_t *loop, uv_tcp_t *tcp, const struct sockaddr *addr, int backlog,
                     uv_connection_cb on_connection)
{
    memset(tcp, 0, sizeof(*tcp));
    tcp->loop = loop;
    tcp->type = UV_TCP;
    fake.on_connection = on_connection;
    fake.listener = tcp;
    return 0;
}

int uv_tcp_init(uv_loop_t *loop, uv_tcp_t *tcp)
{
    void *data = tcp->data;
    memset(tcp, 0, sizeof(*tcp));
    tcp->loop = loop;
    tcp->type = UV_TCP;
    tcp->data = data;
    return 0;
}

int uv_accept(uv_stream_t *server, uv_stream_t *client)
{
    return 0;
}

int uv_read_start(uv_stream_t *s, uv_alloc_cb alloc_cb, uv_read_cb read_cb)
{
    fake.reading = s;
    fake.alloc_cb = alloc_cb;
    fake.read_cb = read_cb;
    return 0;
}

int uv_read_stop(uv_stream_t *s)
{
    if (fake.reading == s) fake.reading = NULL;
    return 0;
}

uv_buf_t uv_buf_init(char *base, unsigned int len)
{
    uv_buf_t b;
    b.base = base;
    b.len = len;
    return b;
}

int uv_write(uv_write_t *req, uv_stream_t *s, const uv_buf_t bufs[], unsigned int nbufs,
             uv_write_cb cb)
{
    CHECK(fake.write_req == NULL); /* one response at a time */
    size_t total = 0;
    for (unsigned i = 0; i < nbufs; i++) total += bufs[i].len;
    fake.written = malloc(total ? total : 1);
    CHECK(fake.written != NULL);
    fake.written_len = 0;
    for (unsigned i = 0; i < nbufs; i++) {
        memcpy(fake.written + fake.written_len, bufs[i].base, bufs[i].len);
        fake.written_len += bufs[i].len;
    }
    req->handle = s;
    fake.write_req = req;
    fake.write_cb = cb;
    return 0;
}

void uv_close(uv_handle_t *h, uv_close_cb cb)
{
    CHECK(fake.n_closing < 8);
    if ((uv_stream_t *)h == fake.reading) fake.reading = NULL;
    fake.closing[fake.n_closing] = h;
    fake.close_cbs[fake.n_closing++] = cb;
}

const char *uv_strerror(int err)
{
    return "fake error";
}

/* ---- response checks ------------------------------------------------------ */

typedef struct {
    int status;
    int closes;   /* Connection: close */
    json_t *json; /* body, when application/json and not HEAD */
} response_t;

static response_t check_response(const char *r, size_t len, int head_only)
{
    response_t out = {0};
    sg_h1_parser_t p;
    sg_h1_init(&p, HTTP_RESPONSE, 32);
    p.skip_body = (unsigned)head_only;
    size_t consumed = 0;
    CHECK(sg_h1_execute(&p, r, r, len, &consumed) == HPE_OK);
    CHECK(p.headers_done && p.message_done && consumed == len);
    size_t head_len = sg_h1_head_length(r, len);
    CHECK(head_len > 0 && sg_h1_check_head_bytes(r, head_len) == NULL);
    CHECK(memcmp(r, "HTTP/1.1 ", 9) == 0);
    sg_http_response_t res;
    sg_h1_response_view(&p, r, head_len, &res);
    out.status = res.status;
    const sg_header_t *cl =
        sg_http_find_header(res.headers, res.n_headers, SG_SLICE_LIT("Content-Length"));
    const sg_header_t *ct =
        sg_http_find_header(res.headers, res.n_headers, SG_SLICE_LIT("Content-Type"));
    const sg_header_t *conn =
        sg_http_find_header(res.headers, res.n_headers, SG_SLICE_LIT("Connection"));
    out.closes = conn && sg_slice_eq_nocase(conn->value, SG_SLICE_LIT("close"));
    size_t body_len = len - head_len;
    if (res.status == 204) {
        CHECK(!cl && body_len == 0);
    } else {
        CHECK(cl != NULL && ct != NULL);
        char num[32];
        snprintf(num, sizeof(num), "%.*s", (int)cl->value.len, cl->value.base);
        size_t want = (size_t)strtoull(num, NULL, 10);
        CHECK(head_only ? body_len == 0 : body_len == want);
        if (!head_only && sg_slice_eq_nocase(ct->value, SG_SLICE_LIT("application/json"))) {
            json_error_t jerr;
            out.json = json_loadb(r + head_len, body_len, 0, &jerr);
            CHECK(out.json != NULL && json_is_object(out.json));
            if (res.status >= 400 && res.status != 500) {
                json_t *m = json_object_get(out.json, "message");
                json_t *f = json_object_get(out.json, "field");
                CHECK(json_is_string(m) && json_string_length(m) > 0);
                CHECK(f == NULL || json_is_string(f));
                CHECK(json_integer_value(json_object_get(out.json, "code")) == res.status);
            }
        }
    }
    sg_h1_free(&p);
    return out;
}

/* ---- the documented PUT rules, read independently ------------------------ */

typedef struct {
    int valid;
    char address[INET6_ADDRSTRLEN];
    const char *mask; /* borrowed from doc */
    int has_token;
    json_int_t max;
} expect_t;

static expect_t expect_put(const char *body, size_t len, json_t **doc_out)
{
    expect_t e = {0};
    json_error_t jerr;
    json_t *doc = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    *doc_out = doc;
    if (!json_is_object(doc)) return e;
    const char *key;
    json_t *v;
    json_object_foreach(doc, key, v)
    {
        if (strcmp(key, "address") && strcmp(key, "mask_request_host") &&
            strcmp(key, "traffic_access_token") && strcmp(key, "max_incoming_connections"))
            return e;
    }
    json_t *a = json_object_get(doc, "address");
    if (!json_is_string(a)) return e;
    unsigned char bin[16];
    if (inet_pton(AF_INET, json_string_value(a), bin) == 1)
        inet_ntop(AF_INET, bin, e.address, sizeof(e.address));
    else if (inet_pton(AF_INET6, json_string_value(a), bin) == 1)
        inet_ntop(AF_INET6, bin, e.address, sizeof(e.address));
    else
        return e;
    json_t *m = json_object_get(doc, "mask_request_host");
    if (m && !json_is_null(m)) {
        if (!json_is_string(m)) return e;
        /* 1..255 bytes of host[:port] characters and literal ${PORT}s. */
        const char *s = json_string_value(m);
        size_t n = json_string_length(m);
        if (n == 0 || n > 255) return e;
        for (size_t i = 0; i < n;) {
            if (s[i] == '$') {
                if (n - i < 7 || memcmp(s + i, "${PORT}", 7) != 0) return e;
                i += 7;
                continue;
            }
            unsigned char c = (unsigned char)s[i];
            if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                  (c && strchr("-.:[]_", c))))
                return e;
            i++;
        }
        e.mask = s;
    }
    json_t *t = json_object_get(doc, "traffic_access_token");
    if (t && !json_is_null(t)) {
        if (!json_is_string(t)) return e;
        size_t n = json_string_length(t);
        if (n < 1 || n > 1024) return e;
        for (size_t i = 0; i < n; i++) {
            unsigned char c = (unsigned char)json_string_value(t)[i];
            if (c < 0x21 || c > 0x7e) return e;
        }
        e.has_token = 1;
    }
    json_t *x = json_object_get(doc, "max_incoming_connections");
    if (x && !json_is_null(x)) {
        if (!json_is_integer(x) || json_integer_value(x) < 1 || json_integer_value(x) > 1000000)
            return e;
        e.max = json_integer_value(x);
    }
    e.valid = 1;
    return e;
}

/* ---- driving the server --------------------------------------------------- */

typedef struct {
    sg_admin_t *admin;
    sg_store_t *store;
    int removed; /* sandbox_removed hook calls */
    response_t res[MAX_RESPONSES];
    int head_only[MAX_RESPONSES]; /* known in JSON mode */
    size_t n_res;
    int closed;
} run_t;

static void on_removed(void *ctx, const char *id, const struct sockaddr_storage *addr)
{
    run_t *r = ctx;
    CHECK(id && id[0]);
    CHECK(addr != NULL);
    r->removed++;
}

/* Completes the write in flight (if any): records the response. */
static void flush_write(run_t *r, int head_only)
{
    while (fake.write_req) {
        uv_write_t *req = fake.write_req;
        uv_write_cb cb = fake.write_cb;
        /* The server omits the body when it believes the request was HEAD. */
        const sg_admin_conn_t *c = req->data;
        /* A malformed or oversized request is never answered as HEAD (F14:
         * head_only used to be left over from the previous request). */
        llhttp_errno_t perr = llhttp_get_errno(&c->parser.llhttp);
        int broken = (perr != HPE_OK && perr != HPE_PAUSED) || !c->parser.message_done;
        if (broken && c->head_only) CHECK(c->parser.llhttp.method == HTTP_HEAD);
        response_t res = check_response(fake.written, fake.written_len, head_only || c->head_only);
        free(fake.written);
        fake.written = NULL;
        fake.write_req = NULL;
        if (r->n_res < MAX_RESPONSES)
            r->res[r->n_res++] = res;
        else
            json_decref(res.json);
        cb(req, 0); /* may process the next pipelined request and write again */
    }
}

/* One read of n bytes through the server's alloc/read callbacks. */
static void deliver(run_t *r, const char *d, size_t n, int head_only)
{
    while (n && fake.reading) {
        uv_buf_t buf;
        uv_stream_t *s = fake.reading;
        fake.alloc_cb((uv_handle_t *)s, 65536, &buf);
        CHECK(buf.base != NULL && buf.len > 0);
        size_t k = n < buf.len ? n : buf.len;
        memcpy(buf.base, d, k);
        fake.read_cb(s, (ssize_t)k, &buf);
        d += k;
        n -= k;
        flush_write(r, head_only);
    }
}

static void run_close_callbacks(void)
{
    for (size_t i = 0; i < fake.n_closing; i++) fake.close_cbs[i](fake.closing[i]);
    fake.n_closing = 0;
}

static void start(run_t *r, int with_token)
{
    memset(&fake, 0, sizeof(fake));
    char err[256];
    CHECK(sg_store_open(NULL, NULL, &r->store, err, sizeof(err)) == 0);
    sg_listen_conf_t listen = {.text = "127.0.0.1:9901"};
    struct sockaddr_in *a4 = (struct sockaddr_in *)&listen.addr;
    a4->sin_family = AF_INET;
    a4->sin_addr.s_addr = htonl(0x7f000001);
    a4->sin_port = htons(9901);
    sg_admin_conf_t conf = {.listens = &listen, .n_listens = 1, .token = with_token ? TOKEN : NULL};
    sg_admin_hooks_t hooks = {.ctx = r, .sandbox_removed = on_removed};
    CHECK(sg_admin_start(NULL, &conf, r->store, &hooks, &r->admin) == 0);
    CHECK(fake.on_connection && fake.listener);
    fake.on_connection((uv_stream_t *)fake.listener, 0);
    CHECK(fake.reading != NULL);
}

static void finish(run_t *r)
{
    if (fake.reading) fake.read_cb(fake.reading, UV_EOF, NULL);
    CHECK(fake.write_req == NULL);
    sg_admin_close(r->admin);
    run_close_callbacks();
    sg_store_close(r->store);
    for (size_t i = 0; i < r->n_res; i++) json_decref(r->res[i].json);
}

/* Shortest, typical, longest (64) ids. */
static const char *const ids[] = {
    "a", "sbx1", "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqr", "zz"};

static void json_mode(run_t *r, uint8_t flags, const char *body, size_t len)
{
    const char *id = ids[(flags >> 2) & 3];
    const char *auth = (flags & 2) ? "Authorization: Bearer " TOKEN "\r\n" : "";
    sg_strbuf_t req = {0};
    sg_strbuf_appendf(
        &req, "PUT /v1/sandboxes/%s HTTP/1.1\r\nHost: admin\r\n%sContent-Length: %zu\r\n\r\n", id,
        auth, len);
    sg_strbuf_append(&req, body, len);
    sg_strbuf_appendf(&req, "GET /v1/sandboxes/%s HTTP/1.1\r\n%s\r\n", id, auth);
    sg_strbuf_appendf(&req, "GET /v1/sandboxes?limit=2&after= HTTP/1.1\r\n%s\r\n", auth);
    sg_strbuf_appendf(&req, "DELETE /v1/sandboxes/%s HTTP/1.1\r\n%s\r\n", id, auth);
    sg_strbuf_appendf(&req, "GET /v1/sandboxes/%s HTTP/1.1\r\nConnection: close\r\n%s\r\n", id,
                      auth);
    deliver(r, req.base, req.len, 0);
    sg_strbuf_free(&req);

    json_t *doc = NULL;
    expect_t e = expect_put(body, len, &doc);
    if (r->n_res != 5 || r->res[4].status != 404) {
        for (size_t i = 0; i < r->n_res; i++)
            fprintf(stderr, "response %zu: %d\n", i, r->res[i].status);
    }
    CHECK(r->n_res == 5);
    response_t *put = &r->res[0], *get = &r->res[1], *list = &r->res[2], *del = &r->res[3],
               *gone = &r->res[4];
    CHECK(gone->status == 404 && gone->closes);
    if (!e.valid) {
        if (put->status != 400) fprintf(stderr, "PUT answered %d, expected 400\n", put->status);
        CHECK(put->status == 400);
        CHECK(get->status == 404 && del->status == 404);
        CHECK(json_array_size(json_object_get(list->json, "sandboxes")) == 0);
        CHECK(r->removed == 0);
    } else {
        if (put->status != 201) {
            const char *m = json_string_value(json_object_get(put->json, "message"));
            fprintf(stderr, "PUT answered %d (%s), expected 201\n", put->status, m ? m : "");
        }
        CHECK(put->status == 201);
        /* The record as stored, never the token. */
        json_t *g = get->json;
        CHECK(get->status == 200 && g != NULL);
        CHECK(strcmp(json_string_value(json_object_get(g, "id")), id) == 0);
        CHECK(strcmp(json_string_value(json_object_get(g, "address")), e.address) == 0);
        json_t *gm = json_object_get(g, "mask_request_host");
        CHECK(e.mask ? (json_is_string(gm) && strcmp(json_string_value(gm), e.mask) == 0)
                     : json_is_null(gm));
        CHECK(json_is_true(json_object_get(g, "has_traffic_access_token")) == e.has_token);
        CHECK(json_object_get(g, "traffic_access_token") == NULL);
        json_t *gx = json_object_get(g, "max_incoming_connections");
        CHECK(e.max ? json_integer_value(gx) == e.max : json_is_null(gx));
        CHECK(json_array_size(json_object_get(list->json, "sandboxes")) == 1);
        CHECK(json_is_null(json_object_get(list->json, "next")));
        CHECK(del->status == 204);
        CHECK(r->removed == 1);
    }
    json_decref(doc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2 || size > 16384) return 0;
    run_t r = {0};
    uint8_t flags = data[0];
    start(&r, (flags >> 1) & 1);
    if (flags & 1) {
        /* Raw mode: reads of 1..64 bytes or all that is left. */
        uint32_t x = 0x27D4EB2Du ^ data[1];
        size_t pos = 2;
        while (pos < size && fake.reading) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            size_t n = (x & 3) == 3 ? size - pos : 1 + ((x >> 2) & 63);
            if (n > size - pos) n = size - pos;
            deliver(&r, (const char *)data + pos, n, 0);
            pos += n;
        }
        for (size_t i = 0; i < r.n_res; i++) {
            CHECK(r.res[i].status >= 200 && r.res[i].status <= 599);
            if (r.res[i].closes) CHECK(i + 1 == r.n_res);
        }
    } else {
        json_mode(&r, flags, (const char *)data + 1, size - 1);
    }
    finish(&r);
    return 0;
}
