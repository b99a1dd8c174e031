/* The client side of the pipeline: accept, request head, routing, lookup,
 * upstream acquisition, error responses, timers and teardown. */
#include "proxy/conn.h"

#include "core/log.h"
#include "core/accesslog.h"
#include "http/errpage.h"
#include "http/h1_head.h"
#include "http/rewrite.h"
#include "net/listener.h"
#include "net/proxy_protocol.h"
#include "route/limits.h"
#include "route/mask.h"
#include "tls/tls.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SG_MAX_HEADERS 512
#define SG_INBUF_CAP (256 * 1024)
#define SG_LINGER_MS 2000

static void client_read_cb(sg_stream_t *s, ssize_t nread, sg_buf_t *buf);
static void head_input(sg_conn_t *c);

void sg_conn_unref(sg_conn_t *c)
{
    if (--c->refs) return;
    /* Nothing is in flight any more: every buffer can serve another
     * connection (new connections take them like idle ones do). */
    sg_relay_reset_response_input(c);
    sg_head_in_reset(&c->req_in);
    sg_conn_give_request_buffers(c);
    sg_h1_free(&c->req);
    sg_h1_free(&c->res);
    free(c);
}

static void client_closed_cb(sg_stream_t *s)
{
    sg_conn_unref(s->data);
}

static void timer_closed_cb(uv_handle_t *h)
{
    sg_conn_unref(h->data);
}

/* The exchange is over once its last response byte is queued: the slot of
 * max_incoming_connections goes back then, not when the client has read it
 * all or closed. */
void sg_conn_release_slot(sg_conn_t *c)
{
    if (c->counted_active) sg_limit_release(sg_slice(c->sandbox->id, c->sandbox->id_len));
    c->counted_active = 0;
}

static void drop_sandbox(sg_conn_t *c)
{
    sg_conn_release_slot(c);
    if (c->sandbox) sg_sandbox_unref(c->sandbox);
    c->sandbox = NULL;
}

void sg_conn_close(sg_conn_t *c)
{
    if (c->closing) return;
    sg_worker_t *w = c->w;
    if (c->in_request) {
        /* A request cut short: say by whom. A tunnel ending is its normal end. */
        sg_err_t why = c->state == SG_CONN_TUNNEL         ? SG_ERR_NONE
                       : c->client_eof || !c->res_started ? SG_ERR_CLIENT_CLOSED
                                                          : SG_ERR_UPSTREAM_TRUNCATED;
        sg_conn_observe(c, why);
    }
    c->closing = 1;
    if (c->lookup_pending) sg_lookup_cancel(&c->lookup);
    c->lookup_pending = 0;
    if (c->up_pending) sg_upstream_cancel(c->up_connecting);
    c->up_pending = 0;
    c->up_connecting = NULL;
    if (c->up) sg_relay_detach_upstream(c, 0);
    if (c->state == SG_CONN_TUNNEL) sg_counter_dec(&w->stats.tunnels_open);
    drop_sandbox(c);
    if (c->prev)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    sg_counter_dec(&w->stats.connections_open);
    if (c->listener) c->listener->open--;
    uv_close((uv_handle_t *)&c->timer, timer_closed_cb);
    sg_stream_close(&c->client, client_closed_cb);
}

int sg_conn_is_idle(const sg_conn_t *c)
{
    return c->state == SG_CONN_HEAD && !c->awaiting_flush && !c->in_request && !c->req_in.len &&
           !c->inbuf.len && !c->client_writes;
}

/* Reading the client is wanted unless backpressure, a full inbuf or the
 * connection's phase says otherwise. */
void sg_conn_update_reading(sg_conn_t *c)
{
    if (c->closing) return;
    int want =
        !c->client_paused && !c->client_eof && !c->client_spliced && c->inbuf.len < SG_INBUF_CAP;
    if (want && !c->client_reading) {
        if (sg_stream_read_start(&c->client, client_read_cb) == 0) c->client_reading = 1;
    } else if (!want && c->client_reading) {
        sg_stream_read_stop(&c->client);
        c->client_reading = 0;
    }
}

/* Lingering: the client's bytes are read and dropped until it closes. An
 * end that arrives before our own shutdown is out waits for it. */
static void linger_read_cb(sg_stream_t *s, ssize_t nread, sg_buf_t *buf)
{
    sg_conn_t *c = s->data;
    if (nread >= 0) return;
    if (c->linger_shutdown_pending) {
        c->client_eof = 1;
        return;
    }
    sg_conn_close(c);
}

static void linger_shutdown_cb(sg_stream_t *s, int status)
{
    sg_conn_t *c = s->data;
    c->linger_shutdown_pending = 0;
    if (status < 0 || c->closing || c->client_eof) {
        sg_conn_close(c);
        return;
    }
    if (c->client_reading) return; /* linger_read_cb since start_linger */
    /* Keep reading (and discarding) briefly so unread request bytes do not
     * make the kernel answer with RST and destroy the response in flight. */
    c->client_paused = 0;
    c->client_reading = 1;
    if (sg_stream_read_start(&c->client, linger_read_cb) != 0) sg_conn_close(c);
}

static void start_linger(sg_conn_t *c)
{
    c->state = SG_CONN_LINGER;
    sg_conn_arm_timer(c, SG_TIMER_LINGER, SG_LINGER_MS);
    /* A socket being read keeps being read, into linger_read_cb: stopping
     * it here and starting it again after the shutdown would cost two
     * epoll_ctl calls per closed connection (libuv re-registers it). */
    if (c->client_reading && !c->client_eof) {
        sg_stream_read_start(&c->client, linger_read_cb);
    } else if (c->client_reading) {
        sg_stream_read_stop(&c->client);
        c->client_reading = 0;
    }
    c->linger_shutdown_pending = 1;
    if (sg_stream_shutdown(&c->client, linger_shutdown_cb) != 0) sg_conn_close(c);
}

static void reset_request(sg_conn_t *c)
{
    drop_sandbox(c);
    sg_head_in_reset(&c->req_in);
    sg_h1_reset(&c->req, HTTP_REQUEST);
    sg_h1_reset(&c->res, HTTP_RESPONSE);
    /* The view points into the previous head's buffer: an error page or log
     * line for a head rejected before its own view is built must not read
     * it (wrong facts at best, freed memory at worst). */
    c->request = (sg_http_request_t){0};
    c->req_parsed = c->req_head_len = 0;
    c->retried = c->up_from_pool = 0;
    c->status = 0;
    c->keep_alive = c->close_after = c->upgrade = c->head_method = 0;
    c->req_done = c->req_broken = c->res_started = c->res_done = c->up_junk = 0;
    c->awaiting_flush = c->counted_request = c->body_streamed = 0;
    c->in_request = 0;
    c->t_start = c->t_connected = c->t_first_byte = 0;
    c->req_bytes_in = c->req_bytes_out = 0;
    c->upstream_addr[0] = '\0';
    c->route = (sg_route_t){0};
    c->host = sg_slice(NULL, 0);
    sg_relay_reset_response_input(c);
}

/* Starts the next request on a kept-alive connection: bytes that arrived
 * while the previous one was served become the new head buffer. */
static void next_request(sg_conn_t *c)
{
    reset_request(c);
    sg_head_in_swap_gathered(&c->req_in, &c->inbuf);
    sg_strbuf_reset(&c->inbuf);
    c->state = SG_CONN_HEAD;
    if (c->req_in.len) {
        sg_conn_arm_timer(c, SG_TIMER_HEAD, c->w->config->timeouts.request_head_ms);
        c->in_request = 1;
        c->t_start = uv_hrtime();
        head_input(c);
    } else {
        sg_conn_give_request_buffers(c); /* idle: it needs none of them */
        sg_conn_arm_timer(c, SG_TIMER_KEEPALIVE, c->w->config->timeouts.keepalive_idle_ms);
    }
    if (!c->closing) sg_conn_update_reading(c);
}

void sg_conn_client_flushed(sg_conn_t *c)
{
    if (c->closing || c->client_writes) return;
    if (c->state == SG_CONN_LINGER && c->timer_kind == SG_TIMER_FLUSH) {
        start_linger(c);
    } else if (c->awaiting_flush) {
        c->awaiting_flush = 0;
        next_request(c);
    }
}

/* Both halves of the exchange are over: keep the connection or close it. */
void sg_conn_request_finished(sg_conn_t *c)
{
    if (c->closing) return;
    sg_conn_release_slot(c);
    sg_conn_observe(c, SG_ERR_NONE);
    c->state = (c->close_after || !c->keep_alive || !c->req_done) ? SG_CONN_LINGER : SG_CONN_HEAD;
    c->awaiting_flush = c->state == SG_CONN_HEAD;
    sg_conn_arm_timer(c, SG_TIMER_FLUSH, c->w->config->timeouts.stream_idle_ms);
    sg_conn_client_flushed(c);
}

void sg_conn_send_error(sg_conn_t *c, sg_err_t err, const char *detail, int port)
{
    if (c->closing) return;
    if (c->lookup_pending) sg_lookup_cancel(&c->lookup);
    c->lookup_pending = 0;
    if (c->up_pending) sg_upstream_cancel(c->up_connecting);
    c->up_pending = 0;
    c->up_connecting = NULL;
    if (c->res_started) {
        /* Bytes of a response already went out: the only honest signal left
         * is cutting the connection. */
        sg_log_debug("conn %s: %s after response start, cutting", c->client_addr, sg_err_name(err));
        sg_conn_observe(c, err);
        sg_conn_close(c);
        return;
    }
    if (c->up) sg_relay_detach_upstream(c, 0);
    int html =
        c->req.headers_done && sg_errpage_wants_html(c->request.headers, c->request.n_headers);
    /* Keep the connection only when the request was read to its end. */
    int keep = c->keep_alive && c->req.message_done && err != SG_ERR_REQUEST_TIMEOUT &&
               sg_err_status(err) != 400 && sg_err_status(err) != 431 && sg_err_status(err) != 414;
    sg_errpage_t page = {.err = err, .detail = detail, .port = port};
    if (c->route.id.len && c->state != SG_CONN_HEAD) page.sandbox_id = c->route.id;
    sg_strbuf_reset(&c->res_out);
    sg_errpage_render(&c->res_out, &page, html, keep, c->head_method);
    c->status = sg_err_status(err);
    if (!c->req_bytes_in) c->req_bytes_in = c->req_in.len;
    sg_log_debug("conn %s: %d %s", c->client_addr, c->status, sg_err_name(err));
    c->res_started = c->res_done = 1;
    c->req_done = c->req.message_done;
    sg_conn_release_slot(c); /* before the bytes can reach the client */
    sg_relay_write_strbuf(c, 0, &c->res_out);
    sg_conn_observe(c, err);
    c->state = keep ? SG_CONN_HEAD : SG_CONN_LINGER;
    c->awaiting_flush = keep;
    sg_conn_arm_timer(c, SG_TIMER_FLUSH, c->w->config->timeouts.stream_idle_ms);
}

/* Called after bytes read from the client were taken in: while a request
 * body continues past them, the kernel ACKs them now rather than at its
 * delayed-ACK timer (sg_stream_ack_now says why that stalls uploads). */
static void ack_if_body_continues(sg_conn_t *c)
{
    if (!c->closing && c->req.headers_done && !c->req.message_done && !c->req_broken)
        sg_stream_ack_now(&c->client);
}

static void client_read_cb(sg_stream_t *s, ssize_t nread, sg_buf_t *buf)
{
    sg_conn_t *c = s->data;
    if (c->closing) return;
    if (nread < 0) {
        c->client_eof = 1;
        c->client_reading = 0;
        if (c->state == SG_CONN_TUNNEL) {
            sg_relay_tunnel_client_data(c, nread, NULL);
            return;
        }
        /* Between requests an EOF is a normal goodbye; during one it is an
         * abort, and the upstream connection goes with it. */
        sg_conn_close(c);
        return;
    }
    sg_counter_add(&c->w->stats.bytes_in, (uint64_t)nread);
    c->last_activity = uv_now(&c->w->loop);
    switch (c->state) {
    case SG_CONN_HEAD:
        if (c->awaiting_flush) break; /* previous response still flushing */
        if (c->timer_kind == SG_TIMER_KEEPALIVE)
            sg_conn_arm_timer(c, SG_TIMER_HEAD, c->w->config->timeouts.request_head_ms);
        if (!c->in_request) {
            c->t_start = uv_hrtime();
            sg_conn_take_request_buffers(c);
        }
        c->in_request = 1;
        sg_head_in_add(&c->req_in, buf, (size_t)nread);
        head_input(c);
        ack_if_body_continues(c);
        return;
    case SG_CONN_PROXYING:
        if (!c->req_done && !c->req_broken && !c->inbuf.len) {
            sg_conn_feed_body(c, buf->data, (size_t)nread, buf);
            ack_if_body_continues(c);
            return;
        }
        break;
    case SG_CONN_TUNNEL:
        sg_relay_tunnel_client_data(c, nread, buf);
        return;
    case SG_CONN_LINGER:
        return;
    case SG_CONN_ROUTING:
    case SG_CONN_CONNECTING:
        break;
    }
    sg_strbuf_append(&c->inbuf, buf->data, (size_t)nread);
    sg_conn_update_reading(c);
    ack_if_body_continues(c);
}

/* Body bytes of the current request: forwarded as they come, framed by the
 * request parser so the upstream never sees a second request smuggled in. */
void sg_conn_feed_body(sg_conn_t *c, const char *data, size_t len, sg_buf_t *buf)
{
    size_t consumed = 0;
    llhttp_errno_t err = sg_h1_execute(&c->req, NULL, data, len, &consumed);
    c->req_bytes_in += consumed;
    /* llhttp stops past the offending byte: forward nothing of a chunk that
     * failed (the upstream connection is dropped with the request anyway). */
    if (err != HPE_OK) consumed = 0;
    if (consumed) {
        c->body_streamed = 1;
        if (buf)
            sg_relay_write(c, 1, data, consumed, buf);
        else
            sg_relay_write_copy(c, 1, data, consumed);
    }
    if (err != HPE_OK) {
        c->req_broken = 1;
        c->close_after = 1;
        sg_conn_send_error(c, SG_ERR_BAD_REQUEST, llhttp_errno_name(err), 0);
        return;
    }
    if (c->req.message_done) {
        if (consumed < len) sg_strbuf_append(&c->inbuf, data + consumed, len - consumed);
        sg_conn_request_sent(c);
        return;
    }
    sg_relay_splice_request_body(c);
}

void sg_conn_request_sent(sg_conn_t *c)
{
    c->req_done = 1;
    if (c->res_done)
        sg_conn_request_finished(c);
    else if (!c->res.headers_done)
        sg_conn_arm_timer(c, SG_TIMER_RESPONSE, c->w->config->timeouts.upstream_response_head_ms);
}

static void on_sandbox(sg_conn_t *c, sg_err_t err, sg_sandbox_t *sb);

/* Counts a lookup outcome against the source that gave it (the last one
 * asked when none knew the id). */
static void count_lookup(sg_conn_t *c, int result)
{
    const sg_lookup_t *lk = &c->w->lookup;
    if (!lk->n_sources) return;
    size_t i = c->lookup.source_index < lk->n_sources ? c->lookup.source_index : lk->n_sources - 1;
    unsigned src = lk->sources[i]->metric_index;
    if (src < 3) sg_counter_inc(&c->w->stats.lookups[src][result]);
}

static int lookup_result(sg_err_t err)
{
    return err == SG_ERR_NONE ? 0 : err == SG_ERR_SANDBOX_NOT_FOUND ? 1 : 2;
}

static void lookup_cb(sg_lookup_req_t *req, sg_err_t err, sg_sandbox_t *sb)
{
    sg_conn_t *c = req->data;
    c->lookup_pending = 0;
    count_lookup(c, lookup_result(err));
    on_sandbox(c, err, sb);
}

static void upstream_cb(void *data, int status, sg_upstream_t *up)
{
    sg_conn_t *c = data;
    c->up_pending = 0;
    c->up_connecting = NULL;
    if (status == 0) {
        sg_conn_upstream_ready(c, up, 0);
    } else if (status == UV_ETIMEDOUT) {
        sg_conn_send_error(c, SG_ERR_UPSTREAM_CONNECT_TIMEOUT, NULL, 0);
    } else if (status == UV_ECONNREFUSED) {
        sg_conn_send_error(c, SG_ERR_PORT_NOT_OPEN, NULL, c->route.port);
    } else {
        sg_conn_send_error(c, SG_ERR_PORT_NOT_OPEN, uv_strerror(status), c->route.port);
    }
}

void sg_conn_get_upstream(sg_conn_t *c, int fresh)
{
    const sg_config_t *cfg = c->w->config;
    struct sockaddr_storage addr = c->sandbox->addr;
    if (addr.ss_family == AF_INET6)
        ((struct sockaddr_in6 *)&addr)->sin6_port = htons(c->route.port);
    else
        ((struct sockaddr_in *)&addr)->sin_port = htons(c->route.port);
    char ip[INET6_ADDRSTRLEN] = "";
    if (!sg_accesslog_enabled()) {
        /* only the access log shows it: no formatting per request otherwise */
    } else if (addr.ss_family == AF_INET6) {
        uv_ip6_name((struct sockaddr_in6 *)&addr, ip, sizeof(ip));
        snprintf(c->upstream_addr, sizeof(c->upstream_addr), "[%s]:%u", ip, c->route.port);
    } else {
        uv_ip4_name((struct sockaddr_in *)&addr, ip, sizeof(ip));
        snprintf(c->upstream_addr, sizeof(c->upstream_addr), "%s:%u", ip, c->route.port);
    }
    char key[SG_UPSTREAM_KEY_MAX];
    size_t key_len = sg_upstream_make_key(key, &addr);
    sg_upstream_opts_t opts = {.connect_timeout_ms = cfg->timeouts.upstream_connect_ms,
                               .retry_window_ms = cfg->timeouts.upstream_retry_window_ms,
                               .fresh = fresh};
    sg_upstream_t *up = NULL;
    c->state = SG_CONN_CONNECTING;
    int rc = sg_upstream_get(&c->w->upstreams, key, key_len, &addr, &opts, upstream_cb, c, &up);
    if (rc == 1) {
        sg_conn_upstream_ready(c, up, 1);
    } else if (rc == 0) {
        c->up_pending = 1;
        c->up_connecting = up;
    } else {
        sg_conn_send_error(c, SG_ERR_PORT_NOT_OPEN, uv_strerror(rc), c->route.port);
    }
}

static void on_sandbox(sg_conn_t *c, sg_err_t err, sg_sandbox_t *sb)
{
    if (err != SG_ERR_NONE) {
        sg_conn_send_error(c, err, NULL, 0);
        return;
    }
    c->sandbox = sb;
    const sg_config_t *cfg = c->w->config;
    if (sb->has_token) {
        sg_slice_t name = sg_slice_cstr(cfg->token_header);
        const sg_header_t *t = sg_http_find_header(c->request.headers, c->request.n_headers, name);
        char detail[160];
        if (!t || !sg_sandbox_token_ok(sb, t->value)) {
            snprintf(detail, sizeof(detail), t ? "%s does not match" : "send the %s header",
                     cfg->token_header);
            sg_conn_send_error(c, t ? SG_ERR_TOKEN_INVALID : SG_ERR_TOKEN_MISSING, detail, 0);
            return;
        }
    }
    if (sb->max_connections) {
        c->counted_active = sg_limit_acquire(sg_slice(sb->id, sb->id_len), sb->max_connections);
        if (!c->counted_active) {
            char detail[96];
            snprintf(detail, sizeof(detail), "the limit is %u concurrent connections",
                     sb->max_connections);
            sg_conn_send_error(c, SG_ERR_TOO_MANY_CONNECTIONS, detail, 0);
            return;
        }
    }
    sg_conn_get_upstream(c, 0);
}

/* The head is complete; the upstream is attached: send the rewritten head
 * with whatever body bytes came along, then stream the rest. */
void sg_conn_upstream_ready(sg_conn_t *c, sg_upstream_t *up, int from_pool)
{
    c->up = up;
    c->up_from_pool = from_pool;
    c->t_connected = uv_hrtime();
    if (!c->req_bytes_in) c->req_bytes_in = c->req_parsed;
    up->stream.data = c;
    c->state = SG_CONN_PROXYING;
    c->upstream_paused = c->upstream_eof = 0;
    /* A fresh response parser per attempt (a retry starts over). */
    sg_h1_reset(&c->res, HTTP_RESPONSE);
    c->res.skip_body = c->head_method;
    c->res.expect_upgrade = c->upgrade;
    sg_relay_reset_response_input(c);
    c->interim_count = 0;
    sg_stream_read_start(&up->stream, sg_relay_upstream_read_cb);

    if (!c->req_out.len) {
        const sg_sandbox_t *sb = c->sandbox;
        sg_rewrite_request_params_t p = {
            .client_addr = sg_slice_cstr(c->client_addr),
            .proto = c->client.is_tls ? SG_SLICE_LIT("https") : SG_SLICE_LIT("http"),
            .upgrade = c->upgrade,
            /* Tokens never travel upstream, whether or not this sandbox
             * needs one. */
            .strip_header = sg_slice_cstr(c->w->config->token_header),
        };
        sg_strbuf_reset(&c->scratch);
        if (sb->mask) {
            sg_mask_expand(&c->scratch, sg_slice_cstr(sb->mask), c->route.port);
            p.host = sg_slice(c->scratch.base, c->scratch.len);
            p.original_host = c->host;
        }
        sg_http_rewrite_request(&c->request, &p, &c->req_out);
        /* Body bytes that came with a gathered head join the rewritten one
         * (a copy: the head spanned reads); see the write below. */
        if (!c->req_in.buf)
            sg_strbuf_append(&c->req_out, c->req_in.base + c->req_head_len,
                             c->req_parsed - c->req_head_len);
        /* Bytes past this request's end belong to the next one. */
        if (c->req_parsed < c->req_in.len) {
            sg_strbuf_t rest = {0};
            sg_strbuf_append(&rest, c->req_in.base + c->req_parsed, c->req_in.len - c->req_parsed);
            sg_strbuf_append(&rest, c->inbuf.base, c->inbuf.len);
            sg_strbuf_free(&c->inbuf);
            c->inbuf = rest;
            sg_head_in_truncate(&c->req_in, c->req_parsed);
        }
    }
    /* Again on a retry: req_out and the read buffer outlive the attempt. */
    if (c->req_in.buf)
        sg_relay_write_strbuf_and(c, 1, &c->req_out, c->req_in.base + c->req_head_len,
                                  c->req_parsed - c->req_head_len, c->req_in.buf);
    else
        sg_relay_write_strbuf(c, 1, &c->req_out);
    if (c->req.message_done) {
        c->req_done = 1;
        sg_conn_arm_timer(c, SG_TIMER_RESPONSE, c->w->config->timeouts.upstream_response_head_ms);
        sg_conn_update_reading(c);
        return;
    }
    /* While the body streams, quiet time is what counts; the response-head
     * clock starts once the request is complete. */
    sg_conn_arm_timer(c, SG_TIMER_IDLE, c->w->config->timeouts.stream_idle_ms);
    if (c->inbuf.len) {
        /* Early body bytes that arrived during lookup/connect (a copy, rare). */
        sg_strbuf_t pending = c->inbuf;
        c->inbuf = (sg_strbuf_t){0};
        sg_conn_feed_body(c, pending.base, pending.len, NULL);
        sg_strbuf_free(&pending);
    }
    sg_conn_update_reading(c);
}

/* SNI and Host must agree: the connection's certificate covers the Host,
 * and the SNI (when sent) lies under the same served domain. Returns NULL or
 * the reason for a 421. */
static const char *tls_mismatch(sg_conn_t *c)
{
    size_t hl = strlen(c->host_lower);
    if (!sg_tls_stream_covers_host(&c->client, c->host_lower, hl))
        return "the certificate of this connection does not cover the Host";
    const char *sni = c->client.server_name;
    if (!sni) return NULL;
    sg_slice_t dom = sg_slice_cstr(c->w->config->domains[c->route.domain_index]);
    sg_slice_t name = sg_slice_cstr(sni);
    if (name.len > dom.len && name.base[name.len - dom.len - 1] == '.' &&
        sg_slice_eq_nocase(sg_slice(name.base + name.len - dom.len, dom.len), dom))
        return NULL;
    return "the Host is under a different domain than the TLS server name";
}

/* Plain listener in redirect mode: 308 to the same URL over HTTPS. */
static void send_redirect(sg_conn_t *c)
{
    sg_strbuf_t *b = &c->res_out;
    sg_strbuf_reset(b);
    sg_slice_t t = c->request.target;
    if (t.len && t.base[0] != '/') {
        /* absolute-form: keep what follows the authority */
        const char *auth = memmem(t.base, t.len, "://", 3);
        const char *p = auth ? auth + 3 : t.base + t.len;
        while (p < t.base + t.len && *p != '/' && *p != '?' && *p != '#') p++;
        t = sg_slice(p, (size_t)(t.base + t.len - p));
    }
    if (!t.len || t.base[0] != '/') {
        sg_strbuf_reset(&c->scratch);
        sg_strbuf_append(&c->scratch, "/", 1);
        sg_strbuf_append_slice(&c->scratch, t);
        t = sg_slice(c->scratch.base, c->scratch.len);
    }
    uint16_t port = c->w->https_port;
    sg_strbuf_appendf(b, "HTTP/1.1 308 Permanent Redirect\r\nLocation: https://%s", c->host_lower);
    if (port && port != 443) sg_strbuf_appendf(b, ":%u", port);
    sg_strbuf_append_slice(b, t);
    sg_strbuf_appendf(b, "\r\nContent-Length: 0\r\n%s\r\n",
                      c->keep_alive && c->req.message_done ? "" : "Connection: close\r\n");
    c->status = 308;
    c->res_started = c->res_done = 1;
    c->req_done = c->req.message_done;
    sg_relay_write_strbuf(c, 0, b);
    sg_conn_observe(c, SG_ERR_NONE);
    int keep = c->keep_alive && c->req.message_done;
    c->state = keep ? SG_CONN_HEAD : SG_CONN_LINGER;
    c->awaiting_flush = keep;
    sg_conn_arm_timer(c, SG_TIMER_FLUSH, c->w->config->timeouts.stream_idle_ms);
}

static void on_request_head(sg_conn_t *c, const sg_h1_request_head_t *h)
{
    sg_worker_t *w = c->w;
    sg_counter_inc(&w->stats.requests);
    c->keep_alive = h->keep_alive;
    c->head_method = h->head_method;
    c->upgrade = h->upgrade;

    const char *detail = NULL;
    sg_err_t err = sg_http_validate_request(&c->req, &c->request, &c->host, &detail);
    if (err != SG_ERR_NONE) {
        c->keep_alive = 0;
        sg_conn_send_error(c, err, detail, 0);
        return;
    }
    err = sg_route_parse_host(c->host, w->config->domains, w->config->n_domains, c->host_lower,
                              &c->route, &detail);
    if (err != SG_ERR_NONE) {
        sg_conn_send_error(c, err, err == SG_ERR_HOST_UNKNOWN_DOMAIN ? NULL : detail, 0);
        return;
    }
    if (c->client.is_tls) {
        detail = tls_mismatch(c);
        if (detail) {
            sg_conn_send_error(c, SG_ERR_MISDIRECTED, detail, 0);
            return;
        }
    } else if (w->config->tls.redirect_http) {
        send_redirect(c);
        return;
    }
    c->state = SG_CONN_ROUTING;
    sg_conn_arm_timer(c, SG_TIMER_NONE, 0);
    sg_strbuf_reset(&c->req_out);
    c->lookup.data = c;
    sg_sandbox_t *sb = NULL;
    if (sg_lookup_start(&w->lookup, &c->lookup, c->route.id, lookup_cb, &err, &sb)) {
        count_lookup(c, lookup_result(err));
        on_sandbox(c, err, sb);
    } else {
        count_lookup(c, 3);
        c->lookup_pending = 1;
    }
}

/* Parses what is new in req_in (http/h1_head.h decides); acts when the
 * head is complete. */
static void head_input(sg_conn_t *c)
{
    sg_h1_request_head_t h;
    switch (sg_h1_request_head_input(&c->req, c->req_in.base, c->req_in.len, &c->req_parsed,
                                     c->w->config->max_header_bytes, &h)) {
    case SG_H1_HEAD_MORE:
    case SG_H1_HEAD_INTERIM: /* responses only */
        sg_head_in_gather(&c->req_in);
        return;
    case SG_H1_HEAD_ERROR:
        /* Only a head that was read whole (its body bytes failed) has a
         * view to answer from (HTML or JSON). */
        if (h.has_view) c->request = h.request;
        sg_conn_send_error(c, h.err, h.detail, 0);
        return;
    case SG_H1_HEAD_DONE:
        break;
    }
    c->req_head_len = h.head_len;
    c->request = h.request;
    on_request_head(c, &h);
}

static void on_handshake(sg_stream_t *s)
{
    sg_conn_t *c = s->data;
    sg_conn_arm_timer(c, SG_TIMER_HEAD, c->w->config->timeouts.request_head_ms);
}

/* PROXY protocol: the real client address replaces the socket peer. */
static ssize_t proxy_preamble(sg_stream_t *s, const char *data, size_t len)
{
    sg_conn_t *c = s->data;
    sg_proxy_header_t h;
    ssize_t n = sg_proxy_protocol_parse(data, len, &h);
    if (n < 0) {
        sg_log_debug("conn %s: invalid PROXY protocol header", c->client_addr);
        return -1;
    }
    if (n > 0 && !h.local) {
        if (h.src.ss_family == AF_INET6)
            uv_ip6_name((struct sockaddr_in6 *)&h.src, c->client_addr, sizeof(c->client_addr));
        else
            uv_ip4_name((struct sockaddr_in *)&h.src, c->client_addr, sizeof(c->client_addr));
    }
    return n;
}

typedef struct {
    uv_tcp_t tcp;
    uv_write_t req;
} sg_reject_t;

static void reject_closed_cb(uv_handle_t *h)
{
    free(h->data);
}

static void reject_written_cb(uv_write_t *req, int status)
{
    sg_reject_t *r = req->data;
    uv_close((uv_handle_t *)&r->tcp, reject_closed_cb);
}

/* Over the listener's cap: answer 503 without allocating a connection, so
 * an overloaded worker sheds load cheaply. TLS listeners just close (a 503
 * would need a full handshake, the very cost being shed). */
static void reject_connection(sg_worker_t *w, sg_listener_t *l)
{
    static const char busy[] = "HTTP/1.1 503 Service Unavailable\r\n"
                               "Content-Type: application/json\r\nContent-Length: 57\r\n"
                               "X-Sandgate-Error: overloaded\r\nConnection: close\r\n\r\n"
                               "{\"message\":\"Too many connections, try again\",\"code\":503}\n";
    sg_reject_t *r = malloc(sizeof(*r));
    if (!r) abort();
    uv_tcp_init(&w->loop, &r->tcp);
    r->tcp.data = r;
    r->req.data = r;
    sg_counter_inc(&w->stats.connections_rejected);
    if (uv_accept((uv_stream_t *)&l->tcp, (uv_stream_t *)&r->tcp) != 0 || l->tls) {
        uv_close((uv_handle_t *)&r->tcp, reject_closed_cb);
        return;
    }
    uv_buf_t b = uv_buf_init((char *)busy, sizeof(busy) - 1);
    if (uv_write(&r->req, (uv_stream_t *)&r->tcp, &b, 1, reject_written_cb) != 0)
        uv_close((uv_handle_t *)&r->tcp, reject_closed_cb);
}

void sg_conn_accept(sg_worker_t *w, sg_listener_t *listener)
{
    if (listener->max_connections && listener->open >= listener->max_connections) {
        reject_connection(w, listener);
        return;
    }
    int tls = listener->tls && w->snap->tls;
    size_t extra = tls && sg_tls_stream_size > sizeof(sg_stream_t)
                       ? sg_tls_stream_size - sizeof(sg_stream_t)
                       : 0;
    sg_conn_t *c = calloc(1, sizeof(*c) + extra);
    if (!c) abort();
    c->w = w;
    int rc = tls ? sg_tls_stream_init(&c->client, &w->loop, &w->bufs, w->snap->tls, &w->tls_stats)
                 : sg_stream_tcp_init(&c->client, &w->loop, &w->bufs);
    if (rc != 0) {
        free(c);
        return;
    }
    c->client.data = c;
    c->client.on_handshake = tls ? on_handshake : NULL;
    c->client.preamble = listener->proxy_protocol ? proxy_preamble : NULL;
    c->listener = listener;
    listener->open++;
    uv_timer_init(&w->loop, &c->timer);
    c->timer.data = c;
    c->refs = 2;
    c->next = w->conns;
    if (c->next) c->next->prev = c;
    w->conns = c;
    sg_counter_inc(&w->stats.connections_accepted);
    sg_counter_inc(&w->stats.connections_open);
    if (uv_accept((uv_stream_t *)&listener->tcp, (uv_stream_t *)&c->client.tcp) != 0 ||
        (tls && sg_tls_stream_attach(&c->client) != 0)) {
        sg_conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->client.tcp, 1);
    sg_peer_address(&c->client.tcp, c->client_addr, sizeof(c->client_addr));
    sg_h1_init(&c->req, HTTP_REQUEST, SG_MAX_HEADERS);
    sg_h1_init(&c->res, HTTP_RESPONSE, SG_MAX_HEADERS);
    c->state = SG_CONN_HEAD;
    if (tls)
        sg_conn_arm_timer(c, SG_TIMER_HANDSHAKE, w->config->tls.handshake_timeout_ms);
    else
        sg_conn_arm_timer(c, SG_TIMER_HEAD, w->config->timeouts.request_head_ms);
    sg_conn_update_reading(c);
}
