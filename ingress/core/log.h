/* Error log: one line per event on stderr, filtered by level. Safe to call
 * from any worker thread (each line is written with a single write(2)). */
#ifndef SG_CORE_LOG_H
#define SG_CORE_LOG_H

typedef enum { SG_LOG_DEBUG, SG_LOG_INFO, SG_LOG_WARN, SG_LOG_ERROR } sg_log_level_t;

/* Sets the minimum level written; default SG_LOG_INFO. */
void sg_log_set_level(sg_log_level_t level);
/* 1: each line is a JSON object {"time","level","msg"}; 0: plain text. */
void sg_log_set_json(int json);
/* Parses "debug", "info", "warn" or "error"; returns 0 or -1. */
int sg_log_parse_level(const char *name, sg_log_level_t *out);
int sg_log_enabled(sg_log_level_t level);
void sg_log(sg_log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define sg_log_debug(...)                                                                          \
    (sg_log_enabled(SG_LOG_DEBUG) ? sg_log(SG_LOG_DEBUG, __VA_ARGS__) : (void)0)
#define sg_log_info(...) sg_log(SG_LOG_INFO, __VA_ARGS__)
#define sg_log_warn(...) sg_log(SG_LOG_WARN, __VA_ARGS__)
#define sg_log_error(...) sg_log(SG_LOG_ERROR, __VA_ARGS__)

#endif
