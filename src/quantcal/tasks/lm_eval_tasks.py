"""lm-evaluation-harness's task registry as a task source: ``lm-eval:NAME`` (needs ``pip install 'quantcal[lm-eval]'``).

Items come from lm-eval's own Task objects: ``Task.build_all_requests`` renders each document's context (description,
few-shot examples, delimiters, chat template) and its per-choice requests, exactly as ``lm_eval`` would send them to a
model; quantcal scores those ``(context, continuation)`` pairs. Gold answers are resolved as lm-eval's
``process_results`` resolves them (an index, a choice string, or a list of indices). Output type ``multiple_choice`` is
supported, including its multiple-input form (Winogrande: one context per choice, one shared continuation); any other
output type is refused, and so are tasks that score with their own ``process_results`` (TruthfulQA-MC2: use the
built-in ``truthfulqa_mc2``). A group (``lm-eval:mmlu``) expands to its tasks, each its own run; :func:`group_score`
aggregates them as lm-eval does (mean weighted by size unless the group says otherwise).

``include`` is a folder of the user's own task YAMLs (lm-eval's ``--include_path``). A YAML there may name Python
functions (``!function utils.doc_to_text``, ``class: !function ...``), which lm-eval imports when it loads the task:
quantcal loads such a task only with ``trust_code`` (``--trust-task-code``, a study's ``trust_task_code: true``), and
never while planning or on a dry run (:func:`task_code` finds the files without importing them). The registry's own
tasks ship with the installed lm-eval package: their code is that package's, trusted as installing it trusted it.
"""

from __future__ import annotations

import contextlib
from contextlib import nullcontext
import hashlib
import io
import json
import re
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Sequence

from quantcal.errors import QuantcalError
from quantcal.tasks.hub_access import hub_unreachable, offline_mode
from quantcal.tasks.items import Item
from quantcal.tasks.prompts import PromptSetup, render_chat_messages, require_chat_template
from quantcal.tasks.base import Task

PREFIX = "lm-eval:"
INSTALL = "lm-eval tasks need lm-evaluation-harness: pip install 'quantcal[lm-eval]'"


def is_lm_eval(name: str) -> bool:
    return name.startswith(PREFIX)


@lru_cache(maxsize=16)
def _task_manager(include: str | None) -> Any:
    """lm-eval's TaskManager (its index of every task YAML takes seconds to build: kept per include folder)."""
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise QuantcalError(INSTALL) from None
    import logging

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    return TaskManager(include_path=include)


@dataclass(frozen=True)
class Expansion:
    """A name as lm-eval resolves it: its tasks, and the groups (with their aggregation) that hold them."""

    tasks: list[str]
    groups: dict[str, "GroupSpec"]


@dataclass(frozen=True)
class GroupSpec:
    name: str
    tasks: list[str]
    weight_by_size: bool


def expand(name: str, include: str | None = None, manager: Any = None) -> Expansion:
    """The lm-eval tasks behind ``lm-eval:NAME`` (a task, a group or a tag), in lm-eval's order, read from its task
    index (no dataset is loaded)."""
    bare = name[len(PREFIX):] if is_lm_eval(name) else name
    manager = manager or _task_manager(include)
    index = manager.task_index
    if bare not in index:
        near = sorted(t for t in index if bare in t)[:5]
        hint = f"; similar: {', '.join(near)}" if near else "; 'lm-eval ls tasks' lists them"
        raise QuantcalError(f"unknown lm-eval task {bare!r}{hint}")
    tasks: list[str] = []
    groups: dict[str, GroupSpec] = {}

    def walk(key: str) -> list[str]:
        entry = index[key]
        kind = entry.kind.name
        if kind in ("TASK", "PY_TASK"):
            if key not in tasks:
                tasks.append(key)
            return [key]
        if kind == "TAG":
            return [t for other in sorted(index) if key in index[other].tags for t in walk(other)]
        if kind != "GROUP":
            raise QuantcalError(f"lm-eval:{key}: not a task lm-eval can load ({kind.lower()})")
        cfg = entry.cfg or {}
        members = cfg.get("task") or []
        members = [members] if isinstance(members, str) else members
        inner: list[str] = []
        for m in members:
            if not isinstance(m, str):
                raise QuantcalError(f"lm-eval group {key} defines a task inline; name its tasks one by one")
            if m not in index:
                raise QuantcalError(f"lm-eval group {key}: unknown member {m!r}")
            inner += walk(m)
        weight = True
        for agg in cfg.get("aggregate_metric_list") or []:  # acc (multiple choice), exact_match (free text)
            if isinstance(agg, dict) and agg.get("metric") in ("acc", "exact_match"):
                weight = bool(agg.get("weight_by_size", True))
        groups[key] = GroupSpec(key, inner, weight)
        return inner

    walk(bare)
    return Expansion(tasks, groups)


def group_score(spec: GroupSpec, scores: dict[str, tuple[float, int]]) -> float:
    """The group's accuracy from its tasks' ``(acc, n)``: weighted by size, or the plain mean of the tasks."""
    parts = [scores[t] for t in spec.tasks if t in scores]
    if spec.weight_by_size:
        return sum(a * n for a, n in parts) / sum(n for _, n in parts)
    return sum(a for a, _ in parts) / len(parts)


def lm_eval_task(name: str, include: str | None = None, trust_code: bool = False) -> Task:
    """A quantcal task whose items lm-eval renders (checked to exist now; loaded when scored). Its ``code`` lists
    the Python files of ``include`` that loading it would import; the loader refuses them unless ``trust_code``."""
    expansion = expand(name, include)
    bare = name[len(PREFIX):] if is_lm_eval(name) else name
    if expansion.tasks != [bare]:
        raise QuantcalError(f"lm-eval:{bare} is a group of {len(expansion.tasks)} tasks; expand it with "
                            "`expand_task_names` (evaluate and studies do)")
    return Task(name=PREFIX + bare, build=_no_rows, fields=(), summary="lm-evaluation-harness task",
                loader=partial(load_lm_eval_items, bare, include, trust_code=trust_code),
                default_fewshot=yaml_num_fewshot(bare, include),
                code=tuple(str(f) for f in task_code(bare, include)))


_FUNCTION_TAG = re.compile(r"!function\s+([A-Za-z_][\w.]*)")


def _yaml_chain(name: str, include: str | None) -> list[Path]:
    """The task's YAML file and the files its ``include:`` keys pull in (nearest first), as lm-eval reads them."""
    import yaml

    class _Loader(yaml.SafeLoader):
        pass
    _Loader.add_multi_constructor("!", lambda loader, suffix, node: None)  # read, never run
    entry = _task_manager(include).task_index[name]
    files: list[Path] = []
    here = Path(entry.yaml_path) if entry.yaml_path else None
    while here is not None and here not in files and len(files) < 16:
        files.append(here)
        try:
            cfg = yaml.load(here.read_text(), Loader=_Loader) or {}
        except (OSError, ValueError, RecursionError, yaml.YAMLError):
            break
        parent = cfg.get("include") if isinstance(cfg, dict) else None
        here = (Path(parent) if Path(parent).is_absolute() else here.parent / parent) if isinstance(parent, str) else None
    return files


def task_code(name: str, include: str | None) -> list[Path]:
    """The Python files that lm-eval would import to load task ``name`` and that are not part of the installed lm-eval
    package: the ``!function module.name`` tags of the task's YAML chain, resolved beside the YAML that names them as
    lm-eval does (a YAML of the include folder may pull in a registry YAML, whose hooks are the package's own, or a
    YAML from anywhere, whose hooks are not), and a Python task class outside the package. Empty for the registry's own
    tasks. Nothing is imported."""
    if include is None:
        return []
    import lm_eval

    package = Path(lm_eval.__file__).resolve().parent
    entry = _task_manager(include).task_index[name]
    found: list[Path] = []
    if entry.kind.name == "PY_TASK" and entry.yaml_path:
        found.append(Path(entry.yaml_path))
    for yaml_file in _yaml_chain(name, include):
        try:
            text = yaml_file.read_text()
        except OSError:
            continue
        for dotted in _FUNCTION_TAG.findall(text):
            module = dotted.rsplit(".", 1)[0] if "." in dotted else dotted
            path = yaml_file.parent / (module.replace(".", "/") + ".py")
            if path not in found:
                found.append(path)
    return [f for f in found if package not in f.resolve().parents]


def code_consent_error(name: str, files: Sequence[str]) -> QuantcalError:
    shown = ", ".join(files[:3]) + (", ..." if len(files) > 3 else "")
    return QuantcalError(f"lm-eval:{name}: loading this task runs Python code from {shown} (its YAML names "
                         "!function hooks); quantcal runs a task's code only with `trust_task_code` (in a study, "
                         "trust_task_code: true) — pass it if you trust that code")


def yaml_num_fewshot(name: str, include: str | None = None) -> int:
    """The ``num_fewshot`` a task's YAML declares (following its ``include`` chain), else 0: what lm-eval uses when
    ``--num_fewshot`` is not given."""
    value = yaml_key(name, include, "num_fewshot")
    return int(value) if value is not None else 0


def yaml_output_type(name: str, include: str | None = None) -> str | None:
    """A task's ``output_type`` as its YAML chain declares it (lm-eval's default: ``generate_until``); None for a
    name that is not one task of the registry (a group, a tag, unknown)."""
    entry = _task_manager(include).task_index.get(name)
    if entry is None or getattr(entry.kind, "name", "") != "TASK":
        return None
    return str(yaml_key(name, include, "output_type") or "generate_until")


def yaml_key(name: str, include: str | None, key: str) -> Any:
    """``key`` as a task's YAML declares it, following its ``include`` chain (nearest first), else None; the YAML
    is read, never its Python hooks."""
    import yaml

    class _Loader(yaml.SafeLoader):
        pass
    _Loader.add_multi_constructor("!", lambda loader, suffix, node: None)  # !function hooks: not needed here
    entry = _task_manager(include).task_index.get(name)
    if entry is None:
        raise QuantcalError(f"unknown lm-eval task {name!r}; 'lm-eval ls tasks' lists them")
    cfg, here = dict(entry.cfg or {}), Path(entry.yaml_path) if entry.yaml_path else None
    for _ in range(16):  # an include chain, nearest first
        if cfg.get(key) is not None:
            return cfg[key]
        parent = cfg.get("include")
        if not parent or here is None:
            return None
        path = Path(parent) if Path(parent).is_absolute() else here.parent / parent
        try:
            cfg, here = yaml.load(path.read_text(), Loader=_Loader) or {}, path
        except (OSError, yaml.YAMLError):
            return None
    return None


def _no_rows(row: dict[str, Any]) -> Any:
    raise QuantcalError("lm-eval tasks are built by lm-eval, not from rows")


def expand_task_names(names: Sequence[str], include: str | None = None) -> tuple[list[str], dict[str, GroupSpec]]:
    """Task names with each lm-eval group replaced by its tasks (``lm-eval:NAME`` each), and the groups found."""
    out: list[str] = []
    groups: dict[str, GroupSpec] = {}
    for name in names:
        if not is_lm_eval(name):
            out.append(name)
            continue
        expansion = expand(name, include)
        out += [PREFIX + t for t in expansion.tasks if PREFIX + t not in out]
        groups.update(expansion.groups)
    return out, groups


def _chat_template(tokenizer: Any) -> Any:
    """lm-eval's ``HFLM.apply_chat_template``: the tokenizer's template, without the system turn if it refuses one."""

    def apply(history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return render_chat_messages(history, tokenizer, add_generation_prompt)

    return apply


def load_lm_eval_items(name: str, include: str | None, limit: int | None, setup: PromptSetup,
                       tokenizer: Any = None, trust_code: bool = False) -> list[Item]:
    """The items of one lm-eval task (not a group), rendered by lm-eval under ``setup``; a task of ``include``
    whose YAML names Python code is refused unless ``trust_code``."""
    bare = name[len(PREFIX):] if is_lm_eval(name) else name
    task = loaded_task(bare, include, trust_code)
    if task.OUTPUT_TYPE != "multiple_choice":
        raise QuantcalError(f"lm-eval:{bare} is a {task.OUTPUT_TYPE} task; this path scores multiple_choice tasks "
                            "(generate_until tasks are answered in free text: evaluate_generation)")
    if callable(getattr(task.config, "process_results", None)):
        hint = "; the built-in truthfulqa_mc2 computes MC2's score" if "mc2" in bare else ""
        raise QuantcalError(f"lm-eval:{bare} computes its score with its own process_results, which quantcal does not "
                            f"reproduce (it scores the gold choice's probability){hint}")
    if setup.apply_chat_template:
        require_chat_template(tokenizer)
    definition = definition_hash(task)
    build_requests(task, bare, limit, setup, tokenizer)
    by_doc: dict[int, list[Any]] = {}
    for instance in task.instances:
        by_doc.setdefault(instance.doc_id, []).append(instance)
    items = []
    for doc_id in sorted(by_doc):
        requests = sorted(by_doc[doc_id], key=lambda r: r.idx)
        items.append(_item(task, bare, doc_id, requests, definition))
    if not items:
        raise QuantcalError(f"lm-eval:{bare}: no items")
    return items


def loaded_task(bare: str, include: str | None, trust_code: bool = False) -> Any:
    """lm-eval's task object for one task (not a group), loaded as lm-eval loads it (offline: the local cache only);
    a task of ``include`` whose YAML names Python code is refused unless ``trust_code``."""
    if not trust_code:
        code = task_code(bare, include)
        if code:
            raise code_consent_error(bare, [str(f) for f in code])
    manager = _task_manager(include)
    offline = hub_unreachable()
    try:
        with offline_mode() if offline else nullcontext():  # offline: datasets' local cache only, no retries
            loaded = manager.load([bare])
    except QuantcalError:
        raise
    except Exception as exc:  # lm-eval and datasets raise many types for a task they cannot load (no network, ...)
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        hint = (f"; the hub is out of reach ({offline}): write a task YAML that reads a local copy (dataset_path: "
                "json, dataset_kwargs: {data_files: {test: PATH}}) and pass its folder with --lm-eval-include"
                if offline else "")
        raise QuantcalError(f"lm-eval:{bare}: lm-eval could not load the task ({type(exc).__name__}: {first}){hint}") from None
    if loaded["groups"] or len(loaded["tasks"]) != 1:
        raise QuantcalError(f"lm-eval:{bare} is a group; name one of its tasks, or let evaluate expand it")
    (task,) = loaded["tasks"].values()
    return task


def build_requests(task: Any, bare: str, limit: int | None, setup: PromptSetup, tokenizer: Any = None) -> None:
    """lm-eval renders the task's requests (prompts with their few-shot examples) under ``setup``."""
    task.set_config(key="num_fewshot", value=setup.num_fewshot)
    task.set_fewshot_seed(seed=setup.fewshot_seed)
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # lm-eval's own progress bar over the documents
            task.build_all_requests(limit=limit, system_instruction=setup.system_instruction,
                                    apply_chat_template=setup.apply_chat_template,
                                    fewshot_as_multiturn=setup.fewshot_as_multiturn,
                                    chat_template=_chat_template(tokenizer) if setup.apply_chat_template else None)
    except (AssertionError, ValueError) as exc:  # e.g. more few-shot examples asked than the pool holds
        raise QuantcalError(f"lm-eval:{bare}: {exc}") from None


def definition_hash(task: Any) -> str:
    """What fixes an lm-eval task's rendering apart from the prompt setup (which the run key holds on its own): the
    lm-eval version, the task's configuration as lm-eval dumps it (functions as their source code), and every document
    of its evaluation and few-shot splits. Unlike a hash of the rendered items it does not depend on ``limit``, so a
    run over the first 100 items resumes to 500."""
    import lm_eval

    config = {k: v for k, v in task.dump_config().items() if k != "num_fewshot"}
    digest = hashlib.sha256(json.dumps([getattr(lm_eval, "__version__", "?"), config], sort_keys=True,
                                       default=str).encode())
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            fewshot = task.fewshot_docs()
        except Exception:  # noqa: BLE001 - a task without a usable few-shot pool renders zero-shot only
            fewshot = None
        splits = (task.eval_docs, fewshot)
    for docs in splits:
        for doc in docs if docs is not None else ():
            digest.update(json.dumps(doc, sort_keys=True, default=str).encode())
        digest.update(b"\x00")
    return digest.hexdigest()[:16]


def _item(task: Any, name: str, doc_id: int, requests: Sequence[Any], definition: str) -> Item:
    doc = requests[0].doc
    choices = [str(c) for c in task.doc_to_choice(doc)]
    pairs = [tuple(r.arguments[:2]) for r in requests][: len(choices)]  # mutual-info extras come after
    if len(pairs) != len(choices):
        raise QuantcalError(f"lm-eval:{name} document {doc_id}: {len(pairs)} requests for {len(choices)} choices")
    gold = task.doc_to_text(doc) if task.multiple_input else task.doc_to_target(doc)
    golds = _golds(gold, choices, f"lm-eval:{name} document {doc_id}")
    contexts = tuple(c for c, _ in pairs)
    shown = contexts[0] if len(set(contexts)) == 1 else _common_prefix(contexts)
    return Item(id=str(doc_id), context=shown, choices=tuple(choices), gold=golds[0], golds=tuple(golds),
                meta={"origin": f"lm-eval:{name}[{doc_id}]", "definition": definition}, contexts=contexts,
                continuations=tuple(c for _, c in pairs))


def _golds(gold: Any, choices: list[str], where: str) -> list[int]:
    values = gold if isinstance(gold, list) else [gold]
    out = []
    for g in values:
        if isinstance(g, str) and not g.strip().lstrip("-").isdigit():
            if g not in choices:
                raise QuantcalError(f"{where}: gold answer {g!r} is not one of the choices")
            out.append(choices.index(g))
        else:
            index = int(g)
            if not 0 <= index < len(choices):
                raise QuantcalError(f"{where}: gold index {index} out of range for {len(choices)} choices")
            out.append(index)
    if not out:
        raise QuantcalError(f"{where}: no gold answer")
    return out


def _common_prefix(texts: Sequence[str]) -> str:
    first, last = min(texts), max(texts)
    n = 0
    while n < min(len(first), len(last)) and first[n] == last[n]:
        n += 1
    return first[:n]


def items_fingerprint(items: Sequence[Item]) -> str:
    """What identifies an lm-eval task's data in a run's key: its :func:`definition_hash` (the items carry it), else
    (items from elsewhere) the hash of every item."""
    definitions = {it.meta.get("definition") for it in items}
    if len(definitions) == 1 and None not in definitions:
        return "lm-eval:" + definitions.pop()
    return "items:" + hashlib.sha256(json.dumps([it.content_hash for it in items]).encode()).hexdigest()[:16]
