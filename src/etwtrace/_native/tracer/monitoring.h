/* C callables for instrumented mode through sys.monitoring (3.12+), the
 * alternative to a per-thread profile function: only CALL, C_RETURN and
 * C_RAISE events, for every thread of the interpreter at once. */
#ifndef ETWTRACE_MONITORING_H
#define ETWTRACE_MONITORING_H

#include "compat.h"

/* Called holding the GIL: enter with the builtin function being called
 * (NULL when it could not be made: the call is then not traced but still
 * pairs with its exit), exit when that call returns or raises. */
typedef void (*EtwCEnter)(PyObject *cfunction);
typedef void (*EtwCExit)(void);

/* 0 when observing, 1 when sys.monitoring is not available (before 3.12, or
 * no free tool id), -1 with an exception set. */
int etw_monitoring_start(EtwCEnter enter, EtwCExit exit);

/* Stops observing and frees the tool id.  Safe when not started. */
void etw_monitoring_stop(void);

#endif
