/* loop.h: the epoll reactor. Descriptor watchers, one-shot timers behind a
   timerfd, child exits through pidfd (SIGCHLD fallback), a thread-safe wakeup
   eventfd, and the notes queue that carries engine events to the glue.
   Mechanism only: how to wait when idle is its owner's, through the wait
   hooks (policy.h). A turn runs without the GIL: nothing here touches
   Python. */
#ifndef CX_LOOP_H
#define CX_LOOP_H

#include "cx.h"

#include <sys/epoll.h>

#define CX_MAX_FDS 16          /* descriptors one frame may carry */

typedef struct cx_loop cx_loop;
typedef struct cx_io cx_io;
typedef void (*cx_io_cb)(cx_loop *loop, cx_io *io, uint32_t events);

struct cx_io {
    int fd;                    /* not owned: the embedding object owns it */
    uint32_t events;           /* EPOLLIN|EPOLLOUT wanted now; 0 = stopped */
    cx_io_cb cb;
};

enum cx_note_kind {
    CX_NOTE_TIMER = 1,         /* a timer fired */
    CX_NOTE_EXIT,              /* a child exited: a = code or -1, b = signal */
    CX_NOTE_WAKE,              /* cx_loop_wakeup() was called */
    CX_NOTE_FRAME,             /* a channel frame: a = type, b = flags */
    CX_NOTE_WRITTEN,           /* a frame sent with notify is written */
    CX_NOTE_DRAIN,             /* a channel's queue fell below its HWM */
    CX_NOTE_ERROR,             /* a channel hit a protocol error: a = errno */
    CX_NOTE_CLOSE,             /* a channel or stream closed: a = errno */
    CX_NOTE_DATA,              /* a stream read bytes */
    CX_NOTE_END,               /* a stream's peer ended */
    CX_NOTE_CONNECTION,        /* a listener accepted: fds[0] */
};

/* The common head of everything the loop owns on the glue's behalf. The glue
   keeps its object (data) alive while the handle is linked or has notes. */
typedef struct cx_handle cx_handle;
struct cx_handle {
    cx_loop *loop;
    cx_list node;              /* in loop->handles while linked */
    void *data;                /* the glue's object */
    void (*forget)(cx_handle *h);  /* after fork: drop fds, no notes */
    int linked;
    int pending;               /* undelivered notes */
    int referenced;            /* keeps the loop alive while linked */
};

/* A buffer that reads land in, whose bytes notes carry as their payloads
   with no copy in between: the glue makes its Python bytes from here, as
   libuv reads into its consumer's buffer and Node's old read slab sliced
   its Buffers. Its reader (a channel, or the loop for the streams) holds
   a reference, and so does each note that points into it: the reader may
   move or reuse the bytes only while its reference is the last. */
typedef struct cx_rbuf {
    size_t refs;
    size_t cap, len;           /* data[0, len) is filled */
    char data[];
} cx_rbuf;

typedef struct cx_note cx_note;
struct cx_note {
    cx_note *next;
    cx_handle *h;
    int kind, a, b;
    int nfds;
    int fds[CX_MAX_FDS];       /* owned by the note until claimed */
    const char *data;          /* the payload (a frame's, a read's): */
    size_t len;                /* len bytes in buf */
    cx_rbuf *buf;              /* a reference; NULL: no payload */
};

typedef struct cx_timer cx_timer;
struct cx_timer {
    cx_handle h;
    uint64_t when, seq;
    size_t index;              /* in the heap */
    void (*cb)(cx_timer *t);   /* engine-internal timers; NULL: a note */
};

typedef struct cx_child {
    cx_handle h;
    cx_io io;
    pid_t pid;
    int pidfd;                 /* owned; -1 under the SIGCHLD fallback */
    cx_list sig_node;          /* in the fallback's list */
} cx_child;

/* Something with output to push once the current drain has ended (or, on
   the after-note list, work due once the note being delivered is done). Its
   node points to itself while it is not queued. */
typedef struct cx_flusher {
    cx_list node;
    void (*flush)(struct cx_flusher *f);
} cx_flusher;

static inline int
cx_flusher_queued(const cx_flusher *f)
{
    return !cx_list_empty(&f->node);
}

/* Hooks around the wait, as redis's beforeSleep and afterSleep: how to
   wait when there is nothing to do (spin, yield) is the loop's owner's
   policy (policy.c), not the reactor's. */
typedef struct cx_wait_hooks {
    /* Before a wait that may block (timeout not 0, no note queued). It
       may poll loop->epfd itself: it returns the events it found (at most
       max, into events) for the turn to dispatch, 0 to wait as asked, or
       -1 with errno set. */
    int (*before)(cx_loop *loop, struct epoll_event *events, int max);
    /* After every wait that did not fail, with its count of events. */
    void (*after)(cx_loop *loop, int n);
    void *data;                        /* the hooks' own */
} cx_wait_hooks;

struct cx_loop {
    int epfd, timerfd, wakefd;         /* owned */
    int sigchld_pipe[2];               /* owned, fallback only */
    int signal_pipe[2];                /* owned: Python's signal wakeup fd */
    cx_io timer_io, wake_io, sigchld_io, signal_io;
    cx_io **watchers;                  /* indexed by fd */
    int nwatchers;
    struct epoll_event *batch;         /* being dispatched; scrubbed on stop */
    int batch_len;
    cx_timer **heap;
    size_t heap_len, heap_cap;
    uint64_t timer_seq, armed_for;
    cx_list handles, children_sig, flushers;
    cx_list after_note;                /* cx_flushers: see cx_loop_after_note() */
    int nref;
    /* Open deferrals (cx_loop_defer_begin): while any is, channel.c and
       stream.c queue their writes for the flush at the end of the
       outermost one, so that one drain's frames leave together. */
    int defer_depth;
    cx_wait_hooks wait_hooks;          /* none after cx_loop_init() */
    cx_note *head, *tail;
    cx_handle wake;                    /* target of CX_NOTE_WAKE */
    cx_rbuf *rbuf;                     /* shared by reads: cx_loop_rbuf() */
};

int cx_loop_init(cx_loop *loop);
void cx_loop_close(cx_loop *loop);
/* In a child of fork() without exec: forget every handle and descriptor of
   the parent's loop, without notes, and build a fresh one. */
int cx_loop_reinit_after_fork(cx_loop *loop);
/* One epoll_wait (timeout_ms: -1 forever) and its pure-C work. */
int cx_loop_turn(cx_loop *loop, int timeout_ms);
int cx_loop_alive(const cx_loop *loop);
void cx_loop_flush(cx_loop *loop);
/* Queues f for the next cx_loop_flush(), once. */
void cx_loop_defer(cx_loop *loop, cx_flusher *f);
/* Writes made between a begin and its end wait (cx_loop_defer) for the
   end of the outermost pair, which flushes them: the glue's drain, an
   accept burst. Pairs nest, so an inner end never flushes early. */
void cx_loop_defer_begin(cx_loop *loop);
void cx_loop_defer_end(cx_loop *loop);

static inline int
cx_loop_deferring(const cx_loop *loop)
{
    return loop->defer_depth > 0;
}

/* Queues f, once, to run when the callbacks of the note being delivered
   have returned, before the next note: the glue calls
   cx_loop_run_after_note() before it takes each note. A new connection's
   first read waits there for its 'connection'. */
void cx_loop_after_note(cx_loop *loop, cx_flusher *f);
void cx_loop_run_after_note(cx_loop *loop);
int cx_loop_wakeup(cx_loop *loop);     /* async-signal- and thread-safe */
/* A pipe whose write end Python's signal module writes to when a signal
   arrives (signal.set_wakeup_fd), so that a signal that lands just before
   epoll_wait() still ends the wait. Returns the write end, or -errno. */
int cx_loop_signal_fd(cx_loop *loop);

/* Watches io for events (epoll flags), or stops it when events is 0. */
int cx_io_start(cx_loop *loop, cx_io *io, uint32_t events);
void cx_io_stop(cx_loop *loop, cx_io *io);

void cx_handle_init(cx_loop *loop, cx_handle *h, void (*forget)(cx_handle *));
void cx_handle_link(cx_handle *h);
void cx_handle_unlink(cx_handle *h);
/* Whether the handle keeps the loop alive while linked (Node's ref/unref). */
void cx_handle_ref(cx_handle *h, int on);

cx_note *cx_note_new(cx_handle *h, int kind);
/* The note's payload: len bytes at off in buf, which it holds from now on. */
void cx_note_carry(cx_note *note, cx_rbuf *buf, size_t off, size_t len);
void cx_note_push(cx_loop *loop, cx_note *note);
cx_note *cx_note_pop(cx_loop *loop);   /* caller frees, then h->pending-- */
void cx_note_free(cx_note *note);      /* closes fds not claimed */
/* A note with no payload (kind, a) for h; dropped if memory is short. */
void cx_note_post(cx_handle *h, int kind, int a);
/* count of them, one after the other. */
void cx_note_post_n(cx_handle *h, int kind, int a, int count);

/* A read buffer of cap bytes, empty, with one reference (the caller's);
   NULL when memory is short. */
cx_rbuf *cx_rbuf_new(size_t cap);
/* Drops a reference (none for NULL); the last frees the buffer. */
void cx_rbuf_unref(cx_rbuf *buf);
/* The loop's read buffer, shared by the reads that need no bytes before
   theirs (a stream's: each read is a note of its own), with room for
   `room` bytes after its len; NULL when memory is short. */
cx_rbuf *cx_loop_rbuf(cx_loop *loop, size_t room);

void cx_timer_init(cx_loop *loop, cx_timer *t);
int cx_timer_start(cx_timer *t, uint64_t delay_ns);
void cx_timer_stop(cx_timer *t);

void cx_child_init(cx_loop *loop, cx_child *c);
int cx_child_watch(cx_child *c, pid_t pid);


#endif
