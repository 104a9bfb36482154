/* outq.h: an output queue for a non-blocking descriptor: bytes, the fds to
   send with a given byte (SCM_RIGHTS), and notify marks for write callbacks.
   Shared by channels (frames + fds) and streams (bytes). The queue owns the
   fds it holds. */
#ifndef CX_OUTQ_H
#define CX_OUTQ_H

#include "loop.h"

/* Attachments that are adjacent in the queue leave in one sendmsg, up to this
   many fds (a burst of SCHED_RR hand-offs to one worker); receivers size
   their control buffers for it. */
#define CX_BATCH_FDS 64

typedef struct cx_attach {         /* fds to send with the byte at pos */
    uint64_t pos;
    int nfds;
    int fds[CX_MAX_FDS];
} cx_attach;

typedef struct cx_outq {
    char *buf;                     /* unsent bytes are buf[off, len) */
    size_t off, len, cap;
    uint64_t pos;                  /* stream position of buf[off] */
    cx_attach *atts;               /* FIFO */
    size_t atts_head, atts_len, atts_cap;
    uint64_t *marks;               /* FIFO of notify positions */
    size_t marks_head, marks_len, marks_cap;
    /* A channel's: the byte lead_off past the attachment that leads a
       sendmsg's fds gets lead_bit, so that the receiver knows where each
       batch of descriptors begins (channel.h, CX_NFDS_LEAD). 0: none. */
    size_t lead_off;
    uint8_t lead_bit;
} cx_outq;

/* Appends head (hlen bytes) then body; fds go with the first byte. With
   own_fds the queue takes the fds as they are (even on failure), otherwise
   it keeps duplicates. Returns 0 or -errno. */
int cx_outq_push(cx_outq *q, const void *head, size_t hlen, const void *body,
                 size_t blen, const int *fds, int nfds, int own_fds,
                 int notify);
static inline size_t
cx_outq_size(const cx_outq *q)
{
    return q->len - q->off;
}
/* Writes as much as fd takes (sendmsg with send_flags added on sockets,
   write otherwise). *reached counts the notify marks passed. Returns 0 when
   the queue is empty, 1 when the fd would block, -errno on failure. */
int cx_outq_write(cx_outq *q, int fd, int is_socket, int send_flags,
                  int *reached);
/* Drops everything queued; returns how many marks were still pending. */
int cx_outq_clear(cx_outq *q);
void cx_outq_free(cx_outq *q);

#endif
