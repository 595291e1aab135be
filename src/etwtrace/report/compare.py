"""report --diff BASELINE: which call paths took a larger or smaller share
of the whole between two captures.

Values are normalised by each capture's total (samples, nanoseconds or
calls), so a run that was longer overall does not show every path as
slower; a path's change is its share in PATH minus its share in BASELINE,
in percentage points.
"""

from collections import Counter

from .formats import render as _render


def inclusive_shares(stacks):
    """{path prefix: share of the total spent in it (inclusive)}."""
    total = sum(stacks.values()) or 1
    out = Counter()
    for stack, value in stacks.items():
        for depth in range(1, len(stack) + 1):
            out[stack[:depth]] += value / total
    return out


def function_shares(stacks):
    """{frame: share of the total with the frame on the stack}."""
    total = sum(stacks.values()) or 1
    out = Counter()
    for stack, value in stacks.items():
        for frame in set(stack):
            out[frame] += value / total
    return out


def text(new, base, heading, limit=40):
    """Functions, then call paths, by how much their share changed."""
    new_f, base_f = function_shares(new), function_shares(base)
    rows = sorted(set(new_f) | set(base_f),
                  key=lambda f: (-abs(new_f[f] - base_f[f]), f))
    out = [heading, "",
           f"{'baseline%':>9} {'now%':>7} {'change':>8}  function (share of the total, inclusive)"]
    for f in rows[:limit]:
        out.append(f"{100 * base_f[f]:>8.1f}% {100 * new_f[f]:>6.1f}% "
                   f"{100 * (new_f[f] - base_f[f]):>+7.1f}  {f}")
    new_p, base_p = _exclusive_shares(new), _exclusive_shares(base)
    paths = sorted(set(new_p) | set(base_p), key=lambda p: (-abs(new_p[p] - base_p[p]), p))
    out += ["", f"{'baseline%':>9} {'now%':>7} {'change':>8}  call path (exclusive)"]
    for p in paths[:limit and min(limit, 15)]:
        out.append(f"{100 * base_p[p]:>8.1f}% {100 * new_p[p]:>6.1f}% "
                   f"{100 * (new_p[p] - base_p[p]):>+7.1f}  {' > '.join(p)}")
    return _render.format_text([out])


def _exclusive_shares(stacks):
    total = sum(stacks.values()) or 1
    return Counter({s: v / total for s, v in stacks.items()})


def folded(new, base):
    """`root;...;leaf BASELINE NOW` per path (flamegraph.pl's difffolded
    form, raw values)."""
    lines = []
    for stack in sorted(set(new) | set(base)):
        lines.append(";".join(f.replace(";", ":") for f in stack)
                     + f" {base.get(stack, 0)} {new.get(stack, 0)}")
    return "\n".join(lines) + ("\n" if lines else "")


def colors(new, base):
    """A colour per path prefix of PATH's flame graph: red where its share
    grew, blue where it shrank, white where it held; and a note for its
    tooltip."""
    new_s, base_s = inclusive_shares(new), inclusive_shares(base)

    def color(path):
        change = new_s[path] - base_s.get(path, 0.0)
        # Full colour at 10 percentage points of change.
        strength = min(abs(change) / 0.10, 1.0)
        light = 97 - 45 * strength
        hue = 0 if change > 0 else 220
        return (f"hsl({hue},80%,{light:.0f}%)",
                f"{100 * base_s.get(path, 0.0):.1f}% -> {100 * new_s[path]:.1f}%, "
                f"{100 * change:+.1f} points")
    return color
