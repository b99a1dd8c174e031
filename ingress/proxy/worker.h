/* A worker: one thread, one uv loop, its own listening sockets, buffer pool,
 * upstream pool and counters. Workers share only immutable data (the config
 * snapshot and the static sandbox table), so the request path takes no lock. */
#ifndef SG_PROXY_WORKER_H
#define SG_PROXY_WORKER_H

#include "config/config.h"
#include "core/buf.h"
#include "core/counter.h"
#include "core/strbuf.h"
#include "net/splice.h"
#include "net/upstream.h"
#include "core/qsbr.h"
#include "egress/proxy.h"
#include "route/dns.h"
#include "route/lookup.h"
#include "route/store.h"
#include "tls/tls.h"
#include <uv.h>

typedef struct sg_conn_s sg_conn_t;
typedef struct sg_fwd_write_s sg_fwd_write_t;

#define SG_LATENCY_BUCKETS 12
extern const uint64_t sg_latency_bounds_us[SG_LATENCY_BUCKETS];

typedef struct {
    sg_counter_t connections_accepted;
    sg_counter_t connections_open;
    sg_counter_t connections_rejected; /* over a listener's max_connections */
    sg_counter_t requests;
    sg_counter_t responses_by_class[6]; /* index status/100 */
    sg_counter_t errors[32];            /* by sg_err_t */
    sg_counter_t bytes_in, bytes_out;   /* client side */
    sg_counter_t bytes_spliced;         /* of bytes_out: moved socket to socket by splice(2) */
    sg_counter_t bytes_spliced_in;      /* of bytes_in: request bodies moved by splice(2) */
    sg_counter_t tunnels_open;
    /* Latency histograms: per-bucket (not cumulative) counts, bucket upper
     * bounds in sg_latency_bounds_us; sums in microseconds. */
    sg_counter_t first_byte_hist[SG_LATENCY_BUCKETS + 1];
    sg_counter_t total_hist[SG_LATENCY_BUCKETS + 1];
    sg_counter_t first_byte_sum_us, total_sum_us;
    sg_counter_t lookups[3][4]; /* [static, admin, dns][found, not found, failed, pending] */
    sg_dns_stats_t dns;         /* the DNS source counts here (outlives the source) */
    sg_egress_stats_t egress;   /* the egress proxy's counts */
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

/* What outlives snapshots and is shared by every worker. */
typedef struct {
    sg_qsbr_t *qsbr;           /* workers are its readers */
    sg_store_t *store;         /* admin store, NULL when not configured */
    const sg_egress_t *egress; /* egress role, NULL when off */
} sg_shared_t;

#define SG_KILL_QUEUE 64

/* A removed sandbox: its id (live connections) and address (idle pooled
 * connections, which are shared by every sandbox on that address). */
typedef struct {
    char id[SG_SANDBOX_ID_MAX + 1];
    struct sockaddr_storage addr;
} sg_worker_kill_t;

typedef struct {
    uv_tcp_t tcp;
    sg_worker_t *worker;
    int tls;
    int proxy_protocol;       /* a PROXY v1/v2 header must precede each connection */
    unsigned max_connections; /* per worker; 0 = unlimited */
    unsigned open;            /* client connections open on this listener (this worker) */
    uint16_t port;
} sg_listener_t;

/* Request buffers an idle connection gave back (proxy/conn.c). */
typedef struct sg_spare_kit_s sg_spare_kit_t;

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
    sg_lookup_source_t admin_source;
    sg_dns_source_t *dns;
    sg_shared_t shared;
    sg_qsbr_reader_t qsbr_reader;
    uv_check_t qsbr_check;
    uv_timer_t qsbr_tick;    /* keeps an idle loop iterating so frees are not held back */
    unsigned buf_trim_ticks; /* qsbr_tick firings since the buffer pool was trimmed */
    /* sandboxes whose connections must be cut (admin DELETE), posted by main */
    sg_worker_kill_t kills[SG_KILL_QUEUE];
    size_t n_kills;
    int kill_overflow;  /* too many at once: cut by re-checking every connection */
    uv_async_t *exited; /* main's: signalled when this worker's loop has ended */
    _Atomic int exited_flag;
    int drain_requested;
    int draining;
    uint64_t drain_deadline;
    sg_buf_pool_t bufs;
    sg_upstream_pool_t upstreams;
    sg_splice_pool_t splices;
    sg_listener_t *listeners;
    size_t n_listeners;
    uint16_t https_port;       /* first TLS listener's port, for redirects */
    int listen_error;          /* first listener error, reported to main */
    sg_conn_t *conns;          /* every open client connection (doubly linked) */
    sg_egress_worker_t egress; /* egress listeners and connections (egress.enabled) */
    int egress_on;
    sg_fwd_write_t *free_writes;
    sg_spare_kit_t *spares;        /* request buffers of idle connections */
    sg_spare_kit_t *spare_holders; /* empty kits, for reuse */
    unsigned n_spare_kits;         /* allocated, full or empty */
    sg_worker_stats_t stats;
    sg_tls_counters_t tls_stats;
    sg_strbuf_t log_line; /* access-log line being built (reused) */
    int stopping;
};

/* Prepares the worker's loop and opens its listeners (on the calling thread,
 * so bind errors surface before serving starts). Returns 0 or a libuv error. */
int sg_worker_init(sg_worker_t *w, unsigned index, sg_snapshot_t *snap, const sg_shared_t *shared);
/* Thread-safe: cut every connection (streaming or tunnelled) of sandbox id,
 * and the idle pooled upstream connections to addr (its address), at once. */
void sg_worker_post_kill(sg_worker_t *w, const char *id, const struct sockaddr_storage *addr);
/* Thread-safe: stop accepting, let requests in flight finish, close idle
 * connections; after deadline_ms everything still open is closed and the
 * loop ends. */
void sg_worker_drain(sg_worker_t *w, uint64_t deadline_ms);
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
