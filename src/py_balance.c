/* py_balance.c: the Balancer type, the glue over balance.c. It owns the
   listening fd and holds a reference to every Channel registered with it, so
   that the engine's borrowed pointers stay valid. It makes no notes. Called
   by module.c through cxpy_balancer_init(). */
#include "glue.h"
#include "balance.h"

typedef struct {
    CXPY_HEAD
    cx_balancer b;
    PyObject *channels;        /* list: keeps the registered Channels alive */
} CxBalancer;

static int
balancer_deliver(CxObject *obj, cx_note *note)
{
    CX_UNUSED(obj);
    CX_UNUSED(note);
    return 0;
}

static PyObject *
balancer_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    CxBalancer *self;
    PyObject *fd_arg;
    int fd, key, r;

    /* From here fd is ours: every failure closes it (cxpy_ctor_fail). */
    if ((fd = cxpy_ctor_fd("Balancer", args)) < 0) {
        return NULL;
    }
    if (cxpy_no_kwds("Balancer", kwds) < 0 ||
        !PyArg_ParseTuple(args, "Oi:Balancer", &fd_arg, &key) ||
        cxpy_check_owner() < 0) {
        return cxpy_ctor_fail(fd);
    }
    if (key < 0 || key > UINT16_MAX) {
        PyErr_SetString(PyExc_ValueError, "bad key");
        return cxpy_ctor_fail(fd);
    }
    self = (CxBalancer *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return cxpy_ctor_fail(fd);
    }
    cx_balancer_init(&cxpy.loop, &self->b);
    self->hp = &self->b.l.h;
    self->deliver = balancer_deliver;
    self->channels = PyList_New(0);
    if (self->channels == NULL) {
        Py_DECREF(self);        /* forgets an engine struct with no fd */
        return cxpy_ctor_fail(fd);
    }
    r = cx_balancer_open(&self->b, fd, key);
    return cxpy_opened((CxObject *)self, r);
}

static int
balancer_traverse(CxBalancer *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->channels);
    return 0;
}

static int
balancer_clear(CxBalancer *self)
{
    Py_CLEAR(self->channels);
    return 0;
}

static PyObject *
balancer_add(CxBalancer *self, PyObject *arg)
{
    cx_chan *ch;
    int r;

    if (cxpy_check_owner() < 0 || (ch = cxpy_channel_arg(arg)) == NULL ||
        PyList_Append(self->channels, arg) < 0) {
        return NULL;
    }
    r = cx_balancer_add(&self->b, ch);
    if (r < 0) {
        PySequence_DelItem(self->channels, PyList_GET_SIZE(self->channels) - 1);
        return cxpy_raise_oserror(-r);
    }
    Py_RETURN_NONE;
}

static PyObject *
balancer_remove(CxBalancer *self, PyObject *arg)
{
    cx_chan *ch;
    Py_ssize_t i;

    if (cxpy_check_owner() < 0 || (ch = cxpy_channel_arg(arg)) == NULL) {
        return NULL;
    }
    if (!cx_balancer_remove(&self->b, ch)) {
        Py_RETURN_FALSE;
    }
    for (i = 0; i < PyList_GET_SIZE(self->channels); i++) {
        if (PyList_GET_ITEM(self->channels, i) == arg) {
            if (PySequence_DelItem(self->channels, i) < 0) {
                return NULL;
            }
            break;
        }
    }
    Py_RETURN_TRUE;
}

static PyObject *
balancer_route(CxBalancer *self, PyObject *arg)
{
    int fd = cxpy_as_int(arg);

    if ((fd == -1 && PyErr_Occurred()) || cxpy_check_owner() < 0) {
        return NULL;
    }
    cx_balancer_route(&self->b, fd);    /* owns fd from here */
    Py_RETURN_NONE;
}

static PyObject *
balancer_close(CxBalancer *self, PyObject *Py_UNUSED(ignored))
{
    if (cxpy_check_owner() < 0) {
        return NULL;
    }
    CXPY_SETTLE(self, cx_balancer_close(&self->b));
    PyList_SetSlice(self->channels, 0, PyList_GET_SIZE(self->channels), NULL);
    Py_RETURN_NONE;
}

static PyObject *
balancer_stop_accepting(CxBalancer *self, PyObject *refuse)
{
    int on = PyObject_IsTrue(refuse);

    if (on < 0 || cxpy_check_owner() < 0) {
        return NULL;
    }
    if (on && self->b.l.fd >= 0) {
        (void)cx_listen_refuse_new(self->b.l.fd);
    }
    return PyLong_FromLong(cx_listener_accept_queued(&self->b.l));
}

static PyMethodDef balancer_methods[] = {
    {"stop_accepting", (PyCFunction)balancer_stop_accepting, METH_O,
     "stop_accepting(refuse): a stop: what the queue holds is accepted and "
     "routed (with refuse, no new handshake begins first); returns how "
     "many. close() follows."},
    {"add", (PyCFunction)balancer_add, METH_O, "Routes to this Channel too."},
    {"remove", (PyCFunction)balancer_remove, METH_O,
     "Stops routing to this Channel; True if it was registered."},
    {"route", (PyCFunction)balancer_route, METH_O,
     "Hands a connection fd (owned from here) to the next worker."},
    {"close", (PyCFunction)balancer_close, METH_NOARGS,
     "Closes the listening fd."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot balancer_slots[] = {
    {Py_tp_new, balancer_new},
    {Py_tp_dealloc, cxpy_dealloc},
    {Py_tp_traverse, balancer_traverse},
    {Py_tp_clear, balancer_clear},
    {Py_tp_methods, balancer_methods},
    {Py_tp_doc, "Balancer(listen_fd, key): SCHED_RR in C."},
    {0, NULL},
};

static PyType_Spec balancer_spec = {
    .name = "cluster_ext._core.Balancer",
    .basicsize = sizeof(CxBalancer),
    .flags = CXPY_TPFLAGS,
    .slots = balancer_slots,
};

int
cxpy_balancer_init(PyObject *mod)
{
    cxpy.balancer_type = (PyTypeObject *)cxpy_new_type(mod, &balancer_spec);
    return cxpy.balancer_type == NULL ? -1 : 0;
}
