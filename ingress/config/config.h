/* sandgate's settings: one immutable snapshot built from the embedded
 * default, an optional YAML file and command-line flags (flags win).
 *
 * Ownership: `sg_config_load` returns a snapshot with one reference; workers
 * that keep it across callbacks take their own with `sg_config_ref` and drop
 * it with `sg_config_unref`. A snapshot is never modified after load. */
#ifndef SG_CONFIG_CONFIG_H
#define SG_CONFIG_CONFIG_H

#include <netinet/in.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define SG_SANDBOX_ID_MAX 64

typedef struct {
    char text[64];                /* as written, e.g. "127.0.0.1:8080" or "[::1]:8080" */
    struct sockaddr_storage addr; /* parsed */
    int tls;                      /* 1 for --listen-tls / `tls: true` (TLS issue) */
    int proxy_protocol;           /* `proxy_protocol: true`: a PROXY v1/v2 header is required */
    unsigned max_connections;     /* `max_connections: N` per worker; 0 = unlimited */
} sg_listen_conf_t;

typedef struct {
    char id[SG_SANDBOX_ID_MAX + 1];
    struct sockaddr_storage addr; /* port left 0; the request picks it */
    char *mask;                   /* Host template with ${PORT}, or NULL for "keep Host" */
} sg_sandbox_conf_t;

/* One certificate for TLS listeners (TLS issue). Relative paths are resolved
 * when the snapshot is built: against the working directory for --tls-cert
 * and the built-in configuration, against the config file's directory for
 * tls.certificates; the result is absolute (unless the working directory
 * cannot be read). The files are not opened by the config module. */
typedef struct {
    char *chain;    /* PEM chain, leaf first */
    char *key;      /* PEM private key */
    int is_default; /* serves clients without SNI / with an unknown name */
} sg_cert_conf_t;

typedef struct {
    sg_cert_conf_t *certs;           /* exactly one is_default when n_certs > 0 */
    size_t n_certs;                  /* >= 1 when any listener has tls */
    uint64_t handshake_timeout_ms;   /* tls.handshake_timeout, default 10s */
    uint64_t ticket_key_rotation_ms; /* tls.ticket_key_rotation, default 1h */
    uint64_t expiry_warning_ms;      /* tls.expiry_warning, default 720h (30 days) */
    int redirect_http;               /* tls.redirect_http: plain listeners answer 308 */
} sg_tls_conf_t;

/* Admin API listener and the durable sandbox store (lookup issue). */
typedef struct {
    sg_listen_conf_t *listens; /* admin.listen: list of ADDR:PORT; none = admin API off */
    size_t n_listens;
    char *token;      /* admin.token: Bearer token, NULL = none (loopback binds only) */
    char *store_path; /* admin.store: write-ahead log file (resolved like certificate
                         paths), NULL = memory only */
} sg_admin_conf_t;

/* DNS lookup source (lookup issue). */
typedef struct {
    char *zone;                       /* dns.zone: ids resolve as <id>.<zone>; NULL = DNS off */
    struct sockaddr_storage *servers; /* dns.servers: "IP" or "IP:PORT" (default port 53) */
    size_t n_servers;
    uint64_t timeout_ms;      /* dns.timeout: one query attempt, default 1s */
    unsigned tries;           /* dns.tries: attempts per server, default 2 */
    uint64_t ttl_min_ms;      /* dns.ttl_min: cache floor, default 5s */
    uint64_t ttl_max_ms;      /* dns.ttl_max: cache ceiling, default 5m */
    uint64_t negative_ttl_ms; /* dns.negative_ttl: NXDOMAIN cached, default 5s */
} sg_dns_conf_t;

/* Egress role (egress issue): transparent proxy for traffic leaving the
 * sandboxes on this host. Enabled when any listen_* is set. */
typedef struct {
    sg_listen_conf_t listen_http;  /* egress.listen_http: redirected port 80; text[0] == 0: off */
    sg_listen_conf_t listen_tls;   /* egress.listen_tls: redirected port 443 */
    sg_listen_conf_t listen_other; /* egress.listen_other: every other TCP port */
    char *nameserver;              /* egress.nameserver: IP literal, default "8.8.8.8" */
    struct sockaddr_storage *resolvers; /* egress.resolvers: "IP[:PORT]"; default nameserver:53 */
    size_t n_resolvers;
    char **always_denied_exceptions; /* egress.always_denied_exceptions: CIDR texts */
    size_t n_always_denied_exceptions;
    /* egress.sandbox_interfaces: nft iifname patterns ("veth*", "tap0") of the
     * interfaces sandboxes send on; a packet in on one of them from an address
     * no sandbox is registered with is dropped. None: no such check. */
    char **sandbox_interfaces;
    size_t n_sandbox_interfaces;
    uint64_t sniff_timeout_ms;   /* egress.sniff_timeout, default 5s */
    size_t sniff_max_bytes;      /* egress.sniff_max_bytes, default 16 KiB */
    uint64_t connect_timeout_ms; /* egress.connect_timeout, default 5s */
    uint64_t idle_timeout_ms;    /* egress.idle_timeout, default 300s */
    int nft_apply;               /* egress.nft_apply: load the ruleset with nft, default false */
    char *nft_table;             /* egress.nft_table: table name, default "sandgate" */
    int enabled;                 /* resolved: any listen_* set */
} sg_egress_conf_t;

/* Lookup sources in the order they are asked. */
typedef enum { SG_SOURCE_STATIC, SG_SOURCE_ADMIN, SG_SOURCE_DNS } sg_source_kind_t;

typedef struct {
    uint64_t request_head_ms;           /* whole request head must arrive within (408) */
    uint64_t keepalive_idle_ms;         /* idle client connection between requests */
    uint64_t upstream_connect_ms;       /* one connect attempt (504 when it expires) */
    uint64_t upstream_retry_window_ms;  /* keep retrying refused connects this long (502) */
    uint64_t upstream_response_head_ms; /* from request sent to response head (504) */
    uint64_t stream_idle_ms;            /* no byte either way on a body stream or tunnel */
    uint64_t upstream_idle_ms;          /* pooled idle upstream connection lifetime */
} sg_timeouts_conf_t;

typedef struct sg_config_s {
    _Atomic int refs;
    char *source;              /* file path, or "<embedded>" */
    sg_listen_conf_t *listens; /* n_listens >= 1, or 0 with egress.enabled */
    size_t n_listens;
    char **domains; /* lower-case, no leading dot, n_domains >= 1 */
    size_t n_domains;
    sg_sandbox_conf_t *sandboxes; /* static sandboxes, unique ids */
    size_t n_sandboxes;
    unsigned workers; /* resolved: never 0 (0 in the file means "CPU count") */
    sg_timeouts_conf_t timeouts;
    sg_tls_conf_t tls;
    size_t max_header_bytes;           /* request head size limit (431), default 64 KiB */
    size_t upstream_pool_idle_per_key; /* pooled idle connections kept per address:port */
    int log_level;                     /* sg_log_level_t */
    int log_json;                      /* log_format: json (1) or text (0, default) */
    char *access_log;          /* access_log: "stdout" (default), "off", or a file path (resolved
                                  like certificate paths) */
    uint64_t drain_timeout_ms; /* drain_timeout: SIGTERM grace for streams, default 30s */
    char *token_header;        /* token_header: default "X-Traffic-Access-Token" */
    sg_admin_conf_t admin;
    sg_dns_conf_t dns;
    sg_egress_conf_t egress;
    /* lookup_order: default [static, admin, dns]. Resolved: only configured
     * sources remain (static always; admin with admin.listen or admin.store;
     * dns with dns.zone), in the order given; n_lookup_order >= 1. */
    sg_source_kind_t lookup_order[3];
    size_t n_lookup_order;
} sg_config_t;

/* Parses argv (program name at argv[0]). On success stores a new snapshot in
 * *out and returns 0. On error returns -1 and writes one message per line into
 * err, each "file:line: message" for file errors or "sandgate: message" for
 * flag errors. Flags: --config FILE, --listen ADDR:PORT and --listen-tls
 * ADDR:PORT (repeatable), --domain D (repeatable), --sandbox
 * ID=ADDR[,mask=TEMPLATE] (repeatable), --tls-cert CHAIN,KEY (repeatable),
 * --redirect-http, --workers N, --log-level L, --log-format text|json,
 * --access-log DEST, --drain-timeout DURATION, --admin-listen ADDR:PORT
 * (repeatable), --admin-token TOKEN, --admin-store PATH, --dns-zone ZONE,
 * --dns-server ADDR[:PORT] (repeatable), --check-config, --version, --help
 * (-h). Repeated list flags replace the file's list for that key, then
 * accumulate (the first --tls-cert is the default certificate); --sandbox
 * replaces the file's entry with the same id (without --config it replaces
 * the embedded 'demo').
 * `*check_only` / `*show_version` / `*show_help` are set when those flags
 * appear. With --help or --version the configuration is not loaded: the call
 * returns 0 with *out == NULL. `actions` may be NULL. */
typedef struct {
    int check_only;
    int show_version;
    int show_help;
} sg_config_actions_t;

int sg_config_load(int argc, char **argv, sg_config_t **out, sg_config_actions_t *actions,
                   char *err, size_t errlen);

/* Parses YAML text as if read from `source` (used by tests and the embedded
 * default). Same error contract as sg_config_load. */
int sg_config_parse_text(const char *text, size_t len, const char *source, sg_config_t **out,
                         char *err, size_t errlen);

/* The embedded default configuration (YAML, commented) used when no --config
 * is given; flags apply on top of it: listen 127.0.0.1:8080, domain
 * sandbox.localhost, sandbox "demo" at 127.0.0.1 with no mask. */
extern const char sg_config_embedded_default[];

/* Usage text for --help. */
extern const char sg_config_usage[];

void sg_config_ref(sg_config_t *c);
/* Drops one reference; the last one frees the snapshot. NULL is ignored. */
void sg_config_unref(sg_config_t *c);

/* Renders the snapshot as YAML that sg_config_parse_text accepts and that
 * yields an equal snapshot (workers appear resolved). Returns a malloc'd,
 * NUL-terminated string the caller frees. */
char *sg_config_dump(const sg_config_t *c);

/* Reload check: the name of the first setting that differs between the two
 * snapshots and cannot change without a restart ("listen", including a
 * listener's tls, proxy_protocol and max_connections; "workers";
 * "admin.listen"; "admin.store"; "egress.listen_http" and the other egress
 * listeners, "egress.nameserver", "egress.resolvers",
 * "egress.sandbox_interfaces", "egress.nft_apply", "egress.nft_table"), or
 * NULL when new_c may replace old_c in place (certificates, tls settings,
 * admin.token, dns, lookup_order, the log settings and the other egress
 * settings may change). */
const char *sg_config_restart_key(const sg_config_t *old_c, const sg_config_t *new_c);

#endif
