"""Search filters: restrict a search to the images whose label or metadata match.

One small, explicit type, :class:`Filter`, parsed from the strings users type::

    label=Cardinal              equality (also path=..., or any field of the gallery list)
    label in Cardinal,Blue_Jay  set membership (comma-separated)
    year>=2000   price<10       numeric comparison (<, <=, >, >=)
    10<=year<=20                numeric range (either end < or <=)

Several filters mean AND. A filter is compiled to SQL over the index's metadata database
(:mod:`dva.index.store`), whose columns and indexes make each one a lookup, not a scan.
Values are compared as text for equality (``year=2000`` also matches the number 2000 and
"2000.0" when the value is numeric) and as numbers for ranges: a field value takes part in a
range when it is a number or a string that reads as one ("12", "3.5"); other values never
match a range.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from dva.errors import DataError

#: Columns of every image, not user fields: filters on them use the image table's own indexes.
BUILTIN_FIELDS = ("label", "path")

_NAME = r"[^\s=<>!,][^=<>!,]*?"
_NUMBER = r"[^\s=<>!,]+"
_RANGE = re.compile(rf"^\s*({_NUMBER})\s*(<=|<)\s*({_NAME})\s*(<=|<)\s*({_NUMBER})\s*$")
_COMPARE = re.compile(rf"^\s*({_NAME})\s*(>=|<=|>|<)\s*(.+?)\s*$")
_MEMBER = re.compile(rf"^\s*({_NAME})\s+in\s+(.+?)\s*$")
_EQUAL = re.compile(rf"^\s*({_NAME})\s*==?\s*(.*?)\s*$")


@dataclass(frozen=True)
class Filter:
    """One condition on one field: ``values`` (equality or membership) or a numeric range."""

    field: str
    #: Equality or membership: the field equals one of these (as text).
    values: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    low_inclusive: bool = True
    high_inclusive: bool = True

    @property
    def is_range(self) -> bool:
        return not self.values

    @classmethod
    def parse(cls, text: str) -> Filter:
        """``"label=Cardinal"``, ``"label in A,B"``, ``"year>=2000"``, ``"10<=year<=20"``; one line on error."""
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"filter {text!r}: empty (expected e.g. label=Cardinal, label in A,B, year>=2000)")
        if match := _RANGE.match(text):
            low, low_op, name, high_op, high = match.groups()
            return cls(
                name.strip(),
                low=_number(text, low),
                high=_number(text, high),
                low_inclusive=low_op == "<=",
                high_inclusive=high_op == "<=",
            )._checked(text)
        if match := _MEMBER.match(text):
            name, values = match.groups()
            members = tuple(v.strip() for v in values.split(","))
            if not all(members):
                raise DataError(f"filter {text!r}: an empty value in the set (expected e.g. label in A,B)")
            return cls(name.strip(), values=members)
        if match := _COMPARE.match(text):
            name, op, value = match.groups()
            bound = _number(text, value)
            if op.startswith(">"):
                return cls(name.strip(), low=bound, low_inclusive=op == ">=")
            return cls(name.strip(), high=bound, high_inclusive=op == "<=")
        if (match := _EQUAL.match(text)) and "!" not in text:
            name, value = match.groups()
            if not value:
                raise DataError(f"filter {text!r}: no value after '=' (expected e.g. label=Cardinal)")
            return cls(name.strip(), values=(value,))
        raise DataError(
            f"filter {text!r}: not understood (expected FIELD=VALUE, FIELD in A,B, FIELD>=N, FIELD<N or N<=FIELD<=M)"
        )

    def _checked(self, text: str) -> Filter:
        if self.low is not None and self.high is not None and self.low > self.high:
            raise DataError(f"filter {text!r}: the range is empty ({self.low:g} > {self.high:g})")
        return self

    def __str__(self) -> str:
        """The filter as the string that parses back to it."""
        if self.values:
            return (
                f"{self.field}={self.values[0]}"
                if len(self.values) == 1
                else f"{self.field} in {','.join(self.values)}"
            )
        low_op, high_op = ("<=" if self.low_inclusive else "<"), ("<=" if self.high_inclusive else "<")
        if self.low is not None and self.high is not None:
            return f"{self.low:g}{low_op}{self.field}{high_op}{self.high:g}"
        if self.low is not None:
            return f"{self.field}{'>=' if self.low_inclusive else '>'}{self.low:g}"
        return f"{self.field}{high_op}{self.high:g}"


FilterLike = Filter | str


def parse_filters(filters: FilterLike | Iterable[FilterLike] | None) -> list[Filter]:
    """Filters from ``None``, one filter or string, or a sequence of them (AND)."""
    if filters is None:
        return []
    if isinstance(filters, (Filter, str)):
        filters = [filters]
    return [f if isinstance(f, Filter) else Filter.parse(f) for f in filters]


def filter_sql(f: Filter, visible: str) -> tuple[str, list[object]]:
    """``(SELECT id ... , parameters)``: the ids of visible images that ``f`` keeps.

    ``visible`` is the SQL condition on table ``i`` (images) that selects the rows of the
    index's current version. Built-in fields are columns of ``images``; user fields are rows
    of ``fields`` (name, text, num), indexed on (name, text) and (name, num).
    """
    if f.field in BUILTIN_FIELDS:
        if f.is_range:
            raise DataError(f"filter {str(f)!r}: {f.field} is text; a range needs a numeric field")
        marks = ",".join("?" * len(f.values))
        return f"SELECT i.id FROM images i WHERE {visible} AND i.{f.field} IN ({marks})", list(f.values)
    # CROSS JOIN makes SQLite drive from ``fields`` (its (name, text) or (name, num) index),
    # rather than from a scan of every visible image.
    base = f"SELECT i.id FROM fields f CROSS JOIN images i ON i.key = f.key WHERE {visible} AND f.name = ?"
    if f.values:
        numbers = [n for n in (maybe_number(v) for v in f.values) if n is not None]
        marks = ",".join("?" * len(f.values))
        sql = f"{base} AND (f.text IN ({marks})"
        if numbers:
            sql += f" OR f.num IN ({','.join('?' * len(numbers))})"
        return sql + ")", [f.field, *f.values, *numbers]
    sql, params = base, [f.field]
    if f.low is not None:
        sql += f" AND f.num {'>=' if f.low_inclusive else '>'} ?"
        params.append(f.low)
    if f.high is not None:
        sql += f" AND f.num {'<=' if f.high_inclusive else '<'} ?"
        params.append(f.high)
    return sql + " AND f.num IS NOT NULL", params


def check_fields(
    filters: Sequence[Filter],
    has_field: Callable[[str], bool],
    field_names: Callable[[], Iterable[str]],
    where: str = "this index",
) -> None:
    """A filter on a field no image has is a mistake (a typo), not an empty answer: one line naming it.

    Shared by the index's own database and the Qdrant backend, so both refuse the same filters
    with the same words; ``field_names`` is called only to write the error.
    """
    for f in filters:
        if f.field not in BUILTIN_FIELDS and not has_field(f.field):
            known = ", ".join([*BUILTIN_FIELDS, *field_names()])
            raise DataError(f"filter {str(f)!r}: no field {f.field!r} in {where} (fields: {known})")
        if f.field in BUILTIN_FIELDS and f.is_range:
            raise DataError(f"filter {str(f)!r}: {f.field} is text; a range needs a numeric field")


def field_values(value: object) -> list[tuple[str, float | None]]:
    """``(text, number)`` rows a metadata value is indexed as: a list gives one per element,
    so ``tags=red`` matches ``{"tags": ["red", "round"]}``."""
    if isinstance(value, (list, tuple)):
        return [pair for element in value if not isinstance(element, (list, tuple)) for pair in field_values(element)]
    if isinstance(value, bool):
        return [("true" if value else "false", None)]
    if isinstance(value, (int, float)):
        number = float(value)
        return [(str(value), number if math.isfinite(number) else None)]
    if isinstance(value, str):
        return [(value, maybe_number(value))]
    return [(json.dumps(value, ensure_ascii=False, sort_keys=True), None)]


_NUMERIC_TEXT = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$")


def maybe_number(text: str) -> float | None:
    """The number a string reads as ("12", "3.5", "1e3"), or None ("12abc", "nan", "")."""
    if not _NUMERIC_TEXT.match(text):
        return None
    number = float(text)
    return number if math.isfinite(number) else None


def _number(text: str, value: str) -> float:
    number = maybe_number(value)
    if number is None:
        raise DataError(f"filter {text!r}: {value.strip()!r} is not a number (a comparison needs one)")
    return number


def describe(filters: Sequence[Filter]) -> str:
    return " AND ".join(str(f) for f in filters)
