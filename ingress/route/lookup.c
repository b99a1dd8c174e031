#include "route/lookup.h"

#include <string.h>

void sg_lookup_init(sg_lookup_t *lk)
{
    memset(lk, 0, sizeof(*lk));
}

void sg_lookup_add_source(sg_lookup_t *lk, sg_lookup_source_t *src)
{
    if (lk->n_sources < SG_LOOKUP_MAX_SOURCES) lk->sources[lk->n_sources++] = src;
}

/* Walks the chain from req->source_index. Returns 1 when answered. */
static int run_chain(sg_lookup_req_t *req, sg_err_t *err, sg_sandbox_t **out)
{
    sg_lookup_t *lk = req->lookup;
    sg_slice_t id = sg_slice(req->id, req->id_len);
    for (; req->source_index < lk->n_sources; req->source_index++) {
        sg_lookup_source_t *src = lk->sources[req->source_index];
        sg_sandbox_t *sb = NULL;
        switch (src->start(src, req, id, &sb)) {
        case SG_LOOKUP_FOUND:
            *err = SG_ERR_NONE;
            *out = sb;
            return 1;
        case SG_LOOKUP_NOT_FOUND:
            continue;
        case SG_LOOKUP_PENDING:
            req->pending = 1;
            req->pending_source = src;
            return 0;
        case SG_LOOKUP_FAILED:
            *err = SG_ERR_LOOKUP_FAILED;
            *out = NULL;
            return 1;
        }
    }
    *err = SG_ERR_SANDBOX_NOT_FOUND;
    *out = NULL;
    return 1;
}

int sg_lookup_start(sg_lookup_t *lk, sg_lookup_req_t *req, sg_slice_t id, sg_lookup_cb cb,
                    sg_err_t *err, sg_sandbox_t **out)
{
    req->lookup = lk;
    req->cb = cb;
    req->id_len = id.len < SG_SANDBOX_ID_MAX ? id.len : SG_SANDBOX_ID_MAX;
    memcpy(req->id, id.base, req->id_len);
    req->id[req->id_len] = '\0';
    req->source_index = 0;
    req->pending = 0;
    return run_chain(req, err, out);
}

void sg_lookup_cancel(sg_lookup_req_t *req)
{
    if (!req->pending) return;
    sg_lookup_source_t *src = req->pending_source;
    if (src && src->cancel) src->cancel(src, req);
    req->pending = 0;
}

void sg_lookup__source_done(sg_lookup_req_t *req, sg_lookup_result_t result, sg_sandbox_t *sb)
{
    req->pending = 0;
    req->pending_source = NULL;
    sg_err_t err = SG_ERR_NONE;
    sg_sandbox_t *out = NULL;
    if (result == SG_LOOKUP_FOUND) {
        out = sb;
    } else if (result == SG_LOOKUP_FAILED) {
        err = SG_ERR_LOOKUP_FAILED;
    } else {
        req->source_index++;
        if (!run_chain(req, &err, &out)) return; /* a later source went pending */
    }
    req->cb(req, err, out);
}

static sg_lookup_result_t static_start(sg_lookup_source_t *src, sg_lookup_req_t *req, sg_slice_t id,
                                       sg_sandbox_t **out)
{
    sg_sandbox_t *sb = sg_sandbox_table_get(src->data, id);
    if (!sb) return SG_LOOKUP_NOT_FOUND;
    sg_sandbox_ref(sb);
    *out = sb;
    return SG_LOOKUP_FOUND;
}

void sg_lookup_static_init(sg_lookup_source_t *src, const sg_sandbox_table_t *table)
{
    *src = (sg_lookup_source_t){.name = "static",
                                .start = static_start,
                                .cancel = NULL,
                                .data = (void *)table,
                                .metric_index = 0};
}
