"""A cache entry's manifest: every file it holds, with its size and SHA-256, written when the entry is built and
checked when it is used, so an edited, truncated or replaced file is seen before a model is loaded from it.

``quantcal-manifest.json`` lists each regular file below the entry (the manifest itself left out) as
``{"path": ..., "size": ..., "sha256": ...}``. Checking it is cheap by default (every file's size and type, and the
hashes of the files under :data:`SMALL_FILE_BYTES`: config, tokenizer, records); ``full=True`` hashes the weights too
(each time a built variant is loaded to score, and ``quantcal cache verify``).

The entry's *digest* hashes the list of the model's files and their hashes (the build record, whose timings differ
from build to build, left out): a store run records it, so a resumed run whose variant's files hash differently
starts a new run instead of mixing two models.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantcal.sources.cache import file_sha256

MANIFEST = "quantcal-manifest.json"
#: Files up to this size are hashed on every check; larger ones (weights) only on a full check.
SMALL_FILE_BYTES = 1 << 20
#: Records of how an entry was built (left out of the digest: they hold timings).
RECORDS = frozenset({"quantcal-variant.json", "quantcal-source.json"})


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.name != MANIFEST and (p.is_file() or p.is_symlink()))


def write_manifest(folder: Path) -> dict[str, Any]:
    """List every file of ``folder`` with its size and hash in ``folder/quantcal-manifest.json`` (call it last, when
    the entry is complete)."""
    files = [{"path": p.relative_to(folder).as_posix(), "size": p.stat().st_size, "sha256": file_sha256(p)}
             for p in _files(folder)]
    manifest = {"version": 1, "files": files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest, or None when the entry has none, it is not a regular file of the entry (a symbolic link is
    not followed) or it cannot be read as one."""
    path = folder / MANIFEST
    if path.is_symlink() or not path.is_file():
        return None
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError, RecursionError):
        return None
    ok = isinstance(manifest, dict) and isinstance(manifest.get("files"), list) and all(
        isinstance(f, dict) and isinstance(f.get("path"), str) and isinstance(f.get("size"), int)
        and isinstance(f.get("sha256"), str) for f in manifest["files"])
    return manifest if ok else None


def manifest_problem(folder: Path, full: bool = False) -> str | None:
    """What differs between ``folder`` and its manifest (a file added, missing, not a regular file, of another size
    or, for small files or with ``full``, another hash), or None when it matches."""
    manifest = read_manifest(folder)
    if manifest is None:
        path = folder / MANIFEST
        if path.is_symlink() or (path.exists() and not path.is_file()):
            return f"{MANIFEST} is not a regular file"
        return ("no manifest (built before quantcal kept one, or not by quantcal)" if not path.exists()
                else f"{MANIFEST} unreadable")
    listed = {f["path"]: f for f in manifest["files"]}
    present = {p.relative_to(folder).as_posix(): p for p in _files(folder)}
    for name in sorted(set(present) - set(listed)):
        return f"{name} is not in the manifest"
    for name, entry in listed.items():
        path = present.get(name)
        if path is None:
            return f"{name} is missing"
        if path.is_symlink() or not path.is_file():
            return f"{name} is not a regular file"
        size = path.stat().st_size
        if size != entry["size"]:
            return f"{name} has {size} bytes, {entry['size']} when built"
        if (full or size <= SMALL_FILE_BYTES) and file_sha256(path) != entry["sha256"]:
            return f"{name} changed since it was built (its SHA-256 differs)"
    return None


def entry_digest(folder: Path) -> str | None:
    """A short hash of the model's files as the manifest lists them (build records left out), or None without one."""
    manifest = read_manifest(folder)
    if manifest is None:
        return None
    model_files = sorted((f["path"], f["sha256"]) for f in manifest["files"] if f["path"] not in RECORDS)
    return hashlib.sha256(json.dumps(model_files).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class EntryCheck:
    """One cache entry checked against its manifest: ``problem`` is None when every file matches."""

    path: Path
    kind: str  # "variant" (a built recipe) or "gguf" (a dequantized GGUF copy)
    problem: str | None
    size_bytes: int


def check_entries(root: Path, full: bool = True) -> list[EntryCheck]:
    """Every entry of the cache at ``root`` checked against its manifest (weights hashed too with ``full``); a
    symbolic link in an entry's place is reported, never followed. Scratch folders of a build in progress
    (``.name.xxxx``) and lock files are left out."""
    checks = []
    for kind, folder in (("variant", root / "variants"), ("gguf", root / "gguf")):
        if not folder.is_dir():
            continue
        for entry in sorted(p for p in folder.iterdir() if not p.name.startswith(".")):
            if entry.is_symlink() or not entry.is_dir():
                checks.append(EntryCheck(entry, kind, "a symbolic link" if entry.is_symlink() else "not a folder", 0))
                continue
            size = sum(f.stat().st_size for f in entry.rglob("*") if f.is_file() and not f.is_symlink())
            checks.append(EntryCheck(entry, kind, manifest_problem(entry, full), size))
    return checks
