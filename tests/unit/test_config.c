/* Configuration: defaults, every key, value formats, file:line errors, flag
 * layering, dump round trip, reload check and reference counting. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "config/config.h"
#include "config/config_internal.h"
#include "core/log.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- helpers --------------------------------------------------------------- */

static sg_config_t *parse_ok(const char *yaml)
{
    char err[2048] = "";
    sg_config_t *c = NULL;
    int rc = sg_config_parse_text(yaml, strlen(yaml), "t.yaml", &c, err, sizeof(err));
    if (rc != 0) fail_msg("unexpected error for:\n%s\n-> %s", yaml, err);
    assert_non_null(c);
    assert_string_equal(err, "");
    return c;
}

/* Expects exactly one error line "t.yaml:<line>: ...<needle>...". */
static void parse_err(const char *yaml, size_t line, const char *needle)
{
    char err[2048] = "";
    char prefix[64];
    sg_config_t *c = (sg_config_t *)1;
    int rc = sg_config_parse_text(yaml, strlen(yaml), "t.yaml", &c, err, sizeof(err));
    if (rc != -1) fail_msg("expected an error for:\n%s", yaml);
    assert_null(c);
    snprintf(prefix, sizeof(prefix), "t.yaml:%zu: ", line);
    if (strncmp(err, prefix, strlen(prefix)) != 0 || !strstr(err, needle) || strchr(err, '\n'))
        fail_msg("for:\n%s\nwanted one line '%s...%s...', got:\n%s", yaml, prefix, needle, err);
}

static void assert_addr(const struct sockaddr_storage *ss, int family, const char *ip, int port)
{
    char buf[INET6_ADDRSTRLEN];
    assert_int_equal(ss->ss_family, family);
    if (family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &sin->sin_addr, buf, sizeof(buf));
        assert_int_equal(ntohs(sin->sin_port), port);
    } else {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &sin6->sin6_addr, buf, sizeof(buf));
        assert_int_equal(ntohs(sin6->sin6_port), port);
    }
    assert_string_equal(buf, ip);
}

static unsigned cpus(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 256 ? 256 : (unsigned)n;
}

static const sg_sandbox_conf_t *sandbox(const sg_config_t *c, const char *id)
{
    for (size_t i = 0; i < c->n_sandboxes; i++)
        if (strcmp(c->sandboxes[i].id, id) == 0) return &c->sandboxes[i];
    return NULL;
}

/* Runs sg_config_load over NULL-terminated flags (argv[0] supplied). */
static int load(sg_config_t **c, sg_config_actions_t *a, char *err, size_t errlen, ...)
{
    char *argv[32] = {"sandgate"};
    int argc = 1;
    va_list ap;
    va_start(ap, errlen);
    for (const char *s; (s = va_arg(ap, const char *)) != NULL;) argv[argc++] = (char *)s;
    va_end(ap);
    err[0] = '\0';
    return sg_config_load(argc, argv, c, a, err, errlen);
}

#define LOAD(c, err, ...) load(c, NULL, err, sizeof(err), __VA_ARGS__, (const char *)NULL)

/* Writes text to a fresh temporary file; returns its malloc'd path. */
static char *temp_file(const char *text)
{
    char *path = strdup("/tmp/sg_test_config_XXXXXX");
    assert_non_null(path);
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return path;
}

static void drop_file(char *path)
{
    unlink(path);
    free(path);
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    assert_non_null(s);
    assert_int_equal(fread(s, 1, (size_t)n, f), (size_t)n);
    s[n] = '\0';
    fclose(f);
    return s;
}

/* Repo files are found relative to the working directory CTest sets (the
 * source root), or to SG_SOURCE_DIR when the build defines it. */
static char *slurp_repo(const char *rel)
{
    char path[1024];
#ifdef SG_SOURCE_DIR
    snprintf(path, sizeof(path), "%s/%s", SG_SOURCE_DIR, rel);
#else
    snprintf(path, sizeof(path), "%s", rel);
#endif
    char *s = slurp(path);
    if (!s) fail_msg("cannot read %s (run from the repository root)", path);
    return s;
}

/* ---- defaults -------------------------------------------------------------- */

static void check_egress_defaults(const sg_egress_conf_t *e)
{
    assert_int_equal(e->enabled, 0);
    assert_string_equal(e->listen_http.text, "");
    assert_string_equal(e->listen_tls.text, "");
    assert_string_equal(e->listen_other.text, "");
    assert_string_equal(e->nameserver, "8.8.8.8");
    /* No resolvers written: the nameserver on port 53. */
    assert_int_equal(e->n_resolvers, 1);
    assert_addr(&e->resolvers[0], AF_INET, "8.8.8.8", 53);
    assert_int_equal(e->n_always_denied_exceptions, 0);
    assert_null(e->always_denied_exceptions);
    assert_int_equal(e->n_sandbox_interfaces, 0);
    assert_null(e->sandbox_interfaces);
    assert_int_equal(e->sniff_timeout_ms, 5000);
    assert_int_equal(e->sniff_max_bytes, 16384);
    assert_int_equal(e->connect_timeout_ms, 5000);
    assert_int_equal(e->idle_timeout_ms, 300000);
    assert_int_equal(e->nft_apply, 0);
    assert_string_equal(e->nft_table, "sandgate");
}

static void check_defaults(const sg_config_t *c)
{
    assert_int_equal(c->n_listens, 1);
    assert_string_equal(c->listens[0].text, "127.0.0.1:8080");
    assert_addr(&c->listens[0].addr, AF_INET, "127.0.0.1", 8080);
    assert_int_equal(c->listens[0].tls, 0);
    assert_int_equal(c->n_domains, 1);
    assert_string_equal(c->domains[0], "sandbox.localhost");
    assert_int_equal(c->workers, cpus());
    assert_int_equal(c->log_level, SG_LOG_INFO);
    assert_int_equal(c->timeouts.request_head_ms, 30000);
    assert_int_equal(c->timeouts.keepalive_idle_ms, 75000);
    assert_int_equal(c->timeouts.upstream_connect_ms, 5000);
    assert_int_equal(c->timeouts.upstream_retry_window_ms, 1500);
    assert_int_equal(c->timeouts.upstream_response_head_ms, 300000);
    assert_int_equal(c->timeouts.stream_idle_ms, 600000);
    assert_int_equal(c->timeouts.upstream_idle_ms, 60000);
    assert_int_equal(c->max_header_bytes, 65536);
    assert_int_equal(c->upstream_pool_idle_per_key, 256);
    assert_int_equal(c->tls.n_certs, 0);
    assert_null(c->tls.certs);
    assert_int_equal(c->tls.handshake_timeout_ms, 10000);
    assert_int_equal(c->tls.ticket_key_rotation_ms, 3600000);
    assert_int_equal(c->tls.expiry_warning_ms, 720ull * 3600000);
    assert_int_equal(c->tls.redirect_http, 0);
    for (size_t i = 0; i < c->n_listens; i++) {
        assert_int_equal(c->listens[i].proxy_protocol, 0);
        assert_int_equal(c->listens[i].max_connections, 0);
    }
    assert_int_equal(c->log_json, 0);
    assert_string_equal(c->access_log, "stdout");
    assert_int_equal(c->drain_timeout_ms, 30000);
    assert_string_equal(c->token_header, "X-Traffic-Access-Token");
    assert_int_equal(c->admin.n_listens, 0);
    assert_null(c->admin.listens);
    assert_null(c->admin.token);
    assert_null(c->admin.store_path);
    assert_null(c->dns.zone);
    assert_int_equal(c->dns.n_servers, 0);
    assert_null(c->dns.servers);
    assert_int_equal(c->dns.timeout_ms, 1000);
    assert_int_equal(c->dns.tries, 2);
    assert_int_equal(c->dns.ttl_min_ms, 5000);
    assert_int_equal(c->dns.ttl_max_ms, 300000);
    assert_int_equal(c->dns.negative_ttl_ms, 5000);
    /* Neither admin nor dns is configured: only the static source is left. */
    assert_int_equal(c->n_lookup_order, 1);
    assert_int_equal(c->lookup_order[0], SG_SOURCE_STATIC);
    check_egress_defaults(&c->egress);
}

static void test_defaults_empty_file(void **state)
{
    sg_config_t *c = parse_ok("");
    check_defaults(c);
    assert_int_equal(c->n_sandboxes, 0);
    assert_string_equal(c->source, "t.yaml");
    assert_int_equal(atomic_load(&c->refs), 1);
    sg_config_unref(c);

    c = parse_ok("# only a comment\n\n   # another\n");
    check_defaults(c);
    sg_config_unref(c);

    /* Empty sections keep their defaults. */
    c = parse_ok("timeouts:\nlimits: {}\nsandboxes:\ntls:\n");
    check_defaults(c);
    assert_int_equal(c->n_sandboxes, 0);
    sg_config_unref(c);
    c = parse_ok("tls: {certificates: []}\n");
    check_defaults(c);
    sg_config_unref(c);
    c = parse_ok("tls:\n  certificates:\n");
    check_defaults(c);
    assert_int_equal(c->n_sandboxes, 0);
    sg_config_unref(c);
    c = parse_ok("admin:\ndns: {}\n");
    check_defaults(c);
    sg_config_unref(c);
    /* Empty lists and explicit nones for the optional settings. */
    c = parse_ok("admin: {listen: [], token: ~, store: }\n"
                 "dns: {zone: null, servers: []}\n");
    check_defaults(c);
    sg_config_unref(c);
    c = parse_ok("egress:\n");
    check_defaults(c);
    sg_config_unref(c);
    c = parse_ok("egress: {listen_http: ~, listen_tls: null, listen_other: , resolvers: [],"
                 " always_denied_exceptions: [], sandbox_interfaces: []}\n");
    check_defaults(c);
    sg_config_unref(c);
}

static void test_embedded_default(void **state)
{
    sg_config_t *c = parse_ok(sg_config_embedded_default);
    check_defaults(c);
    assert_int_equal(c->n_sandboxes, 1);
    assert_string_equal(c->sandboxes[0].id, "demo");
    assert_addr(&c->sandboxes[0].addr, AF_INET, "127.0.0.1", 0);
    assert_null(c->sandboxes[0].mask);
    assert_non_null(strchr(sg_config_embedded_default, '#')); /* it is commented */
    sg_config_unref(c);
}

/* ---- every key ------------------------------------------------------------- */

static void test_every_key(void **state)
{
    sg_config_t *c = parse_ok("# all settings\n"
                              "listen:\n"
                              "  - \"0.0.0.0:80\"\n"
                              "  - \"[::1]:8081\"\n"
                              "  - {address: \"[::]:443\", tls: true}\n"
                              "  - address: 10.0.0.1:8443\n"
                              "    tls: false\n"
                              "domains: [.Sandbox.Example.COM, e2b.local.]\n"
                              "workers: 7\n"
                              "log_level: warn\n"
                              "sandboxes:\n"
                              "  abc123: 10.1.2.3\n"
                              "  v6: \"fd00::5\"\n"
                              "  masked:\n"
                              "    address: \"[::1]\"\n"
                              "    mask: \"localhost:${PORT}\"\n"
                              "  nomask: {address: 192.168.0.9, mask: ~}\n"
                              "timeouts:\n"
                              "  request_head: 500ms\n"
                              "  keepalive_idle: 1.5s\n"
                              "  upstream_connect: 10\n"
                              "  upstream_retry_window: 0\n"
                              "  upstream_response_head: 2m\n"
                              "  stream_idle: 1h\n"
                              "  upstream_idle: 0.5m\n"
                              "limits:\n"
                              "  max_header_size: 1MiB\n"
                              "  upstream_pool_idle_per_key: 0\n"
                              "tls:\n"
                              "  certificates:\n"
                              "    - cert: /etc/sg/a.pem\n"
                              "      key: /etc/sg/a.key\n"
                              "    - {cert: /etc/sg/b.pem, key: /etc/sg/b.key, default: yes}\n"
                              "  handshake_timeout: 2.5s\n"
                              "  ticket_key_rotation: 12h\n"
                              "  expiry_warning: 0\n"
                              "  redirect_http: true\n");
    assert_int_equal(c->n_listens, 4);
    assert_string_equal(c->listens[0].text, "0.0.0.0:80");
    assert_addr(&c->listens[0].addr, AF_INET, "0.0.0.0", 80);
    assert_int_equal(c->listens[0].tls, 0);
    assert_string_equal(c->listens[1].text, "[::1]:8081");
    assert_addr(&c->listens[1].addr, AF_INET6, "::1", 8081);
    assert_addr(&c->listens[2].addr, AF_INET6, "::", 443);
    assert_int_equal(c->listens[2].tls, 1);
    assert_addr(&c->listens[3].addr, AF_INET, "10.0.0.1", 8443);
    assert_int_equal(c->listens[3].tls, 0);

    assert_int_equal(c->n_domains, 2);
    assert_string_equal(c->domains[0], "sandbox.example.com");
    assert_string_equal(c->domains[1], "e2b.local");
    assert_int_equal(c->workers, 7);
    assert_int_equal(c->log_level, SG_LOG_WARN);

    assert_int_equal(c->n_sandboxes, 4);
    const sg_sandbox_conf_t *sb = sandbox(c, "abc123");
    assert_non_null(sb);
    assert_addr(&sb->addr, AF_INET, "10.1.2.3", 0);
    assert_null(sb->mask);
    assert_non_null(sb = sandbox(c, "v6"));
    assert_addr(&sb->addr, AF_INET6, "fd00::5", 0);
    assert_non_null(sb = sandbox(c, "masked"));
    assert_addr(&sb->addr, AF_INET6, "::1", 0);
    assert_string_equal(sb->mask, "localhost:${PORT}");
    assert_non_null(sb = sandbox(c, "nomask"));
    assert_null(sb->mask);

    assert_int_equal(c->timeouts.request_head_ms, 500);
    assert_int_equal(c->timeouts.keepalive_idle_ms, 1500);
    assert_int_equal(c->timeouts.upstream_connect_ms, 10000);
    assert_int_equal(c->timeouts.upstream_retry_window_ms, 0);
    assert_int_equal(c->timeouts.upstream_response_head_ms, 120000);
    assert_int_equal(c->timeouts.stream_idle_ms, 3600000);
    assert_int_equal(c->timeouts.upstream_idle_ms, 30000);
    assert_int_equal(c->max_header_bytes, 1048576);
    assert_int_equal(c->upstream_pool_idle_per_key, 0);
    assert_int_equal(c->tls.n_certs, 2);
    assert_string_equal(c->tls.certs[0].chain, "/etc/sg/a.pem");
    assert_string_equal(c->tls.certs[0].key, "/etc/sg/a.key");
    assert_int_equal(c->tls.certs[0].is_default, 0);
    assert_string_equal(c->tls.certs[1].chain, "/etc/sg/b.pem");
    assert_string_equal(c->tls.certs[1].key, "/etc/sg/b.key");
    assert_int_equal(c->tls.certs[1].is_default, 1);
    assert_int_equal(c->tls.handshake_timeout_ms, 2500);
    assert_int_equal(c->tls.ticket_key_rotation_ms, 12 * 3600000);
    assert_int_equal(c->tls.expiry_warning_ms, 0);
    assert_int_equal(c->tls.redirect_http, 1);
    sg_config_unref(c);
}

static void test_workers_and_levels(void **state)
{
    sg_config_t *c = parse_ok("workers: 0\n");
    assert_int_equal(c->workers, cpus());
    sg_config_unref(c);
    c = parse_ok("workers: 256\n");
    assert_int_equal(c->workers, 256);
    sg_config_unref(c);
    static const struct {
        const char *name;
        int level;
    } levels[] = {{"debug", SG_LOG_DEBUG},
                  {"info", SG_LOG_INFO},
                  {"warn", SG_LOG_WARN},
                  {"error", SG_LOG_ERROR}};
    for (size_t i = 0; i < sizeof(levels) / sizeof(levels[0]); i++) {
        char yaml[64];
        snprintf(yaml, sizeof(yaml), "log_level: %s\n", levels[i].name);
        c = parse_ok(yaml);
        assert_int_equal(c->log_level, levels[i].level);
        sg_config_unref(c);
    }
}

/* ---- value formats --------------------------------------------------------- */

static void test_durations(void **state)
{
    static const struct {
        const char *in;
        uint64_t ms; /* UINT64_MAX: must be rejected */
    } cases[] = {
        {"500ms", 500},
        {"0ms", 0},
        {"1.5s", 1500},
        {"10s", 10000},
        {"10m", 600000},
        {"1h", 3600000},
        {"10", 10000},
        {"0", 0},
        {"2.25", 2250},
        {"0.001s", 1},
        {"1.5m", 90000},
        {"0.5h", 1800000},
        {"1.25ms", UINT64_MAX},
        {"0.0001s", UINT64_MAX},
        {"10x", UINT64_MAX},
        {"", UINT64_MAX},
        {"s", UINT64_MAX},
        {"1.s", UINT64_MAX},
        {".5s", UINT64_MAX},
        {"-1s", UINT64_MAX},
        {"1 s", UINT64_MAX},
        {"1S", UINT64_MAX},
        {"1d", UINT64_MAX},
        {"1.0000001h", UINT64_MAX},
        {"99999999999999999999s", UINT64_MAX},
        {"18446744073709551615h", UINT64_MAX},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint64_t ms = 12345;
        char why[256] = "";
        int rc = sg_config__parse_duration(cases[i].in, &ms, why, sizeof(why));
        if (cases[i].ms == UINT64_MAX) {
            if (rc != -1)
                fail_msg("'%s' should be rejected, got %llu", cases[i].in, (unsigned long long)ms);
            assert_non_null(strstr(why, "duration"));
        } else {
            if (rc != 0) fail_msg("'%s' rejected: %s", cases[i].in, why);
            assert_int_equal(ms, cases[i].ms);
        }
    }
    /* Through the file, quoted and plain alike. */
    sg_config_t *c = parse_ok("timeouts: {request_head: \"250ms\", stream_idle: 2h}\n");
    assert_int_equal(c->timeouts.request_head_ms, 250);
    assert_int_equal(c->timeouts.stream_idle_ms, 7200000);
    sg_config_unref(c);
}

static void test_sizes(void **state)
{
    static const struct {
        const char *in;
        uint64_t bytes; /* UINT64_MAX: must be rejected */
    } cases[] = {
        {"16384", 16384},
        {"16384B", 16384},
        {"64KiB", 65536},
        {"64K", 65536},
        {"64k", 65536},
        {"1MiB", 1048576},
        {"1M", 1048576},
        {"1m", 1048576},
        {"2GiB", 2147483648ull},
        {"1G", 1073741824},
        {"0", 0},
        {"64KB", UINT64_MAX},
        {"1MB", UINT64_MAX},
        {"1.5MiB", UINT64_MAX},
        {"KiB", UINT64_MAX},
        {"", UINT64_MAX},
        {"64 KiB", UINT64_MAX},
        {"-1", UINT64_MAX},
        {"1TiB", UINT64_MAX},
        {"17179869184GiB", UINT64_MAX},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint64_t v = 12345;
        char why[256] = "";
        int rc = sg_config__parse_size(cases[i].in, &v, why, sizeof(why));
        if (cases[i].bytes == UINT64_MAX) {
            if (rc != -1)
                fail_msg("'%s' should be rejected, got %llu", cases[i].in, (unsigned long long)v);
            assert_non_null(strstr(why, "size"));
        } else {
            if (rc != 0) fail_msg("'%s' rejected: %s", cases[i].in, why);
            assert_int_equal(v, cases[i].bytes);
        }
    }
    sg_config_t *c = parse_ok("limits: {max_header_size: 16384}\n");
    assert_int_equal(c->max_header_bytes, 16384);
    sg_config_unref(c);
    c = parse_ok("limits: {max_header_size: 1KiB}\n");
    assert_int_equal(c->max_header_bytes, 1024);
    sg_config_unref(c);
}

static void test_listen_and_ip_parsers(void **state)
{
    static const struct {
        const char *in;
        int ok;
    } listens[] = {
        {"127.0.0.1:1", 1},
        {"[::1]:65535", 1},
        {"[fe80::1]:80", 1},
        {"0.0.0.0:8080", 1},
        {"127.0.0.1:0", 0},
        {"127.0.0.1:65536", 0},
        {"127.0.0.1", 0},
        {"::1:8080", 0},
        {"[::1]8080", 0},
        {"[::1:8080", 0},
        {"localhost:80", 0},
        {"1.2.3:80", 0},
        {":8080", 0},
        {"1.2.3.4:080a", 0},
        {"1.2.3.4:", 0},
        {"[1.2.3.4]:80", 0},
        {"[0000:0000:0000:0000:0000:0000:0000:0000:0000:0000:0000]:8080", 0},
    };
    for (size_t i = 0; i < sizeof(listens) / sizeof(listens[0]); i++) {
        sg_listen_conf_t l;
        char why[256] = "";
        int rc = sg_config__parse_listen(listens[i].in, 1, &l, why, sizeof(why));
        if ((rc == 0) != listens[i].ok) fail_msg("listen '%s': rc %d (%s)", listens[i].in, rc, why);
        if (rc == 0) {
            assert_string_equal(l.text, listens[i].in);
            assert_int_equal(l.tls, 1);
        }
    }
    static const struct {
        const char *in;
        int family; /* 0: rejected */
    } ips[] = {
        {"10.0.0.1", AF_INET},
        {"::1", AF_INET6},
        {"[::1]", AF_INET6},
        {"fd00::1:2", AF_INET6},
        {"::ffff:1.2.3.4", AF_INET6},
        {"10.0.0.1:80", 0},
        {"[::1]:80", 0},
        {"example.com", 0},
        {"", 0},
        {"[]", 0},
        {"10.0.0.256", 0},
    };
    for (size_t i = 0; i < sizeof(ips) / sizeof(ips[0]); i++) {
        struct sockaddr_storage ss;
        char why[256] = "";
        int rc = sg_config__parse_ip(ips[i].in, &ss, why, sizeof(why));
        if (ips[i].family == 0) {
            if (rc != -1) fail_msg("ip '%s' should be rejected", ips[i].in);
        } else {
            if (rc != 0) fail_msg("ip '%s' rejected: %s", ips[i].in, why);
            assert_int_equal(ss.ss_family, ips[i].family);
        }
    }
    char why[256];
    struct sockaddr_storage ss;
    assert_int_equal(sg_config__parse_ip("10.0.0.1:80", &ss, why, sizeof(why)), -1);
    assert_non_null(strstr(why, "no port"));
}

static void test_domain_parser(void **state)
{
    static const struct {
        const char *in;
        const char *out; /* NULL: rejected */
    } cases[] = {
        {"Sandbox.Example.COM", "sandbox.example.com"},
        {".example.com", "example.com"},
        {"example.com.", "example.com"},
        {"localhost", "localhost"},
        {"a-b.c0", "a-b.c0"},
        {"", NULL},
        {".", NULL},
        {"..a", NULL},
        {"a..b", NULL},
        {"-a.com", NULL},
        {"a-.com", NULL},
        {"a_b.com", NULL},
        {"*.example.com", NULL},
        {"exa mple.com", NULL},
        {"a.com:8080", NULL},
        {"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.com", NULL}, /* 64 */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *d = NULL, why[256] = "";
        int rc = sg_config__parse_domain(cases[i].in, &d, why, sizeof(why));
        if (!cases[i].out) {
            if (rc != -1) fail_msg("domain '%s' should be rejected, got '%s'", cases[i].in, d);
            assert_null(d);
        } else {
            if (rc != 0) fail_msg("domain '%s' rejected: %s", cases[i].in, why);
            assert_string_equal(d, cases[i].out);
            free(d);
        }
    }
    /* 63-byte labels are fine, 253 bytes in all is the limit. */
    char name[300];
    memset(name, 'a', 63);
    strcpy(name + 63, ".com");
    char *d = NULL, why[256];
    assert_int_equal(sg_config__parse_domain(name, &d, why, sizeof(why)), 0);
    free(d);
    for (int i = 0; i < 254; i++) name[i] = (i % 2) ? '.' : 'a';
    name[253] = '\0'; /* "a.a.a....a": 253 bytes */
    assert_int_equal(sg_config__parse_domain(name, &d, why, sizeof(why)), 0);
    free(d);
    name[253] = 'a';
    name[254] = '\0';
    name[252] = 'a'; /* 254 bytes */
    assert_int_equal(sg_config__parse_domain(name, &d, why, sizeof(why)), -1);
}

/* ---- file errors ----------------------------------------------------------- */

static void test_file_errors(void **state)
{
    static const struct {
        const char *yaml;
        size_t line;
        const char *needle;
    } cases[] = {
        /* unknown keys */
        {"workers: 1\nfrobnicate: 2\n", 2, "unknown key 'frobnicate'"},
        {"timeouts:\n  request_head: 1s\n  reqest_head: 2s\n", 3,
         "unknown key 'timeouts.reqest_head'"},
        {"timeouts.request_head: 5s\n", 1, "unknown key 'timeouts.request_head'"},
        {"limits:\n  max_header: 1KiB\n", 2, "unknown key 'limits.max_header'"},
        {"workers: 1\nworkers: 2\n", 2, "duplicate key 'workers' (first at line 1)"},
        {"- listen\n", 1, "expected a mapping of settings"},
        {"just a string\n", 1, "expected a mapping of settings"},
        {"? [a]\n: 1\n", 1, "keys must be plain names"},
        /* wrong types */
        {"\nworkers: [1, 2]\n", 2, "workers: expected a single value, got a list"},
        {"workers: {a: 1}\n", 1, "workers: expected a single value, got a mapping"},
        {"workers:\n", 1, "workers: missing value"},
        {"workers: abc\n", 1, "workers: expected a non-negative integer"},
        {"workers: -1\n", 1, "workers: expected a non-negative integer"},
        {"workers: 257\n", 1, "workers: '257' is out of range 0..256"},
        {"log_level: verbose\n", 1, "log_level: expected debug, info, warn or error"},
        {"timeouts: 5s\n", 1, "timeouts: expected a mapping, got a single value"},
        {"limits: [1]\n", 1, "limits: expected a mapping, got a list"},
        /* listen */
        {"listen: 127.0.0.1:80\n", 1, "listen: expected a list, got a single value"},
        {"listen: []\n", 1, "listen: needs at least one item"},
        {"listen:\n", 1, "listen: needs at least one item"},
        {"listen:\n  - 127.0.0.1:80\n  - \"::1:80\"\n", 3, "IPv6 addresses need brackets"},
        {"listen:\n  - 127.0.0.1:0\n", 2, "port in '127.0.0.1:0' must be 1..65535"},
        {"listen:\n  - 127.0.0.1:70000\n", 2, "must be 1..65535"},
        {"listen:\n  - localhost:80\n", 2, "'localhost' is not an IPv4 address"},
        {"listen:\n  - 127.0.0.1:80\n  - 127.0.0.1:80\n", 3, "listen: duplicate address"},
        {"listen:\n  - [127.0.0.1:80]\n", 2, "listen: expected a single value, got a list"},
        {"listen:\n  - {address: \"[::]:443\", tls: maybe}\n", 2,
         "listen.tls: expected true or false"},
        {"listen:\n  - {adress: \"[::]:443\"}\n", 2, "unknown key 'listen.adress'"},
        {"listen:\n  - tls: true\n", 2, "listen: item lacks 'address'"},
        {"listen:\n  - {address: \"[::]:443\", address: \"[::]:444\"}\n", 2,
         "duplicate key 'address'"},
        /* domains */
        {"domains: example.com\n", 1, "domains: expected a list"},
        {"domains: []\n", 1, "domains: needs at least one item"},
        {"domains:\n  - ok.com\n  - bad_name.com\n", 3, "may only contain letters"},
        {"domains:\n  - -bad.com\n", 2, "starts or ends with '-'"},
        {"domains:\n  - \"\"\n", 2, "is empty"},
        {"domains:\n  - Example.com\n  - .example.COM\n", 3, "duplicate domain 'example.com'"},
        {"domains:\n  - {a: b}\n", 2, "domains: expected a single value, got a mapping"},
        /* sandboxes */
        {"sandboxes: [a, b]\n", 1, "sandboxes: expected a mapping of id: address"},
        {"sandboxes:\n  Demo: 127.0.0.1\n", 2,
         "sandbox id 'Demo' must be 1..64 characters of [a-z0-9]"},
        {"sandboxes:\n  my-box: 127.0.0.1\n", 2, "sandbox id 'my-box'"},
        {"sandboxes:\n  "
         "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa: 127.0.0.1\n",
         2, "must be 1..64 characters"},
        {"sandboxes:\n  a: 127.0.0.1\n  b: 127.0.0.2\n  a: 127.0.0.3\n", 4,
         "sandboxes: duplicate sandbox id 'a' (first at line 2)"},
        {"sandboxes:\n  a: 127.0.0.1:8080\n", 2,
         "sandboxes.a.address: '127.0.0.1:8080': a sandbox address takes no port"},
        {"sandboxes:\n  a: example.com\n", 2,
         "sandboxes.a.address: 'example.com' is not an IPv4 or IPv6 address"},
        {"sandboxes:\n  a:\n", 2, "sandboxes.a: missing address"},
        {"sandboxes:\n  a: [1]\n", 2, "sandboxes.a: expected a single value, got a list"},
        {"sandboxes:\n  a:\n    mask: x\n", 3, "sandboxes.a: lacks 'address'"},
        {"sandboxes:\n  a:\n    address: 10.0.0.1\n    port: 80\n", 4,
         "unknown key 'sandboxes.a.port'"},
        {"sandboxes:\n  a:\n    address: 10.0.0.1\n    mask: \"evil\\r\\nX: y\"\n", 4,
         "sandboxes.a.mask: mask contains a control character"},
        {"sandboxes:\n  a:\n    address: 10.0.0.1\n    mask: \"$HOME\"\n", 4,
         "sandboxes.a.mask: mask may use '$' only"},
        {"sandboxes:\n  a:\n    address: 10.0.0.1\n    mask: \"\"\n", 4,
         "sandboxes.a.mask: mask is empty"},
        {"sandboxes:\n  a: \"10.0.0.1\\0\"\n", 2, "contains a NUL byte"},
        /* durations and sizes */
        {"timeouts:\n  request_head: 10x\n", 2, "timeouts.request_head: bad duration '10x'"},
        {"timeouts:\n  request_head: 1.5ms\n", 2, "not a whole number of milliseconds"},
        {"timeouts:\n  request_head: 0\n", 2,
         "timeouts.request_head: '0' is out of range 1ms..24h"},
        {"timeouts:\n  stream_idle: 25h\n", 2, "timeouts.stream_idle: '25h' is out of range"},
        {"timeouts:\n  upstream_connect:\n", 2, "timeouts.upstream_connect: missing value"},
        {"limits:\n  max_header_size: 512\n", 2,
         "limits.max_header_size: '512' is out of range 1KiB..1MiB"},
        {"limits:\n  max_header_size: 2MiB\n", 2, "out of range 1KiB..1MiB"},
        {"limits:\n  max_header_size: 10MB\n", 2, "write binary units KiB, MiB or GiB"},
        {"limits:\n  upstream_pool_idle_per_key: lots\n", 2, "expected a non-negative integer"},
        {"limits:\n  upstream_pool_idle_per_key: 5000\n", 2, "out of range 0..4096"},
        /* tls */
        {"tls: [a]\n", 1, "tls: expected a mapping, got a list"},
        {"tls:\n  certs: []\n", 2, "unknown key 'tls.certs'"},
        {"tls:\n  certificates: a.pem\n", 2,
         "tls.certificates: expected a list of {cert: PATH, key: PATH} mappings, got a single"},
        {"tls:\n  certificates: {cert: a.pem, key: a.key}\n", 2,
         "tls.certificates: expected a list of {cert: PATH, key: PATH} mappings, got a mapping"},
        {"tls:\n  certificates:\n    - a.pem\n", 3,
         "tls.certificates: expected a mapping {cert: PATH, key: PATH}, got a single value"},
        {"tls:\n  certificates:\n    - {cert: a.pem, key: a.key}\n    - key: b.key\n", 4,
         "tls.certificates: item lacks 'cert'"},
        {"tls:\n  certificates:\n\n    - cert: b.pem\n      default: true\n", 4,
         "tls.certificates: item lacks 'key'"},
        {"tls:\n  certificates:\n    - cert: a.pem\n      key: \"\"\n", 4,
         "tls.certificates.key: path is empty"},
        {"tls:\n  certificates:\n    - {cert: '', key: a.key}\n", 3,
         "tls.certificates.cert: path is empty"},
        {"tls:\n  certificates:\n    - cert:\n      key: a.key\n", 3,
         "tls.certificates.cert: missing path"},
        {"tls:\n  certificates:\n    - {cert: [a.pem], key: a.key}\n", 3,
         "tls.certificates.cert: expected a single value, got a list"},
        {"tls:\n  certificates:\n    - {cert: \"a\\0.pem\", key: a.key}\n", 3,
         "tls.certificates.cert: value contains a NUL byte"},
        {"tls:\n  certificates:\n    - cert: a.pem\n      key: a.key\n      chain: x.pem\n", 5,
         "unknown key 'tls.certificates.chain' (expected cert, key, default)"},
        {"tls:\n  certificates:\n    - cert: a.pem\n      key: a.key\n      cert: b.pem\n", 5,
         "tls.certificates: duplicate key 'cert' (first at line 3)"},
        {"tls:\n  certificates:\n    - cert: a.pem\n      key: a.key\n      default: maybe\n", 5,
         "tls.certificates.default: expected true or false, got 'maybe'"},
        {"tls:\n  certificates:\n"
         "    - {cert: a.pem, key: a.key, default: true}\n"
         "    - {cert: b.pem, key: b.key, default: false}\n"
         "    - cert: c.pem\n"
         "      key: c.key\n"
         "      default: yes\n",
         7, "tls.certificates: only one certificate may be the default (first at line 3)"},
        {"tls:\n  redirect_http: 1\n", 2, "tls.redirect_http: expected true or false, got '1'"},
        {"tls:\n  redirect_http:\n", 2, "tls.redirect_http: missing value"},
        {"tls:\n  handshake_timeout: soon\n", 2, "tls.handshake_timeout: bad duration 'soon'"},
        {"tls:\n  handshake_timeout: 0\n", 2,
         "tls.handshake_timeout: '0' is out of range 1ms..24h"},
        {"tls:\n  handshake_timeout: 25h\n", 2, "out of range 1ms..24h"},
        {"tls:\n  ticket_key_rotation: 999ms\n", 2,
         "tls.ticket_key_rotation: '999ms' is out of range 1s..168h"},
        {"tls:\n  ticket_key_rotation: 169h\n", 2, "out of range 1s..168h"},
        {"tls:\n  ticket_key_rotation: 1d\n", 2, "tls.ticket_key_rotation: bad duration '1d'"},
        {"tls:\n  expiry_warning: 87601h\n", 2,
         "tls.expiry_warning: '87601h' is out of range 0s..87600h"},
        {"tls:\n  expiry_warning: -1h\n", 2, "tls.expiry_warning: bad duration '-1h'"},
        {"tls:\n  redirect_http: true\n  redirect_http: false\n", 3,
         "duplicate key 'redirect_http' (first at line 2)"},
        /* YAML itself */
        {"listen: [\"127.0.0.1:80\"\ndomains: [a]\n", 2, "YAML syntax error"},
        {"workers: 1\n  log_level: info\n", 2, "YAML syntax error"},
        {"workers: 1\nlog_level: \"info\n", 3, "YAML syntax error"},
        {"workers: 1\n\tlog_level: info\n", 2, "YAML syntax error"},
        {"workers: *nothing\n", 1, "YAML syntax error"},
        {"workers: 1\n---\nworkers: 2\n", 2, "only one YAML document is allowed"},
        {"workers: 1\nlog_level: \xff\xfe\n", 2, "YAML syntax error"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        parse_err(cases[i].yaml, cases[i].line, cases[i].needle);
}

/* Checks each line of err against want[] (prefixes), and the count. */
static void assert_error_lines(const char *err, const char *const *want, size_t n)
{
    const char *p = err;
    for (size_t i = 0; i < n; i++) {
        if (strncmp(p, want[i], strlen(want[i])) != 0)
            fail_msg("line %zu: wanted '%s...' in:\n%s", i, want[i], err);
        const char *nl = strchr(p, '\n');
        if (i + 1 < n)
            assert_non_null(nl);
        else if (nl)
            fail_msg("more than %zu lines in:\n%s", n, err);
        p = nl ? nl + 1 : p;
    }
}

static void test_file_several_errors(void **state)
{
    const char *yaml = "listen:\n"
                       "  - 127.0.0.1:8080\n"
                       "  - nonsense\n"  /* 3 */
                       "workers: many\n" /* 4 */
                       "sandboxes:\n"
                       "  ok: 10.0.0.1\n"
                       "  BAD: 10.0.0.2\n" /* 7 */
                       "timeouts:\n"
                       "  request_head: forever\n" /* 9 */
                       "colour: blue\n";           /* 10 */
    char err[4096];
    sg_config_t *c = (sg_config_t *)1;
    assert_int_equal(sg_config_parse_text(yaml, strlen(yaml), "f.yaml", &c, err, sizeof(err)), -1);
    assert_null(c);
    const char *want[] = {"f.yaml:3: listen:", "f.yaml:4: workers:", "f.yaml:7: sandboxes:",
                          "f.yaml:9: timeouts.request_head:", "f.yaml:10: unknown key 'colour'"};
    const char *p = err;
    for (size_t i = 0; i < 5; i++) {
        if (strncmp(p, want[i], strlen(want[i])) != 0)
            fail_msg("line %zu: wanted '%s...' in:\n%s", i, want[i], err);
        const char *nl = strchr(p, '\n');
        if (i < 4)
            assert_non_null(nl);
        else
            assert_null(nl);
        p = nl ? nl + 1 : p;
    }

    /* Many errors are capped with a final notice. */
    sg_strbuf_t b = {0};
    sg_strbuf_append_cstr(&b, "sandboxes:\n");
    for (int i = 0; i < 50; i++) sg_strbuf_appendf(&b, "  X%d: 1.2.3.4\n", i);
    sg_strbuf_append(&b, "", 1);
    assert_int_equal(sg_config_parse_text(b.base, b.len - 1, "f.yaml", &c, err, sizeof(err)), -1);
    size_t lines = 1;
    for (const char *q = err; *q; q++) lines += *q == '\n';
    assert_int_equal(lines, SG_CONFIG__MAX_ERRORS);
    assert_non_null(strstr(err, "too many errors"));
    sg_strbuf_free(&b);

    /* A short buffer gets a truncated but terminated message. */
    char small[12];
    memset(small, 'x', sizeof(small));
    assert_int_equal(sg_config_parse_text("workers: x\n", 11, "f.yaml", &c, small, sizeof(small)),
                     -1);
    assert_string_equal(small, "f.yaml:1: w");
    /* And no buffer at all is allowed. */
    assert_int_equal(sg_config_parse_text("workers: x\n", 11, "f.yaml", &c, NULL, 0), -1);
}

/* Text is bounded by len, not by a NUL. */
static void test_parse_text_length(void **state)
{
    const char text[] = "workers: 3\nworkers: bogus\n";
    sg_config_t *c = parse_ok("workers: 3\n");
    sg_config_unref(c);
    char err[256];
    assert_int_equal(sg_config_parse_text(text, 11, "t.yaml", &c, err, sizeof(err)), 0);
    assert_int_equal(c->workers, 3);
    sg_config_unref(c);
}

/* ---- command line ---------------------------------------------------------- */

static void test_cli_no_flags_uses_embedded(void **state)
{
    sg_config_t *c = NULL;
    sg_config_actions_t a = {1, 1, 1};
    char err[1024];
    assert_int_equal(load(&c, &a, err, sizeof(err), (const char *)NULL), 0);
    assert_non_null(c);
    assert_int_equal(a.check_only + a.show_help + a.show_version, 0);
    assert_string_equal(c->source, "<embedded>");
    check_defaults(c);
    assert_int_equal(c->n_sandboxes, 1);
    assert_string_equal(c->sandboxes[0].id, "demo");
    sg_config_unref(c);
}

static const char file_yaml[] = "listen:\n"
                                "  - 127.0.0.1:7000\n"
                                "  - \"[::1]:7001\"\n"
                                "domains: [file.example]\n"
                                "workers: 2\n"
                                "log_level: error\n"
                                "sandboxes:\n"
                                "  keep: 10.0.0.1\n"
                                "  swap: {address: 10.0.0.2, mask: \"old:${PORT}\"}\n"
                                "timeouts:\n"
                                "  request_head: 7s\n"
                                "tls:\n"
                                "  certificates:\n"
                                "    - {cert: f1.pem, key: keys/f1.key}\n"
                                "    - {cert: /abs/f2.pem, key: f2.key, default: true}\n";

static void test_cli_config_file(void **state)
{
    char *path = temp_file(file_yaml);
    sg_config_t *c = NULL;
    char err[1024];
    assert_int_equal(LOAD(&c, err, "--config", path), 0);
    assert_string_equal(c->source, path);
    assert_int_equal(c->n_listens, 2);
    assert_string_equal(c->listens[1].text, "[::1]:7001");
    assert_string_equal(c->domains[0], "file.example");
    assert_int_equal(c->workers, 2);
    assert_int_equal(c->log_level, SG_LOG_ERROR);
    assert_int_equal(c->n_sandboxes, 2);
    assert_int_equal(c->timeouts.request_head_ms, 7000);
    assert_int_equal(c->timeouts.keepalive_idle_ms, 75000); /* untouched default */
    /* Relative certificate paths are resolved against the file's directory. */
    assert_int_equal(c->tls.n_certs, 2);
    assert_string_equal(c->tls.certs[0].chain, "/tmp/f1.pem");
    assert_string_equal(c->tls.certs[0].key, "/tmp/keys/f1.key");
    assert_int_equal(c->tls.certs[0].is_default, 0);
    assert_string_equal(c->tls.certs[1].chain, "/abs/f2.pem");
    assert_string_equal(c->tls.certs[1].key, "/tmp/f2.key");
    assert_int_equal(c->tls.certs[1].is_default, 1);
    sg_config_unref(c);

    /* --config=FILE form. */
    char flag[256];
    snprintf(flag, sizeof(flag), "--config=%s", path);
    assert_int_equal(LOAD(&c, err, flag), 0);
    assert_int_equal(c->workers, 2);
    sg_config_unref(c);
    drop_file(path);
}

static void test_cli_overrides(void **state)
{
    char *path = temp_file(file_yaml);
    sg_config_t *c = NULL;
    char err[1024];
    int rc = LOAD(&c, err, "--config", path, "--listen", "0.0.0.0:80", "--listen-tls=[::]:443",
                  "--listen", "10.0.0.9:81", "--domain", "A.example", "--domain=.b.example",
                  "--sandbox", "swap=fd00::2,mask=new-${PORT}.svc", "--sandbox=fresh=[::1]",
                  "--workers", "5", "--log-level=debug");
    if (rc != 0) fail_msg("%s", err);
    /* The first list flag replaced the file's list, later ones accumulated. */
    assert_int_equal(c->n_listens, 3);
    assert_addr(&c->listens[0].addr, AF_INET, "0.0.0.0", 80);
    assert_int_equal(c->listens[0].tls, 0);
    assert_string_equal(c->listens[1].text, "[::]:443");
    assert_addr(&c->listens[1].addr, AF_INET6, "::", 443);
    assert_int_equal(c->listens[1].tls, 1);
    assert_addr(&c->listens[2].addr, AF_INET, "10.0.0.9", 81);
    assert_int_equal(c->n_domains, 2);
    assert_string_equal(c->domains[0], "a.example");
    assert_string_equal(c->domains[1], "b.example");
    /* --sandbox merged by id: keep untouched, swap replaced, fresh added. */
    assert_int_equal(c->n_sandboxes, 3);
    const sg_sandbox_conf_t *sb = sandbox(c, "keep");
    assert_non_null(sb);
    assert_addr(&sb->addr, AF_INET, "10.0.0.1", 0);
    assert_non_null(sb = sandbox(c, "swap"));
    assert_addr(&sb->addr, AF_INET6, "fd00::2", 0);
    assert_string_equal(sb->mask, "new-${PORT}.svc");
    assert_non_null(sb = sandbox(c, "fresh"));
    assert_addr(&sb->addr, AF_INET6, "::1", 0);
    assert_null(sb->mask);
    assert_int_equal(c->workers, 5);
    assert_int_equal(c->log_level, SG_LOG_DEBUG);
    assert_int_equal(c->timeouts.request_head_ms, 7000); /* file value kept */
    sg_config_unref(c);

    /* A sandbox flag without mask replaces the file's masked entry entirely. */
    assert_int_equal(LOAD(&c, err, "--config", path, "--sandbox", "swap=10.9.9.9"), 0);
    assert_non_null(sb = sandbox(c, "swap"));
    assert_null(sb->mask);
    assert_int_equal(c->n_listens, 2); /* no --listen: file list kept */
    sg_config_unref(c);

    /* Only --listen-tls also replaces the list. */
    assert_int_equal(LOAD(&c, err, "--config", path, "--listen-tls", "127.0.0.1:8443"), 0);
    assert_int_equal(c->n_listens, 1);
    assert_int_equal(c->listens[0].tls, 1);
    sg_config_unref(c);

    /* --workers 0 resolves to the CPU count even over a file value. */
    assert_int_equal(LOAD(&c, err, "--config", path, "--workers=0"), 0);
    assert_int_equal(c->workers, cpus());
    sg_config_unref(c);
    drop_file(path);
}

static void test_cli_over_embedded(void **state)
{
    sg_config_t *c = NULL;
    char err[1024];
    assert_int_equal(LOAD(&c, err, "--sandbox", "box1=10.0.0.1", "--sandbox", "box2=10.0.0.2"), 0);
    /* The built-in demo (this host's loopback) does not survive real sandboxes. */
    assert_int_equal(c->n_sandboxes, 2);
    assert_null(sandbox(c, "demo"));
    assert_non_null(sandbox(c, "box1"));
    assert_non_null(sandbox(c, "box2"));
    assert_string_equal(c->listens[0].text, "127.0.0.1:8080");
    sg_config_unref(c);

    assert_int_equal(LOAD(&c, err, "--listen", "[::1]:9000", "--domain", "x.test"), 0);
    assert_int_equal(c->n_listens, 1);
    assert_string_equal(c->listens[0].text, "[::1]:9000");
    assert_int_equal(c->n_domains, 1);
    assert_string_equal(c->domains[0], "x.test");
    assert_non_null(sandbox(c, "demo"));
    sg_config_unref(c);
}

static void test_cli_sandbox_flag(void **state)
{
    static const struct {
        const char *spec;
        int family; /* 0: rejected */
        const char *ip;
        const char *mask;
        const char *needle; /* error text when rejected */
    } cases[] = {
        {"a=10.0.0.1", AF_INET, "10.0.0.1", NULL, NULL},
        {"a=::1", AF_INET6, "::1", NULL, NULL},
        {"a=[fd00::7]", AF_INET6, "fd00::7", NULL, NULL},
        {"a=fd00::7,mask=localhost:${PORT}", AF_INET6, "fd00::7", "localhost:${PORT}", NULL},
        {"a=[::1],mask=[::1]:${PORT}", AF_INET6, "::1", "[::1]:${PORT}", NULL},
        {"abc=10.0.0.1,mask=app.internal", AF_INET, "10.0.0.1", "app.internal", NULL},
        {"a", 0, NULL, NULL, "expected ID=ADDRESS[,mask=TEMPLATE]"},
        {"=10.0.0.1", 0, NULL, NULL, "sandbox id '' must be"},
        {"A=10.0.0.1", 0, NULL, NULL, "sandbox id 'A' must be"},
        {"a=", 0, NULL, NULL, "is not an IPv4 or IPv6 address"},
        {"a=host.example", 0, NULL, NULL, "is not an IPv4 or IPv6 address"},
        {"a=10.0.0.1:80", 0, NULL, NULL, "takes no port"},
        {"a=10.0.0.1,port=80", 0, NULL, NULL, "unknown option 'port=80'"},
        {"a=10.0.0.1,mask=", 0, NULL, NULL, "mask is empty"},
        {"a=10.0.0.1,mask=a b", 0, NULL, NULL, "mask may only contain"},
        {"a=10.0.0.1,mask=x,mask=y", 0, NULL, NULL, "mask given twice"},
        {"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa=10.0.0.1", 0, NULL,
         NULL, "must be 1..64"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        sg_config_t *c = NULL;
        char err[1024];
        int rc = LOAD(&c, err, "--sandbox", cases[i].spec);
        if (cases[i].family == 0) {
            if (rc != -1) fail_msg("'%s' should be rejected", cases[i].spec);
            assert_null(c);
            if (strncmp(err, "sandgate: --sandbox: ", 21) != 0 || !strstr(err, cases[i].needle))
                fail_msg("'%s': wanted '%s', got '%s'", cases[i].spec, cases[i].needle, err);
            continue;
        }
        if (rc != 0) fail_msg("'%s' rejected: %s", cases[i].spec, err);
        assert_int_equal(c->n_sandboxes, 1);
        assert_addr(&c->sandboxes[0].addr, cases[i].family, cases[i].ip, 0);
        if (cases[i].mask)
            assert_string_equal(c->sandboxes[0].mask, cases[i].mask);
        else
            assert_null(c->sandboxes[0].mask);
        sg_config_unref(c);
    }
}

static void test_cli_bad_flags(void **state)
{
    static const struct {
        const char *args[6];
        const char *error; /* whole message */
    } cases[] = {
        {{"--bogus"}, "sandgate: unknown flag '--bogus' (see --help)"},
        {{"--bogus=1"}, "sandgate: unknown flag '--bogus' (see --help)"},
        {{"-x"}, "sandgate: unknown flag '-x' (see --help)"},
        {{"stray"}, "sandgate: unexpected argument 'stray' (see --help)"},
        {{"--listen"}, "sandgate: --listen needs a value"},
        {{"--domain", "--workers", "2"}, "sandgate: --domain needs a value"},
        {{"--check-config=yes"}, "sandgate: --check-config takes no value"},
        {{"--workers", "many"}, "sandgate: --workers: expected a non-negative integer, got 'many'"},
        {{"--workers", "300"}, "sandgate: --workers: '300' is out of range 0..256"},
        {{"--workers="}, "sandgate: --workers: expected a non-negative integer, got ''"},
        {{"--log-level", "loud"},
         "sandgate: --log-level: expected debug, info, warn or error, got 'loud'"},
        {{"--listen", "localhost:80"},
         "sandgate: --listen: 'localhost' is not an IPv4 address (use [..] for IPv6)"},
        {{"--listen-tls", "[::1]"},
         "sandgate: --listen-tls: expected [IPv6]:PORT, e.g. [::1]:8080, got '[::1]'"},
        {{"--domain", "bad_domain"},
         "sandgate: --domain: domain 'bad_domain' may only contain letters, digits, '-' and '.'"},
        {{"--listen", "127.0.0.1:1", "--listen-tls", "127.0.0.1:1", "--tls-cert", "c.pem,k.pem"},
         "sandgate: duplicate listen address '127.0.0.1:1'"},
        {{"--listen-tls", "127.0.0.1:8443"},
         "sandgate: TLS listener 127.0.0.1:8443 needs tls.certificates"},
        {{"--redirect-http=yes"}, "sandgate: --redirect-http takes no value"},
        {{"--tls-cert"}, "sandgate: --tls-cert needs a value"},
        {{"--tls-cert", "a.pem"},
         "sandgate: --tls-cert: expected CHAIN,KEY (two PEM file paths), got 'a.pem'"},
        {{"--tls-cert", ",a.key"},
         "sandgate: --tls-cert: CHAIN path is empty in ',a.key' (expected CHAIN,KEY)"},
        {{"--tls-cert", "a.pem,"},
         "sandgate: --tls-cert: KEY path is empty in 'a.pem,' (expected CHAIN,KEY)"},
        {{"--tls-cert="}, "sandgate: --tls-cert: expected CHAIN,KEY (two PEM file paths), got ''"},
        {{"--tls-cert", ","},
         "sandgate: --tls-cert: CHAIN path is empty in ',' (expected CHAIN,KEY)"},
        {{"--tls-cert", "a,b,c"},
         "sandgate: --tls-cert: expected exactly one ',' between CHAIN and KEY, got 'a,b,c' "
         "(paths with ',' go in the file's tls.certificates)"},
        {{"--domain", "a.b", "--domain", "A.B."}, "sandgate: duplicate domain 'a.b'"},
        {{"--sandbox", "a=10.0.0.1", "--sandbox", "a=10.0.0.2"},
         "sandgate: --sandbox: 'a' given more than once"},
        {{"--config", "/nonexistent/sg.yaml"},
         "sandgate: cannot read config file '/nonexistent/sg.yaml': No such file or directory"},
        {{"--config", "a.yaml", "--config", "b.yaml"}, "sandgate: --config given more than once"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        sg_config_t *c = (sg_config_t *)1;
        sg_config_actions_t a;
        char err[1024];
        const char *const *v = cases[i].args;
        int rc =
            load(&c, &a, err, sizeof(err), v[0], v[1], v[2], v[3], v[4], v[5], (const char *)NULL);
        if (rc != -1) fail_msg("case %zu (%s) should fail", i, v[0]);
        assert_null(c);
        if (strcmp(err, cases[i].error) != 0)
            fail_msg("case %zu: wanted\n  %s\ngot\n  %s", i, cases[i].error, err);
    }

    /* Several flag errors are all reported. */
    sg_config_t *c = NULL;
    char err[1024];
    assert_int_equal(LOAD(&c, err, "--workers", "x", "--log-level", "y"), -1);
    assert_non_null(strstr(err, "sandgate: --workers:"));
    assert_non_null(strstr(err, "\nsandgate: --log-level:"));
}

static void test_cli_file_errors_have_lines(void **state)
{
    char *path = temp_file("workers: 2\n\nsandboxes:\n  demo: 10.0.0.1\n  demo: 10.0.0.2\n");
    sg_config_t *c = NULL;
    char err[1024], want[512];
    assert_int_equal(LOAD(&c, err, "--config", path, "--workers", "3"), -1);
    assert_null(c);
    snprintf(want, sizeof(want), "%s:5: sandboxes: duplicate sandbox id 'demo' (first at line 4)",
             path);
    assert_string_equal(err, want);
    drop_file(path);
}

static void test_cli_actions(void **state)
{
    sg_config_t *c = (sg_config_t *)1;
    sg_config_actions_t a;
    char err[1024];
    /* Help answers even when values or the file are wrong. */
    assert_int_equal(load(&c, &a, err, sizeof(err), "--workers", "x", "--config", "/nonexistent",
                          "--help", (const char *)NULL),
                     0);
    assert_null(c);
    assert_int_equal(a.show_help, 1);
    assert_int_equal(a.show_version, 0);
    assert_int_equal(load(&c, &a, err, sizeof(err), "-h", (const char *)NULL), 0);
    assert_int_equal(a.show_help, 1);
    assert_int_equal(load(&c, &a, err, sizeof(err), "--version", (const char *)NULL), 0);
    assert_null(c);
    assert_int_equal(a.show_version, 1);
    assert_int_equal(a.show_help, 0);
    /* But not when the flags themselves are malformed. */
    assert_int_equal(load(&c, &a, err, sizeof(err), "--help", "--nope", (const char *)NULL), -1);

    assert_int_equal(load(&c, &a, err, sizeof(err), "--check-config", (const char *)NULL), 0);
    assert_non_null(c);
    assert_int_equal(a.check_only, 1);
    assert_int_equal(a.show_help + a.show_version, 0);
    sg_config_unref(c);

    /* actions may be NULL. */
    assert_int_equal(load(&c, NULL, err, sizeof(err), "--check-config", (const char *)NULL), 0);
    sg_config_unref(c);
}

static void test_usage_lists_every_flag(void **state)
{
    const char *flags[] = {"--config FILE",
                           "--listen ADDR:PORT",
                           "--listen-tls ADDR:PORT",
                           "--domain",
                           "--sandbox ID=ADDR[,mask=",
                           "--workers N",
                           "--log-level",
                           "--check-config",
                           "--version",
                           "--help",
                           "--tls-cert CHAIN,KEY",
                           "--redirect-http",
                           "--log-format FORMAT",
                           "--access-log DEST",
                           "--drain-timeout DURATION",
                           "--admin-listen ADDR:PORT",
                           "--admin-token TOKEN",
                           "--admin-store PATH",
                           "--dns-zone ZONE",
                           "--dns-server ADDR[:PORT]"};
    for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++)
        if (!strstr(sg_config_usage, flags[i])) fail_msg("usage lacks %s", flags[i]);
}

/* ---- tls ------------------------------------------------------------------- */

static char *cwd_join(const char *rel)
{
    char cwd[4096], *out;
    assert_non_null(getcwd(cwd, sizeof(cwd)));
    size_t n = strlen(cwd) + strlen(rel) + 2;
    out = malloc(n);
    assert_non_null(out);
    snprintf(out, n, "%s%s%s", cwd, strcmp(cwd, "/") == 0 ? "" : "/", rel);
    return out;
}

static void test_tls_path_resolution(void **state)
{
    static const struct {
        const char *source;
        const char *path;
        const char *want; /* leading '+': relative to the working directory */
    } cases[] = {
        {"/etc/sandgate/sandgate.yaml", "certs/a.pem", "/etc/sandgate/certs/a.pem"},
        {"/etc/sandgate/sandgate.yaml", "./a.pem", "/etc/sandgate/a.pem"},
        {"/etc/sandgate/sandgate.yaml", "../a.pem", "/etc/sandgate/../a.pem"},
        {"/etc/sandgate/sandgate.yaml", "/srv/a.pem", "/srv/a.pem"},
        {"/sandgate.yaml", "a.pem", "/a.pem"},
        {"conf/sg.yaml", "a.pem", "+conf/a.pem"},
        {"./sg.yaml", "a.pem", "+a.pem"},
        {"t.yaml", "a.pem", "+a.pem"},
        {"t.yaml", "/a.pem", "/a.pem"},
        {"<embedded>", "x/a.pem", "+x/a.pem"},
        {"<odd/name>", "a.pem", "+a.pem"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char yaml[256], err[1024] = "";
        snprintf(yaml, sizeof(yaml), "tls: {certificates: [{cert: \"%s\", key: \"%s\"}]}\n",
                 cases[i].path, cases[i].path);
        sg_config_t *c = NULL;
        if (sg_config_parse_text(yaml, strlen(yaml), cases[i].source, &c, err, sizeof(err)) != 0)
            fail_msg("case %zu: %s", i, err);
        char *want = cases[i].want[0] == '+' ? cwd_join(cases[i].want + 1) : strdup(cases[i].want);
        assert_int_equal(c->tls.n_certs, 1);
        if (strcmp(c->tls.certs[0].chain, want) != 0)
            fail_msg("case %zu: %s + %s: wanted %s, got %s", i, cases[i].source, cases[i].path,
                     want, c->tls.certs[0].chain);
        assert_string_equal(c->tls.certs[0].key, want);
        free(want);
        sg_config_unref(c);
    }
    /* Paths are absolute in the snapshot, so a dump read back under another
     * name yields the same files. */
    const char *yaml = "tls: {certificates: [{cert: a.pem, key: k/a.key}]}\n";
    sg_config_t *a = NULL, *b = NULL;
    char err[1024];
    assert_int_equal(sg_config_parse_text(yaml, strlen(yaml), "conf/sg.yaml", &a, err, sizeof(err)),
                     0);
    char *text = sg_config_dump(a);
    assert_int_equal(
        sg_config_parse_text(text, strlen(text), "/elsewhere/x.yaml", &b, err, sizeof(err)), 0);
    assert_string_equal(a->tls.certs[0].chain, b->tls.certs[0].chain);
    assert_string_equal(a->tls.certs[0].key, b->tls.certs[0].key);
    free(text);
    sg_config_unref(a);
    sg_config_unref(b);
}

static void test_tls_default_certificate(void **state)
{
    /* None marked: the first becomes the default. */
    sg_config_t *c = parse_ok("tls:\n  certificates:\n    - {cert: /a.pem, key: /a.key}\n"
                              "    - {cert: /b.pem, key: /b.key, default: false}\n");
    assert_int_equal(c->tls.n_certs, 2);
    assert_int_equal(c->tls.certs[0].is_default, 1);
    assert_int_equal(c->tls.certs[1].is_default, 0);
    sg_config_unref(c);
    /* One marked: only that one. */
    c = parse_ok("tls:\n  certificates:\n    - {cert: /a.pem, key: /a.key, default: off}\n"
                 "    - {cert: /b.pem, key: /b.key, default: TRUE}\n");
    assert_int_equal(c->tls.certs[0].is_default, 0);
    assert_int_equal(c->tls.certs[1].is_default, 1);
    sg_config_unref(c);
}

static void test_tls_listener_needs_certificates(void **state)
{
    char err[1024];
    sg_config_t *c = (sg_config_t *)1;
    const char *yaml = "listen:\n  - 127.0.0.1:80\n  - {address: \"[::]:443\", tls: true}\n"
                       "  - {address: \"[::]:8443\", tls: true}\n";
    assert_int_equal(sg_config_parse_text(yaml, strlen(yaml), "t.yaml", &c, err, sizeof(err)), -1);
    assert_null(c);
    assert_string_equal(err, "t.yaml: TLS listener [::]:443 needs tls.certificates");
    /* An empty list is no better. */
    yaml = "listen: [{address: \"[::]:443\", tls: true}]\ntls: {certificates: []}\n";
    assert_int_equal(sg_config_parse_text(yaml, strlen(yaml), "t.yaml", &c, err, sizeof(err)), -1);
    assert_string_equal(err, "t.yaml: TLS listener [::]:443 needs tls.certificates");
    /* Reported with the other whole-snapshot problems. */
    assert_int_equal(LOAD(&c, err, "--listen-tls", "127.0.0.1:1", "--listen-tls", "127.0.0.1:1"),
                     -1);
    assert_null(c);
    assert_string_equal(err, "sandgate: duplicate listen address '127.0.0.1:1'\n"
                             "sandgate: TLS listener 127.0.0.1:1 needs tls.certificates");
    /* Certificates without a TLS listener are fine (they wait for one). */
    c = parse_ok("tls: {certificates: [{cert: a.pem, key: a.key}], redirect_http: yes}\n");
    assert_int_equal(c->tls.n_certs, 1);
    assert_int_equal(c->tls.redirect_http, 1);
    sg_config_unref(c);
    /* A file-level mistake and a missing certificate: only the file error
     * (finish runs on a valid file only). */
    yaml = "listen: [{address: \"[::]:443\", tls: true}]\n"
           "tls:\n  certificates:\n    - {cert: a.pem}\n";
    assert_int_equal(sg_config_parse_text(yaml, strlen(yaml), "t.yaml", &c, err, sizeof(err)), -1);
    assert_string_equal(err, "t.yaml:4: tls.certificates: item lacks 'key'");
}

static void test_tls_several_errors(void **state)
{
    /* Every problem in one item is reported, and a bad item does not stop
     * the ones after it; the valid items parsed before are freed (LSan). */
    const char *yaml = "tls:\n"
                       "  certificates:\n"
                       "    - {cert: ok.pem, key: ok.key}\n"              /* 3 */
                       "    - {default: true}\n"                          /* 4: lacks cert, key */
                       "    - {cert: \"\", key: b.key, x: 1}\n"           /* 5: empty, unknown */
                       "    - {cert: c.pem, key: c.key, default: true}\n" /* 6 */
                       "  handshake_timeout: 0\n"                         /* 7 */
                       "  redirect_http: maybe\n";                        /* 8 */
    char err[4096];
    sg_config_t *c = (sg_config_t *)1;
    assert_int_equal(sg_config_parse_text(yaml, strlen(yaml), "f.yaml", &c, err, sizeof(err)), -1);
    assert_null(c);
    const char *want[] = {
        "f.yaml:4: tls.certificates: item lacks 'cert'",
        "f.yaml:4: tls.certificates: item lacks 'key'",
        "f.yaml:5: tls.certificates.cert: path is empty",
        "f.yaml:5: unknown key 'tls.certificates.x'",
        "f.yaml:6: tls.certificates: only one certificate may be the default (first at line 4)",
        "f.yaml:7: tls.handshake_timeout: '0' is out of range",
        "f.yaml:8: tls.redirect_http: expected true or false, got 'maybe'",
    };
    assert_error_lines(err, want, sizeof(want) / sizeof(want[0]));
}

static void test_cli_tls(void **state)
{
    sg_config_t *c = NULL;
    char err[1024];
    char *abs_a = cwd_join("a.pem"), *abs_ak = cwd_join("keys/a.key");
    /* Over the embedded default: a TLS listener with a flag certificate. */
    int rc = LOAD(&c, err, "--listen-tls", "127.0.0.1:8443", "--tls-cert", "a.pem,keys/a.key",
                  "--tls-cert=/b/chain.pem,/b/key.pem", "--redirect-http");
    if (rc != 0) fail_msg("%s", err);
    assert_int_equal(c->tls.n_certs, 2);
    assert_string_equal(c->tls.certs[0].chain, abs_a);
    assert_string_equal(c->tls.certs[0].key, abs_ak);
    assert_int_equal(c->tls.certs[0].is_default, 1);
    assert_string_equal(c->tls.certs[1].chain, "/b/chain.pem");
    assert_string_equal(c->tls.certs[1].key, "/b/key.pem");
    assert_int_equal(c->tls.certs[1].is_default, 0);
    assert_int_equal(c->tls.redirect_http, 1);
    sg_config_unref(c);

    /* Over a file: the first --tls-cert replaces the file's list (whose
     * second entry was the default); later ones add to it. */
    char *path = temp_file(file_yaml);
    assert_int_equal(LOAD(&c, err, "--config", path, "--tls-cert", "/x.pem,/x.key"), 0);
    assert_int_equal(c->tls.n_certs, 1);
    assert_string_equal(c->tls.certs[0].chain, "/x.pem");
    assert_int_equal(c->tls.certs[0].is_default, 1);
    assert_int_equal(c->tls.redirect_http, 0);
    sg_config_unref(c);
    assert_int_equal(LOAD(&c, err, "--config", path, "--tls-cert", "/x.pem,/x.key", "--tls-cert",
                          "/y.pem,/y.key"),
                     0);
    assert_int_equal(c->tls.n_certs, 2);
    assert_int_equal(c->tls.certs[0].is_default, 1);
    assert_string_equal(c->tls.certs[1].key, "/y.key");
    assert_int_equal(c->tls.certs[1].is_default, 0);
    sg_config_unref(c);
    /* Without the flag the file's list and default stay. */
    assert_int_equal(LOAD(&c, err, "--config", path, "--listen-tls", "127.0.0.1:8443"), 0);
    assert_int_equal(c->tls.n_certs, 2);
    assert_int_equal(c->tls.certs[0].is_default, 0);
    assert_int_equal(c->tls.certs[1].is_default, 1);
    sg_config_unref(c);
    /* A bad --tls-cert after good ones: everything built so far is freed. */
    assert_int_equal(
        LOAD(&c, err, "--config", path, "--tls-cert", "/x.pem,/x.key", "--tls-cert", "/y.pem"), -1);
    assert_null(c);
    assert_string_equal(
        err, "sandgate: --tls-cert: expected CHAIN,KEY (two PEM file paths), got '/y.pem'");
    drop_file(path);
    free(abs_a);
    free(abs_ak);
}

static void test_tls_restart_key(void **state)
{
    const char *base = "listen: [{address: \"127.0.0.1:8443\", tls: true}]\n"
                       "tls:\n  certificates: [{cert: /a.pem, key: /a.key}]\n";
    char yaml[512];
    sg_config_t *a = parse_ok(base);
    /* Certificates, timeouts, warnings and redirects change on reload. */
    snprintf(yaml, sizeof(yaml), "%s%s", base,
             "  handshake_timeout: 3s\n  expiry_warning: 1h\n  redirect_http: true\n");
    sg_config_t *b = parse_ok(yaml);
    assert_null(sg_config_restart_key(a, b));
    sg_config_unref(b);
    b = parse_ok("listen: [{address: \"127.0.0.1:8443\", tls: true}]\n"
                 "tls:\n  certificates: [{cert: /b.pem, key: /b.key}, {cert: /c.pem, key: /c.key,"
                 " default: true}]\n");
    assert_null(sg_config_restart_key(a, b));
    sg_config_unref(b);
    /* main re-arms the ticket timer on reload, so the period may change. */
    snprintf(yaml, sizeof(yaml), "%s%s", base, "  ticket_key_rotation: 2h\n");
    b = parse_ok(yaml);
    assert_null(sg_config_restart_key(a, b));
    sg_config_unref(b);
    sg_config_unref(a);
}

/* ---- dump, reload, refcount ------------------------------------------------ */

static void test_dump_round_trip(void **state)
{
    sg_config_t *a =
        parse_ok("listen: [\"[::1]:81\", {address: 10.0.0.1:443, tls: yes}]\n"
                 "domains: [x.test, y.test]\n"
                 "workers: 3\n"
                 "log_level: debug\n"
                 "sandboxes:\n"
                 "  one: 10.0.0.1\n"
                 "  two: {address: \"fd00::2\", mask: \"h-${PORT}.svc:8080\"}\n"
                 "timeouts: {request_head: 1500ms, stream_idle: 2h, upstream_idle: 61s,"
                 " upstream_retry_window: 0}\n"
                 "limits: {max_header_size: 3000, upstream_pool_idle_per_key: 4}\n"
                 "tls:\n"
                 "  certificates:\n"
                 "    - {cert: /c/a.pem, key: /c/a.key}\n"
                 "    - {cert: \"/c/b \\\"q\\\".pem\", key: rel/b.key, default: true}\n"
                 "  handshake_timeout: 1500ms\n"
                 "  ticket_key_rotation: 90m\n"
                 "  expiry_warning: 2160h\n"
                 "  redirect_http: on\n");
    char *text = sg_config_dump(a);
    assert_non_null(strstr(text, "request_head: 1500ms\n"));
    assert_non_null(strstr(text, "stream_idle: 2h\n"));
    assert_non_null(strstr(text, "max_header_size: 3000\n"));
    assert_non_null(strstr(text, "mask: \"h-${PORT}.svc:8080\""));
    assert_non_null(strstr(text, "\ntls:\n  certificates:\n"
                                 "    - {cert: \"/c/a.pem\", key: \"/c/a.key\", default: false}\n"
                                 "    - {cert: \"/c/b \\\"q\\\".pem\", key: \""));
    assert_non_null(strstr(text, "/rel/b.key\", default: true}\n"));
    assert_non_null(strstr(text, "  handshake_timeout: 1500ms\n  ticket_key_rotation: 90m\n"
                                 "  expiry_warning: 2160h\n  redirect_http: true\n"));
    sg_config_t *b = parse_ok(text);
    char *again = sg_config_dump(b);
    /* Same text apart from the source named in the first line. */
    assert_string_equal(strchr(text, '\n'), strchr(again, '\n'));
    assert_int_equal(b->workers, 3);
    assert_int_equal(b->listens[1].tls, 1);
    assert_int_equal(b->timeouts.upstream_idle_ms, 61000);
    assert_int_equal(b->tls.n_certs, 2);
    assert_string_equal(b->tls.certs[1].chain, "/c/b \"q\".pem");
    assert_string_equal(b->tls.certs[1].key, a->tls.certs[1].key);
    assert_int_equal(b->tls.certs[0].is_default, 0);
    assert_int_equal(b->tls.certs[1].is_default, 1);
    assert_int_equal(b->tls.handshake_timeout_ms, 1500);
    assert_int_equal(b->tls.ticket_key_rotation_ms, 90 * 60000);
    assert_int_equal(b->tls.expiry_warning_ms, 2160ull * 3600000);
    assert_int_equal(b->tls.redirect_http, 1);
    assert_null(sg_config_restart_key(a, b));
    free(text);
    free(again);
    sg_config_unref(a);
    sg_config_unref(b);

    /* Defaults dump to text that parses back to defaults. */
    a = parse_ok("sandboxes: {}\n");
    text = sg_config_dump(a);
    assert_non_null(strstr(text, "sandboxes: {}\n"));
    assert_non_null(strstr(text, "tls:\n  certificates: []\n"));
    assert_non_null(strstr(text, "  redirect_http: false\n"));
    b = parse_ok(text);
    check_defaults(b);
    free(text);
    sg_config_unref(a);
    sg_config_unref(b);
}

static void test_restart_key(void **state)
{
    sg_config_t *a = parse_ok("workers: 2\n");
    sg_config_t *b = parse_ok("workers: 2\nlog_level: debug\ntimeouts: {request_head: 1s}\n"
                              "domains: [z.test]\nsandboxes: {q: 10.0.0.1}\n");
    assert_null(sg_config_restart_key(a, b)); /* all reloadable */
    sg_config_unref(b);
    b = parse_ok("workers: 3\n");
    assert_string_equal(sg_config_restart_key(a, b), "workers");
    sg_config_unref(b);
    b = parse_ok("workers: 2\nlisten: [\"127.0.0.1:8081\"]\n");
    assert_string_equal(sg_config_restart_key(a, b), "listen");
    sg_config_unref(b);
    b = parse_ok("workers: 2\nlisten: [{address: \"127.0.0.1:8080\", tls: true}]\n"
                 "tls: {certificates: [{cert: a.pem, key: a.key}]}\n");
    assert_string_equal(sg_config_restart_key(a, b), "listen");
    sg_config_unref(b);
    sg_config_unref(a);
}

static void test_refcount(void **state)
{
    sg_config_t *c = parse_ok("sandboxes: {a: {address: 10.0.0.1, mask: \"m-${PORT}\"}}\n");
    assert_int_equal(atomic_load(&c->refs), 1);
    sg_config_ref(c);
    sg_config_ref(c);
    assert_int_equal(atomic_load(&c->refs), 3);
    sg_config_unref(c);
    sg_config_unref(c);
    assert_int_equal(atomic_load(&c->refs), 1);
    assert_string_equal(c->sandboxes[0].mask, "m-${PORT}"); /* still alive */
    sg_config_unref(c); /* frees; LeakSanitizer proves nothing is left */
    sg_config_unref(NULL);
}

/* ---- admin, dns, lookup_order, logging ------------------------------------- */

static void test_new_keys(void **state)
{
    char *store = cwd_join("state/s.wal"), *alog = cwd_join("logs/access.log");
    sg_config_t *c =
        parse_ok("listen:\n"
                 "  - \"127.0.0.1:80\"\n"
                 "  - {address: \"[::]:81\", proxy_protocol: true}\n"
                 "  - address: 10.0.0.1:82\n"
                 "    max_connections: 10000000\n"
                 "    proxy_protocol: no\n"
                 "log_format: json\n"
                 "access_log: logs/access.log\n"
                 "drain_timeout: 0\n"
                 "token_header: X-E2B_Token~1\n"
                 "lookup_order: [dns, static, admin]\n"
                 "admin:\n"
                 "  listen:\n"
                 "    - \"127.0.0.1:9901\"\n"
                 "    - {address: \"[::1]:9902\", max_connections: 5}\n"
                 "    - 0.0.0.0:9903\n"
                 "  token: \"s3cr3t-T0ken/+=\"\n"
                 "  store: state/s.wal\n"
                 "dns:\n"
                 "  zone: Sandboxes.Example.COM.\n"
                 "  servers: [10.0.0.53, \"10.0.0.54:5353\", \"fd00::53\", \"[fd00::54]\","
                 " \"[fd00::55]:5300\"]\n"
                 "  timeout: 250ms\n"
                 "  tries: 10\n"
                 "  ttl_min: 0\n"
                 "  ttl_max: 168h\n"
                 "  negative_ttl: 1h\n");
    assert_int_equal(c->n_listens, 3);
    assert_int_equal(c->listens[0].proxy_protocol, 0);
    assert_int_equal(c->listens[0].max_connections, 0);
    assert_int_equal(c->listens[1].proxy_protocol, 1);
    assert_int_equal(c->listens[1].tls, 0);
    assert_int_equal(c->listens[2].proxy_protocol, 0);
    assert_int_equal(c->listens[2].max_connections, 10000000);
    assert_int_equal(c->log_json, 1);
    assert_string_equal(c->access_log, alog); /* relative: against the file's directory */
    assert_int_equal(c->drain_timeout_ms, 0);
    assert_string_equal(c->token_header, "X-E2B_Token~1");
    assert_int_equal(c->admin.n_listens, 3);
    assert_string_equal(c->admin.listens[0].text, "127.0.0.1:9901");
    assert_addr(&c->admin.listens[1].addr, AF_INET6, "::1", 9902);
    assert_int_equal(c->admin.listens[1].max_connections, 5);
    assert_int_equal(c->admin.listens[1].tls, 0);
    assert_addr(&c->admin.listens[2].addr, AF_INET, "0.0.0.0", 9903);
    assert_string_equal(c->admin.token, "s3cr3t-T0ken/+=");
    assert_string_equal(c->admin.store_path, store);
    assert_string_equal(c->dns.zone, "sandboxes.example.com");
    assert_int_equal(c->dns.n_servers, 5);
    assert_addr(&c->dns.servers[0], AF_INET, "10.0.0.53", 53);
    assert_addr(&c->dns.servers[1], AF_INET, "10.0.0.54", 5353);
    assert_addr(&c->dns.servers[2], AF_INET6, "fd00::53", 53);
    assert_addr(&c->dns.servers[3], AF_INET6, "fd00::54", 53);
    assert_addr(&c->dns.servers[4], AF_INET6, "fd00::55", 5300);
    assert_int_equal(c->dns.timeout_ms, 250);
    assert_int_equal(c->dns.tries, 10);
    assert_int_equal(c->dns.ttl_min_ms, 0);
    assert_int_equal(c->dns.ttl_max_ms, 168ull * 3600000);
    assert_int_equal(c->dns.negative_ttl_ms, 3600000);
    assert_int_equal(c->n_lookup_order, 3);
    assert_int_equal(c->lookup_order[0], SG_SOURCE_DNS);
    assert_int_equal(c->lookup_order[1], SG_SOURCE_STATIC);
    assert_int_equal(c->lookup_order[2], SG_SOURCE_ADMIN);
    sg_config_unref(c);

    /* Keywords and absolute paths; ranges at their other ends. */
    c = parse_ok("access_log: \"OFF\"\nlog_format: text\ndrain_timeout: 1h\n"
                 "admin: {store: /var/lib/sg.wal}\n"
                 "dns: {timeout: 60s, tries: 1, ttl_min: 24h, ttl_max: 24h, negative_ttl: 0}\n");
    assert_string_equal(c->access_log, "off");
    assert_int_equal(c->log_json, 0);
    assert_int_equal(c->drain_timeout_ms, 3600000);
    assert_string_equal(c->admin.store_path, "/var/lib/sg.wal");
    assert_int_equal(c->dns.timeout_ms, 60000);
    assert_int_equal(c->dns.tries, 1);
    assert_int_equal(c->dns.ttl_max_ms, c->dns.ttl_min_ms);
    sg_config_unref(c);
    c = parse_ok("access_log: Stdout\n");
    assert_string_equal(c->access_log, "stdout");
    sg_config_unref(c);
    c = parse_ok("access_log: ./off\n");
    char *off = cwd_join("off");
    assert_string_equal(c->access_log, off);
    free(off);
    sg_config_unref(c);
    /* Paths follow the config file, like certificates. */
    const char *yaml = "access_log: a.log\nadmin: {store: ../s.wal}\n";
    char err[1024];
    assert_int_equal(
        sg_config_parse_text(yaml, strlen(yaml), "/etc/sg/sg.yaml", &c, err, sizeof(err)), 0);
    assert_string_equal(c->access_log, "/etc/sg/a.log");
    assert_string_equal(c->admin.store_path, "/etc/sg/../s.wal");
    sg_config_unref(c);
    free(store);
    free(alog);
}

static void test_new_key_errors(void **state)
{
    static const struct {
        const char *yaml;
        size_t line;
        const char *needle;
    } cases[] = {
        /* listen items */
        {"listen:\n  - {address: 127.0.0.1:80, proxy_protocol: maybe}\n", 2,
         "listen.proxy_protocol: expected true or false, got 'maybe'"},
        {"listen:\n  - address: 127.0.0.1:80\n    max_connections: 10000001\n", 3,
         "listen.max_connections: '10000001' is out of range 0..10000000"},
        {"listen:\n  - address: 127.0.0.1:80\n    max_connections: -1\n", 3,
         "listen.max_connections: expected a non-negative integer, got '-1'"},
        {"listen:\n  - address: 127.0.0.1:80\n    max_connections: [1]\n", 3,
         "listen.max_connections: expected a single value, got a list"},
        {"listen:\n  - {address: 127.0.0.1:80, proxy: true}\n", 2,
         "unknown key 'listen.proxy' (expected address, tls, proxy_protocol, max_connections)"},
        /* logging, drain, token header */
        {"workers: 1\nlog_format: JSON\n", 2, "log_format: expected text or json, got 'JSON'"},
        {"log_format:\n", 1, "log_format: missing value"},
        {"access_log: \"\"\n", 1, "access_log: value is empty"},
        {"access_log:\n", 1, "access_log: missing value"},
        {"access_log: [a]\n", 1, "access_log: expected a single value, got a list"},
        {"drain_timeout: 61m\n", 1, "drain_timeout: '61m' is out of range 0s..1h"},
        {"drain_timeout: soon\n", 1, "drain_timeout: bad duration 'soon'"},
        {"token_header: \"X Token\"\n", 1, "token_header: 'X Token' is not a header name"},
        {"token_header: \"X-Token:\"\n", 1, "'X-Token:' is not a header name"},
        {"token_header: \"\"\n", 1, "token_header: value is empty"},
        {"token_header:\n", 1, "token_header: missing value"},
        /* lookup_order */
        {"\nlookup_order: [static, cache]\n", 2,
         "lookup_order: unknown source 'cache' (expected static, admin or dns)"},
        {"lookup_order:\n  - dns\n  - Static\n", 3, "lookup_order: unknown source 'Static'"},
        {"lookup_order:\n  - dns\n  - static\n  - dns\n", 4, "lookup_order: 'dns' is listed twice"},
        {"lookup_order: []\n", 1, "lookup_order: needs at least one item"},
        {"lookup_order:\n", 1, "lookup_order: needs at least one item"},
        {"lookup_order: static\n", 1, "lookup_order: expected a list, got a single value"},
        /* admin */
        {"admin: [127.0.0.1:9901]\n", 1, "admin: expected a mapping, got a list"},
        {"admin:\n  listen: 127.0.0.1:9901\n", 2, "admin.listen: expected a list"},
        {"admin:\n  listen:\n    - localhost:9901\n", 3,
         "admin.listen: 'localhost' is not an IPv4 address"},
        {"admin:\n  listen:\n    - {address: 127.0.0.1:9901, tls: true}\n", 3,
         "unknown key 'admin.listen.tls' (expected address, max_connections)"},
        {"admin:\n  listen:\n    - address: 127.0.0.1:9901\n      proxy_protocol: true\n", 4,
         "unknown key 'admin.listen.proxy_protocol'"},
        {"admin:\n  listen:\n    - {address: 127.0.0.1:9901, max_connections: x}\n", 3,
         "admin.listen.max_connections: expected a non-negative integer"},
        {"admin:\n  listen:\n    - 127.0.0.1:9901\n    - 127.0.0.1:9901\n", 4,
         "admin.listen: duplicate address '127.0.0.1:9901'"},
        {"admin:\n  listen:\n    - {max_connections: 1}\n", 3,
         "admin.listen: item lacks 'address'"},
        {"admin:\n  token: \"\"\n", 2, "admin.token: value is empty"},
        {"admin:\n  store: \"\"\n", 2, "admin.store: value is empty"},
        {"admin:\n  store: [a]\n", 2, "admin.store: expected a single value, got a list"},
        {"admin:\n  port: 9901\n", 2, "unknown key 'admin.port'"},
        {"admin.token: x\n", 1, "unknown key 'admin.token'"},
        /* dns */
        {"dns:\n  zone: bad_zone.example\n", 2, "dns.zone: domain 'bad_zone.example' may only"},
        {"dns:\n  zone: \"\"\n", 2, "dns.zone: value is empty"},
        {"dns:\n  servers: 10.0.0.53\n", 2, "dns.servers: expected a list"},
        {"dns:\n  servers:\n    - 10.0.0.53\n    - ns1.example.com\n", 4,
         "dns.servers: 'ns1.example.com' is not an IPv4 or IPv6 address"},
        {"dns:\n  servers: [\"10.0.0.53:0\"]\n", 2, "dns.servers: port in '10.0.0.53:0' must be"},
        {"dns:\n  servers: [\"[fd00::53\"]\n", 2, "lacks the ']' closing the IPv6 address"},
        {"dns:\n  servers: [\"\"]\n", 2, "dns.servers: server address is empty"},
        {"dns:\n  servers:\n    - 10.0.0.53\n    - \"10.0.0.53:53\"\n", 4,
         "dns.servers: duplicate server '10.0.0.53:53'"},
        {"dns:\n  servers: [{a: b}]\n", 2, "dns.servers: expected a single value, got a mapping"},
        {"dns:\n  timeout: 0\n", 2, "dns.timeout: '0' is out of range 1ms..1m"},
        {"dns:\n  timeout: 61s\n", 2, "dns.timeout: '61s' is out of range 1ms..1m"},
        {"dns:\n  tries: 0\n", 2, "dns.tries: '0' is out of range 1..10"},
        {"dns:\n  tries: 11\n", 2, "dns.tries: '11' is out of range 1..10"},
        {"dns:\n  ttl_min: 25h\n", 2, "dns.ttl_min: '25h' is out of range 0s..24h"},
        {"dns:\n  ttl_max: 999ms\n", 2, "dns.ttl_max: '999ms' is out of range 1s..168h"},
        {"dns:\n  ttl_max: 169h\n", 2, "dns.ttl_max: '169h' is out of range 1s..168h"},
        {"dns:\n  negative_ttl: 2h\n", 2, "dns.negative_ttl: '2h' is out of range 0s..1h"},
        {"dns:\n  zone: a.example\n  zone: b.example\n", 3,
         "dns: duplicate key 'zone' (first at line 2)"},
        /* whole-snapshot checks that know the file line */
        {"workers: 1\ndns:\n  zone: sbx.example\n", 3,
         "dns.zone 'sbx.example' needs at least one dns.servers entry"},
        {"dns:\n  servers: []\n  zone: sbx.example\n", 3, "needs at least one dns.servers entry"},
        {"dns:\n  ttl_min: 10m\n  ttl_max: 1m\n", 3, "dns.ttl_max (1m) is below dns.ttl_min (10m)"},
        {"dns:\n  ttl_max: 1s\n", 2, "dns.ttl_max (1s) is below dns.ttl_min (5s)"},
        {"\ndns:\n  ttl_min: 6m\n", 3, "dns.ttl_max (5m) is below dns.ttl_min (6m)"},
        {"lookup_order: [dns, admin]\n", 1,
         "lookup_order names no configured source (admin needs admin.listen or admin.store, "
         "dns needs dns.zone)"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        parse_err(cases[i].yaml, cases[i].line, cases[i].needle);
}

/* Whole-snapshot errors that have no single line. */
static void parse_err_exact(const char *yaml, const char *want)
{
    char err[2048] = "";
    sg_config_t *c = (sg_config_t *)1;
    if (sg_config_parse_text(yaml, strlen(yaml), "t.yaml", &c, err, sizeof(err)) != -1)
        fail_msg("expected an error for:\n%s", yaml);
    assert_null(c);
    if (strcmp(err, want) != 0) fail_msg("for:\n%s\nwanted:\n%s\ngot:\n%s", yaml, want, err);
}

static void test_admin_token_and_loopback(void **state)
{
    parse_err_exact("admin:\n  listen: [\"0.0.0.0:9901\"]\n",
                    "t.yaml: admin listener 0.0.0.0:9901 is not loopback and needs admin.token");
    parse_err_exact("admin:\n  listen: [\"127.0.0.1:9901\", \"[::]:9901\", \"10.1.1.1:9901\"]\n",
                    "t.yaml: admin listener [::]:9901 is not loopback and needs admin.token\n"
                    "t.yaml: admin listener 10.1.1.1:9901 is not loopback and needs admin.token");
    parse_err_exact("admin:\n  listen: [\"[::2]:9901\"]\n  token: ~\n",
                    "t.yaml: admin listener [::2]:9901 is not loopback and needs admin.token");
    parse_err_exact("admin:\n  listen: [\"127.0.0.1:8080\"]\n",
                    "t.yaml: admin listener 127.0.0.1:8080 is also a proxy listener");
    /* Loopback in every spelling needs no token. */
    sg_config_t *c = parse_ok("admin:\n  listen: [\"127.0.0.1:9901\", \"127.254.0.9:9902\","
                              " \"[::1]:9903\", \"[::ffff:127.0.0.1]:9904\"]\n");
    assert_int_equal(c->admin.n_listens, 4);
    assert_null(c->admin.token);
    /* The admin source is configured now: [static, admin]. */
    assert_int_equal(c->n_lookup_order, 2);
    assert_int_equal(c->lookup_order[0], SG_SOURCE_STATIC);
    assert_int_equal(c->lookup_order[1], SG_SOURCE_ADMIN);
    sg_config_unref(c);
    c = parse_ok("admin:\n  listen: [\"0.0.0.0:9901\", \"[::]:9902\"]\n  token: abc\n");
    assert_string_equal(c->admin.token, "abc");
    sg_config_unref(c);
    /* The token is a credential: a bad one is not echoed. */
    char err[1024];
    const char *yaml = "admin:\n  token: \"hunter2 x\"\n";
    assert_int_equal(sg_config_parse_text(yaml, strlen(yaml), "t.yaml", &c, err, sizeof(err)), -1);
    assert_string_equal(
        err, "t.yaml:2: admin.token: may only contain visible ASCII characters, no spaces");
    yaml = "admin:\n  token: \"t\\u00e9\"\n";
    assert_int_equal(sg_config_parse_text(yaml, strlen(yaml), "t.yaml", &c, err, sizeof(err)), -1);
    assert_null(strstr(err, "t\xc3\xa9"));
}

static void test_lookup_order_resolution(void **state)
{
    static const struct {
        const char *yaml;
        sg_source_kind_t want[3];
        size_t n;
    } cases[] = {
        {"", {SG_SOURCE_STATIC}, 1},
        {"lookup_order: [dns, admin, static]\n", {SG_SOURCE_STATIC}, 1},
        {"admin: {store: /s.wal}\n", {SG_SOURCE_STATIC, SG_SOURCE_ADMIN}, 2},
        {"admin: {listen: [\"127.0.0.1:9901\"]}\n", {SG_SOURCE_STATIC, SG_SOURCE_ADMIN}, 2},
        /* A token alone is not an admin source. */
        {"admin: {token: t}\n", {SG_SOURCE_STATIC}, 1},
        {"dns: {zone: z.example, servers: [10.0.0.53]}\n", {SG_SOURCE_STATIC, SG_SOURCE_DNS}, 2},
        /* Servers alone are not a DNS source. */
        {"dns: {servers: [10.0.0.53]}\n", {SG_SOURCE_STATIC}, 1},
        {"admin: {store: /s.wal}\ndns: {zone: z.example, servers: [10.0.0.53]}\n",
         {SG_SOURCE_STATIC, SG_SOURCE_ADMIN, SG_SOURCE_DNS},
         3},
        {"lookup_order: [dns, admin, static]\nadmin: {store: /s.wal}\n"
         "dns: {zone: z.example, servers: [10.0.0.53]}\n",
         {SG_SOURCE_DNS, SG_SOURCE_ADMIN, SG_SOURCE_STATIC},
         3},
        {"lookup_order: [dns, admin, static]\nadmin: {store: /s.wal}\n",
         {SG_SOURCE_ADMIN, SG_SOURCE_STATIC},
         2},
        /* Leaving a configured source out is allowed: it is not asked. */
        {"lookup_order: [admin]\nadmin: {store: /s.wal}\n"
         "dns: {zone: z.example, servers: [10.0.0.53]}\n",
         {SG_SOURCE_ADMIN},
         1},
        {"lookup_order: [dns, static]\nadmin: {store: /s.wal}\n", {SG_SOURCE_STATIC}, 1},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        sg_config_t *c = parse_ok(cases[i].yaml);
        if (c->n_lookup_order != cases[i].n)
            fail_msg("case %zu: %zu sources, wanted %zu", i, c->n_lookup_order, cases[i].n);
        for (size_t j = 0; j < cases[i].n; j++)
            if (c->lookup_order[j] != cases[i].want[j])
                fail_msg("case %zu: source %zu is %s", i, j,
                         sg_config__source_name(c->lookup_order[j]));
        sg_config_unref(c);
    }
}

static void test_dns_server_parser(void **state)
{
    static const struct {
        const char *in;
        int family; /* 0: rejected */
        const char *ip;
        int port;
    } cases[] = {
        {"10.0.0.53", AF_INET, "10.0.0.53", 53},
        {"10.0.0.53:5353", AF_INET, "10.0.0.53", 5353},
        {"::1", AF_INET6, "::1", 53},
        {"fd00::1:53", AF_INET6, "fd00::1:53", 53}, /* bare IPv6: all address */
        {"[fd00::1]", AF_INET6, "fd00::1", 53},
        {"[fd00::1]:54", AF_INET6, "fd00::1", 54},
        {"", 0, NULL, 0},
        {"ns.example", 0, NULL, 0},
        {"ns.example:53", 0, NULL, 0},
        {"10.0.0.53:", 0, NULL, 0},
        {"10.0.0.53:65536", 0, NULL, 0},
        {"[fd00::1]:", 0, NULL, 0},
        {"[fd00::1]x", 0, NULL, 0},
        {"[10.0.0.1]:53", 0, NULL, 0},
        {"10.0.0.256", 0, NULL, 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct sockaddr_storage ss;
        char why[256] = "";
        int rc = sg_config__parse_server(cases[i].in, &ss, why, sizeof(why));
        if (cases[i].family == 0) {
            if (rc != -1) fail_msg("server '%s' should be rejected", cases[i].in);
            assert_true(why[0] != '\0');
            continue;
        }
        if (rc != 0) fail_msg("server '%s' rejected: %s", cases[i].in, why);
        assert_addr(&ss, cases[i].family, cases[i].ip, cases[i].port);
        char text[64];
        sg_config__format_server(&ss, text, sizeof(text));
        struct sockaddr_storage back;
        assert_int_equal(sg_config__parse_server(text, &back, why, sizeof(why)), 0);
        assert_true(sg_config__sockaddr_eq(&ss, &back));
    }
}

static void test_cli_new_flags(void **state)
{
    sg_config_t *c = NULL;
    char err[1024];
    char *store = cwd_join("s.wal"), *alog = cwd_join("a.log");
    int rc = LOAD(&c, err, "--admin-listen", "127.0.0.1:9901", "--admin-listen=[::1]:9902",
                  "--admin-token", "tok", "--admin-store", "s.wal", "--dns-zone", "Z.Example",
                  "--dns-server", "10.0.0.53", "--dns-server=[fd00::53]:5353", "--access-log",
                  "a.log", "--log-format", "json", "--drain-timeout", "2.5s");
    if (rc != 0) fail_msg("%s", err);
    assert_int_equal(c->admin.n_listens, 2);
    assert_addr(&c->admin.listens[1].addr, AF_INET6, "::1", 9902);
    assert_string_equal(c->admin.token, "tok");
    assert_string_equal(c->admin.store_path, store); /* flags: the working directory */
    assert_string_equal(c->dns.zone, "z.example");
    assert_int_equal(c->dns.n_servers, 2);
    assert_addr(&c->dns.servers[0], AF_INET, "10.0.0.53", 53);
    assert_addr(&c->dns.servers[1], AF_INET6, "fd00::53", 5353);
    assert_string_equal(c->access_log, alog);
    assert_int_equal(c->log_json, 1);
    assert_int_equal(c->drain_timeout_ms, 2500);
    assert_int_equal(c->n_lookup_order, 3);
    sg_config_unref(c);

    /* Over a file: the first list flag replaces the file's list. */
    char *path = temp_file("admin:\n"
                           "  listen: [\"127.0.0.1:9901\", \"127.0.0.1:9902\"]\n"
                           "  token: file-token\n"
                           "dns:\n"
                           "  zone: f.example\n"
                           "  servers: [10.0.0.1, 10.0.0.2]\n"
                           "access_log: off\n");
    assert_int_equal(LOAD(&c, err, "--config", path, "--admin-listen", "0.0.0.0:9999",
                          "--dns-server", "10.9.9.9", "--dns-server", "10.9.9.8"),
                     0);
    assert_int_equal(c->admin.n_listens, 1);
    assert_string_equal(c->admin.listens[0].text, "0.0.0.0:9999"); /* file token covers it */
    assert_string_equal(c->admin.token, "file-token");
    assert_int_equal(c->dns.n_servers, 2);
    assert_addr(&c->dns.servers[0], AF_INET, "10.9.9.9", 53);
    assert_addr(&c->dns.servers[1], AF_INET, "10.9.9.8", 53);
    assert_string_equal(c->dns.zone, "f.example");
    assert_string_equal(c->access_log, "off");
    sg_config_unref(c);
    /* Without list flags the file's lists stay. */
    assert_int_equal(LOAD(&c, err, "--config", path, "--dns-zone", "g.example"), 0);
    assert_int_equal(c->admin.n_listens, 2);
    assert_int_equal(c->dns.n_servers, 2);
    assert_string_equal(c->dns.zone, "g.example");
    sg_config_unref(c);
    drop_file(path);

    /* A file zone may get its servers from flags; without any, the error
     * points at the file's line. */
    path = temp_file("workers: 1\ndns:\n  zone: f.example\n");
    assert_int_equal(LOAD(&c, err, "--config", path, "--dns-server", "10.0.0.53"), 0);
    assert_int_equal(c->dns.n_servers, 1);
    assert_int_equal(c->n_lookup_order, 2);
    sg_config_unref(c);
    char want[512];
    assert_int_equal(LOAD(&c, err, "--config", path), -1);
    snprintf(want, sizeof(want),
             "%s:3: dns.zone 'f.example' needs at least one dns.servers entry (or --dns-server)",
             path);
    assert_string_equal(err, want);
    /* ...unless a flag replaced the zone: then the flag is to blame. */
    assert_int_equal(LOAD(&c, err, "--config", path, "--dns-zone", "h.example"), -1);
    assert_string_equal(
        err,
        "sandgate: dns.zone 'h.example' needs at least one dns.servers entry (or --dns-server)");
    drop_file(path);

    /* Flag errors. */
    static const struct {
        const char *args[4];
        const char *error;
    } cases[] = {
        {{"--admin-listen", "[::]:9901"},
         "sandgate: admin listener [::]:9901 is not loopback and needs admin.token"},
        {{"--admin-listen", "localhost:1"},
         "sandgate: --admin-listen: 'localhost' is not an IPv4 address (use [..] for IPv6)"},
        {{"--admin-listen", "127.0.0.1:1", "--admin-listen", "127.0.0.1:1"},
         "sandgate: duplicate admin listen address '127.0.0.1:1'"},
        {{"--admin-listen", "127.0.0.1:8080"},
         "sandgate: admin listener 127.0.0.1:8080 is also a proxy listener"},
        {{"--admin-token", "a b"},
         "sandgate: --admin-token: may only contain visible ASCII characters, no spaces"},
        {{"--admin-token="}, "sandgate: --admin-token: value is empty"},
        {{"--admin-store="}, "sandgate: --admin-store: value is empty"},
        {{"--dns-zone", "z.example"},
         "sandgate: dns.zone 'z.example' needs at least one dns.servers entry (or --dns-server)"},
        {{"--dns-zone", "a..b"},
         "sandgate: --dns-zone: domain 'a..b' has an empty label or one that starts or ends with "
         "'-'"},
        {{"--dns-server", "ns.example"},
         "sandgate: --dns-server: 'ns.example' is not an IPv4 or IPv6 address"},
        {{"--dns-server", "10.0.0.1", "--dns-server", "10.0.0.1:53"},
         "sandgate: duplicate dns server '10.0.0.1:53'"},
        {{"--log-format", "xml"}, "sandgate: --log-format: expected text or json, got 'xml'"},
        {{"--access-log="}, "sandgate: --access-log: value is empty"},
        {{"--drain-timeout", "2h"}, "sandgate: --drain-timeout: '2h' is out of range 0s..1h"},
        {{"--dns-server"}, "sandgate: --dns-server needs a value"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *const *v = cases[i].args;
        c = (sg_config_t *)1;
        rc = load(&c, NULL, err, sizeof(err), v[0], v[1], v[2], v[3], (const char *)NULL);
        if (rc != -1) fail_msg("case %zu (%s) should fail", i, v[0]);
        assert_null(c);
        if (strcmp(err, cases[i].error) != 0)
            fail_msg("case %zu: wanted\n  %s\ngot\n  %s", i, cases[i].error, err);
    }
    free(store);
    free(alog);
}

static void test_new_keys_dump_and_reload(void **state)
{
    const char *yaml = "listen:\n"
                       "  - {address: \"127.0.0.1:80\", proxy_protocol: true, max_connections: 7}\n"
                       "log_format: json\n"
                       "access_log: /var/log/sg/access.log\n"
                       "drain_timeout: 90s\n"
                       "token_header: X-Tok\n"
                       "lookup_order: [admin, dns, static]\n"
                       "admin:\n"
                       "  listen: [{address: \"[::]:9901\", max_connections: 3}]\n"
                       "  token: \"a\\\"b\\\\c\"\n"
                       "  store: /var/lib/sg/s.wal\n"
                       "dns:\n"
                       "  zone: z.example\n"
                       "  servers: [10.0.0.53, \"[fd00::53]:5353\"]\n"
                       "  timeout: 1500ms\n"
                       "  tries: 3\n"
                       "  ttl_min: 0\n"
                       "  ttl_max: 1h\n"
                       "  negative_ttl: 30s\n";
    sg_config_t *a = parse_ok(yaml);
    assert_string_equal(a->admin.token, "a\"b\\c");
    char *text = sg_config_dump(a);
    assert_non_null(strstr(text, "  - {address: \"127.0.0.1:80\", tls: false, proxy_protocol: true,"
                                 " max_connections: 7}\n"));
    assert_non_null(strstr(text, "\nlog_format: json\n"));
    assert_non_null(strstr(text, "\naccess_log: \"/var/log/sg/access.log\"\n"));
    assert_non_null(strstr(text, "\ndrain_timeout: 90s\n"));
    assert_non_null(strstr(text, "\ntoken_header: \"X-Tok\"\n"));
    assert_non_null(strstr(text, "\nlookup_order: [admin, dns, static]\n"));
    assert_non_null(strstr(text, "\nadmin:\n  listen:\n"
                                 "    - {address: \"[::]:9901\", max_connections: 3}\n"
                                 "  token: \"a\\\"b\\\\c\"\n"
                                 "  store: \"/var/lib/sg/s.wal\"\n"));
    assert_non_null(strstr(text, "\ndns:\n  zone: \"z.example\"\n  servers:\n"
                                 "    - \"10.0.0.53:53\"\n    - \"[fd00::53]:5353\"\n"
                                 "  timeout: 1500ms\n  tries: 3\n  ttl_min: 0s\n  ttl_max: 1h\n"
                                 "  negative_ttl: 30s\n"));
    sg_config_t *b = parse_ok(text);
    char *again = sg_config_dump(b);
    assert_string_equal(strchr(text, '\n'), strchr(again, '\n'));
    assert_null(sg_config_restart_key(a, b));
    assert_int_equal(b->listens[0].proxy_protocol, 1);
    assert_int_equal(b->listens[0].max_connections, 7);
    assert_int_equal(b->admin.listens[0].max_connections, 3);
    assert_string_equal(b->admin.token, a->admin.token);
    assert_int_equal(b->dns.n_servers, 2);
    assert_int_equal(b->n_lookup_order, 3);
    assert_int_equal(b->lookup_order[0], SG_SOURCE_ADMIN);
    free(text);
    free(again);
    sg_config_unref(b);
    sg_config_unref(a);

    /* Nones dump as ~ and read back as none. */
    a = parse_ok("");
    text = sg_config_dump(a);
    assert_non_null(strstr(text, "\nadmin:\n  listen: []\n  token: ~\n  store: ~\n"));
    assert_non_null(strstr(text, "\ndns:\n  zone: ~\n  servers: []\n"));
    assert_non_null(strstr(text, "\nlookup_order: [static]\n"));
    b = parse_ok(text);
    check_defaults(b);
    free(text);
    sg_config_unref(a);
    sg_config_unref(b);
}

static void test_new_keys_restart(void **state)
{
    const char *base = "admin: {listen: [\"127.0.0.1:9901\"], store: /a.wal}\n";
    char yaml[1024];
    sg_config_t *a = parse_ok(base), *b;
    /* Reloadable: token, lookup_order, logging, drain, token header. DNS
     * settings are not: each worker's resolver is built once. */
    b = parse_ok("admin: {listen: [\"127.0.0.1:9901\"], store: /a.wal, token: t}\n"
                 "lookup_order: [static, admin]\nlog_format: json\naccess_log: off\n"
                 "drain_timeout: 1s\ntoken_header: X-T\n");
    assert_null(sg_config_restart_key(a, b));
    sg_config_unref(b);
    static const struct {
        const char *yaml;
        const char *key;
    } cases[] = {
        {"admin: {listen: [\"127.0.0.1:9902\"], store: /a.wal}\n", "admin.listen"},
        {"admin: {listen: [\"127.0.0.1:9901\", \"[::1]:9901\"], store: /a.wal}\n", "admin.listen"},
        {"admin: {listen: [{address: \"127.0.0.1:9901\", max_connections: 1}], store: /a.wal}\n",
         "admin.listen"},
        {"admin: {store: /a.wal}\n", "admin.listen"},
        {"admin: {listen: [\"127.0.0.1:9901\"], store: /b.wal}\n", "admin.store"},
        {"admin: {listen: [\"127.0.0.1:9901\"]}\n", "admin.store"},
        {"dns: {zone: z.example, servers: [10.0.0.53]}\n%s", "dns.zone"},
        {"listen: [{address: \"127.0.0.1:8080\", proxy_protocol: true}]\n%s", "listen"},
        {"listen: [{address: \"127.0.0.1:8080\", max_connections: 100}]\n%s", "listen"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        snprintf(yaml, sizeof(yaml), cases[i].yaml, base);
        b = parse_ok(yaml);
        const char *key = sg_config_restart_key(a, b);
        if (!key || strcmp(key, cases[i].key) != 0)
            fail_msg("case %zu: wanted %s, got %s", i, cases[i].key, key ? key : "(null)");
        sg_config_unref(b);
    }
    sg_config_unref(a);
}

/* ---- egress ---------------------------------------------------------------- */

/* The admin API the egress role needs, on loopback so no token is needed. */
#define EGRESS_ADMIN "admin: {listen: [\"127.0.0.1:9901\"]}\n"

static const char egress_full[] =
    "listen: [\"0.0.0.0:8080\"]\n" EGRESS_ADMIN "egress:\n"
    "  listen_http: \"0.0.0.0:15080\"\n"
    "  listen_tls: \"[::]:15443\"\n"
    "  listen_other: 10.0.0.1:15000\n"
    "  nameserver: \"[2001:DB8::53]\"\n"
    "  resolvers: [203.0.113.53, \"203.0.113.54:5353\","
    " \"[2001:db8::54]:53\", \"2001:db8::55\"]\n"
    "  always_denied_exceptions: [10.1.0.0/16, \"FD00::7\", 169.254.169.254,"
    " \"2001:DB8::/32\"]\n"
    "  sandbox_interfaces: [\"veth*\", tap0, \"sgt-sbx-*\", Eth_0.1-x]\n"
    "  sniff_timeout: 250ms\n"
    "  sniff_max_bytes: 4KiB\n"
    "  connect_timeout: 2s\n"
    "  idle_timeout: 1h\n"
    "  nft_apply: yes\n"
    "  nft_table: Sand_gate2\n";

static void test_egress_full_section(void **state)
{
    sg_config_t *c = parse_ok(egress_full);
    const sg_egress_conf_t *e = &c->egress;
    assert_int_equal(e->enabled, 1);
    assert_string_equal(e->listen_http.text, "0.0.0.0:15080");
    assert_addr(&e->listen_http.addr, AF_INET, "0.0.0.0", 15080);
    assert_string_equal(e->listen_tls.text, "[::]:15443");
    assert_addr(&e->listen_tls.addr, AF_INET6, "::", 15443);
    assert_addr(&e->listen_other.addr, AF_INET, "10.0.0.1", 15000);
    assert_int_equal(e->listen_http.tls, 0);
    assert_int_equal(e->listen_tls.tls, 0);             /* the egress side never terminates TLS */
    assert_string_equal(e->nameserver, "2001:db8::53"); /* canonical, brackets dropped */
    assert_int_equal(e->n_resolvers, 4);
    assert_addr(&e->resolvers[0], AF_INET, "203.0.113.53", 53);
    assert_addr(&e->resolvers[1], AF_INET, "203.0.113.54", 5353);
    assert_addr(&e->resolvers[2], AF_INET6, "2001:db8::54", 53);
    assert_addr(&e->resolvers[3], AF_INET6, "2001:db8::55", 53);
    /* In the policy's normal form; a bare address stays bare. */
    assert_int_equal(e->n_always_denied_exceptions, 4);
    assert_string_equal(e->always_denied_exceptions[0], "10.1.0.0/16");
    assert_string_equal(e->always_denied_exceptions[1], "fd00::7");
    assert_string_equal(e->always_denied_exceptions[2], "169.254.169.254");
    assert_string_equal(e->always_denied_exceptions[3], "2001:db8::/32");
    /* Kept as written, in order. */
    assert_int_equal(e->n_sandbox_interfaces, 4);
    assert_string_equal(e->sandbox_interfaces[0], "veth*");
    assert_string_equal(e->sandbox_interfaces[1], "tap0");
    assert_string_equal(e->sandbox_interfaces[2], "sgt-sbx-*");
    assert_string_equal(e->sandbox_interfaces[3], "Eth_0.1-x");
    assert_int_equal(e->sniff_timeout_ms, 250);
    assert_int_equal(e->sniff_max_bytes, 4096);
    assert_int_equal(e->connect_timeout_ms, 2000);
    assert_int_equal(e->idle_timeout_ms, 3600000);
    assert_int_equal(e->nft_apply, 1);
    assert_string_equal(e->nft_table, "Sand_gate2");
    sg_config_unref(c);

    /* One listener is enough to enable the role; the default resolver
     * follows the nameserver. */
    c = parse_ok(EGRESS_ADMIN "egress: {listen_other: \"127.0.0.1:15000\", nameserver: 1.1.1.1}\n");
    assert_int_equal(c->egress.enabled, 1);
    assert_string_equal(c->egress.listen_http.text, "");
    assert_string_equal(c->egress.listen_tls.text, "");
    assert_int_equal(c->egress.n_resolvers, 1);
    assert_addr(&c->egress.resolvers[0], AF_INET, "1.1.1.1", 53);
    sg_config_unref(c);
    c = parse_ok("egress: {nameserver: \"::1\"}\n");
    assert_int_equal(c->egress.enabled, 0);
    assert_addr(&c->egress.resolvers[0], AF_INET6, "::1", 53);
    sg_config_unref(c);

    /* The longest names IFNAMSIZ allows (the '*' counts); names are
     * case-sensitive, so these two differ. */
    c = parse_ok("egress:\n  sandbox_interfaces: [abcdefghijklmno, \"abcdefghijklmn*\", a,"
                 " \"Veth*\", \"veth*\"]\n");
    assert_int_equal(c->egress.n_sandbox_interfaces, 5);
    assert_string_equal(c->egress.sandbox_interfaces[0], "abcdefghijklmno");
    assert_string_equal(c->egress.sandbox_interfaces[1], "abcdefghijklmn*");
    assert_string_equal(c->egress.sandbox_interfaces[2], "a");
    assert_string_equal(c->egress.sandbox_interfaces[3], "Veth*");
    sg_config_t *again = parse_ok("egress: {sandbox_interfaces: [abcdefghijklmno,"
                                  " \"abcdefghijklmn*\", a, \"Veth*\", \"veth*\"]}\n");
    assert_null(sg_config_restart_key(c, again));
    sg_config_unref(again);
    again = parse_ok("egress: {sandbox_interfaces: [\"abcdefghijklmn*\", abcdefghijklmno,"
                     " a, \"Veth*\", \"veth*\"]}\n");
    assert_string_equal(sg_config_restart_key(c, again), "egress.sandbox_interfaces");
    sg_config_unref(again);
    sg_config_unref(c);

    /* admin.store alone also registers policies (from the log). */
    c = parse_ok("admin: {store: /var/lib/sg/s.wal}\negress: {listen_tls: \"0.0.0.0:15443\"}\n");
    assert_int_equal(c->egress.enabled, 1);
    sg_config_unref(c);

    /* Same port on another address of the proxy or admin side is fine. */
    c = parse_ok("listen: [\"127.0.0.1:15080\"]\n"
                 "admin: {listen: [\"127.0.0.2:15443\"]}\n"
                 "egress: {listen_http: \"10.0.0.1:15080\", listen_tls: \"10.0.0.1:15443\"}\n");
    assert_int_equal(c->egress.enabled, 1);
    sg_config_unref(c);
}

static void test_egress_only_host(void **state)
{
    sg_config_t *c =
        parse_ok("listen: []\n" EGRESS_ADMIN "egress: {listen_http: \"0.0.0.0:15080\"}\n");
    assert_int_equal(c->n_listens, 0);
    assert_null(c->listens);
    assert_int_equal(c->egress.enabled, 1);
    assert_true(c->n_domains >= 1); /* unused, but the invariant holds */
    char *text = sg_config_dump(c);
    assert_non_null(strstr(text, "\nlisten: []\n"));
    sg_config_t *b = parse_ok(text);
    assert_int_equal(b->n_listens, 0);
    assert_null(sg_config_restart_key(c, b));
    free(text);
    sg_config_unref(b);
    sg_config_unref(c);

    c = parse_ok("listen:\n" EGRESS_ADMIN "egress: {listen_other: \"[::1]:15000\"}\n");
    assert_int_equal(c->n_listens, 0);
    sg_config_unref(c);

    /* Flags may add a proxy listener to an egress-only file. */
    char err[1024];
    char *path = temp_file("listen: []\n" EGRESS_ADMIN "egress: {listen_tls: \"0.0.0.0:15443\"}\n");
    c = NULL;
    assert_int_equal(LOAD(&c, err, "--config", path), 0);
    assert_int_equal(c->n_listens, 0);
    sg_config_unref(c);
    assert_int_equal(LOAD(&c, err, "--config", path, "--listen", "127.0.0.1:80"), 0);
    assert_int_equal(c->n_listens, 1);
    sg_config_unref(c);
    drop_file(path);
}

static void test_egress_errors(void **state)
{
    static const struct {
        const char *yaml;
        size_t line;
        const char *needle;
    } cases[] = {
        /* the empty proxy listener list needs egress */
        {"listen: []\n", 1, "listen: needs at least one item"},
        {"workers: 1\nlisten: []\negress: {nameserver: 1.1.1.1}\n", 2,
         "listen: needs at least one item (or egress.listen_* for an egress-only host)"},
        {"workers: 1\nlisten:\negress:\n  listen_http: ~\n", 2, "listen: needs at least one item"},
        /* addresses */
        {"egress:\n  listen_http: 15080\n", 2,
         "egress.listen_http: expected ADDR:PORT, e.g. 127.0.0.1:8080, got '15080'"},
        {"egress:\n  listen_tls: \"localhost:15443\"\n", 2,
         "egress.listen_tls: 'localhost' is not an IPv4 address"},
        {"egress:\n  listen_other: \"::1:15000\"\n", 2,
         "egress.listen_other: IPv6 addresses need brackets"},
        {"egress:\n  listen_other: \"0.0.0.0:0\"\n", 2, "port in '0.0.0.0:0' must be 1..65535"},
        {"egress:\n  listen_http: \"\"\n", 2, "egress.listen_http: expected ADDR:PORT"},
        {"egress:\n  listen_http: [\"0.0.0.0:15080\"]\n", 2,
         "egress.listen_http: expected a single value, got a list"},
        {"egress:\n  nameserver: dns.google\n", 2,
         "egress.nameserver: 'dns.google' is not an IPv4 or IPv6 address"},
        {"egress:\n  nameserver: \"8.8.8.8:53\"\n", 2,
         "egress.nameserver: '8.8.8.8:53': expected an address without port"},
        {"egress:\n  nameserver: \"[::]\"\n", 2,
         "egress.nameserver: '[::]' is the unspecified address"},
        {"egress:\n  nameserver: ~\n", 2, "egress.nameserver: missing value"},
        {"egress:\n  resolvers: 1.1.1.1\n", 2, "egress.resolvers: expected a list"},
        {"egress:\n  resolvers: [1.1.1.1, ns.example]\n", 2,
         "egress.resolvers: 'ns.example' is not an IPv4 or IPv6 address"},
        {"egress:\n  resolvers:\n    - 1.1.1.1\n    - \"1.1.1.1:53\"\n", 4,
         "egress.resolvers: duplicate server '1.1.1.1:53'"},
        {"egress:\n  resolvers: [\"1.1.1.1:99999\"]\n", 2, "must be 1..65535"},
        /* exceptions */
        {"egress:\n  always_denied_exceptions:\n    - 10.0.0.0/8\n    - 10.0.0.1/8\n", 4,
         "egress.always_denied_exceptions: '10.0.0.1/8' has bits set after the prefix"},
        {"egress:\n  always_denied_exceptions: [\"example.com\"]\n", 2,
         "egress.always_denied_exceptions: 'example.com' is not an IPv4 or IPv6 address or CIDR"},
        {"egress:\n  always_denied_exceptions: [\"10.0.0.0/33\"]\n", 2,
         "egress.always_denied_exceptions: '10.0.0.0/33': the prefix must be 0..32 for IPv4"},
        {"egress:\n  always_denied_exceptions: [\"fd00::/129\"]\n", 2, "0..128 for IPv6"},
        {"egress:\n  always_denied_exceptions: [\"\"]\n", 2,
         "egress.always_denied_exceptions: value is empty"},
        {"egress:\n  always_denied_exceptions: [\"FD00::7\", \"fd00:0::7\"]\n", 2,
         "egress.always_denied_exceptions: duplicate entry 'fd00:0::7'"},
        {"egress:\n  always_denied_exceptions: [[a]]\n", 2,
         "egress.always_denied_exceptions: expected a single value, got a list"},
        {"egress:\n  always_denied_exceptions:\n    - 169.254.169.254\n    - 169.254.169.254\n", 4,
         "egress.always_denied_exceptions: duplicate entry '169.254.169.254'"},
        {"egress:\n  always_denied_exceptions: 10.0.0.0/8\n", 2,
         "egress.always_denied_exceptions: expected a list"},
        /* sandbox interfaces */
        {"egress:\n  sandbox_interfaces: [\"*\"]\n", 2,
         "egress.sandbox_interfaces: '*' alone would match every interface, the uplink too"},
        {"egress:\n  sandbox_interfaces:\n    - veth*\n    - \"ve*th\"\n", 4,
         "egress.sandbox_interfaces: 've*th' is not an interface name pattern (1..15 of A-Z, "
         "a-z, 0-9, _, . and -, optionally ending in * as in veth*)"},
        {"egress:\n  sandbox_interfaces: [\"veth**\"]\n", 2,
         "'veth**' is not an interface name pattern"},
        {"egress:\n  sandbox_interfaces: [abcdefghijklmnop]\n", 2,
         "egress.sandbox_interfaces: 'abcdefghijklmnop' is not an interface name pattern"},
        {"egress:\n  sandbox_interfaces: [\"abcdefghijklmno*\"]\n", 2,
         "'abcdefghijklmno*' is not an interface name pattern"},
        {"egress:\n  sandbox_interfaces: [\"eth0/1\"]\n", 2,
         "'eth0/1' is not an interface name pattern"},
        {"egress:\n  sandbox_interfaces: [\"tap 0\"]\n", 2, "'tap 0' is not an interface name"},
        {"egress:\n  sandbox_interfaces: [\"tap\\\"0\"]\n", 2, "'tap\"0' is not an interface name"},
        {"egress:\n  sandbox_interfaces: [\"\"]\n", 2, "egress.sandbox_interfaces: value is empty"},
        {"egress:\n  sandbox_interfaces:\n    - \"veth*\"\n    - tap*\n    - veth*\n", 5,
         "egress.sandbox_interfaces: duplicate entry 'veth*'"},
        {"egress:\n  sandbox_interfaces: veth*\n", 2, "egress.sandbox_interfaces: expected a list"},
        {"egress:\n  sandbox_interfaces: [[veth*]]\n", 2,
         "egress.sandbox_interfaces: expected a single value, got a list"},
        /* ranges */
        {"egress:\n  sniff_timeout: 99ms\n", 2,
         "egress.sniff_timeout: '99ms' is out of range 100ms..1m"},
        {"egress:\n  sniff_timeout: 61s\n", 2, "out of range 100ms..1m"},
        {"egress:\n  sniff_max_bytes: 1023\n", 2,
         "egress.sniff_max_bytes: '1023' is out of range 1KiB..64KiB"},
        {"egress:\n  sniff_max_bytes: 65537\n", 2, "out of range 1KiB..64KiB"},
        {"egress:\n  connect_timeout: 0\n", 2, "egress.connect_timeout: '0' is out of range"},
        {"egress:\n  idle_timeout: 25h\n", 2, "egress.idle_timeout: '25h' is out of range"},
        {"egress:\n  nft_apply: maybe\n", 2, "egress.nft_apply: expected true or false"},
        /* table name */
        {"egress:\n  nft_table: \"sand-gate\"\n", 2,
         "egress.nft_table: 'sand-gate' is not a table name"},
        {"egress:\n  nft_table: 1table\n", 2, "egress.nft_table: '1table' is not a table name"},
        {"egress:\n  nft_table: abcdefghijklmnopqrstuvwxyz0123456\n", 2,
         "'abcdefghijklmnopqrstuvwxyz0123456' is not a table name"},
        {"egress:\n  nft_table: \"\"\n", 2, "egress.nft_table: value is empty"},
        {"egress:\n  nft_table:\n", 2, "egress.nft_table: missing value"},
        {"egress:\n  nft_table: \"a b\"\n", 2, "is not a table name"},
        /* the section itself */
        {"egress: [a]\n", 1, "egress: expected a mapping, got a list"},
        {"egress:\n  listen: \"0.0.0.0:15080\"\n", 2, "unknown key 'egress.listen'"},
        {"egress:\n  nft_apply: true\n  nft_apply: false\n", 3,
         "egress: duplicate key 'nft_apply' (first at line 2)"},
        /* whole-snapshot checks, blamed on the egress line */
        {"egress:\n  listen_http: \"0.0.0.0:15080\"\n", 2,
         "egress needs admin.listen (or admin.store): sandbox policies are registered through "
         "the admin API"},
        {"egress:\n  listen_tls: ~\n  listen_other: \"0.0.0.0:15000\"\n", 3,
         "egress needs admin.listen"},
        {EGRESS_ADMIN "egress:\n  listen_http: \"0.0.0.0:15080\"\n"
                      "  listen_tls: \"127.0.0.1:15080\"\n",
         4, "egress.listen_tls 127.0.0.1:15080 uses the port of egress.listen_http 0.0.0.0:15080"},
        {EGRESS_ADMIN "egress:\n  listen_http: \"10.0.0.1:15000\"\n"
                      "  listen_other: \"10.0.0.2:15000\"\n",
         4, "egress.listen_other 10.0.0.2:15000 uses the port of egress.listen_http"},
        {"listen: [\"127.0.0.1:8080\"]\n" EGRESS_ADMIN "egress:\n  listen_http: \"0.0.0.0:8080\"\n",
         4, "egress.listen_http 0.0.0.0:8080 clashes with listen address 127.0.0.1:8080"},
        {"listen: [\"[::]:8080\"]\n" EGRESS_ADMIN "egress:\n  listen_other: \"10.0.0.1:8080\"\n", 4,
         "egress.listen_other 10.0.0.1:8080 clashes with listen address [::]:8080"},
        {"listen: [\"127.0.0.1:8080\"]\n" EGRESS_ADMIN
         "egress:\n  listen_tls: \"127.0.0.1:8080\"\n",
         4, "egress.listen_tls 127.0.0.1:8080 clashes with listen address 127.0.0.1:8080"},
        {EGRESS_ADMIN "egress:\n  listen_tls: \"0.0.0.0:9901\"\n", 3,
         "egress.listen_tls 0.0.0.0:9901 clashes with admin.listen address 127.0.0.1:9901"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        parse_err(cases[i].yaml, cases[i].line, cases[i].needle);

    /* Every problem at once, each on its own line. */
    char err[2048];
    sg_config_t *c = (sg_config_t *)1;
    const char *yaml = "listen: [\"0.0.0.0:15080\"]\n"
                       "egress:\n"
                       "  listen_http: \"0.0.0.0:15080\"\n" /* 3 */
                       "  listen_tls: \"[::]:15080\"\n";    /* 4 */
    assert_int_equal(sg_config_parse_text(yaml, strlen(yaml), "t.yaml", &c, err, sizeof(err)), -1);
    assert_null(c);
    const char *want[] = {
        "t.yaml:3: egress.listen_http 0.0.0.0:15080 clashes with listen address 0.0.0.0:15080",
        "t.yaml:4: egress.listen_tls [::]:15080 uses the port of egress.listen_http",
        "t.yaml:4: egress.listen_tls [::]:15080 clashes with listen address 0.0.0.0:15080",
        "t.yaml:3: egress needs admin.listen",
    };
    assert_error_lines(err, want, sizeof(want) / sizeof(want[0]));
}

static void test_egress_dump_round_trip(void **state)
{
    sg_config_t *a = parse_ok(egress_full);
    char *text = sg_config_dump(a);
    assert_non_null(strstr(text, "\negress:\n"
                                 "  listen_http: \"0.0.0.0:15080\"\n"
                                 "  listen_tls: \"[::]:15443\"\n"
                                 "  listen_other: \"10.0.0.1:15000\"\n"
                                 "  nameserver: \"2001:db8::53\"\n"
                                 "  resolvers:\n"
                                 "    - \"203.0.113.53:53\"\n"
                                 "    - \"203.0.113.54:5353\"\n"
                                 "    - \"[2001:db8::54]:53\"\n"
                                 "    - \"[2001:db8::55]:53\"\n"
                                 "  always_denied_exceptions:\n"
                                 "    - \"10.1.0.0/16\"\n"
                                 "    - \"fd00::7\"\n"
                                 "    - \"169.254.169.254\"\n"
                                 "    - \"2001:db8::/32\"\n"
                                 "  sandbox_interfaces:\n"
                                 "    - \"veth*\"\n"
                                 "    - \"tap0\"\n"
                                 "    - \"sgt-sbx-*\"\n"
                                 "    - \"Eth_0.1-x\"\n"
                                 "  sniff_timeout: 250ms\n"
                                 "  sniff_max_bytes: 4KiB\n"
                                 "  connect_timeout: 2s\n"
                                 "  idle_timeout: 1h\n"
                                 "  nft_apply: true\n"
                                 "  nft_table: \"Sand_gate2\"\n"));
    sg_config_t *b = parse_ok(text);
    char *again = sg_config_dump(b);
    assert_string_equal(strchr(text, '\n'), strchr(again, '\n'));
    assert_null(sg_config_restart_key(a, b));
    assert_int_equal(b->egress.enabled, 1);
    assert_int_equal(b->egress.n_resolvers, 4);
    assert_int_equal(b->egress.n_always_denied_exceptions, 4);
    assert_int_equal(b->egress.n_sandbox_interfaces, 4);
    assert_string_equal(b->egress.sandbox_interfaces[2], "sgt-sbx-*");
    assert_string_equal(b->egress.nft_table, "Sand_gate2");
    free(text);
    free(again);
    sg_config_unref(b);
    sg_config_unref(a);

    /* Defaults: listeners dump as ~, the resolved resolver explicitly. */
    a = parse_ok("");
    text = sg_config_dump(a);
    assert_non_null(strstr(text, "\negress:\n"
                                 "  listen_http: ~\n"
                                 "  listen_tls: ~\n"
                                 "  listen_other: ~\n"
                                 "  nameserver: \"8.8.8.8\"\n"
                                 "  resolvers:\n"
                                 "    - \"8.8.8.8:53\"\n"
                                 "  always_denied_exceptions: []\n"
                                 "  sandbox_interfaces: []\n"
                                 "  sniff_timeout: 5s\n"
                                 "  sniff_max_bytes: 16KiB\n"
                                 "  connect_timeout: 5s\n"
                                 "  idle_timeout: 5m\n"
                                 "  nft_apply: false\n"
                                 "  nft_table: \"sandgate\"\n"));
    b = parse_ok(text);
    check_defaults(b);
    assert_null(sg_config_restart_key(a, b));
    free(text);
    sg_config_unref(b);
    sg_config_unref(a);
}

static void test_egress_restart(void **state)
{
    const char *base = "listen: [\"127.0.0.1:8080\"]\n" EGRESS_ADMIN
                       "egress: {listen_http: \"0.0.0.0:15080\", nft_table: t1}\n";
    sg_config_t *a = parse_ok(base), *b;
    /* Reloadable: timeouts, sizes and the exceptions. */
    b = parse_ok("listen: [\"127.0.0.1:8080\"]\n" EGRESS_ADMIN
                 "egress: {listen_http: \"0.0.0.0:15080\", nft_table: t1, sniff_timeout: 1s,"
                 " sniff_max_bytes: 2KiB, connect_timeout: 1s, idle_timeout: 10s,"
                 " always_denied_exceptions: [100.64.0.0/10]}\n");
    assert_null(sg_config_restart_key(a, b));
    sg_config_unref(b);
    /* The default resolver is the same list written out. */
    b = parse_ok("listen: [\"127.0.0.1:8080\"]\n" EGRESS_ADMIN
                 "egress: {listen_http: \"0.0.0.0:15080\", nft_table: t1,"
                 " resolvers: [\"8.8.8.8:53\"], nameserver: \"8.8.8.8\"}\n");
    assert_null(sg_config_restart_key(a, b));
    sg_config_unref(b);
    static const struct {
        const char *egress;
        const char *key;
    } cases[] = {
        {"{listen_http: \"0.0.0.0:15081\", nft_table: t1}", "egress.listen_http"},
        {"{listen_http: \"127.0.0.1:15080\", nft_table: t1}", "egress.listen_http"},
        {"{listen_other: \"0.0.0.0:15080\", nft_table: t1}", "egress.listen_http"},
        {"{listen_http: \"0.0.0.0:15080\", listen_tls: \"0.0.0.0:15443\", nft_table: t1}",
         "egress.listen_tls"},
        {"{listen_http: \"0.0.0.0:15080\", listen_other: \"0.0.0.0:15000\", nft_table: t1}",
         "egress.listen_other"},
        {"{listen_http: \"0.0.0.0:15080\", nft_table: t1, nameserver: 1.1.1.1}",
         "egress.nameserver"},
        {"{listen_http: \"0.0.0.0:15080\", nft_table: t1, resolvers: [1.1.1.1]}",
         "egress.resolvers"},
        {"{listen_http: \"0.0.0.0:15080\", nft_table: t1, sandbox_interfaces: [\"veth*\"]}",
         "egress.sandbox_interfaces"},
        {"{listen_http: \"0.0.0.0:15080\", nft_table: t1, nft_apply: true}", "egress.nft_apply"},
        {"{listen_http: \"0.0.0.0:15080\", nft_table: t2}", "egress.nft_table"},
    };
    char yaml[1024];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        snprintf(yaml, sizeof(yaml), "listen: [\"127.0.0.1:8080\"]\n" EGRESS_ADMIN "egress: %s\n",
                 cases[i].egress);
        b = parse_ok(yaml);
        const char *key = sg_config_restart_key(a, b);
        if (!key || strcmp(key, cases[i].key) != 0)
            fail_msg("case %zu: wanted %s, got %s", i, cases[i].key, key ? key : "(null)");
        sg_config_unref(b);
    }
    sg_config_unref(a);
}

/* ---- shipped files stay in sync with the table ----------------------------- */

static void test_example_file_and_keys_doc(void **state)
{
    char *example = slurp_repo("config/sandgate.example.yaml");
    char *keys = slurp_repo("README.md");
    sg_config_t *c = parse_ok(example);
    assert_true(c->n_sandboxes >= 1);
    sg_config_unref(c);
    for (size_t i = 0; i < sg_config__n_keys; i++) {
        const char *name = sg_config__keys[i].name;
        const char *leaf = strchr(name, '.') ? strchr(name, '.') + 1 : name;
        char pat[128];
        snprintf(pat, sizeof(pat), "`%s`", name);
        if (!strstr(keys, pat)) fail_msg("README.md lacks %s", pat);
        snprintf(pat, sizeof(pat), "%s:", leaf);
        if (!strstr(example, pat)) fail_msg("example lacks %s", pat);
    }
    const char *flags[] = {
        "`--config",          "`--listen ",     "`--listen-tls",  "`--domain",
        "`--sandbox",         "`--workers",     "`--log-level",   "`--check-config",
        "`--version",         "`--help",        "`--tls-cert",    "`--redirect-http",
        "`tls.certificates`", "`--log-format",  "`--access-log",  "`--drain-timeout",
        "`--admin-listen",    "`--admin-token", "`--admin-store", "`--dns-zone",
        "`--dns-server"};
    for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++)
        if (!strstr(keys, flags[i])) fail_msg("README.md lacks %s", flags[i]);
    free(example);
    free(keys);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_empty_file),
        cmocka_unit_test(test_embedded_default),
        cmocka_unit_test(test_every_key),
        cmocka_unit_test(test_workers_and_levels),
        cmocka_unit_test(test_durations),
        cmocka_unit_test(test_sizes),
        cmocka_unit_test(test_listen_and_ip_parsers),
        cmocka_unit_test(test_domain_parser),
        cmocka_unit_test(test_file_errors),
        cmocka_unit_test(test_file_several_errors),
        cmocka_unit_test(test_parse_text_length),
        cmocka_unit_test(test_cli_no_flags_uses_embedded),
        cmocka_unit_test(test_cli_config_file),
        cmocka_unit_test(test_cli_overrides),
        cmocka_unit_test(test_cli_over_embedded),
        cmocka_unit_test(test_cli_sandbox_flag),
        cmocka_unit_test(test_cli_bad_flags),
        cmocka_unit_test(test_cli_file_errors_have_lines),
        cmocka_unit_test(test_cli_actions),
        cmocka_unit_test(test_usage_lists_every_flag),
        cmocka_unit_test(test_tls_path_resolution),
        cmocka_unit_test(test_tls_default_certificate),
        cmocka_unit_test(test_tls_listener_needs_certificates),
        cmocka_unit_test(test_tls_several_errors),
        cmocka_unit_test(test_cli_tls),
        cmocka_unit_test(test_tls_restart_key),
        cmocka_unit_test(test_dump_round_trip),
        cmocka_unit_test(test_restart_key),
        cmocka_unit_test(test_refcount),
        cmocka_unit_test(test_new_keys),
        cmocka_unit_test(test_new_key_errors),
        cmocka_unit_test(test_admin_token_and_loopback),
        cmocka_unit_test(test_lookup_order_resolution),
        cmocka_unit_test(test_dns_server_parser),
        cmocka_unit_test(test_cli_new_flags),
        cmocka_unit_test(test_new_keys_dump_and_reload),
        cmocka_unit_test(test_new_keys_restart),
        cmocka_unit_test(test_egress_full_section),
        cmocka_unit_test(test_egress_only_host),
        cmocka_unit_test(test_egress_errors),
        cmocka_unit_test(test_egress_dump_round_trip),
        cmocka_unit_test(test_egress_restart),
        cmocka_unit_test(test_example_file_and_keys_doc),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
