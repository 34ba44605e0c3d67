"""The index directory: the contract between ``dva index``, ``dva search`` and ``dva serve``.

::

    INDEX_DIR/
      manifest.json            what is current: version, image count, model, index type and
                               parameters, measured recall, and the names of the files below
      config.json              RunConfig of the model that made the embeddings (a run's, or a
                               frozen backbone's): the directory loads like a run (dva.Run)
      model.safetensors        the run's trained weights (absent for a frozen backbone)
      embeddings-000002.npy    (N, D) float32 L2-normalised embeddings; row i is image id i
      metadata-000002.jsonl    line i: {"path", "label", ...extra fields} of image id i
      faiss-000002.index       FAISS index over the embeddings, FAISS ids = row numbers

Like clip-retrieval, embeddings and metadata on disk are the contract; the FAISS file is
derived from them and can always be rebuilt. Updates are crash-safe: data files carry a
version number, an update writes version v+1 beside version v, then atomically replaces
``manifest.json`` (the commit point), then deletes the files no manifest names. A crash at
any moment leaves either version v or version v+1 in force, never a mix.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from dva._io import atomic_write, atomic_write_json, read_jsonl
from dva.errors import DataError, WriteError
from dva.index.faiss_index import IndexSpec, apply_search_params

FORMAT = "dva-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LOCK = ".lock"
DATA_FILES = ("embeddings", "metadata", "faiss")
_SUFFIXES = {"embeddings": "npy", "metadata": "jsonl", "faiss": "index"}


def data_file_name(kind: str, version: int) -> str:
    return f"{kind}-{version:06d}.{_SUFFIXES[kind]}"


def is_index_dir(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


@dataclass
class GalleryIndex:
    """An index directory loaded into memory: embeddings, one metadata row per image, FAISS."""

    path: Path
    manifest: dict[str, Any]
    #: ``(N, D)`` float32, memory-mapped: only ``dva index --check`` and rebuilds read it all.
    embeddings: np.ndarray
    rows: list[dict[str, Any]]
    faiss_index: faiss.Index

    @classmethod
    def load(cls, path: str | Path) -> GalleryIndex:
        path = Path(path)
        manifest = read_manifest(path)
        files = manifest["files"]
        for kind in DATA_FILES:
            if not (path / files[kind]).is_file():
                raise DataError(f"{path / files[kind]}: missing (named by {path / MANIFEST})")
        embeddings = np.load(path / files["embeddings"], mmap_mode="r")
        rows = [row for _, row in read_jsonl(path / files["metadata"])]
        faiss_index = faiss.read_index(str(path / files["faiss"]))
        spec = IndexSpec.from_dict(manifest["index"])
        apply_search_params(faiss_index, spec)
        counts = {"manifest": manifest["count"], "embeddings": len(embeddings), "metadata": len(rows),
                  "faiss": faiss_index.ntotal}
        if len(set(counts.values())) != 1:
            raise DataError(f"{path}: the index files disagree on the number of images ({counts})")
        return cls(path, manifest, embeddings, rows, faiss_index)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def version(self) -> int:
        return int(self.manifest["version"])

    @property
    def spec(self) -> IndexSpec:
        return IndexSpec.from_dict(self.manifest["index"])

    @property
    def embed_dim(self) -> int:
        return int(self.manifest["embed_dim"])

    @cached_property
    def ids_by_path(self) -> dict[str, int]:
        return {row["path"]: i for i, row in enumerate(self.rows)}


def read_manifest(path: Path) -> dict[str, Any]:
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        hint = "a folder without a manifest is not an index" if path.is_dir() else "no such folder"
        raise DataError(f"{manifest_path}: not found ({hint}; build one with `dva index`)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{manifest_path}: not valid JSON ({e})") from None
    if manifest.get("format") != FORMAT:
        raise DataError(f"{manifest_path}: not a dva index manifest (format {manifest.get('format')!r})")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise DataError(
            f"{manifest_path}: index format {manifest['format_version']} is newer than this dva reads "
            f"({FORMAT_VERSION}); upgrade dva"
        )
    return manifest


def write_version(
    path: Path,
    manifest: dict[str, Any],
    embeddings: np.ndarray,
    rows: Sequence[dict[str, Any]],
    faiss_index: faiss.Index,
) -> dict[str, Any]:
    """Write the data files of ``manifest["version"]``, then commit by replacing the manifest."""
    version = int(manifest["version"])
    files = {kind: data_file_name(kind, version) for kind in DATA_FILES}
    try:
        atomic_write(path / files["embeddings"], lambda tmp: _save_npy(tmp, embeddings))
        atomic_write(path / files["metadata"], lambda tmp: _save_jsonl(tmp, rows))
        atomic_write(path / files["faiss"], lambda tmp: _save_faiss(tmp, faiss_index))
    except BaseException:
        for name in files.values():  # a full disk: do not leave half of version v+1 behind
            (path / name).unlink(missing_ok=True)
        raise
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **manifest,
        "count": len(rows),
        "created": manifest.get("created", now),
        "updated": now,
        "files": files,
    }
    atomic_write_json(path / MANIFEST, manifest)
    remove_stale_files(path, keep=set(files.values()))
    return manifest


def remove_stale_files(path: Path, keep: set[str]) -> None:
    """Delete data files of older versions, and leftovers of a crashed update: its data files
    and the hidden temporary files of its atomic writes. Call it holding :func:`update_lock`."""
    for kind in DATA_FILES:
        for stale in path.glob(f"{kind}-*.{_SUFFIXES[kind]}"):
            if stale.name not in keep:
                stale.unlink(missing_ok=True)
    for temporary in path.glob(".*.tmp"):
        temporary.unlink(missing_ok=True)


@contextlib.contextmanager
def update_lock(path: Path) -> Iterator[None]:
    """Serialise writers of one index (two ``dva index`` runs would lose each other's images)."""
    try:
        f = open(path / LOCK, "a")
    except OSError as e:  # a read-only index folder
        raise WriteError(f"{path / LOCK}: cannot write ({e.strerror or e}); the index is unchanged") from e
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataError(f"{path}: another `dva index` is updating this index") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _save_npy(target: Path, array: np.ndarray) -> None:
    with open(target, "wb") as f:  # a file object: np.save would append ".npy" to a name
        np.save(f, np.ascontiguousarray(array, dtype=np.float32))


#: Characters ``str.splitlines`` splits at that ``json.dumps(ensure_ascii=False)`` left raw.
RAW_SEPARATORS = ("\u2028", "\u2029", "\x85")


def repair_metadata(path: Path, index: GalleryIndex) -> int:
    """Rewrite the metadata file of an index written by dva 0.1.0 if it holds raw line
    separators (older readers, and that version itself, cannot read it); return the rows fixed."""
    target = path / index.manifest["files"]["metadata"]
    text = target.read_text(encoding="utf-8")
    broken = sum(1 for line in text.split("\n") if any(c in line for c in RAW_SEPARATORS))
    if broken:
        with update_lock(path):
            atomic_write(target, lambda tmp: _save_jsonl(tmp, index.rows))
    return broken


def _save_faiss(target: Path, faiss_index: faiss.Index) -> None:
    try:
        faiss.write_index(faiss_index, str(target))
    except RuntimeError as e:  # FAISS reports a full disk as a C++ exception
        raise OSError(f"FAISS could not write the index: {str(e).strip().splitlines()[-1]}") from e


def _save_jsonl(target: Path, rows: Sequence[dict[str, Any]]) -> None:
    # ASCII only: no raw U+2028 & co. that a line splitter could break a row at (dva 0.1.0
    # read this file with str.splitlines, and still does), and no encoding error late in a run.
    with open(target, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=True) + "\n")

