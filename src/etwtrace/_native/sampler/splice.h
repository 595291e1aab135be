/* A sample's stack as the capture writes it: the native addresses, leaf
 * first, with each evaluator call's Python frames put where that call's
 * native frame is (see splice.c), encoded as a SampledProfile payload
 * (u32 count, then count u64 addresses, as trace/ctfwrite.sample_payload).
 *
 * What each frame is comes from two dicts user space fills (sampled/sampler.py):
 *   frame_kinds:  a Python frame's record bytes (struct etw_python_frame)
 *                 -> its synthetic address (with ETW_FRAME_ENDS_RUN when
 *                 its evaluator call has no frames above it), or
 *                 ETW_FRAME_ENTRY, or ETW_FRAME_NO_FUNCTION
 *   native_kinds: a native address -> ETW_NATIVE_* bits
 * A frame missing from them is user space's to look up first. */
#ifndef ETWTRACE_SAMPLER_SPLICE_H
#define ETWTRACE_SAMPLER_SPLICE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>

#define ETW_FRAME_ENTRY 0           /* an evaluator's entry frame: a call starts */
#define ETW_FRAME_NO_FUNCTION 1     /* a frame that runs no code object */
#define ETW_FRAME_ENDS_RUN 2        /* added to an address: the first frame of
                                     * an evaluator call (3.11's is_entry) */

#define ETW_NATIVE_EVAL 1           /* _PyEval_EvalFrameDefault */
#define ETW_NATIVE_THREAD_ROOT 2    /* where a complete stack of a thread starts */
#define ETW_NATIVE_EVAL_CALLER 4    /* calls into the evaluator */
#define ETW_NATIVE_NAMELESS 8       /* no symbol, in the interpreter's own file */

/* Sets *payload to a new bytes object and returns 1; returns 0 when a
 * frame is missing from the dicts, -1 with an exception set on failure.
 * `python` points at n_python records of `frame_bytes` bytes each. */
int etw_splice(const unsigned char *native, uint32_t n_native,
               const unsigned char *python, uint32_t n_python, size_t frame_bytes,
               PyObject *frame_kinds, PyObject *native_kinds, PyObject **payload);

#endif
