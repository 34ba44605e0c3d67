"""A generic class-per-folder layout: ``ROOT/<class>/<image>``.

For a closed split, put the official sides in ``ROOT/train/<class>/`` and ``ROOT/test/<class>/``;
the open split then uses both, divided by class. Classes are ordered by folder name.
"""

from __future__ import annotations

from pathlib import Path

from dva.data.records import Catalog, ImageRecord
from dva.data.registry import register_dataset
from dva.errors import DataError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


@register_dataset("folder", description="any ROOT/<class>/<image> tree (optionally ROOT/train and ROOT/test)")
def read_folder(root: Path) -> Catalog:
    sides = {"train": True, "test": False} if (root / "train").is_dir() and (root / "test").is_dir() else {"": None}
    class_dirs: dict[str, list[tuple[Path, bool | None]]] = {}
    for side, is_train in sides.items():
        for d in sorted(p for p in (root / side).iterdir() if p.is_dir() and not p.name.startswith(".")):
            class_dirs.setdefault(d.name, []).append((d, is_train))
    if not class_dirs:
        raise DataError(f"{root}: no class folders found (expected ROOT/<class>/<image> or ROOT/train/<class>/...)")
    class_names = sorted(class_dirs)
    records: list[ImageRecord] = []
    problems: list[str] = []
    for label, name in enumerate(class_names):
        count = 0
        for directory, is_train in class_dirs[name]:
            for path in sorted(p for p in directory.rglob("*") if is_image_file(p)):
                image_id = str(path.relative_to(root))
                records.append(ImageRecord(path, label, image_id, is_train=is_train))
                count += 1
        if not count:
            problems.append(f"{root / name}: class {name!r} has no images")
    return Catalog("folder", root, class_names, records, problems)
