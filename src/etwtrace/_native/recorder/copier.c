/* The packet copier.  See copier.h.
 *
 * A small queue guarded by `lock`.  The thread is woken when the queue
 * holds WAKE_BATCH copies, or when a writer waits for a slot: a wake-up is
 * a futex call on the traced thread, not worth paying for every packet.
 * The thread blocks every signal (signals are for the threads that run
 * Python) and is named etwtrace-copy, so reports can leave it out. */
#define _GNU_SOURCE
#include "copier.h"

#include "budget.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#define QUEUE_LEN 256
#define WAKE_BATCH 4

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t queued = PTHREAD_COND_INITIALIZER;
static pthread_cond_t done = PTHREAD_COND_INITIALIZER;
static EtwCopy queue[QUEUE_LEN];
static unsigned head;      /* queue[head] is the oldest copy */
static unsigned count;
static int waiting;        /* writers waiting for a slot: wake at once */
static int started;        /* 1 running, -1 cannot start: copy inline */

static int
pwrite_all(int fd, const uint8_t *p, size_t size, uint64_t offset)
{
    while (size > 0) {
        ssize_t n = pwrite(fd, p, size, (off_t)offset);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            if (n == 0) {
                errno = EIO;
            }
            return -1;
        }
        p += n;
        size -= (size_t)n;
        offset += (uint64_t)n;
    }
    return 0;
}

/* Makes one copy; 0, an errno, or -ETW_STOP_RESERVE when the file system
 * would be left with less than its reserve free (nothing is written). */
static int
copy_packet(const EtwCopy *c)
{
    int fd = open(c->path, O_WRONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        return errno;
    }
    struct stat st;
    int err = 0;
    if (fstat(fd, &st) != 0) {
        err = errno;
    }
    else if (st.st_dev != c->dev || st.st_ino != c->ino) {
        err = ESTALE;   /* not the file the recorder made: never write it */
    }
    else if (etw_budget_room_begin(fd, c->size) != 0) {
        err = -ETW_STOP_RESERVE;
    }
    else {
        if (pwrite_all(fd, c->packet, c->size, c->offset) != 0) {
            err = errno;
        }
        etw_budget_room_end();
    }
    close(fd);
    return err;
}

static void
finish(const EtwCopy *c, int err)
{
    if (err != 0) {
        __atomic_store_n(c->error, err, __ATOMIC_RELAXED);
    }
    __atomic_store_n(c->busy, 0, __ATOMIC_RELEASE);
}

static void *
copier_main(void *unused)
{
    (void)unused;
    /* Named before it first waits, so that every sample of it is known. */
    pthread_setname_np(pthread_self(), "etwtrace-copy");
    pthread_mutex_lock(&lock);
    for (;;) {
        while (count == 0) {
            pthread_cond_wait(&queued, &lock);
        }
        EtwCopy c = queue[head];
        head = (head + 1) % QUEUE_LEN;
        count--;
        pthread_mutex_unlock(&lock);
        int err = copy_packet(&c);
        pthread_mutex_lock(&lock);
        finish(&c, err);
        pthread_cond_broadcast(&done);
    }
    return NULL;
}

/* Holding `lock`. */
static void
start_copier(void)
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t thread;
    started = pthread_create(&thread, &attr, copier_main, NULL) == 0 ? 1 : -1;
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

void
etw_copier_submit(const EtwCopy *copy)
{
    pthread_mutex_lock(&lock);
    if (started == 0) {
        start_copier();
    }
    if (started < 0) {
        pthread_mutex_unlock(&lock);
        finish(copy, copy_packet(copy));
        return;
    }
    while (count == QUEUE_LEN) {
        pthread_cond_signal(&queued);
        pthread_cond_wait(&done, &lock);
    }
    queue[(head + count) % QUEUE_LEN] = *copy;
    count++;
    if (count >= WAKE_BATCH || waiting) {
        pthread_cond_signal(&queued);
    }
    pthread_mutex_unlock(&lock);
}

void
etw_copier_wait(uint8_t *busy)
{
    if (!__atomic_load_n(busy, __ATOMIC_ACQUIRE)) {
        return;
    }
    pthread_mutex_lock(&lock);
    waiting++;
    while (__atomic_load_n(busy, __ATOMIC_ACQUIRE)) {
        pthread_cond_signal(&queued);
        pthread_cond_wait(&done, &lock);
    }
    waiting--;
    pthread_mutex_unlock(&lock);
}

void
etw_copier_after_fork_child(void)
{
    pthread_mutex_init(&lock, NULL);
    pthread_cond_init(&queued, NULL);
    pthread_cond_init(&done, NULL);
    head = 0;
    count = 0;
    waiting = 0;
    started = 0;
}
