/* The fold of a stream's pushes and pops into a call tree (fold.c), and
 * the stacks open at given times. */
#ifndef ETWTRACE_DECODER_FOLD_H
#define ETWTRACE_DECODER_FOLD_H

#include "cursor.h"

PyObject *fold_data(PyObject *path, const unsigned char *data, size_t size, int timeline,
                    int mapped, int version, const unsigned char *tail, size_t tail_size,
                    int timeline_fd, uint64_t from, uint64_t to, int partial);
PyObject *fold(PyObject *module, PyObject *args, PyObject *kwargs);
PyObject *stacks_data(const unsigned char *data, size_t size, PyObject *seq, int mapped,
                      int version, const unsigned char *tail, size_t tail_size);
PyObject *stacks_at(PyObject *module, PyObject *args, PyObject *kwargs);

#endif
