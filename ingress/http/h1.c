#include "http/h1.h"

#include <stdlib.h>
#include <string.h>

static sg_h1_parser_t *P(llhttp_t *l)
{
    return (sg_h1_parser_t *)l; /* llhttp is the first member */
}

/* Positions for fold detection: offsets while parsing a head buffer (it
 * may move between reads), addresses while parsing read buffers. */
static uintptr_t pos_of(const sg_h1_parser_t *p, const char *at)
{
    return p->base ? (uintptr_t)(at - p->base) : (uintptr_t)at;
}

static uint32_t off_of(sg_h1_parser_t *p, const char *at)
{
    return (uint32_t)(at - p->base);
}

/* Eight bytes at p as a little-endian number, whatever the host's byte
 * order (compilers turn this into one load where they can). */
static uint64_t load_le64(const char *p)
{
    const unsigned char *u = (const unsigned char *)p;
    return (uint64_t)u[0] | (uint64_t)u[1] << 8 | (uint64_t)u[2] << 16 | (uint64_t)u[3] << 24 |
           (uint64_t)u[4] << 32 | (uint64_t)u[5] << 40 | (uint64_t)u[6] << 48 |
           (uint64_t)u[7] << 56;
}

static int is_cr_lf(char c, int nul)
{
    return c == '\r' || c == '\n' || (nul && c == '\0');
}

/* The first CR or LF (and NUL when `nul`) in [p, end), or end; never
 * reads outside [p, end). Eight bytes at a time with the "has a byte less
 * than n" test (n = 0x0e here, below which lie NUL, CR and LF, but also HT
 * and other control bytes): (w - n * 0x01..) & ~w & 0x80.. is non-zero
 * exactly when a byte of w is below n, and its lowest set bit marks the
 * first such byte (borrows only carry towards later bytes). Any other byte
 * found that way (a tab) is stepped over. */
static inline const char *find_cr_lf(const char *p, const char *end, int nul)
{
    const uint64_t ones = 0x0101010101010101u, highs = 0x8080808080808080u;
    const char *start = p;
    while (end - p >= 8) {
        uint64_t w = load_le64(p);
        uint64_t m = (w - ones * 0x0e) & ~w & highs;
        if (!m) {
            p += 8;
            continue;
        }
        const char *c = p + (__builtin_ctzll(m) >> 3);
        if (is_cr_lf(*c, nul)) return c;
        p = c + 1;
    }
    /* Fewer than 8 bytes left: when the range has 8, its last 8 bytes
     * (some already seen) settle it in one step if none is below 0x0e. */
    if (p < end && end - start >= 8) {
        uint64_t w = load_le64(end - 8);
        if (!((w - ones * 0x0e) & ~w & highs)) return end;
    }
    for (; p < end; p++)
        if (is_cr_lf(*p, nul)) return p;
    return end;
}

static int on_method(llhttp_t *l, const char *at, size_t len)
{
    sg_h1_parser_t *p = P(l);
    if (!p->first_len) p->first_off = off_of(p, at);
    p->first_len = off_of(p, at + len) - p->first_off;
    return 0;
}

static int on_url(llhttp_t *l, const char *at, size_t len)
{
    sg_h1_parser_t *p = P(l);
    if (!p->target_len) p->target_off = off_of(p, at);
    p->target_len = off_of(p, at + len) - p->target_off;
    return 0;
}

static sg_h1_span_t *new_span(sg_h1_parser_t *p)
{
    if (p->n_spans == p->max_headers) {
        p->too_many = 1;
        return NULL;
    }
    if (p->n_spans == p->cap_spans) {
        size_t cap = p->cap_spans ? p->cap_spans * 2 : 32;
        sg_h1_span_t *s = realloc(p->spans, cap * sizeof(*s));
        if (!s) abort();
        p->spans = s;
        p->cap_spans = cap;
    }
    sg_h1_span_t *s = &p->spans[p->n_spans++];
    memset(s, 0, sizeof(*s));
    return s;
}

/* Header callbacks. In the head, spans are recorded; in trailers (after
 * headers_done) the same checks run but nothing is recorded, since trailers
 * pass through as body bytes. Checks llhttp 8's strict mode lacks: a header
 * line needs a name, and a value may not hold CR or LF (obs-fold). */
static int on_header_field(llhttp_t *l, const char *at, size_t len)
{
    sg_h1_parser_t *p = P(l);
    if (len) p->named = 1; /* llhttp reports an empty name as one empty piece */
    if (p->headers_done) return 0;
    if (!p->in_field) {
        if (!new_span(p)) {
            llhttp_set_error_reason(l, "too many header fields");
            return HPE_USER;
        }
        p->spans[p->n_spans - 1].name_off = off_of(p, at);
        p->in_field = 1;
    }
    sg_h1_span_t *s = &p->spans[p->n_spans - 1];
    s->name_len = off_of(p, at + len) - s->name_off;
    return 0;
}

static int on_header_field_complete(llhttp_t *l)
{
    P(l)->in_field = 0;
    return 0;
}

static int on_header_value(llhttp_t *l, const char *at, size_t len)
{
    sg_h1_parser_t *p = P(l);
    if (!p->named) {
        llhttp_set_error_reason(l, "empty header name");
        return HPE_USER;
    }
    /* llhttp hands a folded value over in pieces. A later piece of one value
     * is legitimate only when the previous piece ran to the end of the
     * previous execute's data and this one starts this execute's data (a
     * read boundary inside the value); any other piece is a fold. */
    int split =
        p->in_value && pos_of(p, at) == p->exec_start && p->last_value_end == p->prev_exec_end;
    if ((p->in_value && !split) || find_cr_lf(at, at + len, 0) != at + len) {
        llhttp_set_error_reason(l, "obsolete line folding");
        return HPE_USER;
    }
    int first_piece = !p->in_value;
    p->in_value = 1;
    p->last_value_end = pos_of(p, at + len);
    if (p->headers_done) return 0;
    sg_h1_span_t *s = &p->spans[p->n_spans - 1];
    if (first_piece) s->value_off = off_of(p, at);
    s->value_len = off_of(p, at + len) - s->value_off;
    return 0;
}

static int on_header_value_complete(llhttp_t *l)
{
    sg_h1_parser_t *p = P(l);
    p->in_value = 0;
    if (!p->named) {
        llhttp_set_error_reason(l, "empty header name");
        return HPE_USER;
    }
    p->named = 0;
    return 0;
}

static int on_status(llhttp_t *l, const char *at, size_t len)
{
    return on_method(l, at, len); /* the reason phrase shares the first span */
}

/* "HTTP/1.x DDD" then SP or CR: llhttp 8 also takes other versions and
 * status codes of more digits, which would be forwarded unchanged. */
static int status_line_ok(const char *base)
{
    if (!base) return 1; /* not parsing from a head buffer */
    while (base[0] == '\r' && base[1] == '\n') base += 2;
    if (memcmp(base, "HTTP/1.", 7) != 0 || (base[7] != '0' && base[7] != '1') || base[8] != ' ')
        return 0;
    for (int i = 9; i < 12; i++)
        if (base[i] < '0' || base[i] > '9') return 0;
    return base[12] == ' ' || base[12] == '\r';
}

static int on_headers_complete(llhttp_t *l)
{
    sg_h1_parser_t *p = P(l);
    p->headers_done = 1;
    if (l->http_major != 1) {
        llhttp_set_error_reason(l, "unsupported HTTP version");
        return -1;
    }
    if (l->type == HTTP_RESPONSE) {
        if (l->status_code < 100 || l->status_code > 999 || !status_line_ok(p->base)) {
            llhttp_set_error_reason(l, "malformed status line");
            return -1;
        }
        if (l->status_code == 101) return p->expect_upgrade ? 2 : -1;
        /* 1xx never has content, whatever framing headers it carries. */
        if (l->status_code < 200) return 1;
        /* No body whatever the framing headers say (RFC 9112 6.3). */
        if (p->skip_body || l->status_code == 204 || l->status_code == 304) return 1;
    }
    return 0;
}

static int on_message_complete(llhttp_t *l)
{
    P(l)->message_done = 1;
    return HPE_PAUSED;
}

/* Immutable and shared by every parser on every worker. */
static const llhttp_settings_t sg_h1_settings = {
    .on_method = on_method,
    .on_url = on_url,
    .on_status = on_status,
    .on_header_field = on_header_field,
    .on_header_field_complete = on_header_field_complete,
    .on_header_value = on_header_value,
    .on_header_value_complete = on_header_value_complete,
    .on_headers_complete = on_headers_complete,
    .on_message_complete = on_message_complete,
};

void sg_h1_init(sg_h1_parser_t *p, llhttp_type_t type, size_t max_headers)
{
    memset(p, 0, sizeof(*p));
    p->max_headers = max_headers;
    llhttp_init(&p->llhttp, type, &sg_h1_settings);
}

void sg_h1_reset(sg_h1_parser_t *p, llhttp_type_t type)
{
    llhttp_init(&p->llhttp, type, &sg_h1_settings);
    p->base = NULL;
    p->n_spans = 0;
    p->first_off = p->first_len = p->target_off = p->target_len = 0;
    p->in_field = p->in_value = p->headers_done = p->message_done = p->too_many = 0;
    p->named = 0;
    p->exec_start = p->exec_end = p->prev_exec_end = p->last_value_end = 0;
    p->skip_body = p->expect_upgrade = 0;
}

void sg_h1_free(sg_h1_parser_t *p)
{
    free(p->spans);
    free(p->headers);
    p->spans = NULL;
    p->headers = NULL;
    p->cap_spans = p->cap_headers = 0; /* the next parse grows them afresh */
}

llhttp_errno_t sg_h1_execute(sg_h1_parser_t *p, const char *base, const char *data, size_t len,
                             size_t *consumed)
{
    p->base = base;
    p->prev_exec_end = p->exec_end;
    p->exec_start = pos_of(p, data);
    p->exec_end = pos_of(p, data + len);
    llhttp_errno_t err = llhttp_execute(&p->llhttp, data, len);
    if (err == HPE_PAUSED || err == HPE_PAUSED_UPGRADE) {
        *consumed = (size_t)(llhttp_get_error_pos(&p->llhttp) - data);
        /* Stay paused at the message end: the owner decides what comes next
         * and re-arms the parser with sg_h1_reset. */
        return HPE_OK;
    }
    *consumed = err == HPE_OK ? len : (size_t)(llhttp_get_error_pos(&p->llhttp) - data);
    return err;
}

llhttp_errno_t sg_h1_finish(sg_h1_parser_t *p)
{
    llhttp_errno_t err = llhttp_finish(&p->llhttp);
    return err == HPE_PAUSED ? HPE_OK : err;
}

size_t sg_h1_skip_blank_lines(const char *buf, size_t len)
{
    size_t i = 0;
    while (i + 1 < len && buf[i] == '\r' && buf[i + 1] == '\n') i += 2;
    return i;
}

size_t sg_h1_head_length(const char *buf, size_t len)
{
    /* llhttp skips empty lines before a start line; so must the search for
     * the head's end, or CRLF CRLF + a whole head would look like an empty
     * head followed by body bytes (a smuggling vector). */
    size_t start = sg_h1_skip_blank_lines(buf, len);
    const char *end = memmem(buf + start, len - start, "\r\n\r\n", 4);
    return end ? (size_t)(end - buf) + 4 : 0;
}

const char *sg_h1_check_head_bytes(const char *head, size_t len)
{
    /* Line by line with memchr (vectorised in libc) rather than byte by
     * byte: a well-formed head has a CR only before each LF. Within a line,
     * the first NUL or LF is the error, whichever comes first. */
    const char *p = head, *end = head + len;
    while (p < end) {
        const char *cr = memchr(p, '\r', (size_t)(end - p));
        size_t n = (size_t)((cr ? cr : end) - p);
        const char *nul = memchr(p, '\0', n), *lf = memchr(p, '\n', n);
        if (nul && (!lf || nul < lf)) return "NUL byte in request head";
        if (lf) return "bare LF in request head";
        if (!cr) break;
        if (cr + 1 >= end || cr[1] != '\n') return "bare CR in request head";
        if (cr + 2 < end && (cr[2] == ' ' || cr[2] == '\t')) return "obsolete line folding";
        p = cr + 2;
    }
    return NULL;
}

size_t sg_h1_head_scan(const char *buf, size_t len, const char **why)
{
    /* Fast path, line by line: each line up to its CRLF must hold no NUL,
     * CR or LF, and the line after it must not start with SP or HT (a
     * fold). Then the first empty line ends the head, which is where the
     * first CRLFCRLF after the blank lines lies, and sg_h1_check_head_bytes
     * has nothing to say. Anything else takes the two-call path, so odd
     * heads get exactly its answers. */
    size_t start = sg_h1_skip_blank_lines(buf, len);
    const char *line = buf + start, *end = buf + len;
    for (;;) {
        const char *cr = find_cr_lf(line, end, 1);
        if (end - cr < 2 || cr[0] != '\r' || cr[1] != '\n') break;
        if (cr == line) {
            if (line == buf + start) break; /* cannot happen: blank lines were skipped */
            *why = NULL;
            return (size_t)(cr + 2 - buf);
        }
        if (end - cr > 2 && (cr[2] == ' ' || cr[2] == '\t')) break;
        line = cr + 2;
    }
    size_t head_len = sg_h1_head_length(buf, len);
    *why = NULL;
    if (head_len) {
        size_t blank = sg_h1_skip_blank_lines(buf, head_len);
        *why = sg_h1_check_head_bytes(buf + blank, head_len - blank);
    }
    return head_len;
}

/* sg_slice_trim, inlined for the per-header loop below: llhttp has
 * already skipped the OWS before a value, so usually only the end moves. */
static inline sg_slice_t trim_ows(sg_slice_t s)
{
    while (s.len && (s.base[0] == ' ' || s.base[0] == '\t')) s.base++, s.len--;
    while (s.len && (s.base[s.len - 1] == ' ' || s.base[s.len - 1] == '\t')) s.len--;
    return s;
}

static void materialise(sg_h1_parser_t *p, const char *base)
{
    if (p->cap_headers < p->n_spans) {
        free(p->headers);
        p->cap_headers = p->n_spans < 32 ? 32 : p->n_spans;
        p->headers = malloc(p->cap_headers * sizeof(*p->headers));
        if (!p->headers) abort();
    }
    for (size_t i = 0; i < p->n_spans; i++) {
        const sg_h1_span_t *s = &p->spans[i];
        p->headers[i].name = sg_slice(base + s->name_off, s->name_len);
        p->headers[i].value = trim_ows(sg_slice(base + s->value_off, s->value_len));
    }
}

void sg_h1_request_view(sg_h1_parser_t *p, const char *base, sg_http_request_t *out)
{
    materialise(p, base);
    out->method = sg_slice(base + p->first_off, p->first_len);
    out->target = sg_slice(base + p->target_off, p->target_len);
    out->minor_version = p->llhttp.http_minor;
    out->headers = p->headers;
    out->n_headers = p->n_spans;
}

void sg_h1_response_view(sg_h1_parser_t *p, const char *base, size_t head_len,
                         sg_http_response_t *out)
{
    materialise(p, base);
    size_t start = sg_h1_skip_blank_lines(base, head_len);
    const char *eol = memchr(base + start, '\r', head_len - start);
    out->status = p->llhttp.status_code;
    out->minor_version = p->llhttp.http_minor;
    out->status_line = sg_slice(base + start, eol ? (size_t)(eol - base - start) : 0);
    out->headers = p->headers;
    out->n_headers = p->n_spans;
}
