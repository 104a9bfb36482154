/* stream.c: streams and listeners (stream.h). Runs inside a loop turn without
   the GIL; everything for Python leaves as a note. Called by the glue
   (py_stream.c). */
#include "stream.h"
#include "policy.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <linux/filter.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define READ_CHUNK (64 * 1024)
#define READS_PER_WAKEUP 4      /* one busy stream must not starve others */
#define EMFILE_RETRY_NS (100u * 1000u * 1000u)

static void stream_flush(cx_stream *s);

/* ---- streams -------------------------------------------------------------- */

/* Lets go of everything, without notes (also the after-fork path). */
static void
stream_forget(cx_handle *h)
{
    cx_stream *s = cx_container_of(h, cx_stream, h);

    cx_io_stop(h->loop, &s->io);
    cx_list_remove(&s->flusher.node);
    cx_list_remove(&s->first_read.node);
    cx_close(&s->fd);
    cx_outq_free(&s->out);
    cx_handle_unlink(h);
}

void
cx_stream_destroy(cx_stream *s, int err)
{
    if (s->fd < 0) {
        return;
    }
    cx_note_post_n(&s->h, CX_NOTE_WRITTEN, EPIPE, cx_outq_clear(&s->out));
    stream_forget(&s->h);
    cx_note_post(&s->h, CX_NOTE_CLOSE, err);
}

static int
stream_want(cx_stream *s)
{
    uint32_t ev = 0;

    if (!s->paused && !s->read_eof) {
        ev |= EPOLLIN;
    }
    /* A flush already queued for the end of the drain writes first: only
       what it leaves waits for EPOLLOUT. */
    if (cx_outq_size(&s->out) > 0 && !cx_flusher_queued(&s->flusher)) {
        ev |= EPOLLOUT;
    }
    return cx_io_start(s->h.loop, &s->io, ev);    /* 0: stopped */
}

/* Both directions are done: the stream is over. */
static void
stream_settle(cx_stream *s)
{
    if (s->fd < 0) {
        return;
    }
    if (s->read_eof && s->write_shut) {
        cx_stream_destroy(s, 0);
    }
    else if (stream_want(s) < 0) {
        cx_stream_destroy(s, ENOMEM);
    }
}

/* Each read lands in the loop's read buffer, where its DATA note points:
   the glue makes the Python bytes from there. */
static void
stream_read(cx_stream *s)
{
    for (int i = 0; i < READS_PER_WAKEUP && !s->paused; i++) {
        cx_rbuf *buf = cx_loop_rbuf(s->h.loop, READ_CHUNK);
        ssize_t n;
        cx_note *note;
        if (buf == NULL) {
            cx_stream_destroy(s, ENOMEM);
            return;
        }
        do {
            n = read(s->fd, buf->data + buf->len, READ_CHUNK);
        } while (n < 0 && errno == EINTR);
        if (n < 0) {
            if (errno != EAGAIN) {
                cx_stream_destroy(s, errno);
            }
            return;
        }
        if (n == 0) {
            /* This side ends too (Node's allowHalfOpen: false), but not
               here: once the END note has been delivered, so that what
               'end' writes leaves first (cx_stream_end_after_peer()). */
            s->read_eof = 1;
            cx_note_post(&s->h, CX_NOTE_END, 0);
            return;
        }
        note = cx_note_new(&s->h, CX_NOTE_DATA);
        if (note == NULL) {
            cx_stream_destroy(s, ENOMEM);
            return;
        }
        cx_note_carry(note, buf, buf->len, (size_t)n);
        buf->len += (size_t)n;
        cx_note_push(s->h.loop, note);
        if ((size_t)n < READ_CHUNK) {
            return;             /* drained: no need for one more EAGAIN */
        }
    }
}

static void
stream_ready(cx_loop *loop, cx_io *io, uint32_t events)
{
    cx_stream *s = cx_container_of(io, cx_stream, io);

    CX_UNUSED(loop);
    cx_list_remove(&s->first_read.node);     /* this is its first read */
    if (events & EPOLLOUT) {
        stream_flush(s);
    }
    if (s->fd >= 0 && (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) &&
        !s->read_eof && !s->paused) {
        stream_read(s);
    }
    stream_settle(s);
}

static void
stream_flush(cx_stream *s)
{
    int reached, r;

    cx_list_remove(&s->flusher.node);   /* flushed early: off the deferred list */
    if (s->fd < 0) {
        return;
    }
    /* Ending: the shutdown follows, and MSG_MORE holds the last bytes back
       for the FIN to leave in the same TCP segment (8 segments a connection
       instead of 10 for a request, a reply and a close). */
    r = cx_outq_write(&s->out, s->fd, s->is_socket, s->ending ? MSG_MORE : 0,
                      &reached);
    cx_note_post_n(&s->h, CX_NOTE_WRITTEN, 0, reached);
    if (r < 0) {
        cx_stream_destroy(s, -r);
        return;
    }
    if (s->above_hwm && cx_outq_size(&s->out) <= s->hwm) {
        s->above_hwm = 0;
        cx_note_post(&s->h, CX_NOTE_DRAIN, 0);
    }
    if (r == 0 && s->ending && !s->write_shut) {
        s->write_shut = 1;
        if (s->is_socket) {
            (void)shutdown(s->fd, SHUT_WR);
        }
    }
}

/* A server's new connection, once its 'connection' has run: what is there
   already (most often the first request) is read without waiting for epoll,
   which saves a round and the context switch of waiting for it (EAGAIN
   costs one read). */
static void
first_read_cb(cx_flusher *f)
{
    cx_stream *s = cx_container_of(f, cx_stream, first_read);

    if (s->fd >= 0 && !s->read_eof && !s->paused) {
        stream_read(s);
    }
    stream_settle(s);
}

static void
flusher_cb(cx_flusher *f)
{
    cx_stream *s = cx_container_of(f, cx_stream, flusher);

    stream_flush(s);
    stream_settle(s);
}

/* Writes now, or after the current drain when callbacks are running (so the
   writes of one turn leave in few syscalls). */
static void
stream_kick(cx_stream *s)
{
    if (s->io.events & EPOLLOUT) {
        return;                 /* the fd is full: EPOLLOUT will flush */
    }
    if (cx_loop_deferring(s->h.loop)) {
        cx_loop_defer(s->h.loop, &s->flusher);
        return;
    }
    stream_flush(s);
    stream_settle(s);
}

int
cx_stream_write(cx_stream *s, const void *data, size_t len, int notify)
{
    int r;

    if (s->fd < 0 || s->ending) {
        return -EPIPE;
    }
    r = cx_outq_push(&s->out, NULL, 0, data, len, NULL, 0, 0, notify);
    if (r < 0) {
        return r;
    }
    stream_kick(s);
    if (cx_outq_size(&s->out) > s->hwm) {
        s->above_hwm = 1;
        return 0;
    }
    return 1;
}

void
cx_stream_end(cx_stream *s)
{
    if (s->fd < 0 || s->ending) {
        return;
    }
    s->ending = 1;
    if (!s->is_socket) {
        s->write_shut = 1;      /* a pipe: nothing to shut down */
    }
    stream_kick(s);
}

void
cx_stream_end_after_peer(cx_stream *s)
{
    if (s->fd < 0) {
        return;                 /* destroyed in 'end' (or since) */
    }
    if (!s->ending) {
        s->ending = 1;
        if (!s->is_socket) {
            s->write_shut = 1;
        }
    }
    /* Nothing can be queued after this: waiting for the end of the drain
       would batch no more bytes, and would post the CLOSE note after it,
       which costs the loop a wakeup and a turn to deliver. */
    if (!(s->io.events & EPOLLOUT)) {
        stream_flush(s);
    }
    stream_settle(s);
}

int
cx_stream_pause(cx_stream *s, int paused)
{
    if (s->fd < 0) {
        return 0;
    }
    s->paused = paused;
    return stream_want(s);
}

void
cx_stream_set_no_delay(cx_stream *s, int on)
{
    /* Not a TCP socket (Unix, pipe): nothing to do, and no error either. */
    if (s->fd >= 0 && s->is_socket) {
        (void)setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
    }
}

void
cx_stream_init(cx_loop *loop, cx_stream *s)
{
    memset(s, 0, sizeof(*s));
    cx_handle_init(loop, &s->h, stream_forget);
    cx_list_init(&s->flusher.node);
    s->flusher.flush = flusher_cb;
    cx_list_init(&s->first_read.node);
    s->first_read.flush = first_read_cb;
    s->fd = s->io.fd = -1;
    s->io.cb = stream_ready;
}

int
cx_stream_open(cx_stream *s, int fd, size_t hwm, int is_socket)
{
    struct stat st;
    int r;

    s->fd = fd;
    s->io.fd = fd;
    s->hwm = hwm;
    s->is_socket = is_socket >= 0 ? is_socket
                                  : fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode);
    r = cx_io_start(s->h.loop, &s->io, EPOLLIN);
    if (r < 0) {
        cx_close(&s->fd);
        return r;
    }
    cx_handle_link(&s->h);
    if (is_socket == 1) {
        /* Not now: Node emits 'connection' before it reads anything, and a
           read here would meet the FIN of a client that ended first (nc -N)
           and end this side before 'connection' could write its reply. */
        cx_loop_after_note(s->h.loop, &s->first_read);
    }
    return 0;
}

/* ---- listeners ------------------------------------------------------------- */

static int
accept_one(int fd)
{
    int c;

    do {
        c = accept4(fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    } while (c < 0 && errno == EINTR);
    return c >= 0 ? c : -errno;
}

/* Out of descriptors or memory: stop accepting for a while instead of
   spinning on a full backlog; the backlog keeps the connections. */
static int
accept_exhausted(int err)
{
    return err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM;
}

static void
note_connection(cx_listener *l, int fd)
{
    cx_note *note = cx_note_new(&l->h, CX_NOTE_CONNECTION);

    if (note == NULL) {
        cx_close(&fd);
        return;
    }
    note->nfds = 1;
    note->fds[0] = fd;
    cx_note_push(l->h.loop, note);
}

static int
listener_watch(cx_listener *l)
{
    if (l->paused) {
        cx_io_stop(l->h.loop, &l->io);
        return 0;
    }
    return cx_io_start(l->h.loop, &l->io, EPOLLIN);
}

static void
listener_retry(cx_timer *t)
{
    cx_listener *l = cx_container_of(t, cx_listener, retry);

    if (l->fd >= 0 && listener_watch(l) < 0) {
        cx_timer_start(&l->retry, EMFILE_RETRY_NS);
    }
}

static void
listener_ready(cx_loop *loop, cx_io *io, uint32_t events)
{
    cx_listener *l = cx_container_of(io, cx_listener, io);

    CX_UNUSED(events);
    cx_loop_defer_begin(loop);
    /* on_accept may pause the listener (a balancer with no room): the
       rest wait in the backlog. */
    for (int i = 0; i < l->max_accepts && l->fd >= 0 && !l->paused; i++) {
        int c = accept_one(l->fd);
        if (c == -EAGAIN) {
            break;
        }
        if (accept_exhausted(-c)) {
            cx_io_stop(loop, &l->io);
            cx_timer_start(&l->retry, EMFILE_RETRY_NS);
            break;
        }
        if (c >= 0) {           /* else ECONNABORTED and the like: gone */
            l->on_accept(l, c);
        }
    }
    cx_loop_defer_end(loop);
}

void
cx_listener_release(cx_listener *l)
{
    if (l->raced) {
        l->raced = 0;
        cx_policy_raced(l->h.loop, -1);
    }
    cx_timer_stop(&l->retry);
    cx_io_stop(l->h.loop, &l->io);
    cx_close(&l->fd);
}

static void
listener_forget(cx_handle *h)
{
    cx_listener_release(cx_container_of(h, cx_listener, h));
    cx_handle_unlink(h);
}

void
cx_listener_init(cx_loop *loop, cx_listener *l)
{
    memset(l, 0, sizeof(*l));
    cx_handle_init(loop, &l->h, listener_forget);
    cx_timer_init(loop, &l->retry);
    l->retry.cb = listener_retry;
    l->retry.h.referenced = 0;
    l->fd = l->io.fd = -1;
    l->io.cb = listener_ready;
    l->on_accept = note_connection;
}

int
cx_listener_open(cx_listener *l, int fd, int raced, int max_accepts)
{
    int r;

    l->fd = fd;
    l->io.fd = fd;
    l->raced = raced != 0;
    cx_policy_raced(l->h.loop, l->raced);
    l->max_accepts = max_accepts > 0 ? max_accepts : 64;
    r = listener_watch(l);
    if (r < 0) {
        cx_close(&l->fd);
        return r;
    }
    cx_handle_link(&l->h);
    return 0;
}

void
cx_listener_close(cx_listener *l)
{
    listener_forget(&l->h);
}

/* Closing a listening socket resets every connection in its accept queue:
   clients whose handshake is done see their request fail. A graceful stop
   takes them first. The bound is for a queue refilled faster than it is
   taken: the backlog's default ceiling (somaxconn, 4096) several times. */
#define ACCEPT_QUEUED_MAX 16384

int
cx_listener_accept_queued(cx_listener *l)
{
    cx_loop *loop = l->h.loop;
    int taken = 0;

    cx_loop_defer_begin(loop);          /* one write per channel, as a wakeup */
    while (l->fd >= 0 && taken < ACCEPT_QUEUED_MAX) {
        int c = accept_one(l->fd);
        if (c == -EAGAIN || accept_exhausted(-c)) {
            break;
        }
        if (c >= 0) {           /* else ECONNABORTED and the like: gone */
            l->on_accept(l, c);
            taken++;
        }
    }
    cx_loop_defer_end(loop);
    return taken;
}

int
cx_listen_refuse_new(int fd)
{
    /* Classic BPF on what reaches the listener, from its TCP header: a SYN
       (a new handshake) is dropped, and its client, refused once the socket
       closes, never connected; the last ACK of a handshake under way goes
       through and completes it into the queue, which the stop then takes. */
    struct sock_filter drop_syn[] = {
        BPF_STMT(BPF_LD | BPF_B | BPF_ABS, 13),             /* the flags */
        BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, 0x02, 0, 1),   /* SYN */
        BPF_STMT(BPF_RET | BPF_K, 0),
        BPF_STMT(BPF_RET | BPF_K, 0xffffffffu),
    };
    struct sock_fprog prog = {sizeof(drop_syn) / sizeof(drop_syn[0]), drop_syn};

    return setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof(prog)) == 0
        ? 0 : -errno;
}

int
cx_listener_pause(cx_listener *l, int paused)
{
    if (l->fd < 0) {
        return 0;
    }
    l->paused = paused;
    cx_timer_stop(&l->retry);
    return listener_watch(l);
}
