"""Long-running use: memory that does not grow with the number of
functions a program compiles, and no memory error under valgrind."""
import os
import subprocess
import sys
import sysconfig
import textwrap

import pytest

from conftest import need_tool

DYNAMIC = """
import gc, sys, etwtrace
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
tracer = None
if sys.argv[1] == "stack":
    tracer = etwtrace.StackSamplingTracer()
elif sys.argv[1] == "instrumented":
    tracer = etwtrace.InstrumentedTracer()
if tracer:
    tracer.enable()
def batch(n):
    for i in range(n):
        ns = {}
        exec(f"def f{i}():\\n    return {i}\\nf{i}()", ns)
batch(20_000)
gc.collect()
before = rss()
batch(200_000)
gc.collect()
print((rss() - before) / 200_000)
if tracer:
    tracer.disable()
"""


@pytest.mark.parametrize("mode, most", [
    # Instrumented mode frees a function's record with its code object.
    ("instrumented", 32),
    # Stack mode keeps each function's trampoline and its unwind info for
    # the life of the process (an address names one function for good):
    # about 360 bytes a function, a 128-byte slot of it (trampoline.h and
    # docs/BENCHMARKS.md).
    ("stack", 512),
])
def test_200000_dynamically_compiled_functions_keep_memory_bounded(tmp_path, mode, most):
    env = dict(os.environ)
    if "libasan" in env.get("LD_PRELOAD", ""):
        # ASan (.ci/asan) holds freed blocks back in a quarantine of up to
        # 256 MiB on purpose, and the runs that free more blocks fill more
        # of it: that is ASan's memory, not ours.  Without it, a block we
        # kept would still show here.
        env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "") + ":quarantine_size_mb=0"

    def growth(how):
        proc = subprocess.run([sys.executable, "-c", DYNAMIC, how], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, encoding="utf-8", timeout=600,
                              env=dict(env, ETWTRACE_CAPTURE=str(tmp_path / how)))
        assert proc.returncode == 0, proc.stderr
        return float(proc.stdout)

    # CPython itself may keep something of each function (3.14 keeps its
    # interned name, about 77 bytes): only what tracing adds counts.
    per_function = growth(mode) - growth("none")
    assert per_function < most, per_function


@pytest.mark.skipif(bool(sysconfig.get_config_var("Py_GIL_DISABLED")),
                    reason="free-threaded CPython allocates with mimalloc only (it refuses "
                    "PYTHONMALLOC=malloc), which valgrind cannot check; the GIL builds run this test")
@pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""),
                    reason="the extension is built with AddressSanitizer here (.ci/asan), which "
                    "valgrind cannot run; the plain suite runs this test")
def test_valgrind_finds_no_memory_error_in_etwtrace(tmp_path):
    need_tool("valgrind")
    prog = tmp_path / "short.py"
    prog.write_text(textwrap.dedent("""
        import threading, etwtrace
        def leaf():
            pass
        def work():
            for _ in range(2000):
                leaf()
        with etwtrace.InstrumentedTracer(c_calls=True):
            threads = [threading.Thread(target=work) for _ in range(2)]
            for t in threads:
                t.start()
            work()
            for t in threads:
                t.join()
            etwtrace._mark_stack("here")
        with etwtrace.StackSamplingTracer():
            work()
            sorted([3, 1, 2], key=lambda x: -x)
    """))
    env = dict(os.environ, PYTHONMALLOC="malloc", ETWTRACE_CAPTURE=str(tmp_path / "cap"))
    proc = subprocess.run(["valgrind", "--leak-check=no", "--num-callers=30",
                           sys.executable, str(prog)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8",
                          errors="replace", env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # CPython itself (not built for valgrind) shows uninitialised values;
    # none may involve etwtrace, and nothing may read or write out of bounds.
    reports = proc.stderr.split("\n==")
    ours = [r for r in reports if "_etwtrace" in r or "_native/" in r]
    assert not ours, "\n".join(ours)[:3000]
    assert "Invalid read" not in proc.stderr and "Invalid write" not in proc.stderr
    assert "Invalid free" not in proc.stderr
