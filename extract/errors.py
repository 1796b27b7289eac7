"""The one error hierarchy of both stages; the command lines print these as one line.

``exit_status`` is what ``python -m extract`` and ``python -m classify`` return: 2 for bad
input (an option, a dataset, a cache), 1 for a fault of the environment (a full disk, a
read-only folder, weights that cannot be fetched).
"""


class FeatcacheError(Exception):
    """Base of every error meant for the user; the message names the bad value and the fix."""

    exit_status = 2


class UsageError(FeatcacheError, ValueError):
    """Bad input from the user: the message names the bad value and the valid choices."""


class CacheError(FeatcacheError):
    """A cache is missing, incomplete, corrupt, locked or of another format version."""


class EnvironmentFault(FeatcacheError):
    """The machine, not the input: no space left, a read-only folder, unreachable weights."""

    exit_status = 1
