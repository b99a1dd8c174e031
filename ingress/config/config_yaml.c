/* The YAML file layer: walks a libyaml document and feeds each setting to the
 * table's parsers, reporting every problem as "file:line: message" (libyaml
 * marks are 0-based; users count lines from 1). */
#include "config/config_internal.h"

#include <stdlib.h>
#include <string.h>
#include <yaml.h>

typedef struct {
    yaml_document_t *doc;
    sg_config_t *c;
    const char *source;
    sg_config__marks_t *marks;
    sg_config__errs_t *errs;
} sg_yaml_walk_t;

static size_t node_line(const yaml_node_t *n)
{
    return n->start_mark.line + 1;
}

#define WALK_ERROR(w, node, ...)                                                                   \
    sg_config__error((w)->errs, (w)->source, node_line(node), __VA_ARGS__)

static const char *kind_name(const yaml_node_t *n)
{
    switch (n->type) {
    case YAML_SEQUENCE_NODE:
        return "a list";
    case YAML_MAPPING_NODE:
        return "a mapping";
    default:
        return "a single value";
    }
}

/* `key:` with nothing after it, `~` or `null`; a quoted "" is an empty string. */
static int is_null(const yaml_node_t *n)
{
    if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) return 0;
    const char *v = (const char *)n->data.scalar.value;
    return !*v || strcmp(v, "~") == 0 || strcmp(v, "null") == 0 || strcmp(v, "Null") == 0 ||
           strcmp(v, "NULL") == 0;
}

/* The scalar's text, or NULL after reporting why it is unusable. libyaml
 * NUL-terminates scalars, but "\0" escapes can hide a NUL inside. */
static const char *scalar_text(sg_yaml_walk_t *w, const yaml_node_t *n, const char *what)
{
    if (n->type != YAML_SCALAR_NODE) {
        WALK_ERROR(w, n, "%s: expected a single value, got %s", what, kind_name(n));
        return NULL;
    }
    const char *v = (const char *)n->data.scalar.value;
    if (strlen(v) != n->data.scalar.length) {
        WALK_ERROR(w, n, "%s: value contains a NUL byte", what);
        return NULL;
    }
    return v;
}

static yaml_node_t *node_at(sg_yaml_walk_t *w, int index)
{
    return yaml_document_get_node(w->doc, index);
}

/* Key text of a mapping pair, or NULL after reporting a non-scalar key. */
static const char *pair_key(sg_yaml_walk_t *w, const yaml_node_pair_t *pair, const char *where)
{
    yaml_node_t *k = node_at(w, pair->key);
    if (k->type != YAML_SCALAR_NODE) {
        WALK_ERROR(w, k, "%s: keys must be plain names, got %s", where, kind_name(k));
        return NULL;
    }
    return scalar_text(w, k, where);
}

/* Reports and returns 1 when `pair`'s key already appeared earlier in `map`.
 * libyaml's loader keeps duplicate keys, and silently taking the last one
 * would hide a mistake. */
static int duplicate_key(sg_yaml_walk_t *w, yaml_node_t *map, yaml_node_pair_t *pair,
                         const char *prefix, const char *what)
{
    yaml_node_t *k = node_at(w, pair->key);
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < pair; p++) {
        yaml_node_t *pk = node_at(w, p->key);
        if (pk->type == YAML_SCALAR_NODE && pk->data.scalar.length == k->data.scalar.length &&
            memcmp(pk->data.scalar.value, k->data.scalar.value, k->data.scalar.length) == 0) {
            WALK_ERROR(w, k, "%s%sduplicate %s '%s' (first at line %zu)", prefix,
                       *prefix ? ": " : "", what, (const char *)k->data.scalar.value,
                       node_line(pk));
            return 1;
        }
    }
    return 0;
}

/* A boolean inside a list item, e.g. `listen.tls`. */
static int item_bool(sg_yaml_walk_t *w, yaml_node_t *v, const char *where, int *out)
{
    const char *b = scalar_text(w, v, where);
    if (!b) return -1;
    if (sg_config__parse_bool(b, out) == 0) return 0;
    WALK_ERROR(w, v, "%s: expected true or false, got '%s'", where, b);
    return -1;
}

/* A `listen` / `admin.listen` item: "ADDR:PORT" or {address: "ADDR:PORT",
 * tls: bool, proxy_protocol: bool, max_connections: N}; admin listeners take
 * neither tls nor proxy_protocol. */
static void walk_listen_item(sg_yaml_walk_t *w, const sg_config__key_t *k, yaml_node_t *item)
{
    char why[256], where[64];
    const char *text = NULL;
    yaml_node_t *at = item;
    int admin = k->type == SG_CONF_T_ADMIN_LISTENS;
    int tls = 0, proxy_protocol = 0;
    uint64_t max_connections = 0;
    if (item->type == YAML_MAPPING_NODE) {
        int ok = 1;
        for (yaml_node_pair_t *p = item->data.mapping.pairs.start; p < item->data.mapping.pairs.top;
             p++) {
            const char *key = pair_key(w, p, k->name);
            yaml_node_t *v = node_at(w, p->value);
            if (!key || duplicate_key(w, item, p, k->name, "key")) {
                ok = 0;
                continue;
            }
            snprintf(where, sizeof(where), "%s.%s", k->name, key);
            if (strcmp(key, "address") == 0) {
                text = scalar_text(w, v, where);
                at = v;
                if (!text) ok = 0;
            } else if (!admin && strcmp(key, "tls") == 0) {
                if (item_bool(w, v, where, &tls) != 0) ok = 0;
            } else if (!admin && strcmp(key, "proxy_protocol") == 0) {
                if (item_bool(w, v, where, &proxy_protocol) != 0) ok = 0;
            } else if (strcmp(key, "max_connections") == 0) {
                const char *n = scalar_text(w, v, where);
                if (!n) {
                    ok = 0;
                } else if (sg_config__parse_uint(n, 0, SG_CONFIG__MAX_CONNECTIONS, &max_connections,
                                                 why, sizeof(why)) != 0) {
                    WALK_ERROR(w, v, "%s: %s", where, why);
                    ok = 0;
                }
            } else {
                WALK_ERROR(w, node_at(w, p->key), "unknown key '%s' (expected %s)", where,
                           admin ? "address, max_connections"
                                 : "address, tls, proxy_protocol, max_connections");
                ok = 0;
            }
        }
        if (!ok) return;
        if (!text) {
            WALK_ERROR(w, item, "%s: item lacks 'address'", k->name);
            return;
        }
    } else {
        text = scalar_text(w, item, k->name);
        if (!text) return;
    }
    sg_listen_conf_t l;
    if (sg_config__parse_listen(text, tls, &l, why, sizeof(why)) != 0) {
        WALK_ERROR(w, at, "%s: %s", k->name, why);
        return;
    }
    l.proxy_protocol = proxy_protocol;
    l.max_connections = (unsigned)max_connections;
    sg_config__listens_t list = sg_config__listens_of(w->c, k);
    if (sg_config__find_listen(list, &l.addr) >= 0) {
        WALK_ERROR(w, at, "%s: duplicate address '%s'", k->name, text);
        return;
    }
    sg_config__add_listen(list, &l);
}

static void walk_domain_item(sg_yaml_walk_t *w, const char *name, yaml_node_t *item)
{
    char why[256];
    const char *text = scalar_text(w, item, name);
    char *d;
    if (!text) return;
    if (sg_config__parse_domain(text, &d, why, sizeof(why)) != 0) {
        WALK_ERROR(w, item, "%s: %s", name, why);
        return;
    }
    if (sg_config__find_domain(w->c, d) >= 0) {
        WALK_ERROR(w, item, "%s: duplicate domain '%s'", name, d);
        free(d);
        return;
    }
    sg_config__add_domain(w->c, d);
}

static void walk_server_item(sg_yaml_walk_t *w, const sg_config__key_t *k, yaml_node_t *item)
{
    char why[256];
    struct sockaddr_storage ss;
    const char *text = scalar_text(w, item, k->name);
    if (!text) return;
    if (sg_config__parse_server(text, &ss, why, sizeof(why)) != 0) {
        WALK_ERROR(w, item, "%s: %s", k->name, why);
        return;
    }
    sg_config__servers_t list = sg_config__servers_of(w->c, k);
    if (sg_config__find_server(list, &ss) >= 0) {
        WALK_ERROR(w, item, "%s: duplicate server '%s'", k->name, text);
        return;
    }
    sg_config__add_server(list, &ss);
}

/* An item of a CIDRS or IFNAMES row. */
static void walk_text_item(sg_yaml_walk_t *w, const sg_config__key_t *k, yaml_node_t *item)
{
    char why[256];
    char *value;
    const char *text = scalar_text(w, item, k->name);
    if (!text) return;
    if (sg_config__parse_text_item(k->type, text, &value, why, sizeof(why)) != 0) {
        WALK_ERROR(w, item, "%s: %s", k->name, why);
        return;
    }
    sg_config__texts_t list = sg_config__texts_of(w->c, k->type);
    if (sg_config__find_text(list, value) >= 0) {
        WALK_ERROR(w, item, "%s: duplicate entry '%s'", k->name, text);
        free(value);
        return;
    }
    sg_config__add_text(list, value);
}

static void walk_source_item(sg_yaml_walk_t *w, const char *name, yaml_node_t *item)
{
    char why[256];
    sg_source_kind_t s;
    const char *text = scalar_text(w, item, name);
    if (!text) return;
    if (sg_config__parse_source(text, &s, why, sizeof(why)) != 0) {
        WALK_ERROR(w, item, "%s: %s", name, why);
        return;
    }
    for (size_t i = 0; i < w->c->n_lookup_order; i++) {
        if (w->c->lookup_order[i] != s) continue;
        WALK_ERROR(w, item, "%s: '%s' is listed twice", name, text);
        return;
    }
    w->c->lookup_order[w->c->n_lookup_order++] = s;
}

/* The list rows; each replaces the previous list. domains and lookup_order
 * need an item; the others may be empty (an empty `listen` is judged once
 * egress is known, in sg_config__finish). */
static void walk_list(sg_yaml_walk_t *w, const sg_config__key_t *k, yaml_node_t *n)
{
    int may_be_empty = k->type != SG_CONF_T_DOMAINS && k->type != SG_CONF_T_SOURCES;
    int empty = is_null(n) || (n->type == YAML_SEQUENCE_NODE &&
                               n->data.sequence.items.start == n->data.sequence.items.top);
    if (empty && !may_be_empty) {
        WALK_ERROR(w, n, "%s: needs at least one item", k->name);
        return;
    }
    if (!empty && n->type != YAML_SEQUENCE_NODE) {
        WALK_ERROR(w, n, "%s: expected a list, got %s (write '- item' lines or [a, b])", k->name,
                   kind_name(n));
        return;
    }
    switch (k->type) {
    case SG_CONF_T_LISTENS:
    case SG_CONF_T_ADMIN_LISTENS:
        sg_config__clear_listens(sg_config__listens_of(w->c, k));
        break;
    case SG_CONF_T_DOMAINS:
        sg_config__clear_domains(w->c);
        break;
    case SG_CONF_T_SERVERS:
    case SG_CONF_T_RESOLVERS:
        sg_config__clear_servers(sg_config__servers_of(w->c, k));
        break;
    case SG_CONF_T_CIDRS:
    case SG_CONF_T_IFNAMES:
        sg_config__clear_texts(sg_config__texts_of(w->c, k->type));
        break;
    default:
        w->c->n_lookup_order = 0;
        break;
    }
    if (empty) return;
    for (yaml_node_item_t *it = n->data.sequence.items.start; it < n->data.sequence.items.top;
         it++) {
        yaml_node_t *item = node_at(w, *it);
        switch (k->type) {
        case SG_CONF_T_LISTENS:
        case SG_CONF_T_ADMIN_LISTENS:
            walk_listen_item(w, k, item);
            break;
        case SG_CONF_T_DOMAINS:
            walk_domain_item(w, k->name, item);
            break;
        case SG_CONF_T_SERVERS:
        case SG_CONF_T_RESOLVERS:
            walk_server_item(w, k, item);
            break;
        case SG_CONF_T_CIDRS:
        case SG_CONF_T_IFNAMES:
            walk_text_item(w, k, item);
            break;
        default:
            /* 3 sources, none twice: the array cannot overflow. */
            walk_source_item(w, k->name, item);
            break;
        }
    }
}

/* One `sandboxes` entry: `id: "ADDR"` or `id: {address: ADDR, mask: TEMPLATE}`. */
static void walk_sandbox(sg_yaml_walk_t *w, const char *id, yaml_node_t *v)
{
    char why[256], where[SG_SANDBOX_ID_MAX + 32];
    const char *addr = NULL, *mask = NULL;
    yaml_node_t *addr_at = v, *mask_at = NULL;
    snprintf(where, sizeof(where), "sandboxes.%s", id);
    if (v->type == YAML_MAPPING_NODE) {
        int ok = 1;
        for (yaml_node_pair_t *p = v->data.mapping.pairs.start; p < v->data.mapping.pairs.top;
             p++) {
            const char *k = pair_key(w, p, where);
            yaml_node_t *pv = node_at(w, p->value);
            if (!k || duplicate_key(w, v, p, where, "key")) {
                ok = 0;
            } else if (strcmp(k, "address") == 0) {
                addr_at = pv;
                if (!(addr = scalar_text(w, pv, where))) ok = 0;
            } else if (strcmp(k, "mask") == 0) {
                if (is_null(pv)) continue; /* explicit "no mask" */
                mask_at = pv;
                if (!(mask = scalar_text(w, pv, where))) ok = 0;
            } else {
                WALK_ERROR(w, node_at(w, p->key), "unknown key '%s.%s' (expected address, mask)",
                           where, k);
                ok = 0;
            }
        }
        if (!ok) return;
        if (!addr) {
            WALK_ERROR(w, v, "%s: lacks 'address'", where);
            return;
        }
    } else if (is_null(v)) {
        WALK_ERROR(w, v, "%s: missing address", where);
        return;
    } else if (!(addr = scalar_text(w, v, where))) {
        return;
    }
    sg_sandbox_conf_t sb;
    memset(&sb, 0, sizeof(sb));
    memcpy(sb.id, id, strlen(id) + 1);
    if (sg_config__parse_ip(addr, &sb.addr, why, sizeof(why)) != 0) {
        WALK_ERROR(w, addr_at, "%s.address: %s", where, why);
        return;
    }
    if (mask && sg_config__check_mask(mask, why, sizeof(why)) != 0) {
        WALK_ERROR(w, mask_at, "%s.mask: %s", where, why);
        return;
    }
    if (mask) {
        sb.mask = strdup(mask);
        if (!sb.mask) abort();
    }
    sg_config__put_sandbox(w->c, &sb);
}

static void walk_sandboxes(sg_yaml_walk_t *w, const sg_config__key_t *k, yaml_node_t *n)
{
    char why[256];
    sg_config__clear_sandboxes(w->c);
    if (is_null(n)) return; /* every entry commented out: no static sandboxes */
    if (n->type != YAML_MAPPING_NODE) {
        WALK_ERROR(w, n, "%s: expected a mapping of id: address, got %s", k->name, kind_name(n));
        return;
    }
    for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
        const char *id = pair_key(w, p, k->name);
        if (!id || duplicate_key(w, n, p, k->name, "sandbox id")) continue;
        if (sg_config__check_sandbox_id(id, why, sizeof(why)) != 0) {
            WALK_ERROR(w, node_at(w, p->key), "%s: %s", k->name, why);
            continue;
        }
        walk_sandbox(w, id, node_at(w, p->value));
    }
}

/* One `tls.certificates` item: {cert: PATH, key: PATH, default: bool}.
 * *default_line is the line of the first `default: true` seen so far. */
static void walk_cert(sg_yaml_walk_t *w, const char *name, yaml_node_t *item, size_t *default_line)
{
    static const char *const fields[] = {"cert", "key"};
    const char *paths[2] = {NULL, NULL};
    int seen[2] = {0, 0}, is_default = 0, ok = 1;
    char where[64];
    if (item->type != YAML_MAPPING_NODE) {
        WALK_ERROR(w, item, "%s: expected a mapping {cert: PATH, key: PATH}, got %s", name,
                   kind_name(item));
        return;
    }
    for (yaml_node_pair_t *p = item->data.mapping.pairs.start; p < item->data.mapping.pairs.top;
         p++) {
        const char *k = pair_key(w, p, name);
        yaml_node_t *v = node_at(w, p->value);
        int f = !k ? -1 : strcmp(k, "cert") == 0 ? 0 : strcmp(k, "key") == 0 ? 1 : -1;
        if (!k || duplicate_key(w, item, p, name, "key")) {
            ok = 0;
        } else if (f >= 0) {
            snprintf(where, sizeof(where), "%s.%s", name, fields[f]);
            seen[f] = 1;
            if (is_null(v)) {
                WALK_ERROR(w, v, "%s: missing path", where);
                ok = 0;
            } else if (!(paths[f] = scalar_text(w, v, where))) {
                ok = 0;
            } else if (!*paths[f]) {
                WALK_ERROR(w, v, "%s: path is empty", where);
                ok = 0;
            }
        } else if (strcmp(k, "default") == 0) {
            snprintf(where, sizeof(where), "%s.default", name);
            const char *b = scalar_text(w, v, where);
            if (!b) {
                ok = 0;
            } else if (sg_config__parse_bool(b, &is_default) != 0) {
                WALK_ERROR(w, v, "%s: expected true or false, got '%s'", where, b);
                ok = 0;
            } else if (is_default && *default_line) {
                WALK_ERROR(w, v, "%s: only one certificate may be the default (first at line %zu)",
                           name, *default_line);
                ok = 0;
            } else if (is_default) {
                *default_line = node_line(v);
            }
        } else {
            WALK_ERROR(w, node_at(w, p->key), "unknown key '%s.%s' (expected cert, key, default)",
                       name, k);
            ok = 0;
        }
    }
    for (int f = 0; f < 2; f++) {
        if (seen[f]) continue;
        WALK_ERROR(w, item, "%s: item lacks '%s'", name, fields[f]);
        ok = 0;
    }
    if (!ok) return;
    sg_config__add_cert(w->c, sg_config__resolve_path(w->source, paths[0]),
                        sg_config__resolve_path(w->source, paths[1]), is_default);
}

/* tls.certificates: a list (possibly empty) that replaces the previous one. */
static void walk_certs(sg_yaml_walk_t *w, const sg_config__key_t *k, yaml_node_t *n)
{
    size_t default_line = 0;
    sg_config__clear_certs(w->c);
    if (is_null(n)) return;
    if (n->type != YAML_SEQUENCE_NODE) {
        WALK_ERROR(w, n, "%s: expected a list of {cert: PATH, key: PATH} mappings, got %s", k->name,
                   kind_name(n));
        return;
    }
    for (yaml_node_item_t *it = n->data.sequence.items.start; it < n->data.sequence.items.top; it++)
        walk_cert(w, k->name, node_at(w, *it), &default_line);
}

static void walk_key(sg_yaml_walk_t *w, const sg_config__key_t *k, yaml_node_t *n)
{
    char why[256];
    if (w->marks) w->marks->line[k - sg_config__keys] = node_line(n);
    switch (k->type) {
    case SG_CONF_T_LISTENS:
    case SG_CONF_T_ADMIN_LISTENS:
    case SG_CONF_T_DOMAINS:
    case SG_CONF_T_SERVERS:
    case SG_CONF_T_RESOLVERS:
    case SG_CONF_T_CIDRS:
    case SG_CONF_T_IFNAMES:
    case SG_CONF_T_SOURCES:
        walk_list(w, k, n);
        return;
    case SG_CONF_T_SANDBOXES:
        walk_sandboxes(w, k, n);
        return;
    case SG_CONF_T_CERTS:
        walk_certs(w, k, n);
        return;
    default:
        break;
    }
    if (is_null(n) && sg_config__is_string(k->type) && !k->def) {
        sg_config__unset_string(w->c, k); /* `token: ~`: explicitly none */
        return;
    }
    if (is_null(n) && k->type == SG_CONF_T_LISTEN_OPT) {
        memset((char *)w->c + k->offset, 0, k->size); /* `listen_http: ~`: off */
        return;
    }
    if (is_null(n)) {
        WALK_ERROR(w, n, "%s: missing value", k->name);
        return;
    }
    const char *text = scalar_text(w, n, k->name);
    if (text && sg_config__set_scalar(w->c, k, text, w->source, why, sizeof(why)) != 0)
        WALK_ERROR(w, n, "%s: %s", k->name, why);
}

/* `timeouts:` / `limits:` / `tls:` / `admin:` / `dns:` / `egress:` — a
 * mapping whose keys are rows "<section>.<key>". */
static void walk_section(sg_yaml_walk_t *w, const char *section, yaml_node_t *n)
{
    if (is_null(n)) return;
    if (n->type != YAML_MAPPING_NODE) {
        WALK_ERROR(w, n, "%s: expected a mapping, got %s", section, kind_name(n));
        return;
    }
    for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
        const char *name = pair_key(w, p, section);
        if (!name || duplicate_key(w, n, p, section, "key")) continue;
        char full[128];
        int len = snprintf(full, sizeof(full), "%s.%s", section, name);
        const sg_config__key_t *k = NULL;
        if (!strchr(name, '.') && len > 0 && (size_t)len < sizeof(full))
            k = sg_config__find_key(full, (size_t)len);
        if (!k) {
            WALK_ERROR(w, node_at(w, p->key), "unknown key '%s.%s'", section, name);
            continue;
        }
        walk_key(w, k, node_at(w, p->value));
    }
}

static void walk_root(sg_yaml_walk_t *w, yaml_node_t *root)
{
    if (root->type != YAML_MAPPING_NODE) {
        WALK_ERROR(w, root, "expected a mapping of settings (key: value lines), got %s",
                   kind_name(root));
        return;
    }
    for (yaml_node_pair_t *p = root->data.mapping.pairs.start; p < root->data.mapping.pairs.top;
         p++) {
        const char *name = pair_key(w, p, "top level");
        if (!name || duplicate_key(w, root, p, "", "key")) continue;
        /* Dotted rows are reachable only through their section, so one
         * setting has one spelling and duplicates stay detectable. */
        const sg_config__key_t *k =
            strchr(name, '.') ? NULL : sg_config__find_key(name, strlen(name));
        if (k)
            walk_key(w, k, node_at(w, p->value));
        else if (!strchr(name, '.') && sg_config__is_section(name, strlen(name)))
            walk_section(w, name, node_at(w, p->value));
        else
            WALK_ERROR(w, node_at(w, p->key), "unknown key '%s'", name);
    }
}

/* Reader errors (bad UTF-8) carry a byte offset rather than a mark. */
static size_t line_of_offset(const char *text, size_t len, size_t off)
{
    size_t line = 1;
    for (size_t i = 0; i < off && i < len; i++)
        if (text[i] == '\n') line++;
    return line;
}

static void report_parser_error(yaml_parser_t *p, const char *text, size_t len, const char *source,
                                sg_config__errs_t *errs)
{
    size_t line = p->error == YAML_READER_ERROR ? line_of_offset(text, len, p->problem_offset)
                                                : p->problem_mark.line + 1;
    const char *problem = p->problem ? p->problem : "cannot parse";
    if (p->error == YAML_MEMORY_ERROR) problem = "out of memory";
    if (p->context)
        sg_config__error(errs, source, line, "YAML syntax error: %s (%s at line %zu)", problem,
                         p->context, p->context_mark.line + 1);
    else
        sg_config__error(errs, source, line, "YAML syntax error: %s", problem);
}

int sg_config__parse_yaml(sg_config_t *c, const char *text, size_t len, const char *source,
                          sg_config__marks_t *marks, sg_config__errs_t *errs)
{
    unsigned before = errs->n;
    yaml_parser_t parser;
    yaml_document_t doc;
    if (!yaml_parser_initialize(&parser)) abort();
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    if (!yaml_parser_load(&parser, &doc)) {
        report_parser_error(&parser, text, len, source, errs);
        yaml_parser_delete(&parser);
        return -1;
    }
    if (marks) marks->file = source;
    sg_yaml_walk_t w = {&doc, c, source, marks, errs};
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    /* An empty file (or one holding only comments) means "all defaults". */
    if (root && !is_null(root)) walk_root(&w, root);
    yaml_document_delete(&doc);

    /* A second document would be silently ignored otherwise. */
    yaml_document_t next;
    if (!yaml_parser_load(&parser, &next)) {
        report_parser_error(&parser, text, len, source, errs);
    } else {
        yaml_node_t *r = yaml_document_get_root_node(&next);
        if (r)
            sg_config__error(errs, source, next.start_mark.line + 1,
                             "only one YAML document is allowed");
        yaml_document_delete(&next);
    }
    yaml_parser_delete(&parser);
    return errs->n == before ? 0 : -1;
}

int sg_config_parse_text(const char *text, size_t len, const char *source, sg_config_t **out,
                         char *err, size_t errlen)
{
    sg_config__errs_t errs = {0};
    sg_config__marks_t marks = {0};
    sg_config_t *c = sg_config__new(source);
    *out = NULL;
    if (sg_config__parse_yaml(c, text, len, source, &marks, &errs) != 0 ||
        sg_config__finish(c, source, &marks, &errs) != 0) {
        sg_config__free(c);
        sg_config__errs_finish(&errs, err, errlen);
        return -1;
    }
    sg_config__errs_finish(&errs, err, errlen);
    *out = c;
    return 0;
}
