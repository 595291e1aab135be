/* Everything that differs between the machines etwtrace is built for,
 * x86-64 and aarch64 (setup.py refuses any other): the trampoline's code
 * and its DWARF call-frame rules, the jitdump's ELF machine, the cycle
 * counter the clock may scale, the stack switch of the hooks' larger C
 * stack, the user registers the BPF sampler reads and the DWARF register
 * numbers its CFI unwinder follows.  Differences
 * between CPython versions are compat.h's, never here.
 *
 * Included by C (the extension) and by the BPF program (sampler.bpf.c,
 * built with -target bpf and -D__TARGET_ARCH_x86 or _arm64, so it sees
 * only the sampler section at the end). */
#ifndef ETWTRACE_ARCH_H
#define ETWTRACE_ARCH_H

#if !defined(__bpf__)

#include <stdint.h>

#if defined(__x86_64__)
#  include <cpuid.h>
#  include <x86intrin.h>

#  define ETW_ARCH_NAME "x86_64"
#  define ETW_ARCH_ELF_MACHINE 62u        /* EM_X86_64 */

/* The trampoline (trampoline.h) calls its fourth argument (rcx) with its
 * first three, keeping a frame pointer:
 *     0: push %rbp; 1: mov %rsp,%rbp; 4: call *%rcx; 6: pop %rbp; 7: ret
 * then int3 to its size, which must be a multiple of 8 (trampoline.c's
 * jitdump layout). */
#  define ETW_TRAMPOLINE_SIZE 16
#  define ETW_ARCH_TRAMPOLINE_CODE {                                      \
        0x55, 0x48, 0x89, 0xe5, 0xff, 0xd1, 0x5d, 0xc3,                   \
        0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc }
/* What fills an arena between trampolines, as a 32-bit word: int3. */
#  define ETW_ARCH_TRAP_WORD 0xccccccccu

/* DWARF register numbers (System V x86-64 psABI 3.6.2). */
#  define ETW_DWARF_FP 6                  /* rbp */
#  define ETW_DWARF_SP 7                  /* rsp */
#  define ETW_DWARF_RA 16                 /* the return address column */
/* The CIE: code alignment 1, data alignment -8, and the rule at a
 * function's first instruction, CFA = rsp + 8 with the return address at
 * CFA - 8.  DW_CFA_* are trampoline.c's names. */
#  define ETW_CFI_CODE_ALIGN 1
#  define ETW_CFI_CFA_AT_ENTRY 8          /* CFA = sp + this at a call's target */
#  define ETW_ARCH_CIE_RULES {                                            \
        DW_CFA_def_cfa, ETW_DWARF_SP, 8, DW_CFA_offset | ETW_DWARF_RA, 1 }
/* The rules through the trampoline's body (factored offsets: -8 each). */
#  define ETW_ARCH_TRAMPOLINE_RULES {                                     \
        DW_CFA_advance_loc | 1,                 /* after push %rbp */     \
        DW_CFA_def_cfa_offset, 16, DW_CFA_offset | ETW_DWARF_FP, 2,       \
        DW_CFA_advance_loc | 3,                 /* after mov %rsp,%rbp */ \
        DW_CFA_def_cfa_register, ETW_DWARF_FP,                            \
        DW_CFA_advance_loc | 3,                 /* after pop %rbp */      \
        DW_CFA_def_cfa, ETW_DWARF_SP, 8 }

/* The cycle counter clock.h may scale to ns: the TSC, usable where the
 * CPU says it runs at a constant rate in every power state. */
#  define ETW_ARCH_HAVE_CYCLE_COUNTER 1
static inline uint64_t etw_arch_cycles(void) { return __rdtsc(); }
static inline int
etw_arch_cycles_invariant(void)
{
    unsigned int a, b, c, d;
    return __get_cpuid(0x80000007, &a, &b, &c, &d) && ((d >> 8) & 1);
}

/* A return address as it is stored on the stack. */
#  define ETW_ARCH_STRIP_RA(ra) (ra)
/* The call pushes the return address: no register holds it. */
#  define ETW_ARCH_HAVE_LINK_REGISTER 0

/* void etw_cstack_call_on(void (*fn)(void *), void *arg, uintptr_t top)
 * (cstack.c): calls fn(arg) with the stack pointer at `top`, and returns on
 * the caller's stack.  The frame pointer keeps the caller's stack pointer,
 * and the call frame information says so: unwinders and frame-pointer
 * walks go from the larger stack back into the thread's. */
#  define ETW_ARCH_CALL_ON_ASM                                            \
    ".text\n"                                                             \
    ".p2align 4\n"                                                        \
    ".globl etw_cstack_call_on\n"                                         \
    ".hidden etw_cstack_call_on\n"                                        \
    ".type etw_cstack_call_on, @function\n"                               \
    "etw_cstack_call_on:\n"                                               \
    ".cfi_startproc\n"                                                    \
    "    endbr64\n"                                                       \
    "    pushq %rbp\n"                                                    \
    ".cfi_def_cfa_offset 16\n"                                            \
    ".cfi_offset %rbp, -16\n"                                             \
    "    movq %rsp, %rbp\n"                                               \
    ".cfi_def_cfa_register %rbp\n"                                        \
    "    movq %rdx, %rsp\n"                                               \
    "    movq %rdi, %rax\n"                                               \
    "    movq %rsi, %rdi\n"                                               \
    "    callq *%rax\n"                                                   \
    "    movq %rbp, %rsp\n"                                               \
    "    popq %rbp\n"                                                     \
    ".cfi_def_cfa %rsp, 8\n"                                              \
    "    ret\n"                                                           \
    ".cfi_endproc\n"                                                      \
    ".size etw_cstack_call_on, .-etw_cstack_call_on\n"

#elif defined(__aarch64__)

#  define ETW_ARCH_NAME "aarch64"
#  define ETW_ARCH_ELF_MACHINE 183u       /* EM_AARCH64 */

/* The trampoline calls its fourth argument (x3) with its first three,
 * keeping an AAPCS64 frame record {x29, x30} that x29 points to:
 *     0: stp x29, x30, [sp, #-16]!   4: mov x29, sp   8: blr x3
 *    12: ldp x29, x30, [sp], #16    16: ret          20: brk #0
 * (little-endian words; the size must be a multiple of 8). */
#  define ETW_TRAMPOLINE_SIZE 24
#  define ETW_ARCH_TRAMPOLINE_CODE {                                      \
        0xfd, 0x7b, 0xbf, 0xa9, 0xfd, 0x03, 0x00, 0x91,                   \
        0x60, 0x00, 0x3f, 0xd6, 0xfd, 0x7b, 0xc1, 0xa8,                   \
        0xc0, 0x03, 0x5f, 0xd6, 0x00, 0x00, 0x20, 0xd4 }
#  define ETW_ARCH_TRAP_WORD 0xd4200000u  /* brk #0 */

/* DWARF register numbers (AAPCS64's DWARF supplement, 4.1). */
#  define ETW_DWARF_FP 29                 /* x29 */
#  define ETW_DWARF_SP 31                 /* sp */
#  define ETW_DWARF_RA 30                 /* x30, the link register */
/* The CIE: code alignment 4 (every instruction is 4 bytes), data
 * alignment -8, and the rule at a function's first instruction, CFA = sp
 * with the return address still in x30 (no rule: same value). */
#  define ETW_CFI_CODE_ALIGN 4
#  define ETW_CFI_CFA_AT_ENTRY 0
#  define ETW_ARCH_CIE_RULES { DW_CFA_def_cfa, ETW_DWARF_SP, 0 }
#  define ETW_ARCH_TRAMPOLINE_RULES {                                     \
        DW_CFA_advance_loc | 1,                 /* after stp */           \
        DW_CFA_def_cfa_offset, 16,                                        \
        DW_CFA_offset | ETW_DWARF_FP, 2, DW_CFA_offset | ETW_DWARF_RA, 1, \
        DW_CFA_advance_loc | 1,                 /* after mov x29, sp */   \
        DW_CFA_def_cfa_register, ETW_DWARF_FP,                            \
        DW_CFA_advance_loc | 2,                 /* after ldp */           \
        DW_CFA_def_cfa, ETW_DWARF_SP, 0,                                  \
        DW_CFA_restore | ETW_DWARF_FP, DW_CFA_restore | ETW_DWARF_RA }

/* No cycle counter: CLOCK_MONOTONIC through the vDSO, which itself reads
 * the generic timer's CNTVCT_EL0 and scales it with the kernel's factor,
 * so there is no frequency for us to record. */
#  define ETW_ARCH_HAVE_CYCLE_COUNTER 0

/* DW_CFA_AARCH64_negate_ra_state: return addresses signed with pointer
 * authentication from here on (Debian trixie's python3.13 and libc).  The
 * unwinder strips the signature instead of tracking the state: user
 * addresses have at most 48 bits here (Debian's kernels: VA_BITS=48), the
 * signature is in the bits above. */
#  define ETW_CFA_NEGATE_RA_STATE 0x2d
#  define ETW_ARCH_STRIP_RA(ra) ((ra) & ((1ull << 48) - 1))
/* The call leaves the return address in x30: a leaf (or a prologue before
 * its stp) has it there only, which the CFI says by having no rule for it.
 * Stack copies carry x30 for that first frame. */
#  define ETW_ARCH_HAVE_LINK_REGISTER 1

/* etw_cstack_call_on (see the x86-64 one): x0 = fn, x1 = arg, x2 = top.
 * The frame record keeps the caller's stack pointer in x29. */
#  define ETW_ARCH_CALL_ON_ASM                                            \
    ".text\n"                                                             \
    ".p2align 4\n"                                                        \
    ".globl etw_cstack_call_on\n"                                         \
    ".hidden etw_cstack_call_on\n"                                        \
    ".type etw_cstack_call_on, %function\n"                               \
    "etw_cstack_call_on:\n"                                               \
    ".cfi_startproc\n"                                                    \
    "    stp x29, x30, [sp, #-16]!\n"                                     \
    ".cfi_def_cfa_offset 16\n"                                            \
    ".cfi_offset x29, -16\n"                                              \
    ".cfi_offset x30, -8\n"                                               \
    "    mov x29, sp\n"                                                   \
    ".cfi_def_cfa_register x29\n"                                         \
    "    mov sp, x2\n"                                                    \
    "    mov x9, x0\n"                                                    \
    "    mov x0, x1\n"                                                    \
    "    blr x9\n"                                                        \
    "    mov sp, x29\n"                                                   \
    "    ldp x29, x30, [sp], #16\n"                                       \
    ".cfi_def_cfa sp, 0\n"                                                \
    ".cfi_restore x29\n"                                                  \
    ".cfi_restore x30\n"                                                  \
    "    ret\n"                                                           \
    ".cfi_endproc\n"                                                      \
    ".size etw_cstack_call_on, .-etw_cstack_call_on\n"

#else
#  error "etwtrace is written for x86-64 and aarch64 (setup.py says so at install)"
#endif

#endif /* !__bpf__ */

/* ---- the BPF sampler's reads of the user registers at a sample ---- */
#if defined(__TARGET_ARCH_x86)
/* asm/ptrace.h (uapi): the kernel's struct pt_regs. */
typedef struct pt_regs etw_user_regs;
#  define ETW_REGS_IP(r) ((r)->rip)
#  define ETW_REGS_SP(r) ((r)->rsp)
#  define ETW_REGS_FP(r) ((r)->rbp)
#  define ETW_REGS_LR(r) 0
#elif defined(__TARGET_ARCH_arm64)
/* asm/ptrace.h (uapi): user_pt_regs, the start of the kernel's pt_regs. */
typedef struct user_pt_regs etw_user_regs;
#  define ETW_REGS_IP(r) ((r)->pc)
#  define ETW_REGS_SP(r) ((r)->sp)
#  define ETW_REGS_FP(r) ((r)->regs[29])
#  define ETW_REGS_LR(r) ((r)->regs[30])
#elif defined(__bpf__)
#  error "sampler.bpf.c needs -D__TARGET_ARCH_x86 or -D__TARGET_ARCH_arm64 (setup.py)"
#endif

#endif
