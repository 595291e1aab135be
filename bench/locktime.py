"""A pytest plugin that says how long a run waited for the tests' machine
lock (tests/conftest.py), so a stage's own time can be told apart from
the time it spent waiting for suites run beside it (docs/BENCHMARKS.md,
"CI time").  Usage, e.g.:

    PYTHONPATH=bench .ci/test-python 3.13 -m versioned -p locktime

(.ci/test-sid clears the environment: copy this file into tests/ first.)
"""
import time

import pytest

_waited = 0.0
_started = time.monotonic()


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef, request):
    global _waited
    start = time.monotonic()
    yield
    if fixturedef.argname == "_one_test_on_the_machine_at_a_time":
        _waited += time.monotonic() - start


def pytest_terminal_summary(terminalreporter):
    wall = time.monotonic() - _started
    terminalreporter.write_line(
        f"locktime: wall {wall:.0f} s, waiting for the test lock {_waited:.0f} s, "
        f"alone {wall - _waited:.0f} s")
