"""Whether the Hugging Face hub can be reached, asked once per load with a short timeout, so that an offline machine
fails in seconds with one line instead of retrying for minutes.

Offline (``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` set, or no TCP connection to the hub's host within the
timeout), a dataset load runs in offline mode (:func:`offline_mode`): ``datasets`` then serves what its local cache
holds, and fails at once when it holds nothing. Behind a proxy (``HTTPS_PROXY`` and kin) a direct connection says
nothing, so the check is skipped there.
"""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from typing import Iterator
from urllib.parse import urlparse

TRUE = {"1", "ON", "YES", "TRUE"}
PROXIES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy")


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the hub cannot be reached now (offline mode asked for, or no connection to its host within ``timeout``
    seconds), or None when it can, or when a proxy stands between (not checkable directly)."""
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(name, "").upper() in TRUE:
            return f"{name} is set"
    if any(os.environ.get(name) for name in PROXIES):
        return None
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (443 if endpoint.scheme != "http" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return f"{host} cannot be reached: {exc.strerror or type(exc).__name__}"
    return None


@contextmanager
def offline_mode() -> Iterator[None]:
    """Within the block, ``huggingface_hub`` and ``datasets`` work from their local caches only (their offline
    switches, read at call time, are set and then restored)."""
    import datasets.config
    import huggingface_hub.constants

    saved = huggingface_hub.constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE
    huggingface_hub.constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        huggingface_hub.constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved
