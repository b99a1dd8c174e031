/* /v1/sandboxes: register, inspect, list and delete sandboxes in the
 * durable store. Every change is on disk before the response is sent. */
#include "admin/admin_internal.h"

#include "core/log.h"
#include "egress/egress.h"
#include "route/mask.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

#define SG_ADMIN_PAGE_DEFAULT 100
#define SG_ADMIN_PAGE_MAX 1000
#define SG_TOKEN_MAX 1024

static int valid_id(sg_slice_t id)
{
    if (id.len < 1 || id.len > SG_SANDBOX_ID_MAX) return 0;
    for (size_t i = 0; i < id.len; i++) {
        char ch = id.base[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9'))) return 0;
    }
    return 1;
}

static int parse_ip(const char *s, struct sockaddr_storage *out)
{
    memset(out, 0, sizeof(*out));
    struct sockaddr_in *a4 = (struct sockaddr_in *)out;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)out;
    if (inet_pton(AF_INET, s, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        return 0;
    }
    if (inet_pton(AF_INET6, s, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        return 0;
    }
    return -1;
}

static json_t *record_json(const sg_sandbox_t *sb)
{
    char ip[INET6_ADDRSTRLEN] = "";
    if (sb->addr.ss_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)&sb->addr)->sin6_addr, ip, sizeof(ip));
    else
        inet_ntop(AF_INET, &((const struct sockaddr_in *)&sb->addr)->sin_addr, ip, sizeof(ip));
    json_t *o = json_object();
    json_object_set_new(o, "id", json_stringn(sb->id, sb->id_len));
    json_object_set_new(o, "address", json_string(ip));
    json_object_set_new(o, "mask_request_host", sb->mask ? json_string(sb->mask) : json_null());
    /* The token itself is never echoed (only its hash is kept anyway). */
    json_object_set_new(o, "has_traffic_access_token", json_boolean(sb->has_token));
    json_object_set_new(o, "max_incoming_connections",
                        sb->max_connections ? json_integer(sb->max_connections) : json_null());
    sg_egress_policy_to_json(sb->egress_policy, o);
    return o;
}

/* The egress policy fields of a PUT. Network settings are fixed at
 * creation (changing them under running code would be a surprise either
 * way), and with egress on one address belongs to one sandbox, since the
 * source address is how egress traffic finds its policy. Answers the error
 * itself and returns -1, or returns 0 with *out (NULL: default policy). */
static int parse_policy(sg_admin_conn_t *c, json_t *doc, sg_slice_t id,
                        const struct sockaddr_storage *addr, sg_egress_policy_t **out)
{
    char why[512];
    const char *field = "network";
    if (sg_egress_policy_from_json(json_object_get(doc, "allow_internet_access"),
                                   json_object_get(doc, "network"), out, why, sizeof(why),
                                   &field) != 0) {
        sg_admin__error(c, 400, field, "%s", why);
        return -1;
    }
    const sg_sandbox_t *old = sg_store_get(c->admin->store, id);
    if (old && !sg_egress_policy_equal(old->egress_policy, *out)) {
        sg_egress_policy_free(*out);
        sg_admin__error(c, 409, "network",
                        "network settings are fixed at creation; delete and re-create the sandbox");
        return -1;
    }
    const sg_sandbox_t *owner =
        c->admin->egress ? sg_egress_find(c->admin->egress, (const struct sockaddr *)addr) : NULL;
    if (owner && (owner->id_len != id.len || memcmp(owner->id, id.base, id.len) != 0)) {
        sg_egress_policy_free(*out);
        sg_admin__error(c, 409, "address",
                        "address is used by sandbox '%s'; egress policies need one address per "
                        "sandbox",
                        owner->id);
        return -1;
    }
    return 0;
}

/* After a durable change: the egress table and nftables rules follow. The
 * change itself is on disk already; a ruleset nft refused is a 500 so the
 * caller knows enforcement lags (the previous rules stay loaded, whole). */
static int sync_egress(sg_admin_conn_t *c)
{
    if (!c->admin->egress) return 0;
    char err[1024];
    if (sg_egress_sync(c->admin->egress, c->admin->store, err, sizeof(err)) == 0) return 0;
    sg_log_error("egress: nftables rules not updated: %s", err);
    sg_admin__error(c, 500, NULL, "stored, but the nftables rules could not be loaded: %s", err);
    return -1;
}

/* After a delete or a replacing put: the proxy cuts the sandbox's live
 * connections and the idle pooled ones to its old address. */
static void report_removed(sg_admin_t *a, sg_slice_t id, const struct sockaddr_storage *old_addr)
{
    if (!a->hooks.sandbox_removed) return;
    char idz[SG_SANDBOX_ID_MAX + 1];
    memcpy(idz, id.base, id.len);
    idz[id.len] = '\0';
    a->hooks.sandbox_removed(a->hooks.ctx, idz, old_addr);
}

static void put_sandbox(sg_admin_conn_t *c, sg_slice_t id, sg_slice_t body)
{
    json_error_t jerr;
    json_t *doc = json_loadb(body.base, body.len, JSON_REJECT_DUPLICATES, &jerr);
    if (!doc) {
        sg_admin__error(c, 400, NULL, "invalid JSON: %s (line %d)", jerr.text, jerr.line);
        return;
    }
    if (!json_is_object(doc)) {
        json_decref(doc);
        sg_admin__error(c, 400, NULL, "the body must be a JSON object");
        return;
    }
    const char *key;
    json_t *val;
    json_object_foreach(doc, key, val)
    {
        if (strcmp(key, "address") && strcmp(key, "mask_request_host") &&
            strcmp(key, "traffic_access_token") && strcmp(key, "max_incoming_connections") &&
            strcmp(key, "allow_internet_access") && strcmp(key, "network")) {
            sg_admin__error(c, 400, key, "unknown field '%s'", key);
            json_decref(doc);
            return;
        }
    }
    struct sockaddr_storage addr;
    json_t *jaddr = json_object_get(doc, "address");
    if (!json_is_string(jaddr) || parse_ip(json_string_value(jaddr), &addr) != 0) {
        sg_admin__error(c, 400, "address", "'address' must be an IPv4 or IPv6 literal");
        json_decref(doc);
        return;
    }
    const char *mask = NULL;
    json_t *jmask = json_object_get(doc, "mask_request_host");
    if (jmask && !json_is_null(jmask)) {
        const char *why =
            json_is_string(jmask)
                ? sg_mask_validate(sg_slice(json_string_value(jmask), json_string_length(jmask)))
                : "must be a string";
        if (why) {
            sg_admin__error(c, 400, "mask_request_host", "'mask_request_host' %s", why);
            json_decref(doc);
            return;
        }
        mask = json_string_value(jmask);
    }
    json_t *jtok = json_object_get(doc, "traffic_access_token");
    if (jtok && !json_is_null(jtok)) {
        int ok = json_is_string(jtok) && json_string_length(jtok) >= 1 &&
                 json_string_length(jtok) <= SG_TOKEN_MAX;
        for (size_t i = 0; ok && i < json_string_length(jtok); i++) {
            unsigned char ch = (unsigned char)json_string_value(jtok)[i];
            if (ch <= 0x20 || ch >= 0x7f) ok = 0;
        }
        if (!ok) {
            sg_admin__error(c, 400, "traffic_access_token",
                            "'traffic_access_token' must be 1..%d visible ASCII characters",
                            SG_TOKEN_MAX);
            json_decref(doc);
            return;
        }
    }
    json_t *jmax = json_object_get(doc, "max_incoming_connections");
    json_int_t max = 0;
    if (jmax && !json_is_null(jmax)) {
        if (!json_is_integer(jmax) || json_integer_value(jmax) < 1 ||
            json_integer_value(jmax) > 1000000) {
            sg_admin__error(c, 400, "max_incoming_connections",
                            "'max_incoming_connections' must be an integer 1..1000000");
            json_decref(doc);
            return;
        }
        max = json_integer_value(jmax);
    }
    sg_egress_policy_t *policy = NULL;
    if (parse_policy(c, doc, id, &addr, &policy) != 0) {
        json_decref(doc);
        return;
    }
    sg_sandbox_t *sb = sg_sandbox_new(id, &addr, mask);
    sb->source = "admin";
    sb->max_connections = (unsigned)max;
    sb->egress_policy = policy;
    if (jtok && json_is_string(jtok))
        sg_sandbox_set_token(sb, sg_slice(json_string_value(jtok), json_string_length(jtok)));
    json_decref(doc);

    json_t *out = record_json(sb);
    /* The admin thread is the store's only writer: the old record stays
     * valid until our own put replaces it. */
    const sg_sandbox_t *old = sg_store_get(c->admin->store, id);
    struct sockaddr_storage old_addr = old ? old->addr : (struct sockaddr_storage){0};
    int created = 0;
    int rc = sg_store_put(c->admin->store, sb, &created); /* takes our reference */
    if (rc != 0) {
        json_decref(out);
        sg_log_error("admin: store write failed: %s", strerror(-rc));
        sg_admin__error(c, 500, NULL, "could not persist the sandbox: %s", strerror(-rc));
        return;
    }
    /* A replaced sandbox may have moved: connections to the old VM go. */
    if (!created) report_removed(c->admin, id, &old_addr);
    if (sync_egress(c) != 0) {
        json_decref(out);
        return;
    }
    sg_admin__respond_json(c, created ? 201 : 200, out);
}

static void list_sandboxes(sg_admin_conn_t *c, sg_slice_t query)
{
    size_t limit = SG_ADMIN_PAGE_DEFAULT;
    char after[SG_SANDBOX_ID_MAX + 1] = "";
    /* query: limit=N&after=ID, nothing else */
    const char *p = query.base, *end = query.base ? query.base + query.len : NULL;
    while (p && p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *stop = amp ? amp : end;
        if ((size_t)(stop - p) >= 6 && memcmp(p, "limit=", 6) == 0) {
            char num[16] = "";
            size_t n = (size_t)(stop - p - 6);
            if (n >= sizeof(num)) n = sizeof(num) - 1;
            memcpy(num, p + 6, n);
            char *e;
            long v = strtol(num, &e, 10);
            if (*e || v < 1 || v > SG_ADMIN_PAGE_MAX) {
                sg_admin__error(c, 400, "limit", "'limit' must be 1..%d", SG_ADMIN_PAGE_MAX);
                return;
            }
            limit = (size_t)v;
        } else if ((size_t)(stop - p) >= 6 && memcmp(p, "after=", 6) == 0) {
            sg_slice_t a = sg_slice(p + 6, (size_t)(stop - p - 6));
            if (a.len && !valid_id(a)) {
                sg_admin__error(c, 400, "after", "'after' must be a sandbox id");
                return;
            }
            memcpy(after, a.base, a.len);
            after[a.len] = '\0';
        } else if (stop > p) {
            sg_admin__error(c, 400, NULL, "unknown query parameter");
            return;
        }
        p = amp ? amp + 1 : NULL;
    }
    sg_sandbox_t **page = calloc(limit, sizeof(*page));
    if (!page) abort();
    int more = 0;
    size_t n = sg_store_list(c->admin->store, after, limit, page, &more);
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++) json_array_append_new(arr, record_json(page[i]));
    json_t *o = json_object();
    json_object_set_new(o, "sandboxes", arr);
    json_object_set_new(
        o, "next", more && n ? json_stringn(page[n - 1]->id, page[n - 1]->id_len) : json_null());
    free(page);
    sg_admin__respond_json(c, 200, o);
}

void sg_admin__sandboxes(sg_admin_conn_t *c, sg_slice_t rest, sg_slice_t query, sg_slice_t body)
{
    sg_admin_t *a = c->admin;
    sg_slice_t m = c->request.method;
    if (!a->store) {
        sg_admin__error(c, 404, NULL, "the sandbox store is not enabled");
        return;
    }
    if (rest.len <= 1) {
        if (!sg_slice_eq_nocase(m, SG_SLICE_LIT("GET")) && !c->head_only) {
            sg_admin__error(c, 405, NULL, "method not allowed");
            return;
        }
        list_sandboxes(c, query);
        return;
    }
    sg_slice_t id = sg_slice(rest.base + 1, rest.len - 1);
    if (!valid_id(id)) {
        sg_admin__error(c, 400, "id", "sandbox id must match [a-z0-9]{1,64}");
        return;
    }
    if (sg_slice_eq_nocase(m, SG_SLICE_LIT("PUT"))) {
        put_sandbox(c, id, body);
    } else if (sg_slice_eq_nocase(m, SG_SLICE_LIT("GET")) || c->head_only) {
        sg_sandbox_t *sb = sg_store_get(a->store, id);
        if (!sb) {
            sg_admin__error(c, 404, NULL, "no sandbox '%.*s'", (int)id.len, id.base);
            return;
        }
        sg_admin__respond_json(c, 200, record_json(sb));
    } else if (sg_slice_eq_nocase(m, SG_SLICE_LIT("DELETE"))) {
        const sg_sandbox_t *old = sg_store_get(a->store, id);
        struct sockaddr_storage old_addr = old ? old->addr : (struct sockaddr_storage){0};
        int existed = 0;
        int rc = sg_store_delete(a->store, id, &existed);
        if (rc != 0) {
            sg_admin__error(c, 500, NULL, "could not persist the deletion: %s", strerror(-rc));
            return;
        }
        if (!existed) {
            sg_admin__error(c, 404, NULL, "no sandbox '%.*s'", (int)id.len, id.base);
            return;
        }
        report_removed(a, id, &old_addr);
        if (sync_egress(c) != 0) return;
        sg_admin__respond(c, 204, NULL, NULL, 0);
    } else {
        sg_admin__error(c, 405, NULL, "method not allowed");
    }
}
