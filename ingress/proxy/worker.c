#include "proxy/worker.h"

#include "core/log.h"
#include "net/listener.h"
#include "proxy/conn.h"

#include <pthread.h>
#include <stdio.h>
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
/* The chain follows the configured order among the sources this worker
 * has (admin needs the store, DNS a zone at start-up). */
static void build_lookup_chain(sg_worker_t *w)
{
    const sg_config_t *cfg = w->config;
    sg_lookup_init(&w->lookup);
    for (size_t i = 0; i < cfg->n_lookup_order; i++) {
        switch (cfg->lookup_order[i]) {
        case SG_SOURCE_STATIC:
            sg_lookup_add_source(&w->lookup, &w->static_source);
            break;
        case SG_SOURCE_ADMIN:
            if (w->shared.store) sg_lookup_add_source(&w->lookup, &w->admin_source);
            break;
        case SG_SOURCE_DNS:
            if (w->dns) sg_lookup_add_source(&w->lookup, sg_dns_source_lookup(w->dns));
            break;
        }
    }
    if (!cfg->n_lookup_order) sg_lookup_add_source(&w->lookup, &w->static_source);
}

static void use_snapshot(sg_worker_t *w, sg_snapshot_t *snap)
{
    sg_snapshot_t *old = w->snap;
    w->snap = snap;
    w->config = snap->config;
    sg_lookup_static_init(&w->static_source, &snap->table);
    w->static_source.metric_index = SG_SOURCE_STATIC;
    build_lookup_chain(w);
    if (w->egress_on) sg_egress_worker_set_conf(&w->egress, &snap->config->egress);
    sg_snapshot_unref(old);
}

static int conn_is_of(const sg_conn_t *c, const char *id)
{
    const sg_sandbox_t *sb = c->sandbox;
    return sb && strcmp(sb->id, id) == 0;
}

/* An admin record that is no longer the store's current one (deleted or
 * replaced) must not keep traffic. */
static int conn_is_stale(sg_worker_t *w, const sg_conn_t *c)
{
    const sg_sandbox_t *sb = c->sandbox;
    if (!sb || !w->shared.store || strcmp(sb->source, "admin") != 0) return 0;
    return sg_store_get(w->shared.store, sg_slice(sb->id, sb->id_len)) != sb;
}

static void cut_sandboxes(sg_worker_t *w, const sg_worker_kill_t *kills, size_t n, int overflow)
{
    sg_conn_t *c = w->conns;
    while (c) {
        sg_conn_t *next = c->next;
        int cut = overflow && conn_is_stale(w, c);
        for (size_t i = 0; !cut && i < n; i++) cut = conn_is_of(c, kills[i].id);
        if (cut) sg_conn_close(c);
        c = next;
    }
    if (overflow) {
        sg_upstream_pool_drop_addr(&w->upstreams, NULL);
        return;
    }
    for (size_t i = 0; i < n; i++)
        if (kills[i].addr.ss_family) sg_upstream_pool_drop_addr(&w->upstreams, &kills[i].addr);
}

static void begin_drain(sg_worker_t *w);

static void reload_async_cb(uv_async_t *a)
{
    sg_worker_t *w = a->data;
    sg_worker_kill_t kills[SG_KILL_QUEUE];
    uv_mutex_lock(&w->mailbox_lock);
    sg_snapshot_t *snap = w->mailbox;
    w->mailbox = NULL;
    size_t n = w->n_kills;
    memcpy(kills, w->kills, n * sizeof(kills[0]));
    int overflow = w->kill_overflow;
    w->n_kills = 0;
    w->kill_overflow = 0;
    int drain = w->drain_requested && !w->draining;
    uv_mutex_unlock(&w->mailbox_lock);
    if (snap) use_snapshot(w, snap);
    if (n || overflow) cut_sandboxes(w, kills, n, overflow);
    if (drain) begin_drain(w);
}

void sg_worker_post_kill(sg_worker_t *w, const char *id, const struct sockaddr_storage *addr)
{
    uv_mutex_lock(&w->mailbox_lock);
    if (w->n_kills < SG_KILL_QUEUE) {
        sg_worker_kill_t *k = &w->kills[w->n_kills++];
        snprintf(k->id, sizeof(k->id), "%s", id);
        k->addr = *addr;
    } else
        w->kill_overflow = 1;
    uv_mutex_unlock(&w->mailbox_lock);
    uv_async_send(&w->reload_async);
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

static void qsbr_check_cb(uv_check_t *h)
{
    sg_worker_t *w = h->data;
    sg_qsbr_quiescent(&w->qsbr_reader);
}

static void drain_tick(sg_worker_t *w);

/* The read-buffer pool keeps what the last bursts needed (up to
 * SG_BUF_POOL_MAX_FREE) and gives back the rest every SG_BUF_TRIM_TICKS. */
#define SG_BUF_POOL_MAX_FREE 4096
#define SG_BUF_POOL_MIN_FREE 16
#define SG_BUF_TRIM_TICKS 100 /* of qsbr_tick's 100 ms: 10 s */

static void qsbr_tick_cb(uv_timer_t *t)
{
    sg_worker_t *w = t->data;
    if (w->draining) drain_tick(w);
    if (++w->buf_trim_ticks >= SG_BUF_TRIM_TICKS) {
        w->buf_trim_ticks = 0;
        sg_buf_pool_trim(&w->bufs, SG_BUF_POOL_MIN_FREE);
    }
}

int sg_worker_init(sg_worker_t *w, unsigned index, sg_snapshot_t *snap, const sg_shared_t *shared)
{
    memset(w, 0, sizeof(*w));
    w->index = index;
    w->shared = *shared;
    sg_snapshot_ref(snap);
    w->snap = snap;
    w->config = snap->config;
    const sg_config_t *config = snap->config;
    uv_mutex_init(&w->mailbox_lock);
    int rc = uv_loop_init(&w->loop);
    if (rc) return rc;
    w->loop.data = w;
    sg_buf_pool_init(&w->bufs, SG_READ_BUF_SIZE, SG_BUF_POOL_MAX_FREE);
    sg_splice_pool_init(&w->splices, &w->loop);
    sg_upstream_pool_init(&w->upstreams, &w->loop, &w->bufs, config->upstream_pool_idle_per_key,
                          config->timeouts.upstream_idle_ms);
    sg_lookup_static_init(&w->static_source, &snap->table);
    w->static_source.metric_index = SG_SOURCE_STATIC;
    if (w->shared.store) {
        sg_store_source_init(&w->admin_source, w->shared.store);
        w->admin_source.metric_index = SG_SOURCE_ADMIN;
    }
    if (config->dns.zone) {
        rc = sg_dns_source_new(&w->loop, &config->dns, &w->dns);
        if (rc) {
            sg_log_error("dns source: %s", uv_strerror(rc));
            return rc;
        }
        sg_dns_source_lookup(w->dns)->metric_index = SG_SOURCE_DNS;
        sg_dns_source_set_stats(w->dns, &w->stats.dns);
    }
    build_lookup_chain(w);
    if (w->shared.qsbr) {
        sg_qsbr_register(w->shared.qsbr, &w->qsbr_reader);
        uv_check_init(&w->loop, &w->qsbr_check);
        w->qsbr_check.data = w;
        uv_check_start(&w->qsbr_check, qsbr_check_cb);
    }
    uv_timer_init(&w->loop, &w->qsbr_tick);
    w->qsbr_tick.data = w;
    uv_timer_start(&w->qsbr_tick, qsbr_tick_cb, 100, 100);
    uv_async_init(&w->loop, &w->reload_async, reload_async_cb);
    w->reload_async.data = w;
    if (w->shared.egress && config->egress.enabled) {
        w->egress_on = 1;
        rc = sg_egress_worker_init(&w->egress, &w->loop, index, &w->bufs, w->shared.egress,
                                   &config->egress, &w->stats.egress);
        if (rc) {
            w->listen_error = rc;
            return rc;
        }
    }
    w->listeners = calloc(config->n_listens ? config->n_listens : 1, sizeof(*w->listeners));
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
        l->proxy_protocol = lc->proxy_protocol;
        l->max_connections = lc->max_connections;
        l->port = ntohs(lc->addr.ss_family == AF_INET6
                            ? ((const struct sockaddr_in6 *)&lc->addr)->sin6_port
                            : ((const struct sockaddr_in *)&lc->addr)->sin_port);
        if (l->tls && !w->https_port) w->https_port = l->port;
        w->n_listeners++;
    }
    return 0;
}

static void close_listeners(sg_worker_t *w)
{
    for (size_t i = 0; i < w->n_listeners; i++)
        if (!uv_is_closing((uv_handle_t *)&w->listeners[i].tcp))
            uv_close((uv_handle_t *)&w->listeners[i].tcp, NULL);
}

/* Closes everything; the loop ends when the last close callback ran. */
static void shutdown_worker(sg_worker_t *w)
{
    if (w->stopping) return;
    w->stopping = 1;
    close_listeners(w);
    while (w->conns) sg_conn_close(w->conns);
    if (w->egress_on) sg_egress_worker_close(&w->egress);
    sg_upstream_pool_close(&w->upstreams);
    sg_splice_pool_close(&w->splices);
    if (w->dns) sg_dns_source_close(w->dns);
    w->dns = NULL;
    if (w->shared.qsbr) {
        uv_close((uv_handle_t *)&w->qsbr_check, NULL);
        sg_qsbr_offline(&w->qsbr_reader);
    }
    uv_close((uv_handle_t *)&w->qsbr_tick, NULL);
    uv_close((uv_handle_t *)&w->stop_async, NULL);
    uv_close((uv_handle_t *)&w->reload_async, NULL);
}

static void stop_async_cb(uv_async_t *a)
{
    shutdown_worker(a->data);
}

/* Draining: idle keep-alive connections go now; connections in the middle
 * of a request finish it and then close; streams and tunnels run until the
 * deadline. */
static void drain_tick(sg_worker_t *w)
{
    uint64_t now = uv_now(&w->loop);
    sg_conn_t *c = w->conns;
    while (c) {
        sg_conn_t *next = c->next;
        c->keep_alive = 0;
        if (now >= w->drain_deadline || sg_conn_is_idle(c)) sg_conn_close(c);
        c = next;
    }
    /* Egress connections are tunnels: they run until the deadline. */
    if (w->egress_on && now >= w->drain_deadline) sg_egress_worker_close(&w->egress);
    if (!w->conns && (!w->egress_on || !w->egress.conns)) shutdown_worker(w);
}

static void begin_drain(sg_worker_t *w)
{
    w->draining = 1;
    w->drain_deadline += uv_now(&w->loop); /* the mailbox carried the duration */
    close_listeners(w);
    if (w->egress_on) sg_egress_worker_stop_listening(&w->egress);
    drain_tick(w);
}

void sg_worker_drain(sg_worker_t *w, uint64_t deadline_ms)
{
    uv_mutex_lock(&w->mailbox_lock);
    w->drain_requested = 1;
    w->drain_deadline = deadline_ms;
    uv_mutex_unlock(&w->mailbox_lock);
    uv_async_send(&w->reload_async);
}

static void worker_main(void *arg)
{
    sg_worker_t *w = arg;
    char name[16];
    snprintf(name, sizeof(name), "sandgate-w%u", w->index);
    pthread_setname_np(pthread_self(), name); /* visible in /proc/<pid>/task/<tid>/comm */
    int direct_writes = sg_stream_tcp_loop_init(&w->loop) == 0;
    int hs_queue = sg_tls_loop_init(&w->loop) == 0;
    uv_run(&w->loop, UV_RUN_DEFAULT);
    if (direct_writes || hs_queue) {
        /* Every stream is closed by now; the queues' handles close last. */
        if (direct_writes) sg_stream_tcp_loop_close(&w->loop);
        if (hs_queue) sg_tls_loop_close(&w->loop);
        uv_run(&w->loop, UV_RUN_DEFAULT);
    }
    atomic_store(&w->exited_flag, 1);
    if (w->exited) uv_async_send(w->exited);
}

int sg_worker_start(sg_worker_t *w)
{
    int rc = uv_async_init(&w->loop, &w->stop_async, stop_async_cb);
    if (rc) return rc;
    w->stop_async.data = w;
    rc = uv_thread_create(&w->thread, worker_main, w);
    if (rc) return rc;
    /* Named here as well as in the thread: once this returns the name is
     * visible, whatever the new thread's scheduling. */
    char name[16];
    snprintf(name, sizeof(name), "sandgate-w%u", w->index);
    pthread_setname_np(w->thread, name);
    return 0;
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
    /* Owners close their own handles first; the walk then catches the rest
     * (a listener that failed half-way, say) without closing anything twice. */
    if (w->dns) sg_dns_source_close(w->dns);
    w->dns = NULL;
    if (w->egress_on) sg_egress_worker_close(&w->egress);
    if (w->upstreams.buckets) sg_upstream_pool_close(&w->upstreams);
    sg_splice_pool_close(&w->splices);
    uv_walk(&w->loop, close_walk_cb, NULL);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    if (w->shared.qsbr && w->qsbr_check.data) sg_qsbr_unregister(&w->qsbr_reader);
    uv_loop_close(&w->loop);
    sg_fwd_write_free_all(w);
    sg_conn_free_spares(w);
    sg_buf_pool_destroy(&w->bufs);
    free(w->listeners);
    sg_strbuf_free(&w->log_line);
    sg_snapshot_unref(w->mailbox);
    sg_snapshot_unref(w->snap);
    uv_mutex_destroy(&w->mailbox_lock);
}
