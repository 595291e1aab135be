"""Layer 1: a capture directory and its contents: its files, manifest and
budget, decoding and writing CTF, perf's script, open_trace, the event
table."""

# The SourceFile of an asyncio task's frame (`task:NAME`): written by the
# tracer (etwtrace.asynciotasks) and the sampler, read by the report.
TASK_FILE = "<asyncio task>"
