"""Fuzzing the surfaces the second fault probe found: study YAML with random nesting and markup characters in every
string (through the CLI: a result or one line, exit 0 or 2), cache-entry mutations (each file edited, truncated,
replaced by a folder or a symbolic link: always seen, and built again), and claims tables with random leases and
owners (never waited on past the reader's lease). Small in the first test tier; full size in the heavy tier."""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from quantcal.cli import app

runner = CliRunner()
SIZES = [pytest.param(15, id="small"), pytest.param(300, id="full", marks=pytest.mark.heavy)]


def fuzz(examples: int, strategy: st.SearchStrategy, check: Callable[[Any], None]) -> None:
    settings(max_examples=examples, deadline=None, derandomize=examples < 50,
             suppress_health_check=list(HealthCheck))(given(strategy)(check))()


markup_text = st.lists(st.sampled_from(list("ab[]/=:-_ \\{}!'\"") + ["[/x]", "[bold]", "[link=http://e]"]),
                       max_size=8).map("".join)
yaml_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-3, 3), markup_text),
                           lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                   st.dictionaries(markup_text, inner, max_size=3)),
                           max_leaves=20)
studies = st.fixed_dictionaries({
    "reference": st.one_of(markup_text, st.just("smollm2-135m-instruct")),
    "variants": st.lists(st.fixed_dictionaries({"name": markup_text}, optional={"recipe": st.one_of(
        markup_text, st.just("rtn:bits=4"))}), max_size=3),
    "tasks": st.lists(st.one_of(markup_text, st.just("arithmetic"), st.fixed_dictionaries({"name": markup_text})),
                      max_size=2),
}, optional={"output": markup_text, "extra": yaml_values, "normalization": yaml_values})


@pytest.mark.parametrize("examples", SIZES)
def test_study_yaml_with_markup_and_nesting_is_a_plan_or_one_line(examples: int, tmp_path: Path) -> None:
    import yaml

    def check(data: dict) -> None:
        study = tmp_path / "study.yaml"
        study.write_text(yaml.safe_dump(data, allow_unicode=True))
        result = runner.invoke(app, ["run", str(study), "--dry-run"])
        assert result.exit_code in (0, 2), (result.exit_code, result.output, result.exception)
        assert "Traceback" not in result.output
        if result.exit_code == 2:
            assert "error:" in result.output

    fuzz(examples, studies, check)


MUTATIONS = ("edit", "truncate", "empty", "folder", "symlink", "delete")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> tuple[Path, Path]:
    """A cache holding one built variant: (cache root, entry)."""
    from quantcal.recipes import parse_recipe
    from quantcal.recipes.build import build_variant
    from quantcal.sources.models import resolve_source

    root = tmp_path_factory.mktemp("fuzz-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QUANTCAL_CACHE", str(root))
        entry = build_variant(resolve_source(str(tiny_llama)), parse_recipe("rtn:bits=4,group_size=16"))
    return root, entry


def _mutate(path: Path, how: str, position: float, elsewhere: Path) -> None:
    data = path.read_bytes()
    if how == "edit":
        at = min(int(position * len(data)), len(data) - 1)
        path.write_bytes(data[:at] + bytes([data[at] ^ 0x5A]) + data[at + 1:])
    elif how == "truncate":
        path.write_bytes(data[: int(position * len(data))])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "folder":
        path.unlink()
        path.mkdir()
    elif how == "symlink":
        copy = elsewhere / path.name
        copy.write_bytes(data)  # the same bytes, but not the entry's own file
        path.unlink()
        path.symlink_to(copy)
    else:
        path.unlink()


@pytest.mark.parametrize("examples", [pytest.param(6, id="small"),
                                      pytest.param(120, id="full", marks=pytest.mark.heavy)])
def test_every_cache_entry_mutation_is_seen_and_the_entry_built_again(examples: int, built: tuple[Path, Path],
                                                                      tiny_llama: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from quantcal.recipes import parse_recipe
    from quantcal.recipes.build import build_variant, entry_problem
    from quantcal.sources.manifest import manifest_problem
    from quantcal.sources.models import resolve_source

    root, entry = built
    files = sorted(p.relative_to(entry) for p in entry.rglob("*") if p.is_file())

    def check(case: tuple[int, str, float]) -> None:
        index, how, position = case
        with tempfile.TemporaryDirectory() as tmp:
            cache = Path(tmp) / "cache"
            shutil.copytree(root, cache, symlinks=True)
            monkeypatch.setenv("QUANTCAL_CACHE", str(cache))
            mine = cache / entry.relative_to(root)
            target = mine / files[index % len(files)]
            before = target.read_bytes()
            _mutate(target, how, position, Path(tmp))
            if how == "edit" or (how == "truncate" and len(target.read_bytes()) == len(before)):
                changed = target.read_bytes() != before
            else:
                changed = True
            problem = entry_problem(mine, full_check=True)
            assert (problem is not None) == changed, (target.name, how, problem)
            if changed:
                assert build_variant(resolve_source(str(tiny_llama)), parse_recipe("rtn:bits=4,group_size=16"),
                                     full_check=True) == mine
                assert manifest_problem(mine, full=True) is None and not target.is_symlink()

    fuzz(examples, st.tuples(st.integers(0, 1000), st.sampled_from(MUTATIONS), st.floats(0, 1)), check)


leases = st.one_of(st.floats(allow_nan=False), st.just(math.inf), st.just(-math.inf), st.integers(-10**15, 10**15),
                   st.text(max_size=6))
owners = st.one_of(st.text(max_size=12), st.from_regex(r"[a-z]{1,6}:[0-9]{1,7}:[a-z]{0,4}", fullmatch=True))


@pytest.mark.parametrize("examples", SIZES)
def test_claims_with_random_leases_never_hold_past_the_readers_lease(examples: int, tmp_path: Path) -> None:
    from quantcal.store.database import open_store

    ids = [f"i{k}" for k in range(5)]
    lease = 0.05

    def check(claims: list[tuple[str, Any]]) -> None:
        path = tmp_path / f"s{time.monotonic_ns()}.sqlite"
        with open_store(path) as db:
            run = db.get_or_create_run("v", "t", "h", {}, {})
            with db.transaction() as conn:
                conn.executemany("INSERT OR REPLACE INTO claims VALUES (?, ?, ?, ?)",
                                 [(run, ids[k % len(ids)], owner, expires) for k, (owner, expires) in enumerate(claims)])
            first = db.claim(run, ids, "me:1:t", 10, lease)
            db.claim_holders(run, "me:1:t")
            time.sleep(lease * 1.5)
            taken = db.claim(run, ids, "me:1:t", 10, lease)
            assert set(first) | set(taken) == set(ids), (claims, first, taken)

    fuzz(examples, st.lists(st.tuples(owners, leases), max_size=8), check)
