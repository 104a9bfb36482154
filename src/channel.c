/* channel.c: framing, descriptor passing and the write queue of an IPC
   channel (channel.h). Runs inside a loop turn without the GIL; everything
   for Python leaves as a note. Called by the glue (py_channel.c). */
#include "channel.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define READ_CHUNK (64 * 1024)
#define READS_PER_WAKEUP 16     /* one busy channel must not starve others */
/* A drain batches its frames, but a callback that sends many must not hold
   them all back: past this much, write now so that the peer starts reading. */
#define FLUSH_AT (64 * 1024)

static void chan_finish(cx_chan *ch, int err);
static void chan_flush(cx_chan *ch);

/* ---- reading ------------------------------------------------------------- */

static int
fifo_push(cx_chan *ch, const int *fds, int n)
{
    size_t cap = (size_t)ch->fifo_cap;
    int r = cx_grow((void **)&ch->fifo, &cap, (size_t)(ch->fifo_len + n),
                 sizeof(int));

    if (r < 0) {
        return r;
    }
    ch->fifo_cap = (int)cap;
    memcpy(ch->fifo + ch->fifo_len, fds, (size_t)n * sizeof(int));
    ch->fifo_len += n;
    return 0;
}

/* Cuts every complete frame out of rbuf into notes. Returns 0 or -errno for
   a corrupt stream. */
static int
parse_frames(cx_chan *ch)
{
    size_t off = 0;
    int used = 0;               /* fds claimed from the front of the fifo */
    int r = 0;

    while (ch->rlen - off >= sizeof(cx_frame_header)) {
        cx_frame_header hdr;
        cx_note *note;
        memcpy(&hdr, ch->rbuf + off, sizeof(hdr));
        if (hdr.type == 0 || hdr.type >= CX_FRAME_TYPE_END ||
            hdr.nfds > CX_MAX_FDS) {
            r = -EPROTO;
            break;
        }
        if (hdr.len > ch->max_frame) {
            r = -EMSGSIZE;
            break;
        }
        if (ch->rlen - off - sizeof(hdr) < hdr.len) {
            size_t need = sizeof(hdr) + hdr.len;
            if (need > ch->rcap) {
                r = cx_grow((void **)&ch->rbuf, &ch->rcap, need, 1);
            }
            break;
        }
        /* The fds came with the frame's first byte, so they are here. */
        if (hdr.nfds > ch->fifo_len - used) {
            r = -EPROTO;
            break;
        }
        note = cx_note_new(&ch->h, CX_NOTE_FRAME, hdr.len);
        if (note == NULL) {
            r = -ENOMEM;
            break;
        }
        note->a = hdr.type;
        note->b = hdr.flags;
        if (hdr.type == CX_FRAME_USER) {
            ch->messages_in++;
            /* a conversation: the answer may be near */
            ch->h.loop->chan_policy.busy = 1;
        }
        note->nfds = hdr.nfds;
        if (hdr.nfds > 0) {
            memcpy(note->fds, ch->fifo + used, hdr.nfds * sizeof(int));
            used += hdr.nfds;
        }
        memcpy(note->data, ch->rbuf + off + sizeof(hdr), hdr.len);
        cx_note_push(ch->h.loop, note);
        off += sizeof(hdr) + hdr.len;
    }
    if (used > 0) {
        ch->fifo_len -= used;
        memmove(ch->fifo, ch->fifo + used, (size_t)ch->fifo_len * sizeof(int));
    }
    if (off > 0) {
        memmove(ch->rbuf, ch->rbuf + off, ch->rlen - off);
        ch->rlen -= off;
    }
    return r;
}

/* Returns 1 at EOF, 0 when the socket is drained (or the share for this
   wakeup is used), -errno on failure. */
static int
read_some(cx_chan *ch, int max_reads)
{
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int) * CX_BATCH_FDS)];
    } control;

    for (int i = 0; i < max_reads; i++) {
        struct iovec iov;
        struct msghdr msg;
        struct cmsghdr *cm;
        ssize_t n;
        int fds_came;
        int r = cx_grow((void **)&ch->rbuf, &ch->rcap, ch->rlen + READ_CHUNK, 1);
        if (r < 0) {
            return r;
        }
        iov.iov_base = ch->rbuf + ch->rlen;
        iov.iov_len = ch->rcap - ch->rlen;
        memset(&msg, 0, sizeof(msg));
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.buf;
        msg.msg_controllen = sizeof(control.buf);
        do {
            n = recvmsg(ch->fd, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
        } while (n < 0 && errno == EINTR);
        if (n < 0) {
            if (errno == EAGAIN) {
                return 0;
            }
            return errno == ECONNRESET ? 1 : -errno;
        }
        r = 0;
        fds_came = 0;
        for (cm = CMSG_FIRSTHDR(&msg); cm != NULL; cm = CMSG_NXTHDR(&msg, cm)) {
            if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
                int nfds = (int)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
                int fds[CX_BATCH_FDS];
                fds_came = 1;
                memcpy(fds, CMSG_DATA(cm), (size_t)nfds * sizeof(int));
                if (r == 0) {
                    r = fifo_push(ch, fds, nfds);
                }
                if (r < 0) {
                    for (int k = 0; k < nfds; k++) {
                        cx_close(&fds[k]);
                    }
                }
            }
        }
        if (r == 0 && (msg.msg_flags & MSG_CTRUNC)) {
            r = -EPROTO;        /* the kernel dropped descriptors */
        }
        if (r < 0) {
            return r;
        }
        if (n == 0) {
            return 1;
        }
        ch->rlen += (size_t)n;
        r = parse_frames(ch);
        if (r < 0) {
            return r;
        }
        /* A short read means drained, unless descriptors came: the kernel
           ends a read after the bytes that carry them, with more queued
           (a drain-close that stopped here dropped the rest). */
        if ((size_t)n < iov.iov_len && !fds_came) {
            return 0;           /* drained: no need for one more EAGAIN */
        }
    }
    return 0;
}

static void
chan_read_and_settle(cx_chan *ch, int max_reads)
{
    int r = read_some(ch, max_reads);

    if (r == 1) {
        if (ch->rlen > 0) {
            /* A peer that died mid-write: its last frame is cut, not corrupt. */
            cx_debug("channel %d: %zu bytes of a cut frame dropped", ch->fd,
                     ch->rlen);
        }
        chan_finish(ch, 0);
    }
    else if (r < 0) {
        if (r == -EPROTO || r == -EMSGSIZE) {
            cx_note_post(&ch->h, CX_NOTE_ERROR, -r);
        }
        chan_finish(ch, -r);
    }
}

static void
chan_ready(cx_loop *loop, cx_io *io, uint32_t events)
{
    cx_chan *ch = cx_container_of(io, cx_chan, io);

    CX_UNUSED(loop);
    if (events & EPOLLOUT) {
        chan_flush(ch);
        if (ch->fd < 0) {
            return;
        }
    }
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        chan_read_and_settle(ch, READS_PER_WAKEUP);
    }
}

/* ---- writing ------------------------------------------------------------- */

static int
want_events(cx_chan *ch)
{
    uint32_t ev = EPOLLIN;

    if (cx_outq_size(&ch->out) > 0 && !ch->write_err) {
        ev |= EPOLLOUT;
    }
    return cx_io_start(ch->h.loop, &ch->io, ev);
}

static void
chan_flush(cx_chan *ch)
{
    int reached, r = 0;

    cx_list_remove(&ch->flusher.node);  /* flushed early: off the deferred list */
    if (!ch->write_err) {
        r = cx_outq_write(&ch->out, ch->fd, 1, 0, &reached);
        cx_note_post_n(&ch->h, CX_NOTE_WRITTEN, 0, reached);
    }
    if (r < 0) {
        /* The peer is gone: fail what is queued; the read side will see
           EOF and close the channel. */
        ch->write_err = -r;
        cx_note_post_n(&ch->h, CX_NOTE_WRITTEN, -r, cx_outq_clear(&ch->out));
    }
    if (ch->above_hwm && cx_outq_size(&ch->out) <= ch->hwm) {
        ch->above_hwm = 0;
        cx_note_post(&ch->h, CX_NOTE_DRAIN, 0);
    }
    if (ch->closing && (cx_outq_size(&ch->out) == 0 || ch->write_err)) {
        chan_finish(ch, 0);
        return;
    }
    if (want_events(ch) < 0) {
        chan_finish(ch, ENOMEM);
    }
}

static void
flusher_cb(cx_flusher *f)
{
    chan_flush(cx_container_of(f, cx_chan, flusher));
}

size_t
cx_chan_queued(const cx_chan *ch)
{
    return cx_outq_size(&ch->out);
}

static int
chan_push(cx_chan *ch, int type, int flags, const void *payload, size_t len,
          const int *fds, int nfds, int own_fds, int notify)
{
    cx_frame_header hdr = {(uint32_t)len, (uint8_t)type, (uint8_t)nfds,
                           (uint16_t)flags};
    int r;

    if (ch->fd < 0 || ch->closing) {
        return -EPIPE;
    }
    if (nfds < 0 || nfds > CX_MAX_FDS || len > UINT32_MAX) {
        return -EINVAL;
    }
    if (ch->write_err) {
        return -ch->write_err;
    }
    r = cx_outq_push(&ch->out, &hdr, sizeof(hdr), payload, len, fds, nfds,
                     own_fds, notify);
    if (r < 0) {
        return r;
    }
    if (ch->h.loop->chan_policy.deferring && cx_outq_size(&ch->out) < FLUSH_AT) {
        /* Inside a drain: batch the frames of this turn into few writes. */
        if (!(ch->io.events & EPOLLOUT)) {
            cx_loop_defer(ch->h.loop, &ch->flusher);
        }
    }
    else if (!(ch->io.events & EPOLLOUT)) {
        chan_flush(ch);
    }
    if (cx_outq_size(&ch->out) > ch->hwm) {
        ch->above_hwm = 1;
        return 0;
    }
    return 1;
}

int
cx_chan_send(cx_chan *ch, int type, int flags, const void *payload,
             size_t len, const int *fds, int nfds, int notify)
{
    int r = chan_push(ch, type, flags, payload, len, fds, nfds, 0, notify);

    if (r >= 0 && type == CX_FRAME_USER) {
        ch->messages_out++;
    }
    return r;
}

int
cx_chan_send_owned(cx_chan *ch, int type, int flags, int *fdp)
{
    int r;

    if (!cx_chan_writable(ch)) {
        return -EPIPE;          /* the caller keeps the fd */
    }
    r = chan_push(ch, type, flags, NULL, 0, fdp, 1, 1, 0);
    *fdp = -1;
    return r;
}

/* ---- opening and closing -------------------------------------------------- */

/* Lets go of everything, without notes (also the after-fork path). */
static void
chan_forget(cx_handle *h)
{
    cx_chan *ch = cx_container_of(h, cx_chan, h);

    cx_io_stop(h->loop, &ch->io);
    cx_list_remove(&ch->flusher.node);
    cx_close(&ch->fd);
    for (int i = 0; i < ch->fifo_len; i++) {
        cx_close(&ch->fifo[i]);
    }
    free(ch->rbuf);
    free(ch->fifo);
    ch->rbuf = NULL;
    ch->fifo = NULL;
    ch->rlen = ch->rcap = 0;
    ch->fifo_len = ch->fifo_cap = 0;
    cx_outq_free(&ch->out);
    cx_handle_unlink(h);
}

static void
chan_finish(cx_chan *ch, int err)
{
    if (ch->fd < 0) {
        return;
    }
    /* Frames never written fail their callbacks. */
    cx_note_post_n(&ch->h, CX_NOTE_WRITTEN, EPIPE, cx_outq_clear(&ch->out));
    chan_forget(&ch->h);
    cx_note_post(&ch->h, CX_NOTE_CLOSE, err);
}

void
cx_chan_init(cx_loop *loop, cx_chan *ch)
{
    memset(ch, 0, sizeof(*ch));
    cx_handle_init(loop, &ch->h, chan_forget);
    cx_list_init(&ch->flusher.node);
    ch->flusher.flush = flusher_cb;
    ch->fd = ch->io.fd = -1;
    ch->io.cb = chan_ready;
}

int
cx_chan_open(cx_chan *ch, int fd, size_t max_frame, size_t hwm)
{
    int r;

    ch->max_frame = max_frame;
    ch->hwm = hwm;
    ch->fd = fd;
    ch->io.fd = fd;
    r = cx_io_start(ch->h.loop, &ch->io, EPOLLIN);
    if (r < 0) {
        cx_close(&ch->fd);
        return r;
    }
    cx_handle_link(&ch->h);
    return 0;
}

void
cx_chan_close(cx_chan *ch)
{
    if (ch->fd < 0 || ch->closing) {
        return;
    }
    ch->closing = 1;
    if (cx_outq_size(&ch->out) == 0 || ch->write_err) {
        chan_finish(ch, 0);
    }
    else if (!cx_flusher_queued(&ch->flusher) && !(ch->io.events & EPOLLOUT)) {
        chan_flush(ch);
    }
}

void
cx_chan_drain_close(cx_chan *ch)
{
    if (ch->fd < 0) {
        return;
    }
    chan_read_and_settle(ch, INT32_MAX);
    if (ch->fd >= 0) {
        chan_finish(ch, 0);
    }
}
