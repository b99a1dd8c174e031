/* Connections to sandbox services: connect with retry while a port is still
 * opening, and a per-worker pool of idle keep-alive connections keyed by the
 * destination (address, port). Sandboxes that share an address (several
 * services of one docker host, say) share its idle connections: a connection
 * is to a server, not to a sandbox record. Removing a sandbox drops the idle
 * connections to its address (sg_upstream_pool_drop_addr), so an address
 * handed to a new VM never inherits connections made to the old one.
 * Knows nothing of HTTP: callers decide when a connection is reusable. */
#ifndef SG_NET_UPSTREAM_H
#define SG_NET_UPSTREAM_H

#include "core/counter.h"
#include "net/stream.h"
#include <netinet/in.h>

#define SG_UPSTREAM_KEY_MAX 18 /* IPv6 address + port */

typedef struct sg_upstream_s sg_upstream_t;
typedef struct sg_upstream_pool_s sg_upstream_pool_t;

/* Fires once per pending sg_upstream_get: status 0 with a connected
 * upstream now owned by the caller, UV_ECONNREFUSED when the port stayed
 * closed (or unreachable) for the whole retry window, UV_ETIMEDOUT when an
 * attempt timed out, or another negative libuv error. */
typedef void (*sg_upstream_cb)(void *data, int status, sg_upstream_t *up);

typedef struct {
    uint64_t connect_timeout_ms; /* per attempt */
    uint64_t retry_window_ms;    /* keep retrying refused connects this long */
    int fresh;                   /* skip the pool (retry after a stale pooled connection) */
} sg_upstream_opts_t;

struct sg_upstream_s {
    sg_stream_t stream; /* first: a sg_stream_t * converts back */
    sg_upstream_pool_t *pool;
    uv_timer_t timer; /* connect timeout, retry backoff, idle expiry */
    char key[SG_UPSTREAM_KEY_MAX];
    size_t key_len;
    size_t bucket;
    struct sockaddr_storage addr;
    sg_upstream_opts_t opts;
    uint64_t deadline;   /* end of the retry window (loop time, ms) */
    uint64_t idle_since; /* loop time of the last release to the pool */
    unsigned attempts;
    unsigned backoff_ms;
    int last_error;
    sg_upstream_cb cb;
    void *cb_data;
    sg_upstream_t *idle_prev, *idle_next; /* bucket list while idle */
    uv_connect_t connect_req;
    uint64_t served; /* requests finished on this connection */
    enum { SG_UP_CONNECTING, SG_UP_BACKOFF, SG_UP_ACTIVE, SG_UP_IDLE, SG_UP_CLOSING } state;
    unsigned handles_open; /* stream + timer; freed when 0 */
    int reconnecting;      /* closing the socket only to retry */
};

typedef struct {
    sg_counter_t hits;        /* requests served by a pooled connection */
    sg_counter_t misses;      /* requests that needed a new connection */
    sg_counter_t connects_ok; /* successful connects */
    sg_counter_t connect_failures;
    sg_counter_t open; /* connections currently open (any state) */
} sg_upstream_stats_t;

struct sg_upstream_pool_s {
    uv_loop_t *loop;
    sg_buf_pool_t *bufs;
    sg_upstream_t **buckets; /* idle lists */
    size_t *bucket_idle;     /* connections on each idle list */
    size_t n_buckets;
    size_t max_idle_per_key;
    uint64_t idle_timeout_ms;
    sg_upstream_stats_t stats;
    int closing;
};

void sg_upstream_pool_init(sg_upstream_pool_t *pool, uv_loop_t *loop, sg_buf_pool_t *bufs,
                           size_t max_idle_per_key, uint64_t idle_timeout_ms);
/* Closes every idle connection; later releases close instead of pooling. */
void sg_upstream_pool_close(sg_upstream_pool_t *pool);

/* Builds the pool key for (address, port) into key (SG_UPSTREAM_KEY_MAX
 * bytes); returns its length. */
size_t sg_upstream_make_key(char *key, const struct sockaddr_storage *addr_with_port);

/* Takes an idle connection for key (returns 1, *out set, no callback; its
 * read side is still started with the pool's callback, so the caller must
 * call sg_stream_read_start or read_stop before returning to the loop) or
 * starts connecting to addr (returns 0; *out is the pending attempt, good
 * only for sg_upstream_cancel; cb fires later unless cancelled). Returns a
 * negative libuv error when a connect cannot even start. */
int sg_upstream_get(sg_upstream_pool_t *pool, const char *key, size_t key_len,
                    const struct sockaddr_storage *addr, const sg_upstream_opts_t *opts,
                    sg_upstream_cb cb, void *data, sg_upstream_t **out);

/* Abandons a pending get: no callback fires; the attempt is torn down. */
void sg_upstream_cancel(sg_upstream_t *up);

/* Returns an owned connection after a request. reusable=1 parks it in the
 * pool (read side watched for close, idle timer armed); 0 closes it. The
 * caller must not touch it afterwards. A connection with bytes still waiting
 * in libuv's write queue is closed even when reusable=1 (the sandbox answered
 * before it had the whole request). Writes the kernel already took but whose
 * callbacks have not run yet (deferred to the check phase) do not count:
 * those callbacks still fire, for the writer that submitted them. */
void sg_upstream_release(sg_upstream_t *up, int reusable);

/* Closes the idle pooled connections to addr's IP address, on any port (all
 * of them when addr is NULL); used when a sandbox is removed or moved.
 * Connections in use are the caller's to cut. Returns how many were closed. */
size_t sg_upstream_pool_drop_addr(sg_upstream_pool_t *pool, const struct sockaddr_storage *addr);

#endif
