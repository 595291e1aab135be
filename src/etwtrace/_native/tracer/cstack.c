/* The hooks' C stack.  See cstack.h. */
#define _GNU_SOURCE
#include "cstack.h"

#include "arch.h"

#include <pthread.h>
#include <sys/mman.h>

#if defined(__SANITIZE_ADDRESS__)
#  include <sanitizer/common_interface_defs.h>
#  define ETW_ASAN 1
#endif
/* ThreadSanitizer does not follow a switch of stacks (it would need fiber
 * annotations for each one): under it the hooks stay on the thread's own
 * stack, and a recursion deep enough ends in RecursionError at its floor. */
#if defined(__SANITIZE_THREAD__)
#  define ETW_TSAN 1
#else
#  define ETW_TSAN 0
#endif

/* Room kept below a stack's floor: half the stack, at most 64 MiB.  The
 * frame evaluated lowest on a stack has that much for everything but its
 * Python calls (those go on the larger stack): C code that recurses (json
 * or repr of a nested object, up to CPython's own limits), signal
 * handlers.  Untraced, it would have had about all of its thread's stack;
 * half of it, or 64 MiB on the larger stack, holds what CPython allows. */
#define ROOM_MAX ((uintptr_t)64 << 20)
/* With greenlet loaded, calls stay on the thread's own stack down to this
 * much room (see greenlet_loaded). */
#define GREENLET_ROOM ((uintptr_t)256 << 10)
/* Inaccessible pages below the larger stack: an overflow there faults
 * rather than write into another mapping. */
#define GUARD ((size_t)64 << 10)

__thread uintptr_t etw_cstack_floor __attribute__((tls_model("initial-exec"))) = UINTPTR_MAX;

/* The calling thread's stacks. */
static __thread struct {
    uintptr_t base, top;        /* the stack it runs on now */
    uintptr_t own_base, own_top, own_floor;
    uintptr_t larger;           /* the larger stack's mapping (0: none yet) */
    size_t larger_size;
    int on_larger;
} stacks __attribute__((tls_model("initial-exec")));

static pthread_key_t larger_key;
static pthread_once_t larger_key_once = PTHREAD_ONCE_INIT;

/* The floor of stack [base, top): room below it, and at least twice the
 * end CPython 3.14+ keeps for its own RecursionError, so that a hooked
 * call moves to the larger stack before C code meets that (on a small
 * stack that can be all of it: then every call moves). */
static uintptr_t
floor_of(uintptr_t base, uintptr_t top)
{
    uintptr_t size = top - base;
    /* (a variable: before 3.14 the reserve is 0, and a comparison with a
     * constant 0 would warn) */
    const uintptr_t least = 2 * ETW_CPYTHON_STACK_RESERVE;
    uintptr_t room = size / 2 < ROOM_MAX ? size / 2 : ROOM_MAX;
    if (room < least) {
        room = least < size ? least : size;
    }
    return base + room;
}

/* The thread's own stack, from the C library (which takes the main
 * thread's size from RLIMIT_STACK).  A floor of 0 when it cannot say. */
static void
find_own_stack(void)
{
    pthread_attr_t attr;
    void *addr = NULL;
    size_t size = 0;
    etw_cstack_floor = 0;
    if (pthread_getattr_np(pthread_self(), &attr) != 0) {
        return;
    }
    int rc = pthread_attr_getstack(&attr, &addr, &size);
    pthread_attr_destroy(&attr);
    if (rc != 0 || addr == NULL || size == 0) {
        return;
    }
    stacks.own_base = stacks.base = (uintptr_t)addr;
    stacks.own_top = stacks.top = (uintptr_t)addr + size;
    stacks.own_floor = etw_cstack_floor = floor_of(stacks.base, stacks.top);
}

/* pthread key destructor: the thread ends, off the larger stack (unless
 * it ends from a frame on it: then the mapping stays). */
static void
thread_ended(void *unused)
{
    (void)unused;
    if (stacks.larger != 0 && !stacks.on_larger) {
        munmap((void *)stacks.larger, stacks.larger_size);
        stacks.larger = 0;
    }
}

static void
make_larger_key(void)
{
    pthread_key_create(&larger_key, thread_ended);
}

/* Maps the thread's larger stack if it has none: 1 GiB of address space
 * (less where that cannot be had), pages committed as they are used.
 * Returns whether it has one. */
static int
map_larger(void)
{
    static const size_t sizes[] = {(size_t)1 << 30, (size_t)256 << 20, (size_t)64 << 20};
    if (stacks.larger != 0) {
        return 1;
    }
    pthread_once(&larger_key_once, make_larger_key);
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        void *p = mmap(NULL, sizes[i], PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
        if (p == MAP_FAILED) {
            continue;
        }
        if (mprotect(p, GUARD, PROT_NONE) != 0) {
            munmap(p, sizes[i]);
            continue;
        }
        stacks.larger = (uintptr_t)p;
        stacks.larger_size = sizes[i];
        pthread_setspecific(larger_key, &stacks);
        return 1;
    }
    return 0;
}

/* Calls fn(arg) with the stack pointer at `top` (16-byte aligned), and
 * returns on the caller's stack: arch.h's ETW_ARCH_CALL_ON_ASM. */
void etw_cstack_call_on(void (*fn)(void *), void *arg, uintptr_t top)
    __attribute__((visibility("hidden")));
__asm__(ETW_ARCH_CALL_ON_ASM);

typedef struct {
    EtwEvalFunc body;
    PyThreadState *ts;
    EtwFrame *frame;
    int throwflag;
    PyObject *result;
#ifdef ETW_ASAN
    const void *asan_bottom;
    size_t asan_size;
#endif
} Call;

static void
call_body(void *arg)
{
    Call *c = arg;
#ifdef ETW_ASAN
    __sanitizer_finish_switch_fiber(NULL, &c->asan_bottom, &c->asan_size);
#endif
    c->result = c->body(c->ts, c->frame, c->throwflag);
#ifdef ETW_ASAN
    __sanitizer_start_switch_fiber(NULL, c->asan_bottom, c->asan_size);
#endif
}

static PyObject *
eval_on_larger(PyThreadState *ts, EtwFrame *frame, int throwflag, EtwEvalFunc body)
{
    uintptr_t base = stacks.larger + GUARD, top = stacks.larger + stacks.larger_size;
    Call c = {.body = body, .ts = ts, .frame = frame, .throwflag = throwflag};
    EtwStackLimits limits;
    etw_stack_limits_switch(ts, base, top, &limits);
    stacks.on_larger = 1;
    stacks.base = base;
    stacks.top = top;
    etw_cstack_floor = floor_of(base, top);
#ifdef ETW_ASAN
    void *fake_stack = NULL;
    __sanitizer_start_switch_fiber(&fake_stack, (const void *)base, top - base);
#endif
    etw_cstack_call_on(call_body, &c, top);
#ifdef ETW_ASAN
    __sanitizer_finish_switch_fiber(fake_stack, NULL, NULL);
#endif
    etw_cstack_floor = stacks.own_floor;
    stacks.base = stacks.own_base;
    stacks.top = stacks.own_top;
    stacks.on_larger = 0;
    etw_stack_limits_restore(ts, &limits);
    return c.result;
}

/* greenlet switches by saving and restoring the part of the thread's stack
 * between a greenlet's frames and its start: a switch made on the larger
 * stack, far from the thread's, fails (greenlet stops the process).  With
 * greenlet loaded, calls therefore stay on the thread's stack down to its
 * last GREENLET_ROOM, as deep as they all went before the larger stack. */
static int
greenlet_loaded(void)
{
    return PyDict_GetItemString(PyImport_GetModuleDict(), "greenlet") != NULL;
}

PyObject *
etw_cstack_eval(PyThreadState *ts, EtwFrame *frame, int throwflag, EtwEvalFunc body)
{
    if (etw_cstack_floor == UINTPTR_MAX) {
        find_own_stack();
    }
    uintptr_t here = (uintptr_t)__builtin_frame_address(0);
    if (here >= etw_cstack_floor || here < stacks.base || here >= stacks.top) {
        /* Room here; or a stack this does not know (a coroutine library's
         * own), which is left to whoever made it. */
        return body(ts, frame, throwflag);
    }
    if (!stacks.on_larger && here - stacks.base > GREENLET_ROOM && greenlet_loaded()) {
        return body(ts, frame, throwflag);
    }
    if (ETW_TSAN || stacks.on_larger || !map_larger()) {
        return etw_eval_recursion_error(ts, frame, throwflag);
    }
    return eval_on_larger(ts, frame, throwflag, body);
}

int
etw_cstack_on_larger(void)
{
    return stacks.on_larger;
}
