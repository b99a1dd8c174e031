/* core/buf's pool: buffers are recycled up to its limit, and a trim gives
 * back what the load since the previous trim did not need. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "core/buf.h"

static void take(sg_buf_pool_t *pool, sg_buf_t **bufs, size_t n)
{
    for (size_t i = 0; i < n; i++) bufs[i] = sg_buf_alloc(pool);
}

static void give_back(sg_buf_t **bufs, size_t n)
{
    for (size_t i = 0; i < n; i++) sg_buf_unref(bufs[i]);
}

static void test_steady_load_allocates_once(void **state)
{
    (void)state;
    sg_buf_pool_t pool;
    sg_buf_pool_init(&pool, 1024, 64);
    sg_buf_t *bufs[10];
    for (int round = 0; round < 5; round++) {
        take(&pool, bufs, 10);
        give_back(bufs, 10);
        assert_int_equal(sg_counter_get(&pool.n_allocs), 10);
        /* a trim between rounds keeps what a round needs */
        assert_int_equal(sg_buf_pool_trim(&pool, 2), 0);
    }
    assert_int_equal(pool.n_free, 10);
    sg_buf_pool_destroy(&pool);
}

static void test_trim_gives_back_a_past_burst(void **state)
{
    (void)state;
    sg_buf_pool_t pool;
    sg_buf_pool_init(&pool, 1024, 64);
    sg_buf_t *bufs[40];
    take(&pool, bufs, 40);
    give_back(bufs, 40);
    assert_int_equal(pool.n_free, 40);
    /* the burst was in this period: kept */
    assert_int_equal(sg_buf_pool_trim(&pool, 4), 0);
    /* a quieter period, 3 out at most: 4 spares (min_free) are enough */
    take(&pool, bufs, 3);
    give_back(bufs, 3);
    assert_int_equal(sg_buf_pool_trim(&pool, 4), 36);
    assert_int_equal(pool.n_free, 4);
    /* buffers still out at the trim are not counted as spares needed */
    take(&pool, bufs, 10);
    assert_int_equal(sg_counter_get(&pool.n_allocs), 46);
    assert_int_equal(sg_buf_pool_trim(&pool, 4), 0); /* peak 10, 10 out: 0 spare, min 4 */
    assert_int_equal(pool.n_free, 0);
    give_back(bufs, 10);
    /* the 10 were out during this period too: kept once more */
    assert_int_equal(sg_buf_pool_trim(&pool, 4), 0);
    assert_int_equal(sg_buf_pool_trim(&pool, 4), 6); /* a period with none out: back to 4 */
    sg_buf_pool_destroy(&pool);
}

static void test_limit_caps_recycled_buffers(void **state)
{
    (void)state;
    sg_buf_pool_t pool;
    sg_buf_pool_init(&pool, 1024, 4);
    sg_buf_t *bufs[10];
    take(&pool, bufs, 10);
    give_back(bufs, 10);
    assert_int_equal(pool.n_free, 4);
    assert_int_equal(pool.n_live, 0);
    sg_buf_pool_destroy(&pool);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_steady_load_allocates_once),
        cmocka_unit_test(test_trim_gives_back_a_past_burst),
        cmocka_unit_test(test_limit_caps_recycled_buffers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
