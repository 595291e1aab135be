"""Prints the C stack bytes one Python call takes in this process (under
a tracer: what its hook adds too), from the stack pointer at two depths,
read by a 4-byte `mov %rsp,%rax; ret` called through ctypes."""
import ctypes
import mmap

code = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
code.write(b"\x48\x89\xe0\xc3")
stack_pointer = ctypes.CFUNCTYPE(ctypes.c_void_p)(
    ctypes.addressof(ctypes.c_char.from_buffer(code)))


def down(depth, out):
    if depth == 0:
        out.append(stack_pointer())
        return
    down(depth - 1, out)


def main():
    out = []
    down(10, out)
    down(110, out)
    print((out[0] - out[1]) // 100)


main()
