/* Parsed HTTP/1 message heads. All slices borrow from the connection's head
 * buffer and stay valid until that connection starts its next message. */
#ifndef SG_HTTP_HEAD_H
#define SG_HTTP_HEAD_H

#include "core/slice.h"

typedef struct {
    sg_slice_t name;  /* as received (case preserved) */
    sg_slice_t value; /* OWS trimmed */
} sg_header_t;

typedef struct {
    sg_slice_t method; /* e.g. "GET" */
    sg_slice_t target; /* raw request-target */
    int minor_version; /* HTTP/1.<minor> */
    sg_header_t *headers;
    size_t n_headers;
} sg_http_request_t;

typedef struct {
    int status;
    int minor_version;
    sg_slice_t status_line; /* whole first line without CRLF, e.g. "HTTP/1.1 200 OK" */
    sg_header_t *headers;
    size_t n_headers;
} sg_http_response_t;

/* The header names sandgate acts on; every other name is SG_HDR_OTHER. */
typedef enum {
    SG_HDR_OTHER = 0,
    SG_HDR_HOST,
    SG_HDR_CONNECTION,
    SG_HDR_KEEP_ALIVE,
    SG_HDR_PROXY_CONNECTION,
    SG_HDR_TE,
    SG_HDR_UPGRADE,
    SG_HDR_CONTENT_LENGTH,
    SG_HDR_TRANSFER_ENCODING,
    SG_HDR_X_FORWARDED_FOR,
    SG_HDR_X_FORWARDED_HOST,
    SG_HDR_X_FORWARDED_PROTO
} sg_header_id_t;

/* Which of the names above `name` is (ASCII case-insensitive, exact
 * length): at most one full comparison, so loops over a head classify each
 * name once instead of comparing it with every constant. */
sg_header_id_t sg_http_header_id(sg_slice_t name);

/* Finds the first header named `name` (case-insensitive); NULL if absent. */
const sg_header_t *sg_http_find_header(const sg_header_t *headers, size_t n, sg_slice_t name);

/* True when a comma-separated header value (e.g. Connection) lists `token`
 * (case-insensitive, OWS around elements ignored). */
int sg_http_value_has_token(sg_slice_t value, sg_slice_t token);

/* Iterates over the elements of a comma-separated header value: returns the
 * next element at or after *pos with OWS trimmed, skipping empty ones, and
 * advances *pos past it; returns an empty slice (base NULL) when none is
 * left. Start with *pos = 0. The elements are exactly those
 * sg_http_value_has_token matches against. */
sg_slice_t sg_http_value_next_element(sg_slice_t value, size_t *pos);

#endif
