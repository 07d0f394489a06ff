"""XStoryCloze English (Lin et al. 2021), hub ``juletxara/xstory_cloze`` (en, split ``eval``).

lm-eval prompt: the four story sentences joined by spaces; choices the two endings; gold ``answer_right_ending - 1``.
"""

from typing import Any

from quantcal.tasks.base import Task, as_int

_SENTENCES = ("input_sentence_1", "input_sentence_2", "input_sentence_3", "input_sentence_4")


def _build(row: dict[str, Any]) -> tuple[str, list[str], int]:
    context = " ".join(row[k] for k in _SENTENCES)
    return context, [row["sentence_quiz1"], row["sentence_quiz2"]], as_int(row["answer_right_ending"], "answer_right_ending") - 1


XSTORYCLOZE_EN = Task(
    name="xstorycloze_en", build=_build, fields=(*_SENTENCES, "sentence_quiz1", "sentence_quiz2", "answer_right_ending"),
    hub_path="juletxara/xstory_cloze", hub_config="en", split="eval", fewshot_split="train", id_field="story_id",
    summary="story endings, 2 choices",
)
