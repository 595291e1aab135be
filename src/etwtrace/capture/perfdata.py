"""Marks the mappings of the capture's own files anonymous in perf.data.

With a DWARF call graph perf also records the shared data mappings of
the traced processes: the built-in recorder's ring files and its
`.budget` page, and perf's own buffer (`anon_inode:[perf_event]`). The
ring files and the budget are gone when the capture ends (the rings
become the trace's stream files), so hotspot lists each of them as a
parser error ("Could not find ELF file"). Their names are replaced, in
place, by perf's name for anonymous memory, `//anon`: both perf and
hotspot then leave them alone. The file's size and layout do not change,
so nothing else in it moves, and a capture stopped half-way through this
is still a whole perf.data.

Only perf.data in perf's file format is touched (not a pipe's stream); a
file this does not understand is left as it is.
"""

import mmap
import os
import struct

MAGIC = b"PERFILE2"
# perf_file_header: magic, size, attr_size, then the attrs, data and
# event_types sections (offset, size), then the feature bitmap.
HEADER = struct.Struct("<8sQQQQQQQQ32s")
# perf_event_header: type, misc, size.
RECORD = struct.Struct("<IHH")
PERF_RECORD_MMAP = 1
PERF_RECORD_MMAP2 = 10
PERF_RECORD_MISC_MMAP_DATA = 1 << 13
# Where the file name starts in each record: after the header, pid/tid,
# addr/len/pgoff, and for MMAP2 the device/inode or build-id block and
# prot/flags.
NAME_AT = {PERF_RECORD_MMAP: 8 + 8 + 24, PERF_RECORD_MMAP2: 8 + 8 + 24 + 24 + 8}
ANONYMOUS = b"//anon\0"


def is_capture_file(name):
    """A name perf recorded that is the capture's (or perf's) own: an
    anonymous inode, a ring file or the budget page."""
    base = name.rsplit(b"/", 1)[-1]
    return (name.startswith(b"anon_inode:") or base == b".budget"
            or base.startswith(b".ring-"))


def anonymize_capture_mappings(path, dir_fd=None):
    """Renames the data mappings of capture files in the perf.data at
    `path` (relative to `dir_fd` when given) to `//anon`.  Returns how many
    it renamed; 0 for a file it does not understand."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return 0
    try:
        size = os.fstat(fd).st_size
        if size < HEADER.size:
            return 0
        with mmap.mmap(fd, size) as data:
            return _anonymize(data, size)
    except (OSError, ValueError):
        return 0
    finally:
        os.close(fd)


def _anonymize(data, size):
    (magic, header_size, _attr_size, _attrs_at, _attrs_size, data_at, data_size,
     _types_at, _types_size, _features) = HEADER.unpack_from(data, 0)
    if magic != MAGIC or header_size != HEADER.size or data_at + data_size > size:
        return 0
    renamed = 0
    at, end = data_at, data_at + data_size
    while at + RECORD.size <= end:
        kind, misc, length = RECORD.unpack_from(data, at)
        if length < RECORD.size or at + length > end:
            break           # not a record boundary: stop, change no more
        name_at = NAME_AT.get(kind)
        if name_at is not None and misc & PERF_RECORD_MISC_MMAP_DATA \
                and name_at + len(ANONYMOUS) <= length:
            stop = data.find(b"\0", at + name_at, at + length)
            name = data[at + name_at:stop if stop >= 0 else at + length]
            if is_capture_file(name):
                data[at + name_at:at + name_at + len(ANONYMOUS)] = ANONYMOUS
                renamed += 1
        at += length
    return renamed
