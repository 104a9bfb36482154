/* py_handle.c: the Handle type (a timer or a child watch) and the functions
   that make one, call_later() and watch_child(). A Handle owns no descriptor
   of its own: a child watch's pidfd belongs to its cx_child (loop.c). Called
   by module.c through cxpy_handle_init(). */
#include "glue.h"

#include <string.h>

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
    {"ref", cxpy_ref, METH_O, "ref(False): run() may return while it is pending."},
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
    if (cxpy_seconds("call_later", args[0], &delay) < 0) {
        return NULL;
    }
    self = (CxHandle *)handle_new(CX_NOTE_TIMER, args[1]);
    if (self == NULL) {
        return NULL;
    }
    r = cx_timer_start(&self->u.timer, (uint64_t)(delay * 1e9));
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

static PyMethodDef handle_functions[] = {
    {"call_later", (PyCFunction)(void (*)(void))py_call_later, METH_FASTCALL,
     "call_later(seconds, fn) -> Handle: seconds from 0 to MAX_SECONDS."},
    {"watch_child", (PyCFunction)(void (*)(void))py_watch_child,
     METH_FASTCALL, "watch_child(pid, fn(code, signal)) -> Handle"},
    {NULL, NULL, 0, NULL},
};

int
cxpy_handle_init(PyObject *mod)
{
    cxpy.handle_type = (PyTypeObject *)cxpy_new_type(mod, &handle_spec);
    if (cxpy.handle_type == NULL) {
        return -1;
    }
    return PyModule_AddFunctions(mod, handle_functions);
}
