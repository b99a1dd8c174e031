/* Shared between the TLS store and the TLS stream; OpenSSL types allowed. */
#ifndef SG_TLS_INTERNAL_H
#define SG_TLS_INTERNAL_H

#include "tls/tls.h"
#include <openssl/ssl.h>
#include <stdint.h>

typedef struct {
    SSL_CTX *ctx;
    char **names; /* DNS SANs, may start with "*." */
    size_t n_names;
    char *path;
} sg_tls_cert_t;

struct sg_tls_store_s {
    _Atomic int refs;
    sg_tls_cert_t *certs;
    size_t n_certs;
    sg_tls_cert_t *default_cert;
};

int sg_tls__cert_covers(const sg_tls_cert_t *cert, const char *host, size_t len);
/* Called from the SNI callback: remembers which certificate serves ssl. */
void sg_tls__stream_set_cert(SSL *ssl, sg_tls_cert_t *cert);
int sg_tls__bio_init(void);
void sg_tls__bio_cleanup(void);
/* Set on every SSL_CTX: collects the TLS 1.3 application traffic secrets
 * of a handshake in progress so the stream can take over its records. */
void sg_tls__keylog_cb(const SSL *ssl, const char *line);

/* ---- handshakes metered per loop turn (hs_queue.c) ---- */

typedef struct sg_tls_hs_item_s {
    struct sg_tls_hs_item_s *prev, *next;
    unsigned queued : 1;
} sg_tls_hs_item_t;

/* Runs it (sg_tls__hs_run) now if this loop turn's handshake budget allows
 * and no other handshake waits, else queues it for a later point of this
 * or a later turn, after that turn's other I/O callbacks. Returns 0 (ran),
 * 1 (queued; an item already queued keeps its place), or -1 when this
 * thread has no queue for `loop` (sg_tls_loop_init): the caller runs it. */
int sg_tls__hs_submit(uv_loop_t *loop, sg_tls_hs_item_t *it);
/* Takes it off the queue if it is on it (a stream closing or failing). */
void sg_tls__hs_cancel(sg_tls_hs_item_t *it);
/* Implemented by the stream: continues the handshake of it's stream. */
void sg_tls__hs_run(sg_tls_hs_item_t *it);

/* ---- TLS 1.3 record protection after the handshake (record.c) ----
 *
 * Once OpenSSL has completed a TLS 1.3 handshake, the stream frees the SSL
 * object and protects records itself with the traffic secrets OpenSSL
 * reported (keylog callback): an idle connection then holds ~230 bytes of
 * key state instead of OpenSSL's ~14 KB. Supports the three TLS 1.3 AEAD
 * suites, KeyUpdate both ways, alerts and padding; nothing else may follow
 * a TLS 1.3 handshake from a client that was not asked for a certificate. */

#define SG_TLS_SUITES 3
#define SG_TLS_MAX_HASH 48
#define SG_TLS_MAX_PLAINTEXT 16384
#define SG_TLS_MAX_CIPHERTEXT (16384 + 256)
/* Bytes a record adds to its plaintext: header, content type, AEAD tag. */
#define SG_TLS_RECORD_OVERHEAD (5 + 1 + 16)

enum {
    SG_TLS_CT_ALERT = 21,
    SG_TLS_CT_HANDSHAKE = 22,
    SG_TLS_CT_APPLICATION_DATA = 23,
    SG_TLS_HS_KEY_UPDATE = 24,
};
enum {
    SG_TLS_ALERT_CLOSE_NOTIFY = 0,
    SG_TLS_ALERT_UNEXPECTED_MESSAGE = 10,
    SG_TLS_ALERT_BAD_RECORD_MAC = 20,
    SG_TLS_ALERT_RECORD_OVERFLOW = 22,
    SG_TLS_ALERT_DECODE_ERROR = 50,
    SG_TLS_ALERT_INTERNAL_ERROR = 80,
    SG_TLS_ALERT_USER_CANCELED = 90,
};
#define SG_TLS_HAVE_CLIENT 1u
#define SG_TLS_HAVE_SERVER 2u

/* One direction's traffic state. */
typedef struct {
    uint8_t secret[SG_TLS_MAX_HASH]; /* current application traffic secret */
    uint8_t key[32];
    uint8_t iv[12];
    uint64_t seq;    /* next record's sequence number */
    uint64_t key_id; /* names this key in the per-thread cipher cache */
} sg_tls_dir_t;

typedef struct {
    sg_tls_dir_t rd; /* client to server */
    sg_tls_dir_t wr; /* server to client */
    uint8_t suite;   /* index, see sg_tls__rec_suite */
    uint8_t secret_len;
    uint8_t active; /* holds a thread reference (sg_tls__rec_init was called) */
} sg_tls_rec_t;

/* Fetches ciphers and digests once per process. Returns 0: a suite whose
 * algorithms are unavailable is left to OpenSSL. */
int sg_tls__rec_global_init(void);
void sg_tls__rec_global_cleanup(void);
/* Index of the TLS 1.3 suite with this IANA number, or -1 (not supported
 * or unavailable: the connection keeps OpenSSL). */
int sg_tls__rec_suite(uint16_t id);
/* Records a keylog line's application traffic secret in r (rd for
 * CLIENT_TRAFFIC_SECRET_0, wr for SERVER_TRAFFIC_SECRET_0) and sets the
 * matching SG_TLS_HAVE_ bit. Returns 1 when taken, 0 for other lines, -1
 * when malformed. */
int sg_tls__rec_parse_keylog(const char *line, sg_tls_rec_t *r, uint8_t *have);
/* Derives keys from the secrets already in r. wr_seq: records OpenSSL
 * already sent under the server's application keys (session tickets); the
 * client has sent none yet. Takes a reference on this thread's cipher
 * contexts, success or not: sg_tls__rec_free, on the same thread, always
 * follows. Returns 0 or -1. */
int sg_tls__rec_init(sg_tls_rec_t *r, int suite, uint64_t wr_seq);
/* Wipes r; drops the thread reference when init succeeded. */
void sg_tls__rec_free(sg_tls_rec_t *r);
/* Next generation of d's secret and keys (KeyUpdate). Returns 0 or -1. */
int sg_tls__rec_update(sg_tls_rec_t *r, sg_tls_dir_t *d);
/* Protects len <= SG_TLS_MAX_PLAINTEXT bytes of content `type` as one record
 * at out (len + SG_TLS_RECORD_OVERHEAD bytes; in and out must not overlap).
 * Returns the record's length, or 0 on failure. */
size_t sg_tls__rec_seal(sg_tls_rec_t *r, uint8_t type, const uint8_t *in, size_t len, uint8_t *out);
/* The same for content gathered from n_in pieces (their total at most
 * SG_TLS_MAX_PLAINTEXT), sealed in place as one record: a response head and
 * the body bytes that follow it cost the peer one record, not two. */
size_t sg_tls__rec_seal_v(sg_tls_rec_t *r, uint8_t type, const uv_buf_t *in, unsigned n_in,
                          uint8_t *out);
/* Opens the record at rec (header included, rec_len = 5 + its length) into
 * out (room for rec_len - 5 - 16 bytes): *type and *out_len describe the
 * content without padding. Returns 0 or the alert to send (SG_TLS_ALERT_). */
int sg_tls__rec_open(sg_tls_rec_t *r, const uint8_t *rec, size_t rec_len, uint8_t *out,
                     size_t *out_len, uint8_t *type);
/* A post-handshake handshake record from the client: KeyUpdate renews the
 * read keys and sets *update_requested when the peer asks for ours too (the
 * caller then sends sg_tls__rec_seal_key_update before any more data).
 * Returns 0 or the alert to send. */
int sg_tls__rec_handshake(sg_tls_rec_t *r, const uint8_t *msg, size_t len, int *update_requested);
/* Seals KeyUpdate(update_not_requested) at out (5 + SG_TLS_RECORD_OVERHEAD
 * bytes), then renews the write keys. Returns the record's length or 0. */
size_t sg_tls__rec_seal_key_update(sg_tls_rec_t *r, uint8_t *out);

#endif
