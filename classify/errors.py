"""The one exception stage two raises for bad user input."""


class UsageError(Exception):
    """A bad option, dataset or hyperparameter; the CLI prints it as one line and exits 2."""
