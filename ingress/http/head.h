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

/* Finds the first header named `name` (case-insensitive); NULL if absent. */
const sg_header_t *sg_http_find_header(const sg_header_t *headers, size_t n, sg_slice_t name);

/* True when a comma-separated header value (e.g. Connection) lists `token`
 * (case-insensitive, OWS around elements ignored). */
int sg_http_value_has_token(sg_slice_t value, sg_slice_t token);

#endif
