/* The access log: one JSON line per request, to stdout or a file. Any
 * worker may write; every line goes out in one write(2) on an O_APPEND
 * descriptor, so lines never interleave. SIGUSR1 makes main call
 * sg_accesslog_reopen, which swaps the file under the same descriptor
 * number (dup2), so writers never see a closed descriptor. */
#ifndef SG_CORE_ACCESSLOG_H
#define SG_CORE_ACCESSLOG_H

#include "core/strbuf.h"

/* dest: "stdout", "off" or a file path. Returns 0 or -errno. */
int sg_accesslog_open(const char *dest);
int sg_accesslog_reopen(void);
void sg_accesslog_close(void);
int sg_accesslog_enabled(void);
/* Writes one complete line (must end in '\n'). */
void sg_accesslog_write(const char *line, size_t len);

/* Appends s as the contents of a JSON string (no quotes): quotes,
 * backslashes, control and non-ASCII bytes escaped, so any input yields
 * valid JSON. Hand-written because it runs once per request per field. */
void sg_json_escape(sg_strbuf_t *out, const char *s, size_t len);

#endif
