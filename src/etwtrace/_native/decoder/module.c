/* etwtrace._ctfdecode: the report's decoder for the built-in recorder's
 * CTF streams (one file per thread; layout in recorder.c).
 *
 * fold(path, timeline=False) reads a stream once and folds its
 * PythonFunctionPush/Pop events into a call tree in C: one node per distinct
 * call path with calls, inclusive and exclusive ns.  With timeline, it also
 * gives every open and close of a call as packed 16-byte records
 * (ts, node, kind), properly nested whatever the pops were: written to the
 * file descriptor `timeline_fd` as they come (so memory does not grow
 * with the trace), or returned as bytes when it is -1.  With start/end, only
 * calls made in [start, end) count and only time inside it is added (the
 * report's --from/--to).  Memory is bounded by
 * the number of distinct paths and the deepest stack, not by the number of
 * events.  The few other events (functions, threads, marks, stack samples)
 * are returned decoded, for Python to order and name.
 *
 * stacks_at(path, timestamps) replays the pushes and pops and returns, for
 * each timestamp (ascending), the FunctionIDs open on the thread then.
 *
 * Every length is checked against its packet: any byte sequence either
 * decodes, ends as truncated, or raises ValueError.  Pops are matched as
 * the tests' CallStacks (tests/callstacks.py) matches them.
 *
 * In parts: cursor.c (the cursor over packets), fold.c (the fold into
 * calls, stacks_at), reader.c (Event, Reader, Merge for open_trace), and
 * this file, the module.
 */
#include "fold.h"
#include "reader.h"

/* The event table of trace_format.h, for the Python side: a tuple of
 * (id, ctf_name, name, opcode, ((field, type), ...)). */
static PyObject *
event_table(void)
{
    static const char *type_names[] = {
#define ETW_TYPE_NAME(name, ctf, size) #name,
        ETW_FIELD_TYPES(ETW_TYPE_NAME)
#undef ETW_TYPE_NAME
    };
    PyObject *table = PyTuple_New((Py_ssize_t)ETW_N_EVENTS);
    for (size_t i = 0; table != NULL && i < ETW_N_EVENTS; i++) {
        const EtwEventDecl *e = &etw_event_decls[i];
        PyObject *fields = PyTuple_New(e->n_fields);
        for (uint32_t f = 0; fields != NULL && f < e->n_fields; f++) {
            PyObject *field = Py_BuildValue("(ss)", e->fields[f].name,
                                            type_names[e->fields[f].type]);
            if (field == NULL) {
                Py_CLEAR(fields);
                break;
            }
            PyTuple_SET_ITEM(fields, f, field);
        }
        PyObject *item = fields == NULL ? NULL
            : Py_BuildValue("(IsszN)", e->id, e->ctf_name, e->name, e->opcode, fields);
        if (item == NULL) {
            Py_CLEAR(table);
            break;
        }
        PyTuple_SET_ITEM(table, (Py_ssize_t)i, item);
    }
    return table;
}

static PyMethodDef methods[] = {
    {"fold", (PyCFunction)(void (*)(void))fold, METH_VARARGS | METH_KEYWORDS,
     "fold(path, timeline=False, version=FORMAT_VERSION, length=-1, tail=None,\n"
     "     timeline_fd=-1, start=0, end=2**64-1, fd=-1, partial=False) -> dict: a stream's\n"
     "call tree and its other events; the first `length` bytes of the file open at `fd`\n"
     "(else of `path`; all when negative), then the packets in `tail` (those still in its\n"
     "ring).  With timeline, its records go to timeline_fd (then 'timeline' is their count,\n"
     "first and last time) or come back as bytes.  Damage raises ValueError, or with\n"
     "partial ends the stream: 'error' says what it was (else None)."},
    {"configure", configure, METH_O,
     "configure(error_class): the exception class corrupt traces raise (etwtrace.TraceError)."},
    {"scan_packet", scan_packet, METH_VARARGS,
     "scan_packet(packet, version=FORMAT_VERSION) -> (content bytes, last timestamp) of a\n"
     "packet left unfinished."},
    {"stacks_at", (PyCFunction)(void (*)(void))stacks_at, METH_VARARGS | METH_KEYWORDS,
     "stacks_at(path, timestamps, version=FORMAT_VERSION, length=-1, tail=None, fd=-1) ->\n"
     "list of FunctionID tuples open at each time (of the file open at `fd`, else `path`)."},
    {NULL, NULL, 0, NULL},
};

static int
module_exec(PyObject *module)
{
    PyObject *table = event_table();
    if (table == NULL || PyModule_AddObject(module, "EVENTS", table) < 0) {
        Py_XDECREF(table);
        return -1;
    }
    if (PyType_Ready(&EventType) < 0 || PyType_Ready(&ReaderType) < 0 ||
        PyType_Ready(&MergeType) < 0 ||
        PyModule_AddObject(module, "Event", Py_NewRef((PyObject *)&EventType)) < 0 ||
        PyModule_AddObject(module, "Reader", Py_NewRef((PyObject *)&ReaderType)) < 0 ||
        PyModule_AddObject(module, "Merge", Py_NewRef((PyObject *)&MergeType)) < 0 ||
        make_names() < 0) {
        return -1;
    }
    if (PyModule_AddIntConstant(module, "FORMAT_VERSION", ETW_FORMAT_VERSION) < 0 ||
        PyModule_AddIntConstant(module, "PACKET_HEAD_V1", ETW_PACKET_HEAD_V1) < 0 ||
        PyModule_AddIntConstant(module, "PACKET_HEAD_V2", ETW_PACKET_HEAD_V2) < 0 ||
        PyModule_AddIntConstant(module, "PACKET_BYTES", ETW_PACKET_BYTES) < 0) {
        return -1;
    }
    return 0;
}

static struct PyModuleDef_Slot slots[] = {
    {Py_mod_exec, module_exec},
    /* Its types are static and its names interned once per process. */
    ETW_MOD_INTERPRETERS_NOT_SUPPORTED_SLOT
    ETW_MOD_GIL_SLOT
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "etwtrace._ctfdecode",
    "The report's C decoder for the built-in recorder's CTF streams.",
    0, methods, slots, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__ctfdecode(void)
{
    return PyModuleDef_Init(&module_def);
}
