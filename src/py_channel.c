/* py_channel.c: the Channel type, the glue over channel.c, and
   ChannelClosedError. A Channel owns its fd from construction; descriptors
   that arrive with a frame are handed to Python as ints, and from then on the
   receiver owns them. Called by module.c through cxpy_channel_init(). */
#include "glue.h"
#include "balance.h"

#include <errno.h>

typedef struct {
    CXPY_HEAD
    cx_chan ch;
    PyObject *on_frame;        /* on_frame(type, flags, payload, fds) */
    PyObject *on_event;        /* on_event(kind, errno) for the rest */
} CxChannel;


static int channel_deliver(CxObject *obj, cx_note *note);

static PyObject *
channel_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    CxChannel *self;
    PyObject *fd_arg, *on_frame, *on_event;
    Py_ssize_t max_frame, hwm;
    int fd, r;

    /* From here fd is ours: every failure closes it (cxpy_ctor_fail). */
    if ((fd = cxpy_ctor_fd("Channel", args)) < 0) {
        return NULL;
    }
    if (cxpy_no_kwds("Channel", kwds) < 0 ||
        !PyArg_ParseTuple(args, "OOOnn:Channel", &fd_arg, &on_frame,
                          &on_event, &max_frame, &hwm) ||
        cxpy_check_owner() < 0) {
        return cxpy_ctor_fail(fd);
    }
    if (!PyCallable_Check(on_frame) || !PyCallable_Check(on_event)) {
        PyErr_SetString(PyExc_TypeError, "callbacks must be callable");
        return cxpy_ctor_fail(fd);
    }
    if (max_frame <= 0 || max_frame > UINT32_MAX || hwm < 0) {
        PyErr_SetString(PyExc_ValueError, "bad max_frame or hwm");
        return cxpy_ctor_fail(fd);
    }
    self = (CxChannel *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return cxpy_ctor_fail(fd);
    }
    cx_chan_init(&cxpy.loop, &self->ch);
    self->hp = &self->ch.h;
    self->deliver = channel_deliver;
    self->on_frame = Py_NewRef(on_frame);
    self->on_event = Py_NewRef(on_event);
    r = cx_chan_open(&self->ch, fd, (size_t)max_frame, (size_t)hwm);
    return cxpy_opened((CxObject *)self, r);
}

static int
channel_traverse(CxChannel *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->on_frame);
    Py_VISIT(self->on_event);
    return 0;
}

static int
channel_clear(CxChannel *self)
{
    Py_CLEAR(self->on_frame);
    Py_CLEAR(self->on_event);
    return 0;
}

/* send(type, flags, payload, fds=(), notify=False) -> bool */
static PyObject *
channel_send(CxChannel *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    int type, flags, notify = 0, nfds = 0, fds[CX_MAX_FDS];
    int r;

    if (cxpy_check_nargs("send", nargs, 3, 5) < 0 ||
        cxpy_check_owner() < 0) {
        return NULL;
    }
    type = cxpy_as_int(args[0]);
    flags = cxpy_as_int(args[1]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (type <= 0 || type >= CX_FRAME_TYPE_END || flags < 0 ||
        flags > UINT16_MAX) {
        PyErr_SetString(PyExc_ValueError, "bad frame type or flags");
        return NULL;
    }
    if (nargs > 3 && args[3] != Py_None) {
        PyObject *seq = PySequence_Fast(args[3], "fds must be a sequence");
        if (seq == NULL) {
            return NULL;
        }
        if (PySequence_Fast_GET_SIZE(seq) > CX_MAX_FDS) {
            Py_DECREF(seq);
            PyErr_SetString(PyExc_ValueError, "too many fds for one frame");
            return NULL;
        }
        for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
            fds[nfds] = PyObject_AsFileDescriptor(
                PySequence_Fast_GET_ITEM(seq, i));
            if (fds[nfds++] < 0) {
                Py_DECREF(seq);
                return NULL;
            }
        }
        Py_DECREF(seq);
    }
    if (nargs > 4 && (notify = PyObject_IsTrue(args[4])) < 0) {
        return NULL;
    }
    if (PyObject_GetBuffer(args[2], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    r = cx_chan_send(&self->ch, type, flags, view.buf, (size_t)view.len, fds,
                     nfds, notify);
    PyBuffer_Release(&view);
    if (r == -EPIPE) {
        PyErr_SetString(cxpy.channel_closed, "the IPC channel is closed");
        return NULL;
    }
    if (r < 0) {
        return cxpy_raise_oserror(-r);
    }
    return PyBool_FromLong(r);
}

static PyObject *
channel_close(CxChannel *self, PyObject *Py_UNUSED(ignored))
{
    if (cxpy_check_owner() < 0) {
        return NULL;
    }
    CXPY_SETTLE(self, cx_chan_close(&self->ch));
    Py_RETURN_NONE;
}

static PyObject *
channel_drain_close(CxChannel *self, PyObject *Py_UNUSED(ignored))
{
    if (cxpy_check_owner() < 0) {
        return NULL;
    }
    CXPY_SETTLE(self, cx_chan_drain_close(&self->ch));
    Py_RETURN_NONE;
}

static PyObject *
channel_mark_batches(CxChannel *self, PyObject *Py_UNUSED(ignored))
{
    if (cxpy_check_owner() < 0) {
        return NULL;
    }
    cx_chan_mark_batches(&self->ch);
    Py_RETURN_NONE;
}

static PyObject *
channel_get_closed(CxChannel *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->ch.fd < 0 || self->ch.closing);
}

static PyObject *
channel_get_queued(CxChannel *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSize_t(cx_chan_queued(&self->ch));
}

static PyObject *
channel_get_fd(CxChannel *self, void *Py_UNUSED(closure))
{
    return PyLong_FromLong(self->ch.fd);
}

static PyObject *
channel_get_messages(CxChannel *self, void *Py_UNUSED(closure))
{
    return Py_BuildValue("(KK)", (unsigned long long)self->ch.messages_in,
                         (unsigned long long)self->ch.messages_out);
}

static PyObject *
channel_get_rr_backlog(CxChannel *self, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLongLong(cx_chan_rr_backlog(&self->ch));
}

static PyObject *
channel_get_full(CxChannel *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->ch.peer_full);
}

static int
channel_set_full(CxChannel *self, PyObject *value, void *Py_UNUSED(closure))
{
    int full;

    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete full");
        return -1;
    }
    if ((full = PyObject_IsTrue(value)) < 0 || cxpy_check_owner() < 0) {
        return -1;
    }
    self->ch.peer_full = full;
    return 0;
}

static PyMethodDef channel_methods[] = {
    {"send", (PyCFunction)(void (*)(void))channel_send, METH_FASTCALL,
     "send(type, flags, payload, fds=(), notify=False) -> bool: False once "
     "the queue is over its high-water mark."},
    {"close", (PyCFunction)channel_close, METH_NOARGS,
     "Closes once the write queue has drained."},
    {"drain_close", (PyCFunction)channel_drain_close, METH_NOARGS,
     "The peer is gone: reads what it left, then closes."},
    {"mark_batches", (PyCFunction)channel_mark_batches, METH_NOARGS,
     "Marks each batch of descriptors sent from now on, so that a peer out "
     "of descriptors loses only the frames whose descriptors were dropped "
     "(without, a peer marks once this end has)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef channel_getset[] = {
    {"closed", (getter)channel_get_closed, NULL, NULL, NULL},
    {"queued", (getter)channel_get_queued, NULL, NULL, NULL},
    {"fd", (getter)channel_get_fd, NULL, NULL, NULL},
    {"messages", (getter)channel_get_messages, NULL,
     "(received, sent): the user messages this channel carried.", NULL},
    {"rr_backlog", (getter)channel_get_rr_backlog, NULL,
     "SCHED_RR: the connections handed to the peer that it may not have "
     "taken yet (an upper bound, exact at 0).", NULL},
    {"full", (getter)channel_get_full, (setter)channel_set_full,
     "SCHED_RR: the peer has no descriptor for a connection; balancers "
     "route around it.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot channel_slots[] = {
    {Py_tp_new, channel_new},
    {Py_tp_dealloc, cxpy_dealloc},
    {Py_tp_traverse, channel_traverse},
    {Py_tp_clear, channel_clear},
    {Py_tp_methods, channel_methods},
    {Py_tp_getset, channel_getset},
    {Py_tp_doc, "Channel(fd, on_frame, on_event, max_frame, hwm)"},
    {0, NULL},
};

static PyType_Spec channel_spec = {
    .name = "cluster_ext._core.Channel",
    .basicsize = sizeof(CxChannel),
    .flags = CXPY_TPFLAGS,
    .slots = channel_slots,
};

int
cxpy_channel_init(PyObject *mod)
{
    cxpy.channel_type = (PyTypeObject *)cxpy_new_type(mod, &channel_spec);
    if (cxpy.channel_type == NULL) {
        return -1;
    }
    cxpy.channel_closed = PyErr_NewExceptionWithDoc(
        "cluster_ext.ChannelClosedError",
        "The IPC channel is closed.", PyExc_BrokenPipeError, NULL);
    if (cxpy.channel_closed == NULL) {
        return -1;
    }
    return PyModule_AddObjectRef(mod, "ChannelClosedError",
                                 cxpy.channel_closed);
}

static int
channel_deliver(CxObject *obj, cx_note *note)
{
    CxChannel *self = (CxChannel *)obj;
    PyObject *args[4];

    if (self->on_frame == NULL) {
        return 0;
    }
    if (note->kind != CX_NOTE_FRAME) {
        args[0] = PyLong_FromLong(note->kind);
        args[1] = PyLong_FromLong(note->a);
        return cxpy_call_steal(self->on_event, args, 2);
    }
    args[0] = PyLong_FromLong(note->a);
    args[1] = PyLong_FromLong(note->b);
    args[2] = PyBytes_FromStringAndSize(note->data, (Py_ssize_t)note->len);
    args[3] = cxpy_take_fds(note);
    return cxpy_call_steal(self->on_frame, args, 4);
}
