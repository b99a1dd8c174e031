/* Host -> (port, sandbox id): the public naming scheme
 * `<port>-<id>[-<ignored>...].<domain>`. Pure function, no allocation. */
#ifndef SG_ROUTE_HOST_H
#define SG_ROUTE_HOST_H

#include "core/error.h"
#include "core/slice.h"
#include <stdint.h>

#define SG_HOST_MAX 253

typedef struct {
    uint16_t port;       /* 1..65535 */
    sg_slice_t id;       /* [a-z0-9]{1,64}; points into the caller's `lower` buffer */
    size_t domain_index; /* index of the matching configured domain */
} sg_route_t;

/* Parses a Host header value (or the authority of an absolute-form target).
 *
 * host: raw bytes, any case, optional ":port" suffix (dropped; digits only),
 *   optional trailing dot on the name is accepted. Bracketed IPv6 literals and
 *   IP addresses are never under a domain: SG_ERR_HOST_UNKNOWN_DOMAIN.
 * domains: lower-case names without a leading dot; the host must end in
 *   "." + domain. The longest matching domain wins.
 * lower: caller buffer receiving the lower-cased host name (without port and
 *   without the trailing dot), NUL-terminated; `out->id` points into it. On
 *   failure it still holds a C string (possibly a prefix, possibly empty).
 * out: written only on SG_ERR_NONE.
 * reason: on SG_ERR_HOST_MALFORMED / SG_ERR_HOST_MISSING, set to a static
 *   one-line explanation (e.g. "port must be 1..65535"), distinct per cause;
 *   also set on SG_ERR_HOST_UNKNOWN_DOMAIN; NULL on success. May be NULL.
 *
 * A ":port" on the Host itself is checked (0..5 digits, <= 65535) but not
 * used: the sandbox port comes from the label. Empty domain strings in
 * `domains` are ignored. Labels are not held to DNS's 63 bytes, since a
 * 64-character id plus its port cannot fit.
 *
 * Returns SG_ERR_NONE, SG_ERR_HOST_MISSING (empty value), SG_ERR_HOST_MALFORMED
 * (bad characters, bad label shape, bad port/id) or SG_ERR_HOST_UNKNOWN_DOMAIN. */
sg_err_t sg_route_parse_host(sg_slice_t host, char *const *domains, size_t n_domains,
                             char lower[SG_HOST_MAX + 1], sg_route_t *out, const char **reason);

#endif
