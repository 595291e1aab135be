"""--sampled: Python stacks read by a BPF program at each CPU sample, with no
hook in the program (see _native/sampler/).

The program's frames are read out of its interpreter at the sample; this
side turns each sample into the events every consumer of a capture reads:
a SampledProfile event (on the sampled thread's stream) whose stack holds
native addresses and, for each Python frame, an address inside the range
of a PythonFunction event written for that function and line (synthetic
ranges, above any address a process can map).  Native functions that
samples land in get PythonFunction events too (IsPythonCode 0, their real
range, the file as SourceFile), so the report names them without the
process.  The Python frames of each evaluator call go where that call's
_PyEval_EvalFrameDefault frame is in the native stack.
"""

import os
import select
import signal
import struct
import subprocess
import sys
import time

from ..trace import budget as _budget, ctfwrite as _ctfwrite
from ..trace import TASK_FILE, capture as _capture
from . import elf as _elf, remote as _remote, unbuffered
from .remote import RemoteError
from .. import env as _env
from ..errors import Error

# Synthetic addresses of Python frames: non-canonical on x86-64, so no
# native code can be there.
SYNTHETIC_BASE = 0x0100_0000_0000_0000
SYNTHETIC_SLOT = 0x100
EVAL_SYMBOLS = ("_PyEval_EvalFrameDefault",)
# Functions that call into the evaluator (run a Python function's frame):
# where, with the evaluator's own frames nameless, its frames are found.
EVALUATOR_CALLERS = (
    "PyEval_EvalCode", "PyEval_EvalCodeEx", "PyEval_EvalFrame", "PyEval_EvalFrameEx",
    "_PyEval_EvalFrameDefault", "_PyEval_Vector", "_PyFunction_Vectorcall",
    "PyObject_Call", "PyObject_CallOneArg", "PyObject_CallNoArgs", "PyObject_CallObject",
    "PyObject_Vectorcall", "PyObject_VectorcallDict", "PyObject_VectorcallMethod",
    "PyObject_CallFunctionObjArgs", "PyObject_CallMethodObjArgs", "_PyObject_Call",
    "_PyObject_MakeTpCall", "PyObject_CallFunction", "PyObject_CallMethod")
# Functions at the root end of a complete native stack of a Python thread
# (libc's own, when it has its local symbols; CPython's main and thread
# start functions, when it has not).
THREAD_ROOTS = ("_start", "__libc_start_main", "__libc_start_call_main", "start_thread",
                "clone3", "__clone3", "clone", "__clone", "main", "Py_BytesMain", "Py_Main",
                "Py_RunMain", "thread_run", "pythread_wrapper")
DEFAULT_RATE = 999
WAIT_MS = 100           # the longest wait between reads of the ring buffer (it
                        # wakes the sampler sooner when a quarter full).  Each
                        # read names the code objects its samples ran, from
                        # the process's memory, while the process still has
                        # it: a program that ends before a read leaves its
                        # functions with no file and no lines.
SCAN_SECONDS = 1.0      # how often new processes are looked for (children, sessions)
FRAME_BYTES, CODE_BYTES = 128, 256     # read at once per frame (sampler.bpf.c)
MAX_RATE = 20000
STACK_CACHE = 65536     # stacks remembered (about 30 MB; then it starts again)
FRAME_CACHE = 262144    # distinct Python frames (code object, instruction) per process

SAMPLE_EVENT_ID = _ctfwrite.EVENT_ID["SampledProfile"]
NAME_BYTES = 16         # of a qualname, read by the BPF program (sampler.h)
MAX_TASKS = 4           # the running task and those awaiting it (sampler.h)
_SAMPLE_HEAD = struct.Struct("<IIQIIIIQQ" + f"QQQ{NAME_BYTES}s" * MAX_TASKS)
_PY_FRAME = struct.Struct(f"<QIiII{NAME_BYTES}s")
_TARGET = struct.Struct("<Q14IQQQ14I")
# How many times (once a second) a process running asyncio is looked at
# for its C module's offsets before it is taken to have none.
ASYNCIO_LOOKS = 30
# Tests set it to unwind from stack copies where frame pointers would do,
# and compare the two.
UNWIND_ALWAYS = False


class SampledError(Error):
    pass


def load_sampler():
    """The _sampler module, or SampledError saying why --sampled cannot run."""
    try:
        from .. import _sampler
    except ImportError:
        raise SampledError("--sampled needs the BPF sampler, which this install of etwtrace "
                           "was built without (it needs clang and libbpf-dev at build time)"
                           ) from None
    return _sampler


def start_sampler(rate):
    """The _sampler module and a Sampler at `rate` Hz, loaded and attached.
    Its BPF program walks Python frames with bpf_loop where the kernel has
    it (5.17+), else unrolled; ETWTRACE_FRAME_WALK picks one."""
    sampler_module = load_sampler()
    walk = _env.choice(_env.FRAME_WALK)
    try:
        return sampler_module, sampler_module.Sampler(rate, walk)
    except OSError as ex:
        text = str(ex)
        if "Operation not permitted" in text or "Permission denied" in text:
            raise SampledError("--sampled needs root, or CAP_BPF, CAP_PERFMON and "
                               "CAP_SYS_PTRACE (" + text + ")") from None
        raise SampledError(f"--sampled cannot start its BPF program: {text} (it needs a "
                           "kernel with BPF ring buffers and perf_event programs, 5.8+)"
                           ) from None


# How many times a thread's OS name is read before it is left unnamed.
NAME_READS = 8


def _os_name(path):
    """A comm file's name, or None (read unbuffered: sampled/unbuffered.py)."""
    try:
        return unbuffered.read(path)[:64].decode("utf-8", "replace").rstrip("\n") or None
    except OSError:
        return None


class _Target:
    """One sampled process: its interpreter, and the functions named so far."""

    def __init__(self, pid, writer, sampler):
        self.pid = pid
        self.sampler = sampler   # the _sampler module: the constants it shares with C
        self.remote = _remote.Process(pid)
        self.writer = writer
        self.codes = {}          # (code, firstlineno, name16) -> (qualname, file, first, table)
        self.lines = {}          # (code key, line) -> synthetic address
        # What the sampler's splice (splice.h) needs to know of each frame:
        self.native_kinds = {}   # native address -> NATIVE_* bits
        self.frame_kinds = {}    # a Python frame's record bytes -> frame_kind()
        self.described = set()   # native function begins written as PythonFunction
        self.generation = 0      # hashed into its stacks by the BPF program
        self.cstack_owner = _remote.CSTACK_OWNER[self.remote.version]
        self.next_id = 1
        self.maps_read = time.monotonic()
        # asyncio (3.14+): the offsets its C module publishes, once found;
        # config() gives the program the running task's, so that each
        # sample says which task ran (with_task()).
        self.asyncio = None
        self.asyncio_looked = 0.0
        self.asyncio_looks = 0      # (given up after ASYNCIO_LOOKS)
        self.runs_asyncio = False   # a frame of asyncio's files was seen
        self.config_changed = False
        self.code_addresses = {}    # code object -> its frames' synthetic addresses
        self.tasks = {}             # tasks as samples saw them -> their frames' addresses
        self.task_addresses = {}    # "task:NAME" -> synthetic address
        # Without frame pointers, each sample carries a copy of the top of
        # its stack, which the sampler unwinds by the files' CFI.
        self.unwinder = None
        self.unwinder_misses = 0
        self.unwinder_regions = None    # the maps it was given files from
        self._look_for_asyncio()        # (3.15: built into the interpreter)
        if UNWIND_ALWAYS or not self.remote.keeps_frame_pointers():
            self.unwinder = sampler.Unwinder()
            self._add_files()
        # Thread names: the OS's, read from /proc (CPython 3.14+ gives a
        # threading.Thread's name to its OS thread, cut to 15 bytes).
        self.thread_names = {}   # tid -> the name written, or reads left
        self.comm = _os_name(f"/proc/{pid}/comm")
        try:
            own = os.stat("/proc/self/ns/pid")
            self.names_readable = (own.st_dev, own.st_ino) == self.pid_namespace()
        except (OSError, RemoteError):
            self.names_readable = False

    def name_thread(self, tid, stream, ts):
        """Writes thread tid's OS name (PythonThreadName) once it has one of
        its own, not the process's (read a few times: a thread may be named
        after its first samples).  Threads of a process in another pid
        namespace are left unnamed: their ids are not /proc's here."""
        state = self.thread_names.get(tid, NAME_READS)
        if not isinstance(state, int) or state <= 0 or tid == self.pid:
            return
        if not self.names_readable:
            self.thread_names[tid] = 0
            return
        name = _os_name(f"/proc/{self.pid}/task/{tid}/comm")
        if name and name != self.comm:
            stream.thread_name(ts, tid, name)
            self.thread_names[tid] = name
        else:
            self.thread_names[tid] = state - 1

    def _add_files(self):
        add_files(self.unwinder, self.remote.maps, self.pid)
        self.unwinder_regions = self.remote.maps.regions

    def refresh_unwinder(self):
        """Gives the unwinder the files mapped since, when samples came from
        code in no file it has (a library loaded since); the maps are read
        again at most once a second."""
        if self.unwinder is None:
            return
        misses = self.unwinder.ends()["no_file"]
        if misses != self.unwinder_misses:
            self.unwinder_misses = misses
            # The symbol lookups may have read them already (a new leaf).
            if time.monotonic() - self.maps_read > 1.0:
                self._read_maps()
            if self.remote.maps.regions != self.unwinder_regions:
                self._add_files()

    def _read_maps(self):
        try:
            self.remote.maps = _remote.ProcessMaps(self.pid)
        except Exception:
            pass
        self.maps_read = time.monotonic()

    def config(self):
        o = self.remote.offsets
        fields = o.fields
        # The program reads a frame's first FRAME_BYTES and a code object's
        # first CODE_BYTES at once (sampler.bpf.c): the fields must be there.
        frame = max(fields.get(("interpreter_frame", f), 0) + 8
                    for f in ("previous", "executable", "instr_ptr", "owner", "is_entry"))
        code = max(o[k] + 8 for k in (("code_object", "firstlineno"),
                                      ("code_object", "qualname"), ("pyobject", "ob_type")))
        if frame > FRAME_BYTES or code > CODE_BYTES:
            raise RemoteError(f"process {self.pid}: its frames or code objects are laid out "
                              "beyond what the sampler reads")
        # 3.11 reaches the thread's frame through its cframe.
        cframe = fields.get(("thread_state", "cframe"), 0)
        return _TARGET.pack(
            self.remote.runtime + o[("runtime_state", "interpreters_head")],
            o[("interpreter_state", "threads_head")], o[("thread_state", "next")],
            o[("thread_state", "native_thread_id")],
            fields.get(("thread_state", "current_frame"), 0),
            o[("interpreter_frame", "previous")], o[("interpreter_frame", "executable")],
            o[("interpreter_frame", "instr_ptr")], o[("interpreter_frame", "owner")],
            o[("code_object", "firstlineno")], o[("code_object", "qualname")],
            o[("code_object", "co_code_adaptive")], o[("unicode_object", "asciiobject_size")],
            self.sampler.NO_OWNER if self.cstack_owner is None else self.cstack_owner,
            fields.get(("interpreter_frame", "is_entry"), 0),
            *self.pid_namespace(), self.remote.code_type, o[("pyobject", "ob_type")],
            self.generation & 0xFFFFFFFF, cframe, fields.get(("cframe", "current_frame"), 0),
            0 if self.unwinder is None else self.sampler.STACK_BYTES,
            *self._task_offsets())

    def _task_offsets(self):
        """The offsets of sampler.h's etw_target that follow a running
        asyncio task (zeros: none)."""
        a = self.asyncio
        o = self.remote.offsets.fields
        if a is None or ("gen_object", "gi_iframe") not in o:
            return (0,) * 9
        task = lambda field: a[("asyncio_task_object", field)]     # noqa: E731
        return (a[("asyncio_thread_state", "asyncio_running_task")], task("task_name"),
                o[("long_object", "ob_digit")], task("task_coro"), o[("gen_object", "gi_iframe")],
                task("task_awaited_by"), task("task_is_task"), task("task_awaited_by_is_set"),
                o[("set_object", "table")])

    def _look_for_asyncio(self, now_it_runs=False):
        """Finds asyncio's offsets (3.14+), at most once a second, until
        found: its C module may be loaded after sampling began (at once
        when its first frame is seen: `now_it_runs`)."""
        now = time.monotonic()
        if self.asyncio is not None or self.asyncio_looks >= ASYNCIO_LOOKS \
                or (now - self.asyncio_looked < 1.0 and not now_it_runs):
            return
        self.asyncio_looked = now
        self.asyncio_looks += 1
        if self.remote.version < (3, 14):
            return
        if self.asyncio_looks > 1:      # (the first look uses the maps just read)
            self._read_maps()
        try:
            self.asyncio = self.remote.asyncio_offsets()
        except RemoteError:
            self.asyncio = None
        self.config_changed = self.asyncio is not None

    def with_task(self, stream, ts, payload, coroutine, seen):
        """A sample's encoded stack (leaf first) with the frames of the
        asyncio task that ran it: `task:NAME` frames of the tasks awaiting
        it, outermost first, then its own, right above the outermost frame
        of its coroutine (`coroutine`: its code object).  `seen`: the
        running task and those awaiting it, nearest first, as the sample
        saw them (address, name type, digits, text).  Unchanged where its
        coroutine is not on the stack."""
        frames = self.tasks.get(seen)
        if frames is None:
            names = []
            for task, kind, digits, text in seen:
                name = self.remote.seen_task_name(kind, digits, text)
                if name is None:        # (not ASCII, or long: read whole)
                    try:
                        name = self.remote.task_name(task, self.asyncio)
                    except RemoteError:
                        name = text.split(b"\0", 1)[0].decode("utf-8", "replace") or "?"
                names.append(name)
            frames = self.tasks[seen] = [self._task_address(stream, ts, n) for n in names]
        own = self.code_addresses.get(coroutine)
        if not own:
            return payload
        (n,) = struct.unpack_from("<I", payload)
        stack = list(struct.unpack_from(f"<{n}Q", payload, 4))
        outermost = max((i for i, address in enumerate(stack) if address in own), default=None)
        if outermost is None:
            return payload
        # Leaf first: the task's own frame, then those awaiting it.
        stack[outermost + 1:outermost + 1] = frames
        return _ctfwrite.sample_payload(stack)

    def _task_address(self, stream, ts, name):
        label = f"task:{name}"
        address = self.task_addresses.get(label)
        if address is None:
            address = SYNTHETIC_BASE + len(self.lines) * SYNTHETIC_SLOT
            self.lines[("task", label)] = address
            self.task_addresses[label] = address
            stream.function(ts, self._function_id(), address, address + SYNTHETIC_SLOT, 0,
                            True, TASK_FILE, label)
        return address

    def pid_namespace(self):
        """(device, inode) of the process's pid namespace: the program finds
        the thread by the id its own namespace gives it (what CPython
        records as native_thread_id)."""
        try:
            st = os.stat(f"/proc/{self.pid}/ns/pid")
        except OSError as ex:
            raise RemoteError(f"process {self.pid}: {ex.strerror}") from None
        return st.st_dev, st.st_ino

    def _function_id(self):
        fid = self.next_id
        self.next_id += 1
        return fid

    def frame_kind(self, stream, ts, raw):
        """What a Python frame of a sample is (its record bytes): the
        synthetic address of its function and line (plus FRAME_ENDS_RUN
        for the first frame of an evaluator call, 3.11), FRAME_ENTRY (the
        frame C code pushes to enter the evaluator, 3.13+), or
        FRAME_NO_FUNCTION."""
        sampler = self.sampler
        code, unit, first, owner, _r, name16 = _PY_FRAME.unpack(raw)
        if owner == self.cstack_owner:
            return sampler.FRAME_ENTRY
        if not code:
            return sampler.FRAME_NO_FUNCTION
        address = self.python_address(stream, ts, code, unit, first, name16)
        return address | sampler.FRAME_ENDS_RUN if owner & sampler.FRAME_IS_ENTRY else address

    def python_address(self, stream, ts, code, unit, first, name16):
        key = (code, first, name16)
        info = self.codes.get(key)
        if info is None:
            short = name16.split(b"\0")[0]
            try:
                info = self.remote.code(code)
            except RemoteError:
                info = None
            if info is None or not _same_code(info, first, short):
                # Freed (or freed and reused) since the sample: the name
                # the sample itself read.
                info = (short.decode("ascii", "replace") or "?", "?", first, b"")
            self.codes[key] = info
        qualname, file, firstlineno, table = info
        line = _remote.line_of(table, firstlineno, unit) if table else firstlineno
        if not 0 <= line < 1 << 31:
            line = 0    # no line: a frame read mid-change, or a code object's -1
        address = self.lines.get((key, line))
        if address is None:
            address = SYNTHETIC_BASE + len(self.lines) * SYNTHETIC_SLOT
            self.lines[(key, line)] = address
            self.code_addresses.setdefault(code, set()).add(address)
            stream.function(ts, self._function_id(), address, address + SYNTHETIC_SLOT, line,
                            True, file, qualname)
            if not self.runs_asyncio and "asyncio" in file:
                self.runs_asyncio = True
                self._look_for_asyncio(now_it_runs=True)
        return address

    def native_kind(self, stream, ts, address):
        """What the splice needs to know of the native function at
        `address` (NATIVE_* bits); describes it (a PythonFunction with
        IsPythonCode 0) the first time."""
        where = self.remote.maps.function_at(address)
        if where is None and time.monotonic() - self.maps_read > 1.0:
            # A library mapped after the maps were read: read them again.
            self._read_maps()
            where = self.remote.maps.function_at(address)
        name = None
        if where is not None and where[0] is not None:
            name, begin, end, path = where
            if begin not in self.described:
                self.described.add(begin)
                stream.function(ts, self._function_id(), begin, end, 0, False, path, name)
        sampler = self.sampler
        kind = 0
        if name in EVAL_SYMBOLS:
            kind |= sampler.NATIVE_EVAL
        if name in THREAD_ROOTS:
            kind |= sampler.NATIVE_THREAD_ROOT
        if name in EVALUATOR_CALLERS:
            kind |= sampler.NATIVE_EVAL_CALLER
        if name is None:
            # Where the evaluator's frames have no symbol (a tail-calling
            # interpreter without local symbols, as Debian's 3.15:
            # _PyEval_EvalFrameDefault only enters the instructions'
            # nameless functions), the evaluator is a nameless frame of
            # the interpreter's file right above a call into Python.
            region = self.remote.maps.region(address)
            if region is not None and region[3] == self.remote.binary:
                kind |= sampler.NATIVE_NAMELESS
        return kind


def add_files(unwinder, maps, pid):
    """Gives an Unwinder every ELF file process pid maps (ProcessMaps),
    each once, over the span of its mappings."""
    spans = {}
    for start, end, _offset, path in maps.regions:
        low, high = spans.get(path, (start, end))
        spans[path] = (min(low, start), max(high, end))
    unwinder.clear()
    for path, (start, end) in spans.items():
        bias = maps.bias(path)
        if bias is None:
            continue        # no ELF file (a data file it maps)
        # The process's own view of its files (a container's), else ours.
        for name in (f"/proc/{pid}/root{path}", path):
            try:
                unwinder.add(start, end, bias & 0xFFFF_FFFF_FFFF_FFFF, name)
                break
            except OSError:
                pass
    _add_vdso(unwinder, pid)


def _add_vdso(unwinder, pid):
    """The kernel's vDSO (clock_gettime and the like, in no file): its
    image, read from the process, goes to the unwinder through a memfd,
    so samples taken inside it unwind too."""
    try:
        maps = unbuffered.read(f"/proc/{pid}/maps").splitlines()
        span = next(line.split()[0] for line in maps if line.rstrip().endswith(b"[vdso]"))
        start, end = (int(x, 16) for x in span.split(b"-"))
        with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
            image = os.pread(mem.fileno(), end - start, start)
    except (OSError, StopIteration, ValueError):
        return
    load = _elf.first_load(image)
    if load is None:
        return
    fd = os.memfd_create("etwtrace-vdso", os.MFD_CLOEXEC)
    try:
        os.write(fd, image)
        unwinder.add(start, end, (start - load[0] + load[1]) & 0xFFFF_FFFF_FFFF_FFFF,
                     f"/proc/self/fd/{fd}")
    except OSError:
        pass
    finally:
        os.close(fd)


def _same_code(info, first, short):
    """Whether a code object read now is the one a sample saw: the same
    first line and, for an ASCII name, the same first bytes of it."""
    qualname, _, firstlineno, _ = info
    if firstlineno != first:
        return False
    if not qualname.isascii():
        return True
    name = qualname.encode()
    return name[:NAME_BYTES] == short if len(short) == NAME_BYTES else name == short


class SampledRecorder:
    """Turns the BPF program's records into a capture's events, within the
    capture's budget (`budget`: its _budget.Budget, if it has one; `say`:
    where the stop is said)."""

    def __init__(self, path, sampler, budget=None, say=None):
        self.path = path
        self.sampler = sampler      # the _sampler module: its splice()
        self.ctf_root = None
        if path is not None:        # (None: new_writer() says where events go)
            self.ctf_root = os.path.join(path, "ctf")
            os.makedirs(self.ctf_root, mode=0o700, exist_ok=True)
        self.budget = _budget.WriterBudget(path, budget, say)
        self.targets = {}
        self.kinds = {}             # pid -> (frame_kinds, native_kinds), for the splice
        self.writers = {}
        self.processes = 0
        self.forgotten = 0          # samples of a stack hash no longer known here
        self.unwound = {}           # how unwindings from stack copies ended: reason -> samples
        self.stacks = {}            # stack hash -> encoded stack (SampledProfile payload)
        self.old_stacks = {}        # those of the generation before
        self.generations = 0
        self.regenerated = set()    # processes whose new generation the program must learn
        self.drains = 0             # complete reads of the ring buffer
        self.regenerated_at = -1    # the drain that ends before the program knows them

    def add(self, pid):
        target = _Target(pid, None, self.sampler)     # RemoteError: not (yet) a CPython we read
        target.generation = self._generation()
        target.writer = self.writers[pid] = self.new_writer(pid)
        self.targets[pid] = target
        self.kinds[pid] = (target.frame_kinds, target.native_kinds, target.unwinder)
        self.processes += 1
        return target

    def new_writer(self, pid):
        """Where process pid's events go (a TraceWriter's interface): its
        trace in the capture."""
        return _ctfwrite.TraceWriter(self.ctf_root, pid, self.budget)

    @property
    def samples(self):
        """Samples written."""
        return self.budget.kept

    def _keeps(self, target):
        """Whether samples of `target` are still written (after the stop,
        they are only counted: no work is spent on them)."""
        return target.writer.recording and not self.budget.stopped

    def handle(self, record):
        """A record the sampler could not turn into an event itself: a
        stack seen the first time, or one it does not know."""
        (pid, tid, ts, n_native, n_python, flags, _, stack_hash, task_code,
         *tasks) = _SAMPLE_HEAD.unpack_from(record)
        target = self.targets.get(pid)
        if target is None:
            return
        if not self._keeps(target):
            self.budget.samples_not_kept += 1
            return
        stream = target.writer.stream(tid)
        target.name_thread(tid, stream, ts)
        # The program sends a stack whole once, then its hash alone.
        payload = self.stacks.get(stack_hash)
        if payload is None:
            payload = self.old_stacks.get(stack_hash)
        if payload is None:
            if flags & self.sampler.KNOWN_STACK:
                # Lost: rare (a sample taken as its generation changed).
                self.forgotten += 1
                return
            payload = self.sampler.splice(record, target.frame_kinds, target.native_kinds)
            if payload is None:
                self._learn(target, stream, ts, record, n_native, n_python)
                payload = self.sampler.splice(record, target.frame_kinds, target.native_kinds)
            if tasks[0] and payload and target.asyncio is not None:
                seen = tuple(tuple(tasks[i:i + 4]) for i in range(0, len(tasks), 4)
                             if tasks[i])
                payload = target.with_task(stream, ts, payload, task_code, seen)
            if len(self.stacks) >= STACK_CACHE and self.drains > self.regenerated_at:
                # Starts again: the program hashes every process's stacks
                # anew once told (at the end of this drain), and sends them
                # whole.  The stacks before stay known through the next
                # drain, which reads what the program sent before it knew.
                self.old_stacks = self.stacks
                self.stacks = {}
                for t in self.targets.values():
                    t.generation = self._generation()
                self.regenerated.update(self.targets)
                self.regenerated_at = self.drains + 1
            self.stacks[stack_hash] = payload
        if payload:
            stream.sample(ts, payload)

    def handle_chunk(self, pid, tid, first, last, count, events):
        """Samples of known stacks, as the sampler encoded them."""
        target = self.targets.get(pid)
        if target is None:
            return
        if self._keeps(target):
            stream = target.writer.stream(tid)
            target.name_thread(tid, stream, first)
            stream.extend(events, first, last, count)
        else:
            self.budget.samples_not_kept += count

    def _generation(self):
        self.generations += 1
        return self.generations

    def _learn(self, target, stream, ts, record, n_native, n_python):
        """Looks up the frames of a sample the splice does not know yet
        (splice.h): each new frame once, by its record bytes."""
        kinds = target.native_kinds
        for address in struct.unpack_from(f"<{n_native}Q", record, _SAMPLE_HEAD.size):
            if address not in kinds:
                kinds[address] = target.native_kind(stream, ts, address)
        frames = target.frame_kinds
        if len(frames) + n_python > FRAME_CACHE:
            frames.clear()
        size = _PY_FRAME.size
        base = _SAMPLE_HEAD.size + 8 * n_native
        for at in range(base, base + n_python * size, size):
            raw = record[at:at + size]
            if raw not in frames:
                frames[raw] = target.frame_kind(stream, ts, raw)

    def forget(self, pid):
        """Ends process pid's trace (it ended, or is sampled no more)."""
        target = self.targets.pop(pid, None)
        self.kinds.pop(pid, None)
        writer = self.writers.pop(pid, None)
        if target is not None:
            if target.unwinder is not None:
                for reason, n in target.unwinder.ends().items():
                    self.unwound[reason] = self.unwound.get(reason, 0) + n
            target.remote.close()
        if writer is not None:
            writer.close()

    def flush(self):
        for w in self.writers.values():
            w.flush()

    def close(self):
        for pid in list(self.targets):
            self.forget(pid)


class Sampling:
    """The BPF sampler and a capture's recorder together: processes come
    and go while it runs; drain() turns the samples taken into events."""

    def __init__(self, rate):
        self.sampler_module, self.sampler = start_sampler(rate)    # SampledError: cannot
        self.recorder = None

    def record_into(self, path, budget=None, say=None):
        """Starts the capture's trace in the capture directory `path`, within
        its `budget` (a _budget.Budget; without one, the reserve alone)."""
        self.recorder = SampledRecorder(path, self.sampler_module, budget, say)

    def record_with(self, recorder):
        """Hands the samples to `recorder` (a SampledRecorder whose
        new_writer() keeps them elsewhere than in a capture)."""
        self.recorder = recorder

    @property
    def processes(self):
        """How many processes were sampled."""
        return self.recorder.processes if self.recorder is not None else 0

    @property
    def samples(self):
        return self.recorder.samples if self.recorder is not None else 0

    def add(self, pid):
        """Samples process pid from now on; RemoteError when it is no
        CPython this reads (or not yet: its interpreter is not mapped)."""
        target = self.recorder.add(pid)
        try:
            self.sampler.add(pid, target.config())
        except (OSError, ValueError, RemoteError) as ex:
            self.recorder.forget(pid)
            raise RemoteError(f"process {pid}: {ex}") from None
        return target

    def remove(self, pid):
        self.sampler.remove(pid)
        self.drain()
        self.recorder.forget(pid)

    def fileno(self):
        """Readable when the ring buffer needs reading."""
        return self.sampler.fileno()

    def drain(self):
        recorder = self.recorder
        for item in self.sampler.drain(recorder.stacks, SAMPLE_EVENT_ID, recorder.kinds,
                                       STACK_CACHE):
            if type(item) is tuple:
                recorder.handle_chunk(*item)
            else:
                recorder.handle(item)
        for pid, target in recorder.targets.items():
            target.refresh_unwinder()
            if target.runs_asyncio and target.asyncio is None:
                target._look_for_asyncio()      # (its C module loaded since)
            if target.config_changed:
                target.config_changed = False
                self.sampler.add(pid, target.config())
        while recorder.regenerated:
            pid = recorder.regenerated.pop()
            target = recorder.targets.get(pid)
            if target is not None:
                self.sampler.add(pid, target.config())
        recorder.drains += 1

    def lost(self):
        """Samples lost so far: the ring buffer's (it was full), and those
        of a stack no longer known."""
        return self.sampler.dropped() + self.recorder.forgotten

    def close(self):
        """Stops sampling, writes out what was taken; returns how many
        samples were lost (lost())."""
        try:
            self.drain()
            return self.lost()
        finally:
            self.sampler.close()
            if self.recorder is not None:
                self.recorder.close()


# Capabilities --sampled needs without root (linux/capability.h).
CAP_SYS_PTRACE, CAP_PERFMON, CAP_BPF = 19, 38, 39


def check_privileges():
    """SampledError unless this process may load BPF programs, open perf
    events on every CPU and read other processes' memory."""
    if os.geteuid() == 0:
        return
    effective = 0
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    effective = int(line.split()[1], 16)
    except OSError:
        pass
    if not all(effective >> cap & 1 for cap in (CAP_SYS_PTRACE, CAP_PERFMON, CAP_BPF)):
        raise SampledError("--sampled needs root, or CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE")


def run(path, rate, say, pid=None, target=None, duration=None, max_size=0):
    """Samples process `pid` (attach) or runs `target` (script args) and
    samples it, into the capture `path`, which may hold `max_size` bytes
    (0: no limit); returns the exit status."""
    load_sampler()
    check_privileges()
    if pid is not None:
        check_process(pid)
    elif sys.version_info[:2] not in _remote.SUPPORTED:
        raise SampledError(f"--sampled reads CPython {_remote.supported_text()}; this is "
                           f"{sys.version.split()[0]} (use --stack, which works on 3.9+)")
    sampling = Sampling(rate)
    try:
        directory = _capture.CaptureDir(path).open()
    except BaseException:
        sampling.close()
        raise
    path = directory.path
    try:
        budget = _budget.create(os.path.join(path, "ctf"), max_size)
    except _budget.BudgetError as ex:
        sampling.close()
        directory.close()
        raise SampledError(str(ex)) from None
    status = 0
    child = None
    stop = []
    dropped = 0
    # Ctrl-C ends the wait at once: the signal's wake-up byte makes the
    # pipe the loop polls readable.
    wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    previous = signal.signal(signal.SIGINT, lambda *a: stop.append(1))
    previous_wakeup = signal.set_wakeup_fd(wake_write)
    try:
        sampling.record_into(path, budget, say)
        directory.write_manifest(format=1, mode="sampled", recorder="bpf", rate=rate,
                                 command=target, attached_pid=pid,
                                 python=sys.version.split()[0], started=time.time(),
                                 **({"max_size": max_size} if max_size else {}))
        if pid is None:
            _read_own_symbols()
            child = subprocess.Popen([sys.executable, *target])
            pid = child.pid
            began = _wait_for_runtime(child, sampling)
        else:
            try:
                sampling.add(pid)
            except RemoteError as ex:
                raise SampledError(str(ex)) from None
            began = True
        if began:
            say(f"etwtrace: sampling process {pid} at {rate} Hz (BPF; the program runs "
                f"without hooks)")
            native_frames = describe_native_frames(sampling.recorder.targets[pid], say)
            directory.write_manifest(native_frames=native_frames)
            status = _sample_until_done(sampling, pid, child, duration, stop, wake_read, say)
        if child is not None:
            status = child.wait()
    finally:
        signal.set_wakeup_fd(previous_wakeup)
        signal.signal(signal.SIGINT, previous)
        os.close(wake_read)
        os.close(wake_write)
        dropped = sampling.close()
        info = {"finished": time.time(), "samples": sampling.samples,
                "processes": sampling.processes}
        if dropped:
            info["samples_lost"] = dropped
        unwound = sampling.recorder.unwound if sampling.recorder is not None else {}
        if unwound:
            info["native_unwinding"] = unwound
        if child is not None:
            info["exit_status"] = status
        info.update(sampling.recorder.budget.info() if sampling.recorder is not None
                    else budget.info())
        try:
            directory.write_manifest(**info)
        finally:
            budget.remove()     # what it says is in the manifest now
            directory.close()
    lost = _budget.loss_text({}, info)
    if lost:
        say(f"etwtrace: {lost}")
    short = unwinding_cut_short(unwound)
    if short:
        say(f"etwtrace: {short}")
    of = f" of {sampling.processes} processes" if sampling.processes > 1 else ""
    taken = sampling.samples + (sampling.recorder.budget.samples_not_kept
                                if sampling.recorder is not None else 0)
    if child is not None and not taken:
        say(f"etwtrace: process {pid} ended before its first sample; capture saved to {path} "
            "(no samples)")
    else:
        say(f"etwtrace: {sampling.samples:,} samples{of}; capture saved to {path}")
    return status


def _sample_until_done(sampling, pid, child, duration, stop, wake_read, say):
    """Drains samples until the process ends (the program run: its exit
    status), the duration is up, or Ctrl-C (`stop`)."""
    status = 0
    until = None if duration is None else time.monotonic() + duration
    # A program it runs is followed into the Python processes it starts
    # (multiprocessing's workers, subprocesses), as --stack follows them.
    finder = None
    if child is not None:
        from .finder import PythonFinder
        finder = PythonFinder(root=pid)
        next_scan = time.monotonic() + SCAN_SECONDS
    # The process's pidfd becomes readable when it ends (zombie or not):
    # the loop sleeps on it between drains of the ring buffer.
    waiting = select.poll()
    pidfd = os.pidfd_open(pid)
    waiting.register(pidfd, select.POLLIN)
    waiting.register(sampling.fileno(), select.POLLIN)
    waiting.register(wake_read, select.POLLIN)
    try:
        while not stop:
            wait = WAIT_MS
            if finder is not None:
                wait = min(wait, (next_scan - time.monotonic()) * 1000)
            if until is not None:
                wait = min(wait, (until - time.monotonic()) * 1000)
            ready = waiting.poll(max(wait, 0))
            gone = any(fd == pidfd for fd, _ in ready)
            sampling.drain()
            if finder is not None and time.monotonic() >= next_scan:
                finder.scan(sampling.add, sampling.remove)
                next_scan = time.monotonic() + SCAN_SECONDS
            if gone:
                if child is not None:
                    status = child.wait()
                else:
                    say(f"etwtrace: process {pid} ended")
                break
            if until is not None and time.monotonic() >= until:
                break
    finally:
        os.close(pidfd)
    return status


def describe_native_frames(target, say):
    """What the manifest says of where a process's native frames come
    from (nothing to warn of: both ways give whole stacks)."""
    if target.unwinder is None:
        return "complete (frame pointers)"
    return (f"unwound from a {target.sampler.STACK_BYTES // 1024} KiB copy of the stack by the files' call "
            "frame information (the interpreter has no frame pointers)")


UNWIND_REASONS = {
    "no_file": "code in no file (JIT code, or a library loaded and unloaded since)",
    "no_cfi": "code without call frame information",
    "outside_copy": "a stack deeper than its copy",
    "unsupported": "call frame information it does not follow",
    "full": "more native frames than a sample keeps",
}


def unwinding_cut_short(unwound):
    """A sentence for the native stacks unwound from stack copies that
    stop before the thread's first frame, when there are more than 1 in
    100; else None."""
    total = sum(unwound.values())
    short = {r: n for r, n in unwound.items() if r != "complete" and n}
    if not total or sum(short.values()) * 100 <= total:
        return None
    why = "; ".join(f"{n:,} at {UNWIND_REASONS.get(r, r)}"
                    for r, n in sorted(short.items(), key=lambda kv: -kv[1]))
    return (f"{sum(short.values()):,} of {total:,} samples have native frames cut short "
            f"({why}); their Python frames are all there")


def check_process(pid):
    """SampledError unless pid is a CPython the sampler reads."""
    if not os.path.exists(f"/proc/{pid}"):
        raise SampledError(f"--pid {pid}: no such process")
    try:
        process = _remote.Process(pid)
    except RemoteError as ex:
        raise SampledError(f"--pid {pid}: {ex}") from None
    process.close()


def _read_own_symbols():
    """Reads this interpreter's symbols (it is the one the program runs):
    then the program is sampled from its first milliseconds, not after
    the ~0.1 s its files' symbols take to read."""
    try:
        _elf.ProcessMaps(os.getpid()).find_symbol("_PyRuntime")
    except _elf.ElfError:
        pass


def _wait_for_runtime(child, sampling):
    """Adds the child once its interpreter is mapped (right after exec):
    True, or False when the program ended first (a short program)."""
    pid = child.pid
    deadline = time.monotonic() + 10
    while True:
        try:
            sampling.add(pid)
            return True
        except RemoteError as ex:
            if child.poll() is not None:
                return False
            if time.monotonic() > deadline:
                raise SampledError(f"cannot sample process {pid}: {ex}") from None
            time.sleep(0.005)
