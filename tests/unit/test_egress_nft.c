/* The egress nftables ruleset: rendered text for several policies, and (as
 * root, with nft installed) loaded by the real nft inside a throwaway network
 * namespace, where forged packets show what the anti-spoofing rules drop;
 * the machine's own ruleset is never touched. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netpacket/packet.h>
#include <sched.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "egress/nft.h"
#include "test_sockaddr.h"

/* ---- helpers ---- */

static sg_egress_policy_t *policy(const char *aia, const char *network)
{
    json_error_t e;
    json_t *a = aia ? json_loads(aia, JSON_DECODE_ANY, &e) : NULL;
    json_t *n = network ? json_loads(network, 0, &e) : NULL;
    sg_egress_policy_t *p = NULL;
    char err[256] = "";
    const char *field;
    int rc = sg_egress_policy_from_json(a, n, &p, err, sizeof(err), &field);
    if (rc != 0) print_error("policy rejected: %s\n", err);
    assert_int_equal(rc, 0);
    json_decref(a);
    json_decref(n);
    return p;
}

static void expect_has(const char *text, const char *part)
{
    if (!strstr(text, part)) print_error("missing: %s\n--- in ---\n%s\n", part, text);
    assert_non_null(strstr(text, part));
}

static void expect_lacks(const char *text, const char *part)
{
    if (strstr(text, part)) print_error("unexpected: %s\n--- in ---\n%s\n", part, text);
    assert_null(strstr(text, part));
}

/* The text of chain name (from "chain name {" to its closing "\t}"),
 * malloc'd; fails the test when absent. */
static char *chain_text(const char *text, const char *name)
{
    char head[128];
    snprintf(head, sizeof(head), "chain %s {\n", name);
    const char *start = strstr(text, head);
    if (!start) print_error("no chain %s in\n%s\n", name, text);
    assert_non_null(start);
    const char *end = strstr(start, "\n\t}");
    assert_non_null(end);
    return strndup(start, (size_t)(end - start));
}

static void expect_chain(const char *text, const char *name, const char *want)
{
    char *got = chain_text(text, name);
    if (strcmp(got, want) != 0) print_error("chain %s:\n%s\nwant:\n%s\n", name, got, want);
    assert_string_equal(got, want);
    free(got);
}

static const sg_egress_nft_opts_t opts = {
    .table = NULL, .http_port = 15080, .tls_port = 15443, .other_port = 15000};

static const char *const sandbox_ifaces[] = {"veth*", "tap*", "sgt-sbx-*"};

/* A fixture of sandboxes covering the shapes the renderer handles. */
typedef struct {
    sg_egress_guard_t *guard;
    sg_egress_policy_t *off, *mix, *dom, *six, *overlap;
    struct sockaddr_storage addrs[9];
    sg_egress_nft_sandbox_t sbs[9];
    size_t n;
} fixture_t;

static void fixture_init(fixture_t *f)
{
    memset(f, 0, sizeof(*f));
    const char *exc[] = {"10.1.2.0/24", "10.1.0.0/16", "fd00::/8"};
    char err[256];
    assert_int_equal(sg_egress_guard_new(NULL, exc, 3, &f->guard, err, sizeof(err)), 0);
    f->off = policy("false", NULL);
    f->mix = policy(NULL, "{\"allow_out\":[\"1.1.1.1\"],"
                          "\"deny_out\":[\"1.1.1.0/24\",\"2001:db8::/32\"]}");
    f->dom = policy("false", "{\"allow_out\":[\"*.example.com\",\"9.9.9.9\"]}");
    f->six = policy(NULL, "{\"allow_out\":[\"2001:db8:1::/48\"],\"deny_out\":[\"::/0\"]}");
    f->overlap = policy(NULL, "{\"allow_out\":[\"10.1.0.0/16\",\"1.2.3.4\",\"10.0.0.0/8\","
                              "\"1.2.3.4/32\",\"::ffff:5.5.5.0/120\"],"
                              "\"deny_out\":[\"0.0.0.0/0\",\"::/0\",\"2001:db8::/32\"]}");
    struct {
        const char *id, *ip;
        const sg_egress_policy_t *p;
    } list[] = {
        {"def", "10.11.0.2", NULL},        {"off", "10.11.0.3", f->off},
        {"mix", "10.11.0.4", f->mix},      {"dom", "10.11.0.5", f->dom},
        {"six", "fd00:11::5", f->six},     {"overlap", "::ffff:10.11.0.6", f->overlap},
        {"dup", "10.11.0.3", f->mix},      /* same address as "off" */
        {"bad id\n", "10.11.0.8", f->off}, /* not a chain name */
    };
    for (size_t i = 0; i < sizeof(list) / sizeof(list[0]); i++) {
        f->addrs[i] = sa(list[i].ip);
        f->sbs[i] = (sg_egress_nft_sandbox_t){list[i].id, &f->addrs[i], list[i].p};
    }
    f->n = sizeof(list) / sizeof(list[0]);
}

static void fixture_free(fixture_t *f)
{
    sg_egress_policy_free(f->off);
    sg_egress_policy_free(f->mix);
    sg_egress_policy_free(f->dom);
    sg_egress_policy_free(f->six);
    sg_egress_policy_free(f->overlap);
    sg_egress_guard_free(f->guard);
}

/* ---- rendered text ---- */

static void test_render_empty(void **state)
{
    sg_strbuf_t out = {0};
    sg_egress_guard_t *g;
    char err[256];
    assert_int_equal(sg_egress_guard_new(NULL, NULL, 0, &g, err, sizeof(err)), 0);
    assert_int_equal(sg_egress_nft_render(&out, &opts, g, NULL, 0), 0);
    sg_strbuf_append(&out, "", 1);
    const char *t = out.base;
    /* one transaction that replaces only its own table, existing or not */
    assert_true(strncmp(t,
                        "table inet sandgate {}\ndelete table inet sandgate\n"
                        "table inet sandgate {\n",
                        strlen("table inet sandgate {}\ndelete table inet sandgate\n"
                               "table inet sandgate {\n")) == 0);
    expect_has(t, "\tset sandboxes4 {\n\t\ttype ipv4_addr\n\t}\n");
    expect_has(t, "\tset sandboxes6 {\n\t\ttype ipv6_addr\n\t}\n");
    expect_has(t, "\t\telements = { 0.0.0.0/8, 10.0.0.0/8, 100.64.0.0/10, 127.0.0.0/8, "
                  "169.254.0.0/16, 172.16.0.0/12, 192.168.0.0/16, 224.0.0.0/4, 240.0.0.0/4 }\n");
    expect_has(t, "\t\telements = { ::, ::1, fe80::/10, fc00::/7, ff00::/8, ::ffff:0.0.0.0/96 }\n");
    expect_chain(t, "antispoof",
                 "chain antispoof {\n"
                 "\t\ttype filter hook prerouting priority raw; policy accept;\n"
                 "\t\tip saddr @sandboxes4 fib saddr . iif oif missing drop\n"
                 "\t\tip6 saddr @sandboxes6 fib saddr . iif oif missing drop");
    expect_chain(t, "redirect_tcp",
                 "chain redirect_tcp {\n"
                 "\t\ttcp dport 80 redirect to :15080\n"
                 "\t\ttcp dport 443 redirect to :15443\n"
                 "\t\ttcp dport != { 80, 443 } redirect to :15000");
    expect_chain(t, "sandbox_to_host",
                 "chain sandbox_to_host {\n"
                 "\t\tct state established,related accept\n"
                 "\t\ttcp dport { 15080, 15443, 15000 } accept\n"
                 "\t\ticmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept\n"
                 "\t\tdrop");
    expect_chain(t, "always_denied",
                 "chain always_denied {\n"
                 "\t\tip daddr @always_denied4 drop\n"
                 "\t\tip6 daddr @always_denied6 drop");
    expect_chain(t, "sandbox_out",
                 "chain sandbox_out {\n"
                 "\t\tct state established,related accept\n"
                 "\t\tmeta l4proto tcp drop\n"
                 "\t\tjump always_denied\n"
                 "\t\taccept");
    expect_lacks(t, "vmap");
    assert_string_equal(t + strlen(t) - 5, "\t}\n}\n");
    sg_strbuf_free(&out);
    sg_egress_guard_free(g);
}

static void test_render_policies(void **state)
{
    fixture_t f;
    fixture_init(&f);
    sg_strbuf_t out = {0};
    sg_egress_nft_opts_t o = opts;
    o.table = "sg_test";
    assert_int_equal(sg_egress_nft_render(&out, &o, f.guard, f.sbs, f.n), 0);
    sg_strbuf_append(&out, "", 1);
    const char *t = out.base;

    expect_has(t, "table inet sg_test {}\ndelete table inet sg_test\n");
    expect_has(t, "\ntable inet sg_test {\n");
    expect_has(t, "\t\telements = { 10.11.0.2, 10.11.0.3, 10.11.0.4, 10.11.0.5, 10.11.0.6, "
                  "10.11.0.8 }\n");
    expect_has(t, "\t\telements = { fd00:11::5 }\n");
    expect_has(t, "# sandbox dup left out: its address belongs to sandbox off\n");
    /* exceptions: nested ones folded, each family its own rule, before the drops */
    expect_chain(t, "always_denied",
                 "chain always_denied {\n"
                 "\t\tip daddr 10.1.0.0/16 return\n"
                 "\t\tip6 daddr fd00::/8 return\n"
                 "\t\tip daddr @always_denied4 drop\n"
                 "\t\tip6 daddr @always_denied6 drop");
    expect_chain(t, "sandbox_out",
                 "chain sandbox_out {\n"
                 "\t\tct state established,related accept\n"
                 "\t\tmeta l4proto tcp drop\n"
                 "\t\tjump always_denied\n"
                 "\t\tip saddr vmap {\n"
                 "\t\t\t10.11.0.3 : goto sb_off,\n"
                 "\t\t\t10.11.0.4 : goto sb_mix,\n"
                 "\t\t\t10.11.0.5 : goto sb_dom,\n"
                 "\t\t\t10.11.0.6 : goto sb_overlap,\n"
                 "\t\t\t10.11.0.8 : goto sb7\n"
                 "\t\t}\n"
                 "\t\tip6 saddr vmap {\n"
                 "\t\t\tfd00:11::5 : goto sb_six\n"
                 "\t\t}\n"
                 "\t\taccept");
    expect_lacks(t, "sb_def");
    /* internet off: 0.0.0.0/0 is every IPv4 and every IPv6 address */
    expect_chain(t, "sb_off",
                 "chain sb_off {\n"
                 "\t\tip daddr 0.0.0.0/0 drop\n"
                 "\t\tip6 daddr ::/0 drop\n"
                 "\t\taccept");
    expect_chain(t, "sb7",
                 "chain sb7 {\n"
                 "\t\tip daddr 0.0.0.0/0 drop\n"
                 "\t\tip6 daddr ::/0 drop\n"
                 "\t\taccept");
    /* allow before deny */
    expect_chain(t, "sb_mix",
                 "chain sb_mix {\n"
                 "\t\tip daddr 1.1.1.1 accept\n"
                 "\t\tip daddr 1.1.1.0/24 drop\n"
                 "\t\tip6 daddr 2001:db8::/32 drop\n"
                 "\t\taccept");
    /* domains: the nameserver joins the allowed addresses */
    expect_chain(t, "sb_dom",
                 "chain sb_dom {\n"
                 "\t\tip daddr { 9.9.9.9, 8.8.8.8 } accept\n"
                 "\t\tip daddr 0.0.0.0/0 drop\n"
                 "\t\tip6 daddr ::/0 drop\n"
                 "\t\taccept");
    expect_chain(t, "sb_six",
                 "chain sb_six {\n"
                 "\t\tip6 daddr 2001:db8:1::/48 accept\n"
                 "\t\tip6 daddr ::/0 drop\n"
                 "\t\taccept");
    /* overlapping and duplicate ranges folded so the interval sets load */
    expect_chain(t, "sb_overlap",
                 "chain sb_overlap {\n"
                 "\t\tip daddr { 1.2.3.4, 10.0.0.0/8, 5.5.5.0/24 } accept\n"
                 "\t\tip daddr 0.0.0.0/0 drop\n"
                 "\t\tip6 daddr ::/0 drop\n"
                 "\t\taccept");
    sg_strbuf_free(&out);
    fixture_free(&f);
}

static void test_render_ports_off(void **state)
{
    sg_egress_nft_opts_t o = {.table = "t", .http_port = 15080};
    sg_strbuf_t out = {0};
    assert_int_equal(sg_egress_nft_render(&out, &o, NULL, NULL, 0), 0);
    sg_strbuf_append(&out, "", 1);
    /* 443 and other ports stay unredirected, so forward's TCP drop takes them */
    expect_chain(out.base, "redirect_tcp",
                 "chain redirect_tcp {\n"
                 "\t\ttcp dport 80 redirect to :15080");
    expect_has(out.base, "\t\ttcp dport { 15080 } accept\n");
    sg_strbuf_free(&out);

    o = (sg_egress_nft_opts_t){.table = "t"};
    assert_int_equal(sg_egress_nft_render(&out, &o, NULL, NULL, 0), 0);
    sg_strbuf_append(&out, "", 1);
    expect_lacks(out.base, "redirect to");
    expect_lacks(out.base, "tcp dport {");
    sg_strbuf_free(&out);

    /* one port twice is listed once */
    o = (sg_egress_nft_opts_t){
        .table = "t", .http_port = 15000, .tls_port = 15443, .other_port = 15000};
    assert_int_equal(sg_egress_nft_render(&out, &o, NULL, NULL, 0), 0);
    sg_strbuf_append(&out, "", 1);
    expect_has(out.base, "\t\ttcp dport { 15000, 15443 } accept\n");
    sg_strbuf_free(&out);
}

static void test_render_interfaces(void **state)
{
    sg_egress_nft_opts_t o = opts;
    o.sandbox_interfaces = sandbox_ifaces;
    o.n_sandbox_interfaces = 3;
    sg_strbuf_t out = {0};
    assert_int_equal(sg_egress_nft_render(&out, &o, NULL, NULL, 0), 0);
    sg_strbuf_append(&out, "", 1);
    /* after the fib checks; no sandbox yet, so the sets are empty and every
     * IPv4/IPv6 source on those interfaces but link-local discovery drops */
    expect_chain(out.base, "antispoof",
                 "chain antispoof {\n"
                 "\t\ttype filter hook prerouting priority raw; policy accept;\n"
                 "\t\tip saddr @sandboxes4 fib saddr . iif oif missing drop\n"
                 "\t\tip6 saddr @sandboxes6 fib saddr . iif oif missing drop\n"
                 "\t\tiifname { \"veth*\", \"tap*\", \"sgt-sbx-*\" } "
                 "meta nfproto ipv4 ip saddr != @sandboxes4 drop\n"
                 "\t\tiifname { \"veth*\", \"tap*\", \"sgt-sbx-*\" } ip6 saddr fe80::/10 "
                 "icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } "
                 "accept\n"
                 "\t\tiifname { \"veth*\", \"tap*\", \"sgt-sbx-*\" } "
                 "meta nfproto ipv6 ip6 saddr != @sandboxes6 drop");
    sg_strbuf_free(&out);

    /* the longest names nft takes: 15 characters, the '*' counted */
    const char *const longest[] = {"abcdefghijklmno", "abcdefghijklmn*", "a", "A_b.c-9"};
    o.sandbox_interfaces = longest;
    o.n_sandbox_interfaces = 4;
    assert_int_equal(sg_egress_nft_render(&out, &o, NULL, NULL, 0), 0);
    sg_strbuf_append(&out, "", 1);
    expect_has(out.base, "\t\tiifname { \"abcdefghijklmno\", \"abcdefghijklmn*\", \"a\", "
                         "\"A_b.c-9\" } meta nfproto ipv4 ip saddr != @sandboxes4 drop\n");
    sg_strbuf_free(&out);
}

static void test_render_bad_table(void **state)
{
    const char *bad[] = {"", "1abc", "a b", "a;delete", "t\n", "-x"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        sg_egress_nft_opts_t o = {.table = bad[i], .http_port = 1, .tls_port = 2, .other_port = 3};
        sg_strbuf_t out = {0};
        assert_int_equal(sg_egress_nft_render(&out, &o, NULL, NULL, 0), -1);
        assert_int_equal(out.len, 0);
        sg_strbuf_free(&out);
    }
}

static void test_render_bad_interfaces(void **state)
{
    /* each would break the quoted string or be refused by nft */
    const char *bad[] = {"",
                         "*",
                         "ve*th",
                         "veth**",
                         "a b",
                         "x\"y",
                         "eth0/1",
                         "abcdefghijklmnop",
                         "abcdefghijklmno*",
                         "tap\n",
                         "vöth",
                         NULL};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        const char *const list[] = {"veth*", bad[i]};
        sg_egress_nft_opts_t o = opts;
        o.sandbox_interfaces = list;
        o.n_sandbox_interfaces = 2;
        sg_strbuf_t out = {0};
        int rc = sg_egress_nft_render(&out, &o, NULL, NULL, 0);
        if (rc != -1) print_error("accepted pattern %zu: %s\n", i, bad[i] ? bad[i] : "(null)");
        assert_int_equal(rc, -1);
        assert_int_equal(out.len, 0);
        sg_strbuf_free(&out);
    }
}

/* ---- loading with the real nft, in a new network namespace ---- */

/* Big enough that the text overflows a pipe buffer several times. */
static void render_big(sg_strbuf_t *out, const sg_egress_guard_t *g)
{
    enum { N_SB = 200, N_RULES = 60 };
    static struct sockaddr_storage addrs[N_SB];
    static sg_egress_nft_sandbox_t sbs[N_SB];
    static char ids[N_SB][16];
    sg_egress_policy_t *pols[N_SB];
    for (int i = 0; i < N_SB; i++) {
        json_t *allow = json_array();
        for (int j = 0; j < N_RULES; j++) {
            char cidr[32];
            snprintf(cidr, sizeof(cidr), "%d.%d.%d.0/24", 20 + i % 50, i, 3 * j);
            json_array_append_new(allow, json_string(cidr));
        }
        json_t *net = json_pack("{s:o}", "allow_out", allow);
        char err[256];
        const char *field;
        assert_int_equal(
            sg_egress_policy_from_json(json_false(), net, &pols[i], err, sizeof(err), &field), 0);
        json_decref(net);
        char ip[32];
        snprintf(ip, sizeof(ip), "10.%d.%d.2", 100 + i / 250, i % 250);
        addrs[i] = sa(ip);
        snprintf(ids[i], sizeof(ids[i]), "big%d", i);
        sbs[i] = (sg_egress_nft_sandbox_t){ids[i], &addrs[i], pols[i]};
    }
    assert_int_equal(sg_egress_nft_render(out, &opts, g, sbs, N_SB), 0);
    for (int i = 0; i < N_SB; i++) sg_egress_policy_free(pols[i]);
}

static void write_all(int fd, const char *s, size_t len)
{
    while (len) {
        ssize_t w = write(fd, s, len);
        if (w <= 0) _exit(3);
        s += w;
        len -= (size_t)w;
    }
}

static void append_cmd_output(sg_strbuf_t *out, const char *cmd)
{
    FILE *f = popen(cmd, "r");
    if (!f) _exit(4);
    char buf[4096];
    size_t r;
    while ((r = fread(buf, 1, sizeof(buf), f)) > 0) sg_strbuf_append(out, buf, r);
    pclose(f);
}

/* Runs child(fd, arg) in a forked process inside a new network namespace and
 * collects what it writes to fd into out. Returns the child's exit status;
 * 77 means no namespace or no nft here (the caller skips). */
static int in_netns(void (*child)(int fd, void *arg), void *arg, sg_strbuf_t *out)
{
    int p[2];
    assert_int_equal(pipe(p), 0);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(p[0]);
        if (unshare(CLONE_NEWNET) != 0) _exit(77);
        child(p[1], arg);
        _exit(0);
    }
    close(p[1]);
    char buf[4096];
    ssize_t r;
    while ((r = read(p[0], buf, sizeof(buf))) > 0) sg_strbuf_append(out, buf, (size_t)r);
    close(p[0]);
    sg_strbuf_append(out, "", 1);
    out->len--;
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    return WEXITSTATUS(status);
}

/* In the child, in its own network namespace: a foreign table, the fixture
 * ruleset applied twice, a broken ruleset, the big one; reports
 * "rc rc rc rc\n<broken's error>\n===\n<nft list ruleset after the
 * fixture>===\n<table after big>" on fd. Exit 77: no nft. */
typedef struct {
    sg_strbuf_t fixture, big;
} load_texts_t;

static void load_child(int fd, void *arg)
{
    const load_texts_t *texts = arg;
    const char *fixture = texts->fixture.base, *big = texts->big.base;
    size_t fixture_len = texts->fixture.len, big_len = texts->big.len;
    char err[4096];
    const char foreign[] = "table inet other {\n\tchain keep {\n\t\ttype filter hook input "
                           "priority 0; policy accept;\n\t\tcounter\n\t}\n}\n";
    if (sg_egress_nft_apply(foreign, strlen(foreign), err, sizeof(err)) != 0) {
        if (strstr(err, "cannot run nft")) _exit(77);
        write_all(fd, err, strlen(err));
        _exit(5);
    }
    sg_strbuf_t rep = {0};
    int rc1 = sg_egress_nft_apply(fixture, fixture_len, err, sizeof(err));
    if (rc1) sg_strbuf_appendf(&rep, "first apply: %s\n", err);
    int rc2 = sg_egress_nft_apply(fixture, fixture_len, err, sizeof(err));
    if (rc2) sg_strbuf_appendf(&rep, "second apply: %s\n", err);
    const char broken[] =
        "table inet sg_test {}\ndelete table inet sg_test\n"
        "table inet sg_test {\n\tchain c {\n\t\tip daddr 1.2.3.4/40 drop\n\t}\n}\n";
    int rc3 = sg_egress_nft_apply(broken, strlen(broken), err, sizeof(err));
    char broken_err[4096];
    snprintf(broken_err, sizeof(broken_err), "%s", err);
    for (char *p = broken_err; *p; p++)
        if (*p == '\n') *p = ' ';
    sg_strbuf_t listing = {0};
    append_cmd_output(&listing, "nft list ruleset 2>&1");
    int rc4 = sg_egress_nft_apply(big, big_len, err, sizeof(err));
    if (rc4) sg_strbuf_appendf(&rep, "big apply: %.300s\n", err);
    sg_strbuf_t head = {0};
    sg_strbuf_appendf(&head, "%d %d %d %d\n%s\n===\n", rc1, rc2, rc3, rc4, broken_err);
    write_all(fd, head.base, head.len);
    write_all(fd, listing.base, listing.len);
    write_all(fd, "===\n", 4);
    sg_strbuf_t big_listing = {0};
    append_cmd_output(&big_listing, "nft list chain inet sandgate sb_big199 2>&1");
    write_all(fd, big_listing.base, big_listing.len);
    write_all(fd, "===\n", 4);
    if (rep.len) write_all(fd, rep.base, rep.len);
}

static void test_load_in_netns(void **state)
{
    if (geteuid() != 0) skip();
    fixture_t f;
    fixture_init(&f);
    sg_strbuf_t fixture = {0}, big = {0};
    sg_egress_nft_opts_t o = opts;
    o.table = "sg_test";
    o.sandbox_interfaces = sandbox_ifaces;
    o.n_sandbox_interfaces = 3;
    assert_int_equal(sg_egress_nft_render(&fixture, &o, f.guard, f.sbs, f.n), 0);
    render_big(&big, f.guard);
    assert_true(big.len > 2 * 65536);

    load_texts_t texts = {fixture, big};
    sg_strbuf_t rep = {0};
    int status = in_netns(load_child, &texts, &rep);
    sg_strbuf_free(&fixture);
    sg_strbuf_free(&big);
    fixture_free(&f);
    if (status == 77) {
        sg_strbuf_free(&rep);
        skip();
    }
    if (status != 0) print_error("child %d: %s\n", status, rep.base);
    assert_int_equal(status, 0);

    const char *t = rep.base;
    if (strncmp(t, "0 0 -1 0\n", 9) != 0) print_error("report:\n%s\n", t);
    assert_true(strncmp(t, "0 0 -1 0\n", 9) == 0);
    /* nft's own message comes back for a broken ruleset */
    expect_has(t, "Error:");
    const char *listing = strstr(t, "\n===\n");
    assert_non_null(listing);
    /* the foreign table survived both loads; ours exists once */
    expect_has(listing, "table inet other {");
    expect_has(listing, "chain keep {");
    const char *ours = strstr(listing, "table inet sg_test {");
    assert_non_null(ours);
    assert_null(strstr(ours + 1, "table inet sg_test {"));
    /* the broken ruleset changed nothing: the fixture's table is intact */
    expect_lacks(listing, "1.2.3.4/40");
    expect_has(ours, "fib saddr . iif oif missing drop");
    /* nft lists the patterns sorted and the implied nfproto left out */
    expect_has(ours, "iifname { \"sgt-sbx-*\", \"tap*\", \"veth*\" } ip saddr != @sandboxes4 drop");
    expect_has(ours, "iifname { \"sgt-sbx-*\", \"tap*\", \"veth*\" } ip6 saddr fe80::/10 icmpv6 "
                     "type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } accept");
    expect_has(ours,
               "iifname { \"sgt-sbx-*\", \"tap*\", \"veth*\" } ip6 saddr != @sandboxes6 drop");
    expect_has(ours, "type nat hook prerouting priority dstnat; policy accept;");
    expect_has(ours, "tcp dport 80 redirect to :15080");
    expect_has(ours, "tcp dport 443 redirect to :15443");
    expect_has(ours, "tcp dport != { 80, 443 } redirect to :15000");
    expect_has(ours, "tcp dport { 15000, 15080, 15443 } accept");
    expect_has(ours, "ip daddr @always_denied4 drop");
    expect_has(ours, "ip daddr 10.1.0.0/16 return");
    expect_has(ours, "10.11.0.5 : goto sb_dom");
    expect_has(ours, "fd00:11::5 : goto sb_six");
    expect_has(ours, "chain sb_dom {");
    expect_has(ours, "ip daddr { 8.8.8.8, 9.9.9.9 } accept");
    expect_has(ours, "ip daddr { 1.2.3.4, 5.5.5.0/24, 10.0.0.0/8 } accept");
    expect_has(ours, "ip6 daddr 2001:db8:1::/48 accept");
    expect_has(ours, "meta l4proto tcp drop");
    const char *big_listing = strstr(listing + 5, "\n===\n");
    assert_non_null(big_listing);
    expect_has(big_listing, "chain sb_big199 {");
    expect_has(big_listing, "69.199.177.0/24");
    expect_has(big_listing, "69.199.0.0/24, 69.199.3.0/24");
    sg_strbuf_free(&rep);
}

/* ---- what the anti-spoofing rules do to packets, in a new network namespace ---- */

/* Two veth pairs: sbx0 (a sandbox interface, 10.99.0.1/24, fd99::1/64) fed
 * from peer0, and up0 (any other interface) fed from uppeer0. A frame sent
 * out of peer0 arrives on sbx0's input, so it meets prerouting as a packet
 * from a sandbox would. A probe table counts, per kind, what survived the
 * raw-priority antispoof chain (its own prerouting chain runs later, at
 * priority filter). */
static const char probe_rules[] =
    "table inet probe {}\ndelete table inet probe\n"
    "table inet probe {\n"
    "\tcounter spoofed4 {}\n\tcounter sandbox4 {}\n\tcounter uplink4 {}\n"
    "\tcounter spoofed6 {}\n\tcounter sandbox6 {}\n\tcounter nd6 {}\n\tcounter lludp6 {}\n"
    "\tchain c {\n"
    "\t\ttype filter hook prerouting priority filter; policy accept;\n"
    "\t\tiifname \"sbx0\" ip saddr 1.2.3.4 counter name spoofed4\n"
    "\t\tiifname \"sbx0\" ip saddr 10.99.0.2 counter name sandbox4\n"
    "\t\tiifname \"up0\" ip saddr 1.2.3.4 counter name uplink4\n"
    "\t\tiifname \"sbx0\" ip6 saddr 2001:db8::99 counter name spoofed6\n"
    "\t\tiifname \"sbx0\" ip6 saddr fd99::2 counter name sandbox6\n"
    "\t\tiifname \"sbx0\" ip6 saddr fe80::99 meta l4proto icmpv6 counter name nd6\n"
    "\t\tiifname \"sbx0\" ip6 saddr fe80::99 meta l4proto udp counter name lludp6\n"
    "\t}\n}\n";

static const char *const probe_names[] = {"spoofed4", "sandbox4", "uplink4", "spoofed6",
                                          "sandbox6", "nd6",      "lludp6"};

static void ip4_udp(unsigned char *p, const char *src, const char *dst)
{
    memset(p, 0, 28);
    p[0] = 0x45; /* version 4, 20-byte header */
    p[3] = 28;   /* total length */
    p[8] = 64;   /* TTL */
    p[9] = 17;   /* UDP */
    assert_int_equal(inet_pton(AF_INET, src, p + 12), 1);
    assert_int_equal(inet_pton(AF_INET, dst, p + 16), 1);
    uint32_t sum = 0;
    for (int i = 0; i < 20; i += 2) sum += (uint32_t)(p[i] << 8 | p[i + 1]);
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    p[10] = (unsigned char)(~sum >> 8);
    p[11] = (unsigned char)~sum;
    p[20] = 0x9c; /* source port 40000 */
    p[21] = 0x40;
    p[23] = 9; /* discard */
    p[25] = 8; /* UDP length */
}

/* IPv6 header and payload; the checksums inside the payload do not matter,
 * prerouting runs before anything verifies them. */
static size_t ip6_packet(unsigned char *p, const char *src, const char *dst, int next, int hops,
                         const unsigned char *payload, size_t n)
{
    memset(p, 0, 40);
    p[0] = 0x60;
    p[5] = (unsigned char)n;
    p[6] = (unsigned char)next;
    p[7] = (unsigned char)hops;
    assert_int_equal(inet_pton(AF_INET6, src, p + 8), 1);
    assert_int_equal(inet_pton(AF_INET6, dst, p + 24), 1);
    memcpy(p + 40, payload, n);
    return 40 + n;
}

/* Sends one IP packet out of ifname as a broadcast frame. */
static int inject(const char *ifname, int ethertype, const unsigned char *pkt, size_t len)
{
    int fd = socket(AF_PACKET, SOCK_DGRAM, 0);
    if (fd < 0) return -1;
    struct sockaddr_ll ll;
    memset(&ll, 0, sizeof(ll));
    ll.sll_family = AF_PACKET;
    ll.sll_protocol = htons((uint16_t)ethertype);
    ll.sll_ifindex = (int)if_nametoindex(ifname);
    ll.sll_halen = 6;
    memset(ll.sll_addr, 0xff, 6);
    ssize_t w = sendto(fd, pkt, len, 0, (struct sockaddr *)&ll, sizeof(ll));
    close(fd);
    return w == (ssize_t)len ? 0 : -1;
}

/* One packet of each probe kind; the ones every ruleset lets through go
 * last, so once they are counted the others have been judged. */
static int send_probes(void)
{
    unsigned char p[128];
    const unsigned char udp[8] = {0x9c, 0x40, 0, 9, 0, 8, 0, 0};
    unsigned char ns[24] = {135}; /* neighbour solicitation for fd99::1 */
    inet_pton(AF_INET6, "fd99::1", ns + 8);
    int rc = 0;
    ip4_udp(p, "1.2.3.4", "10.99.0.1");
    rc |= inject("peer0", ETH_P_IP, p, 28);
    size_t n = ip6_packet(p, "2001:db8::99", "fd99::1", 17, 64, udp, sizeof(udp));
    rc |= inject("peer0", ETH_P_IPV6, p, n);
    n = ip6_packet(p, "fe80::99", "fd99::1", 17, 64, udp, sizeof(udp));
    rc |= inject("peer0", ETH_P_IPV6, p, n);
    ip4_udp(p, "10.99.0.2", "10.99.0.1");
    rc |= inject("peer0", ETH_P_IP, p, 28);
    ip4_udp(p, "1.2.3.4", "10.98.0.1");
    rc |= inject("uppeer0", ETH_P_IP, p, 28);
    n = ip6_packet(p, "fd99::2", "fd99::1", 17, 64, udp, sizeof(udp));
    rc |= inject("peer0", ETH_P_IPV6, p, n);
    n = ip6_packet(p, "fe80::99", "ff02::1:ff00:1", 58, 255, ns, sizeof(ns));
    rc |= inject("peer0", ETH_P_IPV6, p, n);
    return rc;
}

/* The packet count of named counter in an `nft list counters` listing. */
static long counter_packets(const char *listing, const char *name)
{
    char head[64];
    snprintf(head, sizeof(head), "counter %s {", name);
    const char *at = strstr(listing, head);
    if (!at || !(at = strstr(at, "packets "))) return -1;
    return strtol(at + 8, NULL, 10);
}

typedef struct {
    sg_strbuf_t with, without;
} spoof_texts_t;

/* Reports "<round>: spoofed4=N sandbox4=N ...\n" for the ruleset with
 * sandbox interfaces, then without. Exit 77: no veth, ip or nft here. */
static void spoof_child(int fd, void *arg)
{
    const spoof_texts_t *texts = arg;
    if (system("ip link add sbx0 type veth peer name peer0 && "
               "ip link add up0 type veth peer name uppeer0 && "
               "ip addr add 10.99.0.1/24 dev sbx0 && ip addr add 10.98.0.1/24 dev up0 && "
               "ip -6 addr add fd99::1/64 dev sbx0 nodad && "
               "for l in sbx0 peer0 up0 uppeer0; do ip link set $l up || exit 1; done") != 0)
        _exit(77);
    sg_strbuf_t rep = {0};
    char err[4096];
    for (int round = 0; round < 2; round++) {
        const sg_strbuf_t *rules = round ? &texts->without : &texts->with;
        if (sg_egress_nft_apply(rules->base, rules->len, err, sizeof(err)) != 0 ||
            sg_egress_nft_apply(probe_rules, strlen(probe_rules), err, sizeof(err)) != 0) {
            if (strstr(err, "cannot run nft")) _exit(77);
            write_all(fd, err, strlen(err));
            _exit(5);
        }
        if (send_probes() != 0) {
            write_all(fd, "cannot send\n", 12);
            _exit(6);
        }
        sg_strbuf_t listing = {0};
        for (int tries = 0; tries < 100; tries++) {
            listing.len = 0;
            append_cmd_output(&listing, "nft list counters table inet probe 2>&1");
            sg_strbuf_append(&listing, "", 1);
            if (counter_packets(listing.base, "nd6") > 0) break;
            usleep(20000);
        }
        sg_strbuf_appendf(&rep, "%s:", round ? "without" : "with");
        for (size_t i = 0; i < sizeof(probe_names) / sizeof(probe_names[0]); i++)
            sg_strbuf_appendf(&rep, " %s=%ld", probe_names[i],
                              counter_packets(listing.base, probe_names[i]));
        sg_strbuf_append_cstr(&rep, "\n");
        sg_strbuf_free(&listing);
    }
    write_all(fd, rep.base, rep.len);
}

static void test_spoofed_sources_in_netns(void **state)
{
    if (geteuid() != 0) skip();
    struct sockaddr_storage addrs[2] = {sa("10.99.0.2"), sa("fd99::2")};
    sg_egress_nft_sandbox_t sbs[2] = {{"four", &addrs[0], NULL}, {"six", &addrs[1], NULL}};
    const char *const ifaces[] = {"sbx*"};
    sg_egress_nft_opts_t o = opts;
    o.table = "sg_spoof";
    spoof_texts_t texts = {{0}, {0}};
    assert_int_equal(sg_egress_nft_render(&texts.without, &o, NULL, sbs, 2), 0);
    o.sandbox_interfaces = ifaces;
    o.n_sandbox_interfaces = 1;
    assert_int_equal(sg_egress_nft_render(&texts.with, &o, NULL, sbs, 2), 0);

    sg_strbuf_t rep = {0};
    int status = in_netns(spoof_child, &texts, &rep);
    sg_strbuf_free(&texts.with);
    sg_strbuf_free(&texts.without);
    if (status == 77) {
        sg_strbuf_free(&rep);
        skip();
    }
    if (status != 0) print_error("child %d: %s\n", status, rep.base);
    assert_int_equal(status, 0);
    /* With the patterns: forged sources on sbx0 never get past the raw
     * chain, IPv6 link-local gets through only as neighbour discovery,
     * while the sandboxes' own addresses and other interfaces are
     * untouched. Without them every forged packet went through. */
    const char *want = "with: spoofed4=0 sandbox4=1 uplink4=1 spoofed6=0 sandbox6=1 nd6=1 "
                       "lludp6=0\n"
                       "without: spoofed4=1 sandbox4=1 uplink4=1 spoofed6=1 sandbox6=1 nd6=1 "
                       "lludp6=1\n";
    if (strcmp(rep.base, want) != 0) print_error("report:\n%s\n", rep.base);
    assert_string_equal(rep.base, want);
    sg_strbuf_free(&rep);
}

static void apply_errors_child(int fd, void *arg)
{
    char err[256], line[512];
    int rc = sg_egress_nft_apply("", 0, err, sizeof(err));
    if (rc != 0 && strstr(err, "cannot run nft")) _exit(77);
    snprintf(line, sizeof(line), "%d [%s]\n", rc, err);
    write_all(fd, line, strlen(line));
    rc = sg_egress_nft_apply("this is not nft\n", 16, err, sizeof(err));
    snprintf(line, sizeof(line), "%d [%s]\n", rc, err);
    write_all(fd, line, strlen(line));
    char tiny[8];
    memset(tiny, 'x', sizeof(tiny));
    rc = sg_egress_nft_apply("garbage\n", 8, tiny, 5);
    snprintf(line, sizeof(line), "%d %zu %c\n", rc, strnlen(tiny, sizeof(tiny)), tiny[5]);
    write_all(fd, line, strlen(line));
}

static void test_apply_errors(void **state)
{
    if (geteuid() != 0) skip();
    sg_strbuf_t rep = {0};
    int status = in_netns(apply_errors_child, NULL, &rep);
    if (status == 77) {
        sg_strbuf_free(&rep);
        skip();
    }
    assert_int_equal(status, 0);
    const char *t = rep.base;
    /* nothing to load is a success with no message */
    if (strncmp(t, "0 []\n", 5) != 0) print_error("report:\n%s\n", t);
    assert_true(strncmp(t, "0 []\n", 5) == 0);
    /* nft's own message on failure */
    expect_has(t, "\n-1 [");
    expect_has(t, "Error: syntax error");
    /* a tiny buffer truncates (4 bytes and the NUL), never overflows */
    expect_has(t, "\n-1 4 x\n");
    sg_strbuf_free(&rep);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_render_empty),     cmocka_unit_test(test_render_policies),
        cmocka_unit_test(test_render_ports_off), cmocka_unit_test(test_render_interfaces),
        cmocka_unit_test(test_render_bad_table), cmocka_unit_test(test_render_bad_interfaces),
        cmocka_unit_test(test_load_in_netns),    cmocka_unit_test(test_spoofed_sources_in_netns),
        cmocka_unit_test(test_apply_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
