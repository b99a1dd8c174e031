#include "net/turn_end.h"

static void check_cb(uv_check_t *h)
{
    sg_turn_end_t *te = h->data;
    te->run(te);
}

static void idle_cb(uv_idle_t *h) {}

void sg_turn_end_init(sg_turn_end_t *te, uv_loop_t *loop, sg_turn_end_cb run)
{
    te->loop = loop;
    te->run = run;
    te->closed = NULL;
    uv_check_init(loop, &te->check);
    uv_idle_init(loop, &te->idle);
    te->check.data = te->idle.data = te;
    te->handles_open = 2;
    uv_check_start(&te->check, check_cb);
    uv_unref((uv_handle_t *)&te->check);
}

void sg_turn_end_set_pending(sg_turn_end_t *te, int pending)
{
    if (pending)
        uv_idle_start(&te->idle, idle_cb);
    else
        uv_idle_stop(&te->idle);
}

static void closed_cb(uv_handle_t *h)
{
    sg_turn_end_t *te = h->data;
    if (--te->handles_open == 0 && te->closed) te->closed(te);
}

void sg_turn_end_close(sg_turn_end_t *te, sg_turn_end_cb closed)
{
    te->closed = closed;
    uv_close((uv_handle_t *)&te->check, closed_cb);
    uv_close((uv_handle_t *)&te->idle, closed_cb);
}
