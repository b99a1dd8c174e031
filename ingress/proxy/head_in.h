/* The bytes a head parser reads, for a request or a response head.
 *
 * The usual case, a head that came whole in one read, is parsed where it
 * arrived: base points into the pooled read buffer `buf`, referenced until
 * reset, so the body bytes that came in the same read can be written from
 * it instead of copied. A head that spans reads is gathered into `gathered`
 * (a copy the head's size: a slow peer does not pin a 64 KiB read buffer).
 * The owner keeps the parser's position; offsets into base stay valid
 * across gather. */
#ifndef SG_PROXY_HEAD_IN_H
#define SG_PROXY_HEAD_IN_H

#include "core/buf.h"
#include "core/strbuf.h"

typedef struct {
    sg_strbuf_t gathered; /* the head's bytes once it spans reads */
    const char *base;     /* the bytes to parse: in buf, or gathered.base */
    size_t len;
    sg_buf_t *buf; /* the read buffer base points into, or NULL */
} sg_head_in_t;

/* Adds the n bytes a read brought (buf->data): viewed in place when nothing
 * is pending, else appended to the gathered copy. Returns the offset in
 * base where they start. */
size_t sg_head_in_add(sg_head_in_t *in, sg_buf_t *buf, size_t n);
/* The head needs more bytes than this read had: bytes viewed in place move
 * to `gathered` and the read buffer goes. No-op once gathered. */
void sg_head_in_gather(sg_head_in_t *in);
/* Drops the first n bytes (a 1xx head passed on). */
void sg_head_in_drop(sg_head_in_t *in, size_t n);
/* Keeps only the first n bytes (the rest went elsewhere). */
void sg_head_in_truncate(sg_head_in_t *in, size_t n);
/* After a reset: takes *sb's bytes as the gathered head, leaving *sb with
 * the old (empty) gathered buffer (pipelined bytes become the next head). */
void sg_head_in_swap_gathered(sg_head_in_t *in, sg_strbuf_t *sb);
/* Forgets the bytes and drops the read buffer; `gathered` keeps its memory. */
void sg_head_in_reset(sg_head_in_t *in);

#endif
