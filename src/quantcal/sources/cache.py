"""Where quantcal keeps what it can rebuild (dequantized GGUF copies, built variants).

``$QUANTCAL_CACHE`` if set, else ``~/.cache/quantcal``. Entries are written to a temporary
directory and renamed into place, so a crash never leaves a half-written entry behind. Processes that share a
cache (two studies, a study and a sensitivity run, Ray workers on one machine) build an entry once: the builder
holds the entry's lock, the others wait for it and then find the entry.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from quantcal.errors import QuantcalError


def cache_root() -> Path:
    """``$QUANTCAL_CACHE``, else ``~/.cache/quantcal``: created if missing; one error if it cannot be a folder we
    write in (a file, a read-only or virtual file system such as ``/proc``)."""
    from_env = os.environ.get("QUANTCAL_CACHE")
    root = Path(from_env or Path.home() / ".cache" / "quantcal")
    named = f"QUANTCAL_CACHE={root}" if from_env else f"the cache folder {root}"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise QuantcalError(f"{named} is a file, not a folder; set QUANTCAL_CACHE to a folder quantcal may write in") from None
    except OSError as exc:
        raise QuantcalError(f"{named}: cannot create it ({exc.strerror}); set QUANTCAL_CACHE to a folder quantcal "
                            "may write in") from None
    if not root.is_dir():
        raise QuantcalError(f"{named} is not a folder; set QUANTCAL_CACHE to a folder quantcal may write in")
    return root


def remove_entry(path: Path) -> None:
    """Remove a cache entry: a symbolic link is removed itself, never followed into the folder it names."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def share_like_umask(folder: Path) -> None:
    """Give ``folder`` and everything in it the modes a plain ``mkdir``/``open`` would have (``0o777``/``0o666`` less
    the umask): ``mkdtemp`` makes the folder owner-only and safetensors writes its files ``0o600``, which would keep
    a checkpoint from a server running as another user and a shared cache from the other users."""
    mask = _umask()
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a scratch directory that becomes ``target`` only if the block finishes (with the modes the umask
    gives new files, see :func:`share_like_umask`)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    except OSError as exc:
        raise QuantcalError(f"{target.parent}: cannot write in it ({exc.strerror or exc}); set QUANTCAL_CACHE to a "
                            "folder quantcal may write in") from None
    try:
        yield scratch
        share_like_umask(scratch)
        remove_entry(target)
        scratch.rename(target)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)


@contextmanager
def entry_lock(target: Path, waiting: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold the exclusive lock of the cache entry ``target`` (an advisory ``flock`` on ``.<name>.lock`` beside it)
    for the block; ``waiting()`` is called once if another process holds it first. The kernel drops the lock when
    its holder exits, so a crashed builder never blocks the next one. Without ``fcntl`` (Windows) nothing is locked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - POSIX everywhere quantcal is tested
        yield
        return
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle = open(target.parent / f".{target.name}.lock", "a")
    except OSError as exc:
        raise QuantcalError(f"{target.parent}: cannot lock a cache entry there ({exc.strerror or exc}); set "
                            "QUANTCAL_CACHE to a folder quantcal may write in") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting:
                waiting()
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
