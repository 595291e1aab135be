/* The tracer: installs the PEP 523 frame-evaluation hook that routes every
 * traced Python function through its trampoline (stack mode), or writes a
 * push and a pop around it (instrumented mode; with `c_calls`, a profile
 * function or sys.monitoring adds C callables). */
#ifndef ETWTRACE_TRACER_H
#define ETWTRACE_TRACER_H

#include "functions.h"

enum { ETW_MODE_OFF = 0, ETW_MODE_STACK = 1, ETW_MODE_INSTRUMENTED = 2 };

/* Enables tracing in `mode` for the current interpreter.  In instrumented
 * mode, `c_calls` adds C callables and `call_times` 0 records pushes and
 * pops without reading the clock.  With no `capture_dir` and `sessions`,
 * the process records into the recording sessions it finds (session.h).  `filter` holds strong references for as
 * long as tracing is on.  Returns 0, or -1 with an exception set (a tracer
 * already enabled, a capture dir not writable). */
int etw_tracer_enable(int mode, int c_calls, int call_times, const char *capture_dir,
                      int sessions, PyObject *ignored_files, PyObject *include_prefixes);

/* Disables tracing and writes out every pending event.  Safe when off. */
void etw_tracer_disable(void);

int etw_tracer_mode(void);

/* For marks: the calling thread's writer state while tracing, else NULL. */
EtwThread *etw_tracer_thread(void);

#endif
