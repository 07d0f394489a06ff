"""Calibration data for data-dependent recipes (GPTQ): ``nsamples`` windows of ``seqlen`` tokens.

Sources:
- ``self`` (the offline default): text sampled from the reference model itself (seeded, temperature 1,
  starting from BOS): data-free calibration, no dataset needed;
- a local file (``.txt``, or ``.jsonl`` with a ``text`` field): concatenated, tokenized, windows at seeded
  random offsets;
- ``c4``: ``allenai/c4`` (en) from the hub, as Study B: random documents longer than ``seqlen``, one random
  window each (needs network);
- ``task:NAME`` or ``task:NAME:PATH``: a benchmark's own text, each item's prompt followed by its gold answer (the
  task's hub split, or the local file PATH), concatenated, windows at seeded random offsets. Use a split you do not
  evaluate on (a task's training file): calibrating on the evaluated items would tune the weights to them.
The token windows' SHA-256 is recorded with the variant. Self-generated windows are cached per
(model fingerprint, nsamples, seqlen, seed) as ``.npy`` under ``$QUANTCAL_CACHE/calibration`` (sampling 64 x 512
tokens costs minutes on a CPU; GPTQ, AWQ and the error probe of the same model then share them).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from quantcal.errors import QuantcalError
from quantcal.recipes.spec import Param

PARAMS = {  # the calibration parameters of every calibrated recipe (GPTQ, AWQ)
    "nsamples": Param(int, 64, low=1, high=4096, help="calibration windows (Study B and AutoAWQ: 128)"),
    "seqlen": Param(int, 512, low=8, high=32768, help="tokens per window (Study B: 2048)"),
    "calib": Param(str, "self", help="'self' (text sampled from the model, offline), 'c4' (hub), a .txt/.jsonl path, "
                                     "or task:NAME[:PATH] (a benchmark's prompts and gold answers)"),
    "seed": Param(int, 0, low=0),
}


def calibration_ids(model: Any, tokenizer: Any, source: str, nsamples: int, seqlen: int, seed: int,
                    fingerprint: str | None = None) -> torch.Tensor:
    """``(nsamples, seqlen)`` token ids; ``fingerprint`` (the model's) enables the cache of self-generated windows."""
    if source == "self":
        if fingerprint is None:
            return _self_generated(model, tokenizer, nsamples, seqlen, seed)
        return _cached_self_generated(model, tokenizer, nsamples, seqlen, seed, fingerprint)
    if source == "c4":
        return _c4(tokenizer, nsamples, seqlen, seed)
    if source.startswith("task:"):
        return _from_text(task_text(source), tokenizer, nsamples, seqlen, seed, source)
    path = Path(source)
    if not path.is_file():
        raise QuantcalError(f"calibration source {source!r}: expected 'self', 'c4', task:NAME[:PATH] or a .txt/.jsonl file")
    return _from_text(_read_text(path), tokenizer, nsamples, seqlen, seed, str(path))


def identity(params: dict[str, Any]) -> dict[str, Any]:
    """A local calibration file's content (``calib=PATH`` or ``task:NAME:PATH``), so a build and its scores are not
    reused after the file changes; empty for ``self``, ``c4`` and a task's hub split."""
    path = _local_file(params["calib"])
    if path is None or not Path(path).is_file():
        return {}  # a missing file is refused when the windows are drawn
    return {"calib_sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]}


def _task_source(source: str) -> tuple[str, str]:
    """``task:NAME[:PATH]`` as ``(NAME, PATH or "")``."""
    name, _, data_file = source[len("task:"):].partition(":")
    return name, data_file


def _local_file(source: str) -> str | None:
    """The local file a source reads (``PATH``, or ``task:NAME:PATH``); None for ``self``, ``c4`` and hub splits."""
    if source in ("self", "c4"):
        return None
    if source.startswith("task:"):
        return _task_source(source)[1] or None
    return source


def params_ids(model: Any, tokenizer: Any, params: dict[str, Any], fingerprint: str | None) -> torch.Tensor:
    """The windows a calibrated recipe's ``calib``/``nsamples``/``seqlen``/``seed`` parameters ask for."""
    return calibration_ids(model, tokenizer, params["calib"], params["nsamples"], params["seqlen"], params["seed"],
                           fingerprint=fingerprint)


def record(params: dict[str, Any], ids: torch.Tensor) -> dict[str, Any]:
    """What the variant's JSON record says about its calibration data."""
    return {"source": params["calib"], "nsamples": params["nsamples"], "seqlen": params["seqlen"], "sha256": ids_hash(ids)}


def ids_hash(ids: torch.Tensor) -> str:
    import torch

    return hashlib.sha256(ids.to(torch.int64).numpy().tobytes()).hexdigest()[:16]


def _cached_self_generated(model: Any, tokenizer: Any, nsamples: int, seqlen: int, seed: int,
                           fingerprint: str) -> torch.Tensor:
    import torch

    import numpy as np

    from quantcal.sources.cache import cache_root

    key = hashlib.sha256(json.dumps([fingerprint, nsamples, seqlen, seed]).encode()).hexdigest()[:20]
    path = cache_root() / "calibration" / f"self-{key}.npy"
    if path.is_file():
        return torch.from_numpy(np.load(path))
    ids = _self_generated(model, tokenizer, nsamples, seqlen, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_suffix(f".{os.getpid()}.npy")
    np.save(scratch, ids.numpy())
    os.replace(scratch, path)
    return ids


def _self_generated(model: Any, tokenizer: Any, nsamples: int, seqlen: int, seed: int) -> torch.Tensor:
    import torch

    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        rows = []
        with torch.inference_mode():
            for first in range(0, nsamples, 16):
                n = min(16, nsamples - first)
                prompt = torch.full((n, 1), start, dtype=torch.long)
                out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True, temperature=1.0, top_k=0,
                                     top_p=1.0, max_new_tokens=seqlen - 1, min_new_tokens=seqlen - 1,
                                     pad_token_id=tokenizer.eos_token_id)
                rows.append(out[:, :seqlen])
    finally:
        torch.random.set_rng_state(generator_state)
    return torch.cat(rows)


def task_text(source: str) -> str:
    """``task:NAME[:PATH]``: every item's prompt, the target delimiter and its gold answer, one item per paragraph."""
    from quantcal.tasks import get_task, load_items

    name, data_file = _task_source(source)
    if not name:
        raise QuantcalError(f"calibration source {source!r}: expected task:NAME or task:NAME:PATH")
    task = get_task(name)
    items = load_items(task, data_file or None)
    return "\n\n".join(it.context + task.target_delimiter + it.choices[it.gold] for it in items)


def _read_text(path: Path) -> str:
    if path.suffix == ".jsonl":
        texts = []
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    texts.append(json.loads(line)["text"])
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise QuantcalError(f"{path}:{line_no}: expected a JSON object with a 'text' field") from exc
        return "\n\n".join(texts)
    return path.read_text(encoding="utf-8")


def _from_text(text: str, tokenizer: Any, nsamples: int, seqlen: int, seed: int, where: str) -> torch.Tensor:
    import torch

    ids = torch.tensor(tokenizer.encode(text, add_special_tokens=False))
    if ids.numel() <= seqlen:
        raise QuantcalError(f"calibration text {where} has {ids.numel()} tokens; need more than seqlen={seqlen}")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seqlen, (nsamples,), generator=g)
    return torch.stack([ids[s:s + seqlen] for s in starts.tolist()])


def _c4(tokenizer: Any, nsamples: int, seqlen: int, seed: int) -> torch.Tensor:  # pragma: no cover - needs network
    import torch

    import random

    import datasets

    try:
        stream = datasets.load_dataset("allenai/c4", "en", split="train", streaming=True)
    except Exception as exc:
        raise QuantcalError(f"cannot load allenai/c4 from the hub ({exc}); offline, use calib=self or a text file") from exc
    rng = random.Random(seed)
    rows = []
    for record in stream:
        ids = tokenizer.encode(record["text"], add_special_tokens=False)
        if len(ids) > seqlen:
            start = rng.randint(0, len(ids) - seqlen - 1)
            rows.append(torch.tensor(ids[start:start + seqlen]))
            if len(rows) == nsamples:
                break
    return torch.stack(rows)
