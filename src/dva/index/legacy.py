"""Index format 1 (dva up to 0.2): one full copy of everything per version.

::

    manifest.json            "format_version": 1, files {embeddings, metadata, faiss}
    embeddings-00000V.npy    (N, D) float32; row i is image id i
    metadata-00000V.jsonl    line i: {"path", "label", ...extra fields} of image id i
    faiss-00000V.index       FAISS index, ids = row numbers

Every update rewrote all three files, so adding 1,000 images to 100,000 cost a 100,000-image
write. Format 2 (:mod:`dva.index.store`) replaces it; this module reads format 1 so that old
indexes keep working (searched as they are, converted by the next ``dva index`` or
``dva index --check``), and writes it for the tests and the benchmark that compare the two.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from dva._io import atomic_write, atomic_write_json, read_jsonl
from dva.errors import DataError

FORMAT_VERSION = 1
DATA_FILES = ("embeddings", "metadata", "faiss")
SUFFIXES = {"embeddings": "npy", "metadata": "jsonl", "faiss": "index"}
#: Characters ``str.splitlines`` splits at that ``json.dumps(ensure_ascii=False)`` left raw.
RAW_SEPARATORS = ("\u2028", "\u2029", "\x85")


def data_file_name(kind: str, version: int) -> str:
    return f"{kind}-{version:06d}.{SUFFIXES[kind]}"


def read_legacy(path: Path, manifest: dict[str, Any]) -> tuple[np.ndarray, list[dict[str, Any]], faiss.Index]:
    """``(embeddings (memory-mapped), rows, FAISS index)`` of a format-1 index, counts checked."""
    files = manifest["files"]
    for kind in DATA_FILES:
        if not (path / files[kind]).is_file():
            raise DataError(f"{path / files[kind]}: missing (named by {path / 'manifest.json'})")
    embeddings = np.load(path / files["embeddings"], mmap_mode="r")
    rows = [row for _, row in read_jsonl(path / files["metadata"])]
    faiss_index = faiss.read_index(str(path / files["faiss"]))
    counts = {
        "manifest": manifest["count"],
        "embeddings": len(embeddings),
        "metadata": len(rows),
        "faiss": faiss_index.ntotal,
    }
    if len(set(counts.values())) != 1:
        raise DataError(f"{path}: the index files disagree on the number of images ({counts})")
    return embeddings, rows, faiss_index


def write_legacy_version(
    path: Path,
    manifest: dict[str, Any],
    embeddings: np.ndarray,
    rows: Sequence[dict[str, Any]],
    faiss_index: faiss.Index,
) -> dict[str, Any]:
    """Write version ``manifest["version"]`` in format 1: every file in full, then the manifest.

    Kept for the tests of reading and converting old indexes, and for ``bench/index_update.py``,
    which measures what this full rewrite costs against format 2's append.
    """
    version = int(manifest["version"])
    files = {kind: data_file_name(kind, version) for kind in DATA_FILES}
    atomic_write(path / files["embeddings"], lambda tmp: _save_npy(tmp, embeddings))
    atomic_write(path / files["metadata"], lambda tmp: save_jsonl(tmp, rows))
    atomic_write(path / files["faiss"], lambda tmp: faiss.write_index(faiss_index, str(tmp)))
    now = datetime.now(UTC).isoformat(timespec="seconds")
    manifest = {
        "format": "dva-index",
        **manifest,
        "format_version": FORMAT_VERSION,
        "count": len(rows),
        "created": manifest.get("created", now),
        "updated": now,
        "files": files,
    }
    atomic_write_json(path / "manifest.json", manifest)
    return manifest


def broken_metadata_rows(path: Path, manifest: dict[str, Any]) -> int:
    """Lines of a format-1 metadata file that hold raw line separators (dva 0.1.0 wrote them)."""
    text = (path / manifest["files"]["metadata"]).read_text(encoding="utf-8")
    return sum(1 for line in text.split("\n") if any(c in line for c in RAW_SEPARATORS))


def _save_npy(target: Path, array: np.ndarray) -> None:
    with open(target, "wb") as f:
        np.save(f, np.ascontiguousarray(array, dtype=np.float32))


def save_jsonl(target: Path, rows: Sequence[dict[str, Any]]) -> None:
    # ASCII only: no raw U+2028 & co. that a line splitter could break a row at.
    with open(target, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=True) + "\n")
