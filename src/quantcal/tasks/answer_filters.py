"""From a generated text to the answer that is scored, and whether it is right: lm-evaluation-harness 0.4's
``generate_until`` filters and its ``exact_match`` metric, as pure functions (checked against lm-eval's own
classes in ``tests/test_generation_tasks.py``).

- ``regex`` (lm-eval's ``RegexFilter``): every match of the pattern (``re.findall``), the ``group_select``-th
  (negative from the end); a match of several groups gives its first non-empty group; stripped; no match gives
  ``fallback`` (``"[invalid]"``).
- ``remove_whitespace`` (``WhitespaceFilter``): leading and trailing whitespace removed.
- ``take_first``: one generation per item here (greedy), so it keeps it.
- ``lowercase`` / ``uppercase`` (``LowercaseFilter`` / ``UppercaseFilter``): the answer's case changed (its span in
  the generation stays where it was).
- ``exact_match`` (``exact_match_hf_evaluate``): each ``regexes_to_ignore`` pattern removed from prediction and
  reference, then optionally lower case, punctuation and digits removed; equal strings. With several references
  (TriviaQA's aliases) the answer is right when it equals any of them.

The span functions give where in the generation the scored answer lies (character offsets), so a confidence can
be computed over the answer's own tokens (``conf_answer_prob``).
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from typing import Sequence

FALLBACK = "[invalid]"
#: lm-eval's filter functions quantcal applies itself.
FUNCTIONS = ("regex", "take_first", "remove_whitespace", "lowercase", "uppercase")


@dataclass(frozen=True)
class FilterStep:
    """One step of a filter pipeline: ``regex`` (``pattern``, ``group_select``, ``fallback``),
    ``remove_whitespace``, ``take_first``, ``lowercase`` or ``uppercase``."""

    function: str
    pattern: str = ""
    group_select: int = 0
    fallback: str = FALLBACK


@dataclass(frozen=True)
class MatchOptions:
    """``exact_match``'s options, as a task's ``metric_list`` sets them."""

    ignore_case: bool = False
    ignore_punctuation: bool = False
    ignore_numbers: bool = False
    regexes_to_ignore: tuple[str, ...] = field(default_factory=tuple)


def regex_select(text: str, pattern: str, group_select: int = 0) -> tuple[str, tuple[int, int]] | None:
    """lm-eval's RegexFilter on one text: the selected match (stripped) and its character span, or None."""
    regex = re.compile(pattern)
    matches = list(regex.finditer(text))
    if not matches:
        return None
    try:
        match = matches[group_select]
    except IndexError:
        return None
    if regex.groups == 0:
        value, span = match.group(0), match.span(0)
    elif regex.groups == 1:
        value, span = match.group(1) or "", match.span(1)
    else:
        nonempty = [i for i in range(1, regex.groups + 1) if match.group(i)]
        if not nonempty:
            return None
        value, span = match.group(nonempty[0]), match.span(nonempty[0])
    stripped = value.strip()
    if not stripped and not value:
        return stripped, span
    start = span[0] + (len(value) - len(value.lstrip()))
    return stripped, (start, start + len(stripped))


def apply_filters(text: str, steps: Sequence[FilterStep]) -> tuple[str, tuple[int, int] | None]:
    """The filtered answer of a generation and its span in it (None when it is a fallback, not in the text)."""
    value, span = text, (0, len(text))
    for step in steps:
        if step.function == "regex":
            found = regex_select(value, step.pattern, step.group_select)
            if found is None:
                return step.fallback, None
            value, (a, b) = found
            span = (span[0] + a, span[0] + b) if span is not None else None
        elif step.function == "remove_whitespace":
            stripped = value.strip()
            if span is not None:
                start = span[0] + (len(value) - len(value.lstrip()))
                span = (start, start + len(stripped))
            value = stripped
        elif step.function == "lowercase":
            value = value.lower()
        elif step.function == "uppercase":
            value = value.upper()
        elif step.function != "take_first":
            raise ValueError(f"filter {step.function!r}: quantcal runs {', '.join(FUNCTIONS)}")
    return value, span


def normalize(text: str, options: MatchOptions) -> str:
    for pattern in options.regexes_to_ignore:
        text = re.sub(pattern, "", text)
    if options.ignore_case:
        text = text.lower()
    if options.ignore_punctuation:
        text = text.translate(str.maketrans("", "", string.punctuation))
    if options.ignore_numbers:
        text = text.translate(str.maketrans("", "", string.digits))
    return text


def exact_match(prediction: str, references: Sequence[str], options: MatchOptions) -> bool:
    """lm-eval's exact_match: the normalized prediction equals a normalized reference (any of several)."""
    answer = normalize(prediction, options)
    return any(answer == normalize(ref, options) for ref in references)


def cut_at_stop(text: str, until: Sequence[str]) -> str:
    """lm-eval's HF generate_until: the continuation up to the first occurrence of each stop string in turn."""
    for term in until:
        if term:
            text = text.split(term)[0]
    return text
