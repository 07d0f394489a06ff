"""Reading rows of a dataset in Hugging Face schema, from a local file or from the hub.

Local rows carry their origin (``file:line``) so that a malformed row can be named in the error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from quantcal.errors import QuantcalError

LOCAL_FORMATS = (".jsonl", ".json", ".parquet", ".csv")


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


def _read_jsonl(path: Path) -> Iterator[Row]:
    try:
        handle = path.open("r", encoding="utf-8")
    except OSError as exc:
        raise QuantcalError(f"{path}: cannot read ({exc.strerror})") from exc
    with handle:
        index = 0
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                raise QuantcalError(f"{path}:{line_no}: not valid JSON ({exc.msg}); expected one JSON object per line") from exc
            if not isinstance(data, dict):
                raise QuantcalError(f"{path}:{line_no}: expected a JSON object, got {type(data).__name__}")
            yield Row(data, index, f"{path}:{line_no}")
            index += 1


def _read_json(path: Path) -> list[Row]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise QuantcalError(f"{path}: cannot read ({exc.strerror})") from exc
    except json.JSONDecodeError as exc:
        raise QuantcalError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from exc
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
    try:
        dataset = datasets.load_dataset(path, config, split=split)
    except Exception as exc:
        where = f"{path}" + (f" ({config})" if config else "") + f", split {split}"
        raise QuantcalError(
            f"cannot load {where} from the Hugging Face hub: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            " — offline? pass `data_file`, a local copy in the hub schema"
        ) from exc
    origin = f"{path}/{config or ''}/{split}"
    return [Row(dict(record), i, f"{origin}[{i}]") for i, record in enumerate(dataset)]
