/* channel.c: framing, descriptor passing and the write queue of an IPC
   channel (channel.h). Runs inside a loop turn without the GIL; everything
   for Python leaves as a note. Called by the glue (py_channel.c). */
#include "channel.h"
#include "policy.h"

#include <errno.h>
#include <linux/sockios.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
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

/* Files the descriptors of one recvmsg as a batch: n fds (0 when the
   kernel dropped them all), cut when it dropped some. Takes the fds, even
   on failure. */
static int
batch_push(cx_chan *ch, int *fds, int n, int cut)
{
    size_t cap = (size_t)ch->fifo_cap;
    int r = cx_grow((void **)&ch->fifo, &cap, (size_t)(ch->fifo_len + n),
                    sizeof(int));

    if (r == 0) {
        ch->fifo_cap = (int)cap;
        r = cx_grow((void **)&ch->batches, &ch->batches_cap,
                    ch->nbatches + 1, sizeof(cx_fd_batch));
    }
    if (r < 0) {
        for (int k = 0; k < n; k++) {
            cx_close(&fds[k]);
        }
        return r;
    }
    if (n > 0) {
        memcpy(ch->fifo + ch->fifo_len, fds, (size_t)n * sizeof(int));
        ch->fifo_len += n;
    }
    ch->batches[ch->nbatches].n = n;
    ch->batches[ch->nbatches].cut = cut;
    ch->nbatches++;
    return 0;
}

/* Where parse_frames() has taken fds and batches from, until it compacts. */
typedef struct {
    int fd;                     /* fifo[0, fd) are claimed or closed */
    size_t batch;               /* batches[0, batch) are done */
} fifo_cursor;

/* Closes the fds left in the open batch, which no frame declared (a peer
   of ours sends none), and moves to the next batch. */
static void
batch_drop(cx_chan *ch, fifo_cursor *at)
{
    cx_fd_batch *b = &ch->batches[at->batch];

    if (b->n > 0) {
        cx_debug("channel %d: %d undeclared fds closed", ch->fd, b->n);
    }
    for (; b->n > 0; b->n--) {
        cx_close(&ch->fifo[at->fd++]);
        ch->fds_dropped++;
    }
    at->batch++;
    ch->batch_open = 0;
}

/* Moves a frame's n (> 0) descriptors from the fifo to fds. The fds of a
   batch's frames follow each other; a lead frame (CX_NFDS_LEAD) starts a
   new batch. Returns n; 0 when the kernel dropped some of them (the frame
   is lost: the ones that came are closed); -EPROTO when the peer declared
   descriptors it did not send, or lost ones in a batch it did not mark
   (a peer that marks none cannot say which frames the loss hit). */
static int
claim_fds(cx_chan *ch, fifo_cursor *at, int n, int lead, int *fds)
{
    int got = 0;

    if (lead) {
        if (!ch->leads_seen) {
            ch->leads_seen = 1;
            cx_chan_mark_batches(ch);   /* the peer reads marks: ours too */
        }
        if (ch->batch_open) {
            batch_drop(ch, at);
        }
    }
    while (got < n) {
        cx_fd_batch *b;
        if (at->batch == ch->nbatches) {
            break;              /* declared, never sent */
        }
        b = &ch->batches[at->batch];
        ch->batch_open = 1;
        if (b->n > 0) {
            int take = b->n < n - got ? b->n : n - got;
            memcpy(fds + got, ch->fifo + at->fd, (size_t)take * sizeof(int));
            at->fd += take;
            b->n -= take;
            got += take;
        }
        else if (b->cut) {
            if (!ch->leads_seen) {
                break;
            }
            for (int k = 0; k < got; k++) {
                cx_close(&fds[k]);
            }
            ch->frames_lost++;
            ch->fds_dropped += (uint64_t)got;
            return 0;
        }
        else {
            /* A batch that is used up hands on to the next, as one FIFO:
               what a peer that marks no batches relies on. */
            at->batch++;
            ch->batch_open = 0;
        }
    }
    if (got < n) {
        for (int k = 0; k < got; k++) {
            cx_close(&fds[k]);
        }
        return -EPROTO;
    }
    return n;
}

static size_t
unparsed(const cx_chan *ch)
{
    return ch->rbuf != NULL ? ch->rbuf->len - ch->rstart : 0;
}

/* Makes room for `room` more bytes after the unparsed ones, which stay
   together. A buffer only the channel holds moves them to its front and
   grows in place; one that notes still point into is left to them, and
   they move to a new one, no smaller: a read takes as much as the kernel
   holds, up to the room, so a smaller one would take more reads. Returns
   0 or -ENOMEM. */
static int
chan_room(cx_chan *ch, size_t room)
{
    cx_rbuf *buf = ch->rbuf, *fresh;
    size_t have = unparsed(ch), cap;

    if (buf != NULL && buf->refs == 1 && ch->rstart > 0) {
        memmove(buf->data, buf->data + ch->rstart, have);
        buf->len = have;
        ch->rstart = 0;
    }
    if (buf != NULL && buf->cap - buf->len >= room) {
        return 0;
    }
    cap = buf != NULL ? buf->cap : READ_CHUNK;
    while (cap < have + room) {
        cap *= 2;
    }
    if (buf != NULL && buf->refs == 1) {
        fresh = realloc(buf, sizeof(*buf) + cap);
        if (fresh == NULL) {
            return -ENOMEM;
        }
        fresh->cap = cap;
        ch->rbuf = fresh;
        return 0;
    }
    if ((fresh = cx_rbuf_new(cap)) == NULL) {
        return -ENOMEM;
    }
    if (have > 0) {
        memcpy(fresh->data, buf->data + ch->rstart, have);
    }
    fresh->len = have;
    cx_rbuf_unref(buf);
    ch->rbuf = fresh;
    ch->rstart = 0;
    return 0;
}

/* Cuts every complete frame out of rbuf into notes that point into it.
   Returns 0 or -errno for a corrupt stream. */
static int
parse_frames(cx_chan *ch)
{
    fifo_cursor at = {0, 0};
    int r = 0;

    while (unparsed(ch) >= sizeof(cx_frame_header)) {
        cx_rbuf *buf = ch->rbuf;
        size_t off = ch->rstart;
        cx_frame_header hdr;
        cx_note *note;
        int nfds, lead;
        memcpy(&hdr, buf->data + off, sizeof(hdr));
        nfds = hdr.nfds & ~CX_NFDS_LEAD;
        lead = (hdr.nfds & CX_NFDS_LEAD) != 0;
        if (hdr.type == 0 || hdr.type >= CX_FRAME_TYPE_END ||
            nfds > CX_MAX_FDS || (lead && nfds == 0)) {
            r = -EPROTO;
            break;
        }
        if (hdr.len > ch->max_frame) {
            r = -EMSGSIZE;
            break;
        }
        if (buf->len - off - sizeof(hdr) < hdr.len) {
            /* Room for the whole frame now: the reads take the rest of it
               without growing the buffer read by read. */
            r = chan_room(ch, sizeof(hdr) + hdr.len - (buf->len - off));
            break;
        }
        note = cx_note_new(&ch->h, CX_NOTE_FRAME);
        if (note == NULL) {
            r = -ENOMEM;
            break;
        }
        note->a = hdr.type;
        note->b = hdr.flags;
        if (nfds > 0) {
            /* The fds came with the first byte of the frame, or of the
               frame that leads its batch: they are here. */
            r = claim_fds(ch, &at, nfds, lead, note->fds);
            if (r < 0) {
                cx_note_free(note);
                break;
            }
            note->nfds = r;
            if (r == 0) {
                note->a |= CX_FRAME_LOST;
                cx_debug("channel %d: a frame of type %d lost its %d fds",
                         ch->fd, hdr.type, nfds);
            }
            r = 0;
        }
        if (hdr.type == CX_FRAME_USER) {
            ch->messages_in++;
            cx_policy_message(ch->h.loop);
        }
        cx_note_carry(note, buf, off + sizeof(hdr), hdr.len);
        cx_note_push(ch->h.loop, note);
        ch->rstart = off + sizeof(hdr) + hdr.len;
    }
    if (at.fd > 0) {
        ch->fifo_len -= at.fd;
        memmove(ch->fifo, ch->fifo + at.fd, (size_t)ch->fifo_len * sizeof(int));
    }
    if (at.batch > 0) {
        ch->nbatches -= at.batch;
        memmove(ch->batches, ch->batches + at.batch,
                ch->nbatches * sizeof(cx_fd_batch));
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
        int fds[CX_BATCH_FDS];
        int nfds, cut, fds_came;
        int r = chan_room(ch, READ_CHUNK);
        if (r < 0) {
            return r;
        }
        iov.iov_base = ch->rbuf->data + ch->rbuf->len;
        iov.iov_len = ch->rbuf->cap - ch->rbuf->len;
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
        /* MSG_CTRUNC: the kernel installed the batch's first descriptors
           and dropped the rest (RLIMIT_NOFILE, or more than fit), perhaps
           all of them. The bytes are whole: only the frames that declared
           the dropped ones are lost (claim_fds). */
        cut = (msg.msg_flags & MSG_CTRUNC) != 0;
        nfds = 0;
        for (cm = CMSG_FIRSTHDR(&msg); cm != NULL; cm = CMSG_NXTHDR(&msg, cm)) {
            if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
                size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                for (size_t j = 0; j < k; j++) {
                    int fd;
                    memcpy(&fd, CMSG_DATA(cm) + j * sizeof(int), sizeof(fd));
                    if (nfds < CX_BATCH_FDS) {
                        fds[nfds++] = fd;
                    }
                    else {          /* past the buffer: cannot happen */
                        cx_close(&fd);
                        cut = 1;
                    }
                }
            }
        }
        fds_came = nfds > 0 || cut;
        r = 0;
        if (fds_came) {
            r = batch_push(ch, fds, nfds, cut);
        }
        if (r < 0) {
            return r;
        }
        if (n == 0) {
            return 1;
        }
        ch->rbuf->len += (size_t)n;
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
        if (unparsed(ch) > 0) {
            /* A peer that died mid-write: its last frame is cut, not corrupt. */
            cx_debug("channel %d: %zu bytes of a cut frame dropped", ch->fd,
                     unparsed(ch));
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
        size_t before = cx_outq_size(&ch->out);
        r = cx_outq_write(&ch->out, ch->fd, 1, 0, &reached);
        cx_note_post_n(&ch->h, CX_NOTE_WRITTEN, 0, reached);
        if (ch->rr_watch > 0 && cx_outq_size(&ch->out) < before) {
            /* The mark below which the peer has read since (balance.c). */
            long unread = cx_chan_unread(ch);
            if (unread >= 0) {
                ch->rr_unread = unread;
            }
        }
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

long
cx_chan_unread(const cx_chan *ch)
{
    int n;

    if (ch->fd < 0) {
        return -EBADF;
    }
    if (ioctl(ch->fd, SIOCOUTQ, &n) < 0) {
        return -errno;
    }
    return n;
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
    if (cx_loop_deferring(ch->h.loop) && cx_outq_size(&ch->out) < FLUSH_AT) {
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
    cx_rbuf_unref(ch->rbuf);            /* its frames' notes keep it */
    free(ch->fifo);
    free(ch->batches);
    ch->rbuf = NULL;
    ch->fifo = NULL;
    ch->batches = NULL;
    ch->rstart = 0;
    ch->fifo_len = ch->fifo_cap = 0;
    ch->nbatches = ch->batches_cap = 0;
    ch->batch_open = 0;
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

void
cx_chan_mark_batches(cx_chan *ch)
{
    ch->out.lead_off = offsetof(cx_frame_header, nfds);
    ch->out.lead_bit = CX_NFDS_LEAD;
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
