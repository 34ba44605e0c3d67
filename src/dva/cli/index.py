"""``dva index`` and ``dva search``: build an index of a gallery, query it from the shell."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from dva.cli._common import (
    DeviceOpt,
    JsonOpt,
    PrecisionOpt,
    RerankAlphaOpt,
    RerankKOpt,
    WorkersOpt,
    print_json,
    print_table,
)
from dva.cli._vectordb import BackendOpt, CollectionOpt, QdrantUrlOpt, check_backend_options, open_backend
from dva.distributed import launched_by_torchrun
from dva.errors import ConfigError

#: Unreadable images listed in the human-readable report (``--json`` lists them all).
SHOWN_FAILURES = 10


def index(
    images: Path | None = typer.Option(
        None, "--images", help="Gallery: a folder tree of images, or a .csv/.tsv/.jsonl list (path[, label, ...])."
    ),
    out: Path | None = typer.Option(None, "--out", help="Index directory to create, or to add new images to."),
    run: Path | None = typer.Option(None, "--run", help="Embed with this run's model (adapters merged)."),
    weights: Path | None = typer.Option(
        None, "--weights", help="With --run: an epoch file instead of model.safetensors."
    ),
    frozen: bool = typer.Option(False, "--frozen", help="Embed with a frozen backbone, no run needed."),
    backbone: str | None = typer.Option(None, "--backbone", help="With --frozen: timm ViT or dinov2_vits14.imgfocus."),
    pretrained: bool = typer.Option(True, "--pretrained/--no-pretrained", help="With --frozen: random weights."),
    img_size: int = typer.Option(224, "--img-size", help="With --frozen: crop size (a run uses its own)."),
    folder_labels: bool = typer.Option(
        True, "--folder-labels/--no-folder-labels", help="Label each image of a folder tree by its folder's name."
    ),
    index_type: str | None = typer.Option(
        None,
        "--index-type",
        help="auto (exact below --approx-threshold, else HNSW, IVF when 10x larger), flat, hnsw, ivf.",
    ),
    approx_threshold: int | None = typer.Option(
        None, "--approx-threshold", help="Gallery size from which auto turns approximate (default 100000)."
    ),
    check: Path | None = typer.Option(
        None, "--check", help="Check INDEX_DIR instead: file integrity and recall@10 against exact search."
    ),
    shard: str | None = typer.Option(
        None, "--shard", help="Embed only shard I/N of the new images into OUT.shards/ (e.g. one job of an array)."
    ),
    merge_shards: bool = typer.Option(
        False, "--merge-shards", help="Build the index from the shards of OUT.shards/ (same options as the shards)."
    ),
    remove: list[Path] = typer.Option(
        [], "--remove", help="Delete this indexed image from OUT (repeatable); a path not in the index changes nothing."
    ),
    remove_missing: bool = typer.Option(
        False, "--remove-missing", help="Delete from OUT every image whose file is gone."
    ),
    compact: bool = typer.Option(
        False,
        "--compact",
        help="Rewrite OUT's shards to hold only the live vectors (no image is embedded or read); "
        "prints the bytes reclaimed. Updates also compact by themselves when over half the stored vectors are dead.",
    ),
    duplicates: str | None = typer.Option(
        None,
        "--duplicates",
        help="skip: leave out a new image as similar as --duplicate-threshold to an indexed or earlier new one; "
        "tag: add it with the field duplicate_of (the id it duplicates). Default: no check.",
    ),
    duplicate_threshold: float = typer.Option(
        0.95, "--duplicate-threshold", help="With --duplicates: cosine from which two images are duplicates."
    ),
    batch_size: int = typer.Option(64, "--batch-size"),
    workers: int = WorkersOpt,
    device: str = DeviceOpt,
    precision: str = PrecisionOpt,
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    json_out: bool = JsonOpt,
    backend: str = BackendOpt,
    qdrant_url: str | None = QdrantUrlOpt,
    collection: str = CollectionOpt,
) -> None:
    """Embed a gallery and write a searchable index; run again to add new or changed images only.

    An indexed image whose file is unchanged (sha256 of its bytes) is not embedded again; a
    changed one is; unreadable ones are skipped and listed. --remove PATH and --remove-missing
    delete images (with or without --images). --compact gives back the disk space of removed
    and re-embedded images. The index records the model, so `dva search` and `dva serve` need
    only the index.

    Large galleries: torchrun --nproc-per-node N -m dva index ... embeds N shards in parallel
    (one per GPU) and rank 0 builds the same index one process would; or --shard I/N per job,
    then --merge-shards.
    """
    from dva.index import IndexModel, check_index, index_gallery, read_gallery
    from dva.index.build import check_duplicate_options
    from dva.index.shards import embed_shard, index_gallery_distributed, parse_shard
    from dva.index.shards import merge_shards as merge

    if check is not None:
        report = check_index(check)
        if json_out:
            print_json(report)
        else:
            filtered = ", ".join(f"{kept} kept: {recall:.3f}" for kept, recall in report["filtered_recall@10"].items())
            print_table(
                [
                    {
                        "images": report["count"],
                        "index": report["index"]["factory"],
                        "recall@10": report["recall@10"],
                        "filtered recall@10": filtered or "-",
                        "missing files": report["missing_files"],
                        "converted": "yes" if report["converted"] else "no",
                        "repaired rows": report["repaired_rows"],
                    }
                ]
            )
        return
    if compact:
        alone = images is None and not remove and not remove_missing and shard is None and not merge_shards
        _compact(out, alone, json_out)
        return
    removing = bool(remove) or remove_missing
    if out is None or (images is None and not removing):
        raise ConfigError(
            "pass --images DIR_OR_LIST and --out INDEX_DIR (or --check INDEX_DIR, or --out with --remove)"
        )
    if removing and (shard is not None or merge_shards or launched_by_torchrun()):
        raise ConfigError("--remove/--remove-missing run on their own or with --images, not with sharded embedding")
    if frozen and run is not None:
        raise ConfigError("pass either --run RUN_DIR or --frozen --backbone NAME, not both")
    check_duplicate_options(duplicates, duplicate_threshold)  # before anything is read or embedded
    if duplicates is not None and (shard is not None or merge_shards or launched_by_torchrun()):
        raise ConfigError("--duplicates runs with a plain `dva index`, not with sharded embedding")
    model = None
    if frozen:
        if not backbone:
            raise ConfigError("--frozen needs --backbone NAME")
        model = IndexModel.frozen(backbone, pretrained=pretrained, img_size=img_size)
    elif run is not None:
        model = IndexModel.from_run(run, weights)
    if shard is not None and merge_shards:
        raise ConfigError("--shard embeds one shard, --merge-shards merges them: pass one")
    check_backend_options(backend, qdrant_url, collection)  # an unreachable server: before hours of embedding
    items = read_gallery(images, folder_labels=folder_labels) if images is not None else []
    embed = dict(batch_size=batch_size, num_workers=workers, precision=precision, progress=not quiet)
    build = dict(model=model, index_type=index_type, approx_threshold=approx_threshold)
    if shard is not None:
        path = embed_shard(out, items, shard=parse_shard(shard), model=model, device=device, **embed)
        print(f"shard {shard} written to {path}; when all are done: the same command with --merge-shards")
        return
    if merge_shards:
        report = merge(out, items, **build)
    elif launched_by_torchrun():
        distributed = index_gallery_distributed(out, items, device=device, **build, **embed)
        if distributed is None:  # not rank 0: its shard is written, rank 0 builds the index
            return
        report = distributed
    else:
        report = index_gallery(
            out,
            items,
            device=device,
            remove=remove,
            remove_missing=remove_missing,
            duplicates=duplicates,
            duplicate_threshold=duplicate_threshold,
            **build,
            **embed,
        )
    pushed = _push(out, backend, qdrant_url, collection) if backend != "faiss" or qdrant_url else None
    if json_out:
        print_json({**report.to_dict(), **({} if pushed is None else {"vectordb": pushed})})
        return
    verb = "skipped" if report.skipped_duplicates else "tagged"
    for path, original in report.duplicates[:SHOWN_FAILURES]:
        print(f"warning: {verb} {path}: a duplicate of {original}", file=sys.stderr)
    if len(report.duplicates) > SHOWN_FAILURES:
        more = len(report.duplicates) - SHOWN_FAILURES
        print(f"warning: ... and {more} more duplicates (--json lists all)", file=sys.stderr)
    for _, reason in report.unreadable[:SHOWN_FAILURES]:
        print(f"warning: skipped {reason}", file=sys.stderr)
    if len(report.unreadable) > SHOWN_FAILURES:
        print(f"warning: ... and {len(report.unreadable) - SHOWN_FAILURES} more (--json lists all)", file=sys.stderr)
    print_table(
        [
            {
                "index": report.path,
                "version": report.version,
                "images": report.count,
                "added": report.added,
                "already indexed": report.already_indexed,
                "updated": report.updated,
                "removed": report.removed,
                "unreadable": len(report.unreadable),
                **({"duplicates": len(report.duplicates)} if duplicates is not None else {}),
                "type": report.index["factory"],
                "recall@10": report.index["recall@10"],
                "img/s": report.added / report.embed_seconds if report.embed_seconds else 0.0,
            }
        ]
    )
    if report.reclaimed_bytes:
        dead = "over half the stored vectors were dead"
        print(f"compacted the shards ({dead}): {report.reclaimed_bytes} bytes reclaimed")
    if pushed is not None:
        how = "changes since the last push" if pushed["incremental"] else "every id compared"
        print(
            f"{pushed['pushed']} images upserted into {pushed['factory']}, {pushed['deleted']} deleted "
            f"({how}; {pushed['images']} there now)"
        )


def _compact(out: Path | None, alone: bool, json_out: bool) -> None:
    """``dva index --compact --out INDEX_DIR``: on its own, so what it did is all it reports."""
    from dva.index.compact import compact_index

    if out is None or not alone:
        raise ConfigError("--compact runs on its own: dva index --compact --out INDEX_DIR")
    report = compact_index(out)
    if json_out:
        print_json(report.to_dict())
    elif not report.compacted:
        print(f"{out}: nothing to reclaim ({report.count} images, every stored vector is live; version unchanged)")
    else:
        print(
            f"{out}: compacted into version {report.version}: shards {report.bytes_before} -> "
            f"{report.bytes_after} bytes ({report.reclaimed_bytes} bytes reclaimed; "
            f"{report.vectors_before} -> {report.vectors_after} vectors)"
        )


def _push(out: Path, backend: str, url: str | None, collection: str) -> dict:
    """Bring the vector database to the index's images: removals deleted, new, re-embedded and
    relabelled images upserted (only the changes since the last push when the collection says
    which version it holds: no ``refresh`` is needed for relabels)."""
    from dva.index import GalleryIndex
    from dva.index.vectordb import push_index

    gallery = open_backend(out, backend, url, collection, create=True)
    try:
        pushed = push_index(GalleryIndex.load(out), gallery)
        return {
            **gallery.describe(),
            "pushed": pushed.upserted,
            "deleted": pushed.deleted,
            "incremental": pushed.incremental,
            "images": len(gallery),
        }
    finally:
        gallery.close()


def search(
    images: list[Path] = typer.Argument(..., help="Query images."),
    index_dir: Path = typer.Option(..., "--index", help="Index directory written by `dva index`."),
    k: int = typer.Option(10, "-k", "--k", help="Number of matches per query."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, auto, ..."),
    rerank: str | None = typer.Option(
        None,
        "--rerank",
        help="Re-rank by neighbourhood: aqe (alpha query expansion) or dba (database-side "
        "augmentation); the order changes, the score stays the plain cosine.",
    ),
    rerank_k: int = RerankKOpt,
    alpha: float = RerankAlphaOpt,
    threshold: float | None = typer.Option(
        None, "--threshold", help="A match when score >= this (overrides the index's `dva calibrate` threshold)."
    ),
    filters: list[str] = typer.Option(
        [],
        "--filter",
        help="Keep only images that match (repeatable, AND): label=Cardinal, 'label in A,B', "
        "'year>=2000', 'price<10', '10<=year<=20' (label, path or a field of the gallery list).",
    ),
    json_out: bool = JsonOpt,
    backend: str = BackendOpt,
    qdrant_url: str | None = QdrantUrlOpt,
    collection: str = CollectionOpt,
) -> None:
    """The top-k gallery images of each query by cosine similarity (path, label, score).

    --filter restricts the search to images whose label or metadata match; the results are
    the exact top-k among them, also with an approximate index or --backend qdrant.

    With a calibrated index (`dva calibrate`) or --threshold, each match also says whether it is
    the same item (is_match: score >= threshold).
    """
    from dva.index import Searcher
    from dva.index.calibrate import check_threshold
    from dva.index.filters import parse_filters
    from dva.index.rerank import check_rerank
    from dva.index.store import GalleryIndex

    check_rerank(rerank, rerank_k, alpha)  # before the model is built
    if threshold is not None:
        check_threshold(threshold)
    parsed = parse_filters(filters)
    vectors = open_backend(index_dir, backend, qdrant_url, collection)
    # an unknown field is an error before the model is built, in the database that is searched
    if vectors is not None:
        vectors.check_filters(parsed)
    elif parsed:
        GalleryIndex.check_filters(index_dir, parsed)
    searcher = Searcher(index_dir, device=device, backend=vectors)
    results = searcher.search_batch(
        images, k, rerank=rerank, rerank_k=rerank_k, alpha=alpha, threshold=threshold, filter=parsed
    )
    if json_out:
        print_json(
            [{"query": str(q), "results": [m.to_dict() for m in ms]} for q, ms in zip(images, results, strict=True)]
        )
        return
    decided = searcher.calibration is not None or threshold is not None
    for query, matches in zip(images, results, strict=True):
        print(f"\n{query}")
        print_table(
            [
                {
                    "rank": r,
                    "score": m.score,
                    **({"match": "yes" if m.is_match else "no"} if decided else {}),
                    "label": m.label or "",
                    "path": m.path,
                }
                for r, m in enumerate(matches, start=1)
            ]
        )
