"""The sampler's unwinder of stacks without frame pointers
(_native/sampler/unwind.c), with no BPF and no root: a child blocked in a
system call gives its user registers (ptrace) and its stack
(/proc/PID/mem), the same copy the BPF program takes at a sample, and the
unwinder must walk it by the files' call frame information from the
system call to the thread's first frame, through the interpreter.  Bad
copies (random bytes, nonsense registers) must end cleanly."""

import os
import random
import struct
import subprocess
import sys
import time

import pytest

from conftest import SCRIPTS
from etwtrace.sampled import elf as _elfsym, sampler as _sampled

pytestmark = pytest.mark.versioned

COPY_HEAD = struct.Struct("<QQQQII")     # struct etw_stack_copy before its bytes


def unwinder_of(sampler, pid):
    """An Unwinder holding process pid's files, as the sampler fills it."""
    maps = _elfsym.ProcessMaps(pid)
    unwinder = sampler.Unwinder()
    _sampled.add_files(unwinder, maps, pid)
    return unwinder, maps


def snapshot(pid, size):
    """(ip, sp, bp) of a child and the top `size` bytes of its stack, as
    the BPF program copies them at a sample: taken while ptrace holds it
    stopped for a moment (a parent may trace its child)."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    PTRACE_GETREGS, PTRACE_ATTACH, PTRACE_DETACH = 12, 16, 17
    regs = (ctypes.c_ulonglong * 27)()      # struct user_regs_struct
    if libc.ptrace(PTRACE_ATTACH, pid, None, None) != 0:
        pytest.skip(f"cannot ptrace a child here: {os.strerror(ctypes.get_errno())}")
    try:
        os.waitpid(pid, 0)
        assert libc.ptrace(PTRACE_GETREGS, pid, None, ctypes.byref(regs)) == 0
        rbp, rip, rsp = regs[4], regs[16], regs[19]
        return (rip, rsp, rbp), read_stack(pid, rsp, size)
    finally:
        libc.ptrace(PTRACE_DETACH, pid, None, None)


def read_stack(pid, sp, size):
    """A page at a time, to the stack's end, as the program copies it."""
    data = b""
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        chunk = 4096 - sp % 4096
        while len(data) < size:
            try:
                data += os.pread(mem.fileno(), min(chunk, size - len(data)), sp + len(data))
            except OSError:
                break
            chunk = 4096
    return data


def blocked_child(code):
    """A Python child that runs `code` and then blocks reading stdin (the
    test writes a byte to end it)."""
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, cwd=SCRIPTS)
    assert child.stdout.readline() == b"ready\n"
    # Until it sits in read(): /proc/PID/syscall names the call (0) then.
    for _ in range(500):
        with open(f"/proc/{child.pid}/syscall") as f:
            fields = f.read().split()
        if fields and fields[0] == "0":
            return child
        time.sleep(0.01)
    child.kill()
    pytest.fail(f"the child never blocked in read(): {fields}")


def stack_copy(regs, data):
    """What the BPF program sends: registers, then the stack from sp."""
    ip, sp, bp = regs
    return COPY_HEAD.pack(ip, sp, bp, 0, len(data), 0) + data


def names(maps, addresses):
    out = []
    for address in addresses:
        where = maps.function_at(address)
        out.append(where[0] if where is not None and where[0] else hex(address))
    return out


CALLBACK = """
import sys
def key(x):
    sys.stdout.write("ready\\n"); sys.stdout.flush()
    sys.stdin.read(1)
    return x
sorted([1], key=key)
"""


def test_a_blocked_thread_unwinds_to_its_first_frame(sampler):
    """From read() back to _start, through the evaluator and the C code of
    sorted() between two Python frames."""
    child = blocked_child(CALLBACK)
    try:
        unwinder, maps = unwinder_of(sampler, child.pid)
        frames = unwinder.unwind(stack_copy(*snapshot(child.pid, sampler.STACK_BYTES)))
        named = names(maps, frames)
        assert unwinder.ends()["complete"] == 1, (unwinder.ends(), named)
        assert named[-1] == "_start" and "__libc_start_main" in named, named
        assert "Py_BytesMain" in named or "Py_Main" in named or "main" in named, named
        assert len(named) >= 12, named
        if "_PyEval_EvalFrameDefault" not in named and sys.version_info >= (3, 14):
            return      # nameless evaluator frames: Debian's 3.14 and 3.15 keep no
                        # local symbols (3.11 and 3.13 here do)
        # Two evaluator calls (the module, then key from sorted) with
        # sorted's C frames between them.
        evals = [i for i, n in enumerate(named) if n == "_PyEval_EvalFrameDefault"]
        sort = [i for i, n in enumerate(named) if n in ("list_sort", "builtin_sorted")]
        assert len(evals) >= 2 and sort and evals[0] < min(sort) < evals[-1], named
    finally:
        child.communicate(b"x")


def test_a_copy_cut_short_stops_where_it_ends(sampler):
    child = blocked_child(CALLBACK)
    try:
        unwinder, maps = unwinder_of(sampler, child.pid)
        regs, data = snapshot(child.pid, sampler.STACK_BYTES)
        whole = unwinder.unwind(stack_copy(regs, data))
        short = unwinder.unwind(stack_copy(regs, data[:256]))
        assert unwinder.ends()["outside_copy"] == 1, unwinder.ends()
        # What it gave is the whole stack's beginning, no frame made up.
        assert 1 <= len(short) < len(whole) and short == whole[:len(short)]
    finally:
        child.communicate(b"x")


def test_a_sample_inside_the_vdso_unwinds(sampler):
    """clock_gettime runs in the kernel's vDSO, which no file holds: its
    image is read from the process, so a stop inside it unwinds whole."""
    child = subprocess.Popen([sys.executable, "-c", "import time\nprint('ready', flush=True)\n"
                              "while True: time.monotonic()"],
                             stdout=subprocess.PIPE, cwd=SCRIPTS)
    try:
        assert child.stdout.readline() == b"ready\n"
        with open(f"/proc/{child.pid}/maps") as f:
            span = next((line.split()[0] for line in f if line.rstrip().endswith("[vdso]")), None)
        if span is None:
            pytest.skip("this kernel maps no vDSO")
        low, high = (int(x, 16) for x in span.split("-"))
        unwinder, maps = unwinder_of(sampler, child.pid)
        for _ in range(2000):
            regs, data = snapshot(child.pid, sampler.STACK_BYTES)
            if low <= regs[0] < high:
                break
        else:
            pytest.skip("no stop landed inside the vDSO")
        named = names(maps, unwinder.unwind(stack_copy(regs, data)))
        assert unwinder.ends()["complete"] == 1, (unwinder.ends(), named)
        assert named[-1] == "_start" and "clock_gettime" in " ".join(named[:4]), named
    finally:
        child.kill()
        child.wait()
        child.stdout.close()


def test_code_in_no_file_is_said(sampler):
    """An address no file holds (JIT code, a library loaded since) ends
    the walk and is counted, unless frame pointers lead on."""
    unwinder = sampler.Unwinder()
    assert unwinder.unwind(COPY_HEAD.pack(0x1234, 0x7000_0000, 0, 0, 0, 0)) == [0x1234]
    assert unwinder.ends()["no_file"] == 1
    # Frame pointers in the copy: rbp -> (saved rbp 0, return address).
    sp = 0x7000_0000
    data = struct.pack("<QQQ", 0, 0, 0x5555) + bytes(40)
    assert unwinder.unwind(COPY_HEAD.pack(0x1234, sp, sp + 8, 0, len(data), 0) + data) \
        == [0x1234, 0x5555]


def test_bad_copies_end_cleanly(sampler):
    """Random stacks and registers over this process's real files: every
    walk ends, inside its room, without a crash (the ASan run checks the
    reads)."""
    unwinder, maps = unwinder_of(sampler, os.getpid())
    texts = [(start, end) for start, end, _o, path in maps.regions]
    rng = random.Random(11)
    with pytest.raises(ValueError):
        unwinder.unwind(b"short")
    assert unwinder.unwind(COPY_HEAD.pack(0, 0, 0, 0, 0, 0)) == []
    for i in range(3000):
        start, end = rng.choice(texts)
        ip = rng.randrange(start, end)
        sp = rng.randrange(1 << 47) & ~7
        size = rng.choice((0, 8, 100, 4096, sampler.STACK_BYTES))
        if i % 2:
            # Words that point back into the copy and at code: walks go on.
            words = [rng.choice((sp + rng.randrange(size + 64), rng.randrange(start, end),
                                 rng.getrandbits(64))) for _ in range(size // 8)]
            data = struct.pack(f"<{len(words)}Q", *words)
        else:
            data = rng.randbytes(size)
        # A size field larger than the bytes that follow is cut to them.
        claimed = size + rng.choice((0, 0, 8, 1 << 20))
        frames = unwinder.unwind(COPY_HEAD.pack(ip, sp, rng.getrandbits(64), rng.getrandbits(64), claimed, 0) + data)
        assert 1 <= len(frames) <= sampler.MAX_NATIVE + 1 and frames[0] == ip
    assert sum(unwinder.ends().values()) == 3000 + 1


def test_a_file_that_is_no_elf_is_refused(sampler, tmp_path):
    unwinder = sampler.Unwinder()
    junk = tmp_path / "junk"
    junk.write_bytes(b"not an ELF file" * 10)
    with pytest.raises(OSError):
        unwinder.add(0x1000, 0x2000, 0, str(junk))
    with pytest.raises(OSError):
        unwinder.add(0x1000, 0x2000, 0, str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(OSError):
        unwinder.add(0x1000, 0x2000, 0, str(empty))


def test_a_process_without_frame_pointers_gets_an_unwinder(sampler):
    """The target of a process is given an unwinder and its files exactly
    when its interpreter keeps no frame pointers (or tests ask for it)."""
    child = blocked_child(CALLBACK)
    try:
        try:
            target = _sampled._Target(child.pid, None, sampler)
        except _sampled.RemoteError as ex:
            pytest.skip(f"the sampler does not read this Python: {ex}")
        keeps = target.remote.keeps_frame_pointers()
        assert (target.unwinder is None) == keeps
        config = _sampled._TARGET.unpack(target.config())
        # stack_bytes: after the 14 words of offsets, three addresses and
        # four more words (sampler.h's etw_target; the task offsets follow).
        assert config[1 + 14 + 3 + 4] == (0 if keeps else sampler.STACK_BYTES)
        target.remote.close()
    finally:
        child.communicate(b"x")
