"""`dva serve` follows `dva index` updates of its index directory without a restart
(:meth:`dva.Searcher.refresh`, :class:`dva.serve.app.IndexReloader`): real index files on disk,
updated in place with the build API while a real server answers over loopback HTTP."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from conftest import TINY_BACKBONE, TINY_IMG, class_image, run_cli, serve_in_thread, write_gallery

import dva.index.searcher as searcher_module
from dva.errors import ConfigError, DataError
from dva.index import IndexModel, Searcher, index_gallery, read_gallery
from dva.index.store import MANIFEST, GalleryIndex
from dva.serve import ServeSettings, create_app

QUIET = dict(num_workers=0, progress=False)
#: The tests' poll interval; a swap must show within it plus the time a load takes on busy CPUs.
POLL = 0.2
SETTINGS = ServeSettings(reload_seconds=POLL)


@pytest.fixture
def index_dir(tmp_path) -> Path:
    """A fresh index of 3 classes x 4 images (version 1), the tests' to update."""
    gallery = write_gallery(tmp_path / "photos", num_classes=3, per_class=4)
    model = IndexModel.frozen(TINY_BACKBONE, pretrained=False, img_size=TINY_IMG)
    index_gallery(tmp_path / "index", read_gallery(gallery.root), model=model, **QUIET)
    return tmp_path / "index"


def add_images(index_dir: Path, folder: Path, label: int = 7, count: int = 3) -> list[Path]:
    """Add ``count`` new images (under ``folder/class_<label>``) as `dva index` would, same out dir."""
    (folder / f"class_{label}").mkdir(parents=True)
    paths = []
    for i in range(count):
        path = folder / f"class_{label}" / f"new_{i}.jpg"
        class_image(label, 100 + i).save(path, quality=95)
        paths.append(path)
    index_gallery(index_dir, read_gallery(folder), **QUIET)
    return paths


def replace_manifest(index_dir: Path, text: str) -> None:
    """Write ``manifest.json`` in one step (as `dva index` does), so a poll never reads half of it."""
    temporary = index_dir / ".manifest.test"
    temporary.write_text(text)
    os.replace(temporary, index_dir / MANIFEST)


def wait_for(condition: Callable[[], bool], what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(POLL / 4)


def upload_search(client: httpx.Client, path: Path, k: int = 3) -> list[dict]:
    answer = client.post("/search", files={"file": (path.name, path.read_bytes(), "image/jpeg")}, data={"k": str(k)})
    assert answer.status_code == 200, answer.text
    return answer.json()["results"]


def served_version(client: httpx.Client) -> int:
    answer = client.get("/healthz")
    assert answer.status_code == 200, answer.text
    return answer.json()["version"]


def test_added_images_become_searchable_over_http_without_a_restart(index_dir, tmp_path):
    searcher = Searcher(index_dir)
    with serve_in_thread(create_app(searcher, SETTINGS)) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert served_version(client) == 1 and client.get("/healthz").json()["images"] == 12
        new = add_images(index_dir, tmp_path / "more")
        wait_for(lambda: served_version(client) == 2, "the server to serve version 2")
        assert client.get("/healthz").json()["images"] == 15
        # the new image is its own best match, with a new id (ids 0-11 are version 1's)
        [best, *_] = upload_search(client, new[0])
        assert best["name"] == "new_0.jpg" and best["id"] >= 12 and best["label"] == "class_7"
        assert best["score"] == pytest.approx(1.0, abs=1e-3)
        # and its file is served: the new folder is a gallery folder now
        image = client.get(best["image_url"])
        assert image.status_code == 200 and image.content == new[0].read_bytes()
        # filters see the new version's metadata too
        answer = client.post(
            "/search/embedding",
            json={"embedding": searcher.index.embeddings[-1].tolist(), "k": 5, "filter": ["label=class_7"]},
        )
        assert answer.status_code == 200, answer.text
        assert {r["name"] for r in answer.json()["results"]} == {p.name for p in new}


def test_removed_images_disappear_from_http_results(index_dir, tmp_path):
    searcher = Searcher(index_dir)
    gone = searcher.match(5)
    with serve_in_thread(create_app(searcher, SETTINGS)) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert upload_search(client, Path(gone.path))[0]["id"] == 5  # before: the image finds itself
        index_gallery(index_dir, [], remove=[gone.path], **QUIET)
        wait_for(lambda: served_version(client) == 2, "the server to serve version 2")
        assert client.get("/healthz").json()["images"] == 11
        results = upload_search(client, Path(gone.path), k=11)
        assert len(results) == 11 and 5 not in {r["id"] for r in results}
        assert client.get("/images/5").status_code == 404


def test_a_refresh_with_nothing_committed_loads_nothing(index_dir, tmp_path, monkeypatch):
    searcher = Searcher(index_dir)
    first = searcher.index
    loads: list[Path] = []
    original = GalleryIndex.load.__func__
    monkeypatch.setattr(GalleryIndex, "load", classmethod(lambda cls, path: loads.append(path) or original(cls, path)))
    assert searcher.refresh() is False and searcher.refresh() is False
    assert searcher.index is first and loads == []
    # a re-written manifest of the same version (same bytes, new file) is no new version either
    replace_manifest(index_dir, (index_dir / MANIFEST).read_text())
    assert searcher.refresh() is False and searcher.index is first and loads == []

    # DBA's augmented gallery is cached: a stale cache would not know the new images
    model = searcher.model
    new = add_images(index_dir, tmp_path / "more")
    query = searcher.embed([new[0]])[0]
    assert searcher.search_embedding(query, k=1, rerank="dba")[0].id < 12  # still version 1
    assert searcher.refresh() is True and len(loads) == 1
    assert searcher.index is not first and searcher.index.version == 2 and len(searcher) == 15
    assert searcher.model is model  # the model is not reloaded
    assert str(new[0]) in {m.path for m in searcher.search_embedding(query, k=3, rerank="dba")}
    assert searcher.search_embedding(query, k=1, filter="label=class_7")[0].path == str(new[0])
    assert searcher.refresh() is False and len(loads) == 1


def test_a_search_holds_one_version_while_a_refresh_swaps(index_dir, tmp_path, monkeypatch):
    """A refresh between a search's first and last look at the index must not mix versions."""
    searcher = Searcher(index_dir)
    query = searcher.index.embeddings[0].copy()
    expected = searcher.search_embedding(query, k=12)  # version 1's answer
    add_images(index_dir, tmp_path / "more")  # version 2, then version 3 shifts every position down by one
    index_gallery(index_dir, [], remove=[searcher.match(0).path], **QUIET)
    original = searcher_module._match_at

    def refresh_midway(*args, **kwargs):  # the swap lands while the results are being built
        searcher.refresh()
        return original(*args, **kwargs)

    monkeypatch.setattr(searcher_module, "_match_at", refresh_midway)
    matches = searcher.search_embedding(query, k=12)
    assert searcher.index.version == 3
    # version 1's positions read through version 1's rows, not version 3's
    assert [(m.id, m.path) for m in matches] == [(m.id, m.path) for m in expected]
    assert [m.score for m in matches] == pytest.approx([m.score for m in expected], abs=1e-5)


def test_a_changed_model_is_refused_and_the_old_version_kept(index_dir):
    searcher = Searcher(index_dir)
    first = searcher.index
    manifest = json.loads((index_dir / MANIFEST).read_text())
    manifest["version"] += 1
    manifest["model"]["fingerprint"] = "0" * 64
    replace_manifest(index_dir, json.dumps(manifest))
    with pytest.raises(DataError, match="another model") as error:
        searcher.refresh()
    assert str(index_dir) in str(error.value)
    assert searcher.index is first and searcher.index.version == 1


def test_an_unreadable_manifest_keeps_the_old_version_served(index_dir, tmp_path, caplog):
    searcher = Searcher(index_dir)
    manifest = index_dir / MANIFEST
    good = manifest.read_text()
    query = searcher.match(3)
    caplog.set_level(logging.WARNING, logger="dva.serve")
    with serve_in_thread(create_app(searcher, SETTINGS)) as url, httpx.Client(base_url=url, timeout=60) as client:
        replace_manifest(index_dir, '{"format": "dva-index", "version": 2, ')  # written by hand, cut short
        failed = lambda: [r for r in caplog.records if "index reload failed" in r.getMessage()]  # noqa: E731
        wait_for(lambda: bool(failed()), "the reloader's warning")
        assert "still serving version 1" in failed()[0].getMessage() and str(manifest) in failed()[0].getMessage()
        time.sleep(3 * POLL)  # more polls of the same bad file: one warning, the server up
        assert len(failed()) == 1
        assert served_version(client) == 1
        assert upload_search(client, Path(query.path))[0]["id"] == 3
        # a good manifest again (a newer version committed over it): served at the next poll
        replace_manifest(index_dir, good)
        new = add_images(index_dir, tmp_path / "more")
        wait_for(lambda: served_version(client) == 2, "the server to serve version 2")
        assert upload_search(client, new[1])[0]["name"] == "new_1.jpg"


def test_reload_seconds_zero_serves_the_loaded_version_and_a_negative_one_is_refused(index_dir, tmp_path):
    searcher = Searcher(index_dir)
    with pytest.raises(ConfigError, match="reload_seconds"):
        create_app(searcher, ServeSettings(reload_seconds=-1))
    app = create_app(searcher, ServeSettings(reload_seconds=0))
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        add_images(index_dir, tmp_path / "more")
        time.sleep(1.0)
        assert served_version(client) == 1 and app.state.reloader._thread is None
        assert app.state.reloader.check() is True  # what the thread would have done
        assert served_version(client) == 2


def test_the_reloader_thread_stops_with_the_server(index_dir):
    app = create_app(Searcher(index_dir), SETTINGS)
    with serve_in_thread(app):
        thread = app.state.reloader._thread
        assert thread is not None and thread.is_alive()
    assert not thread.is_alive() and app.state.reloader._thread is None


def test_the_serve_command_reloads_and_says_so(index_dir, tmp_path, capsys):
    code, _, err = run_cli(capsys, "serve", "--index", str(index_dir), "--reload-seconds", "-1")
    assert code == 2 and "--reload-seconds" in err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = ["serve", "--index", str(index_dir), "--port", str(port), "--reload-seconds", str(POLL)]
    process = subprocess.Popen(
        [sys.executable, "-m", "dva", *command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:

            def started() -> bool:
                assert process.poll() is None, process.stdout.read()
                try:
                    return client.get("/healthz").status_code == 200
                except httpx.TransportError:
                    return False

            wait_for(started, "dva serve to start", seconds=120)
            add_images(index_dir, tmp_path / "more")
            wait_for(lambda: served_version(client) == 2, "dva serve to serve version 2")
    finally:
        process.terminate()
        log = process.communicate(timeout=30)[0]
    assert "index version 1 -> 2 (15 images)" in log
