/* One client connection and the request pipeline it runs (internal to
 * proxy/). The connection owns its client stream, one timer and, while a
 * request is in flight, one upstream connection taken from the worker's pool.
 *
 * Lifetime: refs counts the open handles (client stream, timer) plus every
 * write in flight on either side; the memory is freed when it drops to 0,
 * so callbacks that fire after conn_close still find valid memory. */
#ifndef SG_PROXY_CONN_H
#define SG_PROXY_CONN_H

#include "core/strbuf.h"
#include "http/h1.h"
#include "proxy/head_in.h"
#include "proxy/worker.h"
#include "route/host.h"

typedef enum {
    SG_CONN_HEAD,       /* reading a request head */
    SG_CONN_ROUTING,    /* sandbox lookup pending */
    SG_CONN_CONNECTING, /* upstream connect pending */
    SG_CONN_PROXYING,   /* request and response flowing */
    SG_CONN_TUNNEL,     /* after 101: raw bytes both ways */
    SG_CONN_LINGER      /* last response queued; closing politely */
} sg_conn_state_t;

/* What the connection's single timer is measuring. IDLE and FLUSH compare
 * against last_activity (refreshed by reads and completed writes) so busy
 * streams never re-arm the timer per byte. */
typedef enum {
    SG_TIMER_NONE,
    SG_TIMER_KEEPALIVE, /* idle between requests: close quietly */
    SG_TIMER_HEAD,      /* request head incomplete: 408 */
    SG_TIMER_RESPONSE,  /* waiting for the response head: 504 */
    SG_TIMER_IDLE,      /* body stream or tunnel quiet: close */
    SG_TIMER_FLUSH,     /* last response still being written: close when stuck */
    SG_TIMER_LINGER,    /* half-closed, draining unread input: close */
    SG_TIMER_HANDSHAKE  /* TLS handshake incomplete: close quietly */
} sg_timer_kind_t;

/* A write of forwarded bytes: references a read buffer (zero-copy) or owns
 * a heap copy. Recycled through the worker's free list. */
struct sg_fwd_write_s {
    sg_stream_write_t w;
    sg_conn_t *conn;
    sg_buf_t *buf;
    char *heap;
    int to_upstream;
    sg_upstream_t *up; /* target when to_upstream */
    sg_fwd_write_t *next_free;
};

struct sg_conn_s {
    sg_worker_t *w;
    sg_listener_t *listener;
    sg_conn_t *prev, *next;
    uv_timer_t timer;
    int refs;
    sg_conn_state_t state;
    sg_timer_kind_t timer_kind;
    uint64_t last_activity;
    uint64_t deadline;  /* loop time the current phase times out (not IDLE/FLUSH) */
    uint64_t timer_due; /* loop time the uv timer is armed for, 0 = not armed */
    char client_addr[48];

    /* request */
    sg_h1_parser_t req;
    /* The request head's bytes (proxy/head_in.h): in the read buffer they
     * came whole in, or gathered (a head that spans reads, or pipelined
     * bytes); body bytes that came in that read go to the sandbox from it. */
    sg_head_in_t req_in;
    size_t req_parsed; /* bytes of req_in given to the parser */
    size_t req_head_len;
    sg_strbuf_t inbuf; /* client bytes not yet processed (pipelined, early body) */
    sg_http_request_t request;
    sg_slice_t host; /* routing authority (Host or absolute-form) */
    char host_lower[SG_HOST_MAX + 1];
    sg_route_t route;
    sg_sandbox_t *sandbox;
    sg_lookup_req_t lookup;
    int lookup_pending;

    /* upstream */
    sg_upstream_t *up;
    int up_pending; /* connect in flight (up is NULL until it lands) */
    sg_upstream_t *up_connecting;
    int up_from_pool;
    int retried;
    sg_strbuf_t req_out; /* rewritten head + body bytes that came with it */
    sg_strbuf_t scratch; /* mask expansion, error pages */

    /* response */
    sg_h1_parser_t res;
    /* The response head's bytes, likewise (relay.c). */
    sg_head_in_t res_in;
    size_t res_parsed; /* bytes of res_in the parser consumed */
    sg_strbuf_t res_out;
    sg_http_response_t response;
    int status;
    unsigned interim_count;     /* 1xx responses passed on for this request */
    struct sg_splice_s *splice; /* body moving socket to socket (relay.c), or NULL */

    unsigned keep_alive : 1;  /* client asked to keep the connection */
    unsigned close_after : 1; /* close the client connection after this response */
    unsigned upgrade : 1;     /* request asked for an upgrade */
    unsigned head_method : 1;
    unsigned req_done : 1;    /* whole request handed to the upstream */
    unsigned req_broken : 1;  /* upstream stopped taking the request body */
    unsigned res_started : 1; /* response bytes queued to the client */
    unsigned res_done : 1;
    unsigned up_junk : 1;         /* upstream sent bytes past its response */
    unsigned client_paused : 1;   /* client reads stopped for backpressure */
    unsigned upstream_paused : 1; /* upstream reads stopped for backpressure */
    unsigned client_eof : 1, upstream_eof : 1;
    unsigned awaiting_flush : 1; /* next request waits for client writes */
    unsigned closing : 1;
    unsigned client_reading : 1;
    unsigned counted_request : 1;
    unsigned body_streamed : 1;  /* body bytes went upstream after req_out */
    unsigned client_spliced : 1; /* a request body splice reads the client socket */
    unsigned tunnel_close_pending : 1;
    unsigned counted_active : 1;          /* holds one of sandbox->active */
    unsigned in_request : 1;              /* bytes of a request arrived and it is not logged yet */
    unsigned linger_shutdown_pending : 1; /* start_linger's shutdown has not called back */
    uint64_t t_start, t_connected, t_first_byte; /* uv_hrtime() of this request's stages */
    uint64_t req_bytes_in, req_bytes_out;        /* client bytes of this request / response */
    char upstream_addr[64];                      /* "ip:port" of the sandbox service */
    unsigned client_writes;                      /* in flight to the client */
    unsigned upstream_writes;                    /* in flight to the upstream */
    /* Last: a TLS stream extends past sizeof(sg_stream_t); the connection
     * is allocated with room for it (sg_tls_stream_size). */
    sg_stream_t client;
};

/* conn.c */
void sg_conn_accept(sg_worker_t *w, sg_listener_t *listener);
void sg_conn_close(sg_conn_t *c);
/* True between requests with nothing received or owed (safe to close when
 * draining). */
int sg_conn_is_idle(const sg_conn_t *c);
/* Drops one reference; frees the connection at zero. */
void sg_conn_unref(sg_conn_t *c);
void sg_conn_send_error(sg_conn_t *c, sg_err_t err, const char *detail, int port);

/* conn_buffers.c: a request's heap buffers (head bytes, parser arrays, the
 * rewritten heads) lent to the worker while the connection is idle. */
/* Between requests, with nothing received or owed, and when the connection
 * is freed. A buffer a write in flight still reads stays with c. */
void sg_conn_give_request_buffers(sg_conn_t *c);
/* A request starts: takes a kit if the worker has one. */
void sg_conn_take_request_buffers(sg_conn_t *c);
/* Frees the request buffers idle connections gave back (worker teardown,
 * after every connection is freed). */
void sg_conn_free_spares(sg_worker_t *w);
/* Enters timer phase `kind`, timing out ms from now (proxy/timer.c). The
 * uv timer is only restarted when this deadline is earlier than the one it
 * is armed for; an early firing re-arms itself, so the timeout callback
 * runs only once the current phase's deadline has really passed. NONE
 * disarms logically (a pending firing then does nothing). */
void sg_conn_arm_timer(sg_conn_t *c, sg_timer_kind_t kind, uint64_t ms);
void sg_conn_update_reading(sg_conn_t *c);
void sg_conn_request_finished(sg_conn_t *c);
/* Gives back the sandbox's max_incoming_connections slot; called before the
 * last response bytes are queued so a client that already has its whole
 * response can never find the slot still taken. */
void sg_conn_release_slot(sg_conn_t *c);
void sg_conn_client_flushed(sg_conn_t *c);
void sg_conn_upstream_ready(sg_conn_t *c, sg_upstream_t *up, int from_pool);
void sg_conn_feed_body(sg_conn_t *c, const char *data, size_t len, sg_buf_t *buf);
/* The whole request body reached the upstream (parser or splice): finish
 * the request if its response is done, else wait for the response head. */
void sg_conn_request_sent(sg_conn_t *c);
void sg_conn_get_upstream(sg_conn_t *c, int fresh);

/* observe.c: per-request metrics and the access log line; once per
 * request (err SG_ERR_NONE for a proxied response). */
void sg_conn_observe(sg_conn_t *c, sg_err_t err);

/* relay.c: writes, backpressure, response and tunnel */
void sg_relay_write(sg_conn_t *c, int to_upstream, const char *data, size_t len, sg_buf_t *buf);
void sg_relay_write_copy(sg_conn_t *c, int to_upstream, const char *data, size_t len);
void sg_relay_write_strbuf(sg_conn_t *c, int to_upstream, sg_strbuf_t *sb);
/* head's bytes, then len bytes at body inside buf (referenced until the
 * write completes), in one write; head is the connection's and stays
 * untouched until then. */
void sg_relay_write_strbuf_and(sg_conn_t *c, int to_upstream, sg_strbuf_t *head, const char *body,
                               size_t len, sg_buf_t *buf);
void sg_relay_upstream_read_cb(sg_stream_t *s, ssize_t nread, sg_buf_t *buf);
void sg_relay_tunnel_client_data(sg_conn_t *c, ssize_t nread, sg_buf_t *buf);
void sg_relay_detach_upstream(sg_conn_t *c, int reusable);
/* Forgets the response head input (res_in, res_parsed), dropping the read
 * buffer it may reference: before each response attempt and when the
 * connection goes. */
void sg_relay_reset_response_input(sg_conn_t *c);
/* After body bytes were forwarded: hands the rest of a large Content-Length
 * request body to splice(2) when both sockets are plain (see relay.c). */
void sg_relay_splice_request_body(sg_conn_t *c);
void sg_fwd_write_free_all(sg_worker_t *w);

#endif
