/* balance.c: SCHED_RR in the primary (balance.h). Runs inside a loop turn
   without the GIL and makes no note at all on the hot path: accept4, pick the
   next open channel, queue a NEWCONN frame that owns the fd. */
#include "balance.h"
#include "stream.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define ACCEPTS_PER_WAKEUP 64
#define EMFILE_RETRY_NS (100u * 1000u * 1000u)

static cx_chan *
next_target(cx_balancer *b)
{
    for (size_t tried = 0; tried < b->ntargets; tried++) {
        cx_chan *ch = b->targets[b->next++ % b->ntargets];
        if (ch->fd >= 0 && !ch->closing && !ch->write_err) {
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
            b->routed++;
            return;
        }
        if (fd < 0) {
            break;              /* the queue took the fd, and failed: gone */
        }
    }
    /* Nobody listens any more: the client sees the connection close. */
    b->dropped++;
    cx_close(&fd);
}

static void
balancer_ready(cx_loop *loop, cx_io *io, uint32_t events)
{
    cx_balancer *b = cx_container_of(io, cx_balancer, io);

    CX_UNUSED(events);
    /* Hand-offs of one burst are queued, then flushed together: each worker
       gets its share of the burst in one sendmsg. */
    loop->deferring = 1;
    for (int i = 0; i < ACCEPTS_PER_WAKEUP; i++) {
        int c = cx_accept(b->fd);
        if (c == -EAGAIN) {
            break;
        }
        if (cx_accept_exhausted(-c)) {
            cx_io_stop(loop, &b->io);
            cx_timer_start(&b->retry, EMFILE_RETRY_NS);
            break;
        }
        if (c >= 0) {
            cx_balancer_route(b, c);
        }
    }
    loop->deferring = 0;
    cx_loop_flush(loop);
}

static void
balancer_retry(cx_timer *t)
{
    cx_balancer *b = cx_container_of(t, cx_balancer, retry);

    if (b->fd >= 0 && cx_io_start(b->h.loop, &b->io, EPOLLIN) < 0) {
        cx_timer_start(&b->retry, EMFILE_RETRY_NS);
    }
}

static void
balancer_forget(cx_handle *h)
{
    cx_balancer *b = cx_container_of(h, cx_balancer, h);

    cx_io_stop(h->loop, &b->io);
    cx_close(&b->fd);
    cx_handle_unlink(&b->retry.h);
    free(b->targets);
    b->targets = NULL;
    b->ntargets = b->cap = 0;
    cx_handle_unlink(h);
}

int
cx_balancer_open(cx_loop *loop, cx_balancer *b, int fd, int key)
{
    int r;

    memset(b, 0, sizeof(*b));
    cx_handle_init(loop, &b->h, balancer_forget);
    cx_timer_init(loop, &b->retry);
    b->retry.cb = balancer_retry;
    b->retry.h.referenced = 0;
    b->fd = fd;
    b->key = key;
    b->io.fd = fd;
    b->io.cb = balancer_ready;
    r = cx_io_start(loop, &b->io, EPOLLIN);
    if (r < 0) {
        cx_close(&b->fd);
        return r;
    }
    cx_handle_link(&b->h);
    return 0;
}

int
cx_balancer_add(cx_balancer *b, cx_chan *ch)
{
    int r = cx_grow((void **)&b->targets, &b->cap, b->ntargets + 1,
                    sizeof(*b->targets));

    if (r == 0) {
        b->targets[b->ntargets++] = ch;
    }
    return r;
}

int
cx_balancer_remove(cx_balancer *b, cx_chan *ch)
{
    for (size_t i = 0; i < b->ntargets; i++) {
        if (b->targets[i] == ch) {
            memmove(b->targets + i, b->targets + i + 1,
                    (b->ntargets - i - 1) * sizeof(*b->targets));
            b->ntargets--;
            return 1;
        }
    }
    return 0;
}

void
cx_balancer_close(cx_balancer *b)
{
    cx_timer_stop(&b->retry);
    balancer_forget(&b->h);
}
