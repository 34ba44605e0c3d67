"""Reading the plain-text annotation files that fine-grained datasets ship.

Errors and problems name the file and the line, so a user can open the file at the fault.
A reader passes a ``problems`` list to collect every bad line (``dva data check`` lists them
all); without one, the first bad line raises.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from dva.errors import DataError


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataError(f"{path}: missing {what}")
    return path


def require_files(root: Path, names: Iterable[str], layout: str) -> None:
    """Refuse a root that lacks any of ``names``, naming all of them (wrong root, partial extraction)."""
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise DataError(
            f"{root}: not a complete {layout} copy, missing {', '.join(missing)} "
            "(is this the folder the archive extracted, and is the extraction complete?)"
        )


def find_root(root: Path, marker: str, children: Iterable[str]) -> Path:
    """``root`` if it holds ``marker``, else the first of ``root/child`` that does (an archive's top folder)."""
    if (root / marker).exists():
        return root
    for child in children:
        if (root / child / marker).exists():
            return root / child
    return root


def read_rows(
    path: Path, ncols: int, sep: str | None = None, problems: list[str] | None = None
) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line_number, fields)`` for each non-blank line, splitting at most ``ncols - 1`` times.

    ``sep=None`` splits on white space (CUB's official files); cub100 uses ``","``. Fields are
    stripped, so the last field may hold spaces (class names). A line with too few fields is a
    problem naming file and line: appended to ``problems`` when given, raised otherwise.
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
            report(problems, f"{path}:{number}: expected {ncols} fields, got {line!r}")
            continue
        yield number, fields


def read_table(
    path: Path, ncols: int, sep: str | None = None, problems: list[str] | None = None
) -> dict[str, tuple[int, list[str]]]:
    """``first field -> (line_number, other fields)``; a repeated id is a problem (the first wins)."""
    out: dict[str, tuple[int, list[str]]] = {}
    for number, fields in read_rows(path, ncols, sep, problems):
        key = fields[0]
        if key in out:
            report(problems, f"{path}:{number}: id {key} already defined on line {out[key][0]}")
            continue
        out[key] = (number, fields[1:])
    return out


def read_mapping(path: Path, sep: str | None = None, problems: list[str] | None = None) -> dict[str, tuple[int, str]]:
    """``id -> (line_number, value)`` of a two-column file; a repeated id is a problem."""
    return {k: (line, v[0]) for k, (line, v) in read_table(path, 2, sep, problems).items()}


def report(problems: list[str] | None, message: str) -> None:
    if problems is None:
        raise DataError(message)
    problems.append(message)


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
