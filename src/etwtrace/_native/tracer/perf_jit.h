/* Describing trampolines to perf: the perf map (/tmp/perf-PID.map, read by
 * `perf report`/`perf script` directly) and the jitdump (/tmp/jit-PID.dump,
 * read by `perf inject --jit`, which also carries unwind info for DWARF
 * unwinding through the trampolines).
 *
 * Both live in /tmp because perf looks for them there: perf's libdw
 * unwinder only unwinds through the ELF images `perf inject` writes next to
 * the jitdump when they are /tmp/jitted-*.so.  They are created
 * exclusively (never through a symlink, never another user's file), and
 * every write first checks that the descriptor still is the file created:
 * a program that closes descriptors and opens its own files does not get
 * perf records in them. */
#ifndef ETWTRACE_PERF_JIT_H
#define ETWTRACE_PERF_JIT_H

#include <stddef.h>

/* Opens this process's perf map and jitdump.  Safe to call again; a forked
 * child opens its own at its first description.  Returns 0, or -1 when
 * neither file could be opened (a one-line warning says why). */
int etw_perf_jit_open(void);

/* Names the code at [addr, addr + size) in both files. */
void etw_perf_jit_describe(const void *addr, size_t size, const char *name);

/* The jitdump path of this process, or NULL (for --info and captures). */
const char *etw_perf_jit_dump_path(void);

/* With `remove` true, both files are deleted when the process exits (for
 * processes traced through the .pth that no profiler asked to keep). */
void etw_perf_jit_remove_at_exit(int remove);

#endif
