"""Are quantcal's deployment formats llmcompressor's? ``fp8``, ``w8a8``, ``nvfp4`` (and ``mxfp4``) against the
checkpoints llmcompressor's ``oneshot`` writes with the matching compressed-tensors preset, scored by
compressed-tensors' own fake-quantized forward.

llmcompressor 0.14 pins transformers <= 5.17, so it runs in its own environment (``--llmc-python``; the worker is
``llmcompressor_formats_worker.py``): ``QuantizationModifier(targets="Linear", scheme=PRESET, ignore=["lm_head"])``
on the float32 copy of the model, calibrated on the same token windows quantcal's recipe calibrates on (quantcal's
self-generated windows, ``WORK/calib.npy``; only NVFP4's static activation global scale uses them), saved
compressed. This environment's transformers loads the FP8 / INT8 checkpoints through compressed-tensors, which
dequantizes the weights and quantizes every linear's input at run time as the config says; FP4 checkpoints it loads
only in bfloat16 on CPU, so those are dequantized in float32 by compressed-tensors' own functions and scored with the
checkpoint's activation scheme (``fp4_as_variant``). That model scores the items, as does quantcal's simulated
variant of the matching recipe. Reported per format:

- weights: per block linear, the share of identical dequantized weights (llmcompressor's, dequantized in float32 by
  compressed-tensors' own functions, vs quantcal's built ones);
- activations: NVFP4's per-layer input global scales, quantcal's / llmcompressor's;
- per-choice log-likelihoods on the first ``--items`` PIQA items: share within 1e-3, largest gap, both accuracies.

    python benchmarks/llmcompressor_formats.py --llmc-python V/bin/python --work /tmp/llmc-formats --items 200
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
#: quantcal recipe -> compressed-tensors preset
FORMATS = {"fp8": "FP8_DYNAMIC", "w8a8": "W8A8", "nvfp4:nsamples=16": "NVFP4", "nvfp4:acts=none": "NVFP4A16",
           "mxfp4": "MXFP4"}


def run_worker(python: str, checkpoint: Path, calib: Path, scheme: str, out: Path) -> dict[str, Any]:
    if not (out / "run.json").is_file():
        start = time.perf_counter()
        subprocess.run([python, str(HERE / "llmcompressor_formats_worker.py"), "--checkpoint", str(checkpoint),
                        "--calib", str(calib), "--scheme", scheme, "--out", str(out)], check=True)
        run = json.loads((out / "run.json").read_text()) | {"process_seconds": time.perf_counter() - start}
        (out / "run.json").write_text(json.dumps(run, indent=1))
    return json.loads((out / "run.json").read_text())


def dequantized_weights(path: Path, scheme: Any) -> dict[str, torch.Tensor]:
    """Each quantized linear's weight in float32 as compressed-tensors dequantizes what the checkpoint stores: FP8 /
    INT8 codes times their scales; FP4 codes unpacked and scaled by the library's own functions (in float32: its
    ``decompress`` would round to bfloat16)."""
    from compressed_tensors.compressors import MXFP4PackedCompressor, NVFP4PackedCompressor
    from safetensors.torch import load_file

    from quantcal.checkpoints.microscaling_checkpoint import decompressed_weight

    state = load_file(str(path / "model.safetensors"))
    names = sorted({k.rsplit(".", 1)[0] for k in state if k.endswith(("weight_packed", "weight_scale"))})
    out = {}
    for name in names:
        if f"{name}.weight_packed" in state:
            compressor = NVFP4PackedCompressor if f"{name}.weight_global_scale" in state else MXFP4PackedCompressor
            entries = {k.rsplit(".", 1)[1]: v for k, v in state.items() if k.rsplit(".", 1)[0] == name}
            out[name] = decompressed_weight(compressor, entries, scheme)
        else:
            out[name] = state[f"{name}.weight"].float() * state[f"{name}.weight_scale"].float()
    return out


def fp4_as_variant(ll_dir: Path, target: Path, scheme: Any, preset: str) -> Path:
    """llmcompressor's FP4 checkpoint as a float32 folder quantcal scores (transformers loads FP4 checkpoints only in
    bfloat16 on CPU): the weights compressed-tensors dequantizes, in float32, and a record whose run-time block
    quantizes each linear's input as the checkpoint says (NVFP4: the checkpoint's ``input_global_scale``; MXFP4:
    dynamic). quantcal's activation quantizers equal compressed-tensors' ``forward_quantize`` in float32
    (tests/test_model_export.py), so this is compressed-tensors' forward without its bfloat16 rounding."""
    import shutil

    from safetensors.torch import load_file, save_file

    if (target / "quantcal-variant.json").is_file():
        return target
    state = load_file(str(ll_dir / "model.safetensors"))
    weights = dequantized_weights(ll_dir, scheme)
    dense = {k: v.float() for k, v in state.items() if k.rsplit(".", 1)[0] not in weights}
    dense |= {f"{name}.weight": w for name, w in weights.items()}
    target.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in dense.items()}, str(target / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((ll_dir / "config.json").read_text())
    config.pop("quantization_config")
    (target / "config.json").write_text(json.dumps(config))
    for f in ll_dir.iterdir():
        if f.is_file() and f.suffix in (".json", ".jinja") and f.name not in ("config.json", "run.json"):
            shutil.copy(f, target / f.name)
    runtime = None
    if preset == "NVFP4":
        amax = {name: float(448 * 6 / state[f"{name}.input_global_scale"].float().item()) for name in weights}
        runtime = {"format": "nvfp4", "per": "group", "amax": amax}
    elif preset == "MXFP4":
        runtime = {"format": "mxfp4", "per": "group", "rounding": "nearest"}
    record = {"recipe": f"llmcompressor:{preset}", **({"runtime": {"activations": runtime}} if runtime else {})}
    (target / "quantcal-variant.json").write_text(json.dumps(record))
    return target


def _logliks(frame: Any) -> np.ndarray:
    return np.concatenate([np.asarray(x, float) for x in frame.sort_values("position").logliks])


def scale_probes(ours: Path, theirs: Path, work: Path, frames: dict[str, Any], piqa: Path, items: int) -> dict[str, Any]:
    """NVFP4's static activation global scales: quantcal's variant scored with llmcompressor's scales instead of its
    own (the weights are the same bit for bit), and with its own scales moved by 1e-7 (relative): how much of the
    gap the scales alone make, and how sensitive W4A4 is to them."""
    import shutil

    import quantcal

    theirs_amax = json.loads((theirs / "quantcal-variant.json").read_text())["runtime"]["activations"]["amax"]
    out: dict[str, Any] = {}
    for name, change in (("quantcal_weights_llmc_scales", lambda a: theirs_amax),
                         ("quantcal_scales_times_1_plus_1e-7", lambda a: {k: float(np.float32(v * (1 + 1e-7)))
                                                                         for k, v in a.items()})):
        folder = work / f"probe_{name}"
        if not folder.exists():
            shutil.copytree(ours, folder)
            record = json.loads((folder / "quantcal-variant.json").read_text())
            record["runtime"]["activations"]["amax"] = change(record["runtime"]["activations"]["amax"])
            (folder / "quantcal-variant.json").write_text(json.dumps(record))
        store = work / "scores.sqlite"
        quantcal.evaluate(str(folder), "piqa", data_file=piqa, limit=items, store=store, name=name, dtype="float32")
        table = quantcal.load_items(store)
        probe = _logliks(table[table.variant == name])
        against = "llmcompressor" if name.startswith("quantcal_weights") else "quantcal"
        gap = np.abs(probe - _logliks(frames[against]))
        out[name] = {"against": against, "share_within_1e-3": float(np.mean(gap <= 1e-3)), "max_gap": float(gap.max()),
                     "median_gap": float(np.median(gap))}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--llmc-python", required=True)
    parser.add_argument("--formats", default=",".join(FORMATS), help="quantcal recipes, ',' between (see FORMATS)")
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--data-dir", type=Path, default=HERE.parent.parent / "shared" / "data")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()

    from compressed_tensors.quantization import preset_name_to_scheme
    from transformers import AutoModelForCausalLM

    import quantcal
    from llmcompressor_parity import calibration_file
    from quantcal.recipes.layers import block_linears
    from quantcal.cli.common import quiet_transformers
    from quantcal.sources.models import dequantized_gguf_copy, load_model, resolve_source

    quiet_transformers()
    args.work.mkdir(parents=True, exist_ok=True)
    source = resolve_source(args.model)
    checkpoint = dequantized_gguf_copy(source) if source.kind in ("bundled", "gguf") else Path(source.location)
    ref = load_model(source, "float32")
    calib = calibration_file(args.work, ref.model, ref.tokenizer, source, 16, 512, 0)
    del ref
    piqa = args.data_dir / "piqa" / "validation.jsonl"
    report: dict[str, Any] = {"model": args.model, "items": args.items, "formats": {}}
    for recipe in args.formats.split(","):
        scheme = FORMATS[recipe]
        ll_dir = args.work / f"llmcompressor_{scheme}"
        run = run_worker(args.llmc_python, checkpoint, calib, scheme, ll_dir)
        variant = quantcal.quantize(args.model, recipe)
        ct_scheme = preset_name_to_scheme(scheme, ["Linear"])
        theirs = dequantized_weights(ll_dir, ct_scheme)
        ours = dict(block_linears(AutoModelForCausalLM.from_pretrained(variant.path, dtype=torch.float32)))
        same = {n: float((ours[n].weight.data == theirs[n]).float().mean()) for n in ours}
        entry: dict[str, Any] = {"preset": scheme, "llmcompressor_run": run,
                                 "identical_weights_mean": float(np.mean(list(same.values()))),
                                 "identical_weights_min": float(min(same.values())),
                                 "layers_all_identical": int(sum(v == 1.0 for v in same.values())), "layers": len(same)}
        amax = (variant.meta.get("runtime", {}).get("activations") or {}).get("amax")
        if amax and scheme == "NVFP4":
            from safetensors.torch import load_file

            state = load_file(str(ll_dir / "model.safetensors"))
            ratios = [float(448 * 6 / amax[n] / state[f"{n}.input_global_scale"].float().item()) for n in ours]
            entry["input_global_scale_ratio_quantcal_over_llmc"] = {"median": float(np.median(ratios)),
                                                                   "min": min(ratios), "max": max(ratios)}
        scored = fp4_as_variant(ll_dir, args.work / f"float32_{scheme}", ct_scheme, scheme) if "FP4" in scheme else ll_dir
        frames = {}
        store = args.work / "scores.sqlite"
        for kind, model, spec in (("quantcal", args.model, recipe), ("llmcompressor", str(scored), None)):
            name = f"{kind}-{scheme}"
            quantcal.evaluate(model, "piqa", recipe=spec, data_file=piqa, limit=args.items, store=store, name=name,
                              dtype="float32")
            items = quantcal.load_items(store)
            frames[kind] = items[items.variant == name].sort_values("position")
        a = np.concatenate([np.asarray(x, float) for x in frames["quantcal"].logliks])
        b = np.concatenate([np.asarray(x, float) for x in frames["llmcompressor"].logliks])
        gap = np.abs(a - b)
        entry["choices"] = {"items": len(frames["quantcal"]), "choices": int(gap.size),
                            "share_within_1e-3": float(np.mean(gap <= 1e-3)), "max_gap": float(gap.max()),
                            "median_gap": float(np.median(gap)),
                            "acc_quantcal": float(frames["quantcal"].correct.mean()),
                            "acc_llmcompressor": float(frames["llmcompressor"].correct.mean()),
                            "same_prediction": float(np.mean(frames["quantcal"].pred.to_numpy()
                                                             == frames["llmcompressor"].pred.to_numpy()))}
        if scheme == "NVFP4":  # W4A4: what the (float-rounding) difference of the static activation scales does
            entry["scales"] = scale_probes(variant.path, scored, args.work, frames, piqa, args.items)
        print(recipe, scheme, json.dumps({k: v for k, v in entry.items() if k != "llmcompressor_run"}), flush=True)
        report["formats"][recipe] = entry
    out = args.output or HERE / "results" / f"llmcompressor_formats_{args.model}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(out.read_text()) if out.is_file() else {}
    if previous.get("items") == args.items:  # a run of some formats adds to (or replaces) those rows only
        report["formats"] = {**previous.get("formats", {}), **report["formats"]}
    out.write_text(json.dumps(report, indent=1))
    print(f"written {out}")


if __name__ == "__main__":
    main()
