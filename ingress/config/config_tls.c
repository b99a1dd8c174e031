/* The `tls` settings that do not fit the scalar table rows: the certificate
 * list (paths, the --tls-cert flag, the default certificate, dump and
 * comparison) and the whole-snapshot TLS check. The YAML walk of
 * `tls.certificates` lives in config_yaml.c next to the other list walkers.
 * Nothing here opens a certificate: the TLS module does, and reports its own
 * errors against the paths kept here. */
#include "config/config_internal.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char *xstrndup(const char *s, size_t n)
{
    char *d = strndup(s, n);
    if (!d) abort();
    return d;
}

/* Appends part (n bytes) to a path being built, with one '/' between. */
static void join(sg_strbuf_t *b, const char *part, size_t n)
{
    /* "./a.pem" and a directory "." add nothing but noise to messages. */
    while (n >= 2 && part[0] == '.' && part[1] == '/') {
        part += 2, n -= 2;
        while (n && part[0] == '/') part++, n--;
    }
    if (n == 1 && part[0] == '.') return;
    if (n == 0) return;
    if (b->len && b->base[b->len - 1] != '/') sg_strbuf_append(b, "/", 1);
    sg_strbuf_append(b, part, n);
}

/* "<embedded>", "<stdin>": names for text that has no directory. */
static int is_pseudo_source(const char *s)
{
    size_t n = strlen(s);
    return n >= 2 && s[0] == '<' && s[n - 1] == '>';
}

char *sg_config__resolve_path(const char *source, const char *path)
{
    if (path[0] == '/') return xstrndup(path, strlen(path));
    const char *slash = source && !is_pseudo_source(source) ? strrchr(source, '/') : NULL;
    sg_strbuf_t b = {0};
    if (slash && source[0] == '/') {
        sg_strbuf_append(&b, source, (size_t)(slash - source) + 1); /* keeps "/" for "/x.yaml" */
    } else {
        /* Absolute from the start, so a dump read back from elsewhere, or a
         * later chdir, still names the same file. */
        char cwd[PATH_MAX];
        if (getcwd(cwd, sizeof(cwd))) sg_strbuf_append_cstr(&b, cwd);
        if (slash) join(&b, source, (size_t)(slash - source));
    }
    join(&b, path, strlen(path));
    if (b.len == 0) sg_strbuf_append(&b, path, strlen(path)); /* "." with no cwd */
    sg_strbuf_append(&b, "", 1);
    return b.base;
}

void sg_config__clear_certs(sg_config_t *c)
{
    for (size_t i = 0; i < c->tls.n_certs; i++) {
        free(c->tls.certs[i].chain);
        free(c->tls.certs[i].key);
    }
    free(c->tls.certs);
    c->tls.certs = NULL;
    c->tls.n_certs = 0;
}

void sg_config__add_cert(sg_config_t *c, char *chain, char *key, int is_default)
{
    sg_cert_conf_t *certs = realloc(c->tls.certs, (c->tls.n_certs + 1) * sizeof(*certs));
    if (!certs) abort();
    c->tls.certs = certs;
    certs[c->tls.n_certs++] = (sg_cert_conf_t){chain, key, is_default ? 1 : 0};
}

int sg_config__parse_cert_flag(const char *spec, sg_cert_conf_t *out, char *why, size_t whylen)
{
    const char *comma = strchr(spec, ',');
    memset(out, 0, sizeof(*out));
    if (!comma) {
        snprintf(why, whylen, "expected CHAIN,KEY (two PEM file paths), got '%s'", spec);
        return -1;
    }
    /* Either path could hold the second ',': refuse rather than guess. */
    if (strchr(comma + 1, ',')) {
        snprintf(why, whylen,
                 "expected exactly one ',' between CHAIN and KEY, got '%s' (paths with ',' "
                 "go in the file's tls.certificates)",
                 spec);
        return -1;
    }
    if (comma == spec || comma[1] == '\0') {
        snprintf(why, whylen, "%s path is empty in '%s' (expected CHAIN,KEY)",
                 comma == spec ? "CHAIN" : "KEY", spec);
        return -1;
    }
    char *chain = xstrndup(spec, (size_t)(comma - spec));
    out->chain = sg_config__resolve_path(NULL, chain);
    out->key = sg_config__resolve_path(NULL, comma + 1);
    free(chain);
    return 0;
}

void sg_config__finish_tls(sg_config_t *c, const char *source, sg_config__errs_t *errs)
{
    if (c->tls.n_certs == 0) {
        for (size_t i = 0; i < c->n_listens; i++) {
            if (!c->listens[i].tls) continue;
            sg_config__error(errs, source, 0, "TLS listener %s needs tls.certificates",
                             c->listens[i].text);
            return;
        }
        return;
    }
    for (size_t i = 0; i < c->tls.n_certs; i++)
        if (c->tls.certs[i].is_default) return;
    c->tls.certs[0].is_default = 1;
}

void sg_config__dump_certs(sg_strbuf_t *b, const sg_config_t *c, const char *indent)
{
    if (c->tls.n_certs == 0) {
        sg_strbuf_append_cstr(b, " []\n");
        return;
    }
    sg_strbuf_append_cstr(b, "\n");
    for (size_t i = 0; i < c->tls.n_certs; i++) {
        const sg_cert_conf_t *x = &c->tls.certs[i];
        sg_strbuf_appendf(b, "%s  - {cert: ", indent);
        sg_config__append_quoted(b, x->chain);
        sg_strbuf_append_cstr(b, ", key: ");
        sg_config__append_quoted(b, x->key);
        sg_strbuf_appendf(b, ", default: %s}\n", x->is_default ? "true" : "false");
    }
}

int sg_config__certs_eq(const sg_config_t *a, const sg_config_t *b)
{
    if (a->tls.n_certs != b->tls.n_certs) return 0;
    for (size_t i = 0; i < a->tls.n_certs; i++) {
        const sg_cert_conf_t *x = &a->tls.certs[i], *y = &b->tls.certs[i];
        if (strcmp(x->chain, y->chain) != 0 || strcmp(x->key, y->key) != 0 ||
            x->is_default != y->is_default)
            return 0;
    }
    return 1;
}
