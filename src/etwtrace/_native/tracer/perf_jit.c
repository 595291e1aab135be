/* Perf map and jitdump writers.  See perf_jit.h.
 *
 * The jitdump layout follows the Linux kernel's
 * tools/perf/Documentation/jitdump-specification.txt (version 1).  Every
 * record is written with one write() so that a crash loses nothing already
 * described.  Callers hold the function registry's lock (or the GIL), which
 * serialises all writers. */
#define _GNU_SOURCE
#include "perf_jit.h"

#include "arch.h"
#include "clock.h"
#include "trampoline.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
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

/* A file this process created, and how to tell it is still the one. */
typedef struct {
    int fd;
    char path[64];
    dev_t dev;
    ino_t ino;
    int failed;          /* gave up on it (warned once) */
} OwnFile;

static pid_t opened_pid;
static OwnFile perf_map = {.fd = -1};
static OwnFile jitdump = {.fd = -1};
static uint64_t code_index;
static int remove_at_exit;

/* Creates `path` for this process alone: never through a symlink, and an
 * existing file only when it is a plain file of ours (this pid's file from
 * before an exec, or left by a dead process of the same pid).  The perf map
 * is appended to, the jitdump started afresh. */
static int
create_own(OwnFile *f, const char *path, int truncate)
{
    snprintf(f->path, sizeof(f->path), "%s", path);
    int flags = O_WRONLY | O_NOFOLLOW | O_CLOEXEC;
    int fd = open(path, flags | O_CREAT | O_EXCL, 0600);
    if (fd < 0 && errno == EEXIST) {
        struct stat before, st;
        fd = lstat(path, &before) == 0 && S_ISREG(before.st_mode) && before.st_uid == geteuid() &&
             before.st_nlink == 1 ? open(path, flags | O_APPEND) : -1;
        if (fd < 0 || fstat(fd, &st) != 0 || st.st_dev != before.st_dev ||
            st.st_ino != before.st_ino) {
            fprintf(stderr, "etwtrace: %s exists and is not this user's file; not writing it "
                    "(perf will not name this process's Python frames through it)\n", path);
            if (fd >= 0) {
                close(fd);
            }
            f->failed = 1;
            return -1;
        }
        if (truncate && ftruncate(fd, 0) != 0) {
            close(fd);
            fd = -1;
        }
    }
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        if (fd >= 0) {
            close(fd);
        }
        f->failed = 1;
        return -1;
    }
    f->fd = fd;
    f->dev = st.st_dev;
    f->ino = st.st_ino;
    f->failed = 0;
    return 0;
}

/* The descriptor of `f` if it still is the file created (the program may
 * have closed it and opened one of its own under the same number); else
 * the file reopened by name, or -1. */
static int
own_fd(OwnFile *f)
{
    if (f->failed) {
        return -1;
    }
    struct stat st;
    if (f->fd >= 0 && fstat(f->fd, &st) == 0 && st.st_dev == f->dev && st.st_ino == f->ino) {
        return f->fd;
    }
    /* Not ours any more: never close what the program now owns. */
    f->fd = open(f->path, O_WRONLY | O_APPEND | O_NOFOLLOW | O_CLOEXEC);
    if (f->fd >= 0 && fstat(f->fd, &st) == 0 && st.st_dev == f->dev && st.st_ino == f->ino) {
        return f->fd;
    }
    if (f->fd >= 0) {
        close(f->fd);
    }
    f->fd = -1;
    f->failed = 1;
    return -1;
}

static int
write_all(int fd, const void *data, size_t size)
{
    const char *p = data;
    while (size > 0) {
        ssize_t n = write(fd, p, size);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return -1;
        }
        p += n;
        size -= (size_t)n;
    }
    return 0;
}

static void
remove_files(void)
{
    if (!remove_at_exit || opened_pid != getpid()) {
        return;
    }
    OwnFile *files[] = {&perf_map, &jitdump};
    for (size_t i = 0; i < 2; i++) {
        struct stat st;
        if (files[i]->path[0] && lstat(files[i]->path, &st) == 0 &&
            st.st_dev == files[i]->dev && st.st_ino == files[i]->ino) {
            unlink(files[i]->path);
        }
    }
}

void
etw_perf_jit_remove_at_exit(int remove)
{
    static int registered;
    remove_at_exit = remove;
    if (remove && !registered) {
        atexit(remove_files);
        registered = 1;
    }
}

static int
open_jitdump(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/tmp/jit-%d.dump", (int)pid);
    if (create_own(&jitdump, path, 1) != 0) {
        return -1;
    }
    JitHeader header = {
        .magic = JITDUMP_MAGIC,
        .version = JITDUMP_VERSION,
        .total_size = sizeof(JitHeader),
        .elf_mach = ETW_ARCH_ELF_MACHINE,
        .pid = (uint32_t)pid,
        .timestamp = etw_now_ns(),
    };
    if (write_all(jitdump.fd, &header, sizeof(header)) != 0) {
        jitdump.failed = 1;
        return -1;
    }
    /* perf finds the jitdump through an executable mapping of it (kept for
     * the life of the process; it costs one page of address space). */
    long page = sysconf(_SC_PAGESIZE);
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd >= 0) {
        (void)mmap(NULL, (size_t)page, PROT_READ | PROT_EXEC, MAP_PRIVATE, fd, 0);
        close(fd);
    }
    return 0;
}

int
etw_perf_jit_open(void)
{
    pid_t pid = getpid();
    /* Once open, the files stay open for the life of the process (a
     * re-enable keeps describing into them); a fork gets its own. */
    if (opened_pid == pid) {
        return perf_map.failed && jitdump.failed ? -1 : 0;
    }
    /* After a fork the descriptors are the parent's files: let go of them
     * without writing (closing our copy does not affect the parent). */
    if (perf_map.fd >= 0) {
        close(perf_map.fd);
    }
    if (jitdump.fd >= 0) {
        close(jitdump.fd);
    }
    perf_map = (OwnFile){.fd = -1};
    jitdump = (OwnFile){.fd = -1};
    code_index = 0;
    opened_pid = pid;
    char map_path[64];
    snprintf(map_path, sizeof(map_path), "/tmp/perf-%d.map", (int)pid);
    create_own(&perf_map, map_path, 0);
    open_jitdump(pid);
    return perf_map.failed && jitdump.failed ? -1 : 0;
}

static void
write_code_load(int fd, const void *addr, size_t size, const char *name)
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
            write_all(fd, buf, total);
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
    write_all(fd, buf, total);
    free(buf);
}

void
etw_perf_jit_describe(const void *addr, size_t size, const char *name)
{
    if (opened_pid != getpid() && etw_perf_jit_open() != 0) {
        return;   /* a forked child whose files cannot be made */
    }
    int fd = own_fd(&perf_map);
    if (fd >= 0) {
        char line[1100];
        int n = snprintf(line, sizeof(line), "%" PRIxPTR " %zx %s\n", (uintptr_t)addr, size, name);
        if (n > 0) {
            write_all(fd, line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
        }
    }
    fd = own_fd(&jitdump);
    if (fd >= 0) {
        write_code_load(fd, addr, size, name);
    }
}

const char *
etw_perf_jit_dump_path(void)
{
    return opened_pid == getpid() && !jitdump.failed && jitdump.path[0] ? jitdump.path : NULL;
}
