"""How --sampled splices a sample's Python frames into its native stack
(_native/sampler/splice.c), on records made here: no BPF, no root; and how
it tells an interpreter whose native stacks it can walk.  Each
case is a rule of the splice: where an evaluator call's frames go, what a
leaf that hid its caller or a walk cut short does to the pairing, how an
interpreter without symbols is read, and that a frame it does not know
is left to user space."""

import platform
import struct

import pytest

from etwtrace.trace import ctfwrite as _ctfwrite
from etwtrace.sampled import sampler as _sampled

pytestmark = pytest.mark.versioned


ENTRY, NONE = "entry", "none"


class Sample:
    """A sample record (native addresses leaf first, then Python frames
    innermost first) and the kind dicts user space would have filled."""

    def __init__(self, sampler, native, python):
        self.sampler = sampler
        frames = []
        self.frame_kinds = {}
        for i, kind in enumerate(python):
            raw = _sampled._PY_FRAME.pack(0x7000 + i, i, 1, 0, 0, b"f%d" % i)
            frames.append(raw)
            self.frame_kinds[raw] = {ENTRY: sampler.FRAME_ENTRY,
                                     NONE: sampler.FRAME_NO_FUNCTION}.get(kind, kind)
        self.native_kinds = {address: bits for address, bits in native}
        head = _sampled._SAMPLE_HEAD.pack(10, 11, 12, len(native), len(python), 0, 0, 99, 0,
                                          *(0, 0, 0, b"") * _sampled.MAX_TASKS)
        self.record = (head + struct.pack(f"<{len(native)}Q", *(a for a, _ in native))
                       + b"".join(frames))

    def splice(self):
        payload = self.sampler.splice(self.record, self.frame_kinds, self.native_kinds)
        if payload is None or payload == b"":
            return payload
        count, = struct.unpack_from("<I", payload)
        stack = struct.unpack_from(f"<{count}Q", payload, 4)
        assert payload == _ctfwrite.sample_payload(stack)
        return list(stack)


# Python frames' synthetic addresses and native addresses with their kinds.
P1, P2, P3, P4 = (_sampled.SYNTHETIC_BASE + i * _sampled.SYNTHETIC_SLOT for i in range(1, 5))


def natives(sampler):
    eval_, root = sampler.NATIVE_EVAL | sampler.NATIVE_EVAL_CALLER, sampler.NATIVE_THREAD_ROOT
    return {"leaf": (0x1000, 0), "eval1": (0x2000, eval_), "call": (0x3000, 0),
            "eval2": (0x2001, eval_), "main": (0x4000, root), "other": (0x5000, 0),
            "nameless": (0x6000, sampler.NATIVE_NAMELESS),
            "caller": (0x7000, sampler.NATIVE_EVAL_CALLER)}


def test_each_evaluator_call_goes_at_its_evaluator_frame(sampler):
    n = natives(sampler)
    # inner (P1) called from C (call) called from outer (P2) under <module> (P3).
    s = Sample(sampler, [n["leaf"], n["eval1"], n["call"], n["eval2"], n["main"]],
               [P1, ENTRY, P2, P3, ENTRY])
    assert s.splice() == [0x1000, P1, 0x2000, 0x3000, P2, P3, 0x2001, 0x4000]


def test_311s_marked_first_frames_end_their_calls_as_entry_frames_do(sampler):
    n = natives(sampler)
    # 3.11 pushes no entry frame: the first frame of each call is marked.
    ends = sampler.FRAME_ENDS_RUN
    s = Sample(sampler, [n["leaf"], n["eval1"], n["call"], n["eval2"], n["main"]],
               [P1 | ends, P2, P3 | ends])
    assert s.splice() == [0x1000, P1, 0x2000, 0x3000, P2, P3, 0x2001, 0x4000]


def test_frames_of_no_function_are_left_out_and_empty_runs_pair_with_nothing(sampler):
    n = natives(sampler)
    s = Sample(sampler, [n["eval1"], n["main"]], [ENTRY, NONE, P1, ENTRY, ENTRY])
    assert s.splice() == [P1, 0x2000, 0x4000]


def test_a_leaf_that_hid_its_evaluator_puts_the_innermost_call_under_it(sampler):
    n = natives(sampler)
    # Two calls, one evaluator frame seen, the stack reaches main: the
    # outermost call pairs with it, the innermost goes right under the leaf.
    s = Sample(sampler, [n["leaf"], n["call"], n["eval2"], n["main"]],
               [P1, ENTRY, P2, ENTRY])
    assert s.splice() == [0x1000, P1, 0x3000, P2, 0x2001, 0x4000]


def test_a_walk_cut_short_puts_the_outermost_call_below_its_root(sampler):
    n = natives(sampler)
    # Same frames, but the native walk stops before a thread's start.
    s = Sample(sampler, [n["leaf"], n["eval1"], n["other"]], [P1, ENTRY, P2, ENTRY])
    assert s.splice() == [0x1000, P1, 0x2000, 0x5000, P2]


def test_a_single_native_frame_keeps_the_hidden_calls_under_it(sampler):
    n = natives(sampler)
    s = Sample(sampler, [n["main"]], [P1, ENTRY])
    assert s.splice() == [0x4000, P1]


def test_an_interpreter_without_symbols_is_found_above_a_named_caller(sampler):
    n = natives(sampler)
    s = Sample(sampler, [n["leaf"], n["nameless"], n["caller"], n["main"]],
               [P1, P2, ENTRY])
    assert s.splice() == [0x1000, P1, P2, 0x6000, 0x7000, 0x4000]


def test_a_sample_with_no_frames_is_empty(sampler):
    assert Sample(sampler, [], []).splice() == b""


def test_python_frames_without_native_frames_stay_in_order(sampler):
    assert Sample(sampler, [], [P1, P2, ENTRY, P3, ENTRY]).splice() == [P1, P2, P3]


def test_a_frame_not_looked_up_yet_is_left_to_user_space(sampler):
    n = natives(sampler)
    s = Sample(sampler, [n["leaf"], n["eval1"], n["main"]], [P1, ENTRY])
    del s.native_kinds[0x2000]
    assert s.splice() is None
    s = Sample(sampler, [n["leaf"], n["eval1"], n["main"]], [P1, P4, ENTRY])
    s.frame_kinds.popitem()
    assert s.splice() is None


def test_a_malformed_record_is_refused(sampler):
    n = natives(sampler)
    s = Sample(sampler, [n["leaf"]], [P1, ENTRY])
    with pytest.raises(ValueError, match="do not match its size"):
        sampler.splice(s.record[:-1], s.frame_kinds, s.native_kinds)
    with pytest.raises(ValueError, match="shorter than its header"):
        sampler.splice(s.record[:10], s.frame_kinds, s.native_kinds)
    head = _sampled._SAMPLE_HEAD.pack(10, 11, 12, 1000, 0, 0, 0, 99, 0,
                                      *(0, 0, 0, b"") * _sampled.MAX_TASKS)
    with pytest.raises(ValueError):
        sampler.splice(head, {}, {})


@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86-64 prologues (test_arch: aarch64's)")
@pytest.mark.parametrize("prologue, frame_pointer", [
    ("5548c7c0f8ffffff4889e541", True),             # .ci's 3.13 (-fno-omit-frame-pointer)
    ("f30f1efa554889e54883ec10488b4708", True),     # Debian's 3.15
    ("f30f1efa4883ec18488b470848896c24", False),    # Debian's 3.14
    ("55534889fb4883ec08488b2d", False),            # Debian's 3.11: %rbp saved, not a frame
])
def test_a_frame_pointer_build_is_told_by_a_function_prologue(prologue, frame_pointer):
    from etwtrace.sampled.remote import sets_up_frame_pointer
    assert sets_up_frame_pointer(bytes.fromhex(prologue)) is frame_pointer
