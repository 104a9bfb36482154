/* outq.c: the output queue of channels and streams (outq.h). Runs without
   the GIL; never calls back: callers turn the marks it reports into notes. */
#include "outq.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void
close_fds(const int *fds, int nfds)
{
    for (int i = 0; i < nfds; i++) {
        int fd = fds[i];
        cx_close(&fd);
    }
}

/* Moves the FIFOs back to the front of their arrays, so that a queue that
   never quite empties does not grow them forever. */
static void
compact(cx_outq *q)
{
    if (q->atts_head > 0) {
        memmove(q->atts, q->atts + q->atts_head,
                q->atts_len * sizeof(cx_attach));
        q->atts_head = 0;
    }
    if (q->marks_head > 0) {
        memmove(q->marks, q->marks + q->marks_head,
                q->marks_len * sizeof(uint64_t));
        q->marks_head = 0;
    }
    if (q->off > q->cap / 2) {
        memmove(q->buf, q->buf + q->off, q->len - q->off);
        q->len -= q->off;
        q->off = 0;
    }
}

int
cx_outq_push(cx_outq *q, const void *head, size_t hlen, const void *body,
             size_t blen, const int *fds, int nfds, int own_fds, int notify)
{
    cx_attach *a = NULL;
    int r;

    compact(q);
    if ((r = cx_grow((void **)&q->buf, &q->cap, q->len + hlen + blen, 1)) < 0 ||
        (notify && (r = cx_grow((void **)&q->marks, &q->marks_cap,
                                q->marks_len + 1, sizeof(uint64_t))) < 0) ||
        (nfds > 0 && (r = cx_grow((void **)&q->atts, &q->atts_cap,
                                  q->atts_len + 1, sizeof(cx_attach))) < 0)) {
        if (own_fds) {
            close_fds(fds, nfds);
        }
        return r;
    }
    if (nfds > 0) {
        a = &q->atts[q->atts_len];
        a->pos = q->pos + cx_outq_size(q);
        a->nfds = 0;
        for (int i = 0; i < nfds; i++) {
            int fd = own_fds ? fds[i] : fcntl(fds[i], F_DUPFD_CLOEXEC, 3);
            if (fd < 0) {
                r = -errno;
                close_fds(a->fds, a->nfds);
                return r;
            }
            a->fds[a->nfds++] = fd;
        }
        q->atts_len++;
    }
    if (hlen > 0) {
        memcpy(q->buf + q->len, head, hlen);
    }
    if (blen > 0) {
        memcpy(q->buf + q->len + hlen, body, blen);
    }
    q->len += hlen + blen;
    if (notify) {
        q->marks[q->marks_len++] = q->pos + cx_outq_size(q);
    }
    return 0;
}

static int
marks_reached(cx_outq *q)
{
    int n = 0;

    while (q->marks_len > 0 && q->marks[q->marks_head] <= q->pos) {
        q->marks_head++;
        q->marks_len--;
        n++;
    }
    if (q->marks_len == 0) {
        q->marks_head = 0;
    }
    return n;
}

static void
atts_pop(cx_outq *q)
{
    cx_attach *a = &q->atts[q->atts_head];

    close_fds(a->fds, a->nfds);
    q->atts_head++;
    if (--q->atts_len == 0) {
        q->atts_head = 0;
    }
}

int
cx_outq_write(cx_outq *q, int fd, int is_socket, int send_flags, int *reached)
{
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int) * CX_BATCH_FDS)];
    } control;

    *reached = 0;
    while (q->len > q->off) {
        struct iovec iov = {q->buf + q->off, q->len - q->off};
        struct msghdr msg;
        cx_attach *att = q->atts_len ? &q->atts[q->atts_head] : NULL;
        size_t batch = 0;       /* attachments leaving with this sendmsg */
        ssize_t n;

        memset(&msg, 0, sizeof(msg));
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        if (att != NULL && att->pos == q->pos) {
            struct cmsghdr *cm;
            int nfds = 0;
            msg.msg_control = control.buf;
            msg.msg_controllen = sizeof(control.buf);
            /* Marked before every try: a batch that waits (EAGAIN) leads
               with the same attachment when it leaves. */
            if (q->lead_bit != 0 && q->lead_off < q->len - q->off) {
                ((unsigned char *)q->buf)[q->off + q->lead_off] |= q->lead_bit;
            }
            cm = CMSG_FIRSTHDR(&msg);
            /* The fds of every attachment in the batch travel with its first
               byte; the receiver keeps them in order until their frames
               claim them. */
            while (batch < q->atts_len &&
                   nfds + att[batch].nfds <= CX_BATCH_FDS) {
                memcpy((int *)CMSG_DATA(cm) + nfds, att[batch].fds,
                       sizeof(int) * att[batch].nfds);
                nfds += att[batch].nfds;
                batch++;
            }
            msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
            /* An odd count leaves alignment padding: the kernel reads it. */
            memset((char *)cm + CMSG_LEN(sizeof(int) * nfds), 0,
                   msg.msg_controllen - CMSG_LEN(sizeof(int) * nfds));
            cm->cmsg_level = SOL_SOCKET;
            cm->cmsg_type = SCM_RIGHTS;
            cm->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
            if (batch < q->atts_len) {  /* the rest start a sendmsg of their own */
                iov.iov_len = (size_t)(att[batch].pos - q->pos);
            }
        }
        else if (att != NULL) {
            iov.iov_len = (size_t)(att->pos - q->pos);
        }
        do {
            n = is_socket
                ? sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT | send_flags)
                : write(fd, iov.iov_base, iov.iov_len);
        } while (n < 0 && errno == EINTR);
        if (n < 0) {
            return errno == EAGAIN || errno == ENOBUFS ? 1 : -errno;
        }
        while (batch-- > 0) {
            atts_pop(q);            /* sent with the first byte: never twice */
        }
        q->off += (size_t)n;
        q->pos += (uint64_t)n;
        *reached += marks_reached(q);
    }
    q->off = q->len = 0;
    return 0;
}

int
cx_outq_clear(cx_outq *q)
{
    int pending = (int)q->marks_len;

    while (q->atts_len > 0) {
        atts_pop(q);
    }
    q->pos += cx_outq_size(q);
    q->off = q->len = 0;
    q->marks_head = q->marks_len = 0;
    return pending;
}

void
cx_outq_free(cx_outq *q)
{
    (void)cx_outq_clear(q);
    free(q->buf);
    free(q->atts);
    free(q->marks);
    memset(q, 0, sizeof(*q));
}
