/* The code objects' records.  See code_index.h. */
#include "code_index.h"

#include <stdint.h>
#include <stdlib.h>

#ifdef ETW_FREE_THREADED

EtwCodeTable *etw_code_table;
static PyMutex lock;
static void (*free_record_func)(void *);
static int watcher = -1;

/* Holding `lock`: a table with room for one more key. */
static EtwCodeTable *
table_with_room(void)
{
    EtwCodeTable *old = etw_code_table;
    if (old != NULL && (old->used + 1) * 2 <= old->capacity) {
        return old;
    }
    size_t live = 0;
    for (size_t i = 0; old != NULL && i < old->capacity; i++) {
        live += old->slots[i].key != NULL && old->slots[i].key != ETW_CODE_GONE;
    }
    size_t cap = 1024;
    while (cap < (live + 1) * 4) {
        cap *= 2;
    }
    EtwCodeTable *fresh = calloc(1, sizeof(EtwCodeTable) + cap * sizeof(EtwCodeSlot));
    if (fresh == NULL) {
        return NULL;
    }
    fresh->capacity = cap;
    fresh->older = old;
    for (size_t i = 0; old != NULL && i < old->capacity; i++) {
        PyCodeObject *key = old->slots[i].key;
        if (key != NULL && key != ETW_CODE_GONE) {
            size_t j = etw_code_slot_of(key, cap);
            while (fresh->slots[j].key != NULL) {
                j = (j + 1) & (cap - 1);
            }
            fresh->slots[j] = old->slots[i];
            fresh->used++;
        }
    }
    __atomic_store_n(&etw_code_table, fresh, __ATOMIC_RELEASE);
    return fresh;
}

/* A code object is being destroyed: its entry goes, and its record. */
static int
on_code_event(PyCodeEvent event, PyCodeObject *co)
{
    if (event != PY_CODE_EVENT_DESTROY) {
        return 0;
    }
    void *record = NULL;
    PyMutex_Lock(&lock);
    EtwCodeTable *t = etw_code_table;
    for (size_t i = t ? etw_code_slot_of(co, t->capacity) : 0; t != NULL;
         i = (i + 1) & (t->capacity - 1)) {
        PyCodeObject *key = t->slots[i].key;
        if (key == co) {
            record = t->slots[i].record;
            __atomic_store_n(&t->slots[i].key, ETW_CODE_GONE, __ATOMIC_RELEASE);
            break;
        }
        if (key == NULL) {
            break;
        }
    }
    PyMutex_Unlock(&lock);
    if (record != NULL && free_record_func != NULL) {
        free_record_func(record);
    }
    return 0;
}

int
etw_code_index_init(void (*free_record)(void *))
{
    if (watcher >= 0) {
        return 0;
    }
    free_record_func = free_record;
    watcher = PyCode_AddWatcher(on_code_event);
    return watcher < 0 ? -1 : 0;
}

int
etw_code_index_set(PyCodeObject *co, void *record)
{
    PyMutex_Lock(&lock);
    EtwCodeTable *t = table_with_room();
    if (t != NULL) {
        /* A removed entry on co's probe run is taken again: where code
         * objects come and go (exec, lambdas), the table would otherwise
         * fill with removed entries and be copied again and again, each
         * old copy kept for lock-free readers.  Lookups pass removed and
         * reused entries alike, and stop only at an empty one. */
        size_t i = etw_code_slot_of(co, t->capacity);
        size_t reuse = SIZE_MAX;
        while (t->slots[i].key != NULL && t->slots[i].key != co) {
            if (t->slots[i].key == ETW_CODE_GONE && reuse == SIZE_MAX) {
                reuse = i;
            }
            i = (i + 1) & (t->capacity - 1);
        }
        if (t->slots[i].key == NULL) {
            if (reuse != SIZE_MAX) {
                i = reuse;
            }
            else {
                t->used++;
            }
        }
        __atomic_store_n(&t->slots[i].record, record, __ATOMIC_RELAXED);
        __atomic_store_n(&t->slots[i].key, co, __ATOMIC_RELEASE);
    }
    PyMutex_Unlock(&lock);
    if (t == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

#else

Py_ssize_t etw_code_extra_index = -1;

int
etw_code_index_init(void (*free_record)(void *))
{
    if (etw_code_extra_index >= 0) {
        return 0;
    }
    etw_code_extra_index = etw_request_code_extra_index(free_record);
    if (etw_code_extra_index < 0) {
        PyErr_SetString(PyExc_RuntimeError, "etwtrace: no code extra slot available");
        return -1;
    }
    return 0;
}

int
etw_code_index_set(PyCodeObject *co, void *record)
{
    return etw_code_set_extra((PyObject *)co, etw_code_extra_index, record);
}

#endif
