/* What a finished request leaves behind: counters, latency histograms and
 * one access-log line. Tokens and query strings never appear. */
#include "proxy/conn.h"

#include "core/accesslog.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

const uint64_t sg_latency_bounds_us[SG_LATENCY_BUCKETS] = {
    1000, 5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000};

static void observe_latency(sg_counter_t *hist, sg_counter_t *sum, uint64_t us)
{
    size_t i = 0;
    while (i < SG_LATENCY_BUCKETS && us > sg_latency_bounds_us[i]) i++;
    sg_counter_inc(&hist[i]);
    sg_counter_add(sum, us);
}

static void field_str(sg_strbuf_t *b, const char *name, const char *s, size_t len)
{
    sg_strbuf_appendf(b, ",\"%s\":\"", name);
    sg_json_escape(b, s, len);
    sg_strbuf_append(b, "\"", 1);
}

/* Milliseconds between two stages, or null when a stage was not reached. */
static void field_ms(sg_strbuf_t *b, const char *name, uint64_t from, uint64_t to)
{
    if (from && to >= from)
        sg_strbuf_appendf(b, ",\"%s\":%.3f", name, (double)(to - from) / 1e6);
    else
        sg_strbuf_appendf(b, ",\"%s\":null", name);
}

void sg_conn_observe(sg_conn_t *c, sg_err_t err)
{
    if (!c->in_request) return;
    c->in_request = 0;
    sg_worker_stats_t *st = &c->w->stats;
    int status = err == SG_ERR_NONE ? c->status : sg_err_status(err);
    if (status >= 100 && status < 600) sg_counter_inc(&st->responses_by_class[status / 100]);
    if (err != SG_ERR_NONE) sg_counter_inc(&st->errors[err]);
    uint64_t now = uv_hrtime();
    if (c->t_start) {
        observe_latency(st->total_hist, &st->total_sum_us, (now - c->t_start) / 1000);
        if (c->t_first_byte)
            observe_latency(st->first_byte_hist, &st->first_byte_sum_us,
                            (c->t_first_byte - c->t_start) / 1000);
    }
    if (!sg_accesslog_enabled()) return;

    sg_strbuf_t *b = &c->w->log_line;
    sg_strbuf_reset(b);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    sg_strbuf_appendf(b, "{\"time\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ\"", tm.tm_year + 1900,
                      tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                      ts.tv_nsec / 1000000);
    field_str(b, "client", c->client_addr, strlen(c->client_addr));
    const sg_http_request_t *r = &c->request;
    int have_head = c->req.headers_done && r->method.base;
    field_str(b, "host", c->host.base ? c->host.base : "", c->host.base ? c->host.len : 0);
    field_str(b, "sandbox", c->route.id.base ? c->route.id.base : "",
              c->route.id.base ? c->route.id.len : 0);
    sg_strbuf_appendf(b, ",\"port\":%u", c->route.id.base ? c->route.port : 0);
    field_str(b, "method", have_head ? r->method.base : "", have_head ? r->method.len : 0);
    size_t plen = 0;
    if (have_head) {
        const char *q = memchr(r->target.base, '?', r->target.len);
        plen = q ? (size_t)(q - r->target.base) : r->target.len;
    }
    field_str(b, "path", have_head ? r->target.base : "", plen);
    sg_strbuf_appendf(b, ",\"status\":%d,\"bytes_in\":%llu,\"bytes_out\":%llu", status,
                      (unsigned long long)c->req_bytes_in, (unsigned long long)c->req_bytes_out);
    field_str(b, "upstream", c->upstream_addr, strlen(c->upstream_addr));
    field_ms(b, "connect_ms", c->t_start, c->t_connected);
    field_ms(b, "first_byte_ms", c->t_start, c->t_first_byte);
    field_ms(b, "total_ms", c->t_start, now);
    field_str(b, "error", err == SG_ERR_NONE ? "" : sg_err_name(err),
              err == SG_ERR_NONE ? 0 : strlen(sg_err_name(err)));
    sg_strbuf_append(b, "}\n", 2);
    sg_accesslog_write(b->base, b->len);
}
