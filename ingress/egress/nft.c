#include "egress/nft.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- range lists ---- */

typedef struct {
    sg_cidr_t *v;
    size_t n, cap;
} range_list_t;

static void list_push(range_list_t *l, const sg_cidr_t *c)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 16;
        l->v = realloc(l->v, l->cap * sizeof(*l->v));
        if (!l->v) abort();
    }
    l->v[l->n++] = *c;
}

/* Adds c to the list of its family; the all-traffic range goes to both as
 * 0.0.0.0/0 and ::/0. */
static void lists_add(range_list_t *v4, range_list_t *v6, const sg_cidr_t *c)
{
    if (c->all_traffic) {
        sg_cidr_t any = {.family = AF_INET6};
        list_push(v6, &any);
        any.family = AF_INET;
        list_push(v4, &any);
        return;
    }
    list_push(c->family == AF_INET ? v4 : v6, c);
}

/* Interval sets refuse overlapping elements, and one sandbox's overlapping
 * rules must not fail the whole ruleset: ranges either nest or are disjoint,
 * so dropping every range covered by another leaves a valid set that
 * matches the same addresses. */
static void list_minimise(range_list_t *l)
{
    size_t kept = 0;
    for (size_t i = 0; i < l->n; i++) {
        int covered = 0;
        for (size_t j = 0; j < l->n && !covered; j++) {
            if (j == i || !sg_cidr_covers(&l->v[j], &l->v[i])) continue;
            /* of two equal ranges the first one stays */
            covered = !sg_cidr_covers(&l->v[i], &l->v[j]) || j < i;
        }
        if (!covered) l->v[kept++] = l->v[i];
    }
    l->n = kept;
}

static void list_free(range_list_t *l)
{
    free(l->v);
    l->v = NULL;
    l->n = l->cap = 0;
}

static void append_range(sg_strbuf_t *out, const sg_cidr_t *c)
{
    char a[INET6_ADDRSTRLEN];
    inet_ntop(c->family, c->addr, a, sizeof(a));
    if (c->prefix == (c->family == AF_INET ? 32 : 128))
        sg_strbuf_append_cstr(out, a);
    else
        sg_strbuf_appendf(out, "%s/%u", a, c->prefix);
}

/* "a" for one element, "{ a, b }" for more. */
static void append_elements(sg_strbuf_t *out, const range_list_t *l)
{
    if (l->n == 1) {
        append_range(out, &l->v[0]);
        return;
    }
    sg_strbuf_append_cstr(out, "{ ");
    for (size_t i = 0; i < l->n; i++) {
        if (i) sg_strbuf_append_cstr(out, ", ");
        append_range(out, &l->v[i]);
    }
    sg_strbuf_append_cstr(out, " }");
}

/* One rule per family: "\t\tip daddr { ... } <verdict>\n"; none for an
 * empty list. Minimises the lists first. */
static void append_daddr_rules(sg_strbuf_t *out, range_list_t *v4, range_list_t *v6,
                               const char *verdict)
{
    list_minimise(v4);
    list_minimise(v6);
    if (v4->n) {
        sg_strbuf_append_cstr(out, "\t\tip daddr ");
        append_elements(out, v4);
        sg_strbuf_appendf(out, " %s\n", verdict);
    }
    if (v6->n) {
        sg_strbuf_append_cstr(out, "\t\tip6 daddr ");
        append_elements(out, v6);
        sg_strbuf_appendf(out, " %s\n", verdict);
    }
}

/* ---- rendering ---- */

static int name_ok(const char *s, size_t max, int letter_first)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > max) return 0;
    if (letter_first && !((s[0] >= 'a' && s[0] <= 'z') || (s[0] >= 'A' && s[0] <= 'Z'))) return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

/* An iifname pattern that nft takes as one quoted string: IFNAMSIZ bounds
 * it to 15 characters, and nft refuses an all-wildcard one. */
static int iface_pattern_ok(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > 15 || strcmp(s, "*") == 0) return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '-' || (c == '*' && i == n - 1)))
            return 0;
    }
    return 1;
}

/* The sandbox's source address as a full-length range (IPv4-mapped -> IPv4). */
static int source_range(const struct sockaddr_storage *ss, sg_cidr_t *out)
{
    char text[INET6_ADDRSTRLEN];
    if (!ss) return -1;
    if (ss->ss_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)ss)->sin_addr, text, sizeof(text));
    else if (ss->ss_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)ss)->sin6_addr, text, sizeof(text));
    else
        return -1;
    return sg_cidr_parse(text, out) == SG_CIDR_OK ? 0 : -1;
}

/* A sandbox id for a comment: printable ASCII only, never a newline. */
static void append_comment_id(sg_strbuf_t *out, const char *id)
{
    for (size_t i = 0; id && id[i] && i < 64; i++)
        sg_strbuf_append(out, id[i] > 0x20 && id[i] < 0x7f ? &id[i] : "?", 1);
}

typedef struct {
    const sg_egress_nft_sandbox_t *sb;
    sg_cidr_t src;
    size_t index;
} listed_t;

static void append_chain_name(sg_strbuf_t *out, const listed_t *l)
{
    if (name_ok(l->sb->id, 64, 0))
        sg_strbuf_appendf(out, "sb_%s", l->sb->id);
    else
        sg_strbuf_appendf(out, "sb%zu", l->index);
}

static void append_source_set(sg_strbuf_t *out, const char *name, const char *type,
                              const listed_t *ls, size_t n, int family)
{
    sg_strbuf_appendf(out, "\tset %s {\n\t\ttype %s\n", name, type);
    size_t count = 0;
    for (size_t i = 0; i < n; i++) {
        if (ls[i].src.family != family) continue;
        sg_strbuf_append_cstr(out, count++ ? ", " : "\t\telements = { ");
        append_range(out, &ls[i].src);
    }
    if (count) sg_strbuf_append_cstr(out, " }\n");
    sg_strbuf_append_cstr(out, "\t}\n");
}

static void append_denied_sets(sg_strbuf_t *out)
{
    const sg_cidr_t *ranges;
    size_t n = sg_egress_always_denied_ranges(&ranges, NULL);
    for (int family = AF_INET; family; family = family == AF_INET ? AF_INET6 : 0) {
        sg_strbuf_appendf(out,
                          "\tset always_denied%c {\n\t\ttype %s\n\t\tflags interval\n"
                          "\t\telements = { ",
                          family == AF_INET ? '4' : '6',
                          family == AF_INET ? "ipv4_addr" : "ipv6_addr");
        size_t count = 0;
        for (size_t i = 0; i < n; i++) {
            if (ranges[i].family != family) continue;
            if (count++) sg_strbuf_append_cstr(out, ", ");
            append_range(out, &ranges[i]);
        }
        if (family == AF_INET6) sg_strbuf_append_cstr(out, ", ::ffff:0.0.0.0/96");
        sg_strbuf_append_cstr(out, " }\n\t}\n");
    }
}

static void append_sandbox_chain(sg_strbuf_t *out, const listed_t *l, const sg_egress_guard_t *g)
{
    const sg_egress_policy_t *p = l->sb->policy;
    range_list_t v4 = {0}, v6 = {0};
    const sg_cidr_t *cidrs;
    sg_strbuf_append_cstr(out, "\n\tchain ");
    append_chain_name(out, l);
    sg_strbuf_append_cstr(out, " {\n");
    size_t n = sg_egress_policy_cidrs(p, 1, &cidrs, NULL);
    for (size_t i = 0; i < n; i++) lists_add(&v4, &v6, &cidrs[i]);
    if (g && sg_egress_policy_has_domains(p))
        lists_add(&v4, &v6, sg_egress_guard_nameserver(g, NULL));
    append_daddr_rules(out, &v4, &v6, "accept");
    v4.n = v6.n = 0;
    n = sg_egress_policy_cidrs(p, 0, &cidrs, NULL);
    for (size_t i = 0; i < n; i++) lists_add(&v4, &v6, &cidrs[i]);
    append_daddr_rules(out, &v4, &v6, "drop");
    sg_strbuf_append_cstr(out, "\t\taccept\n\t}\n");
    list_free(&v4);
    list_free(&v6);
}

static void append_vmap(sg_strbuf_t *out, const listed_t *ls, size_t n, int family)
{
    size_t count = 0;
    for (size_t i = 0; i < n; i++) {
        if (ls[i].src.family != family || !ls[i].sb->policy) continue;
        sg_strbuf_append_cstr(out, count++ ? ",\n\t\t\t"
                                           : (family == AF_INET ? "\t\tip saddr vmap {\n\t\t\t"
                                                                : "\t\tip6 saddr vmap {\n\t\t\t"));
        append_range(out, &ls[i].src);
        sg_strbuf_append_cstr(out, " : goto ");
        append_chain_name(out, &ls[i]);
    }
    if (count) sg_strbuf_append_cstr(out, "\n\t\t}\n");
}

/* "\t\tiifname { "veth*", "tap0" } " */
static void append_iface_match(sg_strbuf_t *out, const sg_egress_nft_opts_t *o)
{
    sg_strbuf_append_cstr(out, "\t\tiifname { ");
    for (size_t i = 0; i < o->n_sandbox_interfaces; i++)
        sg_strbuf_appendf(out, "%s\"%s\"", i ? ", " : "", o->sandbox_interfaces[i]);
    sg_strbuf_append_cstr(out, " } ");
}

static void append_antispoof_chain(sg_strbuf_t *out, const sg_egress_nft_opts_t *o)
{
    sg_strbuf_append_cstr(out, "\n\tchain antispoof {\n"
                               "\t\ttype filter hook prerouting priority raw; policy accept;\n"
                               "\t\tip saddr @sandboxes4 fib saddr . iif oif missing drop\n"
                               "\t\tip6 saddr @sandboxes6 fib saddr . iif oif missing drop\n");
    /* The rules above only see packets that claim a sandbox's address; one
     * forged from any other address would match no sandbox rule anywhere
     * (redirect, forward, input all key on the source sets) and leave
     * unfiltered. On the sandboxes' own interfaces such a source has no
     * business at all, except the link-local neighbour discovery IPv6
     * needs before and besides the sandbox's address. */
    if (o->n_sandbox_interfaces) {
        append_iface_match(out, o);
        sg_strbuf_append_cstr(out, "meta nfproto ipv4 ip saddr != @sandboxes4 drop\n");
        append_iface_match(out, o);
        sg_strbuf_append_cstr(out, "ip6 saddr fe80::/10 icmpv6 type { nd-router-solicit, "
                                   "nd-neighbor-solicit, nd-neighbor-advert } accept\n");
        append_iface_match(out, o);
        sg_strbuf_append_cstr(out, "meta nfproto ipv6 ip6 saddr != @sandboxes6 drop\n");
    }
    sg_strbuf_append_cstr(out, "\t}\n");
}

static void append_redirect_chains(sg_strbuf_t *out, const sg_egress_nft_opts_t *o)
{
    sg_strbuf_append_cstr(out, "\n\tchain prerouting_nat {\n"
                               "\t\ttype nat hook prerouting priority dstnat; policy accept;\n"
                               "\t\tip saddr @sandboxes4 meta l4proto tcp jump redirect_tcp\n"
                               "\t\tip6 saddr @sandboxes6 meta l4proto tcp jump redirect_tcp\n"
                               "\t}\n\n\tchain redirect_tcp {\n");
    if (o->http_port) sg_strbuf_appendf(out, "\t\ttcp dport 80 redirect to :%u\n", o->http_port);
    if (o->tls_port) sg_strbuf_appendf(out, "\t\ttcp dport 443 redirect to :%u\n", o->tls_port);
    if (o->other_port)
        sg_strbuf_appendf(out, "\t\ttcp dport != { 80, 443 } redirect to :%u\n", o->other_port);
    sg_strbuf_append_cstr(out, "\t}\n");
}

static void append_input_chains(sg_strbuf_t *out, const sg_egress_nft_opts_t *o)
{
    sg_strbuf_append_cstr(out, "\n\tchain host_input {\n"
                               "\t\ttype filter hook input priority filter; policy accept;\n"
                               "\t\tip saddr @sandboxes4 jump sandbox_to_host\n"
                               "\t\tip6 saddr @sandboxes6 jump sandbox_to_host\n"
                               "\t}\n\n\tchain sandbox_to_host {\n"
                               "\t\tct state established,related accept\n");
    uint16_t ports[3] = {o->http_port, o->tls_port, o->other_port};
    size_t count = 0;
    for (size_t i = 0; i < 3; i++) {
        if (!ports[i]) continue;
        int dup = 0;
        for (size_t j = 0; j < i; j++) dup |= ports[j] == ports[i];
        if (dup) continue;
        sg_strbuf_appendf(out, "%s%u", count++ ? ", " : "\t\ttcp dport { ", ports[i]);
    }
    if (count) sg_strbuf_append_cstr(out, " } accept\n");
    /* without neighbour discovery from its own address a sandbox loses IPv6 */
    sg_strbuf_append_cstr(out,
                          "\t\ticmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept\n"
                          "\t\tdrop\n\t}\n");
}

static void append_forward_chains(sg_strbuf_t *out, const sg_egress_guard_t *g, const listed_t *ls,
                                  size_t n)
{
    sg_strbuf_append_cstr(out, "\n\tchain forward_filter {\n"
                               "\t\ttype filter hook forward priority filter; policy accept;\n"
                               "\t\tip saddr @sandboxes4 jump sandbox_out\n"
                               "\t\tip6 saddr @sandboxes6 jump sandbox_out\n"
                               "\t}\n\n\tchain always_denied {\n");
    range_list_t v4 = {0}, v6 = {0};
    const sg_cidr_t *exc;
    size_t n_exc = sg_egress_guard_exceptions(g, &exc, NULL);
    for (size_t i = 0; i < n_exc; i++) lists_add(&v4, &v6, &exc[i]);
    append_daddr_rules(out, &v4, &v6, "return");
    list_free(&v4);
    list_free(&v6);
    sg_strbuf_append_cstr(out, "\t\tip daddr @always_denied4 drop\n"
                               "\t\tip6 daddr @always_denied6 drop\n"
                               "\t}\n\n\tchain sandbox_out {\n"
                               "\t\tct state established,related accept\n"
                               "\t\tmeta l4proto tcp drop\n"
                               "\t\tjump always_denied\n");
    append_vmap(out, ls, n, AF_INET);
    append_vmap(out, ls, n, AF_INET6);
    sg_strbuf_append_cstr(out, "\t\taccept\n\t}\n");
    for (size_t i = 0; i < n; i++)
        if (ls[i].sb->policy) append_sandbox_chain(out, &ls[i], g);
}

int sg_egress_nft_render(sg_strbuf_t *out, const sg_egress_nft_opts_t *o,
                         const sg_egress_guard_t *g, const sg_egress_nft_sandbox_t *sbs, size_t n)
{
    const char *table = o->table ? o->table : "sandgate";
    if (!name_ok(table, 64, 1)) return -1;
    for (size_t i = 0; i < o->n_sandbox_interfaces; i++)
        if (!iface_pattern_ok(o->sandbox_interfaces[i])) return -1;
    listed_t *ls = calloc(n ? n : 1, sizeof(*ls));
    if (!ls) abort();
    size_t n_listed = 0;
    sg_strbuf_appendf(out, "table inet %s {}\ndelete table inet %s\n", table, table);
    for (size_t i = 0; i < n; i++) {
        sg_cidr_t src;
        if (source_range(sbs[i].addr, &src) != 0) continue;
        size_t j = 0;
        while (j < n_listed && !sg_cidr_covers(&ls[j].src, &src)) j++;
        if (j < n_listed) {
            sg_strbuf_append_cstr(out, "# sandbox ");
            append_comment_id(out, sbs[i].id);
            sg_strbuf_append_cstr(out, " left out: its address belongs to sandbox ");
            append_comment_id(out, ls[j].sb->id);
            sg_strbuf_append_cstr(out, "\n");
            continue;
        }
        ls[n_listed++] = (listed_t){&sbs[i], src, i};
    }
    sg_strbuf_appendf(out, "table inet %s {\n", table);
    append_source_set(out, "sandboxes4", "ipv4_addr", ls, n_listed, AF_INET);
    append_source_set(out, "sandboxes6", "ipv6_addr", ls, n_listed, AF_INET6);
    append_denied_sets(out);
    append_antispoof_chain(out, o);
    append_redirect_chains(out, o);
    append_input_chains(out, o);
    append_forward_chains(out, g, ls, n_listed);
    sg_strbuf_append_cstr(out, "}\n");
    free(ls);
    return 0;
}

/* ---- loading ---- */

static void set_nonblock(int fd)
{
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

static int spawn_nft(pid_t *pid, int stdin_fd, int stderr_fd)
{
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, stdin_fd, 0);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, stderr_fd, 2);
    posix_spawnattr_init(&attr);
    sigset_t none, pipe_only;
    sigemptyset(&none);
    sigemptyset(&pipe_only);
    sigaddset(&pipe_only, SIGPIPE);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &pipe_only);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    char *argv[] = {"nft", "-f", "-", NULL};
    int rc = posix_spawnp(pid, "nft", &fa, &attr, argv, environ);
    /* root's PATH usually has /usr/sbin, a service manager's may not */
    if (rc == ENOENT) rc = posix_spawn(pid, "/usr/sbin/nft", &fa, &attr, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    return rc;
}

/* Feeds text to in_fd (closed here) while collecting err_fd into err until
 * nft closes its stderr. */
static void exchange(int in_fd, int err_fd, const char *text, size_t len, char *err, size_t cap,
                     size_t *err_len)
{
    size_t off = 0;
    set_nonblock(in_fd);
    set_nonblock(err_fd);
    if (len == 0) {
        close(in_fd);
        in_fd = -1;
    }
    for (;;) {
        struct pollfd pf[2] = {{err_fd, POLLIN, 0}, {in_fd, POLLOUT, 0}};
        if (poll(pf, in_fd >= 0 ? 2 : 1, -1) < 0) {
            if (errno == EINTR) continue;
            break;
        }
        if (in_fd >= 0 && pf[1].revents) {
            ssize_t w = write(in_fd, text + off, len - off);
            if (w > 0) off += (size_t)w;
            if ((w < 0 && errno != EAGAIN && errno != EINTR) || off == len) {
                close(in_fd); /* EPIPE: nft is gone; its stderr says why */
                in_fd = -1;
            }
        }
        if (pf[0].revents) {
            char buf[4096];
            ssize_t r = read(err_fd, buf, sizeof(buf));
            if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
            if (r <= 0) break;
            size_t keep = cap > *err_len + 1 ? cap - *err_len - 1 : 0;
            if (keep > (size_t)r) keep = (size_t)r;
            memcpy(err + *err_len, buf, keep);
            *err_len += keep;
        }
    }
    if (in_fd >= 0) close(in_fd);
}

int sg_egress_nft_apply(const char *text, size_t len, char *err, size_t err_cap)
{
    int in[2], er[2];
    if (err_cap) err[0] = '\0';
    if (pipe2(in, O_CLOEXEC) != 0) {
        snprintf(err, err_cap, "cannot run nft: pipe: %s", strerror(errno));
        return -1;
    }
    if (pipe2(er, O_CLOEXEC) != 0) {
        snprintf(err, err_cap, "cannot run nft: pipe: %s", strerror(errno));
        close(in[0]);
        close(in[1]);
        return -1;
    }
    pid_t pid;
    int rc = spawn_nft(&pid, in[0], er[1]);
    close(in[0]);
    close(er[1]);
    if (rc != 0) {
        close(in[1]);
        close(er[0]);
        snprintf(err, err_cap, "cannot run nft: %s", strerror(rc));
        return -1;
    }
    /* A write to a pipe whose reader died raises SIGPIPE; hold it off in
     * this thread and swallow it unless it was already pending. */
    sigset_t pipe_only, old, pending;
    sigemptyset(&pipe_only);
    sigaddset(&pipe_only, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_only, &old);
    sigpending(&pending);
    int was_pending = sigismember(&pending, SIGPIPE);
    size_t err_len = 0;
    exchange(in[1], er[0], text, len, err, err_cap, &err_len);
    close(er[0]);
    if (!was_pending) {
        struct timespec zero = {0, 0};
        sigpending(&pending);
        if (sigismember(&pending, SIGPIPE)) sigtimedwait(&pipe_only, NULL, &zero);
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) {
            snprintf(err, err_cap, "cannot wait for nft: %s", strerror(errno));
            return -1;
        }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
        if (err_cap) err[0] = '\0';
        return 0;
    }
    while (err_len > 0 && (err[err_len - 1] == '\n' || err[err_len - 1] == ' ')) err_len--;
    if (err_cap) err[err_len] = '\0';
    if (err_len == 0) {
        if (WIFEXITED(status))
            snprintf(err, err_cap, "nft exited with status %d", WEXITSTATUS(status));
        else
            snprintf(err, err_cap, "nft killed by signal %d", WTERMSIG(status));
    }
    return -1;
}
