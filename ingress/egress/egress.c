#include "egress/egress.h"

#include "core/log.h"
#include "core/strbuf.h"
#include "egress/nft.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SG_EGRESS_LIST_PAGE 1024

/* One sandbox by source address: 16 address bytes (IPv4 as ::ffff:a.b.c.d)
 * so IPv4 and IPv6 sort in one order. */
typedef struct {
    unsigned char key[16];
    sg_sandbox_t *rec; /* one reference, owned by the table */
} egress_entry_t;

typedef struct {
    size_t n;
    egress_entry_t entries[];
} egress_table_t;

struct sg_egress_s {
    egress_table_t *_Atomic table;
    sg_qsbr_t *qsbr;
    sg_egress_guard_t *guard;
    sg_egress_nft_opts_t nft;
    char nft_table[64];
    int nft_apply;
    sg_strbuf_t ruleset;
    /* Copies of the config's sandbox_interfaces, which nft points at: the
     * pointers, then the strings, in the same allocation as eg (so freed
     * with it), since eg outlives the config snapshot it was built from. */
    char *sandbox_interfaces[];
};

/* Writes addr's 16-byte key; returns 0, or -1 for another family. */
static int addr_key(const struct sockaddr *addr, unsigned char key[16])
{
    if (addr->sa_family == AF_INET) {
        memset(key, 0, 10);
        key[10] = key[11] = 0xff;
        memcpy(key + 12, &((const struct sockaddr_in *)addr)->sin_addr, 4);
        return 0;
    }
    if (addr->sa_family == AF_INET6) {
        memcpy(key, &((const struct sockaddr_in6 *)addr)->sin6_addr, 16);
        return 0;
    }
    return -1;
}

static int entry_cmp(const void *a, const void *b)
{
    return memcmp(((const egress_entry_t *)a)->key, ((const egress_entry_t *)b)->key, 16);
}

static void table_free(void *arg)
{
    egress_table_t *t = arg;
    if (!t) return;
    for (size_t i = 0; i < t->n; i++) sg_sandbox_unref(t->entries[i].rec);
    free(t);
}

static uint16_t port_of(const sg_listen_conf_t *l)
{
    if (!l->text[0]) return 0;
    const struct sockaddr_storage *ss = &l->addr;
    return ntohs(ss->ss_family == AF_INET6 ? ((const struct sockaddr_in6 *)ss)->sin6_port
                                           : ((const struct sockaddr_in *)ss)->sin_port);
}

int sg_egress_new(const sg_egress_conf_t *conf, sg_qsbr_t *qsbr, sg_egress_t **out, char *err,
                  size_t errlen)
{
    size_t n_ifaces = conf->n_sandbox_interfaces, text_bytes = 0;
    for (size_t i = 0; i < n_ifaces; i++) text_bytes += strlen(conf->sandbox_interfaces[i]) + 1;
    sg_egress_t *eg = calloc(1, sizeof(*eg) + n_ifaces * sizeof(char *) + text_bytes);
    if (!eg) abort();
    char *text = (char *)&eg->sandbox_interfaces[n_ifaces];
    for (size_t i = 0; i < n_ifaces; i++) {
        size_t len = strlen(conf->sandbox_interfaces[i]) + 1;
        eg->sandbox_interfaces[i] = memcpy(text, conf->sandbox_interfaces[i], len);
        text += len;
    }
    if (sg_egress_guard_new(conf->nameserver, (const char *const *)conf->always_denied_exceptions,
                            conf->n_always_denied_exceptions, &eg->guard, err, errlen) != 0) {
        free(eg);
        return -1;
    }
    eg->qsbr = qsbr;
    snprintf(eg->nft_table, sizeof(eg->nft_table), "%s",
             conf->nft_table ? conf->nft_table : "sandgate");
    eg->nft =
        (sg_egress_nft_opts_t){.table = eg->nft_table,
                               .http_port = port_of(&conf->listen_http),
                               .tls_port = port_of(&conf->listen_tls),
                               .other_port = port_of(&conf->listen_other),
                               .sandbox_interfaces = (const char *const *)eg->sandbox_interfaces,
                               .n_sandbox_interfaces = n_ifaces};
    eg->nft_apply = conf->nft_apply;
    *out = eg;
    return 0;
}

/* Every record of the store, each with a new reference, sorted by address.
 * Two records on one address (the admin API refuses that while egress is
 * on, but a store written before may hold it): the first id wins, the
 * other is logged, so one sandbox never runs under another's policy by
 * accident of order. */
static egress_table_t *build_table(sg_store_t *st)
{
    size_t cap = st ? sg_store_count(st) : 0;
    egress_table_t *t = malloc(sizeof(*t) + (cap ? cap : 1) * sizeof(egress_entry_t));
    if (!t) abort();
    t->n = 0;
    sg_sandbox_t *page[SG_EGRESS_LIST_PAGE];
    char after[SG_SANDBOX_ID_MAX + 1] = "";
    int more = st != NULL;
    while (more) {
        size_t n = sg_store_list(st, after, SG_EGRESS_LIST_PAGE, page, &more);
        for (size_t i = 0; i < n && t->n < cap; i++) {
            egress_entry_t *e = &t->entries[t->n];
            if (addr_key((const struct sockaddr *)&page[i]->addr, e->key) != 0) continue;
            sg_sandbox_ref(page[i]);
            e->rec = page[i];
            t->n++;
        }
        if (!n) break;
        snprintf(after, sizeof(after), "%s", page[n - 1]->id);
    }
    qsort(t->entries, t->n, sizeof(t->entries[0]), entry_cmp);
    size_t kept = 0;
    for (size_t i = 0; i < t->n; i++) {
        if (kept && memcmp(t->entries[kept - 1].key, t->entries[i].key, 16) == 0) {
            sg_log_warn("egress: sandboxes '%s' and '%s' share an address; '%s' is ignored",
                        t->entries[kept - 1].rec->id, t->entries[i].rec->id, t->entries[i].rec->id);
            sg_sandbox_unref(t->entries[i].rec);
            continue;
        }
        t->entries[kept++] = t->entries[i];
    }
    t->n = kept;
    return t;
}

int sg_egress_sync(sg_egress_t *eg, sg_store_t *st, char *err, size_t errlen)
{
    egress_table_t *t = build_table(st);
    egress_table_t *old = atomic_exchange_explicit(&eg->table, t, memory_order_acq_rel);
    if (old) {
        if (eg->qsbr)
            sg_qsbr_defer(eg->qsbr, table_free, old);
        else
            table_free(old);
    }

    sg_egress_nft_sandbox_t *sbs = calloc(t->n ? t->n : 1, sizeof(*sbs));
    if (!sbs) abort();
    for (size_t i = 0; i < t->n; i++)
        sbs[i] = (sg_egress_nft_sandbox_t){.id = t->entries[i].rec->id,
                                           .addr = &t->entries[i].rec->addr,
                                           .policy = t->entries[i].rec->egress_policy};
    sg_strbuf_reset(&eg->ruleset);
    int rc = sg_egress_nft_render(&eg->ruleset, &eg->nft, eg->guard, sbs, t->n);
    free(sbs);
    sg_strbuf_append(&eg->ruleset, "", 1); /* NUL for sg_egress_ruleset */
    eg->ruleset.len--;
    if (rc != 0) {
        snprintf(err, errlen, "could not render the nftables ruleset");
        return -1;
    }
    if (!eg->nft_apply) return 0;
    if (sg_egress_nft_apply(eg->ruleset.base, eg->ruleset.len, err, errlen) != 0) return -1;
    return 0;
}

sg_sandbox_t *sg_egress_find(const sg_egress_t *eg, const struct sockaddr *src)
{
    unsigned char key[16];
    if (addr_key(src, key) != 0) return NULL;
    const egress_table_t *t = atomic_load_explicit(&eg->table, memory_order_acquire);
    if (!t) return NULL;
    size_t lo = 0, hi = t->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = memcmp(t->entries[mid].key, key, 16);
        if (c == 0) return t->entries[mid].rec;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

const sg_egress_guard_t *sg_egress_guard(const sg_egress_t *eg)
{
    return eg->guard;
}

const char *sg_egress_ruleset(const sg_egress_t *eg)
{
    return eg->ruleset.len ? eg->ruleset.base : "";
}

void sg_egress_free(sg_egress_t *eg)
{
    if (!eg) return;
    egress_table_t *t = atomic_exchange_explicit(&eg->table, NULL, memory_order_acq_rel);
    if (t) {
        if (eg->qsbr)
            sg_qsbr_defer(eg->qsbr, table_free, t);
        else
            table_free(t);
    }
    sg_egress_guard_free(eg->guard);
    sg_strbuf_free(&eg->ruleset);
    free(eg);
}
