"""MMLU (Hendrycks et al. 2021), hub ``cais/mmlu`` (config ``all``, split ``test``), all 57 subjects.

lm-eval's zero-shot prompt: the subject's description line
``The following are multiple choice questions (with answers) about {subject}.\n\n``, then
``{question.strip()}\nA. {c0}\nB. {c1}\nC. {c2}\nD. {c3}\nAnswer:``; the choices are the letters " A".." D".
Few-shot: the first K rows of the subject's ``dev`` split (lm-eval's ``first_n`` sampler), the same for every item.
"""

from typing import Any

from quantcal.errors import QuantcalError
from quantcal.tasks.base import Task, as_int

SUBJECTS: tuple[str, ...] = (
    "abstract_algebra",
    "anatomy",
    "astronomy",
    "business_ethics",
    "clinical_knowledge",
    "college_biology",
    "college_chemistry",
    "college_computer_science",
    "college_mathematics",
    "college_medicine",
    "college_physics",
    "computer_security",
    "conceptual_physics",
    "econometrics",
    "electrical_engineering",
    "elementary_mathematics",
    "formal_logic",
    "global_facts",
    "high_school_biology",
    "high_school_chemistry",
    "high_school_computer_science",
    "high_school_european_history",
    "high_school_geography",
    "high_school_government_and_politics",
    "high_school_macroeconomics",
    "high_school_mathematics",
    "high_school_microeconomics",
    "high_school_physics",
    "high_school_psychology",
    "high_school_statistics",
    "high_school_us_history",
    "high_school_world_history",
    "human_aging",
    "human_sexuality",
    "international_law",
    "jurisprudence",
    "logical_fallacies",
    "machine_learning",
    "management",
    "marketing",
    "medical_genetics",
    "miscellaneous",
    "moral_disputes",
    "moral_scenarios",
    "nutrition",
    "philosophy",
    "prehistory",
    "professional_accounting",
    "professional_law",
    "professional_medicine",
    "professional_psychology",
    "public_relations",
    "security_studies",
    "sociology",
    "us_foreign_policy",
    "virology",
    "world_religions",
)
LETTERS = ("A", "B", "C", "D")


def description(subject: str) -> str:
    return f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"


def _build(row: dict[str, Any]) -> tuple[str, list[str], int]:
    subject = row["subject"]
    if subject not in SUBJECTS:
        raise QuantcalError(f"unknown MMLU subject {subject!r}")
    options = list(row["choices"])
    if len(options) != 4:
        raise QuantcalError(f"MMLU items have 4 choices, got {len(options)}")
    body = row["question"].strip() + "".join(f"\n{letter}. {text}" for letter, text in zip(LETTERS, options)) + "\nAnswer:"
    return body, list(LETTERS), as_int(row["answer"], "answer")


MMLU = Task(
    name="mmlu", build=_build, fields=("question", "subject", "choices", "answer"),
    hub_path="cais/mmlu", hub_config="all", split="test",
    description=lambda row: description(row["subject"]), fewshot_split="dev", sampler="first_n", fewshot_group="subject",
    summary="57 academic subjects, letter answers",
)
