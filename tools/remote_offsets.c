/* Prints the offsets the sampler reads in a CPython that has no
 * _Py_DebugOffsets (3.11), as _pyremote.FIXED_OFFSETS lists them, from
 * that version's own headers (internal ones included):
 *
 *   gcc -I"$(python3.11 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')" \
 *       tools/remote_offsets.c -o /tmp/remote_offsets && /tmp/remote_offsets
 *
 * tests/test_sampled_311.py compiles and runs it to check the table. */
#define Py_BUILD_CORE 1
#include <Python.h>
#include <stddef.h>
#include <stdio.h>

#include "internal/pycore_code.h"
#include "internal/pycore_frame.h"
#include "internal/pycore_interp.h"
#include "internal/pycore_runtime.h"

#define SHOW(section, field, type, member) \
    printf("%s %s %zu\n", section, field, offsetof(type, member))

int
main(void)
{
    SHOW("runtime_state", "interpreters_head", _PyRuntimeState, interpreters.head);
    SHOW("interpreter_state", "threads_head", PyInterpreterState, threads.head);
    SHOW("thread_state", "next", PyThreadState, next);
    SHOW("thread_state", "native_thread_id", PyThreadState, native_thread_id);
    SHOW("thread_state", "cframe", PyThreadState, cframe);
    SHOW("cframe", "current_frame", _PyCFrame, current_frame);
    SHOW("interpreter_frame", "previous", _PyInterpreterFrame, previous);
    SHOW("interpreter_frame", "executable", _PyInterpreterFrame, f_code);
    SHOW("interpreter_frame", "instr_ptr", _PyInterpreterFrame, prev_instr);
    SHOW("interpreter_frame", "is_entry", _PyInterpreterFrame, is_entry);
    SHOW("interpreter_frame", "owner", _PyInterpreterFrame, owner);
    SHOW("code_object", "filename", PyCodeObject, co_filename);
    SHOW("code_object", "name", PyCodeObject, co_name);
    SHOW("code_object", "qualname", PyCodeObject, co_qualname);
    SHOW("code_object", "linetable", PyCodeObject, co_linetable);
    SHOW("code_object", "firstlineno", PyCodeObject, co_firstlineno);
    SHOW("code_object", "co_code_adaptive", PyCodeObject, co_code_adaptive);
    SHOW("pyobject", "ob_type", PyObject, ob_type);
    SHOW("unicode_object", "state", PyASCIIObject, state);
    SHOW("unicode_object", "length", PyASCIIObject, length);
    printf("unicode_object asciiobject_size %zu\n", sizeof(PyASCIIObject));
    printf("unicode_object compact_size %zu\n", sizeof(PyCompactUnicodeObject));
    SHOW("bytes_object", "ob_size", PyBytesObject, ob_base.ob_size);
    SHOW("bytes_object", "ob_sval", PyBytesObject, ob_sval);
    return 0;
}
