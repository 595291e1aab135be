"""The trace format's events as readers and the README show them, from the
one declaration in src/etwtrace/_native/trace_format.h (exported by
etwtrace._ctfdecode as EVENTS).

    python -m etwtrace.trace.events --markdown    # the README's event table
"""
import sys

from .. import _ctfdecode


def events():
    """(id, CTF name, event name, opcode, ((field, type), ...)) per event."""
    return _ctfdecode.EVENTS


def markdown_table():
    """The README's table: one row per event name, its opcodes, its fields
    (from its full form; compact forms carry a subset)."""
    rows = {}
    for _id, ctf_name, name, opcode, fields in events():
        row = rows.setdefault(name, {"opcodes": [], "fields": None})
        row["opcodes"].append(opcode or "plain")
        if not ctf_name.endswith(".compact"):
            row["fields"] = fields
    lines = ["| event | fields |", "|---|---|"]
    for name, row in rows.items():
        opcodes = list(dict.fromkeys(row["opcodes"]))
        shown = name if opcodes == ["plain"] else f"{name} ({' / '.join(opcodes)})"
        names = [f for f, t in row["fields"] if t != "ADDRESSES"]
        lists = [f for f, t in row["fields"] if t == "ADDRESSES"]
        text = ", ".join(names)
        if lists == ["Functions"]:
            text += ", plus the FunctionIDs of the chain it waits at (suspend)"
        elif lists:
            text += (", plus the native stack" if names
                     else "the stack: native and Python frames (from --sampled)")
        lines.append(f"| {shown} | {text} |")
    return "\n".join(lines) + "\n"


def main(argv):
    if argv != ["--markdown"]:
        print("usage: python -m etwtrace.trace.events --markdown", file=sys.stderr)
        return 2
    from ..stdout import drop_stdout
    try:
        sys.stdout.write(markdown_table())
        sys.stdout.flush()
    except BrokenPipeError:
        drop_stdout()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
