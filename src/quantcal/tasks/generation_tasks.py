"""Tasks answered in free text (lm-eval's ``generate_until``): the prompt, the stop strings, the filters that pull
the scored answer out of the generation, and the exact-match options, as lm-evaluation-harness 0.4 defines them.

- ``gsm8k`` (``openai/gsm8k`` main, test; lm-eval's ``gsm8k.yaml``): ``Question: {question}\\nAnswer:``; the target
  is the whole answer (its reasoning ends ``#### N``); until ``Question:``, ``</s>``, ``<|im_end|>`` (and the
  tokenizer's end-of-sequence); 5-shot by default from the train split (a local file: the file minus the item);
  filters ``strict-match`` (``#### (-?[0-9.,]+)``, the first) and ``flexible-extract`` (the last number);
  exact match ignoring case, commas, ``$``, everything up to ``#### `` and a final period.
- ``triviaqa`` (``mandarjoshi/trivia_qa`` rc.nocontext, validation; ``triviaqa/default.yaml``):
  ``Question: {question}?\\nAnswer:``; until a newline, ``.`` or ``,``; the answer stripped; right when it equals any
  alias ignoring case and punctuation; 0-shot.

The first filter listed is the one quantcal reports as the task's correctness (lm-eval reports each).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from quantcal.errors import QuantcalError
from quantcal.tasks.answer_filters import FilterStep, MatchOptions
from quantcal.tasks.data_files import Row, read_hub_rows, read_local_rows


@dataclass(frozen=True)
class GenItem:
    """One question to answer in free text: its prompt (few-shot examples included) and the accepted answers."""

    id: str
    prompt: str
    targets: tuple[str, ...]
    question: str = ""

    @property
    def hash(self) -> str:
        return hashlib.sha256(json.dumps([self.prompt, list(self.targets)]).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class GenerationTask:
    name: str
    text: Callable[[dict[str, Any]], str]  # lm-eval's doc_to_text
    targets: Callable[[dict[str, Any]], tuple[str, ...]]  # doc_to_target (several: any may match)
    until: tuple[str, ...]
    filters: dict[str, tuple[FilterStep, ...]]  # name -> steps; the first is the reported correctness
    match: MatchOptions
    hub_path: str | None = None
    hub_config: str | None = None
    split: str = "test"
    fewshot_split: str | None = None
    default_fewshot: int = 0
    max_gen_toks: int = 256
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    id_field: str | None = None
    summary: str = ""
    sampler: str = "default"  # lm-eval's few-shot sampler (quantcal.tasks.fewshot.sample_examples)
    fewshot_group: str | None = None
    kind: str = field(default="generate", init=False)

    @property
    def source(self) -> str:
        return (self.hub_path or "") + (f" ({self.hub_config})" if self.hub_config else "") + f" [{self.split}]"

    def fewshot_target(self, row: dict[str, Any]) -> str:
        return self.targets(row)[0]


def _gsm8k_text(row: dict[str, Any]) -> str:
    return f"Question: {row['question']}\nAnswer:"


def _triviaqa_targets(row: dict[str, Any]) -> tuple[str, ...]:
    answer = row["answer"]
    aliases = answer.get("aliases") if isinstance(answer, dict) else None
    return tuple(aliases) if aliases else (str(answer.get("value", "")) if isinstance(answer, dict) else str(answer),)


GENERATION_TASKS: dict[str, GenerationTask] = {t.name: t for t in (
    GenerationTask(
        name="gsm8k", text=_gsm8k_text, targets=lambda row: (row["answer"],),
        until=("Question:", "</s>", "<|im_end|>"),
        filters={"strict-match": (FilterStep("regex", r"#### (\-?[0-9\.\,]+)"), FilterStep("take_first")),
                 "flexible-extract": (FilterStep("regex", r"(-?[$0-9.,]{2,})|(-?[0-9]+)", group_select=-1),
                                      FilterStep("take_first"))},
        match=MatchOptions(ignore_case=True, regexes_to_ignore=(",", "\\$", "(?s).*#### ", "\\.$")),
        hub_path="openai/gsm8k", hub_config="main", split="test", fewshot_split="train", default_fewshot=5,
        summary="grade-school math word problems, free-text answers (lm-eval's gsm8k)"),
    GenerationTask(
        name="triviaqa", text=lambda row: f"Question: {row['question']}?\nAnswer:", targets=_triviaqa_targets,
        until=("\n", ".", ","),
        filters={"remove_whitespace": (FilterStep("remove_whitespace"), FilterStep("take_first"))},
        match=MatchOptions(ignore_case=True, ignore_punctuation=True),
        hub_path="mandarjoshi/trivia_qa", hub_config="rc.nocontext", split="validation", fewshot_split="train",
        id_field="question_id", max_gen_toks=256,
        summary="open-domain trivia questions, free-text answers (lm-eval's triviaqa)"),
)}


def generation_rows(task: GenerationTask, data_file: str | Path | None) -> list[Row]:
    if data_file is not None:
        return read_local_rows(data_file)
    if task.hub_path is None:
        raise QuantcalError(f"task {task.name} needs `data_file`")
    return read_hub_rows(task.hub_path, task.hub_config, task.split)


def load_generation_items(task: GenerationTask, data_file: str | Path | None = None, limit: int | None = None,
                          num_fewshot: int | None = None, fewshot_file: str | Path | None = None,
                          seed: int = 1234, skip: int = 0, chat: Any = None) -> list[GenItem]:
    """The task's items with their prompts; few-shot examples drawn as lm-eval draws them (``default`` sampler,
    seed 1234; the item left out when the pool is the evaluation file). ``chat``: a tokenizer whose chat template
    renders each prompt as lm-eval's ``--apply_chat_template --fewshot_as_multiturn`` does (each example a
    user/assistant exchange, the question the last user turn, then the generation prompt)."""
    from quantcal.tasks.fewshot import sample_examples
    from quantcal.tasks.prompts import Example, PromptParts, render_chat, require_chat_template, turns

    if chat is not None:
        require_chat_template(chat)

    rows = generation_rows(task, data_file)
    for row in rows:
        missing = [k for k in ("question",) if k not in row.data]
        if missing or not task.targets(row.data):
            raise QuantcalError(f"{row.origin}: not a {task.name} row (needs question and answer)")
    chosen = rows[skip: skip + limit if limit is not None else None]
    k = task.default_fewshot if num_fewshot is None else num_fewshot
    shots: list[list[Row]] = [[] for _ in chosen]
    if k:
        if fewshot_file is not None:
            pool, exclude = read_local_rows(fewshot_file), False
        elif data_file is None and task.fewshot_split:
            pool, exclude = read_hub_rows(task.hub_path or "", task.hub_config, task.fewshot_split), False
        else:
            pool, exclude = rows, True
        shots = sample_examples(task, chosen, pool, k, seed, exclude)  # type: ignore[arg-type]
    items = []
    for i, (row, drawn) in enumerate(zip(chosen, shots)):
        if chat is not None:
            parts = PromptParts(task.text(row.data), examples=[Example(task.text(x.data), task.fewshot_target(x.data))
                                                               for x in drawn])
            prompt = render_chat(turns(parts, None, task.target_delimiter, task.fewshot_delimiter), chat, True)
        else:
            examples = [task.text(x.data) + task.target_delimiter + task.fewshot_target(x.data) for x in drawn]
            prompt = task.fewshot_delimiter.join(examples + [task.text(row.data)])
        ident = str(row.data[task.id_field]) if task.id_field and task.id_field in row.data else f"{task.name}-{skip + i}"
        items.append(GenItem(ident, prompt, task.targets(row.data), str(row.data["question"])))
    return items
