"""Workloads for the overhead benchmarks: call-heavy code and scripts of
pyperformance's benchmark suite (imported, their pyperf runner not used)."""
import importlib.util
import os


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


class Node:
    def __init__(self, value):
        self.value = value

    def get(self):
        return self.value


def method_calls():
    nodes = [Node(i) for i in range(100)]
    total = 0
    for _ in range(2000):
        for node in nodes:
            total += node.get()
    return total


def _pyperformance_module(name):
    import pyperformance
    path = os.path.join(os.path.dirname(pyperformance.__file__), "data-files", "benchmarks",
                        f"bm_{name}", "run_benchmark.py")
    spec = importlib.util.spec_from_file_location(f"bm_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pyperformance_workload(name):
    m = _pyperformance_module(name)
    if name == "richards":
        return lambda: m.Richards().run(3)
    if name == "deltablue":
        return lambda: m.delta_blue(3000)
    if name == "nbody":
        return lambda: m.bench_nbody(1, "sun", 20000)
    if name == "raytrace":
        return lambda: m.bench_raytrace(1, 60, 60, None)
    if name == "float":
        return lambda: m.benchmark(40000)
    if name == "go":
        return m.versus_cpu
    raise KeyError(name)


WORKLOADS = {
    "fib(27)": lambda: (lambda: fib(27)),
    "method_calls": lambda: method_calls,
    "richards": lambda: pyperformance_workload("richards"),
    "deltablue": lambda: pyperformance_workload("deltablue"),
    "raytrace": lambda: pyperformance_workload("raytrace"),
    "nbody": lambda: pyperformance_workload("nbody"),
    "float": lambda: pyperformance_workload("float"),
    "go": lambda: pyperformance_workload("go"),
}
