/* A capture's budget and the file system's reserve: recording stops, for
 * every process of the capture at once, before the capture grows past its
 * --max-size or the file system's free space falls to its reserve.
 *
 * The budget is a page shared by the capture's processes: the file
 * CAPTURE/ctf/.budget (EtwBudget, trace_format.h), made by the launcher or
 * the session (etwtrace/trace/budget.py).  A writer claims each packet (64 KiB)
 * before it opens it, with one atomic operation on that page; nothing is
 * done per event.  The free space is read (fstatvfs) by the copier before
 * it writes each packet, and when a ring is made.
 *
 * The page sits at one address for the life of the process: each
 * capture's file is mapped over it (MAP_FIXED), and a capture without one
 * gets a private zero page (no limit; a stop is this process's alone).
 * So a thread still holding the address from an earlier capture never
 * touches unmapped memory.  Only a file of this user, or root's, is
 * mapped: shared and writable when this process may write it, else a
 * private mapping that is only read (a process of another user in root's
 * session sees the limit and the stop, and adds its own claims to what
 * the page says; the session counts its bytes from outside). */
#ifndef ETWTRACE_BUDGET_H
#define ETWTRACE_BUDGET_H

#include <stddef.h>
#include <stdint.h>

#include "trace_format.h"

/* Maps the budget of the capture in `capture_dir` (its ctf/.budget), or a
 * zero page when it has none that may be used.  Called with recording
 * stopped or starting (the recorder's lock held). */
void etw_budget_open(const char *capture_dir);

/* ETW_STOP_* once the capture stopped recording, else 0. */
int etw_budget_stopped(void);

/* Claims `bytes` more for the capture: 0, or the ETW_STOP_* reason it
 * cannot have them (the capture is then stopped; `*first` says whether
 * this call stopped it). */
int etw_budget_claim(uint64_t bytes, int *first);

/* Claims as much of `want` bytes as the limit leaves, less the last
 * 1/`share` of the limit (0: none), if that is at least `least`: the
 * bytes claimed, or 0 (nothing claimed). */
uint64_t etw_budget_claim_up_to(uint64_t want, uint64_t least, unsigned share);

/* Stops the capture for `why` (ETW_STOP_*); returns 1 when this call
 * stopped it, 0 when it had stopped already. */
int etw_budget_stop(int why, uint64_t free_bytes, uint64_t reserve);

/* Counts a thread (or process) that was not recorded: it began after the
 * capture stopped. */
void etw_budget_refuse(int process);

/* Counts a thread that was not recorded because its trace files could
 * not be made (said by the recorder when it happened). */
void etw_budget_unwritable_thread(void);

/* Counts events lost by a thread whose trace has no packet to count them
 * in (it began after the capture stopped, or has no files); 0 when it cannot (the budget
 * is read only, or there is none). */
int etw_budget_add_unrecorded(uint64_t events);

/* Whether this process writes the capture's budget (else the session
 * counts it from outside). */
int etw_budget_writable(void);

/* Whether the launcher or the session says at the end what the capture
 * lost (so its processes need not, each). */
int etw_budget_summarized(void);

/* The capture's --max-size in bytes (0: none). */
uint64_t etw_budget_limit(void);

/* 0 when the file system of `fd` keeps its reserve free after `bytes`
 * more are written to it, else ETW_STOP_RESERVE.  `*free_bytes` and
 * `*reserve` (when not NULL) receive what it has and keeps. */
int etw_budget_room(int fd, uint64_t bytes, uint64_t *free_bytes, uint64_t *reserve);

/* etw_budget_room for a write this process makes now: on 0, the caller
 * writes, then calls etw_budget_room_end; until then no other writer of
 * this process checks (so two cannot both take the last room).  Writers
 * of other processes may: each can pass the reserve by its one write. */
int etw_budget_room_begin(int fd, uint64_t bytes);
void etw_budget_room_end(void);

/* In a forked child, before anything else runs there. */
void etw_budget_after_fork_child(void);

/* The same for the file system of `path`. */
int etw_budget_room_at(const char *path, uint64_t bytes, uint64_t *free_bytes,
                       uint64_t *reserve);

/* Writes `bytes` for people ("1.5 MiB") into `buf`. */
void etw_budget_size_text(char *buf, size_t size, uint64_t bytes);

#endif
