/* The packet copier: one background thread per process that copies full
 * packets from the streams' rings (recorder.c) into their stream files, so
 * that a traced thread never pays for write(2) or for new page-cache pages.
 *
 * A packet stays in its ring slot, and the slot stays busy, until the copy
 * is done: a process that dies first leaves it in the ring file, where
 * readers and etwtrace.trace.ctf.finalize() find it.  The copier never keeps a
 * descriptor: each copy opens the stream file by name and checks it is the
 * file the recorder created. */
#ifndef ETWTRACE_COPIER_H
#define ETWTRACE_COPIER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* One copy: `size` bytes at `packet` to the file `path` (identity dev/ino)
 * at `offset`.  `busy` is cleared once
 * done; `error` receives the errno of a failed copy, or -ETW_STOP_RESERVE
 * for one not made because the file system keeps only its reserve free
 * (budget.h). */
typedef struct {
    const char *path;
    dev_t dev;
    ino_t ino;
    const uint8_t *packet;
    size_t size;
    uint64_t offset;
    uint8_t *busy;
    int *error;
} EtwCopy;

/* Queues a copy (the copier thread starts with the first).  When the
 * thread cannot be started, the copy is made here.  Never from a signal
 * handler. */
void etw_copier_submit(const EtwCopy *copy);

/* Returns once `*busy` is clear (the slot's copy is done). */
void etw_copier_wait(uint8_t *busy);

/* In a forked child: the queue and thread are the parent's; start afresh
 * (the parent copies what it queued). */
void etw_copier_after_fork_child(void);

#endif
