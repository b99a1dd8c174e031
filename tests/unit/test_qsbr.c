/* QSBR: the grace-period rules step by step on one thread, then real reader
 * threads hammering a pointer that a writer keeps replacing and freeing
 * (under ASan a premature free shows up as a use-after-free). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <pthread.h>
#include <sched.h>

#include "core/qsbr.h"

static int ran[16];
static int order[16];
static int n_order;

static void mark(void *arg)
{
    int i = (int)(intptr_t)arg;
    ran[i]++;
    order[n_order++] = i;
}

static int setup(void **state)
{
    memset(ran, 0, sizeof(ran));
    n_order = 0;
    return 0;
}

static void test_no_readers_frees_at_once(void **state)
{
    sg_qsbr_t q;
    sg_qsbr_init(&q);
    sg_qsbr_defer(&q, mark, (void *)0);
    assert_int_equal(sg_qsbr_pending(&q), 1);
    assert_int_equal(sg_qsbr_reclaim(&q), 0);
    assert_int_equal(ran[0], 1);
    sg_qsbr_destroy(&q);
}

static void test_online_reader_holds_until_quiescent(void **state)
{
    sg_qsbr_t q;
    sg_qsbr_reader_t r;
    sg_qsbr_init(&q);
    sg_qsbr_register(&q, &r); /* starts online */
    sg_qsbr_defer(&q, mark, (void *)0);
    assert_int_equal(sg_qsbr_reclaim(&q), 1);
    assert_int_equal(sg_qsbr_reclaim(&q), 1);
    assert_int_equal(ran[0], 0);
    sg_qsbr_quiescent(&r);
    assert_int_equal(sg_qsbr_reclaim(&q), 0);
    assert_int_equal(ran[0], 1);
    sg_qsbr_destroy(&q);
}

static void test_quiescent_before_defer_does_not_count(void **state)
{
    sg_qsbr_t q;
    sg_qsbr_reader_t r;
    sg_qsbr_init(&q);
    sg_qsbr_register(&q, &r);
    sg_qsbr_quiescent(&r);
    sg_qsbr_defer(&q, mark, (void *)0);
    assert_int_equal(sg_qsbr_reclaim(&q), 1);
    sg_qsbr_defer(&q, mark, (void *)1);
    sg_qsbr_quiescent(&r);
    assert_int_equal(sg_qsbr_reclaim(&q), 0);
    assert_int_equal(ran[0], 1);
    assert_int_equal(ran[1], 1);
    sg_qsbr_destroy(&q);
}

static void test_offline_reader_does_not_hold(void **state)
{
    sg_qsbr_t q;
    sg_qsbr_reader_t r;
    sg_qsbr_init(&q);
    sg_qsbr_register(&q, &r);
    sg_qsbr_offline(&r);
    sg_qsbr_defer(&q, mark, (void *)0);
    assert_int_equal(sg_qsbr_reclaim(&q), 0);
    assert_int_equal(ran[0], 1);

    /* quiescent while offline stays offline */
    sg_qsbr_quiescent(&r);
    sg_qsbr_defer(&q, mark, (void *)1);
    assert_int_equal(sg_qsbr_reclaim(&q), 0);

    /* online again: holds what is deferred from now on */
    sg_qsbr_online(&r);
    sg_qsbr_defer(&q, mark, (void *)2);
    assert_int_equal(sg_qsbr_reclaim(&q), 1);
    sg_qsbr_offline(&r);
    assert_int_equal(sg_qsbr_reclaim(&q), 0);
    assert_int_equal(ran[2], 1);
    sg_qsbr_destroy(&q);
}

static void test_slowest_reader_decides(void **state)
{
    sg_qsbr_t q;
    sg_qsbr_reader_t a, b;
    sg_qsbr_init(&q);
    sg_qsbr_register(&q, &a);
    sg_qsbr_register(&q, &b);
    sg_qsbr_defer(&q, mark, (void *)0);
    sg_qsbr_quiescent(&a);
    sg_qsbr_defer(&q, mark, (void *)1);
    sg_qsbr_quiescent(&a);
    assert_int_equal(sg_qsbr_reclaim(&q), 2); /* b has not moved */
    sg_qsbr_quiescent(&b);
    sg_qsbr_defer(&q, mark, (void *)2);
    assert_int_equal(sg_qsbr_reclaim(&q), 1); /* 0 and 1 done, 2 waits */
    assert_int_equal(n_order, 2);
    assert_int_equal(order[0], 0);
    assert_int_equal(order[1], 1);
    sg_qsbr_unregister(&b); /* a gone reader holds nothing */
    sg_qsbr_quiescent(&a);
    assert_int_equal(sg_qsbr_reclaim(&q), 0);
    assert_int_equal(order[2], 2);
    sg_qsbr_unregister(&a);
    sg_qsbr_destroy(&q);
}

static void test_destroy_runs_pending(void **state)
{
    sg_qsbr_t q;
    sg_qsbr_reader_t r;
    sg_qsbr_init(&q);
    sg_qsbr_register(&q, &r);
    for (int i = 0; i < 5; i++) sg_qsbr_defer(&q, mark, (void *)(intptr_t)i);
    assert_int_equal(sg_qsbr_reclaim(&q), 5);
    sg_qsbr_destroy(&q);
    for (int i = 0; i < 5; i++) {
        assert_int_equal(ran[i], 1);
        assert_int_equal(order[i], i);
    }
}

/* ---- threads ----------------------------------------------------------- */

#define PAYLOAD 32
#define MAGIC_LIVE 0x5eedf00du

typedef struct {
    unsigned magic;
    unsigned seq;
    unsigned payload[PAYLOAD];
} obj_t;

static obj_t *_Atomic shared;
static atomic_int stop_readers;
static atomic_ulong freed;

static obj_t *obj_new(unsigned seq)
{
    obj_t *o = malloc(sizeof(*o));
    o->magic = MAGIC_LIVE;
    o->seq = seq;
    for (int i = 0; i < PAYLOAD; i++) o->payload[i] = seq * 31u + (unsigned)i;
    return o;
}

static void obj_free(void *arg)
{
    obj_t *o = arg;
    o->magic = 0xdeadu; /* caught even without ASan if a reader still looks */
    free(o);
    atomic_fetch_add(&freed, 1);
}

typedef struct {
    sg_qsbr_reader_t qr;
    int mode; /* 0: quiescent points; 1: also offline/online often */
    unsigned long reads;
    int bad;
} reader_t;

static void *reader_main(void *arg)
{
    reader_t *rd = arg;
    unsigned last_seq = 0;
    unsigned long i = 0;
    while (!atomic_load_explicit(&stop_readers, memory_order_relaxed)) {
        obj_t *o = atomic_load_explicit(&shared, memory_order_acquire);
        /* Hold the pointer for a while, re-reading it. */
        for (int k = 0; k < 4; k++) {
            if (o->magic != MAGIC_LIVE) rd->bad++;
            for (int j = 0; j < PAYLOAD; j++)
                if (o->payload[j] != o->seq * 31u + (unsigned)j) rd->bad++;
        }
        if (o->seq < last_seq) rd->bad++; /* went back in time */
        last_seq = o->seq;
        rd->reads++;
        if (++i % 16 == 0) sg_qsbr_quiescent(&rd->qr);
        if (rd->mode == 1 && i % 64 == 0) {
            sg_qsbr_offline(&rd->qr);
            sched_yield();
            sg_qsbr_online(&rd->qr);
        }
    }
    sg_qsbr_offline(&rd->qr);
    return NULL;
}

static void test_threads_replace_and_free(void **state)
{
    enum { READERS = 4, WRITES = 20000 };
    sg_qsbr_t q;
    sg_qsbr_init(&q);
    atomic_store(&shared, obj_new(1));
    atomic_store(&stop_readers, 0);
    atomic_store(&freed, 0);
    reader_t rd[READERS];
    pthread_t th[READERS];
    memset(rd, 0, sizeof(rd));
    for (int i = 0; i < READERS; i++) {
        rd[i].mode = i % 2;
        sg_qsbr_register(&q, &rd[i].qr);
    }
    for (int i = 0; i < READERS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, reader_main, &rd[i]), 0);

    size_t max_pending = 0;
    for (unsigned s = 2; s < WRITES + 2; s++) {
        obj_t *old = atomic_load_explicit(&shared, memory_order_relaxed);
        atomic_store_explicit(&shared, obj_new(s), memory_order_release);
        sg_qsbr_defer(&q, obj_free, old);
        size_t p = sg_qsbr_reclaim(&q);
        if (p > max_pending) max_pending = p;
        if (p > 1000) sched_yield(); /* let slow readers catch up */
    }
    unsigned long freed_during = atomic_load(&freed);
    atomic_store(&stop_readers, 1);
    unsigned long reads = 0;
    for (int i = 0; i < READERS; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(rd[i].bad, 0);
        reads += rd[i].reads;
    }
    /* Every reader is offline now: everything can go. */
    assert_int_equal(sg_qsbr_reclaim(&q), 0);
    assert_int_equal(atomic_load(&freed), WRITES);
    for (int i = 0; i < READERS; i++) sg_qsbr_unregister(&rd[i].qr);
    sg_qsbr_destroy(&q);
    free(atomic_load(&shared));
    print_message("qsbr: %d writes, %lu reads, %lu freed while readers ran, max pending %zu\n",
                  WRITES, reads, freed_during, max_pending);
    assert_true(freed_during > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_no_readers_frees_at_once, setup),
        cmocka_unit_test_setup(test_online_reader_holds_until_quiescent, setup),
        cmocka_unit_test_setup(test_quiescent_before_defer_does_not_count, setup),
        cmocka_unit_test_setup(test_offline_reader_does_not_hold, setup),
        cmocka_unit_test_setup(test_slowest_reader_decides, setup),
        cmocka_unit_test_setup(test_destroy_runs_pending, setup),
        cmocka_unit_test(test_threads_replace_and_free),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
