#include "core/log.h"

#include "core/accesslog.h"
#include "core/strbuf.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static _Atomic int sg_log_min = SG_LOG_INFO;
static _Atomic int sg_log_json;

void sg_log_set_json(int json)
{
    atomic_store(&sg_log_json, json);
}
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
    char msg[1536];
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (m < 0) return;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char stamp[64];
    snprintf(stamp, sizeof(stamp), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
             (int)(ts.tv_nsec / 1000000));
    sg_strbuf_t line = {0};
    if (atomic_load(&sg_log_json)) {
        sg_strbuf_appendf(&line, "{\"time\":\"%s\",\"level\":\"%s\",\"msg\":\"", stamp,
                          sg_log_names[level]);
        sg_json_escape(&line, msg, strlen(msg));
        sg_strbuf_append_cstr(&line, "\"}\n");
    } else {
        sg_strbuf_appendf(&line, "%s %s %s\n", stamp, sg_log_names[level], msg);
    }
    ssize_t w = write(STDERR_FILENO, line.base, line.len);
    (void)w;
    sg_strbuf_free(&line);
}
