/* policy.h: how the loop waits when it has nothing left to do, on behalf of
   the channels and streams on it: spin for the answer after a user message,
   or yield the CPU once after a turn that worked. The reactor (loop.c) has
   no such policy: this one is reached through its wait hooks, and its
   owner (the glue) installs it. No descriptors, no Python. */
#ifndef CX_POLICY_H
#define CX_POLICY_H

#include "loop.h"

typedef struct cx_policy {
    /* Spinning: the last turn carried a user message (channel.c). */
    uint64_t spin_ns;                  /* busy-poll budget; 0: never spin */
    int busy;                          /* the last turn carried a message */
    int spin_misses, spin_rest;        /* adaptive: stop spinning when idle */
    /* Yielding once before a sleep: adaptive, and never in a loop with a
       raced listener (stream.c). */
    int worked;                        /* the last turn had events */
    int raced;                         /* open listeners with raced set */
    uint64_t resume_ns;                /* none before then (CLOCK_MONOTONIC) */
    int window, slow;                  /* yields, and slow ones, of this window */
} cx_policy;

/* Puts p, fresh, in charge of how loop waits (its wait hooks): after
   cx_loop_init(), which leaves a loop with none. */
void cx_policy_start(cx_policy *p, cx_loop *loop, uint64_t spin_ns);
/* A user message arrived: the answer may be near, so the next wait spins
   for it. Nothing on a loop without a policy. */
void cx_policy_message(cx_loop *loop);
/* A listener that other processes accept from too opened (1) or closed
   (-1). Nothing on a loop without a policy. */
void cx_policy_raced(cx_loop *loop, int delta);

#endif
