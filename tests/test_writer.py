"""The packet writer thread: full packets are written off the traced thread,
and still none is lost or misplaced (in order, at thread exit, across fork,
at a crash)."""
import glob
import os
import signal
import subprocess
import sys
import textwrap

from etwtrace import _ctfdecode

# 200,000 calls are about 2.8 MB of events: some 40 packets, more than the
# writer's queue holds, so the traced thread both queues and waits.
CALLS = 200_000

# Each scenario runs after this workload; the tests count leaf's calls.
WORKLOAD = f"""
def leaf():
    pass
def work(n={CALLS}):
    for _ in range(n):
        leaf()
"""


def _run(code, tmp_path):
    env = dict(os.environ, ETWTRACE_CAPTURE=str(tmp_path / "cap"))
    return subprocess.run([sys.executable, "-c", WORKLOAD + textwrap.dedent(code)], env=env,
                          cwd=tmp_path,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8",
                          timeout=300)


def _folds(tmp_path):
    """[(pid, fold)] of every stream of the capture."""
    out = []
    for path in sorted(glob.glob(str(tmp_path / "cap" / "ctf" / "pid-*" / "stream-*"))):
        pid = int(os.path.basename(os.path.dirname(path)).split("-")[1])
        out.append((pid, _ctfdecode.fold(path)))
    return out


def _leaf_ids(folds):
    """FunctionIDs named `leaf` in any stream (a function is announced in
    the stream of the thread that first ran it)."""
    return {fields[0] for _, fold in folds for (event_id, _, fields) in fold["events"]
            if event_id == 2 and fields[6] == "leaf"}   # 2: PythonFunction


def _leaf_calls(fold, ids):
    return sum(node[2] for node in fold["nodes"] if node[1] in ids)


def _assert_whole(fold):
    assert not fold["truncated"]
    assert fold["unmatched_pops"] == 0 and fold["mismatched_pops"] == 0


def test_many_packets_from_several_threads_are_all_written_in_order(tmp_path):
    proc = _run("""
        import threading, etwtrace
        with etwtrace.InstrumentedTracer():
            threads = [threading.Thread(target=work) for _ in range(3)]
            for t in threads:
                t.start()
            work()
            for t in threads:
                t.join()
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr
    folds = _folds(tmp_path)
    assert len(folds) == 4
    ids = _leaf_ids(folds)
    for _, fold in folds:
        _assert_whole(fold)
        assert _leaf_calls(fold, ids) == CALLS


def test_packets_queued_at_a_crash_are_kept(tmp_path):
    # The writer is held, so about 16 full packets are still queued in
    # memory when the process dies (fewer than the 32 the queue holds: a
    # full queue would wait for the writer).  These pushes are long ones:
    # their Caller, <module>, began before tracing.
    proc = _run(f"""
        import os, signal, etwtrace
        from etwtrace import _etwtrace
        etwtrace.InstrumentedTracer().enable()
        _etwtrace._writer_pause(True)
        for _ in range({CALLS // 4}):
            leaf()
        os.kill(os.getpid(), signal.SIGSEGV)
    """, tmp_path)
    assert proc.returncode == -signal.SIGSEGV
    folds = _folds(tmp_path)
    (_, fold), = folds
    assert not fold["truncated"] and fold["mismatched_pops"] == 0
    assert _leaf_calls(fold, _leaf_ids(folds)) == CALLS // 4


def test_fork_child_and_parent_each_keep_every_packet(tmp_path):
    proc = _run("""
        import os, etwtrace
        tracer = etwtrace.InstrumentedTracer()
        tracer.enable()
        work()
        pid = os.fork()
        if pid == 0:
            work()
            tracer.disable()
            os._exit(0)
        work()
        _, status = os.waitpid(pid, 0)
        tracer.disable()
        print(pid, status)
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr
    child, status = map(int, proc.stdout.split())
    assert status == 0
    folds = _folds(tmp_path)
    by_pid = {pid: fold for pid, fold in folds}
    assert len(folds) == 2 and child in by_pid
    for pid, fold in folds:
        _assert_whole(fold)
    # The parent called leaf before and after the fork; the child's trace
    # starts at the fork (what came before is the parent's).
    parent = next(p for p in by_pid if p != child)
    assert _leaf_calls(by_pid[parent], _leaf_ids([(0, by_pid[parent])])) == 2 * CALLS
    assert _leaf_calls(by_pid[child], _leaf_ids([(0, by_pid[child])])) == CALLS


def test_multiprocessing_fork_child_keeps_every_packet(tmp_path):
    # multiprocessing's children end with os._exit(), past atexit: the
    # tracer stops from multiprocessing's own exit hook instead.
    proc = _run("""
        import multiprocessing, etwtrace
        if __name__ == "__main__":
            multiprocessing.set_start_method("fork")
            with etwtrace.InstrumentedTracer():
                child = multiprocessing.Process(target=work)
                child.start()
                child.join()
                work(10)
                print(child.pid, child.exitcode)
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr
    child, exitcode = map(int, proc.stdout.split())
    assert exitcode == 0
    folds = _folds(tmp_path)
    child_folds = [fold for pid, fold in folds if pid == child]
    assert child_folds, "the child recorded nothing"
    for fold in child_folds:
        _assert_whole(fold)
    assert sum(_leaf_calls(fold, _leaf_ids([(0, f) for f in child_folds]))
               for fold in child_folds) == CALLS
