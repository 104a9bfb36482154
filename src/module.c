/* module.c: the extension module cluster_ext._core. Owns the process's one
   loop (loop.c), turns its notes into Python calls with the GIL held, parks
   the first exception a callback raises, and maps errnos to OSError. Also
   the Handle type (timers, child watches, fd watches) and spawn(). */
#include "glue.h"
#include "spawn.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <string.h>

cx_state cxpy;
static int claimed;

/* ---- shared helpers -------------------------------------------------------- */

int
cxpy_check_owner(void)
{
    if (PyThread_get_thread_ident() != cxpy.owner) {
        PyErr_SetString(PyExc_RuntimeError,
                        "the cluster_ext loop belongs to another thread; "
                        "use call_soon_threadsafe()");
        return -1;
    }
    return 0;
}

PyObject *
cxpy_raise_oserror(int err)
{
    errno = err;
    return PyErr_SetFromErrno(PyExc_OSError);
}

PyObject *
cxpy_none_or_oserror(int r)
{
    return r < 0 ? cxpy_raise_oserror(-r) : Py_NewRef(Py_None);
}

int
cxpy_check_nargs(const char *name, Py_ssize_t nargs, Py_ssize_t min,
                 Py_ssize_t max)
{
    if (nargs < min || nargs > max) {
        PyErr_Format(PyExc_TypeError, "%s() takes %zd to %zd arguments (%zd given)",
                     name, min, max, nargs);
        return -1;
    }
    return 0;
}

int
cxpy_as_int(PyObject *obj)
{
    long value = PyLong_AsLong(obj);

    if (value < INT_MIN || value > INT_MAX) {
        PyErr_SetString(PyExc_OverflowError, "Python int too large to convert to C int");
        return -1;
    }
    return (int)value;
}

int
cxpy_no_kwds(const char *type_name, PyObject *kwds)
{
    if (kwds != NULL && PyDict_GET_SIZE(kwds) > 0) {
        PyErr_Format(PyExc_TypeError, "%s() takes no keywords", type_name);
        return -1;
    }
    return 0;
}

int
cxpy_park_current(void)
{
    if (cxpy.exc_type == NULL) {
        PyErr_Fetch(&cxpy.exc_type, &cxpy.exc_value, &cxpy.exc_tb);
        PyErr_NormalizeException(&cxpy.exc_type, &cxpy.exc_value,
                                 &cxpy.exc_tb);
        if (cxpy.exc_tb != NULL) {
            PyException_SetTraceback(cxpy.exc_value, cxpy.exc_tb);
        }
    }
    else {
        PyErr_WriteUnraisable(NULL);    /* only the first one is raised */
    }
    cxpy.stop = 1;
    return -1;
}

int
cxpy_call_steal(PyObject *fn, PyObject **args, size_t nargs)
{
    int r = 0;

    for (size_t i = 0; i < nargs; i++) {
        if (args[i] == NULL) {
            r = -1;
        }
    }
    r = r < 0 ? cxpy_park_current() : cxpy_call(fn, args, nargs);
    for (size_t i = 0; i < nargs; i++) {
        Py_XDECREF(args[i]);
    }
    return r;
}

PyObject *
cxpy_take_fds(cx_note *note)
{
    PyObject *fds = PyTuple_New(note->nfds);

    if (fds == NULL) {
        return NULL;            /* the note still owns them */
    }
    for (int i = 0; i < note->nfds; i++) {
        PyObject *fd = PyLong_FromLong(note->fds[i]);
        if (fd == NULL) {
            Py_DECREF(fds);
            return NULL;
        }
        PyTuple_SET_ITEM(fds, i, fd);
    }
    note->nfds = 0;
    return fds;
}

PyObject *
cxpy_opened(CxObject *self, int r)
{
    self->hp->data = self;
    if (r < 0) {
        Py_DECREF(self);
        return cxpy_raise_oserror(-r);
    }
    cxpy_pin_update(self);
    return (PyObject *)self;
}

void
cxpy_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    cx_handle *h = ((CxObject *)self)->hp;

    PyObject_GC_UnTrack(self);
    /* Pinned while linked, so only an unlinked handle gets here; forget
       frees what a failed open may have left. */
    h->forget(h);
    tp->tp_clear(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

PyObject *
cxpy_new_type(PyObject *mod, PyType_Spec *spec)
{
    PyObject *type = PyType_FromModuleAndSpec(mod, spec, NULL);

    if (type == NULL || PyModule_AddType(mod, (PyTypeObject *)type) < 0) {
        Py_XDECREF(type);
        return NULL;
    }
    return type;
}

void
cxpy_pin_update(CxObject *obj)
{
    int want = obj->hp->linked || obj->hp->pending > 0;

    if (want && !obj->pinned) {
        obj->pinned = 1;
        Py_INCREF(obj);
    }
    else if (!want && obj->pinned) {
        obj->pinned = 0;
        Py_DECREF(obj);         /* may free obj: its last use */
    }
}

int
cxpy_call(PyObject *fn, PyObject *const *args, size_t nargs)
{
    PyObject *res;

    Py_INCREF(fn);              /* the listener may drop the last reference */
    res = PyObject_Vectorcall(fn, args, nargs, NULL);
    Py_DECREF(fn);
    if (res == NULL) {
        return cxpy_park_current();
    }
    Py_DECREF(res);
    return 0;
}

/* ---- Handle: a timer, a child watch or a descriptor watch ------------------- */

typedef struct {
    CXPY_HEAD
    union {                    /* each starts with its cx_handle */
        cx_timer timer;
        cx_child child;
    } u;
    int kind;                  /* CX_NOTE_TIMER or CX_NOTE_EXIT */
    PyObject *callback;
} CxHandle;

static int handle_deliver(CxObject *obj, cx_note *note);

static PyObject *
handle_new(int kind, PyObject *callback)
{
    CxHandle *self;

    if (!PyCallable_Check(callback)) {
        PyErr_SetString(PyExc_TypeError, "callback must be callable");
        return NULL;
    }
    self = PyObject_GC_New(CxHandle, cxpy.handle_type);
    if (self == NULL) {
        return NULL;
    }
    memset(&self->u, 0, sizeof(self->u));
    self->kind = kind;
    self->pinned = 0;
    self->callback = Py_NewRef(callback);
    if (kind == CX_NOTE_TIMER) {
        cx_timer_init(&cxpy.loop, &self->u.timer);
    }
    else {
        cx_child_init(&cxpy.loop, &self->u.child);
    }
    self->hp = &self->u.timer.h;
    self->hp->data = self;
    self->deliver = handle_deliver;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

static int
handle_traverse(CxHandle *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->callback);
    return 0;
}

static int
handle_clear(CxHandle *self)
{
    Py_CLEAR(self->callback);
    return 0;
}

static PyObject *
handle_cancel(CxHandle *self, PyObject *Py_UNUSED(ignored))
{
    if (cxpy_check_owner() < 0) {
        return NULL;
    }
    if (self->kind != CX_NOTE_TIMER) {
        PyErr_SetString(PyExc_ValueError, "a child watch cannot be cancelled");
        return NULL;
    }
    CXPY_SETTLE(self, cx_timer_stop(&self->u.timer));
    Py_RETURN_NONE;
}

static PyMethodDef handle_methods[] = {
    {"cancel", (PyCFunction)handle_cancel, METH_NOARGS,
     "Stops the timer; harmless when it is done."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot handle_slots[] = {
    {Py_tp_dealloc, cxpy_dealloc},
    {Py_tp_traverse, handle_traverse},
    {Py_tp_clear, handle_clear},
    {Py_tp_methods, handle_methods},
    {0, NULL},
};

static PyType_Spec handle_spec = {
    .name = "cluster_ext._core.Handle",
    .basicsize = sizeof(CxHandle),
    .flags = CXPY_TPFLAGS | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = handle_slots,
};

static int
handle_deliver(CxObject *obj, cx_note *note)
{
    CxHandle *self = (CxHandle *)obj;
    PyObject *args[2];

    if (self->callback == NULL) {
        return 0;
    }
    if (note->kind == CX_NOTE_TIMER) {
        return cxpy_call(self->callback, NULL, 0);
    }
    /* CX_NOTE_EXIT: exactly one of code and signal is not None. */
    if (note->b != 0) {
        args[0] = Py_NewRef(Py_None);
        args[1] = PyLong_FromLong(note->b);
    }
    else {
        args[0] = PyLong_FromLong(note->a);
        args[1] = Py_NewRef(Py_None);
    }
    return cxpy_call_steal(self->callback, args, 2);
}

/* ---- the loop ---------------------------------------------------------------- */

static void
clear_parked(void)
{
    Py_CLEAR(cxpy.exc_type);
    Py_CLEAR(cxpy.exc_value);
    Py_CLEAR(cxpy.exc_tb);
}

/* Delivers queued notes until none is left or a callback stops the loop.
   Frames sent by the callbacks are batched and written at the end. */
static void
drain_notes(void)
{
    cx_note *note;

    cxpy.loop.chan_policy.deferring = 1;
    while (!cxpy.stop && (note = cx_note_pop(&cxpy.loop)) != NULL) {
        cx_handle *h = note->h;
        CxObject *obj = h->data;
        int r = 0;

        if (note->kind == CX_NOTE_WAKE) {
            h->pending--;
            cx_note_free(note);
            if (cxpy.wake_cb != NULL) {
                r = cxpy_call(cxpy.wake_cb, NULL, 0);
            }
            if (r < 0) {
                break;
            }
            continue;
        }
        Py_INCREF(obj);
        r = obj->deliver(obj, note);
        h->pending--;
        cx_note_free(note);
        cxpy_pin_update(obj);
        Py_DECREF(obj);
        if (r < 0) {
            break;
        }
    }
    cxpy.loop.chan_policy.deferring = 0;
    cx_loop_flush(&cxpy.loop);
}

/* One turn: wait (timeout_ms, -1 forever), do the C work, deliver notes.
   Returns 0, or -1 with an exception set (a signal handler raised, or the
   wait failed). A callback's exception is parked, not set. */
static int
turn_once(int timeout_ms)
{
    int rc;

    Py_BEGIN_ALLOW_THREADS
    rc = cx_loop_turn(&cxpy.loop, timeout_ms);
    Py_END_ALLOW_THREADS
    if (rc < 0 && rc != -EINTR) {
        cxpy_raise_oserror(-rc);
        return -1;
    }
    /* Python's signal handlers run here (SIGTERM -> disconnect...): after
       EINTR, or after the wakeup fd ended the wait. */
    if (PyErr_CheckSignals() < 0) {
        return -1;
    }
    drain_notes();
    return 0;
}

static PyObject *
leave_run(int failed)
{
    cxpy.running = 0;
    if (failed) {
        return NULL;
    }
    if (cxpy.exc_type != NULL) {
        PyErr_Restore(cxpy.exc_type, cxpy.exc_value, cxpy.exc_tb);
        cxpy.exc_type = cxpy.exc_value = cxpy.exc_tb = NULL;
        return NULL;
    }
    Py_RETURN_NONE;
}

static int
enter_run(void)
{
    if (cxpy_check_owner() < 0) {
        return -1;
    }
    if (cxpy.running) {
        PyErr_SetString(PyExc_RuntimeError, "the loop is already running");
        return -1;
    }
    cxpy.running = 1;
    cxpy.stop = 0;
    return 0;
}

static PyObject *
py_run(PyObject *mod, PyObject *Py_UNUSED(ignored))
{
    int failed = 0;

    CX_UNUSED(mod);
    if (enter_run() < 0) {
        return NULL;
    }
    drain_notes();              /* what a stopped run() left behind */
    while (!cxpy.stop && cx_loop_alive(&cxpy.loop)) {
        if (turn_once(-1) < 0) {
            failed = 1;
            break;
        }
    }
    return leave_run(failed);
}

static PyObject *
py_turn(PyObject *mod, PyObject *arg)
{
    double timeout = PyFloat_AsDouble(arg);
    int ms, failed;

    CX_UNUSED(mod);
    if (timeout == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    if (enter_run() < 0) {
        return NULL;
    }
    ms = timeout < 0 ? -1 : (int)(timeout * 1000.0 + 0.999);
    failed = turn_once(ms) < 0;
    return leave_run(failed);
}

static PyObject *
py_stop(PyObject *mod, PyObject *Py_UNUSED(ignored))
{
    CX_UNUSED(mod);
    cxpy.stop = 1;
    Py_RETURN_NONE;
}

static PyObject *
py_running(PyObject *mod, PyObject *Py_UNUSED(ignored))
{
    CX_UNUSED(mod);
    return PyBool_FromLong(cxpy.running);
}

static PyObject *
py_fileno(PyObject *mod, PyObject *Py_UNUSED(ignored))
{
    CX_UNUSED(mod);
    return PyLong_FromLong(cxpy.loop.epfd);
}

static PyObject *
py_signal_fd(PyObject *mod, PyObject *Py_UNUSED(ignored))
{
    int fd = cx_loop_signal_fd(&cxpy.loop);

    CX_UNUSED(mod);
    if (fd < 0) {
        return cxpy_raise_oserror(-fd);
    }
    return PyLong_FromLong(fd);
}

static PyObject *
py_wakeup(PyObject *mod, PyObject *Py_UNUSED(ignored))
{
    int r = cx_loop_wakeup(&cxpy.loop);     /* any thread */

    CX_UNUSED(mod);
    if (r < 0 && r != -EAGAIN) {
        return cxpy_raise_oserror(-r);
    }
    Py_RETURN_NONE;
}

static PyObject *
py_set_wake_callback(PyObject *mod, PyObject *fn)
{
    CX_UNUSED(mod);
    Py_XSETREF(cxpy.wake_cb, fn == Py_None ? NULL : Py_NewRef(fn));
    Py_RETURN_NONE;
}

static PyObject *
py_call_later(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    double delay;
    CxHandle *self;
    int r;

    CX_UNUSED(mod);
    if (cxpy_check_nargs("call_later", nargs, 2, 2) < 0 ||
        cxpy_check_owner() < 0) {
        return NULL;
    }
    delay = PyFloat_AsDouble(args[0]);
    if (delay == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    self = (CxHandle *)handle_new(CX_NOTE_TIMER, args[1]);
    if (self == NULL) {
        return NULL;
    }
    r = cx_timer_start(&self->u.timer,
                       delay <= 0 ? 0 : (uint64_t)(delay * 1e9));
    return cxpy_opened((CxObject *)self, r);
}

static PyObject *
py_watch_child(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    long pid;
    CxHandle *self;
    int r;

    CX_UNUSED(mod);
    if (cxpy_check_nargs("watch_child", nargs, 2, 2) < 0 ||
        cxpy_check_owner() < 0) {
        return NULL;
    }
    pid = PyLong_AsLong(args[0]);
    if (pid == -1 && PyErr_Occurred()) {
        return NULL;
    }
    self = (CxHandle *)handle_new(CX_NOTE_EXIT, args[1]);
    if (self == NULL) {
        return NULL;
    }
    r = cx_child_watch(&self->u.child, (pid_t)pid);
    return cxpy_opened((CxObject *)self, r);
}

/* ---- spawn ------------------------------------------------------------------- */

/* A NULL-terminated char ** copy of a sequence of str/bytes (fs encoding),
   kept alive by *keep. */
static char **
cstring_array(PyObject *seq, PyObject **keep)
{
    Py_ssize_t n;
    char **out;

    *keep = PySequence_Fast(seq, "expected a sequence of str or bytes");
    if (*keep == NULL) {
        return NULL;
    }
    n = PySequence_Fast_GET_SIZE(*keep);
    out = PyMem_Calloc((size_t)n + 1, sizeof(char *));
    if (out == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(*keep, i), *enc;
        if (!PyUnicode_FSConverter(item, &enc)) {
            goto fail;
        }
        /* The encoded bytes replace the item so that *keep owns them. */
        if (PyList_Check(*keep)) {
            PyList_SetItem(*keep, i, enc);
        }
        else {
            PyObject *copy = PySequence_List(*keep);
            if (copy == NULL) {
                Py_DECREF(enc);
                goto fail;
            }
            Py_SETREF(*keep, copy);
            PyList_SetItem(*keep, i, enc);
        }
        out[i] = PyBytes_AS_STRING(enc);
    }
    return out;

fail:
    PyMem_Free(out);
    return NULL;
}

static PyObject *
py_spawn(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    cx_spawn_plan plan = {0};
    PyObject *argv_keep = NULL, *envp_keep = NULL, *path = NULL,
             *cwd = NULL, *result = NULL;
    char **argv = NULL, **envp = NULL;
    pid_t pid;

    CX_UNUSED(mod);
    /* spawn(path, argv, envp, cwd, chan_fd, (fd0, fd1, fd2), uid, gid) */
    if (cxpy_check_nargs("spawn", nargs, 8, 8) < 0 ||
        cxpy_check_owner() < 0) {
        return NULL;
    }
    if (!PyUnicode_FSConverter(args[0], &path) ||
        (args[3] != Py_None && !PyUnicode_FSConverter(args[3], &cwd)) ||
        !PyArg_ParseTuple(args[5], "iii", &plan.stdio[0], &plan.stdio[1],
                          &plan.stdio[2])) {
        goto done;
    }
    plan.chan_fd = cxpy_as_int(args[4]);
    plan.uid = cxpy_as_int(args[6]);
    plan.gid = cxpy_as_int(args[7]);
    if (PyErr_Occurred()) {
        goto done;
    }
    for (int i = 0; i < 3; i++) {
        if (plan.stdio[i] >= 0 && plan.stdio[i] < 3) {
            PyErr_SetString(PyExc_ValueError, "stdio fds must be >= 3");
            goto done;
        }
    }
    if (plan.chan_fd < 3) {
        PyErr_SetString(PyExc_ValueError, "the channel fd must be >= 3");
        goto done;
    }
    argv = cstring_array(args[1], &argv_keep);
    envp = argv ? cstring_array(args[2], &envp_keep) : NULL;
    if (envp == NULL) {
        goto done;
    }
    plan.path = PyBytes_AS_STRING(path);
    plan.cwd = cwd ? PyBytes_AS_STRING(cwd) : NULL;
    plan.argv = argv;
    plan.envp = envp;
    Py_BEGIN_ALLOW_THREADS
    pid = cx_spawn(&plan);
    Py_END_ALLOW_THREADS
    if (pid < 0) {
        errno = -pid;
        /* The filename says the program is at fault: only when it is. */
        PyErr_SetFromErrnoWithFilenameObject(
            PyExc_OSError, plan.failed_in_parent ? NULL : args[0]);
        goto done;
    }
    result = PyLong_FromLong(pid);

done:
    PyMem_Free(argv);
    PyMem_Free(envp);
    Py_XDECREF(argv_keep);
    Py_XDECREF(envp_keep);
    Py_XDECREF(path);
    Py_XDECREF(cwd);
    return result;
}

/* An AF_UNIX stream pair for a worker's channel, close-on-exec, both ends
   numbered 3 and up (the child's 0-2 are its stdio). */
static PyObject *
py_socketpair(PyObject *mod, PyObject *Py_UNUSED(ignored))
{
    int sv[2];

    CX_UNUSED(mod);
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        return cxpy_raise_oserror(errno);
    }
    sv[0] = cx_fd_above_stdio(sv[0]);
    sv[1] = cx_fd_above_stdio(sv[1]);
    if (sv[0] < 0 || sv[1] < 0) {
        int err = sv[0] < 0 ? -sv[0] : -sv[1];
        cx_close(&sv[0]);
        cx_close(&sv[1]);
        return cxpy_raise_oserror(err);
    }
    return Py_BuildValue("ii", sv[0], sv[1]);
}

static PyObject *
py_die_with_parent(PyObject *mod, PyObject *arg)
{
    long parent = PyLong_AsLong(arg);

    CX_UNUSED(mod);
    if (parent == -1 && PyErr_Occurred()) {
        return NULL;
    }
    return cxpy_none_or_oserror(cx_spawn_die_with_parent((pid_t)parent));
}

/* In the child of os.fork(): the parent's engine is dropped without a note
   and without touching the shared epoll set; a fresh loop takes its place. */
static PyObject *
py_after_fork(PyObject *mod, PyObject *Py_UNUSED(ignored))
{
    PyObject *pinned = PyList_New(0);
    cx_list *n;
    cx_note *note;
    int r;

    CX_UNUSED(mod);
    if (pinned == NULL) {
        return NULL;
    }
    for (n = cxpy.loop.handles.next; n != &cxpy.loop.handles; n = n->next) {
        CxObject *obj = cx_container_of(n, cx_handle, node)->data;
        if (obj != NULL && obj->pinned && PyList_Append(pinned,
                                                       (PyObject *)obj) < 0) {
            goto fail;
        }
    }
    for (note = cxpy.loop.head; note != NULL; note = note->next) {
        CxObject *obj = note->h->data;
        if (note->kind != CX_NOTE_WAKE && obj != NULL && obj->pinned &&
            PyList_Append(pinned, (PyObject *)obj) < 0) {
            goto fail;
        }
    }
    r = cx_loop_reinit_after_fork(&cxpy.loop);
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(pinned); i++) {
        CxObject *obj = (CxObject *)PyList_GET_ITEM(pinned, i);
        obj->hp->pending = 0;
        cxpy_pin_update(obj);
    }
    Py_DECREF(pinned);
    cxpy.owner = PyThread_get_thread_ident();
    cxpy.running = cxpy.stop = 0;
    clear_parked();
    return cxpy_none_or_oserror(r);

fail:
    Py_DECREF(pinned);
    return NULL;
}

/* ---- the module ----------------------------------------------------------------- */

static PyMethodDef core_methods[] = {
    {"run", py_run, METH_NOARGS,
     "Runs the loop until nothing is left to wait for or stop() is called; "
     "re-raises the first exception a callback raised."},
    {"turn", py_turn, METH_O,
     "One turn: wait up to timeout seconds (-1: forever), then deliver."},
    {"stop", py_stop, METH_NOARGS, "Makes run() return after this callback."},
    {"running", py_running, METH_NOARGS,
     "Whether run() or turn() is on the stack."},
    {"fileno", py_fileno, METH_NOARGS, "The epoll descriptor."},
    {"signal_fd", py_signal_fd, METH_NOARGS,
     "The write end of a pipe that ends the loop's wait: for "
     "signal.set_wakeup_fd()."},
    {"wakeup", py_wakeup, METH_NOARGS,
     "Thread-safe: makes the loop call the wake callback."},
    {"set_wake_callback", py_set_wake_callback, METH_O, NULL},
    {"call_later", (PyCFunction)(void (*)(void))py_call_later, METH_FASTCALL,
     "call_later(seconds, fn) -> Handle"},
    {"watch_child", (PyCFunction)(void (*)(void))py_watch_child,
     METH_FASTCALL, "watch_child(pid, fn(code, signal)) -> Handle"},
    {"spawn", (PyCFunction)(void (*)(void))py_spawn, METH_FASTCALL,
     "spawn(path, argv, envp, cwd, chan_fd, stdio, uid, gid) -> pid"},
    {"socketpair", py_socketpair, METH_NOARGS,
     "socketpair() -> (fd, fd): a channel's two ends, close-on-exec, >= 3."},
    {"die_with_parent", py_die_with_parent, METH_O, NULL},
    {"after_fork", py_after_fork, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static int
add_constants(PyObject *mod)
{
    static const struct {
        const char *name;
        long value;
    } constants[] = {
        {"FRAME_USER", CX_FRAME_USER},
        {"FRAME_ONLINE", CX_FRAME_ONLINE},
        {"FRAME_DISCONNECT", CX_FRAME_DISCONNECT},
        {"FRAME_EXITED_AFTER_DISCONNECT", CX_FRAME_EXITED_AFTER_DISCONNECT},
        {"FRAME_PING", CX_FRAME_PING},
        {"FRAME_PONG", CX_FRAME_PONG},
        {"FRAME_QUERY_SERVER", CX_FRAME_QUERY_SERVER},
        {"FRAME_SERVER_REPLY", CX_FRAME_SERVER_REPLY},
        {"FRAME_LISTENING", CX_FRAME_LISTENING},
        {"FRAME_SERVER_CLOSE", CX_FRAME_SERVER_CLOSE},
        {"FRAME_NEWCONN", CX_FRAME_NEWCONN},
        {"FRAME_NEWCONN_ACK", CX_FRAME_NEWCONN_ACK},
        {"EVENT_WRITTEN", CX_NOTE_WRITTEN},
        {"EVENT_DRAIN", CX_NOTE_DRAIN},
        {"EVENT_ERROR", CX_NOTE_ERROR},
        {"EVENT_CLOSE", CX_NOTE_CLOSE},
        {"EVENT_END", CX_NOTE_END},
    };

    for (size_t i = 0; i < sizeof(constants) / sizeof(constants[0]); i++) {
        if (PyModule_AddIntConstant(mod, constants[i].name,
                                    constants[i].value) < 0) {
            return -1;
        }
    }
    return 0;
}

static int
core_exec(PyObject *mod)
{
    const char *spin;
    int r;

    /* Epoll, children and signals belong to the process: one loop. */
    if (claimed) {
        PyErr_SetString(PyExc_ImportError,
                        "cluster_ext._core can be loaded once per process");
        return -1;
    }
    spin = getenv("CLUSTER_EXT_SPIN_US");
    cxpy.loop.chan_policy.spin_ns = (uint64_t)(spin ? atol(spin) : 50) * 1000u;
    r = cx_loop_init(&cxpy.loop);
    if (r < 0) {
        cxpy_raise_oserror(-r);
        return -1;
    }
    claimed = 1;
    cxpy.owner = PyThread_get_thread_ident();
    cxpy.handle_type = (PyTypeObject *)cxpy_new_type(mod, &handle_spec);
    if (cxpy.handle_type == NULL) {
        return -1;
    }
    cxpy.channel_closed = PyErr_NewExceptionWithDoc(
        "cluster_ext.ChannelClosedError",
        "The IPC channel is closed.", PyExc_BrokenPipeError, NULL);
    if (cxpy.channel_closed == NULL ||
        PyModule_AddObjectRef(mod, "ChannelClosedError",
                              cxpy.channel_closed) < 0 ||
        cxpy_channel_init(mod) < 0 || cxpy_stream_init(mod) < 0 ||
        cxpy_balancer_init(mod) < 0 || add_constants(mod) < 0) {
        return -1;
    }
    return 0;
}

static PyModuleDef_Slot core_slots[] = {
    {Py_mod_exec, core_exec},
    {0, NULL},
};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "cluster_ext._core",
    .m_doc = "The native engine of cluster_ext: loop, channels, spawning.",
    .m_size = 0,
    .m_methods = core_methods,
    .m_slots = core_slots,
};

PyMODINIT_FUNC PyInit__core(void);

PyMODINIT_FUNC
PyInit__core(void)
{
    return PyModuleDef_Init(&core_module);
}
