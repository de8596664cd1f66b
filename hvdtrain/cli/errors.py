"""The one exception type subcommands raise for a user error (printed as one line, exit 2)."""


class CliError(Exception):
    pass
