"""The trace format is declared once (trace_format.h): the metadata every
trace carries, both decoders and the README's table all follow from it."""
import re
from pathlib import Path

from etwtrace.trace import ctf as _ctf, events as _format
from conftest import SCRIPTS, run_etwtrace

ROOT = Path(__file__).absolute().parent.parent
CTF_TYPES = {"U8": "uint8_t", "U16": "uint16_t", "U32": "uint32_t", "HEX64": "uint64x_t",
             "STRING": "string"}


def _metadata_events(text):
    """{id: (name, [(type, field), ...])} of a CTF metadata text."""
    found = {}
    for m in re.finditer(r"event \{ stream_id = 0; id = (\d+); name = \"([^\"]+)\"; "
                         r"fields := struct \{([^}]*)\}; \};", text):
        fields = [tuple(f.strip().rsplit(" ", 1)) for f in m.group(3).split(";") if f.strip()]
        found[int(m.group(1))] = (m.group(2), fields)
    return found


def _declared(fields):
    out = []
    for name, ftype in fields:
        if ftype == "ADDRESSES":
            out += [("uint32_t", f"{name}Depth"), ("uint64x_t", f"{name}[{name}Depth]")]
        else:
            out.append((CTF_TYPES[ftype], name))
    return out


def test_a_real_captures_metadata_is_the_declared_table(tmp_path):
    cap = tmp_path / "cap"
    assert run_etwtrace("--capture", cap, "--recorder", "builtin", "--",
                        SCRIPTS / "basic.py").returncode == 0
    (_, trace_dir), = _ctf.trace_dirs(str(cap / "ctf"))
    text = (Path(trace_dir) / "metadata").read_text()
    assert f"format_version = {_ctf.FORMAT_VERSION};" in text
    assert "events_discarded;" in text
    events = _metadata_events(text)
    declared = {e[0]: (e[1], _declared(e[4])) for e in _format.events()}
    assert events == declared
    # The Python reader names what it decodes from the same table.
    assert {i: (t.name, t.opcode) for i, t in _ctf.EVENTS.items()} == \
        {e[0]: (e[2], e[3]) for e in _format.events()}


def test_the_readme_table_is_the_declared_table():
    readme = (ROOT / "README.md").read_text()
    assert _format.markdown_table() in readme
