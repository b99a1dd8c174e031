/* The settings table, value types, snapshot lifecycle, final validation, dump
 * and reload comparison. The file layer lives in config_yaml.c, the flag
 * layer in config_cli.c; both go through the table and the value parsers
 * here so a setting means the same thing wherever it is written. */
#include "config/config_internal.h"
#include "core/log.h"
#include "route/mask.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define SG_MS_PER_S 1000ull
#define SG_MS_PER_M (60ull * SG_MS_PER_S)
#define SG_MS_PER_H (60ull * SG_MS_PER_M)
#define SG_MS_PER_D (24ull * SG_MS_PER_H)
#define SG_MAX_WORKERS 256
/* Longest duration accepted for any timeout: a day. Longer values are almost
 * certainly unit mistakes ("300" meant as ms), and this keeps ms math far
 * from overflow. */
#define SG_MAX_TIMEOUT_MS (24ull * SG_MS_PER_H)

#define SG_FIELD(f) offsetof(sg_config_t, f), sizeof(((sg_config_t *)0)->f)

/* Order is the dump order; rows of one section must be adjacent. */
const sg_config__key_t sg_config__keys[] = {
    {"listen", SG_CONF_T_LISTENS, 0, 0, "127.0.0.1:8080", 0, 0, SG_CONF_RESTART,
     "addresses to accept connections on"},
    {"domains", SG_CONF_T_DOMAINS, 0, 0, "sandbox.localhost", 0, 0, 0,
     "domains whose <port>-<id>.<domain> names are served"},
    {"workers", SG_CONF_T_UINT, SG_FIELD(workers), "0", 0, SG_MAX_WORKERS, SG_CONF_RESTART,
     "worker threads, 0 = one per CPU"},
    {"log_level", SG_CONF_T_LOG_LEVEL, SG_FIELD(log_level), "info", 0, 0, 0,
     "minimum level written to the error log"},
    {"sandboxes", SG_CONF_T_SANDBOXES, 0, 0, NULL, 0, 0, 0, "static sandboxes: id -> address"},
    {"timeouts.request_head", SG_CONF_T_DURATION, SG_FIELD(timeouts.request_head_ms), "30s", 1,
     SG_MAX_TIMEOUT_MS, 0, "whole request head must arrive within (408)"},
    {"timeouts.keepalive_idle", SG_CONF_T_DURATION, SG_FIELD(timeouts.keepalive_idle_ms), "75s", 1,
     SG_MAX_TIMEOUT_MS, 0, "idle client connection between requests"},
    {"timeouts.upstream_connect", SG_CONF_T_DURATION, SG_FIELD(timeouts.upstream_connect_ms), "5s",
     1, SG_MAX_TIMEOUT_MS, 0, "one upstream connect attempt (504)"},
    {"timeouts.upstream_retry_window", SG_CONF_T_DURATION,
     SG_FIELD(timeouts.upstream_retry_window_ms), "1.5s", 0, SG_MAX_TIMEOUT_MS, 0,
     "keep retrying refused connects this long (502), 0 = no retry"},
    {"timeouts.upstream_response_head", SG_CONF_T_DURATION,
     SG_FIELD(timeouts.upstream_response_head_ms), "300s", 1, SG_MAX_TIMEOUT_MS, 0,
     "from request sent to response head (504)"},
    {"timeouts.stream_idle", SG_CONF_T_DURATION, SG_FIELD(timeouts.stream_idle_ms), "10m", 1,
     SG_MAX_TIMEOUT_MS, 0, "no byte either way on a body stream or tunnel"},
    {"timeouts.upstream_idle", SG_CONF_T_DURATION, SG_FIELD(timeouts.upstream_idle_ms), "60s", 1,
     SG_MAX_TIMEOUT_MS, 0, "pooled idle upstream connection lifetime"},
    {"limits.max_header_size", SG_CONF_T_SIZE, SG_FIELD(max_header_bytes), "64KiB", 1024,
     1024 * 1024, 0, "request head size limit (431)"},
    {"limits.upstream_pool_idle_per_key", SG_CONF_T_UINT, SG_FIELD(upstream_pool_idle_per_key),
     "16", 0, 4096, 0, "idle upstream connections kept per sandbox:port, 0 = no pooling"},
    {"tls.certificates", SG_CONF_T_CERTS, 0, 0, NULL, 0, 0, 0,
     "certificates for TLS listeners: {cert, key, default}"},
    {"tls.handshake_timeout", SG_CONF_T_DURATION, SG_FIELD(tls.handshake_timeout_ms), "10s", 1,
     SG_MAX_TIMEOUT_MS, 0, "TLS handshake must finish within"},
    {"tls.ticket_key_rotation", SG_CONF_T_DURATION, SG_FIELD(tls.ticket_key_rotation_ms), "1h",
     SG_MS_PER_S, 7 * SG_MS_PER_D, 0, "session ticket keys are replaced this often"},
    {"tls.expiry_warning", SG_CONF_T_DURATION, SG_FIELD(tls.expiry_warning_ms), "720h", 0,
     3650 * SG_MS_PER_D, 0, "warn when a certificate expires within"},
    {"tls.redirect_http", SG_CONF_T_BOOL, SG_FIELD(tls.redirect_http), "false", 0, 1, 0,
     "plain listeners answer 308 to https:// instead of proxying"},
};
const size_t sg_config__n_keys = sizeof(sg_config__keys) / sizeof(sg_config__keys[0]);

const char sg_config_embedded_default[] =
    "# sandgate built-in configuration, used when no --config is given.\n"
    "# Flags (--listen, --domain, --sandbox, ...) apply on top of it.\n"
    "\n"
    "# Loopback only: nothing is reachable from other hosts until you say so.\n"
    "listen:\n"
    "  - \"127.0.0.1:8080\"\n"
    "\n"
    "# http://<port>-<sandbox>.sandbox.localhost:8080/ reaches <port> of <sandbox>.\n"
    "domains:\n"
    "  - sandbox.localhost\n"
    "\n"
    "sandboxes:\n"
    "  # A sandbox on this very host, for trying sandgate out: e.g.\n"
    "  # http://8000-demo.sandbox.localhost:8080/ -> 127.0.0.1:8000, Host kept.\n"
    "  demo: \"127.0.0.1\"\n";

/* ---- errors -------------------------------------------------------------- */

void sg_config__error(sg_config__errs_t *e, const char *source, size_t line, const char *fmt, ...)
{
    e->n++;
    if (e->n > SG_CONFIG__MAX_ERRORS) return;
    if (e->buf.len) sg_strbuf_append_cstr(&e->buf, "\n");
    if (e->n == SG_CONFIG__MAX_ERRORS) {
        sg_strbuf_appendf(&e->buf, "%s: too many errors, stopping here", source);
        return;
    }
    if (line)
        sg_strbuf_appendf(&e->buf, "%s:%zu: ", source, line);
    else
        sg_strbuf_appendf(&e->buf, "%s: ", source);
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    sg_strbuf_append_cstr(&e->buf, msg);
}

void sg_config__errs_finish(sg_config__errs_t *e, char *err, size_t errlen)
{
    if (err && errlen) {
        size_t n = e->buf.len < errlen - 1 ? e->buf.len : errlen - 1;
        if (n) memcpy(err, e->buf.base, n);
        err[n] = '\0';
    }
    sg_strbuf_free(&e->buf);
    e->n = 0;
}

/* ---- table lookups -------------------------------------------------------- */

const sg_config__key_t *sg_config__find_key(const char *name, size_t len)
{
    for (size_t i = 0; i < sg_config__n_keys; i++) {
        const char *k = sg_config__keys[i].name;
        if (strlen(k) == len && memcmp(k, name, len) == 0) return &sg_config__keys[i];
    }
    return NULL;
}

int sg_config__is_section(const char *name, size_t len)
{
    for (size_t i = 0; i < sg_config__n_keys; i++) {
        const char *k = sg_config__keys[i].name;
        if (strlen(k) > len && memcmp(k, name, len) == 0 && k[len] == '.') return 1;
    }
    return 0;
}

/* ---- value parsers -------------------------------------------------------- */

static int fail(char *why, size_t whylen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(char *why, size_t whylen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, whylen, fmt, ap);
    va_end(ap);
    return -1;
}

static int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* Leading decimal digits of s into *v; returns the count (0: none), or -1 on
 * overflow. */
static int scan_u64(const char *s, uint64_t *v)
{
    int n = 0;
    *v = 0;
    while (is_digit(s[n])) {
        if (__builtin_mul_overflow(*v, 10, v) ||
            __builtin_add_overflow(*v, (uint64_t)(s[n] - '0'), v))
            return -1;
        n++;
    }
    return n;
}

static void format_duration(uint64_t ms, char *buf, size_t len)
{
    if (ms && ms % SG_MS_PER_H == 0)
        snprintf(buf, len, "%lluh", (unsigned long long)(ms / SG_MS_PER_H));
    else if (ms && ms % SG_MS_PER_M == 0)
        snprintf(buf, len, "%llum", (unsigned long long)(ms / SG_MS_PER_M));
    else if (ms % SG_MS_PER_S == 0)
        snprintf(buf, len, "%llus", (unsigned long long)(ms / SG_MS_PER_S));
    else
        snprintf(buf, len, "%llums", (unsigned long long)ms);
}

static void format_size(uint64_t bytes, char *buf, size_t len)
{
    static const char *const units[] = {"GiB", "MiB", "KiB"};
    for (int i = 0; i < 3; i++) {
        uint64_t u = 1ull << (10 * (3 - i));
        if (bytes && bytes % u == 0) {
            snprintf(buf, len, "%llu%s", (unsigned long long)(bytes / u), units[i]);
            return;
        }
    }
    snprintf(buf, len, "%llu", (unsigned long long)bytes);
}

#define SG_DURATION_HINT "use e.g. 500ms, 1.5s, 10s, 10m, 1h or a number of seconds"

int sg_config__parse_duration(const char *text, uint64_t *ms, char *why, size_t whylen)
{
    uint64_t whole, frac = 0, scale = 1;
    int n = scan_u64(text, &whole);
    if (n < 0) return fail(why, whylen, "duration '%s' is too large", text);
    if (n == 0) return fail(why, whylen, "bad duration '%s' (" SG_DURATION_HINT ")", text);
    const char *p = text + n;
    if (*p == '.') {
        p++;
        int fd = 0;
        while (is_digit(*p)) {
            /* More than 6 decimals cannot be whole milliseconds of any unit. */
            if (++fd > 6) return fail(why, whylen, "duration '%s' has too many decimals", text);
            frac = frac * 10 + (uint64_t)(*p - '0');
            scale *= 10;
            p++;
        }
        if (fd == 0) return fail(why, whylen, "bad duration '%s' (" SG_DURATION_HINT ")", text);
    }
    uint64_t unit;
    if (strcmp(p, "ms") == 0)
        unit = 1;
    else if (strcmp(p, "s") == 0 || *p == '\0')
        unit = SG_MS_PER_S;
    else if (strcmp(p, "m") == 0)
        unit = SG_MS_PER_M;
    else if (strcmp(p, "h") == 0)
        unit = SG_MS_PER_H;
    else
        return fail(why, whylen, "bad duration '%s' (" SG_DURATION_HINT ")", text);
    uint64_t v;
    if (__builtin_mul_overflow(whole, unit, &v))
        return fail(why, whylen, "duration '%s' is too large", text);
    /* frac < scale <= 10^6 and unit <= 3.6e6: the product fits easily. */
    if ((frac * unit) % scale != 0)
        return fail(why, whylen, "duration '%s' is not a whole number of milliseconds", text);
    if (__builtin_add_overflow(v, frac * unit / scale, &v))
        return fail(why, whylen, "duration '%s' is too large", text);
    *ms = v;
    return 0;
}

int sg_config__parse_size(const char *text, uint64_t *bytes, char *why, size_t whylen)
{
    static const struct {
        const char *suffix;
        unsigned shift;
    } units[] = {{"", 0},   {"B", 0},    {"K", 10}, {"k", 10}, {"KiB", 10}, {"M", 20},
                 {"m", 20}, {"MiB", 20}, {"G", 30}, {"g", 30}, {"GiB", 30}};
    uint64_t v;
    int n = scan_u64(text, &v);
    if (n < 0) return fail(why, whylen, "size '%s' is too large", text);
    if (n == 0) return fail(why, whylen, "bad size '%s' (use e.g. 16384, 64KiB, 1MiB)", text);
    const char *p = text + n;
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (strcmp(p, units[i].suffix) != 0) continue;
        if (units[i].shift && v > (UINT64_MAX >> units[i].shift))
            return fail(why, whylen, "size '%s' is too large", text);
        *bytes = v << units[i].shift;
        return 0;
    }
    if (strcasecmp(p, "kb") == 0 || strcasecmp(p, "mb") == 0 || strcasecmp(p, "gb") == 0)
        return fail(why, whylen, "size '%s': write binary units KiB, MiB or GiB", text);
    return fail(why, whylen, "bad size '%s' (use e.g. 16384, 64KiB, 1MiB)", text);
}

int sg_config__parse_bool(const char *text, int *out)
{
    static const char *const yes[] = {"true", "yes", "on"}, *const no[] = {"false", "no", "off"};
    for (int i = 0; i < 3; i++) {
        if (strcasecmp(text, yes[i]) == 0) return *out = 1, 0;
        if (strcasecmp(text, no[i]) == 0) return *out = 0, 0;
    }
    return -1;
}

static int parse_uint(const char *text, uint64_t *v, char *why, size_t whylen)
{
    int n = scan_u64(text, v);
    if (n <= 0 || text[n] != '\0')
        return fail(why, whylen, "expected a non-negative integer, got '%s'", text);
    return 0;
}

int sg_config__set_scalar(sg_config_t *c, const sg_config__key_t *k, const char *text, char *why,
                          size_t whylen)
{
    char *field = (char *)c + k->offset;
    uint64_t v = 0;
    char lo[32], hi[32];
    switch (k->type) {
    case SG_CONF_T_LOG_LEVEL: {
        sg_log_level_t level;
        if (sg_log_parse_level(text, &level) != 0)
            return fail(why, whylen, "expected debug, info, warn or error, got '%s'", text);
        *(int *)field = (int)level;
        return 0;
    }
    case SG_CONF_T_BOOL:
        if (sg_config__parse_bool(text, (int *)field) != 0)
            return fail(why, whylen, "expected true or false, got '%s'", text);
        return 0;
    case SG_CONF_T_UINT:
        if (parse_uint(text, &v, why, whylen)) return -1;
        snprintf(lo, sizeof(lo), "%llu", (unsigned long long)k->min);
        snprintf(hi, sizeof(hi), "%llu", (unsigned long long)k->max);
        break;
    case SG_CONF_T_DURATION:
        if (sg_config__parse_duration(text, &v, why, whylen)) return -1;
        format_duration(k->min, lo, sizeof(lo));
        format_duration(k->max, hi, sizeof(hi));
        break;
    case SG_CONF_T_SIZE:
        if (sg_config__parse_size(text, &v, why, whylen)) return -1;
        format_size(k->min, lo, sizeof(lo));
        format_size(k->max, hi, sizeof(hi));
        break;
    default:
        return fail(why, whylen, "not a single-value setting");
    }
    if (v < k->min || v > k->max)
        return fail(why, whylen, "'%s' is out of range %s..%s", text, lo, hi);
    if (k->size == sizeof(uint64_t))
        *(uint64_t *)field = v;
    else if (k->size == sizeof(unsigned))
        *(unsigned *)field = (unsigned)v;
    else
        abort(); /* a table row with a field width nobody handles */
    return 0;
}

int sg_config__parse_listen(const char *text, int tls, sg_listen_conf_t *out, char *why,
                            size_t whylen)
{
    char host[64];
    const char *port;
    int family;
    size_t len = strlen(text);
    if (len >= sizeof(out->text)) return fail(why, whylen, "address '%s' is too long", text);
    if (text[0] == '[') {
        const char *end = strchr(text, ']');
        if (!end) return fail(why, whylen, "'%s' lacks the ']' closing the IPv6 address", text);
        if (end[1] != ':')
            return fail(why, whylen, "expected [IPv6]:PORT, e.g. [::1]:8080, got '%s'", text);
        memcpy(host, text + 1, (size_t)(end - text - 1));
        host[end - text - 1] = '\0';
        port = end + 2;
        family = AF_INET6;
    } else {
        const char *colon = strrchr(text, ':');
        if (!colon)
            return fail(why, whylen, "expected ADDR:PORT, e.g. 127.0.0.1:8080, got '%s'", text);
        if (memchr(text, ':', (size_t)(colon - text)))
            return fail(why, whylen, "IPv6 addresses need brackets, e.g. [::1]:8080, got '%s'",
                        text);
        memcpy(host, text, (size_t)(colon - text));
        host[colon - text] = '\0';
        port = colon + 1;
        family = AF_INET;
    }
    uint64_t p;
    int n = scan_u64(port, &p);
    if (n <= 0 || n > 5 || port[n] != '\0' || p < 1 || p > 65535)
        return fail(why, whylen, "port in '%s' must be 1..65535", text);
    memset(out, 0, sizeof(*out));
    if (family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&out->addr;
        if (inet_pton(AF_INET, host, &sin->sin_addr) != 1)
            return fail(why, whylen, "'%s' is not an IPv4 address (use [..] for IPv6)", host);
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)p);
    } else {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&out->addr;
        if (inet_pton(AF_INET6, host, &sin6->sin6_addr) != 1)
            return fail(why, whylen, "'%s' is not an IPv6 address", host);
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)p);
    }
    memcpy(out->text, text, len + 1);
    out->tls = tls ? 1 : 0;
    return 0;
}

int sg_config__parse_domain(const char *text, char **out, char *why, size_t whylen)
{
    const char *s = text;
    size_t len = strlen(s);
    /* ".example.com" is how many proxies spell "names under example.com". */
    if (len && s[0] == '.') s++, len--;
    if (len && s[len - 1] == '.') len--;
    if (len == 0) return fail(why, whylen, "domain '%s' is empty", text);
    if (len > 253) return fail(why, whylen, "domain '%s' is longer than 253 bytes", text);
    char *d = malloc(len + 1);
    if (!d) abort();
    size_t label = 0;
    for (size_t i = 0; i <= len; i++) {
        char c = i < len ? s[i] : '.';
        if (c >= 'A' && c <= 'Z') c = (char)(c | 0x20);
        if (c == '.') {
            if (label == 0) goto bad_label;
            if (d[i - 1] == '-') goto bad_label;
            label = 0;
        } else if ((c >= 'a' && c <= 'z') || is_digit(c) || c == '-') {
            if (c == '-' && label == 0) goto bad_label;
            if (++label > 63) {
                free(d);
                return fail(why, whylen, "domain '%s' has a label longer than 63 bytes", text);
            }
        } else {
            free(d);
            return fail(why, whylen, "domain '%s' may only contain letters, digits, '-' and '.'",
                        text);
        }
        if (i < len) d[i] = c;
    }
    d[len] = '\0';
    *out = d;
    return 0;
bad_label:
    free(d);
    return fail(why, whylen, "domain '%s' has an empty label or one that starts or ends with '-'",
                text);
}

int sg_config__check_sandbox_id(const char *text, char *why, size_t whylen)
{
    size_t len = strlen(text);
    int ok = len >= 1 && len <= SG_SANDBOX_ID_MAX;
    for (size_t i = 0; ok && i < len; i++)
        ok = (text[i] >= 'a' && text[i] <= 'z') || is_digit(text[i]);
    if (!ok)
        return fail(why, whylen, "sandbox id '%s' must be 1..%d characters of [a-z0-9]", text,
                    SG_SANDBOX_ID_MAX);
    return 0;
}

int sg_config__parse_ip(const char *text, struct sockaddr_storage *out, char *why, size_t whylen)
{
    char buf[INET6_ADDRSTRLEN + 2];
    size_t len = strlen(text);
    if (len >= sizeof(buf)) return fail(why, whylen, "'%s' is not an IPv4 or IPv6 address", text);
    memcpy(buf, text, len + 1);
    if (len >= 2 && buf[0] == '[' && buf[len - 1] == ']') {
        memmove(buf, buf + 1, len - 2);
        buf[len - 2] = '\0';
    }
    memset(out, 0, sizeof(*out));
    struct sockaddr_in *sin = (struct sockaddr_in *)out;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)out;
    if (inet_pton(AF_INET, buf, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        return 0;
    }
    if (inet_pton(AF_INET6, buf, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        return 0;
    }
    memset(out, 0, sizeof(*out));
    /* The common slip is writing the port; the port always comes from Host. */
    sg_listen_conf_t probe;
    char ignored[8];
    if (sg_config__parse_listen(text, 0, &probe, ignored, sizeof(ignored)) == 0)
        return fail(why, whylen,
                    "'%s': a sandbox address takes no port (the request's Host names it)", text);
    return fail(why, whylen, "'%s' is not an IPv4 or IPv6 address", text);
}

int sg_config__check_mask(const char *text, char *why, size_t whylen)
{
    const char *reason = sg_mask_validate(sg_slice_cstr(text));
    if (reason) return fail(why, whylen, "%s", reason);
    return 0;
}

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
            if (rc == 0) sg_config__add_listen(c, &l);
        } else if (k->type == SG_CONF_T_DOMAINS) {
            char *d;
            rc = sg_config__parse_domain(k->def, &d, why, sizeof(why));
            if (rc == 0) sg_config__add_domain(c, d);
        } else {
            rc = sg_config__set_scalar(c, k, k->def, why, sizeof(why));
        }
        if (rc) abort(); /* a default that fails its own parser is a table bug */
    }
    return c;
}

void sg_config__clear_listens(sg_config_t *c)
{
    free(c->listens);
    c->listens = NULL;
    c->n_listens = 0;
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
    sg_config__clear_listens(c);
    sg_config__clear_domains(c);
    sg_config__clear_sandboxes(c);
    sg_config__clear_certs(c);
    free(c->source);
    free(c);
}

void sg_config__add_listen(sg_config_t *c, const sg_listen_conf_t *l)
{
    c->listens = xrealloc(c->listens, (c->n_listens + 1) * sizeof(*c->listens));
    c->listens[c->n_listens++] = *l;
}

void sg_config__add_domain(sg_config_t *c, char *d)
{
    c->domains = xrealloc(c->domains, (c->n_domains + 1) * sizeof(*c->domains));
    c->domains[c->n_domains++] = d;
}

static int sockaddr_eq(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
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

long sg_config__find_listen(const sg_config_t *c, const struct sockaddr_storage *addr)
{
    for (size_t i = 0; i < c->n_listens; i++)
        if (sockaddr_eq(&c->listens[i].addr, addr)) return (long)i;
    return -1;
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

int sg_config__finish(sg_config_t *c, const char *source, sg_config__errs_t *errs)
{
    unsigned before = errs->n;
    if (c->n_listens == 0) sg_config__error(errs, source, 0, "no listen address configured");
    if (c->n_domains == 0) sg_config__error(errs, source, 0, "no domain configured");
    for (size_t i = 1; i < c->n_listens; i++) {
        for (size_t j = 0; j < i; j++) {
            if (sockaddr_eq(&c->listens[i].addr, &c->listens[j].addr)) {
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
        sg_strbuf_append_cstr(b, "\n");
        for (size_t i = 0; i < c->n_listens; i++) {
            sg_strbuf_appendf(b, "%s  - {address: ", indent);
            sg_config__append_quoted(b, c->listens[i].text);
            sg_strbuf_appendf(b, ", tls: %s}\n", c->listens[i].tls ? "true" : "false");
        }
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
        format_duration(n, v, sizeof(v));
        break;
    case SG_CONF_T_SIZE:
        format_size(n, v, sizeof(v));
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

static int key_eq(const sg_config__key_t *k, const sg_config_t *a, const sg_config_t *b)
{
    switch (k->type) {
    case SG_CONF_T_LISTENS:
        if (a->n_listens != b->n_listens) return 0;
        for (size_t i = 0; i < a->n_listens; i++)
            if (!sockaddr_eq(&a->listens[i].addr, &b->listens[i].addr) ||
                a->listens[i].tls != b->listens[i].tls)
                return 0;
        return 1;
    case SG_CONF_T_DOMAINS:
        if (a->n_domains != b->n_domains) return 0;
        for (size_t i = 0; i < a->n_domains; i++)
            if (strcmp(a->domains[i], b->domains[i]) != 0) return 0;
        return 1;
    case SG_CONF_T_SANDBOXES:
        if (a->n_sandboxes != b->n_sandboxes) return 0;
        for (size_t i = 0; i < a->n_sandboxes; i++) {
            const sg_sandbox_conf_t *x = &a->sandboxes[i], *y = &b->sandboxes[i];
            if (strcmp(x->id, y->id) != 0 || !sockaddr_eq(&x->addr, &y->addr)) return 0;
            if (!x->mask != !y->mask || (x->mask && strcmp(x->mask, y->mask) != 0)) return 0;
        }
        return 1;
    case SG_CONF_T_CERTS:
        return sg_config__certs_eq(a, b);
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
