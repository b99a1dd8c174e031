/* The head phase of an HTTP/1 exchange, without sockets: the caller appends
 * each read to its head buffer and calls the step for the message's
 * direction, which parses what is new (http/h1.h), applies the checks a
 * proxy needs beyond llhttp's framing and decides: wait for more bytes,
 * refuse, or hand over a complete head. proxy/conn.c and proxy/relay.c run
 * these steps; tests/fuzz runs the same functions on hostile bytes.
 *
 * Buffer contract (both directions): buf/len is the whole head buffer from
 * its start (it may have moved since the last call); *parsed is how many of
 * its bytes the parser has seen (0 for a new message) and is advanced here.
 * Every slice in a result points into buf and lives as long as its bytes. */
#ifndef SG_HTTP_H1_HEAD_H
#define SG_HTTP_H1_HEAD_H

#include "core/error.h"
#include "http/h1.h"

/* A sandbox's response head (interim ones each) may not exceed this. */
#define SG_H1_MAX_RESPONSE_HEAD (128 * 1024)
/* Interim (1xx) responses passed on per request; more is an attack on the
 * client. */
#define SG_H1_MAX_INTERIM 8

typedef enum {
    SG_H1_HEAD_MORE,    /* incomplete and acceptable so far: append the next read, call again */
    SG_H1_HEAD_ERROR,   /* refuse the message; the result says how */
    SG_H1_HEAD_INTERIM, /* responses only: a complete 1xx head (see below) */
    SG_H1_HEAD_DONE     /* a complete, acceptable head */
} sg_h1_head_step_t;

typedef struct {
    sg_err_t err;               /* ERROR: what to answer */
    const char *detail;         /* ERROR: static reason for the error page, or NULL */
    llhttp_errno_t parse_error; /* every step: HPE_OK, or the error llhttp (or the glue) gave */
    size_t head_len;            /* DONE: bytes of the head, blank lines before it included */
    /* DONE, and ERROR when has_view: the view over buf (headers owned by
     * the parser, valid until its next view or sg_h1_free). */
    sg_http_request_t request;
    unsigned has_view : 1;
    unsigned keep_alive : 1;  /* DONE: llhttp_should_keep_alive */
    unsigned head_method : 1; /* DONE: the method is HEAD */
    unsigned upgrade : 1;     /* DONE: HTTP/1.1+ with Upgrade and Connection listing upgrade */
} sg_h1_request_head_t;

/* One step of a request head. p is a request parser (sg_h1_init with the
 * header-count bound); max_head_bytes bounds the head (blank lines before
 * the request line included). Errors, in the order they are found:
 * a parse error (400 with llhttp's error name, 431 when p's header bound is
 * exceeded), a head or request line over the bound (431 / 414), a request
 * line without " HTTP/" (HTTP/0.9, 400), bytes sg_h1_check_head_bytes
 * refuses (400), and a parse error in the body bytes that came with a good
 * head (400, has_view set). On DONE *parsed may be past head_len: body
 * bytes (and, once the message ended, bytes of the next one) follow. */
sg_h1_head_step_t sg_h1_request_head_input(sg_h1_parser_t *p, const char *buf, size_t len,
                                           size_t *parsed, size_t max_head_bytes,
                                           sg_h1_request_head_t *out);

/* The checks a proxy must make on a complete request head beyond framing
 * (p parsed r): one Host; Transfer-Encoding only as a single "chunked",
 * that llhttp frames as chunked, and not in HTTP/1.0; HTTP/1.x; no CONNECT;
 * an origin-form ("/..."), "*" or absolute-form (http[s]://authority, no
 * userinfo) target; an absolute-form authority equal to Host when both are
 * present; Host present in HTTP/1.1. Sets *authority to the routing
 * authority (absolute-form, else Host, else empty) unless the target or
 * Host themselves are refused. Returns SG_ERR_NONE or the error to answer,
 * with *detail set for the 400s that have one. Pure: reads p and r only. */
sg_err_t sg_http_validate_request(const sg_h1_parser_t *p, const sg_http_request_t *r,
                                  sg_slice_t *authority, const char **detail);

typedef struct {
    const char *detail;         /* ERROR (always a 502 upstream_bad_response): the reason */
    llhttp_errno_t parse_error; /* ERROR: llhttp's error (detail is its name), else HPE_OK */
    /* INTERIM / DONE: the head is buf[start, head_len); the blank lines
     * before its status line (start bytes) are not part of it. */
    size_t start, head_len;
    sg_http_response_t response; /* DONE: the view over buf (as for requests) */
    unsigned body_to_eof : 1;    /* DONE: not 101, and the body ends with the connection */
} sg_h1_response_head_t;

/* One step of a response head. p is a response parser with skip_body (the
 * request was HEAD) and expect_upgrade (it asked to upgrade) set;
 * *interim_count counts the interim heads of this request (0 at first).
 * Errors: a parse error, a head over SG_H1_MAX_RESPONSE_HEAD, bytes
 * sg_h1_check_head_bytes refuses, a version other than 1.x or a status
 * outside 100..999, more than SG_H1_MAX_INTERIM interim heads, and a final
 * head with a Transfer-Encoding llhttp did not frame as chunked, unless
 * skip_body (it would be framed one way here and another way by the
 * client).
 *
 * INTERIM: buf[start, head_len) is one complete 1xx head to pass on (to
 * HTTP/1.1 clients). The caller then drops the first *parsed bytes of its
 * buffer (*parsed == head_len: a 1xx message ends with its head), sets
 * *parsed to 0, calls sg_h1_response_next(p) and, when bytes remain, calls
 * this again for the response that follows.
 * DONE: the final head (status >= 200 or 101); body bytes that came with it
 * are buf[head_len, *parsed) (after a 101: none, the rest is the tunnel). */
sg_h1_head_step_t sg_h1_response_head_input(sg_h1_parser_t *p, const char *buf, size_t len,
                                            size_t *parsed, unsigned *interim_count,
                                            sg_h1_response_head_t *out);

/* Re-arms a response parser for the response that follows an interim one,
 * keeping skip_body and expect_upgrade. */
void sg_h1_response_next(sg_h1_parser_t *p);

#endif
