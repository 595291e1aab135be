/* Joining recording sessions.  See session.h. */
#define _GNU_SOURCE
#include "session.h"

#include "compat.h"
#include "events.h"
#include "perf_jit.h"
#include "recorder.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_SESSION_FILE 4096
#define MAX_ID 64

typedef struct {
    char id[MAX_ID];
    char capture[PATH_MAX];
    size_t ring_bytes;
} Session;

/* Where a session file was last seen unchanged (so polls only stat). */
typedef struct {
    int present;
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
    int valid;
    Session session;
} Seen;

/* `lock` guards everything below; the watcher sleeps on `wake`. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake;
static int watching;          /* a watcher is wanted */
static int thread_running;
static pthread_t thread;
static int call_times = 1;
static int joined;
static Session current;       /* the session joined */
static char refused_id[MAX_ID];   /* a session this process could not join */
static Seen seen[2];          /* system, user */

static void
init_cond(void)
{
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&wake, &attr);
    pthread_condattr_destroy(&attr);
}

static void
session_paths(char *system, char *user, size_t size)
{
    /* ETWTRACE_SESSION_DIR moves the system directory (tests; a machine
     * whose /run is elsewhere); its ownership rules stay. */
    const char *dir = getenv("ETWTRACE_SESSION_DIR");
    snprintf(system, size, "%s/session", dir != NULL && dir[0] == '/' ? dir : ETW_SESSION_SYSTEM_DIR);
    snprintf(user, size, "/tmp/etwtrace-%u/session", (unsigned)geteuid());
}

/* Whether `path`'s directory may announce sessions to this process: owned
 * by `owner`, writable by no one else (and for a user's, private). */
static int
trusted_dir(const char *path, uid_t owner, int private_dir)
{
    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == NULL || slash == dir) {
        return 0;
    }
    *slash = '\0';
    struct stat st;
    if (lstat(dir, &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != owner) {
        return 0;
    }
    mode_t forbidden = private_dir ? 077 : 022;
    return (st.st_mode & forbidden) == 0;
}

/* Reads "key=value" lines into `out`; 0 when it is not a session file. */
static int
parse(char *text, Session *out)
{
    memset(out, 0, sizeof(*out));
    int version = 0, have_ring = 0;
    for (char *line = strtok(text, "\n"); line != NULL; line = strtok(NULL, "\n")) {
        char *eq = strchr(line, '=');
        if (eq == NULL) {
            continue;
        }
        *eq = '\0';
        const char *key = line, *value = eq + 1;
        if (strcmp(key, "etwtrace-session") == 0) {
            version = atoi(value);
        }
        else if (strcmp(key, "id") == 0 && strlen(value) < sizeof(out->id)) {
            strcpy(out->id, value);
        }
        else if (strcmp(key, "capture") == 0 && value[0] == '/' &&
                 strlen(value) < sizeof(out->capture)) {
            strcpy(out->capture, value);
        }
        else if (strcmp(key, "ring") == 0) {
            char *end;
            errno = 0;
            unsigned long long n = strtoull(value, &end, 10);
            have_ring = errno == 0 && *end == '\0' && end != value;
            out->ring_bytes = (size_t)n;
        }
    }
    return version == 1 && out->id[0] && out->capture[0] && have_ring;
}

/* The session file at `path` if it is there and trusted (owned by
 * `owner`, in a directory as trusted_dir says).  Re-read only when its
 * identity or time changed since `*s`. */
static const Session *
look(const char *path, uid_t owner, int private_dir, Seen *s)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        s->present = 0;
        return NULL;
    }
    if (s->present && st.st_dev == s->dev && st.st_ino == s->ino && st.st_size == s->size &&
        st.st_mtim.tv_sec == s->mtime.tv_sec && st.st_mtim.tv_nsec == s->mtime.tv_nsec) {
        return s->valid ? &s->session : NULL;
    }
    s->present = 1;
    s->dev = st.st_dev;
    s->ino = st.st_ino;
    s->size = st.st_size;
    s->mtime = st.st_mtim;
    s->valid = 0;
    if (!trusted_dir(path, owner, private_dir)) {
        return NULL;
    }
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        return NULL;
    }
    char text[MAX_SESSION_FILE + 1];
    struct stat fst;
    ssize_t n = -1;
    if (fstat(fd, &fst) == 0 && S_ISREG(fst.st_mode) && fst.st_uid == owner &&
        (fst.st_mode & 022) == 0 && fst.st_size <= MAX_SESSION_FILE) {
        n = pread(fd, text, MAX_SESSION_FILE, 0);
    }
    /* Close only our own descriptor: a program that closes every
     * descriptor may have closed it and opened one of its own since. */
    struct stat again;
    if (fstat(fd, &again) == 0 && again.st_dev == fst.st_dev && again.st_ino == fst.st_ino) {
        close(fd);
    }
    if (n <= 0) {
        return NULL;
    }
    text[n] = '\0';
    s->valid = parse(text, &s->session);
    return s->valid ? &s->session : NULL;
}

/* The session this process should record into now, or NULL. */
static const Session *
wanted_session(void)
{
    char system[PATH_MAX], user[PATH_MAX];
    session_paths(system, user, sizeof(system));
    const Session *found = look(system, 0, 0, &seen[0]);
    if (found == NULL && geteuid() != 0) {
        found = look(user, geteuid(), 1, &seen[1]);
    }
    return found;
}

static int
run_on_python_thread(void *arg)
{
    (void)arg;
    etw_events_touch();
    return 0;
}

/* Holding `lock`: joins or leaves so that the process records into
 * `wanted` (NULL: none). */
static void
follow(const Session *wanted)
{
    if (joined && (wanted == NULL || strcmp(wanted->id, current.id) != 0)) {
        etw_recorder_stop();
        joined = 0;
        etw_events_restart(0);
        Py_AddPendingCall(run_on_python_thread, NULL);
    }
    if (wanted == NULL || joined || strcmp(wanted->id, refused_id) == 0) {
        return;
    }
    EtwRecorderOptions options = {
        .call_times = call_times, .ring_bytes = wanted->ring_bytes, .quiet = 1,
    };
    char error[PATH_MAX + 128];
    if (etw_recorder_start(wanted->capture, &options, error, sizeof(error)) != 0) {
        /* Not ours to record into (a session of another user, a full
         * disk): not tried again for this session. */
        snprintf(refused_id, sizeof(refused_id), "%s", wanted->id);
        return;
    }
    current = *wanted;
    joined = 1;
    /* The session collects this process's perf map and jitdump at its
     * end, after the process may have ended. */
    etw_perf_jit_remove_at_exit(0);
    etw_events_restart(1);
    Py_AddPendingCall(run_on_python_thread, NULL);
}

static void *
watch(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&lock);
    while (watching) {
        follow(wanted_session());
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_nsec += (long)ETW_SESSION_POLL_MS * 1000000L;
        until.tv_sec += until.tv_nsec / 1000000000L;
        until.tv_nsec %= 1000000000L;
        while (watching) {
            int rc = pthread_cond_timedwait(&wake, &lock, &until);
            if (rc == ETIMEDOUT) {
                break;
            }
        }
    }
    pthread_mutex_unlock(&lock);
    return NULL;
}

static int
start_thread(void)
{
    sigset_t all, old;
    sigfillset(&all);
    /* Signals are the program's: the watcher takes none. */
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&thread, NULL, watch, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc == 0) {
        thread_running = 1;
#ifdef __GLIBC__
        pthread_setname_np(thread, "etwtrace-watch");
#endif
    }
    return rc == 0 ? 0 : -1;
}

int
etw_session_watch_start(int with_call_times)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, init_cond);
    pthread_mutex_lock(&lock);
    call_times = with_call_times;
    refused_id[0] = '\0';
    memset(seen, 0, sizeof(seen));
    watching = 1;
    follow(wanted_session());
    int rc = thread_running ? 0 : start_thread();
    pthread_mutex_unlock(&lock);
    return rc;
}

void
etw_session_watch_stop(void)
{
    pthread_mutex_lock(&lock);
    int running = thread_running;
    watching = 0;
    joined = 0;
    thread_running = 0;
    pthread_cond_broadcast(&wake);
    pthread_mutex_unlock(&lock);
    if (running) {
        pthread_join(thread, NULL);
    }
}

void
etw_session_after_fork_child(void)
{
    /* Only the forking thread exists here; the parent's watcher does not,
     * and its lock may have been held when the fork happened. */
    pthread_mutex_init(&lock, NULL);
    init_cond();
    thread_running = 0;
}

void
etw_session_resume_in_child(void)
{
    pthread_mutex_lock(&lock);
    if (watching && !thread_running) {
        start_thread();
    }
    pthread_mutex_unlock(&lock);
}

int
etw_session_joined(char *id, size_t size)
{
    pthread_mutex_lock(&lock);
    int in = joined && etw_recorder_active();
    if (in && size > 0) {
        snprintf(id, size, "%s", current.id);
    }
    pthread_mutex_unlock(&lock);
    return in;
}
