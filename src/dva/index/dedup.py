"""``dva dedup``: groups of near-identical images in an index (re-encodes, resizes, crops of one photo).

Two images are linked when their cosine similarity is at least the threshold; a group is a
connected component of those links (so A~B and B~C put A, B, C together even when A and C
are a little further apart: ``score`` to the group's first member shows it). Links come
from FAISS without an N x N matrix: an exact index answers a *range search* (every
neighbour above the threshold, however many); an approximate one (HNSW has no range
search) a k-NN search of ``k`` neighbours per image, filtered by the threshold, which can
miss links of images with more than ``k`` near-copies (they still join through the chain).
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from dva._io import atomic_write
from dva.data.images import ImageDecodeError, load_image
from dva.errors import ConfigError
from dva.index.calibrate import check_threshold
from dva.index.store import GalleryIndex

DEFAULT_THRESHOLD = 0.95
#: Neighbours per image for approximate indexes (no range search).
DEFAULT_K = 10
THUMB = 96
#: Rows (groups) and thumbnails per row drawn on the contact sheet; the CSV lists everything.
SHEET_GROUPS = 50
SHEET_PER_GROUP = 10


@dataclass(frozen=True)
class Member:
    id: int
    path: str
    label: str | None
    #: Cosine similarity to the group's first member (its lowest id); 1.0 for that member.
    score: float


@dataclass
class DedupReport:
    threshold: float
    images: int
    #: ``"range"`` (exact, every link) or ``"knn"`` (``k`` neighbours per image).
    search: str
    k: int | None
    links: int
    groups: list[list[Member]] = field(default_factory=list)

    @property
    def duplicates(self) -> int:
        """Images that could go: every member of a group but one."""
        return sum(len(g) - 1 for g in self.groups)

    def summary(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "images": self.images,
            "search": self.search,
            "k": self.k,
            "links": self.links,
            "groups": len(self.groups),
            "images_in_groups": sum(len(g) for g in self.groups),
            "duplicates": self.duplicates,
            "largest_group": max((len(g) for g in self.groups), default=0),
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary(), "groups_list": [[asdict(m) for m in g] for g in self.groups]}


def find_duplicates(
    index_dir: str | Path, *, threshold: float = DEFAULT_THRESHOLD, k: int = DEFAULT_K, block: int = 4096
) -> DedupReport:
    """Groups of at least two images linked by cosine ``>= threshold``, largest first."""
    threshold = check_threshold(threshold)
    if k < 1:
        raise ConfigError(f"k: neighbours per image must be at least 1, got {k}")
    index = GalleryIndex.load(index_dir)
    n = len(index)
    sources, targets = [], []
    exact = index.spec.exact
    # FAISS's range search keeps scores strictly above the radius: the float32 just below it.
    radius = float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))
    for start in range(0, n, block):
        queries = np.ascontiguousarray(index.embeddings[start : start + block], dtype=np.float32)
        if exact:
            lims, scores, ids = index.faiss_index.range_search(queries, radius)
            rows = np.repeat(np.arange(len(queries)), np.diff(lims).astype(np.int64)) + start  # lims is size_t
        else:
            scores, ids = index.faiss_index.search(queries, min(k + 1, n))
            rows = np.repeat(np.arange(len(queries)), ids.shape[1]) + start
            scores, ids = scores.ravel(), ids.ravel()
        keep = (ids >= 0) & (ids != rows) & (scores >= threshold)
        sources.append(rows[keep])
        targets.append(ids[keep])
    src, dst = np.concatenate(sources), np.concatenate(targets).astype(np.int64)
    links = len({(min(a, b), max(a, b)) for a, b in zip(src.tolist(), dst.tolist(), strict=True)})
    graph = coo_matrix((np.ones(len(src), np.float32), (src, dst)), shape=(n, n))
    _, component = connected_components(graph, directed=True, connection="weak")
    # Members of each component, ids ascending (a stable sort of the component numbers).
    order = np.argsort(component, kind="stable")
    members = np.split(order, np.flatnonzero(np.diff(component[order])) + 1)
    groups = []
    for ids in (m for m in members if len(m) >= 2):  # the first member has the lowest id
        vectors = np.asarray(index.embeddings[ids], dtype=np.float32)
        scores = vectors @ vectors[0]
        groups.append(
            [
                Member(
                    int(index.ids[i]),
                    index.rows[i]["path"],
                    index.rows[i]["label"],
                    1.0 if j == 0 else float(scores[j]),
                )
                for j, i in enumerate(ids)
            ]
        )
    groups.sort(key=lambda g: (-len(g), g[0].id))
    return DedupReport(threshold, n, "range" if exact else "knn", None if exact else k, links, groups)


def write_csv(report: DedupReport, out: str | Path) -> Path:
    """One row per member: group (1 = largest), id, path, label, score to the group's first member."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["group", "id", "path", "label", "score"])
            for number, group in enumerate(report.groups, start=1):
                for m in group:
                    writer.writerow([number, m.id, m.path, "" if m.label is None else m.label, f"{m.score:.6f}"])

    return atomic_write(out, write)


def contact_sheet(
    report: DedupReport,
    out: str | Path,
    *,
    max_groups: int = SHEET_GROUPS,
    per_group: int = SHEET_PER_GROUP,
    thumb: int = THUMB,
) -> Path:
    """A PNG with one row per group (largest first): its thumbnails, each with its score to the first."""
    groups = report.groups[:max_groups]
    label_w, caption_h = 44, 14
    width = label_w + per_group * (thumb + 4)
    height = max(1, len(groups)) * (thumb + caption_h + 6)
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    if not groups:
        draw.text((4, 4), "no duplicates", fill="black")
    for row, group in enumerate(groups):
        y = row * (thumb + caption_h + 6) + 3
        draw.text((4, y + thumb // 2 - 6), f"#{row + 1}", fill="black")
        for col, member in enumerate(group[:per_group]):
            x = label_w + col * (thumb + 4)
            sheet.paste(_thumbnail(member.path, thumb), (x, y))
            draw.text((x + 2, y + thumb + 1), f"{member.score:.3f}", fill="black")
        if len(group) > per_group:
            draw.text((width - 40, y + thumb + 1), f"+{len(group) - per_group}", fill="red")
    return atomic_write(out, lambda tmp: sheet.save(tmp, format="PNG"))


def _thumbnail(path: str, size: int) -> Image.Image:
    """The image fitted into a ``size`` square; a grey tile when the file is gone or unreadable."""
    tile = Image.new("RGB", (size, size), (200, 200, 200))
    try:
        image = load_image(path)
    except (ImageDecodeError, OSError):  # a missing or broken gallery file must not stop the report
        return tile
    image.thumbnail((size, size))
    tile.paste(image, ((size - image.width) // 2, (size - image.height) // 2))
    return tile
