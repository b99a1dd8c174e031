/* A worker: one thread, one uv loop, its own listening sockets, buffer pool,
 * upstream pool and counters. Workers share only immutable data (the config
 * snapshot and the static sandbox table), so the request path takes no lock. */
#ifndef SG_PROXY_WORKER_H
#define SG_PROXY_WORKER_H

#include "config/config.h"
#include "core/buf.h"
#include "net/upstream.h"
#include "route/lookup.h"
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

typedef struct sg_worker_s {
    unsigned index;
    uv_loop_t loop;
    uv_thread_t thread;
    uv_async_t stop_async;
    sg_config_t *config;
    const sg_sandbox_table_t *static_table;
    sg_lookup_t lookup;
    sg_lookup_source_t static_source;
    sg_buf_pool_t bufs;
    sg_upstream_pool_t upstreams;
    uv_tcp_t *listeners;
    size_t n_listeners;
    int listen_error; /* first listener error, reported to main */
    sg_conn_t *conns; /* every open client connection (doubly linked) */
    sg_fwd_write_t *free_writes;
    sg_worker_stats_t stats;
    int stopping;
} sg_worker_t;

/* Prepares the worker's loop and opens its listeners (on the calling thread,
 * so bind errors surface before serving starts). Returns 0 or a libuv error. */
int sg_worker_init(sg_worker_t *w, unsigned index, sg_config_t *config,
                   const sg_sandbox_table_t *static_table);
/* Runs the loop on a new thread. */
int sg_worker_start(sg_worker_t *w);
/* Thread-safe: asks the worker to close everything and end its loop. */
void sg_worker_stop(sg_worker_t *w);
/* Joins the thread, then sg_worker_cleanup. */
void sg_worker_join(sg_worker_t *w);
/* Frees everything sg_worker_init made (also after a failed init). */
void sg_worker_cleanup(sg_worker_t *w);

#endif
