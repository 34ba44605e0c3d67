"""A contact sheet of OPA's views (``dva views``): check a detector at a glance before training.

Three tiles per image: the original with its box (green: trusted, orange: score below
``min_score``, so training uses the original image), the discriminative view, and the
background view (or why there is none); ``per_row`` images side by side. The views and the
counts come from the :class:`~dva.opa.policy.ViewPolicy` training uses, so they are what
training will make and log.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from PIL import Image, ImageDraw, ImageFont

from dva.data.images import ImageDecodeError, load_image
from dva.geometry import area_fraction, read_image_header
from dva.opa.box_files import BoxEntry, BoxFile
from dva.opa.policy import ALL_VIEWS, LARGE_BOX, LOW_SCORE, NO_DETECTION, ViewPolicy
from dva.view_kinds import BACKGROUND, DISCRIMINATIVE

COLUMNS = ("original + box", "discriminative view", "background view")
TRUSTED, UNTRUSTED = (40, 200, 60), (255, 150, 0)
CANVAS, EMPTY = (255, 255, 255), (225, 225, 225)


@dataclass(frozen=True)
class SheetOptions:
    #: The view rule shown (training's, by default).
    policy: ViewPolicy = field(default_factory=ViewPolicy)
    #: Side of each square tile, in pixels.
    tile: int = 200
    #: Images (groups of three tiles) per row.
    per_row: int = 2


#: What training makes of an image's box, in the order the sheet and the statistics report them.
OUTCOMES = (ALL_VIEWS, LARGE_BOX, LOW_SCORE, NO_DETECTION)

#: A median trusted box covering this share of its image or more marks tightly cropped photos
#: (cub100's median is 0.85; docs/opa.md, "Zoom-out views"): the object views are then nearly the
#: photos, DPT has little to transfer, and no training image shows a small object.
TIGHT_MEDIAN_AREA = 0.6


def outcome(entry: BoxEntry, options: SheetOptions = SheetOptions()) -> str:
    """``background`` (all three views), ``large_box`` (no background view), ``low_score`` or
    ``no_detection`` (the original image stands in): the names of the training log's events."""
    policy = options.policy
    size = None
    if policy.needs_image_size(entry.detection):  # upright, as the boxes
        size = entry.size or read_image_header(entry.path).size
    return policy.outcome(entry.detection, size)


def spread(entries: Sequence[BoxEntry], limit: int) -> list[BoxEntry]:
    """``limit`` entries evenly spaced through ``entries`` (files are grouped by class: this shows many)."""
    if limit >= len(entries):
        return list(entries)
    step = len(entries) / limit
    return [entries[int(i * step)] for i in range(limit)]


def pick(entries: Sequence[BoxEntry], limit: int, options: SheetOptions = SheetOptions()) -> list[BoxEntry]:
    """``limit`` entries that show every outcome: equal shares (a rare outcome's unused share goes
    to the others), each spread through the file, in file order."""
    groups = [[e for e in entries if outcome(e, options) == name] for name in OUTCOMES]
    groups = sorted((g for g in groups if g), key=len)
    chosen: list[BoxEntry] = []
    for i, group in enumerate(groups):
        chosen += spread(group, (limit - len(chosen)) // (len(groups) - i))
    position = {id(e): i for i, e in enumerate(entries)}
    return sorted(chosen, key=lambda e: position[id(e)])


def contact_sheet(entries: Sequence[BoxEntry], options: SheetOptions = SheetOptions()) -> Image.Image:
    font = ImageFont.load_default(size=max(10, options.tile // 16))
    line = font.size + 4
    header, caption, gap = line + 6, line * 2 + 4, options.tile // 10
    group = options.tile * len(COLUMNS) + gap
    per_row = max(1, min(options.per_row, len(entries)))
    rows = -(-len(entries) // per_row)
    sheet = Image.new("RGB", (group * per_row - gap, header + (options.tile + caption) * rows), CANVAS)
    draw = ImageDraw.Draw(sheet)
    for g in range(per_row):
        for c, title in enumerate(COLUMNS):
            draw.text((g * group + c * options.tile + 6, 4), title, fill=(0, 0, 0), font=font)
    for i, entry in enumerate(entries):
        left, top = (i % per_row) * group, header + (i // per_row) * (options.tile + caption)
        tiles, notes = _row(entry, options)
        for c, (tile, note) in enumerate(zip(tiles, notes, strict=True)):
            x = left + c * options.tile
            sheet.paste(_fit(tile, options.tile), (x, top))
            note = "\n".join(_fit_text(draw, text, font, options.tile - 8) for text in note.split("\n"))
            draw.multiline_text((x + 4, top + options.tile + 2), note, fill=(0, 0, 0), font=font, spacing=2)
    return sheet


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.FreeTypeFont, width: int) -> str:
    """``text``, shortened from the left with "..." until it fits ``width`` pixels (the file name's end matters)."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength("..." + text, font=font) > width:
        text = text[1:]
    return "..." + text


def _row(entry: BoxEntry, options: SheetOptions) -> tuple[list[Image.Image | None], list[str]]:
    name = "/".join(entry.path.parts[-2:])
    try:
        image = load_image(entry.path)
    except ImageDecodeError as e:
        return [None, None, None], [f"{name}\nunreadable: {e}"[:80], "", ""]
    if entry.box is None:
        return [image, None, None], [f"{name}\nno object found", "original used", "none"]
    policy = options.policy
    trusted = policy.trusts(entry.detection)
    marked = image.copy()
    colour = TRUSTED if trusted else UNTRUSTED
    ImageDraw.Draw(marked).rectangle(entry.box, outline=colour, width=max(2, image.width // 100))
    first = f"{name}\nscore {entry.score:.2f}" + ("" if trusted else f" < {policy.min_score}")
    if not trusted:
        return [marked, image, None], [first, "original used (low score)", "none (low score)"]
    views, _ = policy.views(image, entry.detection)
    crop, background = views[DISCRIMINATIVE], views.get(BACKGROUND)
    area = area_fraction(entry.box, image.width, image.height)
    second = f"{crop.width}x{crop.height}"
    third = f"box {area:.0%} of image" + ("" if background is not None else f"\nnone (>= {policy.max_area:.0%})")
    return [marked, crop, background], [first, second, third]


def _fit(image: Image.Image | None, side: int) -> Image.Image:
    """``image`` scaled to fit a ``side`` x ``side`` tile, centred (an empty tile for None)."""
    tile = Image.new("RGB", (side, side), EMPTY)
    if image is not None:
        scale = side / max(image.size)
        shown = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
        tile.paste(shown, ((side - shown.width) // 2, (side - shown.height) // 2))
    return tile


def box_statistics(boxes: BoxFile, options: SheetOptions = SheetOptions()) -> dict[str, float | int]:
    """What training will make of a box file: how many images get trusted boxes and background views."""
    entries = list(boxes.entries.values())
    counts = Counter(outcome(e, options) for e in entries)
    found = [e for e in entries if e.box is not None]
    trusted = [e for e in found if e.score >= options.policy.min_score]
    return {
        "images": len(entries),
        "mean_score": round(sum(e.score for e in found) / len(found), 4) if found else 0.0,
        "median_area": round(statistics.median(map(_area, trusted)), 4) if trusted else 0.0,
        **{name: counts[name] for name in OUTCOMES},
    }


def framing_advice(stats: Mapping[str, float | int]) -> str | None:
    """What to do about tightly cropped training photos (:data:`TIGHT_MEDIAN_AREA`), or None.

    Measured on cub100 (docs/opa.md): models trained on such crops lose about 30 R@1 on the same
    species photographed smaller, and ``--zoom-out 0.5`` wins most of it back for under one R@1
    on tight photos. Whether it applies depends on the queries, which a box file cannot tell.
    """
    area = float(stats.get("median_area", 0.0))
    if area < TIGHT_MEDIAN_AREA:
        return None
    return (
        f"tightly cropped photos: the median trusted box covers {area:.0%} of its image, so the object "
        "views are nearly the photos and no training image shows a small object. If your queries frame "
        "objects more loosely than these photos, train with --zoom-out 0.5 (docs/opa.md, 'Zoom-out views')."
    )


def _area(entry: BoxEntry) -> float:
    assert entry.box is not None
    width, height = entry.size or read_image_header(entry.path).size  # upright, as the boxes
    return area_fraction(entry.box, width, height)
