#include "http/head.h"

const sg_header_t *sg_http_find_header(const sg_header_t *headers, size_t n, sg_slice_t name)
{
    for (size_t i = 0; i < n; i++)
        if (sg_slice_eq_nocase(headers[i].name, name)) return &headers[i];
    return NULL;
}

int sg_http_value_has_token(sg_slice_t value, sg_slice_t token)
{
    /* An empty token would match the empty elements "a,,b" allows. */
    if (token.len == 0 || value.len == 0) return 0;
    size_t start = 0;
    for (size_t i = 0; i <= value.len; i++) {
        if (i < value.len && value.base[i] != ',') continue;
        sg_slice_t elem = sg_slice_trim(sg_slice(value.base + start, i - start));
        if (sg_slice_eq_nocase(elem, token)) return 1;
        start = i + 1;
    }
    return 0;
}
