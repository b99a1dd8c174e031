/* Concurrent-exchange counts per sandbox id, shared by every worker and by
 * every copy of a sandbox's record (a DNS refresh or an admin replace makes
 * new records; the count must survive them). Only sandboxes with a
 * max_incoming_connections limit touch this table, so unlimited traffic
 * never takes its locks; the table is striped so limited sandboxes on
 * different stripes do not contend either. */
#ifndef SG_ROUTE_LIMITS_H
#define SG_ROUTE_LIMITS_H

#include "core/slice.h"

/* Takes one slot of id when fewer than max are taken: returns 1, else 0
 * (nothing taken). */
int sg_limit_acquire(sg_slice_t id, unsigned max);
/* Gives back a slot taken by sg_limit_acquire. */
void sg_limit_release(sg_slice_t id);
/* Slots of id taken now (for tests and logs). */
unsigned sg_limit_count(sg_slice_t id);

#endif
