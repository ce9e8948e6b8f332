/* resilience._speedups: the per-call bookkeeping of the duration histogram, compiled.
 *
 * A policy's outermost closure times each call with metrics on. In Python that is two
 * calls of time.monotonic() and ~20 bytecodes of arithmetic and counting per call; here
 * it is two method calls: ``t0 = tally.start()`` before the call and
 * ``tally.record(t0)`` after a success. Both read the clock time.monotonic() reads, so
 * a start taken here and a failure timed in Python with time.monotonic() agree.
 *
 * A Tally keeps two counters for the scrape to read: ``quick``, the successes shorter
 * than ``bound`` seconds, and ``seconds``, the sum of every duration recorded. A longer
 * success is handed to ``slower(d)``, which buckets it (its duration is already in
 * ``seconds``). The counters are doubles updated while the GIL is held; the package does
 * not load this module on a free-threaded build.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <time.h>

typedef struct {
    PyObject_HEAD
    double quick;
    double seconds;
    double bound;
    PyObject *slower;
} Tally;

/* time.monotonic(), in seconds; -1.0 with an exception set if the clock fails. */
static double
monotonic(void)
{
#if defined(__linux__)
    /* The clock time.monotonic() reads on Linux, without the checks of the general API. */
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1.0;
    }
    return (double)((long long)ts.tv_sec * 1000000000LL + ts.tv_nsec) / 1e9;
#elif PY_VERSION_HEX >= 0x030D0000
    PyTime_t t;
    if (PyTime_Monotonic(&t) < 0) {
        return -1.0;
    }
    return PyTime_AsSecondsDouble(t);
#else
    return _PyTime_AsSecondsDouble(_PyTime_GetMonotonicClock());
#endif
}

static PyObject *
Tally_start(Tally *self, PyObject *Py_UNUSED(ignored))
{
    double now = monotonic();
    if (now == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    return PyFloat_FromDouble(now);
}

static PyObject *
Tally_record(Tally *self, PyObject *t0)
{
    double start;
    if (PyFloat_CheckExact(t0)) {
        start = PyFloat_AS_DOUBLE(t0);
    }
    else {
        start = PyFloat_AsDouble(t0);
        if (start == -1.0 && PyErr_Occurred()) {
            return NULL;
        }
    }
    double now = monotonic();
    if (now == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    double d = now - start;
    self->seconds += d;
    if (d < self->bound) {
        self->quick += 1.0;
        Py_RETURN_NONE;
    }
    PyObject *seconds = PyFloat_FromDouble(d);
    if (seconds == NULL) {
        return NULL;
    }
    PyObject *result = PyObject_CallOneArg(self->slower, seconds);
    Py_DECREF(seconds);
    if (result == NULL) {
        return NULL;
    }
    Py_DECREF(result);
    Py_RETURN_NONE;
}

static int
Tally_init(Tally *self, PyObject *args, PyObject *kwds)
{
    static char *keywords[] = {"bound", "slower", NULL};
    double bound;
    PyObject *slower;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "dO:Tally", keywords, &bound, &slower)) {
        return -1;
    }
    if (!(bound >= 0.0)) {
        PyErr_Format(PyExc_ValueError, "bound must be >= 0 seconds, got %R", PyTuple_GET_ITEM(args, 0));
        return -1;
    }
    if (!PyCallable_Check(slower)) {
        PyErr_SetString(PyExc_TypeError, "slower must be callable");
        return -1;
    }
    self->bound = bound;
    Py_INCREF(slower);
    Py_XSETREF(self->slower, slower);
    return 0;
}

static int
Tally_traverse(Tally *self, visitproc visit, void *arg)
{
    Py_VISIT(self->slower);
    return 0;
}

static int
Tally_clear(Tally *self)
{
    Py_CLEAR(self->slower);
    return 0;
}

static void
Tally_dealloc(Tally *self)
{
    PyObject_GC_UnTrack(self);
    Tally_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Tally_methods[] = {
    {"start", (PyCFunction)Tally_start, METH_NOARGS,
     "start()\n--\n\nThe clock of time.monotonic(), in seconds: a call's start."},
    {"record", (PyCFunction)Tally_record, METH_O,
     "record(t0)\n--\n\nRecord a success that started at t0 (from start())."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Tally_members[] = {
    {"quick", T_DOUBLE, offsetof(Tally, quick), READONLY,
     "Successes recorded shorter than bound."},
    {"seconds", T_DOUBLE, offsetof(Tally, seconds), READONLY,
     "The sum of every duration recorded, in seconds."},
    {"bound", T_DOUBLE, offsetof(Tally, bound), READONLY,
     "Seconds: a success at least this long goes to slower(d)."},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject TallyType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "resilience._speedups.Tally",
    .tp_doc = PyDoc_STR("Tally(bound, slower)\n--\n\n"
                        "Counts and sums the durations of successful calls."),
    .tp_basicsize = sizeof(Tally),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Tally_init,
    .tp_dealloc = (destructor)Tally_dealloc,
    .tp_traverse = (traverseproc)Tally_traverse,
    .tp_clear = (inquiry)Tally_clear,
    .tp_methods = Tally_methods,
    .tp_members = Tally_members,
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "resilience._speedups",
    .m_doc = "Compiled per-call bookkeeping of resilience's call-duration histogram.",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    if (PyType_Ready(&TallyType) < 0) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&speedups_module);
    if (module == NULL) {
        return NULL;
    }
    Py_INCREF(&TallyType);
    if (PyModule_AddObject(module, "Tally", (PyObject *)&TallyType) < 0) {
        Py_DECREF(&TallyType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
