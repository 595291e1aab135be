/* Perf map and jitdump writers.  See perf_jit.h.
 *
 * The jitdump layout follows the Linux kernel's
 * tools/perf/Documentation/jitdump-specification.txt (version 1).  Every
 * record is written with one write() so that a crash loses nothing already
 * described.  Callers hold the GIL, which serialises all writers. */
#define _GNU_SOURCE
#include "perf_jit.h"

#include "clock.h"
#include "trampoline.h"

#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define JITDUMP_MAGIC 0x4A695444u
#define JITDUMP_VERSION 1u
#define EM_X86_64_ 62u
#define JIT_CODE_LOAD 0u
#define JIT_CODE_UNWINDING_INFO 4u

typedef struct {
    uint32_t magic;
    uint32_t version;
    uint32_t total_size;
    uint32_t elf_mach;
    uint32_t pad1;
    uint32_t pid;
    uint64_t timestamp;
    uint64_t flags;
} JitHeader;

typedef struct {
    uint32_t id;
    uint32_t total_size;
    uint64_t timestamp;
} JitRecordHeader;

typedef struct {
    JitRecordHeader p;
    uint32_t pid;
    uint32_t tid;
    uint64_t vma;
    uint64_t code_addr;
    uint64_t code_size;
    uint64_t code_index;
} JitCodeLoad;

typedef struct {
    JitRecordHeader p;
    uint64_t unwinding_size;
    uint64_t eh_frame_hdr_size;
    uint64_t mapped_size;
} JitUnwindingInfo;

static pid_t opened_pid;
static int jitdump_fd = -1;
static FILE *perf_map;
static void *jitdump_marker;
static uint64_t code_index;
static char jitdump_path[PATH_MAX + 32];

static int
write_all(int fd, const void *data, size_t size)
{
    const char *p = data;
    while (size > 0) {
        ssize_t n = write(fd, p, size);
        if (n <= 0) {
            return -1;
        }
        p += n;
        size -= (size_t)n;
    }
    return 0;
}

static void
forget_files(void)
{
    /* After a fork these belong to the parent: drop them without writing. */
    if (jitdump_fd >= 0) {
        close(jitdump_fd);
        jitdump_fd = -1;
    }
    if (perf_map != NULL) {
        fclose(perf_map);
        perf_map = NULL;
    }
    jitdump_marker = NULL; /* the mapping stays; it is harmless */
    jitdump_path[0] = '\0';
    code_index = 0;
}

static int
open_jitdump(const char *dir, pid_t pid)
{
    char jit_dir[PATH_MAX];
    if (dir != NULL) {
        /* Captures keep the jitdump and the ELF images perf inject makes
         * from it together in DIR/jit. */
        snprintf(jit_dir, sizeof(jit_dir), "%s/jit", dir);
        mkdir(jit_dir, 0777);
    } else {
        snprintf(jit_dir, sizeof(jit_dir), "/tmp");
    }
    snprintf(jitdump_path, sizeof(jitdump_path), "%s/jit-%d.dump", jit_dir, (int)pid);
    int fd = open(jitdump_path, O_CREAT | O_TRUNC | O_RDWR | O_CLOEXEC, 0666);
    if (fd < 0) {
        jitdump_path[0] = '\0';
        return -1;
    }
    JitHeader header = {
        .magic = JITDUMP_MAGIC,
        .version = JITDUMP_VERSION,
        .total_size = sizeof(JitHeader),
        .elf_mach = EM_X86_64_,
        .pid = (uint32_t)pid,
        .timestamp = etw_now_ns(),
    };
    if (write_all(fd, &header, sizeof(header)) != 0) {
        close(fd);
        jitdump_path[0] = '\0';
        return -1;
    }
    /* perf finds the jitdump through an executable mapping of it. */
    long page = sysconf(_SC_PAGESIZE);
    void *marker = mmap(NULL, (size_t)page, PROT_READ | PROT_EXEC, MAP_PRIVATE, fd, 0);
    jitdump_marker = marker == MAP_FAILED ? NULL : marker;
    jitdump_fd = fd;
    return 0;
}

int
etw_perf_jit_open(const char *jitdump_dir)
{
    pid_t pid = getpid();
    /* Once open, the files stay open for the life of the process (a
     * re-enable keeps describing into them); a fork gets its own. */
    if (opened_pid == pid) {
        return (jitdump_fd >= 0 || perf_map != NULL) ? 0 : -1;
    }
    forget_files();
    opened_pid = pid;
    char map_path[64];
    snprintf(map_path, sizeof(map_path), "/tmp/perf-%d.map", (int)pid);
    perf_map = fopen(map_path, "ae");
    if (perf_map != NULL) {
        setvbuf(perf_map, NULL, _IOLBF, 0);
    }
    open_jitdump(jitdump_dir, pid);
    return (perf_map != NULL || jitdump_fd >= 0) ? 0 : -1;
}

static void
write_code_load(const void *addr, size_t size, const char *name)
{
    size_t name_len = strlen(name) + 1;
    size_t unwind_size, hdr_size;
    const uint8_t *unwind = etw_trampoline_jit_unwind(&unwind_size, &hdr_size);
    uint64_t now = etw_now_ns();
    uint32_t tid = (uint32_t)syscall(SYS_gettid);

    if (unwind != NULL) {
        /* The unwinding record applies to the code-load record after it. */
        size_t padded = (unwind_size + 7) & ~(size_t)7;
        size_t total = sizeof(JitUnwindingInfo) + padded;
        uint8_t *buf = calloc(1, total);
        if (buf != NULL) {
            JitUnwindingInfo rec = {
                .p = {JIT_CODE_UNWINDING_INFO, (uint32_t)total, now},
                .unwinding_size = unwind_size,
                .eh_frame_hdr_size = hdr_size,
                .mapped_size = padded,
            };
            memcpy(buf, &rec, sizeof(rec));
            memcpy(buf + sizeof(rec), unwind, unwind_size);
            write_all(jitdump_fd, buf, total);
            free(buf);
        }
    }

    size_t total = sizeof(JitCodeLoad) + name_len + size;
    uint8_t *buf = malloc(total);
    if (buf == NULL) {
        return;
    }
    JitCodeLoad rec = {
        .p = {JIT_CODE_LOAD, (uint32_t)total, now},
        .pid = (uint32_t)opened_pid,
        .tid = tid,
        .vma = (uint64_t)(uintptr_t)addr,
        .code_addr = (uint64_t)(uintptr_t)addr,
        .code_size = size,
        .code_index = code_index++,
    };
    memcpy(buf, &rec, sizeof(rec));
    memcpy(buf + sizeof(rec), name, name_len);
    memcpy(buf + sizeof(rec) + name_len, addr, size);
    write_all(jitdump_fd, buf, total);
    free(buf);
}

void
etw_perf_jit_describe(const void *addr, size_t size, const char *name)
{
    if (opened_pid != getpid()) {
        return; /* forked and not reopened: these files are the parent's */
    }
    if (perf_map != NULL) {
        fprintf(perf_map, "%" PRIxPTR " %zx %s\n", (uintptr_t)addr, size, name);
    }
    if (jitdump_fd >= 0) {
        write_code_load(addr, size, name);
    }
}

const char *
etw_perf_jit_dump_path(void)
{
    return jitdump_path[0] ? jitdump_path : NULL;
}
