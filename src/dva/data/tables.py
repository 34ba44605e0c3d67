"""Reading the plain-text annotation files that fine-grained datasets ship.

Errors and problems name the file and the line, so a user can open the file at the fault.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from dva.errors import DataError


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataError(f"{path}: missing {what}")
    return path


def read_rows(path: Path, ncols: int, sep: str | None = None) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line_number, fields)`` for each non-blank line, splitting at most ``ncols - 1`` times.

    ``sep=None`` splits on white space (CUB's official files); cub100 uses ``","``.
    Fields are stripped. A line with too few fields is a :class:`DataError` naming file and line.
    """
    require_file(path, "annotation file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a UTF-8 text file ({e.reason})") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(sep, ncols - 1)]
        if len(fields) != ncols or not all(fields):
            raise DataError(f"{path}:{number}: expected {ncols} fields, got {line!r}")
        yield number, fields


def read_mapping(path: Path, sep: str | None = None) -> dict[str, tuple[int, str]]:
    """``id -> (line_number, value)`` of a two-column file; a repeated id is an error."""
    out: dict[str, tuple[int, str]] = {}
    for number, (key, value) in read_rows(path, 2, sep):
        if key in out:
            raise DataError(f"{path}:{number}: id {key} already defined on line {out[key][0]}")
        out[key] = (number, value)
    return out


def parse_int(value: str, path: Path, line: int, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DataError(f"{path}:{line}: {what} must be an integer, got {value!r}") from None


def parse_float(value: str, path: Path, line: int, what: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise DataError(f"{path}:{line}: {what} must be a number, got {value!r}") from None
