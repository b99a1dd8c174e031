/* llhttp glue: frames HTTP/1 messages and records where the head's parts lie
 * in the caller's head buffer. Body bytes are never copied or collected:
 * llhttp only tells where each message ends.
 *
 * Span recording: while the head is incomplete the caller appends received
 * bytes to its head buffer and calls sg_h1_execute on the appended region
 * with `base` = the buffer's start; spans are stored as offsets from base so
 * the buffer may move (realloc) between calls. After headers_done the same
 * parser frames the body from any buffer. */
#ifndef SG_HTTP_H1_H
#define SG_HTTP_H1_H

#include "http/head.h"
#include <llhttp.h>
#include <stdint.h>

typedef struct {
    uint32_t name_off, name_len, value_off, value_len;
} sg_h1_span_t;

typedef struct {
    llhttp_t llhttp;
    const char *base; /* head buffer start for the current execute */
    /* obs-fold detection: where the current and previous execute's data
     * lie and where the last value piece ended (see pos_of in h1.c) */
    uintptr_t exec_start, exec_end, prev_exec_end, last_value_end;
    sg_h1_span_t *spans;
    size_t n_spans, cap_spans, max_headers;
    uint32_t first_off, first_len; /* method / reason-phrase span */
    uint32_t target_off, target_len;
    /* Flags (0 or 1) as whole bytes rather than bit-fields: the header
     * callbacks set and clear them once per header line each. */
    uint8_t in_field, in_value, headers_done, message_done, too_many;
    uint8_t named;          /* the current header line has a name */
    uint8_t skip_body;      /* response parser: caller says no body (HEAD) */
    uint8_t expect_upgrade; /* response parser: request asked to upgrade */
    sg_header_t *headers;   /* materialised view, reused */
    size_t cap_headers;
} sg_h1_parser_t;

/* type: HTTP_REQUEST or HTTP_RESPONSE. max_headers bounds the header count. */
void sg_h1_init(sg_h1_parser_t *p, llhttp_type_t type, size_t max_headers);
/* Ready for the next message (keeps allocated arrays). */
void sg_h1_reset(sg_h1_parser_t *p, llhttp_type_t type);
/* Frees the arrays; the parser may be used again (they grow afresh). */
void sg_h1_free(sg_h1_parser_t *p);

/* Parses len bytes at data. Stops after a complete message (message_done
 * set, *consumed = bytes up to its end). Returns HPE_OK (all consumed or
 * stopped at message end) or the llhttp error. */
llhttp_errno_t sg_h1_execute(sg_h1_parser_t *p, const char *base, const char *data, size_t len,
                             size_t *consumed);

/* Signals EOF: completes a close-delimited message. */
llhttp_errno_t sg_h1_finish(sg_h1_parser_t *p);

/* Bytes of empty lines (CRLF) before the start line, which llhttp skips. */
size_t sg_h1_skip_blank_lines(const char *buf, size_t len);

/* Offset just past the blank line ending the head in buf (0 if absent);
 * valid once headers_done. Strict parsing guarantees CRLF line ends. */
size_t sg_h1_head_length(const char *buf, size_t len);

/* Rejects shapes llhttp tolerates but a proxy must not forward: NUL bytes,
 * bare CR or LF, obs-fold continuation lines. Returns NULL or a reason. */
const char *sg_h1_check_head_bytes(const char *head, size_t len);

/* Both of the above for a head llhttp has reported complete, in one pass
 * over its bytes: returns sg_h1_head_length(buf, len) and, when that is not
 * 0, sets *why to sg_h1_check_head_bytes over the head without the blank
 * lines before it (else to NULL). Same results as the two calls; a head
 * with anything unusual in it is handed to them. */
size_t sg_h1_head_scan(const char *buf, size_t len, const char **why);

/* Builds the request/response view over base (the head buffer). */
void sg_h1_request_view(sg_h1_parser_t *p, const char *base, sg_http_request_t *out);
void sg_h1_response_view(sg_h1_parser_t *p, const char *base, size_t head_len,
                         sg_http_response_t *out);

#endif
