"""Box files: the cache ``dva detect`` writes, and the box files users bring.

Boxes are computed once and cached on disk (docs/opa.md, "1. Find the objects once"). The
cache is JSON lines: a header naming the detector and every setting that decides its boxes,
then one line per image::

    {"format": "dva-boxes", "version": 1, "detector": "saliency", "settings": {...}, "prompt": null,
     "dataset": "cub100", "root": "/data/cub100", "dva_version": "0.1.0"}
    {"path": "images/Black_footed_Albatross/0000.jpg", "box": [12.0, 30.5, 210.0, 190.0], "score": 0.71,
     "size": [227, 227]}
    {"path": "images/Black_footed_Albatross/0001.jpg", "box": null, "score": 0.0, "size": [227, 227]}

Paths are relative to the dataset root, so the data can move. Lines are appended and flushed
one by one: an interrupted ``dva detect`` loses at most the line being written, and running
it again detects only what is missing, after checking the header matches.

A user's own box file needs no header: CSV (``path,x0,y0,x1,y1[,score]``, header row
optional) or JSON lines (``{"path": ..., "x0": ..., "y0": ..., "x1": ..., "y1": ..., "score": ...}``
or ``"box": [x0, y0, x1, y1]``); a missing score means 1 (a box you vouch for). Relative paths
are relative to the dataset root.

Boxes in these files are in the *upright* frame of :mod:`dva.geometry`: pixels of the image
as :func:`~dva.data.images.load_image` returns it (EXIF orientation applied), which is what
detectors see and what a person drawing boxes on a photo sees. ``size`` is that upright size.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dva import __version__
from dva._io import append_jsonl, jsonl_objects
from dva.data.records import ImageRecord
from dva.errors import ConfigError, DataError
from dva.geometry import EDGE_SLACK, Box, clip_box, overshoot, read_image_header
from dva.opa.detectors.base import Detection

FORMAT = "dva-boxes"
FORMAT_VERSION = 1
#: Header fields that must match for boxes to be added to an existing cache.
IDENTITY = ("detector", "settings", "prompt", "dataset")


def path_key(path: str | os.PathLike[str]) -> Path:
    """How box files and records are matched: absolute, normalised (no symlink resolution)."""
    return Path(os.path.normpath(os.path.abspath(os.fspath(path))))


@dataclass(frozen=True)
class BoxEntry:
    path: Path
    box: Box | None
    score: float
    #: ``(width, height)`` of the image the box was found in, when the file records it.
    size: tuple[int, int] | None
    where: str

    @property
    def detection(self) -> Detection | None:
        return None if self.box is None else Detection(self.box, self.score)

    def checked(self, width: int, height: int) -> BoxEntry:
        """This entry for a ``width`` x ``height`` image: box clipped, or DataError if it does not fit."""
        if self.size is not None and tuple(self.size) != (width, height):
            raise DataError(
                f"{self.where}: boxes were found in a {self.size[0]}x{self.size[1]} image but {self.path} is "
                f"{width}x{height} now; the box file is stale, detect again into a new file"
            )
        if self.box is None:
            return self
        # Overshoot past the slack means boxes for another image (or another size of it):
        # refused, unlike a publisher's slip (dva.geometry.fit_box), since these boxes are the
        # only thing the views are cut from.
        if overshoot(self.box, width, height) > EDGE_SLACK:
            raise DataError(f"{self.where}: box {list(self.box)} lies outside the {width}x{height} image {self.path}")
        try:
            box = clip_box(self.box, width, height)
        except ValueError:
            raise DataError(
                f"{self.where}: box {list(self.box)} has no area inside the {width}x{height} image"
            ) from None
        return BoxEntry(self.path, box, self.score, (width, height), self.where)


@dataclass
class BoxFile:
    path: Path
    #: The ``dva detect`` header; None for a user's file.
    header: dict[str, Any] | None
    entries: dict[Path, BoxEntry] = field(default_factory=dict)
    #: Byte length of the complete lines (an interrupted write leaves a partial last line).
    valid_bytes: int = 0
    truncated: bool = False

    def get(self, path: str | os.PathLike[str]) -> BoxEntry | None:
        return self.entries.get(path_key(path))

    def __contains__(self, path: str | os.PathLike[str]) -> bool:
        return path_key(path) in self.entries

    def __len__(self) -> int:
        return len(self.entries)


def read_box_file(path: str | os.PathLike[str], *, root: str | os.PathLike[str] | None = None) -> BoxFile:
    """Read a cache or a user box file. Relative image paths are resolved against ``root``,
    else the root the header records, else the box file's folder."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: box file not found (make one with `dva detect`)")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read box file ({e})") from None
    text, valid_bytes, truncated = _complete_lines(data, path)
    result = BoxFile(path, None, valid_bytes=valid_bytes, truncated=truncated)
    rows = list(_csv_rows(text, path) if path.suffix.lower() == ".csv" else _jsonl_rows(text, path, result))
    base = Path(root) if root is not None else Path(result.header["root"]) if result.header else path.parent
    for line, raw in rows:
        entry = _entry(raw, base.expanduser(), f"{path}:{line}")
        if entry.path in result.entries:
            raise DataError(f"{entry.where}: {entry.path} already has a box on {result.entries[entry.path].where}")
        result.entries[entry.path] = entry
    return result


def _complete_lines(data: bytes, path: Path) -> tuple[str, int, bool]:
    """The text up to the last newline, if what follows it is a line cut off by a crash."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a UTF-8 text file ({e.reason})") from None
    cut = text.rfind("\n") + 1
    tail = text[cut:]
    if tail.strip() and path.suffix.lower() != ".csv":
        try:
            json.loads(tail)
        except json.JSONDecodeError:
            return text[:cut], len(text[:cut].encode("utf-8")), True
    return text, len(data), False


def _jsonl_rows(text: str, path: Path, result: BoxFile) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, raw in jsonl_objects(text.split("\n"), path):
        if "format" in raw:
            if number != 1 or raw["format"] != FORMAT:
                raise DataError(f"{path}:{number}: unexpected header {json.dumps(raw)[:80]!r}")
            if raw.get("version") != FORMAT_VERSION:
                raise DataError(f"{path}:1: box file version {raw.get('version')!r}; this dva reads {FORMAT_VERSION}")
            result.header = raw
            continue
        yield number, raw


def _csv_rows(text: str, path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    reader = csv.reader(io.StringIO(text))
    for number, row in enumerate(reader, start=1):
        row = [c.strip() for c in row]
        if not any(row):
            continue
        if number == 1 and len(row) > 1 and not _is_number(row[1]):
            continue  # a header row
        if len(row) not in (5, 6):
            raise DataError(f"{path}:{number}: expected path,x0,y0,x1,y1[,score], got {','.join(row)!r}")
        yield number, dict(zip(("path", "x0", "y0", "x1", "y1", "score"), row, strict=False))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _entry(raw: dict[str, Any], base: Path, where: str) -> BoxEntry:
    image = raw.get("path")
    if not isinstance(image, str) or not image:
        raise DataError(f'{where}: needs the image\'s "path"')
    if "box" in raw:
        box = raw["box"]
        if box is not None and (not isinstance(box, list) or len(box) != 4):
            raise DataError(f'{where}: "box" must be [x0, y0, x1, y1] or null, got {box!r}')
    else:
        missing = [k for k in ("x0", "y0", "x1", "y1") if k not in raw]
        if missing:
            raise DataError(f'{where}: needs "box" or x0, y0, x1, y1 (missing {", ".join(missing)})')
        box = [raw[k] for k in ("x0", "y0", "x1", "y1")]
    coords = None if box is None else tuple(_number(v, where, "box coordinate") for v in box)
    if coords is not None and (coords[2] <= coords[0] or coords[3] <= coords[1]):
        raise DataError(f"{where}: box {list(coords)} has zero area (needs x0 < x1 and y0 < y1)")
    score = raw.get("score")
    score = (0.0 if box is None else 1.0) if score is None else _number(score, where, "score")
    if not 0.0 <= score <= 1.0:
        raise DataError(f"{where}: score {score} is not in [0, 1]")
    size = raw.get("size")
    if size is not None and (not isinstance(size, list) or len(size) != 2 or not all(isinstance(v, int) for v in size)):
        raise DataError(f'{where}: "size" must be [width, height], got {size!r}')
    return BoxEntry(path_key(base / image), coords, score, tuple(size) if size else None, where)


def _number(value: Any, where: str, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: {what} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise DataError(f"{where}: {what} must be finite, got {value!r}")
    return number


def check_box_file(boxes: BoxFile, used: Iterable[Path]) -> dict[Path, BoxEntry]:
    """Refuse a box file that names missing images, or whose boxes do not fit the images in ``used``.

    Returns the entries of ``used`` images, checked against the real image sizes (clipped).
    """
    missing = [e for e in boxes.entries.values() if not e.path.is_file()]
    if missing:
        shown = "\n  ".join(f"{e.where}: {e.path} does not exist" for e in missing[:5])
        more = f"\n  ... and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DataError(
            f"{boxes.path}: {len(missing)} of its {len(boxes)} images do not exist (a box file for another "
            f"dataset or --data root?):\n  {shown}{more}"
        )
    checked = {}
    for path in used:
        entry = boxes.entries.get(path_key(path))
        if entry is not None:
            checked[entry.path] = entry.checked(*read_image_header(entry.path).size)  # upright, as boxes here
    return checked


def load_boxes(
    path: str | Path, records: Sequence[ImageRecord], *, root: str, dataset: str, what: str = "training"
) -> BoxFile:
    """Read a box file for ``records`` and check it: existing images, boxes that fit, the right dataset.

    The returned file holds only the entries of ``records``, each clipped to its image. The
    ``what`` images it has no box for are reported on stderr (they use the original image).
    """
    boxes = read_box_file(path, root=root)
    if boxes.header is not None and boxes.header.get("dataset") not in (None, dataset):
        raise ConfigError(f"{boxes.path}: boxes were detected on dataset {boxes.header['dataset']!r}, not {dataset!r}")
    if boxes.truncated:
        print(f"warning: {boxes.path}: ignored its last line, cut off by an interrupted write", file=sys.stderr)
    checked = check_box_file(boxes, [r.path for r in records])
    if not checked:
        raise DataError(
            f"{boxes.path}: has boxes for none of the {len(records)} images asked for (first: {records[0].path}); "
            "was it made for another split or --data root? (`dva detect --include-test` adds the test images)"
        )
    loaded = BoxFile(boxes.path, boxes.header, checked)
    missing = [r.path for r in records if r.path not in loaded]
    if missing:
        print(
            f"warning: {boxes.path}: no box for {len(missing)} of {len(records)} {what} images (first: {missing[0]}); "
            "they use the original image and are counted as 'no_box'",
            file=sys.stderr,
        )
    return loaded


class BoxCache:
    """The append-only cache ``dva detect`` fills: resumable, refusing boxes from other settings."""

    def __init__(self, path: Path, header: dict[str, Any], done: set[Path]) -> None:
        self.path = path
        self.header = header
        self.root = Path(header["root"])
        self.done = done

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        detector: str,
        settings: dict[str, Any],
        prompt: str | None,
        dataset: str,
        root: str | os.PathLike[str],
    ) -> BoxCache:
        """Create ``path`` with its header, or reopen it to add the images it still lacks."""
        path = Path(path).expanduser()
        header = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "detector": detector,
            # JSON round trip so that tuples compare equal to the lists read back
            "settings": json.loads(json.dumps(settings)),
            "prompt": prompt,
            "dataset": dataset,
            "root": str(path_key(root)),
            "dva_version": __version__,
        }
        if not path.is_file() or path.stat().st_size == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(json.dumps(header) + "\n")
            return cls(path, header, set())
        existing = read_box_file(path, root=root)
        if existing.header is None:
            raise ConfigError(f"{path}: is not a box cache written by `dva detect` (no header); choose another file")
        different = [k for k in IDENTITY if existing.header.get(k) != header[k]]
        if different:
            details = "; ".join(f"{k}: file has {existing.header.get(k)!r}, asked {header[k]!r}" for k in different)
            raise ConfigError(
                f"{path}: made by another detector or settings ({details}); "
                "write to another file, or repeat the settings it was made with"
            )
        with open(path, "r+b") as f:
            if existing.truncated:  # drop the line an interruption cut off; it is detected again
                f.truncate(existing.valid_bytes)
            size = f.seek(0, os.SEEK_END)
            if size:
                f.seek(size - 1)
                if f.read(1) != b"\n":  # a complete last line without its newline (edited by hand)
                    f.write(b"\n")
        return cls(path, {**existing.header, "root": header["root"]}, set(existing.entries))

    def __contains__(self, path: str | os.PathLike[str]) -> bool:
        return path_key(path) in self.done

    def add(self, path: str | os.PathLike[str], detection: Detection | None, size: tuple[int, int]) -> None:
        key = path_key(path)
        record = {
            "path": Path(os.path.relpath(key, self.root)).as_posix(),
            "box": None if detection is None else [round(float(v), 2) for v in detection.box],
            "score": 0.0 if detection is None else round(float(detection.score), 4),
            "size": list(size),
        }
        append_jsonl(self.path, record)
        self.done.add(key)
