/* glue.h: what module.c and py_channel.c share. Only the glue includes
   Python.h; it turns engine notes into calls and errnos into exceptions. */
#ifndef CX_GLUE_H
#define CX_GLUE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "channel.h"
#include "loop.h"

/* The head every glue object shares: the engine handle it wraps and whether
   the loop holds a strong reference to it (while linked or noted). */
#define CXPY_HEAD     \
    PyObject_HEAD     \
    cx_handle *hp;    \
    int pinned;

typedef struct {
    CXPY_HEAD
} CxObject;

typedef struct {
    cx_loop loop;              /* one per process: epoll is process-wide */
    PyTypeObject *handle_type, *channel_type;
    PyObject *channel_closed;  /* ChannelClosedError */
    PyObject *wake_cb;
    PyObject *exc_type, *exc_value, *exc_tb;   /* parked by a callback */
    unsigned long owner;       /* the loop's thread */
    int running, stop;
} cx_state;

extern cx_state cxpy;

int cxpy_check_owner(void);
PyObject *cxpy_raise_oserror(int err);
void cxpy_pin_update(CxObject *obj);
/* Calls fn; on an exception parks it (the first one) and stops the loop.
   Returns -1 when the loop must stop. */
int cxpy_call(PyObject *fn, PyObject *const *args, size_t nargs);

int cxpy_channel_init_type(PyObject *mod);
int cxpy_channel_deliver(CxObject *obj, cx_note *note);

#endif
