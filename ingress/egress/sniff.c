#include "egress/sniff.h"

#include <arpa/inet.h>
#include <stdint.h>
#include <string.h>

/* Every parse step answers one of these; MORE and INVALID travel up
 * unchanged, so the public functions only map them. */
typedef enum { STEP_OK, STEP_MORE, STEP_INVALID } step_t;

#define TRY(expr)                                                                                  \
    do {                                                                                           \
        step_t try_step_ = (expr);                                                                 \
        if (try_step_ != STEP_OK) return try_step_;                                                \
    } while (0)

/* ==== TLS ================================================================== */

#define TLS_RECORD_HANDSHAKE 22
#define TLS_RECORD_HEADER 5
#define TLS_RECORD_MAX (16384 + 256)
#define TLS_HANDSHAKE_CLIENT_HELLO 1
#define TLS_EXT_SERVER_NAME 0
#define TLS_SNI_HOST_NAME 0

/* Reads the handshake stream carried by consecutive handshake records as if
 * it were one buffer. `pos` only moves forward, so a whole parse is O(len). */
typedef struct {
    const unsigned char *buf;
    size_t len;      /* bytes we may look at: min(len, max) */
    size_t pos;      /* next byte of buf */
    size_t frag_end; /* end of the current record's payload (may be > len) */
    size_t msg_left; /* bytes of the ClientHello message not read yet */
} tls_cursor_t;

/* At a record boundary: checks the next record's header byte by byte as far
 * as it is present, so a client that is not speaking TLS fails at once. */
static step_t tls_next_record(tls_cursor_t *c)
{
    const unsigned char *h = c->buf + c->pos;
    size_t have = c->len - c->pos;
    if (have >= 1 && h[0] != TLS_RECORD_HANDSHAKE) return STEP_INVALID;
    if (have >= 2 && h[1] != 3) return STEP_INVALID;
    if (have < TLS_RECORD_HEADER) return STEP_MORE;
    size_t rec_len = (size_t)h[3] << 8 | h[4];
    /* RFC 8446 5.1: no zero-length handshake fragments. */
    if (rec_len == 0 || rec_len > TLS_RECORD_MAX) return STEP_INVALID;
    c->pos += TLS_RECORD_HEADER;
    c->frag_end = c->pos + rec_len;
    return STEP_OK;
}

/* Makes pos point at a payload byte that is present, crossing into the next
 * record when the current one is used up. */
static step_t tls_payload_ready(tls_cursor_t *c)
{
    if (c->pos == c->frag_end) TRY(tls_next_record(c));
    return c->pos < c->len ? STEP_OK : STEP_MORE;
}

static step_t tls_u8(tls_cursor_t *c, size_t *out)
{
    TRY(tls_payload_ready(c));
    *out = c->buf[c->pos++];
    return STEP_OK;
}

/* Big-endian integer of n bytes (n <= 3) from the message. */
static step_t tls_uint(tls_cursor_t *c, size_t n, size_t *out)
{
    if (n > c->msg_left) return STEP_INVALID;
    size_t v = 0, b;
    for (size_t i = 0; i < n; i++) {
        TRY(tls_u8(c, &b));
        c->msg_left--;
        v = v << 8 | b;
    }
    *out = v;
    return STEP_OK;
}

static step_t tls_skip(tls_cursor_t *c, size_t n)
{
    if (n > c->msg_left) return STEP_INVALID;
    while (n) {
        TRY(tls_payload_ready(c));
        size_t take = c->frag_end - c->pos;
        if (take > c->len - c->pos) take = c->len - c->pos;
        if (take > n) take = n;
        c->pos += take;
        c->msg_left -= take;
        n -= take;
    }
    return STEP_OK;
}

/* n bytes (n >= 1) that must lie inside one record, returned in place. */
static step_t tls_span(tls_cursor_t *c, size_t n, sg_slice_t *out)
{
    if (n > c->msg_left) return STEP_INVALID;
    if (c->pos == c->frag_end) TRY(tls_next_record(c));
    if (c->frag_end - c->pos < n) return STEP_INVALID; /* straddles a record header */
    if (c->len - c->pos < n) return STEP_MORE;
    *out = sg_slice((const char *)c->buf + c->pos, n);
    c->pos += n;
    c->msg_left -= n;
    return STEP_OK;
}

/* Reads a length prefix of `width` bytes and checks it against the bytes
 * left in the message. */
static step_t tls_vector_len(tls_cursor_t *c, size_t width, size_t *out)
{
    TRY(tls_uint(c, width, out));
    return *out <= c->msg_left ? STEP_OK : STEP_INVALID;
}

static int tls_host_name_ok(sg_slice_t name)
{
    if (name.len == 0 || name.len > SG_SNIFF_NAME_MAX) return 0;
    for (size_t i = 0; i < name.len; i++) {
        unsigned char ch = (unsigned char)name.base[i];
        if (ch <= 0x20 || ch >= 0x7f) return 0;
    }
    return 1;
}

/* RFC 6066 3: ServerNameList server_name_list<1..2^16-1>, each entry a
 * NameType and, for every type in use, opaque<1..2^16-1>. ext_len bytes
 * of the message belong to the extension. */
static step_t tls_server_name(tls_cursor_t *c, size_t ext_len, sg_slice_t *name)
{
    size_t list_len;
    int found = 0;
    if (ext_len < 2) return STEP_INVALID;
    TRY(tls_uint(c, 2, &list_len));
    if (list_len == 0 || list_len != ext_len - 2) return STEP_INVALID;
    size_t list_end_left = c->msg_left - list_len;
    while (c->msg_left > list_end_left) {
        size_t type, n;
        if (c->msg_left - list_end_left < 3) return STEP_INVALID;
        TRY(tls_uint(c, 1, &type));
        if (type == TLS_SNI_HOST_NAME && found) return STEP_INVALID;
        TRY(tls_uint(c, 2, &n));
        if (n == 0 || n > c->msg_left - list_end_left) return STEP_INVALID;
        if (type != TLS_SNI_HOST_NAME) {
            TRY(tls_skip(c, n));
            continue;
        }
        if (n > SG_SNIFF_NAME_MAX) return STEP_INVALID;
        TRY(tls_span(c, n, name));
        if (!tls_host_name_ok(*name)) return STEP_INVALID;
        found = 1;
    }
    return STEP_OK;
}

/* RFC 8446 4.1.2 (and its TLS 1.0-1.2 ancestors): the ClientHello body. */
static step_t tls_client_hello(tls_cursor_t *c, sg_slice_t *name)
{
    size_t v, n;
    TRY(tls_uint(c, 1, &v)); /* legacy_version major */
    if (v != 3) return STEP_INVALID;
    TRY(tls_skip(c, 1 + 32)); /* minor, random */
    TRY(tls_vector_len(c, 1, &n));
    if (n > 32) return STEP_INVALID; /* legacy_session_id<0..32> */
    TRY(tls_skip(c, n));
    TRY(tls_vector_len(c, 2, &n));
    if (n < 2 || n % 2) return STEP_INVALID; /* cipher_suites<2..2^16-2> */
    TRY(tls_skip(c, n));
    TRY(tls_vector_len(c, 1, &n));
    if (n < 1) return STEP_INVALID; /* legacy_compression_methods<1..2^8-1> */
    TRY(tls_skip(c, n));
    if (c->msg_left == 0) return STEP_OK; /* pre-TLS 1.2 hello without extensions */
    TRY(tls_uint(c, 2, &n));
    if (n != c->msg_left) return STEP_INVALID;
    int seen_server_name = 0;
    while (c->msg_left) {
        size_t type, ext_len;
        if (c->msg_left < 4) return STEP_INVALID;
        TRY(tls_uint(c, 2, &type));
        if (type == TLS_EXT_SERVER_NAME && seen_server_name) return STEP_INVALID;
        TRY(tls_vector_len(c, 2, &ext_len));
        if (type != TLS_EXT_SERVER_NAME) {
            TRY(tls_skip(c, ext_len));
            continue;
        }
        seen_server_name = 1;
        TRY(tls_server_name(c, ext_len, name)); /* reads exactly ext_len bytes */
    }
    return STEP_OK;
}

static step_t tls_parse(tls_cursor_t *c, sg_slice_t *name)
{
    size_t type, hello_len;
    c->msg_left = 4; /* the handshake header, until it tells the length */
    TRY(tls_uint(c, 1, &type));
    if (type != TLS_HANDSHAKE_CLIENT_HELLO) return STEP_INVALID;
    TRY(tls_uint(c, 3, &hello_len));
    c->msg_left = hello_len;
    return tls_client_hello(c, name);
}

sg_sniff_result_t sg_sniff_tls_sni(const char *buf, size_t len, size_t max, sg_slice_t *name)
{
    tls_cursor_t c = {.buf = (const unsigned char *)buf, .len = len < max ? len : max};
    sg_slice_t found_name = sg_slice(buf, 0);
    switch (tls_parse(&c, &found_name)) {
    case STEP_OK:
        *name = found_name;
        return SG_SNIFF_DONE;
    case STEP_MORE:
        /* Every byte still missing takes at least one byte on the wire. */
        if (c.len == max || c.pos + c.msg_left > max) return SG_SNIFF_INVALID;
        return SG_SNIFF_MORE;
    case STEP_INVALID:
        break;
    }
    return SG_SNIFF_INVALID;
}

/* ==== HTTP ================================================================= */

static int is_tchar(unsigned char ch)
{
    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9')) return 1;
    return ch && strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

static int is_vchar(unsigned char ch)
{
    return ch >= 0x21 && ch <= 0x7e;
}

static int is_field_value_char(unsigned char ch)
{
    return ch == '\t' || ch == ' ' || is_vchar(ch) || ch >= 0x80;
}

static int is_digit(unsigned char ch)
{
    return ch >= '0' && ch <= '9';
}

/* RFC 3986 reg-name: unreserved / pct-encoded / sub-delims, taken bytewise. */
static int is_reg_name_char(unsigned char ch)
{
    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || is_digit(ch)) return 1;
    return ch && strchr("-._~!$&'()*+,;=%", ch) != NULL;
}

static int port_ok(sg_slice_t port)
{
    if (port.len == 0 || port.len > 5) return 0;
    unsigned long v = 0;
    for (size_t i = 0; i < port.len; i++) {
        if (!is_digit((unsigned char)port.base[i])) return 0;
        v = v * 10 + (unsigned long)(port.base[i] - '0');
    }
    return v <= 65535;
}

/* authority = host [":" port] where host is a reg-name or "[" IPv6 "]";
 * *host = the name, or the address without brackets. Returns 1 when
 * plausible. */
static int parse_authority(sg_slice_t a, sg_slice_t *host)
{
    size_t end;
    if (a.len == 0) return 0;
    if (a.base[0] == '[') {
        const char *close = memchr(a.base, ']', a.len);
        if (!close) return 0;
        sg_slice_t inside = sg_slice(a.base + 1, (size_t)(close - a.base) - 1);
        char text[INET6_ADDRSTRLEN];
        unsigned char addr[16];
        if (inside.len == 0 || inside.len >= sizeof(text)) return 0;
        for (size_t i = 0; i < inside.len; i++) {
            unsigned char ch = (unsigned char)inside.base[i];
            if (!(is_digit(ch) || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F') ||
                  ch == ':' || ch == '.'))
                return 0;
        }
        memcpy(text, inside.base, inside.len);
        text[inside.len] = '\0';
        if (inet_pton(AF_INET6, text, addr) != 1) return 0;
        *host = inside;
        end = inside.len + 2;
    } else {
        end = 0;
        while (end < a.len && a.base[end] != ':') {
            if (!is_reg_name_char((unsigned char)a.base[end])) return 0;
            end++;
        }
        if (end == 0 || end > SG_SNIFF_NAME_MAX) return 0;
        *host = sg_slice(a.base, end);
    }
    if (end == a.len) return 1;
    if (a.base[end] != ':') return 0;
    return port_ok(sg_slice(a.base + end + 1, a.len - end - 1));
}

/* Host from an absolute-form target "http://authority[/ ? # ...]": returns
 * 1 with *host set, 0 when the target is not absolute-form http (then there
 * is no name), -1 when it is but the authority is not plausible. */
static int absolute_form_host(sg_slice_t target, sg_slice_t *host)
{
    static const char scheme[] = "http://";
    size_t n = sizeof(scheme) - 1;
    if (target.len < n || !sg_slice_eq_nocase(sg_slice(target.base, n), sg_slice(scheme, n)))
        return 0;
    size_t end = n;
    while (end < target.len && !strchr("/?#", target.base[end])) end++;
    return parse_authority(sg_slice(target.base + n, end - n), host) ? 1 : -1;
}

typedef struct {
    const unsigned char *buf;
    size_t len; /* bytes we may look at: min(len, max) */
    size_t pos;
} http_cursor_t;

/* Advances over bytes of one class; MORE when the class runs to the end of
 * the bytes we have (the run may go on). */
static step_t http_run(http_cursor_t *c, int (*in_class)(unsigned char))
{
    while (c->pos < c->len && in_class(c->buf[c->pos])) c->pos++;
    return c->pos < c->len ? STEP_OK : STEP_MORE;
}

/* Matches a literal byte by byte as far as the bytes go. */
static step_t http_expect(http_cursor_t *c, const char *lit)
{
    for (; *lit; lit++, c->pos++) {
        if (c->pos == c->len) return STEP_MORE;
        if (c->buf[c->pos] != (unsigned char)*lit) return STEP_INVALID;
    }
    return STEP_OK;
}

static step_t http_request_line(http_cursor_t *c, sg_slice_t *target)
{
    size_t start = c->pos;
    TRY(http_run(c, is_tchar));
    if (c->pos == start) return STEP_INVALID;
    TRY(http_expect(c, " "));
    start = c->pos;
    TRY(http_run(c, is_vchar));
    if (c->pos == start) return STEP_INVALID;
    *target = sg_slice((const char *)c->buf + start, c->pos - start);
    TRY(http_expect(c, " HTTP/1."));
    if (c->pos == c->len) return STEP_MORE;
    if (c->buf[c->pos] != '0' && c->buf[c->pos] != '1') return STEP_INVALID;
    c->pos++;
    return http_expect(c, "\r\n");
}

/* Header lines up to and including the empty line; *host = the raw value
 * of the one Host header (host->base NULL when there is none). */
static step_t http_headers(http_cursor_t *c, sg_slice_t *host)
{
    static const char host_name[] = "host";
    host->base = NULL;
    for (;;) {
        if (c->pos == c->len) return STEP_MORE;
        if (c->buf[c->pos] == '\r') return http_expect(c, "\r\n");
        size_t start = c->pos;
        TRY(http_run(c, is_tchar));
        if (c->pos == start || c->buf[c->pos] != ':') return STEP_INVALID;
        int is_host = sg_slice_eq_nocase(sg_slice((const char *)c->buf + start, c->pos - start),
                                         SG_SLICE_LIT(host_name));
        if (is_host && host->base) return STEP_INVALID; /* two Host headers */
        start = ++c->pos;
        TRY(http_run(c, is_field_value_char));
        if (is_host) *host = sg_slice((const char *)c->buf + start, c->pos - start);
        TRY(http_expect(c, "\r\n"));
    }
}

static step_t http_parse(http_cursor_t *c, sg_slice_t *out)
{
    sg_slice_t target, host_value;
    TRY(http_request_line(c, &target));
    TRY(http_headers(c, &host_value));
    if (host_value.base)
        return parse_authority(sg_slice_trim(host_value), out) ? STEP_OK : STEP_INVALID;
    return absolute_form_host(target, out) < 0 ? STEP_INVALID : STEP_OK;
}

sg_sniff_result_t sg_sniff_http_host(const char *buf, size_t len, size_t max, sg_slice_t *host)
{
    http_cursor_t c = {.buf = (const unsigned char *)buf, .len = len < max ? len : max};
    sg_slice_t found = sg_slice(buf, 0);
    switch (http_parse(&c, &found)) {
    case STEP_OK:
        *host = found;
        return SG_SNIFF_DONE;
    case STEP_MORE:
        return c.len == max ? SG_SNIFF_INVALID : SG_SNIFF_MORE;
    case STEP_INVALID:
        break;
    }
    return SG_SNIFF_INVALID;
}
