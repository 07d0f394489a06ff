"""Property-based fuzzing of every input reader: data files (JSON lines, JSON, CSV, Parquet), study files (YAML
text and dicts), recipe specs and lm-eval samples. Any input gives a valid result or one QuantcalError, never
another exception. Bounded for CI (a few hundred examples per reader; the counts are in the settings)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quantcal.errors import QuantcalError
from quantcal.tasks.items import Item

FUZZ = settings(max_examples=int(__import__("os").environ.get("QUANTCAL_FUZZ_EXAMPLES", "200")), deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=8))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                             st.dictionaries(st.text(max_size=6), inner, max_size=4)),
                           max_leaves=12)
row_like = st.fixed_dictionaries({}, optional={
    "id": st.one_of(st.text(max_size=4), st.integers(0, 3), st.none()),
    "question": st.one_of(st.text(max_size=12), st.integers(), st.none(), st.lists(st.text(max_size=3), max_size=2)),
    "choices": st.one_of(st.lists(st.one_of(st.text(max_size=5), st.integers()), max_size=4), st.text(max_size=5),
                         st.none()),
    "answer": st.one_of(st.integers(-2, 5), st.text(max_size=2), st.booleans(), st.none(), st.floats()),
})


def _expect_items_or_user_error(path: Path) -> None:
    from quantcal.tasks import get_task, load_items

    try:
        items = load_items(get_task("custom"), path)
    except QuantcalError as exc:
        assert str(exc) and "\n" not in str(exc).strip() or str(exc).count("\n") < 30
        return
    assert items and all(isinstance(it, Item) and 0 <= it.gold < len(it.choices) for it in items)


@FUZZ
@given(st.binary(max_size=300), st.sampled_from(["jsonl", "json", "csv", "parquet"]))
def test_data_file_from_random_bytes(raw: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"d.{suffix}"
        path.write_bytes(raw)
        _expect_items_or_user_error(path)


@FUZZ
@given(st.lists(st.one_of(row_like, json_values), max_size=5), st.sampled_from(["jsonl", "json", "csv", "parquet"]))
def test_data_file_from_random_rows(rows: list, suffix: str) -> None:
    import pandas as pd

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"d.{suffix}"
        if suffix == "jsonl":
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        elif suffix == "json":
            path.write_text(json.dumps(rows))
        else:
            dict_rows = [r for r in rows if isinstance(r, dict)]
            try:
                frame = pd.DataFrame(dict_rows)
                frame.to_csv(path, index=False) if suffix == "csv" else frame.to_parquet(path)
            except Exception:  # noqa: BLE001 - pandas/pyarrow cannot write every mixture: nothing to read then
                return
        _expect_items_or_user_error(path)


study_dicts = st.fixed_dictionaries({}, optional={
    "name": json_values, "reference": st.one_of(st.text(max_size=10), st.integers(), st.none()),
    "variants": st.one_of(json_values, st.lists(st.fixed_dictionaries({}, optional={
        "name": st.one_of(st.text(max_size=6), st.integers()), "recipe": st.one_of(st.text(max_size=12), st.none()),
        "model": st.one_of(st.text(max_size=6), st.none()), "deploy": st.text(max_size=6)}), max_size=3)),
    "tasks": st.one_of(json_values, st.lists(st.fixed_dictionaries({"name": st.sampled_from(["arithmetic", "piqa", "x"])},
                                                                    optional={"limit": st.integers(-1, 3)}), max_size=2)),
    "bootstrap": st.one_of(json_values, st.fixed_dictionaries({"resamples": st.integers(-10, 10**12)})),
    "normalization": st.one_of(st.text(max_size=6), st.lists(st.sampled_from(["none", "tokens", "x"]), max_size=2)),
    "metrics": st.one_of(json_values, st.lists(st.sampled_from(["acc", "ece", "nope"]), max_size=3)),
})


@FUZZ
@given(st.one_of(study_dicts, json_values))
def test_study_dicts(data: object) -> None:
    from quantcal.study.spec import StudySpec, parse_study

    try:
        spec = parse_study(data, Path.cwd())
    except QuantcalError:
        return
    assert isinstance(spec, StudySpec) and spec.variants and spec.tasks


@FUZZ
@given(st.text(max_size=200))
def test_study_yaml_text(text: str) -> None:
    from quantcal.study.spec import StudySpec, load_study

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.yaml"
        path.write_text(text)
        try:
            spec = load_study(path)
        except QuantcalError:
            return
        assert isinstance(spec, StudySpec)


recipe_text = st.one_of(
    st.text(max_size=30),
    st.builds(lambda fam, parts: fam + ":" + ",".join(parts),
              st.sampled_from(["rtn", "gptq", "awq", "hqq", "gguf", "bnb", "quanto", "RTN", "nope"]),
              st.lists(st.one_of(st.text(max_size=6), st.builds("{}={}".format,
                                                                st.sampled_from(["bits", "group_size", "mode", "type", "calib", "damp", "x"]),
                                                                st.one_of(st.integers(-3, 300).map(str), st.text(max_size=5)))),
                       max_size=4)))


@FUZZ
@given(recipe_text)
def test_recipe_specs(text: str) -> None:
    from quantcal.recipes import parse_recipe
    from quantcal.recipes.spec import RecipeSpec

    try:
        spec = parse_recipe(text)
    except QuantcalError:
        return
    assert isinstance(spec, RecipeSpec) and parse_recipe(spec.key).key == spec.key  # the canonical key round-trips


resp = st.one_of(st.lists(st.one_of(st.text(max_size=5), st.floats(), st.integers()), max_size=3), scalars)
samples = st.fixed_dictionaries({}, optional={
    "doc_id": st.one_of(st.integers(0, 3), st.text(max_size=2), st.none(), st.floats()),
    "target": st.one_of(st.integers(-1, 4), st.text(max_size=4), st.none()),
    "arguments": st.one_of(json_values, st.dictionaries(st.sampled_from(["gen_args_0", "gen_args_1", "gen_args_x", "a"]),
                                                        st.one_of(json_values, st.fixed_dictionaries(
                                                            {"arg_0": st.text(max_size=4), "arg_1": st.text(max_size=4)})),
                                                        max_size=3)),
    "resps": st.lists(st.lists(resp, max_size=2), max_size=3),
    "filtered_resps": st.lists(resp, max_size=3),
})


@FUZZ
@given(st.lists(st.one_of(samples, json_values), min_size=1, max_size=4))
def test_lm_eval_samples(lines: list) -> None:
    from quantcal.store.lm_eval_import import read_samples

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "samples_t_2026-01-01T00-00-00.jsonl"
        path.write_text("".join(json.dumps(x) + "\n" for x in lines))
        try:
            got = list(read_samples(path))
        except QuantcalError:
            return
        for doc_id, item, logliks, greedy in got:
            assert isinstance(doc_id, int) and len(logliks) == len(item.choices) == len(greedy)
