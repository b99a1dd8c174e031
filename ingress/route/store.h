/* The admin sandbox store: sandbox records created through the admin API,
 * durable in a write-ahead log and readable by every worker without a lock.
 *
 * Threads: one writer thread (the admin API thread) calls every function
 * except sg_store_get / sg_store_count (and the lookup source built on
 * them), which any registered QSBR reader may call concurrently.
 *
 * Reads: the current table is an open-addressing hash of record pointers,
 * published through one atomic pointer. A reader does one acquire load of
 * that pointer and a plain probe. Each put/delete builds a new table
 * (copy-on-write), publishes it with a release store and hands the old table
 * and the replaced/deleted record to QSBR, which frees them once every
 * reader passed a quiescent point.
 *
 * Durability: a put/delete that returns 0 is in the log and fdatasync'd, and
 * only then visible to readers. The log is one line per operation:
 *
 *   <CRC-32C of the JSON text, 8 lowercase hex digits> <JSON>\n
 *   put: {"op":"put","id":"..","address":"10.0.0.2","mask":"${PORT}-x.y" | null,
 *         "token_sha256":"<64 hex>" | null,"max_incoming_connections":N}
 *   del: {"op":"del","id":".."}
 *
 * Tokens exist in the log only as their SHA-256. When the log holds more than
 * max(1000, 4 x live records) lines it is rewritten atomically (temporary
 * file "<path>.compact" in the same directory, fsync, rename over the log,
 * fsync the directory). The log is locked with flock(2) while open, so a
 * second process cannot append to it at the same time.
 *
 * Errors: functions return 0 or a negative errno value (the same numbers as
 * libuv's UV_E* on Unix). After a failed write or fdatasync the store cannot
 * tell what reached the disk, so it refuses further writes (-EIO) until it
 * is reopened, which replays what the log really holds. */
#ifndef SG_ROUTE_STORE_H
#define SG_ROUTE_STORE_H

#include "core/qsbr.h"
#include "core/slice.h"
#include "route/lookup.h"
#include "route/sandbox.h"

#include <stddef.h>

typedef struct sg_store_s sg_store_t;

/* Opens the store. path NULL: memory only, nothing is written. Otherwise
 * opens (or creates, mode 0600, fsyncing the directory) the log at path and
 * replays it. A torn or corrupt LAST line (no newline, or a checksum
 * mismatch: a crash mid-append) is dropped with a warning and truncated away
 * so later appends start on a clean line. Anything else that does not parse
 * (a bad line before the last one, or a last line whose checksum matches but
 * whose content is invalid) fails the open: returns -1 and writes
 * "path:line: reason" (or "path: reason") to err.
 *
 * qsbr: the instance the workers that read this store are registered with;
 * it must outlive the store and everything deferred on it. NULL means no
 * concurrent readers: old tables and records are freed at once.
 *
 * On success *out is the store and 0 is returned. */
int sg_store_open(const char *path, sg_qsbr_t *qsbr, sg_store_t **out, char *err, size_t errlen);

/* Writer. Releases the store. Readers must not call sg_store_get on it any
 * more; pointers they already borrowed stay valid until their next quiescent
 * point (the final table and records are handed to QSBR). NULL is a no-op. */
void sg_store_close(sg_store_t *st);

/* Writer. Inserts or replaces the record with rec's id. rec must be freshly
 * built (route/sandbox.h) and not yet visible to any other thread: the store
 * sets rec->source to "admin". The store takes the caller's reference in
 * every case (on error it is dropped). The id must be 1..SG_SANDBOX_ID_MAX
 * bytes of printable ASCII without spaces.
 *
 * Returns 0 when the change is durable and published; *created (may be
 * NULL) is 1 for a new id, 0 for a replacement. Errors: -EINVAL (bad id, or
 * a mask that is not valid UTF-8), -EIO (store failed earlier), or the
 * errno of the failed write/fdatasync; the store is unchanged. */
int sg_store_put(sg_store_t *st, sg_sandbox_t *rec, int *created);

/* Writer. Removes id. *existed (may be NULL) is set; deleting an absent id
 * writes nothing and returns 0. Durable and published on 0; errors as for
 * sg_store_put. */
int sg_store_delete(sg_store_t *st, sg_slice_t id, int *existed);

/* Readers (between quiescent points) and the writer. Returns a borrowed
 * pointer or NULL. A reader's pointer stays valid until its next quiescent
 * point or offline; the writer's until its next put/delete/close or
 * sg_qsbr_reclaim. sg_sandbox_ref it to keep it longer. Lock-free: one
 * acquire load of the table pointer, then a plain probe. */
sg_sandbox_t *sg_store_get(const sg_store_t *st, sg_slice_t id);

/* Writer. Fills out[] with up to limit records whose id sorts (bytewise)
 * after `after` (NULL or "" = from the first), in id order. Borrowed, valid
 * until the writer's next put/delete/close or sg_qsbr_reclaim. Returns the
 * number written; *more (may be NULL) is 1 when records remain after the
 * last one returned. */
size_t sg_store_list(sg_store_t *st, const char *after, size_t limit, sg_sandbox_t **out,
                     int *more);

/* Readers and the writer: live records in the current table. */
size_t sg_store_count(const sg_store_t *st);

/* Writer: lines in the log now (0 for a memory-only store); for tests and
 * metrics. */
size_t sg_store_log_lines(const sg_store_t *st);

/* A lookup source (route/lookup.h) answering from the store, synchronously:
 * FOUND with a new reference, or NOT_FOUND. Must be used from a registered
 * QSBR reader thread (a worker) between quiescent points. st must outlive
 * the source. */
void sg_store_source_init(sg_lookup_source_t *src, sg_store_t *st);

#endif
