#include "net/upstream.h"

#include "core/log.h"

#include <stdlib.h>
#include <string.h>

#define SG_UPSTREAM_BUCKETS 1024
#define SG_BACKOFF_FIRST_MS 25
#define SG_BACKOFF_MAX_MS 250

void sg_upstream_pool_init(sg_upstream_pool_t *pool, uv_loop_t *loop, sg_buf_pool_t *bufs,
                           size_t max_idle_per_key, uint64_t idle_timeout_ms)
{
    *pool = (sg_upstream_pool_t){.loop = loop,
                                 .bufs = bufs,
                                 .n_buckets = SG_UPSTREAM_BUCKETS,
                                 .max_idle_per_key = max_idle_per_key,
                                 .idle_timeout_ms = idle_timeout_ms};
    pool->buckets = calloc(pool->n_buckets, sizeof(*pool->buckets));
    pool->bucket_idle = calloc(pool->n_buckets, sizeof(*pool->bucket_idle));
    if (!pool->buckets || !pool->bucket_idle) abort();
}

size_t sg_upstream_make_key(char *key, const struct sockaddr_storage *addr)
{
    if (addr->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a6 = (const struct sockaddr_in6 *)addr;
        memcpy(key, &a6->sin6_addr, 16);
        memcpy(key + 16, &a6->sin6_port, 2);
        return 18;
    }
    const struct sockaddr_in *a4 = (const struct sockaddr_in *)addr;
    memcpy(key, &a4->sin_addr, 4);
    memcpy(key + 4, &a4->sin_port, 2);
    return 6;
}

/* The IP part of a key: all of it but the trailing port. */
static int key_has_ip(const sg_upstream_t *up, const char *ip_key, size_t ip_len)
{
    return up->key_len == ip_len + 2 && memcmp(up->key, ip_key, ip_len) == 0;
}

static size_t key_bucket(const sg_upstream_pool_t *pool, const char *key, size_t len)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)key[i];
        h *= 1099511628211ULL;
    }
    return (size_t)(h % pool->n_buckets);
}

static void idle_unlink(sg_upstream_t *up)
{
    sg_upstream_pool_t *pool = up->pool;
    if (up->idle_prev)
        up->idle_prev->idle_next = up->idle_next;
    else
        pool->buckets[up->bucket] = up->idle_next;
    if (up->idle_next) up->idle_next->idle_prev = up->idle_prev;
    up->idle_prev = up->idle_next = NULL;
    pool->bucket_idle[up->bucket]--;
}

static void upstream_handle_closed(sg_upstream_t *up)
{
    if (--up->handles_open) return;
    sg_counter_dec(&up->pool->stats.open);
    free(up);
}

static void stream_closed_cb(sg_stream_t *s)
{
    upstream_handle_closed((sg_upstream_t *)s);
}

static void timer_closed_cb(uv_handle_t *h)
{
    upstream_handle_closed(h->data);
}

/* Tears the connection down for good; memory goes in the close callbacks. */
static void upstream_destroy(sg_upstream_t *up)
{
    if (up->state == SG_UP_CLOSING) return;
    if (up->state == SG_UP_IDLE) idle_unlink(up);
    up->state = SG_UP_CLOSING;
    uv_close((uv_handle_t *)&up->timer, timer_closed_cb);
    if (!up->reconnecting) sg_stream_close(&up->stream, stream_closed_cb);
    /* When reconnecting, the socket is already closing; its close callback
     * sees SG_UP_CLOSING and drops the last handle instead of retrying. */
}

static int connect_attempt(sg_upstream_t *up);

static void finish_connect(sg_upstream_t *up, int status)
{
    sg_upstream_cb cb = up->cb;
    void *data = up->cb_data;
    up->cb = NULL;
    if (status == 0) {
        up->state = SG_UP_ACTIVE;
        sg_counter_inc(&up->pool->stats.connects_ok);
        cb(data, 0, up);
        return;
    }
    sg_counter_inc(&up->pool->stats.connect_failures);
    upstream_destroy(up);
    cb(data, status, NULL);
}

static int retryable(int status)
{
    return status == UV_ECONNREFUSED || status == UV_ENETUNREACH || status == UV_EHOSTUNREACH ||
           status == UV_ECONNRESET || status == UV_EADDRNOTAVAIL;
}

static void backoff_timer_cb(uv_timer_t *t)
{
    sg_upstream_t *up = t->data;
    int rc = connect_attempt(up);
    if (rc) finish_connect(up, retryable(rc) ? UV_ECONNREFUSED : rc);
}

/* The failed socket is closed; make a fresh one after a short pause. */
static void reconnect_closed_cb(sg_stream_t *s)
{
    sg_upstream_t *up = (sg_upstream_t *)s;
    up->reconnecting = 0;
    if (up->state == SG_UP_CLOSING) {
        upstream_handle_closed(up);
        return;
    }
    int rc = sg_stream_tcp_init(&up->stream, up->pool->loop, up->pool->bufs);
    if (rc) {
        up->handles_open--; /* the socket was never re-opened */
        finish_connect(up, rc);
        return;
    }
    up->stream.data = up;
    up->state = SG_UP_BACKOFF;
    uint64_t now = uv_now(up->pool->loop);
    uint64_t wait = up->backoff_ms;
    if (now + wait > up->deadline) wait = up->deadline > now ? up->deadline - now : 0;
    uv_timer_start(&up->timer, backoff_timer_cb, wait, 0);
    up->backoff_ms =
        up->backoff_ms * 2 > SG_BACKOFF_MAX_MS ? SG_BACKOFF_MAX_MS : up->backoff_ms * 2;
}

static void connect_cb(uv_connect_t *req, int status)
{
    sg_upstream_t *up = req->data;
    if (up->state == SG_UP_CLOSING) return; /* cancelled or timed out: already reported */
    uv_timer_stop(&up->timer);
    if (status == 0) {
        uv_tcp_nodelay(&up->stream.tcp, 1);
        finish_connect(up, 0);
        return;
    }
    up->last_error = status;
    if (retryable(status) && uv_now(up->pool->loop) + SG_BACKOFF_FIRST_MS < up->deadline) {
        up->reconnecting = 1;
        sg_stream_close(&up->stream, reconnect_closed_cb);
        return;
    }
    finish_connect(up, retryable(status) ? UV_ECONNREFUSED : status);
}

static void connect_timeout_cb(uv_timer_t *t)
{
    sg_upstream_t *up = t->data;
    finish_connect(up, UV_ETIMEDOUT);
}

/* Returns a libuv error when the attempt could not start (the caller
 * reports it); otherwise connect_cb or the timeout reports later. */
static int connect_attempt(sg_upstream_t *up)
{
    up->state = SG_UP_CONNECTING;
    up->attempts++;
    up->connect_req.data = up;
    int rc = uv_tcp_connect(&up->connect_req, &up->stream.tcp, (const struct sockaddr *)&up->addr,
                            connect_cb);
    if (rc) return rc;
    uv_timer_start(&up->timer, connect_timeout_cb, up->opts.connect_timeout_ms, 0);
    return 0;
}

int sg_upstream_get(sg_upstream_pool_t *pool, const char *key, size_t key_len,
                    const struct sockaddr_storage *addr, const sg_upstream_opts_t *opts,
                    sg_upstream_cb cb, void *data, sg_upstream_t **out)
{
    size_t bucket = key_bucket(pool, key, key_len);
    for (sg_upstream_t *up = opts->fresh ? NULL : pool->buckets[bucket]; up; up = up->idle_next) {
        if (up->key_len != key_len || memcmp(up->key, key, key_len) != 0) continue;
        idle_unlink(up);
        /* The idle timer stays armed (see idle_timeout_cb). */
        /* Reading stays on: the caller's read_start in this same tick only
         * swaps the callback, saving two epoll_ctl calls per request. */
        up->state = SG_UP_ACTIVE;
        sg_counter_inc(&pool->stats.hits);
        *out = up;
        return 1;
    }
    sg_counter_inc(&pool->stats.misses);
    sg_upstream_t *up = calloc(1, sizeof(*up));
    if (!up) abort();
    up->pool = pool;
    memcpy(up->key, key, key_len);
    up->key_len = key_len;
    up->bucket = bucket;
    up->addr = *addr;
    up->opts = *opts;
    up->cb = cb;
    up->cb_data = data;
    up->backoff_ms = SG_BACKOFF_FIRST_MS;
    up->deadline = uv_now(pool->loop) + opts->retry_window_ms;
    int rc = sg_stream_tcp_init(&up->stream, pool->loop, pool->bufs);
    if (rc) {
        free(up);
        return rc;
    }
    up->stream.data = up;
    uv_timer_init(pool->loop, &up->timer);
    up->timer.data = up;
    up->handles_open = 2;
    sg_counter_inc(&pool->stats.open);
    rc = connect_attempt(up);
    if (rc) {
        sg_counter_inc(&pool->stats.connect_failures);
        sg_upstream_cancel(up);
        return rc;
    }
    *out = up;
    return 0;
}

void sg_upstream_cancel(sg_upstream_t *up)
{
    up->cb = NULL;
    upstream_destroy(up);
}

static void idle_read_cb(sg_stream_t *s, ssize_t nread, sg_buf_t *buf)
{
    /* An idle keep-alive connection must stay silent: EOF, an error or stray
     * bytes all mean it can no longer carry a request. */
    upstream_destroy((sg_upstream_t *)s);
}

/* Armed lazily: taking a connection from the pool leaves the timer running
 * and releasing it re-arms it only when it is not running, so a busy pooled
 * connection touches its timer about once per idle period, not per request. */
static void idle_timeout_cb(uv_timer_t *t)
{
    sg_upstream_t *up = t->data;
    if (up->state != SG_UP_IDLE) return; /* in use: release re-arms */
    uint64_t now = uv_now(up->pool->loop), due = up->idle_since + up->pool->idle_timeout_ms;
    if (now < due) {
        uv_timer_start(&up->timer, idle_timeout_cb, due - now, 0);
        return;
    }
    upstream_destroy(up);
}

/* Whether up's destination already has max_idle_per_key idle connections.
 * A bucket holds one destination's connections nearly always, so its count
 * answers without a walk below the limit; at the limit the walk stops as
 * soon as the answer is known. */
static int idle_key_full(const sg_upstream_pool_t *pool, const sg_upstream_t *up)
{
    if (pool->bucket_idle[up->bucket] < pool->max_idle_per_key) return 0;
    size_t n = 0;
    for (const sg_upstream_t *it = pool->buckets[up->bucket]; it; it = it->idle_next)
        if (it->key_len == up->key_len && memcmp(it->key, up->key, up->key_len) == 0 &&
            ++n >= pool->max_idle_per_key)
            return 1;
    return pool->max_idle_per_key == 0;
}

void sg_upstream_release(sg_upstream_t *up, int reusable)
{
    sg_upstream_pool_t *pool = up->pool;
    /* Not stream.write_queue_bytes: it also counts writes that finished in
     * this loop turn and await their deferred callback, which is the normal
     * state when a fast sandbox answers a request within the same turn. */
    if (!reusable || pool->closing ||
        uv_stream_get_write_queue_size((const uv_stream_t *)&up->stream.tcp)) {
        upstream_destroy(up);
        return;
    }
    if (idle_key_full(pool, up)) {
        upstream_destroy(up);
        return;
    }
    up->served++;
    up->state = SG_UP_IDLE;
    up->stream.data = up;
    up->idle_prev = NULL;
    up->idle_next = pool->buckets[up->bucket];
    if (up->idle_next) up->idle_next->idle_prev = up;
    pool->buckets[up->bucket] = up;
    pool->bucket_idle[up->bucket]++;
    if (sg_stream_read_start(&up->stream, idle_read_cb) != 0) {
        upstream_destroy(up);
        return;
    }
    up->idle_since = uv_now(pool->loop);
    if (!uv_is_active((uv_handle_t *)&up->timer))
        uv_timer_start(&up->timer, idle_timeout_cb, pool->idle_timeout_ms, 0);
}

void sg_upstream_pool_close(sg_upstream_pool_t *pool)
{
    pool->closing = 1;
    for (size_t i = 0; i < pool->n_buckets; i++)
        while (pool->buckets[i]) upstream_destroy(pool->buckets[i]);
    free(pool->buckets);
    free(pool->bucket_idle);
    pool->buckets = NULL;
    pool->bucket_idle = NULL;
    pool->n_buckets = 0;
}

size_t sg_upstream_pool_drop_addr(sg_upstream_pool_t *pool, const struct sockaddr_storage *addr)
{
    char ip_key[SG_UPSTREAM_KEY_MAX];
    size_t ip_len = addr ? sg_upstream_make_key(ip_key, addr) - 2 : 0;
    size_t closed = 0;
    for (size_t i = 0; i < pool->n_buckets; i++) {
        sg_upstream_t *up = pool->buckets[i];
        while (up) {
            sg_upstream_t *next = up->idle_next;
            if (!addr || key_has_ip(up, ip_key, ip_len)) {
                upstream_destroy(up);
                closed++;
            }
            up = next;
        }
    }
    return closed;
}
