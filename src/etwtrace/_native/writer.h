/* The packet writer: a background thread that writes the recorder's full
 * packets to their stream files, so that a traced thread does not pay for
 * the write(2) (the kernel's copy into the page cache was about 5 ns per
 * call of fib in instrumented mode here, 17% of the run on fresh pages).
 *
 * Every packet is submitted with the file offset it belongs at, so packets
 * can be written in any order and more than once (after a crash) and the
 * file still comes out right.  When the thread cannot be started, or its
 * queue is full, packets are written by the submitting thread or it waits:
 * nothing is dropped for speed. */
#ifndef ETWTRACE_WRITER_H
#define ETWTRACE_WRITER_H

#include <stddef.h>
#include <stdint.h>

/* Writes all `size` bytes at `offset` (retrying short writes and EINTR);
 * 0, or -1 with errno set.  Async-signal-safe. */
int etw_pwrite_all(int fd, const uint8_t *p, size_t size, uint64_t offset);

/* A packet buffer of ETW_PACKET_BYTES, reused from written packets when one
 * is free; NULL when out of memory. */
uint8_t *etw_packet_alloc(void);

/* Hands `packet` (from etw_packet_alloc) to the writer: `size` bytes go to
 * `fd` at `offset`, and the buffer is reused afterwards.  Called holding
 * the GIL or the recorder's registry lock, never from a signal handler. */
void etw_writer_submit(int fd, uint64_t offset, uint8_t *packet, size_t size);

/* Returns once every packet submitted so far is written (before a file is
 * closed, and when a flush must be readable at once). */
void etw_writer_drain(void);

/* From a fatal-signal handler: writes every packet still queued, unless the
 * queue is busy.  Only async-signal-safe calls. */
void etw_writer_flush_on_crash(void);

/* In a forked child: the queue and thread are the parent's; start afresh. */
void etw_writer_after_fork_child(void);

/* For tests only: while paused, the thread leaves every job queued (so a
 * crash flush has queued packets to write).  A drain waits for resume. */
void etw_writer_pause(int pause);

/* Packets whose write failed (disk full, closed file). */
uint64_t etw_writer_failures(void);

#endif
