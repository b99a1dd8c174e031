/* The DNS lookup source: sandbox id -> record by resolving `<id>.<zone>` with
 * c-ares on the worker's libuv loop, behind a per-worker cache.
 *
 * For one id the source asks A, AAAA and TXT of the same name at once. The
 * record's address is the first A address, else the first AAAA address; TXT
 * strings carry the settings (see sg_dns_apply_txt). Answers:
 *   - an address (and valid TXT): FOUND, cached for the smallest A/AAAA TTL
 *     clamped to [ttl_min, ttl_max];
 *   - NXDOMAIN, or NOERROR without any address: NOT_FOUND (the next source
 *     is asked), cached for negative_ttl;
 *   - anything else (timeout, SERVFAIL, REFUSED, a malformed answer, a bad
 *     TXT value): FAILED (503 lookup_failed), nothing cached, so the next
 *     request queries again. A bad TXT value fails closed on purpose: serving
 *     a private sandbox without its token would be worse than a 503.
 * A cache hit answers synchronously. Concurrent requests for one id share
 * one resolution (coalescing); cancelling a request removes only that one.
 *
 * Threads: one source per worker loop; every function runs on that loop's
 * thread (only the counters may be read from others). Nothing is shared
 * between workers (each has its own cache and c-ares channel). */
#ifndef SG_ROUTE_DNS_H
#define SG_ROUTE_DNS_H

#include "config/config.h"
#include "core/counter.h"
#include "route/lookup.h"
#include "route/sandbox.h"
#include <stddef.h>
#include <uv.h>

typedef struct sg_dns_source_s sg_dns_source_t;

/* Default bound on cached (answered) entries per worker. When full, expired
 * entries go first, then the oldest answered ones; in-flight resolutions are
 * never evicted. */
#define SG_DNS_CACHE_MAX 100000

/* Counters written by the source's worker, readable from any thread with
 * sg_counter_get (relaxed atomics, no lock).
 *   queries        resolutions started (each sends the A, AAAA and TXT questions)
 *   cache_hits     requests answered FOUND from the cache
 *   negative_hits  requests answered NOT_FOUND from the negative cache
 *   failures       resolutions that ended FAILED (every waiter got FAILED)
 *   coalesced      requests that joined a resolution already in flight */
typedef struct {
    sg_counter_t queries, cache_hits, negative_hits, failures, coalesced;
} sg_dns_stats_t;

/* Creates the source on `loop` (the worker's, on its thread). `conf` is
 * borrowed for the call only: zone, servers and timings are copied. Requires
 * conf->zone (a host name; one trailing dot allowed, at most 189 bytes so
 * that `<id>.<zone>` fits in 253) and at least one server. Neither
 * /etc/resolv.conf, /etc/hosts nor search domains influence queries.
 * Returns 0 and *out, or a negative libuv error (UV_EINVAL for a bad conf,
 * UV_ENOMEM, UV_EIO for another c-ares failure) with *out untouched. */
int sg_dns_source_new(uv_loop_t *loop, const sg_dns_conf_t *conf, sg_dns_source_t **out);

/* The generic lookup interface (name "dns"); owned by d, valid until
 * sg_dns_source_close. Ids that cannot be one DNS label ([A-Za-z0-9-],
 * 1..63 bytes) answer NOT_FOUND without a query. After close starts, start
 * answers FAILED. */
sg_lookup_source_t *sg_dns_source_lookup(sg_dns_source_t *d);

/* Stops the source: resolutions in flight are cancelled and their remaining
 * requests are dropped silently (their callbacks never fire; callers cancel
 * their own requests first), the cache is emptied, and the c-ares channel and
 * all libuv handles are closed. Memory is freed in the handles' close
 * callbacks, so the loop must run afterwards; call it before anything else
 * closes the loop's handles (a uv_walk closing every handle would close the
 * source's timer and polls without their callbacks: d leaks and this call
 * then trips libuv's double-close assertion). Safe to call from inside a
 * lookup callback fired by this source (the teardown then waits until c-ares
 * returns). d must not be used after this call, except that
 * its own counters stay readable until the loop has run the close callbacks. */
void sg_dns_source_close(sg_dns_source_t *d);

/* The counters in use (borrowed; valid while d lives, or while the caller's
 * storage lives after sg_dns_source_set_stats). */
const sg_dns_stats_t *sg_dns_source_stats(const sg_dns_source_t *d);

/* Counts into caller-owned storage from now on (NULL: back to the source's
 * own). For metrics read by another thread: storage inside the worker
 * outlives the source, whose memory goes in a close callback. Counts made
 * before the call are not carried over. */
void sg_dns_source_set_stats(sg_dns_source_t *d, sg_dns_stats_t *stats);

/* Pure (fuzzed): applies one TXT character-string "key=value" (len bytes,
 * not NUL-terminated, may contain any byte) to a record being built (not yet
 * published). Keys, matched ASCII case-insensitively after trimming spaces
 * and tabs around them:
 *   mask_request_host=<template>           sg_mask_validate must accept it
 *   traffic_access_token_sha256=<64 hex>   sets has_token and token_sha256
 *   max_incoming_connections=<1..1000000>  decimal digits only
 * Values are taken as they are (no trimming). A key given again with a
 * different value is an error (a record with two tokens is ambiguous);
 * the same value again is accepted. Unknown keys and empty strings are
 * ignored (returns 0). A string without '=' is ignored unless it starts with
 * a known key, in which case it is an error (a mistyped separator must not
 * silently drop a token).
 * Returns 0, or -1 with *why set to a static reason (rec may then be
 * partially updated; the caller discards it). rec->mask, when replaced, is
 * freed and reallocated with malloc. */
int sg_dns_apply_txt(sg_sandbox_t *rec, const char *txt, size_t len, const char **why);

/* Tests only: lowers the cache bound (default SG_DNS_CACHE_MAX, minimum 1). */
void sg_dns_source__set_max_entries(sg_dns_source_t *d, size_t max_entries);
/* Tests only: cached entries (answered, not in flight). */
size_t sg_dns_source__cached(const sg_dns_source_t *d);
/* Tests only: requests waiting for an answer (cancelled ones excluded). */
size_t sg_dns_source__waiting(const sg_dns_source_t *d);

#endif
