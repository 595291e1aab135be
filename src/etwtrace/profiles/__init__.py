"""The files shipped with the package: the recording profile and the
stack-tags file."""

import os

_DIR = os.path.dirname(os.path.abspath(__file__))


def _path(name):
    path = os.path.join(_DIR, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(path)
    return path


def profile_path():
    """Path of the recording profile (presets Default, CPU and Minimal)."""
    return _path("python.etwprofile")


def stacktags_path():
    """Path of the stack-tags file used to fold interpreter frames."""
    return _path("python.stacktags")
