"""Shard compaction: the disk space of removed and re-embedded images is given back, on demand
(``dva index --compact``) and by an update with much churn, without changing a search result,
disturbing a reader, or leaving a mix of versions when killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from conftest import class_image, run_cli, write_gallery
from test_index_store import QUIET, frozen_model, snapshot_bytes, write_list

import dva.index.build as build_module
from dva.index import Searcher, index_gallery, read_gallery
from dva.index.compact import compact_index


def stored_vectors(folder: Path) -> int:
    """Rows of every shard file on disk, named by the manifest or not."""
    return sum(len(np.load(p, mmap_mode="r")) for p in folder.glob("vectors-*.npy"))


def shard_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("vectors-*.npy"))


def manifest_of(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def answers(searcher: Searcher, queries: np.ndarray, **options) -> list[list[dict]]:
    """Every match of every query, with its id, score, path, label and fields."""
    return [[m.to_dict() for m in searcher.search_embedding(q, k=len(searcher), **options)] for q in queries]


def churned_index(tmp_path: Path) -> tuple[Path, Path, list[Path]]:
    """A 12-image index with a list's fields, after removals, a re-embedded image and a relabel:
    its shards hold 15 vectors, 10 of them live."""
    listing, paths = write_list(tmp_path)
    out = tmp_path / "index"
    index_gallery(out, read_gallery(listing), model=frozen_model(), **QUIET)
    index_gallery(out, [], remove=[paths[3], paths[8]], **QUIET)
    for n, changed in enumerate((paths[5], paths[6], paths[7])):  # new content: new ids, new vectors
        class_image(2, 20 + n).rotate(90).save(changed, quality=95)
    gone = (str(paths[3]), str(paths[8]))
    lines = [line for line in listing.read_text().splitlines() if not line.startswith(gone)]
    listing.write_text("\n".join(lines).replace(f"{paths[1]},class_0", f"{paths[1]},gull") + "\n")
    report = index_gallery(out, read_gallery(listing), **QUIET)
    assert (report.updated, report.count, report.reclaimed_bytes) == (4, 10, 0)  # 3 re-embedded, 1 relabelled
    return out, listing, paths


def test_compaction_keeps_every_result_and_stores_only_the_live_vectors(tmp_path, monkeypatch, capsys):
    out, _, paths = churned_index(tmp_path)
    assert stored_vectors(out) == 15 and len(shard_files(out)) == 2
    before = Searcher(out)  # opened on version 3, kept open across the compaction
    queries = np.asarray(before.index.embeddings[[0, 4, 9]])
    expected = answers(before, queries)
    expected_filtered = answers(before, queries, filter="shop=north")
    expected_years = answers(Searcher(out), queries, filter="year>=2000")  # `before` caches its filters

    def no_image(*args, **kwargs):
        raise AssertionError("a compaction embeds or reads no image")

    monkeypatch.setattr(build_module, "embed_dataset", no_image)
    monkeypatch.setattr(build_module, "file_sha256", no_image)
    monkeypatch.setattr(PIL.Image, "open", no_image)
    code, stdout, err = run_cli(capsys, "index", "--compact", "--out", str(out))
    monkeypatch.undo()
    assert code == 0, err
    assert "compacted into version 4" in stdout and "bytes reclaimed" in stdout
    assert shard_files(out) == ["vectors-000004.npy"] and stored_vectors(out) == 10 == len(Searcher(out))
    size_after = (out / "vectors-000004.npy").stat().st_size
    size_before = int(stdout.split("shards ")[1].split(" ->")[0])
    assert f"{size_before - size_after} bytes reclaimed" in stdout and size_before > size_after

    after = Searcher(out)
    assert after.index.version == 4 and list(after.index.ids) == list(before.index.ids)
    assert after.index.rows == before.index.rows  # paths, labels, fields: unchanged
    assert answers(after, queries) == expected  # same ids, same scores, same metadata
    assert answers(after, queries, filter="shop=north") == expected_filtered
    assert after.match(1).label == "gull" and after.search(paths[5], k=1)[0].path == str(paths[5])
    rows = after.index.db.query("SELECT id, path, label, fields, sha256, size, mtime_ns FROM images WHERE added = 4")
    kept = before.index.db.query(
        "SELECT id, path, label, fields, sha256, size, mtime_ns FROM images WHERE added <= 3 AND removed = 4"
    )
    assert sorted(rows) == sorted(kept) and len(rows) == 10  # only shard/row changed

    # a searcher opened before still answers, filters included, and refresh moves it to version 4
    assert answers(before, queries) == expected and answers(before, queries, filter="year>=2000") == expected_years
    assert before.refresh() and before.index.version == 4 and answers(before, queries) == expected

    # a second compaction has nothing to reclaim: no new version, no byte changed
    files = snapshot_bytes(out)
    code, stdout, err = run_cli(capsys, "index", "--compact", "--out", str(out))
    assert code == 0 and "nothing to reclaim" in stdout and manifest_of(out)["version"] == 4, err
    assert snapshot_bytes(out) == files
    code, stdout, _ = run_cli(capsys, "index", "--compact", "--out", str(out), "--json")
    assert json.loads(stdout)["compacted"] is False and json.loads(stdout)["reclaimed_bytes"] == 0
    code, _, err = run_cli(capsys, "index", "--compact", "--out", str(out), "--remove", str(paths[0]))
    assert code == 2 and "--compact runs on its own" in err and snapshot_bytes(out) == files
    code, _, err = run_cli(capsys, "index", "--compact", "--out", str(tmp_path / "nowhere"))
    assert code == 2 and "nowhere" in err and err.count("\n") == 1

    # the next update appends to the compacted index as usual
    new = tmp_path / "photos/class_1/new.jpg"
    class_image(1, 30).save(new)
    listing = tmp_path / "list.csv"
    listing.write_text(listing.read_text() + f"{new},class_1,2100,north\n")
    report = index_gallery(out, read_gallery(listing), **QUIET)
    assert report.added == 1 and shard_files(out) == ["vectors-000004.npy", "vectors-000005.npy"]
    assert Searcher(out).search(tmp_path / "photos/class_1/new.jpg", k=1)[0].path.endswith("new.jpg")


@pytest.mark.parametrize("index_type", ["ivf", "hnsw"])
def test_an_approximate_index_keeps_its_snapshot_and_answers(tmp_path, index_type):
    gallery = write_gallery(tmp_path / "photos", num_classes=4, per_class=10)
    items = read_gallery(gallery.root)
    out = tmp_path / "index"
    index_gallery(out, items[:30], model=frozen_model(), index_type=index_type, **QUIET)
    index_gallery(out, items[:31], **QUIET)  # 1 new: the snapshot is kept
    index_gallery(out, [], remove=[gallery.paths[2]], **QUIET)  # IVF: kept; HNSW: taken again
    snapshot = manifest_of(out)["files"]["faiss"]
    searcher = Searcher(out)
    queries = np.asarray(searcher.index.embeddings[[0, 7, 29]])
    expected = answers(searcher, queries)

    report = compact_index(out)
    assert report.compacted and (report.vectors_before, report.vectors_after) == (31, 30)
    assert report.reclaimed_bytes == report.bytes_before - (out / "vectors-000004.npy").stat().st_size > 0
    manifest = manifest_of(out)
    assert manifest["files"] == {"metadata": "metadata.sqlite", "shards": ["vectors-000004.npy"], "faiss": snapshot}
    after = Searcher(out)
    assert after.index.faiss_index.ntotal == 30 and answers(after, queries) == expected

    # the snapshot still knows what it holds: one more image stays within SNAPSHOT_SLACK, no new snapshot
    index_gallery(out, [item for item in items[:32] if item.path != gallery.paths[2]], **QUIET)
    assert manifest_of(out)["files"]["faiss"] == snapshot
    final = Searcher(out)
    assert final.index.faiss_index.ntotal == 31
    assert final.search_embedding(final.index.embeddings[-1], k=1)[0].path == str(items[31].path)


def test_an_update_with_much_churn_compacts_by_itself(tmp_path, capsys):
    listing, paths = write_list(tmp_path)
    out = tmp_path / "index"
    index_gallery(out, read_gallery(listing), model=frozen_model(), **QUIET)
    report = index_gallery(out, [], remove=paths[:5], **QUIET)  # 5 of 12 dead: under COMPACT_SLACK
    assert (report.version, report.reclaimed_bytes, stored_vectors(out)) == (2, 0, 12)
    reader = Searcher(out)  # version 2: one update behind after the next one
    queries = np.asarray(reader.index.embeddings[[0, 3]])
    expected = answers(Searcher(out), queries, filter="shop=north")  # not the reader's: it caches filters
    report = index_gallery(out, [], remove=paths[5:7], **QUIET)  # 7 of 12 dead: compacted after the commit
    assert report.version == 4 and report.count == 5 and report.reclaimed_bytes > 0
    assert shard_files(out) == ["vectors-000004.npy"] and stored_vectors(out) == 5
    assert sorted(Searcher(out).index.ids_by_path) == sorted(str(p) for p in paths[7:])
    # the reader of version 2 still filters on its rows (those version 3 removed included)
    assert answers(reader, queries, filter="shop=north") == expected
    assert reader.refresh() and reader.index.version == 4 and len(reader) == 5
    code, stdout, err = run_cli(capsys, "index", "--out", str(out), "--remove", str(paths[7]))
    assert code == 0 and "bytes reclaimed" not in stdout, err  # 1 of 5 dead: no compaction
    removals = ("--remove", str(paths[8]), "--remove", str(paths[9]))
    code, stdout, err = run_cli(capsys, "index", "--out", str(out), *removals)
    assert code == 0 and "bytes reclaimed" in stdout and stored_vectors(out) == 2, err


KILLER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import dva.index.store as store
    from dva.index.compact import compact_index

    point, out = sys.argv[1], Path(sys.argv[2])

    def die():
        os.kill(os.getpid(), signal.SIGKILL)  # no finally, no cleanup: what kill -9 does

    if point == "shard":  # mid-write of the compacted shard's temporary file
        def half(target, array):
            Path(target).write_bytes(b"half a shard")
            die()
        store._save_npy = half
    elif point == "rows":  # the new shard is written and its rows committed; the manifest is not
        original_apply = store.IndexDB.apply
        def apply(self, *args, **kwargs):
            original_apply(self, *args, **kwargs)
            die()
        store.IndexDB.apply = apply
    elif point == "manifest":  # committed; the old shards are not yet deleted
        original = store.atomic_write_json
        def commit(*args, **kwargs):
            original(*args, **kwargs)
            die()
        store.atomic_write_json = commit
    compact_index(out)
""")


@pytest.mark.parametrize("point, in_force", [("shard", 3), ("rows", 3), ("manifest", 4)])
def test_a_kill_during_compaction_leaves_version_v_or_v_plus_1(tmp_path, point, in_force):
    out, listing, _ = churned_index(tmp_path)
    v3 = Searcher(out)
    queries = np.asarray(v3.index.embeddings[[0, 4, 9]])
    expected = answers(v3, queries)
    expected_filtered = answers(v3, queries, filter="year>=2000")
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    env = {**os.environ, "PYTHONPATH": str(Path(build_module.__file__).parents[2])}
    done = subprocess.run(
        [sys.executable, str(script), point, str(out)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    if point == "rows":  # killed between the new shard and the commit: both are on disk
        assert "vectors-000004.npy" in shard_files(out)

    searcher = Searcher(out)  # exactly one version is in force, and it answers as before
    assert searcher.index.version == in_force
    assert answers(searcher, queries) == expected
    assert answers(searcher, queries, filter="year>=2000") == expected_filtered

    # the next writer rolls the killed compaction back (or finishes its cleanup) and removes its leftovers
    report = compact_index(out)
    assert report.compacted == (in_force == 3) and manifest_of(out)["version"] == 4
    assert shard_files(out) == ["vectors-000004.npy"] and stored_vectors(out) == 10
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    final = Searcher(out)
    assert answers(final, queries) == expected
    assert final.index.db.query("SELECT count(*) FROM images WHERE added = 4") == [(10,)]
    assert index_gallery(out, read_gallery(listing), **QUIET).already_indexed == 10  # nothing re-embedded
