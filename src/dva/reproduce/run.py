"""Train and evaluate table rows, sharing runs between tables and skipping finished work.

Each (row, seed) becomes a full :class:`~dva.config.RunConfig` (:func:`row_config`). Its run
directory is named by :func:`run_key`, a readable prefix plus a hash of everything that
changes the result, so rows of different tables that train the same thing (the full DVA is
in four tables) share one directory under ``OUT/runs/``. A run directory with ``summary.json``
is trained; ``RUN/reproduce/eval-VIEW.json`` holds its evaluation on the original test images
or on their discriminative views. Both are written only when complete, so an interrupted
``run_rows`` continues where it stopped (an unfinished run resumes from its last checkpoint).
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dva._io import atomic_write_json
from dva._version import __version__
from dva.config import (
    LEGACY_MODEL_FIELDS,
    DataConfig,
    OPAConfig,
    RunConfig,
    TrainConfig,
    from_dict,
    hoist_legacy_fields,
    identity_dict,
)
from dva.data import Catalog, DataSplit, SplitSide, data_fingerprint, load_catalog, split_from_config, split_key
from dva.errors import ConfigError
from dva.models import get_method
from dva.reproduce.rows import TEST_DISCRIMINATIVE, Row
from dva.runs import Run, check_same_images

RUNS_DIR = "runs"
EVAL_DIR = "reproduce"


@dataclass
class RowResult:
    """One row trained and evaluated under one seed."""

    row: Row
    seed: int
    run_dir: Path
    config: RunConfig = field(repr=False)
    #: ``evaluate_side``'s metrics (fractions), plus ``test_views`` counts for discriminative rows.
    metrics: dict[str, Any]
    trainable_params: int
    #: Whether this call trained (or continued training) the run, rather than finding it done.
    trained_now: bool
    #: ``{"model_ms", "detector_ms", "total_ms", ...}`` when latency was measured (first seed only).
    latency: dict[str, Any] | None = None


def row_config(row: Row, base: RunConfig, seed: int) -> RunConfig:
    """The run a row trains under ``seed``: ``base`` with the row's overrides, put in canonical form.

    Settings the row's method does not read are reset to their defaults (boxes and lambda for
    methods without OPA), and method options are written out in full, so configs that train the
    same model compare (and hash) equal.
    """
    raw = base.to_dict()
    # The base's ICA settings (e.g. a smaller rank) apply to the rows whose method takes them,
    # as when they were ModelConfig fields: written at the top of ``model``, they are read back
    # as options by those methods and dropped for the others (ModelConfig.upgrade).
    hoist_legacy_fields(raw["model"])
    for section, values in row.overrides.items():
        if section not in raw or not isinstance(raw[section], dict):
            raise ConfigError(f"row {row.name!r}: unknown config section {section!r}")
        raw[section] = {**raw[section], **values}
    for key in [k for k in raw["model"]["method_options"] if k in LEGACY_MODEL_FIELDS]:
        raw["model"].pop(key, None)  # the row's own ICA option wins over the base's
    raw["train"]["seed"] = seed
    config = from_dict(RunConfig, raw, where=f"row {row.name!r}")
    method = get_method(config.model.method)
    config.model.method_options = method.resolve_options(config.model.method_options)
    if not method.uses_opa:
        config.opa = OPAConfig()
        config.train.lambda_dist = TrainConfig().lambda_dist
    elif config.opa.boxes:  # one box file, however its path was spelled, is one run
        config.opa.boxes = str(Path(config.opa.boxes).resolve())
    return config


def run_key(config: RunConfig) -> str:
    """Directory name of a run: ``dva-qv-lam3-e10-img224-s0-1a2b3c4d``, the hash over its identity.

    The hash is over :func:`dva.config.identity_dict`, whose layout is kept stable so that
    finished runs keep their names; the readable part names ICA's targets, DPT's lambda and
    the method options that differ from their defaults (ICA's targets always, its rank and scale
    when changed: ``dva-qv-r64-lam3-...``) and the zoom-out probability when set
    (``...-zoom0.5-e3-...``).
    """
    identity = identity_dict(config)
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=list).encode()).hexdigest()[:8]
    m, t = config.model, config.train
    method = get_method(m.method)
    parts = [m.method]
    defaults = method.default_options()
    if "targets" in method.legacy_fields:
        parts.append("".join(identity["model"]["targets"]))
        # ICA's rank and scale only when changed, so runs at the defaults keep their names
        parts += [
            f"{prefix}{identity['model'][key]:g}"
            for key, prefix in (("rank", "r"), ("scale", "scale"))
            if key in method.legacy_fields and identity["model"][key] != defaults[key]
        ]
    if method.uses_opa:
        parts.append(f"lam{t.lambda_dist:g}")
    options = identity["model"]["method_options"]  # ICA's settings are outside, as they were
    parts += [f"{k}-{v}" for k, v in sorted(options.items()) if _plain(defaults.get(k)) != v]
    if t.zoom_out:  # off (0) in every run made before zoom-out existed
        parts.append(f"zoom{t.zoom_out:g}")
    parts += [f"e{t.epochs}", f"img{m.img_size}", f"s{t.seed}", digest]
    return "-".join(parts)


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value))


def check_rows(rows: Sequence[Row], base: RunConfig, *, test_boxes: str | Path | None) -> None:
    """Refuse, before anything is trained, rows that cannot run with what was given."""
    for row in rows:
        config = row_config(row, base, base.train.seed)
        if get_method(config.model.method).uses_opa and not (config.opa.boxes or config.opa.detector):
            raise ConfigError(f"row {row.name!r} trains on OPA's object views: give training boxes (--boxes FILE)")
        if row.test_view == TEST_DISCRIMINATIVE and not test_boxes:
            raise ConfigError(
                f"row {row.name!r} is evaluated on discriminative views: give boxes of the test images "
                "(--test-boxes FILE, from `dva detect --test-only`)"
            )


def run_rows(
    rows: Sequence[Row],
    base_config: RunConfig,
    out_dir: str | Path,
    seeds: Sequence[int] = (0,),
    *,
    test_boxes: str | Path | None = None,
    latency: bool = False,
    detector_ms: float | None = None,
    detector_note: str = "",
    eval_batch_size: int = 64,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> list[RowResult]:
    """Train (once per distinct config and seed), evaluate and optionally time every row.

    Returns one :class:`RowResult` per row and seed, rows in order. ``latency=True`` times each
    row's model once (first seed, adapters merged, :func:`dva.evaluate.latency.compare_latency`)
    and adds ``detector_ms`` (the test-time detector's time per image, see
    :func:`time_detector`; ``detector_note`` says what it timed) to rows evaluated on
    discriminative views. Training uses ``base_config.train.device``; so do evaluation and timing.
    """
    if not seeds:
        raise ConfigError("run_rows needs at least one seed")
    log = log or (lambda message: print(message, file=sys.stderr))
    check_rows(rows, base_config, test_boxes=test_boxes)
    out_dir = Path(out_dir)
    jobs = [(row, seed, row_config(row, base_config, seed)) for row in rows for seed in seeds]
    data = _DataReader()
    test_side = data.test_side(base_config.data)
    results: list[RowResult] = []
    for i, (row, seed, config) in enumerate(jobs, 1):
        run = Run(out_dir / RUNS_DIR / run_key(config))
        where = f"[{i}/{len(jobs)}] {row.name} (seed {seed}): {run.path.name}"
        trained_now = not run.finished
        if not trained_now:
            _check_same_images(run, config, data)
        if trained_now:
            log(f"{where}: training")
            _train(config, run.path, progress)
        metrics, evaluated_now = evaluate_run(
            run,
            config,
            row.test_view,
            test_side,
            test_boxes=test_boxes,
            batch_size=eval_batch_size,
            progress=progress,
        )
        log(f"{where}: {'evaluated' if evaluated_now else 'done earlier'}, R@1 {100 * metrics['recall@1']:.1f}")
        params = int(run.summary().get("trainable_params", 0))
        results.append(RowResult(row, seed, run.path, config, metrics, params, trained_now))
    if latency:
        log("timing every row's model (batch 1, adapters merged)")
        _add_latency([r for r in results if r.seed == seeds[0]], detector_ms, detector_note)
    return results


@dataclass
class PlannedRow:
    """What :func:`run_rows` would do for one row and seed (``dva reproduce --dry-run``)."""

    row: Row
    seed: int
    run_dir: Path
    config: RunConfig = field(repr=False)
    #: Counted without weights (:func:`dva.models.parameter_report`).
    trainable_params: int
    #: "done", "to evaluate", "to resume" or "to train".
    status: str


def plan_rows(
    rows: Sequence[Row], base_config: RunConfig, out_dir: str | Path, seeds: Sequence[int] = (0,)
) -> list[PlannedRow]:
    """Each row's run directory, trainable parameter count and state, without training or reading data."""
    from dva.models import parameter_report

    counts: dict[str, int] = {}
    planned = []
    for row in rows:
        for seed in seeds:
            config = row_config(row, base_config, seed)
            model_key = json.dumps(config.to_dict()["model"], sort_keys=True, default=list)
            if model_key not in counts:
                counts[model_key] = parameter_report(config.model).trainable
            run = Run(Path(out_dir) / RUNS_DIR / run_key(config))
            if run.finished:
                status = "done" if eval_path(run, row.test_view).is_file() else "to evaluate"
            else:
                status = "to resume" if run.config_path.is_file() else "to train"
            planned.append(PlannedRow(row, seed, run.path, config, counts[model_key], status))
    return planned


def _train(config: RunConfig, run_dir: Path, progress: bool) -> None:
    from dva.train import Trainer

    resume = (run_dir / "config.json").is_file()
    Trainer(config, run_dir, progress=progress).fit(resume=resume)


class _DataReader:
    """The data one :func:`run_rows` call reads, each catalog loaded once (the publisher's files
    parsed, every image listed) and each fingerprint computed once (every image stat'ed).

    The test side and the fingerprints of finished runs come from the same catalogs: the test
    side does not depend on ``data.val_classes`` (:func:`dva.data.make_split` carves validation
    classes from the training side only), so one load serves both.
    """

    def __init__(self) -> None:
        self._catalogs: dict[tuple[str, str], Catalog] = {}
        self._fingerprints: dict[tuple[object, ...], str] = {}

    def _split(self, data: DataConfig) -> DataSplit:
        key = (data.dataset, data.root)
        if key not in self._catalogs:
            self._catalogs[key] = load_catalog(data.dataset, data.root)
        return split_from_config(self._catalogs[key], data)

    def test_side(self, data: DataConfig) -> SplitSide:
        """The test images every row is evaluated on."""
        return self._split(data).test

    def fingerprint(self, data: DataConfig) -> str:
        """:func:`dva.data.data_fingerprint` of the split ``data`` names, as training recorded it."""
        key = split_key(data)
        if key not in self._fingerprints:
            split = self._split(data)
            self._fingerprints[key] = data_fingerprint(split)
        return self._fingerprints[key]


def _check_same_images(run: Run, config: RunConfig, data: _DataReader) -> None:
    """Refuse to reuse a finished run that was trained on other images than ``config`` names.

    Run names leave out where the data lives (a moved dataset keeps its runs), so another
    collection in the same format (bench/zoom_out.py's copy of cub100, a re-encoded one) under
    the same output folder would otherwise be answered with this run's numbers.
    """
    check_same_images(
        run.record.data_fingerprint,
        lambda: data.fingerprint(config.data),
        path=run.path,
        refusal=f"this finished run was trained on other images than those under {config.data.root!r}",
        advice="Use another output folder for another collection.",
    )


def eval_path(run: Run, view: str) -> Path:
    return run.path / EVAL_DIR / f"eval-{view}.json"


def evaluate_run(
    run: Run,
    config: RunConfig,
    view: str,
    test_side: SplitSide,
    *,
    test_boxes: str | Path | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> tuple[dict[str, Any], bool]:
    """The run's test metrics on ``view`` images, from its stored result when it has one.

    ``config`` is the run's config as asked now (where the data lives, which device to use).
    Returns ``(metrics, evaluated_now)``. A stored discriminative-view result is reused only
    when it was made from the same test box file.
    """
    from dva.evaluate import evaluate_side

    path = eval_path(run, view)
    boxes = str(Path(test_boxes).resolve()) if view == TEST_DISCRIMINATIVE and test_boxes else None
    if path.is_file():
        stored = json.loads(path.read_text(encoding="utf-8"))
        if stored.get("test_boxes") == boxes:
            return stored["metrics"], False
    image_view, counts = None, None
    if view == TEST_DISCRIMINATIVE:
        from dva.opa.test_time import discriminative_views

        image_view, counts = discriminative_views(
            boxes, test_side, config, root=config.data.root, dataset=config.data.dataset
        )
    model = run.load_model()
    metrics: dict[str, Any] = evaluate_side(
        model,
        test_side,
        img_size=config.model.img_size,
        resize_size=config.data.resize_size,
        view=image_view,
        batch_size=batch_size,
        num_workers=config.data.num_workers,
        device=config.train.device,
        precision=config.train.precision,
        progress=progress,
    )
    if counts is not None:
        metrics["test_views"] = counts
    atomic_write_json(path, {"view": view, "test_boxes": boxes, "metrics": metrics, "dva_version": __version__})
    return metrics, True


def _add_latency(results: Sequence[RowResult], detector_ms: float | None, detector_note: str) -> None:
    """Time the rows' models interleaved (one measurement per run) and fill ``RowResult.latency``."""
    from dva.evaluate.latency import compare_latency

    first = results[0].config
    models = {r.run_dir.name: Run(r.run_dir).load_model() for r in results}
    timed = compare_latency(
        models, img_size=first.model.img_size, device=first.train.device, precision=first.train.precision
    )
    for result in results:
        model = timed[result.run_dir.name]
        latency: dict[str, Any] = {"model_ms": model.median_ms, "device": model.device, "repeats": model.repeats}
        total = model.median_ms
        if result.row.test_view == TEST_DISCRIMINATIVE:
            latency["detector_ms"] = detector_ms
            latency["detector"] = detector_note
            total += detector_ms or 0.0
        latency["total_ms"] = total
        result.latency = latency


def time_detector(box_file: str | Path, test_side: SplitSide, *, images: int = 8) -> tuple[float | None, str]:
    """Milliseconds per image of the detector named in ``box_file``'s header, with the crop it feeds.

    Timed on the first ``images`` test images, as the test-time OPA of Table 8 runs it. Returns
    ``(None, reason)`` when the file names no detector or it cannot be built on this machine.
    """
    from dva.data.images import load_image
    from dva.errors import DvaError
    from dva.evaluate.latency import measure_detector_latency
    from dva.opa import ViewPolicy, create_detector, read_box_file
    from dva.opa.detectors import detector_options

    header = read_box_file(box_file).header or {}
    name = header.get("detector")
    if not name:
        return None, f"{box_file} names no detector: detector time not measured"
    options = {k: v for k, v in (header.get("settings") or {}).items() if k in detector_options(name)}
    try:
        detector = create_detector(name, **options)
    except DvaError as e:
        return None, f"detector {name!r} not available here ({e}): detector time not measured"
    prompt = header.get("prompt") or "object"
    samples = [(load_image(record.path), record) for record in test_side.records[:images]]

    def find(sample: tuple[Any, Any]) -> None:
        image, record = sample
        found = detector.detect(image, prompt, record=record)
        if found is not None:
            ViewPolicy(background=False).views(image, found)

    latency = measure_detector_latency(find, samples, device=str(getattr(detector, "device", "cpu")))
    return latency.median_ms, f"{name} detector + crop, median over {latency.repeats} test images"
