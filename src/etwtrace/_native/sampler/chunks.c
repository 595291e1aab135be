/* Chunks of SampledProfile events for samples of known stacks (chunks.h). */
#include "chunks.h"

#include <string.h>

#define EXTENDED_ID 31          /* the compact header's escape (trace_format.h) */
#define EVENT_HEAD 13           /* u8 escape, u32 event id, u64 time */

static void
put_le(unsigned char *out, uint64_t value, int bytes)
{
    for (int i = 0; i < bytes; i++) {
        out[i] = (unsigned char)(value >> (8 * i));
    }
}

int
etw_chunk_flush(etw_chunk *chunk, PyObject *out)
{
    if (chunk->count == 0) {
        return 0;
    }
    PyObject *item = Py_BuildValue("(IIKKIy#)", chunk->pid, chunk->tid,
                                   (unsigned long long)chunk->first,
                                   (unsigned long long)chunk->last, chunk->count,
                                   (const char *)chunk->data, (Py_ssize_t)chunk->used);
    chunk->count = 0;
    chunk->used = 0;
    if (item == NULL) {
        return -1;
    }
    int err = PyList_Append(out, item);
    Py_DECREF(item);
    return err;
}

int
etw_chunk_add(etw_chunk *chunk, PyObject *out, uint32_t event_id, uint32_t pid,
              uint32_t tid, uint64_t time, const char *payload, size_t size)
{
    size_t need = EVENT_HEAD + size;
    if (need > sizeof chunk->data) {
        PyErr_SetString(PyExc_ValueError, "a sample's stack is larger than a chunk");
        return -1;
    }
    if (chunk->count > 0 && (chunk->pid != pid || chunk->tid != tid
                             || chunk->used + need > sizeof chunk->data)) {
        if (etw_chunk_flush(chunk, out) < 0) {
            return -1;
        }
    }
    if (chunk->count == 0) {
        chunk->pid = pid;
        chunk->tid = tid;
        chunk->first = time;
    }
    unsigned char *at = chunk->data + chunk->used;
    at[0] = EXTENDED_ID;
    put_le(at + 1, event_id, 4);
    put_le(at + 5, time, 8);
    memcpy(at + EVENT_HEAD, payload, size);
    chunk->used += need;
    chunk->last = time;
    chunk->count++;
    return 0;
}
