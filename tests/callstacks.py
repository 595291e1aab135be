"""Rebuilding per-thread call stacks from instrumented-mode events.

A PythonFunctionPush opens a call on its thread, the matching
PythonFunctionPop closes it.  Traces can start part-way through a stack
(tracing enabled inside a call) and end part-way (disabled inside one, or the
process died): a pop with no open push is counted, not an error, and calls
still open at the end are reported by `open_calls()`.
"""


class Call:
    """One open call: FunctionID, Caller, CallerLine and when it started."""
    __slots__ = ("function_id", "caller", "caller_line", "start", "child_time")

    def __init__(self, function_id, caller, caller_line, start):
        self.function_id = function_id
        self.caller = caller
        self.caller_line = caller_line
        self.start = start
        self.child_time = 0


class CallStacks:
    """Feed events in order with `add(event)`; `stack(pid, tid)` is the
    thread's open calls, outermost first.  `on_return(pid, tid, call, end)`
    (optional) is called for every closed call."""

    def __init__(self, on_return=None):
        self._stacks = {}
        self._on_return = on_return
        self.unmatched_pops = 0     # pops of calls entered before tracing
        self.mismatched_pops = 0    # pops not matching the innermost push

    def stack(self, pid, tid):
        return self._stacks.get((pid, tid), [])

    def add(self, event):
        name = event.name
        if name == "PythonFunctionPush":
            f = event.fields
            self._stacks.setdefault((event.pid, event.tid), []).append(
                Call(f["FunctionID"], f["Caller"], f["CallerLine"], event.timestamp))
        elif name == "PythonFunctionPop":
            stack = self._stacks.get((event.pid, event.tid))
            if not stack:
                self.unmatched_pops += 1
                return
            fid = event.fields["FunctionID"]
            if stack[-1].function_id != fid:
                self.mismatched_pops += 1
                if not any(c.function_id == fid for c in stack):
                    return
                while stack[-1].function_id != fid:
                    stack.pop()
            call = stack.pop()
            if stack:
                stack[-1].child_time += event.timestamp - call.start
            if self._on_return is not None:
                self._on_return(event.pid, event.tid, call, event.timestamp)

    def open_calls(self):
        """{(pid, tid): [Call, ...]} of calls never closed."""
        return {key: list(s) for key, s in self._stacks.items() if s}
