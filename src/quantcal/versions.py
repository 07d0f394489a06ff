"""Package versions recorded with every run, so a number can be traced to the code that made it."""

from __future__ import annotations

import platform
from importlib import metadata


def package_versions(names: tuple[str, ...] = ("quantcal", "torch", "transformers", "tokenizers", "numpy")) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out
