/* A c-ares channel driven by a libuv loop: the channel's sockets are watched
 * with uv_poll handles (c-ares says which through its socket-state
 * callback), its retries and timeouts run from one uv_timer, and teardown
 * waits until c-ares has returned when it is asked for from inside a
 * callback.
 *
 * Two ways to use it: sg_resolver_resolve asks for a name's addresses (A and
 * AAAA) and answers through a callback; callers with their own questions
 * (the DNS lookup source asks A, AAAA and TXT and parses the answers itself)
 * call c-ares on sg_resolver_channel between sg_resolver_enter and
 * sg_resolver_leave.
 *
 * Only the configured servers are asked, and only the exact name: neither
 * /etc/resolv.conf, /etc/hosts, search domains nor HOSTALIASES influence a
 * query.
 *
 * Threads: every function runs on the loop's thread, and so does every
 * callback. Nothing is shared between resolvers. */
#ifndef SG_NET_RESOLVER_H
#define SG_NET_RESOLVER_H

#include <ares.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

typedef struct sg_resolver_s sg_resolver_t;
typedef struct sg_resolver_req_s sg_resolver_req_t;

/* Addresses passed to one sg_resolver_cb at most (the first ones c-ares
 * gives). */
#define SG_RESOLVER_MAX_ADDRS 16

typedef struct {
    const struct sockaddr_storage *servers; /* AF_INET or AF_INET6; port 0 means 53 */
    size_t n_servers;                       /* at least 1, asked in the order given */
    uint64_t timeout_ms;                    /* one attempt; 0 counts as 1, capped at INT32_MAX */
    unsigned tries;                         /* attempts per server; 0 counts as 1, at most 100 */
} sg_resolver_opts_t;

/* Creates the resolver on `loop` (on the loop's thread). `opts` and its
 * servers are borrowed for the call only. Returns 0 and *out, or a negative
 * libuv error (UV_EINVAL for no server or a server of another family,
 * UV_ENOMEM, UV_EIO for another c-ares failure) with *out untouched. */
int sg_resolver_new(uv_loop_t *loop, const sg_resolver_opts_t *opts, sg_resolver_t **out);

/* The channel, for callers that send their own queries (ares_query,
 * ares_send, ...); owned by r and destroyed by sg_resolver_close. Call into
 * it only between sg_resolver_enter and sg_resolver_leave. Queries still in
 * flight at close are answered ARES_EDESTRUCTION when the channel is
 * destroyed: inside sg_resolver_close, or at the outermost
 * sg_resolver_leave when close was called inside a bracket. on_closed fires
 * later, so memory those callbacks use can be freed there. */
ares_channel sg_resolver_channel(sg_resolver_t *r);

/* Bracket every direct call into the channel. A close requested meanwhile
 * (from a callback c-ares runs) waits until the outermost leave; the
 * outermost leave also rearms the timer for the queries just sent. Calls
 * nest; callbacks fired by this resolver already run inside a bracket. */
void sg_resolver_enter(sg_resolver_t *r);
void sg_resolver_leave(sg_resolver_t *r);

/* The answer to sg_resolver_resolve. status 0: addrs holds n addresses
 * (1 <= n <= SG_RESOLVER_MAX_ADDRS, in c-ares' order: RFC 6724 destination
 * address selection), each with the requested port. Otherwise a negative
 * libuv error, addrs NULL and n 0:
 *   UV_ENOENT     NXDOMAIN, or no A nor AAAA record
 *   UV_ETIMEDOUT  no answer from any server after every try
 *   UV_EAI_FAIL   SERVFAIL, REFUSED, a malformed answer, another failure
 *   UV_EINVAL     a name c-ares cannot ask for
 *   UV_ENOMEM     out of memory
 *   UV_ECANCELED  the resolver was closed before the request was answered
 * addrs is borrowed for the call only. */
typedef void (*sg_resolver_cb)(void *data, int status, const struct sockaddr_storage *addrs,
                               size_t n);

/* Asks for the IPv4 and IPv6 addresses of `name` (a host name, one
 * trailing dot allowed; an IPv4 dotted quad or an IPv6 literal without
 * brackets answers itself without a query).
 * `name` is copied. cb fires exactly once, on the loop, never inside this
 * call, unless sg_resolver_cancel is called first. Returns the request
 * (owned by r; valid until cb has returned or sg_resolver_cancel), or NULL
 * when r is closing (cb never fires). May be called from inside any
 * callback of this resolver. */
sg_resolver_req_t *sg_resolver_resolve(sg_resolver_t *r, const char *name, uint16_t port,
                                       sg_resolver_cb cb, void *data);

/* Forgets the request: its cb never fires and req must not be used again.
 * Also allowed after sg_resolver_close, until the request's UV_ECANCELED
 * callback has fired, and from inside its own callback (a no-op there).
 * The DNS question itself runs to its end (c-ares cannot cancel one query),
 * the request's memory is freed then. */
void sg_resolver_cancel(sg_resolver_req_t *req);

typedef void (*sg_resolver_closed_cb)(void *data);

/* Stops the resolver: the channel is destroyed (queries in flight end with
 * ARES_EDESTRUCTION, see sg_resolver_channel) and every libuv handle is
 * closed. Answers that come after this call are not passed on: each
 * request not yet answered gets UV_ECANCELED instead, from the last
 * handle's close callback; then on_closed (may be NULL) fires with `data`,
 * and r's memory is freed. Everything happens on the loop after this call
 * returns, so the loop must run afterwards; call it before anything else
 * closes the loop's handles (a uv_walk closing every handle would close the
 * resolver's timer and polls without their callbacks: r leaks and this call
 * then trips libuv's double-close assertion). Safe to call from inside any
 * callback of this resolver and from inside a c-ares callback (the teardown
 * then waits until c-ares returns). Call it once; r must not be used after
 * this call, except for sg_resolver_cancel of its requests as said above
 * and sg_resolver_resolve from inside its callbacks (it returns NULL). */
void sg_resolver_close(sg_resolver_t *r, sg_resolver_closed_cb on_closed, void *data);

#endif
