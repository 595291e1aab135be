"""capture/perfdata.py on perf.data files made here: the data mappings of
the capture's own files (ring files, the budget page, perf's buffer) are
renamed `//anon` in place, and nothing else in the file changes.  No
subprocess and no perf (marked `unit`); test_exports checks a real
capture with perf and hotspot's parser."""

import os
import struct

import pytest

from etwtrace.capture import perfdata

pytestmark = pytest.mark.unit

EXEC = 0
DATA = perfdata.PERF_RECORD_MISC_MMAP_DATA
SAMPLE_ID = b"\x11" * 16        # a sample_id_all tail, after the name


def _padded(name):
    name += b"\0"
    return name + b"\0" * (-len(name) % 8)


def _mmap2(misc, name):
    body = struct.pack("<IIQQQIIQQII", 7, 8, 0x1000, 0x2000, 0, 1, 2, 3, 4, 3, 1)
    body += _padded(name) + SAMPLE_ID
    return struct.pack("<IHH", perfdata.PERF_RECORD_MMAP2, misc, 8 + len(body)) + body


def _mmap(misc, name):
    body = struct.pack("<IIQQQ", 7, 8, 0x1000, 0x2000, 0) + _padded(name) + SAMPLE_ID
    return struct.pack("<IHH", perfdata.PERF_RECORD_MMAP, misc, 8 + len(body)) + body


def _sample(payload=b"\xaa" * 40):
    return struct.pack("<IHH", 9, 2, 8 + len(payload)) + payload


def _perf_data(path, records, features=b"\x5a" * 64):
    data = b"".join(records)
    at = perfdata.HEADER.size
    header = perfdata.HEADER.pack(perfdata.MAGIC, perfdata.HEADER.size, 136, at, 0,
                                  at, len(data), 0, 0, b"\x01" + b"\0" * 31)
    path.write_bytes(header + data + features)
    return len(header)


def _names(path):
    """(misc, name) of each mmap record, read back."""
    blob = path.read_bytes()
    (_, _, _, _, _, at, size, _, _, _) = perfdata.HEADER.unpack_from(blob, 0)
    found, end = [], at + size
    while at < end:
        kind, misc, length = perfdata.RECORD.unpack_from(blob, at)
        if kind in perfdata.NAME_AT:
            start = at + perfdata.NAME_AT[kind]
            found.append((misc, blob[start:blob.index(b"\0", start)]))
        at += length
    return found


def test_the_captures_own_data_mappings_become_anonymous(tmp_path):
    path = tmp_path / "perf.data"
    _perf_data(path, [
        _mmap2(DATA, b"/cap/ctf/pid-7/.ring-0-tid-8"),
        _sample(),
        _mmap2(DATA, b"/cap/ctf/.budget"),
        _mmap(DATA, b"anon_inode:[perf_event]"),
        _mmap2(DATA, b"/usr/lib/locale/C.utf8/LC_CTYPE"),
        _mmap2(EXEC, b"/usr/lib/libpython3.11.so.1.0"),
        _mmap2(EXEC, b"/odd/.ring-exec"),       # code is never renamed
        _mmap2(DATA, b"//anon"),
    ])
    before = path.read_bytes()
    assert perfdata.anonymize_capture_mappings(str(path)) == 3
    assert _names(path) == [
        (DATA, b"//anon"), (DATA, b"//anon"), (DATA, b"//anon"),
        (DATA, b"/usr/lib/locale/C.utf8/LC_CTYPE"),
        (EXEC, b"/usr/lib/libpython3.11.so.1.0"),
        (EXEC, b"/odd/.ring-exec"),
        (DATA, b"//anon"),
    ]
    after = path.read_bytes()
    # Same size; every byte outside the three names is as it was: the
    # samples, the sample_id tails and the feature sections after the data.
    assert len(after) == len(before)
    changed = [i for i in range(len(before)) if before[i] != after[i]]
    assert changed and len(changed) <= 3 * len(b"//anon\0")
    assert after.count(SAMPLE_ID) == before.count(SAMPLE_ID) == 7
    assert after.endswith(b"\x5a" * 64)
    # A second pass finds nothing more to do.
    assert perfdata.anonymize_capture_mappings(str(path)) == 0


def test_a_record_that_does_not_fit_stops_the_walk_and_keeps_what_came_before(tmp_path):
    path = tmp_path / "perf.data"
    broken = struct.pack("<IHH", 9, 0, 4000) + b"\0" * 8      # runs past the data
    _perf_data(path, [_mmap2(DATA, b"/c/ctf/.budget"), broken,
                      _mmap2(DATA, b"/c/ctf/pid-1/.ring-0-tid-1")])
    assert perfdata.anonymize_capture_mappings(str(path)) == 1
    assert [name for _, name in _names(path)[:1]] == [b"//anon"]
    assert b"/c/ctf/pid-1/.ring-0-tid-1" in path.read_bytes()


@pytest.mark.parametrize("blob", [
    b"",                                            # empty
    b"PERFILE2" + struct.pack("<Q", 16) + b"\0" * 8,  # a pipe's stream header
    b"NOTPERF!" + b"\0" * 200,                      # not perf's
])
def test_a_file_it_does_not_understand_is_left_as_it_is(tmp_path, blob):
    path = tmp_path / "perf.data"
    path.write_bytes(blob)
    assert perfdata.anonymize_capture_mappings(str(path)) == 0
    assert path.read_bytes() == blob


def test_a_data_section_past_the_files_end_is_left_as_it_is(tmp_path):
    path = tmp_path / "perf.data"
    _perf_data(path, [_mmap2(DATA, b"/c/ctf/.budget")], features=b"")
    blob = path.read_bytes()
    path.write_bytes(blob[:-8])                    # cut inside the data section
    assert perfdata.anonymize_capture_mappings(str(path)) == 0
    assert path.read_bytes() == blob[:-8]


def test_a_link_is_not_followed(tmp_path):
    target = tmp_path / "elsewhere"
    _perf_data(target, [_mmap2(DATA, b"/c/ctf/.budget")])
    blob = target.read_bytes()
    os.symlink(target, tmp_path / "perf.data")
    assert perfdata.anonymize_capture_mappings(str(tmp_path / "perf.data")) == 0
    assert target.read_bytes() == blob


def test_the_file_is_found_through_the_directory_held(tmp_path):
    (tmp_path / "cap").mkdir()
    _perf_data(tmp_path / "cap" / "perf.data", [_mmap2(DATA, b"/c/ctf/.budget")])
    fd = os.open(tmp_path / "cap", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.rename(tmp_path / "cap", tmp_path / "moved")
        assert perfdata.anonymize_capture_mappings("perf.data", dir_fd=fd) == 1
    finally:
        os.close(fd)
    assert _names(tmp_path / "moved" / "perf.data") == [(DATA, b"//anon")]
