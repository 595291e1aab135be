/* The TSC scale of clock.h.  Taken from the kernel where it offers it: the
 * user page of a perf event says whether user space may time with the TSC
 * (cap_user_time) and gives the kernel's own cycles-to-ns factor.  Under
 * KVM (sched_clock is kvm-clock) the kernel does not offer it, so where the
 * CPU says its TSC is invariant the factor is measured against
 * CLOCK_MONOTONIC over 2 ms, once per process. */
#define _GNU_SOURCE
#include "clock.h"

#include <linux/perf_event.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

EtwTscScale etw_tsc_scale;

#if ETW_ARCH_HAVE_CYCLE_COUNTER
static int
scale_from_perf_page(EtwTscScale *scale)
{
    struct perf_event_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.size = sizeof(attr);
    attr.type = PERF_TYPE_SOFTWARE;
    attr.config = PERF_COUNT_SW_DUMMY;
    attr.exclude_kernel = 1;
    attr.exclude_hv = 1;
    int fd = (int)syscall(SYS_perf_event_open, &attr, 0, -1, -1, PERF_FLAG_FD_CLOEXEC);
    if (fd < 0) {
        return -1;
    }
    long page = sysconf(_SC_PAGESIZE);
    void *map = mmap(NULL, (size_t)page, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        return -1;
    }
    const volatile struct perf_event_mmap_page *pc = map;
    int rc = -1;
    uint32_t seq;
    do {
        seq = pc->lock;
        __sync_synchronize();
        if (pc->cap_user_time && pc->time_mult != 0 && pc->time_shift < 64) {
            scale->mult = pc->time_mult;
            scale->shift = pc->time_shift;
            rc = 0;
        }
        __sync_synchronize();
    } while (pc->lock != seq);
    munmap(map, (size_t)page);
    return rc;
}

/* A (TSC, ns) pair read as close together as possible. */
static void
read_pair(uint64_t *tsc, uint64_t *ns)
{
    uint64_t best = UINT64_MAX;
    for (int i = 0; i < 5; i++) {
        uint64_t before = etw_arch_cycles();
        uint64_t now = etw_now_ns();
        uint64_t after = etw_arch_cycles();
        if (after - before < best) {
            best = after - before;
            *tsc = before + (after - before) / 2;
            *ns = now;
        }
    }
}

static int
scale_from_calibration(EtwTscScale *scale)
{
    uint64_t tsc0, ns0, tsc1, ns1;
    read_pair(&tsc0, &ns0);
    do {
        read_pair(&tsc1, &ns1);
    } while (ns1 - ns0 < 2000000);
    if (tsc1 <= tsc0) {
        return -1;
    }
    /* ns per cycle in 1.31 fixed point; needs a TSC faster than 0.5 GHz. */
    unsigned __int128 mult = ((unsigned __int128)(ns1 - ns0) << 31) / (tsc1 - tsc0);
    if (mult == 0 || mult > UINT32_MAX) {
        return -1;
    }
    scale->mult = (uint32_t)mult;
    scale->shift = 31;
    return 0;
}
#endif

void
etw_clock_init(void)
{
    static int done;
    if (done) {
        return;
    }
    done = 1;
#if ETW_ARCH_HAVE_CYCLE_COUNTER
    const char *choice = getenv("ETWTRACE_CLOCK");
    if (choice != NULL && strcmp(choice, "monotonic") == 0) {
        return;
    }
    EtwTscScale scale = {0, 0, 0};
    /* A 2^26-cycle delta times a 32-bit mult stays below 2^58: no overflow. */
    if (scale_from_perf_page(&scale) == 0 ||
        (etw_arch_cycles_invariant() && scale_from_calibration(&scale) == 0)) {
        scale.usable = 1;
        etw_tsc_scale = scale;
    }
#endif
}
