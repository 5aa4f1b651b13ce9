"""One module per ``connect-audit`` subcommand; see :mod:`collector.cli`."""
