/* What the sampler's BPF program (sampler.bpf.c) and its loader
 * (module.c) share: the per-process configuration user space writes and
 * the sample records the program sends through its ring buffer. */
#ifndef ETWTRACE_SAMPLER_H
#define ETWTRACE_SAMPLER_H

#define ETW_SAMPLER_MAX_NATIVE 127   /* bpf_get_stack's user frames */
#define ETW_SAMPLER_MAX_PYTHON 96    /* Python frames per sample */
#define ETW_SAMPLER_MAX_THREADS 256  /* thread states searched per sample */
#define ETW_SAMPLER_NAME_BYTES 16    /* of a code object's qualname, kept to tell
                                      * a reused code object address apart */

/* One sampled process (keyed by its pid as the kernel's root namespace
 * sees it): where its interpreter list is, and the offsets of the fields
 * the program reads (from its _Py_DebugOffsets). */
struct etw_target {
    __u64 interpreters_head;     /* address of _PyRuntime.interpreters.head */
    __u32 interp_threads_head;
    __u32 thread_next;
    __u32 thread_native_id;
    __u32 thread_current_frame;
    __u32 frame_previous;
    __u32 frame_executable;
    __u32 frame_instr_ptr;
    __u32 frame_owner;
    __u32 code_firstlineno;
    __u32 code_qualname;
    __u32 code_adaptive;         /* offset of the code units in a code object */
    __u32 unicode_data;          /* offset of an ASCII str's characters */
    __u32 owner_cstack;          /* the owner of an evaluator's entry frame
                                  * (ETW_NO_OWNER: no such frame, 3.11) */
    __u32 frame_is_entry;        /* 3.11: offset of the frame's is_entry flag
                                  * (the first frame of an evaluator call);
                                  * 0: none */
    __u64 pidns_dev;             /* its pid namespace (stat of /proc/PID/ns/pid): */
    __u64 pidns_ino;             /* thread ids as CPython recorded them */
    __u64 code_type;             /* address of PyCode_Type */
    __u32 object_type;           /* offset of ob_type */
    __u32 generation;            /* mixed into its stacks' hashes: user space
                                  * changes it to forget the stacks sent */
    __u32 thread_cframe;         /* 3.11: the thread state's cframe, whose
                                  * current_frame is the thread's frame; 0:
                                  * thread_current_frame is in the thread state */
    __u32 cframe_current_frame;
    __u32 stack_bytes;           /* of its user stack to copy with each sample,
                                  * for user space to unwind (an interpreter
                                  * without frame pointers); 0: none */
    __u32 thread_running_task;   /* offset of the thread state's running asyncio
                                  * task (3.14+, from _asyncio's AsyncioDebug
                                  * section); 0: not read */
    __u32 task_name;             /* offset of a task's name in its object */
    __u32 long_digits;           /* offset of an int's first digit (a task's name
                                  * before it is asked for is its number) */
    __u32 task_coro;             /* offset of a task's coroutine */
    __u32 gen_iframe;            /* offset of a coroutine's frame in it */
    __u32 task_awaited_by;       /* offset of what awaits a task: a task (or
                                  * future), or a set of them */
    __u32 task_is_task;          /* offset of a future's is-a-task byte */
    __u32 task_awaited_by_is_set;
    __u32 set_table;             /* offset of a set's table of entries */
};

#define ETW_SAMPLER_MAX_TASKS 4      /* the running task and those awaiting it */

/* An asyncio task as a sample saw it: its address, and its name (the
 * task may be gone when user space reads the sample): the name object's
 * type, an int's first two digits (the number of a task named "Task-N"),
 * and the first ETW_SAMPLER_NAME_BYTES of an ASCII str's text. */
struct etw_task_seen {
    __u64 task;
    __u64 name_type;
    __u64 name_digits;
    char name[ETW_SAMPLER_NAME_BYTES];
};

#define ETW_NO_OWNER 0xFFFFFFFFu

struct etw_python_frame {
    __u64 code;                  /* the code object, tag bits cleared */
    __u32 unit;                  /* code unit being run */
    __s32 firstlineno;
    __u32 owner;                 /* the frame's owner, with ETW_FRAME_IS_ENTRY */
    __u32 reserved;
    char name[ETW_SAMPLER_NAME_BYTES];
};

#define ETW_FRAME_IS_ENTRY 0x100u       /* 3.11: the first frame of an evaluator call */

/* A sample whose stack was sent before (ETW_SAMPLE_KNOWN_STACK) is sent
 * as its head alone: user space finds the stack by its hash. */
struct etw_sample {
    __u32 pid;
    __u32 tid;
    __u64 time;                  /* CLOCK_MONOTONIC ns (bpf_ktime_get_ns) */
    __u32 native_count;
    __u32 python_count;
    __u32 flags;                 /* ETW_SAMPLE_* */
    __u32 reserved;
    __u64 stack_hash;            /* of pid, generation, native and Python frames,
                                  * and the running task and its name */
    __u64 task_code;             /* the code object of the running task's coroutine */
    /* The thread's running asyncio task (task 0 when none), then the tasks
     * awaiting it, nearest first. */
    struct etw_task_seen tasks[ETW_SAMPLER_MAX_TASKS];
    __u64 native[ETW_SAMPLER_MAX_NATIVE + 1];
    struct etw_python_frame python[ETW_SAMPLER_MAX_PYTHON];
};

#define ETW_SAMPLE_NO_THREAD_STATE 1u   /* no thread state for this thread */
#define ETW_SAMPLE_PYTHON_TRUNCATED 2u  /* more Python frames than kept */
#define ETW_SAMPLE_KNOWN_STACK 4u       /* the stack of an earlier sample: head only */
#define ETW_SAMPLE_STACK_COPY 8u        /* no native frames: its python_count
                                         * frames are followed by a struct
                                         * etw_stack_copy of `size` bytes */
#define ETW_SAMPLER_KNOWN_STACKS 65536  /* stack hashes the program remembers */

/* The top of a thread's user stack at a sample, and the registers the
 * unwinding starts from (those of user mode, also when the sample was
 * taken in the kernel). */
#define ETW_SAMPLER_STACK_BYTES 16384
struct etw_stack_copy {
    __u64 ip;
    __u64 sp;                    /* the address of bytes[0] */
    __u64 bp;
    __u64 lr;                    /* aarch64's x30 (0 on x86-64) */
    __u32 size;                  /* bytes copied */
    __u32 reserved;
    __u8 bytes[ETW_SAMPLER_STACK_BYTES];
};

/* The stack hash (FNV-1a over words, finished by a multiply-xorshift so
 * every bit depends on every word): the program's, and user space's for
 * the native frames it unwinds itself. */
#define ETW_HASH_START 0xcbf29ce484222325ULL

static inline __u64
etw_hash_word(__u64 h, __u64 word)
{
    return (h ^ word) * 0x100000001b3ULL;
}

static inline __u64
etw_hash_finish(__u64 h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    return h;
}

#endif
