/* sandgate: configuration, workers, signals. Everything else lives in the
 * modules under ingress/. */
#include "admin/admin.h"
#include "config/config.h"
#include "core/accesslog.h"
#include "core/log.h"
#include "core/qsbr.h"
#include "proxy/metrics.h"
#include "proxy/worker.h"
#include "route/store.h"
#include "egress/egress.h"
#include "tls/tls.h"

#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

typedef struct {
    int argc;
    char **argv;
    sg_worker_t *workers;
    unsigned n_workers;
    sg_snapshot_t *snap; /* what the workers were last given */
    uv_signal_t sigterm, sigint, sighup, sigusr1;
    uv_timer_t ticket_timer;
    uv_timer_t reclaim_timer; /* runs QSBR frees whose grace period ended */
    uv_async_t worker_exited;
    unsigned workers_running;
    sg_qsbr_t qsbr;
    sg_store_t *store;
    sg_egress_t *egress; /* NULL: egress role off */
    sg_admin_t *admin;
    int draining;
} sg_main_t;

static int any_tls_listener(const sg_config_t *cfg)
{
    for (size_t i = 0; i < cfg->n_listens; i++)
        if (cfg->listens[i].tls) return 1;
    return 0;
}

/* Loads the certificates a snapshot needs. Returns 0 (with *out NULL when
 * no listener is TLS) or -1 after logging each problem. */
static int load_tls(const sg_config_t *cfg, sg_tls_store_t **out, char *errout, size_t errlen)
{
    *out = NULL;
    if (!any_tls_listener(cfg)) return 0;
    sg_tls_cert_conf_t *certs = calloc(cfg->tls.n_certs ? cfg->tls.n_certs : 1, sizeof(*certs));
    if (!certs) abort();
    for (size_t i = 0; i < cfg->tls.n_certs; i++) {
        certs[i].chain_path = cfg->tls.certs[i].chain;
        certs[i].key_path = cfg->tls.certs[i].key;
        certs[i].is_default = cfg->tls.certs[i].is_default;
    }
    char err[4096], warn[2048];
    int rc = sg_tls_store_load(certs, cfg->tls.n_certs, cfg->domains, cfg->n_domains,
                               cfg->tls.expiry_warning_ms / 1000, out, err, sizeof(err), warn,
                               sizeof(warn));
    free(certs);
    for (char *line = strtok(warn, "\n"); line; line = strtok(NULL, "\n")) sg_log_warn("%s", line);
    if (rc != 0) {
        if (errout) snprintf(errout, errlen, "%s", err);
        for (char *line = strtok(err, "\n"); line; line = strtok(NULL, "\n"))
            sg_log_error("%s", line);
        return -1;
    }
    char names[512];
    sg_tls_store_describe(*out, names, sizeof(names));
    sg_log_info("tls: serving certificates for %s", names);
    return 0;
}

static void close_main_handles(sg_main_t *m)
{
    uv_close((uv_handle_t *)&m->sigterm, NULL);
    uv_close((uv_handle_t *)&m->sigint, NULL);
    uv_close((uv_handle_t *)&m->sighup, NULL);
    uv_close((uv_handle_t *)&m->sigusr1, NULL);
    uv_close((uv_handle_t *)&m->ticket_timer, NULL);
    uv_close((uv_handle_t *)&m->reclaim_timer, NULL);
    uv_close((uv_handle_t *)&m->worker_exited, NULL);
    if (m->admin) sg_admin_close(m->admin);
    m->admin = NULL;
}

/* SIGTERM/SIGINT: drain. Listeners close, /readyz turns 503, requests in
 * flight finish, streams and tunnels get until drain_timeout; the process
 * exits 0 once every worker is done. A second signal exits at once. */
static void on_stop_signal(uv_signal_t *sig, int signum)
{
    sg_main_t *m = sig->data;
    if (m->draining) {
        sg_log_warn("second signal %d: exiting now", signum);
        _exit(0);
    }
    m->draining = 1;
    uint64_t grace = m->snap->config->drain_timeout_ms;
    sg_log_info("signal %d: draining (up to %llu ms)", signum, (unsigned long long)grace);
    for (unsigned i = 0; i < m->n_workers; i++) sg_worker_drain(&m->workers[i], grace);
}

static void on_worker_exited(uv_async_t *a)
{
    sg_main_t *m = a->data;
    /* uv_async coalesces: count the workers whose loops really ended. */
    unsigned running = 0;
    for (unsigned i = 0; i < m->n_workers; i++)
        if (!atomic_load(&m->workers[i].exited_flag)) running++;
    m->workers_running = running;
    if (!running) {
        sg_log_info("all workers stopped");
        close_main_handles(m);
    }
}

static void on_usr1(uv_signal_t *sig, int signum)
{
    int rc = sg_accesslog_reopen();
    if (rc)
        sg_log_error("access log reopen: %s", strerror(-rc));
    else
        sg_log_info("access log reopened");
}

static void on_reclaim_timer(uv_timer_t *t)
{
    sg_main_t *m = t->data;
    sg_qsbr_reclaim(&m->qsbr);
}

static void on_ticket_timer(uv_timer_t *t)
{
    sg_tls_rotate_ticket_keys();
    sg_log_debug("tls: ticket keys rotated");
}

/* SIGHUP: re-read the configuration and certificates. Anything invalid
 * keeps the running snapshot; connections are never dropped. */
static int reload(void *ctx, char *out, size_t outlen)
{
    sg_main_t *m = ctx;
    char err[8192] = "";
    sg_config_t *cfg = NULL;
    sg_config_actions_t actions = {0};
    sg_log_info("reload: re-reading configuration");
    if (sg_config_load(m->argc, m->argv, &cfg, &actions, err, sizeof(err)) != 0) {
        snprintf(out, outlen, "%s", err);
        for (char *line = strtok(err, "\n"); line; line = strtok(NULL, "\n"))
            sg_log_error("reload rejected: %s", line);
        return -1;
    }
    const char *fixed = sg_config_restart_key(m->snap->config, cfg);
    if (fixed) {
        snprintf(out, outlen, "changing '%s' needs a restart", fixed);
        sg_log_error("reload rejected: changing '%s' needs a restart", fixed);
        sg_config_unref(cfg);
        return -1;
    }
    sg_tls_store_t *tls = NULL;
    if (load_tls(cfg, &tls, out, outlen) != 0) {
        sg_log_error("reload rejected: certificates invalid, keeping the running set");
        sg_config_unref(cfg);
        return -1;
    }
    sg_log_set_level((sg_log_level_t)cfg->log_level);
    sg_log_set_json(cfg->log_json);
    const char *old_log = m->snap->config->access_log, *new_log = cfg->access_log;
    if ((old_log == NULL) != (new_log == NULL) || (old_log && strcmp(old_log, new_log) != 0)) {
        int arc = sg_accesslog_open(new_log);
        if (arc) sg_log_error("access log %s: %s", new_log, strerror(-arc));
    }
    if (cfg->tls.ticket_key_rotation_ms != m->snap->config->tls.ticket_key_rotation_ms)
        uv_timer_start(&m->ticket_timer, on_ticket_timer, cfg->tls.ticket_key_rotation_ms,
                       cfg->tls.ticket_key_rotation_ms);
    sg_snapshot_t *snap = sg_snapshot_new(cfg, tls);
    for (unsigned i = 0; i < m->n_workers; i++) sg_worker_post_snapshot(&m->workers[i], snap);
    sg_snapshot_unref(m->snap);
    m->snap = snap;
    if (m->admin) sg_admin_set_token(m->admin, cfg->admin.token);
    sg_log_info("reload: applied (%zu domains, %zu static sandboxes)", cfg->n_domains,
                cfg->n_sandboxes);
    return 0;
}

static void on_reload_signal(uv_signal_t *sig, int signum)
{
    char err[8192];
    reload(sig->data, err, sizeof(err));
}

static void admin_sandbox_removed(void *ctx, const char *id, const struct sockaddr_storage *addr)
{
    sg_main_t *m = ctx;
    for (unsigned i = 0; i < m->n_workers; i++) sg_worker_post_kill(&m->workers[i], id, addr);
    sg_qsbr_reclaim(&m->qsbr);
}

/* The egress role starts with the store's sandboxes in its table and its
 * nftables rules loaded, before any worker accepts: a sandbox is never
 * served by a half-built policy. */
static int start_egress(sg_main_t *m, const sg_config_t *cfg, char *err, size_t errlen)
{
    if (sg_egress_new(&cfg->egress, &m->qsbr, &m->egress, err, errlen) != 0) return -1;
    if (sg_egress_sync(m->egress, m->store, err, errlen) != 0) {
        sg_egress_free(m->egress);
        m->egress = NULL;
        return -1;
    }
    return 0;
}

static void log_egress_listeners(const sg_config_t *cfg)
{
    const sg_listen_conf_t *ls[] = {&cfg->egress.listen_http, &cfg->egress.listen_tls,
                                    &cfg->egress.listen_other};
    static const char *const what[] = {"port 80 (Host)", "port 443 (SNI)", "other ports"};
    for (size_t i = 0; i < 3; i++)
        if (ls[i]->text[0]) sg_log_info("egress: %s on %s", what[i], ls[i]->text);
}

static void admin_metrics(void *ctx, sg_strbuf_t *out)
{
    sg_main_t *m = ctx;
    sg_metrics_render(m->workers, m->n_workers, m->draining, out);
}

static int admin_ready(void *ctx)
{
    sg_main_t *m = ctx;
    return !m->draining;
}

int main(int argc, char **argv)
{
    char err[8192] = "";
    sg_config_t *cfg = NULL;
    sg_config_actions_t actions = {0};
    if (sg_config_load(argc, argv, &cfg, &actions, err, sizeof(err)) != 0) {
        fprintf(stderr, "%s", err);
        if (err[0] && err[strlen(err) - 1] != '\n') fputc('\n', stderr);
        return 1;
    }
    if (actions.show_help) {
        fputs(sg_config_usage, stdout);
        sg_config_unref(cfg);
        return 0;
    }
    if (actions.show_version) {
        printf("sandgate %s\n", SANDGATE_VERSION);
        sg_config_unref(cfg);
        return 0;
    }
    if (sg_tls_global_init() != 0) {
        fprintf(stderr, "sandgate: cannot initialise TLS\n");
        sg_config_unref(cfg);
        return 1;
    }
    sg_tls_store_t *tls = NULL;
    if (load_tls(cfg, &tls, NULL, 0) != 0) {
        if (actions.check_only) fprintf(stderr, "sandgate: certificates invalid\n");
        sg_config_unref(cfg);
        sg_tls_global_cleanup();
        return 1;
    }
    if (actions.check_only) {
        printf("%s: configuration ok\n", cfg->source);
        if (tls) sg_tls_store_unref(tls);
        sg_config_unref(cfg);
        sg_tls_global_cleanup();
        return 0;
    }
    sg_log_set_level((sg_log_level_t)cfg->log_level);
    sg_log_set_json(cfg->log_json);
    signal(SIGPIPE, SIG_IGN);

    sg_main_t m = {.argc = argc, .argv = argv, .n_workers = cfg->workers};
    uv_loop_t *loop = uv_default_loop();
    int rc = sg_accesslog_open(cfg->access_log);
    if (rc) {
        sg_log_error("access log %s: %s", cfg->access_log, strerror(-rc));
        if (tls) sg_tls_store_unref(tls);
        sg_config_unref(cfg);
        sg_tls_global_cleanup();
        return 1;
    }
    sg_qsbr_init(&m.qsbr);
    if (cfg->admin.store_path || cfg->admin.n_listens) {
        if (sg_store_open(cfg->admin.store_path, &m.qsbr, &m.store, err, sizeof(err)) != 0) {
            fprintf(stderr, "%s\n", err);
            if (tls) sg_tls_store_unref(tls);
            sg_config_unref(cfg);
            sg_qsbr_destroy(&m.qsbr);
            sg_tls_global_cleanup();
            return 1;
        }
        sg_log_info("sandbox store: %zu sandboxes from %s", sg_store_count(m.store),
                    cfg->admin.store_path ? cfg->admin.store_path : "memory (not durable)");
    }
    if (cfg->egress.enabled && start_egress(&m, cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "sandgate: egress: %s\n", err);
        if (tls) sg_tls_store_unref(tls);
        sg_config_unref(cfg);
        if (m.store) sg_store_close(m.store);
        sg_qsbr_destroy(&m.qsbr);
        sg_tls_global_cleanup();
        return 1;
    }
    m.snap = sg_snapshot_new(cfg, tls);
    m.workers = calloc(m.n_workers, sizeof(*m.workers));
    if (!m.workers) abort();
    uv_async_init(loop, &m.worker_exited, on_worker_exited);
    m.worker_exited.data = &m;
    sg_shared_t shared = {.qsbr = &m.qsbr, .store = m.store, .egress = m.egress};
    unsigned ready = 0;
    for (unsigned i = 0; i < m.n_workers && rc == 0; i++) {
        rc = sg_worker_init(&m.workers[i], i, m.snap, &shared);
        if (rc) {
            sg_worker_cleanup(&m.workers[i]);
            break;
        }
        m.workers[i].exited = &m.worker_exited;
        ready++;
    }
    if (rc == 0 && cfg->admin.n_listens) {
        sg_admin_hooks_t hooks = {.ctx = &m,
                                  .sandbox_removed = admin_sandbox_removed,
                                  .reload = reload,
                                  .metrics = admin_metrics,
                                  .ready = admin_ready};
        rc = sg_admin_start(loop, &cfg->admin, m.store, &hooks, &m.admin);
        if (rc) m.admin = NULL;
        if (m.admin && m.egress) sg_admin_set_egress(m.admin, m.egress);
    }
    if (rc == 0) {
        for (unsigned i = 0; i < ready; i++) sg_worker_start(&m.workers[i]);
        m.workers_running = ready;
        for (size_t i = 0; i < cfg->n_listens; i++)
            sg_log_info("listening on %s%s (%u workers)", cfg->listens[i].text,
                        cfg->listens[i].tls ? " (tls)" : "", m.n_workers);
        log_egress_listeners(cfg);
        uv_signal_init(loop, &m.sigterm);
        uv_signal_init(loop, &m.sigint);
        uv_signal_init(loop, &m.sighup);
        uv_signal_init(loop, &m.sigusr1);
        m.sigterm.data = m.sigint.data = m.sighup.data = m.sigusr1.data = &m;
        uv_signal_start(&m.sigterm, on_stop_signal, SIGTERM);
        uv_signal_start(&m.sigint, on_stop_signal, SIGINT);
        uv_signal_start(&m.sighup, on_reload_signal, SIGHUP);
        uv_signal_start(&m.sigusr1, on_usr1, SIGUSR1);
        uv_timer_init(loop, &m.ticket_timer);
        uint64_t every =
            cfg->tls.ticket_key_rotation_ms ? cfg->tls.ticket_key_rotation_ms : 3600000;
        uv_timer_start(&m.ticket_timer, on_ticket_timer, every, every);
        uv_timer_init(loop, &m.reclaim_timer);
        m.reclaim_timer.data = &m;
        uv_timer_start(&m.reclaim_timer, on_reclaim_timer, 200, 200);
        uv_run(loop, UV_RUN_DEFAULT);
        for (unsigned i = 0; i < ready; i++) sg_worker_join(&m.workers[i]);
    } else {
        for (unsigned i = 0; i < ready; i++) sg_worker_cleanup(&m.workers[i]);
        uv_close((uv_handle_t *)&m.worker_exited, NULL);
        if (m.admin) sg_admin_close(m.admin);
        uv_run(loop, UV_RUN_DEFAULT);
    }
    uv_loop_close(loop);
    free(m.workers);
    sg_snapshot_unref(m.snap);
    sg_egress_free(m.egress);
    if (m.store) sg_store_close(m.store);
    sg_qsbr_destroy(&m.qsbr);
    sg_accesslog_close();
    sg_tls_global_cleanup();
    return rc == 0 ? 0 : 1;
}
