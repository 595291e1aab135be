"""python -m etwtrace: the command line, with the original's options."""

import os
import signal
import sys

import etwtrace

from . import args as _args
from .. import env as _env, stdout as _stdout
from ..errors import UsageError

PTH_NAME = "etwtrace.pth"
PTH_TEMPLATE = "import etwtrace; etwtrace.enable_if({!r}, {!r})"

# The help is made from the option tables: _args.main_help().


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
    try:
        command, opts = _args.parse(args)
        if command == "report":
            return _report(opts)
        if command == "record":
            return _record(opts)
        if command in ("attach", "detach"):
            return _attach(command, opts)
        if command == "top":
            return _top(opts)
        return _run(opts)
    except etwtrace.Error as ex:
        # Every error's one line, here; its class says usage (2) or failure (1).
        _say(f"etwtrace: error: {ex}")
        return ex.status


def _report(opts):
    if opts.help is not None:
        _stdout.out(_args.report_help())
        return opts.help
    from ..report import command as _report
    return _report.main(opts)


def _record(opts):
    if opts.help is not None:
        _stdout.out(_args.record_help())
        return opts.help
    from ..capture import session as _session
    return _session.main(opts, _say)


def _attach(command, opts):
    if opts.help is not None:
        _stdout.out(_args.attach_help())
        return opts.help
    from ..capture import attach as _attach
    return _attach.main(command, opts, _say)


def _top(opts):
    if opts.help is not None:
        _stdout.out(_args.top_help())
        return opts.help
    from . import top as _top_view
    return _top_view.main(opts, _say)


def _run(opts):
    """The original's command: python -m etwtrace [options] -- script args."""
    for action in opts.actions:
        kind = action[0]
        if kind == "help":
            _stdout.out(f"etwtrace for Linux, version {etwtrace.__version__}")
            _stdout.out(_args.main_help())
        elif kind == "profile":
            _stdout.out(etwtrace.get_profile_path())
        elif kind == "stacktags":
            _stdout.out(etwtrace.get_stacktags_path())
        elif kind == "enable":
            names = list(action[1:]) + [None, None]
            _enable_pth(names[0] or "", names[1])
        elif kind == "disable":
            _disable_pth()
    if opts.info:
        tracer = (etwtrace.InstrumentedTracer() if opts.mode == "instrumented"
                  else etwtrace.StackSamplingTracer())
        _stdout.out(tracer._get_technical_info())
    if opts.unused:
        shown = " ".join(f'"{a}"' if " " in a else a for a in opts.unused)
        _say(f"WARNING: The following arguments were not used: {shown}")
        return 1
    target = opts.target
    if opts.mode == "sampled" or opts.rate or opts.pid or opts.duration:
        return _run_sampled(opts, target)
    if opts.max_size is not None and not opts.capture:
        raise UsageError("--max-size is the size of a capture: add --capture PATH")
    if target is None:
        if opts.capture:
            raise UsageError("--capture needs a program to run after --")
        return 0
    mode = opts.mode or "stack"
    _env.check_all()
    check_target(target)
    if opts.c_calls:
        if mode != "instrumented":
            raise UsageError("--c-calls needs --instrumented")
        # Through the environment, so capture children and spawned
        # Python processes trace C calls too.
        os.environ[_env.C_CALLS] = "1"
    if not opts.call_times:
        if mode != "instrumented":
            raise UsageError("--no-call-times needs --instrumented")
        if opts.recorder == "perf":
            # perf's samples are placed on call stacks by time.
            raise UsageError("--no-call-times records with the built-in recorder, not perf")
        opts.recorder = "builtin"
        os.environ[_env.CALL_TIMES] = "0"
    if opts.capture:
        from ..capture import launcher as _launcher
        max_size = opts.max_size
        if max_size is None:
            max_size = _env.size(_env.MAX_SIZE)
        try:
            return _launcher.capture(opts.capture, mode, opts.recorder, opts.preset,
                                    target, _say, max_size=max_size or 0)
        except (_launcher.CaptureError, _launcher.PerfError) as ex:
            # The launcher's own failures have always exited 2 (tests/test_cli.py).
            raise UsageError(str(ex)) from None
    tracer = (etwtrace.InstrumentedTracer() if mode == "instrumented"
              else etwtrace.StackSamplingTracer())
    try:
        return _run_target(target, tracer)
    except (RuntimeError, NotImplementedError, OSError) as ex:
        raise UsageError(str(ex)) from None


def _run_sampled(opts, target):
    """--sampled: hook-free sampling of a program it runs or of --pid."""
    from ..capture import launcher as _launcher
    from ..sampled import sampler as _sampler
    if opts.mode != "sampled":
        used = [f"--{o}" for o in ("rate", "pid", "duration") if opts[o]]
        raise UsageError(f"{', '.join(used)} needs --sampled")
    if not opts.capture:
        raise UsageError("--sampled records into a capture: add --capture PATH")
    if (opts.pid is None) == (target is None):
        raise UsageError("--sampled takes a program to run after --, or --pid PID (not both)")
    if opts.duration is not None and opts.pid is None:
        raise UsageError("--duration is for --pid (a program it runs is sampled to its end)")
    rate = opts.rate if opts.rate is not None else _sampler.DEFAULT_RATE
    if target is not None:
        check_target(target)
    max_size = opts.max_size
    if max_size is None:
        max_size = _env.size(_env.MAX_SIZE)
    try:
        return _sampler.run(opts.capture, rate, _say, pid=opts.pid, target=target,
                            duration=opts.duration, max_size=max_size or 0)
    except (_sampler.SampledError, _launcher.CaptureError) as ex:
        # The launcher's own failures have always exited 2 (tests/test_sampled.py).
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
