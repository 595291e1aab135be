"""Turns the streams of a capture into small fuzzing seeds: each packet is
cut to its content (packet size set to content size), so a seed holds real
events without 64 KiB of padding.

    python3 fuzz/make_seeds.py CAPTURE_DIR PREFIX [MAX_SEEDS]
"""
import glob
import os
import struct
import sys

HEAD = struct.Struct("<IIQQQQQQI")   # trace format version 2


def compact(data):
    out = bytearray()
    offset = 0
    while offset + HEAD.size <= len(data):
        fields = list(HEAD.unpack_from(data, offset))
        content, packet = fields[4] // 8, fields[5] // 8
        fields[5] = fields[4]
        out += HEAD.pack(*fields) + data[offset + HEAD.size:offset + content]
        offset += packet
    return bytes(out)


def main(capture, prefix, limit=3):
    streams = sorted(glob.glob(os.path.join(capture, "ctf", "pid-*", "stream-*")),
                     key=os.path.getsize)
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds")
    for i, stream in enumerate(streams[-int(limit):]):
        with open(stream, "rb") as f:
            seed = compact(f.read())
        with open(os.path.join(here, f"{prefix}-{i}"), "wb") as f:
            f.write(seed)
        print(f"{prefix}-{i}: {len(seed)} bytes from {stream}")


if __name__ == "__main__":
    main(*sys.argv[1:])
