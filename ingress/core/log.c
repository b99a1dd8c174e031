#include "core/log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static _Atomic int sg_log_min = SG_LOG_INFO;
static const char *const sg_log_names[] = {"debug", "info", "warn", "error"};

void sg_log_set_level(sg_log_level_t level)
{
    atomic_store(&sg_log_min, (int)level);
}

int sg_log_parse_level(const char *name, sg_log_level_t *out)
{
    for (int i = 0; i < 4; i++) {
        if (strcmp(name, sg_log_names[i]) == 0) {
            *out = (sg_log_level_t)i;
            return 0;
        }
    }
    return -1;
}

int sg_log_enabled(sg_log_level_t level)
{
    return (int)level >= atomic_load(&sg_log_min);
}

void sg_log(sg_log_level_t level, const char *fmt, ...)
{
    if (!sg_log_enabled(level)) return;
    char line[2048];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     ts.tv_nsec / 1000000, sg_log_names[level]);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof(line) - 2) len = sizeof(line) - 2;
    line[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}
