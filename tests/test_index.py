"""Indexing a gallery and searching it: readers, the index files, incremental adds, crash safety,
approximate indexes, the Searcher API and the `dva index` / `dva search` commands."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3

import numpy as np
import pytest
import torch
from conftest import TINY_BACKBONE, TINY_FROZEN, TINY_IMG, class_image, run_cli, write_gallery

import dva
import dva.index.build as build_module
import dva.index.store as store_module
from dva.data import load_image
from dva.errors import ConfigError, DataError
from dva.index import (
    IndexModel,
    Searcher,
    check_index,
    index_gallery,
    plan_index,
    read_gallery,
)
from dva.index.faiss_index import build_index, recall_vs_exact
from dva.index.store import GalleryIndex
from dva.runs import Run

FROZEN = dict(pretrained=False, img_size=TINY_IMG)
QUIET = dict(num_workers=0, progress=False)


def frozen_model(**overrides) -> IndexModel:
    return IndexModel.frozen(TINY_BACKBONE, **{**FROZEN, **overrides})


# --- galleries -------------------------------------------------------------------------------


def test_folder_gallery_labels_images_by_their_folder(tmp_path):
    gallery = write_gallery(tmp_path / "photos", num_classes=2, per_class=2)
    class_image(0, 9).save(tmp_path / "photos" / "loose.png")
    (tmp_path / "photos" / "notes.txt").write_text("not an image")
    items = read_gallery(gallery.root)
    assert [(i.path.name, i.label) for i in items] == [
        ("00.jpg", "class_0"),
        ("01.jpg", "class_0"),
        ("00.jpg", "class_1"),
        ("01.jpg", "class_1"),
        ("loose.png", None),
    ]
    assert all(i.path.is_absolute() for i in items)
    assert {i.label for i in read_gallery(gallery.root, folder_labels=False)} == {None}


def test_list_galleries_keep_labels_and_metadata_and_resolve_relative_paths(tmp_path):
    write_gallery(tmp_path / "photos", num_classes=1, per_class=2)
    (tmp_path / "list.csv").write_text("path,label,sku\nphotos/class_0/00.jpg,gull,A1\nphotos/class_0/01.jpg,,B2\n")
    items = read_gallery(tmp_path / "list.csv")
    assert [(i.path, i.label, i.metadata) for i in items] == [
        (tmp_path / "photos/class_0/00.jpg", "gull", {"sku": "A1"}),
        (tmp_path / "photos/class_0/01.jpg", None, {"sku": "B2"}),
    ]
    (tmp_path / "list.jsonl").write_text('{"path": "photos/class_0/00.jpg", "label": 3, "tags": ["a"]}\n\n')
    [item] = read_gallery(tmp_path / "list.jsonl")
    assert item.label == "3" and item.metadata == {"tags": ["a"]}


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("a.csv", "file,label\nx.jpg,1\n", "a.csv:1: the header needs a 'path' column"),
        ("a.csv", "path\nx.jpg\ny.jpg\nx.jpg\n", "a.csv:4: x.jpg is already listed on line 2"),
        ("a.jsonl", '{"path": "x.jpg"}\n{"path": "y.jpg", "score": 1}\n', "a.jsonl:2: field(s) score are reserved"),
        ("a.jsonl", '{"path": "x.jpg"}\n[1, 2]\n', "a.jsonl:2: expected a JSON object"),
        ("a.jsonl", '{"path": "x.jpg"\n', "a.jsonl:1: not valid JSON"),
        ("a.txt", "x.jpg\n", "a gallery is a folder of images or a list file"),
    ],
)
def test_bad_gallery_lists_are_errors_naming_file_and_line(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_gallery(tmp_path / name)


# --- building and searching ------------------------------------------------------------------


def test_index_layout_search_and_unreadable_files(tmp_path):
    gallery = write_gallery(tmp_path / "photos", num_classes=3, per_class=4)
    (tmp_path / "photos" / "class_0" / "truncated.jpg").write_bytes(gallery.paths[0].read_bytes()[:200])
    report = index_gallery(tmp_path / "index", read_gallery(gallery.root), model=frozen_model(), **QUIET)

    assert (report.count, report.added, report.already_indexed) == (12, 12, 0)
    assert [path for path, _ in report.unreadable] == [str(tmp_path / "photos/class_0/truncated.jpg")]
    assert report.index["type"] == "flat" and report.index["recall@10"] == 1.0
    files = sorted(p.name for p in (tmp_path / "index").iterdir())
    assert files == ["config.json", "manifest.json", "metadata.sqlite", "vectors-000001.npy"]  # flat: no FAISS file
    manifest = json.loads((tmp_path / "index/manifest.json").read_text())
    assert manifest["model"]["backbone"] == TINY_BACKBONE and manifest["embed_dim"] == 64 and manifest["count"] == 12
    assert manifest["format_version"] == 2 and manifest["next_id"] == 12
    with sqlite3.connect(tmp_path / "index/metadata.sqlite") as db:
        row = db.execute("SELECT path, label, sha256, shard, row FROM images WHERE id = 5").fetchone()
    assert row == (str(gallery.paths[5]), "class_1", hashlib.sha256(gallery.paths[5].read_bytes()).hexdigest(), 1, 5)

    searcher = dva.Searcher(tmp_path / "index")
    top = searcher.search(gallery.paths[5], k=3)
    assert top[0].id == 5 and top[0].path == str(gallery.paths[5]) and top[0].label == "class_1"
    assert top[0].score == pytest.approx(1.0, abs=1e-5) and top[0].score >= top[1].score >= top[2].score
    # the stored embedding is the query's embedding: searching by it gives the same answer
    stored = np.load(tmp_path / "index/vectors-000001.npy")
    assert np.allclose(searcher.embed([gallery.paths[5]])[0], stored[5], atol=1e-5)
    assert [m.id for m in searcher.search_embedding(stored[5] * 3.0, k=3)] == [m.id for m in top]
    batch = searcher.search_batch([gallery.paths[0], gallery.paths[11]], k=2)
    assert [b[0].id for b in batch] == [0, 11]
    assert len(searcher.search(gallery.paths[0], k=1000)) == 12  # k above the gallery size: everything
    with pytest.raises(DataError, match=r"shape \(n, 64\)"):
        searcher.search_embedding(np.ones(3))
    with pytest.raises(DataError, match="all zeros"):
        searcher.search_embedding(np.zeros(64))


def test_index_of_a_trained_run_merges_adapters_and_outlives_the_run(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    gallery = write_gallery(tmp_path / "photos", num_classes=2, per_class=3)
    index_gallery(tmp_path / "index", read_gallery(gallery.root), model=IndexModel.from_run(run), **QUIET)
    assert (tmp_path / "index/model.safetensors").is_file()
    assert json.loads((tmp_path / "index/manifest.json").read_text())["model"]["method"] == "ica"

    # Embeddings equal those of the run's own (unmerged) model: merging changes the cost, not the result.
    unmerged = Run(run).load_model()
    tensors = torch.stack([Searcher(tmp_path / "index").transform(load_image(p)) for p in gallery.paths])
    with torch.no_grad():
        expected = unmerged(tensors).numpy()
    shutil.rmtree(run)  # the index carries its model: the run is no longer needed
    searcher = Searcher(tmp_path / "index")
    assert searcher.model.is_merged
    assert np.allclose(searcher.embed(gallery.paths), expected, atol=1e-5)
    stored = GalleryIndex.load(tmp_path / "index").embeddings
    assert np.allclose(stored, expected, atol=1e-5)


def test_adding_images_embeds_only_the_new_ones(tmp_path, monkeypatch):
    gallery = write_gallery(tmp_path / "photos", num_classes=3, per_class=4)
    items = read_gallery(gallery.root)
    first = index_gallery(tmp_path / "index", items[:6], model=frozen_model(), **QUIET)
    before = GalleryIndex.load(tmp_path / "index")
    old_vectors, old_rows = np.array(before.embeddings), list(before.rows)

    embedded = []
    original = build_module.embed_dataset
    monkeypatch.setattr(
        build_module,
        "embed_dataset",
        lambda model, dataset, **kw: embedded.extend(dataset.paths) or original(model, dataset, **kw),
    )
    report = index_gallery(tmp_path / "index", items, **QUIET)
    assert (first.version, report.version, report.added, report.already_indexed, report.count) == (1, 2, 6, 6, 12)
    assert embedded == [item.path for item in items[6:]]
    after = GalleryIndex.load(tmp_path / "index")
    assert np.array_equal(after.embeddings[:6], old_vectors) and after.rows[:6] == old_rows  # ids are stable
    assert list(after.ids) == list(range(12))
    # the update appended a shard; version 1's shard is untouched
    assert sorted(p.name for p in (tmp_path / "index").glob("vectors-*")) == [
        "vectors-000001.npy",
        "vectors-000002.npy",
    ]
    assert Searcher(tmp_path / "index").search(gallery.paths[9], k=1)[0].id == 9

    # nothing new: nothing embedded, no new version
    embedded.clear()
    assert index_gallery(tmp_path / "index", items, **QUIET).version == 2 and embedded == []
    # another model would give incomparable embeddings
    with pytest.raises(ConfigError, match="gives other embeddings"):
        index_gallery(tmp_path / "index", items, model=frozen_model(init_seed=1), **QUIET)


def test_a_crash_mid_update_leaves_the_previous_version_in_force(tmp_path, monkeypatch):
    gallery = write_gallery(tmp_path / "photos", num_classes=2, per_class=4)
    items = read_gallery(gallery.root)
    index_gallery(tmp_path / "index", items[:4], model=frozen_model(), **QUIET)
    manifest = (tmp_path / "index/manifest.json").read_text()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(store_module, "atomic_write_json", crash)  # dies just before the commit
    with pytest.raises(OSError, match="disk full"):
        index_gallery(tmp_path / "index", items, **QUIET)
    monkeypatch.undo()
    assert (tmp_path / "index/manifest.json").read_text() == manifest
    assert len(Searcher(tmp_path / "index")) == 4
    # the next update succeeds and removes the crashed attempt's files
    assert index_gallery(tmp_path / "index", items, **QUIET).count == 8
    assert sorted(p.name for p in (tmp_path / "index").glob("vectors-*")) == [
        "vectors-000001.npy",
        "vectors-000002.npy",
    ]

    # a crash while building a new index leaves no index and no partial folder
    monkeypatch.setattr(store_module, "atomic_write_json", crash)
    with pytest.raises(OSError):
        index_gallery(tmp_path / "new", items, model=frozen_model(), **QUIET)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index", "photos"]


def test_new_index_refuses_a_folder_that_is_not_an_index(tmp_path):
    gallery = write_gallery(tmp_path / "photos", num_classes=1, per_class=2)
    with pytest.raises(ConfigError, match="exists and is not a dva index"):
        index_gallery(gallery.root, read_gallery(gallery.root), model=frozen_model(), **QUIET)
    with pytest.raises(ConfigError, match="not an index yet"):
        index_gallery(tmp_path / "index", read_gallery(gallery.root), **QUIET)
    (tmp_path / "broken").mkdir()
    for name in ("a.jpg", "b.png"):
        (tmp_path / "broken" / name).write_bytes(b"junk")
    with pytest.raises(DataError, match="no image of the gallery could be read"):
        index_gallery(tmp_path / "index", read_gallery(tmp_path / "broken"), model=frozen_model(), **QUIET)
    assert not (tmp_path / "index").exists()


# --- approximate indexes ---------------------------------------------------------------------


def test_index_plan_follows_the_gallery_size():
    assert plan_index(99, approx_threshold=100).type == "flat"
    assert plan_index(100, approx_threshold=100).type == "hnsw"
    ivf = plan_index(1_000_000, approx_threshold=100)
    assert ivf.type == "ivf" and ivf.params == {"nlist": 4096, "nprobe": 128}
    assert plan_index(500, index_type="ivf").params["nlist"] * 39 <= 500  # enough points to train
    with pytest.raises(ConfigError, match="choose from"):
        plan_index(10, index_type="annoy")


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_indexes_find_nearly_what_exact_search_finds(kind):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 32))
    vectors = centres[rng.integers(0, 20, 2000)] + 0.3 * rng.normal(size=(2000, 32))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    spec = plan_index(len(vectors), index_type=kind)
    index = build_index(spec, vectors)
    assert index.ntotal == 2000
    recall = recall_vs_exact(index, vectors, k=10, num_queries=200)
    assert 0.8 < recall <= 1.0
    # a deliberately starved search visits less and finds less: the measure can see the difference
    if kind == "ivf":
        import faiss

        faiss.extract_index_ivf(index).nprobe = 1
        assert recall_vs_exact(index, vectors, k=10, num_queries=200) < recall


def test_approximate_index_is_recorded_checked_and_grown(tmp_path):
    gallery = write_gallery(tmp_path / "photos", num_classes=4, per_class=6)
    items = read_gallery(gallery.root)
    report = index_gallery(tmp_path / "index", items[:12], model=frozen_model(), approx_threshold=10, **QUIET)
    assert report.index["type"] == "hnsw" and report.index["params"]["ef_search"] == 128
    assert 0 < report.index["recall@10"] <= 1
    # grown past 10x the threshold: rebuilt as IVF from the stored embeddings, nothing re-embedded
    grown = index_gallery(tmp_path / "index", items, approx_threshold=2, **QUIET)
    assert grown.index["type"] == "ivf" and grown.added == 12
    check = check_index(tmp_path / "index")
    assert check["count"] == 24 and check["index"]["type"] == "ivf" and 0 < check["recall@10"] <= 1
    assert check["missing_files"] == 0
    assert Searcher(tmp_path / "index").search(gallery.paths[3], k=1)[0].id == 3
    gallery.paths[0].unlink()
    assert check_index(tmp_path / "index")["missing_files"] == 1


# --- the commands ----------------------------------------------------------------------------


def test_index_search_and_check_commands(tmp_path, capsys):
    gallery = write_gallery(tmp_path / "photos", num_classes=2, per_class=3)
    (gallery.root / "class_1" / "broken.jpg").write_bytes(b"junk")
    out = tmp_path / "index"
    common = [
        *TINY_FROZEN,
        "--workers",
        "0",
        "--quiet",
    ]
    code, stdout, _ = run_cli(capsys, "index", "--images", str(gallery.root), "--out", str(out), *common, "--json")
    report = json.loads(stdout)
    assert code == 0 and report["count"] == 6 and len(report["unreadable"]) == 1

    code, stdout, stderr = run_cli(
        capsys, "index", "--images", str(gallery.root), "--out", str(out), "--workers", "0", "--quiet"
    )
    assert code == 0 and "warning: skipped" in stderr and "| 6 " in stdout  # the broken file is retried, still skipped

    code, stdout, _ = run_cli(capsys, "search", "--index", str(out), str(gallery.paths[4]), "-k", "2", "--json")
    [result] = json.loads(stdout)
    assert result["query"] == str(gallery.paths[4]) and len(result["results"]) == 2
    assert result["results"][0]["path"] == str(gallery.paths[4]) and result["results"][0]["label"] == "class_1"

    code, stdout, _ = run_cli(capsys, "index", "--check", str(out), "--json")
    assert code == 0 and json.loads(stdout)["recall@10"] == 1.0

    code, _, stderr = run_cli(capsys, "search", "--index", str(tmp_path / "nope"), str(gallery.paths[0]))
    assert code == 2 and stderr.startswith("error: ") and "manifest.json: not found" in stderr
    code, _, stderr = run_cli(capsys, "index", "--images", str(gallery.root), "--out", str(tmp_path / "new"))
    assert code == 2 and "not an index yet" in stderr
