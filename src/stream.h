/* stream.h: byte streams and listening sockets, for a worker's servers and
   connections (and for any plain process): non-blocking reads into notes, a
   write queue with a high-water mark, end (shutdown after the queue drains),
   destroy, pause/resume; listeners accept into CONNECTION notes. Each object
   owns its fd. */
#ifndef CX_STREAM_H
#define CX_STREAM_H

#include "loop.h"
#include "outq.h"

typedef struct cx_stream {
    cx_handle h;
    cx_io io;
    cx_flusher flusher;
    cx_flusher first_read;     /* a server's connection: after its 'connection' */
    int fd;                    /* owned */
    int is_socket;
    int paused, read_eof, ending, write_shut;
    size_t hwm;
    int above_hwm;
    cx_outq out;
} cx_stream;

/* A stream without a descriptor (fd -1): forgetting it is harmless, so an
   owner may fail between this and cx_stream_open(). */
void cx_stream_init(cx_loop *loop, cx_stream *s);
/* Takes ownership of fd, even on failure. is_socket: 1, 0, or -1 to ask
   the kernel (an accepted connection is known to be one: no fstat). With 1
   (a server's new connection) it reads what is there as soon as the note
   being delivered is done, i.e. once 'connection' has run, as in Node: what
   that wrote leaves though the peer's FIN came first. */
int cx_stream_open(cx_stream *s, int fd, size_t hwm, int is_socket);
/* Returns 1 under the high-water mark, 0 over it, -errno (EPIPE: ended). */
int cx_stream_write(cx_stream *s, const void *data, size_t len, int notify);
void cx_stream_end(cx_stream *s);
/* For the glue, once it has delivered a stream's END note (run 'end'):
   the stream ends its side too (Node's allowHalfOpen: false), after what
   was queued, what 'end' wrote included, and writes that out now. Node's
   socket, likewise, ends itself on the tick after 'end'. */
void cx_stream_end_after_peer(cx_stream *s);
void cx_stream_destroy(cx_stream *s, int err);
int cx_stream_pause(cx_stream *s, int paused);
void cx_stream_set_no_delay(cx_stream *s, int on);

typedef struct cx_listener cx_listener;
struct cx_listener {
    cx_handle h;
    cx_io io;
    cx_timer retry;            /* after EMFILE: accept again later */
    int fd;                    /* owned */
    int raced;                 /* other processes accept from it too (SCHED_NONE) */
    int max_accepts;           /* per wakeup */
    int paused;
    /* Takes each accepted fd; NULL: a CONNECTION note for the glue. Runs
       with sends deferred, so that one burst leaves in few writes. */
    void (*on_accept)(cx_listener *l, int fd);
};

/* A listener without a descriptor (fd -1), as cx_stream_init(). Its
   accepts become CONNECTION notes unless on_accept is set after this. */
void cx_listener_init(cx_loop *loop, cx_listener *l);
/* Takes ownership of a listening fd, even on failure. */
int cx_listener_open(cx_listener *l, int fd, int raced, int max_accepts);
void cx_listener_close(cx_listener *l);
/* Accepts what the queue holds now, each through on_accept, before a
   close (which would reset them). Returns how many it took. */
int cx_listener_accept_queued(cx_listener *l);
/* A stop's first step on a listening TCP socket: from now on no new
   handshake begins (a socket filter drops SYNs; one under way completes),
   so that what the queue holds can be taken whole before the close, and a
   client that comes later is refused, never reset. Shared by every copy
   of the socket. Returns 0 or -errno (a Unix socket: -EINVAL or the like,
   harmless: its connects do not race the close the same way). */
int cx_listen_refuse_new(int fd);
/* Stops watching and closes the fd, without unlinking the handle. */
void cx_listener_release(cx_listener *l);
int cx_listener_pause(cx_listener *l, int paused);

#endif
