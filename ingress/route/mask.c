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
    char digits[8];
    int n = snprintf(digits, sizeof(digits), "%u", (unsigned)port);
    size_t run = 0; /* start of the pending literal run */
    for (size_t i = 0; i < tmpl.len;) {
        if (tmpl.base[i] == '$' && at_port_var(tmpl, i)) {
            sg_strbuf_append(out, tmpl.base + run, i - run);
            sg_strbuf_append(out, digits, (size_t)n);
            i += port_var.len;
            run = i;
        } else {
            i++;
        }
    }
    sg_strbuf_append(out, tmpl.base + run, tmpl.len - run);
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
