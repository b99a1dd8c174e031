/* The DNS source's per-worker cache: a chained hash table keyed by sandbox
 * id and an age list of answered entries (oldest first) for eviction. */
#include "route/dns_internal.h"

#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#define DNS_MIN_BUCKETS 64
#define DNS_MAX_BUCKETS (1u << 20)

/* ---- hashing: ids come from Host headers, so the hash is keyed (SipHash-1-3)
 * to keep chosen ids from piling up in one bucket. */

static uint64_t rotl64(uint64_t x, int b)
{
    return (x << b) | (x >> (64 - b));
}

#define SIPROUND                                                                                   \
    do {                                                                                           \
        v0 += v1, v1 = rotl64(v1, 13), v1 ^= v0, v0 = rotl64(v0, 32);                              \
        v2 += v3, v3 = rotl64(v3, 16), v3 ^= v2;                                                   \
        v0 += v3, v3 = rotl64(v3, 21), v3 ^= v0;                                                   \
        v2 += v1, v1 = rotl64(v1, 17), v1 ^= v2, v2 = rotl64(v2, 32);                              \
    } while (0)

static uint64_t siphash13(const uint64_t key[2], const char *p, size_t len)
{
    uint64_t v0 = 0x736f6d6570736575ULL ^ key[0], v1 = 0x646f72616e646f6dULL ^ key[1];
    uint64_t v2 = 0x6c7967656e657261ULL ^ key[0], v3 = 0x7465646279746573ULL ^ key[1];
    uint64_t m;
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        m = 0;
        for (int j = 7; j >= 0; j--) m = m << 8 | (unsigned char)p[i + (size_t)j];
        v3 ^= m;
        SIPROUND;
        v0 ^= m;
    }
    m = (uint64_t)len << 56;
    for (int j = 0; i + (size_t)j < len; j++)
        m |= (uint64_t)(unsigned char)p[i + (size_t)j] << (8 * j);
    v3 ^= m;
    SIPROUND;
    v0 ^= m;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

uint64_t sg_dns__cache_hash(const sg_dns_cache_t *c, sg_slice_t id)
{
    return siphash13(c->key, id.base, id.len);
}

/* ---- the table */

int sg_dns__cache_init(sg_dns_cache_t *c, size_t max_entries)
{
    memset(c, 0, sizeof(*c));
    c->n_buckets = DNS_MIN_BUCKETS;
    c->buckets = calloc(c->n_buckets, sizeof(*c->buckets));
    if (!c->buckets) return UV_ENOMEM;
    c->max_entries = max_entries ? max_entries : 1;
    if (getrandom(c->key, sizeof(c->key), GRND_NONBLOCK) != sizeof(c->key)) {
        uint64_t t = uv_hrtime();
        c->key[0] = t ^ (uint64_t)(uintptr_t)c;
        c->key[1] = t * 0x9e3779b97f4a7c15ULL;
    }
    return 0;
}

static void entry_free(sg_dns_entry_t *e)
{
    if (e->sb) sg_sandbox_unref(e->sb);
    if (e->txt) ares_free_data(e->txt);
    free(e->waiters);
    free(e);
}

void sg_dns__cache_free(sg_dns_cache_t *c)
{
    for (size_t i = 0; i < c->n_buckets; i++) {
        for (sg_dns_entry_t *e = c->buckets[i], *next; e; e = next) {
            next = e->chain;
            entry_free(e);
        }
    }
    free(c->buckets);
    memset(c, 0, sizeof(*c));
}

sg_dns_entry_t *sg_dns__cache_find(const sg_dns_cache_t *c, sg_slice_t id, uint64_t hash)
{
    for (sg_dns_entry_t *e = c->buckets[hash & (c->n_buckets - 1)]; e; e = e->chain)
        if (e->hash == hash && e->id_len == id.len && memcmp(e->id, id.base, id.len) == 0) return e;
    return NULL;
}

static void grow(sg_dns_cache_t *c)
{
    size_t n = c->n_buckets * 2;
    sg_dns_entry_t **b = calloc(n, sizeof(*b));
    if (!b) return; /* longer chains, still correct */
    for (size_t i = 0; i < c->n_buckets; i++) {
        for (sg_dns_entry_t *e = c->buckets[i], *next; e; e = next) {
            next = e->chain;
            e->chain = b[e->hash & (n - 1)];
            b[e->hash & (n - 1)] = e;
        }
    }
    free(c->buckets);
    c->buckets = b;
    c->n_buckets = n;
}

sg_dns_entry_t *sg_dns__cache_add(sg_dns_cache_t *c, sg_slice_t id, uint64_t hash)
{
    sg_dns_entry_t *e = calloc(1, sizeof(*e));
    if (!e) abort();
    e->state = SG_DNS_PENDING;
    e->hash = hash;
    e->id_len = id.len;
    memcpy(e->id, id.base, id.len);
    if (c->n_entries >= c->n_buckets && c->n_buckets < DNS_MAX_BUCKETS) grow(c);
    sg_dns_entry_t **head = &c->buckets[hash & (c->n_buckets - 1)];
    e->chain = *head;
    *head = e;
    c->n_entries++;
    return e;
}

static void age_push(sg_dns_cache_t *c, sg_dns_entry_t *e)
{
    e->newer = NULL;
    e->older = c->newest;
    if (c->newest)
        c->newest->newer = e;
    else
        c->oldest = e;
    c->newest = e;
    c->n_cached++;
}

static void age_unlink(sg_dns_cache_t *c, sg_dns_entry_t *e)
{
    if (e->older)
        e->older->newer = e->newer;
    else
        c->oldest = e->newer;
    if (e->newer)
        e->newer->older = e->older;
    else
        c->newest = e->older;
    e->older = e->newer = NULL;
    c->n_cached--;
}

void sg_dns__cache_drop(sg_dns_cache_t *c, sg_dns_entry_t *e)
{
    if (e->state != SG_DNS_PENDING) age_unlink(c, e);
    sg_dns_entry_t **pp = &c->buckets[e->hash & (c->n_buckets - 1)];
    while (*pp != e) pp = &(*pp)->chain;
    *pp = e->chain;
    c->n_entries--;
    entry_free(e);
}

/* When full, drops every expired entry and then the oldest ones down to
 * 15/16 of the bound, so the O(n) sweep runs at most once per n/16
 * insertions. In-flight entries are not on the list and stay. */
void sg_dns__cache_answered(sg_dns_cache_t *c, sg_dns_entry_t *e, uint64_t now)
{
    if (c->n_cached >= c->max_entries) {
        for (sg_dns_entry_t *o = c->oldest, *newer; o; o = newer) {
            newer = o->newer;
            if (now >= o->expires) sg_dns__cache_drop(c, o);
        }
        size_t low = c->max_entries - c->max_entries / 16 - 1;
        while (c->n_cached > low) sg_dns__cache_drop(c, c->oldest);
    }
    age_push(c, e);
}

void sg_dns__cache_reopen(sg_dns_cache_t *c, sg_dns_entry_t *e)
{
    age_unlink(c, e);
    if (e->sb) sg_sandbox_unref(e->sb);
    e->sb = NULL;
    e->state = SG_DNS_PENDING;
}

/* ---- the waiter index */

static size_t ptr_slot(const sg_dns_waitmap_t *m, const sg_lookup_req_t *req)
{
    uint64_t h = (uint64_t)(uintptr_t)req * 0x9e3779b97f4a7c15ULL;
    return (size_t)(h >> 32) & m->mask;
}

static void waitmap_grow(sg_dns_waitmap_t *m)
{
    size_t size = m->slots ? (m->mask + 1) * 2 : 64;
    sg_dns_waitmap_t n = {.slots = calloc(size, sizeof(sg_dns_waitslot_t)), .mask = size - 1};
    if (!n.slots) abort();
    for (size_t i = 0; m->slots && i <= m->mask; i++) {
        if (!m->slots[i].req) continue;
        size_t pos = ptr_slot(&n, m->slots[i].req);
        while (n.slots[pos].req) pos = (pos + 1) & n.mask;
        n.slots[pos] = m->slots[i];
        n.count++;
    }
    free(m->slots);
    *m = n;
}

void sg_dns__waitmap_put(sg_dns_waitmap_t *m, sg_lookup_req_t *req, size_t index)
{
    if (!m->slots || (m->count + 1) * 2 > m->mask + 1) waitmap_grow(m);
    size_t pos = ptr_slot(m, req);
    while (m->slots[pos].req && m->slots[pos].req != req) pos = (pos + 1) & m->mask;
    if (!m->slots[pos].req) m->count++;
    m->slots[pos] = (sg_dns_waitslot_t){req, index};
}

int sg_dns__waitmap_take(sg_dns_waitmap_t *m, sg_lookup_req_t *req, size_t *index)
{
    if (!m->slots) return 0;
    size_t pos = ptr_slot(m, req);
    while (m->slots[pos].req != req) {
        if (!m->slots[pos].req) return 0;
        pos = (pos + 1) & m->mask;
    }
    *index = m->slots[pos].index;
    /* backward-shift deletion keeps every probe chain unbroken */
    size_t hole = pos;
    for (size_t next = (hole + 1) & m->mask; m->slots[next].req; next = (next + 1) & m->mask) {
        size_t home = ptr_slot(m, m->slots[next].req);
        /* move the entry back when its home is not in (hole, next] cyclically */
        if (((next - home) & m->mask) >= ((next - hole) & m->mask)) {
            m->slots[hole] = m->slots[next];
            hole = next;
        }
    }
    m->slots[hole].req = NULL;
    m->count--;
    return 1;
}

void sg_dns__waitmap_free(sg_dns_waitmap_t *m)
{
    free(m->slots);
    memset(m, 0, sizeof(*m));
}
