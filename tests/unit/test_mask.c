/* Mask templates: expansion and validation, from tables of cases placed
 * against a guard page. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "route/mask.h"

#include "guard_page.h"

typedef struct {
    const char *tmpl;
    size_t len; /* 0: strlen */
    uint16_t port;
    const char *want;
    size_t want_len; /* 0: strlen */
} expand_case_t;

static const expand_case_t expand_cases[] = {
    {"${PORT}-abc.e2b.app", 0, 3000, "3000-abc.e2b.app", 0},
    {"localhost:${PORT}", 0, 8080, "localhost:8080", 0},
    {"localhost", 0, 8080, "localhost", 0},
    {"${PORT}", 0, 1, "1", 0},
    {"${PORT}", 0, 65535, "65535", 0},
    {"${PORT}", 0, 0, "0", 0},
    {"${PORT}${PORT}", 0, 1, "11", 0},
    {"${PORT}${PORT}${PORT}", 0, 443, "443443443", 0},
    {"x${PORT}y${PORT}z", 0, 65535, "x65535y65535z", 0},
    /* other '$' sequences are copied as they are */
    {"${PORT", 0, 80, "${PORT", 0},
    {"a${PORT", 0, 80, "a${PORT", 0},
    {"${PORT}${PORT", 0, 80, "80${PORT", 0},
    {"$${PORT}", 0, 80, "$80", 0},
    {"${${PORT}}", 0, 80, "${80}", 0},
    {"${port}", 0, 80, "${port}", 0},
    {"$PORT", 0, 80, "$PORT", 0},
    {"${ PORT}", 0, 80, "${ PORT}", 0},
    {"$", 0, 80, "$", 0},
    {"$$", 0, 80, "$$", 0},
    {"${PORT}}", 0, 80, "80}", 0},
    {"", 0, 80, "", 0},
    /* expansion is byte-exact, even for bytes validate would refuse */
    {"a\0${PORT}\0b", 11, 7,
     "a\0"
     "7\0b",
     5},
    {"\xc3\xa9${PORT}", 0, 9,
     "\xc3\xa9"
     "9",
     0},
};

static void test_expand_table(void **state)
{
    for (size_t i = 0; i < sizeof(expand_cases) / sizeof(expand_cases[0]); i++) {
        const expand_case_t *c = &expand_cases[i];
        size_t len = c->len ? c->len : strlen(c->tmpl);
        size_t want_len = c->want_len ? c->want_len : strlen(c->want);
        guarded_t g = guard_copy(c->tmpl, len);
        sg_strbuf_t out = {0};
        sg_mask_expand(&out, sg_slice(g.data, len), c->port);
        if (out.len != want_len || (want_len && memcmp(out.base, c->want, want_len) != 0))
            print_error("case %zu \"%s\": got \"%.*s\"\n", i, c->tmpl, (int)out.len,
                        out.base ? out.base : "");
        assert_int_equal(out.len, want_len);
        if (want_len) assert_memory_equal(out.base, c->want, want_len);
        sg_strbuf_free(&out);
        guard_free(&g);
    }
}

static void test_expand_appends(void **state)
{
    sg_strbuf_t out = {0};
    sg_strbuf_append_cstr(&out, "Host: ");
    sg_mask_expand(&out, SG_SLICE_LIT("${PORT}-x.local"), 5173);
    sg_mask_expand(&out, SG_SLICE_LIT(""), 1);
    sg_mask_expand(&out, sg_slice(NULL, 0), 1);
    assert_int_equal(out.len, strlen("Host: 5173-x.local"));
    assert_memory_equal(out.base, "Host: 5173-x.local", out.len);
    sg_strbuf_free(&out);
}

/* A template of many ${PORT}s grows past the buffer's first allocation. */
static void test_expand_many(void **state)
{
    char tmpl[7 * 200 + 1];
    for (int i = 0; i < 200; i++) memcpy(tmpl + 7 * i, "${PORT}", 7);
    sg_strbuf_t out = {0};
    sg_mask_expand(&out, sg_slice(tmpl, sizeof(tmpl) - 1), 12345);
    assert_int_equal(out.len, 5 * 200);
    for (int i = 0; i < 200; i++) assert_memory_equal(out.base + 5 * i, "12345", 5);
    sg_strbuf_free(&out);
}

#define R_EMPTY "mask is empty"
#define R_LONG "mask is longer than 255 bytes"
#define R_DOLLAR "mask may use '$' only in the literal ${PORT}"
#define R_CTRL "mask contains a control character"
#define R_UTF8 "mask contains a non-ASCII byte"
#define R_CHAR "mask may only contain host[:port] characters and ${PORT}"

typedef struct {
    const char *tmpl;
    size_t len;         /* 0: strlen */
    const char *reason; /* NULL: valid */
} validate_case_t;

static const validate_case_t validate_cases[] = {
    {"localhost", 0, NULL},
    {"localhost:${PORT}", 0, NULL},
    {"${PORT}-abc.e2b.app", 0, NULL},
    {"${PORT}", 0, NULL},
    {"${PORT}${PORT}", 0, NULL},
    {"[::1]:${PORT}", 0, NULL},
    {"127.0.0.1:8080", 0, NULL},
    {"my_service.internal:8080", 0, NULL},
    {"UPPER.Case-host", 0, NULL},

    {"", 0, R_EMPTY},
    {"${PORT", 0, R_DOLLAR},
    {"host:${PORT", 0, R_DOLLAR},
    {"${PORT}${PORT", 0, R_DOLLAR},
    {"$", 0, R_DOLLAR},
    {"$$", 0, R_DOLLAR},
    {"$${PORT}", 0, R_DOLLAR},
    {"${port}", 0, R_DOLLAR},
    {"$PORT", 0, R_DOLLAR},
    {"${HOST}", 0, R_DOLLAR},
    {"${PORT }", 0, R_DOLLAR},
    /* header injection */
    {"host\r\nX-Evil: 1", 0, R_CTRL},
    {"host\nX-Evil: 1", 0, R_CTRL},
    {"host\r", 0, R_CTRL},
    {"${PORT}\r\n\r\nGET / HTTP/1.1", 0, R_CTRL},
    {"host\0evil", 9, R_CTRL},
    {"\0", 1, R_CTRL},
    {"host\t", 0, R_CTRL},
    {"host\x7f", 0, R_CTRL},
    {"h\xc3\xa9.local", 0, R_UTF8},
    {"\xff", 0, R_UTF8},
    {"host name", 0, R_CHAR},
    {"host/path", 0, R_CHAR},
    {"user@host", 0, R_CHAR},
    {"host%0d%0a", 0, R_CHAR},
    {"host,other", 0, R_CHAR},
    {"{PORT}", 0, R_CHAR},
    {"host;x=1", 0, R_CHAR},
    {"\"host\"", 0, R_CHAR},
};

static void check_validate(const char *tmpl, size_t len, const char *want, size_t idx)
{
    guarded_t g = guard_copy(tmpl, len);
    const char *got = sg_mask_validate(sg_slice(g.data, len));
    if ((got == NULL) != (want == NULL) || (got && strcmp(got, want) != 0))
        print_error("case %zu: got \"%s\", want \"%s\"\n", idx, got ? got : "valid",
                    want ? want : "valid");
    if (want) {
        assert_non_null(got);
        assert_string_equal(got, want);
    } else {
        assert_null(got);
    }
    guard_free(&g);
}

static void test_validate_table(void **state)
{
    for (size_t i = 0; i < sizeof(validate_cases) / sizeof(validate_cases[0]); i++) {
        const validate_case_t *c = &validate_cases[i];
        check_validate(c->tmpl, c->len ? c->len : strlen(c->tmpl), c->reason, i);
    }
}

static void test_validate_length(void **state)
{
    char buf[4096];
    memset(buf, 'a', sizeof(buf));
    check_validate(buf, 1, NULL, 0);
    check_validate(buf, 255, NULL, 1);
    check_validate(buf, 256, R_LONG, 2);
    check_validate(buf, sizeof(buf), R_LONG, 3);
    assert_string_equal(sg_mask_validate(sg_slice(NULL, 0)), R_EMPTY);

    /* a ${PORT} straddling the limit counts in template bytes */
    memcpy(buf + 248, "${PORT}", 7);
    check_validate(buf, 255, NULL, 4);
}

/* Whatever validate accepts expands to a header-safe value for every port. */
static void test_validated_expansion_is_header_safe(void **state)
{
    for (size_t i = 0; i < sizeof(validate_cases) / sizeof(validate_cases[0]); i++) {
        const validate_case_t *c = &validate_cases[i];
        size_t len = c->len ? c->len : strlen(c->tmpl);
        if (sg_mask_validate(sg_slice(c->tmpl, len))) continue;
        const uint16_t ports[] = {1, 80, 65535};
        for (size_t p = 0; p < 3; p++) {
            sg_strbuf_t out = {0};
            sg_mask_expand(&out, sg_slice(c->tmpl, len), ports[p]);
            assert_true(out.len > 0);
            for (size_t k = 0; k < out.len; k++) {
                unsigned char ch = (unsigned char)out.base[k];
                assert_true(ch > 0x20 && ch < 0x7f && ch != '$');
            }
            sg_strbuf_free(&out);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_expand_table),
        cmocka_unit_test(test_expand_appends),
        cmocka_unit_test(test_expand_many),
        cmocka_unit_test(test_validate_table),
        cmocka_unit_test(test_validate_length),
        cmocka_unit_test(test_validated_expansion_is_header_safe),
    };
    return cmocka_run_group_tests_name("route/mask", tests, NULL, NULL);
}
