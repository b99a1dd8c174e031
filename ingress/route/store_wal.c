/* The admin store's write-ahead log: line encoding, replay with torn-tail
 * recovery, durable appends and atomic compaction. Format in route/store.h. */
#include "route/store_internal.h"

#include "core/log.h"
#include "egress/policy.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define COMPACT_MIN_LINES 1000
#define COMPACT_FACTOR 4
#define CRC_HEX 8

/* ---- CRC-32C ----------------------------------------------------------- */

static uint32_t crc_table[256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1;
        crc_table[i] = c;
    }
}

uint32_t sg_store__crc32c(const void *data, size_t len)
{
    pthread_once(&crc_once, crc_init);
    const unsigned char *p = data;
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < len; i++) c = crc_table[(c ^ p[i]) & 0xff] ^ (c >> 8);
    return c ^ 0xffffffffu;
}

/* ---- encoding ------------------------------------------------------------ */

static const char hexdig[] = "0123456789abcdef";

static int format_address(const struct sockaddr_storage *ss, char *buf, size_t len)
{
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)ss;
        return inet_ntop(AF_INET, &in->sin_addr, buf, (socklen_t)len) ? 0 : -EINVAL;
    }
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;
        if (!inet_ntop(AF_INET6, &in6->sin6_addr, buf, (socklen_t)len)) return -EINVAL;
        if (in6->sin6_scope_id) {
            size_t n = strlen(buf);
            snprintf(buf + n, len - n, "%%%u", (unsigned)in6->sin6_scope_id);
        }
        return 0;
    }
    return -EINVAL;
}

/* Parses what format_address writes (an IP literal, IPv6 with an optional
 * numeric "%scope"); port left 0. */
static int parse_address(const char *s, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof(*ss));
    struct sockaddr_in *in = (struct sockaddr_in *)ss;
    if (inet_pton(AF_INET, s, &in->sin_addr) == 1) {
        in->sin_family = AF_INET;
        return 0;
    }
    char buf[INET6_ADDRSTRLEN];
    const char *pct = strchr(s, '%');
    size_t n = pct ? (size_t)(pct - s) : strlen(s);
    if (n >= sizeof(buf)) return -1;
    memcpy(buf, s, n);
    buf[n] = '\0';
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET6, buf, &in6->sin6_addr) != 1) return -1;
    in6->sin6_family = AF_INET6;
    if (pct) {
        char *end;
        errno = 0;
        unsigned long scope = strtoul(pct + 1, &end, 10);
        if (pct[1] < '0' || pct[1] > '9' || *end || errno || scope > UINT32_MAX) return -1;
        in6->sin6_scope_id = (uint32_t)scope;
    }
    return 0;
}

/* Appends "<crc> <json>\n" for obj (consumed). */
static int encode_line(sg_strbuf_t *out, json_t *obj)
{
    char *text = obj ? json_dumps(obj, JSON_COMPACT) : NULL;
    json_decref(obj);
    if (!text) return -EINVAL;
    size_t len = strlen(text);
    sg_strbuf_appendf(out, "%08x ", (unsigned)sg_store__crc32c(text, len));
    sg_strbuf_append(out, text, len);
    sg_strbuf_append(out, "\n", 1);
    free(text);
    return 0;
}

/* json_object_set_new that turns a NULL value (invalid UTF-8, OOM) into a
 * failure of the whole object. */
static int set(json_t *obj, const char *key, json_t *val)
{
    return val ? json_object_set_new(obj, key, val) : -1;
}

int sg_store__encode_put(sg_strbuf_t *out, const sg_sandbox_t *rec)
{
    char addr[INET6_ADDRSTRLEN + 16];
    if (format_address(&rec->addr, addr, sizeof(addr)) < 0) return -EINVAL;
    char hex[65];
    if (rec->has_token) {
        for (int i = 0; i < 32; i++) {
            hex[2 * i] = hexdig[rec->token_sha256[i] >> 4];
            hex[2 * i + 1] = hexdig[rec->token_sha256[i] & 15];
        }
        hex[64] = '\0';
    }
    json_t *o = json_object();
    if (!o) abort();
    int bad = set(o, "op", json_string("put")) | set(o, "id", json_stringn(rec->id, rec->id_len)) |
              set(o, "address", json_string(addr)) |
              set(o, "mask", rec->mask ? json_string(rec->mask) : json_null()) |
              set(o, "token_sha256", rec->has_token ? json_string(hex) : json_null()) |
              set(o, "max_incoming_connections", json_integer(rec->max_connections));
    /* Only non-default policies are written: logs of sandboxes without
     * egress rules stay as they were. */
    if (rec->egress_policy) sg_egress_policy_to_json(rec->egress_policy, o);
    if (bad) {
        json_decref(o);
        return -EINVAL;
    }
    return encode_line(out, o);
}

int sg_store__encode_del(sg_strbuf_t *out, sg_slice_t id)
{
    json_t *o = json_object();
    if (!o) abort();
    if (set(o, "op", json_string("del")) | set(o, "id", json_stringn(id.base, id.len))) {
        json_decref(o);
        return -EINVAL;
    }
    return encode_line(out, o);
}

/* ---- decoding ------------------------------------------------------------ */

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Checks "<8 hex> <json>" (no newline); on success *json is the JSON text. */
static int check_line(const char *line, size_t len, sg_slice_t *json, const char **why)
{
    if (len < CRC_HEX + 2 || line[CRC_HEX] != ' ') {
        *why = "malformed line (expected '<crc32c> <json>')";
        return -1;
    }
    uint32_t want = 0;
    for (int i = 0; i < CRC_HEX; i++) {
        int v = hexval(line[i]);
        if (v < 0) {
            *why = "malformed checksum";
            return -1;
        }
        want = want << 4 | (uint32_t)v;
    }
    *json = sg_slice(line + CRC_HEX + 1, len - CRC_HEX - 1);
    if (sg_store__crc32c(json->base, json->len) != want) {
        *why = "checksum mismatch";
        return -1;
    }
    return 0;
}

/* Applies one checked JSON record to the private replay table. Returns 0 or
 * -1 with msg filled. */
static int apply_record(sg_store_table_t **t, sg_slice_t text, char *msg, size_t msglen)
{
    json_error_t jerr;
    json_t *o = json_loadb(text.base, text.len, JSON_REJECT_DUPLICATES, &jerr);
    if (!o) {
        snprintf(msg, msglen, "invalid JSON: %s (column %d)", jerr.text, jerr.column);
        return -1;
    }
    int rc = -1;
    const char *op = json_string_value(json_object_get(o, "op"));
    json_t *jid = json_object_get(o, "id");
    sg_slice_t id = sg_slice(json_string_value(jid), json_string_length(jid));
    if (!json_is_object(o) || !op) {
        snprintf(msg, msglen, "record without \"op\"");
        goto out;
    }
    if (!json_is_string(jid) || !sg_store__id_valid(id)) {
        snprintf(msg, msglen, "missing or invalid \"id\"");
        goto out;
    }
    if (strcmp(op, "del") == 0) {
        /* Deleting an absent id is tolerated: the result is the same. */
        sg_sandbox_t *old = sg_store__table_remove(*t, id);
        if (old) sg_sandbox_unref(old);
        rc = 0;
        goto out;
    }
    if (strcmp(op, "put") != 0) {
        snprintf(msg, msglen, "unknown op \"%s\"", op);
        goto out;
    }
    struct sockaddr_storage addr;
    const char *a = json_string_value(json_object_get(o, "address"));
    if (!a || parse_address(a, &addr) < 0) {
        snprintf(msg, msglen, "missing or invalid \"address\" (an IP literal)");
        goto out;
    }
    json_t *jmask = json_object_get(o, "mask");
    if (jmask && !json_is_null(jmask) && !json_is_string(jmask)) {
        snprintf(msg, msglen, "\"mask\" must be a string or null");
        goto out;
    }
    unsigned char hash[32];
    json_t *jtok = json_object_get(o, "token_sha256");
    int has_token = jtok && !json_is_null(jtok);
    if (has_token) {
        const char *h = json_string_value(jtok);
        int ok = h && strlen(h) == 64;
        for (int i = 0; ok && i < 32; i++) {
            int hi = hexval(h[2 * i]), lo = hexval(h[2 * i + 1]);
            ok = hi >= 0 && lo >= 0;
            hash[i] = (unsigned char)(hi << 4 | lo);
        }
        if (!ok) {
            snprintf(msg, msglen, "\"token_sha256\" must be 64 hex digits or null");
            goto out;
        }
    }
    json_t *jmax = json_object_get(o, "max_incoming_connections");
    json_int_t max = jmax && !json_is_null(jmax) ? json_integer_value(jmax) : 0;
    if (jmax && !json_is_null(jmax) && (!json_is_integer(jmax) || max < 0 || max > UINT_MAX)) {
        snprintf(msg, msglen, "\"max_incoming_connections\" must be an integer 0..%u", UINT_MAX);
        goto out;
    }
    sg_egress_policy_t *policy = NULL;
    const char *pfield = NULL;
    char pwhy[256];
    if (sg_egress_policy_from_json(json_object_get(o, "allow_internet_access"),
                                   json_object_get(o, "network"), &policy, pwhy, sizeof(pwhy),
                                   &pfield) != 0) {
        snprintf(msg, msglen, "%s", pwhy);
        goto out;
    }
    sg_sandbox_t *rec = sg_sandbox_new(id, &addr, json_string_value(jmask));
    rec->egress_policy = policy;
    rec->has_token = has_token;
    if (has_token) memcpy(rec->token_sha256, hash, sizeof(hash));
    rec->max_connections = (unsigned)max;
    rec->source = "admin";
    sg_sandbox_t *old = sg_store__table_set(t, rec);
    if (old) sg_sandbox_unref(old);
    rc = 0;
out:
    json_decref(o);
    return rc;
}

/* ---- file helpers -------------------------------------------------------- */

static void errf(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void errf(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -errno;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int sync_fd(int fd)
{
    while (fdatasync(fd) < 0) {
        if (errno != EINTR) return -errno;
    }
    return 0;
}

/* Makes a create/rename/unlink in dir durable. */
static int sync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return -errno;
    int r = 0;
    while (fsync(fd) < 0) {
        if (errno != EINTR) {
            r = -errno;
            break;
        }
    }
    close(fd);
    return r;
}

static char *dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    char *d = slash == path ? strdup("/")
              : slash       ? strndup(path, (size_t)(slash - path))
                            : strdup(".");
    if (!d) abort();
    return d;
}

static char *compact_path(const sg_store_t *st)
{
    size_t n = strlen(st->path);
    char *p = malloc(n + sizeof(".compact"));
    if (!p) abort();
    memcpy(p, st->path, n);
    memcpy(p + n, ".compact", sizeof(".compact"));
    return p;
}

/* Opens (creating if needed) and flocks the log. Retries when the path was
 * replaced between open and flock (another process compacting), so the
 * lock is always on the file the path names. */
static int open_locked(sg_store_t *st, int *created, char *err, size_t errlen)
{
    for (int attempt = 0; attempt < 10; attempt++) {
        *created = 0;
        int fd = open(st->path, O_RDWR | O_APPEND | O_CLOEXEC);
        if (fd < 0 && errno == ENOENT) {
            fd = open(st->path, O_RDWR | O_APPEND | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
            if (fd < 0 && errno == EEXIST) continue;
            *created = fd >= 0;
        }
        if (fd < 0) {
            errf(err, errlen, "%s: %s", st->path, strerror(errno));
            return -1;
        }
        if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
            int e = errno;
            close(fd);
            if (e == EWOULDBLOCK)
                errf(err, errlen, "%s: in use by another process (locked)", st->path);
            else
                errf(err, errlen, "%s: flock: %s", st->path, strerror(e));
            return -1;
        }
        struct stat a, b;
        if (fstat(fd, &a) == 0 && stat(st->path, &b) == 0 && a.st_dev == b.st_dev &&
            a.st_ino == b.st_ino) {
            st->fd = fd;
            return 0;
        }
        close(fd);
    }
    errf(err, errlen, "%s: keeps being replaced while opening", st->path);
    return -1;
}

static int read_all(int fd, char **out, size_t *outlen)
{
    struct stat sb;
    if (fstat(fd, &sb) < 0) return -errno;
    size_t cap = (size_t)sb.st_size + 1, len = 0;
    char *buf = malloc(cap);
    if (!buf) abort();
    for (;;) {
        if (len == cap) {
            cap *= 2;
            char *nb = realloc(buf, cap);
            if (!nb) abort();
            buf = nb;
        }
        ssize_t r = pread(fd, buf + len, cap - len, (off_t)len);
        if (r < 0) {
            if (errno == EINTR) continue;
            int e = errno;
            free(buf);
            return -e;
        }
        if (r == 0) break;
        len += (size_t)r;
    }
    *out = buf;
    *outlen = len;
    return 0;
}

/* ---- open and replay ----------------------------------------------------- */

int sg_store__wal_open(sg_store_t *st, sg_store_table_t **t, char *err, size_t errlen)
{
    st->dir = dir_of(st->path);
    int created;
    if (open_locked(st, &created, err, errlen) < 0) return -1;
    if (created) {
        int r = sync_fd(st->fd);
        if (r == 0) r = sync_dir(st->dir);
        if (r < 0) {
            errf(err, errlen, "%s: fsync after create: %s", st->path, strerror(-r));
            return -1;
        }
    }
    /* A compaction that crashed before its rename leaves its temporary file;
     * the log itself is intact. We hold the lock, so nobody is writing it. */
    char *tmp = compact_path(st);
    unlink(tmp);
    free(tmp);

    char *buf = NULL;
    size_t len = 0;
    int r = read_all(st->fd, &buf, &len);
    if (r < 0) {
        errf(err, errlen, "%s: read: %s", st->path, strerror(-r));
        return -1;
    }
    size_t off = 0, lineno = 0;
    int rc = 0;
    while (off < len) {
        lineno++;
        const char *line = buf + off;
        const char *nl = memchr(line, '\n', len - off);
        if (!nl) {
            sg_log_warn("%s:%zu: torn last line (no newline, %zu bytes): dropped", st->path, lineno,
                        len - off);
            break;
        }
        size_t n = (size_t)(nl - line);
        int last = (size_t)(nl - buf) + 1 == len;
        sg_slice_t json;
        const char *why;
        if (check_line(line, n, &json, &why) < 0) {
            if (last) {
                sg_log_warn("%s:%zu: torn last line (%s): dropped", st->path, lineno, why);
                break;
            }
            errf(err, errlen, "%s:%zu: %s", st->path, lineno, why);
            rc = -1;
            break;
        }
        /* The checksum matches, so this is what was written: a record that
         * does not make sense is not crash damage but a bug or tampering,
         * and silently dropping it could lose acknowledged data. */
        char msg[256];
        if (apply_record(t, json, msg, sizeof(msg)) < 0) {
            errf(err, errlen, "%s:%zu: %s", st->path, lineno, msg);
            rc = -1;
            break;
        }
        off = (size_t)(nl - buf) + 1;
        st->log_lines++;
    }
    free(buf);
    if (rc < 0) return -1;
    if (off < len) {
        /* Cut the torn tail so the next append starts a fresh line. */
        r = ftruncate(st->fd, (off_t)off) < 0 ? -errno : sync_fd(st->fd);
        if (r < 0) {
            errf(err, errlen, "%s: truncating torn tail: %s", st->path, strerror(-r));
            return -1;
        }
    }
    st->log_size = (off_t)off;
    return 0;
}

void sg_store__wal_close(sg_store_t *st)
{
    if (st->fd >= 0) close(st->fd); /* drops the flock too */
    st->fd = -1;
}

/* ---- appends ------------------------------------------------------------- */

int sg_store__wal_append(sg_store_t *st, const char *line, size_t len)
{
    if (st->broken) return -EIO;
    int r = write_all(st->fd, line, len);
    if (r < 0) {
        /* Part of the line may be in the file: cut it off so the next
         * append does not glue onto it. ENOSPC and the like leave a healthy
         * store; if even the cut fails, stop writing. */
        if (ftruncate(st->fd, st->log_size) < 0) st->broken = 1;
        sg_log_error("admin store %s: append: %s%s", st->path, strerror(-r),
                     st->broken ? " (store now read-only until reopened)" : "");
        return r;
    }
    r = sync_fd(st->fd);
    if (r < 0) {
        /* After a failed fdatasync the kernel may have dropped the dirty
         * pages and cleared the error: a retry could "succeed" without the
         * data on disk. Only a reopen (replaying what is really there)
         * tells the truth. */
        st->broken = 1;
        sg_log_error("admin store %s: fdatasync: %s (store now read-only until reopened)", st->path,
                     strerror(-r));
        return r;
    }
    st->log_size += (off_t)len;
    st->log_lines++;
    return 0;
}

/* ---- compaction ---------------------------------------------------------- */

int sg_store__wal_compact(sg_store_t *st)
{
    if (st->fd < 0) return 0;
    if (st->broken) return -EIO;
    char *tmp = compact_path(st);
    int fd = open(tmp, O_RDWR | O_APPEND | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    int r = fd < 0 ? -errno : 0;
    /* Lock before the rename so the new log is never unlocked under its
     * name. Nobody else can hold it: the old log's lock is ours. */
    if (r == 0 && flock(fd, LOCK_EX | LOCK_NB) < 0) r = -errno;
    sg_strbuf_t buf = {0};
    off_t size = 0;
    for (size_t i = 0; r == 0 && i < st->n_sorted; i++) {
        r = sg_store__encode_put(&buf, st->sorted[i]);
        if (r == 0 && (buf.len >= 64 * 1024 || i + 1 == st->n_sorted)) {
            r = write_all(fd, buf.base, buf.len);
            size += (off_t)buf.len;
            sg_strbuf_reset(&buf);
        }
    }
    sg_strbuf_free(&buf);
    if (r == 0) r = sync_fd(fd);
    if (r == 0 && rename(tmp, st->path) < 0) r = -errno;
    if (r < 0) {
        if (fd >= 0) close(fd);
        unlink(tmp);
        free(tmp);
        return r;
    }
    free(tmp);
    /* Renamed: from now on the new file is the log, whatever happens. */
    close(st->fd);
    st->fd = fd;
    st->log_size = size;
    st->log_lines = st->n_sorted;
    r = sync_dir(st->dir);
    if (r < 0) {
        /* The rename may not survive a crash, and appends to the new file
         * would then be lost with it. */
        st->broken = 1;
        sg_log_error("admin store %s: fsync directory after compaction: %s (store now "
                     "read-only until reopened)",
                     st->path, strerror(-r));
    }
    return r;
}

void sg_store__wal_maybe_compact(sg_store_t *st)
{
    if (st->fd < 0 || st->broken) return;
    size_t limit = st->n_sorted * COMPACT_FACTOR;
    if (limit < COMPACT_MIN_LINES) limit = COMPACT_MIN_LINES;
    if (st->log_lines <= limit || st->log_lines < st->compact_retry_at) return;
    size_t before = st->log_lines;
    int r = sg_store__wal_compact(st);
    if (r < 0) {
        /* Do not retry on every write (ENOSPC would make each one pay for
         * a doomed rewrite): wait until the log grew by half again. */
        st->compact_retry_at = before + before / 2;
        sg_log_warn("admin store %s: compaction failed: %s", st->path, strerror(-r));
    } else {
        st->compact_retry_at = 0;
        sg_log_info("admin store %s: compacted %zu lines to %zu", st->path, before, st->log_lines);
    }
}
