/* A fast path in glibc's __sprintf_chk for the one format OpenSSL 3.0 uses
 * to hand out TLS secrets.
 *
 * sandgate protects TLS 1.3 records itself once a handshake is done (tls/
 * record.c), and OpenSSL 3.0 reports the traffic secrets only as key-log
 * lines, which it formats with one sprintf("%02x") per byte: five lines of
 * 80 bytes per handshake, about 380,000 instructions, 13% of a resumed
 * handshake (callgrind, `BENCH_CALLGRIND=conn_tls_resumed`). libssl is
 * built with _FORTIFY_SOURCE, so those calls bind to __sprintf_chk, which
 * this executable defines: the dynamic linker resolves libssl's reference
 * here first. The format "%02x" with a byte value is written directly;
 * every other call goes to glibc's __vsprintf_chk, unchanged.
 *
 * Contract: the same output, return value and overflow checks as glibc's
 * for every call (tests/unit/test_keylog_hexfmt.c compares them). Linked
 * into the sandgate executable only, never into the library, so it cannot
 * end up in some other program by accident. */
#include <stdarg.h>
#include <stddef.h>

int __sprintf_chk(char *s, int flag, size_t slen, const char *format, ...);
int __vsprintf_chk(char *s, int flag, size_t slen, const char *format, va_list ap);

int __sprintf_chk(char *s, int flag, size_t slen, const char *format, ...)
{
    va_list ap;
    va_start(ap, format);
    if (slen >= 3 && format[0] == '%' && format[1] == '0' && format[2] == '2' && format[3] == 'x' &&
        format[4] == '\0') {
        unsigned v = va_arg(ap, unsigned);
        va_end(ap);
        if (v <= 0xff) {
            static const char hex[16] = "0123456789abcdef";
            s[0] = hex[v >> 4];
            s[1] = hex[v & 15];
            s[2] = '\0';
            return 2;
        }
        va_start(ap, format);
    }
    int n = __vsprintf_chk(s, flag, slen, format, ap);
    va_end(ap);
    return n;
}
