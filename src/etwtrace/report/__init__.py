"""Layer 2: views of a capture: the report command, the scan, the call
tree, and the output formats."""
