"""Datasets registered by name, each with the counts its publisher's split should give.

Adding a dataset is one reader function decorated with :func:`register_dataset`; the
readers for the paper's datasets live in this package, one module per publisher layout.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dva.data.records import Catalog
from dva.errors import DataError
from dva.registry import Registry

Reader = Callable[[Path], Catalog]


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    reader: Reader
    description: str
    #: Meta-category, the default detector prompt for OPA ("bird", "car", ...).
    meta_category: str = "object"
    #: ``{protocol: (train images, test images)}`` for a complete copy (``dva data check``).
    expected_counts: dict[str, tuple[int, int]] = field(default_factory=dict)
    homepage: str = ""


def _load_builtin_readers() -> None:
    # Imported for their registration side effect; kept here so `import dva.data` stays cheap.
    import dva.data.aircraft  # noqa: F401 - registration side effect
    import dva.data.cars  # noqa: F401 - registration side effect
    import dva.data.cub  # noqa: F401 - registration side effect
    import dva.data.dogs  # noqa: F401 - registration side effect
    import dva.data.folder  # noqa: F401 - registration side effect
    import dva.data.inat  # noqa: F401 - registration side effect
    import dva.data.nabirds  # noqa: F401 - registration side effect


_DATASETS: Registry[DatasetInfo] = Registry("dataset", DataError, builtins=_load_builtin_readers)


def register_dataset(
    name: str,
    *,
    description: str,
    meta_category: str = "object",
    expected_counts: dict[str, tuple[int, int]] | None = None,
    homepage: str = "",
) -> Callable[[Reader], Reader]:
    def decorator(reader: Reader) -> Reader:
        _DATASETS.add(name, DatasetInfo(name, reader, description, meta_category, expected_counts or {}, homepage))
        return reader

    return decorator


def get_dataset(name: str) -> DatasetInfo:
    return _DATASETS.get(name)


def list_datasets() -> list[str]:
    return _DATASETS.names()


def read_catalog(name: str, root: str | Path) -> Catalog:
    """Read a dataset, collecting (not raising) per-record problems; see :func:`load_catalog`."""
    if not str(root):
        raise DataError(f"no root folder given for dataset {name!r} (--data ROOT)")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: dataset root is not a directory")
    return get_dataset(name).reader(root)


def load_catalog(name: str, root: str | Path) -> Catalog:
    """Read a dataset and refuse it if anything is wrong, listing up to ten problems."""
    catalog = read_catalog(name, root)
    if catalog.problems:
        shown = "\n  ".join(catalog.problems[:10])
        more = f"\n  ... and {len(catalog.problems) - 10} more" if len(catalog.problems) > 10 else ""
        raise DataError(
            f"{catalog.root}: {len(catalog.problems)} problem(s) in the {name} layout "
            f"(`dva data check` lists them all):\n  {shown}{more}"
        )
    return catalog
