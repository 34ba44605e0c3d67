"""``dva data check``: counts per side, comparison with a complete copy, every problem found."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dva.data.registry import get_dataset, read_catalog
from dva.data.splits import make_split
from dva.errors import DataError


def check_dataset(name: str, root: str | Path, protocol: str) -> dict[str, Any]:
    info = get_dataset(name)
    catalog = read_catalog(name, root)
    report: dict[str, Any] = {"dataset": name, "root": str(catalog.root), "split": protocol, "problems": list(catalog.problems)}
    try:
        split = make_split(catalog, protocol)
    except DataError as e:
        report["problems"].append(str(e))
        return report
    report["train"] = split.train.summary()
    report["test"] = split.test.summary()
    expected = info.expected_counts.get(protocol)
    if expected:
        report["expected"] = {"train": expected[0], "test": expected[1]}
        report["matches_expected"] = (len(split.train), len(split.test)) == expected
    return report
