/* Trampolines: one tiny copy of machine code per Python function, so that a
 * native stack shows one distinct native frame per Python frame.
 *
 * Every trampoline is the same few bytes of machine code (arch.h: 16 on
 * x86-64, 24 on aarch64), at a 128-byte stride: it calls its fourth
 * argument with its first three, keeping a frame pointer (a frame record
 * on aarch64) so that frame-pointer unwinders walk through it too.
 *
 * Trampolines live in arenas that are filled, made executable and have their
 * unwind info (eh_frame) registered with libgcc's unwinder once, when the
 * arena is created; trampolines are then handed out one by one and never
 * reused, so an address names one function for the life of the process.
 */
#ifndef ETWTRACE_TRAMPOLINE_H
#define ETWTRACE_TRAMPOLINE_H

#include "arch.h"

#include <stddef.h>
#include <stdint.h>

/* Distance between two trampolines.  `perf inject --jit` maps each jitted
 * image over [code, code + ALIGN_8(code size) + unwind info size): with
 * trampolines closer than that, a later one's map cuts into an earlier
 * one's, and perf can no longer unwind through the earlier trampoline
 * (samples stop there).  128 bytes leave room for the unwind info
 * (build_jit_unwind checks it). */
#define ETW_TRAMPOLINE_STRIDE 128

/* A new trampoline, or NULL when executable memory cannot be had. */
void *etw_trampoline_new(void);

/* Unwind info for one trampoline placed in the ELF image that
 * `perf inject --jit` builds from a jitdump code-load record: an .eh_frame
 * followed by an .eh_frame_hdr, laid out as perf's genelf expects. */
const uint8_t *etw_trampoline_jit_unwind(size_t *total_size, size_t *eh_frame_hdr_size);

/* Whether in-process unwind registration is working (for --info). */
int etw_trampoline_unwind_registered(void);

#endif
