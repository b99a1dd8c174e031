/* The egress role's host-wide state: which sandbox a source address belongs
 * to (with its policy), the always-denied ranges, and the nftables ruleset
 * that redirects the sandboxes' traffic to the egress listeners.
 *
 * Threads: one writer (the admin/main thread) calls sg_egress_sync after
 * every change to the sandbox store; workers (QSBR readers) call
 * sg_egress_find and sg_egress_guard concurrently, lock-free.
 *
 * Reads: the writer builds an immutable table (records sorted by address,
 * each holding a reference) and publishes it with a release store; the old
 * table goes to QSBR. A reader's pointers are valid until its next
 * quiescent point; it takes sg_sandbox_ref to keep a record longer. */
#ifndef SG_EGRESS_EGRESS_H
#define SG_EGRESS_EGRESS_H

#include "config/config.h"
#include "core/qsbr.h"
#include "egress/policy.h"
#include "route/sandbox.h"
#include "route/store.h"

typedef struct sg_egress_s sg_egress_t;

/* Builds the host-wide state from conf (copied: guard, nft options; the
 * listen ports come from conf's listen_* addresses). qsbr: the workers'
 * instance (NULL: no concurrent readers). Returns 0, or -1 with err. Does
 * not touch nftables yet (sg_egress_sync does). */
int sg_egress_new(const sg_egress_conf_t *conf, sg_qsbr_t *qsbr, sg_egress_t **out, char *err,
                  size_t errlen);

/* Writer. Rebuilds the table from every record in st (NULL: none),
 * publishes it, renders the ruleset and, with nft_apply, loads it. Returns
 * 0, or -1 with err when nft refused the ruleset (the table is published
 * anyway: the proxy side must follow the store even if the kernel rules
 * could not). */
int sg_egress_sync(sg_egress_t *eg, sg_store_t *st, char *err, size_t errlen);

/* Readers and the writer: the record whose address equals src's address
 * (port ignored; IPv4-mapped IPv6 is matched as IPv4), or NULL. Borrowed. */
sg_sandbox_t *sg_egress_find(const sg_egress_t *eg, const struct sockaddr *src);

/* The always-denied ranges and nameserver (immutable, lives as long as eg). */
const sg_egress_guard_t *sg_egress_guard(const sg_egress_t *eg);

/* Writer: the last rendered ruleset (NUL-terminated; "" before the first sync). */
const char *sg_egress_ruleset(const sg_egress_t *eg);

/* Writer. Frees everything (the last table through QSBR). The nftables
 * rules stay loaded on purpose: with sandgate stopped, redirected
 * connections are refused, so egress fails closed rather than open. NULL
 * is a no-op. */
void sg_egress_free(sg_egress_t *eg);

#endif
