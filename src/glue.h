/* glue.h: what the glue files share: module.c (the module), glue.c (the
   helpers declared here), and one py_*.c per part: py_loop.c, py_handle.c,
   py_spawn.c, py_channel.c, py_stream.c, py_balance.c. Only the glue includes
   Python.h; it turns engine notes into calls and errnos into exceptions.
   Calls run one way: module.c -> py_*.c -> glue.c -> the engine. */
#ifndef CX_GLUE_H
#define CX_GLUE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "channel.h"
#include "loop.h"
#include "policy.h"

/* The head every glue object shares: the engine handle it wraps and whether
   the loop holds a strong reference to it (while linked or noted). */
typedef struct CxObject CxObject;
/* Turns one note into a Python call; returns -1 when the loop must stop. */
typedef int (*cxpy_deliver_fn)(CxObject *obj, cx_note *note);

#define CXPY_HEAD             \
    PyObject_HEAD             \
    cx_handle *hp;            \
    cxpy_deliver_fn deliver;  \
    int pinned;

struct CxObject {
    CXPY_HEAD
};

#define CXPY_TPFLAGS \
    (Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE)

/* Runs an engine call that may unlink the object's handle, then settles
   the pin (the object stays alive across the call). */
#define CXPY_SETTLE(self, call)                         \
    do {                                                \
        Py_INCREF(self);                                \
        call;                                           \
        cxpy_pin_update((CxObject *)(self));            \
        Py_DECREF(self);                                \
    } while (0)

typedef struct {
    cx_loop loop;              /* one per process: epoll is process-wide */
    cx_policy policy;          /* how the loop waits (its wait hooks) */
    PyTypeObject *handle_type, *channel_type, *stream_type, *listener_type,
        *balancer_type;
    PyObject *channel_closed;  /* ChannelClosedError */
    PyObject *wake_cb;
    PyObject *exc_type, *exc_value, *exc_tb;   /* parked by a callback */
    unsigned long owner;       /* the loop's thread */
    int running, stop;
} cx_state;

extern cx_state cxpy;

int cxpy_check_owner(void);
PyObject *cxpy_raise_oserror(int err);
/* None for r >= 0, else the OSError of -r. */
PyObject *cxpy_none_or_oserror(int r);
/* -1 with a TypeError unless min <= nargs <= max (public-API stand-in for
   CPython's private _PyArg_CheckPositional). */
int cxpy_check_nargs(const char *name, Py_ssize_t nargs, Py_ssize_t min,
                     Py_ssize_t max);
/* obj as a C int; -1 with an exception set on error (PyLong_AsInt is
   public only from 3.13). */
int cxpy_as_int(PyObject *obj);
/* The longest wait the loop takes: Node's TIMEOUT_MAX, 2**31-1 ms (24.8
   days), which is also the most epoll_wait's int milliseconds hold. One
   bound for every delay and timeout, in C and (as _core.MAX_SECONDS) in
   Python. */
#define CXPY_MAX_MS 2147483647
#define CXPY_MAX_SECONDS (CXPY_MAX_MS / 1000.0)
/* obj as seconds the loop can wait, in *out: 0 or -1 with an exception,
   TypeError for what is not a number and ValueError, naming what, for NaN,
   an infinity, a negative or more than CXPY_MAX_SECONDS (converting those
   to an integer is undefined behaviour). */
int cxpy_seconds(const char *what, PyObject *obj, double *out);
/* -1 with a TypeError when a constructor got keyword arguments. */
int cxpy_no_kwds(const char *type_name, PyObject *kwds);
/* The descriptor a constructor is handed, its first positional argument;
   -1 with an exception when there is none to own: no such argument or not
   an int (a bool is not one: True would be stdout), TypeError; out of
   range, ValueError. Once it has returned an fd, the constructor owns it on
   every path: it hands it to the engine's open, or ends in
   cxpy_ctor_fail(). */
int cxpy_ctor_fd(const char *type_name, PyObject *args);
/* A constructor failing before the engine's open took fd: closes fd unless
   it is stdio (0-2, which the engine never owns: a stdio number is left
   open rather than closed by accident). Returns NULL; the exception set
   stays set. */
PyObject *cxpy_ctor_fail(int fd);
void cxpy_pin_update(CxObject *obj);
/* Calls fn; on an exception parks it (the first one) and stops the loop.
   Returns -1 when the loop must stop. */
int cxpy_call(PyObject *fn, PyObject *const *args, size_t nargs);

/* Parks the exception being raised (for errors outside a callback, such as
   building its arguments) and stops the loop; returns -1. */
int cxpy_park_current(void);
/* Calls fn(*args) and drops the references to args (NULLs mean failure). */
int cxpy_call_steal(PyObject *fn, PyObject **args, size_t nargs);
PyObject *cxpy_new_type(PyObject *mod, PyType_Spec *spec);
/* The end of every constructor: r is what the engine's open returned. Links
   the object to its handle and pins it; returns it, or NULL (OSError). */
PyObject *cxpy_opened(CxObject *self, int r);
/* The shared dealloc slot of the glue types. */
void cxpy_dealloc(PyObject *self);
/* The ref(True|False) method of the glue types: whether the object keeps
   run() going (Node's ref()/unref()). */
PyObject *cxpy_ref(PyObject *self, PyObject *arg);
/* A tuple of the note's fds as ints; from then on Python owns them. */
PyObject *cxpy_take_fds(cx_note *note);

/* The engine struct of a Channel object, or NULL with a TypeError. */
cx_chan *cxpy_channel_arg(PyObject *obj);

/* Each part adds its types and functions to the module; 0 or -1. */
int cxpy_loop_init(PyObject *mod);     /* first: claims the process */
int cxpy_handle_init(PyObject *mod);
int cxpy_spawn_init(PyObject *mod);
int cxpy_channel_init(PyObject *mod);
int cxpy_stream_init(PyObject *mod);
int cxpy_balancer_init(PyObject *mod);

#endif
