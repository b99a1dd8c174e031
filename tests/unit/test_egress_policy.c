/* Egress policy: admin API validation and its messages, normalisation,
 * equality, and the verdict for addresses and names. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cmocka.h>

#include "egress/policy.h"

#include "guard_page.h"
#include "test_sockaddr.h"

/* ---- helpers ---- */

static json_t *load(const char *text)
{
    if (!text) return NULL;
    json_error_t e;
    json_t *v = json_loads(text, JSON_DECODE_ANY | JSON_ALLOW_NUL, &e);
    if (!v) print_error("bad test JSON %s: %s\n", text, e.text);
    assert_non_null(v);
    return v;
}

/* Builds a policy from two JSON texts (NULL = absent); fails the test on a
 * rejection. */
static sg_egress_policy_t *policy(const char *aia, const char *network)
{
    json_t *a = load(aia), *n = load(network);
    sg_egress_policy_t *p = NULL;
    char err[512] = "";
    const char *field = NULL;
    int rc = sg_egress_policy_from_json(a, n, &p, err, sizeof(err), &field);
    if (rc != 0) print_error("policy %s %s rejected: %s\n", aia, network, err);
    assert_int_equal(rc, 0);
    json_decref(a);
    json_decref(n);
    return p;
}

static char *dump(const sg_egress_policy_t *p)
{
    json_t *o = json_object();
    sg_egress_policy_to_json(p, o);
    char *s = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(o);
    return s;
}

/* ---- rejected inputs ---- */

typedef struct {
    const char *aia, *network;
    const char *field;
    const char *message; /* the whole message when want_exact, else a part of it */
    int want_exact;
} reject_case_t;

#define DENY_ALL "\"deny_out\":[\"0.0.0.0/0\"]"
static const reject_case_t reject_cases[] = {
    {"1", NULL, "allow_internet_access", "allow_internet_access: must be true or false", 1},
    {"null", NULL, "allow_internet_access", "allow_internet_access: must be true or false", 1},
    {"\"false\"", NULL, "allow_internet_access", "allow_internet_access: must be", 0},
    {NULL, "[]", "network", "network: must be an object", 0},
    {NULL, "null", "network", "network: must be an object", 0},
    {NULL, "{\"allow\":[]}", "network",
     "network: unknown key \"allow\" (expected allow_out, deny_out)", 1},
    {NULL, "{\"allow_out\":\"1.2.3.4\"}", "network", "network.allow_out: must be an array", 0},
    {NULL, "{\"deny_out\":{}}", "network", "network.deny_out: must be an array", 0},
    {NULL, "{\"deny_out\":[1]}", "network", "network.deny_out[0]: must be a string", 1},
    {NULL, "{\"allow_out\":[\"1.2.3.4\",null]}", "network",
     "network.allow_out[1]: must be a string", 1},
    {NULL, "{\"deny_out\":[\"1.2.3.4\",\"\"]}", "network", "network.deny_out[1]: \"\": empty rule",
     1},
    {NULL, "{\"allow_out\":[\"\"]}", "network", "network.allow_out[0]: \"\": empty rule", 1},
    {NULL, "{\"deny_out\":[\"10.0.0.1/8\"]}", "network",
     "network.deny_out[0]: \"10.0.0.1/8\": host bits set (did you mean 10.0.0.0/8?)", 1},
    {NULL, "{\"allow_out\":[\"2001:db8::1/32\"]}", "network",
     "network.allow_out[0]: \"2001:db8::1/32\": host bits set (did you mean 2001:db8::/32?)", 1},
    {NULL, "{\"deny_out\":[\"10.0.0.0/33\"]}", "network",
     "network.deny_out[0]: \"10.0.0.0/33\": prefix length must be 0-32", 1},
    {NULL, "{\"deny_out\":[\"2001:db8::/129\"]}", "network", "prefix length must be 0-128", 0},
    {NULL, "{\"deny_out\":[\"10.0.0.0/\"]}", "network", "prefix length", 0},
    {NULL, "{\"deny_out\":[\"10.0.0.0/08\"]}", "network", "prefix length", 0},
    {NULL, "{\"deny_out\":[\"10.0.0.0/-1\"]}", "network", "prefix length", 0},
    {NULL, "{\"deny_out\":[\"10.0.0.0/8x\"]}", "network", "prefix length", 0},
    {NULL, "{\"deny_out\":[\"example.com\"]}", "network",
     "network.deny_out[0]: \"example.com\": domain rules are allowed only in allow_out", 1},
    {"false", "{\"deny_out\":[\"*.example.com\"]}", "network", "allowed only in allow_out", 0},
    {NULL, "{\"deny_out\":[\"foo\"]}", "network",
     "network.deny_out[0]: \"foo\": not an IP address or CIDR", 1},
    {NULL, "{\"deny_out\":[\"1.2.3.4 \"]}", "network", "not an IP address or CIDR", 0},
    {NULL, "{\"deny_out\":[\"fe80::1%eth0\"]}", "network", "not an IP address or CIDR", 0},
    {NULL, "{\"deny_out\":[\"01.2.3.4\"]}", "network", "not an IP address or CIDR", 0},
    {NULL, "{\"allow_out\":[\"1.2.3\"]}", "network",
     "network.allow_out[0]: \"1.2.3\": not an IP address, CIDR or domain name", 1},
    {NULL, "{\"allow_out\":[\"1.2.3.4.5\"]}", "network", "not an IP address, CIDR or domain", 0},
    {NULL, "{\"allow_out\":[\"example.com/24\"]}", "network", "not an IP address, CIDR or domain",
     0},
    /* the spec's example, word for word */
    {NULL, "{\"allow_out\":[\"1.2.3.4\",\"5.6.7.0/24\",\"example.com\"]}", "network",
     "network.allow_out[2]: \"example.com\": domain rules need deny_out to contain 0.0.0.0/0", 1},
    {NULL, "{\"allow_out\":[\"*.example.com\"],\"deny_out\":[\"0.0.0.0/1\",\"128.0.0.0/1\"]}",
     "network",
     "network.allow_out[0]: \"*.example.com\": domain rules need deny_out to contain 0.0.0.0/0", 1},
    {NULL, "{\"allow_out\":[\"example.com\"],\"deny_out\":[\"::/0\"]}", "network",
     "domain rules need deny_out to contain 0.0.0.0/0", 0},
    {"true", "{\"allow_out\":[\"example.com\"]}", "network",
     "domain rules need deny_out to contain 0.0.0.0/0", 0},
    /* domain syntax */
    {NULL, "{\"allow_out\":[\"*\"]," DENY_ALL "}", "network",
     "network.allow_out[0]: \"*\": '*' is allowed only as the whole first label", 1},
    {NULL, "{\"allow_out\":[\"a.*.com\"]," DENY_ALL "}", "network", "'*' is allowed only", 0},
    {NULL, "{\"allow_out\":[\"*example.com\"]," DENY_ALL "}", "network", "'*' is allowed only", 0},
    {NULL, "{\"allow_out\":[\"**.example.com\"]," DENY_ALL "}", "network", "'*' is allowed only",
     0},
    {NULL, "{\"allow_out\":[\"*.*.example.com\"]," DENY_ALL "}", "network", "'*' is allowed only",
     0},
    {NULL, "{\"allow_out\":[\"com\"]," DENY_ALL "}", "network",
     "network.allow_out[0]: \"com\": domain name needs at least two labels", 1},
    {NULL, "{\"allow_out\":[\"-a.com\"]," DENY_ALL "}", "network", "starts or ends with '-'", 0},
    {NULL, "{\"allow_out\":[\"a-.com\"]," DENY_ALL "}", "network", "starts or ends with '-'", 0},
    {NULL, "{\"allow_out\":[\"a..com\"]," DENY_ALL "}", "network", "empty label", 0},
    {NULL, "{\"allow_out\":[\".a.com\"]," DENY_ALL "}", "network", "empty label", 0},
    {NULL, "{\"allow_out\":[\"a.com..\"]," DENY_ALL "}", "network", "empty label", 0},
    {NULL, "{\"allow_out\":[\"exa mple.com\"]," DENY_ALL "}", "network",
     "network.allow_out[0]: \"exa mple.com\": invalid character in domain name", 1},
    {NULL, "{\"allow_out\":[\"ex\\u00e9.com\"]," DENY_ALL "}", "network",
     "network.allow_out[0]: \"ex\\xc3\\xa9.com\": invalid character", 0},
    {NULL, "{\"allow_out\":[\"a\\u0000b.com\"]," DENY_ALL "}", "network",
     "network.allow_out[0]: \"a\\x00b.com\": contains a NUL byte", 1},
    {NULL, "{\"allow_out\":[\"*.0.0.1\"]," DENY_ALL "}", "network",
     "not an IP address, CIDR or domain name", 0},
    {NULL, "{\"allow_out\":[\"0x7f.0x1\"]," DENY_ALL "}", "network",
     "not an IP address, CIDR or domain name", 0},
    {NULL, "{\"allow_out\":[\"0x7f.1\"]," DENY_ALL "}", "network",
     "not an IP address, CIDR or domain name", 0},
    {NULL, "{\"allow_out\":[\"example.123\"]," DENY_ALL "}", "network",
     "not an IP address, CIDR or domain name", 0},
};

static void test_reject_table(void **state)
{
    for (size_t i = 0; i < sizeof(reject_cases) / sizeof(reject_cases[0]); i++) {
        const reject_case_t *c = &reject_cases[i];
        json_t *a = load(c->aia), *n = load(c->network);
        sg_egress_policy_t *p = (sg_egress_policy_t *)1;
        char err[512] = "";
        const char *field = NULL;
        int rc = sg_egress_policy_from_json(a, n, &p, err, sizeof(err), &field);
        int ok = rc == -1 && p == NULL && field && strcmp(field, c->field) == 0 &&
                 (c->want_exact ? strcmp(err, c->message) == 0 : strstr(err, c->message) != NULL);
        if (!ok)
            print_error("case %zu (%s %s): rc %d field %s err \"%s\", want \"%s\"\n", i, c->aia,
                        c->network, rc, field ? field : "(null)", err, c->message);
        assert_true(ok);
        json_decref(a);
        json_decref(n);
    }
}

/* Long values: label and name length, 300-byte cap, 256-entry cap. */
static void test_reject_sizes(void **state)
{
    char label63[64], label64[65];
    memset(label63, 'a', 63);
    label63[63] = '\0';
    memset(label64, 'b', 64);
    label64[64] = '\0';
    struct {
        const char *value;
        const char *message;
    } cases[4];
    char ok63[80], bad64[80], name254[300], long301[310];
    snprintf(ok63, sizeof(ok63), "%s.com", label63);
    snprintf(bad64, sizeof(bad64), "%s.com", label64);
    /* 4 labels of 63 = 255 with dots; trim to 254 */
    snprintf(name254, sizeof(name254), "%s.%s.%s.%s", label63, label63, label63, label63);
    name254[254] = '\0';
    memset(long301, 'c', 301);
    long301[301] = '\0';
    cases[0].value = bad64, cases[0].message = "domain label longer than 63 characters";
    cases[1].value = name254, cases[1].message = "domain name longer than 253 characters";
    cases[2].value = long301, cases[2].message = "...\": longer than 300 bytes";
    cases[3].value = ok63, cases[3].message = NULL;
    for (size_t i = 0; i < 4; i++) {
        json_t *net =
            json_pack("{s:[s], s:[s]}", "allow_out", cases[i].value, "deny_out", "0.0.0.0/0");
        sg_egress_policy_t *p = NULL;
        char err[512] = "";
        const char *field = NULL;
        int rc = sg_egress_policy_from_json(NULL, net, &p, err, sizeof(err), &field);
        if (cases[i].message) {
            if (rc != -1 || !strstr(err, cases[i].message))
                print_error("case %zu: rc %d err %s\n", i, rc, err);
            assert_int_equal(rc, -1);
            assert_non_null(strstr(err, cases[i].message));
            assert_non_null(strstr(err, "network.allow_out[0]: \""));
        } else {
            assert_int_equal(rc, 0);
            sg_egress_policy_free(p);
        }
        json_decref(net);
    }

    for (int extra = 0; extra <= 1; extra++) {
        json_t *list = json_array();
        for (int i = 0; i < 256 + extra; i++) {
            char ip[32];
            snprintf(ip, sizeof(ip), "1.2.%d.%d", i / 256, i % 256);
            json_array_append_new(list, json_string(ip));
        }
        json_t *net = json_pack("{s:o}", extra ? "deny_out" : "allow_out", list);
        sg_egress_policy_t *p = NULL;
        char err[512] = "";
        const char *field = NULL;
        int rc = sg_egress_policy_from_json(json_false(), net, &p, err, sizeof(err), &field);
        if (extra) {
            assert_int_equal(rc, -1);
            assert_string_equal(err, "network.deny_out: at most 256 entries");
        } else {
            assert_int_equal(rc, 0);
            const sg_cidr_t *c;
            assert_int_equal(sg_egress_policy_cidrs(p, 1, &c, NULL), 256);
            sg_egress_policy_free(p);
        }
        json_decref(net);
    }
}

/* ---- normalisation ---- */

typedef struct {
    const char *aia, *network;
    const char *want; /* to_json, compact with sorted keys; NULL = default policy (NULL) */
} normal_case_t;

#define DEFAULT_JSON                                                                               \
    "{\"allow_internet_access\":true,\"network\":{\"allow_out\":[],\"deny_out\":[]}}"
static const normal_case_t normal_cases[] = {
    {NULL, NULL, NULL},
    {"true", NULL, NULL},
    {NULL, "{}", NULL},
    {"true", "{\"allow_out\":[],\"deny_out\":[]}", NULL},
    {"false", NULL,
     "{\"allow_internet_access\":false,\"network\":{\"allow_out\":[],\"deny_out\":[\"0.0.0.0/"
     "0\"]}}"},
    {"false", "{\"deny_out\":[\"1.2.3.4\"]}",
     "{\"allow_internet_access\":false,\"network\":{\"allow_out\":[],\"deny_out\":[\"1.2.3.4\","
     "\"0.0.0.0/0\"]}}"},
    {"false", "{\"deny_out\":[\"0.0.0.0/0\",\"1.2.3.4\"]}",
     "{\"allow_internet_access\":false,\"network\":{\"allow_out\":[],\"deny_out\":[\"0.0.0.0/0\","
     "\"1.2.3.4\"]}}"},
    /* deny_out with 0.0.0.0/0 reads back as internet off */
    {NULL, "{\"deny_out\":[\"0.0.0.0/0\"]}",
     "{\"allow_internet_access\":false,\"network\":{\"allow_out\":[],\"deny_out\":[\"0.0.0.0/"
     "0\"]}}"},
    /* ::/0 alone leaves IPv4 open */
    {NULL, "{\"deny_out\":[\"::/0\"]}",
     "{\"allow_internet_access\":true,\"network\":{\"allow_out\":[],\"deny_out\":[\"::/0\"]}}"},
    {NULL, "{\"allow_out\":[\"1.2.3.4\"]}",
     "{\"allow_internet_access\":true,\"network\":{\"allow_out\":[\"1.2.3.4\"],\"deny_out\":[]}}"},
    {"false",
     "{\"allow_out\":[\"Example.COM.\",\"*.Foo.org\",\"2001:DB8:0:0::1\",\"10.1.0.0/16\","
     "\"::ffff:1.2.3.4\",\"2001:0db8::/32\",\"1.2.3.4/32\",\"my_host.example.com\"],"
     "\"deny_out\":[\"2001:db8:0::/48\",\"192.0.2.0/24\"]}",
     "{\"allow_internet_access\":false,\"network\":{\"allow_out\":[\"example.com\",\"*.foo.org\","
     "\"2001:db8::1\",\"10.1.0.0/16\",\"::ffff:1.2.3.4\",\"2001:db8::/32\",\"1.2.3.4/32\","
     "\"my_host.example.com\"],\"deny_out\":[\"2001:db8::/48\",\"192.0.2.0/24\",\"0.0.0.0/"
     "0\"]}}"},
};

static void test_normalise_table(void **state)
{
    for (size_t i = 0; i < sizeof(normal_cases) / sizeof(normal_cases[0]); i++) {
        const normal_case_t *c = &normal_cases[i];
        sg_egress_policy_t *p = policy(c->aia, c->network);
        char *got = dump(p);
        const char *want = c->want ? c->want : DEFAULT_JSON;
        if ((c->want == NULL) != (p == NULL) || strcmp(got, want) != 0)
            print_error("case %zu: policy %p got %s\nwant %s\n", i, (void *)p, got, want);
        assert_true((c->want == NULL) == (p == NULL));
        assert_string_equal(got, want);

        /* what GET echoes, PUT again, is the same policy */
        json_t *o = load(got);
        sg_egress_policy_t *again = NULL;
        char err[256];
        const char *field;
        assert_int_equal(sg_egress_policy_from_json(json_object_get(o, "allow_internet_access"),
                                                    json_object_get(o, "network"), &again, err,
                                                    sizeof(err), &field),
                         0);
        assert_true(sg_egress_policy_equal(p, again));
        char *got2 = dump(again);
        assert_string_equal(got2, want);
        free(got2);
        sg_egress_policy_free(again);
        json_decref(o);
        free(got);
        sg_egress_policy_free(p);
    }
}

static void test_equal(void **state)
{
    sg_egress_policy_t *off = policy("false", NULL);
    sg_egress_policy_t *deny_all = policy(NULL, "{\"deny_out\":[\"0.0.0.0/0\"]}");
    sg_egress_policy_t *ab = policy(NULL, "{\"allow_out\":[\"1.1.1.1\",\"2.2.2.2\"]}");
    sg_egress_policy_t *ba = policy(NULL, "{\"allow_out\":[\"2.2.2.2\",\"1.1.1.1\"]}");
    sg_egress_policy_t *ab_case = policy("true", "{\"allow_out\":[\"1.1.1.1\",\"2.2.2.2\"]}");
    sg_egress_policy_t *host32 = policy(NULL, "{\"allow_out\":[\"1.1.1.1/32\",\"2.2.2.2\"]}");
    sg_egress_policy_t *dom1 = policy("false", "{\"allow_out\":[\"Example.com.\"]}");
    sg_egress_policy_t *dom2 = policy("false", "{\"allow_out\":[\"example.COM\"]}");
    sg_egress_policy_t *as_deny = policy(NULL, "{\"deny_out\":[\"1.1.1.1\",\"2.2.2.2\"]}");

    assert_true(sg_egress_policy_equal(NULL, NULL));
    assert_false(sg_egress_policy_equal(NULL, off));
    assert_false(sg_egress_policy_equal(ab, NULL));
    assert_true(sg_egress_policy_equal(off, deny_all));
    assert_true(sg_egress_policy_equal(ab, ab_case));
    assert_false(sg_egress_policy_equal(ab, ba));
    assert_false(sg_egress_policy_equal(ab, host32));
    assert_false(sg_egress_policy_equal(ab, as_deny));
    assert_true(sg_egress_policy_equal(dom1, dom2));
    assert_false(sg_egress_policy_equal(dom1, off));

    assert_false(sg_egress_policy_has_domains(NULL));
    assert_false(sg_egress_policy_has_domains(off));
    assert_true(sg_egress_policy_has_domains(dom1));

    const sg_cidr_t *c;
    const char *const *t;
    assert_int_equal(sg_egress_policy_cidrs(dom1, 1, &c, &t), 0);
    assert_int_equal(sg_egress_policy_cidrs(dom1, 0, &c, &t), 1);
    assert_string_equal(t[0], "0.0.0.0/0");
    assert_true(c[0].all_traffic);
    assert_int_equal(sg_egress_policy_cidrs(host32, 1, &c, &t), 2);
    assert_string_equal(t[0], "1.1.1.1/32");
    assert_string_equal(t[1], "2.2.2.2");
    assert_int_equal(sg_egress_policy_cidrs(NULL, 1, &c, &t), 0);

    sg_egress_policy_t *all[] = {off, deny_all, ab, ba, ab_case, host32, dom1, dom2, as_deny};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) sg_egress_policy_free(all[i]);
    sg_egress_policy_free(NULL);
}

/* ---- ranges ---- */

static void test_cidr_parse(void **state)
{
    sg_cidr_t c;
    assert_int_equal(sg_cidr_parse("1.2.3.4", &c), SG_CIDR_OK);
    assert_int_equal(c.family, AF_INET);
    assert_int_equal(c.prefix, 32);
    assert_false(c.all_traffic);
    assert_int_equal(sg_cidr_parse("0.0.0.0/0", &c), SG_CIDR_OK);
    assert_true(c.all_traffic);
    assert_int_equal(sg_cidr_parse("::/0", &c), SG_CIDR_OK);
    assert_false(c.all_traffic);
    assert_int_equal(c.family, AF_INET6);
    assert_int_equal(sg_cidr_parse("::ffff:10.0.0.0/104", &c), SG_CIDR_OK);
    assert_int_equal(c.family, AF_INET);
    assert_int_equal(c.prefix, 8);
    assert_int_equal(c.addr[0], 10);
    assert_int_equal(sg_cidr_parse("::ffff:0.0.0.0/96", &c), SG_CIDR_OK);
    assert_int_equal(c.family, AF_INET);
    assert_int_equal(c.prefix, 0);
    assert_false(c.all_traffic);
    assert_int_equal(sg_cidr_parse("10.0.0.1/8", &c), SG_CIDR_EHOSTBITS);
    assert_int_equal(sg_cidr_parse("10.0.0.0/33", &c), SG_CIDR_EPREFIX);
    assert_int_equal(sg_cidr_parse("::/129", &c), SG_CIDR_EPREFIX);
    assert_int_equal(sg_cidr_parse("::/1280", &c), SG_CIDR_EPREFIX);
    assert_int_equal(sg_cidr_parse("10.0.0.0/", &c), SG_CIDR_EPREFIX);
    assert_int_equal(sg_cidr_parse("", &c), SG_CIDR_EADDR);
    assert_int_equal(sg_cidr_parse("/8", &c), SG_CIDR_EADDR);
    assert_int_equal(sg_cidr_parse("1.2.3.4.5", &c), SG_CIDR_EADDR);
    assert_int_equal(sg_cidr_parse("1:2:3:4:5:6:7:8:9:10:11:12:13:14:15:16:17", &c), SG_CIDR_EADDR);
    char buf[SG_CIDR_TEXT_MAX];
    assert_int_equal(sg_cidr_parse("2001:DB8::/32", &c), SG_CIDR_OK);
    assert_string_equal(sg_cidr_format(&c, buf), "2001:db8::/32");
    assert_int_equal(sg_cidr_parse("::ffff:192.168.0.0/112", &c), SG_CIDR_OK);
    assert_string_equal(sg_cidr_format(&c, buf), "192.168.0.0/16");

    sg_cidr_t outer, inner;
    sg_cidr_parse("10.0.0.0/8", &outer);
    sg_cidr_parse("10.1.0.0/16", &inner);
    assert_true(sg_cidr_covers(&outer, &inner));
    assert_false(sg_cidr_covers(&inner, &outer));
    assert_true(sg_cidr_covers(&outer, &outer));
    sg_cidr_parse("0.0.0.0/0", &outer);
    sg_cidr_parse("2001:db8::/32", &inner);
    assert_true(sg_cidr_covers(&outer, &inner));
    sg_cidr_parse("::/0", &outer);
    sg_cidr_parse("1.2.3.4", &inner);
    assert_false(sg_cidr_covers(&outer, &inner));
}

static void test_cidr_contains(void **state)
{
    struct {
        const char *cidr, *addr;
        int want;
    } cases[] = {
        {"10.0.0.0/8", "10.255.255.255", 1},
        {"10.0.0.0/8", "11.0.0.0", 0},
        {"10.0.0.0/8", "::ffff:10.0.0.1", 1},
        {"10.0.0.0/8", "::a00:1", 0}, /* IPv4-compatible is not mapped */
        {"172.16.0.0/12", "172.31.0.1", 1},
        {"172.16.0.0/12", "172.32.0.1", 0},
        {"1.2.3.4", "1.2.3.4", 1},
        {"1.2.3.4", "1.2.3.5", 0},
        {"0.0.0.0/0", "203.0.113.9", 1},
        {"0.0.0.0/0", "2001:db8::1", 1},
        {"::/0", "2001:db8::1", 1},
        {"::/0", "1.2.3.4", 0},
        {"::/0", "::ffff:1.2.3.4", 0},
        {"::ffff:1.2.3.0/120", "1.2.3.99", 1},
        {"2001:db8::/32", "2001:db8:ffff::1", 1},
        {"2001:db8::/32", "2001:db9::1", 0},
        {"2001:db8::/33", "2001:db8:8000::", 0},
        {"2001:db8::1", "2001:db8::1", 1},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        sg_cidr_t c;
        assert_int_equal(sg_cidr_parse(cases[i].cidr, &c), SG_CIDR_OK);
        struct sockaddr_storage a = sa(cases[i].addr);
        int got = sg_cidr_contains(&c, (struct sockaddr *)&a);
        if (got != cases[i].want)
            print_error("%s contains %s: got %d\n", cases[i].cidr, cases[i].addr, got);
        assert_int_equal(got, cases[i].want);
    }
}

/* ---- decisions ---- */

typedef struct {
    const char *addr;
    int allow;
    sg_egress_reason_t reason;
    const char *rule; /* NULL: no rule */
} verdict_case_t;

static void check_verdicts(const sg_egress_policy_t *p, const sg_egress_guard_t *g,
                           const verdict_case_t *cases, size_t n, const char *what)
{
    for (size_t i = 0; i < n; i++) {
        struct sockaddr_storage a = sa(cases[i].addr);
        sg_egress_verdict_t v = sg_egress_decide_addr(p, g, (struct sockaddr *)&a);
        int ok = v.allow == cases[i].allow && v.reason == cases[i].reason &&
                 (cases[i].rule ? v.rule && strcmp(v.rule, cases[i].rule) == 0 : v.rule == NULL);
        if (!ok)
            print_error("%s: %s: got %d %s %s, want %d %s %s\n", what, cases[i].addr, v.allow,
                        sg_egress_reason_name(v.reason), v.rule ? v.rule : "-", cases[i].allow,
                        sg_egress_reason_name(cases[i].reason),
                        cases[i].rule ? cases[i].rule : "-");
        assert_true(ok);
    }
}

#define N(a) (sizeof(a) / sizeof((a)[0]))
enum { DENY = 0, ALLOW = 1 };
#define R_CIDR SG_EGRESS_REASON_CIDR
#define R_DEF SG_EGRESS_REASON_DEFAULT
#define R_ALWAYS SG_EGRESS_REASON_ALWAYS_DENIED

static void test_decide_basic(void **state)
{
    sg_egress_guard_t *g;
    char err[256];
    assert_int_equal(sg_egress_guard_new(NULL, NULL, 0, &g, err, sizeof(err)), 0);

    static const verdict_case_t no_rules[] = {
        {"1.1.1.1", ALLOW, R_DEF, NULL},
        {"2606:4700::1111", ALLOW, R_DEF, NULL},
        {"8.8.8.8", ALLOW, R_DEF, NULL},
        {"10.0.0.1", DENY, R_ALWAYS, "10.0.0.0/8"},
    };
    check_verdicts(NULL, g, no_rules, N(no_rules), "no rules");

    sg_egress_policy_t *off = policy("false", NULL);
    static const verdict_case_t internet_off[] = {
        {"1.1.1.1", DENY, R_CIDR, "0.0.0.0/0"},
        {"2606:4700::1111", DENY, R_CIDR, "0.0.0.0/0"},
        {"::ffff:1.1.1.1", DENY, R_CIDR, "0.0.0.0/0"},
        {"8.8.8.8", DENY, R_CIDR, "0.0.0.0/0"}, /* no domains: no nameserver */
        {"127.0.0.1", DENY, R_ALWAYS, "127.0.0.0/8"},
    };
    check_verdicts(off, g, internet_off, N(internet_off), "internet off");

    sg_egress_policy_t *one = policy(NULL, "{\"deny_out\":[\"1.1.1.0/24\"]}");
    static const verdict_case_t deny_one[] = {
        {"1.1.1.1", DENY, R_CIDR, "1.1.1.0/24"},
        {"::ffff:1.1.1.200", DENY, R_CIDR, "1.1.1.0/24"},
        {"1.1.2.1", ALLOW, R_DEF, NULL},
        {"2001:db8::1", ALLOW, R_DEF, NULL},
    };
    check_verdicts(one, g, deny_one, N(deny_one), "deny one");

    sg_egress_policy_t *mix = policy(
        NULL, "{\"allow_out\":[\"1.1.1.1\",\"2001:db8:1::/48\",\"10.0.0.0/8\",\"0.0.0.0/0\"],"
              "\"deny_out\":[\"1.1.1.0/24\",\"2001:db8::/32\",\"1.1.1.1\"]}");
    static const verdict_case_t allow_beats_deny[] = {
        {"1.1.1.1", ALLOW, R_CIDR, "1.1.1.1"},
        {"::ffff:1.1.1.1", ALLOW, R_CIDR, "1.1.1.1"},
        {"2001:db8:1::5", ALLOW, R_CIDR, "2001:db8:1::/48"},
        /* the later allow-all still beats the deny rules */
        {"1.1.1.2", ALLOW, R_CIDR, "0.0.0.0/0"},
        {"2001:db8:2::5", ALLOW, R_CIDR, "0.0.0.0/0"},
        /* allow rules never lift always-denied */
        {"10.1.2.3", DENY, R_ALWAYS, "10.0.0.0/8"},
    };
    check_verdicts(mix, g, allow_beats_deny, N(allow_beats_deny), "allow beats deny");

    sg_egress_policy_t *v6 = policy(
        NULL, "{\"allow_out\":[\"2001:db8:1::/48\"],\"deny_out\":[\"2001:db8::/32\",\"::/0\"]}");
    static const verdict_case_t ipv6[] = {
        {"2001:db8:1::5", ALLOW, R_CIDR, "2001:db8:1::/48"},
        {"2001:db8:2::5", DENY, R_CIDR, "2001:db8::/32"},
        {"2001:db9::1", DENY, R_CIDR, "::/0"},
        {"1.1.1.1", ALLOW, R_DEF, NULL},
        {"::ffff:1.1.1.1", ALLOW, R_DEF, NULL},
    };
    check_verdicts(v6, g, ipv6, N(ipv6), "ipv6");

    struct sockaddr_un_like {
        sa_family_t family;
        char pad[30];
    } odd = {AF_UNIX, {0}};
    sg_egress_verdict_t v = sg_egress_decide_addr(NULL, g, (struct sockaddr *)&odd);
    assert_false(v.allow);

    sg_egress_policy_free(off);
    sg_egress_policy_free(one);
    sg_egress_policy_free(mix);
    sg_egress_policy_free(v6);
    sg_egress_guard_free(g);
}

static void test_nameserver_auto_allow(void **state)
{
    sg_egress_guard_t *g, *g6, *g_internal;
    char err[256];
    assert_int_equal(sg_egress_guard_new(NULL, NULL, 0, &g, err, sizeof(err)), 0);
    assert_int_equal(sg_egress_guard_new("2001:4860:4860::8888", NULL, 0, &g6, err, sizeof(err)),
                     0);
    assert_int_equal(sg_egress_guard_new("10.0.0.2", NULL, 0, &g_internal, err, sizeof(err)), 0);
    const char *text;
    const sg_cidr_t *ns = sg_egress_guard_nameserver(g, &text);
    assert_string_equal(text, "8.8.8.8");
    assert_int_equal(ns->prefix, 32);

    sg_egress_policy_t *dom = policy("false", "{\"allow_out\":[\"example.com\"]}");
    sg_egress_policy_t *cidr_only = policy("false", "{\"allow_out\":[\"1.1.1.1\"]}");

    static const verdict_case_t with_domains[] = {
        {"8.8.8.8", ALLOW, R_CIDR, "8.8.8.8"},
        {"::ffff:8.8.8.8", ALLOW, R_CIDR, "8.8.8.8"},
        {"8.8.4.4", DENY, R_CIDR, "0.0.0.0/0"},
        {"2001:4860:4860::8888", DENY, R_CIDR, "0.0.0.0/0"},
    };
    check_verdicts(dom, g, with_domains, N(with_domains), "domains");
    static const verdict_case_t without_domains[] = {
        {"8.8.8.8", DENY, R_CIDR, "0.0.0.0/0"},
        {"1.1.1.1", ALLOW, R_CIDR, "1.1.1.1"},
    };
    check_verdicts(cidr_only, g, without_domains, N(without_domains), "no domains");
    static const verdict_case_t v6_nameserver[] = {
        {"2001:4860:4860::8888", ALLOW, R_CIDR, "2001:4860:4860::8888"},
        {"8.8.8.8", DENY, R_CIDR, "0.0.0.0/0"},
    };
    check_verdicts(dom, g6, v6_nameserver, N(v6_nameserver), "v6 nameserver");
    static const verdict_case_t internal_nameserver[] = {
        {"10.0.0.2", DENY, R_ALWAYS, "10.0.0.0/8"},
    };
    check_verdicts(dom, g_internal, internal_nameserver, N(internal_nameserver), "internal ns");
    static const verdict_case_t no_guard[] = {
        {"8.8.8.8", DENY, R_CIDR, "0.0.0.0/0"},
    };
    check_verdicts(dom, NULL, no_guard, N(no_guard), "no guard");

    sg_egress_policy_free(dom);
    sg_egress_policy_free(cidr_only);
    sg_egress_guard_free(g);
    sg_egress_guard_free(g6);
    sg_egress_guard_free(g_internal);
}

static void test_always_denied_ranges(void **state)
{
    static const struct {
        const char *addr, *range; /* range NULL: not denied */
    } cases[] = {
        {"0.0.0.0", "0.0.0.0/8"},
        {"0.255.255.255", "0.0.0.0/8"},
        {"1.0.0.0", NULL},
        {"10.0.0.1", "10.0.0.0/8"},
        {"10.255.255.255", "10.0.0.0/8"},
        {"100.64.0.1", "100.64.0.0/10"},
        {"100.127.255.255", "100.64.0.0/10"},
        {"100.128.0.1", NULL},
        {"100.63.255.255", NULL},
        {"127.0.0.1", "127.0.0.0/8"},
        {"169.254.169.254", "169.254.0.0/16"},
        {"169.255.0.1", NULL},
        {"172.16.0.1", "172.16.0.0/12"},
        {"172.31.255.255", "172.16.0.0/12"},
        {"172.32.0.1", NULL},
        {"172.15.255.255", NULL},
        {"192.168.1.1", "192.168.0.0/16"},
        {"192.169.0.1", NULL},
        {"224.0.0.1", "224.0.0.0/4"},
        {"239.255.255.255", "224.0.0.0/4"},
        {"240.0.0.1", "240.0.0.0/4"},
        {"255.255.255.255", "240.0.0.0/4"},
        {"223.255.255.255", NULL},
        {"8.8.8.8", NULL},
        {"::", "::/128"},
        {"::1", "::1/128"},
        {"::2", NULL},
        {"fe80::1", "fe80::/10"},
        {"febf:ffff::1", "fe80::/10"},
        {"fec0::1", NULL},
        {"fc00::1", "fc00::/7"},
        {"fd12:3456::1", "fc00::/7"},
        {"fe00::1", NULL},
        {"ff02::1", "ff00::/8"},
        {"2001:db8::1", NULL},
        {"::ffff:10.0.0.1", "10.0.0.0/8"},
        {"::ffff:127.0.0.1", "127.0.0.0/8"},
        {"::ffff:169.254.169.254", "169.254.0.0/16"},
        {"::ffff:0.0.0.0", "0.0.0.0/8"},
        {"::ffff:8.8.8.8", NULL},
    };
    sg_egress_policy_t *allow_all =
        policy(NULL, "{\"allow_out\":[\"0.0.0.0/0\",\"::/0\",\"10.0.0.0/8\"]}");
    for (size_t i = 0; i < N(cases); i++) {
        struct sockaddr_storage a = sa(cases[i].addr);
        const char *range = NULL;
        int denied = sg_egress_always_denied(NULL, (struct sockaddr *)&a, &range);
        if (denied != (cases[i].range != NULL) || (denied && strcmp(range, cases[i].range) != 0))
            print_error("%s: denied %d range %s\n", cases[i].addr, denied, range ? range : "-");
        assert_int_equal(denied, cases[i].range != NULL);
        if (denied) assert_string_equal(range, cases[i].range);
        /* and through decide, even with every allow rule */
        sg_egress_verdict_t v = sg_egress_decide_addr(allow_all, NULL, (struct sockaddr *)&a);
        assert_int_equal(v.allow, !denied);
        assert_int_equal(v.reason, denied ? R_ALWAYS : R_CIDR);
    }
    sg_egress_policy_free(allow_all);

    const sg_cidr_t *ranges;
    const char *const *texts;
    size_t n = sg_egress_always_denied_ranges(&ranges, &texts);
    assert_int_equal(n, 14);
    for (size_t i = 0; i < n; i++) { /* each text parses to the range it names */
        sg_cidr_t c;
        assert_int_equal(sg_cidr_parse(texts[i], &c), SG_CIDR_OK);
        assert_true(sg_cidr_covers(&c, &ranges[i]) && sg_cidr_covers(&ranges[i], &c));
    }
}

static void test_exceptions(void **state)
{
    const char *exc[] = {"10.1.0.0/16", "fd00::/8", "::ffff:192.168.5.0/120", "100.64.0.1"};
    sg_egress_guard_t *g;
    char err[256];
    assert_int_equal(sg_egress_guard_new("1.1.1.1", exc, N(exc), &g, err, sizeof(err)), 0);
    const sg_cidr_t *c;
    const char *const *texts;
    assert_int_equal(sg_egress_guard_exceptions(g, &c, &texts), 4);
    assert_string_equal(texts[2], "::ffff:192.168.5.0/120");
    assert_int_equal(c[2].family, AF_INET);

    static const verdict_case_t default_policy[] = {
        {"10.1.2.3", ALLOW, R_DEF, NULL},
        {"::ffff:10.1.2.3", ALLOW, R_DEF, NULL},
        {"10.2.0.1", DENY, R_ALWAYS, "10.0.0.0/8"},
        {"fd00::1", ALLOW, R_DEF, NULL},
        {"fc00::1", DENY, R_ALWAYS, "fc00::/7"},
        {"192.168.5.7", ALLOW, R_DEF, NULL},
        {"192.168.6.1", DENY, R_ALWAYS, "192.168.0.0/16"},
        {"100.64.0.1", ALLOW, R_DEF, NULL},
        {"100.64.0.2", DENY, R_ALWAYS, "100.64.0.0/10"},
    };
    check_verdicts(NULL, g, default_policy, N(default_policy), "exceptions, default");
    /* an exception only lifts always-denied; the sandbox's rules still apply */
    sg_egress_policy_t *off = policy("false", "{\"allow_out\":[\"fd00::/16\"]}");
    static const verdict_case_t internet_off[] = {
        {"10.1.2.3", DENY, R_CIDR, "0.0.0.0/0"},
        {"fd00::1", ALLOW, R_CIDR, "fd00::/16"},
        {"fd01::1", DENY, R_CIDR, "0.0.0.0/0"},
    };
    check_verdicts(off, g, internet_off, N(internet_off), "exceptions, internet off");
    sg_egress_policy_free(off);
    sg_egress_guard_free(g);
}

static void test_guard_errors(void **state)
{
    sg_egress_guard_t *g = (sg_egress_guard_t *)1;
    char err[256];
    assert_int_equal(sg_egress_guard_new("8.8.8.8/32", NULL, 0, &g, err, sizeof(err)), -1);
    assert_null(g);
    assert_string_equal(err, "egress.nameserver: \"8.8.8.8/32\": not an IP address");
    assert_int_equal(sg_egress_guard_new("dns.google", NULL, 0, &g, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "egress.nameserver"));
    const char *bad[] = {"10.1.0.0/16", "10.0.0.1/8"};
    assert_int_equal(sg_egress_guard_new(NULL, bad, 2, &g, err, sizeof(err)), -1);
    assert_string_equal(err, "egress.always_denied_exceptions[1]: \"10.0.0.1/8\": host bits set "
                             "(did you mean 10.0.0.0/8?)");
    const char *junk[] = {"nope"};
    assert_int_equal(sg_egress_guard_new(NULL, junk, 1, &g, err, sizeof(err)), -1);
    assert_string_equal(err, "egress.always_denied_exceptions[0]: \"nope\": not a CIDR");
}

/* ---- names ---- */

static void test_names(void **state)
{
    sg_egress_policy_t *p = policy(
        "false", "{\"allow_out\":[\"*.Example.com\",\"Api.Foo.org.\",\"1.1.1.1\",\"x_y.net\"]}");
    static const struct {
        const char *name;
        const char *rule; /* NULL: no match */
    } cases[] = {
        {"a.example.com", "*.example.com"},
        {"a.b.example.com", "*.example.com"},
        {"A.EXAMPLE.COM.", "*.example.com"},
        {"x-1.example.com", "*.example.com"},
        {"example.com", NULL},
        {"example.com.", NULL},
        {"xexample.com", NULL},
        {".example.com", NULL},
        {"a..example.com", NULL},
        {"a.example.com..", NULL},
        {"a.example.com.evil.net", NULL},
        {"a.example.co", NULL},
        {"-a.example.com", NULL},
        {"a b.example.com", NULL},
        {"a/.example.com", NULL},
        {"*.example.com", NULL},
        {"api.foo.org", "api.foo.org"},
        {"API.FOO.ORG.", "api.foo.org"},
        {"x.api.foo.org", NULL},
        {"foo.org", NULL},
        {"pi.foo.org", NULL},
        {"x_y.net", "x_y.net"},
        {"1.1.1.1", NULL},
        {"", NULL},
        {".", NULL},
    };
    for (size_t i = 0; i < N(cases); i++) {
        size_t len = strlen(cases[i].name);
        guarded_t gp = guard_copy(cases[i].name, len);
        const char *rule = NULL;
        int got = sg_egress_name_allowed(p, gp.data, len, &rule);
        if (got != (cases[i].rule != NULL) || (got && strcmp(rule, cases[i].rule) != 0))
            print_error("name %s: got %d rule %s\n", cases[i].name, got, rule ? rule : "-");
        assert_int_equal(got, cases[i].rule != NULL);
        if (got) assert_string_equal(rule, cases[i].rule);
        guard_free(&gp);
    }

    /* lengths, not NULs, delimit names */
    assert_true(sg_egress_name_allowed(p, "a.example.comX", 13, NULL));
    assert_false(sg_egress_name_allowed(p, "a.example.com\0", 14, NULL));
    assert_false(sg_egress_name_allowed(p, "a.example.com\0.x", 16, NULL));
    char big[400];
    memset(big, 'a', sizeof(big));
    memcpy(big + sizeof(big) - 12, ".example.com", 12);
    assert_false(sg_egress_name_allowed(p, big, sizeof(big), NULL));

    sg_egress_policy_t *cidrs = policy("false", "{\"allow_out\":[\"1.1.1.1\"]}");
    assert_false(sg_egress_name_allowed(cidrs, "a.example.com", 13, NULL));
    assert_false(sg_egress_name_allowed(NULL, "a.example.com", 13, NULL));
    sg_egress_policy_free(cidrs);
    sg_egress_policy_free(p);

    /* numeric look-alikes never match a wildcard, even one on a real TLD */
    sg_egress_policy_t *num = policy("false", "{\"allow_out\":[\"*.com\"]}");
    assert_true(sg_egress_name_allowed(num, "a.com", 5, NULL));
    assert_false(sg_egress_name_allowed(num, "com", 3, NULL));
    sg_egress_policy_free(num);
}

static void test_reason_names(void **state)
{
    static const char *const want[] = {
        "domain",          "cidr",         "default",    "always_denied",
        "unknown_sandbox", "sniff_failed", "dial_failed"};
    assert_int_equal(N(want), SG_EGRESS_REASON_COUNT);
    for (int i = 0; i < SG_EGRESS_REASON_COUNT; i++)
        assert_string_equal(sg_egress_reason_name((sg_egress_reason_t)i), want[i]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reject_table),         cmocka_unit_test(test_reject_sizes),
        cmocka_unit_test(test_normalise_table),      cmocka_unit_test(test_equal),
        cmocka_unit_test(test_cidr_parse),           cmocka_unit_test(test_cidr_contains),
        cmocka_unit_test(test_decide_basic),         cmocka_unit_test(test_nameserver_auto_allow),
        cmocka_unit_test(test_always_denied_ranges), cmocka_unit_test(test_exceptions),
        cmocka_unit_test(test_guard_errors),         cmocka_unit_test(test_names),
        cmocka_unit_test(test_reason_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
