"""The one base of every exception etwtrace raises, so a caller (and the
command line's top level) can catch them all with `except etwtrace.Error`."""


class Error(Exception):
    """Something etwtrace could not do.  `status` is the command line's
    exit code for it: 1, a failure."""

    status = 1


class UsageError(Error):
    """The command line (an option, its value, a path it names) is wrong:
    exit code 2."""

    status = 2
