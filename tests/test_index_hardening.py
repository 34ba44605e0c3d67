"""Index defects a fault probe found (issue 13): line separators in metadata, file names that
are not UTF-8, list files Excel writes, oversized or hostile list lines, failed writes and the
leftovers they left."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from conftest import TINY_BACKBONE, TINY_FROZEN, TINY_IMG, class_image, run_cli, write_gallery
from legacy_index import downgrade_to_format_1

import dva
import dva.index.store
from dva.errors import DataError
from dva.index import IndexModel, check_index, index_gallery, read_gallery
from dva.index.store import GalleryIndex

QUIET = dict(num_workers=0, progress=False)
SEPARATORS = "\u2028\u2029\x85"


def frozen_model() -> IndexModel:
    return IndexModel.frozen(TINY_BACKBONE, pretrained=False, img_size=TINY_IMG)


def test_line_separators_in_paths_labels_and_metadata_keep_the_index_readable(tmp_path, capsys):
    photos = tmp_path / "photos"
    odd = photos / "a\u2028b"  # a folder name, hence a label and part of a path
    odd.mkdir(parents=True)
    class_image(0, 0).save(odd / "x\u2029y.jpg")
    class_image(1, 0).save(photos / "plain.jpg")
    # and a list whose metadata holds raw separators inside JSON strings
    lines = [
        json.dumps({"path": str(p), "note": f"one{SEPARATORS}two", "label": f"l{SEPARATORS}"}, ensure_ascii=False)
        for p in (odd / "x\u2029y.jpg", photos / "plain.jpg")
    ]
    (tmp_path / "list.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    items = read_gallery(tmp_path / "list.jsonl")
    assert [i.metadata["note"] for i in items] == [f"one{SEPARATORS}two"] * 2

    code, _, err = run_cli(
        capsys,
        "index",
        "--images",
        str(photos),
        "--out",
        str(tmp_path / "index"),
        *TINY_FROZEN,
        "--workers",
        "0",
        "--quiet",
    )
    assert code == 0, err
    searcher = dva.Searcher(tmp_path / "index")
    assert {m.label for m in searcher.search(photos / "plain.jpg", k=2)} == {"a\u2028b", None}
    index_gallery(tmp_path / "list-index", items, model=frozen_model(), **QUIET)
    assert GalleryIndex.load(tmp_path / "list-index").rows[0]["note"] == f"one{SEPARATORS}two"
    # update and --check work too
    class_image(2, 0).save(odd / "z.jpg")
    assert index_gallery(tmp_path / "index", read_gallery(photos), **QUIET).added == 1
    code, out, err = run_cli(capsys, "index", "--check", str(tmp_path / "index"), "--json")
    assert code == 0 and json.loads(out)["count"] == 3, err


def test_check_converts_an_index_written_with_raw_separators(tmp_path, capsys):
    gallery = write_gallery(tmp_path / "photos", num_classes=2, per_class=2)
    index_gallery(tmp_path / "index", read_gallery(gallery.root), model=frozen_model(), **QUIET)
    downgrade_to_format_1(tmp_path / "index")
    metadata = tmp_path / "index/metadata-000001.jsonl"
    rows = [json.loads(line) for line in metadata.read_text().split("\n") if line]
    rows[1]["label"] = "odd\u2028label"
    # what dva 0.1.0 wrote: raw separators, which its own splitlines reader then broke apart
    metadata.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    code, out, err = run_cli(capsys, "index", "--check", str(tmp_path / "index"), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["repaired_rows"] == 1 and report["converted"] is True
    assert not metadata.exists()  # converted to format 2: the JSON-lines file is gone
    assert GalleryIndex.load(tmp_path / "index").rows[1]["label"] == "odd\u2028label"
    again = check_index(tmp_path / "index")
    assert again["repaired_rows"] == 0 and again["converted"] is False


def test_file_names_that_are_not_utf8_are_skipped_before_embedding(tmp_path, capsys, monkeypatch):
    gallery = write_gallery(tmp_path / "photos", num_classes=2, per_class=2)
    bad = os.fsencode(gallery.root / "class_0") + b"/caf\xe9.jpg"  # Latin-1 bytes, not UTF-8
    with open(bad, "wb") as f:
        class_image(0, 5).save(f, format="JPEG")
    embedded: list[int] = []
    original = dva.index.build.embed_items

    def counting(model, items, **kwargs):
        embedded.append(len(items))
        return original(model, items, **kwargs)

    monkeypatch.setattr(dva.index.build, "embed_items", counting)
    code, out, err = run_cli(
        capsys,
        "index",
        "--images",
        str(gallery.root),
        "--out",
        str(tmp_path / "index"),
        *TINY_FROZEN,
        "--workers",
        "0",
        "--quiet",
        "--json",
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["count"] == 4 and embedded == [4]
    [(path, reason)] = report["unreadable"]
    assert "caf\\xe9.jpg" in path and "not valid UTF-8" in reason
    assert len(GalleryIndex.load(tmp_path / "index")) == 4


def test_list_files_excel_writes_and_hostile_lines(tmp_path):
    write_gallery(tmp_path / "photos", num_classes=1, per_class=2)
    bom = tmp_path / "excel.csv"
    bom.write_bytes("\ufeffpath,label\nphotos/class_0/00.jpg,gull\n".encode())
    [item] = read_gallery(bom)
    assert item.label == "gull"
    cases = [
        ("big.csv", "path,note\nphotos/class_0/00.jpg," + "x" * 200_000 + "\n", "big.csv:2: not a readable CSV line"),
        (
            "deep.jsonl",
            '{"path": "photos/class_0/00.jpg", "x": ' + "[" * 100_000 + "]" * 100_000 + "}\n",
            "deep.jsonl:1: JSON nested too deeply",
        ),
        ("nul.jsonl", '{"path": "photos/class_0/0\\u00000.jpg"}\n', "nul.jsonl:1: 'path' contains a NUL"),
        ("nul.csv", "path\nphotos/a\x00b.jpg\n", "nul.csv:2: 'path' contains a NUL"),
    ]
    for name, text, message in cases:
        (tmp_path / name).write_text(text)
        with pytest.raises(DataError, match=message):
            read_gallery(tmp_path / name)


# --- failed writes and their leftovers -------------------------------------------------------


def _cli_index(capsys, photos, out, *extra):
    return run_cli(capsys, "index", "--images", str(photos), "--out", str(out), "--workers", "0", "--quiet", *extra)


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != ".lock")


FROZEN_ARGS = ("--frozen", "--backbone", TINY_BACKBONE, "--no-pretrained", "--img-size", str(TINY_IMG))


def test_a_full_disk_in_the_faiss_write_is_one_line_and_leaves_no_version_behind(tmp_path, capsys, monkeypatch):
    gallery = write_gallery(tmp_path / "photos", num_classes=2, per_class=2)
    # HNSW: an approximate index keeps a FAISS snapshot, which this update must take again
    index_gallery(tmp_path / "index", read_gallery(gallery.root), model=frozen_model(), index_type="hnsw", **QUIET)
    before = _files(tmp_path / "index")
    class_image(0, 7).save(gallery.root / "class_0" / "new.jpg")

    def full(index, name):
        raise RuntimeError("Error in void faiss::write_index: fwrite failed (No space left on device)")

    monkeypatch.setattr(dva.index.store.faiss, "write_index", full)
    code, _, err = _cli_index(capsys, gallery.root, tmp_path / "index")
    assert code == 2 and err.count("\n") == 1 and "faiss-000002.index: cannot write" in err and "No space" in err
    assert _files(tmp_path / "index") == before  # no v2 file, no temporary
    monkeypatch.undo()
    assert index_gallery(tmp_path / "index", read_gallery(gallery.root), **QUIET).added == 1


def test_read_only_folders_are_one_line_errors(tmp_path, capsys, monkeypatch):
    gallery = write_gallery(tmp_path / "photos", num_classes=2, per_class=2)
    index_gallery(tmp_path / "index", read_gallery(gallery.root), model=frozen_model(), **QUIET)
    real_open, real_mkdir = open, Path.mkdir

    def read_only_open(file, *args, **kwargs):  # what a read-only folder answers, even to root
        if str(file).endswith(".lock"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
        return real_open(file, *args, **kwargs)

    def read_only_mkdir(self, *args, **kwargs):
        if ".partial-" in self.name:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(dva.index.store, "open", read_only_open, raising=False)
    code, _, err = _cli_index(capsys, gallery.root, tmp_path / "index")
    assert code == 2 and err.count("\n") == 1 and ".lock: cannot write (Permission denied)" in err
    monkeypatch.setattr(Path, "mkdir", read_only_mkdir)
    code, _, err = _cli_index(capsys, gallery.root, tmp_path / "new", *FROZEN_ARGS)
    assert code == 2 and err.count("\n") == 1 and "new: cannot create it (Permission denied)" in err


def test_leftovers_of_killed_and_failed_runs_are_removed_by_the_next_run(tmp_path):
    gallery = write_gallery(tmp_path / "photos", num_classes=2, per_class=2)
    abandoned = tmp_path / ".index.partial-0badc0de"  # a new index whose process was killed
    abandoned.mkdir()
    (abandoned / "embeddings-000001.npy").write_bytes(b"half")
    index_gallery(tmp_path / "index", read_gallery(gallery.root), model=frozen_model(), **QUIET)
    assert not abandoned.exists()
    expected = _files(tmp_path / "index")
    # a killed update's temporary file, a failed update's version 2, format 1's files
    for name in (
        ".vectors-000002.npy.x1y2.tmp",
        "vectors-000002.npy",
        "faiss-000002.index",
        "metadata-000000.jsonl",
        "embeddings-000001.npy",
    ):
        (tmp_path / "index" / name).write_bytes(b"left over")
    report = index_gallery(tmp_path / "index", read_gallery(gallery.root), **QUIET)  # nothing to add
    assert report.added == 0 and report.version == 1
    assert _files(tmp_path / "index") == expected


def test_a_partial_folder_in_use_is_left_alone(tmp_path):
    from dva._io import partial_dir, remove_abandoned_partials

    with partial_dir(tmp_path / "index") as partial:
        assert remove_abandoned_partials(tmp_path / "index") == [] and partial.is_dir()
    assert not partial.exists()


def test_export_into_a_read_only_parent_is_one_line(trained_run, tmp_path, capsys, monkeypatch):
    real_mkdir = Path.mkdir

    def read_only_mkdir(self, *args, **kwargs):
        if ".partial-" in self.name:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only_mkdir)
    code, _, err = run_cli(capsys, "export", "--run", str(trained_run), "--out", str(tmp_path / "export"))
    assert code == 2 and err.count("\n") == 1 and "export: cannot create it (Permission denied)" in err
