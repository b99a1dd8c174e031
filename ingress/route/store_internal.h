/* Shared between store.c (tables, the API) and store_wal.c (the log). */
#ifndef SG_ROUTE_STORE_INTERNAL_H
#define SG_ROUTE_STORE_INTERNAL_H

#include "core/strbuf.h"
#include "route/store.h"

#include <stdint.h>
#include <sys/types.h>

/* An open-addressing (linear probing) hash of record pointers, one
 * allocation. Immutable once published; it does not own references: the
 * store owns one reference per live record, whatever table points at it. */
typedef struct {
    size_t mask; /* capacity - 1, capacity a power of two >= 16 */
    size_t count;
    sg_sandbox_t *slots[];
} sg_store_table_t;

struct sg_store_s {
    /* Read by every worker on every lookup: alone on its cache line. */
    char pad_before_[SG_QSBR_CACHE_LINE];
    sg_store_table_t *_Atomic table;
    char pad_after_[SG_QSBR_CACHE_LINE - sizeof(void *)];

    /* Writer-only from here on. */
    sg_qsbr_t *qsbr;       /* NULL: no concurrent readers */
    sg_sandbox_t **sorted; /* live records in id order, for listing and compaction */
    size_t n_sorted, cap_sorted;
    sg_strbuf_t line; /* scratch for encoding log lines */

    char *path; /* NULL: memory only */
    char *dir;  /* path's directory, fsync'd after create/rename */
    int fd;     /* log, O_APPEND, flock'd; -1 when memory only */
    off_t log_size;
    size_t log_lines;
    size_t compact_retry_at; /* after a failed compaction: next try at this many lines */
    int broken;              /* a write or fsync failed: refuse writes (-EIO) */
};

/* FNV-1a over the id bytes. */
size_t sg_store__hash(sg_slice_t id);
/* 1 when id is acceptable: 1..SG_SANDBOX_ID_MAX bytes in 0x21..0x7e. */
int sg_store__id_valid(sg_slice_t id);

/* Private (unpublished) tables, for replay. */
sg_store_table_t *sg_store__table_new(size_t min_count);
/* Inserts or replaces in place, growing (*t may move). Returns the replaced
 * record (the caller drops the store's reference to it) or NULL. */
sg_sandbox_t *sg_store__table_set(sg_store_table_t **t, sg_sandbox_t *rec);
/* Removes in place; returns the removed record or NULL. */
sg_sandbox_t *sg_store__table_remove(sg_store_table_t *t, sg_slice_t id);
sg_sandbox_t *sg_store__table_get(const sg_store_table_t *t, sg_slice_t id);

/* CRC-32C (Castagnoli), as in iSCSI/ext4: crc32c("123456789") == 0xe3069283. */
uint32_t sg_store__crc32c(const void *data, size_t len);

/* Appends the full log line ("<crc> <json>\n") for a put of rec / a delete
 * of id to out. Returns 0 or -EINVAL (address family, non-UTF-8 mask). */
int sg_store__encode_put(sg_strbuf_t *out, const sg_sandbox_t *rec);
int sg_store__encode_del(sg_strbuf_t *out, sg_slice_t id);

/* Opens, locks and replays the log at st->path into *t (a private table
 * created by the caller). Returns 0 or -1 with err filled. */
int sg_store__wal_open(sg_store_t *st, sg_store_table_t **t, char *err, size_t errlen);
/* Appends one encoded line and fdatasyncs it. Returns 0 or -errno. */
int sg_store__wal_append(sg_store_t *st, const char *line, size_t len);
/* Compacts the log when it has grown past max(1000, 4 x live) lines.
 * Failure is logged; the old log stays in use. */
void sg_store__wal_maybe_compact(sg_store_t *st);
/* Rewrites the log from st->sorted now. Returns 0 or -errno. */
int sg_store__wal_compact(sg_store_t *st);
void sg_store__wal_close(sg_store_t *st);

#endif
