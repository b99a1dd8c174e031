/* libFuzzer harness for the PROXY protocol parser. Beyond "no crash, no
 * over-read", it checks the contract callers rely on:
 *   - the result is -1, 0 or a length within the input (and within the cap);
 *   - impossible() == 1 implies -1; 0 never comes back for a buffer that
 *     must already hold any header;
 *   - prefix consistency: with one byte fewer, -1 stays -1 and a length
 *     stays the same length; 0 for the whole means 0 for the shorter;
 *   - a parsed header re-parses alone to the same result, and one byte short
 *     of it needs more;
 *   - out is filled coherently (version, local, address families).
 * Shorter views are parsed from exact-size heap copies so ASan sees any
 * read past their end.
 *
 * clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -Iingress \
 *   ingress/net/proxy_protocol.c tests/fuzz/fuzz_proxy_protocol.c -o /tmp/fuzz_pp
 * mkdir -p /tmp/pp_corpus && /tmp/fuzz_pp /tmp/pp_corpus tests/fuzz/corpus/proxy_protocol */
#include "net/proxy_protocol.h"

#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) abort();                                                                      \
    } while (0)

/* Parses the first n bytes from an exact-size copy. */
static ssize_t parse_copy(const uint8_t *data, size_t n, sg_proxy_header_t *out)
{
    char *copy = malloc(n ? n : 1);
    ssize_t r;
    CHECK(copy != NULL);
    if (n) memcpy(copy, data, n);
    r = sg_proxy_protocol_parse(copy, n, out);
    free(copy);
    return r;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *d = (const char *)data;
    sg_proxy_header_t h, again;
    ssize_t r, shorter;
    int impossible;

    memset(&h, 0xA5, sizeof(h));
    r = sg_proxy_protocol_parse(d, size, &h);
    impossible = sg_proxy_protocol_impossible(d, size);

    CHECK(r >= -1 && r <= (ssize_t)size);
    CHECK(impossible == 0 || impossible == 1);
    if (impossible) CHECK(r == -1);
    if (size >= SG_PROXY_HEADER_MAX) CHECK(r != 0);
    CHECK(sg_proxy_protocol_parse(d, size, NULL) == r);

    if (size > 0) {
        shorter = parse_copy(data, size - 1, NULL);
        if (shorter < 0) CHECK(r == -1);
        if (shorter > 0) CHECK(r == shorter);
        if (r == 0) CHECK(shorter == 0);
    }

    if (r > 0) {
        CHECK(h.version == (data[0] == 'P' ? 1 : 2));
        CHECK(r <= (h.version == 1 ? SG_PROXY_V1_MAX : SG_PROXY_V2_MAX));
        CHECK(h.local == 0 || h.local == 1);
        if (h.local) {
            CHECK(h.src.ss_family == AF_UNSPEC && h.dst.ss_family == AF_UNSPEC);
        } else {
            CHECK(h.src.ss_family == AF_INET || h.src.ss_family == AF_INET6);
            CHECK(h.dst.ss_family == h.src.ss_family);
        }
        memset(&again, 0x5A, sizeof(again));
        CHECK(parse_copy(data, (size_t)r, &again) == r);
        CHECK(memcmp(&h, &again, sizeof(h)) == 0);
        CHECK(parse_copy(data, (size_t)r - 1, NULL) == 0);
    }
    return 0;
}
