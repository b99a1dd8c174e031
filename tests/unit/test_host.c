/* sg_route_parse_host from a table of cases, each placed against a guard page
 * so any read past the slice faults. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "route/host.h"

#include "guard_page.h"

static char *const domains[] = {"e2b.app", "example.com", "sandbox.example.com"};
#define N_DOMAINS (sizeof(domains) / sizeof(domains[0]))

typedef struct {
    const char *in;
    size_t len; /* 0: strlen(in) */
    sg_err_t err;
    uint16_t port;
    const char *id;
    size_t domain_index;
    const char *reason; /* expected exact reason for MALFORMED / MISSING */
    const char *lower;  /* expected lower-cased name on success */
} host_case_t;

#define OK(in, port, id, dom, lower)                                                               \
    {                                                                                              \
        in, 0, SG_ERR_NONE, port, id, dom, NULL, lower                                             \
    }
#define BAD(in, why)                                                                               \
    {                                                                                              \
        in, 0, SG_ERR_HOST_MALFORMED, 0, NULL, 0, why, NULL                                        \
    }
#define BADN(in, len, why)                                                                         \
    {                                                                                              \
        in, len, SG_ERR_HOST_MALFORMED, 0, NULL, 0, why, NULL                                      \
    }
#define UNKNOWN(in)                                                                                \
    {                                                                                              \
        in, 0, SG_ERR_HOST_UNKNOWN_DOMAIN, 0, NULL, 0, NULL, NULL                                  \
    }

#define R_CHARS "Host may only contain letters, digits, '-' and '.'"
#define R_HPORT_DIGITS "Host port must be decimal digits"
#define R_HPORT_LONG "Host port has more than 5 digits"
#define R_HPORT_RANGE "Host port must be 0..65535"
#define R_MULTI "more than one label before the domain"
#define R_SHAPE "label must be <port>-<id>"
#define R_PORT_MISSING "port missing before '-'"
#define R_PORT_DIGITS "port must be decimal digits"
#define R_PORT_LONG "port has more than 5 digits"
#define R_PORT_ZEROS "port must not have leading zeros"
#define R_PORT_RANGE "port must be 1..65535"
#define R_ID_EMPTY "sandbox id is empty"
#define R_ID_LONG "sandbox id is longer than 64 characters"
#define R_PART_EMPTY "empty '-' part after the sandbox id"
#define R_EMPTY_LABEL "Host has an empty label"

#define ID64 "abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz01"
#define ID65 ID64 "2"

static const host_case_t cases[] = {
    /* accepted shapes */
    OK("3000-abc123.e2b.app", 3000, "abc123", 0, "3000-abc123.e2b.app"),
    OK("3000-ABC123.E2B.App", 3000, "abc123", 0, "3000-abc123.e2b.app"),
    OK("3000-abc.e2b.app.", 3000, "abc", 0, "3000-abc.e2b.app"),
    OK("3000-abc.e2b.app:443", 3000, "abc", 0, "3000-abc.e2b.app"),
    OK("3000-abc.e2b.app.:443", 3000, "abc", 0, "3000-abc.e2b.app"),
    OK("3000-abc.e2b.app:", 3000, "abc", 0, "3000-abc.e2b.app"),
    OK("3000-abc.e2b.app:00080", 3000, "abc", 0, "3000-abc.e2b.app"),
    OK("1-a.e2b.app", 1, "a", 0, "1-a.e2b.app"),
    OK("65535-z9.e2b.app", 65535, "z9", 0, "65535-z9.e2b.app"),
    OK("3000-abc-def-ghi.e2b.app", 3000, "abc", 0, "3000-abc-def-ghi.e2b.app"),
    OK("49983-i0v2nq0pbr5pftn5s1j9x-c4b7ea6b.e2b.app", 49983, "i0v2nq0pbr5pftn5s1j9x", 0,
       "49983-i0v2nq0pbr5pftn5s1j9x-c4b7ea6b.e2b.app"),
    OK("8080-" ID64 ".e2b.app", 8080, ID64, 0, "8080-" ID64 ".e2b.app"),
    OK("80-x.example.com", 80, "x", 1, "80-x.example.com"),
    /* longest domain wins: not a two-label host under example.com */
    OK("3000-abc.sandbox.example.com", 3000, "abc", 2, "3000-abc.sandbox.example.com"),
    OK("3000-abc.SANDBOX.example.com.:8443", 3000, "abc", 2, "3000-abc.sandbox.example.com"),

    {"", 0, SG_ERR_HOST_MISSING, 0, NULL, 0, "Host is empty", NULL},

    /* not ours */
    UNKNOWN("[::1]:8080"),
    UNKNOWN("[::1]"),
    UNKNOWN("[2001:db8::1]:443"),
    UNKNOWN("[::ffff:127.0.0.1]"),
    UNKNOWN("127.0.0.1"),
    UNKNOWN("127.0.0.1:8080"),
    UNKNOWN("10.0.0.1."),
    UNKNOWN("localhost"),
    UNKNOWN("3000-abc.other.app"),
    UNKNOWN("3000-abc.e2b.apps"),
    UNKNOWN("3000-abc.xe2b.app"), /* suffix but not on a label boundary */
    UNKNOWN("3000-abc.e2b.app.evil.com"),
    UNKNOWN("app"),

    /* the domain itself does not end in ".<domain>": not under it (421) */
    UNKNOWN("e2b.app"),
    UNKNOWN("E2B.APP."),
    UNKNOWN("e2b.app:80"),
    UNKNOWN("sandbox.example.com"),

    /* label shape */
    BAD("a.3000-abc.e2b.app", R_MULTI),
    BAD("3000-abc.x.e2b.app", R_MULTI),
    BAD("3000-abc.x.example.com", R_MULTI),
    BAD("abc.e2b.app", R_SHAPE),
    BAD("3000.e2b.app", R_SHAPE),
    BAD("-abc.e2b.app", R_PORT_MISSING),
    BAD("30a0-abc.e2b.app", R_PORT_DIGITS),
    BAD("abc-3000.e2b.app", R_PORT_DIGITS),
    BAD("123456-abc.e2b.app", R_PORT_LONG),
    BAD("99999999999999999999999999-abc.e2b.app", R_PORT_LONG),
    BAD("18446744073709551617-abc.e2b.app", R_PORT_LONG),
    BAD("03000-abc.e2b.app", R_PORT_ZEROS),
    BAD("00-abc.e2b.app", R_PORT_ZEROS),
    BAD("0-abc.e2b.app", R_PORT_RANGE),
    BAD("65536-abc.e2b.app", R_PORT_RANGE),
    BAD("99999-abc.e2b.app", R_PORT_RANGE),
    BAD("3000-.e2b.app", R_ID_EMPTY),
    BAD("3000--abc.e2b.app", R_ID_EMPTY),
    BAD("3000-" ID65 ".e2b.app", R_ID_LONG),
    BAD("3000-abc-.e2b.app", R_PART_EMPTY),
    BAD("3000-abc--x.e2b.app", R_PART_EMPTY),
    BAD("3000-abc-x-.e2b.app", R_PART_EMPTY),

    /* characters */
    BAD("+3000-abc.e2b.app", R_CHARS),
    BAD("3000-abc_x.e2b.app", R_CHARS),
    BAD("3000-abc .e2b.app", R_CHARS),
    BAD(" 3000-abc.e2b.app", R_CHARS),
    BAD("\t3000-abc.e2b.app", R_CHARS),
    BAD("3000-abc.e2b.app ", R_CHARS),
    BAD("%33000-abc.e2b.app", R_CHARS),
    BAD("3000-abc%2e.e2b.app", R_CHARS),
    BAD("user@3000-abc.e2b.app", R_CHARS),
    BAD("3000-abc.e2b.app/", R_CHARS),
    BAD("3000-abc.e2b.app\r\n", R_CHARS),
    BAD("3000-abc\n.e2b.app", R_CHARS),
    BAD("3000-ab\xc3\xa9.e2b.app", R_CHARS),     /* U+00E9 */
    BAD("3000-abc.e2b.\xef\xbd\x81pp", R_CHARS), /* fullwidth 'a' */
    BAD("3000-abc.e2b.app\x7f", R_CHARS),
    BAD("${PORT}-abc.e2b.app", R_CHARS),
    BADN("3000-abc\0.e2b.app", 17, R_CHARS),
    BADN("3000-abc.e2b.app\0", 17, R_CHARS),
    BADN("\0", 1, R_CHARS),

    /* header injection through the port part */
    BAD("3000-abc.e2b.app\r\nX-Injected: 1", R_HPORT_DIGITS),
    BAD("3000-abc.e2b.app:80\r\n", R_HPORT_DIGITS),

    /* Host's own port */
    BAD("3000-abc.e2b.app:80a", R_HPORT_DIGITS),
    BAD("3000-abc.e2b.app:-1", R_HPORT_DIGITS),
    BAD("3000-abc.e2b.app:+80", R_HPORT_DIGITS),
    BAD("3000-abc.e2b.app:80:80", R_HPORT_DIGITS),
    BAD("3000-abc.e2b.app: 80", R_HPORT_DIGITS),
    BAD("::1", R_HPORT_DIGITS),
    BAD("3000-abc.e2b.app:123456", R_HPORT_LONG),
    BAD("3000-abc.e2b.app:65536", R_HPORT_RANGE),
    BADN("3000-abc.e2b.app:8\0", 19, R_HPORT_DIGITS),
    BAD(":80", "Host has a port but no name"),
    BAD(":", "Host has a port but no name"),

    /* dots */
    BAD("3000-abc.e2b.app..", R_EMPTY_LABEL),
    BAD(".3000-abc.e2b.app", R_EMPTY_LABEL),
    BAD("3000-abc..e2b.app", R_EMPTY_LABEL),
    BAD("..", R_EMPTY_LABEL),
    BAD(".", "Host is only a dot"),

    /* IP literal shapes */
    BAD("[::1", "Host IP literal lacks ']'"),
    BAD("[]", "Host IP literal is empty"),
    BAD("[::1]x", "Host has bytes after the IP literal"),
    BAD("[::1]:abc", R_HPORT_DIGITS),
    BAD("[fe80::1%eth0]", "Host IP literal contains bad characters"),
    BAD("[3000-abc.e2b.app]", "Host IP literal contains bad characters"),
    BAD("[::1\r\n]", "Host IP literal contains bad characters"),
};

static void run_case(const host_case_t *c, size_t idx)
{
    size_t len = c->len ? c->len : strlen(c->in);
    guarded_t g = guard_copy(c->in, len);
    char lower[SG_HOST_MAX + 1];
    memset(lower, 'Z', sizeof(lower));
    sg_route_t out = {.port = 7, .id = {NULL, 0}, .domain_index = 99};
    const char *reason = "unset";

    sg_err_t err =
        sg_route_parse_host(sg_slice(g.data, len), domains, N_DOMAINS, lower, &out, &reason);
    if (err != c->err || (c->reason && (!reason || strcmp(reason, c->reason) != 0)))
        print_error("case %zu \"%s\": got %s (%s), want %s (%s)\n", idx, c->in, sg_err_name(err),
                    reason ? reason : "NULL", sg_err_name(c->err), c->reason ? c->reason : "-");
    assert_int_equal(err, c->err);

    if (err == SG_ERR_NONE) {
        assert_null(reason);
        assert_int_equal(out.port, c->port);
        assert_int_equal(out.id.len, strlen(c->id));
        assert_memory_equal(out.id.base, c->id, out.id.len);
        /* id borrows from `lower`, which holds the canonical name */
        assert_true(out.id.base >= lower && out.id.base + out.id.len <= lower + SG_HOST_MAX);
        assert_int_equal(out.domain_index, c->domain_index);
        assert_string_equal(lower, c->lower);
    } else {
        /* failures leave *out alone and always explain themselves on one line */
        assert_int_equal(out.port, 7);
        assert_null(out.id.base);
        assert_int_equal(out.domain_index, 99);
        assert_non_null(reason);
        assert_true(strlen(reason) > 0);
        /* whatever `lower` holds is still a C string */
        assert_non_null(memchr(lower, '\0', sizeof(lower)));
        assert_null(strpbrk(reason, "\r\n"));
        if (c->reason) assert_string_equal(reason, c->reason);
    }
    guard_free(&g);
}

static void test_table(void **state)
{
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) run_case(&cases[i], i);
}

/* Every malformed condition in the table is told apart by its reason. */
static void test_reasons_distinct(void **state)
{
    static const char *const reasons[] = {
        R_CHARS,
        R_HPORT_DIGITS,
        R_HPORT_LONG,
        R_HPORT_RANGE,
        R_MULTI,
        R_SHAPE,
        R_PORT_MISSING,
        R_PORT_DIGITS,
        R_PORT_LONG,
        R_PORT_ZEROS,
        R_PORT_RANGE,
        R_ID_EMPTY,
        R_ID_LONG,
        R_PART_EMPTY,
        R_EMPTY_LABEL,
        "Host is only a dot",
        "Host has a port but no name",
        "Host IP literal lacks ']'",
        "Host IP literal is empty",
        "Host has bytes after the IP literal",
        "Host IP literal contains bad characters",
        "Host is longer than 253 characters",
    };
    size_t n = sizeof(reasons) / sizeof(reasons[0]);
    for (size_t i = 0; i < n; i++)
        for (size_t j = i + 1; j < n; j++) assert_string_not_equal(reasons[i], reasons[j]);
}

/* Builds "<label>.e2b.app" padded inside the label to exactly `total` bytes. */
static size_t long_host(char *buf, size_t total)
{
    const char *suffix = ".e2b.app";
    size_t slen = strlen(suffix);
    memcpy(buf, "3000-abc-", 9);
    memset(buf + 9, 'x', total - 9 - slen);
    memcpy(buf + total - slen, suffix, slen);
    buf[total] = '\0';
    return total;
}

static void test_length_limits(void **state)
{
    char buf[20000];
    char lower[SG_HOST_MAX + 1];
    sg_route_t out;
    const char *reason;

    /* 253 bytes: the most a name may have */
    size_t n = long_host(buf, SG_HOST_MAX);
    guarded_t g = guard_copy(buf, n);
    assert_int_equal(
        sg_route_parse_host(sg_slice(g.data, n), domains, N_DOMAINS, lower, &out, &reason),
        SG_ERR_NONE);
    assert_int_equal(strlen(lower), SG_HOST_MAX);
    assert_int_equal(out.port, 3000);
    guard_free(&g);

    /* 253 + the absolute-form dot + ":65535" still fits */
    n = long_host(buf, SG_HOST_MAX);
    memcpy(buf + n, ".:65535", 8);
    n += 7;
    g = guard_copy(buf, n);
    assert_int_equal(
        sg_route_parse_host(sg_slice(g.data, n), domains, N_DOMAINS, lower, &out, &reason),
        SG_ERR_NONE);
    assert_int_equal(strlen(lower), SG_HOST_MAX);
    guard_free(&g);

    const size_t too_long[] = {SG_HOST_MAX + 1, 1000, sizeof(buf) - 1};
    for (size_t i = 0; i < sizeof(too_long) / sizeof(too_long[0]); i++) {
        n = long_host(buf, too_long[i]);
        g = guard_copy(buf, n);
        assert_int_equal(
            sg_route_parse_host(sg_slice(g.data, n), domains, N_DOMAINS, lower, &out, &reason),
            SG_ERR_HOST_MALFORMED);
        assert_string_equal(reason, "Host is longer than 253 characters");
        guard_free(&g);
    }
}

static void test_domain_config(void **state)
{
    char lower[SG_HOST_MAX + 1];
    sg_route_t out;
    const char *reason;
    sg_slice_t h = SG_SLICE_LIT("3000-abc.e2b.app");

    /* no domains: nothing is ours */
    assert_int_equal(sg_route_parse_host(h, domains, 0, lower, &out, &reason),
                     SG_ERR_HOST_UNKNOWN_DOMAIN);

    /* an empty configured domain must not swallow every name */
    char *const with_empty[] = {"", "e2b.app"};
    assert_int_equal(sg_route_parse_host(h, with_empty, 2, lower, &out, &reason), SG_ERR_NONE);
    assert_int_equal(out.domain_index, 1);
    assert_int_equal(
        sg_route_parse_host(SG_SLICE_LIT("3000-abc.other"), with_empty, 2, lower, &out, &reason),
        SG_ERR_HOST_UNKNOWN_DOMAIN);

    /* order of configuration does not matter: longest match wins */
    char *const rev[] = {"sandbox.example.com", "example.com"};
    char *const fwd[] = {"example.com", "sandbox.example.com"};
    sg_slice_t deep = SG_SLICE_LIT("3000-abc.sandbox.example.com");
    assert_int_equal(sg_route_parse_host(deep, rev, 2, lower, &out, &reason), SG_ERR_NONE);
    assert_int_equal(out.domain_index, 0);
    assert_int_equal(sg_route_parse_host(deep, fwd, 2, lower, &out, &reason), SG_ERR_NONE);
    assert_int_equal(out.domain_index, 1);

    /* with only the parent domain configured, the same host has two labels */
    char *const parent[] = {"example.com"};
    assert_int_equal(sg_route_parse_host(deep, parent, 1, lower, &out, &reason),
                     SG_ERR_HOST_MALFORMED);
    assert_string_equal(reason, R_MULTI);

    /* a multi-label domain is matched whole, not by its last labels */
    char *const multi[] = {"a.b.c"};
    assert_int_equal(sg_route_parse_host(SG_SLICE_LIT("1-x.b.c"), multi, 1, lower, &out, &reason),
                     SG_ERR_HOST_UNKNOWN_DOMAIN);
    assert_int_equal(sg_route_parse_host(SG_SLICE_LIT("1-x.a.b.c"), multi, 1, lower, &out, &reason),
                     SG_ERR_NONE);
}

static void test_null_reason_and_base(void **state)
{
    char lower[SG_HOST_MAX + 1];
    sg_route_t out;
    /* reason is optional */
    assert_int_equal(sg_route_parse_host(SG_SLICE_LIT("bad_host.e2b.app"), domains, N_DOMAINS,
                                         lower, &out, NULL),
                     SG_ERR_HOST_MALFORMED);
    assert_int_equal(sg_route_parse_host(sg_slice(NULL, 0), domains, N_DOMAINS, lower, &out, NULL),
                     SG_ERR_HOST_MISSING);
    assert_string_equal(lower, "");
}

/* Each port 1..65535 written canonically parses back to itself. */
static void test_every_port(void **state)
{
    char buf[64], lower[SG_HOST_MAX + 1];
    sg_route_t out;
    const char *reason;
    for (unsigned p = 1; p <= 65535; p++) {
        int n = snprintf(buf, sizeof(buf), "%u-id.e2b.app", p);
        assert_int_equal(
            sg_route_parse_host(sg_slice(buf, (size_t)n), domains, N_DOMAINS, lower, &out, &reason),
            SG_ERR_NONE);
        assert_int_equal(out.port, p);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_reasons_distinct),
        cmocka_unit_test(test_length_limits),
        cmocka_unit_test(test_domain_config),
        cmocka_unit_test(test_null_reason_and_base),
        cmocka_unit_test(test_every_port),
    };
    return cmocka_run_group_tests_name("route/host", tests, NULL, NULL);
}
