/* The egress proxy on one worker: listeners for the redirected traffic of
 * the sandboxes, and one connection object per intercepted TCP connection.
 *
 * A connection's way: accept -> original destination (SO_ORIGINAL_DST) and
 * sandbox (by source address) -> for port 80 the request head and its Host,
 * for port 443 the ClientHello and its SNI, for other ports nothing ->
 * verdict (egress/policy) -> an allowed name is resolved by sandgate itself
 * (c-ares) and the answer checked against the always-denied ranges -> dial
 * -> the sniffed bytes, then a two-way splice (net/pipe). A blocked
 * connection is closed without any byte reaching the destination.
 *
 * Threads: everything runs on the worker's loop; only the counters are read
 * from other threads (metrics). */
#ifndef SG_EGRESS_PROXY_H
#define SG_EGRESS_PROXY_H

#include "config/config.h"
#include "core/buf.h"
#include "core/counter.h"
#include "egress/egress.h"
#include "net/resolver.h"

#include <uv.h>

typedef enum {
    SG_EGRESS_HTTP,
    SG_EGRESS_TLS,
    SG_EGRESS_OTHER,
    SG_EGRESS_PROTO_COUNT
} sg_egress_proto_t;

const char *sg_egress_proto_name(sg_egress_proto_t p);

typedef struct {
    /* Every intercepted connection is counted once, when its fate is known:
     * [protocol][0 deny, 1 allow][reason]. An allowed connection whose dial
     * fails counts as deny/dial_failed. */
    sg_counter_t decisions[SG_EGRESS_PROTO_COUNT][2][SG_EGRESS_REASON_COUNT];
    sg_counter_t open;                /* connections open now */
    sg_counter_t bytes_out, bytes_in; /* sandbox -> destination, and back */
} sg_egress_stats_t;

typedef struct sg_egress_worker_s sg_egress_worker_t;
typedef struct sg_egress_conn_s sg_egress_conn_t;

typedef struct {
    uv_tcp_t tcp;
    sg_egress_worker_t *ew;
    sg_egress_proto_t proto;
} sg_egress_listener_t;

struct sg_egress_worker_s {
    uv_loop_t *loop;
    unsigned index;
    sg_buf_pool_t *bufs;
    const sg_egress_t *eg;
    const sg_egress_conf_t *conf; /* the worker's current snapshot's */
    sg_resolver_t *resolver;
    sg_egress_listener_t listeners[SG_EGRESS_PROTO_COUNT];
    unsigned n_listeners;
    sg_egress_conn_t *conns;  /* open connections (doubly linked) */
    sg_egress_stats_t *stats; /* the worker's (outlives this object) */
    /* The host's own addresses, never dialled (see is_host_address). */
#define SG_EGRESS_LOCAL_MAX 256
    struct sockaddr_storage local[SG_EGRESS_LOCAL_MAX];
    size_t n_local;
    uint64_t local_checked; /* loop time of the last refresh, 0 = never */
    int stopping;
};

/* Opens the configured egress listeners (SO_REUSEPORT, like the ingress
 * ones) and the resolver on loop. conf and eg are borrowed; eg outlives the
 * worker. Returns 0 or a libuv error (logged; what was opened is closed by
 * sg_egress_worker_close). */
int sg_egress_worker_init(sg_egress_worker_t *ew, uv_loop_t *loop, unsigned index,
                          sg_buf_pool_t *bufs, const sg_egress_t *eg, const sg_egress_conf_t *conf,
                          sg_egress_stats_t *stats);
/* Later connections use conf's timeouts and caps (reload). */
void sg_egress_worker_set_conf(sg_egress_worker_t *ew, const sg_egress_conf_t *conf);
/* Stops accepting (drain); open connections keep running. */
void sg_egress_worker_stop_listening(sg_egress_worker_t *ew);
/* Closes listeners, every connection and the resolver; memory goes in close
 * callbacks, so the loop must run afterwards. */
void sg_egress_worker_close(sg_egress_worker_t *ew);

#endif
