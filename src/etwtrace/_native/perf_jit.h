/* Describing trampolines to perf: the perf map (/tmp/perf-PID.map, read by
 * `perf report`/`perf script` directly) and the jitdump (jit-PID.dump, read
 * by `perf inject --jit`, which also carries unwind info for DWARF
 * unwinding through the trampolines). */
#ifndef ETWTRACE_PERF_JIT_H
#define ETWTRACE_PERF_JIT_H

#include <stddef.h>

/* Opens this process's perf map and jitdump (the jitdump in `jitdump_dir`,
 * or /tmp when NULL).  Safe to call again; reopens after a fork.
 * Returns 0, or -1 when neither file could be opened. */
int etw_perf_jit_open(const char *jitdump_dir);

/* Names the code at [addr, addr + size) in both files. */
void etw_perf_jit_describe(const void *addr, size_t size, const char *name);

/* The jitdump path of this process, or NULL (for --info and captures). */
const char *etw_perf_jit_dump_path(void);

#endif
