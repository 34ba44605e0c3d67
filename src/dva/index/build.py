"""``dva index``: embed a gallery and write (or update) an index directory.

Building is incremental: an image whose path is in the index and whose file is unchanged
(same size and mtime, or else the same sha256 of its bytes) is skipped; a new image is
embedded and appended (a new id; ids of the others never change); a file whose content
changed is embedded again and gets a new id; a changed label or list field only updates the
metadata (same id). ``remove`` and ``remove_missing`` delete images. Only what changed is
written (:mod:`dva.index.store`); when over :data:`dva.index.store.COMPACT_SLACK` of the
stored vectors are dead, the update then compacts the shards (:mod:`dva.index.compact`).
Unreadable images are skipped and reported, never fatal, unless nothing at all could be read.
The embedding step can also be split over processes (:mod:`dva.index.shards`). An index of
format 1 is converted by the first update.

``duplicates="skip"`` or ``"tag"`` checks each new image against the index and the earlier
new images of the same run (exact cosine on the normalised embeddings): a near-duplicate is
left out and reported, or added with the field ``duplicate_of`` (the id it duplicates).
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from dva import __version__
from dva._io import partial_dir
from dva.data.loaders import ImageDataset
from dva.distributed import shard_bounds
from dva.errors import ConfigError, DataError
from dva.evaluate.embed import Embeddings, embed_dataset, embedding_transform
from dva.index.calibrate import check_threshold
from dva.index.compact import compact_version, needs_compaction
from dva.index.faiss_index import DEFAULT_APPROX_THRESHOLD, IndexSpec, build_index, plan_index, recall_vs_exact
from dva.index.gallery import GalleryItem, split_storable
from dva.index.legacy import read_legacy
from dva.index.model import IndexModel
from dva.index.store import (
    FORMAT_VERSION,
    METADATA_DB,
    SNAPSHOT_SLACK,
    IndexDB,
    NewRow,
    StoredImage,
    commit_version,
    gather_vectors,
    in_snapshot,
    index_identity,
    is_index_dir,
    read_manifest,
    remove_stale_files,
    update_lock,
)

#: Recall of approximate indexes is measured at build time for the manifest, like ``--check``.
RECALL_K = 10

#: What ``duplicates=`` may ask for: leave near-duplicates out, or add them tagged.
DUPLICATE_MODES = ("skip", "tag")
#: The metadata field a tagged duplicate gets: the id of the image it duplicates.
DUPLICATE_FIELD = "duplicate_of"
DEFAULT_DUPLICATE_THRESHOLD = 0.95

#: The embedding step: ``(model, images to add) -> (embeddings, seconds)``.
Embedder = Callable[[IndexModel, Sequence[GalleryItem]], tuple[Embeddings, float]]


@dataclass
class IndexReport:
    """What one ``dva index`` did."""

    path: str
    version: int
    count: int
    added: int
    already_indexed: int
    #: Images embedded again (content changed) or whose label or fields changed.
    updated: int = 0
    removed: int = 0
    #: ``(path, reason)`` of every image that could not be read; they are not in the index.
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    #: ``(path, path of the image it duplicates)`` of every new near-duplicate found
    #: (``duplicates="skip"``: not added; ``"tag"``: added with ``duplicate_of``).
    duplicates: list[tuple[str, str]] = field(default_factory=list)
    #: Near-duplicates left out (``duplicates="skip"``).
    skipped_duplicates: int = 0
    index: dict[str, Any] = field(default_factory=dict)
    embed_seconds: float = 0.0
    total_seconds: float = 0.0
    #: Shard bytes given back by the compaction this update ran (:data:`COMPACT_SLACK`), else 0.
    reclaimed_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def index_gallery(
    out: str | Path,
    items: Sequence[GalleryItem],
    *,
    model: IndexModel | None = None,
    index_type: str | None = None,
    approx_threshold: int | None = None,
    batch_size: int = 64,
    num_workers: int = 2,
    device: str = "auto",
    precision: str = "auto",
    progress: bool = True,
    remove: Sequence[str | os.PathLike[str]] = (),
    remove_missing: bool = False,
    duplicates: str | None = None,
    duplicate_threshold: float = DEFAULT_DUPLICATE_THRESHOLD,
) -> IndexReport:
    """Create the index ``out`` from ``items``, or update the index already there with them.

    ``remove`` deletes these paths from the index (each must be in it, else nothing changes);
    ``remove_missing`` deletes every indexed image whose file is gone.

    ``duplicates="skip"`` leaves out a new image whose cosine with an image of the index, or
    with an earlier new image, is at least ``duplicate_threshold`` (listed in the report's
    ``duplicates``); ``"tag"`` adds it with the field ``duplicate_of`` = that image's id.

    ``model`` is required for a new index; for an existing one the index's own model is used,
    and a different ``model`` is refused (its embeddings would not be comparable).
    ``index_type`` (auto, flat, hnsw, ivf) and ``approx_threshold`` default to the index's
    recorded settings, else to auto and :data:`DEFAULT_APPROX_THRESHOLD`.
    """
    embed = dict(batch_size=batch_size, num_workers=num_workers, device=device, precision=precision, progress=progress)
    return build_index_dir(
        out,
        items,
        model=model,
        index_type=index_type,
        approx_threshold=approx_threshold,
        embedder=lambda own, todo: embed_items(own, todo, **embed),
        remove=remove,
        remove_missing=remove_missing,
        duplicates=duplicates,
        duplicate_threshold=duplicate_threshold,
    )


def check_duplicate_options(mode: str | None, threshold: float) -> float:
    """The threshold, checked, or a one-line error naming the option."""
    if mode is not None and mode not in DUPLICATE_MODES:
        raise ConfigError(f"duplicates: choose from {', '.join(DUPLICATE_MODES)} (or none), got {mode!r}")
    return check_threshold(threshold, "duplicate threshold")


def build_index_dir(
    out: str | Path,
    items: Sequence[GalleryItem],
    *,
    model: IndexModel | None,
    index_type: str | None,
    approx_threshold: int | None,
    embedder: Embedder,
    remove: Sequence[str | os.PathLike[str]] = (),
    remove_missing: bool = False,
    duplicates: str | None = None,
    duplicate_threshold: float = DEFAULT_DUPLICATE_THRESHOLD,
) -> IndexReport:
    """:func:`index_gallery` with the embedding step given (the merge of sharded embeddings gives its own)."""
    out = Path(out)
    dedup = None
    if duplicates is not None:
        dedup = (duplicates, check_duplicate_options(duplicates, duplicate_threshold))
    items, skipped = split_storable(items)
    if is_index_dir(out):
        with update_lock(out):
            report = _update(out, items, model, index_type, approx_threshold, embedder, remove, remove_missing, dedup)
    else:
        if remove or remove_missing:
            raise ConfigError(f"{out}: not an index (no manifest.json); there is nothing to remove")
        _check_new_index(out, model)
        report = _create(
            out,
            items,
            model,
            index_type or "auto",
            approx_threshold or DEFAULT_APPROX_THRESHOLD,
            embedder,
            skipped,
            dedup,
        )
    report.unreadable = skipped + report.unreadable
    return report


def pending_items(
    out: str | Path, items: Sequence[GalleryItem], model: IndexModel | None
) -> tuple[list[GalleryItem], IndexModel]:
    """The images an index run would embed into ``out`` (new or changed), and the model that embeds them."""
    out = Path(out)
    items, _ = split_storable(items)  # as build_index_dir does: shard positions must agree
    if is_index_dir(out):
        manifest = read_manifest(out)
        plan = plan_update(items, live_images(out, manifest, [str(item.path) for item in items]))
        return plan.todo, _own_model(out, manifest, model)
    _check_new_index(out, model)
    return list(items), model


@dataclass
class UpdatePlan:
    """What an update does to each image of the gallery, decided before anything is embedded."""

    new: list[GalleryItem] = field(default_factory=list)
    #: ``(item, its current row)`` of files whose content changed: embedded again, new id.
    changed: list[tuple[GalleryItem, StoredImage]] = field(default_factory=list)
    #: ``(item, its current row)`` of unchanged files whose label or fields changed: same id and vector.
    relabelled: list[tuple[GalleryItem, StoredImage]] = field(default_factory=list)
    unchanged: int = 0

    @property
    def todo(self) -> list[GalleryItem]:
        """The images to embed, in this order (sharded embedding relies on it)."""
        return self.new + [item for item, _ in self.changed]


def plan_update(items: Sequence[GalleryItem], live: dict[str, StoredImage], skip: set[str] = frozenset()) -> UpdatePlan:
    """Compare the gallery with the index: the file's size and mtime first, its sha256 when
    they differ (a touched but identical file is not embedded again)."""
    plan = UpdatePlan()
    for item in items:
        path = str(item.path)
        if path in skip:
            continue
        old = live.get(path)
        if old is None:
            plan.new.append(item)
            continue
        stat = _stat(item.path)
        if stat is not None and stat != (old.size, old.mtime_ns):
            digest = file_sha256(item.path)
            if digest is not None and digest != old.sha256:
                plan.changed.append((item, old))
                continue
        if item.label != old.label or item.metadata != _untagged(old.fields):
            plan.relabelled.append((item, old))
        else:
            plan.unchanged += 1
    return plan


def live_images(out: Path, manifest: dict[str, Any], paths: Sequence[str] | None = None) -> dict[str, StoredImage]:
    """The images of the index's current version, by path: all, or those of ``paths``
    (format 1 read as it is)."""
    if manifest.get("format_version", 1) < FORMAT_VERSION:
        _, rows, _ = read_legacy(out, manifest)
        # stat-ed as the conversion will, so a sharded run plans the same images before and after it
        return {
            row["path"]: StoredImage(
                i,
                row["path"],
                row.get("label"),
                _fields(row),
                None,
                *(_stat(Path(row["path"])) or (None, None)),
                0,
                i,
                key=i,
            )
            for i, row in enumerate(rows)
        }
    db = IndexDB.open(out)
    try:
        return db.live(int(manifest["version"]), paths)
    finally:
        db.close()


def _candidate_paths(items: Sequence[GalleryItem], remove: Sequence[str | os.PathLike[str]]) -> list[str]:
    """The indexed paths an update may touch: the gallery's, and each --remove as given or resolved."""
    paths = [str(item.path) for item in items]
    for given in remove:
        paths += [os.path.abspath(os.path.expanduser(given)), str(Path(given).expanduser().resolve())]
    return paths


def resolve_removals(out: Path, paths: Sequence[str | os.PathLike[str]], live: dict[str, StoredImage]) -> list[str]:
    """The indexed paths ``paths`` name (as given, made absolute, or resolved); one not indexed is an error."""
    found = []
    for given in paths:
        candidates = [os.path.abspath(os.path.expanduser(given)), str(Path(given).expanduser().resolve())]
        match = next((c for c in candidates if c in live), None)
        if match is None:
            raise DataError(f"--remove {given}: not in the index {out}; nothing was changed")
        found.append(match)
    return list(dict.fromkeys(found))  # the same image named twice is removed once


def _check_new_index(out: Path, model: IndexModel | None) -> None:
    if model is None:
        raise ConfigError(
            f"{out} is not an index yet: say which model embeds it (--run RUN_DIR or --frozen --backbone NAME)"
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out}: exists and is not a dva index (no manifest.json); choose a new or empty folder")


def _own_model(out: Path, manifest: dict[str, Any], model: IndexModel | None) -> IndexModel:
    """The index's recorded model; another ``model`` would give incomparable embeddings."""
    if model is not None and model.fingerprint() != manifest["model"]["fingerprint"]:
        raise ConfigError(
            f"{out} was built with {manifest['model']['source']}; {model.source} gives other embeddings. "
            "Add images without --run/--frozen (the index's own model is used) or build a new index"
        )
    return IndexModel.from_index(out)


def _create(
    out: Path,
    items: Sequence[GalleryItem],
    model: IndexModel,
    index_type: str,
    threshold: int,
    embedder: Embedder,
    skipped: Sequence[tuple[str, str]] = (),
    dedup: tuple[str, float] | None = None,
) -> IndexReport:
    start = time.perf_counter()
    plan_index(0, index_type=index_type, approx_threshold=threshold)  # validate options before embedding
    # Built beside the target and renamed into place: a crash leaves no half-written index,
    # and the folder a killed run left is removed here.
    with partial_dir(out) as partial:
        model.save(partial)
        embeddings, seconds = embedder(model, items)
        if not len(embeddings.vectors):
            failures = [reason for _, reason in skipped] + [reason for _, reason in embeddings.failures]
            first = failures[0] if failures else "the gallery is empty"
            raise DataError(f"no image of the gallery could be read (first: {first})")
        found: list[tuple[str, str]] = []
        tags: dict[int, int] = {}
        if dedup is not None:
            embeddings, found, tags = _apply_duplicates(embeddings, items, len(items), [], [], None, 0, dedup)
        rows = [_tagged(_new_row(items[i], j, 1, j), tags.get(j)) for j, i in enumerate(embeddings.indices.tolist())]
        manifest = {
            "version": 1,
            "uuid": uuid.uuid4().hex,  # tells this index from others (a Qdrant collection's sync marker)
            "dva_version": __version__,
            "embed_dim": int(embeddings.vectors.shape[1]),
            "model": {**model.describe(), "fingerprint": model.fingerprint()},
            "settings": {"index_type": index_type, "approx_threshold": threshold},
            "count": len(rows),
            "next_id": len(rows),
        }
        db = IndexDB.open(partial, create=True)
        try:
            manifest = _commit(partial, manifest, db, embeddings.vectors, rows, [], set(), None)
        finally:
            db.close()
        try:
            if out.exists():
                out.rmdir()  # empty, checked above
            os.rename(partial, out)
        except OSError as e:
            raise ConfigError(
                f"{out}: could not move the new index into place ({e}); was it created meanwhile?"
            ) from None
    return IndexReport(
        str(out),
        1,
        len(rows),
        len(rows),
        0,
        unreadable=_unreadable(items, embeddings),
        **_duplicate_counts(found, dedup),
        index=manifest["index"],
        embed_seconds=seconds,
        total_seconds=time.perf_counter() - start,
    )


def _duplicate_counts(found: list[tuple[str, str]], dedup: tuple[str, float] | None) -> dict[str, Any]:
    """The report's duplicate fields: the pairs found, and how many were left out (``skip``)."""
    return {"duplicates": found, "skipped_duplicates": len(found) if dedup is not None and dedup[0] == "skip" else 0}


def _update(
    out: Path,
    items: Sequence[GalleryItem],
    model: IndexModel | None,
    index_type: str | None,
    threshold: int | None,
    embedder: Embedder,
    remove: Sequence[str | os.PathLike[str]],
    remove_missing: bool,
    dedup: tuple[str, float] | None = None,
) -> IndexReport:
    start = time.perf_counter()
    manifest = read_manifest(out)
    wanted = None if remove_missing else _candidate_paths(items, remove)
    live = live_images(out, manifest, wanted)
    removals = resolve_removals(out, remove, live)  # before anything is written: a typo changes nothing
    own = _own_model(out, manifest, model)
    settings = {
        "index_type": index_type or manifest["settings"]["index_type"],
        "approx_threshold": threshold or manifest["settings"]["approx_threshold"],
    }
    plan_index(0, index_type=settings["index_type"], approx_threshold=settings["approx_threshold"])
    if manifest.get("format_version", 1) < FORMAT_VERSION:
        manifest = migrate_legacy(out, manifest)
    db = IndexDB.open(out)
    try:
        version = int(manifest["version"])
        live = db.live(version, wanted)  # after a conversion: its rows (same paths and ids)
        db.rollback_to(version)  # rows of a killed update
        remove_stale_files(out, keep={*manifest["files"]["shards"], manifest["files"]["faiss"]})
        if remove_missing:
            removals += [path for path in live if path not in removals and not Path(path).is_file()]
        plan = plan_update(items, live, skip=set(removals))
        todo = plan.todo
        embeddings, seconds = embedder(own, todo)
        next_id = int(manifest["next_id"])
        found: list[tuple[str, str]] = []
        tags: dict[int, int] = {}
        if dedup is not None:
            leaving = {live[path].id for path in removals} | {
                plan.changed[i - len(plan.new)][1].id for i in embeddings.indices.tolist() if i >= len(plan.new)
            }
            kept = [r for r in db.visible_rows(version) if r[1] not in leaving]
            embeddings, found, tags = _apply_duplicates(
                embeddings,
                todo,
                len(plan.new),
                [r[1] for r in kept],
                [r[2] for r in kept],
                (out, manifest, kept),
                next_id,
                dedup,
            )
        rows, retired, dropped = [], [], set()
        for j, i in enumerate(embeddings.indices.tolist()):
            rows.append(_tagged(_new_row(todo[i], next_id, version + 1, j), tags.get(j)))
            next_id += 1
            if i >= len(plan.new):  # a changed file: its old id leaves
                old = plan.changed[i - len(plan.new)][1]
                retired.append(old)
                dropped.add(old.id)
        for item, old in plan.relabelled:
            rows.append(
                NewRow(
                    old.id,
                    old.path,
                    item.label,
                    {**item.metadata, **{k: v for k, v in old.fields.items() if k == DUPLICATE_FIELD}},
                    old.sha256,
                    old.size,
                    old.mtime_ns,
                    old.shard,
                    old.row,
                )
            )
            retired.append(old)
        for path in removals:
            retired.append(live[path])
            dropped.add(live[path].id)
        if not rows and not retired and settings == manifest["settings"]:
            return IndexReport(
                str(out),
                version,
                manifest["count"],
                0,
                plan.unchanged,
                unreadable=_unreadable(todo, embeddings),
                duplicates=found,
                skipped_duplicates=len(found) if dedup is not None and dedup[0] == "skip" else 0,
                index=manifest["index"],
                embed_seconds=seconds,
                total_seconds=time.perf_counter() - start,
            )
        added = sum(1 for i in embeddings.indices.tolist() if i < len(plan.new))
        new_manifest = {
            **manifest,
            "uuid": index_identity(manifest) or uuid.uuid4().hex,  # indexes made before it existed get one now
            "version": version + 1,
            "settings": settings,
            "next_id": next_id,
            "count": manifest["count"] - len(dropped) + len(embeddings.indices),
        }
        new_manifest = _commit(out, new_manifest, db, embeddings.vectors, rows, retired, dropped, manifest)
        reclaimed = 0
        if needs_compaction(out, new_manifest):  # much churn: the shards are mostly dead vectors
            compacted = compact_version(out, new_manifest, db, readers_of=version)
            new_manifest, reclaimed = read_manifest(out), compacted.reclaimed_bytes
    finally:
        db.close()
    return IndexReport(
        str(out),
        new_manifest["version"],
        new_manifest["count"],
        added,
        plan.unchanged,
        updated=len(embeddings.indices) - added + len(plan.relabelled),
        removed=len(removals),
        unreadable=_unreadable(todo, embeddings),
        **_duplicate_counts(found, dedup),
        index=new_manifest["index"],
        embed_seconds=seconds,
        total_seconds=time.perf_counter() - start,
        reclaimed_bytes=reclaimed,
    )


def _commit(
    path: Path,
    manifest: dict[str, Any],
    db: IndexDB,
    vectors: np.ndarray,
    rows: list[NewRow],
    retired: Sequence[StoredImage],
    dropped: set[int],
    previous: dict[str, Any] | None,
) -> dict[str, Any]:
    """Choose the FAISS index for the new size, decide whether its snapshot must be taken
    again, measure recall when it is, and commit the version."""
    settings = manifest["settings"]
    spec = plan_index(
        manifest["count"], index_type=settings["index_type"], approx_threshold=settings["approx_threshold"]
    )
    snapshot, keep = None, False
    index_info = {**spec.to_dict(), f"recall@{RECALL_K}": 1.0}
    if not spec.exact:
        keep = (
            previous is not None
            and previous["files"]["faiss"] is not None
            and IndexSpec.from_dict(previous["index"]) == spec
            and _snapshot_fresh(db, previous, spec, rows, retired, dropped, manifest["count"])
        )
        if keep:
            index_info = previous["index"]
        else:
            ids, vectors_all = _vectors_after(path, previous, db, vectors, rows, dropped, int(manifest["embed_dim"]))
            snapshot = build_index(spec, vectors_all, ids=ids)
            index_info[f"recall@{RECALL_K}"] = recall_vs_exact(snapshot, vectors_all, k=RECALL_K, ids=ids)
            manifest["snapshot"] = {"version": manifest["version"], "count": len(ids)}
    else:
        manifest.pop("snapshot", None)
    manifest = {**manifest, "index": index_info}
    vectors = np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1) if len(vectors) else vectors
    return commit_version(
        path,
        manifest,
        db,
        vectors=vectors,
        rows=rows,
        removed_keys=[r.key for r in retired],
        snapshot=snapshot,
        keep_snapshot=keep,
    )


def _snapshot_fresh(
    db: IndexDB,
    previous: dict[str, Any],
    spec: IndexSpec,
    rows: list[NewRow],
    retired: Sequence[StoredImage],
    dropped: set[int],
    count: int,
) -> bool:
    """Whether the current snapshot can serve the new version: what it lacks or holds in excess
    stays under :data:`SNAPSHOT_SLACK` of the index (HNSW: it holds nothing in excess)."""
    snapshot = previous["snapshot"]
    inside, outside = db.snapshot_stats(int(previous["version"]), snapshot)
    gone = [in_snapshot(snapshot, r.shard, r.row) for r in retired if r.id in dropped]
    inside -= sum(gone)
    outside -= len(gone) - sum(gone)
    outside += sum(1 for r in rows if r.shard == previous["version"] + 1)
    excess = int(previous["snapshot"]["count"]) - inside
    if spec.type == "hnsw" and excess:
        return False
    return outside + excess <= SNAPSHOT_SLACK * max(count, 1)


def _vectors_after(
    path: Path,
    previous: dict[str, Any] | None,
    db: IndexDB,
    vectors: np.ndarray,
    rows: list[NewRow],
    dropped: set[int],
    dim: int,
) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, vectors)`` of the new version, sorted by id: the kept images' from their shards,
    then the new ones (new ids are the largest)."""
    new_ids = np.array([r.id for r in rows if previous is None or r.shard == previous["version"] + 1], np.int64)
    new_vectors = np.asarray(vectors, np.float32).reshape(len(new_ids), dim)
    if previous is None:
        return new_ids, new_vectors
    kept = [r for r in db.visible_rows(int(previous["version"])) if r[1] not in dropped]
    old = gather_vectors(
        path, previous, np.array([r[8] for r in kept], np.int64), np.array([r[9] for r in kept], np.int64)
    )
    return np.concatenate([np.array([r[1] for r in kept], np.int64), new_ids]), np.concatenate([old, new_vectors])


def migrate_legacy(out: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Convert a format-1 index to format 2 as version v+1 (ids unchanged; call holding
    :func:`update_lock`). Files are stat-ed, not hashed: a file changed after this is seen as
    changed, one changed before it is not."""
    embeddings, rows, _ = read_legacy(out, manifest)
    (out / METADATA_DB).unlink(missing_ok=True)  # a conversion killed before its commit
    version = int(manifest["version"]) + 1
    new_rows = []
    for i, row in enumerate(rows):
        stat = _stat(Path(row["path"])) or (None, None)
        new_rows.append(NewRow(i, row["path"], row.get("label"), _fields(row), None, *stat, version, i))
    db = IndexDB.open(out, create=True)
    try:
        new = {**manifest, "version": version, "count": len(rows), "next_id": len(rows), "files": None}
        return _commit(out, new, db, np.asarray(embeddings, np.float32), new_rows, [], set(), None)
    finally:
        db.close()


def _new_row(item: GalleryItem, image_id: int, shard: int, row: int) -> NewRow:
    size, mtime_ns = _stat(item.path) or (None, None)
    return NewRow(
        image_id, str(item.path), item.label, dict(item.metadata), file_sha256(item.path), size, mtime_ns, shard, row
    )


def _fields(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in ("path", "label")}


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def file_sha256(path: Path) -> str | None:
    """sha256 of the file's bytes: what "the same image" means for an update (None: unreadable)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def embed_items(
    model: IndexModel, items: Sequence[GalleryItem], *, shard: tuple[int, int] | None = None, **embed: Any
) -> tuple[Embeddings, float]:
    """Embed ``items`` (or shard ``(i, n)`` of them; positions stay those in ``items``), timed."""
    start = time.perf_counter()
    first, stop = shard_bounds(len(items), *shard) if shard else (0, len(items))
    if first == stop:  # nothing to embed: do not pay for building the model
        return Embeddings(np.zeros((0, 0), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64)), 0.0
    net = model.load_model()
    dataset = ImageDataset([item.path for item in items], embedding_transform(net, model.img_size, model.resize_size))
    embeddings = embed_dataset(net, dataset, desc="indexing", shard=shard, **embed)
    return embeddings, time.perf_counter() - start


def _unreadable(items: Sequence[GalleryItem], embeddings: Embeddings) -> list[tuple[str, str]]:
    return [(str(items[i].path), message) for i, message in embeddings.failures]


def _untagged(fields: dict[str, Any]) -> dict[str, Any]:
    """The fields a gallery list gave (the ``duplicate_of`` tag is the index's own)."""
    return {k: v for k, v in fields.items() if k != DUPLICATE_FIELD}


def _tagged(row: NewRow, duplicate_of: int | None) -> NewRow:
    if duplicate_of is not None:
        row.fields = {**row.fields, DUPLICATE_FIELD: duplicate_of}
    return row


def _apply_duplicates(
    embeddings: Embeddings,
    todo: Sequence[GalleryItem],
    n_new: int,
    old_ids: list[int],
    old_paths: list[str],
    old_source: tuple[Path, dict[str, Any], list[tuple]] | None,
    next_id: int,
    dedup: tuple[str, float],
) -> tuple[Embeddings, list[tuple[str, str]], dict[int, int]]:
    """Find the near-duplicates among the new images (``todo[:n_new]``) of ``embeddings``:
    ``(embeddings without the skipped ones, (path, its original's path) pairs, {row of the
    returned embeddings: id it duplicates})``. The reference is the index's kept images, the
    re-embedded changed files (they stay) and, in order, the earlier new images kept."""
    mode, threshold = dedup
    positions = embeddings.indices.tolist()
    new_rows = [j for j, i in enumerate(positions) if i < n_new]
    changed_rows = [j for j, i in enumerate(positions) if i >= n_new]
    if not new_rows:  # nothing new (perhaps nothing embedded at all): nothing to check
        return embeddings, [], {}
    if old_source is not None and old_ids:
        out, manifest, kept = old_source
        shards = np.array([r[8] for r in kept], np.int64)
        rows = np.array([r[9] for r in kept], np.int64)
        old_vectors = gather_vectors(out, manifest, shards, rows)
    else:
        old_vectors = np.empty((0, embeddings.vectors.shape[1]), np.float32)
    vectors = np.asarray(embeddings.vectors, np.float32)
    reference = np.concatenate([old_vectors, vectors[changed_rows]])
    targets = find_new_duplicates(vectors[new_rows], reference, threshold, skip=mode == "skip")

    def target_id_path(target: tuple[str, int]) -> tuple[int, str]:
        kind, at = target
        if kind == "new":
            j = new_rows[at]
        elif at < len(old_ids):
            return old_ids[at], old_paths[at]
        else:
            j = changed_rows[at - len(old_ids)]
        return next_id + j, str(todo[positions[j]].path)  # ids follow the rows (tag keeps every row)

    found, tags = [], {}
    for q, target in sorted(targets.items()):
        image_id, path = target_id_path(target)
        j = new_rows[q]
        found.append((str(todo[positions[j]].path), path))
        tags[j] = image_id
    if mode == "tag":
        return embeddings, found, tags
    keep = np.array([j not in tags for j in range(len(positions))], bool)
    kept_embeddings = Embeddings(
        embeddings.vectors[keep], embeddings.labels[keep], embeddings.indices[keep], list(embeddings.failures)
    )
    return kept_embeddings, found, {}


def find_new_duplicates(
    vectors: np.ndarray, reference: np.ndarray, threshold: float, *, skip: bool, block: int = 1024
) -> dict[int, tuple[str, int]]:
    """Exact near-duplicate check of ``vectors`` (in order) against ``reference`` and their
    own earlier rows: ``{row: ("index", row of reference) or ("new", earlier row)}`` for every
    row with a cosine ``>= threshold`` to one of them (the most similar; the reference on a
    tie). With ``skip``, a duplicate is not a reference for later rows (it is left out)."""
    vectors = _unit(vectors)
    found: dict[int, tuple[str, int]] = {}
    if not len(vectors):
        return found
    dim = vectors.shape[1]
    ref_sims = np.full(len(vectors), -np.inf, np.float32)
    ref_rows = np.full(len(vectors), -1, np.int64)
    if len(reference):
        ref = faiss.IndexFlatIP(dim)
        ref.add(_unit(reference))
        sims, rows = ref.search(vectors, 1)
        ref_sims, ref_rows = sims[:, 0], rows[:, 0]
    pool = faiss.IndexFlatIP(dim)
    pool_rows: list[int] = []
    for start in range(0, len(vectors), block):
        chunk = vectors[start : start + block]
        pool_sims, pool_at = pool.search(chunk, 1) if pool.ntotal else (None, None)
        inner = chunk @ chunk.T
        kept: list[int] = []
        for a in range(len(chunk)):
            j = start + a
            best, target = float(ref_sims[j]), ("index", int(ref_rows[j]))
            if pool_sims is not None and pool_sims[a, 0] > best:
                best, target = float(pool_sims[a, 0]), ("new", pool_rows[int(pool_at[a, 0])])
            if kept:
                sims_in = inner[a, kept]
                b = int(np.argmax(sims_in))
                if sims_in[b] > best:
                    best, target = float(sims_in[b]), ("new", start + kept[b])
            if best >= threshold:
                found[j] = target
                if skip:
                    continue
            kept.append(a)
        if kept:
            pool.add(np.ascontiguousarray(chunk[kept]))
            pool_rows += [start + a for a in kept]
    return found


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)
