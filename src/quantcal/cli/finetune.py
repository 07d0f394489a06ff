"""``quantcal finetune``: QLoRA / LoRA adapters (:func:`quantcal.api.train_adapter`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from quantcal.cli.common import console, out, quiet_transformers, say, step_bar, user_errors
from quantcal.sources.models import DEFAULT_MODEL


def finetune_command(
    data: str = typer.Option(..., "--data", help="Training source: task:NAME (a benchmark's items as prompt + gold answer; rows from --data-file, else the hub train split), a .jsonl of {prompt, completion} or {messages}, or hub:ORG/NAME[:SPLIT]."),
    target: Path = typer.Option(..., "--out", help="Run directory: checkpoints/, log.csv, loss.png, adapter/ (peft format + quantcal-finetune.json)."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="Base model (bundled name, .gguf, checkpoint dir, hub id)."),
    method: str = typer.Option("qlora", "--method", help="qlora: LoRA on a 4-bit NF4 base; lora: LoRA on the float base (the control)."),
    base_form: str = typer.Option("simulated", "--base-form", help="qlora base: simulated (NF4 weights dequantized once into float: same arithmetic, faster on CPU) or native (bitsandbytes 4-bit modules)."),
    quant_type: str = typer.Option("nf4", "--quant-type", help="qlora 4-bit type: nf4 or fp4."),
    double_quant: bool = typer.Option(True, "--double-quant/--no-double-quant", help="qlora: quantize the absmax constants too (QLoRA's double quantization)."),
    r: int = typer.Option(16, "--r", help="LoRA rank."),
    alpha: int = typer.Option(32, "--alpha", help="LoRA scale numerator (scale = alpha / r)."),
    dropout: float = typer.Option(0.05, "--dropout", help="LoRA dropout."),
    target_modules: str = typer.Option("all-linear", "--target-modules", help="Comma-separated module names (e.g. q_proj,v_proj) or all-linear (QLoRA's choice)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimizer steps (default 100 unless --epochs)."),
    epochs: Optional[float] = typer.Option(None, "--epochs", help="Passes over the training data instead of --steps."),
    lr: float = typer.Option(2e-4, "--lr", help="Peak learning rate (linear warm-up, then constant)."),
    warmup_steps: int = typer.Option(5, "--warmup-steps", help="Warm-up steps."),
    batch_size: int = typer.Option(4, "--batch-size", help="Examples per micro-batch."),
    grad_accum: int = typer.Option(1, "--grad-accum", help="Micro-batches per optimizer step."),
    max_length: int = typer.Option(256, "--max-length", help="Tokens per example (longer ones keep their end)."),
    seed: int = typer.Option(0, "--seed", help="Seeds adapter initialisation, data order and dropout."),
    save_every: int = typer.Option(25, "--save-every", help="Checkpoint every N steps (and always on Ctrl-C / SIGTERM)."),
    eval_every: int = typer.Option(25, "--eval-every", help="Held-out eval loss every N steps."),
    val_size: int = typer.Option(32, "--val-size", help="Training examples set aside for the eval loss (at most a fifth)."),
    data_file: Optional[Path] = typer.Option(None, "--data-file", help="task:NAME sources: local rows in hub schema."),
    skip: int = typer.Option(0, "--skip", help="Skip the first N examples of the source (e.g. the items a study evaluates)."),
    take: Optional[int] = typer.Option(None, "--take", help="Use at most N examples after --skip."),
    holdout: list[str] = typer.Option([], "--holdout", help="Evaluated items that must not be trained on (refused if any training prompt matches): NAME, NAME=FILE, NAME=FILE@LIMIT, or a study .yaml (all its tasks). Repeatable."),
    gradient_checkpointing: bool = typer.Option(False, "--gradient-checkpointing", help="Recompute activations in the backward pass (less memory, slower)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its latest checkpoint."),
    optim: str = typer.Option("adamw", "--optim", help="adamw, or paged_adamw / paged_adamw_8bit (bitsandbytes, CUDA only: QLoRA's paged optimizers)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:0 ... (bfloat16 compute on a GPU)."),
) -> None:
    """Fine-tune LoRA adapters on a 4-bit NF4 base (QLoRA) or on the float base (LoRA), loss on completion tokens
    only; checkpoints, resume, loss log and plot; the adapter is then a variant ('quantcal eval --adapter OUT')."""
    with user_errors():
        from quantcal import api
        from quantcal.finetune.base import BaseConfig
        from quantcal.finetune.train import LoraSettings, TrainSettings

        base = BaseConfig(method, base_form, quant_type, 64, double_quant)  # type: ignore[arg-type]
        train = TrainSettings(steps=steps if steps is not None or epochs is not None else 100, epochs=epochs, lr=lr,
                              warmup_steps=warmup_steps, batch_size=batch_size, grad_accum=grad_accum,
                              max_length=max_length, seed=seed, save_every=save_every, eval_every=eval_every,
                              val_size=val_size, gradient_checkpointing=gradient_checkpointing, optim=optim)
        targets = tuple(t.strip() for t in target_modules.split(",") if t.strip())
        lora = LoraSettings(r, alpha, dropout, targets or ("all-linear",))
        quiet_transformers()
        result = api.train_adapter(data, target, model=model, base=base, lora=lora, train=train, data_file=data_file,
                                   skip=skip, take=take, holdout=holdout, resume=resume, device=device,
                                   progress=step_bar, say=say)
        meta = result.meta
        table = Table(title=f"{method} ({base_form if method == 'qlora' else 'float'} base) · {result.base}")
        table.add_column("")
        table.add_column("value", justify="right")
        for label, value in [("steps", str(meta["steps_done"])), ("training examples", str(meta["data"]["n_train"])),
                             ("train loss, first 10 steps", f"{meta['first_train_loss']:.4f}"),
                             ("train loss, last 10 steps", f"{meta['final_train_loss']:.4f}"),
                             ("held-out eval loss", "—" if meta["final_eval_loss"] is None else f"{meta['final_eval_loss']:.4f}"),
                             ("seconds per step (median, this session)", "—" if meta["seconds_per_step_median"] is None else f"{meta['seconds_per_step_median']:.2f}")]:
            table.add_row(label, value)
        out.print(table)
        console.print(f"adapter: {result.adapter}  (evaluate: quantcal eval --adapter {result.out})")
