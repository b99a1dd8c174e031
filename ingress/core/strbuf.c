#include "core/strbuf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

void sg_strbuf_reserve(sg_strbuf_t *b, size_t extra)
{
    if (b->len + extra <= b->cap) return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra) cap *= 2;
    char *p = realloc(b->base, cap);
    if (!p) abort();
    b->base = p;
    b->cap = cap;
}

void sg_strbuf_append(sg_strbuf_t *b, const void *data, size_t len)
{
    if (!len) return;
    sg_strbuf_reserve(b, len);
    memcpy(b->base + b->len, data, len);
    b->len += len;
}

void sg_strbuf_append_slice(sg_strbuf_t *b, sg_slice_t s)
{
    sg_strbuf_append(b, s.base, s.len);
}

void sg_strbuf_append_cstr(sg_strbuf_t *b, const char *s)
{
    sg_strbuf_append(b, s, strlen(s));
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
