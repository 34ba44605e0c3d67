"""Gallery tools on real index folders: `dva calibrate` (is it the same item?), `dva dedup`
(near-duplicate groups of real re-encoded / resized files) and re-ranked search."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import TINY_BACKBONE, TINY_FROZEN, TINY_IMG, class_image, run_cli, write_gallery
from PIL import Image

from dva.index import IndexModel, Searcher, index_gallery, read_gallery
from dva.index.calibrate import CALIBRATION, error_rates, threshold_for_fmr
from dva.index.dedup import find_duplicates
from dva.index.rerank import database_augmentation
from dva.index.store import GalleryIndex

QUIET = ["--workers", "0", "--quiet"]


def make_index(images, out, **options) -> GalleryIndex:
    model = IndexModel.frozen(TINY_BACKBONE, pretrained=False, img_size=TINY_IMG)
    index_gallery(out, read_gallery(images), model=model, num_workers=0, progress=False, **options)
    return GalleryIndex.load(out)


@pytest.fixture
def index_copy(gallery_index, tmp_path):
    gallery, index = gallery_index
    shutil.copytree(index, tmp_path / "index")
    return gallery, tmp_path / "index"


# --- calibrate -------------------------------------------------------------------------------


def test_threshold_is_the_smallest_with_fmr_at_most_the_target():
    impostor = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95], np.float32)
    genuine = np.array([0.5, 0.85, 0.9, 0.99], np.float32)
    t = threshold_for_fmr(impostor, 0.2)  # 2 of 10 impostors may pass: 0.9 and 0.95, not 0.8
    assert 0.9 > t > 0.8 and t == pytest.approx(0.8, abs=1e-6)
    fmr, fnmr = error_rates(genuine, impostor, np.array([t]))
    assert fmr[0] == pytest.approx(0.2) and fnmr[0] == pytest.approx(0.25)
    assert error_rates(genuine, impostor, np.array([float(np.float32(0.8))]))[0][0] == pytest.approx(0.3)
    assert threshold_for_fmr(impostor, 0.05) > float(impostor.max())  # not even one false match allowed


def test_calibrate_stores_the_rule_and_search_says_is_match(index_copy, tmp_path, capsys):
    gallery, index = index_copy
    val = write_gallery(tmp_path / "val", num_classes=3, per_class=4, size=36)
    code, stdout, stderr = run_cli(
        capsys, "calibrate", "--index", str(index), "--labelled", str(val.root), "--fmr", "0.1", *QUIET, "--json"
    )
    assert code == 0, stderr
    report = json.loads(stdout)
    # 3 labels of 4 images: 3 * 6 genuine pairs, 66 - 18 impostor pairs, all of them
    assert (report["genuine_pairs"], report["impostor_pairs"], report["pairs"]) == (18, 48, "all")
    assert report["images"] == 12 and report["labels"] == 3 and report["fmr"] <= 0.1
    # the stored numbers are those of the pairs, recomputed here from the index's own model
    searcher = Searcher(index)
    vectors = searcher.embed(val.paths)
    labels = np.array(val.labels)
    upper = np.triu(np.ones((12, 12), bool), 1)
    same = labels[:, None] == labels[None, :]
    sims = vectors @ vectors.T
    impostor, genuine = sims[upper & ~same], sims[upper & same]
    t = report["threshold"]
    assert np.sort(impostor)[::-1][int(0.1 * 48)] == pytest.approx(t, abs=1e-5)
    assert report["fnmr"] == pytest.approx((genuine < t - 1e-5).mean(), abs=1 / 18 + 1e-9)
    assert json.loads((index / CALIBRATION).read_text())["threshold"] == t
    assert Image.open(index / "calibration.png").format == "PNG"

    matches = searcher.search(gallery.paths[5], k=24)
    assert [m.is_match for m in matches] == [m.score >= t for m in matches]
    assert {m.is_match for m in searcher.search(gallery.paths[5], k=24, threshold=-1.0)} == {True}
    code, stdout, _ = run_cli(capsys, "search", "--index", str(index), str(gallery.paths[5]), "-k", "3", "--json")
    assert [r["is_match"] for r in json.loads(stdout)[0]["results"]] == [m.is_match for m in matches[:3]]
    code, stdout, _ = run_cli(capsys, "search", "--index", str(index), str(gallery.paths[5]), "-k", "2")
    header, _, *rows = stdout.strip().splitlines()[1:]
    assert " match " in header and all(("| yes " in r) == m.is_match for r, m in zip(rows, matches[:2], strict=True))

    # the index's own checks and updates leave the calibration alone
    code, stdout, _ = run_cli(capsys, "index", "--check", str(index), "--json")
    assert code == 0 and json.loads(stdout)["recall@10"] == 1.0
    more = write_gallery(tmp_path / "more", num_classes=1, per_class=1)  # the shared gallery stays as it is
    code, _, _ = run_cli(capsys, "index", "--images", str(more.root), "--out", str(index), *QUIET)
    assert code == 0 and GalleryIndex.load(index).version == 2
    assert Searcher(index).calibration.threshold == t


def test_bad_calibration_input_changes_nothing(index_copy, tmp_path, capsys):
    gallery, index = index_copy
    one = write_gallery(tmp_path / "one", num_classes=1, per_class=3)
    singles = write_gallery(tmp_path / "singles", num_classes=3, per_class=1)
    before = sorted(p.name for p in index.iterdir())
    for args, field in [
        (["--labelled", str(gallery.root), "--fmr", "0"], "fmr"),
        (["--labelled", str(gallery.root), "--fmr", "1.5"], "fmr"),
        (["--labelled", str(one.root)], "labelled"),
        (["--labelled", str(singles.root)], "no genuine pairs"),
    ]:
        code, stdout, stderr = run_cli(capsys, "calibrate", "--index", str(index), *args, *QUIET)
        assert code == 2 and stderr.startswith("error: ") and field in stderr and stderr.count("\n") == 1, stderr
    assert sorted(p.name for p in index.iterdir()) == before
    for value in ("1.5", "-2", "nan"):
        code, _, stderr = run_cli(capsys, "search", "--index", str(index), str(gallery.paths[0]), "--threshold", value)
        assert code == 2 and "threshold" in stderr
    # uncalibrated: is_match is None, unless a threshold is given
    assert {m.is_match for m in Searcher(index).search(gallery.paths[0], k=3)} == {None}


def test_served_matches_carry_is_match(index_copy, tmp_path):
    from fastapi.testclient import TestClient

    from dva.index.calibrate import calibrate
    from dva.serve import create_app

    gallery, index = index_copy
    val = write_gallery(tmp_path / "val", num_classes=2, per_class=3)
    with TestClient(create_app(Searcher(index))) as client:  # not calibrated yet
        results = client.post("/search", files={"file": ("q.jpg", gallery.paths[2].read_bytes(), "image/jpeg")}).json()
        assert {r["is_match"] for r in results["results"]} == {None}
    t = calibrate(index, val.root, target_fmr=0.2, embed={"num_workers": 0, "progress": False}).threshold
    with TestClient(create_app(Searcher(index))) as client:
        body = client.post(
            "/search", data={"k": "24"}, files={"file": ("q.jpg", gallery.paths[2].read_bytes(), "image/jpeg")}
        ).json()
        assert [r["is_match"] for r in body["results"]] == [r["score"] >= t for r in body["results"]]


# --- dedup -----------------------------------------------------------------------------------


def _components(vectors: np.ndarray, threshold: float) -> list[list[int]]:
    """Reference: groups of the full N x N similarity graph by repeated flooding."""
    linked = vectors @ vectors.T >= threshold
    seen, groups = set(), []
    for start in range(len(vectors)):
        if start in seen:
            continue
        group, frontier = {start}, [start]
        while frontier:
            new = set(np.flatnonzero(linked[frontier].any(axis=0)).tolist()) - group
            group |= new
            frontier = list(new)
        seen |= group
        if len(group) > 1:
            groups.append(sorted(group))
    return sorted(groups, key=lambda g: (-len(g), g[0]))


@pytest.mark.parametrize("index_type", ["flat", "hnsw"])
def test_dedup_finds_resized_and_reencoded_copies(tmp_path, capsys, index_type):
    gallery = write_gallery(tmp_path / "photos", num_classes=3, per_class=3, size=48)
    original = Image.open(gallery.paths[1])
    original.resize((44, 44), Image.BICUBIC).save(gallery.root / "class_0" / "copy_resized.png")
    Image.open(gallery.paths[7]).save(gallery.root / "class_2" / "copy_q70.jpg", quality=70)
    index = make_index(gallery.root, tmp_path / "index", index_type=index_type)
    vectors = np.asarray(index.embeddings)
    names = [row["path"].split("/")[-1] for row in index.rows]
    copies = [
        (names.index("01.jpg"), names.index("copy_resized.png")),
        (next(i for i, r in enumerate(index.rows) if r["path"] == str(gallery.paths[7])), names.index("copy_q70.jpg")),
    ]
    sims = vectors @ vectors.T
    copy_scores = [sims[a, b] for a, b in copies]
    others = sims[np.triu(np.ones_like(sims, bool), 1)]
    others = np.sort(others)[: -len(copies)]  # every pair but the two copies (the highest ones)
    assert min(copy_scores) > others.max(), "the tiny model must tell copies from other images for this test"
    threshold = float((min(copy_scores) + others.max()) / 2)

    csv_path, sheet = tmp_path / "dups.csv", tmp_path / "dups.png"
    code, stdout, stderr = run_cli(
        capsys,
        "dedup",
        "--index",
        str(tmp_path / "index"),
        "--threshold",
        str(threshold),
        "--csv",
        str(csv_path),
        "--sheet",
        str(sheet),
        "--json",
    )
    assert code == 0, stderr
    report = json.loads(stdout)
    assert report["search"] == ("range" if index_type == "flat" else "knn")
    assert report["groups"] == 2 and report["duplicates"] == 2
    assert sorted(tuple(sorted(m["id"] for m in g)) for g in report["groups_list"]) == sorted(
        tuple(sorted(c)) for c in copies
    )
    rows = csv_path.read_text().splitlines()
    assert rows[0] == "group,id,path,label,score" and len(rows) == 5
    first = report["groups_list"][0]
    assert first[0]["score"] == 1.0 and first[1]["score"] == pytest.approx(
        sims[first[0]["id"], first[1]["id"]], abs=1e-5
    )
    assert Image.open(sheet).size[1] >= 2 * 96

    # a low threshold chains images into larger groups: the same as the full-matrix reference
    low = float(np.quantile(others, 0.8))  # 10 or more links among 11 images: some group has 3 or more
    groups = find_duplicates(tmp_path / "index", threshold=low, k=len(vectors)).groups
    assert [[m.id for m in g] for g in groups] == _components(vectors, low)
    assert max(len(g) for g in groups) > 2

    code, _, stderr = run_cli(capsys, "dedup", "--index", str(tmp_path / "index"), "--threshold", "1.2")
    assert code == 2 and "threshold" in stderr


# --- re-ranked search ------------------------------------------------------------------------


def test_reranked_search_follows_the_expanded_similarity_and_keeps_plain_scores(gallery_index, capsys):
    gallery, index = gallery_index
    searcher = Searcher(index)
    gallery_vectors = np.asarray(searcher.index.embeddings)
    q = searcher.embed([class_image(2, 77)])[0]
    top = np.argsort(-(gallery_vectors @ q), kind="stable")[:3]
    expanded = q + sum(max(float(gallery_vectors[j] @ q), 0) ** 3 * gallery_vectors[j] for j in top)
    want_aqe = np.argsort(-(gallery_vectors @ (expanded / np.linalg.norm(expanded))), kind="stable")[:8]
    aqe = searcher.search_embedding(q, k=8, rerank="aqe", rerank_k=3, alpha=3.0)
    assert [m.id for m in aqe] == want_aqe.tolist()
    assert [m.score for m in aqe] == pytest.approx((gallery_vectors[want_aqe] @ q).tolist(), abs=1e-5)

    augmented = database_augmentation(gallery_vectors, n=3, alpha=3.0)
    want_dba = np.argsort(-(augmented @ q), kind="stable")[:8]
    assert [m.id for m in searcher.search_embedding(q, k=8, rerank="dba", rerank_k=3)] == want_dba.tolist()
    assert (
        want_dba.tolist() != np.argsort(-(gallery_vectors @ q))[:8].tolist()
        or want_aqe.tolist() != np.argsort(-(gallery_vectors @ q))[:8].tolist()
    )  # re-ranking changed something here

    code, stdout, _ = run_cli(
        capsys,
        "search",
        "--index",
        str(index),
        str(gallery.paths[3]),
        "--rerank",
        "aqe",
        "--rerank-k",
        "3",
        "-k",
        "4",
        "--json",
    )
    expected = [m.id for m in searcher.search(gallery.paths[3], k=4, rerank="aqe", rerank_k=3)]
    assert code == 0 and [r["id"] for r in json.loads(stdout)[0]["results"]] == expected
    for args, field in [(["--rerank", "qe"], "rerank"), (["--rerank", "dba", "--rerank-k", "0"], "rerank_k")]:
        code, _, stderr = run_cli(capsys, "search", "--index", str(index), str(gallery.paths[3]), *args)
        assert code == 2 and stderr.startswith(f"error: {field}")


def test_eval_rerank_is_leave_one_out_on_the_test_side(cub_root, capsys):
    from dva.config import ModelConfig
    from dva.data import load_catalog, make_split
    from dva.evaluate import embed_records
    from dva.index.rerank import rerank_metrics
    from dva.models import create_model

    common = [
        "eval",
        *TINY_FROZEN,
        "--dataset",
        "cub",
        "--data",
        str(cub_root.root),
        "--device",
        "cpu",
        *QUIET,
        "--json",
    ]
    code, stdout, stderr = run_cli(capsys, *common, "--rerank", "dba", "--rerank-k", "2")
    assert code == 0, stderr
    metrics = json.loads(stdout)
    model = create_model(ModelConfig(backbone=TINY_BACKBONE, pretrained=False, method="frozen", img_size=TINY_IMG))
    side = make_split(load_catalog("cub", cub_root.root), "open").test
    emb = embed_records(model, side.records, img_size=TINY_IMG, num_workers=0, progress=False, device="cpu")
    want = rerank_metrics(emb.vectors, emb.labels, "dba", n=2, alpha=3.0)
    assert {k: metrics[k] for k in want} == pytest.approx(want, abs=1e-6)
    assert metrics["rerank"] == {"method": "dba", "n": 2, "alpha": 3.0}
    code, _, stderr = run_cli(capsys, *common, "--rerank", "dba", "--alpha", "-1")
    assert code == 2 and "alpha" in stderr


# --- duplicates at index time ----------------------------------------------------------------


def test_new_duplicates_chain_only_through_kept_images():
    from dva.index.build import find_new_duplicates

    # b is a near-copy of a; c is close to b but not to a; d is far from all
    a = np.array([1.0, 0.0, 0.0])
    b = np.array([np.cos(0.25), np.sin(0.25), 0.0])
    c = np.array([np.cos(0.5), np.sin(0.5), 0.0])
    d = np.array([0.0, 0.0, 1.0])
    vectors = np.stack([b, c, d]).astype(np.float32) * 3  # not normalised: the check normalises
    threshold = float(np.cos(0.3))  # b~a and c~b (0.25 apart); c~a is 0.5 apart
    reference = a[None].astype(np.float32)
    assert find_new_duplicates(vectors, reference, threshold, skip=True) == {0: ("index", 0)}  # b skipped: c stays
    assert find_new_duplicates(vectors, reference, threshold, skip=False) == {0: ("index", 0), 1: ("new", 0)}
    # in blocks of one row, through the pool of earlier kept rows: the same answer
    assert find_new_duplicates(vectors, reference, threshold, skip=False, block=1) == {0: ("index", 0), 1: ("new", 0)}
    assert find_new_duplicates(vectors, reference[:0], threshold, skip=True) == {1: ("new", 0)}


def test_index_skips_or_tags_duplicates_of_the_index_and_of_the_same_update(tmp_path, capsys):
    gallery = write_gallery(tmp_path / "photos", num_classes=3, per_class=3, size=48)
    base = tmp_path / "base"
    make_index(gallery.root, base)
    # the update: a re-encoded copy of an indexed image, a new image, and a resized copy of that new one
    copy_old = gallery.root / "class_2" / "copy_q70.jpg"
    Image.open(gallery.paths[7]).save(copy_old, quality=70)
    fresh = gallery.root / "class_1" / "new_a.jpg"
    class_image(1, 50, 48).save(fresh, quality=95)
    copy_new = gallery.root / "class_1" / "new_a_copy.png"
    Image.open(fresh).resize((44, 44), Image.BICUBIC).save(copy_new)
    searcher = Searcher(base)
    vectors = searcher.embed([*gallery.paths, copy_old, fresh, copy_new])
    sims = vectors @ vectors.T
    copy_scores = [sims[7, 9], sims[10, 11]]
    pairs = sims[np.triu(np.ones_like(sims, bool), 1)]
    others = np.sort(pairs)[: -len(copy_scores)]
    assert min(copy_scores) > others.max(), "the tiny model must tell copies from other images for this test"
    threshold = float((min(copy_scores) + others.max()) / 2)

    # skip, from the command line: the two copies are left out and listed with their originals
    skip = tmp_path / "skip"
    shutil.copytree(base, skip)
    args = ["index", "--images", str(gallery.root), "--out", str(skip), *QUIET, "--duplicates", "skip"]
    code, stdout, stderr = run_cli(capsys, *args, "--duplicate-threshold", str(threshold), "--json")
    assert code == 0, stderr
    report = json.loads(stdout)
    assert report["added"] == 1 and report["skipped_duplicates"] == 2 and report["count"] == 10
    assert sorted(report["duplicates"]) == [[str(copy_new), str(fresh)], [str(copy_old), str(gallery.paths[7])]]
    paths = {row["path"] for row in GalleryIndex.load(skip).rows}
    assert str(fresh) in paths and str(copy_old) not in paths and str(copy_new) not in paths
    code, _, stderr = run_cli(capsys, *args, "--duplicate-threshold", str(threshold))  # the table names them
    assert code == 0 and f"skipped {copy_new}: a duplicate of {fresh}" in stderr

    # tag, from Python: all are added, each copy with the stable id of its original
    tag = tmp_path / "tag"
    shutil.copytree(base, tag)
    model = IndexModel.frozen(TINY_BACKBONE, pretrained=False, img_size=TINY_IMG)
    options = dict(model=model, num_workers=0, progress=False, duplicates="tag", duplicate_threshold=threshold)
    result = index_gallery(tag, read_gallery(gallery.root), **options)
    assert result.added == 3 and result.skipped_duplicates == 0 and len(result.duplicates) == 2
    index = GalleryIndex.load(tag)
    by_path = {row["path"]: (int(index.ids[p]), row) for p, row in enumerate(index.rows)}
    original_id = by_path[str(gallery.paths[7])][0]
    fresh_id = by_path[str(fresh)][0]
    assert by_path[str(copy_old)][1]["duplicate_of"] == original_id
    assert by_path[str(copy_new)][1]["duplicate_of"] == fresh_id
    assert "duplicate_of" not in by_path[str(fresh)][1]
    tagged = Searcher(tag).search(copy_new, k=10, filter=f"duplicate_of={fresh_id}")
    assert [m.path for m in tagged] == [str(copy_new)] and tagged[0].metadata["duplicate_of"] == fresh_id
    # the next run changes nothing: the tag is the index's own, not a changed field of the gallery
    again = index_gallery(tag, read_gallery(gallery.root), **options)
    assert again.updated == 0 and again.added == 0 and again.version == result.version
    assert GalleryIndex.load(tag).rows == index.rows

    # a threshold outside [-1, 1] or an unknown mode: one line, exit 2, nothing written
    before = (skip / "manifest.json").read_text()
    for bad in (["--duplicates", "skip", "--duplicate-threshold", "1.5"], ["--duplicates", "drop"]):
        code, _, stderr = run_cli(capsys, "index", "--images", str(gallery.root), "--out", str(skip), *QUIET, *bad)
        assert code == 2 and "duplicate" in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert (skip / "manifest.json").read_text() == before
