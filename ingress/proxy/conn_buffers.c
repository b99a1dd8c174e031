/* Request buffers lent to the worker while a connection is idle. */
#include "proxy/conn.h"

#include <stdlib.h>

/* A request needs heap buffers (head bytes, parser spans and header views,
 * the rewritten heads, error pages), a few KiB in all. An idle keep-alive
 * connection needs none of them, and servers keep many idle connections:
 * so a connection hands them to the worker as one kit when it goes idle
 * and takes a kit when its next request starts. A busy worker thus still
 * allocates nothing per request, and memory per idle connection stays what
 * its struct and TLS state need. Kits are bounded per worker; a buffer that
 * grew large (a big head) goes back to the heap instead. */

#define SG_SPARE_KITS 64        /* per worker */
#define SG_SPARE_MAX_BYTES 8192 /* bigger buffers are freed */

struct sg_spare_kit_s {
    sg_spare_kit_t *next;
    sg_strbuf_t req_head, inbuf, req_out, scratch, res_head, res_out;
    sg_h1_span_t *spans[2];
    sg_header_t *headers[2];
    size_t cap_spans[2], cap_headers[2];
};

/* Moves *from into *to (emptied first); a large buffer is freed instead. */
static void strbuf_move(sg_strbuf_t *to, sg_strbuf_t *from)
{
    if (from->cap > SG_SPARE_MAX_BYTES) {
        free(from->base);
        *to = (sg_strbuf_t){0};
    } else {
        *to = (sg_strbuf_t){.base = from->base, .cap = from->cap};
    }
    *from = (sg_strbuf_t){0};
}

/* Into a connection: only where it has no buffer of its own. */
static void strbuf_install(sg_strbuf_t *to, sg_strbuf_t *from)
{
    if (to->base)
        free(from->base);
    else
        *to = *from;
}

void sg_conn_free_spares(sg_worker_t *w)
{
    sg_spare_kit_t *lists[2] = {w->spares, w->spare_holders};
    for (int i = 0; i < 2; i++) {
        for (sg_spare_kit_t *k = lists[i], *next; k; k = next) {
            next = k->next;
            sg_strbuf_free(&k->req_head);
            sg_strbuf_free(&k->inbuf);
            sg_strbuf_free(&k->req_out);
            sg_strbuf_free(&k->scratch);
            sg_strbuf_free(&k->res_head);
            sg_strbuf_free(&k->res_out);
            for (int j = 0; j < 2; j++) {
                free(k->spans[j]);
                free(k->headers[j]);
            }
            free(k);
        }
    }
    w->spares = w->spare_holders = NULL;
    w->n_spare_kits = 0;
}

/* The parser's span and header arrays (http/h1.h: malloc'd, grown by the
 * parser, kept across sg_h1_reset) into kit slot i. */
static inline void parser_move(sg_spare_kit_t *k, int i, sg_h1_parser_t *p)
{
    if (p->cap_spans * sizeof(*p->spans) > SG_SPARE_MAX_BYTES ||
        p->cap_headers * sizeof(*p->headers) > SG_SPARE_MAX_BYTES) {
        sg_h1_free(p);
    }
    k->spans[i] = p->spans;
    k->cap_spans[i] = p->cap_spans;
    k->headers[i] = p->headers;
    k->cap_headers[i] = p->cap_headers;
    p->spans = NULL;
    p->headers = NULL;
    p->cap_spans = p->cap_headers = p->n_spans = 0;
}

static inline void parser_install(sg_h1_parser_t *p, sg_spare_kit_t *k, int i)
{
    if (p->spans) {
        free(k->spans[i]);
    } else {
        p->spans = k->spans[i];
        p->cap_spans = k->cap_spans[i];
    }
    if (p->headers) {
        free(k->headers[i]);
    } else {
        p->headers = k->headers[i];
        p->cap_headers = k->cap_headers[i];
    }
}

void sg_conn_give_request_buffers(sg_conn_t *c)
{
    sg_worker_t *w = c->w;
    c->request = (sg_http_request_t){0};
    c->response = (sg_http_response_t){0};
    if (!c->req_in.gathered.base && !c->inbuf.base && !c->req_out.base && !c->scratch.base &&
        !c->res_in.gathered.base && !c->res_out.base && !c->req.spans && !c->req.headers &&
        !c->res.spans && !c->res.headers)
        return; /* never served a request (or gave everything already) */
    sg_spare_kit_t *k = w->spare_holders;
    if (k) {
        w->spare_holders = k->next;
    } else if (w->n_spare_kits < SG_SPARE_KITS && (k = malloc(sizeof(*k)))) {
        w->n_spare_kits++;
    } else {
        /* Enough spares already: back to the heap. */
        sg_strbuf_free(&c->req_in.gathered);
        sg_strbuf_free(&c->inbuf);
        if (!c->upstream_writes) sg_strbuf_free(&c->req_out);
        sg_strbuf_free(&c->scratch);
        sg_strbuf_free(&c->res_in.gathered);
        if (!c->client_writes) sg_strbuf_free(&c->res_out);
        sg_h1_free(&c->req);
        sg_h1_free(&c->res);
        return;
    }
    /* Every field of k is written: holders are not cleared. */
    strbuf_move(&k->req_head, &c->req_in.gathered);
    strbuf_move(&k->inbuf, &c->inbuf);
    if (!c->upstream_writes)
        strbuf_move(&k->req_out, &c->req_out);
    else
        k->req_out = (sg_strbuf_t){0};
    strbuf_move(&k->scratch, &c->scratch);
    strbuf_move(&k->res_head, &c->res_in.gathered);
    if (!c->client_writes)
        strbuf_move(&k->res_out, &c->res_out);
    else
        k->res_out = (sg_strbuf_t){0};
    parser_move(k, 0, &c->req);
    parser_move(k, 1, &c->res);
    k->next = w->spares;
    w->spares = k;
}

void sg_conn_take_request_buffers(sg_conn_t *c)
{
    sg_worker_t *w = c->w;
    sg_spare_kit_t *k = w->spares;
    if (!k) return;
    w->spares = k->next;
    strbuf_install(&c->req_in.gathered, &k->req_head);
    strbuf_install(&c->inbuf, &k->inbuf);
    strbuf_install(&c->req_out, &k->req_out);
    strbuf_install(&c->scratch, &k->scratch);
    strbuf_install(&c->res_in.gathered, &k->res_head);
    strbuf_install(&c->res_out, &k->res_out);
    parser_install(&c->req, k, 0);
    parser_install(&c->res, k, 1);
    k->next = w->spare_holders;
    w->spare_holders = k;
}
