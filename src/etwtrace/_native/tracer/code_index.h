/* Where the tracer keeps the record of each code object it met.
 *
 * Builds with a GIL keep it in the code object's extra slot (PEP 523): one
 * load on every call.  Free-threaded builds cannot: CPython writes that
 * slot with plain stores, so a thread reading it while another sets it is
 * a data race.  They keep an open-addressing table keyed by the code
 * object's address instead: lookups take no lock (a key is published
 * after its record, and a full table is replaced by a copy, never changed
 * in place; old copies are kept for readers still in them, and removed
 * entries are taken again so that copies are rare),
 * insertions take `etw_code_index`'s lock, and a code watcher drops an
 * entry (and frees its record) when its code object is destroyed. */
#ifndef ETWTRACE_CODE_INDEX_H
#define ETWTRACE_CODE_INDEX_H

#include "compat.h"

/* Sets up the index (once per process); `free_record` frees a record when
 * its code object goes.  0, or -1 with an exception set. */
int etw_code_index_init(void (*free_record)(void *));

/* Gives `co` its record (the caller serialises setters).  0, or -1 with an
 * exception set. */
int etw_code_index_set(PyCodeObject *co, void *record);

#ifdef ETW_FREE_THREADED

typedef struct {
    PyCodeObject *key;       /* NULL: empty; ETW_CODE_GONE: a removed entry */
    void *record;
} EtwCodeSlot;

typedef struct EtwCodeTable {
    struct EtwCodeTable *older;
    size_t capacity;         /* a power of two */
    size_t used;             /* keys and removed entries */
    EtwCodeSlot slots[];
} EtwCodeTable;

#define ETW_CODE_GONE ((PyCodeObject *)1)

extern EtwCodeTable *etw_code_table;

static inline size_t
etw_code_slot_of(const PyCodeObject *co, size_t capacity)
{
    uintptr_t h = (uintptr_t)co;
    h ^= h >> 21;
    h *= (uintptr_t)0x9E3779B97F4A7C15ull;
    return (size_t)(h >> 17) & (capacity - 1);
}

static inline void *
etw_code_index_get(PyCodeObject *co)
{
    EtwCodeTable *t = __atomic_load_n(&etw_code_table, __ATOMIC_ACQUIRE);
    if (t == NULL) {
        return NULL;
    }
    for (size_t i = etw_code_slot_of(co, t->capacity);; i = (i + 1) & (t->capacity - 1)) {
        PyCodeObject *key = __atomic_load_n(&t->slots[i].key, __ATOMIC_ACQUIRE);
        if (key == co) {
            return __atomic_load_n(&t->slots[i].record, __ATOMIC_RELAXED);
        }
        if (key == NULL) {
            return NULL;
        }
    }
}

#else

extern Py_ssize_t etw_code_extra_index;

static inline void *
etw_code_index_get(PyCodeObject *co)
{
    return etw_code_get_extra(co, etw_code_extra_index);
}

#endif

#endif
