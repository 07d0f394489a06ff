"""The fine-tuning loop: LoRA adapters (peft) on a frozen float or 4-bit base, loss on completion tokens only.

A run directory holds everything:

- ``checkpoints/step-NNNNNN/``: the adapter (peft format) and ``state.pt`` (optimizer, step, RNG state), written
  every ``save_every`` steps and when the run is stopped (Ctrl-C or SIGTERM end it after the step in progress;
  a second signal stops at once); each is written to a scratch directory and renamed, so a crash never leaves
  half a checkpoint. ``resume=True`` continues from the latest.
- ``log.csv`` (step, train loss, learning rate, seconds, eval loss) and ``loss.png``.
- ``adapter/``: the final adapter in peft's format, and ``quantcal-finetune.json``: what is needed to reproduce
  and to evaluate it (model, base form, LoRA and training settings, data source and hash, versions, losses).

Resuming is exact: the data order is a function of (seed, epoch), so a resumed run sees the same batches, and
the optimizer and RNG states (dropout) are restored, so it ends at the same loss as an uninterrupted run.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import signal
import statistics
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from quantcal.sources.cache import atomic_dir
from quantcal.errors import QuantcalError
from quantcal.finetune.base import BaseConfig, load_base
from quantcal.finetune.data import Example, TokenizedExample, collate, data_hash, tokenize_examples
from quantcal.sources.models import ModelSource
from quantcal.versions import package_versions

META_FILE = "quantcal-finetune.json"
LOG_FIELDS = ("step", "epoch", "train_loss", "lr", "seconds", "eval_loss")


@dataclass(frozen=True)
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("all-linear",)

    def __post_init__(self) -> None:
        if self.r < 1 or self.alpha < 1 or not 0 <= self.dropout < 1:
            raise QuantcalError("`r` and `alpha` must be positive and `dropout` in [0, 1)")

    def peft_config(self) -> Any:
        from peft import LoraConfig

        targets: Any = "all-linear" if self.target_modules == ("all-linear",) else list(self.target_modules)
        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=targets,
                          bias="none", task_type="CAUSAL_LM")


@dataclass(frozen=True)
class TrainSettings:
    steps: int | None = 100
    epochs: float | None = None
    lr: float = 2e-4
    warmup_steps: int = 5
    weight_decay: float = 0.0
    batch_size: int = 4
    grad_accum: int = 1
    max_length: int = 256
    seed: int = 0
    save_every: int = 25
    eval_every: int = 25
    val_size: int = 32
    gradient_checkpointing: bool = False
    max_grad_norm: float = 1.0
    optim: str = "adamw"

    def __post_init__(self) -> None:
        if self.optim not in OPTIMIZERS:
            raise QuantcalError(f"`optim` must be one of {', '.join(OPTIMIZERS)}, got {self.optim!r}")
        for name in ("batch_size", "grad_accum", "max_length", "save_every", "eval_every"):
            if getattr(self, name) < 1:
                raise QuantcalError(f"`{name}` must be at least 1")
        if (self.steps is None) == (self.epochs is None):
            raise QuantcalError("give either `steps` or `epochs`")
        if self.lr <= 0:
            raise QuantcalError("`lr` must be positive")

    def total_steps(self, n_train: int) -> int:
        if self.steps is not None:
            return self.steps
        assert self.epochs is not None
        return max(1, math.ceil(self.epochs * n_train / (self.batch_size * self.grad_accum)))


@dataclass
class FinetuneRun:
    model: ModelSource
    base: BaseConfig
    lora: LoraSettings
    train: TrainSettings
    data: dict[str, Any] = field(default_factory=dict)  # source, data_file, skip, take, held_out
    device: str = "cpu"  # where to train (not part of the signature); bf16 compute on a GPU, float32 on CPU


def batch_indices(step: int, accum: int, batch_size: int, n: int, seed: int) -> Iterator[list[int]]:
    """The example indices of each micro-batch of optimizer step ``step`` (0-based): a stream of per-epoch
    permutations seeded by (seed, epoch), so any step's data is known without replaying earlier ones."""
    perms: dict[int, np.ndarray] = {}
    for micro in range(step * accum, (step + 1) * accum):
        out = []
        for pos in range(micro * batch_size, (micro + 1) * batch_size):
            epoch, offset = divmod(pos, n)
            if epoch not in perms:
                perms[epoch] = np.random.default_rng([seed, epoch]).permutation(n)
            out.append(int(perms[epoch][offset]))
        yield out


def lr_at(step: int, settings: TrainSettings) -> float:
    """Linear warm-up, then constant (QLoRA's schedule)."""
    if settings.warmup_steps and step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    return settings.lr


def split_validation(examples: Sequence[Example], val_size: int, seed: int) -> tuple[list[Example], list[Example]]:
    """A fixed random slice of the training data for the eval loss (never trained on)."""
    n_val = min(val_size, len(examples) // 5)
    order = np.random.default_rng([seed, 10**6]).permutation(len(examples))
    val = {int(i) for i in order[:n_val]}
    return [e for i, e in enumerate(examples) if i not in val], [examples[i] for i in sorted(val)]


def finetune(run: FinetuneRun, examples: Sequence[Example], out: Path, resume: bool = False,
             progress: Callable[[int, int], Any] | None = None, say: Callable[[str], None] = lambda m: None,
             stop_after: int | None = None) -> dict[str, Any]:
    """Train (or resume) a LoRA adapter into ``out``; returns the run's metadata (also ``out/adapter/<META_FILE>``).

    ``stop_after`` ends the run after that many optimizer steps as if interrupted (checkpoint written): for tests.
    """
    from peft import get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    out = Path(out)
    settings = run.train
    if settings.optim != "adamw" and not run.device.startswith("cuda"):
        raise QuantcalError(f"`optim` {settings.optim} needs a CUDA device (bitsandbytes pages optimizer state between "
                            "GPU and CPU memory); use `optim` adamw on CPU")
    train_ex, val_ex = split_validation(examples, settings.val_size, settings.seed)
    signature = run_signature(run, train_ex, val_ex)
    if out.exists() and any(out.iterdir()):
        if not resume:
            raise QuantcalError(f"{out} is not empty: pass `resume` to continue that run, or choose another `out`")
        started = json.loads((out / "run.json").read_text()).get("signature") if (out / "run.json").is_file() else None
        if started is not None and started != signature:
            changed = sorted(k for k in signature if signature[k] != started.get(k))
            raise QuantcalError(f"{out} holds a run with other settings ({', '.join(changed)} differ): "
                                "choose another output folder, or delete that one to start again")
        if (out / "adapter" / META_FILE).is_file():
            say(f"{out}: already trained with these settings")
            return json.loads((out / "adapter" / META_FILE).read_text())
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(settings.seed)
    loaded = load_base(run.model, run.base, device=run.device)
    model, tokenizer = loaded.model, loaded.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    train_tok = tokenize_examples(train_ex, tokenizer, settings.max_length)
    val_tok = tokenize_examples(val_ex, tokenizer, settings.max_length) if val_ex else []
    total = settings.total_steps(len(train_tok))
    if settings.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    with warnings.catch_warnings():  # peft calls a transformers property that transformers 5 deprecates
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        model = get_peft_model(model, run.lora.peft_config())
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(settings.optim, trainable, settings)
    start_step, resumed_from = 0, None
    latest = latest_checkpoint(out) if resume else None
    if latest is not None:
        set_peft_model_state_dict(model, load_file(str(latest / "adapter_model.safetensors")))
        state = torch.load(latest / "state.pt", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        start_step, resumed_from = int(state["step"]), latest.name
        say(f"resuming from {latest.name} (step {start_step} of {total})")
    _truncate_log(out / "log.csv", start_step)
    meta = _meta(run, train_ex, val_ex, len(train_tok), total) | {"signature": signature}
    (out / "run.json").write_text(json.dumps(meta, indent=2, default=str))
    model.train()
    step_seconds: list[float] = []
    bar = progress(total, start_step) if progress else None
    step = start_step
    with _GracefulStop() as stop:
        try:
            while step < total:
                if stop.requested or (stop_after is not None and step - start_step >= stop_after):
                    if step > start_step:
                        save_checkpoint(out, model, optimizer, step)
                    say(f"stopped at step {step} of {total}; checkpoint saved, continue with `resume`")
                    raise KeyboardInterrupt
                t0 = time.perf_counter()
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step, settings)
                losses = []
                for idx in batch_indices(step, settings.grad_accum, settings.batch_size, len(train_tok), settings.seed):
                    batch = _to(collate([train_tok[i] for i in idx], pad), run.device)
                    loss = model(**batch, use_cache=False).loss
                    (loss / settings.grad_accum).backward()
                    losses.append(float(loss.detach()))
                torch.nn.utils.clip_grad_norm_(trainable, settings.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                seconds = time.perf_counter() - t0
                step_seconds.append(seconds)
                eval_loss = None
                if val_tok and (step % settings.eval_every == 0 or step == total):
                    eval_loss = evaluate_loss(model, val_tok, pad, settings.batch_size)
                _append_log(out / "log.csv", {"step": step, "epoch": step * settings.batch_size * settings.grad_accum / len(train_tok),
                                              "train_loss": statistics.fmean(losses), "lr": lr_at(step - 1, settings),
                                              "seconds": seconds, "eval_loss": eval_loss})
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{statistics.fmean(losses):.4f}")
                if step % settings.save_every == 0 and step < total:
                    save_checkpoint(out, model, optimizer, step)
        except KeyboardInterrupt:
            _plot(out)
            raise
        finally:
            if bar is not None:
                bar.close()
    history = read_log(out / "log.csv")
    meta.update({
        "steps_done": step, "resumed_from": resumed_from,
        "final_train_loss": statistics.fmean(r["train_loss"] for r in history[-10:]),
        "first_train_loss": statistics.fmean(r["train_loss"] for r in history[:10]),
        "final_eval_loss": next((r["eval_loss"] for r in reversed(history) if r["eval_loss"] is not None), None),
        "seconds_per_step_median": statistics.median(step_seconds) if step_seconds else None,
    })
    with atomic_dir(out / "adapter") as scratch:
        model.save_pretrained(scratch)
        (scratch / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
    _plot(out)
    return json.loads(json.dumps(meta, default=str))  # the same whether trained now or read back


OPTIMIZERS = ("adamw", "paged_adamw", "paged_adamw_8bit")


def make_optimizer(name: str, params: list[torch.nn.Parameter], settings: TrainSettings) -> torch.optim.Optimizer:
    """AdamW, or bitsandbytes' paged AdamW (QLoRA's memory-spike guard: optimizer state paged to CPU memory), which
    exists for CUDA devices only."""
    if name == "adamw":
        return torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    import bitsandbytes as bnb

    cls = bnb.optim.PagedAdamW8bit if name == "paged_adamw_8bit" else bnb.optim.PagedAdamW
    return cls(params, lr=settings.lr, weight_decay=settings.weight_decay)


def _to(batch: dict[str, torch.Tensor], device: Any) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def evaluate_loss(model: Any, examples: Sequence[TokenizedExample], pad: int, batch_size: int) -> float:
    """Mean loss per completion token over ``examples`` (dropout off)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = _to(collate(examples[start:start + batch_size], pad), next(model.parameters()).device)
            n = int((batch["labels"][:, 1:] != -100).sum())
            total += float(model(**batch, use_cache=False).loss) * n
            count += n
    if was_training:
        model.train()
    return total / max(count, 1)


def save_checkpoint(out: Path, model: Any, optimizer: torch.optim.Optimizer, step: int, keep: int = 2) -> Path:
    target = out / "checkpoints" / f"step-{step:06d}"
    with atomic_dir(target) as scratch:
        model.save_pretrained(scratch)
        state = {"optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(), "step": step}
        if torch.cuda.is_available():  # dropout on a GPU draws from the CUDA generators
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        torch.save(state, scratch / "state.pt")
    for old in sorted((out / "checkpoints").glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def latest_checkpoint(out: Path) -> Path | None:
    done = [p for p in sorted((Path(out) / "checkpoints").glob("step-*")) if (p / "state.pt").is_file()]
    return done[-1] if done else None


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return [{k: (float(v) if v not in ("", None) else None) if k != "step" else int(v) for k, v in row.items()}
                for row in csv.DictReader(handle)]


def _append_log(path: Path, row: dict[str, Any]) -> None:
    new = not path.is_file()
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=LOG_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow({k: ("" if row[k] is None else row[k]) for k in LOG_FIELDS})


def _truncate_log(path: Path, step: int) -> None:
    """Drop log rows past the step a run restarts from (they will be logged again)."""
    rows = [r for r in read_log(path) if r["step"] <= step]
    path.unlink(missing_ok=True)
    for r in rows:
        _append_log(path, r)


def _plot(out: Path) -> None:
    history = read_log(out / "log.csv")
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in history], [r["train_loss"] for r in history], lw=1, label="train (per step)")
    evals = [(r["step"], r["eval_loss"]) for r in history if r["eval_loss"] is not None]
    if evals:
        ax.plot(*zip(*evals), "o-", label="held-out eval")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss per completion token")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=120)
    plt.close(fig)


class _GracefulStop:
    """Ctrl-C or SIGTERM ends the run at the next step boundary, where the state is consistent (the checkpoint
    then resumes exactly); a second signal stops at once, keeping the last checkpoint written."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_GracefulStop":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay as they are
                pass
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True


def run_signature(run: FinetuneRun, train_ex: Sequence[Example], val_ex: Sequence[Example]) -> dict[str, Any]:
    """Everything that decides the trained weights (not where files are, nor how often to save or evaluate):
    a run may only be resumed, or a finished one reused, under the same signature."""
    train = {k: v for k, v in asdict(run.train).items() if k not in ("save_every", "eval_every")}
    signature = {"model": run.model.fingerprint, "base": run.base.to_json(), "lora": asdict(run.lora), "train": train,
                 "data": data_hash(train_ex), "val": data_hash(val_ex)}
    return json.loads(json.dumps(signature))  # as it reads back from run.json (tuples become lists)


def _meta(run: FinetuneRun, train_ex: Sequence[Example], val_ex: Sequence[Example], n_train_tok: int,
          total: int) -> dict[str, Any]:
    return {
        "model": run.model.to_json(), "base": run.base.to_json(), "lora": asdict(run.lora), "train": asdict(run.train),
        "data": {**run.data, "n_train": len(train_ex), "n_train_tokenized": n_train_tok, "n_val": len(val_ex),
                 "hash": data_hash(train_ex), "val_hash": data_hash(val_ex)},
        "total_steps": total, "versions": package_versions(("quantcal", "torch", "transformers", "peft", "bitsandbytes")),
    }
