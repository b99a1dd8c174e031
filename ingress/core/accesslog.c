#include "core/accesslog.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static _Atomic int log_fd = -1;
static char *log_path; /* NULL for stdout / off */

static int open_path(const char *path)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    return fd < 0 ? -errno : fd;
}

int sg_accesslog_open(const char *dest)
{
    sg_accesslog_close();
    if (!dest || strcmp(dest, "off") == 0) return 0;
    if (strcmp(dest, "stdout") == 0) {
        atomic_store(&log_fd, STDOUT_FILENO);
        return 0;
    }
    int fd = open_path(dest);
    if (fd < 0) return fd;
    log_path = strdup(dest);
    atomic_store(&log_fd, fd);
    return 0;
}

int sg_accesslog_reopen(void)
{
    int fd = atomic_load(&log_fd);
    if (!log_path || fd < 0) return 0;
    int nfd = open_path(log_path);
    if (nfd < 0) return nfd;
    /* dup2 replaces the file behind fd atomically: a concurrent write goes
     * to the old file or the new one, never to a closed descriptor. */
    int rc = dup2(nfd, fd) < 0 ? -errno : 0;
    close(nfd);
    return rc;
}

void sg_accesslog_close(void)
{
    int fd = atomic_exchange(&log_fd, -1);
    if (fd > STDERR_FILENO) close(fd);
    free(log_path);
    log_path = NULL;
}

int sg_accesslog_enabled(void)
{
    return atomic_load_explicit(&log_fd, memory_order_relaxed) >= 0;
}

void sg_accesslog_write(const char *line, size_t len)
{
    int fd = atomic_load_explicit(&log_fd, memory_order_relaxed);
    if (fd < 0) return;
    while (len) {
        ssize_t n = write(fd, line, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return; /* a full disk must not stop the proxy */
        line += n;
        len -= (size_t)n;
    }
}

void sg_json_escape(sg_strbuf_t *out, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    sg_strbuf_reserve(out, len + 8);
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\') {
            char e[2] = {'\\', (char)ch};
            sg_strbuf_append(out, e, 2);
        } else if (ch < 0x20 || ch >= 0x7f) {
            char e[6] = {'\\', 'u', '0', '0', hex[ch >> 4], hex[ch & 15]};
            sg_strbuf_append(out, e, 6);
        } else {
            sg_strbuf_append(out, &s[i], 1);
        }
    }
}
