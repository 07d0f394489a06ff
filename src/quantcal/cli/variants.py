"""``quantcal quantize``, ``quantcal recipes`` and ``quantcal export-model``: build a compressed variant
(:func:`quantcal.api.quantize`), list recipes, write a variant as a deployable quantized checkpoint (:func:`quantcal.api.export_model`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table
from rich.text import Text

from quantcal.cli.common import console, out, quiet_transformers, say, user_errors
from quantcal.sources.models import DEFAULT_MODEL


def quantize_command(
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="The reference model (bundled name, .gguf, checkpoint dir, hub id)."),
    recipe: str = typer.Option(..., "--recipe", "-r", help="rtn:bits=4,group_size=64 | gptq:bits=4,group_size=64 | awq:bits=4,group_size=64 | hqq:bits=3 | gguf:q4_k | bnb:nf4[,mode=native] | quanto:qint4 ... (quantcal recipes lists every parameter)"),
    target: Optional[Path] = typer.Option(None, "--out", help="Write the variant here instead of the cache."),
) -> None:
    """Build one compressed variant (cached: a second build with the same recipe is instant) and report it."""
    with user_errors():
        from quantcal import api

        quiet_transformers()
        variant = api.quantize(model, recipe, target, say=say)
        meta = variant.meta
        table = Table(title=f"{model} · {variant.recipe}")
        table.add_column("")
        table.add_column("value", justify="right")
        rows = [("execution mode", variant.mode),
                ("bits per weight (quantized layers)", f"{variant.bits_per_weight:.3f}"),
                ("packed size (MB, other weights 16-bit)", f"{meta['packed_size_mb']:.1f}"),
                ("checkpoint on disk (MB)",
                 f"{meta['checkpoint_size_mb']:.1f}" if "checkpoint_size_mb" in meta else "none (native: built at load)"),
                ("build time (s)", f"{meta['build_seconds']:.1f}"),
                ("mean relative layer output error", f"{meta['mean_layer_error']:.4f}"),
                ("quantized layers", str(meta["quantized_layers"]))]
        if meta.get("gguf_fallback_layers"):
            rows.append(("GGUF types (llama.cpp fallback for narrow layers)",
                         ", ".join(f"{k} x{v}" for k, v in meta["gguf_type_counts"].items())))
        for label, value in rows:
            table.add_row(label, value)
        out.print(table)
        console.print(f"variant: {variant.path}")


def recipes_command() -> None:
    """List the compression recipes and their parameters."""
    from quantcal.recipes import FAMILIES

    for name, family in FAMILIES.items():
        out.print(Text.assemble((name, "bold"), ": " + family.summary))
        for key, param in family.params.items():
            shown = str(param.default).lower() if isinstance(param.default, bool) else param.default
            default = "required" if param.default is None else f"default {shown}"
            out.print(f"    {key}: {param.describe()} ({default}){' — ' + param.help if param.help else ''}", highlight=False)


def export_checkpoint_command(
    report: Path = typer.Argument(..., metavar="REPORT", help="A study's report folder (it holds results.json and study.json)."),
    variant: str = typer.Option(..., "--variant", "-v", help="The variant to export (as the study names it; 'reference' for the reference)."),
    target: Path = typer.Option(..., "--out", help="A new folder for the checkpoint."),
    task: Optional[str] = typer.Option(None, "--task", help="Whose temperature (required when the study has several tasks)."),
    normalization: Optional[str] = typer.Option(None, "--normalization", help="Which normalization's temperature (default: the study's first)."),
    form: str = typer.Option("auto", "--form", help="quantized: the recipe's deployable format (compressed-tensors for "
                             "rtn/gptq/awq, bitsandbytes for bnb); float: the float weights the study scored; auto: "
                             "quantized when the recipe has a format, else float."),
    dtype: str = typer.Option("float32", "--dtype", help="dtype of the float tensors: float32 | float16 | bfloat16."),
) -> None:
    """Save a study's variant as a checkpoint with its fitted temperature: generation_config.json (temperature,
    do_sample) and quantcal-variant.json (the variant's record and the temperature's provenance). Integer and
    bitsandbytes variants are written in their quantized format (--form)."""
    with user_errors():
        from quantcal import api

        quiet_transformers()
        exported = api.export_checkpoint(report, variant, target, task=task, normalization=normalization, form=form,
                                         dtype=dtype, say=say)
        console.print(f"{exported.variant}: {exported.out} ({exported.format}, temperature {exported.temperature:.4f}, "
                      f"fitted on {exported.task})")


def export_model_command(
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="The reference model (bundled name, .gguf, checkpoint dir, hub id)."),
    recipe: str = typer.Option(..., "--recipe", "-r", help="rtn:..., gptq:... (desc_act=false) or awq:... (compressed-tensors), "
                               "or bnb:nf4|fp4|int8 (bitsandbytes)"),
    target: Path = typer.Option(..., "--out", help="A new folder for the checkpoint."),
    dtype: str = typer.Option("float32", "--dtype", help="dtype of the weights that stay in float (embeddings, norms, head): float32 | float16 | bfloat16."),
) -> None:
    """Write a variant (built now unless cached) as the quantized checkpoint deployment engines load with their own
    kernels. Integer recipes: compressed-tensors pack-quantized (int32-packed codes, float16 group scales: the
    simulated grid's own values, packed zero points; AWQ's input scales folded into the preceding norms and layers),
    read by vLLM and transformers. bnb recipes: transformers' bitsandbytes serialization."""
    with user_errors():
        from quantcal import api

        quiet_transformers()
        exported = api.export_model(model, recipe, target, dtype, say=say)
        console.print(f"{exported.recipe}: {exported.out} ({exported.format}, {exported.layers} quantized layers, "
                      f"{exported.bits_per_weight:.3f} bits per weight on disk)")
