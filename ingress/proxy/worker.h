/* A worker: one thread, one uv loop, its own listening sockets, buffer pool,
 * upstream pool and counters. Workers share only immutable data (the config
 * snapshot and the static sandbox table), so the request path takes no lock. */
#ifndef SG_PROXY_WORKER_H
#define SG_PROXY_WORKER_H

#include "config/config.h"
#include "core/buf.h"
#include "net/upstream.h"
#include "route/lookup.h"
#include "tls/tls.h"
#include <uv.h>

typedef struct sg_conn_s sg_conn_t;
typedef struct sg_fwd_write_s sg_fwd_write_t;

typedef struct {
    uint64_t connections_accepted;
    uint64_t connections_open;
    uint64_t requests;
    uint64_t responses_by_class[6]; /* index status/100 */
    uint64_t errors[32];            /* by sg_err_t */
    uint64_t bytes_in, bytes_out;   /* client side */
    uint64_t tunnels_open;
} sg_worker_stats_t;

/* Everything a reload replaces, published as one immutable unit. Workers
 * hold a reference to the one they serve with; a reload hands each worker
 * a new one and the old one goes when its last worker lets go. Records and
 * TLS contexts in use by live connections are reference-counted on their
 * own, so swapping never disturbs a request in flight. */
typedef struct sg_snapshot_s {
    _Atomic int refs;
    sg_config_t *config;
    sg_sandbox_table_t table;
    sg_tls_store_t *tls; /* NULL when no listener is TLS */
} sg_snapshot_t;

/* Takes over the caller's references to config and tls. */
sg_snapshot_t *sg_snapshot_new(sg_config_t *config, sg_tls_store_t *tls);
void sg_snapshot_ref(sg_snapshot_t *s);
void sg_snapshot_unref(sg_snapshot_t *s);

typedef struct sg_worker_s sg_worker_t;

typedef struct {
    uv_tcp_t tcp;
    sg_worker_t *worker;
    int tls;
    uint16_t port;
} sg_listener_t;

struct sg_worker_s {
    unsigned index;
    uv_loop_t loop;
    uv_thread_t thread;
    uv_async_t stop_async;
    sg_snapshot_t *snap;
    sg_config_t *config; /* snap->config, for brevity on the request path */
    uv_async_t reload_async;
    uv_mutex_t mailbox_lock;
    sg_snapshot_t *mailbox; /* next snapshot, posted by main */
    sg_lookup_t lookup;
    sg_lookup_source_t static_source;
    sg_buf_pool_t bufs;
    sg_upstream_pool_t upstreams;
    sg_listener_t *listeners;
    size_t n_listeners;
    uint16_t https_port; /* first TLS listener's port, for redirects */
    int listen_error;    /* first listener error, reported to main */
    sg_conn_t *conns;    /* every open client connection (doubly linked) */
    sg_fwd_write_t *free_writes;
    sg_worker_stats_t stats;
    sg_tls_counters_t tls_stats;
    int stopping;
};

/* Prepares the worker's loop and opens its listeners (on the calling thread,
 * so bind errors surface before serving starts). Returns 0 or a libuv error. */
int sg_worker_init(sg_worker_t *w, unsigned index, sg_snapshot_t *snap);
/* Thread-safe: the worker switches to snap (reference taken here) for new
 * connections and requests. */
void sg_worker_post_snapshot(sg_worker_t *w, sg_snapshot_t *snap);
/* Runs the loop on a new thread. */
int sg_worker_start(sg_worker_t *w);
/* Thread-safe: asks the worker to close everything and end its loop. */
void sg_worker_stop(sg_worker_t *w);
/* Joins the thread, then sg_worker_cleanup. */
void sg_worker_join(sg_worker_t *w);
/* Frees everything sg_worker_init made (also after a failed init). */
void sg_worker_cleanup(sg_worker_t *w);

#endif
