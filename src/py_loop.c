/* py_loop.c: the loop driver. Owns the process's one loop (cxpy.loop,
   loop.c): turns it with the GIL released, delivers its notes to Python with
   the GIL held, re-raises the exception a callback parked, and rebuilds the
   loop in the child of os.fork(). Called by module.c through
   cxpy_loop_init(), which also claims the loop for this process. */
#include "glue.h"

#include <errno.h>
#include <stdlib.h>

static int claimed;

static void
clear_parked(void)
{
    Py_CLEAR(cxpy.exc_type);
    Py_CLEAR(cxpy.exc_value);
    Py_CLEAR(cxpy.exc_tb);
}

/* Delivers queued notes until none is left or a callback stops the loop.
   Frames sent by the callbacks are batched and written at the end. Notes
   left behind keep the descriptor readable: a loop that embeds this one
   (aio) turns it only when the descriptor says so. */
static void
drain_notes(void)
{
    cx_note *note;

    cx_loop_defer_begin(&cxpy.loop);
    for (;;) {
        cx_handle *h;
        CxObject *obj;
        int r = 0;

        /* What the last note's callbacks left for after them: the first
           read of each connection they took, its 'connection' done. */
        cx_loop_run_after_note(&cxpy.loop);
        if (cxpy.stop || (note = cx_note_pop(&cxpy.loop)) == NULL) {
            break;
        }
        h = note->h;
        obj = h->data;

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
    cx_loop_defer_end(&cxpy.loop);
    if (cxpy.loop.head != NULL) {
        (void)cx_loop_wakeup(&cxpy.loop);
    }
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

/* Ends run() or turn() (failed: an exception is set). The exception a
   callback parked leaves the state here in every case, so that no later
   run() can raise it: it is raised, or, when the run failed after it was
   parked (a signal handler raised), it becomes the context of the newer
   exception, as if that one had been raised while handling it. */
static PyObject *
leave_run(int failed)
{
    PyObject *type = cxpy.exc_type, *value = cxpy.exc_value,
             *tb = cxpy.exc_tb;

    cxpy.running = 0;
    cxpy.exc_type = cxpy.exc_value = cxpy.exc_tb = NULL;
    if (type == NULL) {
        return failed ? NULL : Py_NewRef(Py_None);
    }
    if (failed) {
        PyObject *parked = value;
        Py_DECREF(type);
        Py_XDECREF(tb);
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
        if (tb != NULL) {
            PyException_SetTraceback(value, tb);
        }
        if (value != parked) {
            PyException_SetContext(value, parked);      /* steals parked */
        }
        else {
            Py_DECREF(parked);
        }
    }
    PyErr_Restore(type, value, tb);
    return NULL;
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

/* turn(None) waits until something happens; turn(seconds) at most that
   long, rounded up to a millisecond. */
static PyObject *
py_turn(PyObject *mod, PyObject *arg)
{
    double timeout = 0.0;
    int ms = -1, failed;

    CX_UNUSED(mod);
    if (arg != Py_None && cxpy_seconds("turn", arg, &timeout) < 0) {
        return NULL;
    }
    if (enter_run() < 0) {
        return NULL;
    }
    if (arg != Py_None) {
        double up = timeout * 1000.0 + 0.999;
        ms = up >= CXPY_MAX_MS ? CXPY_MAX_MS : (int)up;
    }
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

/* The loop's wait policy, with the engine's settings from the
   environment: at import in an exec'd process, and again after a fork,
   whose child took on a worker's environment first. */
static void
start_policy(void)
{
    const char *spin = getenv("CLUSTER_EXT_SPIN_US");

    cx_policy_start(&cxpy.policy, &cxpy.loop,
                    (uint64_t)(spin ? atol(spin) : 50) * 1000u);
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
    start_policy();
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

/* What the engine took from the environment (CLUSTER_EXT_SPIN_US): a
   worker can tell it honours its own. */
static PyObject *
py_settings(PyObject *mod, PyObject *Py_UNUSED(ignored))
{
    CX_UNUSED(mod);
    return Py_BuildValue("{s:K}", "spin_us",
                         (unsigned long long)(cxpy.policy.spin_ns / 1000u));
}

static PyMethodDef loop_functions[] = {
    {"run", py_run, METH_NOARGS,
     "Runs the loop until nothing is left to wait for or stop() is called; "
     "re-raises the first exception a callback raised."},
    {"turn", py_turn, METH_O,
     "turn(timeout): one turn: wait up to timeout seconds (None: until "
     "something happens), then deliver."},
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
    {"after_fork", py_after_fork, METH_NOARGS, NULL},
    {"settings", py_settings, METH_NOARGS,
     "The engine's settings from the environment: {'spin_us': int}."},
    {NULL, NULL, 0, NULL},
};

int
cxpy_loop_init(PyObject *mod)
{
    int r;

    /* Epoll, children and signals belong to the process: one loop. */
    if (claimed) {
        PyErr_SetString(PyExc_ImportError,
                        "cluster_ext._core can be loaded once per process");
        return -1;
    }
    r = cx_loop_init(&cxpy.loop);
    if (r < 0) {
        cxpy_raise_oserror(-r);
        return -1;
    }
    start_policy();
    claimed = 1;
    cxpy.owner = PyThread_get_thread_ident();
    return PyModule_AddFunctions(mod, loop_functions);
}
