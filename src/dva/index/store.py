"""The index directory: the contract between ``dva index``, ``dva search`` and ``dva serve``.

::

    INDEX_DIR/
      manifest.json          the commit point: version, count, model, index type and parameters,
                             measured recall, next free id, and the names of the files below
      config.json            RunConfig of the model that made the embeddings (a run's, or a
                             frozen backbone's): the directory loads like a run (dva.Run)
      model.safetensors      the run's trained weights (absent for a frozen backbone)
      metadata.sqlite        one row per image version: id, path, label, extra fields (JSON),
                             sha256/size/mtime of the file, where its vector is (shard, row),
                             and the versions that added and removed it; user fields also
                             one row per value in ``fields`` (name, text, num) for filters
      vectors-000001.npy     append-only shards: version V's shard holds the float32
      vectors-000004.npy     L2-normalised vectors of the images version V added (a
                             compaction's shard: every live vector, :mod:`dva.index.compact`)
      faiss-000004.index     approximate indexes only: a snapshot (FAISS ids = image ids)

**Updates in place, O(change).** Version v+1 writes only its own shard (the new vectors) and
its rows in SQLite; the other images' files are not touched. Image ids are stable: an id is
never reused, and never changes while the image is in the index. An exact (flat) index is
built from the shards when the index is opened, so it costs no write at all; an approximate
one keeps a FAISS snapshot taken at some version s, and opening the index adds the vectors
added since s and removes those removed since (:func:`dva.index.faiss_index.ids_to_positions`).
The snapshot is written again only when the tail grows past :data:`SNAPSHOT_SLACK` of the
index, so its cost is spread over many updates (and at once for HNSW after a removal: FAISS's
HNSW cannot delete).

**Crash safety.** The manifest stays the commit point. Rows carry the version that added
them and the one that removed them, so the SQLite file holds version v and v+1 side by side
until the manifest says which is in force; readers see the rows of the manifest's version
only. An update writes the v+1 shard (and snapshot) beside version v's files, commits its
rows to SQLite in one transaction, then atomically replaces ``manifest.json``, then deletes
what no manifest names. A crash at any moment leaves version v or v+1 in force, never a mix:
the next writer rolls back rows of versions above the manifest's and removes unnamed files.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from dva._io import atomic_write, atomic_write_json
from dva.errors import DataError, WriteError
from dva.index.faiss_index import IndexSpec, apply_search_params, build_index, ids_to_positions
from dva.index.filters import Filter, check_fields, field_values, filter_sql
from dva.index.legacy import SUFFIXES as LEGACY_SUFFIXES
from dva.index.legacy import read_legacy

FORMAT = "dva-index"
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
LOCK = ".lock"
METADATA_DB = "metadata.sqlite"
#: Re-snapshot an approximate index when the vectors it lacks or holds in excess exceed this
#: fraction of the index: opening then adds at most that many vectors to the snapshot.
SNAPSHOT_SLACK = 0.1
#: Compact the shards after an update when the vectors no row points at (removed or re-embedded
#: images) exceed this fraction of the vectors stored: the disk then holds at most twice the
#: live vectors, and a compaction (a rewrite of every live vector) is paid once per that much churn.
COMPACT_SLACK = 0.5
#: Filter answers a loaded index keeps (:meth:`GalleryIndex.select`).
SELECT_CACHE = 32

SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    key INTEGER PRIMARY KEY,      -- one version of one image's row
    id INTEGER NOT NULL,          -- the image's stable id, its FAISS id
    path TEXT NOT NULL,
    label TEXT,
    fields TEXT NOT NULL,         -- the gallery list's extra fields, a JSON object
    sha256 TEXT,                  -- of the file's bytes when indexed (NULL: converted from format 1)
    size INTEGER,
    mtime_ns INTEGER,
    shard INTEGER NOT NULL,       -- the vector is row `row` of shard file vectors-<shard>.npy
    row INTEGER NOT NULL,
    added INTEGER NOT NULL,       -- visible in versions added <= v < removed
    removed INTEGER
);
CREATE INDEX IF NOT EXISTS images_id ON images(id);
CREATE INDEX IF NOT EXISTS images_path ON images(path);
CREATE INDEX IF NOT EXISTS images_label ON images(label);
CREATE INDEX IF NOT EXISTS images_added ON images(added);
CREATE INDEX IF NOT EXISTS images_removed ON images(removed);
CREATE TABLE IF NOT EXISTS fields (
    key INTEGER NOT NULL,         -- images.key
    name TEXT NOT NULL,
    text TEXT,
    num REAL                      -- the value as a number, when it is or reads as one
);
CREATE INDEX IF NOT EXISTS fields_text ON fields(name, text);
CREATE INDEX IF NOT EXISTS fields_num ON fields(name, num);
CREATE INDEX IF NOT EXISTS fields_key ON fields(key);
"""
_COLUMNS = "key, id, path, label, fields, sha256, size, mtime_ns, shard, row"


def shard_name(version: int) -> str:
    return f"vectors-{version:06d}.npy"


def snapshot_name(version: int) -> str:
    return f"faiss-{version:06d}.index"


def visible(version: int, alias: str = "i") -> str:
    """SQL: the rows of ``version`` (an int, not user input: safe to format in)."""
    v = int(version)
    return f"{alias}.added <= {v} AND ({alias}.removed IS NULL OR {alias}.removed > {v})"


def is_index_dir(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


@dataclass
class NewRow:
    """A row an update inserts: a new image, a changed one (new id), or new fields (same id)."""

    id: int
    path: str
    label: str | None
    fields: dict[str, Any]
    sha256: str | None
    size: int | None
    mtime_ns: int | None
    shard: int
    row: int


@dataclass
class StoredImage(NewRow):
    """One image's row, as the writer sees it (:meth:`IndexDB.live`): a row plus its database key."""

    key: int


class IndexDB:
    """The metadata database of an index: versioned rows, filters as SQL, one connection.

    The connection is shared between threads (the web server's), under a lock.
    """

    def __init__(self, connection: sqlite3.Connection, where: str) -> None:
        self.connection = connection
        self.where = where
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: Path, *, create: bool = False) -> IndexDB:
        target = path / METADATA_DB
        if not create and not target.is_file():
            raise DataError(f"{target}: missing (named by {path / MANIFEST})")
        try:
            connection = sqlite3.connect(target, timeout=30, check_same_thread=False)
            if create:
                connection.executescript(SCHEMA)
        except sqlite3.Error as e:
            raise DataError(f"{target}: not a readable SQLite database ({e})") from None
        return cls(connection, str(target))

    @classmethod
    def in_memory(cls, where: str) -> IndexDB:
        connection = sqlite3.connect(":memory:", check_same_thread=False)
        connection.executescript(SCHEMA)
        return cls(connection, where)

    def close(self) -> None:
        self.connection.close()

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._lock:
            try:
                return self.connection.execute(sql, params).fetchall()
            except sqlite3.Error as e:
                raise DataError(f"{self.where}: {e}") from None

    # --- reading ---

    def visible_rows(self, version: int) -> list[tuple]:
        return self.query(f"SELECT {_COLUMNS} FROM images i WHERE {visible(version)} ORDER BY id")

    def live(self, version: int, paths: Iterable[str] | None = None) -> dict[str, StoredImage]:
        """The rows of ``version`` by path (what the writer compares a gallery with): all of
        them, or those of ``paths`` only, looked up by the path index (an update then costs
        what it touches, not the size of the index)."""
        if paths is None:
            return {row[2]: _stored(row) for row in self.visible_rows(version)}
        wanted, found = list(dict.fromkeys(paths)), {}
        for start in range(0, len(wanted), 500):  # SQLite's limit on parameters is 999 in old builds
            chunk = wanted[start : start + 500]
            sql = f"SELECT {_COLUMNS} FROM images i WHERE {visible(version)} AND path IN ({','.join('?' * len(chunk))})"
            found.update((row[2], _stored(row)) for row in self.query(sql, chunk))
        return found

    def field_names(self) -> list[str]:
        return [name for (name,) in self.query("SELECT DISTINCT name FROM fields ORDER BY name")]

    def has_field(self, name: str) -> bool:
        return bool(self.query("SELECT 1 FROM fields WHERE name = ? LIMIT 1", [name]))

    def select(self, filters: Sequence[Filter], version: int) -> np.ndarray:
        """Sorted ids of the images of ``version`` that every filter keeps."""
        self.check_fields(filters)
        parts = [filter_sql(f, visible(version)) for f in filters]
        sql = " INTERSECT ".join(part for part, _ in parts)
        params = [p for _, part_params in parts for p in part_params]
        ids = [i for (i,) in self.query(f"SELECT DISTINCT id FROM ({sql})", params)]
        return np.array(sorted(ids), dtype=np.int64)

    def check_fields(self, filters: Sequence[Filter]) -> None:
        """A filter on a field no image has is a mistake (a typo), not an empty answer: one line naming it."""
        check_fields(filters, self.has_field, self.field_names)

    def added_since(self, since: int, version: int) -> list[int]:
        """Ids of ``version``'s rows added after version ``since``: new images, re-embedded ones
        (new ids), and relabelled ones (:meth:`apply` retires the old row and adds one with the
        same id). Always complete: the rows a version shows are never purged."""
        sql = f"SELECT id FROM images i WHERE {visible(version)} AND i.added > {int(since)} ORDER BY id"
        return [int(i) for (i,) in self.query(sql)]

    def gone_since(self, since: int, version: int) -> list[int]:
        """Ids of rows retired after version ``since`` that ``version`` no longer shows: removed
        images, and the old ids of re-embedded ones. Complete only while every row retired
        after ``since`` is still here (:meth:`purge`): :func:`diffable_since` says from when."""
        s, v = int(since), int(version)
        sql = (
            f"SELECT DISTINCT id FROM images i WHERE i.removed > {s} AND i.removed <= {v} "
            f"AND id NOT IN (SELECT id FROM images j WHERE {visible(v, 'j')})"
        )
        return sorted(int(i) for (i,) in self.query(sql))

    def max_version(self) -> int:
        ((added, removed),) = self.query("SELECT max(added), max(removed) FROM images")
        return max(added or 0, removed or 0)

    # --- writing (holding :func:`update_lock`) ---

    def rollback_to(self, version: int) -> None:
        """Undo the rows of versions above ``version`` that a crashed update committed."""
        if self.max_version() <= version:
            return  # nothing to undo: do not touch the file
        with self._lock, self.connection:
            self.connection.execute(
                f"DELETE FROM fields WHERE key IN (SELECT key FROM images WHERE added > {int(version)})"
            )
            self.connection.execute(f"DELETE FROM images WHERE added > {int(version)}")
            self.connection.execute(f"UPDATE images SET removed = NULL WHERE removed > {int(version)}")

    def apply(self, version: int, rows: Iterable[NewRow], removed_keys: Iterable[int]) -> None:
        """Add ``rows`` and retire ``removed_keys`` as of ``version``, in one transaction."""
        with self._lock, self.connection:
            cursor = self.connection.cursor()
            cursor.executemany(
                f"UPDATE images SET removed = {int(version)} WHERE key = ?", [(int(k),) for k in removed_keys]
            )
            for row in rows:
                cursor.execute(
                    "INSERT INTO images (id, path, label, fields, sha256, size, mtime_ns, shard, row, added)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        row.id,
                        row.path,
                        row.label,
                        json.dumps(row.fields, ensure_ascii=False),
                        row.sha256,
                        row.size,
                        row.mtime_ns,
                        row.shard,
                        row.row,
                        int(version),
                    ),
                )
                key = cursor.lastrowid
                cursor.executemany(
                    "INSERT INTO fields (key, name, text, num) VALUES (?, ?, ?, ?)",
                    [(key, name, text, num) for name, value in row.fields.items() for text, num in field_values(value)],
                )

    def purge(self, before: int) -> None:
        """Delete rows retired at or before ``before``: no reader of a version >= it sees them."""
        if not self.query(f"SELECT 1 FROM images WHERE removed <= {int(before)} LIMIT 1"):
            return
        with self._lock, self.connection:
            self.connection.execute(
                f"DELETE FROM fields WHERE key IN (SELECT key FROM images WHERE removed <= {int(before)})"
            )
            self.connection.execute(f"DELETE FROM images WHERE removed <= {int(before)}")

    def snapshot_stats(self, version: int, snapshot: dict[str, Any]) -> tuple[int, int]:
        """``(live vectors of version in the snapshot, live vectors not in it)`` (:func:`in_snapshot`)."""
        inside = in_snapshot_sql(snapshot)
        ((inside_count, outside_count),) = self.query(
            f"SELECT coalesce(sum({inside}), 0), coalesce(sum(NOT ({inside})), 0) "
            f"FROM images i WHERE {visible(version)}"
        )
        return int(inside_count), int(outside_count)


def diffable_since(version: int) -> int:
    """The oldest version ``since`` for which :meth:`IndexDB.gone_since` is complete at ``version``.

    :meth:`IndexDB.purge` deletes the rows retired at or before its bound, and committing
    version v purges with a bound of at most v - 1 (:func:`commit_version` refuses more): the
    rows retired by versions after v - 1 are all kept. Older versions' may be gone.
    """
    return int(version) - 1


def index_identity(manifest: dict[str, Any]) -> str | None:
    """The random id an index gets when it is created (``manifest["uuid"]``), None for an index
    made before dva recorded one (it gets one at its next update). A copy of the folder keeps it."""
    value = manifest.get("uuid")
    return value if isinstance(value, str) and value else None


def in_snapshot(snapshot: dict[str, Any], shard: int, row: int) -> bool:
    """Whether the vector at ``(shard, row)`` is in the snapshot ``manifest["snapshot"]`` taken at
    version s. An id's vector sits in the shard of the version that embedded it, so shard <= s
    means "in it"; a compaction after s moved the vectors into one shard C, the snapshot's first
    (``snapshot["compacted"] = {"shard": C, "rows": R}``: rows below R of shard C are in it)."""
    compacted = snapshot.get("compacted")
    if compacted is not None and shard == int(compacted["shard"]):
        return row < int(compacted["rows"])
    return shard <= int(snapshot["version"])


def in_snapshot_sql(snapshot: dict[str, Any]) -> str:
    """:func:`in_snapshot` as SQL on the images table (ints only, not user input: safe to format in)."""
    inside = f"shard <= {int(snapshot['version'])}"
    compacted = snapshot.get("compacted")
    if compacted is None:
        return f"({inside})"
    c, r = int(compacted["shard"]), int(compacted["rows"])
    return f"((shard = {c} AND row < {r}) OR (shard != {c} AND {inside}))"


def _stored(row: tuple) -> StoredImage:
    key, id_, path, label, fields, sha, size, mtime, shard, r = row
    return StoredImage(id_, path, label, json.loads(fields), sha, size, mtime, shard, r, key=key)


@dataclass
class GalleryIndex:
    """An index directory loaded into memory, in *positions*: the images of the manifest's
    version sorted by id; ``ids[p]`` is the stable id of position ``p``.

    ``embeddings``, ``rows`` and the FAISS index's labels are positions, so code written when
    ids were row numbers keeps working (they still are, until an image is removed); :class:`Match`
    and the HTTP API carry ids.
    """

    path: Path
    manifest: dict[str, Any]
    #: ``(N, D)`` float32 L2-normalised vectors, position order.
    embeddings: np.ndarray
    rows: list[dict[str, Any]]
    faiss_index: faiss.Index
    ids: np.ndarray
    db: IndexDB
    #: The format the folder holds: 1 is searched as it is and converted by the next writer.
    format_version: int = FORMAT_VERSION
    _position_of: dict[int, int] = field(default_factory=dict, repr=False)
    _selected: dict[tuple[Filter, ...], np.ndarray] = field(default_factory=dict, repr=False)
    _selectors: dict[int, tuple[np.ndarray, faiss.IDSelector]] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, path: str | Path) -> GalleryIndex:
        path = Path(path)
        manifest = read_manifest(path)
        if manifest.get("format_version", 1) < 2:
            return cls._load_legacy(path, manifest)
        db = IndexDB.open(path)
        version = int(manifest["version"])
        stored = db.visible_rows(version)
        if len(stored) != manifest["count"]:
            raise DataError(
                f"{path}: {METADATA_DB} holds {len(stored)} images of version {version}, "
                f"the manifest says {manifest['count']}"
            )
        ids = np.array([row[1] for row in stored], dtype=np.int64)
        rows = [{"path": row[2], "label": row[3], **json.loads(row[4])} for row in stored]
        embeddings = gather_vectors(
            path, manifest, np.array([r[8] for r in stored], np.int64), np.array([r[9] for r in stored], np.int64)
        )
        spec = IndexSpec.from_dict(manifest["index"])
        snapshot = manifest["files"].get("faiss")
        if snapshot is None:
            faiss_index = build_index(spec, embeddings)
        else:
            if not (path / snapshot).is_file():
                raise DataError(f"{path / snapshot}: missing (named by {path / MANIFEST})")
            faiss_index = ids_to_positions(faiss.read_index(str(path / snapshot)), ids, embeddings, spec)
        apply_search_params(faiss_index, spec)
        return cls(path, manifest, embeddings, rows, faiss_index, ids, db)

    @classmethod
    def _load_legacy(cls, path: Path, manifest: dict[str, Any]) -> GalleryIndex:
        embeddings, rows, faiss_index = read_legacy(path, manifest)
        apply_search_params(faiss_index, IndexSpec.from_dict(manifest["index"]))
        db = IndexDB.in_memory(str(path / manifest["files"]["metadata"]))
        db.apply(
            0,
            (
                NewRow(i, row["path"], row.get("label"), _extra(row), None, None, None, 0, i)
                for i, row in enumerate(rows)
            ),
            (),
        )
        return cls(
            path,
            manifest,
            embeddings,
            rows,
            faiss_index,
            np.arange(len(rows), dtype=np.int64),
            db,
            format_version=int(manifest.get("format_version", 1)),
        )

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
        return {row["path"]: int(i) for i, row in zip(self.ids, self.rows, strict=True)}

    @cached_property
    def folders(self) -> frozenset[str]:
        """The folders this version's images are in: ``GET /images`` serves files from these only."""
        return frozenset(str(Path(row["path"]).parent) for row in self.rows)

    def position(self, image_id: int) -> int:
        """The position of image ``image_id``; ``KeyError`` when no such image is in the index."""
        if not self._position_of:
            self._position_of.update((int(i), p) for p, i in enumerate(self.ids))
        return self._position_of[int(image_id)]

    @staticmethod
    def check_filters(path: str | Path, filters: Sequence[Filter]) -> None:
        """Check that ``filters`` name fields of the index at ``path``, without loading it."""
        path = Path(path)
        manifest = read_manifest(path)
        if manifest.get("format_version", 1) < FORMAT_VERSION:
            GalleryIndex.load(path).db.check_fields(filters)
            return
        db = IndexDB.open(path)
        try:
            db.check_fields(filters)
        finally:
            db.close()

    def select(self, filters: Sequence[Filter]) -> np.ndarray:
        """Sorted positions of the images every filter keeps (all of them without filters).

        The last :data:`SELECT_CACHE` answers are kept: a loaded index is one version, so a
        filter's answer cannot change, and a server sees the same filters again and again.
        """
        if not filters:
            return np.arange(len(self), dtype=np.int64)
        key = tuple(filters)
        cached = self._selected.get(key)
        if cached is None:
            cached = self._select(filters)
            cached.flags.writeable = False
            with self.db._lock:
                self._selected[key] = cached
                while len(self._selected) > SELECT_CACHE:
                    self._selected.pop(next(iter(self._selected)))
        return cached

    def selector(self, positions: np.ndarray) -> faiss.IDSelector:
        """A FAISS selector of ``positions`` (an answer of :meth:`select`), built once per answer:
        a hash set of a large subset costs milliseconds, more than a flat search of it."""
        key = id(positions)
        with self.db._lock:
            cached = self._selectors.get(key)
            if cached is not None and cached[0] is positions:
                return cached[1]
        selector = faiss.IDSelectorBatch(positions)
        with self.db._lock:
            self._selectors[key] = (positions, selector)
            while len(self._selectors) > SELECT_CACHE:
                self._selectors.pop(next(iter(self._selectors)))
        return selector

    def _select(self, filters: Sequence[Filter]) -> np.ndarray:
        ids = self.db.select(filters, self.version)
        positions = np.searchsorted(self.ids, ids)
        return (
            positions[(positions < len(self.ids)) & (self.ids[np.minimum(positions, len(self.ids) - 1)] == ids)]
            if len(self.ids)
            else np.zeros(0, np.int64)
        )


def _extra(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in ("path", "label")}


def gather_vectors(path: Path, manifest: dict[str, Any], shards: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The vectors at ``(shard, row)`` pairs, in that order, read from the memory-mapped shards."""
    dim = int(manifest["embed_dim"])
    out = np.empty((len(shards), dim), dtype=np.float32)
    for version in np.unique(shards).tolist():
        name = shard_name(version)
        if name not in manifest["files"]["shards"] or not (path / name).is_file():
            raise DataError(f"{path / name}: missing (named by {METADATA_DB})")
        shard = np.load(path / name, mmap_mode="r")
        mask = shards == version
        wanted = rows[mask]
        if len(wanted) and (wanted.max() >= len(shard) or shard.shape[1:] != (dim,)):
            raise DataError(
                f"{path / name}: holds {shard.shape} vectors, {METADATA_DB} needs row {wanted.max()} of {dim}"
            )
        out[mask] = shard[wanted]
    return out


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


def commit_version(
    path: Path,
    manifest: dict[str, Any],
    db: IndexDB,
    *,
    vectors: np.ndarray,
    rows: Sequence[NewRow],
    removed_keys: Sequence[int],
    snapshot: faiss.Index | None,
    keep_snapshot: bool,
    replace_shards: bool = False,
    purge_before: int | None = None,
) -> dict[str, Any]:
    """Write version ``manifest["version"]``: its shard, snapshot and rows, then commit.

    ``manifest`` is the new one (version v+1 and its ``count``; ``files`` still version v's,
    if any); ``vectors`` are the new
    shard's (rows of ``rows`` point into it); ``snapshot`` a new FAISS snapshot, or None to keep
    the current one (``keep_snapshot``) or to have none (an exact index). ``replace_shards``
    (a compaction): the new shard is the only one the new version names, and the others are
    deleted once it is committed, like any file no manifest names. Rows retired at or before
    ``purge_before`` (default v, the version before this one) are deleted after the commit: a
    reader of version r still filters correctly while rows retired after r are kept.
    """
    version = int(manifest["version"])
    purge_before = version - 1 if purge_before is None else purge_before
    if purge_before > diffable_since(version):  # pushes rely on the rows retired since then (diffable_since)
        raise ValueError(f"purge_before={purge_before}: rows retired by version {version} must be kept")
    previous = manifest.get("files") or {"shards": [], "faiss": None}
    written: list[Path] = []
    try:
        shards = [] if replace_shards else list(previous["shards"])
        if len(vectors):
            written.append(atomic_write(path / shard_name(version), lambda tmp: _save_npy(tmp, vectors)))
            shards.append(shard_name(version))
        faiss_file = previous["faiss"] if keep_snapshot else None
        if snapshot is not None:
            written.append(atomic_write(path / snapshot_name(version), lambda tmp: _save_faiss(tmp, snapshot)))
            faiss_file = snapshot_name(version)
        db.apply(version, rows, removed_keys)
        now = datetime.now(UTC).isoformat(timespec="seconds")
        manifest = {
            **manifest,
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created": manifest.get("created", now),
            "updated": now,
            "files": {"metadata": METADATA_DB, "shards": shards, "faiss": faiss_file},
        }
        atomic_write_json(path / MANIFEST, manifest)  # the commit point
    except BaseException:
        for written_file in written:  # a full disk or a crash: leave no half of version v+1 behind
            written_file.unlink(missing_ok=True)
        with contextlib.suppress(Exception):
            db.rollback_to(version - 1)
        raise
    remove_stale_files(path, keep=set(manifest["files"]["shards"]) | {faiss_file})
    db.purge(before=purge_before)
    return manifest


def count_visible(db: IndexDB, version: int) -> int:
    ((count,),) = db.query(f"SELECT count(*) FROM images i WHERE {visible(version)}")
    return int(count)


def shard_rows(path: Path, manifest: dict[str, Any]) -> int:
    """How many vectors the manifest's shards hold, live or not (read from the .npy headers)."""
    total = 0
    for name in manifest["files"]["shards"]:
        try:
            total += len(np.load(path / name, mmap_mode="r"))
        except (OSError, ValueError) as e:
            raise DataError(f"{path / name}: not a readable shard ({e})") from None
    return total


def shard_bytes(path: Path, manifest: dict[str, Any]) -> int:
    """Disk bytes of the manifest's shards."""
    return sum((path / name).stat().st_size for name in manifest["files"]["shards"] if (path / name).is_file())


def remove_stale_files(path: Path, keep: set[str | None]) -> None:
    """Delete data files no manifest names: older versions', format 1's after a conversion,
    and leftovers of a crashed update (its files, the hidden temporaries of its atomic writes).
    Call it holding :func:`update_lock`."""
    patterns = ["vectors-*.npy", "faiss-*.index", *(f"{kind}-*.{suffix}" for kind, suffix in LEGACY_SUFFIXES.items())]
    for pattern in patterns:
        for stale in path.glob(pattern):
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


def _save_faiss(target: Path, faiss_index: faiss.Index) -> None:
    try:
        faiss.write_index(faiss_index, str(target))
    except RuntimeError as e:  # FAISS reports a full disk as a C++ exception
        raise OSError(f"FAISS could not write the index: {str(e).strip().splitlines()[-1]}") from e
