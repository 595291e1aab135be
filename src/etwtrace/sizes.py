"""Sizes in bytes as users write them (--ring, --max-size,
ETWTRACE_MAX_SIZE) and as etwtrace prints them: one parser for all."""

from .errors import Error

_SCALES = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class SizeError(Error, ValueError):
    """A size that cannot be read (its message names the option)."""


def parse_size(text, option):
    """Bytes of SIZE: a whole number with an optional K, M, G or T (powers
    of 1024, an optional trailing B or iB: 64M, 64MB, 64MiB), or a plain
    number of bytes.  `option` names what it is for in the error."""
    value = str(text).strip().upper()
    for suffix in ("IB", "B"):
        if value.endswith(suffix) and value[:-len(suffix)][-1:] in _SCALES:
            value = value[:-len(suffix)]
            break
    scale = _SCALES.get(value[-1:], 1)
    digits = value[:-1] if scale > 1 else value
    if not digits.isdigit() or not digits.isascii():
        raise SizeError(f"{option} needs a size such as 64M or 1G, not {text!r}")
    return int(digits) * scale


def size_text(n):
    """A byte count for people: 1 MiB, 1.5 GiB, 512 bytes."""
    n = int(n)
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            value = n / scale
            return f"{value:.0f} {unit}" if n % scale == 0 else f"{value:.1f} {unit}"
    return f"{n} bytes"
