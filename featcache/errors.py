"""The one error hierarchy of both stages; the command lines print these as one line.

``exit_status`` is what ``python -m featcache.extract`` and ``python -m featcache.classify``
return: 2 for bad
input (an option, a dataset, a cache), 1 for a fault of the environment (a full disk, a
read-only folder, weights that cannot be fetched).
"""

from __future__ import annotations

import errno
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path


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


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that clean-up runs as for Ctrl-C."""


FULL_DISK = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # no space, quota, file size limit
_DENIED = (errno.EROFS, errno.EACCES, errno.EPERM)


def describe_os_error(exc: OSError, where: Path | str | None = None) -> str:
    """One line for an OSError (at ``exc.filename``, else ``where``), with the fix where there
    is an obvious one."""
    place = exc.filename or where
    at = f" {place}" if place else ""
    reason = exc.strerror or str(exc)
    name = f" ({errno.errorcode[exc.errno]})" if exc.errno in errno.errorcode else ""
    if exc.errno in FULL_DISK:
        return (f"cannot write{at}: disk full: {reason}{name}; free space and re-run the same "
                "command")
    if exc.errno in _DENIED:
        return (f"cannot write{at}: {reason}{name}; choose a writable data folder "
                "(DATA_DIR=..., --data-dir, or FEATCACHE_DATA_DIR)")
    return f"{reason}{name}{at and ':' + at}"


def environment_fault(exc: OSError, where: Path | str | None = None,
                      note: str = "") -> EnvironmentFault:
    """:func:`describe_os_error` as the error to raise, ``note`` (what was kept) appended."""
    return EnvironmentFault(describe_os_error(exc, where) + (f"; {note}" if note else ""))


def run_command(prog: str, command: Callable[[], object], *, resume_hint: str = "") -> int:
    """Run one command-line action; errors for users become one line on stderr and a status.

    FeatcacheError: its message and ``exit_status``; OSError (the environment): 1; Ctrl-C:
    130; SIGTERM: 143. Anything else is a bug and keeps its traceback.
    """
    received: list[int] = []  # Ray re-raises a Terminated from its waits as KeyboardInterrupt

    def terminate(signum: int, frame: object) -> None:
        received.append(signum)
        raise Terminated

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, terminate)
    try:
        command()
        return 0
    except FeatcacheError as exc:
        _say(prog, f"error: {exc}")
        return exc.exit_status
    except OSError as exc:
        _say(prog, f"error: {describe_os_error(exc)}")
        return 1
    except KeyboardInterrupt as exc:
        termed = isinstance(exc, Terminated) or bool(received)
        _say(prog, f"{'terminated' if termed else 'interrupted'}"
                   f"{'; ' + resume_hint if resume_hint else ''}")
        return 143 if termed else 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _say(prog: str, message: str) -> None:
    print(f"{prog}: {' '.join(message.split())}", file=sys.stderr)
