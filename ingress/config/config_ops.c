/* Snapshot lifecycle (defaults, lists, free, reference count), the checks
 * that run once all layers are merged, the dump and the reload comparison.
 * Every one of them walks the settings table, so a new row is created,
 * freed, dumped and compared without code here unless its type is new. */
#include "config/config_internal.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SG_MAX_WORKERS 256

/* ---- snapshot ------------------------------------------------------------- */

static void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n);
    if (!p) abort(); /* like sg_strbuf: no recovery from memory exhaustion */
    return p;
}

static char *xstrdup(const char *s)
{
    char *d = strdup(s);
    if (!d) abort();
    return d;
}

sg_config_t *sg_config__new(const char *source)
{
    sg_config_t *c = calloc(1, sizeof(*c));
    if (!c) abort();
    atomic_init(&c->refs, 1);
    c->source = xstrdup(source);
    char why[256];
    for (size_t i = 0; i < sg_config__n_keys; i++) {
        const sg_config__key_t *k = &sg_config__keys[i];
        if (!k->def) continue;
        int rc;
        if (k->type == SG_CONF_T_LISTENS) {
            sg_listen_conf_t l;
            rc = sg_config__parse_listen(k->def, 0, &l, why, sizeof(why));
            if (rc == 0) sg_config__add_listen(sg_config__listens_of(c, k), &l);
        } else if (k->type == SG_CONF_T_DOMAINS) {
            char *d;
            rc = sg_config__parse_domain(k->def, &d, why, sizeof(why));
            if (rc == 0) sg_config__add_domain(c, d);
        } else if (k->type == SG_CONF_T_SOURCES) {
            rc = 0;
            for (const char *p = k->def; rc == 0 && *p;) {
                size_t n = strcspn(p, ",");
                char name[16];
                snprintf(name, sizeof(name), "%.*s", (int)n, p);
                rc = sg_config__parse_source(name, &c->lookup_order[c->n_lookup_order++], why,
                                             sizeof(why));
                p += n + (p[n] == ',');
            }
        } else {
            rc = sg_config__set_scalar(c, k, k->def, NULL, why, sizeof(why));
        }
        if (rc) abort(); /* a default that fails its own parser is a table bug */
    }
    return c;
}

sg_config__listens_t sg_config__listens_of(sg_config_t *c, const sg_config__key_t *k)
{
    if (k->type == SG_CONF_T_ADMIN_LISTENS)
        return (sg_config__listens_t){&c->admin.listens, &c->admin.n_listens};
    return (sg_config__listens_t){&c->listens, &c->n_listens};
}

void sg_config__clear_listens(sg_config__listens_t l)
{
    free(*l.v);
    *l.v = NULL;
    *l.n = 0;
}

void sg_config__add_listen(sg_config__listens_t l, const sg_listen_conf_t *item)
{
    *l.v = xrealloc(*l.v, (*l.n + 1) * sizeof(**l.v));
    (*l.v)[(*l.n)++] = *item;
}

long sg_config__find_listen(sg_config__listens_t l, const struct sockaddr_storage *addr)
{
    for (size_t i = 0; i < *l.n; i++)
        if (sg_config__sockaddr_eq(&(*l.v)[i].addr, addr)) return (long)i;
    return -1;
}

void sg_config__clear_domains(sg_config_t *c)
{
    for (size_t i = 0; i < c->n_domains; i++) free(c->domains[i]);
    free(c->domains);
    c->domains = NULL;
    c->n_domains = 0;
}

void sg_config__clear_sandboxes(sg_config_t *c)
{
    for (size_t i = 0; i < c->n_sandboxes; i++) free(c->sandboxes[i].mask);
    free(c->sandboxes);
    c->sandboxes = NULL;
    c->n_sandboxes = 0;
}

void sg_config__free(sg_config_t *c)
{
    if (!c) return;
    free(c->listens);
    free(c->admin.listens);
    sg_config__clear_domains(c);
    sg_config__clear_sandboxes(c);
    sg_config__clear_certs(c);
    sg_config__clear_servers((sg_config__servers_t){&c->dns.servers, &c->dns.n_servers});
    sg_config__clear_servers((sg_config__servers_t){&c->egress.resolvers, &c->egress.n_resolvers});
    sg_config__clear_texts(sg_config__texts_of(c, SG_CONF_T_CIDRS));
    sg_config__clear_texts(sg_config__texts_of(c, SG_CONF_T_IFNAMES));
    for (size_t i = 0; i < sg_config__n_keys; i++)
        if (sg_config__is_string(sg_config__keys[i].type))
            sg_config__unset_string(c, &sg_config__keys[i]);
    free(c->source);
    free(c);
}

void sg_config__add_domain(sg_config_t *c, char *d)
{
    c->domains = xrealloc(c->domains, (c->n_domains + 1) * sizeof(*c->domains));
    c->domains[c->n_domains++] = d;
}

int sg_config__sockaddr_eq(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family) return 0;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
        return x->sin6_port == y->sin6_port &&
               memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
    }
    return 0;
}

long sg_config__find_domain(const sg_config_t *c, const char *d)
{
    for (size_t i = 0; i < c->n_domains; i++)
        if (strcmp(c->domains[i], d) == 0) return (long)i;
    return -1;
}

long sg_config__find_sandbox(const sg_config_t *c, const char *id)
{
    for (size_t i = 0; i < c->n_sandboxes; i++)
        if (strcmp(c->sandboxes[i].id, id) == 0) return (long)i;
    return -1;
}

void sg_config__put_sandbox(sg_config_t *c, const sg_sandbox_conf_t *sb)
{
    long i = sg_config__find_sandbox(c, sb->id);
    if (i >= 0) {
        free(c->sandboxes[i].mask);
        c->sandboxes[i] = *sb;
        return;
    }
    c->sandboxes = xrealloc(c->sandboxes, (c->n_sandboxes + 1) * sizeof(*c->sandboxes));
    c->sandboxes[c->n_sandboxes++] = *sb;
}

static unsigned cpu_count(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1) return 1;
    if (n > SG_MAX_WORKERS) return SG_MAX_WORKERS;
    return (unsigned)n;
}

int sg_config__finish(sg_config_t *c, const char *source, const sg_config__marks_t *marks,
                      sg_config__errs_t *errs)
{
    unsigned before = errs->n;
    /* Resolved first: an egress-only host needs no proxy listener. */
    sg_config__finish_egress(c, source, marks, errs);
    if (c->n_listens == 0 && !c->egress.enabled)
        sg_config__error_key(errs, source, marks, "listen",
                             "listen: needs at least one item (or egress.listen_* for an "
                             "egress-only host)");
    if (c->n_domains == 0) sg_config__error(errs, source, 0, "no domain configured");
    for (size_t i = 1; i < c->n_listens; i++) {
        for (size_t j = 0; j < i; j++) {
            if (sg_config__sockaddr_eq(&c->listens[i].addr, &c->listens[j].addr)) {
                sg_config__error(errs, source, 0, "duplicate listen address '%s'",
                                 c->listens[i].text);
                break;
            }
        }
    }
    for (size_t i = 1; i < c->n_domains; i++) {
        for (size_t j = 0; j < i; j++) {
            if (strcmp(c->domains[i], c->domains[j]) == 0) {
                sg_config__error(errs, source, 0, "duplicate domain '%s'", c->domains[i]);
                break;
            }
        }
    }
    sg_config__finish_tls(c, source, errs);
    sg_config__finish_sources(c, source, marks, errs);
    if (errs->n != before) return -1;
    if (c->workers == 0) c->workers = cpu_count();
    return 0;
}

/* ---- public lifecycle ----------------------------------------------------- */

void sg_config_ref(sg_config_t *c)
{
    atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
}

void sg_config_unref(sg_config_t *c)
{
    if (!c) return;
    /* acq_rel: the thread that frees must see every other thread's last use. */
    if (atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) == 1) sg_config__free(c);
}

/* ---- dump ----------------------------------------------------------------- */

/* Double-quoted YAML scalar. Validated values never need escapes, but the
 * dump must stay parseable whatever a future setting lets through. */
void sg_config__append_quoted(sg_strbuf_t *b, const char *s)
{
    sg_strbuf_append_cstr(b, "\"");
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            sg_strbuf_appendf(b, "\\%c", ch);
        else if (ch < 0x20 || ch == 0x7f)
            sg_strbuf_appendf(b, "\\x%02x", ch);
        else
            sg_strbuf_append(b, s, 1);
    }
    sg_strbuf_append_cstr(b, "\"");
}

static void format_ip(const struct sockaddr_storage *ss, char *buf, size_t len)
{
    if (ss->ss_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)ss)->sin_addr, buf, (socklen_t)len);
    else
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)ss)->sin6_addr, buf, (socklen_t)len);
}

/* The proxy listeners always in the long form; admin ones without the keys
 * they do not take. */
static void dump_listens(sg_strbuf_t *b, const sg_config_t *c, int admin, const char *indent)
{
    const sg_listen_conf_t *v = admin ? c->admin.listens : c->listens;
    size_t n = admin ? c->admin.n_listens : c->n_listens;
    if (n == 0) {
        sg_strbuf_append_cstr(b, " []\n");
        return;
    }
    sg_strbuf_append_cstr(b, "\n");
    for (size_t i = 0; i < n; i++) {
        sg_strbuf_appendf(b, "%s  - {address: ", indent);
        sg_config__append_quoted(b, v[i].text);
        if (!admin)
            sg_strbuf_appendf(b, ", tls: %s, proxy_protocol: %s", v[i].tls ? "true" : "false",
                              v[i].proxy_protocol ? "true" : "false");
        sg_strbuf_appendf(b, ", max_connections: %u}\n", v[i].max_connections);
    }
}

static void dump_key(sg_strbuf_t *b, const sg_config_t *c, const sg_config__key_t *k,
                     const char *indent, const char *leaf)
{
    const char *field = (const char *)c + k->offset;
    char v[64];
    uint64_t n = 0;
    if (k->type == SG_CONF_T_UINT || k->type == SG_CONF_T_DURATION || k->type == SG_CONF_T_SIZE)
        n = k->size == sizeof(uint64_t) ? *(const uint64_t *)field : *(const unsigned *)field;
    sg_strbuf_appendf(b, "%s%s:", indent, leaf);
    switch (k->type) {
    case SG_CONF_T_LISTENS:
    case SG_CONF_T_ADMIN_LISTENS:
        dump_listens(b, c, k->type == SG_CONF_T_ADMIN_LISTENS, indent);
        return;
    case SG_CONF_T_SERVERS:
        sg_config__dump_servers(b, c->dns.servers, c->dns.n_servers, indent);
        return;
    case SG_CONF_T_RESOLVERS:
        sg_config__dump_servers(b, c->egress.resolvers, c->egress.n_resolvers, indent);
        return;
    case SG_CONF_T_CIDRS:
    case SG_CONF_T_IFNAMES:
        sg_config__dump_texts(b, c, k, indent);
        return;
    case SG_CONF_T_LISTEN_OPT: {
        const sg_listen_conf_t *l = (const sg_listen_conf_t *)field;
        if (!l->text[0]) {
            sg_strbuf_append_cstr(b, " ~\n");
            return;
        }
        sg_strbuf_append_cstr(b, " ");
        sg_config__append_quoted(b, l->text);
        sg_strbuf_append_cstr(b, "\n");
        return;
    }
    case SG_CONF_T_SOURCES:
        sg_config__dump_sources(b, c);
        return;
    case SG_CONF_T_LOG_FORMAT:
        sg_strbuf_appendf(b, " %s\n", *(const int *)field ? "json" : "text");
        return;
    case SG_CONF_T_SECRET:
    case SG_CONF_T_PATH:
    case SG_CONF_T_DNS_NAME:
    case SG_CONF_T_HEADER:
    case SG_CONF_T_ACCESS_LOG:
    case SG_CONF_T_IP:
    case SG_CONF_T_IDENT:
        /* "~" is how the file says "none" for rows without a default. */
        if (!*(char *const *)field) {
            sg_strbuf_append_cstr(b, " ~\n");
            return;
        }
        sg_strbuf_append_cstr(b, " ");
        sg_config__append_quoted(b, *(char *const *)field);
        sg_strbuf_append_cstr(b, "\n");
        return;
    case SG_CONF_T_DOMAINS:
        sg_strbuf_append_cstr(b, "\n");
        for (size_t i = 0; i < c->n_domains; i++) {
            sg_strbuf_appendf(b, "%s  - ", indent);
            sg_config__append_quoted(b, c->domains[i]);
            sg_strbuf_append_cstr(b, "\n");
        }
        return;
    case SG_CONF_T_SANDBOXES:
        if (c->n_sandboxes == 0) {
            sg_strbuf_append_cstr(b, " {}\n");
            return;
        }
        sg_strbuf_append_cstr(b, "\n");
        for (size_t i = 0; i < c->n_sandboxes; i++) {
            char ip[INET6_ADDRSTRLEN];
            format_ip(&c->sandboxes[i].addr, ip, sizeof(ip));
            sg_strbuf_appendf(b, "%s  %s: {address: ", indent, c->sandboxes[i].id);
            sg_config__append_quoted(b, ip);
            if (c->sandboxes[i].mask) {
                sg_strbuf_append_cstr(b, ", mask: ");
                sg_config__append_quoted(b, c->sandboxes[i].mask);
            }
            sg_strbuf_append_cstr(b, "}\n");
        }
        return;
    case SG_CONF_T_LOG_LEVEL: {
        static const char *const names[] = {"debug", "info", "warn", "error"};
        int level = *(const int *)field;
        sg_strbuf_appendf(b, " %s\n", level >= 0 && level < 4 ? names[level] : "info");
        return;
    }
    case SG_CONF_T_BOOL:
        sg_strbuf_appendf(b, " %s\n", *(const int *)field ? "true" : "false");
        return;
    case SG_CONF_T_CERTS:
        sg_config__dump_certs(b, c, indent);
        return;
    case SG_CONF_T_UINT:
        snprintf(v, sizeof(v), "%llu", (unsigned long long)n);
        break;
    case SG_CONF_T_DURATION:
        sg_config__format_duration(n, v, sizeof(v));
        break;
    case SG_CONF_T_SIZE:
        sg_config__format_size(n, v, sizeof(v));
        break;
    }
    sg_strbuf_appendf(b, " %s\n", v);
}

char *sg_config_dump(const sg_config_t *c)
{
    sg_strbuf_t b = {0};
    sg_strbuf_append_cstr(&b, "# sandgate configuration from ");
    sg_strbuf_append_cstr(&b, c->source ? c->source : "?");
    sg_strbuf_append_cstr(&b, " (workers resolved)\n");
    const char *section = NULL;
    size_t section_len = 0;
    for (size_t i = 0; i < sg_config__n_keys; i++) {
        const sg_config__key_t *k = &sg_config__keys[i];
        const char *dot = strchr(k->name, '.');
        if (!dot) {
            section = NULL;
            dump_key(&b, c, k, "", k->name);
            continue;
        }
        size_t len = (size_t)(dot - k->name);
        if (!section || section_len != len || memcmp(section, k->name, len) != 0) {
            section = k->name;
            section_len = len;
            sg_strbuf_appendf(&b, "%.*s:\n", (int)len, k->name);
        }
        dump_key(&b, c, k, "  ", dot + 1);
    }
    sg_strbuf_append(&b, "", 1); /* NUL, so the buffer is a C string */
    return b.base;
}

/* ---- reload --------------------------------------------------------------- */

static int listens_eq(const sg_listen_conf_t *x, size_t nx, const sg_listen_conf_t *y, size_t ny)
{
    if (nx != ny) return 0;
    for (size_t i = 0; i < nx; i++)
        if (!sg_config__sockaddr_eq(&x[i].addr, &y[i].addr) || x[i].tls != y[i].tls ||
            x[i].proxy_protocol != y[i].proxy_protocol ||
            x[i].max_connections != y[i].max_connections)
            return 0;
    return 1;
}

static int key_eq(const sg_config__key_t *k, const sg_config_t *a, const sg_config_t *b)
{
    if (sg_config__is_string(k->type)) {
        const char *x = *(char *const *)((const char *)a + k->offset);
        const char *y = *(char *const *)((const char *)b + k->offset);
        return x == y || (x && y && strcmp(x, y) == 0);
    }
    switch (k->type) {
    case SG_CONF_T_LISTENS:
        /* Listeners are bound with their options once, at start. */
        return listens_eq(a->listens, a->n_listens, b->listens, b->n_listens);
    case SG_CONF_T_ADMIN_LISTENS:
        return listens_eq(a->admin.listens, a->admin.n_listens, b->admin.listens,
                          b->admin.n_listens);
    case SG_CONF_T_DOMAINS:
        if (a->n_domains != b->n_domains) return 0;
        for (size_t i = 0; i < a->n_domains; i++)
            if (strcmp(a->domains[i], b->domains[i]) != 0) return 0;
        return 1;
    case SG_CONF_T_SANDBOXES:
        if (a->n_sandboxes != b->n_sandboxes) return 0;
        for (size_t i = 0; i < a->n_sandboxes; i++) {
            const sg_sandbox_conf_t *x = &a->sandboxes[i], *y = &b->sandboxes[i];
            if (strcmp(x->id, y->id) != 0 || !sg_config__sockaddr_eq(&x->addr, &y->addr)) return 0;
            if (!x->mask != !y->mask || (x->mask && strcmp(x->mask, y->mask) != 0)) return 0;
        }
        return 1;
    case SG_CONF_T_CERTS:
        return sg_config__certs_eq(a, b);
    case SG_CONF_T_SERVERS:
        return sg_config__servers_eq(a->dns.servers, a->dns.n_servers, b->dns.servers,
                                     b->dns.n_servers);
    case SG_CONF_T_RESOLVERS:
        return sg_config__servers_eq(a->egress.resolvers, a->egress.n_resolvers,
                                     b->egress.resolvers, b->egress.n_resolvers);
    case SG_CONF_T_CIDRS:
    case SG_CONF_T_IFNAMES:
        return sg_config__texts_eq(a, b, k);
    case SG_CONF_T_LISTEN_OPT: {
        const sg_listen_conf_t *x = (const void *)((const char *)a + k->offset);
        const sg_listen_conf_t *y = (const void *)((const char *)b + k->offset);
        if (!x->text[0] || !y->text[0]) return !x->text[0] && !y->text[0];
        return sg_config__sockaddr_eq(&x->addr, &y->addr);
    }
    case SG_CONF_T_SOURCES:
        return a->n_lookup_order == b->n_lookup_order &&
               memcmp(a->lookup_order, b->lookup_order,
                      a->n_lookup_order * sizeof(a->lookup_order[0])) == 0;
    default:
        return memcmp((const char *)a + k->offset, (const char *)b + k->offset, k->size) == 0;
    }
}

const char *sg_config_restart_key(const sg_config_t *old_c, const sg_config_t *new_c)
{
    for (size_t i = 0; i < sg_config__n_keys; i++) {
        const sg_config__key_t *k = &sg_config__keys[i];
        if ((k->flags & SG_CONF_RESTART) && !key_eq(k, old_c, new_c)) return k->name;
    }
    return NULL;
}
