"""Layer 1: a capture directory and its contents: its files, manifest and
budget, decoding and writing CTF, perf's script, open_trace, the event
table."""
