"""Report formats over stack counts: text tables, folded stacks, SVG flame graph."""

import html
import zlib
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
    """Python frames are `qualname (file:line)`, asyncio tasks' `task:NAME`
    (report --async); native ones `symbol [dso]`."""
    return (label.endswith(")") and " (" in label) or label.startswith("task:")


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


def calls_table(functions, limit=40, times=True):
    """Instrumented call statistics: exact calls, inclusive and exclusive
    time per function (by calls alone when `times` is false: recorded
    without call times), then the callers and callees of the busiest."""
    # (A cut view keeps the paths of calls made outside it, without calls.)
    rows = sorted((s for s in functions.values() if s.calls or s.inclusive),
                  key=lambda s: (-(s.inclusive if times else s.calls), s.label))
    total_calls = sum(s.calls for s in rows)
    time_heads = f" {'incl ms':>11} {'excl ms':>11} {'ms/call':>9}" if times else ""
    out = [f"{total_calls} calls (instrumented)", "", f"{'calls':>10}{time_heads}  function"]
    for s in rows[:limit]:
        time_cells = (f" {s.inclusive / 1e6:>11.3f} {s.exclusive / 1e6:>11.3f} "
                      f"{s.inclusive / 1e6 / max(s.calls, 1):>9.4f}" if times else "")
        out.append(f"{s.calls:>10}{time_cells}  {s.label}")
    out += ["", "callers (<-) and callees (->) with their calls"]
    # Callers and callees of the ten busiest (of all with --limit 0).
    for s in rows if limit is None else rows[:min(limit, 10)]:
        out.append(f"  {s.label}")
        for label, n in s.callers.most_common(5):
            if n:
                out.append(f"      <- {n:>8}  {label}")
        for label, n in s.callees.most_common(5):
            if n:
                out.append(f"      -> {n:>8}  {label}")
    return out


def format_text(sections):
    """Sections (lists of lines) separated by blank lines."""
    return "\n\n".join("\n".join(lines) for lines in sections) + "\n"


_SVG_SCRIPT = """
// Frames are laid out for a width of DATA_W (data-x, data-w); this draws
// them across the window's width, and again when it changes.
var DATA_W = %(width)d, PAD = 10, CH = 7, ROW = %(row)d, shown = [PAD, DATA_W - 2 * PAD];
var svg = document.documentElement;
function frames() { return document.querySelectorAll("g.f"); }
function fit(g, x, w) {
  var r = g.querySelector("rect"), t = g.querySelector("text"), n = g.getAttribute("data-n");
  r.setAttribute("x", x.toFixed(2)); r.setAttribute("width", Math.max(w - 0.5, 0.1).toFixed(2));
  var chars = Math.floor(w / CH);
  t.setAttribute("x", (x + 3).toFixed(2));
  t.textContent = chars < 3 ? "" : (n.length <= chars ? n : n.slice(0, chars - 2) + "..");
}
function zoom(fx, fw) {
  shown = [fx, fw];
  var W = svg.getBoundingClientRect().width || DATA_W;
  var scale = (W - 2 * PAD) / fw;
  frames().forEach(function (g) {
    var x = +g.getAttribute("data-x"), w = +g.getAttribute("data-w");
    var inside = x + w > fx + 1e-9 && x < fx + fw - 1e-9;
    g.style.display = inside ? "" : "none";
    if (inside) {
      var left = Math.max(x, fx), right = Math.min(x + w, fx + fw);
      fit(g, PAD + (left - fx) * scale, (right - left) * scale);
    }
  });
}
frames().forEach(function (g) {
  g.addEventListener("click", function (e) {
    e.stopPropagation();
    zoom(+g.getAttribute("data-x"), +g.getAttribute("data-w"));
  });
});
document.getElementById("background").addEventListener("click", function () {
  zoom(PAD, DATA_W - 2 * PAD);
});
window.addEventListener("resize", function () { zoom(shown[0], shown[1]); });
zoom(PAD, DATA_W - 2 * PAD);
// Search: frames whose full name matches a regular expression are drawn
// in magenta, and the share of the whole they cover is shown.  Names cut
// to ".." hide them from the browser's own find.  #search=RE in the
// address searches at once (a link can carry it).
var MATCH = "rgb(230,0,230)";
function search(text) {
  var re = null, spans = [];
  if (text) { try { re = new RegExp(text); } catch (err) { re = null; } }
  frames().forEach(function (g) {
    var r = g.querySelector("rect");
    if (!g.hasAttribute("data-fill")) g.setAttribute("data-fill", r.getAttribute("fill"));
    var hit = re !== null && re.test(g.getAttribute("data-n"));
    r.setAttribute("fill", hit ? MATCH : g.getAttribute("data-fill"));
    g.classList.toggle("match", hit);
    if (hit) spans.push([+g.getAttribute("data-x"), +g.getAttribute("data-w")]);
  });
  // The union of the matches' spans: a match inside a match counts once.
  spans.sort(function (a, b) { return a[0] - b[0]; });
  var covered = 0, end = -1;
  spans.forEach(function (s) {
    var from = Math.max(s[0], end), to = s[0] + s[1];
    if (to > from) { covered += to - from; end = to; }
  });
  var label = document.getElementById("matched");
  label.textContent = re === null ? "" :
    "matched " + (100 * covered / (DATA_W - 2 * PAD)).toFixed(1) + "%% (" + text + ")";
  document.getElementById("search").textContent = re === null ? "Search" : "Reset search";
}
document.getElementById("search").addEventListener("click", function (e) {
  e.stopPropagation();
  if (document.querySelector("g.f.match")) { search(""); return; }
  var text = window.prompt("Search frames (a regular expression)", "");
  if (text) search(text);
});
var asked = /[#&]search=([^&]*)/.exec(window.location.hash);
if (asked) search(decodeURIComponent(asked[1]));
// A graph taller than the window is turned over (root at the top, under
// the title), so that the first screen shows the root, not a blank top.
if (svg.getBoundingClientRect().height > window.innerHeight) {
  var H = +svg.getAttribute("height");
  frames().forEach(function (g) {
    var r = g.querySelector("rect"), t = g.querySelector("text"), y = +r.getAttribute("y");
    var moved = H + 20 - ROW - y;
    r.setAttribute("y", moved); t.setAttribute("y", moved + ROW - 5);
  });
  svg.setAttribute("data-turned", "root at the top");
}
"""


def _stable_hue(text):
    return zlib.crc32(text.encode("utf-8", "replace")) % 30


def thread_groups(stacks, threads):
    """Stacks keyed ((process, tid), frames) as frames under a frame for
    their process and one for their thread, as the SVG groups them."""
    from ..scan import process_name
    out = Counter()
    for ((proc, tid), frames), value in stacks.items():
        name = threads.get((proc, tid), f"thread {tid}")
        thread = name if name == f"thread {tid}" else f"{name} (tid {tid})"
        out[(f"process {process_name(proc)}", thread) + frames] += value
    return out


def format_svg(stacks, title, unit="samples", min_width=0.1, groups=0, color_of=None):
    """A self-contained, interactive flame graph as wide as the window: one
    frame per box, root at the bottom, width proportional to the value;
    hover shows the full name and share, click zooms into a frame, a click
    on the background zooms out; Search (or #search=RE in the address)
    marks the frames whose name matches and says their share.  A graph
    taller than the window is turned over in the browser (root at the
    top), so that its first screen shows the root.  Frames narrower than min_width pixels (of
    1200) are left out.  The first `groups` levels (process, thread) are
    drawn grey.  color_of(path) -> (colour, note), if given, colours each
    frame by its root-first path (a differential graph)."""
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
        f'<svg xmlns="http://www.w3.org/2000/svg" width="100%" height="{height}" '
        f'font-family="monospace" font-size="11">',
        f'<rect id="background" width="100%" height="{height}" fill="#fdfdf6"/>',
        '<text x="50%" y="16" text-anchor="middle" font-size="14">'
        f'{html.escape(title)}</text>',
        '<text x="100%" dx="-10" y="16" text-anchor="end" font-size="10" fill="#777">'
        'click a frame to zoom, the background to reset</text>',
        '<text id="search" x="10" y="16" font-size="12" fill="#336" cursor="pointer">'
        'Search</text>',
        '<text id="matched" x="110" y="16" font-size="12" fill="#606"></text>',
    ]
    # Iterative, so stacks deeper than Python's recursion limit draw too.
    todo = [(tree, 10.0, 0, ())]
    while todo:
        node, x, level, above = todo.pop()
        for frame, (count, children) in sorted(node.items()):
            path = above + (frame,)
            w = count / total * (width - 20)
            if w < min_width:
                x += w
                continue
            y = height - (level + 1) * row - 10
            python = is_python(frame) and not frame.startswith("0x")
            hue = 30 + _stable_hue(frame)
            color = f"hsl({hue + (150 if python else 0)},70%,{60 if python else 65}%)"
            note = ""
            if level < groups:
                color = "hsl(0,0%,82%)"
            elif color_of is not None:
                color, note = color_of(path)
                note = "; " + note
            label = html.escape(frame, quote=True)
            pct = 100 * count / total
            chars = int(w / 7)
            text = "" if chars < 3 else (frame if len(frame) <= chars else frame[:chars - 2] + "..")
            parts.append(
                f'<g class="f" data-x="{x:.4f}" data-w="{w:.4f}" data-n="{label}" cursor="pointer">'
                f'<title>{label} ({_amount(count, unit)}, {pct:.1f}%{html.escape(note)})</title>'
                f'<rect x="{x:.2f}" y="{y}" width="{max(w - 0.5, 0.1):.2f}" height="{row - 1}" '
                f'fill="{color}" rx="2"/>'
                f'<text x="{x + 3:.2f}" y="{y + row - 5}">{html.escape(text)}</text></g>')
            if children:
                todo.append((children, x, level + 1, path))
            x += w
    parts.append("<script><![CDATA[" + _SVG_SCRIPT % {"width": width, "row": row} + "]]></script>")
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
