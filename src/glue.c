/* glue.c: what every glue file shares (glue.h): the process's one cx_state,
   owner checks, errno -> OSError, argument helpers, calling into Python and
   parking the first exception a callback raises, pinning, descriptor taking,
   the shared dealloc and type creation. Called by the py_*.c files; calls
   only the engine, never a py_*.c file. */
#include "glue.h"

#include <errno.h>

cx_state cxpy;

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
cxpy_seconds(const char *what, PyObject *obj, double *out)
{
    double s = PyFloat_AsDouble(obj);

    if (s == -1.0 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError)) {
            return -1;          /* not a number: TypeError */
        }
        PyErr_Clear();          /* an int past a double: absurd */
        s = Py_HUGE_VAL;
    }
    if (!(s >= 0.0 && s <= CXPY_MAX_SECONDS)) {         /* NaN too */
        PyErr_Format(PyExc_ValueError,
                     "%s: seconds must be finite, 0 or more and at most "
                     "2147483.647 (2**31-1 ms), not %R", what, obj);
        return -1;
    }
    *out = s;
    return 0;
}

int
cxpy_ctor_fd(const char *type_name, PyObject *args)
{
    PyObject *obj;
    long fd;

    if (PyTuple_GET_SIZE(args) < 1) {
        PyErr_Format(PyExc_TypeError, "%s() takes an fd first (0 given)",
                     type_name);
        return -1;
    }
    obj = PyTuple_GET_ITEM(args, 0);
    if (!PyLong_Check(obj) || PyBool_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s(): fd must be an int, not %.100s",
                     type_name, Py_TYPE(obj)->tp_name);
        return -1;
    }
    fd = PyLong_AsLong(obj);    /* -1 with OverflowError past a long */
    if (fd < 0 || fd > INT_MAX) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s(): bad fd %R", type_name, obj);
        return -1;
    }
    return (int)fd;
}

PyObject *
cxpy_ctor_fail(int fd)
{
    if (fd > 2) {
        cx_close(&fd);          /* keeps errno; the exception is untouched */
    }
    return NULL;
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
cxpy_ref(PyObject *self, PyObject *arg)
{
    int on = PyObject_IsTrue(arg);

    if (on < 0 || cxpy_check_owner() < 0) {
        return NULL;
    }
    cx_handle_ref(((CxObject *)self)->hp, on);
    Py_RETURN_NONE;
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

cx_chan *
cxpy_channel_arg(PyObject *obj)
{
    if (!Py_IS_TYPE(obj, cxpy.channel_type)) {
        PyErr_SetString(PyExc_TypeError, "expected a Channel");
        return NULL;
    }
    return cx_container_of(((CxObject *)obj)->hp, cx_chan, h);
}
