"""Layer 4: the command line (`python -m etwtrace`, `etwtrace`) and its
subcommands, handed on to the layers below."""
