"""Put on PYTHONPATH by `python -m etwtrace --capture`, so that Python
processes the traced program starts (subprocess, multiprocessing spawn) are
traced into the same capture.  Chains to any other sitecustomize."""
import os
import sys


def _start_tracing():
    # Read here, not through etwtrace.env: a process that records into no
    # capture must not import etwtrace (it may be another Python's).
    if not os.environ.get("ETWTRACE_CAPTURE"):
        return
    try:
        import etwtrace
        from etwtrace import env as _env
        etwtrace.enable_if("", _env.CAPTURE_MODE)
    except Exception as ex:  # never break the child's start-up
        print(f"etwtrace: not tracing this process: {ex}", file=sys.stderr)


def _chain_sitecustomize():
    here = os.path.dirname(os.path.abspath(__file__))
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    ours = sys.modules.pop("sitecustomize", None)
    try:
        import sitecustomize  # noqa: F401 - the next one on the path, if any
    except ImportError:
        if ours is not None:
            sys.modules["sitecustomize"] = ours
    finally:
        sys.path[:] = saved


_start_tracing()
_chain_sitecustomize()
