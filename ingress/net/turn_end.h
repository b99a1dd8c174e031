/* Work done at the end of every event-loop turn, after the turn's I/O
 * callbacks: a uv_check_t that does not keep the loop alive, plus a switch
 * that keeps the next poll from blocking while work still waits. Owners
 * embed one per loop thread (the TCP stream's finished-write callbacks, the
 * TLS handshake meter). */
#ifndef SG_NET_TURN_END_H
#define SG_NET_TURN_END_H

#include <uv.h>

typedef struct sg_turn_end_s sg_turn_end_t;
typedef void (*sg_turn_end_cb)(sg_turn_end_t *te);

struct sg_turn_end_s {
    uv_check_t check; /* calls run after each turn's I/O */
    uv_idle_t idle;   /* active while work waits: the next poll does not block */
    uv_loop_t *loop;
    sg_turn_end_cb run, closed;
    int handles_open;
};

/* Starts calling run(te) at the end of every turn of loop. */
void sg_turn_end_init(sg_turn_end_t *te, uv_loop_t *loop, sg_turn_end_cb run);
/* pending: work is waiting, so the next turn must come without blocking. */
void sg_turn_end_set_pending(sg_turn_end_t *te, int pending);
/* Stops; closed(te) runs once the handles are closed (the owner may free
 * te there). */
void sg_turn_end_close(sg_turn_end_t *te, sg_turn_end_cb closed);

#endif
