/* The one clock every output uses: CLOCK_MONOTONIC in nanoseconds, the clock
 * `perf record -k CLOCK_MONOTONIC` stamps its samples with.
 *
 * Reading it through the vDSO costs about twice a TSC read (measured in
 * docs/BENCHMARKS.md), too much for two events per call in instrumented
 * mode, so where the machine has a cycle counter to scale (arch.h: the
 * TSC of x86-64) a stream can also derive it from that: each stream keeps an
 * anchor pair (TSC, ns) read
 * together, and scales TSC deltas from it with the kernel's own TSC-to-ns
 * factor.  Anchors are renewed every 2^26 cycles (tens of ms), which bounds
 * any drift from CLOCK_MONOTONIC's NTP slewing to microseconds. */
#ifndef ETWTRACE_CLOCK_H
#define ETWTRACE_CLOCK_H

#include <stdint.h>
#include <time.h>

#include "arch.h"

static inline uint64_t
etw_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ns = cycles * mult >> shift; usable = 0 when the TSC is not a stable
 * clock here (or the machine has none, or ETWTRACE_CLOCK=monotonic). */
typedef struct {
    uint32_t mult;
    uint32_t shift;
    int usable;
} EtwTscScale;

extern EtwTscScale etw_tsc_scale;

/* Sets etw_tsc_scale, once per process. */
void etw_clock_init(void);

#define ETW_ANCHOR_SPAN (1ull << 26)

typedef struct {
    uint64_t tsc;
    uint64_t ns;
} EtwClockAnchor;

static inline uint64_t
etw_clock_read(EtwClockAnchor *anchor)
{
#ifdef ETWTRACE_BENCH_NO_CLOCK
    /* Only for bench/recorder_cost.py, which builds a copy this way to
     * measure what the clock read costs: time advances 20 ns per read. */
    if (anchor->ns == 0) {
        anchor->ns = etw_now_ns();
    }
    return anchor->ns += 20;
#endif
#if ETW_ARCH_HAVE_CYCLE_COUNTER
    if (etw_tsc_scale.usable) {
        uint64_t delta = etw_arch_cycles() - anchor->tsc;
        if (__builtin_expect(delta < ETW_ANCHOR_SPAN, 1)) {
            return anchor->ns + ((delta * etw_tsc_scale.mult) >> etw_tsc_scale.shift);
        }
        anchor->tsc = etw_arch_cycles();
        anchor->ns = etw_now_ns();
        return anchor->ns;
    }
#endif
    (void)anchor;
    return etw_now_ns();
}

#endif
