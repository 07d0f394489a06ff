"""The ``quantcal`` command line."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from quantcal.errors import QuantcalError
from quantcal.scoring import DEFAULT_MAX_BATCH_TOKENS

app = typer.Typer(
    help="quantcal: when you compress an LLM, what happens to how much you can trust its confidence?",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)
DEFAULT_MODEL = "smollm2-135m-instruct"


@contextmanager
def user_errors() -> Iterator[None]:
    """Print a user error as one line and exit 2; Ctrl-C exits 130 with a hint that work was kept."""
    try:
        yield
    except QuantcalError as exc:
        console.print(Text.assemble(("error: ", "bold red"), str(exc)), soft_wrap=True, highlight=False)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: finished work is kept; run the same command again to resume (finetune: add --resume)")
        raise typer.Exit(130) from None


def _quiet_transformers() -> None:
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _progress(description: str, total: int):  # noqa: ANN202 - tqdm object
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="item", dynamic_ncols=True, file=sys.stderr)


@app.command("eval")
def eval_command(
    model: Optional[str] = typer.Option(None, "--model", "-m", help=f"Bundled name (smollm2-135m-instruct, gemma3-270m), a .gguf file, a local HF checkpoint directory, or a hub id. Default: {DEFAULT_MODEL} (with --adapter: the adapter's base)."),
    task: str = typer.Option("arithmetic", "--task", "-t", help="Task name(s), comma-separated. 'quantcal tasks' lists them; 'arithmetic' is the built-in offline demo."),
    data_file: Optional[Path] = typer.Option(None, "--data-file", help="Local copy of the task's data in Hugging Face schema (.jsonl/.json/.parquet/.csv); one task only."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Score only the first N items of each task."),
    batch_size: int = typer.Option(64, "--batch-size", help="Choice rows per forward pass (an item's choices always share one batch)."),
    max_batch_tokens: int = typer.Option(DEFAULT_MAX_BATCH_TOKENS, "--max-batch-tokens", help="Padded token positions per forward pass (rows x width); 0: no cap. Bounds memory; 1-2k is fastest on CPU."),
    store: Optional[Path] = typer.Option(None, "--store", help="SQLite store to write to (resumes what it already holds). Default: quantcal-out/<model>.sqlite"),
    output_json: Optional[Path] = typer.Option(None, "--output-json", help="Write {model, results: {task: {n, acc, acc_norm}}} here."),
    name: Optional[str] = typer.Option(None, "--name", help="Variant name in the store (default: the model's name)."),
    template: Optional[str] = typer.Option(None, "--template", help="Prompt template for the custom task, e.g. 'Q: {question}\\nA:'."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (float32 on CPU, bfloat16 on GPU), float32, bfloat16, float16."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:0, ..."),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="Model window for left truncation (default: from the model config, as lm-eval)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow a hub model's own Python code to run."),
    recipe: Optional[str] = typer.Option(None, "--recipe", "-r", help="Compress the model first, e.g. rtn:bits=4,group_size=64, gptq:bits=4, gguf:q4_0, bnb:nf4 (built once, cached). With --adapter: re-quantize the merged model."),
    adapter: Optional[Path] = typer.Option(None, "--adapter", help="A LoRA adapter (a 'quantcal finetune' output or any peft adapter folder) on --model (default: the base it was trained on)."),
    deploy: Optional[str] = typer.Option(None, "--deploy", help="How the adapter is served: nf4 (on the 4-bit base it was trained on, simulated; default), nf4-native (bitsandbytes 4-bit modules, slow on CPU), merged (into the float base; the default with --recipe)."),
) -> None:
    """Score a model on tasks: per-choice log-likelihoods into the store, then acc and acc_norm."""
    with user_errors():
        from quantcal.evaluate import Job, ScoringOptions, require_positive, run_job, store_path_default
        from quantcal.predictions import task_summary
        from quantcal.store import open_store
        from quantcal.tasks import get_task

        require_positive(batch_size, "--batch-size")
        if max_batch_tokens < 0:
            raise QuantcalError(f"--max-batch-tokens must be 0 (no cap) or positive, got {max_batch_tokens}")
        if limit is not None:
            require_positive(limit, "--limit")
        task_names = [t.strip() for t in task.split(",") if t.strip()]
        if not task_names:
            raise QuantcalError("--task is empty")
        if data_file is not None and len(task_names) != 1:
            raise QuantcalError("--data-file goes with exactly one --task")
        tasks = [get_task(t, template if t == "custom" else None) for t in task_names]
        if template is not None and "custom" not in task_names:
            raise QuantcalError("--template applies to the custom task only")
        if data_file is not None and not data_file.is_file():
            raise QuantcalError(f"{data_file}: file not found")
        _quiet_transformers()
        from quantcal.loading import VariantDef, prepare

        defn = VariantDef(model or (None if adapter is not None else DEFAULT_MODEL), recipe,
                          str(adapter) if adapter is not None else None, deploy)
        options = ScoringOptions(batch_size=batch_size, max_batch_tokens=max_batch_tokens or None, dtype=dtype,
                                 device=device, max_length=max_length,
                                 trust_remote_code=trust_remote_code)
        source, extra, holder = prepare(defn, options, lambda m: console.print(m, highlight=False))
        variant = name or _variant_name(source.name, extra)
        store_path = store or store_path_default(variant)
        results: dict[str, dict[str, float]] = {}
        with open_store(store_path) as db:
            for t in tasks:
                job = Job(variant, source, t, str(data_file) if data_file else None, limit,
                          template if t.name == "custom" else None, extra)
                outcome = run_job(db, job, options, holder, _progress)
                scored = db.scored_items(outcome.run_id)
                if outcome.n_errors:
                    console.print(Text.assemble(("warning: ", "yellow"), f"{t.name}: {outcome.n_errors} item(s) could not be scored; see 'quantcal export'"), soft_wrap=True)
                if not scored:
                    raise QuantcalError(f"{t.name}: no item could be scored")
                wanted = set(outcome.item_ids)  # this invocation's items (a store may hold more, from a larger --limit)
                scored = [s for s in scored if s.item_id in wanted]
                results[t.name] = task_summary(scored, t.kind)
        _print_summary(variant, results)
        console.print(f"store: {store_path}")
        if output_json is not None:
            output_json.parent.mkdir(parents=True, exist_ok=True)
            payload = {"model": source.spec, "variant": variant, "store": str(store_path),
                       "results": {k: {m: (int(v) if m == "n" else v) for m, v in r.items()} for k, r in results.items()}}
            output_json.write_text(json.dumps(payload, indent=2))
            console.print(f"results: {output_json}")


def _variant_name(base: str, extra: dict) -> str:
    """A readable default name: base, adapter form, recipe slug (``smollm2-135m-instruct/adapter-nf4``)."""
    parts = [base]
    if "adapter" in extra:
        parts.append(f"adapter-{extra['deploy']}")
    if "recipe" in extra:
        from quantcal.recipes import parse_recipe

        parts.append(parse_recipe(extra["recipe"]).slug)
    return "/".join(parts)


def _print_summary(variant: str, results: dict[str, dict[str, float]]) -> None:
    table = Table(title=f"quantcal · {variant}")
    for column in ("task", "n", "acc", "acc_norm"):
        table.add_column(column, justify="right" if column != "task" else "left")
    for task_name, r in results.items():
        table.add_row(task_name, str(int(r["n"])), f"{r['acc']:.4f}", f"{r['acc_norm']:.4f}" if "acc_norm" in r else "—")
    Console().print(table)


@app.command("quantize")
def quantize_command(
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="The reference model (bundled name, .gguf, checkpoint dir, hub id)."),
    recipe: str = typer.Option(..., "--recipe", "-r", help="rtn:bits=4,group_size=64 | gptq:bits=4,group_size=64 | awq:bits=4,group_size=64 | hqq:bits=3 | gguf:q4_k | bnb:nf4[,mode=native] | quanto:qint4 ... (quantcal recipes lists every parameter)"),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the variant here instead of the cache."),
) -> None:
    """Build one compressed variant (cached: a second build with the same recipe is instant) and report it."""
    with user_errors():
        from quantcal.models import resolve_source
        from quantcal.recipes import parse_recipe
        from quantcal.recipes.variants import build_variant, variant_meta

        spec = parse_recipe(recipe)
        _quiet_transformers()
        path = build_variant(resolve_source(model), spec, out, progress=lambda m: console.print(m, highlight=False))
        meta = variant_meta(path)
        table = Table(title=f"{model} · {spec.key}")
        table.add_column("")
        table.add_column("value", justify="right")
        rows = [("execution mode", meta.get("mode", "simulated")),
                ("bits per weight (quantized layers)", f"{meta['bits_per_weight']:.3f}"),
                ("packed size (MB, other weights 16-bit)", f"{meta['packed_size_mb']:.1f}"),
                ("checkpoint on disk (MB, simulated float)",
                 f"{meta['checkpoint_size_mb']:.1f}" if "checkpoint_size_mb" in meta else "none (native: built at load)"),
                ("build time (s)", f"{meta['build_seconds']:.1f}"),
                ("mean relative layer output error", f"{meta['mean_layer_error']:.4f}"),
                ("quantized layers", str(meta["quantized_layers"]))]
        if meta.get("gguf_fallback_layers"):
            rows.append(("GGUF types (llama.cpp fallback for narrow layers)",
                         ", ".join(f"{k} x{v}" for k, v in meta["gguf_type_counts"].items())))
        for label, value in rows:
            table.add_row(label, value)
        Console().print(table)
        console.print(f"variant: {path}")


@app.command("finetune")
def finetune_command(
    data: str = typer.Option(..., "--data", help="Training source: task:NAME (a benchmark's items as prompt + gold answer; rows from --data-file, else the hub train split), a .jsonl of {prompt, completion} or {messages}, or hub:ORG/NAME[:SPLIT]."),
    out: Path = typer.Option(..., "--out", help="Run directory: checkpoints/, log.csv, loss.png, adapter/ (peft format + quantcal-finetune.json)."),
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
        from quantcal.finetune.base import BaseConfig
        from quantcal.finetune.data import check_disjoint, load_examples
        from quantcal.finetune.train import FinetuneRun, LoraSettings, TrainSettings, finetune
        from quantcal.models import load_tokenizer, resolve_source

        base = BaseConfig(method, base_form, quant_type, 64, double_quant)  # type: ignore[arg-type]
        settings = TrainSettings(steps=steps if steps is not None or epochs is not None else 100, epochs=epochs, lr=lr,
                                 warmup_steps=warmup_steps, batch_size=batch_size, grad_accum=grad_accum,
                                 max_length=max_length, seed=seed, save_every=save_every, eval_every=eval_every,
                                 val_size=val_size, gradient_checkpointing=gradient_checkpointing, optim=optim)
        targets = tuple(t.strip() for t in target_modules.split(",") if t.strip())
        lora = LoraSettings(r, alpha, dropout, targets or ("all-linear",))
        _quiet_transformers()
        source = resolve_source(model)
        examples = load_examples(data, str(data_file) if data_file else None, skip, take, load_tokenizer(source))
        held = _holdout_items(holdout)
        if held:
            check_disjoint(examples, held)
            console.print(f"held out: {len(held)} evaluated item(s); none in the {len(examples)} training examples")
        else:
            console.print("[yellow]warning[/]: no --holdout given, so nothing checks that evaluated items are not trained on")
        run = FinetuneRun(source, base, lora, settings, {"source": data, "data_file": str(data_file) if data_file else None,
                                                          "skip": skip, "take": take, "held_out": holdout, "n_held_out": len(held)},
                          device)

        meta = finetune(run, examples, out, resume, _step_bar, lambda m: console.print(m, highlight=False))
        table = Table(title=f"{method} ({base_form if method == 'qlora' else 'float'} base) · {source.name}")
        table.add_column("")
        table.add_column("value", justify="right")
        for label, value in [("steps", str(meta["steps_done"])), ("training examples", str(meta["data"]["n_train"])),
                             ("train loss, first 10 steps", f"{meta['first_train_loss']:.4f}"),
                             ("train loss, last 10 steps", f"{meta['final_train_loss']:.4f}"),
                             ("held-out eval loss", "—" if meta["final_eval_loss"] is None else f"{meta['final_eval_loss']:.4f}"),
                             ("seconds per step (median, this session)", "—" if meta["seconds_per_step_median"] is None else f"{meta['seconds_per_step_median']:.2f}")]:
            table.add_row(label, value)
        Console().print(table)
        console.print(f"adapter: {out / 'adapter'}  (evaluate: quantcal eval --adapter {out})")


def _holdout_items(specs: list[str]) -> list:  # list[Item]
    """Items named by --holdout values: NAME, NAME=FILE, NAME=FILE@LIMIT or a study file (its tasks)."""
    from quantcal.tasks import get_task, load_items

    items = []
    for text in specs:
        if text.endswith((".yaml", ".yml")):
            from quantcal.study.runner import study_items
            from quantcal.study.spec import load_study

            items += study_items(load_study(Path(text)))
            continue
        name, _, rest = text.partition("=")
        path, _, limit = rest.rpartition("@") if "@" in rest else (rest, "", "")
        if limit and not limit.isdigit():
            raise QuantcalError(f"--holdout {text}: the limit after @ must be a number")
        items += load_items(get_task(name), path or None, int(limit) if limit else None)
    return items


@app.command("recipes")
def recipes_command() -> None:
    """List the compression recipes and their parameters."""
    from quantcal.recipes import FAMILIES

    for name, family in FAMILIES.items():
        Console().print(f"[bold]{name}[/]: {family.summary}")
        for key, param in family.params.items():
            default = "required" if param.default is None else f"default {param.default}"
            Console().print(f"    {key}: {param.describe()} ({default}){' — ' + param.help if param.help else ''}", highlight=False)


@app.command("export")
def export_command(
    store: Path = typer.Option(..., "--store", help="The SQLite store to read."),
    fmt: str = typer.Option("jsonl", "--format", help="jsonl, csv or parquet."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output file (default: next to the store, same name, new suffix)."),
    normalization: str = typer.Option("none", "--normalization", help="Length normalization for probabilities: none, tokens, chars, bytes."),
) -> None:
    """Write one record per scored item: per-choice log-likelihoods, gold, probabilities, prediction, confidence."""
    with user_errors():
        from quantcal.export import export_store
        from quantcal.store import open_store

        with open_store(store, create=False) as db:
            target = out or store.with_suffix(f".{fmt}")
            n = export_store(db, target, fmt, normalization)
        console.print(f"wrote {n} records to {target}")


@app.command("metrics")
def metrics_command(
    store: Path = typer.Argument(..., help="The SQLite store to read."),
    metrics: str = typer.Option(",".join(("acc", "ece", "ace", "brier", "nll", "overconfidence_rate", "smece", "auroc")), "--metrics", help="Comma-separated metric names ('quantcal metrics --list' shows them)."),
    resamples: int = typer.Option(1000, "--resamples", help="Bootstrap resamples for the 95% intervals."),
    normalization: str = typer.Option("none", "--normalization", help="none (Study B: p(y|x) = product of token probabilities), tokens, chars, bytes."),
    output_json: Optional[Path] = typer.Option(None, "--output-json", help="Write every number here."),
) -> None:
    """Accuracy and calibration of every run in a store, each with a 95% bootstrap interval."""
    with user_errors():
        from quantcal.metrics import get_metric
        from quantcal.store import open_store
        from quantcal.summary import run_metrics, run_predictions

        names = [m.strip() for m in metrics.split(",") if m.strip()]
        for name in names:
            get_metric(name)
        payload: dict = {}
        table = Table(title=f"{store.name} · normalization {normalization} · 95% bootstrap intervals")
        table.add_column("variant")
        table.add_column("task")
        for column in ("n", "metric", "estimate", "95% interval"):
            table.add_column(column, justify="right")
        with open_store(store, create=False) as db:
            for run in db.runs():
                if not db.done_item_ids(run.run_id):
                    continue
                preds, _ = run_predictions(db, run.variant, run.task, normalization)
                values = run_metrics(preds, names, resamples)
                payload.setdefault(run.variant, {})[run.task] = {"n": len(preds.item_ids), **values}
                for i, m in enumerate(names):
                    first = i == 0
                    table.add_row(run.variant if first else "", run.task if first else "", str(len(preds.item_ids)) if first else "",
                                  m, f"{values[m]['estimate']:.4f}", f"[{values[m]['low']:.4f}, {values[m]['high']:.4f}]",
                                  end_section=i == len(names) - 1)
        Console().print(table)
        if output_json is not None:
            output_json.write_text(json.dumps(payload, indent=2))


@app.command("compare")
def compare_command(
    store: Path = typer.Argument(..., help="The SQLite store holding both runs."),
    ref: str = typer.Option(..., "--ref", help="Reference variant name (as in the store)."),
    variant: str = typer.Option(..., "--variant", help="Compressed variant name."),
    task: str = typer.Option(..., "--task", help="Task both were scored on."),
    resamples: int = typer.Option(1000, "--resamples", help="Bootstrap resamples for the paired intervals."),
    normalization: str = typer.Option("none", "--normalization", help="none, tokens, chars, bytes."),
    output_json: Optional[Path] = typer.Option(None, "--output-json", help="Write every number here."),
) -> None:
    """Paired analysis of two variants on the same items: metric differences with intervals, p(gold) tests,
    flips, and changes by the reference's confidence (Study B)."""
    with user_errors():
        from quantcal.store import open_store
        from quantcal.summary import DEFAULT_METRICS, align, comparison_report

        with open_store(store, create=False) as db:
            aligned = align(db, ref, variant, task, normalization)
        report = comparison_report(aligned, DEFAULT_METRICS, resamples)
        out = Console()
        diff = Table(title=f"{variant} − {ref} on {task} (n = {report['n']}, paired, 95% interval; * excludes 0)")
        for column in ("metric", "difference", "interval"):
            diff.add_column(column, justify="right" if column != "metric" else "left")
        for name, iv in report["paired_difference"].items():
            star = " *" if iv["low"] > 0 or iv["high"] < 0 else ""
            diff.add_row(name, f"{iv['estimate']:+.4f}{star}", f"[{iv['low']:+.4f}, {iv['high']:+.4f}]")
        out.print(diff)
        a = report["analysis"]
        tests = a["tests"]
        out.print(f"mean Δp(gold) {a['mean_delta_p_gold']:+.4f}   mean |Δp(gold)| {a['mean_abs_delta_p_gold']:.4f}   "
                  f"mean JS distance {a['mean_js_distance']:.4f}   prediction flips {a['flip_rate']:.2%}", highlight=False)
        out.print(f"p(gold), all items: t-test p = {tests['p_gold_all']['t_pvalue']:.3g}, Wilcoxon p = {tests['p_gold_all']['wilcoxon_pvalue']:.3g}; "
                  f"reference-correct items: t-test p = {tests['p_gold_ref_correct']['t_pvalue']:.3g}; "
                  f"McNemar p = {tests['mcnemar']['pvalue']:.3g} ({int(tests['mcnemar']['correct_to_wrong'])} correct→wrong, "
                  f"{int(tests['mcnemar']['wrong_to_correct'])} wrong→correct)", highlight=False)
        strat = Table(title="by reference confidence (quantile bins)")
        for column in ("bin", "n", "ref confidence", "mean |Δp(gold)|", "mean JS", "flip rate"):
            strat.add_column(column, justify="right")
        for row in a["stratified"]["bins"]:
            strat.add_row(str(row["bin"]), str(row["n"]), f"{row['ref_confidence_low']:.2f}–{row['ref_confidence_high']:.2f}",
                          f"{row['mean_abs_delta_p_gold']:.4f}", f"{row['mean_js_distance']:.4f}", f"{row['flip_rate']:.2%}")
        out.print(strat)
        rho = a["stratified"]["spearman_ref_confidence_vs_abs_delta_p_gold"]
        out.print(f"Spearman(reference confidence, |Δp(gold)|) = {rho['rho']:.3f} (p = {rho['pvalue']:.3g})", highlight=False)
        if output_json is not None:
            output_json.write_text(json.dumps(report, indent=2))


def _step_bar(total: int, initial: int):  # noqa: ANN202 - tqdm object
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="fine-tuning", unit="step", dynamic_ncols=True, file=sys.stderr)


def _settings_from_spec(spec) -> "ReportSettings":  # noqa: ANN001, F821
    from quantcal.report.collect import ReportSettings
    from quantcal.study.spec import REFERENCE_NAME

    return ReportSettings(reference=REFERENCE_NAME, metrics=list(spec.metrics), normalizations=spec.normalizations,
                          resamples=spec.bootstrap.resamples, seed=spec.bootstrap.seed, level=spec.bootstrap.level,
                          recalibration=spec.recalibration.enabled, folds=spec.recalibration.folds,
                          confidence_bins=spec.confidence_bins)


@app.command("run")
def run_command(
    study: Optional[Path] = typer.Argument(None, help="Study YAML (schema in the README). Omit to run the built-in default study on the bundled SmolLM2."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Default study only: also run the benchmarks found here in hub schema (e.g. ../shared/data: piqa, openbookqa, hellaswag, boolq)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Cap every task at its first N items (for a quick or CI-sized run)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Report directory (overrides the study's 'output')."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and stop."),
    executor: str = typer.Option("local", "--executor", help="local (one job after another, in this process) or ray (jobs as Ray tasks; the driver alone writes the store)."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (e.g. ray://head:10001 or auto); default: start a local Ray instance."),
    job_cpus: float = typer.Option(1.0, "--job-cpus", help="Ray: CPUs each job declares (and the torch threads it uses)."),
    job_gpus: float = typer.Option(0.0, "--job-gpus", help="Ray: GPUs each job declares (1 by default when the study's device is cuda)."),
) -> None:
    """The main job: score the reference and every variant on every task (resuming what the study's store holds),
    then write the report: report.html, results.json, tables.md, tables.tex, items.parquet, figures/."""
    with user_errors():
        from quantcal.evaluate import require_positive
        from quantcal.report.write import write_report
        from quantcal.store import open_store
        from quantcal.study.runner import check_plan, plan, run_study, train_adapters
        from quantcal.study.spec import default_study, load_study

        if limit is not None:
            require_positive(limit, "--limit")
        if executor not in ("local", "ray"):
            raise QuantcalError(f"--executor must be local or ray, got {executor!r}")
        if executor == "local" and (address is not None or job_cpus != 1.0 or job_gpus != 0.0):
            raise QuantcalError("--address, --job-cpus and --job-gpus go with --executor ray")
        if study is not None and data_dir is not None:
            raise QuantcalError("--data-dir applies to the default study only; name data files in the study's tasks")
        if data_dir is not None and not data_dir.is_dir():
            raise QuantcalError(f"--data-dir {data_dir}: not a directory")
        spec = load_study(study) if study is not None else default_study(data_dir)
        if limit is not None:
            for t in spec.tasks:
                t.limit = min(t.limit, limit) if t.limit else limit
        if output is not None:
            spec.output = str(output)
        check_plan(spec)
        jobs = plan(spec)
        table = Table(title=f"plan · {spec.name} · {len(jobs)} jobs")
        for column in ("#", "variant", "model", "adapter / recipe", "task", "items"):
            table.add_column(column)
        for i, j in enumerate(jobs, 1):
            how = " + ".join(x for x in (f"adapter ({j.definition.deploy_form})" if j.adapter else "", j.recipe or "") if x)
            table.add_row(str(i), j.variant, j.model or "adapter's base", how or "—", j.task.name, str(j.task.limit or "all"))
        Console(stderr=True).print(table)
        if dry_run:
            return
        out_dir = Path(spec.output)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "study.json").write_text(spec.model_dump_json(indent=2))
        _quiet_transformers()
        say = lambda m: console.print(m, highlight=False)  # noqa: E731
        with open_store(out_dir / "study.sqlite") as db:
            trained = train_adapters(spec, _step_bar, say)
            if executor == "ray":
                from quantcal.study.ray_executor import RaySettings, run_study_ray

                outcomes = run_study_ray(spec, db, RaySettings(address, job_cpus, job_gpus), _progress, say)
            else:
                outcomes = run_study(spec, db, _progress, say)
            outcomes = [o for o in trained if not o.ok] + outcomes
            failures = [o.to_json() for o in outcomes if not o.ok]
            if len(failures) == len(outcomes):
                raise QuantcalError(f"every job failed; first: {failures[0]['error']}")
            page = write_report(db, out_dir, _settings_from_spec(spec), spec.name, failures, say)
        _print_study_summary(out_dir / "results.json")
        console.print(f"report: {page}")
        if failures:
            console.print(f"[red]{len(failures)} of {len(outcomes)} job(s) failed[/]; the report covers the others")
            raise typer.Exit(1)


def _print_study_summary(results_file: Path) -> None:
    results = json.loads(results_file.read_text())
    for task, by_norm in results["tasks"].items():
        norm, block = next(iter(by_norm.items()))
        table = Table(title=f"{task} · normalization {norm} · Δ vs reference (* interval excludes 0)")
        for column in ("variant", "n", "acc", "ECE", "Δacc", "ΔECE"):
            table.add_column(column, justify="left" if column == "variant" else "right")
        for name, v in block["variants"].items():
            m = v["metrics"]
            p = block["paired"].get(name, {}).get("difference", {})

            def cell(key: str, src: dict) -> str:  # noqa: ANN001
                iv = src.get(key)
                if not iv or iv.get("estimate") is None:
                    return "—"
                star = "*" if iv["low"] is not None and (iv["low"] > 0 or iv["high"] < 0) else ""
                return f"{iv['estimate']:+.4f}{star}"

            table.add_row(name, str(v["n"]), f"{m['acc']['estimate']:.4f}" if "acc" in m else "—",
                          f"{m['ece']['estimate']:.4f}" if "ece" in m else "—", cell("acc", p), cell("ece", p))
        Console().print(table)
        for flag in block["deployment"]["flags"]:
            console.print(f"[yellow]warning[/]: {flag['message']}", highlight=False)


@app.command("report")
def report_command(
    store: Path = typer.Argument(..., help="A study's store (study.sqlite) or any quantcal store."),
    ref: Optional[str] = typer.Option(None, "--ref", help="Reference variant (default: the study's reference, else 'reference', else the first run)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Report directory (default: the store's folder)."),
    resamples: Optional[int] = typer.Option(None, "--resamples", help="Bootstrap resamples (default: the study's, else 1000)."),
) -> None:
    """Rebuild the report from a store without scoring anything."""
    with user_errors():
        from quantcal.report.collect import ReportSettings
        from quantcal.report.write import write_report
        from quantcal.store import open_store
        from quantcal.study.spec import REFERENCE_NAME, StudySpec

        study_file = store.parent / "study.json"
        spec = StudySpec.model_validate_json(study_file.read_text()) if study_file.is_file() else None
        with open_store(store, create=False) as db:
            variants = list(dict.fromkeys(r.variant for r in db.runs()))
            if not variants:
                raise QuantcalError(f"{store}: the store holds no runs")
            settings = _settings_from_spec(spec) if spec else ReportSettings(reference=variants[0])
            if ref is not None:
                settings.reference = ref
            elif settings.reference not in variants:
                settings.reference = REFERENCE_NAME if REFERENCE_NAME in variants else variants[0]
            if settings.reference not in variants:
                raise QuantcalError(f"--ref {settings.reference!r} is not in the store; it holds {', '.join(variants)}")
            if resamples is not None:
                if resamples < 10:
                    raise QuantcalError("--resamples must be at least 10")
                settings.resamples = resamples
            page = write_report(db, output or store.parent, settings, spec.name if spec else store.stem,
                                say=lambda m: console.print(m, highlight=False))
        console.print(f"report: {page}")


@app.command("import-lm-eval")
def import_lm_eval_command(
    paths: list[Path] = typer.Argument(..., help="lm-eval --log_samples output: samples_<task>_<date>.jsonl files or folders holding them."),
    store: Path = typer.Option(..., "--store", help="SQLite store to write into (created if missing)."),
    variant: Optional[str] = typer.Option(None, "--variant", help="Variant name (default: lm-eval's model_name from its results file)."),
    task: Optional[str] = typer.Option(None, "--task", help="Task name in the store (default: lm-eval's task name); one samples file only."),
) -> None:
    """Put lm-eval's per-choice log-likelihoods into a store: then `quantcal metrics`, `compare` and `report`
    give calibration for a run you already have, without scoring anything again."""
    with user_errors():
        from quantcal.lm_eval_import import import_samples, samples_files
        from quantcal.predictions import task_summary
        from quantcal.store import open_store

        files = samples_files(paths)
        if task is not None and len(files) != 1:
            raise QuantcalError("--task names one task: give exactly one samples file")
        table = Table(title=f"imported into {store}")
        for column in ("variant", "task", "items", "acc (quantcal)", "acc (lm-eval)", "acc_norm (quantcal)", "acc_norm (lm-eval)"):
            table.add_column(column, justify="left" if column in ("variant", "task") else "right")
        with open_store(store) as db:
            for f in files:
                got = import_samples(db, f, variant, task)
                run = next(r for r in db.runs() if r.run_id == got.run_id)
                ours = task_summary(db.scored_items(got.run_id))
                theirs = got.lm_eval_metrics
                table.add_row(run.variant, got.task, str(got.n_items), f"{ours['acc']:.4f}",
                              f"{theirs['acc']:.4f}" if "acc" in theirs else "—", f"{ours['acc_norm']:.4f}",
                              f"{theirs['acc_norm']:.4f}" if "acc_norm" in theirs else "—")
        Console().print(table)


@app.command("tasks")
def tasks_command() -> None:
    """List the tasks, their hub source and what they measure."""
    from quantcal.tasks import TASKS

    table = Table(title="quantcal tasks")
    for column in ("task", "source", "about"):
        table.add_column(column)
    for t in TASKS.values():
        table.add_row(t.name, t.source, t.summary)
    Console().print(table)


@app.command("models")
def models_command() -> None:
    """List the bundled models (they install from the package registry and run offline)."""
    from quantcal.models import BUNDLED, INSTALL_HINT

    for name, about in BUNDLED.items():
        Console().print(f"[bold]{name}[/]: {about}")
    Console().print(f"install: {INSTALL_HINT}")


def main() -> None:  # pragma: no cover - console script entry
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
