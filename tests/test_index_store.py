"""Index format 2 (issue 15): updates in place, removals, content-hash updates, stable ids,
crash safety under kill -9, reading and converting format 1, and filtered search from Python,
the CLI and HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import TINY_BACKBONE, TINY_IMG, class_image, launch_chromium, run_cli, serve_in_thread, write_gallery
from legacy_index import downgrade_to_format_1

import dva.index.build as build_module
import dva.index.searcher as searcher_module
from dva.errors import DataError
from dva.index import IndexModel, Searcher, check_index, index_gallery, read_gallery
from dva.index.filters import Filter, parse_filters
from dva.index.store import GalleryIndex
from dva.serve import create_app

QUIET = dict(num_workers=0, progress=False)
FROZEN_ARGS = ("--frozen", "--backbone", TINY_BACKBONE, "--no-pretrained", "--img-size", str(TINY_IMG))


def frozen_model() -> IndexModel:
    return IndexModel.frozen(TINY_BACKBONE, pretrained=False, img_size=TINY_IMG)


def write_list(tmp_path: Path, per_class: int = 4, classes: int = 3) -> tuple[Path, list[Path]]:
    """A CSV gallery with a numeric field (year) and a text field (shop)."""
    gallery = write_gallery(tmp_path / "photos", num_classes=classes, per_class=per_class)
    lines = ["path,label,year,shop"]
    for i, path in enumerate(gallery.paths):
        lines.append(f"{path},{path.parent.name},{1990 + 5 * i},{'north' if i % 2 else 'south'}")
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / "list.csv", gallery.paths


def snapshot_bytes(folder: Path) -> dict[str, bytes]:
    """Every file of an index, byte for byte (the lock file is not index content)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != ".lock"}


def record_embedded(monkeypatch) -> list[Path]:
    embedded: list[Path] = []
    original = build_module.embed_dataset
    monkeypatch.setattr(
        build_module,
        "embed_dataset",
        lambda model, dataset, **kw: embedded.extend(dataset.paths) or original(model, dataset, **kw),
    )
    return embedded


# --- updates in place ------------------------------------------------------------------------


def test_remove_update_by_content_and_skip_unchanged_files(tmp_path, monkeypatch):
    listing, paths = write_list(tmp_path)
    index_gallery(tmp_path / "index", read_gallery(listing), model=frozen_model(), **QUIET)
    shard_1 = (tmp_path / "index/vectors-000001.npy").read_bytes()
    embedded = record_embedded(monkeypatch)

    # remove one image: the others keep their ids and vectors, nothing is embedded, no shard written
    before = GalleryIndex.load(tmp_path / "index")
    report = index_gallery(tmp_path / "index", [], remove=[paths[3]], **QUIET)
    assert (report.removed, report.count, report.version, embedded) == (1, 11, 2, [])
    after = GalleryIndex.load(tmp_path / "index")
    assert 3 not in after.ids and list(after.ids) == [i for i in range(12) if i != 3]
    assert np.array_equal(after.embeddings, np.delete(np.asarray(before.embeddings), 3, axis=0))
    assert sorted(p.name for p in (tmp_path / "index").glob("vectors-*")) == ["vectors-000001.npy"]

    # a touched file with the same bytes is not embedded again; a changed one is, under a new id
    os.utime(paths[0], ns=(1, 1))
    class_image(2, 9).save(paths[5], quality=95)  # new content at the same path
    report = index_gallery(tmp_path / "index", read_gallery(listing), **QUIET)
    assert embedded == [paths[3], paths[5]]  # the removed image comes back (new), the changed one
    assert (report.added, report.updated, report.already_indexed, report.count) == (1, 1, 10, 12)
    searcher = Searcher(tmp_path / "index")
    by_path = searcher.index.ids_by_path
    assert by_path[str(paths[0])] == 0 and by_path[str(paths[3])] == 12 and by_path[str(paths[5])] == 13
    assert searcher.search(paths[5], k=1)[0].id == 13  # the new content is what is searched
    assert (tmp_path / "index/vectors-000001.npy").read_bytes() == shard_1  # appended, never rewritten
    with pytest.raises(KeyError):
        searcher.match(5)

    # a changed label or field updates the metadata only: same id, no embedding
    embedded.clear()
    listing.write_text(listing.read_text().replace(f"{paths[1]},class_0,1995", f"{paths[1]},gull,1995"))
    report = index_gallery(tmp_path / "index", read_gallery(listing), **QUIET)
    assert (report.updated, embedded) == (1, [])
    assert Searcher(tmp_path / "index").match(1).label == "gull"

    # --remove-missing deletes the images whose files are gone
    paths[7].unlink()
    assert index_gallery(tmp_path / "index", [], remove_missing=True, **QUIET).removed == 1
    assert str(paths[7]) not in GalleryIndex.load(tmp_path / "index").ids_by_path

    # removing every image leaves a valid, empty index
    remaining = list(GalleryIndex.load(tmp_path / "index").ids_by_path)
    assert index_gallery(tmp_path / "index", [], remove=remaining, **QUIET).count == 0
    empty = Searcher(tmp_path / "index")
    assert len(empty) == 0 and empty.search(paths[0], k=3) == [] and empty.search(paths[0], filter="year>1") == []


def test_approximate_snapshots_follow_adds_and_removals(tmp_path):
    gallery = write_gallery(tmp_path / "photos", num_classes=4, per_class=10)
    items = read_gallery(gallery.root)
    index_gallery(tmp_path / "index", items[:30], model=frozen_model(), index_type="ivf", **QUIET)
    first = json.loads((tmp_path / "index/manifest.json").read_text())["files"]["faiss"]
    # 2 new images are under 10% of the index: the IVF snapshot is kept, opening adds them
    index_gallery(tmp_path / "index", items[:32], **QUIET)
    manifest = json.loads((tmp_path / "index/manifest.json").read_text())
    assert manifest["files"]["faiss"] == first and manifest["snapshot"]["version"] == 1
    index = GalleryIndex.load(tmp_path / "index")
    assert index.faiss_index.ntotal == 32
    searcher = Searcher(tmp_path / "index")
    assert searcher.search_embedding(index.embeddings[31], k=1)[0].id == 31
    # a removal from HNSW takes a new snapshot (FAISS's HNSW cannot delete); from IVF, opening removes it
    index_gallery(tmp_path / "index", [], remove=[gallery.paths[0]], **QUIET)
    assert GalleryIndex.load(tmp_path / "index").faiss_index.ntotal == 31
    index_gallery(tmp_path / "index", [], index_type="hnsw", **QUIET)  # another type: a new snapshot
    index_gallery(tmp_path / "index", [], remove=[gallery.paths[1]], **QUIET)
    manifest = json.loads((tmp_path / "index/manifest.json").read_text())
    assert manifest["snapshot"] == {"version": manifest["version"], "count": 30}
    searcher = Searcher(tmp_path / "index")
    assert {m.id for m in searcher.search_embedding(searcher.index.embeddings[0], k=30)} == set(range(2, 32))


# --- crash safety ----------------------------------------------------------------------------

KILLER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import dva.index.store as store
    from dva.index import index_gallery, read_gallery

    point, out, photos = sys.argv[1], Path(sys.argv[2]), sys.argv[3]

    def die():
        os.kill(os.getpid(), signal.SIGKILL)  # no finally, no cleanup: what kill -9 does

    def after(name):
        original = getattr(store, name)
        def wrapped(*args, **kwargs):
            result = original(*args, **kwargs)
            die()
        return wrapped

    if point == "shard":  # mid-write of the new shard's temporary file
        def half(target, array):
            Path(target).write_bytes(b"half a shard")
            die()
        store._save_npy = half
    elif point == "snapshot":
        store._save_faiss = after("_save_faiss")
    elif point in ("rows", "convert"):  # the rows are committed to SQLite, the manifest is not
        original_apply = store.IndexDB.apply
        def apply(self, *args, **kwargs):
            original_apply(self, *args, **kwargs)
            die()
        store.IndexDB.apply = apply
    elif point == "manifest":  # committed; the old files are not yet deleted
        store.atomic_write_json = after("atomic_write_json")
    index_gallery(out, read_gallery(photos), remove=[sys.argv[4]], num_workers=0, progress=False)
""")


@pytest.mark.parametrize(
    "point, in_force", [("shard", 1), ("snapshot", 1), ("rows", 1), ("manifest", 2), ("convert", 1)]
)
def test_a_kill_at_any_step_of_an_update_leaves_version_v_or_v_plus_1(tmp_path, point, in_force):
    gallery = write_gallery(tmp_path / "photos", num_classes=2, per_class=4)
    items = read_gallery(gallery.root)
    index_type = "hnsw" if point == "snapshot" else "flat"
    index_gallery(tmp_path / "index", items[:6], model=frozen_model(), index_type=index_type, **QUIET)
    if point == "convert":  # a format-1 index: the kill hits its conversion, after its rows are in SQLite
        downgrade_to_format_1(tmp_path / "index")
    v1 = Searcher(tmp_path / "index")
    v1_answer = [m.id for m in v1.search(gallery.paths[1], k=6)]
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(build_module.__file__).parents[2])])}
    done = subprocess.run(
        [sys.executable, str(script), point, str(tmp_path / "index"), str(gallery.root), str(gallery.paths[0])],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr

    searcher = Searcher(tmp_path / "index")  # a reader sees exactly one version
    assert searcher.index.version == in_force
    assert searcher.index.format_version == (1 if point == "convert" else 2)
    expected_ids = list(range(6)) if in_force == 1 else [1, 2, 3, 4, 5, 6, 7]
    assert list(searcher.index.ids) == expected_ids
    assert len(searcher.search(gallery.paths[1], k=10)) == len(expected_ids)
    assert len(searcher.search(gallery.paths[1], k=10, filter="label=class_0")) == (4 if in_force == 1 else 3)
    if in_force == 1:
        assert [m.id for m in searcher.search(gallery.paths[1], k=6)] == v1_answer
    # the next update rolls back or finishes the killed one, then removes its leftovers
    report = index_gallery(tmp_path / "index", items[1:], remove=[gallery.paths[0]] if in_force == 1 else [], **QUIET)
    assert report.count == 7
    names = {p.name for p in (tmp_path / "index").iterdir()}
    assert not [n for n in names if n.endswith(".tmp")]
    final = Searcher(tmp_path / "index")
    assert sorted(final.index.ids_by_path) == sorted(str(p) for p in gallery.paths[1:])
    assert final.search(gallery.paths[7], k=1)[0].path == str(gallery.paths[7])


# --- format 1 --------------------------------------------------------------------------------


def test_an_index_of_format_1_is_searched_as_it_is_and_converted_by_the_next_update(tmp_path, capsys):
    listing, paths = write_list(tmp_path)
    index_gallery(tmp_path / "index", read_gallery(listing), model=frozen_model(), **QUIET)
    top = Searcher(tmp_path / "index").search(paths[4], k=5)
    expected_ids, expected_scores = [m.id for m in top], [m.score for m in top]
    downgrade_to_format_1(tmp_path / "index")
    assert json.loads((tmp_path / "index/manifest.json").read_text())["format_version"] == 1
    legacy_files = snapshot_bytes(tmp_path / "index")

    searcher = Searcher(tmp_path / "index")  # read-only: searched without writing anything
    top = searcher.search(paths[4], k=5)
    assert [m.id for m in top] == expected_ids and [m.score for m in top] == pytest.approx(expected_scores)
    assert {m.metadata["shop"] for m in searcher.search(paths[4], k=5, filter="shop=north")} == {"north"}
    assert snapshot_bytes(tmp_path / "index") == legacy_files

    class_image(0, 11).save(tmp_path / "photos/class_0/new.jpg")
    listing.write_text(listing.read_text() + f"{tmp_path / 'photos/class_0/new.jpg'},class_0,2050,north\n")
    report = index_gallery(tmp_path / "index", read_gallery(listing), **QUIET)
    assert (report.added, report.already_indexed, report.version) == (1, 12, 3)  # v2: the conversion, v3: the add
    assert sorted(p.name for p in (tmp_path / "index").iterdir() if not p.name.startswith(".")) == [
        "config.json",
        "manifest.json",
        "metadata.sqlite",
        "vectors-000002.npy",
        "vectors-000003.npy",
    ]
    converted = Searcher(tmp_path / "index")
    top = converted.search(paths[4], k=5)  # the same ids and scores as before the conversion
    assert [m.id for m in top] == expected_ids and [m.score for m in top] == pytest.approx(expected_scores)
    assert converted.match(4).metadata == {"year": "2010", "shop": "south"}


# --- bad input changes nothing ---------------------------------------------------------------


def test_bad_removals_and_filters_are_one_line_exit_2_and_change_no_byte(tmp_path, capsys):
    listing, paths = write_list(tmp_path)
    out = tmp_path / "index"
    code, _, err = run_cli(
        capsys, "index", "--images", str(listing), "--out", str(out), *FROZEN_ARGS, "--workers", "0", "--quiet"
    )
    assert code == 0, err
    before = snapshot_bytes(out)
    cases = [
        (
            ["index", "--out", str(out), "--remove", str(paths[0]), "--remove", str(tmp_path / "nope.jpg")],
            "nope.jpg: not in the index",
        ),
        (
            ["index", "--out", str(out), "--images", str(listing), "--remove", str(tmp_path / "photos")],
            "photos: not in the index",
        ),
        (["search", "--index", str(out), str(paths[0]), "--filter", "colour=red"], "no field 'colour'"),
        (["search", "--index", str(out), str(paths[0]), "--filter", "year>=abc"], "'abc' is not a number"),
        (["search", "--index", str(out), str(paths[0]), "--filter", "label"], "not understood"),
        (["search", "--index", str(out), str(paths[0]), "--filter", "label>3"], "a range needs a numeric field"),
    ]
    for args, message in cases:
        code, _, err = run_cli(capsys, *args)
        assert code == 2 and err.count("\n") == 1 and message in err, (args, err)
        assert snapshot_bytes(out) == before, args


# --- filters ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, parsed",
    [
        ("label=Cardinal", Filter("label", values=("Cardinal",))),
        ("label == Blue Jay", Filter("label", values=("Blue Jay",))),
        ("label in A, B,C", Filter("label", values=("A", "B", "C"))),
        ("year>=2000", Filter("year", low=2000.0)),
        ("price<10", Filter("price", high=10.0, high_inclusive=False)),
        ("10<=year<20", Filter("year", low=10.0, high=20.0, high_inclusive=False)),
        ("a b>1e3", Filter("a b", low=1000.0, low_inclusive=False)),
    ],
)
def test_filter_strings_parse_to_one_explicit_type(text, parsed):
    assert Filter.parse(text) == parsed
    assert Filter.parse(str(parsed)) == parsed  # what str() shows parses back


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty"),
        ("label=", "no value"),
        ("year>=x", "'x' is not a number"),
        ("5<=year<=1", "range is empty"),
        ("label in A,,B", "empty value"),
        ("label!=A", "not understood"),
        ("=A", "not understood"),
    ],
)
def test_malformed_filters_are_one_line_errors(text, message):
    with pytest.raises(DataError, match=message):
        Filter.parse(text)


@pytest.mark.parametrize("index_type", ["flat", "hnsw", "ivf"])
def test_filtered_search_is_the_exact_top_k_of_the_kept_images(tmp_path, monkeypatch, index_type):
    import faiss.contrib.torch_utils  # noqa: F401 - what pytorch-metric-learning imports: it replaces Index.search

    listing, _ = write_list(tmp_path, per_class=8, classes=4)
    index_gallery(tmp_path / "index", read_gallery(listing), model=frozen_model(), index_type=index_type, **QUIET)
    searcher = Searcher(tmp_path / "index")
    rows, vectors = searcher.index.rows, np.asarray(searcher.index.embeddings)
    cases = {
        "label=class_2": lambda r: r["label"] == "class_2",
        "label in class_0,class_3": lambda r: r["label"] in ("class_0", "class_3"),
        "2000<=year<2100": lambda r: 2000 <= int(r["year"]) < 2100,
        "year>2120": lambda r: int(r["year"]) > 2120,
    }
    for force_selector in (False, True):
        if force_selector:  # the approximate path with an id selector, as for a large subset
            monkeypatch.setattr(searcher_module, "EXACT_SUBSET_MAX", 0)
        for text, keep in [*cases.items(), ("shop=north AND label=class_1", None)]:
            filters = ["shop=north", "label=class_1"] if keep is None else [text]
            keep = keep or (lambda r: r["shop"] == "north" and r["label"] == "class_1")
            kept = [p for p, r in enumerate(rows) if keep(r)]
            for query in (3, 17):
                truth = sorted(kept, key=lambda p: -float(vectors[p] @ vectors[query]))[:5]
                found = searcher.search_embedding(vectors[query], k=5, filter=filters)
                assert [m.id for m in found] == [int(searcher.index.ids[p]) for p in truth], (text, force_selector)
                assert all(keep(searcher.index.rows[searcher.index.position(m.id)]) for m in found)
    assert searcher.search_embedding(vectors[0], k=5, filter="label=nothing") == []
    assert searcher.search_embedding(vectors[0], k=5, filter="year<0") == []
    # the check reports filtered recall of the approximate path for each kept fraction
    report = check_index(tmp_path / "index")
    assert set(report["filtered_recall@10"]) == {"50%", "10%"} and all(
        0 < r <= 1 for r in report["filtered_recall@10"].values()
    )


def test_list_fields_and_numbers_in_json_lists_filter_as_expected(tmp_path):
    gallery = write_gallery(tmp_path / "photos", num_classes=1, per_class=4)
    rows = [
        {"path": str(p), "tags": ["red", "round"] if i % 2 else ["green"], "price": [9.5, "12", "n/a", 3][i]}
        for i, p in enumerate(gallery.paths)
    ]
    (tmp_path / "list.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    index_gallery(tmp_path / "index", read_gallery(tmp_path / "list.jsonl"), model=frozen_model(), **QUIET)
    index = GalleryIndex.load(tmp_path / "index")
    assert list(index.select(parse_filters("tags=red"))) == [1, 3]
    assert list(index.select(parse_filters("price<10"))) == [0, 3]  # "n/a" takes part in no range
    assert list(index.select(parse_filters(["price>=3", "tags in red,green"]))) == [0, 1, 3]
    assert list(index.select(parse_filters("price=12"))) == [1]  # text "12" equals the number 12


# --- the commands and HTTP -------------------------------------------------------------------


def test_search_and_index_commands_filter_and_remove(tmp_path, capsys):
    listing, paths = write_list(tmp_path)
    out = tmp_path / "index"
    assert (
        run_cli(
            capsys, "index", "--images", str(listing), "--out", str(out), *FROZEN_ARGS, "--workers", "0", "--quiet"
        )[0]
        == 0
    )
    code, stdout, err = run_cli(
        capsys,
        "search",
        "--index",
        str(out),
        str(paths[0]),
        "-k",
        "20",
        "--json",
        "--filter",
        "label in class_1,class_2",
        "--filter",
        "year<2030",
    )
    assert code == 0, err
    [result] = json.loads(stdout)
    assert [r["id"] for r in result["results"]] and {r["id"] for r in result["results"]} == {4, 5, 6, 7}
    code, stdout, err = run_cli(capsys, "index", "--out", str(out), "--remove", str(paths[4]), "--json")
    assert code == 0 and json.loads(stdout)["removed"] == 1, err
    code, stdout, _ = run_cli(capsys, "index", "--check", str(out), "--json")
    assert code == 0 and json.loads(stdout)["count"] == 11


def test_post_search_filters_over_http(gallery_index, tmp_path):
    gallery, index = gallery_index
    searcher = Searcher(index)
    query = gallery.paths[0].read_bytes()
    with serve_in_thread(create_app(searcher)) as url, httpx.Client(base_url=url, timeout=60) as client:
        answer = client.post(
            "/search",
            files={"file": ("q.jpg", query, "image/jpeg")},
            data={"k": "5", "filter": ["label in class_1,class_2", "label=class_2"]},
        )
        assert answer.status_code == 200, answer.text
        results = answer.json()["results"]
        assert len(results) == 5 and {r["label"] for r in results} == {"class_2"}
        vector = searcher.index.embeddings[0].tolist()
        answer = client.post("/search/embedding", json={"embedding": vector, "k": 3, "filter": ["label=class_1"]})
        assert [r["label"] for r in answer.json()["results"]] == ["class_1"] * 3
        for bad, message in [("colour=red", "no field 'colour'"), ("year>=x", "'x' is not a number")]:
            answer = client.post("/search", files={"file": ("q.jpg", query, "image/jpeg")}, data={"filter": bad})
            assert answer.status_code == 422 and message in answer.json()["detail"], answer.text
        answer = client.post("/search/embedding", json={"embedding": vector, "filter": ["label"]})
        assert answer.status_code == 422 and "not understood" in answer.json()["detail"]


@pytest.mark.browser
@pytest.mark.skipif(
    not Path("/usr/bin/chromium").exists(), reason="needs Debian's chromium (`apt-get install chromium`)"
)
def test_the_page_filter_input_restricts_the_results(gallery_index):
    from playwright.sync_api import expect, sync_playwright

    gallery, index = gallery_index
    searcher = Searcher(index)
    expected = searcher.search(gallery.paths[0], k=4, filter=["label in class_1,class_2", "label=class_2"])
    with serve_in_thread(create_app(searcher)) as url, sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page()
            page.goto(url + "/")
            expect(page.locator("#status")).to_contain_text("24 images")
            page.fill("#k", "4")
            page.fill("#filter", "label in class_1,class_2; label=class_2")
            page.set_input_files("#file", str(gallery.paths[0]))
            cards = page.locator(".result")
            expect(cards).to_have_count(4)
            assert [cards.nth(i).get_attribute("data-label") for i in range(4)] == [m.label for m in expected]
            page.fill("#filter", "colour=red")
            page.dispatch_event("#filter", "change")
            expect(page.locator("#error")).to_contain_text("no field 'colour'")
        finally:
            browser.close()
