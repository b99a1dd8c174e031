/* The admin sandbox store: the API, the log (replay, torn tails, corruption,
 * compaction, token hashing), readers on other threads, and the cost of a
 * put with 10k records. Logs go to a fresh directory under $TMPDIR (/tmp). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"
#include "route/store.h"
#include "route/store_internal.h"
#include "test_sockaddr.h"

/* ---- helpers ----------------------------------------------------------- */

typedef struct {
    char dir[256];
    char path[300];
} tmp_t;

static int tmp_setup(void **state)
{
    tmp_t *t = calloc(1, sizeof(*t));
    const char *base = getenv("TMPDIR");
    snprintf(t->dir, sizeof(t->dir), "%s/sg_store_XXXXXX", base && *base ? base : "/tmp");
    assert_non_null(mkdtemp(t->dir));
    snprintf(t->path, sizeof(t->path), "%s/admin.log", t->dir);
    *state = t;
    return 0;
}

static int tmp_teardown(void **state)
{
    tmp_t *t = *state;
    char p[400];
    unlink(t->path);
    snprintf(p, sizeof(p), "%s.compact", t->path);
    unlink(p);
    rmdir(t->dir);
    free(t);
    sg_log_set_level(SG_LOG_INFO);
    return 0;
}

static void sha256(const char *s, unsigned char out[32])
{
    unsigned int n = 32;
    assert_int_equal(EVP_Digest(s, strlen(s), out, &n, EVP_sha256(), NULL), 1);
}

/* A record as the admin API would build it. token may be NULL. */
static sg_sandbox_t *mkrec(const char *id, const char *ip, const char *mask, const char *token,
                           unsigned maxc)
{
    struct sockaddr_storage ss = sa(ip);
    sg_sandbox_t *sb = sg_sandbox_new(sg_slice_cstr(id), &ss, mask);
    if (token) {
        sb->has_token = 1;
        sha256(token, sb->token_sha256);
    }
    sb->max_connections = maxc;
    return sb;
}

static sg_store_t *open_ok(const char *path, sg_qsbr_t *q)
{
    sg_store_t *st = NULL;
    char err[512] = "";
    int r = sg_store_open(path, q, &st, err, sizeof(err));
    if (r != 0) fail_msg("sg_store_open(%s): %s", path ? path : "(memory)", err);
    return st;
}

static void put_ok(sg_store_t *st, sg_sandbox_t *rec, int want_created)
{
    int created = -1;
    assert_int_equal(sg_store_put(st, rec, &created), 0);
    assert_int_equal(created, want_created);
}

static sg_sandbox_t *get(sg_store_t *st, const char *id)
{
    return sg_store_get(st, sg_slice_cstr(id));
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    buf[n] = '\0';
    fclose(f);
    *len = (size_t)n;
    return buf;
}

static void write_file(const char *path, const char *data, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, len), (ssize_t)len);
    close(fd);
}

static size_t count_lines(const char *s, size_t len)
{
    size_t n = 0;
    for (size_t i = 0; i < len; i++) n += s[i] == '\n';
    return n;
}

static const char *ip_of(const sg_sandbox_t *sb, char *buf, size_t len)
{
    if (sb->addr.ss_family == AF_INET)
        return inet_ntop(AF_INET, &((const struct sockaddr_in *)&sb->addr)->sin_addr, buf,
                         (socklen_t)len);
    return inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)&sb->addr)->sin6_addr, buf,
                     (socklen_t)len);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- API ----------------------------------------------------------------- */

static void check_crud(sg_store_t *st)
{
    assert_null(get(st, "a1"));
    assert_int_equal(sg_store_count(st), 0);
    put_ok(st, mkrec("a1", "10.0.0.1", "${PORT}-a1.example", NULL, 0), 1);
    put_ok(st, mkrec("b2", "fd00::2", NULL, "tok", 7), 1);
    assert_int_equal(sg_store_count(st), 2);

    sg_sandbox_t *a = get(st, "a1");
    assert_non_null(a);
    assert_string_equal(a->source, "admin");
    assert_string_equal(a->mask, "${PORT}-a1.example");
    assert_int_equal(a->has_token, 0);
    char ip[64];
    assert_string_equal(ip_of(a, ip, sizeof(ip)), "10.0.0.1");

    /* replace: a borrowed pointer kept by a reference survives it */
    sg_sandbox_ref(a);
    put_ok(st, mkrec("a1", "10.0.0.9", NULL, NULL, 3), 0);
    assert_int_equal(sg_store_count(st), 2);
    sg_sandbox_t *a2 = get(st, "a1");
    assert_ptr_not_equal(a2, a);
    assert_null(a2->mask);
    assert_int_equal(a2->max_connections, 3);
    assert_string_equal(ip_of(a2, ip, sizeof(ip)), "10.0.0.9");
    assert_string_equal(a->mask, "${PORT}-a1.example");
    sg_sandbox_unref(a);

    int existed = -1;
    assert_int_equal(sg_store_delete(st, SG_SLICE_LIT("a1"), &existed), 0);
    assert_int_equal(existed, 1);
    assert_null(get(st, "a1"));
    assert_int_equal(sg_store_delete(st, SG_SLICE_LIT("a1"), &existed), 0);
    assert_int_equal(existed, 0);
    assert_int_equal(sg_store_count(st), 1);
    assert_non_null(get(st, "b2"));
    assert_null(get(st, "b"));
    assert_null(get(st, "b22"));
}

static void test_crud_memory(void **state)
{
    sg_store_t *st = open_ok(NULL, NULL);
    check_crud(st);
    assert_int_equal(sg_store_log_lines(st), 0);
    sg_store_close(st);
}

static void test_crud_file(void **state)
{
    tmp_t *t = *state;
    sg_store_t *st = open_ok(t->path, NULL);
    check_crud(st);
    /* 4 puts and one delete; the absent delete wrote nothing */
    assert_int_equal(sg_store_log_lines(st), 4);
    sg_store_close(st);
    struct stat sb;
    assert_int_equal(stat(t->path, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600);
}

static void test_invalid_input(void **state)
{
    sg_store_t *st = open_ok(NULL, NULL);
    assert_int_equal(sg_store_put(st, mkrec("", "10.0.0.1", NULL, NULL, 0), NULL), -EINVAL);
    assert_int_equal(sg_store_put(st, mkrec("a b", "10.0.0.1", NULL, NULL, 0), NULL), -EINVAL);
    assert_int_equal(sg_store_put(st, mkrec("a\n", "10.0.0.1", NULL, NULL, 0), NULL), -EINVAL);
    assert_int_equal(sg_store_put(st, mkrec("x", "10.0.0.1", "bad\xff", NULL, 0), NULL), -EINVAL);
    sg_sandbox_t *unix_rec = mkrec("y", "10.0.0.1", NULL, NULL, 0);
    unix_rec->addr.ss_family = AF_UNIX;
    assert_int_equal(sg_store_put(st, unix_rec, NULL), -EINVAL);
    assert_int_equal(sg_store_count(st), 0);
    sg_store_close(st);
}

static void test_list_paging(void **state)
{
    sg_store_t *st = open_ok(NULL, NULL);
    /* inserted out of order; "b" < "b0" < "ba" bytewise */
    const char *ids[] = {"q", "b0", "a", "zz", "ba", "b", "m1", "m10", "m2", "c"};
    const char *sorted[] = {"a", "b", "b0", "ba", "c", "m1", "m10", "m2", "q", "zz"};
    for (size_t i = 0; i < 10; i++) put_ok(st, mkrec(ids[i], "10.0.0.1", NULL, NULL, 0), 1);

    sg_sandbox_t *out[4];
    int more = -1;
    size_t seen = 0;
    const char *after = NULL;
    char last[SG_SANDBOX_ID_MAX + 1];
    for (int page = 0; page < 3; page++) {
        size_t n = sg_store_list(st, after, 4, out, &more);
        assert_int_equal(n, page < 2 ? 4 : 2);
        assert_int_equal(more, page < 2);
        for (size_t i = 0; i < n; i++) assert_string_equal(out[i]->id, sorted[seen++]);
        strcpy(last, out[n - 1]->id);
        after = last;
    }
    assert_int_equal(sg_store_list(st, "zz", 4, out, &more), 0);
    assert_int_equal(more, 0);
    /* `after` need not exist */
    assert_int_equal(sg_store_list(st, "b1", 2, out, &more), 2);
    assert_string_equal(out[0]->id, "ba");
    assert_string_equal(out[1]->id, "c");
    assert_int_equal(more, 1);
    sg_sandbox_t *all[16];
    assert_int_equal(sg_store_list(st, "", 16, all, NULL), 10);
    assert_int_equal(sg_store_list(st, "", 0, all, &more), 0);
    assert_int_equal(more, 1);
    /* deletes leave the order intact */
    assert_int_equal(sg_store_delete(st, SG_SLICE_LIT("b0"), NULL), 0);
    assert_int_equal(sg_store_list(st, "a", 3, out, &more), 3);
    assert_string_equal(out[0]->id, "b");
    assert_string_equal(out[1]->id, "ba");
    assert_string_equal(out[2]->id, "c");
    sg_store_close(st);
}

/* Many ids through insert/delete: the hash (with backward-shift deletes and
 * resizes both ways) and the list agree with a plain array. */
static void test_table_model(void **state)
{
    enum { IDS = 700 };
    sg_store_t *st = open_ok(NULL, NULL);
    static int live[IDS];
    memset(live, 0, sizeof(live));
    unsigned seed = 12345;
    size_t n_live = 0;
    for (int op = 0; op < 20000; op++) {
        seed = seed * 1103515245u + 12345u;
        int k = (int)((seed >> 8) % IDS);
        /* phases: mostly inserts, then mostly deletes (forces shrinking) */
        int insert = ((seed >> 4) % 100) < (op < 10000 ? 70u : 20u);
        char id[16];
        snprintf(id, sizeof(id), "id%d", k);
        if (insert) {
            put_ok(st, mkrec(id, "10.0.0.1", NULL, NULL, (unsigned)op), !live[k]);
            n_live += !live[k];
            live[k] = 1;
        } else {
            int existed;
            assert_int_equal(sg_store_delete(st, sg_slice_cstr(id), &existed), 0);
            assert_int_equal(existed, live[k]);
            n_live -= live[k];
            live[k] = 0;
        }
        if (op % 500 == 0 || op == 19999) {
            assert_int_equal(sg_store_count(st), n_live);
            for (int i = 0; i < IDS; i++) {
                snprintf(id, sizeof(id), "id%d", i);
                assert_int_equal(get(st, id) != NULL, live[i]);
            }
            sg_sandbox_t *out[IDS];
            size_t n = sg_store_list(st, NULL, IDS, out, NULL);
            assert_int_equal(n, n_live);
            for (size_t i = 1; i < n; i++) assert_true(strcmp(out[i - 1]->id, out[i]->id) < 0);
        }
    }
    sg_store_close(st);
}

static void test_lookup_source(void **state)
{
    sg_store_t *st = open_ok(NULL, NULL);
    put_ok(st, mkrec("abc", "10.1.2.3", NULL, NULL, 0), 1);
    sg_lookup_source_t src;
    sg_store_source_init(&src, st);
    sg_lookup_t lk;
    sg_lookup_init(&lk);
    sg_lookup_add_source(&lk, &src);
    sg_lookup_req_t req;
    sg_err_t err;
    sg_sandbox_t *sb = NULL;
    assert_int_equal(sg_lookup_start(&lk, &req, SG_SLICE_LIT("abc"), NULL, &err, &sb), 1);
    assert_int_equal(err, SG_ERR_NONE);
    assert_non_null(sb);
    assert_string_equal(sb->source, "admin");
    assert_int_equal(atomic_load(&sb->refs), 2);
    /* the reference outlives a delete */
    assert_int_equal(sg_store_delete(st, SG_SLICE_LIT("abc"), NULL), 0);
    assert_string_equal(sb->id, "abc");
    sg_sandbox_unref(sb);
    assert_int_equal(sg_lookup_start(&lk, &req, SG_SLICE_LIT("abc"), NULL, &err, &sb), 1);
    assert_int_equal(err, SG_ERR_SANDBOX_NOT_FOUND);
    sg_store_close(st);
}

/* ---- the log ------------------------------------------------------------- */

static void test_crc32c(void **state)
{
    assert_int_equal(sg_store__crc32c("123456789", 9), 0xe3069283u);
    assert_int_equal(sg_store__crc32c("", 0), 0);
}

static void test_replay_after_reopen(void **state)
{
    tmp_t *t = *state;
    sg_store_t *st = open_ok(t->path, NULL);
    put_ok(st, mkrec("s1", "192.168.1.10", "${PORT}-s1.e2b.app", "token-1", 10), 1);
    put_ok(st, mkrec("s2", "2001:db8::7", NULL, NULL, 0), 1);
    put_ok(st, mkrec("s3", "10.0.0.3", NULL, NULL, 0), 1);
    put_ok(st, mkrec("s2", "2001:db8::8", "m\"q\\u", "token-2", 4294967295u), 0);
    assert_int_equal(sg_store_delete(st, SG_SLICE_LIT("s3"), NULL), 0);
    sg_store_close(st);

    for (int round = 0; round < 2; round++) {
        st = open_ok(t->path, NULL);
        assert_int_equal(sg_store_count(st), 2);
        assert_null(get(st, "s3"));
        char ip[64];
        unsigned char h[32];
        sg_sandbox_t *a = get(st, "s1");
        assert_non_null(a);
        assert_string_equal(a->source, "admin");
        assert_string_equal(ip_of(a, ip, sizeof(ip)), "192.168.1.10");
        assert_string_equal(a->mask, "${PORT}-s1.e2b.app");
        assert_int_equal(a->has_token, 1);
        sha256("token-1", h);
        assert_memory_equal(a->token_sha256, h, 32);
        assert_int_equal(a->max_connections, 10);
        sg_sandbox_t *b = get(st, "s2");
        assert_non_null(b);
        assert_int_equal(b->addr.ss_family, AF_INET6);
        assert_string_equal(ip_of(b, ip, sizeof(ip)), "2001:db8::8");
        assert_string_equal(b->mask, "m\"q\\u");
        sha256("token-2", h);
        assert_memory_equal(b->token_sha256, h, 32);
        assert_int_equal(b->max_connections, 4294967295u);
        /* appends after a reopen land after what was there */
        if (round == 0) put_ok(st, mkrec("s4", "10.0.0.4", NULL, NULL, 0), 1);
        if (round == 0) assert_int_equal(sg_store_delete(st, SG_SLICE_LIT("s4"), NULL), 0);
        sg_store_close(st);
    }
}

static void test_second_open_is_refused(void **state)
{
    tmp_t *t = *state;
    sg_store_t *st = open_ok(t->path, NULL), *st2 = NULL;
    char err[512];
    assert_int_equal(sg_store_open(t->path, NULL, &st2, err, sizeof(err)), -1);
    assert_null(st2);
    assert_non_null(strstr(err, "locked"));
    sg_store_close(st);
    sg_store_close(open_ok(t->path, NULL));
}

static void test_token_stored_as_hash(void **state)
{
    tmp_t *t = *state;
    const char *token = "plaintext-Secret-Token-0123456789";
    sg_store_t *st = open_ok(t->path, NULL);
    put_ok(st, mkrec("tok", "10.0.0.1", NULL, token, 0), 1);
    put_ok(st, mkrec("notok", "10.0.0.2", NULL, NULL, 0), 1);
    sg_store_close(st);

    size_t len;
    char *text = read_file(t->path, &len);
    assert_null(strstr(text, token));
    assert_null(strstr(text, "Secret"));
    unsigned char h[32];
    sha256(token, h);
    char hex[65];
    for (int i = 0; i < 32; i++) snprintf(hex + 2 * i, 3, "%02x", h[i]);
    assert_non_null(strstr(text, hex));
    assert_non_null(strstr(text, "\"token_sha256\":null"));
    assert_non_null(strstr(text, "\"op\":\"put\""));
    free(text);
}

/* The log as three lines, where the offset of the last one starts. */
static char *three_records(tmp_t *t, size_t *len, size_t *last_start)
{
    sg_store_t *st = open_ok(t->path, NULL);
    put_ok(st, mkrec("r1", "10.0.0.1", NULL, NULL, 0), 1);
    put_ok(st, mkrec("r2", "10.0.0.2", "${PORT}-r2", "tok", 0), 1);
    put_ok(st, mkrec("r3", "fd00::3", "${PORT}-r3", "tok3", 5), 1);
    sg_store_close(st);
    char *text = read_file(t->path, len);
    assert_int_equal(count_lines(text, *len), 3);
    assert_int_equal(text[*len - 1], '\n');
    const char *p = text + *len - 1;
    while (p > text && p[-1] != '\n') p--;
    *last_start = (size_t)(p - text);
    return text;
}

static void test_torn_last_line_every_offset(void **state)
{
    tmp_t *t = *state;
    size_t len, last;
    char *full = three_records(t, &len, &last);
    sg_log_set_level(SG_LOG_ERROR); /* one "torn last line" warning per cut */
    for (size_t cut = last; cut <= len; cut++) {
        write_file(t->path, full, cut);
        sg_store_t *st = open_ok(t->path, NULL);
        assert_non_null(get(st, "r1"));
        assert_non_null(get(st, "r2"));
        int whole = cut == len;
        assert_int_equal(get(st, "r3") != NULL, whole);
        assert_int_equal(sg_store_count(st), whole ? 3 : 2);
        /* the torn tail was cut off the file */
        struct stat sb;
        assert_int_equal(stat(t->path, &sb), 0);
        assert_int_equal((size_t)sb.st_size, whole ? len : last);

        put_ok(st, mkrec("r4", "10.0.0.4", NULL, NULL, 0), 1);
        sg_store_close(st);
        st = open_ok(t->path, NULL);
        assert_non_null(get(st, "r1"));
        assert_non_null(get(st, "r2"));
        assert_int_equal(get(st, "r3") != NULL, whole);
        assert_non_null(get(st, "r4"));
        assert_string_equal(get(st, "r2")->mask, "${PORT}-r2");
        sg_store_close(st);
    }
    free(full);
}

static void test_garbage_last_line_dropped(void **state)
{
    tmp_t *t = *state;
    size_t len, last;
    char *full = three_records(t, &len, &last);
    sg_log_set_level(SG_LOG_ERROR);
    const char *tails[] = {
        "\n",                          /* empty line */
        "zzzzzzzz {}\n",               /* not a checksum */
        "00000000 {\"op\":\"put\"}\n", /* checksum mismatch */
        "\0\0\0\0\0\0\0\0\0\0\0\0",    /* zero-filled block after power loss */
    };
    size_t tail_len[] = {1, 12, 22, 12};
    char *buf = malloc(len + 64);
    for (size_t i = 0; i < 4; i++) {
        memcpy(buf, full, len);
        memcpy(buf + len, tails[i], tail_len[i]);
        write_file(t->path, buf, len + tail_len[i]);
        sg_store_t *st = open_ok(t->path, NULL);
        assert_int_equal(sg_store_count(st), 3);
        put_ok(st, mkrec("r4", "10.0.0.4", NULL, NULL, 0), 1);
        sg_store_close(st);
        st = open_ok(t->path, NULL);
        assert_int_equal(sg_store_count(st), 4);
        sg_store_close(st);
    }
    /* a bit flip inside the last record: its checksum fails, it is dropped */
    memcpy(buf, full, len);
    buf[len - 5] ^= 0x01;
    write_file(t->path, buf, len);
    sg_store_t *st = open_ok(t->path, NULL);
    assert_int_equal(sg_store_count(st), 2);
    assert_null(get(st, "r3"));
    sg_store_close(st);
    free(buf);
    free(full);
}

static void expect_open_error(const char *path, const char *want_prefix, const char *want_sub)
{
    sg_store_t *st = NULL;
    char err[512] = "";
    assert_int_equal(sg_store_open(path, NULL, &st, err, sizeof(err)), -1);
    assert_null(st);
    if (strncmp(err, want_prefix, strlen(want_prefix)) != 0 || !strstr(err, want_sub))
        fail_msg("error \"%s\", want prefix \"%s\" containing \"%s\"", err, want_prefix, want_sub);
}

static void test_corruption_before_last_line(void **state)
{
    tmp_t *t = *state;
    size_t len, last;
    char *full = three_records(t, &len, &last);
    char prefix[400];
    snprintf(prefix, sizeof(prefix), "%s:2: ", t->path);

    /* flip one byte in line 2 of 3 */
    char *buf = malloc(len);
    memcpy(buf, full, len);
    const char *l2 = strchr(full, '\n') + 1;
    buf[(l2 - full) + 20] ^= 0x20;
    write_file(t->path, buf, len);
    expect_open_error(t->path, prefix, "checksum mismatch");

    /* a torn line 2 that a later append glued onto (what truncating the
     * torn tail at open prevents) */
    size_t l2_off = (size_t)(l2 - full);
    buf = realloc(buf, len + 10);
    memcpy(buf, full, l2_off + 10);
    memcpy(buf + l2_off + 10, full + l2_off, len - l2_off);
    write_file(t->path, buf, len + 10);
    expect_open_error(t->path, prefix, "checksum mismatch");

    /* a well-formed line with a valid checksum but nonsense content is an
     * error too, even last: it is not crash damage */
    sg_strbuf_t line = {0};
    const char *bad_json[] = {"{\"op\":\"frobnicate\",\"id\":\"x\"}",
                              "{\"op\":\"put\",\"id\":\"x\",\"address\":\"not-an-ip\"}",
                              "{\"op\":\"put\",\"id\":\"\",\"address\":\"1.2.3.4\"}", "[1,2]",
                              "{\"op\":\"put\""};
    const char *bad_why[] = {"unknown op", "address", "id", "op", "invalid JSON"};
    for (size_t i = 0; i < 5; i++) {
        sg_strbuf_reset(&line);
        sg_strbuf_append(&line, full, l2_off); /* line 1 */
        sg_strbuf_appendf(&line, "%08x %s\n",
                          (unsigned)sg_store__crc32c(bad_json[i], strlen(bad_json[i])),
                          bad_json[i]);
        write_file(t->path, line.base, line.len);
        expect_open_error(t->path, prefix, bad_why[i]);
        sg_strbuf_append(&line, full + last, len - last);
        write_file(t->path, line.base, line.len);
        expect_open_error(t->path, prefix, bad_why[i]);
    }
    sg_strbuf_free(&line);
    /* the failed opens changed nothing in the file */
    free(buf);
    free(full);
}

static void test_compaction(void **state)
{
    tmp_t *t = *state;
    enum { IDS = 100 };
    sg_log_set_level(SG_LOG_WARN);
    sg_store_t *st = open_ok(t->path, NULL);
    char id[16], mask[32];
    size_t max_lines = 0;
    int compacted = 0;
    /* 100 live ids rewritten over and over: threshold max(1000, 400) */
    for (int round = 0; round < 12; round++) {
        for (int i = 0; i < IDS; i++) {
            snprintf(id, sizeof(id), "c%d", i);
            snprintf(mask, sizeof(mask), "${PORT}-r%d", round);
            put_ok(st, mkrec(id, "10.0.0.1", mask, NULL, (unsigned)round), round == 0);
            size_t lines = sg_store_log_lines(st);
            if (lines < max_lines) compacted = 1;
            if (lines > max_lines) max_lines = lines;
            assert_true(lines <= 1000);
        }
    }
    assert_true(compacted);
    for (int i = 0; i < IDS; i += 2) {
        snprintf(id, sizeof(id), "c%d", i);
        assert_int_equal(sg_store_delete(st, sg_slice_cstr(id), NULL), 0);
    }
    size_t lines = sg_store_log_lines(st);
    sg_store_close(st);

    size_t len;
    char *text = read_file(t->path, &len);
    assert_int_equal(count_lines(text, len), lines);
    free(text);
    char tmp[400];
    snprintf(tmp, sizeof(tmp), "%s.compact", t->path);
    assert_int_equal(access(tmp, F_OK), -1);

    /* force one more compaction now: only live records remain */
    st = open_ok(t->path, NULL);
    assert_int_equal(sg_store__wal_compact(st), 0);
    assert_int_equal(sg_store_log_lines(st), IDS / 2);
    put_ok(st, mkrec("after", "10.0.0.2", NULL, NULL, 0), 1);
    sg_store_close(st);

    st = open_ok(t->path, NULL);
    assert_int_equal(sg_store_count(st), IDS / 2 + 1);
    assert_int_equal(sg_store_log_lines(st), IDS / 2 + 1);
    for (int i = 0; i < IDS; i++) {
        snprintf(id, sizeof(id), "c%d", i);
        sg_sandbox_t *sb = get(st, id);
        if (i % 2 == 0) {
            assert_null(sb);
        } else {
            assert_non_null(sb);
            assert_string_equal(sb->mask, "${PORT}-r11");
            assert_int_equal(sb->max_connections, 11);
        }
    }
    assert_non_null(get(st, "after"));
    sg_store_close(st);
}

/* A stale temporary file from a compaction that crashed before its rename
 * is ignored and removed. */
static void test_stale_compact_file(void **state)
{
    tmp_t *t = *state;
    size_t len, last;
    char *full = three_records(t, &len, &last);
    char tmp[400];
    snprintf(tmp, sizeof(tmp), "%s.compact", t->path);
    write_file(tmp, full, last / 2);
    sg_store_t *st = open_ok(t->path, NULL);
    assert_int_equal(sg_store_count(st), 3);
    assert_int_equal(access(tmp, F_OK), -1);
    sg_store_close(st);
    free(full);
}

/* A write that fails part-way (here: a short write, then EFBIG from
 * RLIMIT_FSIZE) is cut back off the file; the store stays usable and the
 * log stays clean. */
static void test_failed_append_rolls_back(void **state)
{
    tmp_t *t = *state;
    sg_store_t *st = open_ok(t->path, NULL);
    put_ok(st, mkrec("ok1", "10.0.0.1", NULL, NULL, 0), 1);
    struct stat sb;
    assert_int_equal(stat(t->path, &sb), 0);
    off_t size = sb.st_size;

    struct rlimit old, lim;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    void (*old_handler)(int) = signal(SIGXFSZ, SIG_IGN);
    lim = old;
    lim.rlim_cur = (rlim_t)size + 20; /* room for 20 bytes of the next line */
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    int r = sg_store_put(st, mkrec("big", "10.0.0.2", "${PORT}-a-long-enough-mask", NULL, 0), NULL);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, old_handler);
    assert_int_equal(r, -EFBIG);
    assert_null(get(st, "big"));
    assert_int_equal(stat(t->path, &sb), 0);
    assert_int_equal(sb.st_size, size);

    put_ok(st, mkrec("ok2", "10.0.0.3", NULL, NULL, 0), 1);
    sg_store_close(st);
    st = open_ok(t->path, NULL);
    assert_int_equal(sg_store_count(st), 2);
    assert_non_null(get(st, "ok2"));
    assert_null(get(st, "big"));
    assert_int_equal(sg_store_log_lines(st), 2);
    sg_store_close(st);
}

/* ---- readers on other threads ------------------------------------------- */

#define CONC_IDS 512

typedef struct {
    sg_qsbr_reader_t qr;
    sg_store_t *st;
    atomic_int *stop;
    unsigned seed;
    unsigned long hits, misses;
    int bad;
} conc_reader_t;

static void *conc_reader_main(void *arg)
{
    conc_reader_t *rd = arg;
    unsigned long i = 0;
    char id[16];
    while (!atomic_load_explicit(rd->stop, memory_order_relaxed)) {
        rd->seed = rd->seed * 1103515245u + 12345u;
        int k = (int)((rd->seed >> 8) % CONC_IDS);
        int n = snprintf(id, sizeof(id), "c%d", k);
        sg_sandbox_t *sb = sg_store_get(rd->st, sg_slice(id, (size_t)n));
        if (sb) {
            rd->hits++;
            /* every field of the record, and the mask names the id */
            if (sb->id_len != (size_t)n || memcmp(sb->id, id, (size_t)n) != 0) rd->bad++;
            if (!sb->mask || !strstr(sb->mask, id)) rd->bad++;
            if (sb->addr.ss_family != AF_INET || strcmp(sb->source, "admin") != 0) rd->bad++;
            if (sb->max_connections != (unsigned)k) rd->bad++;
        } else {
            rd->misses++;
        }
        if (++i % 32 == 0) sg_qsbr_quiescent(&rd->qr);
        if (i % 4096 == 0) {
            sg_qsbr_offline(&rd->qr);
            sched_yield();
            sg_qsbr_online(&rd->qr);
        }
    }
    sg_qsbr_offline(&rd->qr);
    return NULL;
}

static void run_concurrent(const char *path, int ops)
{
    enum { READERS = 3 };
    sg_qsbr_t q;
    sg_qsbr_init(&q);
    sg_store_t *st = open_ok(path, &q);
    atomic_int stop;
    atomic_init(&stop, 0);
    conc_reader_t rd[READERS];
    pthread_t th[READERS];
    memset(rd, 0, sizeof(rd));
    for (int i = 0; i < READERS; i++) {
        rd[i].st = st;
        rd[i].stop = &stop;
        rd[i].seed = (unsigned)i * 7919u + 1;
        sg_qsbr_register(&q, &rd[i].qr);
    }
    for (int i = 0; i < READERS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, conc_reader_main, &rd[i]), 0);

    unsigned seed = 99;
    char id[16], mask[48];
    size_t max_pending = 0;
    for (int op = 0; op < ops; op++) {
        seed = seed * 1103515245u + 12345u;
        int k = (int)((seed >> 8) % CONC_IDS);
        snprintf(id, sizeof(id), "c%d", k);
        if ((seed >> 4) % 3) {
            snprintf(mask, sizeof(mask), "${PORT}-%s-v%d", id, op);
            assert_int_equal(sg_store_put(st, mkrec(id, "10.9.8.7", mask, NULL, (unsigned)k), NULL),
                             0);
        } else {
            assert_int_equal(sg_store_delete(st, sg_slice_cstr(id), NULL), 0);
        }
        size_t p = sg_qsbr_pending(&q);
        if (p > max_pending) max_pending = p;
    }
    atomic_store(&stop, 1);
    unsigned long hits = 0, misses = 0;
    for (int i = 0; i < READERS; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(rd[i].bad, 0);
        hits += rd[i].hits;
        misses += rd[i].misses;
    }
    print_message("store %s: %d writes, %lu hits, %lu misses, max pending frees %zu\n",
                  path ? "file" : "memory", ops, hits, misses, max_pending);
    assert_true(hits > 0);
    sg_store_close(st);
    assert_int_equal(sg_qsbr_reclaim(&q), 0); /* all readers offline */
    for (int i = 0; i < READERS; i++) sg_qsbr_unregister(&rd[i].qr);
    sg_qsbr_destroy(&q);
}

static void test_concurrent_readers_memory(void **state)
{
    run_concurrent(NULL, 20000);
}

static void test_concurrent_readers_file(void **state)
{
    tmp_t *t = *state;
    sg_log_set_level(SG_LOG_WARN);
    run_concurrent(t->path, 3000);
}

/* ---- cost of a put with 10k records ---------------------------------- */

static void test_put_cost_10k(void **state)
{
    tmp_t *t = *state;
    enum { N = 10000, TIMED = 1000, TIMED_FILE = 200 };
    char id[16];
    sg_qsbr_t q;
    sg_qsbr_init(&q);
    sg_log_set_level(SG_LOG_WARN);

    /* memory only: table copy + publish + defer + reclaim */
    sg_store_t *st = open_ok(NULL, &q);
    double t0 = now_s();
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof(id), "sb%05d", i);
        sg_store_put(st, mkrec(id, "10.0.0.1", "${PORT}-x.example", "t", 0), NULL);
    }
    double t_fill = now_s() - t0;
    t0 = now_s();
    for (int i = 0; i < TIMED; i++) {
        snprintf(id, sizeof(id), "sb%05d", (i * 7) % N);
        sg_store_put(st, mkrec(id, "10.0.0.2", "${PORT}-y.example", "t", 0), NULL);
    }
    double t_replace = (now_s() - t0) / TIMED;
    t0 = now_s();
    for (int i = 0; i < TIMED; i++) {
        snprintf(id, sizeof(id), "new%05d", i);
        sg_store_put(st, mkrec(id, "10.0.0.2", NULL, NULL, 0), NULL);
        sg_store_delete(st, sg_slice_cstr(id), NULL);
    }
    double t_insdel = (now_s() - t0) / (2 * TIMED);
    assert_int_equal(sg_store_count(st), N);
    sg_store_close(st);

    /* with the log: build the 10k-record log directly (10k fdatasyncs would
     * take seconds), replay it, then time durable puts */
    sg_strbuf_t buf = {0};
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof(id), "sb%05d", i);
        sg_sandbox_t *rec = mkrec(id, "10.0.0.1", "${PORT}-x.example", "t", 0);
        assert_int_equal(sg_store__encode_put(&buf, rec), 0);
        sg_sandbox_unref(rec);
    }
    write_file(t->path, buf.base, buf.len);
    sg_strbuf_free(&buf);
    t0 = now_s();
    st = open_ok(t->path, &q);
    double t_replay = now_s() - t0;
    assert_int_equal(sg_store_count(st), N);
    t0 = now_s();
    for (int i = 0; i < TIMED_FILE; i++) {
        snprintf(id, sizeof(id), "sb%05d", (i * 13) % N);
        assert_int_equal(sg_store_put(st, mkrec(id, "10.0.0.3", "${PORT}-z.example", "t", 0), NULL),
                         0);
    }
    double t_durable = (now_s() - t0) / TIMED_FILE;
    t0 = now_s();
    assert_int_equal(sg_store__wal_compact(st), 0);
    double t_compact = now_s() - t0;
    sg_store_close(st);
    sg_qsbr_destroy(&q);

    print_message("put cost @10k records: fill 10k %.1f ms; replace %.1f us; insert/delete "
                  "%.1f us; durable replace (log, fdatasync) %.1f us; replay 10k %.1f ms; "
                  "compaction 10k %.1f ms\n",
                  t_fill * 1e3, t_replace * 1e6, t_insdel * 1e6, t_durable * 1e6, t_replay * 1e3,
                  t_compact * 1e3);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crud_memory),
        cmocka_unit_test_setup_teardown(test_crud_file, tmp_setup, tmp_teardown),
        cmocka_unit_test(test_invalid_input),
        cmocka_unit_test(test_list_paging),
        cmocka_unit_test(test_table_model),
        cmocka_unit_test(test_lookup_source),
        cmocka_unit_test(test_crc32c),
        cmocka_unit_test_setup_teardown(test_replay_after_reopen, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(test_second_open_is_refused, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(test_token_stored_as_hash, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(test_torn_last_line_every_offset, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(test_garbage_last_line_dropped, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(test_corruption_before_last_line, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(test_compaction, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(test_stale_compact_file, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(test_failed_append_rolls_back, tmp_setup, tmp_teardown),
        cmocka_unit_test(test_concurrent_readers_memory),
        cmocka_unit_test_setup_teardown(test_concurrent_readers_file, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(test_put_cost_10k, tmp_setup, tmp_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
