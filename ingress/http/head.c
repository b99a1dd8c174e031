#include "http/head.h"

static const sg_slice_t header_names[] = {
    [SG_HDR_HOST] = SG_SLICE_LIT("Host"),
    [SG_HDR_CONNECTION] = SG_SLICE_LIT("Connection"),
    [SG_HDR_KEEP_ALIVE] = SG_SLICE_LIT("Keep-Alive"),
    [SG_HDR_PROXY_CONNECTION] = SG_SLICE_LIT("Proxy-Connection"),
    [SG_HDR_TE] = SG_SLICE_LIT("TE"),
    [SG_HDR_UPGRADE] = SG_SLICE_LIT("Upgrade"),
    [SG_HDR_CONTENT_LENGTH] = SG_SLICE_LIT("Content-Length"),
    [SG_HDR_TRANSFER_ENCODING] = SG_SLICE_LIT("Transfer-Encoding"),
    [SG_HDR_X_FORWARDED_FOR] = SG_SLICE_LIT("X-Forwarded-For"),
    [SG_HDR_X_FORWARDED_HOST] = SG_SLICE_LIT("X-Forwarded-Host"),
    [SG_HDR_X_FORWARDED_PROTO] = SG_SLICE_LIT("X-Forwarded-Proto"),
};

sg_header_id_t sg_http_header_id(sg_slice_t name)
{
    /* The length, then the first letter where two names share a length,
     * leave one candidate to compare. */
    if (!name.len) return SG_HDR_OTHER;
    int c0 = name.base[0] | 0x20;
    sg_header_id_t id;
    switch (name.len) {
    case 2:
        id = SG_HDR_TE;
        break;
    case 4:
        id = SG_HDR_HOST;
        break;
    case 7:
        id = SG_HDR_UPGRADE;
        break;
    case 10:
        id = c0 == 'c' ? SG_HDR_CONNECTION : SG_HDR_KEEP_ALIVE;
        break;
    case 14:
        id = SG_HDR_CONTENT_LENGTH;
        break;
    case 15:
        id = SG_HDR_X_FORWARDED_FOR;
        break;
    case 16:
        id = c0 == 'p' ? SG_HDR_PROXY_CONNECTION : SG_HDR_X_FORWARDED_HOST;
        break;
    case 17:
        id = c0 == 't' ? SG_HDR_TRANSFER_ENCODING : SG_HDR_X_FORWARDED_PROTO;
        break;
    default:
        return SG_HDR_OTHER;
    }
    return sg_slice_eq_nocase(name, header_names[id]) ? id : SG_HDR_OTHER;
}

const sg_header_t *sg_http_find_header(const sg_header_t *headers, size_t n, sg_slice_t name)
{
    for (size_t i = 0; i < n; i++)
        if (sg_slice_eq_nocase(headers[i].name, name)) return &headers[i];
    return NULL;
}

sg_slice_t sg_http_value_next_element(sg_slice_t value, size_t *pos)
{
    size_t i = *pos;
    while (i < value.len) {
        size_t start = i;
        while (i < value.len && value.base[i] != ',') i++;
        sg_slice_t elem = sg_slice_trim(sg_slice(value.base + start, i - start));
        if (i < value.len) i++; /* past the comma */
        if (elem.len) {
            *pos = i;
            return elem;
        }
    }
    *pos = i;
    return sg_slice(NULL, 0);
}

int sg_http_value_has_token(sg_slice_t value, sg_slice_t token)
{
    /* An empty token would match the empty elements "a,,b" allows. */
    if (token.len == 0 || value.len == 0) return 0;
    size_t pos = 0;
    for (sg_slice_t e; (e = sg_http_value_next_element(value, &pos)).base;)
        if (sg_slice_eq_nocase(e, token)) return 1;
    return 0;
}
