/* balance.c: SCHED_RR in the primary (balance.h). Runs inside a loop turn
   without the GIL and makes no note at all on the hot path: accept4, pick the
   next open channel, queue a NEWCONN frame that owns the fd. */
#include "balance.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define ACCEPTS_PER_WAKEUP 64

static cx_chan *
next_target(cx_balancer *b)
{
    for (size_t tried = 0; tried < b->ntargets; tried++) {
        cx_chan *ch = b->targets[b->next++ % b->ntargets];
        if (cx_chan_writable(ch)) {
            return ch;
        }
    }
    return NULL;
}

void
cx_balancer_route(cx_balancer *b, int fd)
{
    cx_chan *ch;

    while ((ch = next_target(b)) != NULL) {
        int r = cx_chan_send_owned(ch, CX_FRAME_NEWCONN, b->key, &fd);
        if (r >= 0) {
            return;
        }
        if (fd < 0) {
            break;              /* the queue took the fd, and failed: gone */
        }
    }
    /* Nobody listens any more: the client sees the connection close. */
    cx_close(&fd);
}

static void
balancer_accepted(cx_listener *l, int fd)
{
    cx_balancer_route(cx_container_of(l, cx_balancer, l), fd);
}

static void
balancer_forget(cx_handle *h)
{
    cx_balancer *b = cx_container_of(h, cx_balancer, l.h);

    cx_listener_release(&b->l);
    free(b->targets);
    b->targets = NULL;
    b->ntargets = b->cap = 0;
    cx_handle_unlink(h);
}

void
cx_balancer_init(cx_loop *loop, cx_balancer *b)
{
    memset(b, 0, sizeof(*b));
    cx_listener_init(loop, &b->l);
    b->l.on_accept = balancer_accepted;
    b->l.h.forget = balancer_forget;
}

int
cx_balancer_open(cx_balancer *b, int fd, int key)
{
    b->key = key;
    b->l.paused = b->ntargets == 0;
    return cx_listener_open(&b->l, fd, 0, ACCEPTS_PER_WAKEUP);
}

int
cx_balancer_add(cx_balancer *b, cx_chan *ch)
{
    int r = cx_grow((void **)&b->targets, &b->cap, b->ntargets + 1,
                    sizeof(*b->targets));

    if (r < 0) {
        return r;
    }
    b->targets[b->ntargets++] = ch;
    if (b->ntargets == 1 && (r = cx_listener_pause(&b->l, 0)) < 0) {
        b->ntargets--;          /* not registered: the caller keeps no ref */
        return r;
    }
    return 0;
}

int
cx_balancer_remove(cx_balancer *b, cx_chan *ch)
{
    for (size_t i = 0; i < b->ntargets; i++) {
        if (b->targets[i] == ch) {
            memmove(b->targets + i, b->targets + i + 1,
                    (b->ntargets - i - 1) * sizeof(*b->targets));
            /* With nobody to take them, connections wait in the backlog
               (a supervisor respawning) rather than be accepted and closed. */
            if (--b->ntargets == 0) {
                cx_listener_pause(&b->l, 1);
            }
            return 1;
        }
    }
    return 0;
}

void
cx_balancer_close(cx_balancer *b)
{
    balancer_forget(&b->l.h);
}
