"""The one exception type the command line turns into a one-line message and exit status 2."""


class UsageError(Exception):
    """Bad input from the user: the message names the bad value and the valid choices."""
