"""The whole command line of python -m etwtrace: each command's options in
one table, one parser for them all, and every help text made from the
tables (so help cannot drift from what is parsed).

parse(args) -> (command, values): command is "run" (the original's
options, `-- script args`), "report", "record", "attach", "detach" or
"top"; values is a Values of the options by name.  A bad command line raises
UsageError (exit code 2)."""

from ..errors import UsageError

RECORDERS = ("auto", "perf", "builtin")
HELP_NAMES = ("-h", "-?", "--help", "/?", "/h")
# The largest --pid of --sampled (the kernel's limit of pid_max).
PID_MOST = 2**22


class Values(dict):
    """Parsed options, also as attributes (opts.format)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value


# ---- values: each option's value is checked here, once ----

def recorder(text):
    rec = text.lower()
    if rec not in RECORDERS:
        raise UsageError(f"--recorder must be auto, perf or builtin, not {rec!r}")
    return rec


def number(option, text, kind, most):
    """A number above 0 and at most `most`."""
    try:
        value = kind(text)
    except ValueError:
        raise UsageError(f"{option} takes a number, not {text!r}") from None
    if not (0 < value <= most):
        raise UsageError(f"{option} {text}: out of range (above 0, at most {most:g})")
    return value


def rate(text):
    from ..sampled.sampler import MAX_RATE
    return number("--rate", text, int, MAX_RATE)


def size(option, text):
    from .. import sizes as _sizes
    try:
        return _sizes.parse_size(text, option)
    except _sizes.SizeError as ex:
        raise UsageError(str(ex)) from None


def max_size(text):
    value = size("--max-size", text)
    if value == 0:
        raise UsageError("--max-size must be more than 0")
    return value


def every(text):
    try:
        value = float(text.removesuffix("s"))
    except ValueError:
        raise UsageError(f"--every takes a number of seconds, not {text!r}") from None
    if not 1 <= value <= 86400:
        raise UsageError(f"--every {text}: out of range (1 to 86400 seconds)")
    return value


def keep(text):
    value = size("--keep", text)
    if value == 0:
        raise UsageError("--keep must be more than 0 (the newest profile is always kept)")
    return value


def ring(text):
    from ..capture.session import parse_size    # the session's bounds of a ring
    return parse_size(text)


def capture_path(text):
    if not text.strip():
        raise UsageError("--capture needs a path")
    return text


def process_id(command, text):
    if not text.isdigit() or int(text) <= 0:
        raise UsageError(f"{command} needs a process id, not {text!r}")
    return int(text)


def id_list(option, text):
    try:
        ids = {int(part) for part in text.split(",")}
    except ValueError:
        raise UsageError(f"{option}: not a list of ids: {text!r}") from None
    if any(i <= 0 for i in ids):
        raise UsageError(f"{option}: ids are positive: {text!r}")
    return ids


def seconds(option, text):
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{option}: not a number of seconds: {text!r}") from None
    if not (value >= 0 and value < 1e9):
        raise UsageError(f"{option}: not a number of seconds from the start: {text!r}")
    return value


def report_formats():
    from ..report.command import FORMATS
    return list(FORMATS)


def report_format(text):
    formats = report_formats()
    if text not in formats:
        raise UsageError(f"--format: invalid choice: {text!r} (choose from "
                         f"{', '.join(formats)})")
    return text


def limit(text):
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"--limit takes a number, not {text!r}") from None
    if value < 0:
        raise UsageError(f"--limit {text}: rows are 0 (all) or more")
    return value


# ---- the tables ----

class Option:
    """One option: `names` (the first is its name in help), `dest` (its key
    in Values), `metavar` (None: a flag setting `const`), `convert` (the
    value's check: text -> value, or raises UsageError), `help` (lines).
    `action` options are kept in order in Values.actions; `rest` ones end
    the reading: what follows is not used."""

    def __init__(self, names, help, dest=None, metavar=None, convert=None, const=True,
                 default=None, action=False, rest=False, words=0, shown=None):
        self.names = tuple(names.split())
        long = [n for n in self.names if n.startswith("--")] or self.names
        self.dest = dest or long[0].lstrip("-/").replace("-", "_")
        self.metavar = metavar
        self.convert = convert or (lambda text: text)
        self.const = const
        self.default = default
        self.action = action
        self.rest = rest
        self.words = words          # takes up to this many following words
        self.help = help
        self.shown = shown          # the option as help shows it

    def label(self):
        if self.shown:
            return self.shown
        names = ", ".join(self.names)
        return f"{names} {self.metavar}" if self.metavar else names


RUN_OPTIONS = [
    Option("--stack", "Stack sampling: Python frames in native stacks (default)",
           dest="mode", const="stack"),
    Option("--instrumented --instrument",
           "Events on entry and exit of every Python function", dest="mode",
           const="instrumented", shown="--instrumented"),
    Option("--c-calls", "With --instrumented: C callables (builtins, methods\n"
           "of C types) too; slower (CPython's profile hook)"),
    Option("--no-call-times", "With --instrumented: exact calls and callers without\n"
           "reading the clock per call (about the eval hook's\n"
           "cost; no call durations; built-in recorder only)",
           dest="call_times", const=False, default=True),
    Option("--capture", "Record everything into the directory PATH (replaced\n"
           "if it holds an earlier capture)", metavar="PATH", convert=capture_path),
    Option("--recorder", "auto (perf where installed and permitted, else\n"
           "builtin), perf, or builtin (no privileges needed)",
           metavar="WHICH", convert=recorder, default="auto"),
    Option("--preset", "Recording profile preset: Default, CPU or Minimal",
           metavar="NAME", default="Default"),
    Option("--max-size", "With --capture: stop recording when the capture\n"
           "(trace and perf.data, all processes) reaches SIZE\n"
           "(e.g. 500M, 2G); the program runs on.  Recording\n"
           "also stops before the file system's free space\n"
           "falls to 5% of its size (at most 1 GiB); so does\n"
           "--sampled, which counts the samples it then drops",
           metavar="SIZE", convert=max_size),
    Option("--sampled", "Hook-free sampling (CPython 3.11, 3.13+; root): a BPF\n"
           "program reads Python stacks at each CPU sample; needs\n"
           "--capture", dest="mode", const="sampled"),
    Option("--rate", "With --sampled: samples per second (default 999)",
           metavar="HZ", convert=rate),
    Option("--pid", "With --sampled: the running process to sample",
           metavar="PID", convert=lambda text: number("--pid", text, int, PID_MOST)),
    Option("--duration", "With --pid: stop sampling after SECONDS",
           metavar="SECONDS", convert=lambda text: number("--duration", text, float, 1e7)),
    Option("--enable", "Traces every start of this Python (see below)",
           action=True, rest=True, words=2, shown="--enable [ENABLE_VAR [TYPE_VAR]]"),
    Option("--disable", "Removes etwtrace.pth", action=True, rest=True),
    Option(" ".join(HELP_NAMES), "Show this help", dest="help", action=True, rest=True,
           shown="-h, -?, --help"),
    Option("--info", "Show technical information for bug reports"),
    Option("--profile", "Show the path of the recording profile", action=True),
    Option("--stacktags", "Show the path of the stack tags file", action=True),
]

REPORT_OPTIONS = [
    Option("--format", "output format: {formats} (default: text)", metavar="FORMAT",
           convert=report_format, default="text"),
    Option("-o --output", "write here instead of stdout", metavar="OUT"),
    Option("--off-cpu", "blocked time (locks, I/O, sleep) by stack, from perf's\n"
           "context switches", default=False),
    Option("--async", "group every view by asyncio task: frames task:NAME, the\n"
           "tasks awaiting it above; with --off-cpu, where each task waited",
           dest="tasks", default=False),
    Option("--limit", "rows per table in text output (default 40; 0 for all)",
           metavar="N", convert=limit, default=40),
    Option("--no-stacktags", "show interpreter-internal native frames too", default=False),
    Option("--stacktags", "stack tags file (default: the bundled one)", metavar="FILE"),
    Option("--pid", "only these processes", metavar="PID[,PID...]",
           convert=lambda text: id_list("--pid", text)),
    Option("--tid", "only these threads", metavar="TID[,TID...]",
           convert=lambda text: id_list("--tid", text)),
    Option("--from", "only from this many seconds after the capture's first event",
           dest="start", metavar="SECONDS", convert=lambda text: seconds("--from", text)),
    Option("--to", "only until this many seconds after the capture's first event",
           dest="end", metavar="SECONDS", convert=lambda text: seconds("--to", text)),
    Option("--diff", "compare with the capture BASELINE: which call paths took a\n"
           "larger or smaller share (text, folded or svg)", metavar="BASELINE"),
]

RECORD_START_OPTIONS = [
    Option("--preset", "Recording profile preset: Default, CPU or Minimal",
           metavar="NAME", default="Default"),
    Option("--recorder", "auto (perf where permitted, else builtin), perf\n"
           "(CPU samples of the whole machine), or builtin", metavar="W",
           convert=recorder, default="auto"),
    Option("--ring", "Memory mode: each thread keeps only its newest SIZE\n"
           "of events (e.g. 16M); written by snapshot and stop",
           metavar="SIZE", convert=ring, default=0),
    Option("--max-size", "Recording stops when the capture (the traces of\n"
           "every process, perf.data) reaches SIZE (e.g. 2G);\n"
           "with --ring, the rings of all threads together stay\n"
           "within SIZE, each keeping its newest events.  Either\n"
           "way it also stops before the file system's free\n"
           "space falls to 5% of its size (at most 1 GiB); the\n"
           "programs run on", metavar="SIZE", convert=max_size),
    Option("--sampled", "Hook-free sampling (root): a BPF program samples every\n"
           "CPython 3.11 and 3.13+ process on the machine, traced or\n"
           "not, as it starts (see --sampled in python -m etwtrace -h)", default=False),
    Option("--rate", "With --sampled: samples per second (default 999, with\n"
           "--every 99); --max-size and the reserve bound it too\n"
           "(the samples taken after the stop are counted, not kept)",
           metavar="HZ", convert=rate),
    Option("--every", "With --sampled: write no trace, but one pprof profile\n"
           "per SECONDS (1 to 86400) into PATH/profiles, the samples\n"
           "counted by stack in memory; snapshot writes the\n"
           "interval's so far, stop the last", metavar="SECONDS", convert=every),
    Option("--keep", "With --every: the oldest profiles are removed once\n"
           "they hold more than SIZE (default 100M)", metavar="SIZE", convert=keep),
]

ATTACH_OPTIONS = [
    Option("--stack", "Stack sampling (default)", dest="mode", const="stack",
           default="stack"),
    Option("--instrumented --instrument", "Every call instead of stack sampling",
           dest="mode", const="instrumented", shown="--instrumented"),
    Option("--c-calls", "With --instrumented: C callables too", default=False),
]

TOP_OPTIONS = [
    Option("--pid", "the running CPython 3.11 or 3.13+ to watch", metavar="PID",
           convert=lambda text: number("--pid", text, int, PID_MOST)),
    Option("--sampled", "run the program after -- and watch it (its output\n"
           "goes to /dev/null; it ends when top does)", default=False),
    Option("--rate", "samples per second (default 999)", metavar="HZ", convert=rate),
    Option("--window", "the last SECONDS the shares are of (default 5)",
           metavar="SECONDS", convert=lambda text: number("--window", text, int, 3600),
           default=5),
]

# record's commands: their positional words (name, required) and options.
RECORD_COMMANDS = {
    "start": ([("path", True)], RECORD_START_OPTIONS),
    "status": ([], []),
    "snapshot": ([("path", False)], []),
    "stop": ([], []),
}


# ---- the parser ----

def _read(options, args, command, fold_case=False, unknown=None):
    """Reads `args` against `options`: returns (values, words), words being
    the arguments that are no option.  Unknown options and words go to the
    list `unknown` if given; else an unknown option is a UsageError."""
    values = Values({o.dest: o.default for o in options})
    values.actions = []
    words = []
    by_name = {name.lower() if fold_case else name: o for o in options for name in o.names}
    while args:
        arg = args.pop(0)
        name, eq, inline = arg.partition("=")
        if fold_case:
            name = name.lower()
        option = by_name.get(name)
        if option is not None and eq and option.metavar is None:
            option = None           # --flag=value: no such option
        if option is None:
            if unknown is not None:
                unknown.append(arg)     # in the order given, words too
            elif not arg.startswith("-") or arg == "-":
                words.append(arg)
            else:
                raise UsageError(f"unknown option {arg!r} for {command}")
            continue
        if option.metavar is not None:
            text = inline if eq else _value(name, args)
            values[option.dest] = option.convert(text)
        elif option.action:
            taken = []
            while args and len(taken) < option.words and not args[0].startswith("-"):
                taken.append(args.pop(0))
            values.actions.append((option.dest, *taken))
        else:
            values[option.dest] = option.const
        if option.rest:
            if unknown is None:
                raise UsageError(f"{arg} takes nothing after it")
            unknown.extend(args)
            args.clear()
    return values, words


def _value(option, args):
    """The value after `option`: a word after it that starts with "-" is
    taken for a forgotten value, not read as the value."""
    if not args or args[0] == "--":
        raise UsageError(f"{option} needs a value")
    if args[0].startswith("-") and args[0] != "-" and not _is_number(args[0]):
        raise UsageError(f"{option} needs a value, not the option {args[0]!r} "
                         "(write ./-name for a path that starts with -)")
    return args.pop(0)


def _is_number(text):
    """-1, -0.5: a (wrong) value for the option's check to refuse, not a
    forgotten value."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def _words(command, words, expected):
    """The positional words of `command` by name, as `expected` lists them."""
    values = {}
    for i, (name, required) in enumerate(expected):
        if i < len(words):
            values[name] = words[i]
        elif required:
            what = "a PATH for the capture" if name == "path" else name.upper()
            raise UsageError(f"{command} needs {what}")
        else:
            values[name] = None
    if len(words) > len(expected):
        if expected:
            raise UsageError(f"{command} takes one {expected[0][0].upper()}, "
                             f"not also {words[len(expected)]!r}")
        raise UsageError(f"{command} takes no arguments, not {words[0]!r}")
    return values


def parse(args):
    """(command, values) for the whole command line `args`; a subcommand's
    -h/--help (or a bare `record`, `attach`, `detach`) gives values.help:
    0 when asked for, 2 when the command was left incomplete."""
    args = list(args) or ["-?"]
    first = args[0]
    if first == "report":
        return "report", _parse_report(args[1:])
    if first == "record":
        return "record", _parse_record(args[1:])
    if first in ("attach", "detach"):
        return first, _parse_attach(first, args[1:])
    if first == "top":
        return "top", _parse_top(args[1:])
    return "run", _parse_run(args)


def _parse_run(args):
    target = None
    if "--" in args:
        at = args.index("--")
        args, target = args[:at], args[at + 1:]
        if not target:
            raise UsageError("nothing to run after --")
    unused = []
    values, _ = _read(RUN_OPTIONS, args, "python -m etwtrace", fold_case=True,
                          unknown=unused)
    if target is not None and any(a[0] in ("help", "enable", "disable")
                                  for a in values.actions):
        unused += ["--", *target]       # they end the reading, as -h does
        target = None
    values.unused = unused
    values.target = target
    return values


def _parse_report(args):
    if any(a in ("-h", "--help") for a in args):
        return Values(help=0)
    try:
        values, words = _read(REPORT_OPTIONS, args, "report")
        values.update(_words("report", words, [("path", True)]))
        if values.start is not None and values.end is not None and values.end <= values.start:
            raise UsageError(f"--to {values.end:g} is not after --from {values.start:g}")
    except UsageError as ex:
        raise UsageError(f"{ex} (see python -m etwtrace report --help)") from None
    values.help = None
    return values


def _parse_record(args):
    if not args or args[0] in ("-h", "--help", "-?"):
        return Values(help=0 if args else 2)
    command, rest = args[0], args[1:]
    if command not in RECORD_COMMANDS:
        raise UsageError(f"unknown record command {command!r} (use start, status, snapshot "
                         "or stop)")
    if command == "snapshot" and rest and rest[0].startswith("-"):
        raise UsageError("usage: python -m etwtrace record snapshot [PATH]")
    expected, options = RECORD_COMMANDS[command]
    name = f"record {command}"
    values, words = _read(options, list(rest), name)
    values.update(_words(name, words, expected))
    if values.get("rate") is not None and not values.get("sampled"):
        raise UsageError("--rate is for --sampled")
    if values.get("every") is not None and not values.get("sampled"):
        raise UsageError("--every is for --sampled (a profile per interval of its samples)")
    if values.get("keep") is not None and values.get("every") is None:
        raise UsageError("--keep is for --every (how much of its profiles to keep)")
    if values.get("every") is not None and values.get("max_size") is not None:
        raise UsageError("--every writes no capture for --max-size to bound: "
                         "--keep bounds its profiles")
    values.command = command
    values.help = None
    return values


def _parse_top(args):
    if args[:1] in (["-h"], ["--help"], ["-?"]):
        return Values(help=0)
    target = None
    if "--" in args:
        at = args.index("--")
        args, target = args[:at], args[at + 1:]
        if not target:
            raise UsageError("nothing to run after --")
    values, words = _read(TOP_OPTIONS, list(args), "top")
    if words:
        raise UsageError(f"top takes options, not {words[0]!r} (a program goes after "
                         "--sampled --)")
    if values.pid is not None and (values.sampled or target is not None):
        raise UsageError("top watches --pid PID or runs --sampled -- script args, not both")
    if values.pid is None and not values.sampled:
        raise UsageError("top needs --pid PID, or --sampled -- script args")
    if values.sampled and target is None:
        raise UsageError("--sampled needs a program to run after --")
    values.target = target
    values.help = None
    return values


def _parse_attach(command, args):
    if not args or args[0] in ("-h", "--help", "-?"):
        return Values(help=0 if args else 2)
    pid = process_id(command, args[0])
    options = ATTACH_OPTIONS if command == "attach" else []
    values, words = _read(options, args[1:], command)
    if words:
        raise UsageError(f"{command} takes one PID, not also {words[0]!r}")
    if command == "attach" and values.c_calls and values.mode != "instrumented":
        raise UsageError("--c-calls needs --instrumented")
    values.pid = pid
    values.help = None
    return values


# ---- help, made from the tables ----

def _option_lines(options, indent=4, width=22, formats=None):
    lines = []
    for option in options:
        label = option.label()
        text = option.help.replace("{formats}", "|".join(formats or ()))
        first, *more = text.split("\n")
        if len(label) < width:
            lines.append(" " * indent + f"{label:<{width}}" + first)
        else:
            lines.append(" " * indent + label)
            lines.append(" " * (indent + width) + first)
        lines.extend(" " * (indent + width) + line for line in more)
    return lines


def _pick(options, *names):
    return [o for o in options if o.names[0] in names]


def _usage_options(options):
    return " ".join(f"[{o.label()}]" for o in options)


def report_usage():
    return (f"python -m etwtrace report PATH [--format {'|'.join(report_formats())}] "
            "[-o OUT]")


def report_help():
    formats = report_formats()
    return "\n".join([
        f"Usage: {report_usage()} [options]",
        "",
        "    Summarise a capture: functions table (text), folded stacks, speedscope",
        "    or Chrome/Perfetto JSON, an SVG flame graph, or a pprof profile; or",
        "    compare two captures (--diff).",
        "",
        "    PATH                  capture directory (from --capture)",
        *_option_lines(REPORT_OPTIONS, formats=formats),
        "",
        "    Instrumented captures show exact calls and time (folded/svg values are",
        "    exclusive nanoseconds); perf captures show CPU samples; --off-cpu shows",
        "    blocked time in nanoseconds.",
        ""])


RECORD_USAGE = f"""\
python -m etwtrace record start PATH [--preset NAME] [--recorder {'|'.join(RECORDERS)}]
                                           [--ring SIZE] [--max-size SIZE]
       python -m etwtrace record start PATH --sampled [--rate HZ] [--max-size SIZE]
       python -m etwtrace record start PATH --sampled --every SECONDS [--keep SIZE]
                                           [--rate HZ]"""


def record_help():
    return "\n".join([
        f"Usage: {RECORD_USAGE}",
        "       python -m etwtrace record status",
        "       python -m etwtrace record snapshot [PATH]",
        "       python -m etwtrace record stop",
        "",
        "    A recording session, like wpr -start / wpr -stop: every traced Python",
        "    process (python -m etwtrace -- ..., the etwtrace.pth, attach) that",
        "    records into no capture of its own records into the session while it",
        "    runs, whether it started before the session or during it.",
        "",
        "    start PATH        Starts a session in the background; PATH becomes the",
        "                      capture at stop (replaced if it holds an earlier one)",
        *_option_lines(RECORD_START_OPTIONS, indent=6, width=16),
        "    status            Whether a session runs, since when, into where, how",
        "                      many processes joined, and how big its capture is so",
        "                      far (with --every: the interval, profiles written, disk",
        "                      used, samples a second and lost; exit status 1: none)",
        "    snapshot [PATH]   Writes what the session holds now into PATH (default:",
        "                      the session's PATH with -snapshot-TIME-RANDOM) and goes on;",
        "                      with --every (no PATH): the interval's profile so far",
        "    stop              Ends the session and saves the capture (with --every:",
        "                      writes the last interval's profile)",
        "",
        "    As root the session is the machine's: processes of every user join it",
        "    and cannot read each other's traces.  As another user it is that",
        "    user's own, with the built-in recorder, joined by that user's processes.",
        ""])


ATTACH_USAGE = f"""\
python -m etwtrace attach PID {_usage_options(ATTACH_OPTIONS[1:])}
       python -m etwtrace detach PID"""


def attach_help():
    return "\n".join([
        f"Usage: {ATTACH_USAGE}",
        "",
        "    Starts (attach) or stops (detach) tracing in the running Python process",
        "    PID, which records into the recording session that runs (start one with",
        "    python -m etwtrace record start PATH).",
        "",
        *_option_lines(ATTACH_OPTIONS),
        "",
        "    Needs CPython 3.14 or later (sys.remote_exec), the same major.minor",
        "    version for this command as for the process (python3.14 -m etwtrace ...),",
        "    and permission to trace the process: root, or the same user where",
        "    /proc/sys/kernel/yama/ptrace_scope allows it.  For older Pythons, trace",
        "    from the start instead: python -m etwtrace --enable ETWTRACE_ON, then",
        "    run the program with ETWTRACE_ON=1.",
        ""])


TOP_USAGE = """\
python -m etwtrace top --pid PID [--rate HZ] [--window SECONDS]
       python -m etwtrace top --sampled [--rate HZ] [--window SECONDS] -- script.py [args...]"""


def top_help():
    return "\n".join([
        f"Usage: {TOP_USAGE}",
        "",
        "    A live view of where a CPython 3.11 or 3.13+ spends its time, like top:",
        "    the hottest functions, Python and native, by their share of the samples",
        "    of the last seconds, refreshed each second.  Samples with the BPF",
        "    sampler (root, or CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE); nothing is",
        "    written to disk.",
        "",
        *_option_lines(TOP_OPTIONS),
        "",
        "    Keys: o sort by own share (samples it was running in), t by total",
        "    (samples it was on the stack of), l functions or lines, h the next",
        "    thread (or all), q or Ctrl-C quit.",
        ""])


ENVIRONMENT_HELP = """\
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
    ETWTRACE_CALLGRAPH=fp|dwarf
                          How perf unwinds stacks (default: chosen for this
                          Python's build)
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


def main_help():
    run = RUN_OPTIONS
    sections = [
        "Usage: python -m etwtrace [options] -- script.py [args...]",
        "       python -m etwtrace [options] -- -m module [args...]",
        "",
        "    Runs a script or module with tracing enabled.",
        *_option_lines(_pick(run, "--stack", "--instrumented", "--c-calls", "--no-call-times",
                             "--capture", "--recorder", "--preset", "--max-size",
                             "--sampled", "--rate")),
        "",
        "Usage: python -m etwtrace --sampled --pid PID [--duration SECONDS] [--rate HZ] "
        "--capture PATH",
        "                          [--max-size SIZE]",
        "",
        "    Samples a running CPython 3.11 or 3.13+ (launched with etwtrace or not)",
        "    until it ends, Ctrl-C, or the duration; the program runs on untouched.",
        *_option_lines(_pick(run, "--pid", "--duration")),
        "",
        "Usage: python -m etwtrace --enable [ENABLE_VAR [TYPE_VAR]]",
        "",
        "    Traces every start of this Python (writes etwtrace.pth into site-packages).",
        "    ENABLE_VAR            Only when this environment variable is set truthy",
        "    TYPE_VAR              Variable choosing 'stack' (default) or 'instrumented'",
        "                          (default name: ENABLE_VAR_TYPE, or ETWTRACE_TYPE)",
        "",
        "Usage: python -m etwtrace --disable",
        "",
        "    Removes etwtrace.pth.",
        "",
        f"Usage: {report_usage()}",
        "",
        "    Summarises a capture (see python -m etwtrace report --help).",
        "",
        f"Usage: {RECORD_USAGE}",
        "       python -m etwtrace record status | snapshot [PATH] | stop",
        "",
        "    A recording session like wpr -start / -stop: every traced Python process",
        "    records into it, or with --sampled every CPython 3.11 and 3.13+ process",
        "    is sampled without hooks (see python -m etwtrace record --help).",
        "",
        f"Usage: {ATTACH_USAGE}",
        "",
        "    Starts or stops tracing in a running CPython 3.14+, which joins the",
        "    recording session (see python -m etwtrace attach --help).",
        "",
        f"Usage: {TOP_USAGE}",
        "",
        "    A live view of the hottest functions of a CPython 3.11 or 3.13+, sampled",
        "    without hooks (root; see python -m etwtrace top --help).",
        "",
        "Other options:",
        *_option_lines(_pick(run, "-h", "--info", "--profile", "--stacktags")),
        "",
        ENVIRONMENT_HELP,
    ]
    return "\n".join(sections)
