/* LD_PRELOAD shim for wrk's TLS client (tests/load only).
 *
 * wrk names the TLS server by the host of its URL (127.0.0.1 here), and
 * keeps one SSL object per connection slot, so whether it resumes sessions
 * depends on OpenSSL's SSL_clear() behaviour. This shim makes both explicit:
 *   BENCH_SNI=name     send this SNI instead of wrk's
 *   BENCH_RESUME=0     drop the cached session before each handshake (every
 *                      handshake is a full one); 1 (default) leaves wrk alone
 * and on exit prints one line to stderr:
 *   TLSSHIM handshakes=N resumed=M version=TLSv1.3 cipher=... group=...
 * so the benchmark can report what the client actually did. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <openssl/objects.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static unsigned long n_hs, n_resumed;
static char version[32], cipher[96], group[32];

long SSL_ctrl(SSL *s, int cmd, long larg, void *parg)
{
    static long (*real)(SSL *, int, long, void *);
    if (!real) real = (long (*)(SSL *, int, long, void *))dlsym(RTLD_NEXT, "SSL_ctrl");
    if (cmd == SSL_CTRL_SET_TLSEXT_HOSTNAME) {
        const char *sni = getenv("BENCH_SNI");
        if (sni && *sni) parg = (void *)sni;
    }
    return real(s, cmd, larg, parg);
}

int SSL_connect(SSL *s)
{
    static int (*real)(SSL *);
    static int resume = -1;
    if (!real) real = (int (*)(SSL *))dlsym(RTLD_NEXT, "SSL_connect");
    if (resume < 0) {
        const char *r = getenv("BENCH_RESUME");
        resume = !(r && strcmp(r, "0") == 0);
    }
    /* SSL_connect is called again while the handshake wants I/O; only
     * touch the session before the first flight. */
    if (!resume && SSL_in_before(s)) SSL_set_session(s, NULL);
    int rc = real(s);
    if (rc == 1) {
        n_hs++;
        if (SSL_session_reused(s)) n_resumed++;
        if (!version[0]) {
            snprintf(version, sizeof version, "%s", SSL_get_version(s));
            snprintf(cipher, sizeof cipher, "%s", SSL_get_cipher_name(s));
            int nid = SSL_get_negotiated_group(s);
            const char *g = nid ? OBJ_nid2sn(nid) : "?";
            snprintf(group, sizeof group, "%s", g ? g : "?");
        }
    }
    return rc;
}

__attribute__((destructor)) static void report(void)
{
    fprintf(stderr, "TLSSHIM handshakes=%lu resumed=%lu version=%s cipher=%s group=%s\n", n_hs,
            n_resumed, version[0] ? version : "-", cipher[0] ? cipher : "-",
            group[0] ? group : "-");
}
