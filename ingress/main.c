/* sandgate: configuration, workers, signals. Everything else lives in the
 * modules under ingress/. */
#include "config/config.h"
#include "core/log.h"
#include "proxy/worker.h"
#include "route/sandbox.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

typedef struct {
    sg_worker_t *workers;
    unsigned n_workers;
    uv_signal_t sigterm, sigint;
    int stopping;
} sg_main_t;

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
}

int main(int argc, char **argv)
{
    char err[4096] = "";
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
    if (actions.check_only) {
        printf("%s: configuration ok\n", cfg->source);
        sg_config_unref(cfg);
        return 0;
    }
    sg_log_set_level((sg_log_level_t)cfg->log_level);
    signal(SIGPIPE, SIG_IGN);

    sg_sandbox_table_t table;
    sg_sandbox_table_build(&table, cfg->sandboxes, cfg->n_sandboxes);

    sg_main_t m = {.n_workers = cfg->workers};
    m.workers = calloc(m.n_workers, sizeof(*m.workers));
    if (!m.workers) abort();
    int rc = 0;
    unsigned started = 0;
    for (unsigned i = 0; i < m.n_workers && rc == 0; i++) {
        rc = sg_worker_init(&m.workers[i], i, cfg, &table);
        if (rc) {
            sg_worker_cleanup(&m.workers[i]);
            break;
        }
        started++;
    }
    if (rc == 0) {
        for (unsigned i = 0; i < started; i++) sg_worker_start(&m.workers[i]);
        for (size_t i = 0; i < cfg->n_listens; i++)
            sg_log_info("listening on %s (%u workers)", cfg->listens[i].text, m.n_workers);
        uv_loop_t *loop = uv_default_loop();
        uv_signal_init(loop, &m.sigterm);
        uv_signal_init(loop, &m.sigint);
        m.sigterm.data = m.sigint.data = &m;
        uv_signal_start(&m.sigterm, on_stop_signal, SIGTERM);
        uv_signal_start(&m.sigint, on_stop_signal, SIGINT);
        uv_run(loop, UV_RUN_DEFAULT);
        for (unsigned i = 0; i < started; i++) sg_worker_join(&m.workers[i]);
        uv_loop_close(loop);
    } else {
        for (unsigned i = 0; i < started; i++) sg_worker_cleanup(&m.workers[i]);
    }
    free(m.workers);
    sg_sandbox_table_free(&table);
    sg_config_unref(cfg);
    return rc == 0 ? 0 : 1;
}
