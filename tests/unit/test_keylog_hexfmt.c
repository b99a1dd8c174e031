/* ingress/keylog_hexfmt.c: __sprintf_chk with a fast path for "%02x" must
 * behave exactly like glibc's. Calls go through a volatile function pointer
 * so the compiler cannot fold them into its own formatting. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

int __sprintf_chk(char *s, int flag, size_t slen, const char *format, ...);
static int (*volatile sprintf_chk)(char *, int, size_t, const char *, ...) = __sprintf_chk;

static void test_every_byte_matches_snprintf(void **state)
{
    (void)state;
    for (unsigned v = 0; v <= 0xff; v++) {
        char want[8], got[8];
        memset(got, 'Z', sizeof(got));
        int wn = snprintf(want, sizeof(want), "%02x", v);
        int gn = sprintf_chk(got, 1, sizeof(got), "%02x", v);
        assert_int_equal(gn, wn);
        assert_string_equal(got, want);
        assert_int_equal(got[3], 'Z'); /* nothing written past the NUL */
    }
}

static void test_other_formats_and_values_take_glibc_path(void **state)
{
    (void)state;
    char want[64], got[64];
    const unsigned values[] = {0x100, 0xabc, 0xffffffffu};
    for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
        int wn = snprintf(want, sizeof(want), "%02x", values[i]);
        int gn = sprintf_chk(got, 1, sizeof(got), "%02x", values[i]);
        assert_int_equal(gn, wn);
        assert_string_equal(got, want);
    }
    assert_int_equal(sprintf_chk(got, 1, sizeof(got), "%02X", 0xabu), 2);
    assert_string_equal(got, "AB");
    assert_int_equal(sprintf_chk(got, 1, sizeof(got), "%02x%s", 7u, "-k"), 4);
    assert_string_equal(got, "07-k");
    assert_int_equal(sprintf_chk(got, 1, sizeof(got), "%d %s", -12, "x"), 5);
    assert_string_equal(got, "-12 x");
    assert_int_equal(sprintf_chk(got, 1, (size_t)-1, "%02x", 0x5au), 2); /* unknown size */
    assert_string_equal(got, "5a");
}

/* glibc's check: output longer than the buffer aborts; the fast path must
 * not write two digits and a NUL into two bytes instead. */
static void test_short_buffer_still_aborts(void **state)
{
    (void)state;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        char two[2];
        sprintf_chk(two, 1, sizeof(two), "%02x", 0xabu);
        _exit(0);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    /* glibc aborts (SIGABRT); under ASan its report ends the child instead */
    assert_false(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_byte_matches_snprintf),
        cmocka_unit_test(test_other_formats_and_values_take_glibc_path),
        cmocka_unit_test(test_short_buffer_still_aborts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
