/* Prometheus text exposition of every worker's counters, summed at scrape
 * time. Labels stay bounded: status class, error name, source, result. */
#include "proxy/metrics.h"

#include "core/error.h"

#include <stddef.h>
#include <string.h>

static void header(sg_strbuf_t *o, const char *name, const char *type, const char *help)
{
    sg_strbuf_appendf(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static uint64_t sum_at(const sg_worker_t *w, unsigned n, size_t offset)
{
    uint64_t s = 0;
    for (unsigned i = 0; i < n; i++)
        s += sg_counter_get((const sg_counter_t *)((const char *)&w[i] + offset));
    return s;
}

#define W(field) sum_at(w, n, offsetof(sg_worker_t, field))

static void histogram(sg_strbuf_t *o, const sg_worker_t *w, unsigned n, const char *name,
                      const char *help, size_t hist_off, size_t sum_off)
{
    header(o, name, "histogram", help);
    uint64_t cumulative = 0;
    for (size_t b = 0; b <= SG_LATENCY_BUCKETS; b++) {
        cumulative += sum_at(w, n, hist_off + b * sizeof(sg_counter_t));
        if (b < SG_LATENCY_BUCKETS)
            sg_strbuf_appendf(o, "%s_bucket{le=\"%g\"} %llu\n", name,
                              (double)sg_latency_bounds_us[b] / 1e6,
                              (unsigned long long)cumulative);
        else
            sg_strbuf_appendf(o, "%s_bucket{le=\"+Inf\"} %llu\n", name,
                              (unsigned long long)cumulative);
    }
    sg_strbuf_appendf(o, "%s_sum %.6f\n%s_count %llu\n", name, (double)sum_at(w, n, sum_off) / 1e6,
                      name, (unsigned long long)cumulative);
}

/* Only when some worker runs the egress role, so ingress-only hosts do not
 * export a wall of zeros. */
static void egress_metrics(const sg_worker_t *w, unsigned n, sg_strbuf_t *o)
{
    int on = 0;
    for (unsigned i = 0; i < n; i++) on |= w[i].egress_on;
    if (!on) return;
    header(o, "sandgate_egress_decisions_total", "counter",
           "Intercepted sandbox connections by protocol, decision and reason.");
    for (unsigned p = 0; p < SG_EGRESS_PROTO_COUNT; p++)
        for (unsigned d = 0; d < 2; d++)
            for (unsigned r = 0; r < SG_EGRESS_REASON_COUNT; r++)
                sg_strbuf_appendf(o,
                                  "sandgate_egress_decisions_total{protocol=\"%s\",decision=\"%s\","
                                  "reason=\"%s\"} %llu\n",
                                  sg_egress_proto_name(p), d ? "allow" : "deny",
                                  sg_egress_reason_name((sg_egress_reason_t)r),
                                  (unsigned long long)W(stats.egress.decisions[p][d][r]));
    header(o, "sandgate_egress_connections", "gauge", "Open intercepted sandbox connections.");
    sg_strbuf_appendf(o, "sandgate_egress_connections %llu\n",
                      (unsigned long long)W(stats.egress.open));
    header(o, "sandgate_egress_bytes_total", "counter",
           "Bytes spliced for allowed egress connections, by direction.");
    sg_strbuf_appendf(o, "sandgate_egress_bytes_total{direction=\"out\"} %llu\n",
                      (unsigned long long)W(stats.egress.bytes_out));
    sg_strbuf_appendf(o, "sandgate_egress_bytes_total{direction=\"in\"} %llu\n",
                      (unsigned long long)W(stats.egress.bytes_in));
}

void sg_metrics_render(const sg_worker_t *w, unsigned n, int draining, sg_strbuf_t *o)
{
    header(o, "sandgate_requests_total", "counter", "Requests whose head was received.");
    sg_strbuf_appendf(o, "sandgate_requests_total %llu\n", (unsigned long long)W(stats.requests));

    header(o, "sandgate_responses_total", "counter", "Responses by status class.");
    static const char *const classes[] = {"", "1xx", "2xx", "3xx", "4xx", "5xx"};
    for (int k = 1; k <= 5; k++)
        sg_strbuf_appendf(o, "sandgate_responses_total{class=\"%s\"} %llu\n", classes[k],
                          (unsigned long long)W(stats.responses_by_class[k]));

    header(o, "sandgate_errors_total", "counter", "Requests that ended in an error, by code.");
    for (int e = 1; e < SG_ERR__COUNT; e++)
        sg_strbuf_appendf(o, "sandgate_errors_total{code=\"%s\"} %llu\n", sg_err_name(e),
                          (unsigned long long)W(stats.errors[e]));

    header(o, "sandgate_client_connections", "gauge", "Open client connections.");
    sg_strbuf_appendf(o, "sandgate_client_connections %llu\n",
                      (unsigned long long)W(stats.connections_open));
    header(o, "sandgate_client_connections_total", "counter", "Accepted client connections.");
    sg_strbuf_appendf(o, "sandgate_client_connections_total %llu\n",
                      (unsigned long long)W(stats.connections_accepted));
    header(o, "sandgate_client_connections_rejected_total", "counter",
           "Connections refused with 503 because a listener was at max_connections.");
    sg_strbuf_appendf(o, "sandgate_client_connections_rejected_total %llu\n",
                      (unsigned long long)W(stats.connections_rejected));
    header(o, "sandgate_upstream_connections", "gauge", "Open connections to sandboxes.");
    sg_strbuf_appendf(o, "sandgate_upstream_connections %llu\n",
                      (unsigned long long)W(upstreams.stats.open));
    header(o, "sandgate_tunnels", "gauge", "Open upgraded (101) tunnels.");
    sg_strbuf_appendf(o, "sandgate_tunnels %llu\n", (unsigned long long)W(stats.tunnels_open));

    egress_metrics(w, n, o);

    header(o, "sandgate_upstream_pool_total", "counter", "Upstream pool hits and misses.");
    sg_strbuf_appendf(o, "sandgate_upstream_pool_total{result=\"hit\"} %llu\n",
                      (unsigned long long)W(upstreams.stats.hits));
    sg_strbuf_appendf(o, "sandgate_upstream_pool_total{result=\"miss\"} %llu\n",
                      (unsigned long long)W(upstreams.stats.misses));
    header(o, "sandgate_upstream_connects_total", "counter", "Upstream connect outcomes.");
    sg_strbuf_appendf(o, "sandgate_upstream_connects_total{result=\"ok\"} %llu\n",
                      (unsigned long long)W(upstreams.stats.connects_ok));
    sg_strbuf_appendf(o, "sandgate_upstream_connects_total{result=\"failed\"} %llu\n",
                      (unsigned long long)W(upstreams.stats.connect_failures));

    header(o, "sandgate_lookups_total", "counter", "Sandbox lookups by source and result.");
    static const char *const sources[] = {"static", "admin", "dns"};
    static const char *const results[] = {"found", "not_found", "failed", "pending"};
    for (int s = 0; s < 3; s++)
        for (int r = 0; r < 4; r++)
            sg_strbuf_appendf(o, "sandgate_lookups_total{source=\"%s\",result=\"%s\"} %llu\n",
                              sources[s], results[r], (unsigned long long)W(stats.lookups[s][r]));

    header(o, "sandgate_dns_total", "counter", "DNS source activity.");
    static const struct {
        const char *event;
        size_t off;
    } dns_events[] = {
        {"queries", offsetof(sg_worker_t, stats.dns.queries)},
        {"cache_hits", offsetof(sg_worker_t, stats.dns.cache_hits)},
        {"negative_hits", offsetof(sg_worker_t, stats.dns.negative_hits)},
        {"failures", offsetof(sg_worker_t, stats.dns.failures)},
        {"coalesced", offsetof(sg_worker_t, stats.dns.coalesced)},
    };
    for (size_t k = 0; k < sizeof(dns_events) / sizeof(dns_events[0]); k++)
        sg_strbuf_appendf(o, "sandgate_dns_total{event=\"%s\"} %llu\n", dns_events[k].event,
                          (unsigned long long)sum_at(w, n, dns_events[k].off));

    header(o, "sandgate_tls_handshakes_total", "counter", "TLS handshakes by result.");
    sg_strbuf_appendf(o, "sandgate_tls_handshakes_total{result=\"ok\"} %llu\n",
                      (unsigned long long)W(tls_stats.handshakes));
    sg_strbuf_appendf(o, "sandgate_tls_handshakes_total{result=\"resumed\"} %llu\n",
                      (unsigned long long)W(tls_stats.resumed));
    sg_strbuf_appendf(o, "sandgate_tls_handshakes_total{result=\"failed\"} %llu\n",
                      (unsigned long long)W(tls_stats.handshake_failures));
    header(o, "sandgate_tls_handshakes_deferred_total", "counter",
           "ClientHellos that waited for a later loop turn: the turn had spent its handshake "
           "budget (about 0.5 ms) or others were waiting.");
    sg_strbuf_appendf(o, "sandgate_tls_handshakes_deferred_total %llu\n",
                      (unsigned long long)W(tls_stats.deferred));
    header(o, "sandgate_tls_early_input_refused_total", "counter",
           "Connections closed for sending more than 64 KiB while their ClientHello waited for "
           "its turn (no ClientHello is that large); also counted as failed handshakes.");
    sg_strbuf_appendf(o, "sandgate_tls_early_input_refused_total %llu\n",
                      (unsigned long long)W(tls_stats.early_input_refused));

    header(o, "sandgate_bytes_total", "counter", "Bytes from and to clients.");
    sg_strbuf_appendf(o, "sandgate_bytes_total{direction=\"in\"} %llu\n",
                      (unsigned long long)W(stats.bytes_in));
    sg_strbuf_appendf(o, "sandgate_bytes_total{direction=\"out\"} %llu\n",
                      (unsigned long long)W(stats.bytes_out));
    header(o, "sandgate_spliced_bytes_total", "counter",
           "Bytes to clients moved socket to socket by splice(2), never copied to user space "
           "(part of sandgate_bytes_total{direction=\"out\"}).");
    sg_strbuf_appendf(o, "sandgate_spliced_bytes_total %llu\n",
                      (unsigned long long)W(stats.bytes_spliced));
    header(o, "sandgate_spliced_request_bytes_total", "counter",
           "Request body bytes moved from clients to sandboxes by splice(2), never copied to user "
           "space (part of sandgate_bytes_total{direction=\"in\"}).");
    sg_strbuf_appendf(o, "sandgate_spliced_request_bytes_total %llu\n",
                      (unsigned long long)W(stats.bytes_spliced_in));

    header(o, "sandgate_buffer_allocations_total", "counter",
           "64 KiB I/O buffers taken from the heap. Buffers are recycled per worker, so this stays "
           "flat under steady load; it grows with the peak of buffers in use at once.");
    sg_strbuf_appendf(o, "sandgate_buffer_allocations_total %llu\n",
                      (unsigned long long)W(bufs.n_allocs));

    histogram(o, w, n, "sandgate_first_byte_seconds",
              "From request head to the sandbox's response head.",
              offsetof(sg_worker_t, stats.first_byte_hist),
              offsetof(sg_worker_t, stats.first_byte_sum_us));
    histogram(o, w, n, "sandgate_request_duration_seconds",
              "From request head to the end of the exchange.",
              offsetof(sg_worker_t, stats.total_hist), offsetof(sg_worker_t, stats.total_sum_us));

    header(o, "sandgate_workers", "gauge", "Worker threads.");
    sg_strbuf_appendf(o, "sandgate_workers %u\n", n);
    header(o, "sandgate_draining", "gauge", "1 while draining after SIGTERM.");
    sg_strbuf_appendf(o, "sandgate_draining %d\n", draining);
}
