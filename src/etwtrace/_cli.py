"""python -m etwtrace: the command line, with the original's options."""

import os
import signal
import sys

import etwtrace

from . import _env, _stdout
from .errors import UsageError

PTH_NAME = "etwtrace.pth"
PTH_TEMPLATE = "import etwtrace; etwtrace.enable_if({!r}, {!r})"

HELP_TEXT = """\
Usage: python -m etwtrace [options] -- script.py [args...]
       python -m etwtrace [options] -- -m module [args...]

    Runs a script or module with tracing enabled.
    --stack               Stack sampling: Python frames in native stacks (default)
    --instrumented        Events on entry and exit of every Python function
    --c-calls             With --instrumented: C callables (builtins, methods
                          of C types) too; slower (CPython's profile hook)
    --no-call-times       With --instrumented: exact calls and callers without
                          reading the clock per call (about the eval hook's
                          cost; no call durations; built-in recorder only)
    --capture PATH        Record everything into the directory PATH (replaced
                          if it holds an earlier capture)
    --recorder WHICH      auto (perf where installed and permitted, else
                          builtin), perf, or builtin (no privileges needed)
    --preset NAME         Recording profile preset: Default, CPU or Minimal
    --max-size SIZE       With --capture: stop recording when the capture
                          (trace and perf.data, all processes) reaches SIZE
                          (e.g. 500M, 2G); the program runs on.  Recording
                          also stops before the file system's free space
                          falls to 5% of its size (at most 1 GiB); so does
                          --sampled, which counts the samples it then drops
    --sampled             Hook-free sampling (CPython 3.11, 3.13+; root): a BPF
                          program reads Python stacks at each CPU sample; needs
                          --capture
    --rate HZ             With --sampled: samples per second (default 999)

Usage: python -m etwtrace --sampled --pid PID [--duration SECONDS] [--rate HZ] --capture PATH
                          [--max-size SIZE]

    Samples a running CPython 3.11 or 3.13+ (launched with etwtrace or not)
    until it ends, Ctrl-C, or the duration; the program runs on untouched.

Usage: python -m etwtrace --enable [ENABLE_VAR [TYPE_VAR]]

    Traces every start of this Python (writes etwtrace.pth into site-packages).
    ENABLE_VAR            Only when this environment variable is set truthy
    TYPE_VAR              Variable choosing 'stack' (default) or 'instrumented'
                          (default name: ENABLE_VAR_TYPE, or ETWTRACE_TYPE)

Usage: python -m etwtrace --disable

    Removes etwtrace.pth.

Usage: python -m etwtrace report PATH [--format text|folded|speedscope|chrome|svg] [-o OUT]

    Summarises a capture (see python -m etwtrace report --help).

Usage: python -m etwtrace record start PATH [--preset NAME] [--recorder auto|perf|builtin]
                                           [--ring SIZE] [--max-size SIZE]
       python -m etwtrace record start PATH --sampled [--rate HZ] [--max-size SIZE]
       python -m etwtrace record status | snapshot [PATH] | stop

    A recording session like wpr -start / -stop: every traced Python process
    records into it, or with --sampled every CPython 3.11 and 3.13+ process
    is sampled without hooks (see python -m etwtrace record --help).

Usage: python -m etwtrace attach PID [--instrumented [--c-calls]]
       python -m etwtrace detach PID

    Starts or stops tracing in a running CPython 3.14+, which joins the
    recording session (see python -m etwtrace attach --help).

Other options:
    -h, -?, --help        Show this help
    --info                Show technical information for bug reports
    --profile             Show the path of the recording profile
    --stacktags           Show the path of the stack tags file

Environment:
    ETWTRACE_CAPTURE=DIR  Any traced process records into DIR (built-in recorder)
    ETWTRACE_MAX_SIZE=SIZE
                          The --max-size of such a capture (and the default
                          of --capture's)
    ETWTRACE_PROFILE=FILE Recording profile to use instead of the bundled one
    ETWTRACE_C_CALLS=1    Instrumented tracing includes C callables
    ETWTRACE_CALL_TIMES=0 Instrumented tracing records no call durations
    ETWTRACE_C_CALL_HOOK=profile
                          C calls through the profile function, not
                          sys.monitoring (3.12+ uses sys.monitoring)
    ETWTRACE_SESSION=ignore
                          Traced processes do not join recording sessions
    ETWTRACE_SESSION_DIR=DIR
                          Where root's recording session is announced
                          (default /run/etwtrace)
    ETWTRACE_PERF_FILES=keep|remove
                          Whether a process traced through etwtrace.pth keeps
                          /tmp/perf-PID.map and /tmp/jit-PID.dump after it
                          exits (default: remove; keep them for a perf
                          recording made outside etwtrace)
"""


def _say(text):
    _stdout.err(text)


def _site_packages():
    import site
    import sysconfig
    paths = []
    try:
        paths.extend(site.getsitepackages())
    except AttributeError:
        pass
    purelib = sysconfig.get_paths().get("purelib")
    if purelib and purelib not in paths:
        paths.append(purelib)
    return paths


def _enable_pth(v1, v2):
    v2 = v2 or (f"{v1}_TYPE" if v1 else "ETWTRACE_TYPE")
    target = None
    for directory in _site_packages():
        if os.path.isdir(directory):
            target = os.path.join(directory, PTH_NAME)
            break
    if target is None:
        raise UsageError("no site-packages directory found to write etwtrace.pth into")
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(etwtrace.__file__)))
    try:
        with open(target, "w", encoding="utf-8") as f:
            f.write(package_root + "\n")
            f.write(PTH_TEMPLATE.format(v1, v2) + "\n")
    except OSError as ex:
        raise UsageError(f"cannot write {target}: {ex.strerror}") from None
    _stdout.out("Created", target)
    if v1:
        _stdout.out(f"Set ${v1} to activate")
    _stdout.out(f"Set ${v2} to 'instrumented' to use instrumented events rather than stacks")


def _disable_pth():
    removed = False
    for directory in dict.fromkeys(_site_packages() + sys.path):
        path = os.path.join(directory or ".", PTH_NAME)
        try:
            os.unlink(path)
            _stdout.out("Removed", path)
            removed = True
        except FileNotFoundError:
            pass
        except OSError as ex:
            raise UsageError(f"cannot remove {path}: {ex.strerror}") from None
    if not removed:
        _stdout.out("etwtrace.pth was not present")


def check_target(target):
    """Raises UsageError unless `target` names a script that exists or a
    module that can be found (before anything is recorded)."""
    if target[0] == "-m":
        if len(target) < 2:
            raise UsageError("-m needs a module name")
        import importlib.util
        try:
            spec = importlib.util.find_spec(target[1])
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            raise UsageError(f"no module named {target[1]!r}")
    elif not os.path.isfile(target[0]):
        raise UsageError(f"no such script: {target[0]}")


def _prepare_runner(target):
    """A function that runs `target` as __main__, with everything that
    comes before the program's first line (finding the module, reading and
    compiling the script) done now, before tracing starts."""
    import runpy
    if target[0] == "-m":
        module = target[1]
        sys.argv[:] = [module, *target[2:]]
        try:
            name, spec, code = runpy._get_module_details(module)
            return lambda: runpy._run_module_code(code, None, "__main__", spec)
        except Exception:   # runpy's internals moved: its public way
            return lambda: runpy.run_module(module, run_name="__main__", alter_sys=True)
    script = target[0]
    sys.argv[:] = list(target)
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    import io
    import zipfile
    if not zipfile.is_zipfile(script):
        try:
            with io.open_code(script) as f:
                code = compile(f.read(), script, "exec", dont_inherit=True)
            return lambda: runpy._run_module_code(code, None, "__main__", script_name=script)
        except (AttributeError, TypeError):
            pass    # runpy's internals moved: its public way
        except SyntaxError:
            pass    # runpy reports it, as Python would
    return lambda: runpy.run_path(script, run_name="__main__")


def _run_target(target, tracer):
    """Runs script or -m module in this process under `tracer`; returns the
    exit status the program would have had."""
    import runpy
    import traceback

    check_target(target)
    runner = _prepare_runner(target)
    # runpy is the launcher's machinery, not the program: keep it out of
    # stacks as the tracer keeps out its own files.
    tracer.ignore(runpy.__file__, runpy.run_path.__code__.co_filename)
    status = 0
    tracer.enable()
    try:
        runner()
    except SystemExit as ex:
        code = ex.code
        if code is None:
            status = 0
        elif isinstance(code, int):
            status = code
        else:
            print(code, file=sys.stderr)
            status = 1
    except KeyboardInterrupt:
        traceback.print_exc()
        status = 130
    except BaseException:
        # The program's own error: report it as Python would, keep the trace.
        traceback.print_exc()
        status = 1
    finally:
        tracer.disable()
    return status


def _parse(args):
    opts = {
        "mode": None, "capture": None, "recorder": "auto", "preset": "Default",
        "target": None, "info": False, "unused": [], "c_calls": False,
        "call_times": True, "rate": None, "pid": None, "duration": None, "max_size": None,
    }
    actions = []

    def value(option):
        if not args or args[0] == "--":
            raise UsageError(f"{option} needs a value")
        if args[0].startswith("-") and args[0] != "-":
            raise UsageError(f"{option} needs a value, not the option {args[0]!r} "
                             "(write ./-name for a path that starts with -)")
        return args.pop(0)

    while args:
        orig = args.pop(0)
        arg = orig.lower()
        if arg == "--":
            if not args:
                raise UsageError("nothing to run after --")
            opts["target"] = list(args)
            args.clear()
            break
        if arg in ("-h", "-?", "--help", "/?", "/h"):
            actions.append(("help",))
            opts["unused"].extend(args)
            args.clear()
            break
        if arg == "--stack":
            opts["mode"] = "stack"
        elif arg in ("--instrumented", "--instrument"):
            opts["mode"] = "instrumented"
        elif arg == "--c-calls":
            opts["c_calls"] = True
        elif arg == "--no-call-times":
            opts["call_times"] = False
        elif arg == "--sampled":
            opts["mode"] = "sampled"
        elif arg in ("--rate", "--pid", "--duration") or \
                arg.startswith(("--rate=", "--pid=", "--duration=")):
            name = arg.partition("=")[0][2:]
            opts[name] = orig.partition("=")[2] or value(orig)
        elif arg == "--capture" or arg.startswith("--capture="):
            opts["capture"] = orig.partition("=")[2] or value(orig)
            if not opts["capture"].strip():
                raise UsageError("--capture needs a path")
        elif arg == "--max-size" or arg.startswith("--max-size="):
            from . import _sizes
            text = orig.partition("=")[2] or value(orig)
            try:
                opts["max_size"] = _sizes.parse_size(text, "--max-size")
            except _sizes.SizeError as ex:
                raise UsageError(str(ex)) from None
            if opts["max_size"] == 0:
                raise UsageError("--max-size must be more than 0")
        elif arg == "--recorder" or arg.startswith("--recorder="):
            rec = (orig.partition("=")[2] or value(orig)).lower()
            if rec not in ("auto", "perf", "builtin"):
                raise UsageError(f"--recorder must be auto, perf or builtin, not {rec!r}")
            opts["recorder"] = rec
        elif arg == "--preset" or arg.startswith("--preset="):
            opts["preset"] = orig.partition("=")[2] or value(orig)
        elif arg == "--profile":
            actions.append(("profile",))
        elif arg == "--stacktags":
            actions.append(("stacktags",))
        elif arg == "--info":
            opts["info"] = True
        elif arg == "--enable":
            names = []
            while args and not args[0].startswith("-") and len(names) < 2:
                names.append(args.pop(0))
            actions.append(("enable", *(names + [None, None])[:2]))
            opts["unused"].extend(args)
            args.clear()
        elif arg == "--disable":
            actions.append(("disable",))
            opts["unused"].extend(args)
            args.clear()
        else:
            opts["unused"].append(orig)
    return opts, actions


def main(args=None):
    try:
        return _main(args)
    except BrokenPipeError:
        # Output no one reads (| head) that _stdout did not write: the
        # command ends there, quietly.
        _stdout.drop_stdout()
        return 1


def _main(args):
    args = list(sys.argv[1:] if args is None else args)
    if not args:
        args = ["-?"]
    if args[0] == "report":
        from . import _report
        return _report.main(args[1:])
    if args[0] == "record":
        from . import _session
        return _session.main(args[1:], _say)
    if args[0] in ("attach", "detach"):
        from . import _attach
        return _attach.main(args[0], args[1:], _say)
    try:
        opts, actions = _parse(args)
        for action in actions:
            kind = action[0]
            if kind == "help":
                _stdout.out(f"etwtrace for Linux, version {etwtrace.__version__}")
                _stdout.out(HELP_TEXT)
            elif kind == "profile":
                _stdout.out(etwtrace.get_profile_path())
            elif kind == "stacktags":
                _stdout.out(etwtrace.get_stacktags_path())
            elif kind == "enable":
                _enable_pth(action[1] or "", action[2])
            elif kind == "disable":
                _disable_pth()
        if opts["info"]:
            tracer = (etwtrace.InstrumentedTracer() if opts["mode"] == "instrumented"
                      else etwtrace.StackSamplingTracer())
            _stdout.out(tracer._get_technical_info())
        if opts["unused"]:
            shown = " ".join(f'"{a}"' if " " in a else a for a in opts["unused"])
            _say(f"WARNING: The following arguments were not used: {shown}")
            return 1
        target = opts["target"]
        if opts["mode"] == "sampled" or opts["rate"] or opts["pid"] or opts["duration"]:
            return _run_sampled(opts, target)
        if opts["max_size"] is not None and not opts["capture"]:
            raise UsageError("--max-size is the size of a capture: add --capture PATH")
        if target is None:
            if opts["capture"]:
                raise UsageError("--capture needs a program to run after --")
            return 0
        mode = opts["mode"] or "stack"
        _env.check_all()
        check_target(target)
        if opts["c_calls"]:
            if mode != "instrumented":
                raise UsageError("--c-calls needs --instrumented")
            # Through the environment, so capture children and spawned
            # Python processes trace C calls too.
            os.environ[_env.C_CALLS] = "1"
        if not opts["call_times"]:
            if mode != "instrumented":
                raise UsageError("--no-call-times needs --instrumented")
            if opts["recorder"] == "perf":
                # perf's samples are placed on call stacks by time.
                raise UsageError("--no-call-times records with the built-in recorder, not perf")
            opts["recorder"] = "builtin"
            os.environ[_env.CALL_TIMES] = "0"
        if opts["capture"]:
            from . import _capture
            try:
                max_size = opts["max_size"]
                if max_size is None:
                    max_size = _env.size(_env.MAX_SIZE)
                return _capture.capture(opts["capture"], mode, opts["recorder"],
                                        opts["preset"], target, _say, max_size=max_size or 0)
            except _capture.CaptureError as ex:
                raise UsageError(str(ex)) from None
            except _capture.PerfError as ex:
                raise UsageError(str(ex)) from None
        tracer = (etwtrace.InstrumentedTracer() if mode == "instrumented"
                  else etwtrace.StackSamplingTracer())
        try:
            status = _run_target(target, tracer)
        except (RuntimeError, NotImplementedError, OSError) as ex:
            raise UsageError(str(ex)) from None
        return status
    except (UsageError, _env.EnvError) as ex:
        _say(f"etwtrace: error: {ex}")
        return 2


def _positive(option, text, kind, most):
    try:
        value = kind(text)
    except ValueError:
        raise UsageError(f"{option} takes a number, not {text!r}") from None
    if not (0 < value <= most):
        raise UsageError(f"{option} {text}: out of range (above 0, at most {most:g})")
    return value


def _run_sampled(opts, target):
    """--sampled: hook-free sampling of a program it runs or of --pid."""
    from . import _capture, _sampled
    if opts["mode"] != "sampled":
        used = [f"--{o}" for o in ("rate", "pid", "duration") if opts[o]]
        raise UsageError(f"{', '.join(used)} needs --sampled")
    if not opts["capture"]:
        raise UsageError("--sampled records into a capture: add --capture PATH")
    if (opts["pid"] is None) == (target is None):
        raise UsageError("--sampled takes a program to run after --, or --pid PID (not both)")
    if opts["duration"] is not None and opts["pid"] is None:
        raise UsageError("--duration is for --pid (a program it runs is sampled to its end)")
    rate = _sampled.DEFAULT_RATE
    if opts["rate"] is not None:
        rate = _positive("--rate", opts["rate"], int, _sampled.MAX_RATE)
    pid = _positive("--pid", opts["pid"], int, 2**22) if opts["pid"] is not None else None
    duration = (_positive("--duration", opts["duration"], float, 1e7)
                if opts["duration"] is not None else None)
    if target is not None:
        check_target(target)
    max_size = opts["max_size"]
    if max_size is None:
        max_size = _env.size(_env.MAX_SIZE)
    try:
        return _sampled.run(opts["capture"], rate, _say, pid=pid, target=target,
                            duration=duration, max_size=max_size or 0)
    except (_sampled.SampledError, _capture.CaptureError) as ex:
        raise UsageError(str(ex)) from None


def exit_as(status):
    """Ends this process as the traced program ended: with its exit code,
    or (status -N) by signal N, so a shell sees 128+N."""
    _stdout.flush()
    if status is not None and status < 0:
        sig = -status
        try:
            import resource
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))   # the program's crash, not ours
            if sig not in (signal.SIGKILL, signal.SIGSTOP):
                signal.signal(sig, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
            os.kill(os.getpid(), sig)
        except (OSError, ValueError):
            pass
        os._exit(128 + sig)
    sys.exit(status)


def entry_point():
    exit_as(main())
