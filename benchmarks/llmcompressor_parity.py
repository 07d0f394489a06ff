"""Are quantcal's in-house GPTQ and AWQ the published algorithms? Compared with llmcompressor on the same windows.

llmcompressor 0.14 pins transformers <= 5.17, so it runs in its own environment (``--llmc-python``; the worker is
``llmcompressor_worker.py``). Both read the same calibration windows (quantcal's self-generated ones, written to
``WORK/calib.npy``), the same reference checkpoint (the dequantized safetensors copy of the bundled GGUF, float32),
and use the same settings: ``bits``, group size, asymmetric integer grid, no activation ordering (quantcal
``desc_act=false``, llmcompressor ``actorder=None``), damping 0.01 of the mean Hessian diagonal, blocks of 128
columns, sequential block-by-block inputs; AWQ with ``n_grid=20``, activation-only scales (llmcompressor
``duo_scaling=False``) and no clipping search (quantcal ``clip=false``: llmcompressor has none).

Reported per method:
- GPTQ, per block linear: the share of identical integer codes (compressed-tensors' signed codes shifted by
  ``2^(bits-1)`` to quantcal's unsigned range), the share of identical group scales, and each one's relative output
  error ``||X (W_q - W)^T|| / ||X W^T||`` on quantcal's fixed probe (the reference's own activations);
- both methods, per decoder block: the relative error of the block's output hidden states against the reference's
  on the probe (a function-level comparison that also holds for AWQ, whose llmcompressor checkpoint folds its
  scales into the norms);
- accuracy, ECE and NLL of each variant on the first ``--items`` PIQA items, and the paired difference
  llmcompressor − quantcal with intervals.

    python benchmarks/llmcompressor_parity.py --llmc-python /path/to/llmc-venv/bin/python --work /tmp/llmc-work
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent


def calibration_file(work: Path, model: Any, tokenizer: Any, source: Any, nsamples: int, seqlen: int, seed: int) -> Path:
    from quantcal.recipes.calibration import calibration_ids

    path = work / "calib.npy"
    if not path.is_file():
        ids = calibration_ids(model, tokenizer, "self", nsamples, seqlen, seed, fingerprint=source.fingerprint)
        np.save(path, ids.numpy())
    return path


def run_llmcompressor(python: str, checkpoint: Path, calib: Path, method: str, args: argparse.Namespace, out: Path) -> float:
    if not (out / "run.json").is_file():
        start = time.perf_counter()
        subprocess.run([python, str(HERE / "llmcompressor_worker.py"), "--checkpoint", str(checkpoint), "--calib", str(calib),
                        "--method", method, "--bits", str(args.bits), "--group-size", str(args.group_size),
                        "--damp", str(args.damp), "--out", str(out)], check=True)
        process = time.perf_counter() - start
        run = json.loads((out / "run.json").read_text())
        run["process_seconds"] = process
        (out / "run.json").write_text(json.dumps(run, indent=1))
    return float(json.loads((out / "run.json").read_text())["seconds"])


def run_quantcal(source: Any, calib: Path, method: str, args: argparse.Namespace, out: Path) -> float:
    """quantcal's GPTQ or AWQ on the same windows, saved as a float checkpoint (+ GPTQ's codes)."""
    from safetensors.torch import save_file

    from quantcal.sources.models import load_model
    from quantcal.recipes.awq import awq_model
    from quantcal.recipes.gptq import gptq_model

    if (out / "run.json").is_file():
        return float(json.loads((out / "run.json").read_text())["seconds"])
    lm = load_model(source, "float32")
    ids = torch.from_numpy(np.load(calib))
    start = time.perf_counter()
    results: dict[str, Any] = {}
    if method in ("gptq", "gptq-static"):
        gptq_model(lm.model, ids, args.bits, args.group_size, False, args.damp, False, results=results,
                   static_groups=method == "gptq-static")
    else:
        awq_model(lm.model, ids, args.bits, args.group_size, 20, False)
    seconds = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    lm.model.save_pretrained(out, safe_serialization=True)
    lm.tokenizer.save_pretrained(out)
    if results:
        codes = {}
        for name, r in results.items():
            cols = r.weight.shape[1]
            scale = r.scales.repeat_interleave(args.group_size, dim=1)[:, :cols]
            zero = r.zeros.repeat_interleave(args.group_size, dim=1)[:, :cols]
            codes[f"{name}.codes"] = torch.round(r.weight.double() / scale + zero).to(torch.int16).contiguous()
            codes[f"{name}.scale"] = r.scales.float().contiguous()
        save_file(codes, str(out / "codes.safetensors"))
    (out / "run.json").write_text(json.dumps({"method": method, "seconds": seconds}))
    return seconds


def block_linear_weights(path: Path, names: list[str]) -> dict[str, torch.Tensor]:
    from quantcal.recipes.build import checkpoint_tensors

    found = checkpoint_tensors(path, [f"{n}.weight" for n in names])
    return {k.removesuffix(".weight"): v for k, v in found.items()}


def code_agreement(ours: Path, theirs: Path, names: list[str], bits: int) -> dict[str, dict[str, float]]:
    """Per layer: the share of identical codes and of identical group scales (relative difference < 1e-5)."""
    from safetensors.torch import load_file

    a, b = load_file(str(ours / "codes.safetensors")), load_file(str(theirs / "codes.safetensors"))
    shift = 2 ** (bits - 1)
    out = {}
    for n in names:
        same = (a[f"{n}.codes"].to(torch.int32) == b[f"{n}.codes"].to(torch.int32) + shift).double().mean()
        sa = a[f"{n}.scale"].double()
        sb = b[f"{n}.scale"].double().reshape(sa.shape)
        scales = ((sa - sb).abs() <= 1e-5 * sb.abs().clamp_min(1e-12)).double().mean()
        out[n] = {"identical_codes": float(same), "identical_scales": float(scales)}
    return out


def block_output_errors(model: torch.nn.Module, probe: torch.Tensor, weights_from: Path | None) -> list[torch.Tensor]:
    """Each decoder block's output hidden states on the probe (the model as saved at ``weights_from``, if given)."""
    from quantcal.recipes.layers import decoder_layers

    if weights_from is not None:
        from safetensors.torch import load_file

        state = {}
        for f in sorted(weights_from.glob("*.safetensors")):
            if f.name != "codes.safetensors":
                state.update(load_file(str(f)))
        missing, _ = model.load_state_dict(state, strict=False)
        assert not [m for m in missing if "lm_head" not in m], missing
    outputs: list[list[torch.Tensor]] = [[] for _ in decoder_layers(model)]
    handles = [layer.register_forward_hook(lambda m, a, o, i=i: outputs[i].append((o[0] if isinstance(o, tuple) else o).detach()))
               for i, layer in enumerate(decoder_layers(model))]
    try:
        with torch.inference_mode():
            for start in range(0, probe.shape[0], 4):
                model(probe[start:start + 4], use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return [torch.cat(o) for o in outputs]


def relative(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm((a - ref).double()) / torch.linalg.vector_norm(ref.double()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--llmc-python", required=True)
    parser.add_argument("--methods", default="gptq,awq")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--damp", type=float, default=0.01)
    parser.add_argument("--nsamples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--data-dir", type=Path, default=HERE.parent.parent / "shared" / "data")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()

    from quantcal import api
    from quantcal.sources.models import dequantized_gguf_copy, load_model, resolve_source
    from quantcal.recipes.layers import block_linears
    from quantcal.recipes.build import probe_ids, probe_layer_errors

    args.work.mkdir(parents=True, exist_ok=True)
    source = resolve_source(args.model)
    checkpoint = dequantized_gguf_copy(source) if source.kind in ("bundled", "gguf") else Path(source.location)
    ref = load_model(source, "float32")
    calib = calibration_file(args.work, ref.model, ref.tokenizer, source, args.nsamples, args.seqlen, args.seed)
    probe = probe_ids(ref.model, ref.tokenizer, source)
    names = [n for n, _ in block_linears(ref.model)]
    originals = {n: m.weight.data.clone() for n, m in block_linears(ref.model)}
    reference_blocks = block_output_errors(ref.model, probe, None)
    piqa = args.data_dir / "piqa" / "validation.jsonl"
    store = args.work / "scores.sqlite"
    api.evaluate(str(checkpoint), "piqa", name="reference", data_file=piqa, limit=args.items, store=store)
    report: dict[str, Any] = {"model": args.model, "settings": vars(args) | {"work": str(args.work), "data_dir": str(args.data_dir),
                                                                              "output": None},
                              "calibration_windows": list(np.load(calib).shape), "methods": {}}
    for method in args.methods.split(","):
        ll_dir = args.work / f"llmcompressor_{method}"
        ll_seconds = run_llmcompressor(args.llmc_python, checkpoint, calib, method, args, ll_dir)
        # quantcal as it ships, and for GPTQ also with every group's scale fixed before the updates (llmcompressor's way)
        ours = {method: args.work / f"quantcal_{method}"} | ({"gptq-static": args.work / "quantcal_gptq-static"}
                                                             if method == "gptq" else {})
        entry: dict[str, Any] = {"seconds": {"llmcompressor": ll_seconds},
                                 "llmcompressor_run": json.loads((ll_dir / "run.json").read_text())}
        err_ll = probe_layer_errors(ref.model, ref.tokenizer, originals, block_linear_weights(ll_dir, names), source)
        for label, qc_dir in ours.items():
            entry["seconds"][f"quantcal {label}"] = run_quantcal(source, calib, label, args, qc_dir)
            if method != "gptq":
                continue  # AWQ's llmcompressor checkpoint folds its scales into the norms: compared by block outputs
            agree = code_agreement(qc_dir, ll_dir, names, args.bits)
            err_qc = probe_layer_errors(ref.model, ref.tokenizer, originals, block_linear_weights(qc_dir, names), source)
            layers = {n: {**agree[n], "error_quantcal": err_qc[n], "error_llmcompressor": err_ll[n],
                          "error_ratio_llmcompressor_over_quantcal": err_ll[n] / err_qc[n] if err_qc[n] else None}
                      for n in names}
            codes = np.array([agree[n]["identical_codes"] for n in names])
            ratios = np.array([err_ll[n] / err_qc[n] for n in names if err_qc[n]])
            entry[f"layers {label}"] = layers
            entry[f"summary {label}"] = {
                "identical_codes_mean": float(codes.mean()), "identical_codes_min": float(codes.min()),
                "identical_scales_mean": float(np.mean([agree[n]["identical_scales"] for n in names])),
                "error_ratio_median": float(np.median(ratios)), "error_ratio_min": float(ratios.min()),
                "error_ratio_max": float(ratios.max()),
                "layers_where_llmcompressor_has_lower_error": int((ratios < 1).sum()), "layers": len(ratios)}
        # a quantcal variant whose codes all equal llmcompressor's is the same model: its block errors are shown,
        # its scoring would repeat llmcompressor's
        same = [label for label in ours if entry.get(f"summary {label}", {}).get("identical_codes_mean") == 1.0]
        folders = {f"quantcal-{label}": d for label, d in ours.items()} | {f"llmcompressor-{method}": ll_dir}
        scored = {name: d for name, d in folders.items() if name.removeprefix("quantcal-") not in same}
        entry["block_output_error"] = {
            name: [relative(o, r) for o, r in zip(block_output_errors(load_model(source, "float32").model, probe, folder),
                                                  reference_blocks)] for name, folder in folders.items()}
        metrics = ("acc", "ece", "nll", "brier")
        entry["identical_to_llmcompressor"] = same
        for name, folder in scored.items():
            api.evaluate(str(folder), "piqa", name=name, data_file=piqa, limit=args.items, store=store)
            c = api.compare(store, "reference", name, "piqa", names=metrics)
            entry[f"{name} vs reference"] = {m: c.differences[m].to_json() for m in metrics}
        for label in ours:
            if label in same:
                continue
            c = api.compare(store, f"quantcal-{label}", f"llmcompressor-{method}", "piqa", names=metrics)
            entry[f"llmcompressor-{method} minus quantcal-{label}"] = {m: c.differences[m].to_json() for m in metrics}
        entry["metrics"] = {r.variant: {k: v.estimate for k, v in r.values.items()}
                            for r in api.store_metrics(store, metrics, resamples=200)
                            if r.variant == "reference" or r.variant in scored}
        report["methods"][method] = entry
        print(json.dumps({method: {k: v for k, v in entry.items() if not k.startswith("layers") and k != "llmcompressor_run"}},
                         indent=1))
    target = args.output or HERE / "results" / f"llmcompressor_parity_{args.model}.json"
    target.write_text(json.dumps(report, indent=1))
    print(f"wrote {target}")


if __name__ == "__main__":
    sys.exit(main())
