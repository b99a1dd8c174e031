/* QSBR. The protocol in one paragraph:
 *
 * The writer owns a 64-bit grace-period counter gp (starts at 1, never 0).
 * Each defer bumps it and tags the entry with the new value T. A reader at a
 * quiescent point copies gp into its own counter ctr; offline sets ctr to 0.
 * An entry tagged T may run once every reader has ctr == 0 or ctr >= T:
 * such a reader has either passed a quiescent point after the object was
 * unpublished (so it dropped every old pointer, and any later load sees the
 * replacement) or is not reading at all.
 *
 * Memory orders, and why:
 * - defer: the bump is a seq_cst RMW (release is what matters). The caller
 *   unpublished the object before deferring, so a reader whose acquire load
 *   of gp returns T also sees the unpublish: anything it loads after that
 *   quiescent point is the replacement.
 * - quiescent / offline: release store of ctr, so every load the reader did
 *   from the structure before it happens-before the writer's acquire load of
 *   ctr, and hence before the free.
 * - online vs the writer's check is the store-buffer (Dekker) pattern: the
 *   reader stores ctr then loads the shared pointer; the writer stores the
 *   shared pointer then loads ctr. With only acquire/release both loads may
 *   miss both stores (x86 store buffers do exactly that): the writer reads a
 *   stale ctr == 0 and frees, while the reader reads the old pointer. A
 *   seq_cst fence on each side (after the reader's store, before the
 *   writer's loads) forbids it: whichever fence is first in the single total
 *   order, the other side's load after its own fence sees the first side's
 *   store. So either the writer sees the reader online (and waits) or the
 *   reader sees the new pointer. quiescent does not need the fence: the
 *   reader's ctr is already non-zero, and a writer that reads an older
 *   non-zero value simply waits. */
#include "core/qsbr.h"

#include <stdlib.h>

struct sg_qsbr_entry_s {
    sg_qsbr_entry_t *next;
    uint64_t target; /* gp value every online reader must reach */
    void (*fn)(void *);
    void *arg;
};

void sg_qsbr_init(sg_qsbr_t *q)
{
    atomic_init(&q->gp_, 1);
    pthread_mutex_init(&q->registry_lock_, NULL);
    q->readers_ = NULL;
    q->pending_head_ = q->pending_tail_ = NULL;
    q->n_pending_ = 0;
}

static void run_until(sg_qsbr_t *q, uint64_t limit)
{
    sg_qsbr_entry_t *e;
    while ((e = q->pending_head_) != NULL && e->target <= limit) {
        q->pending_head_ = e->next;
        if (!q->pending_head_) q->pending_tail_ = NULL;
        q->n_pending_--;
        e->fn(e->arg);
        free(e);
    }
}

void sg_qsbr_destroy(sg_qsbr_t *q)
{
    run_until(q, UINT64_MAX);
    pthread_mutex_lock(&q->registry_lock_);
    for (sg_qsbr_reader_t *r = q->readers_; r; r = r->next_) r->qsbr_ = NULL;
    q->readers_ = NULL;
    pthread_mutex_unlock(&q->registry_lock_);
    pthread_mutex_destroy(&q->registry_lock_);
}

void sg_qsbr_register(sg_qsbr_t *q, sg_qsbr_reader_t *r)
{
    r->qsbr_ = q;
    pthread_mutex_lock(&q->registry_lock_);
    /* Online from the start. The load happens under the lock, so a reclaim
     * scan either sees this reader or ran entirely before this point (and
     * then everything it freed was unpublished before this reader's first
     * load: the mutex orders them). */
    atomic_store_explicit(&r->ctr_, atomic_load_explicit(&q->gp_, memory_order_acquire),
                          memory_order_relaxed);
    r->next_ = q->readers_;
    q->readers_ = r;
    pthread_mutex_unlock(&q->registry_lock_);
}

void sg_qsbr_unregister(sg_qsbr_reader_t *r)
{
    sg_qsbr_t *q = r->qsbr_;
    atomic_store_explicit(&r->ctr_, 0, memory_order_release);
    if (!q) return;
    pthread_mutex_lock(&q->registry_lock_);
    for (sg_qsbr_reader_t **pp = &q->readers_; *pp; pp = &(*pp)->next_) {
        if (*pp == r) {
            *pp = r->next_;
            break;
        }
    }
    pthread_mutex_unlock(&q->registry_lock_);
    r->qsbr_ = NULL;
}

void sg_qsbr_quiescent(sg_qsbr_reader_t *r)
{
    /* Own counter: only this thread writes it, so a relaxed read is exact. */
    uint64_t cur = atomic_load_explicit(&r->ctr_, memory_order_relaxed);
    if (cur == 0) return; /* offline */
    uint64_t gp = atomic_load_explicit(&r->qsbr_->gp_, memory_order_acquire);
    /* Skip the store when nothing was deferred since the last quiescent
     * point: keeps the line clean in the writer's cache when idle. */
    if (gp != cur) atomic_store_explicit(&r->ctr_, gp, memory_order_release);
}

void sg_qsbr_offline(sg_qsbr_reader_t *r)
{
    atomic_store_explicit(&r->ctr_, 0, memory_order_release);
}

void sg_qsbr_online(sg_qsbr_reader_t *r)
{
    uint64_t gp = atomic_load_explicit(&r->qsbr_->gp_, memory_order_acquire);
    atomic_store_explicit(&r->ctr_, gp, memory_order_relaxed);
    /* Dekker: our ctr store must be visible before any load we do from the
     * shared structure, or the writer could read the stale 0 and free what
     * we are about to load. Pairs with the fence in sg_qsbr_reclaim. */
    atomic_thread_fence(memory_order_seq_cst);
}

void sg_qsbr_defer(sg_qsbr_t *q, void (*fn)(void *), void *arg)
{
    sg_qsbr_entry_t *e = malloc(sizeof(*e));
    if (!e) abort();
    e->next = NULL;
    e->fn = fn;
    e->arg = arg;
    e->target = atomic_fetch_add_explicit(&q->gp_, 1, memory_order_seq_cst) + 1;
    if (q->pending_tail_)
        q->pending_tail_->next = e;
    else
        q->pending_head_ = e;
    q->pending_tail_ = e;
    q->n_pending_++;
}

size_t sg_qsbr_reclaim(sg_qsbr_t *q)
{
    if (!q->pending_head_) return 0;
    /* Pairs with the fence in sg_qsbr_online (see the top of this file):
     * every unpublish we did (program order before this) is ordered before
     * the ctr loads below. */
    atomic_thread_fence(memory_order_seq_cst);
    uint64_t limit = UINT64_MAX;
    pthread_mutex_lock(&q->registry_lock_);
    for (sg_qsbr_reader_t *r = q->readers_; r; r = r->next_) {
        uint64_t c = atomic_load_explicit(&r->ctr_, memory_order_acquire);
        if (c != 0 && c < limit) limit = c;
    }
    pthread_mutex_unlock(&q->registry_lock_);
    /* A reader with ctr == c passed a quiescent point after every defer
     * tagged <= c; offline readers (0) hold nothing back. */
    run_until(q, limit);
    return q->n_pending_;
}

size_t sg_qsbr_pending(const sg_qsbr_t *q)
{
    return q->n_pending_;
}
