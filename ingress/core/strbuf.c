#include "core/strbuf.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

void sg_strbuf__grow(sg_strbuf_t *b, size_t extra)
{
    if (extra <= b->cap - b->len) return;
    /* Sizes past SIZE_MAX / 2 could not double: treat them as exhaustion. */
    if (b->len > SIZE_MAX / 2 || extra > SIZE_MAX / 2 - b->len) abort();
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra) cap *= 2;
    char *p = realloc(b->base, cap);
    if (!p) abort();
    b->base = p;
    b->cap = cap;
}

void sg_strbuf_append_cstr(sg_strbuf_t *b, const char *s)
{
    sg_strbuf_append(b, s, strlen(s));
}

void sg_strbuf_append_uint(sg_strbuf_t *b, unsigned long long v)
{
    char digits[20]; /* ULLONG_MAX (64 bits) has 20 */
    size_t n = sizeof(digits);
    do {
        digits[--n] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    sg_strbuf_append(b, digits + n, sizeof(digits) - n);
}

void sg_strbuf_appendf(sg_strbuf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n <= 0) return;
    sg_strbuf_reserve(b, (size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(b->base + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void sg_strbuf_reset(sg_strbuf_t *b)
{
    b->len = 0;
}

void sg_strbuf_free(sg_strbuf_t *b)
{
    free(b->base);
    b->base = NULL;
    b->len = b->cap = 0;
}
