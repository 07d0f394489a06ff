"""Where quantcal keeps what it can rebuild (dequantized GGUF copies, built variants).

``$QUANTCAL_CACHE`` if set, else ``~/.cache/quantcal``. Entries are written to a temporary
directory and renamed into place, so a crash never leaves a half-written entry behind.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


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
