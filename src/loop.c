/* loop.c: the epoll reactor (loop.h). Owns the epoll fd, the timerfd, the
   wakeup eventfd, each child's pidfd and the SIGCHLD fallback pipe. Called by
   the glue (module.c) and by channel.c; runs with the GIL released, so it
   never touches Python: anything for Python becomes a note. */
#include "loop.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <unistd.h>

#define BATCH 256

/* ---- descriptor watchers --------------------------------------------- */

int
cx_io_start(cx_loop *loop, cx_io *io, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.fd = io->fd};

    /* No events is a stop: an EPOLL_CTL_MOD to nothing would leave the fd
       in the epoll set (its hang-ups still reported) while io->events == 0
       says it is not, and the next start would fail with EEXIST. */
    if (events == 0) {
        cx_io_stop(loop, io);
        return 0;
    }
    if (io->fd >= loop->nwatchers) {
        int n = loop->nwatchers ? loop->nwatchers : 64;
        cx_io **grown;
        while (n <= io->fd) {
            n *= 2;
        }
        grown = realloc(loop->watchers, (size_t)n * sizeof(*grown));
        if (grown == NULL) {
            return -ENOMEM;
        }
        memset(grown + loop->nwatchers, 0,
               (size_t)(n - loop->nwatchers) * sizeof(*grown));
        loop->watchers = grown;
        loop->nwatchers = n;
    }
    if (io->events == events) {
        return 0;
    }
    if (epoll_ctl(loop->epfd, io->events ? EPOLL_CTL_MOD : EPOLL_CTL_ADD,
                  io->fd, &ev) < 0) {
        return -errno;
    }
    io->events = events;
    loop->watchers[io->fd] = io;
    return 0;
}

/* Must run before the fd is closed. Scrubs the fd from the batch being
   dispatched, so that a descriptor number reused within the same batch never
   receives the old one's event. */
void
cx_io_stop(cx_loop *loop, cx_io *io)
{
    if (!io->events) {
        return;
    }
    if (loop->epfd >= 0) {
        (void)epoll_ctl(loop->epfd, EPOLL_CTL_DEL, io->fd, NULL);
    }
    io->events = 0;
    if (io->fd < loop->nwatchers && loop->watchers[io->fd] == io) {
        loop->watchers[io->fd] = NULL;
    }
    for (int i = 0; i < loop->batch_len; i++) {
        if (loop->batch[i].data.fd == io->fd) {
            loop->batch[i].data.fd = -1;
        }
    }
}

/* ---- handles and notes ------------------------------------------------ */

void
cx_handle_init(cx_loop *loop, cx_handle *h, void (*forget)(cx_handle *))
{
    memset(h, 0, sizeof(*h));
    h->loop = loop;
    h->forget = forget;
    h->referenced = 1;
    cx_list_init(&h->node);
}

void
cx_handle_link(cx_handle *h)
{
    if (!h->linked) {
        h->linked = 1;
        cx_list_push(&h->loop->handles, &h->node);
        h->loop->nref += h->referenced;
    }
}

void
cx_handle_unlink(cx_handle *h)
{
    if (h->linked) {
        h->linked = 0;
        cx_list_remove(&h->node);
        h->loop->nref -= h->referenced;
    }
}

void
cx_handle_ref(cx_handle *h, int on)
{
    on = on != 0;
    if (h->linked) {
        h->loop->nref += on - h->referenced;
    }
    h->referenced = on;
}

cx_rbuf *
cx_rbuf_new(size_t cap)
{
    cx_rbuf *buf = malloc(sizeof(*buf) + cap);

    if (buf != NULL) {
        buf->refs = 1;
        buf->cap = cap;
        buf->len = 0;
    }
    return buf;
}

void
cx_rbuf_unref(cx_rbuf *buf)
{
    if (buf != NULL && --buf->refs == 0) {
        free(buf);
    }
}

/* Room for a few full reads: a turn whose notes still hold the buffer
   takes a new one only once this is used up. */
#define LOOP_RBUF_CAP (256 * 1024)

cx_rbuf *
cx_loop_rbuf(cx_loop *loop, size_t room)
{
    cx_rbuf *buf = loop->rbuf;

    if (buf != NULL && buf->refs == 1) {
        buf->len = 0;           /* no note holds any of it */
    }
    if (buf == NULL || buf->cap - buf->len < room) {
        buf = cx_rbuf_new(room > LOOP_RBUF_CAP ? room : LOOP_RBUF_CAP);
        if (buf == NULL) {
            return NULL;
        }
        cx_rbuf_unref(loop->rbuf);      /* its notes keep it till delivered */
        loop->rbuf = buf;
    }
    return buf;
}

cx_note *
cx_note_new(cx_handle *h, int kind)
{
    cx_note *note = malloc(sizeof(*note));

    if (note != NULL) {
        note->next = NULL;
        note->h = h;
        note->kind = kind;
        note->a = note->b = 0;
        note->nfds = 0;
        note->data = NULL;
        note->len = 0;
        note->buf = NULL;
    }
    return note;
}

void
cx_note_carry(cx_note *note, cx_rbuf *buf, size_t off, size_t len)
{
    buf->refs++;
    note->buf = buf;
    note->data = buf->data + off;
    note->len = len;
}

void
cx_note_push(cx_loop *loop, cx_note *note)
{
    /* A note made outside a turn (a close called from Python) must still
       make the epoll fd readable: another loop that embeds this one (aio)
       only turns it when the fd says so. */
    if (loop->head == NULL && loop->batch == NULL &&
        !cx_loop_deferring(loop)) {
        (void)cx_loop_wakeup(loop);
    }
    note->h->pending++;
    if (loop->tail != NULL) {
        loop->tail->next = note;
    }
    else {
        loop->head = note;
    }
    loop->tail = note;
}

void
cx_note_post(cx_handle *h, int kind, int a)
{
    cx_note *note = cx_note_new(h, kind);

    if (note != NULL) {
        note->a = a;
        cx_note_push(h->loop, note);
    }
}

void
cx_note_post_n(cx_handle *h, int kind, int a, int count)
{
    while (count-- > 0) {
        cx_note_post(h, kind, a);
    }
}

cx_note *
cx_note_pop(cx_loop *loop)
{
    cx_note *note = loop->head;

    if (note != NULL) {
        loop->head = note->next;
        if (loop->head == NULL) {
            loop->tail = NULL;
        }
    }
    return note;
}

void
cx_note_free(cx_note *note)
{
    for (int i = 0; i < note->nfds; i++) {
        cx_close(&note->fds[i]);
    }
    cx_rbuf_unref(note->buf);
    free(note);
}

/* ---- timers: a min-heap on (when, seq) behind one timerfd ---------------- */

static int
timer_before(const cx_timer *a, const cx_timer *b)
{
    return a->when < b->when || (a->when == b->when && a->seq < b->seq);
}

static void
heap_swap(cx_loop *loop, size_t i, size_t j)
{
    cx_timer *t = loop->heap[i];

    loop->heap[i] = loop->heap[j];
    loop->heap[j] = t;
    loop->heap[i]->index = i;
    loop->heap[j]->index = j;
}

static void
heap_up(cx_loop *loop, size_t i)
{
    while (i > 0 && timer_before(loop->heap[i], loop->heap[(i - 1) / 2])) {
        heap_swap(loop, i, (i - 1) / 2);
        i = (i - 1) / 2;
    }
}

static void
heap_down(cx_loop *loop, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < loop->heap_len && timer_before(loop->heap[l], loop->heap[m])) {
            m = l;
        }
        if (r < loop->heap_len && timer_before(loop->heap[r], loop->heap[m])) {
            m = r;
        }
        if (m == i) {
            return;
        }
        heap_swap(loop, i, m);
        i = m;
    }
}

static void
heap_remove(cx_loop *loop, cx_timer *t)
{
    size_t i = t->index;

    loop->heap_len--;
    if (i != loop->heap_len) {
        loop->heap[i] = loop->heap[loop->heap_len];
        loop->heap[i]->index = i;
        heap_down(loop, i);
        heap_up(loop, i);
    }
}

static void
timers_arm(cx_loop *loop)
{
    struct itimerspec its = {{0, 0}, {0, 0}};
    uint64_t when = loop->heap_len ? loop->heap[0]->when : 0;

    if (when == loop->armed_for || loop->timerfd < 0) {
        return;                 /* < 0: closed after fork, nothing to arm */
    }
    if (when != 0) {
        its.it_value.tv_sec = (time_t)(when / 1000000000u);
        its.it_value.tv_nsec = (long)(when % 1000000000u);
    }
    if (timerfd_settime(loop->timerfd, TFD_TIMER_ABSTIME, &its, NULL) == 0) {
        loop->armed_for = when;
    }
}

static void
timers_fire(cx_loop *loop, cx_io *io, uint32_t events)
{
    uint64_t expirations, now = cx_now_ns();

    CX_UNUSED(events);
    (void)!read(io->fd, &expirations, sizeof(expirations));
    loop->armed_for = 0;
    while (loop->heap_len > 0 && loop->heap[0]->when <= now) {
        cx_timer *t = loop->heap[0];
        cx_note *note = NULL;
        if (t->cb == NULL &&
            (note = cx_note_new(&t->h, CX_NOTE_TIMER)) == NULL) {
            break;              /* left in the heap: the rearm fires at once */
        }
        heap_remove(loop, t);
        cx_handle_unlink(&t->h);
        if (note != NULL) {
            cx_note_push(loop, note);
        }
        else {
            t->cb(t);
        }
    }
    timers_arm(loop);
}

static void
timer_forget(cx_handle *h)
{
    cx_handle_unlink(h);        /* the heap itself is rebuilt after fork */
}

void
cx_timer_init(cx_loop *loop, cx_timer *t)
{
    cx_handle_init(loop, &t->h, timer_forget);
}

int
cx_timer_start(cx_timer *t, uint64_t delay_ns)
{
    cx_loop *loop = t->h.loop;

    cx_timer_stop(t);
    if (loop->heap_len == loop->heap_cap) {
        size_t n = loop->heap_cap ? loop->heap_cap * 2 : 16;
        cx_timer **grown = realloc(loop->heap, n * sizeof(*grown));
        if (grown == NULL) {
            return -ENOMEM;
        }
        loop->heap = grown;
        loop->heap_cap = n;
    }
    t->when = cx_now_ns() + delay_ns;
    t->seq = loop->timer_seq++;
    t->index = loop->heap_len;
    loop->heap[loop->heap_len++] = t;
    heap_up(loop, t->index);
    cx_handle_link(&t->h);
    timers_arm(loop);
    return 0;
}

void
cx_timer_stop(cx_timer *t)
{
    if (t->h.linked) {
        heap_remove(t->h.loop, t);
        cx_handle_unlink(&t->h);
        timers_arm(t->h.loop);
    }
}

/* ---- child exits: pidfd, or SIGCHLD through a self-pipe ------------------ */

static int sigchld_wfd = -1;

/* A non-blocking pipe p whose read end io watches for cb. */
static int
watch_pipe(cx_loop *loop, int p[2], cx_io *io, cx_io_cb cb)
{
    int r;

    if (pipe2(p, O_CLOEXEC | O_NONBLOCK) < 0) {
        return -errno;
    }
    io->fd = p[0];
    io->cb = cb;
    r = cx_io_start(loop, io, EPOLLIN);
    if (r < 0) {
        cx_close(&p[0]);
        cx_close(&p[1]);
    }
    return r;
}

/* Empties a non-blocking pipe whose bytes only say "wake up". */
static void
drain_pipe(int fd)
{
    char buf[64];

    while (read(fd, buf, sizeof(buf)) > 0) {
    }
}

static void
sigchld_handler(int sig)
{
    int saved = errno;
    char byte = 0;

    CX_UNUSED(sig);
    (void)!write(sigchld_wfd, &byte, 1);
    errno = saved;
}

static void
child_forget(cx_handle *h)
{
    cx_child *c = cx_container_of(h, cx_child, h);

    cx_close(&c->pidfd);
    cx_list_remove(&c->sig_node);
    cx_handle_unlink(h);
}

static void
child_reap(cx_child *c)
{
    cx_loop *loop = c->h.loop;
    siginfo_t info;
    cx_note *note;
    int r;

    memset(&info, 0, sizeof(info));
    /* By pid only: waitpid(-1) would steal the exit status of the
       application's own subprocesses. */
    do {
        r = waitid(P_PID, (id_t)c->pid, &info, WEXITED | WNOHANG);
    } while (r < 0 && errno == EINTR);
    if (r == 0 && info.si_pid == 0) {
        return;                 /* not yet */
    }
    note = cx_note_new(&c->h, CX_NOTE_EXIT);
    if (note == NULL) {
        return;                 /* the pidfd stays readable: next turn */
    }
    if (r < 0) {
        note->a = -1;           /* reaped by someone else: status unknown */
    }
    else if (info.si_code == CLD_EXITED) {
        note->a = info.si_status;
    }
    else {
        note->a = -1;
        note->b = info.si_status;
    }
    cx_io_stop(loop, &c->io);
    child_forget(&c->h);
    cx_note_push(loop, note);
}

static void
child_readable(cx_loop *loop, cx_io *io, uint32_t events)
{
    CX_UNUSED(loop);
    CX_UNUSED(events);
    child_reap(cx_container_of(io, cx_child, io));
}

static void
sigchld_readable(cx_loop *loop, cx_io *io, uint32_t events)
{
    cx_list *n, *next;

    CX_UNUSED(events);
    drain_pipe(io->fd);
    for (n = loop->children_sig.next; n != &loop->children_sig; n = next) {
        next = n->next;
        child_reap(cx_container_of(n, cx_child, sig_node));
    }
}

static int
sigchld_fallback_start(cx_loop *loop)
{
    struct sigaction sa;
    int r;

    if (loop->sigchld_pipe[0] >= 0) {
        return 0;
    }
    r = watch_pipe(loop, loop->sigchld_pipe, &loop->sigchld_io, sigchld_readable);
    if (r < 0) {
        return r;
    }
    sigchld_wfd = loop->sigchld_pipe[1];
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = sigchld_handler;
    sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
    sigemptyset(&sa.sa_mask);
    return sigaction(SIGCHLD, &sa, NULL) < 0 ? -errno : 0;
}

void
cx_child_init(cx_loop *loop, cx_child *c)
{
    cx_handle_init(loop, &c->h, child_forget);
    c->pidfd = -1;
    c->pid = 0;
    cx_list_init(&c->sig_node);
}

int
cx_child_watch(cx_child *c, pid_t pid)
{
    cx_loop *loop = c->h.loop;
    int fd = (int)syscall(SYS_pidfd_open, pid, 0);
    int r;

    c->pid = pid;
    if (fd >= 0) {
        c->pidfd = fd;
        c->io.fd = fd;
        c->io.cb = child_readable;
        r = cx_io_start(loop, &c->io, EPOLLIN);
        if (r < 0) {
            cx_close(&c->pidfd);
            return r;
        }
        cx_handle_link(&c->h);
        return 0;
    }
    if (errno != ENOSYS) {
        return -errno;
    }
    r = sigchld_fallback_start(loop);
    if (r < 0) {
        return r;
    }
    cx_list_push(&loop->children_sig, &c->sig_node);
    cx_handle_link(&c->h);
    child_reap(c);              /* it may have exited before the handler */
    return 0;
}

/* ---- the loop ------------------------------------------------------------ */

static void
wake_readable(cx_loop *loop, cx_io *io, uint32_t events)
{
    uint64_t count;

    CX_UNUSED(events);
    (void)!read(io->fd, &count, sizeof(count));
    if (!loop->wake.pending) {
        cx_note_post(&loop->wake, CX_NOTE_WAKE, 0);
    }
}

static void
wake_forget(cx_handle *h)
{
    CX_UNUSED(h);
}

int
cx_loop_init(cx_loop *loop)
{
    int r;

    memset(loop, 0, sizeof(*loop));
    loop->epfd = loop->timerfd = loop->wakefd = -1;
    loop->sigchld_pipe[0] = loop->sigchld_pipe[1] = -1;
    loop->signal_pipe[0] = loop->signal_pipe[1] = -1;
    cx_list_init(&loop->handles);
    cx_list_init(&loop->children_sig);
    cx_list_init(&loop->flushers);
    cx_list_init(&loop->after_note);
    cx_handle_init(loop, &loop->wake, wake_forget);
    loop->wake.referenced = 0;
    /* || stops at the first failure: errno is read right after it. */
    if ((loop->epfd = epoll_create1(EPOLL_CLOEXEC)) < 0 ||
        (loop->timerfd = timerfd_create(CLOCK_MONOTONIC,
                                        TFD_NONBLOCK | TFD_CLOEXEC)) < 0 ||
        (loop->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0) {
        r = -errno;
        goto fail;
    }
    loop->timer_io.fd = loop->timerfd;
    loop->timer_io.cb = timers_fire;
    loop->wake_io.fd = loop->wakefd;
    loop->wake_io.cb = wake_readable;
    if ((r = cx_io_start(loop, &loop->timer_io, EPOLLIN)) < 0 ||
        (r = cx_io_start(loop, &loop->wake_io, EPOLLIN)) < 0) {
        goto fail;
    }
    return 0;

fail:
    cx_loop_close(loop);
    return r;
}

/* The loop's own kernel objects: the epoll instance, the timerfd, the
   eventfd and the pipes. */
static void
loop_close_fds(cx_loop *loop)
{
    cx_close(&loop->epfd);
    cx_close(&loop->timerfd);
    cx_close(&loop->wakefd);
    if (loop->sigchld_pipe[0] >= 0) {
        signal(SIGCHLD, SIG_DFL);
        sigchld_wfd = -1;
    }
    cx_close(&loop->sigchld_pipe[0]);
    cx_close(&loop->sigchld_pipe[1]);
    cx_close(&loop->signal_pipe[0]);
    cx_close(&loop->signal_pipe[1]);
}

void
cx_loop_close(cx_loop *loop)
{
    cx_note *note;

    while ((note = cx_note_pop(loop)) != NULL) {
        note->h->pending--;
        cx_note_free(note);
    }
    loop_close_fds(loop);
    cx_rbuf_unref(loop->rbuf);
    free(loop->watchers);
    free(loop->heap);
    loop->rbuf = NULL;
    loop->watchers = NULL;
    loop->heap = NULL;
    loop->nwatchers = 0;
    loop->heap_len = loop->heap_cap = 0;
}

int
cx_loop_reinit_after_fork(cx_loop *loop)
{
    /* Every kernel object of the loop is shared with the parent: an
       epoll_ctl here would edit the parent's interest list, a
       timerfd_settime (a forget that stops a timer) re-arm the parent's
       timers, a wakeup wake the parent. Close them all before any forget
       function runs, so that nothing below can reach them; then forget every
       handle (their fds are the parent's). The glue already took the list
       of handles it must unpin. */
    loop_close_fds(loop);
    while (!cx_list_empty(&loop->handles)) {
        cx_handle *h = cx_container_of(loop->handles.next, cx_handle, node);
        h->forget(h);
        cx_handle_unlink(h);
    }
    cx_loop_close(loop);
    return cx_loop_init(loop);
}

int
cx_loop_turn(cx_loop *loop, int timeout_ms)
{
    struct epoll_event events[BATCH];
    int n = 0;

    cx_loop_flush(loop);
    if (loop->head != NULL) {
        timeout_ms = 0;
    }
    if (timeout_ms != 0 && loop->wait_hooks.before != NULL) {
        n = loop->wait_hooks.before(loop, events, BATCH);
    }
    if (n == 0) {
        n = epoll_wait(loop->epfd, events, BATCH, timeout_ms);
    }
    if (n < 0) {
        return -errno;
    }
    if (loop->wait_hooks.after != NULL) {
        loop->wait_hooks.after(loop, n);
    }
    loop->batch = events;
    loop->batch_len = n;
    for (int i = 0; i < n; i++) {
        int fd = events[i].data.fd;
        cx_io *io;
        if (fd < 0 || fd >= loop->nwatchers ||
            (io = loop->watchers[fd]) == NULL) {
            continue;
        }
        io->cb(loop, io, events[i].events);
    }
    loop->batch = NULL;
    loop->batch_len = 0;
    return n;
}

int
cx_loop_alive(const cx_loop *loop)
{
    return loop->nref > 0 || loop->head != NULL;
}

void
cx_loop_defer(cx_loop *loop, cx_flusher *f)
{
    if (!cx_flusher_queued(f)) {
        cx_list_push(&loop->flushers, &f->node);
    }
}

static void
run_list(cx_list *list)
{
    while (!cx_list_empty(list)) {
        cx_flusher *f = cx_container_of(list->next, cx_flusher, node);
        cx_list_remove(&f->node);
        f->flush(f);
    }
}

void
cx_loop_flush(cx_loop *loop)
{
    run_list(&loop->flushers);
}

void
cx_loop_defer_begin(cx_loop *loop)
{
    loop->defer_depth++;
}

void
cx_loop_defer_end(cx_loop *loop)
{
    if (--loop->defer_depth == 0) {
        cx_loop_flush(loop);
    }
}

void
cx_loop_after_note(cx_loop *loop, cx_flusher *f)
{
    if (!cx_flusher_queued(f)) {
        cx_list_push(&loop->after_note, &f->node);
    }
}

void
cx_loop_run_after_note(cx_loop *loop)
{
    run_list(&loop->after_note);
}

static void
signal_readable(cx_loop *loop, cx_io *io, uint32_t events)
{
    CX_UNUSED(loop);
    CX_UNUSED(events);
    /* Only ends the wait: the glue runs Python's handlers after each turn. */
    drain_pipe(io->fd);
}

int
cx_loop_signal_fd(cx_loop *loop)
{
    int r;

    if (loop->signal_pipe[1] >= 0) {
        return loop->signal_pipe[1];
    }
    r = watch_pipe(loop, loop->signal_pipe, &loop->signal_io, signal_readable);
    return r < 0 ? r : loop->signal_pipe[1];
}

int
cx_loop_wakeup(cx_loop *loop)
{
    uint64_t one = 1;

    return write(loop->wakefd, &one, sizeof(one)) < 0 ? -errno : 0;
}
