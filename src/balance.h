/* balance.h: the primary's SCHED_RR listening handle. It accepts in C, with
   the GIL released, and hands each connection to the next worker channel
   registered on its key (a NEWCONN frame carrying the fd): this path never
   enters Python. A listener whose accepts go to the channels instead of to
   notes; it borrows the channels (the glue keeps them alive while they are
   registered). When every worker is out of descriptors it holds what it
   accepted and stops accepting, so that connections wait in the backlog.
   SCHED_NONE needs no engine code: the listening fd itself travels to each
   worker. */
#ifndef CX_BALANCE_H
#define CX_BALANCE_H

#include "channel.h"
#include "stream.h"

typedef struct cx_balancer {
    cx_listener l;             /* owns the listening fd */
    int key;                   /* carried in the NEWCONN frame's flags */
    cx_chan **targets;
    size_t ntargets, cap, next;
    int *held;                 /* owned: accepted, waiting for a worker */
    size_t nheld, held_cap;    /* with room; the listener is paused */
    cx_timer retry;            /* while holding: try them again */
} cx_balancer;

/* A balancer without a descriptor (fd -1), as cx_listener_init(). */
void cx_balancer_init(cx_loop *loop, cx_balancer *b);
/* Takes ownership of a listening fd, even on failure. */
int cx_balancer_open(cx_balancer *b, int fd, int key);
int cx_balancer_add(cx_balancer *b, cx_chan *ch);
/* Returns 1 if ch was registered. */
int cx_balancer_remove(cx_balancer *b, cx_chan *ch);
/* Hands fd (owned from here) to the next worker with room; holds it while
   none has room; closes it if no worker is left. */
void cx_balancer_route(cx_balancer *b, int fd);
void cx_balancer_close(cx_balancer *b);
/* The connections handed to ch that its peer may not have taken yet (an
   operator's figure): see balance.c. */
uint64_t cx_chan_rr_backlog(cx_chan *ch);

#endif
