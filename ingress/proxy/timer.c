/* The connection's one timer: phases record deadlines, the uv timer is
 * armed lazily (see sg_conn_arm_timer in conn.h). */
#include "proxy/conn.h"

#include "core/log.h"
#include "proxy/worker.h"

static void timer_cb(uv_timer_t *t);

static void rearm(sg_conn_t *c, uint64_t now, uint64_t due)
{
    c->timer_due = due;
    uv_timer_start(&c->timer, timer_cb, due - now, 0);
}

static void timer_cb(uv_timer_t *t)
{
    sg_conn_t *c = t->data;
    uint64_t now = uv_now(&c->w->loop);
    const sg_timeouts_conf_t *to = &c->w->config->timeouts;
    c->timer_due = 0;
    /* The timer is armed lazily (see sg_conn_arm_timer): it may fire for a
     * phase that has since ended or been pushed back. */
    uint64_t due = c->deadline;
    if (c->timer_kind == SG_TIMER_IDLE || c->timer_kind == SG_TIMER_FLUSH)
        due = c->last_activity + to->stream_idle_ms;
    if (c->timer_kind == SG_TIMER_NONE) return;
    if (now < due) {
        rearm(c, now, due);
        return;
    }
    switch (c->timer_kind) {
    case SG_TIMER_IDLE:
    case SG_TIMER_FLUSH:
        sg_log_debug("conn %s: stream idle timeout", c->client_addr);
        sg_conn_close(c);
        return;
    case SG_TIMER_HEAD:
        if (c->client.preamble) {
            /* The PROXY header never completed: not an HTTP peer yet. */
            sg_conn_close(c);
            return;
        }
        sg_conn_send_error(c, SG_ERR_REQUEST_TIMEOUT, NULL, 0);
        return;
    case SG_TIMER_RESPONSE:
        sg_conn_send_error(c, SG_ERR_UPSTREAM_HEAD_TIMEOUT, NULL, 0);
        return;
    case SG_TIMER_HANDSHAKE:
        sg_log_debug("conn %s: TLS handshake timeout", c->client_addr);
        sg_conn_close(c);
        return;
    case SG_TIMER_KEEPALIVE:
    case SG_TIMER_LINGER:
    case SG_TIMER_NONE:
        sg_conn_close(c);
        return;
    }
}

/* Phases change several times per request; re-arming a libuv timer each
 * time costs a heap removal and insertion. Instead the phase records its
 * deadline and the timer is started only when that deadline is earlier
 * than the one it is armed for; a timer that fires early re-arms itself
 * for the current deadline. On a busy keep-alive connection the timer is
 * then touched about once per timeout period, not per request. */
void sg_conn_arm_timer(sg_conn_t *c, sg_timer_kind_t kind, uint64_t ms)
{
    uint64_t now = uv_now(&c->w->loop);
    c->timer_kind = kind;
    c->last_activity = now;
    if (kind == SG_TIMER_NONE) return;
    c->deadline = now + ms;
    if (!c->timer_due || c->deadline < c->timer_due) rearm(c, now, c->deadline);
}
