"""A built-in, offline demo task: two-operand arithmetic with plausible distractors.

Generator (seeded, deterministic): item ``i`` draws an operation from ``+ - *`` and operands
(2-digit for ``+``/``-``, 1-2 digit for ``*``) from ``random.Random(seed * 1_000_003 + i)``. The three
distractors are the nearest classic slips: off by one, off by ten, and the other operation's result
(or the digits of the answer reversed); duplicates and negatives are replaced by further offsets.
The four options are shuffled by the same generator. Prompt ``Question: What is a + b?\\nAnswer:``.

It exists so that ``quantcal`` runs on a fresh machine with no dataset hub. It is a demo, not a benchmark.
"""

from __future__ import annotations

import random
from typing import Any

from quantcal.errors import QuantcalError

from quantcal.tasks.base import Task

DEFAULT_SIZE = 200
#: The most items the generator makes (a larger ``limit`` is refused rather than built in memory).
MAX_SIZE = 100_000
SEED = 1234


def _answer(op: str, a: int, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def generate(n: int | None = None, seed: int = SEED) -> list[dict[str, Any]]:
    """Rows ``{"id", "question", "choices", "answer"}`` of the arithmetic task."""
    if n is not None and n > MAX_SIZE:
        raise QuantcalError(f"`limit` {n} is more than the arithmetic task generates (at most {MAX_SIZE} items)")
    rows = []
    for i in range(DEFAULT_SIZE if n is None else n):
        rng = random.Random(seed * 1_000_003 + i)
        op = rng.choice("+-*")
        if op == "*":
            a, b = rng.randint(2, 12), rng.randint(2, 19)
        else:
            a, b = rng.randint(10, 99), rng.randint(10, 99)
            if op == "-" and b > a:
                a, b = b, a
        correct = _answer(op, a, b)
        other = _answer("+" if op != "+" else "-", a, b)
        candidates = [correct + rng.choice((-1, 1)), correct + rng.choice((-10, 10)), other, int(str(correct)[::-1])]
        distractors: list[int] = []
        for value in candidates + [correct + k for k in (2, -2, 3, -3, 11, -11, 20)]:
            if value >= 0 and value != correct and value not in distractors and len(distractors) < 3:
                distractors.append(value)
        options = [correct, *distractors]
        rng.shuffle(options)
        rows.append({
            "id": f"arith-{i}",
            "question": f"What is {a} {op} {b}?",
            "choices": [str(v) for v in options],
            "answer": options.index(correct),
        })
    return rows


def _build(row: dict[str, Any]) -> tuple[str, list[str], int]:
    return f"Question: {row['question']}\nAnswer:", list(row["choices"]), int(row["answer"])


ARITHMETIC = Task(
    name="arithmetic", build=_build, fields=("question", "choices", "answer"), id_field="id",
    summary="built-in offline demo: seeded 2-operand arithmetic, 4 choices", generate=generate,
)
