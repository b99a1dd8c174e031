/* The `egress` settings that do not fit the scalar table rows: the list of
 * always-denied exceptions (validated by the egress policy's own CIDR
 * parser, so the config accepts exactly what the policy will match), the
 * sandbox interface patterns (checked so nft accepts them), the nftables
 * table name, and the whole-snapshot checks that tie the egress
 * listeners to the proxy and admin listeners. The YAML walk of the lists
 * lives in config_yaml.c next to the other list walkers. */
#include "config/config_internal.h"
#include "egress/policy.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SG_DNS_PORT 53
#define SG_NFT_TABLE_MAX 32
#define SG_IFNAME_MAX 15

/* ---- text lists: always_denied_exceptions, sandbox_interfaces ----------- */

static int parse_cidr(const char *text, char **out, char *why, size_t whylen)
{
    sg_cidr_t cidr;
    char canon[SG_CIDR_TEXT_MAX];
    switch (sg_cidr_parse(text, &cidr)) {
    case SG_CIDR_OK:
        break;
    case SG_CIDR_EPREFIX:
        snprintf(why, whylen, "'%s': the prefix must be 0..32 for IPv4, 0..128 for IPv6", text);
        return -1;
    case SG_CIDR_EHOSTBITS:
        snprintf(why, whylen, "'%s' has bits set after the prefix (write e.g. 10.0.0.0/8)", text);
        return -1;
    default:
        snprintf(why, whylen, "'%s' is not an IPv4 or IPv6 address or CIDR", text);
        return -1;
    }
    /* Kept in the policy's normal form, so the dump, duplicates and the
     * reload comparison see one spelling: a bare address stays bare. */
    sg_cidr_format(&cidr, canon);
    if (!strchr(text, '/')) canon[strcspn(canon, "/")] = '\0';
    *out = strdup(canon);
    if (!*out) abort();
    return 0;
}

static int parse_ifname(const char *text, char **out, char *why, size_t whylen)
{
    size_t len = strlen(text);
    /* nft refuses an all-wildcard string; it would also take in the uplink. */
    if (strcmp(text, "*") == 0) {
        snprintf(why, whylen, "'*' alone would match every interface, the uplink too");
        return -1;
    }
    /* IFNAMSIZ: 15 characters and the NUL, the '*' counted as one of them. */
    int ok = len <= SG_IFNAME_MAX;
    for (size_t i = 0; ok && i < len; i++) {
        char ch = text[i];
        ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
             ch == '_' || ch == '.' || ch == '-' || (ch == '*' && i == len - 1);
    }
    if (!ok) {
        snprintf(why, whylen,
                 "'%s' is not an interface name pattern (1..%d of A-Z, a-z, 0-9, _, . and -, "
                 "optionally ending in * as in veth*)",
                 text, SG_IFNAME_MAX);
        return -1;
    }
    *out = strdup(text);
    if (!*out) abort();
    return 0;
}

int sg_config__parse_text_item(sg_config__type_t type, const char *text, char **out, char *why,
                               size_t whylen)
{
    if (!*text) {
        snprintf(why, whylen, "value is empty");
        return -1;
    }
    if (type == SG_CONF_T_IFNAMES) return parse_ifname(text, out, why, whylen);
    return parse_cidr(text, out, why, whylen);
}

sg_config__texts_t sg_config__texts_of(sg_config_t *c, sg_config__type_t type)
{
    sg_egress_conf_t *e = &c->egress;
    if (type == SG_CONF_T_CIDRS)
        return (sg_config__texts_t){&e->always_denied_exceptions, &e->n_always_denied_exceptions};
    if (type == SG_CONF_T_IFNAMES)
        return (sg_config__texts_t){&e->sandbox_interfaces, &e->n_sandbox_interfaces};
    abort(); /* a caller that passed a row of another type */
}

void sg_config__clear_texts(sg_config__texts_t l)
{
    for (size_t i = 0; i < *l.n; i++) free((*l.v)[i]);
    free(*l.v);
    *l.v = NULL;
    *l.n = 0;
}

void sg_config__add_text(sg_config__texts_t l, char *text)
{
    char **v = realloc(*l.v, (*l.n + 1) * sizeof(*v));
    if (!v) abort();
    *l.v = v;
    v[(*l.n)++] = text;
}

long sg_config__find_text(sg_config__texts_t l, const char *text)
{
    for (size_t i = 0; i < *l.n; i++)
        if (strcmp((*l.v)[i], text) == 0) return (long)i;
    return -1;
}

/* Read-only uses of sg_config__texts_of: the casts only let them share the
 * accessor; nothing is written through it. */
int sg_config__texts_eq(const sg_config_t *a, const sg_config_t *b, const sg_config__key_t *k)
{
    sg_config__texts_t x = sg_config__texts_of((sg_config_t *)a, k->type);
    sg_config__texts_t y = sg_config__texts_of((sg_config_t *)b, k->type);
    if (*x.n != *y.n) return 0;
    for (size_t i = 0; i < *x.n; i++)
        if (strcmp((*x.v)[i], (*y.v)[i]) != 0) return 0;
    return 1;
}

void sg_config__dump_texts(sg_strbuf_t *b, const sg_config_t *c, const sg_config__key_t *k,
                           const char *indent)
{
    sg_config__texts_t l = sg_config__texts_of((sg_config_t *)c, k->type);
    if (*l.n == 0) {
        sg_strbuf_append_cstr(b, " []\n");
        return;
    }
    sg_strbuf_append_cstr(b, "\n");
    for (size_t i = 0; i < *l.n; i++) {
        sg_strbuf_appendf(b, "%s  - ", indent);
        sg_config__append_quoted(b, (*l.v)[i]);
        sg_strbuf_append_cstr(b, "\n");
    }
}

/* ---- nft_table ------------------------------------------------------------ */

int sg_config__check_ident(const char *text, char *why, size_t whylen)
{
    /* The name goes into the ruleset unquoted; this keeps it one nft token. */
    size_t len = strlen(text);
    int ok = len >= 1 && len <= SG_NFT_TABLE_MAX && !(text[0] >= '0' && text[0] <= '9');
    for (size_t i = 0; ok && i < len; i++) {
        char ch = text[i];
        ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
             ch == '_';
    }
    if (!ok) {
        snprintf(why, whylen,
                 "'%s' is not a table name (1..%d of A-Z, a-z, 0-9 and _, not starting with "
                 "a digit)",
                 text, SG_NFT_TABLE_MAX);
        return -1;
    }
    return 0;
}

/* ---- whole-snapshot checks ------------------------------------------------ */

static uint16_t port_of(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET) return ntohs(((const struct sockaddr_in *)ss)->sin_port);
    return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
}

static int is_unspecified(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET)
        return ((const struct sockaddr_in *)ss)->sin_addr.s_addr == htonl(INADDR_ANY);
    return IN6_IS_ADDR_UNSPECIFIED(&((const struct sockaddr_in6 *)ss)->sin6_addr);
}

/* 1 when wildcard covers addr: 0.0.0.0 covers IPv4, [::] (dual-stack)
 * covers both families. */
static int covers(const struct sockaddr_storage *wildcard, const struct sockaddr_storage *addr)
{
    return is_unspecified(wildcard) &&
           (wildcard->ss_family == AF_INET6 || wildcard->ss_family == addr->ss_family);
}

/* 1 when both sockets would want the same local port on one address. The
 * proxy listeners bind with SO_REUSEPORT, so the kernel would not refuse the
 * second bind: it would split connections between the two silently. */
static int binds_overlap(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (port_of(a) != port_of(b)) return 0;
    return sg_config__sockaddr_eq(a, b) || covers(a, b) || covers(b, a);
}

/* An egress listener against the proxy or admin listeners. */
static void check_against(const sg_listen_conf_t *egress, const char *key,
                          const sg_listen_conf_t *v, size_t n, const char *what, const char *source,
                          const sg_config__marks_t *marks, sg_config__errs_t *errs)
{
    for (size_t i = 0; i < n; i++) {
        if (!binds_overlap(&egress->addr, &v[i].addr)) continue;
        sg_config__error_key(errs, source, marks, key, "%s %s clashes with %s %s", key,
                             egress->text, what, v[i].text);
        return;
    }
}

void sg_config__finish_egress(sg_config_t *c, const char *source, const sg_config__marks_t *marks,
                              sg_config__errs_t *errs)
{
    sg_egress_conf_t *e = &c->egress;
    const sg_listen_conf_t *listens[] = {&e->listen_http, &e->listen_tls, &e->listen_other};
    static const char *const keys[] = {"egress.listen_http", "egress.listen_tls",
                                       "egress.listen_other"};
    const char *first = NULL;
    char why[128];

    if (e->n_resolvers == 0) {
        struct sockaddr_storage ss;
        /* The nameserver row only holds text its own parser produced. */
        if (sg_config__parse_ip(e->nameserver, &ss, why, sizeof(why)) != 0) abort();
        if (ss.ss_family == AF_INET)
            ((struct sockaddr_in *)&ss)->sin_port = htons(SG_DNS_PORT);
        else
            ((struct sockaddr_in6 *)&ss)->sin6_port = htons(SG_DNS_PORT);
        sg_config__add_server((sg_config__servers_t){&e->resolvers, &e->n_resolvers}, &ss);
    }
    e->enabled = 0;
    for (size_t i = 0; i < 3; i++) {
        if (!listens[i]->text[0]) continue;
        e->enabled = 1;
        if (!first) first = keys[i];
    }
    if (!e->enabled) return;

    for (size_t i = 0; i < 3; i++) {
        if (!listens[i]->text[0]) continue;
        /* nftables redirects by port alone: two roles on one port could not
         * be told apart, whatever addresses they bind. */
        for (size_t j = 0; j < i; j++) {
            if (!listens[j]->text[0] || port_of(&listens[j]->addr) != port_of(&listens[i]->addr))
                continue;
            sg_config__error_key(errs, source, marks, keys[i], "%s %s uses the port of %s %s",
                                 keys[i], listens[i]->text, keys[j], listens[j]->text);
            break;
        }
        check_against(listens[i], keys[i], c->listens, c->n_listens, "listen address", source,
                      marks, errs);
        check_against(listens[i], keys[i], c->admin.listens, c->admin.n_listens,
                      "admin.listen address", source, marks, errs);
    }
    if (!c->admin.n_listens && !c->admin.store_path)
        sg_config__error_key(errs, source, marks, first,
                             "egress needs admin.listen (or admin.store): sandbox policies are "
                             "registered through the admin API");
}
