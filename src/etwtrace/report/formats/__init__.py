"""The report's output formats."""
