"""pprof's profile.proto, gzipped: what `go tool pprof` and pprof's web UI read.

Written by hand (protobuf's wire format is small): one Function and one
Location per distinct frame, a Sample per distinct stack of each thread
with the thread's pid, tid and name as labels.  Python frames carry their file
and first line; native frames their shared object as the file name.
"""

import gzip
import re

# Field numbers of profile.proto (github.com/google/pprof/proto/profile.proto).
PROFILE_SAMPLE_TYPE, PROFILE_SAMPLE, PROFILE_LOCATION, PROFILE_FUNCTION = 1, 2, 4, 5
PROFILE_STRING_TABLE, PROFILE_TIME_NANOS, PROFILE_DURATION_NANOS = 6, 9, 10
PROFILE_PERIOD_TYPE, PROFILE_PERIOD, PROFILE_COMMENT, PROFILE_DEFAULT_TYPE = 11, 12, 13, 14
VALUE_TYPE_TYPE, VALUE_TYPE_UNIT = 1, 2
SAMPLE_LOCATION_ID, SAMPLE_VALUE, SAMPLE_LABEL = 1, 2, 3
LABEL_KEY, LABEL_STR, LABEL_NUM = 1, 2, 3
LOCATION_ID, LOCATION_LINE = 1, 4
LINE_FUNCTION_ID, LINE_LINE = 1, 2
FUNCTION_ID, FUNCTION_NAME, FUNCTION_SYSTEM_NAME, FUNCTION_FILENAME, FUNCTION_START_LINE = (
    1, 2, 3, 4, 5)

_PYTHON = re.compile(r"^(.*) \((.*):(\d+)\)$")
_NATIVE = re.compile(r"^(.*) \[(.*)\]$")


def _varint(value):
    value &= (1 << 64) - 1      # negative int64s as two's complement
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _int(field, value):
    return _varint(field << 3) + _varint(value)


def _bytes(field, data):
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def _packed(field, values):
    return _bytes(field, b"".join(_varint(v) for v in values))


class _Strings:
    def __init__(self):
        self.index = {"": 0}

    def __call__(self, text):
        i = self.index.get(text)
        if i is None:
            i = self.index[text] = len(self.index)
        return i

    def encoded(self):
        return b"".join(_bytes(PROFILE_STRING_TABLE, s.encode("utf-8", "surrogateescape"))
                        for s in self.index)


def frame_parts(label):
    """(function name, file, line) of a report's frame label."""
    m = _PYTHON.match(label)
    if m:
        return m.group(1), m.group(2), int(m.group(3))
    m = _NATIVE.match(label)
    if m:
        return m.group(1), m.group(2), 0
    return label, "", 0


def encode(samples, sample_types, duration_ns=0, comments=(), thread_names=None,
           process_labels=None, time_ns=0, period=0):
    """The gzipped profile of `samples`: {(((pid, image), tid), root-first
    frames): tuple of values, one per sample type}; sample_types: [(type,
    unit)].  Each sample is labelled with its pid and tid, its thread's name
    (`thread`, where thread_names {((pid, image), tid): name} has one), the
    programs a process exec'd into also with `exec` (2, 3...), as
    _scan.process_name names them, and with its process's text labels
    (process_labels {(pid, image): [(key, text)]}).  time_ns: when the
    profile began (ns since the epoch); period: the value of one sample
    of the last type."""
    thread_names = thread_names or {}
    process_labels = process_labels or {}
    strings = _Strings()
    locations = {}      # label -> id (the same as its function's id)
    functions = []
    body = []
    for type_, unit in sample_types:
        body.append(_bytes(PROFILE_SAMPLE_TYPE, _int(VALUE_TYPE_TYPE, strings(type_))
                           + _int(VALUE_TYPE_UNIT, strings(unit))))
    for (((pid, image), tid), frames), values in sorted(samples.items()):
        ids = []
        for label in reversed(frames):      # pprof lists the leaf first
            i = locations.get(label)
            if i is None:
                i = locations[label] = len(locations) + 1
                name, file, line = frame_parts(label)
                # pprof "demangles" a name equal to its system name, and
                # cuts <...> out of it as C++ template arguments: <module>,
                # <lambda>, <listcomp> became "<unknown>".  A Python
                # function has no system name; a native one keeps its own.
                system = "" if _PYTHON.match(label) else name
                functions.append(
                    _int(FUNCTION_ID, i) + _int(FUNCTION_NAME, strings(name))
                    + _int(FUNCTION_SYSTEM_NAME, strings(system))
                    + _int(FUNCTION_FILENAME, strings(file)) + _int(FUNCTION_START_LINE, line))
            ids.append(i)
        labels = (_bytes(SAMPLE_LABEL, _int(LABEL_KEY, strings("pid")) + _int(LABEL_NUM, pid))
                  + _bytes(SAMPLE_LABEL, _int(LABEL_KEY, strings("tid")) + _int(LABEL_NUM, tid)))
        if image != 1:
            labels += _bytes(SAMPLE_LABEL, _int(LABEL_KEY, strings("exec")) + _int(LABEL_NUM, image))
        for key, text in process_labels.get((pid, image), ()):
            labels += _bytes(SAMPLE_LABEL, _int(LABEL_KEY, strings(key))
                             + _int(LABEL_STR, strings(text)))
        name = thread_names.get(((pid, image), tid))
        if name:
            labels += _bytes(SAMPLE_LABEL, _int(LABEL_KEY, strings("thread"))
                             + _int(LABEL_STR, strings(name)))
        body.append(_bytes(PROFILE_SAMPLE, _packed(SAMPLE_LOCATION_ID, ids)
                           + _packed(SAMPLE_VALUE, values) + labels))
    for label, i in locations.items():
        line = frame_parts(label)[2]
        body.append(_bytes(PROFILE_LOCATION, _int(LOCATION_ID, i) + _bytes(
            LOCATION_LINE, _int(LINE_FUNCTION_ID, i) + _int(LINE_LINE, line))))
    body.extend(_bytes(PROFILE_FUNCTION, f) for f in functions)
    if time_ns:
        body.append(_int(PROFILE_TIME_NANOS, time_ns))
    if duration_ns:
        body.append(_int(PROFILE_DURATION_NANOS, duration_ns))
    for text in comments:
        body.append(_int(PROFILE_COMMENT, strings(text)))
    type_, unit = sample_types[-1]
    body.append(_bytes(PROFILE_PERIOD_TYPE, _int(VALUE_TYPE_TYPE, strings(type_))
                       + _int(VALUE_TYPE_UNIT, strings(unit))))
    if period:
        body.append(_int(PROFILE_PERIOD, period))
    body.append(_int(PROFILE_DEFAULT_TYPE, strings(type_)))
    return gzip.compress(b"".join(body) + strings.encoded(), mtime=0)
