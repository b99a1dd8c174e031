#include "route/mask.h"

#include <stdio.h>

#define SG_MASK_MAX 255

static const sg_slice_t port_var = SG_SLICE_LIT("${PORT}");

static int at_port_var(sg_slice_t s, size_t i)
{
    return s.len - i >= port_var.len && memcmp(s.base + i, port_var.base, port_var.len) == 0;
}

void sg_mask_expand(sg_strbuf_t *out, sg_slice_t tmpl, uint16_t port)
{
    if (tmpl.len == 0) return;
    const char *p = tmpl.base, *end = tmpl.base + tmpl.len;
    for (const char *d; (d = memchr(p, '$', (size_t)(end - p))) != NULL;) {
        if (!at_port_var(tmpl, (size_t)(d - tmpl.base))) {
            sg_strbuf_append(out, p, (size_t)(d + 1 - p));
            p = d + 1;
            continue;
        }
        sg_strbuf_append(out, p, (size_t)(d - p));
        sg_strbuf_append_uint(out, port);
        p = d + port_var.len;
    }
    sg_strbuf_append(out, p, (size_t)(end - p));
}

static int is_mask_char(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-' ||
           c == '.' || c == ':' || c == '[' || c == ']' || c == '_';
}

/* The expanded mask becomes a Host header value, so anything beyond host
 * characters (CR, LF, NUL, spaces) would be header injection. */
const char *sg_mask_validate(sg_slice_t tmpl)
{
    if (tmpl.len == 0 || !tmpl.base) return "mask is empty";
    if (tmpl.len > SG_MASK_MAX) return "mask is longer than 255 bytes";
    for (size_t i = 0; i < tmpl.len;) {
        unsigned char c = (unsigned char)tmpl.base[i];
        if (c == '$') {
            if (!at_port_var(tmpl, i)) return "mask may use '$' only in the literal ${PORT}";
            i += port_var.len;
            continue;
        }
        if (c < 0x20 || c == 0x7f) return "mask contains a control character";
        if (c >= 0x80) return "mask contains a non-ASCII byte";
        if (!is_mask_char(c)) return "mask may only contain host[:port] characters and ${PORT}";
        i++;
    }
    return NULL;
}
