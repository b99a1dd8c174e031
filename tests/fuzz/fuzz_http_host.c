/* libFuzzer harness for sg_sniff_http_host (egress/sniff.h).
 *
 * Input: a flags byte, then the client's bytes. Bits 0-2 of the flags pick
 * max: 16384, 4096, 256, 64, 32, exactly the input's length, one byte less,
 * or 16384.
 *
 * Beyond "no crash, no over-read" (every call reads an exact-size heap
 * copy), it checks:
 *   - the answer agrees with an independent model written from the header's
 *     contract in another shape: it finds the head's end with memmem, splits
 *     lines on CRLF and checks each whole line (or, while the head is
 *     incomplete, each line and the last line's prefix) against the
 *     grammar, then extracts the Host or absolute-form authority; DONE's
 *     host is the same bytes at the same place in the input;
 *   - *host is written only on DONE; a host is 0..255 bytes (0: no name);
 *   - prefix consistency: over a handful of cut points, the answers are
 *     MORE up to some length and then one fixed answer;
 *   - the answer for len > max equals the answer for the first max bytes,
 *     except that MORE becomes INVALID;
 *   - every head we call DONE is one llhttp (strict, as the ingress builds
 *     it) also parses to its end, finding the same single Host value: we
 *     are stricter than llhttp, never looser. llhttp may still refuse the
 *     head for reasons that do not concern us (methods it does not know,
 *     its URL grammar, Content-Length / Transfer-Encoding semantics); then
 *     the headers are checked again behind a plain request line.
 * Build and run: tests/fuzz/run.sh (see tests/fuzz/README.md). */
#include "egress/sniff.h"

#include <arpa/inet.h>
#include <llhttp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define INPUT_MAX 20000

typedef struct {
    sg_sniff_result_t result;
    size_t off, len; /* DONE: the host's place in the input */
} answer_t;

static answer_t sniff(const char *bytes, size_t n, size_t max)
{
    answer_t a = {0};
    char *copy = malloc(n ? n : 1);
    CHECK(copy != NULL);
    if (n) memcpy(copy, bytes, n);
    char sentinel;
    sg_slice_t host = {&sentinel, 777};
    a.result = sg_sniff_http_host(copy, n, max, &host);
    CHECK(a.result == SG_SNIFF_MORE || a.result == SG_SNIFF_DONE || a.result == SG_SNIFF_INVALID);
    if (a.result == SG_SNIFF_DONE) {
        CHECK(host.base >= copy && host.len <= n && host.base + host.len <= copy + n);
        CHECK(host.len <= SG_SNIFF_NAME_MAX);
        a.off = (size_t)(host.base - copy);
        a.len = host.len;
    } else {
        CHECK(host.base == &sentinel && host.len == 777);
    }
    free(copy);
    return a;
}

/* ---- the model -------------------------------------------------------------- */

static const char tchars[] = "!#$%&'*+-.^_`|~0123456789"
                             "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
static const char reg_name_chars[] = "-._~!$&'()*+,;=%0123456789"
                                     "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

/* Every byte of s[0..n) is in the NUL-terminated set. */
static int all_in(const char *s, size_t n, const char *set)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] == '\0' || !strchr(set, s[i])) return 0;
    return 1;
}

static int all_visible(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] > 0x7e) return 0;
    return 1;
}

static int all_value_bytes(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c != '\t' && c != ' ' && (c < 0x21 || c == 0x7f)) return 0;
    }
    return 1;
}

/* The request line (without CRLF), or with `partial` a prefix of one
 * (which may end in the CR of its CRLF). */
static int request_line_ok(const char *s, size_t n, int partial)
{
    if (partial && n && s[n - 1] == '\r') {
        n--;
        partial = 0; /* a CR comes only after the whole version */
    }
    const char *sp1 = memchr(s, ' ', n);
    if (!sp1) return partial && all_in(s, n, tchars);
    if (sp1 == s || !all_in(s, (size_t)(sp1 - s), tchars)) return 0;
    const char *target = sp1 + 1;
    size_t rest = n - (size_t)(target - s);
    const char *sp2 = memchr(target, ' ', rest);
    if (!sp2) return partial && all_visible(target, rest);
    if (sp2 == target || !all_visible(target, (size_t)(sp2 - target))) return 0;
    const char *version = sp2 + 1;
    size_t vlen = n - (size_t)(version - s);
    if (!partial)
        return vlen == 8 && (!memcmp(version, "HTTP/1.0", 8) || !memcmp(version, "HTTP/1.1", 8));
    return vlen <= 8 && (!memcmp(version, "HTTP/1.0", vlen) || !memcmp(version, "HTTP/1.1", vlen));
}

/* A header line (without CRLF), or with `partial` a prefix of one. */
static int header_line_ok(const char *s, size_t n, int partial)
{
    int cr = partial && n && s[n - 1] == '\r';
    n -= (size_t)cr;
    const char *colon = memchr(s, ':', n);
    /* A CR ends the empty line or a header's value, nothing else. */
    if (cr && !colon) return n == 0;
    if (!colon) return partial && all_in(s, n, tchars);
    size_t name = (size_t)(colon - s);
    return name > 0 && all_in(s, name, tchars) && all_value_bytes(colon + 1, n - name - 1);
}

static int is_host_line(const char *s, size_t n)
{
    return n >= 5 && strncasecmp(s, "host:", 5) == 0;
}

static int port_ok(const char *s, size_t n)
{
    char digits[6] = {0};
    if (n < 1 || n > 5 || !all_in(s, n, "0123456789")) return 0;
    memcpy(digits, s, n);
    return atol(digits) <= 65535;
}

/* authority -> host, or 0 when implausible. */
static int model_authority(const char *a, size_t n, const char **host, size_t *host_len)
{
    const char *after;
    if (n && a[0] == '[') {
        const char *close = memchr(a, ']', n);
        char text[64];
        unsigned char addr[16];
        if (!close || close - a - 1 >= (long)sizeof(text) || close - a - 1 < 1) return 0;
        memcpy(text, a + 1, (size_t)(close - a - 1));
        text[close - a - 1] = '\0';
        if (strspn(text, "0123456789abcdefABCDEF:.") != strlen(text)) return 0;
        if (inet_pton(AF_INET6, text, addr) != 1) return 0;
        *host = a + 1;
        *host_len = (size_t)(close - a - 1);
        after = close + 1;
    } else {
        const char *colon = memchr(a, ':', n);
        *host = a;
        *host_len = colon ? (size_t)(colon - a) : n;
        if (*host_len == 0 || *host_len > 255 || !all_in(a, *host_len, reg_name_chars)) return 0;
        after = a + *host_len;
    }
    size_t left = n - (size_t)(after - a);
    return left == 0 || (after[0] == ':' && port_ok(after + 1, left - 1));
}

static answer_t model(const char *in, size_t len, size_t max)
{
    answer_t a = {SG_SNIFF_INVALID, 0, 0};
    size_t n = len < max ? len : max;
    const char *end = memmem(in, n, "\r\n\r\n", 4);
    size_t span = end ? (size_t)(end - in) + 2 : n; /* through the last header's CRLF */
    const char *host_value = NULL, *target = NULL;
    size_t host_value_len = 0, target_len = 0;
    int hosts = 0;

    /* Lines in [0, span): complete ones end in CRLF; with no head end yet,
     * the last one is partial. */
    size_t at = 0, line_no = 0;
    while (at < span || (!end && at == span && line_no == 0)) {
        const char *crlf = memmem(in + at, span - at, "\r\n", 2);
        int partial = !crlf;
        size_t line_len = crlf ? (size_t)(crlf - in) - at : span - at;
        const char *line = in + at;
        if (line_no == 0) {
            if (!request_line_ok(line, line_len, partial)) return a;
            if (!partial) {
                target = (const char *)memchr(line, ' ', line_len) + 1;
                target_len =
                    (size_t)((const char *)memchr(target, ' ', line_len - (size_t)(target - line)) -
                             target);
            }
        } else {
            if (!header_line_ok(line, line_len, partial)) return a;
            if (is_host_line(line, line_len)) {
                if (++hosts > 1) return a;
                host_value = line + 5;
                host_value_len = line_len - 5;
            }
        }
        line_no++;
        at += line_len + (partial ? 0 : 2);
        if (partial) break;
    }
    if (!end) {
        a.result = n == max ? SG_SNIFF_INVALID : SG_SNIFF_MORE;
        return a;
    }

    const char *host = in;
    size_t host_len = 0;
    if (hosts) {
        while (host_value_len && (*host_value == ' ' || *host_value == '\t'))
            host_value++, host_value_len--;
        while (host_value_len &&
               (host_value[host_value_len - 1] == ' ' || host_value[host_value_len - 1] == '\t'))
            host_value_len--;
        if (!model_authority(host_value, host_value_len, &host, &host_len)) return a;
    } else if (target_len >= 7 && strncasecmp(target, "http://", 7) == 0) {
        size_t auth_len = 0;
        while (7 + auth_len < target_len && !strchr("/?#", target[7 + auth_len])) auth_len++;
        if (!model_authority(target + 7, auth_len, &host, &host_len)) return a;
    }
    a.result = SG_SNIFF_DONE;
    a.off = (size_t)(host - in);
    a.len = host_len;
    return a;
}

/* ---- llhttp ---------------------------------------------------------------- */

typedef struct {
    int in_host, hosts;
    char host[INPUT_MAX + 32]; /* every Host value piece llhttp reported */
    size_t host_len;
} llhttp_view_t;

static int on_field(llhttp_t *p, const char *at, size_t n)
{
    llhttp_view_t *v = p->data;
    v->in_host = n == 4 && strncasecmp(at, "host", 4) == 0;
    v->hosts += v->in_host;
    return 0;
}

static int on_value(llhttp_t *p, const char *at, size_t n)
{
    llhttp_view_t *v = p->data;
    if (!v->in_host) return 0;
    CHECK(v->host_len + n <= sizeof(v->host));
    memcpy(v->host + v->host_len, at, n);
    v->host_len += n;
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    return HPE_PAUSED;
}

/* Runs llhttp over a head; returns its error (HPE_PAUSED: headers done). */
static llhttp_errno_t llhttp_head(const char *head, size_t n, llhttp_view_t *v, size_t *consumed)
{
    static llhttp_settings_t settings;
    static int ready;
    if (!ready) {
        llhttp_settings_init(&settings);
        settings.on_header_field = on_field;
        settings.on_header_value = on_value;
        settings.on_headers_complete = on_headers_complete;
        ready = 1;
    }
    llhttp_t p;
    memset(v, 0, sizeof(*v));
    llhttp_init(&p, HTTP_REQUEST, &settings);
    p.data = v;
    llhttp_errno_t err = llhttp_execute(&p, head, n);
    *consumed = (size_t)(llhttp_get_error_pos(&p) - head);
    return err;
}

static int not_our_business(llhttp_errno_t err)
{
    return err == HPE_INVALID_METHOD || err == HPE_INVALID_URL || err == HPE_INVALID_CONSTANT ||
           err == HPE_INVALID_CONTENT_LENGTH || err == HPE_UNEXPECTED_CONTENT_LENGTH ||
           err == HPE_INVALID_TRANSFER_ENCODING;
}

static void check_against_llhttp(const char *in, size_t head_len, const char *host_value,
                                 size_t host_value_len)
{
    static llhttp_view_t v;
    size_t consumed;
    llhttp_errno_t err = llhttp_head(in, head_len, &v, &consumed);
    if (err != HPE_PAUSED) {
        /* Same headers behind a request line llhttp knows. */
        /* llhttp takes any PRI request for HTTP/2's preface. */
        CHECK(not_our_business(err) || (head_len > 4 && !memcmp(in, "PRI ", 4)));
        const char *first_crlf = memmem(in, head_len, "\r\n", 2);
        static char again[INPUT_MAX + 32];
        size_t rest = head_len - (size_t)(first_crlf - in);
        memcpy(again, "GET / HTTP/1.1", 14);
        memcpy(again + 14, first_crlf, rest);
        err = llhttp_head(again, 14 + rest, &v, &consumed);
        if (err != HPE_PAUSED) {
            CHECK(err == HPE_INVALID_CONTENT_LENGTH || err == HPE_UNEXPECTED_CONTENT_LENGTH ||
                  err == HPE_INVALID_TRANSFER_ENCODING);
            return;
        }
        CHECK(consumed == 14 + rest);
    } else {
        CHECK(consumed == head_len);
    }
    CHECK(v.hosts == (host_value != NULL));
    if (host_value) {
        /* llhttp drops leading OWS; trailing OWS is ours to drop. */
        while (v.host_len && (v.host[v.host_len - 1] == ' ' || v.host[v.host_len - 1] == '\t'))
            v.host_len--;
        CHECK(v.host_len == host_value_len && !memcmp(v.host, host_value, host_value_len));
    }
}

/* ---- driver ----------------------------------------------------------------- */

static int same(answer_t a, answer_t b)
{
    return a.result == b.result &&
           (a.result != SG_SNIFF_DONE || (a.off == b.off && a.len == b.len));
}

static uint32_t next_rand(uint32_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > INPUT_MAX) return 0;
    const char *in = (const char *)data + 1;
    size_t len = size - 1;
    static const size_t caps[] = {16384, 4096, 256, 64, 32};
    size_t pick = data[0] & 7;
    size_t max = pick < 5 ? caps[pick] : pick == 5 ? len : pick == 6 ? (len ? len - 1 : 0) : 16384;

    answer_t got = sniff(in, len, max);
    answer_t want = model(in, len, max);
    if (!same(got, want))
        fprintf(stderr, "sniff %d off %zu len %zu / model %d off %zu len %zu (len %zu max %zu)\n",
                got.result, got.off, got.len, want.result, want.off, want.len, len, max);
    CHECK(same(got, want));

    if (got.result == SG_SNIFF_DONE) {
        size_t head_len = (size_t)((const char *)memmem(in, len, "\r\n\r\n", 4) - in) + 4;
        CHECK(got.off + got.len <= head_len);
        /* The raw Host value, trimmed, when a Host header decided. */
        const char *value = NULL;
        size_t value_len = 0;
        for (const char *line = memmem(in, head_len, "\r\n", 2) + 2; line < in + head_len - 2;) {
            const char *eol = memmem(line, (size_t)(in + head_len - line), "\r\n", 2);
            if (eol - line >= 5 && strncasecmp(line, "host:", 5) == 0) {
                value = line + 5;
                value_len = (size_t)(eol - value);
                while (value_len && (*value == ' ' || *value == '\t')) value++, value_len--;
                while (value_len && (value[value_len - 1] == ' ' || value[value_len - 1] == '\t'))
                    value_len--;
            }
            line = eol + 2;
        }
        check_against_llhttp(in, head_len, value, value_len);
    }

    if (len > max) {
        answer_t capped = sniff(in, max, max);
        CHECK(capped.result != SG_SNIFF_MORE);
        CHECK(same(got, capped));
    }

    uint32_t s = 0x2545f491u + (uint32_t)len;
    answer_t prev = {SG_SNIFF_MORE, 0, 0};
    size_t cut = 0;
    for (int i = 0; i < 8 && len; i++) {
        cut += 1 + next_rand(&s) % (len / 4 + 1);
        if (cut > len) cut = len;
        answer_t a = sniff(in, cut, max);
        if (prev.result != SG_SNIFF_MORE) CHECK(same(a, prev));
        prev = a;
    }
    if (prev.result != SG_SNIFF_MORE) CHECK(same(got, prev));
    return 0;
}
