/* The registry of C callables for instrumented mode: each builtin function
 * or method (one PyMethodDef) gets a FunctionID and a PythonFunction event
 * (SourceFile = its module, Name = its qualname, IsPythonCode = 0). */
#ifndef ETWTRACE_C_FUNCTIONS_H
#define ETWTRACE_C_FUNCTIONS_H

#include "compat.h"
#include "events.h"

/* The FunctionID of C callable `callable` in this session, emitting its
 * PythonFunction event the first time; 0 if it is not a builtin function or
 * memory is exhausted.  Attached to the interpreter (any thread in
 * free-threaded builds: lookups take no lock). */
uint32_t etw_c_function_id(PyObject *callable, EtwThread *t);

/* Writes on `t` the PythonFunction event of every C callable registered so
 * far (etw_events_restart's rundown). */
void etw_c_functions_rundown(EtwThread *t);

#endif
