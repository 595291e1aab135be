"""asyncio tasks for the tracer (its C part: _native/tracer/tasks.c).

At the first step of each coroutine the tracer meets outside any task's
step, it asks `describe` whether an asyncio task runs it; now and then it
asks `chain` again for the tasks that await that task.  Each task becomes
frames named `task:NAME` (its name as Task.get_name() gives it), outermost
first: code objects made here, one per name, that the tracer registers as
it registers functions, so every view (samples, calls, perf's unwinding)
shows them as frames.

Who awaits a task: on 3.14+ asyncio keeps it (Future._asyncio_awaited_by);
before, the task's done-callbacks say it: a task awaiting it directly
(its wakeup), a TaskGroup (its parent task), gather and shield (the outer
future, and who awaits that).
"""

import sys

from .trace import TASK_FILE
# Distinct task names given frames of their own; past this, tasks share
# one frame, so that a service naming each task after its request does not
# grow the process without bound.
MAX_NAMES = 10000
OTHER_NAMES = "task:(more names than etwtrace keeps apart)"
# Tasks above a task followed (the C side keeps 8 frames).
MAX_DEPTH = 8

_codes = {}
_template = compile("None", TASK_FILE, "eval")


def _code(label):
    code = _codes.get(label)
    if code is None:
        if len(_codes) >= MAX_NAMES:
            label = OTHER_NAMES
            code = _codes.get(label)
        if code is None:
            code = _codes[label] = _template.replace(co_name=label, co_qualname=label)
    return code


def _label(task):
    try:
        name = task.get_name()
    except Exception:
        name = None
    return f"task:{name}" if isinstance(name, str) else f"task:{type(task).__name__}"


def _awaiter(fut, asyncio):
    """A future or task that awaits `fut`, or None."""
    by = getattr(fut, "_asyncio_awaited_by", None)     # 3.14+
    if by:
        tasks = [w for w in by if isinstance(w, asyncio.Task)]
        if tasks:
            return min(tasks, key=_label)   # the same one each time
        return next(iter(by))
    try:
        callbacks = fut._callbacks or ()
    except AttributeError:
        return None
    for entry in callbacks:
        cb = entry[0] if isinstance(entry, tuple) else entry
        owner = getattr(cb, "__self__", None)
        if isinstance(owner, asyncio.Future):
            return owner                        # a task's wakeup: it awaits fut
        parent = getattr(owner, "_parent_task", None)
        if isinstance(parent, asyncio.Future):
            return parent                       # a TaskGroup's task
        for cell in getattr(cb, "__closure__", None) or ():
            try:
                value = cell.cell_contents
            except ValueError:
                continue
            if isinstance(value, asyncio.Future) and value is not fut:
                return value                    # gather's or shield's outer future
    return None


def chain(task):
    """Code objects of `task`'s frames: the tasks awaiting it, outermost
    first, then its own."""
    asyncio = sys.modules["asyncio"]
    labels = [_label(task)]
    seen = {id(task)}
    fut = task
    while len(labels) < MAX_DEPTH:
        fut = _awaiter(fut, asyncio)
        if fut is None or id(fut) in seen:
            break
        seen.add(id(fut))
        if isinstance(fut, asyncio.Task):
            labels.append(_label(fut))
    return tuple(_code(label) for label in reversed(labels))


def describe(coroutine):
    """(task, name, frames) of the task whose step is running `coroutine`
    on this thread, or None when no task is (a coroutine driven by hand)."""
    asyncio = sys.modules.get("asyncio")
    if asyncio is None:
        return None
    try:
        task = asyncio.current_task()
    except RuntimeError:
        return None         # no event loop runs on this thread
    if task is None:
        return None
    return task, task.get_name(), chain(task)
