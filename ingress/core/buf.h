/* Reference-counted I/O buffers from per-worker pools.
 *
 * A read lands in a pooled buffer; forwarding it means taking a reference
 * and handing the same bytes to a write, so body bytes are never copied on
 * the way through. A buffer returns to its pool when the last reference is
 * dropped. Pools and their buffers belong to one worker thread and are never
 * touched from another. */
#ifndef SG_CORE_BUF_H
#define SG_CORE_BUF_H

#include "core/counter.h"

#include <stddef.h>
#include <stdint.h>

typedef struct sg_buf_pool_s sg_buf_pool_t;

typedef struct sg_buf_s {
    uint32_t refs;
    uint32_t cap; /* usable bytes in data[] */
    sg_buf_pool_t *pool;
    struct sg_buf_s *next_free;
    char data[];
} sg_buf_t;

struct sg_buf_pool_s {
    uint32_t buf_size;   /* cap of every buffer */
    sg_buf_t *free_list; /* recycled buffers */
    size_t n_free;
    size_t max_free;       /* beyond this, released buffers are freed */
    size_t n_live;         /* buffers handed out and not yet returned */
    size_t peak_live;      /* most buffers out at once since the last trim */
    sg_counter_t n_allocs; /* malloc calls made (warm pools stop allocating); read by metrics */
};

void sg_buf_pool_init(sg_buf_pool_t *pool, uint32_t buf_size, size_t max_free);
/* Frees the free list; buffers still referenced elsewhere are a bug (asserted). */
void sg_buf_pool_destroy(sg_buf_pool_t *pool);

/* Frees the recycled buffers that recent load did not need, keeping enough
 * to go from the buffers out now back to the most that were out at once
 * since the previous trim (and at least min_free). Called periodically by
 * the owner, so a pool sized by a burst gives the memory back within two
 * periods of its end while a steady load never allocates. Returns how many
 * buffers were freed. */
size_t sg_buf_pool_trim(sg_buf_pool_t *pool, size_t min_free);

/* Returns a buffer with one reference held by the caller. Aborts on OOM. */
sg_buf_t *sg_buf_alloc(sg_buf_pool_t *pool);

static inline void sg_buf_ref(sg_buf_t *b)
{
    b->refs++;
}

/* Drops one reference; at zero the buffer goes back to its pool. */
void sg_buf_unref(sg_buf_t *b);

#endif
