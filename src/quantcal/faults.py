"""The one place where operating-system and SQLite failures become user errors that say what happened.

A failure while quantcal writes (a full disk, a read-only mount, a directory without write permission, a store
locked by another process) is not a bug: the message names the cause in plain words, the path, what was kept, and
what to do, and the CLI prints it as one line with exit code 2. Anything unrecognised keeps its own message.
"""

from __future__ import annotations

import errno
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from quantcal.errors import QuantcalError

#: SQLite's own words -> (cause, what to do).
_SQLITE_CAUSES = (
    ("locked", "it is locked by another process", "wait for the other process to finish, or use another store"),
    ("disk is full", "the disk is full", "free space"),
    ("readonly", "it is read-only", "make it writable, or write to another store"),
    ("read-only", "it is read-only", "make it writable, or write to another store"),
    ("unable to open", "it cannot be opened (missing folder or no permission)", "check the path and its permissions"),
    ("disk i/o error", "a disk I/O error occurred", "check the disk"),
)

_ERRNO_CAUSES = {
    errno.ENOSPC: ("the disk is full", "free space"),
    errno.EDQUOT: ("the disk quota is exceeded", "free space"),
    errno.EROFS: ("the file system is read-only", "choose a writable location"),
    errno.EACCES: ("permission is denied", "choose a location you can write to"),
    errno.EPERM: ("the operation is not permitted", "choose a location you can write to"),
    errno.ENOENT: ("a folder on the path does not exist", "check the path"),
    errno.EISDIR: ("it is a directory", "give a file path"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "check the path"),
    errno.EEXIST: ("a part of the path is a file, not a folder", "check the path"),
}


def sqlite_cause(exc: sqlite3.Error) -> tuple[str, str] | None:
    """``(cause, remedy)`` for an SQLite failure quantcal knows, else ``None``."""
    text = str(exc).lower()
    for needle, cause, remedy in _SQLITE_CAUSES:
        if needle in text:
            return cause, remedy
    return None


def os_cause(exc: OSError) -> tuple[str, str]:
    """``(cause, remedy)`` for an operating-system failure."""
    return _ERRNO_CAUSES.get(exc.errno or 0, (exc.strerror or str(exc), "check the path"))


def is_environment_failure(exc: BaseException) -> bool:
    """A failure of the machine (disk, permissions, locks), not of quantcal's logic."""
    return isinstance(exc, OSError) or (isinstance(exc, sqlite3.Error) and sqlite_cause(exc) is not None)


def describe(exc: BaseException, action: str, kept: str = "") -> str:
    """One line: ``cannot ACTION: CAUSE; KEPT; REMEDY``."""
    if isinstance(exc, sqlite3.Error):
        cause, remedy = sqlite_cause(exc) or (str(exc), "check the store")
    elif isinstance(exc, OSError):
        cause, remedy = os_cause(exc)
    else:
        cause, remedy = str(exc), "try again"
    return "; ".join(part for part in (f"cannot {action}: {cause}", kept, remedy) if part)


@contextmanager
def writing(path: str | Path, what: str = "write") -> Iterator[None]:
    """Turn a disk or permission failure while writing ``path`` into a user error (and never leave half a file:
    callers write to a temporary name and rename, see :func:`write_text_atomic`)."""
    try:
        yield
    except (OSError, sqlite3.Error) as exc:
        if not is_environment_failure(exc):
            raise
        raise QuantcalError(describe(exc, f"{what} {path}")) from exc


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder, so a failure leaves no partial file."""
    path = Path(path)
    scratch = path.with_name(f".{path.name}.partial")
    with writing(path):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            scratch.write_text(text, encoding="utf-8")
            scratch.replace(path)
        finally:
            scratch.unlink(missing_ok=True)


def check_writable_dir(path: Path) -> None:
    """Refuse, before any work, an output folder that cannot be created or written to."""
    path = Path(path)
    with writing(path, "write to"):
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".quantcal-write-check"
        probe.write_text("")
        probe.unlink()
