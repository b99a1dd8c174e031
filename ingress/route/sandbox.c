#include "route/sandbox.h"

#include "egress/policy.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <stdlib.h>
#include <string.h>

sg_sandbox_t *sg_sandbox_new(sg_slice_t id, const struct sockaddr_storage *addr, const char *mask)
{
    sg_sandbox_t *sb = calloc(1, sizeof(*sb));
    if (!sb) abort();
    atomic_init(&sb->refs, 1);
    sb->id_len = id.len < SG_SANDBOX_ID_MAX ? id.len : SG_SANDBOX_ID_MAX;
    memcpy(sb->id, id.base, sb->id_len);
    sb->addr = *addr;
    sb->source = "static";
    if (mask) {
        sb->mask = strdup(mask);
        if (!sb->mask) abort();
    }
    return sb;
}

void sg_sandbox_set_token(sg_sandbox_t *sb, sg_slice_t token)
{
    SHA256((const unsigned char *)token.base, token.len, sb->token_sha256);
    sb->has_token = 1;
}

int sg_sandbox_token_ok(const sg_sandbox_t *sb, sg_slice_t token)
{
    if (!sb->has_token) return 1;
    unsigned char digest[32];
    SHA256((const unsigned char *)token.base, token.len, digest);
    return CRYPTO_memcmp(digest, sb->token_sha256, sizeof(digest)) == 0;
}

void sg_sandbox_ref(sg_sandbox_t *sb)
{
    atomic_fetch_add_explicit(&sb->refs, 1, memory_order_relaxed);
}

void sg_sandbox_unref(sg_sandbox_t *sb)
{
    if (atomic_fetch_sub_explicit(&sb->refs, 1, memory_order_acq_rel) != 1) return;
    free(sb->mask);
    sg_egress_policy_free(sb->egress_policy);
    free(sb);
}

/* FNV-1a: ids are short and already validated, a simple hash is enough. */
static size_t hash_id(sg_slice_t id)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < id.len; i++) {
        h ^= (unsigned char)id.base[i];
        h *= 1099511628211ULL;
    }
    return (size_t)h;
}

void sg_sandbox_table_build(sg_sandbox_table_t *t, const sg_sandbox_conf_t *conf, size_t n)
{
    size_t size = 16;
    while (size < n * 2) size *= 2;
    t->slots = calloc(size, sizeof(*t->slots));
    if (!t->slots) abort();
    t->mask = size - 1;
    t->count = 0;
    for (size_t i = 0; i < n; i++) {
        sg_slice_t id = sg_slice_cstr(conf[i].id);
        size_t pos = hash_id(id) & t->mask;
        while (t->slots[pos]) pos = (pos + 1) & t->mask;
        t->slots[pos] = sg_sandbox_new(id, &conf[i].addr, conf[i].mask);
        t->count++;
    }
}

sg_sandbox_t *sg_sandbox_table_get(const sg_sandbox_table_t *t, sg_slice_t id)
{
    if (!t->slots) return NULL;
    size_t pos = hash_id(id) & t->mask;
    for (sg_sandbox_t *sb; (sb = t->slots[pos]) != NULL; pos = (pos + 1) & t->mask) {
        if (sb->id_len == id.len && memcmp(sb->id, id.base, id.len) == 0) return sb;
    }
    return NULL;
}

void sg_sandbox_table_free(sg_sandbox_table_t *t)
{
    if (!t->slots) return;
    for (size_t i = 0; i <= t->mask; i++)
        if (t->slots[i]) sg_sandbox_unref(t->slots[i]);
    free(t->slots);
    t->slots = NULL;
}
