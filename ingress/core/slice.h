/* Borrowed byte ranges, the currency of every parser and rewrite in sandgate. */
#ifndef SG_CORE_SLICE_H
#define SG_CORE_SLICE_H

#include <stddef.h>
#include <string.h>

/* A borrowed view of bytes; never owns its memory and is not NUL-terminated. */
typedef struct {
    const char *base;
    size_t len;
} sg_slice_t;

#define SG_SLICE_LIT(s) ((sg_slice_t){(s), sizeof(s) - 1})

static inline sg_slice_t sg_slice(const char *base, size_t len)
{
    return (sg_slice_t){base, len};
}

static inline sg_slice_t sg_slice_cstr(const char *s)
{
    return (sg_slice_t){s, s ? strlen(s) : 0};
}

/* ASCII case-insensitive equality (header names, host names). */
int sg_slice_eq_nocase(sg_slice_t a, sg_slice_t b);

/* Strips leading and trailing spaces and horizontal tabs (OWS). */
sg_slice_t sg_slice_trim(sg_slice_t s);

#endif
