/* The DNS lookup source: the c-ares questions and answers, request
 * coalescing and the lookup interface. The channel and its loop glue are
 * net/resolver, the cache table is in dns_cache.c, the TXT settings parser
 * in dns_txt.c.
 *
 * Shape: one cache entry per sandbox id. An entry is either in flight
 * (PENDING: three c-ares queries outstanding and a list of waiting requests)
 * or answered (FOUND with a record, or ABSENT) until it expires; an expired
 * entry is refreshed in place when the next request for it comes. */
#include "route/dns_internal.h"
#include "core/log.h"
#include "net/resolver.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DNS_CLASS_IN 1
#define DNS_TYPE_A 1
#define DNS_TYPE_TXT 16
#define DNS_TYPE_AAAA 28

#define DNS_LABEL_MAX 63
#define DNS_ZONE_MAX 189 /* 63 + '.' + 189 = 253, the longest name */
#define DNS_MAX_ADDRS 32 /* addresses read per answer (the first one is used) */

/* Requests being told an answer. Cancel must reach them too: a callback may
 * cancel another request of the same batch. Lives on complete()'s stack. */
typedef struct dns_batch_s {
    struct dns_batch_s *next;
    sg_lookup_req_t **reqs;
    size_t n;
} dns_batch_t;

struct sg_dns_source_s {
    sg_lookup_source_t src;
    uv_loop_t *loop;
    sg_resolver_t *resolver; /* d is freed when it has closed */
    int closing;             /* sg_dns_source_close was called */

    char *zone;
    size_t zone_len;
    uint64_t ttl_min_ms, ttl_max_ms, negative_ttl_ms;

    sg_dns_cache_t cache;
    sg_dns_waitmap_t waiting; /* every request in a waiters array or a batch */
    dns_batch_t *batches;
    sg_dns_stats_t *stats; /* own_stats or the caller's (sg_dns_source_set_stats) */
    sg_dns_stats_t own_stats;
    uint64_t warn_at; /* loop time of the last failure warning */
    uint64_t warn_suppressed;
    char warn_note[64];
};

static void add_waiter(sg_dns_source_t *d, sg_dns_entry_t *e, sg_lookup_req_t *req)
{
    if (e->n_waiters == e->cap_waiters) {
        size_t cap = e->cap_waiters ? e->cap_waiters * 2 : 4;
        sg_lookup_req_t **w = realloc(e->waiters, cap * sizeof(*w));
        if (!w) abort();
        e->waiters = w;
        e->cap_waiters = cap;
    }
    sg_dns__waitmap_put(&d->waiting, req, e->n_waiters);
    e->waiters[e->n_waiters++] = req;
}

/* ---- answers */

static void entry_fail(sg_dns_entry_t *e, const char *what, int status)
{
    if (!e->failed) {
        e->failed = what;
        e->fail_status = status;
    }
}

static void take_ttl(sg_dns_entry_t *e, int ttl)
{
    int64_t t = ttl < 0 ? 0 : ttl;
    if (e->ttl_s < 0 || t < e->ttl_s) e->ttl_s = t;
}

static void record_a(sg_dns_entry_t *e, const unsigned char *abuf, int alen)
{
    struct ares_addrttl a[DNS_MAX_ADDRS];
    int n = DNS_MAX_ADDRS;
    int rc = ares_parse_a_reply(abuf, alen, NULL, a, &n);
    if (rc == ARES_ENODATA) return;
    if (rc != ARES_SUCCESS) {
        entry_fail(e, "A", rc);
        return;
    }
    for (int i = 0; i < n; i++) take_ttl(e, a[i].ttl);
    if (n > 0) {
        e->has_v4 = 1;
        e->v4 = a[0].ipaddr;
    }
}

static void record_aaaa(sg_dns_entry_t *e, const unsigned char *abuf, int alen)
{
    struct ares_addr6ttl a[DNS_MAX_ADDRS];
    int n = DNS_MAX_ADDRS;
    int rc = ares_parse_aaaa_reply(abuf, alen, NULL, a, &n);
    if (rc == ARES_ENODATA) return;
    if (rc != ARES_SUCCESS) {
        entry_fail(e, "AAAA", rc);
        return;
    }
    for (int i = 0; i < n; i++) take_ttl(e, a[i].ttl);
    if (n > 0) {
        e->has_v6 = 1;
        memcpy(&e->v6, &a[0].ip6addr, sizeof(e->v6));
    }
}

static void record_txt(sg_dns_entry_t *e, const unsigned char *abuf, int alen)
{
    struct ares_txt_ext *txt = NULL;
    int rc = ares_parse_txt_reply_ext(abuf, alen, &txt);
    if (rc == ARES_ENODATA) return;
    if (rc != ARES_SUCCESS) {
        entry_fail(e, "TXT", rc);
        return;
    }
    e->txt = txt;
}

static void complete(sg_dns_source_t *d, sg_dns_entry_t *e);

static void on_answer(sg_dns_entry_t *e, int qtype, int status, const unsigned char *abuf, int alen)
{
    sg_dns_source_t *d = e->d;
    e->outstanding--;
    /* Closing: the channel is being (or about to be) destroyed and the
     * entries freed once the resolver has closed; nobody is told anything. */
    if (d->closing) return;
    const char *what = qtype == DNS_TYPE_A ? "A" : qtype == DNS_TYPE_AAAA ? "AAAA" : "TXT";
    switch (status) {
    case ARES_SUCCESS:
        if (qtype == DNS_TYPE_A)
            record_a(e, abuf, alen);
        else if (qtype == DNS_TYPE_AAAA)
            record_aaaa(e, abuf, alen);
        else
            record_txt(e, abuf, alen);
        break;
    case ARES_ENODATA:   /* NOERROR, no record of this type */
    case ARES_ENOTFOUND: /* NXDOMAIN */
        break;
    default: /* timeout, SERVFAIL, REFUSED, malformed, ... */
        entry_fail(e, what, status);
        break;
    }
    if (e->outstanding == 0 && !e->issuing) complete(d, e);
}

static void on_a(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
    on_answer(arg, DNS_TYPE_A, status, abuf, alen);
}

static void on_aaaa(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
    on_answer(arg, DNS_TYPE_AAAA, status, abuf, alen);
}

static void on_txt(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
    on_answer(arg, DNS_TYPE_TXT, status, abuf, alen);
}

/* A dead server fails every resolution; one warning per second per worker
 * is enough, with a count of the ones left out. */
static int may_warn(sg_dns_source_t *d)
{
    uint64_t now = uv_now(d->loop);
    if (d->warn_at && now - d->warn_at < 1000) {
        d->warn_suppressed++;
        return 0;
    }
    d->warn_note[0] = '\0';
    if (d->warn_suppressed)
        snprintf(d->warn_note, sizeof(d->warn_note), " (%llu similar warnings suppressed)",
                 (unsigned long long)d->warn_suppressed);
    d->warn_at = now ? now : 1;
    d->warn_suppressed = 0;
    return 1;
}

/* Builds the record from the three answers. Returns FOUND with *out holding
 * a new reference, NOT_FOUND, or FAILED. */
static sg_lookup_result_t build(sg_dns_source_t *d, sg_dns_entry_t *e, sg_sandbox_t **out)
{
    if (e->failed) {
        if (may_warn(d))
            sg_log_warn("dns: %.*s.%s: %s query failed: %s%s", (int)e->id_len, e->id, d->zone,
                        e->failed, ares_strerror(e->fail_status), d->warn_note);
        return SG_LOOKUP_FAILED;
    }
    if (!e->has_v4 && !e->has_v6) return SG_LOOKUP_NOT_FOUND;
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    if (e->has_v4) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
        sin->sin_family = AF_INET;
        sin->sin_addr = e->v4;
    } else {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_addr = e->v6;
    }
    sg_sandbox_t *sb = sg_sandbox_new(sg_slice(e->id, e->id_len), &ss, NULL);
    sb->source = "dns";
    for (struct ares_txt_ext *t = e->txt; t; t = t->next) {
        const char *why = NULL;
        if (sg_dns_apply_txt(sb, (const char *)t->txt, t->length, &why) != 0) {
            if (may_warn(d))
                sg_log_warn("dns: %.*s.%s: bad TXT setting, lookup fails: %s%s", (int)e->id_len,
                            e->id, d->zone, why, d->warn_note);
            sg_sandbox_unref(sb);
            return SG_LOOKUP_FAILED;
        }
    }
    *out = sb;
    return SG_LOOKUP_FOUND;
}

/* Turns a finished in-flight entry into a cache entry (or drops it on
 * failure). Returns the result, with *out holding a reference for the
 * caller when FOUND. e may be freed. */
static sg_lookup_result_t settle(sg_dns_source_t *d, sg_dns_entry_t *e, sg_sandbox_t **out)
{
    sg_sandbox_t *sb = NULL;
    sg_lookup_result_t r = build(d, e, &sb);
    if (e->txt) ares_free_data(e->txt);
    e->txt = NULL;
    if (r == SG_LOOKUP_FAILED) {
        sg_counter_inc(&d->stats->failures);
        sg_dns__cache_drop(&d->cache, e);
        return r;
    }
    uint64_t now = uv_now(d->loop);
    sg_dns__cache_answered(&d->cache, e, now);
    if (r == SG_LOOKUP_FOUND) {
        uint64_t ttl_ms = (uint64_t)e->ttl_s * 1000;
        if (ttl_ms > d->ttl_max_ms) ttl_ms = d->ttl_max_ms;
        if (ttl_ms < d->ttl_min_ms) ttl_ms = d->ttl_min_ms;
        e->state = SG_DNS_FOUND;
        e->sb = sb;
        e->expires = now + ttl_ms;
        sg_sandbox_ref(sb);
        *out = sb;
    } else {
        e->state = SG_DNS_ABSENT;
        e->expires = now + d->negative_ttl_ms;
    }
    return r;
}

/* Tells every waiter. Runs inside a c-ares callback; a waiter's callback may
 * start or cancel lookups (cancel reaches the batch) or close the source
 * (then the rest are dropped and the resolver's teardown waits until c-ares
 * has returned). */
static void complete(sg_dns_source_t *d, sg_dns_entry_t *e)
{
    dns_batch_t b = {.next = d->batches, .reqs = e->waiters, .n = e->n_waiters};
    e->waiters = NULL;
    e->n_waiters = e->cap_waiters = 0;
    sg_sandbox_t *sb = NULL;
    sg_lookup_result_t r = settle(d, e, &sb); /* e may be gone */
    d->batches = &b;
    for (size_t i = 0; i < b.n && !d->closing; i++) {
        sg_lookup_req_t *req = b.reqs[i];
        if (!req) continue; /* cancelled, maybe by an earlier waiter's callback */
        b.reqs[i] = NULL;
        size_t ignored;
        sg_dns__waitmap_take(&d->waiting, req, &ignored);
        if (r == SG_LOOKUP_FOUND) sg_sandbox_ref(sb);
        sg_lookup__source_done(req, r, r == SG_LOOKUP_FOUND ? sb : NULL);
    }
    dns_batch_t **pp = &d->batches;
    while (*pp != &b) pp = &(*pp)->next;
    *pp = b.next;
    if (sb) sg_sandbox_unref(sb);
    free(b.reqs);
}

/* Sends the three questions. c-ares may answer some at once (a bad name, no
 * memory); those are recorded and the caller checks e->outstanding. */
static void issue(sg_dns_source_t *d, sg_dns_entry_t *e)
{
    char name[DNS_LABEL_MAX + 1 + DNS_ZONE_MAX + 1];
    memcpy(name, e->id, e->id_len);
    name[e->id_len] = '.';
    memcpy(name + e->id_len + 1, d->zone, d->zone_len + 1);
    e->state = SG_DNS_PENDING;
    e->failed = NULL;
    e->fail_status = 0;
    e->has_v4 = e->has_v6 = 0;
    e->ttl_s = -1;
    e->issuing = 1;
    e->outstanding = 3;
    ares_channel ch = sg_resolver_channel(d->resolver);
    sg_resolver_enter(d->resolver);
    ares_query(ch, name, DNS_CLASS_IN, DNS_TYPE_A, on_a, e);
    ares_query(ch, name, DNS_CLASS_IN, DNS_TYPE_AAAA, on_aaaa, e);
    ares_query(ch, name, DNS_CLASS_IN, DNS_TYPE_TXT, on_txt, e);
    e->issuing = 0;
    sg_resolver_leave(d->resolver);
}

/* ---- the lookup source */

static int is_label(sg_slice_t id)
{
    if (id.len == 0 || id.len > DNS_LABEL_MAX) return 0;
    for (size_t i = 0; i < id.len; i++) {
        unsigned char c = (unsigned char)id.base[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-'))
            return 0;
    }
    return 1;
}

static sg_lookup_result_t dns_start(sg_lookup_source_t *src, sg_lookup_req_t *req, sg_slice_t id,
                                    sg_sandbox_t **out)
{
    sg_dns_source_t *d = src->data;
    if (d->closing) return SG_LOOKUP_FAILED;
    if (!is_label(id)) return SG_LOOKUP_NOT_FOUND;
    uint64_t hash = sg_dns__cache_hash(&d->cache, id);
    sg_dns_entry_t *e = sg_dns__cache_find(&d->cache, id, hash);
    if (e && e->state == SG_DNS_PENDING) {
        add_waiter(d, e, req);
        sg_counter_inc(&d->stats->coalesced);
        return SG_LOOKUP_PENDING;
    }
    if (e && uv_now(d->loop) < e->expires) {
        if (e->state == SG_DNS_ABSENT) {
            sg_counter_inc(&d->stats->negative_hits);
            return SG_LOOKUP_NOT_FOUND;
        }
        sg_counter_inc(&d->stats->cache_hits);
        sg_sandbox_ref(e->sb);
        *out = e->sb;
        return SG_LOOKUP_FOUND;
    }
    if (e) { /* expired: refresh in place; requests holding the record keep it */
        sg_dns__cache_reopen(&d->cache, e);
    } else {
        e = sg_dns__cache_add(&d->cache, id, hash);
        e->d = d;
    }
    sg_counter_inc(&d->stats->queries);
    issue(d, e);
    if (e->outstanding == 0) return settle(d, e, out); /* answered during issue() */
    add_waiter(d, e, req);
    return SG_LOOKUP_PENDING;
}

static void dns_cancel(sg_lookup_source_t *src, sg_lookup_req_t *req)
{
    sg_dns_source_t *d = src->data;
    sg_slice_t id = sg_slice(req->id, req->id_len);
    size_t i;
    if (!sg_dns__waitmap_take(&d->waiting, req, &i)) return;
    /* The slot becomes a hole (skipped when the answer comes): arrays live
     * for one resolution only, so holes never pile up for long. */
    sg_dns_entry_t *e = sg_dns__cache_find(&d->cache, id, sg_dns__cache_hash(&d->cache, id));
    if (e && e->state == SG_DNS_PENDING && i < e->n_waiters && e->waiters[i] == req) {
        e->waiters[i] = NULL;
        return;
    }
    for (dns_batch_t *b = d->batches; b; b = b->next) {
        if (i < b->n && b->reqs[i] == req) {
            b->reqs[i] = NULL;
            return;
        }
    }
}

/* ---- life cycle */

static int check_zone(const char *zone, size_t *len)
{
    size_t n = strlen(zone);
    if (n && zone[n - 1] == '.') n--;
    if (n == 0 || n > DNS_ZONE_MAX) return -1;
    size_t label = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)zone[i];
        if (c == '.') {
            if (label == 0) return -1;
            label = 0;
            continue;
        }
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_'))
            return -1;
        if (++label > DNS_LABEL_MAX) return -1;
    }
    if (label == 0) return -1;
    *len = n;
    return 0;
}

int sg_dns_source_new(uv_loop_t *loop, const sg_dns_conf_t *conf, sg_dns_source_t **out)
{
    size_t zone_len;
    if (!conf || !conf->zone || conf->n_servers == 0 || !conf->servers) return UV_EINVAL;
    if (check_zone(conf->zone, &zone_len) != 0) return UV_EINVAL;

    sg_dns_source_t *d = calloc(1, sizeof(*d));
    if (!d) return UV_ENOMEM;
    d->loop = loop;
    d->zone = strndup(conf->zone, zone_len);
    d->zone_len = zone_len;
    if (!d->zone || sg_dns__cache_init(&d->cache, SG_DNS_CACHE_MAX) != 0) {
        sg_dns__cache_free(&d->cache);
        free(d->zone);
        free(d);
        return UV_ENOMEM;
    }
    d->ttl_min_ms = conf->ttl_min_ms;
    d->ttl_max_ms = conf->ttl_max_ms;
    d->negative_ttl_ms = conf->negative_ttl_ms;
    d->stats = &d->own_stats;

    sg_resolver_opts_t opts = {.servers = conf->servers,
                               .n_servers = conf->n_servers,
                               .timeout_ms = conf->timeout_ms,
                               .tries = conf->tries};
    int rc = sg_resolver_new(loop, &opts, &d->resolver);
    if (rc != 0) {
        sg_dns__cache_free(&d->cache);
        free(d->zone);
        free(d);
        return rc;
    }

    d->src =
        (sg_lookup_source_t){.name = "dns", .start = dns_start, .cancel = dns_cancel, .data = d};
    *out = d;
    return 0;
}

sg_lookup_source_t *sg_dns_source_lookup(sg_dns_source_t *d)
{
    return &d->src;
}

const sg_dns_stats_t *sg_dns_source_stats(const sg_dns_source_t *d)
{
    return d->stats;
}

/* Runs from the resolver's last close callback: ares_destroy has answered
 * every query (ARES_EDESTRUCTION, ignored by on_answer while closing), so
 * no c-ares callback holds an entry any more. */
static void on_resolver_closed(void *data)
{
    sg_dns_source_t *d = data;
    sg_dns__cache_free(&d->cache);
    sg_dns__waitmap_free(&d->waiting);
    free(d->zone);
    free(d);
}

void sg_dns_source_close(sg_dns_source_t *d)
{
    if (d->closing) return;
    d->closing = 1;
    sg_resolver_close(d->resolver, on_resolver_closed, d);
}

void sg_dns_source__set_max_entries(sg_dns_source_t *d, size_t max_entries)
{
    d->cache.max_entries = max_entries ? max_entries : 1;
}

void sg_dns_source_set_stats(sg_dns_source_t *d, sg_dns_stats_t *stats)
{
    d->stats = stats ? stats : &d->own_stats;
}

size_t sg_dns_source__cached(const sg_dns_source_t *d)
{
    return d->cache.n_cached;
}

size_t sg_dns_source__waiting(const sg_dns_source_t *d)
{
    return d->waiting.count;
}
