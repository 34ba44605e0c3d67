"""``dva data check``: counts per split and side, the paper's counts, every problem found.

Reading a catalog (what training and evaluation do) checks the annotation files and that
every listed image exists; it opens no image, to stay fast on 50,000-image sets. The check
also opens every image's header (PIL reads a few hundred bytes, decodes nothing): files that
are not images (an HTML error page saved as ``.jpg``) become problems, and boxes are checked
against the real image size where the dataset ships none (CUB, Cars, Aircraft).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from dva.data.records import Catalog
from dva.data.registry import get_dataset, read_catalog
from dva.data.splits import PROTOCOLS, make_split
from dva.errors import DataError
from dva.geometry import fit_box, read_image_header


def check_dataset(
    name: str, root: str | Path, protocol: str | None = None, *, open_images: bool = True, progress: bool = False
) -> dict[str, Any]:
    """Report on a local copy: ``splits`` (counts, expected counts, match), ``problems``, ``warnings``.

    ``protocol=None`` reports every protocol the dataset supports. ``matches_expected`` is
    True only when every protocol with published counts matches them (a partial download
    fails it), None when the dataset has no published counts.
    """
    info = get_dataset(name)
    catalog = read_catalog(name, root)
    report: dict[str, Any] = {
        "dataset": name,
        "root": str(catalog.root),
        "images": len(catalog.records),
        "classes": catalog.num_classes,
        "splits": {},
        "problems": list(catalog.problems),
        "warnings": list(catalog.warnings),
        "clipped_boxes": catalog.clipped_boxes,
    }
    if open_images:
        problems, box_warnings = read_headers(catalog, progress=progress)
        report["problems"] += problems
        report["warnings"] += box_warnings
    for proto in [protocol] if protocol else PROTOCOLS:
        try:
            split = make_split(catalog, proto)
        except DataError as e:
            if protocol:  # asked for explicitly: not being able to make it is a problem
                report["problems"].append(str(e))
            continue
        entry: dict[str, Any] = {"train": split.train.summary(), "test": split.test.summary()}
        expected = info.expected_counts.get(proto)
        if expected:
            entry["expected"] = {"train": expected[0], "test": expected[1]}
            entry["matches_expected"] = (len(split.train), len(split.test)) == expected
        report["splits"][proto] = entry
    verdicts = [s["matches_expected"] for s in report["splits"].values() if "matches_expected" in s]
    report["matches_expected"] = all(verdicts) if verdicts else None
    return report


def read_headers(catalog: Catalog, *, progress: bool = False) -> tuple[list[str], list[str]]:
    """``(problems, warnings)``: unreadable image headers, boxes that leave their image."""
    problems: list[str] = []
    box_warnings: list[str] = []
    for record in tqdm(catalog.records, desc="reading image headers", unit="img", leave=False, disable=not progress):
        try:
            header = read_image_header(record.path)
        except DataError as e:
            problems.append(str(e))
            continue
        if record.box is not None:  # publishers' boxes are in the stored frame, as the header's size
            _, warning = fit_box(record.box, header.stored_size, f"{record.path} (image {record.image_id})")
            if warning:
                box_warnings.append(warning)
    return problems, box_warnings
