"""Recipe specs: ``family:key=value,key=value`` (e.g. ``rtn:bits=4,group_size=64``, ``gguf:q4_0``, ``bnb:nf4``).

Each family declares its parameters (type, default, allowed values); parsing checks every key and value and
says what is valid. The canonical form (all parameters, sorted) is the recipe's stable key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from quantcal.errors import QuantcalError


@dataclass(frozen=True)
class Param:
    kind: type
    default: Any
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    help: str = ""
    forbid: tuple[Any, ...] = ()
    key_default: bool = True  # False: left out of the canonical key at its default (parameters added later)

    def parse(self, family: str, key: str, text: str) -> Any:
        try:
            if self.kind is bool:
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                value: Any = text.lower() in ("true", "1", "yes")
            else:
                value = self.kind(text)
        except ValueError:
            raise QuantcalError(f"recipe {family}: {key}={text!r} is not a valid {self.kind.__name__}; {self.describe()}") from None
        self.check(family, key, value)
        return value

    def check(self, family: str, key: str, value: Any) -> None:
        if self.choices is not None and value not in self.choices:
            raise QuantcalError(f"recipe {family}: {key}={value!r} not allowed; {self.describe()}")
        if value in self.forbid or (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise QuantcalError(f"recipe {family}: {key}={value!r} out of range; {self.describe()}")

    def describe(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(str(c).lower() if isinstance(c, bool) else str(c) for c in self.choices)
        names = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false"}
        name = names.get(self.kind.__name__) or getattr(self.kind, "what", self.kind.__name__)
        bound = (f" in [{self.low}, {self.high}]" if self.high is not None else f" >= {self.low}") if self.low is not None else ""
        return name + bound + (f", not {', '.join(map(str, self.forbid))}" if self.forbid else "")


@dataclass(frozen=True)
class RecipeSpec:
    family: str
    params: dict[str, Any] = field(default_factory=dict)
    unkeyed_defaults: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    #: A KV-cache format served with this weight recipe (``awq:bits=4+kv:fp8``), or None.
    kv: "RecipeSpec | None" = None

    @property
    def key(self) -> str:
        """Canonical text: family and every parameter, sorted; equal specs have equal keys. Parameters added after a
        family's first release (``mode``, ``fallback``) are left out at their default, so earlier keys (and the
        variants and study runs stored under them) stay valid. A composed recipe is its parts' keys joined by ``+``."""
        body = ",".join(f"{k}={_text(v)}" for k, v in sorted(self.params.items())
                        if not (k in self.unkeyed_defaults and self.unkeyed_defaults[k] == v))
        own = f"{self.family}:{body}" if body else self.family
        return own + ("+" + self.kv.key if self.kv is not None else "")

    @property
    def weights(self) -> "RecipeSpec":
        """The weight part (what is built and cached), without a KV-cache format."""
        return RecipeSpec(self.family, self.params, self.unkeyed_defaults) if self.kv is not None else self

    @property
    def slug(self) -> str:
        """A short readable name (``rtn-w4g64``)."""
        p = self.params
        if "bits" in p and "group_size" in p:
            return f"{self.family}-w{p['bits']}g{p['group_size']}"
        native = "-native" if p.get("mode") == "native" else ""
        if "type" in p:
            return f"{self.family}-{p['type']}{native}"
        return self.family


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return f"({value})" if isinstance(value, str) and ("," in value or "+" in value) else str(value)


def parse_spec(text: str, schemas: dict[str, tuple[dict[str, Param], str | None]]) -> RecipeSpec:
    """Parse ``family[:positional][,key=value...]``; ``schemas[family] = (params, positional key or None)``."""
    text = text.strip()
    family, _, rest = text.partition(":")
    family = family.strip().lower()
    if family not in schemas:
        raise QuantcalError(f"unknown recipe {family!r}; known recipes: {', '.join(sorted(schemas))}")
    params_schema, positional = schemas[family]
    values: dict[str, Any] = {}
    for i, part in enumerate(p.strip() for p in split_top_level(rest) if p.strip()):
        if "=" not in part:
            if i == 0 and positional is not None:
                key, raw = positional, part
            else:
                raise QuantcalError(f"recipe {family}: expected key=value, got {part!r}; keys: {', '.join(params_schema)}")
        else:
            key, raw = (s.strip() for s in part.split("=", 1))
        if key not in params_schema:
            valid = "; ".join(f"{k} ({p.describe()}, default {_text(p.default)})" for k, p in params_schema.items())
            raise QuantcalError(f"recipe {family}: unknown key {key!r}; valid keys: {valid}")
        if key in values:
            raise QuantcalError(f"recipe {family}: {key} given twice")
        raw, param = unwrap(raw), params_schema[key]
        values[key] = param.parse(family, key, raw.lower() if param.kind is str and param.choices is not None else raw)
    for key, param in params_schema.items():
        if key not in values:
            if param.default is None:
                raise QuantcalError(f"recipe {family}: {key} is required ({param.describe()})")
            values[key] = param.default
    return RecipeSpec(family, values, {k: p.default for k, p in params_schema.items() if not p.key_default})


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside parentheses: ``base=(rtn:bits=3,group_size=64),budget=4.5`` is two parts, so a
    recipe can take other recipes as parameters (and ``+`` composes recipes only at the top)."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise QuantcalError(f"recipe {text!r}: a ')' without its '('")
        elif char == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise QuantcalError(f"recipe {text!r}: a '(' without its ')'")
    return parts + [text[start:]]


def unwrap(text: str) -> str:
    """``(inner)`` -> ``inner``: a nested recipe's parentheses."""
    text = text.strip()
    return text[1:-1].strip() if text.startswith("(") and text.endswith(")") else text
