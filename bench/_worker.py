"""One benchmark process: sets up a tracing configuration, then times a
workload.  Prints the best time in seconds.  Used by stack_overhead.py."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workloads  # noqa: E402


def setup(config, build_dir, capture_dir):
    if config == "none":
        return
    if config == "noop_hook":
        sys.path.insert(0, build_dir)
        import noop_hook
        noop_hook.enable()
        return
    import etwtrace
    if config == "etwtrace_capture":
        os.environ["ETWTRACE_CAPTURE"] = capture_dir
    etwtrace.StackSamplingTracer().enable()


def main():
    config, name, repeat, build_dir, capture_dir = sys.argv[1:6]
    func = workloads.WORKLOADS[name]()
    setup(config, build_dir, capture_dir)
    func()  # warm-up: registers functions, fills caches
    best = float("inf")
    for _ in range(int(repeat)):
        t0 = time.perf_counter()
        func()
        best = min(best, time.perf_counter() - t0)
    print(best)


main()
