"""Few-shot examples, system instructions and chat templates: drawn and rendered as lm-eval 0.4.x does.

The lm-eval comparisons build lm-eval's own Task objects (its YAMLs, reading ``../shared/data`` through
``dataset_path: json``) and compare the contexts it would send to a model with quantcal's, byte for byte. No model runs.
"""

from __future__ import annotations

import json
import random
from functools import lru_cache
from pathlib import Path

import pytest

from quantcal.errors import QuantcalError
from quantcal.tasks.prompts import PromptSetup, render, task_label, PromptParts, Example
from quantcal.tasks import get_task, load_items
from tests.conftest import write_jsonl

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is the extra quantcal[lm-eval]")

FILES = {"piqa": ("piqa/validation.jsonl", "piqa/piqa.yaml"),
         "openbookqa": ("openbookqa/test.jsonl", "openbookqa/openbookqa.yaml"),
         "hellaswag": ("hellaswag/validation.jsonl", "hellaswag/hellaswag.yaml"),
         "boolq": ("boolq/validation.jsonl", "super_glue/boolq/default.yaml")}
WINOGRANDE = Path(__file__).with_name("data") / "winogrande_100.jsonl"


def local_yaml(folder: Path, name: str, include: str, data: Path, fewshot_split: str = "test",
               extra: dict | None = None) -> None:
    """An lm-eval task YAML: lm-eval's own definition, reading a local file (as benchmarks/lm_eval_parity.py)."""
    tasks_dir = Path(lm_eval.__file__).parent / "tasks"
    lines = [f"include: {tasks_dir / include}", f"task: {name}", "tag: []", "dataset_path: json", "dataset_name: null",
             f"dataset_kwargs: {{data_files: {{test: {json.dumps(str(data))}}}}}", "training_split: null",
             "validation_split: null", "test_split: test", f"fewshot_split: {fewshot_split}"]
    lines += [f"{k}: {json.dumps(v)}" for k, v in (extra or {}).items()]
    (folder / f"{name}.yaml").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def yaml_dir(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    folder = tmp_path_factory.mktemp("lm-eval-yaml")
    for task, (data, include) in FILES.items():
        local_yaml(folder, f"local_{task}", include, shared_data / data)
    local_yaml(folder, "local_winogrande", "winogrande/default.yaml", WINOGRANDE)
    (folder / "local_group.yaml").write_text("group: local_group\ntask:\n  - local_piqa\n  - local_openbookqa\n"
                                             "aggregate_metric_list:\n  - metric: acc\n    weight_by_size: false\n")
    return folder


@lru_cache(maxsize=2)
def _lm_eval_manager(include: str):  # noqa: ANN202 - lm-eval's TaskManager: indexing its registry takes seconds
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include)


def lm_eval_contexts(yaml_dir: Path, task: str, shots: int, limit: int, tokenizer=None, **chat) -> list[list[tuple]]:  # noqa: ANN001
    """What lm-eval would send to a model: per document, its (context, continuation) requests."""
    (t,) = _lm_eval_manager(str(yaml_dir)).load([task])["tasks"].values()
    t.set_config(key="num_fewshot", value=shots)
    t.set_fewshot_seed(seed=1234)
    if tokenizer is not None:
        chat["chat_template"] = lambda history, add_generation_prompt=True: tokenizer.apply_chat_template(
            history, tokenize=False, add_generation_prompt=add_generation_prompt,
            continue_final_message=not add_generation_prompt)
    t.build_all_requests(limit=limit, **chat)
    docs: dict[int, list] = {}
    for inst in sorted(t.instances, key=lambda i: (i.doc_id, i.idx)):
        docs.setdefault(inst.doc_id, []).append(tuple(inst.arguments[:2]))
    return [docs[d] for d in sorted(docs)]


@pytest.mark.parametrize("task", [t if t == "openbookqa" else pytest.param(t, marks=pytest.mark.heavy)
                                  for t in sorted(FILES)])
def test_fewshot_contexts_equal_lm_evals_byte_for_byte(task: str, yaml_dir: Path, shared_data: Path) -> None:
    setup = PromptSetup(num_fewshot=5)
    ours = load_items(get_task(task), shared_data / FILES[task][0], 40, setup)
    theirs = lm_eval_contexts(yaml_dir, f"local_{task}", 5, 40)
    assert [it.pairs(" ") for it in ours] == [list(pairs) for pairs in theirs]


@pytest.mark.parametrize(("shots", "multiturn", "system"), [
    (3, True, "Answer the question."),
    *(pytest.param(*case, marks=pytest.mark.heavy) for case in [(0, None, None), (5, None, None), (5, False, "Be brief.")]),
])
def test_chat_template_contexts_equal_lm_evals(shots: int, multiturn: bool | None, system: str | None, yaml_dir: Path,
                                               shared_data: Path, smol_checkpoint: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smol_checkpoint)
    setup = PromptSetup(num_fewshot=shots, apply_chat_template=True, fewshot_as_multiturn=multiturn,
                        system_instruction=system)
    ours = load_items(get_task("openbookqa"), shared_data / "openbookqa/test.jsonl", 25, setup, tokenizer)
    theirs = lm_eval_contexts(yaml_dir, "local_openbookqa", shots, 25, tokenizer, apply_chat_template=True,
                              fewshot_as_multiturn=setup.fewshot_as_multiturn, system_instruction=system)
    assert [it.pairs("") for it in ours] == [list(pairs) for pairs in theirs]  # no target delimiter under chat
    assert ours[0].context.startswith("<|im_start|>")


def test_plain_system_instruction_matches_lm_eval(yaml_dir: Path, shared_data: Path) -> None:
    setup = PromptSetup(num_fewshot=2, system_instruction="Think.")
    ours = load_items(get_task("piqa"), shared_data / "piqa/validation.jsonl", 10, setup)
    theirs = lm_eval_contexts(yaml_dir, "local_piqa", 2, 10, system_instruction="Think.")
    assert [it.pairs(" ") for it in ours] == [list(pairs) for pairs in theirs]


def test_examples_do_not_depend_on_limit_and_leave_the_item_out(shared_data: Path) -> None:
    task, path = get_task("openbookqa"), shared_data / "openbookqa/test.jsonl"
    few = load_items(task, path, 5, PromptSetup(num_fewshot=3))
    more = load_items(task, path, 30, PromptSetup(num_fewshot=3))
    assert [it.context for it in few] == [it.context for it in more[:5]]
    for it in more:
        question = it.meta["question"]
        assert it.context.endswith(question) and it.context.count(question) == 1


def test_default_sampler_is_one_seeded_generator_over_the_items(tmp_path: Path) -> None:
    rows = [{"question": f"q{i}?", "choices": ["a", "b"], "answer": i % 2} for i in range(12)]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    items = load_items(get_task("custom"), data, None, PromptSetup(num_fewshot=2, fewshot_seed=7))
    rnd = random.Random(7)
    for i, it in enumerate(items):
        drawn = [j for j in rnd.sample(range(12), 3) if j != i][:2]
        expected = "".join(f"Question: q{j}?\nAnswer: {rows[j]['choices'][rows[j]['answer']]}\n\n" for j in drawn)
        assert it.context == expected + f"Question: q{i}?\nAnswer:"


def test_fewshot_file_is_a_separate_pool(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", [{"question": "x?", "choices": ["a", "b"], "answer": 0}])
    pool = write_jsonl(tmp_path / "pool.jsonl", [{"question": f"p{i}?", "choices": ["c", "d"], "answer": 1}
                                                 for i in range(4)])
    (item,) = load_items(get_task("custom"), data, None, PromptSetup(num_fewshot=4, fewshot_file=str(pool)))
    assert all(f"p{i}?\nAnswer: d\n\n" in item.context for i in range(4))


def test_mmlu_takes_the_first_dev_rows_of_the_items_subject(tmp_path: Path) -> None:
    def row(subject: str, q: str) -> dict:
        return {"question": q, "subject": subject, "choices": ["w", "x", "y", "z"], "answer": 2}

    data = write_jsonl(tmp_path / "test.jsonl", [row("anatomy", "t1"), row("virology", "t2")])
    dev = write_jsonl(tmp_path / "dev.jsonl", [row("virology", "v1"), row("anatomy", "a1"), row("anatomy", "a2"),
                                               row("virology", "v2"), row("anatomy", "a3")])
    a, v = load_items(get_task("mmlu"), data, None, PromptSetup(num_fewshot=2, fewshot_file=str(dev)))
    assert a.context.startswith("The following are multiple choice questions (with answers) about anatomy.\n\na1\n")
    assert "a2\n" in a.context and "a3" not in a.context and "v1" not in a.context
    assert "v1\n" in v.context and "v2\n" in v.context and "a1" not in v.context
    assert "Answer: C\n\n" in a.context
    with pytest.raises(QuantcalError, match="few-shot pool of mmlu for subject 'virology' has 2"):
        load_items(get_task("mmlu"), data, None, PromptSetup(num_fewshot=3, fewshot_file=str(dev)))


def test_k_larger_than_the_pool_is_refused(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", [{"question": f"q{i}?", "choices": ["a", "b"], "answer": 0}
                                              for i in range(3)])
    with pytest.raises(QuantcalError, match="`num_fewshot` is 3 but the few-shot pool of custom has 2"):
        load_items(get_task("custom"), data, None, PromptSetup(num_fewshot=3))


def test_setup_validation_and_labels() -> None:
    with pytest.raises(QuantcalError, match="`fewshot_as_multiturn` needs `apply_chat_template`"):
        PromptSetup(fewshot_as_multiturn=True)
    with pytest.raises(QuantcalError, match="`num_fewshot`"):
        PromptSetup(num_fewshot=-1)
    assert PromptSetup(apply_chat_template=True).fewshot_as_multiturn is True  # lm-eval's default
    assert task_label("mmlu", PromptSetup()) == "mmlu"
    assert task_label("mmlu", PromptSetup(num_fewshot=5)) == "mmlu[5-shot]"
    assert task_label("piqa", PromptSetup(apply_chat_template=True, fewshot_as_multiturn=False)) == \
        "piqa[0-shot chat single-turn]"
    text = render(PromptParts("Q3", "Desc\n\n", (Example("Q1", "A1"), Example("Q2", "A2"))), PromptSetup(), " ")
    assert text == "Desc\n\nQ1 A1\n\nQ2 A2\n\nQ3"


# lm-eval's registry as a task source ------------------------------------------------------------------------------
@pytest.mark.parametrize("task", ["openbookqa", "hellaswag"])
def test_lm_eval_tasks_give_the_same_items_as_the_built_in_ones(task: str, yaml_dir: Path, shared_data: Path) -> None:
    setup = PromptSetup(num_fewshot=3)
    theirs = load_items(get_task(f"lm-eval:local_{task}", include=str(yaml_dir)), None, 20, setup)
    ours = load_items(get_task(task), shared_data / FILES[task][0], 20, setup)
    assert [it.pairs(" ") for it in theirs] == [it.pairs(" ") for it in ours]
    assert [it.golds for it in theirs] == [it.golds for it in ours]
    assert [it.choices for it in theirs] == [it.choices for it in ours]


def test_multiple_input_task_has_a_context_per_choice(yaml_dir: Path) -> None:
    items = load_items(get_task("lm-eval:local_winogrande", include=str(yaml_dir)), None, None, PromptSetup())
    rows = [json.loads(line) for line in WINOGRANDE.read_text().splitlines()]
    assert len(items) == len(rows) == 100
    for it, row in zip(items, rows):
        (c1, x1), (c2, x2) = it.pairs("ignored")
        blank = row["sentence"].index("_")
        assert c1 == row["sentence"][:blank] + row["option1"] and c2 == row["sentence"][:blank] + row["option2"]
        assert x1 == x2 == " " + row["sentence"][blank + 1:].strip()
        assert it.choices == (c1, c2)  # lm-eval's doc_to_choice: the partial sentences (acc_norm's lengths)
        assert it.gold == int(row["answer"]) - 1


@pytest.mark.heavy
def test_groups_expand_to_their_tasks_and_aggregate_as_declared(yaml_dir: Path) -> None:
    from quantcal.tasks.lm_eval_tasks import expand, group_score

    e = expand("lm-eval:local_group", str(yaml_dir))
    assert e.tasks == ["local_piqa", "local_openbookqa"]
    group = e.groups["local_group"]
    assert group.weight_by_size is False
    assert group_score(group, {"local_piqa": (0.8, 100), "local_openbookqa": (0.2, 300)}) == pytest.approx(0.5)
    mmlu = expand("lm-eval:mmlu")
    assert len(mmlu.tasks) == 57 and mmlu.groups["mmlu"].weight_by_size
    assert group_score(mmlu.groups["mmlu_stem"], {t: (1.0 if i == 0 else 0.0, 10 * (i + 1))
                                                   for i, t in enumerate(mmlu.groups["mmlu_stem"].tasks)}) == \
        pytest.approx(10 / sum(10 * (i + 1) for i in range(19)))


@pytest.mark.heavy
def test_unknown_and_non_multiple_choice_lm_eval_tasks_are_refused(yaml_dir: Path, tmp_path: Path,
                                                                   shared_data: Path) -> None:
    with pytest.raises(QuantcalError, match="unknown lm-eval task 'local_nope'"):
        get_task("lm-eval:local_nope", include=str(yaml_dir))
    local_yaml(tmp_path, "local_gen", "openbookqa/openbookqa.yaml", shared_data / "openbookqa/test.jsonl",
               extra={"output_type": "generate_until", "doc_to_target": "{{answerKey}}"})
    task = get_task("lm-eval:local_gen", include=str(tmp_path))
    with pytest.raises(QuantcalError, match="generate_until task; this path scores multiple_choice tasks"):
        load_items(task, None, 5, PromptSetup())


def test_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from quantcal.tasks import lm_eval_tasks

    lm_eval_tasks._task_manager.cache_clear()
    monkeypatch.setitem(sys.modules, "lm_eval.tasks", None)
    with pytest.raises(QuantcalError, match=r"pip install 'quantcal\[lm-eval\]'"):
        get_task("lm-eval:piqa")
    lm_eval_tasks._task_manager.cache_clear()


@pytest.mark.heavy
def test_evaluate_runs_a_group_and_aggregates_it(yaml_dir: Path, tiny_llama: Path, tmp_path: Path) -> None:
    """Each task of a group is its own run; the group line is lm-eval's aggregate (here the plain mean)."""
    import quantcal

    result = quantcal.evaluate(str(tiny_llama), "lm-eval:local_group", lm_eval_include=yaml_dir, limit=6,
                               num_fewshot=1, store=tmp_path / "s.sqlite")
    piqa, obqa, group = (result.tasks[f"lm-eval:{t}[1-shot]"] for t in ("local_piqa", "local_openbookqa", "local_group"))
    assert piqa.n == obqa.n == 6 and group.n == 12
    assert group.members == (piqa.task, obqa.task)
    assert group.acc == pytest.approx((piqa.acc + obqa.acc) / 2)
    frame = result.items()
    assert set(frame["task"]) == {piqa.task, obqa.task}


@pytest.mark.heavy
def test_lm_eval_tasks_with_their_own_scoring_are_refused(tmp_path: Path) -> None:
    targets = {"choices": ["yes", "no"], "labels": [1, 0]}
    data = write_jsonl(tmp_path / "tqa.jsonl", [{"question": f"Q{i}?", "mc1_targets": targets, "mc2_targets": targets}
                                                for i in range(3)])
    local_yaml(tmp_path, "local_mc2", "truthfulqa/truthfulqa_mc2.yaml", data)
    with pytest.raises(QuantcalError, match="own process_results.*built-in truthfulqa_mc2"):
        load_items(get_task("lm-eval:local_mc2", include=str(tmp_path)), None, 3, PromptSetup())


@pytest.mark.heavy
def test_a_yamls_own_num_fewshot_is_the_default(yaml_dir: Path, tiny_llama: Path, tmp_path: Path,
                                                shared_data: Path) -> None:
    """As lm-eval without --num_fewshot: a task YAML's num_fewshot (here through an include) is used; an explicit
    num_fewshot (0 too) overrides it; the built-in tasks and YAMLs that declare none stay zero-shot."""
    import quantcal
    from quantcal.tasks.lm_eval_tasks import yaml_num_fewshot

    folder = tmp_path / "yaml"
    folder.mkdir()
    local_yaml(folder, "local_piqa2", FILES["piqa"][1], shared_data / FILES["piqa"][0], extra={"num_fewshot": 2})
    (folder / "local_piqa2b.yaml").write_text(f"include: {folder / 'local_piqa2.yaml'}\ntask: local_piqa2b\n")
    assert yaml_num_fewshot("local_piqa2b", str(folder)) == 2 and yaml_num_fewshot("local_piqa", str(yaml_dir)) == 0
    store = tmp_path / "s.sqlite"
    default = quantcal.evaluate(str(tiny_llama), "lm-eval:local_piqa2b", lm_eval_include=folder, limit=3, store=store)
    assert list(default.tasks) == ["lm-eval:local_piqa2b[2-shot]"]
    assert default.items()["question"].str.count("Question:").eq(3).all()  # two examples, then the question
    explicit = quantcal.evaluate(str(tiny_llama), "lm-eval:local_piqa2b", lm_eval_include=folder, limit=3, store=store,
                                 num_fewshot=0)
    assert list(explicit.tasks) == ["lm-eval:local_piqa2b"]


@pytest.mark.heavy
def test_a_study_reports_an_lm_eval_groups_line(yaml_dir: Path, tiny_llama: Path, tmp_path: Path) -> None:
    """A study naming a group runs its tasks and shows the group's line, aggregated as the group declares."""
    import quantcal

    study = {"reference": str(tiny_llama), "variants": [{"name": "rtn2", "recipe": "rtn:bits=2,group_size=16"}],
             "tasks": [{"name": "lm-eval:local_group", "include": str(yaml_dir), "limit": 6}], "bootstrap": {"resamples": 20},
             "recalibration": {"enabled": False}}
    result = quantcal.run_study(study, output=tmp_path / "r")
    results = result.report.results
    group = results["groups"]["lm-eval:local_group"]
    assert group["tasks"] == ["lm-eval:local_piqa", "lm-eval:local_openbookqa"] and not group["weight_by_size"]
    for variant in ("reference", "rtn2"):
        accs = [results["tasks"][t]["none"]["variants"][variant]["metrics"]["acc"]["estimate"] for t in group["tasks"]]
        assert group["variants"][variant] == {"acc": pytest.approx(sum(accs) / 2), "n": 12}
    assert "lm-eval group of 2 tasks" in (tmp_path / "r" / "tables.md").read_text()
    rebuilt = quantcal.rebuild_report(tmp_path / "r" / "study.sqlite", output=tmp_path / "r2")
    assert rebuilt.results["groups"] == results["groups"]  # study.json keeps the groups


@pytest.mark.heavy
def test_an_lm_eval_run_resumes_to_a_larger_limit_and_changed_data_is_a_new_run(tiny_llama: Path, tmp_path: Path,
                                                                                 shared_data: Path) -> None:
    """The run key holds the task's definition (lm-eval's config and documents), not the rendered items: a run over
    the first 3 items grows to 5 in the same run; editing one document of the file starts another run."""
    import quantcal
    from quantcal.store.database import open_store

    rows = [json.loads(line) for line in (shared_data / FILES["piqa"][0]).read_text().splitlines()[:8]]
    data = write_jsonl(tmp_path / "piqa.jsonl", rows)
    folder = tmp_path / "yaml"
    folder.mkdir()
    local_yaml(folder, "local_piqa_r", FILES["piqa"][1], data)
    store = tmp_path / "s.sqlite"

    def run(limit: int) -> list:
        quantcal.evaluate(str(tiny_llama), "lm-eval:local_piqa_r", lm_eval_include=folder, limit=limit, num_fewshot=1,
                          store=store)
        with open_store(store) as db:
            return [r for r in db.runs() if r.task.startswith("lm-eval:local_piqa_r")]

    first = run(3)
    grown = run(5)
    assert len(first) == len(grown) == 1 and grown[0].run_id == first[0].run_id
    assert grown[0].n_items == 5
    rows[7]["goal"] = rows[7]["goal"] + " (edited)"  # outside the first 5 items, inside the few-shot pool
    write_jsonl(data, rows)
    assert len(run(5)) == 2
