/* The settings table and value types. The file layer lives in config_yaml.c,
 * the flag layer in config_cli.c; both go through the table and the value
 * parsers here so a setting means the same thing wherever it is written.
 * Snapshot lifecycle, final validation, dump and reload are in config_ops.c. */
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
    {"log_format", SG_CONF_T_LOG_FORMAT, SG_FIELD(log_json), "text", 0, 0, 0,
     "error log lines as text or json"},
    {"access_log", SG_CONF_T_ACCESS_LOG, SG_FIELD(access_log), "stdout", 0, 0, 0,
     "where request lines go: stdout, off or a file"},
    {"drain_timeout", SG_CONF_T_DURATION, SG_FIELD(drain_timeout_ms), "30s", 0, SG_MS_PER_H, 0,
     "on SIGTERM, open streams get this long to finish"},
    {"token_header", SG_CONF_T_HEADER, SG_FIELD(token_header), "X-Traffic-Access-Token", 0, 0, 0,
     "request header carrying a sandbox's access token"},
    {"lookup_order", SG_CONF_T_SOURCES, 0, 0, "static,admin,dns", 0, 0, 0,
     "sandbox lookup sources in the order they are asked"},
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
     "256", 0, 4096, 0, "idle upstream connections kept per address:port, 0 = no pooling"},
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
    {"admin.listen", SG_CONF_T_ADMIN_LISTENS, 0, 0, NULL, 0, 0, SG_CONF_RESTART,
     "admin API addresses; none = admin API off"},
    {"admin.token", SG_CONF_T_SECRET, SG_FIELD(admin.token), NULL, 0, 0, 0,
     "bearer token the admin API requires; needed unless every admin listener is loopback"},
    {"admin.store", SG_CONF_T_PATH, SG_FIELD(admin.store_path), NULL, 0, 0, SG_CONF_RESTART,
     "write-ahead log of the admin sandbox table; none = memory only"},
    {"dns.zone", SG_CONF_T_DNS_NAME, SG_FIELD(dns.zone), NULL, 0, 0, SG_CONF_RESTART,
     "sandbox ids resolve as <id>.<zone>; none = DNS source off"},
    {"dns.servers", SG_CONF_T_SERVERS, 0, 0, NULL, 0, 0, SG_CONF_RESTART,
     "DNS servers to ask: IP, IP:PORT or [IPv6]:PORT (port 53)"},
    {"dns.timeout", SG_CONF_T_DURATION, SG_FIELD(dns.timeout_ms), "1s", 1, 60 * SG_MS_PER_S,
     SG_CONF_RESTART, "one query attempt"},
    {"dns.tries", SG_CONF_T_UINT, SG_FIELD(dns.tries), "2", 1, 10, SG_CONF_RESTART,
     "attempts per server"},
    {"dns.ttl_min", SG_CONF_T_DURATION, SG_FIELD(dns.ttl_min_ms), "5s", 0, SG_MS_PER_D,
     SG_CONF_RESTART, "answers are cached at least this long"},
    {"dns.ttl_max", SG_CONF_T_DURATION, SG_FIELD(dns.ttl_max_ms), "5m", SG_MS_PER_S,
     7 * SG_MS_PER_D, SG_CONF_RESTART, "answers are cached at most this long"},
    {"dns.negative_ttl", SG_CONF_T_DURATION, SG_FIELD(dns.negative_ttl_ms), "5s", 0, SG_MS_PER_H,
     SG_CONF_RESTART, "unknown names (NXDOMAIN) are cached this long"},
    {"egress.listen_http", SG_CONF_T_LISTEN_OPT, SG_FIELD(egress.listen_http), NULL, 0, 0,
     SG_CONF_RESTART, "egress listener for sandbox TCP to port 80; none = off"},
    {"egress.listen_tls", SG_CONF_T_LISTEN_OPT, SG_FIELD(egress.listen_tls), NULL, 0, 0,
     SG_CONF_RESTART, "egress listener for sandbox TCP to port 443; none = off"},
    {"egress.listen_other", SG_CONF_T_LISTEN_OPT, SG_FIELD(egress.listen_other), NULL, 0, 0,
     SG_CONF_RESTART, "egress listener for sandbox TCP to every other port; none = off"},
    {"egress.nameserver", SG_CONF_T_IP, SG_FIELD(egress.nameserver), "8.8.8.8", 0, 0,
     SG_CONF_RESTART, "the sandboxes' nameserver, allowed whenever a domain is"},
    {"egress.resolvers", SG_CONF_T_RESOLVERS, 0, 0, NULL, 0, 0, SG_CONF_RESTART,
     "DNS servers for allowed names: IP, IP:PORT or [IPv6]:PORT; none = nameserver"},
    {"egress.always_denied_exceptions", SG_CONF_T_CIDRS, 0, 0, NULL, 0, 0, 0,
     "addresses and CIDRs carved out of the always-denied ranges"},
    {"egress.sandbox_interfaces", SG_CONF_T_IFNAMES, 0, 0, NULL, 0, 0, SG_CONF_RESTART,
     "interfaces the sandboxes send on (\"veth*\"); other sources arriving there are dropped"},
    {"egress.sniff_timeout", SG_CONF_T_DURATION, SG_FIELD(egress.sniff_timeout_ms), "5s", 100,
     60 * SG_MS_PER_S, 0, "request head or ClientHello must arrive within"},
    {"egress.sniff_max_bytes", SG_CONF_T_SIZE, SG_FIELD(egress.sniff_max_bytes), "16KiB", 1024,
     64 * 1024, 0, "request head or ClientHello size limit"},
    {"egress.connect_timeout", SG_CONF_T_DURATION, SG_FIELD(egress.connect_timeout_ms), "5s", 1,
     SG_MAX_TIMEOUT_MS, 0, "one connect attempt to an allowed destination"},
    {"egress.idle_timeout", SG_CONF_T_DURATION, SG_FIELD(egress.idle_timeout_ms), "300s", 1,
     SG_MAX_TIMEOUT_MS, 0, "no byte either way on an egress connection"},
    {"egress.nft_apply", SG_CONF_T_BOOL, SG_FIELD(egress.nft_apply), "false", 0, 1, SG_CONF_RESTART,
     "load the nftables ruleset with nft at start and on every change"},
    {"egress.nft_table", SG_CONF_T_IDENT, SG_FIELD(egress.nft_table), "sandgate", 0, 0,
     SG_CONF_RESTART, "name of the inet table the ruleset owns"},
};
const size_t sg_config__n_keys = sizeof(sg_config__keys) / sizeof(sg_config__keys[0]);
_Static_assert(sizeof(sg_config__keys) / sizeof(sg_config__keys[0]) <= SG_CONFIG__MAX_KEYS,
               "raise SG_CONFIG__MAX_KEYS");

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
    va_list ap;
    va_start(ap, fmt);
    sg_config__verror(e, source, line, fmt, ap);
    va_end(ap);
}

void sg_config__error_key(sg_config__errs_t *e, const char *source, const sg_config__marks_t *marks,
                          const char *key, const char *fmt, ...)
{
    const sg_config__key_t *k = sg_config__find_key(key, strlen(key));
    size_t line = marks && k ? marks->line[k - sg_config__keys] : 0;
    va_list ap;
    va_start(ap, fmt);
    if (line)
        sg_config__verror(e, marks->file, line, fmt, ap);
    else
        sg_config__verror(e, source, 0, fmt, ap);
    va_end(ap);
}

void sg_config__verror(sg_config__errs_t *e, const char *source, size_t line, const char *fmt,
                       va_list ap)
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
    vsnprintf(msg, sizeof(msg), fmt, ap);
    /* Messages quote keys and values from the file: one message stays one
     * printable line whatever they hold. */
    for (char *q = msg; *q; q++)
        if ((unsigned char)*q < 0x20 || (unsigned char)*q == 0x7f) *q = '?';
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

void sg_config__format_duration(uint64_t ms, char *buf, size_t len)
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

void sg_config__format_size(uint64_t bytes, char *buf, size_t len)
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

int sg_config__parse_uint(const char *text, uint64_t min, uint64_t max, uint64_t *v, char *why,
                          size_t whylen)
{
    if (parse_uint(text, v, why, whylen)) return -1;
    if (*v < min || *v > max)
        return fail(why, whylen, "'%s' is out of range %llu..%llu", text, (unsigned long long)min,
                    (unsigned long long)max);
    return 0;
}

int sg_config__is_string(sg_config__type_t t)
{
    return t == SG_CONF_T_SECRET || t == SG_CONF_T_PATH || t == SG_CONF_T_DNS_NAME ||
           t == SG_CONF_T_HEADER || t == SG_CONF_T_ACCESS_LOG || t == SG_CONF_T_IP ||
           t == SG_CONF_T_IDENT;
}

/* RFC 9110 tchar: what a header field name is made of. */
static int is_tchar(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(c) ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

static char *xstrdup(const char *s)
{
    char *d = strdup(s);
    if (!d) abort();
    return d;
}

/* The malloc'd value a string row stores for text. */
static int parse_string(const sg_config__key_t *k, const char *text, const char *base, char **out,
                        char *why, size_t whylen)
{
    if (!*text) return fail(why, whylen, "value is empty");
    switch (k->type) {
    case SG_CONF_T_SECRET:
        /* Never echo the value: it is a credential and errors end up in logs. */
        for (const char *p = text; *p; p++)
            if (*p < 0x21 || *p > 0x7e)
                return fail(why, whylen, "may only contain visible ASCII characters, no spaces");
        *out = xstrdup(text);
        return 0;
    case SG_CONF_T_PATH:
        *out = sg_config__resolve_path(base, text);
        return 0;
    case SG_CONF_T_DNS_NAME:
        return sg_config__parse_domain(text, out, why, whylen);
    case SG_CONF_T_HEADER:
        for (const char *p = text; *p; p++)
            if (!is_tchar(*p))
                return fail(why, whylen,
                            "'%s' is not a header name (letters, digits and !#$%%&'*+-.^_`|~)",
                            text);
        *out = xstrdup(text);
        return 0;
    case SG_CONF_T_ACCESS_LOG:
        /* Keywords in any case: "Off" must not quietly become a file. A file
         * with such a name is still reachable as "./off". */
        if (strcasecmp(text, "stdout") == 0 || strcasecmp(text, "off") == 0) {
            *out = xstrdup(strcasecmp(text, "off") == 0 ? "off" : "stdout");
            return 0;
        }
        *out = sg_config__resolve_path(base, text);
        return 0;
    case SG_CONF_T_IP: {
        struct sockaddr_storage ss;
        sg_listen_conf_t probe;
        char ignored[8], canon[INET6_ADDRSTRLEN];
        if (sg_config__parse_listen(text, 0, &probe, ignored, sizeof(ignored)) == 0)
            return fail(why, whylen, "'%s': expected an address without port", text);
        if (sg_config__parse_ip(text, &ss, why, whylen) != 0) return -1;
        const void *a = ss.ss_family == AF_INET
                            ? (const void *)&((struct sockaddr_in *)&ss)->sin_addr
                            : (const void *)&((struct sockaddr_in6 *)&ss)->sin6_addr;
        inet_ntop(ss.ss_family, a, canon, sizeof(canon));
        if (strcmp(canon, "0.0.0.0") == 0 || strcmp(canon, "::") == 0)
            return fail(why, whylen, "'%s' is the unspecified address", text);
        *out = xstrdup(canon);
        return 0;
    }
    case SG_CONF_T_IDENT:
        if (sg_config__check_ident(text, why, whylen) != 0) return -1;
        *out = xstrdup(text);
        return 0;
    default:
        return fail(why, whylen, "not a text setting");
    }
}

void sg_config__unset_string(sg_config_t *c, const sg_config__key_t *k)
{
    char **field = (char **)((char *)c + k->offset);
    free(*field);
    *field = NULL;
}

int sg_config__set_scalar(sg_config_t *c, const sg_config__key_t *k, const char *text,
                          const char *base, char *why, size_t whylen)
{
    char *field = (char *)c + k->offset;
    uint64_t v = 0;
    char lo[32], hi[32];
    if (sg_config__is_string(k->type)) {
        char *s = NULL;
        if (parse_string(k, text, base, &s, why, whylen) != 0) return -1;
        free(*(char **)field);
        *(char **)field = s;
        return 0;
    }
    switch (k->type) {
    case SG_CONF_T_LOG_LEVEL: {
        sg_log_level_t level;
        if (sg_log_parse_level(text, &level) != 0)
            return fail(why, whylen, "expected debug, info, warn or error, got '%s'", text);
        *(int *)field = (int)level;
        return 0;
    }
    case SG_CONF_T_LOG_FORMAT:
        if (strcmp(text, "text") != 0 && strcmp(text, "json") != 0)
            return fail(why, whylen, "expected text or json, got '%s'", text);
        *(int *)field = strcmp(text, "json") == 0;
        return 0;
    case SG_CONF_T_BOOL:
        if (sg_config__parse_bool(text, (int *)field) != 0)
            return fail(why, whylen, "expected true or false, got '%s'", text);
        return 0;
    case SG_CONF_T_LISTEN_OPT: {
        sg_listen_conf_t l;
        if (sg_config__parse_listen(text, 0, &l, why, whylen) != 0) return -1;
        *(sg_listen_conf_t *)field = l;
        return 0;
    }
    case SG_CONF_T_UINT:
        if (parse_uint(text, &v, why, whylen)) return -1;
        snprintf(lo, sizeof(lo), "%llu", (unsigned long long)k->min);
        snprintf(hi, sizeof(hi), "%llu", (unsigned long long)k->max);
        break;
    case SG_CONF_T_DURATION:
        if (sg_config__parse_duration(text, &v, why, whylen)) return -1;
        sg_config__format_duration(k->min, lo, sizeof(lo));
        sg_config__format_duration(k->max, hi, sizeof(hi));
        break;
    case SG_CONF_T_SIZE:
        if (sg_config__parse_size(text, &v, why, whylen)) return -1;
        sg_config__format_size(k->min, lo, sizeof(lo));
        sg_config__format_size(k->max, hi, sizeof(hi));
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
