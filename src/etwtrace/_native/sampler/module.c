/* etwtrace._sampler: loads the sampler's BPF program (sampler.bpf.c,
 * compiled at build time and embedded as etw_sampler_object) with libbpf,
 * attaches it to a cpu-clock perf event on every CPU, and hands its sample
 * records to Python as bytes.
 *
 *   s = Sampler(rate_hz[, frame_walk])
 *                             load and attach; OSError when not permitted.
 *                             frame_walk: "bpf_loop" (kernel 5.17+: the
 *                             verifier checks one frame's step, not all
 *                             96), "unrolled", or None for bpf_loop where
 *                             the kernel has it; s.frame_walk says which
 *   s.add(pid, config)        sample process pid (config: struct etw_target)
 *   s.remove(pid)
 *   s.drain([stacks, id, processes, room])
 *                             the records received since, as a list of bytes:
 *                             each the header of struct etw_sample, its
 *                             native_count addresses, then its python_count
 *                             frames; with stacks (hash -> encoded stack),
 *                             samples of a stack in it come as chunks of
 *                             events instead (chunks.h), and so do new
 *                             stacks of a process in processes (pid ->
 *                             (frame_kinds, native_kinds)) whose frames are
 *                             all known: spliced (splice.h) and added to
 *                             stacks while it holds fewer than room; a
 *                             sample with a copy of its stack is unwound
 *                             first, by the process's Unwinder (the third
 *                             item of its entry in processes) or to its
 *                             leaf alone without one
 *   splice(record, frame_kinds, native_kinds)
 *                             a record's stack, encoded, or None when one of
 *                             its frames is not in the dicts (splice.h)
 *   s.dropped()               samples lost to a full ring buffer
 *   s.fileno()                readable when the ring buffer fills (poll it)
 *   s.close()
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <linux/perf_event.h>
#include <malloc.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include <linux/types.h>

#include "chunks.h"
#include "sampler.h"
#include "splice.h"
#include "unwinder_type.h"
#include "sampler_object.h"     /* etw_sampler_object[], made by setup.py */

typedef struct {
    PyObject_HEAD
    struct bpf_object *obj;
    struct bpf_link **links;
    int n_links;
    int targets_fd;
    int dropped_fd;
    const char *frame_walk;     /* "bpf_loop" or "unrolled": the program loaded */
    struct ring_buffer *ring;
    PyObject *pending;          /* list the ring buffer callback appends to */
    /* During drain(stacks, event_id, processes, room): the encoded stacks
     * by hash, how many it may hold, each process's frame kinds
     * (splice.h), and the chunk being filled with the events of samples
     * of those stacks. */
    PyObject *stacks;
    PyObject *processes;
    Py_ssize_t stack_room;
    uint32_t event_id;
    etw_chunk *chunk;
    struct etw_sample unwound;  /* a sample whose native frames were unwound here */
} Sampler;

/* Writes a sample with the stack `payload` into the chunk of events. */
static int
write_sample(Sampler *self, const struct etw_sample *s, PyObject *payload)
{
    if (!PyBytes_Check(payload) || PyBytes_GET_SIZE(payload) == 0) {
        return 0;       /* a stack with nothing to show: not written */
    }
    return etw_chunk_add(self->chunk, self->pending, self->event_id, s->pid, s->tid, s->time,
                         PyBytes_AS_STRING(payload), (size_t)PyBytes_GET_SIZE(payload));
}

/* Whether a whole record (not a known stack's head) holds the frames its
 * header counts: the program sends only the Python frames it took
 * (sampler.bpf.c). */
static int
frames_fit(const struct etw_sample *s, size_t size)
{
    return s->native_count <= ETW_SAMPLER_MAX_NATIVE + 1
           && s->python_count <= ETW_SAMPLER_MAX_PYTHON
           && size >= offsetof(struct etw_sample, python)
                      + s->python_count * sizeof s->python[0];
}

/* A sample user space need not see goes into a chunk of events: one of a
 * stack it has encoded (its hash is in `stacks`), or a new stack whose
 * frames it has all looked up (spliced here, then added to `stacks` while
 * there is room).  Returns 1 if it did, 0 if Python must see the sample,
 * -1 on failure. */
static int
add_encoded(Sampler *self, const struct etw_sample *s)
{
    if (self->stacks == NULL) {
        return 0;
    }
    PyObject *key = PyLong_FromUnsignedLongLong(s->stack_hash);
    if (key == NULL) {
        return -1;
    }
    PyObject *payload = PyDict_GetItemWithError(self->stacks, key);     /* borrowed */
    if (payload != NULL) {
        Py_DECREF(key);
        return write_sample(self, s, payload) < 0 ? -1 : 1;
    }
    if (PyErr_Occurred()) {
        Py_DECREF(key);
        return -1;
    }
    int done = 0;
    PyObject *kinds = NULL;
    /* (A stack run by an asyncio task gets its task frames from Python.) */
    if (!(s->flags & ETW_SAMPLE_KNOWN_STACK) && s->tasks[0].task == 0 && self->processes != NULL
        && PyDict_GET_SIZE(self->stacks) < self->stack_room) {
        PyObject *pid = PyLong_FromUnsignedLong(s->pid);
        kinds = pid == NULL ? NULL : PyDict_GetItemWithError(self->processes, pid);
        Py_XDECREF(pid);
        if (kinds == NULL && PyErr_Occurred()) {
            done = -1;
        }
    }
    if (kinds != NULL && PyTuple_Check(kinds) && PyTuple_GET_SIZE(kinds) >= 2) {
        PyObject *spliced = NULL;
        done = etw_splice((const unsigned char *)s->native, s->native_count,
                          (const unsigned char *)s->python, s->python_count, sizeof s->python[0],
                          PyTuple_GET_ITEM(kinds, 0), PyTuple_GET_ITEM(kinds, 1), &spliced);
        if (done > 0 && (PyDict_SetItem(self->stacks, key, spliced) < 0
                         || write_sample(self, s, spliced) < 0)) {
            done = -1;
        }
        Py_XDECREF(spliced);
    }
    Py_DECREF(key);
    return done;
}

/* The unwinder of process `pid`: the third item of its entry in the
 * drain's processes, or NULL (borrowed). */
static PyObject *
unwinder_of(Sampler *self, uint32_t pid)
{
    if (self->processes == NULL) {
        return NULL;
    }
    PyObject *key = PyLong_FromUnsignedLong(pid);
    PyObject *entry = key == NULL ? NULL : PyDict_GetItemWithError(self->processes, key);
    Py_XDECREF(key);
    if (entry == NULL || !PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) < 3) {
        PyErr_Clear();
        return NULL;
    }
    return PyTuple_GET_ITEM(entry, 2);
}

/* A sample that carries a copy of its stack (ETW_SAMPLE_STACK_COPY) as
 * an ordinary whole record: its native frames unwound from the copy, its
 * hash made of the program's (which covers its Python frames) and of
 * them.  NULL for a malformed record. */
static const struct etw_sample *
unwind_sample(Sampler *self, const struct etw_sample *s, size_t size)
{
    if (size < offsetof(struct etw_sample, python) || s->python_count > ETW_SAMPLER_MAX_PYTHON) {
        return NULL;
    }
    size_t at = offsetof(struct etw_sample, python) + s->python_count * sizeof s->python[0];
    size_t head = offsetof(struct etw_stack_copy, bytes);
    if (size < at + head) {
        return NULL;
    }
    const struct etw_stack_copy *copy = (const void *)((const char *)s + at);
    if (copy->size > size - at - head) {
        return NULL;
    }
    struct etw_sample *u = &self->unwound;
    memcpy(u, s, offsetof(struct etw_sample, native));
    memcpy(u->python, s->python, s->python_count * sizeof s->python[0]);
    u->native_count = etw_unwinder_run(unwinder_of(self, s->pid), copy, u->native,
                                       ETW_SAMPLER_MAX_NATIVE + 1);
    u->flags &= ~ETW_SAMPLE_STACK_COPY;
    __u64 h = etw_hash_word(s->stack_hash, u->native_count);
    for (uint32_t i = 0; i < u->native_count; i++) {
        h = etw_hash_word(h, u->native[i]);
    }
    u->stack_hash = etw_hash_finish(h);
    return u;
}

/* Hands a record to Python without its unused frame slots: the header, the
 * native addresses taken, then the Python frames read; a sample whose
 * stack was sent before is its header alone (with zero counts). */
static int
on_record(void *ctx, void *data, size_t size)
{
    Sampler *self = ctx;
    const struct etw_sample *s = data;
    size_t head = offsetof(struct etw_sample, native);
    size_t natives = 0, pythons = 0;
    if (size >= head && (s->flags & ETW_SAMPLE_STACK_COPY)) {
        s = unwind_sample(self, s, size);
        if (s == NULL) {
            return 0;
        }
        size = sizeof *s;
    }
    if (size < head || (!(s->flags & ETW_SAMPLE_KNOWN_STACK) && !frames_fit(s, size))) {
        return 0;
    }
    int known = add_encoded(self, s);
    if (known != 0) {
        return known < 0 ? -1 : 0;
    }
    /* In the order received: the chunk so far goes before this record. */
    if (self->chunk != NULL && etw_chunk_flush(self->chunk, self->pending) < 0) {
        return -1;
    }
    if (!(s->flags & ETW_SAMPLE_KNOWN_STACK)) {
        natives = s->native_count * sizeof s->native[0];
        pythons = s->python_count * sizeof s->python[0];
    }
    PyObject *record = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(head + natives + pythons));
    if (record != NULL) {
        char *out = PyBytes_AS_STRING(record);
        memcpy(out, s, head);
        if (s->flags & ETW_SAMPLE_KNOWN_STACK) {
            const __u32 none[2] = {0, 0};
            memcpy(out + offsetof(struct etw_sample, native_count), none, sizeof none);
        }
        memcpy(out + head, s->native, natives);
        memcpy(out + head + natives, s->python, pythons);
    }
    if (record == NULL || PyList_Append(self->pending, record) < 0) {
        Py_XDECREF(record);
        return -1;
    }
    Py_DECREF(record);
    return 0;
}

/* The ring buffer's size for `cpus` CPUs: 2 MiB a CPU, a power of two
 * from 16 MiB to 256 MiB. */
static __u32
ring_bytes(int cpus)
{
    __u32 bytes = 16u << 20;
    while (bytes < (256u << 20) && (__u64)bytes < (__u64)cpus * (2u << 20)) {
        bytes <<= 1;
    }
    return bytes;
}

static void
sampler_release(Sampler *self)
{
    if (self->ring != NULL) {
        ring_buffer__free(self->ring);
        self->ring = NULL;
    }
    for (int i = 0; i < self->n_links; i++) {
        bpf_link__destroy(self->links[i]);
    }
    PyMem_Free(self->links);
    self->links = NULL;
    self->n_links = 0;
    if (self->obj != NULL) {
        bpf_object__close(self->obj);
        self->obj = NULL;
    }
}

static int
libbpf_quiet(enum libbpf_print_level level, const char *format, va_list args)
{
    (void)level;
    (void)format;
    (void)args;
    return 0;
}

static PyObject *
fail(Sampler *self, int err, const char *what)
{
    sampler_release(self);
    errno = err < 0 ? -err : err;
    return PyErr_Format(PyExc_OSError, "%s: %s", what, strerror(errno));
}

static int
sampler_init(Sampler *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"rate", "frame_walk", NULL};
    unsigned int rate;
    const char *walk = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "I|z:Sampler", keywords, &rate, &walk)) {
        return -1;
    }
    if (walk != NULL && strcmp(walk, "bpf_loop") != 0 && strcmp(walk, "unrolled") != 0) {
        PyErr_Format(PyExc_ValueError, "frame_walk must be 'bpf_loop', 'unrolled' or None, "
                     "not '%s'", walk);
        return -1;
    }
    sampler_release(self);
    Py_XSETREF(self->pending, PyList_New(0));
    if (self->pending == NULL) {
        return -1;
    }
    libbpf_set_print(libbpf_quiet);
    /* Records come and go in batches: without this, glibc gives the freed
     * batch back to the kernel and takes it again at the next drain, a page
     * fault per page (the sampler's own cost, measured: 1,300 faults/s). */
    mallopt(M_TRIM_THRESHOLD, 64 << 20);
    LIBBPF_OPTS(bpf_object_open_opts, opts, .object_name = "etwtrace_sampler");
    self->obj = bpf_object__open_mem(etw_sampler_object, sizeof etw_sampler_object, &opts);
    if (self->obj == NULL) {
        fail(self, errno, "cannot open the sampler's BPF object");
        return -1;
    }
    int cpus = libbpf_num_possible_cpus();
    if (cpus <= 0) {
        fail(self, cpus, "cannot count the CPUs");
        return -1;
    }
    /* Room for about a second of samples of every CPU at 999 Hz (a sample
     * takes 1 to 5 KiB; up to 21 KiB with a stack copy, at least a tenth of a
     * second then): user space is woken when it is a quarter full. */
    struct bpf_map *ring_map = bpf_object__find_map_by_name(self->obj, "samples");
    if (ring_map != NULL) {
        bpf_map__set_max_entries(ring_map, ring_bytes(cpus));
    }
    /* One of the two programs is loaded: the other is not verified. */
    if (walk == NULL) {
        walk = libbpf_probe_bpf_helper(BPF_PROG_TYPE_PERF_EVENT, BPF_FUNC_loop, NULL) == 1
               ? "bpf_loop" : "unrolled";
    }
    self->frame_walk = strcmp(walk, "bpf_loop") == 0 ? "bpf_loop" : "unrolled";
    const char *name = self->frame_walk[0] == 'b' ? "etw_sample" : "etw_sample_unrolled";
    const char *other = self->frame_walk[0] == 'b' ? "etw_sample_unrolled" : "etw_sample";
    struct bpf_program *prog = bpf_object__find_program_by_name(self->obj, name);
    struct bpf_program *unused = bpf_object__find_program_by_name(self->obj, other);
    if (prog == NULL || unused == NULL) {
        fail(self, ENOENT, "the sampler's BPF object is incomplete");
        return -1;
    }
    bpf_program__set_autoload(unused, false);
    int err = bpf_object__load(self->obj);
    if (err) {
        fail(self, err, "cannot load the sampler's BPF program");
        return -1;
    }
    self->targets_fd = bpf_object__find_map_fd_by_name(self->obj, "targets");
    self->dropped_fd = bpf_object__find_map_fd_by_name(self->obj, "dropped");
    int ring_fd = bpf_object__find_map_fd_by_name(self->obj, "samples");
    if (prog == NULL || self->targets_fd < 0 || self->dropped_fd < 0 || ring_fd < 0) {
        fail(self, ENOENT, "the sampler's BPF object is incomplete");
        return -1;
    }
    self->links = PyMem_Calloc((size_t)cpus, sizeof *self->links);
    if (self->links == NULL) {
        PyErr_NoMemory();
        sampler_release(self);
        return -1;
    }
    for (int cpu = 0; cpu < cpus; cpu++) {
        struct perf_event_attr attr;
        memset(&attr, 0, sizeof attr);
        attr.size = sizeof attr;
        attr.type = PERF_TYPE_SOFTWARE;
        attr.config = PERF_COUNT_SW_CPU_CLOCK;
        attr.freq = 1;
        attr.sample_freq = rate;
        int fd = (int)syscall(__NR_perf_event_open, &attr, -1, cpu, -1, PERF_FLAG_FD_CLOEXEC);
        if (fd < 0) {
            if (errno == ENODEV) {
                continue;       /* a possible CPU that is not online */
            }
            fail(self, errno, "perf_event_open");
            return -1;
        }
        struct bpf_link *link = bpf_program__attach_perf_event(prog, fd);
        if (link == NULL) {
            int e = errno;
            close(fd);
            fail(self, e, "cannot attach the sampler to a perf event");
            return -1;
        }
        self->links[self->n_links++] = link;
    }
    self->ring = ring_buffer__new(ring_fd, on_record, self, NULL);
    if (self->ring == NULL) {
        fail(self, errno, "cannot open the sampler's ring buffer");
        return -1;
    }
    return 0;
}

static PyObject *
sampler_add(Sampler *self, PyObject *args)
{
    unsigned int pid;
    Py_buffer config;
    if (!PyArg_ParseTuple(args, "Iy*:add", &pid, &config)) {
        return NULL;
    }
    if (self->obj == NULL || config.len != (Py_ssize_t)sizeof(struct etw_target)) {
        PyBuffer_Release(&config);
        return PyErr_Format(PyExc_ValueError, "a closed sampler, or a config of %zd bytes "
                            "(%zu expected)", config.len, sizeof(struct etw_target));
    }
    __u32 key = pid;
    int err = bpf_map_update_elem(self->targets_fd, &key, config.buf, BPF_ANY);
    PyBuffer_Release(&config);
    if (err) {
        errno = -err > 0 ? -err : errno;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

static PyObject *
sampler_remove(Sampler *self, PyObject *args)
{
    unsigned int pid;
    if (!PyArg_ParseTuple(args, "I:remove", &pid)) {
        return NULL;
    }
    if (self->obj != NULL) {
        __u32 key = pid;
        bpf_map_delete_elem(self->targets_fd, &key);
    }
    Py_RETURN_NONE;
}

static PyObject *
sampler_drain(Sampler *self, PyObject *args)
{
    PyObject *stacks = NULL, *processes = NULL;
    unsigned int event_id = 0;
    Py_ssize_t room = 0;
    if (!PyArg_ParseTuple(args, "|O!IO!n:drain", &PyDict_Type, &stacks, &event_id,
                          &PyDict_Type, &processes, &room)) {
        return NULL;
    }
    if (self->ring == NULL) {
        return PyList_New(0);
    }
    if (stacks != NULL && self->chunk == NULL) {
        self->chunk = PyMem_Calloc(1, sizeof *self->chunk);
        if (self->chunk == NULL) {
            return PyErr_NoMemory();
        }
    }
    self->stacks = stacks;
    self->processes = processes;
    self->stack_room = room;
    self->event_id = event_id;
    int n = ring_buffer__consume(self->ring);
    self->stacks = NULL;
    self->processes = NULL;
    if (self->chunk != NULL && etw_chunk_flush(self->chunk, self->pending) < 0) {
        n = -1;
    }
    if (n < 0 && PyErr_Occurred()) {
        return NULL;
    }
    PyObject *out = self->pending;
    self->pending = PyList_New(0);
    if (self->pending == NULL) {
        self->pending = out;
        return NULL;
    }
    return out;
}

static PyObject *
sampler_fileno(Sampler *self, PyObject *Py_UNUSED(ignored))
{
    if (self->ring == NULL) {
        return PyErr_Format(PyExc_ValueError, "the sampler is closed");
    }
    return PyLong_FromLong(ring_buffer__epoll_fd(self->ring));
}

static PyObject *
sampler_dropped(Sampler *self, PyObject *Py_UNUSED(ignored))
{
    __u32 zero = 0;
    __u64 value = 0;
    if (self->obj != NULL) {
        bpf_map_lookup_elem(self->dropped_fd, &zero, &value);
    }
    return PyLong_FromUnsignedLongLong(value);
}

static PyObject *
sampler_close(Sampler *self, PyObject *Py_UNUSED(ignored))
{
    sampler_release(self);
    Py_RETURN_NONE;
}

static void
sampler_dealloc(Sampler *self)
{
    sampler_release(self);
    Py_XDECREF(self->pending);
    PyMem_Free(self->chunk);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef sampler_methods[] = {
    {"add", (PyCFunction)sampler_add, METH_VARARGS, "add(pid, config): sample pid"},
    {"remove", (PyCFunction)sampler_remove, METH_VARARGS, "remove(pid)"},
    {"drain", (PyCFunction)sampler_drain, METH_VARARGS,
     "drain([stacks, event_id, processes, room]): what was received: records as\n"
     "bytes, and with stacks (encoded stacks by hash) the samples of those stacks\n"
     "as chunks of events (pid, tid, first time, last time, count, bytes), in\n"
     "order; with processes (pid -> (frame_kinds, native_kinds)), new stacks\n"
     "whose frames are all known too, spliced and added to stacks up to room"},
    {"dropped", (PyCFunction)sampler_dropped, METH_NOARGS, "samples the ring lost"},
    {"fileno", (PyCFunction)sampler_fileno, METH_NOARGS,
     "a descriptor readable when the ring buffer is a quarter full"},
    {"close", (PyCFunction)sampler_close, METH_NOARGS, "detach and unload"},
    {NULL, NULL, 0, NULL},
};

static PyObject *
sampler_frame_walk(Sampler *self, void *Py_UNUSED(closure))
{
    if (self->frame_walk == NULL) {
        Py_RETURN_NONE;
    }
    return PyUnicode_FromString(self->frame_walk);
}

static PyGetSetDef sampler_getset[] = {
    {"frame_walk", (getter)sampler_frame_walk, NULL,
     "how the loaded program walks Python frames: 'bpf_loop' or 'unrolled'", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject SamplerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "etwtrace._sampler.Sampler",
    .tp_basicsize = sizeof(Sampler),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)sampler_init,
    .tp_dealloc = (destructor)sampler_dealloc,
    .tp_methods = sampler_methods,
    .tp_getset = sampler_getset,
    .tp_doc = "The BPF sampler: Sampler(rate_hz[, frame_walk])",
};

/* splice(record, frame_kinds, native_kinds): a record as drain() hands it
 * to Python, its stack encoded; None when a frame is not in the dicts. */
static PyObject *
module_splice(PyObject *Py_UNUSED(module), PyObject *args)
{
    Py_buffer record;
    PyObject *frame_kinds, *native_kinds;
    if (!PyArg_ParseTuple(args, "y*O!O!:splice", &record, &PyDict_Type, &frame_kinds,
                          &PyDict_Type, &native_kinds)) {
        return NULL;
    }
    const unsigned char *data = record.buf;
    size_t head = offsetof(struct etw_sample, native);
    struct etw_sample s;
    PyObject *payload = NULL;
    int done = -1;
    if ((size_t)record.len < head) {
        PyErr_SetString(PyExc_ValueError, "a sample record shorter than its header");
        goto out;
    }
    memcpy(&s, data, head);
    size_t natives = (size_t)s.native_count * sizeof s.native[0];
    size_t pythons = (size_t)s.python_count * sizeof s.python[0];
    if (s.native_count > ETW_SAMPLER_MAX_NATIVE + 1 || s.python_count > ETW_SAMPLER_MAX_PYTHON
        || (size_t)record.len != head + natives + pythons) {
        PyErr_SetString(PyExc_ValueError, "a sample record whose frame counts do not match "
                        "its size");
        goto out;
    }
    done = etw_splice(data + head, s.native_count, data + head + natives, s.python_count,
                      sizeof s.python[0], frame_kinds, native_kinds, &payload);
out:
    PyBuffer_Release(&record);
    if (done < 0) {
        return NULL;
    }
    if (done == 0) {
        Py_RETURN_NONE;
    }
    return payload;
}

static PyMethodDef module_methods[] = {
    {"splice", module_splice, METH_VARARGS,
     "splice(record, frame_kinds, native_kinds): the record's stack as a\n"
     "SampledProfile payload, or None when a frame is not in the dicts"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef sampler_module = {
    PyModuleDef_HEAD_INIT, "etwtrace._sampler",
    "Hook-free sampling of Python stacks with a BPF program.", -1, module_methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__sampler(void)
{
    if (PyType_Ready(&SamplerType) < 0 || PyType_Ready(&etw_UnwinderType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&sampler_module);
    if (m == NULL) {
        return NULL;
    }
    Py_INCREF(&SamplerType);
    Py_INCREF(&etw_UnwinderType);
    if (PyModule_AddObject(m, "Sampler", (PyObject *)&SamplerType) < 0
        || PyModule_AddObject(m, "Unwinder", (PyObject *)&etw_UnwinderType) < 0
        || PyModule_AddIntConstant(m, "STACK_BYTES", ETW_SAMPLER_STACK_BYTES) < 0
        || PyModule_AddIntConstant(m, "SAMPLE_SIZE", sizeof(struct etw_sample)) < 0
        || PyModule_AddIntConstant(m, "TARGET_SIZE", sizeof(struct etw_target)) < 0
        || PyModule_AddIntConstant(m, "MAX_PYTHON", ETW_SAMPLER_MAX_PYTHON) < 0
        || PyModule_AddIntConstant(m, "MAX_NATIVE", ETW_SAMPLER_MAX_NATIVE) < 0
        || PyModule_AddIntConstant(m, "KNOWN_STACK", ETW_SAMPLE_KNOWN_STACK) < 0
        || PyModule_AddIntConstant(m, "FRAME_ENTRY", ETW_FRAME_ENTRY) < 0
        || PyModule_AddIntConstant(m, "FRAME_NO_FUNCTION", ETW_FRAME_NO_FUNCTION) < 0
        || PyModule_AddIntConstant(m, "FRAME_ENDS_RUN", ETW_FRAME_ENDS_RUN) < 0
        || PyModule_AddIntConstant(m, "FRAME_IS_ENTRY", ETW_FRAME_IS_ENTRY) < 0
        || PyModule_AddIntConstant(m, "NO_OWNER", (long)ETW_NO_OWNER) < 0
        || PyModule_AddIntConstant(m, "NATIVE_EVAL", ETW_NATIVE_EVAL) < 0
        || PyModule_AddIntConstant(m, "NATIVE_THREAD_ROOT", ETW_NATIVE_THREAD_ROOT) < 0
        || PyModule_AddIntConstant(m, "NATIVE_EVAL_CALLER", ETW_NATIVE_EVAL_CALLER) < 0
        || PyModule_AddIntConstant(m, "NATIVE_NAMELESS", ETW_NATIVE_NAMELESS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
#ifdef Py_GIL_DISABLED
    PyUnstable_Module_SetGIL(m, Py_MOD_GIL_NOT_USED);
#endif
    return m;
}
