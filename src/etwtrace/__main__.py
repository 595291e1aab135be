from etwtrace.cli import main as _cli

_cli.exit_as(_cli.main())
