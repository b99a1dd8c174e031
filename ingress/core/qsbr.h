/* Quiescent-state-based reclamation (QSBR).
 *
 * Lets reader threads use a shared structure (for example a hash table that
 * one writer replaces copy-on-write) with no lock and no atomic
 * read-modify-write per access, while the writer frees what it replaced only
 * once no reader can still hold a pointer to it.
 *
 * Roles:
 * - One writer thread per sg_qsbr_t calls sg_qsbr_defer and sg_qsbr_reclaim
 *   (and sg_qsbr_init / sg_qsbr_destroy). These are not thread-safe against
 *   each other: the writer side is single-threaded.
 * - Each reader thread owns one sg_qsbr_reader_t and announces the moments
 *   it holds no pointer into the shared structure: a quiescent point, or an
 *   offline stretch. Between two such points it may dereference anything it
 *   loaded from the structure; across one it must not.
 *
 * Grace period: an object handed to sg_qsbr_defer is freed once every
 * registered reader has, after the defer, passed a quiescent point or been
 * seen offline. The writer never waits: sg_qsbr_reclaim runs what is ready
 * and leaves the rest for a later call.
 *
 * Reader cost: sg_qsbr_quiescent is one load of a read-mostly shared counter
 * and one store to the reader's own cache line; sg_qsbr_online adds one full
 * fence. Lookups between those points cost nothing extra.
 *
 * Wiring into a libuv worker loop: call sg_qsbr_quiescent from a uv_check
 * handle (once per loop iteration) and keep a repeating timer (say 100 ms)
 * on the loop so an idle loop still iterates; otherwise a worker parked in
 * epoll holds back every free. Do NOT go offline from a uv_prepare handle:
 * libuv runs I/O callbacks inside the poll phase, before any check handle
 * could bring the reader back online, so those callbacks would read while
 * offline. Offline/online are for a reader that blocks outside its loop
 * (a thread joining, a blocking wait) or stops reading for good
 * (sg_qsbr_offline before the thread exits). */
#ifndef SG_CORE_QSBR_H
#define SG_CORE_QSBR_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define SG_QSBR_CACHE_LINE 64

typedef struct sg_qsbr_s sg_qsbr_t;
typedef struct sg_qsbr_reader_s sg_qsbr_reader_t;
typedef struct sg_qsbr_entry_s sg_qsbr_entry_t;

/* Per reader thread. The counter is padded by a full cache line on both
 * sides, so it never shares a line with another thread's data whatever the
 * alignment of the storage it is embedded in (workers are calloc'd, and
 * malloc only guarantees 16-byte alignment, so _Alignas(64) would not hold
 * and UBSan would flag the misaligned member accesses). The fields are
 * private. */
struct sg_qsbr_reader_s {
    char pad_before_[SG_QSBR_CACHE_LINE];
    /* 0: offline; otherwise the grace-period counter value this reader saw
     * at its last quiescent point (or when it came online). Written only by
     * the reader, read by the writer. */
    _Atomic uint64_t ctr_;
    char pad_after_[SG_QSBR_CACHE_LINE - sizeof(uint64_t)];
    sg_qsbr_reader_t *next_; /* registry list, under the registry lock */
    sg_qsbr_t *qsbr_;
};

/* One per shared structure family. The fields are private. */
struct sg_qsbr_s {
    /* Grace-period counter: bumped by each defer, read by readers at every
     * quiescent point. Kept on its own cache line so writer bookkeeping
     * below does not keep evicting it from readers' caches. */
    char pad_before_[SG_QSBR_CACHE_LINE];
    _Atomic uint64_t gp_;
    char pad_after_[SG_QSBR_CACHE_LINE - sizeof(uint64_t)];
    /* Writer-side only. */
    pthread_mutex_t registry_lock_; /* readers list: register vs reclaim */
    sg_qsbr_reader_t *readers_;
    sg_qsbr_entry_t *pending_head_; /* FIFO by grace-period target */
    sg_qsbr_entry_t *pending_tail_;
    size_t n_pending_;
};

/* Prepares an empty instance with no readers. */
void sg_qsbr_init(sg_qsbr_t *q);

/* Runs every pending free (whatever the grace periods) and releases the
 * instance. Call it only once no reader can touch the shared structure any
 * more (reader threads stopped or offline for good). Registered readers are
 * forgotten; their storage stays the caller's. */
void sg_qsbr_destroy(sg_qsbr_t *q);

/* Adds a reader. Call it from any thread before the reader's thread first
 * loads a shared pointer (normally before the reader threads start). The
 * reader starts ONLINE, so a thread that begins reading at once is covered;
 * a reader that never reports quiescent points holds back every free. */
void sg_qsbr_register(sg_qsbr_t *q, sg_qsbr_reader_t *r);

/* Removes a reader (it must be the calling thread's, or its thread must have
 * stopped). Afterwards the reader must not read the shared structure. The
 * storage may be freed on return. */
void sg_qsbr_unregister(sg_qsbr_reader_t *r);

/* Reader: it holds no pointer obtained from the shared structure now.
 * Pointers loaded afterwards are valid until the next quiescent point or
 * offline. Calling it while offline is a no-op. */
void sg_qsbr_quiescent(sg_qsbr_reader_t *r);

/* Reader: holds no pointer and will not read until sg_qsbr_online. An
 * offline reader never holds back a grace period. */
void sg_qsbr_offline(sg_qsbr_reader_t *r);

/* Reader: may read again (also a quiescent point). */
void sg_qsbr_online(sg_qsbr_reader_t *r);

/* Writer: call fn(arg) once every reader has passed a quiescent point or
 * been offline since this call. Call it AFTER the object has been made
 * unreachable for new readers (e.g. after the atomic store that publishes
 * its replacement). fn runs on the writer thread, from sg_qsbr_reclaim or
 * sg_qsbr_destroy. Aborts on allocation failure. */
void sg_qsbr_defer(sg_qsbr_t *q, void (*fn)(void *), void *arg);

/* Writer: runs the deferred frees whose grace period has ended, in defer
 * order. Call it after deferring and periodically from a timer. Returns how
 * many remain pending (a caller may nudge idle readers when this stays
 * non-zero). Never blocks on readers. */
size_t sg_qsbr_reclaim(sg_qsbr_t *q);

/* Writer: deferred frees not yet run. */
size_t sg_qsbr_pending(const sg_qsbr_t *q);

#endif
