/* py_spawn.c: starting workers: spawn() (fork + exec, spawn.c) with argv and
   envp built here, before the fork, so that the child allocates nothing;
   socketpair() for a worker's channel; die_with_parent() and set_ids() for a
   child forked without exec, which takes on the same plan as an exec'd one;
   instances() for a fork(target=) worker's exit; inherits_orphans() for the
   primary's PID 1 duty, become_subreaper() for a preload template's
   workers, which are its grandchildren. The caller owns every
   descriptor these return. Called by module.c through cxpy_spawn_init(). */
#include "glue.h"
#include "spawn.h"

#include <errno.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

/* A NULL-terminated char ** over an iterable of str, bytes or path-like
   items (fs encoding), whose strings *keep owns. The caller's sequence is
   left as it is: the items are read from a tuple copy, which an item's
   __fspath__ cannot resize under the loop either. */
static char **
cstring_array(PyObject *seq, PyObject **keep)
{
    PyObject *items = PySequence_Tuple(seq);
    Py_ssize_t n;
    char **out = NULL;

    if (items == NULL) {
        return NULL;
    }
    n = PyTuple_GET_SIZE(items);
    *keep = PyTuple_New(n);
    if (*keep == NULL) {
        goto fail;
    }
    out = PyMem_Calloc((size_t)n + 1, sizeof(char *));
    if (out == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *enc;
        if (!PyUnicode_FSConverter(PyTuple_GET_ITEM(items, i), &enc)) {
            goto fail;
        }
        PyTuple_SET_ITEM(*keep, i, enc);
        out[i] = PyBytes_AS_STRING(enc);
    }
    Py_DECREF(items);
    return out;

fail:
    Py_DECREF(items);
    PyMem_Free(out);
    return NULL;
}

/* groups: None (n = -1: kept) or a sequence of gids, into a PyMem array
   that the caller frees. */
static int
gid_array(PyObject *groups, gid_t **out, int *n)
{
    PyObject *items;
    Py_ssize_t len;

    *out = NULL;
    *n = -1;
    if (groups == Py_None) {
        return 0;
    }
    items = PySequence_Tuple(groups);
    if (items == NULL) {
        return -1;
    }
    len = PyTuple_GET_SIZE(items);
    if (len > 65536) {
        PyErr_SetString(PyExc_ValueError, "too many supplementary groups");
        goto fail;
    }
    *out = PyMem_Calloc((size_t)len + 1, sizeof(gid_t));
    if (*out == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    for (Py_ssize_t i = 0; i < len; i++) {
        int g = cxpy_as_int(PyTuple_GET_ITEM(items, i));
        if (g < 0) {
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_ValueError, "a gid must be >= 0");
            }
            goto fail;
        }
        (*out)[i] = (gid_t)g;
    }
    Py_DECREF(items);
    *n = (int)len;
    return 0;

fail:
    Py_DECREF(items);
    PyMem_Free(*out);
    *out = NULL;
    return -1;
}

static PyObject *
py_spawn(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    cx_spawn_plan plan = {0};
    PyObject *argv_keep = NULL, *envp_keep = NULL, *path = NULL,
             *cwd = NULL, *result = NULL;
    char **argv = NULL, **envp = NULL;
    gid_t *groups = NULL;
    pid_t pid;

    CX_UNUSED(mod);
    /* spawn(path, argv, envp, cwd, chan_fd, (fd0, fd1, fd2), groups, gid,
       uid[, keep_fd]) */
    if (cxpy_check_nargs("spawn", nargs, 9, 10) < 0 ||
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
    plan.gid = cxpy_as_int(args[7]);
    plan.uid = cxpy_as_int(args[8]);
    plan.keep_fd = nargs > 9 ? cxpy_as_int(args[9]) : -1;
    if (PyErr_Occurred() || gid_array(args[6], &groups, &plan.ngroups) < 0) {
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
    if (plan.keep_fd < -1 || (plan.keep_fd >= 0 && plan.keep_fd < 3)) {
        PyErr_SetString(PyExc_ValueError, "keep_fd must be >= 3, or -1");
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
    plan.groups = groups;
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
    PyMem_Free(groups);
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

static PyObject *
py_inherits_orphans(PyObject *mod, PyObject *Py_UNUSED(ignored))
{
    int r = cx_spawn_inherits_orphans();

    CX_UNUSED(mod);
    return r < 0 ? cxpy_raise_oserror(-r) : PyBool_FromLong(r);
}

static PyObject *
py_become_subreaper(PyObject *mod, PyObject *Py_UNUSED(ignored))
{
    CX_UNUSED(mod);
    return cxpy_none_or_oserror(cx_spawn_become_subreaper());
}

static PyObject *
py_set_ids(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    gid_t *groups = NULL;
    int ngroups, gid, uid, r;

    CX_UNUSED(mod);
    if (cxpy_check_nargs("set_ids", nargs, 3, 3) < 0) {
        return NULL;
    }
    gid = cxpy_as_int(args[1]);
    uid = cxpy_as_int(args[2]);
    if (PyErr_Occurred() || gid_array(args[0], &groups, &ngroups) < 0) {
        return NULL;
    }
    r = cx_set_ids(groups, ngroups, gid, uid);
    PyMem_Free(groups);
    return cxpy_none_or_oserror(r);
}

/* The items of a list that are instances of cls: a worker's exit looks for
   its open files among every object gc knows, and a Python loop over them
   was the bulk of a small worker's exit (measured: README's performance
   table). */
static PyObject *
py_instances(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *found;

    CX_UNUSED(mod);
    if (cxpy_check_nargs("instances", nargs, 2, 2) < 0) {
        return NULL;
    }
    if (!PyList_Check(args[0]) || !PyType_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "instances(list, type)");
        return NULL;
    }
    found = PyList_New(0);
    for (Py_ssize_t i = 0; found != NULL && i < PyList_GET_SIZE(args[0]); i++) {
        PyObject *item = PyList_GET_ITEM(args[0], i);
        if (PyObject_TypeCheck(item, (PyTypeObject *)args[1]) &&
            PyList_Append(found, item) < 0) {
            Py_CLEAR(found);
        }
    }
    return found;
}

/* The items of a list whose end the program could observe: objects whose
   type has a finalizer (tp_finalize: __del__, files, generators; tp_del),
   and weak references (of reftype: _weakref.ref) with a callback. An
   exec'd worker that finds none but its stdio at its exit has nothing left
   for the interpreter's teardown to run. */
static PyObject *
py_finalizable(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *found, *objects, *callback_name;
    PyTypeObject *reftype, *last_type = NULL;
    int last_has_finalizer = 0;

    CX_UNUSED(mod);
    if (cxpy_check_nargs("finalizable", nargs, 2, 2) < 0) {
        return NULL;
    }
    objects = args[0];
    reftype = (PyTypeObject *)args[1];
    if (!PyList_Check(objects) || !PyType_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "finalizable(list, weakref type)");
        return NULL;
    }
    /* A worker's exit waits on this pass over every object: the name is
       made once, and a type's slots are read once per run of its objects. */
    callback_name = PyUnicode_InternFromString("__callback__");
    found = callback_name != NULL ? PyList_New(0) : NULL;
    for (Py_ssize_t i = 0; found != NULL && i < PyList_GET_SIZE(objects); i++) {
        PyObject *item = PyList_GET_ITEM(objects, i), *callback = NULL;
        PyTypeObject *tp = Py_TYPE(item);
        int wanted;

        if (tp != last_type) {
            last_type = tp;
            last_has_finalizer = PyType_GetSlot(tp, Py_tp_finalize) != NULL ||
                                 PyType_GetSlot(tp, Py_tp_del) != NULL;
        }
        wanted = last_has_finalizer;
        if (!wanted && PyObject_TypeCheck(item, reftype)) {
            callback = PyObject_GetAttr(item, callback_name);
            if (callback == NULL) {
                Py_CLEAR(found);
                break;
            }
            wanted = callback != Py_None;
            Py_DECREF(callback);
        }
        if (wanted && PyList_Append(found, item) < 0) {
            Py_CLEAR(found);
        }
    }
    Py_XDECREF(callback_name);
    return found;
}

/* The end of a process whose exit has nothing left to run: C's stdio
   buffers (an extension's printf) are flushed, as exit() would. */
static PyObject *
py_exit_now(PyObject *mod, PyObject *arg)
{
    int status = cxpy_as_int(arg);

    CX_UNUSED(mod);
    if (status == -1 && PyErr_Occurred()) {
        return NULL;
    }
    fflush(NULL);
    _exit(status);
}

static PyMethodDef spawn_functions[] = {
    {"spawn", (PyCFunction)(void (*)(void))py_spawn, METH_FASTCALL,
     "spawn(path, argv, envp, cwd, chan_fd, stdio, groups, gid, uid, "
     "keep_fd=-1) -> pid"},
    {"socketpair", py_socketpair, METH_NOARGS,
     "socketpair() -> (fd, fd): a channel's two ends, close-on-exec, >= 3."},
    {"die_with_parent", py_die_with_parent, METH_O, NULL},
    {"inherits_orphans", py_inherits_orphans, METH_NOARGS,
     "inherits_orphans() -> bool: PID 1, or a child subreaper."},
    {"become_subreaper", py_become_subreaper, METH_NOARGS,
     "become_subreaper() -> None: PR_SET_CHILD_SUBREAPER."},
    {"set_ids", (PyCFunction)(void (*)(void))py_set_ids, METH_FASTCALL,
     "set_ids(groups, gid, uid) -> None: cx_set_ids() (groups None: kept; "
     "-1: kept)."},
    {"finalizable", (PyCFunction)(void (*)(void))py_finalizable, METH_FASTCALL,
     "finalizable(list, reftype) -> list: the objects whose end could be "
     "observed."},
    {"exit_now", py_exit_now, METH_O,
     "exit_now(status): flushes C's stdio and ends the process (_exit)."},
    {"instances", (PyCFunction)(void (*)(void))py_instances, METH_FASTCALL,
     "instances(list, type) -> list: the items that are instances of type."},
    {NULL, NULL, 0, NULL},
};

int
cxpy_spawn_init(PyObject *mod)
{
    return PyModule_AddFunctions(mod, spawn_functions);
}
