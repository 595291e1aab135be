/* Joining recording sessions (python -m etwtrace record start): the
 * equivalent of an ETW provider's enable callback.
 *
 * A session is announced by a small text file, written atomically by the
 * session's owner:
 *     ETW_SESSION_SYSTEM_DIR/session   a root-owned file in a root-owned
 *                                      directory: every user's processes join
 *     /tmp/etwtrace-UID/session        a user's own session (directory 0700):
 *                                      only that user's processes join
 * holding "etwtrace-session=1", then "id=", "capture=" (the directory the
 * processes record into) and "ring=" (bytes per thread in memory mode, or
 * 0) lines.  A file that is not owned as it should be, or is writable by
 * others, is ignored.
 *
 * A traced process that records into no capture of its own looks at these
 * files once when tracing starts, then from a watcher thread every
 * ETW_SESSION_POLL_MS (a stat(2) of each path when nothing changed: no
 * descriptor is kept).  When a session appears it starts the recorder in
 * the session's directory (a quiet trace: the program's stderr is not the
 * session's) and asks for a rundown (etw_events_restart), so that the
 * functions and threads it already has are in the trace; when the session
 * goes, it stops recording and runs on. */
#ifndef ETWTRACE_SESSION_H
#define ETWTRACE_SESSION_H

#include <stddef.h>

#define ETW_SESSION_SYSTEM_DIR "/run/etwtrace"
#define ETW_SESSION_POLL_MS 200

/* Starts watching for sessions (joining one that runs now before
 * returning); pushes and pops are recorded with or without `call_times`.
 * While tracing, with no capture of the process's own.  0, or -1 when the
 * watcher thread cannot start (the process then only joins a session that
 * runs now). */
int etw_session_watch_start(int call_times);

/* Stops watching.  A joined session's recording is left to
 * etw_events_disable, which ends it as it ends any capture. */
void etw_session_watch_stop(void);

/* In a forked child (pthread_atfork): the watcher thread is the parent's. */
void etw_session_after_fork_child(void);

/* After a fork, once the interpreter runs again in the child: a new
 * watcher when the parent had one. */
void etw_session_resume_in_child(void);

/* The id of the session this process records into now, copied into `id`
 * (of `size` bytes); 0 when it records into none. */
int etw_session_joined(char *id, size_t size);

#endif
