/* What open_trace reads events with (reader.c): the Event type, a
 * stream's Reader, and Merge, the streams in time order. */
#ifndef ETWTRACE_DECODER_READER_H
#define ETWTRACE_DECODER_READER_H

#include "cursor.h"

extern PyTypeObject EventType, ReaderType, MergeType;

/* Interns the events' and fields' names once; 0, or -1 with an error. */
int make_names(void);
PyObject *configure(PyObject *module, PyObject *error_class);

#endif
