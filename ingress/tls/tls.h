/* TLS termination: certificate store chosen by SNI, session-ticket keys
 * shared by every worker, and a TLS implementation of sg_stream_t.
 * OpenSSL types never leave tls/: callers see only these declarations. */
#ifndef SG_TLS_TLS_H
#define SG_TLS_TLS_H

#include "core/counter.h"
#include "net/stream.h"
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

typedef struct sg_tls_store_s sg_tls_store_t;

typedef struct {
    const char *chain_path; /* PEM: leaf first, then intermediates */
    const char *key_path;   /* PEM private key */
    int is_default;         /* serves clients without (or with unknown) SNI */
} sg_tls_cert_conf_t;

/* Process-wide set-up (BIO method, ticket keys). Call once from main before
 * workers start. Returns 0 or -1. */
int sg_tls_global_init(void);
void sg_tls_global_cleanup(void);

/* Makes new ticket keys current; the previous ones still decrypt. Called by
 * main on a timer so resumption works on any worker and across reloads. */
void sg_tls_rotate_ticket_keys(void);

/* Loads every certificate, checks it matches its key, is within its
 * validity period and covers only names under `domains`. On failure returns
 * -1 with one "path: message" line per problem in err. warn receives
 * near-expiry warnings (may be empty). */
int sg_tls_store_load(const sg_tls_cert_conf_t *certs, size_t n, char *const *domains,
                      size_t n_domains, uint64_t expiry_warn_seconds, sg_tls_store_t **out,
                      char *err, size_t errlen, char *warn, size_t warnlen);
void sg_tls_store_ref(sg_tls_store_t *st);
void sg_tls_store_unref(sg_tls_store_t *st);
/* Names (SANs) of all certificates, for logs: "a, *.b". */
size_t sg_tls_store_describe(const sg_tls_store_t *st, char *out, size_t cap);

/* Counters a worker keeps for its TLS connections. */
typedef struct {
    sg_counter_t handshakes;
    sg_counter_t handshake_failures; /* garbage or protocol refusal; timeouts excluded */
    sg_counter_t resumed;
    sg_counter_t deferred; /* ClientHellos that waited: the turn's handshake budget was spent */
    /* Connections refused for sending more than a read buffer (64 KiB)
     * while their ClientHello waited in the queue: no ClientHello is that
     * large, and nothing else may precede the handshake. Also counted in
     * handshake_failures. */
    sg_counter_t early_input_refused;
} sg_tls_counters_t;

/* A server-side TLS stream over an accepted TCP socket. Same contracts as
 * sg_stream_t (see net/stream.h); the handshake runs as soon as reading
 * starts, and read callbacks deliver plaintext only. A failed handshake is
 * reported as a read error (UV_EPROTO). */
typedef struct sg_tls_stream_s sg_tls_stream_t;

/* Size of sg_tls_stream_t, for owners that reserve storage for either a
 * plain or a TLS stream. */
extern const size_t sg_tls_stream_size;

/* Initialises the stream in `storage` (sg_tls_stream_size bytes) like
 * sg_stream_tcp_init; the caller accepts into s->tcp, then calls
 * sg_tls_stream_attach. The store reference is taken here. */
int sg_tls_stream_init(sg_stream_t *s, uv_loop_t *loop, sg_buf_pool_t *pool, sg_tls_store_t *store,
                       sg_tls_counters_t *counters);
/* Creates the TLS session once the socket is accepted. */
int sg_tls_stream_attach(sg_stream_t *s);

/* 1 when the certificate serving this connection covers host (exact SAN or
 * a one-label wildcard), else 0. */
int sg_tls_stream_covers_host(sg_stream_t *s, const char *host, size_t len);
/* Per event loop (worker thread): a loop turn then spends at most about
 * 0.5 ms on handshakes, further ClientHellos waiting for later turns, so a
 * burst of new connections cannot stall the requests of open ones
 * (hs_queue.c). Without it a handshake runs as soon as its bytes arrive.
 * sg_tls_loop_close after every stream on the loop is closed; the loop
 * then runs once more. */
int sg_tls_loop_init(uv_loop_t *loop);
void sg_tls_loop_close(uv_loop_t *loop);

/* 1 when the session was resumed. */
int sg_tls_stream_resumed(sg_stream_t *s);

#endif
