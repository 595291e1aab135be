"""The package's layout holds (docs/ARCHITECTURE.md): imports run one way,
from the command line down to the native modules, no module reaches into
another's private names, and the docs name exactly the files the tree
holds.  Read from the source (ast), without importing or running it."""

import ast
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "src", "etwtrace")
NATIVE = {"_etwtrace", "_ctfdecode", "_sampler"}

# Highest first; a module imports only its own group and lower ranks
# (capture may also use sampled: a sampled session's daemon runs the
# sampler).  Groups of one rank do not import each other.
RANKS = {
    "top": 5,           # cli, and __init__ (the public API), threadnames, asynciotasks,
                        # __main__, _autostart
    "capture": 4,
    "sampled": 3,
    "report": 3,
    "trace": 2,
    "base": 1,          # errors, env, sizes, stdout, profiles
    "native": 0,
}
ALSO_ALLOWED = {("capture", "sampled")}
BASE = {"errors", "env", "sizes", "stdout", "profiles"}


def group_of(module):
    """The layer's group of a dotted module name under etwtrace."""
    parts = module.split(".")[1:]
    if not parts or parts[0] in ("__main__", "_autostart", "cli", "threadnames", "asynciotasks"):
        return "top"
    if parts[0] in NATIVE:
        return "native"
    if parts[0] in BASE:
        return "base"
    return parts[0]


def source_modules(root=PACKAGE):
    """(dotted name, path) of every Python module of the package."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, os.path.dirname(root))[:-3].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                yield ".".join(rel), path


def resolve(module, is_package, node):
    """The dotted names an ImportFrom node brings in: the module itself,
    and each name as a submodule (whichever exists is checked)."""
    if node.level:
        base = module.split(".")
        if not is_package:
            base = base[:-1]
        base = base[:len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module
    return target


def problems_of(module, path, known):
    """Each climb and private reach in one module, as one line each."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    is_package = path.endswith("__init__.py")
    group = group_of(module)
    found = []
    bound = {}      # local name -> the etwtrace module it names

    def check_target(target, line):
        if not (target == "etwtrace" or target.startswith("etwtrace.")):
            return
        to = group_of(target)
        if to == group or (group, to) in ALSO_ALLOWED or RANKS[to] < RANKS[group]:
            return
        found.append(f"{path}:{line}: {module} ({group}) imports {target} ({to})")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                check_target(alias.name, node.lineno)
                if alias.name.startswith("etwtrace"):
                    bound[alias.asname or alias.name.split(".")[0]] = \
                        alias.name if alias.asname else "etwtrace"
        elif isinstance(node, ast.ImportFrom):
            target = resolve(module, is_package, node)
            if target.startswith("etwtrace") and target not in known:
                # (a function's import of a module moved away fails
                # only when that function runs)
                found.append(f"{path}:{node.lineno}: {module} imports {target}, "
                             "which is no module of the package")
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in known or alias.name in NATIVE:
                    check_target(sub, node.lineno)
                    bound[alias.asname or alias.name] = sub
                else:
                    check_target(target, node.lineno)
                    if alias.name.startswith("_") and not alias.name.startswith("__") \
                            and target.startswith("etwtrace"):
                        found.append(f"{path}:{node.lineno}: {module} imports the private "
                                     f"{alias.name} of {target}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id in bound and node.attr.startswith("_") \
                and not node.attr.startswith("__"):
            owner = bound[node.value.id]
            if group_of(owner) != "native":
                found.append(f"{path}:{node.lineno}: {module} uses the private "
                             f"{node.attr} of {owner}")
    return found


def all_problems(root=PACKAGE):
    modules = dict(source_modules(root))
    known = set(modules) | {f"etwtrace.{n}" for n in NATIVE}
    found = []
    for module, path in modules.items():
        found += problems_of(module, path, known)
    return found


def test_imports_run_one_way_and_reach_no_private_name():
    assert all_problems() == []


def _write(root, rel, text):
    path = os.path.join(root, *rel.split("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


@pytest.mark.parametrize("where, text, expected", [
    ("trace/reader.py", "from ..capture import perf\n", "imports etwtrace.capture.perf (capture)"),
    ("trace/reader.py", "from ..report.scan import Scan\n", "imports etwtrace.report.scan"),
    ("report/scan.py", "from ..sampled import sampler\n", "imports etwtrace.sampled.sampler"),
    ("sampled/sampler.py", "import etwtrace.capture.launcher\n", "(capture)"),
    ("env.py", "from .trace import ctf\n", "imports etwtrace.trace.ctf (trace)"),
    ("capture/session.py", "from ..trace.ctf import _alive\n", "the private _alive"),
    ("capture/session.py", "from ..trace import ctf as c\nc._alive(1)\n",
     "uses the private _alive of etwtrace.trace.ctf"),
    ("capture/perf.py", "def f():\n    from ._pyremote import code\n",
     "imports etwtrace.capture._pyremote, which is no module"),
])
def test_a_climb_or_a_private_reach_is_found(tmp_path, where, text, expected):
    """The check itself: a planted bad import in a small tree is named."""
    root = tmp_path / "etwtrace"
    for rel in ("__init__.py", "env.py", "capture/__init__.py", "capture/perf.py",
                "capture/launcher.py", "capture/session.py", "report/__init__.py",
                "report/scan.py", "sampled/__init__.py", "sampled/sampler.py",
                "trace/__init__.py", "trace/ctf.py", "trace/reader.py"):
        _write(str(root), rel, "")
    assert all_problems(str(root)) == []
    _write(str(root), where, text)
    found = all_problems(str(root))
    assert len(found) == 1 and expected in found[0], found


def test_allowed_imports_are_not_flagged(tmp_path):
    root = tmp_path / "etwtrace"
    _write(str(root), "__init__.py", "from .trace import reader\nfrom . import _etwtrace\n")
    _write(str(root), "capture/__init__.py", "")
    _write(str(root), "capture/session.py",
           "from ..sampled import finder\nfrom . import launcher as _launcher\n"
           "from .. import _etwtrace\n_etwtrace._private()\n_launcher.run()\n")
    _write(str(root), "capture/launcher.py", "from ..trace.ctf import finalize\n")
    _write(str(root), "sampled/__init__.py", "")
    _write(str(root), "sampled/finder.py", "from .. import env\n")
    _write(str(root), "trace/__init__.py", "")
    _write(str(root), "trace/ctf.py", "from .. import sizes\n")
    _write(str(root), "trace/reader.py", "from .ctf import finalize\n")
    _write(str(root), "env.py", "from . import sizes\n")
    _write(str(root), "sizes.py", "")
    assert all_problems(str(root)) == []


# ---- the docs name exactly the files the tree holds ----

def tree_files(root=PACKAGE):
    """Every source and data file under src/etwtrace (not build output)."""
    found = set()
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if name.endswith((".pyc", ".so")):
                continue
            found.add(os.path.relpath(os.path.join(folder, name), os.path.dirname(root))
                      .replace(os.sep, "/"))
    return found


def documented_files(text):
    """The files of the first ```text block that starts with etwtrace/:
    one entry a line, indented two spaces a level, folders ending in /."""
    blocks = re.findall(r"^```text\n(etwtrace/\n.*?)^```", text, re.M | re.S)
    assert blocks, "no layout tree (a ```text block starting with etwtrace/)"
    files, folders = set(), []
    for line in blocks[0].splitlines():
        indent = len(line) - len(line.lstrip(" "))
        assert indent % 2 == 0, f"indented by {indent}: {line!r}"
        name = line.split()[0]
        folders = folders[:indent // 2]
        if name.endswith("/"):
            folders.append(name[:-1])
        else:
            files.add("/".join(folders + [name]))
    return files


@pytest.mark.parametrize("doc", ["docs/ARCHITECTURE.md", "README.md"])
def test_the_docs_layout_names_exactly_the_files_of_the_tree(doc):
    with open(os.path.join(ROOT, doc), encoding="utf-8") as f:
        documented = documented_files(f.read())
    actual = tree_files()
    assert sorted(documented - actual) == [], "named but not in the tree"
    assert sorted(actual - documented) == [], "in the tree but not named"


def test_a_file_missing_from_the_docs_is_found():
    text = "```text\netwtrace/\n  a.py    one\n  b/\n    c.h   two\n```\n"
    assert documented_files(text) == {"etwtrace/a.py", "etwtrace/b/c.h"}
