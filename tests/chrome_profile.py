"""The CPU samples of a chrome export, read as Perfetto's JSON importer
reads V8 CPU profiles (its LegacyV8CpuProfileTracker): `Profile` and
`ProfileChunk` events of phase P, a profile's state kept per (id, pid),
its clock started by `startTime` (whole microseconds) and moved on by each
sample's `timeDeltas` entry (whole microseconds), nodes naming their
parent, which must be known already.  Every rule it relies on is checked
here, so a test that reads samples through it also checks their form.
"""


def cpu_samples(doc):
    """[(pid, tid, ts in µs, frames root-first)] of the document's CPU
    profiles, in file order."""
    profiles = {}
    samples = []
    for e in doc["traceEvents"]:
        if e.get("ph") != "P":
            continue
        assert e["name"] in ("Profile", "ProfileChunk"), e
        key = (int(e["id"], 16), e["pid"])     # a hex string, as Chrome writes it
        data = e["args"]["data"]
        if "startTime" in data:
            assert isinstance(data["startTime"], int)
            assert key not in profiles, "a profile started twice"
            profiles[key] = {"ts": data["startTime"], "nodes": {}}
            continue
        state = profiles[key]       # a chunk after its profile's start
        nodes = state["nodes"]
        cpu = data["cpuProfile"]
        for node in cpu.get("nodes", ()):
            assert isinstance(node["id"], int) and node["id"] > 1   # 1 is V8's root
            assert node["id"] not in nodes, "a node defined twice"
            parent = node.get("parent")
            assert parent is None or parent in nodes, "a node before its parent"
            frame = node["callFrame"]
            assert isinstance(frame["functionName"], str) and isinstance(frame["url"], str)
            nodes[node["id"]] = (parent, frame["functionName"])
        deltas = data["timeDeltas"]
        assert len(deltas) == len(cpu["samples"])
        for node, delta in zip(cpu["samples"], deltas):
            assert isinstance(delta, int) and delta >= 0
            state["ts"] += delta
            stack = []
            while node is not None:
                parent, name = nodes[node]
                stack.append(name)
                node = parent
            samples.append((e["pid"], e["tid"], state["ts"], tuple(reversed(stack))))
    return samples
