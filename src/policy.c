/* policy.c: the loop's wait policy (policy.h): spinning after a message,
   one yield after a turn that worked. Runs in the loop's wait hooks,
   without the GIL; owns nothing but its counters. Installed by the glue
   (py_loop.c); told of messages by channel.c and of raced listeners by
   stream.c. */
#include "policy.h"

#include <sched.h>

/* Before sleeping, poll for a short while: waking an idle vCPU costs tens of
   microseconds, more than a message round trip, so a conversation between
   processes (messages to and fro over IPC) is far faster when the loop stays
   awake for the answer. Only a turn that delivered a user message spins
   (cx_policy_message): under socket load the wait is for clients, and
   spinning would only take CPU from them. Spinning stops by itself when it
   keeps finding nothing. */
static int
spin_wait(cx_policy *p, cx_loop *loop, struct epoll_event *events, int max)
{
    uint64_t until;
    int n;

    if (p->spin_ns == 0) {
        return 0;
    }
    if (p->spin_rest > 0) {
        p->spin_rest--;
        return 0;
    }
    until = cx_now_ns() + p->spin_ns;
    do {
        n = epoll_wait(loop->epfd, events, max, 0);
        if (n != 0) {
            p->spin_misses = 0;
            return n;
        }
    } while (cx_now_ns() < until);
    if (++p->spin_misses >= 4) {
        p->spin_misses = 0;
        /* idle lately: sleep at once for a while */
        p->spin_rest = 64;
    }
    return 0;
}

/* Before sleeping after a turn that did work, give the CPU away once and
   look again. A server's work comes from processes on this machine as often
   as from the network (the primary's hand-offs, local clients): sleeping
   after each burst costs a wakeup on both sides, an IPI on a VM, while a
   yield lets them run here, and the next burst is taken without a sleep
   (measured: README's performance table); one that finds nothing costs
   two cheap syscalls. Yielding stops for YIELD_PAUSE_NS when
   YIELD_SLOW_MAX of YIELD_WINDOW yields took over YIELD_SLOW_NS each: a
   CPU-bound neighbour holds this CPU for whole time slices, and an event
   waits out each of them, which a light load's latency pays in full.
   Tasks that block often, as clients and workers do, rarely keep a yield
   that long even when the machine is saturated. A loop with a raced
   listener never yields: it would stay runnable and keep polling the
   shared accept queue while its peers sleep, and take more than its
   share. */
#define YIELD_SLOW_NS (2u * 1000u * 1000u)
#define YIELD_WINDOW 16
#define YIELD_SLOW_MAX 4
#define YIELD_PAUSE_NS (1000u * 1000u * 1000u)

static int
yield_wait(cx_policy *p, cx_loop *loop, struct epoll_event *events, int max)
{
    uint64_t start, took;
    int n;

    if (p->raced > 0) {
        return 0;
    }
    start = cx_now_ns();
    if (start < p->resume_ns) {
        return 0;
    }
    (void)sched_yield();
    n = epoll_wait(loop->epfd, events, max, 0);
    took = cx_now_ns() - start;
    if (took > YIELD_SLOW_NS && ++p->slow >= YIELD_SLOW_MAX) {
        p->resume_ns = start + took + YIELD_PAUSE_NS;
        p->window = p->slow = 0;
    }
    else if (++p->window >= YIELD_WINDOW) {
        p->window = p->slow = 0;
    }
    return n;
}

static int
before_wait(cx_loop *loop, struct epoll_event *events, int max)
{
    cx_policy *p = loop->wait_hooks.data;

    if (p->busy) {
        return spin_wait(p, loop, events, max);
    }
    if (p->worked) {
        return yield_wait(p, loop, events, max);
    }
    return 0;
}

static void
after_wait(cx_loop *loop, int n)
{
    cx_policy *p = loop->wait_hooks.data;

    p->busy = 0;
    p->worked = n > 0;
}

/* The loop's policy, if it has this one. */
static cx_policy *
policy_of(cx_loop *loop)
{
    return loop->wait_hooks.after == after_wait ? loop->wait_hooks.data
                                                : NULL;
}

void
cx_policy_start(cx_policy *p, cx_loop *loop, uint64_t spin_ns)
{
    *p = (cx_policy){.spin_ns = spin_ns};
    loop->wait_hooks.before = before_wait;
    loop->wait_hooks.after = after_wait;
    loop->wait_hooks.data = p;
}

void
cx_policy_message(cx_loop *loop)
{
    cx_policy *p = policy_of(loop);

    if (p != NULL) {
        p->busy = 1;
    }
}

void
cx_policy_raced(cx_loop *loop, int delta)
{
    cx_policy *p = policy_of(loop);

    if (p != NULL) {
        p->raced += delta;
    }
}
