"""python -m etwtrace report: placeholder until the report lands (issue #4)."""
import sys


def main(args):
    print("etwtrace: error: report is not yet available in this version", file=sys.stderr)
    return 2
