#include "proxy/worker.h"

#include "core/log.h"
#include "net/listener.h"
#include "proxy/conn.h"

#include <stdlib.h>
#include <string.h>

#define SG_READ_BUF_SIZE (64 * 1024)
#define SG_BACKLOG 4096

sg_snapshot_t *sg_snapshot_new(sg_config_t *config, sg_tls_store_t *tls)
{
    sg_snapshot_t *s = calloc(1, sizeof(*s));
    if (!s) abort();
    atomic_init(&s->refs, 1);
    s->config = config;
    s->tls = tls;
    sg_sandbox_table_build(&s->table, config->sandboxes, config->n_sandboxes);
    return s;
}

void sg_snapshot_ref(sg_snapshot_t *s)
{
    atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
}

void sg_snapshot_unref(sg_snapshot_t *s)
{
    if (!s || atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) != 1) return;
    sg_sandbox_table_free(&s->table);
    if (s->tls) sg_tls_store_unref(s->tls);
    sg_config_unref(s->config);
    free(s);
}

static void on_connection(uv_stream_t *listener, int status)
{
    sg_listener_t *l = listener->data;
    sg_worker_t *w = l->worker;
    if (status < 0) {
        sg_log_warn("worker %u: accept: %s", w->index, uv_strerror(status));
        return;
    }
    if (w->stopping) return;
    sg_conn_accept(w, l);
}

/* Runs on the worker's thread: later connections and requests see the new
 * snapshot; ones in flight finish with what they hold. */
static void use_snapshot(sg_worker_t *w, sg_snapshot_t *snap)
{
    sg_snapshot_t *old = w->snap;
    w->snap = snap;
    w->config = snap->config;
    sg_lookup_static_init(&w->static_source, &snap->table);
    sg_snapshot_unref(old);
}

static void reload_async_cb(uv_async_t *a)
{
    sg_worker_t *w = a->data;
    uv_mutex_lock(&w->mailbox_lock);
    sg_snapshot_t *snap = w->mailbox;
    w->mailbox = NULL;
    uv_mutex_unlock(&w->mailbox_lock);
    if (snap) use_snapshot(w, snap);
}

void sg_worker_post_snapshot(sg_worker_t *w, sg_snapshot_t *snap)
{
    sg_snapshot_ref(snap);
    uv_mutex_lock(&w->mailbox_lock);
    sg_snapshot_t *stale = w->mailbox;
    w->mailbox = snap;
    uv_mutex_unlock(&w->mailbox_lock);
    sg_snapshot_unref(stale);
    uv_async_send(&w->reload_async);
}

int sg_worker_init(sg_worker_t *w, unsigned index, sg_snapshot_t *snap)
{
    memset(w, 0, sizeof(*w));
    w->index = index;
    sg_snapshot_ref(snap);
    w->snap = snap;
    w->config = snap->config;
    const sg_config_t *config = snap->config;
    uv_mutex_init(&w->mailbox_lock);
    int rc = uv_loop_init(&w->loop);
    if (rc) return rc;
    w->loop.data = w;
    sg_buf_pool_init(&w->bufs, SG_READ_BUF_SIZE, 256);
    sg_upstream_pool_init(&w->upstreams, &w->loop, &w->bufs, config->upstream_pool_idle_per_key,
                          config->timeouts.upstream_idle_ms);
    sg_lookup_init(&w->lookup);
    sg_lookup_static_init(&w->static_source, &snap->table);
    sg_lookup_add_source(&w->lookup, &w->static_source);
    uv_async_init(&w->loop, &w->reload_async, reload_async_cb);
    w->reload_async.data = w;
    w->listeners = calloc(config->n_listens, sizeof(*w->listeners));
    if (!w->listeners) abort();
    for (size_t i = 0; i < config->n_listens; i++) {
        sg_listener_t *l = &w->listeners[i];
        const sg_listen_conf_t *lc = &config->listens[i];
        rc = sg_listener_open(&w->loop, &l->tcp, (const struct sockaddr *)&lc->addr, SG_BACKLOG,
                              on_connection);
        if (rc) {
            sg_log_error("listen %s: %s", lc->text, uv_strerror(rc));
            w->listen_error = rc;
            return rc;
        }
        l->tcp.data = l;
        l->worker = w;
        l->tls = lc->tls;
        l->port = ntohs(lc->addr.ss_family == AF_INET6
                            ? ((const struct sockaddr_in6 *)&lc->addr)->sin6_port
                            : ((const struct sockaddr_in *)&lc->addr)->sin_port);
        if (l->tls && !w->https_port) w->https_port = l->port;
        w->n_listeners++;
    }
    return 0;
}

static void stop_async_cb(uv_async_t *a)
{
    sg_worker_t *w = a->data;
    w->stopping = 1;
    for (size_t i = 0; i < w->n_listeners; i++) uv_close((uv_handle_t *)&w->listeners[i].tcp, NULL);
    while (w->conns) sg_conn_close(w->conns);
    sg_upstream_pool_close(&w->upstreams);
    uv_close((uv_handle_t *)&w->stop_async, NULL);
    uv_close((uv_handle_t *)&w->reload_async, NULL);
}

static void worker_main(void *arg)
{
    sg_worker_t *w = arg;
    uv_run(&w->loop, UV_RUN_DEFAULT);
}

int sg_worker_start(sg_worker_t *w)
{
    int rc = uv_async_init(&w->loop, &w->stop_async, stop_async_cb);
    if (rc) return rc;
    w->stop_async.data = w;
    return uv_thread_create(&w->thread, worker_main, w);
}

void sg_worker_stop(sg_worker_t *w)
{
    uv_async_send(&w->stop_async);
}

static void close_walk_cb(uv_handle_t *h, void *arg)
{
    if (!uv_is_closing(h)) uv_close(h, NULL);
}

void sg_worker_join(sg_worker_t *w)
{
    uv_thread_join(&w->thread);
    sg_worker_cleanup(w);
}

void sg_worker_cleanup(sg_worker_t *w)
{
    /* Anything still open (a listener that failed half-way, say) is closed
     * and the loop run until the close callbacks have fired. */
    uv_walk(&w->loop, close_walk_cb, NULL);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    if (w->upstreams.buckets) sg_upstream_pool_close(&w->upstreams);
    uv_loop_close(&w->loop);
    sg_fwd_write_free_all(w);
    sg_buf_pool_destroy(&w->bufs);
    free(w->listeners);
    sg_snapshot_unref(w->mailbox);
    sg_snapshot_unref(w->snap);
    uv_mutex_destroy(&w->mailbox_lock);
}
