/* libFuzzer target for the sampler's unwinder (src/etwtrace/_native/
 * sampler/unwind.c, included whole): a file's call frame information and a
 * stack copy, both made up, must unwind to at most `room` frames -- never
 * crash, never read outside the file or the copy.  Built and run by
 * fuzz/run, its seeds made by fuzz/make_unwind_seeds.py.
 *
 * Input: u32 file size N, N bytes of an ELF file, then ip, sp, bp (u64
 * each) and the stack copy (the rest).  The file is mapped at FILE_START
 * with that as its load bias. */
#define _GNU_SOURCE
#include "../src/etwtrace/_native/sampler/unwind.c"

#include <stdio.h>
#include <sys/mman.h>

#define FILE_START 0x10000ULL
#define ROOM 128

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint32_t file_size;
    if (size < 4) {
        return 0;
    }
    memcpy(&file_size, data, 4);
    if (file_size > size - 4 || size - 4 - file_size < 24) {
        return 0;
    }
    int fd = memfd_create("unwind-fuzz", MFD_CLOEXEC);
    if (fd < 0 || write(fd, data + 4, file_size) != (ssize_t)file_size) {
        abort();
    }
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    etw_unwinder *u = etw_unwinder_new();
    if (u == NULL) {
        abort();
    }
    /* Added or refused: both are fine, the unwinding must hold either way. */
    etw_unwinder_add(u, FILE_START, FILE_START + file_size + 0x1000, FILE_START, path);
    close(fd);
    const uint8_t *rest = data + 4 + file_size;
    uint64_t regs[3];
    memcpy(regs, rest, sizeof regs);
    const uint8_t *stack = rest + 24;
    size_t stack_size = size - 4 - file_size - 24;
    /* The copy in a buffer of its own size, so ASan sees any read past it. */
    uint8_t *copy = malloc(stack_size ? stack_size : 1);
    if (copy == NULL) {
        abort();
    }
    memcpy(copy, stack, stack_size);
    uint64_t out[ROOM];
    enum etw_unwind_end end;
    for (int pass = 0; pass < 2; pass++) {      /* the second from the row cache */
        /* The third word serves as both frame pointer and link register
         * (aarch64's x30; x86-64 ignores it): the seeds keep their format. */
        uint32_t n = etw_unwind(u, regs[0], regs[1], regs[2], regs[2], copy, stack_size, out,
                                ROOM, &end);
        if (n > ROOM || end > ETW_UNWIND_FULL || (n == ROOM) != (end == ETW_UNWIND_FULL)) {
            fprintf(stderr, "unwound %u frames, end %d\n", n, (int)end);
            abort();
        }
    }
    free(copy);
    etw_unwinder_free(u);
    return 0;
}
