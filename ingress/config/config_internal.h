/* Internals shared by config.c (the settings table and value types),
 * config_ops.c (snapshot lifecycle, validation, dump, reload check),
 * config_sources.c (admin, dns and lookup_order), config_tls.c (tls),
 * config_egress.c (egress), config_yaml.c (the file) and config_cli.c
 * (argv). Nothing outside ingress/config/ includes this header. */
#ifndef SG_CONFIG_CONFIG_INTERNAL_H
#define SG_CONFIG_CONFIG_INTERNAL_H

#include "config/config.h"
#include "core/strbuf.h"

#include <stdarg.h>

/* ---- error collection ----------------------------------------------------
 * Messages are gathered one per line so a user sees every mistake in a file
 * at once, then copied (truncated if needed) into the caller's buffer. */
#define SG_CONFIG__MAX_ERRORS 32

typedef struct {
    sg_strbuf_t buf; /* "msg\nmsg" without trailing newline */
    unsigned n;      /* messages recorded, including ones past the cap */
} sg_config__errs_t;

/* Records "source:line: message", or "source: message" when line is 0. */
void sg_config__error(sg_config__errs_t *e, const char *source, size_t line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* As sg_config__error, from a va_list. */
void sg_config__verror(sg_config__errs_t *e, const char *source, size_t line, const char *fmt,
                       va_list ap) __attribute__((format(printf, 4, 0)));
/* Copies the messages into err (always NUL-terminated when errlen > 0) and
 * releases the collector. */
void sg_config__errs_finish(sg_config__errs_t *e, char *err, size_t errlen);

/* ---- the settings table --------------------------------------------------
 * One row per setting. The row drives parsing (file and flags), range
 * validation, defaults, dumping and the reload decision; adding a setting
 * means adding a field to sg_config_t and a row here. Names of rows inside a
 * section are dotted ("timeouts.request_head"); the section itself
 * ("timeouts") has no row. */
typedef enum {
    SG_CONF_T_LISTENS,       /* sg_config_t.listens / n_listens */
    SG_CONF_T_ADMIN_LISTENS, /* sg_config_t.admin.listens / n_listens (no tls, proxy_protocol) */
    SG_CONF_T_DOMAINS,       /* sg_config_t.domains / n_domains */
    SG_CONF_T_SANDBOXES,     /* sg_config_t.sandboxes / n_sandboxes */
    SG_CONF_T_SERVERS,       /* sg_config_t.dns.servers / n_servers (config_sources.c) */
    SG_CONF_T_RESOLVERS,     /* sg_config_t.egress.resolvers / n_resolvers, as SERVERS */
    SG_CONF_T_CIDRS,         /* sg_config_t.egress.always_denied_exceptions (config_egress.c) */
    SG_CONF_T_IFNAMES,       /* sg_config_t.egress.sandbox_interfaces (config_egress.c) */
    SG_CONF_T_LISTEN_OPT,    /* one sg_listen_conf_t at offset, "ADDR:PORT"; text[0] == 0: off */
    SG_CONF_T_SOURCES,       /* sg_config_t.lookup_order / n_lookup_order (config_sources.c) */
    SG_CONF_T_UINT,          /* unsigned or size_t field at offset, decimal */
    SG_CONF_T_DURATION,      /* uint64_t milliseconds at offset, "1.5s" etc. */
    SG_CONF_T_SIZE,          /* size_t bytes at offset, "64KiB" etc. */
    SG_CONF_T_LOG_LEVEL,     /* int at offset, debug|info|warn|error */
    SG_CONF_T_LOG_FORMAT,    /* int at offset, text (0) | json (1) */
    SG_CONF_T_BOOL,          /* int at offset, 0 or 1; true|false|yes|no|on|off */
    SG_CONF_T_CERTS,         /* sg_config_t.tls.certs / n_certs (config_tls.c) */
    /* char * at offset, malloc'd; NULL only for rows without a default,
     * where `~` (or nothing) in the file means "none". */
    SG_CONF_T_SECRET,     /* visible ASCII, no spaces (a bearer token) */
    SG_CONF_T_PATH,       /* file path, resolved like certificate paths */
    SG_CONF_T_DNS_NAME,   /* DNS name, lower-cased (sg_config__parse_domain) */
    SG_CONF_T_HEADER,     /* HTTP header name (RFC 9110 token), stored as given */
    SG_CONF_T_ACCESS_LOG, /* "stdout", "off" or a path resolved like PATH */
    SG_CONF_T_IP,         /* IPv4 or IPv6 literal without port, stored in inet_ntop form */
    SG_CONF_T_IDENT,      /* [A-Za-z_][A-Za-z0-9_]{0,31} (an nftables table name) */
} sg_config__type_t;

/* 1 for the char * types above. */
int sg_config__is_string(sg_config__type_t t);

/* Upper bound of a listener's `max_connections`. */
#define SG_CONFIG__MAX_CONNECTIONS 10000000u

/* The setting cannot change on reload; a new snapshot that differs here
 * needs a restart (sockets and threads are created once). */
#define SG_CONF_RESTART 1u

typedef struct {
    const char *name;
    sg_config__type_t type;
    size_t offset; /* field in sg_config_t (scalar types) */
    size_t size;   /* sizeof that field */
    const char
        *def; /* default in file syntax; for lists the items separated by ',', NULL if none */
    uint64_t min, max; /* inclusive range for UINT / DURATION (ms) / SIZE (bytes) */
    unsigned flags;
    const char *help;
} sg_config__key_t;

extern const sg_config__key_t sg_config__keys[];
extern const size_t sg_config__n_keys;
/* Upper bound of sg_config__n_keys (checked at compile time in config.c). */
#define SG_CONFIG__MAX_KEYS 64

/* Where the file layer put each row, so checks that run after all layers are
 * merged can still point at a line. A flag that sets a row clears its line. */
typedef struct {
    const char *file;                 /* the YAML source the lines belong to */
    size_t line[SG_CONFIG__MAX_KEYS]; /* by row index; 0: not set by the file */
} sg_config__marks_t;

/* Records "file:line: message" when marks holds a line for the row named
 * `key`, else "source: message". marks may be NULL. */
void sg_config__error_key(sg_config__errs_t *e, const char *source, const sg_config__marks_t *marks,
                          const char *key, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* Row by full dotted name, or NULL. */
const sg_config__key_t *sg_config__find_key(const char *name, size_t len);
/* 1 when some row is named "<name>.<child>". */
int sg_config__is_section(const char *name, size_t len);

/* ---- values --------------------------------------------------------------
 * Parsers below take NUL-terminated text and, on failure, return -1 with a
 * one-line reason in why (never including the key name; callers prefix it). */

/* Sets a scalar- or string-typed row's field from text. Relative paths are
 * resolved against the directory of `base` (see sg_config__resolve_path;
 * NULL: the working directory). */
int sg_config__set_scalar(sg_config_t *c, const sg_config__key_t *k, const char *text,
                          const char *base, char *why, size_t whylen);
/* Frees a string row's value and leaves NULL ("none"). */
void sg_config__unset_string(sg_config_t *c, const sg_config__key_t *k);
/* Decimal integer in min..max. */
int sg_config__parse_uint(const char *text, uint64_t min, uint64_t max, uint64_t *v, char *why,
                          size_t whylen);
int sg_config__parse_duration(const char *text, uint64_t *ms, char *why, size_t whylen);
int sg_config__parse_size(const char *text, uint64_t *bytes, char *why, size_t whylen);
/* Shortest exact text for a value, as the dump writes it ("90m", "64KiB"). */
void sg_config__format_duration(uint64_t ms, char *buf, size_t len);
void sg_config__format_size(uint64_t bytes, char *buf, size_t len);
/* true/yes/on -> 1, false/no/off -> 0 (any case); -1 for anything else. */
int sg_config__parse_bool(const char *text, int *out);
/* "ADDR:PORT" with ADDR an IPv4 literal or a bracketed IPv6 literal;
 * proxy_protocol and max_connections are left 0. */
int sg_config__parse_listen(const char *text, int tls, sg_listen_conf_t *out, char *why,
                            size_t whylen);
/* A DNS name; *out is a malloc'd lower-case copy without leading/trailing dot. */
int sg_config__parse_domain(const char *text, char **out, char *why, size_t whylen);
/* [a-z0-9]{1,64}. */
int sg_config__check_sandbox_id(const char *text, char *why, size_t whylen);
/* IPv4 or IPv6 literal (brackets optional), no port; port left 0. */
int sg_config__parse_ip(const char *text, struct sockaddr_storage *out, char *why, size_t whylen);
/* A Host template for a sandbox (see route/mask.h). */
int sg_config__check_mask(const char *text, char *why, size_t whylen);

/* ---- snapshot building ---------------------------------------------------- */

/* A fresh snapshot holding the table defaults, one reference. */
sg_config_t *sg_config__new(const char *source);
/* Frees everything, ignoring the reference count. NULL is fine. */
void sg_config__free(sg_config_t *c);

/* A listener list: c->listens or c->admin.listens. */
typedef struct {
    sg_listen_conf_t **v;
    size_t *n;
} sg_config__listens_t;

/* The list a LISTENS or ADMIN_LISTENS row stands for. */
sg_config__listens_t sg_config__listens_of(sg_config_t *c, const sg_config__key_t *k);
void sg_config__clear_listens(sg_config__listens_t l);
void sg_config__add_listen(sg_config__listens_t l, const sg_listen_conf_t *item);
/* Index of the listener with the same address and port, or -1. */
long sg_config__find_listen(sg_config__listens_t l, const struct sockaddr_storage *addr);
void sg_config__clear_domains(sg_config_t *c);
void sg_config__clear_sandboxes(sg_config_t *c);
/* Takes ownership of d. */
void sg_config__add_domain(sg_config_t *c, char *d);
int sg_config__sockaddr_eq(const struct sockaddr_storage *a, const struct sockaddr_storage *b);
long sg_config__find_domain(const sg_config_t *c, const char *d);
long sg_config__find_sandbox(const sg_config_t *c, const char *id);
/* Adds sb or replaces the entry with the same id; takes ownership of sb->mask. */
void sg_config__put_sandbox(sg_config_t *c, const sg_sandbox_conf_t *sb);

/* ---- TLS (config_tls.c) ---------------------------------------------------- */

/* A certificate path as the snapshot keeps it: absolute paths unchanged;
 * relative ones joined to the directory of `source` (a config file path),
 * made absolute with the working directory. A `source` without '/', a
 * pseudo-name like "<embedded>", or NULL (command line) means the working
 * directory. If the working directory is unknown the result stays relative
 * (to it). Returns a malloc'd string; never touches the file. */
char *sg_config__resolve_path(const char *source, const char *path);
void sg_config__clear_certs(sg_config_t *c);
/* Appends a certificate; takes ownership of chain and key. */
void sg_config__add_cert(sg_config_t *c, char *chain, char *key, int is_default);
/* --tls-cert "CHAIN,KEY": both non-empty, exactly one ','; paths resolved
 * against the working directory. On success *out owns two malloc'd paths
 * (is_default 0). */
int sg_config__parse_cert_flag(const char *spec, sg_cert_conf_t *out, char *why, size_t whylen);
/* Part of sg_config__finish: a TLS listener needs a certificate; when none is
 * marked default the first one becomes the default. Errors go to errs. */
void sg_config__finish_tls(sg_config_t *c, const char *source, sg_config__errs_t *errs);
/* Dump of the certificate list after "<indent>certificates:". */
void sg_config__dump_certs(sg_strbuf_t *b, const sg_config_t *c, const char *indent);
/* Double-quoted YAML scalar (config_ops.c). */
void sg_config__append_quoted(sg_strbuf_t *b, const char *s);
int sg_config__certs_eq(const sg_config_t *a, const sg_config_t *b);

/* ---- admin, dns, lookup_order (config_sources.c) --------------------------- */

/* A DNS server: "IP", "IP:PORT" or "[IPv6]:PORT"; the port defaults to 53. */
int sg_config__parse_server(const char *text, struct sockaddr_storage *out, char *why,
                            size_t whylen);
/* "IP:PORT" / "[IPv6]:PORT" for messages and the dump. */
void sg_config__format_server(const struct sockaddr_storage *ss, char *buf, size_t len);

/* A server list: c->dns.servers or c->egress.resolvers. */
typedef struct {
    struct sockaddr_storage **v;
    size_t *n;
} sg_config__servers_t;

/* The list a SERVERS or RESOLVERS row stands for. */
sg_config__servers_t sg_config__servers_of(sg_config_t *c, const sg_config__key_t *k);
void sg_config__clear_servers(sg_config__servers_t l);
void sg_config__add_server(sg_config__servers_t l, const struct sockaddr_storage *ss);
long sg_config__find_server(sg_config__servers_t l, const struct sockaddr_storage *ss);
int sg_config__servers_eq(const struct sockaddr_storage *x, size_t nx,
                          const struct sockaddr_storage *y, size_t ny);
/* "static" / "admin" / "dns". */
int sg_config__parse_source(const char *text, sg_source_kind_t *out, char *why, size_t whylen);
const char *sg_config__source_name(sg_source_kind_t s);
/* Part of sg_config__finish: admin listeners (unique, not also proxy
 * listeners, a token unless loopback), dns (servers for a zone, ttl_max >=
 * ttl_min), then lookup_order keeps only configured sources. */
void sg_config__finish_sources(sg_config_t *c, const char *source, const sg_config__marks_t *marks,
                               sg_config__errs_t *errs);
/* Dumps of the SERVERS / RESOLVERS and SOURCES rows after "<indent>name:". */
void sg_config__dump_servers(sg_strbuf_t *b, const struct sockaddr_storage *v, size_t n,
                             const char *indent);
void sg_config__dump_sources(sg_strbuf_t *b, const sg_config_t *c);

/* ---- egress (config_egress.c) ---------------------------------------------- */

/* The text lists (CIDRS and IFNAMES rows): malloc'd strings in the form the
 * item parser produced, each list free of duplicates. */
typedef struct {
    char ***v;
    size_t *n;
} sg_config__texts_t;

/* The list a CIDRS or IFNAMES row stands for (abort() for other types). */
sg_config__texts_t sg_config__texts_of(sg_config_t *c, sg_config__type_t type);
void sg_config__clear_texts(sg_config__texts_t l);
/* Takes ownership of text. */
void sg_config__add_text(sg_config__texts_t l, char *text);
long sg_config__find_text(sg_config__texts_t l, const char *text);
/* 1 when both snapshots hold the same list, in the same order, for the row. */
int sg_config__texts_eq(const sg_config_t *a, const sg_config_t *b, const sg_config__key_t *k);
/* Dump of the row's list after "<indent>name:". */
void sg_config__dump_texts(sg_strbuf_t *b, const sg_config_t *c, const sg_config__key_t *k,
                           const char *indent);
/* One item of a CIDRS or IFNAMES row; *out is the malloc'd text the
 * snapshot keeps. CIDRS: an address or CIDR as sg_cidr_parse
 * (egress/policy.h) accepts it, in the policy's normal form (a bare address
 * stays bare). IFNAMES: an interface pattern as nft's iifname takes it, 1..15
 * characters of [A-Za-z0-9_.-] of which the last may be a '*' wildcard (not
 * '*' alone), kept as written. */
int sg_config__parse_text_item(sg_config__type_t type, const char *text, char **out, char *why,
                               size_t whylen);
/* nftables table name: [A-Za-z_][A-Za-z0-9_]{0,31}. */
int sg_config__check_ident(const char *text, char *why, size_t whylen);
/* Part of sg_config__finish, after the proxy and admin listeners are final:
 * resolves egress.enabled and the default resolver (nameserver:53), then
 * checks the egress ports (distinct, not a proxy or admin listener) and that
 * the admin API exists to register policies. */
void sg_config__finish_egress(sg_config_t *c, const char *source, const sg_config__marks_t *marks,
                              sg_config__errs_t *errs);

/* Parses YAML into c (which holds defaults or an earlier layer). Keys present
 * in the text replace c's values; their lines go to marks (may be NULL).
 * Returns 0, or -1 after recording errors. */
int sg_config__parse_yaml(sg_config_t *c, const char *text, size_t len, const char *source,
                          sg_config__marks_t *marks, sg_config__errs_t *errs);

/* Whole-snapshot checks after all layers are merged (at least one listener
 * unless egress is enabled, at least one domain, no duplicates, TLS, admin,
 * dns, lookup_order, egress), then resolves
 * workers 0 to the CPU count. Errors are reported against `source` without a
 * line, or against the file line in marks (may be NULL) for rows it set. */
int sg_config__finish(sg_config_t *c, const char *source, const sg_config__marks_t *marks,
                      sg_config__errs_t *errs);

#endif
