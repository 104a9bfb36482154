/* py_stream.c: the Stream and Listener types, the glue over stream.c. Each
   owns its fd from construction; an accepted connection's fd is handed to
   Python as an int, and from then on the receiver owns it. Called by
   module.c through cxpy_stream_init(). */
#include "glue.h"
#include "stream.h"

#include <errno.h>

/* ---- Stream ---------------------------------------------------------------- */

typedef struct {
    CXPY_HEAD
    cx_stream s;
    PyObject *on_data;         /* on_data(bytes) */
    PyObject *on_event;        /* on_event(kind, errno): end, drain, written, close */
} CxStream;

static int
stream_deliver(CxObject *obj, cx_note *note)
{
    CxStream *self = (CxStream *)obj;
    PyObject *args[2];
    int r;

    if (note->kind == CX_NOTE_END) {
        /* 'end' first, then this side's end: what its listeners write
           leaves, as in Node. Also when they raised, or the callbacks are
           gone: the stream must not stay half open. */
        r = 0;
        if (self->on_event != NULL) {
            args[0] = PyLong_FromLong(note->kind);
            args[1] = PyLong_FromLong(note->a);
            r = cxpy_call_steal(self->on_event, args, 2);
        }
        cx_stream_end_after_peer(&self->s);
        return r;
    }
    if (self->on_data == NULL) {
        return 0;
    }
    if (note->kind == CX_NOTE_DATA) {
        args[0] = PyBytes_FromStringAndSize(note->data, (Py_ssize_t)note->len);
        return cxpy_call_steal(self->on_data, args, 1);
    }
    args[0] = PyLong_FromLong(note->kind);
    args[1] = PyLong_FromLong(note->a);
    if (note->kind == CX_NOTE_CLOSE) {
        /* The last note: let go of the callbacks, which hold the Python
           socket that holds this stream, so that reference counting frees
           the pair rather than the cycle collector (a collection every few
           hundred connections). */
        PyObject *on_event = self->on_event;
        self->on_event = NULL;
        Py_CLEAR(self->on_data);
        r = cxpy_call_steal(on_event, args, 2);
        Py_DECREF(on_event);
        return r;
    }
    return cxpy_call_steal(self->on_event, args, 2);
}

static PyObject *
stream_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    CxStream *self;
    PyObject *fd_arg, *on_data, *on_event;
    Py_ssize_t hwm;
    int fd, is_socket = -1, r;

    /* From here fd is ours: every failure closes it (cxpy_ctor_fail). */
    if ((fd = cxpy_ctor_fd("Stream", args)) < 0) {
        return NULL;
    }
    if (cxpy_no_kwds("Stream", kwds) < 0 ||
        !PyArg_ParseTuple(args, "OOOn|i:Stream", &fd_arg, &on_data,
                          &on_event, &hwm, &is_socket) ||
        cxpy_check_owner() < 0) {
        return cxpy_ctor_fail(fd);
    }
    if (!PyCallable_Check(on_data) || !PyCallable_Check(on_event) ||
        hwm < 0) {
        PyErr_SetString(PyExc_ValueError, "bad callbacks or hwm");
        return cxpy_ctor_fail(fd);
    }
    self = (CxStream *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return cxpy_ctor_fail(fd);
    }
    cx_stream_init(&cxpy.loop, &self->s);
    self->hp = &self->s.h;
    self->deliver = stream_deliver;
    self->on_data = Py_NewRef(on_data);
    self->on_event = Py_NewRef(on_event);
    r = cx_stream_open(&self->s, fd, (size_t)hwm, is_socket);
    return cxpy_opened((CxObject *)self, r);
}

static int
stream_traverse(CxStream *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->on_data);
    Py_VISIT(self->on_event);
    return 0;
}

static int
stream_clear(CxStream *self)
{
    Py_CLEAR(self->on_data);
    Py_CLEAR(self->on_event);
    return 0;
}

static PyObject *
stream_write(CxStream *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    int notify = 0, r;

    if (cxpy_check_nargs("write", nargs, 1, 2) < 0 ||
        cxpy_check_owner() < 0 ||
        (nargs > 1 && (notify = PyObject_IsTrue(args[1])) < 0) ||
        PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    CXPY_SETTLE(self, r = cx_stream_write(&self->s, view.buf,
                                          (size_t)view.len, notify));
    PyBuffer_Release(&view);
    if (r < 0) {
        return cxpy_raise_oserror(-r);
    }
    return PyBool_FromLong(r);
}

static PyObject *
stream_end(CxStream *self, PyObject *Py_UNUSED(ignored))
{
    if (cxpy_check_owner() < 0) {
        return NULL;
    }
    CXPY_SETTLE(self, cx_stream_end(&self->s));
    Py_RETURN_NONE;
}

static PyObject *
stream_destroy(CxStream *self, PyObject *Py_UNUSED(ignored))
{
    if (cxpy_check_owner() < 0) {
        return NULL;
    }
    CXPY_SETTLE(self, cx_stream_destroy(&self->s, 0));
    Py_RETURN_NONE;
}

static PyObject *
stream_pause(CxStream *self, PyObject *arg)
{
    int on = PyObject_IsTrue(arg);

    if (on < 0 || cxpy_check_owner() < 0) {
        return NULL;
    }
    return cxpy_none_or_oserror(cx_stream_pause(&self->s, on));
}

static PyObject *
stream_set_no_delay(CxStream *self, PyObject *arg)
{
    int on = PyObject_IsTrue(arg);

    if (on < 0) {
        return NULL;
    }
    cx_stream_set_no_delay(&self->s, on);
    Py_RETURN_NONE;
}

static PyObject *
stream_get_fd(CxStream *self, void *Py_UNUSED(closure))
{
    return PyLong_FromLong(self->s.fd);
}

static PyObject *
stream_get_ended(CxStream *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->s.fd < 0 || self->s.ending);
}

static PyMethodDef stream_methods[] = {
    {"write", (PyCFunction)(void (*)(void))stream_write, METH_FASTCALL,
     "write(data, notify=False) -> bool: False once over the high-water mark."},
    {"end", (PyCFunction)stream_end, METH_NOARGS,
     "Shuts the write side down once the queue has drained."},
    {"destroy", (PyCFunction)stream_destroy, METH_NOARGS,
     "Closes at once; queued writes fail."},
    {"pause", (PyCFunction)stream_pause, METH_O, "pause(True|False)"},
    {"ref", cxpy_ref, METH_O, "ref(False): run() may return while it is open."},
    {"set_no_delay", (PyCFunction)stream_set_no_delay, METH_O,
     "TCP_NODELAY on a TCP socket."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef stream_getset[] = {
    {"fd", (getter)stream_get_fd, NULL, NULL, NULL},
    {"ended", (getter)stream_get_ended, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot stream_slots[] = {
    {Py_tp_new, stream_new},
    {Py_tp_dealloc, cxpy_dealloc},
    {Py_tp_traverse, stream_traverse},
    {Py_tp_clear, stream_clear},
    {Py_tp_methods, stream_methods},
    {Py_tp_getset, stream_getset},
    {Py_tp_doc, "Stream(fd, on_data, on_event, hwm, is_socket=-1)"},
    {0, NULL},
};

static PyType_Spec stream_spec = {
    .name = "cluster_ext._core.Stream",
    .basicsize = sizeof(CxStream),
    .flags = CXPY_TPFLAGS,
    .slots = stream_slots,
};

/* ---- Listener ------------------------------------------------------------------ */

typedef struct {
    CXPY_HEAD
    cx_listener l;
    PyObject *on_connection;   /* on_connection(fd) */
} CxListener;

static int
listener_deliver(CxObject *obj, cx_note *note)
{
    CxListener *self = (CxListener *)obj;
    PyObject *args[1];

    if (self->on_connection == NULL) {
        return 0;
    }
    args[0] = PyLong_FromLong(note->fds[0]);
    if (args[0] != NULL) {
        note->nfds = 0;         /* Python owns the fd now */
    }
    return cxpy_call_steal(self->on_connection, args, 1);
}

static PyObject *
listener_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    CxListener *self;
    PyObject *fd_arg, *on_connection;
    int fd, raced, max_accepts, r;

    /* From here fd is ours: every failure closes it (cxpy_ctor_fail). */
    if ((fd = cxpy_ctor_fd("Listener", args)) < 0) {
        return NULL;
    }
    if (cxpy_no_kwds("Listener", kwds) < 0 ||
        !PyArg_ParseTuple(args, "OOpi:Listener", &fd_arg, &on_connection,
                          &raced, &max_accepts) ||
        cxpy_check_owner() < 0) {
        return cxpy_ctor_fail(fd);
    }
    if (!PyCallable_Check(on_connection)) {
        PyErr_SetString(PyExc_ValueError, "bad callback");
        return cxpy_ctor_fail(fd);
    }
    self = (CxListener *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return cxpy_ctor_fail(fd);
    }
    cx_listener_init(&cxpy.loop, &self->l);
    self->hp = &self->l.h;
    self->deliver = listener_deliver;
    self->on_connection = Py_NewRef(on_connection);
    r = cx_listener_open(&self->l, fd, raced, max_accepts);
    return cxpy_opened((CxObject *)self, r);
}

static int
listener_traverse(CxListener *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->on_connection);
    return 0;
}

static int
listener_clear(CxListener *self)
{
    Py_CLEAR(self->on_connection);
    return 0;
}

static PyObject *
listener_close(CxListener *self, PyObject *Py_UNUSED(ignored))
{
    if (cxpy_check_owner() < 0) {
        return NULL;
    }
    CXPY_SETTLE(self, cx_listener_close(&self->l));
    Py_RETURN_NONE;
}

static PyObject *
listener_pause(CxListener *self, PyObject *arg)
{
    int on = PyObject_IsTrue(arg);

    if (on < 0 || cxpy_check_owner() < 0) {
        return NULL;
    }
    return cxpy_none_or_oserror(cx_listener_pause(&self->l, on));
}

static PyObject *
listener_get_fd(CxListener *self, void *Py_UNUSED(closure))
{
    return PyLong_FromLong(self->l.fd);
}

static PyObject *
listener_get_pending(CxListener *self, void *Py_UNUSED(closure))
{
    return PyLong_FromLong(self->l.h.pending);
}

static PyObject *
listener_accept_queued(CxListener *self, PyObject *Py_UNUSED(ignored))
{
    if (cxpy_check_owner() < 0) {
        return NULL;
    }
    return PyLong_FromLong(cx_listener_accept_queued(&self->l));
}

static PyMethodDef listener_methods[] = {
    {"close", (PyCFunction)listener_close, METH_NOARGS,
     "Stops accepting and closes the listening fd."},
    {"accept_queued", (PyCFunction)listener_accept_queued, METH_NOARGS,
     "Accepts what the queue holds now (before a close); returns how many."},
    {"pause", (PyCFunction)listener_pause, METH_O, "pause(True|False)"},
    {"ref", cxpy_ref, METH_O, "ref(False): run() may return while it listens."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef listener_getset[] = {
    {"fd", (getter)listener_get_fd, NULL, NULL, NULL},
    {"pending", (getter)listener_get_pending, NULL,
     "Accepted connections not yet handed to Python.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot listener_slots[] = {
    {Py_tp_new, listener_new},
    {Py_tp_dealloc, cxpy_dealloc},
    {Py_tp_traverse, listener_traverse},
    {Py_tp_clear, listener_clear},
    {Py_tp_methods, listener_methods},
    {Py_tp_getset, listener_getset},
    {Py_tp_doc, "Listener(fd, on_connection, raced, max_accepts)"},
    {0, NULL},
};

static PyType_Spec listener_spec = {
    .name = "cluster_ext._core.Listener",
    .basicsize = sizeof(CxListener),
    .flags = CXPY_TPFLAGS,
    .slots = listener_slots,
};

static PyObject *
py_refuse_new(PyObject *mod, PyObject *arg)
{
    int fd = PyObject_AsFileDescriptor(arg), r;

    CX_UNUSED(mod);
    if (fd < 0) {
        return NULL;
    }
    if ((r = cx_listen_refuse_new(fd)) < 0) {
        return cxpy_raise_oserror(-r);
    }
    Py_RETURN_NONE;
}

static PyMethodDef stream_functions[] = {
    {"refuse_new", py_refuse_new, METH_O,
     "refuse_new(fd): a listening TCP socket's stop: no handshake completes "
     "into its queue from now on (OSError on a socket it does not apply to)."},
    {NULL, NULL, 0, NULL},
};

int
cxpy_stream_init(PyObject *mod)
{
    cxpy.stream_type = (PyTypeObject *)cxpy_new_type(mod, &stream_spec);
    cxpy.listener_type = (PyTypeObject *)cxpy_new_type(mod, &listener_spec);
    if (cxpy.stream_type == NULL || cxpy.listener_type == NULL) {
        return -1;
    }
    return PyModule_AddFunctions(mod, stream_functions);
}
