from etwtrace import _cli

_cli.exit_as(_cli.main())
