/* libFuzzer harness for sg_dns_apply_txt, the parser of TXT settings that
 * arrive from DNS (data from whoever controls the zone or the path to it).
 *
 * The input is applied twice: whole, as one TXT string, to a fresh record;
 * then split on '\n' as a sequence of strings (one RRset) to a second record,
 * stopping at the first error as the source does. Checked after each:
 * a success leaves a valid record (mask accepted by sg_mask_validate, limit
 * in range), a failure sets a reason. ASan/UBSan catch the rest.
 *
 * Build and run: FUZZ_ONLY=dns_txt tests/fuzz/run.sh [SECONDS] (see run.sh);
 * by hand, from the repository root:
 *   clang -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -Iingress \
 *     ingress/core/slice.c ingress/core/strbuf.c ingress/route/sandbox.c ingress/route/mask.c \
 *     ingress/route/dns_txt.c tests/fuzz/fuzz_dns_txt.c -lcrypto -o /tmp/fuzz_dns_txt
 *   mkdir -p /tmp/dns_txt_corpus
 *   /tmp/fuzz_dns_txt -max_total_time=60 /tmp/dns_txt_corpus tests/fuzz/corpus/dns_txt
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "route/dns.h"
#include "route/mask.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static sg_sandbox_t *fresh(void)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    ss.ss_family = AF_INET;
    return sg_sandbox_new(SG_SLICE_LIT("fuzz"), &ss, NULL);
}

static void check(const sg_sandbox_t *rec, int rc, const char *why)
{
    if (rc != 0) {
        if (rc != -1 || !why || !*why) abort();
        return;
    }
    if (rec->mask && sg_mask_validate(sg_slice_cstr(rec->mask)) != NULL) abort();
    if (rec->max_connections > 1000000) abort();
    if (rec->has_token != 0 && rec->has_token != 1) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* a private copy of exactly size bytes, so reads past the end are caught */
    char *buf = malloc(size ? size : 1);
    if (!buf) return 0;
    if (size) memcpy(buf, data, size);

    sg_sandbox_t *rec = fresh();
    const char *why = NULL;
    check(rec, sg_dns_apply_txt(rec, buf, size, &why), why);
    sg_sandbox_unref(rec);

    rec = fresh();
    size_t start = 0;
    for (size_t i = 0; i <= size; i++) {
        if (i < size && buf[i] != '\n') continue;
        why = NULL;
        int rc = sg_dns_apply_txt(rec, buf + start, i - start, &why);
        check(rec, rc, why);
        if (rc != 0) break;
        start = i + 1;
    }
    sg_sandbox_unref(rec);
    free(buf);
    return 0;
}
