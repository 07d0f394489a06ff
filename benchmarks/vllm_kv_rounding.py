"""How vLLM's CPU attention kernels store an FP8 KV cache, byte for byte: keys and values written by
``cpu_attn_reshape_and_cache`` (``kv_cache_dtype=fp8``) are read back from the cache and compared with E4M3 of
``x / scale`` rounded to nearest (ties to even: compressed-tensors, ``torch.float8_e4m3fn``) and rounded toward zero
(:func:`quantcal.recipes.number_formats.cast_e4m3_toward_zero`); then ``cpu_attention_with_kv_cache`` on that cache
is compared with attention computed by hand (float64) from the truncated keys and values.

The cache's layout inside a block is the kernel's own and is not documented; it was found by writing a single 1.0
at one (token, dim) and seeing where its byte lands (``--layout`` prints that probe), and is the same for FP8 and
for an unquantized cache of the same ISA. Run it in the environment that has vLLM (``scripts/setup_vllm.sh``)::

    /tmp/vllm-env/bin/python benchmarks/vllm_kv_rounding.py

With ``--layers``, the bundled SmolLM2 served by vLLM with ``kv_cache_dtype=fp8`` (its exported ``kv:fp8``
checkpoint, float32, in-process) and quantcal's simulation of ``kv:fp8`` under each rounding read the same prompt;
each attention layer's output is compared (the layer's query, and its output, vLLM's against the simulation's).

With ``--w8a8``, the same for vLLM's CPU W8A8 kernel (bfloat16, the only dtype it takes): the exported ``w8a8``
checkpoint served in-process, layer 0's fused q/k/v and its down projection's inputs and outputs captured, and
compared with ``Q_a(x) Q_w(W)^T`` computed here from the checkpoint's INT8 weights and scales and the per-token INT8
rounding of the captured input (and with the weights alone, W8A16, for contrast).

Writes ``benchmarks/results/vllm_kv_rounding_cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
from pathlib import Path

import torch

HEADS, KV_HEADS, DIM, BLOCK, TOKENS = 9, 3, 64, 32, 32  # SmolLM2-135M's attention: 9 query heads on 3 KV heads


def flat_index(t: int, d: int, isa: str, part: str) -> int:
    """Where the kernel puts (token ``t``, dim ``d``) of one head in a block of ``BLOCK`` tokens (found by probing)."""
    if isa == "vec":
        return t * DIM + d if part == "value" else (d // 2) * 2 * BLOCK + (d % 2) * BLOCK + t
    if part == "key":  # amx
        return d % 2 + 2 * (t % 16) + 32 * ((d // 2) % 2) + 64 * (d // 4) + 1024 * (t // 16)
    return t % 2 + 2 * (d % 16) + 32 * (t // 2) + 512 * (d // 16)


def write(ops, isa: str, key: torch.Tensor, value: torch.Tensor, scale: float, kv_dtype: str = "fp8"):  # noqa: ANN001
    blocks = math.ceil(key.shape[0] / BLOCK)
    cache = torch.zeros(blocks, KV_HEADS, BLOCK, 2 * DIM, dtype=torch.uint8 if kv_dtype == "fp8" else key.dtype)
    k_cache, v_cache = cache.view(blocks, KV_HEADS, BLOCK * 2, DIM).chunk(2, dim=2)
    ops.cpu_attn_reshape_and_cache(key, value, k_cache, v_cache, torch.arange(key.shape[0]), isa, k_scale=scale,
                                   v_scale=scale, kv_cache_dtype=kv_dtype)
    return k_cache, v_cache


def read(cache: torch.Tensor, isa: str, part: str, tokens: int) -> torch.Tensor:
    """The cache's bytes as (tokens, kv heads, dim)."""
    out = torch.zeros(tokens, KV_HEADS, DIM, dtype=cache.dtype)
    flat = cache.reshape(cache.shape[0], KV_HEADS, -1)
    for t in range(tokens):
        for d in range(DIM):
            out[t, :, d] = flat[t // BLOCK, :, flat_index(t % BLOCK, d, isa, part)]
    return out


def layout_probe(ops, isa: str, dtype: torch.dtype) -> list:  # noqa: ANN001
    found = []
    for t, d in [(0, 0), (0, 1), (0, 2), (0, 4), (1, 0), (2, 0), (0, 16), (16, 0), (2, 5), (31, 63)]:
        for part in ("key", "value"):
            one = torch.zeros(TOKENS, KV_HEADS, DIM, dtype=dtype)
            one[t, 0, d] = 1.0
            zero = torch.zeros_like(one)
            k_cache, v_cache = write(ops, isa, one if part == "key" else zero, one if part == "value" else zero, 1.0)
            cache = k_cache if part == "key" else v_cache
            where = cache.reshape(cache.shape[0], KV_HEADS, -1)[0, 0].nonzero().flatten().tolist()
            found.append({"token": t, "dim": d, "part": part, "flat": where,
                          "expected": flat_index(t, d, isa, part)})
    return found


LAYERS = (0, 1, 2, 8, 15, 29)
PROMPT = "Question: How do I keep my bread fresh for longer?\nAnswer: Store it in a paper bag in a cool dry place."


def layer_outputs() -> dict:
    """Per layer of :data:`LAYERS`, the largest |difference| of the attention's query and output between vLLM's FP8
    cache and quantcal's simulation (rounding to nearest, and toward zero), on :data:`PROMPT`."""
    import os

    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the model in this process, for its hooks
    from vllm import LLM, SamplingParams

    from quantcal.checkpoints.model_export import served_checkpoint
    from quantcal.recipes import parse_recipe
    from quantcal.recipes.kv_cache import attention_layers
    from quantcal.sources.models import resolve_source
    from quantcal.variants.definition import LoadOptions, VariantDef, load_variant_model

    source = resolve_source("smollm2-135m-instruct")
    served = served_checkpoint(source, parse_recipe("kv:fp8"))
    llm = LLM(model=str(served), dtype="float32", kv_cache_dtype="fp8", enforce_eager=True, max_model_len=512,
              enable_prefix_caching=False, gpu_memory_utilization=0.25)  # (CPU memory on the CPU build)
    model = llm.llm_engine.model_executor.driver_worker.worker.model_runner.model
    engine: dict[int, dict[str, torch.Tensor]] = {}
    for i in LAYERS:
        model.model.layers[i].self_attn.attn.register_forward_hook(
            lambda m, args, kwargs, out, i=i: engine.__setitem__(i, {"q": args[0].clone(), "out": out.clone()}),
            with_kwargs=True)
    ids = llm.get_tokenizer()(PROMPT).input_ids
    llm.generate([{"prompt_token_ids": ids}], SamplingParams(max_tokens=1, prompt_logprobs=1), use_tqdm=False)
    del llm, model  # its cache's memory, before the next engine
    import gc

    gc.collect()
    tokens = len(ids)
    found: dict = {}
    for rounding in ("nearest", "toward_zero"):
        lm = load_variant_model(VariantDef("smollm2-135m-instruct", f"kv:fp8,rounding={rounding}"), source,
                                LoadOptions(dtype="float32"))
        layers = attention_layers(lm.model)
        simulated: dict[int, dict[str, torch.Tensor]] = {}
        for i in LAYERS:
            cache = layers[i].quantcal_kv

            def wrapped(m, q, k, v, *a, i=i, inner=cache.inner, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
                out = inner(m, q, k, v, *a, **kw)
                simulated[i] = {"q": q[0].transpose(0, 1).reshape(tokens, -1), "out": out[0][0].reshape(tokens, -1)}
                return out

            cache.inner = wrapped
        with torch.inference_mode():
            lm.model(torch.tensor([ids]))
        found[rounding] = {str(i): {part: float((simulated[i][part] - engine[i][part][:tokens]).abs().max())
                                    for part in ("q", "out")} for i in LAYERS}
        print(f"layers, vLLM vs simulation ({rounding}): " + "; ".join(
            f"{i}: out {found[rounding][str(i)]['out']:.1e}" for i in LAYERS))
    return {"prompt_tokens": tokens, "layers": list(LAYERS), "max_abs_diff": found}


def w8a8_linears() -> dict:
    """vLLM's W8A8 linears against the simulation's rule on their own captured inputs (module doc)."""
    import os

    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from safetensors.torch import load_file
    from vllm import LLM, SamplingParams

    from quantcal.checkpoints.model_export import served_checkpoint
    from quantcal.recipes import parse_recipe
    from quantcal.sources.models import resolve_source

    path = served_checkpoint(resolve_source("smollm2-135m-instruct"), parse_recipe("w8a8"))
    llm = LLM(model=str(path), dtype="bfloat16", enforce_eager=True, max_model_len=512, enable_prefix_caching=False,
              gpu_memory_utilization=0.25)
    layer = llm.llm_engine.model_executor.driver_worker.worker.model_runner.model.model.layers[0]
    captured: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, module in (("qkv", layer.self_attn.qkv_proj), ("down", layer.mlp.down_proj)):
        module.register_forward_hook(lambda m, a, o, name=name: captured.__setitem__(
            name, (a[0].clone(), (o[0] if isinstance(o, tuple) else o).clone())))
    ids = llm.get_tokenizer()(PROMPT).input_ids
    llm.generate([{"prompt_token_ids": ids}], SamplingParams(max_tokens=1, prompt_logprobs=1), use_tqdm=False)
    weights = load_file(str(path / "model.safetensors"))
    prefix = "model.layers.0."
    parts = {"qkv": [f"{prefix}self_attn.{p}_proj" for p in "qkv"], "down": [f"{prefix}mlp.down_proj"]}
    found = {}
    for name, (x, y) in captured.items():
        x, y = x[:len(ids)].float(), y[:len(ids)].float()
        w = torch.cat([weights[f"{n}.weight"].float() * weights[f"{n}.weight_scale"].float() for n in parts[name]])
        step = x.abs().amax(-1, keepdim=True) / 127
        w8a8 = (torch.round(x * (1 / step)).clamp(-128, 127) * step) @ w.T
        w8a16 = x @ w.T
        found[name] = {rule: float(((y - ref).abs() / (ref.abs() + 1e-3)).median())
                       for rule, ref in (("w8a8", w8a8), ("w8a16", w8a16))}
        print(f"vLLM W8A8 {name}: median relative difference from W8A8 by hand {found[name]['w8a8']:.1e}, from "
              f"W8A16 {found[name]['w8a16']:.1e} (bfloat16's own precision: 3.9e-3)")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--layout", action="store_true", help="print the layout probe")
    parser.add_argument("--layers", action="store_true", help="also compare the model layer by layer (module doc)")
    parser.add_argument("--w8a8", action="store_true", help="also check vLLM's W8A8 linears (module doc)")
    args = parser.parse_args()

    import vllm
    import vllm._custom_ops as ops
    from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

    from quantcal.recipes.number_formats import cast_e4m3_toward_zero

    report: dict = {"vllm": vllm.__version__, "machine": platform.processor() or platform.machine(), "isas": {}}
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        isa = _get_attn_isa(dtype, BLOCK, DIM, "fp8")
        layout = layout_probe(ops, isa, dtype)
        if args.layout:
            print(isa, layout)
        row: dict = {"dtype": str(dtype), "layout_confirmed": all(p["flat"] == [p["expected"]] for p in layout),
                     "stores": []}
        for spread in (1.0, 3.0, 30.0):
            for scale in (1.0, 0.37):
                x = (torch.randn(TOKENS, KV_HEADS, DIM) * spread).to(dtype)
                k_cache, v_cache = write(ops, isa, x, x, scale)
                scaled = x.float() / scale
                nearest = scaled.clamp(-448, 448).to(torch.float8_e4m3fn).view(torch.uint8)
                toward_zero = cast_e4m3_toward_zero(scaled).to(torch.float8_e4m3fn).view(torch.uint8)
                for part, cache in (("key", k_cache), ("value", v_cache)):
                    stored = read(cache, isa, part, TOKENS)
                    row["stores"].append({"part": part, "spread": spread, "scale": scale,
                                          "bytes_equal_nearest": float((stored == nearest).float().mean()),
                                          "bytes_equal_toward_zero": float((stored == toward_zero).float().mean())})
        # the attention kernel on that cache against attention by hand from the truncated keys and values
        q = torch.randn(40, HEADS, DIM) * 2
        k, v = torch.randn(40, KV_HEADS, DIM) * 3, torch.randn(40, KV_HEADS, DIM)
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        k_cache, v_cache = write(ops, isa, k, v, 1.0)
        starts, lengths = torch.tensor([0, 40], dtype=torch.int32), torch.tensor([40], dtype=torch.int32)
        meta = ops.cpu_attn_get_scheduler_metadata(1, HEADS, KV_HEADS, DIM, lengths, dtype, starts, True, -1, isa,
                                                   False, None, "fp8")
        out = torch.zeros(40, HEADS, DIM, dtype=dtype)
        blocks = torch.arange(k_cache.shape[0], dtype=torch.int32)[None]
        ops.cpu_attention_with_kv_cache(q, k_cache, v_cache, out, starts, lengths, 1 / math.sqrt(DIM), True, None,
                                        -1, blocks, 0.0, meta, None, None, 1.0, 1.0, "fp8")
        group = HEADS // KV_HEADS
        kq = cast_e4m3_toward_zero(k.float()).double().repeat_interleave(group, 1)
        vq = cast_e4m3_toward_zero(v.float()).double().repeat_interleave(group, 1)
        scores = torch.einsum("thd,shd->hts", q.double(), kq) / math.sqrt(DIM)
        scores = scores.masked_fill(torch.triu(torch.ones(40, 40, dtype=torch.bool), 1), float("-inf"))
        by_hand = torch.einsum("hts,shd->thd", torch.softmax(scores, -1), vq)
        row["attention_max_abs_diff_vs_truncated_by_hand"] = float((out.double() - by_hand).abs().max())
        report["isas"][isa] = row
        worst = {rule: min(s[f"bytes_equal_{rule}"] for s in row["stores"]) for rule in ("nearest", "toward_zero")}
        print(f"{isa} ({dtype}): layout confirmed {row['layout_confirmed']}; bytes equal, worst case: to nearest "
              f"{worst['nearest']:.3f}, toward zero {worst['toward_zero']:.3f}; attention vs by hand "
              f"{row['attention_max_abs_diff_vs_truncated_by_hand']:.2e}")
    if args.layers:
        report["model_layers"] = layer_outputs()
    if args.w8a8:
        report["w8a8_linears"] = w8a8_linears()
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / "vllm_kv_rounding_cpu.json"
    target.write_text(json.dumps(report, indent=2))
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
