/* Internals shared by dns.c (c-ares questions and the lookup source) and
 * dns_cache.c (the per-worker table). Not for other modules. */
#ifndef SG_ROUTE_DNS_INTERNAL_H
#define SG_ROUTE_DNS_INTERNAL_H

#include "route/dns.h"

#include <ares.h>
#include <stdint.h>

typedef enum { SG_DNS_PENDING, SG_DNS_FOUND, SG_DNS_ABSENT } sg_dns_state_t;

/* One sandbox id: in flight (PENDING: c-ares queries outstanding, requests
 * waiting) or answered (FOUND with a record, or ABSENT) until `expires`.
 * Answered entries also sit on the cache's age list. */
typedef struct sg_dns_entry_s sg_dns_entry_t;
struct sg_dns_entry_s {
    sg_dns_entry_t *chain;         /* hash bucket */
    sg_dns_entry_t *older, *newer; /* age list, answered entries only */
    sg_dns_source_t *d;
    sg_dns_state_t state;
    uint64_t hash;
    uint64_t expires; /* loop time (ms), answered entries */
    sg_sandbox_t *sb; /* FOUND: the cache's reference */

    /* PENDING */
    sg_lookup_req_t **waiters;
    size_t n_waiters, cap_waiters;
    unsigned outstanding; /* c-ares queries not answered yet */
    int issuing;          /* inside issue(): answers are only recorded */
    const char *failed;   /* first failure: which question */
    int fail_status;      /* ... and the c-ares status */
    int has_v4, has_v6;
    struct in_addr v4;
    struct in6_addr v6;
    int64_t ttl_s; /* smallest A/AAAA TTL seen, -1 = none */
    struct ares_txt_ext *txt;

    size_t id_len;
    char id[SG_SANDBOX_ID_MAX + 1];
};

/* Hash table id -> entry (chained, keyed hash) plus the age list. */
typedef struct {
    sg_dns_entry_t **buckets;
    size_t n_buckets; /* power of two */
    size_t n_entries; /* all, in flight included */
    size_t n_cached;  /* answered, on the age list */
    size_t max_entries;
    sg_dns_entry_t *oldest, *newest;
    uint64_t key[2];
} sg_dns_cache_t;

/* Returns 0 or UV_ENOMEM. */
int sg_dns__cache_init(sg_dns_cache_t *c, size_t max_entries);
/* Frees every entry (their records' references, waiters arrays, TXT data). */
void sg_dns__cache_free(sg_dns_cache_t *c);
uint64_t sg_dns__cache_hash(const sg_dns_cache_t *c, sg_slice_t id);
sg_dns_entry_t *sg_dns__cache_find(const sg_dns_cache_t *c, sg_slice_t id, uint64_t hash);
/* A new zeroed PENDING entry for id (id.len <= SG_SANDBOX_ID_MAX), in the table. */
sg_dns_entry_t *sg_dns__cache_add(sg_dns_cache_t *c, sg_slice_t id, uint64_t hash);
/* Takes e out of the table (and the age list when answered) and frees it. */
void sg_dns__cache_drop(sg_dns_cache_t *c, sg_dns_entry_t *e);
/* A PENDING entry got its answer (state and expires set by the caller after
 * this call): makes room if the cache is full, then puts e on the age list
 * as the newest. e itself is never evicted here. */
void sg_dns__cache_answered(sg_dns_cache_t *c, sg_dns_entry_t *e, uint64_t now);
/* An answered, expired entry is about to be asked again: off the age list,
 * record released, state PENDING. */
void sg_dns__cache_reopen(sg_dns_cache_t *c, sg_dns_entry_t *e);

/* Where each waiting request sits in its entry's waiters array (request ->
 * index), so cancel costs O(1) however many requests wait for one id.
 * Open addressing keyed by the request's address. */
typedef struct {
    sg_lookup_req_t *req; /* NULL: free slot */
    size_t index;
} sg_dns_waitslot_t;

typedef struct {
    sg_dns_waitslot_t *slots;
    size_t mask; /* size - 1, size a power of two (0 slots: mask 0, slots NULL) */
    size_t count;
} sg_dns_waitmap_t;

void sg_dns__waitmap_put(sg_dns_waitmap_t *m, sg_lookup_req_t *req, size_t index);
/* Removes req; returns 1 with *index set, or 0 when req is not there. */
int sg_dns__waitmap_take(sg_dns_waitmap_t *m, sg_lookup_req_t *req, size_t *index);
void sg_dns__waitmap_free(sg_dns_waitmap_t *m);

#endif
