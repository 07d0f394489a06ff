"""Reading rows of a dataset in Hugging Face schema, from a local file or from the hub.

Local rows carry their origin (``file:line``) so that a malformed row can be named in the error.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from quantcal.errors import QuantcalError
from quantcal.tasks.hub_access import hub_unreachable, offline_mode

LOCAL_FORMATS = (".jsonl", ".json", ".parquet", ".csv")
#: What a user without the hub can do instead.
LOCAL_COPY_HINT = ("give the task a local copy in the hub schema: `quantcal download TASK --out DIR` where the hub is "
                   "reachable, then eval --data-file DIR/TASK/SPLIT.jsonl, or a study's --data-dir DIR")


@dataclass(frozen=True)
class Row:
    """One dataset row and where it came from, for error messages."""

    data: dict[str, Any]
    index: int
    origin: str


def read_local_rows(path: str | Path) -> list[Row]:
    """Read every row of a JSON lines, JSON (list of objects), Parquet or CSV file."""
    path = Path(path)
    if not path.exists():
        raise QuantcalError(f"{path}: file not found")
    if not path.is_file():
        raise QuantcalError(f"{path}: not a file")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return list(_read_jsonl(path))
    if suffix == ".json":
        return _read_json(path)
    if suffix == ".parquet":
        return _read_table(path, "parquet")
    if suffix == ".csv":
        return _read_table(path, "csv")
    raise QuantcalError(f"{path}: unsupported file type {suffix!r}; expected one of {', '.join(LOCAL_FORMATS)}")


def _decode(raw: bytes, path: Path, line_no: int | None = None) -> str:
    """UTF-8 text (a leading byte-order mark allowed), or one error naming the line and byte that are not UTF-8."""
    try:
        return raw.decode("utf-8-sig" if line_no in (None, 1) else "utf-8")
    except UnicodeDecodeError as exc:
        line = line_no if line_no is not None else raw[: exc.start].count(b"\n") + 1
        column = exc.start + 1 if line_no is not None else exc.start - raw.rfind(b"\n", 0, exc.start)
        raise QuantcalError(f"{path}:{line}: not UTF-8 (byte 0x{raw[exc.start]:02x} at column {column}); "
                            "save the file as UTF-8") from None


def json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-blank line of a JSON lines file; a line that is not UTF-8, not JSON
    or not an object is one error naming ``path:line``."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise QuantcalError(f"{path}: cannot read ({exc.strerror})") from exc
    with handle:
        for line_no, raw in enumerate(handle, start=1):
            line = _decode(raw, path, line_no)
            if not line.strip():
                continue
            data = parse_json(line, f"{path}:{line_no}", "; expected one JSON object per line")
            if not isinstance(data, dict):
                raise QuantcalError(f"{path}:{line_no}: expected a JSON object, got {type(data).__name__}")
            yield line_no, data


def parse_json(text: str, where: str, hint: str = "") -> Any:
    """``json.loads`` whose every failure on the input is one error naming ``where`` (and the line, for a JSON
    document): bad syntax, but also what lies past the parser's limits, an integer of more than 4,300 digits
    (``ValueError``) or nesting deeper than the interpreter's stack (``RecursionError``)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        line = f":{exc.lineno}" if ":" not in where.rsplit("/", 1)[-1] else ""
        raise QuantcalError(f"{where}{line}: not valid JSON ({exc.msg}){hint}") from None
    except RecursionError:
        raise QuantcalError(f"{where}: JSON nested too deeply to read{hint}") from None
    except MemoryError:
        raise QuantcalError(f"{where}: JSON too large to read in memory") from None
    except ValueError as exc:  # e.g. "Exceeds the limit (4300 digits) for integer string conversion"
        raise QuantcalError(f"{where}: cannot read this JSON ({str(exc).splitlines()[0]}){hint}") from None


def _read_jsonl(path: Path) -> Iterator[Row]:
    for index, (line_no, data) in enumerate(json_lines(path)):
        yield Row(data, index, f"{path}:{line_no}")


def _read_json(path: Path) -> list[Row]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise QuantcalError(f"{path}: cannot read ({exc.strerror})") from exc
    data = parse_json(_decode(raw, path), str(path))
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise QuantcalError(f"{path}: expected a JSON list of objects (or {{\"data\": [...]}})")
    rows = []
    for i, obj in enumerate(data):
        if not isinstance(obj, dict):
            raise QuantcalError(f"{path}: element {i}: expected a JSON object, got {type(obj).__name__}")
        rows.append(Row(obj, i, f"{path}[{i}]"))
    return rows


def _read_table(path: Path, kind: str) -> list[Row]:
    import pandas as pd

    try:
        frame = pd.read_parquet(path) if kind == "parquet" else pd.read_csv(path)
    except Exception as exc:  # pandas raises many types for unreadable files
        raise QuantcalError(f"{path}: cannot read as {kind} ({exc})") from exc
    rows = []
    for i, record in enumerate(frame.to_dict(orient="records")):
        data = {k: _plain(v) for k, v in record.items()}
        line = i + 2 if kind == "csv" else i  # CSV: header is line 1
        rows.append(Row(data, i, f"{path}:{line}" if kind == "csv" else f"{path}[row {i}]"))
    return rows


def _plain(value: Any) -> Any:
    """Turn numpy/pyarrow containers from a table into plain Python lists and dicts."""
    if hasattr(value, "tolist"):
        return _plain(value.tolist())
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def read_hub_rows(path: str, config: str | None, split: str) -> list[Row]:
    """Load a split from the Hugging Face hub through ``datasets`` (needs network or a local cache)."""
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a dependency
        raise QuantcalError("the 'datasets' package is needed to load from the hub") from exc
    where = f"{path}" + (f" ({config})" if config else "") + f", split {split}"
    offline = hub_unreachable()
    try:
        with offline_mode() if offline else nullcontext():  # offline: the local cache only, no minutes of retries
            dataset = datasets.load_dataset(path, config, split=split)
    except Exception as exc:
        if offline:
            raise QuantcalError(f"cannot load {where}: the hub is out of reach ({offline}) and the local datasets "
                                f"cache does not hold it; {LOCAL_COPY_HINT}") from None
        raise QuantcalError(
            f"cannot load {where} from the Hugging Face hub: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            f" — offline? {LOCAL_COPY_HINT}"
        ) from exc
    origin = f"{path}/{config or ''}/{split}"
    return [Row(dict(record), i, f"{origin}[{i}]") for i, record in enumerate(dataset)]
