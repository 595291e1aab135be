/* The sampler's BPF program: at each perf sample (a cpu-clock event on
 * every CPU) of a process user space asked for, it reads the thread's
 * Python frames out of the interpreter (the offsets come from the
 * process's _Py_DebugOffsets, see sampled/remote.py) and its native stack, and
 * sends both through a ring buffer.  Nothing runs in the sampled process:
 * it pays only the kernel's cost of taking the sample. */
#include <linux/bpf.h>
#include <linux/bpf_perf_event.h>
#include <bpf/bpf_helpers.h>

#include "arch.h"
#include "sampler.h"

char LICENSE[] SEC("license") = "GPL";

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 4096);
    __type(key, __u32);
    __type(value, struct etw_target);
} targets SEC(".maps");

/* Its size is set by user space before loading (module.c: by CPU count). */
struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 16 << 20);
} samples SEC(".maps");

/* The hashes of the stacks sent whole (each with its own hash): a sample
 * whose stack is here goes as its head alone. */
struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, ETW_SAMPLER_KNOWN_STACKS);
    __type(key, __u64);
    __type(value, __u8);
} known_stacks SEC(".maps");

/* Samples the ring buffer had no room for. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} dropped SEC(".maps");

/* Per-CPU scratch space: a frame's and a code object's first bytes, read
 * at once (one read each instead of one per field), and the sample, built
 * here and sent with only the Python frames it has. */
#define FRAME_BYTES 128
#define CODE_BYTES 256
struct scratch {
    __u8 frame[FRAME_BYTES + 8];
    __u8 code[CODE_BYTES + 8];
    struct etw_sample sample;
    struct etw_stack_copy copy_room;    /* a stack copy goes right after the
                                         * Python frames taken: room for it
                                         * after all of them */
};

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct scratch);
} scratch SEC(".maps");

/* Field readers into the scratch copies; offsets are checked against the
 * sizes by user space, and masked here for the verifier. */
static __always_inline __u64
frame_u64(const struct scratch *b, __u32 off)
{
    return *(const __u64 *)&b->frame[off & (FRAME_BYTES - 1)];
}

static __always_inline __u64
code_u64(const struct scratch *b, __u32 off)
{
    return *(const __u64 *)&b->code[off & (CODE_BYTES - 1)];
}

static __always_inline __u64
read_word(__u64 address)
{
    __u64 value = 0;
    bpf_probe_read_user(&value, sizeof value, (const void *)address);
    return value;
}

/* The thread state of native thread `tid`, or 0. */
static __always_inline __u64
find_thread(const struct etw_target *t, __u32 tid)
{
    __u64 interp = read_word(t->interpreters_head);
    if (interp == 0) {
        return 0;
    }
    __u64 ts = read_word(interp + t->interp_threads_head);
    for (int i = 0; i < ETW_SAMPLER_MAX_THREADS && ts != 0; i++) {
        if (read_word(ts + t->thread_native_id) == tid) {
            return ts;
        }
        ts = read_word(ts + t->thread_next);
    }
    return 0;
}

/* Records `task` and its name; returns its name object. */
static __always_inline __u64
see_task(const struct etw_target *t, struct etw_task_seen *seen, __u64 task)
{
    __u64 name = read_word(task + t->task_name);
    seen->task = task;
    seen->name_type = read_word(name + t->object_type);
    seen->name_digits = read_word(name + t->long_digits);
    bpf_probe_read_user(seen->name, sizeof seen->name, (const void *)(name + t->unicode_data));
    return name;
}

static __always_inline int
is_a_task(const struct etw_target *t, __u64 future)
{
    __u8 flag = 0;
    bpf_probe_read_user(&flag, 1, (const void *)(future + t->task_is_task));
    return flag != 0;
}

/* The task awaiting `task` (the first task in the first slots of a set of
 * them), or 0. */
static __always_inline __u64
awaiter_of(const struct etw_target *t, __u64 task)
{
    __u64 by = read_word(task + t->task_awaited_by);
    if (by == 0) {
        return 0;
    }
    __u8 is_set = 0;
    bpf_probe_read_user(&is_set, 1, (const void *)(task + t->task_awaited_by_is_set));
    if (!is_set) {
        return is_a_task(t, by) ? by : 0;
    }
    __u64 table = read_word(by + t->set_table);
    for (int i = 0; i < 8; i++) {
        __u64 entry[2] = {0, 0};     /* key, hash (-1: a removed entry) */
        if (bpf_probe_read_user(entry, sizeof entry, (const void *)(table + 16 * i)) != 0) {
            break;
        }
        if (entry[0] != 0 && entry[1] != (__u64)-1 && is_a_task(t, entry[0])) {
            return entry[0];
        }
    }
    return 0;
}

/* Copies the top of the thread's user stack (up to `limit` bytes, a
 * multiple of 4 KiB, from its stack pointer, a page at a time, so that a
 * stack ending sooner is copied to its end) with the user-mode registers. */
static __always_inline void
copy_stack(struct etw_stack_copy *copy, __u32 limit)
{
    etw_user_regs regs;
    copy->size = 0;
    copy->reserved = 0;
    etw_user_regs *user = (etw_user_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
    if (bpf_probe_read_kernel(&regs, sizeof regs, user) != 0) {
        copy->ip = copy->sp = copy->bp = copy->lr = 0;
        return;
    }
    copy->ip = ETW_REGS_IP(&regs);
    __u64 sp = ETW_REGS_SP(&regs);
    copy->sp = sp;
    copy->bp = ETW_REGS_FP(&regs);
    copy->lr = ETW_REGS_LR(&regs);
    /* The page sp is in, to its end, then whole pages: at most
     * ETW_SAMPLER_STACK_BYTES in all. */
    __u32 pages = limit / 4096;
    __u32 size = 0;
    __u32 chunk = 4096 - (__u32)(sp & 4095);
    for (__u32 i = 0; i < ETW_SAMPLER_STACK_BYTES / 4096; i++) {
        if (i >= pages || size > ETW_SAMPLER_STACK_BYTES - 4096 || chunk == 0 || chunk > 4096) {
            break;
        }
        if (bpf_probe_read_user(&copy->bytes[size], chunk,
                                (const void *)(sp + size)) != 0) {
            break;      /* past the end of the stack */
        }
        size += chunk;
        chunk = 4096;
    }
    copy->size = size;
}

/* Sends the sample without its unused Python frame slots.  User space is
 * woken only when the ring buffer is a quarter full: otherwise it reads
 * the ring at its own pace (a wake-up per sample would cost more than
 * the sample). */
static __always_inline int
send(struct etw_sample *s, __u32 stack_bytes)
{
    __u32 n = s->python_count;
    if (n > ETW_SAMPLER_MAX_PYTHON) {
        n = ETW_SAMPLER_MAX_PYTHON;
    }
    __u64 size = __builtin_offsetof(struct etw_sample, python) + n * sizeof(struct etw_python_frame);
    int known = 0;
    if (s->flags & ETW_SAMPLE_STACK_COPY) {
        /* Its native frames are user space's to unwind from the copy,
         * which goes right after the Python frames: always sent whole. */
        struct etw_stack_copy *copy = (struct etw_stack_copy *)((__u8 *)s + size);
        copy_stack(copy, stack_bytes);
        __u32 copied = copy->size;
        if (copied > ETW_SAMPLER_STACK_BYTES) {
            copied = ETW_SAMPLER_STACK_BYTES;
        }
        size += __builtin_offsetof(struct etw_stack_copy, bytes) + copied;
    }
    else {
        known = bpf_map_lookup_elem(&known_stacks, &s->stack_hash) != NULL;
    }
    if (known) {
        s->flags |= ETW_SAMPLE_KNOWN_STACK;
        size = __builtin_offsetof(struct etw_sample, native);
    }
    __u64 wake = bpf_ringbuf_query(&samples, BPF_RB_AVAIL_DATA)
                 > bpf_ringbuf_query(&samples, BPF_RB_RING_SIZE) / 4
                 ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
    /* The bound again, kept from the compiler (which knows it holds) for
     * the verifier (which loses it on the way). */
    asm volatile("" : "+r"(size));
    if (size > sizeof(struct etw_sample) + sizeof(struct etw_stack_copy)) {
        return 0;
    }
    if (bpf_ringbuf_output(&samples, (void *)s, size, wake) != 0) {
        __u32 zero = 0;
        __u64 *lost = bpf_map_lookup_elem(&dropped, &zero);
        if (lost != NULL) {
            __sync_fetch_and_add(lost, 1);
        }
    }
    else if (!known && !(s->flags & ETW_SAMPLE_STACK_COPY)) {
        /* Known from now on: user space has it (a stack that did not fit
         * in the ring is sent whole again). */
        __u8 one = 1;
        bpf_map_update_elem(&known_stacks, &s->stack_hash, &one, BPF_ANY);
    }
    return 0;
}

/* A walk up a thread's Python frames, one frame a step: what each step
 * needs and what it carries to the next. */
struct frame_walk {
    const struct etw_target *t;
    struct scratch *b;
    __u64 frame;        /* the next frame to read (0: none) */
    __u64 hash;         /* the stack's hash so far */
    __u32 count;        /* frames taken */
};

/* Takes Python frame `i` of the walk into the sample: 0 to go on, 1 when
 * the walk is over (no next frame, or it cannot be read). */
static __always_inline long
take_python_frame(__u32 i, struct frame_walk *w)
{
    const struct etw_target *t = w->t;
    struct scratch *b = w->b;
    /* The bound is checked on the register the index is taken from: the
     * verifier knows nothing of a callback's `i`. */
    __u64 slot = i;
    asm volatile("" : "+r"(slot));
    if (w->frame == 0 || slot >= ETW_SAMPLER_MAX_PYTHON) {
        return 1;
    }
    struct etw_python_frame *f = &b->sample.python[slot];
    if (bpf_probe_read_user(b->frame, FRAME_BYTES, (const void *)w->frame) != 0) {
        return 1;
    }
    __u64 code = frame_u64(b, t->frame_executable) & ~(__u64)7;
    __u8 owner = b->frame[t->frame_owner & (FRAME_BYTES - 1)];
    __u64 ip = frame_u64(b, t->frame_instr_ptr);
    w->frame = frame_u64(b, t->frame_previous);
    f->code = 0;
    f->owner = owner;
    if (t->frame_is_entry && b->frame[t->frame_is_entry & (FRAME_BYTES - 1)]) {
        f->owner |= ETW_FRAME_IS_ENTRY;
    }
    f->reserved = 0;
    f->unit = 0;
    f->firstlineno = 0;
    __builtin_memset(f->name, 0, sizeof f->name);
    w->count = (__u32)slot + 1;
    if (owner == t->owner_cstack || code == 0) {
        w->hash = etw_hash_word(w->hash, owner);
        return 0;
    }
    if (bpf_probe_read_user(b->code, CODE_BYTES, (const void *)code) != 0
        || code_u64(b, t->object_type) != t->code_type) {
        w->hash = etw_hash_word(w->hash, owner);
        return 0;       /* not a code object: not a Python function's frame */
    }
    f->code = code;
    __u64 units = code + t->code_adaptive;
    f->unit = ip >= units ? (__u32)((ip - units) / 2) : 0;
    f->firstlineno = (__s32)code_u64(b, t->code_firstlineno);
    bpf_probe_read_user(f->name, sizeof f->name,
                        (const void *)(code_u64(b, t->code_qualname) + t->unicode_data));
    /* The name is part of a frame's identity (a freed code object's
     * address is used again): it is hashed too. */
    const __u64 *name = (const __u64 *)f->name;
    __u64 h = etw_hash_word(w->hash, code);
    h = etw_hash_word(h, ((__u64)f->unit << 32) | (__u32)f->firstlineno);
    h = etw_hash_word(etw_hash_word(h, name[0]), name[1]);
    w->hash = etw_hash_word(h, f->owner);
    return 0;
}

/* take_python_frame as bpf_loop's callback. */
static long
python_frame_step(__u32 i, void *walk)
{
    return take_python_frame(i, walk);
}

/* The sample of the thread running now, sent to user space (or nothing,
 * for a process not asked for).  `use_bpf_loop`: walk its Python frames
 * with bpf_loop (a constant: each program below is built with one way). */
static __always_inline int
sample(struct bpf_perf_event_data *ctx, int use_bpf_loop)
{
    __u64 id = bpf_get_current_pid_tgid();
    __u32 pid = id >> 32, tid = (__u32)id;
    const struct etw_target *t = bpf_map_lookup_elem(&targets, &pid);
    if (t == NULL) {
        return 0;
    }
    __u32 zero = 0;
    struct scratch *b = bpf_map_lookup_elem(&scratch, &zero);
    if (b == NULL) {
        return 0;
    }
    struct etw_sample *s = &b->sample;
    s->pid = pid;
    s->tid = tid;
    s->time = bpf_ktime_get_ns();
    s->flags = 0;
    s->reserved = 0;
    s->task_code = 0;
    __builtin_memset(s->tasks, 0, sizeof s->tasks);
    s->native_count = 0;
    if (t->stack_bytes) {
        s->flags |= ETW_SAMPLE_STACK_COPY;      /* copied as it is sent */
    }
    else {
        long bytes = bpf_get_stack(ctx, s->native, sizeof s->native, BPF_F_USER_STACK);
        s->native_count = bytes > 0 ? (__u32)(bytes / sizeof(__u64)) : 0;
    }
    s->python_count = 0;
    __u64 h = etw_hash_word(etw_hash_word(ETW_HASH_START, ((__u64)pid << 32) | t->generation),
                        s->native_count);
    for (int i = 0; i < ETW_SAMPLER_MAX_NATIVE + 1; i++) {
        if (i >= s->native_count) {
            break;
        }
        h = etw_hash_word(h, s->native[i]);
    }
    /* CPython records the thread id its pid namespace gives. */
    struct bpf_pidns_info ns;
    __u32 native_tid = tid;
    if (bpf_get_ns_current_pid_tgid(t->pidns_dev, t->pidns_ino, &ns, sizeof ns) == 0) {
        native_tid = ns.pid;
    }
    __u64 ts = find_thread(t, native_tid);
    if (ts == 0) {
        s->flags |= ETW_SAMPLE_NO_THREAD_STATE;
        s->stack_hash = etw_hash_finish(etw_hash_word(h, ETW_SAMPLE_NO_THREAD_STATE));
        return send(s, t->stack_bytes);
    }
    if (t->thread_running_task) {
        /* The running task and those awaiting it are read now: by the
         * time user space reads the sample, a task that ended has let go
         * of its coroutine and awaiters, and may be freed.  They are part
         * of the stack's identity, with their names (a task's address is
         * used again after it is freed; a rename replaces the name). */
        __u64 task = read_word(ts + t->thread_running_task);
        if (task != 0) {
            __u64 coro = read_word(task + t->task_coro);
            if (coro != 0) {
                s->task_code = read_word(coro + t->gen_iframe + t->frame_executable) & ~(__u64)7;
            }
            for (int i = 0; i < ETW_SAMPLER_MAX_TASKS && task != 0; i++) {
                h = etw_hash_word(etw_hash_word(h, task), see_task(t, &s->tasks[i], task));
                task = awaiter_of(t, task);
            }
        }
    }
    __u64 frame = t->thread_cframe
                  ? read_word(read_word(ts + t->thread_cframe) + t->cframe_current_frame)
                  : read_word(ts + t->thread_current_frame);
    struct frame_walk w = {.t = t, .b = b, .frame = frame, .hash = h, .count = 0};
    if (use_bpf_loop) {
        /* The verifier checks the step once, not once per frame: loading
         * takes a quarter of the CPU time (kernel 5.17+). */
        bpf_loop(ETW_SAMPLER_MAX_PYTHON, python_frame_step, &w, 0);
    }
    else {
        for (int i = 0; i < ETW_SAMPLER_MAX_PYTHON; i++) {
            if (take_python_frame(i, &w)) {
                break;
            }
        }
    }
    frame = w.frame;
    h = w.hash;
    __u32 n = w.count;
    if (frame != 0) {
        s->flags |= ETW_SAMPLE_PYTHON_TRUNCATED;
    }
    s->python_count = n;
    s->stack_hash = etw_hash_finish(etw_hash_word(h, ((__u64)n << 32) | s->flags));
    return send(s, t->stack_bytes);
}

SEC("perf_event")
int
etw_sample(struct bpf_perf_event_data *ctx)
{
    return sample(ctx, 1);
}

/* For kernels before 5.17, which have no bpf_loop: the frame walk
 * unrolled, verified frame by frame. */
SEC("perf_event")
int
etw_sample_unrolled(struct bpf_perf_event_data *ctx)
{
    return sample(ctx, 0);
}
