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

/* ASCII case-insensitive equality (header names, host names). Inline: the
 * header loops compare every name against a handful of constants, and most
 * of those compares end at the length check. */
static inline int sg_slice_eq_nocase(sg_slice_t a, sg_slice_t b)
{
    if (a.len != b.len) return 0;
    for (size_t i = 0; i < a.len; i++) {
        unsigned char x = (unsigned char)a.base[i], y = (unsigned char)b.base[i];
        if (x == y) continue;
        if ((x | 0x20) != (y | 0x20) || (unsigned char)((x | 0x20) - 'a') > 'z' - 'a') return 0;
    }
    return 1;
}

/* Strips leading and trailing spaces and horizontal tabs (OWS). */
sg_slice_t sg_slice_trim(sg_slice_t s);

#endif
