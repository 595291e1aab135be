"""elf.section_bytes on ELF files made here: the sampler reads asyncio's
offsets from a section of the interpreter or its _asyncio module."""

import os
import struct

import pytest

from etwtrace.sampled import elf

EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
SHDR = struct.Struct("<IIQQQQIIQQ")


def make_elf(sections):
    """An ELF file's bytes holding `sections` ({name: contents}) after the
    null section and .shstrtab."""
    names = b"\0.shstrtab\0" + b"".join(n.encode() + b"\0" for n in sections)
    body = bytearray(names)
    headers = [SHDR.pack(0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
               SHDR.pack(1, 3, 0, 0, EHDR.size, len(names), 0, 0, 1, 0)]
    name_at = len(b"\0.shstrtab\0")
    for name, data in sections.items():
        headers.append(SHDR.pack(name_at, 1, 0, 0, EHDR.size + len(body), len(data),
                                 0, 0, 8, 0))
        body += data
        name_at += len(name) + 1
    shoff = EHDR.size + len(body)
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    head = EHDR.pack(ident, 3, 62, 1, 0, 0, shoff, 0, EHDR.size, 0, 0, SHDR.size,
                     len(headers), 1)
    return head + bytes(body) + b"".join(headers)


def test_a_section_is_read_by_its_name(tmp_path):
    path = tmp_path / "lib.so"
    path.write_bytes(make_elf({".data": b"x" * 24, ".AsyncioDebug": struct.pack("<3Q", 1, 2, 3)}))
    assert elf.section_bytes(str(path), ".AsyncioDebug") == struct.pack("<3Q", 1, 2, 3)
    assert elf.section_bytes(str(path), ".data") == b"x" * 24
    assert elf.section_bytes(str(path), ".Asyncio") is None
    assert elf.section_bytes(str(path), ".missing") is None


def test_a_changed_file_is_read_again(tmp_path):
    path = tmp_path / "lib.so"
    path.write_bytes(make_elf({".s": b"old!"}))
    assert elf.section_bytes(str(path), ".s") == b"old!"
    path.write_bytes(make_elf({".s": b"newer"}))
    os.utime(path, ns=(1, 1))           # a new mtime whatever the clock's grain
    assert elf.section_bytes(str(path), ".s") == b"newer"


def test_files_that_are_not_elf_or_are_cut_short_give_none(tmp_path):
    whole = make_elf({".s": b"12345678"})
    cases = {"text": b"not an elf file at all" * 4, "empty": b"",
             "header only": whole[:EHDR.size], "missing": None}
    for name, data in cases.items():
        path = tmp_path / name
        if data is not None:
            path.write_bytes(data)
        assert elf.section_bytes(str(path), ".s") is None, name
    # A section whose bytes run past the file's end.
    head = bytearray(whole)
    shoff = EHDR.unpack_from(whole)[6]
    entry = shoff + 2 * SHDR.size
    fields = list(SHDR.unpack_from(whole, entry))
    fields[5] = 1 << 20
    SHDR.pack_into(head, entry, *fields)
    path = tmp_path / "cut"
    path.write_bytes(bytes(head))
    assert elf.section_bytes(str(path), ".s") is None


def test_symbols_and_load_bias_give_a_function_s_address_in_this_process():
    """Read from the files alone (headers, symbol and string tables), the
    address of Py_Initialize in this process is the one the loader gave."""
    import ctypes
    maps = elf.ProcessMaps(os.getpid())
    found = maps.find_symbol("Py_Initialize")
    assert found is not None
    assert found[0] == ctypes.cast(ctypes.pythonapi.Py_Initialize, ctypes.c_void_p).value
    name, begin, end, path = maps.function_at(found[0] + 1)
    assert (name, begin, path) == ("Py_Initialize", found[0], found[1]) and end > begin


def test_a_damaged_file_is_an_elf_error(tmp_path):
    whole = make_elf({".s": b"12345678"})
    assert elf.Symbols(str(_write(tmp_path / "ok", whole))).by_name == {}
    shoff = EHDR.unpack_from(whole)[6]
    for name, data in {"text": b"#!/bin/sh\n" * 10, "no section headers": whole[:shoff + 8]}.items():
        with pytest.raises(elf.ElfError, match="^" + str(tmp_path)):
            elf.Symbols(str(_write(tmp_path / name.replace(" ", "-"), data)))
    with pytest.raises(elf.ElfError, match="No such file"):
        elf.Symbols(str(tmp_path / "missing"))


def _write(path, data):
    path.write_bytes(data)
    return path
