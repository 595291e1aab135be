"""Whole files read with no buffered I/O object, as the sampler reads
/proc and ELF files while the programs it samples run.

On free-threaded CPython 3.13 closing a buffered file flushes it inside a
critical section the flush enters again, and that second entry calls
sched_yield() 40 times before it goes on (a text file: 80 or more; 3.14
skips the nested entry).  With the sampled programs busy on every CPU,
each yield puts the sampler a time slice behind them: a scan for new
processes that needed 5 ms of CPU took 0.4 to 2 s, and a program's workers
were sampled that much later.  A raw file's close yields nothing.
"""


def read(path):
    """The bytes of file `path` (an OSError as open() raises it)."""
    with open(path, "rb", buffering=0) as f:
        return f.read()
