"""Symbols of ELF files: the sampler's lookups of `_PyRuntime` in a running
CPython and of the native functions its samples land in.

Reads .symtab (or .dynsym when stripped) of 64-bit little-endian ELF
files: the symbols of functions and objects, by address.
"""

import bisect
import itertools
import os
import struct
from collections import OrderedDict

from ..errors import Error
from . import unbuffered

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")
_PHDR = struct.Struct("<IIQQQQQQ")
SHT_SYMTAB, SHT_DYNSYM = 2, 11
STT_OBJECT, STT_FUNC = 1, 2
PT_LOAD = 1
CACHED_FILES = 64       # files whose symbols (or a section) are kept between processes
_cache = OrderedDict()  # (device, inode, size, mtime) -> Symbols
_sections = OrderedDict()   # (device, inode, size, mtime, name) -> bytes or None


def _remembered(cache, key, make):
    """cache[key], made by make() the first time: the newest CACHED_FILES
    entries are kept (a key names one version of a file)."""
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    value = cache[key] = make()
    if len(cache) > CACHED_FILES:
        cache.popitem(last=False)
    return value


def load_symbols(path):
    """The Symbols of `path`, read once per version of the file: the
    processes of one Python (a pool's workers, a session's processes) and
    a process's maps read again share them."""
    try:
        st = os.stat(path)
    except OSError as ex:
        raise ElfError(f"{path}: {ex.strerror}") from None
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    return _remembered(_cache, key, lambda: Symbols(path))


class ElfError(Error):
    pass


def _read_at(fd, size, offset):
    """`size` bytes of the file at `offset` (ValueError when it ends sooner):
    the sampler reads the parts of an ELF file it needs, not the whole
    file (an unstripped libpython is over 20 MB)."""
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise ValueError("an ELF file cut short")
    return data


def _headers(fd):
    """(the ELF header's fields, the section headers) of the file at fd;
    ValueError when it is not a 64-bit little-endian ELF file."""
    head = os.pread(fd, _EHDR.size, 0)
    if len(head) < _EHDR.size or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF file")
    fields = _EHDR.unpack(head)
    shoff, shentsize, shnum = fields[6], fields[11], fields[12]
    if shnum and shentsize < _SHDR.size:
        raise ValueError("an ELF file with short section headers")
    table = _read_at(fd, shnum * shentsize, shoff)
    return fields, [_SHDR.unpack_from(table, i * shentsize) for i in range(shnum)]


def section_bytes(path, name):
    """The contents of section `name` of the ELF file at `path` (as in the
    file: the initial values of a data section), or None without one.
    Read once per version of the file: a sampler looks in the same
    interpreter for each process."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, name)
        return _remembered(_sections, key, lambda: _read_section(fd, name))
    except (OSError, struct.error, ValueError, IndexError):
        return None
    finally:
        os.close(fd)


def _read_section(fd, name):
    fields, sections = _headers(fd)
    shstrndx = fields[13]
    if not 0 <= shstrndx < len(sections):
        return None
    names = _read_at(fd, sections[shstrndx][5], sections[shstrndx][4])
    wanted = name.encode()
    for sh in sections:
        end = names.find(b"\0", sh[0])
        if end >= 0 and names[sh[0]:end] == wanted:
            return _read_at(fd, sh[5], sh[4])
    return None


def first_load(data):
    """(address, file offset) of an ELF image's first loadable segment:
    what a mapping's start less its offset gives back (the load bias);
    None without one.  `data`: the image from its start, through its
    program headers at least."""
    try:
        (_ident, _type, _machine, _version, _entry, phoff, _shoff, _flags, _ehsize,
         phentsize, phnum, _shentsize, _shnum, _shstrndx) = _EHDR.unpack_from(data)
        for i in range(phnum):
            p = _PHDR.unpack_from(data, phoff + i * phentsize)
            if p[0] == PT_LOAD:
                return p[3], p[2]       # vaddr, offset
    except struct.error:
        pass
    return None


class Symbols:
    """A file's function and object symbols: find(name) -> address (as
    linked), lookup(address) -> name of the function containing it."""

    def __init__(self, path):
        self.path = path
        self.by_name = {}
        starts = []
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as ex:
            raise ElfError(f"{path}: {ex.strerror}") from None
        try:
            fields, sections = _headers(fd)
            phoff, phentsize, phnum = fields[5], fields[9], fields[10]
            # The program headers follow the ELF header in every linker's
            # output; one read from the start covers both.
            self.first_load = first_load(os.pread(fd, min(phoff + phnum * phentsize, 1 << 20), 0))
            tables = [s for s in sections if s[1] == SHT_SYMTAB] or \
                [s for s in sections if s[1] == SHT_DYNSYM]
            for sh in tables:
                strtab = sections[sh[6]]
                self._add_table(_read_at(fd, sh[5], sh[4]), sh[9],
                                _read_at(fd, strtab[5], strtab[4]), starts)
        except OSError as ex:
            raise ElfError(f"{path}: {ex.strerror}") from None
        except (ValueError, IndexError, struct.error) as ex:
            raise ElfError(f"{path}: {ex if isinstance(ex, ValueError) else 'a damaged ELF file'}"
                           ) from None
        finally:
            os.close(fd)
        starts.sort()
        self._starts = [s[0] for s in starts]
        self._funcs = starts
        # The furthest end of the functions up to each one: lookup stops
        # walking back where no function before reaches the address (an
        # address between functions, or in a file's nameless code, no
        # longer walks back over every function of the megabyte before it).
        self._reach = list(itertools.accumulate((s[0] + s[1] for s in starts), max))

    def _add_table(self, table, entsize, strtab, starts):
        if entsize != _SYM.size:
            raise ValueError("an ELF symbol table of another layout")
        by_name = self.by_name
        end_of = strtab.index
        for name_off, info, _other, shndx, value, sym_size in \
                _SYM.iter_unpack(table[:len(table) - len(table) % _SYM.size]):
            kind = info & 0xF
            if shndx == 0 or value == 0 or (kind != STT_FUNC and kind != STT_OBJECT):
                continue
            name = strtab[name_off:end_of(b"\0", name_off)].decode("utf-8", "replace")
            by_name.setdefault(name, value)
            if kind == STT_FUNC:
                starts.append((value, sym_size or 1, name))

    def find(self, name):
        return self.by_name.get(name)

    def lookup(self, address):
        """(name, start, size) of the function at `address` (as linked),
        or None."""
        i = bisect.bisect_right(self._starts, address) - 1
        while i >= 0 and self._reach[i] > address:
            start, size, name = self._funcs[i]
            if start <= address < start + size:
                return name, start, size
            if address - start > 1 << 20:
                return None
            i -= 1
        return None


class ProcessMaps:
    """The file mappings of a process (/proc/PID/maps), read once: which
    file an address falls in and its address in that file as linked."""

    def __init__(self, pid, root="/"):
        self.pid = pid
        self.root = root
        self.regions = []      # (start, end, offset, path)
        self._symbols = {}
        try:
            lines = os.fsdecode(unbuffered.read(f"/proc/{pid}/maps")).splitlines()
        except OSError as ex:
            raise ElfError(f"process {pid}: {ex.strerror}") from None
        for line in lines:
            parts = line.split(None, 5)
            if len(parts) < 6 or not parts[5].startswith("/"):
                continue
            start, end = (int(x, 16) for x in parts[0].split("-"))
            self.regions.append((start, end, int(parts[2], 16), parts[5]))
        self.regions.sort()
        self._starts = [r[0] for r in self.regions]

    def symbols(self, path):
        sym = self._symbols.get(path)
        if sym is None and path not in self._symbols:
            try:
                sym = load_symbols(f"/proc/{self.pid}/root{path}")
            except ElfError:
                try:
                    sym = load_symbols(path)
                except ElfError:
                    sym = None
            self._symbols[path] = sym
        return sym

    def bias(self, path):
        """Load bias of `path` in the process (address = linked + bias)."""
        sym = self.symbols(path)
        if sym is None or sym.first_load is None:
            return None
        vaddr, file_offset = sym.first_load
        for start, _end, offset, p in self.regions:
            if p == path and offset <= file_offset:
                # A mapping of the file at `offset` starts at `start`.
                return start - offset - (vaddr - file_offset)
        return None

    def region(self, address):
        i = bisect.bisect_right(self._starts, address) - 1
        if i >= 0 and self.regions[i][0] <= address < self.regions[i][1]:
            return self.regions[i]
        return None

    def find_symbol(self, name):
        """(address, path) of the first mapped file that defines `name`,
        looking first in the interpreter's (python*, libpython*): the names
        looked up are CPython's, and each other file looked in is parsed
        (a process maps dozens: libc, extension modules...)."""
        paths = list(dict.fromkeys(r[3] for r in self.regions))
        paths.sort(key=lambda p: not os.path.basename(p).startswith(("python", "libpython")))
        for path in paths:
            sym = self.symbols(path)
            if sym is not None:
                value = sym.find(name)
                if value is not None:
                    bias = self.bias(path)
                    if bias is not None:
                        return value + bias, path
        return None

    def function_at(self, address):
        """(name, begin, end, path) of the native function at `address`
        (begin and end as mapped), (None, None, None, path) in a file
        without a symbol for it, or None outside every file."""
        region = self.region(address)
        if region is None:
            return None
        path = region[3]
        sym = self.symbols(path)
        bias = self.bias(path)
        found = sym.lookup(address - bias) if sym is not None and bias is not None else None
        if found is None:
            return None, None, None, path
        name, start, size = found
        return name, start + bias, start + bias + size, path
