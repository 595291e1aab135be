/* Native stacks of a process built without frame pointers, unwound from
 * the copy of the top of its user stack each sample carries (struct
 * etw_stack_copy): the call frame information (.eh_frame, found through
 * .eh_frame_hdr) of each mapped file says, for every instruction, where
 * the caller's frame and return address are, as perf --call-graph dwarf
 * and debuggers do.  Pure C, no Python; the machine's registers are
 * arch.h's.  On aarch64 a leaf's return address is only in x30, which the
 * copy does not carry: a sample whose leaf has not saved it yet ends
 * there (unsupported row), as on x86-64 a row without a saved return
 * address does.
 *
 * A file is added once with its mapped range and load bias; what the CFI
 * says at an address is cached (most samples land on addresses seen
 * before), so a sample costs a few lookups per frame. */
#ifndef ETWTRACE_SAMPLER_UNWIND_H
#define ETWTRACE_SAMPLER_UNWIND_H

#include <stddef.h>
#include <stdint.h>

typedef struct etw_unwinder etw_unwinder;

/* Why an unwinding ended (etw_unwind's *end). */
enum etw_unwind_end {
    ETW_UNWIND_COMPLETE,        /* at the thread's first frame (its CFI says so) */
    ETW_UNWIND_NO_FILE,         /* an address in no file added (JIT code, a
                                 * library mapped since), not on frame pointers */
    ETW_UNWIND_NO_CFI,          /* an address its file has no CFI for */
    ETW_UNWIND_OUTSIDE_COPY,    /* a frame beyond the stack copied */
    ETW_UNWIND_UNSUPPORTED,     /* a CFI rule it does not evaluate */
    ETW_UNWIND_FULL,            /* as many frames as it was given room for */
};

etw_unwinder *etw_unwinder_new(void);
void etw_unwinder_free(etw_unwinder *u);

/* Adds the file at `path`, mapped at [start, end) with load bias `bias`
 * (address in the process = address as linked + bias).  Returns 0, or -1
 * with errno set when it cannot be read or is no 64-bit ELF file; a file
 * without .eh_frame_hdr is added and has no CFI. */
int etw_unwinder_add(etw_unwinder *u, uint64_t start, uint64_t end, uint64_t bias,
                     const char *path);

/* Forgets every file (before the process's maps are added anew). */
void etw_unwinder_clear(etw_unwinder *u);

/* Unwinds from the registers ip, sp, bp (and lr, aarch64's x30: the
 * leaf's return address when it has not saved it) and the `size` bytes of
 * stack copied from sp: writes up to `room` addresses, leaf first (the leaf's
 * ip, then return addresses, as the kernel's stack walk gives them), and
 * returns how many; *end says why it stopped. */
uint32_t etw_unwind(etw_unwinder *u, uint64_t ip, uint64_t sp, uint64_t bp, uint64_t lr,
                    const uint8_t *stack, size_t size, uint64_t *out, uint32_t room,
                    enum etw_unwind_end *end);

#endif
