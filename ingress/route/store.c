/* The admin sandbox store: copy-on-write tables published to lock-free
 * readers, an id-ordered array for listing, and the API. The log lives in
 * store_wal.c. */
#include "route/store_internal.h"

#include "core/log.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define TABLE_MIN 16

size_t sg_store__hash(sg_slice_t id)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < id.len; i++) {
        h ^= (unsigned char)id.base[i];
        h *= 1099511628211ULL;
    }
    return (size_t)(h ^ (h >> 32));
}

int sg_store__id_valid(sg_slice_t id)
{
    if (id.len == 0 || id.len > SG_SANDBOX_ID_MAX) return 0;
    for (size_t i = 0; i < id.len; i++) {
        unsigned char c = (unsigned char)id.base[i];
        if (c < 0x21 || c > 0x7e) return 0;
    }
    return 1;
}

static sg_slice_t rec_id(const sg_sandbox_t *sb)
{
    return sg_slice(sb->id, sb->id_len);
}

static int id_cmp(sg_slice_t a, sg_slice_t b)
{
    int c = memcmp(a.base, b.base, a.len < b.len ? a.len : b.len);
    if (c) return c;
    return a.len < b.len ? -1 : a.len > b.len;
}

/* ---- tables ---------------------------------------------------------- */

/* Capacity for n records right after a resize: load at most 1/3. */
static size_t fresh_capacity(size_t n)
{
    size_t cap = TABLE_MIN;
    while (cap < n * 3) cap *= 2;
    return cap;
}

/* Keep the capacity while the load stays within [1/8, 1/2]: resizing (a
 * full rehash) then happens only every so many writes, and a plain copy of
 * the slots is enough the rest of the time. */
static size_t capacity_for(const sg_store_table_t *t, size_t n)
{
    size_t cap = t->mask + 1;
    if (n * 2 <= cap && (n * 8 >= cap || cap == TABLE_MIN)) return cap;
    return fresh_capacity(n);
}

static sg_store_table_t *table_alloc(size_t cap)
{
    sg_store_table_t *t = calloc(1, sizeof(*t) + cap * sizeof(t->slots[0]));
    if (!t) abort();
    t->mask = cap - 1;
    return t;
}

static void table_insert_new(sg_store_table_t *t, sg_sandbox_t *rec)
{
    size_t pos = sg_store__hash(rec_id(rec)) & t->mask;
    while (t->slots[pos]) pos = (pos + 1) & t->mask;
    t->slots[pos] = rec;
    t->count++;
}

/* Slot index holding id, or SIZE_MAX. */
static size_t table_find(const sg_store_table_t *t, sg_slice_t id)
{
    size_t pos = sg_store__hash(id) & t->mask;
    for (const sg_sandbox_t *sb; (sb = t->slots[pos]) != NULL; pos = (pos + 1) & t->mask) {
        if (sb->id_len == id.len && memcmp(sb->id, id.base, id.len) == 0) return pos;
    }
    return SIZE_MAX;
}

sg_store_table_t *sg_store__table_new(size_t min_count)
{
    return table_alloc(fresh_capacity(min_count));
}

/* A private copy of t with capacity cap (same layout when cap is unchanged,
 * so a memcpy; otherwise rehashed). */
static sg_store_table_t *table_clone(const sg_store_table_t *t, size_t cap)
{
    if (cap == t->mask + 1) {
        size_t bytes = sizeof(*t) + cap * sizeof(t->slots[0]);
        sg_store_table_t *c = malloc(bytes);
        if (!c) abort();
        memcpy(c, t, bytes);
        return c;
    }
    sg_store_table_t *c = table_alloc(cap);
    for (size_t i = 0; i <= t->mask; i++)
        if (t->slots[i]) table_insert_new(c, t->slots[i]);
    return c;
}

sg_sandbox_t *sg_store__table_get(const sg_store_table_t *t, sg_slice_t id)
{
    size_t pos = table_find(t, id);
    return pos == SIZE_MAX ? NULL : t->slots[pos];
}

sg_sandbox_t *sg_store__table_set(sg_store_table_t **tp, sg_sandbox_t *rec)
{
    sg_store_table_t *t = *tp;
    size_t pos = table_find(t, rec_id(rec));
    if (pos != SIZE_MAX) {
        sg_sandbox_t *old = t->slots[pos];
        t->slots[pos] = rec;
        return old;
    }
    size_t cap = capacity_for(t, t->count + 1);
    if (cap != t->mask + 1) {
        *tp = table_clone(t, cap);
        free(t);
        t = *tp;
    }
    table_insert_new(t, rec);
    return NULL;
}

sg_sandbox_t *sg_store__table_remove(sg_store_table_t *t, sg_slice_t id)
{
    size_t i = table_find(t, id);
    if (i == SIZE_MAX) return NULL;
    sg_sandbox_t *old = t->slots[i];
    t->slots[i] = NULL;
    t->count--;
    /* Backward-shift deletion: move later members of the probe run into the
     * hole when their home slot does not lie cyclically in (i, j]. */
    for (size_t j = (i + 1) & t->mask; t->slots[j]; j = (j + 1) & t->mask) {
        size_t home = sg_store__hash(rec_id(t->slots[j])) & t->mask;
        int stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (stays) continue;
        t->slots[i] = t->slots[j];
        t->slots[j] = NULL;
        i = j;
    }
    return old;
}

/* ---- retiring old tables and records ------------------------------- */

static void retire_table(void *arg)
{
    free(arg);
}

static void retire_record(void *arg)
{
    sg_sandbox_unref(arg);
}

static void retire_table_and_records(void *arg)
{
    sg_store_table_t *t = arg;
    for (size_t i = 0; i <= t->mask; i++)
        if (t->slots[i]) sg_sandbox_unref(t->slots[i]);
    free(t);
}

static void retire(sg_store_t *st, void (*fn)(void *), void *arg)
{
    if (st->qsbr)
        sg_qsbr_defer(st->qsbr, fn, arg);
    else
        fn(arg);
}

/* Publishes t (replacing the current table) and retires the old table and
 * `dropped` (a record no longer live; may be NULL). */
static void publish(sg_store_t *st, sg_store_table_t *t, sg_sandbox_t *dropped)
{
    sg_store_table_t *old = atomic_load_explicit(&st->table, memory_order_relaxed);
    /* Release: the table's slots and every record it points to (built
     * before this) are visible to a reader whose acquire load sees t. */
    atomic_store_explicit(&st->table, t, memory_order_release);
    retire(st, retire_table, old);
    if (dropped) retire(st, retire_record, dropped);
    if (st->qsbr) sg_qsbr_reclaim(st->qsbr);
}

/* ---- the id-ordered array ------------------------------------------ */

/* First index whose id is >= id (or > id when `strictly`). */
static size_t sorted_bound(const sg_store_t *st, sg_slice_t id, int strictly)
{
    size_t lo = 0, hi = st->n_sorted;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = id_cmp(rec_id(st->sorted[mid]), id);
        if (c < 0 || (strictly && c == 0))
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static void sorted_put(sg_store_t *st, sg_sandbox_t *rec)
{
    size_t pos = sorted_bound(st, rec_id(rec), 0);
    if (pos < st->n_sorted && id_cmp(rec_id(st->sorted[pos]), rec_id(rec)) == 0) {
        st->sorted[pos] = rec;
        return;
    }
    if (st->n_sorted == st->cap_sorted) {
        size_t cap = st->cap_sorted ? st->cap_sorted * 2 : 64;
        sg_sandbox_t **s = realloc(st->sorted, cap * sizeof(*s));
        if (!s) abort();
        st->sorted = s;
        st->cap_sorted = cap;
    }
    memmove(st->sorted + pos + 1, st->sorted + pos, (st->n_sorted - pos) * sizeof(*st->sorted));
    st->sorted[pos] = rec;
    st->n_sorted++;
}

static void sorted_remove(sg_store_t *st, sg_slice_t id)
{
    size_t pos = sorted_bound(st, id, 0);
    if (pos >= st->n_sorted || id_cmp(rec_id(st->sorted[pos]), id) != 0) return;
    memmove(st->sorted + pos, st->sorted + pos + 1, (st->n_sorted - pos - 1) * sizeof(*st->sorted));
    st->n_sorted--;
}

static int cmp_records(const void *a, const void *b)
{
    return id_cmp(rec_id(*(sg_sandbox_t *const *)a), rec_id(*(sg_sandbox_t *const *)b));
}

static void sorted_build(sg_store_t *st, const sg_store_table_t *t)
{
    st->cap_sorted = t->count > 64 ? t->count : 64;
    st->sorted = malloc(st->cap_sorted * sizeof(*st->sorted));
    if (!st->sorted) abort();
    st->n_sorted = 0;
    for (size_t i = 0; i <= t->mask; i++)
        if (t->slots[i]) st->sorted[st->n_sorted++] = t->slots[i];
    qsort(st->sorted, st->n_sorted, sizeof(*st->sorted), cmp_records);
}

/* ---- API --------------------------------------------------------------- */

int sg_store_open(const char *path, sg_qsbr_t *qsbr, sg_store_t **out, char *err, size_t errlen)
{
    *out = NULL;
    sg_store_t *st = calloc(1, sizeof(*st));
    if (!st) abort();
    st->qsbr = qsbr;
    st->fd = -1;
    sg_store_table_t *t = sg_store__table_new(0);
    if (path) {
        st->path = strdup(path);
        if (!st->path) abort();
        if (sg_store__wal_open(st, &t, err, errlen) < 0) {
            retire_table_and_records(t);
            sg_store__wal_close(st);
            sg_strbuf_free(&st->line);
            free(st->path);
            free(st->dir);
            free(st);
            return -1;
        }
    }
    sorted_build(st, t);
    atomic_init(&st->table, t);
    *out = st;
    if (path) {
        sg_log_info("admin store %s: %zu sandboxes, %zu log lines", path, t->count, st->log_lines);
        sg_store__wal_maybe_compact(st);
    }
    return 0;
}

void sg_store_close(sg_store_t *st)
{
    if (!st) return;
    sg_store__wal_close(st);
    sg_store_table_t *t = atomic_load_explicit(&st->table, memory_order_relaxed);
    retire(st, retire_table_and_records, t);
    if (st->qsbr) sg_qsbr_reclaim(st->qsbr);
    sg_strbuf_free(&st->line);
    free(st->sorted);
    free(st->path);
    free(st->dir);
    free(st);
}

/* Writes the line in st->line to the log (when there is one). */
static int log_line(sg_store_t *st)
{
    if (st->fd < 0) return 0;
    return sg_store__wal_append(st, st->line.base, st->line.len);
}

int sg_store_put(sg_store_t *st, sg_sandbox_t *rec, int *created)
{
    if (!sg_store__id_valid(rec_id(rec))) {
        sg_sandbox_unref(rec);
        return -EINVAL;
    }
    if (st->broken) {
        sg_sandbox_unref(rec);
        return -EIO;
    }
    rec->source = "admin";
    /* Encoded even without a log, so both kinds of store accept the same
     * records. */
    sg_strbuf_reset(&st->line);
    int r = sg_store__encode_put(&st->line, rec);
    if (r == 0) r = log_line(st);
    if (r < 0) {
        sg_sandbox_unref(rec);
        return r;
    }
    /* Durable: now make it visible. */
    const sg_store_table_t *cur = atomic_load_explicit(&st->table, memory_order_relaxed);
    size_t pos = table_find(cur, rec_id(rec));
    sg_store_table_t *t = table_clone(cur, capacity_for(cur, cur->count + (pos == SIZE_MAX)));
    sg_sandbox_t *old = sg_store__table_set(&t, rec);
    sorted_put(st, rec);
    publish(st, t, old);
    if (created) *created = old == NULL;
    sg_store__wal_maybe_compact(st);
    return 0;
}

int sg_store_delete(sg_store_t *st, sg_slice_t id, int *existed)
{
    if (existed) *existed = 0;
    const sg_store_table_t *cur = atomic_load_explicit(&st->table, memory_order_relaxed);
    if (table_find(cur, id) == SIZE_MAX) return 0;
    if (st->broken) return -EIO;
    sg_strbuf_reset(&st->line);
    int r = sg_store__encode_del(&st->line, id);
    if (r == 0) r = log_line(st);
    if (r < 0) return r;
    sg_store_table_t *t = table_clone(cur, capacity_for(cur, cur->count - 1));
    sg_sandbox_t *old = sg_store__table_remove(t, id);
    sorted_remove(st, id);
    publish(st, t, old);
    if (existed) *existed = 1;
    sg_store__wal_maybe_compact(st);
    return 0;
}

/* The table pointer is atomic in a const store: C11 declares atomic_load on
 * a non-const object (C17 relaxed that), so cast the qualifier away for the
 * load; nothing is written. */
static sg_store_table_t *current(const sg_store_t *st)
{
    return atomic_load_explicit(&((sg_store_t *)st)->table, memory_order_acquire);
}

sg_sandbox_t *sg_store_get(const sg_store_t *st, sg_slice_t id)
{
    return sg_store__table_get(current(st), id);
}

size_t sg_store_count(const sg_store_t *st)
{
    return current(st)->count;
}

size_t sg_store_log_lines(const sg_store_t *st)
{
    return st->log_lines;
}

size_t sg_store_list(sg_store_t *st, const char *after, size_t limit, sg_sandbox_t **out, int *more)
{
    size_t pos = after && *after ? sorted_bound(st, sg_slice_cstr(after), 1) : 0;
    size_t n = st->n_sorted - pos < limit ? st->n_sorted - pos : limit;
    for (size_t i = 0; i < n; i++) out[i] = st->sorted[pos + i];
    if (more) *more = pos + n < st->n_sorted;
    return n;
}

static sg_lookup_result_t store_start(sg_lookup_source_t *src, sg_lookup_req_t *req, sg_slice_t id,
                                      sg_sandbox_t **out)
{
    sg_sandbox_t *sb = sg_store_get(src->data, id);
    if (!sb) return SG_LOOKUP_NOT_FOUND;
    sg_sandbox_ref(sb);
    *out = sb;
    return SG_LOOKUP_FOUND;
}

void sg_store_source_init(sg_lookup_source_t *src, sg_store_t *st)
{
    *src = (sg_lookup_source_t){.name = "admin", .start = store_start, .cancel = NULL, .data = st};
}
