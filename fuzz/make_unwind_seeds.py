"""Makes the unwinder fuzzer's seeds (fuzz/unwind_fuzz.c): unwind_seed.c
compiled into a shared object, then for addresses inside each of its
functions a stack copy of words that look like a stack (return addresses
into the file, pointers into the copy, small numbers).

    python3 fuzz/make_unwind_seeds.py OUT_DIR
"""
import os
import random
import struct
import subprocess
import sys
import tempfile

FILE_START = 0x10000          # where unwind_fuzz.c maps the file (its load bias too)
HERE = os.path.dirname(os.path.abspath(__file__))


def main(out):
    os.makedirs(out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        so = os.path.join(tmp, "seed.so")
        subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", so,
                        os.path.join(HERE, "unwind_seed.c")], check=True)
        with open(so, "rb") as f:
            elf = f.read()
        symbols = subprocess.run(["nm", "--defined-only", so], check=True, text=True,
                                 capture_output=True).stdout.split()
    functions = [int(symbols[i - 2], 16) for i in range(2, len(symbols))
                 if symbols[i].startswith("seed_") and symbols[i - 1] in "tT"]
    rng = random.Random(3)
    sp = 0x7ffd_0000_0000
    for n, function in enumerate(functions):
        for offset in (0, 1, 4, 9, 20):
            ip = FILE_START + function + offset
            words = [rng.choice((FILE_START + rng.choice(functions) + rng.randrange(40),
                                 sp + 8 * rng.randrange(64), rng.randrange(256), 0))
                     for _ in range(64)]
            data = (struct.pack("<I", len(elf)) + elf + struct.pack("<QQQ", ip, sp, sp + 64)
                    + struct.pack(f"<{len(words)}Q", *words))
            with open(os.path.join(out, f"seed-{n}-{offset}"), "wb") as f:
                f.write(data)


if __name__ == "__main__":
    main(sys.argv[1])
