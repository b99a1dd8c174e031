/* The nftables ruleset that enforces egress policies below the proxy:
 * rendered as text for all sandboxes at once, loaded with `nft -f -`.
 *
 * Shape (one table, `inet <table>`; the text first creates, deletes and
 * re-creates that table, so loading it is one atomic transaction that
 * replaces only this table and works whether or not it existed):
 *   set sandboxes4/sandboxes6     every sandbox source address
 *   set always_denied4/6          the always-denied ranges (plus ::ffff:0:0/96:
 *                                 on the wire a mapped destination is not
 *                                 reachable as IPv4, so it is simply dropped)
 *   chain antispoof       prerouting, priority raw: a sandbox source that
 *                         does not route back through its input interface
 *                         is dropped; with sandbox interface patterns, so
 *                         is every packet in on a matching interface whose
 *                         source is no sandbox's (IPv6 neighbour and router
 *                         solicitations and neighbour adverts from fe80::/10
 *                         excepted, so the link keeps working)
 *   chain prerouting_nat  nat prerouting -> redirect_tcp: TCP from sandboxes,
 *                         dport 80 -> http_port, 443 -> tls_port, any other
 *                         dport -> other_port
 *   chain host_input      input -> sandbox_to_host: from sandboxes only
 *                         established/related, the listener ports and IPv6
 *                         neighbour discovery are accepted; all else dropped
 *   chain forward_filter  forward -> sandbox_out: from sandboxes,
 *                         established/related accepted (replies on
 *                         connections made to the sandbox); TCP dropped (new
 *                         TCP was redirected, so forwarded TCP means its
 *                         listener is off); always-denied minus exceptions
 *                         dropped (chain always_denied); then the sandbox's
 *                         own chain sb_<id>: allow CIDRs (and the nameserver
 *                         when it has domain rules) accept, deny CIDRs drop;
 *                         else accept
 *
 * A port 0 turns that listener off: its TCP is not redirected, so it is
 * forwarded and dropped by the forward chain (the other listener never takes
 * over ports 80/443).
 *
 * Chain names avoid nft keywords (redirect, input, forward would not parse).
 * The table name cannot be quoted either: a keyword there (say "nat") makes
 * the load fail with nft's syntax error. */
#ifndef SG_EGRESS_NFT_H
#define SG_EGRESS_NFT_H

#include "core/strbuf.h"
#include "egress/policy.h"

#include <stdint.h>
#include <sys/socket.h>

typedef struct {
    const char *table;                        /* [A-Za-z][A-Za-z0-9_-]{0,63}; NULL = "sandgate" */
    uint16_t http_port, tls_port, other_port; /* 0 = listener off */
    /* iifname patterns of the interfaces sandboxes send on: 1..15 of
     * [A-Za-z0-9_.-], the last of which may be a '*' wildcard (not '*'
     * alone). None: sources are checked only for sandbox addresses (fib). */
    const char *const *sandbox_interfaces;
    size_t n_sandbox_interfaces;
} sg_egress_nft_opts_t;

typedef struct {
    const char *id;                      /* names the sandbox's chain when [A-Za-z0-9_-]{1,64} */
    const struct sockaddr_storage *addr; /* AF_INET or AF_INET6 (IPv4-mapped counts as IPv4) */
    const sg_egress_policy_t *policy;    /* NULL = default */
} sg_egress_nft_sandbox_t;

/* Appends the whole ruleset to out. Sandboxes without a usable address are
 * left out; a second sandbox with an address already listed is left out too
 * (the first one's policy applies; a comment in the text says so). Returns
 * 0, or -1 when the table name or an interface pattern is unusable (out
 * unchanged). */
int sg_egress_nft_render(sg_strbuf_t *out, const sg_egress_nft_opts_t *o,
                         const sg_egress_guard_t *g, const sg_egress_nft_sandbox_t *sbs, size_t n);

/* Runs `nft -f -` with text on its stdin and waits for it (blocking: call it
 * off the event loop). 0 on success, or -1 with err holding nft's error
 * output (or why it could not run). SIGPIPE is held off while writing. */
int sg_egress_nft_apply(const char *text, size_t len, char *err, size_t err_cap);

#endif
