"""The error of a request hvdtrain refuses before anything starts (bad flags, hosts, files).

Raised by the launcher, the benchmark and the tracking commands, library code all of them; the
``hvdtrain`` command prints each line of its message as ``hvdtrain: error: LINE`` and exits with
status 2 (several problems found at once: one line each).
"""


class UsageError(Exception):
    """A request the user must change; the message says what, one line per problem."""
