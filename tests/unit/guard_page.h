/* Test inputs placed against a guard page: a parser that reads one byte
 * past its input crashes instead of passing by luck. Include after
 * <cmocka.h>. */
#ifndef SG_TESTS_GUARD_PAGE_H
#define SG_TESTS_GUARD_PAGE_H

#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

typedef struct {
    char *map;
    size_t map_len;
    char *data;
} guarded_t;

/* Copies len bytes so that the last one sits right before a PROT_NONE page. */
static inline guarded_t guard_copy(const char *s, size_t len)
{
    size_t ps = (size_t)sysconf(_SC_PAGESIZE);
    size_t pages = (len + ps - 1) / ps + 1;
    guarded_t g;
    g.map_len = pages * ps;
    g.map = mmap(NULL, g.map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(g.map != MAP_FAILED);
    assert_int_equal(mprotect(g.map + (pages - 1) * ps, ps, PROT_NONE), 0);
    g.data = g.map + (pages - 1) * ps - len;
    if (len) memcpy(g.data, s, len);
    return g;
}

static inline void guard_free(guarded_t *g)
{
    munmap(g->map, g->map_len);
}

#endif
