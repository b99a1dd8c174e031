#include "route/limits.h"

#include "config/config.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define STRIPES 64

typedef struct entry_s {
    struct entry_s *next;
    unsigned count;
    size_t len;
    char id[SG_SANDBOX_ID_MAX];
} entry_t;

static struct {
    pthread_mutex_t lock;
    entry_t *head; /* few entries per stripe: only ids with live, limited exchanges */
} stripes[STRIPES] = {[0 ... STRIPES - 1] = {PTHREAD_MUTEX_INITIALIZER, NULL}};

static size_t stripe_of(sg_slice_t id)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < id.len; i++) h = (h ^ (unsigned char)id.base[i]) * 1099511628211ULL;
    return (size_t)(h % STRIPES);
}

static entry_t **find(entry_t **pp, sg_slice_t id)
{
    for (; *pp; pp = &(*pp)->next)
        if ((*pp)->len == id.len && memcmp((*pp)->id, id.base, id.len) == 0) return pp;
    return NULL;
}

int sg_limit_acquire(sg_slice_t id, unsigned max)
{
    if (id.len > SG_SANDBOX_ID_MAX) id.len = SG_SANDBOX_ID_MAX;
    size_t s = stripe_of(id);
    int ok = 0;
    pthread_mutex_lock(&stripes[s].lock);
    entry_t **pp = find(&stripes[s].head, id);
    if (!pp) {
        if (max > 0) {
            entry_t *e = calloc(1, sizeof(*e));
            if (!e) abort();
            memcpy(e->id, id.base, id.len);
            e->len = id.len;
            e->count = 1;
            e->next = stripes[s].head;
            stripes[s].head = e;
            ok = 1;
        }
    } else if ((*pp)->count < max) {
        (*pp)->count++;
        ok = 1;
    }
    pthread_mutex_unlock(&stripes[s].lock);
    return ok;
}

void sg_limit_release(sg_slice_t id)
{
    if (id.len > SG_SANDBOX_ID_MAX) id.len = SG_SANDBOX_ID_MAX;
    size_t s = stripe_of(id);
    pthread_mutex_lock(&stripes[s].lock);
    entry_t **pp = find(&stripes[s].head, id);
    if (pp && --(*pp)->count == 0) {
        entry_t *e = *pp;
        *pp = e->next;
        free(e);
    }
    pthread_mutex_unlock(&stripes[s].lock);
}

unsigned sg_limit_count(sg_slice_t id)
{
    if (id.len > SG_SANDBOX_ID_MAX) id.len = SG_SANDBOX_ID_MAX;
    size_t s = stripe_of(id);
    pthread_mutex_lock(&stripes[s].lock);
    entry_t **pp = find(&stripes[s].head, id);
    unsigned n = pp ? (*pp)->count : 0;
    pthread_mutex_unlock(&stripes[s].lock);
    return n;
}
