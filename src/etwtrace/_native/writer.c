/* The packet writer.  See writer.h.
 *
 * One thread per process, started with the first packet, waits on a small
 * queue.  The oldest job stays queued while it is written, so a crash flush
 * that runs meanwhile writes it again (same bytes, same offset) rather than
 * losing it.  The thread blocks every signal: signals are for the threads
 * that run Python. */
#define _GNU_SOURCE
#include "writer.h"

#include "recorder.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#define QUEUE_LEN 32   /* 2 MiB of packets in flight at most */
#define FREE_MAX 8     /* written buffers kept for reuse */
/* Packets queued before the writer is woken: each wake-up is a futex call
 * on the traced thread (and an interrupt on the writer's CPU), about 2 ns
 * per event when done per packet. */
#define WAKE_BATCH 8

typedef struct {
    int fd;
    uint64_t offset;
    uint8_t *packet;
    size_t size;
} Job;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t job_queued = PTHREAD_COND_INITIALIZER;
static pthread_cond_t job_written = PTHREAD_COND_INITIALIZER;
static Job queue[QUEUE_LEN];
static unsigned head;      /* queue[head] is the oldest job */
static unsigned count;
static int started;        /* 1 running, -1 cannot start: write inline */
static uint8_t *free_packets[FREE_MAX];
static unsigned n_free;
static uint64_t failures;
static int paused;         /* tests: jobs stay queued */

int
etw_pwrite_all(int fd, const uint8_t *p, size_t size, uint64_t offset)
{
    while (size > 0) {
        ssize_t n = pwrite(fd, p, size, (off_t)offset);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return -1;
        }
        p += n;
        size -= (size_t)n;
        offset += (uint64_t)n;
    }
    return 0;
}

/* Holding `lock`: a written packet's buffer goes back to the free list. */
static void
release_packet(uint8_t *packet)
{
    if (n_free < FREE_MAX) {
        free_packets[n_free++] = packet;
    }
    else {
        free(packet);
    }
}

static void *
writer_main(void *unused)
{
    (void)unused;
    pthread_mutex_lock(&lock);
    for (;;) {
        while (count == 0 || paused) {
            pthread_cond_wait(&job_queued, &lock);
        }
        Job job = queue[head];
        pthread_mutex_unlock(&lock);
        int rc = etw_pwrite_all(job.fd, job.packet, job.size, job.offset);
        pthread_mutex_lock(&lock);
        if (rc != 0) {
            failures++;
        }
        head = (head + 1) % QUEUE_LEN;
        count--;
        release_packet(job.packet);
        pthread_cond_broadcast(&job_written);
    }
    return NULL;
}

/* Holding `lock`. */
static void
start_writer(void)
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t thread;
    started = pthread_create(&thread, &attr, writer_main, NULL) == 0 ? 1 : -1;
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

uint8_t *
etw_packet_alloc(void)
{
    uint8_t *packet = NULL;
    pthread_mutex_lock(&lock);
    if (n_free > 0) {
        packet = free_packets[--n_free];
    }
    pthread_mutex_unlock(&lock);
    return packet != NULL ? packet : malloc(ETW_PACKET_BYTES);
}

void
etw_writer_submit(int fd, uint64_t offset, uint8_t *packet, size_t size)
{
    pthread_mutex_lock(&lock);
    if (started == 0) {
        start_writer();
    }
    if (started < 0) {
        pthread_mutex_unlock(&lock);
        int rc = etw_pwrite_all(fd, packet, size, offset);
        pthread_mutex_lock(&lock);
        failures += rc != 0;
        release_packet(packet);
        pthread_mutex_unlock(&lock);
        return;
    }
    while (count == QUEUE_LEN) {
        pthread_cond_wait(&job_written, &lock);
    }
    queue[(head + count) % QUEUE_LEN] = (Job){fd, offset, packet, size};
    count++;
    if (count >= WAKE_BATCH) {
        pthread_cond_signal(&job_queued);
    }
    pthread_mutex_unlock(&lock);
}

void
etw_writer_drain(void)
{
    pthread_mutex_lock(&lock);
    if (count > 0) {
        pthread_cond_signal(&job_queued);
    }
    while (count > 0) {
        pthread_cond_wait(&job_written, &lock);
    }
    pthread_mutex_unlock(&lock);
}

void
etw_writer_flush_on_crash(void)
{
    int saved_errno = errno;
    if (pthread_mutex_trylock(&lock) == 0) {
        for (unsigned i = 0; i < count; i++) {
            Job *job = &queue[(head + i) % QUEUE_LEN];
            (void)etw_pwrite_all(job->fd, job->packet, job->size, job->offset);
        }
        pthread_mutex_unlock(&lock);
    }
    errno = saved_errno;
}

void
etw_writer_after_fork_child(void)
{
    /* Queued jobs are the parent's to write; their buffers stay allocated
     * (freeing is not fork-safe) and the child's first packet starts a
     * writer of its own.  The free list is forgotten too: the writer may
     * have been changing it when the parent forked. */
    pthread_mutex_init(&lock, NULL);
    pthread_cond_init(&job_queued, NULL);
    pthread_cond_init(&job_written, NULL);
    head = 0;
    count = 0;
    started = 0;
    n_free = 0;
}

void
etw_writer_pause(int pause)
{
    pthread_mutex_lock(&lock);
    paused = pause;
    pthread_cond_broadcast(&job_queued);
    pthread_mutex_unlock(&lock);
}

uint64_t
etw_writer_failures(void)
{
    pthread_mutex_lock(&lock);
    uint64_t n = failures;
    pthread_mutex_unlock(&lock);
    return n;
}
