"""Sharded indexing: shards embedded apart (``--shard I/N``, or torchrun ranks) merge into the index
one process builds, without duplicates or gaps; incomplete or foreign shards are refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import TINY_BACKBONE, TINY_IMG, class_image, run_cli, write_gallery

from dva.index import IndexModel, index_gallery, read_gallery
from dva.index.shards import shard_dir
from dva.index.store import GalleryIndex

SRC = Path(__file__).resolve().parents[1] / "src"
MODEL = ["--frozen", "--backbone", TINY_BACKBONE, "--no-pretrained", "--img-size", str(TINY_IMG)]
QUIET = dict(num_workers=0, progress=False)


def gallery_with_a_broken_image(root: Path):
    gallery = write_gallery(root, num_classes=4, per_class=5)
    (root / "class_2" / "broken.jpg").write_bytes(b"not a jpeg")
    return gallery


def assert_same_index(a: Path, b: Path) -> None:
    one, other = GalleryIndex.load(a), GalleryIndex.load(b)
    assert one.rows == other.rows  # same images, same order: same ids
    assert np.allclose(np.asarray(one.embeddings), np.asarray(other.embeddings), atol=1e-6)
    assert one.faiss_index.ntotal == other.faiss_index.ntotal == len(one)
    assert one.manifest["model"]["fingerprint"] == other.manifest["model"]["fingerprint"]


def test_shards_merge_into_the_index_one_process_builds_and_grow_it_too(tmp_path, capsys):
    gallery_with_a_broken_image(tmp_path / "photos")
    items = read_gallery(tmp_path / "photos")
    model = IndexModel.frozen(TINY_BACKBONE, pretrained=False, img_size=TINY_IMG)
    single = index_gallery(tmp_path / "single", items, model=model, **QUIET)

    out = str(tmp_path / "sharded")
    quiet = ["--workers", "0", "--quiet"]
    common = ["index", "--images", str(tmp_path / "photos"), "--out", out, *MODEL, *quiet]
    for shard in ("2/3", "0/3"):
        code, stdout, _ = run_cli(capsys, *common, "--shard", shard)
        assert code == 0 and "--merge-shards" in stdout
    code, _, err = run_cli(capsys, *common, "--merge-shards")
    assert code == 2 and "shard(s) 1 of 3 missing" in err and not (tmp_path / "sharded").exists()

    assert run_cli(capsys, *common, "--shard", "1/3")[0] == 0
    code, stdout, _ = run_cli(capsys, *common, "--merge-shards", "--json")
    report = json.loads(stdout)
    assert code == 0 and (report["count"], report["added"]) == (single.count, single.added) == (20, 20)
    assert (
        [p for p, _ in report["unreadable"]]
        == [p for p, _ in single.unreadable]
        == [str(tmp_path / "photos" / "class_2" / "broken.jpg")]
    )  # reported once, by the shard that read it
    assert_same_index(tmp_path / "sharded", tmp_path / "single")
    assert not shard_dir(out).exists()

    # new images: shards embed only those and the merge grows the index like a single update
    for i in range(3):
        class_image(0, 50 + i).save(tmp_path / "photos" / "class_0" / f"new{i}.jpg")
    items = read_gallery(tmp_path / "photos")
    assert index_gallery(tmp_path / "single", items, **QUIET).added == 3
    grow = ["index", "--images", str(tmp_path / "photos"), "--out", out, *quiet]  # the index's own model
    for shard in ("0/2", "1/2"):
        assert run_cli(capsys, *grow, "--shard", shard)[0] == 0
    code, stdout, _ = run_cli(capsys, *grow, "--merge-shards", "--json")
    assert code == 0 and json.loads(stdout)["added"] == 3 and json.loads(stdout)["version"] == 2
    assert_same_index(tmp_path / "sharded", tmp_path / "single")


def test_shards_of_another_gallery_or_split_are_refused(tmp_path, capsys):
    write_gallery(tmp_path / "photos", num_classes=2, per_class=4)
    out = str(tmp_path / "index")
    common = ["index", "--images", str(tmp_path / "photos"), "--out", out, *MODEL, "--workers", "0", "--quiet"]
    assert run_cli(capsys, *common, "--shard", "0/2")[0] == 0
    assert run_cli(capsys, *common, "--shard", "1/2")[0] == 0
    class_image(1, 9).save(tmp_path / "photos" / "class_1" / "late.jpg")  # the gallery changed meanwhile
    code, _, err = run_cli(capsys, *common, "--merge-shards")
    assert code == 2 and "another list of images (8 to add, now 9)" in err

    assert run_cli(capsys, *common, "--shard", "0/3")[0] == 0
    code, _, err = run_cli(capsys, *common, "--merge-shards")
    assert code == 2 and "different splits (2, 3 shards)" in err
    for bad in ("2/2", "1", "a/b"):
        code, _, err = run_cli(capsys, *common, "--shard", bad)
        assert code == 2 and "--shard expects I/N" in err


def test_torchrun_ranks_embed_shards_and_rank_0_builds_the_index(tmp_path):
    gallery_with_a_broken_image(tmp_path / "photos")
    index_gallery(
        tmp_path / "single",
        read_gallery(tmp_path / "photos"),
        model=IndexModel.frozen(TINY_BACKBONE, pretrained=False, img_size=TINY_IMG),
        **QUIET,
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": "1",
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "dva",
            "index",
            "--images",
            str(tmp_path / "photos"),
            "--out",
            str(tmp_path / "index"),
            *MODEL,
            "--workers",
            "0",
            "--quiet",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)  # printed once, by rank 0
    assert report["count"] == 20 and len(report["unreadable"]) == 1
    assert_same_index(tmp_path / "index", tmp_path / "single")
    assert not shard_dir(tmp_path / "index").exists()
