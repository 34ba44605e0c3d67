"""``dva calibrate``: a cosine threshold that answers "is it the same item?" at a known error rate.

A score of 0.83 means nothing by itself; what a user needs is "a match" or "not a match",
with a known rate of false matches. From a labelled set (``VAL/<class>/<image>`` or a
gallery list with labels), embedded with the index's own model, every pair of images of
the same label is *genuine* and every pair of different labels an *impostor*. The
threshold ``t`` (a match when ``score >= t``) is the smallest one whose false-match rate
(impostor scores at or above it) does not exceed the target; the false non-match rate
(genuine scores below it) at ``t`` is what that costs. Both are measured on the pairs and
stored with their counts, so the claim can be checked.

The result lives in ``INDEX_DIR/calibration.json``, written atomically and apart from the
versioned data files: updates of the index keep it (it depends on the model, recorded as its
fingerprint, not on the gallery), and a file made for another model is refused on load.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from dva._io import atomic_write, atomic_write_json
from dva.errors import ConfigError, DataError, MissingDependency
from dva.index.gallery import GalleryItem, read_gallery
from dva.index.model import IndexModel
from dva.index.store import GalleryIndex

CALIBRATION = "calibration.json"
PLOT = "calibration.png"
FORMAT = "dva-calibration"
DEFAULT_FMR = 0.01
#: Up to this many pairs of each kind are all used; beyond, a seeded uniform sample of this size.
DEFAULT_MAX_PAIRS = 2_000_000


@dataclass(frozen=True)
class Calibration:
    """The stored decision rule of an index: ``is_match = score >= threshold``."""

    threshold: float
    target_fmr: float
    #: Measured at ``threshold`` on the calibration pairs.
    fmr: float
    fnmr: float
    genuine_pairs: int
    impostor_pairs: int
    #: ``"all"`` (every pair) or ``"sample"`` (a seeded uniform sample of ``max_pairs`` per kind).
    pairs: str
    images: int
    labels: int
    skipped: int
    labelled: str
    seed: int
    model_fingerprint: str
    created: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "format_version": 1, **asdict(self)}


def check_threshold(value: float, name: str = "threshold") -> float:
    """A cosine threshold must lie in [-1, 1]; anything else is a typo, not a policy."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or math.isnan(number) or not -1.0 <= number <= 1.0:
        raise ConfigError(f"{name}: a cosine threshold lies in [-1, 1], got {value!r}")
    return number


def load_calibration(index: GalleryIndex) -> Calibration | None:
    """The index's calibration, or None when it has none; one made for another model is an error."""
    path = index.path / CALIBRATION
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        raw.pop("format"), raw.pop("format_version")
        calibration = Calibration(**raw)
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{path}: not a dva calibration ({e}); run `dva calibrate` again") from None
    if calibration.model_fingerprint != index.manifest["model"]["fingerprint"]:
        raise DataError(f"{path}: made for another model than this index's; run `dva calibrate` again")
    return calibration


def error_rates(genuine: np.ndarray, impostor: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(FMR, FNMR)`` at each threshold: impostor scores ``>= t``, genuine scores ``< t``."""
    impostor, genuine = np.sort(impostor), np.sort(genuine)
    fmr = 1.0 - np.searchsorted(impostor, thresholds, side="left") / len(impostor)
    fnmr = np.searchsorted(genuine, thresholds, side="left") / len(genuine)
    return fmr, fnmr


def threshold_for_fmr(impostor: np.ndarray, target: float) -> float:
    """The smallest threshold whose FMR on ``impostor`` is at most ``target``.

    With ``m = floor(target * n)`` false matches allowed, that is just above the
    ``(m+1)``-th highest impostor score: every score strictly above it is allowed through.
    """
    ordered = np.sort(np.asarray(impostor, dtype=np.float64))[::-1]
    allowed = int(math.floor(target * len(ordered)))
    if allowed >= len(ordered):
        return -1.0
    return float(min(np.nextafter(ordered[allowed], np.inf), 1.0))


def calibration_pairs(
    vectors: np.ndarray, labels: np.ndarray, *, max_pairs: int = DEFAULT_MAX_PAIRS, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, str]:
    """Cosine scores of genuine and impostor pairs (``i < j``): all of them when each kind has at
    most ``max_pairs``, else a seeded uniform sample of ``max_pairs`` per kind (``"sample"``)."""
    n = len(labels)
    counts = np.unique(labels, return_counts=True)[1]
    n_genuine = int((counts * (counts - 1) // 2).sum())
    n_impostor = n * (n - 1) // 2 - n_genuine
    if n_genuine <= max_pairs and n_impostor <= max_pairs:
        genuine, impostor = [], []
        for start in range(0, n, 1024):  # the upper triangle a block of rows at a time
            sims = vectors[start : start + 1024] @ vectors.T
            rows, cols = _upper(start, len(sims), n)
            same = labels[start + rows] == labels[cols]
            genuine.append(sims[rows[same], cols[same]])
            impostor.append(sims[rows[~same], cols[~same]])
        return np.concatenate(genuine), np.concatenate(impostor), "all"
    rng = np.random.default_rng(seed)
    by_label = [np.flatnonzero(labels == label) for label in np.unique(labels)]
    weights = np.array([len(m) * (len(m) - 1) / 2 for m in by_label], dtype=np.float64)
    genuine_scores = np.empty(0, np.float32)
    if n_genuine:
        # A uniform genuine pair: a label by its pair count, then two distinct members of it.
        chosen = rng.choice(len(by_label), size=min(max_pairs, n_genuine), p=weights / weights.sum())
        sizes = np.array([len(by_label[c]) for c in chosen])
        a = (rng.random(len(chosen)) * sizes).astype(int)
        b = (rng.random(len(chosen)) * (sizes - 1)).astype(int)
        b += b >= a
        first = np.array([by_label[c][i] for c, i in zip(chosen, a, strict=True)])
        second = np.array([by_label[c][i] for c, i in zip(chosen, b, strict=True)])
        genuine_scores = np.einsum("md,md->m", vectors[first], vectors[second])
    # A uniform impostor pair: uniform pairs of distinct images, those of one label rejected.
    first, second = np.empty(0, int), np.empty(0, int)
    wanted = min(max_pairs, n_impostor)
    while len(first) < wanted:
        i, j = rng.integers(0, n, (2, 2 * (wanted - len(first)) + 16))
        keep = labels[i] != labels[j]
        first, second = np.concatenate([first, i[keep]]), np.concatenate([second, j[keep]])
    first, second = first[:wanted], second[:wanted]
    impostor_scores = np.einsum("md,md->m", vectors[first], vectors[second])
    return genuine_scores, impostor_scores, "sample"


def _upper(start: int, rows: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(r, c)`` with ``start + r < c`` in a ``rows x n`` block starting at row ``start``."""
    r, c = np.nonzero(np.arange(n)[None, :] > (start + np.arange(rows))[:, None])
    return r, c


def calibrate(
    index_dir: str | Path,
    labelled: str | Path,
    *,
    target_fmr: float = DEFAULT_FMR,
    max_pairs: int = DEFAULT_MAX_PAIRS,
    seed: int = 0,
    plot: str | Path | None = None,
    embed: dict[str, Any] | None = None,
) -> Calibration:
    """Embed ``labelled`` with the index's model, choose the threshold for ``target_fmr``, draw the
    FMR/FNMR curve to ``plot`` (default ``INDEX_DIR/calibration.png``) and store the calibration.

    Every check runs before anything is written: bad input leaves the index as it was.
    """
    from dva.index.build import embed_items

    if not isinstance(target_fmr, (int, float)) or not 0.0 < target_fmr < 1.0:
        raise ConfigError(f"fmr: the target false-match rate lies strictly between 0 and 1, got {target_fmr!r}")
    if max_pairs < 1:
        raise ConfigError(f"max_pairs must be at least 1, got {max_pairs}")
    index_dir = Path(index_dir)
    index = GalleryIndex.load(index_dir)
    items = [item for item in read_gallery(labelled) if item.label is not None]
    _check_labels(labelled, items)
    model = IndexModel.from_index(index_dir)
    embeddings, _ = embed_items(model, items, **(embed or {}))
    labels_text = [items[i].label for i in embeddings.indices]
    names, labels = np.unique(np.array(labels_text, dtype=object).astype(str), return_inverse=True)
    _check_labels(labelled, [items[i] for i in embeddings.indices], after_decoding=True)
    genuine, impostor, how = calibration_pairs(embeddings.vectors, labels, max_pairs=max_pairs, seed=seed)
    threshold = threshold_for_fmr(impostor, target_fmr)
    fmr, fnmr = error_rates(genuine, impostor, np.array([threshold]))
    calibration = Calibration(
        threshold=threshold,
        target_fmr=float(target_fmr),
        fmr=float(fmr[0]),
        fnmr=float(fnmr[0]),
        genuine_pairs=len(genuine),
        impostor_pairs=len(impostor),
        pairs=how,
        images=len(labels),
        labels=len(names),
        skipped=len(embeddings.failures),
        labelled=str(labelled),
        seed=seed,
        model_fingerprint=index.manifest["model"]["fingerprint"],
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    draw_curve(genuine, impostor, calibration, Path(plot) if plot else index_dir / PLOT)
    atomic_write_json(index_dir / CALIBRATION, calibration.to_dict())
    return calibration


def _check_labels(labelled: str | Path, items: list[GalleryItem], *, after_decoding: bool = False) -> None:
    why = " that could be read" if after_decoding else ""
    counts = Counter(item.label for item in items)
    labels = set(counts)
    if len(labels) < 2:
        raise DataError(
            f"labelled: {labelled} has {len(labels)} label(s) among images{why}; "
            "calibration needs at least two (impostor pairs)"
        )
    if max(counts.values()) < 2:
        raise DataError(f"labelled: {labelled} has no two images{why} of the same label (no genuine pairs)")


def draw_curve(genuine: np.ndarray, impostor: np.ndarray, calibration: Calibration, out: Path) -> Path:
    """FMR and FNMR against the threshold (log scale), the chosen threshold marked."""
    try:
        import matplotlib
    except ImportError:
        raise MissingDependency("the FMR/FNMR curve needs matplotlib: pip install 'dva[viz]'") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    thresholds = np.linspace(-1.0, 1.0, 2001)
    lo = min(float(genuine.min()), float(impostor.min())) - 0.02
    thresholds = thresholds[thresholds >= lo]
    fmr, fnmr = error_rates(genuine, impostor, thresholds)
    floor = 0.5 / max(len(genuine), len(impostor))  # zero cannot be drawn on a log axis
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    ax.plot(thresholds, np.maximum(fmr, floor), label=f"FMR ({calibration.impostor_pairs:,} impostor pairs)")
    ax.plot(thresholds, np.maximum(fnmr, floor), label=f"FNMR ({calibration.genuine_pairs:,} genuine pairs)")
    ax.axvline(calibration.threshold, color="k", linestyle="--", linewidth=1)
    ax.axhline(calibration.target_fmr, color="grey", linestyle=":", linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("cosine threshold (a match when score >= threshold)")
    ax.set_ylabel("error rate")
    ax.set_title(
        f"t = {calibration.threshold:.4f}: FMR {calibration.fmr:.4f} "
        f"(target {calibration.target_fmr:g}), FNMR {calibration.fnmr:.4f}",
        fontsize=10,
    )
    ax.legend(fontsize=8, loc="center right")  # "best" scans every point: slow on large curves
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    try:
        atomic_write(out, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
    return out
