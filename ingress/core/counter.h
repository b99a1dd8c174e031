/* Counters written by one thread (their worker) and read by any (metrics).
 * The writer does a relaxed load and store, which compiles to a plain add
 * with no locked instruction; readers see a recent, untorn value. */
#ifndef SG_CORE_COUNTER_H
#define SG_CORE_COUNTER_H

#include <stdatomic.h>
#include <stdint.h>

typedef _Atomic uint64_t sg_counter_t;

static inline void sg_counter_add(sg_counter_t *c, uint64_t n)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

static inline void sg_counter_inc(sg_counter_t *c)
{
    sg_counter_add(c, 1);
}

/* Gauges go down too; unsigned wrap-around makes this exact. */
static inline void sg_counter_dec(sg_counter_t *c)
{
    sg_counter_add(c, (uint64_t)-1);
}

static inline uint64_t sg_counter_get(const sg_counter_t *c)
{
    return atomic_load_explicit(c, memory_order_relaxed);
}

#endif
