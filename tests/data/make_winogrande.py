"""Writes winogrande_100.jsonl: 100 Winogrande-style rows in the hub schema of ``allenai/winogrande``
(``sentence`` with one ``_`` blank, ``option1``, ``option2``, ``answer`` "1"/"2"), written for quantcal's tests.

Each template names two things and a property that fits one of them; the blank takes the right one. Both orders of
the options and both properties are used, so the gold answer is "1" half of the time.
"""

import itertools
import json
from pathlib import Path

PAIRS = [  # (big thing, small thing)
    ("suitcase", "trophy"), ("truck", "bicycle"), ("ocean", "pond"), ("elephant", "mouse"), ("stadium", "kiosk"),
]
TEMPLATES = [  # {a} {b}: the blank is the one the adjective fits; (adjective fits a, adjective fits b)
    ("The {b} doesn't fit into the {a} because the _ is too {adj}.", "small", "large"),
    ("The {a} could hold the {b} easily because the _ was so {adj}.", "big", "tiny"),
    ("Next to the {a}, the {b} looked odd, since the _ was very {adj}.", "huge", "little"),
    ("We measured the {a} and the {b}; the _ turned out to be quite {adj}.", "wide", "narrow"),
    ("Carrying the {b} was easier than moving the {a}, because the _ is {adj}.", "heavy", "light"),
]


def rows() -> list[dict]:
    out = []
    for (a, b), (template, adj_a, adj_b), swap in itertools.product(PAIRS, TEMPLATES, (False, True)):
        for adjective, right in ((adj_a, a), (adj_b, b)):
            options = (b, a) if swap else (a, b)
            sentence = template.format(a=a, b=b, adj=adjective)
            out.append({"sentence": sentence, "option1": options[0], "option2": options[1],
                        "answer": "1" if options[0] == right else "2"})
    return out[:100]


if __name__ == "__main__":
    target = Path(__file__).with_name("winogrande_100.jsonl")
    target.write_text("".join(json.dumps(r) + "\n" for r in rows()))
    print(f"wrote {target}")
