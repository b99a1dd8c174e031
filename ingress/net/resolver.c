/* A c-ares channel driven by a libuv loop, and name -> addresses requests
 * on top of it (see resolver.h).
 *
 * Every entry into c-ares and every callback to a user runs between
 * sg_resolver_enter and sg_resolver_leave; the outermost leave either
 * rearms the timer or, when a close was requested meanwhile, tears the
 * channel down. Requests live on r->reqs from sg_resolver_resolve until
 * their callback has returned (or, cancelled, until c-ares lets go of them),
 * so that a close can still answer them UV_ECANCELED. */
#include "net/resolver.h"
#include "core/log.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

typedef struct resolver_poll_s {
    uv_poll_t handle;
    ares_socket_t fd;
    sg_resolver_t *r;
    struct resolver_poll_s *next;
} resolver_poll_t;

struct sg_resolver_req_s {
    sg_resolver_t *r;
    sg_resolver_req_t *prev, *next; /* r->reqs */
    sg_resolver_req_t *ready_next;  /* r->ready */
    sg_resolver_cb cb;              /* NULL once cancelled or being told */
    void *data;
    uint16_t port;
    /* the answer, kept while it waits on r->ready */
    int status;
    size_t n;
    struct sockaddr_storage *addrs;
};

struct sg_resolver_s {
    uv_loop_t *loop;
    ares_channel channel;
    uv_timer_t timer;
    uv_idle_t deliver; /* tells the answers c-ares gave inside sg_resolver_resolve */
    resolver_poll_t *polls;
    unsigned open_handles; /* timer, deliver, polls; r is freed when the last one closes */
    unsigned depth;        /* nesting of enter/leave */
    unsigned resolving;    /* inside ares_getaddrinfo: answers go to r->ready */
    int closing;           /* sg_resolver_close was called */
    int torn_down;         /* channel destroyed, handles closing */
    sg_resolver_req_t *reqs;
    sg_resolver_req_t *ready, **ready_tail;
    sg_resolver_closed_cb on_closed;
    void *on_closed_data;
};

/* ---- driving c-ares from the loop */

static void teardown(sg_resolver_t *r);
static void on_timer(uv_timer_t *t);

static void rearm_timer(sg_resolver_t *r)
{
    struct timeval tv;
    struct timeval *t = ares_timeout(r->channel, NULL, &tv);
    if (!t) {
        uv_timer_stop(&r->timer);
        return;
    }
    uint64_t ms = (uint64_t)t->tv_sec * 1000 + ((uint64_t)t->tv_usec + 999) / 1000;
    uv_timer_start(&r->timer, on_timer, ms, 0);
}

void sg_resolver_enter(sg_resolver_t *r)
{
    r->depth++;
}

/* A close requested from a callback (which runs inside c-ares) waits until
 * c-ares has returned before the channel is destroyed. */
void sg_resolver_leave(sg_resolver_t *r)
{
    if (--r->depth) return;
    if (r->closing) {
        if (!r->torn_down) teardown(r);
    } else {
        rearm_timer(r);
    }
}

static void process(sg_resolver_t *r, ares_socket_t rfd, ares_socket_t wfd)
{
    sg_resolver_enter(r);
    ares_process_fd(r->channel, rfd, wfd);
    sg_resolver_leave(r);
}

static void on_timer(uv_timer_t *t)
{
    process(t->data, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    resolver_poll_t *p = h->data;
    ares_socket_t rfd = ARES_SOCKET_BAD, wfd = ARES_SOCKET_BAD;
    if (status < 0) {
        /* libuv stopped the handle; let c-ares see the error on both sides */
        rfd = wfd = p->fd;
    } else {
        if (events & UV_READABLE) rfd = p->fd;
        if (events & UV_WRITABLE) wfd = p->fd;
    }
    process(p->r, rfd, wfd);
}

static void req_free(sg_resolver_req_t *req)
{
    sg_resolver_t *r = req->r;
    if (req->prev)
        req->prev->next = req->next;
    else
        r->reqs = req->next;
    if (req->next) req->next->prev = req->prev;
    free(req->addrs);
    free(req);
}

/* The last handle has closed: requests not told yet learn that they will
 * not be, then the owner. */
static void finish(sg_resolver_t *r)
{
    while (r->reqs) {
        sg_resolver_req_t *req = r->reqs;
        sg_resolver_cb cb = req->cb;
        req->cb = NULL; /* a cancel from inside cb is a no-op */
        if (cb) cb(req->data, UV_ECANCELED, NULL, 0);
        req_free(req);
    }
    if (r->on_closed) r->on_closed(r->on_closed_data);
    free(r);
}

static void handle_closed(sg_resolver_t *r)
{
    if (--r->open_handles == 0 && r->torn_down) finish(r);
}

static void on_poll_closed(uv_handle_t *h)
{
    resolver_poll_t *p = h->data;
    sg_resolver_t *r = p->r;
    free(p);
    handle_closed(r);
}

static void on_handle_closed(uv_handle_t *h)
{
    handle_closed(h->data);
}

static void poll_close(resolver_poll_t *p)
{
    uv_close((uv_handle_t *)&p->handle, on_poll_closed);
}

/* c-ares tells which sockets it wants watched; (0, 0) means it is about to
 * close the socket, so the handle is stopped now (uv_close stops at once,
 * and a new socket may reuse the descriptor right away). */
static void on_sock_state(void *data, ares_socket_t fd, int readable, int writable)
{
    sg_resolver_t *r = data;
    resolver_poll_t **pp = &r->polls;
    while (*pp && (*pp)->fd != fd) pp = &(*pp)->next;
    resolver_poll_t *p = *pp;
    if (!readable && !writable) {
        if (p) {
            *pp = p->next;
            poll_close(p);
        }
        return;
    }
    if (!p) {
        p = calloc(1, sizeof(*p));
        if (!p) abort();
        int rc = uv_poll_init_socket(r->loop, &p->handle, fd);
        if (rc) {
            /* the query then times out and fails; nothing else to do */
            sg_log_warn("dns: cannot watch socket %d: %s", (int)fd, uv_strerror(rc));
            free(p);
            return;
        }
        p->handle.data = p;
        p->fd = fd;
        p->r = r;
        p->next = r->polls;
        r->polls = p;
        r->open_handles++;
    }
    uv_poll_start(&p->handle, (readable ? UV_READABLE : 0) | (writable ? UV_WRITABLE : 0), on_poll);
}

/* ---- name -> addresses */

static int status_from_ares(int status)
{
    switch (status) {
    case ARES_ENOTFOUND: /* NXDOMAIN */
    case ARES_ENODATA:   /* NOERROR without an address */
        return UV_ENOENT;
    case ARES_ETIMEOUT:
        return UV_ETIMEDOUT;
    case ARES_EBADNAME:
        return UV_EINVAL;
    case ARES_ENOMEM:
        return UV_ENOMEM;
    case ARES_ECANCELLED:
    case ARES_EDESTRUCTION:
        return UV_ECANCELED;
    default: /* SERVFAIL, REFUSED, malformed, connection refused, ... */
        return UV_EAI_FAIL;
    }
}

static void take_answer(sg_resolver_req_t *req, int status, const struct ares_addrinfo *res)
{
    req->n = 0;
    if (status != ARES_SUCCESS) {
        req->status = status_from_ares(status);
        return;
    }
    size_t n = 0;
    for (const struct ares_addrinfo_node *a = res ? res->nodes : NULL;
         a && n < SG_RESOLVER_MAX_ADDRS; a = a->ai_next)
        if (a->ai_family == AF_INET || a->ai_family == AF_INET6) n++;
    if (n == 0) {
        req->status = UV_ENOENT;
        return;
    }
    req->addrs = calloc(n, sizeof(*req->addrs));
    if (!req->addrs) abort();
    for (const struct ares_addrinfo_node *a = res->nodes; a && req->n < n; a = a->ai_next) {
        struct sockaddr_storage *ss = &req->addrs[req->n];
        if (a->ai_family == AF_INET) {
            struct sockaddr_in *sin = (struct sockaddr_in *)ss;
            sin->sin_family = AF_INET;
            sin->sin_addr = ((const struct sockaddr_in *)a->ai_addr)->sin_addr;
            sin->sin_port = htons(req->port);
        } else if (a->ai_family == AF_INET6) {
            struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
            const struct sockaddr_in6 *from = (const struct sockaddr_in6 *)a->ai_addr;
            sin6->sin6_family = AF_INET6;
            sin6->sin6_addr = from->sin6_addr;
            sin6->sin6_scope_id = from->sin6_scope_id;
            sin6->sin6_port = htons(req->port);
        } else {
            continue;
        }
        req->n++;
    }
    req->status = 0;
}

/* Calls back and frees req. Runs inside enter/leave. */
static void tell(sg_resolver_req_t *req)
{
    sg_resolver_cb cb = req->cb;
    req->cb = NULL; /* a cancel from inside cb is a no-op */
    if (cb) cb(req->data, req->status, req->n ? req->addrs : NULL, req->n);
    req_free(req);
}

static void on_deliver(uv_idle_t *h);

/* req is answered but must not be told from here: on_deliver tells it on
 * the loop's next turn. */
static void defer(sg_resolver_t *r, sg_resolver_req_t *req)
{
    req->ready_next = NULL;
    *r->ready_tail = req;
    r->ready_tail = &req->ready_next;
    uv_idle_start(&r->deliver, on_deliver);
}

static void on_addrinfo(void *arg, int status, int timeouts, struct ares_addrinfo *res)
{
    sg_resolver_req_t *req = arg;
    sg_resolver_t *r = req->r;
    if (!req->cb) { /* cancelled: c-ares was the last to hold it */
        if (res) ares_freeaddrinfo(res);
        req_free(req);
        return;
    }
    if (r->closing) { /* finish() answers it UV_ECANCELED */
        if (res) ares_freeaddrinfo(res);
        return;
    }
    take_answer(req, status, res);
    if (res) ares_freeaddrinfo(res);
    if (r->resolving) {
        defer(r, req); /* inside sg_resolver_resolve: a name c-ares refuses, no memory */
        return;
    }
    tell(req);
}

static void on_deliver(uv_idle_t *h)
{
    sg_resolver_t *r = h->data;
    /* Answers queued by the callbacks below wait for the next turn. */
    sg_resolver_req_t *batch = r->ready;
    r->ready = NULL;
    r->ready_tail = &r->ready;
    uv_idle_stop(h);
    sg_resolver_enter(r);
    while (batch && !r->closing) {
        sg_resolver_req_t *req = batch;
        batch = req->ready_next;
        tell(req);
    }
    /* After a close the rest stay on r->reqs for finish(). */
    sg_resolver_leave(r);
}

static int parse_literal(const char *name, uint16_t port, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof(*ss));
    struct sockaddr_in *sin = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, name, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons(port);
        return 1;
    }
    if (inet_pton(AF_INET6, name, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(port);
        return 1;
    }
    return 0;
}

sg_resolver_req_t *sg_resolver_resolve(sg_resolver_t *r, const char *name, uint16_t port,
                                       sg_resolver_cb cb, void *data)
{
    if (r->closing) return NULL;
    sg_resolver_req_t *req = calloc(1, sizeof(*req));
    if (!req) abort();
    req->r = r;
    req->cb = cb;
    req->data = data;
    req->port = port;
    req->next = r->reqs;
    if (r->reqs) r->reqs->prev = req;
    r->reqs = req;

    /* c-ares 1.18 answers an IPv4 literal only after asking the servers
     * for it as a name (with AF_UNSPEC); literals never need a server. */
    struct sockaddr_storage literal;
    if (parse_literal(name, port, &literal)) {
        req->addrs = malloc(sizeof(*req->addrs));
        if (!req->addrs) abort();
        *req->addrs = literal;
        req->n = 1;
        req->status = 0;
        defer(r, req);
        return req;
    }

    struct ares_addrinfo_hints hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    sg_resolver_enter(r);
    r->resolving++;
    ares_getaddrinfo(r->channel, name, NULL, &hints, on_addrinfo, req);
    r->resolving--;
    sg_resolver_leave(r);
    return req;
}

void sg_resolver_cancel(sg_resolver_req_t *req)
{
    /* Whoever holds req next frees it: on_addrinfo while c-ares has it,
     * on_deliver or finish() otherwise. */
    req->cb = NULL;
}

/* ---- life cycle */

static int set_servers(ares_channel ch, const sg_resolver_opts_t *o)
{
    struct ares_addr_port_node *nodes = calloc(o->n_servers, sizeof(*nodes));
    if (!nodes) return ARES_ENOMEM;
    for (size_t i = 0; i < o->n_servers; i++) {
        const struct sockaddr_storage *ss = &o->servers[i];
        struct ares_addr_port_node *n = &nodes[i];
        uint16_t port;
        if (ss->ss_family == AF_INET) {
            const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
            n->family = AF_INET;
            n->addr.addr4 = sin->sin_addr;
            port = ntohs(sin->sin_port);
        } else if (ss->ss_family == AF_INET6) {
            const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
            n->family = AF_INET6;
            memcpy(&n->addr.addr6, &sin6->sin6_addr, sizeof(n->addr.addr6));
            port = ntohs(sin6->sin6_port);
        } else {
            free(nodes);
            return ARES_EBADFAMILY;
        }
        n->udp_port = n->tcp_port = port ? port : 53;
        n->next = i + 1 < o->n_servers ? &nodes[i + 1] : NULL;
    }
    int rc = ares_set_servers_ports(ch, nodes);
    free(nodes);
    return rc;
}

int sg_resolver_new(uv_loop_t *loop, const sg_resolver_opts_t *opts, sg_resolver_t **out)
{
    if (!opts || opts->n_servers == 0 || !opts->servers) return UV_EINVAL;
    for (size_t i = 0; i < opts->n_servers; i++) {
        sa_family_t f = opts->servers[i].ss_family;
        if (f != AF_INET && f != AF_INET6) return UV_EINVAL;
    }
    sg_resolver_t *r = calloc(1, sizeof(*r));
    if (!r) return UV_ENOMEM;
    r->loop = loop;
    r->ready_tail = &r->ready;

    /* Only our servers, only the exact name: no search list, no aliases,
     * no resolv.conf (an empty file instead), no hosts file. */
    char lookups[] = "b";
    struct ares_options o;
    memset(&o, 0, sizeof(o));
    o.flags = ARES_FLAG_NOSEARCH | ARES_FLAG_NOALIASES;
    o.timeout = opts->timeout_ms == 0          ? 1
                : opts->timeout_ms > INT32_MAX ? INT32_MAX
                                               : (int)opts->timeout_ms;
    o.tries = opts->tries == 0 ? 1 : opts->tries > 100 ? 100 : (int)opts->tries;
    o.domains = NULL;
    o.ndomains = 0;
    o.lookups = lookups;
    o.sock_state_cb = on_sock_state;
    o.sock_state_cb_data = r;
    o.resolvconf_path = (char *)"/dev/null";
    int mask = ARES_OPT_FLAGS | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES | ARES_OPT_DOMAINS |
               ARES_OPT_LOOKUPS | ARES_OPT_SOCK_STATE_CB | ARES_OPT_NOROTATE | ARES_OPT_RESOLVCONF;
    int rc = ares_init_options(&r->channel, &o, mask);
    if (rc == ARES_SUCCESS) {
        rc = set_servers(r->channel, opts);
        if (rc != ARES_SUCCESS) ares_destroy(r->channel);
    }
    if (rc != ARES_SUCCESS) {
        free(r);
        return rc == ARES_ENOMEM ? UV_ENOMEM : rc == ARES_EBADFAMILY ? UV_EINVAL : UV_EIO;
    }

    uv_timer_init(loop, &r->timer);
    r->timer.data = r;
    uv_idle_init(loop, &r->deliver);
    r->deliver.data = r;
    r->open_handles = 2;
    *out = r;
    return 0;
}

ares_channel sg_resolver_channel(sg_resolver_t *r)
{
    return r->channel;
}

/* Runs outside any c-ares call. ares_destroy answers every query with
 * ARES_EDESTRUCTION and reports its sockets closed; then the handles
 * close, and finish() runs from the last close callback. */
static void teardown(sg_resolver_t *r)
{
    r->torn_down = 1;
    ares_destroy(r->channel);
    r->channel = NULL;
    while (r->polls) {
        resolver_poll_t *p = r->polls;
        r->polls = p->next;
        poll_close(p);
    }
    uv_close((uv_handle_t *)&r->timer, on_handle_closed);
    uv_close((uv_handle_t *)&r->deliver, on_handle_closed);
}

void sg_resolver_close(sg_resolver_t *r, sg_resolver_closed_cb on_closed, void *data)
{
    if (r->closing) return;
    r->closing = 1;
    r->on_closed = on_closed;
    r->on_closed_data = data;
    if (r->depth == 0) teardown(r);
}
