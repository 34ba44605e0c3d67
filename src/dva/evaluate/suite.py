"""The paper's evaluation suite: one model, every dataset found under one data root.

Tables 2-4 report the in-distribution test split (open or closed protocol) of CUB-200-2011,
Stanford Cars and Stanford Dogs; Tables 5-7 the whole of NABirds, FGVC-Aircraft and the
first 100 iNat2021 categories, as out-of-distribution galleries (docs/method.md section 6). Each
dataset is looked for in a conventional sub-folder of the data root (:data:`PAPER_SUITE`,
overridable per dataset); absent ones are skipped with a note, and every present one is read
and checked *before* the first image is embedded, so a broken copy fails in seconds, not
after an hour of embedding.

Memory: one gallery at a time, as a float32 N x D array (see :mod:`dva.evaluate.embed`),
plus the chunked similarity search of :mod:`dva.metrics`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dva.data import SplitSide, load_catalog, make_split
from dva.errors import ConfigError, DataError
from dva.evaluate.evaluate import DEFAULT_KS, evaluate_side
from dva.models.retrieval import RetrievalModel


@dataclass(frozen=True)
class SuiteDataset:
    """One dataset of a suite and where to find it under the data root."""

    #: Short name used on the command line and in results (``--dataset-dir NAME=PATH``).
    key: str
    title: str
    subdir: str
    #: ``(registered layout, file that must exist in the folder)``, tried in order; None: any.
    layouts: tuple[tuple[str, str | None], ...]
    #: Out-of-distribution sets are evaluated whole (``all``); the others on the test side
    #: of the model's own protocol.
    whole_set: bool


PAPER_SUITE: tuple[SuiteDataset, ...] = (
    SuiteDataset("cub", "CUB-200-2011", "CUB_200_2011", (("cub", None),), whole_set=False),
    SuiteDataset("cars", "Stanford Cars", "stanford_cars", (("cars", None),), whole_set=False),
    SuiteDataset("dogs", "Stanford Dogs", "stanford_dogs", (("dogs", None),), whole_set=False),
    SuiteDataset("nabirds", "NABirds", "nabirds", (("nabirds", None),), whole_set=True),
    SuiteDataset("aircraft", "FGVC-Aircraft", "fgvc-aircraft-2013b", (("aircraft", None),), whole_set=True),
    SuiteDataset(
        "inat100",
        "iNat2021 (100)",
        "inat2021",
        (("inat100", "train.json"), ("inat100_mini", "train_mini.json")),
        whole_set=True,
    ),
)
SUITES: dict[str, tuple[SuiteDataset, ...]] = {"paper": PAPER_SUITE}


@dataclass
class SuiteResult:
    key: str
    title: str
    #: The registered layout read (``inat100`` or ``inat100_mini``, ...); None when skipped.
    dataset: str | None
    root: str
    #: ``open``/``closed`` (test side) or ``all`` (whole set).
    protocol: str
    #: ``in-distribution`` (the run's own dataset), ``cross-dataset`` (another dataset's test
    #: split) or ``out-of-distribution`` (a whole OOD set); "" when skipped.
    role: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    #: Why the dataset was not evaluated (not found); None when it was.
    skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "title": self.title,
            "dataset": self.dataset,
            "root": self.root,
            "protocol": self.protocol,
            "role": self.role,
            "skipped": self.skipped,
            **self.metrics,
        }


@dataclass
class _Planned:
    entry: SuiteDataset
    result: SuiteResult
    side: SplitSide | None = None


def _plan_suite(
    data_root: str | Path | None,
    *,
    protocol: str,
    suite: str,
    own_dataset: str | None,
    own_root: str | Path | None,
    dataset_dirs: Mapping[str, str | Path] | None,
    only: Sequence[str] | None,
) -> list[_Planned]:
    """Find each dataset, read it and make its test side; one error lists every broken copy."""
    entries = _select(suite, only, own_dataset, own_root)
    dataset_dirs = dict(dataset_dirs or {})
    unknown = sorted(set(dataset_dirs) - {e.key for e in entries})
    if unknown:
        raise ConfigError(f"--dataset-dir names unknown dataset(s) {', '.join(unknown)}; known: {_keys(entries)}")
    planned: list[_Planned] = []
    errors: list[str] = []
    for entry in entries:
        folder = _folder(entry, data_root, dataset_dirs, own_dataset, own_root)
        proto = "all" if entry.whole_set else protocol
        result = SuiteResult(entry.key, entry.title, None, str(folder or ""), proto)
        if entry.key in dataset_dirs and not folder.is_dir():
            errors.append(f"{entry.title}: --dataset-dir {entry.key}={folder} is not a directory")
            continue
        layout = _layout(entry, folder) if folder else None
        if layout is None:
            wanted = " or ".join(m for _, m in entry.layouts if m)
            where = folder or (Path(data_root) / entry.subdir if data_root else "(no --data-root)")
            result.skipped = f"not found at {where}" + (f" (no {wanted})" if folder and wanted else "")
            planned.append(_Planned(entry, result))
            continue
        result.dataset = layout
        result.role = _role(entry, layout, own_dataset)
        try:
            planned.append(_Planned(entry, result, make_split(load_catalog(layout, folder), proto).test))
        except DataError as e:
            errors.append(f"{entry.title} ({folder}): {e}")
    if errors:
        raise DataError(
            "cannot run the suite; fix these copies or leave them out (--datasets):\n  " + "\n  ".join(errors)
        )
    return planned


def evaluate_suite(
    model: RetrievalModel,
    data_root: str | Path | None,
    *,
    img_size: int,
    protocol: str = "open",
    resize_size: int | None = None,
    suite: str = "paper",
    own_dataset: str | None = None,
    own_root: str | Path | None = None,
    dataset_dirs: Mapping[str, str | Path] | None = None,
    only: Sequence[str] | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    on_result: Callable[[SuiteResult], None] | None = None,
    **embed_kwargs: Any,
) -> list[SuiteResult]:
    """Recall@K (and MAP@R) of ``model`` on every dataset of ``suite`` found under ``data_root``.

    ``protocol`` (the run's: open or closed) picks the test side of CUB, Cars and Dogs; the
    out-of-distribution sets are evaluated whole. ``on_result`` sees each result as soon as
    it is ready (progress printing, partial saves).
    """
    planned = _plan_suite(
        data_root,
        protocol=protocol,
        suite=suite,
        own_dataset=own_dataset,
        own_root=own_root,
        dataset_dirs=dataset_dirs,
        only=only,
    )
    results = []
    for item in planned:
        if item.side is not None:
            item.result.metrics = evaluate_side(
                model,
                item.side,
                img_size=img_size,
                resize_size=resize_size,
                ks=ks,
                desc=f"embedding {item.entry.title}",
                **embed_kwargs,
            )
        results.append(item.result)
        if on_result:
            on_result(item.result)
    return results


def evaluate_run_on_suite(
    run_dir: str | Path,
    data_root: str | Path | None,
    *,
    weights: str | Path | None = None,
    device: str = "auto",
    img_size: int | None = None,
    protocol: str | None = None,
    **kwargs: Any,
) -> list[SuiteResult]:
    """:func:`evaluate_suite` for a trained run, with the run's protocol, image size and own dataset.

    ``img_size`` and ``protocol`` replace the run's when given (``dva eval --run R --suite paper``
    is this function, with the command line's ``--img-size`` and ``--split``).
    """
    from dva.runs import Run

    run = Run(run_dir)
    config = run.config
    model = run.load_model(weights)
    return evaluate_suite(
        model,
        data_root,
        img_size=img_size or config.model.img_size,
        resize_size=config.data.resize_size,
        protocol=protocol or config.data.split,
        own_dataset=config.data.dataset,
        own_root=config.data.root or None,
        device=device,
        **kwargs,
    )


def _select(
    suite: str, only: Sequence[str] | None, own_dataset: str | None, own_root: str | Path | None
) -> tuple[SuiteDataset, ...]:
    """The suite's datasets, led by the run's own when the suite lacks it (e.g. ``cub100``)."""
    if suite not in SUITES:
        raise ConfigError(f"unknown suite {suite!r}; choose from {', '.join(SUITES)}")
    entries = SUITES[suite]
    layouts = {layout for e in entries for layout, _ in e.layouts}
    if own_dataset and own_root and own_dataset not in layouts:
        entries = (SuiteDataset(own_dataset, own_dataset, "", ((own_dataset, None),), whole_set=False), *entries)
    if only:
        unknown = sorted(set(only) - {e.key for e in entries})
        if unknown:
            raise ConfigError(f"unknown dataset(s) {', '.join(unknown)} in --datasets; known: {_keys(entries)}")
        entries = tuple(e for e in entries if e.key in only)
    return entries


def _folder(
    entry: SuiteDataset,
    data_root: str | Path | None,
    dataset_dirs: Mapping[str, str | Path],
    own_dataset: str | None,
    own_root: str | Path | None,
) -> Path | None:
    if entry.key in dataset_dirs:
        return Path(dataset_dirs[entry.key]).expanduser()
    if data_root is not None and entry.subdir and (Path(data_root) / entry.subdir).is_dir():
        return Path(data_root) / entry.subdir
    if own_root and own_dataset in {layout for layout, _ in entry.layouts} and Path(own_root).is_dir():
        return Path(own_root)  # the run's training set, where it was trained
    return None


def _layout(entry: SuiteDataset, folder: Path) -> str | None:
    for layout, marker in entry.layouts:
        if marker is None or (folder / marker).is_file():
            return layout
    return None


def _role(entry: SuiteDataset, layout: str, own_dataset: str | None) -> str:
    if entry.whole_set:
        return "out-of-distribution"
    return "in-distribution" if layout == own_dataset else "cross-dataset"


def _keys(entries: Sequence[SuiteDataset]) -> str:
    return ", ".join(e.key for e in entries)
