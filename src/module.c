/* module.c: the extension module cluster_ext._core: its definition, its
   constants, and an exec slot that sets up each part of the glue (the loop
   first: it claims the process). Everything else is in py_*.c. */
#include "glue.h"

static int
add_constants(PyObject *mod)
{
    static const struct {
        const char *name;
        long value;
    } constants[] = {
        {"FRAME_USER", CX_FRAME_USER},
        {"FRAME_ONLINE", CX_FRAME_ONLINE},
        {"FRAME_DISCONNECT", CX_FRAME_DISCONNECT},
        {"FRAME_EXITED_AFTER_DISCONNECT", CX_FRAME_EXITED_AFTER_DISCONNECT},
        {"FRAME_PING", CX_FRAME_PING},
        {"FRAME_PONG", CX_FRAME_PONG},
        {"FRAME_QUERY_SERVER", CX_FRAME_QUERY_SERVER},
        {"FRAME_SERVER_REPLY", CX_FRAME_SERVER_REPLY},
        {"FRAME_LISTENING", CX_FRAME_LISTENING},
        {"FRAME_SERVER_CLOSE", CX_FRAME_SERVER_CLOSE},
        {"FRAME_NEWCONN", CX_FRAME_NEWCONN},
        {"FRAME_NEWCONN_ACK", CX_FRAME_NEWCONN_ACK},
        {"FRAME_BOOT_FAILURE", CX_FRAME_BOOT_FAILURE},
        {"FRAME_STATS", CX_FRAME_STATS},
        {"FRAME_READY", CX_FRAME_READY},
        {"FRAME_FULL", CX_FRAME_FULL},
        {"FRAME_ROOM", CX_FRAME_ROOM},
        {"FRAME_LOST", CX_FRAME_LOST},
        {"EVENT_WRITTEN", CX_NOTE_WRITTEN},
        {"EVENT_DRAIN", CX_NOTE_DRAIN},
        {"EVENT_ERROR", CX_NOTE_ERROR},
        {"EVENT_CLOSE", CX_NOTE_CLOSE},
        {"EVENT_END", CX_NOTE_END},
    };

    PyObject *max_seconds;
    int r;

    for (size_t i = 0; i < sizeof(constants) / sizeof(constants[0]); i++) {
        if (PyModule_AddIntConstant(mod, constants[i].name,
                                    constants[i].value) < 0) {
            return -1;
        }
    }
    max_seconds = PyFloat_FromDouble(CXPY_MAX_SECONDS);
    if (max_seconds == NULL) {
        return -1;
    }
    r = PyModule_AddObjectRef(mod, "MAX_SECONDS", max_seconds);
    Py_DECREF(max_seconds);
    return r;
}

static int
core_exec(PyObject *mod)
{
    if (cxpy_loop_init(mod) < 0 ||
        cxpy_handle_init(mod) < 0 ||
        cxpy_spawn_init(mod) < 0 ||
        cxpy_channel_init(mod) < 0 ||
        cxpy_stream_init(mod) < 0 ||
        cxpy_balancer_init(mod) < 0 ||
        add_constants(mod) < 0) {
        return -1;
    }
    return 0;
}

static PyModuleDef_Slot core_slots[] = {
    {Py_mod_exec, core_exec},
    {0, NULL},
};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "cluster_ext._core",
    .m_doc = "The native engine of cluster_ext: loop, channels, spawning.",
    .m_size = 0,
    .m_slots = core_slots,
};

PyMODINIT_FUNC PyInit__core(void);

PyMODINIT_FUNC
PyInit__core(void)
{
    return PyModuleDef_Init(&core_module);
}
