/* Samples whose stack user space already encoded, turned into their
 * stream's events without a Python object per sample: consecutive samples
 * of one thread become one chunk of SampledProfile events (extended header
 * and payload, as trace/ctfwrite.py writes them), handed to Python as
 * (pid, tid, first time, last time, count, bytes). */
#ifndef ETWTRACE_SAMPLER_CHUNKS_H
#define ETWTRACE_SAMPLER_CHUNKS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#define ETW_CHUNK_BYTES 32768   /* fits in an empty 64 KiB packet */

typedef struct {
    uint32_t pid, tid;
    uint64_t first, last;
    uint32_t count;
    size_t used;
    unsigned char data[ETW_CHUNK_BYTES];
} etw_chunk;

/* Appends one event (at `time`, with `payload`) to the chunk, first
 * handing the chunk to `out` when the event is of another thread or does
 * not fit.  Returns -1 with an exception set on failure. */
int etw_chunk_add(etw_chunk *chunk, PyObject *out, uint32_t event_id, uint32_t pid,
                  uint32_t tid, uint64_t time, const char *payload, size_t size);

/* Hands the chunk to `out` (as a tuple) if it holds events; empties it. */
int etw_chunk_flush(etw_chunk *chunk, PyObject *out);

#endif
