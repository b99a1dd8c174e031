/* Shared by the admin server files. */
#ifndef SG_ADMIN_INTERNAL_H
#define SG_ADMIN_INTERNAL_H

#include "admin/admin.h"
#include "http/h1.h"

#include <jansson.h>
#include <strings.h>

typedef struct sg_admin_conn_s sg_admin_conn_t;

struct sg_admin_s {
    uv_loop_t *loop;
    sg_store_t *store;
    struct sg_egress_s *egress; /* NULL: egress role off */
    sg_admin_hooks_t hooks;
    char *token;
    uv_tcp_t *listeners;
    size_t n_listeners, open_listeners;
    sg_admin_conn_t *conns;
    int closing;
};

struct sg_admin_conn_s {
    uv_tcp_t tcp;
    sg_admin_t *admin;
    sg_admin_conn_t *prev, *next;
    sg_strbuf_t in;  /* received bytes; the current request starts at 0 */
    size_t parsed;   /* bytes of `in` given to the parser */
    size_t consumed; /* length of the request being answered */
    sg_strbuf_t out; /* response being written */
    sg_h1_parser_t parser;
    sg_http_request_t request;
    uv_write_t write_req;
    unsigned keep_alive : 1, head_only : 1, writing : 1, closing : 1;
};

void sg_admin__alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *out);
void sg_admin__respond(sg_admin_conn_t *c, int status, const char *content_type, const char *body,
                       size_t len);
/* Takes the reference to body. */
void sg_admin__respond_json(sg_admin_conn_t *c, int status, json_t *body);
/* {"message": ..., "field": ..., "code": status}; field may be NULL. */
void sg_admin__error(sg_admin_conn_t *c, int status, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* /v1/sandboxes[/{id}]: rest is what follows "/v1/sandboxes". */
void sg_admin__sandboxes(sg_admin_conn_t *c, sg_slice_t rest, sg_slice_t query, sg_slice_t body);

#endif
