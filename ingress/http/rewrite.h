/* Head rewrite between client and sandbox. Writes a complete head (start
 * line, header lines, blank line) into `out`; body bytes are never touched. */
#ifndef SG_HTTP_REWRITE_H
#define SG_HTTP_REWRITE_H

#include "core/strbuf.h"
#include "http/head.h"

typedef struct {
    sg_slice_t host;          /* new Host value (mask applied); base NULL: keep client's */
    sg_slice_t original_host; /* client's Host; sent as X-Forwarded-Host when host is set */
    sg_slice_t client_addr;   /* textual client IP appended to X-Forwarded-For */
    sg_slice_t proto;         /* "http" or "https" for X-Forwarded-Proto */
    int upgrade;              /* 1: keep Upgrade and send "Connection: upgrade" */
    sg_slice_t strip_header;  /* one more header name to drop (access token); may be empty */
} sg_rewrite_request_params_t;

/* Request head for the sandbox:
 * - request line: method, raw target and version exactly as received;
 * - Host replaced in place by params->host when set;
 * - hop-by-hop removed: Connection and every name it lists, Keep-Alive,
 *   Proxy-Connection, TE, Upgrade (kept when params->upgrade), and any client
 *   X-Forwarded-Host / X-Forwarded-Proto (ours replace them);
 * - X-Forwarded-For: the first one keeps its position with ", <client>"
 *   appended and later ones folded into it; absent: added at the end;
 * - X-Forwarded-Host (only when Host was replaced) and X-Forwarded-Proto added;
 * - every other header byte-for-byte in its original order and case.
 * Details: Connection tokens never remove Host, Content-Length or
 * Transfer-Encoding (the body streams unchanged, so its framing must too);
 * when Host is replaced, later duplicate Host lines are dropped and a missing
 * Host (HTTP/1.0) is added at the end; every copy of strip_header goes; an
 * X-Forwarded-For with nothing to carry is not sent. */
void sg_http_rewrite_request(const sg_http_request_t *req, const sg_rewrite_request_params_t *p,
                             sg_strbuf_t *out);

/* Response head for the client: the status line as received; hop-by-hop
 * headers removed as above (Upgrade kept on 101); then
 * "Connection: upgrade" on 101, "Connection: close" when !client_keep_alive,
 * "Connection: keep-alive" when the client speaks HTTP/1.0 and keeps alive. */
void sg_http_rewrite_response(const sg_http_response_t *res, int client_keep_alive,
                              int client_minor_version, sg_strbuf_t *out);

#endif
