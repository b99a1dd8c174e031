/* Sandbox records and the immutable table that holds the static ones. */
#ifndef SG_ROUTE_SANDBOX_H
#define SG_ROUTE_SANDBOX_H

#include "config/config.h"
#include "core/slice.h"
#include <stdatomic.h>

/* What a lookup yields: where the sandbox's VM is and how to talk to it.
 * Reference-counted because sources may replace or drop a record while
 * requests still use it; a record is immutable once published. */
typedef struct sg_sandbox_s {
    _Atomic int refs;
    char id[SG_SANDBOX_ID_MAX + 1];
    size_t id_len;
    struct sockaddr_storage addr;   /* port 0; the request supplies it */
    char *mask;                     /* NULL: forward Host unchanged */
    int has_token;                  /* requests must carry the traffic access token */
    unsigned char token_sha256[32]; /* SHA-256 of the token (the token itself is never kept) */
    /* Concurrent exchanges allowed, 0 = unlimited. Counted per id in
     * route/limits.h, across workers and across copies of the record. */
    unsigned max_connections;
    const char *source; /* "static", "admin" or "dns": metrics and logs */
    /* Egress policy (egress/policy.h), owned by the record; NULL = the
     * default (internet on, no rules). Set only on admin records, before
     * they are published; fixed for the record's life. */
    struct sg_egress_policy_s *egress_policy;
} sg_sandbox_t;

/* Copies id/addr/mask; returns a record with one reference and no token or
 * limit (callers set has_token / token_sha256 / max_connections before
 * publishing the record). */
sg_sandbox_t *sg_sandbox_new(sg_slice_t id, const struct sockaddr_storage *addr, const char *mask);
/* Marks the record private: requests must carry this token. Only its
 * SHA-256 is kept. */
void sg_sandbox_set_token(sg_sandbox_t *sb, sg_slice_t token);
/* Constant-time check of a presented token against the record's hash. */
int sg_sandbox_token_ok(const sg_sandbox_t *sb, sg_slice_t token);
void sg_sandbox_ref(sg_sandbox_t *sb);
void sg_sandbox_unref(sg_sandbox_t *sb);

/* Read-only hash table id -> record, built once (from a config snapshot) and
 * then shared by all workers without locks. */
typedef struct {
    sg_sandbox_t **slots; /* open addressing, power-of-two size */
    size_t mask;
    size_t count;
} sg_sandbox_table_t;

void sg_sandbox_table_build(sg_sandbox_table_t *t, const sg_sandbox_conf_t *conf, size_t n);
/* Borrowed pointer (valid while the table lives) or NULL. */
sg_sandbox_t *sg_sandbox_table_get(const sg_sandbox_table_t *t, sg_slice_t id);
void sg_sandbox_table_free(sg_sandbox_table_t *t);

#endif
