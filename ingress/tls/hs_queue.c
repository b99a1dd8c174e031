/* A loop turn spends at most about SG_TLS_HS_BUDGET_NS on handshakes;
 * ClientHellos beyond it wait in a queue that later turns work through
 * after their other I/O.
 *
 * Why: a handshake costs 0.1 to over 1 ms of CPU (key exchange,
 * signature), a proxied request on an open connection a few us. Run as
 * their ClientHellos arrive, a burst of new connections (a reconnect storm,
 * a load balancer failing over) holds every open connection's requests and
 * responses for as long as the burst takes; metered, it holds them for
 * about one budget. The new connections wait in the queue instead, where
 * they would otherwise have waited for the CPU anyway.
 *
 * Within the budget a handshake runs at once, in the read callback: below
 * a burst nothing changes. Deferring every ClientHello to the end of the
 * turn was tried and not kept: in four of five paired benchmark runs full
 * handshakes then cost about 10% more CPU (tests/load/README.md, levers),
 * for no gain when there is no burst. */
#include "tls/tls_internal.h"

#include "net/turn_end.h"

#include <stdlib.h>

/* 0.5 ms: resumed-handshake row p99 6.7 ms against 8.2-8.9 with 1 ms
 * (nginx 6.8-8.4); the CPU per connection stayed within run-to-run noise. */
#define SG_TLS_HS_BUDGET_NS 500000

typedef struct {
    sg_turn_end_t turn_end; /* first: the callbacks below get it */
    sg_tls_hs_item_t *head, *tail;
    uint64_t spent_ns; /* on handshakes in this turn */
} hs_queue_t;

static _Thread_local hs_queue_t *tls_hsq;

static void unlink_item(hs_queue_t *q, sg_tls_hs_item_t *it)
{
    if (it->prev)
        it->prev->next = it->next;
    else
        q->head = it->next;
    if (it->next)
        it->next->prev = it->prev;
    else
        q->tail = it->prev;
    it->prev = it->next = NULL;
    it->queued = 0;
}

static void run_timed(hs_queue_t *q, sg_tls_hs_item_t *it)
{
    uint64_t start = uv_hrtime();
    sg_tls__hs_run(it);
    q->spent_ns += uv_hrtime() - start;
}

/* End of the turn: the queue gets what is left of the budget, and at least
 * one handshake, so it always moves. */
static void run_queue(sg_turn_end_t *te)
{
    hs_queue_t *q = (hs_queue_t *)te;
    int ran = 0;
    while (q->head && (!ran || q->spent_ns < SG_TLS_HS_BUDGET_NS)) {
        sg_tls_hs_item_t *it = q->head;
        unlink_item(q, it);
        run_timed(q, it);
        ran = 1;
    }
    q->spent_ns = 0;
    sg_turn_end_set_pending(te, q->head != NULL);
}

int sg_tls__hs_submit(uv_loop_t *loop, sg_tls_hs_item_t *it)
{
    hs_queue_t *q = tls_hsq;
    if (!q || q->turn_end.loop != loop) return -1;
    if (it->queued) return 1;
    /* Run now while the turn has budget and nobody waits (first come,
     * first served: once a queue exists every newcomer joins it). */
    if (!q->head && q->spent_ns < SG_TLS_HS_BUDGET_NS) {
        run_timed(q, it);
        return 0;
    }
    it->queued = 1;
    it->next = NULL;
    it->prev = q->tail;
    if (q->tail)
        q->tail->next = it;
    else
        q->head = it;
    q->tail = it;
    return 1;
}

void sg_tls__hs_cancel(sg_tls_hs_item_t *it)
{
    hs_queue_t *q = tls_hsq;
    if (it->queued && q) unlink_item(q, it);
}

int sg_tls_loop_init(uv_loop_t *loop)
{
    hs_queue_t *q = calloc(1, sizeof(*q));
    if (!q) return UV_ENOMEM;
    sg_turn_end_init(&q->turn_end, loop, run_queue);
    tls_hsq = q;
    return 0;
}

static void free_queue(sg_turn_end_t *te)
{
    free(te);
}

void sg_tls_loop_close(uv_loop_t *loop)
{
    hs_queue_t *q = tls_hsq;
    if (!q || q->turn_end.loop != loop) return;
    tls_hsq = NULL;
    /* Every stream was closed first, taking itself off the queue. */
    sg_turn_end_close(&q->turn_end, free_queue);
}
