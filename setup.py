"""Builds the native core.  Everything else is in pyproject.toml."""
import os
import platform
import sys
import sysconfig

# The interpreters and machines the native core is written for (compat.h
# holds what differs between interpreters, _native/include/arch.h what differs
# between machines): anything else stops here, in one line.
SUPPORTED = ((3, 9), (3, 15))
MACHINES = ("x86_64", "aarch64")
if not (SUPPORTED[0] <= sys.version_info[:2] <= SUPPORTED[1]) or \
        sys.implementation.name != "cpython" or sys.platform != "linux" or \
        platform.machine() not in MACHINES:
    raise SystemExit(f"etwtrace supports CPython 3.9 to 3.15 on Linux {' and '.join(MACHINES)}; "
                     f"this is {sys.implementation.name} {platform.python_version()} on "
                     f"{sys.platform} {platform.machine()}")

from setuptools import Extension, setup  # noqa: E402 - after the check, which needs none

NATIVE = "src/etwtrace/_native"


def have_sdt_header():
    # USDT probes need systemtap's sys/sdt.h; without it the probes compile
    # to nothing and the rest still works (--info reports usdt False).
    multiarch = sysconfig.get_config_var("MULTIARCH") or f"{platform.machine()}-linux-gnu"
    for root in ("/usr/include", "/usr/local/include", f"/usr/include/{multiarch}"):
        if os.path.exists(os.path.join(root, "sys", "sdt.h")):
            return True
    return False


macros = [("ETWTRACE_HAVE_SDT", "1")] if have_sdt_header() else []
# Debug info, so `perf probe` can name the emitters' arguments (README).
# Frame pointers in our own code too: perf's frame-pointer call graphs
# (and its USDT probes' stacks) walk through the hooks and the writer.
extra_compile_args = ["-std=gnu11", "-Wall", "-Wextra", "-O2", "-g", "-fno-strict-aliasing",
                      "-fno-omit-frame-pointer", "-mno-omit-leaf-frame-pointer"]
extra_compile_args += os.environ.get("ETWTRACE_CFLAGS", "").split()
extra_link_args = os.environ.get("ETWTRACE_LDFLAGS", "").split()



def sampler_extension():
    """etwtrace._sampler (the BPF sampler of --sampled), or None where this
    machine cannot build it: it needs clang (for the BPF program) and
    libbpf's headers (Debian: clang libbpf-dev).  The package works without
    it; --sampled then says what is missing."""
    import shutil
    import subprocess
    sampler = f"{NATIVE}/sampler"
    why = None
    if os.environ.get("ETWTRACE_NO_SAMPLER") == "1":
        why = "ETWTRACE_NO_SAMPLER=1"
    elif shutil.which("clang") is None:
        why = "clang is not installed"
    elif not os.path.exists("/usr/include/bpf/libbpf.h"):
        why = "libbpf's headers are not installed (libbpf-dev)"
    out = os.path.join("build", "etwtrace-sampler")
    if why is None:
        os.makedirs(out, exist_ok=True)
        obj = os.path.join(out, "sampler.bpf.o")
        arch = sysconfig.get_config_var("MULTIARCH") or f"{platform.machine()}-linux-gnu"
        # bpf_tracing.h's register names (and sampler.bpf.c's) per machine.
        target = {"x86_64": "x86", "aarch64": "arm64"}[platform.machine()]
        r = subprocess.run(["clang", "-O2", "-g", "-target", "bpf", f"-D__TARGET_ARCH_{target}",
                            f"-I{NATIVE}/include", f"-I/usr/include/{arch}",
                            "-c", f"{sampler}/sampler.bpf.c",
                            "-o", obj], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if r.returncode != 0:
            why = "clang could not compile the BPF program: " + \
                r.stdout.decode(errors="replace").strip().splitlines()[-1]
        else:
            with open(obj, "rb") as f:
                data = f.read()
            with open(os.path.join(out, "sampler_object.h"), "w") as f:
                f.write("/* Made by setup.py from sampler.bpf.c: the BPF object. */\n")
                f.write("static const unsigned char etw_sampler_object[] = {\n")
                for i in range(0, len(data), 16):
                    f.write("    " + ", ".join(str(b) for b in data[i:i + 16]) + ",\n")
                f.write("};\n")
    if why is not None:
        print(f"etwtrace: not building the BPF sampler (--sampled): {why}", file=sys.stderr)
        return None
    return Extension(
        "etwtrace._sampler",
        sources=[f"{sampler}/module.c", f"{sampler}/chunks.c", f"{sampler}/splice.c",
                 f"{sampler}/unwind.c", f"{sampler}/unwinder_type.c"],
        include_dirs=[out, sampler, f"{NATIVE}/include"],
        depends=[f"{sampler}/sampler.h", f"{sampler}/sampler.bpf.c", f"{sampler}/chunks.h",
                 f"{sampler}/splice.h", f"{sampler}/unwind.h", f"{sampler}/unwinder_type.h",
                 f"{NATIVE}/include/arch.h"],
        extra_compile_args=extra_compile_args,
        extra_link_args=extra_link_args,
        libraries=["bpf"],
    )


def native(folder, *names):
    return [f"{NATIVE}/{folder}/{name}" for name in names]


def headers(*folders):
    return [f"{NATIVE}/{folder}/{h}" for folder in folders
            for h in sorted(os.listdir(f"{NATIVE}/{folder}")) if h.endswith(".h")]


# _native/ by concern: include/ (what every part shares: compat.h, the trace
# format), tracer/ (the hook and what it runs), recorder/ (the event writer),
# decoder/ (the reader), sampler/ (the BPF sampler).
TRACER_DIRS = ("include", "tracer", "recorder")

setup(
    ext_modules=[
        Extension(
            "etwtrace._etwtrace",
            sources=native("tracer", "module.c", "tracer.c", "cstack.c", "functions.c",
                           "code_index.c", "c_functions.c", "monitoring.c", "perf_jit.c",
                           "tasks.c", "trampoline.c")
            + native("recorder", "clock.c", "events.c", "recorder.c", "session.c", "copier.c",
                     "budget.c"),
            include_dirs=[f"{NATIVE}/{folder}" for folder in TRACER_DIRS],
            depends=headers(*TRACER_DIRS),
            define_macros=macros,
            extra_compile_args=extra_compile_args,
            extra_link_args=extra_link_args,
            libraries=["dl", "pthread"],
        ),
        Extension(
            "etwtrace._ctfdecode",
            sources=native("decoder", "module.c", "cursor.c", "fold.c", "reader.c"),
            include_dirs=[f"{NATIVE}/include"],
            depends=headers("include", "decoder"),
            # Its parts' shared functions stay inside the module.
            extra_compile_args=extra_compile_args + ["-fvisibility=hidden"],
            extra_link_args=extra_link_args,
        ),
    ] + [e for e in (sampler_extension(),) if e is not None],
)
