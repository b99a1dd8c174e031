#include "core/buf.h"

#include <assert.h>
#include <stdlib.h>

void sg_buf_pool_init(sg_buf_pool_t *pool, uint32_t buf_size, size_t max_free)
{
    *pool = (sg_buf_pool_t){.buf_size = buf_size, .max_free = max_free};
}

void sg_buf_pool_destroy(sg_buf_pool_t *pool)
{
    assert(pool->n_live == 0);
    sg_buf_t *b = pool->free_list;
    while (b) {
        sg_buf_t *next = b->next_free;
        free(b);
        b = next;
    }
    pool->free_list = NULL;
    pool->n_free = 0;
}

sg_buf_t *sg_buf_alloc(sg_buf_pool_t *pool)
{
    sg_buf_t *b = pool->free_list;
    if (b) {
        pool->free_list = b->next_free;
        pool->n_free--;
    } else {
        b = malloc(sizeof(*b) + pool->buf_size);
        if (!b) abort();
        b->cap = pool->buf_size;
        b->pool = pool;
        sg_counter_inc(&pool->n_allocs);
    }
    b->refs = 1;
    b->next_free = NULL;
    if (++pool->n_live > pool->peak_live) pool->peak_live = pool->n_live;
    return b;
}

size_t sg_buf_pool_trim(sg_buf_pool_t *pool, size_t min_free)
{
    size_t keep = pool->peak_live > pool->n_live ? pool->peak_live - pool->n_live : 0;
    if (keep < min_free) keep = min_free;
    size_t freed = 0;
    while (pool->n_free > keep) {
        sg_buf_t *b = pool->free_list;
        pool->free_list = b->next_free;
        pool->n_free--;
        free(b);
        freed++;
    }
    pool->peak_live = pool->n_live;
    return freed;
}

void sg_buf_unref(sg_buf_t *b)
{
    assert(b->refs > 0);
    if (--b->refs) return;
    sg_buf_pool_t *pool = b->pool;
    pool->n_live--;
    if (pool->n_free >= pool->max_free) {
        free(b);
        return;
    }
    b->next_free = pool->free_list;
    pool->free_list = b;
    pool->n_free++;
}
