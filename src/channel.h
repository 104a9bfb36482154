/* channel.h: IPC frames over one end of an AF_UNIX stream socketpair.
   A frame is an 8-byte header {u32 len, u8 type, u8 nfds, u16 flags} and len
   bytes of payload; its descriptors travel by SCM_RIGHTS with its first byte,
   or with the first byte of the frame that leads their batch (CX_NFDS_LEAD).
   The channel owns its fd, the fds received but not yet claimed by a frame,
   and the duplicates of the fds queued for sending. */
#ifndef CX_CHANNEL_H
#define CX_CHANNEL_H

#include "loop.h"
#include "outq.h"

#include <assert.h>

/* Frame types. USER carries the application's serialized message; the rest
   are the cluster's internal protocol (small fixed records, no JSON). */
enum cx_frame_type {
    CX_FRAME_USER = 1,
    CX_FRAME_ONLINE,               /* W->P: booted */
    CX_FRAME_DISCONNECT,           /* P->W: disconnect yourself */
    CX_FRAME_EXITED_AFTER_DISCONNECT,  /* W->P: my exit is asked for */
    CX_FRAME_PING,                 /* P->W: heartbeat */
    CX_FRAME_PONG,                 /* W->P: heartbeat answer */
    CX_FRAME_QUERY_SERVER,         /* W->P: share this address with me */
    CX_FRAME_SERVER_REPLY,         /* P->W: the answer (+ fd in SCHED_NONE) */
    CX_FRAME_LISTENING,            /* W->P: a server of mine listens */
    CX_FRAME_SERVER_CLOSE,         /* W->P: a server of mine closed */
    CX_FRAME_NEWCONN,              /* P->W: a connection (+ fd), SCHED_RR */
    CX_FRAME_NEWCONN_ACK,          /* W->P: not taken, fd returned: re-routed */
    CX_FRAME_BOOT_FAILURE,         /* W->P: I cannot start, and why (UTF-8) */
    CX_FRAME_STATS,                /* P->W: your figures? W->P: them */
    CX_FRAME_READY,                /* W->P: I serve (without listening) */
    CX_FRAME_FULL,                 /* W->P: a NEWCONN lost: no descriptor */
    CX_FRAME_ROOM,                 /* W->P: descriptors free again */
    CX_FRAME_TYPE_END
};

/* The nfds byte's high bit, set by the sender's queue (outq.h, lead_bit) on
   the frame whose first byte carried a sendmsg's SCM_RIGHTS: the
   descriptors of the frames up to the next such frame came in one batch.
   The kernel installs a batch's descriptors in order and stops at the
   first it cannot (RLIMIT_NOFILE: MSG_CTRUNC), so a cut batch lost its
   tail, and this bit says which frames that tail belonged to. A channel
   marks its batches once its owner asks (cx_chan_mark_batches: the
   primary) or once its peer has marked one: a receiver that predates the
   bit (an older primary whose workers run a newer install after a
   reload) would take it for a bad nfds. */
#define CX_NFDS_LEAD 0x80
/* Added to a FRAME note's type (note->a): the kernel dropped the frame's
   descriptors. The note has the frame's flags and payload and no fds. */
#define CX_FRAME_LOST 0x100

/* The descriptors of one recvmsg: a batch, or the head of one. */
typedef struct cx_fd_batch {
    int n;                         /* its fds still in the fifo */
    int cut;                       /* MSG_CTRUNC: the rest were dropped */
} cx_fd_batch;

typedef struct cx_frame_header {
    uint32_t len;
    uint8_t type;
    uint8_t nfds;
    uint16_t flags;
} cx_frame_header;

static_assert(sizeof(cx_frame_header) == 8, "the wire header is 8 bytes");

typedef struct cx_chan {
    cx_handle h;
    cx_io io;
    cx_flusher flusher;
    int fd;                        /* owned */
    int closing, write_err;
    size_t max_frame, hwm;
    int above_hwm;
    /* read side: the bytes not yet cut into frames are
       rbuf->data[rstart, rbuf->len); the frames' notes point into rbuf */
    cx_rbuf *rbuf;
    size_t rstart;
    int *fifo;                     /* received fds, owned until claimed */
    int fifo_len, fifo_cap;
    cx_fd_batch *batches;          /* fifo's fds by recvmsg, oldest first */
    size_t nbatches, batches_cap;
    int batch_open;                /* a frame took from batches[0] */
    int leads_seen;                /* the peer marks its batches */
    /* For the fuzzers' checks: frames that lost their descriptors, and the
       descriptors received that no frame got (undeclared, or the part of a
       lost frame's that came). */
    uint64_t frames_lost, fds_dropped;
    cx_outq out;
    /* user messages, for an operator's figures (status, metrics) */
    uint64_t messages_in, messages_out;
    /* SCHED_RR (balance.c): the peer said it has no descriptor for a
       connection (FRAME_FULL), until it says it has (FRAME_ROOM). */
    int peer_full;
    /* SCHED_RR: whether the peer reads what it is handed. rr_unread is
       the socket's unread bytes (cx_chan_unread) after our last write or
       at the last sign of reading; below it, the peer has read since. */
    int rr_watch;                  /* balancers that route to this channel */
    long rr_unread;
    uint64_t rr_read_ns;           /* when it was last seen reading, or idle */
    uint64_t rr_checked_ns;        /* when rr_unread was last read */
    /* SCHED_RR, for an operator's figures: connections handed to the peer,
       and how many of them it had when it was last seen with nothing
       unread (balance.c: cx_chan_rr_backlog) */
    uint64_t rr_handed, rr_handed_seen_read;
} cx_chan;

/* A channel without a descriptor (fd -1): forgetting it is harmless, so an
   owner may fail between this and cx_chan_open(). */
void cx_chan_init(cx_loop *loop, cx_chan *ch);
/* Takes ownership of fd, even on failure. */
int cx_chan_open(cx_chan *ch, int fd, size_t max_frame, size_t hwm);
/* Queues one frame; the fds are duplicated (the caller keeps its own).
   Returns 1 if the queue is under the high-water mark, 0 if over it (the
   frame is queued all the same), or -errno (EPIPE: the channel is closed). */
int cx_chan_send(cx_chan *ch, int type, int flags, const void *payload,
                 size_t len, const int *fds, int nfds, int notify);
/* The same for one fd that the queue takes over (*fdp becomes -1 once it
   did, even if it then fails); no payload, no notify. For the hot path of
   SCHED_RR, where a dup per connection is a waste. */
int cx_chan_send_owned(cx_chan *ch, int type, int flags, int *fdp);
/* From now on, mark each batch of descriptors sent (CX_NFDS_LEAD). */
void cx_chan_mark_batches(cx_chan *ch);
/* Orderly close: once the queue has drained. */
void cx_chan_close(cx_chan *ch);
/* The peer is gone: read what it left, then close. */
void cx_chan_drain_close(cx_chan *ch);
size_t cx_chan_queued(const cx_chan *ch);
/* What the peer has not read yet of what was written to the socket
   (SIOCOUTQ: the kernel's true sizes of the buffers, not bytes; 0 when it
   has read everything), or -errno. */
long cx_chan_unread(const cx_chan *ch);

/* Open, not closing, not failed: a frame sent now can be written. */
static inline int
cx_chan_writable(const cx_chan *ch)
{
    return ch->fd >= 0 && !ch->closing && !ch->write_err;
}

#endif
