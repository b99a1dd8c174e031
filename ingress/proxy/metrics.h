/* Prometheus text exposition for GET /metrics. */
#ifndef SG_PROXY_METRICS_H
#define SG_PROXY_METRICS_H

#include "core/strbuf.h"
#include "proxy/worker.h"

/* Reads every worker's counters (relaxed loads; workers keep running) and
 * appends the exposition to out. */
void sg_metrics_render(const sg_worker_t *workers, unsigned n, int draining, sg_strbuf_t *out);

#endif
