/* The admin API: its own listener (loopback unless a token is configured),
 * a small HTTP/1.1 server on the main thread's loop. It manages the durable
 * sandbox store and serves health, readiness, metrics and reload. It knows
 * nothing of proxy internals: everything else goes through the hooks. */
#ifndef SG_ADMIN_ADMIN_H
#define SG_ADMIN_ADMIN_H

#include "config/config.h"
#include "core/strbuf.h"
#include "route/store.h"
#include <uv.h>

typedef struct {
    void *ctx;
    /* A sandbox was deleted (or replaced): cut its live connections, and
     * the idle pooled ones to addr, the removed record's address. */
    void (*sandbox_removed)(void *ctx, const char *id, const struct sockaddr_storage *addr);
    /* POST /v1/reload: 0, or -1 with one message per line in err. */
    int (*reload)(void *ctx, char *err, size_t errlen);
    /* GET /metrics: append Prometheus text exposition. */
    void (*metrics)(void *ctx, sg_strbuf_t *out);
    /* GET /readyz: 1 when listening and not draining. */
    int (*ready)(void *ctx);
} sg_admin_hooks_t;

typedef struct sg_admin_s sg_admin_t;

/* Opens every admin listener. store may be NULL (sandbox endpoints then
 * answer 404). Returns 0 or a negative libuv error (logged). */
int sg_admin_start(uv_loop_t *loop, const sg_admin_conf_t *conf, sg_store_t *store,
                   const sg_admin_hooks_t *hooks, sg_admin_t **out);
/* Egress role (NULL: off): sandbox changes re-sync its table and nftables
 * rules, PUT enforces one address per sandbox, and GET /v1/egress/nftables
 * shows the ruleset. eg must outlive a. */
struct sg_egress_s;
void sg_admin_set_egress(sg_admin_t *a, struct sg_egress_s *eg);
/* Uses `token` (may be NULL) from now on; called on reload. */
void sg_admin_set_token(sg_admin_t *a, const char *token);
/* Closes listeners and connections; memory goes in close callbacks. */
void sg_admin_close(sg_admin_t *a);

#endif
