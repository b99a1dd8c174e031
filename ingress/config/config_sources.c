/* The settings of the sandbox lookup sources other than the static table:
 * the admin API (listeners, token, store), the DNS source (zone, servers,
 * timing) and lookup_order, with the whole-snapshot checks that tie them
 * together. The YAML walk of the lists lives in config_yaml.c next to the
 * other list walkers. */
#include "config/config_internal.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SG_DNS_PORT 53

static const char *const source_names[] = {
    [SG_SOURCE_STATIC] = "static",
    [SG_SOURCE_ADMIN] = "admin",
    [SG_SOURCE_DNS] = "dns",
};

const char *sg_config__source_name(sg_source_kind_t s)
{
    return (unsigned)s < sizeof(source_names) / sizeof(source_names[0]) ? source_names[s] : "?";
}

int sg_config__parse_source(const char *text, sg_source_kind_t *out, char *why, size_t whylen)
{
    for (size_t i = 0; i < sizeof(source_names) / sizeof(source_names[0]); i++) {
        if (strcmp(text, source_names[i]) == 0) {
            *out = (sg_source_kind_t)i;
            return 0;
        }
    }
    snprintf(why, whylen, "unknown source '%s' (expected static, admin or dns)", text);
    return -1;
}

/* ---- dns.servers (and egress.resolvers, the same kind of list) ------------ */

static void set_port(struct sockaddr_storage *ss, uint16_t port)
{
    if (ss->ss_family == AF_INET)
        ((struct sockaddr_in *)ss)->sin_port = htons(port);
    else
        ((struct sockaddr_in6 *)ss)->sin6_port = htons(port);
}

int sg_config__parse_server(const char *text, struct sockaddr_storage *out, char *why,
                            size_t whylen)
{
    /* Which form: "[v6]" and bare literals take port 53; "v4:PORT" and
     * "[v6]:PORT" name one. A bare IPv6 literal has several ':' and no port
     * (write "[fd00::1]:5353" for one). */
    if (!*text) {
        snprintf(why, whylen, "server address is empty");
        return -1;
    }
    const char *colon = strchr(text, ':');
    int bare =
        text[0] == '[' ? text[strlen(text) - 1] == ']' : (!colon || strchr(colon + 1, ':') != NULL);
    if (bare) {
        if (sg_config__parse_ip(text, out, why, whylen) != 0) return -1;
        set_port(out, SG_DNS_PORT);
        return 0;
    }
    sg_listen_conf_t l;
    if (sg_config__parse_listen(text, 0, &l, why, whylen) != 0) return -1;
    *out = l.addr;
    return 0;
}

void sg_config__format_server(const struct sockaddr_storage *ss, char *buf, size_t len)
{
    char ip[INET6_ADDRSTRLEN];
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &sin->sin_addr, ip, sizeof(ip));
        snprintf(buf, len, "%s:%u", ip, (unsigned)ntohs(sin->sin_port));
    } else {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &sin6->sin6_addr, ip, sizeof(ip));
        snprintf(buf, len, "[%s]:%u", ip, (unsigned)ntohs(sin6->sin6_port));
    }
}

sg_config__servers_t sg_config__servers_of(sg_config_t *c, const sg_config__key_t *k)
{
    if (k->type == SG_CONF_T_RESOLVERS)
        return (sg_config__servers_t){&c->egress.resolvers, &c->egress.n_resolvers};
    return (sg_config__servers_t){&c->dns.servers, &c->dns.n_servers};
}

void sg_config__clear_servers(sg_config__servers_t l)
{
    free(*l.v);
    *l.v = NULL;
    *l.n = 0;
}

void sg_config__add_server(sg_config__servers_t l, const struct sockaddr_storage *ss)
{
    struct sockaddr_storage *v = realloc(*l.v, (*l.n + 1) * sizeof(**l.v));
    if (!v) abort();
    *l.v = v;
    v[(*l.n)++] = *ss;
}

long sg_config__find_server(sg_config__servers_t l, const struct sockaddr_storage *ss)
{
    for (size_t i = 0; i < *l.n; i++)
        if (sg_config__sockaddr_eq(&(*l.v)[i], ss)) return (long)i;
    return -1;
}

int sg_config__servers_eq(const struct sockaddr_storage *x, size_t nx,
                          const struct sockaddr_storage *y, size_t ny)
{
    if (nx != ny) return 0;
    for (size_t i = 0; i < nx; i++)
        if (!sg_config__sockaddr_eq(&x[i], &y[i])) return 0;
    return 1;
}

/* ---- whole-snapshot checks ------------------------------------------------ */

/* 127.0.0.0/8, ::1, or 127.0.0.0/8 mapped into IPv6. */
static int is_loopback(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
        return (ntohl(sin->sin_addr.s_addr) >> 24) == 127;
    }
    const struct in6_addr *a = &((const struct sockaddr_in6 *)ss)->sin6_addr;
    if (IN6_IS_ADDR_LOOPBACK(a)) return 1;
    return IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127;
}

/* 1 when the file layer set the row. */
static int marked(const sg_config__marks_t *marks, const char *key)
{
    const sg_config__key_t *k = sg_config__find_key(key, strlen(key));
    return marks && k && marks->line[k - sg_config__keys] != 0;
}

static void finish_admin(sg_config_t *c, const char *source, sg_config__errs_t *errs)
{
    sg_config__listens_t proxy = {&c->listens, &c->n_listens};
    for (size_t i = 0; i < c->admin.n_listens; i++) {
        const sg_listen_conf_t *l = &c->admin.listens[i];
        size_t j = 0;
        while (j < i && !sg_config__sockaddr_eq(&c->admin.listens[j].addr, &l->addr)) j++;
        if (j < i) {
            sg_config__error(errs, source, 0, "duplicate admin listen address '%s'", l->text);
            continue;
        }
        if (sg_config__find_listen(proxy, &l->addr) >= 0)
            sg_config__error(errs, source, 0, "admin listener %s is also a proxy listener",
                             l->text);
        /* Anyone who reaches the admin API can point sandbox ids anywhere. */
        if (!c->admin.token && !is_loopback(&l->addr))
            sg_config__error(errs, source, 0,
                             "admin listener %s is not loopback and needs admin.token", l->text);
    }
}

static void finish_dns(sg_config_t *c, const char *source, const sg_config__marks_t *marks,
                       sg_config__errs_t *errs)
{
    char a[64], b[64];
    for (size_t i = 1; i < c->dns.n_servers; i++) {
        for (size_t j = 0; j < i; j++) {
            if (!sg_config__sockaddr_eq(&c->dns.servers[i], &c->dns.servers[j])) continue;
            sg_config__format_server(&c->dns.servers[i], a, sizeof(a));
            sg_config__error(errs, source, 0, "duplicate dns server '%s'", a);
            break;
        }
    }
    if (c->dns.zone && c->dns.n_servers == 0)
        sg_config__error_key(errs, source, marks, "dns.zone",
                             "dns.zone '%s' needs at least one dns.servers entry (or --dns-server)",
                             c->dns.zone);
    if (c->dns.ttl_max_ms < c->dns.ttl_min_ms) {
        sg_config__format_duration(c->dns.ttl_max_ms, a, sizeof(a));
        sg_config__format_duration(c->dns.ttl_min_ms, b, sizeof(b));
        sg_config__error_key(errs, source, marks,
                             marked(marks, "dns.ttl_max") ? "dns.ttl_max" : "dns.ttl_min",
                             "dns.ttl_max (%s) is below dns.ttl_min (%s)", a, b);
    }
}

void sg_config__finish_sources(sg_config_t *c, const char *source, const sg_config__marks_t *marks,
                               sg_config__errs_t *errs)
{
    finish_admin(c, source, errs);
    finish_dns(c, source, marks, errs);
    /* The default order names every source; keep the ones that exist so
     * the lookup chain never asks a source that has nothing to say. */
    size_t n = 0;
    for (size_t i = 0; i < c->n_lookup_order; i++) {
        sg_source_kind_t s = c->lookup_order[i];
        int configured = s == SG_SOURCE_STATIC ||
                         (s == SG_SOURCE_ADMIN && (c->admin.n_listens || c->admin.store_path)) ||
                         (s == SG_SOURCE_DNS && c->dns.zone);
        if (configured) c->lookup_order[n++] = s;
    }
    c->n_lookup_order = n;
    if (n == 0)
        sg_config__error_key(errs, source, marks, "lookup_order",
                             "lookup_order names no configured source (admin needs admin.listen or "
                             "admin.store, dns needs dns.zone)");
}

/* ---- dump ------------------------------------------------------------------ */

void sg_config__dump_servers(sg_strbuf_t *b, const struct sockaddr_storage *v, size_t n,
                             const char *indent)
{
    char text[64];
    if (n == 0) {
        sg_strbuf_append_cstr(b, " []\n");
        return;
    }
    sg_strbuf_append_cstr(b, "\n");
    for (size_t i = 0; i < n; i++) {
        sg_config__format_server(&v[i], text, sizeof(text));
        sg_strbuf_appendf(b, "%s  - ", indent);
        sg_config__append_quoted(b, text);
        sg_strbuf_append_cstr(b, "\n");
    }
}

void sg_config__dump_sources(sg_strbuf_t *b, const sg_config_t *c)
{
    sg_strbuf_append_cstr(b, " [");
    for (size_t i = 0; i < c->n_lookup_order; i++)
        sg_strbuf_appendf(b, "%s%s", i ? ", " : "", sg_config__source_name(c->lookup_order[i]));
    sg_strbuf_append_cstr(b, "]\n");
}
