"""Reading the MATLAB ``.mat`` annotation files of Stanford Cars and Stanford Dogs.

``scipy.io.loadmat(simplify_cells=True)`` turns a MATLAB struct array into a list of dicts
and a cell array into a list/array of strings, so readers see field names, not nested
``array([[...]])`` wrappers. A file from another release (other variable or field names), a
MATLAB v7.3 (HDF5) file or a truncated download becomes one :class:`DataError` naming the
file and what is missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io

from dva.data.tables import require_file
from dva.errors import DataError


def read_mat(path: Path, variables: Sequence[str]) -> dict[str, Any]:
    """The variables of a MATLAB v5 file, refusing one that lacks any of ``variables``."""
    require_file(path, "MATLAB annotation file")
    try:
        data = scipy.io.loadmat(path, simplify_cells=True)
    except NotImplementedError:  # scipy's answer to v7.3 files
        raise DataError(f"{path}: a MATLAB v7.3 (HDF5) file; the publisher ships v5 files, re-download it") from None
    except (scipy.io.matlab.MatReadError, ValueError, TypeError, IndexError, OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read the MATLAB file ({type(e).__name__}: {e}); truncated download?") from None
    found = sorted(k for k in data if not k.startswith("__"))
    missing = [v for v in variables if v not in data]
    if missing:
        raise DataError(
            f"{path}: no variable {', '.join(repr(m) for m in missing)} (it holds {', '.join(found) or 'nothing'}); "
            "a file from another release?"
        )
    return data


def struct_rows(data: dict[str, Any], variable: str, fields: Sequence[str], path: Path) -> list[dict[str, Any]]:
    """A struct array variable as a list of dicts, refusing one that lacks any of ``fields``."""
    value = data[variable]
    rows = [value] if isinstance(value, dict) else list(value)
    if not all(isinstance(r, dict) for r in rows):
        raise DataError(f"{path}: {variable!r} is not a struct array")
    for index, row in enumerate(rows):
        missing = [f for f in fields if f not in row]
        if missing:
            raise DataError(
                f"{path}: {variable}({index + 1}) has no field {', '.join(repr(m) for m in missing)} "
                f"(fields: {', '.join(row)}); a file from another release?"
            )
    return rows


def string_list(data: dict[str, Any], variable: str, path: Path) -> list[str]:
    """A cell array of strings (any shape) as a flat list."""
    values = np.atleast_1d(np.asarray(data[variable], dtype=object)).ravel()
    if not all(isinstance(v, str) for v in values):
        raise DataError(f"{path}: {variable!r} is not a cell array of strings")
    return [str(v) for v in values]


def number_list(data: dict[str, Any], variable: str, path: Path) -> list[float]:
    try:
        return [float(v) for v in np.atleast_1d(np.asarray(data[variable], dtype=float)).ravel()]
    except (TypeError, ValueError):
        raise DataError(f"{path}: {variable!r} is not numeric") from None
