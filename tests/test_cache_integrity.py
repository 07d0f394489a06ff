"""A cache entry is verified as a whole: every file against the manifest written when it was built. An edited
config, a damaged record, a symbolic link in an entry's place or an unusable ``QUANTCAL_CACHE`` are each seen (and
the entry built again, or one line said), and a resumed run never mixes the items of two models."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from quantcal.cli import app
from quantcal.recipes import parse_recipe
from quantcal.recipes.build import build_variant
from quantcal.sources.manifest import MANIFEST, entry_digest, manifest_problem, write_manifest
from quantcal.sources.models import resolve_source
from tests.conftest import write_jsonl

runner = CliRunner()
RECIPE = "rtn:bits=4,group_size=16"


def _questions(n: int) -> list[dict]:
    return [{"id": f"q{i}", "question": f"What is {i} plus {i}?", "choices": [str(2 * i), str(2 * i + 1), "seven"],
             "answer": 0} for i in range(n)]


@pytest.fixture(scope="module")
def built_cache(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Path:
    """A cache holding the variant (and the calibration windows it was built with), built once for the module."""
    root = tmp_path_factory.mktemp("built-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QUANTCAL_CACHE", str(root))
        _build(tiny_llama)
    return root


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, built_cache: Path) -> Path:
    """A copy of the built cache of this test's own."""
    shutil.copytree(built_cache, tmp_path / "cache", symlinks=True)
    monkeypatch.setenv("QUANTCAL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _build(model: Path, messages: list[str] | None = None) -> Path:
    return build_variant(resolve_source(str(model)), parse_recipe(RECIPE),
                         progress=(messages.append if messages is not None else None))


def test_every_file_of_a_built_entry_is_in_its_manifest(cache: Path, tiny_llama: Path) -> None:
    entry = _build(tiny_llama)
    listed = {f["path"] for f in json.loads((entry / MANIFEST).read_text())["files"]}
    assert {"config.json", "quantcal-variant.json", "tokenizer.json"} <= listed
    assert any(name.endswith(".safetensors") for name in listed)
    assert manifest_problem(entry, full=True) is None


def test_each_kind_of_damage_is_named(cache: Path, tiny_llama: Path) -> None:
    entry = _build(tiny_llama)
    (entry / "extra.bin").write_bytes(b"x")
    assert manifest_problem(entry) == "extra.bin is not in the manifest"
    (entry / "extra.bin").unlink()
    (entry / "tokenizer_config.json").rename(entry / "moved")
    assert manifest_problem(entry) == "moved is not in the manifest"
    (entry / "moved").unlink()
    assert manifest_problem(entry) == "tokenizer_config.json is missing"
    (entry / "tokenizer_config.json").mkdir()
    assert manifest_problem(entry) == "tokenizer_config.json is missing"  # a folder is no file of the entry
    (entry / MANIFEST).write_text("[")
    assert "unreadable" in manifest_problem(entry)
    copy = entry.parent / "elsewhere.json"  # the manifest itself a link to an identical copy: not followed
    write_manifest(entry)
    copy.write_bytes((entry / MANIFEST).read_bytes())
    (entry / MANIFEST).unlink()
    (entry / MANIFEST).symlink_to(copy)
    assert manifest_problem(entry) == f"{MANIFEST} is not a regular file"


@pytest.mark.parametrize("damage, expected", [
    (lambda e: (e / "config.json").write_text((e / "config.json").read_text().replace("1e-06", "0.5")), "config.json"),
    (lambda e: (e / "config.json").write_text("{not json"), "config.json"),
])
def test_an_edited_entry_is_seen_and_built_again(cache: Path, tiny_llama: Path, damage, expected: str) -> None:  # noqa: ANN001
    entry = _build(tiny_llama)
    config = (entry / "config.json").read_text()
    damage(entry)
    messages: list[str] = []
    assert _build(tiny_llama, messages) == entry
    assert any("damaged" in m and expected in m for m in messages), messages
    assert (entry / "config.json").read_text() == config and manifest_problem(entry, full=True) is None


def test_weights_edited_in_place_are_seen_by_the_full_check(cache: Path, tiny_llama: Path) -> None:
    entry = _build(tiny_llama)
    weights = next(entry.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-4:] = bytes(4)  # same size, other bytes
    weights.write_bytes(bytes(data))
    assert manifest_problem(entry) is None  # the quick check reads sizes and small files only
    assert "changed since it was built" in manifest_problem(entry, full=True)
    messages: list[str] = []
    build_variant(resolve_source(str(tiny_llama)), parse_recipe(RECIPE), progress=messages.append, full_check=True)
    assert any("damaged" in m for m in messages) and manifest_problem(entry, full=True) is None


def test_a_symlinked_entry_is_replaced_without_touching_its_target(cache: Path, tiny_llama: Path, tmp_path: Path) -> None:
    entry = _build(tiny_llama)
    someone_elses = tmp_path / "elsewhere"
    someone_elses.mkdir()
    (someone_elses / "quantcal-variant.json").write_text("{}")
    (someone_elses / "keep.txt").write_text("mine")
    shutil.rmtree(entry)
    entry.symlink_to(someone_elses, target_is_directory=True)
    messages: list[str] = []
    assert _build(tiny_llama, messages) == entry
    assert not entry.is_symlink() and manifest_problem(entry) is None
    assert any("symbolic link" in m for m in messages)
    assert (someone_elses / "keep.txt").read_text() == "mine"


def test_a_resumed_run_whose_variant_changed_starts_a_new_run(cache: Path, tiny_llama: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "q.jsonl", _questions(8))
    store = tmp_path / "s.sqlite"
    args = ["eval", "--model", str(tiny_llama), "--recipe", RECIPE, "--task", "custom", "--data-file", str(data),
            "--store", str(store), "--name", "v"]
    assert runner.invoke(app, args + ["--limit", "4"]).exit_code == 0
    entry = _build(tiny_llama)
    before = entry_digest(entry)
    # the entry is changed as a whole, manifest included (a different build of the same key): no longer the same model
    weights = next(entry.glob("*.safetensors"))
    data_bytes = bytearray(weights.read_bytes())
    data_bytes[-4:] = bytes(4)
    weights.write_bytes(bytes(data_bytes))
    write_manifest(entry)
    assert entry_digest(entry) != before
    resumed = runner.invoke(app, args + ["--limit", "8"])
    assert resumed.exit_code == 0, resumed.output
    assert "scoring its items again in a new run" in resumed.output
    with sqlite3.connect(store) as db:
        runs = db.execute("SELECT r.run_id, COUNT(i.item_id) FROM runs r LEFT JOIN items i ON i.run_id = r.run_id "
                          "GROUP BY r.run_id ORDER BY r.run_id").fetchall()
    assert [n for _, n in runs] == [4, 8]  # the new run holds all 8 items, scored with the new weights
    again = runner.invoke(app, args + ["--limit", "8"])
    assert again.exit_code == 0 and "again in a new run" not in again.output, again.output


@pytest.mark.parametrize("where", ["file", "/proc/quantcal-cache", "/sys/quantcal-cache"])
def test_an_unusable_cache_folder_is_one_line(tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch,
                                              where: str) -> None:
    target = tmp_path / "a-file" if where == "file" else Path(where)
    if where == "file":
        target.write_text("not a folder")
    monkeypatch.setenv("QUANTCAL_CACHE", str(target))
    data = write_jsonl(tmp_path / "q.jsonl", _questions(2))
    result = runner.invoke(app, ["eval", "--model", str(tiny_llama), "--recipe", RECIPE, "--task", "custom",
                                 "--data-file", str(data), "--store", str(tmp_path / "s.sqlite")])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "QUANTCAL_CACHE" in result.output


def test_cache_verify_reports_and_removes_damaged_entries(cache: Path, tiny_llama: Path) -> None:
    entry = _build(tiny_llama)
    assert runner.invoke(app, ["cache", "verify"]).exit_code == 0
    (entry / "config.json").write_text("{}")
    found = runner.invoke(app, ["cache", "verify"], env={"COLUMNS": "200"})
    assert found.exit_code == 1 and "config.json" in found.output, found.output
    removed = runner.invoke(app, ["cache", "verify", "--remove-damaged"])
    assert removed.exit_code == 0 and not entry.exists()
