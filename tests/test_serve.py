"""The HTTP server started for real on a loopback port, spoken to over HTTP, and its page
driven in Debian's headless chromium."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from conftest import class_image, launch_chromium, serve_in_thread
from PIL import Image

from dva.index import Searcher
from dva.serve import ServeSettings, create_app

KEY = "s3cret-key"
SETTINGS = ServeSettings(api_key=KEY, max_upload_bytes=100_000, max_image_pixels=1_000_000, max_k=20)
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def server(gallery_index):
    gallery, index = gallery_index
    searcher = Searcher(index)
    with serve_in_thread(create_app(searcher, SETTINGS)) as url:
        yield url, gallery, searcher


@pytest.fixture
def client(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server[0], headers={"X-API-Key": KEY}, timeout=60) as c:
        yield c


def upload(client: httpx.Client, data: bytes, name: str = "query.jpg", kind: str = "image/jpeg", **form):
    return client.post("/search", files={"file": (name, data, kind)}, data=form)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_every_api_endpoint_wants_the_key_and_the_page_does_not(server):
    url, gallery, _ = server
    image = gallery.paths[0].read_bytes()
    calls = [
        ("GET", "/healthz", {}),
        ("GET", "/images/0", {}),
        ("POST", "/search", {"files": {"file": ("q.jpg", image, "image/jpeg")}}),
        ("POST", "/search/embedding", {"json": {"embedding": [1.0] * 64}}),
    ]
    for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": KEY[:-1]}):
        for method, path, kwargs in calls:
            response = httpx.request(method, url + path, headers=headers, **kwargs)
            assert response.status_code == 401, (path, headers)
            assert "X-API-Key" in response.json()["detail"]
    for method, path, kwargs in calls:
        assert httpx.request(method, url + path, headers={"X-API-Key": KEY}, **kwargs).status_code == 200, path
    # the page, its files and the API docs hold no data and stay open (served without any CDN)
    page = httpx.get(url + "/")
    assert page.status_code == 200 and 'id="file"' in page.text and "http" not in page.text.split("<footer")[0]
    assert httpx.get(url + "/static/app.js").status_code == 200
    docs = httpx.get(url + "/docs")
    assert docs.status_code == 200 and "cdn" not in docs.text.lower()
    schema = httpx.get(url + "/openapi.json").json()
    assert {"/search", "/search/embedding", "/healthz", "/images/{image_id}"} <= set(schema["paths"])


def test_search_by_upload_returns_the_gallery_ranking(server, client):
    _, gallery, searcher = server
    health = client.get("/healthz").json()
    assert health["images"] == 24 and health["backbone"] == "test_vit" and health["index"] == "Flat"

    response = upload(client, gallery.paths[7].read_bytes(), k="5")
    assert response.status_code == 200
    body = response.json()
    results = body["results"]
    assert body["k"] == 5 and body["gallery_size"] == 24 and len(results) == 5
    assert results[0]["id"] == 7 and results[0]["label"] == "class_1" and results[0]["name"] == "01.jpg"
    assert results[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert [r["rank"] for r in results] == [1, 2, 3, 4, 5]
    assert [r["id"] for r in results] == [m.id for m in searcher.search(gallery.paths[7], k=5)]
    assert "/" not in results[0]["name"] and "path" not in results[0]  # no server paths over HTTP
    assert client.get(results[1]["image_url"]).content == gallery.paths[results[1]["id"]].read_bytes()

    # a PNG that is not in the gallery works too; k defaults to 10
    png = upload(client, png_bytes(class_image(2, 99)), name="new.png", kind="image/png")
    assert png.status_code == 200 and len(png.json()["results"]) == 10


def test_search_by_embedding(server, client):
    _, gallery, searcher = server
    vector = searcher.embed([gallery.paths[3]])[0]
    response = client.post("/search/embedding", json={"embedding": (vector * 2).tolist(), "k": 3})
    assert response.status_code == 200
    assert [r["id"] for r in response.json()["results"]] == [m.id for m in searcher.search(gallery.paths[3], k=3)]
    for payload, message in [
        ({"embedding": [0.5] * 10}, "shape (n, 64)"),
        ({"embedding": [0.0] * 64}, "all zeros"),
        ({"embedding": vector.tolist(), "k": 21}, "limit of 20"),
    ]:
        bad = client.post("/search/embedding", json=payload)
        assert bad.status_code == 422 and message in str(bad.json()["detail"])
    assert client.post("/search/embedding", json={"embedding": vector.tolist(), "k": 0}).status_code == 422
    assert client.post("/search/embedding", json={"vector": [1.0]}).status_code == 422


def test_search_reranks_like_the_searcher_and_refuses_bad_options(server, client):
    _, gallery, searcher = server
    query = gallery.paths[5]
    vector = searcher.embed([query])[0]
    plain = [m.id for m in searcher.search(query, k=20)]
    for method, n, alpha in [("aqe", 3, 3.0), ("dba", 2, 1.0)]:
        expected = searcher.search(query, k=20, rerank=method, rerank_k=n, alpha=alpha)
        assert [m.id for m in expected] != plain  # the options change the order: ignoring them would show
        form = upload(client, query.read_bytes(), k="20", rerank=method, rerank_k=str(n), alpha=str(alpha))
        assert form.status_code == 200
        assert [r["id"] for r in form.json()["results"]] == [m.id for m in expected]
        assert [r["score"] for r in form.json()["results"]] == pytest.approx([m.score for m in expected], abs=1e-4)
        body = {"embedding": vector.tolist(), "k": 20, "rerank": method, "rerank_k": n, "alpha": alpha}
        by_vector = client.post("/search/embedding", json=body)
        assert by_vector.status_code == 200
        assert [r["id"] for r in by_vector.json()["results"]] == [m.id for m in expected]
    # an empty or "none" method is the plain order; re-ranking within a filter works too
    assert [r["id"] for r in upload(client, query.read_bytes(), k="20", rerank="").json()["results"]] == plain
    none = client.post("/search/embedding", json={"embedding": vector.tolist(), "k": 20, "rerank": "none"})
    assert [r["id"] for r in none.json()["results"]] == plain
    filtered = client.post(
        "/search/embedding", json={"embedding": vector.tolist(), "k": 4, "rerank": "aqe", "filter": ["label=class_2"]}
    )
    expected = searcher.search(query, k=4, rerank="aqe", filter="label=class_2")
    assert [r["id"] for r in filtered.json()["results"]] == [m.id for m in expected]
    # bad values: 422 with one line naming the field, for both endpoints
    for options, field in [
        ({"rerank": "qe"}, "rerank:"),
        ({"rerank": "aqe", "rerank_k": 0}, "rerank_k:"),
        ({"rerank": "dba", "alpha": -1}, "alpha:"),
    ]:
        bad = client.post("/search/embedding", json={"embedding": vector.tolist(), **options})
        assert bad.status_code == 422 and str(bad.json()["detail"]).startswith(field), bad.text
        assert "\n" not in bad.json()["detail"]
        form = {key: str(value) for key, value in options.items()}
        bad = upload(client, query.read_bytes(), **form)
        assert bad.status_code == 422 and str(bad.json()["detail"]).startswith(field), bad.text
    nan = upload(client, query.read_bytes(), rerank="aqe", alpha="nan")
    assert nan.status_code == 422 and nan.json()["detail"].startswith("alpha:")
    assert upload(client, query.read_bytes(), rerank="aqe", rerank_k="two").status_code == 422


def test_bad_uploads_are_refused_with_4xx(server, client):
    _, gallery, _ = server
    assert upload(client, b"%PDF-1.4 not an image", name="doc.pdf", kind="application/pdf").status_code == 415
    truncated = upload(client, gallery.paths[0].read_bytes()[:300])
    assert truncated.status_code == 415 and "query.jpg" in truncated.json()["detail"]
    # too many bytes: refused from Content-Length, and from the body itself when it is sent chunked
    big = os.urandom(150_000)
    assert upload(client, big).status_code == 413

    def chunks():
        yield b"x" * 100_000
        yield b"x" * 100_000

    chunked = client.post("/search", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert chunked.status_code == 413
    # a decompression bomb: few bytes, too many pixels (the server allows 1,000,000)
    bomb = png_bytes(Image.new("L", (1200, 1000)))
    assert len(bomb) < 10_000
    refused = upload(client, bomb, name="bomb.png", kind="image/png")
    assert refused.status_code == 413 and "pixel limit" in refused.json()["detail"]
    assert upload(client, gallery.paths[0].read_bytes(), k="21").status_code == 422
    assert client.post("/search", data={"k": "3"}).status_code == 422  # no file


def test_images_are_served_by_id_only(server, client):
    _, gallery, _ = server
    first = client.get("/images/0")
    assert first.status_code == 200 and first.headers["content-type"] == "image/jpeg"
    assert first.content == gallery.paths[0].read_bytes()
    assert client.get("/images/24").status_code == 404
    assert client.get("/images/-1").status_code == 422
    for probe in ("/images/..%2F..%2F..%2Fetc%2Fpasswd", "/images/%2Fetc%2Fpasswd", "/images/0.jpg"):
        response = client.get(probe)
        assert response.status_code in (404, 422) and b"root:" not in response.content


def test_concurrent_requests_each_get_their_own_answer(server, client):
    _, gallery, searcher = server
    queries = gallery.paths * 2
    expected = [[m.id for m in ms] for ms in searcher.search_batch(queries, k=4)]

    def ask(path: Path) -> list[int]:
        response = upload(client, path.read_bytes(), k="4")
        assert response.status_code == 200
        return [r["id"] for r in response.json()["results"]]

    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(ask, queries))
    assert answers == expected


def test_serve_command_reads_the_key_from_the_environment(gallery_index, tmp_path):
    _, index = gallery_index
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "DVA_API_KEY": KEY}
    process = subprocess.Popen(
        [sys.executable, "-m", "dva", "serve", "--index", str(index), "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/healthz"
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                response = httpx.get(url)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "dva serve did not start"
                time.sleep(0.2)
        assert response.status_code == 401
        assert httpx.get(url, headers={"X-API-Key": KEY}).json()["images"] == 24
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.browser
@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium (`apt-get install chromium`; make test does)"
)
def test_page_asks_for_the_key_then_shows_results(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url, gallery, searcher = server
    expected = searcher.search(gallery.paths[13], k=6)
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page()
            page.goto(url + "/")
            expect(page.locator("#key-form")).to_be_visible()  # /healthz answered 401
            page.fill("#api-key", KEY)
            page.click("#key-form button")
            expect(page.locator("#status")).to_contain_text("24 images")
            expect(page.locator("#key-form")).to_be_hidden()
            page.fill("#k", "6")
            page.set_input_files("#file", str(gallery.paths[13]))
            cards = page.locator(".result")
            expect(cards).to_have_count(6)
            labels = [cards.nth(i).get_attribute("data-label") for i in range(6)]
            assert labels == [m.label for m in expected]
            expect(cards.first.locator(".score")).to_have_text(f"{expected[0].score:.3f}")
            # every thumbnail was fetched with the key and decoded
            page.wait_for_function(
                "() => [...document.querySelectorAll('.result img')].every(i => i.complete && i.naturalWidth > 0)"
            )
            # re-ranking from the select: the server's re-ranked order (scores stay the plain cosines)
            reranked = searcher.search(gallery.paths[13], k=6, rerank="dba")
            shown = [f"{m.score:.3f}" for m in reranked]
            assert shown != [f"{m.score:.3f}" for m in expected]  # else the select could be ignored unseen
            page.select_option("#rerank", "dba")
            expect(cards.locator(".score")).to_have_text(shown)
            assert [cards.nth(i).get_attribute("data-label") for i in range(6)] == [m.label for m in reranked]
            page.select_option("#rerank", "")
            expect(cards.locator(".score")).to_have_text([f"{m.score:.3f}" for m in expected])
            # a non-image upload shows the server's refusal
            bad = tmp_path / "notes.png"
            bad.write_bytes(b"not a png")
            page.set_input_files("#file", str(bad))
            expect(page.locator("#error")).to_contain_text("415")
            page.screenshot(path=str(tmp_path / "page.png"))
        finally:
            browser.close()
