"""Retrieval grids like the paper's Fig. 4: each query, then its top-k matches, marked
green when a match has the query's label and red when not (grey when a label is unknown).

Queries that are themselves in the gallery follow the paper's protocol (Sec. 4.1.2): the
query is left out of its own matches, and its indexed label is the ground truth.

:func:`comparison_rows` searches the same queries in several indexes of one gallery (the
frozen backbone's and a trained run's) and interleaves their rows, each titled with its
model, so the effect of training shows query by query.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from dva.data.images import load_image
from dva.errors import DataError
from dva.index.searcher import ImageLike, Match, Searcher

QUERY_COLOUR = (43, 108, 176)
CORRECT_COLOUR = (47, 158, 68)
WRONG_COLOUR = (224, 49, 49)
UNKNOWN_COLOUR = (160, 160, 160)


@dataclass
class GridRow:
    query: Image.Image
    #: Ground truth of the query, when known; decides the colour of each match.
    query_label: str | None
    matches: list[Match]
    #: Which model found these matches (drawn under the query); None for a single-model grid.
    title: str | None = None


def retrieval_rows(
    searcher: Searcher,
    queries: Sequence[ImageLike] = (),
    *,
    sample: int = 0,
    seed: int = 0,
    k: int = 10,
) -> list[GridRow]:
    """Search each query (paths or PIL images) plus ``sample`` gallery images drawn with ``seed``."""
    ids_by_path = searcher.index.ids_by_path
    query_ids: list[int | None] = [
        ids_by_path.get(str(Path(q).resolve())) if not isinstance(q, Image.Image) else None for q in queries
    ]
    if sample:
        if sample > len(searcher):
            raise DataError(f"cannot sample {sample} queries from a gallery of {len(searcher)} images")
        drawn = searcher.index.ids[np.random.default_rng(seed).choice(len(searcher), sample, replace=False)]
        query_ids += [int(i) for i in drawn]
        queries = [*queries, *(searcher.match(int(i)).path for i in drawn)]
    if not queries:
        raise DataError("no queries: pass query images, or sample some from the gallery")
    rows = []
    for query, query_id, matches in zip(queries, query_ids, searcher.search_batch(queries, k + 1), strict=True):
        # A gallery image is its own best match: leave it out, as the paper's protocol does.
        matches = [m for m in matches if m.id != query_id][:k]
        label = searcher.match(query_id).label if query_id is not None else None
        image = query if isinstance(query, Image.Image) else load_image(query)
        rows.append(GridRow(image, label, matches))
    return rows


def comparison_rows(
    searchers: Sequence[Searcher],
    queries: Sequence[str | Path] = (),
    *,
    sample: int = 0,
    seed: int = 0,
    k: int = 10,
) -> list[GridRow]:
    """For each query, one row per searcher, in the order given, titled by :func:`model_titles`.

    The searchers index the same gallery with different models. ``sample`` draws gallery
    images from the first one; the others find them by path, so every model answers the same
    queries and a query is left out of its own matches in each.
    """
    if not searchers:
        raise DataError("no index to compare")
    searchers = dict(zip(model_titles(searchers), searchers, strict=True))
    first = next(iter(searchers.values()))
    paths = [str(q) for q in queries]
    if sample:
        if sample > len(first):
            raise DataError(f"cannot sample {sample} queries from a gallery of {len(first)} images")
        drawn = np.random.default_rng(seed).choice(len(first), sample, replace=False)
        paths += [first.match(int(i)).path for i in drawn]
    for name, searcher in searchers.items():
        missing = [p for p in paths if str(Path(p).resolve()) not in searcher.index.ids_by_path]
        if sample and missing:
            raise DataError(
                f"{searcher.index.path} ({name}): does not hold the sampled query {missing[0]}; "
                "compare indexes of the same gallery"
            )
    per_model = {name: retrieval_rows(searcher, paths, k=k) for name, searcher in searchers.items()}
    rows = []
    for i in range(len(paths)):
        for name, model_rows in per_model.items():
            row = model_rows[i]
            row.title = name
            rows.append(row)
    return rows


def model_titles(searchers: Sequence[Searcher]) -> list[str]:
    """Each index's model method (``frozen``, ``dva``, ...), with its folder's name where two share one."""
    methods = [s.describe()["model"]["method"] for s in searchers]
    return [
        m if methods.count(m) == 1 else f"{m} ({s.index.path.name})" for m, s in zip(methods, searchers, strict=True)
    ]


def render_retrieval_grid(rows: Sequence[GridRow], *, thumb: int = 128, gap: int = 6) -> Image.Image:
    """One row per query: the query (blue frame), then its matches with label and score."""
    font_size = max(10, thumb // 10)
    font = ImageFont.load_default(size=font_size)
    k = max((len(r.matches) for r in rows), default=0)
    text_h = 2 * (font_size + 3)
    header_h = font_size + 8
    cell_w, cell_h = thumb + gap, thumb + text_h + gap
    width = gap + (k + 1) * cell_w + gap  # one extra gap separates the query column
    canvas = Image.new("RGB", (width, header_h + len(rows) * cell_h + gap), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((gap, 2), "query", fill="black", font=font)
    for j in range(k):
        draw.text((2 * gap + (j + 1) * cell_w, 2), f"top-{j + 1}", fill="black", font=font)
    for i, row in enumerate(rows):
        y = header_h + i * cell_h
        _paste(canvas, row.query, (gap, y), thumb, QUERY_COLOUR)
        _caption(draw, (gap, y + thumb + 2), row.query_label or "(no label)", row.title or "", font, font_size, thumb)
        for j, match in enumerate(row.matches):
            x = 2 * gap + (j + 1) * cell_w
            colour = _colour(row.query_label, match.label)
            _paste(canvas, load_image(match.path), (x, y), thumb, colour)
            _caption(draw, (x, y + thumb + 2), match.label or "", f"{match.score:.3f}", font, font_size, thumb)
    return canvas


def _colour(query_label: str | None, label: str | None) -> tuple[int, int, int]:
    if query_label is None or label is None:
        return UNKNOWN_COLOUR
    return CORRECT_COLOUR if label == query_label else WRONG_COLOUR


def _paste(canvas: Image.Image, image: Image.Image, xy: tuple[int, int], size: int, colour) -> None:
    border = max(3, size // 32)
    canvas.paste(Image.new("RGB", (size, size), colour), xy)
    canvas.paste(ImageOps.fit(image, (size - 2 * border, size - 2 * border)), (xy[0] + border, xy[1] + border))


def _caption(draw: ImageDraw.ImageDraw, xy, label: str, score: str, font, font_size: int, width: int) -> None:
    x, y = xy
    label = label.replace("_", " ")
    if draw.textlength(label, font=font) > width:
        while label and draw.textlength(label + "…", font=font) > width:
            label = label[:-1]
        label += "…"
    draw.text((x, y), label, fill="black", font=font)
    if score:
        draw.text((x, y + font_size + 3), score, fill=(90, 90, 90), font=font)
