/* Egress policy: the per-sandbox allow/deny rules set through the admin API,
 * the host-wide guard (always-denied ranges, their exceptions, the
 * nameserver) and the verdict for one destination.
 *
 * Pure: no I/O and no event loop. Policies and guards are immutable once
 * built, so the decide and match functions may run on any thread at once;
 * they never allocate. */
#ifndef SG_EGRESS_POLICY_H
#define SG_EGRESS_POLICY_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* ---- address ranges ---- */

/* An address range, host bits zero. A range written inside ::ffff:0:0/96
 * (prefix >= 96) is held as the IPv4 range it maps, because IPv4-mapped
 * IPv6 addresses are judged as the IPv4 address they embed. */
typedef struct {
    int family;               /* AF_INET or AF_INET6 */
    uint8_t prefix;           /* 0..32 or 0..128 */
    uint8_t addr[16];         /* network byte order; AF_INET uses the first 4 */
    unsigned all_traffic : 1; /* written as 0.0.0.0/0: every IPv4 AND every IPv6 address */
} sg_cidr_t;

/* Room for any canonical range text ("ffff:...:ffff/128" and the NUL). */
#define SG_CIDR_TEXT_MAX 64

typedef enum {
    SG_CIDR_OK = 0,
    SG_CIDR_EADDR = -1,     /* not an IPv4/IPv6 address (before any '/') */
    SG_CIDR_EPREFIX = -2,   /* prefix not a decimal 0..32 / 0..128 */
    SG_CIDR_EHOSTBITS = -3, /* bits set after the prefix, as in 10.0.0.1/8 */
} sg_cidr_status_t;

/* Parses "address" or "address/prefix" (NUL-terminated). Returns SG_CIDR_OK
 * or one of the negative statuses. */
int sg_cidr_parse(const char *text, sg_cidr_t *out);
/* 1 when addr (AF_INET or AF_INET6; IPv4-mapped IPv6 is matched as IPv4)
 * lies in c. ::/0 matches IPv6 only; an all_traffic range matches both. */
int sg_cidr_contains(const sg_cidr_t *c, const struct sockaddr *addr);
/* 1 when every address of inner is in outer (same family after mapping). */
int sg_cidr_covers(const sg_cidr_t *outer, const sg_cidr_t *inner);
/* Writes "address/prefix" of c as held (mapped ranges in IPv4 form; an
 * all_traffic range as 0.0.0.0/0) into buf[SG_CIDR_TEXT_MAX]; returns buf. */
char *sg_cidr_format(const sg_cidr_t *c, char *buf);

/* ---- verdicts ---- */

typedef enum {
    SG_EGRESS_REASON_DOMAIN,
    SG_EGRESS_REASON_CIDR,
    SG_EGRESS_REASON_DEFAULT,
    SG_EGRESS_REASON_ALWAYS_DENIED,
    SG_EGRESS_REASON_UNKNOWN_SANDBOX,
    SG_EGRESS_REASON_SNIFF_FAILED,
    SG_EGRESS_REASON_DIAL_FAILED,
    SG_EGRESS_REASON_COUNT
} sg_egress_reason_t;

/* "domain", "cidr", "default", "always_denied", "unknown_sandbox",
 * "sniff_failed", "dial_failed" (metric label and log field values). */
const char *sg_egress_reason_name(sg_egress_reason_t r);

typedef struct {
    int allow;
    sg_egress_reason_t reason;
    /* The matched rule's text, borrowed from the policy or guard (valid
     * while they live), or NULL (reason default). */
    const char *rule;
} sg_egress_verdict_t;

/* ---- per-sandbox policy ---- */

/* Immutable once built; owned by whoever built it. NULL everywhere means the
 * default policy: internet on, no rules. */
typedef struct sg_egress_policy_s sg_egress_policy_t;

/* Builds a policy from the admin API's "allow_internet_access" and "network"
 * values (either NULL = absent). Returns 0 with *out set (NULL when the
 * result is the default policy, so most sandboxes store nothing), or -1 with
 * a one-line message in err naming the offending field and rule, e.g.
 *   network.allow_out[2]: "example.com": domain rules need deny_out to contain 0.0.0.0/0
 * and *field set to "network" or "allow_internet_access".
 *
 * Normalisation: domains lower-cased without their trailing dot; addresses
 * and ranges in inet_ntop form (a bare address stays without prefix);
 * allow_internet_access=false appends 0.0.0.0/0 to deny_out unless present.
 * Order and duplicates are kept. allow_internet_access is not stored: it is
 * read back as "deny_out has no 0.0.0.0/0", so {false} and
 * {deny_out:["0.0.0.0/0"]} are the same policy. */
int sg_egress_policy_from_json(const json_t *allow_internet_access, const json_t *network,
                               sg_egress_policy_t **out, char *err, size_t err_cap,
                               const char **field);
/* Sets "allow_internet_access" and "network": {"allow_out", "deny_out"} (the
 * normalised lists) on obj. p NULL: true and two empty lists. */
void sg_egress_policy_to_json(const sg_egress_policy_t *p, json_t *obj);
/* 1 when both normalise to the same lists (in order). NULL is the default. */
int sg_egress_policy_equal(const sg_egress_policy_t *a, const sg_egress_policy_t *b);
void sg_egress_policy_free(sg_egress_policy_t *p);
/* 1 when allow_out holds at least one domain rule. */
int sg_egress_policy_has_domains(const sg_egress_policy_t *p);
/* The address rules of allow_out (allow != 0) or deny_out, in order: returns
 * the count and borrowed arrays of ranges and their normalised texts. */
size_t sg_egress_policy_cidrs(const sg_egress_policy_t *p, int allow, const sg_cidr_t **cidrs,
                              const char *const **texts);

/* ---- host-wide guard ---- */

typedef struct sg_egress_guard_s sg_egress_guard_t;

/* nameserver: an IPv4/IPv6 address, NULL = 8.8.8.8. exceptions: ranges
 * carved out of the always-denied ones (config
 * egress.always_denied_exceptions). Returns 0 and *out (free with
 * sg_egress_guard_free), or -1 with a message naming the config key. */
int sg_egress_guard_new(const char *nameserver, const char *const *exceptions, size_t n_exceptions,
                        sg_egress_guard_t **out, char *err, size_t err_cap);
void sg_egress_guard_free(sg_egress_guard_t *g);
/* The nameserver as a full-length range, and its text. */
const sg_cidr_t *sg_egress_guard_nameserver(const sg_egress_guard_t *g, const char **text);
/* The exceptions as parsed (borrowed), with their normalised texts. */
size_t sg_egress_guard_exceptions(const sg_egress_guard_t *g, const sg_cidr_t **cidrs,
                                  const char *const **texts);
/* The fixed always-denied ranges (static storage), with their texts. The
 * IPv4-mapped block is not among them: mapped addresses are judged as IPv4. */
size_t sg_egress_always_denied_ranges(const sg_cidr_t **cidrs, const char *const **texts);

/* 1 and *range (may be NULL) = the range's text when addr is always denied
 * and not excepted. g NULL: no exceptions. Other families are denied
 * (range "-"). */
int sg_egress_always_denied(const sg_egress_guard_t *g, const struct sockaddr *addr,
                            const char **range);

/* The verdict for destination dst, in the spec's order: always-denied (not
 * excepted); allow CIDRs, then the guard's nameserver when p has domain
 * rules; deny CIDRs; else allow "default". p NULL = default policy; g NULL =
 * no exceptions and no nameserver. */
sg_egress_verdict_t sg_egress_decide_addr(const sg_egress_policy_t *p, const sg_egress_guard_t *g,
                                          const struct sockaddr *dst);

/* 1 and *rule (may be NULL; borrowed) when name matches a domain rule of p.
 * name is len bytes of untrusted input (HTTP Host without port, or SNI): any
 * case, one optional trailing dot; anything that is not a valid host name
 * (bad characters, empty labels, IP literals in any inet_aton form) never
 * matches. */
int sg_egress_name_allowed(const sg_egress_policy_t *p, const char *name, size_t len,
                           const char **rule);

#endif
