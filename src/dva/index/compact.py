"""Shard compaction: give back the disk space of removed and re-embedded images.

Shards are append-only (:mod:`dva.index.store`): the vector of a removed or re-embedded image
stays in the shard of the version that embedded it, and no row points at it any more. A
compaction is one more version, v+1, written like an update that re-embeds every image with
its own vector: one new shard holding the live vectors (read from their shards; no image is
embedded again and no image file is read), rows for v+1 with the same ids, paths, labels,
fields and file hashes pointing into it, retiring version v's rows in the same SQLite
transaction, then the manifest, which names the new shard only. The old shards are then
named by no manifest and deleted, like every stale file.

Readers are not disturbed: a :class:`dva.index.Searcher` holds version v's vectors in memory
and its rows stay in SQLite until the update after, as for any update; ``refresh()`` moves it
to v+1. Search results do not change: same ids, same vectors, and an approximate index keeps
its FAISS snapshot (its labels are ids, not places in shards); ``manifest["snapshot"]``
records which rows of the new shard the snapshot holds (:func:`dva.index.store.in_snapshot`).
A kill at any step leaves version v or v+1 in force, as for an update.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dva.errors import DataError
from dva.index.store import (
    COMPACT_SLACK,
    FORMAT_VERSION,
    IndexDB,
    NewRow,
    StoredImage,
    commit_version,
    gather_vectors,
    in_snapshot,
    read_manifest,
    remove_stale_files,
    shard_bytes,
    shard_rows,
    update_lock,
)


@dataclass
class CompactReport:
    """What one compaction did (``compacted`` False: nothing to reclaim, no new version)."""

    path: str
    version: int
    count: int
    compacted: bool
    #: Vectors the shards held before, live or not, and after (the live ones).
    vectors_before: int
    vectors_after: int
    bytes_before: int
    bytes_after: int

    @property
    def reclaimed_bytes(self) -> int:
        return self.bytes_before - self.bytes_after

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "reclaimed_bytes": self.reclaimed_bytes}


def compact_index(path: str | Path) -> CompactReport:
    """Rewrite the shards of the index at ``path`` to hold the live vectors only, as version
    v+1 (a no-op when every stored vector is live), under the update lock."""
    path = Path(path)
    manifest = read_manifest(path)
    with update_lock(path):
        manifest = read_manifest(path)  # what is in force now that no writer runs
        if manifest.get("format_version", 1) < FORMAT_VERSION:
            from dva.index.build import migrate_legacy  # build imports this module: import it on use

            manifest = migrate_legacy(path, manifest)  # the conversion writes the live vectors only
        db = IndexDB.open(path)
        try:
            version = int(manifest["version"])
            db.rollback_to(version)  # rows of a killed update or compaction
            remove_stale_files(path, keep={*manifest["files"]["shards"], manifest["files"]["faiss"]})
            return compact_version(path, manifest, db)
        finally:
            db.close()


def dead_fraction(path: Path, manifest: dict[str, Any]) -> float:
    """The fraction of the stored vectors that no row of the manifest's version points at."""
    stored = shard_rows(path, manifest)
    return (stored - int(manifest["count"])) / stored if stored else 0.0


def needs_compaction(path: Path, manifest: dict[str, Any]) -> bool:
    """Whether an update should compact after committing: dead vectors over :data:`COMPACT_SLACK`."""
    return dead_fraction(path, manifest) > COMPACT_SLACK


def compact_version(
    path: Path, manifest: dict[str, Any], db: IndexDB, *, readers_of: int | None = None
) -> CompactReport:
    """Commit version v+1 = version v with its live vectors in one new shard (holding
    :func:`update_lock`; version v is in force and clean). The rows readers of version
    ``readers_of`` (default v) filter with are kept: an update that compacts right after its
    commit passes the version before its own, so a reader one update behind is not broken."""
    version, count = int(manifest["version"]), int(manifest["count"])
    stored, size = shard_rows(path, manifest), shard_bytes(path, manifest)
    live = sorted(db.live(version).values(), key=lambda image: image.id)
    if len(live) != count:
        raise DataError(f"{path}: SQLite holds {len(live)} images of version {version}, the manifest says {count}")
    if stored == count:
        return CompactReport(str(path), version, count, False, stored, stored, size, size)
    snapshot = manifest.get("snapshot")
    if snapshot is not None:  # the snapshot's vectors first: one boundary tells them from the rest
        live.sort(key=lambda image: not in_snapshot(snapshot, image.shard, image.row))
        inside = sum(1 for image in live if in_snapshot(snapshot, image.shard, image.row))
        snapshot = {**snapshot, "compacted": {"shard": version + 1, "rows": inside}}
    vectors = gather_vectors(
        path,
        manifest,
        np.array([image.shard for image in live], np.int64),
        np.array([image.row for image in live], np.int64),
    )
    new_manifest = {**manifest, "version": version + 1, **({"snapshot": snapshot} if snapshot is not None else {})}
    committed = commit_version(
        path,
        new_manifest,
        db,
        vectors=vectors,
        rows=[_moved(image, version + 1, row) for row, image in enumerate(live)],
        removed_keys=[image.key for image in live],
        snapshot=None,
        keep_snapshot=True,
        replace_shards=True,
        purge_before=version if readers_of is None else readers_of,
    )
    return CompactReport(str(path), version + 1, count, True, stored, count, size, shard_bytes(path, committed))


def _moved(image: StoredImage, shard: int, row: int) -> NewRow:
    """The row of ``image`` with its vector at ``(shard, row)``: everything else is kept."""
    return NewRow(image.id, image.path, image.label, image.fields, image.sha256, image.size, image.mtime_ns, shard, row)
