"""How an item's prompt is set up: few-shot examples, a system instruction, a chat template.

A prompt is a list of :class:`Turn` s built as lm-evaluation-harness 0.4.x builds it (``Task.fewshot_context``):

- a ``system`` turn holding the system instruction and the task's description, joined by the few-shot delimiter
  when neither has whitespace at the join (``maybe_delimit``);
- per few-shot example a ``user`` turn (the example's question, followed in plain text by the target delimiter) and
  an ``assistant`` turn (its answer, followed by the few-shot delimiter, ``"\\n\\n"`` by default);
- the item's question as the last ``user`` turn.

Plain text is every turn's content followed by its delimiter, concatenated (the system turn has none). With a chat
template the turns go through ``tokenizer.apply_chat_template(..., add_generation_prompt=True)``: all but the system
turn collapsed into one user message, or, with ``fewshot_as_multiturn``, each example as its own user/assistant
exchange; a template that refuses a system role gets the conversation without it (lm-eval's fallback). Under a chat
template each choice is scored without the target delimiter (the generation prompt ends the context).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Sequence

from quantcal.errors import QuantcalError

FEWSHOT_DELIMITER = "\n\n"
#: lm-eval's default few-shot seed (``simple_evaluate(fewshot_random_seed=1234)``).
DEFAULT_FEWSHOT_SEED = 1234


@dataclass(frozen=True)
class PromptSetup:
    """Few-shot examples, system instruction and chat template of a run (the zero-shot plain prompt by default).

    ``fewshot_file`` is a local file in the task's hub schema to draw examples from; without it they come from the
    task's few-shot split on the hub, or, for a local data file, from the evaluation file itself minus the item.
    ``fewshot_as_multiturn`` defaults to ``apply_chat_template``, as lm-eval 0.4.13's command line and
    ``simple_evaluate`` do (pass False for the examples collapsed into one user turn).
    """

    num_fewshot: int = 0
    fewshot_seed: int = DEFAULT_FEWSHOT_SEED
    fewshot_file: str | None = None
    apply_chat_template: bool = False
    system_instruction: str | None = None
    fewshot_as_multiturn: bool | None = None  # None: as lm-eval 0.4.13, on exactly when a chat template is applied

    def __post_init__(self) -> None:
        if self.fewshot_as_multiturn is None:
            object.__setattr__(self, "fewshot_as_multiturn", self.apply_chat_template)
        if isinstance(self.num_fewshot, bool) or not isinstance(self.num_fewshot, int) or self.num_fewshot < 0:
            raise QuantcalError(f"`num_fewshot` must be a whole number of examples (0 or more), got {self.num_fewshot!r}")
        if self.fewshot_as_multiturn and not self.apply_chat_template:
            raise QuantcalError("`fewshot_as_multiturn` needs `apply_chat_template` (examples become chat turns)")
        if self.fewshot_file is not None and self.num_fewshot == 0:
            raise QuantcalError("`fewshot_file` needs `num_fewshot` of 1 or more")

    @property
    def is_default(self) -> bool:
        return self == PromptSetup()

    def describe(self) -> str:
        """A short label: ``5-shot``, ``0-shot chat``, ``5-shot chat single-turn``."""
        parts = [f"{self.num_fewshot}-shot"]
        if self.apply_chat_template:
            parts.append("chat" + ("" if self.fewshot_as_multiturn else " single-turn"))
        if self.system_instruction:
            parts.append("system instruction")
        return " ".join(parts)


@dataclass(frozen=True)
class Turn:
    role: str  # system, user or assistant
    content: str
    delimiter: str = ""  # appended in plain text only

    def text(self) -> str:
        return self.content + self.delimiter


@dataclass(frozen=True)
class Example:
    """One few-shot example: its question and the text of its answer."""

    question: str
    answer: str


@dataclass(frozen=True)
class PromptParts:
    """What a prompt is made of before it is rendered."""

    question: str
    description: str = ""
    examples: Sequence[Example] = field(default_factory=tuple)


def maybe_delimit(prefix: str | None, suffix: str | None, delimiter: str) -> str:
    """``prefix + delimiter + suffix``, without the delimiter when either side has whitespace at the join."""
    if not prefix:
        return suffix or ""
    if not suffix:
        return prefix
    if prefix[-1].isspace() or suffix[0].isspace():
        return prefix + suffix
    return prefix + delimiter + suffix


def turns(parts: PromptParts, system_instruction: str | None, target_delimiter: str,
          fewshot_delimiter: str = FEWSHOT_DELIMITER) -> list[Turn]:
    """The conversation lm-eval builds for one item (module docstring)."""
    out: list[Turn] = []
    system = maybe_delimit(system_instruction, parts.description, fewshot_delimiter)
    if system:
        out.append(Turn("system", system))
    for ex in parts.examples:
        out.append(Turn("user", ex.question, target_delimiter))
        out.append(Turn("assistant", ex.answer, fewshot_delimiter))
    out.append(Turn("user", parts.question))
    return out


def plain_text(conversation: Sequence[Turn]) -> str:
    return "".join(t.text() for t in conversation)


def chat_messages(conversation: Sequence[Turn], multiturn: bool) -> list[dict[str, str]]:
    """The messages handed to the chat template: one user message (lm-eval's ``multiturn_to_singleturn``) unless
    ``multiturn``."""
    system = [{"role": "system", "content": conversation[0].content}] if conversation[0].role == "system" else []
    rest = list(conversation[len(system):])
    if multiturn:
        return system + [{"role": t.role, "content": t.content} for t in rest]
    collapsed = "".join(t.text() for t in rest[:-1]) + rest[-1].content
    return system + [{"role": "user", "content": collapsed}]


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def require_chat_template(tokenizer: Any, model: str = "this model") -> None:
    """The one refusal when a chat template is asked of a tokenizer (or no tokenizer) without one."""
    if tokenizer is None or not has_chat_template(tokenizer):
        raise QuantcalError(f"`apply_chat_template`: the tokenizer of {model} has no chat template")


def chat_template_hash(tokenizer: Any) -> str:
    template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(template, dict):  # named templates
        template = repr(sorted(template.items()))
    return hashlib.sha256(str(template).encode("utf-8")).hexdigest()[:16]


def render_chat_messages(messages: list[dict[str, str]], tokenizer: Any, add_generation_prompt: bool = True) -> str:
    """``tokenizer.apply_chat_template`` as lm-eval's HF backend calls it; a template that refuses a system role gets
    the conversation without it (lm-eval's fallback)."""
    import jinja2

    require_chat_template(tokenizer)
    options = dict(tokenize=False, add_generation_prompt=add_generation_prompt,
                   continue_final_message=not add_generation_prompt)
    try:
        return tokenizer.apply_chat_template(messages, **options)
    except jinja2.exceptions.TemplateError:
        return tokenizer.apply_chat_template([m for m in messages if m["role"] != "system"], **options)


def render_chat(conversation: Sequence[Turn], tokenizer: Any, multiturn: bool) -> str:
    """The prompt through the tokenizer's chat template, ending with the generation prompt."""
    return render_chat_messages(chat_messages(conversation, multiturn), tokenizer)


def render(parts: PromptParts, setup: PromptSetup, target_delimiter: str, tokenizer: Any = None) -> str:
    """The item's context string under ``setup``."""
    conversation = turns(parts, setup.system_instruction, target_delimiter)
    if setup.apply_chat_template:
        return render_chat(conversation, tokenizer, setup.fewshot_as_multiturn)
    return plain_text(conversation)


def task_label(name: str, setup: PromptSetup) -> str:
    """A task's name with its prompt setup when that is not the zero-shot plain prompt: ``mmlu[5-shot]``."""
    return name if setup.is_default else f"{name}[{setup.describe()}]"


def scored_delimiter(setup: PromptSetup, target_delimiter: str) -> str:
    """The delimiter between context and each choice: none under a chat template (lm-eval, no ``gen_prefix``)."""
    return "" if setup.apply_chat_template else target_delimiter
