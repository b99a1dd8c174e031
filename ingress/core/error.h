/* One table of sandgate's request-level errors: each has a stable name (for
 * logs and metrics), the HTTP status the client gets and the message shown in
 * the error page. Functions elsewhere return 0 or a negative libuv error code;
 * these codes describe why a request failed. */
#ifndef SG_CORE_ERROR_H
#define SG_CORE_ERROR_H

#define SG_ERRORS(X)                                                                               \
    X(NONE, "none", 200, "ok")                                                                     \
    X(BAD_REQUEST, "bad_request", 400, "Malformed HTTP request")                                   \
    X(HOST_MISSING, "host_missing", 400, "Missing Host header")                                    \
    X(HOST_MALFORMED, "host_malformed", 400, "Malformed sandbox host")                             \
    X(HOST_CONFLICT, "host_conflict", 400, "Host header does not match the request target")        \
    X(HOST_UNKNOWN_DOMAIN, "host_unknown_domain", 421, "Host is not under a domain served here")   \
    X(MISDIRECTED, "misdirected", 421, "Host does not match this TLS connection")                  \
    X(REQUEST_TIMEOUT, "request_timeout", 408, "Request head not received in time")                \
    X(HEADERS_TOO_LARGE, "headers_too_large", 431, "Request header fields too large")              \
    X(URI_TOO_LONG, "uri_too_long", 414, "Request target too long")                                \
    X(TOKEN_MISSING, "token_missing", 403, "Missing traffic access token")                         \
    X(TOKEN_INVALID, "token_invalid", 403, "Invalid traffic access token")                         \
    X(TOO_MANY_CONNECTIONS, "too_many_connections", 429, "Too many connections to this sandbox")   \
    X(SANDBOX_NOT_FOUND, "sandbox_not_found", 502, "The sandbox was not found")                    \
    X(PORT_NOT_OPEN, "port_not_open", 502, "The sandbox is running but port is not open")          \
    X(UPSTREAM_CONNECT_TIMEOUT, "upstream_connect_timeout", 504,                                   \
      "Timed out connecting to the sandbox")                                                       \
    X(UPSTREAM_HEAD_TIMEOUT, "upstream_head_timeout", 504, "The sandbox did not answer in time")   \
    X(UPSTREAM_BAD_RESPONSE, "upstream_bad_response", 502,                                         \
      "The sandbox sent an invalid HTTP response")                                                 \
    X(UPSTREAM_CLOSED, "upstream_closed", 502,                                                     \
      "The sandbox closed the connection before answering")                                        \
    X(UPSTREAM_TRUNCATED, "upstream_truncated", 502, "The sandbox response ended early")           \
    X(CLIENT_CLOSED, "client_closed", 499, "The client closed the connection")                     \
    X(LOOKUP_FAILED, "lookup_failed", 503, "sandbox lookup failed")                                \
    X(INTERNAL, "internal", 500, "Internal proxy error")

typedef enum {
#define SG_ERR_ENUM(name, str, status, msg) SG_ERR_##name,
    SG_ERRORS(SG_ERR_ENUM)
#undef SG_ERR_ENUM
        SG_ERR__COUNT
} sg_err_t;

/* Stable lower_snake_case name, e.g. "sandbox_not_found". */
const char *sg_err_name(sg_err_t e);
/* HTTP status sent for the error. */
int sg_err_status(sg_err_t e);
/* Human message placed in error pages. */
const char *sg_err_message(sg_err_t e);

#endif
