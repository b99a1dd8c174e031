#include "proxy/head_in.h"

#include <string.h>

size_t sg_head_in_add(sg_head_in_t *in, sg_buf_t *buf, size_t n)
{
    if (!in->len) {
        sg_head_in_reset(in);
        sg_buf_ref(buf);
        in->buf = buf;
        in->base = buf->data;
        in->len = n;
        return 0;
    }
    size_t start = in->len;
    sg_strbuf_append(&in->gathered, buf->data, n);
    in->base = in->gathered.base;
    in->len = in->gathered.len;
    return start;
}

void sg_head_in_gather(sg_head_in_t *in)
{
    if (!in->buf) return;
    sg_strbuf_reset(&in->gathered);
    sg_strbuf_append(&in->gathered, in->base, in->len);
    sg_buf_unref(in->buf);
    in->buf = NULL;
    in->base = in->gathered.base;
}

void sg_head_in_drop(sg_head_in_t *in, size_t n)
{
    if (in->buf) {
        in->base += n; /* viewed in place: only the view moves */
    } else {
        memmove(in->gathered.base, in->gathered.base + n, in->gathered.len - n);
        in->gathered.len -= n;
    }
    in->len -= n;
}

void sg_head_in_truncate(sg_head_in_t *in, size_t n)
{
    in->len = n;
    if (!in->buf) in->gathered.len = n;
}

void sg_head_in_swap_gathered(sg_head_in_t *in, sg_strbuf_t *sb)
{
    sg_strbuf_t tmp = in->gathered;
    in->gathered = *sb;
    *sb = tmp;
    in->base = in->gathered.base;
    in->len = in->gathered.len;
}

void sg_head_in_reset(sg_head_in_t *in)
{
    if (in->buf) sg_buf_unref(in->buf);
    in->buf = NULL;
    in->base = NULL;
    in->len = 0;
    sg_strbuf_reset(&in->gathered);
}
