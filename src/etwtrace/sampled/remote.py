"""A running CPython (3.11, 3.13+) seen from outside: where its runtime is,
the offsets of its structures (3.13+: _Py_DebugOffsets, the "xdebugpy"
block at the start of _PyRuntime; 3.11: a table, FIXED_OFFSETS), and its
code objects' names and line tables, read from /proc/PID/mem.  The
sampler's BPF program walks frames with these offsets; names and lines
are read here, once per code object.
"""

import os
import platform
import struct

from .elf import ElfError, ProcessMaps, section_bytes
from ..errors import Error

COOKIE = b"xdebugpy"

# The fields of _Py_DebugOffsets, in order, per minor version (all
# uint64): enough of it to reach the sections used.  From CPython's
# Include/internal/pycore_runtime.h (3.13) and pycore_debug_offsets.h
# (3.14, 3.15).
_COMMON_HEAD = [("cookie",), ("version",), ("free_threaded",),
                ("runtime_state", "size", "finalizing", "interpreters_head")]
# Sections 3.14 and 3.15 share.
_INTERP_314 = ("interpreter_state", "size", "id", "next", "threads_head", "threads_main", "gc",
               "imports_modules", "sysdict", "builtins", "ceval_gil", "gil_runtime_state",
               "gil_runtime_state_enabled", "gil_runtime_state_locked",
               "gil_runtime_state_holder", "code_object_generation", "tlbc_generation")
_FRAME_314 = ("interpreter_frame", "size", "previous", "executable", "instr_ptr", "localsplus",
              "owner", "stackpointer", "tlbc_index")
_CODE_314 = ("code_object", "size", "filename", "name", "qualname", "linetable", "firstlineno",
             "argcount", "localsplusnames", "localspluskinds", "co_code_adaptive", "co_tlbc")
_OBJECTS_314 = [
    ("set_object", "size", "used", "table", "mask"),
    ("dict_object", "size", "ma_keys", "ma_values"),
    ("float_object", "size", "ob_fval"),
    ("long_object", "size", "lv_tag", "ob_digit"),
    ("bytes_object", "size", "ob_size", "ob_sval"),
    ("unicode_object", "size", "state", "length", "asciiobject_size"),
]
_LAYOUTS = {
    (3, 13): _COMMON_HEAD + [
        ("interpreter_state", "size", "id", "next", "threads_head", "gc", "imports_modules",
         "sysdict", "builtins", "ceval_gil", "gil_runtime_state", "gil_runtime_state_enabled",
         "gil_runtime_state_locked", "gil_runtime_state_holder"),
        ("thread_state", "size", "prev", "next", "interp", "current_frame", "thread_id",
         "native_thread_id", "datastack_chunk", "status"),
        ("interpreter_frame", "size", "previous", "executable", "instr_ptr", "localsplus",
         "owner"),
        ("code_object", "size", "filename", "name", "qualname", "linetable", "firstlineno",
         "argcount", "localsplusnames", "localspluskinds", "co_code_adaptive"),
        ("pyobject", "size", "ob_type"),
        ("type_object", "size", "tp_name", "tp_repr", "tp_flags"),
        ("tuple_object", "size", "ob_item", "ob_size"),
        ("list_object", "size", "ob_item", "ob_size"),
        ("dict_object", "size", "ma_keys", "ma_values"),
        ("float_object", "size", "ob_fval"),
        ("long_object", "size", "lv_tag", "ob_digit"),
        ("bytes_object", "size", "ob_size", "ob_sval"),
        ("unicode_object", "size", "state", "length", "asciiobject_size"),
    ],
    (3, 14): _COMMON_HEAD + [
        _INTERP_314,
        ("thread_state", "size", "prev", "next", "interp", "current_frame", "thread_id",
         "native_thread_id", "datastack_chunk", "status"),
        _FRAME_314, _CODE_314,
        ("pyobject", "size", "ob_type"),
        ("type_object", "size", "tp_name", "tp_repr", "tp_flags"),
        ("tuple_object", "size", "ob_item", "ob_size"),
        ("list_object", "size", "ob_item", "ob_size"),
        *_OBJECTS_314,
        ("gc", "size", "collecting"),
        ("gen_object", "size", "gi_name", "gi_iframe", "gi_frame_state"),
    ],
    (3, 15): _COMMON_HEAD + [
        _INTERP_314,
        ("thread_state", "size", "prev", "next", "interp", "current_frame", "base_frame",
         "last_profiled_frame", "last_profiled_frame_seq", "thread_id", "native_thread_id",
         "datastack_chunk", "status", "holds_gil", "gil_requested", "current_exception",
         "exc_state"),
        ("err_stackitem", "exc_value"),
        _FRAME_314, _CODE_314,
        ("pyobject", "size", "ob_type"),
        ("type_object", "size", "tp_name", "tp_repr", "tp_flags", "tp_basicsize",
         "tp_dictoffset"),
        ("heap_type_object", "size", "ht_cached_keys"),
        ("tuple_object", "size", "ob_item", "ob_size"),
        ("list_object", "size", "ob_item", "ob_size"),
        *_OBJECTS_314,
        # Sid's 3.15.2: six words this does not use between unicode_object
        # and gen_object (PyCompactUnicodeObject's size, then the gc
        # section), read from its .PyRuntime; gen_object is as in 3.14.
        ("unused_3_15", "w1", "w2", "w3", "w4", "w5", "w6"),
        ("gen_object", "size", "gi_name", "gi_iframe", "gi_frame_state"),
    ],
}
# asyncio's C module (3.14+) publishes the offsets of its tasks and of the
# thread state's running task in a section of its own (Modules/
# _asynciomodule.c, _Py_AsyncioModuleDebugOffsets: all uint64): in the
# _asyncio extension module's file (Debian's 3.14) or in the interpreter's
# (3.15, built in).
ASYNCIO_SECTION = ".AsyncioDebug"
_ASYNCIO_LAYOUT = [
    ("asyncio_task_object", "size", "task_name", "task_awaited_by", "task_is_task",
     "task_awaited_by_is_set", "task_coro", "task_node"),
    ("asyncio_interpreter_state", "size", "asyncio_tasks_head"),
    ("asyncio_thread_state", "size", "asyncio_running_loop", "asyncio_running_task",
     "asyncio_tasks_head"),
]

# The owner of the frame the evaluator pushes when C code enters it, one per
# native evaluator call: FRAME_OWNED_BY_CSTACK in 3.13, renamed
# FRAME_OWNED_BY_INTERPRETER in 3.14 (with the same value; seen in their
# processes: such frames hold None).
# x86-64 user space ends below 2**47 (4-level page tables; 5-level ones
# give 2**56, which this also allows).
USER_SPACE_END = 1 << 56
# 3.11 has no such frame: the first frame of each evaluator call is marked
# is_entry instead.
CSTACK_OWNER = {(3, 11): None, (3, 13): 3, (3, 14): 3, (3, 15): 3}

# Versions without _Py_DebugOffsets: their offsets, the same in every
# release build of the version on x86-64 (internal structures do not
# change within a minor version).  Made by tools/remote_offsets.c against
# the version's own headers, and checked against them by the tests.
FIXED_OFFSETS = {
    (3, 11): {
        ("runtime_state", "interpreters_head"): 40,
        ("interpreter_state", "threads_head"): 16,
        ("thread_state", "next"): 8,
        ("thread_state", "native_thread_id"): 160,
        ("thread_state", "cframe"): 56,
        ("cframe", "current_frame"): 8,
        ("interpreter_frame", "previous"): 48,
        ("interpreter_frame", "executable"): 32,
        ("interpreter_frame", "instr_ptr"): 56,
        ("interpreter_frame", "is_entry"): 68,
        ("interpreter_frame", "owner"): 69,
        ("code_object", "filename"): 112,
        ("code_object", "name"): 120,
        ("code_object", "qualname"): 128,
        ("code_object", "linetable"): 136,
        ("code_object", "firstlineno"): 72,
        ("code_object", "co_code_adaptive"): 184,
        ("pyobject", "ob_type"): 8,
        ("unicode_object", "state"): 32,
        ("unicode_object", "length"): 16,
        ("unicode_object", "asciiobject_size"): 48,
        ("unicode_object", "compact_size"): 72,
        ("bytes_object", "ob_size"): 16,
        ("bytes_object", "ob_sval"): 32,
    },
}
SUPPORTED = sorted(list(_LAYOUTS) + list(FIXED_OFFSETS))


def supported_text():
    return ", ".join("%d.%d" % v for v in SUPPORTED)


class RemoteError(Error):
    pass


def _words(layout):
    return sum(len(section) - 1 if len(section) > 1 else 1 for section in layout)


class DebugOffsets:
    """The offsets of one process's interpreter, by section and field."""

    def __init__(self, version_hex, free_threaded, values):
        self.version = (version_hex >> 24, (version_hex >> 16) & 0xFF)
        self.version_hex = version_hex
        self.free_threaded = bool(free_threaded)
        self.fields = values

    def __getitem__(self, key):
        return self.fields[key]


class Process:
    """A CPython process: its _PyRuntime, offsets and code objects."""

    def __init__(self, pid):
        self.pid = pid
        try:
            self.maps = ProcessMaps(pid)
        except ElfError as ex:
            raise RemoteError(str(ex)) from None
        found = self.maps.find_symbol("_PyRuntime")
        if found is None:
            raise RemoteError(f"process {pid} is not a CPython (no _PyRuntime in its files)")
        self.runtime, self.binary = found
        try:
            self.mem = open(f"/proc/{pid}/mem", "rb", buffering=0)
        except OSError as ex:
            raise RemoteError(f"cannot read process {pid}'s memory: {ex.strerror}") from None
        head = self.read(self.runtime, 24)
        if head[:8] == COOKIE:
            version_hex, free_threaded = struct.unpack_from("<QQ", head, 8)
        else:
            version_hex, free_threaded = self._version_without_debug_offsets(), 0
        version = (version_hex >> 24, (version_hex >> 16) & 0xFF)
        if version in FIXED_OFFSETS and not free_threaded:
            self._set_offsets(version_hex, dict(FIXED_OFFSETS[version]))
            return
        layout = _LAYOUTS.get(version)
        if layout is None:
            self.close()
            raise RemoteError(f"process {pid} runs Python {version[0]}.{version[1]}; the "
                              f"sampler reads {supported_text()} (--stack works on 3.9+)")
        raw = struct.unpack(f"<{_words(layout)}Q", self.read(self.runtime, 8 * _words(layout)))
        values = {}
        i = 0
        for section in layout:
            if len(section) == 1:
                i += 1
                continue
            for field in section[1:]:
                values[(section[0], field)] = raw[i]
                i += 1
        ascii_size = values[("unicode_object", "asciiobject_size")]
        # PyCompactUnicodeObject: the ASCII object, then utf8_length, utf8.
        values[("unicode_object", "compact_size")] = ascii_size + 16
        self._set_offsets(version_hex, values, free_threaded)

    def _version_without_debug_offsets(self):
        """PY_VERSION_HEX of an interpreter older than 3.13, from its
        Py_Version (3.11+)."""
        found = self.maps.find_symbol("Py_Version")
        if found is None:
            self.close()
            raise RemoteError(f"process {self.pid} runs a Python older than 3.11; the "
                              f"sampler reads {supported_text()} (--stack works on 3.9+)")
        return self.word(found[0]) & 0xFFFFFFFF

    def _set_offsets(self, version_hex, values, free_threaded=0):
        self.offsets = DebugOffsets(version_hex, free_threaded, values)
        self.version = self.offsets.version
        found = self.maps.find_symbol("PyCode_Type")
        if found is None:
            self.close()
            raise RemoteError(f"process {self.pid}: no PyCode_Type in its files")
        self.code_type = found[0]

    def asyncio_offsets(self):
        """The offsets asyncio's C module publishes ({(section, field):
        value}), or None: before 3.14, or while the module is not loaded."""
        if self.version < (3, 14):
            return None
        paths = [self.binary] + sorted({r[3] for r in self.maps.regions
                                        if os.path.basename(r[3]).startswith("_asyncio")})
        paths += self._asyncio_module_files()
        for path in paths:
            data = None
            for candidate in (f"/proc/{self.pid}/root{path}", path):
                data = section_bytes(candidate, ASYNCIO_SECTION)
                if data is not None:
                    break
            words = sum(len(section) - 1 for section in _ASYNCIO_LAYOUT)
            if data is None or len(data) < 8 * words:
                continue
            raw = iter(struct.unpack_from(f"<{words}Q", data))
            values = {(section[0], field): next(raw)
                      for section in _ASYNCIO_LAYOUT for field in section[1:]}
            task = values[("asyncio_task_object", "size")]
            if not 0 < values[("asyncio_task_object", "task_name")] < task < 4096:
                continue        # not the layout this reads
            return values
        return None

    def _asyncio_module_files(self):
        """Where the interpreter's _asyncio extension module is on disk, by
        the usual layout (PREFIX/bin/pythonX.Y or PREFIX/lib*/libpythonX.Y,
        and PREFIX/lib/pythonX.Y/lib-dynload): its offsets can be read
        before the program imports asyncio."""
        name = os.path.basename(self.binary)
        version = "%d.%d" % self.version
        at = name.find(version)
        if at < 0:
            return []
        flags = name[at + len(version):].split(".so", 1)[0]
        if not flags.isalpha():
            flags = ""
        folder = os.path.dirname(self.binary)     # PREFIX/bin, PREFIX/lib[/<triplet>]
        while os.path.basename(folder) not in ("bin", "lib", "lib64", ""):
            folder = os.path.dirname(folder)
        prefix = os.path.dirname(folder)
        folder = f"{prefix}/lib/python{version}{flags if flags == 't' else ''}/lib-dynload"
        tag = f"_asyncio.cpython-{self.version[0]}{self.version[1]}{flags}-"
        found = []
        for root in (f"/proc/{self.pid}/root", ""):
            try:
                names = os.listdir(root + folder)
            except OSError:
                continue
            found = [f"{folder}/{n}" for n in sorted(names)
                     if n.startswith(tag) and n.endswith(".so")]
            break
        return found

    def _type_address(self, name):
        cache = self.__dict__.setdefault("_types", {})
        if name not in cache:
            found = self.maps.find_symbol(name)
            cache[name] = found[0] if found is not None else None
        return cache[name]

    def small_int(self, obj):
        """The value of an int object of at most two digits (3.12+), or None."""
        o = self.offsets
        tag = self.word(obj + o[("long_object", "lv_tag")])
        digits = tag >> 3
        if digits > 2:
            return None
        raw = struct.unpack(f"<{digits}I", self.read(obj + o[("long_object", "ob_digit")],
                                                      4 * digits)) if digits else ()
        value = sum(d << (30 * i) for i, d in enumerate(raw))
        return -value if tag & 3 == 2 else value

    def task_name(self, task, asyncio):
        """A task's name as Task.get_name() gives it: its str, or "Task-N"
        for the number CPython keeps until the name is asked for."""
        name = self.word(task + asyncio[("asyncio_task_object", "task_name")])
        kind = self.word(name + self.offsets[("pyobject", "ob_type")])
        if kind == self._type_address("PyUnicode_Type"):
            return self.string(name)
        if kind == self._type_address("PyLong_Type"):
            number = self.small_int(name)
            return f"Task-{number}" if number is not None else "Task-?"
        return "?"

    def seen_task_name(self, kind, digits, text):
        """A task's name from what a sample read of it (its name object's
        type, first digits and first bytes of text), or None for a name
        it cannot tell: not ASCII, or longer than the bytes read (read
        whole from memory then)."""
        if kind == self._type_address("PyLong_Type"):
            return f"Task-{digits & 0x3FFFFFFF}"
        if kind == self._type_address("PyUnicode_Type"):
            short = text.split(b"\0", 1)
            if len(short) == 2 and short[0] and short[0].isascii():
                return short[0].decode("ascii")
        return None

    def keeps_frame_pointers(self):
        """Whether its interpreter was built with frame pointers, as seen in
        a small function's prologue (after an endbr64): without them the
        sampler unwinds copies of the stack instead (sampler.py)."""
        found = self.maps.find_symbol("PyObject_Vectorcall")
        if found is None:
            return False
        return sets_up_frame_pointer(self.read(found[0], 24))

    def close(self):
        if getattr(self, "mem", None) is not None:
            self.mem.close()
            self.mem = None

    def read(self, address, size):
        # A pointer read from freed memory can be anything: only user-space
        # addresses can be read (pread takes a signed offset).
        if not 0 < address < USER_SPACE_END or not 0 <= size <= USER_SPACE_END - address:
            raise RemoteError(f"process {self.pid}: 0x{address:x} is no user-space address")
        try:
            data = os.pread(self.mem.fileno(), size, address)
        except OSError as ex:
            raise RemoteError(f"cannot read process {self.pid} at 0x{address:x}: "
                              f"{ex.strerror}") from None
        if len(data) != size:
            raise RemoteError(f"short read of process {self.pid} at 0x{address:x}")
        return data

    def word(self, address):
        return struct.unpack("<Q", self.read(address, 8))[0]

    def string(self, obj):
        """The text of a str object (compact, any kind)."""
        o = self.offsets
        ascii_size = o[("unicode_object", "asciiobject_size")]
        length = self.word(obj + o[("unicode_object", "length")])
        state = struct.unpack("<I", self.read(obj + o[("unicode_object", "state")], 4))[0]
        # state: interned:2 (3.13: 2 bits) kind:3 compact:1 ascii:1 ...
        kind = (state >> 2) & 7
        compact = (state >> 5) & 1
        is_ascii = (state >> 6) & 1
        if not compact or length > 1 << 16:
            return "?"
        if is_ascii:
            return self.read(obj + ascii_size, length).decode("ascii", "replace")
        # Compact non-ASCII: the data follows a PyCompactUnicodeObject.
        data = self.read(obj + o[("unicode_object", "compact_size")], length * kind)
        codec = {1: "latin-1", 2: "utf-16-le", 4: "utf-32-le"}.get(kind, "latin-1")
        return data.decode(codec, "replace")

    def bytes_of(self, obj):
        o = self.offsets
        size = self.word(obj + o[("bytes_object", "ob_size")])
        if size > 1 << 24:
            raise RemoteError("implausible bytes size")
        return self.read(obj + o[("bytes_object", "ob_sval")], size)

    def code(self, address):
        """(qualname, filename, firstlineno, linetable) of a code object."""
        o = self.offsets
        c = lambda field: o[("code_object", field)]      # noqa: E731
        qualname = self.string(self.word(address + c("qualname")))
        filename = self.string(self.word(address + c("filename")))
        first = struct.unpack("<i", self.read(address + c("firstlineno"), 4))[0]
        table = self.bytes_of(self.word(address + c("linetable")))
        return qualname, filename, first, table


def sets_up_frame_pointer(code, machine=None):
    """Whether a function's first bytes set up a frame pointer: push %rbp
    (after an endbr64), then mov %rsp,%rbp soon after (the compiler may
    put other instructions between).  A push %rbp alone only saves the
    register for other use (3.11's builds).  On aarch64: a frame record,
    see _sets_up_frame_record."""
    if (machine or platform.machine()) == "aarch64":
        return _sets_up_frame_record(code)
    if code[:4] == b"\xf3\x0f\x1e\xfa":
        code = code[4:]
    return code[:1] == b"\x55" and b"\x48\x89\xe5" in code[1:16]


# aarch64 instructions (little-endian words) of a prologue.
PACIASP, BTI_C = 0xD503233F, 0xD503245F
STP_X29_X30_PRE_SP, STP_IMM7_MASK = 0xA9807BFD, 0xFFC07FFF   # stp x29, x30, [sp, #-N]!
MOV_X29_SP = 0x910003FD


def _sets_up_frame_record(code):
    """aarch64: stp x29, x30, [sp, #-N]! (after a paciasp or bti c), then
    mov x29, sp within the next four instructions (Debian bookworm's
    PyObject_Vectorcall has two movs between them)."""
    words = [int.from_bytes(code[i:i + 4], "little") for i in range(0, len(code) - 3, 4)]
    if words[:1] in ([PACIASP], [BTI_C]):
        words = words[1:]
    return bool(words) and (words[0] & STP_IMM7_MASK) == STP_X29_X30_PRE_SP \
        and MOV_X29_SP in words[1:5]


def _varint(data, pos):
    value = shift = 0
    while True:
        b = data[pos]
        pos += 1
        value |= (b & 63) << shift
        shift += 6
        if not b & 64:
            return value, pos


def _svarint(data, pos):
    value, pos = _varint(data, pos)
    return (-(value >> 1) if value & 1 else value >> 1), pos


def line_of(table, firstlineno, unit):
    """The line of code unit `unit` from a 3.11+ location table
    (Objects/locations.md), or firstlineno where it has none."""
    line = firstlineno
    pos = 0
    at = 0
    try:
        while pos < len(table):
            head = table[pos]
            pos += 1
            code = (head >> 3) & 15
            length = (head & 7) + 1
            found = None
            if code == 15:
                found = None
            elif code == 14:
                delta, pos = _svarint(table, pos)
                line += delta
                for _ in range(3):
                    _, pos = _varint(table, pos)
                found = line
            elif code == 13:
                delta, pos = _svarint(table, pos)
                line += delta
                found = line
            elif code >= 10:
                line += code - 10
                pos += 2
                found = line
            else:
                pos += 1
                found = line
            if at <= unit < at + length:
                return found if found is not None else firstlineno
            at += length
    except IndexError:
        pass
    return firstlineno
