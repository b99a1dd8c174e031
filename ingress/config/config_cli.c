/* The command-line layer: flags parsed into a list first (so --help works
 * whatever else is wrong with the values), then the file or the embedded
 * default is loaded, then the flags are applied on top in argv order. */
#include "config/config_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SG_CLI "sandgate"
/* A config file is a few KiB; refuse anything absurd rather than slurp it. */
#define SG_CONFIG_FILE_MAX (16u << 20)

const char sg_config_usage[] =
    "Usage: sandgate [options]\n"
    "\n"
    "Routes http://<port>-<sandbox>.<domain>/ to <port> on the sandbox's address.\n"
    "\n"
    "Options:\n"
    "  --config FILE                YAML configuration file (default: the built-in one)\n"
    "  --listen ADDR:PORT           accept HTTP on ADDR:PORT, IPv6 as [::1]:8080 (repeatable)\n"
    "  --listen-tls ADDR:PORT       accept HTTPS on ADDR:PORT (repeatable; needs --tls-cert\n"
    "                               or tls.certificates in the file)\n"
    "  --tls-cert CHAIN,KEY         PEM certificate chain (leaf first) and private key for\n"
    "                               HTTPS; the first is the default for clients without SNI\n"
    "                               (repeatable)\n"
    "  --redirect-http              plain HTTP listeners answer 308 to https:// instead\n"
    "                               of proxying\n"
    "  --domain NAME                serve <port>-<id>.NAME (repeatable)\n"
    "  --sandbox ID=ADDR[,mask=T]   static sandbox ID at IP address ADDR; T is the Host sent\n"
    "                               upstream, with ${PORT} replaced by the port (repeatable)\n"
    "  --workers N                  worker threads, 0 = one per CPU (max 256)\n"
    "  --log-level LEVEL            debug, info, warn or error\n"
    "  --log-format FORMAT          error log lines as text or json\n"
    "  --access-log DEST            request log: stdout, off or a file path\n"
    "  --drain-timeout DURATION     on SIGTERM, open streams get this long to finish\n"
    "  --admin-listen ADDR:PORT     serve the admin API on ADDR:PORT (repeatable; other than\n"
    "                               loopback needs an admin token)\n"
    "  --admin-token TOKEN          bearer token the admin API requires (visible in the\n"
    "                               process list: prefer admin.token in the file)\n"
    "  --admin-store PATH           write-ahead log keeping admin-registered sandboxes\n"
    "  --dns-zone ZONE              look sandbox ids up in DNS as <id>.ZONE\n"
    "  --dns-server ADDR[:PORT]     DNS server for --dns-zone, port 53 by default\n"
    "                               (repeatable)\n"
    "  --check-config               validate the configuration and exit\n"
    "  --version                    print the version and exit\n"
    "  --help, -h                   print this help and exit\n"
    "\n"
    "Values go as '--flag VALUE' or '--flag=VALUE'. Flags override the file: the first\n"
    "--listen/--listen-tls, --domain, --tls-cert, --admin-listen or --dns-server replaces\n"
    "the file's list, later ones add to it; --sandbox adds a sandbox or replaces the\n"
    "file's entry with the same ID.\n"
    "Without --config the built-in configuration applies (listen 127.0.0.1:8080, domain\n"
    "sandbox.localhost, sandbox 'demo' at 127.0.0.1); any --sandbox then replaces 'demo'.\n";

typedef enum {
    SG_FLAG_CONFIG,
    SG_FLAG_LISTEN,
    SG_FLAG_LISTEN_TLS,
    SG_FLAG_DOMAIN,
    SG_FLAG_SANDBOX,
    SG_FLAG_TLS_CERT,
    SG_FLAG_REDIRECT_HTTP,
    SG_FLAG_ADMIN_LISTEN,
    SG_FLAG_DNS_SERVER,
    SG_FLAG_SCALAR, /* sets the table row named in `key` */
    SG_FLAG_CHECK_CONFIG,
    SG_FLAG_VERSION,
    SG_FLAG_HELP,
} sg_flag_id_t;

static const struct {
    const char *name;
    sg_flag_id_t id;
    int has_value;
    const char *key; /* the row the flag sets, for SG_FLAG_SCALAR */
} sg_flags[] = {
    {"--config", SG_FLAG_CONFIG, 1, NULL},
    {"--listen", SG_FLAG_LISTEN, 1, NULL},
    {"--listen-tls", SG_FLAG_LISTEN_TLS, 1, NULL},
    {"--domain", SG_FLAG_DOMAIN, 1, NULL},
    {"--sandbox", SG_FLAG_SANDBOX, 1, NULL},
    {"--workers", SG_FLAG_SCALAR, 1, "workers"},
    {"--log-level", SG_FLAG_SCALAR, 1, "log_level"},
    {"--log-format", SG_FLAG_SCALAR, 1, "log_format"},
    {"--access-log", SG_FLAG_SCALAR, 1, "access_log"},
    {"--drain-timeout", SG_FLAG_SCALAR, 1, "drain_timeout"},
    {"--tls-cert", SG_FLAG_TLS_CERT, 1, NULL},
    {"--redirect-http", SG_FLAG_REDIRECT_HTTP, 0, NULL},
    {"--admin-listen", SG_FLAG_ADMIN_LISTEN, 1, "admin.listen"},
    {"--admin-token", SG_FLAG_SCALAR, 1, "admin.token"},
    {"--admin-store", SG_FLAG_SCALAR, 1, "admin.store"},
    {"--dns-zone", SG_FLAG_SCALAR, 1, "dns.zone"},
    {"--dns-server", SG_FLAG_DNS_SERVER, 1, "dns.servers"},
    {"--check-config", SG_FLAG_CHECK_CONFIG, 0, NULL},
    {"--version", SG_FLAG_VERSION, 0, NULL},
    {"--help", SG_FLAG_HELP, 0, NULL},
    {"-h", SG_FLAG_HELP, 0, NULL},
};

typedef struct {
    sg_flag_id_t id;
    size_t def;        /* index in sg_flags */
    const char *value; /* borrowed from argv */
} sg_flag_t;

/* Splits argv into flags; reports unknown flags and missing values. */
static size_t scan_argv(int argc, char **argv, sg_flag_t *out, sg_config__errs_t *errs)
{
    size_t n = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *eq = strncmp(a, "--", 2) == 0 ? strchr(a, '=') : NULL;
        size_t len = eq ? (size_t)(eq - a) : strlen(a);
        size_t f = 0;
        while (f < sizeof(sg_flags) / sizeof(sg_flags[0]) &&
               !(strlen(sg_flags[f].name) == len && memcmp(sg_flags[f].name, a, len) == 0))
            f++;
        if (f == sizeof(sg_flags) / sizeof(sg_flags[0])) {
            if (a[0] == '-')
                sg_config__error(errs, SG_CLI, 0, "unknown flag '%.*s' (see --help)", (int)len, a);
            else
                sg_config__error(errs, SG_CLI, 0, "unexpected argument '%s' (see --help)", a);
            continue;
        }
        const char *value = NULL;
        if (sg_flags[f].has_value) {
            if (eq) {
                value = eq + 1;
            } else if (i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0) {
                value = argv[++i];
            } else {
                /* "--listen --domain x" is a forgotten value, not an address. */
                sg_config__error(errs, SG_CLI, 0, "%s needs a value", sg_flags[f].name);
                continue;
            }
        } else if (eq) {
            sg_config__error(errs, SG_CLI, 0, "%s takes no value", sg_flags[f].name);
            continue;
        }
        out[n].id = sg_flags[f].id;
        out[n].def = f;
        out[n].value = value;
        n++;
    }
    return n;
}

/* Reads a whole file; NULL (with errno) on failure. */
static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    sg_strbuf_t b = {0};
    char chunk[8192];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
        sg_strbuf_append(&b, chunk, n);
        if (b.len > SG_CONFIG_FILE_MAX) {
            fclose(f);
            sg_strbuf_free(&b);
            errno = EFBIG;
            return NULL;
        }
    }
    int failed = ferror(f);
    fclose(f);
    if (failed) {
        sg_strbuf_free(&b);
        errno = EIO;
        return NULL;
    }
    sg_strbuf_append(&b, "", 1); /* never NULL, even for an empty file */
    *len = b.len - 1;
    return b.base;
}

/* "ID=ADDRESS[,mask=TEMPLATE]" into sb (mask malloc'd). The address never
 * contains ',' (IPv6 uses ':'), so the first ',' starts the options. */
static int parse_sandbox_flag(const char *spec, sg_sandbox_conf_t *sb, char *why, size_t whylen)
{
    memset(sb, 0, sizeof(*sb));
    const char *eq = strchr(spec, '=');
    if (!eq) {
        snprintf(why, whylen, "expected ID=ADDRESS[,mask=TEMPLATE], got '%s'", spec);
        return -1;
    }
    size_t id_len = (size_t)(eq - spec);
    char id[SG_SANDBOX_ID_MAX + 2];
    if (id_len > SG_SANDBOX_ID_MAX) id_len = SG_SANDBOX_ID_MAX + 1; /* fails the id check */
    memcpy(id, spec, id_len);
    id[id_len] = '\0';
    if (sg_config__check_sandbox_id(id, why, whylen) != 0) return -1;
    memcpy(sb->id, id, id_len + 1);

    const char *addr = eq + 1;
    const char *opts = strchr(addr, ',');
    char ip[64];
    size_t addr_len = opts ? (size_t)(opts - addr) : strlen(addr);
    if (addr_len >= sizeof(ip)) addr_len = sizeof(ip) - 1; /* truncated: fails to parse */
    memcpy(ip, addr, addr_len);
    ip[addr_len] = '\0';
    if (sg_config__parse_ip(ip, &sb->addr, why, whylen) != 0) return -1;

    while (opts) {
        const char *opt = opts + 1;
        opts = strchr(opt, ',');
        size_t opt_len = opts ? (size_t)(opts - opt) : strlen(opt);
        if (opt_len < 5 || memcmp(opt, "mask=", 5) != 0) {
            snprintf(why, whylen, "unknown option '%.*s' (expected mask=TEMPLATE)", (int)opt_len,
                     opt);
            goto fail;
        }
        if (sb->mask) {
            snprintf(why, whylen, "mask given twice");
            goto fail;
        }
        sb->mask = strndup(opt + 5, opt_len - 5);
        if (!sb->mask) abort();
        if (sg_config__check_mask(sb->mask, why, whylen) != 0) goto fail;
    }
    return 0;
fail:
    free(sb->mask);
    sb->mask = NULL;
    return -1;
}

/* Applies the value-carrying flags to c in argv order. A row a flag sets
 * loses its file line: a later check must not blame the file for it. */
static void apply_flags(sg_config_t *c, const sg_flag_t *flags, size_t n, int from_file,
                        sg_config__marks_t *marks, sg_config__errs_t *errs)
{
    char why[256];
    int listens_replaced = 0, domains_replaced = 0, sandboxes_replaced = from_file;
    int certs_replaced = 0, admin_replaced = 0, servers_replaced = 0;
    for (size_t i = 0; i < n; i++) {
        const sg_flag_t *f = &flags[i];
        const char *name = sg_flags[f->def].name;
        const char *key = sg_flags[f->def].key;
        const sg_config__key_t *k = key ? sg_config__find_key(key, strlen(key)) : NULL;
        if (k) marks->line[k - sg_config__keys] = 0;
        switch (f->id) {
        case SG_FLAG_LISTEN:
        case SG_FLAG_LISTEN_TLS:
        case SG_FLAG_ADMIN_LISTEN: {
            int admin = f->id == SG_FLAG_ADMIN_LISTEN;
            int *replaced = admin ? &admin_replaced : &listens_replaced;
            sg_config__listens_t list =
                admin ? (sg_config__listens_t){&c->admin.listens, &c->admin.n_listens}
                      : (sg_config__listens_t){&c->listens, &c->n_listens};
            sg_listen_conf_t l;
            if (!*replaced) sg_config__clear_listens(list), *replaced = 1;
            if (sg_config__parse_listen(f->value, f->id == SG_FLAG_LISTEN_TLS, &l, why,
                                        sizeof(why)) != 0)
                sg_config__error(errs, SG_CLI, 0, "%s: %s", name, why);
            else
                sg_config__add_listen(list, &l);
            break;
        }
        case SG_FLAG_DNS_SERVER: {
            struct sockaddr_storage ss;
            sg_config__servers_t list = {&c->dns.servers, &c->dns.n_servers};
            if (!servers_replaced) sg_config__clear_servers(list), servers_replaced = 1;
            if (sg_config__parse_server(f->value, &ss, why, sizeof(why)) != 0)
                sg_config__error(errs, SG_CLI, 0, "%s: %s", name, why);
            else
                sg_config__add_server(list, &ss);
            break;
        }
        case SG_FLAG_DOMAIN: {
            char *d;
            if (!domains_replaced) sg_config__clear_domains(c), domains_replaced = 1;
            if (sg_config__parse_domain(f->value, &d, why, sizeof(why)) != 0)
                sg_config__error(errs, SG_CLI, 0, "--domain: %s", why);
            else
                sg_config__add_domain(c, d);
            break;
        }
        case SG_FLAG_SANDBOX: {
            sg_sandbox_conf_t sb;
            /* The built-in 'demo' points at this host's loopback; keeping it
             * next to real sandboxes would expose local ports by accident. */
            if (!sandboxes_replaced) sg_config__clear_sandboxes(c), sandboxes_replaced = 1;
            if (parse_sandbox_flag(f->value, &sb, why, sizeof(why)) != 0) {
                sg_config__error(errs, SG_CLI, 0, "--sandbox: %s", why);
                break;
            }
            int again = 0;
            for (size_t j = 0; j < i && !again; j++) {
                const char *prev = flags[j].value, *peq;
                if (flags[j].id != SG_FLAG_SANDBOX || !(peq = strchr(prev, '='))) continue;
                size_t len = strlen(sb.id);
                again = (size_t)(peq - prev) == len && memcmp(prev, sb.id, len) == 0;
            }
            if (again) {
                sg_config__error(errs, SG_CLI, 0, "--sandbox: '%s' given more than once", sb.id);
                free(sb.mask);
                break;
            }
            sg_config__put_sandbox(c, &sb);
            break;
        }
        case SG_FLAG_TLS_CERT: {
            sg_cert_conf_t cert;
            if (!certs_replaced) sg_config__clear_certs(c), certs_replaced = 1;
            if (sg_config__parse_cert_flag(f->value, &cert, why, sizeof(why)) != 0) {
                sg_config__error(errs, SG_CLI, 0, "--tls-cert: %s", why);
                break;
            }
            /* A list built by flags has no other way to name its default. */
            sg_config__add_cert(c, cert.chain, cert.key, c->tls.n_certs == 0);
            break;
        }
        case SG_FLAG_REDIRECT_HTTP:
            c->tls.redirect_http = 1;
            break;
        case SG_FLAG_SCALAR:
            if (!k) abort(); /* a flag naming no row is a table bug */
            if (sg_config__set_scalar(c, k, f->value, NULL, why, sizeof(why)) != 0)
                sg_config__error(errs, SG_CLI, 0, "%s: %s", name, why);
            break;
        default:
            break;
        }
    }
}

int sg_config_load(int argc, char **argv, sg_config_t **out, sg_config_actions_t *actions,
                   char *err, size_t errlen)
{
    sg_config__errs_t errs = {0};
    sg_config__marks_t marks = {0};
    sg_config_actions_t dummy;
    sg_config_t *c = NULL;
    const char *path = NULL;
    if (!actions) actions = &dummy;
    memset(actions, 0, sizeof(*actions));
    *out = NULL;
    sg_flag_t *flags = calloc(argc > 0 ? (size_t)argc : 1, sizeof(*flags));
    if (!flags) abort();
    size_t n = scan_argv(argc, argv, flags, &errs);
    if (errs.n) goto fail;

    for (size_t i = 0; i < n; i++) {
        switch (flags[i].id) {
        case SG_FLAG_HELP:
            actions->show_help = 1;
            break;
        case SG_FLAG_VERSION:
            actions->show_version = 1;
            break;
        case SG_FLAG_CHECK_CONFIG:
            actions->check_only = 1;
            break;
        case SG_FLAG_CONFIG:
            if (path) sg_config__error(&errs, SG_CLI, 0, "--config given more than once");
            path = flags[i].value;
            break;
        default:
            break;
        }
    }
    /* Help and version answer without touching the configuration. */
    if (actions->show_help || actions->show_version) {
        free(flags);
        sg_config__errs_finish(&errs, err, errlen);
        return 0;
    }
    if (errs.n) goto fail;

    if (path) {
        size_t len;
        char *text = read_file(path, &len);
        if (!text) {
            sg_config__error(&errs, SG_CLI, 0, "cannot read config file '%s': %s", path,
                             strerror(errno));
            goto fail;
        }
        c = sg_config__new(path);
        int rc = sg_config__parse_yaml(c, text, len, path, &marks, &errs);
        free(text);
        if (rc != 0) goto fail;
    } else {
        c = sg_config__new("<embedded>");
        if (sg_config__parse_yaml(c, sg_config_embedded_default, strlen(sg_config_embedded_default),
                                  "<embedded>", &marks, &errs) != 0)
            goto fail;
    }
    apply_flags(c, flags, n, path != NULL, &marks, &errs);
    if (errs.n || sg_config__finish(c, SG_CLI, &marks, &errs) != 0) goto fail;
    free(flags);
    sg_config__errs_finish(&errs, err, errlen);
    *out = c;
    return 0;
fail:
    free(flags);
    sg_config__free(c);
    sg_config__errs_finish(&errs, err, errlen);
    return -1;
}
