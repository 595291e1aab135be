/* The C-callable registry.  See c_functions.h.
 *
 * An open-addressing table keyed by PyMethodDef address: method definitions
 * are static or live as long as their type, so the address names one C
 * callable for the life of the process and needs no reference. */
#include "c_functions.h"

#include "functions.h"

#include <stdlib.h>

typedef struct {
    const PyMethodDef *def;  /* NULL: empty slot */
    uint32_t id;
    uint32_t epoch;          /* session its PythonFunction event was emitted in */
} Entry;

static Entry *table;
static size_t capacity;      /* a power of two */
static size_t count;

static size_t
slot_of(const PyMethodDef *def, size_t cap)
{
    uintptr_t h = (uintptr_t)def;
    h ^= h >> 17;
    h *= (uintptr_t)0x9E3779B97F4A7C15ull;
    return (size_t)(h >> 7) & (cap - 1);
}

static Entry *
find(const PyMethodDef *def)
{
    if (table == NULL) {
        return NULL;
    }
    for (size_t i = slot_of(def, capacity);; i = (i + 1) & (capacity - 1)) {
        if (table[i].def == def || table[i].def == NULL) {
            return &table[i];
        }
    }
}

static int
grow(void)
{
    size_t new_cap = capacity ? capacity * 2 : 256;
    Entry *fresh = calloc(new_cap, sizeof(Entry));
    if (fresh == NULL) {
        return -1;
    }
    for (size_t i = 0; i < capacity; i++) {
        if (table[i].def != NULL) {
            size_t j = slot_of(table[i].def, new_cap);
            while (fresh[j].def != NULL) {
                j = (j + 1) & (new_cap - 1);
            }
            fresh[j] = table[i];
        }
    }
    free(table);
    table = fresh;
    capacity = new_cap;
    return 0;
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

static void
describe(PyCFunctionObject *fn, uint32_t id, EtwThread *t)
{
    PyObject *exc_type, *exc_value, *exc_tb;
    PyErr_Fetch(&exc_type, &exc_value, &exc_tb);
    PyObject *qualname = PyObject_GetAttrString((PyObject *)fn, "__qualname__");
    PyObject *module = module_name_of(fn);
    const char *name = qualname && PyUnicode_Check(qualname) ? PyUnicode_AsUTF8(qualname) : NULL;
    const char *file = module && PyUnicode_Check(module) ? PyUnicode_AsUTF8(module) : NULL;
    if (name == NULL || file == NULL) {
        PyErr_Clear();
    }
    etw_emit_function(t, id, 0, 0, 0, 0, file ? file : "builtins",
                      name ? name : fn->m_ml->ml_name);
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
    Entry *e = find(fn->m_ml);
    if (e != NULL && e->def != NULL && e->epoch == etw_epoch) {
        return e->id;
    }
    if (e == NULL || e->def == NULL) {
        if ((count + 1) * 2 > capacity && grow() < 0) {
            return 0;
        }
        e = find(fn->m_ml);
        e->def = fn->m_ml;
        e->id = etw_function_next_id();
        count++;
    }
    e->epoch = etw_epoch;
    describe(fn, e->id, t);
    return e->id;
}

void
etw_c_functions_clear(void)
{
    free(table);
    table = NULL;
    capacity = count = 0;
}
