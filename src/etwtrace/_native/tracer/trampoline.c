/* Trampoline arenas and their unwind info.  See trampoline.h. */
#define _GNU_SOURCE
#include "trampoline.h"

#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

static const uint8_t trampoline_code[ETW_TRAMPOLINE_SIZE] = ETW_ARCH_TRAMPOLINE_CODE;

/* Arena size: 512 trampolines per 64 KiB mapping. */
#define ARENA_BYTES (64 * 1024)
#define ARENA_SLOTS (ARENA_BYTES / ETW_TRAMPOLINE_STRIDE)

/* DWARF call-frame constants used below. */
enum {
    DW_CFA_nop = 0x00,
    DW_CFA_advance_loc = 0x40,
    DW_CFA_offset = 0x80,
    DW_CFA_def_cfa = 0x0c,
    DW_CFA_def_cfa_register = 0x0d,
    DW_CFA_def_cfa_offset = 0x0e,
    DW_CFA_restore = 0xc0,
    DW_EH_PE_absptr = 0x00,
    DW_EH_PE_udata4 = 0x03,
    DW_EH_PE_sdata4 = 0x0b,
    DW_EH_PE_pcrel = 0x10,
    DW_EH_PE_datarel = 0x30,
};

/* The machine's CFI (arch.h), in the names above. */
static const uint8_t cie_rules[] = ETW_ARCH_CIE_RULES;
static const uint8_t trampoline_rules[] = ETW_ARCH_TRAMPOLINE_RULES;

/* A growable little-endian byte writer for building unwind tables. */
typedef struct {
    uint8_t *data;
    size_t size;
    size_t cap;
    int failed;
} ByteWriter;

static void
bw_put(ByteWriter *w, const void *src, size_t n)
{
    if (w->failed) {
        return;
    }
    if (w->size + n > w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 256;
        while (cap < w->size + n) {
            cap *= 2;
        }
        uint8_t *data = realloc(w->data, cap);
        if (data == NULL) {
            w->failed = 1;
            return;
        }
        w->data = data;
        w->cap = cap;
    }
    memcpy(w->data + w->size, src, n);
    w->size += n;
}

static void bw_u8(ByteWriter *w, uint8_t v) { bw_put(w, &v, 1); }
static void bw_u32(ByteWriter *w, uint32_t v) { bw_put(w, &v, 4); }
static void bw_i32(ByteWriter *w, int32_t v) { bw_put(w, &v, 4); }
static void bw_u64(ByteWriter *w, uint64_t v) { bw_put(w, &v, 8); }

static void
bw_patch_u32(ByteWriter *w, size_t at, uint32_t v)
{
    if (!w->failed) {
        memcpy(w->data + at, &v, 4);
    }
}

/* Pads the entry that began at `start` (its length word) to a multiple of
 * 8 bytes with DW_CFA_nop and fills in its length. */
static void
bw_end_entry(ByteWriter *w, size_t start)
{
    while ((w->size - start) % 8) {
        bw_u8(w, DW_CFA_nop);
    }
    bw_patch_u32(w, start, (uint32_t)(w->size - start - 4));
}

/* A CIE whose FDEs encode their addresses with `fde_encoding`.  The initial
 * rules are those at a function's first instruction (arch.h). */
static size_t
write_cie(ByteWriter *w, uint8_t fde_encoding)
{
    size_t start = w->size;
    bw_u32(w, 0);           /* length, patched */
    bw_u32(w, 0);           /* CIE id */
    bw_u8(w, 1);            /* version */
    bw_put(w, "zR", 3);     /* augmentation, with its NUL */
    bw_u8(w, ETW_CFI_CODE_ALIGN);  /* code alignment factor */
    bw_u8(w, 0x78);         /* data alignment factor: -8 (SLEB128) */
    bw_u8(w, ETW_DWARF_RA); /* return address register */
    bw_u8(w, 1);            /* augmentation data length */
    bw_u8(w, fde_encoding);
    bw_put(w, cie_rules, sizeof cie_rules);
    bw_end_entry(w, start);
    return start;
}

/* The rules through the trampoline's body (offsets from trampoline_code). */
static void
write_trampoline_rules(ByteWriter *w)
{
    bw_put(w, trampoline_rules, sizeof trampoline_rules);
}

/* An FDE with absolute 8-byte addresses, for in-process registration (the
 * table lives on the heap, possibly far more than 2 GiB from the code). */
static void
write_fde_absolute(ByteWriter *w, size_t cie_at, uint64_t pc)
{
    size_t start = w->size;
    bw_u32(w, 0);                                     /* length, patched */
    bw_u32(w, (uint32_t)(w->size - cie_at));          /* CIE pointer */
    bw_u64(w, pc);                                    /* pc_begin */
    bw_u64(w, ETW_TRAMPOLINE_SIZE);                   /* pc_range */
    bw_u8(w, 0);                                      /* augmentation length */
    write_trampoline_rules(w);
    bw_end_entry(w, start);
}

/* ---- in-process registration with libgcc's unwinder ---- */

typedef void (*RegisterFrameFunc)(void *);

static RegisterFrameFunc
find_register_frame(void)
{
    /* Registration must reach the libgcc_s that glibc's backtrace() loads,
     * not a static copy linked into this module, so look it up there. */
    static RegisterFrameFunc func;
    static int looked;
    if (!looked) {
        looked = 1;
        void *lib = dlopen("libgcc_s.so.1", RTLD_NOW | RTLD_GLOBAL);
        if (lib != NULL) {
            func = (RegisterFrameFunc)dlsym(lib, "__register_frame");
        }
    }
    return func;
}

typedef struct Arena {
    struct Arena *next;
    uint8_t *code;
    size_t used;          /* slots handed out */
    uint8_t *eh_frame;    /* registered table; lives as long as the arena */
} Arena;

static Arena *current_arena;
static int unwind_registered;

static Arena *
arena_new(void)
{
    Arena *arena = calloc(1, sizeof(Arena));
    if (arena == NULL) {
        return NULL;
    }
    void *mem = mmap(NULL, ARENA_BYTES, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        free(arena);
        return NULL;
    }
    arena->code = mem;
    for (size_t i = 0; i < ARENA_BYTES; i += 4) {   /* traps between trampolines */
        const uint32_t trap = ETW_ARCH_TRAP_WORD;
        memcpy(arena->code + i, &trap, 4);
    }
    for (size_t i = 0; i < ARENA_SLOTS; i++) {
        memcpy(arena->code + i * ETW_TRAMPOLINE_STRIDE, trampoline_code, ETW_TRAMPOLINE_SIZE);
    }
    if (mprotect(mem, ARENA_BYTES, PROT_READ | PROT_EXEC) != 0) {
        munmap(mem, ARENA_BYTES);
        free(arena);
        return NULL;
    }
    __builtin___clear_cache((char *)mem, (char *)mem + ARENA_BYTES);

    /* One FDE per slot, registered once: unused slots are never executed. */
    ByteWriter w = {0};
    size_t cie_at = write_cie(&w, DW_EH_PE_absptr);
    for (size_t i = 0; i < ARENA_SLOTS; i++) {
        write_fde_absolute(&w, cie_at, (uint64_t)(uintptr_t)(arena->code + i * ETW_TRAMPOLINE_STRIDE));
    }
    bw_u32(&w, 0); /* terminator */
    RegisterFrameFunc reg = find_register_frame();
    if (!w.failed && reg != NULL) {
        arena->eh_frame = w.data;
        reg(arena->eh_frame);
        unwind_registered = 1;
    } else {
        free(w.data);
    }
    arena->next = current_arena;
    current_arena = arena;
    return arena;
}

void *
etw_trampoline_new(void)
{
    Arena *arena = current_arena;
    if (arena == NULL || arena->used == ARENA_SLOTS) {
        arena = arena_new();
        if (arena == NULL) {
            return NULL;
        }
    }
    return arena->code + ETW_TRAMPOLINE_STRIDE * arena->used++;
}

int
etw_trampoline_unwind_registered(void)
{
    return unwind_registered;
}

/* ---- unwind info for perf inject --jit ----
 *
 * perf's genelf places the code at a fixed, 16-byte aligned offset T, then the
 * .eh_frame at ALIGN_8(T + code size) and the .eh_frame_hdr right after it.
 * The code size is a multiple of 8, so the .eh_frame starts exactly
 * ETW_TRAMPOLINE_SIZE bytes after the code, and PC-relative offsets can be
 * computed without knowing T. */
static uint8_t *jit_unwind;
static size_t jit_unwind_size;
static size_t jit_unwind_hdr_size;

static void
build_jit_unwind(void)
{
    ByteWriter w = {0};
    size_t cie_at = write_cie(&w, DW_EH_PE_pcrel | DW_EH_PE_sdata4);
    size_t fde_at = w.size;
    bw_u32(&w, 0);                                  /* length, patched */
    bw_u32(&w, (uint32_t)(w.size - cie_at));        /* CIE pointer */
    /* pc_begin: from this field back to the start of the code. */
    bw_i32(&w, -(int32_t)(ETW_TRAMPOLINE_SIZE + w.size));
    bw_u32(&w, ETW_TRAMPOLINE_SIZE);                /* pc_range */
    bw_u8(&w, 0);                                   /* augmentation length */
    write_trampoline_rules(&w);
    bw_end_entry(&w, fde_at);
    bw_u32(&w, 0);                                  /* terminator */
    int32_t eh_frame_size = (int32_t)w.size;

    /* .eh_frame_hdr with a one-entry binary search table. */
    size_t hdr_at = w.size;
    bw_u8(&w, 1);                                   /* version */
    bw_u8(&w, DW_EH_PE_pcrel | DW_EH_PE_sdata4);    /* eh_frame_ptr encoding */
    bw_u8(&w, DW_EH_PE_udata4);                     /* fde_count encoding */
    bw_u8(&w, DW_EH_PE_datarel | DW_EH_PE_sdata4);  /* table encoding */
    bw_i32(&w, -(eh_frame_size + 4));               /* eh_frame_ptr */
    bw_u32(&w, 1);                                  /* fde_count */
    bw_i32(&w, -(ETW_TRAMPOLINE_SIZE + eh_frame_size)); /* initial location */
    bw_i32(&w, (int32_t)fde_at - eh_frame_size);    /* FDE address */
    if (w.failed || ETW_TRAMPOLINE_SIZE + ((w.size + 7) & ~(size_t)7) > ETW_TRAMPOLINE_STRIDE) {
        /* (perf's map of one image would cover the next trampoline) */
        free(w.data);
        return;
    }
    jit_unwind = w.data;
    jit_unwind_size = w.size;
    jit_unwind_hdr_size = w.size - hdr_at;
}

const uint8_t *
etw_trampoline_jit_unwind(size_t *total_size, size_t *eh_frame_hdr_size)
{
    if (jit_unwind == NULL) {
        build_jit_unwind();
    }
    *total_size = jit_unwind_size;
    *eh_frame_hdr_size = jit_unwind_hdr_size;
    return jit_unwind;
}
