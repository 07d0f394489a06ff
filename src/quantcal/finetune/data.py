"""Training data for fine-tuning: sources of ``(prompt, completion)`` examples, the held-out check, tokenisation.

Sources (``--data``):

- ``task:NAME``: a benchmark's items as prompt = the item's context and completion = ``target_delimiter +
  gold choice``, the format the scorer reads (so a model can be tuned for the benchmark). Rows come from
  ``--data-file`` (hub schema) or else the task's hub ``train`` split; ``--skip``/``--take`` select a slice.
- a local ``.jsonl`` file of ``{"prompt": ..., "completion": ...}`` or ``{"messages": [{"role", "content"}...]}``
  (chat messages: the last assistant turn is the completion, the rest is rendered with the tokenizer's chat
  template when it has one, else as ``role: content`` lines).
- ``hub:ORG/NAME[:SPLIT]``: a hub instruction dataset with those same columns.

Held out means never trained on: :func:`check_disjoint` refuses a training set whose prompts match any evaluated
item's context (both whitespace-normalised, compared by SHA-256), so tuning cannot leak the test items.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from quantcal.tasks.data_files import read_hub_rows, read_local_rows
from quantcal.errors import QuantcalError
from quantcal.tasks.items import Item
from quantcal.tasks import get_task, load_items


@dataclass(frozen=True)
class Example:
    prompt: str
    completion: str
    origin: str = ""


def prompt_key(text: str) -> str:
    """What two prompts share when they ask the same question: whitespace-normalised text, hashed."""
    return hashlib.sha256(" ".join(text.split()).encode("utf-8")).hexdigest()[:16]


def examples_from_items(items: Sequence[Item], target_delimiter: str) -> list[Example]:
    return [Example(it.context, target_delimiter + it.choices[it.gold], it.meta.get("origin", it.id)) for it in items]


def load_examples(source: str, data_file: str | None = None, skip: int = 0, take: int | None = None,
                  tokenizer: Any = None) -> list[Example]:
    """Read a training source (see the module docstring) and keep examples ``[skip, skip + take)``."""
    if skip < 0 or (take is not None and take < 1):
        raise QuantcalError(f"`skip` must be >= 0 and `take` >= 1, got skip={skip}, take={take}")
    if source.startswith("task:"):
        task = get_task(source[5:])
        if data_file is None and task.hub_path is not None:
            from quantcal.tasks.base import build_item

            rows = read_hub_rows(task.hub_path, task.hub_config, "train")
            items = [build_item(task, r) for r in rows]
        else:
            items = load_items(task, data_file)
        examples = examples_from_items(items, task.target_delimiter)
    elif data_file is not None:
        raise QuantcalError("`data_file` goes with a task:NAME source only")
    elif source.startswith("hub:"):
        path, _, split = source[4:].partition(":")
        examples = [_example(r.data, r.origin, tokenizer) for r in read_hub_rows(path, None, split or "train")]
    elif Path(source).suffix.lower() in (".jsonl", ".json"):
        examples = [_example(r.data, r.origin, tokenizer) for r in read_local_rows(source)]
    else:
        raise QuantcalError(f"unknown training source {source!r}: expected task:NAME, hub:ORG/NAME[:SPLIT] "
                            "or a .jsonl file of prompt/completion or messages records")
    selected = examples[skip: None if take is None else skip + take]
    if not selected:
        raise QuantcalError(f"{source}: no training examples after `skip` {skip} (it has {len(examples)})")
    return selected


def _example(data: dict[str, Any], origin: str, tokenizer: Any) -> Example:
    if isinstance(data.get("prompt"), str) and isinstance(data.get("completion"), str):
        if not data["completion"]:
            raise QuantcalError(f"{origin}: empty completion")
        return Example(data["prompt"], data["completion"], origin)
    messages = data.get("messages")
    if isinstance(messages, list) and messages:
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise QuantcalError(f"{origin}: each message needs string 'role' and 'content'")
        if messages[-1]["role"] != "assistant":
            raise QuantcalError(f"{origin}: the last message must be the assistant's answer (the completion)")
        prompt = render_chat(messages[:-1], tokenizer)
        return Example(prompt, messages[-1]["content"], origin)
    raise QuantcalError(f"{origin}: expected 'prompt' and 'completion' strings or a 'messages' list")


def render_chat(messages: Sequence[dict[str, str]], tokenizer: Any) -> str:
    """The prompt of a chat: the tokenizer's chat template with the assistant turn opened, else plain lines."""
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


def check_disjoint(examples: Iterable[Example], held_out: Iterable[Item]) -> None:
    """Refuse training data that contains any held-out (evaluated) item's prompt."""
    held = {prompt_key(it.context): it for it in held_out}
    clashes = [(ex, held[prompt_key(ex.prompt)]) for ex in examples if prompt_key(ex.prompt) in held]
    if clashes:
        ex, item = clashes[0]
        raise QuantcalError(f"{len(clashes)} training example(s) are evaluated items (held out), e.g. {ex.origin} is "
                            f"item {item.id}; train on a disjoint slice (`skip`/`take`)")


def data_hash(examples: Sequence[Example]) -> str:
    blob = json.dumps([[e.prompt, e.completion] for e in examples], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: tuple[int, ...]
    n_prompt: int  # tokens of the prompt: not trained on


def tokenize_examples(examples: Sequence[Example], tokenizer: Any, max_length: int) -> list[TokenizedExample]:
    """Prompt and completion tokenised as the scorer splits them (completion = tail of the joint encoding);
    an EOS ends the completion; over-long examples keep their last ``max_length`` tokens (the completion first)."""
    out = []
    eos = tokenizer.eos_token_id
    for ex in examples:
        prompt_ids = tokenizer.encode(ex.prompt)
        whole = tokenizer.encode(ex.prompt + ex.completion)
        if whole[:len(prompt_ids)] != prompt_ids:  # a merge across the boundary: fall back to separate encodings
            whole = prompt_ids + tokenizer.encode(ex.completion, add_special_tokens=False)
        if eos is not None:
            whole = whole + [eos]
        n_prompt = len(prompt_ids)
        if len(whole) > max_length:
            cut = len(whole) - max_length
            whole, n_prompt = whole[cut:], max(n_prompt - cut, 0)
        if n_prompt >= len(whole):
            continue
        out.append(TokenizedExample(tuple(whole), n_prompt))
    if not out:
        raise QuantcalError("no training example has a completion token left within `max_length`")
    return out


def collate(batch: Sequence[TokenizedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 on prompt and padding)."""
    width = max(len(b.input_ids) for b in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, b in enumerate(batch):
        n = len(b.input_ids)
        ids[row, :n] = torch.tensor(b.input_ids)
        mask[row, :n] = 1
        labels[row, b.n_prompt:n] = ids[row, b.n_prompt:n]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
