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


def cache_root() -> Path:
    root = Path(os.environ.get("QUANTCAL_CACHE") or Path.home() / ".cache" / "quantcal")
    root.mkdir(parents=True, exist_ok=True)
    return root


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a scratch directory that becomes ``target`` only if the block finishes."""
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield scratch
        if target.exists():
            shutil.rmtree(target)
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
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "a") as handle:
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
