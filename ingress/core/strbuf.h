/* A growable byte buffer for building heads and error pages. */
#ifndef SG_CORE_STRBUF_H
#define SG_CORE_STRBUF_H

#include "core/slice.h"
#include <stddef.h>
#include <string.h>

/* Owns `base` (malloc'd). `sg_strbuf_free` releases it; a zeroed struct is an
 * empty buffer. Appends never fail silently: on allocation failure they abort
 * (memory exhaustion is not a recoverable per-request condition here).
 * Invariant: len <= cap. */
typedef struct {
    char *base;
    size_t len;
    size_t cap;
} sg_strbuf_t;

/* Grows base so that `extra` more bytes fit (doubling from 256). Internal:
 * callers use sg_strbuf_reserve, whose inline test keeps the common case
 * (room left) free of a call. */
void sg_strbuf__grow(sg_strbuf_t *b, size_t extra);

/* Makes room for `extra` more bytes: afterwards base[len, len + extra) is
 * writable (add to len what was written). */
static inline void sg_strbuf_reserve(sg_strbuf_t *b, size_t extra)
{
    if (extra > b->cap - b->len) sg_strbuf__grow(b, extra);
}

/* Inline: heads are built from many short pieces (a name, ": ", a value,
 * CRLF), where a call per piece costs as much as the copy. `data` may be
 * NULL when len is 0. */
static inline void sg_strbuf_append(sg_strbuf_t *b, const void *data, size_t len)
{
    if (!len) return;
    sg_strbuf_reserve(b, len);
    memcpy(b->base + b->len, data, len);
    b->len += len;
}

static inline void sg_strbuf_append_slice(sg_strbuf_t *b, sg_slice_t s)
{
    sg_strbuf_append(b, s.base, s.len);
}

void sg_strbuf_append_cstr(sg_strbuf_t *b, const char *s);
/* Decimal digits of v, as "%llu" would print them, without printf's cost
 * (ports and lengths on the per-request path). */
void sg_strbuf_append_uint(sg_strbuf_t *b, unsigned long long v);
void sg_strbuf_appendf(sg_strbuf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sg_strbuf_reset(sg_strbuf_t *b);
void sg_strbuf_free(sg_strbuf_t *b);

#endif
