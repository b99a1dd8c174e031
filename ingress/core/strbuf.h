/* A growable byte buffer for building heads and error pages. */
#ifndef SG_CORE_STRBUF_H
#define SG_CORE_STRBUF_H

#include "core/slice.h"
#include <stddef.h>

/* Owns `base` (malloc'd). `sg_strbuf_free` releases it; a zeroed struct is an
 * empty buffer. Appends never fail silently: on allocation failure they abort
 * (memory exhaustion is not a recoverable per-request condition here). */
typedef struct {
    char *base;
    size_t len;
    size_t cap;
} sg_strbuf_t;

void sg_strbuf_reserve(sg_strbuf_t *b, size_t extra);
void sg_strbuf_append(sg_strbuf_t *b, const void *data, size_t len);
void sg_strbuf_append_slice(sg_strbuf_t *b, sg_slice_t s);
void sg_strbuf_append_cstr(sg_strbuf_t *b, const char *s);
void sg_strbuf_appendf(sg_strbuf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sg_strbuf_reset(sg_strbuf_t *b);
void sg_strbuf_free(sg_strbuf_t *b);

#endif
