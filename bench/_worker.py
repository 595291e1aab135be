"""One benchmark process: sets up a tracing configuration, then times a
workload.  Prints the best time in seconds.  Used by stack_overhead.py and
instrumented_overhead.py."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workloads  # noqa: E402


def setup(config, build_dir, capture_dir):
    """Starts tracing as `config` says; returns what stops it (or None)."""
    if config == "none":
        return None
    if config in ("noop_hook", "noop_profile", "noop_monitoring"):
        sys.path.insert(0, build_dir)
        import noop_hook
        {"noop_hook": noop_hook.enable, "noop_profile": noop_hook.enable_profile,
         "noop_monitoring": getattr(noop_hook, "enable_monitoring", None)}[config]()
        return None
    if config == "cprofile":
        import cProfile
        prof = cProfile.Profile()
        prof.enable()
        return prof.disable
    if config == "yappi":
        import yappi
        yappi.set_clock_type("wall")
        yappi.start(builtins=True)
        return yappi.stop
    if config == "viztracer":
        from viztracer import VizTracer
        # A buffer big enough that no entry is dropped during the timed runs.
        tracer = VizTracer(tracer_entries=20_000_000, verbose=0)
        tracer.start()
        return tracer.stop
    if config == "pyinstrument":
        from pyinstrument import Profiler
        prof = Profiler()
        prof.start()
        return prof.stop
    import etwtrace
    if config.endswith("_capture"):
        os.environ["ETWTRACE_CAPTURE"] = capture_dir
    if "_profilehook" in config:
        os.environ["ETWTRACE_C_CALL_HOOK"] = "profile"     # not sys.monitoring (3.12+)
    if config.startswith("etwtrace_instr"):
        tracer = etwtrace.InstrumentedTracer(c_calls="_c" in config.replace("_capture", ""),
                                             call_times="_untimed" not in config)
    else:
        tracer = etwtrace.StackSamplingTracer()
    tracer.enable()
    return tracer.disable


def main():
    config, name, repeat, build_dir, capture_dir = sys.argv[1:6]
    func = workloads.WORKLOADS[name]()
    stop = setup(config, build_dir, capture_dir)
    func()  # warm-up: registers functions, fills caches
    best = float("inf")
    for _ in range(int(repeat)):
        t0 = time.perf_counter()
        func()
        best = min(best, time.perf_counter() - t0)
    if stop is not None:
        stop()
    print(best)


main()
