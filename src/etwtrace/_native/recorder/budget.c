/* A capture's budget and the file system's reserve.  See budget.h. */
#define _GNU_SOURCE
#include "budget.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

/* etwtrace/trace/budget.py reads and writes the same layout. */
_Static_assert(sizeof(EtwBudget) == 80 && offsetof(EtwBudget, stopped) == 32 &&
               offsetof(EtwBudget, free_at_stop) == 40 &&
               offsetof(EtwBudget, threads_refused) == 56 &&
               offsetof(EtwBudget, events_unrecorded) == 64 &&
               offsetof(EtwBudget, summarized) == 72, "budget layout");

static EtwBudget *page;    /* atomic; the same address once made */
static int writable;       /* atomic: the page is the capture's file, shared */
static uint64_t own_claims; /* atomic: bytes this process claimed with the page
                             * read only: the session counts them from outside
                             * too, later, so they are counted twice, never
                             * not at all */
static int mapped_file;    /* the capture's file (dev, ino) is mapped */
static dev_t mapped_dev;
static ino_t mapped_ino;

static EtwBudget *
current(void)
{
    return __atomic_load_n(&page, __ATOMIC_ACQUIRE);
}

/* Whether a budget file may be mapped by this process: a regular file of
 * the budget's size or more, this user's or root's (root maps root's
 * alone), with the budget's magic (checked once mapped). */
static int
usable(int fd, struct stat *st)
{
    return fstat(fd, st) == 0 && S_ISREG(st->st_mode) && st->st_size >= ETW_BUDGET_BYTES &&
           (st->st_uid == geteuid() || st->st_uid == 0);
}

void
etw_budget_open(const char *capture_dir)
{
    EtwBudget *b = current();
    if (b == NULL) {
        void *p = mmap(NULL, ETW_BUDGET_BYTES, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) {
            return;     /* no budget: the reserve is still checked per packet */
        }
        b = p;
        __atomic_store_n(&page, b, __ATOMIC_RELEASE);
    }
    char path[PATH_MAX + 32];
    int n = snprintf(path, sizeof(path), "%s/ctf/" ETW_BUDGET_NAME, capture_dir);
    int fd = -1;
    if (n > 0 && (size_t)n < sizeof(path)) {
        fd = open(path, O_RDWR | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
        if (fd < 0 && (errno == EACCES || errno == EPERM || errno == EROFS)) {
            fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
        }
    }
    struct stat st;
    int shared = 0;
    void *p = MAP_FAILED;
    if (fd >= 0 && usable(fd, &st)) {
        if (mapped_file && st.st_dev == mapped_dev && st.st_ino == mapped_ino) {
            close(fd);
            return;     /* mapped already (another session of this capture) */
        }
        /* Shared only with a file of this user: a file another user may
         * write could also be cut short under the mapping (SIGBUS). */
        shared = st.st_uid == geteuid() && (fcntl(fd, F_GETFL) & O_ACCMODE) == O_RDWR;
        p = mmap(b, ETW_BUDGET_BYTES, PROT_READ | PROT_WRITE,
                 (shared ? MAP_SHARED : MAP_PRIVATE) | MAP_FIXED, fd, 0);
        if (p != MAP_FAILED && memcmp(b->magic, ETW_BUDGET_MAGIC, 8) != 0) {
            p = MAP_FAILED;     /* not a budget: the zero page instead */
        }
    }
    if (fd >= 0) {
        close(fd);
    }
    mapped_file = p != MAP_FAILED;
    if (mapped_file) {
        mapped_dev = st.st_dev;
        mapped_ino = st.st_ino;
    }
    else {
        shared = 0;
        p = mmap(b, ETW_BUDGET_BYTES, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
        if (p == MAP_FAILED) {
            __atomic_store_n(&page, NULL, __ATOMIC_RELEASE);    /* out of memory */
        }
    }
    __atomic_store_n(&own_claims, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&writable, shared, __ATOMIC_RELEASE);
}

int
etw_budget_stopped(void)
{
    EtwBudget *b = current();
    return b == NULL ? 0 : (int)__atomic_load_n(&b->stopped, __ATOMIC_ACQUIRE);
}

int
etw_budget_summarized(void)
{
    EtwBudget *b = current();
    return b != NULL && __atomic_load_n(&b->summarized, __ATOMIC_RELAXED) != 0;
}

uint64_t
etw_budget_limit(void)
{
    EtwBudget *b = current();
    return b == NULL ? 0 : __atomic_load_n(&b->limit, __ATOMIC_RELAXED);
}

int
etw_budget_stop(int why, uint64_t free_bytes, uint64_t reserve)
{
    EtwBudget *b = current();
    if (b == NULL) {
        return 1;
    }
    uint32_t expected = 0;
    if (!__atomic_compare_exchange_n(&b->stopped, &expected, (uint32_t)why, 0,
                                     __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        return 0;
    }
    __atomic_store_n(&b->stopped_pid, (uint32_t)getpid(), __ATOMIC_RELAXED);
    __atomic_store_n(&b->free_at_stop, free_bytes, __ATOMIC_RELAXED);
    __atomic_store_n(&b->reserve_at_stop, reserve, __ATOMIC_RELAXED);
    return 1;
}

/* Whether `bytes` more fit the limit, with `claimed` claimed so far. */
static int
fits(EtwBudget *b, uint64_t claimed, uint64_t bytes)
{
    uint64_t limit = __atomic_load_n(&b->limit, __ATOMIC_RELAXED);
    uint64_t used = claimed + __atomic_load_n(&b->counted, __ATOMIC_RELAXED);
    return limit == 0 || (used <= limit && bytes <= limit - used);
}

int
etw_budget_claim(uint64_t bytes, int *first)
{
    *first = 0;
    EtwBudget *b = current();
    if (b == NULL) {
        return 0;
    }
    int why = (int)__atomic_load_n(&b->stopped, __ATOMIC_ACQUIRE);
    if (why != 0) {
        return why;
    }
    uint64_t claimed = __atomic_load_n(&b->claimed, __ATOMIC_RELAXED);
    if (!__atomic_load_n(&writable, __ATOMIC_ACQUIRE)) {
        uint64_t own = __atomic_load_n(&own_claims, __ATOMIC_RELAXED);
        if (fits(b, claimed + own, bytes)) {
            __atomic_fetch_add(&own_claims, bytes, __ATOMIC_RELAXED);
            return 0;
        }
    }
    else {
        do {
            if (!fits(b, claimed, bytes)) {
                break;
            }
            if (__atomic_compare_exchange_n(&b->claimed, &claimed, claimed + bytes, 1,
                                            __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
                return 0;
            }
        } while (1);
    }
    *first = etw_budget_stop(ETW_STOP_LIMIT, 0, 0);
    return etw_budget_stopped();
}

uint64_t
etw_budget_claim_up_to(uint64_t want, uint64_t least, unsigned share)
{
    EtwBudget *b = current();
    if (b == NULL) {
        return want;
    }
    if (__atomic_load_n(&b->stopped, __ATOMIC_ACQUIRE) != 0) {
        return 0;
    }
    int shared = __atomic_load_n(&writable, __ATOMIC_ACQUIRE);
    uint64_t claimed = __atomic_load_n(&b->claimed, __ATOMIC_RELAXED);
    if (!shared) {
        claimed += __atomic_load_n(&own_claims, __ATOMIC_RELAXED);
    }
    for (;;) {
        uint64_t limit = __atomic_load_n(&b->limit, __ATOMIC_RELAXED);
        uint64_t used = claimed + __atomic_load_n(&b->counted, __ATOMIC_RELAXED);
        if (share != 0) {
            used += limit / share;
        }
        uint64_t left = limit == 0 ? want : used >= limit ? 0 : limit - used;
        uint64_t take = want < left ? want : left;
        if (take < least) {
            return 0;
        }
        if (!shared) {
            __atomic_fetch_add(&own_claims, take, __ATOMIC_RELAXED);
            return take;
        }
        if (__atomic_compare_exchange_n(&b->claimed, &claimed, claimed + take, 1,
                                        __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
            return take;
        }
    }
}

void
etw_budget_refuse(int process)
{
    EtwBudget *b = current();
    if (b != NULL && __atomic_load_n(&writable, __ATOMIC_ACQUIRE)) {
        __atomic_fetch_add(process ? &b->processes_refused : &b->threads_refused, 1,
                           __ATOMIC_RELAXED);
    }
}

void
etw_budget_unwritable_thread(void)
{
    EtwBudget *b = current();
    if (b != NULL && __atomic_load_n(&writable, __ATOMIC_ACQUIRE)) {
        __atomic_fetch_add(&b->threads_unwritable, 1, __ATOMIC_RELAXED);
    }
}

int
etw_budget_writable(void)
{
    return current() != NULL && __atomic_load_n(&writable, __ATOMIC_ACQUIRE);
}

int
etw_budget_add_unrecorded(uint64_t events)
{
    EtwBudget *b = current();
    if (b == NULL || !__atomic_load_n(&writable, __ATOMIC_ACQUIRE)) {
        return 0;
    }
    __atomic_fetch_add(&b->events_unrecorded, events, __ATOMIC_RELAXED);
    return 1;
}

static int
room(const struct statvfs *v, uint64_t bytes, uint64_t *free_bytes, uint64_t *reserve)
{
    uint64_t total = (uint64_t)v->f_blocks * v->f_frsize;
    uint64_t keep = total / 100 * ETW_RESERVE_PERCENT;
    if (keep > ETW_RESERVE_MAX) {
        keep = ETW_RESERVE_MAX;
    }
    uint64_t have = (uint64_t)v->f_bavail * v->f_frsize;
    if (free_bytes != NULL) {
        *free_bytes = have;
    }
    if (reserve != NULL) {
        *reserve = keep;
    }
    if (total == 0) {
        return 0;   /* a file system that does not say (some FUSE): cannot tell */
    }
    /* Space is taken in blocks: a write at any offset takes at most one
     * block more than its size rounds up to. */
    uint64_t block = v->f_frsize ? v->f_frsize : 4096;
    uint64_t need = (bytes + block - 1) / block * block + block;
    return have >= keep && need <= have - keep ? 0 : ETW_STOP_RESERVE;
}

int
etw_budget_room(int fd, uint64_t bytes, uint64_t *free_bytes, uint64_t *reserve)
{
    struct statvfs v;
    if (fstatvfs(fd, &v) != 0) {
        return 0;
    }
    return room(&v, bytes, free_bytes, reserve);
}

/* Held from a room check to the end of the write it allowed. */
static pthread_mutex_t room_lock = PTHREAD_MUTEX_INITIALIZER;

int
etw_budget_room_begin(int fd, uint64_t bytes)
{
    pthread_mutex_lock(&room_lock);
    int why = etw_budget_room(fd, bytes, NULL, NULL);
    if (why != 0) {
        pthread_mutex_unlock(&room_lock);
    }
    return why;
}

void
etw_budget_room_end(void)
{
    pthread_mutex_unlock(&room_lock);
}

void
etw_budget_after_fork_child(void)
{
    pthread_mutex_init(&room_lock, NULL);
}

int
etw_budget_room_at(const char *path, uint64_t bytes, uint64_t *free_bytes, uint64_t *reserve)
{
    struct statvfs v;
    if (statvfs(path, &v) != 0) {
        return 0;
    }
    return room(&v, bytes, free_bytes, reserve);
}

void
etw_budget_size_text(char *buf, size_t size, uint64_t bytes)
{
    static const char *units[] = {"TiB", "GiB", "MiB", "KiB"};
    for (int i = 0; i < 4; i++) {
        uint64_t scale = UINT64_C(1) << (10 * (4 - i));
        if (bytes >= scale) {
            if (bytes % scale == 0) {
                snprintf(buf, size, "%llu %s", (unsigned long long)(bytes / scale), units[i]);
            }
            else {
                snprintf(buf, size, "%.1f %s", (double)bytes / (double)scale, units[i]);
            }
            return;
        }
    }
    snprintf(buf, size, "%llu bytes", (unsigned long long)bytes);
}
