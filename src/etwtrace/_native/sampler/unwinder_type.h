/* etwtrace._sampler.Unwinder: a process's unwinder (unwind.h) as a
 * Python object, which user space fills with the process's files and
 * the drain uses for the samples that carry a stack copy. */
#ifndef ETWTRACE_SAMPLER_UNWINDER_TYPE_H
#define ETWTRACE_SAMPLER_UNWINDER_TYPE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <linux/types.h>

#include "unwind.h"

extern PyTypeObject etw_UnwinderType;

/* The native frames of a sample with a stack copy (sampler.h), leaf
 * first, into out[room]; counts how the unwinding ended. */
uint32_t etw_unwinder_run(PyObject *unwinder, const void *copy, __u64 *out, uint32_t room);

#endif
