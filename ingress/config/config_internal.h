/* Internals shared by config.c (the settings table, value types, snapshot
 * lifecycle, validation, dump), config_yaml.c (the file) and config_cli.c
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
    SG_CONF_T_LISTENS,   /* sg_config_t.listens / n_listens */
    SG_CONF_T_DOMAINS,   /* sg_config_t.domains / n_domains */
    SG_CONF_T_SANDBOXES, /* sg_config_t.sandboxes / n_sandboxes */
    SG_CONF_T_UINT,      /* unsigned or size_t field at offset, decimal */
    SG_CONF_T_DURATION,  /* uint64_t milliseconds at offset, "1.5s" etc. */
    SG_CONF_T_SIZE,      /* size_t bytes at offset, "64KiB" etc. */
    SG_CONF_T_LOG_LEVEL, /* int at offset, debug|info|warn|error */
    SG_CONF_T_BOOL,      /* int at offset, 0 or 1; true|false|yes|no|on|off */
    SG_CONF_T_CERTS,     /* sg_config_t.tls.certs / n_certs (config_tls.c) */
} sg_config__type_t;

/* The setting cannot change on reload; a new snapshot that differs here
 * needs a restart (sockets and threads are created once). */
#define SG_CONF_RESTART 1u

typedef struct {
    const char *name;
    sg_config__type_t type;
    size_t offset;     /* field in sg_config_t (scalar types) */
    size_t size;       /* sizeof that field */
    const char *def;   /* default in file syntax; for lists the single default item, NULL if none */
    uint64_t min, max; /* inclusive range for UINT / DURATION (ms) / SIZE (bytes) */
    unsigned flags;
    const char *help;
} sg_config__key_t;

extern const sg_config__key_t sg_config__keys[];
extern const size_t sg_config__n_keys;

/* Row by full dotted name, or NULL. */
const sg_config__key_t *sg_config__find_key(const char *name, size_t len);
/* 1 when some row is named "<name>.<child>". */
int sg_config__is_section(const char *name, size_t len);

/* ---- values --------------------------------------------------------------
 * Parsers below take NUL-terminated text and, on failure, return -1 with a
 * one-line reason in why (never including the key name; callers prefix it). */

/* Sets a scalar-typed row's field from text. */
int sg_config__set_scalar(sg_config_t *c, const sg_config__key_t *k, const char *text, char *why,
                          size_t whylen);
int sg_config__parse_duration(const char *text, uint64_t *ms, char *why, size_t whylen);
int sg_config__parse_size(const char *text, uint64_t *bytes, char *why, size_t whylen);
/* true/yes/on -> 1, false/no/off -> 0 (any case); -1 for anything else. */
int sg_config__parse_bool(const char *text, int *out);
/* "ADDR:PORT" with ADDR an IPv4 literal or a bracketed IPv6 literal. */
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

void sg_config__clear_listens(sg_config_t *c);
void sg_config__clear_domains(sg_config_t *c);
void sg_config__clear_sandboxes(sg_config_t *c);
void sg_config__add_listen(sg_config_t *c, const sg_listen_conf_t *l);
/* Takes ownership of d. */
void sg_config__add_domain(sg_config_t *c, char *d);
/* Index of the listener with the same address and port, or -1. */
long sg_config__find_listen(const sg_config_t *c, const struct sockaddr_storage *addr);
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
/* Double-quoted YAML scalar (config.c). */
void sg_config__append_quoted(sg_strbuf_t *b, const char *s);
int sg_config__certs_eq(const sg_config_t *a, const sg_config_t *b);

/* Parses YAML into c (which holds defaults or an earlier layer). Keys present
 * in the text replace c's values. Returns 0, or -1 after recording errors. */
int sg_config__parse_yaml(sg_config_t *c, const char *text, size_t len, const char *source,
                          sg_config__errs_t *errs);

/* Whole-snapshot checks after all layers are merged (at least one listener
 * and domain, no duplicates), then resolves workers 0 to the CPU count.
 * Errors are reported against `source` without a line. */
int sg_config__finish(sg_config_t *c, const char *source, sg_config__errs_t *errs);

#endif
