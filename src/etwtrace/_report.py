"""python -m etwtrace report: mixed Python/native stacks from a capture.

Python frames are named from the PythonFunction address ranges
(`qualname (file:line)`), native frames by perf's symbols.  Native frames
matching the stack-tags file are folded away unless --no-stacktags.
"""

import argparse
import bisect
import fnmatch
import html
import os
import sys
import xml.dom.minidom
from collections import Counter

FORMATS = ("text", "folded", "speedscope", "chrome", "svg")
NOT_YET = ("speedscope", "chrome")


class ReportError(Exception):
    pass


class _Ranges:
    """Address ranges of one process's PythonFunction events."""

    def __init__(self):
        self.begins = []
        self.items = []

    def add(self, begin, end, label):
        i = bisect.bisect_left(self.begins, begin)
        if i < len(self.begins) and self.begins[i] == begin:
            self.items[i] = (begin, end, label)
            return
        self.begins.insert(i, begin)
        self.items.insert(i, (begin, end, label))

    def find(self, ip):
        i = bisect.bisect_right(self.begins, ip) - 1
        if i >= 0:
            begin, end, label = self.items[i]
            if begin <= ip < end:
                return label
        return None


def load_stacktags(path):
    """(module glob, method glob) of every Entrypoint in a stack-tags file."""
    try:
        doc = xml.dom.minidom.parse(path)
    except (OSError, Exception) as ex:
        raise ReportError(f"cannot read stack tags {path}: {ex}") from None
    return [(e.getAttribute("Module") or "*", e.getAttribute("Method") or "*")
            for e in doc.getElementsByTagName("Entrypoint")]


def _folded_by_tags(sym, dso, tags):
    module = os.path.basename(dso)
    return any(fnmatch.fnmatchcase(module, m) and fnmatch.fnmatchcase(sym, f) for m, f in tags)


def collect_stacks(path, tags):
    """Counter of root-first frame tuples, and the event kind they came from."""
    from . import open_trace
    ranges = {}
    samples = Counter()
    marks = Counter()
    with open_trace(path) as trace:
        for e in trace:
            if e.name == "PythonFunction":
                f = e.fields
                label = f"{f['Name']} ({f['SourceFile']}:{f['LineNumber']})"
                ranges.setdefault(e.pid, _Ranges()).add(f["BeginAddress"], f["EndAddress"], label)
                continue
            if e.name not in ("SampledProfile", "PythonStackSample") or not e.stack:
                continue
            proc = ranges.get(e.pid)
            frames = []
            for i, ip in enumerate(e.stack):
                label = proc.find(ip) if proc else None
                if label is not None:
                    frames.append(label)
                    continue
                sym, dso = e.frames[i] if i < len(e.frames) else ("", "")
                if tags is not None and (not sym or _folded_by_tags(sym, dso, tags)):
                    continue
                if sym and sym != "[unknown]":
                    frames.append(f"{sym} [{os.path.basename(dso)}]")
                else:
                    frames.append(f"0x{ip:x}")
            key = tuple(reversed(frames))
            if not key:
                continue
            (samples if e.name == "SampledProfile" else marks)[key] += 1
    if samples:
        return samples, "CPU samples"
    return marks, "stack marks"


def format_folded(stacks):
    lines = [";".join(f.replace(";", ":") for f in stack) + f" {count}"
             for stack, count in sorted(stacks.items())]
    return "\n".join(lines) + ("\n" if lines else "")


def format_text(stacks, kind):
    total = sum(stacks.values())
    inclusive = Counter()
    exclusive = Counter()
    for stack, count in stacks.items():
        for frame in set(stack):
            inclusive[frame] += count
        exclusive[stack[-1]] += count
    out = [f"{total} {kind}", "",
           f"{'total':>8} {'total%':>7} {'self':>8} {'self%':>7}  function"]
    for frame, count in inclusive.most_common(40):
        out.append(f"{count:>8} {100 * count / total:>6.1f}% {exclusive[frame]:>8} "
                   f"{100 * exclusive[frame] / total:>6.1f}%  {frame}")
    return "\n".join(out) + "\n"


def format_svg(stacks, title):
    """A self-contained flame graph: one <rect> per frame, root at the
    bottom, width proportional to samples; hover shows the full name."""
    tree = {}
    for stack, count in stacks.items():
        node = tree
        for frame in stack:
            entry = node.setdefault(frame, [0, {}])
            entry[0] += count
            node = entry[1]
    total = sum(stacks.values()) or 1
    depth = max((len(s) for s in stacks), default=0)
    width, row = 1200, 18
    height = (depth + 2) * row + 30
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="monospace" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="#fdfdf6"/>',
        f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="14">'
        f'{html.escape(title)}</text>',
    ]

    def draw(node, x, level):
        for frame, (count, children) in sorted(node.items()):
            w = count / total * (width - 20)
            y = height - (level + 1) * row - 10
            python = "(" in frame and frame.endswith(")") and not frame.startswith("0x")
            hue = 30 + (hash(frame) % 30)
            color = f"hsl({hue + (150 if python else 0)},70%,{60 if python else 65}%)"
            label = html.escape(frame)
            pct = 100 * count / total
            parts.append(
                f'<g><title>{label} ({count} samples, {pct:.1f}%)</title>'
                f'<rect x="{x:.2f}" y="{y}" width="{max(w - 0.5, 0.1):.2f}" height="{row - 1}" '
                f'fill="{color}" rx="2"/>')
            chars = int(w / 7)
            if chars >= 3:
                text = frame if len(frame) <= chars else frame[:chars - 2] + ".."
                parts.append(f'<text x="{x + 3:.2f}" y="{y + row - 5}">{html.escape(text)}</text>')
            parts.append("</g>")
            draw(children, x, level + 1)
            x += w

    draw(tree, 10, 0)
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main(args):
    parser = argparse.ArgumentParser(prog="python -m etwtrace report",
                                     description="Summarise a capture.")
    parser.add_argument("path", help="capture directory")
    parser.add_argument("--format", default="text", choices=FORMATS)
    parser.add_argument("-o", "--output", help="write here instead of stdout")
    parser.add_argument("--no-stacktags", action="store_true",
                        help="show interpreter-internal native frames too")
    parser.add_argument("--stacktags", help="stack tags file (default: the bundled one)")
    try:
        opts = parser.parse_args(args)
    except SystemExit as ex:
        return 0 if ex.code == 0 else 2
    from . import TraceError, get_stacktags_path
    try:
        if opts.format in NOT_YET:
            raise ReportError(f"--format {opts.format} is not yet available")
        tags = None if opts.no_stacktags else load_stacktags(opts.stacktags or get_stacktags_path())
        stacks, kind = collect_stacks(opts.path, tags)
        if not stacks:
            raise ReportError(f"{opts.path}: no stacks recorded (record with perf, or call _mark_stack)")
        if opts.format == "folded":
            text = format_folded(stacks)
        elif opts.format == "svg":
            text = format_svg(stacks, f"etwtrace: {os.path.basename(os.path.abspath(opts.path))} "
                                      f"({sum(stacks.values())} {kind})")
        else:
            text = format_text(stacks, kind)
        if opts.output:
            try:
                with open(opts.output, "w", encoding="utf-8") as f:
                    f.write(text)
            except OSError as ex:
                raise ReportError(f"cannot write {opts.output}: {ex.strerror}") from None
        else:
            sys.stdout.write(text)
    except (ReportError, TraceError) as ex:
        print(f"etwtrace: error: {ex}", file=sys.stderr)
        return 2
    return 0
