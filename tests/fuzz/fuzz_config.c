/* libFuzzer harness for the configuration file parser, sg_config_parse_text
 * (config/config.h). The input is the YAML text. Beyond "no crash, no leak":
 *   - the result is 0 with a snapshot or -1 without one;
 *   - on -1 the error text is non-empty and every line of it is
 *     "<source>:<line>: <message>" with 1 <= line <= the text's lines + 2, or
 *     "<source>: <message>" (whole-file checks, the "too many errors" cap);
 *     a short buffer gets a NUL-terminated prefix of the same text, and a
 *     NULL buffer is allowed;
 *   - on 0 the snapshot keeps the promises of config.h (>= 1 listener and
 *     domain, lower-case domains without a leading dot, workers resolved,
 *     unique valid sandbox ids, valid masks, one default certificate, a
 *     resolved lookup order), and sg_config_dump renders YAML that parses
 *     again to a snapshot that dumps identically and needs no restart.
 * The text is given as an exact-size heap copy (no NUL after it). */
#include "config/config.h"
#include "route/mask.h"

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

#define SOURCE "fuzz.yaml"
#define ERR_MAX 8192

/* One message per line, printable (F11: keys and values used to be quoted
 * raw, so a quoted "a\nb" or a folded scalar split a message). */
static void check_errors(const char *err, size_t text_lines)
{
    const size_t sl = strlen(SOURCE);
    CHECK(err[0] != '\0');
    for (const char *line = err; line;) {
        const char *nl = strchr(line, '\n');
        size_t len = nl ? (size_t)(nl - line) : strlen(line);
        int is_msg = len > sl + 2 && memcmp(line, SOURCE ":", sl + 1) == 0;
        for (size_t i = 0; i < len; i++)
            CHECK((unsigned char)line[i] >= 0x20 && (unsigned char)line[i] != 0x7f);
        CHECK(is_msg);
        const char *p = line + sl + 1;
        if (*p == ' ') {
            CHECK(len > sl + 2); /* "<source>: <message>" */
        } else {
            size_t n = 0, digits = 0;
            while (*p >= '0' && *p <= '9' && digits < 12)
                n = n * 10 + (size_t)(*p++ - '0'), digits++;
            CHECK(digits > 0 && p[0] == ':' && p[1] == ' ');
            CHECK(n >= 1 && n <= text_lines);
            CHECK((size_t)(p + 2 - line) < len); /* a message follows */
        }
        line = nl ? nl + 1 : NULL;
    }
}

static int lower_domain(const char *d)
{
    if (!d || !d[0] || d[0] == '.') return 0;
    for (const char *p = d; *p; p++)
        if (*p >= 'A' && *p <= 'Z') return 0;
    return 1;
}

static void check_snapshot(const sg_config_t *c)
{
    CHECK(c->n_listens >= 1 && c->listens != NULL);
    CHECK(c->n_domains >= 1 && c->domains != NULL);
    for (size_t i = 0; i < c->n_domains; i++) CHECK(lower_domain(c->domains[i]));
    CHECK(c->workers >= 1);
    CHECK(c->n_lookup_order >= 1 && c->n_lookup_order <= 3);
    CHECK(c->token_header && c->token_header[0]);
    for (size_t i = 0; i < c->n_sandboxes; i++) {
        const sg_sandbox_conf_t *s = &c->sandboxes[i];
        size_t len = strnlen(s->id, sizeof(s->id));
        CHECK(len >= 1 && len <= SG_SANDBOX_ID_MAX);
        for (size_t k = 0; k < len; k++)
            CHECK((s->id[k] >= 'a' && s->id[k] <= 'z') || (s->id[k] >= '0' && s->id[k] <= '9'));
        for (size_t j = 0; j < i; j++) CHECK(strcmp(c->sandboxes[j].id, s->id) != 0);
        if (s->mask) CHECK(sg_mask_validate(sg_slice_cstr(s->mask)) == NULL);
    }
    if (c->tls.n_certs) {
        size_t defaults = 0;
        for (size_t i = 0; i < c->tls.n_certs; i++) defaults += c->tls.certs[i].is_default != 0;
        CHECK(defaults == 1);
    }
    for (size_t i = 0; i < c->n_listens; i++)
        if (c->listens[i].tls) CHECK(c->tls.n_certs >= 1);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 64 * 1024) return 0;
    char *text = malloc(size ? size : 1);
    char *err = malloc(ERR_MAX);
    CHECK(text && err);
    if (size) memcpy(text, data, size);
    /* An upper bound on the lines libyaml counts: it breaks lines at CR, LF,
     * NEL and U+2028/2029, and may report the line after the last one. */
    size_t text_lines = 2;
    for (size_t i = 0; i < size; i++)
        text_lines += data[i] == '\n' || data[i] == '\r' || data[i] == 0x85 ||
                      (data[i] == 0xe2 && i + 2 < size && data[i + 1] == 0x80 &&
                       (data[i + 2] == 0xa8 || data[i + 2] == 0xa9));

    sg_config_t *c = (sg_config_t *)1;
    memset(err, 'x', ERR_MAX);
    int rc = sg_config_parse_text(text, size, SOURCE, &c, err, ERR_MAX);
    CHECK(rc == 0 || rc == -1);
    CHECK(memchr(err, '\0', ERR_MAX) != NULL);

    /* Same verdict, truncated text, or none at all, with smaller buffers. */
    size_t small_len = 1 + size % 40;
    char *small = malloc(small_len);
    CHECK(small != NULL);
    sg_config_t *c2 = (sg_config_t *)1;
    CHECK(sg_config_parse_text(text, size, SOURCE, &c2, small, small_len) == rc);
    CHECK(memchr(small, '\0', small_len) != NULL);
    if (strlen(err) < ERR_MAX - 1) CHECK(strncmp(small, err, strlen(small)) == 0);
    free(small);
    sg_config_unref(c2 == (sg_config_t *)1 ? NULL : c2);
    sg_config_t *c3 = (sg_config_t *)1;
    CHECK(sg_config_parse_text(text, size, SOURCE, &c3, NULL, 0) == rc);
    sg_config_unref(c3 == (sg_config_t *)1 ? NULL : c3);

    if (rc != 0) {
        CHECK(c == NULL);
        check_errors(err, text_lines);
    } else {
        CHECK(c != NULL);
        check_snapshot(c);
        /* dump -> parse -> dump is a fixed point; nothing needs a restart. */
        char *dump = sg_config_dump(c);
        CHECK(dump != NULL);
        sg_config_t *again = NULL;
        int rc2 = sg_config_parse_text(dump, strlen(dump), SOURCE, &again, err, ERR_MAX);
        if (rc2 != 0) fprintf(stderr, "dump does not parse:\n%s\n--\n%s\n", dump, err);
        CHECK(rc2 == 0 && again != NULL);
        check_snapshot(again);
        char *dump2 = sg_config_dump(again);
        if (strcmp(dump, dump2) != 0) fprintf(stderr, "dumps differ:\n%s\n--\n%s\n", dump, dump2);
        CHECK(strcmp(dump, dump2) == 0);
        CHECK(sg_config_restart_key(c, again) == NULL);
        CHECK(sg_config_restart_key(again, c) == NULL);
        free(dump);
        free(dump2);
        sg_config_unref(again);
        sg_config_unref(c);
    }
    free(err);
    free(text);
    return 0;
}
