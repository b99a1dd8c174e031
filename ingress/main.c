/* sandgate: configuration, workers, signals. Everything else lives in the
 * modules under ingress/. */
#include "config/config.h"
#include "core/log.h"
#include "proxy/worker.h"
#include "tls/tls.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

typedef struct {
    int argc;
    char **argv;
    sg_worker_t *workers;
    unsigned n_workers;
    sg_snapshot_t *snap; /* what the workers were last given */
    uv_signal_t sigterm, sigint, sighup;
    uv_timer_t ticket_timer;
    int stopping;
} sg_main_t;

static int any_tls_listener(const sg_config_t *cfg)
{
    for (size_t i = 0; i < cfg->n_listens; i++)
        if (cfg->listens[i].tls) return 1;
    return 0;
}

/* Loads the certificates a snapshot needs. Returns 0 (with *out NULL when
 * no listener is TLS) or -1 after logging each problem. */
static int load_tls(const sg_config_t *cfg, sg_tls_store_t **out)
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
        for (char *line = strtok(err, "\n"); line; line = strtok(NULL, "\n"))
            sg_log_error("%s", line);
        return -1;
    }
    char names[512];
    sg_tls_store_describe(*out, names, sizeof(names));
    sg_log_info("tls: serving certificates for %s", names);
    return 0;
}

static void on_stop_signal(uv_signal_t *sig, int signum)
{
    sg_main_t *m = sig->data;
    if (m->stopping) {
        sg_log_warn("second signal: exiting now");
        exit(0);
    }
    m->stopping = 1;
    sg_log_info("signal %d: stopping", signum);
    for (unsigned i = 0; i < m->n_workers; i++) sg_worker_stop(&m->workers[i]);
    uv_close((uv_handle_t *)&m->sigterm, NULL);
    uv_close((uv_handle_t *)&m->sigint, NULL);
    uv_close((uv_handle_t *)&m->sighup, NULL);
    uv_close((uv_handle_t *)&m->ticket_timer, NULL);
}

static void on_ticket_timer(uv_timer_t *t)
{
    sg_tls_rotate_ticket_keys();
    sg_log_debug("tls: ticket keys rotated");
}

/* SIGHUP: re-read the configuration and certificates. Anything invalid
 * keeps the running snapshot; connections are never dropped. */
static void on_reload_signal(uv_signal_t *sig, int signum)
{
    sg_main_t *m = sig->data;
    char err[8192] = "";
    sg_config_t *cfg = NULL;
    sg_config_actions_t actions = {0};
    sg_log_info("reload: re-reading configuration");
    if (sg_config_load(m->argc, m->argv, &cfg, &actions, err, sizeof(err)) != 0) {
        for (char *line = strtok(err, "\n"); line; line = strtok(NULL, "\n"))
            sg_log_error("reload rejected: %s", line);
        return;
    }
    const char *fixed = sg_config_restart_key(m->snap->config, cfg);
    if (fixed) {
        sg_log_error("reload rejected: changing '%s' needs a restart", fixed);
        sg_config_unref(cfg);
        return;
    }
    sg_tls_store_t *tls = NULL;
    if (load_tls(cfg, &tls) != 0) {
        sg_log_error("reload rejected: certificates invalid, keeping the running set");
        sg_config_unref(cfg);
        return;
    }
    sg_log_set_level((sg_log_level_t)cfg->log_level);
    if (cfg->tls.ticket_key_rotation_ms != m->snap->config->tls.ticket_key_rotation_ms)
        uv_timer_start(&m->ticket_timer, on_ticket_timer, cfg->tls.ticket_key_rotation_ms,
                       cfg->tls.ticket_key_rotation_ms);
    sg_snapshot_t *snap = sg_snapshot_new(cfg, tls);
    for (unsigned i = 0; i < m->n_workers; i++) sg_worker_post_snapshot(&m->workers[i], snap);
    sg_snapshot_unref(m->snap);
    m->snap = snap;
    sg_log_info("reload: applied (%zu domains, %zu static sandboxes)", cfg->n_domains,
                cfg->n_sandboxes);
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
    if (load_tls(cfg, &tls) != 0) {
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
    signal(SIGPIPE, SIG_IGN);

    sg_main_t m = {.argc = argc, .argv = argv, .n_workers = cfg->workers};
    m.snap = sg_snapshot_new(cfg, tls);
    m.workers = calloc(m.n_workers, sizeof(*m.workers));
    if (!m.workers) abort();
    int rc = 0;
    unsigned ready = 0;
    for (unsigned i = 0; i < m.n_workers && rc == 0; i++) {
        rc = sg_worker_init(&m.workers[i], i, m.snap);
        if (rc) {
            sg_worker_cleanup(&m.workers[i]);
            break;
        }
        ready++;
    }
    if (rc == 0) {
        for (unsigned i = 0; i < ready; i++) sg_worker_start(&m.workers[i]);
        for (size_t i = 0; i < cfg->n_listens; i++)
            sg_log_info("listening on %s%s (%u workers)", cfg->listens[i].text,
                        cfg->listens[i].tls ? " (tls)" : "", m.n_workers);
        uv_loop_t *loop = uv_default_loop();
        uv_signal_init(loop, &m.sigterm);
        uv_signal_init(loop, &m.sigint);
        uv_signal_init(loop, &m.sighup);
        m.sigterm.data = m.sigint.data = m.sighup.data = &m;
        uv_signal_start(&m.sigterm, on_stop_signal, SIGTERM);
        uv_signal_start(&m.sigint, on_stop_signal, SIGINT);
        uv_signal_start(&m.sighup, on_reload_signal, SIGHUP);
        uv_timer_init(loop, &m.ticket_timer);
        uint64_t every =
            cfg->tls.ticket_key_rotation_ms ? cfg->tls.ticket_key_rotation_ms : 3600000;
        uv_timer_start(&m.ticket_timer, on_ticket_timer, every, every);
        uv_run(loop, UV_RUN_DEFAULT);
        for (unsigned i = 0; i < ready; i++) sg_worker_join(&m.workers[i]);
        uv_loop_close(loop);
    } else {
        for (unsigned i = 0; i < ready; i++) sg_worker_cleanup(&m.workers[i]);
    }
    free(m.workers);
    sg_snapshot_unref(m.snap);
    sg_tls_global_cleanup();
    return rc == 0 ? 0 : 1;
}
