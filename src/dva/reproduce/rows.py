"""What a row of a paper table is: a training config, how it is evaluated, what the paper reports.

A :class:`Row` changes a base :class:`~dva.config.RunConfig` (the dataset, image size, epochs
and boxes the user chose) by a few overrides, e.g. ``{"model": {"method": "ica"}}``; a
:class:`Table` is the paper's list of rows with the columns it shows. Rows hold no paths or
datasets, so one table runs on any dataset ``dva`` reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: Test images embedded as they are (every deployment, and every row unless it says otherwise).
TEST_ORIGINAL = "original"
#: Test images replaced by their discriminative views: the detector runs at test time too
#: (Table 8, "Base + ICA + OPA"); needs a box file holding the test images.
TEST_DISCRIMINATIVE = "discriminative"
TEST_VIEWS = (TEST_ORIGINAL, TEST_DISCRIMINATIVE)

#: Columns a table can show: metrics of ``evaluate_side`` plus the two costs.
RECALL_COLUMNS = ("recall@1", "recall@2", "recall@4", "recall@8")
PARAMS = "params"
LATENCY = "latency"
COLUMN_TITLES = {
    "recall@1": "R@1",
    "recall@2": "R@2",
    "recall@4": "R@4",
    "recall@8": "R@8",
    "map@r": "MAP@R",
    PARAMS: "Params (M)",
    LATENCY: "Latency (ms)",
}


@dataclass(frozen=True)
class Row:
    """One line of a table.

    ``overrides`` are RunConfig sections applied over the base config
    (``{"model": {"method": "dva", "method_options": {"targets": ["q", "v"]}}, "train": {"lambda_dist": 0.0}}``);
    ``paper`` holds the paper's numbers by column: recalls in percent, ``params`` in millions,
    ``latency`` in milliseconds (a column it leaves out is shown as "-").
    """

    name: str
    overrides: Mapping[str, Mapping[str, Any]]
    test_view: str = TEST_ORIGINAL
    paper: Mapping[str, float] = field(default_factory=dict)
    #: Why this row is configured as it is, where the paper leaves it open.
    note: str = ""

    def __post_init__(self) -> None:
        if self.test_view not in TEST_VIEWS:
            raise ValueError(f"row {self.name!r}: test_view must be one of {TEST_VIEWS}, got {self.test_view!r}")


@dataclass(frozen=True)
class Table:
    """A paper table: its rows and the columns it shows, in the paper's order."""

    name: str
    title: str
    rows: tuple[Row, ...]
    columns: tuple[str, ...]
    #: Header of the first column ("Methods", "Setting", "lambda").
    label: str = "Setting"
    #: What a reader must know to compare our numbers with the paper's.
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = [c for c in self.columns if c not in COLUMN_TITLES]
        if unknown:
            raise ValueError(f"table {self.name!r}: unknown column(s) {unknown}; known: {list(COLUMN_TITLES)}")

    @property
    def needs_latency(self) -> bool:
        return LATENCY in self.columns
