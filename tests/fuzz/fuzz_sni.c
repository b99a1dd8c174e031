/* libFuzzer harness for sg_sniff_tls_sni (egress/sniff.h).
 *
 * Input: a flags byte, then either the client's bytes (bit 0 clear) or
 * (bit 0 set) a seed byte and a handshake stream that the harness wraps in
 * handshake records of pseudo-random sizes (1..64 bytes or up to 16384,
 * from the seed), so multi-record hellos are reached without the fuzzer
 * having to keep record lengths right. Bits 1-3 pick max: 16384, 16640,
 * 4096, 600, 200, 64, exactly the input's length, or one byte less.
 *
 * Beyond "no crash, no over-read" (every call reads an exact-size heap
 * copy), it checks:
 *   - the answer agrees with an independent model that first reassembles
 *     the records into one flat handshake buffer (remembering where each
 *     byte came from) and then parses the ClientHello there with offsets;
 *     DONE's name is the same bytes at the same place in the input;
 *   - *name is written only on DONE; a name is 0..255 bytes (0: no SNI) of
 *     0x21..0x7e;
 *   - prefix consistency: over a handful of cut points, the answers are
 *     MORE up to some length and then one fixed answer (the same name);
 *   - the answer for len > max equals the answer for the first max bytes,
 *     except that MORE becomes INVALID.
 * Build and run: tests/fuzz/run.sh (see tests/fuzz/README.md). */
#include "egress/sniff.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    size_t off, len; /* DONE: the name's place in the input */
} answer_t;

/* Runs the sniffer on an exact-size copy of the first n bytes. */
static answer_t sniff(const unsigned char *bytes, size_t n, size_t max)
{
    answer_t a = {0};
    char *copy = malloc(n ? n : 1);
    CHECK(copy != NULL);
    if (n) memcpy(copy, bytes, n);
    char sentinel;
    sg_slice_t name = {&sentinel, 777};
    a.result = sg_sniff_tls_sni(copy, n, max, &name);
    CHECK(a.result == SG_SNIFF_MORE || a.result == SG_SNIFF_DONE || a.result == SG_SNIFF_INVALID);
    if (a.result == SG_SNIFF_DONE) {
        CHECK(name.base >= copy && name.len <= n && name.base + name.len <= copy + n);
        a.off = (size_t)(name.base - copy);
        a.len = name.len;
        CHECK(name.len <= SG_SNIFF_NAME_MAX);
        for (size_t i = 0; i < name.len; i++) CHECK(name.base[i] > 0x20 && name.base[i] < 0x7f);
    } else {
        CHECK(name.base == &sentinel && name.len == 777);
    }
    free(copy);
    return a;
}

/* ---- the model -------------------------------------------------------------- */

typedef struct {
    size_t start, end; /* logical offsets of a record's payload; end as declared */
} model_record_t;

typedef struct {
    unsigned char *flat; /* the handshake stream, reassembled */
    size_t *from;        /* input offset of each flat byte */
    size_t have;         /* flat bytes received */
    model_record_t *recs;
    size_t n_recs;
    int stops_bad;   /* the stream ends at a header that can never be valid */
    size_t stop_pos; /* input offset of the first byte that is missing */
    size_t max, seen;
    size_t hello_end; /* logical end of what is being read: 4, then 4 + length */
} model_t;

static void model_reassemble(model_t *m, const unsigned char *in, size_t n)
{
    size_t pos = 0;
    m->flat = malloc(n + 1);
    m->from = malloc((n + 1) * sizeof(size_t));
    m->recs = malloc((n / 6 + 1) * sizeof(model_record_t));
    CHECK(m->flat && m->from && m->recs);
    for (;;) {
        m->stop_pos = pos;
        if (pos == n) return;
        if (in[pos] != 22 || (n - pos >= 2 && in[pos + 1] != 3)) {
            m->stops_bad = 1;
            return;
        }
        if (n - pos < 5) return;
        size_t len = (size_t)in[pos + 3] * 256 + in[pos + 4];
        if (len == 0 || len > 16384 + 256) {
            m->stops_bad = 1;
            return;
        }
        model_record_t *r = &m->recs[m->n_recs++];
        r->start = m->have;
        r->end = m->have + len;
        size_t got = n - pos - 5 < len ? n - pos - 5 : len;
        for (size_t i = 0; i < got; i++) {
            m->flat[m->have] = in[pos + 5 + i];
            m->from[m->have++] = pos + 5 + i;
        }
        if (got < len) {
            m->stop_pos = n;
            return;
        }
        pos += 5 + len;
    }
}

enum { M_OK, M_MORE, M_INVALID };

/* May flat[at..at+k) be read? */
static int need(const model_t *m, size_t at, size_t k)
{
    if (at + k > m->hello_end) return M_INVALID;
    if (at + k <= m->have) return M_OK;
    return m->stops_bad ? M_INVALID : M_MORE;
}

#define NEED(m, at, k)                                                                             \
    do {                                                                                           \
        int need_ = need(m, at, k);                                                                \
        if (need_ != M_OK) return need_;                                                           \
    } while (0)

static size_t be(const model_t *m, size_t at, size_t k)
{
    size_t v = 0;
    for (size_t i = 0; i < k; i++) v = v * 256 + m->flat[at + i];
    return v;
}

/* The ClientHello over the flat buffer; the host_name is flat[*name_at..+*name_len). */
static int model_hello(model_t *m, size_t *name_at, size_t *name_len)
{
    m->hello_end = 4;
    NEED(m, 0, 1);
    if (m->flat[0] != 1) return M_INVALID;
    NEED(m, 1, 3);
    m->hello_end = 4 + be(m, 1, 3);
    size_t p = 4;
    NEED(m, p, 1);
    if (m->flat[p] != 3) return M_INVALID;
    NEED(m, p + 1, 33);
    p += 34;
    NEED(m, p, 1);
    size_t sid = m->flat[p++];
    if (p + sid > m->hello_end || sid > 32) return M_INVALID;
    NEED(m, p, sid);
    p += sid;
    NEED(m, p, 2);
    size_t suites = be(m, p, 2);
    p += 2;
    if (p + suites > m->hello_end || suites < 2 || suites % 2) return M_INVALID;
    NEED(m, p, suites);
    p += suites;
    NEED(m, p, 1);
    size_t comp = m->flat[p++];
    if (p + comp > m->hello_end || comp == 0) return M_INVALID;
    NEED(m, p, comp);
    p += comp;
    if (p == m->hello_end) return M_OK;
    NEED(m, p, 2);
    if (p + 2 + be(m, p, 2) != m->hello_end) return M_INVALID;
    p += 2;
    int sni_seen = 0;
    while (p < m->hello_end) {
        if (m->hello_end - p < 4) return M_INVALID;
        NEED(m, p, 2);
        size_t type = be(m, p, 2);
        if (type == 0 && sni_seen) return M_INVALID;
        NEED(m, p + 2, 2);
        size_t ext_end = p + 4 + be(m, p + 2, 2);
        if (ext_end > m->hello_end) return M_INVALID;
        p += 4;
        if (type != 0) {
            NEED(m, p, ext_end - p);
            p = ext_end;
            continue;
        }
        sni_seen = 1;
        if (ext_end - p < 2) return M_INVALID;
        NEED(m, p, 2);
        if (be(m, p, 2) == 0 || p + 2 + be(m, p, 2) != ext_end) return M_INVALID;
        p += 2;
        int host_seen = 0;
        while (p < ext_end) {
            if (ext_end - p < 3) return M_INVALID;
            NEED(m, p, 1);
            size_t name_type = m->flat[p];
            if (name_type == 0 && host_seen) return M_INVALID;
            NEED(m, p + 1, 2);
            size_t n = be(m, p + 1, 2);
            p += 3;
            if (n == 0 || p + n > ext_end) return M_INVALID;
            if (name_type != 0) {
                NEED(m, p, n);
                p += n;
                continue;
            }
            if (n > 255) return M_INVALID;
            /* The name must sit in one record: find the one it starts in,
             * which is known once its header is, even before its bytes. */
            size_t r = 0;
            while (r < m->n_recs && !(m->recs[r].start <= p && p < m->recs[r].end)) r++;
            if (r == m->n_recs) NEED(m, p, 1);
            CHECK(r < m->n_recs);
            if (p + n > m->recs[r].end) return M_INVALID;
            NEED(m, p, n);
            for (size_t i = 0; i < n; i++)
                if (m->flat[p + i] <= 0x20 || m->flat[p + i] >= 0x7f) return M_INVALID;
            *name_at = p;
            *name_len = n;
            host_seen = 1;
            p += n;
        }
    }
    return M_OK;
}

static answer_t model(const unsigned char *in, size_t len, size_t max)
{
    model_t m = {0};
    answer_t a = {0};
    size_t n = len < max ? len : max, name_at = 0, name_len = 0;
    int found = 0;
    model_reassemble(&m, in, n);
    switch (model_hello(&m, &name_at, &name_len)) {
    case M_OK:
        a.result = SG_SNIFF_DONE;
        found = name_len > 0;
        break;
    case M_MORE: {
        /* Every missing handshake byte needs at least one more input byte. */
        size_t lower_bound = m.stop_pos + (m.hello_end - m.have);
        a.result = (n == max || lower_bound > max) ? SG_SNIFF_INVALID : SG_SNIFF_MORE;
        break;
    }
    default:
        a.result = SG_SNIFF_INVALID;
    }
    if (found) {
        a.off = m.from[name_at];
        a.len = name_len;
    }
    free(m.flat);
    free(m.from);
    free(m.recs);
    return a;
}

/* ---- driver ----------------------------------------------------------------- */

static uint32_t next_rand(uint32_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

/* Wraps payload into handshake records of seed-chosen sizes. */
static size_t wrap_records(const uint8_t *payload, size_t n, uint8_t seed, unsigned char *out)
{
    uint32_t s = 0x9e3779b9u ^ seed;
    size_t o = 0, limit = (seed & 0x80) ? 16384 : 64;
    while (n) {
        size_t take = 1 + next_rand(&s) % limit;
        if (take > n) take = n;
        out[o++] = 22;
        out[o++] = 3;
        out[o++] = 1;
        out[o++] = (unsigned char)(take >> 8);
        out[o++] = (unsigned char)take;
        memcpy(out + o, payload, take);
        o += take;
        payload += take;
        n -= take;
    }
    return o;
}

static int same(answer_t a, answer_t b)
{
    return a.result == b.result &&
           (a.result != SG_SNIFF_DONE || (a.off == b.off && a.len == b.len));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static unsigned char input[INPUT_MAX * 6 + 16];
    size_t len;
    if (size < 1 || size > INPUT_MAX) return 0;
    uint8_t flags = data[0];
    if (flags & 1) {
        if (size < 2) return 0;
        len = wrap_records(data + 2, size - 2, data[1], input);
    } else {
        len = size - 1;
        memcpy(input, data + 1, len);
    }
    static const size_t caps[] = {16384, 16384 + 256, 4096, 600, 200, 64};
    size_t pick = (flags >> 1) & 7;
    size_t max = pick < 6 ? caps[pick] : pick == 6 ? len : (len ? len - 1 : 0);

    answer_t got = sniff(input, len, max);
    answer_t want = model(input, len, max);
    if (!same(got, want))
        fprintf(stderr, "sniff %d off %zu len %zu / model %d off %zu len %zu (len %zu max %zu)\n",
                got.result, got.off, got.len, want.result, want.off, want.len, len, max);
    CHECK(same(got, want));

    /* Past max: as if the input stopped at max, MORE turning INVALID. */
    if (len > max) {
        answer_t capped = sniff(input, max, max);
        CHECK(capped.result != SG_SNIFF_MORE);
        CHECK(same(got, capped));
    }

    /* Prefix consistency over a few cut points (ascending). */
    uint32_t s = 0x12345u + (uint32_t)len;
    answer_t prev = {SG_SNIFF_MORE, 0, 0};
    size_t cut = 0;
    for (int i = 0; i < 8 && len; i++) {
        cut += 1 + next_rand(&s) % (len / 4 + 1);
        if (cut > len) cut = len;
        answer_t a = sniff(input, cut, max);
        if (prev.result != SG_SNIFF_MORE) CHECK(same(a, prev));
        prev = a;
    }
    if (prev.result != SG_SNIFF_MORE) CHECK(same(got, prev));
    return 0;
}
