"""What differs between x86-64 and aarch64 (_native/arch.h), checked on the
machine the tests run on: the jitdump's ELF machine and the unwind info
it carries, and the trampolines' address ranges in the perf map.  These
need no perf, so they run under qemu-user too (.ci/test-arm64)."""
import platform
import struct
import subprocess
import sys
import textwrap

import pytest

# ELF machine, DWARF return address column, code alignment factor and
# trampoline size of each supported machine (setup.py refuses others).
MACHINES = {
    "x86_64": {"elf_machine": 62, "ra_column": 16, "code_align": 1, "trampoline": 16},
    "aarch64": {"elf_machine": 183, "ra_column": 30, "code_align": 4, "trampoline": 24},
}
JIT_HEADER = struct.Struct("<IIIIIIQQ")
JIT_RECORD = struct.Struct("<IIQ")
JIT_CODE_LOAD = struct.Struct("<IIQQQQ")
JIT_UNWINDING = struct.Struct("<QQQ")


def _uleb(data, at):
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, at


def _own_jitdump_and_perf_map():
    """The jitdump and perf map of a traced child that defines two
    functions, read by the child before it exits (it removes them)."""
    code = textwrap.dedent("""
        import os, sys, etwtrace
        etwtrace.StackSamplingTracer().enable()
        def one(): return 1
        def two(): return one() + 1
        two()
        pid = os.getpid()
        with open(f"/tmp/jit-{pid}.dump", "rb") as f:
            sys.stdout.buffer.write(f.read().hex().encode() + b"\\n")
        with open(f"/tmp/perf-{pid}.map", "rb") as f:
            sys.stdout.buffer.write(f.read())
    """)
    out = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, check=True,
                         timeout=120).stdout.decode()
    dump_hex, _, perf_map = out.partition("\n")
    return bytes.fromhex(dump_hex), perf_map


def test_jitdump_and_perf_map_describe_this_machines_trampolines():
    machine = MACHINES[platform.machine()]
    dump, perf_map = _own_jitdump_and_perf_map()

    magic, _, header_size, elf_machine, _, _, _, _ = JIT_HEADER.unpack_from(dump)
    assert magic == 0x4A695444
    assert elf_machine == machine["elf_machine"]

    loads, unwinds = {}, []
    at = header_size
    while at + JIT_RECORD.size <= len(dump):
        kind, size, _ = JIT_RECORD.unpack_from(dump, at)
        body = at + JIT_RECORD.size
        if kind == 0:
            _, _, _, addr, code_size, _ = JIT_CODE_LOAD.unpack_from(dump, body)
            name_at = body + JIT_CODE_LOAD.size
            name_end = dump.index(b"\0", name_at)
            loads[dump[name_at:name_end].decode()] = (addr, code_size)
        elif kind == 4:
            unwinds.append(dump[body:at + size])
        at += size
    assert {"py::one:<string>:4", "py::two:<string>:5"} <= set(loads), loads
    assert all(size == machine["trampoline"] for _, size in loads.values()), loads
    assert unwinds, "no unwinding record"

    # The .eh_frame's CIE: the machine's code alignment and return address
    # column (a CIE of the other machine would send unwinders astray).
    unwind_size, hdr_size, _ = JIT_UNWINDING.unpack_from(unwinds[0])
    eh_frame = unwinds[0][JIT_UNWINDING.size:JIT_UNWINDING.size + unwind_size - hdr_size]
    cie_id, version = struct.unpack_from("<IB", eh_frame, 4)
    assert (cie_id, version) == (0, 1)
    augmentation_end = eh_frame.index(b"\0", 9)
    code_align, at = _uleb(eh_frame, augmentation_end + 1)
    at += 1                                 # data alignment (-8 on both)
    ra_column, _ = _uleb(eh_frame, at)
    assert (code_align, ra_column) == (machine["code_align"], machine["ra_column"])

    # The perf map gives every trampoline the same size, at the jitdump's
    # addresses.
    rows = [line.split(" ", 2) for line in perf_map.splitlines() if line]
    sized = {int(start, 16): int(size, 16) for start, size, _ in rows}
    for addr, size in loads.values():
        assert sized.get(addr) == size, (hex(addr), sized)


@pytest.mark.parametrize("prologue, frame_record", [
    # Debian bookworm's python3.11 PyObject_Vectorcall: stp, two movs, mov x29, sp.
    ("fd7bbea9e60301aae70302aafd030091e40303aae52b0090", True),
    # Debian trixie's python3.13 PyObject_Vectorcall: paciasp first, then
    # stp, mrs, two adds, mov x29, sp.
    ("3f2303d5fd7bbea945d03bd5a5004091a5600091fd030091", True),
    # bookworm's PyTuple_Size: a leaf path first, its frame record later.
    ("010440f9215440f96100d036000840f9c0035fd6fd7bbfa9", False),
    # stp x19, x20, [sp, #-32]!; mov x29, sp: registers saved, not a record.
    ("f353bea9fd030091", False),
])
def test_an_aarch64_frame_record_is_told_by_a_function_prologue(prologue, frame_record):
    from etwtrace.sampled.remote import sets_up_frame_pointer
    assert sets_up_frame_pointer(bytes.fromhex(prologue), "aarch64") is frame_record


@pytest.mark.skipif(platform.machine() != "aarch64", reason="aarch64's frame records")
def test_perf_call_graphs_use_frame_records_of_debians_aarch64_python(monkeypatch):
    """gcc keeps frame records on aarch64 unasked, so CFLAGS do not say
    it: the choice of perf's call graphs looks at a prologue.  (Debian's
    bookworm and trixie pythons, which .ci/test-arm64 runs, keep them.)"""
    from etwtrace.capture import perf as _perf
    monkeypatch.delenv("ETWTRACE_CALLGRAPH", raising=False)
    assert _perf.python_keeps_frame_pointers() is True
