"""Layer 3: making captures: the launcher, perf, recording sessions and
their daemon, attach, the capture's README."""
