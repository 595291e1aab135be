/* The home slot of a pointer key in an open-addressing table of `cap`
 * (a power of two) slots: the tables keyed by an object's address
 * (c_functions.c, tasks.c).  Addresses are aligned and close together, so
 * their bits are mixed first. */
#ifndef ETWTRACE_POINTER_SLOT_H
#define ETWTRACE_POINTER_SLOT_H

#include <stddef.h>
#include <stdint.h>

static inline size_t
etw_pointer_slot(const void *key, size_t cap)
{
    uintptr_t h = (uintptr_t)key;
    h ^= h >> 17;
    h *= (uintptr_t)0x9E3779B97F4A7C15ull;
    return (size_t)(h >> 7) & (cap - 1);
}

#endif
