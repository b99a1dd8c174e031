/* Sandbox lookup: one asynchronous, cancellable interface over an ordered
 * chain of sources (static config now; admin store and DNS plug in as more
 * sources). Each worker owns one sg_lookup_t; requests never cross threads.
 *
 * Contract: sg_lookup_start either answers at once (returns 1 with *err and
 * *out set; the callback never fires) or returns 0 and fires the callback
 * exactly once later from the loop, unless sg_lookup_cancel is called first
 * (then it never fires). A found record is passed with one reference that
 * the receiver must drop with sg_sandbox_unref. */
#ifndef SG_ROUTE_LOOKUP_H
#define SG_ROUTE_LOOKUP_H

#include "core/error.h"
#include "route/sandbox.h"

typedef struct sg_lookup_s sg_lookup_t;
typedef struct sg_lookup_req_s sg_lookup_req_t;
typedef struct sg_lookup_source_s sg_lookup_source_t;

typedef void (*sg_lookup_cb)(sg_lookup_req_t *req, sg_err_t err, sg_sandbox_t *sb);

/* What a source answers for one id. */
typedef enum {
    SG_LOOKUP_FOUND,     /* *out holds a reference */
    SG_LOOKUP_NOT_FOUND, /* try the next source */
    SG_LOOKUP_PENDING,   /* the source calls sg_lookup__source_done later */
    SG_LOOKUP_FAILED     /* the source could not answer (503 lookup_failed) */
} sg_lookup_result_t;

struct sg_lookup_source_s {
    const char *name;
    sg_lookup_result_t (*start)(sg_lookup_source_t *src, sg_lookup_req_t *req, sg_slice_t id,
                                sg_sandbox_t **out);
    /* Forget a PENDING request; the source must not report it afterwards. */
    void (*cancel)(sg_lookup_source_t *src, sg_lookup_req_t *req);
    void *data;
    unsigned metric_index; /* sg_source_kind_t, for per-source counters */
};

struct sg_lookup_req_s {
    sg_lookup_t *lookup;
    sg_lookup_cb cb;
    void *data; /* caller's */
    char id[SG_SANDBOX_ID_MAX + 1];
    size_t id_len;
    size_t source_index;                /* source currently answering */
    sg_lookup_source_t *pending_source; /* the one to cancel (the chain may be rebuilt) */
    int pending;
};

#define SG_LOOKUP_MAX_SOURCES 4

struct sg_lookup_s {
    sg_lookup_source_t *sources[SG_LOOKUP_MAX_SOURCES];
    size_t n_sources;
};

void sg_lookup_init(sg_lookup_t *lk);
void sg_lookup_add_source(sg_lookup_t *lk, sg_lookup_source_t *src);

int sg_lookup_start(sg_lookup_t *lk, sg_lookup_req_t *req, sg_slice_t id, sg_lookup_cb cb,
                    sg_err_t *err, sg_sandbox_t **out);
void sg_lookup_cancel(sg_lookup_req_t *req);

/* For sources: report the answer to a PENDING request. */
void sg_lookup__source_done(sg_lookup_req_t *req, sg_lookup_result_t result, sg_sandbox_t *sb);

/* The static source: answers from an immutable table (borrowed; must outlive
 * the source). */
void sg_lookup_static_init(sg_lookup_source_t *src, const sg_sandbox_table_t *table);

#endif
