#include "proxy/worker.h"

#include "core/log.h"
#include "net/listener.h"
#include "proxy/conn.h"

#include <stdlib.h>
#include <string.h>

#define SG_READ_BUF_SIZE (64 * 1024)
#define SG_BACKLOG 4096

static void on_connection(uv_stream_t *listener, int status)
{
    sg_worker_t *w = listener->data;
    if (status < 0) {
        sg_log_warn("worker %u: accept: %s", w->index, uv_strerror(status));
        return;
    }
    if (w->stopping) return;
    sg_conn_accept(w, listener);
}

int sg_worker_init(sg_worker_t *w, unsigned index, sg_config_t *config,
                   const sg_sandbox_table_t *static_table)
{
    memset(w, 0, sizeof(*w));
    w->index = index;
    w->config = config;
    sg_config_ref(config);
    w->static_table = static_table;
    int rc = uv_loop_init(&w->loop);
    if (rc) return rc;
    w->loop.data = w;
    sg_buf_pool_init(&w->bufs, SG_READ_BUF_SIZE, 256);
    sg_upstream_pool_init(&w->upstreams, &w->loop, &w->bufs, config->upstream_pool_idle_per_key,
                          config->timeouts.upstream_idle_ms);
    sg_lookup_init(&w->lookup);
    sg_lookup_static_init(&w->static_source, static_table);
    sg_lookup_add_source(&w->lookup, &w->static_source);
    w->listeners = calloc(config->n_listens, sizeof(*w->listeners));
    if (!w->listeners) abort();
    for (size_t i = 0; i < config->n_listens; i++) {
        rc = sg_listener_open(&w->loop, &w->listeners[i],
                              (const struct sockaddr *)&config->listens[i].addr, SG_BACKLOG,
                              on_connection);
        if (rc) {
            sg_log_error("listen %s: %s", config->listens[i].text, uv_strerror(rc));
            w->listen_error = rc;
            return rc;
        }
        w->listeners[i].data = w;
        w->n_listeners++;
    }
    return 0;
}

static void stop_async_cb(uv_async_t *a)
{
    sg_worker_t *w = a->data;
    w->stopping = 1;
    for (size_t i = 0; i < w->n_listeners; i++) uv_close((uv_handle_t *)&w->listeners[i], NULL);
    while (w->conns) sg_conn_close(w->conns);
    sg_upstream_pool_close(&w->upstreams);
    uv_close((uv_handle_t *)&w->stop_async, NULL);
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
    sg_config_unref(w->config);
}
