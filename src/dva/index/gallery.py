"""What a gallery is: the images a user wants to search, with optional labels and metadata.

A gallery comes as a folder tree (every image below it; its label is the name of the folder
holding it) or as a list file (CSV with a header, or JSON lines) naming each image and,
optionally, its label and any other fields the user wants back with a match (a product
id, a URL, ...). Relative paths in a list are relative to the list file.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dva._io import read_jsonl
from dva.data.folder import IMAGE_SUFFIXES, is_image_file
from dva.errors import DataError

#: Fields a list may not use for its own metadata: they name what every match already has.
RESERVED_FIELDS = frozenset({"id", "path", "label", "score"})
LIST_SUFFIXES = {".csv": "csv", ".tsv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


@dataclass(frozen=True)
class GalleryItem:
    #: Absolute path: the index and the server open it from anywhere.
    path: Path
    label: str | None = None
    #: Extra fields from a list file, returned with every match of this image.
    metadata: dict[str, Any] = field(default_factory=dict)


def read_gallery(source: str | Path, *, folder_labels: bool = True) -> list[GalleryItem]:
    """Read a folder tree or a CSV / JSON-lines list into gallery items (paths absolute)."""
    source = Path(source).expanduser()
    if source.is_dir():
        return _read_folder(source.resolve(), folder_labels)
    if not source.is_file():
        raise DataError(f"{source}: no such folder or list file")
    kind = LIST_SUFFIXES.get(source.suffix.lower())
    if kind is None:
        raise DataError(
            f"{source}: a gallery is a folder of images or a list file ({', '.join(sorted(LIST_SUFFIXES))})"
        )
    rows = _read_csv(source) if kind == "csv" else _read_jsonl(source)
    return _items_from_rows(source, rows)


def _read_folder(root: Path, folder_labels: bool) -> list[GalleryItem]:
    paths = sorted(p for p in root.rglob("*") if is_image_file(p))
    if not paths:
        raise DataError(f"{root}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    # An image right in the root has no class folder, hence no label.
    return [GalleryItem(p, p.parent.name if folder_labels and p.parent != root else None) for p in paths]


def _read_csv(path: Path) -> list[tuple[int, dict[str, Any]]]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = None
    try:
        # utf-8-sig: Excel's "CSV UTF-8" starts with a byte-order mark, which is not part of the header
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            if reader.fieldnames is None or "path" not in [n.strip() for n in reader.fieldnames]:
                raise DataError(f"{path}:1: the header needs a 'path' column, got {reader.fieldnames}")
            rows = []
            for row in reader:
                if None in row:
                    raise DataError(f"{path}:{reader.line_num}: more fields than the header names")
                rows.append((reader.line_num, {k.strip(): v.strip() for k, v in row.items() if v and v.strip()}))
            return rows
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a UTF-8 text file ({e.reason})") from None
    except csv.Error as e:  # a field over csv's 128 KiB limit, a NUL, ...
        line = reader.reader.line_num if reader is not None else 1
        raise DataError(f"{path}:{line}: not a readable CSV line ({e})") from None


def _read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    return read_jsonl(path)


def _items_from_rows(source: Path, rows: list[tuple[int, dict[str, Any]]]) -> list[GalleryItem]:
    items: list[GalleryItem] = []
    seen: dict[Path, int] = {}
    for number, row in rows:
        where = f"{source}:{number}"
        raw_path = row.get("path")
        if not isinstance(raw_path, str) or not raw_path:
            raise DataError(f"{where}: missing 'path'")
        if "\0" in raw_path:
            raise DataError(f"{where}: 'path' contains a NUL character, which no file name can")
        try:
            path = (source.parent / Path(raw_path).expanduser()).resolve()
        except (OSError, RuntimeError, ValueError) as e:  # ~nobody/x.jpg, a symlink loop, ...
            raise DataError(f"{where}: cannot resolve 'path' {raw_path!r} ({e})") from None
        if path in seen:
            raise DataError(f"{where}: {raw_path} is already listed on line {seen[path]}")
        seen[path] = number
        label = row.get("label")
        if label is not None and not isinstance(label, (str, int)):
            raise DataError(f"{where}: 'label' must be a string or an integer, got {label!r}")
        metadata = {k: v for k, v in row.items() if k not in ("path", "label")}
        clash = sorted(RESERVED_FIELDS & set(metadata))
        if clash:
            raise DataError(f"{where}: field(s) {', '.join(clash)} are reserved (every match has them)")
        items.append(GalleryItem(path, None if label is None else str(label), metadata))
    if not items:
        raise DataError(f"{source}: the list names no images")
    return items


def split_storable(items: Sequence[GalleryItem]) -> tuple[list[GalleryItem], list[tuple[str, str]]]:
    """``(items an index can store, (path, reason) of the others)``, decided before any embedding.

    A file name that is not valid UTF-8 (Linux allows any bytes) reaches Python as a string
    with lone surrogates, which neither the metadata file, the JSON of the API nor a terminal
    can carry: such an image is skipped and listed like an unreadable one, instead of
    failing the write after the whole gallery was embedded.
    """
    ok, skipped = [], []
    for item in items:
        try:
            json.dumps({"path": str(item.path), "label": item.label, **item.metadata}, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            shown = os.fsencode(item.path).decode("utf-8", "backslashreplace")  # the file's own bytes
            skipped.append((shown, f"{shown}: file name or field is not valid UTF-8 (rename the file)"))
        except (TypeError, ValueError, RecursionError) as e:
            skipped.append((str(item.path), f"{item.path}: metadata cannot be stored ({type(e).__name__})"))
        else:
            ok.append(item)
    return ok, skipped
