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
/* A worker with hand-offs unread that has not been seen reading its
   channel for this long is behind: it gets no connection while another
   is not. A healthy worker reads its channel at every loop turn, so this
   is a turn far longer than a burst's (64 requests of a slow ASGI app, a
   CPU shared with the load generator) and short beside a client's
   patience: what a stopped worker is handed meanwhile is lost to it. */
#define BEHIND_NS (100u * 1000u * 1000u)
/* One look at a channel's unread bytes (a syscall) serves the hand-offs of
   the next 50 us: an accept burst makes few. */
#define LOOK_NS (50u * 1000u)

enum { SKIP, BEHIND, READING, IDLE };

/* Whether ch reads what it is handed: IDLE (nothing unread), READING
   (seen reading within BEHIND_NS), BEHIND, or SKIP (closed, or out of
   descriptors). The peer has read since we last looked when its socket's
   unread bytes fell below the mark we took then or after our last write
   (channel.c); nothing else tells, as the peer acknowledges nothing. */
static int
reads(cx_chan *ch, uint64_t now)
{
    if (!cx_chan_writable(ch) || ch->peer_full) {
        return SKIP;
    }
    if (now - ch->rr_checked_ns >= LOOK_NS) {
        long unread = cx_chan_unread(ch);
        ch->rr_checked_ns = now;
        if (unread >= 0 && (unread == 0 || unread < ch->rr_unread)) {
            ch->rr_read_ns = now;
            ch->rr_unread = unread;
        }
    }
    if (ch->rr_unread == 0 && cx_outq_size(&ch->out) == 0) {
        ch->rr_handed_seen_read = ch->rr_handed;
        return IDLE;
    }
    return now - ch->rr_read_ns <= BEHIND_NS ? READING : BEHIND;
}

/* The next open channel with room, in turn: the first idle one, else the
   first reading one, else (all behind) the one seen reading last; NULL
   if none has room. */
static cx_chan *
pick(cx_balancer *b)
{
    uint64_t now = cx_now_ns();
    size_t reading = SIZE_MAX, behind = SIZE_MAX, at = SIZE_MAX;

    for (size_t tried = 0; tried < b->ntargets && at == SIZE_MAX; tried++) {
        size_t i = (b->next + tried) % b->ntargets;
        cx_chan *ch = b->targets[i];
        switch (reads(ch, now)) {
        case IDLE:
            at = i;
            break;
        case READING:
            reading = reading == SIZE_MAX ? i : reading;
            break;
        case BEHIND:
            if (behind == SIZE_MAX ||
                ch->rr_read_ns > b->targets[behind]->rr_read_ns) {
                behind = i;
            }
            break;
        default:
            break;
        }
    }
    if (at == SIZE_MAX) {
        at = reading != SIZE_MAX ? reading : behind;
    }
    if (at == SIZE_MAX) {
        return NULL;
    }
    b->next = at + 1;
    return b->targets[at];
}

/* Hands *fdp to a channel (pick()). Returns 1 when it is sent (the queue
   has the fd, or the fd is gone with a failed queue), 0 when no open
   channel has room (*fdp is still the caller's). */
static int
hand_off(cx_balancer *b, int *fdp)
{
    cx_chan *ch;

    /* pick() offers writable channels only, whose queue takes the fd: one
       round is the rule, and the bound only a guard. */
    for (size_t tries = 0; tries <= b->ntargets; tries++) {
        if ((ch = pick(b)) == NULL) {
            break;
        }
        if (cx_chan_send_owned(ch, CX_FRAME_NEWCONN, b->key, fdp) >= 0) {
            ch->rr_handed++;
            return 1;
        }
        if (*fdp < 0) {
            return 1;           /* a queue that took the fd and failed: gone */
        }
    }
    return 0;
}

/* The listener accepts while nothing is held and a worker is registered;
   otherwise connections wait in the backlog, and the retry timer runs
   while something is held for workers that are full (a new worker
   flushes what waits for one: cx_balancer_add()). */
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
    if (b->nheld > 0 && b->ntargets > 0) {
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

    while (done < b->nheld && hand_off(b, &b->held[done])) {
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
    if (b->nheld == 0 && hand_off(b, &fd)) {      /* in order */
        return;
    }
    if (cx_grow((void **)&b->held, &b->held_cap, b->nheld + 1, sizeof(int)) == 0) {
        /* Every worker is out of descriptors, or none is registered (a
           worker gave this one back as it retired, and the next is still
           starting): it waits here, and the next ones in the backlog,
           until one can take it. The balancer's close ends the wait. */
        b->held[b->nheld++] = fd;
        balancer_settle(b);
        return;
    }
    cx_close(&fd);              /* no memory to hold it: its client sees a close */
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
    if (ch->rr_watch++ == 0) {  /* what it has not read yet is not late */
        long unread = cx_chan_unread(ch);
        ch->rr_unread = unread > 0 ? unread : 0;
        ch->rr_read_ns = ch->rr_checked_ns = cx_now_ns();
    }
    if (b->ntargets == 1 && b->nheld == 0 &&
        (r = cx_listener_pause(&b->l, 0)) < 0) {
        b->ntargets--;          /* not registered: the caller keeps no ref */
        ch->rr_watch--;
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
            ch->rr_watch--;
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

/* The hand-offs made since ch was last seen with nothing unread and nothing
   queued. The peer acknowledges nothing, and the kernel counts what it has
   not read in buffers' true sizes, not frames: so this is an upper bound,
   exact at 0 and while the peer reads nothing at all (stopped, stuck). */
uint64_t
cx_chan_rr_backlog(cx_chan *ch)
{
    if (cx_chan_unread(ch) == 0 && cx_outq_size(&ch->out) == 0) {
        ch->rr_handed_seen_read = ch->rr_handed;
    }
    return ch->rr_handed - ch->rr_handed_seen_read;
}

void
cx_balancer_close(cx_balancer *b)
{
    /* The glue still holds the channels here (not so in a forget after
       fork, where it is moot). */
    for (size_t i = 0; i < b->ntargets; i++) {
        b->targets[i]->rr_watch--;
    }
    balancer_forget(&b->l.h);
}
