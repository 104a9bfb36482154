/* balance.c: SCHED_RR in the primary (balance.h). Runs inside a loop turn
   without the GIL and makes no note at all on the hot path: accept4, pick the
   next open channel, queue a NEWCONN frame that owns the fd. */
#include "balance.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define ACCEPTS_PER_WAKEUP 64
/* While every worker is out of descriptors: how often to look for room. A
   worker checks its own every 100 ms (net.py), so this only bounds how
   late its FRAME_ROOM is acted on. */
#define HOLD_RETRY_NS (10u * 1000u * 1000u)

enum { SENT, NO_ROOM, NOBODY };

/* Hands *fdp to the next open channel that has room, in turn. Returns
   SENT (the queue has the fd, or the fd is gone with a failed queue),
   NO_ROOM (every open channel is full: *fdp is still the caller's) or
   NOBODY (no open channel at all: likewise). */
static int
hand_off(cx_balancer *b, int *fdp)
{
    int full = 0;

    for (size_t tried = 0; tried < b->ntargets; tried++) {
        cx_chan *ch = b->targets[b->next++ % b->ntargets];
        int r;
        if (!cx_chan_writable(ch)) {
            continue;
        }
        if (ch->peer_full) {
            full = 1;
            continue;
        }
        r = cx_chan_send_owned(ch, CX_FRAME_NEWCONN, b->key, fdp);
        if (r >= 0 || *fdp < 0) {
            return SENT;        /* a queue that took the fd and failed: gone */
        }
    }
    return full ? NO_ROOM : NOBODY;
}

/* The listener accepts while nothing is held and a worker is registered;
   otherwise connections wait in the backlog, and the retry timer runs
   while something is held. */
static void
balancer_settle(cx_balancer *b)
{
    int wait = b->nheld > 0 || b->ntargets == 0;

    if (b->l.fd < 0) {
        return;
    }
    if (wait != b->l.paused && cx_listener_pause(&b->l, wait) < 0) {
        cx_timer_start(&b->retry, HOLD_RETRY_NS);   /* epoll_ctl: later */
        return;
    }
    if (b->nheld > 0) {
        cx_timer_start(&b->retry, HOLD_RETRY_NS);
    }
    else {
        cx_timer_stop(&b->retry);
    }
}

/* Hands the held connections out, oldest first, while a worker has room. */
static void
balancer_flush_held(cx_balancer *b)
{
    size_t done = 0;

    while (done < b->nheld) {
        int r = hand_off(b, &b->held[done]);
        if (r == NO_ROOM) {
            break;
        }
        if (r == NOBODY) {
            cx_close(&b->held[done]);   /* nobody listens any more */
        }
        done++;
    }
    if (done > 0) {
        b->nheld -= done;
        memmove(b->held, b->held + done, b->nheld * sizeof(int));
    }
}

static void
balancer_retry(cx_timer *t)
{
    cx_balancer *b = cx_container_of(t, cx_balancer, retry);

    balancer_flush_held(b);
    balancer_settle(b);
}

void
cx_balancer_route(cx_balancer *b, int fd)
{
    int r = b->nheld > 0 ? NO_ROOM : hand_off(b, &fd);    /* in order */

    if (r == SENT) {
        return;
    }
    if (r == NO_ROOM && cx_grow((void **)&b->held, &b->held_cap,
                                b->nheld + 1, sizeof(int)) == 0) {
        /* Every worker is out of descriptors: this one waits here, and
           the next ones in the backlog, until one has room. */
        b->held[b->nheld++] = fd;
        balancer_settle(b);
        return;
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
    cx_timer_stop(&b->retry);
    for (size_t i = 0; i < b->nheld; i++) {
        cx_close(&b->held[i]);
    }
    free(b->held);
    free(b->targets);
    b->held = NULL;
    b->targets = NULL;
    b->nheld = b->held_cap = 0;
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
    cx_timer_init(loop, &b->retry);
    b->retry.cb = balancer_retry;
    b->retry.h.referenced = 0;
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
    if (b->ntargets == 1 && b->nheld == 0 &&
        (r = cx_listener_pause(&b->l, 0)) < 0) {
        b->ntargets--;          /* not registered: the caller keeps no ref */
        return r;
    }
    if (b->nheld > 0) {         /* a new worker has room */
        balancer_flush_held(b);
        balancer_settle(b);
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
