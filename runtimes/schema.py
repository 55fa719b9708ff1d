"""A small declarative checker for JSON documents (manifest.json): one-line errors naming the field.

Why not jsonschema or pydantic: runtimes are the torch-free base install, kept to a few packages;
the manifest needs a dozen field rules, which this does in ~100 lines with messages that name the
field path (`graphs.tokenize.file`) and the value, as the CLIs' one-line errors want.

    MANIFEST = Obj(required={"num_embed": Int(min=1)}, optional={"graphs": MapOf(Obj(...))})
    check(document, MANIFEST, "manifest.json")   # SchemaError("manifest.json: num_embed must be ...")
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class SchemaError(ValueError):
    """A document does not have the shape its schema says; the message names the field."""


class Spec:
    """One rule; `check(value, where)` raises SchemaError naming `where`."""

    def check(self, value: Any, where: str) -> None:
        raise NotImplementedError

    def fail(self, where: str, wanted: str, value: Any) -> SchemaError:
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return SchemaError(f"{where} must be {wanted}, got {type(value).__name__} {shown}")


@dataclass(frozen=True)
class Int(Spec):
    """An integer (not a bool, not a float) in [min, max]."""

    min: int | None = None
    max: int | None = None

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.fail(where, "an integer", value)
        if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
            raise self.fail(where, f"an integer in [{self.min}, {self.max}]", value)


@dataclass(frozen=True)
class Number(Spec):
    """A finite int or float (not a bool)."""

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value or abs(value) == float("inf"):
            raise self.fail(where, "a finite number", value)


@dataclass(frozen=True)
class Bool(Spec):
    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, bool):
            raise self.fail(where, "true or false", value)


@dataclass(frozen=True)
class Str(Spec):
    """A string, optionally one of `choices` or matching `pattern` (full match), at most max_length long."""

    choices: tuple[str, ...] = ()
    pattern: str | None = None
    max_length: int = 4096

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, str):
            raise self.fail(where, "a string", value)
        if self.choices and value not in self.choices:
            raise self.fail(where, f"one of {', '.join(self.choices)}", value)
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            raise self.fail(where, f"a string matching {self.pattern}", value)
        if len(value) > self.max_length:
            raise self.fail(where, f"a string of at most {self.max_length} characters", value)


@dataclass(frozen=True)
class Nullable(Spec):
    """null, or what `inner` accepts."""

    inner: Spec

    def check(self, value: Any, where: str) -> None:
        if value is not None:
            self.inner.check(value, where)


@dataclass(frozen=True)
class AnyOf(Spec):
    """What one of `options` accepts."""

    options: tuple[Spec, ...]
    description: str

    def check(self, value: Any, where: str) -> None:
        for option in self.options:
            try:
                option.check(value, where)
                return
            except SchemaError:
                continue
        raise self.fail(where, self.description, value)


@dataclass(frozen=True)
class ListOf(Spec):
    """A list whose items `item` accepts; `length` fixes its length, max_items bounds it."""

    item: Spec
    length: int | None = None
    max_items: int = 10_000

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, list):
            raise self.fail(where, "a list", value)
        if (self.length is not None and len(value) != self.length) or len(value) > self.max_items:
            raise self.fail(where, f"a list of {self.length if self.length is not None else f'at most {self.max_items}'} items", value)
        for index, item in enumerate(value):
            self.item.check(item, f"{where}[{index}]")


@dataclass(frozen=True)
class MapOf(Spec):
    """An object with any keys (strings) whose values `value` accepts; at least min_items of them."""

    value: Spec
    min_items: int = 0
    max_items: int = 10_000

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, Mapping):
            raise self.fail(where, "an object", value)
        if not self.min_items <= len(value) <= self.max_items:
            raise self.fail(where, f"an object with {self.min_items} to {self.max_items} entries", value)
        for key, item in value.items():
            self.value.check(item, f"{where}.{key}" if where else str(key))


@dataclass(frozen=True)
class Obj(Spec):
    """An object with `required` and `optional` fields; other fields are allowed (newer writers add some)."""

    required: dict[str, Spec] = field(default_factory=dict)
    optional: dict[str, Spec] = field(default_factory=dict)

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, Mapping):
            raise self.fail(where, "an object", value)
        missing = [name for name in self.required if name not in value]
        if missing:
            raise SchemaError(f"{where or 'it'} lacks {', '.join(missing)}")
        for name, spec in {**self.optional, **self.required}.items():
            if name in value:
                spec.check(value[name], field_path(where, name))


def check(document: Any, spec: Spec, where: str) -> None:
    """Raise SchemaError (one line, naming the field) unless document has the shape spec describes."""
    spec.check(document, where)


def field_path(where: str, name: str) -> str:
    """`where.name`, or `name` at the top."""
    return f"{where}.{name}" if where else name
