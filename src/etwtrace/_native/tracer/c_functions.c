/* The C-callable registry.  See c_functions.h.
 *
 * An open-addressing table keyed by PyMethodDef address: method definitions
 * are static or live as long as their type, so the address names one C
 * callable for the life of the process and needs no reference.
 *
 * Lookups take no lock: an entry's key is published last (release order),
 * and a full table is replaced by a larger copy rather than changed in
 * place; the old copies are kept (readers may still be in them; each is
 * half the size of the next, so all of them take no more than the last).
 * Insertions and re-descriptions take `lock`. */
#include "c_functions.h"

#include "functions.h"
#include "pointer_slot.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    const PyMethodDef *def;  /* NULL: empty slot; written last */
    uint32_t id;
    uint32_t epoch;          /* session its PythonFunction event was emitted in */
    /* Its SourceFile and Name as first described ("file\0name"), for
     * rundowns, which have no callable object to ask; NULL if out of
     * memory.  Shared by the copies of the entry in older tables. */
    char *names;
    uint32_t file_len, name_len;
} Entry;

typedef struct Table {
    struct Table *older;     /* kept for readers still probing it */
    size_t capacity;         /* a power of two */
    size_t count;
    Entry entries[];
} Table;

static Table *table;         /* atomic */
static EtwLock lock = ETW_LOCK_INIT;

/* The entry of `def` in `t`, or the empty slot where it would go. */
static Entry *
find(Table *t, const PyMethodDef *def)
{
    for (size_t i = etw_pointer_slot(def, t->capacity);; i = (i + 1) & (t->capacity - 1)) {
        const PyMethodDef *key = __atomic_load_n(&t->entries[i].def, __ATOMIC_ACQUIRE);
        if (key == def || key == NULL) {
            return &t->entries[i];
        }
    }
}

/* Holding `lock`: a table with room for one more entry. */
static Table *
table_with_room(void)
{
    Table *old = table;
    if (old != NULL && (old->count + 1) * 2 <= old->capacity) {
        return old;
    }
    size_t cap = old != NULL ? old->capacity * 2 : 256;
    Table *fresh = calloc(1, sizeof(Table) + cap * sizeof(Entry));
    if (fresh == NULL) {
        return NULL;
    }
    fresh->capacity = cap;
    fresh->older = old;
    if (old != NULL) {
        for (size_t i = 0; i < old->capacity; i++) {
            if (old->entries[i].def != NULL) {
                *find(fresh, old->entries[i].def) = old->entries[i];
            }
        }
        fresh->count = old->count;
    }
    __atomic_store_n(&table, fresh, __ATOMIC_RELEASE);
    return fresh;
}

/* SourceFile of a C callable: its module's name, or for a method the module
 * of its type (e.g. "builtins" for list.append). */
static PyObject *
module_name_of(PyCFunctionObject *fn)
{
    if (fn->m_module != NULL && PyUnicode_Check(fn->m_module)) {
        return Py_NewRef(fn->m_module);
    }
    if (fn->m_self != NULL && !PyModule_Check(fn->m_self)) {
        PyObject *type = PyType_Check(fn->m_self) ? fn->m_self : (PyObject *)Py_TYPE(fn->m_self);
        PyObject *name = PyObject_GetAttrString(type, "__module__");
        if (name != NULL && PyUnicode_Check(name)) {
            return name;
        }
        Py_XDECREF(name);
        PyErr_Clear();
    }
    return PyUnicode_FromString("builtins");
}

/* Keeps the names an entry was described with (see Entry). */
static void
keep_names(Entry *e, const char *file, size_t file_len, const char *name, size_t name_len)
{
    if (e->names != NULL || file_len > UINT32_MAX || name_len > UINT32_MAX) {
        return;
    }
    char *names = malloc(file_len + name_len + 2);
    if (names == NULL) {
        return;
    }
    memcpy(names, file, file_len);
    names[file_len] = '\0';
    memcpy(names + file_len + 1, name, name_len);
    names[file_len + 1 + name_len] = '\0';
    e->file_len = (uint32_t)file_len;
    e->name_len = (uint32_t)name_len;
    e->names = names;
}

static void
describe(PyCFunctionObject *fn, Entry *e, EtwThread *t)
{
    PyObject *exc_type, *exc_value, *exc_tb;
    PyErr_Fetch(&exc_type, &exc_value, &exc_tb);
    PyObject *qualname = PyObject_GetAttrString((PyObject *)fn, "__qualname__");
    PyObject *module = module_name_of(fn);
    Py_ssize_t name_len = 0, file_len = 0;
    const char *name = qualname && PyUnicode_Check(qualname)
        ? PyUnicode_AsUTF8AndSize(qualname, &name_len) : NULL;
    const char *file = module && PyUnicode_Check(module)
        ? PyUnicode_AsUTF8AndSize(module, &file_len) : NULL;
    if (name == NULL || file == NULL) {
        PyErr_Clear();
    }
    if (file == NULL) {
        file = "builtins";
        file_len = 8;
    }
    if (name == NULL) {
        name = fn->m_ml->ml_name;
        name_len = (Py_ssize_t)strlen(name);
    }
    etw_emit_function(t, e->id, 0, 0, 0, 0, file, (size_t)file_len, name, (size_t)name_len);
    keep_names(e, file, (size_t)file_len, name, (size_t)name_len);
    Py_XDECREF(qualname);
    Py_XDECREF(module);
    PyErr_Restore(exc_type, exc_value, exc_tb);
}

uint32_t
etw_c_function_id(PyObject *callable, EtwThread *t)
{
    if (!PyCFunction_Check(callable)) {
        return 0;
    }
    PyCFunctionObject *fn = (PyCFunctionObject *)callable;
    uint32_t epoch = etw_current_epoch();
    Table *current = __atomic_load_n(&table, __ATOMIC_ACQUIRE);
    if (current != NULL) {
        Entry *e = find(current, fn->m_ml);
        if (__atomic_load_n(&e->def, __ATOMIC_ACQUIRE) != NULL &&
            __atomic_load_n(&e->epoch, __ATOMIC_ACQUIRE) == epoch) {
            return e->id;
        }
    }
    etw_lock(&lock);
    uint32_t id = 0;
    Table *tb = table_with_room();
    if (tb != NULL) {
        Entry *e = find(tb, fn->m_ml);
        if (e->def == NULL) {
            e->id = etw_function_next_id();
            e->epoch = 0;
            tb->count++;
            __atomic_store_n(&e->def, fn->m_ml, __ATOMIC_RELEASE);
        }
        id = e->id;
        if (__atomic_load_n(&e->epoch, __ATOMIC_RELAXED) != epoch) {
            describe(fn, e, t);
            __atomic_store_n(&e->epoch, epoch, __ATOMIC_RELEASE);
        }
    }
    etw_unlock(&lock);
    return id;
}

void
etw_c_functions_rundown(EtwThread *t)
{
    etw_lock(&lock);
    uint32_t epoch = etw_current_epoch();
    Table *tb = table;
    for (size_t i = 0; tb != NULL && i < tb->capacity; i++) {
        Entry *e = &tb->entries[i];
        if (e->def == NULL || e->names == NULL) {
            continue;   /* (never described: it is described at its next call) */
        }
        etw_emit_function(t, e->id, 0, 0, 0, 0, e->names, e->file_len,
                          e->names + e->file_len + 1, e->name_len);
        __atomic_store_n(&e->epoch, epoch, __ATOMIC_RELEASE);
    }
    etw_unlock(&lock);
}
