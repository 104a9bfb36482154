/* py_spawn.c: starting workers: spawn() (fork + exec, spawn.c) with argv and
   envp built here, before the fork, so that the child allocates nothing;
   socketpair() for a worker's channel; die_with_parent() for a child forked
   without exec; fork_sibling() for the worker template; instances() for a
   worker's fast exit. The caller owns every descriptor these return. Called
   by module.c through cxpy_spawn_init(). */
#include "glue.h"
#include "spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
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

/* The items of a list that are instances of cls: a worker's exit looks for
   its open files among every object gc knows, and a Python loop over them
   costs 0.7 ms of the 1.4 ms a small worker takes to end. */
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

/* os.fork(), except that the child's parent is this process's parent
   (CLONE_PARENT): the worker template forks workers that the primary waits
   for, signals and outlives as if it had forked them. Only for a process of
   one thread, as the template is: glibc's fork() handlers are not run, and
   with no other thread no lock of libc's can be held at the fork. Python's
   own fork hooks are (os.register_at_fork: random reseeds, threading). */
static PyObject *
py_fork_sibling(PyObject *mod, PyObject *Py_UNUSED(ignored))
{
    long pid;
    int err;

    CX_UNUSED(mod);
    PyOS_BeforeFork();
    /* Only flags are given: the order of the other arguments differs
       between architectures, and zero means the same in every place. */
    pid = syscall(SYS_clone, (unsigned long)(CLONE_PARENT | SIGCHLD), 0, 0, 0, 0);
    err = errno;
    if (pid == 0) {
        PyOS_AfterFork_Child();
        return PyLong_FromLong(0);
    }
    PyOS_AfterFork_Parent();
    if (pid < 0) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromLong(pid);
}

/* Rewrites this process's argument area (/proc/self/stat's arg_start and
   arg_end: what /proc/PID/cmdline and ps show) with a NUL-separated argv,
   cut to fit and padded with NULs: a worker forked from the template shows
   the command an exec would have given it. The area is the process's own,
   writable memory, from its start on; setproctitle writes it the same way. */
static PyObject *
py_set_cmdline(PyObject *mod, PyObject *arg)
{
    char stat[2048], *p;
    unsigned long long start = 0, end = 0;
    ssize_t n;
    int fd, field;

    CX_UNUSED(mod);
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "set_cmdline(bytes)");
        return NULL;
    }
    fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    n = read(fd, stat, sizeof(stat) - 1);
    close(fd);
    if (n <= 0) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    stat[n] = '\0';
    /* After the command name, which may hold spaces and parentheses, the
       fields from the third on: arg_start is the 48th, arg_end the 49th. */
    p = strrchr(stat, ')');
    for (field = 2; p != NULL && field < 48; field++) {
        p = strchr(p + 1, ' ');
    }
    if (p == NULL || sscanf(p, " %llu %llu", &start, &end) != 2 || end <= start) {
        PyErr_SetString(PyExc_OSError, "no argument area in /proc/self/stat");
        return NULL;
    }
    {
        char *area = (char *)(uintptr_t)start;
        size_t cap = (size_t)(end - start);
        size_t len = (size_t)PyBytes_GET_SIZE(arg);

        if (len > cap) {
            len = cap;
        }
        memcpy(area, PyBytes_AS_STRING(arg), len);
        memset(area + len, 0, cap - len);
        area[cap - 1] = '\0';      /* ends in NUL: no setproctitle reading */
    }
    Py_RETURN_NONE;
}

static PyMethodDef spawn_functions[] = {
    {"spawn", (PyCFunction)(void (*)(void))py_spawn, METH_FASTCALL,
     "spawn(path, argv, envp, cwd, chan_fd, stdio, uid, gid) -> pid"},
    {"socketpair", py_socketpair, METH_NOARGS,
     "socketpair() -> (fd, fd): a channel's two ends, close-on-exec, >= 3."},
    {"die_with_parent", py_die_with_parent, METH_O, NULL},
    {"set_cmdline", py_set_cmdline, METH_O,
     "set_cmdline(b'arg0\\0arg1\\0') -> None: what /proc/PID/cmdline shows."},
    {"fork_sibling", py_fork_sibling, METH_NOARGS,
     "fork_sibling() -> pid: os.fork() whose child is this process's sibling."},
    {"instances", (PyCFunction)(void (*)(void))py_instances, METH_FASTCALL,
     "instances(list, type) -> list: the items that are instances of type."},
    {NULL, NULL, 0, NULL},
};

int
cxpy_spawn_init(PyObject *mod)
{
    return PyModule_AddFunctions(mod, spawn_functions);
}
