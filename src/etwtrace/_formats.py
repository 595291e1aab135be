"""Report formats over stack counts: text tables, folded stacks, SVG flame graph."""

import html
from collections import Counter


def _amount(value, unit):
    if unit == "ns":
        return f"{value / 1e6:.3f} ms"
    return f"{value} {unit}"


def format_folded(stacks):
    """Brendan Gregg's folded stacks: `root;...;leaf VALUE` per line."""
    lines = [";".join(f.replace(";", ":") for f in stack) + f" {count}"
             for stack, count in sorted(stacks.items()) if count > 0]
    return "\n".join(lines) + ("\n" if lines else "")


def stack_table(stacks, heading, unit="samples", limit=40):
    """Top functions of stack counts: total (inclusive) and self."""
    total = sum(stacks.values()) or 1
    inclusive = Counter()
    exclusive = Counter()
    for stack, count in stacks.items():
        for frame in set(stack):
            inclusive[frame] += count
        exclusive[stack[-1]] += count
    scale = 1e6 if unit == "ns" else None
    cols = ("total ms", "self ms") if unit == "ns" else ("total", "self")
    out = [heading, "",
           f"{cols[0]:>10} {'total%':>7} {cols[1]:>10} {'self%':>7}  function"]
    for frame, count in inclusive.most_common(limit):
        out.append(f"{_num(count, scale):>10} {100 * count / total:>6.1f}% "
                   f"{_num(exclusive[frame], scale):>10} "
                   f"{100 * exclusive[frame] / total:>6.1f}%  {frame}")
    return out


def is_python(label):
    """Python frames are `qualname (file:line)`; native ones `symbol [dso]`."""
    return label.endswith(")") and " (" in label


def python_stacks(stacks):
    """The Python frames of each stack, then the native function the
    innermost of them called (what it waits in, e.g. time_sleep)."""
    out = Counter()
    for stack, value in stacks.items():
        python = tuple(f for f in stack if is_python(f))
        last = max((i for i, f in enumerate(stack) if is_python(f)), default=-1)
        leaf = stack[last + 1:last + 2]
        out[python + tuple(leaf)] += value
    return out


def offcpu_tables(stacks, limit=40):
    """Blocked time by Python function, then the top blocked stacks."""
    total = sum(stacks.values()) or 1
    by_python = Counter()
    for stack, value in stacks.items():
        for frame in {f for f in stack if is_python(f)}:
            by_python[frame] += value
    out = [f"{total / 1e6:.3f} ms blocked (off-CPU)", "",
           f"{'blocked ms':>11} {'share':>7}  Python function (blocked inside it)"]
    for frame, value in by_python.most_common(limit):
        out.append(f"{value / 1e6:>11.3f} {100 * value / total:>6.1f}%  {frame}")
    out += ["", f"{'blocked ms':>11} {'share':>7}  stack (Python frames; waiting in)"]
    for stack, value in python_stacks(stacks).most_common(limit and min(limit, 15)):
        out.append(f"{value / 1e6:>11.3f} {100 * value / total:>6.1f}%  {' > '.join(stack)}")
    return out


def _num(value, scale):
    return str(value) if scale is None else f"{value / scale:.3f}"


def calls_table(functions, limit=40):
    """Instrumented call statistics: exact calls, inclusive and exclusive
    time per function, then the callers and callees of the busiest."""
    rows = sorted(functions.values(), key=lambda s: (-s.inclusive, s.label))
    total_calls = sum(s.calls for s in rows)
    out = [f"{total_calls} calls (instrumented)", "",
           f"{'calls':>10} {'incl ms':>11} {'excl ms':>11} {'ms/call':>9}  function"]
    for s in rows[:limit]:
        out.append(f"{s.calls:>10} {s.inclusive / 1e6:>11.3f} {s.exclusive / 1e6:>11.3f} "
                   f"{s.inclusive / 1e6 / max(s.calls, 1):>9.4f}  {s.label}")
    out += ["", "callers (<-) and callees (->) with their calls"]
    # Callers and callees of the ten busiest (of all with --limit 0).
    for s in rows if limit is None else rows[:min(limit, 10)]:
        out.append(f"  {s.label}")
        for label, n in s.callers.most_common(5):
            out.append(f"      <- {n:>8}  {label}")
        for label, n in s.callees.most_common(5):
            out.append(f"      -> {n:>8}  {label}")
    return out


def format_text(sections):
    """Sections (lists of lines) separated by blank lines."""
    return "\n\n".join("\n".join(lines) for lines in sections) + "\n"


def format_svg(stacks, title, unit="samples"):
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
                f'<g><title>{label} ({_amount(count, unit)}, {pct:.1f}%)</title>'
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


