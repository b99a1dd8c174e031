/* proxy/head_in: a head read whole is viewed in its read buffer (referenced,
 * never copied); one that spans reads is gathered; offsets into the bytes
 * survive gathering; reset gives the buffer back. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "proxy/head_in.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    sg_buf_pool_t pool;
    sg_head_in_t in;
} fixture_t;

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof(*f));
    sg_buf_pool_init(&f->pool, 256, 4);
    *state = f;
    return 0;
}

/* Every test ends with no read buffer held: reset gave it back. */
static int teardown(void **state)
{
    fixture_t *f = *state;
    sg_head_in_reset(&f->in);
    assert_int_equal(f->pool.n_live, 0);
    sg_strbuf_free(&f->in.gathered);
    sg_buf_pool_destroy(&f->pool);
    free(f);
    return 0;
}

static sg_buf_t *read_of(sg_buf_pool_t *pool, const char *text)
{
    sg_buf_t *b = sg_buf_alloc(pool);
    memcpy(b->data, text, strlen(text));
    return b;
}

static void test_whole_head_is_viewed_in_place(void **state)
{
    fixture_t *f = *state;
    sg_buf_pool_t *pool = &f->pool;
    sg_head_in_t *in = &f->in;
    sg_buf_t *b = read_of(pool, "GET / HTTP/1.1\r\n\r\nbody");
    assert_int_equal(sg_head_in_add(in, b, 22), 0);
    sg_buf_unref(b); /* the read callback's reference */
    assert_ptr_equal(in->base, b->data);
    assert_ptr_equal(in->buf, b);
    assert_int_equal(b->refs, 1);
    assert_null(in->gathered.base); /* nothing copied */
    sg_head_in_truncate(in, 18);
    assert_int_equal(in->len, 18);
    sg_head_in_reset(in);
    assert_null(in->buf);
    assert_int_equal(in->len, 0);
    assert_int_equal(pool->n_live, 0); /* the read buffer went back */
}

static void test_split_head_is_gathered_and_offsets_hold(void **state)
{
    fixture_t *f = *state;
    sg_buf_pool_t *pool = &f->pool;
    sg_head_in_t *in = &f->in;
    sg_buf_t *b1 = read_of(pool, "HTTP/1.1 200 OK\r\nConte");
    assert_int_equal(sg_head_in_add(in, b1, 22), 0);
    sg_buf_unref(b1);
    sg_head_in_gather(in); /* the parser wants more */
    assert_null(in->buf);
    assert_int_equal(pool->n_live, 0); /* a slow peer pins no read buffer */
    assert_ptr_equal(in->base, in->gathered.base);
    sg_buf_t *b2 = read_of(pool, "nt-Length: 2\r\n\r\nok");
    assert_int_equal(sg_head_in_add(in, b2, 18), 22); /* the new bytes start here */
    sg_buf_unref(b2);
    assert_int_equal(in->len, 40);
    assert_memory_equal(in->base, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 40);
    sg_head_in_gather(in); /* already gathered: no-op */
    assert_int_equal(in->len, 40);
}

static void test_drop_moves_the_view_or_the_bytes(void **state)
{
    fixture_t *f = *state;
    sg_buf_pool_t *pool = &f->pool;
    sg_head_in_t *in = &f->in;
    sg_buf_t *b = read_of(pool, "HTTP/1.1 100 X\r\n\r\nHTTP/1.1 2");
    sg_head_in_add(in, b, 28);
    sg_buf_unref(b);
    sg_head_in_drop(in, 18); /* the 1xx head passed on */
    assert_ptr_equal(in->base, b->data + 18);
    assert_int_equal(in->len, 10);
    sg_head_in_gather(in);
    assert_memory_equal(in->base, "HTTP/1.1 2", 10);
    sg_head_in_drop(in, 9);
    assert_ptr_equal(in->base, in->gathered.base);
    assert_memory_equal(in->base, "2", 1);
    /* All of it dropped: the next read is viewed in place again-> */
    sg_head_in_drop(in, 1);
    sg_buf_t *b2 = read_of(pool, "HTTP/1.1 204 N\r\n\r\n");
    assert_int_equal(sg_head_in_add(in, b2, 18), 0);
    sg_buf_unref(b2);
    assert_ptr_equal(in->base, b2->data);
}

static void test_swap_takes_pipelined_bytes(void **state)
{
    (void)state;
    sg_head_in_t in = {0};
    sg_strbuf_t pipelined = {0};
    sg_strbuf_append(&pipelined, "GET /2 HTTP/1.1\r\n", 17);
    sg_head_in_reset(&in);
    sg_head_in_swap_gathered(&in, &pipelined);
    assert_int_equal(in.len, 17);
    assert_ptr_equal(in.base, in.gathered.base);
    assert_int_equal(pipelined.len, 0);
    sg_strbuf_free(&pipelined);
    sg_strbuf_free(&in.gathered);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_whole_head_is_viewed_in_place, setup, teardown),
        cmocka_unit_test_setup_teardown(test_split_head_is_gathered_and_offsets_hold, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_drop_moves_the_view_or_the_bytes, setup, teardown),
        cmocka_unit_test(test_swap_takes_pipelined_bytes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
