/* The one clock every output uses: CLOCK_MONOTONIC in nanoseconds, the clock
 * `perf record -k CLOCK_MONOTONIC` stamps its samples with. */
#ifndef ETWTRACE_CLOCK_H
#define ETWTRACE_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline uint64_t
etw_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

#endif
