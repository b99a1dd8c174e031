#include "egress/proxy.h"

#include "core/log.h"
#include "egress/sniff.h"
#include "net/listener.h"
#include "net/pipe.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* From <linux/netfilter_ipv4.h> and <linux/netfilter_ipv6/ip6_tables.h>,
 * which do not mix with glibc's netinet headers. */
#ifndef SO_ORIGINAL_DST
#define SO_ORIGINAL_DST 80
#endif
#ifndef IP6T_SO_ORIGINAL_DST
#define IP6T_SO_ORIGINAL_DST 80
#endif

#define SG_EGRESS_BACKLOG 1024
#define SG_EGRESS_HIGH_WATER (256 * 1024)

typedef enum { EC_SNIFFING, EC_RESOLVING, EC_CONNECTING, EC_PIPING, EC_CLOSING } ec_state_t;

struct sg_egress_conn_s {
    sg_stream_t client;
    sg_stream_t upstream; /* initialised when dialling */
    uv_connect_t connect_req;
    uv_timer_t timer; /* sniff timeout, then connect timeout, then idle checks */
    sg_pipe_t pipe;
    sg_egress_worker_t *ew;
    sg_egress_conn_t *prev, *next;
    sg_egress_proto_t proto;
    ec_state_t state;
    struct sockaddr_storage src, dst;
    sg_sandbox_t *sb; /* one reference, or NULL (unknown source) */
    char *sniff;      /* bytes read while deciding; passed to the pipe */
    size_t sniff_len, sniff_cap;
    char name[256]; /* Host / SNI ("" when none) */
    sg_resolver_req_t *resolving;
    sg_egress_verdict_t verdict; /* the allow verdict a dial carries out */
    uint64_t idle_ms;
    size_t sniff_max;
    unsigned handles_open;
    unsigned upstream_open : 1;
};

static const char *const proto_names[SG_EGRESS_PROTO_COUNT] = {"http", "tls", "other"};

const char *sg_egress_proto_name(sg_egress_proto_t p)
{
    return p < SG_EGRESS_PROTO_COUNT ? proto_names[p] : "?";
}

static sg_egress_conn_t *conn_of_client(sg_stream_t *s)
{
    return (sg_egress_conn_t *)((char *)s - offsetof(sg_egress_conn_t, client));
}

static sg_egress_conn_t *conn_of_upstream(sg_stream_t *s)
{
    return (sg_egress_conn_t *)((char *)s - offsetof(sg_egress_conn_t, upstream));
}

static void format_addr(const struct sockaddr_storage *ss, int with_port, char *out, size_t cap)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    unsigned port = 0;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &a->sin_addr, ip, sizeof(ip));
        port = ntohs(a->sin_port);
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof(ip));
        port = ntohs(a->sin6_port);
    }
    if (!with_port)
        snprintf(out, cap, "%s", ip);
    else if (ss->ss_family == AF_INET6)
        snprintf(out, cap, "[%s]:%u", ip, port);
    else
        snprintf(out, cap, "%s:%u", ip, port);
}

static uint16_t port_of(const struct sockaddr_storage *ss)
{
    return ntohs(ss->ss_family == AF_INET6 ? ((const struct sockaddr_in6 *)ss)->sin6_port
                                           : ((const struct sockaddr_in *)ss)->sin_port);
}

static void set_port(struct sockaddr_storage *ss, uint16_t port)
{
    if (ss->ss_family == AF_INET6)
        ((struct sockaddr_in6 *)ss)->sin6_port = htons(port);
    else
        ((struct sockaddr_in *)ss)->sin_port = htons(port);
}

static void count(sg_egress_conn_t *c, int allow, sg_egress_reason_t reason)
{
    sg_counter_inc(&c->ew->stats->decisions[c->proto][allow ? 1 : 0][reason]);
}

/* ---- teardown -------------------------------------------------------------- */

static void handle_gone(sg_egress_conn_t *c)
{
    if (--c->handles_open) return;
    free(c->sniff);
    if (c->sb) sg_sandbox_unref(c->sb);
    free(c);
}

static void on_client_closed(sg_stream_t *s)
{
    handle_gone(conn_of_client(s));
}

static void on_upstream_closed(sg_stream_t *s)
{
    handle_gone(conn_of_upstream(s));
}

static void on_timer_closed(uv_handle_t *h)
{
    handle_gone(h->data);
}

static void conn_close(sg_egress_conn_t *c)
{
    if (c->state == EC_CLOSING) return;
    if (c->state == EC_PIPING) {
        sg_pipe_stop(&c->pipe);
        sg_counter_add(&c->ew->stats->bytes_out, c->pipe.dir[0].bytes);
        sg_counter_add(&c->ew->stats->bytes_in, c->pipe.dir[1].bytes);
    }
    c->state = EC_CLOSING;
    if (c->resolving) sg_resolver_cancel(c->resolving);
    c->resolving = NULL;
    if (c->prev)
        c->prev->next = c->next;
    else
        c->ew->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    sg_counter_dec(&c->ew->stats->open);
    uv_close((uv_handle_t *)&c->timer, on_timer_closed);
    sg_stream_close(&c->client, on_client_closed);
    if (c->upstream_open) sg_stream_close(&c->upstream, on_upstream_closed);
}

/* Denied: counted, logged with everything an operator needs to find the
 * rule, and closed. Nothing was dialled, so the destination saw nothing. */
static void block(sg_egress_conn_t *c, sg_egress_reason_t reason, const char *rule)
{
    count(c, 0, reason);
    char src[INET6_ADDRSTRLEN], dst[INET6_ADDRSTRLEN + 8];
    format_addr(&c->src, 0, src, sizeof(src));
    format_addr(&c->dst, 1, dst, sizeof(dst));
    sg_log_warn("egress blocked sandbox=%s src=%s dst=%s name=%s protocol=%s reason=%s rule=%s",
                c->sb ? c->sb->id : "-", src, dst, c->name[0] ? c->name : "-",
                sg_egress_proto_name(c->proto), sg_egress_reason_name(reason),
                rule && *rule ? rule : "-");
    conn_close(c);
}

/* ---- splice ---------------------------------------------------------------- */

static void on_pipe_done(sg_pipe_t *p, int status)
{
    conn_close(p->data);
}

static void on_idle_tick(uv_timer_t *t)
{
    sg_egress_conn_t *c = t->data;
    if (uv_now(c->ew->loop) - c->pipe.last_activity >= c->idle_ms) conn_close(c);
}

static void on_connect(uv_connect_t *req, int status)
{
    sg_egress_conn_t *c = req->data;
    if (status == UV_ECANCELED || c->state == EC_CLOSING) return;
    if (status < 0) {
        char dst[INET6_ADDRSTRLEN + 8];
        format_addr(&c->dst, 1, dst, sizeof(dst));
        sg_log_info("egress: sandbox %s: connect for %s (%s) failed: %s", c->sb->id, dst,
                    c->name[0] ? c->name : "-", uv_strerror(status));
        count(c, 0, SG_EGRESS_REASON_DIAL_FAILED);
        conn_close(c);
        return;
    }
    count(c, 1, c->verdict.reason);
    c->state = EC_PIPING;
    c->client.data = c;
    if (sg_pipe_start(&c->pipe, c->ew->loop, &c->client, &c->upstream, SG_EGRESS_HIGH_WATER,
                      on_pipe_done, c) != 0) {
        conn_close(c);
        return;
    }
    sg_pipe_send(&c->pipe, 0, c->sniff, c->sniff_len);
    c->sniff = NULL;
    uint64_t tick = c->idle_ms / 4 ? c->idle_ms / 4 : 1;
    uv_timer_start(&c->timer, on_idle_tick, tick, tick);
}

static void on_connect_timeout(uv_timer_t *t)
{
    sg_egress_conn_t *c = t->data;
    count(c, 0, SG_EGRESS_REASON_DIAL_FAILED);
    conn_close(c);
}

static void dial(sg_egress_conn_t *c, const struct sockaddr_storage *addr)
{
    sg_egress_worker_t *ew = c->ew;
    sg_stream_read_stop(&c->client);
    c->state = EC_CONNECTING;
    sg_stream_tcp_init(&c->upstream, ew->loop, ew->bufs);
    c->upstream_open = 1;
    c->handles_open++;
    c->connect_req.data = c;
    int rc = uv_tcp_connect(&c->connect_req, &c->upstream.tcp, (const struct sockaddr *)addr,
                            on_connect);
    if (rc) {
        count(c, 0, SG_EGRESS_REASON_DIAL_FAILED);
        conn_close(c);
        return;
    }
    uv_timer_start(&c->timer, on_connect_timeout, ew->conf->connect_timeout_ms, 0);
}

/* ---- deciding -------------------------------------------------------------- */

#define SG_EGRESS_LOCAL_REFRESH_MS 2000

/* The host's own addresses (public ones included: the always-denied ranges
 * cover only the internal ones) are never a destination, or a sandbox with
 * no rules could reach the host's services through us. Refreshed from
 * getifaddrs at most every two seconds per worker. */
static int is_host_address(sg_egress_worker_t *ew, const struct sockaddr_storage *addr)
{
    uint64_t now = uv_now(ew->loop);
    if (!ew->local_checked || now - ew->local_checked >= SG_EGRESS_LOCAL_REFRESH_MS) {
        ew->local_checked = now ? now : 1;
        ew->n_local = 0;
        struct ifaddrs *all = NULL;
        if (getifaddrs(&all) == 0) {
            for (struct ifaddrs *i = all; i && ew->n_local < SG_EGRESS_LOCAL_MAX; i = i->ifa_next) {
                if (!i->ifa_addr) continue;
                int fam = i->ifa_addr->sa_family;
                if (fam != AF_INET && fam != AF_INET6) continue;
                struct sockaddr_storage *ss = &ew->local[ew->n_local++];
                memset(ss, 0, sizeof(*ss));
                memcpy(ss, i->ifa_addr,
                       fam == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6));
            }
            freeifaddrs(all);
        }
    }
    for (size_t i = 0; i < ew->n_local; i++) {
        const struct sockaddr_storage *l = &ew->local[i];
        if (l->ss_family != addr->ss_family) continue;
        if (l->ss_family == AF_INET && ((const struct sockaddr_in *)l)->sin_addr.s_addr ==
                                           ((const struct sockaddr_in *)addr)->sin_addr.s_addr)
            return 1;
        if (l->ss_family == AF_INET6 &&
            memcmp(&((const struct sockaddr_in6 *)l)->sin6_addr,
                   &((const struct sockaddr_in6 *)addr)->sin6_addr, 16) == 0)
            return 1;
    }
    return 0;
}

static void decide_by_address(sg_egress_conn_t *c)
{
    sg_egress_verdict_t v = sg_egress_decide_addr(c->sb->egress_policy, sg_egress_guard(c->ew->eg),
                                                  (const struct sockaddr *)&c->dst);
    if (!v.allow) {
        block(c, v.reason, v.rule);
        return;
    }
    if (is_host_address(c->ew, &c->dst)) {
        block(c, SG_EGRESS_REASON_ALWAYS_DENIED, "host address");
        return;
    }
    c->verdict = v;
    dial(c, &c->dst);
}

/* An allowed name is dialled at what sandgate's resolver says, never at
 * the address the sandbox picked (its own resolver may lie), and only when
 * that address is outside the always-denied ranges (no rebinding into the
 * platform). */
static void on_resolved(void *data, int status, const struct sockaddr_storage *addrs, size_t n)
{
    sg_egress_conn_t *c = data;
    c->resolving = NULL;
    if (status < 0 || n == 0) {
        sg_log_info("egress: sandbox %s: resolving %s failed: %s", c->sb->id, c->name,
                    status < 0 ? uv_strerror(status) : "no address");
        block(c, SG_EGRESS_REASON_DIAL_FAILED, c->verdict.rule);
        return;
    }
    const char *range = NULL;
    for (size_t i = 0; i < n; i++) {
        if (sg_egress_always_denied(sg_egress_guard(c->ew->eg), (const struct sockaddr *)&addrs[i],
                                    &range))
            continue;
        if (is_host_address(c->ew, &addrs[i])) {
            range = "host address";
            continue;
        }
        struct sockaddr_storage to = addrs[i];
        set_port(&to, port_of(&c->dst));
        dial(c, &to);
        return;
    }
    block(c, SG_EGRESS_REASON_ALWAYS_DENIED, range);
}

static void decide_with_name(sg_egress_conn_t *c, sg_slice_t name)
{
    const char *rule = NULL;
    if (name.len && name.len < sizeof(c->name)) {
        memcpy(c->name, name.base, name.len);
        c->name[name.len] = '\0';
    }
    if (c->name[0] &&
        sg_egress_name_allowed(c->sb->egress_policy, c->name, strlen(c->name), &rule)) {
        c->verdict =
            (sg_egress_verdict_t){.allow = 1, .reason = SG_EGRESS_REASON_DOMAIN, .rule = rule};
        c->state = EC_RESOLVING;
        sg_stream_read_stop(&c->client);
        uv_timer_stop(&c->timer);
        c->resolving =
            sg_resolver_resolve(c->ew->resolver, c->name, port_of(&c->dst), on_resolved, c);
        if (!c->resolving) block(c, SG_EGRESS_REASON_DIAL_FAILED, rule);
        return;
    }
    decide_by_address(c);
}

static void on_sniff_timeout(uv_timer_t *t)
{
    block(t->data, SG_EGRESS_REASON_SNIFF_FAILED, NULL);
}

static void on_client_read(sg_stream_t *s, ssize_t nread, sg_buf_t *buf)
{
    sg_egress_conn_t *c = s->data;
    if (c->state != EC_SNIFFING) return;
    if (nread < 0) {
        /* Gone before saying where to: nothing to forward, nothing to log. */
        count(c, 0, SG_EGRESS_REASON_SNIFF_FAILED);
        conn_close(c);
        return;
    }
    /* Everything read is kept (the destination gets it all), but only the
     * first sniff_max bytes are judged: a head and its body may arrive in
     * one read. Reading stops at the decision, so this is at most one read
     * past the cap. */
    size_t need = c->sniff_len + (size_t)nread;
    if (need > c->sniff_cap) {
        size_t cap = c->sniff_cap ? c->sniff_cap * 2 : 4096;
        while (cap < need) cap *= 2;
        char *grown = realloc(c->sniff, cap);
        if (!grown) abort();
        c->sniff = grown;
        c->sniff_cap = cap;
    }
    memcpy(c->sniff + c->sniff_len, buf->data, (size_t)nread);
    c->sniff_len = need;
    sg_slice_t name = sg_slice(NULL, 0);
    sg_sniff_result_t r = c->proto == SG_EGRESS_TLS
                              ? sg_sniff_tls_sni(c->sniff, c->sniff_len, c->sniff_max, &name)
                              : sg_sniff_http_host(c->sniff, c->sniff_len, c->sniff_max, &name);
    if (r != SG_SNIFF_DONE && c->sniff_len >= c->sniff_max) {
        block(c, SG_EGRESS_REASON_SNIFF_FAILED, NULL);
        return;
    }
    if (r == SG_SNIFF_MORE) return;
    /* Not HTTP / not TLS / no name: the address alone decides. */
    decide_with_name(c, r == SG_SNIFF_DONE ? name : sg_slice(NULL, 0));
}

/* ---- accepting ------------------------------------------------------------- */

static int original_destination(uv_tcp_t *tcp, struct sockaddr_storage *out)
{
    uv_os_fd_t fd;
    if (uv_fileno((uv_handle_t *)tcp, &fd) != 0) return -1;
    struct sockaddr_storage local;
    int len = sizeof(local);
    if (uv_tcp_getsockname(tcp, (struct sockaddr *)&local, &len) != 0) return -1;
    socklen_t olen = sizeof(*out);
    memset(out, 0, sizeof(*out));
    if (local.ss_family == AF_INET6) {
        /* An IPv4 connection on a dual-stack socket has a mapped local address;
         * its original destination is asked the IPv4 way. */
        const struct in6_addr *a = &((struct sockaddr_in6 *)&local)->sin6_addr;
        if (!IN6_IS_ADDR_V4MAPPED(a))
            return getsockopt(fd, SOL_IPV6, IP6T_SO_ORIGINAL_DST, out, &olen) == 0 ? 0 : -1;
    }
    return getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, out, &olen) == 0 ? 0 : -1;
}

/* IPv4-mapped peers are judged as the IPv4 addresses they are. */
static void unmap(struct sockaddr_storage *ss)
{
    if (ss->ss_family != AF_INET6) return;
    struct sockaddr_in6 a6 = *(struct sockaddr_in6 *)ss;
    if (!IN6_IS_ADDR_V4MAPPED(&a6.sin6_addr)) return;
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    memset(ss, 0, sizeof(*ss));
    a4->sin_family = AF_INET;
    a4->sin_port = a6.sin6_port;
    memcpy(&a4->sin_addr, a6.sin6_addr.s6_addr + 12, 4);
}

static void on_connection(uv_stream_t *server, int status)
{
    sg_egress_listener_t *l = server->data;
    sg_egress_worker_t *ew = l->ew;
    if (status < 0 || ew->stopping) return;
    sg_egress_conn_t *c = calloc(1, sizeof(*c));
    if (!c) abort();
    c->ew = ew;
    c->proto = l->proto;
    c->idle_ms = ew->conf->idle_timeout_ms;
    c->sniff_max = ew->conf->sniff_max_bytes;
    sg_stream_tcp_init(&c->client, ew->loop, ew->bufs);
    c->client.data = c;
    uv_timer_init(ew->loop, &c->timer);
    c->timer.data = c;
    c->handles_open = 2;
    c->next = ew->conns;
    if (ew->conns) ew->conns->prev = c;
    ew->conns = c;
    sg_counter_inc(&ew->stats->open);
    if (uv_accept(server, (uv_stream_t *)&c->client.tcp) != 0) {
        conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->client.tcp, 1);
    int len = sizeof(c->src);
    if (uv_tcp_getpeername(&c->client.tcp, (struct sockaddr *)&c->src, &len) != 0 ||
        original_destination(&c->client.tcp, &c->dst) != 0) {
        /* Not redirected by our rules (someone dialled the listener itself):
         * there is no destination to judge. */
        sg_log_debug("egress: connection without an original destination closed");
        conn_close(c);
        return;
    }
    unmap(&c->src);
    unmap(&c->dst);
    sg_sandbox_t *sb = sg_egress_find(ew->eg, (const struct sockaddr *)&c->src);
    if (!sb) {
        block(c, SG_EGRESS_REASON_UNKNOWN_SANDBOX, NULL);
        return;
    }
    sg_sandbox_ref(sb);
    c->sb = sb;
    if (c->proto == SG_EGRESS_OTHER) {
        /* Server-speaks-first protocols (SSH) must not wait for the client. */
        decide_by_address(c);
        return;
    }
    c->state = EC_SNIFFING;
    uv_timer_start(&c->timer, on_sniff_timeout, ew->conf->sniff_timeout_ms, 0);
    if (sg_stream_read_start(&c->client, on_client_read) != 0) conn_close(c);
}

/* ---- worker ---------------------------------------------------------------- */

int sg_egress_worker_init(sg_egress_worker_t *ew, uv_loop_t *loop, unsigned index,
                          sg_buf_pool_t *bufs, const sg_egress_t *eg, const sg_egress_conf_t *conf,
                          sg_egress_stats_t *stats)
{
    memset(ew, 0, sizeof(*ew));
    ew->loop = loop;
    ew->index = index;
    ew->bufs = bufs;
    ew->eg = eg;
    ew->conf = conf;
    ew->stats = stats;
    sg_resolver_opts_t ro = {
        .servers = conf->resolvers, .n_servers = conf->n_resolvers, .timeout_ms = 2000, .tries = 2};
    int rc = sg_resolver_new(loop, &ro, &ew->resolver);
    if (rc) {
        sg_log_error("egress resolver: %s", uv_strerror(rc));
        return rc;
    }
    const sg_listen_conf_t *ls[SG_EGRESS_PROTO_COUNT] = {&conf->listen_http, &conf->listen_tls,
                                                         &conf->listen_other};
    for (unsigned p = 0; p < SG_EGRESS_PROTO_COUNT; p++) {
        if (!ls[p]->text[0]) continue;
        sg_egress_listener_t *l = &ew->listeners[ew->n_listeners];
        rc = sg_listener_open(loop, &l->tcp, (const struct sockaddr *)&ls[p]->addr,
                              SG_EGRESS_BACKLOG, on_connection);
        if (rc) {
            sg_log_error("egress listen %s: %s", ls[p]->text, uv_strerror(rc));
            return rc;
        }
        l->tcp.data = l;
        l->ew = ew;
        l->proto = (sg_egress_proto_t)p;
        ew->n_listeners++;
    }
    return 0;
}

void sg_egress_worker_set_conf(sg_egress_worker_t *ew, const sg_egress_conf_t *conf)
{
    ew->conf = conf;
}

void sg_egress_worker_stop_listening(sg_egress_worker_t *ew)
{
    for (unsigned i = 0; i < ew->n_listeners; i++)
        if (!uv_is_closing((uv_handle_t *)&ew->listeners[i].tcp))
            uv_close((uv_handle_t *)&ew->listeners[i].tcp, NULL);
}

void sg_egress_worker_close(sg_egress_worker_t *ew)
{
    ew->stopping = 1;
    sg_egress_worker_stop_listening(ew);
    while (ew->conns) conn_close(ew->conns);
    if (ew->resolver) sg_resolver_close(ew->resolver, NULL, NULL);
    ew->resolver = NULL;
}
